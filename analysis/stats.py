"""Statistics for analyze.py: scipy.stats for every test it has, our own code only where it has none.

scipy does: Shapiro-Wilk, Welch's and the paired and one-sample t-tests (with their confidence
intervals), Mann-Whitney U, Wilcoxon signed-rank, permutation tests (exact enumeration when the
number of splits is small), Brown-Forsythe/Levene, and the bootstrap (each sample resampled on its
own, so a two-sample bootstrap is stratified). Written here because scipy has nothing for them:
Holm's step-down adjustment, Hedges' g with its noncentral-t CI, power and runs needed, the
probability of improvement (as a bootstrap statistic), and the curve helpers.

Our rules around scipy (tested in tests/test_stats.py):
- every result is a small typed record (a dataclass); a value that is not defined for the data
  (one run, zero variance, ...) is None, never NaN or inf;
- a comparison is always `variant - baseline` (b = baseline sample, v = variant sample);
- two-sided p-values of resampling tests are twice the smaller one-sided p-value, capped at 1;
- a sample with no spread beyond rounding (relative 1e-12) is "deterministic": no test is run on
  two such samples, and the exact difference is reported instead.
"""
import dataclasses
import importlib
import math
from dataclasses import dataclass

import numpy as np


class LazyModule:
    """A module imported on first attribute access. scipy.stats takes about 1 s to import on a
    2-core machine; analyze.py starts its figure process (and reads the runs) before paying it."""

    def __init__(self, name):
        self._name, self._module = name, None

    def __getattr__(self, attr):
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attr)

    def __repr__(self):
        return f"<LazyModule {self._name} ({'imported' if self._module else 'not imported yet'})>"


special = LazyModule("scipy.special")
sps = LazyModule("scipy.stats")

ALPHA = 0.05
EXACT_LIMIT = 200_000       # enumerate permutations/sign flips exactly up to this many
_BATCH_ELEMS = 4_000_000    # elements per bootstrap batch (bounds memory)


class Record:
    """Base of every result record: dict-style read access (r["p"], r.get("p")) for the report
    templates, and to_json() for results.json."""

    def __getitem__(self, key):
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def __setitem__(self, key, value):
        if key not in {f.name for f in dataclasses.fields(self)}:
            raise KeyError(f"{type(self).__name__} has no field {key!r}")
        setattr(self, key, value)

    def __contains__(self, key):
        return key in {f.name for f in dataclasses.fields(self)}

    def get(self, key, default=None):
        return getattr(self, key, default)

    def to_json(self):
        return dataclasses.asdict(self)


def num(x):
    """A finite float, or None (so that NaN/inf never leave this module)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


_num = num


def is_constant(x):
    """True when x has no spread beyond floating-point rounding (relative 1e-12)."""
    x = np.asarray(x, float)
    if x.size < 2:
        return True
    return float(np.ptp(x)) <= 1e-12 * max(float(np.max(np.abs(x))), 1e-300)


def _batch(resamples, n):
    return max(1, min(resamples, _BATCH_ELEMS // max(n, 1)))


def _percentile_bootstrap(samples, statistic, rng, resamples, level=0.95):
    """scipy.stats.bootstrap, percentile method, each sample resampled on its own; (low, high)."""
    n = sum(len(s) for s in samples)
    res = sps.bootstrap(samples, statistic, n_resamples=resamples, batch=_batch(resamples, n), vectorized=True,
                        method="percentile", confidence_level=level, rng=rng)
    return num(res.confidence_interval.low), num(res.confidence_interval.high)


def _mean_stat(x, axis=-1):
    return np.mean(x, axis=axis)


def _diff_stat(v, b, axis=-1):
    return np.mean(v, axis=axis) - np.mean(b, axis=axis)


TIE_DIGITS = 9   # resampling statistics are compared after rounding to 1e-9 of the data's scale


def _tie_safe(stat, *samples):
    """stat, rounded to 1e-9 of the data's magnitude. Splits whose statistics are equal in exact
    arithmetic (values recorded to 4 decimals, such as 3.3008 + 3.3012 vs 3.3010 + 3.3010) differ in
    binary floating point by ~1e-16, far more than scipy's relative tolerance on a small observed
    difference of means; rounding makes them ties again, as the exact test counts them."""
    scale = max((float(np.max(np.abs(x))) for x in samples if len(x)), default=1.0) or 1.0
    return lambda *a, axis=-1: np.round(stat(*a, axis=axis) / scale, TIE_DIGITS)


# ---------------------------------------------------------------------------------------------
# one sample
# ---------------------------------------------------------------------------------------------

@dataclass
class Description(Record):
    n: int
    mean: float = None
    std: float = None
    sem: float = None
    ci_low: float = None
    ci_high: float = None
    median: float = None
    min: float = None
    max: float = None
    p25: float = None
    p75: float = None
    p95: float = None
    cv: float = None
    boot_low: float = None
    boot_high: float = None
    shapiro_w: float = None
    shapiro_p: float = None
    deterministic: bool = False


def describe(x, rng, resamples=10_000):
    """Descriptive statistics of one condition's values of one metric."""
    x = np.asarray(x, float)
    n = len(x)
    out = Description(n=n)
    if n == 0:
        return out
    mean = float(x.mean())
    p25, p50, p75, p95 = np.percentile(x, [25, 50, 75, 95])
    out.mean, out.median, out.min, out.max = num(mean), num(p50), num(x.min()), num(x.max())
    out.p25, out.p75, out.p95 = num(p25), num(p75), num(p95)
    if n < 2:
        return out
    if is_constant(x):
        out.deterministic = True
        out.std = out.sem = out.cv = 0.0
        out.ci_low = out.ci_high = out.boot_low = out.boot_high = mean
        return out
    t = sps.ttest_1samp(x, mean)
    ci = t.confidence_interval(0.95)
    std = float(x.std(ddof=1))
    out.std, out.sem = num(std), num(std / math.sqrt(n))
    out.ci_low, out.ci_high = num(ci.low), num(ci.high)
    out.cv = num(std / abs(mean)) if mean != 0 else None
    out.boot_low, out.boot_high = _percentile_bootstrap((x,), _mean_stat, rng, resamples)
    if n >= 3:
        sw = sps.shapiro(x)
        out.shapiro_w, out.shapiro_p = num(sw.statistic), num(sw.pvalue)
    return out


@dataclass
class OneSample(Record):
    """One-sided one-sample t-test of H1: mean < target."""
    n: int
    target: float
    mean: float = None
    sd: float = None
    t: float = None
    df: int = None
    p: float = None
    deterministic: bool = False


def one_sample_less(x, target):
    """One-sample t-test of H1: mean(x) < target (the speedrun's main-track acceptance test)."""
    x = np.asarray(x, float)
    n = len(x)
    out = OneSample(n=n, target=float(target), mean=num(x.mean()) if n else None)
    if n < 2:
        return out
    if is_constant(x):
        out.deterministic, out.sd = True, 0.0
        return out
    r = sps.ttest_1samp(x, target, alternative="less")
    out.sd, out.t, out.df, out.p = num(x.std(ddof=1)), num(r.statistic), n - 1, num(r.pvalue)
    return out


# ---------------------------------------------------------------------------------------------
# two independent samples
# ---------------------------------------------------------------------------------------------

@dataclass
class TTest(Record):
    """A t-test of a difference of means with its confidence interval (Welch or paired)."""
    diff: float = None
    t: float = None
    df: float = None
    p: float = None
    ci_low: float = None
    ci_high: float = None


def welch(b, v, level=0.95, alternative="two-sided"):
    """Welch's t-test of mean(v) - mean(b) (scipy.stats.ttest_ind, equal_var=False) and its CI."""
    b, v = np.asarray(b, float), np.asarray(v, float)
    out = TTest(diff=num(v.mean() - b.mean()) if len(b) and len(v) else None)
    if len(b) < 2 or len(v) < 2 or (is_constant(b) and is_constant(v)):
        return out
    r = sps.ttest_ind(v, b, equal_var=False, alternative=alternative)
    ci = r.confidence_interval(level)
    out.t, out.df, out.p, out.ci_low, out.ci_high = num(r.statistic), num(r.df), num(r.pvalue), num(ci.low), num(ci.high)
    return out


@dataclass
class Tost(Record):
    """Two one-sided Welch tests: H1 low < mean(v) - mean(b) < high; p is the larger one-sided p."""
    low: float
    high: float
    diff: float = None
    p_lower: float = None
    p_upper: float = None
    p: float = None
    ci90_low: float = None
    ci90_high: float = None
    deterministic: bool = False
    within: bool = None
    margin: float = None
    margin_spec: str = None
    p_holm: float = None
    significant: bool = None


def tost(b, v, low, high):
    b, v = np.asarray(b, float), np.asarray(v, float)
    w = welch(b, v, level=0.90)
    out = Tost(low=float(low), high=float(high), diff=w.diff, ci90_low=w.ci_low, ci90_high=w.ci_high)
    if w.p is None:
        if len(b) >= 2 and len(v) >= 2 and w.diff is not None:
            out.deterministic, out.within = True, bool(low < w.diff < high)
        return out
    p_lo = sps.ttest_ind(v - low, b, equal_var=False, alternative="greater").pvalue   # H0: diff <= low
    p_hi = sps.ttest_ind(v - high, b, equal_var=False, alternative="less").pvalue     # H0: diff >= high
    out.p_lower, out.p_upper, out.p = num(p_lo), num(p_hi), num(max(p_lo, p_hi))
    out.within = bool(low < out.ci90_low and out.ci90_high < high)
    return out


@dataclass
class RankTest(Record):
    """Mann-Whitney U (u = U of the variant) or Wilcoxon signed-rank (w); method as scipy chose it."""
    u: float = None
    w: float = None
    p: float = None
    method: str = None
    n: int = None


def mann_whitney(b, v):
    """scipy.stats.mannwhitneyu, two-sided, method 'auto': exact when a sample has <= 8 runs and
    there are no ties, else the normal approximation with tie and continuity corrections."""
    b, v = np.asarray(b, float), np.asarray(v, float)
    out = RankTest()
    if len(b) < 1 or len(v) < 1:
        return out
    pooled = np.r_[b, v]
    if is_constant(pooled) and len(pooled) > 1:
        return out   # every value tied: no ranking information
    r = sps.mannwhitneyu(v, b, alternative="two-sided", method="auto")
    ties = len(np.unique(pooled)) < len(pooled)
    out.u, out.p = num(r.statistic), num(r.pvalue)
    out.method = "exact" if (min(len(b), len(v)) <= 8 and not ties) else "normal approximation"
    return out


@dataclass
class Permutation(Record):
    p: float = None
    method: str = None
    splits: int = None
    min_p: float = None
    resamples: int = None


def permutation_test(b, v, rng, resamples=10_000, limit=EXACT_LIMIT):
    """scipy.stats.permutation_test of the difference of means: exact (every split enumerated)
    when C(n, n_v) <= limit, else Monte Carlo with `resamples` random splits."""
    b, v = np.asarray(b, float), np.asarray(v, float)
    out = Permutation()
    if len(b) < 1 or len(v) < 1:
        return out
    splits = math.comb(len(b) + len(v), len(v))
    exact = splits <= limit
    r = sps.permutation_test((v, b), _tie_safe(_diff_stat, v, b), permutation_type="independent", vectorized=True,
                             n_resamples=np.inf if exact else resamples, alternative="two-sided", rng=rng,
                             batch=_batch(splits if exact else resamples, len(b) + len(v)))
    out.p, out.splits = num(min(1.0, r.pvalue)), splits
    if exact:
        out.method, out.min_p = "exact", min(1.0, 2 / splits)
    else:
        out.method, out.resamples, out.min_p = "monte carlo", resamples, min(1.0, 2 / (resamples + 1))
    return out


def hedges_j(df):
    """Exact small-sample correction factor J(df) = G(df/2) / (sqrt(df/2) G((df-1)/2))."""
    return math.exp(special.gammaln(df / 2) - special.gammaln((df - 1) / 2)) / math.sqrt(df / 2)


def _nct_ci(t_obs, df, level):
    """Noncentrality parameters whose noncentral t puts t_obs at the two tail quantiles."""
    from scipy import optimize

    def solve(q):
        f = lambda ncp: sps.nct.cdf(t_obs, df, ncp) - q
        lo, hi = t_obs - 10, t_obs + 10
        for _ in range(60):
            if f(lo) > 0 and f(hi) < 0:
                return optimize.brentq(f, lo, hi, xtol=1e-10)
            lo, hi = lo - 10, hi + 10
        raise ValueError("no bracket")
    return solve(0.5 + level / 2), solve(0.5 - level / 2)


@dataclass
class Effect(Record):
    d: float = None
    g: float = None
    d_low: float = None
    d_high: float = None
    g_low: float = None
    g_high: float = None
    ci_method: str = None
    pooled_sd: float = None


def effect_size(b, v, level=0.95):
    """Cohen's d (pooled SD) and Hedges' g = J d, each with a CI from inverting the noncentral t
    (the large-sample normal approximation when that cannot be solved). scipy has no effect sizes."""
    b, v = np.asarray(b, float), np.asarray(v, float)
    nb, nv = len(b), len(v)
    out = Effect()
    if nb < 2 or nv < 2:
        return out
    df = nb + nv - 2
    sp = math.sqrt(((nb - 1) * b.var(ddof=1) + (nv - 1) * v.var(ddof=1)) / df)
    if is_constant(b) and is_constant(v):
        out.pooled_sd = 0.0
        return out
    d = float(v.mean() - b.mean()) / sp
    j = hedges_j(df)
    scale = math.sqrt(1 / nb + 1 / nv)
    try:
        if abs(d / scale) > 35:
            raise ValueError("noncentral t unreliable this far out")
        lo, hi = _nct_ci(d / scale, df, level)
        d_lo, d_hi, method = lo * scale, hi * scale, "noncentral t"
    except (ValueError, RuntimeError):
        se = math.sqrt((nb + nv) / (nb * nv) + d * d / (2 * (nb + nv)))
        z = sps.norm.ppf(0.5 + level / 2)
        d_lo, d_hi, method = d - z * se, d + z * se, "normal approximation"
    out.d, out.g, out.d_low, out.d_high = num(d), num(j * d), num(d_lo), num(d_hi)
    out.g_low, out.g_high, out.ci_method, out.pooled_sd = num(j * d_lo), num(j * d_hi), method, num(sp)
    return out


def probability_of_improvement(b, v, higher_better=None):
    """P(a random variant run beats a random baseline run), ties count one half; for a metric
    without a direction, P(variant > baseline). Works along the last axis (bootstrap batches)."""
    b, v = np.asarray(b, float), np.asarray(v, float)
    nb, nv = b.shape[-1], v.shape[-1]
    ranks = sps.rankdata(np.concatenate([v, np.broadcast_to(b, v.shape[:-1] + (nb,))], axis=-1), axis=-1)
    greater = (ranks[..., :nv].sum(axis=-1) - nv * (nv + 1) / 2) / (nv * nb)   # Mann-Whitney U / (nv nb)
    return 1.0 - greater if higher_better is False else greater


@dataclass
class Bootstrap(Record):
    diff: float = None
    diff_low: float = None
    diff_high: float = None
    poi: float = None
    poi_low: float = None
    poi_high: float = None
    poi_kind: str = None


def stratified_bootstrap(b, v, rng, resamples=10_000, higher_better=None, level=0.95):
    """Percentile CIs of the difference of means and of the probability of improvement, from
    scipy.stats.bootstrap resampling each condition on its own (no resample ever lacks a group)."""
    b, v = np.asarray(b, float), np.asarray(v, float)
    out = Bootstrap()
    if len(b) < 1 or len(v) < 1:
        return out
    out.diff = num(v.mean() - b.mean())
    out.poi = num(probability_of_improvement(b, v, higher_better))
    out.poi_kind = "P(variant better)" if higher_better is not None else "P(variant > baseline)"
    if len(b) < 2 or len(v) < 2:
        return out
    both = lambda vv, bb, axis=-1: np.stack([_diff_stat(vv, bb), probability_of_improvement(bb, vv, higher_better)])
    res = sps.bootstrap((v, b), both, n_resamples=resamples, batch=_batch(resamples, len(v) + len(b)), vectorized=True,
                        method="percentile", confidence_level=level, rng=rng)
    lo, hi = res.confidence_interval
    out.diff_low, out.diff_high, out.poi_low, out.poi_high = num(lo[0]), num(hi[0]), num(lo[1]), num(hi[1])
    return out


@dataclass
class Levene(Record):
    stat: float = None
    p: float = None
    center: str = "median"


def levene(*groups, center="median"):
    """scipy.stats.levene; center='median' is the Brown-Forsythe variant."""
    groups = [np.asarray(g, float) for g in groups]
    out = Levene(center=center)
    if len(groups) < 2 or any(len(g) < 2 for g in groups) or all(is_constant(g) for g in groups):
        return out
    with np.errstate(invalid="ignore", divide="ignore"):   # no spread around the centres: undefined (None)
        r = sps.levene(*groups, center=center)
    out.stat, out.p = num(r.statistic), num(r.pvalue)
    return out


# ---------------------------------------------------------------------------------------------
# paired samples (runs of two conditions sharing a seed)
# ---------------------------------------------------------------------------------------------

def wilcoxon(d):
    """scipy.stats.wilcoxon on paired differences (zeros dropped), method 'auto': exact without
    ties or zeros up to 50 pairs; with ties or zeros, every sign flip up to 13 pairs; else normal."""
    d = np.asarray(d, float)
    nz = d[d != 0]
    out = RankTest(n=len(nz))
    if len(nz) == 0:
        return out
    r = sps.wilcoxon(d, zero_method="wilcox", method="auto")
    ties = len(np.unique(np.abs(nz))) < len(nz) or len(nz) < len(d)
    out.w, out.p = num(r.statistic), num(r.pvalue)
    out.method = ("exact" if not ties and len(d) <= 50 else
                  "exact (sign flips)" if ties and len(d) <= 13 else "normal approximation")
    return out


@dataclass
class Paired(Record):
    n: int
    mean_diff: float = None
    t: float = None
    df: int = None
    p_t: float = None
    ci_low: float = None
    ci_high: float = None
    wilcoxon_p: float = None
    wilcoxon_method: str = None
    signflip_p: float = None
    signflip_method: str = None
    signflip_min_p: float = None
    boot_low: float = None
    boot_high: float = None
    dz: float = None
    deterministic: bool = False
    power: float = None
    runs_needed: int = None


def paired(b, v, rng, resamples=10_000, limit=EXACT_LIMIT, level=0.95):
    """Paired analysis of v - b (same seeds): paired t (scipy.stats.ttest_rel) with its CI,
    Wilcoxon, the sign-flip permutation test of the mean difference (exact when 2^n <= limit),
    the bootstrap CI of the mean difference, and Cohen's d_z."""
    b, v = np.asarray(b, float), np.asarray(v, float)
    d = v - b
    n = len(d)
    out = Paired(n=n, mean_diff=num(d.mean()) if n else None)
    if n < 2:
        return out
    scale = max(float(np.max(np.abs(v))), float(np.max(np.abs(b))), 1e-300)
    if is_constant(d) or float(d.std(ddof=1)) <= 1e-12 * scale:
        out.deterministic = True
        out.ci_low = out.ci_high = out.boot_low = out.boot_high = out.mean_diff
        return out
    r = sps.ttest_rel(v, b)
    ci = r.confidence_interval(level)
    out.t, out.df, out.p_t, out.ci_low, out.ci_high = num(r.statistic), n - 1, num(r.pvalue), num(ci.low), num(ci.high)
    out.dz = num(d.mean() / d.std(ddof=1))
    wx = wilcoxon(d)
    out.wilcoxon_p, out.wilcoxon_method = wx.p, wx.method
    exact = 2 ** n <= limit
    sf = sps.permutation_test((d,), _tie_safe(_mean_stat, d), permutation_type="samples", vectorized=True,
                              n_resamples=np.inf if exact else resamples, alternative="two-sided", rng=rng,
                              batch=_batch(2 ** n if exact else resamples, n))
    out.signflip_p = num(min(1.0, sf.pvalue))
    out.signflip_method = "exact" if exact else "monte carlo"
    out.signflip_min_p = min(1.0, 2 / 2 ** n) if exact else min(1.0, 2 / (resamples + 1))
    out.boot_low, out.boot_high = _percentile_bootstrap((d,), _mean_stat, rng, resamples, level)
    return out


# ---------------------------------------------------------------------------------------------
# power (scipy has no power analysis)
# ---------------------------------------------------------------------------------------------

def power_two_sample(d, n1, n2, alpha=ALPHA):
    """Power of the two-sided two-sample t-test at standardized effect d (noncentral t)."""
    n1, n2 = np.asarray(n1, float), np.asarray(n2, float)
    df = n1 + n2 - 2
    ncp = abs(d) * np.sqrt(n1 * n2 / (n1 + n2))
    tc = sps.t.ppf(1 - alpha / 2, df)
    return sps.nct.sf(tc, df, ncp) + sps.nct.cdf(-tc, df, ncp)


def power_paired(dz, n, alpha=ALPHA):
    n = np.asarray(n, float)
    df = n - 1
    ncp = abs(dz) * np.sqrt(n)
    tc = sps.t.ppf(1 - alpha / 2, df)
    return sps.nct.sf(tc, df, ncp) + sps.nct.cdf(-tc, df, ncp)


def smallest_n(f, power, start=2, cap=10 ** 7):
    """Smallest integer n >= start with f(n) >= power (f increasing in n); cap if beyond cap."""
    lo = hi = start
    while f(hi) < power:
        lo, hi = hi, hi * 2
        if hi > cap:
            return cap
    if f(lo) >= power:
        return lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if f(mid) >= power:
            hi = mid
        else:
            lo = mid
    return int(hi)


def runs_needed(d, power=0.8, alpha=ALPHA, paired_design=False, cap=10 ** 7):
    """Smallest n per condition (pairs, if paired) giving `power` at effect d; None if d == 0,
    cap if more than cap would be needed."""
    if d is None or d == 0 or not math.isfinite(d):
        return None
    f = (lambda n: power_paired(d, n, alpha)) if paired_design else \
        (lambda n: power_two_sample(d, n, n, alpha))
    return smallest_n(f, power, 2, cap)


@dataclass
class Power(Record):
    effect: float = None
    effect_name: str = "|g|"
    design: str = "two-sample"
    achieved: float = None
    runs_needed: int = None


@dataclass
class Primary(Record):
    test: str
    p: float = None
    ci_low: float = None
    ci_high: float = None
    p_holm: float = None
    significant: bool = None


# ---------------------------------------------------------------------------------------------
# multiplicity
# ---------------------------------------------------------------------------------------------

def holm(pvalues):
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1), same order as input."""
    p = np.asarray(pvalues, float)
    m = len(p)
    if m == 0:
        return p
    order = np.argsort(p, kind="mergesort")
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adj
    return out


# ---------------------------------------------------------------------------------------------
# curves
# ---------------------------------------------------------------------------------------------

def align(steps_list, values_list):
    """Put runs on a common step grid: (grid, matrix runs x grid) with NaN where a run has no value."""
    if not steps_list:
        return np.zeros(0), np.zeros((0, 0))
    grid = np.unique(np.concatenate([np.asarray(s, float) for s in steps_list]))
    mat = np.full((len(steps_list), len(grid)), np.nan)
    for i, (s, y) in enumerate(zip(steps_list, values_list)):
        if len(s):
            mat[i, np.searchsorted(grid, np.asarray(s, float))] = y
    return grid, mat


def mean_sd(mat):
    """Per-column count, mean and SD (ddof=1) ignoring NaN; undefined entries are NaN."""
    ok = np.isfinite(mat)
    cnt = ok.sum(axis=0)
    safe = np.where(ok, mat, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = safe.sum(axis=0) / cnt
        var = (np.where(ok, mat - mean, 0.0) ** 2).sum(axis=0) / (cnt - 1)
    mean = np.where(cnt > 0, mean, np.nan)
    sd = np.where(cnt > 1, np.sqrt(var), np.nan)
    return cnt, mean, sd


def gap_ci(mat_b, mat_v, level=0.95):
    """Gap (variant - baseline) of the means at every grid column, with a Welch t-interval computed
    for all columns at once (runs missing a column are left out of it); columns where either side
    has < 2 runs get NaN bounds."""
    nb, mb, sb = mean_sd(mat_b)
    nv, mv, sv = mean_sd(mat_v)
    gap = mv - mb
    with np.errstate(invalid="ignore", divide="ignore"):
        vb, vv = sb ** 2 / nb, sv ** 2 / nv
        se2 = vb + vv
        df = se2 ** 2 / (vb ** 2 / (nb - 1) + vv ** 2 / (nv - 1))
        df = np.where(se2 > 0, df, np.nan)
        half = sps.t.ppf(0.5 + level / 2, df) * np.sqrt(se2)
    half = np.where(se2 == 0, 0.0, half)
    return gap, gap - half, gap + half


def first_crossing(x, y, target):
    """Per row: the x at which y first reaches <= target, linearly interpolated between the
    previous point and the first point at or below target; NaN where never reached."""
    x, y = np.atleast_2d(np.asarray(x, float)), np.atleast_2d(np.asarray(y, float))
    below = y <= target
    hit = below.any(axis=1)
    idx = np.argmax(below, axis=1)
    rows = np.arange(len(y))
    prev = np.maximum(idx - 1, 0)
    x1, y1, x0, y0 = x[rows, idx], y[rows, idx], x[rows, prev], y[rows, prev]
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where((idx > 0) & (y0 != y1) & np.isfinite(y0), (y0 - target) / (y0 - y1), 1.0)
    out = np.where(idx > 0, x0 + frac * (x1 - x0), x1)
    return np.where(hit, out, np.nan)
