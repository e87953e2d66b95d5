"""Running a stage: decide what each run needs (run, rerun, resume, skip, busy), claim it, launch it as
its own process group, follow its log, enforce --timeout, handle Ctrl-C, record its summary and cost,
and print the final table.

Files a run gets (node 0): <run dir>/.runner.lock while it runs (created with O_CREAT|O_EXCL: JSON
host, runner_pid, pgid of the trainer, started), stdout.log (the runner's === lines around the
trainer's output), summary.json (the trainer's, else one written by runinfo.finish; then "cost" added).
Other nodes write stdout.node<R>.log only. Never imports torch.
"""
import ctypes
import datetime
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

from . import runinfo
from .cli import build_options, demo_counts, die, node_from_env, note, torch_available
from .plan import UsageError, cmd_string, launch_argv, make_plan, place, shell_line, uses_torchrun
from .stages import PlanError, load_builtin

LOCK_NAME = ".runner.lock"
POLL_S = 0.5        # how often a running run's log is read (it starts faster)
HEARTBEAT_S = 60    # a progress line at least this often while a run prints no new val loss
KILL_AFTER_S = 30   # after --timeout's SIGTERM, SIGKILL this much later
STEP_PREFIX = b"step:"
NOT_RUN = ("skip", "busy", "node0")   # actions of runs this invocation leaves alone
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def fmt_dur(s):
    """seconds -> 1h02m03s / 2m05s / 7s"""
    if s is None or s < 0:
        return "?"
    s = int(s)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def iso_now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ----------------------------------------------------------------------------- locks
#
# <run dir>/.runner.lock is created with O_CREAT|O_EXCL (one winner among runners started at the same
# moment) and holds JSON {"host", "runner_pid", "pgid", "started"} (+ "pgids": the process groups of a
# torchrun job's workers, each in its own session). On this host a lock is live while the runner or
# any of those process groups is; a stale one is taken over by exactly one runner (an O_EXCL marker
# named after the stale file). A lock from another host cannot be checked: the run is left alone.

FRESH_LOCK_S = 30   # an empty or unreadable lock younger than this is being written: left alone
TAKEOVER = ".runner.lock.takeover-"


def read_lock(run_dir):
    """None when there is no lock, else a dict: host, runner_pid, pgids (ints; the trainer's process
    group first), raw (its bytes), ino and mtime (to take a stale one over safely). host is None when
    the file is empty or unreadable (being written, or left half-written)."""
    path = os.path.join(run_dir, LOCK_NAME)
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            raw = f.read(65536)
    except FileNotFoundError:
        return None
    except OSError:
        return {"host": None, "runner_pid": None, "pgids": [], "raw": b"", "ino": None, "mtime": time.time()}
    lock = {"host": None, "runner_pid": None, "pgids": [], "raw": raw, "ino": st.st_ino, "mtime": st.st_mtime}
    try:
        d = json.loads(raw)
    except ValueError:
        parts = raw.split()  # the bash runner's "host pid" line
        if len(parts) >= 2 and parts[1].isdigit():
            lock.update(host=parts[0].decode("utf-8", "replace"), runner_pid=int(parts[1]))
        return lock
    if isinstance(d, dict) and isinstance(d.get("host"), str):
        groups = [d.get("pgid")] + (d.get("pgids") if isinstance(d.get("pgids"), list) else [])
        lock.update(host=d["host"], runner_pid=d.get("runner_pid"),
                    pgids=[g for g in groups if isinstance(g, int) and g > 0])
    return lock


def alive(pid, group=False):
    """Whether a process (or a process group) runs; zombies (ended, not yet reaped: an orphan's parent
    may never reap it in a container) do not count."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.killpg(pid, 0) if group else os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not os.path.isdir("/proc/self"):
        return True
    return any(state != b"Z" and (not group or pgid == pid)
               for _, state, _, pgid in proc_stats(None if group else [pid]))


def proc_stats(pids=None):
    """(pid, state, parent pid, process group) of every process in /proc (or of `pids`); Linux only,
    processes that end while being read are left out."""
    try:
        names = [str(p) for p in pids] if pids is not None else os.listdir("/proc")
    except OSError:
        return
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            yield int(name), fields[0], int(fields[1]), int(fields[2])
        except (OSError, IndexError, ValueError):
            continue


def lock_state(run_dir, lock=None):
    """("none" | "live" | "other-host" | "stale", reason): what a lock says about its run on this host."""
    lock = read_lock(run_dir) if lock is None else lock
    path = os.path.join(run_dir, LOCK_NAME)
    if lock is None:
        return "none", ""
    if lock["host"] is None:
        if time.time() - lock["mtime"] < FRESH_LOCK_S:
            return "live", "being claimed by another runner right now"
        return "stale", f"unreadable lock {path}"
    if lock["host"] != socket.gethostname():
        return "other-host", (f"locked by a runner on {lock['host']}, which cannot be checked from here; if no "
                              f"runner on {lock['host']} runs it, delete {path}")
    live = [g for g in lock["pgids"] if alive(g, group=True)]
    if live:
        return "live", f"its trainer (process group {live[0]}) is running on this host"
    if alive(lock["runner_pid"]):
        return "live", f"being run by runner process {lock['runner_pid']} on this host"
    return "stale", f"stale lock of runner process {lock['runner_pid']} (no process of it is left)"


def lock_holder(run_dir):
    """Why a run directory is not ours to run (a live lock, or one from another host), else None."""
    state, why = lock_state(run_dir)
    return why if state in ("live", "other-host") else None


def _create_lock(path):
    """O_CREAT|O_EXCL, then the JSON; False when it exists. A lock that cannot be written is removed."""
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    try:
        data = json.dumps({"host": socket.gethostname(), "runner_pid": os.getpid(), "pgid": None,
                           "started": iso_now()}).encode()
        if os.write(fd, data) != len(data):
            raise OSError(errno.ENOSPC, "short write")
    except BaseException:
        os.close(fd)
        _unlink(path)
        raise
    os.close(fd)


def claim(run_dir):
    """Claim a run directory: True, or the reason it is not ours (a string). One winner among any
    number of runners at once, also when they take over the same stale lock. OSError when the lock
    cannot be written (a full disk): nothing is left behind."""
    path = os.path.join(run_dir, LOCK_NAME)
    for _ in range(5):
        try:
            _create_lock(path)
            return True
        except FileExistsError:
            pass
        lock = read_lock(run_dir)
        if lock is None:
            continue  # released meanwhile: try again
        state, why = lock_state(run_dir, lock)
        if state != "stale":
            return why
        # Take the stale lock over: one marker per stale file (inode and mtime), created O_EXCL, decides
        # who may remove it; the winner checks it is still that same file before removing it.
        marker = os.path.join(run_dir, f"{TAKEOVER}{lock['ino']}-{int(lock['mtime'] * 1e6)}")
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            return "another runner is taking over its stale lock"
        try:
            again = read_lock(run_dir)
            if again is not None and (again["ino"], again["raw"]) == (lock["ino"], lock["raw"]):
                _unlink(path)
        finally:
            _unlink(marker)
    return "its lock keeps changing (another runner is claiming it)"


def update_lock(run_dir, pgids):
    """Name the trainer's process group(s) in our lock (the first is the trainer's own). Best effort:
    when it cannot be written (a full disk), the runner's own pid still holds the claim and the trainer
    dies with the runner."""
    path = os.path.join(run_dir, LOCK_NAME)
    lock = read_lock(run_dir)
    started = None
    try:
        started = json.loads(lock["raw"]).get("started") if lock else None
    except (ValueError, AttributeError):
        pass
    try:
        runinfo.atomic_write_json(path, {"host": socket.gethostname(), "runner_pid": os.getpid(), "pgid": pgids[0],
                                         "pgids": pgids[1:], "started": started or iso_now()})
        return True
    except OSError:
        return False


def release(run_dir):
    _unlink(os.path.join(run_dir, LOCK_NAME))


def _unlink(path):
    try:
        os.remove(path)
    except OSError:
        pass


# ----------------------------------------------------------------------------- the trainer's life

def die_with_parent():
    """preexec_fn of every trainer: SIGTERM when the runner dies, however it dies (Linux
    PR_SET_PDEATHSIG; the trainers write an "interrupted" summary on SIGTERM and torchrun stops its
    workers). A runner already gone by then (the fork raced its death) means: do not start."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def setup():
        prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        if os.getppid() != parent:
            os._exit(143)
    return setup


def descendants(pid):
    """Every process below `pid` (Linux /proc), as {pid: pgid}."""
    children, groups = {}, {}
    for p, _, parent, pgid in proc_stats():
        children.setdefault(parent, []).append(p)
        groups[p] = pgid
    out, todo = {}, [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out[c] = groups.get(c)
                todo.append(c)
    return out


# ----------------------------------------------------------------------------- the stage

class Stage:
    experiment_extra = None   # more keys for experiment.json (a sequential batch: its design file and seeds)

    def __init__(self, a, spec, rate, env):
        self.a, self.spec, self.rate, self.env = a, spec, rate, env
        self.rows = {}        # plan index -> table row
        self.durations = []   # (stage_dir, seconds) of finished runs, for the ETA
        self.interrupted = 0

    # ------------------------------------------------------------------ setup
    def go(self):
        a, env = self.a, self.env
        if self.spec.force:
            a.force = True
        logs = a.logs or self.spec.default_logs or "experiment_logs"
        if a.stage == "demo":
            logs = a.logs or "experiment_logs"
        if a.dry:
            self.logs = logs if os.path.isabs(logs) else os.path.join(env.get("PWD") or os.getcwd(), logs)
        else:
            try:
                os.makedirs(logs, exist_ok=True)
            except OSError:
                die(f"--logs: cannot create '{logs}'")
            self.logs = os.path.abspath(logs)
        self.opts = opts = build_options(a, env, self.logs)
        node = self.plan_node()
        extra_specs = []
        if a.stage == "demo":
            extra_specs = self.demo_specs()
        try:
            self.plan = plan = make_plan(self.spec, opts, node, extra_specs)
        except UsageError as e:
            die(str(e))
        plan.runs = self.select(plan.runs)
        self.jobs = int(a.jobs) if a.jobs else 1
        if not a.jobs and a.stage == "demo" and plan.device == "cpu" and cores(env) >= 2:
            # The demo's small CPU models: two 1-thread runs side by side match one 2-thread run on an
            # idle machine and degrade far more gracefully on a busy one (docs/runner.md).
            self.jobs = 2
        self.child_env = {k: v for k, v in env.items() if not k.startswith("RUNNER_")}
        if self.jobs > 1:
            if plan.device != "cpu":
                die("--jobs runs CPU runs side by side; GPU runs take their GPUs one run after another")
            if opts.nnodes != 1:
                die("--jobs and --nnodes do not mix: every node must run the same run at the same time")
            if not env.get("OMP_NUM_THREADS"):
                self.child_env["OMP_NUM_THREADS"] = str(max(1, cores(env) // self.jobs))
        self.child_env["PYTHONUNBUFFERED"] = "1"  # lines reach stdout.log as printed: the monitor reads them
        if not a.dry and not torch_available():
            die(f"'{opts.python}' has no torch; run 'make env' and use .venv/bin/python (--python or PYTHON)")
        if not plan.runs:
            die(f"nothing to run: no variant of {a.stage} matches --variants '{' '.join(a.variants or [])}'")
        for r in plan.runs:
            self.decide(r)
        self.todo = [r for r in plan.runs if r.action not in NOT_RUN]
        place(self.todo, plan, opts)
        self.print_header()
        if a.dry:
            return self.print_dry_run()
        return self.execute()

    def plan_node(self):
        """The GPUs the plan is made for: this node's (a Slurm submission plans for the compute nodes)."""
        return node_from_env(self.env)

    def select(self, runs):
        """The planned runs this invocation is about (all of them; a Slurm array task keeps its one run)."""
        return runs

    def demo_specs(self):
        """The demo: tiny (already self.spec) then the embnorm study at the demo's count."""
        a, env = self.a, self.env
        tiny_iters, emb_iters, emb_seeds = demo_counts(env)
        why = ", sized for about 10 minutes on 2 CPU cores (docs/runner.md)" if not a.iterations else " (--iterations)"
        note(f"demo: tiny baseline vs palm at {a.iterations or tiny_iters} iterations (the preset's own: 150) and the "
             f"embnorm study at {a.iterations or emb_iters} (its design: 300){why}")
        if not os.path.isfile(os.path.join(a.scripts_dir, "train_gpt_palm.py")):
            note("note: train_gpt_palm.py is not here yet; the demo runs the tiny baseline alone")
            self.spec.conditions = [c for c in self.spec.conditions if c.name != "palm"]
        try:
            emb = load_builtin("embnorm")
        except PlanError as e:
            die(str(e))
        emb.flags = ["--num_iterations", str(emb_iters)]
        n = int(a.iterations) if a.iterations else emb_iters
        design_seeds = emb.seeds
        if not a.seeds:  # --seeds, when given, sets both halves' seeds
            emb.seeds = design_seeds[:emb_seeds]
        if n != 300 or emb.seeds != design_seeds:
            note(f"note: the demo's embnorm study uses {n} iterations, written to embnorm_demo/ (the study's design "
                 "is 300: ./run_experiments.sh embnorm)")
            emb.dir_name = "embnorm_demo"
        if emb.seeds != design_seeds:
            note(f"note: it runs seeds {' '.join(map(str, emb.seeds))} of the study's {len(design_seeds)} "
                 "(DEMO_EMBNORM_SEEDS)")
        return [emb]

    def decide(self, r):
        """What to do with a planned run, from what its directory holds."""
        a, opts = self.a, self.opts
        if opts.nnodes > 1 and not r.distributed and opts.node_rank != 0:
            r.action, r.prev = "node0", f"{r.script} is not distributed: node 0 runs it alone"
            return
        r.seen = summary_ident(r.dir)
        if not os.path.exists(r.dir):
            r.action = "run"
            return
        if opts.node_rank == 0:
            holder = lock_holder(r.dir)
            if holder:
                r.action, r.prev = "busy", holder
                return
        st = runinfo.status_of(r.dir)
        if st in ("ok", "diverged", "oom"):
            r.action = "rerun" if a.force else "skip"
        elif a.resume and r.script.startswith("train_gpt") and _nonempty(os.path.join(r.dir, "checkpoints")):
            r.action = "resume"
        elif st == "none" and not _nonempty(r.dir):
            r.action = "run"  # an empty directory holds nothing to keep
        else:
            r.action = "rerun"  # failed, timeout, interrupted, none (killed, or still running elsewhere), corrupt
        r.prev = st

    # ------------------------------------------------------------------ printing the plan
    def print_header(self):
        plan, opts = self.plan, self.opts
        note(f"== {self.a.stage}: {len(plan.runs)} run(s), {len(self.todo)} to run; logs: {self.logs}")
        note(f"   device: {plan.device}; CUDA_VISIBLE_DEVICES='{plan.cvd}'; nodes: {opts.nnodes} (this is node "
             f"{opts.node_rank}){'; ' + plan.note if plan.note else ''}")
        if self.jobs > 1:
            note(f"   {self.jobs} runs at a time, OMP_NUM_THREADS={self.child_env.get('OMP_NUM_THREADS', '')} each")
        if plan.slots > 1:
            note(f"   packed: {plan.slots} runs at a time on {plan.slot_size * plan.slots} GPUs, {plan.slot_size} each "
                 "(own CUDA_VISIBLE_DEVICES and port; --no-pack: one at a time)")

    def print_dry_run(self):
        plan = self.plan
        for r in plan.runs:
            rel = os.path.relpath(r.dir, self.logs) if r.dir.startswith(self.logs + "/") else r.dir
            if plan.slots > 1 and r.action not in NOT_RUN and \
                    next(x for x in self.todo if x.wave == r.wave) is r:
                wave = [x for x in self.todo if x.wave == r.wave]
                nums = f"{self.todo.index(wave[0]) + 1}-{self.todo.index(wave[-1]) + 1}"
                when = "start together" if r.wave == 0 else "then, each as its slot's previous run ends"
                note(f"-- runs {nums} of {len(self.todo)}: {when}")
            if r.action == "skip":
                note(f"skip    {rel} (summary.json says {r.prev}; --force reruns it)")
            elif r.action == "busy":
                note(f"busy    {rel} ({r.prev})")
            elif r.action == "node0":
                note(f"node 0  {rel} ({r.prev})")
            elif r.action == "rerun":
                note(f"rerun   {rel} (previous attempt: {r.prev}; it would be moved to {self.logs}/.superseded/)")
                note(f"        {cmd_string(r, self.opts)}")
            else:
                note(f"{r.action:<8}{rel}")
                note(f"        {cmd_string(r, self.opts)}")
        if self.a.stage == "demo":
            note(f"then    cd {shell_line([self.opts.scripts_dir])} && "
                 f"{shell_line([self.opts.python, 'analyze.py', '--logs', self.logs, '--out', self.logs + '/report.md'])} ")
        note("(dry run: nothing was run or written)")
        return 0

    # ------------------------------------------------------------------ bookkeeping before the runs
    def ensure_shakespeare(self):
        a = self.a
        if any(w == "--input_bin" or w.startswith("--input_bin=") for w in a.extra):
            return
        if os.path.isfile(os.path.join(a.scripts_dir, "data", "shakespeare_char", "meta.json")):
            return
        note(f"== preparing the Shakespeare data: (cd {a.scripts_dir} && {self.opts.python} data/prepare_shakespeare.py)")
        rc = subprocess.call([self.opts.python, "data/prepare_shakespeare.py"], cwd=a.scripts_dir, env=self.child_env)
        if rc != 0:
            die("preparing the data failed (see above); run 'python data/prepare_shakespeare.py' by hand")

    def write_sweep_json(self):
        """<logs>/sweep_<param>/sweep.json: what analyze.py compares against (the first value); an
        earlier one is kept as sweep.<utc>.json; a sweep of another script here is refused."""
        a = self.a
        d = os.path.join(self.logs, f"sweep_{a.sweep_param}")
        f = os.path.join(d, "sweep.json")
        try:
            os.makedirs(d, exist_ok=True)
            if os.path.exists(f):
                try:
                    with open(f) as fh:
                        old = json.load(fh).get("script")
                except (OSError, ValueError, AttributeError):
                    old = None
                if old and old != a.sweep_script:
                    note(f"sweep: {f} is a sweep of another script ({old}); use another --logs directory")
                    return 2
                os.replace(f, os.path.join(d, f"sweep.{runinfo.utc_stamp()}.json"))
            runinfo.atomic_write_json(f, {"param": a.sweep_param, "script": a.sweep_script, "values": a.sweep_values,
                                          "baseline": f"{a.sweep_param}={a.sweep_values[0]}", "written": iso_now()})
        except OSError:
            return 1
        return 0

    def write_experiments(self):
        done = set()
        for r in self.todo:
            if r.key in done:
                continue
            done.add(r.key)
            same = [x for x in self.plan.runs if x.key == r.key]
            commands = {str(x.seed): cmd_string(x, self.opts) for x in same if x.action not in NOT_RUN}
            try:
                runinfo.write_experiment(
                    os.path.join(self.logs, r.key), stage=r.stage_dir, variant=r.variant, script=r.script,
                    seeds=[x.seed for x in same], nproc=r.nproc, nnodes=self.opts.nnodes, device=self.plan.device,
                    cuda_visible_devices=self.plan.cvd, repo=self.a.scripts_dir, jobs=self.jobs,
                    omp_num_threads=self.child_env.get("OMP_NUM_THREADS", ""),
                    runner_argv=shell_line([self.env.get("RUNNER_ARGV0", "run_experiments.sh"), *self.argv_words()]) + " ",
                    commands=commands, overrides=r.args, usd_per_gpu_hour=self.rate,
                    runs_at_once=max(self.jobs, self.plan.slots), extra=self.experiment_extra)
            except OSError:
                note(f"warning: could not write {self.logs}/{r.key}/experiment.json")

    def prepare(self):
        """Before the runs (node 0): the Shakespeare data, sweep.json, experiment.json; 2: stop (exit code)."""
        a, opts = self.a, self.opts
        if self.todo and opts.node_rank == 0:
            if a.stage in ("demo", "smoke", "tiny", "embnorm") or a.preset or \
                    any(w == "--preset" for r in self.todo for w in r.args):  # a plan's --preset tiny runs
                self.ensure_shakespeare()
        if a.stage == "sweep" and opts.node_rank == 0:
            rc = self.write_sweep_json()
            if rc == 2:
                return 2
            if rc:
                note(f"warning: could not write {self.logs}/sweep_{a.sweep_param}/sweep.json")
        if self.todo and opts.node_rank == 0:
            self.write_experiments()
        return 0

    def argv_words(self):
        return self.env.get("RUNNER_ARGV_WORDS", "").split("\x1f") if self.env.get("RUNNER_ARGV_WORDS") else sys.argv[1:]

    # ------------------------------------------------------------------ running
    def execute(self):
        a, opts = self.a, self.opts
        # Ctrl-C, SIGTERM and SIGHUP (a closed terminal) from here on only set a flag: every run still
        # gets its row, its summary and its lock removed, and the stage exits 130.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self.on_signal)
        self.disk_full = None
        self.preexec = die_with_parent()
        if self.prepare() == 2:
            return 2
        self.t0 = time.time()
        index = {id(r): i for i, r in enumerate(self.plan.runs)}
        for r in self.plan.runs:
            if r.action == "skip":
                st, vloss, wall, err = runinfo.describe(r.dir)
                self.rows[index[id(r)]] = self.row(r, "skipped", st, vloss, wall, err, runinfo.cost_of(r.dir))
                note(f"skip {r.label}: summary.json says {st} (--force reruns it)")
            elif r.action == "busy":
                self.rows[index[id(r)]] = self.row(r, "not run", "running", "", "", r.prev)
                note(f"busy {r.label}: {r.prev}")
            elif r.action == "node0":
                row = self.row(r, "node 0 only", "-", "", "", r.prev)
                row["counted"] = False
                self.rows[index[id(r)]] = row
                note(f"node 0 only {r.label}: {r.prev}")
        self.running = []
        pending = list(self.todo)
        self.k = 0
        poll = 0.05
        while pending or self.running:
            if self.interrupted or self.disk_full:
                why = "interrupted before it started" if self.interrupted else \
                    f"not started: the disk is full ({self.disk_full})"
                for r in pending:
                    self.rows[index[id(r)]] = self.row(r, "not run", "-", "", "", why)
                pending = []
            for r in list(pending):
                if self.can_start(r, pending):
                    pending.remove(r)
                    self.start(r, index[id(r)])
            for job in list(self.running):
                self.watch(job)
            if self.running:
                time.sleep(poll)
                poll = min(POLL_S, poll * 2)
        note("")
        note(f"== {a.stage}: finished in {fmt_dur(time.time() - self.t0)}; logs: {self.logs}")
        rows = [self.rows[i] for i in sorted(self.rows)]
        for line in runinfo.table(rows, self.rate):
            note(line)
        bad = sum(r["status"] != "ok" for r in rows if r.get("counted", True))
        if a.stage == "demo" and not self.interrupted and opts.node_rank == 0:
            bad += self.analyze()
        if self.interrupted:
            return 130
        return 1 if bad else 0

    def can_start(self, r, pending):
        if self.plan.slots > 1:  # a packed run waits for its slot, behind the earlier runs of that slot
            busy = {j["run"].slot for j in self.running}
            return r.slot not in busy and all(p.slot != r.slot for p in pending[: pending.index(r)])
        return len(self.running) < self.jobs and pending[0] is r

    def row(self, r, this_time, status, vloss, wall, err, cost=None):
        return {"run": r.key, "seed": r.seed, "this_time": this_time, "status": status, "val_loss": vloss,
                "wall_s": wall, "error": err, "cost": cost}

    def start(self, r, idx):
        opts = self.opts
        self.k += 1
        label = f"[{self.k}/{len(self.todo)}] {r.label}"
        if opts.node_rank == 0:
            if not self.claim_run(r, idx, label):
                return
        else:
            try:
                os.makedirs(r.dir, exist_ok=True)
            except OSError as e:
                return self.not_run(r, idx, label, "failed", self.os_problem(e, r.dir, "cannot create"))
        log = os.path.join(r.dir, "stdout.log" if opts.node_rank == 0 else f"stdout.node{opts.node_rank}.log")
        offset = os.path.getsize(log) if os.path.exists(log) else 0
        line = cmd_string(r, opts)
        try:
            with open(log, "a") as f:
                f.write(f"=== run_experiments.sh {iso_now()}: {r.action} {r.stage_dir}/{r.variant} seed {r.seed} "
                        f"(node {opts.node_rank})\n=== {line}\n")
        except OSError as e:
            if opts.node_rank == 0:
                release(r.dir)
            return self.not_run(r, idx, label, "failed", self.os_problem(e, log, "cannot write"))
        note(f"{label}: {r.action} (stage elapsed {fmt_dur(time.time() - self.t0)})")
        job = {"run": r, "idx": idx, "label": label, "log": log, "offset": offset, "t0": time.time(), "proc": None,
               "rc": None, "last_val": None, "last_print": time.time(), "step0": None, "since0": 0,
               "term_at": None, "kill_at": None, "sharing": 1, "stream_pos": None, "pgids": [],
               "workers": uses_torchrun(r, opts)}
        if not os.path.isfile(os.path.join(opts.scripts_dir, r.script)):
            append(log, f"FileNotFoundError: {r.script} is not in {opts.scripts_dir} "
                        "(the trainer script does not exist yet?)\n")
            job["rc"] = 127
        else:
            env = dict(self.child_env, CUDA_VISIBLE_DEVICES=r.cvd)
            try:
                # its own session (a Ctrl-C at the terminal reaches the runner only, which stops the run
                # and records it), and SIGTERM when the runner dies in any way (die_with_parent)
                with open(log, "ab") as out:
                    job["proc"] = subprocess.Popen(launch_argv(r, opts), cwd=opts.scripts_dir, stdout=out,
                                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                                   start_new_session=True, preexec_fn=self.preexec)
            except OSError as e:
                append(log, f"OSError: cannot start {launch_argv(r, opts)[0]}: {e.strerror}\n")
                job["rc"] = 127
            if job["proc"] is not None:
                job["pgids"] = [job["proc"].pid]
                if opts.node_rank == 0:
                    update_lock(r.dir, job["pgids"])
            if job["proc"] is not None and self.interrupted:
                self.signal_job(job, signal.SIGTERM)  # Ctrl-C came while it was starting
            if self.a.verbose:
                job["stream_pos"] = offset
        self.running.append(job)
        for j in self.running:
            j["sharing"] = max(j["sharing"], len(self.running))

    def claim_run(self, r, idx, label):
        """Node 0: claim the run directory and, under the claim, make sure the run is still ours to run
        (another runner on the same logs may have run it since this one looked); move an old attempt
        aside. False (with the run's row) when it is not run."""
        try:
            os.makedirs(r.dir, exist_ok=True)
            got = claim(r.dir)
        except OSError as e:
            return self.not_run(r, idx, label, "failed", self.os_problem(e, r.dir, "cannot claim"))
        if got is not True:
            note(f"busy {r.label}: {got}")
            self.rows[idx] = self.row(r, "not run", "running", "", "", got)
            return False
        if summary_ident(r.dir) != r.seen:
            st, vloss, wall, err = runinfo.describe(r.dir)
            release(r.dir)
            note(f"{label}: another runner ran it meanwhile (summary.json says {st}); left alone")
            self.rows[idx] = self.row(r, "not run", st, vloss, wall, "run by another runner meanwhile",
                                      runinfo.cost_of(r.dir))
            return False
        if r.action == "run" and _leftovers(r.dir):
            r.action, r.prev = "rerun", runinfo.status_of(r.dir)  # a dead runner's attempt, found under the claim
        if self.interrupted:
            release(r.dir)
            return self.not_run(r, idx, label, "-", "interrupted before it started", quiet=True)
        if r.action == "rerun":
            dest = self.move_aside(r)
            if dest is None:
                release(r.dir)
                return self.not_run(r, idx, label, "failed", f"cannot move {r.dir} aside")
            release(dest)  # our claim moved with the old attempt
            for _ in range(50):  # the fresh directory: another runner may hold it for a moment
                try:
                    os.makedirs(r.dir, exist_ok=True)
                    got = claim(r.dir)
                except OSError as e:
                    return self.not_run(r, idx, label, "failed", self.os_problem(e, r.dir, "cannot claim"))
                if got is True or "right now" not in got and "by runner process" not in got:
                    break
                time.sleep(0.1)
            if got is not True:
                note(f"busy {r.label}: {got}")
                self.rows[idx] = self.row(r, "not run", "running", "", "", got)
                return False
        if r.action == "resume" and os.path.exists(os.path.join(r.dir, "summary.json")):
            try:
                os.replace(os.path.join(r.dir, "summary.json"),
                           os.path.join(r.dir, f"summary.{r.prev}-{runinfo.utc_stamp()}.json"))
            except OSError as e:
                release(r.dir)
                return self.not_run(r, idx, label, "failed", self.os_problem(e, r.dir, "cannot keep the summary in"))
        return True

    def not_run(self, r, idx, label, status, why, quiet=False):
        if not quiet:
            note(f"{label}: not run: {why}")
        self.rows[idx] = self.row(r, "not run", status, "", "", why)
        return False

    def os_problem(self, e, path, what):
        """One line for a failed file operation; a full disk also stops the stage from starting more runs."""
        if e.errno in DISK_FULL:
            if not self.disk_full:
                self.disk_full = f"{what} {path}: {e.strerror}"
                note(f"== disk full: {what} {path} ({e.strerror}); no further run starts: free space and run the "
                     "same command again (unfinished runs are rerun)")
            return f"disk full: {what} {path}"
        return f"{what} {path}: {e.strerror or e}"

    def signal_job(self, job, sig):
        """`sig` to the trainer's process group and, under torchrun, to each worker's own group (torchrun
        starts every worker in a session of its own: a SIGKILL of the agent alone would orphan them)."""
        if job["proc"] is None:
            return
        if job["workers"]:
            self.track_workers(job)
        groups = job["pgids"] if job["proc"].poll() is None else job["pgids"][1:]
        for g in groups:
            try:
                os.killpg(g, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def track_workers(self, job):
        """Under torchrun: note the workers' process groups (in the lock too, for a rerun to see them)."""
        found = sorted({g for g in descendants(job["proc"].pid).values() if g and g not in job["pgids"]})
        if found:
            job["pgids"] += found
            if self.opts.node_rank == 0:
                update_lock(job["run"].dir, job["pgids"])
        if len(job["pgids"]) > job["run"].nproc:
            job["workers"] = False  # all found (an agent's workers are not restarted: --max-restarts 0)

    def on_signal(self, signum, frame):
        self.interrupted += 1
        if self.interrupted == 1:
            name = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM", signal.SIGHUP: "SIGHUP"}.get(signum, signum)
            note(f"\n== interrupted ({name}): stopping the running run(s) (again to kill them at once)")
        for job in getattr(self, "running", []):
            self.signal_job(job, signal.SIGTERM if self.interrupted == 1 else signal.SIGKILL)

    def watch(self, job):
        """One look at a running run: its exit, its time limit, its progress."""
        now = time.time()
        proc, timeout = job["proc"], float(self.a.timeout)
        if proc is not None and job["rc"] is None:
            if job["stream_pos"] is not None:
                self.stream(job)
            rc = proc.poll()
            if rc is None:
                if job["workers"]:
                    self.track_workers(job)
                if timeout > 0 and job["term_at"] is None and now - job["t0"] >= timeout:
                    job["term_at"] = now
                    self.signal_job(job, signal.SIGTERM)
                elif job["term_at"] is not None and job["kill_at"] is None and now - job["term_at"] >= KILL_AFTER_S:
                    job["kill_at"] = now
                    self.signal_job(job, signal.SIGKILL)
                self.progress(job, now)
                return
            if job["stream_pos"] is not None:
                self.stream(job)
            # as timeout(1) reported it: 124 when the time limit stopped it, 137 when it had to be killed
            if job["kill_at"] is not None:
                rc = 137
            elif job["term_at"] is not None:
                rc = 124
            elif rc < 0:
                rc = 128 - rc
            job["rc"] = rc
            if len(job["pgids"]) > 1:  # torchrun's workers go with their agent, whatever ended it
                self.signal_job(job, signal.SIGKILL)
        self.running.remove(job)
        self.end(job)

    def stream(self, job):
        try:
            with open(job["log"], "rb") as f:
                f.seek(job["stream_pos"])
                data = f.read()
        except OSError:
            return
        if data:
            job["stream_pos"] += len(data)
            note(data.decode("utf-8", errors="replace"), end="")

    def progress(self, job, now):
        r = job["run"]
        line = ""
        try:
            with open(job["log"], "rb") as f:
                f.seek(max(job["offset"], os.path.getsize(job["log"]) - 65536))
                for raw in f.read().splitlines():
                    if raw.startswith(STEP_PREFIX) and runinfo.STEP_LINE.match(raw.decode("utf-8", "replace")):
                        line = raw.decode("utf-8", "replace")
        except OSError:
            pass
        if not line and now - job["last_print"] < HEARTBEAT_S:
            return
        m = runinfo.STEP_LINE.match(line)
        step, total = (int(m.group(1)), int(m.group(2))) if m else (None, None)
        v = runinfo.VAL_LINE.match(line)
        val = v.group(3) if v else None
        el = int(now - job["t0"])
        if step is not None and job["step0"] is None:
            job["step0"], job["since0"] = step, el
        if (val is not None and line != job["last_val"]) or now - job["last_print"] >= HEARTBEAT_S:
            if val is not None:
                job["last_val"] = line
            eta = self.eta(job, el, step, total)
            what = (f"step {step}/{total} " if step is not None else "") + (f"val_loss {val} " if val else "")
            note(f"{job['label']}: {what or 'running, no step line yet '}| run {fmt_dur(el)} | stage "
                 f"{fmt_dur(now - self.t0)}" + (f" | ETA {fmt_dur(eta)}" if eta is not None else ""))
            job["last_print"] = now

    def estimate(self, r):
        same = [d for s, d in self.durations if s == r.stage_dir]
        pool = same or [d for _, d in self.durations]
        return int(sum(pool) / len(pool)) if pool else None

    def eta(self, job, el, step, total):
        """Seconds until the stage ends: this run's pace since its first step line, plus the runs after
        it (their stage's mean duration so far), shared among the runs that go at once."""
        r, step0, since0 = job["run"], job["step0"], job["since0"]
        cur = None
        if step is not None and total and step0 is not None and step > step0 and el > since0:
            cur = (el - since0) * (total - step) // (step - step0)
        else:
            est = self.estimate(r)
            if est is not None:
                cur = max(est - el, 0)
        if cur is None:
            return None
        rest = 0
        for x in self.todo[self.todo.index(r) + 1:]:
            est = self.estimate(x)
            rest += est if est is not None else el + cur
        return cur + rest // max(self.jobs, self.plan.slots)

    def move_aside(self, r):
        """The previous attempt goes to <logs>/.superseded/<stage>/<variant>/seed_S.<utc> (renamed: a
        trainer still writing into it keeps writing there, never into the new attempt); returns that
        path, or None."""
        dest = os.path.join(self.logs, ".superseded", r.stage_dir, r.variant, f"seed_{r.seed}.{runinfo.utc_stamp()}")
        while os.path.exists(dest):
            dest += "x"
        try:
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.move(r.dir, dest)
        except OSError:
            return None
        note(f"   previous attempt ({r.prev}) moved to {os.path.relpath(dest, self.logs)}")
        return dest

    def end(self, job):
        r, opts = job["run"], self.opts
        t1 = time.time()
        wall = t1 - job["t0"]
        el = int(wall)
        rc = job["rc"]
        append(job["log"], f"=== run_experiments.sh {iso_now()}: exit code {rc} after {el}s\n")
        cost = None
        if opts.node_rank == 0:
            # Under several nodes, global rank 0 may live on another node and finish a moment later.
            if opts.nnodes > 1 and rc == 0:
                for _ in range(60):
                    if os.path.exists(os.path.join(r.dir, "summary.json")):
                        break
                    time.sleep(0.5)
            try:
                desc = runinfo.finish(r.dir, log=job["log"], exit_code=rc, elapsed=wall, timeout=float(self.a.timeout),
                                      interrupted=bool(self.interrupted), script=r.script, variant=r.variant,
                                      seed=r.seed, repo=opts.scripts_dir)
                cost = runinfo.make_cost(self.plan.device, r.nproc * opts.nnodes, wall, job["sharing"])
                runinfo.add_cost(r.dir, cost)
            except OSError as e:
                problem = self.os_problem(e, os.path.join(r.dir, "summary.json"), "cannot write")
                note(f"{job['label']}: {problem}")
                desc = runinfo.describe(r.dir)
                if desc[0] in ("none", "corrupt"):  # nothing on disk says what happened: the table does
                    status = ("interrupted" if self.interrupted else "timeout" if job["term_at"] is not None
                              else "failed")
                    desc = (status, "", f"{wall:.1f}", f"exit code {rc}; {problem}")
            release(r.dir)
        else:
            desc = runinfo.describe(r.dir)
            if desc[0] == "none":
                desc = ("ok" if rc == 0 else "failed", "", str(el),
                        f"exit code {rc} on node {opts.node_rank} (node 0 writes summary.json)")
        status, vloss, wall_s, err = desc
        if status == "ok":
            note(f"{job['label']}: ok{' val_loss ' + vloss if vloss else ''} in {fmt_dur(el)}")
        else:
            note(f"{job['label']}: {status.upper()} after {fmt_dur(el)}: {err}")
            note(f"{job['label']}: log: {job['log']}")
        self.durations.append((r.stage_dir, el))
        self.rows[job["idx"]] = self.row(r, r.action, status, vloss, wall_s or str(el), err, cost)

    # ------------------------------------------------------------------ the demo's report
    def analyze(self):
        a = self.a
        note("")
        if not os.path.isfile(os.path.join(a.scripts_dir, "analyze.py")):
            note(f"== analyze.py is not here yet: no report written; the runs are in {self.logs}")
            return 1
        py = self.opts.python
        report = os.path.join(self.logs, "report.md")
        note(f"== analysis: (cd {a.scripts_dir} && {py} analyze.py --logs {self.logs} --out {report})")
        env = dict(self.child_env)
        if self.rate is not None:
            env["USD_PER_GPU_HOUR"] = f"{self.rate:g}"
        if subprocess.call([py, "analyze.py", "--logs", self.logs, "--out", report], cwd=a.scripts_dir, env=env) == 0:
            note(f"== the report: {report}")
            return 0
        note(f"== analyze.py failed (see above); the runs are in {self.logs}")
        return 1


def cores(env):
    """The processing units this process may use, as coreutils' nproc counts them (which honours
    OMP_NUM_THREADS and OMP_THREAD_LIMIT, as the bash runner's $(nproc) did)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    first = (env.get("OMP_NUM_THREADS") or "").split(",")[0].strip()
    if first.isdigit() and int(first) > 0:
        n = int(first)
    limit = (env.get("OMP_THREAD_LIMIT") or "").strip()
    if limit.isdigit() and int(limit) > 0:
        n = min(n, int(limit))
    return n


def _nonempty(path):
    try:
        return bool(os.listdir(path))
    except OSError:
        return False


def summary_ident(run_dir):
    """summary.json's identity (inode, mtime, size), or None: what the runner saw when it decided."""
    try:
        st = os.stat(os.path.join(run_dir, "summary.json"))
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _leftovers(run_dir):
    """Whether a run directory holds anything besides the runner's lock (and takeover markers)."""
    try:
        return any(n != LOCK_NAME and not n.startswith(TAKEOVER) for n in os.listdir(run_dir))
    except OSError:
        return False


def append(path, text):
    """Append a line to a run's log; False when it cannot (a full disk: the run's row says so)."""
    try:
        with open(path, "a") as f:
            f.write(text)
        return True
    except OSError:
        return False
