"""User plan files: `./run_experiments.sh plan FILE [options]` (docs/plans.md).

A plan file is a stage file (runner/stages.py, docs/runner.md "Stage files") with three additions:

    name = "lr_study"          # the directory under <logs> (default: the file's name without .toml)

    [[conditions]]
    name = "lr"                # the group: --variants lr selects all its conditions
    script = "train_gpt.py"
    grid = { learning_rate = [0.005, 0.02, 1e30] }            # one condition per value (cartesian
                                                               # product when several flags)
    zip = { batch_size = [16, 64], learning_rate = [0.014, 0.028] }   # paired values, one axis
    prefix = "bs32_"           # optional: prepended to the expanded names

An expanded condition is named by its swept flags, `learning_rate=0.005` or
`batch_size=16,learning_rate=0.014` (prefix first), and runs into <logs>/<plan>/<that name>/seed_<S>/
like any stage. Every flag a plan names is checked against the script's `--help` (run once per script
as a subprocess; its Hyperparameters dataclass when --help fails) before anything runs. The runner
writes <logs>/<plan>/plan.json (record()): which flags each condition sweeps, for analyze.py.

The plan becomes a StageSpec, so it runs through the same code as every built-in stage (skip, rerun,
resume, packing, cost, --dry-run, --sequential). Never imports torch.
"""
import ast
import datetime
import difflib
import itertools
import json
import os
import re
import subprocess

from . import runinfo
from .stages import (CONDITION_KEYS, FLAG_RE, NAME_RE, STAGE_KEYS, Condition, PlanError, _seeds,
                     check_condition, flag_words, parse_header, read_toml)

PLAN_KEYS = dict(STAGE_KEYS, name=str)
PLAN_CONDITION_KEYS = dict(CONDITION_KEYS, grid=dict, zip=dict, prefix=str)
# flags the runner passes itself (its own options set them)
RUNNER_FLAGS = ("seed", "out_dir", "device", "resume", "save_every", "compile")
VALUE_RE = re.compile(r"^[A-Za-z0-9_.+-]+$")          # a swept value as it appears in a directory name
EXPANDED_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.=+,-]*$")
SCHEMA = 1
HELP_TIMEOUT_S = 300

_flag_cache = {}


def value_text(v):
    """A flag value as the trainer gets it and as expanded names show it."""
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _axis_values(vals, where):
    if not isinstance(vals, list):
        raise PlanError(f"{where}: a list of values is needed, e.g. [0.01, 0.02]")
    if not vals:
        raise PlanError(f"{where}: the list is empty (an empty expansion runs nothing)")
    for v in vals:
        if not isinstance(v, (str, int, float, bool)):
            raise PlanError(f"{where}: '{v}' is not a plain value (string, number or true/false)")
        if not VALUE_RE.match(value_text(v)) or (isinstance(v, str) and v.startswith("-")):
            raise PlanError(f"{where}: '{v}' is not a plain value (letters, digits, . _ + -)")
    texts = [value_text(v) for v in vals]
    dup = next((t for t in texts if texts.count(t) > 1), None)
    if dup is not None:
        raise PlanError(f"{where}: the value {dup} is given twice")
    return list(vals)


def axes_of(c, where):
    """[(flags, [value tuples])]: one axis per grid flag, one for the whole zip."""
    axes = []
    if "grid" in c:
        if not c["grid"]:
            raise PlanError(f"{where}.grid is empty: give each swept flag a list of values")
        for k, vals in c["grid"].items():
            if not FLAG_RE.match(k):
                raise PlanError(f"{where}.grid: '{k}' is not a flag name (letters, digits, _)")
            axes.append(((k,), [(v,) for v in _axis_values(vals, f"{where}.grid.{k}")]))
    if "zip" in c:
        z = c["zip"]
        if not z:
            raise PlanError(f"{where}.zip is empty: give each paired flag a list of values")
        lists = {}
        for k, vals in z.items():
            if not FLAG_RE.match(k):
                raise PlanError(f"{where}.zip: '{k}' is not a flag name (letters, digits, _)")
            if k in c.get("grid", {}):
                raise PlanError(f"{where}.zip.{k}: '{k}' is also in grid; sweep a flag in one of them")
            lists[k] = vals if isinstance(vals, list) else _axis_values(vals, f"{where}.zip.{k}")
        lengths = {k: len(v) for k, v in lists.items()}
        if len(set(lengths.values())) > 1:
            raise PlanError(f"{where}.zip: the lists must pair up, but their lengths differ ("
                            + ", ".join(f"{k}: {n}" for k, n in lengths.items()) + ")")
        for k, vals in lists.items():
            if not vals:
                raise PlanError(f"{where}.zip.{k}: the list is empty (an empty expansion runs nothing)")
            for v in vals:
                _axis_values([v], f"{where}.zip.{k}")
        tuples = list(zip(*lists.values()))
        texts = [",".join(map(value_text, t)) for t in tuples]
        dup = next((t for t in texts if texts.count(t) > 1), None)
        if dup is not None:
            raise PlanError(f"{where}.zip: the pair ({dup}) is given twice")
        axes.append((tuple(lists), tuples))
    for flags, _ in axes:
        for k in flags:
            if k in c.get("flags", {}):
                raise PlanError(f"{where}.flags: '{k}' is also swept (grid/zip); drop it from flags")
    return axes


def expand_condition(c, axes):
    """[(name, {flag: value})] of one [[conditions]] table, in product order (first axis slowest)."""
    if not axes:
        return [(c["name"], {})]
    out = []
    for combo in itertools.product(*[vals for _, vals in axes]):
        swept = {}
        for (flags, _), vals in zip(axes, combo):
            swept.update(zip(flags, vals))
        out.append((c.get("prefix", "") + ",".join(f"{k}={value_text(v)}" for k, v in swept.items()), swept))
    return out


# ----------------------------------------------------------------------------- the scripts' flags

def parse_help(text):
    """(flags, negatable) from an argparse --help text: every --name, and the names with a --no-name."""
    names = set(re.findall(r"(?:^|[\s,\[|(])--([A-Za-z_][A-Za-z0-9_-]*)", text))
    neg = {n[3:] for n in names if n.startswith("no-") and n[3:] in names}
    return names, neg


def dataclass_fields(source):
    """The field names of a class named Hyperparameters in a script's source (ast; nothing runs)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "Hyperparameters":
            return {s.target.id for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}
    return set()


def script_flags(python, scripts_dir, script, env=None):
    """(flags, negatable) of a trainer script: its --help run as a subprocess (the runner never imports
    torch), else its Hyperparameters dataclass. PlanError when neither tells."""
    path = os.path.join(scripts_dir, script)
    try:
        st = os.stat(path)
    except OSError:
        raise PlanError(f"{path}: the plan's script does not exist (--scripts-dir?)")
    key = (python, os.path.abspath(path), st.st_mtime_ns, st.st_size)
    if key in _flag_cache:
        return _flag_cache[key]
    why = ""
    try:
        p = subprocess.run([python, script, "--help"], cwd=scripts_dir, capture_output=True, text=True,
                           timeout=HELP_TIMEOUT_S, env=env, stdin=subprocess.DEVNULL)
        flags, neg = parse_help(p.stdout)
        if p.returncode == 0 and flags - {"help"}:
            _flag_cache[key] = (flags, neg)
            return flags, neg
        lines = (p.stderr or p.stdout).strip().splitlines()
        why = f"exit code {p.returncode}" + (f": {lines[-1][:160]}" if lines else "")
    except (OSError, subprocess.TimeoutExpired) as e:
        why = str(e)[:160]
    try:
        with open(path, encoding="utf-8") as f:
            fields = dataclass_fields(f.read())
    except (OSError, UnicodeDecodeError):
        fields = set()
    if not fields:
        raise PlanError(f"{path}: cannot check the plan's flags: '{python} {script} --help' failed ({why}) and the "
                        "script has no Hyperparameters dataclass")
    _flag_cache[key] = (fields, set())
    return fields, set()


def _unknown(flag, known, script, where):
    close = difflib.get_close_matches(flag, sorted(known), n=1)
    hint = f"; did you mean {close[0]}?" if close else f" (python {script} --help lists its flags)"
    return PlanError(f"{where}: '{flag}' is not a flag of {script}{hint}")


# ----------------------------------------------------------------------------- the plan

def parse_plan(data, path, python="python", scripts_dir=".", env=None, check_flags=True):
    """A StageSpec (with .plan_record) from a parsed plan file; PlanError names the file and the key."""
    if not isinstance(data.get("name", ""), str):
        raise PlanError(f"{path}: 'name' must be a str, got {type(data['name']).__name__}")
    name = data.get("name") or os.path.splitext(os.path.basename(path))[0]
    if not NAME_RE.match(name):
        raise PlanError(f"{path}: name '{name}' must be letters, digits and _ . = + - (it is a directory name)")
    spec = parse_header(data, name, path, env, known=PLAN_KEYS)
    stage_flags = dict(data.get("flags", {}))
    for k in stage_flags:
        if k in RUNNER_FLAGS:
            raise PlanError(f"{path}: flags: '{k}' is set by the runner (its options: --seeds, --logs, --device, "
                            "--resume, --save-every, --compile)")
    conds = data.get("conditions", [])
    if not conds:
        raise PlanError(f"{path}: no [[conditions]]: a plan needs at least one")
    groups, seen_groups, names = [], set(), {}
    for i, c in enumerate(conds):
        where = f"{path}: conditions[{i}]"
        check_condition(c, where, seen_groups, known=PLAN_CONDITION_KEYS)
        if "prefix" in c and not ("grid" in c or "zip" in c):
            raise PlanError(f"{where}: prefix names expanded conditions; this one has no grid or zip")
        if "prefix" in c and c["prefix"] and not NAME_RE.match(c["prefix"]):
            raise PlanError(f"{where}: prefix '{c['prefix']}' must be letters, digits and _ . = + -")
        axes = axes_of(c, where)
        for k in list(c.get("flags", {})) + [k for flags, _ in axes for k in flags]:
            if k in RUNNER_FLAGS:
                raise PlanError(f"{where}: '{k}' is set by the runner (its options: --seeds, --logs, --device, "
                                "--resume, --save-every, --compile)")
        members = expand_condition(c, axes)
        for n, _ in members:
            if not EXPANDED_RE.match(n):
                raise PlanError(f"{where}: the expanded name '{n}' is not a directory name")
            if n in names:
                raise PlanError(f"{where}: condition name '{n}' is used twice (also by conditions[{names[n]}]); "
                                "give one group a prefix")
            names[n] = i
        groups.append(dict(index=i, where=where, table=c, axes=axes, members=members))
    clash = next((g["table"]["name"] for g in groups if g["axes"] and g["table"]["name"] in names), None)
    if clash:
        raise PlanError(f"{path}: '{clash}' names a group of expanded conditions and a condition; rename one")
    if spec.baseline is not None and spec.baseline not in names:
        grp = next((g for g in groups if g["table"]["name"] == spec.baseline), None)
        if grp is not None:
            raise PlanError(f"{path}: baseline '{spec.baseline}' is a group of {len(grp['members'])} conditions; "
                            f"name one of them, e.g. '{grp['members'][0][0]}'")
        raise PlanError(f"{path}: baseline '{spec.baseline}' is not one of the conditions "
                        f"({', '.join(list(names)[:6])}{', ...' if len(names) > 6 else ''})")
    negatable = {}
    if check_flags:
        known = {}
        for g in groups:
            script = g["table"]["script"]
            if not os.path.isfile(os.path.join(scripts_dir, script)):
                raise PlanError(f"{g['where']}: script '{script}' is not in {scripts_dir} (--scripts-dir?)")
            if script not in known:
                known[script] = script_flags(python, scripts_dir, script, env)
            flags, neg = known[script]
            negatable[script] = neg
            for k in stage_flags:
                if k not in flags:
                    raise _unknown(k, flags, script, f"{path}: flags")
            for k in g["table"].get("flags", {}):
                if k not in flags:
                    raise _unknown(k, flags, script, f"{g['where']}.flags")
            for kind in ("grid", "zip"):
                for k in g["table"].get(kind, {}):
                    if k not in flags:
                        raise _unknown(k, flags, script, f"{g['where']}.{kind}")
        common = set.intersection(*[n for _, n in known.values()]) if known else set()
        spec.flags += [f"--no-{k}" for k, v in stage_flags.items() if v is False and k in common]
    record = {"schema": SCHEMA, "plan": name, "file": os.path.abspath(path), "baseline": spec.baseline,
              "primary_metric": spec.primary_metric, "groups": [], "conditions": {}}
    for g in groups:
        c, where = g["table"], g["where"]
        seeds = _seeds(c["seeds"], f"{where}: seeds") if "seeds" in c else None
        kind = "+".join(k for k in ("grid", "zip") if k in c) or "single"
        for n, swept in g["members"]:
            table = dict(c.get("flags", {}), **swept)
            spec.conditions.append(Condition(
                name=n, script=c["script"], processes=c.get("processes"), seeds=seeds,
                flags=flag_words(table, f"{where}.{'flags' if not swept else kind}", negatable.get(c["script"], ()))))
            record["conditions"][n] = {"group": c["name"], "script": c["script"], "swept": swept}
        record["groups"].append({"name": c["name"], "kind": kind, "script": c["script"],
                                 "axes": [list(flags) for flags, _ in g["axes"]], "flags": dict(c.get("flags", {})),
                                 "conditions": [n for n, _ in g["members"]]})
    spec.plan_record = record
    return spec


def load_plan(path, python="python", scripts_dir=".", env=None, check_flags=True):
    return parse_plan(read_toml(path), path, python, scripts_dir, env, check_flags)


def select(spec, text):
    """--variants for a plan: condition names (which may hold commas) or group names, separated by
    spaces or commas. Keeps only those conditions; PlanError names an unknown one."""
    names = [c.name for c in spec.conditions]
    groups = {}
    for n, info in spec.plan_record["conditions"].items():
        groups.setdefault(info["group"], []).append(n)
    chosen = []
    for word in text.split():
        parts = word.split(",")
        i = 0
        while i < len(parts):
            # the longest run of comma-separated parts that names a condition or a group
            for j in range(len(parts), i, -1):
                cand = ",".join(parts[i:j])
                if cand in names or cand in groups:
                    chosen += [cand] if cand in names else groups[cand]
                    i = j
                    break
            else:
                if parts[i]:
                    raise PlanError(f"--variants: '{parts[i]}' is neither a condition nor a group of plan "
                                    f"{spec.name} (groups: {', '.join(groups)})")
                i += 1
    spec.conditions = [c for c in spec.conditions if c.name in chosen]
    return spec


def record(logs, spec):
    """Write <logs>/<plan>/plan.json (which flags each condition sweeps); an earlier, different one is
    kept as plan.<utc>.json. Returns the path."""
    d = os.path.join(logs, spec.stage_dir)
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "plan.json")
    new = dict(spec.plan_record)
    if os.path.exists(path):
        try:
            with open(path) as f:
                old = json.load(f)
        except (OSError, ValueError):
            old = None
        if isinstance(old, dict) and {k: v for k, v in old.items() if k != "written"} == new:
            return path
        os.replace(path, os.path.join(d, f"plan.{runinfo.utc_stamp()}.json"))
    new["written"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    runinfo.atomic_write_json(path, new)
    return path


def for_cli(a, env):
    """The plan of `./run_experiments.sh plan FILE`: loaded, checked against its scripts, narrowed by
    --variants (a.variants is then cleared: the selection is made here)."""
    if not a.plan_file:
        raise PlanError("plan: name the plan file, e.g. ./run_experiments.sh plan docs/plans/seed_log_shape.toml")
    python = a.python or env.get("PYTHON") or "python"
    spec = load_plan(a.plan_file, python, a.scripts_dir, env)
    if a.variants_text:
        select(spec, a.variants_text)
        a.variants = None
    return spec
