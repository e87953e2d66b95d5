"""./run_experiments.sh STAGE --sequential: batches, a look after each, a stop as soon as it is decided.

The stopping logic is driven with tests/fake_trainer.py (its FAKE_LOSS_SHIFT / FAKE_LOSS_NOISE knobs set
the val_loss each run writes), and every printed look is checked against scipy's two-sample t-test on
the runs' own summary.json values, look prefix by look prefix. One test runs the real tiny trainers end
to end. The statistics themselves are tested in tests/test_sequential.py.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from scipy import stats

from test_runner import REPO, RUNNER, TINY, fake_repo, need_real, run, shards, starts  # noqa: F401 (fixtures)

LOOK = re.compile(r"^== look (\d+) of (\d+) \((\d+)/(\d+) runs per condition\): statistic (\S+) \(df (\S+)\), "
                  r"efficacy bound (\S+)(?:, futility bound (\S+))?, alpha spent (\S+) -> (\w+)$", re.M)
EFFECT = {"FAKE_LOSS_SHIFT": "train_gpt_palm.py=-0.5", "FAKE_LOSS_NOISE": "0.01", "FAKE_STEP_S": "0"}
NULL = {"FAKE_LOSS_NOISE": "0.01", "FAKE_STEP_S": "0"}


def seq(fake_repo, logs, *more, stage="tiny", max_seeds="6"):
    return [stage, "--sequential", "--max-seeds", max_seeds, "--iterations", "5", "--scripts-dir", str(fake_repo),
            "--logs", str(logs), *more]


def looks(out):
    return [dict(look=int(m[0]), of=int(m[1]), n=int(m[2]), stat=float(m[4]), df=float(m[5]), bound=float(m[6]),
                 futility=float(m[7]) if m[7] else None, outcome=m[9]) for m in LOOK.findall(out)]


def values(stage_dir, cond):
    """{seed: val_loss} of the finished runs of a condition, from their summary.json."""
    out = {}
    for d in os.listdir(os.path.join(stage_dir, cond)):
        if d.startswith("seed_"):
            with open(os.path.join(stage_dir, cond, d, "summary.json")) as f:
                s = json.load(f)
            if s["status"] == "ok":
                out[int(d[5:])] = s["metrics"]["val_loss"]
    return out


def check_looks_against_scipy(stage_dir, lks, baseline="baseline", variant="palm"):
    """Every look's statistic is the pooled two-sample t of the first n seeds (positive: variant lower)."""
    b, v = values(stage_dir, baseline), values(stage_dir, variant)
    for lk in lks:
        bx = [b[s] for s in sorted(b)[:lk["n"]]]
        vx = [v[s] for s in sorted(v)[:lk["n"]]]
        t = stats.ttest_ind(bx, vx).statistic
        assert lk["stat"] == pytest.approx(t, abs=2e-3, rel=1e-3), (lk, bx, vx)
        assert lk["df"] == 2 * lk["n"] - 2


def started(tmp_path, since=0):
    return [(os.path.basename(r["argv"][0]), int(r["argv"][r["argv"].index("--seed") + 1]))
            for r in starts(tmp_path)[since:]]


def test_large_effect_stops_at_the_first_look(fake_repo, tmp_path):
    logs = tmp_path / "logs"
    p = run(seq(fake_repo, logs), tmp_path, env=EFFECT, check_rc=0)
    out = p.stdout
    # the design was recorded before the first run, with the flags' and the stage's values
    assert out.index("== design recorded in") < out.index("[1/4]")
    design = json.loads((logs / "tiny" / "sequential.json").read_text())
    assert {k: design[k] for k in ("question", "metric", "alpha", "sides", "spending", "max_runs", "batch",
                                   "baseline", "variant")} == {
        "question": "compare", "metric": "val_loss", "alpha": 0.05, "sides": 2, "spending": "obf", "max_runs": 6,
        "batch": 2, "baseline": "baseline", "variant": "palm"}
    # one batch of 2 seeds per condition, then the stop
    assert sorted(started(tmp_path)) == [("train_gpt.py", 42), ("train_gpt.py", 43), ("train_gpt_palm.py", 42),
                                         ("train_gpt_palm.py", 43)]
    lks = looks(out)
    assert [(lk["look"], lk["of"], lk["n"], lk["outcome"]) for lk in lks] == [(1, 3, 2, "effect")]
    assert lks[0]["stat"] > lks[0]["bound"] > 0
    check_looks_against_scipy(logs / "tiny", lks)
    assert "== sequential tiny: stop: effect (look 1 of 3" in out and "adjusted p" in out
    exp = json.loads((logs / "tiny" / "palm" / "experiment.json").read_text())
    assert exp["sequential"]["batch_seeds"] == {"baseline": [42, 43], "palm": [42, 43]}
    assert not (logs / "tiny" / "baseline" / "seed_44").exists()


def test_null_effect_runs_to_the_maximum_or_stops_for_futility(fake_repo, tmp_path):
    logs = tmp_path / "logs"
    p = run(seq(fake_repo, logs), tmp_path, env=NULL, check_rc=0)
    lks = looks(p.stdout)
    assert lks and all(lk["outcome"] == "continue" for lk in lks[:-1])
    last = lks[-1]
    assert last["outcome"] in ("futility", "maximum")
    assert last["outcome"] == "futility" or (last["look"] == last["of"] == 3 and last["n"] == 6)
    assert [lk["n"] for lk in lks] == [2, 4, 6][:len(lks)]
    for lk in lks:  # each outcome is the one its own bounds give
        assert abs(lk["stat"]) < lk["bound"]
        if lk["outcome"] == "futility":
            assert abs(lk["stat"]) <= lk["futility"]
        elif lk["futility"] is not None and lk["outcome"] == "continue":
            assert abs(lk["stat"]) > lk["futility"]
    check_looks_against_scipy(logs / "tiny", lks)
    # exactly the runs the looks needed, seed by seed from the stage's list
    n = last["n"]
    want = sorted((s, seed) for s in ("train_gpt.py", "train_gpt_palm.py") for seed in range(42, 42 + n))
    assert sorted(started(tmp_path)) == want
    assert f"stop: {'futility' if last['outcome'] == 'futility' else 'maximum reached'}" in p.stdout


def test_seeds_beyond_the_stage_list_and_the_report_section(fake_repo, tmp_path):
    # the stage lists 3 seeds; 4 per condition continue with the integers after the largest (45)
    logs = tmp_path / "logs"
    p = run(seq(fake_repo, logs, "--batch", "4", "--seeds", "43,42", max_seeds="4"), tmp_path, env=NULL, check_rc=0)
    assert sorted(started(tmp_path)) == sorted((s, seed) for s in ("train_gpt.py", "train_gpt_palm.py")
                                               for seed in (42, 43, 44, 45))
    lks = looks(p.stdout)
    assert len(lks) == 1 and lks[0]["n"] == 4 and lks[0]["outcome"] in ("maximum", "effect")
    # the report: the design, each look, the adjusted p, and the naive p not to be quoted
    r = subprocess.run([sys.executable, os.path.join(REPO, "analyze.py"), "--logs", str(logs), "--out",
                        str(tmp_path / "report.md"), "--no-figures"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "report.md").read_text()
    sec = text[text.index("### Sequential designs"):]
    assert "not the ones to quote" in sec and "#### Stage `tiny`" in sec
    assert re.search(r"^\| 1 \| 4/4 \| 1\.00 \| ", sec, re.M)  # one look, all the information
    res = json.loads((tmp_path / "results.json").read_text())["sequential"]["tiny"]["decision"]
    assert res["design"]["max_runs"] == 4 and res["looks"][0]["statistic"] == pytest.approx(lks[0]["stat"], abs=1e-3)
    assert f"p = {res['p_adjusted']:.3g}" in sec
    first = text[text.index("## Decisions"):text.index("## Executive summary")]
    assert "Sequential design (`palm` vs `baseline` on `val_loss`)" in first and "Quote these" in first


def test_a_changed_design_is_refused_and_a_rerun_runs_nothing(fake_repo, tmp_path):
    logs = tmp_path / "logs"
    run(seq(fake_repo, logs), tmp_path, env=EFFECT, check_rc=0)
    design_file = logs / "tiny" / "sequential.json"
    before = design_file.read_bytes()
    n0 = len(starts(tmp_path))
    p = run(seq(fake_repo, logs, "--batch", "3", "--alpha", "0.01"), tmp_path, env=EFFECT, check_rc=2)
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and str(design_file) in err[0] and "change alpha, batch" in err[0], p.stderr
    assert design_file.read_bytes() == before and len(starts(tmp_path)) == n0
    # the recorded values repeated, or left out, are the same design: nothing is run again
    for more in (["--batch", "2", "--alpha", "0.05"], []):
        args = seq(fake_repo, logs, *more) if more else ["tiny", "--sequential", "--iterations", "5",
                                                           "--scripts-dir", str(fake_repo), "--logs", str(logs)]
        p = run(args, tmp_path, env=EFFECT, check_rc=0)
        assert "stop: effect (look 1 of 3" in p.stdout and len(starts(tmp_path)) == n0
    assert design_file.read_bytes() == before


def test_usage_errors_are_one_line(fake_repo, tmp_path):
    logs = tmp_path / "logs"
    cases = [(["embnorm", "--sequential", "--max-seeds", "4"], "name the one under test with --variant"),
             (["tiny", "--sequential"], "--sequential needs --max-seeds N"),
             (["tiny", "--max-seeds", "4"], "--max-seeds belongs to a sequential stage"),
             (["tiny", "--sequential", "--max-seeds", "4", "--variants", "palm"], "--variant NAME (not --variants)"),
             (["tiny", "--sequential", "--max-seeds", "4", "--variant", "nope"], "condition 'nope' is not in stage tiny"),
             (["tiny", "--sequential", "--max-seeds", "4", "--batch", "5"], "batch = 5: larger than max_runs"),
             (["tiny", "--sequential", "--max-seeds", "x"], "--max-seeds: 'x' is not a positive integer"),
             (["tiny", "--sequential", "--max-seeds", "4", "--spending", "linear"], "spending = 'linear'")]
    for args, msg in cases:
        p = run([*args, "--scripts-dir", str(fake_repo), "--logs", str(logs)], tmp_path, check_rc=2)
        assert len(p.stderr.strip().splitlines()) == 1 and msg in p.stderr, (args, p.stderr)
    assert not starts(tmp_path) and not (logs / "tiny" / "sequential.json").exists()
    # a stage of three conditions with --variant: a dry run shows only the baseline and that variant
    p = run(["embnorm", "--sequential", "--max-seeds", "4", "--variant", "rmsnorm", "--dry-run", "--scripts-dir",
             str(fake_repo), "--logs", str(logs)], tmp_path, check_rc=0)
    assert "rmsnorm vs baseline" in p.stdout and "(not written: dry run)" in p.stdout
    assert "--variant rmsnorm" in p.stdout and "--variant baseline" in p.stdout and "layernorm" not in p.stdout
    assert not logs.exists() or not any(logs.iterdir())


def test_an_interrupted_sequential_stage_resumes_without_repeating_a_run(fake_repo, tmp_path):
    logs = tmp_path / "logs"
    # a design declared in advance (no futility stop, so that look 1 continues on null data)
    (logs / "tiny").mkdir(parents=True)
    (logs / "tiny" / "sequential.json").write_text(json.dumps({"max_runs": 4, "batch": 2, "variant": "palm",
                                                               "futility": "none"}))
    e = dict(os.environ, PYTHON=sys.executable, FAKE_HANG_SEEDS="44", FAKE_RECORD=str(tmp_path / "starts.jsonl"),
             **NULL)
    e.pop("CUDA_VISIBLE_DEVICES", None)
    proc = subprocess.Popen(["bash", RUNNER, *seq(fake_repo, logs, max_seeds="4")], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=e, cwd=tmp_path)
    deadline = time.time() + 120
    while len(starts(tmp_path)) < 5 and time.time() < deadline:  # batch 1 (4 runs), then baseline seed 44 hangs
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert [lk["outcome"] for lk in looks(out)] == ["continue"]
    assert "== interrupted: the stage is undecided" in out
    assert json.loads((logs / "tiny" / "baseline" / "seed_44" / "summary.json").read_text())["status"] == "interrupted"
    assert not (logs / "tiny" / "palm" / "seed_44").exists()
    n0 = len(starts(tmp_path))
    assert n0 == 5

    p = run(seq(fake_repo, logs, max_seeds="4"), tmp_path, env=NULL, check_rc=0)
    again = started(tmp_path, n0)
    assert sorted(again) == [("train_gpt.py", 44), ("train_gpt.py", 45), ("train_gpt_palm.py", 44),
                             ("train_gpt_palm.py", 45)]  # seeds 42 and 43 reused, not run again
    assert "previous attempt (interrupted) moved to .superseded/tiny/baseline/seed_44." in p.stdout
    lks = looks(p.stdout)
    assert [(lk["look"], lk["n"]) for lk in lks] == [(1, 2), (2, 4)] and lks[0]["outcome"] == "continue"
    assert lks[1]["outcome"] in ("maximum", "effect")
    check_looks_against_scipy(logs / "tiny", lks)


@need_real
def test_real_tiny_stage_end_to_end(tmp_path, shards):
    # palm trained at learning rate 1e-9 (an interpreter wrapper adds the flag to its runs only) against the
    # baseline: a large, real effect on val_loss that the first look can see
    wrapper = tmp_path / "py"
    wrapper.write_text(f'#!/bin/sh\ncase "$*" in *train_gpt_palm.py*) exec {sys.executable} "$@" --learning_rate 1e-9;; '
                       f'esac\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    logs = tmp_path / "logs"
    p = run(["tiny", "--sequential", "--max-seeds", "4", "--batch", "2", "--iterations", "8", "--logs", str(logs),
             "--", *TINY, *shards], tmp_path, env={"PYTHON": str(wrapper), "OMP_NUM_THREADS": "1"}, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    lks = looks(p.stdout)
    assert lks and lks[-1]["outcome"] in ("effect", "maximum", "futility")
    check_looks_against_scipy(logs / "tiny", lks)
    for cond in ("baseline", "palm"):
        for seed in range(42, 42 + lks[-1]["n"]):
            s = json.loads((logs / "tiny" / cond / f"seed_{seed}" / "summary.json").read_text())
            assert s["status"] == "ok" and s["steps_completed"] == 8
    assert json.loads((logs / "tiny" / "sequential.json").read_text())["max_runs"] == 4
