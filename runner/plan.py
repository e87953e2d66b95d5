"""The plan: a pure function from (stage, options, GPUs found) to the list of runs, each with its
command, CUDA_VISIBLE_DEVICES and rendezvous port. Nothing here reads the file system, the
environment or the clock, so every rule is unit-tested directly (tests/test_runner_plan.py).

    plan = make_plan(spec, opts, Node(gpus=["0", ..., "7"]))   # raises UsageError on a bad combination
    todo = [r for r in plan.runs if ...]                        # the runner drops finished runs
    place(todo, plan, opts)                                      # GPU sets, ports, who starts together
    launch_argv(run, opts)                                       # the exact argv of one run

Packing: a node with G visible GPUs and runs of at most g processes each holds floor(G / g) slots of
g GPUs; run j of the runs still to do is in wave j // slots and goes to slot (j + wave) mod slots: the
runs of wave 0 start together, each slot then takes its next run when its current one ends, and
the shift by the wave moves each condition across the GPU sets from seed to seed. Every slot has its own
disjoint GPU set and its own torchrun rendezvous port. One slot (--no-pack, several nodes, CPU, a
dry run without GPUs) reproduces the one-by-one runner exactly.
"""
import re
from dataclasses import dataclass, field

from .stages import scaled_warmdown

RECORD_WARMDOWN_RATIO = (1450, 5100)   # the record: 1,450 warm-down iterations of 5,100
TINY_WARMDOWN_RATIO = (45, 150)        # the tiny preset: 45 of 150
DEFAULT_PORT_BASE = 29500
# The train_gpt scripts' global batch (sequences) when no --batch_size is given: the record's, and the
# tiny preset's (tests/test_runner_gpu_paths.py checks both against the trainers' own defaults).
RECORD_BATCH_SIZE = 512
TINY_BATCH_SIZE = 32
# Scripts with a --compile auto|on|off flag (auto: on for CUDA, off for CPU).
COMPILE_SCRIPT_PREFIXES = ("train_gpt", "train_mini_embnorm")


def is_distributed(script):
    """Whether a script trains as one job over several processes (torchrun): the train_gpt scripts set
    up a process group; the others (train_mini_embnorm.py) run one process (tests check this against
    the scripts' code)."""
    return script.startswith("train_gpt")


class UsageError(Exception):
    """Bad usage: one line, exit code 2."""


@dataclass
class Node:
    """What the shell found: the visible GPUs (CUDA_VISIBLE_DEVICES entries) of this node."""
    gpus: list = field(default_factory=list)
    cvd_from_user: bool = False    # CUDA_VISIBLE_DEVICES was set by the user (kept as given)
    user_cvd: str = ""


@dataclass
class Options:
    seeds: list | None = None
    variants: list | None = None
    nproc: int | None = None
    iterations: int | None = None
    preset: str = ""
    device: str = "auto"
    compile: str = "auto"          # auto | on | off
    save_every: int | None = None
    extra: list = field(default_factory=list)
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str = ""
    rdzv_backend: str = "c10d"
    launcher: str = "auto"
    python: str = "python"
    scripts_dir: str = "."
    logs: str = "experiment_logs"  # absolute
    pack: bool = True
    dry_run: bool = False
    port_base: int = DEFAULT_PORT_BASE


@dataclass
class Run:
    stage_dir: str
    variant: str
    script: str
    nproc: int
    seed: int
    args: list                     # trainer flags after --seed/--out_dir
    dir: str
    action: str = "run"            # run | rerun | resume | skip | busy (set by the runner)
    prev: str = ""                 # what the directory held (status, or who holds the lock)
    cvd: str = ""                  # this run's CUDA_VISIBLE_DEVICES
    slot: int = 0
    wave: int = 0
    port: int | None = None        # own rendezvous port (packed torchrun runs)
    seen: object = None            # summary.json's identity when decided (re-checked under the lock)

    @property
    def key(self):
        return f"{self.stage_dir}/{self.variant}"

    @property
    def distributed(self):
        return is_distributed(self.script)

    @property
    def label(self):
        return f"{self.stage_dir}/{self.variant} seed {self.seed}"


@dataclass
class Plan:
    runs: list
    device: str
    nproc: int                     # processes per node (the stage's, or --gpus)
    slot_size: int = 0             # GPUs per slot (0 on CPU)
    slots: int = 1                 # runs at once on this node
    gpus: list = field(default_factory=list)   # the node's GPUs this stage may use
    note: str = ""                 # e.g. "no GPU here: showing the commands as they would run on GPUs"

    cvd: str = ""                  # the GPUs the stage uses on this node (all slots), as CUDA_VISIBLE_DEVICES


def has_flag(name, words):
    return any(w == name or w.startswith(name + "=") for w in words)


def merge_flags(words, extra):
    """Each flag's last occurrence, in order; flags also given in `extra` (after --) are dropped."""
    out, i = [], 0
    while i < len(words):
        key = words[i]
        if key.startswith("--") and i + 1 < len(words) and not words[i + 1].startswith("--"):
            if not has_flag(key, words[i + 2:]) and not has_flag(key, extra):
                out += [key, words[i + 1]]
            i += 2
        else:
            if not has_flag(key, words[i + 1:]) and not has_flag(key, extra):
                out.append(key)
            i += 1
    return out


def resolve_device(spec, opts, node):
    """(device, processes per node, note) for this stage on this node; UsageError when it cannot run."""
    device, note = opts.device, ""
    visible = len(node.gpus)
    if device == "auto":
        if spec.kind == "cpu":
            device = "cpu"
        elif visible > 0:
            device = "cuda"
        elif spec.kind == "gpu" and not opts.preset and opts.dry_run:
            device, note = "cuda", "no GPU here: showing the commands as they would run on GPUs"
        else:
            device = "cpu"
    if device == "cuda":
        default = spec.processes
    else:
        default = 1
        if spec.kind == "gpu" and not opts.preset:
            raise UsageError(f"stage {spec.name} trains the 124M model and wants {spec.processes} GPU(s), but "
                             "nvidia-smi shows none; add --preset tiny to run its design on CPU, or run the demo stage")
    return device, opts.nproc or default, note


def expand(spec, opts, device, nproc):
    """Every (condition, seed) of the stage, seed by seed across the conditions."""
    stage_hp = list(spec.flags)
    queued = []
    conds = [c for c in spec.conditions if not opts.variants or c.name in opts.variants]
    for vpos, c in enumerate(conds):
        gpt = c.script.startswith("train_gpt")
        # --preset replaces the stage's model-scale flags; only the train_gpt scripts have presets.
        hp = ["--preset", opts.preset] if opts.preset and gpt else list(stage_hp)
        if opts.iterations:
            hp += ["--num_iterations", str(opts.iterations)]
            # only the train_gpt scripts have a warm-down (the bash runner also gave it to the smoke
            # stage's train_mini_embnorm.py runs, which refused the flag)
            if spec.warmdown_ratio and gpt:
                hp += ["--warmdown_iters", str(scaled_warmdown(opts.iterations, spec.warmdown_ratio))]
        args = merge_flags(hp + c.flags, opts.extra)
        # --compile: always explicit when the user chose (the scripts' own default, auto, compiles on
        # CUDA); with auto, the GPU stages on GPUs say "on" (the record compiles) and the rest is left
        # to the scripts' auto (on for CUDA, off for CPU).
        if c.script.startswith(COMPILE_SCRIPT_PREFIXES) and not has_flag("--compile", opts.extra):
            if opts.compile in ("on", "off"):
                args += ["--compile", opts.compile]
            elif device == "cuda" and spec.kind == "gpu" and gpt:
                args += ["--compile", "on"]
        if gpt and opts.save_every is not None:
            args += ["--save_every", str(opts.save_every)]
        procs = c.processes or nproc
        if gpt:
            args = fit_device_batch(spec, c, args, opts, procs * opts.nnodes, procs)
        args += ["--device", device, *opts.extra]
        for pos, seed in enumerate(c.seeds or opts.seeds or spec.seeds):
            run = Run(stage_dir=spec.stage_dir, variant=c.name, script=c.script, nproc=procs,
                      seed=seed, args=args, dir=f"{opts.logs}/{spec.stage_dir}/{c.name}/seed_{seed}")
            queued.append(((pos, vpos), run))
    # Seed by seed (baseline 42, palm 42, baseline 43, ...): a drift of the machine's speed during the
    # stage then falls on every variant alike instead of on whichever ran last.
    queued.sort(key=lambda q: q[0])
    return [r for _, r in queued]


def flag_value(name, words):
    """The value of a flag's last occurrence (--name V or --name=V), or None."""
    val = None
    for i, w in enumerate(words):
        if w == name and i + 1 < len(words):
            val = words[i + 1]
        elif w.startswith(name + "="):
            val = w[len(name) + 1:]
    return val


def fit_device_batch(spec, c, args, opts, world, procs):
    """The train_gpt scripts split the global batch over the processes and pick the device batch
    themselves unless it is given. A process count that cannot split the batch is refused here, before
    anything starts; a device batch set by the stage file that does not fit this process count is left
    out (the trainer then picks the largest one <= 64 that fits and says so); one given after -- is kept."""
    every = args + opts.extra
    raw = flag_value("--batch_size", every)
    batch = int(raw) if raw and raw.isdigit() else (TINY_BATCH_SIZE if flag_value("--preset", every) == "tiny"
                                                     else RECORD_BATCH_SIZE)
    if raw is not None and not raw.isdigit():
        return args  # the trainer refuses it with its own line
    if batch % world:
        fits = [n for n in range(1, 17) if batch % (n * opts.nnodes) == 0]
        raise UsageError(f"{spec.name}/{c.name}: {c.script} splits its global batch of {batch} sequences over the "
                         f"{world} processes of a run ({procs} per node x {opts.nnodes} node(s)), which does not divide "
                         f"it; use --gpus {' or '.join(map(str, fits[-3:]))} (per node) or another --batch_size")
    dbs = flag_value("--device_batch_size", args)
    if dbs and dbs.isdigit() and int(dbs) > 0 and not has_flag("--device_batch_size", opts.extra) \
            and (batch // world) % int(dbs):
        out, i = [], 0
        while i < len(args):
            if args[i] == "--device_batch_size":
                i += 2
                continue
            if not args[i].startswith("--device_batch_size="):
                out.append(args[i])
            i += 1
        return out
    return args


def make_plan(spec, opts, node, extra_specs=()):
    """The runs of `spec` (and of `extra_specs`, run after it: the demo's second half) on `node`."""
    device, nproc, note = resolve_device(spec, opts, node)
    runs = expand(spec, opts, device, nproc)
    for other in extra_specs:
        runs += expand(other, opts, device, nproc)
    plan = Plan(runs=runs, device=device, nproc=nproc, note=note)
    if device != "cuda":
        return plan  # CPU runs see no GPU (CUDA_VISIBLE_DEVICES empty)
    biggest = max([r.nproc for r in runs] or [nproc])
    need = max(nproc, biggest)
    if not opts.dry_run and not note and len(node.gpus) < need:
        raise UsageError(f"stage {spec.name} wants {need} GPU(s) per node but this node shows "
                         f"{len(node.gpus)}; pass --gpus {len(node.gpus)} (gradient accumulation keeps the global batch)")
    plan.gpus = list(node.gpus)
    if opts.pack and not note and opts.nnodes == 1 and len(plan.gpus) >= 2 * biggest:
        plan.slot_size, plan.slots = biggest, len(plan.gpus) // biggest
        plan.cvd = ",".join(plan.gpus[: plan.slot_size * plan.slots])
    else:
        # One run at a time sees the user's CUDA_VISIBLE_DEVICES as given, else the first GPUs the
        # stage asks for (shown so on a dry run without GPUs).
        plan.slot_size, plan.slots = need, 1
        plan.cvd = node.user_cvd if node.cvd_from_user else ",".join(str(i) for i in range(need))
    return plan


def place(todo, plan, opts):
    """Give each run still to do its slot, wave, CUDA_VISIBLE_DEVICES and port (in place)."""
    for j, run in enumerate(todo):
        # each wave shifts the slots by one, so that a condition does not always get the same GPUs
        # (stage_b: baseline on 0-3 and palm on 4-7 for every seed would confound them with the GPUs)
        run.wave = j // plan.slots
        run.slot = (j + run.wave) % plan.slots
        if plan.device == "cuda" and plan.slots > 1:
            first = run.slot * plan.slot_size
            run.cvd = ",".join(plan.gpus[first: first + run.nproc])
        elif plan.device == "cuda":
            # one run at a time: the first GPUs of the stage's set, as many as this run has processes
            # (smoke's 2-process run gets 2 while its 1-process runs get 1)
            run.cvd = ",".join(plan.cvd.split(",")[: run.nproc]) if plan.cvd else ""
        else:
            run.cvd = plan.cvd
        run.port = opts.port_base + run.slot if plan.slots > 1 else None
    return todo


def uses_torchrun(run, opts):
    if not run.distributed:  # one process, on node 0 alone when there are several nodes
        return opts.launcher == "torchrun" and opts.nnodes == 1
    return opts.launcher == "torchrun" or (opts.launcher == "auto" and run.nproc * opts.nnodes > 1)


def launch_argv(run, opts):
    """The exact argv of a run (started in opts.scripts_dir)."""
    if uses_torchrun(run, opts):
        cmd = [opts.python, "-m", "torch.distributed.run"]
        if (opts.nnodes == 1 or not run.distributed) and run.port is None:
            cmd += ["--standalone", f"--nproc_per_node={run.nproc}"]
        elif opts.nnodes == 1:
            # a packed run: its own rendezvous on its own port, beside the other slots' runs
            cmd += ["--nnodes=1", f"--nproc_per_node={run.nproc}", "--rdzv_backend=c10d",
                    f"--rdzv_endpoint=localhost:{run.port}", f"--rdzv_id={run.stage_dir}-{run.variant}-seed{run.seed}"]
        elif opts.rdzv_backend == "static":
            host, _, port = opts.rdzv_endpoint.rpartition(":")
            cmd += [f"--nnodes={opts.nnodes}", f"--node_rank={opts.node_rank}", f"--nproc_per_node={run.nproc}",
                    f"--master_addr={host}", f"--master_port={port}"]
        else:
            # one rendezvous id per run, the same on every node; global ranks come from the rendezvous
            cmd += [f"--nnodes={opts.nnodes}", f"--nproc_per_node={run.nproc}", "--rdzv_backend=c10d",
                    f"--rdzv_endpoint={opts.rdzv_endpoint}", f"--rdzv_id={run.stage_dir}-{run.variant}-seed{run.seed}"]
    else:
        cmd = [opts.python]
    cmd += [run.script, "--seed", str(run.seed), "--out_dir", run.dir, *run.args]
    if run.action == "resume":
        cmd += ["--resume", run.dir]
    return cmd


# ----------------------------------------------------------------------------- shell quoting, as bash's printf %q

_SPECIAL = set(" '\"\\|&;()<>!{}*[]?^$`,")
_ANSI = {"\a": "\\a", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\v": "\\v", "\f": "\\f", "\r": "\\r", "\x1b": "\\E",
         "'": "\\'", "\\": "\\\\"}


def shq(word):
    """`word` quoted as bash's printf %q quotes it (the bash runner's dry-run lines used %q)."""
    if word == "":
        return "''"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in word):
        return "$'" + "".join(_ANSI.get(ch, f"\\{ord(ch):03o}" if ord(ch) < 32 or ord(ch) == 127 else ch)
                              for ch in word) + "'"
    out = []
    for i, ch in enumerate(word):
        if ch in _SPECIAL or (i == 0 and ch in "~#"):
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def shell_line(words):
    return " ".join(shq(w) for w in words)


def cmd_string(run, opts):
    """The exact command of a run as one shell line (dry run, experiment.json, stdout.log)."""
    cvd = run.cvd if re.fullmatch(r"[0-9,]+", run.cvd) else shq(run.cvd)
    return f"cd {shq(opts.scripts_dir)} && CUDA_VISIBLE_DEVICES={cvd} {shell_line(launch_argv(run, opts))}"


def sweep_warmdown_ratio(script, preset):
    """A sweep of a train_gpt script rescales the warm-down like its stage would; others have none."""
    if not script.startswith("train_gpt"):
        return None
    return TINY_WARMDOWN_RATIO if preset else RECORD_WARMDOWN_RATIO
