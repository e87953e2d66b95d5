"""Run-directory bookkeeping for run_experiments.sh: read and write summary.json and experiment.json.

This helper never imports torch and never starts a training process: the runner's rule is that no
process that imported torch launches the workers (a launcher that had initialised CUDA broke every GPU
worker of the seed study), and that CUDA_VISIBLE_DEVICES is fixed by the shell before any Python starts.
The file formats are docs/RUN_FORMAT.md.

    python runner/runinfo.py status RUN_DIR          # ok | diverged | ... | none | corrupt
    python runner/runinfo.py describe RUN_DIR        # status<TAB>val_loss<TAB>wall_s<TAB>error
    python runner/runinfo.py finish RUN_DIR --exit-code N --elapsed S [--timeout S] [--interrupted] ...
    python runner/runinfo.py experiment VARIANT_DIR --stage ... -- TRAINER_ARGS   # write/merge experiment.json
    python runner/runinfo.py table ROWS_TSV          # the end-of-stage table
"""
import argparse
import datetime
import json
import os
import re
import socket
import subprocess
import sys

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
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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


# ----------------------------------------------------------------------------- subcommands

def cmd_status(a):
    print(status_of(a.run_dir))


def describe(run_dir):
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


SEP = "\x1f"  # the runner reads these fields with bash's read, which would merge empty tab-separated ones


def cmd_describe(a):
    print(SEP.join(describe(a.run_dir)))


def cmd_finish(a):
    """After a run: make sure summary.json exists and says what happened; print describe()'s line."""
    run_dir = a.run_dir
    path = os.path.join(run_dir, "summary.json")
    lines = read_log_lines(a.log) if a.log else []
    if a.t0 and a.t1:  # precise wall time from the runner's clock readings around the run
        a.elapsed = float(a.t1.replace(",", ".")) - float(a.t0.replace(",", "."))
    timed_out = a.timeout > 0 and (a.exit_code in (124, 137) or a.elapsed >= a.timeout) and not a.interrupted
    s, state = load_summary(run_dir)
    if state == "corrupt":  # keep the unreadable file, write ours beside it
        os.replace(path, os.path.join(run_dir, f"summary.corrupt-{utc_stamp()}.json"))
        s = None
    if s is not None:
        if timed_out and s["status"] in ("interrupted", "failed"):
            # The trainer saw a SIGTERM; the runner knows it was the time limit. Keep what the trainer said.
            s["trainer_status"], s["trainer_error"] = s["status"], s.get("error")
            s["status"] = "timeout"
            s["error"] = f"timed out after {a.timeout:g} s (--timeout); the trainer said: {s.get('error')}"
            atomic_write_json(path, s)
        print(SEP.join(describe(run_dir)))
        return
    step, total, val = log_progress(lines)
    if timed_out:
        status, err = "timeout", f"timed out after {a.timeout:g} s (--timeout {a.timeout:g})"
    elif a.interrupted:
        status, err = "interrupted", "stopped by the runner (Ctrl-C or SIGTERM) before it wrote a summary"
    else:
        status = "failed"
        why = last_error_line(lines) or "no output"
        if a.exit_code == 0:
            err = f"exit code 0 but no summary.json was written; last line: {why}"
        else:
            err = f"exit code {a.exit_code}: {why}"
    commit, dirty = git_info(a.repo) if a.repo else (None, None)
    summary = {
        "schema": SCHEMA,
        "status": status,
        "error": err[:500],
        "script": a.script,
        "variant": a.variant,
        "seed": a.seed,
        "steps_completed": step if step is not None else 0,
        "metrics": {"wall_time_s": round(a.elapsed, 1)},
        "config": {},
        "env": {"hostname": socket.gethostname(), "git_commit": commit, "git_dirty": dirty},
        "exit_code": a.exit_code,
        "written_by": "run_experiments.sh (the trainer wrote no summary.json)",
        "last_val_loss_in_log": val,
        "total_steps_in_log": total,
    }
    os.makedirs(run_dir, exist_ok=True)
    atomic_write_json(path, summary)
    print(SEP.join(describe(run_dir)))


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


def cmd_experiment(a):
    """Write <stage>/<variant>/experiment.json; an existing one is kept inside the new one's history."""
    os.makedirs(a.variant_dir, exist_ok=True)
    path = os.path.join(a.variant_dir, "experiment.json")
    commit, dirty = git_info(a.repo)
    commands = {}
    for item in a.command:
        seed, _, cmd = item.partition("=")
        commands[seed] = cmd
    new = {
        "schema": SCHEMA,
        "stage": a.stage,
        "variant": a.variant,
        "script": a.script,
        "seeds": [int(s) for s in a.seeds.split()],
        "nproc_per_node": a.nproc,
        "nnodes": a.nnodes,
        "device": a.device,
        "jobs": a.jobs,  # runs side by side (CPU): their time metrics shared the machine
        "OMP_NUM_THREADS": a.omp_num_threads or None,
        "overrides": parse_overrides(a.overrides),
        "command": commands[min(commands, key=int)] if commands else None,
        "commands": commands,
        "CUDA_VISIBLE_DEVICES": a.cuda_visible_devices,
        "start_time": utc_iso(),
        "git_commit": commit,
        "git_dirty": dirty,
        "hostname": socket.gethostname(),
        "runner_argv": a.runner_argv,
        "history": [],
    }
    if os.path.exists(path):
        try:
            with open(path) as f:
                old = json.load(f)
            if not isinstance(old, dict):
                raise ValueError("not an object")
        except (OSError, ValueError):
            os.replace(path, os.path.join(a.variant_dir, f"experiment.corrupt-{utc_stamp()}.json"))
            old = None
        if old is not None:
            history = old.pop("history", []) or []
            new["history"] = [*history, old]
    atomic_write_json(path, new)


def cmd_table(a):
    rows = []
    with open(a.rows_tsv) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            rows.append((parts + [""] * 7)[:7])
    head = ("run", "seed", "this time", "status", "val_loss", "wall_s", "error")
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    widths[6] = len(head[6])
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r[:6], widths)) + "  " + r[6][:160]  # noqa: E731
    print(fmt(head))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(fmt(r))
    ok = sum(r[3] == "ok" for r in rows)
    print(f"{ok} of {len(rows)} runs ok" + ("" if ok == len(rows) else f", {len(rows) - ok} not ok"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("status")
    s.add_argument("run_dir")
    s.set_defaults(fn=cmd_status)
    s = sub.add_parser("describe")
    s.add_argument("run_dir")
    s.set_defaults(fn=cmd_describe)
    s = sub.add_parser("finish")
    s.add_argument("run_dir")
    s.add_argument("--log", default="")
    s.add_argument("--exit-code", type=int, required=True)
    s.add_argument("--elapsed", type=float, required=True)
    s.add_argument("--timeout", type=float, default=0)
    s.add_argument("--t0", default="")
    s.add_argument("--t1", default="")
    s.add_argument("--interrupted", action="store_true")
    s.add_argument("--script", default="")
    s.add_argument("--variant", default="")
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--repo", default="")
    s.set_defaults(fn=cmd_finish)
    s = sub.add_parser("experiment")
    s.add_argument("variant_dir")
    for k in ("stage", "variant", "script", "seeds", "device", "cuda-visible-devices", "repo", "runner-argv",
              "omp-num-threads"):
        s.add_argument(f"--{k}", default="")
    s.add_argument("--nproc", type=int, default=1)
    s.add_argument("--nnodes", type=int, default=1)
    s.add_argument("--jobs", type=int, default=1)
    s.add_argument("--command", action="append", default=[], help="SEED=COMMAND, once per seed")
    s.set_defaults(fn=cmd_experiment, overrides=[])
    s = sub.add_parser("table")
    s.add_argument("rows_tsv")
    s.set_defaults(fn=cmd_table)
    argv = list(sys.argv[1:] if argv is None else argv)
    trainer_args = []
    if "--" in argv:  # experiment: the trainer flags follow "--"; argparse must not read them
        cut = argv.index("--")
        argv, trainer_args = argv[:cut], argv[cut + 1:]
    a = p.parse_args(argv)
    if a.cmd == "experiment":
        a.overrides = trainer_args
    a.fn(a)


if __name__ == "__main__":
    main()
