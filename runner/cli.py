"""./run_experiments.sh's command line: parse, check, plan, print or run, report. Started by the shell
script (python -m runner) once it has fixed CUDA_VISIBLE_DEVICES; never imports torch.

The shell passes what it found in the environment: RUNNER_SMI_GPUS (GPUs nvidia-smi lists),
RUNNER_CVD_FROM_USER (1 when CUDA_VISIBLE_DEVICES was set by the user), RUNNER_ARGV0 (its $0) and
PYTHON (the interpreter for the trainers, which also runs this package).
"""
import importlib.util
import os
import re
import sys
from dataclasses import dataclass, field

from . import runinfo
from .plan import Node, Options, UsageError, make_plan, sweep_warmdown_ratio
from .stages import Condition, PlanError, StageSpec, load_all, load_builtin

PROG = "run_experiments.sh"
# The demo's counts, chosen by measurement on 2 CPU cores (bench/RESULTS.md, "The demo's counts"):
# tiny iterations (also plans/tiny.toml's num_iterations), embnorm iterations, and how many of the
# embnorm study's seeds the demo runs (the first ones).
DEMO_TINY_ITERS_DEFAULT = 50
DEMO_EMBNORM_ITERS_DEFAULT = 60
DEMO_EMBNORM_SEEDS_DEFAULT = 4
SPECIAL = {"demo": 70, "sweep": 90, "plan": 95}  # stages built in code (their --help position)
RUNNER_SET_FLAGS = ("seed", "out_dir", "device", "resume", "save_every", "compile")


class Exit(Exception):
    def __init__(self, code):
        self.code = code


def die(msg):
    print(f"{PROG}: {msg}", file=sys.stderr)
    raise Exit(2)


def note(msg="", end="\n"):
    """A line on stdout. When the terminal is gone (a closed window: EIO; a closed pipe: EPIPE), the
    runner goes on without printing: its runs still end, are recorded and release their locks."""
    try:
        print(msg, end=end, flush=True)
    except OSError:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass


@dataclass
class Args:
    stage: str = ""
    target: str = ""                 # preflight STAGE
    logs: str = ""
    seeds: list | None = None
    variants: list | None = None
    nproc: str = ""
    iterations: str = ""
    preset: str = ""
    device: str = "auto"
    compile: str = "auto"
    save_every: str = ""
    force: bool = False
    resume: bool = False
    dry: bool = False
    timeout: str = "0"
    verbose: bool = False
    jobs: str = ""
    nnodes: str = ""
    node_rank: str = ""
    rdzv_endpoint: str = ""
    rdzv_backend: str = ""
    launcher: str = "auto"
    python: str = ""
    scripts_dir: str = ""
    pack: bool = True
    usd: str = ""
    only: str = ""                   # preflight: a subset of its checks
    extra: list = field(default_factory=list)
    sweep_script: str = ""
    plan_file: str = ""              # plan FILE (runner/plans.py)
    sweep_param: str = ""
    sweep_values: list = field(default_factory=list)
    seeds_text: str = ""
    variants_text: str = ""
    slurm: bool = False              # --slurm and its options (runner/slurm.py)
    slurm_status: bool = False       # --status
    slurm_task: str = ""             # --slurm-task RUN_DIR: inside an array task, the one run it runs
    partition: str = ""
    account: str = ""
    slurm_time: str = ""
    slurm_args: list = field(default_factory=list)
    argv: list = field(default_factory=list)    # the command line as given (an array task's is built from it)
    sequential: bool = False         # --sequential and its design flags (runner/sequential.py)
    max_seeds: str = ""
    batch: str = ""
    alpha: str = ""
    spending: str = ""
    sides: str = ""
    metric: str = ""
    question: str = ""
    variant: str = ""


VALUE_OPTS = {
    "--logs": "logs", "--seeds": "seeds_text", "--variants": "variants_text", "--gpus": "nproc", "--nproc": "nproc",
    "--nproc-per-node": "nproc", "--nproc_per_node": "nproc", "--iterations": "iterations", "--preset": "preset",
    "--device": "device", "--save-every": "save_every", "--timeout": "timeout", "--jobs": "jobs", "-j": "jobs",
    "--nnodes": "nnodes", "--node-rank": "node_rank", "--node_rank": "node_rank", "--rdzv-endpoint": "rdzv_endpoint",
    "--rdzv_endpoint": "rdzv_endpoint", "--rdzv-backend": "rdzv_backend", "--rdzv_backend": "rdzv_backend",
    "--launcher": "launcher", "--python": "python", "--scripts-dir": "scripts_dir", "--param": "sweep_param",
    "--usd-per-gpu-hour": "usd", "--only": "only",
}
SEQUENTIAL_OPTS = {"--max-seeds": "max_seeds", "--batch": "batch", "--alpha": "alpha", "--spending": "spending",
                   "--sides": "sides", "--metric": "metric", "--question": "question", "--variant": "variant"}
VALUE_OPTS.update(SEQUENTIAL_OPTS)
SLURM_OPTS = {"--partition": "partition", "--account": "account", "--time": "slurm_time",
              "--slurm-arg": "slurm_args", "--slurm-task": "slurm_task"}
VALUE_OPTS.update(SLURM_OPTS)
FLAG_OPTS = {"--compile": ("compile", "on"), "--no-compile": ("compile", "off"), "--force": ("force", True),
             "--resume": ("resume", True), "--dry-run": ("dry", True), "--verbose": ("verbose", True),
             "-v": ("verbose", True), "--no-pack": ("pack", False), "--sequential": ("sequential", True)}
FLAG_OPTS.update({"--slurm": ("slurm", True), "--status": ("slurm_status", True)})


def parse_args(argv, env=None):
    a = Args()
    argv = list(argv)
    a.argv = list(argv)
    i = 0
    while i < len(argv):
        arg = argv[i]
        joined = False  # --name=value: the value is meant as written, even one starting with --
        if arg.startswith("--") and "=" in arg:
            name, _, val = arg.partition("=")
            argv[i:i + 1] = [name, val]
            arg, joined = name, True
        if arg in ("-h", "--help"):
            print(usage(env))
            raise Exit(0)
        if arg in VALUE_OPTS:
            if i + 1 >= len(argv) or argv[i + 1] == "":
                die(f"{arg} needs a value (see --help)")
            if not joined and arg not in ("--param", "--slurm-arg") and \
                    (argv[i + 1].startswith("--") or argv[i + 1] in ("-h", "-v", "-j")):
                # `--logs --dry-run` would make a directory named --dry-run and run the stage for real
                die(f"{arg} needs a value but got the option '{argv[i + 1]}' (for a value that starts with "
                    f"--, write {arg}={argv[i + 1]})")
            if VALUE_OPTS[arg] == "slurm_args":  # repeatable
                a.slurm_args.append(argv[i + 1])
            else:
                setattr(a, VALUE_OPTS[arg], argv[i + 1])
            i += 2
        elif arg in FLAG_OPTS:
            attr, val = FLAG_OPTS[arg]
            setattr(a, attr, val)
            i += 1
        elif arg == "--values":  # every word up to the next option (commas also separate)
            i += 1
            while i < len(argv) and not argv[i].startswith("--"):
                a.sweep_values += argv[i].split(",")
                i += 1
            if not a.sweep_values:
                die("--values needs at least one value, e.g. --values 0.01 0.02 0.04")
        elif arg == "--":
            a.extra = argv[i + 1:]
            break
        elif arg.startswith("-"):
            die(f"unknown option '{arg}' (see --help; trainer flags go after --)")
        else:
            if a.stage == "sweep" and not a.sweep_script:
                a.sweep_script = arg
            elif a.stage == "plan" and not a.plan_file:
                a.plan_file = arg
            elif a.stage == "preflight" and not a.target:
                a.target = arg
            elif a.stage:
                die(f"one stage at a time: got '{a.stage}' and '{arg}' (see --help)")
            else:
                a.stage = arg
            i += 1
    if a.seeds_text:
        a.seeds = a.seeds_text.replace(",", " ").split()
    if a.variants_text:
        a.variants = a.variants_text.replace(",", " ").split()
    return a


# ----------------------------------------------------------------------------- stages

def demo_counts(env):
    """(tiny iterations, embnorm iterations, embnorm seeds) of the demo: the DEMO_TINY_ITERS,
    DEMO_EMBNORM_ITERS and DEMO_EMBNORM_SEEDS environment variables, else the defaults above."""
    counts = []
    for var, default in (("DEMO_TINY_ITERS", DEMO_TINY_ITERS_DEFAULT), ("DEMO_EMBNORM_ITERS", DEMO_EMBNORM_ITERS_DEFAULT),
                         ("DEMO_EMBNORM_SEEDS", DEMO_EMBNORM_SEEDS_DEFAULT)):
        value = env.get(var) or str(default)
        if not (is_int(value) and int(value) >= 1):
            die(f"{var}: '{value}' is not a positive integer")
        counts.append(int(value))
    return tuple(counts)


def sweep_spec(a):
    """The sweep as a stage: one condition <param>=<value> per value, in stage sweep_<param>."""
    return StageSpec(
        name="sweep", dir_name=f"sweep_{a.sweep_param}", kind="any", seeds=[42],
        description="one hyperparameter sweep: ./run_experiments.sh sweep SCRIPT --param NAME --values V1 V2 ... (below)",
        warmdown_ratio=sweep_warmdown_ratio(a.sweep_script, a.preset),
        conditions=[Condition(name=f"{a.sweep_param}={v}", script=a.sweep_script, flags=[f"--{a.sweep_param}", v])
                    for v in a.sweep_values],
        baseline=f"{a.sweep_param}={a.sweep_values[0]}" if a.sweep_values else None)


def stage_names(env=None):
    names = [(s.order, s.name) for s in load_all(env=env)] + [(o, n) for n, o in SPECIAL.items()]
    return [n for _, n in sorted(names)]


def usage(env=None):
    tiny, emb, emb_seeds = demo_counts(os.environ if env is None else env)
    lines = ["""Usage: ./run_experiments.sh STAGE [options] [-- extra trainer flags]
       ./run_experiments.sh preflight STAGE [options]   # will STAGE run here, and what will it cost?

Runs every (variant, seed) of STAGE as its own job into <logs>/<stage>/<variant>/seed_<S>/, printing
progress (run k of n, elapsed, ETA, latest val loss) and a final table; exits non-zero if any run is
not ok. Runs whose summary.json says ok (or diverged/oom: real outcomes) are skipped on a re-run; other
earlier attempts are moved aside to <logs>/.superseded/ and run again. Nothing is deleted.

Stages:"""]
    specs = {s.name: s for s in load_all(env=env)}
    for name in stage_names(env):
        if name == "demo":
            lines.append(f"  {'demo':<8} the CPU default: prepare the data if missing, tiny (baseline vs palm, 3 seeds, "
                         f"{tiny} iterations), embnorm ({emb} iterations), then analyze.py -> <logs>/report.md")
        elif name == "sweep":
            lines.append(f"  {'sweep':<8} one hyperparameter sweep: ./run_experiments.sh sweep SCRIPT --param NAME "
                         "--values V1 V2 ... (below)")
        elif name == "plan":
            lines.append(f"  {'plan':<8} your own stage from a plan file: ./run_experiments.sh plan FILE [options] "
                         "(conditions, grid and zip sweeps; docs/plans.md)")
        else:
            lines += specs[name].help_lines()
    lines.append(f"""
Sweeps:
  ./run_experiments.sh sweep SCRIPT --param NAME --values V1 V2 ... [--seeds LIST] [options] [-- flags]
  runs SCRIPT once per value and seed with --NAME VALUE into <logs>/sweep_NAME/NAME=VALUE/seed_<S>/
  (default seed 42; --preset, --iterations and the options below apply as to any stage). A run that
  diverges (NaN: status diverged) or crashes (oom, failed, timeout) is recorded so and the sweep goes
  on; the final table shows every value's state. The first value is the sweep's baseline for
  analyze.py's comparisons (<logs>/sweep_NAME/sweep.json); list the script's default first.
  e.g. ./run_experiments.sh sweep train_gpt.py --preset tiny --iterations 40 --param learning_rate --values 0.02 0.005 0.08 1e30

Sequential stages (stop as soon as the answer is known; docs/runner.md):
  ./run_experiments.sh STAGE --sequential --max-seeds N [--batch K] [--alpha A] [--spending obf|pocock]
                       [--sides 1|2] [--metric M] [--question compare|acceptance] [--variant NAME]
  runs the baseline and one variant (--variant; default the stage's only other condition) in batches
  of K seeds per condition (default 2), decides after each batch (python analyze.py decide) and stops
  when the answer is known (effect, futility) or at N runs per condition. The design is written to
  <logs>/<stage>/sequential.json before the first run; a later command that changes it is refused.
  Defaults: alpha 0.05 two-sided (acceptance: 0.01 one-sided vs 3.28), O'Brien-Fleming-type spending,
  the stage's primary metric. Seeds: the stage's (or --seeds) in ascending order, then the next integers.

Slurm (a stage's runs as one job array on a cluster; docs/runner.md, "Slurm"):
  ./run_experiments.sh STAGE --slurm [--partition P] [--account A] [--time HH:MM:SS] [--slurm-arg ARG ...]
  submits one array task per (variant, seed) run still to do (finished, queued and running runs are
  left out), each asking for the nodes, GPUs (or CPUs) of its run and running it through this runner
  (same run directory, summary, lock; --force/--resume as here). Prints the job id and each task's
  output file (<logs>/<stage>/slurm/). --dry-run prints the batch script and the sbatch command.
  --slurm-arg ARG goes to sbatch as it is (repeatable; e.g. --slurm-arg=--qos=high).
  ./run_experiments.sh STAGE --slurm --status   each run: pending, running, done, failed or to do

Preflight:
  ./run_experiments.sh preflight STAGE [--preset P] [--iterations N] [--gpus N] [--usd-per-gpu-hour X]
                                       [--only gpus,all_reduce,data,disk,model]
  checks in about a minute what STAGE needs here: GPUs, an all_reduce across them (NCCL; gloo on CPU),
  its data shards (present, valid headers, enough without repeating), free disk, and a few timed
  steps of its model, projecting the stage's wall time and cost. Prints go/no-go; exit 0 go, 1 no-go.

Options:
  --logs DIR            where runs go (default: experiment_logs; smoke: logs/smoke)
  --seeds LIST          seeds, e.g. 42,43,44 (default: the stage's)
  --variants LIST       run only these variants, e.g. palm
  --gpus N, --nproc N   processes per node (default: the stage's GPU count; 1 on CPU)
  --iterations N        --num_iterations for every run; the warm-down is scaled in proportion
  --preset NAME         pass --preset NAME to the train_gpt scripts and drop the stage's model-scale
                        flags (e.g. stage_a --preset tiny runs the stage's design on CPU)
  --device D            auto (default: cuda when nvidia-smi shows a GPU), cpu or cuda
  --compile/--no-compile  torch.compile (default: on for the GPU stages on GPUs, off on CPU)
                        passed as --compile on|off (other stages on CUDA: the scripts' own auto, on)
  --save-every K        checkpoint every K steps (train_gpt scripts), needed by --resume
  --force               rerun runs that finished; the old run directory is moved aside, not deleted
  --resume              continue unfinished runs from their checkpoints instead of starting over
  --dry-run             print the plan and every command; run and write nothing
  --timeout SECONDS     stop a run after this long (status timeout); 0 = no limit (default)
  --verbose             also stream every run's output (it always goes to stdout.log)
  --jobs N              CPU only: N runs side by side, each with cores/N threads (default 1; demo: 2)
  --no-pack             GPUs: one run at a time (default: runs of g GPUs on a node of G run G/g at once,
                        each on its own GPUs), for studies whose outcome is the wall-clock time
  --usd-per-gpu-hour X  price the GPU-hours in the final table (env USD_PER_GPU_HOUR; recorded in
                        experiment.json)
  --nnodes N            nodes (env NNODES; default 1)
  --node-rank R         this node's rank (env NODE_RANK; default 0; node 0 writes the JSON files)
  --rdzv-endpoint H:P   rendezvous endpoint (env RDZV_ENDPOINT; needed when --nnodes > 1)
  --rdzv-backend B      c10d (default) or static (env RDZV_BACKEND; static fixes global rank 0 on node 0)
  --launcher L          auto (default: torchrun when a run spans several processes, else python),
                        torchrun or python
  --python PATH         interpreter for trainers and helper (env PYTHON; default: python on PATH)
  --scripts-dir DIR     where the trainer scripts live (default: this script's directory)
  -h, --help            this text
Everything after -- is passed to every trainer (and recorded in experiment.json as an override).

Environment: CUDA_VISIBLE_DEVICES, when set, is kept; otherwise it is set to the GPUs nvidia-smi lists
(empty on CPU) before any Python starts, and each run gets its own GPUs from it. DEMO_TINY_ITERS / DEMO_EMBNORM_ITERS set the demo's counts ({tiny} / {emb}), DEMO_EMBNORM_SEEDS how many embnorm seeds it runs ({emb_seeds}).
Runs go seed by seed across the variants. More: docs/runner.md. Exit codes: 0 all runs ok, 1 some run not ok, 2 bad usage, 130 interrupted.""")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- checks

def is_int(s):
    return isinstance(s, str) and s.isdigit() and s.isascii()


def check_sweep(a, scripts_dir_checked=False):
    if not a.sweep_script:
        die("sweep: name the script, e.g. ./run_experiments.sh sweep train_gpt.py --param learning_rate --values 0.01 0.02")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+\.py", a.sweep_script):
        die(f"sweep: '{a.sweep_script}' should be a trainer script in the scripts directory, e.g. train_gpt.py")
    if not a.sweep_param:
        die("sweep: --param NAME is missing (the script's flag without dashes, e.g. --param learning_rate)")
    a.sweep_param = a.sweep_param.removeprefix("--")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", a.sweep_param):
        die(f"--param: '{a.sweep_param}' is not a flag name (letters, digits, _; e.g. learning_rate)")
    if a.sweep_param in RUNNER_SET_FLAGS:
        die(f"--param: '{a.sweep_param}' is set by the runner itself; sweep a hyperparameter (seeds: --seeds)")
    if not a.sweep_values:
        die("sweep: --values V1 V2 ... is missing")
    seen = set()
    for v in a.sweep_values:
        if not re.fullmatch(r"[A-Za-z0-9_.+-]+", v) or v.startswith("-"):
            die(f"--values: '{v}' is not a plain value (letters, digits, . _ + -; not starting with -)")
        if v in seen:
            die(f"--values: '{v}' is given twice")
        seen.add(v)
    for w in a.extra:
        if w == f"--{a.sweep_param}" or w.startswith(f"--{a.sweep_param}="):
            die(f"--{a.sweep_param} after -- would override the sweep's values; drop it")


def load_stage(a, name, env=None):
    """The StageSpec of `name` (built-in file, sweep or demo's first half), or a one-line exit."""
    try:
        if name == "sweep":
            return sweep_spec(a)
        if name == "plan":
            from . import plans
            return plans.for_cli(a, env if env is not None else os.environ)
        if name == "demo":
            return load_builtin("tiny", env=env)
        spec = load_builtin(name, env=env)
    except PlanError as e:
        die(str(e))
    if spec is None:
        die(f"unknown stage '{name}'; stages: {', '.join(stage_names(env))} (see --help)")
    return spec


def check_common(a, env):
    """Every option check of the bash runner, in its order; returns the resolved numbers."""
    for s in a.seeds or []:
        if not is_int(s):
            die(f"--seeds: '{s}' is not a non-negative integer (e.g. --seeds 42,43,44)")
    if a.nproc and not (is_int(a.nproc) and int(a.nproc) >= 1):
        die(f"--gpus/--nproc: '{a.nproc}' is not a positive integer")
    if a.iterations and not (is_int(a.iterations) and int(a.iterations) >= 1):
        die(f"--iterations: '{a.iterations}' is not a positive integer")
    if a.save_every and not is_int(a.save_every):
        die(f"--save-every: '{a.save_every}' is not a non-negative integer")
    if a.jobs and not (is_int(a.jobs) and int(a.jobs) >= 1):
        die(f"--jobs: '{a.jobs}' is not a positive integer")
    if not re.fullmatch(r"[0-9]+(\.[0-9]+)?", a.timeout):
        die(f"--timeout: '{a.timeout}' is not a number of seconds")
    a.nnodes = a.nnodes or env.get("NNODES") or "1"
    a.node_rank = a.node_rank or env.get("NODE_RANK") or "0"
    a.rdzv_endpoint = a.rdzv_endpoint or env.get("RDZV_ENDPOINT", "")
    a.rdzv_backend = a.rdzv_backend or env.get("RDZV_BACKEND") or "c10d"
    if not (is_int(a.nnodes) and int(a.nnodes) >= 1):
        die(f"--nnodes/NNODES: '{a.nnodes}' is not a positive integer")
    if not (is_int(a.node_rank) and int(a.node_rank) < int(a.nnodes)):
        die(f"--node-rank/NODE_RANK: '{a.node_rank}' must be an integer below --nnodes ({a.nnodes})")
    if int(a.nnodes) > 1 and not a.rdzv_endpoint and not a.slurm:  # Slurm's tasks take it from the allocation
        die(f"--nnodes {a.nnodes} needs --rdzv-endpoint HOST:PORT (or env RDZV_ENDPOINT)")
    if a.rdzv_endpoint and ":" not in a.rdzv_endpoint:
        die(f"--rdzv-endpoint: '{a.rdzv_endpoint}' should be HOST:PORT")
    if a.rdzv_backend not in ("c10d", "static"):
        die(f"--rdzv-backend: '{a.rdzv_backend}' must be c10d or static")
    if a.device not in ("auto", "cpu", "cuda"):
        die(f"--device: '{a.device}' must be auto, cpu or cuda")
    if a.launcher not in ("auto", "torchrun", "python"):
        die(f"--launcher: '{a.launcher}' must be auto, torchrun or python")
    if not os.path.isdir(a.scripts_dir):
        die(f"--scripts-dir: '{a.scripts_dir}' is not a directory")
    a.scripts_dir = os.path.abspath(a.scripts_dir)
    usd = a.usd or env.get("USD_PER_GPU_HOUR", "")
    rate = None
    if usd:
        try:
            rate = float(usd)
        except ValueError:
            rate = -1.0
        if not (rate >= 0 and rate != float("inf")):
            die(f"--usd-per-gpu-hour/USD_PER_GPU_HOUR: '{usd}' is not a non-negative number of dollars")
    return rate


def node_from_env(env):
    """The GPUs the shell found: nvidia-smi's count, narrowed by a user's CUDA_VISIBLE_DEVICES."""
    smi = int(env.get("RUNNER_SMI_GPUS") or 0)
    from_user = env.get("RUNNER_CVD_FROM_USER") == "1"
    raw = env.get("CUDA_VISIBLE_DEVICES", "")
    if from_user:
        gpus = [] if raw in ("", "-1") else raw.split(",")
        gpus = gpus[:smi]
    else:
        gpus = [str(i) for i in range(smi)]
    return Node(gpus=gpus, cvd_from_user=from_user, user_cvd=raw)


# ----------------------------------------------------------------------------- main

def main(argv=None, env=None):
    env = dict(os.environ if env is None else env)
    argv = sys.argv[1:] if argv is None else argv
    try:
        return run_main(argv, env)
    except Exit as e:
        return e.code
    except PlanError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2


def run_main(argv, env):
    # every module now, before any run starts: a git pull during a long stage cannot change the runner
    from . import launch, preflight, slurm  # noqa: F401  (they import this module)
    a = parse_args(argv, env)
    if not a.stage:
        print(usage(env), file=sys.stderr)
        die(f"name a stage: {', '.join(stage_names(env))}")
    if a.stage == "preflight":
        return preflight.main(a, env)
    if a.only:
        die("--only belongs to preflight: ./run_experiments.sh preflight STAGE --only data,disk")
    if a.stage == "sweep":
        check_sweep(a)
    elif a.sweep_script or a.sweep_param or a.sweep_values:
        die("--param/--values belong to the sweep stage: ./run_experiments.sh sweep SCRIPT --param NAME --values ...")
    a.scripts_dir = a.scripts_dir or env.get("RUNNER_ROOT") or os.getcwd()
    spec = load_stage(a, a.stage, env)
    rate = check_common(a, env)
    if a.stage == "sweep" and not os.path.isfile(os.path.join(a.scripts_dir, a.sweep_script)):
        die(f"sweep: {a.scripts_dir}/{a.sweep_script} does not exist (--scripts-dir?)")
    if a.force and a.resume:
        die("--force starts runs over and --resume continues them: pick one")
    if a.stage == "plan" and not a.dry and a.node_rank == "0":
        from . import plans   # <logs>/<plan>/plan.json: which flags each condition sweeps (analyze.py reads it)
        try:
            plans.record(a.logs or spec.default_logs or "experiment_logs", spec)
        except OSError as e:
            die(f"--logs: cannot write the plan's record plan.json there ({e.strerror})")
    if a.slurm or a.slurm_status or a.slurm_task or a.partition or a.account or a.slurm_time or a.slurm_args:
        return slurm.stage_main(a, spec, rate, env)
    if a.sequential:
        from . import sequential
        return sequential.main(a, spec, rate, env)
    given = [o for o, attr in SEQUENTIAL_OPTS.items() if getattr(a, attr)]
    if given:
        die(f"{given[0]} belongs to a sequential stage: add --sequential (see --help)")
    return launch.Stage(a, spec, rate, env).go()


def build_options(a, env, logs_abs):
    return Options(
        seeds=[int(s) for s in a.seeds] if a.seeds else None, variants=a.variants,
        nproc=int(a.nproc) if a.nproc else None, iterations=int(a.iterations) if a.iterations else None,
        preset=a.preset, device=a.device, compile=a.compile,
        save_every=int(a.save_every) if a.save_every != "" else None, extra=list(a.extra),
        nnodes=int(a.nnodes), node_rank=int(a.node_rank), rdzv_endpoint=a.rdzv_endpoint,
        rdzv_backend=a.rdzv_backend, launcher=a.launcher, python=a.python or env.get("PYTHON") or "python",
        scripts_dir=a.scripts_dir, logs=logs_abs, pack=a.pack, dry_run=a.dry,
        port_base=int(env.get("RUNNER_PORT_BASE") or 29500))


def torch_available():
    """Whether this interpreter (the trainers' one) has torch, without importing it."""
    return importlib.util.find_spec("torch") is not None


__all__ = ["main", "parse_args", "usage", "build_options", "node_from_env", "make_plan", "UsageError"]
