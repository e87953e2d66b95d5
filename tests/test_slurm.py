"""runner/slurm.py: the job-array batch script, the sbatch command, Slurm's answers, and the end-of-task record;
then the same against a real single-node Slurm (tools/slurm_local.sh) where Slurm is installed and we are root.

The generated script is checked by running it under bash (bash's own parsing is the independent truth) with
a task entry that records the argv and environment it receives; the multi-node part with stand-in srun and
scontrol that play a two-node allocation. The cluster tests submit through the real sbatch."""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from runner import slurm  # noqa: E402
from runner.slurm import SlurmError, SlurmOptions, SlurmRun  # noqa: E402
from conftest import fake_scripts_dir  # noqa: E402

LOCAL = os.path.join(REPO, "tools", "slurm_local.sh")
FAKE = os.path.join(REPO, "tests", "fake_trainer.py")

# A stand-in for a task's command: writes {"argv": its argv, "env": selected variables, "cwd"} to
# $DUMP/<SLURM_NODEID>-<SLURM_ARRAY_TASK_ID>.json
DUMP_ENTRY = r"""
import json, os, sys
keep = ("RDZV_ENDPOINT", "NNODES", "NODE_RANK", "OMP_NUM_THREADS", "SLURM_NODEID", "SLURM_ARRAY_TASK_ID", "EXTRA")
name = os.environ.get("SLURM_NODEID", "") + "-" + os.environ.get("SLURM_ARRAY_TASK_ID", "")
with open(os.path.join(os.environ["DUMP"], name + ".json"), "w") as f:
    json.dump({"argv": sys.argv[1:], "env": {k: os.environ.get(k) for k in keep}, "cwd": os.getcwd()}, f)
"""


def opts(tmp_path, **kw):
    base = dict(job_name="stage_a", output_dir=str(tmp_path / "slurm"), workdir=str(tmp_path))
    base.update(kw)
    return SlurmOptions(**base)


def cpu_runs(tmp_path, n=3, **kw):
    return [SlurmRun(run_dir=str(tmp_path / "logs" / f"seed_{42 + i}"),
                     command=(sys.executable, str(tmp_path / "entry.py"), "--seed", str(42 + i)),
                     cpus=2, label=f"stage_a/baseline seed {42 + i}", **kw) for i in range(n)]


def run_script(tmp_path, text, task, extra_env=None, path_dirs=()):
    """Run the batch script text as Slurm would for array task `task`; return what the command received."""
    (tmp_path / "entry.py").write_text(DUMP_ENTRY)
    dump = tmp_path / "dump"
    dump.mkdir(exist_ok=True)
    script = tmp_path / "batch.sh"
    script.write_text(text)
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": str(task), "DUMP": str(dump), "SLURM_JOB_ID": "1234",
           "PATH": os.pathsep.join([*map(str, path_dirs), os.environ["PATH"]]), **(extra_env or {})}
    r = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    return r, dump


# ----------------------------------------------------------------------------- the batch script

def test_header_asks_for_one_runs_resources_and_the_options(tmp_path):
    runs = cpu_runs(tmp_path, 3)
    o = opts(tmp_path, partition="gpu", account="lab1", time="02:30:00", extra=("--qos=high",))
    text = slurm.batch_script(runs, o)
    head = [ln for ln in text.splitlines() if ln.startswith("#SBATCH ")]
    assert head == ["#SBATCH --job-name=stage_a", "#SBATCH --array=0-2", "#SBATCH --nodes=1",
                    "#SBATCH --ntasks-per-node=1", "#SBATCH --cpus-per-task=2", "#SBATCH --partition=gpu",
                    "#SBATCH --account=lab1", "#SBATCH --time=02:30:00",
                    f"#SBATCH --output={tmp_path}/slurm/%x-%A_%a.out", "#SBATCH --open-mode=append"]
    assert text.startswith("#!/bin/bash\n")
    # extra args go on sbatch's command line (they override the header), the script last
    assert slurm.sbatch_command("/x/b.sh", o) == ["sbatch", "--parsable", "--qos=high", "/x/b.sh"]


def test_gpu_runs_ask_for_gpus_per_node(tmp_path):
    runs = [SlurmRun(run_dir=str(tmp_path / "r"), command=("python", "t.py"), gpus_per_node=8, cpus=64)]
    head = [ln for ln in slurm.batch_script(runs, opts(tmp_path)).splitlines() if ln.startswith("#SBATCH")]
    assert "#SBATCH --gpus-per-node=8" in head and "#SBATCH --cpus-per-task=64" in head
    assert not any("--gpus" in ln for ln in slurm.batch_script(cpu_runs(tmp_path, 1), opts(tmp_path)).splitlines())


def test_each_array_task_execs_its_own_runs_command_with_the_exact_argv(tmp_path):
    odd = ["it's", "two words", "$HOME", "a\"b", "*", "--flag=x;y", "", "tab\there", "new\nline"]
    runs = cpu_runs(tmp_path, 2)
    runs.append(SlurmRun(run_dir=str(tmp_path / "logs" / "we ird'dir"), command=(sys.executable, str(tmp_path / "entry.py"), *odd),
                         cpus=2, env={"OMP_NUM_THREADS": "2", "EXTRA": "a b $x"}))
    text = slurm.batch_script(runs, opts(tmp_path))
    for i, r in enumerate(runs):
        res, dump = run_script(tmp_path, text, i)
        assert res.returncode == 0, res.stderr
        got = json.loads((dump / f"-{i}.json").read_text())
        assert got["argv"] == list(r.command[2:])
        assert got["cwd"] == str(tmp_path)
    assert got["env"]["OMP_NUM_THREADS"] == "2" and got["env"]["EXTRA"] == "a b $x"


def test_a_task_index_outside_the_array_fails_with_one_line(tmp_path):
    text = slurm.batch_script(cpu_runs(tmp_path, 2), opts(tmp_path))
    res, dump = run_script(tmp_path, text, 5)
    assert res.returncode == 2 and not list(dump.iterdir())
    assert res.stderr.strip() == "array task 5: this script has tasks 0-1 only"


def test_multinode_script_starts_the_command_on_every_node_with_the_first_host_as_endpoint(tmp_path):
    """Run the script with stand-ins: scontrol expands the allocation into two hosts, srun runs its command once
    per node as srun does (SLURM_NODEID per node). Each node's command (the runner, in a real task) gets the
    node count, its rank and the endpoint as the runner's several-nodes mode reads them (NNODES, NODE_RANK,
    RDZV_ENDPOINT) and its argv untouched."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "scontrol").write_text('#!/bin/bash\n[[ "$1 $2 $3" == "show hostnames gpu[07-08]" ]] || exit 9\n'
                                   'printf "gpu07\\ngpu08\\n"\n')
    (bin_ / "srun").write_text('#!/bin/bash\necho "$@" > "$DUMP/srun-flags"\n'
                               'while [[ $1 == --* ]]; do shift; done\n'
                               'for n in 0 1; do SLURM_NODEID=$n "$@" || exit 1; done\n')
    for f in ("scontrol", "srun"):
        os.chmod(bin_ / f, 0o755)
    run = SlurmRun(run_dir=str(tmp_path / "r"), command=(sys.executable, str(tmp_path / "entry.py"), "stage_c", "--note", "a b"),
                   nodes=2, gpus_per_node=8, cpus=32)
    text = slurm.batch_script([run], opts(tmp_path, rdzv_port_base=29500))
    assert "#SBATCH --nodes=2\n" in text and "#SBATCH --gpus-per-node=8\n" in text
    res, dump = run_script(tmp_path, text, 0, {"SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_NNODES": "2",
                                                 "SLURM_JOB_ID": "5123", "SLURM_CPUS_PER_TASK": "32"}, [bin_])
    assert res.returncode == 0, res.stderr
    assert (dump / "srun-flags").read_text().split()[:4] == ["--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=32",
                                                             "--kill-on-bad-exit=1"]
    for n in (0, 1):
        got = json.loads((dump / f"{n}-0.json").read_text())
        assert got["argv"] == ["stage_c", "--note", "a b"]
        # the first host; 29500 + 5123 % 1000
        assert {k: got["env"][k] for k in ("RDZV_ENDPOINT", "NNODES", "NODE_RANK")} == \
            {"RDZV_ENDPOINT": "gpu07:29623", "NNODES": "2", "NODE_RANK": str(n)}


@pytest.mark.parametrize("kw, msg", [
    (dict(time="2h"), "--time: '2h' is not a Slurm time limit"),
    (dict(partition="gpu; rm"), "--partition: 'gpu; rm' is not a partition name"),
    (dict(account="a b"), "--account: 'a b' is not an account name"),
    (dict(extra=("qos=high",)), "--slurm-arg: 'qos=high' is not an sbatch option"),
])
def test_bad_options_name_the_flag(tmp_path, kw, msg):
    with pytest.raises(SlurmError, match="^" + msg.replace("(", r"\(")):
        slurm.batch_script(cpu_runs(tmp_path, 1), opts(tmp_path, **kw))


@pytest.mark.parametrize("t", ["30", "10:00", "02:30:00", "1-0", "1-12:00", "2-00:00:00"])
def test_slurm_time_formats_are_accepted(tmp_path, t):
    assert f"#SBATCH --time={t}\n" in slurm.batch_script(cpu_runs(tmp_path, 1), opts(tmp_path, time=t))


def test_runs_of_different_shapes_are_refused_and_grouped(tmp_path):
    a = cpu_runs(tmp_path, 2)
    b = [SlurmRun(run_dir=str(tmp_path / "g"), command=("x",), gpus_per_node=4, cpus=2)]
    with pytest.raises(SlurmError, match="same nodes, GPUs"):
        slurm.batch_script(a + b, opts(tmp_path))
    assert slurm.group_by_shape([a[0], b[0], a[1]]) == [[a[0], a[1]], b]
    with pytest.raises(SlurmError, match="no runs"):
        slurm.batch_script([], opts(tmp_path))
    with pytest.raises(SlurmError, match="absolute"):
        slurm.batch_script([SlurmRun(run_dir="rel/dir", command=("x",))], opts(tmp_path))
    with pytest.raises(SlurmError, match="listed twice"):
        slurm.batch_script([a[0], a[0]], opts(tmp_path))


# ----------------------------------------------------------------------------- Slurm's answers

def test_parse_sbatch():
    assert slurm.parse_sbatch("1234\n") == 1234
    assert slurm.parse_sbatch("77;cluster2\n") == 77
    with pytest.raises(SlurmError, match="not a job id"):
        slurm.parse_sbatch("sbatch: error: Batch job submission failed: Invalid account\n")


def test_parse_squeue_real_lines():
    # lines as this format printed them on the local cluster: an array's pending remainder, running and
    # ended tasks, and a job that is not an array
    text = "12|3-5%2|12|PENDING|JobArrayTaskLimit\n12|0|13|RUNNING|None\n12|1|14|CANCELLED|None\n" \
           "12|2|12|TIMEOUT|TimeLimit\n20|N/A|20|COMPLETED|None\n"
    rows = slurm.parse_squeue(text)
    assert rows[(12, 3)] == rows[(12, 5)] == {"state": "PENDING", "reason": "JobArrayTaskLimit", "job_id": 12}
    assert rows[(12, 0)] == {"state": "RUNNING", "reason": "", "job_id": 13}
    assert rows[(12, 2)]["reason"] == "TimeLimit" and rows[(20, None)]["state"] == "COMPLETED"
    assert len(rows) == 7
    with pytest.raises(SlurmError, match="unexpected squeue line"):
        slurm.parse_squeue("JOBID PARTITION NAME\n")


def test_parse_sacct():
    text = "31_0|COMPLETED|0:0|None\n31_1|CANCELLED by 0|0:15|None\n31_[2-3]|PENDING|0:0|None\n32|FAILED|3:0|NonZeroExitCode\n"
    rows = slurm.parse_sacct(text)
    assert rows[(31, 1)] == {"state": "CANCELLED", "reason": "", "job_id": None, "exit_code": [0, 15]}
    assert rows[(31, 3)]["state"] == "PENDING" and rows[(32, None)]["exit_code"] == [3, 0]


def test_state_of_a_run_from_summary_and_queue():
    assert slurm.run_state(None, {"state": "PENDING"}) == "pending"
    assert slurm.run_state("interrupted", {"state": "REQUEUED"}) == "pending"
    assert slurm.run_state("none", {"state": "RUNNING"}) == "running"
    assert slurm.run_state("ok", {"state": "COMPLETED"}) == "ok"
    assert slurm.run_state("timeout", None) == "timeout"
    assert slurm.run_state("none", {"state": "CANCELLED"}) == "not run: cancelled"
    assert slurm.run_state("none", None) == "to do"


def test_submissions_map_tasks_back_to_runs(tmp_path):
    runs = cpu_runs(tmp_path, 3)
    d = tmp_path / "slurm"
    slurm.write_submission(str(d), {**slurm.submission_record(40, runs, "/s.sh", ["sbatch"]), "submitted": "2025-01-01T00:00:00"})
    slurm.write_submission(str(d), {**slurm.submission_record(41, runs[2:], "/s2.sh", ["sbatch"]), "submitted": "2025-01-02T00:00:00"})
    p = slurm.write_submission(str(d), slurm.submission_record(41, runs[:1], "/s3.sh", ["sbatch"]))
    assert os.path.basename(p) != "job-41.json"  # nothing overwritten
    (d / "job-99.json").write_text("{broken")
    recs = slurm.load_submissions(str(d))
    assert [r["job_id"] for r in recs] == [40, 41, 41]
    assert slurm.task_of(recs[:2], runs[2].run_dir) == (41, 0) and slurm.task_of(recs[:2], runs[1].run_dir) == (40, 1)
    assert slurm.run_for_task(recs[0], 1) == runs[1].run_dir
    with pytest.raises(SlurmError, match="no task 3"):
        slurm.run_for_task(recs[0], 3)
    rows = {(40, 0): {"state": "COMPLETED"}, (40, 1): {"state": "RUNNING"}, (41, 0): {"state": "PENDING"}}
    assert slurm.active_runs(recs[:2], rows) == {runs[1].run_dir, runs[2].run_dir}


# ----------------------------------------------------------------------------- the end of a task

@pytest.mark.parametrize("state, reason, cause", [
    ("TIMEOUT", "TimeLimit", "timeout"),
    ("CANCELLED", "None", "cancelled"),
    ("PREEMPTED", "None", "preempted"),
    ("NODE_FAIL", "NodeDown", "node_fail"),
])
def test_cause_from_queue(state, reason, cause):
    assert slurm.cause_from_queue(state, reason) == cause


# scontrol show job -o fields at SIGTERM time, as seen on the local cluster (cut to the fields that differ)
AT_SIGTERM = {
    "timeout": "JobId=3 ArrayJobId=3 ArrayTaskId=1 JobState=COMPLETING Reason=TimeLimit Restarts=0 PreemptTime=None",
    "cancelled": "JobId=4 JobState=COMPLETING Reason=None Restarts=0 RunTime=00:00:03 PreemptTime=None",
    "preempted": "JobId=1 JobState=COMPLETING Reason=None Restarts=0 PreemptTime=2026-12-02T03:06:15",
    "requeued": "JobId=1 JobState=COMPLETING Reason=None Restarts=1 RunTime=00:00:00 EndTime=Unknown",
}


@pytest.mark.parametrize("cause", sorted(AT_SIGTERM))
def test_cause_from_job_at_sigterm(cause):
    assert slurm.cause_from_job(slurm.parse_scontrol_job(AT_SIGTERM[cause])) == cause


def test_a_requeued_task_that_is_stopped_again_is_requeued_only_if_restarts_grew():
    f = slurm.parse_scontrol_job("JobId=1 JobState=COMPLETING Reason=None Restarts=1 PreemptTime=None")
    assert slurm.cause_from_job(f, restarts_at_start=1) == "cancelled"
    assert slurm.cause_from_job(f, restarts_at_start=0) == "requeued"


def test_end_cause_asks_for_this_array_task(tmp_path):
    seen = []

    def fake_run(argv, **kw):
        seen.append(argv)
        return subprocess.CompletedProcess(argv, 0, AT_SIGTERM["timeout"] + "\n", "")
    env = {"SLURM_JOB_ID": "14", "SLURM_ARRAY_JOB_ID": "12", "SLURM_ARRAY_TASK_ID": "2"}
    assert slurm.end_cause(env, run=fake_run) == "timeout"
    assert seen[0][-1] == "12_2"
    assert slurm.end_cause({}, run=fake_run) == "cancelled"


def test_record_end_without_a_summary_writes_one(tmp_path):
    d = tmp_path / "run"
    assert slurm.record_end(str(d), "timeout", "12_2") == "timeout"
    s = json.loads((d / "summary.json").read_text())
    assert s["status"] == "timeout" and "time limit" in s["error"] and s["slurm"] == {"cause": "timeout", "job": "12_2"}
    assert slurm.record_end(str(tmp_path / "r2"), "preempted") == "interrupted"


def test_record_end_relabels_the_trainers_interrupted_and_keeps_its_words(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    (d / "summary.json").write_text(json.dumps({"schema": 1, "status": "interrupted", "error": "SIGTERM", "metrics": {"x": 1}}))
    assert slurm.record_end(str(d), "timeout", "7") == "timeout"
    s = json.loads((d / "summary.json").read_text())
    assert (s["status"], s["trainer_status"], s["trainer_error"], s["metrics"]) == ("timeout", "interrupted", "SIGTERM", {"x": 1})
    assert slurm.record_end(str(d), "timeout", "7") == "timeout"  # twice: the same
    assert json.loads((d / "summary.json").read_text())["trainer_status"] == "interrupted"


def test_record_end_keeps_a_finished_run_and_moves_a_corrupt_summary_aside(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    (d / "summary.json").write_text(json.dumps({"schema": 1, "status": "ok", "error": None}))
    assert slurm.record_end(str(d), "cancelled") == "ok"
    (d / "summary.json").write_text("{not json")
    assert slurm.record_end(str(d), "cancelled") == "interrupted"
    aside = [p.name for p in d.iterdir() if p.name.startswith("summary.corrupt-")]
    assert len(aside) == 1 and (d / aside[0]).read_text() == "{not json"


# ----------------------------------------------------------------------------- a real Slurm

def fail_or_skip(why):
    """Skip, unless SLURM_TESTS_REQUIRED=1 (.ci/run sets it once Slurm is installed): then a cluster that does
    not come up is a failure, not a silent skip."""
    if os.environ.get("SLURM_TESTS_REQUIRED") == "1":
        pytest.fail(f"SLURM_TESTS_REQUIRED=1 but {why}")
    pytest.skip(why)


def _skip_reason():
    if os.geteuid() != 0:
        return "the local Slurm cluster needs root (slurmd, munged's user switch)"
    missing = [b for b in ("slurmctld", "slurmd", "munged", "sbatch") if not shutil.which(b, path=os.environ["PATH"] + ":/usr/sbin")]
    if missing:
        return f"Slurm is not installed ({', '.join(missing)} missing): apt-get install slurm-wlm munge (.ci/run does)"
    return None


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A single-node Slurm cluster of its own (own directory, munge key and ports) for this session; down at the end."""
    why = _skip_reason()
    if why:
        fail_or_skip(why)
    # not under pytest's tmp (mode 700): munged runs as user munge and must reach its socket directory
    d = tempfile.mkdtemp(prefix="slurm-test-", dir="/tmp")
    os.chmod(d, 0o755)
    env = {**os.environ, "SLURM_LOCAL_DIR": str(d), "SLURM_LOCAL_PORT": str(17817 + os.getpid() % 500 * 2),
           "SLURM_LOCAL_CPUS": "4", "PATH": os.environ["PATH"] + ":/usr/sbin"}
    up = subprocess.run([LOCAL, "up"], env=env, capture_output=True, text=True, timeout=120)
    if up.returncode != 0:
        subprocess.run([LOCAL, "down"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(d, ignore_errors=True)
        fail_or_skip(f"the local Slurm cluster did not start: {up.stderr.strip()[-300:]}")
    env["SLURM_CONF"] = os.path.join(d, "slurm.conf")
    pids = daemon_pids(d)
    yield env
    for _ in range(2):  # down twice: the second finds nothing to do
        down = subprocess.run([LOCAL, "down"], env=env, capture_output=True, text=True, timeout=120)
        assert down.returncode == 0, down.stderr
    for name, pid in pids.items():
        assert not pid_alive(pid), f"{name} ({pid}) still runs after tools/slurm_local.sh down"
    shutil.rmtree(d, ignore_errors=True)


def daemon_pids(d):
    files = {"munged": "munge/munged.pid", "slurmctld": "slurmctld.pid", "slurmd": "slurmd.pid"}
    return {name: int(open(os.path.join(d, f)).read()) for name, f in files.items()}


def pid_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"  # a zombie has ended
    except OSError:
        return False


def test_cluster_up_again_keeps_the_running_daemons(slurm_cluster):
    d = slurm_cluster["SLURM_LOCAL_DIR"]
    before = daemon_pids(d)
    assert all(pid_alive(p) for p in before.values())
    up = subprocess.run([LOCAL, "up"], env=slurm_cluster, capture_output=True, text=True, timeout=120)
    assert up.returncode == 0 and up.stdout.strip() == f"export SLURM_CONF={slurm_cluster['SLURM_CONF']}"
    assert daemon_pids(d) == before
    sinfo = subprocess.run(["sinfo", "-h", "-N", "-p", "debug", "-o", "%N %c %t"], env=slurm_cluster, capture_output=True, text=True)
    node, cpus, state = sinfo.stdout.split()
    assert (node, cpus) == (subprocess.run(["hostname", "-s"], capture_output=True, text=True).stdout.strip(), "4")
    assert state in ("idle", "mix", "alloc")


RUNNER = os.path.join(REPO, "run_experiments.sh")
# the real trainers at a size that trains in well under a second per step on a loaded CPU
MICRO_TINY = ["--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--sequence_length", "32", "--batch_size", "8",
              "--device_batch_size", "8", "--val_tokens", "512", "--val_loss_every", "2"]


def runner(args, env, cwd, timeout=120):
    e = {k: v for k, v in env.items() if k not in ("CUDA_VISIBLE_DEVICES", "NNODES", "NODE_RANK", "RDZV_ENDPOINT")}
    e["PYTHON"] = sys.executable
    return subprocess.run(["bash", RUNNER, *args], capture_output=True, text=True, env=e, timeout=timeout, cwd=cwd)


def submitted(p):
    """The job id a --slurm submission printed."""
    assert p.returncode == 0, p.stdout + p.stderr
    ids = re.findall(r"^submitted job (\d+):", p.stdout, re.M)
    assert len(ids) == 1, p.stdout
    return int(ids[0])


fake_scripts = fake_scripts_dir


def wait_for(env, job, n, until, limit=150):
    deadline = time.time() + limit
    while True:
        rows = slurm.queue_rows([job], run=lambda a, **kw: subprocess.run(a, env=env, **kw))
        states = [rows.get((job, i), {}).get("state") for i in range(n)]
        if until(states):
            return rows
        assert time.time() < deadline, f"job {job}: states {states} after {limit} s"
        time.sleep(0.3)


def wait_file(path, limit=60):
    deadline = time.time() + limit
    while not os.path.exists(path):
        assert time.time() < deadline, f"{path} did not appear within {limit} s"
        time.sleep(0.2)


def summary(run_dir):
    with open(os.path.join(run_dir, "summary.json")) as f:
        return json.load(f)


def test_dry_run_prints_the_batch_script_and_sbatch_command_and_writes_nothing(tmp_path):
    """No Slurm needed: the script is checked by bash (the array task's command is the runner for one run)."""
    logs = tmp_path / "logs"
    p = runner(["tiny", "--slurm", "--dry-run", "--seeds", "1,2", "--iterations", "4", "--logs", str(logs),
                "--partition", "debug", "--account", "lab", "--time", "00:10:00", "--slurm-arg", "--qos=low",
                "--slurm-arg=--mail-type=NONE", "--", "--val_tokens", "512"], os.environ, tmp_path)
    assert p.returncode == 0, p.stderr
    assert not logs.exists()  # nothing written
    text = p.stdout[p.stdout.index("#!/bin/bash"):p.stdout.index("-- sbatch command: ")]
    head = [ln for ln in text.splitlines() if ln.startswith("#SBATCH ")]
    assert head[:5] == ["#SBATCH --job-name=tiny", "#SBATCH --array=0-3", "#SBATCH --nodes=1",
                        "#SBATCH --ntasks-per-node=1", "#SBATCH --cpus-per-task=1"]
    assert {"#SBATCH --partition=debug", "#SBATCH --account=lab", "#SBATCH --time=00:10:00"} <= set(head)
    cmd = re.search(r"^-- sbatch command: (.*)$", p.stdout, re.M).group(1).split()
    assert cmd[:4] == ["sbatch", "--parsable", "--qos=low", "--mail-type=NONE"] and cmd[4].endswith(".sh")
    # task 2 is baseline seed 2 (seed by seed across the variants): bash runs the script with a stand-in
    # run_experiments.sh that records the argv it gets
    stand_in = tmp_path / "root"
    stand_in.mkdir()
    (stand_in / "run_experiments.sh").write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    os.chmod(stand_in / "run_experiments.sh", 0o755)
    r = subprocess.run(["bash", "-c", text.replace(os.path.join(REPO, "run_experiments.sh"), str(stand_in / "run_experiments.sh"))],
                       env={**os.environ, "SLURM_ARRAY_TASK_ID": "2"}, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    argv = json.loads(r.stdout)
    assert argv[0] == "tiny" and argv[argv.index("--slurm-task") + 1] == str(logs / "tiny" / "baseline" / "seed_2")
    assert argv[argv.index("--variants") + 1] == "baseline" and argv[argv.index("--seeds") + 1] == "2"
    assert argv[argv.index("--logs") + 1] == str(logs) and argv[-3:] == ["--", "--val_tokens", "512"]
    for gone in ("--slurm", "--dry-run", "--partition", "--time", "--slurm-arg", "--account"):
        assert gone not in argv
    # one line for a bad option, nothing submitted
    p = runner(["tiny", "--slurm", "--dry-run", "--time", "2h", "--logs", str(logs)], os.environ, tmp_path)
    assert p.returncode == 2 and "--time: '2h' is not a Slurm time limit" in p.stderr
    p = runner(["tiny", "--partition", "gpu", "--logs", str(logs)], os.environ, tmp_path)
    assert p.returncode == 2 and p.stderr.strip().endswith("--partition is an option of --slurm: "
                                                           "./run_experiments.sh tiny --slurm --partition ...")


def test_dry_run_of_a_multinode_gpu_stage_asks_for_nodes_and_gpus(tmp_path):
    p = runner(["stage_c", "--slurm", "--dry-run", "--nnodes", "2", "--seeds", "42", "--variants", "baseline",
                "--logs", str(tmp_path / "logs"), "--partition", "gpu", "--time", "02:00:00"], os.environ, tmp_path)
    assert p.returncode == 0, p.stderr
    assert "#SBATCH --nodes=2\n" in p.stdout and "#SBATCH --gpus-per-node=8\n" in p.stdout
    assert "#SBATCH --cpus-per-task=8\n" in p.stdout
    assert "exec srun " in p.stdout and "--nnodes" not in p.stdout.split("CMD=(")[1].split(")")[0]
    assert "--device cuda" in p.stdout


@pytest.fixture(scope="module")
def time_limit_job(slurm_cluster, tmp_path_factory):
    """A task that hangs under --time=1 (minute), submitted early: Slurm ends it 60-90 s later."""
    tmp = tmp_path_factory.mktemp("timelimit")
    env = {**slurm_cluster, "FAKE_HANG_SEEDS": "5", "FAKE_TERM_SUMMARY": "1"}
    p = runner(["tiny", "--slurm", "--variants", "baseline", "--seeds", "5", "--scripts-dir", str(fake_scripts(tmp)),
                "--logs", str(tmp / "logs"), "--time", "1", "--partition", "urgent"], env, tmp)  # urgent: never pre-empted
    return submitted(p), str(tmp / "logs" / "tiny" / "baseline" / "seed_5")


def test_slurm_local_is_shellcheck_clean():
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck is not installed (apt-get install shellcheck; .ci/run does)")
    r = subprocess.run(["shellcheck", LOCAL], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def test_cluster_runs_the_tiny_stage_and_a_second_submission_skips_it(slurm_cluster, time_limit_job, tmp_path,
                                                                       make_shards):
    """The tiny stage (2 seeds x 2 variants, the real trainers, 4 iterations) as one job array; every run
    directory as a local run leaves it; then nothing left to submit."""
    train, val = make_shards("synth", n_train=1, train_tokens=20_000, val_tokens=4_000)
    logs = tmp_path / "logs"
    args = ["tiny", "--slurm", "--seeds", "1,2", "--iterations", "4", "--logs", str(logs), "--",
            "--input_bin", train, "--input_val_bin", val, *MICRO_TINY]
    p = runner(args, {**slurm_cluster, "OMP_NUM_THREADS": "3"}, tmp_path)
    job = submitted(p)
    out_dir = logs / "tiny" / "slurm"
    order = [("baseline", 1), ("palm", 1), ("baseline", 2), ("palm", 2)]  # seed by seed across the variants
    for i, (v, seed) in enumerate(order):
        assert f"  task {i}: tiny/{v} seed {seed}: {out_dir}/tiny-{job}_{i}.out" in p.stdout
    rows = wait_for(slurm_cluster, job, 4, lambda st: all(s in slurm.ENDED for s in st), limit=400)
    assert [rows[(job, i)]["state"] for i in range(4)] == ["COMPLETED"] * 4
    for i, (v, seed) in enumerate(order):
        d = logs / "tiny" / v / f"seed_{seed}"
        s = summary(d)
        assert (s["status"], s["seed"], s["steps_completed"]) == ("ok", seed, 4)
        assert s["script"] == ("train_gpt.py" if v == "baseline" else "train_gpt_palm.py")
        assert s["config"]["num_iterations"] == 4 and s["config"]["n_embd"] == 32
        c = s["cost"]
        assert (c["device"], c["devices"], c["runs_sharing_node"]) == ("cpu", 1, 1)
        assert c["wall_s"] >= s["metrics"]["wall_time_s"] > 0 and c["device_seconds"] == pytest.approx(c["wall_s"])
        metrics = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
        vals = [m for m in metrics if "val_loss" in m]
        assert vals[-1]["step"] == 4 and vals[-1]["val_loss"] == pytest.approx(s["metrics"]["val_loss"])
        assert not (d / ".runner.lock").exists()
        assert "=== run_experiments.sh" in (d / "stdout.log").read_text()  # the runner's own record of the run
        assert f"tiny/{v} seed {seed}: ok val_loss" in (out_dir / f"tiny-{job}_{i}.out").read_text()
        # the task's OMP_NUM_THREADS came from its CPUs (1), whatever the submitting shell had
        assert s["env"]["cpu_threads"] == 1
    for v in ("baseline", "palm"):
        assert json.loads((logs / "tiny" / v / "experiment.json").read_text())["seeds"] == [1, 2]
    # a second submission: every run is done
    p = runner(args, slurm_cluster, tmp_path)
    assert p.returncode == 0, p.stderr
    assert "nothing to submit" in p.stdout and "submitted job" not in p.stdout
    assert "tiny: 4 done, 0 running, 0 pending, 0 failed, 0 to do" in p.stdout
    assert len(slurm.load_submissions(str(out_dir))) == 1
    st = runner(["tiny", "--slurm", "--status", "--seeds", "1,2", "--logs", str(logs)], slurm_cluster, tmp_path)
    assert st.returncode == 0 and "tiny: 4 done, 0 running" in st.stdout, st.stdout + st.stderr
    assert all(re.search(rf"^  done +tiny/{v} +{seed} +{job}_{i} +val_loss \d", st.stdout, re.M)
               for i, (v, seed) in enumerate(order))


def test_cluster_cancelled_tasks_are_recorded_and_a_rerun_reruns_them(slurm_cluster, tmp_path):
    # seed 1: the trainer writes its own 'interrupted' on SIGTERM; seed 2: it writes nothing
    scripts, logs = fake_scripts(tmp_path), tmp_path / "logs"
    args = ["tiny", "--slurm", "--variants", "baseline", "--seeds", "1,2", "--scripts-dir", str(scripts), "--logs", str(logs)]
    env = {**slurm_cluster, "FAKE_HANG_SEEDS": "1 2"}
    job = submitted(runner(args, {**env, "FAKE_TERM_SUMMARY": "1"}, tmp_path))
    dirs = [logs / "tiny" / "baseline" / f"seed_{s}" for s in (1, 2)]
    wait_for(slurm_cluster, job, 2, lambda st: st == ["RUNNING", "RUNNING"])
    for d in dirs:  # the trainers have started before the cancel
        wait_file(d / "metrics.jsonl")
    # while they run, --status and a resubmission see them running and leave them alone
    again = runner(args, env, tmp_path)
    assert again.returncode == 0 and "nothing to submit" in again.stdout and "2 running" in again.stdout, again.stdout
    subprocess.run(["scancel", str(job)], env=slurm_cluster, check=True, timeout=30)
    rows = wait_for(slurm_cluster, job, 2, lambda st: all(s in slurm.ENDED for s in st))
    assert [rows[(job, i)]["state"] for i in range(2)] == ["CANCELLED", "CANCELLED"]
    s1, s2 = summary(dirs[0]), summary(dirs[1])
    assert (s1["status"], s1["trainer_status"], s1["slurm"]) == ("interrupted", "interrupted", {"cause": "cancelled", "job": f"{job}_0"})
    assert (s2["status"], s2["slurm"]["cause"]) == ("interrupted", "cancelled") and "scancel" in s2["error"]
    assert all("cost" in s for s in (s1, s2)) and not any((d / ".runner.lock").exists() for d in dirs)
    st = runner(args[:1] + ["--slurm", "--status"] + args[2:], env, tmp_path)
    assert "0 done, 0 running, 0 pending, 2 failed, 0 to do" in st.stdout, st.stdout + st.stderr
    # rerun the stage: both are submitted again and run; the cancelled attempts are kept aside
    job2 = submitted(runner(args, slurm_cluster, tmp_path))
    rows = wait_for(slurm_cluster, job2, 2, lambda st: all(s in slurm.ENDED for s in st))
    assert [rows[(job2, i)]["state"] for i in range(2)] == ["COMPLETED", "COMPLETED"]
    assert [summary(d)["status"] for d in dirs] == ["ok", "ok"]
    aside = sorted((logs / ".superseded" / "tiny" / "baseline").iterdir())
    assert [p.name.split(".")[0] for p in aside] == ["seed_1", "seed_2"]
    assert [summary(p)["slurm"]["cause"] for p in aside] == ["cancelled", "cancelled"]


def test_cluster_time_limit_is_recorded_timeout(slurm_cluster, time_limit_job):
    job, d = time_limit_job
    rows = wait_for(slurm_cluster, job, 1, lambda st: st[0] in slurm.ENDED, limit=240)
    assert rows[(job, 0)]["state"] == "TIMEOUT"
    s = summary(d)
    assert (s["status"], s["trainer_status"], s["slurm"]["cause"]) == ("timeout", "interrupted", "timeout")
    assert "time limit" in s["error"] and "SIGTERM" in s["error"]


def test_cluster_preempted_tasks_are_recorded_and_a_requeued_one_runs_again(slurm_cluster, tmp_path):
    """Partition "urgent" pre-empts "debug" (requeue) and "scavenger" (cancel): one victim of each."""
    scripts, logs = fake_scripts(tmp_path), tmp_path / "logs"
    env = {**slurm_cluster, "FAKE_HANG_SEEDS": "11 12", "FAKE_TERM_SUMMARY": "1"}
    victims = {}
    for part, seed in (("debug", 11), ("scavenger", 12)):
        p = runner(["tiny", "--slurm", "--variants", "baseline", "--seeds", str(seed), "--scripts-dir", str(scripts),
                    "--logs", str(logs), "--partition", part], env, tmp_path)
        victims[part] = (submitted(p), logs / "tiny" / "baseline" / f"seed_{seed}")
    for job, d in victims.values():
        wait_for(slurm_cluster, job, 1, lambda st: st == ["RUNNING"])
        wait_file(d / "metrics.jsonl")
    # all the cluster's 4 CPUs, so both victims must make way (once the time-limit job, in "urgent" too, has ended)
    urgent = subprocess.run(["sbatch", "--parsable", "--partition=urgent", "--cpus-per-task=4", "-o", "/dev/null",
                             "--wrap", "sleep 1"], env=slurm_cluster, capture_output=True, text=True, timeout=60)
    assert urgent.returncode == 0, urgent.stderr
    job, d = victims["scavenger"]
    rows = wait_for(slurm_cluster, job, 1, lambda st: st[0] in slurm.ENDED, limit=240)
    assert rows[(job, 0)]["state"] == "PREEMPTED"
    s = summary(d)
    assert (s["status"], s["slurm"]["cause"], s["trainer_status"]) == ("interrupted", "preempted", "interrupted")
    # the requeued task is recorded, then runs again: its runner moves that attempt aside and starts over
    job, d = victims["debug"]
    wait_for(slurm_cluster, job, 1, lambda st: st[0] in slurm.QUEUED)
    deadline = time.time() + 60
    while "slurm" not in (slurm.load_summary(str(d))[0] or {}):
        assert time.time() < deadline, "the requeued task's summary was not relabelled"
        time.sleep(0.2)
    s = summary(d)
    assert (s["status"], s["slurm"]["cause"]) == ("interrupted", "requeued") and "runs again" in s["error"]
    # Slurm holds a requeued job back for 2 minutes (BeginTime); let it start now
    subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], env=slurm_cluster, timeout=30)
    aside = logs / ".superseded" / "tiny" / "baseline"
    deadline = time.time() + 120
    while not (aside.exists() and any(p.name.startswith("seed_11.") for p in aside.iterdir())):
        assert time.time() < deadline, "the requeued task did not run again"
        time.sleep(0.5)
    old = next(p for p in aside.iterdir() if p.name.startswith("seed_11."))
    assert summary(old)["slurm"]["cause"] == "requeued"
    wait_file(d / "metrics.jsonl")
    subprocess.run(["scancel", str(job)], env=slurm_cluster, check=True, timeout=30)
    wait_for(slurm_cluster, job, 1, lambda st: st[0] in slurm.ENDED)
    assert summary(d)["slurm"]["cause"] == "cancelled"
