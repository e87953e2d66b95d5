"""Final val loss and training throughput of the baseline, palm and the four lmd settings on the tiny
preset (CPU), a few seeds each.

    python bench/bench_variants.py                       # seeds 1 2 3, the tiny preset's 150 steps, 1 thread
    python bench/bench_variants.py --seeds 1 --num_iterations 30 --out /tmp/bv   # a quick look
    python bench/bench_variants.py --step_timing         # step time of each model, alternated in one process
    python bench/bench_variants.py --device cuda         # on a GPU host: every run alone on the first visible GPU

`--device` is cpu unless given (it is passed to every trainer as `--device`), so a GPU host runs on its
GPU only when asked. With cuda the runs still go one at a time, each with CUDA_VISIBLE_DEVICES set to
one GPU: no two runs share a GPU.

Every run is a fresh process (`python train_gpt*.py --preset tiny --seed S --out_dir OUT/<config>/seed_S`),
in the order seed 1 of every config, then seed 2 of every config, ..., so that a change of load on a
shared machine touches all configs alike (it cannot undo a trend: on a machine whose load falls during
the benchmark, later configs of each round look faster). --step_timing measures throughput fairly:
one training step (tiny preset shapes: two micro-batches forward/backward, AdamW + Muon) of each config,
alternated in one process, median over repeats, ratios to the baseline from the same process. A run whose summary.json already says "ok" is not run again:
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
sys.path.insert(0, os.path.join(REPO, "bench"))
from peak import load_script, rank_device, visible_gpu_ids  # noqa: E402
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


def step_timing(repeats, threads, device):
    """Median time of one tiny-preset training step per config, configs alternated in one process."""
    torch.set_num_threads(threads)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    mods = {s: load_script(s) for s in ("train_gpt.py", "train_gpt_palm.py", "train_gpt_lmd.py")}
    t = mods["train_gpt.py"].PRESETS["tiny"]
    V, L, H, C, T, B = t["vocab_size"], t["n_layer"], t["n_head"], t["n_embd"], t["sequence_length"], t["device_batch_size"]
    accum = t["batch_size"] // B
    setups = []
    for name, script, extra in CONFIGS:
        mod = mods[script]
        torch.manual_seed(0)
        model = mod.GPT(V, L, H, C).to(device)
        adam = torch.optim.AdamW([model.lm_head.weight], lr=t["learning_rate"], betas=(0.9, 0.95), weight_decay=0)
        if script == "train_gpt_lmd.py":  # the groups the script builds: one per block, its own momentum
            first, last = mod.LMD_PRESETS[extra[1]]
            momenta = mod.block_momenta(first, last, L)
            groups = [dict(params=list(b.parameters()), momentum=m) for b, m in zip(model.blocks, momenta)]
        else:
            groups = [dict(params=list(model.blocks.parameters()), momentum=0.95)]
        muon = mod.Muon(groups, lr=0.1 * t["learning_rate"])
        setups.append((name, model, [adam, muon]))
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, V, (B, T + 1), generator=g).to(device) for _ in range(accum)]

    def one_step(model, opts):
        for xy in batches:
            model(xy[:, :-1].contiguous(), xy[:, 1:].contiguous()).backward()
        for o in opts:
            o.step()
        model.zero_grad(set_to_none=True)
    times = {name: [] for name, _, _ in setups}
    for r in range(repeats + 2):  # the first two rounds warm up allocators and caches
        for name, model, opts in setups:
            sync()
            t0 = time.perf_counter()
            one_step(model, opts)
            sync()
            if r >= 2:
                times[name].append(time.perf_counter() - t0)
    tokens = t["batch_size"] * T
    base = statistics.median(times["baseline"])
    print(f"# one training step of the tiny preset ({tokens} tokens), device {device}, {threads} thread(s), median of {repeats}, "
          f"configs alternated; load average {os.getloadavg()[0]:.1f}")
    print("| config | step ms median | tokens/s | step time vs baseline |\n|---|---|---|---|")
    for name, _, _ in setups:
        m = statistics.median(times[name])
        print(f"| {name} | {1000 * m:.1f} | {tokens / m:,.0f} | {m / base:.3f} |")
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--num_iterations", type=int, default=None, help="default: the tiny preset's")
    p.add_argument("--out", default=os.path.join(REPO, "logs", "bench_variants"), help="run directories go here")
    p.add_argument("--only", nargs="+", help="config names to run (default: all)")
    p.add_argument("--threads", type=int, default=1,
                   help="OMP_NUM_THREADS of each run (1: on a shared machine two OpenMP threads wait on each other)")
    p.add_argument("--step_timing", action="store_true", help="time one training step per config instead")
    p.add_argument("--repeats", type=int, default=30, help="--step_timing: steps timed per config")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="cpu (default) or cuda: passed to every trainer; one run at a time, one GPU each")
    a = p.parse_args()
    try:
        device = rank_device(a.device, 0, torch.cuda.device_count())
    except ValueError as e:
        print(f"bench_variants.py: error: {e}", file=sys.stderr)
        return 2
    run_env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
    if device.type == "cuda":
        gpu = visible_gpu_ids(os.environ, torch.cuda.device_count())[0]
        run_env["CUDA_VISIBLE_DEVICES"] = gpu
        print(f"# device cuda: each run alone on GPU {gpu} ({torch.cuda.get_device_name(device)})")
    if a.step_timing:
        return step_timing(a.repeats, a.threads, device)
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
                       "--device", a.device, "--out_dir", d]
                if a.num_iterations:
                    cmd += ["--num_iterations", str(a.num_iterations)]
                t0 = time.time()
                r = subprocess.run(cmd, capture_output=True, text=True, env=run_env)
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
