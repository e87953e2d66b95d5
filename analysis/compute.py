"""From loaded conditions to the results dict that the report, results.json and summary.csv show.

Each stage is analysed on its own: every variant against the stage's baseline. All resampling uses
a generator seeded from (--seed, stage, variant, metric, purpose), so a number does not depend on
which other metrics or stages were analysed, and the same inputs give the same results.
"""
import math
import zlib
from dataclasses import dataclass, field

import numpy as np

from . import cost as cost_mod
from . import plans as plans_mod
from . import planner, rules
from . import stats as st

LOWER_BETTER = {"val_loss", "train_loss", "train_time_s", "wall_time_s", "peak_memory_mib",
                "val_ppl", "grad_norm"}
HIGHER_BETTER = {"tokens_per_s", "accuracy", "macro_accuracy"}
METRIC_ORDER = ["val_loss", "val_ppl", "train_loss", "accuracy", "macro_accuracy", "train_time_s",
                "wall_time_s", "tokens_per_s", "peak_memory_mib", "grad_norm", "embedding_norm",
                "num_params"]
# config keys that label a run rather than set a hyperparameter
_NOT_HYPERPARAMETERS = {"_positional", "seed", "out_dir", "run_dir", "output_dir", "log_dir", "resume", "variant",
                        "name", "run_name", "run_id", "script", "save_every", "device",
                        "input_bin", "input_val_bin", "data_dir"}


def direction(metric):
    """True: higher is better; False: lower is better; None: no direction."""
    if metric in LOWER_BETTER:
        return False
    if metric in HIGHER_BETTER:
        return True
    return None


def metric_sort_key(m):
    return (METRIC_ORDER.index(m) if m in METRIC_ORDER else len(METRIC_ORDER), m)


def rng_for(seed, *key):
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32("\x1f".join(map(str, key)).encode("utf-8", "surrogateescape"))])


def parse_equivalence(specs):
    """['train_time_s=1%', 'val_loss=0.005'] -> {metric: (value, is_percent)}; raises ValueError."""
    out = {}
    for spec in specs or []:
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            if "=" not in part:
                raise ValueError(f"--equivalence {part!r}: expected METRIC=MARGIN, e.g. train_time_s=1% or val_loss=0.005")
            metric, margin = (s.strip() for s in part.split("=", 1))
            pct = margin.endswith("%")
            try:
                value = float(margin[:-1] if pct else margin)
            except ValueError:
                raise ValueError(f"--equivalence {part!r}: margin {margin!r} is not a number (absolute, or a percentage like 1%)")
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"--equivalence {part!r}: the margin must be a positive number")
            out[metric] = (value, pct)
    return out


# ---------------------------------------------------------------------------------------------
# configs and sweeps
# ---------------------------------------------------------------------------------------------

def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        elif isinstance(v, list):
            out[key] = tuple(v) if all(not isinstance(x, (dict, list)) for x in v) else str(v)
        else:
            out[key] = v
    return out


def _coerce(s):
    if not isinstance(s, str):
        return s
    low = s.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(s)
    except ValueError:
        pass
    try:
        return float(s)
    except ValueError:
        return s


def overrides_of(experiment):
    """Hyperparameter overrides recorded by the runner: a dict, or a list like
    ['--lr', '0.002', '--batch_size=64'] / ['lr=0.002']."""
    if not experiment:
        return {}
    raw = None
    for key in ("overrides", "hyperparameter_overrides", "hyperparameters", "hparams"):
        if key in experiment:
            raw = experiment[key]
            break
    if isinstance(raw, dict):
        return {k: _coerce(v) for k, v in _flatten(raw).items()}
    if isinstance(raw, str):
        raw = raw.split()
    out = {}
    if isinstance(raw, list):
        i = 0
        while i < len(raw):
            tok = str(raw[i])
            if "=" in tok:
                k, v = tok.split("=", 1)
                out[k.lstrip("-")] = _coerce(v)
            elif tok.startswith("--") and i + 1 < len(raw) and not str(raw[i + 1]).startswith("--"):
                out[tok[2:]] = _coerce(str(raw[i + 1]))
                i += 1
            elif tok.startswith("--"):
                out[tok[2:]] = True
            i += 1
    return out


def condition_config(cond):
    """Hyperparameters of a condition: the configs its runs report (keys that vary between its own
    runs, such as the seed, dropped) updated with the runner's overrides."""
    configs = [_flatten(r.config) for r in cond.runs if r.config]
    merged = {}
    if configs:
        keys = set().union(*configs)
        for k in sorted(keys):   # sorted: a set's order changes from one process to the next (hash seed)
            vals = {repr(c.get(k)) for c in configs if k in c}
            if len(vals) == 1:
                merged[k] = next(c[k] for c in configs if k in c)
    merged.update(overrides_of(cond.experiment))
    return {k: v for k, v in merged.items() if k not in _NOT_HYPERPARAMETERS}


def _sort_value(v):
    if isinstance(v, bool):
        return (1, str(v))
    if isinstance(v, (int, float)):
        return (0, float(v))
    return (1, str(v))


def find_sweeps(configs):
    """configs: {condition: config}. Returns [(param, {fixed params}, [conditions])]: groups of
    conditions that differ in exactly one hyperparameter (>= 3 values, or >= 2 when the whole
    stage differs in that one parameter only)."""
    names = [n for n in configs if configs[n]]
    if len(names) < 2:
        return []
    keys = sorted(set().union(*(configs[n].keys() for n in names)))
    varying = [k for k in keys if len({repr(configs[n][k]) for n in names if k in configs[n]}) > 1]
    sweeps = []
    for k in varying:
        others = [o for o in varying if o != k]
        groups = {}
        for n in names:
            if k not in configs[n]:
                continue
            sig = tuple(repr(configs[n].get(o)) for o in others)
            groups.setdefault(sig, []).append(n)
        for sig, members in sorted(groups.items()):
            values = {repr(configs[n][k]) for n in members}
            if len(values) >= 3 or (len(values) >= 2 and not others):
                members = sorted(members, key=lambda n: (_sort_value(configs[n][k]), n))
                fixed = {o: configs[members[0]].get(o) for o in others}
                sweeps.append((k, fixed, members))
    return sweeps


# ---------------------------------------------------------------------------------------------
# per stage
# ---------------------------------------------------------------------------------------------

def _values(cond, metric):
    runs = [r for r in cond.finished_runs if metric in r.metrics]
    return np.array([r.metrics[metric] for r in runs]), runs


def _seed_map(runs, metric):
    out = {}
    for r in runs:
        if r.seed is not None and metric in r.metrics:
            out.setdefault(r.seed, []).append(r.metrics[metric])
    return {s: v[0] for s, v in out.items() if len(v) == 1}


@dataclass
class Comparison(st.Record):
    """Every statistic of one variant against its stage's baseline on one metric."""
    variant: str
    baseline: str
    metric: str
    higher_better: bool = None
    n_b: int = 0
    n_v: int = 0
    mean_b: float = None
    mean_v: float = None
    diff: float = None
    diff_pct: float = None
    better: bool = None
    testable: bool = False
    deterministic: bool = False
    paired_seeds: list = field(default_factory=list)
    fully_paired: bool = False
    welch: st.TTest = None
    mann_whitney: st.RankTest = None
    permutation: st.Permutation = None
    effect: st.Effect = None
    bootstrap: st.Bootstrap = None
    levene: st.Levene = None
    power: st.Power = None
    paired: st.Paired = None
    primary: st.Primary = None
    tost: st.Tost = None
    verdict: str = None
    decision: str = None
    caveats: list = field(default_factory=list)


def _tost_for(b, v, mb, eq):
    m = eq[0] / 100 * abs(mb) if eq[1] else eq[0]
    t = st.tost(b, v, -m, m)
    t.margin, t.margin_spec = m, f"{eq[0]:g}{'%' if eq[1] else ''}"
    return t


def compare(b_cond, v_cond, metric, settings, stage):
    """Every statistic of one variant against the baseline on one metric."""
    b, b_runs = _values(b_cond, metric)
    v, v_runs = _values(v_cond, metric)
    hb = direction(metric)
    res = Comparison(variant=v_cond.name, baseline=b_cond.name, metric=metric, higher_better=hb, n_b=len(b), n_v=len(v))
    if len(b) == 0 or len(v) == 0:
        return res
    mb, mv = float(b.mean()), float(v.mean())
    diff = mv - mb
    res.mean_b, res.mean_v, res.diff = mb, mv, diff
    res.diff_pct = 100 * diff / abs(mb) if mb != 0 else None
    if hb is not None and diff != 0:
        res.better = (diff > 0) == hb
    key = (settings["seed"], stage, v_cond.name, metric)
    R = settings["resamples"]
    if len(b) < 2 or len(v) < 2:
        return res
    res.testable = True
    sb, sv = _seed_map(b_runs, metric), _seed_map(v_runs, metric)
    common = sorted(set(sb) & set(sv))
    res.paired_seeds = common
    res.fully_paired = bool(common) and len(common) == len(b) == len(v)
    eq = settings["equivalence"].get(metric)
    if st.is_constant(b) and st.is_constant(v):
        # every run of each side gave the same value: the difference is exact, no test applies
        res.deterministic = True
        if st.is_constant(np.r_[b, v]):   # the same value on both sides, up to rounding of the means
            res.diff, res.diff_pct, res.better = 0.0, 0.0, None
        res.bootstrap = st.stratified_bootstrap(b, v, rng_for(*key, "boot"), 100, hb)
        if eq is not None:
            res.tost = _tost_for(b, v, mb, eq)
        return res
    res.welch = st.welch(b, v)
    res.mann_whitney = st.mann_whitney(b, v)
    res.permutation = st.permutation_test(b, v, rng_for(*key, "perm"), R)
    res.effect = st.effect_size(b, v)
    res.bootstrap = st.stratified_bootstrap(b, v, rng_for(*key, "boot"), R, hb)
    res.levene = st.levene(b, v, center="median")
    g = abs(res.effect.g) if res.effect.g is not None else None
    res.power = st.Power(effect=g, effect_name="|g|", design="two-sample")
    if g is not None:
        res.power.achieved = float(st.power_two_sample(g, len(b), len(v)))
        res.power.runs_needed = st.runs_needed(g)
    # paired: runs sharing a seed
    if len(common) >= 2:
        pb = np.array([sb[s] for s in common])
        pv = np.array([sv[s] for s in common])
        pr = st.paired(pb, pv, rng_for(*key, "paired"), R)
        if pr.dz is not None:
            pr.power = float(st.power_paired(pr.dz, len(common)))
            pr.runs_needed = st.runs_needed(pr.dz, paired_design=True)
        res.paired = pr
    # primary test: paired t when every run is paired, else Welch
    if res.fully_paired and res.paired is not None and res.paired.p_t is not None:
        pr = res.paired
        res.primary = st.Primary("paired t", pr.p_t, pr.ci_low, pr.ci_high)
        res.power = st.Power(effect=abs(pr.dz), effect_name="|d_z|", design="paired", achieved=pr.power,
                             runs_needed=pr.runs_needed)
    elif res.welch.p is not None:
        res.primary = st.Primary("Welch t", res.welch.p, res.welch.ci_low, res.welch.ci_high)
    if eq is not None:
        res.tost = _tost_for(b, v, mb, eq)
    return res


@dataclass
class Dynamics(st.Record):
    """Over training: mean curves, gaps to the baseline, time to target, iso-loss speedups and the
    one-sample speedrun criterion per condition (each a small dict keyed by condition)."""
    target: float
    target_applies: bool
    val: dict = field(default_factory=dict)
    train_available: list = field(default_factory=list)
    gaps: dict = field(default_factory=dict)
    time_to_target: dict = field(default_factory=dict)
    iso_loss: dict = field(default_factory=dict)
    speedrun: dict = field(default_factory=dict)


def curve_block(conds, kind):
    """Aligned curves of the finished runs of each condition: {cond: (grid, matrix, time matrix)}."""
    out = {}
    for c in conds:
        runs = [r for r in c.finished_runs if getattr(r, kind) is not None]
        if not runs:
            continue
        curves = [getattr(r, kind) for r in runs]
        grid, mat = st.align([cv.steps for cv in curves], [cv.values for cv in curves])
        tmat = None
        if kind == "val":
            _, tmat = st.align([cv.steps for cv in curves],
                               [cv.times_ms if cv.times_ms is not None else np.full(len(cv.steps), np.nan)
                                for cv in curves])
        out[c.name] = (grid, mat, tmat, [r.name for r in runs])
    return out


def _on_grid(grid, mat, target_grid):
    out = np.full((mat.shape[0], len(target_grid)), np.nan)
    pos = np.searchsorted(target_grid, grid)
    out[:, pos] = mat
    return out


def _nan_to_none(a):
    return [None if not np.isfinite(x) else float(x) for x in np.asarray(a, float)]


def target_applies(conds, settings):
    """The target is a speedrun convention: applied to the speedrun scripts and plain speedrun logs,
    or to anything when the user gave --target."""
    scripts = {r.script or "" for c in conds for r in c.runs} | {(c.experiment or {}).get("script") or "" for c in conds}
    presets = {str(r.config.get("preset")) for c in conds for r in c.runs if r.config.get("preset")}
    return bool(settings.get("target_explicit") or any(c.source == "log" for c in conds)
                or (any(str(s).startswith("train_gpt") for s in scripts) and not presets))


def training_dynamics(conds, baseline, settings):
    val = curve_block(conds, "val")
    train = curve_block(conds, "train")
    applies = target_applies(conds, settings)
    out = Dynamics(target=settings["target"], target_applies=applies, train_available=sorted(train))
    for name, (grid, mat, tmat, runs) in val.items():
        cnt, mean, sd = st.mean_sd(mat)
        _, tmean, _ = st.mean_sd(tmat)
        out["val"][name] = dict(steps=_nan_to_none(grid), n=[int(c) for c in cnt], mean=_nan_to_none(mean),
                                sd=_nan_to_none(sd), time_s=_nan_to_none(tmean / 1000.0))
        # time to target, per run
        steps_mat = np.broadcast_to(grid, mat.shape)
        at_step = st.first_crossing(steps_mat, mat, settings["target"])
        at_time = st.first_crossing(tmat / 1000.0, mat, settings["target"])
        reached = np.isfinite(at_step)
        ttt = dict(n=len(runs), reached=int(reached.sum()),
                   runs={r: dict(step=s, time_s=t) for r, s, t in zip(runs, _nan_to_none(at_step), _nan_to_none(at_time))})
        for label, arr in (("step", at_step), ("time_s", at_time)):
            a = arr[np.isfinite(arr)]
            ttt[f"{label}_mean"] = float(a.mean()) if len(a) else None
            ttt[f"{label}_sd"] = float(a.std(ddof=1)) if len(a) > 1 else None
        if applies:
            out["time_to_target"][name] = ttt
    for c in conds if applies else []:
        finals = np.array([r.metrics["val_loss"] for r in c.finished_runs if "val_loss" in r.metrics])
        if len(finals):
            out["speedrun"][c.name] = st.one_sample_less(finals, settings["target"])
    if baseline is None or baseline not in val:
        return out, val, train
    bgrid, bmat, btmat, _ = val[baseline]
    b_final = [r.metrics["val_loss"] for c in conds if c.name == baseline
               for r in c.finished_runs if "val_loss" in r.metrics]
    level = float(np.mean(b_final)) if b_final else None
    _, bmean, _ = st.mean_sd(bmat)
    _, btmean, _ = st.mean_sd(btmat)
    for name, (grid, mat, tmat, _) in val.items():
        if name == baseline:
            continue
        common = np.union1d(bgrid, grid)
        gap, lo, hi = st.gap_ci(_on_grid(bgrid, bmat, common), _on_grid(grid, mat, common))
        keep = np.isfinite(gap)
        out["gaps"][name] = dict(steps=_nan_to_none(common[keep]), gap=_nan_to_none(gap[keep]),
                                 low=_nan_to_none(lo[keep]), high=_nan_to_none(hi[keep]))
        if level is None:
            continue
        _, vmean, _ = st.mean_sd(mat)
        _, vtmean, _ = st.mean_sd(tmat)
        b_step = st.first_crossing(bgrid, bmean, level)[0]
        v_step = st.first_crossing(grid, vmean, level)[0]
        b_time = st.first_crossing(btmean / 1000.0, bmean, level)[0]
        v_time = st.first_crossing(vtmean / 1000.0, vmean, level)[0]
        iso = dict(level=level, baseline_step=_nan_to_none([b_step])[0], variant_step=_nan_to_none([v_step])[0],
                   baseline_time_s=_nan_to_none([b_time])[0], variant_time_s=_nan_to_none([v_time])[0],
                   speedup_steps=None, speedup_time=None)
        if iso["baseline_step"] and iso["variant_step"]:
            iso["speedup_steps"] = iso["baseline_step"] / iso["variant_step"]
        if iso["baseline_time_s"] and iso["variant_time_s"]:
            iso["speedup_time"] = iso["baseline_time_s"] / iso["variant_time_s"]
        out["iso_loss"][name] = iso
    return out, val, train


def _env_summary(runs):
    keys = ["device", "gpus", "gpu_name", "torch", "cuda", "python", "git_commit", "git_dirty", "hostname"]
    out = {}
    for k in keys:
        vals = sorted({repr(r.env.get(k)) for r in runs if k in r.env})
        if vals:
            out[k] = [eval_repr(v) for v in vals]
    return out


def eval_repr(s):
    """Inverse of repr for the plain JSON scalars we store (str, int, float, bool, None)."""
    import ast
    try:
        return ast.literal_eval(s)
    except (ValueError, SyntaxError):
        return s


@dataclass
class ConditionSummary(st.Record):
    name: str
    source: str
    path: str
    runs: int = 0
    finished: int = 0
    planned_seeds: list = field(default_factory=list)
    not_started: list = field(default_factory=list)
    outcomes: dict = field(default_factory=dict)
    seeds: list = field(default_factory=list)
    finished_seeds: list = field(default_factory=list)
    scripts: list = field(default_factory=list)
    env: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    command: object = None
    git_commit: str = None
    git_dirty: bool = None
    nproc_per_node: int = None
    nnodes: int = None
    cuda_visible_devices: str = None
    started: str = None
    cost: cost_mod.CostSummary = None


@dataclass
class RunRow(st.Record):
    condition: str
    name: str
    seed: int = None
    status: str = None
    outcome: str = None
    reason: str = None
    steps_completed: int = None
    total_steps: int = None
    metrics: dict = field(default_factory=dict)
    cost: cost_mod.RunCost = None


@dataclass
class Stage(st.Record):
    name: str
    baseline: str = None
    conditions: list = field(default_factory=list)
    runs: list = field(default_factory=list)
    metrics: list = field(default_factory=list)
    descriptive: dict = field(default_factory=dict)
    missing: dict = field(default_factory=dict)
    comparisons: list = field(default_factory=list)
    dynamics: Dynamics = None
    sweeps: list = field(default_factory=list)
    rules: list = field(default_factory=list)
    plan: list = field(default_factory=list)
    cost: cost_mod.CostSummary = None
    notes: list = field(default_factory=list)


def _steps_of(cond):
    """The step count of a condition's finished runs (the most common), or None."""
    steps = [r.steps_completed for r in cond.finished_runs if isinstance(r.steps_completed, int)]
    if not steps:
        return None
    vals, counts = np.unique(steps, return_counts=True)
    return int(vals[np.argmax(counts)])


def acceptance(conds, baseline, settings, val_curves, target_applies):
    """The speedrun's acceptance rules for one stage (analysis/rules.py)."""
    cfg = settings["rules"]
    out = []
    finals = {c.name: _values(c, "val_loss")[0] for c in conds}
    if target_applies:
        for c in conds:
            x = finals[c.name]
            if not len(x):
                continue
            out.append(rules.main_track(c.name, x, cfg))
            grid, mat = None, None
            if c.name in val_curves:
                grid, mat, _, run_names = val_curves[c.name]
                fin_names = [r.name for r in c.finished_runs if "val_loss" in r.metrics]
                if run_names != fin_names:
                    grid = mat = None
            out.append(rules.opt_track(c.name, x, cfg, grid, mat))
            prev = settings.get("previous_record")
            if prev:
                out.append(rules.pairwise("previous record", prev[0], int(prev[1]), prev[2], float(x.mean()), len(x),
                                          _steps_of(c), cfg))
                out[-1].subject = f"{c.name} vs previous record"
    if baseline is not None and len(finals.get(baseline, [])):
        bcond = next(c for c in conds if c.name == baseline)
        for c in conds:
            if c.name == baseline or not len(finals[c.name]):
                continue
            b, v = finals[baseline], finals[c.name]
            if target_applies:
                r = rules.pairwise(baseline, float(b.mean()), len(b), _steps_of(bcond), float(v.mean()), len(v),
                                   _steps_of(c), cfg)
                r.subject = f"{c.name} vs {baseline}"
                out.append(r)
            r = rules.margin_test(f"{c.name} vs {baseline}", b, v, cfg)
            out.append(r)
    return out


def make_plan(conds, baseline, comparisons, settings, cond_costs, target_applies):
    """The seed planner's rows for one stage (analysis/planner.py), on val_loss."""
    cfg, rate = settings["rules"], settings.get("rate")
    out = []

    def hours(name):
        cs = cond_costs.get(name)
        if cs is None:
            return None, None
        if cs.gpu_hours_per_run is not None:
            return cs.gpu_hours_per_run, "GPU-hours"
        return cs.cpu_hours_per_run, ("CPU-hours" if cs.cpu_hours_per_run is not None else None)

    if target_applies:
        for c in conds:
            h, unit = hours(c.name)
            out.extend(planner.plan_condition(c.name, _values(c, "val_loss")[0], cfg, h, unit, rate))
    eq = settings["equivalence"].get("val_loss")
    for cmp_ in comparisons:
        if cmp_.metric != "val_loss" or not cmp_.testable:
            continue
        bcond = next(c for c in conds if c.name == cmp_.baseline)
        vcond = next(c for c in conds if c.name == cmp_.variant)
        b, b_runs = _values(bcond, "val_loss")
        v, v_runs = _values(vcond, "val_loss")
        pd = None
        if cmp_.primary is not None and cmp_.primary.test == "paired t":
            sb, sv = _seed_map(b_runs, "val_loss"), _seed_map(v_runs, "val_loss")
            pd = np.array([sv[s] - sb[s] for s in cmp_.paired_seeds])
        margin = (eq[0] / 100 * abs(cmp_.mean_b) if eq[1] else eq[0]) if eq else None
        hb, ub = hours(cmp_.baseline)
        hv, uv = hours(cmp_.variant)
        out.extend(planner.plan_comparison(cmp_.variant, cmp_.baseline, b, v, pd, margin, (hb, hv),
                                           ub if ub == uv else None, rate))
    return out


def stage_metrics(stage, conds, settings, notes=None):
    """The metrics of a stage: those requested (--metrics) that a finished run reports, or every
    metric a finished run reports; a requested metric that none reports gets a note."""
    found = sorted({m for c in conds for r in c.finished_runs for m in r.metrics}, key=metric_sort_key)
    if not settings["metrics"]:
        return found
    for m in settings["metrics"]:
        if m not in found and notes is not None:
            notes.append(f"metric {m!r} (from --metrics) is in no finished run of stage {stage}")
    return [m for m in settings["metrics"] if m in found]


def stages_of(conditions):
    """[(stage, its conditions)] in stage order (conditions keep their order)."""
    by_stage = {}
    for c in conditions:
        by_stage.setdefault(c.stage, []).append(c)
    return [(name, by_stage[name]) for name in sorted(by_stage)]


def analyse_stage(stage, conds, settings):
    names = [c.name for c in conds]
    baseline = settings["baseline"] if settings["baseline"] in names else None
    notes = []
    if baseline is None:
        swb, where = plans_mod.recorded_baseline(conds, names)
        if swb is not None:
            baseline = swb
            notes.append(f"stage {stage}: no condition named {settings['baseline']!r}; "
                         + (f"the sweep's first value {swb!r} (sweep.json)" if where == "sweep.json"
                            else f"the plan's baseline {swb!r} (plan.json)") + " is the baseline of its comparisons")
    for c in conds:
        notes.extend(c.notes)
        for r in c.runs:
            notes.extend(r.notes)
    metrics = stage_metrics(stage, conds, settings, notes)
    if baseline is None and len(conds) > 1:
        notes.append(f"stage {stage}: no condition named {settings['baseline']!r}, so no comparisons "
                     f"(conditions: {', '.join(names)}; choose one with --baseline NAME)")
    conditions, runs_table = [], []
    configs, cond_costs, all_costs = {}, {}, []
    rate = settings.get("rate")
    for c in conds:
        counts = {}
        for r in c.runs:
            counts[r.outcome] = counts.get(r.outcome, 0) + 1
        exp = c.experiment or {}
        configs[c.name] = condition_config(c)
        scripts = sorted({r.script for r in c.runs if r.script} | ({exp["script"]} if isinstance(exp.get("script"), str) else set()))
        planned = exp.get("seeds") if isinstance(exp.get("seeds"), list) else []
        present = {r.seed for r in c.runs}
        not_started = sorted(s_ for s_ in planned if isinstance(s_, int) and s_ not in present)
        costs = [(r.name, cost_mod.run_cost(r.cost, r.metrics, r.env)) for r in c.runs]
        cond_costs[c.name] = cost_mod.summarise(costs, rate)
        all_costs.extend(costs)
        conditions.append(ConditionSummary(
            name=c.name, source=c.source, path=c.path, runs=len(c.runs), finished=len(c.finished_runs),
            planned_seeds=planned, not_started=not_started,
            outcomes=counts, seeds=sorted(r.seed for r in c.runs if r.seed is not None),
            finished_seeds=sorted(r.seed for r in c.finished_runs if r.seed is not None),
            scripts=scripts, env=_env_summary(c.runs), config=configs[c.name],
            command=exp.get("command") if isinstance(exp.get("command"), (str, list)) else None,
            git_commit=exp.get("git_commit"), git_dirty=exp.get("git_dirty"),
            nproc_per_node=exp.get("nproc_per_node"), nnodes=exp.get("nnodes"),
            cuda_visible_devices=exp.get("CUDA_VISIBLE_DEVICES"), started=exp.get("start_time") or exp.get("started"),
            cost=cond_costs[c.name]))
        for r, (_, rc) in zip(c.runs, costs):
            runs_table.append(RunRow(condition=c.name, name=r.name, seed=r.seed, status=r.status, outcome=r.outcome,
                                     reason=r.reason, steps_completed=r.steps_completed, total_steps=r.total_steps,
                                     metrics=dict(sorted(r.metrics.items())), cost=rc))
    descriptive, missing = {}, {}
    for c in conds:
        descriptive[c.name], missing[c.name] = {}, {}
        for m in metrics:
            vals, _ = _values(c, m)
            descriptive[c.name][m] = st.describe(vals, rng_for(settings["seed"], stage, c.name, m, "describe"),
                                                 settings["resamples"])
            lacking = len(c.finished_runs) - len(vals)
            if lacking:
                missing[c.name][m] = lacking
    comparisons = []
    if baseline is not None:
        bcond = next(c for c in conds if c.name == baseline)
        for c in conds:
            if c.name == baseline:
                continue
            for m in metrics:
                comparisons.append(compare(bcond, c, m, settings, stage))
    dynamics, val_curves, train_curves = training_dynamics(conds, baseline, settings)
    # every sweep (a plan's groups, a runner sweep, or inferred from the configs): analysis/plans.py
    sweeps = plans_mod.stage_sweeps(conds, conditions, descriptive, metrics, cond_costs, configs, find_sweeps(configs))
    applies = dynamics.target_applies
    stage_rules = acceptance(conds, baseline, settings, val_curves, applies) if "val_loss" in metrics else []
    plan = make_plan(conds, baseline, comparisons, settings, cond_costs, applies) if "val_loss" in metrics else []
    return Stage(name=stage, baseline=baseline, conditions=conditions, runs=runs_table, metrics=metrics,
                 descriptive=descriptive, missing=missing, comparisons=comparisons, dynamics=dynamics,
                 sweeps=sweeps, rules=stage_rules, plan=plan, cost=cost_mod.summarise(all_costs, rate),
                 notes=notes), (val_curves, train_curves)


def apply_holm(stages, alpha=st.ALPHA):
    """Holm-Bonferroni over the report's whole family: the primary test of every comparison x
    metric, plus every equivalence (TOST) test. Writes p_holm/significant back into each entry."""
    family = []
    for s in stages:
        for c in s["comparisons"]:
            if c.get("primary") and c["primary"]["p"] is not None:
                family.append((c["primary"], dict(stage=s["name"], variant=c["variant"], metric=c["metric"],
                                                  test=c["primary"]["test"])))
            if c.get("tost") and c["tost"]["p"] is not None:
                family.append((c["tost"], dict(stage=s["name"], variant=c["variant"], metric=c["metric"],
                                               test=f"TOST +-{c['tost']['margin_spec']}")))
    adj = st.holm([f[0]["p"] for f in family])
    rows = []
    for (entry, info), pa in zip(family, adj):
        entry["p_holm"] = float(pa)
        entry["significant"] = bool(pa < alpha)
        rows.append(dict(info, p=entry["p"], p_holm=float(pa), significant=bool(pa < alpha)))
    return rows


def verdict(c, alpha=st.ALPHA):
    """The label of one comparison, from explicit rules (see docs/analyze.md)."""
    if c["n_b"] == 0 or c["n_v"] == 0:
        return "no data"
    if not c["testable"]:
        return "not testable (n < 2)"
    if c["deterministic"] and c["diff"] == 0:
        return "identical"
    tost = c.get("tost")
    if tost and (tost.get("significant") or (tost["deterministic"] and tost["within"])):
        return "equivalent"
    if c["deterministic"]:
        return "identical" if c["diff"] == 0 else "deterministic difference"
    prim = c.get("primary")
    if prim and prim.get("significant"):
        if c["better"] is None:
            return "significant difference"
        return "significantly better" if c["better"] else "significantly worse"
    power = (c.get("power") or {}).get("achieved")
    if power is not None and power < 0.8:
        return "inconclusive (underpowered)"
    return "no significant difference"


def decision(c):
    """The first screen's word for a comparison: better / worse / equivalent / different /
    inconclusive (from the verdict; see docs/analyze.md)."""
    v = c.verdict
    if v == "significantly better":
        return "better"
    if v == "significantly worse":
        return "worse"
    if v in ("equivalent", "identical"):
        return "equivalent"
    if v == "deterministic difference":
        return "different" if c.better is None else ("better" if c.better else "worse")
    if v == "significant difference":
        return "different"
    return "inconclusive"


def caveats(c, alpha=st.ALPHA):
    """Reasons to distrust a comparison's label, as short sentences. A significant primary test is
    checked against the distribution-free tests of the same design: the sign-flip permutation and
    Wilcoxon tests for a paired t-test, the permutation and Mann-Whitney tests for Welch's."""
    out = []
    if not c["testable"] or c["deterministic"]:
        return out
    prim = c.get("primary") or {}
    if prim.get("significant"):
        if prim.get("test") == "paired t":
            pr = c.get("paired") or {}
            exact = dict(p=pr.get("signflip_p"), min_p=pr.get("signflip_min_p"), name="sign-flip permutation test",
                         design=f"{pr.get('n')} pairs")
            rank = dict(p=pr.get("wilcoxon_p"), name="Wilcoxon signed-rank test")
        else:
            pm = c.get("permutation") or {}
            exact = dict(p=pm.get("p"), min_p=pm.get("min_p"), name="permutation test",
                         design=f"{c['n_b']} vs {c['n_v']} runs")
            rank = dict(p=(c.get("mann_whitney") or {}).get("p"), name="Mann-Whitney test")
        floor = exact["min_p"] is not None and exact["min_p"] > alpha
        if floor:
            out.append(f"the exact {exact['name']} cannot reach p < {alpha:g} with {exact['design']} "
                       f"(smallest possible p = {exact['min_p']:.3g}); the conclusion rests on the t-test's normality assumption")
        elif exact["p"] is not None and exact["p"] >= alpha:
            out.append(f"the {exact['name']} does not agree (p = {exact['p']:.3g})")
        if rank["p"] is not None and rank["p"] >= alpha and not floor:
            out.append(f"the {rank['name']} does not agree (p = {rank['p']:.3g})")
    if c["n_b"] != c["n_v"]:
        out.append(f"unequal n ({c['n_b']} vs {c['n_v']})")
    return out


def analyse(conditions, settings):
    """All stages. Returns (results dict, curves for the figures)."""
    stages, curves = [], {}
    for name, conds in stages_of(conditions):
        res, cv = analyse_stage(name, conds, settings)
        stages.append(res)
        curves[name] = cv
    family = apply_holm(stages)
    for s in stages:
        for c in s.comparisons:
            c.verdict = verdict(c)
            c.decision = decision(c)
            c.caveats = caveats(c)
    return dict(stages=stages, family=family), curves
