"""Measured bf16 / fp32 matmul throughput of this machine, the denominator of every MFU figure in bench/
(and `load_script`, how the benchmarks import a training script).

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


def measure_peak_flops(dtype=torch.bfloat16, n=2048, repeats=7, device="cpu"):
    """Median FLOP/s of an n x n x n matmul (2 n^3 FLOPs) over `repeats` timed calls after warm-up."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    for _ in range(2):
        torch.mm(a, b)
    times = []
    for _ in range(repeats):
        if device != "cpu":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        torch.mm(a, b)
        if device != "cpu":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times)


if __name__ == "__main__":
    print(f"threads: {torch.get_num_threads()}")
    for dt in (torch.bfloat16, torch.float32):
        print(f"{str(dt):15s} peak matmul: {measure_peak_flops(dt) / 1e9:8.1f} GFLOP/s")
