"""analysis/stats.py: the code scipy does not have, against worked examples; our rules around scipy.

The tests scipy provides (Welch, Mann-Whitney, Wilcoxon, permutation, Levene, Shapiro, t-tests,
bootstrap) are scipy's; what is tested here is how we call them: None instead of NaN, zero
variance, one run, ties, the exact enumeration and its smallest reachable p.
"""
import math
import os
import sys

import numpy as np
import pytest
from scipy import stats as sps

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from analysis import stats as st  # noqa: E402


def rng():
    return np.random.default_rng(0)


def no_nan(record):
    """Every float of a record is finite or None."""
    for k, v in record.to_json().items():
        assert not (isinstance(v, float) and not math.isfinite(v)), k


# --- code of our own, against worked examples ---------------------------------------------------

def test_holm_textbook_example():
    # p = (0.01, 0.04, 0.03, 0.005), m = 4: sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1
    # = 0.02, 0.03, 0.06, 0.04 -> made monotone: 0.02, 0.03, 0.06, 0.06
    assert st.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert st.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert len(st.holm([])) == 0


def test_hedges_g_by_hand():
    # b = 1,2,3 and v = 4,5,6: both SD 1, pooled SD 1, d = 3; df = 4,
    # J = G(2) / (sqrt(2) G(1.5)) = 1 / (sqrt(2) * sqrt(pi)/2) = 0.797885
    res = st.effect_size([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    assert res.d == pytest.approx(3.0)
    assert res.g == pytest.approx(3.0 * 2 / math.sqrt(2 * math.pi), rel=1e-12)
    assert res.g == pytest.approx(3 * (1 - 3 / (4 * 4 - 1)), rel=0.01)  # the usual approximation
    assert res.d_low < 3.0 < res.d_high


def test_effect_size_ci_inverts_the_noncentral_t():
    # at the CI's bounds the observed t sits at the 97.5% / 2.5% quantiles of the noncentral t
    b, v = np.array([0.1, -0.4, 0.3, 0.9, -0.2, 0.5]), np.array([1.2, 0.4, 1.9, 0.8, 1.1, 0.2, 1.6, 1.0])
    res = st.effect_size(b, v)
    scale = math.sqrt(1 / 6 + 1 / 8)
    t_obs = res.d / scale
    assert sps.nct.cdf(t_obs, 12, res.d_low / scale) == pytest.approx(0.975, abs=1e-6)
    assert sps.nct.cdf(t_obs, 12, res.d_high / scale) == pytest.approx(0.025, abs=1e-6)


def test_power_matches_cohens_table():
    # Cohen (1988), Table 2.4.1: d = 0.5 needs 64 per group, d = 0.8 needs 26, d = 0.2 needs 393,
    # for 80% power at alpha 0.05 two-sided
    assert st.runs_needed(0.5) == 64
    assert st.runs_needed(0.8) == 26
    n = st.runs_needed(0.2)   # Cohen's table: 393 (normal approximation); the exact noncentral t is one above
    assert n in (393, 394) and st.power_two_sample(0.2, n, n) >= 0.8 > st.power_two_sample(0.2, n - 1, n - 1)
    assert float(st.power_two_sample(0.5, 64, 64)) == pytest.approx(0.80, abs=0.01)
    assert st.runs_needed(0.0) is None and st.runs_needed(None) is None


def test_power_agrees_with_simulation():
    g = np.random.default_rng(0)
    n, d, sims = 10, 1.0, 4000
    p = sps.ttest_ind(g.normal(d, 1, (sims, n)), g.normal(0, 1, (sims, n)), axis=1).pvalue
    assert float(st.power_two_sample(d, n, n)) == pytest.approx(np.mean(p < 0.05), abs=0.03)


def test_probability_of_improvement_by_hand():
    # lower is better: pairs (v, b): 1<2 win, 1<4 win, 3>2 loss, 3<4 win -> 3/4; a tie counts one half
    assert st.probability_of_improvement([2.0, 4.0], [1.0, 3.0], higher_better=False) == 0.75
    assert st.probability_of_improvement([2.0, 4.0], [1.0, 3.0], higher_better=True) == 0.25
    assert st.probability_of_improvement([2.0], [2.0, 1.0], higher_better=False) == 0.75
    res = st.stratified_bootstrap([2.0, 4.0], [1.0, 3.0], rng(), 1000, higher_better=False)
    assert res.poi == 0.75 and 0.0 <= res.poi_low <= res.poi_high <= 1.0


def test_first_crossing_interpolates():
    x = np.array([[0, 100, 200, 300]], float)
    y = np.array([[5.0, 4.0, 3.0, 2.0]])
    assert st.first_crossing(x, y, 3.5)[0] == pytest.approx(150.0)
    assert st.first_crossing(x, y, 5.0)[0] == 0.0
    assert np.isnan(st.first_crossing(x, y, 1.0)[0])


def test_gap_ci_is_welch_at_every_step():
    g = np.random.default_rng(3)
    mb, mv = g.normal(0, 1, (4, 6)), g.normal(0.5, 1, (5, 6))
    gap, lo, hi = st.gap_ci(mb, mv)
    for j in range(6):
        ci = sps.ttest_ind(mv[:, j], mb[:, j], equal_var=False).confidence_interval()
        assert (lo[j], hi[j]) == pytest.approx((ci.low, ci.high), rel=1e-9)


# --- our rules around scipy -----------------------------------------------------------------

def test_exact_permutation_3_vs_3_is_enumerated():
    # fully separated 3 vs 3: C(6,3) = 20 splits, only the observed split and its mirror are as extreme
    res = st.permutation_test([1.0, 2.0, 3.0], [4.0, 5.0, 6.0], rng())
    assert res.method == "exact" and res.splits == 20
    assert res.p == pytest.approx(0.1, abs=1e-15) and res.min_p == pytest.approx(0.1)


def test_permutation_counts_decimal_ties_as_ties():
    # values recorded to 4 decimals: several splits have the same difference of means in exact
    # arithmetic, but not in binary floating point. Counted by hand with exact fractions: 16 of the
    # 35 splits are <= the observed difference, 21 are >=, so p = 2 * 16 / 35.
    b, v = [3.3008, 3.3012, 3.3008], [3.3051, 3.2959, 3.3018, 3.2999]
    assert st.permutation_test(b, v, rng()).p == pytest.approx(32 / 35, abs=1e-12)


def test_permutation_monte_carlo_beyond_the_exact_limit():
    g = np.random.default_rng(5)
    res = st.permutation_test(g.normal(size=30), g.normal(size=30), rng(), resamples=2000)
    assert res.method == "monte carlo" and res.min_p == pytest.approx(2 / 2001) and 0 < res.p <= 1


def test_sign_flip_worked_example():
    # 4 positive paired differences: 2^4 = 16 sign patterns, the all-plus and all-minus are as extreme
    res = st.paired(np.zeros(4), np.array([1.0, 2.0, 3.0, 4.0]), rng())
    assert res.signflip_p == pytest.approx(2 / 16) and res.signflip_min_p == pytest.approx(2 / 16)
    assert res.signflip_method == "exact" and res.wilcoxon_method == "exact"


def test_wilcoxon_method_names_ties_and_zeros():
    assert st.wilcoxon([0.5, -0.5, 1.0, 1.0, 2.0, 2.5, -1.0, 3.0, 0.5]).method == "exact (sign flips)"
    assert st.wilcoxon(np.r_[np.arange(1.0, 16), 15.0]).method == "normal approximation"  # ties, 16 pairs
    zeros = st.wilcoxon([0.0, 0.0])
    assert zeros.p is None and zeros.n == 0


def test_mann_whitney_exact_only_without_ties_and_none_when_all_tied():
    assert st.mann_whitney([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]).method == "exact"
    assert st.mann_whitney([1.0, 2.0, 2.0], [2.0, 5.0, 6.0]).method == "normal approximation"
    allsame = st.mann_whitney([2.0, 2.0], [2.0, 2.0, 2.0])
    assert allsame.p is None
    no_nan(allsame)


def test_one_run_gives_none_not_nan():
    for rec in (st.welch([1.0], [2.0, 3.0]), st.effect_size([1.0], [2.0, 3.0]), st.levene([1.0], [2.0, 3.0]),
                st.paired([1.0], [2.0], rng()), st.one_sample_less([3.2], 3.28), st.tost([1.0], [1.0, 2.0], -1, 1),
                st.stratified_bootstrap([1.0], [2.0, 3.0], rng(), 200)):
        no_nan(rec)
    assert st.welch([1.0], [2.0, 3.0]).p is None
    d = st.describe([3.3], rng())
    assert d.n == 1 and d.mean == 3.3 and d.std is None and d.shapiro_p is None


def test_zero_variance_is_deterministic_never_nan():
    z = st.describe(np.full(4, 30602.0), rng())
    assert z.deterministic and z.std == 0 and z.shapiro_p is None and z.boot_low == z.boot_high == 30602.0
    w = st.welch([2.0, 2.0, 2.0], [3.0, 3.0])
    assert w.p is None and w.diff == 1.0
    t = st.tost([2.0, 2.0], [2.0005, 2.0005], -0.001, 0.001)
    assert t.deterministic and t.within and t.p is None
    lv = st.levene([1.0, 1.0, 1.0], [2.0, 2.0])
    assert lv.p is None
    lv2 = st.levene([1.0, 3.0], [2.0, 4.0])     # |x - median| equal within each group: F undefined
    assert lv2.p is None
    pr = st.paired([1.0, 2.0, 3.0], [1.5, 2.5, 3.5], rng())
    assert pr.deterministic and pr.mean_diff == pytest.approx(0.5) and pr.p_t is None
    one = st.one_sample_less([3.27, 3.27], 3.28)
    assert one.deterministic and one.p is None
    for rec in (z, w, t, lv, lv2, pr, one):
        no_nan(rec)


def test_tost_is_two_shifted_one_sided_welch_tests():
    # means differ by 0.1, each sample SD 1 (n = 5 each): se = sqrt(2/5), df = 8;
    # p = P(T8 > (0.1 + 2) / se) vs P(T8 < (0.1 - 2) / se): the larger is the second
    b = np.array([-2.0, -1.0, 0.0, 1.0, 2.0]) / math.sqrt(2.5)
    v = b + 0.1
    res = st.tost(b, v, -2.0, 2.0)
    se = math.sqrt(2 / 5)
    assert res.p == pytest.approx(sps.t.cdf((0.1 - 2) / se, 8), rel=1e-9)
    assert res.within and res.ci90_low > -2 and res.ci90_high < 2


def test_bootstrap_resamples_within_each_group():
    # a pooled bootstrap (the seed report's) can draw a resample without one group and comes out NaN;
    # resampling each condition on its own never does, and here every resample keeps v above b
    b = np.array([3.2996, 3.3009, 3.3011])
    v = np.array([3.3333, 3.3352, 3.3359])
    res = st.stratified_bootstrap(b, v, rng(), 10000, higher_better=False)
    assert res.diff_low is not None and 0 < res.diff_low < res.diff < res.diff_high
    assert res.poi == 0.0 and res.poi_high == 0.0


def test_records_are_dataclasses_with_dict_style_read():
    r = st.welch([1.0, 2.0, 3.0], [2.0, 3.0, 4.5])
    assert r["p"] == r.p and r.get("nope") is None and "ci_low" in r
    with pytest.raises(KeyError):
        r["nope"] = 1
    assert set(r.to_json()) == {"diff", "t", "df", "p", "ci_low", "ci_high"}
