"""Shared fixtures: small token shards in the project's shard format (docs/DATA.md), written to tmp_path."""
import importlib.util
import json
import os
import shutil

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARD_MAGIC, SHARD_VERSION = 20240520, 1


def write_shard(path, tokens, magic=SHARD_MAGIC, version=SHARD_VERSION, count=None):
    """Write `tokens` as one shard: 256 little-endian int32 header ([0] magic, [1] version, [2] count),
    then the tokens as little-endian uint16. `magic`, `version`, `count` can be set wrong on purpose."""
    tokens = np.asarray(tokens)
    assert tokens.min() >= 0 and tokens.max() < 2**16
    header = np.zeros(256, dtype="<i4")
    header[0], header[1] = magic, version
    header[2] = len(tokens) if count is None else count
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype("<u2").tobytes())
    return str(path)


def learnable_tokens(n, vocab=64, seed=0):
    """A token stream a small model can learn in a few steps: a fixed random successor table with
    occasional random jumps, so the next token is usually predictable from the current one."""
    rng = np.random.default_rng(seed)
    succ = np.random.default_rng(1234).permutation(vocab)
    out = np.empty(n, dtype=np.int64)
    t = 0
    jumps = rng.random(n) < 0.1
    rand = rng.integers(0, vocab, n)
    for i in range(n):
        t = rand[i] if jumps[i] else succ[t]
        out[i] = t
    return out


@pytest.fixture
def make_shards(tmp_path):
    """make_shards(name, n_train_shards, tokens_per_shard, n_val_tokens, vocab) -> (train_glob, val_glob).

    Writes <name>_train_%06d.bin and <name>_val_000000.bin under tmp_path/<name>/, filled with
    `learnable_tokens` (different streams per shard)."""
    def make(name="synth", n_train=2, train_tokens=40_000, val_tokens=20_000, vocab=64):
        d = tmp_path / name
        d.mkdir(exist_ok=True)
        for i in range(n_train):
            write_shard(d / f"{name}_train_{i:06d}.bin", learnable_tokens(train_tokens, vocab, seed=100 + i))
        write_shard(d / f"{name}_val_000000.bin", learnable_tokens(val_tokens, vocab, seed=99))
        return str(d / f"{name}_train_*.bin"), str(d / f"{name}_val_*.bin")
    return make


# ----------------------------------------------------------------------------- helpers the trainer tests share

# a model of a few thousand parameters: every training step in the tests takes well under a second
MICRO = ["--vocab_size", "64", "--n_layer", "2", "--n_head", "2", "--n_embd", "32", "--sequence_length", "32",
         "--batch_size", "8", "--device_batch_size", "8", "--val_tokens", "1024", "--val_loss_every", "0",
         "--learning_rate", "0.02", "--warmdown_iters", "2"]


def load_script(path, module_name):
    """Import a one-file training script under its own module name (each test module gets a fresh copy)."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_main(mod, capsys, *argv):
    """Call a trainer's main() in-process; returns (exit code, stdout, stderr)."""
    rc = mod.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def data_args(shards):
    return ["--input_bin", shards[0], "--input_val_bin", shards[1]]


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def load_summary(d):
    with open(os.path.join(d, "summary.json")) as f:
        return json.load(f)


FAKE_TRAINER = os.path.join(REPO, "tests", "fake_trainer.py")
FAKE_TRAINER_NAMES = ("train_gpt.py", "train_gpt_palm.py", "train_gpt_lmd.py", "train_mini_embnorm.py")


def fake_scripts_dir(tmp_path):
    """A scripts directory whose trainers are tests/fake_trainer.py, with the Shakespeare data 'prepared'."""
    d = tmp_path / "scripts"
    (d / "data" / "shakespeare_char").mkdir(parents=True)
    (d / "data" / "shakespeare_char" / "meta.json").write_text("{}")
    for name in FAKE_TRAINER_NAMES:
        shutil.copy(FAKE_TRAINER, d / name)
    return d
