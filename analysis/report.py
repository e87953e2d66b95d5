"""Markdown for report.md: number formatting, tables (tabulate) and the generated prose.

Every sentence here is produced by an explicit rule over the results dict (see interpretation()
and limitations()); every number comes from that dict, which is also written to results.json.
"""
import dataclasses
import math
import os
import re

from tabulate import tabulate

from . import stats as st
from .compute import direction
from .text import md

DASH = "—"
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][\w.]*)\s*\}\}")


# ---------------------------------------------------------------------------------------------
# formatting (None/NaN/inf always become a dash: no "nan" ever reaches a table)
# ---------------------------------------------------------------------------------------------

def _ok(x):
    return x is not None and not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(x)


def fmt(x, sig=5):
    if not _ok(x):
        return DASH
    if x == 0:
        return "0"
    mag = math.floor(math.log10(abs(x)))
    if mag >= sig:
        return f"{x:,.0f}"
    if mag >= -4:
        return f"{x:,.{max(0, sig - 1 - mag)}f}"
    return f"{x:.{sig - 1}e}"


def fmt_raw(x):
    """A recorded value with up to 6 significant digits and no padding zeros."""
    if not _ok(x):
        return DASH
    if x == int(x) and abs(x) < 1e15:
        return f"{int(x):,}"
    return f"{x:,.0f}" if abs(x) >= 1e5 else f"{x:.6g}"


def fmt_signed(x, sig=4):
    s = fmt(x, sig)
    return s if s == DASH or s.startswith("-") or x == 0 else "+" + s


def fmt_pct(x):
    return f"{x:+.2f}%" if _ok(x) else DASH


def fmt_p(p):
    if not _ok(p):
        return DASH
    if p < 1e-4:
        return "<0.0001"
    if p < 1e-3:
        return f"{p:.4f}"
    return f"{p:.3f}"


def p_is(p, name="p"):
    """'p = 0.012' or 'p < 0.0001' (never 'p = <0.0001')."""
    f = fmt_p(p)
    return f"{name} < {f[1:]}" if f.startswith("<") else f"{name} = {f}"


def fmt_ci(lo, hi, sig=4):
    if not (_ok(lo) and _ok(hi)):
        return DASH
    return f"[{fmt(lo, sig)}, {fmt(hi, sig)}]"


def fmt_runs(x):
    if not _ok(x):
        return DASH
    return f"more than {x:,}" if x >= 10 ** 7 else f"{x:,}"


def fmt_int(x):
    return f"{round(x):,}" if _ok(x) else DASH


def fmt_secs(s):
    if not _ok(s):
        return DASH
    return f"{s:,.1f} s" if s < 120 else f"{s / 60:,.1f} min"


def cell(s):
    return str(s).replace("|", "\\|").replace("\n", " ")


def reason(text):
    """A run's error line for a table: numbers that are not numbers are named, not printed as nan."""
    if not text:
        return DASH
    return re.sub(r"(?i)(?<![\w.])[-+]?(nan|inf|infinity)(?![\w])", "non-finite", str(text))


def table(rows, headers):
    return tabulate([[cell(c) for c in r] for r in rows], headers=[cell(h) for h in headers],
                    tablefmt="github", disable_numparse=True)


def code(s):
    return f"`{s}`"


def figure(rel, caption):
    return f"![{caption}]({rel})\n\n*{caption}*\n"


def _dir_word(c):
    if c["diff"] is None or c["diff"] == 0:
        return "no change"
    hb = c["higher_better"]
    up = c["diff"] > 0
    if hb is None:
        return "higher" if up else "lower"
    return "better" if c["better"] else "worse"


# ---------------------------------------------------------------------------------------------
# sections
# ---------------------------------------------------------------------------------------------

def _stage_title(s, multi):
    return f"### Stage `{s['name']}`\n\n" if multi else ""


def _main_ci(c):
    """The CI that goes with the primary test (t-based), else the stratified bootstrap's."""
    p = c.get("primary") or {}
    if p.get("ci_low") is not None:
        return p["ci_low"], p["ci_high"], p["test"]
    b = c.get("bootstrap") or {}
    return b.get("diff_low"), b.get("diff_high"), "bootstrap"


def _cmp_line(c):
    p = c.get("primary") or {}
    bits = [f"{fmt(c['mean_v'])} vs {fmt(c['mean_b'])}",
            f"{fmt_signed(c['diff'])} ({fmt_pct(c['diff_pct'])}, {_dir_word(c)})"]
    lo, hi, how = _main_ci(c)
    if c["deterministic"]:
        bits.append("the same in every run of each condition")
    elif lo is not None:
        bits.append(f"95% CI {fmt_ci(lo, hi)} ({how})")
    if p.get("p_holm") is not None:
        bits.append(f"{p['test']} {p_is(p['p'])}, {p_is(p['p_holm'], 'Holm-adjusted')}")
    tail = " (caveats in §7)" if c.get("caveats") and c["verdict"] in _HEADLINE else ""
    return f"`{c['metric']}`: " + "; ".join(bits) + f" → **{c['verdict']}**{tail}"


_HEADLINE = {"significantly better", "significantly worse", "significant difference", "equivalent",
             "deterministic difference"}


def executive_summary(res):
    out = []
    multi = len(res["stages"]) > 1
    for s in res["stages"]:
        runs = s["runs"]
        fin = sum(1 for r in runs if r["outcome"] == "finished")
        line = (f"- **Stage `{s['name']}`**: {len(s['conditions'])} condition(s), {len(runs)} run(s), "
                f"{fin} finished" + (f", {len(runs) - fin} excluded (failed or unfinished, see §2)" if fin < len(runs) else "")
                + (f"; baseline `{s['baseline']}`." if s["baseline"] else "; no baseline, so no comparisons."))
        out.append(line)
        by_variant = {}
        for c in s["comparisons"]:
            by_variant.setdefault(c["variant"], []).append(c)
        for v, cs in by_variant.items():
            if all(c["n_v"] == 0 for c in cs):
                out.append(f"  - **{v}**: no finished run, nothing to compare (see §2).")
                continue
            out.append(f"  - **{v}** vs {s['baseline']} (finished runs: {max(c['n_v'] for c in cs)} vs {max(c['n_b'] for c in cs)}):")
            shown = [c for i, c in enumerate(cs) if i == 0 or c["verdict"] in _HEADLINE]
            for c in shown:
                out.append(f"    - {_cmp_line(c)}")
            rest = {}
            for c in cs:
                if c not in shown and c["verdict"] != "no data":
                    rest.setdefault(c["verdict"], []).append(code(c["metric"]))
            for verdict_, ms in rest.items():
                out.append(f"    - {verdict_}: {', '.join(ms)}")
    if not out:
        out.append("- Nothing could be analysed.")
    fam = res["family"]
    out.append("")
    out.append(f"Significance is decided on Holm-Bonferroni adjusted p-values over the report's whole family of "
               f"{len(fam)} test(s) (alpha = {st.ALPHA:g}); raw and adjusted p-values are side by side in §5.")
    small = [(s["name"], c["name"], c["finished"]) for s in res["stages"] for c in s["conditions"] if 0 < c["finished"] < 5]
    if small:
        out.append(f"Sample sizes are small ({', '.join(f'{c}: n = {n}' for _, c, n in small)}): read §8 before acting on any result.")
    return "\n".join(out)


def design(res):
    out = []
    multi = len(res["stages"]) > 1
    for s in res["stages"]:
        out.append(_stage_title(s, multi))
        rows = []
        for c in s["conditions"]:
            env = c["env"]
            joined = lambda k: ", ".join(str(x) for x in env.get(k, []) if x is not None) or DASH
            commit = c["git_commit"] or joined("git_commit")
            rows.append([c["name"] + (" (baseline)" if c["name"] == s["baseline"] else ""),
                         ", ".join(c["scripts"]) or ("speedrun log files" if c["source"] == "log" else DASH),
                         c["runs"], c["finished"], ", ".join(map(str, c["seeds"])) or DASH,
                         str(commit)[:12] if commit not in (None, DASH) else DASH,
                         joined("device"), joined("gpus"), joined("gpu_name"), joined("torch")])
        out.append(table(rows, ["condition", "script", "runs", "finished", "seeds", "git commit", "device",
                                "GPUs", "GPU", "torch"]))
        out.append("")
        cfgs = {c["name"]: c["config"] for c in s["conditions"] if c["config"]}
        if cfgs:
            keys = sorted(set().union(*cfgs.values()))
            differ = [k for k in keys if len({repr(cfg[k]) for cfg in cfgs.values() if k in cfg}) > 1]
            same = [k for k in keys if k not in differ]
            if differ:
                out.append("Hyperparameters that differ between conditions:\n")
                out.append(table([[k] + [str(cfgs[n].get(k, DASH)) for n in cfgs] for k in differ],
                                 ["hyperparameter"] + list(cfgs)))
                out.append("")
            else:
                out.append("No hyperparameter differs between the conditions' recorded configs "
                           "(the variants differ in their script or code path).\n")
            if same:
                val = lambda k: next(cfg[k] for cfg in cfgs.values() if k in cfg)
                out.append("Shared hyperparameters: " + ", ".join(f"{k}={val(k)}" for k in same) + ".\n")
        else:
            out.append("No configuration was recorded for these runs (summary.json `config` / experiment.json overrides).\n")
        cmds = [(c["name"], c["command"]) for c in s["conditions"] if c["command"]]
        if cmds:
            out.append("Commands (experiment.json):\n")
            for n, cmd in cmds:
                cmd = " ".join(map(str, cmd)) if isinstance(cmd, list) else cmd
                out.append(f"- `{n}`: `{cmd}`")
            out.append("")
    return "\n".join(out).strip() or "No runs found."


def data_quality(res, rel_figs):
    out = []
    multi = len(res["stages"]) > 1
    for s in res["stages"]:
        out.append(_stage_title(s, multi))
        out.append("**Success rate.**\n")
        rows = []
        for c in s["conditions"]:
            o = c["outcomes"]
            rate = 100 * c["finished"] / c["runs"] if c["runs"] else None
            rows.append([c["name"], c["runs"], o.get("finished", 0), o.get("diverged", 0), o.get("crashed", 0),
                         o.get("unfinished", 0), o.get("unreadable", 0), f"{rate:.0f}%" if rate is not None else DASH,
                         len(c["not_started"])])
        out.append(table(rows, ["condition", "runs", "finished", "diverged", "crashed (oom/failed/timeout/interrupted)",
                                "unfinished", "unreadable", "success", "planned, not started"]))
        out.append("")
        waiting = [(c["name"], c["not_started"]) for c in s["conditions"] if c["not_started"]]
        if waiting:
            out.append("Seeds planned in experiment.json with no run directory yet: "
                       + "; ".join(f"`{n}` {', '.join(map(str, ss))}" for n, ss in waiting) + ".\n")
        bad = [r for r in s["runs"] if r["outcome"] != "finished"]
        if bad:
            out.append(f"{len(bad)} run(s) did not finish and are left out of every statistic below "
                       "(descriptive statistics, tests, curves):\n")
            out.append(table([[r["condition"], r["name"], r["status"],
                               f"{r['steps_completed']}" + (f"/{r['total_steps']}" if r["total_steps"] else "") if r["steps_completed"] is not None else DASH,
                               reason(r["reason"])] for r in bad],
                             ["condition", "run", "status", "last step", "reason"]))
            out.append("")
        else:
            out.append(f"All {len(s['runs'])} runs finished; none is excluded.\n")
        miss = [(c, m, k) for c, d in s["missing"].items() for m, k in d.items()]
        if miss:
            out.append("Metrics missing from some finished runs (those runs are left out of that metric only):\n")
            out.append(table([[c, m, k] for c, m, k in miss], ["condition", "metric", "runs without it"]))
            out.append("")
        # normality
        rows = []
        for c in s["conditions"]:
            for m in s["metrics"]:
                d = s["descriptive"][c["name"]][m]
                if d["n"] >= 3:
                    verdict = ("deterministic" if d["deterministic"] else
                               ("not normal" if d["shapiro_p"] is not None and d["shapiro_p"] < st.ALPHA else "no evidence against normality"))
                    rows.append([c["name"], m, d["n"], fmt(d["shapiro_w"], 4), fmt_p(d["shapiro_p"]), verdict])
        if rows:
            out.append("**Normality (Shapiro-Wilk, n >= 3).** A large p is not evidence of normality, especially at small n.\n")
            out.append(table(rows, ["condition", "metric", "n", "W", "p", "reading"]))
            out.append("")
        rows = []
        for c in s["comparisons"]:
            lv = c.get("levene")
            if lv is None:
                continue
            rows.append([c["variant"], c["metric"], fmt(lv["stat"], 4), fmt_p(lv["p"]),
                         DASH if lv["p"] is None else ("unequal" if lv["p"] < st.ALPHA else "no evidence of a difference")])
        if rows:
            out.append(f"**Equal variances (Brown-Forsythe: Levene's test around the median), each variant vs `{s['baseline']}`.** "
                       "Welch's t-test does not assume equal variances; this is reported for reading the effect sizes.\n")
            out.append(table(rows, ["variant", "metric", "F", "p", "variances"]))
            out.append("")
    notes = res.get("notes", [])
    if notes:
        out.append("**File notes** (problems found while reading; none stopped the analysis):\n")
        out.extend(f"- {n}" for n in notes)
        out.append("")
    figs = rel_figs.get("distributions", [])
    for s_name, rel in figs:
        out.append(figure(rel, f"Distributions ({s_name}): box per condition, every run as a point, the mean as a diamond."))
    for s_name, rel in rel_figs.get("violins", []):
        out.append(figure(rel, f"Violins ({s_name}): the shape of each condition's distribution (points where fewer than 2 distinct values)."))
    return "\n".join(out).strip()


def descriptive(res):
    out = []
    multi = len(res["stages"]) > 1
    for s in res["stages"]:
        out.append(_stage_title(s, multi))
        if not s["metrics"]:
            out.append("No metric was reported by a finished run.\n")
        for m in s["metrics"]:
            hb = direction(m)
            word = {True: "higher is better", False: "lower is better", None: "no direction"}[hb]
            out.append(f"**`{m}`** ({word})\n")
            rows = []
            for c in s["conditions"]:
                d = s["descriptive"][c["name"]][m]
                if d["n"] == 0:
                    rows.append([c["name"], 0] + [DASH] * 10 + ["no finished run reports it"])
                    continue
                note = "deterministic (zero variance)" if d["deterministic"] else ("one run: no spread" if d["n"] == 1 else "")
                rows.append([c["name"], d["n"], fmt(d["mean"]), fmt(d["std"], 3), fmt(d["sem"], 3),
                             fmt_ci(d["ci_low"], d["ci_high"], 5), fmt_ci(d["boot_low"], d["boot_high"], 5),
                             fmt(d["median"]), fmt(d["min"]), fmt(d["max"]),
                             f"{fmt(d['p25'])} / {fmt(d['p75'])} / {fmt(d['p95'])}", fmt(d["cv"], 3), note])
            out.append(table(rows, ["condition", "n", "mean", "SD", "SEM", "95% t-CI", "bootstrap 95% CI", "median",
                                    "min", "max", "p25 / p75 / p95", "CV", "note"]))
            out.append("")
            shared = _shared_note(s, m)
            if shared:
                out.append(shared + "\n")
    return "\n".join(out).strip()


def training(res, rel_figs):
    out = []
    multi = len(res["stages"]) > 1
    figs = {k: dict(v) for k, v in rel_figs.items()}
    for s in res["stages"]:
        out.append(_stage_title(s, multi))
        dyn = s["dynamics"]
        if not dyn["val"]:
            out.append("No finished run has validation curves (metrics.jsonl or log lines), so there is nothing to plot.\n")
        for key, cap in (("curves", "Training and validation loss: mean +- SD per condition, individual runs thin behind; each condition has its own line style (solid, dashed, dotted, dash-dot) so identical curves stay visible, and markers where a curve has few points."),
                         ("comparison", "Mean validation loss of every condition on one axis (right: last third of training)."),
                         ("gap", f"Gap of each variant's mean validation loss to `{s['baseline']}` at every validation step, with its 95% Welch CI (pointwise, not adjusted across steps).")):
            if s["name"] in figs.get(key, {}):
                out.append(figure(figs[key][s["name"]], cap))
        for v, g in dyn["gaps"].items():
            rows = [[fmt_int(st_), fmt_signed(x, 4), fmt_ci(lo, hi)] for st_, x, lo, hi in
                    zip(g["steps"], g["gap"], g["low"], g["high"])]
            if not rows:
                continue
            idx = sorted(set([0, len(rows) - 1] + [round(i * (len(rows) - 1) / 8) for i in range(9)]))
            out.append(f"Gap `{v}` - `{s['baseline']}` in validation loss (selected steps; every step below):\n")
            out.append(table([rows[i] for i in idx], ["step", "gap", "95% CI"]))
            out.append("")
            out.append(f"<details><summary>Gap at every validation step ({len(rows)} steps)</summary>\n")
            out.append(table(rows, ["step", "gap", "95% CI"]))
            out.append("\n</details>\n")
        ttt = dyn["time_to_target"]
        if ttt:
            out.append(f"**Time to target** (validation loss <= {fmt(dyn['target'])}, linear interpolation between validations; "
                       "means over the runs that reach it):\n")
            out.append(table([[c, f"{t['reached']}/{t['n']}", f"{fmt(t['step_mean'])} ± {fmt(t['step_sd'], 3)}" if t["step_mean"] is not None else "not reached",
                               f"{fmt(t['time_s_mean'])} ± {fmt(t['time_s_sd'], 3)}" if t["time_s_mean"] is not None else "not reached"]
                              for c, t in ttt.items()], ["condition", "runs reaching it", "step (mean ± SD)", "training seconds (mean ± SD)"]))
            out.append("")
        iso = dyn["iso_loss"]
        if iso:
            out.append(f"**Iso-loss speedup**: when does each variant's mean curve first reach the baseline's final mean "
                       f"validation loss, compared with the baseline's own mean curve?\n")
            rows = []
            for v, i in iso.items():
                rows.append([v, fmt(i["level"]), fmt_int(i["baseline_step"]), fmt_int(i["variant_step"]) if i["variant_step"] else "not reached",
                             f"{i['speedup_steps']:.3f}x" if i["speedup_steps"] else DASH,
                             fmt_secs(i["baseline_time_s"]), fmt_secs(i["variant_time_s"]) if i["variant_time_s"] else "not reached",
                             f"{i['speedup_time']:.3f}x" if i["speedup_time"] else DASH])
            out.append(table(rows, ["variant", "loss level", "baseline step", "variant step", "speedup (steps)",
                                    "baseline time", "variant time", "speedup (time)"]))
            out.append("")
        if not dyn["target_applies"]:
            out.append(f"Time to target and the speedrun criterion are not computed: no condition here runs a speedrun "
                       f"script (train_gpt*.py) at full scale (a --preset such as tiny changes the task) or comes from "
                       f"speedrun logs; pass --target to compute them.\n")
        sp = dyn["speedrun"]
        if sp:
            out.append(f"**Speedrun criterion**: final validation loss below {fmt(dyn['target'])} by a one-sample t-test "
                       "(alternative: less) with p < 0.01.\n")
            rows = []
            for c, r in sp.items():
                if r["deterministic"]:
                    meets = "yes (deterministic)" if r["mean"] < r["target"] else "no (deterministic)"
                elif r["p"] is None:
                    meets = "not testable (n < 2)"
                else:
                    meets = "yes" if r["p"] < 0.01 else "no"
                rows.append([c, r["n"], fmt(r["mean"]), fmt(r["t"], 4), fmt_p(r["p"]), meets])
            out.append(table(rows, ["condition", "n", "mean final val loss", "t", "p (one-sided)", "meets criterion"]))
            out.append("")
    return "\n".join(out).strip()


METHODS = """Each variant is compared with its stage's baseline on every metric, as `variant - baseline`.
The **primary test** is the paired t-test when every run of both conditions shares a seed with a run of
the other (the seeds control initialisation and data order), else Welch's t-test. Its p-value, and the
p-value of every equivalence test, enter one Holm-Bonferroni family over the whole report; a result is
called significant only when its **adjusted** p < {alpha:g}. Alongside, as checks that do not assume
normality: the Mann-Whitney U test, and the permutation test of the difference of means (exact - every
split enumerated - when there are at most {limit:,} splits, else {resamples:,} random splits; the smallest
p it can reach is shown). Effect sizes: Cohen's d and Hedges' g (small-sample corrected) with 95% CIs from
the noncentral t; the probability of improvement (a random variant run beats a random baseline run, ties
counted half) and the difference of means with 95% percentile CIs from a stratified bootstrap
({resamples:,} resamples within each condition, seed {seed}). Power is the post-hoc power of the primary
test at the observed effect (two-sample at |g|, paired at |d_z|) and alpha {alpha:g}, with the runs that would
give 80%. A significant primary result is checked against the distribution-free tests of its design.
Every "significant" below refers to the Holm-adjusted p."""


def comparisons(res):
    out = [METHODS.format(alpha=st.ALPHA, limit=st.EXACT_LIMIT, resamples=res["settings"]["resamples"],
                          seed=res["settings"]["seed"]), ""]
    multi = len(res["stages"]) > 1
    for s in res["stages"]:
        if not s["comparisons"]:
            continue
        out.append(_stage_title(s, multi))
        by_variant = {}
        for c in s["comparisons"]:
            by_variant.setdefault(c["variant"], []).append(c)
        for v, cs in by_variant.items():
            out.append(f"#### `{v}` vs `{s['baseline']}`\n")
            nodata = [c["metric"] for c in cs if c["verdict"] == "no data"]
            cs = [c for c in cs if c["verdict"] != "no data"]
            if nodata:
                out.append(f"No finished run of one side reports {', '.join(map(code, nodata))}.\n")
            if not cs:
                continue
            rows = []
            for c in cs:
                b, e = c.get("bootstrap") or {}, c.get("effect") or {}
                rows.append([c["metric"], f"{fmt(c['mean_b'])} (n={c['n_b']})", f"{fmt(c['mean_v'])} (n={c['n_v']})",
                             fmt_signed(c["diff"]), fmt_pct(c["diff_pct"]), _dir_word(c),
                             fmt_ci(b.get("diff_low"), b.get("diff_high")),
                             f"{fmt(e.get('g'), 3)} {fmt_ci(e.get('g_low'), e.get('g_high'), 3)}" if e.get("g") is not None else DASH,
                             f"{fmt(b.get('poi'), 3)} {fmt_ci(b.get('poi_low'), b.get('poi_high'), 3)}" if b.get("poi") is not None else DASH])
            out.append("Effects:\n")
            out.append(table(rows, ["metric", "baseline mean", "variant mean", "difference", "difference %", "direction",
                                    "95% CI (stratified bootstrap)", "Hedges' g [95% CI]", "P(improvement) [95% CI]"]))
            out.append("")
            rows = []
            for c in cs:
                w, mw, pm = c.get("welch") or {}, c.get("mann_whitney") or {}, c.get("permutation") or {}
                prim = c.get("primary") or {}
                perm = DASH
                if pm.get("p") is not None:
                    perm = f"{fmt_p(pm['p'])} ({pm['method']}, min {fmt_p(pm['min_p'])})"
                rows.append([c["metric"],
                             f"t={fmt(w.get('t'), 4)}, df={fmt(w.get('df'), 3)}, {p_is(w.get('p'))}" if w.get("p") is not None else DASH,
                             f"U={fmt_raw(mw.get('u'))}, {p_is(mw.get('p'))}" if mw.get("p") is not None else DASH,
                             perm, prim.get("test", DASH), fmt_p(prim.get("p")), fmt_p(prim.get("p_holm")), c["verdict"]])
            out.append("Tests (the verdict uses the Holm-adjusted p of the primary test):\n")
            out.append(table(rows, ["metric", "Welch", "Mann-Whitney", "permutation", "primary test", "raw p",
                                    "Holm p", "verdict"]))
            out.append("")
            prs = [c for c in cs if c.get("paired")]
            if prs:
                rows = []
                for c in prs:
                    p = c["paired"]
                    sf = f"{fmt_p(p['signflip_p'])} ({p['signflip_method']}, min {fmt_p(p['signflip_min_p'])})" if p["signflip_p"] is not None else DASH
                    rows.append([c["metric"], p["n"], fmt_signed(p["mean_diff"]),
                                 "deterministic" if p["deterministic"] else f"t={fmt(p['t'], 4)}, {p_is(p['p_t'])}",
                                 fmt_p(p["wilcoxon_p"]), sf, fmt_ci(p["boot_low"], p["boot_high"]), fmt(p["dz"], 3),
                                 fmt(p.get("power"), 3), fmt_runs(p.get("runs_needed"))])
                out.append(f"Paired by seed ({', '.join(map(str, prs[0]['paired_seeds']))}):\n")
                out.append(table(rows, ["metric", "pairs", "mean difference", "paired t", "Wilcoxon p", "sign-flip p",
                                        "paired bootstrap 95% CI", "d_z", "power", "pairs for 80% power"]))
                out.append("")
            rows = [[c["metric"], c["power"]["design"], f"{c['power']['effect_name']} = {fmt(c['power']['effect'], 3)}",
                     fmt(c["power"]["achieved"], 3),
                     fmt_runs(c["power"]["runs_needed"])]
                    for c in cs if c.get("power") and c["power"]["effect"] is not None]
            if rows:
                out.append("Power of the primary test (post-hoc, at the observed effect; it says how informative this design "
                           "was, not whether the effect is real). Runs are per condition (pairs for a paired design):\n")
                out.append(table(rows, ["metric", "design", "effect used", "power achieved", "runs for 80% power"]))
                out.append("")
            ts = [c for c in cs if c.get("tost")]
            if ts:
                rows = []
                for c in ts:
                    t = c["tost"]
                    rows.append([c["metric"], f"±{fmt(t['margin'], 4)} ({t['margin_spec']})", fmt_signed(c["diff"]),
                                 fmt_ci(t["ci90_low"], t["ci90_high"]), fmt_p(t["p_lower"]), fmt_p(t["p_upper"]),
                                 fmt_p(t["p"]), fmt_p(t.get("p_holm")),
                                 ("yes (deterministic)" if t["within"] else "no (deterministic)") if t["deterministic"]
                                 else ("yes" if t.get("significant") else "not shown")])
                out.append("Equivalence (TOST, two one-sided Welch tests):\n")
                out.append(table(rows, ["metric", "margin", "difference", "90% CI", "p (> -margin)", "p (< +margin)",
                                        "p", "Holm p", "equivalent"]))
                out.append("")
    if res["family"]:
        out.append(f"**The multiple-comparison family** ({len(res['family'])} tests, Holm-Bonferroni):\n")
        out.append(table([[f["stage"], f["variant"], f["metric"], f["test"], fmt_p(f["p"]), fmt_p(f["p_holm"]),
                           "yes" if f["significant"] else "no"] for f in res["family"]],
                         ["stage", "variant", "metric", "test", "raw p", "Holm p", "significant"]))
    else:
        out.append("No test could be run (no stage had a baseline and a variant with at least two finished runs each).")
    return "\n".join(out).strip()


def sweeps(res, rel_figs):
    """§6: every sweep (a plan's grid and zip groups, runner sweeps, inferred ones) and a plan's single
    conditions; analysis/plans.py."""
    from . import plans
    return plans.markdown(res, rel_figs)


def interpretation(res):
    out = []
    for s in res["stages"]:
        by_variant = {}
        for c in s["comparisons"]:
            by_variant.setdefault(c["variant"], []).append(c)
        for v, cs in by_variant.items():
            out.append(f"**`{v}` vs `{s['baseline']}`** (stage `{s['name']}`):\n")
            better = [c["metric"] for c in cs if c["verdict"] == "significantly better" or (c["verdict"] == "deterministic difference" and c["better"])]
            worse = [c["metric"] for c in cs if c["verdict"] == "significantly worse" or (c["verdict"] == "deterministic difference" and c["better"] is False)]
            for c in cs:
                out.append("- " + _sentence(c))
            if better and worse:
                out.append(f"- Trade-off: better on {', '.join(map(code, better))}, worse on {', '.join(map(code, worse))}.")
            elif not better and not worse:
                out.append("- No metric shows a difference that survives the correction; this is not evidence that there is none "
                           "(see the CIs and the power above).")
            out.append("")
    if not out:
        return "No comparison could be made, so there is nothing to interpret."
    return "\n".join(out).strip()


def _sentence(c):
    m, v = code(c["metric"]), c["verdict"]
    d = f"{fmt_signed(c['diff'])} ({fmt_pct(c['diff_pct'])})"
    lo, hi, how = _main_ci(c)
    ci = f"{fmt_ci(lo, hi)} ({how})"
    prim = c.get("primary") or {}
    if v == "no data":
        return f"{m}: one of the conditions has no finished run with this metric."
    if v == "not testable (n < 2)":
        return (f"{m}: difference {d} from {c['n_v']} vs {c['n_b']} run(s); with a single run in a condition there is no "
                "estimate of run-to-run variation, so no test is possible.")
    if v == "identical":
        return f"{m}: identical in every run of both conditions."
    if v == "deterministic difference":
        return (f"{m}: every run of each condition gave the same value, so the difference {d} is exact for these runs "
                "(no test applies; it may not hold on other hardware or software).")
    if v == "equivalent":
        t = c["tost"]
        how = "deterministically" if t["deterministic"] else f"TOST Holm-adjusted {p_is(t.get('p_holm'))}"
        return f"{m}: equivalent within ±{fmt(t['margin'], 4)} ({t['margin_spec']}) of the baseline ({how}); difference {d}."
    s = ""
    if v.startswith("significant"):
        s = (f"{m}: {v} - difference {d}, 95% CI {ci}, {prim['test']} Holm-adjusted {p_is(prim.get('p_holm'))} "
             f"({p_is(prim.get('p'), 'raw')}).")
    else:
        s = (f"{m}: difference {d} is not significant after correction ({prim.get('test', 'test')} Holm-adjusted "
             f"{p_is(prim.get('p_holm'))}, {p_is(prim.get('p'), 'raw')}); ")
        if lo is None:
            s += "no confidence interval is available."
        elif lo <= 0 <= hi:
            s += (f"the 95% CI {ci} is compatible with no difference and with differences up to "
                  f"{fmt(max(abs(lo), abs(hi)), 3)} in size.")
        else:
            s += (f"the unadjusted 95% CI {ci} excludes zero, but the family-wise correction does not let that count "
                  "as a finding.")
        pw = c.get("power") or {}
        if v.startswith("inconclusive") and pw.get("achieved") is not None:
            need = pw.get("runs_needed")
            unit = "pairs of runs" if pw.get("design") == "paired" else "runs per condition"
            s += (f" Inconclusive: the design had {100 * pw['achieved']:.0f}% power for an effect of this size"
                  + (f"; about {fmt_runs(need)} {unit} would give 80%." if need else "."))
        tost = c.get("tost")
        if tost and tost.get("p") is not None and not tost.get("significant"):
            s += f" Equivalence within ±{tost['margin_spec']} is not shown either (TOST Holm {p_is(tost.get('p_holm'))})."
    for cv in c.get("caveats", []):
        s += f" Caveat: {cv}."
    return s


def limitations(res):
    out = []
    alpha = st.ALPHA
    for s in res["stages"]:
        conds = s["conditions"]
        pre = f"[{s['name']}] " if len(res["stages"]) > 1 else ""
        small = [c for c in conds if 0 < c["finished"] < 5]
        if small:
            pm = [c.get("permutation", {}).get("min_p") for c in s["comparisons"] if c.get("permutation")]
            pm = [x for x in pm if x is not None]
            out.append(pre + "Small samples: " + ", ".join(f"`{c['name']}` n = {c['finished']}" for c in small) + ". Normality "
                       "cannot be checked meaningfully, one unusual run moves the mean, and standardized effect sizes are "
                       "inflated when the spread happens to be small"
                       + (f"; the exact permutation test cannot go below {p_is(max(pm))} for the smallest design here." if pm else "."))
        one = [c["name"] for c in conds if c["finished"] == 1]
        if one:
            out.append(pre + f"One finished run only: {', '.join(map(code, one))} - descriptive numbers only, no test, no CI.")
        none_ = [c["name"] for c in conds if c["finished"] == 0 and c["runs"] > 0]
        if none_:
            out.append(pre + f"No finished run at all: {', '.join(map(code, none_))} - left out of every statistic.")
        zero = sorted({(cn, m) for cn, d in s["descriptive"].items() for m, x in d.items() if x["deterministic"]})
        if zero:
            out.append(pre + "Zero variance (identical value in every run): " + ", ".join(f"`{m}` in `{cn}`" for cn, m in zero)
                       + ". Tests and standardized effects are undefined where both sides are constant; a constant on one "
                       "side only makes the t-test rely on the other side's spread alone.")
        bad = [r for r in s["runs"] if r["outcome"] != "finished"]
        if bad:
            rates = {c["name"]: c["finished"] / c["runs"] for c in conds if c["runs"]}
            msg = pre + f"{len(bad)} run(s) failed or did not finish and were excluded"
            if len(set(round(x, 6) for x in rates.values())) > 1:
                msg += (" - and success rates differ between conditions (" + ", ".join(f"`{k}` {100 * v:.0f}%" for k, v in rates.items())
                        + "), so the finished runs of a less stable condition may be a favourable selection")
            out.append(msg + ".")
        if any(c["testable"] and not c["deterministic"] and min(c["n_b"], c["n_v"]) < 10 for c in s["comparisons"]):
            out.append(pre + "Bootstrap percentile CIs (effects table, probability of improvement) from fewer than 10 runs "
                       "per condition are too narrow: a resample cannot vary more than the few runs seen. The text "
                       "quotes the t-based CI of the primary test instead.")
        uneq = sorted({(c["variant"], c["n_b"], c["n_v"]) for c in s["comparisons"] if c["n_b"] != c["n_v"] and c["testable"]})
        if uneq:
            out.append(pre + "Unequal n: " + ", ".join(f"`{v}` {nv} vs baseline {nb}" for v, nb, nv in uneq)
                       + " (Welch's test allows it; power is limited by the smaller group).")
        nonnorm = sorted({(cn, m) for cn, d in s["descriptive"].items() for m, x in d.items()
                          if x["shapiro_p"] is not None and x["shapiro_p"] < alpha})
        if nonnorm:
            out.append(pre + "Shapiro-Wilk rejects normality for " + ", ".join(f"`{m}` in `{cn}`" for cn, m in nonnorm)
                       + "; for those, trust the Mann-Whitney and permutation tests over the t-test.")
        unequal_var = sorted({(c["variant"], c["metric"]) for c in s["comparisons"]
                              if (c.get("levene") or {}).get("p") is not None and c["levene"]["p"] < alpha})
        if unequal_var:
            out.append(pre + "Unequal variances (Brown-Forsythe p < 0.05) for " + ", ".join(f"`{m}` ({v})" for v, m in unequal_var)
                       + "; Welch's test handles this, Cohen's d (pooled SD) describes it less well.")
        miss = [(c, m) for c, d in s["missing"].items() for m in d]
        if miss:
            out.append(pre + "Some metrics are missing from some finished runs: " + ", ".join(f"`{m}` in `{c}`" for c, m in miss) + ".")
        partial = sorted({c["variant"] for c in s["comparisons"] if c.get("paired_seeds") and not c.get("fully_paired")})
        unpaired = sorted({c["variant"] for c in s["comparisons"] if c["testable"] and not c.get("paired_seeds")})
        if partial:
            out.append(pre + f"Seeds only partly shared with the baseline for {', '.join(map(code, partial))}: the primary test is "
                       "unpaired (Welch); the paired tests use the shared seeds only.")
        if unpaired:
            out.append(pre + f"No seed shared with the baseline for {', '.join(map(code, unpaired))}: only unpaired tests.")
        for key, label in (("gpu_name", "GPU"), ("torch", "torch version"), ("git_commit", "git commit"), ("gpus", "GPU count"), ("device", "device")):
            vals = {str(v) for c in conds for v in c["env"].get(key, [])}
            if len(vals) > 1:
                out.append(pre + f"The {label} differs between runs ({', '.join(sorted(vals))}): a possible confound for time and memory.")
        dirty = [c["name"] for c in conds if True in c["env"].get("git_dirty", []) or c.get("git_dirty") is True]
        if dirty:
            out.append(pre + f"Uncommitted changes (git dirty) when running {', '.join(map(code, dirty))}: the code is not fully identified by its commit.")
        logs = [c["name"] for c in conds if c["source"] == "log"]
        if logs:
            out.append(pre + f"{', '.join(map(code, logs))} come from plain log files: no recorded seed, configuration or environment; "
                       "metrics are the last validation line's.")
        if s["dynamics"]["gaps"]:
            out.append(pre + "The gap CIs over training are pointwise (one per validation step, not adjusted across steps); "
                       "time to target interpolates linearly between validations.")
    if any(c.get("power") for s in res["stages"] for c in s["comparisons"]):
        out.append("Post-hoc power is computed at the observed effect, which is itself noisy; the 'runs needed' figures are rough guides for planning.")
    if res["family"]:
        out.append(f"The Holm correction covers {len(res['family'])} tests; adding metrics or variants makes each one harder to pass.")
    if not out:
        return "No limitation was detected by the rules in docs/analyze.md."
    return "\n".join(f"- {x}" for x in out)


def runs_appendix(res):
    """Every run with its final numbers, straight from its summary.json (or log file)."""
    out = []
    for s in res["stages"]:
        mets = s["metrics"][:8]
        rows = []
        for r in s["runs"]:
            steps = DASH if r["steps_completed"] is None else (
                f"{r['steps_completed']}" + (f"/{r['total_steps']}" if r["total_steps"] else ""))
            rc = r.get("cost")
            cost = DASH if not rc else (f"{rc['device_hours']:.3g} {'GPU' if rc['device'] == 'gpu' else 'CPU'}-h"
                                        + (" (est.)" if rc["source"] != "summary.json cost" else "")
                                        + (f", node shared by {rc['runs_sharing_node']}" if (rc["runs_sharing_node"] or 1) > 1 else ""))
            rows.append([r["condition"], r["name"], DASH if r["seed"] is None else r["seed"], r["status"], steps]
                        + [fmt_raw(r["metrics"].get(m)) for m in mets] + [cost])
        if not rows:
            continue
        body = table(rows, ["condition", "run", "seed", "status", "steps"] + mets + ["cost"])
        title = f"Stage `{s['name']}`: {len(rows)} run(s)"
        if len(rows) > 30:
            out.append(f"<details><summary>{title}</summary>\n\n{body}\n\n</details>\n")
        else:
            out.append(f"{title}:\n\n{body}\n")
    return "\n".join(out).strip() or "No runs."


def reproducibility(res, files):
    set_ = res["settings"]
    out = [f"- Command: `{set_['command']}`",
           f"- Logs read: `{set_['logs']}`; bootstrap/permutation resamples {set_['resamples']:,}, seed {set_['seed']} "
           "(same inputs and seed give the same numbers).",
           f"- Software: {', '.join(f'{k} {v}' for k, v in set_['versions'].items())}.",
           f"- Outputs: {', '.join(code(f) for f in files)}."]
    for s in res["stages"]:
        for c in s["conditions"]:
            commit = c["git_commit"] or ", ".join(str(x) for x in c["env"].get("git_commit", []))
            out.append(f"- `{s['name']}/{c['name']}`: `{c['path']}`" + (f", git commit `{commit}`" if commit else "")
                       + (f", CUDA_VISIBLE_DEVICES={c['cuda_visible_devices']}" if c.get("cuda_visible_devices") is not None else "")
                       + (f", started {c['started']}" if c.get("started") else ""))
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# the first screen: decisions, acceptance rules, the plan, the cost
# ---------------------------------------------------------------------------------------------

_TIME_METRICS = {"train_time_s", "wall_time_s", "tokens_per_s"}


def _effect_ci(c):
    lo, hi, how = _main_ci(c)
    if c["deterministic"]:
        return f"{fmt_signed(c['diff'])} (exact: zero variance)"
    if lo is None:
        return f"{fmt_signed(c['diff'])}"
    return f"{fmt_signed(c['diff'])} [95% CI {fmt(lo, 4)}, {fmt(hi, 4)}] ({how})"


def _decision_line(c):
    prim, t = c.get("primary") or {}, c.get("tost") or {}
    bits = [f"`{c['variant']}` vs `{c['baseline']}`, `{c['metric']}`: **{c['decision']}**", _effect_ci(c)]
    if c["decision"] == "equivalent" and t:
        bits.append(f"within ±{fmt(t['margin'], 3)}" + (f", TOST {p_is(t.get('p_holm'), 'Holm p')}" if t.get("p_holm") is not None else ""))
    elif prim.get("p_holm") is not None:
        bits.append(f"{prim['test']}, {p_is(prim['p_holm'], 'Holm p')}")
    elif not c["testable"]:
        bits.append(f"n = {c['n_v']} vs {c['n_b']}: no test")
    return "- " + "; ".join(bits)


def _hours(h, unit):
    if h is None:
        return None
    return f"{h:,.2f} {unit}" if h < 100 else f"{h:,.0f} {unit}"


def _usd(x):
    return None if x is None else (f"${x:,.2f}" if x < 100 else f"${x:,.0f}")


def _plan_cell(it, k):
    n = it.get("n" + k)
    if n is None:
        return it.get("note") or DASH
    more = it.get("more" + k)
    extra = [f"+{more:,} run{'s' if more != 1 else ''}" if more else "enough already"]
    h = _hours(it.get("hours" + k), it.get("hour_unit")) if more else None
    if h:
        extra.append(h)
    u = _usd(it.get("usd" + k)) if more else None
    if u:
        extra.append(u)
    return f"{n:,} {it['unit']} ({', '.join(extra)})"


def decisions(res):
    """The first screen: one line per comparison, the acceptance rules, what to run next, the cost."""
    out = []
    rate = res["settings"].get("usd_per_gpu_hour")
    for s in res["stages"]:
        fin = sum(1 for r in s["runs"] if r["outcome"] == "finished")
        out.append(f"**Stage `{s['name']}`** ({len(s['conditions'])} condition(s), {fin}/{len(s['runs'])} runs finished"
                   + (f", baseline `{s['baseline']}`" if s["baseline"] else ", no baseline") + ")\n")
        if s["name"] in (res.get("sequential") or {}):
            out.append(_seq_line(s["name"], res["sequential"][s["name"]]))
        cs = [c for c in s["comparisons"] if c["verdict"] != "no data"]
        shown = [c for c in cs if c["metric"] == "val_loss" or c["decision"] != "inconclusive"]
        rest = {}
        for c in cs:
            if c not in shown:
                rest.setdefault(f"`{c['variant']}` vs `{c['baseline']}`", []).append(code(c["metric"]))
        out.extend(_decision_line(c) for c in shown)
        for k, ms in rest.items():
            out.append(f"- {k}: inconclusive on {', '.join(ms)}")
        if not cs:
            out.append("- No comparison (needs a baseline and a variant with finished runs).")
        if s["rules"]:
            out.append("\nAcceptance rules (docs/analyze.md):\n")
            for r in s["rules"]:
                out.append(f"- `{r['subject']}` {r['line']}")
        if s["plan"]:
            out.append("\nWhat to run next (smallest n whose chance of success reaches 80% / 90%, if the pilot's mean and SD are the truth):\n")
            rows = [[f"`{it['subject']}`", it["question"], f"{it['have']} {it['unit']}", _plan_cell(it, "80"), _plan_cell(it, "90")]
                    for it in s["plan"]]
            out.append(table(rows, ["subject", "to pass", "have", "80%", "90%"]))
        cs_ = s["cost"]
        if cs_ and cs_["runs_with_cost"]:
            out.append("\n" + _cost_sentence(s, rate, res["settings"].get("usd_rate_source")))
        out.append("")
    if not out:
        return "Nothing could be analysed."
    fam = res["family"]
    out.append(f"Decisions use Holm-adjusted p-values over the report's {len(fam)} test(s) (alpha {st.ALPHA:g}): better/worse "
               "= significant difference; equivalent = the TOST shows the difference inside its margin "
               + ("(val_loss: ±" + res["settings"]["equivalence"]["val_loss"] + " by default)" if res["settings"].get("equivalence_default_val_loss") else "")
               + "; inconclusive = neither. Every table is below.")
    return "\n".join(out).strip()


def _cost_sentence(s, rate, source):
    c = s["cost"]
    parts = []
    if c["gpu_hours"]:
        parts.append(_hours(c["gpu_hours"], "GPU-hours"))
    if c["cpu_hours"]:
        parts.append(_hours(c["cpu_hours"], "CPU-hours"))
    txt = f"Cost of stage `{s['name']}`: {' + '.join(parts)} over {c['runs_with_cost']} run(s)"
    if c["usd"] is not None:
        txt += f" = {_usd(c['usd'])} at ${rate:g} per GPU-hour ({source})"
    elif c["gpu_hours"]:
        txt += " (no dollar rate known: give --usd-per-gpu-hour or set USD_PER_GPU_HOUR)"
    if c["estimated"]:
        txt += f"; {c['estimated']} run(s) without a recorded cost estimated as wall_time_s x devices"
    return txt + "."


def cost_section(res):
    rate, source = res["settings"].get("usd_per_gpu_hour"), res["settings"].get("usd_rate_source")
    out = [f"Dollar rate: ${rate:g} per GPU-hour ({source}); CPU-hours are not priced." if rate is not None else
           "Dollar rate: none given (--usd-per-gpu-hour, USD_PER_GPU_HOUR or experiment.json usd_per_gpu_hour), so no dollars."]
    out.append("")
    any_rows = False
    for s in res["stages"]:
        rows = []
        for c in s["conditions"]:
            cc = c["cost"]
            if not cc or not cc["runs_with_cost"]:
                continue
            per = []
            if cc["gpu_hours_per_run"] is not None:
                per.append(_hours(cc["gpu_hours_per_run"], "GPU-h"))
            if cc["cpu_hours_per_run"] is not None:
                per.append(_hours(cc["cpu_hours_per_run"], "CPU-h"))
            rows.append([c["name"], f"{cc['runs_with_cost']}/{cc['runs']}", ", ".join(per) or DASH,
                         fmt(cc["gpu_hours"], 4) if cc["gpu_hours"] else DASH, fmt(cc["cpu_hours"], 4) if cc["cpu_hours"] else DASH,
                         _usd(cc["usd"]) or DASH,
                         (f"{len(cc['shared_runs'])} run(s), up to {cc['max_runs_sharing_node']} at once" if cc["shared_runs"] else "no")
                         + (f"; {cc['estimated']} estimated" if cc["estimated"] else "")])
        if not rows:
            continue
        any_rows = True
        out.append(_stage_title(s, len(res["stages"]) > 1))
        sc = s["cost"]
        rows.append(["**stage total**", f"{sc['runs_with_cost']}/{sc['runs']}", DASH, fmt(sc["gpu_hours"], 4) if sc["gpu_hours"] else DASH,
                     fmt(sc["cpu_hours"], 4) if sc["cpu_hours"] else DASH, _usd(sc["usd"]) or DASH, ""])
        out.append(table(rows, ["condition", "runs with cost", "per run", "GPU-hours", "CPU-hours", "dollars", "node shared"]))
        out.append("")
    if not any_rows:
        out.append("No run recorded its cost (summary.json `cost`, added by the runner) or a wall time to estimate it from.")
    else:
        out.append("Per run: the runner's summary.json `cost` (devices x wall seconds); runs without it are estimated as "
                   "wall_time_s x the devices in their env. Every run's cost is in the appendix.")
    return "\n".join(out).strip()


def _shared_note(s, metric):
    """Next to a time metric: which conditions' runs shared their node (packed runs)."""
    if metric not in _TIME_METRICS:
        return None
    shared = [(c["name"], c["cost"]) for c in s["conditions"] if c.get("cost") and c["cost"]["shared_runs"]]
    if not shared:
        return None
    return ("Packed runs: " + "; ".join(f"`{n}` {len(cc['shared_runs'])} run(s) shared the node with other runs "
                                         f"(up to {cc['max_runs_sharing_node']} at once)" for n, cc in shared)
            + f" - their `{metric}` includes contention for the node; use --no-pack runs for time comparisons.")


# the escaping of strings from the logs: every string of a record except the fields below (text
# this package writes itself, from numbers) is escaped for markdown and HTML before rendering
_OWN_TEXT = {"verdict", "decision", "caveats", "line", "test", "ci_method", "method", "signflip_method",
             "wilcoxon_method", "note", "assumption", "question", "unit", "hour_unit", "effect_name", "design",
             "poi_kind", "margin_spec", "rule", "center", "outcome", "source"}


def _escaped(obj, own=False):
    if isinstance(obj, st.Record):
        return type(obj)(**{f.name: _escaped(getattr(obj, f.name), f.name in _OWN_TEXT)
                            for f in dataclasses.fields(obj)})
    if isinstance(obj, dict):
        return {(md(k) if isinstance(k, str) else k): _escaped(v, own or k in _OWN_TEXT) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_escaped(v, own) for v in obj]
    if isinstance(obj, str):
        return obj if own else md(obj)
    return obj


# ---------------------------------------------------------------------------------------------
# sequential stages (<stage>/sequential.json: ./run_experiments.sh STAGE --sequential)
# ---------------------------------------------------------------------------------------------

SEQUENTIAL_FILE = "sequential.json"


def sequential_designs(res):
    """{stage: {"stage_dir", "decision" (analysis.sequential.Decision) or None, "error"}} for every
    stage whose directory holds sequential.json; the decision is python analyze.py decide's."""
    out = {}
    for s in res["stages"]:
        dirs = {os.path.dirname(c["path"]) for c in s["conditions"] if c["source"] == "rundir"}
        if len(dirs) != 1:
            continue
        stage_dir = dirs.pop()
        if not os.path.isfile(os.path.join(stage_dir, SEQUENTIAL_FILE)):
            continue
        from .decide import evaluate   # numpy + scipy.special, only for sequential stages
        from .sequential import DesignError
        try:
            dec, _ = evaluate(os.path.dirname(stage_dir), os.path.basename(stage_dir))
            out[s["name"]] = {"stage_dir": stage_dir, "decision": dec, "error": None}
        except DesignError as e:
            out[s["name"]] = {"stage_dir": stage_dir, "decision": None, "error": str(e)}
    return out


def sequential_json(res):
    """The sequential decisions for results.json (the same numbers as the report's section)."""
    seq = res.get("sequential")
    seq = sequential_designs(res) if seq is None else seq
    return {k: {"stage_dir": v["stage_dir"], "error": v["error"],
                "decision": v["decision"].to_json() if v["decision"] is not None else None} for k, v in seq.items()}


def _seq_pair(dec):
    d = dec.design
    if d.question == "acceptance":
        return f"the mean `{md(d.metric)}` of `{md(d.variant)}`"
    return f"`{md(d.variant)}` vs `{md(d.baseline)}` on `{md(d.metric)}`"


def _seq_line(name, entry):
    """The Decisions screen's line for a sequential stage."""
    if entry["decision"] is None:
        return f"- Sequential design: not evaluated ({md(entry['error'])})."
    dec = entry["decision"]
    line = f"- Sequential design ({_seq_pair(dec)}): **{dec.verdict}** at look {dec.look} of {dec.planned_looks}"
    if dec.stopped:
        line += f"; adjusted p = {fmt_p(dec.p_adjusted)}"
        if dec.ci is not None:
            line += f", {dec.ci_level:.0%} CI {fmt_ci(*dec.ci)}"
        line += ". Quote these, not the naive p-value and CI of this comparison below (§5, sequential designs)."
    else:
        line += f"; the stage is not decided yet (next look at {dec.next_look_n} runs per condition)."
    return line


def sequential(res):
    """§5's sequential part: per sequential stage, render_markdown's design, looks and adjusted result."""
    seq = res.get("sequential") or {}
    if not seq:
        return ""
    from .sequential import render_markdown
    out = ["### Sequential designs", "",
           "These stages were run as group-sequential designs (docs/sequential.md): the design was fixed in "
           "`sequential.json` before the first run and the stage was looked at after every batch. The p-value and CI "
           "to quote are the ones adjusted for the looks (stage-wise ordering) below; the naive p-values and CIs of "
           "the same comparison in the tables above ignore the repeated looks and are not the ones to quote.", ""]
    for name, entry in seq.items():
        if entry["decision"] is None:
            out += [f"#### Stage `{md(name)}`", "", f"Not evaluated: {md(entry['error'])}", ""]
            continue
        out.append(render_markdown(entry["decision"], heading=f"#### Stage `{md(name)}`"))
    return "\n".join(out).strip()


def render(template, res, rel_figs, files, date):
    if res.get("sequential") is None:
        res = dict(res, sequential=sequential_designs(res))
    res = dict(res, stages=_escaped(res["stages"]), notes=_escaped(res.get("notes", [])),
               family=_escaped(res.get("family", [])), settings=_escaped(res["settings"]))
    rel_figs = _escaped(rel_figs)
    files = [md(f) for f in files]
    stage_names = [s["name"] for s in res["stages"]]
    values = dict(
        title="Experiment report: " + ", ".join(stage_names) if stage_names else "Experiment report",
        date=date, command=res["settings"]["command"], logs=res["settings"]["logs"],
        executive_summary=executive_summary(res), design=design(res), data_quality=data_quality(res, rel_figs),
        descriptive=descriptive(res), training=training(res, rel_figs), methods="", comparisons=comparisons(res),
        sweeps=sweeps(res, rel_figs), interpretation=interpretation(res), limitations=limitations(res),
        reproducibility=reproducibility(res, files), runs=runs_appendix(res), decisions=decisions(res),
        cost=cost_section(res), sequential=sequential(res))
    unknown = []

    def sub(m):
        key = m.group(1)
        if key in values:
            return values[key]
        unknown.append(key)
        return f"*(unknown placeholder `{key}` in the template)*"
    text = PLACEHOLDER.sub(sub, template)
    return text.rstrip() + "\n", unknown
