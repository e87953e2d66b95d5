"""A stage's runs as Slurm job arrays: `./run_experiments.sh STAGE --slurm` (submit), `--status`, and the
array task's own entry (`--slurm-task RUN_DIR`, which the batch script passes); the batch script, the sbatch
command, Slurm's answers, and what an array task records when Slurm stops it.

The batch script is self-contained: its #SBATCH header asks, per array task, for the nodes, GPUs (or CPUs)
of one run; a `case` on SLURM_ARRAY_TASK_ID picks the run (array task i <-> runs[i]) and execs its command:
this runner again, for that one run (`run_experiments.sh STAGE <the submitting options> --variants V
--seeds S --slurm-task RUN_DIR`), so an array task decides, claims, launches and records its run through
the same code (runner/launch.py's Stage) as a local run. A multi-node run's command is started on every
node of the allocation through srun, as the runner's own several-nodes mode (NNODES, NODE_RANK from
SLURM_NODEID, RDZV_ENDPOINT on the allocation's first host, port derived from the job id): the torchrun
flags come from runner/plan.py's launch_argv alone.

When Slurm stops a task (scancel, time limit, pre-emption) every process of the task gets SIGTERM and,
KillWait seconds later, SIGKILL. At SIGTERM time the task is already COMPLETING whatever the cause; scontrol
tells them apart (reason TimeLimit; PreemptTime set; Restarts grown by a requeue; nothing for scancel):
`end_cause` reads that and `record_end` writes the run's summary.json accordingly.
Slurm without slurmdbd has no working sacct: status comes from the run directories plus squeue (which keeps
finished tasks for MinJobAge seconds), with sacct used only where it answers.
Never imports torch (the runner's rule).
"""
import json
import os
import re
import socket
import subprocess
import threading
from dataclasses import dataclass, field

from . import launch, runinfo
from .cli import FLAG_OPTS, VALUE_OPTS, die, note
from .plan import Node, shell_line
from .runinfo import SCHEMA, atomic_write_json, load_summary, utc_iso, utc_stamp

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
    """One run to hand to Slurm: the argv its array task execs (from the options' workdir; on every node
    of a multi-node run), and what the task asks for."""
    run_dir: str
    command: tuple
    nodes: int = 1
    gpus_per_node: int = 0  # 0: a CPU run
    cpus: int = 1  # CPUs per node for the run
    label: str = ""
    env: dict = field(default_factory=dict)

    def shape(self):
        return (self.nodes, self.gpus_per_node, self.cpus)


@dataclass(frozen=True)
class SlurmOptions:
    job_name: str
    output_dir: str  # where each task's Slurm output file goes
    workdir: str  # the task cd's here before it runs (the trainers' directory)
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


def check_runs(runs):
    if not runs:
        raise SlurmError("no runs to submit")
    shapes = {r.shape() for r in runs}
    if len(shapes) > 1:
        raise SlurmError("runs of one job array must ask for the same nodes, GPUs and CPUs; got "
                         + ", ".join(shape_words(*sh) for sh in sorted(shapes))
                         + " (submit one array per shape: group_by_shape)")
    seen = set()
    for r in runs:
        if not r.command:
            raise SlurmError(f"run {r.run_dir}: empty command")
        if r.nodes < 1 or r.gpus_per_node < 0 or r.cpus < 1:
            raise SlurmError(f"run {r.run_dir}: nodes and CPUs must be >= 1 and GPUs >= 0")
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


def shape_words(nodes, gpus, cpus):
    """(1, 8, 8) -> '1 node x 8 GPUs, 8 CPUs'; (1, 0, 1) -> '1 node x 1 CPU'."""
    def n(k, word):
        return f"{k} {word}{'s' if k != 1 else ''}"
    return f"{n(nodes, 'node')} x " + (f"{n(gpus, 'GPU')}, {n(cpus, 'CPU')}" if gpus else n(cpus, "CPU"))


# what srun starts on each node of a multi-node run: the run's command, told its node count and rank
NODE_WRAPPER = 'NNODES=$SLURM_NNODES NODE_RANK=$SLURM_NODEID exec "$@"'


def multinode_command(argv_expr):
    """bash text that starts the command (`argv_expr`, e.g. "${CMD[@]}") once on every node of the
    allocation through srun. srun's flags are expanded by the batch shell; the bash -c text on each node,
    where srun has set SLURM_NODEID (the batch script exported RDZV_ENDPOINT); the argv reaches the node
    untouched through "$@". The runner there reads NNODES, NODE_RANK and RDZV_ENDPOINT (--nnodes etc.)."""
    return ('srun --nodes="$SLURM_NNODES" --ntasks-per-node=1 --cpus-per-task="$SLURM_CPUS_PER_TASK" '
            f'--kill-on-bad-exit=1 bash -c {shell_line([NODE_WRAPPER])} slurm-node {argv_expr}')


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
    body = ["set -u", f"cd {shell_line([o.workdir])} || exit 1", 'case "${SLURM_ARRAY_TASK_ID:-}" in']
    for i, r in enumerate(runs):
        body.append(f"{i})" + (f"  # {r.label}" if r.label and "\n" not in r.label else ""))
        for k, v in sorted(r.env.items()):
            body.append(f"    export {k}={shell_line([str(v)])}")
        body.append(f"    CMD=({shell_line(r.command)})")
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
            "exec " + multinode_command('"${CMD[@]}"'),
        ]
    else:
        body.append('exec "${CMD[@]}"')
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


def kill_wait(run=subprocess.run):
    """Slurm's KillWait (seconds from a task's SIGTERM to its SIGKILL), from scontrol; 30 (Slurm's default)
    when it cannot say."""
    try:
        r = run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=10)
        m = re.search(r"^KillWait\s*=\s*(\d+)", r.stdout, re.M) if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        m = None
    return int(m.group(1)) if m else 30


def record_end(run_dir, cause, job="", create=True):
    """Make the run's summary.json say that Slurm stopped it (cause: see cause_from_job); returns the
    status (None when there is no summary and create is False).

    A summary that says the run ended (ok, diverged, oom, timeout) stays as it is; one that says
    interrupted/failed because of the SIGTERM gets the cause's status ('timeout' for a time limit), its own
    words kept in trainer_status/trainer_error. Without a summary a new one is written when `create` (an
    unreadable one is moved aside first)."""
    status = STATUS_OF_CAUSE[cause]
    why = WHY[cause] + (f" (job {job})" if job else "")
    path = os.path.join(run_dir, "summary.json")
    s, state = load_summary(run_dir)
    if s is None and not create:
        return None
    if state == "corrupt":
        os.replace(path, os.path.join(run_dir, f"summary.corrupt-{utc_stamp()}.json"))
    if s is not None:
        if s["status"] in ("interrupted", "failed") and "slurm" not in s:
            s["trainer_status"], s["trainer_error"] = s["status"], s.get("error")
            s["status"], s["error"] = status, f"{why}; the summary said: {s.get('error')}"
            s["slurm"] = {"cause": cause, "job": job}
            atomic_write_json(path, s)
        return s["status"]
    os.makedirs(run_dir, exist_ok=True)
    atomic_write_json(path, {
        "schema": SCHEMA, "status": status, "error": f"{why} before the run's summary was written",
        "steps_completed": 0, "metrics": {}, "config": {},
        "env": {"hostname": socket.gethostname()},
        "written_by": "runner/slurm.py (no summary.json was written before Slurm's SIGKILL was due)",
        "slurm": {"cause": cause, "job": job},
    })
    return status


# ============================================================================ a stage on Slurm

SLURM_DIR = "slurm"  # <logs>/<stage>/slurm/: batch scripts, submission records (job-<id>.json), task output
# what an array task's command line leaves out of the submitting one: the Slurm options, and the options
# it gets its own value of (or that do not apply to one run); attributes of runner/cli.py's option tables
TASK_DROPS_VALUES = {"partition", "account", "slurm_time", "slurm_args", "slurm_task", "seeds_text", "variants_text",
                     "logs", "python", "scripts_dir", "jobs", "nnodes", "node_rank", "rdzv_endpoint", "device"}
TASK_DROPS_FLAGS = {"slurm", "slurm_status", "dry", "verbose"}
# the submitting shell's settings for its own node, not for the compute nodes (sbatch passes the rest on)
SBATCH_ENV_DROP = ("CUDA_VISIBLE_DEVICES", "NNODES", "NODE_RANK", "RDZV_ENDPOINT", "OMP_NUM_THREADS")
GROUPS = ("done", "running", "pending", "failed", "to do")


def task_words(argv):
    """(words before --, words from -- on) of the submitting command line, without TASK_DROPS_*."""
    out, i = [], 0
    while i < len(argv):
        w = argv[i]
        if w == "--":
            return out, list(argv[i:])
        name, eq, _ = w.partition("=") if w.startswith("--") else (w, "", "")
        if name in VALUE_OPTS:
            n = 1 if eq else 2
            if VALUE_OPTS[name] not in TASK_DROPS_VALUES:
                out += argv[i:i + n]
            i += n
            continue
        if name in FLAG_OPTS and FLAG_OPTS[name][0] in TASK_DROPS_FLAGS:
            i += 1
            continue
        out.append(w)
        i += 1
    return out, []


def group_of(state):
    """A run_state word -> one of GROUPS."""
    if state in ("pending", "running", "to do"):
        return state
    return "done" if state in ("ok", "diverged", "oom") else "failed"


def stage_main(a, spec, rate, env):
    """./run_experiments.sh STAGE --slurm | --status | --slurm-task RUN_DIR (cli.run_main hands over here)."""
    if not (a.slurm or a.slurm_status or a.slurm_task):
        given = next(f for f, attr in (("--partition", a.partition), ("--account", a.account),
                                       ("--time", a.slurm_time), ("--slurm-arg", a.slurm_args)) if attr)
        die(f"{given} is an option of --slurm: ./run_experiments.sh {a.stage} --slurm {given} ...")
    if a.stage == "demo":
        die("--slurm: the demo runs here; on a cluster submit its stages: ./run_experiments.sh tiny --slurm, "
            "then embnorm --slurm")
    if getattr(a, "sequential", False):  # (runner/sequential.py)
        die("--sequential decides between batches on this machine; it does not submit to Slurm")
    if a.slurm_task:
        return TaskStage(a, spec, rate, env).go()
    if a.jobs:
        die("--jobs: under --slurm every run is its own array task with its own CPUs "
            "(--slurm-arg=--cpus-per-task=N gives each more)")
    if a.node_rank not in ("", "0"):
        die("--node-rank: under --slurm each run's array task numbers its nodes itself")
    a.pack = False  # one run per array task
    if a.slurm_status:
        a.dry = True  # --status reads and writes nothing
        return StatusStage(a, spec, rate, env).go()
    return SubmitStage(a, spec, rate, env).go()


class SlurmStage(launch.Stage):
    """What submission and --status share: the plan made for the compute nodes, and the runs' states
    from their directories and Slurm's queue."""

    def plan_node(self):
        """A GPU stage (or --device cuda) is planned for the GPUs each run's array task gets, whatever this
        node has; otherwise this node's GPUs decide, as for a local run (--device cuda asks for GPUs)."""
        a, spec = self.a, self.spec
        if a.device == "cuda" or (a.device == "auto" and spec.kind == "gpu" and not a.preset):
            procs = int(a.nproc) if a.nproc else spec.processes
            need = max([procs] + [c.processes for c in spec.conditions if c.processes])
            return Node(gpus=[str(i) for i in range(need)])
        return super().plan_node()

    def print_header(self):
        runs = self.plan.runs
        note(f"== {self.a.stage} on Slurm: {len(runs)} run(s); logs: {self.logs}; device: {self.plan.device}")

    def slurm_dir(self):
        return os.path.join(self.logs, self.plan.runs[0].stage_dir, SLURM_DIR)

    def queue(self, strict=True):
        """(submission records, queue rows) for this stage's runs. A queue that cannot be read is a
        one-line exit when `strict` (nothing may be submitted twice), else a note."""
        recs = load_submissions(self.slurm_dir())
        dirs = {r.dir for r in self.plan.runs}
        ids = sorted({rec["job_id"] for rec in recs if dirs & set(rec["runs"])})
        try:
            return recs, queue_rows(ids)
        except (SlurmError, OSError, subprocess.SubprocessError) as e:
            why = f"cannot read Slurm's queue for jobs {','.join(map(str, ids))} ({e})"
            if strict:
                die(f"{why}; nothing submitted (is SLURM_CONF set, is slurmctld up?)")
            note(f"note: {why}: queued runs are not left out")
            return recs, {}

    def states(self, recs, rows):
        """[(run, state word, 'job_task' or '', detail)] in plan order."""
        out = []
        for r in self.plan.runs:
            t = task_of(recs, r.dir)
            row = rows.get(t) if t else None
            status, vloss, _, err = runinfo.describe(r.dir)
            state = run_state(status, row)
            detail = (f"val_loss {vloss}" if vloss else err) if state not in ("pending", "running") else \
                (row or {}).get("reason", "")
            if r.action == "busy" and state not in ("pending", "running"):
                state, detail = "running", r.prev
            out.append((r, state, f"{t[0]}_{t[1]}" if t else "", detail))
        return out

    def print_states(self, states):
        head = ("state", "run", "seed", "slurm task", "")
        lines = [(group_of(st) + ("" if st in ("ok", *GROUPS) else f" ({st})"), r.key, str(r.seed), t, d[:100])
                 for r, st, t, d in states]
        width = [max(len(x[k]) for x in [head, *lines]) for k in range(4)]
        for x in [head, *lines]:
            note(("  " + "  ".join(x[k].ljust(width[k]) for k in range(4)) + "  " + x[4]).rstrip())
        counts = {g: sum(group_of(st) == g for _, st, _, _ in states) for g in GROUPS}
        note(f"   {self.a.stage}: " + ", ".join(f"{n} {g}" for g, n in counts.items()))
        return counts


class StatusStage(SlurmStage):
    """./run_experiments.sh STAGE --slurm --status: every run's state; writes nothing."""

    def print_dry_run(self):
        self.print_states(self.states(*self.queue(strict=False)))
        return 0


class SubmitStage(SlurmStage):
    """./run_experiments.sh STAGE --slurm [--dry-run]: one job array per run shape, of the runs still to do."""

    def to_submit(self, strict):
        recs, rows = self.queue(strict)
        self.print_states(self.states(recs, rows))
        active = active_runs(recs, rows)
        todo = [r for r in self.todo if r.dir not in active]
        if not todo:
            note("nothing to submit: every run is done, queued or running (--status shows them; --force "
                 "resubmits finished ones)")
        return todo

    def task_argv(self, r):
        """This runner again, for run r alone: the submitting options (TASK_DROPS_* left out) with this
        submission's absolute logs, scripts, interpreter and device."""
        head, tail = task_words(self.a.argv)
        root = self.env.get("RUNNER_ROOT") or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        py = self.opts.python
        if os.sep in py:
            py = os.path.abspath(py)
        return [os.path.join(root, "run_experiments.sh"), *head, "--logs", self.logs, "--scripts-dir",
                self.opts.scripts_dir, "--python", py, "--device", self.plan.device, "--variants", r.variant,
                "--seeds", str(r.seed), "--slurm-task", r.dir, *tail]

    def arrays(self, todo):
        """[(plan runs, SlurmRuns, SlurmOptions)], one per shape (nodes, GPUs, CPUs)."""
        a, opts = self.a, self.opts
        sruns = [SlurmRun(run_dir=r.dir, command=tuple(self.task_argv(r)), nodes=opts.nnodes,
                          gpus_per_node=r.nproc if self.plan.device == "cuda" else 0, cpus=r.nproc, label=r.label)
                 for r in todo]
        by_dir = {r.dir: r for r in todo}
        groups = group_by_shape(sruns)
        name = re.sub(r"[^A-Za-z0-9_.+-]", "_", todo[0].stage_dir)[:60]
        out = []
        for k, g in enumerate(groups):
            o = SlurmOptions(job_name=name if len(groups) == 1 else f"{name}-{k}", output_dir=self.slurm_dir(),
                             workdir=opts.scripts_dir, partition=a.partition, account=a.account, time=a.slurm_time,
                             extra=tuple(a.slurm_args))
            out.append(([by_dir[x.run_dir] for x in g], g, o))
        return out

    def script_path(self, o):
        base = os.path.join(o.output_dir, f"{o.job_name}-{utc_stamp()}")
        path = base + ".sh"
        while os.path.exists(path):
            base += "x"
            path = base + ".sh"
        return path

    def print_dry_run(self):
        todo = self.to_submit(strict=False)
        for runs, sruns, o in self.arrays(todo) if todo else []:
            path = self.script_path(o)
            try:
                text = batch_script(sruns, o)
                argv = sbatch_command(path, o)
            except SlurmError as e:
                die(str(e))
            note(f"-- batch script {path} ({len(runs)} array task(s), each {shape_words(*sruns[0].shape())}):")
            note(text.rstrip("\n"))
            note(f"-- sbatch command: {shell_line(argv)}")
        note("(dry run: nothing was submitted or written)")
        return 0

    def execute(self):
        todo = self.to_submit(strict=True)
        if not todo:
            return 0
        self.todo = todo
        if self.prepare() == 2:
            return 2
        env = {k: v for k, v in self.env.items() if not k.startswith("RUNNER_") and k not in SBATCH_ENV_DROP}
        for runs, sruns, o in self.arrays(todo):
            try:
                text = batch_script(sruns, o)
                os.makedirs(o.output_dir, exist_ok=True)
                path = self.script_path(o)
                with open(path, "x") as f:
                    f.write(text)
                job = submit(path, o, env=env)
            except SlurmError as e:
                die(str(e))
            except OSError as e:
                die(f"cannot write the batch script in {o.output_dir}: {e.strerror or e}")
            write_submission(o.output_dir, submission_record(job, sruns, path, sbatch_command(path, o)))
            note(f"submitted job {job}: {len(runs)} array task(s), each {shape_words(*sruns[0].shape())}; "
                 f"batch script {path}")
            for i, r in enumerate(runs):
                note(f"  task {i}: {r.label}: {os.path.join(o.output_dir, f'{o.job_name}-{job}_{i}.out')}")
        note(f"each run writes into its own directory as here (stdout.log, summary.json); "
             f"./run_experiments.sh {self.a.stage} --slurm --status shows where they are")
        return 0


class TaskStage(launch.Stage):
    """Inside an array task (`--slurm-task RUN_DIR`): the stage narrowed to that one run, run as a local
    run is. Its OMP_NUM_THREADS comes from the task's CPUs; when Slurm stops the task, the run's summary
    says why (record_end): once the run has ended and its summary is written, or, when the run has not
    ended 3 s before Slurm's SIGKILL is due (KillWait), then."""
    cause = None
    job = ""
    ended = False

    def select(self, runs):
        mine = [r for r in runs if r.dir == self.a.slurm_task]
        if len(mine) != 1:
            die(f"--slurm-task: '{self.a.slurm_task}' is not a run of {self.a.stage} with these options (the "
                "batch script that --slurm writes passes it)")
        cpus = self.env.get("SLURM_CPUS_PER_TASK", "")
        if cpus.isdigit() and int(cpus) > 0:
            self.env["OMP_NUM_THREADS"] = str(max(1, int(cpus) // mine[0].nproc))
        self.job = task_id(self.env)
        self.lock = threading.Lock()
        return mine

    def prepare(self):
        return 0  # the submission prepared the data and wrote experiment.json (and sweep.json)

    def on_signal(self, signum, frame):
        if self.cause is None and self.opts.node_rank == 0:
            self.cause = end_cause(self.env)
            for r in self.todo:  # a summary already there says why now
                record_end(r.dir, self.cause, self.job, create=False)
            timer = threading.Timer(max(1, kill_wait() - 3), self.record_before_kill)
            timer.daemon = True
            timer.start()
        super().on_signal(signum, frame)

    def record_before_kill(self):
        with self.lock:
            if not self.ended:
                for r in self.todo:
                    if os.path.isdir(r.dir):
                        record_end(r.dir, self.cause, self.job)

    def end(self, job):
        with self.lock:
            super().end(job)
            self.ended = True
            if self.cause is not None and self.opts.node_rank == 0:
                record_end(job["run"].dir, self.cause, self.job)
