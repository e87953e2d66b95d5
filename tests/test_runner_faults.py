"""Fault injection for the runner (issue 15): each test reproduces one way a run could be trained twice,
orphaned, lost from the final table or left locked, and checks what the runner does instead.

No timing assertions: the tests wait for conditions (a trainer started, a process gone) with generous
deadlines. Races are made deterministic with stand-ins: the runner prepares the Shakespeare data after
it has decided what each run needs and before it claims any, so a stand-in data/prepare_shakespeare.py
is a barrier between the two runners' decisions and claims. The stand-in trainer below honours the
trainers' contract (summary.json, SIGTERM -> "interrupted") and can hang, ignore SIGTERM or fill a disk.
"""
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNER = os.path.join(REPO, "run_experiments.sh")
sys.path.insert(0, REPO)
from runner import launch  # noqa: E402

TRAINER = r'''
import json, os, signal, sys, time
args = sys.argv[1:]
def flag(name, default=None):
    return args[args.index(name) + 1] if name in args else default
out, seed, n = flag("--out_dir"), int(flag("--seed")), int(flag("--num_iterations", "3"))
os.makedirs(out, exist_ok=True)
ident = os.stat(out).st_ino
def summary(status, error=None):
    if os.path.isdir(out) and os.stat(out).st_ino == ident:  # only into its own directory
        with open(os.path.join(out, "summary.json.tmp"), "w") as f:
            json.dump({"schema": 1, "status": status, "error": error, "seed": seed, "metrics": {"val_loss": 1.0}}, f)
        os.replace(os.path.join(out, "summary.json.tmp"), os.path.join(out, "summary.json"))
def on_term(signum, frame):
    summary("interrupted", "SIGTERM")
    sys.exit(143)
if os.environ.get("FT_IGNORE_TERM") == str(seed):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, on_term)
with open(os.environ["FT_RECORD"], "a") as f:
    f.write(json.dumps({"seed": seed, "pid": os.getpid(), "pgid": os.getpgid(0), "out": out,
                        "rank": os.environ.get("RANK")}) + "\n")
if os.environ.get("FT_FILL") == str(seed):
    try:
        with open(os.path.join(out, "ballast.bin"), "wb") as f:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
    except OSError as e:
        print(f"OSError: {e}", flush=True)
        sys.exit(1)
with open(os.path.join(out, "metrics.jsonl"), "a") as m:
    for step in range(n + 1):
        print(f"step:{step}/{n} val_loss:1.0000 train_time:0ms step_avg:0.00ms", flush=True)
        m.write(json.dumps({"step": step, "val_loss": 1.0}) + "\n")
        m.flush()
        if os.environ.get("FT_HANG") == str(seed) or os.environ.get("FT_IGNORE_TERM") == str(seed):
            while not os.path.exists(os.environ.get("FT_RELEASE", "/nonexistent")):
                time.sleep(0.05)
if os.environ.get("RANK", "0") == "0":
    summary("ok")
'''

# data/prepare_shakespeare.py as a barrier: both runners have decided when both arrived; the second
# then waits for FT_GO (the test creates it at the moment it wants the second runner to go on).
BARRIER = r'''
import os, sys, time
meet = os.environ["FT_MEET"]
if os.path.exists(os.path.join(meet, "go")):  # no barrier: one runner alone
    sys.exit(0)
try:
    os.close(os.open(os.path.join(meet, "first"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    first = True
except FileExistsError:
    first = False
open(os.path.join(meet, f"arrived-{os.getpid()}"), "w").close()
end = time.time() + 120
while sum(n.startswith("arrived-") for n in os.listdir(meet)) < 2 and time.time() < end:
    time.sleep(0.02)
while not first and not os.path.exists(os.path.join(meet, "go")) and time.time() < end:
    time.sleep(0.02)
'''


@pytest.fixture
def repo(tmp_path):
    d = tmp_path / "scripts"
    (d / "data").mkdir(parents=True)
    (d / "train_mini_embnorm.py").write_text(TRAINER)
    (d / "train_gpt.py").write_text(TRAINER)
    (d / "data" / "prepare_shakespeare.py").write_text(BARRIER)
    (tmp_path / "meet").mkdir()
    return d


def env_for(tmp_path, **kw):
    e = dict(os.environ)
    for k in ("CUDA_VISIBLE_DEVICES", "NNODES", "NODE_RANK", "RDZV_ENDPOINT", "RDZV_BACKEND"):
        e.pop(k, None)
    (tmp_path / "nogpu").mkdir(exist_ok=True)
    e.update(PATH=f"{tmp_path / 'nogpu'}:{os.path.dirname(sys.executable)}:{e.get('PATH', '')}", PYTHON=sys.executable,
             FT_RECORD=str(tmp_path / "starts.jsonl"), FT_MEET=str(tmp_path / "meet"),
             FT_RELEASE=str(tmp_path / "release"), OMP_NUM_THREADS="1")
    e.update(kw)
    return e


def start_runner(repo, logs, tmp_path, args=(), **kw):
    argv = ["bash", RUNNER, "embnorm", "--variants", "baseline", "--iterations", "3", "--scripts-dir", str(repo),
            "--logs", str(logs), *args]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env_for(tmp_path, **kw), cwd=tmp_path, start_new_session=True)


def starts(tmp_path):
    p = tmp_path / "starts.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


def wait_for(cond, what, timeout=120):
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for: {what}")


def pid_gone(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie has ended
    except OSError:
        return True


def leftovers(root):
    """Lock files, takeover markers and temp files anywhere below root."""
    return sorted(os.path.join(d, n) for d, _, names in os.walk(root) for n in names
                  if n.startswith(".runner.lock") or ".tmp" in n)


def lock_groups(run_dir):
    """The process groups a run's lock names (the trainer's first), read as any tool would: JSON."""
    try:
        d = json.loads((run_dir / ".runner.lock").read_text())
    except (OSError, ValueError):
        return []
    return [g for g in [d.get("pgid"), *d.get("pgids", [])] if isinstance(g, int)]


def summary(run_dir):
    with open(os.path.join(run_dir, "summary.json")) as f:
        return json.load(f)


# ----------------------------------------------------------------------------- two runners at once

def test_two_runners_one_finishes_before_the_other_claims(repo, tmp_path):
    """Both decide "run" on a fresh logs folder; the second claims only after the first finished the
    run and released its lock. The old runner then trained it a second time into the same folder."""
    logs = tmp_path / "logs"
    a = start_runner(repo, logs, tmp_path, ["--seeds", "1"])
    b = start_runner(repo, logs, tmp_path, ["--seeds", "1"])
    wait_for(lambda: a.poll() is not None or b.poll() is not None, "one runner to finish")
    (tmp_path / "meet" / "go").touch()
    outs = [p.communicate(timeout=120)[0] for p in (a, b)]
    run_dir = logs / "embnorm" / "baseline" / "seed_1"
    assert len(starts(tmp_path)) == 1, outs
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 4  # steps 0..3, once
    assert summary(run_dir)["status"] == "ok" and [a.returncode, b.returncode] == [0, 0], outs
    assert any("another runner ran it meanwhile" in o for o in outs), outs
    assert not leftovers(logs) and not (logs / ".superseded").exists()


def test_two_runners_rerun_the_same_failed_run(repo, tmp_path):
    """Both decide to rerun a failed run; the second goes on while the first one's trainer runs. The
    old runner moved the live run aside and trained it again."""
    logs = tmp_path / "logs"
    run_dir = logs / "embnorm" / "baseline" / "seed_1"
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps({"schema": 1, "status": "failed", "error": "x"}))
    a = start_runner(repo, logs, tmp_path, ["--seeds", "1"], FT_HANG="1")
    b = start_runner(repo, logs, tmp_path, ["--seeds", "1"], FT_HANG="1")
    wait_for(lambda: len(starts(tmp_path)) >= 1, "the first trainer to start")
    (tmp_path / "meet" / "go").touch()
    wait_for(lambda: a.poll() is not None or b.poll() is not None or len(starts(tmp_path)) > 1,
             "the second runner to decide")
    (tmp_path / "release").touch()
    outs = {p: p.communicate(timeout=120)[0] for p in (a, b)}
    assert len(starts(tmp_path)) == 1, outs
    pgid = starts(tmp_path)[0]["pgid"]
    assert any(f"its trainer (process group {pgid}) is running on this host" in o for o in outs.values()), outs
    assert sorted(p.returncode for p in (a, b)) == [0, 1]  # the one that left it alone reports it running
    assert summary(run_dir)["status"] == "ok"
    moved = list((logs / ".superseded" / "embnorm" / "baseline").iterdir())
    assert len(moved) == 1 and summary(moved[0])["status"] == "failed"  # the old attempt, once
    assert not leftovers(logs)


def _claim_at_once(run_dir, barrier, out, done):
    barrier.wait()
    out.put(launch.claim(run_dir) is True)
    done.wait()  # alive until every one has tried: a winner that has exited leaves a stale lock


def test_many_runners_take_over_one_stale_lock_one_wins(tmp_path):
    dead = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True).stdout.strip()
    ctx = multiprocessing.get_context("fork")
    for round_ in range(5):
        run_dir = tmp_path / f"r{round_}"
        run_dir.mkdir()
        (run_dir / ".runner.lock").write_text(json.dumps({"host": socket.gethostname(), "runner_pid": int(dead),
                                                          "pgid": int(dead), "started": "x"}))
        barrier, done, out = ctx.Barrier(6), ctx.Barrier(6), ctx.Queue()
        procs = [ctx.Process(target=_claim_at_once, args=(str(run_dir), barrier, out, done)) for _ in range(6)]
        for p in procs:
            p.start()
        wins = [out.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(60)
        assert wins.count(True) == 1, wins
        assert [n for n in os.listdir(run_dir) if n != ".runner.lock"] == []  # no takeover marker left


def test_unreadable_lock_is_left_alone_while_fresh_then_taken_over(tmp_path):
    (tmp_path / ".runner.lock").write_text("")  # created, content not yet written
    assert "being claimed" in launch.claim(str(tmp_path))
    old = time.time() - 3600
    os.utime(tmp_path / ".runner.lock", (old, old))  # a crash left it half written an hour ago
    assert launch.claim(str(tmp_path)) is True
    lock = json.loads((tmp_path / ".runner.lock").read_text())
    assert lock["host"] == socket.gethostname() and lock["runner_pid"] == os.getpid()
    assert lock["pgid"] is None and lock["started"]


def test_a_lock_from_another_host_is_left_alone(repo, tmp_path):
    logs = tmp_path / "logs"
    run_dir = logs / "embnorm" / "baseline" / "seed_1"
    run_dir.mkdir(parents=True)
    (run_dir / ".runner.lock").write_text(json.dumps({"host": "elsewhere.invalid", "runner_pid": 1, "pgid": 1}))
    (tmp_path / "meet" / "go").touch()
    p = start_runner(repo, logs, tmp_path, ["--seeds", "1", "--force"], FT_MEET=str(tmp_path / "meet"))
    out = p.communicate(timeout=120)[0]
    assert p.returncode == 1 and not starts(tmp_path)
    assert "locked by a runner on elsewhere.invalid, which cannot be checked from here" in out
    assert sorted(os.listdir(run_dir)) == [".runner.lock"]


# ----------------------------------------------------------------------------- the runner dies

def test_kill_9_of_the_runner_group_takes_its_trainer_along_and_a_rerun_starts_over(repo, tmp_path):
    logs = tmp_path / "logs"
    (tmp_path / "meet" / "go").touch()
    p = start_runner(repo, logs, tmp_path, ["--seeds", "1"], FT_HANG="1")
    run_dir = logs / "embnorm" / "baseline" / "seed_1"
    wait_for(lambda: starts(tmp_path) and lock_groups(run_dir), "the trainer to start and be named in the lock")
    trainer = starts(tmp_path)[0]
    lock = json.loads((run_dir / ".runner.lock").read_text())
    # the claim names the trainer itself (its own process group, no wrapper in between)
    assert lock["pgid"] == trainer["pgid"] == trainer["pid"] and lock["host"] == socket.gethostname()
    assert lock["runner_pid"] == p.pid and lock["started"]
    os.killpg(p.pid, signal.SIGKILL)  # the runner's whole process group, as a closed batch job would
    p.communicate(timeout=60)
    wait_for(lambda: pid_gone(trainer["pid"]), "the trainer to die with its runner")
    assert summary(run_dir)["status"] == "interrupted"  # the trainer's own last word, in its own directory
    q = start_runner(repo, logs, tmp_path, ["--seeds", "1"])
    out = q.communicate(timeout=120)[0]
    assert q.returncode == 0, out
    assert summary(run_dir)["status"] == "ok" and len(starts(tmp_path)) == 2
    moved = list((logs / ".superseded" / "embnorm" / "baseline").iterdir())
    assert len(moved) == 1 and summary(moved[0])["status"] == "interrupted"
    assert not leftovers(logs)


def test_a_trainer_that_outlives_its_runner_is_left_alone_by_a_rerun(repo, tmp_path):
    logs = tmp_path / "logs"
    (tmp_path / "meet" / "go").touch()
    p = start_runner(repo, logs, tmp_path, ["--seeds", "1"], FT_IGNORE_TERM="1")
    run_dir = logs / "embnorm" / "baseline" / "seed_1"
    wait_for(lambda: starts(tmp_path) and lock_groups(run_dir), "the trainer to start")
    trainer = starts(tmp_path)[0]
    os.killpg(p.pid, signal.SIGKILL)
    p.communicate(timeout=60)
    try:
        assert not pid_gone(trainer["pid"])  # it ignores the SIGTERM its runner's death sent
        for extra in ([], ["--force"]):
            q = start_runner(repo, logs, tmp_path, ["--seeds", "1", *extra])
            out = q.communicate(timeout=120)[0]
            assert q.returncode == 1 and f"its trainer (process group {trainer['pgid']}) is running" in out, out
            assert len(starts(tmp_path)) == 1 and not (logs / ".superseded").exists()
    finally:
        os.killpg(trainer["pgid"], signal.SIGKILL)
    wait_for(lambda: pid_gone(trainer["pid"]), "the stray trainer to be killed")
    q = start_runner(repo, logs, tmp_path, ["--seeds", "1"])  # now the lock is stale: taken over
    out = q.communicate(timeout=120)[0]
    assert q.returncode == 0 and summary(run_dir)["status"] == "ok", out
    assert not leftovers(logs)


@pytest.mark.parametrize("victim", ["runner", "agent"])
def test_torchrun_workers_never_outlive_the_runner_or_their_agent(repo, tmp_path, victim):
    """torchrun starts each worker in a session of its own: a SIGKILL of the runner's group or of the
    agent (the wrapper between runner and trainer) used to leave the workers running."""
    logs = tmp_path / "logs"
    (tmp_path / "meet" / "go").touch()
    argv = ["bash", RUNNER, "smoke", "--variants", "baseline_2proc", "--iterations", "3", "--scripts-dir", str(repo),
            "--logs", str(logs)]
    (repo / "data" / "shakespeare_char").mkdir()
    (repo / "data" / "shakespeare_char" / "meta.json").write_text("{}")
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=env_for(tmp_path, FT_HANG="1"), cwd=tmp_path, start_new_session=True)
    run_dir = logs / "smoke" / "baseline_2proc" / "seed_1"
    wait_for(lambda: len(starts(tmp_path)) == 2 and len(lock_groups(run_dir)) == 3,
             "both workers to start and be named in the lock", timeout=300)
    workers = starts(tmp_path)
    agent = lock_groups(run_dir)[0]
    assert {w["pgid"] for w in workers} == set(lock_groups(run_dir)[1:])
    os.killpg(p.pid if victim == "runner" else agent, signal.SIGKILL)
    try:
        for w in workers:
            wait_for(lambda: pid_gone(w["pid"]), f"worker {w['pid']} to end", timeout=120)
    finally:
        for w in workers:
            if not pid_gone(w["pid"]):
                os.killpg(w["pgid"], signal.SIGKILL)
    out = p.communicate(timeout=120)[0]
    if victim == "agent":  # the runner lives on: the run is recorded and its lock released
        assert p.returncode == 1 and summary(run_dir)["status"] in ("failed", "interrupted"), out
        assert not leftovers(logs)


# ----------------------------------------------------------------------------- signals to the runner

@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_signals_leave_every_run_in_the_table_and_no_lock(repo, tmp_path, sig):
    logs = tmp_path / "logs"
    (tmp_path / "meet" / "go").touch()
    p = start_runner(repo, logs, tmp_path, ["--seeds", "1,2,3"], FT_HANG="2")
    wait_for(lambda: len(starts(tmp_path)) == 2, "run 2 to start")
    os.kill(p.pid, sig)
    out = p.communicate(timeout=120)[0]
    assert p.returncode == 130, out
    base = logs / "embnorm" / "baseline"
    assert summary(base / "seed_1")["status"] == "ok" and summary(base / "seed_2")["status"] == "interrupted"
    table = out[out.index("== embnorm: finished"):]
    rows = [ln for ln in table.splitlines() if "embnorm/baseline" in ln]
    assert len(rows) == 3 and "ok" in rows[0] and "interrupted" in rows[1], table
    assert "interrupted before it started" in rows[2]
    assert not leftovers(logs) and "Traceback" not in out


def test_a_closed_terminal_does_not_orphan_the_trainer_or_leave_a_lock(repo, tmp_path):
    """SIGHUP with the terminal gone: every line the runner prints then fails (EIO/EPIPE). The old runner
    died of the first one, leaving its trainer running and its lock behind."""
    logs = tmp_path / "logs"
    (tmp_path / "meet" / "go").touch()
    p = start_runner(repo, logs, tmp_path, ["--seeds", "1,2"], FT_HANG="1")
    wait_for(lambda: len(starts(tmp_path)) == 1, "run 1 to start")
    trainer = starts(tmp_path)[0]
    p.stdout.close()  # the terminal is gone
    os.kill(p.pid, signal.SIGHUP)
    try:
        assert p.wait(timeout=120) == 130
        wait_for(lambda: pid_gone(trainer["pid"]), "the trainer to stop")
    finally:
        if not pid_gone(trainer["pid"]):
            os.killpg(trainer["pgid"], signal.SIGKILL)
    run_dir = logs / "embnorm" / "baseline" / "seed_1"
    assert summary(run_dir)["status"] == "interrupted" and not leftovers(logs)


# ----------------------------------------------------------------------------- a full disk

@pytest.fixture
def small_disk(tmp_path):
    d = tmp_path / "disk"
    d.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a 1 MiB tmpfs as a full disk")
    yield d
    subprocess.run(["umount", "-l", str(d)], check=False)


def test_a_full_disk_gives_one_line_every_run_in_the_table_and_no_leftovers(repo, tmp_path, small_disk):
    logs = small_disk / "logs"
    (tmp_path / "meet" / "go").touch()
    p = start_runner(repo, logs, tmp_path, ["--seeds", "1,2,3"], FT_FILL="1")
    out = p.communicate(timeout=120)[0]
    assert p.returncode == 1 and "Traceback" not in out, out
    assert out.count("== disk full:") == 1, out
    table = out[out.index("== embnorm: finished"):]
    rows = [ln for ln in table.splitlines() if "embnorm/baseline" in ln]
    assert len(rows) == 3 and "failed" in rows[0] and "disk" in rows[0]
    assert all("not started: the disk is full" in r for r in rows[1:]), rows
    assert len(starts(tmp_path)) == 1
    assert not leftovers(small_disk), leftovers(small_disk)


# ----------------------------------------------------------------------------- options

def test_an_option_where_a_value_belongs_is_refused(repo, tmp_path):
    for args in (["--logs", "--dry-run"], ["--seeds", "--force"]):
        p = subprocess.run(["bash", RUNNER, "embnorm", "--scripts-dir", str(repo), *args], capture_output=True,
                           text=True, env=env_for(tmp_path), cwd=tmp_path, timeout=120)
        assert p.returncode == 2 and p.stdout == "", p.stdout
        assert p.stderr.count("\n") == 1 and f"{args[0]} needs a value but got the option '{args[1]}'" in p.stderr
    assert not (tmp_path / "--dry-run").exists() and not starts(tmp_path)
