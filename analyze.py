"""analyze.py: from run directories to a report a reviewer can trust.

Reads every run under --logs (the layout of docs/RUN_FORMAT.md: <stage>/<variant>/seed_<S>/, and
folders of plain speedrun log files, one file per run), compares every variant with its stage's
baseline, and writes next to --out: the report (markdown, from report_template.md), its figures
(<stem>_figures/), results.json (every number in the report) and summary.csv.

    python analyze.py                                   # experiment_logs/ -> report.md
    python analyze.py --logs experiment_logs --stage stage_c --out reports/stage_c.md
    python analyze.py --equivalence train_time_s=1% --equivalence val_loss=0.005 --target 3.28
    python analyze.py --metrics val_loss,train_time_s --resamples 20000 --seed 1 --no-figures

Statistics (docs/analyze.md): descriptive statistics; Welch, Mann-Whitney and exact permutation
tests; Cohen's d / Hedges' g and the probability of improvement with CIs; a stratified bootstrap CI
of the difference; Brown-Forsythe; paired tests when seeds match; power; TOST; Holm-Bonferroni over
the whole report. Exit status: 0 on success, 1 when nothing could be analysed, 2 on a bad flag.
"""
import argparse
import csv
import dataclasses
import io
import json
import math
import os
import platform
import shlex
import sys
import tempfile
from datetime import datetime, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

if __name__ == "__main__" and sys.argv[1:2] == ["decide"]:
    # the sequential decision (docs/sequential.md): dispatched before the report's heavy imports
    from analysis import decide as _decide
    sys.exit(_decide.main(sys.argv[2:]))

from analysis import compute, loading  # noqa: E402
from analysis import cost as cost_mod  # noqa: E402
from analysis import drawing  # noqa: E402
from analysis import report as rep  # noqa: E402
from analysis import rules  # noqa: E402
from analysis import stats as st  # noqa: E402
from analysis.text import printable  # noqa: E402

PATH_OPTIONS = ("--logs", "--out", "--template")


class _Parser(argparse.ArgumentParser):
    """argparse that refuses a bad flag with one line (no usage block) and exit status 2."""

    def error(self, message):
        print(f"analyze.py: {message} (see python analyze.py --help)", file=sys.stderr)
        sys.exit(2)


def _positive(name):
    def conv(x):
        try:
            v = float(x)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{x!r} is not a number")
        if not math.isfinite(v) or v < 0:
            raise argparse.ArgumentTypeError(f"{x!r}: give a finite number >= 0")
        return v
    conv.__name__ = name
    return conv


def _record(x):
    """--previous-record MEAN,N,STEPS (STEPS may be left out)."""
    parts = [p.strip() for p in x.split(",")]
    try:
        mean, n = float(parts[0]), int(parts[1])
        steps = float(parts[2]) if len(parts) > 2 and parts[2] else None
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(f"{x!r}: expected MEAN,N,STEPS, e.g. 3.2785,16,3225")
    if n < 1 or not math.isfinite(mean):
        raise argparse.ArgumentTypeError(f"{x!r}: N must be >= 1 and MEAN finite")
    return (mean, n, steps)


def parse_args(argv):
    for i, a in enumerate(argv):
        # `--logs --dry-run`, `--out=-x`: an option where a path belongs is a mistake, not a file name
        name, eq, val = a.partition("=")
        if name in PATH_OPTIONS:
            val = val if eq else (argv[i + 1] if i + 1 < len(argv) else None)
            if val is not None and val.startswith("-"):
                print(f"analyze.py: {name} {val}: expected a path, got something that looks like an option "
                      f"(write {name} ./{val} if that is really its name)", file=sys.stderr)
                sys.exit(2)
    p = _Parser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                epilog="Outputs go next to --out: the report, <stem>_figures/, results.json and summary.csv "
                       "(prefixed with <stem>_ unless the stem is 'report').")
    p.add_argument("--logs", default="experiment_logs", help="directory of run directories and/or speedrun log folders (default: experiment_logs)")
    p.add_argument("--out", default="report.md", help="report path (default: report.md)")
    p.add_argument("--stage", action="append", default=None, help="analyse only this stage (repeatable or comma-separated)")
    p.add_argument("--baseline", default="baseline", help="condition every variant of a stage is compared with (default: baseline)")
    p.add_argument("--metrics", default=None, help="comma-separated metrics (default: every metric a finished run reports)")
    p.add_argument("--target", type=float, default=3.28, help="validation-loss target for time-to-target and the speedrun criterion (default: 3.28)")
    p.add_argument("--equivalence", action="append", default=[], metavar="METRIC=MARGIN",
                   help="equivalence margin for TOST, absolute (val_loss=0.005) or relative to the baseline mean (train_time_s=1%%); repeatable")
    p.add_argument("--resamples", type=int, default=10_000, help="bootstrap and Monte Carlo permutation resamples (default: 10000)")
    p.add_argument("--seed", type=int, default=0, help="seed of every resampling (default: 0)")
    p.add_argument("--figures", dest="figures", action="store_true", default=True, help="write figures (default)")
    p.add_argument("--no-figures", dest="figures", action="store_false", help="skip figures")
    p.add_argument("--template", default=os.path.join(HERE, "report_template.md"), help="report template (default: report_template.md next to analyze.py)")
    g = p.add_argument_group("acceptance rules, equivalence and cost (docs/analyze.md)")
    g.add_argument("--val-loss-margin", type=_positive("margin"), default=0.001,
                   help="default equivalence (TOST) margin for val_loss, absolute; 0 turns it off (default: 0.001)")
    g.add_argument("--systems-only", action="store_true", help="the change touches systems performance only: the main-track p < 0.01 rule is waived")
    g.add_argument("--main-alpha", type=_positive("alpha"), default=0.01, help="main track: one-sided t-test level (default: 0.01)")
    g.add_argument("--opt-threshold", type=_positive("threshold"), default=0.004,
                   help="optimisation track: (target - mean) * sqrt(n) must reach this (default: 0.004)")
    g.add_argument("--opt-sigma", type=_positive("sigma"), default=0.0013, help="optimisation track: the fixed sigma of its z-test (default: 0.0013)")
    g.add_argument("--step-credit", type=_positive("credit"), default=0.0045, help="pairwise rule: val loss credited per 100 steps saved (default: 0.0045)")
    g.add_argument("--pairwise-threshold", type=_positive("threshold"), default=0.004, help="pairwise rule: threshold (default: 0.004)")
    g.add_argument("--previous-record", type=_record, default=None, metavar="MEAN,N,STEPS",
                   help="a previous record to test every condition against with the pairwise rule, e.g. 3.2785,16,3225")
    g.add_argument("--margin", type=_positive("margin"), default=0.001,
                   help="margin test: the variant's val loss must be below the baseline's by this much at p < --margin-alpha (default: 0.001)")
    g.add_argument("--margin-alpha", type=_positive("alpha"), default=0.01, help="margin test level, one-sided Welch (default: 0.01)")
    g.add_argument("--usd-per-gpu-hour", type=_positive("rate"), default=None,
                   help="dollar rate for GPU-hours (default: $USD_PER_GPU_HOUR, else experiment.json's usd_per_gpu_hour)")
    args = p.parse_args(argv)
    if args.resamples < 100:
        p.error(f"--resamples {args.resamples}: use at least 100 (10000 is the default)")
    if not math.isfinite(args.target):
        p.error("--target must be a finite number")
    try:
        args.equivalence_map = compute.parse_equivalence(args.equivalence)
    except ValueError as e:
        p.error(str(e))
    args.margin_default = "val_loss" not in args.equivalence_map and args.val_loss_margin > 0
    if args.margin_default:
        args.equivalence_map["val_loss"] = (args.val_loss_margin, False)
    args.metric_list = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    args.stage_list = [s.strip() for v in args.stage for s in v.split(",") if s.strip()] if args.stage else None
    return args


def _clean(obj):
    """JSON-safe copy: records to dicts, numpy scalars to Python, non-finite floats to None, tuples to
    lists, names that are not valid UTF-8 with their bytes escaped."""
    if isinstance(obj, st.Record):
        obj = obj.to_json()
    if isinstance(obj, str):
        return printable(obj)
    if isinstance(obj, dict):
        return {printable(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _write_atomic(path, text):
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp_", suffix=os.path.basename(path)[-100:])
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def summary_csv(res):
    cols = ["stage", "condition", "metric", "n", "mean", "std", "sem", "ci_low", "ci_high", "median", "min", "max",
            "p25", "p75", "p95", "cv", "boot_low", "boot_high", "shapiro_p", "deterministic", "baseline", "diff",
            "diff_pct", "diff_ci_low", "diff_ci_high", "hedges_g", "g_low", "g_high", "p_improvement", "primary_test",
            "p", "p_holm", "verdict", "decision"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    val = lambda x: "" if x is None or (isinstance(x, float) and not math.isfinite(x)) else repr(x) if isinstance(x, float) else printable(x)
    for s in res["stages"]:
        cmp = {(c["variant"], c["metric"]): c for c in s["comparisons"]}
        for cname, dm in s["descriptive"].items():
            for m, d in dm.items():
                c = cmp.get((cname, m), {})
                b, e, pr = c.get("bootstrap") or {}, c.get("effect") or {}, c.get("primary") or {}
                row = [s["name"], cname, m] + [d[k] for k in cols[3:20]] + [
                    s["baseline"] if c else None, c.get("diff"), c.get("diff_pct"), b.get("diff_low"), b.get("diff_high"),
                    e.get("g"), e.get("g_low"), e.get("g_high"), b.get("poi"), pr.get("test"), pr.get("p"),
                    pr.get("p_holm"), c.get("verdict"), c.get("decision")]
                w.writerow([val(x) for x in row])
    return buf.getvalue()


FIGURE_KINDS = ("distributions", "violins", "curves", "comparison", "gap", "sweeps")


def submit_data_figures(drawer, conditions, settings, figdir):
    """The figures that need no statistic, per stage: distributions and violins of every metric,
    training curves and the loss comparison. They are handed over before the statistics are
    computed, so a worker process can draw them meanwhile. The inputs are those of
    compute.analyse: the same metrics, runs and aligned curves."""
    import numpy as np
    for stage, conds in compute.stages_of(conditions):
        path = lambda kind: os.path.join(figdir, f"{drawing.file_stem(stage)}_{kind}.png")
        labels = [printable(c.name) for c in conds]
        mets = compute.stage_metrics(stage, conds, settings)
        if mets:
            data = {m: [np.array([r.metrics[m] for r in c.finished_runs if m in r.metrics]) for c in conds] for m in mets}
            drawer.submit("distributions", stage, "distributions", (path("distributions"), mets, data, labels))
            drawer.submit("violins", stage, "violins", (path("violins"), mets, data, labels))
        val_c, train_c = compute.curve_block(conds, "val"), compute.curve_block(conds, "train")
        if val_c or train_c:
            v = {printable(k): (g, m) for k, (g, m, _, _) in val_c.items()}
            t = {printable(k): (g, m) for k, (g, m, _, _) in train_c.items()}
            target = settings["target"] if compute.target_applies(conds, settings) else None
            drawer.submit("curves", stage, "training_curves", (path("training_curves"), t, v, labels, target))
            if v:
                drawer.submit("comparison", stage, "loss_comparison", (path("loss_comparison"), v, labels))


def submit_result_figures(drawer, res, figdir):
    """The figures drawn from statistics: the gap to the baseline with its CI, and the sweeps."""
    for s in res["stages"]:
        stem = drawing.file_stem(s.name)
        labels = [printable(c.name) for c in s.conditions]
        if s.dynamics.gaps:
            gaps = {printable(k): g for k, g in s.dynamics.gaps.items()}
            drawer.submit("gap", s.name, "gap", (os.path.join(figdir, f"{stem}_gap.png"), gaps, labels, printable(s.baseline)))
        for i, sw in enumerate(s.sweeps):   # one-axis sweeps: metric against value; two-flag grids: heat map
            stem_i = os.path.join(figdir, f"{stem}_sweep_{drawing.file_stem(printable(sw['param'] or 'conditions'), 40)}_{i}")
            if sw["param"]:
                drawer.submit("sweeps", f"{s.name}::{i}", "sweep", (dict(sw, param=printable(sw["param"])), stem_i))


def collect_figures(drawer, outdir):
    """{kind: [(stage or key, path relative to outdir)]} for the report, once every figure is drawn."""
    rel = lambda p: os.path.relpath(p, outdir).replace(os.sep, "/")
    return {kind: [(key, rel(p)) for key, p in done] for kind, done in drawer.results(FIGURE_KINDS).items()}


def _versions(with_matplotlib=True):
    from importlib.metadata import version
    import numpy
    import scipy
    out = {"python": platform.python_version(), "numpy": numpy.__version__, "scipy": scipy.__version__}
    if with_matplotlib:
        out["matplotlib"] = version("matplotlib")
    out["tabulate"] = version("tabulate")
    return out


def _read_template(path):
    """The template text, or (None, one line saying why)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        return None, f"--template {printable(path)}: {e.strerror}"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, (f"--template {printable(path)}: not a text file (byte {e.start} is not UTF-8); "
                      "give a markdown template like report_template.md")
    if "\x00" in text:
        return None, f"--template {printable(path)}: not a text file (it contains NUL bytes); give a markdown template"
    return text, None


def main(argv=None):
    """`python analyze.py [options]`: the report. (A subcommand, `python analyze.py NAME ...`, would
    be dispatched here on argv[0] before the report's options are parsed.)"""
    argv = sys.argv[1:] if argv is None else list(argv)
    return report_main(argv)


def report_main(argv):
    args = parse_args(argv)
    if not os.path.isdir(args.logs):
        print(f"analyze.py: --logs {printable(args.logs)}: no such directory (run the experiments first, or point --logs at "
              "a folder of <stage>/<variant>/seed_<S>/ run directories or speedrun log files)", file=sys.stderr)
        return 1
    template, why = _read_template(args.template)
    if template is None:
        print(f"analyze.py: {why}", file=sys.stderr)
        return 2
    conditions, notes = loading.load(args.logs)
    if args.stage_list:
        known = sorted({c.stage for c in conditions})
        unknown = [s for s in args.stage_list if s not in known]
        if unknown:
            print(f"analyze.py: --stage {', '.join(unknown)}: not found under {printable(args.logs)} "
                  f"(stages: {printable(', '.join(known)) or 'none'})", file=sys.stderr)
            return 2
        conditions = [c for c in conditions if c.stage in args.stage_list]
    if not conditions or not any(c.runs for c in conditions):
        print(f"analyze.py: nothing to analyse under {printable(os.path.abspath(args.logs))}: looked for run directories "
              "<stage>/<variant>/seed_<S>/ (summary.json, metrics.jsonl) and folders of speedrun log files "
              "(lines like 'step:125/5100 val_loss:4.9584 ...'); found none", file=sys.stderr)
        return 1
    rate, rate_source, rate_notes = cost_mod.rate_from(args.usd_per_gpu_hour, [c.experiment for c in conditions])
    notes.extend(rate_notes)
    rule_cfg = rules.RuleSettings(target=args.target, main_alpha=args.main_alpha, systems_only=args.systems_only,
                                  opt_threshold=args.opt_threshold, opt_sigma=args.opt_sigma, step_credit=args.step_credit,
                                  pairwise_threshold=args.pairwise_threshold, margin=args.margin, margin_alpha=args.margin_alpha)
    settings = dict(seed=args.seed, resamples=args.resamples, baseline=args.baseline, metrics=args.metric_list,
                    target=args.target, equivalence=args.equivalence_map, rules=rule_cfg, rate=rate,
                    previous_record=args.previous_record,
                    target_explicit=any(a == "--target" or a.startswith("--target=") for a in argv))
    out = args.out
    outdir = os.path.dirname(os.path.abspath(out))
    stem = os.path.splitext(os.path.basename(out))[0]
    prefix = "" if stem == "report" else stem + "_"
    figdir = os.path.join(outdir, f"{stem}_figures")
    results_path = os.path.join(outdir, prefix + "results.json")
    csv_path = os.path.join(outdir, prefix + "summary.csv")
    # the figures that need no statistic are handed over first: with a worker process (drawing.py)
    # they are drawn while this process imports scipy and computes the statistics. A process that
    # has scipy already (it analysed before) imports matplotlib itself once, for every later worker.
    processes = drawing.default_processes() if args.figures else 0
    with drawing.Drawer(processes, import_here="scipy.stats" in sys.modules) as drawer:
        if args.figures:
            submit_data_figures(drawer, conditions, settings, figdir)
            drawer.flush()
        res, _ = compute.analyse(conditions, settings)
        if args.figures:
            submit_result_figures(drawer, res, figdir)
        res["sequential"] = rep.sequential_designs(res)   # stages with sequential.json (docs/sequential.md)
        for s in res["stages"]:
            notes.extend(s.notes)
            s.notes = []
        res["notes"] = notes
        for m in args.equivalence_map:
            if not any(c.metric == m for s in res["stages"] for c in s.comparisons) and not (m == "val_loss" and args.margin_default):
                res["notes"].append(f"--equivalence {m}: no comparison has this metric, so no equivalence test was run")
        equivalence = {k: f"{v[0]:g}{'%' if v[1] else ''}" for k, v in args.equivalence_map.items()}
        res["settings"] = dict(command="python analyze.py" + (" " + shlex.join(argv) if argv else ""), logs=args.logs,
                               stages=args.stage_list, baseline=args.baseline, metrics=args.metric_list, target=args.target,
                               equivalence=equivalence, equivalence_default_val_loss=args.margin_default,
                               rules=dataclasses.asdict(rule_cfg), previous_record=args.previous_record,
                               usd_per_gpu_hour=rate, usd_rate_source=rate_source,
                               resamples=args.resamples, seed=args.seed, alpha=st.ALPHA, exact_limit=st.EXACT_LIMIT,
                               versions=_versions(args.figures))
        try:
            rel_figs = collect_figures(drawer, outdir) if args.figures else {}
        except OSError as e:
            print(f"analyze.py: cannot write the figures to {printable(e.filename or figdir)}: {e.strerror} "
                  "(choose a writable --out, or --no-figures)", file=sys.stderr)
            return 1
    files = [os.path.relpath(p, outdir).replace(os.sep, "/") for p in (results_path, csv_path)]
    if rel_figs:
        files.append(os.path.basename(figdir) + "/")
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text, unknown = rep.render(template, res, rel_figs, files, date)
    for u in unknown:
        print(f"analyze.py: warning: {printable(args.template)}: unknown placeholder {{{{{printable(u)}}}}} left as a note in the report",
              file=sys.stderr)
    ordered = {"settings": res["settings"], "notes": res["notes"], "stages": res["stages"], "family": res["family"],
               "sequential": rep.sequential_json(res)}
    for path, body in ((results_path, json.dumps(_clean(ordered), indent=1, allow_nan=False) + "\n"),
                       (csv_path, summary_csv(res)), (out, text)):
        try:
            _write_atomic(path, body)
        except OSError as e:
            print(f"analyze.py: cannot write {printable(path)}: {e.strerror} (choose a writable --out)", file=sys.stderr)
            return 1
    n_fin = sum(1 for c in conditions for r in c.runs if r.finished)
    n_all = sum(len(c.runs) for c in conditions)
    print(f"analyze.py: {len(res['stages'])} stage(s), {n_all} run(s), {n_fin} finished, "
          f"{len(res['family'])} test(s) in the Holm family -> {printable(out)}, {printable(os.path.relpath(results_path))}, "
          f"{printable(os.path.relpath(csv_path))}" + (f", {printable(os.path.relpath(figdir))}/" if rel_figs else ""))
    if n_fin == 0:
        print(f"analyze.py: no run under {printable(os.path.abspath(args.logs))} finished, so no statistic could be computed "
              "(the report lists the runs and why they failed)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    code = main()
    # Leave without the interpreter's teardown (freeing numpy's, scipy's and tabulate's modules one
    # by one: ~0.2 s of a 2 s run): every file is written and closed, every pool shut down.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
