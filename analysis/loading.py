"""Reading runs for analyze.py: run directories (docs/RUN_FORMAT.md) and plain speedrun log files.

Nothing here raises on bad input: every problem with a file becomes a note on the run or the
condition (named by path), and the run's status says whether it can be used.
"""
import json
import math
import os
import re
from dataclasses import dataclass, field

import numpy as np

# run status -> outcome class used by the success-rate and sweep tables
FINISHED = "finished"
OUTCOME = {"ok": FINISHED, "diverged": "diverged", "oom": "crashed", "failed": "crashed",
           "timeout": "crashed", "interrupted": "crashed", "unfinished": "unfinished",
           "unreadable": "unreadable"}

_SEED_DIR = re.compile(r"^seed_(-?\d+)$")
_LOG_LINE = re.compile(
    r"^step:(\d+)/(\d+) (val_loss|train_loss):(\S+) train_time:(\d+(?:\.\d*)?)ms step_avg:\S*?ms[ \t]*\r?$",
    re.M)
_MEM_LINE = re.compile(r"^peak memory consumption: (\d+(?:\.\d*)?) MiB[ \t]*\r?$", re.M)
_SEPARATOR = re.compile(r"^={20,}[ \t]*\r?$", re.M)
_SEED_IN_NAME = re.compile(r"seed[_-]?(\d+)", re.I)
_NOT_LOGS = {".json", ".jsonl", ".png", ".jpg", ".svg", ".pdf", ".md", ".csv", ".py", ".pt",
             ".bin", ".npy", ".npz", ".gz", ".zip", ".html", ".ipynb", ".sh", ".yaml", ".yml"}
_MAX_LOG_BYTES = 256 * 2 ** 20


@dataclass
class Curve:
    steps: np.ndarray
    values: np.ndarray
    times_ms: np.ndarray = None


@dataclass
class Run:
    stage: str
    condition: str
    name: str                  # seed_42, or the log file's name
    path: str
    source: str                # "rundir" or "log"
    seed: int = None
    status: str = "unreadable"  # ok | diverged | oom | failed | timeout | interrupted | unfinished | unreadable
    reason: str = None
    metrics: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    script: str = None
    steps_completed: int = None
    total_steps: int = None
    val: Curve = None
    train: Curve = None
    cost: dict = None          # the runner's summary.json "cost" record, as read
    notes: list = field(default_factory=list)

    @property
    def outcome(self):
        return OUTCOME.get(self.status, "crashed")

    @property
    def finished(self):
        return self.status == "ok"


@dataclass
class Condition:
    stage: str
    name: str
    path: str
    source: str
    experiment: dict = None
    runs: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    @property
    def finished_runs(self):
        return [r for r in self.runs if r.finished]


def _finite_numbers(d):
    """Numeric entries of a dict (bools excluded) split into finite and non-finite."""
    good, bad = {}, []
    for k, val in (d or {}).items():
        if isinstance(val, bool) or not isinstance(val, (int, float)):
            continue
        if math.isfinite(val):
            good[k] = float(val)
        else:
            bad.append(k)
    return good, bad


def _read_json(path, notes):
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        notes.append(f"{path}: unreadable JSON ({type(e).__name__}: {str(e)[:80]}); ignored")
        return None
    if not isinstance(obj, dict):
        notes.append(f"{path}: expected a JSON object, found {type(obj).__name__}; ignored")
        return None
    return obj


def _records(text, path, notes):
    """Parse metrics.jsonl text into a list of dicts, tolerating a truncated or corrupt line."""
    lines = [ln for ln in text.split("\n") if ln.strip()]
    if not lines:
        return []
    try:
        recs = json.loads("[" + ",".join(lines) + "]")
        if all(isinstance(r, dict) for r in recs):
            return recs
    except (json.JSONDecodeError, ValueError):
        pass
    recs, bad = [], []
    for i, ln in enumerate(lines):
        try:
            r = json.loads(ln)
        except (json.JSONDecodeError, ValueError):
            bad.append(i)
            continue
        if isinstance(r, dict):
            recs.append(r)
        else:
            bad.append(i)
    if bad == [len(lines) - 1] and len(lines) > 1 and not text.endswith("\n"):
        notes.append(f"{path}: truncated last line ignored (run killed while writing?)")
    elif bad:
        notes.append(f"{path}: {len(bad)} unreadable line(s) ignored (first: line {bad[0] + 1})")
    return recs


def _num_or_nan(x):
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return math.nan
    return float(x)


_FAST_TRAIN = re.compile(r'"step": (\d+), "train_loss": ([^,}\s]+)')
_FAST_VAL = re.compile(r'"step": (\d+), "val_loss": ([^,}\s]+), "train_time_ms": ([^,}\s]+)')


def _fast_curves(text):
    """The common layout (json.dumps of the records of docs/RUN_FORMAT.md, keys in that order, one
    object per line) read by two literal-prefixed regular expressions: several times faster than
    json for 5,000-line files. Returns None unless every line is accounted for and every value is a
    number, so anything unusual goes through the json path."""
    if not text.endswith("\n") or not text.startswith("{"):
        return None
    lines = text.count("\n")
    if text.count("\n{") + 1 != lines:
        return None
    train = _FAST_TRAIN.findall(text)
    val = _FAST_VAL.findall(text)
    if len(train) + len(val) != lines or text.count('"train_loss"') != len(train) or text.count('"val_loss"') != len(val):
        return None
    try:
        tr = np.array(train, dtype=float).reshape(-1, 2)
        va = np.array(val, dtype=float).reshape(-1, 3)
    except ValueError:
        return None
    return va, tr


def _rows_to_array(rows, width):
    try:
        arr = np.array(rows, dtype=float).reshape(-1, width)
    except (TypeError, ValueError):
        arr = np.array([[_num_or_nan(c) for c in row] for row in rows], dtype=float).reshape(-1, width)
    return arr


def _curve(arr, with_time):
    arr = arr[np.isfinite(arr[:, 0])]
    if not len(arr):
        return None
    if np.any(np.diff(arr[:, 0]) <= 0):
        # keep the last record for a step that was logged twice (e.g. a resumed run)
        _, last = np.unique(arr[::-1, 0], return_index=True)
        arr = arr[::-1][last]
    return Curve(arr[:, 0], arr[:, 1], arr[:, 2] if with_time else None)


def read_metrics_jsonl(path, notes):
    """Validation and training curves from metrics.jsonl (None where absent)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except FileNotFoundError:
        return None, None
    except OSError as e:
        notes.append(f"{path}: cannot be read ({e.strerror}); no curves for this run")
        return None, None
    fast = _fast_curves(text)
    if fast is not None:
        va, tr = fast
    else:
        recs = _records(text, path, notes)
        va = _rows_to_array([(r.get("step"), r.get("val_loss"), r.get("train_time_ms")) for r in recs
                             if "val_loss" in r], 3)
        tr = _rows_to_array([(r.get("step"), r.get("train_loss")) for r in recs if "train_loss" in r], 2)
    return (_curve(va, True) if len(va) else None), (_curve(tr, False) if len(tr) else None)


def _last_error_line(path):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 8192))
            tail = f.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    lines = [ln.strip() for ln in tail.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if re.search(r"error|exception|killed|traceback", ln, re.I):
            return ln[:200]
    return None


def read_run_dir(path, stage, condition):
    name = os.path.basename(path)
    m = _SEED_DIR.match(name)
    run = Run(stage, condition, name, path, "rundir", seed=int(m.group(1)) if m else None)
    summary = _read_json(os.path.join(path, "summary.json"), run.notes)
    run.val, run.train = read_metrics_jsonl(os.path.join(path, "metrics.jsonl"), run.notes)
    summary_exists = os.path.exists(os.path.join(path, "summary.json"))
    if summary is None:
        if summary_exists:
            run.status, run.reason = "unreadable", "summary.json unreadable"
        elif run.val is not None or run.train is not None:
            last = max(c.steps[-1] for c in (run.val, run.train) if c is not None)
            run.steps_completed = int(last)
            run.status = "unfinished"
            err = _last_error_line(os.path.join(path, "stdout.log"))
            run.reason = (f"no summary.json (still running, or killed) after step {int(last)}"
                          + (f"; stdout.log: {err}" if err else ""))
        else:
            run.status, run.reason = "unfinished", "no summary.json and no metrics.jsonl"
        return run
    status = summary.get("status")
    run.status = status if status in OUTCOME and status not in ("unfinished", "unreadable") else "failed"
    if status not in OUTCOME:
        run.notes.append(f"{path}/summary.json: unknown status {status!r}, counted as failed")
    err = summary.get("error")
    run.reason = str(err)[:200] if err else (None if run.status == "ok" else f"status {status}")
    if isinstance(summary.get("seed"), int) and not isinstance(summary.get("seed"), bool):
        run.seed = summary["seed"]
    run.script = summary.get("script") if isinstance(summary.get("script"), str) else None
    run.steps_completed = summary.get("steps_completed") if isinstance(summary.get("steps_completed"), int) else None
    run.config = summary.get("config") if isinstance(summary.get("config"), dict) else {}
    run.env = summary.get("env") if isinstance(summary.get("env"), dict) else {}
    run.cost = summary.get("cost") if isinstance(summary.get("cost"), dict) else None
    metrics = summary.get("metrics")
    if not isinstance(metrics, dict):
        metrics = {}
        if run.status == "ok":
            run.notes.append(f"{path}/summary.json: no 'metrics' object")
    run.metrics, bad = _finite_numbers(metrics)
    if bad and run.status == "ok":
        run.notes.append(f"{path}/summary.json: non-finite {', '.join(sorted(bad))} left out")
    if summary.get("schema") not in (None, 1):
        run.notes.append(f"{path}/summary.json: schema {summary.get('schema')!r} (this analysis knows 1)")
    return run


def parse_speedrun_log(text):
    """Parse the speedrun's log lines. Returns dict(val=[(step, loss, ms)], train=[(step, loss, ms)],
    total, last_step, peak_mib). Code printed above the log (before a line of '=') is skipped."""
    seps = [m.end() for m in _SEPARATOR.finditer(text)]
    body = text
    if seps:
        after = text[seps[0]:]
        if _LOG_LINE.search(after):
            body = after
    val, train, total, last = [], [], None, None
    for m in _LOG_LINE.finditer(body):
        step, n, kind, loss, ms = int(m.group(1)), int(m.group(2)), m.group(3), m.group(4), float(m.group(5))
        try:
            loss = float(loss)
        except ValueError:
            loss = math.nan
        (val if kind == "val_loss" else train).append((step, loss, ms))
        total, last = n, step
    mem = _MEM_LINE.findall(body)
    return dict(val=val, train=train, total=total, last_step=last,
                peak_mib=float(mem[-1]) if mem else None)


def read_log_file(path, stage, condition):
    name = os.path.basename(path)
    m = _SEED_IN_NAME.search(name)
    run = Run(stage, condition, name, path, "log", seed=int(m.group(1)) if m else None)
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            parsed = parse_speedrun_log(f.read())
    except OSError as e:
        run.reason = f"cannot be read ({e.strerror})"
        return run
    if not parsed["val"] and not parsed["train"]:
        run.reason = "no speedrun log lines"
        return run
    run.total_steps, run.steps_completed = parsed["total"], parsed["last_step"]
    if parsed["val"]:
        v = np.array(parsed["val"], float)
        run.val = Curve(v[:, 0], v[:, 1], v[:, 2])
    if parsed["train"]:
        t = np.array(parsed["train"], float)
        run.train = Curve(t[:, 0], t[:, 1])
    if parsed["last_step"] < parsed["total"]:
        run.status = "unfinished"
        run.reason = f"log ends at step {parsed['last_step']}/{parsed['total']}"
        return run
    if not parsed["val"]:
        run.status, run.reason = "unreadable", "no val_loss line"
        return run
    step, loss, ms = parsed["val"][-1]
    if not math.isfinite(loss):
        run.status, run.reason = "diverged", f"non-finite val_loss at step {step}"
        return run
    run.status = "ok"
    run.metrics = {"val_loss": loss, "train_time_s": ms / 1000.0}
    if parsed["train"] and math.isfinite(parsed["train"][-1][1]):
        run.metrics["train_loss"] = parsed["train"][-1][1]
    if parsed["peak_mib"] is not None:
        run.metrics["peak_memory_mib"] = parsed["peak_mib"]
    return run


def _looks_like_log(path):
    if os.path.splitext(path)[1].lower() in _NOT_LOGS:
        return False
    try:
        if os.path.getsize(path) > _MAX_LOG_BYTES:
            return False
        with open(path, encoding="utf-8", errors="replace") as f:
            return _LOG_LINE.search(f.read()) is not None
    except OSError:
        return False


def _stage_of(root, cond_dir):
    parent = os.path.relpath(os.path.dirname(cond_dir), root)
    if parent in (".", ""):
        return os.path.basename(os.path.abspath(root))
    return parent.replace(os.sep, "/")


_PARALLEL_FROM = 64   # runs; below this a process pool costs more than it saves


def _read_task(task):
    kind, path, stage, name = task
    return (read_run_dir if kind == "rundir" else read_log_file)(path, stage, name)


def _read_all(tasks, workers):
    """Read every run; with many runs, in a pool of processes (parsing is CPU-bound)."""
    if workers is None:
        workers = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 8)
    if workers > 1 and len(tasks) >= _PARALLEL_FROM:
        import concurrent.futures as cf
        import multiprocessing as mp
        try:
            ctx = mp.get_context("fork")
            with cf.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                return list(pool.map(_read_task, tasks, chunksize=max(1, len(tasks) // (8 * workers))))
        except (OSError, ValueError, cf.process.BrokenProcessPool):
            pass  # no fork here (or no resources): read them in this process
    return [_read_task(t) for t in tasks]



def _first_sight(path, what, seen, notes):
    """False (with a note) when `path` is a symlink to a run already counted; runs are counted by real path."""
    rp = os.path.realpath(path)
    if rp in seen:
        notes.append(f"{path}: the same {what} as {seen[rp]} (a symlink); counted once")
        return False
    seen[rp] = path
    return True

def load(root, workers=None):
    """Every condition under root, sorted by (stage, name). Returns (conditions, notes)."""
    conditions, notes, tasks = [], [], []
    root = os.path.normpath(root)
    seen_dirs, seen_runs = set(), {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:
            # a symlink to a folder read already (or a loop): its runs are counted once
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        hidden = sorted(d for d in dirnames if d.startswith("."))
        for d in hidden:
            # e.g. .superseded/: earlier attempts the runner moved aside; never results
            n = sum(1 for _, _, files in os.walk(os.path.join(dirpath, d)) if "summary.json" in files or "metrics.jsonl" in files)
            notes.append(f"{os.path.join(dirpath, d)}: hidden folder skipped ({n} run director{'y' if n == 1 else 'ies'} inside, "
                         "e.g. attempts the runner moved aside)")
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        filenames.sort()
        seed_dirs = [d for d in dirnames if _SEED_DIR.match(d)]
        if seed_dirs or "experiment.json" in filenames:
            stage = _stage_of(root, dirpath) if dirpath != root else os.path.basename(os.path.abspath(root))
            name = os.path.basename(os.path.abspath(dirpath))
            cond = Condition(stage, name, dirpath, "rundir")
            cond.experiment = _read_json(os.path.join(dirpath, "experiment.json"), cond.notes)
            if cond.experiment is None and "experiment.json" not in filenames:
                cond.notes.append(f"{dirpath}: no experiment.json (runner record missing)")
            for d in sorted(seed_dirs, key=lambda s: int(_SEED_DIR.match(s).group(1))):
                run_path = os.path.join(dirpath, d)
                if _first_sight(run_path, "run directory", seen_runs, cond.notes):
                    tasks.append((cond, ("rundir", run_path, stage, name)))
            if not seed_dirs:
                cond.notes.append(f"{dirpath}: experiment.json but no seed_<S> run directories yet")
            conditions.append(cond)
            dirnames[:] = [d for d in dirnames if not _SEED_DIR.match(d)]
            continue
        logs = [f for f in filenames if _looks_like_log(os.path.join(dirpath, f))]
        if logs:
            stage = _stage_of(root, dirpath) if dirpath != root else ""
            name = os.path.basename(os.path.abspath(dirpath))
            cond = Condition(stage or name, name, dirpath, "log")
            for f in logs:
                log_path = os.path.join(dirpath, f)
                if _first_sight(log_path, "log file", seen_runs, cond.notes):
                    tasks.append((cond, ("log", log_path, cond.stage, name)))
            conditions.append(cond)
    for (cond, _), run in zip(tasks, _read_all([t for _, t in tasks], workers)):
        cond.runs.append(run)
    conditions.sort(key=lambda c: (c.stage, c.name))
    return conditions, notes
