#!/usr/bin/env bash
# run_experiments.sh - run the seeded stages of this project's experiments, never losing a result.
#
#   ./run_experiments.sh demo                    # CPU: data, tiny baseline vs palm, embnorm study, report
#   ./run_experiments.sh smoke --logs /tmp/smk   # every script for a few steps on CPU
#   ./run_experiments.sh stage_c --dry-run       # print every command of the 8-GPU stage, run nothing
#   ./run_experiments.sh stage_a                 # 8 GPUs: the eight 1-GPU runs go at once (--no-pack: in turn)
#   ./run_experiments.sh preflight stage_b       # will the stage run here, and what will it cost?
#   # several nodes: the same command on every node (a shared --logs directory), node 0 first
#   NNODES=2 NODE_RANK=0 RDZV_ENDPOINT=node0:29500 ./run_experiments.sh stage_c
#   ./run_experiments.sh sweep train_gpt.py --param learning_rate --values 0.02 0.01 0.04 --preset tiny
#   ./run_experiments.sh --help                  # the stages and their settings
#
# This script only fixes the environment and hands over to the runner package (runner/, Python, never
# imports torch): CUDA_VISIBLE_DEVICES must be fixed before any Python process starts, and no process
# that imported torch may launch the workers (a launcher that had initialised CUDA broke every GPU
# worker of the seed study). Stages are plans/<stage>.toml. Usage notes: docs/runner.md.
set -uo pipefail

# One compound command: bash reads all of it before running any of it, so editing or updating this
# file (git pull) while a stage runs cannot change the running runner.
{

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

die() { printf 'run_experiments.sh: %s\n' "$*" >&2; exit 2; }

# The interpreter for the runner and the trainers: --python PATH, else $PYTHON, else python on PATH.
PYTHON=${PYTHON:-}
prev=""
for arg in "$@"; do
    [[ $arg == -- ]] && break
    if [[ $prev == --python ]]; then PYTHON=$arg; fi
    if [[ $arg == --python=* ]]; then PYTHON=${arg#--python=}; fi
    prev=$arg
done
if [[ -z $PYTHON ]]; then
    if command -v python >/dev/null 2>&1; then PYTHON=python; else PYTHON=python3; fi
fi
command -v "$PYTHON" >/dev/null 2>&1 || die "python interpreter '$PYTHON' not found (set --python or PYTHON, or run 'make env')"

# ----------------------------------------------------------------------------- GPUs, before any Python starts
# CUDA_VISIBLE_DEVICES, when the user set it, is kept; otherwise it becomes every GPU nvidia-smi lists
# (empty without GPUs). The runner then gives each run its own subset of it.
SMI_GPUS=0
if command -v nvidia-smi >/dev/null 2>&1; then
    SMI_GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ') || SMI_GPUS=0
fi
if [[ -n ${CUDA_VISIBLE_DEVICES+x} ]]; then
    CVD_FROM_USER=1
else
    CVD_FROM_USER=0
    CUDA_VISIBLE_DEVICES=""
    if ((SMI_GPUS > 0)); then CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((SMI_GPUS - 1))); fi
fi
export CUDA_VISIBLE_DEVICES PYTHON
export RUNNER_SMI_GPUS=$SMI_GPUS RUNNER_CVD_FROM_USER=$CVD_FROM_USER RUNNER_ROOT=$ROOT RUNNER_ARGV0=$0

# The runner: python -m runner from this checkout, without putting it on the trainers' PYTHONPATH.
exec "$PYTHON" -c 'import sys; sys.path.insert(0, sys.argv.pop(1)); from runner.__main__ import entry; entry()' \
    "$ROOT" "$@"
}
