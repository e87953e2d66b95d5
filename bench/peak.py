"""Measured bf16 / fp32 matmul throughput of this machine, the denominator of every MFU figure in bench/,
and what the benchmarks share: `load_script` (import a training script) and the device choice
(`rank_device`, `assign_gpus`: which GPU each process or concurrent run times on).

Benchmarks call `measure_peak_flops()` in the same process as the thing they time, so the fraction
they print compares like with like (same threads, same load from other processes).

    python bench/peak.py            # prints the peak for bf16 and fp32
"""
import importlib.util
import os
import statistics
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(filename):
    """Import one of the repo's one-file training scripts (e.g. "train_gpt.py") as a module."""
    spec = importlib.util.spec_from_file_location(filename[:-3], os.path.join(REPO, filename))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def rank_device(kind, local_rank, n_visible):
    """The device one process of a benchmark times on: cpu, or cuda:<local rank> so that every rank of a
    torchrun job has a GPU of its own. ValueError (one line, for the caller to print) when that cannot be."""
    if kind == "cpu":
        return torch.device("cpu")
    if kind != "cuda":
        raise ValueError(f"--device {kind!r}: use cpu or cuda")
    if n_visible == 0:
        raise ValueError("--device cuda but no CUDA device is visible; use --device cpu")
    if local_rank >= n_visible:
        raise ValueError(f"local rank {local_rank} needs a GPU of its own but {n_visible} are visible; "
                         f"start at most {n_visible} processes per node")
    return torch.device("cuda", local_rank)


def visible_gpu_ids(environ, count):
    """The ids a child process can be given in CUDA_VISIBLE_DEVICES: this process's own list when it
    has one (so a parent restricted to GPUs 3,5 hands out 3 and 5), else 0 .. count-1."""
    own = environ.get("CUDA_VISIBLE_DEVICES")
    if own is not None:
        return [g.strip() for g in own.split(",") if g.strip()]
    return [str(i) for i in range(count)]


def assign_gpus(n_concurrent, gpu_ids):
    """CUDA_VISIBLE_DEVICES for each of `n_concurrent` run slots that run at the same time: a GPU of its
    own per slot while there are enough, else round-robin. Returns (ids per slot, None or a line that
    says which slots share a GPU, for the benchmark to print)."""
    if not gpu_ids:
        raise ValueError("--device cuda but no CUDA device is visible; use --device cpu")
    ids = [gpu_ids[i % len(gpu_ids)] for i in range(n_concurrent)]
    if n_concurrent <= len(gpu_ids):
        return ids, None
    shared = {g: [i for i, x in enumerate(ids) if x == g] for g in gpu_ids}
    detail = ", ".join(f"GPU {g}: slots {' '.join(map(str, s))}" for g, s in shared.items() if len(s) > 1)
    return ids, (f"note: {n_concurrent} runs at a time on {len(gpu_ids)} GPU(s), so runs SHARE GPUs "
                 f"({detail}); their timings are not those of a GPU alone")


def matmul_size(probe_s, probe_n, n, max_call_s):
    """The largest of n, n/2, n/4, ... (not below probe_n) whose n x n x n matmul should take at most
    `max_call_s`, scaling the probe's time by the cube of the size. A dtype without a fast kernel (bf16 on
    many CPUs: 0.3 GFLOP/s here) would otherwise spend about a minute on each 2048 matmul."""
    while n > probe_n and probe_s * (n / probe_n) ** 3 > max_call_s:
        n //= 2
    return n


def measure_peak_flops(dtype=torch.bfloat16, n=2048, repeats=7, device="cpu", max_call_s=2.0):
    """Median FLOP/s of an n x n x n matmul (2 n^3 FLOPs) over `repeats` timed calls after warm-up,
    on `device` (a CPU or one GPU); n is halved while one call would take longer than `max_call_s`."""
    device = torch.device(device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    probe_n = min(n, 256)
    p = torch.randn(probe_n, probe_n, device=device).to(dtype)
    torch.mm(p, p)
    sync()
    t0 = time.perf_counter()
    torch.mm(p, p)
    sync()
    n = matmul_size(time.perf_counter() - t0, probe_n, n, max_call_s)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    for _ in range(2):
        torch.mm(a, b)
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times)


if __name__ == "__main__":
    print(f"threads: {torch.get_num_threads()}")
    for dt in (torch.bfloat16, torch.float32):
        print(f"{str(dt):15s} peak matmul: {measure_peak_flops(dt) / 1e9:8.1f} GFLOP/s")
