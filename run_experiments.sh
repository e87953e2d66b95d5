#!/usr/bin/env bash
# run_experiments.sh - run the seeded stages of this project's experiments, never losing a result.
#
#   ./run_experiments.sh demo                    # CPU: data, tiny baseline vs palm, embnorm study, report
#   ./run_experiments.sh smoke --logs /tmp/smk   # every script for a few steps on CPU
#   ./run_experiments.sh stage_c --dry-run       # print every command of the 8-GPU stage, run nothing
#   ./run_experiments.sh stage_c --gpus 4        # 4 GPUs: gradient accumulation keeps the global batch
#   # several nodes: the same command on every node (a shared --logs directory), node 0 first
#   NNODES=2 NODE_RANK=0 RDZV_ENDPOINT=node0:29500 ./run_experiments.sh stage_c
#   ./run_experiments.sh sweep train_gpt.py --param learning_rate --values 0.02 0.01 0.04 --preset tiny
#                                                # one hyperparameter sweep (docs/sweeps.md)
#   ./run_experiments.sh --help                  # the stages and their settings
#
# Why a shell script: CUDA_VISIBLE_DEVICES must be fixed before any Python process starts, and no
# process that imported torch may launch the workers (a launcher that had initialised CUDA broke every
# GPU worker of the seed study). The helper runner/runinfo.py only reads and writes JSON; it never
# imports torch. Each run is its own process tree (torchrun when it spans several processes) writing
# <logs>/<stage>/<variant>/seed_<S>/ (docs/RUN_FORMAT.md). Usage notes: docs/runner.md.
set -uo pipefail

# The whole script is one compound command: bash reads all of it before running any of it, so editing
# or updating this file (git pull) while a long stage runs cannot change the running runner.
{

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
HELPER="$ROOT/runner/runinfo.py"

# Record settings, the reference for scaling the warm-down with --iterations.
RECORD_ITERS=5100
RECORD_WARMDOWN=1450
# The demo's iteration counts, chosen by measurement on 2 CPU cores (docs/runner.md).
DEMO_TINY_ITERS=${DEMO_TINY_ITERS:-60}
DEMO_EMBNORM_ITERS=${DEMO_EMBNORM_ITERS:-100}
# The tiny preset's own warm-down proportion (train_gpt.py: 45 of 150 iterations).
TINY_WARMDOWN_RATIO="45/150"
tiny_warmdown() { echo $((($1 * ${TINY_WARMDOWN_RATIO%/*} + ${TINY_WARMDOWN_RATIO#*/} / 2) / ${TINY_WARMDOWN_RATIO#*/})); }
POLL_S=0.5        # how often the progress monitor looks at the run's log (it starts faster)
HEARTBEAT_S=60    # a progress line at least this often while a run prints no new val loss

die() { printf 'run_experiments.sh: %s\n' "$*" >&2; exit 2; }
note() { printf '%s\n' "$*"; }
now() { printf '%(%s)T' -1; }
utc_stamp() { date -u +%Y%m%dT%H%M%SZ; }

fmt_dur() {  # seconds -> 1h02m03s / 2m05s / 7s
    local s=${1%.*}
    [[ -z $s || $s == -* ]] && { printf '?'; return; }
    if ((s >= 3600)); then printf '%dh%02dm%02ds' $((s / 3600)) $((s % 3600 / 60)) $((s % 60))
    elif ((s >= 60)); then printf '%dm%02ds' $((s / 60)) $((s % 60))
    else printf '%ds' "$s"; fi
}

# ----------------------------------------------------------------------------- stages
# define_stage NAME fills:
#   S_DESC     one line for --help
#   S_GPUS     processes per node on GPUs (CPU runs use 1 unless --nproc is given)
#   S_SEEDS    default seeds
#   S_KIND     gpu (the 124M model: refuses to run on CPU without --preset) | any | cpu | meta
#   S_WARMDOWN_RATIO  warm-down / iterations when --iterations rescales it ("" = no warm-down flag)
#   S_HP       "--flag value ..." the stage's hyperparameters (dropped under --preset, which has its own)
#   S_RUNS     lines "stage_dir variant script nproc seeds|- extra args..." (nproc/seeds "-" = stage default)
define_stage() {
    S_DESC=""; S_GPUS=1; S_SEEDS="42 43 44"; S_KIND=gpu; S_WARMDOWN_RATIO="$RECORD_WARMDOWN/$RECORD_ITERS"
    S_HP=""; S_RUNS=""
    case $1 in
        stage_a)
            S_DESC="screening: 1 GPU, 1,000 iterations, batch 128 (device batch 16), warm-down 284, val every 25; baseline, palm, depthwarm, curriculum; 2 seeds"
            S_GPUS=1; S_SEEDS="42 43"; S_WARMDOWN_RATIO="284/1000"
            S_HP="--num_iterations 1000 --warmdown_iters 284 --batch_size 128 --device_batch_size 16 --val_loss_every 25"
            S_RUNS="stage_a baseline train_gpt.py - -
stage_a palm train_gpt_palm.py - -
stage_a depthwarm train_gpt_depthwarm.py - -
stage_a curriculum train_gpt_curriculum.py - -" ;;
        stage_b)
            S_DESC="validation: 4 GPUs, 3,000 iterations, warm-down 853 (1,450 x 3,000/5,100), record batch 512; baseline and palm; 3 seeds"
            S_GPUS=4
            S_HP="--num_iterations 3000 --warmdown_iters 853"
            S_RUNS="stage_b baseline train_gpt.py - -
stage_b palm train_gpt_palm.py - -" ;;
        stage_c)
            S_DESC="full: 8 GPUs, the record's settings (5,100 iterations, warm-down 1,450, batch 512); baseline and palm; seeds 42 43 44 (5 seeds recommended: --seeds 42,43,44,45,46)"
            S_GPUS=8
            S_RUNS="stage_c baseline train_gpt.py - -
stage_c palm train_gpt_palm.py - -" ;;
        lmd)
            S_DESC="layer-wise Muon momentum: 8 GPUs, the record's settings; baseline (0.95), moderate (0.98->0.90), fixed_high (0.98), fixed_low (0.90); 3 seeds"
            S_GPUS=8
            S_RUNS="lmd baseline train_gpt_lmd.py - - --lmd baseline
lmd moderate train_gpt_lmd.py - - --lmd moderate
lmd fixed_high train_gpt_lmd.py - - --lmd fixed_high
lmd fixed_low train_gpt_lmd.py - - --lmd fixed_low" ;;
        embnorm)
            S_DESC="embedding-norm mini study: 3 variants (baseline, layernorm, rmsnorm) x 5 seeds x 300 iterations; 1 GPU or CPU"
            S_KIND=any; S_SEEDS="42 43 44 45 46"; S_WARMDOWN_RATIO=""
            S_HP="--num_iterations 300"
            S_RUNS="embnorm baseline train_mini_embnorm.py 1 - --variant baseline
embnorm layernorm train_mini_embnorm.py 1 - --variant layernorm
embnorm rmsnorm train_mini_embnorm.py 1 - --variant rmsnorm" ;;
        tiny)
            S_DESC="the demo's first half: --preset tiny baseline vs palm on CPU, $DEMO_TINY_ITERS iterations, 3 seeds"
            S_KIND=cpu; S_WARMDOWN_RATIO=$TINY_WARMDOWN_RATIO
            S_HP="--preset tiny --num_iterations $DEMO_TINY_ITERS --warmdown_iters $(tiny_warmdown "$DEMO_TINY_ITERS")"
            S_RUNS="tiny baseline train_gpt.py 1 - --preset tiny
tiny palm train_gpt_palm.py 1 - --preset tiny" ;;
        demo)
            S_DESC="the CPU default: prepare the data if missing, tiny (baseline vs palm, 3 seeds, $DEMO_TINY_ITERS iterations), embnorm ($DEMO_EMBNORM_ITERS iterations), then analyze.py -> <logs>/report.md"
            S_KIND=meta ;;
        smoke)
            S_DESC="every script for a few steps on CPU (train_gpt.py also as 2 gloo processes); implies --force"
            S_KIND=cpu; S_SEEDS="1"
            S_HP="--num_iterations 4"
            # small validation sets: the point is that every code path runs, not the numbers
            local g="--preset tiny --warmdown_iters 1 --val_loss_every 2 --val_tokens 8192" e="--val_seqs 32"
            S_RUNS="smoke baseline train_gpt.py 1 - $g
smoke baseline_2proc train_gpt.py 2 - $g --device_batch_size 8
smoke palm train_gpt_palm.py 1 - $g
smoke lmd_moderate train_gpt_lmd.py 1 - $g --lmd moderate
smoke depthwarm train_gpt_depthwarm.py 1 - $g
smoke curriculum train_gpt_curriculum.py 1 - $g
smoke embnorm_baseline train_mini_embnorm.py 1 - $e --variant baseline
smoke embnorm_layernorm train_mini_embnorm.py 1 - $e --variant layernorm
smoke embnorm_rmsnorm train_mini_embnorm.py 1 - $e --variant rmsnorm" ;;
        sweep)
            # One hyperparameter of one script (the arguments SCRIPT --param --values): each value is a
            # variant <param>=<value> of the stage sweep_<param>, which analyze.py reads as a sweep.
            S_DESC="one hyperparameter sweep: ./run_experiments.sh sweep SCRIPT --param NAME --values V1 V2 ... (below)"
            S_KIND=any; S_SEEDS="42"; S_WARMDOWN_RATIO=""
            if [[ $SWEEP_SCRIPT == train_gpt* ]]; then
                if [[ -n $PRESET ]]; then S_WARMDOWN_RATIO=$TINY_WARMDOWN_RATIO; else S_WARMDOWN_RATIO="$RECORD_WARMDOWN/$RECORD_ITERS"; fi
            fi
            local v
            for v in "${SWEEP_VALUES[@]}"; do
                S_RUNS+="sweep_$SWEEP_PARAM $SWEEP_PARAM=$v $SWEEP_SCRIPT - - --$SWEEP_PARAM $v"$'\n'
            done ;;
        *) return 1 ;;
    esac
}
STAGES="stage_a stage_b stage_c lmd embnorm tiny demo smoke sweep"

usage() {
    cat <<EOF
Usage: ./run_experiments.sh STAGE [options] [-- extra trainer flags]

Runs every (variant, seed) of STAGE as its own job into <logs>/<stage>/<variant>/seed_<S>/, printing
progress (run k of n, elapsed, ETA, latest val loss) and a final table; exits non-zero if any run is
not ok. Runs whose summary.json says ok (or diverged/oom: real outcomes) are skipped on a re-run; other
earlier attempts are moved aside to <logs>/.superseded/ and run again. Nothing is deleted.

Stages:
EOF
    local st
    for st in $STAGES; do
        define_stage "$st"
        printf '  %-8s %s\n' "$st" "$S_DESC"
        [[ $S_KIND == meta || $st == sweep ]] && continue
        printf '  %-8s   seeds: %s; flags: %s\n' "" "$S_SEEDS" "${S_HP:-(script defaults)}"
    done
    cat <<EOF

Sweeps:
  ./run_experiments.sh sweep SCRIPT --param NAME --values V1 V2 ... [--seeds LIST] [options] [-- flags]
  runs SCRIPT once per value and seed with --NAME VALUE into <logs>/sweep_NAME/NAME=VALUE/seed_<S>/
  (default seed 42; --preset, --iterations and the options below apply as to any stage). A run that
  diverges (NaN: status diverged) or crashes (oom, failed, timeout) is recorded so and the sweep goes
  on; the final table shows every value's state. The first value is the sweep's baseline for
  analyze.py's comparisons (<logs>/sweep_NAME/sweep.json); list the script's default first.
  e.g. ./run_experiments.sh sweep train_gpt.py --preset tiny --iterations 40 --param learning_rate --values 0.02 0.005 0.08 1e30

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
  --save-every K        checkpoint every K steps (train_gpt scripts), needed by --resume
  --force               rerun runs that finished; the old run directory is moved aside, not deleted
  --resume              continue unfinished runs from their checkpoints instead of starting over
  --dry-run             print the plan and every command; run and write nothing
  --timeout SECONDS     stop a run after this long (status timeout); 0 = no limit (default)
  --verbose             also stream every run's output (it always goes to stdout.log)
  --jobs N              CPU only: N runs side by side, each with cores/N threads (default 1; demo: 2)
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

Environment: CUDA_VISIBLE_DEVICES, when set, is kept; otherwise it is set to the first N GPUs (empty on
CPU) before any Python starts. DEMO_TINY_ITERS / DEMO_EMBNORM_ITERS set the demo's counts ($DEMO_TINY_ITERS / $DEMO_EMBNORM_ITERS).
Runs go seed by seed across the variants. More: docs/runner.md. Exit codes: 0 all runs ok, 1 some run not ok, 2 bad usage, 130 interrupted.
EOF
}

# ----------------------------------------------------------------------------- arguments
STAGE=""; LOGS=""; SEEDS=""; VARIANTS=""; NPROC=""; ITERS=""; PRESET=""; DEVICE=auto; COMPILE=auto
SAVE_EVERY=""; FORCE=0; RESUME=0; DRY=0; TIMEOUT=0; VERBOSE=0; LAUNCHER=auto; JOBS=""
NNODES=${NNODES:-1}; NODE_RANK=${NODE_RANK:-0}; RDZV_ENDPOINT=${RDZV_ENDPOINT:-}
RDZV_BACKEND=${RDZV_BACKEND:-c10d}; PYTHON=${PYTHON:-}; SCRIPTS_DIR="$ROOT"
EXTRA=()
SWEEP_SCRIPT=""; SWEEP_PARAM=""; SWEEP_VALUES=()
RUNNER_ARGV=$(printf '%q ' "$0" "$@")

need_value() { [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value (see --help)"; }
is_int() { [[ $1 =~ ^[0-9]+$ ]]; }

while (($#)); do
    if [[ $1 == --*=* ]]; then set -- "${1%%=*}" "${1#*=}" "${@:2}"; fi
    case $1 in
        -h|--help) usage; exit 0 ;;
        --logs) need_value "$@"; LOGS=$2; shift 2 ;;
        --seeds) need_value "$@"; SEEDS=${2//,/ }; shift 2 ;;
        --variants) need_value "$@"; VARIANTS=${2//,/ }; shift 2 ;;
        --gpus|--nproc|--nproc-per-node|--nproc_per_node) need_value "$@"; NPROC=$2; shift 2 ;;
        --iterations) need_value "$@"; ITERS=$2; shift 2 ;;
        --preset) need_value "$@"; PRESET=$2; shift 2 ;;
        --device) need_value "$@"; DEVICE=$2; shift 2 ;;
        --compile) COMPILE=1; shift ;;
        --no-compile) COMPILE=0; shift ;;
        --save-every) need_value "$@"; SAVE_EVERY=$2; shift 2 ;;
        --force) FORCE=1; shift ;;
        --resume) RESUME=1; shift ;;
        --dry-run) DRY=1; shift ;;
        --timeout) need_value "$@"; TIMEOUT=$2; shift 2 ;;
        --verbose|-v) VERBOSE=1; shift ;;
        --jobs|-j) need_value "$@"; JOBS=$2; shift 2 ;;
        --nnodes) need_value "$@"; NNODES=$2; shift 2 ;;
        --node-rank|--node_rank) need_value "$@"; NODE_RANK=$2; shift 2 ;;
        --rdzv-endpoint|--rdzv_endpoint) need_value "$@"; RDZV_ENDPOINT=$2; shift 2 ;;
        --rdzv-backend|--rdzv_backend) need_value "$@"; RDZV_BACKEND=$2; shift 2 ;;
        --launcher) need_value "$@"; LAUNCHER=$2; shift 2 ;;
        --python) need_value "$@"; PYTHON=$2; shift 2 ;;
        --scripts-dir) need_value "$@"; SCRIPTS_DIR=$2; shift 2 ;;
        --param) need_value "$@"; SWEEP_PARAM=$2; shift 2 ;;
        --values)  # every word up to the next option (commas also separate)
            shift
            while (($#)) && [[ $1 != --* ]]; do
                IFS=, read -r -a _vals <<<"$1"; SWEEP_VALUES+=("${_vals[@]}"); shift
            done
            ((${#SWEEP_VALUES[@]})) || die "--values needs at least one value, e.g. --values 0.01 0.02 0.04" ;;
        --) shift; EXTRA=("$@"); break ;;
        -*) die "unknown option '$1' (see --help; trainer flags go after --)" ;;
        *)
            if [[ $STAGE == sweep && -z $SWEEP_SCRIPT ]]; then SWEEP_SCRIPT=$1; shift; continue; fi
            [[ -z $STAGE ]] || die "one stage at a time: got '$STAGE' and '$1' (see --help)"
            STAGE=$1; shift ;;
    esac
done

[[ -n $STAGE ]] || { usage >&2; die "name a stage: ${STAGES// /, }"; }
if [[ $STAGE == sweep ]]; then
    [[ -n $SWEEP_SCRIPT ]] || die "sweep: name the script, e.g. ./run_experiments.sh sweep train_gpt.py --param learning_rate --values 0.01 0.02"
    [[ $SWEEP_SCRIPT =~ ^[A-Za-z0-9_.-]+\.py$ ]] || die "sweep: '$SWEEP_SCRIPT' should be a trainer script in the scripts directory, e.g. train_gpt.py"
    [[ -n $SWEEP_PARAM ]] || die "sweep: --param NAME is missing (the script's flag without dashes, e.g. --param learning_rate)"
    SWEEP_PARAM=${SWEEP_PARAM#--}
    [[ $SWEEP_PARAM =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "--param: '$SWEEP_PARAM' is not a flag name (letters, digits, _; e.g. learning_rate)"
    case $SWEEP_PARAM in seed|out_dir|device|resume|save_every|compile)
        die "--param: '$SWEEP_PARAM' is set by the runner itself; sweep a hyperparameter (seeds: --seeds)" ;; esac
    ((${#SWEEP_VALUES[@]})) || die "sweep: --values V1 V2 ... is missing"
    _seen=" "
    for v in "${SWEEP_VALUES[@]}"; do
        [[ $v =~ ^[A-Za-z0-9_.+-]+$ && $v != -* ]] || die "--values: '$v' is not a plain value (letters, digits, . _ + -; not starting with -)"
        [[ $_seen == *" $v "* ]] && die "--values: '$v' is given twice"
        _seen+="$v "
    done
    for a in "${EXTRA[@]}"; do
        [[ $a == "--$SWEEP_PARAM" || $a == "--$SWEEP_PARAM="* ]] && die "--$SWEEP_PARAM after -- would override the sweep's values; drop it"
    done
elif [[ -n $SWEEP_SCRIPT$SWEEP_PARAM || ${#SWEEP_VALUES[@]} -gt 0 ]]; then
    die "--param/--values belong to the sweep stage: ./run_experiments.sh sweep SCRIPT --param NAME --values ..."
fi
define_stage "$STAGE" || die "unknown stage '$STAGE'; stages: ${STAGES// /, } (see --help)"
for s in $SEEDS; do is_int "$s" || die "--seeds: '$s' is not a non-negative integer (e.g. --seeds 42,43,44)"; done
[[ -z $NPROC ]] || { is_int "$NPROC" && ((NPROC >= 1)); } || die "--gpus/--nproc: '$NPROC' is not a positive integer"
[[ -z $ITERS ]] || { is_int "$ITERS" && ((ITERS >= 1)); } || die "--iterations: '$ITERS' is not a positive integer"
[[ -z $SAVE_EVERY ]] || is_int "$SAVE_EVERY" || die "--save-every: '$SAVE_EVERY' is not a non-negative integer"
[[ -z $JOBS ]] || { is_int "$JOBS" && ((JOBS >= 1)); } || die "--jobs: '$JOBS' is not a positive integer"
[[ $TIMEOUT =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "--timeout: '$TIMEOUT' is not a number of seconds"
{ is_int "$NNODES" && ((NNODES >= 1)); } || die "--nnodes/NNODES: '$NNODES' is not a positive integer"
{ is_int "$NODE_RANK" && ((NODE_RANK < NNODES)); } || die "--node-rank/NODE_RANK: '$NODE_RANK' must be an integer below --nnodes ($NNODES)"
((NNODES == 1)) || [[ -n $RDZV_ENDPOINT ]] || die "--nnodes $NNODES needs --rdzv-endpoint HOST:PORT (or env RDZV_ENDPOINT)"
[[ -z $RDZV_ENDPOINT || $RDZV_ENDPOINT == *:* ]] || die "--rdzv-endpoint: '$RDZV_ENDPOINT' should be HOST:PORT"
[[ $RDZV_BACKEND == c10d || $RDZV_BACKEND == static ]] || die "--rdzv-backend: '$RDZV_BACKEND' must be c10d or static"
[[ $DEVICE == auto || $DEVICE == cpu || $DEVICE == cuda ]] || die "--device: '$DEVICE' must be auto, cpu or cuda"
[[ $LAUNCHER == auto || $LAUNCHER == torchrun || $LAUNCHER == python ]] || die "--launcher: '$LAUNCHER' must be auto, torchrun or python"
[[ -d $SCRIPTS_DIR ]] || die "--scripts-dir: '$SCRIPTS_DIR' is not a directory"
SCRIPTS_DIR=$(cd "$SCRIPTS_DIR" && pwd)
[[ $STAGE != sweep || -f $SCRIPTS_DIR/$SWEEP_SCRIPT ]] || die "sweep: $SCRIPTS_DIR/$SWEEP_SCRIPT does not exist (--scripts-dir?)"
((FORCE && RESUME)) && die "--force starts runs over and --resume continues them: pick one"

[[ $STAGE == smoke ]] && FORCE=1
if [[ -z $LOGS ]]; then
    if [[ $STAGE == smoke ]]; then LOGS=logs/smoke; else LOGS=experiment_logs; fi
fi
if ((DRY)); then
    if [[ $LOGS == /* ]]; then LOGS_ABS=$LOGS; else LOGS_ABS=$PWD/$LOGS; fi
else
    mkdir -p "$LOGS" || die "--logs: cannot create '$LOGS'"
    LOGS_ABS=$(cd "$LOGS" && pwd)
fi

# The interpreter (checked for torch below, once CUDA_VISIBLE_DEVICES is fixed).
if [[ -z $PYTHON ]]; then
    if command -v python >/dev/null 2>&1; then PYTHON=python; else PYTHON=python3; fi
fi
command -v "$PYTHON" >/dev/null 2>&1 || die "python interpreter '$PYTHON' not found (set --python or PYTHON, or run 'make env')"

# ----------------------------------------------------------------------------- GPUs, before any Python runs a trainer
SMI_GPUS=0
if command -v nvidia-smi >/dev/null 2>&1; then
    SMI_GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ') || SMI_GPUS=0
fi
if [[ -n ${CUDA_VISIBLE_DEVICES+x} ]]; then
    CVD_FROM_USER=1
    if [[ -z $CUDA_VISIBLE_DEVICES || $CUDA_VISIBLE_DEVICES == -1 ]]; then VISIBLE_GPUS=0
    else IFS=, read -r -a _cvd <<<"$CUDA_VISIBLE_DEVICES"; VISIBLE_GPUS=${#_cvd[@]}; fi
    ((SMI_GPUS < VISIBLE_GPUS)) && VISIBLE_GPUS=$SMI_GPUS
else
    CVD_FROM_USER=0; VISIBLE_GPUS=$SMI_GPUS
fi

PLAN_NOTE=""
if [[ $DEVICE == auto ]]; then
    if [[ $S_KIND == cpu || $S_KIND == meta ]]; then DEVICE=cpu   # the CPU stages stay on CPU
    elif ((VISIBLE_GPUS > 0)); then DEVICE=cuda
    elif [[ $S_KIND == gpu && -z $PRESET && $DRY == 1 ]]; then
        DEVICE=cuda; PLAN_NOTE="no GPU here: showing the commands as they would run on GPUs"
    else DEVICE=cpu; fi
fi
if [[ $DEVICE == cuda ]]; then
    NPROC_DEFAULT=$S_GPUS
else
    NPROC_DEFAULT=1
    if [[ $S_KIND == gpu && -z $PRESET ]]; then
        die "stage $STAGE trains the 124M model and wants $S_GPUS GPU(s), but nvidia-smi shows none; add --preset tiny to run its design on CPU, or run the demo stage"
    fi
fi
NPROC=${NPROC:-$NPROC_DEFAULT}
if [[ $DEVICE == cuda && -z $PLAN_NOTE ]] && ((!DRY)); then
    ((VISIBLE_GPUS >= NPROC)) || die "stage $STAGE wants $NPROC GPU(s) per node but this node shows $VISIBLE_GPUS; pass --gpus $VISIBLE_GPUS (gradient accumulation keeps the global batch)"
fi
if [[ $DEVICE == cuda ]]; then
    if ((!CVD_FROM_USER)); then CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((NPROC - 1))); fi
else
    CUDA_VISIBLE_DEVICES=""
fi
export CUDA_VISIBLE_DEVICES
if [[ -z $JOBS ]]; then
    # The demo's small CPU models: two 1-thread runs side by side match one 2-thread run on an idle
    # machine and degrade far more gracefully on a busy one (docs/embnorm.md, docs/runner.md).
    JOBS=1
    [[ $STAGE == demo && $DEVICE == cpu ]] && (($(nproc) >= 2)) && JOBS=2
fi
if ((JOBS > 1)); then
    [[ $DEVICE == cpu ]] || die "--jobs runs CPU runs side by side; GPU runs take their GPUs one run after another"
    ((NNODES == 1)) || die "--jobs and --nnodes do not mix: every node must run the same run at the same time"
    if [[ -z ${OMP_NUM_THREADS:-} ]]; then
        # share the cores: each run's torch uses this many threads
        OMP_NUM_THREADS=$(($(nproc) / JOBS)); ((OMP_NUM_THREADS >= 1)) || OMP_NUM_THREADS=1
        export OMP_NUM_THREADS
    fi
fi
export PYTHONUNBUFFERED=1   # lines reach stdout.log as they are printed: the progress monitor reads them
# The first Python this script starts, after the environment is fixed; find_spec does not import torch.
if ((!DRY)); then
    "$PYTHON" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torch") is None)' ||
        die "'$PYTHON' has no torch; run 'make env' and use .venv/bin/python (--python or PYTHON)"
fi

# ----------------------------------------------------------------------------- the plan
P_STAGE=(); P_VARIANT=(); P_SCRIPT=(); P_NPROC=(); P_SEED=(); P_ARGS=(); P_ACTION=(); P_DIR=(); P_PREV=()

has_flag() {  # has_flag --name ARGS... : is --name (or --name=...) among ARGS
    local f=$1; shift
    local a
    for a in "$@"; do [[ $a == "$f" || $a == "$f="* ]] && return 0; done
    return 1
}

selected_variant() {
    [[ -z $VARIANTS ]] && return 0
    local v
    for v in $VARIANTS; do [[ $v == "$1" ]] && return 0; done
    return 1
}

# Every run of one stage definition into the plan (define_stage must have been called).
plan_stage() {
    local stage_dir variant script nproc seeds rest line
    local -a hp stage_hp extra_hp vargs args Q_KEY=() Q_STAGE=() Q_VARIANT=() Q_SCRIPT=() Q_NPROC=() Q_SEED=() Q_ARGS=()
    local vpos=0
    read -r -a stage_hp <<<"$S_HP"
    extra_hp=()
    if [[ -n $ITERS ]]; then
        extra_hp=(--num_iterations "$ITERS")
        if [[ -n $S_WARMDOWN_RATIO ]]; then
            local num=${S_WARMDOWN_RATIO%/*} den=${S_WARMDOWN_RATIO#*/}
            extra_hp+=(--warmdown_iters $(((ITERS * num + den / 2) / den)))
        fi
    fi
    while read -r stage_dir variant script nproc seeds rest; do
        [[ -z $stage_dir ]] && continue
        selected_variant "$variant" || continue
        read -r -a vargs <<<"$rest"
        hp=("${stage_hp[@]}")
        # --preset replaces the stage's model-scale flags; only the train_gpt scripts have presets.
        if [[ -n $PRESET && $script == train_gpt* ]]; then hp=(--preset "$PRESET"); fi
        hp+=("${extra_hp[@]}")
        [[ $nproc == - ]] && nproc=$NPROC
        [[ $seeds == - ]] && seeds=${SEEDS:-$S_SEEDS}
        # Flags later on the line win, and a flag given twice is confusing: keep each flag's last word.
        args=()
        local -a merged=("${hp[@]}" "${vargs[@]}")
        local i=0 key
        while ((i < ${#merged[@]})); do
            key=${merged[i]}
            if [[ $key == --* ]] && ((i + 1 < ${#merged[@]})) && [[ ${merged[i + 1]} != --* ]]; then
                if ! has_flag "$key" "${merged[@]:i+2}" && ! has_flag "$key" "${EXTRA[@]}"; then args+=("$key" "${merged[i + 1]}"); fi
                ((i += 2))
            else
                if ! has_flag "$key" "${merged[@]:i+1}" && ! has_flag "$key" "${EXTRA[@]}"; then args+=("$key"); fi
                ((i += 1))
            fi
        done
        if [[ $script == train_gpt* ]]; then
            if [[ $COMPILE == 1 || ($COMPILE == auto && $DEVICE == cuda && $S_KIND == gpu) ]]; then args+=(--compile); fi
            [[ -n $SAVE_EVERY ]] && args+=(--save_every "$SAVE_EVERY")
        fi
        args+=(--device "$DEVICE" "${EXTRA[@]}")
        local seed pos=0
        for seed in $seeds; do
            # sort key: the seed's position, then the variant's: runs go seed by seed
            Q_KEY+=("$(printf '%06d %06d' "$pos" "$vpos")")
            Q_STAGE+=("$stage_dir"); Q_VARIANT+=("$variant"); Q_SCRIPT+=("$script")
            Q_NPROC+=("$nproc"); Q_SEED+=("$seed"); Q_ARGS+=("$(printf '%q ' "${args[@]}")")
            ((pos++))
        done
        ((vpos++))
    done <<<"$S_RUNS"
    # Seed by seed (baseline 42, palm 42, baseline 43, ...), not variant by variant: a drift of the
    # machine's speed during the stage (other jobs, heat, a noisy neighbour) then falls on every
    # variant alike instead of on whichever ran last, which would bias the time metrics.
    local q
    while read -r _ _ q; do
        P_STAGE+=("${Q_STAGE[q]}"); P_VARIANT+=("${Q_VARIANT[q]}"); P_SCRIPT+=("${Q_SCRIPT[q]}")
        P_NPROC+=("${Q_NPROC[q]}"); P_SEED+=("${Q_SEED[q]}"); P_ARGS+=("${Q_ARGS[q]}")
        P_DIR+=("$LOGS_ABS/${Q_STAGE[q]}/${Q_VARIANT[q]}/seed_${Q_SEED[q]}")
        P_ACTION+=(""); P_PREV+=("")
    done < <(for q in "${!Q_KEY[@]}"; do printf '%s %s\n' "${Q_KEY[q]}" "$q"; done | sort)
}

case $STAGE in
    demo)
        why=", sized for about 10 minutes on 2 CPU cores (docs/runner.md)"; [[ -n $ITERS ]] && why=" (--iterations)"
        note "demo: tiny baseline vs palm at ${ITERS:-$DEMO_TINY_ITERS} iterations (the preset's own: 150) and the embnorm study at ${ITERS:-$DEMO_EMBNORM_ITERS} (its design: 300)$why"
        define_stage tiny
        if [[ ! -f $SCRIPTS_DIR/train_gpt_palm.py ]]; then
            note "note: train_gpt_palm.py is not here yet; the demo runs the tiny baseline alone"
            S_RUNS=$(grep -v ' palm ' <<<"$S_RUNS")
        fi
        plan_stage
        define_stage embnorm
        S_HP="--num_iterations $DEMO_EMBNORM_ITERS"
        if ((${ITERS:-$DEMO_EMBNORM_ITERS} != 300)); then
            note "note: the demo's embnorm study uses ${ITERS:-$DEMO_EMBNORM_ITERS} iterations, written to embnorm_demo/ (the study's design is 300: ./run_experiments.sh embnorm)"
            S_RUNS=${S_RUNS//embnorm /embnorm_demo }
        fi
        plan_stage ;;
    *) plan_stage ;;
esac
N_PLANNED=${#P_SEED[@]}
((N_PLANNED > 0)) || die "nothing to run: no variant of $STAGE matches --variants '$VARIANTS'"

# Scripts that resume from checkpoints (the contract's --resume RUN_DIR).
supports_resume() { [[ $1 == train_gpt* ]]; }

launch_cmd() {  # launch_cmd i -> fills CMD (run from $SCRIPTS_DIR)
    local i=$1
    local -a targs
    eval "targs=(${P_ARGS[i]})"
    local nproc=${P_NPROC[i]} world
    world=$((nproc * NNODES))
    CMD=()
    if [[ $LAUNCHER == torchrun ]] || { [[ $LAUNCHER == auto ]] && ((world > 1)); }; then
        CMD=("$PYTHON" -m torch.distributed.run)
        if ((NNODES == 1)); then
            CMD+=(--standalone --nproc_per_node="$nproc")
        elif [[ $RDZV_BACKEND == static ]]; then
            CMD+=(--nnodes="$NNODES" --node_rank="$NODE_RANK" --nproc_per_node="$nproc"
                  --master_addr="${RDZV_ENDPOINT%:*}" --master_port="${RDZV_ENDPOINT##*:}")
        else
            # One rendezvous id per run, the same on every node; global ranks are assigned by the rendezvous.
            CMD+=(--nnodes="$NNODES" --nproc_per_node="$nproc" --rdzv_backend=c10d
                  --rdzv_endpoint="$RDZV_ENDPOINT" --rdzv_id="${P_STAGE[i]}-${P_VARIANT[i]}-seed${P_SEED[i]}")
        fi
    else
        CMD=("$PYTHON")
    fi
    CMD+=("${P_SCRIPT[i]}" --seed "${P_SEED[i]}" --out_dir "${P_DIR[i]}" "${targs[@]}")
    if [[ ${P_ACTION[i]} == resume ]]; then CMD+=(--resume "${P_DIR[i]}"); fi
}

# A run in progress holds <run dir>/.runner.lock ("host pid" of the runner process running it).
LOCK_NAME=.runner.lock
lock_holder() {  # lock_holder DIR -> prints who runs it, if anyone alive does
    local f=$1/$LOCK_NAME host pid
    [[ -f $f ]] || return 1
    read -r host pid <"$f" || return 1
    if [[ $host == "$HOSTNAME" ]]; then
        kill -0 "$pid" 2>/dev/null || return 1  # a stale lock: its runner is gone
        echo "being run by runner process $pid on this host"
    else
        echo "being run on $host (if it is not, delete $f)"
    fi
}

# What to do with each planned run, from what its directory holds.
decide() {
    local i=$1 dir st holder
    dir=${P_DIR[i]}
    if [[ ! -e $dir ]]; then P_ACTION[i]=run; return; fi
    if ((NODE_RANK == 0)) && holder=$(lock_holder "$dir"); then
        P_ACTION[i]=busy; P_PREV[i]=$holder; return
    fi
    st=$("$PYTHON" "$HELPER" status "$dir")
    case $st in
        ok|diverged|oom)
            if ((FORCE)); then P_ACTION[i]=rerun; else P_ACTION[i]=skip; fi ;;
        *)  # failed, timeout, interrupted, none (no summary: killed or still running elsewhere), corrupt
            if ((RESUME)) && supports_resume "${P_SCRIPT[i]}" && [[ -n $(ls -A "$dir/checkpoints" 2>/dev/null) ]]; then
                P_ACTION[i]=resume
            elif [[ $st == none && -z $(ls -A "$dir" 2>/dev/null) ]]; then
                P_ACTION[i]=run   # an empty directory holds nothing to keep
            else
                P_ACTION[i]=rerun
            fi ;;
    esac
    P_PREV[i]=$st
}

for ((i = 0; i < N_PLANNED; i++)); do decide "$i"; done

N_TODO=0
for ((i = 0; i < N_PLANNED; i++)); do [[ ${P_ACTION[i]} == skip || ${P_ACTION[i]} == busy ]] || ((N_TODO++)); done

# ----------------------------------------------------------------------------- printing the plan
cmd_string() {  # the exact command of run i, as a shell line
    launch_cmd "$1"
    local line
    printf -v line '%q ' "${CMD[@]}"
    local cvd
    if [[ $CUDA_VISIBLE_DEVICES =~ ^[0-9,]+$ ]]; then cvd=$CUDA_VISIBLE_DEVICES; else printf -v cvd '%q' "$CUDA_VISIBLE_DEVICES"; fi
    printf 'cd %q && CUDA_VISIBLE_DEVICES=%s %s' "$SCRIPTS_DIR" "$cvd" "${line% }"
}

note "== $STAGE: $N_PLANNED run(s), $N_TODO to run; logs: $LOGS_ABS"
note "   device: $DEVICE; CUDA_VISIBLE_DEVICES='$CUDA_VISIBLE_DEVICES'; nodes: $NNODES (this is node $NODE_RANK)${PLAN_NOTE:+; $PLAN_NOTE}"
((JOBS > 1)) && note "   $JOBS runs at a time, OMP_NUM_THREADS=$OMP_NUM_THREADS each"
if ((DRY)); then
    for ((i = 0; i < N_PLANNED; i++)); do
        rel=${P_DIR[i]#"$LOGS_ABS"/}
        case ${P_ACTION[i]} in
            skip) note "skip    $rel (summary.json says ${P_PREV[i]}; --force reruns it)" ;;
            busy) note "busy    $rel (${P_PREV[i]})" ;;
            rerun) note "rerun   $rel (previous attempt: ${P_PREV[i]}; it would be moved to $LOGS_ABS/.superseded/)"
                   note "        $(cmd_string "$i")" ;;
            *) note "${P_ACTION[i]}$(printf '%*s' $((8 - ${#P_ACTION[i]})) '')$rel"
               note "        $(cmd_string "$i")" ;;
        esac
    done
    if [[ $STAGE == demo ]]; then
        note "then    cd $(printf '%q' "$SCRIPTS_DIR") && $(printf '%q ' "$PYTHON" analyze.py --logs "$LOGS_ABS" --out "$LOGS_ABS/report.md")"
    fi
    note "(dry run: nothing was run or written)"
    exit 0
fi

# ----------------------------------------------------------------------------- data the CPU stages need
ensure_shakespeare() {
    has_flag --input_bin "${EXTRA[@]}" && return 0
    [[ -f $SCRIPTS_DIR/data/shakespeare_char/meta.json ]] && return 0
    note "== preparing the Shakespeare data: (cd $SCRIPTS_DIR && $PYTHON data/prepare_shakespeare.py)"
    (cd "$SCRIPTS_DIR" && "$PYTHON" data/prepare_shakespeare.py) ||
        die "preparing the data failed (see above); run 'python data/prepare_shakespeare.py' by hand"
}
if ((N_TODO > 0)) && ((NODE_RANK == 0)); then
    case $STAGE in demo|smoke|tiny|embnorm) ensure_shakespeare ;; esac
    if [[ -n $PRESET ]]; then ensure_shakespeare; fi
fi

# ----------------------------------------------------------------------------- experiment.json, one per <stage>/<variant>
write_experiments() {
    local i j key done_keys=" "
    for ((i = 0; i < N_PLANNED; i++)); do
        [[ ${P_ACTION[i]} == skip || ${P_ACTION[i]} == busy ]] && continue
        key="${P_STAGE[i]}/${P_VARIANT[i]}"
        [[ $done_keys == *" $key "* ]] && continue
        done_keys+="$key "
        local -a cmds=() seeds=() targs=()
        for ((j = 0; j < N_PLANNED; j++)); do
            [[ "${P_STAGE[j]}/${P_VARIANT[j]}" == "$key" ]] || continue
            seeds+=("${P_SEED[j]}")
            [[ ${P_ACTION[j]} == skip || ${P_ACTION[j]} == busy ]] && continue
            cmds+=(--command "${P_SEED[j]}=$(cmd_string "$j")")
        done
        eval "targs=(${P_ARGS[i]})"
        "$PYTHON" "$HELPER" experiment "$LOGS_ABS/$key" --stage "${P_STAGE[i]}" --variant "${P_VARIANT[i]}" \
            --script "${P_SCRIPT[i]}" --seeds "${seeds[*]}" --nproc "${P_NPROC[i]}" --nnodes "$NNODES" \
            --device "$DEVICE" --cuda-visible-devices "$CUDA_VISIBLE_DEVICES" --repo "$SCRIPTS_DIR" \
            --jobs "$JOBS" --omp-num-threads "${OMP_NUM_THREADS:-}" \
            --runner-argv "$RUNNER_ARGV" "${cmds[@]}" -- "${targs[@]}" ||
            note "warning: could not write $LOGS_ABS/$key/experiment.json"
    done
}

# ----------------------------------------------------------------------------- running
# State shared by the runs (each run is a background subshell, so plain variables cannot carry it):
#   rows.tsv       one line per run for the final table
#   durations.tsv  "stage<TAB>seconds" of finished runs, for the ETA
#   pids/<i>       the process group leader (timeout) of a running run, for Ctrl-C
#   interrupted    exists once the user asked to stop
STATE=$(mktemp -d "${TMPDIR:-/tmp}/run_experiments.XXXXXX")
mkdir -p "$STATE/pids"
: >"$STATE/rows.tsv"; : >"$STATE/durations.tsv"
trap 'rm -rf "$STATE"' EXIT
INTERRUPTED=0

# shellcheck disable=SC2317  # invoked by the trap
on_signal() {
    ((INTERRUPTED++))
    : >"$STATE/interrupted"
    local f pid
    if ((INTERRUPTED == 1)); then
        printf '\n== interrupted: stopping the running run(s) (again to kill them at once)\n'
    fi
    for f in "$STATE"/pids/*; do
        [[ -f $f ]] || continue
        pid=$(<"$f")
        # timeout leads the run's process group and forwards SIGTERM to all of it
        if ((INTERRUPTED == 1)); then kill -TERM "$pid" 2>/dev/null
        else kill -KILL -- "-$pid" 2>/dev/null; kill -KILL "$pid" 2>/dev/null; fi
    done
}
trap on_signal INT TERM

estimate_run() {  # estimate_run i -> seconds a run of i's stage takes, from finished ones ("" if none)
    awk -F'\t' -v st="${P_STAGE[$1]}" '$1 == st {s += $2; n++} {a += $2; m++}
        END {if (n) print int(s / n); else if (m) print int(a / m)}' "$STATE/durations.tsv"
}

# eta i run_elapsed step total since0 step0 -> seconds until the stage ends ("" if unknown); the run's
# pace is measured from the first step line it printed (step0, since0 seconds into the run), so the
# start-up (imports, data, compilation) does not count as steps
eta() {
    local i=$1 el=$2 step=$3 total=$4 since0=${5:-0} step0=${6:-0} cur="" est j rest=0
    if [[ -n $step && -n $total ]] && ((step > step0 && total > 0 && el > since0)); then
        cur=$(((el - since0) * (total - step) / (step - step0)))
    else
        est=$(estimate_run "$i")
        [[ -n $est ]] && cur=$((est > el ? est - el : 0))
    fi
    [[ -z $cur ]] && { echo ""; return; }
    for ((j = i + 1; j < N_PLANNED; j++)); do
        [[ ${P_ACTION[j]} == skip || ${P_ACTION[j]} == busy ]] && continue
        est=$(estimate_run "$j")
        [[ -z $est ]] && est=$((el + cur))
        ((rest += est))
    done
    echo $((cur + rest / JOBS))
}

STAGE_T0=$(now)

move_aside() {  # move_aside i : the previous attempt goes to <logs>/.superseded/<stage>/<variant>/seed_S.<utc>
    local i=$1 dest
    dest="$LOGS_ABS/.superseded/${P_STAGE[i]}/${P_VARIANT[i]}/seed_${P_SEED[i]}.$(utc_stamp)"
    while [[ -e $dest ]]; do dest+="x"; done
    mkdir -p "$(dirname "$dest")" && mv "${P_DIR[i]}" "$dest" || return 1
    note "   previous attempt (${P_PREV[i]}) moved to ${dest#"$LOGS_ABS"/}"
}

row() { local IFS=$'\t'; printf '%s\t%s\n' "$ROW_INDEX" "$*" >>"$STATE/rows.tsv"; }  # ROW_INDEX: plan order

run_one() {  # run_one i k : run plan entry i as run k of N_TODO (in a background subshell)
    local i=$1 k=$2 ROW_INDEX=$1 dir label log t0 rc el line last_val="" last_print step total val eta_s child what step0="" since0=0
    dir=${P_DIR[i]}
    label="[$k/$N_TODO] ${P_STAGE[i]}/${P_VARIANT[i]} seed ${P_SEED[i]}"
    if ((NODE_RANK == 0)); then
        case ${P_ACTION[i]} in
            rerun) move_aside "$i" || { note "$label: cannot move ${P_DIR[i]} aside; not run"
                                        row "${P_STAGE[i]}/${P_VARIANT[i]}" "${P_SEED[i]}" "not run" failed "" "" "cannot move the old run aside"
                                        return 1; } ;;
            resume)
                if [[ -f $dir/summary.json ]]; then
                    mv "$dir/summary.json" "$dir/summary.${P_PREV[i]}-$(utc_stamp).json"
                fi ;;
        esac
    fi
    mkdir -p "$dir" || { note "$label: cannot create $dir"; row "${P_STAGE[i]}/${P_VARIANT[i]}" "${P_SEED[i]}" "not run" failed "" "" "cannot create the run directory"; return 1; }
    ((NODE_RANK == 0)) && printf '%s %s\n' "$HOSTNAME" "$BASHPID" >"$dir/$LOCK_NAME"
    if ((NODE_RANK == 0)); then log=$dir/stdout.log; else log=$dir/stdout.node$NODE_RANK.log; fi
    launch_cmd "$i"
    local offset=0
    [[ -f $log ]] && offset=$(stat -c %s "$log")
    {
        printf '=== run_experiments.sh %s: %s %s/%s seed %s (node %s)\n' "$(date -u +%FT%TZ)" "${P_ACTION[i]}" \
            "${P_STAGE[i]}" "${P_VARIANT[i]}" "${P_SEED[i]}" "$NODE_RANK"
        printf '=== %s\n' "$(cmd_string "$i")"
    } >>"$log"
    note "$label: ${P_ACTION[i]} (stage elapsed $(fmt_dur $(($(now) - STAGE_T0))))"
    t0=$(now); last_print=$t0
    local t0_precise=$EPOCHREALTIME t1_precise
    if [[ ! -f $SCRIPTS_DIR/${P_SCRIPT[i]} ]]; then
        printf 'FileNotFoundError: %s is not in %s (the trainer script does not exist yet?)\n' "${P_SCRIPT[i]}" "$SCRIPTS_DIR" >>"$log"
        rc=127
    else
        # timeout puts the run in its own process group and forwards a SIGTERM to all of it.
        (cd "$SCRIPTS_DIR" && exec timeout --kill-after=30 "$TIMEOUT" "${CMD[@]}") >>"$log" 2>&1 </dev/null &
        child=$!
        echo "$child" >"$STATE/pids/$i"
        [[ -f $STATE/interrupted ]] && kill -TERM "$child" 2>/dev/null  # Ctrl-C came while it was starting
        local tail_pid=""
        if ((VERBOSE)); then tail -c +$((offset + 1)) -f --pid="$child" "$log" & tail_pid=$!; fi
        local poll=0.05
        while kill -0 "$child" 2>/dev/null; do
            sleep "$poll"
            [[ $poll == "$POLL_S" ]] || poll=$(case $poll in 0.05) echo 0.1 ;; 0.1) echo 0.2 ;; *) echo "$POLL_S" ;; esac)
            line=$(tail -c 65536 "$log" 2>/dev/null | grep -a -E '^step:[0-9]+/[0-9]+ ' | tail -n 1)
            [[ -z $line ]] && { ((($(now) - last_print) >= HEARTBEAT_S)) || continue; }
            step="" total="" val=""
            if [[ $line =~ ^step:([0-9]+)/([0-9]+)\  ]]; then step=${BASH_REMATCH[1]}; total=${BASH_REMATCH[2]}; fi
            if [[ $line =~ val_loss:([^ ]+) ]]; then val=${BASH_REMATCH[1]}; fi
            el=$(($(now) - t0))
            if [[ -n $step && -z $step0 ]]; then step0=$step; since0=$el; fi
            if [[ -n $val && $line != "$last_val" ]] || ((($(now) - last_print) >= HEARTBEAT_S)); then
                [[ -n $val ]] && last_val=$line
                eta_s=$(eta "$i" "$el" "$step" "$total" "$since0" "$step0")
                what="${step:+step $step/$total }${val:+val_loss $val }"
                note "$label: ${what:-"running, no step line yet "}| run $(fmt_dur "$el") | stage $(fmt_dur $(($(now) - STAGE_T0)))${eta_s:+ | ETA $(fmt_dur "$eta_s")}"
                last_print=$(now)
            fi
        done
        wait "$child"; rc=$?
        rm -f "$STATE/pids/$i"
        [[ -n $tail_pid ]] && wait "$tail_pid" 2>/dev/null
    fi
    t1_precise=$EPOCHREALTIME
    el=$(($(now) - t0))
    printf '=== run_experiments.sh %s: exit code %s after %ss\n' "$(date -u +%FT%TZ)" "$rc" "$el" >>"$log"
    local -a fin=(--log "$log" --exit-code "$rc" --elapsed "$el" --t0 "$t0_precise" --t1 "$t1_precise"
                  --timeout "$TIMEOUT" --script "${P_SCRIPT[i]}" --variant "${P_VARIANT[i]}" --seed "${P_SEED[i]}"
                  --repo "$SCRIPTS_DIR")
    [[ -f $STATE/interrupted ]] && fin+=(--interrupted)
    local desc status vloss wall err
    if ((NODE_RANK == 0)); then
        # Under several nodes, global rank 0 may live on another node and finish a moment later.
        if ((NNODES > 1 && rc == 0)); then
            local w; for ((w = 0; w < 60; w++)); do [[ -f $dir/summary.json ]] && break; sleep 0.5; done
        fi
        desc=$("$PYTHON" "$HELPER" finish "$dir" "${fin[@]}") ||
            note "$label: warning: runner/runinfo.py could not record the run's summary.json"
        rm -f "$dir/$LOCK_NAME"
    else
        desc=$("$PYTHON" "$HELPER" describe "$dir")
        if [[ $desc == none* ]]; then
            local st=failed; ((rc == 0)) && st=ok
            desc="$st"$'\x1f\x1f'"$el"$'\x1f'"exit code $rc on node $NODE_RANK (node 0 writes summary.json)"
        fi
    fi
    IFS=$'\x1f' read -r status vloss wall err <<<"$desc"
    if [[ $status == ok ]]; then
        note "$label: ok${vloss:+ val_loss $vloss} in $(fmt_dur "$el")"
    else
        note "$label: ${status^^} after $(fmt_dur "$el"): $err"
        note "$label: log: $log"
    fi
    printf '%s\t%s\n' "${P_STAGE[i]}" "$el" >>"$STATE/durations.tsv"
    row "${P_STAGE[i]}/${P_VARIANT[i]}" "${P_SEED[i]}" "${P_ACTION[i]}" "$status" "$vloss" "${wall:-$el}" "$err"
}

# <logs>/sweep_<param>/sweep.json: what analyze.py compares against (the first value); an earlier one
# is kept as sweep.<utc>.json, and a sweep of another script into the same directory is refused.
write_sweep_json() {
    local dir=$LOGS_ABS/sweep_$SWEEP_PARAM f v vals="" old
    f=$dir/sweep.json
    mkdir -p "$dir" || return 1
    if [[ -f $f ]]; then
        old=$(grep -o '"script": "[^"]*"' "$f")
        if [[ -n $old && $old != "\"script\": \"$SWEEP_SCRIPT\"" ]]; then
            note "sweep: $f is a sweep of another script (${old#*: }); use another --logs directory"; return 2
        fi
        mv "$f" "$dir/sweep.$(utc_stamp).json" || return 1
    fi
    for v in "${SWEEP_VALUES[@]}"; do vals+="${vals:+, }\"$v\""; done
    printf '{"param": "%s", "script": "%s", "values": [%s], "baseline": "%s=%s", "written": "%s"}\n' \
        "$SWEEP_PARAM" "$SWEEP_SCRIPT" "$vals" "$SWEEP_PARAM" "${SWEEP_VALUES[0]}" "$(date -u +%FT%TZ)" >"$f"
}
if [[ $STAGE == sweep ]] && ((NODE_RANK == 0)); then
    write_sweep_json; _rc=$?
    ((_rc == 2)) && exit 2
    ((_rc == 0)) || note "warning: could not write $LOGS_ABS/sweep_$SWEEP_PARAM/sweep.json"
fi
if ((N_TODO > 0 && NODE_RANK == 0)); then write_experiments; fi

running() { jobs -pr | wc -l; }
k=0
for ((i = 0; i < N_PLANNED; i++)); do
    ROW_INDEX=$i
    if [[ ${P_ACTION[i]} == skip ]]; then
        IFS=$'\x1f' read -r status vloss wall err <<<"$("$PYTHON" "$HELPER" describe "${P_DIR[i]}")"
        row "${P_STAGE[i]}/${P_VARIANT[i]}" "${P_SEED[i]}" skipped "$status" "$vloss" "$wall" "$err"
        note "skip ${P_STAGE[i]}/${P_VARIANT[i]} seed ${P_SEED[i]}: summary.json says $status (--force reruns it)"
        continue
    fi
    if [[ ${P_ACTION[i]} == busy ]]; then
        row "${P_STAGE[i]}/${P_VARIANT[i]}" "${P_SEED[i]}" "not run" "running" "" "" "${P_PREV[i]}"
        note "busy ${P_STAGE[i]}/${P_VARIANT[i]} seed ${P_SEED[i]}: ${P_PREV[i]}"
        continue
    fi
    # a free slot (waiting is interruptible: Ctrl-C runs the trap at once)
    while (($(running) >= JOBS)) && ((!INTERRUPTED)); do wait -n 2>/dev/null; done
    if ((INTERRUPTED)); then
        row "${P_STAGE[i]}/${P_VARIANT[i]}" "${P_SEED[i]}" "not run" "-" "" "" "interrupted before it started"
        continue
    fi
    ((k++))
    run_one "$i" "$k" &
done
# Every run to its end (a trap interrupts wait; the runs then record themselves as interrupted).
while (($(running) > 0)); do wait 2>/dev/null; done

note ""
note "== $STAGE: finished in $(fmt_dur $(($(now) - STAGE_T0))); logs: $LOGS_ABS"
# the table in plan order (runs side by side finish in any order)
sort -t $'\t' -k1,1n -s "$STATE/rows.tsv" | cut -f2- >"$STATE/table.tsv"
"$PYTHON" "$HELPER" table "$STATE/table.tsv"
N_BAD=$(awk -F'\t' '$4 != "ok"' "$STATE/table.tsv" | wc -l)

if [[ $STAGE == demo ]] && ((!INTERRUPTED && NODE_RANK == 0)); then
    note ""
    if [[ -f $SCRIPTS_DIR/analyze.py ]]; then
        note "== analysis: (cd $SCRIPTS_DIR && $PYTHON analyze.py --logs $LOGS_ABS --out $LOGS_ABS/report.md)"
        if (cd "$SCRIPTS_DIR" && "$PYTHON" analyze.py --logs "$LOGS_ABS" --out "$LOGS_ABS/report.md"); then
            note "== the report: $LOGS_ABS/report.md"
        else
            note "== analyze.py failed (see above); the runs are in $LOGS_ABS"; ((N_BAD++))
        fi
    else
        note "== analyze.py is not here yet: no report written; the runs are in $LOGS_ABS"; ((N_BAD++))
    fi
fi

((INTERRUPTED)) && exit 130
((N_BAD == 0)) || exit 1
exit 0
}
