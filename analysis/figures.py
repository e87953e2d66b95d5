"""Figures for the report (matplotlib Agg, one PNG per figure). Each function takes arrays and a
path, writes the file and returns its path; none of them computes a statistic.

Conditions get a colour and a line style each (solid, dashed, dotted, dash-dot, in turn), so two
conditions with identical curves stay visible: the second is drawn dashed over the first. A curve
with few points (one validation per run, as a run validating only at its end) is drawn with markers.
A curve with many more points than its axes has pixel columns (a training loss logged every step)
is drawn through the lowest and highest point of each column and its first and last point
(_columns()), which is what the full curve looks like at this resolution, spikes included.

Speed (bench/bench_analyze.py): figures are drawn on a bare Figure with the Agg canvas (no pyplot
state), with fixed margins and fixed title positions (matplotlib otherwise measures every tick
label to place them), and saved as RGB PNG with fast compression.
"""
import math
import os

import matplotlib
import numpy as np

matplotlib.use("Agg")   # also keeps rcParams["backend"] resolved, so reading it never imports pyplot
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
           "#bcbd22", "#7f7f7f"]
_MAX_THIN_RUNS = 40       # individual runs drawn behind each mean curve
_COLUMNS = 500            # pixel columns of a curve's axes (at most; the wide figures have ~475)
_DPI = 100


_STYLES = ["-", "--", ":", "-."]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
_FEW_POINTS = 30          # a curve with at most this many points is drawn with markers


def color(i):
    return _COLORS[i % len(_COLORS)]


def style(i):
    return _STYLES[i % len(_STYLES)]


def marker(i):
    return _MARKERS[i % len(_MARKERS)]


def _figure(figsize):
    fig = Figure(figsize=figsize, dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _subplots(figsize, rows=1, cols=1):
    fig = _figure(figsize)
    return fig, fig.subplots(rows, cols, squeeze=False)


def _title(ax, text, fontsize=10):
    """The title at the top of the axes, at y=1 fixed. Left to itself, matplotlib measures every
    tick label at each draw to check whether a top x axis or the y axis' offset text (as +3.06e4)
    is in the way; these axes have their x axis below and their titles centred, clear of the offset
    text at the left end."""
    ax.set_title(text, fontsize=fontsize, y=1.0)


def _layout(fig, bottom=0.12, hspace=0.3):
    """Fixed margins instead of tight_layout(), which measures every label's box and was the
    largest single cost of the figures (see bench/bench_analyze.py)."""
    fig.subplots_adjust(left=0.08, right=0.98, top=0.92, bottom=bottom, wspace=0.28, hspace=hspace)


def _save(fig, path):
    """The figure as an RGB PNG (the background is opaque white, so the alpha channel carried
    nothing), zlib level 1, no metadata but the resolution."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    canvas = fig.canvas
    canvas.draw()
    img = Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba(), "raw", "RGBA", 0, 1)
    img.convert("RGB").save(path, format="png", compress_level=1, dpi=(fig.dpi, fig.dpi))
    return path


def _grid(n):
    cols = min(n, 3)
    return math.ceil(n / cols), cols


def _offsets(k, width=0.18):
    """Deterministic horizontal spread for k points (no random jitter: same input, same picture)."""
    if k <= 1:
        return np.zeros(k)
    return np.linspace(-width, width, k)


def distributions(path, metrics, data, labels):
    """Box plot per condition with every run as a point and the mean as a diamond.
    data[metric][i] = values of condition labels[i]."""
    rows, cols = _grid(len(metrics))
    fig, axes = _subplots((4.2 * cols, 3.4 * rows), rows, cols)
    for ax, m in zip(axes.flat, metrics):
        vals = data[m]
        pos = [i for i, v in enumerate(vals) if len(v)]
        if pos:
            ax.boxplot([vals[i] for i in pos], positions=pos, widths=0.5, showfliers=False,
                       medianprops=dict(color="black"))
        for i in pos:
            v = np.sort(vals[i])
            ax.scatter(i + _offsets(len(v)), v, s=14, color=color(i), alpha=0.8, zorder=3)
            ax.scatter([i], [np.mean(v)], marker="D", s=40, color="white", edgecolor="black", zorder=4)
    return _finish_metric_grid(fig, axes, metrics, labels, path)


def violins(path, metrics, data, labels):
    """Violin per condition (conditions with < 2 distinct values are drawn as points only)."""
    rows, cols = _grid(len(metrics))
    fig, axes = _subplots((4.2 * cols, 3.4 * rows), rows, cols)
    for ax, m in zip(axes.flat, metrics):
        vals = data[m]
        pos = [i for i, v in enumerate(vals) if len(v) >= 2 and np.ptp(v) > 0]
        if pos:
            parts = ax.violinplot([vals[i] for i in pos], positions=pos, showmeans=True, showextrema=False)
            for body, i in zip(parts["bodies"], pos):
                body.set_facecolor(color(i))
                body.set_alpha(0.35)
        for i, v in enumerate(vals):
            if len(v):
                ax.scatter(i + _offsets(len(v), 0.08), np.sort(v), s=10, color=color(i), zorder=3)
    return _finish_metric_grid(fig, axes, metrics, labels, path)


def _finish_metric_grid(fig, axes, metrics, labels, path):
    """Label one panel per metric with the condition names, blank the unused panels, save."""
    for ax, m in zip(axes.flat, metrics):
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=20, fontsize=8)
        _title(ax, m)
        ax.grid(alpha=0.3)
        ax.xaxis.set_label_coords(0.5, -0.1)   # no axis labels here: skip measuring the tick labels for them
        ax.yaxis.set_label_coords(-0.1, 0.5)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    _layout(fig, bottom=0.22 / axes.shape[0], hspace=0.55)
    return _save(fig, path)


def _columns(x, lows, highs, columns=_COLUMNS):
    """Indices of the points of curves over x (ascending) to draw on an axes `columns` pixels wide:
    the first and the last point, and in each of `columns` equal slices of the x range the lowest
    point of every curve in `lows` and the highest of every curve in `highs` (NaN never counts as
    lowest or highest unless a slice has nothing else). Every index when there are at most two
    points per column."""
    n = len(x)
    if n <= 2 * columns:
        return np.arange(n)
    span = x[-1] - x[0]
    col = np.minimum(((x - x[0]) * (columns / span)).astype(np.int64), columns - 1) if span > 0 else np.zeros(n, np.int64)
    starts = np.flatnonzero(np.r_[True, col[1:] != col[:-1]])   # x ascending: each column is one run of indices
    keep = [np.array([0, n - 1])]
    for y, sign in [(y, 1.0) for y in lows] + [(y, -1.0) for y in highs]:
        v = np.where(np.isnan(y), np.inf, sign * y)
        keep.append(np.lexsort((v, col))[starts])   # sorted by column, then value: a column's first is its extreme
    return np.unique(np.concatenate(keep))


def _mean_band(ax, grid, mat, i, label):
    ok = np.isfinite(mat)
    cnt = ok.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(ok, mat, 0).sum(0) / cnt
        sd = np.sqrt((np.where(ok, mat - mean, 0) ** 2).sum(0) / (cnt - 1))
    runs = mat[:_MAX_THIN_RUNS]
    segs = []
    for r in runs:
        ok = np.isfinite(r)
        x, y = grid[ok], r[ok]
        k = _columns(x, [y], [y])
        segs.append(np.column_stack([x[k], y[k]]))
    ax.add_collection(LineCollection(segs, colors=color(i), linewidths=0.5, alpha=0.25))
    few = int(np.isfinite(mean).sum()) <= _FEW_POINTS
    if few:   # single validation points per run: show them, and the mean as a marker
        for r in runs:
            ok = np.isfinite(r)
            ax.scatter(grid[ok], r[ok], s=10, color=color(i), alpha=0.4, marker=marker(i), zorder=2)
    k = _columns(grid, [mean], [mean])
    ax.plot(grid[k], mean[k], color=color(i), lw=1.6, ls=style(i), marker=marker(i) if few else None, ms=5,
            label=f"{label} (n={mat.shape[0]})", zorder=3 + i * 0.01)
    good = np.isfinite(sd)
    x, lo, hi = grid[good], (mean - sd)[good], (mean + sd)[good]
    k = _columns(x, [lo], [hi])
    ax.fill_between(x[k], lo[k], hi[k], color=color(i), alpha=0.2, lw=0)


def _zoom(ax, blocks, frac=0.5):
    """Limit the y-axis to the values of the last `frac` of training (the interesting part)."""
    lows, highs = [], []
    for grid, mat in blocks:
        if not len(grid):
            continue
        tail = mat[:, grid >= grid.max() * (1 - frac)]
        tail = tail[np.isfinite(tail)]
        if len(tail):
            lows.append(tail.min())
            highs.append(tail.max())
    if lows:
        lo, hi = min(lows), max(highs)
        pad = (hi - lo) * 0.1 or abs(hi) * 0.01 or 0.01
        ax.set_ylim(lo - pad, hi + pad)


def training_curves(path, train, val, labels, target=None):
    """Mean +- SD of training and validation loss per condition, with runs drawn thin behind.
    train/val: {label: (grid, matrix runs x grid)}."""
    fig, (axes,) = _subplots((12, 4.2), 1, 2)
    for ax, block, title in ((axes[0], train, "training loss"), (axes[1], val, "validation loss")):
        for i, lab in enumerate(labels):
            if lab in block:
                _mean_band(ax, *block[lab], i, lab)
        _zoom(ax, [block[k] for k in block])
        if target is not None and title == "validation loss":
            ax.axhline(target, color="gray", ls="--", lw=0.8, label=f"target {target:g}")
        ax.set_xlabel("step")
        _title(ax, title + " (zoomed on the second half; mean +- SD)")
        ax.grid(alpha=0.3)
        if block:
            ax.legend(fontsize=8)
        ax.autoscale(axis="x")
    _layout(fig)
    return _save(fig, path)


def loss_comparison(path, val, labels):
    """Mean validation loss of every condition on one axis: whole run and last third."""
    fig, (axes,) = _subplots((12, 4.2), 1, 2)
    for k, ax in enumerate(axes):
        for i, lab in enumerate(labels):
            if lab not in val:
                continue
            grid, mat = val[lab]
            ok = np.isfinite(mat)
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = np.where(ok, mat, 0.0).sum(axis=0) / ok.sum(axis=0)
            sel = np.flatnonzero(grid >= (grid.max() * 2 / 3 if k else -np.inf))
            few = len(sel) <= _FEW_POINTS
            sel = sel[_columns(grid[sel], [mean[sel]], [mean[sel]])]
            ax.plot(grid[sel], mean[sel], marker=marker(i) if few else None, ms=4, ls=style(i),
                    color=color(i), label=lab)
        ax.set_xlabel("step")
        ax.set_ylabel("mean validation loss")
        _title(ax, "whole run" if k == 0 else "last third")
        ax.grid(alpha=0.3)
        if val:
            ax.legend(fontsize=8)
    if val:
        _zoom(axes[0], [val[k] for k in val], frac=0.8)
    _layout(fig)
    return _save(fig, path)


def gap(path, gaps, labels, baseline):
    """Gap of each variant's mean validation loss to the baseline's, with its 95% CI."""
    fig, ((ax,),) = _subplots((8, 4))
    for i, lab in enumerate(labels):
        if lab not in gaps:
            continue
        g = gaps[lab]
        x = np.array(g["steps"], float)
        y = np.array([np.nan if v is None else v for v in g["gap"]], float)
        lo = np.array([np.nan if v is None else v for v in g["low"]], float)
        hi = np.array([np.nan if v is None else v for v in g["high"]], float)
        ax.plot(x, y, color=color(i), label=lab, ls=style(i), marker=marker(i) if len(x) <= _FEW_POINTS else None, ms=4)
        ok = np.isfinite(lo) & np.isfinite(hi)
        ax.fill_between(x[ok], lo[ok], hi[ok], color=color(i), alpha=0.2, lw=0)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel(f"val loss - {baseline}")
    _title(ax, "gap to the baseline at every validation (95% CI, not adjusted across steps)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _layout(fig)
    return _save(fig, path)


def sweep(path, param, metric, rows):
    """Metric (mean +- SD over finished runs) against the swept value; failed values marked x."""
    fig, ((ax,),) = _subplots((6.5, 4))
    numeric = all(isinstance(r["value"], (int, float)) and not isinstance(r["value"], bool) for r in rows)
    xs = [r["value"] if numeric else i for i, r in enumerate(rows)]
    ok = [(x, r) for x, r in zip(xs, rows) if r["metric_mean"] is not None]
    if ok:
        ax.errorbar([x for x, _ in ok], [r["metric_mean"] for _, r in ok],
                    yerr=[r["metric_sd"] or 0 for _, r in ok], marker="o", capsize=3, color=color(0))
    for x, r in ok:
        vals = r.get("values") or []
        if len(vals) > 1:
            ax.scatter([x] * len(vals), vals, s=10, color=color(0), alpha=0.4, zorder=3)
    bad = [x for x, r in zip(xs, rows) if r["metric_mean"] is None]
    if bad:
        top = max([r["metric_mean"] for _, r in ok], default=1.0)
        ax.scatter(bad, [top] * len(bad), marker="x", s=60, color="red", label="no finished run")
        ax.legend(fontsize=8)
    if numeric and all(x > 0 for x in xs) and max(xs) / min(xs) >= 10:
        ax.set_xscale("log")
    if not numeric:
        ax.set_xticks(xs)
        ax.set_xticklabels([str(r["value"]) for r in rows], rotation=20, fontsize=8)
    ax.set_xlabel(param)
    ax.set_ylabel(metric or "")
    _title(ax, f"{metric} against {param} (mean +- SD, runs as dots)")
    ax.grid(alpha=0.3)
    _layout(fig)
    return _save(fig, path)


def heatmap(path, yname, xname, ys, xs, cells, metric):
    """A two-flag grid: the metric's mean per cell (darker = lower); cells without a finished run
    show their state (diverged, crashed) instead of a number. `cells` are rows (dicts with
    metric_mean, diverged, crashed) or None, ys x xs."""
    vals = np.array([[np.nan if c is None or c["metric_mean"] is None else c["metric_mean"] for c in line]
                     for line in cells], float)
    fig, ((ax,),) = _subplots((1.6 + 1.3 * len(xs), 1.4 + 0.8 * len(ys)))
    finite = vals[np.isfinite(vals)]
    im = ax.imshow(np.ma.masked_invalid(vals), cmap="viridis", aspect="auto",
                   vmin=finite.min() if finite.size else 0, vmax=finite.max() if finite.size else 1)
    ax.set_facecolor("#dddddd")
    mid = (finite.min() + finite.max()) / 2 if finite.size else 0
    for i, line in enumerate(cells):
        for j, c in enumerate(line):
            if c is None:
                text, dark = "no run", False
            elif np.isfinite(vals[i, j]):
                text, dark = f"{vals[i, j]:.4g}", vals[i, j] < mid
            else:
                text, dark = ("diverged" if c["diverged"] else "crashed" if c["crashed"] else "no result"), False
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
    ax.set_xticks(range(len(xs)))
    ax.set_xticklabels(xs, fontsize=8)
    ax.set_yticks(range(len(ys)))
    ax.set_yticklabels(ys, fontsize=8)
    ax.set_xlabel(xname)
    ax.set_ylabel(yname)
    _title(ax, f"{metric} (mean over finished runs)")
    fig.colorbar(im, ax=ax, fraction=0.05)
    fig.subplots_adjust(left=0.22, right=0.9, bottom=0.2, top=0.85)
    return _save(fig, path)
