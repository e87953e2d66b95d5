"""Running a stage: decide what each run needs (run, rerun, resume, skip, busy), claim it, launch it as
its own process group, follow its log, enforce --timeout, handle Ctrl-C, record its summary and cost,
and print the final table.

Files a run gets (node 0): <run dir>/.runner.lock while it runs (created with O_CREAT|O_EXCL: JSON
host, runner_pid, pgid of the trainer, started), stdout.log (the runner's === lines around the
trainer's output), summary.json (the trainer's, else one written by runinfo.finish; then "cost" added).
Other nodes write stdout.node<R>.log only. Never imports torch.
"""
import datetime
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

from . import runinfo
from .cli import (DEMO_EMBNORM_ITERS_DEFAULT, DEMO_TINY_ITERS_DEFAULT, build_options, die, node_from_env, note,
                  torch_available)
from .plan import UsageError, cmd_string, launch_argv, make_plan, place, shell_line
from .stages import PlanError, load_builtin

LOCK_NAME = ".runner.lock"
POLL_S = 0.5        # how often a running run's log is read (it starts faster)
HEARTBEAT_S = 60    # a progress line at least this often while a run prints no new val loss
KILL_AFTER_S = 30   # after --timeout's SIGTERM, SIGKILL this much later
STEP_PREFIX = b"step:"


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

def read_lock(run_dir):
    """(host, pid, pgid) of a lock file (JSON, or the older "host pid" line), or None."""
    try:
        with open(os.path.join(run_dir, LOCK_NAME)) as f:
            text = f.read()
    except OSError:
        return None
    try:
        d = json.loads(text)
        return d.get("host"), d.get("runner_pid"), d.get("pgid")
    except ValueError:
        parts = text.split()
        if len(parts) >= 2 and parts[1].isdigit():
            return parts[0], int(parts[1]), None
        return None


def alive(pid, group=False):
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.killpg(pid, 0) if group else os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def lock_holder(run_dir):
    """Who runs this directory, if anyone alive does (None: no lock or a stale one on this host)."""
    lock = read_lock(run_dir)
    if lock is None:
        return None
    host, pid, pgid = lock
    if host == socket.gethostname():
        if alive(pid) or alive(pgid, group=True):
            return f"being run by runner process {pid} on this host"
        return None
    return f"being run on {host} (if it is not, delete {os.path.join(run_dir, LOCK_NAME)})"


def claim(run_dir):
    """Create the lock atomically; False when another runner holds it."""
    try:
        fd = os.open(os.path.join(run_dir, LOCK_NAME), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump({"host": socket.gethostname(), "runner_pid": os.getpid(), "pgid": None, "started": iso_now()}, f)
    return True


def set_lock_pgid(run_dir, pgid):
    path = os.path.join(run_dir, LOCK_NAME)
    runinfo.atomic_write_json(path, {"host": socket.gethostname(), "runner_pid": os.getpid(), "pgid": pgid,
                                     "started": iso_now()})


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
        node = node_from_env(env)
        extra_specs = []
        if a.stage == "demo":
            extra_specs = self.demo_specs()
        try:
            self.plan = plan = make_plan(self.spec, opts, node, extra_specs)
        except UsageError as e:
            die(str(e))
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
        self.todo = [r for r in plan.runs if r.action not in ("skip", "busy")]
        place(self.todo, plan, opts)
        self.print_header()
        if a.dry:
            return self.print_dry_run()
        return self.execute()

    def demo_specs(self):
        """The demo: tiny (already self.spec) then the embnorm study at the demo's count."""
        a, env = self.a, self.env
        tiny_iters = int(env.get("DEMO_TINY_ITERS") or DEMO_TINY_ITERS_DEFAULT)
        emb_iters = int(env.get("DEMO_EMBNORM_ITERS") or DEMO_EMBNORM_ITERS_DEFAULT)
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
        if n != 300:
            note(f"note: the demo's embnorm study uses {n} iterations, written to embnorm_demo/ (the study's design "
                 "is 300: ./run_experiments.sh embnorm)")
            emb.dir_name = "embnorm_demo"
        return [emb]

    def decide(self, r):
        """What to do with a planned run, from what its directory holds."""
        a, opts = self.a, self.opts
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
            if plan.slots > 1 and r.action not in ("skip", "busy") and \
                    next(x for x in self.todo if x.wave == r.wave) is r:
                wave = [x for x in self.todo if x.wave == r.wave]
                nums = f"{self.todo.index(wave[0]) + 1}-{self.todo.index(wave[-1]) + 1}"
                when = "start together" if r.wave == 0 else "then, each as its slot's previous run ends"
                note(f"-- runs {nums} of {len(self.todo)}: {when}")
            if r.action == "skip":
                note(f"skip    {rel} (summary.json says {r.prev}; --force reruns it)")
            elif r.action == "busy":
                note(f"busy    {rel} ({r.prev})")
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
            commands = {str(x.seed): cmd_string(x, self.opts) for x in same if x.action not in ("skip", "busy")}
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

    def argv_words(self):
        return self.env.get("RUNNER_ARGV_WORDS", "").split("\x1f") if self.env.get("RUNNER_ARGV_WORDS") else sys.argv[1:]

    # ------------------------------------------------------------------ running
    def execute(self):
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
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self.on_signal)
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
        self.running = []
        pending = list(self.todo)
        self.k = 0
        poll = 0.05
        while pending or self.running:
            if self.interrupted:
                for r in pending:
                    self.rows[index[id(r)]] = self.row(r, "not run", "-", "", "", "interrupted before it started")
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
        bad = sum(r["status"] != "ok" for r in rows)
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
            if r.action == "rerun" and not self.move_aside(r):
                note(f"{label}: cannot move {r.dir} aside; not run")
                self.rows[idx] = self.row(r, "not run", "failed", "", "", "cannot move the old run aside")
                return
            if r.action == "resume" and os.path.exists(os.path.join(r.dir, "summary.json")):
                os.replace(os.path.join(r.dir, "summary.json"),
                           os.path.join(r.dir, f"summary.{r.prev}-{runinfo.utc_stamp()}.json"))
        try:
            os.makedirs(r.dir, exist_ok=True)
        except OSError:
            note(f"{label}: cannot create {r.dir}")
            self.rows[idx] = self.row(r, "not run", "failed", "", "", "cannot create the run directory")
            return
        if opts.node_rank == 0 and not claim(r.dir):
            holder = lock_holder(r.dir) or "claimed by another runner"
            note(f"busy {r.label}: {holder}")
            self.rows[idx] = self.row(r, "not run", "running", "", "", holder)
            return
        log = os.path.join(r.dir, "stdout.log" if opts.node_rank == 0 else f"stdout.node{opts.node_rank}.log")
        offset = os.path.getsize(log) if os.path.exists(log) else 0
        line = cmd_string(r, opts)
        with open(log, "a") as f:
            f.write(f"=== run_experiments.sh {iso_now()}: {r.action} {r.stage_dir}/{r.variant} seed {r.seed} "
                    f"(node {opts.node_rank})\n=== {line}\n")
        note(f"{label}: {r.action} (stage elapsed {fmt_dur(time.time() - self.t0)})")
        job = {"run": r, "idx": idx, "label": label, "log": log, "offset": offset, "t0": time.time(), "proc": None,
               "rc": None, "last_val": None, "last_print": time.time(), "step0": None, "since0": 0,
               "term_at": None, "kill_at": None, "sharing": 1, "stream_pos": None}
        if not os.path.isfile(os.path.join(opts.scripts_dir, r.script)):
            with open(log, "a") as f:
                f.write(f"FileNotFoundError: {r.script} is not in {opts.scripts_dir} "
                        "(the trainer script does not exist yet?)\n")
            job["rc"] = 127
        else:
            env = dict(self.child_env, CUDA_VISIBLE_DEVICES=r.cvd)
            try:
                with open(log, "ab") as out:
                    job["proc"] = subprocess.Popen(launch_argv(r, opts), cwd=opts.scripts_dir, stdout=out,
                                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                                   start_new_session=True)
            except OSError as e:
                with open(log, "a") as f:
                    f.write(f"OSError: cannot start {launch_argv(r, opts)[0]}: {e.strerror}\n")
                job["rc"] = 127
            if job["proc"] is not None and opts.node_rank == 0:
                set_lock_pgid(r.dir, job["proc"].pid)
            if job["proc"] is not None and self.interrupted:
                self.signal_job(job, signal.SIGTERM)  # Ctrl-C came while it was starting
            if self.a.verbose:
                job["stream_pos"] = offset
        self.running.append(job)
        for j in self.running:
            j["sharing"] = max(j["sharing"], len(self.running))

    def signal_job(self, job, sig):
        if job["proc"] is not None and job["proc"].poll() is None:
            try:
                os.killpg(job["proc"].pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def on_signal(self, signum, frame):
        self.interrupted += 1
        if self.interrupted == 1:
            print("\n== interrupted: stopping the running run(s) (again to kill them at once)", flush=True)
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
            sys.stdout.write(data.decode("utf-8", errors="replace"))
            sys.stdout.flush()

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
        """The previous attempt goes to <logs>/.superseded/<stage>/<variant>/seed_S.<utc>."""
        dest = os.path.join(self.logs, ".superseded", r.stage_dir, r.variant, f"seed_{r.seed}.{runinfo.utc_stamp()}")
        while os.path.exists(dest):
            dest += "x"
        try:
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.move(r.dir, dest)
        except OSError:
            return False
        note(f"   previous attempt ({r.prev}) moved to {os.path.relpath(dest, self.logs)}")
        return True

    def end(self, job):
        r, opts = job["run"], self.opts
        t1 = time.time()
        wall = t1 - job["t0"]
        el = int(wall)
        rc = job["rc"]
        with open(job["log"], "a") as f:
            f.write(f"=== run_experiments.sh {iso_now()}: exit code {rc} after {el}s\n")
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
            except OSError:
                note(f"{job['label']}: warning: could not record the run's summary.json")
                desc = runinfo.describe(r.dir)
            try:
                os.remove(os.path.join(r.dir, LOCK_NAME))
            except OSError:
                pass
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
