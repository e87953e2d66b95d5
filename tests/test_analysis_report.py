"""The report's first screen, equivalence by default on val_loss, and the figures' visibility rules."""
import json
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import analyze  # noqa: E402
from analysis.synthetic import write_condition  # noqa: E402

FAST = ["--no-figures", "--resamples", "500"]


def analyse(tmp_path, logs, *extra):
    out = tmp_path / "report.md"
    rc = analyze.main(["--logs", str(logs), "--out", str(out), *extra])
    with open(out) as f:
        text = f.read()
    with open(tmp_path / "results.json") as f:
        return rc, text, json.load(f)


def cmp_(res, metric):
    return next(c for c in res["stages"][0]["comparisons"] if c["metric"] == metric)


def test_ci_inside_default_margin_is_equivalent_and_time_only_when_asked(tmp_path):
    logs = tmp_path / "logs"
    seeds = list(range(12))
    write_condition(str(logs / "s" / "baseline"), "s", "baseline", seeds=seeds, final=3.2800, sd=0.0004, rng_seed=1,
                    steps=100, val_every=50, step_ms=300.0)
    write_condition(str(logs / "s" / "sys"), "s", "sys", seeds=list(range(100, 112)), final=3.2801, sd=0.0004,
                    rng_seed=2, steps=100, val_every=50, step_ms=290.0)
    rc, text, res = analyse(tmp_path, logs, *FAST, "--metrics", "val_loss,train_time_s")
    c = cmp_(res, "val_loss")
    # the 90% CI of the difference lies well inside +-0.001: the default TOST says equivalent
    assert -0.001 < c["tost"]["ci90_low"] and c["tost"]["ci90_high"] < 0.001
    assert c["tost"]["margin"] == 0.001 and c["verdict"] == "equivalent" and c["decision"] == "equivalent"
    assert cmp_(res, "train_time_s")["tost"] is None                  # time: only when asked
    first = text[:text.index("## Executive summary")]
    assert "`sys` vs `baseline`, `val_loss`: **equivalent**" in first
    rc, text, res = analyse(tmp_path, logs, *FAST, "--metrics", "val_loss,train_time_s", "--equivalence",
                            "train_time_s=5%", "--val-loss-margin", "0")
    assert cmp_(res, "val_loss")["tost"] is None and cmp_(res, "train_time_s")["tost"]["margin_spec"] == "5%"


def test_first_screen_has_one_line_per_comparison_with_effect_ci_and_adjusted_p(tmp_path):
    logs = tmp_path / "logs"
    write_condition(str(logs / "s" / "baseline"), "s", "baseline", seeds=[1, 2, 3, 4], final=3.300, sd=0.001,
                    rng_seed=1, steps=100, val_every=50)
    write_condition(str(logs / "s" / "worse"), "s", "worse", seeds=[1, 2, 3, 4], final=3.320, sd=0.001,
                    rng_seed=2, steps=100, val_every=50)
    rc, text, res = analyse(tmp_path, logs, *FAST, "--metrics", "val_loss")
    first = text[:text.index("## Executive summary")]
    line = next(ln for ln in first.splitlines() if ln.startswith("- `worse` vs `baseline`, `val_loss`"))
    c = cmp_(res, "val_loss")
    assert "**worse**" in line and "95% CI" in line and "Holm p" in line and c["decision"] == "worse"
    assert first.index("## Decisions") < first.index("Acceptance rules") < first.index("What to run next")


def test_curves_with_one_validation_point_and_identical_curves_are_drawn(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    from analysis import figures
    grid = np.array([200.0])
    one_point = {"a": (grid, np.array([[3.31], [3.30]])), "b": (grid, np.array([[3.29], [3.28]]))}
    calls = []
    real_plot = matplotlib.axes.Axes.plot

    def spy(self, *a, **k):
        calls.append(k)
        return real_plot(self, *a, **k)
    matplotlib.axes.Axes.plot = spy
    try:
        figures.training_curves(str(tmp_path / "c.png"), {}, one_point, ["a", "b"])
        same = np.linspace(4.0, 3.3, 50)[None, :].repeat(2, 0)
        figures.training_curves(str(tmp_path / "d.png"), {}, {"a": (np.arange(50.0), same), "b": (np.arange(50.0), same)},
                                ["a", "b"])
    finally:
        matplotlib.axes.Axes.plot = real_plot
    mean_lines = [k for k in calls if "label" in k]
    assert mean_lines[0]["marker"] and mean_lines[1]["marker"]              # one point per run: markers
    assert mean_lines[2]["ls"] != mean_lines[3]["ls"]                       # identical curves: distinct styles
