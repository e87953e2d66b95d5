"""The plan (runner/plan.py, runner/stages.py) as pure functions, and the dry run of every built-in
stage against the bash runner's output captured before the Python port (tests/data/, made by
tests/data/capture_dryrun.py from the 864-line run_experiments.sh).

The dry-run comparison calls the runner in-process (runner.cli.main with the environment the shell
would give it), so its 169 cases take a second; test_the_shell_entry_gives_the_same_dry_run runs a
few through ./run_experiments.sh itself. Differences from the bash runner are allowed only where
issue 11 changed behaviour, each named in `expected_difference` below.
"""
import json
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from runner import cli  # noqa: E402
from runner.plan import Node, Options, UsageError, make_plan, merge_flags, place, shq  # noqa: E402
from runner.stages import PlanError, load_all, load_builtin, parse_stage, scaled_warmdown  # noqa: E402

FIXTURE = os.path.join(REPO, "tests", "data", "runner_dryrun_bash.json")
with open(FIXTURE) as f:
    CASES = json.load(f)


# ----------------------------------------------------------------------------- the dry runs, old vs new

def run_inprocess(case, cwd, capsys, extra=()):
    argv = list(case["argv"])
    if extra:
        cut = argv.index("--") if "--" in argv else len(argv)
        argv = argv[:cut] + list(extra) + argv[cut:]
    env = {"RUNNER_SMI_GPUS": str(case["gpus"]), "RUNNER_ROOT": REPO, "PYTHON": "python", "OMP_NUM_THREADS": "1",
           "PWD": str(cwd), "PATH": os.environ.get("PATH", "")}
    env.update(case["env"])
    if "CUDA_VISIBLE_DEVICES" in case["env"]:
        env["RUNNER_CVD_FROM_USER"] = "1"
    else:  # what the shell exports: every GPU nvidia-smi lists
        env["RUNNER_CVD_FROM_USER"] = "0"
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(case["gpus"]))
    capsys.readouterr()
    old_cwd = os.getcwd()
    os.chdir(cwd)
    try:
        rc = cli.main(argv, env)
    finally:
        os.chdir(old_cwd)
    out, err = capsys.readouterr()
    norm = lambda s: s.replace(REPO, "{REPO}").replace(str(cwd), "{CWD}")  # noqa: E731
    return {"rc": rc, "stdout": norm(out), "stderr": norm(err)}


def without_embnorm_warmdown(text):
    return "\n".join(re.sub(r" --warmdown_iters \d+", "", ln) if "train_mini_embnorm.py" in ln else ln
                     for ln in text.split("\n"))


def per_run_gpus(line):
    """A bash-runner command line with CUDA_VISIBLE_DEVICES cut to the run's own process count."""
    m = re.match(r"(\s+cd \S+ && CUDA_VISIBLE_DEVICES=)([0-9,]+)( .*)", line)
    if not m:
        return line
    n = re.search(r"--nproc_per_node=(\d+)", line)
    return m.group(1) + ",".join(m.group(2).split(",")[: int(n.group(1)) if n else 1]) + m.group(3)


def packed_runs(stdout):
    """[(CUDA_VISIBLE_DEVICES, command without it, wave number)] of a packed dry run."""
    runs, wave = [], -1
    for ln in stdout.splitlines():
        if ln.startswith("-- runs "):
            wave += 1
        m = re.match(r"\s+cd \S+ && CUDA_VISIBLE_DEVICES=(\S*) (.*)", ln)
        if m:
            runs.append((m.group(1), m.group(2), wave))
    return runs


# The bash runner's demo counts, given to every case that sets none: the defaults have changed since
# (runner/cli.py; test_the_demo_runs_its_default_counts checks them).
BASH_DEMO_COUNTS = {"DEMO_TINY_ITERS": "60", "DEMO_EMBNORM_ITERS": "100", "DEMO_EMBNORM_SEEDS": "5"}


@pytest.mark.parametrize("i", range(len(CASES)), ids=[" ".join(c["argv"][:4]) + f" gpus={c['gpus']}" for c in CASES])
def test_dry_run_matches_the_bash_runner(i, tmp_path, capsys):
    case = dict(CASES[i], env={**BASH_DEMO_COUNTS, **CASES[i]["env"]})
    new = run_inprocess(case, tmp_path, capsys)
    if case["argv"][0] == "--help":
        # the new options (--no-pack, --usd-per-gpu-hour, preflight) add lines; every old line stays
        # but the two on CUDA_VISIBLE_DEVICES, which now name the per-run GPU sets
        new_lines = new["stdout"].splitlines()
        for line in case["stdout"].splitlines():
            if line.startswith(("Environment: CUDA_VISIBLE_DEVICES", "CPU) before any Python starts.")):
                counts = re.search(r"counts \(\d+ / \d+\)", line)
                assert counts is None or counts.group(0) in new["stdout"]
                continue
            assert line in new_lines, line
        assert new["rc"] == 0
        return
    old = {k: case[k] for k in ("rc", "stdout", "stderr")}
    if case["argv"][0] == "smoke" and "--iterations" in case["argv"]:
        # behaviour change: --iterations no longer gives train_mini_embnorm.py a --warmdown_iters it
        # does not have (the bash runner's smoke --iterations N failed those three runs)
        old["stdout"] = without_embnorm_warmdown(old["stdout"])
    # behaviour changes (issue 16): the compile setting is explicit, "--compile on" where the bash runner
    # passed a bare --compile (the trainers read both as on) and "--compile on|off" for --compile /
    # --no-compile (the bash runner passed nothing to train_mini_embnorm.py, nor for --no-compile: the
    # trainers' auto compiled on CUDA); each run sees as many GPUs as it has processes; a script that is
    # not distributed runs on node 0 alone (tests/test_runner_gpu_paths.py checks these directly)
    if ("--nnodes" in case["argv"] or case["env"].get("NNODES", "1") != "1") and "train_mini_embnorm.py" in old["stdout"]:
        return
    old["stdout"] = re.sub(r" --compile(?= )", " --compile on", old["stdout"])
    def explicit_compile_dropped(out):
        if "--no-compile" in case["argv"]:
            out["stdout"] = out["stdout"].replace(" --compile off", "")
        elif "--compile" in case["argv"]:
            out["stdout"] = "\n".join(ln.replace(" --compile on", "", 1) if "train_mini_embnorm.py" in ln else ln
                                      for ln in out["stdout"].split("\n"))
        return out
    new = explicit_compile_dropped(new)
    old["stdout"] = "\n".join(per_run_gpus(ln) for ln in old["stdout"].split("\n"))
    if new == old:
        return
    # behaviour change: packing. With --no-pack the output is the bash runner's, to the byte...
    assert explicit_compile_dropped(run_inprocess(case, tmp_path, capsys, ["--no-pack"])) == old, case["argv"]
    # ...and packed, the same commands run, several at once on disjoint GPU sets with their own ports.
    assert case["gpus"] == 8 and new["rc"] == 0 and "   packed: " in new["stdout"]
    runs = packed_runs(new["stdout"])
    strip = lambda c: re.sub(r"--standalone |--nnodes=1 |--rdzv_backend=c10d |--rdzv_endpoint=\S+ |--rdzv_id=\S+ ", "", c)  # noqa: E731
    old_cmds = [strip(m.group(1)) for m in re.finditer(r"(?m)^\s+cd \S+ && CUDA_VISIBLE_DEVICES=\S* (.*)$", old["stdout"])]
    assert [strip(c) for _, c, _ in runs] == old_cmds
    for wave in {w for _, _, w in runs}:
        sets = [set(cvd.split(",")) for cvd, _, w in runs if w == wave]
        assert sum(map(len, sets)) == len(set().union(*sets)), f"wave {wave} shares a GPU"
        ports = [re.search(r"rdzv_endpoint=(\S+)", c).group(1) for _, c, w in runs if w == wave and "rdzv" in c]
        assert len(ports) == len(set(ports))


def test_the_demo_runs_its_default_counts(tmp_path, capsys):
    """No DEMO_* variables: tiny at DEMO_TINY_ITERS_DEFAULT iterations (plans/tiny.toml's own count, so the
    tiny stage run alone matches), embnorm at DEMO_EMBNORM_ITERS_DEFAULT on its first DEMO_EMBNORM_SEEDS_DEFAULT
    seeds, written to embnorm_demo/."""
    tiny, emb, n_seeds = cli.DEMO_TINY_ITERS_DEFAULT, cli.DEMO_EMBNORM_ITERS_DEFAULT, cli.DEMO_EMBNORM_SEEDS_DEFAULT
    spec = load_builtin("tiny", env={})
    warmdown = scaled_warmdown(tiny, spec.warmdown_ratio)
    assert spec.flags == ["--preset", "tiny", "--num_iterations", str(tiny), "--warmdown_iters", str(warmdown)]
    out = run_inprocess({"argv": ["demo", "--dry-run"], "gpus": 0, "env": {}}, tmp_path, capsys)
    assert out["rc"] == 0, out
    cmds = [ln for ln in out["stdout"].splitlines() if "&& CUDA_VISIBLE_DEVICES=" in ln]
    tiny_cmds = [c for c in cmds if "train_gpt" in c]
    emb_cmds = [c for c in cmds if "train_mini_embnorm.py" in c]
    assert len(tiny_cmds) == 6 and len(emb_cmds) == 3 * n_seeds == len(cmds) - 6
    assert all(f"--num_iterations {tiny} --warmdown_iters {warmdown} " in c for c in tiny_cmds)
    assert all(f"--num_iterations {emb} " in c and "/embnorm_demo/" in c for c in emb_cmds)
    seeds = load_builtin("embnorm").seeds[:n_seeds]
    assert sorted({int(re.search(r"--seed (\d+)", c).group(1)) for c in emb_cmds}) == seeds
    assert f"note: it runs seeds {' '.join(map(str, seeds))} of the study's 5 (DEMO_EMBNORM_SEEDS)" in out["stdout"]
    assert f"at {tiny} iterations" in out["stdout"] and f"the embnorm study at {emb} " in out["stdout"]


@pytest.mark.parametrize("var, value", [("DEMO_EMBNORM_SEEDS", "0"), ("DEMO_EMBNORM_SEEDS", "two"),
                                        ("DEMO_EMBNORM_ITERS", "x")])
def test_a_bad_demo_count_is_one_line(var, value, tmp_path, capsys):
    out = run_inprocess({"argv": ["demo", "--dry-run"], "gpus": 0, "env": {var: value}}, tmp_path, capsys)
    assert out["rc"] == 2 and out["stdout"] == ""
    assert out["stderr"] == f"run_experiments.sh: {var}: '{value}' is not a positive integer\n"


def test_the_shell_entry_gives_the_same_dry_run(tmp_path):
    """A few cases through ./run_experiments.sh itself (bash: GPU detection, CUDA_VISIBLE_DEVICES, exec)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    os.symlink(sys.executable, bindir / "python")
    smi = tmp_path / "gpu" / "nvidia-smi"
    smi.parent.mkdir()
    smi.write_text("#!/bin/sh\n" + "".join(f"echo 'GPU {i}: Fake GPU (UUID: GPU-{i})'\n" for i in range(8)))
    smi.chmod(0o755)
    picked = [c for c in CASES if c["argv"][:2] in (["stage_c", "--logs"], ["embnorm", "--jobs"], ["stage_a", "--device"])]
    assert len(picked) >= 4
    for case in picked:
        argv = case["argv"] + (["--no-pack"] if case["gpus"] else [])
        path = f"{smi.parent}:{bindir}:/usr/bin:/bin" if case["gpus"] else f"{bindir}:/usr/bin:/bin"
        env = {"PATH": path, "PYTHON": "python", "OMP_NUM_THREADS": "1", "HOME": str(tmp_path)}
        p = subprocess.run(["bash", os.path.join(REPO, "run_experiments.sh"), *argv], capture_output=True, text=True,
                           env=env, cwd=tmp_path, timeout=60)
        old = re.sub(r" --compile(?= )", " --compile on", case["stdout"])  # explicit now (issue 16)
        assert (p.returncode, p.stdout.replace(REPO, "{REPO}"), p.stderr.replace(REPO, "{REPO}")) == \
            (case["rc"], old, case["stderr"]), case["argv"]


# ----------------------------------------------------------------------------- the plan, by hand

def opts(**kw):
    kw.setdefault("logs", "/L")
    kw.setdefault("scripts_dir", "/S")
    return Options(**kw)


def gpus(n):
    return Node(gpus=[str(i) for i in range(n)])


def todo(plan, o):
    return place(list(plan.runs), plan, o)


def test_stage_a_on_eight_gpus_runs_all_eight_at_once_on_their_own_gpu():
    o = opts()
    plan = make_plan(load_builtin("stage_a"), o, gpus(8))
    runs = todo(plan, o)
    assert (plan.device, plan.slots, plan.slot_size) == ("cuda", 8, 1)
    assert [r.cvd for r in runs] == [str(i) for i in range(8)] and {r.wave for r in runs} == {0}
    assert [(r.variant, r.seed) for r in runs[:5]] == [("baseline", 42), ("palm", 42), ("depthwarm", 42),
                                                      ("curriculum", 42), ("baseline", 43)]
    assert all(r.port == 29500 + r.slot for r in runs)


def test_stage_b_on_eight_gpus_runs_two_four_gpu_runs_and_rotates_the_sets():
    o = opts()
    plan = make_plan(load_builtin("stage_b"), o, gpus(8))
    runs = todo(plan, o)
    assert (plan.slots, plan.slot_size) == (2, 4)
    got = [(r.variant, r.seed, r.wave, r.cvd, r.port) for r in runs]
    assert got == [("baseline", 42, 0, "0,1,2,3", 29500), ("palm", 42, 0, "4,5,6,7", 29501),
                   ("baseline", 43, 1, "4,5,6,7", 29501), ("palm", 43, 1, "0,1,2,3", 29500),
                   ("baseline", 44, 2, "0,1,2,3", 29500), ("palm", 44, 2, "4,5,6,7", 29501)]
    from runner.plan import launch_argv
    argv = launch_argv(runs[1], o)
    assert "--rdzv_endpoint=localhost:29501" in argv and "--nproc_per_node=4" in argv and "--standalone" not in argv


def test_no_pack_several_nodes_and_full_nodes_run_one_at_a_time():
    for stage, o, node, cvd in (("stage_a", opts(pack=False), gpus(8), "0"),
                                ("stage_c", opts(), gpus(8), "0,1,2,3,4,5,6,7"),
                                ("stage_a", opts(nnodes=2, rdzv_endpoint="h:1"), gpus(8), "0"),
                                ("stage_b", opts(), gpus(7), "0,1,2,3")):
        plan = make_plan(load_builtin(stage), o, node)
        runs = todo(plan, o)
        assert plan.slots == 1 and {r.cvd for r in runs} == {cvd} and {r.port for r in runs} == {None}, stage
        assert [r.wave for r in runs] == list(range(len(runs)))


def test_gpu_counts_odd_sizes_and_refusals():
    o = opts()
    # floor(8/3) = 2 runs of 3 GPUs (a batch that 3 processes can split)
    plan = make_plan(load_builtin("stage_b"), opts(nproc=3, extra=["--batch_size", "384"]), gpus(8))
    runs = todo(plan, o)
    assert (plan.slots, [r.cvd for r in runs[:2]]) == (2, ["0,1,2", "3,4,5"])
    with pytest.raises(UsageError, match="global batch of 512 sequences over the 3 processes.*--gpus 4 or 8 or 16"):
        make_plan(load_builtin("stage_b"), opts(nproc=3), gpus(8))  # the record's 512 cannot be split in 3
    with pytest.raises(UsageError, match="wants 8 GPU.*shows 2; pass --gpus 2"):
        make_plan(load_builtin("stage_c"), o, gpus(2))
    with pytest.raises(UsageError, match="nvidia-smi shows none"):
        make_plan(load_builtin("stage_c"), o, gpus(0))
    plan = make_plan(load_builtin("stage_c"), opts(preset="tiny"), gpus(0))  # the design on CPU
    assert plan.device == "cpu" and {r.cvd for r in todo(plan, o)} == {""}
    assert all("--preset" in r.args and "--compile" not in r.args for r in plan.runs)


def test_mixed_process_counts_get_sets_sized_to_the_largest_run():
    o = opts(device="cuda")
    plan = make_plan(load_builtin("smoke"), o, gpus(8))
    runs = todo(plan, o)
    assert (plan.slots, plan.slot_size) == (4, 2)
    two = [r for r in runs if r.variant == "baseline_2proc"][0]
    assert len(two.cvd.split(",")) == 2  # rank 1 has a GPU of its own


def test_flags_iterations_warmdown_and_overrides():
    assert scaled_warmdown(100, (1450, 5100)) == 28 and scaled_warmdown(30, (284, 1000)) == 9
    assert scaled_warmdown(5, (45, 150)) == 2  # 1.5 rounds up
    assert merge_flags(["--a", "1", "--b", "--a", "2", "--c", "3"], ["--c=9"]) == ["--b", "--a", "2"]
    o = opts(iterations=100, extra=["--batch_size", "64"])
    plan = make_plan(load_builtin("stage_a"), o, gpus(1))
    # the stage's flags, then --iterations' (later wins), less what -- overrides; then the runner's own
    assert plan.runs[0].args == ["--device_batch_size", "16", "--val_loss_every", "25", "--num_iterations", "100",
                                 "--warmdown_iters", "28", "--compile", "on", "--device", "cuda", "--batch_size", "64"]


@pytest.mark.parametrize("word", ["", "a b", "a'b", "x*y", "~a", "a~", "#a", "a=b", "a,b", "a:b", "a^b", "a!b",
                                  "a{b}", "a[b]", "$x", "a`b", "a\\b", 'a"b', "a|b;c&d", "(x)<y>", "a\tb", "a\nb",
                                  "é", "\x01", "/p/train_*.bin", "--lr=0.1", "x?", "-1"])
def test_shell_quoting_matches_bash(word):
    p = subprocess.run(["bash", "-c", 'printf %q "$1"', "_", word], capture_output=True, text=True)
    assert shq(word) == p.stdout


# ----------------------------------------------------------------------------- stage files

def test_every_builtin_stage_file_loads_and_lists_in_help_order():
    names = [s.name for s in load_all()]
    assert names == ["stage_a", "stage_b", "stage_c", "lmd", "embnorm", "tiny", "smoke"]
    for s in load_all():
        assert s.conditions and s.description and s.kind in ("gpu", "any", "cpu")


def test_iterations_env_sets_the_count_and_rescales_the_warmdown():
    spec = load_builtin("tiny", env={"DEMO_TINY_ITERS": "5"})
    assert spec.flags == ["--preset", "tiny", "--num_iterations", "5", "--warmdown_iters", "2"]
    assert "5 iterations" in spec.description
    with pytest.raises(PlanError, match="DEMO_TINY_ITERS: 'x' is not a positive integer"):
        load_builtin("tiny", env={"DEMO_TINY_ITERS": "x"})


@pytest.mark.parametrize("data, says", [
    ({"kind": "gpu", "colour": 1, "conditions": [{"name": "a", "script": "t.py"}]}, "unknown key 'colour'"),
    ({"conditions": [{"name": "a", "script": "t.py"}, {"name": "a", "script": "u.py"}]}, "'a' is used twice"),
    ({"kind": "tpu", "conditions": [{"name": "a", "script": "t.py"}]}, "kind 'tpu'"),
    ({"conditions": [{"name": "a", "script": "t.py", "flagz": {}}]}, "conditions[0]: unknown key 'flagz'"),
    ({"conditions": [{"name": "a"}]}, "'script' is missing"),
    ({"conditions": []}, "no [[conditions]]"),
    ({"seeds": [1, -2], "conditions": [{"name": "a", "script": "t.py"}]}, "seeds must be"),
    ({"processes": "4", "conditions": [{"name": "a", "script": "t.py"}]}, "'processes' must be a int"),
    ({"baseline": "b", "conditions": [{"name": "a", "script": "t.py"}]}, "baseline 'b' is not one of"),
    ({"flags": {"lr": [1, 2]}, "conditions": [{"name": "a", "script": "t.py"}]}, "flags.lr: a flag value"),
    ({"conditions": [{"name": "../x", "script": "t.py"}]}, "must be letters"),
])
def test_bad_stage_files_are_refused_with_one_line_naming_file_and_key(data, says):
    with pytest.raises(PlanError) as e:
        parse_stage(data, "mine", "plans/mine.toml", env={})
    msg = str(e.value)
    assert msg.startswith("plans/mine.toml") and says in msg and "\n" not in msg


def test_flag_values_become_words():
    spec = parse_stage({"flags": {"lr": 0.5, "name": "x", "compile": True, "off": False, "n": 3},
                        "conditions": [{"name": "a", "script": "t.py", "flags": {"n": 4}}]}, "s", env={})
    assert spec.flags == ["--lr", "0.5", "--name", "x", "--compile", "--n", "3"]
    assert spec.conditions[0].flags == ["--n", "4"]
