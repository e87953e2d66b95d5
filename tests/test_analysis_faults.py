"""Fault injection: analyze.py never crashes on what it reads (issue 15 item 4). Each test
reproduces one problem that crashed or misreported before."""
import json
import os
import stat
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import analyze  # noqa: E402
from analysis.synthetic import write_condition  # noqa: E402

FAST = ["--no-figures", "--resamples", "200"]


def two_conditions(root, stage="s", names=("baseline", "v")):
    for i, n in enumerate(names):
        write_condition(os.path.join(root, stage, n), stage, n, seeds=[1, 2, 3], final=3.30 + 0.002 * i, sd=0.002,
                        rng_seed=i, steps=100, val_every=50)


def run(tmp_path, logs, *extra, out="report.md"):
    out = os.path.join(str(tmp_path), out)
    rc = analyze.main(["--logs", str(logs), "--out", out, *extra])
    return rc, out


def test_undecodable_folder_name_is_shown_escaped(tmp_path, capsys):
    logs = os.path.join(str(tmp_path), "logs")
    bad = os.fsdecode(b"stage_\xff\xfe")
    two_conditions(logs, stage=bad)
    rc, out = run(tmp_path, logs, *FAST)
    assert rc == 0
    with open(out, encoding="utf-8") as f:
        text = f.read()
    assert "stage_\\xff\\xfe" in text
    with open(os.path.join(str(tmp_path), "results.json"), encoding="utf-8") as f:
        assert json.load(f)["stages"][0]["name"] == "stage_\\xff\\xfe"


def test_deep_nesting_gets_short_hashed_figure_names(tmp_path):
    logs = os.path.join(str(tmp_path), "logs")
    deep = "/".join(["level_with_a_long_folder_name_%02d" % i for i in range(8)])
    two_conditions(logs, stage=deep)
    rc, out = run(tmp_path, logs, "--resamples", "200")
    assert rc == 0
    figs = os.listdir(os.path.join(str(tmp_path), "report_figures"))
    assert figs and all(len(f) < 120 for f in figs)


def test_distinct_stages_get_distinct_figure_files(tmp_path):
    logs = os.path.join(str(tmp_path), "logs")
    two_conditions(logs, stage="x/y")
    two_conditions(logs, stage="x_y")
    rc, out = run(tmp_path, logs, "--resamples", "200", "--metrics", "val_loss")
    assert rc == 0
    with open(out) as f:
        text = f.read()
    dist = sorted(ln for ln in text.splitlines() if ln.startswith("![") and "distributions.png" in ln)
    assert len(dist) == 2 and len({ln.split("(")[-1] for ln in dist}) == 2


def test_read_only_output_is_one_line(tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    logs = os.path.join(str(tmp_path), "logs")
    two_conditions(logs)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        rc = analyze.main(["--logs", logs, "--out", str(ro / "report.md"), *FAST])
    finally:
        ro.chmod(stat.S_IRWXU)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "cannot write" in err[0] and str(ro) in err[0]


def test_unwritable_output_path_is_one_line(tmp_path, capsys):
    # works as root too: the output's parent is a file, so nothing can be created there
    logs = os.path.join(str(tmp_path), "logs")
    two_conditions(logs)
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    rc = analyze.main(["--logs", logs, "--out", str(blocker / "report.md"), *FAST])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "cannot write" in err[0] and str(blocker) in err[0]
    assert blocker.read_text() == "x"


def test_binary_template_is_one_line(tmp_path, capsys):
    logs = os.path.join(str(tmp_path), "logs")
    two_conditions(logs)
    tpl = tmp_path / "t.md"
    tpl.write_bytes(bytes(range(256)) * 4)
    rc, out = run(tmp_path, logs, *FAST, "--template", str(tpl))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--template" in err[0] and "not a text file" in err[0]
    assert not os.path.exists(out)


def test_symlinked_run_folder_counted_once(tmp_path):
    logs = os.path.join(str(tmp_path), "logs")
    two_conditions(logs)
    os.symlink(os.path.join(logs, "s", "v", "seed_1"), os.path.join(logs, "s", "v", "seed_9"))
    os.symlink(os.path.join(logs, "s", "baseline"), os.path.join(logs, "s", "baseline_again"))
    rc, out = run(tmp_path, logs, *FAST)
    assert rc == 0
    with open(os.path.join(str(tmp_path), "results.json")) as f:
        res = json.load(f)
    runs = [(r["condition"], r["name"]) for r in res["stages"][0]["runs"]]
    assert len(runs) == 6 and ("v", "seed_9") not in runs
    assert any("counted once" in n for n in res["notes"])


def test_html_and_markdown_from_logs_are_escaped(tmp_path):
    logs = os.path.join(str(tmp_path), "logs")
    evil = "<script>alert(1)<_script>"
    two_conditions(logs, names=("baseline", evil))
    write_condition(os.path.join(logs, "s", "baseline"), "s", "baseline", seeds=[7], final=3.3, steps=100, val_every=50,
                    per_run={7: dict(status="failed", error="<img src=x onerror=alert(2)> | [link](javascript:x)",
                                     stop_at=20)})
    rc, out = run(tmp_path, logs, *FAST)
    with open(out) as f:
        text = f.read()
    assert rc == 0
    assert "<script>" not in text and "<img" not in text and "](javascript:" not in text
    assert "&lt;script&gt;" in text and "&lt;img src=x" in text


@pytest.mark.parametrize("argv", [["--logs", "--dry-run"], ["--logs=--dry-run"], ["--out", "--no-figures"],
                                  ["--template=-x"]])
def test_option_where_a_path_belongs_is_refused(tmp_path, capsys, argv):
    with pytest.raises(SystemExit) as e:
        analyze.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "looks like an option" in err[0]
