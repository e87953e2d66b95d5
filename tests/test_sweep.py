"""./run_experiments.sh sweep: one hyperparameter of one trainer, value by value, into a layout that
analyze.py reads as a sweep.

The end-to-end test trains the real train_gpt.py (a 2-layer, 32-wide model on synthetic shards, 6
steps) at three learning rates, one of them (1e30) so large that the weights overflow and the
validation loss is NaN: the trainer exits with status diverged, the runner records it and goes on,
exits 1 (a run is not ok), and analyze.py's report has the sweep table with the diverged value and
the sweep plot. The dry-run test checks the plan: one command per value x seed, with --<param> <value>.
"""
import json
import math
import os
import re
import subprocess
import sys

import pytest

from conftest import learnable_tokens, write_shard

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNER = os.path.join(REPO, "run_experiments.sh")
# A model small enough for a 6-step run in a few seconds on one core.
SMALL = ["--sequence_length", "32", "--batch_size", "4", "--device_batch_size", "2", "--n_layer", "2",
         "--n_embd", "32", "--n_head", "2", "--val_tokens", "256", "--val_loss_every", "3", "--vocab_size", "64"]
VALUES = ["0.0036", "1e30", "0.02"]  # train_gpt.py's default first (the baseline); a value after the diverging one


def runner(args, cwd, timeout=300):
    env = dict(os.environ, PYTHON=sys.executable)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    for k in ("NNODES", "NODE_RANK", "RDZV_ENDPOINT", "RDZV_BACKEND"):
        env.pop(k, None)
    # no GPU, whatever this machine has: the sweep must plan and run on CPU
    nogpu = os.path.join(str(cwd), "nogpu_bin")
    os.makedirs(nogpu, exist_ok=True)
    env["PATH"] = f"{nogpu}:{os.path.dirname(sys.executable)}:{env.get('PATH', '')}"
    return subprocess.run(["bash", RUNNER, *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=timeout)


@pytest.fixture
def shards(tmp_path):
    d = tmp_path / "shards"
    d.mkdir()
    toks = learnable_tokens(22_000, vocab=64)
    write_shard(d / "synth_train_000000.bin", toks[:20_000])
    write_shard(d / "synth_val_000000.bin", toks[20_000:])
    return ["--input_bin", str(d / "synth_train_*.bin"), "--input_val_bin", str(d / "synth_val_*.bin")]


def test_dry_run_prints_one_command_per_value_and_seed(tmp_path):
    logs = tmp_path / "logs"
    p = runner(["sweep", "train_gpt.py", "--param", "learning_rate", "--values", "0.01", "0.02,0.04",
                "--seeds", "1,2", "--preset", "tiny", "--iterations", "6", "--logs", str(logs), "--dry-run"], tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    cmds = [line for line in p.stdout.splitlines() if "train_gpt.py --seed" in line]
    assert len(cmds) == 6
    seen = set()
    for line in cmds:
        seed = re.search(r"--seed (\d+)", line).group(1)
        lr = re.findall(r"--learning_rate (\S+)", line)
        assert len(lr) == 1, line  # the sweep's value, once
        assert f"/sweep_learning_rate/learning_rate={lr[0]}/seed_{seed}" in line
        assert "--preset tiny" in line and "--num_iterations 6" in line
        seen.add((lr[0], seed))
    assert seen == {(v, s) for v in ("0.01", "0.02", "0.04") for s in ("1", "2")}
    assert not logs.exists()  # a dry run writes nothing


@pytest.mark.parametrize("args, says", [
    (["sweep", "--param", "lr", "--values", "1"], "name the script"),
    (["sweep", "train_gpt.py", "--values", "1", "2"], "--param NAME is missing"),
    (["sweep", "train_gpt.py", "--param", "learning_rate"], "--values V1 V2 ... is missing"),
    (["sweep", "train_gpt.py", "--param", "learning_rate", "--values", "1", "1"], "'1' is given twice"),
    (["sweep", "train_gpt.py", "--param", "learning_rate", "--values", "1", "a/b"], "'a/b' is not a plain value"),
    (["sweep", "train_gpt.py", "--param", "seed", "--values", "1", "2"], "set by the runner"),
    (["sweep", "no_such.py", "--param", "learning_rate", "--values", "1", "2"], "does not exist"),
    (["sweep", "train_gpt.py", "--param", "learning_rate", "--values", "1", "2", "--", "--learning_rate", "3"],
     "would override the sweep"),
    (["tiny", "--param", "learning_rate"], "belong to the sweep stage"),
])
def test_bad_sweep_arguments_are_one_clear_line(tmp_path, args, says):
    p = runner([*args, "--dry-run", "--logs", str(tmp_path / "logs")], tmp_path)
    assert p.returncode == 2
    assert says in p.stderr and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr


def test_help_lists_the_sweep_usage(tmp_path):
    p = runner(["--help"], tmp_path)
    assert p.returncode == 0
    assert "./run_experiments.sh sweep SCRIPT --param NAME --values V1 V2" in p.stdout


def test_lr_sweep_records_divergence_goes_on_and_reports(tmp_path, shards):
    logs = tmp_path / "logs"
    p = runner(["sweep", "train_gpt.py", "--param", "learning_rate", "--values", *VALUES, "--seeds", "1",
                "--iterations", "6", "--logs", str(logs), "--", *SMALL, *shards], tmp_path)
    out = p.stdout + p.stderr
    assert p.returncode == 1, out  # one run is not ok
    stage = logs / "sweep_learning_rate"
    summaries = {v: json.loads((stage / f"learning_rate={v}" / "seed_1" / "summary.json").read_text()) for v in VALUES}
    # every value ran, the one after the diverged run too
    for v in VALUES:
        assert float(summaries[v]["config"]["learning_rate"]) == float(v)
        assert summaries[v]["steps_completed"] >= 3
    assert summaries["1e30"]["status"] == "diverged", summaries["1e30"]
    for v in ("0.0036", "0.02"):
        s = summaries[v]
        assert s["status"] == "ok" and s["steps_completed"] == 6
        # a 64-token vocabulary: uniform guessing is ln 64; six steps of training do better
        assert math.isfinite(s["metrics"]["val_loss"]) and s["metrics"]["val_loss"] < math.log(64)
    assert re.search(r"learning_rate=1e30\s+1\s+run\s+diverged", out), out
    # the final table gives no val loss for the diverged run (its last finite one was step 0's)
    row = next(line for line in out.splitlines() if re.match(r"\S*learning_rate=1e30\s", line))
    assert not re.search(r"diverged\s+\d+\.\d{4}\s", row), row
    sweep = json.loads((stage / "sweep.json").read_text())
    assert sweep["baseline"] == "learning_rate=0.0036" and sweep["values"] == VALUES

    report = logs / "report.md"
    a = subprocess.run([sys.executable, os.path.join(REPO, "analyze.py"), "--logs", str(logs), "--out", str(report),
                        "--resamples", "200"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert a.returncode == 0, a.stdout + a.stderr
    text = report.read_text()
    assert "sweep over `learning_rate`" in text
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 8 and cells[1].startswith("learning_rate="):  # value, condition, runs, loss, ppl, runtime, hours, state
            rows[cells[1]] = cells
    assert set(rows) == {f"learning_rate={v}" for v in VALUES}, text
    diverged = rows["learning_rate=1e30"]
    assert "1 diverged" in diverged[7] and "non-finite" in diverged[7] and diverged[3] == "—"
    for v in ("0.0036", "0.02"):
        r = rows[f"learning_rate={v}"]
        loss = summaries[v]["metrics"]["val_loss"]
        assert "1 finished" in r[7]
        assert float(r[3].strip("*")) == pytest.approx(loss, abs=6e-4)
        assert float(r[4]) == pytest.approx(math.exp(loss), rel=2e-3)  # val ppl = exp(val loss)
    assert "baseline `learning_rate=0.0036`" in text
    figs = re.findall(r"\]\(([^)]*sweep_learning_rate[^)]*\.png)\)", text)
    sweep_figs = [f for f in figs if "_sweep_learning_rate_" in os.path.basename(f)]
    assert sweep_figs and all((logs / f).is_file() and (logs / f).stat().st_size > 0 for f in sweep_figs)
