"""The speedrun's acceptance rules (analysis/rules.py) against the worked numbers of the
optimisation-track README, and on synthetic run sets whose answer is known; end to end through
analyze.py for the report's first screen and results.json."""
import json
import math
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import analyze  # noqa: E402
from analysis import rules  # noqa: E402
from analysis.synthetic import write_condition  # noqa: E402

CFG = rules.RuleSettings()


# --- worked examples of the optimisation-track README -----------------------------------------

def test_opt_track_n4_needs_mean_below_3278():
    # "for n=4 runs, any average below 3.278 suffices": (3.28 - 3.278) * 2 = 0.004 exactly
    assert rules.opt_statistic(3.278, 4, 3.28) == pytest.approx(0.004)
    assert rules.opt_track("x", [3.2779] * 4, CFG).passed
    assert not rules.opt_track("x", [3.2782] * 4, CFG).passed
    # "for a single non-cherry-picked run, any val loss below 3.276 suffices"
    assert rules.opt_track("x", [3.2759], CFG).passed and not rules.opt_track("x", [3.2762], CFG).passed


@pytest.mark.parametrize("prev,new,expected", [
    # result #13 (3210 steps, 3.2785) vs #11 (3225 steps, 3.2785), n = 16 and 10: 15 steps saved, same loss
    ((3.2785, 16, 3225), (3.2785, 10, 3210), 0.00167),
    # #13 vs #8 (3250 steps, 3.2778): loss_diff -0.0007, 40 steps saved; the README uses 1/10 + 1/16
    ((3.2778, 10, 3250), (3.2785, 16, 3210), 0.0027),
    # #12 (3325 steps, 3.2790, n=20) vs #6 (3375 steps, 3.2788, n=20): loss_diff -0.0002, 50 steps saved
    ((3.2788, 20, 3375), (3.2790, 20, 3325), 0.00648),
])
def test_pairwise_worked_examples(prev, new, expected):
    r = rules.pairwise("prev", prev[0], prev[1], prev[2], new[0], new[1], new[2], CFG)
    digits = len(repr(expected).split(".")[1])          # the README prints 0.00167, 0.0027, 0.00648
    assert round(r.statistic, digits) == expected
    assert r.passed == (expected >= 0.004)


# --- synthetic run sets with known answers ---------------------------------------------------

def test_main_track_passes_and_fails_where_it_should():
    g = np.random.default_rng(1)
    good = 3.2750 + 0.0010 * g.standard_normal(8)        # far below 3.28, small spread
    r = rules.main_track("good", good, CFG)
    assert r.passed and r.p < 0.01
    bad = 3.2795 + 0.0020 * g.standard_normal(4)         # mean near the target, n = 4
    assert not rules.main_track("bad", bad, CFG).passed
    assert not rules.main_track("above", [3.281, 3.282, 3.283], CFG).passed
    waived = rules.main_track("sys", bad, rules.RuleSettings(systems_only=True))
    assert waived.waived and waived.passed is None and "waived" in waived.line
    assert rules.main_track("one", [3.2], CFG).passed is None      # n = 1: not testable


def test_main_track_p_is_scipys_one_sided_t():
    from scipy import stats as sps
    x = np.array([3.279, 3.276, 3.281, 3.274, 3.277])
    r = rules.main_track("x", x, CFG)
    assert r.p == pytest.approx(sps.ttest_1samp(x, 3.28, alternative="less").pvalue)


def test_opt_track_earliest_step_uses_only_steps_every_run_validated():
    steps = np.array([2800, 2900, 3000, 3100])
    # 4 runs; at 2900 only three runs validated (NaN): not eligible even though its mean would pass
    mat = np.array([[3.2800, 3.2700, 3.2785, 3.2770],
                    [3.2800, np.nan, 3.2775, 3.2770],
                    [3.2800, 3.2700, 3.2770, 3.2770],
                    [3.2800, 3.2700, 3.2770, 3.2770]])
    finals = mat[:, -1]
    r = rules.opt_track("c", finals, CFG, steps, mat)
    # step 3000: mean 3.2775 -> (0.0025) * 2 = 0.005 >= 0.004: the earliest eligible passing step
    assert r.passed and r.step == 3000
    assert "not every run validated" in r.line


def test_margin_test_one_sided_welch():
    from scipy import stats as sps
    b = np.array([3.2850, 3.2862, 3.2841, 3.2858, 3.2849])
    v = b - 0.004 + np.array([0.0003, -0.0002, 0.0001, 0.0, -0.0001])
    r = rules.margin_test("v vs b", b, v, rules.RuleSettings(margin=0.001))
    assert r.passed
    assert r.p == pytest.approx(sps.ttest_ind(v + 0.001, b, equal_var=False, alternative="less").pvalue)
    assert not rules.margin_test("v vs b", b, v, rules.RuleSettings(margin=0.0045)).passed


# --- end to end --------------------------------------------------------------------------------

def test_rules_reach_results_json_and_the_first_screen(tmp_path):
    logs = tmp_path / "logs"
    seeds = list(range(1, 7))
    write_condition(str(logs / "s" / "baseline"), "s", "baseline", seeds=seeds, final=3.2840, sd=0.0010, rng_seed=1,
                    steps=300, val_every=50)
    write_condition(str(logs / "s" / "fast"), "s", "fast", seeds=seeds, final=3.2740, sd=0.0010, rng_seed=2,
                    steps=250, val_every=50)
    out = tmp_path / "report.md"
    assert analyze.main(["--logs", str(logs), "--out", str(out), "--no-figures", "--resamples", "500",
                         "--previous-record", "3.2785,16,300"]) == 0
    res = json.load(open(tmp_path / "results.json"))
    got = {(r["rule"], r["subject"]): r for r in res["stages"][0]["rules"]}
    assert got[("main track", "fast")]["passed"] and not got[("main track", "baseline")]["passed"]
    assert got[("optimisation track", "fast")]["passed"] and got[("optimisation track", "fast")]["step"] == 250
    pw = got[("pairwise", "fast vs baseline")]
    fast_mean, base_mean = got[("main track", "fast")]["mean"], got[("main track", "baseline")]["mean"]
    assert pw["statistic"] == pytest.approx(((base_mean - fast_mean) + 50 / 100 * 0.0045) / math.sqrt(2 / 6))
    assert got[("pairwise", "fast vs previous record")]["passed"] is not None
    text = open(out).read()
    first = text[:text.index("## Executive summary")]
    assert "main track: PASS" in first and "optimisation track: PASS" in first and "pairwise: PASS" in first
    assert "What to run next" in first
