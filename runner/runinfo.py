"""Run-directory bookkeeping: read and write summary.json (with the runner's cost) and experiment.json.

Never imports torch and never starts a training process. The file formats are docs/RUN_FORMAT.md;
the "cost" entry the runner adds to every summary is docs/runner.md's cost contract.
"""
import datetime
import json
import os
import re
import socket
import subprocess

SCHEMA = 1
STATUSES = ("ok", "diverged", "oom", "failed", "timeout", "interrupted")
VAL_LINE = re.compile(r"^step:(\d+)/(\d+) val_loss:([-+0-9.eEnaif]+)")
STEP_LINE = re.compile(r"^step:(\d+)/(\d+) ")
# An exception line as Python prints it: "ValueError: ..." or "torch.OutOfMemoryError: ...".
EXC_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Za-z_]\w*(?:Error|Exception|Interrupt|Exit)\b(?::.*)?$")
# torchrun's own wrapper exception and its report; never the informative line.
LAUNCHER_NOISE = re.compile(r"ChildFailedError|torch\.distributed\.elastic|SignalException|^\s*(?:\[|\||=|-{3,})")


def utc_stamp():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def utc_iso():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def atomic_write_json(path, obj):
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk (or a signal) leaves no temp file behind
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


def load_summary(run_dir):
    """(summary dict or None, state) where state is 'none', 'corrupt' or 'ok'."""
    path = os.path.join(run_dir, "summary.json")
    if not os.path.exists(path):
        return None, "none"
    try:
        with open(path) as f:
            s = json.load(f)
    except (OSError, ValueError):
        return None, "corrupt"
    if not isinstance(s, dict) or s.get("status") not in STATUSES:
        return None, "corrupt"
    return s, "ok"


def status_of(run_dir):
    s, state = load_summary(run_dir)
    return s["status"] if s is not None else state


def read_log_lines(path, max_bytes=4_000_000):
    """The last max_bytes of a log as text lines (a long run's log is only read at its end)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return []
    return data.decode("utf-8", errors="replace").splitlines()


def log_progress(lines):
    """(steps_completed, total_steps, last val_loss) from the speedrun log lines, None where unknown."""
    step = total = val = None
    for line in lines:
        m = STEP_LINE.match(line)
        if m:
            step, total = int(m.group(1)), int(m.group(2))
            v = VAL_LINE.match(line)
            if v:
                try:
                    val = float(v.group(3))
                except ValueError:
                    pass
    return step, total, val


def last_error_line(lines):
    """The line that best says why a run failed: the last exception raised by the trainer, else an
    argparse-style 'error:' line, else the last non-empty line that is not launcher noise."""
    clean = [ln.strip() for ln in lines if ln.strip()]
    for ln in reversed(clean):
        if EXC_LINE.match(ln) and not LAUNCHER_NOISE.search(ln):
            return ln
    for ln in reversed(clean):
        if re.search(r"\berror:", ln, re.IGNORECASE) and not LAUNCHER_NOISE.search(ln):
            return ln
    for ln in reversed(clean):
        if not LAUNCHER_NOISE.search(ln) and not ln.startswith("==="):
            return ln
    return ""


def git_info(repo):
    def git(*args):
        try:
            r = subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    porcelain = git("status", "--porcelain")
    return commit, (None if porcelain is None else bool(porcelain))


# ----------------------------------------------------------------------------- what a run left

def describe(run_dir):
    """(status, val_loss text, wall_s text, one-line error) of a run directory's summary."""
    s, state = load_summary(run_dir)
    if s is None:
        return state, "", "", ""
    m = s.get("metrics") if isinstance(s.get("metrics"), dict) else {}
    # only a finished run has a result; a diverged or failed run's last finite val loss would read as one
    val = m.get("val_loss") if s["status"] == "ok" else None
    wall = m.get("wall_time_s")
    err = s.get("error") or ""
    return (s["status"], f"{val:.4f}" if isinstance(val, (int, float)) else "",
            f"{wall:.1f}" if isinstance(wall, (int, float)) else "", " ".join(str(err).split()))


def cost_of(run_dir):
    """The summary's "cost" entry, or None."""
    s, _ = load_summary(run_dir)
    c = s.get("cost") if s is not None else None
    return c if isinstance(c, dict) and isinstance(c.get("device_seconds"), (int, float)) else None


def finish(run_dir, *, log="", exit_code, elapsed, timeout=0.0, interrupted=False, script="", variant="",
           seed=None, repo=""):
    """After a run: make sure summary.json exists and says what happened; returns describe()."""
    path = os.path.join(run_dir, "summary.json")
    lines = read_log_lines(log) if log else []
    timed_out = timeout > 0 and (exit_code in (124, 137) or elapsed >= timeout) and not interrupted
    s, state = load_summary(run_dir)
    if state == "corrupt":  # keep the unreadable file, write ours beside it
        os.replace(path, os.path.join(run_dir, f"summary.corrupt-{utc_stamp()}.json"))
        s = None
    if s is not None:
        if timed_out and s["status"] in ("interrupted", "failed"):
            # The trainer saw a SIGTERM; the runner knows it was the time limit. Keep what the trainer said.
            s["trainer_status"], s["trainer_error"] = s["status"], s.get("error")
            s["status"] = "timeout"
            s["error"] = f"timed out after {timeout:g} s (--timeout); the trainer said: {s.get('error')}"
            atomic_write_json(path, s)
        return describe(run_dir)
    step, total, val = log_progress(lines)
    if timed_out:
        status, err = "timeout", f"timed out after {timeout:g} s (--timeout {timeout:g})"
    elif interrupted:
        status, err = "interrupted", "stopped by the runner (Ctrl-C or SIGTERM) before it wrote a summary"
    else:
        status = "failed"
        why = last_error_line(lines) or "no output"
        if exit_code == 0:
            err = f"exit code 0 but no summary.json was written; last line: {why}"
        else:
            err = f"exit code {exit_code}: {why}"
    commit, dirty = git_info(repo) if repo else (None, None)
    summary = {
        "schema": SCHEMA,
        "status": status,
        "error": err[:500],
        "script": script,
        "variant": variant,
        "seed": seed,
        "steps_completed": step if step is not None else 0,
        "metrics": {"wall_time_s": round(elapsed, 1)},
        "config": {},
        "env": {"hostname": socket.gethostname(), "git_commit": commit, "git_dirty": dirty},
        "exit_code": exit_code,
        "written_by": "run_experiments.sh (the trainer wrote no summary.json)",
        "last_val_loss_in_log": val,
        "total_steps_in_log": total,
    }
    os.makedirs(run_dir, exist_ok=True)
    atomic_write_json(path, summary)
    return describe(run_dir)


def make_cost(device, devices, wall_s, runs_sharing_node):
    """The cost contract: device "gpu"|"cpu", devices (GPUs over all nodes, or CPU processes), the
    runner-measured wall time, device_seconds = devices x wall_s, and how many runs shared the node."""
    wall_s = round(float(wall_s), 3)
    return {"device": "gpu" if device == "cuda" else "cpu", "devices": int(devices), "wall_s": wall_s,
            "device_seconds": round(devices * wall_s, 3), "runs_sharing_node": int(runs_sharing_node)}


def add_cost(run_dir, cost):
    """Add "cost" to the run's summary.json atomically, keeping every other field; False if no summary."""
    path = os.path.join(run_dir, "summary.json")
    s, state = load_summary(run_dir)
    if s is None:
        return False
    s["cost"] = cost
    atomic_write_json(path, s)
    return True


def parse_overrides(args):
    """['--a', '1', '--flag', '--b', 'x'] -> {'a': '1', 'flag': True, 'b': 'x'}"""
    out, i = {}, 0
    while i < len(args):
        tok = args[i]
        if tok.startswith("--"):
            key = tok[2:]
            if "=" in key:
                key, val = key.split("=", 1)
                out[key] = val
                i += 1
            elif i + 1 < len(args) and not args[i + 1].startswith("--"):
                out[key] = args[i + 1]
                i += 2
            else:
                out[key] = True
                i += 1
        else:
            out.setdefault("_positional", []).append(tok)
            i += 1
    return out


def write_experiment(variant_dir, *, stage, variant, script, seeds, nproc, nnodes, device, cuda_visible_devices,
                     repo, jobs, omp_num_threads, runner_argv, commands, overrides, usd_per_gpu_hour=None,
                     runs_at_once=1, extra=None):
    """Write <stage>/<variant>/experiment.json; an existing one is kept inside the new one's history."""
    os.makedirs(variant_dir, exist_ok=True)
    path = os.path.join(variant_dir, "experiment.json")
    commit, dirty = git_info(repo)
    new = {
        "schema": SCHEMA,
        "stage": stage,
        "variant": variant,
        "script": script,
        "seeds": [int(s) for s in seeds],
        "nproc_per_node": nproc,
        "nnodes": nnodes,
        "device": device,
        "jobs": jobs,  # runs side by side (CPU): their time metrics shared the machine
        "runs_at_once": runs_at_once,  # runs packed on the node at once (GPU slots or CPU jobs)
        "OMP_NUM_THREADS": omp_num_threads or None,
        "overrides": parse_overrides(overrides),
        "command": commands[min(commands, key=int)] if commands else None,
        "commands": commands,
        "CUDA_VISIBLE_DEVICES": cuda_visible_devices,
        "usd_per_gpu_hour": usd_per_gpu_hour,
        "start_time": utc_iso(),
        "git_commit": commit,
        "git_dirty": dirty,
        "hostname": socket.gethostname(),
        "runner_argv": runner_argv,
        **(extra or {}),
        "history": [],
    }
    if os.path.exists(path):
        try:
            with open(path) as f:
                old = json.load(f)
            if not isinstance(old, dict):
                raise ValueError("not an object")
        except (OSError, ValueError):
            os.replace(path, os.path.join(variant_dir, f"experiment.corrupt-{utc_stamp()}.json"))
            old = None
        if old is not None:
            history = old.pop("history", []) or []
            new["history"] = [*history, old]
    atomic_write_json(path, new)


# ----------------------------------------------------------------------------- the end-of-stage table

def fmt_hours(device_seconds):
    return f"{device_seconds / 3600:.4f}"


def table(rows, usd_per_gpu_hour=None):
    """The end-of-stage table as lines. rows: dicts with run, seed, this_time, status, val_loss, wall_s,
    error and cost (a cost entry or None)."""
    units = {r["cost"]["device"] for r in rows if r.get("cost")}
    hcol = "GPU-h" if units == {"gpu"} else "CPU-h" if units == {"cpu"} else "hours"
    cells = []
    for r in rows:
        c = r.get("cost")
        h = ""
        if c:
            h = fmt_hours(c["device_seconds"]) + ("" if len(units) == 1 else " " + c["device"].upper())
        cells.append([r["run"], str(r["seed"]), r["this_time"], r["status"], r["val_loss"], r["wall_s"], h])
    head = ["run", "seed", "this time", "status", "val_loss", "wall_s", hcol]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(head)]
    fmt = lambda c, err: "  ".join(x.ljust(w) for x, w in zip(c, widths)) + "  " + err[:160]  # noqa: E731
    out = [fmt(head, "error"), "  ".join("-" * w for w in widths) + "  " + "-" * 5]
    out += [fmt(c, r["error"]) for c, r in zip(cells, rows)]
    ok = sum(r["status"] == "ok" for r in rows)
    out.append(f"{ok} of {len(rows)} runs ok" + ("" if ok == len(rows) else f", {len(rows) - ok} not ok"))
    out += cost_lines(rows, usd_per_gpu_hour)
    return out


def cost_lines(rows, usd_per_gpu_hour=None):
    """The stage's total device-hours (GPU and CPU apart), this invocation's share, dollars for GPU-hours."""
    out = []
    for dev, unit in (("gpu", "GPU-hours"), ("cpu", "CPU-hours")):
        costs = [(r, r["cost"]) for r in rows if r.get("cost") and r["cost"]["device"] == dev]
        if not costs:
            continue
        total = sum(c["device_seconds"] for _, c in costs) / 3600
        now = sum(c["device_seconds"] for r, c in costs if r["this_time"] != "skipped") / 3600
        line = f"cost: {total:.4f} {unit} over {len(costs)} run(s) (this invocation: {now:.4f})"
        if dev == "gpu":
            if usd_per_gpu_hour is not None:
                line += f"; ${total * usd_per_gpu_hour:,.2f} at ${usd_per_gpu_hour:g} per GPU-hour (this invocation: " \
                        f"${now * usd_per_gpu_hour:,.2f})"
            else:
                line += "; no dollar figure: --usd-per-gpu-hour X (or USD_PER_GPU_HOUR) gives one"
        out.append(line)
    return out
