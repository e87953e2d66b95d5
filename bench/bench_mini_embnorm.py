"""Speed of train_mini_embnorm.py's training step: tokens/s, ms/iter, FLOPs and fraction of matmul peak.

    python bench/bench_mini_embnorm.py                      # fp32 and bf16, eager and compiled, on the CPU
    python bench/bench_mini_embnorm.py --configs fp32-eager --steps 40 --threads 1
    python bench/bench_mini_embnorm.py --device cuda        # the same on one GPU (cuda:0)
    python bench/bench_mini_embnorm.py --malloc --rounds 6  # glibc malloc thresholds on vs off (CPU)
    python bench/bench_mini_embnorm.py --study --jobs 2 --threads 1   # the 15-run study, wall time
    python bench/bench_mini_embnorm.py --study --jobs 8 --device cuda # one GPU per concurrent run

`--device` is cpu unless given: a GPU host runs on the GPU only when asked. With `--study --device
cuda` every concurrent run gets a GPU of its own (CUDA_VISIBLE_DEVICES, from this process's own list
when it has one); with more concurrent runs than GPUs the bench says which runs share one.

Each configuration trains the real model (layernorm variant, default shapes: batch 16 x 128 tokens)
for `--warmup` steps (timed separately: for compiled models this is the compile cost a 300-step run
pays once), then `--steps` rounds of timing in which every configuration takes one step in turn (so a
burst of load from another process hits all alike); the figure is the median step. The peak matmul rates
come from bench/peak.py's measure_peak_flops, measured in this same process on the same device with the
same threads, so the fractions compare like with like. The machine may be shared with other jobs: rerun
and compare the ratios printed in one run, not absolute numbers across runs.

`--malloc` measures the glibc allocator tuning (mmap and trim thresholds raised with mallopt, so freed
activation buffers stay in the heap instead of going back to the kernel): `--rounds` pairs of fresh
processes, one with and one without it, alternating which goes first; each times `--steps` fp32 steps
on one thread after `--warmup`; the figure is the median over processes of their median CPU-ms per step.

FLOPs per iteration (matmuls only; forward + backward = 3 x forward; attention not halved for the
causal mask):
    3 * B * T * ( 2 * (12 * L * d^2 + d * V)  +  4 * L * T * d )
with B batch, T context, L layers, d width, V vocab: 12 d^2 per layer is qkv (3 d^2) + attention
output (d^2) + MLP (8 d^2), d * V the tied output head, 4 T d per layer the QK^T and AV products.
"""
import argparse
import ctypes
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as train_mini_embnorm.py does; set before torch
import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
from peak import assign_gpus, measure_peak_flops, rank_device, visible_gpu_ids  # noqa: E402
from train_mini_embnorm import MiniGPT, make_optimizer  # noqa: E402

CONFIGS = ("fp32-eager", "bf16-eager", "fp32-compile", "bf16-compile")


def flops_per_iter(B, T, L, d, V):
    return 3 * B * T * (2 * (12 * L * d * d + d * V) + 4 * L * T * d)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(name, args, device):
    """A training step for one configuration, after `--warmup` steps; returns (step, warm-up seconds)."""
    dtype = torch.bfloat16 if name.startswith("bf16") else None
    torch.manual_seed(0)
    model = MiniGPT("layernorm", args.vocab, args.seq_len, args.layers, args.dim, args.heads).to(device)
    opt = make_optimizer(model, 3e-4, (0.9, 0.95), 0.1, device)
    run = torch.compile(model) if name.endswith("compile") else model
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 84, (8, args.batch, args.seq_len + 1), generator=g).to(device)
    counter = [0]

    def step():
        x = data[counter[0] % 8]
        counter[0] += 1
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = run(x[:, :-1], x[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad()
        sync(device)

    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(args.warmup):
        step()
    return step, (time.perf_counter() - t0, time.process_time() - c0)


# ----------------------------------------------------------------------------- glibc malloc tuning

def tune_malloc():
    """Raise glibc's mmap and trim thresholds so freed activations stay in the heap; False if not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: 32 MiB (glibc's maximum)
        libc.mallopt(-1, 1 << 30)   # M_TRIM_THRESHOLD: 1 GiB
        return True
    except (OSError, AttributeError):
        return False


def malloc_child(args):
    """One process of --malloc: time fp32 steps with the tuning on or off, print one JSON line."""
    tuned = tune_malloc() if args.malloc_child == "on" else False
    torch.set_num_threads(1)
    step, _ = make_step("fp32-eager", args, torch.device("cpu"))
    cpu, wall, faults = [], [], []
    for _ in range(args.steps):
        f0, c0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.process_time(), time.perf_counter()
        step()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    print(json.dumps({"tuned": tuned, "cpu_ms": 1000 * statistics.median(cpu),
                      "wall_ms": 1000 * statistics.median(wall), "faults": statistics.median(faults)}))


def run_malloc(args):
    """--malloc: alternating fresh processes with and without the tuning; prints medians and the ratio."""
    res = {"on": [], "off": []}
    for r in range(args.rounds):
        for arm in (("on", "off") if r % 2 == 0 else ("off", "on")):
            cmd = [sys.executable, os.path.abspath(__file__), "--malloc_child", arm, "--steps", str(args.steps),
                   "--warmup", str(args.warmup)]
            out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            if out.returncode != 0:
                sys.exit(f"bench_mini_embnorm.py: malloc child failed: {out.stderr.strip().splitlines()[-1:]}")
            res[arm].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"round {r} {arm:3s} {res[arm][-1]}", flush=True)
    med = {arm: {k: statistics.median(x[k] for x in rows) for k in ("cpu_ms", "wall_ms", "faults")}
           for arm, rows in res.items()}
    for arm in ("on", "off"):
        print(f"malloc tuning {arm:3s}: median over {args.rounds} processes of median CPU {med[arm]['cpu_ms']:.1f} "
              f"ms/step, wall {med[arm]['wall_ms']:.1f} ms/step, {med[arm]['faults']:.0f} minor faults/step")
    print(f"off/on ratio: CPU {med['off']['cpu_ms'] / med['on']['cpu_ms']:.3f}, "
          f"wall {med['off']['wall_ms'] / med['on']['wall_ms']:.3f} (> 1: the tuning saves time)")
    return 0


# ----------------------------------------------------------------------------- the 15-run study

def run_study(args):
    """All variants x seeds through the real script, `--jobs` at a time; prints the wall time."""
    script = os.path.join(os.path.dirname(HERE), "train_mini_embnorm.py")
    out_root = args.study_dir or tempfile.mkdtemp(prefix="embnorm_study_")
    slot_gpus = [None] * args.jobs
    if args.device == "cuda":
        slot_gpus, note = assign_gpus(args.jobs, visible_gpu_ids(os.environ, torch.cuda.device_count()))
        print(note or f"each of the {args.jobs} concurrent run(s) has a GPU of its own: {', '.join(slot_gpus)}")
    runs = [(v, s) for s in args.seeds for v in args.variants]
    pending, active, failed = list(runs), {}, []
    t0 = time.perf_counter()
    while pending or active:
        for slot in range(args.jobs):
            if pending and slot not in active:
                v, s = pending.pop(0)
                out = os.path.join(out_root, v, f"seed_{s}")
                os.makedirs(out, exist_ok=True)
                cmd = [sys.executable, script, "--variant", v, "--seed", str(s), "--out_dir", out,
                       "--threads", str((args.threads or [0])[0]), "--dtype", args.dtype,
                       "--num_iterations", str(args.iterations), "--device", args.device]
                env = dict(os.environ)
                if slot_gpus[slot] is not None:
                    env["CUDA_VISIBLE_DEVICES"] = slot_gpus[slot]
                log = open(os.path.join(out, "stdout.log"), "w")
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
                active[slot] = (v, s, out, proc, log)
        time.sleep(0.05)
        for slot, (v, s, out, proc, log) in list(active.items()):
            if proc.poll() is not None:
                log.close()
                del active[slot]
                if proc.returncode != 0:
                    failed.append((v, s, out))
    wall = time.perf_counter() - t0
    print(f"study: {len(runs)} runs ({args.iterations} iterations, dtype {args.dtype}, device {args.device}), "
          f"{args.jobs} at a time with {(args.threads or ['default'])[0]} thread(s) each: wall {wall:.1f} s "
          f"-> {out_root}")
    print(f"load average during the study: {os.getloadavg()[0]:.2f} (1 min) at the end")
    print(f"{'variant':10s} {'seed':>4s} {'val_loss':>9s} {'train_s':>8s} {'wall_s':>7s} {'cpu_s':>7s}")
    cpu_total = 0.0
    for v, s in runs:
        path = os.path.join(out_root, v, f"seed_{s}", "summary.json")
        m = json.load(open(path))["metrics"] if os.path.exists(path) else {}
        m = {k: (float("nan") if x is None else x) for k, x in m.items()}
        cpu_total += m.get("cpu_time_s", float("nan"))
        print(f"{v:10s} {s:4d} {m.get('val_loss', float('nan')):9.4f} {m.get('train_time_s', float('nan')):8.1f} "
              f"{m.get('wall_time_s', float('nan')):7.1f} {m.get('cpu_time_s', float('nan')):7.1f}")
    if args.device == "cpu":
        cores = os.cpu_count() or 1
        print(f"CPU time of all runs: {cpu_total:.1f} s; on an idle {cores}-core machine with runs using "
              f"{cores} cores in total, the study would take about {cpu_total / cores:.1f} s")
    if failed:
        print(f"failed runs: {failed}")
    return 1 if failed else 0


# ----------------------------------------------------------------------------- step timing

def run_configs(args, device):
    """Every configuration's step, round-robin, medians; prints one table row per configuration."""
    thread_counts = args.threads or [torch.get_num_threads()]
    flops = flops_per_iter(args.batch, args.seq_len, args.layers, args.dim, args.vocab)
    tokens = args.batch * args.seq_len
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {device} ({where}); OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}; torch {torch.__version__}; "
          f"shape B={args.batch} T={args.seq_len} L={args.layers} d={args.dim} V={args.vocab}; "
          f"load average at start {os.getloadavg()[0]:.2f} (other jobs may share the machine)")
    print(f"FLOPs per iteration: {flops / 1e9:.2f} GFLOP = 3*B*T*(2*(12*L*d^2 + d*V) + 4*L*T*d)")
    peaks = {}
    for t in thread_counts:
        torch.set_num_threads(t)
        peaks[t] = (measure_peak_flops(torch.bfloat16, device=device), measure_peak_flops(torch.float32, device=device))
        print(f"measured matmul peak on {device}, {t} thread(s): bf16 {peaks[t][0] / 1e9:.1f} GFLOP/s, "
              f"fp32 {peaks[t][1] / 1e9:.1f} GFLOP/s")
    cases, warm, warm_cpu = [], {}, {}
    for name in args.configs:
        for t in thread_counts:
            torch.set_num_threads(t)
            step, (warm[(name, t)], warm_cpu[(name, t)]) = make_step(name, args, device)
            cases.append((name, t, step))
    # Round-robin timing: a burst of load from another process hits every configuration alike.
    times = {(n, t): [] for n, t, _ in cases}
    cpu = {(n, t): [] for n, t, _ in cases}
    for _ in range(args.steps):
        for name, t, step in cases:
            torch.set_num_threads(t)
            c0, t0 = time.process_time(), time.perf_counter()
            step()
            times[(name, t)].append(time.perf_counter() - t0)
            cpu[(name, t)].append(time.process_time() - c0)
    print(f"{'config':14s} {'threads':>7s} {'warmup_s':>9s} {'ms/iter':>9s} {'tokens/s':>9s} {'GFLOP/s':>8s} "
          f"{'%bf16pk':>8s} {'%fp32pk':>8s} {'300-it s':>9s} {'cpu ms/it':>9s} {'warm cpu s':>10s}")
    for name, t, _ in cases:
        med = statistics.median(times[(name, t)])
        rate = flops / med
        print(f"{name:14s} {t:7d} {warm[(name, t)]:9.2f} {1000 * med:9.1f} {tokens / med:9.0f} {rate / 1e9:8.1f} "
              f"{100 * rate / peaks[t][0]:7.1f}% {100 * rate / peaks[t][1]:7.1f}% "
              f"{warm[(name, t)] + (300 - args.warmup) * med:9.1f} {1000 * statistics.median(cpu[(name, t)]):9.1f} "
              f"{warm_cpu[(name, t)]:10.2f}")
    print("cpu ms/it: CPU time of this process per step; with 1 thread it is close to the step time on an "
          "idle machine even when other jobs share it")
    return 0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="cpu (default) or cuda; never chosen for you")
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, nargs="+", default=None,
                   help="thread counts to compare (default: torch's default); --study: threads per run")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=128)
    p.add_argument("--malloc", action="store_true", help="glibc malloc tuning on vs off, in fresh processes (CPU)")
    p.add_argument("--rounds", type=int, default=6, help="--malloc: process pairs")
    p.add_argument("--malloc_child", choices=("on", "off"), help=argparse.SUPPRESS)
    p.add_argument("--study", action="store_true", help="time the whole study instead (real script, real data)")
    p.add_argument("--jobs", type=int, default=1, help="--study: runs at the same time")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5], help="--study: seeds")
    p.add_argument("--iterations", type=int, default=300, help="--study: iterations per run")
    p.add_argument("--variants", nargs="+", default=["baseline", "layernorm", "rmsnorm"],
                   choices=["baseline", "layernorm", "rmsnorm"], help="--study: variants")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="--study: dtype")
    p.add_argument("--study_dir", help="--study: where the run directories go (default: a new temp dir)")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 1 or args.jobs < 1 or args.rounds < 1:
        p.error("--steps, --warmup, --jobs and --rounds must be at least 1")
    if args.malloc and args.device != "cpu":
        p.error("--malloc measures the CPU allocator; use it with --device cpu")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.malloc_child:
        return malloc_child(args)
    if args.malloc:
        return run_malloc(args)
    try:
        device = rank_device(args.device, 0, torch.cuda.device_count())
        if args.study:
            return run_study(args)
    except ValueError as e:
        sys.exit(f"bench_mini_embnorm.py: error: {e}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return run_configs(args, device)


if __name__ == "__main__":
    sys.exit(main())
