"""GPU packing and cost, end to end with a stand-in nvidia-smi listing 8 GPUs and tests/fake_trainer.py
(which records the environment it was started with, and can wait until N runs are alive at once:
FAKE_MEET, so concurrency is proven without any timing)."""
import json
import os
import shutil

import pytest

from test_runner import FAKE, fake_nvidia_smi, fake_repo, run, starts, summary  # noqa: F401  (fixture)


@pytest.fixture
def fake_repo8(fake_repo):
    """fake_repo with every stage_a script."""
    for name in ("train_gpt_depthwarm.py", "train_gpt_curriculum.py"):
        shutil.copy(FAKE, fake_repo / name)
    return fake_repo


def gpu_env(tmp_path, **kw):
    return {"PATH": fake_nvidia_smi(tmp_path, 8), "FAKE_STEP_S": "0", **kw}


def cvd_of(rec):
    return rec["CUDA_VISIBLE_DEVICES"]


def test_stage_a_packs_eight_runs_on_eight_gpus_and_a_failed_run_loses_nothing(fake_repo8, tmp_path):
    fake_repo = fake_repo8
    logs, meet = tmp_path / "logs", tmp_path / "meet"
    meet.mkdir()
    # all eight must be alive at once to meet; the four seed-43 runs then crash half way
    p = run(["stage_a", "--iterations", "6", "--scripts-dir", str(fake_repo), "--logs", str(logs)], tmp_path,
            env=gpu_env(tmp_path, FAKE_MEET=str(meet), FAKE_MEET_N="8", FAKE_CRASH_SEEDS="43"), check_rc=1)
    seen = starts(tmp_path)
    assert len(seen) == 8 and len(os.listdir(meet)) == 8
    assert sorted(cvd_of(r) for r in seen) == [str(i) for i in range(8)]  # disjoint: one GPU each
    assert "packed: 8 runs at a time on 8 GPUs, 1 each" in p.stdout
    for variant in ("baseline", "palm", "depthwarm", "curriculum"):
        ok, bad = summary(logs / "stage_a" / variant / "seed_42"), summary(logs / "stage_a" / variant / "seed_43")
        assert ok["status"] == "ok" and bad["status"] == "failed" and "crashed on purpose" in bad["error"]
        for s in (ok, bad):
            c = s["cost"]
            assert (c["device"], c["devices"], c["runs_sharing_node"]) == ("gpu", 1, 8)
            assert c["device_seconds"] == round(c["devices"] * c["wall_s"], 3) and c["wall_s"] > 0
        assert "val_loss" in ok["metrics"] and ok["config"]["device"] == "cuda"  # the trainer's fields are kept
        exp = json.loads((logs / "stage_a" / variant / "experiment.json").read_text())
        assert exp["runs_at_once"] == 8 and exp["usd_per_gpu_hour"] is None
        assert {exp["commands"]["42"].split("CUDA_VISIBLE_DEVICES=")[1][0], exp["commands"]["43"].split(
            "CUDA_VISIBLE_DEVICES=")[1][0]} <= set("01234567")
    assert "4 of 8 runs ok, 4 not ok" in p.stdout and "GPU-h" in p.stdout
    # a rerun retries only the failed ones, again side by side, keeping the failed attempts
    p = run(["stage_a", "--iterations", "6", "--scripts-dir", str(fake_repo), "--logs", str(logs)], tmp_path,
            env=gpu_env(tmp_path), check_rc=0)
    again = starts(tmp_path)[8:]
    assert sorted(r["argv"][r["argv"].index("--seed") + 1] for r in again) == ["43"] * 4
    assert sorted(cvd_of(r) for r in again) == ["0", "1", "2", "3"]
    assert len(list((logs / ".superseded" / "stage_a").rglob("summary.json"))) == 4


def test_stage_b_packs_two_four_gpu_runs(fake_repo, tmp_path):
    logs, meet = tmp_path / "logs", tmp_path / "meet"
    meet.mkdir()
    # --launcher python: the fake trainer is one process standing for the run's four
    p = run(["stage_b", "--iterations", "4", "--seeds", "1,2", "--launcher", "python", "--scripts-dir",
             str(fake_repo), "--logs", str(logs)], tmp_path,
            env=gpu_env(tmp_path, FAKE_MEET=str(meet), FAKE_MEET_N="2"), check_rc=0)
    seen = starts(tmp_path)
    assert len(seen) == 4
    first, second = [cvd_of(r) for r in seen[:2]], [cvd_of(r) for r in seen[2:]]
    for pair in (first, second):
        assert sorted(pair) == ["0,1,2,3", "4,5,6,7"]  # the two at once are disjoint
    for r in seen:
        s = summary(r["argv"][r["argv"].index("--out_dir") + 1])
        assert s["cost"]["devices"] == 4 and s["cost"]["runs_sharing_node"] == 2
    assert "4 of 4 runs ok" in p.stdout


def test_no_pack_runs_one_by_one_and_prices_the_gpu_hours(fake_repo, tmp_path):
    logs = tmp_path / "logs"
    p = run(["stage_a", "--no-pack", "--iterations", "3", "--variants", "baseline,palm", "--seeds", "1",
             "--usd-per-gpu-hour", "2.5", "--scripts-dir", str(fake_repo), "--logs", str(logs)], tmp_path,
            env=gpu_env(tmp_path), check_rc=0)
    assert [cvd_of(r) for r in starts(tmp_path)] == ["0", "0"]
    costs = [summary(logs / "stage_a" / v / "seed_1")["cost"] for v in ("baseline", "palm")]
    assert [c["runs_sharing_node"] for c in costs] == [1, 1]
    exp = json.loads((logs / "stage_a" / "palm" / "experiment.json").read_text())
    assert exp["usd_per_gpu_hour"] == 2.5 and exp["runs_at_once"] == 1
    hours = sum(c["device_seconds"] for c in costs) / 3600
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("cost: "))
    assert line.startswith(f"cost: {hours:.4f} GPU-hours over 2 run(s)") and f"${hours * 2.5:,.2f} at $2.5 per GPU-hour" in line


def test_cpu_runs_cost_cpu_hours_never_gpu_hours(fake_repo, tmp_path):
    logs = tmp_path / "logs"
    p = run(["embnorm", "--seeds", "1", "--variants", "baseline", "--iterations", "3", "--scripts-dir",
             str(fake_repo), "--logs", str(logs)], tmp_path, env={"USD_PER_GPU_HOUR": "20"}, check_rc=0)
    s = summary(logs / "embnorm" / "baseline" / "seed_1")
    c = s["cost"]
    assert (c["device"], c["devices"], c["runs_sharing_node"]) == ("cpu", 1, 1)
    assert c["wall_s"] >= s["metrics"]["wall_time_s"]  # the runner's clock spans the trainer's own
    assert "CPU-h" in p.stdout and "GPU" not in p.stdout.split("== embnorm: finished")[1]
    exp = json.loads((logs / "embnorm" / "baseline" / "experiment.json").read_text())
    assert exp["usd_per_gpu_hour"] == 20.0
    # a skipped run's cost still counts in the stage total, not in this invocation's
    p = run(["embnorm", "--seeds", "1", "--variants", "baseline", "--iterations", "3", "--scripts-dir",
             str(fake_repo), "--logs", str(logs)], tmp_path, check_rc=0)
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("cost: "))
    assert line == f"cost: {c['device_seconds'] / 3600:.4f} CPU-hours over 1 run(s) (this invocation: 0.0000)"


def test_bad_rate_is_one_clear_line(fake_repo, tmp_path):
    p = run(["embnorm", "--usd-per-gpu-hour", "cheap", "--dry-run", "--scripts-dir", str(fake_repo)], tmp_path)
    assert p.returncode == 2 and "--usd-per-gpu-hour/USD_PER_GPU_HOUR: 'cheap'" in p.stderr
    assert p.stderr.count("\n") == 1
