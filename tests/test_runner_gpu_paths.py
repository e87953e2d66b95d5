"""Every multi-GPU and multi-node command the docs print, checked without a GPU (issue 16).

Commands are extracted from README.md, docs/*.md, run_experiments.sh and the trainers' docstrings:
- a `torchrun ...` line: its world size (nnodes x nproc_per_node) and flags go through the trainer's own
  argument parsing and start-up checks (parse_args + validate_static, which choose the device batch);
- a `./run_experiments.sh ...` line of a GPU stage, several nodes or --gpus: its dry run on a node with
  8 stand-in GPUs exits 0, and each printed command passes the same trainer checks at its world size,
  with CUDA_VISIBLE_DEVICES sized to its processes, and only node 0 launches a script that is not
  distributed.
"""
import ast
import glob
import importlib.util
import os
import re
import shlex
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from runner import cli, plan  # noqa: E402

DOCS = ["README.md", "run_experiments.sh", *sorted(glob.glob(os.path.join(REPO, "docs", "*.md"))),
        *sorted(glob.glob(os.path.join(REPO, "train_*.py")))]
GPU_STAGES = ("stage_a", "stage_b", "stage_c", "lmd")
# runner features whose dry run is not a list of trainer commands (tested in their own modules)
NOT_DRY_RUNS = ("--slurm", "--sequential", "preflight", "--help")
_modules = {}


def trainer(script):
    if script not in _modules:
        spec = importlib.util.spec_from_file_location(f"_gpu_paths_{script[:-3]}", os.path.join(REPO, script))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        _modules[script] = mod
    return _modules[script]


def doc_lines():
    """(file, logical line) with backslash continuations joined."""
    for path in DOCS:
        path = path if os.path.isabs(path) else os.path.join(REPO, path)
        text = open(path).read().replace("\\\n", " ")
        if path.endswith(".py"):  # a trainer's docstring, whose commands wrap across lines
            text = ast.get_docstring(ast.parse(text)).replace("\n", " ")
        for line in text.splitlines():
            yield os.path.relpath(path, REPO), line


def words_of(fragment):
    fragment = fragment.split("`")[0]
    fragment = re.split(r"\s#\s", fragment)[0]
    return shlex.split(fragment)


def torchrun_commands():
    out = []
    for f, line in doc_lines():
        for m in re.finditer(r"torchrun (--[^`#]*?\S+\.py[^`#]*)", line):  # up to a closing ` or a # comment
            out.append((f, "torchrun " + m.group(1).strip()))
    return out


def runner_commands():
    out = []
    for f, line in doc_lines():
        m = re.search(r"((?:[A-Z_]+=\S+ )*)\./run_experiments\.sh ([^`]*)", line)
        if not m:
            continue
        words = words_of(m.group(2))
        env = dict(w.split("=", 1) for w in m.group(1).split())
        if not words or any(w in NOT_DRY_RUNS for w in words):
            continue
        if words[0] in GPU_STAGES or "NNODES" in env or "--gpus" in words or "--device" in words:
            out.append((f, env, words))
    return out


def check_trainer_accepts(script, args, world, where):
    """The trainer's own start-up checks for these flags at this world size (device batch included)."""
    mod = trainer(script)
    # the device batch does not depend on the device: check a CUDA command's flags on this CPU
    args = ["cpu" if i and args[i - 1] == "--device" else w for i, w in enumerate(args)]
    try:
        a, given = mod.parse_args(args)
        mod.validate_static(a, world, given)
    except mod.ConfigError as e:
        raise AssertionError(f"{where}: {script} at {world} processes refuses: {e}") from None
    assert a.batch_size % (a.device_batch_size * world) == 0, where
    return a


def split_launch(words):
    """(processes per node, nodes, script, trainer args) of a launch command's words."""
    nproc, nnodes = 1, 1
    i = next(k for k, w in enumerate(words) if w.endswith(".py") and not w.startswith("-"))
    for w in words[:i]:
        if w.startswith("--nproc_per_node=") or w.startswith("--nproc-per-node="):
            nproc = int(w.split("=")[1])
        if w.startswith("--nnodes="):
            nnodes = int(w.split("=")[1])
    return nproc, nnodes, os.path.basename(words[i]), words[i + 1:]


def test_the_extraction_finds_the_documented_commands():
    tr, rn = torchrun_commands(), runner_commands()
    files = {f for f, _ in tr}
    assert {"README.md", "docs/train_gpt.md", "train_gpt.py"} <= files, files
    assert any("--nnodes=2" in c for _, c in tr) and any("NNODES" in e for _, e, _ in rn)
    assert len(tr) >= 10 and len(rn) >= 4, (tr, rn)


@pytest.mark.parametrize("where,cmd", torchrun_commands(), ids=lambda x: x if isinstance(x, str) and
                         len(x) < 40 else None)
def test_every_documented_torchrun_command_starts(where, cmd):
    nproc, nnodes, script, args = split_launch(words_of(cmd))
    args = [a for a in args if a not in ("...",)]
    check_trainer_accepts(script, args, nproc * nnodes, f"{where}: {cmd}")


def dry_run(argv, extra_env, tmp_path, capsys, gpus=8):
    env = {k: v for k, v in os.environ.items() if k not in ("NNODES", "NODE_RANK", "RDZV_ENDPOINT", "RDZV_BACKEND")}
    env.update(RUNNER_SMI_GPUS=str(gpus), RUNNER_CVD_FROM_USER="0", CUDA_VISIBLE_DEVICES=",".join(map(str, range(gpus))),
               RUNNER_ROOT=REPO, PYTHON="python", PWD=str(tmp_path))
    env.update(extra_env)
    capsys.readouterr()
    rc = cli.main([*argv, "--dry-run"], env)
    out, err = capsys.readouterr()
    return rc, out, err


def launches(out):
    """[(CUDA_VISIBLE_DEVICES, words)] of a dry run's commands."""
    found = []
    for line in out.splitlines():
        m = re.match(r"\s+cd \S+ && CUDA_VISIBLE_DEVICES=(\S*) (.*)$", line)
        if m:
            found.append((m.group(1).strip("'"), shlex.split(m.group(2))))
    return found


@pytest.mark.parametrize("where,env,words", runner_commands(), ids=lambda x: " ".join(x) if isinstance(x, list) else None)
def test_every_documented_runner_command_dry_runs_and_each_run_starts(where, env, words, tmp_path, capsys):
    words = [w.replace("/shared/", str(tmp_path) + "/") for w in words]
    rc, out, err = dry_run(words, env, tmp_path, capsys)
    assert rc == 0, f"{where}: {words}: {err}"
    runs = launches(out)
    assert runs, out
    for cvd, cmd in runs:
        nproc, nnodes, script, args = split_launch(cmd)
        assert len(cvd.split(",")) == nproc, (cvd, cmd)  # as many GPUs as processes on this node
        if plan.is_distributed(script):
            check_trainer_accepts(script, args, nproc * nnodes, f"{where}: {' '.join(cmd)}")
        else:
            assert env.get("NODE_RANK", "0") == "0" and "torch.distributed.run" not in cmd


# ----------------------------------------------------------------------------- issue 16's runner cases

def test_no_compile_passes_compile_off_and_compile_passes_on(tmp_path, capsys):
    for flag, want in (("--no-compile", "off"), ("--compile", "on")):
        for stage in ("stage_c", "embnorm"):
            rc, out, _ = dry_run([stage, flag], {}, tmp_path, capsys)
            runs = launches(out)
            assert rc == 0 and runs
            for _, cmd in runs:
                assert cmd[cmd.index("--compile") + 1] == want, cmd
            for _, cmd in runs:  # the trainer reads it as meant
                _, _, script, args = split_launch(cmd)
                if plan.is_distributed(script):
                    assert trainer(script).parse_args(args)[0].compile == want


def test_smoke_on_gpus_gives_its_two_process_run_two_devices(tmp_path, capsys):
    for extra in ([], ["--no-pack"]):
        rc, out, _ = dry_run(["smoke", "--device", "cuda", *extra], {}, tmp_path, capsys)
        assert rc == 0
        sizes = {split_launch(cmd)[2] + ("_2proc" if "--nproc_per_node=2" in " ".join(cmd) else ""):
                 len(cvd.split(",")) for cvd, cmd in launches(out)}
        assert sizes["train_gpt.py_2proc"] == 2 and sizes["train_gpt.py"] == 1, (extra, sizes)


def test_embnorm_on_two_nodes_runs_on_node_0_only(tmp_path, capsys):
    env = {"NNODES": "2", "RDZV_ENDPOINT": "node0:29500"}
    rc, out0, _ = dry_run(["embnorm"], dict(env, NODE_RANK="0"), tmp_path, capsys)
    rc1, out1, _ = dry_run(["embnorm"], dict(env, NODE_RANK="1"), tmp_path, capsys)
    assert rc == rc1 == 0
    runs0 = launches(out0)
    assert len(runs0) == 15 and all(cmd[0] == "python" and "torch.distributed.run" not in cmd for _, cmd in runs0)
    assert launches(out1) == [] and out1.count("not distributed: node 0 runs it alone") == 15
    # a mixed stage: node 1 joins the distributed run and leaves the rest to node 0
    rc1, out1, _ = dry_run(["smoke"], dict(env, NODE_RANK="1"), tmp_path, capsys)
    scripts = [split_launch(cmd)[2] for _, cmd in launches(out1)]
    assert rc1 == 0 and "train_mini_embnorm.py" not in scripts and "train_gpt.py" in scripts


def test_two_nodes_and_odd_gpu_counts_start_or_are_refused_before_anything_runs(tmp_path, capsys):
    env = {"NNODES": "2", "NODE_RANK": "0", "RDZV_ENDPOINT": "node0:29500"}
    for stage in GPU_STAGES:  # 2 nodes x the stage's GPUs (stage_c, lmd: 16 processes per run)
        rc, out, err = dry_run([stage], env, tmp_path, capsys)
        assert rc == 0, err
        for _, cmd in launches(out):
            nproc, nnodes, script, args = split_launch(cmd)
            a = check_trainer_accepts(script, args, nproc * nnodes, " ".join(cmd))
            assert nnodes == 2 and a.batch_size % (nproc * nnodes * a.device_batch_size) == 0
            assert stage not in ("stage_c", "lmd") or nproc * nnodes == 16
    for n in range(1, 9):  # every --gpus count: starts (device batch fitted), or one line before anything runs
        rc, out, err = dry_run(["stage_b", "--gpus", str(n)], {}, tmp_path, capsys)
        if 512 % n:
            assert rc == 2 and err.count("\n") == 1 and "does not divide it" in err and not out.strip()
        else:
            assert rc == 0
            for _, cmd in launches(out):
                nproc, nnodes, script, args = split_launch(cmd)
                check_trainer_accepts(script, args, nproc, " ".join(cmd))
    # stage_a's own device batch 16 does not fit 16 processes: left to the trainer, which picks 8
    rc, out, _ = dry_run(["stage_a", "--gpus", "16"], {}, tmp_path, capsys, gpus=16)
    _, cmd = launches(out)[0]
    assert rc == 0 and "--device_batch_size" not in cmd
    assert check_trainer_accepts("train_gpt.py", split_launch(cmd)[3], 16, "").device_batch_size == 8


def test_the_runner_constants_match_the_trainers():
    gpt = trainer("train_gpt.py")
    assert plan.RECORD_BATCH_SIZE == gpt.Hyperparameters().batch_size
    assert plan.TINY_BATCH_SIZE == gpt.PRESETS["tiny"]["batch_size"]
    for path in glob.glob(os.path.join(REPO, "train_*.py")):
        name = os.path.basename(path)
        assert plan.is_distributed(name) == ("init_process_group" in open(path).read()), name
        if name.startswith(plan.COMPILE_SCRIPT_PREFIXES):
            assert '"auto", "on", "off"' in open(path).read() or "auto | on | off" in open(path).read(), name
