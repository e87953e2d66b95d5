"""Plan files (runner/plans.py, analysis/plans.py, docs/plans.md): grid and zip expansion and naming,
the one-line refusals (unknown keys and flags, duplicates, empty expansions), --variants, the built-in
stage files read as plans, a plan run through the runner with a stand-in trainer (skip on re-run,
diverged runs recorded, plan.json), the automatic reading of a sweep against hand-worked cases, and the
example plan (plans/examples/tiny_study.toml) run end to end on the real train_gpt.py.
"""
import json
import math
import os
import re
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from runner import plans  # noqa: E402
from runner.stages import PlanError, load_builtin  # noqa: E402
from analysis import plans as aplans  # noqa: E402

RUNNER = os.path.join(REPO, "run_experiments.sh")
EXAMPLE = os.path.join(REPO, "plans", "examples", "tiny_study.toml")

# A stand-in trainer with real argparse flags (what the plan's flags are checked against) that writes
# the run-directory contract in milliseconds: val_loss = (log10(lr) + 2)^2 + 1 + batch_size/1000,
# status diverged (exit 3) when lr > 1.
STANDIN = textwrap.dedent('''
    import argparse, json, math, os, sys
    p = argparse.ArgumentParser()
    for f in ("--out_dir", "--device", "--preset"):
        p.add_argument(f, default="")
    for f in ("--seed", "--num_iterations", "--warmdown_iters", "--batch_size"):
        p.add_argument(f, type=int, default=32)
    p.add_argument("--learning_rate", type=float, default=0.01)
    p.add_argument("--muon_nesterov", action=argparse.BooleanOptionalAction, default=True)
    a = p.parse_args()
    os.makedirs(a.out_dir, exist_ok=True)
    diverged = a.learning_rate > 1
    loss = (math.log10(a.learning_rate) + 2) ** 2 + 1 + a.batch_size / 1000
    with open(os.path.join(a.out_dir, "summary.json"), "w") as f:
        json.dump({"schema": 1, "status": "diverged" if diverged else "ok",
                   "error": "non-finite train loss at step 2" if diverged else None, "script": "standin.py",
                   "seed": a.seed, "steps_completed": 2 if diverged else 4,
                   "metrics": {} if diverged else {"val_loss": loss, "wall_time_s": 1.0},
                   "config": vars(a)}, f)
    print("step:4/4 val_loss:%.4f train_time:1ms step_avg:0.25ms" % loss)
    sys.exit(3 if diverged else 0)
''')


def standin_loss(lr, bs=32):
    return (math.log10(lr) + 2) ** 2 + 1 + bs / 1000


@pytest.fixture
def scripts(tmp_path):
    d = tmp_path / "scripts"
    d.mkdir()
    (d / "standin.py").write_text(STANDIN)
    return d


def write_plan(tmp_path, body, name="p.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


def load(tmp_path, scripts, body):
    return plans.load_plan(write_plan(tmp_path, body), sys.executable, str(scripts), env=dict(os.environ))


def runner(args, cwd, timeout=600):
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    for k in ("NNODES", "NODE_RANK", "RDZV_ENDPOINT", "RDZV_BACKEND", "USD_PER_GPU_HOUR"):
        env.pop(k, None)
    nogpu = os.path.join(str(cwd), "nogpu_bin")  # no nvidia-smi: the plan runs on CPU whatever this machine has
    os.makedirs(nogpu, exist_ok=True)
    env["PATH"] = f"{nogpu}:{os.path.dirname(sys.executable)}:{env.get('PATH', '')}"
    return subprocess.run(["bash", RUNNER, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)


BASE = """
    kind = "cpu"
    seeds = [1]
    baseline = "base"
    [[conditions]]
    name = "base"
    script = "standin.py"
"""


# ----------------------------------------------------------------------------- expansion and naming

def test_grid_is_the_cartesian_product_zip_pairs_and_names_say_the_values(tmp_path, scripts):
    spec = load(tmp_path, scripts, BASE + """
    [[conditions]]
    name = "g"
    script = "standin.py"
    flags = { num_iterations = 4 }
    grid = { batch_size = [16, 64], learning_rate = [0.01, 0.002, 0.04] }
    [[conditions]]
    name = "z"
    script = "standin.py"
    zip = { batch_size = [8, 128], learning_rate = [5e-4, 0.003] }
    prefix = "tuned_"
    [[conditions]]
    name = "plain_momentum"
    script = "standin.py"
    flags = { muon_nesterov = false }
    """)
    names = [c.name for c in spec.conditions]
    # product order: the first flag slowest; values written as the trainer gets them
    assert names == ["base",
                     "batch_size=16,learning_rate=0.01", "batch_size=16,learning_rate=0.002",
                     "batch_size=16,learning_rate=0.04", "batch_size=64,learning_rate=0.01",
                     "batch_size=64,learning_rate=0.002", "batch_size=64,learning_rate=0.04",
                     "tuned_batch_size=8,learning_rate=0.0005", "tuned_batch_size=128,learning_rate=0.003",
                     "plain_momentum"]
    c = {c.name: c for c in spec.conditions}
    assert c["batch_size=64,learning_rate=0.002"].flags == ["--num_iterations", "4", "--batch_size", "64",
                                                           "--learning_rate", "0.002"]
    assert c["tuned_batch_size=128,learning_rate=0.003"].flags == ["--batch_size", "128", "--learning_rate", "0.003"]
    # false for a flag the script can negate (BooleanOptionalAction) is --no-NAME, not silence
    assert c["plain_momentum"].flags == ["--no-muon_nesterov"]
    rec = spec.plan_record
    assert rec["conditions"]["tuned_batch_size=8,learning_rate=0.0005"] == {
        "group": "z", "script": "standin.py", "swept": {"batch_size": 8, "learning_rate": 0.0005}}
    kinds = {g["name"]: (g["kind"], g["axes"]) for g in rec["groups"]}
    assert kinds == {"base": ("single", []), "g": ("grid", [["batch_size"], ["learning_rate"]]),
                     "z": ("zip", [["batch_size", "learning_rate"]]), "plain_momentum": ("single", [])}


def test_variants_take_names_with_commas_and_group_names(tmp_path, scripts):
    spec = load(tmp_path, scripts, BASE + """
    [[conditions]]
    name = "g"
    script = "standin.py"
    grid = { batch_size = [16, 64], learning_rate = [0.01, 0.02] }
    [[conditions]]
    name = "lr"
    script = "standin.py"
    grid = { learning_rate = [0.1, 0.2] }
    """)
    plans.select(spec, "base,batch_size=64,learning_rate=0.02 lr")
    assert [c.name for c in spec.conditions] == ["base", "batch_size=64,learning_rate=0.02",
                                                 "learning_rate=0.1", "learning_rate=0.2"]
    with pytest.raises(PlanError, match="'nope' is neither a condition nor a group"):
        plans.select(spec, "base,nope")


# ----------------------------------------------------------------------------- refusals: one line, file and key

@pytest.mark.parametrize("extra, says", [
    ('colour = "red"\n', r"p\.toml: unknown key 'colour'"),
    ('[[conditions]]\nname = "x"\nscript = "standin.py"\ngird = { learning_rate = [1] }\n',
     r"p\.toml: conditions\[1\]: unknown key 'gird'"),
    ('[[conditions]]\nname = "base"\nscript = "standin.py"\n', r"conditions\[1\]: condition name 'base' is used twice"),
    ('[[conditions]]\nname = "x"\nscript = "standin.py"\ngrid = { learning_rate = [] }\n',
     r"conditions\[1\]\.grid\.learning_rate: the list is empty"),
    ('[[conditions]]\nname = "x"\nscript = "standin.py"\ngrid = {}\n', r"conditions\[1\]\.grid is empty"),
    ('[[conditions]]\nname = "x"\nscript = "standin.py"\nzip = { batch_size = [1, 2], learning_rate = [0.1] }\n',
     r"conditions\[1\]\.zip: the lists must pair up.*batch_size: 2, learning_rate: 1"),
    ('[[conditions]]\nname = "x"\nscript = "standin.py"\ngrid = { learning_rate = [0.1, 0.1] }\n',
     r"grid\.learning_rate: the value 0\.1 is given twice"),
    ('[[conditions]]\nname = "x"\nscript = "standin.py"\nflags = { learning_rate = 1 }\n'
     'grid = { learning_rate = [0.1] }\n', r"conditions\[1\]\.flags: 'learning_rate' is also swept"),
    ('[[conditions]]\nname = "x"\nscript = "standin.py"\ngrid = { learning_rate = [0.1] }\n'
     '[[conditions]]\nname = "y"\nscript = "standin.py"\ngrid = { learning_rate = [0.1] }\n',
     r"conditions\[2\]: condition name 'learning_rate=0\.1' is used twice.*prefix"),
    ('[[conditions]]\nname = "x"\nscript = "standin.py"\nflags = { seed = 3 }\n', r"'seed' is set by the runner"),
    ('[[conditions]]\nname = "x"\nscript = "standin.py"\nflags = { learnig_rate = 0.1 }\n',
     r"conditions\[1\]\.flags: 'learnig_rate' is not a flag of standin\.py; did you mean learning_rate\?"),
    ('[[conditions]]\nname = "x"\nscript = "standin.py"\nzip = { batch_size = [1], lr = [0.1] }\n',
     r"conditions\[1\]\.zip: 'lr' is not a flag of standin\.py"),
    ('[flags]\nwarmup = 3\n', r"p\.toml: flags: 'warmup' is not a flag of standin\.py"),
    ('[[conditions]]\nname = "x"\nscript = "missing.py"\n', r"p\.toml: conditions\[1\]: script 'missing\.py' is not in "),
])
def test_bad_plans_are_refused_with_one_line_naming_file_and_key(tmp_path, scripts, extra, says):
    body = textwrap.dedent(BASE)
    # top-level keys must come before the first table
    body = extra + body if not extra.startswith("[") else body + extra
    path = write_plan(tmp_path, body)
    with pytest.raises(PlanError) as e:
        plans.load_plan(path, sys.executable, str(scripts), env=dict(os.environ))
    msg = str(e.value)
    assert "\n" not in msg and re.search(says, msg), msg


def test_baseline_naming_a_group_asks_for_one_of_its_conditions(tmp_path, scripts):
    path = write_plan(tmp_path, """
        baseline = "lr"
        [[conditions]]
        name = "lr"
        script = "standin.py"
        grid = { learning_rate = [0.1, 0.2] }
    """)
    with pytest.raises(PlanError, match=r"baseline 'lr' is a group of 2 conditions; name one of them, "
                                        r"e\.g\. 'learning_rate=0\.1'"):
        plans.load_plan(path, sys.executable, str(scripts), env=dict(os.environ))


def test_flags_come_from_the_dataclass_when_help_fails(tmp_path):
    d = tmp_path / "s"
    d.mkdir()
    # --help fails (an import that is not there), but the Hyperparameters dataclass names the flags
    (d / "t.py").write_text("import no_such_module_here\nfrom dataclasses import dataclass\n"
                            "@dataclass\nclass Hyperparameters:\n    lr: float = 0.1\n    depth: int = 2\n")
    (d / "u.py").write_text("raise SystemExit('no help here')\n")
    ok = write_plan(tmp_path, '[[conditions]]\nname = "a"\nscript = "t.py"\ngrid = { lr = [0.1, 0.2] }\n')
    assert len(plans.load_plan(ok, sys.executable, str(d)).conditions) == 2
    bad = write_plan(tmp_path, '[[conditions]]\nname = "a"\nscript = "t.py"\nflags = { width = 3 }\n', "b.toml")
    with pytest.raises(PlanError, match=r"conditions\[0\]\.flags: 'width' is not a flag of t\.py"):
        plans.load_plan(bad, sys.executable, str(d))
    none = write_plan(tmp_path, '[[conditions]]\nname = "a"\nscript = "u.py"\n', "c.toml")
    with pytest.raises(PlanError, match=r"cannot check the plan's flags: .*--help' failed \(exit code 1: no help here\)"):
        plans.load_plan(none, sys.executable, str(d))


def test_cli_refuses_a_bad_plan_with_one_line_and_exit_2(tmp_path, scripts):
    path = write_plan(tmp_path, BASE + '[[conditions]]\nname = "x"\nscript = "standin.py"\ngrid = { learning_rate = [] }\n')
    p = runner(["plan", path, "--scripts-dir", str(scripts), "--logs", str(tmp_path / "logs")], tmp_path)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "p.toml: conditions[1].grid.learning_rate: the list is empty" in lines[0], p.stderr
    assert not (tmp_path / "logs").exists()
    p = runner(["plan"], tmp_path)
    assert p.returncode == 2 and "name the plan file" in p.stderr


# ----------------------------------------------------------------------------- built-in stages are plan files

def test_help_lists_every_stage_file_and_the_plan_command(tmp_path):
    p = runner(["--help"], tmp_path)
    assert p.returncode == 0
    for f in os.listdir(os.path.join(REPO, "plans")):
        if f.endswith(".toml"):
            spec = load_builtin(f[:-5], env={})
            assert re.search(rf"^  {re.escape(spec.name)}\s+{re.escape(spec.description[:40])}", p.stdout, re.M), f
    assert "./run_experiments.sh plan FILE" in p.stdout


def test_a_copied_stage_file_runs_as_a_plan_with_the_same_commands(tmp_path):
    """A user starts from a built-in stage file: `plan plans/tiny.toml` plans the very runs of `tiny`."""
    logs = str(tmp_path / "logs")
    a = runner(["tiny", "--logs", logs, "--dry-run", "--seeds", "1,2"], tmp_path)
    b = runner(["plan", os.path.join(REPO, "plans", "tiny.toml"), "--logs", logs, "--dry-run", "--seeds", "1,2"], tmp_path)
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    cmds = lambda out: [line.strip() for line in out.splitlines() if "CUDA_VISIBLE_DEVICES=" in line]
    assert cmds(a.stdout) and cmds(a.stdout) == cmds(b.stdout)


# ----------------------------------------------------------------------------- a plan through the runner

def test_plan_runs_like_a_stage_records_plan_json_and_reads_as_sweeps(tmp_path, scripts):
    path = write_plan(tmp_path, """
        name = "study"
        kind = "cpu"
        seeds = [1]
        baseline = "learning_rate=0.01"
        [flags]
        num_iterations = 4
        [[conditions]]
        name = "lr"
        script = "standin.py"
        grid = { learning_rate = [0.001, 0.01, 0.1, 10.0, 100.0] }
        [[conditions]]
        name = "bl"
        script = "standin.py"
        grid = { batch_size = [16, 64], learning_rate = [0.01, 100.0] }
        [[conditions]]
        name = "no_nesterov"
        script = "standin.py"
        flags = { muon_nesterov = false }
    """)
    logs = tmp_path / "logs"
    dry = runner(["plan", path, "--scripts-dir", str(scripts), "--logs", str(logs), "--dry-run"], tmp_path)
    assert dry.returncode == 0 and not logs.exists(), dry.stderr
    assert dry.stdout.count("standin.py --seed 1") == 10
    p = runner(["plan", path, "--scripts-dir", str(scripts), "--logs", str(logs)], tmp_path)
    assert p.returncode == 1, p.stdout + p.stderr  # diverged runs are not ok; the others all ran
    stage = logs / "study"
    status = {d: json.loads((stage / d / "seed_1" / "summary.json").read_text())["status"]
              for d in os.listdir(stage) if (stage / d).is_dir()}
    assert status == {"learning_rate=0.001": "ok", "learning_rate=0.01": "ok", "learning_rate=0.1": "ok",
                      "learning_rate=10.0": "diverged", "learning_rate=100.0": "diverged",
                      "batch_size=16,learning_rate=0.01": "ok", "batch_size=16,learning_rate=100.0": "diverged",
                      "batch_size=64,learning_rate=0.01": "ok", "batch_size=64,learning_rate=100.0": "diverged",
                      "no_nesterov": "ok"}
    cfg = json.loads((stage / "no_nesterov" / "seed_1" / "summary.json").read_text())["config"]
    assert cfg["muon_nesterov"] is False
    rec = json.loads((stage / "plan.json").read_text())
    assert rec["plan"] == "study" and rec["baseline"] == "learning_rate=0.01"
    assert rec["conditions"]["batch_size=64,learning_rate=100.0"]["swept"] == {"batch_size": 64, "learning_rate": 100.0}
    # again: every finished (and diverged) run is skipped, nothing rewritten
    again = runner(["plan", path, "--scripts-dir", str(scripts), "--logs", str(logs)], tmp_path)
    assert again.stdout.count("summary.json says") == 10, again.stdout
    assert not list(stage.glob("plan.*.json"))  # the same plan: its record is kept as it is

    out = tmp_path / "rep" / "report.md"
    a = subprocess.run([sys.executable, os.path.join(REPO, "analyze.py"), "--logs", str(logs), "--out", str(out),
                        "--resamples", "200"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert a.returncode == 0, a.stdout + a.stderr
    text = out.read_text()
    res = json.loads((out.parent / "results.json").read_text())
    st = res["stages"][0]
    assert st["baseline"] == "learning_rate=0.01"  # the plan's baseline, though --baseline names another
    sw = {s["group"]: s for s in st["sweeps"] if s["group"]}
    lr = sw["lr"]
    rows = {r["condition"]: r for r in lr["rows"]}
    for v in (0.001, 0.01, 0.1):
        assert rows[f"learning_rate={v}"]["metric_mean"] == pytest.approx(standin_loss(v))
    reading = lr["tables"][0]["blocks"][0]["reading"]
    # the loss is smallest at lr 0.01 (log10 = -2); 0.1 is the last stable, 10.0 the first diverged
    assert reading["best"] == "0.01" and reading["threshold"] == {
        "direction": "above", "last_stable": "0.1", "first_diverged": "10.0"}
    assert "best learning_rate = 0.01 (val_loss 1.0320); stable up to 0.1, diverged from 10.0" in text
    # the 2 x 2 grid: a table per flag, a heat map (markdown and figure), a reading per batch size
    bl = sw["bl"]
    assert [t["axis"] for t in bl["tables"]] == [["batch_size"], ["learning_rate"]]
    assert "Heat map of `val_loss` over `batch_size` x `learning_rate`" in text
    heat_line = next(line for line in text.splitlines() if line.startswith("| batch_size=64 "))
    assert f"{standin_loss(0.01, 64):.4f}" in heat_line and "diverged" in heat_line
    assert "(`learning_rate` at batch_size=16): best learning_rate = 0.01" in text
    figs = re.findall(r"\]\(([^)]*_heatmap\.png)\)", text)
    assert figs and all((out.parent / f).stat().st_size > 0 for f in figs)
    # the single conditions against the baseline: +% from the hand-computed losses
    sweeps = text[text.index("## 6. Sweeps"):text.index("## 7.")]
    line = next(x for x in sweeps.splitlines() if x.startswith("| no_nesterov "))
    assert "+0.00%" in line and "1 finished" in line  # the stand-in ignores Nesterov: same loss as the baseline


# ----------------------------------------------------------------------------- the reading of a sweep

def _row(name, value, mean, finished=1, diverged=0, crashed=0):
    return dict(condition=name, swept={"x": value}, metric_mean=mean, finished=finished, diverged=diverged,
                crashed=crashed)


@pytest.mark.parametrize("rows, best, sentence", [
    ([_row("a", 1, 2.0), _row("b", 2, 1.5), _row("c", 3, 1.6), _row("d", 5, None, 0, 1), _row("e", 9, None, 0, 1)],
     "2", "best x = 2 (val_loss 1.5000); stable up to 3, diverged from 5 (the stability threshold lies between them)."),
    ([_row("a", 1, None, 0, 1), _row("b", 8, 3.0), _row("c", 32, 2.0)],
     "32", "best x = 32 (val_loss 2.0000); diverged up to 1, stable from 8 (the stability threshold lies between them)."),
    ([_row("a", 1, 2.0), _row("b", 2, None, 0, 1), _row("c", 3, 1.0)],
     "3", "best x = 3 (val_loss 1.0000); no single stability threshold: diverged at 2; stable at 1, 3."),
    # a value with a finished and a diverged seed is not stable; a crashed-only value is no evidence
    ([_row("a", 1, 2.0), _row("b", 2, 1.9, 1, 1), _row("c", 3, None, 0, 0, 1)],
     "2", "best x = 2 (val_loss 1.9000); stable up to 1, diverged from 2 (the stability threshold lies between them)."),
    ([_row("a", 1, 2.0), _row("b", 2, 1.0)], "2", "best x = 2 (val_loss 1.0000); no value diverged."),
])
def test_reading_names_the_best_value_and_the_threshold(rows, best, sentence):
    r = aplans.reading(rows, ["x"], "val_loss", False)
    assert r["best"] == best and r["sentence"] == sentence


# ----------------------------------------------------------------------------- the example, end to end

def test_example_plan_runs_end_to_end_and_reports_tables_heat_map_and_threshold(tmp_path):
    """plans/examples/tiny_study.toml on the real train_gpt.py: 4 iterations, a 1-layer 32-wide model
    and a small validation set (after --, so the plan's own flags stay as written)."""
    logs = tmp_path / "logs"
    shrink = ["--n_layer", "1", "--n_embd", "32", "--n_head", "2", "--sequence_length", "32", "--val_tokens", "2048"]
    p = runner(["plan", EXAMPLE, "--logs", str(logs), "--iterations", "4", "--jobs", "2", "--", *shrink], REPO)
    out = p.stdout + p.stderr
    assert p.returncode == 1, out  # the 1e30 run diverges; every other run finishes
    stage = logs / "tiny_study"
    runs = sorted(d for d in os.listdir(stage) if (stage / d).is_dir())
    assert len(runs) == 11
    st = {d: json.loads((stage / d / "seed_42" / "summary.json").read_text()) for d in runs}
    assert st["learning_rate=1e+30"]["status"] == "diverged"
    assert all(s["status"] == "ok" for d, s in st.items() if d != "learning_rate=1e+30"), out
    assert st["no_momentum"]["config"]["muon_momentum"] == 0 and st["no_warmdown"]["config"]["warmdown_iters"] == 0
    assert st["batch_size=64,learning_rate=0.028"]["config"]["batch_size"] == 64
    report = tmp_path / "report.md"
    a = subprocess.run([sys.executable, os.path.join(REPO, "analyze.py"), "--logs", str(logs), "--out", str(report),
                        "--resamples", "200"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert a.returncode == 0, a.stdout + a.stderr
    text = report.read_text()
    sweeps = text[text.index("## 6. Sweeps"):text.index("## 7.")]
    # the sweep tables: the LR sweep, the grid (one per flag), the zip, the single conditions
    assert "sweep over `learning_rate`** (plan group `lr`, grid)" in sweeps
    assert "By `batch_size` (at each `learning_rate`)" in sweeps and "By `learning_rate` (at each `batch_size`)" in sweeps
    assert "(plan group `batch_tuned`, zip)" in sweeps and "the plan's single conditions" in sweeps
    lr_rows = [line for line in sweeps.splitlines() if re.match(r"\| (0\.005|0\.02|1e\+30) +\| learning_rate=", line)]
    assert len(lr_rows) == 3 and all("CPU-hours" not in r for r in lr_rows)
    loss = st["learning_rate=0.02"]["metrics"]["val_loss"]
    row = next(r for r in lr_rows if "learning_rate=0.02 " in r)
    assert f"{loss:.4f}" in row and f"{math.exp(loss):.3f}"[:5] in row
    # the threshold sentence, between the last stable and the first diverged learning rate
    assert "stable up to 0.02, diverged from 1e+30" in sweeps
    # the heat map: markdown and a figure that exists
    assert "Heat map of `val_loss` over `batch_size` x `learning_rate`" in sweeps
    heat = re.findall(r"\]\(([^)]*_heatmap\.png)\)", sweeps)
    assert heat and (tmp_path / heat[0]).stat().st_size > 0
