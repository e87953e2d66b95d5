"""Seed planner: from a pilot (n >= 2 runs per condition), how many runs the next step needs.

Each question assumes the pilot's mean and SD are the truth and asks for the smallest n whose
chance of success reaches 80% and 90%:
- main track: the one-sided one-sample t-test of mean < target at p < 0.01 succeeds: exact power
  from the noncentral t, P(T < -t_{1-a, n-1}) with T ~ t'(n-1, (mean - target) sqrt(n) / sd);
- optimisation track: (target - xbar) sqrt(n) >= 0.004, with xbar ~ N(mean, sd^2 / n): power
  Phi(((target - mean) sqrt(n) - 0.004) / sd), so n has a closed form;
- difference: the primary test (Welch/two-sample t, or paired t when the pilot is paired) at
  alpha 0.05 two-sided detects the observed difference: noncentral-t power, n per condition;
- equivalence: TOST at alpha 0.05 with the margin shows equivalence when the true difference is
  the observed one: power from the two noncentral-t tails, n per condition.
Runs needed are turned into device-hours with the pilot's recorded cost per run (cost.py).
tests/test_analysis_planner.py checks each count against a Monte Carlo simulation.
"""
import math
from dataclasses import dataclass, field

import numpy as np

from . import stats as st

sps = st.LazyModule("scipy.stats")   # imported on first use (see stats.LazyModule)

POWERS = (0.8, 0.9)
CAP = 100_000


def power_main(mean, sd, n, target=3.28, alpha=0.01):
    """P(one-sided one-sample t-test rejects mean >= target) at true mean/sd, n runs."""
    n = np.asarray(n, float)
    df = n - 1
    if sd == 0:
        return np.where(n >= 2, float(mean < target), 0.0)
    ncp = (mean - target) * np.sqrt(n) / sd
    return sps.nct.cdf(sps.t.ppf(alpha, df), df, ncp)


def power_opt(mean, sd, n, target=3.28, threshold=0.004):
    """P((target - xbar) sqrt(n) >= threshold) with xbar ~ N(mean, sd^2/n)."""
    n = np.asarray(n, float)
    if sd == 0:
        return np.asarray((target - mean) * np.sqrt(n) >= threshold, float)
    return sps.norm.cdf(((target - mean) * np.sqrt(n) - threshold) / sd)


def power_tost(diff, sd, n, margin, alpha=0.05):
    """Power of TOST (two one-sided two-sample t-tests, n per group, pooled sd) when the true
    difference is `diff`: P(reject diff <= -margin) + P(reject diff >= margin) - 1, each from the
    noncentral t (the usual approximation, exact when the two rejections are nested)."""
    n = np.asarray(n, float)
    df = 2 * n - 2
    se = sd * np.sqrt(2.0 / n)
    tc = sps.t.ppf(1 - alpha, df)
    p = sps.nct.sf(tc, df, (diff + margin) / se) + sps.nct.cdf(-tc, df, (diff - margin) / se) - 1
    return np.clip(p, 0.0, 1.0)


def power_tost_paired(diff, sd, n, margin, alpha=0.05):
    n = np.asarray(n, float)
    df = n - 1
    se = sd / np.sqrt(n)
    tc = sps.t.ppf(1 - alpha, df)
    p = sps.nct.sf(tc, df, (diff + margin) / se) + sps.nct.cdf(-tc, df, (diff - margin) / se) - 1
    return np.clip(p, 0.0, 1.0)


def needed(f, power, start=2):
    """Smallest n >= start with f(n) >= power, or None when even CAP runs do not reach it."""
    n = st.smallest_n(lambda k: float(f(k)), power, start, CAP)
    return None if n >= CAP and float(f(CAP)) < power else n


@dataclass
class PlanItem(st.Record):
    question: str             # "main track" | "optimisation track" | "difference" | "equivalence"
    subject: str              # condition, or "variant vs baseline"
    have: int                 # runs per condition (pairs) already finished
    unit: str = "runs"        # "runs" | "runs per condition" | "pairs"
    n80: int = None
    n90: int = None
    more80: int = None        # additional runs in total (both conditions for two-sample questions)
    more90: int = None
    hours80: float = None
    hours90: float = None
    usd80: float = None
    usd90: float = None
    hour_unit: str = None     # "GPU-hours" | "CPU-hours"
    assumption: str = ""      # what the count assumes, in words
    note: str = None          # e.g. "never: the pilot mean is not below the target"


def _fill_cost(item, per_run_hours, unit, rate, conditions=1):
    """conditions: how many conditions the extra runs are split over (2 for two-sample)."""
    if per_run_hours is None:
        return item
    item.hour_unit = unit
    for k in ("80", "90"):
        more = getattr(item, "more" + k)
        if more is not None:
            setattr(item, "hours" + k, more * per_run_hours)
            if rate is not None and unit == "GPU-hours":
                setattr(item, "usd" + k, more * per_run_hours * rate)
    return item


def plan_condition(name, finals, cfg, hours_per_run=None, hour_unit=None, rate=None):
    """Main-track and optimisation-track run counts for one condition's pilot."""
    x = np.asarray(finals, float)
    n = len(x)
    out = []
    if n < 2:
        return out
    m, s = float(x.mean()), float(x.std(ddof=1))
    for q, f, never in (
            ("main track", lambda k: power_main(m, s, k, cfg.target, cfg.main_alpha),
             f"the pilot mean {m:.4f} is not below {cfg.target:g}"),
            ("optimisation track", lambda k: power_opt(m, s, k, cfg.target, cfg.opt_threshold),
             f"the pilot mean {m:.4f} is not below {cfg.target:g}")):
        it = PlanItem(q, name, n, "runs", assumption=f"true mean {m:.4f}, SD {s:.4f} (the pilot's)")
        if m >= cfg.target:
            it.note = "never: " + never
        else:
            it.n80, it.n90 = needed(f, 0.8, 2 if q == "main track" else 1), needed(f, 0.9, 2 if q == "main track" else 1)
            it.more80 = max(0, it.n80 - n) if it.n80 else None
            it.more90 = max(0, it.n90 - n) if it.n90 else None
            if it.n80 is None:
                it.note = f"more than {CAP:,} runs"
        out.append(_fill_cost(it, hours_per_run, hour_unit, rate))
    return out


def plan_comparison(variant, baseline, b, v, paired_diffs=None, margin=None, hours=(None, None), hour_unit=None,
                    rate=None, alpha=st.ALPHA):
    """Runs to detect the observed difference, and to show equivalence within `margin`.
    paired_diffs: v - b by shared seed when the comparison's primary test is paired."""
    b, v = np.asarray(b, float), np.asarray(v, float)
    subject = f"{variant} vs {baseline}"
    out = []
    if len(b) < 2 or len(v) < 2:
        return out
    diff = float(v.mean() - b.mean())
    per_run = None
    if hours[0] is not None and hours[1] is not None:
        per_run = (hours[0] + hours[1]) / 2
    if paired_diffs is not None and len(paired_diffs) >= 2:
        d = np.asarray(paired_diffs, float)
        sd = float(d.std(ddof=1))
        have, unit, design = len(d), "pairs", "paired t"
        f_diff = lambda k: st.power_paired(diff / sd, k, alpha) if sd > 0 else 1.0
        f_eq = (lambda k: power_tost_paired(diff, sd, k, margin, alpha)) if margin else None
    else:
        sd = math.sqrt(((len(b) - 1) * b.var(ddof=1) + (len(v) - 1) * v.var(ddof=1)) / (len(b) + len(v) - 2))
        have, unit, design = min(len(b), len(v)), "runs per condition", "two-sample t"
        f_diff = lambda k: st.power_two_sample(diff / sd, k, k, alpha) if sd > 0 else 1.0
        f_eq = (lambda k: power_tost(diff, sd, k, margin, alpha)) if margin else None
    it = PlanItem("difference", subject, have, unit,
                  assumption=f"true difference {diff:+.4f}, SD {sd:.4f} ({design}, two-sided alpha {alpha:g})")
    if diff == 0 or sd == 0:
        it.note = "no difference observed" if diff == 0 else "zero variance: the difference is exact"
    else:
        it.n80, it.n90 = needed(f_diff, 0.8), needed(f_diff, 0.9)
        if it.n80 is None:
            it.note = f"more than {CAP:,} {unit}"
    _more(it, b, v)
    out.append(_fill_cost(it, per_run, hour_unit, rate))
    if margin:
        it = PlanItem("equivalence", subject, have, unit,
                      assumption=f"true difference {diff:+.4f}, SD {sd:.4f}, margin ±{margin:g} (TOST, alpha {alpha:g})")
        if abs(diff) >= margin:
            it.note = f"never: the observed difference {diff:+.4f} is not inside ±{margin:g}"
        elif sd == 0:
            it.note = "zero variance: equivalence is exact"
        else:
            it.n80, it.n90 = needed(f_eq, 0.8), needed(f_eq, 0.9)
            if it.n80 is None:
                it.note = f"more than {CAP:,} {unit}"
        _more(it, b, v)
        out.append(_fill_cost(it, per_run, hour_unit, rate))
    return out


def _more(it, b, v):
    """Additional runs over both conditions to reach n per condition (or n pairs)."""
    for k in ("80", "90"):
        n = getattr(it, "n" + k)
        if n is not None:
            setattr(it, "more" + k, max(0, n - len(b)) + max(0, n - len(v)))
