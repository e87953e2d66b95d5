"""./run_experiments.sh preflight STAGE on CPU: the tiny stage passes on valid data (gloo all_reduce,
shard headers, disk, a few real train_gpt.py steps, a projection) and fails with one line per problem
when its data is missing or corrupt. Shards are written by conftest.write_shard (an independent
writer of the format the preflight reads without torch)."""
import dataclasses
import os
import shutil

import pytest

from conftest import REPO, learnable_tokens, load_script, write_shard
from test_runner import run

import sys
sys.path.insert(0, REPO)
from runner import cli, preflight  # noqa: E402


def scripts_with_data(tmp_path, data=True):
    d = tmp_path / "scripts"
    (d / "data" / "shakespeare_char").mkdir(parents=True)
    for name in ("train_gpt.py", "train_gpt_palm.py"):
        shutil.copy(os.path.join(REPO, name), d / name)
    if data:
        sc = d / "data" / "shakespeare_char"
        write_shard(sc / "shakespeare_train_000000.bin", learnable_tokens(700_000, vocab=80))
        write_shard(sc / "shakespeare_val_000000.bin", learnable_tokens(40_000, vocab=80, seed=3))
    return d


def table_rows(stdout, check):
    return [ln for ln in stdout.splitlines() if ln.startswith(check + " ")]


def test_preflight_tiny_passes_on_valid_data(tmp_path):
    d = scripts_with_data(tmp_path)
    p = run(["preflight", "tiny", "--scripts-dir", str(d), "--logs", str(tmp_path / "logs")], tmp_path,
            env={"OMP_NUM_THREADS": "1", "RUNNER_PREFLIGHT_TIMEOUT_S": "400"}, timeout=900)  # a busy test machine
    assert p.returncode == 0, p.stdout + p.stderr
    assert "gloo, 2 processes: the sum is right" in table_rows(p.stdout, "all_reduce")[0]
    # the tiny stage's steps (plans/tiny.toml = the demo's count), tiny preset: batch 32 x 128
    assert f"{cli.DEMO_TINY_ITERS_DEFAULT} steps x 4,096 tokens fit without repeating" in p.stdout
    (model,) = table_rows(p.stdout, "model")
    assert " go " in model and "s/step" in model
    (proj,) = table_rows(p.stdout, "projection")
    assert "6 runs" in proj and "CPU-hours" in proj and "GPU" not in proj
    assert "GO: tiny can run here (skipped here: gpus)" in p.stdout
    assert not (tmp_path / "logs").exists()  # a preflight writes nothing into the logs


def test_preflight_fails_with_one_line_per_missing_file(tmp_path):
    d = scripts_with_data(tmp_path, data=False)
    p = run(["preflight", "tiny", "--only", "data,disk,model", "--scripts-dir", str(d)], tmp_path)
    assert p.returncode == 1
    bad = [ln for ln in table_rows(p.stdout, "data") if "NO-GO" in ln]
    assert len(bad) == 2
    for kind, line in zip(("train", "val"), bad):
        assert f"no {kind} shards match {d}/data/shakespeare_char/shakespeare_{kind}_*.bin" in line
        assert "run `python data/prepare_shakespeare.py`" in line
    assert "skipped" in table_rows(p.stdout, "model")[0] and "NO-GO: 2 problem(s)" in p.stdout
    assert "Traceback" not in p.stdout + p.stderr


def test_preflight_names_each_corrupt_shard(tmp_path):
    d = scripts_with_data(tmp_path)
    sc = d / "data" / "shakespeare_char"
    write_shard(sc / "shakespeare_train_000000.bin", learnable_tokens(1000, vocab=80), magic=1234)
    with open(sc / "shakespeare_val_000000.bin", "r+b") as f:
        f.truncate(2000)
    p = run(["preflight", "tiny", "--only", "data", "--scripts-dir", str(d)], tmp_path)
    assert p.returncode == 1
    bad = [ln for ln in table_rows(p.stdout, "data") if "NO-GO" in ln]
    assert len(bad) == 2
    assert "shakespeare_train_000000.bin: magic 1234, expected 20240520" in bad[0]
    assert "shakespeare_val_000000.bin: 2000 bytes but its header promises 40000 tokens" in bad[1]


def test_preflight_without_gpus_says_no_go_for_a_gpu_stage_and_checks_what_applies(tmp_path):
    d = scripts_with_data(tmp_path)
    p = run(["preflight", "stage_a", "--variants", "baseline,palm", "--only", "gpus,data", "--scripts-dir", str(d)],
            tmp_path)
    assert p.returncode == 1 and "NO-GO: 1 problem(s)" in p.stdout
    assert "nvidia-smi shows none" in table_rows(p.stdout, "gpus")[0]
    (data,) = table_rows(p.stdout, "data")  # stage_a's design at the tiny preset: 150 steps of 4,096 tokens
    assert " go " in data and "150 steps x 4,096 tokens fit" in data and "the tiny preset's data: no GPU here" in data


def test_too_little_data_names_the_download(tmp_path):
    d = scripts_with_data(tmp_path)
    p = run(["preflight", "tiny", "--only", "data", "--iterations", "100000", "--scripts-dir", str(d)], tmp_path)
    assert p.returncode == 1
    (line,) = [ln for ln in table_rows(p.stdout, "data") if "NO-GO" in ln]
    # 700,000 tokens hold (700,000 - 1) // 4,096 = 170 batches
    assert "700,000 tokens give 170 steps of 4,096 tokens, the stage needs 100,000: the data would repeat" in line


def test_shard_header_check_and_trainer_settings_read_without_torch(tmp_path):
    good = write_shard(tmp_path / "a.bin", [1, 2, 3, 4])
    assert preflight.shard_tokens(good) == 4
    for kw, says in (({"magic": 7}, "magic 7"), ({"version": 2}, "version 2"), ({"count": 9}, "promises 9 tokens")):
        with pytest.raises(ValueError, match=says):
            preflight.shard_tokens(write_shard(tmp_path / "b.bin", [1, 2, 3], **kw))
    # the defaults and presets read from the source equal the trainer's own (imported here, with torch)
    mod = load_script(os.path.join(REPO, "train_gpt.py"), "train_gpt_for_preflight_test")
    defaults, presets = preflight.trainer_defaults(os.path.join(REPO, "train_gpt.py"))
    for f in dataclasses.fields(mod.Hyperparameters):
        assert defaults[f.name] == f.default, f.name
    assert presets == mod.PRESETS
