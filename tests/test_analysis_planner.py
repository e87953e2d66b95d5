"""The seed planner (analysis/planner.py) against Monte Carlo simulation of the rule it plans for:
at the planned n the simulated chance of success reaches the goal, one run fewer it does not, each
within the simulation's own error (4 standard errors); and end to end, the plan with its cost."""
import json
import math
import os
import sys

import numpy as np
import pytest
from scipy import stats as sps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import analyze  # noqa: E402
from analysis import planner, rules  # noqa: E402
from analysis.synthetic import write_condition  # noqa: E402

SIMS = 6000
CFG = rules.RuleSettings()


def mc_error(p):
    return 4 * math.sqrt(max(p * (1 - p), 0.01) / SIMS)


def sim_main(mean, sd, n, g):
    x = g.normal(mean, sd, (SIMS, n))
    return np.mean(sps.ttest_1samp(x, 3.28, axis=1, alternative="less").pvalue < 0.01)


def sim_opt(mean, sd, n, g):
    x = g.normal(mean, sd, (SIMS, n))
    return np.mean((3.28 - x.mean(axis=1)) * math.sqrt(n) >= 0.004)


def sim_diff(diff, sd, n, g):
    b, v = g.normal(0, sd, (SIMS, n)), g.normal(diff, sd, (SIMS, n))
    return np.mean(sps.ttest_ind(v, b, axis=1).pvalue < 0.05)


def sim_tost(diff, sd, n, margin, g):
    b, v = g.normal(0, sd, (SIMS, n)), g.normal(diff, sd, (SIMS, n))
    lo = sps.ttest_ind(v + margin, b, axis=1, alternative="greater").pvalue
    hi = sps.ttest_ind(v - margin, b, axis=1, alternative="less").pvalue
    return np.mean(np.maximum(lo, hi) < 0.05)


def check(planned, sim, goal):
    """sim(n) reaches goal at the planned n and not at n - 1, within the Monte Carlo error."""
    at = sim(planned)
    assert at >= goal - mc_error(goal), (planned, at)
    if planned > 2:
        below = sim(planned - 1)
        assert below <= goal + mc_error(goal), (planned - 1, below)


@pytest.mark.parametrize("goal", [0.8, 0.9])
def test_main_track_runs_match_simulation(goal):
    g = np.random.default_rng(1)
    mean, sd = 3.2780, 0.0020
    pilot = mean + sd * np.array([-1.2, -0.3, 0.4, 1.1])
    pilot = mean + (pilot - pilot.mean()) * sd / pilot.std(ddof=1)     # exactly this mean and SD
    item = next(i for i in planner.plan_condition("c", pilot, CFG) if i.question == "main track")
    n = item.n80 if goal == 0.8 else item.n90
    assert n > len(pilot)
    check(n, lambda k: sim_main(mean, sd, k, g), goal)
    for k in (3, n, 2 * n):
        assert planner.power_main(mean, sd, k) == pytest.approx(sim_main(mean, sd, k, g), abs=mc_error(0.5))


@pytest.mark.parametrize("goal", [0.8, 0.9])
def test_opt_track_runs_match_simulation(goal):
    g = np.random.default_rng(2)
    mean, sd = 3.2785, 0.0015
    pilot = mean + np.array([-1.0, 1.0]) * sd / math.sqrt(2)
    item = next(i for i in planner.plan_condition("c", pilot, CFG) if i.question == "optimisation track")
    n = item.n80 if goal == 0.8 else item.n90
    check(n, lambda k: sim_opt(mean, sd, k, g), goal)


def test_difference_and_equivalence_runs_match_simulation():
    g = np.random.default_rng(3)
    sd = 0.002
    base = 3.300 + sd * np.array([-1.0, 0.0, 1.0])
    var_diff = base + 0.003
    items = planner.plan_comparison("v", "b", base, var_diff)
    diff_item = next(i for i in items if i.question == "difference")
    check(diff_item.n80, lambda k: sim_diff(0.003, sd, k, g), 0.8)
    check(diff_item.n90, lambda k: sim_diff(0.003, sd, k, g), 0.9)
    var_eq = base + 0.0002
    eq_item = next(i for i in planner.plan_comparison("v", "b", base, var_eq, margin=0.001) if i.question == "equivalence")
    check(eq_item.n80, lambda k: sim_tost(0.0002, sd, k, 0.001, g), 0.8)
    never = next(i for i in planner.plan_comparison("v", "b", base, base + 0.002, margin=0.001) if i.question == "equivalence")
    assert never.n80 is None and never.note.startswith("never")


def test_pilot_mean_above_target_is_never():
    item = planner.plan_condition("c", [3.281, 3.283], CFG)[0]
    assert item.n80 is None and "never" in item.note


def test_plan_in_device_hours_and_dollars(tmp_path):
    logs = tmp_path / "logs"
    write_condition(str(logs / "s" / "baseline"), "s", "baseline", seeds=[1, 2, 3], final=3.2790, sd=0.0015,
                    rng_seed=1, steps=200, val_every=50, step_ms=600.0)
    for seed in (1, 2, 3):      # the runner's cost record: 8 GPUs for 120 s, packed with another run
        p = logs / "s" / "baseline" / f"seed_{seed}" / "summary.json"
        sm = json.load(open(p))
        sm["cost"] = dict(device="gpu", devices=8, wall_s=120.0, device_seconds=960.0, runs_sharing_node=2)
        json.dump(sm, open(p, "w"))
    out = tmp_path / "report.md"
    assert analyze.main(["--logs", str(logs), "--out", str(out), "--no-figures", "--resamples", "300",
                         "--usd-per-gpu-hour", "2.5"]) == 0
    res = json.load(open(tmp_path / "results.json"))
    st_ = res["stages"][0]
    item = next(i for i in st_["plan"] if i["question"] == "main track")
    assert item["hour_unit"] == "GPU-hours"
    assert item["hours80"] == pytest.approx(item["more80"] * 960 / 3600)
    assert item["usd80"] == pytest.approx(item["hours80"] * 2.5)
    assert st_["cost"]["gpu_hours"] == pytest.approx(3 * 960 / 3600) and st_["cost"]["usd"] == pytest.approx(2.0)
    text = open(out).read()
    assert "$2.5 per GPU-hour (--usd-per-gpu-hour)" in text
    assert "shared the node" in text and "train_time_s" in text
