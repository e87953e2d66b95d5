"""./run_experiments.sh preflight STAGE: will this stage run here, and what will it cost?

Checks, each a row of the go/no-go table (exit 0 when nothing is no-go, 1 otherwise):
  gpus        the GPUs the stage needs (and how many runs go at once) against what nvidia-smi shows
  all_reduce  torchrun across every GPU (NCCL), or 2 CPU processes (gloo): runner/probes/allreduce.py
  data        the stage's shards: present, headers valid (magic, version, size), enough tokens for every
              step without repeating; else the command that gets them
  disk        free space where --logs goes against what the runs write (logs, checkpoints)
  model       the stage's first run for a few steps (its own flags, device and compile setting) into a
              temporary directory; its measured step time projects the stage's wall time and cost
Without GPUs, a GPU stage is reported no-go, and what applies still runs: gloo, the data checks, and
the tiny preset's model on CPU (the projection is then skipped). `--only data,disk` runs a subset.
The runner never imports torch: the two torch checks are subprocesses.
"""
import ast
import glob
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

from .cli import build_options, check_common, die, load_stage, node_from_env, note
from .launch import cores, fmt_dur
from .plan import UsageError, launch_argv, make_plan, merge_flags, place

CHECKS = ("gpus", "all_reduce", "data", "disk", "model")
HEADER_BYTES, MAGIC, VERSION = 1024, 20240520, 1
PROBE_STEPS = 12          # the trainers time steps after the 10th: 2 timed steps
PROBE_TIMEOUT_S = 90      # per torch check; environment RUNNER_PREFLIGHT_TIMEOUT_S changes it (a busy machine)
PROBES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "probes")
FINEWEB_SHARD_TOKENS = 100_000_000


# ----------------------------------------------------------------------------- the trainers' settings, without torch

_OPS = {ast.Add: lambda x, y: x + y, ast.Sub: lambda x, y: x - y, ast.Mult: lambda x, y: x * y,
        ast.FloorDiv: lambda x, y: x // y, ast.Div: lambda x, y: x / y, ast.Pow: lambda x, y: x ** y}


def constant(node):
    """A literal, or arithmetic on literals (e.g. `8 * 64`); ValueError for anything else."""
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](constant(node.left), constant(node.right))
    return ast.literal_eval(node)


def trainer_defaults(path):
    """(defaults, presets) of a train_gpt script, read from its source (the Hyperparameters fields'
    first flag() argument or field(default=...), and the PRESETS dict) without running it."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    defaults, presets = {}, {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "Hyperparameters":
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) and \
                        isinstance(item.value, ast.Call):
                    call = item.value
                    val = call.args[0] if call.args else next(
                        (k.value for k in call.keywords if k.arg == "default"), None)
                    try:
                        defaults[item.target.id] = constant(val) if val is not None else None
                    except (ValueError, TypeError, ZeroDivisionError):
                        pass
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "PRESETS" for t in node.targets) \
                and isinstance(node.value, ast.Dict):
            for k, v in zip(node.value.keys, node.value.values):
                if isinstance(v, ast.Call):
                    presets[ast.literal_eval(k)] = {kw.arg: constant(kw.value) for kw in v.keywords}
    return defaults, presets


def words_to_flags(words):
    out, i = {}, 0
    while i < len(words):
        w = words[i]
        if w.startswith("--") and "=" in w:
            k, _, v = w[2:].partition("=")
            out[k] = v
            i += 1
        elif w.startswith("--") and i + 1 < len(words) and not words[i + 1].startswith("--"):
            out[w[2:]] = words[i + 1]
            i += 2
        else:
            out[w.lstrip("-")] = True
            i += 1
    return out


def resolved_config(scripts_dir, run):
    """The settings a train_gpt run will use: defaults, then its preset, then its flags."""
    defaults, presets = trainer_defaults(os.path.join(scripts_dir, run.script))
    given = words_to_flags(run.args)
    cfg = dict(defaults)
    cfg.update(presets.get(given.get("preset") or defaults.get("preset") or "", {}))
    for k, v in given.items():
        if k in cfg and isinstance(cfg[k], int) and not isinstance(cfg[k], bool):
            try:
                v = int(v)
            except (TypeError, ValueError):
                pass
        cfg[k] = v
    return cfg


# ----------------------------------------------------------------------------- data

def shard_tokens(path):
    """Tokens in a shard after checking its header (the trainers' loader rule), or raise ValueError."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(HEADER_BYTES)
    except OSError as e:
        raise ValueError(f"cannot read it ({e.strerror})")
    if len(head) < HEADER_BYTES:
        raise ValueError("shorter than its 1024-byte header")
    magic, version, ntok = (int.from_bytes(head[i:i + 4], "little", signed=True) for i in (0, 4, 8))
    if magic != MAGIC:
        raise ValueError(f"magic {magic}, expected {MAGIC}: not a token shard")
    if version != VERSION:
        raise ValueError(f"version {version}, expected {VERSION}")
    if ntok <= 0 or size != HEADER_BYTES + 2 * ntok:
        raise ValueError(f"{size} bytes but its header promises {ntok} tokens ({HEADER_BYTES + 2 * ntok} bytes): "
                         "truncated or corrupt")
    return ntok


def how_to_get(pattern, shards=None):
    if "shakespeare" in pattern:
        return "run `python data/prepare_shakespeare.py`"
    if "fineweb" in pattern:
        return f"run `python data/cached_fineweb10B.py {shards or 1}`"
    return "check the --input_bin/--input_val_bin flags"


def data_needs(plan, opts):
    """[(what, train glob, val glob or None, steps, tokens per step or None)] for the distinct data of the stage."""
    needs, seen, missing = [], set(), []
    for r in plan.runs:
        if not os.path.isfile(os.path.join(opts.scripts_dir, r.script)):
            if r.script not in missing:
                missing.append(r.script)
            continue
        if r.script.startswith("train_gpt"):
            cfg = resolved_config(opts.scripts_dir, r)
            train, val = (p if os.path.isabs(p) else os.path.join(opts.scripts_dir, p)
                          for p in (cfg["input_bin"], cfg["input_val_bin"]))
            steps, tokens = int(cfg["num_iterations"]), int(cfg["batch_size"]) * int(cfg["sequence_length"])
        else:  # train_mini_embnorm.py: one Shakespeare shard each, random windows (no repeat limit)
            d = words_to_flags(r.args).get("data_dir") or os.path.join("data", "shakespeare_char")
            d = d if os.path.isabs(d) else os.path.join(opts.scripts_dir, d)
            train, val = os.path.join(d, "shakespeare_train_000000.bin"), os.path.join(d, "shakespeare_val_000000.bin")
            steps, tokens = None, None
        key = (train, val, steps, tokens)
        if key not in seen:
            seen.add(key)
            needs.append((r.script, train, val, steps, tokens))
    return needs, missing


def check_data(plan, opts):
    """(ok, lines): one line per problem, each naming the file and what to do."""
    needs, missing = data_needs(plan, opts)
    problems = [f"{opts.scripts_dir}/{m}: the trainer script is not there (--scripts-dir?)" for m in missing]
    facts = []
    for script, train, val, steps, tokens in needs:
        batches = 0
        shards_needed = None
        if tokens:
            per = max(1, (FINEWEB_SHARD_TOKENS - 1) // tokens)
            shards_needed = -(-steps // per)
        for kind, pattern in (("train", train), ("val", val)):
            files = sorted(glob.glob(pattern))
            if not files:
                problems.append(f"no {kind} shards match {pattern}; {how_to_get(pattern, shards_needed)}")
                continue
            total = 0
            for f in files:
                try:
                    n = shard_tokens(f)
                except ValueError as e:
                    problems.append(f"{f}: {e}; {how_to_get(pattern, shards_needed)}")
                    continue
                total += n
                if kind == "train" and tokens:
                    batches += (n - 1) // tokens
            if kind == "train":
                facts.append(f"{len(files)} train shard(s), {total:,} tokens ({script})")
                if tokens and steps and batches < steps and not any(p.startswith(f"{f}:") for p in problems for f in files):
                    problems.append(f"{pattern}: {total:,} tokens give {batches:,} steps of {tokens:,} tokens, the stage "
                                    f"needs {steps:,}: the data would repeat; {how_to_get(pattern, shards_needed)}")
                elif tokens and steps:
                    facts.append(f"{steps:,} steps x {tokens:,} tokens fit without repeating")
    return not problems, problems or ["; ".join(facts)]


# ----------------------------------------------------------------------------- subprocess checks

def probe_timeout():
    try:
        return float(os.environ.get("RUNNER_PREFLIGHT_TIMEOUT_S") or PROBE_TIMEOUT_S)
    except ValueError:
        return PROBE_TIMEOUT_S


def run_probe(cmd, cwd, env, timeout):
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                           start_new_session=True)
        out, rc = p.stdout + p.stderr, p.returncode
    except subprocess.TimeoutExpired as e:
        out, rc = (e.stdout or b"").decode("utf-8", "replace") if isinstance(e.stdout, bytes) else (e.stdout or ""), None
    except OSError as e:
        out, rc = f"cannot start {cmd[0]}: {e.strerror}", 127
    return rc, out, time.perf_counter() - t0


def last_line(text):
    from .runinfo import last_error_line
    return last_error_line(text.splitlines()) or "no output"


def check_allreduce(python, device, gpus, env):
    world = len(gpus) if device == "cuda" else 2
    cmd = [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
           os.path.join(PROBES, "allreduce.py"), device]
    e = dict(env, CUDA_VISIBLE_DEVICES=",".join(gpus) if device == "cuda" else "", OMP_NUM_THREADS="1")
    rc, out, wall = run_probe(cmd, os.getcwd(), e, probe_timeout())
    ok_line = next((ln for ln in out.splitlines() if ln.startswith("ALLREDUCE ok")), None)
    if rc == 0 and ok_line:
        backend = "NCCL" if device == "cuda" else "gloo"
        return True, f"{backend}, {world} processes: the sum is right ({wall:.1f} s with start-up)"
    if rc is None:
        return False, f"all_reduce over {world} processes did not finish in {probe_timeout():g} s"
    return False, f"all_reduce over {world} processes failed (exit {rc}): {last_line(out)}"


def check_model(run, plan, opts, env):
    """(ok, detail, measurement): the run stepped PROBE_STEPS times into a temporary directory."""
    tmp = tempfile.mkdtemp(prefix="preflight.")
    try:
        probe = type(run)(**{**run.__dict__})
        probe.dir, probe.action = os.path.join(tmp, "run"), "run"
        over = ["--num_iterations", str(PROBE_STEPS)]
        if not os.path.isfile(os.path.join(opts.scripts_dir, run.script)):
            return False, f"{opts.scripts_dir}/{run.script}: the trainer script is not there (--scripts-dir?)", None
        if run.script.startswith("train_gpt"):
            cfg = resolved_config(opts.scripts_dir, run)
            world = run.nproc * opts.nnodes
            over += ["--val_loss_every", "0", "--save_every", "0", "--warmdown_iters", "0",
                     "--val_tokens", str(int(cfg["device_batch_size"]) * int(cfg["sequence_length"]) * world)]
        probe.args = merge_flags(list(run.args) + over, [])
        cmd = launch_argv(probe, opts)
        e = dict(env, CUDA_VISIBLE_DEVICES=run.cvd, PYTHONUNBUFFERED="1")
        rc, out, wall = run_probe(cmd, opts.scripts_dir, e, probe_timeout())
        try:
            with open(os.path.join(probe.dir, "summary.json")) as f:
                s = json.load(f)
        except (OSError, ValueError):
            s = {}
        what = f"{run.script} ({run.variant}, {run.nproc} process(es), {plan.device}" + \
            (", compiled)" if "--compile" in run.args else ")")
        if rc is None:
            return False, f"{what}: {PROBE_STEPS} steps did not finish in {probe_timeout():g} s", None
        if s.get("status") != "ok":
            why = s.get("error") or last_line(out)
            return False, f"{what}: {s.get('status', 'failed')} ({' '.join(str(why).split())[:200]})", None
        m = s.get("metrics", {})
        if isinstance(m.get("train_time_s"), (int, float)) and PROBE_STEPS > 10:
            step = m["train_time_s"] / (PROBE_STEPS - 10)
        else:
            step = wall / PROBE_STEPS  # an upper bound: start-up included
        startup = max(0.0, wall - PROBE_STEPS * step)
        return True, f"{what}: {step:.3f} s/step, {startup:.0f} s start-up", (step, startup)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_disk(plan, opts):
    d = opts.logs
    while not os.path.exists(d) and os.path.dirname(d) != d:
        d = os.path.dirname(d)
    free = shutil.disk_usage(d).free
    need = len(plan.runs) * 20 * 2**20  # logs, metrics, summaries
    if opts.save_every:
        for r in plan.runs:
            if r.script.startswith("train_gpt") and os.path.isfile(os.path.join(opts.scripts_dir, r.script)):
                cfg = resolved_config(opts.scripts_dir, r)
                params = 12 * int(cfg["n_layer"]) * int(cfg["n_embd"]) ** 2 + int(cfg["vocab_size"]) * int(cfg["n_embd"])
                need += params * 4 * 3 * int(cfg.get("keep_checkpoints") or 1)  # weights + optimizer state, fp32
    detail = f"{free / 2**30:.1f} GiB free at {d}; the stage writes about {need / 2**30:.2f} GiB"
    return free > need, detail


# ----------------------------------------------------------------------------- the command

def main(a, env):
    if not a.target:
        die("preflight: name the stage, e.g. ./run_experiments.sh preflight tiny")
    if a.target in ("preflight", "sweep"):
        die(f"preflight: '{a.target}' cannot be preflighted; name a stage (see --help)")
    only = set(a.only.split(",")) if a.only else set(CHECKS)
    if only - set(CHECKS):
        die(f"--only: '{a.only}' names no check; choose from {','.join(CHECKS)}")
    a.scripts_dir = a.scripts_dir or env.get("RUNNER_ROOT") or os.getcwd()
    spec = load_stage(a, a.target, env)
    rate = check_common(a, env)
    logs = a.logs or spec.default_logs or "experiment_logs"
    a.stage = a.target
    opts = build_options(a, env, os.path.abspath(logs))
    node = node_from_env(env)
    python = opts.python
    rows = []  # (check, result, detail)

    def row(name, state, detail):
        rows.append((name, state, detail))

    plan, fallback = None, False
    try:
        plan = make_plan(spec, opts, node)
        g = plan.slot_size * plan.slots
        if plan.device == "cuda":
            row("gpus", "go", f"{len(node.gpus)} visible; the stage uses {g} ({plan.slots} run(s) at once, "
                              f"{plan.slot_size} GPU(s) each)")
        else:
            row("gpus", "skipped", f"none here; {spec.name} runs on CPU, {cores(env)} core(s)")
    except UsageError as e:
        row("gpus", "NO-GO", str(e))
        if node.gpus:
            plan = None
        else:  # what applies without GPUs: the design at the tiny preset on CPU
            opts.preset, opts.device, fallback = "tiny", "cpu", True
            try:
                plan = make_plan(spec, opts, node)
            except UsageError:
                plan = None
    if plan is None:
        return report(spec, rows)
    place(plan.runs, plan, opts)
    child_env = {k: v for k, v in env.items() if not k.startswith("RUNNER_")}
    if "all_reduce" in only:
        if plan.device == "cuda" or not node.gpus:
            ok, detail = check_allreduce(python, plan.device, node.gpus, child_env)
            row("all_reduce", "go" if ok else "NO-GO", detail)
    data_ok = True
    if "data" in only:
        data_ok, lines = check_data(plan, opts)
        for line in lines:
            row("data", "go" if data_ok else "NO-GO", line + (" (the tiny preset's data: no GPU here)" if fallback else ""))
    if "disk" in only:
        ok, detail = check_disk(plan, opts)
        row("disk", "go" if ok else "NO-GO", detail)
    measured = None
    if "model" in only:
        if not data_ok:
            row("model", "skipped", "no data to step it on (see data)")
        else:
            ok, detail, measured = check_model(plan.runs[0], plan, opts, child_env)
            row("model", "go" if ok else "NO-GO", detail + (" - the tiny preset on CPU: no GPU here" if fallback else ""))
    if measured and not fallback:
        row("projection", "info", projection(plan, opts, measured, a, rate, env))
    elif "model" in only:
        row("projection", "skipped", "no measured step time of the stage's own model here")
    return report(spec, rows)


def projection(plan, opts, measured, a, rate, env):
    step, startup = measured
    per_run = []
    for r in plan.runs:
        if r.script.startswith("train_gpt") and os.path.isfile(os.path.join(opts.scripts_dir, r.script)):
            n = int(resolved_config(opts.scripts_dir, r)["num_iterations"])
        else:
            n = int(words_to_flags(r.args).get("num_iterations") or 0)
        per_run.append((startup + n * step, r.nproc * opts.nnodes))
    at_once = max(plan.slots, int(a.jobs) if a.jobs else (2 if a.target == "demo" and plan.device == "cpu" else 1))
    waves = math.ceil(len(per_run) / at_once)
    wall = waves * max(t for t, _ in per_run)
    hours = sum(t * d for t, d in per_run) / 3600
    unit = "GPU-hours" if plan.device == "cuda" else "CPU-hours"
    text = (f"{len(per_run)} runs, {at_once} at a time: about {fmt_dur(wall)} wall (training steps and start-up; "
            f"validation adds to it), {hours:.3f} {unit}")
    if plan.device == "cuda" and rate is not None:
        text += f", ${hours * rate:,.2f} at ${rate:g}/GPU-hour"
    return text


def report(spec, rows):
    note(f"== preflight {spec.name}: will it run here, and what will it cost?")
    w = max(len("check"), *(len(r[0]) for r in rows))
    note(f"{'check':<{w}}  {'result':<7}  detail")
    note(f"{'-' * w}  -------  ------")
    for name, state, detail in rows:
        note(f"{name:<{w}}  {state:<7}  {detail}")
    bad = [r for r in rows if r[1] == "NO-GO"]
    skipped = [r[0] for r in rows if r[1] == "skipped"]
    note("")
    if bad:
        note(f"NO-GO: {len(bad)} problem(s) above; fix them before the stage spends any money")
    else:
        note(f"GO: {spec.name} can run here" + (f" (skipped here: {', '.join(skipped)})" if skipped else ""))
    sys.stdout.flush()
    return 1 if bad else 0
