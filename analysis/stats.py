"""Statistics for analyze.py: small pure functions on numpy arrays.

Every function takes plain arrays (and, where it resamples, a numpy Generator and a number of
resamples) and returns a dict of plain floats/ints/None. None means "not defined for this data"
(one run, zero variance, ...); the caller turns it into a note, never into NaN in a table.

Conventions used throughout:
- a comparison is always `variant - baseline` (b = baseline sample, v = variant sample);
- two-sided p-values of resampling tests are twice the smaller one-sided p-value, capped at 1;
- resampling is vectorised: index/count matrices of shape (resamples, n), never a Python loop
  over resamples (chunks bound the memory for large n).
"""
import itertools
import math

import numpy as np
from scipy import optimize, special
from scipy import stats as sps

ALPHA = 0.05
EXACT_LIMIT = 200_000       # enumerate permutations/sign flips exactly up to this many
_CHUNK_ELEMS = 4_000_000    # elements per resampling chunk (bounds memory, keeps speed)


def _num(x):
    """A finite float, or None (so that NaN/inf never leave this module)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def is_constant(x):
    """True when x has no spread beyond floating-point rounding (relative 1e-12)."""
    x = np.asarray(x, float)
    if x.size < 2:
        return True
    return float(np.ptp(x)) <= 1e-12 * max(float(np.max(np.abs(x))), 1e-300)


def _rel_tol(*arrays):
    """Tolerance for "as extreme as observed" under floating-point rounding of sums."""
    scale = max((float(np.max(np.abs(a))) for a in arrays if np.size(a)), default=1.0)
    return 1e-12 * max(scale, 1.0) * 16


# ---------------------------------------------------------------------------------------------
# bootstrap helpers
# ---------------------------------------------------------------------------------------------

def _chunks(resamples, n):
    step = max(1, _CHUNK_ELEMS // max(n, 1))
    for start in range(0, resamples, step):
        yield min(step, resamples - start)


def bootstrap_counts(rng, n, resamples):
    """Multiplicity matrix (resamples, n): how often each observation is drawn in each resample."""
    idx = rng.integers(0, n, size=(resamples, n))
    flat = (idx + (np.arange(resamples) * n)[:, None]).ravel()
    return np.bincount(flat, minlength=resamples * n).reshape(resamples, n).astype(np.float64)


def bootstrap_means(x, rng, resamples):
    """Means of `resamples` bootstrap resamples of x (vectorised, chunked)."""
    x = np.asarray(x, float)
    out = []
    for r in _chunks(resamples, len(x)):
        out.append(x[rng.integers(0, len(x), size=(r, len(x)))].mean(axis=1))
    return np.concatenate(out)


def percentile_ci(samples, level=0.95):
    lo, hi = np.percentile(samples, [50 * (1 - level), 50 * (1 + level)])
    return _num(lo), _num(hi)


# ---------------------------------------------------------------------------------------------
# one sample
# ---------------------------------------------------------------------------------------------

def describe(x, rng, resamples=10_000):
    """Descriptive statistics of one condition's values of one metric."""
    x = np.asarray(x, float)
    n = len(x)
    out = dict(n=n, mean=None, std=None, sem=None, ci_low=None, ci_high=None, median=None,
               min=None, max=None, p25=None, p75=None, p95=None, cv=None, boot_low=None,
               boot_high=None, shapiro_w=None, shapiro_p=None, deterministic=False)
    if n == 0:
        return out
    mean = float(x.mean())
    p25, p50, p75, p95 = np.percentile(x, [25, 50, 75, 95])
    out.update(mean=_num(mean), median=_num(p50), min=_num(x.min()), max=_num(x.max()),
               p25=_num(p25), p75=_num(p75), p95=_num(p95))
    if n < 2:
        return out
    if is_constant(x):
        out.update(deterministic=True, std=0.0, sem=0.0, ci_low=mean, ci_high=mean, cv=0.0,
                   boot_low=mean, boot_high=mean)
        return out
    std = float(x.std(ddof=1))
    sem = std / math.sqrt(n)
    half = sps.t.ppf(0.975, n - 1) * sem
    out.update(std=_num(std), sem=_num(sem), ci_low=_num(mean - half), ci_high=_num(mean + half),
               cv=_num(std / abs(mean)) if mean != 0 else None)
    out["boot_low"], out["boot_high"] = percentile_ci(bootstrap_means(x, rng, resamples))
    if n >= 3:
        w, p = shapiro_wilk(x)
        out.update(shapiro_w=w, shapiro_p=p)
    return out


def shapiro_wilk(x):
    """Shapiro-Wilk W and p (Royston's approximation, as in AS R94); n >= 3, not constant."""
    x = np.sort(np.asarray(x, float))
    n = len(x)
    if n < 3 or is_constant(x):
        return None, None
    if n > 5000:
        return None, None
    if n == 3:
        a = np.array([-math.sqrt(0.5), 0.0, math.sqrt(0.5)])
        w = (a @ x) ** 2 / np.sum((x - x.mean()) ** 2)
        w = min(max(w, 0.75), 1.0)
        p = 6.0 / math.pi * (math.asin(math.sqrt(w)) - math.asin(math.sqrt(0.75)))
        return _num(w), _num(min(max(p, 0.0), 1.0))
    i = np.arange(1, n + 1)
    m = sps.norm.ppf((i - 0.375) / (n + 0.25))
    mm = float(m @ m)
    u = 1.0 / math.sqrt(n)
    c1 = [0.0, 0.221157, -0.147981, -2.071190, 4.434685, -2.706056]
    c2 = [0.0, 0.042981, -0.293762, -1.752461, 5.682633, -3.582633]
    poly = lambda c, v: sum(ci * v ** k for k, ci in enumerate(c))
    a = m / math.sqrt(mm)
    an = poly(c1, u) + m[-1] / math.sqrt(mm)
    if n > 5:
        an1 = poly(c2, u) + m[-2] / math.sqrt(mm)
        phi = (mm - 2 * m[-1] ** 2 - 2 * m[-2] ** 2) / (1 - 2 * an ** 2 - 2 * an1 ** 2)
        a = m / math.sqrt(phi)
        a[-1], a[-2], a[0], a[1] = an, an1, -an, -an1
    else:
        phi = (mm - 2 * m[-1] ** 2) / (1 - 2 * an ** 2)
        a = m / math.sqrt(phi)
        a[-1], a[0] = an, -an
    w = float((a @ x) ** 2 / np.sum((x - x.mean()) ** 2))
    w = min(w, 1.0)
    if n <= 11:
        gamma = -2.273 + 0.459 * n
        mu = poly([0.5440, -0.39978, 0.025054, -6.714e-4], n)
        sigma = math.exp(poly([1.3822, -0.77857, 0.062767, -0.0020322], n))
        if math.log1p(-w) >= gamma:
            return _num(w), 0.0
        z = (-math.log(gamma - math.log1p(-w)) - mu) / sigma
    else:
        ln = math.log(n)
        mu = poly([-1.5861, -0.31082, -0.083751, 0.0038915], ln)
        sigma = math.exp(poly([-0.4803, -0.082676, 0.0030302], ln))
        z = (math.log1p(-w) - mu) / sigma
    return _num(w), _num(sps.norm.sf(z))


def one_sample_less(x, target):
    """One-sample t-test of H1: mean(x) < target (the speedrun acceptance criterion)."""
    x = np.asarray(x, float)
    n = len(x)
    out = dict(n=n, mean=_num(x.mean()) if n else None, target=float(target), t=None, df=None,
               p=None, deterministic=False)
    if n < 2:
        return out
    if is_constant(x):
        out["deterministic"] = True
        return out
    sd = float(x.std(ddof=1))
    t = (x.mean() - target) / (sd / math.sqrt(n))
    out.update(t=_num(t), df=n - 1, p=_num(sps.t.cdf(t, n - 1)))
    return out


# ---------------------------------------------------------------------------------------------
# two independent samples
# ---------------------------------------------------------------------------------------------

def welch(b, v, level=0.95):
    """Welch's t-test of mean(v) - mean(b), with the Welch confidence interval of the difference."""
    b, v = np.asarray(b, float), np.asarray(v, float)
    nb, nv = len(b), len(v)
    diff = float(v.mean() - b.mean())
    out = dict(diff=_num(diff), t=None, df=None, p=None, ci_low=None, ci_high=None, se=None)
    if nb < 2 or nv < 2:
        return out
    if is_constant(b) and is_constant(v):
        return out
    vb = 0.0 if is_constant(b) else b.var(ddof=1) / nb
    vv = 0.0 if is_constant(v) else v.var(ddof=1) / nv
    se2 = vb + vv
    se = math.sqrt(se2)
    df = se2 ** 2 / ((vb ** 2 / (nb - 1) if vb else 0.0) + (vv ** 2 / (nv - 1) if vv else 0.0))
    t = diff / se
    half = sps.t.ppf(0.5 + level / 2, df) * se
    out.update(t=_num(t), df=_num(df), p=_num(2 * sps.t.sf(abs(t), df)), se=_num(se),
               ci_low=_num(diff - half), ci_high=_num(diff + half))
    return out


def tost(b, v, low, high):
    """Two one-sided Welch tests: H1 low < mean(v) - mean(b) < high. p = max of the two."""
    b, v = np.asarray(b, float), np.asarray(v, float)
    w = welch(b, v, level=0.90)
    out = dict(low=float(low), high=float(high), diff=w["diff"], p_lower=None, p_upper=None,
               p=None, ci90_low=w["ci_low"], ci90_high=w["ci_high"], deterministic=False,
               within=None)
    if w["se"] is None:
        if len(b) >= 2 and len(v) >= 2 and w["diff"] is not None:
            out["deterministic"] = True
            out["within"] = bool(low < w["diff"] < high)
        return out
    se, df, diff = w["se"], w["df"], w["diff"]
    p_lo = sps.t.sf((diff - low) / se, df)      # H0: diff <= low
    p_hi = sps.t.cdf((diff - high) / se, df)    # H0: diff >= high
    out.update(p_lower=_num(p_lo), p_upper=_num(p_hi), p=_num(max(p_lo, p_hi)))
    return out


def _rank(x):
    """Average ranks (1-based) and the tie-group sizes."""
    x = np.asarray(x, float)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    new = np.r_[True, xs[1:] != xs[:-1]]
    group = np.cumsum(new) - 1
    starts = np.flatnonzero(new)
    counts = np.diff(np.r_[starts, len(x)])
    avg = starts + (counts + 1) / 2.0
    ranks = np.empty(len(x))
    ranks[order] = avg[group]
    return ranks, counts


def _u_null_counts(n1, n2):
    """Number of arrangements giving each U in 0..n1*n2 (no ties): the Gaussian binomial."""
    size = n1 * n2 + 1
    poly = np.zeros(size)
    poly[0] = 1.0
    for i in range(1, n1 + 1):
        # multiply by (1 - q^(n2+i)), then divide by (1 - q^i) (a strided cumulative sum)
        shifted = np.zeros(size)
        shifted[n2 + i:] = poly[: size - n2 - i]
        poly = poly - shifted
        for r in range(i):
            poly[r::i] = np.cumsum(poly[r::i])
    return poly


def mann_whitney(b, v):
    """Mann-Whitney U test (U of the variant); exact null when a sample has <= 8 runs and no ties,
    else the normal approximation with tie and continuity corrections."""
    b, v = np.asarray(b, float), np.asarray(v, float)
    nb, nv = len(b), len(v)
    out = dict(u=None, p=None, method=None)
    if nb < 1 or nv < 1:
        return out
    ranks, ties = _rank(np.r_[v, b])
    u_v = float(ranks[:nv].sum() - nv * (nv + 1) / 2)
    u_b = nv * nb - u_v
    u_max = max(u_v, u_b)
    has_ties = bool(np.any(ties > 1))
    out["u"] = u_v
    if (nv <= 8 or nb <= 8) and not has_ties:
        counts = _u_null_counts(min(nv, nb), max(nv, nb))
        sf = counts[int(round(u_max)):].sum() / counts.sum()
        out.update(p=_num(min(1.0, 2 * sf)), method="exact")
        return out
    n = nb + nv
    mu = nb * nv / 2
    s = math.sqrt(nb * nv / 12 * ((n + 1) - np.sum(ties ** 3 - ties) / (n * (n - 1))))
    if s == 0:
        return out
    z = (u_max - mu - 0.5) / s
    out.update(p=_num(min(1.0, 2 * sps.norm.sf(z))), method="normal approximation")
    return out


def _two_sided_from_null(null, observed, tol):
    p_less = np.count_nonzero(null <= observed + tol)
    p_greater = np.count_nonzero(null >= observed - tol)
    return p_less, p_greater


def permutation_test(b, v, rng, resamples=10_000, limit=EXACT_LIMIT):
    """Permutation test of the difference of means. Exact (every split enumerated) when the number
    of splits C(n, n_v) <= limit, else Monte Carlo with `resamples` random splits."""
    b, v = np.asarray(b, float), np.asarray(v, float)
    nb, nv = len(b), len(v)
    out = dict(p=None, method=None, splits=None, min_p=None, resamples=None)
    if nb < 1 or nv < 1:
        return out
    x = np.r_[v, b]
    n, total = len(x), float(x.sum())
    obs_sum_v = float(v.sum())
    splits = math.comb(n, nv)
    tol = _rel_tol(x) * n
    if splits <= limit:
        k = min(nv, nb)
        combos = np.fromiter(itertools.chain.from_iterable(itertools.combinations(range(n), k)),
                             dtype=np.intp, count=splits * k).reshape(splits, k)
        sums = x[combos].sum(axis=1)
        sum_v = sums if k == nv else total - sums
        lo, hi = _two_sided_from_null(sum_v, obs_sum_v, tol)
        p = min(1.0, 2 * min(lo, hi) / splits)
        out.update(p=p, method="exact", splits=splits, min_p=min(1.0, 2 / splits))
        return out
    lo = hi = 0
    for r in _chunks(resamples, n):
        perm = rng.permuted(np.broadcast_to(x, (r, n)), axis=1)
        sum_v = perm[:, :nv].sum(axis=1)
        a, c = _two_sided_from_null(sum_v, obs_sum_v, tol)
        lo, hi = lo + a, hi + c
    p = min(1.0, 2 * (min(lo, hi) + 1) / (resamples + 1))
    out.update(p=p, method="monte carlo", splits=splits, resamples=resamples,
               min_p=min(1.0, 2 / (resamples + 1)))
    return out


def hedges_j(df):
    """Exact small-sample correction factor J(df) = G(df/2) / (sqrt(df/2) G((df-1)/2))."""
    return math.exp(special.gammaln(df / 2) - special.gammaln((df - 1) / 2)) / math.sqrt(df / 2)


def _nct_ci(t_obs, df, level):
    """Noncentrality parameters whose noncentral-t puts t_obs at the two tail quantiles."""
    def solve(q):
        f = lambda ncp: sps.nct.cdf(t_obs, df, ncp) - q
        lo, hi = t_obs - 10, t_obs + 10
        for _ in range(60):
            if f(lo) > 0 and f(hi) < 0:
                return optimize.brentq(f, lo, hi, xtol=1e-10)
            lo, hi = lo - 10, hi + 10
        raise ValueError("no bracket")
    return solve(0.5 + level / 2), solve(0.5 - level / 2)


def effect_size(b, v, level=0.95):
    """Cohen's d (pooled SD) and Hedges' g = J d, each with a CI from inverting the noncentral t
    (falling back to the large-sample normal approximation when that cannot be solved)."""
    b, v = np.asarray(b, float), np.asarray(v, float)
    nb, nv = len(b), len(v)
    out = dict(d=None, g=None, d_low=None, d_high=None, g_low=None, g_high=None, ci_method=None,
               pooled_sd=None)
    if nb < 2 or nv < 2:
        return out
    df = nb + nv - 2
    sp = math.sqrt(((nb - 1) * b.var(ddof=1) + (nv - 1) * v.var(ddof=1)) / df)
    if is_constant(b) and is_constant(v):
        out["pooled_sd"] = 0.0
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
    out.update(d=_num(d), g=_num(j * d), d_low=_num(d_lo), d_high=_num(d_hi), g_low=_num(j * d_lo),
               g_high=_num(j * d_hi), ci_method=method, pooled_sd=_num(sp))
    return out


def stratified_bootstrap(b, v, rng, resamples=10_000, higher_better=None, level=0.95):
    """Bootstrap that resamples within each group (so no resample ever lacks a group):
    CI of the difference of means and of the probability of improvement.

    Probability of improvement = P(a random variant run beats a random baseline run), ties count
    one half; for metrics without a direction it is P(variant > baseline)."""
    b, v = np.asarray(b, float), np.asarray(v, float)
    nb, nv = len(b), len(v)
    out = dict(diff=None, diff_low=None, diff_high=None, poi=None, poi_low=None, poi_high=None,
               poi_kind=None)
    if nb < 1 or nv < 1:
        return out
    gt = (v[:, None] > b[None, :]).astype(float) + 0.5 * (v[:, None] == b[None, :])
    lower_is_better = higher_better is False
    wins = 1.0 - gt if lower_is_better else gt
    out.update(diff=_num(v.mean() - b.mean()), poi=_num(wins.mean()),
               poi_kind="P(variant better)" if higher_better is not None else "P(variant > baseline)")
    if nb < 2 or nv < 2:
        return out
    diffs, pois = [], []
    for r in _chunks(resamples, nb + nv + nb * nv // 4):
        cv = bootstrap_counts(rng, nv, r)
        cb = bootstrap_counts(rng, nb, r)
        diffs.append(cv @ v / nv - cb @ b / nb)
        pois.append(np.einsum("ij,ij->i", cv @ wins, cb) / (nv * nb))
    out["diff_low"], out["diff_high"] = percentile_ci(np.concatenate(diffs), level)
    out["poi_low"], out["poi_high"] = percentile_ci(np.concatenate(pois), level)
    return out


def levene(*groups, center="median"):
    """Levene's test for equal variances; center='median' is the Brown-Forsythe variant."""
    groups = [np.asarray(g, float) for g in groups]
    k = len(groups)
    out = dict(stat=None, p=None, center=center)
    if k < 2 or any(len(g) < 2 for g in groups) or all(is_constant(g) for g in groups):
        return out
    cen = np.median if center == "median" else np.mean
    z = [np.abs(g - cen(g)) for g in groups]
    n = np.array([len(g) for g in groups], float)
    zbar = np.array([zi.mean() for zi in z])
    big_n = n.sum()
    grand = float(np.sum(n * zbar) / big_n)
    between = float(np.sum(n * (zbar - grand) ** 2))
    within = float(sum(np.sum((zi - zb) ** 2) for zi, zb in zip(z, zbar)))
    if within == 0:
        return out
    w = (big_n - k) / (k - 1) * between / within
    out.update(stat=_num(w), p=_num(sps.f.sf(w, k - 1, big_n - k)))
    return out


# ---------------------------------------------------------------------------------------------
# paired samples (runs of two conditions sharing a seed)
# ---------------------------------------------------------------------------------------------

def _signed_rank_null(n):
    """Counts of each signed-rank sum 0..n(n+1)/2 under H0 (no ties, no zeros)."""
    counts = np.zeros(n * (n + 1) // 2 + 1)
    counts[0] = 1
    for i in range(1, n + 1):
        counts[i:] = counts[i:] + counts[:-i].copy()
    return counts


def _sign_matrix(n):
    return ((np.arange(2 ** n)[:, None] >> np.arange(n)[None, :]) & 1) * 2.0 - 1.0


def wilcoxon(d, rng=None, resamples=10_000, limit=EXACT_LIMIT):
    """Wilcoxon signed-rank test on paired differences d (zeros dropped). Exact null without ties
    (n <= 50); with ties, exact sign-flip enumeration when 2^n <= limit; else the normal
    approximation with the tie correction."""
    d = np.asarray(d, float)
    d = d[d != 0]
    n = len(d)
    out = dict(w=None, p=None, method=None, n=n)
    if n == 0:
        return out
    ranks, ties = _rank(np.abs(d))
    r_plus = float(ranks[d > 0].sum())
    out["w"] = min(r_plus, n * (n + 1) / 2 - r_plus)
    has_ties = bool(np.any(ties > 1))
    if not has_ties and n <= 50:
        counts = _signed_rank_null(n)
        total = counts.sum()
        sf = counts[int(math.floor(r_plus)):].sum() / total
        cdf = counts[: int(math.ceil(r_plus)) + 1].sum() / total
        out.update(p=_num(min(1.0, 2 * min(sf, cdf))), method="exact")
        return out
    if 2 ** n <= limit:
        signs = _sign_matrix(n)
        null = (signs > 0) @ ranks
        lo, hi = _two_sided_from_null(null, r_plus, 1e-9)
        out.update(p=_num(min(1.0, 2 * min(lo, hi) / len(null))), method="exact (sign flips)")
        return out
    mn = n * (n + 1) / 4
    se = math.sqrt((n * (n + 1) * (2 * n + 1) - np.sum(ties ** 3 - ties) / 2) / 24)
    z = (r_plus - mn) / se
    out.update(p=_num(2 * sps.norm.sf(abs(z))), method="normal approximation")
    return out


def paired(b, v, rng, resamples=10_000, limit=EXACT_LIMIT, level=0.95):
    """Paired analysis of v - b (same seeds): paired t, Wilcoxon, exact sign-flip permutation test
    on the mean difference, paired bootstrap CI of the mean difference, and paired Cohen's d_z."""
    b, v = np.asarray(b, float), np.asarray(v, float)
    d = v - b
    n = len(d)
    out = dict(n=n, mean_diff=_num(d.mean()) if n else None, t=None, df=None, p_t=None,
               ci_low=None, ci_high=None, wilcoxon_p=None, wilcoxon_method=None,
               signflip_p=None, signflip_method=None, signflip_min_p=None,
               boot_low=None, boot_high=None, dz=None, deterministic=False)
    if n < 2:
        return out
    sd = float(d.std(ddof=1))
    if is_constant(d) or sd <= 1e-12 * max(float(np.max(np.abs(v))), float(np.max(np.abs(b))), 1e-300):
        out.update(deterministic=True, ci_low=out["mean_diff"], ci_high=out["mean_diff"],
                   boot_low=out["mean_diff"], boot_high=out["mean_diff"])
        return out
    se = sd / math.sqrt(n)
    t = d.mean() / se
    half = sps.t.ppf(0.5 + level / 2, n - 1) * se
    out.update(t=_num(t), df=n - 1, p_t=_num(2 * sps.t.sf(abs(t), n - 1)),
               ci_low=_num(d.mean() - half), ci_high=_num(d.mean() + half), dz=_num(d.mean() / sd))
    wx = wilcoxon(d, rng, resamples, limit)
    out.update(wilcoxon_p=wx["p"], wilcoxon_method=wx["method"])
    tol = _rel_tol(d) * n
    obs = float(d.sum())
    if 2 ** n <= limit:
        null = _sign_matrix(n) @ d
        lo, hi = _two_sided_from_null(null, obs, tol)
        out.update(signflip_p=min(1.0, 2 * min(lo, hi) / len(null)), signflip_method="exact",
                   signflip_min_p=min(1.0, 2 / 2 ** n))
    else:
        lo = hi = 0
        for r in _chunks(resamples, n):
            null = (rng.integers(0, 2, size=(r, n)) * 2.0 - 1.0) @ d
            a, c = _two_sided_from_null(null, obs, tol)
            lo, hi = lo + a, hi + c
        out.update(signflip_p=min(1.0, 2 * (min(lo, hi) + 1) / (resamples + 1)),
                   signflip_method="monte carlo", signflip_min_p=min(1.0, 2 / (resamples + 1)))
    out["boot_low"], out["boot_high"] = percentile_ci(bootstrap_means(d, rng, resamples), level)
    return out


# ---------------------------------------------------------------------------------------------
# power
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


def runs_needed(d, power=0.8, alpha=ALPHA, paired_design=False, cap=10 ** 7):
    """Smallest n per condition (pairs, if paired) giving `power` at effect d; None if d == 0,
    cap if more than cap would be needed."""
    if d is None or d == 0 or not math.isfinite(d):
        return None
    f = (lambda n: power_paired(d, n, alpha)) if paired_design else \
        (lambda n: power_two_sample(d, n, n, alpha))
    lo, hi = 2, 2
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
    """Gap (variant - baseline) of the means at every grid column, with a Welch t-interval;
    columns where either side has < 2 runs get NaN bounds."""
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
