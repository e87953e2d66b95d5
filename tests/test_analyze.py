"""analyze.py end to end on synthetic run directories that follow docs/RUN_FORMAT.md exactly."""
import json
import os
import re
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import analyze  # noqa: E402
from analysis import loading  # noqa: E402
from analysis.synthetic import speedrun_log, write_condition, write_run  # noqa: E402

FAST = ["--resamples", "2000", "--no-figures"]


def run(tmp_path, logs, *extra, out="report.md"):
    out = str(tmp_path / out)
    rc = analyze.main(["--logs", str(logs), "--out", out, *extra])
    text = open(out).read() if os.path.exists(out) else None
    res_path = os.path.join(os.path.dirname(out), "results.json" if out.endswith("report.md") else
                            os.path.basename(out)[:-3] + "_results.json")
    res = json.load(open(res_path)) if os.path.exists(res_path) else None
    return rc, text, res


def comparison(res, variant, metric, stage=None):
    for s in res["stages"]:
        if stage and s["name"] != stage:
            continue
        for c in s["comparisons"]:
            if c["variant"] == variant and c["metric"] == metric:
                return c
    raise KeyError((variant, metric))


def assert_clean(text):
    assert not re.search(r"\bnan\b", text, re.I), "NaN reached the report"
    assert not re.search(r"\{\{.*?\}\}", text), "unfilled placeholder"
    assert "inf" not in re.findall(r"\b\w+\b", text.lower())


# ---------------------------------------------------------------------------------------------

def test_known_effect_is_significant_and_null_is_not(tmp_path):
    logs = tmp_path / "logs"
    seeds = list(range(1, 9))
    write_condition(str(logs / "effect" / "baseline"), "effect", "baseline", seeds=seeds, final=3.300, sd=0.002,
                    rng_seed=1, steps=400, val_every=50)
    write_condition(str(logs / "effect" / "worse"), "effect", "worse", seeds=seeds, final=3.310, sd=0.002,
                    rng_seed=2, steps=400, val_every=50)
    write_condition(str(logs / "null" / "baseline"), "null", "baseline", seeds=seeds, final=3.300, sd=0.002,
                    rng_seed=3, steps=400, val_every=50)
    write_condition(str(logs / "null" / "same"), "null", "same", seeds=seeds, final=3.300, sd=0.002,
                    rng_seed=4, steps=400, val_every=50)
    rc, text, res = run(tmp_path, logs, *FAST, "--metrics", "val_loss,train_loss")
    assert rc == 0
    assert_clean(text)
    eff = comparison(res, "worse", "val_loss", "effect")
    assert eff["verdict"] == "significantly worse"
    assert eff["primary"]["p_holm"] < 0.05 and eff["primary"]["test"] == "paired t"  # same seeds: paired
    assert eff["bootstrap"]["diff_low"] > 0
    null = comparison(res, "same", "val_loss", "null")
    assert not null["primary"]["significant"] and not null["verdict"].startswith("significant")
    # one Holm family over both stages: 2 stages x 1 variant x (2 metrics + the default val_loss TOST)
    assert len(res["family"]) == 6
    assert sorted(f["test"] for f in res["family"] if f["stage"] == "null") == ["TOST +-0.001", "paired t", "paired t"]
    assert "`val_loss`: significantly worse" in text
    assert "Holm-adjusted" in text


def test_small_n_caveat_and_exact_permutation(tmp_path):
    logs = tmp_path / "logs"
    write_condition(str(logs / "stage_c" / "baseline"), "stage_c", "baseline", seeds=[42, 43, 44], final=3.3005,
                    sd=0.0008, rng_seed=1, steps=300, val_every=50)
    write_condition(str(logs / "stage_c" / "palm"), "stage_c", "palm", seeds=[42, 43, 44], final=3.3348, sd=0.0013,
                    rng_seed=2, steps=300, val_every=50, metrics={"peak_memory_mib": 28295})
    rc, text, res = run(tmp_path, logs, *FAST)
    assert rc == 0
    c = comparison(res, "palm", "val_loss")
    assert c["permutation"]["method"] == "exact" and c["permutation"]["p"] == pytest.approx(0.1)
    assert c["permutation"]["min_p"] == pytest.approx(0.1)
    # paired by seed: the distribution-free check is the sign-flip test, 2 / 2^3 at best
    assert c["primary"]["test"] == "paired t" and c["paired"]["signflip_min_p"] == pytest.approx(0.25)
    assert "sign-flip permutation test cannot reach p < 0.05 with 3 pairs (smallest possible p = 0.25)" in text
    mem = comparison(res, "palm", "peak_memory_mib")
    assert mem["verdict"] == "deterministic difference" and mem["diff"] == -2307
    assert c["bootstrap"]["diff_low"] is not None   # never degenerate


def test_robustness_bad_files_failures_and_partial_metrics(tmp_path, capsys):
    logs = tmp_path / "logs"
    base = logs / "st" / "baseline"
    write_condition(str(base), "st", "baseline", seeds=[1, 2, 3, 4], final=3.30, sd=0.003, rng_seed=1,
                    steps=200, val_every=50,
                    per_run={4: dict(metrics={"grad_norm": 0.5})})          # a metric in one run only
    var = logs / "st" / "variant"
    write_condition(str(var), "st", "variant", seeds=[1, 2, 3, 4, 5, 6], final=3.29, sd=0.003, rng_seed=2,
                    steps=200, val_every=50,
                    per_run={2: dict(truncate_last=True),                    # killed while writing a line
                             3: dict(status="oom", error="CUDA out of memory", stop_at=60),
                             4: dict(write_summary=False, stop_at=120),      # still running
                             5: dict(status="diverged", error="loss is nan at step 90", stop_at=90)})
    (var / "seed_6" / "summary.json").write_text('{"schema": 1, "status": "ok", "metr')   # corrupt
    os.makedirs(var / "seed_7")                                              # empty run directory
    one = logs / "st" / "single"
    write_condition(str(one), "st", "single", seeds=[1], final=3.31, rng_seed=3, steps=200, val_every=50)
    (logs / "st" / "broken").mkdir()
    (logs / "st" / "broken" / "experiment.json").write_text("not json")      # corrupt experiment.json, no runs
    rc, text, res = run(tmp_path, logs, *FAST)
    assert rc == 0
    assert_clean(text)
    runs = {(r["condition"], r["name"]): r for r in res["stages"][0]["runs"]}
    assert runs[("variant", "seed_3")]["status"] == "oom"
    assert runs[("variant", "seed_4")]["status"] == "unfinished"
    assert runs[("variant", "seed_5")]["status"] == "diverged"
    assert runs[("variant", "seed_6")]["status"] == "unreadable"
    assert runs[("variant", "seed_7")]["status"] == "unfinished"
    assert runs[("variant", "seed_2")]["status"] == "ok"
    c = comparison(res, "variant", "val_loss")
    assert c["n_v"] == 2 and c["n_b"] == 4        # seeds 1 and 2 finished
    assert "5 run(s) did not finish and are left out of every statistic" in text
    assert "CUDA out of memory" in text
    assert "truncated last line ignored" in text
    assert "unreadable JSON" in text
    one_c = comparison(res, "single", "val_loss")
    assert one_c["verdict"] == "not testable (n < 2)"
    assert res["stages"][0]["missing"]["baseline"]["grad_norm"] == 3
    assert "success rates differ" in text


def test_zero_variance_everywhere_is_reported_not_crashed(tmp_path):
    logs = tmp_path / "logs"
    for name, final in (("baseline", 3.3), ("v", 3.3)):
        write_condition(str(logs / "s" / name), "s", name, seeds=[1, 2, 3], final=final, sd=0.0, steps=100,
                        val_every=50)
    rc, text, res = run(tmp_path, logs, *FAST, "--metrics", "val_loss")
    assert rc == 0
    assert_clean(text)
    assert comparison(res, "v", "val_loss")["verdict"] == "identical"
    assert "Zero variance" in text


def test_equivalence_margins(tmp_path):
    logs = tmp_path / "logs"
    seeds = list(range(10))
    write_condition(str(logs / "s" / "baseline"), "s", "baseline", seeds=seeds, final=3.300, sd=0.002, rng_seed=1,
                    steps=100, val_every=50)
    write_condition(str(logs / "s" / "v"), "s", "v", seeds=seeds, final=3.3005, sd=0.002, rng_seed=2,
                    steps=100, val_every=50)
    rc, text, res = run(tmp_path, logs, *FAST, "--metrics", "val_loss", "--equivalence", "val_loss=0.5%")
    assert rc == 0
    c = comparison(res, "v", "val_loss")
    assert c["tost"]["margin"] == pytest.approx(0.005 * c["mean_b"])
    assert c["verdict"] == "equivalent"
    assert [f["test"] for f in res["family"]] == ["paired t", "TOST +-0.5%"]
    rc2, _, res2 = run(tmp_path, logs, *FAST, "--metrics", "val_loss", "--equivalence", "val_loss=0.0001", out="r2.md")
    assert comparison(res2, "v", "val_loss")["verdict"] != "equivalent"


def test_sweep_table_and_figure(tmp_path):
    logs = tmp_path / "logs"
    for i, (lr, final) in enumerate(((1e-3, 3.40), (2e-3, 3.32), (3e-3, 3.33))):
        write_condition(str(logs / "lr" / f"lr_{lr:g}"), "lr", f"lr_{lr:g}", seeds=[1, 2], final=final, sd=0.004,
                        rng_seed=i, steps=100, val_every=50, overrides={"learning_rate": str(lr)})
    write_condition(str(logs / "lr" / "lr_0.01"), "lr", "lr_0.01", seeds=[1, 2], final=3.3, steps=100, val_every=50,
                    overrides={"learning_rate": "0.01"}, per_run={1: dict(status="diverged", stop_at=40),
                                                                  2: dict(status="oom", stop_at=20, error="OOM")})
    rc, text, res = run(tmp_path, logs, "--resamples", "500", "--baseline", "lr_0.002", "--metrics", "val_loss")
    assert rc == 0
    sw = res["stages"][0]["sweeps"]
    assert len(sw) == 1 and sw[0]["param"] == "learning_rate"
    assert [r["value"] for r in sw[0]["rows"]] == [0.001, 0.002, 0.003, 0.01]
    last = sw[0]["rows"][-1]
    assert (last["finished"], last["diverged"], last["crashed"]) == (0, 1, 1)
    assert "sweep over `learning_rate`" in text
    assert "1 diverged, 1 crashed" in text
    check_figures(tmp_path, text)
    assert any("sweep_learning_rate" in f for f in os.listdir(tmp_path / "report_figures"))


def check_figures(tmp_path, text):
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert links
    for link in links:
        assert os.path.isfile(tmp_path / link), link
    return links


def test_figures_exist_and_no_placeholder_left(tmp_path):
    logs = tmp_path / "logs"
    write_condition(str(logs / "s" / "baseline"), "s", "baseline", seeds=[1, 2, 3], final=3.30, sd=0.003, rng_seed=1,
                    steps=300, val_every=50)
    write_condition(str(logs / "s" / "v"), "s", "v", seeds=[1, 2, 3], final=3.31, sd=0.003, rng_seed=2,
                    steps=300, val_every=50)
    rc, text, res = run(tmp_path, logs, "--resamples", "500")
    assert rc == 0
    assert_clean(text)
    links = check_figures(tmp_path, text)
    assert {os.path.basename(l) for l in links} >= {"s_distributions.png", "s_violins.png", "s_training_curves.png",
                                                     "s_loss_comparison.png", "s_gap.png"}
    csv = open(tmp_path / "summary.csv").read()
    assert csv.startswith("stage,condition,metric") and "nan" not in csv.lower()


def test_same_inputs_same_bytes(tmp_path):
    logs = tmp_path / "logs"
    write_condition(str(logs / "s" / "baseline"), "s", "baseline", seeds=[1, 2, 3, 4], final=3.30, sd=0.003,
                    rng_seed=1, steps=100, val_every=50)
    write_condition(str(logs / "s" / "v"), "s", "v", seeds=[5, 6, 7], final=3.31, sd=0.003, rng_seed=2,
                    steps=100, val_every=50)
    outs = []
    for d in ("a", "b"):
        os.makedirs(tmp_path / d)
        rc = analyze.main(["--logs", str(logs), "--out", str(tmp_path / d / "report.md"), "--seed", "3", *FAST])
        assert rc == 0
        text = open(tmp_path / d / "report.md").read()
        text = re.sub(r"Generated \S+ \S+ UTC", "", text).replace(f"{tmp_path}/{d}", "")
        outs.append((text, open(tmp_path / d / "results.json").read().replace(f"{tmp_path}/{d}", ""),
                     open(tmp_path / d / "summary.csv").read()))
    assert outs[0] == outs[1]
    rc = analyze.main(["--logs", str(logs), "--out", str(tmp_path / "c.md"), "--seed", "4", *FAST])
    other = json.load(open(tmp_path / "c_results.json"))
    first = json.loads(outs[0][1])
    b1 = first["stages"][0]["comparisons"][0]["bootstrap"]
    b2 = other["stages"][0]["comparisons"][0]["bootstrap"]
    assert b1["diff"] == b2["diff"] and b1["diff_low"] != b2["diff_low"]   # the seed drives resampling only


def test_same_bytes_from_processes_with_different_hash_seeds(tmp_path):
    # a set's iteration order depends on PYTHONHASHSEED; results.json once listed config keys in it
    import subprocess
    logs = tmp_path / "logs"
    for name, lr in (("baseline", "0.001"), ("v", "0.002")):
        write_condition(str(logs / "s" / name), "s", name, seeds=[1, 2], final=3.30, sd=0.003, steps=100, val_every=50,
                        overrides={"learning_rate": lr})
    outs = []
    for seed in ("1", "2"):
        out = tmp_path / seed / "report.md"
        subprocess.run([sys.executable, os.path.join(ROOT, "analyze.py"), "--logs", str(logs), "--out", str(out),
                        "--resamples", "200", "--no-figures"], check=True, capture_output=True,
                       env=dict(os.environ, PYTHONHASHSEED=seed))
        outs.append((out.parent / "results.json").read_text().replace(str(out.parent), ""))
    assert '"config": {' in outs[0] and outs[0] == outs[1]


def test_nothing_to_analyse_exits_nonzero_saying_where(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("nothing here\n")
    assert analyze.main(["--logs", str(empty), "--out", str(tmp_path / "r.md")]) == 1
    err = capsys.readouterr().err
    assert str(empty) in err and "nothing to analyse" in err
    assert not os.path.exists(tmp_path / "r.md")
    assert analyze.main(["--logs", str(tmp_path / "missing"), "--out", str(tmp_path / "r.md")]) == 1
    assert "no such directory" in capsys.readouterr().err


def test_bad_flags_one_clear_line(tmp_path, capsys):
    for bad in (["--equivalence", "val_loss"], ["--equivalence", "val_loss=abc"], ["--resamples", "5"]):
        with pytest.raises(SystemExit) as e:
            analyze.main(["--logs", str(tmp_path), *bad])
        assert e.value.code == 2
        assert "--" in capsys.readouterr().err
    logs = tmp_path / "logs"
    write_condition(str(logs / "s" / "baseline"), "s", "baseline", seeds=[1, 2], final=3.3, steps=100, val_every=50)
    assert analyze.main(["--logs", str(logs), "--stage", "nope", "--out", str(tmp_path / "r.md")]) == 2
    assert "stages: s" in capsys.readouterr().err


def test_no_baseline_in_stage_is_a_note(tmp_path):
    logs = tmp_path / "logs"
    for n in ("a", "b"):
        write_condition(str(logs / "s" / n), "s", n, seeds=[1, 2], final=3.3, sd=0.01, steps=100, val_every=50)
    rc, text, res = run(tmp_path, logs, *FAST)
    assert rc == 0 and res["stages"][0]["comparisons"] == []
    assert "choose one with --baseline NAME" in text
    rc, text, res = run(tmp_path, logs, *FAST, "--baseline", "a", out="r2.md")
    assert res["stages"][0]["comparisons"]


def test_user_template_and_unknown_placeholder(tmp_path, capsys):
    logs = tmp_path / "logs"
    write_condition(str(logs / "s" / "baseline"), "s", "baseline", seeds=[1, 2], final=3.3, sd=0.01, steps=100,
                    val_every=50)
    tpl = tmp_path / "t.md"
    tpl.write_text("# Mine\n{{executive_summary}}\n{{ limitations }}\n{{not_a_field}}\n")
    rc, text, _ = run(tmp_path, logs, *FAST, "--template", str(tpl))
    assert rc == 0 and text.startswith("# Mine")
    assert "unknown placeholder `not_a_field`" in text
    assert "not_a_field" in capsys.readouterr().err
    assert "{{" not in text


# ---------------------------------------------------------------------------------------------
# plain speedrun log files

CODE = '''import os
"""Example of what the script prints:
step:125/5100 val_loss:4.9584 train_time:31117ms step_avg:248.94ms
"""
print0(f"step:{step}/{args.num_iterations} val_loss:{val_loss:.4f} train_time:{training_time_ms:.0f}ms step_avg:{x:.2f}ms")
# ====================================================================================
'''


def test_speedrun_log_parser_exact_format():
    text = CODE + "=" * 100 + "\n" + "\n".join([
        "step:0/500 val_loss:10.8258 train_time:0ms step_avg:nanms",
        "step:1/500 train_loss:10.8258 train_time:2417ms step_avg:nanms",
        "step:2/500 train_loss:10.1032 train_time:2718ms step_avg:inf ms",
        "step:250/500 val_loss:4.1234 train_time:62500ms step_avg:260.42ms",
        "step:500/500 train_loss:3.6100 train_time:125000ms step_avg:256.41ms",
        "step:500/500 val_loss:3.2795 train_time:125000ms step_avg:256.41ms",
        "peak memory consumption: 30602 MiB",
    ]) + "\n"
    p = loading.parse_speedrun_log(text)
    assert p["val"] == [(0, 10.8258, 0.0), (250, 4.1234, 62500.0), (500, 3.2795, 125000.0)]
    assert [t[:2] for t in p["train"]] == [(1, 10.8258), (500, 3.61)]   # 'step_avg:inf ms' is not the format
    assert p["total"] == 500 and p["last_step"] == 500 and p["peak_mib"] == 30602


def test_speedrun_log_windows_line_endings_and_no_code():
    text = "step:0/10 val_loss:5.0000 train_time:0ms step_avg:nanms\r\nstep:10/10 val_loss:4.0000 train_time:100ms step_avg:10.00ms\r\n"
    p = loading.parse_speedrun_log(text)
    assert [v[1] for v in p["val"]] == [5.0, 4.0]


def test_speedrun_log_folders_are_conditions(tmp_path):
    logs = tmp_path / "logs"
    for cond, final, n in (("baseline", 3.2930, 3), ("moderate", 3.3041, 4)):
        os.makedirs(logs / "lmd" / cond)
        for i in range(n):
            speedrun_log(str(logs / "lmd" / cond / f"{cond}_seed{100 + i}_abc.txt"), final=final + 0.001 * i,
                         steps=250, val_every=125, code=CODE, seed=i)
    speedrun_log(str(logs / "lmd" / "moderate" / "moderate_unfinished.txt"), final=3.3, steps=250, val_every=125,
                 stop_at=130, code=CODE)
    (logs / "lmd" / "moderate" / "README.md").write_text("step:1/2 val_loss:1.0 train_time:1ms step_avg:1.00ms\n")
    rc, text, res = run(tmp_path, logs, *FAST)
    assert rc == 0
    assert_clean(text)
    st = res["stages"][0]
    assert st["name"] == "lmd" and [c["name"] for c in st["conditions"]] == ["baseline", "moderate"]
    runs = {r["name"]: r for r in st["runs"]}
    assert runs["moderate_unfinished.txt"]["status"] == "unfinished"
    assert "log ends at step 130/250" in text
    assert runs["baseline_seed100_abc.txt"]["metrics"] == {"peak_memory_mib": 30602.0, "train_loss": pytest.approx(runs["baseline_seed100_abc.txt"]["metrics"]["train_loss"]),
                                                           "train_time_s": 72.0, "val_loss": 3.293}
    assert runs["baseline_seed100_abc.txt"]["seed"] == 100
    c = comparison(res, "moderate", "val_loss")
    assert c["n_b"] == 3 and c["n_v"] == 4
    assert c["mean_v"] == pytest.approx(np.mean([3.3041, 3.3051, 3.3061, 3.3071]))
    assert "come from plain log files" in text


def test_resumed_run_duplicate_steps_keep_last(tmp_path):
    d = tmp_path / "run"
    write_run(str(d), seed=1, final=3.3, steps=100, val_every=50)
    with open(d / "metrics.jsonl", "a") as f:
        f.write('{"step": 100, "val_loss": 3.2, "train_time_ms": 1.0}\n')
    r = loading.read_run_dir(str(d), "s", "c")
    assert r.val.steps.tolist() == [0, 50, 100] and r.val.values[-1] == 3.2


def test_no_finished_run_writes_report_and_exits_1(tmp_path, capsys):
    logs = tmp_path / "logs"
    write_condition(str(logs / "s" / "baseline"), "s", "baseline", seeds=[1, 2], final=3.3, steps=100, val_every=50,
                    per_run={1: dict(status="oom", stop_at=10, error="CUDA out of memory"),
                             2: dict(write_summary=False, stop_at=30)})
    rc, text, res = run(tmp_path, logs, *FAST)
    assert rc == 1
    assert "no run under" in capsys.readouterr().err
    assert_clean(text)
    assert "CUDA out of memory" in text and res["family"] == []


def test_power_uses_the_primary_design(tmp_path):
    logs = tmp_path / "logs"
    write_condition(str(logs / "s" / "baseline"), "s", "baseline", seeds=[1, 2, 3, 4], final=3.30, sd=0.004,
                    rng_seed=1, steps=100, val_every=50)
    write_condition(str(logs / "s" / "paired"), "s", "paired", seeds=[1, 2, 3, 4], final=3.302, sd=0.004,
                    rng_seed=2, steps=100, val_every=50)
    write_condition(str(logs / "s" / "unpaired"), "s", "unpaired", seeds=[7, 8, 9], final=3.302, sd=0.004,
                    rng_seed=3, steps=100, val_every=50)
    rc, text, res = run(tmp_path, logs, *FAST, "--metrics", "val_loss")
    p = comparison(res, "paired", "val_loss")
    u = comparison(res, "unpaired", "val_loss")
    assert p["primary"]["test"] == "paired t" and p["power"]["design"] == "paired"
    assert u["primary"]["test"] == "Welch t" and u["power"]["design"] == "two-sample"
    assert "No seed shared with the baseline for `unpaired`" in text


def test_malformed_files_of_every_kind_never_crash(tmp_path):
    logs = tmp_path / "logs"
    L = logs / "s"
    write_condition(str(L / "baseline"), "s", "baseline", seeds=[1, 2, 3], final=3.3, sd=0.01, steps=100, val_every=50)
    write_condition(str(L / "v"), "s", "v", seeds=[1, 2, 3, 4, 5, 6], final=3.31, sd=0.01, steps=100, val_every=50,
                    rng_seed=3)
    (L / "v" / "seed_1" / "summary.json").write_text(json.dumps(
        {"status": "ok", "metrics": [1, 2], "seed": "x", "config": [1], "env": "str", "steps_completed": "a", "script": 5}))
    (L / "v" / "seed_2" / "metrics.jsonl").write_text(
        '[1,2]\n"str"\n{"step":"a","val_loss":"b"}\n{"step": 5, "val_loss": null, "train_time_ms": "x"}\n{"step": 10, "train_loss": true}\n')
    (L / "v" / "seed_3" / "summary.json").write_text(json.dumps(
        {"status": 5, "metrics": {"val_loss": "3.3", "train_loss": float("nan"), "x": True}, "error": ["a"]}))
    (L / "v" / "seed_4" / "summary.json").write_text("[]")
    os.remove(L / "v" / "seed_5" / "metrics.jsonl")
    os.makedirs(L / "v" / "seed_5" / "metrics.jsonl")
    (L / "v" / "seed_6" / "metrics.jsonl").write_bytes(b"\x00\x01\xff" * 100)
    (L / "baseline" / "experiment.json").write_text(json.dumps(
        {"seeds": ["a", 1, None], "overrides": [["x"]], "command": ["a", 1], "script": 3}))
    (L / "v" / "seed_x").write_text("not a directory")
    os.makedirs(L / "v" / "seed_9" / "seed_10")
    rc, text, res = run(tmp_path, logs, "--resamples", "200")
    assert rc == 0
    assert_clean(text)
    status = {r["name"]: r["status"] for r in res["stages"][0]["runs"] if r["condition"] == "v"}
    assert status["seed_3"] == "failed" and status["seed_4"] == "unreadable" and status["seed_9"] == "unfinished"
    assert "unknown status 5" in text and "cannot be read" in text


def test_unpaired_3_vs_3_caveat_states_the_exact_floor(tmp_path):
    logs = tmp_path / "logs"
    write_condition(str(logs / "s" / "baseline"), "s", "baseline", seeds=[1, 2, 3], final=3.3005, sd=0.0008,
                    rng_seed=1, steps=100, val_every=50)
    write_condition(str(logs / "s" / "palm"), "s", "palm", seeds=[4, 5, 6], final=3.3348, sd=0.0013,
                    rng_seed=2, steps=100, val_every=50)
    rc, text, res = run(tmp_path, logs, *FAST, "--metrics", "val_loss")
    c = comparison(res, "palm", "val_loss")
    assert c["primary"]["test"] == "Welch t" and c["verdict"] == "significantly worse"
    assert "permutation test cannot reach p < 0.05 with 3 vs 3 runs (smallest possible p = 0.1)" in text


def test_target_criteria_only_where_the_target_means_something(tmp_path):
    logs = tmp_path / "logs"
    for stage, extra in (("full", {}), ("tiny", {"config": {"preset": "tiny"}}),
                         ("mini", {"script": "train_mini_embnorm.py"})):
        for name in ("baseline", "v"):
            write_condition(str(logs / stage / name), stage, name, seeds=[1, 2], final=3.27, sd=0.002,
                            steps=100, val_every=50, **extra)
    rc, text, res = run(tmp_path, logs, *FAST, "--metrics", "val_loss")
    applies = {s["name"]: s["dynamics"]["target_applies"] for s in res["stages"]}
    assert applies == {"full": True, "tiny": False, "mini": False}
    assert set(res["stages"][0]["dynamics"]["speedrun"]) == {"baseline", "v"}
    rc, text, res = run(tmp_path, logs, *FAST, "--metrics", "val_loss", "--target", "3.3", out="r2.md")
    assert all(s["dynamics"]["target_applies"] for s in res["stages"])


def test_superseded_attempts_are_not_results(tmp_path):
    logs = tmp_path / "logs"
    write_condition(str(logs / "s" / "baseline"), "s", "baseline", seeds=[1, 2], final=3.3, sd=0.01, steps=100,
                    val_every=50)
    write_run(str(logs / ".superseded" / "s" / "baseline" / "seed_1.20261125T134626Z"), seed=1, final=9.9,
              steps=100, val_every=50)
    rc, text, res = run(tmp_path, logs, *FAST)
    assert [s["name"] for s in res["stages"]] == ["s"]
    assert res["stages"][0]["descriptive"]["baseline"]["val_loss"]["n"] == 2
    assert ".superseded: hidden folder skipped (1 run directory inside" in text
