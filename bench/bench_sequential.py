"""Proof by simulation of the sequential designs of analysis/sequential.py (docs/sequential.md).

For each design (batch, max runs per condition, spending) and true effect (0, 0.5, 1, 2 SD), REPS
simulated experiments with normal runs: the type-I error / power of the group-sequential design
(futility obeyed, and ignored: the guarantee), the naive "add a batch of seeds until p < alpha" at
the same looks, the expected runs per condition, and the runs saved against a fixed-n design of the
same power (exact noncentral-t power) and against always running the maximum. GPU-hours saved per
stage = runs saved x conditions x --gpu-hours-per-run (an input, not a measurement).
A second table: coverage of the stage-wise adjusted CI against the naive t interval after a stop.

    OMP_NUM_THREADS=1 python bench/bench_sequential.py                 # 10,000 experiments per row
    python bench/bench_sequential.py --reps 2000 --coverage-reps 0     # quick
"""
import argparse
import math
import os
import sys
import time

import numpy as np
from scipy import stats as sps

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from analysis import sequential as sq  # noqa: E402

EFFECTS = (0.0, 0.5, 1.0, 2.0)


def fixed_power(design, n, effect):
    """Exact power of the fixed-n t-test of the design's question at n runs per condition."""
    if design.question == "acceptance":
        df, nc = n - 1, effect * math.sqrt(n)
    else:
        df, nc = 2 * n - 2, effect * math.sqrt(n / 2)
    if design.sides == 2:
        q = sps.t.isf(design.alpha / 2, df)
        return sps.nct.sf(q, df, nc) + sps.nct.cdf(-q, df, nc)
    return sps.nct.sf(sps.t.isf(design.alpha, df), df, nc)


def fixed_n_same_power(design, effect, power, reps):
    """Smallest n per condition whose fixed design has at least the sequential power (less two Monte
    Carlo SEs, so that a power near 1 does not demand an absurd n); None above 200."""
    goal = power - 2 * math.sqrt(max(power * (1 - power), 1e-12) / reps)
    for n in range(2, 201):
        if fixed_power(design, n, effect) >= goal:
            return n
    return None


def coverage(design, effect, reps, seed):
    """Share of stopped experiments whose adjusted CI (and naive t CI) covers the true difference."""
    rng = np.random.default_rng(seed)
    N = design.max_runs
    true = -effect if design.better == "lower" else effect
    hit_adj = hit_naive = stops = 0
    for _ in range(reps):
        base = rng.standard_normal(N)
        var = true + rng.standard_normal(N)
        dec = sq.decide(design, {design.baseline: base, design.variant: var})
        if not dec.stopped or dec.ci is None:
            continue
        stops += 1
        hit_adj += dec.ci[0] <= true <= dec.ci[1]
        n = dec.looks[-1].n[design.variant]
        ci = sps.ttest_ind(var[:n], base[:n]).confidence_interval(dec.ci_level)
        hit_naive += ci.low <= true <= ci.high
    return stops, hit_adj / max(stops, 1), hit_naive / max(stops, 1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=10_000, help="simulated experiments per row (default 10000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gpu-hours-per-run", type=float, default=0.4,
                   help="assumed cost of one run for the GPU-hours column (default 0.4: 8 GPUs x 3 min)")
    p.add_argument("--coverage-reps", type=int, default=200, help="experiments per row of the CI coverage table (0: skip)")
    args = p.parse_args(argv)
    if args.reps < 100:
        p.error("--reps: use at least 100")
    designs = [("compare", 2, 10, "obf"), ("compare", 2, 10, "pocock"),
               ("compare", 3, 12, "obf"), ("compare", 3, 12, "pocock"),
               ("acceptance", 2, 10, "obf")]
    t0 = time.perf_counter()
    head = ("| question | batch/max | spending | effect (SD) | reject seq. | reject seq. (futility ignored) | naive add-until-p<alpha "
            "| futility stops | E[runs/cond] | fixed n, same power | runs saved vs fixed same power | vs fixed max "
            "| GPU-h saved/stage vs same power |")
    print(f"bench_sequential: {args.reps} simulated experiments per row, seed {args.seed}; alpha 0.05 two-sided "
          f"(compare), 0.01 one-sided (acceptance); futility: beta spending, power 0.8")
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    rng = np.random.default_rng(args.seed)
    for question, batch, mx, spending in designs:
        d = sq.Design(question=question, variant="v", batch=batch, max_runs=mx, spending=spending,
                      **({"target": 3.28} if question == "acceptance" else {})).validated()
        ncond = len(d.conditions)
        for eff in EFFECTS:
            r = sq.simulate(d, eff, args.reps, rng=rng)
            se = math.sqrt(max(r["reject"] * (1 - r["reject"]), 1e-12) / args.reps)
            if eff == 0:
                nfix, same = mx, "-"
            else:
                nfix = fixed_n_same_power(d, eff, r["reject"], args.reps)
                same = str(nfix) if nfix else ">200"
            saved = (1 - r["mean_runs"] / nfix) if nfix else float("nan")
            gph = (nfix - r["mean_runs"]) * ncond * args.gpu_hours_per_run if nfix else float("nan")
            print(f"| {question} | {batch}/{mx} | {spending} | {eff:g} | {r['reject']:.4f} +- {se:.4f} | "
                  f"{r['reject_no_futility']:.4f} | {r['naive_reject']:.4f} | {r['futility']:.3f} | {r['mean_runs']:.2f} | "
                  f"{same} | {saved:+.0%} | {1 - r['mean_runs'] / mx:+.0%} | {gph:.1f} |")
    print(f"bench_sequential: table in {time.perf_counter() - t0:.1f} s")
    if args.coverage_reps:
        t1 = time.perf_counter()
        print(f"\nCI coverage after a stop ({args.coverage_reps} experiments per row; nominal 95%):")
        print("| design | effect (SD) | stopped | adjusted CI covers | naive t CI covers |")
        print("|---|---|---|---|---|")
        for spending in ("obf", "pocock"):
            d = sq.Design(variant="v", batch=2, max_runs=10, spending=spending, futility="none").validated()
            for eff in (0.0, 1.0):
                stops, adj, naive = coverage(d, eff, args.coverage_reps, args.seed + 1)
                print(f"| compare 2/10 {spending}, no futility | {eff:g} | {stops} | {adj:.3f} | {naive:.3f} |")
        print(f"bench_sequential: coverage in {time.perf_counter() - t1:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
