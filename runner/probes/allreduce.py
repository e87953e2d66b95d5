"""An all_reduce across every process of a torchrun launch: the preflight's communication check.

Started by runner/preflight.py as `python -m torch.distributed.run ... runner/probes/allreduce.py`
(this file imports torch; the runner package never imports it). Backend NCCL on CUDA, gloo on CPU.
Each rank contributes rank + 1; every rank checks the sum is world * (world + 1) / 2 and rank 0
prints one line: "ALLREDUCE ok backend=... world=... seconds=..." (or exits 1 with the reason).
"""
import os
import sys
import time

import torch
import torch.distributed as dist


def main():
    cuda = len(sys.argv) > 1 and sys.argv[1] == "cuda"
    backend = "nccl" if cuda else "gloo"
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    t0 = time.perf_counter()
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend)
    x = torch.full((1024,), float(rank + 1), device="cuda" if cuda else "cpu")
    dist.all_reduce(x)
    if cuda:
        torch.cuda.synchronize()
    want = world * (world + 1) / 2
    ok = bool(torch.all(x == want))
    dist.destroy_process_group()
    if not ok:
        print(f"ALLREDUCE wrong sum on rank {rank}: {x[0].item()} != {want}", flush=True)
        sys.exit(1)
    if rank == 0:
        print(f"ALLREDUCE ok backend={backend} world={world} seconds={time.perf_counter() - t0:.2f}", flush=True)


if __name__ == "__main__":
    main()
