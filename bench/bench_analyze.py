"""Times the whole analysis (loading, statistics, figures, report) on synthetic run directories.

    python bench/bench_analyze.py                 # both cases below, prints medians
    python bench/bench_analyze.py --small-only    # only case A
    python bench/bench_analyze.py --keep DIR      # build the run directories in DIR and keep them

Case S: one stage of 6 runs (2 conditions x 3 seeds) x 5,100 steps, with figures, in a fresh
process (imports included) - the speedrun's usual stage; goal under 2 s on 2 cores.
Case A: 2 conditions x 10 runs x 5,100 steps (a training line every step, validation every 125).
Case B: 1,000 runs x 5,100 steps (10 conditions x 100 runs, one stage).
Goals on 2 cores: A under 10 s, B under 60 s, figures included. The timings are medians of
repeated runs in this process; on a shared machine they move with the other load.
"""
import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import analyze  # noqa: E402
from analysis import compute, loading, rules  # noqa: E402
from analysis.synthetic import write_condition  # noqa: E402


def build(root, conditions, runs, steps):
    t0 = time.perf_counter()
    for i in range(conditions):
        name = "baseline" if i == 0 else f"variant_{i}"
        write_condition(os.path.join(root, "stage", name), "stage", name, seeds=list(range(runs)),
                        final=3.30 + 0.002 * i, sd=0.003, rng_seed=i, steps=steps, val_every=125,
                        step_ms=300 - i, metrics={"peak_memory_mib": 30602 - 10 * i})
    return time.perf_counter() - t0


def cpu_seconds():
    """CPU time of this process and its finished children (the loading pool), user + system."""
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def time_case(label, logs, out, repeats):
    whole, phases, cpu = [], [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), cpu_seconds()
        rc = analyze.main(["--logs", logs, "--out", out])
        whole.append(time.perf_counter() - t0)
        cpu.append(cpu_seconds() - c0)
        assert rc == 0, f"analyze.py exited {rc}"
        # the same work again, phase by phase (no figures / report), to show where time goes
        t0 = time.perf_counter()
        conds, _ = loading.load(logs)
        t1 = time.perf_counter()
        compute.analyse(conds, dict(seed=0, resamples=10_000, baseline="baseline", metrics=None, target=3.28,
                                    equivalence={"val_loss": (0.001, False)}, rules=rules.RuleSettings(), rate=None))
        t2 = time.perf_counter()
        phases.append((t1 - t0, t2 - t1))
    load_s = statistics.median(p[0] for p in phases)
    stats_s = statistics.median(p[1] for p in phases)
    total = statistics.median(whole)
    print(f"{label}: whole analysis (incl. figures) median {total:.2f} s over {repeats} run(s) "
          f"[{', '.join(f'{w:.2f}' for w in whole)}]; loading {load_s:.2f} s, statistics {stats_s:.2f} s, "
          f"figures + report ~{max(0.0, total - load_s - stats_s):.2f} s; CPU time (all processes) median "
          f"{statistics.median(cpu):.2f} s; load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPU(s)")
    return total


def time_fresh(label, logs, out, repeats):
    """The whole `python analyze.py` in a fresh interpreter (imports included), median wall time."""
    walls, cpus = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), cpu_seconds()
        subprocess.run([sys.executable, os.path.join(ROOT, "analyze.py"), "--logs", logs, "--out", out],
                       check=True, stdout=subprocess.DEVNULL)
        walls.append(time.perf_counter() - t0)
        cpus.append(cpu_seconds() - c0)
    med = statistics.median(walls)
    print(f"{label}: fresh process, whole analysis incl. imports and figures: wall median {med:.2f} s over {repeats} "
          f"[{', '.join(f'{w:.2f}' for w in walls)}], CPU time median {statistics.median(cpus):.2f} s "
          f"(wall exceeds CPU when other jobs hold the cores); load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPU(s)")
    return med


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small-only", action="store_true", help="cases S and A only")
    p.add_argument("--keep", default=None, help="build here and keep the directories")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    base = args.keep or tempfile.mkdtemp(prefix="bench_analyze_")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPU(s) visible; machine possibly shared with other jobs")
    try:
        sdir = os.path.join(base, "s")
        print(f"case S: building 2 x 3 runs x 5,100 steps ... {build(sdir, 2, 3, 5100):.1f} s")
        ts = time_fresh("case S (6 runs)", sdir, os.path.join(base, "out_s", "report.md"), max(3, args.repeats))
        time_case("case S (6 runs), in this process", sdir, os.path.join(base, "out_s2", "report.md"), args.repeats)
        print(f"case S goal < 2 s: {'met' if ts < 2 else 'NOT met'}")
        a = os.path.join(base, "a")
        print(f"case A: building 2 x 10 runs x 5,100 steps ... {build(a, 2, 10, 5100):.1f} s")
        ta = time_case("case A (20 runs)", a, os.path.join(base, "out_a", "report.md"), args.repeats)
        print(f"case A goal < 10 s: {'met' if ta < 10 else 'NOT met'}")
        if not args.small_only:
            b = os.path.join(base, "b")
            print(f"case B: building 10 x 100 runs x 5,100 steps ... {build(b, 10, 100, 5100):.1f} s")
            tb = time_case("case B (1,000 runs)", b, os.path.join(base, "out_b", "report.md"), max(1, args.repeats - 1))
            print(f"case B goal < 60 s: {'met' if tb < 60 else 'NOT met'}")
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
