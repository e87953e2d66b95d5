"""analysis/sequential.py and `analyze.py decide` against independent truth: published boundaries,
closed-form spending values, scipy's multivariate normal CDF and t-tests, Monte Carlo."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats as sps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from analysis import sequential as sq  # noqa: E402
from analysis import decide as dm  # noqa: E402
from analysis.decide import evaluate  # noqa: E402


# ---------------------------------------------------------------- boundaries

@pytest.mark.parametrize("kind,K,published", [
    ("obf", 2, [2.797, 1.977]), ("obf", 3, [3.471, 2.454, 2.004]),
    ("pocock", 2, [2.178] * 2), ("pocock", 3, [2.289] * 3), ("pocock", 5, [2.413] * 5)])
def test_classic_boundaries_match_published(kind, K, published):
    """Pocock (1977) and O'Brien-Fleming (1979) constants, two-sided alpha 0.05, equally spaced looks."""
    assert sq.classic_boundaries(kind, K, 0.05, sides=2) == pytest.approx(published, abs=6e-4)


@pytest.mark.parametrize("t", [0.2, 0.5, 0.8, 1.0])
def test_spending_functions_closed_form(t):
    # obf-type: 2 - 2 Phi(z_{alpha/2} / sqrt t); pocock-type: alpha ln(1 + (e - 1) t), by scipy.stats.norm
    assert sq.spend("obf", 0.05, t) == pytest.approx(2 - 2 * sps.norm.cdf(sps.norm.ppf(0.975) / math.sqrt(t)), rel=1e-10)
    assert sq.spend("pocock", 0.05, t) == pytest.approx(0.05 * math.log(1 + (math.e - 1) * t), rel=1e-12)
    # hand values at t = 0.5: 2 - 2 Phi(2.77181) = 0.005575, 0.05 ln(1.859141) = 0.05 x 0.620115 = 0.031006
    if t == 0.5:
        assert sq.spend("obf", 0.05, t) == pytest.approx(0.005575, abs=2e-6)
        assert sq.spend("pocock", 0.05, t) == pytest.approx(0.031006, abs=2e-6)
    assert sq.spend("obf", 0.05, 0.0) == 0.0 and sq.spend("pocock", 0.05, 0.0) == 0.0


def test_spending_boundaries_match_published_k5():
    """Lan-DeMets spending, 5 equally spaced looks, two-sided 0.05 (alpha/2 per tail, as ld98/ldbounds)."""
    ts = [0.2, 0.4, 0.6, 0.8, 1.0]
    obf = sq.spending_boundaries(ts, 0.05, 2, "obf", futility="none")
    assert obf.upper == pytest.approx([4.877, 3.357, 2.680, 2.290, 2.031], abs=6e-4)
    poc = sq.spending_boundaries(ts, 0.05, 2, "pocock", futility="none")
    assert poc.upper == pytest.approx([2.438, 2.427, 2.410, 2.397, 2.386], abs=6e-4)
    # the first bound in closed form: P(|Z_1| >= b_1) = 2 a(t_1)
    assert obf.upper[0] == pytest.approx(sps.norm.isf(sq.spend("obf", 0.025, 0.2)), rel=1e-8)


@pytest.mark.parametrize("spending,ts,sides", [("obf", [0.3, 0.7, 1.0], 2), ("pocock", [0.25, 0.5, 1.0], 2),
                                              ("obf", [0.4, 0.6, 1.0], 1)])
def test_boundaries_spend_alpha_by_mvn_cdf(spending, ts, sides):
    """Cumulative null crossing probability at each look equals alpha(t_k), computed independently
    with scipy's multivariate normal CDF of the canonical joint distribution (unequal spacing too)."""
    alpha = 0.05
    b = sq.spending_boundaries(ts, alpha, sides, spending, futility="none")
    for k in range(1, len(ts) + 1):
        cov = np.array([[math.sqrt(min(ts[i], ts[j]) / max(ts[i], ts[j])) for j in range(k)] for i in range(k)])
        up = np.array(b.upper[:k])
        low = -up if sides == 2 else np.full(k, -np.inf)
        stay = sps.multivariate_normal.cdf(up, np.zeros(k), cov, abseps=1e-7, releps=1e-7, lower_limit=low)
        assert 1 - stay == pytest.approx(sides * sq.spend(spending, alpha / sides, ts[k - 1]), abs=2e-5)


def test_crossing_probabilities_with_drift_and_futility_by_monte_carlo():
    ts = [0.25, 0.5, 0.75, 1.0]
    b = sq.spending_boundaries(ts, 0.05, 1, "pocock", futility="beta", power=0.8)
    eta = 2.0
    eff, fut = sq.crossing_probabilities(ts, b.upper, b.lower, sides=1, eta=eta)
    rng = np.random.default_rng(5)
    reps = 200_000
    inc = rng.standard_normal((reps, 4)) * np.sqrt(np.diff([0] + ts)) + eta * np.diff([0] + ts)
    z = np.cumsum(inc, axis=1) / np.sqrt(ts)
    alive = np.ones(reps, bool)
    mc_eff, mc_fut = [], []
    for k in range(4):
        e = alive & (z[:, k] >= b.upper[k])
        f = alive & ~e & (z[:, k] <= (b.lower[k] if b.lower[k] is not None else -np.inf))
        mc_eff.append(e.mean())
        mc_fut.append(f.mean())
        alive &= ~(e | f)
    se = math.sqrt(0.25 / reps)
    assert eff == pytest.approx(mc_eff, abs=4 * se)
    assert fut == pytest.approx(mc_fut, abs=4 * se)
    # beta spending: under the design alternative the futility exits spend beta(t_k) increments
    e1, f1 = sq.crossing_probabilities(ts, b.upper, b.lower, sides=1, eta=b.eta1)
    assert np.cumsum(f1)[:-1] == pytest.approx(np.array(b.beta_spent[:-1]), abs=1e-7)


# ---------------------------------------------------------------- the decision

def design(**kw):
    return sq.Design(variant="v", **kw)


def test_large_effect_stops_at_first_look():
    d = design(spending="pocock", batch=3, max_runs=12)
    base, var = [3.300, 3.302, 3.301], [3.280, 3.281, 3.279]
    dec = sq.decide(d, {"baseline": base, "v": var})
    assert dec.verdict == "stop: effect" and dec.look == 1 and dec.stopped
    # at the first look the adjusted p and CI are the one-look Student t ones (scipy)
    ref = sps.ttest_ind(var, base)
    assert dec.p_adjusted == pytest.approx(ref.pvalue, rel=1e-6)
    ci = ref.confidence_interval(0.95)
    assert dec.ci == pytest.approx((ci.low, ci.high), rel=1e-5)
    assert dec.estimate_median_unbiased == pytest.approx(np.mean(var) - np.mean(base), rel=1e-6)
    lk = dec.looks[0]
    assert lk.statistic == pytest.approx(-ref.statistic, rel=1e-10)   # positive = variant better (lower)
    # the bound on the t scale has the same tail probability as the z bound
    assert sps.t.sf(lk.bound_stat, lk.df) == pytest.approx(sps.norm.sf(lk.bound_z), rel=1e-6)
    assert dec.alpha_spent == pytest.approx(0.05 * math.log(1 + (math.e - 1) * 0.25), rel=1e-9)


def test_obf_cannot_stop_at_two_runs_but_stops_later_with_a_large_effect():
    rng = np.random.default_rng(0)
    base = 3.30 + 0.002 * rng.standard_normal(10)
    var = 3.28 + 0.002 * rng.standard_normal(10)
    dec = sq.decide(design(), {"baseline": base, "v": var})
    assert dec.verdict == "stop: effect" and dec.look == 2
    assert dec.looks[0].outcome == "continue" and dec.looks[0].bound_stat > 100
    assert dec.p_adjusted < 0.05 and dec.ci[1] < 0
    # the same data given only up to the stopping look decide the same: later runs never change it
    dec4 = sq.decide(design(), {"baseline": base[:4], "v": var[:4]})
    assert (dec4.verdict, dec4.look, dec4.p_adjusted) == (dec.verdict, dec.look, dec.p_adjusted)


def test_acceptance_rule_first_look_is_the_one_sample_t():
    d = sq.Design(question="acceptance", variant="new", batch=4, max_runs=12, spending="pocock")
    runs = [3.2705, 3.2712, 3.2698, 3.2709]
    dec = sq.decide(d, {"new": runs})
    ref = sps.ttest_1samp(runs, 3.28, alternative="less")
    assert dec.verdict == "stop: effect" and dec.look == 1
    assert dec.p_adjusted == pytest.approx(ref.pvalue, rel=1e-6)
    # one-sided alpha 0.01: the interval is the two-sided 98% one, its upper end the one-sided bound
    ci = ref.confidence_interval(0.99)
    assert dec.ci_level == pytest.approx(0.98) and dec.ci[1] == pytest.approx(ci.high, rel=1e-6)


def test_null_samples_stop_for_futility_or_continue():
    same = [3.30, 3.31, 3.29, 3.30]
    dec = sq.decide(design(batch=2), {"baseline": same[:2], "v": same[:2]})
    assert dec.verdict == "stop: futility" and dec.look == 1    # statistic 0 is inside the futility bound
    dec = sq.decide(design(batch=2, futility="none"), {"baseline": same[:2], "v": same[:2]})
    assert dec.verdict == "continue" and dec.next_look_n == 4 and dec.runs_needed == {"baseline": 2, "v": 2}
    assert dec.p_adjusted is None and dec.looks[0].futility_z is None
    dec = sq.decide(design(batch=2, max_runs=4, futility="none"), {"baseline": same, "v": same[::-1]})
    assert dec.verdict == "stop: maximum reached" and dec.look == 2
    assert dec.p_adjusted == pytest.approx(1.0)


def test_no_runs_yet_and_uneven_conditions():
    dec = sq.decide(design(batch=3), {"baseline": [1.0, 2.0, 3.0, 4.0], "v": [1.5]})
    assert dec.verdict == "continue" and dec.look == 0 and dec.runs_needed == {"baseline": 0, "v": 2}


def test_stagewise_p_by_monte_carlo():
    """Stage-wise p at a later look = null probability of a more extreme outcome (z scale, Monte Carlo)."""
    ts = [1 / 3, 2 / 3, 1.0]
    b = sq.spending_boundaries(ts, 0.05, 2, "pocock", futility="none")
    k, zobs = 1, 2.6
    p = sq.stagewise_p(b, k, zobs)
    rng = np.random.default_rng(2)
    reps = 400_000
    z = np.cumsum(rng.standard_normal((reps, 3)) * math.sqrt(1 / 3), axis=1) / np.sqrt(ts)
    first = np.abs(z[:, 0]) >= b.upper[0]
    second = ~first & (np.abs(z[:, 1]) >= zobs)
    mc = (first | second).mean()
    assert p == pytest.approx(mc, abs=4 * math.sqrt(mc * (1 - mc) / reps))
    assert p > 2 * sps.norm.sf(zobs)      # looking twice costs: larger than the naive p


# ---------------------------------------------------------------- designs and schema

@pytest.mark.parametrize("bad,needle", [
    ({"alpha": 2}, "alpha"), ({"spending": "linear"}, "spending"), ({"max_runs": 3.5}, "max_runs"),
    ({"batch": 20}, "batch"), ({"alhpa": 0.05}, "unknown key"), ({"sides": 3}, "sides"),
    ({"question": "acceptance", "sides": 2}, "sides"), ({"metric": "accuracy", "sides": 1}, "better"),
    ({"target": 3.28}, "target"), ({"schema": 2}, "schema"), ({"power": True}, "power")])
def test_schema_errors_are_one_line(bad, needle):
    with pytest.raises(sq.DesignError) as e:
        sq.Design.from_dict({"variant": "v", **bad}, "logs/s/sequential.json")
    msg = str(e.value)
    assert needle in msg and "logs/s/sequential.json" in msg and "\n" not in msg


def test_design_matches_lists_changed_keys():
    a = {"variant": "v", "max_runs": 10, "batch": 2}
    assert sq.design_matches(a, {"variant": "v", "max_runs": 10, "batch": 2, "alpha": 0.05, "sides": 2}) == []
    assert sq.design_matches(a, {"variant": "v", "max_runs": 12, "batch": 3}) == ["batch", "max_runs"]
    assert sq.design_matches(sq.Design(variant="v"), sq.Design(variant="v", spending="pocock")) == ["spending"]


def test_design_roundtrip_and_look_sizes():
    d = sq.Design(variant="v", max_runs=11, batch=3).validated()
    assert d.look_sizes() == [3, 6, 9, 11]
    assert sq.Design.from_dict(json.loads(json.dumps(d.to_dict()))) == d
    assert sq.Design(variant="v", max_runs=6, batch=1).look_sizes() == [2, 3, 4, 5, 6]


# ---------------------------------------------------------------- error rates by simulation

def test_type_one_error_within_binomial_bound_and_naive_exceeds_it():
    reps, alpha = 2000, 0.05
    for spending in ("obf", "pocock"):
        r = sq.simulate(design(spending=spending, batch=2, max_runs=10), 0.0, reps, rng=11)
        lo, hi = sps.binom.ppf([0.0005, 0.9995], reps, alpha) / reps   # 99.9% binomial range around alpha
        assert lo <= r["reject_no_futility"] <= hi, (spending, r)
        assert r["reject"] <= r["reject_no_futility"]
        assert r["naive_reject"] > sps.binom.ppf(0.9995, reps, alpha) / reps, r   # add seeds until p < 0.05
        assert r["mean_runs"] < 10


def test_simulation_with_known_sigma_matches_integration():
    d = sq.Design(variant="v", sigma=1.0, batch=3, max_runs=12, spending="pocock").validated()
    b = d.bounds()
    eta = 1.0 * math.sqrt(12 / 2)                     # 1 SD effect, 12 runs per condition
    eff, fut = sq.crossing_probabilities(b.ts, b.upper, b.lower, sides=2, eta=eta)
    r = sq.simulate(d, 1.0, 4000, rng=3)
    assert r["reject"] == pytest.approx(eff.sum(), abs=4 * math.sqrt(0.25 / 4000))
    assert r["futility"] == pytest.approx(fut.sum(), abs=4 * math.sqrt(0.25 / 4000))


# ---------------------------------------------------------------- report and CLI

def test_render_markdown_sections():
    rng = np.random.default_rng(0)
    base, var = 3.30 + 0.002 * rng.standard_normal(10), 3.28 + 0.002 * rng.standard_normal(10)
    dec = sq.decide(design(), {"baseline": base, "v": var})
    md = sq.render_markdown(dec)
    rows = [ln for ln in md.splitlines() if ln.startswith("| ") and ln[2].isdigit()]
    assert len(rows) == 2 and rows[1].split("|")[-2].strip() == "effect"
    assert f"{dec.looks[1].bound_stat:.3f}" in rows[1] and f"{dec.looks[1].statistic:.3f}" in rows[1]
    assert "stop: effect" in md and f"p = {dec.p_adjusted:.3g}" in md and "95% CI" in md
    assert "O'Brien-Fleming" in md
    cont = sq.render_markdown(sq.decide(design(), {"baseline": base[:3], "v": var[:3]}))
    assert "continue" in cont and "baseline: 1, v: 1" in cont and "Adjusted" not in cont


def write_stage(root, values, design=None):
    for cond, vals in values.items():
        for seed, v in enumerate(vals):
            d = os.path.join(root, "st", cond, f"seed_{seed}")
            os.makedirs(d)
            summary = {"schema": 1, "status": "ok", "seed": seed, "metrics": {"val_loss": v}} if v is not None \
                else {"schema": 1, "status": "diverged", "seed": seed, "error": "nan", "metrics": {}}
            with open(os.path.join(d, "summary.json"), "w") as f:
                json.dump(summary, f)
    if design is not None:
        with open(os.path.join(root, "st", "sequential.json"), "w") as f:
            json.dump(design, f)


def run_decide(capsys, *args):
    """decide's main in this process (the analyze.py dispatch is tested once, in a subprocess)."""
    rc = dm.main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_reads_sequential_json_and_refuses_a_changed_design(tmp_path, capsys):
    write_stage(str(tmp_path), {"baseline": [3.300, 3.302, 3.301, 3.2995], "palm": [3.280, 3.281, None, 3.279, 3.2805]},
                {"schema": 1, "spending": "pocock", "max_runs": 12, "batch": 3, "variant": "palm"})
    r = subprocess.run([sys.executable, os.path.join(REPO, "analyze.py"), "decide", "--logs", str(tmp_path),
                        "--stage", "st", "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["verdict"] == "stop: effect" and out["look"] == 1 and out["design"]["spending"] == "pocock"
    assert out["conditions"]["palm"] == {"finished": 4, "pending": 0, "failed": 1, "without_metric": 0}
    # the diverged seed_2 is skipped: look 1 uses seeds 0, 1, 3 of palm
    assert out["looks"][0]["estimate"] == pytest.approx(np.mean([3.280, 3.281, 3.279]) - np.mean([3.300, 3.302, 3.301]))
    dec, extra = evaluate(str(tmp_path), "st")
    assert dec.p_adjusted == pytest.approx(out["p_adjusted"]) and extra["design_file"].endswith("sequential.json")
    rc, so, se = run_decide(capsys, "--logs", str(tmp_path), "--stage", "st", "--batch", "2")
    assert rc == 2 and "batch" in se and se.count("\n") == 1
    rc, so, se = run_decide(capsys, "--logs", str(tmp_path), "--stage", "st", "--batch", "3")   # the same value is fine
    assert rc == 0 and so.startswith("st: stop: effect (look 1 of 4")


def test_cli_flags_without_design_file_and_bad_inputs(tmp_path, capsys):
    write_stage(str(tmp_path), {"baseline": [3.30, 3.31], "a": [3.30, 3.29], "b": [3.31, 3.30]})
    rc, so, se = run_decide(capsys, "--logs", str(tmp_path), "--stage", "st")
    assert rc == 2 and "--variant" in se and se.count("\n") == 1
    rc, so, se = run_decide(capsys, "--logs", str(tmp_path), "--stage", "st", "--variant", "a", "--futility", "none", "--json")
    assert rc == 0, se
    out = json.loads(so)
    assert out["verdict"] == "continue" and out["runs_needed"] == {"baseline": 2, "a": 2} and out["design_file"] is None
    rc, so, se = run_decide(capsys, "--logs", str(tmp_path), "--stage", "st", "--variant", "a", "--markdown")
    assert rc == 0 and so.startswith("### Sequential design")
    rc, so, se = run_decide(capsys, "--logs", str(tmp_path), "--stage", "nope")
    assert rc == 2 and "nope" in se and se.count("\n") == 1
    with open(os.path.join(str(tmp_path), "st", "sequential.json"), "w") as f:
        f.write("{not json")
    rc, so, se = run_decide(capsys, "--logs", str(tmp_path), "--stage", "st")
    assert rc == 2 and "sequential.json" in se and se.count("\n") == 1


def test_t_reference_calibration_and_consistent_p():
    """t designs: the spending level is calibrated on the t reference (alpha_nominal != alpha), and the
    adjusted p is <= alpha exactly when the design stopped for effect."""
    d = design(spending="pocock", batch=2, max_runs=6, futility="none").validated()
    b = d.bounds()
    assert b.reference is not None and b.alpha_nominal != d.alpha
    assert b.reference.crossed_by(b.upper, len(b.ts)).mean() == pytest.approx(d.alpha, abs=0.002)
    assert sq.Design(variant="v", sigma=1.0).bounds().reference is None      # known sigma: normal theory
    rng = np.random.default_rng(4)
    seen = set()
    for _ in range(60):
        base, var = rng.standard_normal(6), 1.2 + rng.standard_normal(6)
        dec = sq.decide(d, {"baseline": base, "v": var})
        assert (dec.p_adjusted <= d.alpha) == (dec.verdict == "stop: effect"), (dec.verdict, dec.p_adjusted)
        seen.add((dec.verdict, dec.look))
    assert {v for v, _ in seen} == {"stop: effect", "stop: maximum reached"} and len({k for _, k in seen}) >= 2
