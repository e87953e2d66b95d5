"""Wall time of a stage packed on a node's GPUs vs one run at a time (--no-pack), with a stand-in
nvidia-smi listing the GPUs and tests/fake_trainer.py as every trainer (it sleeps FAKE_STEP_S per
step and touches no GPU), so the figure is the runner's scheduling alone.

    python bench/bench_packing.py                      # stage_a's shape: 8 one-GPU runs on 8 GPUs
    python bench/bench_packing.py --stage stage_b      # 6 four-GPU runs, two at a time
    python bench/bench_packing.py --repeats 3 --step-s 0.1 --iterations 20

Prints each mode's median wall time over --repeats and the ratio (ideal: the runs at once, e.g. 8).
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAKE = os.path.join(ROOT, "tests", "fake_trainer.py")
SCRIPTS = ("train_gpt.py", "train_gpt_palm.py", "train_gpt_depthwarm.py", "train_gpt_curriculum.py",
           "train_gpt_lmd.py", "train_mini_embnorm.py")


def setup(work, gpus):
    scripts = os.path.join(work, "scripts")
    os.makedirs(os.path.join(scripts, "data", "shakespeare_char"))
    for name in SCRIPTS:
        shutil.copy(FAKE, os.path.join(scripts, name))
    gpu_bin = os.path.join(work, "bin")
    os.makedirs(gpu_bin)
    smi = os.path.join(gpu_bin, "nvidia-smi")
    with open(smi, "w") as f:
        f.write("#!/bin/sh\n" + "".join(f"echo 'GPU {i}: Stand-in GPU (UUID: GPU-{i})'\n" for i in range(gpus)))
    os.chmod(smi, 0o755)
    return scripts, gpu_bin


def one(args, scripts, gpu_bin, logs, pack):
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "NNODES", "NODE_RANK")}
    env.update(PATH=f"{gpu_bin}:{os.path.dirname(sys.executable)}:{env.get('PATH', '')}", PYTHON=sys.executable,
               FAKE_STEP_S=str(args.step_s))
    cmd = [os.path.join(ROOT, "run_experiments.sh"), args.stage, "--iterations", str(args.iterations),
           "--launcher", "python", "--scripts-dir", scripts, "--logs", logs] + ([] if pack else ["--no-pack"])
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"bench_packing: {' '.join(cmd)} failed (exit {p.returncode}):\n{p.stdout[-2000:]}{p.stderr[-2000:]}")
    runs = sum(1 for line in p.stdout.splitlines() if ": ok" in line)
    return wall, runs


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", default="stage_a")
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--step-s", type=float, default=0.1, help="seconds per fake step (default 0.1: 2 s a run)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="bench_packing.")
    try:
        scripts, gpu_bin = setup(work, args.gpus)
        times = {True: [], False: []}
        for rep in range(args.repeats):
            for pack in (True, False):
                wall, runs = one(args, scripts, gpu_bin, os.path.join(work, f"logs_{pack}_{rep}"), pack)
                times[pack].append(wall)
        packed, serial = statistics.median(times[True]), statistics.median(times[False])
        print(f"{args.stage} on {args.gpus} stand-in GPUs, {runs} runs of {args.iterations} x {args.step_s:g} s "
              f"fake steps, median of {args.repeats}:")
        print(f"  packed (default)   {packed:7.2f} s   ({', '.join(f'{t:.2f}' for t in times[True])})")
        print(f"  one by one         {serial:7.2f} s   ({', '.join(f'{t:.2f}' for t in times[False])})")
        print(f"  ratio              {serial / packed:7.2f} x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
