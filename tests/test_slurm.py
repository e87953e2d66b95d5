"""runner/slurm.py: the job-array batch script, the sbatch command, Slurm's answers, and the end-of-task record;
then the same against a real single-node Slurm (tools/slurm_local.sh) where Slurm is installed and we are root.

The generated script is checked by running it under bash (bash's own parsing is the independent truth) with
a task entry that records the argv and environment it receives; the multi-node part with stand-in srun and
scontrol that play a two-node allocation. The cluster tests submit through the real sbatch."""
import json
import os
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

LOCAL = os.path.join(REPO, "tools", "slurm_local.sh")
FAKE = os.path.join(REPO, "tests", "fake_trainer.py")

# The entry stand-in: writes {"argv": the argv after the entry, "env": selected variables, "cwd"} to $DUMP/<task>.json
DUMP_ENTRY = r"""
import json, os, sys
keep = ("RDZV_ENDPOINT", "OMP_NUM_THREADS", "SLURM_NODEID", "SLURM_ARRAY_TASK_ID", "EXTRA")
name = os.environ.get("SLURM_NODEID", "") + "-" + os.environ.get("SLURM_ARRAY_TASK_ID", "")
with open(os.path.join(os.environ["DUMP"], name + ".json"), "w") as f:
    json.dump({"argv": sys.argv[1:], "env": {k: os.environ.get(k) for k in keep}, "cwd": os.getcwd()}, f)
"""


def opts(tmp_path, **kw):
    base = dict(job_name="stage_a", output_dir=str(tmp_path / "slurm"), workdir=str(tmp_path),
                task_entry=(sys.executable, str(tmp_path / "entry.py")))
    base.update(kw)
    return SlurmOptions(**base)


def cpu_runs(tmp_path, n=3, **kw):
    return [SlurmRun(run_dir=str(tmp_path / "logs" / f"seed_{42 + i}"),
                     command=("python", "train.py", "--seed", str(42 + i), "--out_dir", str(tmp_path / f"seed_{42 + i}")),
                     cpus=2, label=f"stage_a/baseline seed {42 + i}", **kw) for i in range(n)]


def run_script(tmp_path, text, task, extra_env=None, path_dirs=()):
    """Run the batch script text as Slurm would for array task `task`; return what the entry received."""
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
    runs = [SlurmRun(run_dir=str(tmp_path / "r"), command=("python", "t.py"), gpus_per_node=8, cpus=64, nproc_per_node=8)]
    head = [ln for ln in slurm.batch_script(runs, opts(tmp_path)).splitlines() if ln.startswith("#SBATCH")]
    assert "#SBATCH --gpus-per-node=8" in head and "#SBATCH --cpus-per-task=64" in head
    assert not any("--gpus" in ln for ln in slurm.batch_script(cpu_runs(tmp_path, 1), opts(tmp_path)).splitlines())


def test_each_array_task_execs_the_entry_with_its_own_run_and_exact_argv(tmp_path):
    odd = ["it's", "two words", "$HOME", "a\"b", "*", "--flag=x;y", ""]
    runs = cpu_runs(tmp_path, 2)
    runs.append(SlurmRun(run_dir=str(tmp_path / "logs" / "we ird'dir"), command=("python", "t.py", *odd), cpus=2,
                         env={"OMP_NUM_THREADS": "2", "EXTRA": "a b $x"}))
    text = slurm.batch_script(runs, opts(tmp_path))
    for i, r in enumerate(runs):
        res, dump = run_script(tmp_path, text, i)
        assert res.returncode == 0, res.stderr
        got = json.loads((dump / f"-{i}.json").read_text())
        assert got["argv"] == [r.run_dir, "--", *r.command]
        assert got["cwd"] == str(tmp_path)
    assert got["env"]["OMP_NUM_THREADS"] == "2" and got["env"]["EXTRA"] == "a b $x"


def test_a_task_index_outside_the_array_fails_with_one_line(tmp_path):
    text = slurm.batch_script(cpu_runs(tmp_path, 2), opts(tmp_path))
    res, dump = run_script(tmp_path, text, 5)
    assert res.returncode == 2 and not list(dump.iterdir())
    assert res.stderr.strip() == "array task 5: this script has tasks 0-1 only"


def test_multinode_script_starts_torchrun_on_every_node_with_the_first_host_as_endpoint(tmp_path):
    """Run the script with stand-ins: scontrol expands the allocation into two hosts, srun runs its command once
    per node as srun does (SLURM_NODEID per node), and the interpreter is a recorder of the argv torchrun
    would get; the entry runs the command it is given, as the runner's one-run entry does."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "scontrol").write_text('#!/bin/bash\n[[ "$1 $2 $3" == "show hostnames gpu[07-08]" ]] || exit 9\n'
                                   'printf "gpu07\\ngpu08\\n"\n')
    (bin_ / "srun").write_text('#!/bin/bash\necho "$@" > "$DUMP/srun-flags"\n'
                               'while [[ $1 == --* ]]; do shift; done\n'
                               'for n in 0 1; do SLURM_NODEID=$n "$@" || exit 1; done\n')
    rec = bin_ / "python-rec"
    rec.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                   "open(os.path.join(os.environ['DUMP'], 'node' + os.environ['SLURM_NODEID']), 'w').write("
                   "json.dumps({'argv': sys.argv[1:], 'ep': os.environ['RDZV_ENDPOINT']}))\n")
    for f in ("scontrol", "srun", "python-rec"):
        os.chmod(bin_ / f, 0o755)
    (tmp_path / "runcmd.py").write_text("import subprocess, sys\nsys.exit(subprocess.call(sys.argv[sys.argv.index('--') + 1:]))\n")
    run = SlurmRun(run_dir=str(tmp_path / "r"), command=("train_gpt.py", "--seed", "7", "--note", "a b"), nodes=2,
                   gpus_per_node=8, cpus=32, nproc_per_node=8, python=str(rec))
    o = opts(tmp_path, task_entry=(sys.executable, str(tmp_path / "runcmd.py")), rdzv_port_base=29500)
    text = slurm.batch_script([run], o)
    assert "#SBATCH --nodes=2\n" in text and "#SBATCH --gpus-per-node=8\n" in text
    res, dump = run_script(tmp_path, text, 0, {"SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_NNODES": "2",
                                                 "SLURM_JOB_ID": "5123"}, [bin_])
    assert res.returncode == 0, res.stderr
    assert (dump / "srun-flags").read_text().split()[:3] == ["--nodes=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    for n in (0, 1):
        got = json.loads((dump / f"node{n}").read_text())
        assert got["ep"] == "gpu07:29623"  # the first host; 29500 + 5123 % 1000
        assert got["argv"] == ["-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={n}", "--nproc_per_node=8",
                               "--rdzv_backend=c10d", "--rdzv_endpoint=gpu07:29623", "--rdzv_id=slurm-5123",
                               "train_gpt.py", "--seed", "7", "--note", "a b"]


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


def submit(env, runs, o, tmp_path):
    script = tmp_path / f"{o.job_name}.sh"
    script.write_text(slurm.batch_script(runs, o))
    return slurm.submit(str(script), o, env=env)


def wait_for(env, job, n, until, limit=150):
    deadline = time.time() + limit
    while True:
        rows = slurm.queue_rows([job], run=lambda a, **kw: subprocess.run(a, env=env, **kw))
        states = [rows.get((job, i), {}).get("state") for i in range(n)]
        if until(states):
            return rows
        assert time.time() < deadline, f"job {job}: states {states} after {limit} s"
        time.sleep(0.3)


def cluster_opts(tmp_path, name, **kw):
    return opts(tmp_path, job_name=name, workdir=REPO, task_entry=(sys.executable, "-m", "runner.slurm", "task"), **kw)


def fake_run(tmp_path, seed, **env):
    d = str(tmp_path / "logs" / f"seed_{seed}")
    return SlurmRun(run_dir=d, command=(sys.executable, FAKE, "--seed", str(seed), "--out_dir", d, "--num_iterations", "5"),
                    cpus=1, env={"FAKE_STEP_S": "0.01", **env})


@pytest.fixture(scope="module")
def time_limit_job(slurm_cluster, tmp_path_factory):
    """A task that hangs under --time=1 (minute), submitted early: Slurm ends it 60-90 s later."""
    tmp = tmp_path_factory.mktemp("timelimit")
    run = fake_run(tmp, 5, FAKE_HANG_SEEDS="5", FAKE_TERM_SUMMARY="1")
    o = cluster_opts(tmp, "timelimit", time="1", partition="urgent")  # "urgent": never pre-empted here
    return submit(slurm_cluster, [run], o, tmp), run


def test_slurm_local_is_shellcheck_clean():
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck is not installed (apt-get install shellcheck; .ci/run does)")
    r = subprocess.run(["shellcheck", LOCAL], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def test_cluster_runs_an_array_task_per_run(slurm_cluster, time_limit_job, tmp_path):
    runs = [fake_run(tmp_path, 42), fake_run(tmp_path, 43)]
    o = cluster_opts(tmp_path, "tiny")
    job = submit(slurm_cluster, runs, o, tmp_path)
    rows = wait_for(slurm_cluster, job, 2, lambda st: all(s in slurm.ENDED for s in st))
    assert [rows[(job, i)]["state"] for i in range(2)] == ["COMPLETED", "COMPLETED"]
    for i, r in enumerate(runs):
        s = json.loads(open(os.path.join(r.run_dir, "summary.json")).read())
        assert (s["status"], s["seed"], s["steps_completed"]) == ("ok", 42 + i, 5)
        log = open(os.path.join(r.run_dir, "stdout.log")).read()
        assert f"job {job}_{i}" in log and "step:5/5 val_loss:" in log
        assert os.path.exists(os.path.join(o.output_dir, f"tiny-{job}_{i}.out"))
        assert slurm.run_state(s["status"], rows[(job, i)]) == "ok"


def test_cluster_cancelled_task_is_recorded_interrupted(slurm_cluster, tmp_path):
    # task 0: the trainer writes its own 'interrupted' on SIGTERM; task 1: it writes nothing
    runs = [fake_run(tmp_path, 1, FAKE_HANG_SEEDS="1", FAKE_TERM_SUMMARY="1"), fake_run(tmp_path, 2, FAKE_HANG_SEEDS="2")]
    job = submit(slurm_cluster, runs, cluster_opts(tmp_path, "cancel"), tmp_path)
    wait_for(slurm_cluster, job, 2, lambda st: st == ["RUNNING", "RUNNING"])
    deadline = time.time() + 60  # the trainers have started (their metrics file exists) before the cancel
    while not all(os.path.exists(os.path.join(r.run_dir, "metrics.jsonl")) for r in runs):
        assert time.time() < deadline
        time.sleep(0.2)
    subprocess.run(["scancel", str(job)], env=slurm_cluster, check=True, timeout=30)
    rows = wait_for(slurm_cluster, job, 2, lambda st: all(s in slurm.ENDED for s in st))
    assert [rows[(job, i)]["state"] for i in range(2)] == ["CANCELLED", "CANCELLED"]
    s0, s1 = (json.loads(open(os.path.join(r.run_dir, "summary.json")).read()) for r in runs)
    assert (s0["status"], s0["trainer_status"], s0["slurm"]["cause"]) == ("interrupted", "interrupted", "cancelled")
    assert (s1["status"], s1["slurm"]["cause"]) == ("interrupted", "cancelled")
    assert "scancel" in s1["error"] and s1["written_by"].startswith("runner/slurm.py")


def test_cluster_preempted_tasks_are_recorded(slurm_cluster, tmp_path):
    """Partition "urgent" pre-empts "debug" (requeue) and "scavenger" (cancel): one victim of each."""
    victims = {}
    for part, seed in (("debug", 11), ("scavenger", 12)):
        run = fake_run(tmp_path, seed, FAKE_HANG_SEEDS=str(seed), FAKE_TERM_SUMMARY="1")
        victims[part] = (submit(slurm_cluster, [run], cluster_opts(tmp_path, f"victim-{part}", partition=part), tmp_path), run)
    for job, run in victims.values():
        wait_for(slurm_cluster, job, 1, lambda st: st == ["RUNNING"])
        deadline = time.time() + 60
        while not os.path.exists(os.path.join(run.run_dir, "metrics.jsonl")):
            assert time.time() < deadline
            time.sleep(0.2)
    # 3 CPUs: all the cluster's 4 but the time-limit job's one, so both victims must make way
    urgent = subprocess.run(["sbatch", "--parsable", "--partition=urgent", "--cpus-per-task=3", "-o", "/dev/null",
                             "--wrap", "sleep 1"], env=slurm_cluster, capture_output=True, text=True, timeout=60)
    assert urgent.returncode == 0, urgent.stderr
    job, run = victims["scavenger"]
    rows = wait_for(slurm_cluster, job, 1, lambda st: st[0] in slurm.ENDED)
    assert rows[(job, 0)]["state"] == "PREEMPTED"
    s = json.loads(open(os.path.join(run.run_dir, "summary.json")).read())
    assert (s["status"], s["slurm"]["cause"], s["trainer_status"]) == ("interrupted", "preempted", "interrupted")
    job, run = victims["debug"]
    wait_for(slurm_cluster, job, 1, lambda st: st[0] in slurm.QUEUED)  # requeued: it will run again
    deadline = time.time() + 60
    while slurm.load_summary(run.run_dir)[0] is None or "slurm" not in slurm.load_summary(run.run_dir)[0]:
        assert time.time() < deadline
        time.sleep(0.2)
    s = json.loads(open(os.path.join(run.run_dir, "summary.json")).read())
    assert (s["status"], s["slurm"]["cause"]) == ("interrupted", "requeued") and "runs again" in s["error"]
    subprocess.run(["scancel", str(job)], env=slurm_cluster, check=True, timeout=30)


def test_cluster_time_limit_is_recorded_timeout(slurm_cluster, time_limit_job):
    job, run = time_limit_job
    rows = wait_for(slurm_cluster, job, 1, lambda st: st[0] in slurm.ENDED, limit=240)
    assert rows[(job, 0)]["state"] == "TIMEOUT"
    s = json.loads(open(os.path.join(run.run_dir, "summary.json")).read())
    assert (s["status"], s["trainer_status"], s["slurm"]["cause"]) == ("timeout", "interrupted", "timeout")
    assert "time limit" in s["error"] and "SIGTERM" in s["error"]
