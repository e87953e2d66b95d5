"""A stage's runs as one Slurm job array: the batch script, the sbatch command, Slurm's answers, and what an
array task records when Slurm stops it.

Pure functions except where a name says it calls Slurm (`submit`, `queue_rows`, `end_cause`, `task_main`).
Never imports torch (the runner's rule; see runner/runinfo.py).

The batch script is self-contained: its #SBATCH header asks, per array task, for the nodes, GPUs (or CPUs)
of one run; a `case` on SLURM_ARRAY_TASK_ID picks the run (array task i <-> runs[i]) and its command, and
the script ends by exec'ing the task entry (the runner's code path for one run) as

    TASK_ENTRY RUN_DIR -- COMMAND...

A multi-node run's COMMAND starts torchrun on every allocated node through srun, with the rendezvous endpoint
on the allocation's first host (RDZV_ENDPOINT, set by the script) and a port derived from the job id.

When Slurm stops a task (scancel, time limit, pre-emption) every process of the task gets SIGTERM and,
KillWait seconds later, SIGKILL. At SIGTERM time the task is already COMPLETING whatever the cause; scontrol
tells them apart (reason TimeLimit; PreemptTime set; Restarts grown by a requeue; nothing for scancel):
`end_cause` reads that and `record_end` writes the run's summary.json accordingly.
Slurm without slurmdbd has no working sacct: status comes from the run directories plus squeue (which keeps
finished tasks for MinJobAge seconds), with sacct used only where it answers.
"""
import argparse
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field

if __package__ in (None, ""):  # run as a file: make `runner` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from runner.runinfo import SCHEMA, atomic_write_json, load_summary, utc_iso, utc_stamp  # noqa: E402

RDZV_PORT_BASE = 29500  # + SLURM_JOB_ID % RDZV_PORT_SPREAD: two multi-node tasks sharing a first host differ
RDZV_PORT_SPREAD = 1000

# --time: Slurm's formats (minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS)
TIME_RE = re.compile(r"^(\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d{1,2}|\d+-\d{1,2}:\d{1,2}|\d+-\d{1,2}:\d{1,2}:\d{1,2})$")
NAME_RE = re.compile(r"^[A-Za-z0-9_.,:+-]+$")  # partition / account / job name: one word, no shell or #SBATCH surprises

# squeue/sacct states: still to run, running, and ended
QUEUED = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SUSPENDED",
                    "CONFIGURING", "RESIZING", "SIGNALING", "STAGE_OUT", "SPECIAL_EXIT"})
RUNNING = frozenset({"RUNNING", "COMPLETING", "STOPPED"})
ENDED = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "PREEMPTED", "NODE_FAIL", "BOOT_FAIL",
                   "DEADLINE", "OUT_OF_MEMORY", "REVOKED"})


class SlurmError(ValueError):
    """Bad input or an unusable answer from Slurm; str() is the one line to print."""


@dataclass(frozen=True)
class SlurmRun:
    """One run to hand to Slurm.

    command: for a one-node run, the argv the runner executes for it (launcher included, run from the
    options' workdir); for a multi-node run, the argv torchrun starts on every node (the trainer script and
    its flags), with `python` the interpreter and `nproc_per_node` the processes per node."""
    run_dir: str
    command: tuple
    nodes: int = 1
    gpus_per_node: int = 0  # 0: a CPU run
    cpus: int = 1  # CPUs per node for the run
    nproc_per_node: int = 1
    python: str = "python"
    label: str = ""
    env: dict = field(default_factory=dict)

    def shape(self):
        return (self.nodes, self.gpus_per_node, self.cpus, self.nproc_per_node)


@dataclass(frozen=True)
class SlurmOptions:
    job_name: str
    output_dir: str  # where each task's Slurm output file goes
    workdir: str  # the task cd's here before it runs (the trainers' directory)
    task_entry: tuple  # argv of the runner's one-run entry: TASK_ENTRY RUN_DIR -- COMMAND...
    partition: str = ""
    account: str = ""
    time: str = ""
    extra: tuple = ()  # --slurm-arg values, given to sbatch as they are
    rdzv_port_base: int = RDZV_PORT_BASE


def check_options(o):
    """Raise SlurmError naming the flag for anything sbatch would refuse or misread."""
    if o.partition and not NAME_RE.match(o.partition):
        raise SlurmError(f"--partition: '{o.partition}' is not a partition name (letters, digits, _.,:+-)")
    if o.account and not NAME_RE.match(o.account):
        raise SlurmError(f"--account: '{o.account}' is not an account name (letters, digits, _.,:+-)")
    if o.time and not TIME_RE.match(o.time):
        raise SlurmError(f"--time: '{o.time}' is not a Slurm time limit; use HH:MM:SS (or D-HH:MM:SS, or minutes)")
    if not o.job_name or not NAME_RE.match(o.job_name):
        raise SlurmError(f"job name '{o.job_name}' must be one word of letters, digits, _.,:+-")
    for arg in o.extra:
        if not arg.startswith("-") or "\n" in arg:
            raise SlurmError(f"--slurm-arg: '{arg}' is not an sbatch option; write it whole, e.g. --slurm-arg=--qos=high")
    if not o.task_entry:
        raise SlurmError("task_entry is empty: the batch script needs the runner's one-run command")


def check_runs(runs):
    if not runs:
        raise SlurmError("no runs to submit")
    shapes = {r.shape() for r in runs}
    if len(shapes) > 1:
        raise SlurmError("runs of one job array must ask for the same nodes, GPUs, CPUs and processes; got "
                         + ", ".join(f"{n} node(s) x {g} GPU(s) x {c} CPU(s) x {p} proc(s)" for n, g, c, p in sorted(shapes))
                         + " (submit one array per shape: group_by_shape)")
    seen = set()
    for r in runs:
        if not r.command:
            raise SlurmError(f"run {r.run_dir}: empty command")
        if r.nodes < 1 or r.gpus_per_node < 0 or r.cpus < 1 or r.nproc_per_node < 1:
            raise SlurmError(f"run {r.run_dir}: nodes, CPUs and processes must be >= 1 and GPUs >= 0")
        if not os.path.isabs(r.run_dir):
            raise SlurmError(f"run {r.run_dir}: the run directory must be an absolute path (tasks start elsewhere)")
        if r.run_dir in seen:
            raise SlurmError(f"run {r.run_dir} is listed twice")
        seen.add(r.run_dir)
        for k in r.env:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k):
                raise SlurmError(f"run {r.run_dir}: '{k}' is not an environment variable name")


def group_by_shape(runs):
    """[[runs of one shape], ...] in first-appearance order: one job array each."""
    groups = {}
    for r in runs:
        groups.setdefault(r.shape(), []).append(r)
    return list(groups.values())


def q(argv):
    return " ".join(shlex.quote(str(a)) for a in argv)


def multinode_command(run):
    """bash text (a CMD array's contents in the batch script) that starts torchrun once on every node of the
    allocation through srun. srun's flags are expanded by the batch shell; the bash -c text is expanded on
    each node, where srun has set SLURM_NODEID (and the batch script exported RDZV_ENDPOINT); the trainer
    argv reaches torchrun through "$@" untouched."""
    inner = ('exec "$0" -m torch.distributed.run --nnodes="$SLURM_NNODES" --node_rank="$SLURM_NODEID" '
             f'--nproc_per_node={run.nproc_per_node} --rdzv_backend=c10d --rdzv_endpoint="$RDZV_ENDPOINT" '
             '--rdzv_id="slurm-$SLURM_JOB_ID" "$@"')
    return ('srun --nodes="$SLURM_NNODES" --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c '
            + shlex.quote(inner) + " " + q([run.python, *run.command]))


def batch_script(runs, o):
    """The sbatch script (text) for one job array: array task i runs runs[i]."""
    check_options(o)
    check_runs(runs)
    r0 = runs[0]
    n = len(runs)
    head = [
        "#!/bin/bash",
        f"# {o.job_name}: {n} run(s), one Slurm array task each (array task i runs the i-th run below).",
        f"#SBATCH --job-name={o.job_name}",
        f"#SBATCH --array=0-{n - 1}",
        f"#SBATCH --nodes={r0.nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --cpus-per-task={r0.cpus}",
    ]
    if r0.gpus_per_node:
        head.append(f"#SBATCH --gpus-per-node={r0.gpus_per_node}")
    if o.partition:
        head.append(f"#SBATCH --partition={o.partition}")
    if o.account:
        head.append(f"#SBATCH --account={o.account}")
    if o.time:
        head.append(f"#SBATCH --time={o.time}")
    head += [
        f"#SBATCH --output={os.path.join(o.output_dir, '%x-%A_%a.out')}",
        "#SBATCH --open-mode=append",  # a requeued task adds to its output, never truncates it
    ]
    body = ["set -u", f"cd {shlex.quote(o.workdir)} || exit 1", 'case "${SLURM_ARRAY_TASK_ID:-}" in']
    for i, r in enumerate(runs):
        body.append(f"{i})" + (f"  # {r.label}" if r.label else ""))
        body.append(f"    RUN_DIR={shlex.quote(r.run_dir)}")
        for k, v in sorted(r.env.items()):
            body.append(f"    export {k}={shlex.quote(str(v))}")
        cmd = multinode_command(r) if r.nodes > 1 else q(r.command)
        body.append(f"    CMD=({cmd})")
        body.append("    ;;")
    body += [
        "*)",
        f'    echo "array task ${{SLURM_ARRAY_TASK_ID:-unset}}: this script has tasks 0-{n - 1} only" >&2',
        "    exit 2",
        "    ;;",
        "esac",
    ]
    if r0.nodes > 1:
        body += [
            "# rendezvous on the allocation's first host; the port differs between jobs sharing that host",
            'RDZV_HOST=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
            f'export RDZV_ENDPOINT="$RDZV_HOST:$(({o.rdzv_port_base} + SLURM_JOB_ID % {RDZV_PORT_SPREAD}))"',
        ]
    body.append(f'exec {q(o.task_entry)} "$RUN_DIR" -- "${{CMD[@]}}"')
    return "\n".join(head + [""] + body) + "\n"


def sbatch_command(script_path, o):
    """argv that submits the script; --parsable makes the answer `JOBID[;CLUSTER]`."""
    check_options(o)
    return ["sbatch", "--parsable", *o.extra, script_path]


def submit(script_path, o, env=None, run=subprocess.run):
    """Submit the written batch script; returns the job id. Creates the output directory first (Slurm does
    not: a task whose output file cannot be opened fails before it starts). SlurmError with sbatch's words."""
    os.makedirs(o.output_dir, exist_ok=True)
    argv = sbatch_command(script_path, o)
    try:
        r = run(argv, capture_output=True, text=True, timeout=120, env=env)
    except (OSError, subprocess.SubprocessError) as e:
        raise SlurmError(f"sbatch could not run: {e}") from None
    if r.returncode != 0:
        why = (r.stderr or r.stdout).strip().splitlines()
        raise SlurmError(f"sbatch refused the job (exit code {r.returncode}): {why[-1] if why else 'no output'}")
    return parse_sbatch(r.stdout)


# ----------------------------------------------------------------------------- Slurm's answers

def parse_sbatch(stdout):
    """The job id from `sbatch --parsable` output ('1234' or '1234;cluster')."""
    lines = [ln.strip() for ln in stdout.splitlines() if ln.strip()]
    m = re.match(r"^(\d+)(?:;\S+)?$", lines[-1]) if lines else None
    if not m:
        raise SlurmError(f"sbatch answered '{stdout.strip()[:200]}', not a job id")
    return int(m.group(1))


SQUEUE_FORMAT = "%F|%K|%A|%T|%r"  # array job id | array task id | job id | state | reason


def squeue_command(job_ids):
    """argv listing every task of these arrays, one line each, including recently ended ones."""
    return ["squeue", "-h", "-r", "--states=all", "-o", SQUEUE_FORMAT, "-j", ",".join(str(j) for j in job_ids)]


def parse_squeue(stdout):
    """{(array_job_id, task_index): {"state", "reason", "job_id"}} from squeue_command's output.

    A pending array that squeue still shows as one line (task ids '0-3' or '[0-3%2]') gives one entry per task."""
    out = {}
    for line in stdout.splitlines():
        if not line.strip():
            continue
        parts = line.strip().split("|")
        if len(parts) != 5 or not parts[0].isdigit():
            raise SlurmError(f"unexpected squeue line '{line.strip()[:200]}' (format {SQUEUE_FORMAT})")
        array_id, tasks, job_id, state, reason = parts
        state = state.split()[0] if state else ""
        for t in _task_ids(tasks):
            out[(int(array_id), t)] = {"state": state, "reason": reason if reason != "None" else "",
                                       "job_id": int(job_id) if job_id.isdigit() else None}
    return out


def _task_ids(text):
    """'3' -> [3]; '0-3' or '[0-3%2]' or '1,4-5' -> the listed ids; 'N/A' (not an array) -> [None]."""
    text = text.strip().strip("[]").split("%")[0]
    if text in ("N/A", ""):
        return [None]
    ids = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        if not a.isdigit() or (b and not b.isdigit()):
            raise SlurmError(f"unexpected array task id '{text}' from squeue")
        ids.extend(range(int(a), int(b or a) + 1))
    return ids


SACCT_FIELDS = "JobID,State,ExitCode,Reason"


def sacct_command(job_ids):
    return ["sacct", "-n", "-P", "-X", "-o", SACCT_FIELDS, "-j", ",".join(str(j) for j in job_ids)]


def parse_sacct(stdout):
    """Same mapping as parse_squeue, from `sacct -n -P -X -o JobID,State,ExitCode,Reason` (JobID '12_3';
    State 'CANCELLED by 0'); plus "exit_code" ('0:15' -> [0, 15]: status, signal). Job steps are skipped."""
    out = {}
    for line in stdout.splitlines():
        if not line.strip():
            continue
        parts = line.strip().split("|")
        if len(parts) != 4:
            raise SlurmError(f"unexpected sacct line '{line.strip()[:200]}' (fields {SACCT_FIELDS})")
        jobid, state, code, reason = parts
        if "." in jobid:
            continue
        array_id, _, tasks = jobid.partition("_")
        if not array_id.isdigit():
            raise SlurmError(f"unexpected sacct job id '{jobid}'")
        ec = [int(x) for x in code.split(":")] if re.match(r"^\d+:\d+$", code) else None
        for t in _task_ids(tasks or "N/A"):
            out[(int(array_id), t)] = {"state": state.split()[0] if state else "", "reason":
                                       reason if reason != "None" else "", "job_id": None, "exit_code": ec}
    return out


def queue_rows(job_ids, run=subprocess.run):
    """squeue's rows for these arrays, then sacct's for tasks squeue no longer shows (where sacct works:
    without slurmdbd it says 'accounting storage is disabled' and adds nothing). SlurmError when squeue fails."""
    if not job_ids:
        return {}
    r = run(squeue_command(job_ids), capture_output=True, text=True, timeout=60)
    if r.returncode != 0 and "Invalid job id" not in r.stderr:  # ids that slurmctld forgot: sacct may know them
        raise SlurmError(f"squeue failed: {(r.stderr or r.stdout).strip().splitlines()[-1:] or ['no output']}")
    rows = parse_squeue(r.stdout) if r.returncode == 0 else {}
    try:
        a = run(sacct_command(job_ids), capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return rows
    if a.returncode == 0:
        try:
            for k, v in parse_sacct(a.stdout).items():
                rows.setdefault(k, v)
        except SlurmError:
            pass
    return rows


# ----------------------------------------------------------------------------- submissions and status

def submission_record(job_id, runs, script_path, sbatch_argv):
    """What the runner keeps of a submission (JSON): enough to map array tasks back to run directories."""
    return {"schema": SCHEMA, "job_id": job_id, "submitted": utc_iso(), "host": socket.gethostname(),
            "script": script_path, "sbatch": list(sbatch_argv), "runs": [r.run_dir for r in runs]}


def write_submission(slurm_dir, record):
    """slurm_dir/job-<id>.json; a job id seen before (a reset cluster) gets a time-stamped name: nothing overwritten."""
    os.makedirs(slurm_dir, exist_ok=True)
    path = os.path.join(slurm_dir, f"job-{record['job_id']}.json")
    if os.path.exists(path):
        path = os.path.join(slurm_dir, f"job-{record['job_id']}.{utc_stamp()}.json")
    atomic_write_json(path, record)
    return path


def load_submissions(slurm_dir):
    """Every readable submission record in slurm_dir, oldest first; unreadable ones are skipped."""
    recs = []
    try:
        names = sorted(os.listdir(slurm_dir))
    except OSError:
        return recs
    for name in names:
        if not (name.startswith("job-") and name.endswith(".json")):
            continue
        try:
            with open(os.path.join(slurm_dir, name)) as f:
                rec = json.load(f)
            if isinstance(rec, dict) and isinstance(rec.get("job_id"), int) and isinstance(rec.get("runs"), list):
                recs.append(rec)
        except (OSError, ValueError):
            continue
    recs.sort(key=lambda r: (r.get("submitted") or "", r["job_id"]))
    return recs


def task_of(records, run_dir):
    """(job_id, task_index) of the latest submission that includes run_dir, or None."""
    for rec in reversed(records):
        if run_dir in rec["runs"]:
            return rec["job_id"], rec["runs"].index(run_dir)
    return None


def run_for_task(record, task_index):
    """The run directory array task `task_index` of this submission runs (SlurmError when out of range)."""
    runs = record["runs"]
    if not isinstance(task_index, int) or not 0 <= task_index < len(runs):
        raise SlurmError(f"job {record['job_id']} has array tasks 0-{len(runs) - 1}; there is no task {task_index}")
    return runs[task_index]


def run_state(summary_status, queue_row):
    """One word for a run: its summary's status when it has one and Slurm is not (again) on it; else
    'pending' / 'running' from the queue; 'not run: <STATE>' when its task ended without a summary (e.g.
    cancelled while pending); 'to do' when Slurm knows nothing of it."""
    state = (queue_row or {}).get("state", "")
    if state in QUEUED:
        return "pending"
    if state in RUNNING:
        return "running"
    if summary_status not in (None, "none"):
        return summary_status
    if state in ENDED:
        return f"not run: {state.lower()}"
    return "to do"


def active_runs(records, rows):
    """Run directories some submission's task is still pending or running for (never submit those again)."""
    active = set()
    for rec in records:
        for i, d in enumerate(rec["runs"]):
            st = rows.get((rec["job_id"], i), {}).get("state", "")
            if st in QUEUED or st in RUNNING:
                active.add(d)
    return active


# ----------------------------------------------------------------------------- the end of a task

def cause_from_queue(state, reason):
    """Why a task ended, from its squeue/sacct state and reason once it has ended:
    'timeout' | 'preempted' | 'node_fail' | 'cancelled'."""
    if state in ("TIMEOUT", "DEADLINE") or reason in ("TimeLimit", "DeadLine"):
        return "timeout"
    if state == "PREEMPTED" or "preempt" in reason.lower():
        return "preempted"
    if state == "NODE_FAIL" or reason == "NodeDown":
        return "node_fail"
    return "cancelled"


def parse_scontrol_job(text):
    """KEY=VALUE fields of the first job in `scontrol show job -o` output (values with spaces are cut at the
    first space; the fields read here have none)."""
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    return dict(re.findall(r"(?:^|\s)([A-Za-z]+)=(\S*)", line))


def cause_from_job(fields, restarts_at_start=0):
    """Why Slurm is stopping this task, from its scontrol fields read at SIGTERM time (the state is then
    COMPLETING for every cause): 'timeout' (Reason=TimeLimit), 'preempted' (PreemptTime set: pre-emption that
    cancels), 'requeued' (Restarts grew past the SLURM_RESTART_COUNT the task started with: pre-emption that
    requeues, or scontrol requeue; the task will run again), 'node_fail', else 'cancelled' (scancel)."""
    state, reason = fields.get("JobState", ""), fields.get("Reason", "")
    if state in ("TIMEOUT", "DEADLINE") or reason in ("TimeLimit", "DeadLine"):
        return "timeout"
    if state == "PREEMPTED" or fields.get("PreemptTime", "None") not in ("None", "Unknown", ""):
        return "preempted"
    restarts = fields.get("Restarts", "0")
    if restarts.isdigit() and int(restarts) > restarts_at_start:
        return "requeued"
    if state == "NODE_FAIL" or reason == "NodeDown":
        return "node_fail"
    return "cancelled"


STATUS_OF_CAUSE = {"timeout": "timeout", "preempted": "interrupted", "requeued": "interrupted",
                   "node_fail": "interrupted", "cancelled": "interrupted"}
WHY = {"timeout": "Slurm's time limit (--time) ended the task",
       "preempted": "Slurm pre-empted the task",
       "requeued": "Slurm requeued the task (pre-emption or scontrol requeue); it runs again when rescheduled",
       "node_fail": "a node of the task failed",
       "cancelled": "the Slurm task was cancelled (scancel)"}


def task_id(env=None):
    """'ARRAYJOB_TASK' for an array task, else the job id ('' outside Slurm)."""
    env = os.environ if env is None else env
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID", "")


def end_cause(env=None, run=subprocess.run):
    """Ask scontrol why this task is being stopped (call on SIGTERM inside the task); 'cancelled' when it
    cannot say."""
    env = os.environ if env is None else env
    job = task_id(env)
    if not job:
        return "cancelled"
    try:
        r = run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "cancelled"
    if r.returncode != 0:
        return "cancelled"
    start = env.get("SLURM_RESTART_COUNT", "0")
    return cause_from_job(parse_scontrol_job(r.stdout), int(start) if start.isdigit() else 0)


def record_end(run_dir, cause, job=""):
    """Make the run's summary.json say that Slurm stopped it (cause: see cause_from_queue); returns the status.

    A summary the trainer wrote is kept: one that finished (ok, diverged, oom) stays as it is; one that says
    interrupted/failed because of the SIGTERM becomes 'timeout' for a time limit, the trainer's words kept in
    trainer_status/trainer_error. Without a summary a new one is written. An unreadable one is moved aside."""
    status = STATUS_OF_CAUSE[cause]
    why = WHY[cause] + (f" (job {job})" if job else "")
    path = os.path.join(run_dir, "summary.json")
    s, state = load_summary(run_dir)
    if state == "corrupt":
        os.replace(path, os.path.join(run_dir, f"summary.corrupt-{utc_stamp()}.json"))
        s = None
    if s is not None:
        if s["status"] in ("interrupted", "failed") and "slurm" not in s:
            s["trainer_status"], s["trainer_error"] = s["status"], s.get("error")
            s["status"], s["error"] = status, f"{why}; the trainer said: {s.get('error')}"
        s["slurm"] = {"cause": cause, "job": job}
        atomic_write_json(path, s)
        return s["status"]
    os.makedirs(run_dir, exist_ok=True)
    atomic_write_json(path, {
        "schema": SCHEMA, "status": status, "error": f"{why} before the trainer wrote a summary",
        "steps_completed": 0, "metrics": {}, "config": {},
        "env": {"hostname": socket.gethostname()},
        "written_by": "runner/slurm.py (the trainer wrote no summary.json)",
        "slurm": {"cause": cause, "job": job},
    })
    return status


def task_main(argv):
    """`python -m runner.slurm task RUN_DIR -- COMMAND...`: run COMMAND for RUN_DIR (output appended to
    RUN_DIR/stdout.log) and, when Slurm stops the task, record why in summary.json. Exit code: the
    command's, 128+signal when Slurm stopped it."""
    if "--" not in argv or argv.index("--") != 1 or len(argv) < 3:
        print("usage: python -m runner.slurm task RUN_DIR -- COMMAND...", file=sys.stderr)
        return 2
    run_dir, cmd = argv[0], argv[2:]
    os.makedirs(run_dir, exist_ok=True)
    job = task_id()
    stopped = []

    def on_signal(sig, _frame):
        if not stopped:
            stopped.append((sig, end_cause()))
            # record now: SIGKILL follows KillWait seconds after this; after the command ends, again
            # (a trainer writes its own 'interrupted' summary on SIGTERM, which record_end then relabels)
            record_end(run_dir, stopped[0][1], job)
        try:  # Slurm signals every process of the task; this also reaches a child that started its own group
            os.killpg(child.pid, sig)
        except (ProcessLookupError, NameError):
            pass

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    with open(os.path.join(run_dir, "stdout.log"), "ab") as log:
        log.write(f"=== runner/slurm.py {utc_iso()}: job {job} on {socket.gethostname()}: {q(cmd)}\n".encode())
        log.flush()
        try:
            child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        except OSError as e:
            log.write(f"=== could not start the command: {e}\n".encode())
            return 127
        while True:
            try:
                rc = child.wait()
                break
            except InterruptedError:
                continue
    if stopped:
        sig, cause = stopped[0]
        record_end(run_dir, cause, job)
        return 128 + sig
    return rc


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["task"]:
        return task_main(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cmd", choices=["task"], help="task RUN_DIR -- COMMAND...: one array task")
    p.parse_args(argv)
    return 2


if __name__ == "__main__":
    sys.exit(main())
