"""Group-sequential designs for seed studies: look after every batch of runs, stop as soon as the
answer is known, and keep the false-positive rate at the declared alpha.

Model. At look k the question's statistic is converted to a z-equivalent Z_k (see `z_equivalent`).
Under normal theory the Z_k follow the canonical joint distribution: Z_k ~ N(eta * sqrt(t_k), 1),
cov(Z_j, Z_k) = sqrt(t_j / t_k) for t_j <= t_k, where t_k = n_k / max_runs is the information
fraction and eta the drift (the standardized effect times sqrt of the maximum information). The
probabilities of crossing a boundary are computed by recursive numerical integration
(Armitage, McPherson and Rowe 1969; Jennison and Turnbull 2000, ch. 19): the sub-density of Z_k on
the continuation region is carried from look to look on a Simpson grid, and each step convolves it
with the normal increment of the score S_k = Z_k sqrt(t_k).

Boundaries.
- Efficacy: Lan-DeMets alpha spending per tail, a = alpha / sides (obf: a(t) = 2 - 2 Phi(z_{1-a/2} /
  sqrt(t)); pocock: a ln(1 + (e - 1) t)); a two-sided design spends a(t) in each tail, as
  Reboussin, DeMets, Kim and Lan's ld98/ldbounds do (K = 5, alpha 0.05: 4.877, 3.357, 2.680, 2.290, 2.031). The classic constant-shape boundaries (Pocock 1977, O'Brien and Fleming 1979) are
  `classic_boundaries`.
- Futility (non-binding): beta spending under the design alternative eta1, with the same spending
  family and total beta = 1 - power. The efficacy boundaries ignore it, so obeying or overriding a
  futility stop never raises the type-I error above alpha.
- Small samples: a boundary b on the z scale is a nominal tail probability; at a look with df
  degrees of freedom the statistic crosses when its own t tail probability is that small (same
  nominal levels on the t scale). Because the looks' t statistics are not jointly canonical, the
  spending function's level is calibrated on a seeded simulation of the t statistics' exact null
  joint distribution (the "t reference", `_design_bounds`); bench/bench_sequential.py checks the
  resulting error rates on independent simulations.

Adjusted inference after a stop uses the stage-wise ordering (Armitage 1957; Tsiatis, Rosner and
Mehta 1984): an outcome is more extreme when it crossed at an earlier look, or at the same look with
a larger statistic. Only numpy and scipy.special are imported (decide must start fast).
"""
import functools
import math
from dataclasses import dataclass, field, fields

import numpy as np
from scipy.special import ndtr, ndtri, stdtr, stdtrit

SCHEMA = 1
QUESTIONS = ("compare", "acceptance")
SPENDING = ("obf", "pocock")
FUTILITY = ("beta", "none")
TESTS = ("student", "welch")
_SPAN = 9.0            # grid covers mean +- 9 SD of Z_k (mass outside < 1e-18)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_INFO_KEYS = ("schema", "created", "comment")   # allowed in sequential.json, not part of the design


class DesignError(ValueError):
    """A design (sequential.json or flags) that cannot be used; the message is one line."""


# ---------------------------------------------------------------- spending functions

def spend(kind, alpha, t):
    """Cumulative error spent at information fraction(s) t in [0, 1] (alpha(0) = 0, alpha(1) = alpha)."""
    t = np.clip(np.asarray(t, dtype=float), 0.0, 1.0)
    if kind == "obf":
        with np.errstate(divide="ignore"):
            z = ndtri(1.0 - alpha / 2.0) / np.sqrt(t)
        return 2.0 * ndtr(-z)
    if kind == "pocock":
        return alpha * np.log1p((math.e - 1.0) * t)
    raise DesignError(f"spending {kind!r}: use one of {', '.join(SPENDING)}")


# ---------------------------------------------------------------- recursive integration

@dataclass
class _State:
    """Sub-density of Z at information t on the continuation region: grid z, mass = weight * density
    (sum(mass) = probability of still running). The start is a point mass at S = 0, t = 0."""
    t: float
    z: np.ndarray
    mass: np.ndarray


def _start():
    return _State(0.0, np.zeros(1), np.ones(1))


def _score_mean(st, t, eta):
    return st.z * math.sqrt(st.t) + eta * (t - st.t)


def _cdf(st, t, eta, x):
    """P(still running before the look at t, and Z_t <= x), for each x."""
    x = np.atleast_1d(np.asarray(x, dtype=float))
    d = math.sqrt(t - st.t)
    arg = (x[:, None] * math.sqrt(t) - _score_mean(st, t, eta)[None, :]) / d
    return ndtr(arg) @ st.mass


def _sf(st, t, eta, x):
    """P(still running before the look at t, and Z_t >= x), for each x."""
    x = np.atleast_1d(np.asarray(x, dtype=float))
    d = math.sqrt(t - st.t)
    arg = (x[:, None] * math.sqrt(t) - _score_mean(st, t, eta)[None, :]) / d
    return ndtr(-arg) @ st.mass


def _simpson(lo, hi, h):
    m = max(3, 2 * math.ceil((hi - lo) / (2.0 * h)) + 1)
    z = np.linspace(lo, hi, m)
    w = np.ones(m)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    return z, w * (hi - lo) / (3.0 * (m - 1))


def _advance(st, t, eta, intervals, h):
    """Sub-density at the look at t on the union of `intervals` (the continuation region)."""
    mu = eta * math.sqrt(t)
    zs, ws = [], []
    for lo, hi in intervals:
        lo, hi = max(lo, mu - _SPAN), min(hi, mu + _SPAN)
        if hi > lo:
            z, w = _simpson(lo, hi, h)
            zs.append(z)
            ws.append(w)
    if not zs:
        return _State(t, np.zeros(0), np.zeros(0))
    z, w = np.concatenate(zs), np.concatenate(ws)
    d = t - st.t
    u = (z[:, None] * math.sqrt(t) - _score_mean(st, t, eta)[None, :]) / math.sqrt(d)
    dens = (np.exp(-0.5 * u * u) * (_INV_SQRT_2PI * math.sqrt(t / d))) @ st.mass
    return _State(t, z, w * dens)


def _grid_step(ts):
    """Simpson spacing: a sixth of the narrowest normal kernel any step integrates over."""
    ts = list(ts)
    h = 0.1
    for prev, cur in zip(ts, ts[1:]):
        d = cur - prev
        h = min(h, math.sqrt(d / cur) / 6.0, math.sqrt(d / prev) / 6.0)
    return h


def _region(b, a, sides):
    """Continuation region of one look: efficacy bound b, futility bound a (None: none)."""
    if sides == 2:
        if a is None or a <= 0:
            return [(-b, b)]
        return [(-b, -a), (a, b)]
    return [(-math.inf if a is None else a, b)]


def _efficacy_exit(st, t, eta, b, sides):
    p = _sf(st, t, eta, b)
    if sides == 2:
        p = p + _cdf(st, t, eta, -np.asarray(b, dtype=float))
    return p


def _futility_exit(st, t, eta, a, sides):
    if sides == 2:
        a = np.maximum(np.asarray(a, dtype=float), 0.0)
        return _cdf(st, t, eta, a) - _cdf(st, t, eta, -a)
    return _cdf(st, t, eta, a)


def _increasing_root(f, lo, hi, tol=1e-9, iters=60):
    """x in [lo, hi] with f(x) = 0 for f increasing: regula falsi with the Illinois modification
    (a few evaluations for smooth f), clamped to the ends."""
    flo, fhi = f(lo), f(hi)
    if flo >= 0:
        return lo
    if fhi <= 0:
        return hi
    side = 0
    for _ in range(iters):
        x = hi - fhi * (hi - lo) / (fhi - flo)
        fx = f(x)
        if abs(fx) < 1e-13 or hi - lo < tol:
            return x
        if fx < 0:
            lo, flo = x, fx
            if side == -1:
                fhi /= 2
            side = -1
        else:
            hi, fhi = x, fx
            if side == 1:
                flo /= 2
            side = 1
    return x


def _bracketed_root(f, guess, lo, hi):
    """Root of increasing f near guess (the bound if the look were alone, which is never below the
    sequential one): a narrow bracket first, the whole [lo, hi] when the root is outside it."""
    a, b = max(lo, guess - 2.5), min(hi, guess + 1e-6)
    if a < b and f(a) < 0 < f(b):
        return _increasing_root(f, a, b, tol=1e-9)
    return _increasing_root(f, lo, hi, tol=1e-9)


def crossing_probabilities(ts, upper, lower=None, sides=2, eta=0.0):
    """Probability of stopping at each look: (efficacy[k], futility[k]) for continuation region
    lower_k < Z_k < upper_k (sides=1) or lower_k < |Z_k| < upper_k (sides=2); lower None or an entry
    None means no futility bound. eta is the drift: E Z_k = eta sqrt(t_k)."""
    ts = [float(t) for t in ts]
    lower = [None] * len(ts) if lower is None else list(lower)
    h = _grid_step(ts)
    st = _start()
    eff, fut = [], []
    for t, b, a in zip(ts, upper, lower):
        eff.append(float(_efficacy_exit(st, t, eta, b, sides)[0]))
        fut.append(0.0 if a is None else float(_futility_exit(st, t, eta, a, sides)[0]))
        st = _advance(st, t, eta, _region(b, a, sides), h)
    return np.array(eff), np.array(fut)


# ---------------------------------------------------------------- boundaries

def classic_boundaries(kind, K, alpha=0.05, sides=2):
    """The classic constant-shape boundaries for K equally spaced looks: Pocock (the same z at every
    look) or O'Brien-Fleming (c sqrt(K / k)), with total crossing probability alpha under the null."""
    ts = [k / K for k in range(1, K + 1)]
    if kind == "pocock":
        shape = [1.0] * K
    elif kind == "obf":
        shape = [math.sqrt(K / k) for k in range(1, K + 1)]
    else:
        raise DesignError(f"classic boundary {kind!r}: use pocock or obf")

    def excess(c):
        return crossing_probabilities(ts, [c * s for s in shape], sides=sides)[0].sum() - alpha

    c = _increasing_root(lambda c: -excess(c), 0.5, 10.0, tol=1e-10)
    return np.array([c * s for s in shape])


@dataclass
class Bounds:
    """Boundaries of a design on the z scale at its information fractions."""
    ts: list                 # information fraction of each look
    upper: list              # efficacy bound (z); inf where nothing can be spent yet
    lower: list              # futility bound (z); None where there is none
    alpha_spent: list        # cumulative alpha spent at each look
    beta_spent: list         # cumulative beta spent at each look (0 without futility)
    eta1: float              # design alternative (drift) the futility bound is spent under
    sides: int
    null_states: list = field(repr=False, default=None)  # efficacy-only null sub-density before each look
    alpha_nominal: float = None  # the level the spending function was evaluated at (t reference: calibrated)
    reference: "Reference" = field(repr=False, default=None)  # t reference the level was calibrated on


def spending_boundaries(ts, alpha, sides=2, spending="obf", futility="beta", power=0.8, eta1=None):
    """Lan-DeMets efficacy boundaries at information fractions ts (increasing, last 1 for a full
    design) and non-binding beta-spending futility bounds under drift eta1 (default: the drift at
    which a fixed design at t = 1 has the given power)."""
    ts = [float(t) for t in ts]
    if any(b <= a for a, b in zip([0.0] + ts, ts)) or ts[-1] > 1.0 + 1e-12:
        raise DesignError(f"information fractions {ts}: must increase within (0, 1]")
    if eta1 is None:
        eta1 = float(ndtri(1.0 - alpha / sides) + ndtri(power))
    beta = 1.0 - power
    A = sides * spend(spending, alpha / sides, ts)   # each tail spends alpha/sides
    B = spend(spending, beta, ts) if futility == "beta" else np.zeros(len(ts))
    h = _grid_step(ts)
    st0, st1 = _start(), _start()
    upper, lower, states = [], [], []
    lo_z = 0.0 if sides == 2 else -40.0
    for k, t in enumerate(ts):
        states.append(st0)
        inc = A[k] - (A[k - 1] if k else 0.0)
        if inc <= 1e-300:
            b = math.inf
        else:
            b = _bracketed_root(lambda x: inc - _efficacy_exit(st0, t, 0.0, x, sides)[0],
                                float(ndtri(1.0 - inc / sides)), lo_z, 40.0)
        last = k == len(ts) - 1 and ts[-1] >= 1.0 - 1e-12
        a = None
        if futility == "beta" and not last:
            incb = B[k] - (B[k - 1] if k else 0.0)
            if incb > 1e-300:
                top = b if math.isfinite(b) else 40.0
                # futility exit grows with a: find a with P_eta1(futile at k) = incb
                a = _increasing_root(lambda x: _futility_exit(st1, t, eta1, x, sides)[0] - incb, lo_z, top, tol=1e-10)
                if sides == 2 and a <= 0:
                    a = None
        upper.append(float(b))
        lower.append(None if a is None else float(a))
        st0 = _advance(st0, t, 0.0, _region(b, None, sides), h)
        st1 = _advance(st1, t, eta1, _region(b, a, sides), h)
    return Bounds(ts, upper, lower, [float(x) for x in A], [float(x) for x in B], eta1, sides, states, alpha)


# ---------------------------------------------------------------- design

@dataclass(frozen=True)
class Design:
    """One pre-registered primary question and its sequential plan (docs/sequential.md)."""
    question: str = "compare"      # compare: variant vs baseline; acceptance: variant's mean vs target
    metric: str = "val_loss"
    alpha: float = None            # default 0.05 (compare), 0.01 (acceptance, the speedrun's rule)
    sides: int = None              # default 2 (compare), 1 (acceptance)
    spending: str = "obf"
    max_runs: int = 10             # per condition
    batch: int = 2                 # runs per condition between looks
    baseline: str = "baseline"
    variant: str = None
    better: str = None             # lower | higher (default lower for *loss metrics; else required when one-sided)
    target: float = None           # acceptance: the mean must beat this (default 3.28)
    futility: str = "beta"
    power: float = 0.8             # futility: beta = 1 - power spent under the design alternative
    effect_sd: float = None        # design alternative in SDs (default: what a fixed max_runs design detects at `power`)
    test: str = "student"          # student (pooled SD) | welch; acceptance: one-sample t
    sigma: float = None            # known SD: z statistics instead of t

    # -- construction and validation
    @classmethod
    def from_dict(cls, d, source="sequential.json"):
        if not isinstance(d, dict):
            raise DesignError(f"{source}: expected a JSON object, found {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names - set(_INFO_KEYS))
        if unknown:
            raise DesignError(f"{source}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(names))}")
        if d.get("schema", SCHEMA) != SCHEMA:
            raise DesignError(f"{source}: schema {d.get('schema')!r}; this version reads schema {SCHEMA}")
        return cls(**{k: v for k, v in d.items() if k in names}).validated(source)

    def validated(self, source="design"):
        """A copy with defaults filled in; DesignError (one line naming source and key) when invalid."""
        self._choice(source, "question", QUESTIONS)
        acc = self.question == "acceptance"
        d = dict(alpha=self.alpha if self.alpha is not None else (0.01 if acc else 0.05),
                 sides=self.sides if self.sides is not None else (1 if acc else 2),
                 target=self.target if self.target is not None or not acc else 3.28)
        better = self.better
        if better is None and isinstance(self.metric, str) and self.metric.endswith("loss"):
            better = "lower"
        v = Design(**{**self.__dict__, **d, "better": better})
        for key in ("metric", "baseline"):
            if not isinstance(getattr(v, key), str) or not getattr(v, key):
                v._bad(source, key, "expected a non-empty string")
        if v.variant is not None and (not isinstance(v.variant, str) or not v.variant):
            v._bad(source, "variant", "expected a condition name")
        v._num(source, "alpha", 1e-6, 0.5)
        v._choice(source, "sides", (1, 2))
        v._choice(source, "spending", SPENDING)
        v._num(source, "max_runs", 1, 10_000, integer=True)
        v._num(source, "batch", 1, 10_000, integer=True)
        v._choice(source, "futility", FUTILITY)
        v._num(source, "power", 0.5, 0.999)
        v._choice(source, "test", TESTS)
        if v.better is not None:
            v._choice(source, "better", ("lower", "higher"))
        elif v.sides == 1 or acc:
            v._bad(source, "better", f"metric {v.metric!r} is one-sided here: declare better = \"lower\" or \"higher\"")
        if acc:
            v._num(source, "target", -1e300, 1e300)
            if v.sides != 1:
                v._bad(source, "sides", "an acceptance rule is one-sided: use 1")
        elif v.target is not None:
            v._bad(source, "target", "only an acceptance question has a target (set question = \"acceptance\")")
        for key in ("effect_sd", "sigma"):
            if getattr(v, key) is not None:
                v._num(source, key, 1e-300, 1e300)
        if v.batch > v.max_runs:
            v._bad(source, "batch", f"larger than max_runs = {v.max_runs}")
        if v.sigma is None and v.max_runs < 2:
            v._bad(source, "max_runs", "a t statistic needs at least 2 runs per condition")
        return v

    def _bad(self, source, key, what):
        raise DesignError(f"{source}: {key} = {getattr(self, key)!r}: {what}")

    def _num(self, source, key, lo, hi, integer=False):
        val = getattr(self, key)
        if isinstance(val, bool) or not isinstance(val, (int, float)) or (integer and not isinstance(val, int)):
            self._bad(source, key, f"expected {'an integer' if integer else 'a number'}")
        if not (lo <= val <= hi) or not math.isfinite(val):
            self._bad(source, key, f"must lie in [{lo:g}, {hi:g}]")

    def _choice(self, source, key, options):
        if getattr(self, key) not in options:
            self._bad(source, key, f"use one of {', '.join(map(str, options))}")

    def to_dict(self):
        return {"schema": SCHEMA, **{f.name: getattr(self, f.name) for f in fields(self)}}

    # -- plan
    @property
    def conditions(self):
        return [self.variant] if self.question == "acceptance" else [self.baseline, self.variant]

    def look_sizes(self):
        """Runs per condition at each planned look: batch, 2 batch, ..., max_runs (looks a t statistic
        cannot use, below 2 runs, are skipped)."""
        smallest = 1 if self.sigma is not None else 2
        sizes = sorted({min(k * self.batch, self.max_runs) for k in range(1, -(-self.max_runs // self.batch) + 1)})
        return [n for n in sizes if n >= smallest]

    def eta1(self):
        if self.effect_sd is None:
            return None
        scale = self.max_runs if self.question == "acceptance" else self.max_runs / 2.0
        return self.effect_sd * math.sqrt(scale)

    def bounds(self):
        return _design_bounds(self.validated("design"))


REFERENCE_EVENTS = 2_500   # t reference size: about this many null crossings (relative Monte Carlo SE 2%)
REFERENCE_SEED = 20_240_531


@dataclass
class Reference:
    """The t reference of a design: its statistics at every look in null experiments with normal
    runs. Student and one-sample t statistics are pivotal, so this is their exact joint null
    distribution up to Monte Carlo error (Welch: at equal SDs). x is |statistic| for two-sided
    designs; for Welch (df varies by experiment) x holds z-equivalents and df is None."""
    x: np.ndarray            # (reps, looks)
    df: list                 # per-look df, or None

    def threshold(self, k, zval):
        """A z-scale value expressed on the reference's scale at look k (same tail probability)."""
        return zval if self.df is None else stat_threshold(zval, self.df[k])

    def crossed_by(self, upper, k_end):
        """Boolean per experiment: crossed an efficacy bound at a look before k_end."""
        thr = np.array([self.threshold(k, upper[k]) for k in range(k_end)])
        return (self.x[:, :k_end] >= thr).any(axis=1) if k_end else np.zeros(len(self.x), bool)


def reference_null(d, reps=None, seed=REFERENCE_SEED):
    """The design's Reference (fixed seed: the same boundaries on every call); by default
    REFERENCE_EVENTS / alpha experiments (50,000 at alpha 0.05, 250,000 at 0.01)."""
    reps = reps or int(min(400_000, REFERENCE_EVENTS / d.alpha))
    rng = np.random.default_rng(seed)
    ns = d.look_sizes()
    N = ns[-1]
    if d.question == "acceptance":
        data = {d.variant: d.target + rng.standard_normal((reps, N), dtype=np.float32)}
    else:
        data = {d.baseline: rng.standard_normal((reps, N), dtype=np.float32),
                d.variant: rng.standard_normal((reps, N), dtype=np.float32)}
    x = np.empty((reps, len(ns)))
    dfs = []
    for k, (stat, df, _, _) in enumerate(prefix_statistics(d, data, ns)):
        if d.test == "welch" and d.question == "compare":
            x[:, k] = z_equivalent(stat, df)
            dfs = None
        else:
            x[:, k] = stat
            dfs.append(float(df.flat[0]))
    return Reference(np.abs(x) if d.sides == 2 else x, dfs)


@functools.lru_cache(maxsize=64)
def _design_bounds(d):
    """Boundaries of a validated design (cached: a design is immutable, and its boundaries depend only on it).

    Known sigma: the normal-theory boundaries. t statistics: mapping each t to the normal deviate with
    the same tail keeps every look's nominal level exact, but the looks' joint distribution is not the
    canonical one (at 2-3 runs per condition the error rate comes out up to about 10% above alpha).
    So the spending function's level is calibrated on the t reference (reference_null_z): the
    boundaries keep the spending shape, evaluated at the alpha' at which the reference crosses at
    rate alpha. Deterministic (fixed seed)."""
    ts = [n / d.max_runs for n in d.look_sizes()]
    eta1 = d.eta1() if d.eta1() is not None else float(ndtri(1.0 - d.alpha / d.sides) + ndtri(d.power))
    if d.sigma is not None:
        return spending_boundaries(ts, d.alpha, d.sides, d.spending, d.futility, d.power, eta1)
    ref = reference_null(d)

    def rate(a):
        b = spending_boundaries(ts, a, d.sides, d.spending, "none").upper
        return float(ref.crossed_by(b, len(ts)).mean())

    # secant steps on log alpha' (the rate is nearly proportional to alpha'); stop within one
    # reference experiment of alpha
    a0, r0 = d.alpha, rate(d.alpha)
    a1 = d.alpha * d.alpha / max(r0, 1e-12)
    best = (abs(r0 - d.alpha), a0)
    for _ in range(6):
        r1 = rate(a1)
        best = min(best, (abs(r1 - d.alpha), a1))
        if abs(r1 - d.alpha) <= 1.0 / len(ref.x) or r1 == r0:
            break
        slope = (math.log(max(r1, 1e-12)) - math.log(max(r0, 1e-12))) / (math.log(a1) - math.log(a0))
        a0, r0 = a1, r1
        a1 = min(0.5, a1 * math.exp((math.log(d.alpha) - math.log(max(r1, 1e-12))) / max(slope, 0.1)))
    out = spending_boundaries(ts, best[1], d.sides, d.spending, d.futility, d.power, eta1)
    out.alpha_spent = [float(x) for x in d.sides * spend(d.spending, d.alpha / d.sides, ts)]
    out.reference = ref
    return out


def design_matches(old, new):
    """Keys (sorted) on which two designs (Design or dicts) differ after defaults; [] when the same.
    The runner refuses to continue a stage whose declared design changed."""
    a = old if isinstance(old, Design) else Design.from_dict(old, "old design")
    b = new if isinstance(new, Design) else Design.from_dict(new, "new design")
    a, b = a.validated("old design").to_dict(), b.validated("new design").to_dict()
    return sorted(k for k in a if a[k] != b[k])


# ---------------------------------------------------------------- statistics at a look

def look_statistics(design, samples):
    """Vectorised statistic of the design's question on the first n runs of each condition.
    samples: {condition: array (..., n)}. Returns (stat, df, improvement, se) with stat oriented so
    that positive means the variant is better (lower, for a lower-is-better metric), improvement in
    metric units (baseline - variant, or target - mean, for lower-is-better), se its standard error,
    df inf for known sigma. Zero variance gives stat 0 (no difference) or +-inf."""
    moments = {}
    for c in design.conditions:
        x = np.asarray(samples[c], dtype=float)
        n = x.shape[-1]
        moments[c] = (n, x.mean(axis=-1), x.var(axis=-1, ddof=1) if n > 1 else np.zeros(x.shape[:-1]))
    return _statistics(design, moments)


def prefix_statistics(design, data, ns):
    """look_statistics at every prefix length in ns at once (cumulative sums; for simulations):
    data {condition: array (reps, >= max(ns))}. Yields (stat, df, improvement, se) per look."""
    cum = {}
    for c in design.conditions:
        x = np.asarray(data[c], dtype=float)
        x0 = x[:, :1]
        x = x - x0                             # the variance is shift-invariant; avoid cancellation
        cum[c] = (x0, np.cumsum(x, axis=1), np.cumsum(x * x, axis=1))
    for n in ns:
        moments = {}
        for c, (x0, s1, s2) in cum.items():
            m = s1[:, n - 1] / n
            var = np.maximum(s2[:, n - 1] - n * m * m, 0.0) / (n - 1) if n > 1 else np.zeros(m.shape)
            moments[c] = (n, m + x0[:, 0], var)
        yield _statistics(design, moments)


def _statistics(design, moments):
    sign = -1.0 if design.better == "lower" else 1.0
    nv, mv, vv = moments[design.variant]
    if design.question == "acceptance":
        imp = sign * (mv - design.target)
        se = (design.sigma if design.sigma is not None else np.sqrt(vv)) / math.sqrt(nv) + 0.0 * mv
        df = np.full(mv.shape, math.inf if design.sigma is not None else nv - 1.0)
    else:
        nb, mb, vb = moments[design.baseline]
        imp = sign * (mv - mb)
        if design.sigma is not None:
            se = design.sigma * math.sqrt(1.0 / nv + 1.0 / nb) + 0.0 * mv
            df = np.full(mv.shape, math.inf)
        elif design.test == "welch":
            a1, a2 = vv / nv, vb / nb
            se = np.sqrt(a1 + a2)
            with np.errstate(invalid="ignore", divide="ignore"):
                df = (a1 + a2) ** 2 / (a1 ** 2 / (nv - 1) + a2 ** 2 / (nb - 1))
            df = np.where(np.isfinite(df), df, nv + nb - 2.0)
        else:
            sp2 = ((nv - 1) * vv + (nb - 1) * vb) / (nv + nb - 2)
            se = np.sqrt(sp2 * (1.0 / nv + 1.0 / nb))
            df = np.full(mv.shape, nv + nb - 2.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        stat = np.where(se > 0, imp / np.where(se > 0, se, 1.0), np.sign(imp) * np.inf)
    stat = np.where(np.isnan(stat), 0.0, stat)
    return stat, df, imp, se


def z_equivalent(stat, df):
    """The normal deviate with the same tail probability as a t statistic with df degrees of freedom
    (the statistic itself for df = inf); computed from the smaller tail so that large |t| keep precision."""
    stat, df = np.broadcast_arrays(np.asarray(stat, dtype=float), np.asarray(df, dtype=float))
    finite = np.isfinite(df)
    tail = np.where(finite, stdtr(np.where(finite, df, 1.0), -np.abs(stat)), ndtr(-np.abs(stat)))
    z = -ndtri(tail)
    return np.where(np.isfinite(df), np.sign(stat) * z, stat)


def stat_threshold(z, df):
    """The t statistic whose tail probability equals the normal tail beyond z (inf stays inf)."""
    if z is None or not math.isfinite(z):
        return z
    if not math.isfinite(df):
        return z
    return float(-stdtrit(df, ndtr(-z))) if z > 0 else float(stdtrit(df, ndtr(z)))


def naive_p(stat, df, sides):
    """The one-look p-value of the statistic (t with df, or z for df = inf)."""
    stat = np.asarray(stat, dtype=float)
    tail = stdtr(df, -stat) if math.isfinite(df) else ndtr(-stat)
    if sides == 2:
        tail = 2.0 * (stdtr(df, -np.abs(stat)) if math.isfinite(df) else ndtr(-np.abs(stat)))
    return np.minimum(tail, 1.0)


# ---------------------------------------------------------------- adjusted inference

def stagewise_p(bounds, k, z):
    """P-value by stage-wise ordering after stopping at look k (0-based) with z-equivalent z:
    the null probability of crossing at an earlier look plus that of reaching look k with a
    statistic at least as extreme (two-sided: |Z| >= |z|). Futility bounds are ignored (non-binding).
    At the first look this is the ordinary one-look p-value. With a t reference the probabilities
    after the first look are its Monte Carlo frequencies (normal theory where fewer than 10 reference
    experiments are that extreme), so that p <= alpha exactly when a boundary was crossed."""
    sides, t = bounds.sides, bounds.ts[k]
    ref = bounds.reference
    if ref is not None and k > 0:
        before = ref.crossed_by(bounds.upper, k)
        here = ~before & (ref.x[:, k] >= ref.threshold(k, abs(z) if sides == 2 else z))
        p_before = float(before.mean())
        if here.sum() >= 10:
            return min(1.0, p_before + float(here.mean()))
        st = bounds.null_states[k]
        tail = float(_efficacy_exit(st, t, 0.0, abs(z), 2)[0]) if sides == 2 else float(_sf(st, t, 0.0, z)[0])
        return min(1.0, p_before + tail)
    earlier = 0.0
    for j in range(k):
        earlier += float(_efficacy_exit(bounds.null_states[j], bounds.ts[j], 0.0, bounds.upper[j], sides)[0])
    st = bounds.null_states[k]
    if sides == 2:
        here = float(_efficacy_exit(st, t, 0.0, abs(z), 2)[0])
    else:
        here = float(_sf(st, t, 0.0, z)[0])
    return min(1.0, earlier + here)


def _upper_ordering_prob(bounds, k, z, eta, h):
    """P_eta(outcome at least as extreme upwards as (look k, z)) under stage-wise ordering."""
    st, total = _start(), 0.0
    for j in range(k):
        t, b = bounds.ts[j], bounds.upper[j]
        total += float(_sf(st, t, eta, b)[0])
        st = _advance(st, t, eta, _region(b, None, bounds.sides), h)
    return total + float(_sf(st, bounds.ts[k], eta, z)[0])


def stagewise_interval(bounds, k, z, level):
    """Drift values (eta_low, eta_median, eta_high) inverting the stage-wise ordering: the ordering
    probability is (1-level)/2, 1/2 and (1+level)/2 at them. E Z_k = eta sqrt(t_k)."""
    if not math.isfinite(z):
        return None
    h = _grid_step(bounds.ts[:k + 1])
    rt = math.sqrt(bounds.ts[k])
    lo, hi = (z - 12.0) / rt, (z + 12.0) / rt

    def solve(p):
        # the ordering probability increases with eta
        return _increasing_root(lambda e: _upper_ordering_prob(bounds, k, z, e, h) - p, lo, hi, tol=1e-8)

    return solve((1 - level) / 2), solve(0.5), solve((1 + level) / 2)


# ---------------------------------------------------------------- the decision

@dataclass
class Look:
    look: int                      # 1-based
    n: dict                        # runs per condition used at this look
    info: float                    # information fraction
    alpha_spent: float             # cumulative
    bound_z: float                 # efficacy bound on the z scale (inf: cannot stop yet)
    bound_stat: float              # the same on the statistic's scale (t with df)
    futility_z: float              # None: no futility bound at this look
    futility_stat: float
    statistic: float               # t (or z), positive = variant better
    df: float
    z: float                       # z-equivalent of the statistic
    estimate: float                # difference variant - baseline (compare) or mean (acceptance), metric units
    se: float
    p_naive: float                 # one-look p-value, for reference only
    outcome: str                   # continue | effect | futility | maximum


@dataclass
class Decision:
    verdict: str                   # continue | stop: effect | stop: futility | stop: maximum reached
    look: int                      # last look evaluated (0: none yet)
    planned_looks: int
    looks: list
    boundary: float                # the current look's efficacy bound on the statistic's scale
    statistic: float
    alpha_spent: float
    next_look_n: int               # runs per condition the next look uses (None after a stop)
    runs_needed: dict              # more finished runs each condition needs for the next look
    p_adjusted: float = None       # stage-wise; after a stop
    ci: tuple = None               # adjusted CI of the estimate; after a stop
    ci_level: float = None
    estimate_median_unbiased: float = None
    estimate_naive: float = None
    design: Design = None
    notes: list = field(default_factory=list)

    @property
    def stopped(self):
        return self.verdict.startswith("stop")

    def to_json(self):
        return _jsonable({**{f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("looks", "design")},
                          "stopped": self.stopped, "design": self.design.to_dict(),
                          "looks": [l.__dict__ for l in self.looks]})


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _f(x):
    return None if x is None else float(x)


def decide(design, samples):
    """The decision at the latest look the finished runs allow.

    design: a Design (validated here). samples: {condition: finished values of the metric in run
    order (seed order)}. Look k uses the first n_k values of each condition, so earlier looks are
    re-evaluated identically and the first crossing is the decision however late this is called."""
    design = design.validated("design")
    if design.variant is None:
        raise DesignError("design: variant is not set (the condition under test)")
    ns = design.look_sizes()
    bounds = design.bounds()
    data = {c: np.asarray([float(x) for x in samples.get(c, [])], dtype=float) for c in design.conditions}
    notes = []
    for c, x in data.items():
        if not np.all(np.isfinite(x)):
            raise DesignError(f"samples of {c!r}: non-finite values (pass finished runs only)")
        if len(x) > ns[-1]:
            notes.append(f"{c}: {len(x)} runs, the design uses the first {ns[-1]}")
    avail = min(len(x) for x in data.values())
    looks = []
    verdict = "continue"
    for k, n in enumerate(ns):
        if n > avail:
            break
        sub = {c: x[:n] for c, x in data.items()}
        stat, df, imp, se = (float(np.asarray(v)) for v in look_statistics(design, sub))
        z = float(z_equivalent(stat, df))
        b, a = bounds.upper[k], bounds.lower[k]
        if design.sides == 2:
            effect, futile = abs(z) >= b, a is not None and abs(z) <= a
        else:
            effect, futile = z >= b, a is not None and z <= a
        last = k == len(ns) - 1
        outcome = "effect" if effect else "futility" if futile else "maximum" if last else "continue"
        if not math.isfinite(stat):
            notes.append(f"look {k + 1}: zero variance with a nonzero difference (statistic infinite)")
        looks.append(Look(k + 1, {c: n for c in data}, bounds.ts[k], bounds.alpha_spent[k], b,
                          stat_threshold(b, df), a, stat_threshold(a, df) if a is not None else None,
                          stat, df, z, _estimate(design, imp, data, n), se,
                          float(naive_p(stat, df, design.sides)), outcome))
        if outcome != "continue":
            verdict = {"effect": "stop: effect", "futility": "stop: futility", "maximum": "stop: maximum reached"}[outcome]
            break
    cur = looks[-1] if looks else None
    dec = Decision(verdict, len(looks), len(ns), looks, cur.bound_stat if cur else None, cur.statistic if cur else None,
                   cur.alpha_spent if cur else 0.0, None, {}, design=design, notes=notes)
    if not dec.stopped:
        nxt = ns[len(looks)]
        dec.next_look_n = nxt
        dec.runs_needed = {c: max(0, nxt - len(x)) for c, x in data.items()}
        if looks:
            dec.boundary = cur.bound_stat
        return dec
    _adjust(dec, design, bounds, data)
    return dec


def _estimate(design, imp, data, n):
    """improvement (positive = better) -> the reported estimate: difference variant - baseline, or the mean."""
    sign = -1.0 if design.better == "lower" else 1.0
    if design.question == "acceptance":
        return design.target + sign * imp
    return sign * imp


def _adjust(dec, design, bounds, data):
    k = dec.look - 1
    lk = dec.looks[k]
    dec.p_adjusted = stagewise_p(bounds, k, lk.z)
    dec.estimate_naive = lk.estimate
    level = 1.0 - design.alpha * (2 if design.sides == 1 else 1)
    dec.ci_level = level
    etas = stagewise_interval(bounds, k, lk.z, level)
    if etas is None or lk.se <= 0:
        dec.notes.append("no adjusted interval: the statistic is infinite (zero variance)")
        return
    rt = math.sqrt(bounds.ts[k])
    qz = float(ndtri((1 + level) / 2))
    qt = abs(stat_threshold(qz, lk.df)) if math.isfinite(lk.df) else qz
    r = qt / qz
    imp = lk.statistic * lk.se
    lo, med, hi = (imp - (lk.z - e * rt) * lk.se * r for e in etas)
    sign = -1.0 if design.better == "lower" else 1.0
    conv = (lambda x: design.target + sign * x) if design.question == "acceptance" else (lambda x: sign * x)
    a, b = conv(lo), conv(hi)
    dec.ci = (min(a, b), max(a, b))
    dec.estimate_median_unbiased = conv(med)


# ---------------------------------------------------------------- simulation

def simulate(design, effect_sd=0.0, reps=10_000, rng=None, sd=1.0):
    """Monte Carlo operating characteristics of `design` (vectorised): runs are N(mu, sd) with the
    variant better than the baseline (or the target) by effect_sd SDs. Returns a dict: reject
    (efficacy stop, futility obeyed), reject_no_futility (futility ignored: the type-I guarantee),
    futility, mean_runs (per condition, futility obeyed), naive_reject (stop at the first look
    whose one-look p < alpha, the same looks), and reps."""
    design = design.validated("design")
    rng = np.random.default_rng(rng)
    ns = design.look_sizes()
    bounds = design.bounds()
    sign = -1.0 if design.better == "lower" else 1.0
    N = ns[-1]
    if design.question == "acceptance":
        base_mu = design.target
        data = {design.variant: base_mu + sign * effect_sd * sd + sd * rng.standard_normal((reps, N))}
    else:
        data = {design.baseline: sd * rng.standard_normal((reps, N)),
                design.variant: sign * effect_sd * sd + sd * rng.standard_normal((reps, N))}
    stopped = np.zeros(reps, bool)
    stopped_nf = np.zeros(reps, bool)
    naive_done = np.zeros(reps, bool)
    reject = np.zeros(reps, bool)
    reject_nf = np.zeros(reps, bool)
    futile = np.zeros(reps, bool)
    naive = np.zeros(reps, bool)
    runs = np.full(reps, float(N))
    for k, (n, (stat, df, _, _)) in enumerate(zip(ns, prefix_statistics(design, data, ns))):
        z = z_equivalent(stat, df)
        zz = np.abs(z) if design.sides == 2 else z
        b, a = bounds.upper[k], bounds.lower[k]
        eff = zz >= b
        fut = (zz <= a) if a is not None else np.zeros(reps, bool)
        new_eff = eff & ~stopped
        new_fut = fut & ~eff & ~stopped
        reject |= new_eff
        futile |= new_fut
        runs[new_eff | new_fut] = n
        stopped |= eff | fut
        reject_nf |= eff & ~stopped_nf
        stopped_nf |= eff
        p = np.array([naive_p(s, d, design.sides) for s, d in zip(stat, df)]) if design.test == "welch" \
            else naive_p(stat, float(df.flat[0]), design.sides)
        naive |= (p < design.alpha) & ~naive_done
        naive_done |= p < design.alpha
    return dict(reps=reps, reject=reject.mean(), reject_no_futility=reject_nf.mean(), futility=futile.mean(),
                mean_runs=runs.mean(), naive_reject=naive.mean())


# ---------------------------------------------------------------- report section

def _fmt(x, spec=".3g"):
    if x is None:
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return format(x, spec)


def render_markdown(decision, heading="### Sequential design"):
    """Markdown section: the design, every look (boundary, statistic, alpha spent), the verdict and,
    after a stop, the p-value and CI adjusted for the sequential design (stage-wise ordering)."""
    d = decision.design
    what = (f"mean {d.metric} of `{d.variant}` {'below' if d.better == 'lower' else 'above'} {d.target:g}"
            if d.question == "acceptance" else f"`{d.variant}` vs `{d.baseline}` on {d.metric}")
    test = ("z (known sigma " + _fmt(d.sigma) + ")" if d.sigma is not None
            else "one-sample t" if d.question == "acceptance" else f"{d.test} t")
    fut = (f"non-binding beta spending (power {d.power:g}"
           + (f", effect {d.effect_sd:g} SD)" if d.effect_sd is not None else ")")) if d.futility == "beta" else "none"
    lines = [heading, "",
             f"Question: {what}; {'two' if d.sides == 2 else 'one'}-sided {test}, alpha {d.alpha:g}, "
             f"{'O&apos;Brien-Fleming' if d.spending == 'obf' else 'Pocock'}-type Lan-DeMets spending, "
             f"looks every {d.batch} run(s) up to {d.max_runs} per condition ({decision.planned_looks} looks); "
             f"futility: {fut}.".replace("&apos;", "'"), "",
             "| look | runs/condition | info | alpha spent | efficacy bound | futility bound | statistic | df | estimate | one-look p | outcome |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for lk in decision.looks:
        n = "/".join(str(v) for v in lk.n.values())
        lines.append(f"| {lk.look} | {n} | {lk.info:.2f} | {_fmt(lk.alpha_spent, '.4g')} | "
                     f"{_fmt(lk.bound_stat, '.3f')} | {_fmt(lk.futility_stat, '.3f')} | {_fmt(lk.statistic, '.3f')} | "
                     f"{_fmt(lk.df, '.1f')} | {_fmt(lk.estimate, '.4g')} | {_fmt(lk.p_naive, '.3g')} | {lk.outcome} |")
    if not decision.looks:
        lines.append("| - | - | - | - | - | - | - | - | - | - | no look yet |")
    lines += ["", f"**Decision: {decision.verdict}** (look {decision.look} of {decision.planned_looks})."]
    if decision.stopped:
        lines.append(f"Adjusted for the sequential design (stage-wise ordering): p = {_fmt(decision.p_adjusted, '.3g')}"
                     + (f", {decision.ci_level:.0%} CI [{_fmt(decision.ci[0], '.4g')}, {_fmt(decision.ci[1], '.4g')}], "
                        f"median-unbiased estimate {_fmt(decision.estimate_median_unbiased, '.4g')}"
                        if decision.ci is not None else "")
                     + f" (naive estimate {_fmt(decision.estimate_naive, '.4g')}; the one-look p above is not valid after looking repeatedly).")
    else:
        need = ", ".join(f"{c}: {v}" for c, v in decision.runs_needed.items())
        lines.append(f"Next look at {decision.next_look_n} runs per condition (more finished runs needed: {need}).")
    lines += [f"- {n}" for n in decision.notes]
    return "\n".join(lines) + "\n"
