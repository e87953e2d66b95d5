"""Sweeps and plans in analyze.py: one code path for every kind of sweep a stage can hold.

Where a stage's sweeps come from, first match wins:
  plan.json   <logs>/<plan>/plan.json, written by `./run_experiments.sh plan FILE` (docs/plans.md): each
              group of conditions expanded from a grid or zip, with the flags each condition sweeps;
  sweep.json  <logs>/sweep_<param>/sweep.json, written by `./run_experiments.sh sweep`: one flag;
  inferred    conditions whose recorded hyperparameters differ in exactly one key (compute.find_sweeps).

Each becomes a group: axes (a grid flag is an axis of its own; a zip's paired flags are one axis), a
row per condition (value, loss, perplexity, runtime, device-hours, state), a table per axis (a block
per setting of the other axes), the reading of each block (the best value; where some values
diverged, the stability threshold between the last stable and the first diverged value) and, for a
two-flag grid, a heat map. A plan's single conditions (ablations) get one table against its baseline.
"""
import json
import math
import os

import numpy as np

PLAN_FILE = "plan.json"
SWEEP_FILE = "sweep.json"


# ---------------------------------------------------------------------------------------------
# the records the runner wrote next to the conditions
# ---------------------------------------------------------------------------------------------

def _stage_file(conds, name):
    """The JSON object in the stage directory of these run-directory conditions, or None."""
    for c in conds:
        if c.source != "rundir" or not c.path:
            continue
        try:
            with open(os.path.join(os.path.dirname(os.path.abspath(c.path)), name), encoding="utf-8") as f:
                obj = json.load(f)
        except (OSError, ValueError, UnicodeDecodeError):
            return None
        return obj if isinstance(obj, dict) else None
    return None


def plan_record(conds):
    """plan.json of the stage, when it is one this module can read (schema 1, groups and conditions)."""
    rec = _stage_file(conds, PLAN_FILE)
    if not rec or rec.get("schema") != 1 or not isinstance(rec.get("groups"), list) \
            or not isinstance(rec.get("conditions"), dict):
        return None
    return rec


def recorded_baseline(conds, names):
    """(baseline, where it is named) from plan.json or sweep.json, when it is one of the conditions."""
    for fname in (PLAN_FILE, SWEEP_FILE):
        rec = _stage_file(conds, fname)
        b = rec.get("baseline") if rec else None
        if isinstance(b, str) and b in names:
            return b, fname
    return None, None


def primary_metric(conds):
    rec = plan_record(conds)
    m = rec.get("primary_metric") if rec else None
    return m if isinstance(m, str) else None


def groups_of(conds, configs, inferred):
    """[{name, source, kind, axes, members: {condition: {flag: value}}, fixed}] for one stage."""
    present = {c.name for c in conds}
    rec = plan_record(conds)
    if rec is not None:
        out = []
        for g in rec["groups"]:
            if not isinstance(g, dict) or not g.get("axes") or not isinstance(g.get("conditions"), list):
                continue
            members = {n: rec["conditions"].get(n, {}).get("swept", {}) for n in g["conditions"] if n in present}
            if members:
                out.append(dict(name=g.get("name"), source="plan", kind=g.get("kind"),
                                axes=[list(a) for a in g["axes"]], members=members, fixed=g.get("flags") or {}))
        return out
    sweep = _stage_file(conds, SWEEP_FILE)
    if sweep and isinstance(sweep.get("param"), str):
        p = sweep["param"]
        members = {n: {p: configs[n][p]} for n in sorted(present) if p in configs.get(n, {})}
        if members:
            return [dict(name=f"sweep_{p}", source="sweep", kind="grid", axes=[[p]], members=members, fixed={})]
    return [dict(name=param, source="inferred", kind="grid", axes=[[param]],
                 members={n: {param: configs[n][param]} for n in members}, fixed=fixed)
            for param, fixed, members in inferred]


def singles(conds):
    """A plan's conditions that are no grid or zip (its ablations and its baseline), in plan order."""
    rec = plan_record(conds)
    if rec is None:
        return None
    present = {c.name for c in conds}
    out = []
    for g in rec["groups"]:
        if isinstance(g, dict) and not g.get("axes"):
            out += [n for n in g.get("conditions", []) if n in present]
    return out


# ---------------------------------------------------------------------------------------------
# rows, tables, readings, heat maps
# ---------------------------------------------------------------------------------------------

def sort_key(v):
    if isinstance(v, bool):
        return (1, str(v))
    if isinstance(v, (int, float)):
        return (0, float(v))
    return (1, str(v))


def value_text(v):
    """A swept value as the runner wrote it into the condition's name (runner/plans.py)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def condition_row(cond, summary, descriptive, metric, cost):
    """One condition: runs by outcome, the metric's mean and SD, perplexity, runtime, device-hours."""
    d = descriptive.get(metric) if metric else None
    fin = cond.finished_runs
    ppl = [r.metrics.get("val_ppl", math.exp(r.metrics["val_loss"]) if r.metrics.get("val_loss", 1e9) < 700 else None)
           for r in fin]
    ppl = [p for p in ppl if p is not None]
    rt = [r.metrics.get("train_time_s", r.metrics.get("wall_time_s")) for r in fin]
    rt = [x for x in rt if x is not None]
    oc = summary.outcomes
    hours, unit = None, None
    if cost is not None and cost.gpu_hours:
        hours, unit = cost.gpu_hours, "GPU-hours"
    elif cost is not None and cost.cpu_hours:
        hours, unit = cost.cpu_hours, "CPU-hours"
    return dict(condition=cond.name, runs=summary.runs, finished=oc.get("finished", 0), diverged=oc.get("diverged", 0),
                crashed=oc.get("crashed", 0),
                other=summary.runs - sum(oc.get(k, 0) for k in ("finished", "diverged", "crashed")),
                metric_mean=d.mean if d and d.n else None, metric_sd=d.std if d and d.n else None,
                values=[r.metrics[metric] for r in fin if metric in r.metrics] if metric else [],
                val_ppl=float(np.mean(ppl)) if ppl else None, runtime_s=float(np.mean(rt)) if rt else None,
                hours=hours, hour_unit=unit,
                reasons=sorted({r.reason for r in cond.runs if not r.finished and r.reason}))


def state_of(row):
    """stable (finished, none diverged), diverged (a run diverged), or None (crashed only / no run)."""
    if row["diverged"]:
        return "diverged"
    if row["finished"]:
        return "stable"
    return None


def _numeric(values):
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def reading(rows, axis, metric, higher_better):
    """The automatic reading of one block (rows ordered along the axis): best value and stability."""
    label = lambda r: ", ".join(f"{k}={value_text(r['swept'][k])}" for k in axis) if len(axis) > 1 \
        else value_text(r["swept"][axis[0]])
    out = dict(best=None, best_metric=None, threshold=None, stable=[], diverged=[])
    done = [r for r in rows if r["metric_mean"] is not None and math.isfinite(r["metric_mean"])]
    if done and higher_better is not None:
        best = (max if higher_better else min)(done, key=lambda r: r["metric_mean"])
        out["best"], out["best_metric"], out["best_condition"] = label(best), best["metric_mean"], best["condition"]
    stable = [r for r in rows if state_of(r) == "stable"]
    div = [r for r in rows if state_of(r) == "diverged"]
    out["stable"], out["diverged"] = [label(r) for r in stable], [label(r) for r in div]
    ordered = _numeric([r["swept"][axis[0]] for r in rows])
    parts = []
    if out["best"] is not None:
        parts.append(f"best {' + '.join(axis)} = {out['best']} ({metric} {out['best_metric']:.4f})")
    if div and stable and ordered:
        pos = {r["condition"]: i for i, r in enumerate(rows)}
        s_hi, s_lo = max(stable, key=lambda r: pos[r["condition"]]), min(stable, key=lambda r: pos[r["condition"]])
        d_hi, d_lo = max(div, key=lambda r: pos[r["condition"]]), min(div, key=lambda r: pos[r["condition"]])
        if pos[s_hi["condition"]] < pos[d_lo["condition"]]:
            out["threshold"] = dict(direction="above", last_stable=label(s_hi), first_diverged=label(d_lo))
            parts.append(f"stable up to {label(s_hi)}, diverged from {label(d_lo)} (the stability threshold lies "
                         "between them)")
        elif pos[d_hi["condition"]] < pos[s_lo["condition"]]:
            out["threshold"] = dict(direction="below", last_diverged=label(d_hi), first_stable=label(s_lo))
            parts.append(f"diverged up to {label(d_hi)}, stable from {label(s_lo)} (the stability threshold lies "
                         "between them)")
        else:
            parts.append(f"no single stability threshold: diverged at {', '.join(out['diverged'])}; stable at "
                         f"{', '.join(out['stable'])}")
    elif div and stable:
        parts.append(f"diverged at {', '.join(out['diverged'])}; stable at {', '.join(out['stable'])}")
    elif div:
        parts.append("every value with a result diverged")
    elif stable:
        parts.append("no value diverged")
    out["sentence"] = "; ".join(parts) + "." if parts else "no value has a result."
    return out


def build(group, rows_by_cond, metric, higher_better):
    """A group with its rows, a table per axis (blocks per setting of the other axes), the readings
    and, for a two-flag grid, the heat map."""
    axes = group["axes"]
    rows = []
    for n, swept in group["members"].items():
        if n in rows_by_cond:
            rows.append(dict(rows_by_cond[n], swept=dict(swept)))
    flags = [f for a in axes for f in a]
    rows.sort(key=lambda r: tuple(sort_key(r["swept"].get(f)) for f in flags))
    for r in rows:
        # the old one-flag sweep fields (results.json readers, the sweep figure)
        r["value"] = r["swept"].get(flags[0]) if len(flags) == 1 else \
            ", ".join(f"{f}={value_text(r['swept'].get(f))}" for f in flags)
    tables = []
    for ai, axis in enumerate(axes):
        others = [f for j, a in enumerate(axes) if j != ai for f in a]
        blocks = {}
        for r in rows:
            key = tuple(sort_key(r["swept"].get(f)) for f in others)
            blocks.setdefault(key, (dict((f, r["swept"].get(f)) for f in others), []))[1].append(r)
        out_blocks = []
        for key in sorted(blocks):
            at, brows = blocks[key]
            brows.sort(key=lambda r: tuple(sort_key(r["swept"].get(f)) for f in axis))
            out_blocks.append(dict(at=at, conditions=[r["condition"] for r in brows],
                                   reading=reading(brows, axis, metric, higher_better)))
        tables.append(dict(axis=list(axis), others=others, blocks=out_blocks))
    heat = None
    if len(axes) == 2 and all(len(a) == 1 for a in axes):
        (fy,), (fx,) = axes
        ys = sorted({value_text(r["swept"][fy]): r["swept"][fy] for r in rows}.values(), key=sort_key)
        xs = sorted({value_text(r["swept"][fx]): r["swept"][fx] for r in rows}.values(), key=sort_key)
        where = {(value_text(r["swept"][fy]), value_text(r["swept"][fx])): r["condition"] for r in rows}
        heat = dict(y=fy, x=fx, ys=ys, xs=xs,
                    cells=[[where.get((value_text(y), value_text(x))) for x in xs] for y in ys])
    param = " + ".join(flags) if len(axes) > 1 or len(flags) > 1 else flags[0]
    return dict(param=param, group=group["name"], source=group["source"], kind=group["kind"], axes=axes,
                fixed=group["fixed"], metric=metric, rows=rows, tables=tables, heatmap=heat)


def stage_sweeps(conds, summaries, descriptive, metrics, cond_costs, configs, inferred):
    """Every sweep of a stage (plan groups, a runner sweep or inferred ones) and a plan's single
    conditions, from analyse_stage's per-condition results."""
    from .compute import direction
    pm = primary_metric(conds)
    metric = pm if pm in metrics else (metrics[0] if metrics else None)
    hb = direction(metric) if metric else None
    by_name = {c.name: c for c in conds}
    summ = {s.name: s for s in summaries}
    rows = {n: condition_row(by_name[n], summ[n], descriptive.get(n, {}), metric, cond_costs.get(n)) for n in by_name}
    out = [build(g, rows, metric, hb) for g in groups_of(conds, configs, inferred)]
    single = singles(conds)
    if single:
        sw = dict(param=None, group=None, source="plan", kind="single", axes=[], fixed={}, metric=metric,
                  rows=[dict(rows[n], swept={}, value=n) for n in single], tables=[], heatmap=None)
        out.append(sw)
    return out


# ---------------------------------------------------------------------------------------------
# figures (matplotlib only through analysis/figures.py)
# ---------------------------------------------------------------------------------------------

def figure(figures, sw, path_stem):
    """The figure of one sweep: a heat map for a two-flag grid, the metric against the value for one
    axis; None for the rest."""
    if sw.get("heatmap"):
        h = sw["heatmap"]
        rows = {r["condition"]: r for r in sw["rows"]}
        cells = [[rows[c] if c else None for c in line] for line in h["cells"]]
        return figures.heatmap(path_stem + "_heatmap.png", h["y"], h["x"], [value_text(v) for v in h["ys"]],
                               [value_text(v) for v in h["xs"]], cells, sw["metric"])
    if len(sw.get("axes", [])) == 1:
        axis = sw["axes"][0]
        rows = [dict(r, value=r["swept"][axis[0]]) for r in sw["rows"]]
        return figures.sweep(path_stem + ".png", " + ".join(axis), sw["metric"], rows)
    return None


# ---------------------------------------------------------------------------------------------
# the report's section (markdown helpers from analysis/report.py)
# ---------------------------------------------------------------------------------------------

def _hours_header(rows):
    units = {r["hour_unit"] for r in rows if r["hour_unit"]}
    return units.pop() if len(units) == 1 else "device-hours"


def _hours_cell(r, mixed, fmt):
    if r["hours"] is None:
        return fmt(None)
    return fmt(r["hours"], 3) + (f" {r['hour_unit'].split('-')[0]}" if mixed else "")


def _state_cell(r, R):
    state = [f"{r[k]} {k if k != 'other' else 'unfinished'}" for k in ("finished", "diverged", "crashed", "other") if r[k]]
    return ", ".join(state) + (f" ({'; '.join(map(R.reason, r['reasons']))})" if r["reasons"] else "")


def _metric_cell(r, best, R):
    if r["metric_mean"] is None:
        return R.DASH
    s = R.fmt(r["metric_mean"]) + (f" ± {R.fmt(r['metric_sd'], 3)}" if r["metric_sd"] is not None else "")
    return f"**{s}**" if best is not None and r["metric_mean"] == best else s


def _best(rows, metric):
    from .compute import direction
    hb = direction(metric) if metric else None
    finite = [r["metric_mean"] for r in rows if r["metric_mean"] is not None]
    return (max(finite) if hb else min(finite)) if finite and hb is not None else None


def _where(sw, s):
    if sw["source"] == "plan":
        return f"plan group `{sw['group']}`, {sw['kind']}"
    if sw["source"] == "sweep":
        return "`./run_experiments.sh sweep` (sweep.json)"
    return "inferred: the conditions differ in this one recorded hyperparameter"


def sweep_markdown(s, i, sw, figs):
    """One sweep of stage s: a table per axis, the readings, the heat map."""
    import analysis.report as R
    out = []
    fixed = ", ".join(f"{k}={v}" for k, v in sw["fixed"].items())
    out.append(f"**Stage `{s['name']}`: sweep over `{sw['param']}`** ({_where(sw, s)}"
               + (f"; fixed: {fixed}" if fixed else "") + ")\n")
    rows = {r["condition"]: r for r in sw["rows"]}
    hdr = _hours_header(sw["rows"])
    for t in sw["tables"]:
        trows = [rows[n] for b in t["blocks"] for n in b["conditions"]]
        best = _best(trows, sw["metric"])
        body = []
        for b in t["blocks"]:
            for n in b["conditions"]:
                r = rows[n]
                body.append([value_text(r["swept"].get(f)) for f in t["axis"]]
                            + [value_text(r["swept"].get(f)) for f in t["others"]]
                            + [n, r["runs"], _metric_cell(r, best, R), R.fmt(r["val_ppl"]), R.fmt_secs(r["runtime_s"]),
                               _hours_cell(r, hdr == "device-hours", R.fmt), _state_cell(r, R)])
        if len(sw["tables"]) > 1:
            out.append(f"By `{' + '.join(t['axis'])}`" + (f" (at each {', '.join(f'`{o}`' for o in t['others'])})"
                                                          if t["others"] else "") + ":\n")
        out.append(R.table(body, t["axis"] + [f"at {o}" for o in t["others"]]
                           + ["condition", "runs", f"{sw['metric']} (mean ± SD)", "val ppl", "runtime", hdr, "state"]))
        out.append("")
        for b in t["blocks"]:
            at = ", ".join(f"{k}={value_text(v)}" for k, v in b["at"].items())
            out.append(f"- **Reading** (`{' + '.join(t['axis'])}`{' at ' + at if at else ''}): {b['reading']['sentence']}")
        out.append("")
    h = sw.get("heatmap")
    if h:
        best = _best(sw["rows"], sw["metric"])
        body = []
        for y, line in zip(h["ys"], h["cells"]):
            cells = []
            for c in line:
                r = rows.get(c) if c else None
                if r is None:
                    cells.append("no run")
                elif r["metric_mean"] is None:
                    cells.append("diverged" if r["diverged"] else "crashed" if r["crashed"] else R.DASH)
                else:
                    cells.append(f"**{R.fmt(r['metric_mean'])}**" if r["metric_mean"] == best else R.fmt(r["metric_mean"]))
            body.append([f"{h['y']}={value_text(y)}"] + cells)
        out.append(f"Heat map of `{sw['metric']}` over `{h['y']}` x `{h['x']}` (mean over finished runs; best in bold):\n")
        out.append(R.table(body, [f"{h['y']} \\ {h['x']}"] + [value_text(x) for x in h["xs"]]))
        out.append("")
    key = f"{s['name']}::{i}"
    if key in figs:
        cap = (f"heat map of {sw['metric']} over {h['y']} x {h['x']} (stage {s['name']})" if h else
               f"{sw['metric']} against {sw['param']} (stage {s['name']}); values with no finished run marked x.")
        out.append(R.figure(figs[key], cap))
    return out


def singles_markdown(s, sw):
    """A plan's single conditions (ablations) against its baseline, in the plan's order."""
    import analysis.report as R
    rows = sw["rows"]
    # the baseline's row: among these conditions, or an expanded condition of a group
    b = next((r for x in [sw] + s["sweeps"] for r in x["rows"] if r["condition"] == s["baseline"]), None)
    hdr = _hours_header(rows)
    body = []
    for r in rows:
        diff = None
        if b is not None and r["metric_mean"] is not None and b["metric_mean"] not in (None, 0):
            diff = (r["metric_mean"] - b["metric_mean"]) / abs(b["metric_mean"]) * 100
        label = "baseline" if r["condition"] == s["baseline"] else ""
        body.append([r["condition"] + (f" ({label})" if label else ""), r["runs"], _metric_cell(r, None, R),
                     R.DASH if r["condition"] == s["baseline"] else R.fmt_pct(diff), R.fmt(r["val_ppl"]),
                     R.fmt_secs(r["runtime_s"]), _hours_cell(r, hdr == "device-hours", R.fmt), _state_cell(r, R)])
    if b is not None and b["condition"] not in [r["condition"] for r in rows]:
        body.insert(0, [f"{b['condition']} (baseline)", b["runs"], _metric_cell(b, None, R), R.DASH, R.fmt(b["val_ppl"]),
                        R.fmt_secs(b["runtime_s"]), _hours_cell(b, hdr == "device-hours", R.fmt), _state_cell(b, R)])
    out = [f"**Stage `{s['name']}`: the plan's single conditions**"
           + (f" against its baseline `{s['baseline']}`" if s["baseline"] else "") + "\n",
           R.table(body, ["condition", "runs", f"{sw['metric']} (mean ± SD)", "vs baseline", "val ppl", "runtime", hdr,
                          "state"]), ""]
    return out


def markdown(res, rel_figs):
    """§6 of the report: every stage's sweeps and a plan's single conditions."""
    out = []
    figs = dict(rel_figs.get("sweeps", []))
    for s in res["stages"]:
        for i, sw in enumerate(s["sweeps"]):
            out += singles_markdown(s, sw) if sw["kind"] == "single" else sweep_markdown(s, i, sw, figs)
    if not out:
        return ("No sweep: no stage is a plan with grid or zip conditions, a runner sweep, or has conditions that "
                "differ in exactly one recorded hyperparameter.")
    return "\n".join(out).strip()
