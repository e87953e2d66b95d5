"""Stage files: the built-in stages as data (plans/<stage>.toml), read with tomllib into StageSpec.

A stage file holds top-level keys describing the stage, a [flags] table of its hyperparameters and
one [[conditions]] table per condition (variant). The schema (docs/runner.md, "Stage files"):

    description = "one line for --help"          # may name a flag as {num_iterations}
    kind = "gpu"            # gpu: the 124M model (refuses CPU without --preset) | any | cpu
    order = 10              # position in --help
    processes = 1           # processes (GPUs) per run per node on GPUs; --gpus overrides
    seeds = [42, 43]
    warmdown_ratio = [284, 1000]   # --iterations N rescales --warmdown_iters to round(N*284/1000)
    iterations_env = "VAR"  # an environment variable that replaces num_iterations (warm-down rescaled)
    baseline = "baseline"   # the condition the others are compared with
    primary_metric = "val_loss"
    force = false           # true: every invocation reruns (the smoke test)
    default_logs = "logs/smoke"

    [flags]                 # the stage's hyperparameters; --preset replaces them for train_gpt* scripts
    num_iterations = 1000

    [[conditions]]
    name = "palm"           # the run directory <stage>/<name>/seed_<S>/
    script = "train_gpt_palm.py"
    flags = { lmd = "moderate" }   # after the stage's flags (a flag given twice keeps the later one)
    processes = 1           # fixed processes for this condition (--gpus does not change it)
    seeds = [1, 2]          # instead of the stage's

Flag values: strings (written as they are), integers, floats, and booleans (true: a bare --flag;
false: left out). Unknown keys, duplicate condition names and wrong types are refused with one line
naming the file and key (PlanError). This module never imports torch.
"""
import os
import re
import tomllib
from dataclasses import dataclass, field

PLANS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "plans")
KINDS = ("gpu", "any", "cpu")
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.=+-]*$")
FLAG_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Keys a stage file and a condition may hold, with their types (a later extension adds to these).
STAGE_KEYS = {
    "description": str, "kind": str, "order": int, "processes": int, "seeds": list, "warmdown_ratio": list,
    "iterations_env": str, "baseline": str, "primary_metric": str, "force": bool, "default_logs": str,
    "flags": dict, "conditions": list,
}
CONDITION_KEYS = {"name": str, "script": str, "flags": dict, "processes": int, "seeds": list}


class PlanError(Exception):
    """A stage file that cannot be used; the message is one line naming the file and the key."""


@dataclass
class Condition:
    name: str
    script: str
    flags: list = field(default_factory=list)  # ["--lmd", "moderate", ...] in file order
    processes: int | None = None               # None: the stage's (or --gpus)
    seeds: list | None = None                  # None: the stage's (or --seeds)


@dataclass
class StageSpec:
    name: str
    description: str = ""
    kind: str = "gpu"
    order: int = 1000
    processes: int = 1
    seeds: list = field(default_factory=lambda: [42, 43, 44])
    warmdown_ratio: tuple | None = None        # (num, den) or None: no --warmdown_iters under --iterations
    flags: list = field(default_factory=list)  # the stage's hyperparameter flags, as words
    conditions: list = field(default_factory=list)
    baseline: str | None = None
    primary_metric: str = "val_loss"
    force: bool = False
    default_logs: str | None = None
    path: str | None = None                    # the file it came from
    dir_name: str | None = None                # the directory under <logs> (default: name)

    @property
    def stage_dir(self):
        return self.dir_name or self.name

    def help_lines(self):
        """The two lines --help prints for this stage."""
        return [f"  {self.name:<8} {self.description}",
                f"  {'':<8}   seeds: {' '.join(map(str, self.seeds))}; flags: {' '.join(self.flags) or '(script defaults)'}"]


def flag_words(table, where, negatable=()):
    """{"lmd": "moderate", "compile": True} -> ["--lmd", "moderate", "--compile"]. false leaves a flag
    out, except a flag in `negatable` (the script has --no-NAME, checked by runner/plans.py): --no-NAME."""
    words = []
    for key, val in table.items():
        if not FLAG_RE.match(key):
            raise PlanError(f"{where}: '{key}' is not a flag name (letters, digits, _)")
        if isinstance(val, bool):
            if val:
                words.append(f"--{key}")
            elif key in negatable:
                words.append(f"--no-{key}")
        elif isinstance(val, (int, float, str)):
            text = str(val)
            if not text or text.startswith("--"):
                raise PlanError(f"{where}.{key}: the value '{text}' is empty or looks like a flag")
            words += [f"--{key}", text]
        else:
            raise PlanError(f"{where}.{key}: a flag value must be a string, number or true/false")
    return words


def _check_keys(table, known, where):
    for key, val in table.items():
        if key not in known:
            raise PlanError(f"{where}: unknown key '{key}' (known: {', '.join(sorted(known))})")
        want = known[key]
        if want is int and isinstance(val, bool) or not isinstance(val, want):
            raise PlanError(f"{where}: '{key}' must be a {want.__name__}, got {type(val).__name__}")


def _seeds(val, where):
    if not val or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in val):
        raise PlanError(f"{where}: seeds must be a non-empty list of non-negative integers")
    return list(val)


def parse_header(data, name, path="<stage>", env=None, known=None):
    """A StageSpec from a parsed stage file's top-level keys, without its conditions. `known`: the
    top-level keys allowed (default STAGE_KEYS; a user plan file allows a few more, runner/plans.py)."""
    env = os.environ if env is None else env
    _check_keys(data, known or STAGE_KEYS, path)
    spec = StageSpec(name=name, path=path)
    spec.description = data.get("description", "")
    spec.kind = data.get("kind", "gpu")
    if spec.kind not in KINDS:
        raise PlanError(f"{path}: kind '{spec.kind}' must be one of {', '.join(KINDS)}")
    spec.order = data.get("order", 1000)
    spec.processes = data.get("processes", 1)
    if spec.processes < 1:
        raise PlanError(f"{path}: processes must be >= 1")
    if "seeds" in data:
        spec.seeds = _seeds(data["seeds"], f"{path}: seeds")
    if "warmdown_ratio" in data:
        r = data["warmdown_ratio"]
        if len(r) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in r) or r[1] == 0:
            raise PlanError(f"{path}: warmdown_ratio must be [warm-down iterations, iterations], e.g. [284, 1000]")
        spec.warmdown_ratio = (r[0], r[1])
    flags = dict(data.get("flags", {}))
    var = data.get("iterations_env")
    if var and env.get(var):
        if not env[var].isdigit() or int(env[var]) < 1:
            raise PlanError(f"{var}: '{env[var]}' is not a positive integer (it sets {name}'s iterations)")
        flags["num_iterations"] = int(env[var])
        if spec.warmdown_ratio and "warmdown_iters" in flags:
            flags["warmdown_iters"] = scaled_warmdown(int(env[var]), spec.warmdown_ratio)
    spec.flags = flag_words(flags, f"{path}: flags")
    try:
        spec.description = spec.description.format(**{k: v for k, v in flags.items()})
    except (KeyError, IndexError, ValueError) as e:
        raise PlanError(f"{path}: description names {e}, which is not among its flags")
    spec.baseline = data.get("baseline")
    spec.primary_metric = data.get("primary_metric", "val_loss")
    spec.force = data.get("force", False)
    spec.default_logs = data.get("default_logs")
    return spec


def check_condition(c, where, seen, known=None):
    """The checks every [[conditions]] table gets: a table, known keys of the right types, a name
    (a directory name, not used before) and a trainer script name. Adds the name to `seen`."""
    if not isinstance(c, dict):
        raise PlanError(f"{where} must be a table ([[conditions]])")
    _check_keys(c, known or CONDITION_KEYS, where)
    for key in ("name", "script"):
        if key not in c:
            raise PlanError(f"{where}: '{key}' is missing")
    if not NAME_RE.match(c["name"]):
        raise PlanError(f"{where}: name '{c['name']}' must be letters, digits and _ . = + - (a directory name)")
    if c["name"] in seen:
        raise PlanError(f"{where}: condition name '{c['name']}' is used twice")
    seen.add(c["name"])
    if "/" in c["script"] or not c["script"].endswith(".py"):
        raise PlanError(f"{where}: script '{c['script']}' should be a trainer script name, e.g. train_gpt.py")
    if c.get("processes", 1) < 1:
        raise PlanError(f"{where}: processes must be >= 1")


def parse_stage(data, name, path="<stage>", env=None):
    """A StageSpec from a parsed stage file (a dict). `env` supplies iterations_env (os.environ)."""
    spec = parse_header(data, name, path, env)
    seen = set()
    for i, c in enumerate(data.get("conditions", [])):
        where = f"{path}: conditions[{i}]"
        check_condition(c, where, seen)
        spec.conditions.append(Condition(
            name=c["name"], script=c["script"], flags=flag_words(c.get("flags", {}), f"{where}.flags"),
            processes=c.get("processes"), seeds=_seeds(c["seeds"], f"{where}: seeds") if "seeds" in c else None))
    if not spec.conditions:
        raise PlanError(f"{path}: no [[conditions]]: a stage needs at least one")
    if spec.baseline is not None and spec.baseline not in seen:
        raise PlanError(f"{path}: baseline '{spec.baseline}' is not one of the conditions")
    return spec


def read_toml(path):
    """The parsed TOML file, or a one-line PlanError."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise PlanError(f"{path}: cannot read it ({e.strerror})")
    except tomllib.TOMLDecodeError as e:
        raise PlanError(f"{path}: not valid TOML ({e})")
    except UnicodeDecodeError:
        raise PlanError(f"{path}: not a text file (TOML is UTF-8 text)")


def load_stage_file(path, name=None, env=None):
    name = name or os.path.splitext(os.path.basename(path))[0]
    return parse_stage(read_toml(path), name, path, env)


def builtin_names(plans_dir=PLANS_DIR):
    try:
        return sorted(f[:-5] for f in os.listdir(plans_dir) if f.endswith(".toml"))
    except OSError:
        return []


def load_builtin(name, plans_dir=PLANS_DIR, env=None):
    """The built-in stage `name` (plans/<name>.toml), or None when there is no such file."""
    path = os.path.join(plans_dir, f"{name}.toml")
    if not NAME_RE.match(name) or not os.path.isfile(path):
        return None
    return load_stage_file(path, name, env)


def load_all(plans_dir=PLANS_DIR, env=None):
    """Every built-in stage, in --help order."""
    specs = [load_builtin(n, plans_dir, env) for n in builtin_names(plans_dir)]
    return sorted(specs, key=lambda s: (s.order, s.name))


def scaled_warmdown(iterations, ratio):
    """round(iterations * num / den), halves up, in integers (as the bash runner computed it)."""
    num, den = ratio
    return (iterations * num + den // 2) // den
