"""Final val loss and training throughput of the baseline, palm and the four lmd settings on the tiny
preset (CPU), a few seeds each.

    python bench/bench_variants.py                       # seeds 1 2 3, the tiny preset's 150 steps, 1 thread
    python bench/bench_variants.py --seeds 1 --num_iterations 30 --out /tmp/bv   # a quick look

Every run is a fresh process (`python train_gpt*.py --preset tiny --seed S --out_dir OUT/<config>/seed_S`),
in the order seed 1 of every config, then seed 2 of every config, ..., so that a change of load on a
shared machine touches all configs alike. A run whose summary.json already says "ok" is not run again:
an interrupted benchmark continues where it stopped. tokens/s is the trainer's own figure (timed steps
after the 10 warm-up steps, validation excluded). The table gives mean and sample sd over seeds for the
loss, the median for tokens/s, and each config's tokens/s median over the baseline's.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = [  # name, script, extra flags
    ("baseline", "train_gpt.py", []),
    ("palm", "train_gpt_palm.py", []),
    ("lmd baseline", "train_gpt_lmd.py", ["--lmd", "baseline"]),
    ("lmd moderate", "train_gpt_lmd.py", ["--lmd", "moderate"]),
    ("lmd fixed_high", "train_gpt_lmd.py", ["--lmd", "fixed_high"]),
    ("lmd fixed_low", "train_gpt_lmd.py", ["--lmd", "fixed_low"]),
]


def read_summary(d):
    try:
        with open(os.path.join(d, "summary.json")) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--num_iterations", type=int, default=None, help="default: the tiny preset's")
    p.add_argument("--out", default=os.path.join(REPO, "logs", "bench_variants"), help="run directories go here")
    p.add_argument("--only", nargs="+", help="config names to run (default: all)")
    p.add_argument("--threads", type=int, default=1,
                   help="OMP_NUM_THREADS of each run (1: on a shared machine two OpenMP threads wait on each other)")
    a = p.parse_args()
    configs = [c for c in CONFIGS if not a.only or c[0] in a.only]
    if not os.path.exists(os.path.join(REPO, "data", "shakespeare_char")):
        print("error: no data/shakespeare_char; run `python data/prepare_shakespeare.py` first", file=sys.stderr)
        return 2
    print(f"# {platform.node()} torch {torch.__version__}, {os.cpu_count()} CPUs, {a.threads} thread(s) per run, "
          f"load average {os.getloadavg()[0]:.1f}, started {time.strftime('%H:%M:%S')}", flush=True)
    results = {}
    for seed in a.seeds:
        for name, script, extra in configs:
            d = os.path.join(a.out, name.replace(" ", "_"), f"seed_{seed}")
            s = read_summary(d)
            if s is None or s.get("status") != "ok":
                if os.path.exists(d):  # a run that did not finish: keep it beside, start afresh
                    os.replace(d, f"{d}.unfinished_{int(time.time())}")
                os.makedirs(os.path.dirname(d), exist_ok=True)
                cmd = [sys.executable, os.path.join(REPO, script), "--preset", "tiny", "--seed", str(seed), *extra,
                       "--out_dir", d]
                if a.num_iterations:
                    cmd += ["--num_iterations", str(a.num_iterations)]
                t0 = time.time()
                r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(a.threads)})
                with open(os.path.join(os.path.dirname(d), f"seed_{seed}.log"), "w") as f:
                    f.write(r.stdout + r.stderr)
                s = read_summary(d)
                if r.returncode != 0 or s is None:
                    print(f"{name} seed {seed}: failed (exit {r.returncode}): {r.stderr.strip().splitlines()[-1:]}",
                          flush=True)
                    continue
                print(f"{name:15s} seed {seed}: val_loss {s['metrics']['val_loss']:.4f}  "
                      f"tokens/s {s['metrics']['tokens_per_s']:8.0f}  ({time.time() - t0:.0f} s wall)", flush=True)
            results.setdefault(name, []).append(s)
    base_tps = None
    rows = []
    for name, _, _ in configs:
        runs = [s for s in results.get(name, []) if s["status"] == "ok"]
        if not runs:
            continue
        vl = [s["metrics"]["val_loss"] for s in runs]
        tps = [s["metrics"]["tokens_per_s"] for s in runs]
        med = statistics.median(tps)
        base_tps = med if name == "baseline" else base_tps
        rows.append((name, len(runs), statistics.mean(vl), statistics.stdev(vl) if len(vl) > 1 else float("nan"),
                     " ".join(f"{v:.4f}" for v in vl), med, med / base_tps if base_tps else float("nan")))
    print(f"\n| config | n | val loss mean | sd | per seed ({' '.join(map(str, a.seeds))}) | tokens/s median | vs baseline |")
    print("|---|---|---|---|---|---|---|")
    for name, n, m, sd, per, med, ratio in rows:
        print(f"| {name} | {n} | {m:.4f} | {sd:.4f} | {per} | {med:,.0f} | {ratio:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
