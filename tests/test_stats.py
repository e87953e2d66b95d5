"""analysis/stats.py against independent truth: scipy's implementations and worked examples by hand."""
import math
import os
import sys

import numpy as np
import pytest
from scipy import stats as sps

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from analysis import stats as st  # noqa: E402


def samples(seed, n1, n2, shift=0.7, scale2=1.5):
    rng = np.random.default_rng(seed)
    return rng.normal(0, 1, n1), rng.normal(shift, scale2, n2)


@pytest.mark.parametrize("seed,n1,n2", [(0, 3, 3), (1, 5, 7), (2, 12, 9), (3, 40, 25)])
def test_welch_matches_scipy(seed, n1, n2):
    b, v = samples(seed, n1, n2)
    ours = st.welch(b, v)
    ref = sps.ttest_ind(v, b, equal_var=False)
    assert ours["t"] == pytest.approx(ref.statistic, rel=1e-10)
    assert ours["p"] == pytest.approx(ref.pvalue, rel=1e-9)
    ci = ref.confidence_interval(0.95)
    assert (ours["ci_low"], ours["ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert ours["df"] == pytest.approx(ref.df, rel=1e-10)


def test_welch_undefined_cases_give_none_not_nan():
    assert st.welch([1.0], [2.0, 3.0])["p"] is None
    res = st.welch([2.0, 2.0, 2.0], [3.0, 3.0])
    assert res["p"] is None and res["diff"] == 1.0


@pytest.mark.parametrize("seed,n1,n2", [(0, 3, 3), (1, 5, 7), (4, 8, 30), (2, 12, 9), (3, 40, 25)])
def test_mann_whitney_matches_scipy(seed, n1, n2):
    b, v = samples(seed, n1, n2)
    ours = st.mann_whitney(b, v)
    ref = sps.mannwhitneyu(v, b, alternative="two-sided")
    assert ours["u"] == ref.statistic
    assert ours["p"] == pytest.approx(ref.pvalue, rel=1e-9)


def test_mann_whitney_with_ties_matches_scipy():
    b = np.array([1.0, 2, 2, 3, 3, 3, 4, 5, 6, 7])
    v = np.array([2.0, 3, 4, 4, 5, 6, 6, 7, 8, 9, 9])
    ref = sps.mannwhitneyu(v, b, alternative="two-sided")
    ours = st.mann_whitney(b, v)
    assert ours["u"] == ref.statistic and ours["p"] == pytest.approx(ref.pvalue, rel=1e-9)


def test_exact_permutation_worked_example_3_vs_3():
    # fully separated 3 vs 3: C(6,3) = 20 splits, only the observed split and its mirror are as extreme
    res = st.permutation_test([1.0, 2.0, 3.0], [4.0, 5.0, 6.0], np.random.default_rng(0))
    assert res["method"] == "exact" and res["splits"] == 20
    assert res["p"] == pytest.approx(0.1, abs=1e-15)
    assert res["min_p"] == pytest.approx(0.1)


@pytest.mark.parametrize("seed,n1,n2", [(0, 4, 4), (1, 5, 7), (2, 9, 9)])
def test_exact_permutation_matches_scipy(seed, n1, n2):
    b, v = samples(seed, n1, n2)
    ref = sps.permutation_test((v, b), lambda x, y, axis: x.mean(axis) - y.mean(axis), permutation_type="independent",
                               n_resamples=np.inf, vectorized=True, alternative="two-sided")
    ours = st.permutation_test(b, v, np.random.default_rng(0))
    assert ours["method"] == "exact"
    assert ours["p"] == pytest.approx(ref.pvalue, rel=1e-12)


def test_permutation_monte_carlo_beyond_the_exact_limit():
    b, v = samples(5, 30, 30, shift=0.0, scale2=1.0)
    ref = sps.permutation_test((v, b), lambda x, y, axis: x.mean(axis) - y.mean(axis), vectorized=True,
                               n_resamples=20000, rng=1).pvalue
    ours = st.permutation_test(b, v, np.random.default_rng(1), resamples=20000)
    assert ours["method"] == "monte carlo" and ours["min_p"] == pytest.approx(2 / 20001)
    assert abs(ours["p"] - ref) < 0.03   # two Monte Carlo estimates of the same p


def test_hedges_g_by_hand():
    # b = 1,2,3 and v = 4,5,6: both SD 1, pooled SD 1, d = 3; df = 4,
    # J = G(2) / (sqrt(2) G(1.5)) = 1 / (sqrt(2) * sqrt(pi)/2) = 0.797885
    res = st.effect_size([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    assert res["d"] == pytest.approx(3.0)
    assert res["g"] == pytest.approx(3.0 * 2 / math.sqrt(2 * math.pi), rel=1e-12)
    assert res["g"] == pytest.approx(3 * (1 - 3 / (4 * 4 - 1)), rel=0.01)  # the usual approximation
    assert res["d_low"] < 3.0 < res["d_high"]


def test_effect_size_ci_covers_like_noncentral_t():
    # the CI inverts the noncentral t: at its bounds the observed t sits at the 97.5% / 2.5% quantiles
    b, v = samples(7, 6, 8)
    res = st.effect_size(b, v)
    scale = math.sqrt(1 / 6 + 1 / 8)
    t_obs = res["d"] / scale
    assert sps.nct.cdf(t_obs, 12, res["d_low"] / scale) == pytest.approx(0.975, abs=1e-6)
    assert sps.nct.cdf(t_obs, 12, res["d_high"] / scale) == pytest.approx(0.025, abs=1e-6)


@pytest.mark.parametrize("center", ["median", "mean"])
def test_levene_matches_scipy(center):
    b, v = samples(3, 9, 14)
    ref = sps.levene(b, v, center=center)
    ours = st.levene(b, v, center=center)
    assert ours["stat"] == pytest.approx(ref.statistic, rel=1e-10)
    assert ours["p"] == pytest.approx(ref.pvalue, rel=1e-9)


@pytest.mark.parametrize("n", [3, 4, 5, 8, 11, 12, 25, 60])
def test_shapiro_matches_scipy(n):
    x = np.random.default_rng(n).gamma(2.0, size=n)
    w, p = st.shapiro_wilk(x)
    ref = sps.shapiro(x)
    assert w == pytest.approx(ref.statistic, abs=1e-6)
    assert p == pytest.approx(ref.pvalue, abs=1e-5)


def test_one_sample_less_matches_scipy():
    x = np.array([3.279, 3.276, 3.281, 3.274, 3.277])
    ref = sps.ttest_1samp(x, 3.28, alternative="less")
    ours = st.one_sample_less(x, 3.28)
    assert ours["t"] == pytest.approx(ref.statistic) and ours["p"] == pytest.approx(ref.pvalue)


def test_paired_tests_match_scipy():
    rng = np.random.default_rng(11)
    b = rng.normal(3.3, 0.01, 9)
    v = b + rng.normal(0.004, 0.005, 9)
    res = st.paired(b, v, np.random.default_rng(0))
    ref_t = sps.ttest_rel(v, b)
    assert res["t"] == pytest.approx(ref_t.statistic) and res["p_t"] == pytest.approx(ref_t.pvalue)
    assert res["wilcoxon_p"] == pytest.approx(sps.wilcoxon(v - b).pvalue, rel=1e-12)
    ref_sf = sps.permutation_test((v - b,), lambda d, axis: d.mean(axis), permutation_type="samples",
                                  n_resamples=np.inf, vectorized=True).pvalue
    assert res["signflip_method"] == "exact" and res["signflip_p"] == pytest.approx(ref_sf, rel=1e-12)
    assert res["boot_low"] < res["mean_diff"] < res["boot_high"]


def test_wilcoxon_with_ties_matches_scipy_permutation():
    d = np.array([0.5, -0.5, 1.0, 1.0, 2.0, 2.5, -1.0, 3.0, 0.5])
    ours = st.wilcoxon(d)
    assert ours["method"] == "exact (sign flips)"
    assert ours["p"] == pytest.approx(sps.wilcoxon(d).pvalue, rel=1e-12)


def test_wilcoxon_large_n_normal_approximation():
    d = np.random.default_rng(2).normal(0.2, 1, 80)
    assert st.wilcoxon(d)["p"] == pytest.approx(sps.wilcoxon(d).pvalue, rel=1e-9)


def test_sign_flip_worked_example():
    # 4 positive paired differences: 2^4 = 16 sign patterns, the all-plus and all-minus are as extreme
    res = st.paired(np.zeros(4), np.array([1.0, 2.0, 3.0, 4.0]), np.random.default_rng(0))
    assert res["signflip_p"] == pytest.approx(2 / 16) and res["signflip_min_p"] == pytest.approx(2 / 16)


def test_holm_textbook_example():
    # p = (0.01, 0.04, 0.03, 0.005), m = 4: sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1
    # = 0.02, 0.03, 0.06, 0.04 -> made monotone: 0.02, 0.03, 0.06, 0.06
    assert st.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert st.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert len(st.holm([])) == 0


def test_tost_matches_two_shifted_one_sided_welch_tests():
    b, v = samples(9, 10, 12, shift=0.1, scale2=1.0)
    m = 0.8
    res = st.tost(b, v, -m, m)
    p_lo = sps.ttest_ind(v, b - m, equal_var=False, alternative="greater").pvalue
    p_hi = sps.ttest_ind(v, b + m, equal_var=False, alternative="less").pvalue
    assert res["p_lower"] == pytest.approx(p_lo) and res["p_upper"] == pytest.approx(p_hi)
    assert res["p"] == pytest.approx(max(p_lo, p_hi))


def test_tost_worked_example():
    # means differ by 0.1, each sample SD 1 (n = 5 each): se = sqrt(2/5), df = 8;
    # p = P(T8 > (0.1 + 2) / se) vs P(T8 < (0.1 - 2) / se): the larger is the second
    b = np.array([-2.0, -1.0, 0.0, 1.0, 2.0]) / math.sqrt(2.5)
    v = b + 0.1
    res = st.tost(b, v, -2.0, 2.0)
    se = math.sqrt(2 / 5)
    assert res["p"] == pytest.approx(sps.t.cdf((0.1 - 2) / se, 8), rel=1e-9)


def test_power_matches_cohens_table():
    # Cohen (1988): d = 0.5 needs 64 per group, d = 0.8 needs 26, for 80% power at alpha 0.05 two-sided
    assert st.runs_needed(0.5) == 64
    assert st.runs_needed(0.8) == 26
    assert float(st.power_two_sample(0.5, 64, 64)) == pytest.approx(0.80, abs=0.01)
    assert st.runs_needed(0.0) is None


def test_power_agrees_with_simulation():
    rng = np.random.default_rng(0)
    n, d, sims = 10, 1.0, 4000
    b = rng.normal(0, 1, (sims, n))
    v = rng.normal(d, 1, (sims, n))
    p = sps.ttest_ind(v, b, axis=1).pvalue
    assert float(st.power_two_sample(d, n, n)) == pytest.approx(np.mean(p < 0.05), abs=0.03)


def test_stratified_bootstrap_never_degenerate_and_covers():
    b = np.array([3.2996, 3.3009, 3.3011])
    v = np.array([3.3333, 3.3352, 3.3359])
    res = st.stratified_bootstrap(b, v, np.random.default_rng(0), 10000, higher_better=False)
    assert res["diff_low"] is not None and res["diff_low"] < res["diff"] < res["diff_high"]
    assert res["poi"] == 0.0  # every variant run is worse than every baseline run
    # a pooled bootstrap could draw a resample without one group; ours resamples within groups
    assert res["diff_low"] > 0


def test_probability_of_improvement_by_hand():
    # lower is better: pairs (v, b): 1<2 win, 1<4 win, 3>2 loss, 3<4 win -> 3/4
    res = st.stratified_bootstrap([2.0, 4.0], [1.0, 3.0], np.random.default_rng(0), 1000, higher_better=False)
    assert res["poi"] == 0.75
    res = st.stratified_bootstrap([2.0, 4.0], [1.0, 3.0], np.random.default_rng(0), 1000, higher_better=True)
    assert res["poi"] == 0.25


def test_describe_matches_numpy_and_scipy():
    x = np.array([3.30, 3.31, 3.29, 3.305, 3.295, 3.32])
    d = st.describe(x, np.random.default_rng(0), 5000)
    ci = sps.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=sps.sem(x))
    assert d["std"] == pytest.approx(x.std(ddof=1)) and d["sem"] == pytest.approx(sps.sem(x))
    assert (d["ci_low"], d["ci_high"]) == pytest.approx(ci)
    assert d["p95"] == pytest.approx(np.percentile(x, 95))
    assert d["boot_low"] < x.mean() < d["boot_high"]
    z = st.describe(np.full(4, 30602.0), np.random.default_rng(0))
    assert z["deterministic"] and z["std"] == 0 and z["shapiro_p"] is None


def test_first_crossing_interpolates():
    x = np.array([[0, 100, 200, 300]], float)
    y = np.array([[5.0, 4.0, 3.0, 2.0]])
    assert st.first_crossing(x, y, 3.5)[0] == pytest.approx(150.0)
    assert st.first_crossing(x, y, 5.0)[0] == 0.0
    assert np.isnan(st.first_crossing(x, y, 1.0)[0])


def test_gap_ci_matches_welch_per_step():
    rng = np.random.default_rng(3)
    mb, mv = rng.normal(0, 1, (4, 6)), rng.normal(0.5, 1, (5, 6))
    gap, lo, hi = st.gap_ci(mb, mv)
    for j in range(6):
        ci = sps.ttest_ind(mv[:, j], mb[:, j], equal_var=False).confidence_interval()
        assert (lo[j], hi[j]) == pytest.approx((ci.low, ci.high), rel=1e-9)
