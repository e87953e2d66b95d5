"""Figures: the per-pixel-column reduction of long curves, drawing in worker processes (same files as
drawing here), and the figure inputs handed over before the statistics (the same as the statistics')."""
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import analyze  # noqa: E402
from analysis import compute, drawing, loading, rules  # noqa: E402
from analysis.synthetic import write_condition  # noqa: E402

figures = pytest.importorskip("analysis.figures")


def column_extremes(x, y, columns):
    """Per pixel column (equal slices of x's range), the lowest and highest finite y: a plain loop."""
    out = {}
    for xi, yi in zip(x, y):
        c = min(int((xi - x[0]) / (x[-1] - x[0]) * columns), columns - 1)
        if np.isfinite(yi):
            lo, hi = out.get(c, (np.inf, -np.inf))
            out[c] = (min(lo, yi), max(hi, yi))
    return out


def test_columns_keep_every_columns_extremes_and_the_ends_exactly():
    rng = np.random.default_rng(0)
    x = np.arange(1.0, 5101.0)                      # a training loss logged every step
    y = 4 - x / 5100 + rng.normal(0, 0.03, len(x))
    y[2345] = 9.0                                   # a loss spike
    y[4000] = 0.5                                   # and a dip
    y[-1] = 3.2
    k = figures._columns(x, [y], [y], columns=500)
    assert len(k) < len(x) / 4 and np.all(np.diff(k) > 0)   # fewer points, in order
    assert k[0] == 0 and k[-1] == len(x) - 1                 # first and last point exactly
    assert y[k].max() == 9.0 and y[k].min() == 0.5
    kept = column_extremes(x[k], y[k], 500)
    assert kept == column_extremes(x, y, 500)                # every column: its exact min and max


def test_columns_leave_short_curves_alone_and_never_pick_nan_over_a_value():
    x = np.arange(10.0)
    assert list(figures._columns(x, [x], [x], columns=5)) == list(range(10))
    x = np.arange(1000.0)
    y = np.sin(x / 50)
    y[100:150] = np.nan                             # a gap of more than a column (columns of 10 points)
    y[501] = np.nan                                 # a missing point inside a column
    k = figures._columns(x, [y], [y], columns=100)
    assert column_extremes(x[k], y[k], 100) == column_extremes(x, y, 100)
    in_gap = y[k][(x[k] >= 100) & (x[k] < 150)]
    assert len(in_gap) and np.isnan(in_gap).all()              # the gap stays a gap: the line breaks there
    assert not np.isnan(y[k][(x[k] >= 500) & (x[k] < 510)]).all()


def jobs_for(tmp_path, d):
    out = tmp_path / d
    gaps = {"v": dict(steps=[0, 50, 100], gap=[0.01, 0.004, 0.002], low=[0.0, 0.001, -0.001], high=[0.02, 0.007, 0.005])}
    data = {"val_loss": [np.array([3.30, 3.31, 3.29]), np.array([3.32, 3.31])]}
    rows = [dict(value=v, metric_mean=m, metric_sd=0.01, values=[m]) for v, m in ((1e-3, 3.4), (2e-3, 3.3), (4e-3, None))]
    return [("gap", "s", "gap", (str(out / "gap.png"), gaps, ["b", "v"], "b")),
            ("distributions", "s", "distributions", (str(out / "dist.png"), ["val_loss"], data, ["b", "v"])),
            ("violins", "s", "violins", (str(out / "violins.png"), ["val_loss"], data, ["b", "v"])),
            ("sweeps", "s::0", "sweep", (dict(axes=[["lr"]], metric="val_loss", param="lr",
                                               rows=[dict(r, swept={"lr": r["value"]}) for r in rows]), str(out / "sweep"))),
            ("sweeps", "s::1", "sweep", (dict(axes=[], metric="val_loss", param="x", rows=[]), str(out / "none")))]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="worker processes are forked")
def test_worker_processes_draw_the_same_files_as_this_process(tmp_path):
    results = {}
    for processes in (0, 1, 3):
        with drawing.Drawer(processes) as d:
            assert d.parallel == (processes > 0)
            for job in jobs_for(tmp_path, str(processes)):
                d.submit(*job)
            results[processes] = d.results(analyze.FIGURE_KINDS)
    paths = {k: [p.replace(f"{tmp_path}/0/", "") for _, p in v] for k, v in results[0].items()}
    assert paths == {"distributions": ["dist.png"], "violins": ["violins.png"], "curves": [], "comparison": [],
                     "gap": ["gap.png"], "sweeps": ["sweep.png"]}   # the sweep without an axis has no figure
    for processes in (1, 3):
        assert {k: [p.replace(f"{tmp_path}/{processes}/", "") for _, p in v] for k, v in results[processes].items()} == paths
        for name in os.listdir(tmp_path / "0"):
            assert (tmp_path / "0" / name).read_bytes() == (tmp_path / str(processes) / name).read_bytes(), name


@pytest.mark.parametrize("processes", [0, 2])
def test_the_first_figure_that_cannot_be_written_is_the_one_reported(tmp_path, processes):
    (tmp_path / "blocked").write_text("a file where a folder should be")
    jobs = jobs_for(tmp_path, "ok")
    jobs[1] = jobs[1][:3] + ((str(tmp_path / "blocked" / "a" / "dist.png"),) + jobs[1][3][1:],)
    jobs[2] = jobs[2][:3] + ((str(tmp_path / "blocked" / "b" / "violins.png"),) + jobs[2][3][1:],)
    with drawing.Drawer(processes) as d:
        for job in jobs:
            d.submit(*job)
        with pytest.raises(OSError) as e:
            d.results(analyze.FIGURE_KINDS)
    assert e.value.filename == str(tmp_path / "blocked" / "a")   # distributions (job 2), not violins (job 3)
    assert (tmp_path / "ok" / "gap.png").exists() and (tmp_path / "ok" / "sweep.png").exists()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the copies are forked")
def test_jobs_of_a_copy_that_dies_are_drawn_by_the_worker(tmp_path, monkeypatch):
    parent = os.getpid()
    real = drawing.draw

    def dies_in_copies(name, args):
        if os.getpid() != parent:
            os._exit(3)
        return real(name, args)
    monkeypatch.setattr(drawing, "draw", dies_in_copies)
    jobs = [(name, args) for _, _, name, args in jobs_for(tmp_path, "x")]
    outcomes = drawing.draw_batch(jobs, processes=3)
    assert [s for s, _ in outcomes] == ["done"] * len(jobs)
    assert [v for _, v in outcomes] == [args[0] for _, args in jobs[:3]] + [str(tmp_path / "x" / "sweep.png"), None]


def test_figures_handed_over_early_use_the_statistics_inputs(tmp_path):
    logs = tmp_path / "logs"
    write_condition(str(logs / "s" / "baseline"), "s", "baseline", seeds=[1, 2], final=3.30, steps=400, val_every=100)
    write_condition(str(logs / "s" / "v"), "s", "v", seeds=[1, 2, 3], final=3.31, steps=400, val_every=100,
                    per_run={3: dict(status="diverged", stop_at=200)})
    write_condition(str(logs / "t" / "baseline"), "t", "baseline", seeds=[1, 2], final=3.30, steps=300, val_every=50)
    conds, _ = loading.load(str(logs))
    settings = dict(seed=0, resamples=200, baseline="baseline", metrics=["train_time_s", "val_loss", "nope"], target=3.28,
                    equivalence={}, rules=rules.RuleSettings(), rate=None)
    res, curves = compute.analyse(conds, settings)
    jobs = []

    class Recorder:
        def submit(self, kind, key, name, args):
            jobs.append((kind, key, args))
    analyze.submit_data_figures(Recorder(), conds, settings, str(tmp_path / "figs"))
    stages = {s.name: s for s in res["stages"]}
    for kind, stage, args in jobs:
        s = stages[stage]
        labels = [c.name for c in s.conditions]
        if kind in ("distributions", "violins"):
            assert args[1] == s.metrics == ["train_time_s", "val_loss"] and args[3] == labels
            for m in s.metrics:
                for c, values in zip(labels, args[2][m]):
                    assert sorted(values) == sorted(r["metrics"][m] for r in s.runs
                                                    if r["condition"] == c and r["outcome"] == "finished")
        if kind == "curves":
            val, train = curves[stage]
            for mine, theirs in ((args[2], val), (args[1], train)):
                assert sorted(mine) == sorted(theirs)
                for c in mine:
                    assert np.array_equal(mine[c][0], theirs[c][0]) and np.array_equal(mine[c][1], theirs[c][1], equal_nan=True)
            assert args[4] == (3.28 if s.dynamics.target_applies else None)
    assert sorted((k, s) for k, s, _ in jobs) == sorted((k, s) for k in ("distributions", "violins", "curves", "comparison")
                                                       for s in ("s", "t"))
