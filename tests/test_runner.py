"""run_experiments.sh, driven end to end on CPU.

Most tests use tests/fake_trainer.py, a torch-free stand-in honouring the trainers' command line and
run-directory contract, so the runner's own logic (layout, skip/--force/--resume, failure capture,
timeouts, interrupts, --dry-run, CUDA_VISIBLE_DEVICES) is checked in milliseconds per run. The last
tests drive the real train_gpt.py on tiny synthetic shards: a run failing on a bad flag while the other
finishes, and two torchrun agents on loopback (one process each) against one 2-process run.
"""
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest

from conftest import fake_scripts_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNER = os.path.join(REPO, "run_experiments.sh")
FAKE = os.path.join(REPO, "tests", "fake_trainer.py")


@pytest.fixture
def fake_repo(tmp_path):
    """A scripts directory whose trainers are the fake, with the Shakespeare data 'prepared'."""
    return fake_scripts_dir(tmp_path)


def run(args, tmp_path, env=None, timeout=120, check_rc=None):
    e = dict(os.environ)
    e.pop("CUDA_VISIBLE_DEVICES", None)
    for k in ("NNODES", "NODE_RANK", "RDZV_ENDPOINT", "RDZV_BACKEND"):
        e.pop(k, None)
    # No GPU unless a test provides its own nvidia-smi.
    e["PATH"] = f"{tmp_path / 'nogpu_bin'}:{os.path.dirname(sys.executable)}:{e.get('PATH', '')}"
    (tmp_path / "nogpu_bin").mkdir(exist_ok=True)
    e["PYTHON"] = sys.executable
    e["FAKE_RECORD"] = str(tmp_path / "starts.jsonl")
    e.update(env or {})
    p = subprocess.run(["bash", RUNNER, *args], capture_output=True, text=True, env=e, timeout=timeout, cwd=tmp_path)
    if check_rc is not None:
        assert p.returncode == check_rc, p.stdout + p.stderr
    return p


def starts(tmp_path):
    path = tmp_path / "starts.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def summary(path):
    with open(os.path.join(path, "summary.json")) as f:
        return json.load(f)


def test_layout_experiment_json_and_environment(fake_repo, tmp_path):
    logs = tmp_path / "logs"
    p = run(["stage_a", "--preset", "tiny", "--variants", "baseline,palm", "--iterations", "30",
             "--scripts-dir", str(fake_repo),
             "--logs", str(logs), "--", "--batch_size", "8"], tmp_path, check_rc=0)
    for variant, script in (("baseline", "train_gpt.py"), ("palm", "train_gpt_palm.py")):
        vdir = logs / "stage_a" / variant
        assert sorted(os.listdir(vdir)) == ["experiment.json", "seed_42", "seed_43"]
        for seed in (42, 43):
            rdir = vdir / f"seed_{seed}"
            assert {"metrics.jsonl", "summary.json", "stdout.log"} <= set(os.listdir(rdir))
            s = summary(rdir)
            assert s["status"] == "ok" and s["seed"] == seed and s["script"] == script
            log = (rdir / "stdout.log").read_text()
            assert "step:30/30 val_loss:" in log  # the trainer's output is captured
        exp = json.loads((vdir / "experiment.json").read_text())
        assert exp["stage"] == "stage_a" and exp["variant"] == variant and exp["script"] == script
        assert exp["seeds"] == [42, 43] and exp["nproc_per_node"] == 1 and exp["nnodes"] == 1
        assert exp["CUDA_VISIBLE_DEVICES"] == "" and exp["device"] == "cpu" and exp["jobs"] == 1
        # --preset drops the stage's 124M-model flags; --iterations rescales the warm-down (284/1000 x 30)
        assert exp["overrides"] == {"preset": "tiny", "num_iterations": "30", "warmdown_iters": "9",
                                    "device": "cpu", "batch_size": "8"}
        assert f"{script} --seed 42 --out_dir {vdir / 'seed_42'}" in exp["commands"]["42"]
        assert "torch.distributed.run" not in exp["command"]  # one process: plain python
        assert "start_time" in exp and "git_commit" in exp and "git_dirty" in exp
    # what the trainers saw: CUDA_VISIBLE_DEVICES set (empty: no GPU) before Python started, cwd = scripts dir
    seen = starts(tmp_path)
    # seed by seed, so that a drift of the machine's speed falls on both variants alike
    order = [(os.path.basename(r["argv"][0]), r["argv"][r["argv"].index("--seed") + 1]) for r in seen]
    assert order == [("train_gpt.py", "42"), ("train_gpt_palm.py", "42"), ("train_gpt.py", "43"),
                     ("train_gpt_palm.py", "43")]
    assert all(r["CUDA_VISIBLE_DEVICES"] == "" and r["cwd"] == str(fake_repo) for r in seen)
    assert all("--device" in r["argv"] and r["argv"][r["argv"].index("--device") + 1] == "cpu" for r in seen)
    assert "[4/4] stage_a/palm seed 43: ok val_loss 3.7430" in p.stdout  # 4 - 0.01*30 + 0.001*43
    assert "4 of 4 runs ok" in p.stdout


def test_skip_then_force_moves_old_runs_aside(fake_repo, tmp_path):
    logs = tmp_path / "logs"
    args = ["embnorm", "--seeds", "1,2", "--variants", "rmsnorm", "--iterations", "10",
            "--scripts-dir", str(fake_repo), "--logs", str(logs)]
    run(args, tmp_path, check_rc=0)
    assert len(starts(tmp_path)) == 2
    first = (logs / "embnorm" / "rmsnorm" / "seed_1" / "summary.json").read_text()

    p = run(args, tmp_path, check_rc=0)  # everything ok: nothing runs again
    assert len(starts(tmp_path)) == 2
    assert p.stdout.count("summary.json says ok") == 2

    p = run([*args, "--force"], tmp_path, check_rc=0)
    assert len(starts(tmp_path)) == 4
    moved = list((logs / ".superseded" / "embnorm" / "rmsnorm").iterdir())
    assert sorted(m.name.split(".")[0] for m in moved) == ["seed_1", "seed_2"]
    old = [m for m in moved if m.name.startswith("seed_1.")][0]
    assert (old / "summary.json").read_text() == first  # the earlier result is kept byte for byte
    exp = json.loads((logs / "embnorm" / "rmsnorm" / "experiment.json").read_text())
    assert len(exp["history"]) == 1 and exp["history"][0]["seeds"] == [1, 2]  # the first experiment.json is kept


def test_failure_is_captured_and_the_stage_goes_on(fake_repo, tmp_path):
    logs = tmp_path / "logs"
    args = ["embnorm", "--seeds", "42,43,44", "--variants", "baseline,layernorm", "--iterations", "20",
            "--scripts-dir", str(fake_repo), "--logs", str(logs)]
    p = run(args, tmp_path, env={"FAKE_CRASH_SEEDS": "43"}, check_rc=1)
    for variant in ("baseline", "layernorm"):
        for seed in (42, 44):
            assert summary(logs / "embnorm" / variant / f"seed_{seed}")["status"] == "ok"
        s = summary(logs / "embnorm" / variant / "seed_43")
        assert s["status"] == "failed" and s["exit_code"] == 1 and s["seed"] == 43 and s["variant"] == variant
        assert s["error"] == "exit code 1: RuntimeError: fake trainer crashed on purpose at step 10"
        assert s["steps_completed"] == 5 and s["schema"] == 1  # the last step the log reached
    assert "4 of 6 runs ok, 2 not ok" in p.stdout
    # A re-run retries only the failed runs, keeping the failed attempts.
    p = run(args, tmp_path, check_rc=0)
    assert len(starts(tmp_path)) == 8
    assert summary(logs / "embnorm" / "baseline" / "seed_43")["status"] == "ok"
    kept = list((logs / ".superseded" / "embnorm" / "baseline").iterdir())
    assert len(kept) == 1 and json.loads((kept[0] / "summary.json").read_text())["status"] == "failed"


def test_missing_script_fails_that_variant_only(fake_repo, tmp_path):
    os.remove(fake_repo / "train_gpt_palm.py")
    logs = tmp_path / "logs"
    p = run(["stage_a", "--preset", "tiny", "--variants", "baseline,palm", "--seeds", "1", "--iterations", "5",
             "--scripts-dir", str(fake_repo),
             "--logs", str(logs)], tmp_path, check_rc=1)
    assert summary(logs / "stage_a" / "baseline" / "seed_1")["status"] == "ok"
    s = summary(logs / "stage_a" / "palm" / "seed_1")
    assert s["status"] == "failed" and "train_gpt_palm.py is not in" in s["error"]
    assert "1 of 2 runs ok" in p.stdout


def test_dry_run_prints_every_command_and_writes_nothing(fake_repo, tmp_path):
    logs = tmp_path / "logs"
    p = run(["stage_c", "--dry-run", "--scripts-dir", str(fake_repo), "--logs", str(logs)], tmp_path, check_rc=0)
    assert not logs.exists() and not starts(tmp_path)
    cmds = [ln.strip() for ln in p.stdout.splitlines() if "torch.distributed.run" in ln]
    assert len(cmds) == 6  # baseline and palm x seeds 42 43 44
    for c in cmds:
        assert "CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7" in c and "--standalone --nproc_per_node=8" in c
        assert "--compile on --device cuda" in c
    assert any(f"train_gpt_palm.py --seed 44 --out_dir {logs}/stage_c/palm/seed_44" in c for c in cmds)
    p = run(["lmd", "--dry-run", "--gpus", "2", "--iterations", "100", "--logs", str(logs)], tmp_path, check_rc=0)
    lmd = [ln for ln in p.stdout.splitlines() if "train_gpt_lmd.py" in ln]
    assert len(lmd) == 12 and all("--nproc_per_node=2" in c and "--num_iterations 100 --warmdown_iters 28" in c
                                  for c in lmd)
    assert {c.split("--lmd ")[1].split()[0] for c in lmd} == {"baseline", "moderate", "fixed_high", "fixed_low"}


def test_bad_usage_gets_one_clear_line(fake_repo, tmp_path):
    cases = [
        (["stage_x"], "unknown stage 'stage_x'"),
        (["embnorm", "--seeds", "4a"], "--seeds: '4a' is not"),
        (["embnorm", "--frobnicate"], "unknown option '--frobnicate'"),
        (["stage_c"], "nvidia-smi shows none"),  # the 124M model on CPU by accident
        (["stage_c", "--nnodes", "2", "--dry-run"], "needs --rdzv-endpoint"),
        (["embnorm", "--force", "--resume"], "pick one"),
    ]
    for args, msg in cases:
        p = run([*args, "--scripts-dir", str(fake_repo), "--logs", str(tmp_path / "l")], tmp_path)
        assert p.returncode == 2, (args, p.stdout, p.stderr)
        lines = p.stderr.strip().splitlines()
        assert msg in lines[-1] and "Traceback" not in p.stderr, (args, p.stderr)
    assert not starts(tmp_path)


def test_timeout_kills_the_run_and_records_it(fake_repo, tmp_path):
    logs = tmp_path / "logs"
    p = run(["embnorm", "--seeds", "1,2", "--variants", "baseline", "--iterations", "5", "--timeout", "2",
             "--scripts-dir", str(fake_repo), "--logs", str(logs)], tmp_path, env={"FAKE_HANG_SEEDS": "1"}, check_rc=1)
    s = summary(logs / "embnorm" / "baseline" / "seed_1")
    assert s["status"] == "timeout" and s["exit_code"] == 124 and "--timeout 2" in s["error"]
    assert 1.5 < s["metrics"]["wall_time_s"] < 60
    assert summary(logs / "embnorm" / "baseline" / "seed_2")["status"] == "ok"
    assert "TIMEOUT" in p.stdout


def test_timeout_overrides_the_trainers_interrupted_status(fake_repo, tmp_path):
    logs = tmp_path / "logs"
    run(["embnorm", "--seeds", "1", "--variants", "baseline", "--timeout", "1", "--scripts-dir", str(fake_repo),
         "--logs", str(logs)], tmp_path, env={"FAKE_HANG_SEEDS": "1", "FAKE_TERM_SUMMARY": "1"}, check_rc=1)
    s = summary(logs / "embnorm" / "baseline" / "seed_1")
    assert s["status"] == "timeout" and s["trainer_status"] == "interrupted" and s["trainer_error"] == "SIGTERM"


def test_interrupt_stops_the_stage_and_records_it(fake_repo, tmp_path):
    logs = tmp_path / "logs"
    e = dict(os.environ, PYTHON=sys.executable, FAKE_HANG_SEEDS="2", FAKE_RECORD=str(tmp_path / "starts.jsonl"))
    e.pop("CUDA_VISIBLE_DEVICES", None)
    proc = subprocess.Popen(["bash", RUNNER, "embnorm", "--seeds", "1,2,3", "--variants", "baseline",
                             "--iterations", "5", "--scripts-dir", str(fake_repo), "--logs", str(logs)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=e)
    deadline = time.time() + 60
    while len(starts(tmp_path)) < 2 and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert summary(logs / "embnorm" / "baseline" / "seed_1")["status"] == "ok"
    assert summary(logs / "embnorm" / "baseline" / "seed_2")["status"] == "interrupted"
    assert not (logs / "embnorm" / "baseline" / "seed_3").exists()
    assert "interrupted before it started" in out
    assert len(starts(tmp_path)) == 2


def test_resume_continues_from_the_checkpoint(fake_repo, tmp_path):
    logs = tmp_path / "logs"
    args = ["stage_a", "--preset", "tiny", "--variants", "baseline", "--seeds", "7", "--iterations", "20",
            "--save-every", "4", "--scripts-dir", str(fake_repo), "--logs", str(logs)]
    run(args, tmp_path, env={"FAKE_CRASH_SEEDS": "7"}, check_rc=1)  # crashes at step 10, checkpoint at 8
    rdir = logs / "stage_a" / "baseline" / "seed_7"
    assert summary(rdir)["status"] == "failed"
    run([*args, "--resume"], tmp_path, check_rc=0)
    assert summary(rdir)["status"] == "ok"
    last = starts(tmp_path)[-1]["argv"]
    assert last[last.index("--resume") + 1] == str(rdir) and last[last.index("--out_dir") + 1] == str(rdir)
    log = (rdir / "stdout.log").read_text()
    assert "RuntimeError: fake trainer crashed" in log and "resuming from step 8" in log  # one log, both attempts
    kept = [f for f in os.listdir(rdir) if f.startswith("summary.failed-")]
    assert len(kept) == 1 and json.loads((rdir / kept[0]).read_text())["status"] == "failed"


def test_jobs_run_side_by_side_with_shared_cores(fake_repo, tmp_path):
    logs, meet = tmp_path / "logs", tmp_path / "meet"
    meet.mkdir()
    # Each fake run waits until another one has started: only concurrent runs can all succeed.
    p = run(["embnorm", "--jobs", "2", "--seeds", "1,2", "--variants", "baseline", "--iterations", "5",
             "--scripts-dir", str(fake_repo), "--logs", str(logs)], tmp_path,
            env={"FAKE_MEET": str(meet), "OMP_NUM_THREADS": ""}, check_rc=0)
    assert sorted(f.split("-")[0] for f in os.listdir(meet)) == ["1", "2"]
    threads = max(1, os.cpu_count() // 2)
    assert [r["OMP_NUM_THREADS"] for r in starts(tmp_path)] == [str(threads)] * 2
    assert "2 of 2 runs ok" in p.stdout
    # the same stage one run at a time: the first run waits for a partner that never comes
    shutil.rmtree(meet); meet.mkdir()
    p = run(["embnorm", "--seeds", "3,4", "--variants", "baseline", "--iterations", "5", "--timeout", "2",
             "--scripts-dir", str(fake_repo), "--logs", str(logs)], tmp_path, env={"FAKE_MEET": str(meet)})
    assert p.returncode == 1 and summary(logs / "embnorm" / "baseline" / "seed_3")["status"] != "ok"


def test_a_run_in_progress_is_left_alone(fake_repo, tmp_path):
    import socket
    logs = tmp_path / "logs"
    rdir = logs / "embnorm" / "baseline" / "seed_1"
    rdir.mkdir(parents=True)
    (rdir / "stdout.log").write_text("step:3/300 val_loss:4.0000 train_time:1ms step_avg:1.00ms\n")
    (rdir / ".runner.lock").write_text(f"{socket.gethostname()} {os.getpid()}\n")  # alive: this test process
    args = ["embnorm", "--seeds", "1", "--variants", "baseline", "--iterations", "5", "--scripts-dir",
            str(fake_repo), "--logs", str(logs)]
    for extra in ([], ["--force"]):
        p = run([*args, *extra], tmp_path)
        assert p.returncode == 1 and f"being run by runner process {os.getpid()}" in p.stdout
        assert sorted(os.listdir(rdir)) == [".runner.lock", "stdout.log"] and not starts(tmp_path)
    # a lock whose process is gone is stale: the attempt is moved aside and the run starts over
    dead = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True).stdout.strip()
    (rdir / ".runner.lock").write_text(f"{socket.gethostname()} {dead}\n")
    run(args, tmp_path, check_rc=0)
    assert summary(rdir)["status"] == "ok" and not (rdir / ".runner.lock").exists()
    assert len(list((logs / ".superseded" / "embnorm" / "baseline").iterdir())) == 1


def test_editing_the_script_during_a_stage_does_not_change_the_running_runner(fake_repo, tmp_path):
    # A copy of the runner, overwritten with garbage while its first run is going (as a git pull might).
    copy = tmp_path / "copy"
    shutil.copytree(os.path.join(REPO, "runner"), copy / "runner")
    shutil.copytree(os.path.join(REPO, "plans"), copy / "plans")
    shutil.copy(RUNNER, copy / "run_experiments.sh")
    e = dict(os.environ, PYTHON=sys.executable, FAKE_RECORD=str(tmp_path / "starts.jsonl"), FAKE_STEP_S="0.05")
    e.pop("CUDA_VISIBLE_DEVICES", None)
    logs = tmp_path / "logs"
    proc = subprocess.Popen(["bash", str(copy / "run_experiments.sh"), "embnorm", "--seeds", "1,2", "--variants",
                             "baseline", "--iterations", "20", "--scripts-dir", str(fake_repo), "--logs", str(logs)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=e)
    deadline = time.time() + 60
    while not starts(tmp_path) and time.time() < deadline:
        time.sleep(0.05)
    (copy / "run_experiments.sh").write_text("echo THE FILE CHANGED; exit 42\n" * 2000)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "THE FILE CHANGED" not in out, out
    assert [summary(logs / "embnorm" / "baseline" / f"seed_{s}")["status"] for s in (1, 2)] == ["ok", "ok"]


def fake_nvidia_smi(tmp_path, n):
    d = tmp_path / "gpu_bin"
    d.mkdir(exist_ok=True)
    smi = d / "nvidia-smi"
    lines = "".join(f"echo 'GPU {i}: Fake GPU (UUID: GPU-{i})'\n" for i in range(n))
    smi.write_text("#!/bin/sh\n" + lines)
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    return f"{d}:{os.path.dirname(sys.executable)}:{os.environ.get('PATH', '')}"


def test_gpus_cuda_visible_devices_is_set_by_the_shell(fake_repo, tmp_path):
    logs = tmp_path / "logs"
    path = fake_nvidia_smi(tmp_path, 2)
    # every Python the runner starts (helper included) notes the CUDA_VISIBLE_DEVICES it was born with
    seen_env = tmp_path / "python_env.txt"
    wrapper = tmp_path / "py"
    wrapper.write_text(f'#!/bin/sh\necho "${{CUDA_VISIBLE_DEVICES-unset}}" >> {seen_env}\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    run(["stage_a", "--seeds", "5", "--variants", "baseline", "--scripts-dir", str(fake_repo), "--logs", str(logs)],
        tmp_path, env={"PATH": path, "FAKE_STEP_S": "0", "PYTHON": str(wrapper)}, check_rc=0)
    (r,) = starts(tmp_path)
    assert r["CUDA_VISIBLE_DEVICES"] == "0"  # stage_a is 1 GPU: the run sees only its own GPU
    # the runner's own Python (which never imports torch) was born with the node's GPUs fixed by the
    # shell; the trainer was born with its run's set
    pythons = seen_env.read_text().split()
    assert pythons == ["0,1", "0"]
    argv = r["argv"]
    assert argv[argv.index("--device") + 1] == "cuda" and "--compile" in argv
    assert argv[argv.index("--num_iterations") + 1] == "1000" and argv[argv.index("--batch_size") + 1] == "128"
    # a user's own CUDA_VISIBLE_DEVICES is kept as given
    run(["stage_a", "--seeds", "6", "--variants", "baseline", "--scripts-dir", str(fake_repo), "--logs", str(logs)],
        tmp_path, env={"PATH": path, "CUDA_VISIBLE_DEVICES": "1", "FAKE_STEP_S": "0"}, check_rc=0)
    assert starts(tmp_path)[-1]["CUDA_VISIBLE_DEVICES"] == "1"
    # more GPUs asked for than the node has: one clear line, nothing runs
    p = run(["stage_c", "--scripts-dir", str(fake_repo), "--logs", str(logs)], tmp_path, env={"PATH": path})
    assert p.returncode == 2 and "wants 8 GPU(s) per node but this node shows 2; pass --gpus 2" in p.stderr
    assert len(starts(tmp_path)) == 2


def test_demo_with_fakes_ends_with_the_report(fake_repo, tmp_path):
    (fake_repo / "analyze.py").write_text(
        "import argparse, os\np = argparse.ArgumentParser()\np.add_argument('--logs')\np.add_argument('--out')\n"
        "a = p.parse_args()\nopen(a.out, 'w').write('# report\\n' + '\\n'.join(sorted(os.listdir(a.logs))))\n")
    logs = tmp_path / "logs"
    p = run(["demo", "--scripts-dir", str(fake_repo), "--logs", str(logs)], tmp_path, check_rc=0,
            env={"DEMO_TINY_ITERS": "5", "DEMO_EMBNORM_ITERS": "5", "FAKE_STEP_S": "0", "OMP_NUM_THREADS": ""})
    report = (logs / "report.md").read_text().splitlines()
    assert report[0] == "# report" and "tiny" in report  # analyze.py ran after the runs, on --logs
    assert any(line.startswith("embnorm") for line in report)
    assert sorted(os.listdir(logs / "tiny")) == ["baseline", "palm"]
    seen = starts(tmp_path)
    assert len(seen) == 6 + 12  # tiny: 2 variants x 3 seeds; embnorm: 3 variants x the demo's 4 seeds
    emb_seeds = {r["argv"][r["argv"].index("--seed") + 1] for r in seen if "embnorm_demo" in " ".join(r["argv"])}
    assert emb_seeds == {"42", "43", "44", "45"}  # the first 4 of the study's 5 (DEMO_EMBNORM_SEEDS)
    assert all(r["argv"][r["argv"].index("--device") + 1] == "cpu" for r in seen)
    # two runs side by side by default, sharing the cores
    assert {r["OMP_NUM_THREADS"] for r in seen} == {str(max(1, os.cpu_count() // 2))}
    assert f"== the report: {logs}/report.md" in p.stdout


@pytest.mark.skipif(shutil.which("shellcheck") is None,
                    reason="shellcheck is not installed (Debian: apt-get install -y shellcheck)")
def test_shellcheck_is_clean():
    p = subprocess.run(["shellcheck", RUNNER], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout


def test_help_lists_every_stage_with_settings(tmp_path):
    p = run(["--help"], tmp_path, check_rc=0)
    for stage in ("stage_a", "stage_b", "stage_c", "lmd", "embnorm", "tiny", "demo", "smoke"):
        assert f"\n  {stage} " in p.stdout
    assert "--warmdown_iters 284" in p.stdout and "--batch_size 128" in p.stdout


# ----------------------------------------------------------------------------- the real trainer

need_real = pytest.mark.skipif(not os.path.exists(os.path.join(REPO, "train_gpt.py")),
                               reason="train_gpt.py is not in the repository yet")
TINY = ["--sequence_length", "32", "--batch_size", "4", "--device_batch_size", "2", "--n_layer", "2",
        "--n_embd", "32", "--n_head", "2", "--val_tokens", "256", "--val_loss_every", "2", "--vocab_size", "64"]


def write_shard(path, tokens):
    """docs/DATA.md: 256 little-endian int32 header (magic 20240520, version 1, count), then uint16 tokens."""
    import numpy as np
    header = np.zeros(256, dtype="<i4")
    header[:3] = (20240520, 1, len(tokens))
    with open(path, "wb") as f:
        f.write(header.tobytes() + np.asarray(tokens, dtype="<u2").tobytes())


@pytest.fixture
def shards(tmp_path):
    import numpy as np
    rng = np.random.default_rng(0)
    succ = rng.permutation(64)  # a learnable stream: mostly a fixed successor of the previous token
    toks = [0]
    for jump in rng.random(22_000) < 0.1:
        toks.append(int(rng.integers(64)) if jump else int(succ[toks[-1]]))
    d = tmp_path / "shards"
    d.mkdir()
    write_shard(d / "synth_train_000000.bin", toks[:20_000])
    write_shard(d / "synth_val_000000.bin", toks[20_000:])
    return ["--input_bin", str(d / "synth_train_*.bin"), "--input_val_bin", str(d / "synth_val_*.bin")]


@need_real
def test_real_trainer_bad_flag_fails_one_run_while_the_other_finishes(tmp_path, shards):
    # An interpreter wrapper that appends a flag train_gpt.py does not know to the run of seed 2 only.
    wrapper = tmp_path / "py"
    wrapper.write_text(f'#!/bin/sh\ncase "$*" in *"train_gpt.py --seed 2 "*) exec {sys.executable} "$@" --no_such_flag 1;; esac\n'
                       f'exec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    logs = tmp_path / "logs"
    p = run(["stage_a", "--preset", "tiny", "--variants", "baseline", "--seeds", "1,2", "--iterations", "4",
             "--logs", str(logs), "--", *TINY, *shards], tmp_path, env={"PYTHON": str(wrapper)}, timeout=300)
    assert p.returncode == 1, p.stdout + p.stderr
    ok = summary(logs / "stage_a" / "baseline" / "seed_1")
    assert ok["status"] == "ok" and ok["steps_completed"] == 4 and ok["seed"] == 1
    assert ok["config"]["num_iterations"] == 4 and ok["config"]["warmdown_iters"] == 1
    bad = summary(logs / "stage_a" / "baseline" / "seed_2")
    assert bad["status"] == "failed" and bad["exit_code"] == 2
    assert "unrecognized arguments: --no_such_flag 1" in bad["error"]


@need_real
def test_two_torchrun_agents_on_loopback_equal_one_two_process_run(tmp_path, shards):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    common = ["stage_a", "--preset", "tiny", "--variants", "baseline", "--seeds", "3", "--iterations", "3"]
    extra = ["--", *TINY, *shards]
    # one node, two processes (gloo)
    one = tmp_path / "one"
    run([*common, "--nproc", "2", "--logs", str(one), *extra], tmp_path, timeout=300, check_rc=0)
    # two nodes of one process each, rendezvous over loopback, sharing one logs directory
    two = tmp_path / "two"
    e = dict(os.environ, PYTHON=sys.executable)
    e.pop("CUDA_VISIBLE_DEVICES", None)
    procs = [subprocess.Popen(["bash", RUNNER, *common, "--nproc", "1", "--nnodes", "2", "--node-rank", str(r),
                               "--rdzv-endpoint", f"127.0.0.1:{port}", "--logs", str(two), *extra],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=e, cwd=tmp_path)
             for r in (0, 1)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    a = summary(one / "stage_a" / "baseline" / "seed_3")
    b = summary(two / "stage_a" / "baseline" / "seed_3")
    assert a["status"] == b["status"] == "ok"
    assert (a["env"]["processes"], a["env"]["nodes"]) == (2, 1) and (b["env"]["processes"], b["env"]["nodes"]) == (2, 2)
    # gloo's sum of two gradients does not depend on which node holds which rank: the same numbers
    for key in ("val_loss", "train_loss"):
        assert a["metrics"][key] == pytest.approx(b["metrics"][key], rel=1e-6, abs=1e-6), key
    assert a["metrics"]["val_loss"] < 4.0  # it trained (the untrained loss is about ln 64 = 4.16)
    exp = json.loads((two / "stage_a" / "baseline" / "experiment.json").read_text())
    assert exp["nnodes"] == 2 and "--rdzv_backend=c10d" in exp["command"]
    assert os.path.exists(two / "stage_a" / "baseline" / "seed_3" / "stdout.node1.log")
