"""What the runs cost: device-hours per run, per condition and per stage, and dollars at a rate.

A run's cost comes from its summary.json "cost" record, which the runner adds after the trainer
ends (docs/RUN_FORMAT.md):

    "cost": {"device": "gpu"|"cpu", "devices": int, "wall_s": float, "device_seconds": float,
             "runs_sharing_node": int}

When a run has no such record (older runs, plain speedrun logs) its cost is estimated as the
trainer's wall_time_s metric times the devices its env names (GPUs on CUDA, else processes), and
the report says which runs were estimated. GPU runs are counted in GPU-hours and priced at the
dollar rate when one is known; CPU runs are counted in CPU-hours and never priced as GPU-hours.
"""
import math
import os
from dataclasses import dataclass, field

from .stats import Record

RATE_ENV = "USD_PER_GPU_HOUR"


@dataclass
class RunCost(Record):
    device: str              # "gpu" or "cpu"
    devices: int
    wall_s: float
    device_hours: float
    runs_sharing_node: int = None
    source: str = "summary.json cost"


def _pos_number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= 0


def run_cost(summary_cost, metrics, env):
    """RunCost from the runner's record, else estimated from wall_time_s x devices; None if neither."""
    c = summary_cost if isinstance(summary_cost, dict) else None
    if c and _pos_number(c.get("wall_s")) and c.get("device") in ("gpu", "cpu"):
        devices = c.get("devices") if _pos_number(c.get("devices")) else 1
        ds = c.get("device_seconds") if _pos_number(c.get("device_seconds")) else devices * c["wall_s"]
        share = c.get("runs_sharing_node") if _pos_number(c.get("runs_sharing_node")) else None
        return RunCost(c["device"], int(devices), float(c["wall_s"]), ds / 3600.0,
                       int(share) if share is not None else None)
    wall = (metrics or {}).get("wall_time_s")
    env = env if isinstance(env, dict) else {}
    if not _pos_number(wall):
        return None
    gpu = env.get("device") == "cuda" and _pos_number(env.get("gpus")) and env["gpus"] > 0
    devices = env["gpus"] if gpu else (env.get("processes") if _pos_number(env.get("processes")) and env["processes"] > 0 else 1)
    return RunCost("gpu" if gpu else "cpu", int(devices), float(wall), devices * wall / 3600.0, None,
                   "estimated: wall_time_s x devices (env)")


def rate_from(flag_value, experiments):
    """The dollar rate per GPU-hour: the flag, else $USD_PER_GPU_HOUR, else the one recorded in
    experiment.json (usd_per_gpu_hour). Returns (rate or None, where it came from, notes)."""
    notes = []
    if flag_value is not None:
        return flag_value, "--usd-per-gpu-hour", notes
    env = os.environ.get(RATE_ENV)
    if env not in (None, ""):
        try:
            v = float(env)
            if math.isfinite(v) and v >= 0:
                return v, f"environment variable {RATE_ENV}", notes
        except ValueError:
            pass
        notes.append(f"environment variable {RATE_ENV}={env!r} is not a non-negative number; ignored")
    recorded = sorted({float(e["usd_per_gpu_hour"]) for e in experiments
                       if isinstance(e, dict) and _pos_number(e.get("usd_per_gpu_hour"))})
    if len(recorded) == 1:
        return recorded[0], "experiment.json usd_per_gpu_hour", notes
    if len(recorded) > 1:
        notes.append(f"experiment.json files record different usd_per_gpu_hour rates ({', '.join(f'{r:g}' for r in recorded)}); "
                     "no dollars are shown (give --usd-per-gpu-hour)")
    return None, None, notes


@dataclass
class CostSummary(Record):
    """Device-hours of a set of runs (a condition or a stage), split by device kind."""
    runs: int = 0
    runs_with_cost: int = 0
    estimated: int = 0
    gpu_hours: float = 0.0
    cpu_hours: float = 0.0
    usd: float = None
    gpu_hours_per_run: float = None
    cpu_hours_per_run: float = None
    max_runs_sharing_node: int = None
    shared_runs: list = field(default_factory=list)


def summarise(costs, rate):
    """costs: [(run name, RunCost or None)]."""
    s = CostSummary(runs=len(costs))
    gpu_runs = cpu_runs = 0
    for name, c in costs:
        if c is None:
            continue
        s.runs_with_cost += 1
        s.estimated += c.source != "summary.json cost"
        if c.device == "gpu":
            s.gpu_hours += c.device_hours
            gpu_runs += 1
        else:
            s.cpu_hours += c.device_hours
            cpu_runs += 1
        if c.runs_sharing_node is not None:
            s.max_runs_sharing_node = max(s.max_runs_sharing_node or 1, c.runs_sharing_node)
            if c.runs_sharing_node > 1:
                s.shared_runs.append(name)
    s.gpu_hours_per_run = s.gpu_hours / gpu_runs if gpu_runs else None
    s.cpu_hours_per_run = s.cpu_hours / cpu_runs if cpu_runs else None
    if rate is not None and gpu_runs:
        s.usd = s.gpu_hours * rate
    return s
