"""`python analyze.py decide`: the sequential decision for one stage (docs/sequential.md).

    python analyze.py decide --logs experiment_logs --stage lmd --json
    python analyze.py decide --logs experiment_logs --stage lmd --variant moderate --max-runs 12 --batch 3
    python analyze.py decide --logs logs --stage record --question acceptance --variant new --target 3.28

The design comes from <logs>/<stage>/sequential.json when it exists (written by the runner before
the first run); otherwise from the flags. A flag that contradicts sequential.json is refused: the
design is fixed before the first run. Reads finished runs only (loading.load), in seed order.
Exit status: 0 with a decision (continue or stop), 2 on a bad flag or design.
"""
import argparse
import json
import os
import sys

from . import loading
from .sequential import Design, DesignError, decide, design_matches, render_markdown

DESIGN_FILE = "sequential.json"
# flag -> design key (flags left at None are not part of the design)
_FLAGS = {"question": "question", "metric": "metric", "alpha": "alpha", "sides": "sides", "spending": "spending",
          "max_runs": "max_runs", "batch": "batch", "baseline": "baseline", "variant": "variant", "better": "better",
          "target": "target", "futility": "futility", "power": "power", "effect_sd": "effect_sd", "test": "test",
          "sigma": "sigma"}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="analyze.py decide", description=__doc__.split("\n\n")[0],
                                epilog="Design flags apply only when <logs>/<stage>/sequential.json is absent "
                                       "(defaults in docs/sequential.md).")
    p.add_argument("--logs", default="experiment_logs", help="run directories (default: experiment_logs)")
    p.add_argument("--stage", required=True, help="the stage: <logs>/<stage>/<condition>/seed_<S>/")
    p.add_argument("--json", action="store_true", help="print the decision as JSON")
    p.add_argument("--markdown", action="store_true", help="print the report section (markdown)")
    g = p.add_argument_group("design (when there is no sequential.json)")
    g.add_argument("--question", choices=("compare", "acceptance"))
    g.add_argument("--metric", help="primary metric (default val_loss)")
    g.add_argument("--alpha", type=float, help="type-I error (default 0.05; acceptance 0.01)")
    g.add_argument("--sides", type=int, choices=(1, 2), help="2 (default for compare) or 1 (variant better)")
    g.add_argument("--spending", choices=("obf", "pocock"), help="Lan-DeMets spending type (default obf)")
    g.add_argument("--max-runs", dest="max_runs", type=int, help="maximum finished runs per condition (default 10)")
    g.add_argument("--batch", type=int, help="runs per condition between looks (default 2)")
    g.add_argument("--baseline", help="baseline condition (default baseline)")
    g.add_argument("--variant", help="condition under test (default: the stage's only other condition)")
    g.add_argument("--better", choices=("lower", "higher"), help="direction of improvement (default lower for *loss)")
    g.add_argument("--target", type=float, help="acceptance: the mean must beat this (default 3.28)")
    g.add_argument("--futility", choices=("beta", "none"), help="non-binding futility bound (default beta)")
    g.add_argument("--power", type=float, help="power the futility bound is spent for (default 0.8)")
    g.add_argument("--effect-sd", dest="effect_sd", type=float, help="design effect in SDs for the futility bound")
    g.add_argument("--test", choices=("student", "welch"), help="two-sample t (default student)")
    g.add_argument("--sigma", type=float, help="known SD: z statistics instead of t")
    return p.parse_args(argv)


def read_design(stage_dir, flags=None):
    """The stage's design: sequential.json if present (flags must agree with it), else the flags.
    Raises DesignError with one line."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    path = os.path.join(stage_dir, DESIGN_FILE)
    if not os.path.exists(path):
        return Design.from_dict(flags, "flags"), None
    try:
        with open(path, encoding="utf-8") as f:
            declared = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DesignError(f"{path}: unreadable ({type(e).__name__}: {str(e)[:80]}); fix or remove it")
    design = Design.from_dict(declared, path)
    if flags:
        changed = [k for k in design_matches(design, Design.from_dict({**declared, **flags}, "flags"))]
        if changed:
            raise DesignError(f"{path} fixes the design before the first run; the flags change {', '.join(changed)}: "
                              "drop those flags or start a new stage")
    return design, path


def stage_samples(stage_dir, metric):
    """{condition: finished values of metric in seed order}, plus counts and notes from loading."""
    conditions, notes = loading.load(stage_dir)
    samples, counts = {}, {}
    for c in conditions:
        runs = sorted(c.runs, key=lambda r: (r.seed is None, r.seed if r.seed is not None else 0, r.name))
        vals, missing = [], 0
        for r in runs:
            if r.finished:
                if metric in r.metrics:
                    vals.append(r.metrics[metric])
                else:
                    missing += 1
        pending = sum(1 for r in runs if r.status == "unfinished")
        counts[c.name] = {"finished": len(vals), "pending": pending,
                          "failed": sum(1 for r in runs if not r.finished and r.status != "unfinished"),
                          "without_metric": missing}
        if missing:
            notes.append(f"{c.path}: {missing} finished run(s) without {metric}, left out")
        if pending:
            notes.append(f"{c.path}: {pending} run(s) not finished yet (running or killed); decided on finished runs")
        samples[c.name] = vals
        notes.extend(c.notes)
    return samples, counts, notes


def evaluate(logs, stage, flags=None):
    """Read the stage and decide. Returns (Decision, extra) where extra holds the design file, the
    per-condition counts and loading notes. Raises DesignError (one line) on a bad design or stage."""
    stage_dir = os.path.join(logs, stage)
    if not os.path.isdir(stage_dir):
        raise DesignError(f"--stage {stage}: no directory {stage_dir} (check --logs and --stage)")
    design, path = read_design(stage_dir, flags)
    samples, counts, notes = stage_samples(stage_dir, design.metric)
    if design.variant is None:
        others = sorted(c for c in samples if c != design.baseline or design.question == "acceptance")
        if len(others) != 1:
            raise DesignError(f"{stage_dir}: conditions {', '.join(others) or '(none)'}: name the one under test "
                              "(--variant, or \"variant\" in sequential.json)")
        design = Design.from_dict({**design.to_dict(), "variant": others[0]}, "design")
    for c in design.conditions:
        if c not in samples:
            notes.append(f"{stage_dir}: no condition {c!r} yet (found: {', '.join(sorted(samples)) or 'none'})")
    dec = decide(design, {c: samples.get(c, []) for c in design.conditions})
    dec.notes = notes + dec.notes
    return dec, {"design_file": path, "stage_dir": stage_dir,
                 "conditions": {c: counts.get(c, {"finished": 0, "pending": 0, "failed": 0, "without_metric": 0})
                                for c in design.conditions}}


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    flags = {key: getattr(args, flag) for flag, key in _FLAGS.items()}
    try:
        dec, extra = evaluate(args.logs, args.stage, flags)
    except DesignError as e:
        print(f"analyze.py decide: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({**dec.to_json(), **extra}, indent=1, allow_nan=False))
    elif args.markdown:
        sys.stdout.write(render_markdown(dec))
    else:
        print(decision_line(args.stage, dec))
        for n in dec.notes:
            print(f"  note: {n}")
    return 0


def decision_line(stage, dec):
    """One line: the verdict, the latest look's statistic and bound, and the adjusted p and CI after a
    stop or what the next look needs (this command's plain output; the runner prints it at each look)."""
    cur = dec.looks[-1] if dec.looks else None
    line = f"{stage}: {dec.verdict} (look {dec.look} of {dec.planned_looks}"
    if cur is not None:
        line += (f"; statistic {cur.statistic:.3f}, bound {cur.bound_stat:.3f}, alpha spent {cur.alpha_spent:.4g}")
    line += ")"
    if dec.stopped:
        line += f"; adjusted p {dec.p_adjusted:.3g}"
        if dec.ci is not None:
            line += f", {dec.ci_level:.0%} CI [{dec.ci[0]:.4g}, {dec.ci[1]:.4g}]"
    else:
        line += f"; next look at {dec.next_look_n} per condition, needs " + \
                ", ".join(f"{c} +{n}" for c, n in dec.runs_needed.items())
    return line


if __name__ == "__main__":
    sys.exit(main())
