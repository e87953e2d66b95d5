"""Muon's Newton-Schulz orthogonalisation on the CPU in bfloat16 (the record's dtype) against float32.

    python bench/bench_muon_cpu.py --small            # the tiny preset's matrix shapes (seconds)
    python bench/bench_muon_cpu.py --repeats 3        # adds the record's shapes (minutes: bf16 is slow)
    python bench/bench_muon_cpu.py --record-step      # adds a whole Muon step of the record's model (long)

For each shape one newton_schulz5 call is timed in each dtype, interleaved, `--repeats` times; the medians
and their ratio are printed, then one Muon step of the tiny preset's block matrices (4 layers, width 128), one
whole training step of the tiny preset (forward, backward, AdamW, Muon; only Newton-Schulz's dtype differs)
and, with --record-step, the record's (12 layers, width 768). train_gpt.py runs Newton-Schulz in the autocast
dtype: bfloat16 on CUDA, float32 on the CPU; this benchmark is the reason for the CPU choice.
"""
import argparse
import os
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from peak import load_script  # noqa: E402


def interleaved_medians(fns, repeats):
    """Median seconds of each function, timed in turn within every repeat so a change of load hits all alike."""
    for fn in fns:
        fn()  # warm-up: first-call allocations and kernel selection
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


def muon_step(tg, n_layer, n_embd, dtype):
    model = tg.GPT(128, n_layer, max(1, n_embd // 64), n_embd)
    params = list(model.blocks.parameters())
    opt = tg.Muon([dict(params=params, momentum=0.95)], lr=0.002, ns_dtype=dtype)
    gen = torch.Generator().manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    return opt.step


def tiny_train_step(tg, dtype):
    """One training step of the tiny preset (batch 32 x 128 tokens, fp32 forward/backward, AdamW + Muon)."""
    torch.manual_seed(0)
    model = tg.GPT(128, 4, 4, 128)
    adam = torch.optim.AdamW([model.lm_head.weight], lr=0.02, betas=(0.9, 0.95), weight_decay=0.0)
    muon = tg.Muon([dict(params=list(model.blocks.parameters()), momentum=0.95)], lr=0.002, ns_dtype=dtype)
    x, y = torch.randint(0, 128, (32, 128)), torch.randint(0, 128, (32, 128))

    def step():
        model(x, y).backward()
        adam.step()
        muon.step()
        model.zero_grad(set_to_none=True)
    return step


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--small", action="store_true", help="only the tiny preset's shapes")
    ap.add_argument("--record-step", action="store_true", help="time a Muon step of the record's 12 x 768 blocks")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tg = load_script("train_gpt.py")
    dtypes = (torch.bfloat16, torch.float32)
    shapes = [(128, 128), (512, 128), (128, 512)] + ([] if args.small else [(768, 768), (3072, 768), (768, 3072)])
    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.repeats}")
    print(f"{'what':<28} {'bf16 ms':>10} {'fp32 ms':>10} {'bf16/fp32':>10}")
    rows = [(f"newton_schulz5 {r}x{c}", [lambda G=torch.randn(r, c), d=d: tg.newton_schulz5(G, dtype=d) for d in dtypes])
            for r, c in shapes]
    rows.append(("Muon step, tiny (4 x 128)", [muon_step(tg, 4, 128, d) for d in dtypes]))
    rows.append(("training step, tiny preset", [tiny_train_step(tg, d) for d in dtypes]))
    if args.record_step:
        rows.append(("Muon step, record (12 x 768)", [muon_step(tg, 12, 768, d) for d in dtypes]))
    for name, fns in rows:
        t = interleaved_medians(fns, args.repeats)
        print(f"{name:<28} {1e3 * t[0]:>10.2f} {1e3 * t[1]:>10.2f} {t[0] / t[1]:>10.1f}")


if __name__ == "__main__":
    main()
