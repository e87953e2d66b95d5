"""Training throughput of train_gpt.py's tiny preset on the CPU, and the fraction of this machine's
measured matmul peak it reaches (model FLOPs per token x tokens/s / peak, both measured here).

    python bench/bench_train_gpt.py                      # float32 (the CPU default) and bf16 autocast
    python bench/bench_train_gpt.py --threads 1 --steps 40 --rounds 5
    python bench/bench_train_gpt.py --compile            # adds torch.compile runs (slow to compile)

Each configuration is a real `train_gpt.main()` run (loader, Muon, AdamW, logging) on synthetic shards
of the tiny preset's shape; step times come from its metrics.jsonl (the first 10 steps are warm-up
and not timed, as in the trainer), and the figure is the median step. Configurations run in
interleaved rounds, each run preceded by a peak measurement in the same process, and medians over
rounds are printed, so that a change of background load hits all alike. On a shared machine the
ratios between the configurations of one invocation are the figures to trust.
"""
import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from peak import load_script, measure_peak_flops  # noqa: E402


def load_trainer():
    return load_script("train_gpt.py")


def flops_per_token(n_layer, n_embd, vocab_size, seq_len):
    """Training FLOPs per token (forward + backward = 3 x forward), the PaLM-paper convention:
    6 x (matmul parameters: 12 d^2 per block + the d x V head; the embedding lookup is free)
    + 12 x n_layer x d x T for the attention scores and the weighted sum of values (causal masking
    not discounted). Muon's Newton-Schulz work is optimiser cost and is not counted."""
    matmul_params = n_layer * 12 * n_embd * n_embd + n_embd * vocab_size
    return 6 * matmul_params + 12 * n_layer * n_embd * seq_len


def write_shard(path, tokens):
    header = np.zeros(256, dtype="<i4")
    header[:3] = (20240520, 1, len(tokens))
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype("<u2").tobytes())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30, help="timed steps per run (after 10 warm-up steps)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd runs")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tg = load_trainer()
    preset = tg.PRESETS["tiny"]
    L, d, V, T = preset["n_layer"], preset["n_embd"], preset["vocab_size"], preset["sequence_length"]
    fpt = flops_per_token(L, d, V, T)
    print(f"tiny preset: {L} layers, width {d}, vocab {V}, context {T}, {preset['batch_size'] * T} tokens/step")
    print(f"model FLOPs/token (training): {fpt / 1e6:.3f} M  [6 x matmul params + 12 x layers x width x context]")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; machine may be shared: compare ratios")

    configs = [("float32", "off"), ("bfloat16", "off")]
    if args.compile:
        configs += [("float32", "on"), ("bfloat16", "on")]
    # rounds interleave the configurations (and the peak measurements) so that a change of background
    # load hits all of them; medians over rounds are reported
    res = {c: dict(step_ms=[], bf16=[], fp32=[]) for c in configs}
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        write_shard(os.path.join(tmp, "b_train_000000.bin"), rng.integers(0, V, 2_000_000))
        write_shard(os.path.join(tmp, "b_val_000000.bin"), rng.integers(0, V, 100_000))
        for r in range(args.rounds):
            for dtype, comp in configs:
                res[(dtype, comp)]["bf16"].append(measure_peak_flops(torch.bfloat16, repeats=5))
                res[(dtype, comp)]["fp32"].append(measure_peak_flops(torch.float32, repeats=5))
                out = os.path.join(tmp, f"run_{dtype}_{comp}_{r}")
                argv = ["--preset", "tiny", "--device", "cpu", "--dtype", dtype, "--compile", comp,
                        "--num_iterations", str(10 + args.steps), "--val_loss_every", "0", "--val_tokens", "4096",
                        "--input_bin", os.path.join(tmp, "b_train_*.bin"),
                        "--input_val_bin", os.path.join(tmp, "b_val_*.bin"), "--out_dir", out]
                with contextlib.redirect_stdout(io.StringIO()):
                    rc = tg.main(argv)
                if rc != 0:
                    raise SystemExit(f"benchmark run {dtype}/{comp} failed (exit {rc})")
                with open(os.path.join(out, "metrics.jsonl")) as f:
                    recs = [json.loads(l) for l in f if "train_loss" in l]
                t = [rec["train_time_ms"] for rec in recs if rec["step"] >= 11]
                res[(dtype, comp)]["step_ms"].append(statistics.median(np.diff(t)))
                print(f"round {r + 1}/{args.rounds} {dtype}/{comp}: {res[(dtype, comp)]['step_ms'][-1]:.1f} ms/step",
                      flush=True)
    print(f"\nmedians over {args.rounds} rounds, {args.steps} timed steps each")
    print(f"{'autocast':9s} {'compile':7s} {'step ms':>8s} {'tokens/s':>9s} {'GFLOP/s':>8s} "
          f"{'bf16 peak':>10s} {'of bf16':>8s} {'fp32 peak':>10s} {'of fp32':>8s}")
    rows = []
    for (dtype, comp), v in res.items():
        step_ms = statistics.median(v["step_ms"])
        tok_s = preset["batch_size"] * T / (step_ms / 1000)
        fl, pb, pf = fpt * tok_s, statistics.median(v["bf16"]), statistics.median(v["fp32"])
        rows.append((dtype, comp, tok_s))
        print(f"{dtype:9s} {comp:7s} {step_ms:8.1f} {tok_s:9.0f} {fl / 1e9:8.2f} {pb / 1e9:10.1f} {fl / pb:8.1%} "
              f"{pf / 1e9:10.1f} {fl / pf:8.1%}")
    base = rows[0][2]
    print("\ntokens/s relative to float32 eager: " + ", ".join(f"{d}/{c} {t / base:.2f}x" for d, c, t in rows))


if __name__ == "__main__":
    main()
