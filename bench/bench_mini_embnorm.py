"""Speed of train_mini_embnorm.py's training step: tokens/s, ms/iter, FLOPs and fraction of matmul peak.

    python bench/bench_mini_embnorm.py                      # fp32 and bf16, eager and compiled
    python bench/bench_mini_embnorm.py --configs fp32-eager --steps 40 --threads 1

Each configuration trains the real model (layernorm variant, default shapes: batch 16 x 128 tokens)
for `--warmup` steps (timed separately: for compiled models this is the compile cost a 300-step run
pays once) and then `--steps` timed steps; the figure is the median step. The peak matmul rates
come from bench/peak.py's measure_peak_flops, measured in this same process with the same threads,
so the fractions compare like with like. The machine may be shared with other jobs: rerun and
compare the ratios printed in one run, not absolute numbers across runs.

FLOPs per iteration (matmuls only; forward + backward = 3 x forward; attention not halved for the
causal mask):
    3 * B * T * ( 2 * (12 * L * d^2 + d * V)  +  4 * L * T * d )
with B batch, T context, L layers, d width, V vocab: 12 d^2 per layer is qkv (3 d^2) + attention
output (d^2) + MLP (8 d^2), d * V the tied output head, 4 T d per layer the QK^T and AV products.
"""
import argparse
import os
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
from peak import measure_peak_flops  # noqa: E402
from train_mini_embnorm import MiniGPT, make_optimizer  # noqa: E402

CONFIGS = ("fp32-eager", "bf16-eager", "fp32-compile", "bf16-compile")


def flops_per_iter(B, T, L, d, V):
    return 3 * B * T * (2 * (12 * L * d * d + d * V) + 4 * L * T * d)


def bench_config(name, args):
    dtype = torch.bfloat16 if name.startswith("bf16") else None
    torch.manual_seed(0)
    model = MiniGPT("layernorm", args.vocab, args.seq_len, args.layers, args.dim, args.heads)
    opt = make_optimizer(model, 3e-4, (0.9, 0.95), 0.1, "cpu")
    run = torch.compile(model) if name.endswith("compile") else model
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 84, (args.warmup + args.steps, args.batch, args.seq_len + 1), generator=g)

    def step(i):
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            loss = run(data[i, :, :-1], data[i, :, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    t0 = time.perf_counter()
    for i in range(args.warmup):
        step(i)
    warm = time.perf_counter() - t0
    times = []
    for i in range(args.warmup, args.warmup + args.steps):
        t0 = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - t0)
    return warm, statistics.median(times), times


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=128)
    args = p.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.steps < 1 or args.warmup < 1:
        sys.exit("bench_mini_embnorm.py: error: --steps and --warmup must be at least 1")

    peak_bf16 = measure_peak_flops(torch.bfloat16)
    peak_fp32 = measure_peak_flops(torch.float32)
    flops = flops_per_iter(args.batch, args.seq_len, args.layers, args.dim, args.vocab)
    tokens = args.batch * args.seq_len
    print(f"threads {torch.get_num_threads()}, torch {torch.__version__}; shape B={args.batch} T={args.seq_len} "
          f"L={args.layers} d={args.dim} V={args.vocab}")
    print(f"measured matmul peak: bf16 {peak_bf16 / 1e9:.1f} GFLOP/s, fp32 {peak_fp32 / 1e9:.1f} GFLOP/s")
    print(f"FLOPs per iteration: {flops / 1e9:.2f} GFLOP (3*B*T*(2*(12*L*d^2 + d*V) + 4*L*T*d))")
    print(f"{'config':14s} {'warmup_s':>9s} {'ms/iter':>9s} {'tokens/s':>9s} {'GFLOP/s':>8s} "
          f"{'%bf16pk':>8s} {'%fp32pk':>8s} {'300-it s':>9s}")
    for name in args.configs:
        warm, med, _ = bench_config(name, args)
        rate = flops / med
        print(f"{name:14s} {warm:9.2f} {1000 * med:9.1f} {tokens / med:9.0f} {rate / 1e9:8.1f} "
              f"{100 * rate / peak_bf16:7.1f}% {100 * rate / peak_fp32:7.1f}% "
              f"{warm + (300 - args.warmup) * med:9.1f}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
