"""Time per training step of train_gpt_depthwarm.py with every block vs under each depth-warming phase.

    python bench/bench_depthwarm.py                       # 12 blocks, width 256, 8 x 256 tokens, fp32, eager
    python bench/bench_depthwarm.py --rounds 20 --threads 1
    python bench/bench_depthwarm.py --compile             # per-block torch.compile, as the trainer does
    torchrun --standalone --nproc_per_node=2 bench/bench_depthwarm.py --threads 1   # 2 gloo ranks, + a DDP row
    torchrun --standalone --nproc_per_node=8 bench/bench_depthwarm.py --device cuda --dtype bfloat16  # 8 GPUs

`--device` is cpu unless given. On CUDA every rank times its own GPU (cuda:<LOCAL_RANK>, set as the
current device), and the header names the GPU and its measured matmul peak instead of the CPU's.

One step is what the trainer does: forward and backward over the active blocks, the gradient average
(sync_gradients), Muon and AdamW, zero_grad. Conditions:
    all      every block runs (the last third of training)
    phase1   masks drawn by depthwarm_mask at steps of the first third (d = L/2, p = 0.5)
    phase2   masks drawn at steps of the second third (d = 3L/4, p = 0.25)
    ddp      (only with 2+ processes) train_gpt.py's way: every block, the model wrapped in DDP
Each round runs one step of every condition in turn, so a burst of load from another process hits all
alike; the figures are the median and mean step over the rounds, and the ratio to `all` in the same run.
The masks are random, so the mean is the figure that sets the phase's total time; the median resists
outliers on a shared machine. The FLOP ratio (matmuls only; forward and backward scale alike) is the one
of the masks drawn in the timed rounds; the last line gives it for the record's shape (12 x 768, vocab
50,304, 1,024 tokens) at the schedule's mean active depth (0.75 L, then 0.9375 L). It leaves out the
optimiser, whose Newton-Schulz work for skipped blocks is saved as well.
"""
import argparse
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from peak import load_script, measure_peak_flops, rank_device  # noqa: E402


def load_trainer():
    return load_script("train_gpt_depthwarm.py")


def forward_flops_per_token(L, d, V, T):
    """Matmul FLOPs of one token's forward pass: per block 24 d^2 (q, k, v, out: 4 d^2; MLP 8 d^2; x2 for
    multiply-add) and 4 T d for QK^T and AV; the head 2 d V."""
    block = 24 * d * d + 4 * T * d
    return block, 2 * d * V


def expected_ratio(L, d, V, T, active):
    block, head = forward_flops_per_token(L, d, V, T)
    return (active * block + head) / (L * block + head)


def mean_active(L, depth_frac, p):
    d = int(depth_frac * L)
    return d + (L - d) * (1 - p)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n_layer", type=int, default=12)
    ap.add_argument("--n_embd", type=int, default=256)
    ap.add_argument("--n_head", type=int, default=4)
    ap.add_argument("--vocab_size", type=int, default=8192, help="8192: the head's share of FLOPs near the record's")
    ap.add_argument("--seq_len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8, help="sequences per process")
    ap.add_argument("--rounds", type=int, default=10, help="timed steps per condition")
    ap.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="autocast dtype")
    ap.add_argument("--compile", action="store_true", help="torch.compile each block (the trainer's --compile)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cpu (default) or cuda: one GPU per rank")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    distributed = "RANK" in os.environ
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    try:
        device = rank_device(args.device, int(os.environ.get("LOCAL_RANK", 0)), torch.cuda.device_count())
    except ValueError as e:
        sys.exit(f"bench_depthwarm.py: error: {e}")
    if device.type == "cuda":
        torch.cuda.set_device(device)  # each rank its own GPU: kernels, sync and NCCL all on cuda:<local rank>
    if distributed:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    dw = load_trainer()
    a, _ = dw.parse_args(["--n_layer", str(args.n_layer), "--num_iterations", "3000"])
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    amp = getattr(torch, args.dtype)
    ctx = torch.autocast(device.type, dtype=amp, enabled=amp != torch.float32)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, args.vocab_size, (args.batch, args.seq_len), generator=g).to(device)
    y = torch.randint(0, args.vocab_size, (args.batch, args.seq_len), generator=g).to(device)

    def make(ddp=False):
        torch.manual_seed(0)
        m = dw.GPT(args.vocab_size, args.n_layer, args.n_head, args.n_embd).to(device)
        if args.compile:
            dw.compile_blocks(m)
        ids = [device.index] if device.type == "cuda" else None
        wrapped = torch.nn.parallel.DistributedDataParallel(m, device_ids=ids) if ddp else m
        opts = [torch.optim.AdamW([m.lm_head.weight], lr=1e-3, betas=(0.9, 0.95), weight_decay=0.0),
                dw.Muon([dict(params=list(m.blocks.parameters()), momentum=0.95)], lr=1e-4, rank=rank, world_size=world)]
        return m, wrapped, opts

    model, _, opts = make()
    conditions = {"all": lambda t: [True] * args.n_layer,
                  "phase1": lambda t: dw.depthwarm_mask(t % 1000, a),
                  "phase2": lambda t: dw.depthwarm_mask(1000 + t % 1000, a)}
    if distributed:
        ddp_model, ddp_wrapped, ddp_opts = make(ddp=True)
        conditions["ddp"] = None

    def step(name, t):
        if name == "ddp":
            with ctx:
                loss = ddp_wrapped(x, y)
            loss.backward()
            for o in ddp_opts:
                o.step()
            ddp_model.zero_grad(set_to_none=True)
            return args.n_layer
        mask = conditions[name](t)
        model.active = mask
        with ctx:
            loss = model(x, y)
        loss.backward()
        dw.sync_gradients(model, 1, world)
        for o in opts:
            o.step()
        model.zero_grad(set_to_none=True)
        return sum(mask)

    model.train()
    times = {k: [] for k in conditions}
    active = {k: [] for k in conditions}
    for r in range(args.warmup + args.rounds):
        for name in conditions:
            if distributed:
                dist.barrier()
            sync()
            t0 = time.perf_counter()
            n = step(name, r)
            sync()
            if r >= args.warmup:
                times[name].append(time.perf_counter() - t0)
                active[name].append(n)
    if rank != 0:
        dist.destroy_process_group()
        return
    L, d, V, T = args.n_layer, args.n_embd, args.vocab_size, args.seq_len
    peak32 = measure_peak_flops(torch.float32, device=device)
    peak16 = measure_peak_flops(torch.bfloat16, device=device)
    where = f"{device} ({torch.cuda.get_device_name(device)}), one GPU per rank" if device.type == "cuda" else \
        f"cpu, {torch.get_num_threads()} threads"
    print(f"shape: {L} blocks x width {d}, {args.n_head} heads, vocab {V}, {args.batch} x {T} tokens per process; "
          f"{world} process(es), device {where}, autocast {args.dtype}, "
          f"{'per-block compile' if args.compile else 'eager'}")
    print(f"measured matmul peak on rank 0's {device.type.upper()}: fp32 {peak32 / 1e9:.0f} GFLOP/s, "
          f"bf16 {peak16 / 1e9:.0f} GFLOP/s (the machine may be shared: compare ratios within one run)")
    med_all = statistics.median(times["all"])
    mean_all = statistics.fmean(times["all"])
    # the FLOP ratio of the masks actually drawn in the timed rounds (their mean active count)
    expect = {k: expected_ratio(L, d, V, T, statistics.fmean(v)) for k, v in active.items()}
    print(f"{'condition':10s} {'active blocks':>14s} {'median ms':>10s} {'mean ms':>9s} {'median ratio':>13s} "
          f"{'mean ratio':>11s} {'FLOP ratio':>11s}")
    for name in conditions:
        ts = times[name]
        print(f"{name:10s} {statistics.fmean(active[name]):14.2f} {1000 * statistics.median(ts):10.1f} "
              f"{1000 * statistics.fmean(ts):9.1f} {statistics.median(ts) / med_all:13.3f} "
              f"{statistics.fmean(ts) / mean_all:11.3f} {expect[name]:11.3f}")
    rec = {k: expected_ratio(12, 768, 50304, 1024, mean_active(12, *v))
           for k, v in (("phase1", (a.depthwarm_depth1, a.depthwarm_prob1)),
                        ("phase2", (a.depthwarm_depth2, a.depthwarm_prob2)))}
    whole = (rec["phase1"] + rec["phase2"] + 1.0) / 3
    print(f"record shape (12 x 768, vocab 50,304, 1,024 tokens), FLOP ratio: phase1 {rec['phase1']:.3f}, "
          f"phase2 {rec['phase2']:.3f}, whole run {whole:.3f}")
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
