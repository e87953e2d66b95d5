"""The speedrun's acceptance rules, each a pass/fail line with the numbers behind it.

Sources (quoted in docs/analyze.md): the modded-nanogpt README "Rules" (main track) and the
optimisation-track README ("Rules", "Pairwise statistical significance").

- main track: the mean final val loss is below the target (3.28) at p < 0.01, by a one-sided
  one-sample t-test; waived for changes that only touch systems performance (--systems-only);
- optimisation track: (target - mean) * sqrt(n) >= 0.004 (a one-sided z-test with sigma fixed at
  0.0013 and p < 0.001: 3.09 sigma ~ 0.004), and the earliest validation step at which the rule
  passes, counting only steps at which every run validated;
- pairwise against a previous record: (loss_diff + steps_saved / 100 * 0.0045) /
  sqrt(1/n1 + 1/n2) >= 0.004, loss_diff = previous mean - new mean, steps_saved = previous steps -
  new steps (100 steps saved are worth 0.0045 val loss);
- margin: the variant's mean val loss is below the baseline's by at least a margin at p < 0.01
  (one-sided Welch t-test of H1: mean_b - mean_v > margin).
"""
import math
from dataclasses import dataclass

import numpy as np

from . import stats as st


@dataclass
class RuleSettings:
    target: float = 3.28
    main_alpha: float = 0.01
    systems_only: bool = False
    opt_threshold: float = 0.004
    opt_sigma: float = 0.0013
    step_credit: float = 0.0045       # val loss per 100 steps saved
    pairwise_threshold: float = 0.004
    margin: float = 0.001
    margin_alpha: float = 0.01


@dataclass
class RuleResult(st.Record):
    rule: str                 # "main track" | "optimisation track" | "pairwise" | "margin"
    subject: str              # the condition (or "variant vs baseline")
    passed: bool = None       # None: waived, or not testable
    statistic: float = None   # the number compared with the threshold (t, LHS, ...)
    threshold: float = None
    p: float = None
    n: int = None
    mean: float = None
    step: int = None          # optimisation track: earliest passing validation step
    waived: bool = False
    line: str = ""            # the one-line statement, numbers included


def _f(x, nd=4):
    return "—" if x is None else f"{x:.{nd}f}"


def main_track(name, finals, cfg):
    """Mean final val loss < target at p < main_alpha, one-sided one-sample t-test."""
    r = st.one_sample_less(finals, cfg.target)
    out = RuleResult("main track", name, n=r.n, mean=r.mean, statistic=r.t, threshold=cfg.main_alpha, p=r.p)
    if cfg.systems_only:
        out.waived = True
        out.line = (f"main track: waived (--systems-only: a change to systems performance only); "
                    f"mean {_f(r.mean)} over n={r.n}" + (f", one-sided t-test p = {r.p:.3g}" if r.p is not None else ""))
        return out
    if r.n < 2:
        out.line = f"main track: not testable with n={r.n} (a t-test needs 2 runs); mean {_f(r.mean)}"
        return out
    if r.deterministic:
        out.passed = bool(r.mean < cfg.target)
        out.line = (f"main track: {'PASS' if out.passed else 'FAIL'} - every run gave {_f(r.mean)} "
                    f"({'below' if out.passed else 'not below'} {cfg.target:g}; zero variance, no t-test)")
        return out
    out.passed = bool(r.p < cfg.main_alpha)
    out.line = (f"main track: {'PASS' if out.passed else 'FAIL'} - mean {_f(r.mean)} < {cfg.target:g}? "
                f"t = {r.t:.3f}, df = {r.df}, one-sided p = {r.p:.3g} (needs p < {cfg.main_alpha:g}), n={r.n}")
    return out


def opt_statistic(mean, n, target):
    """(target - mean) * sqrt(n): the optimisation track's left-hand side."""
    return (target - mean) * math.sqrt(n)


def opt_track(name, finals, cfg, steps=None, curve_mat=None):
    """(target - mean) sqrt(n) >= opt_threshold on the final losses; with curves (runs x steps,
    NaN where a run did not validate), also the earliest step at which the rule passes among the
    steps where every run validated."""
    x = np.asarray(finals, float)
    n = len(x)
    out = RuleResult("optimisation track", name, n=n, threshold=cfg.opt_threshold)
    if n == 0:
        out.line = "optimisation track: no finished run"
        return out
    out.mean = float(x.mean())
    out.statistic = opt_statistic(out.mean, n, cfg.target)
    z = out.statistic / cfg.opt_sigma
    from scipy.stats import norm
    out.p = float(norm.sf(z))
    out.passed = bool(out.statistic >= cfg.opt_threshold - 1e-12)
    need = cfg.target - cfg.opt_threshold / math.sqrt(n)
    out.line = (f"optimisation track: {'PASS' if out.passed else 'FAIL'} - (target - mean) * sqrt(n) = "
                f"({cfg.target:g} - {out.mean:.4f}) * sqrt({n}) = {out.statistic:.5f} (needs >= {cfg.opt_threshold:g}, "
                f"i.e. mean <= {need:.4f} at n={n}; z = {z:.2f} at sigma {cfg.opt_sigma:g}, p = {out.p:.2g})")
    if steps is not None and curve_mat is not None and len(steps):
        mat = np.asarray(curve_mat, float)
        shared = np.all(np.isfinite(mat), axis=0)
        if mat.shape[0] == n and shared.any():
            lhs = (cfg.target - mat[:, shared].mean(axis=0)) * math.sqrt(n)
            ok = np.flatnonzero(lhs >= cfg.opt_threshold - 1e-12)
            sh_steps = np.asarray(steps, float)[shared]
            skipped = int((~shared).sum())
            if len(ok):
                out.step = int(sh_steps[ok[0]])
                out.line += f"; earliest passing validation step {out.step:,}"
            else:
                out.line += "; no validation step passes"
            if skipped:
                out.line += f" ({skipped} step(s) where not every run validated are not eligible)"
    return out


def pairwise(name, prev_mean, prev_n, prev_steps, new_mean, new_n, new_steps, cfg):
    """(loss_diff + steps_saved/100 * step_credit) / sqrt(1/n1 + 1/n2) >= pairwise_threshold."""
    out = RuleResult("pairwise", name, n=new_n, mean=new_mean, threshold=cfg.pairwise_threshold)
    if None in (prev_mean, prev_n, new_mean, new_n) or prev_n < 1 or new_n < 1:
        out.line = f"pairwise vs {name}: not computable (a side has no finished run)"
        return out
    loss_diff = prev_mean - new_mean
    saved = (prev_steps - new_steps) if prev_steps is not None and new_steps is not None else 0
    out.statistic = pairwise_statistic(loss_diff, saved, prev_n, new_n, cfg.step_credit)
    out.passed = bool(out.statistic >= cfg.pairwise_threshold - 1e-12)
    out.line = (f"pairwise: {'PASS' if out.passed else 'FAIL'} - (loss_diff {loss_diff:+.4f} + {saved:g} steps saved / 100 * "
                f"{cfg.step_credit:g}) / sqrt(1/{prev_n} + 1/{new_n}) = {out.statistic:.5f} (needs >= {cfg.pairwise_threshold:g})")
    if prev_steps is None or new_steps is None:
        out.line += "; step counts unknown, counted as equal"
    return out


def pairwise_statistic(loss_diff, steps_saved, n1, n2, step_credit=0.0045):
    return (loss_diff + steps_saved / 100.0 * step_credit) / math.sqrt(1.0 / n1 + 1.0 / n2)


def margin_test(name, base, var, cfg):
    """The variant's mean val loss is below the baseline's by at least cfg.margin, at p < margin_alpha
    (one-sided Welch t-test, H1: mean_b - mean_v > margin)."""
    b, v = np.asarray(base, float), np.asarray(var, float)
    out = RuleResult("margin", name, n=len(v), threshold=cfg.margin_alpha)
    if len(b) < 2 or len(v) < 2:
        out.line = f"margin: not testable (n = {len(v)} vs {len(b)}; Welch's test needs 2 runs a side)"
        return out
    out.mean = float(v.mean())
    gain = float(b.mean() - v.mean())
    w = st.welch(b, v + cfg.margin, alternative="less")
    if w.p is None:   # both sides constant
        out.passed = bool(gain >= cfg.margin)
        out.line = (f"margin: {'PASS' if out.passed else 'FAIL'} - improvement {gain:+.4f} vs margin {cfg.margin:g} "
                    "(zero variance on both sides, no test)")
        return out
    out.statistic, out.p = w.t, w.p
    out.passed = bool(w.p < cfg.margin_alpha)
    out.line = (f"margin: {'PASS' if out.passed else 'FAIL'} - improvement {gain:+.4f} (baseline mean - variant mean) "
                f"> {cfg.margin:g}? one-sided Welch t = {w.t:.3f}, df = {w.df:.1f}, p = {w.p:.3g} "
                f"(needs p < {cfg.margin_alpha:g}), n = {len(v)} vs {len(b)}")
    return out
