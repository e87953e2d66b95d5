"""Behaviour of train_gpt.py: the maths (Muon, schedule, model), the data loader, the command line,
the run directory, determinism, distributed equivalence, faults and resume. Models here are tiny."""
import errno
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import (MICRO, REPO, data_args, learnable_tokens, load_script, load_summary, read_jsonl, run_main,
                      write_shard)

SCRIPT = os.path.join(REPO, "train_gpt.py")

TRAIN_RE = re.compile(r"^step:(\d+)/(\d+) train_loss:(\d+\.\d{4}) train_time:(\d+)ms step_avg:(nan|\d+\.\d{2})ms$")
VAL_RE = re.compile(r"^step:(\d+)/(\d+) val_loss:(\d+\.\d{4}) train_time:(\d+)ms step_avg:(nan|\d+\.\d{2})ms$")


@pytest.fixture(scope="module")
def tg():
    mod = load_script(SCRIPT, "train_gpt_under_test")
    # these models are far too small to gain from a second thread, and on a busy machine two OpenMP
    # threads wait on each other (measured: 30x slower steps under load)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield mod
    torch.set_num_threads(threads)


ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture
def shards(make_shards):
    return make_shards("synth", n_train=2, train_tokens=20_000, val_tokens=4_000, vocab=64)


run = run_main  # (module, capsys, *argv) -> (exit code, stdout, stderr)


# ----------------------------------------------------------------------------- maths


def test_newton_schulz_approximates_the_polar_factor(tg):
    torch.manual_seed(0)
    for shape in [(48, 96), (96, 48)]:
        G = torch.randn(*shape)
        X = tg.newton_schulz5(G).float()
        assert X.shape == G.shape and tg.newton_schulz5(G).dtype == torch.bfloat16  # the record's dtype by default
        U, S, Vh = torch.linalg.svd(G, full_matrices=False)
        polar = U @ Vh  # the exact orthogonalisation
        sv = torch.linalg.svdvals(X)
        # the quintic trades exact convergence for speed: singular values land in a band around 1
        assert sv.min() > 0.5 and sv.max() < 1.3, sv
        cos = (X * polar).sum() / (X.norm() * polar.norm())
        assert cos > 0.95
        # scale invariance: the input is normalised first
        assert torch.allclose(tg.newton_schulz5(1000 * G).float(), X, atol=2e-2)
        # float32 (the CPU's choice) is the same iteration without bf16 rounding: 3% from the bf16 result here
        X32 = tg.newton_schulz5(G, dtype=torch.float32)
        assert X32.dtype == torch.float32 and (X32 - X).norm() / X32.norm() < 0.05
        sv32 = torch.linalg.svdvals(X32)
        assert sv32.min() > 0.5 and sv32.max() < 1.3 and (X32 * polar).sum() / (X32.norm() * polar.norm()) > 0.95


def test_muon_momentum_nesterov_and_scale_by_hand(tg, monkeypatch):
    # replace the orthogonalisation by a plain cast so the update can be computed by hand
    monkeypatch.setattr(tg, "newton_schulz5", lambda G, steps=5, dtype=torch.bfloat16: G.to(dtype))
    p = torch.nn.Parameter(torch.zeros(2, 8))
    lr, m = 0.1, 0.9
    opt = tg.Muon([dict(params=[p], momentum=m)], lr=lr)
    g1 = torch.full((2, 8), 1.0)
    g2 = torch.full((2, 8), -2.0)
    p.grad = g1.clone()
    opt.step()
    # buf = g1, nesterov g = g1 + m * g1 = 1.9; scale sqrt(max(2, 8)) = 2.828...
    assert torch.allclose(p.data, torch.full((2, 8), -lr * math.sqrt(8) * 1.9), atol=1e-2)
    p.grad = g2.clone()
    before = p.data.clone()
    opt.step()
    buf = m * 1.0 + -2.0  # -1.1
    expected = before - lr * math.sqrt(8) * (-2.0 + m * buf)
    assert torch.allclose(p.data, expected, atol=2e-2)
    # without Nesterov the update is the buffer itself
    q = torch.nn.Parameter(torch.zeros(8, 2))
    opt2 = tg.Muon([dict(params=[q], momentum=m)], lr=lr, nesterov=False)
    q.grad = torch.ones(8, 2)
    opt2.step()
    assert torch.allclose(q.data, torch.full((8, 2), -lr * math.sqrt(8)), atol=1e-2)


def test_lr_schedule_by_hand(tg):
    a = tg.Hyperparameters(num_iterations=10, warmdown_iters=4, warmup_iters=0)
    assert [tg.lr_scale(s, a) for s in range(10)] == [1, 1, 1, 1, 1, 1, 1, 0.75, 0.5, 0.25]
    a = tg.Hyperparameters(num_iterations=10, warmdown_iters=0, warmup_iters=4)
    assert [tg.lr_scale(s, a) for s in range(5)] == [0.25, 0.5, 0.75, 1, 1]


def test_record_model_has_124m_parameters(tg):
    with torch.device("meta"):
        model = tg.GPT(50304, 12, 6, 768)
    n = sum(p.numel() for p in model.parameters())
    # tied embedding 50304 x 768 + 12 blocks of (4 x 768^2 attention + 2 x 768 x 3072 MLP)
    assert n == 50304 * 768 + 12 * (4 * 768 * 768 + 2 * 768 * 3072) == 123_568_128
    assert model.wte.weight is model.lm_head.weight


def test_model_is_causal_and_starts_as_identity_blocks(tg):
    torch.manual_seed(0)
    model = tg.GPT(64, 2, 2, 32)
    x = torch.randint(0, 64, (1, 16))
    # blocks start as the identity (zero output projections): the loss only sees the embedding
    h = model.wte(x)
    for b in model.blocks:
        assert torch.equal(b(h), h)
    # perturbing the blocks, the gradient of the loss at position t never reaches inputs after t
    for p in model.blocks.parameters():
        torch.nn.init.normal_(p, std=0.2)
    emb = model.wte(x).detach().requires_grad_(True)
    h = emb
    for b in model.blocks:
        h = b(h)
    h[0, 5].sum().backward()
    assert emb.grad[0, 6:].abs().max() == 0 and emb.grad[0, :6].abs().max() > 0


# ----------------------------------------------------------------------------- data


def test_loader_ranks_split_each_batch_like_one_process(tg, tmp_path):
    toks = np.arange(5000) % 60000
    shard = tg.open_shard(write_shard(tmp_path / "a.bin", toks), "")
    shard2 = tg.open_shard(write_shard(tmp_path / "b.bin", toks + 7), "")
    assert isinstance(shard, np.memmap) and len(shard) == 5000  # mapped, not read into memory
    one = tg.DataLoader([shard, shard2], 4, 10, 0, 1, start_pos=13)
    r0 = tg.DataLoader([shard, shard2], 2, 10, 0, 2, start_pos=13)
    r1 = tg.DataLoader([shard, shard2], 2, 10, 1, 2, start_pos=13)
    cpu = torch.device("cpu")
    for _ in range(300):  # crosses into the second shard and wraps around
        x, y = one.next_batch(cpu)
        x0, y0 = r0.next_batch(cpu)
        x1, y1 = r1.next_batch(cpu)
        assert torch.equal(x, torch.cat([x0, x1])) and torch.equal(y, torch.cat([y0, y1]))
        assert torch.equal(x[:, 1:], y[:, :-1])
    assert one.epoch >= 1
    # the first batch starts at the start offset
    one.reset()
    assert one.next_batch(cpu)[0][0, 0].item() == 13
    # the loader state is all there is
    s = r0.state_dict()
    nxt = r0.next_batch(cpu)[0]
    r0b = tg.DataLoader([shard, shard2], 2, 10, 0, 2)
    r0b.load_state_dict(s)
    assert torch.equal(r0b.next_batch(cpu)[0], nxt)


@pytest.mark.parametrize("kind,expect", [
    ("magic", "magic 1234"), ("version", "version 2"), ("truncated", "truncated or corrupt"),
    ("short", "shorter than its 1024-byte header")])
def test_bad_shard_header_is_one_line_naming_the_file(tg, shards, capsys, kind, expect):
    bad = os.path.join(os.path.dirname(shards[0]), "synth_train_000001.bin")
    if kind == "magic":
        write_shard(bad, learnable_tokens(1000), magic=1234)
    elif kind == "version":
        write_shard(bad, learnable_tokens(1000), version=2)
    elif kind == "truncated":
        write_shard(bad, learnable_tokens(1000), count=1001)
    else:
        with open(bad, "wb") as f:
            f.write(b"\0" * 100)
    rc, out, err = run(tg, capsys, *MICRO, *data_args(shards), "--num_iterations", 1)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and bad in lines[0] and expect in lines[0] and "--input_bin" in lines[0]


def test_missing_data_names_the_command(tg, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(tg, "SCRIPT_DIR", str(tmp_path))  # a checkout without data
    rc, out, err = run(tg, capsys, "--preset", "tiny")
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "python data/prepare_shakespeare.py" in err and str(tmp_path) in err
    rc, out, err = run(tg, capsys)
    # the record's 5100 steps x 524,288 tokens need 27 shards of 100M tokens
    assert rc == 2 and "python data/cached_fineweb10B.py 27" in err
    rc, out, err = run(tg, capsys, "--input_bin", str(tmp_path / "nothing_*.bin"))
    assert rc == 2 and "--input_bin" in err and "nothing_*.bin" in err


@pytest.mark.parametrize("extra,flag", [
    (["--batch_size", "12", "--device_batch_size", "8"], "--batch_size"),
    (["--val_tokens", "1000"], "--val_tokens"),
    (["--val_tokens", "8192"], "--val_tokens"),  # more than the val shard holds
    (["--sequence_length", "4096", "--val_tokens", str(8 * 4096)], "--sequence_length"),  # a train shard shorter than one batch
    (["--n_head", "3"], "--n_head"),
    (["--vocab_size", "32"], "--vocab_size"),  # the shards hold ids up to 63
    (["--num_iterations", "0"], "--num_iterations"),
    pytest.param(["--device", "cuda"], "--device",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="only without a GPU")),
])
def test_impossible_combinations_stop_before_training(tg, shards, capsys, tmp_path, extra, flag):
    out_dir = tmp_path / "run"
    rc, out, err = run(tg, capsys, *MICRO, *data_args(shards), *extra, "--out_dir", out_dir)
    assert rc == 2 and flag in err and len(err.strip().splitlines()) == 1
    assert not out_dir.exists()  # nothing was started


def test_help_lists_every_field_with_its_default(tg, capsys):
    with pytest.raises(SystemExit):
        tg.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    for f in tg.dataclasses.fields(tg.Hyperparameters):
        assert f"--{f.name}" in out
    for default in ["(default: 5100)", "(default: 0.0036)", "(default: 1450)", "(default: 512)", "(default: 64)",
                    "(default: 125)", "(default: 10485760)", "(default: 50304)"]:
        assert default in out


def test_preset_values_yield_to_explicit_flags(tg):
    a, given = tg.parse_args(["--preset", "tiny", "--num_iterations", "40"])
    assert a.num_iterations == 40 and a.vocab_size == 128 and a.n_layer == tg.PRESETS["tiny"]["n_layer"]
    assert given == {"preset", "num_iterations"}
    a, _ = tg.parse_args(["--input_bin", "rel/x_*.bin"])
    assert a.input_bin == os.path.join(os.getcwd(), "rel/x_*.bin")  # typed paths: relative to the CWD
    assert tg.resolve_path(tg.Hyperparameters().input_val_bin).startswith(REPO)  # defaults: next to the script


# ----------------------------------------------------------------------------- a run and its outputs


def test_run_writes_the_run_format_and_learns(tg, shards, capsys, tmp_path):
    out_dir = tmp_path / "run"
    rc, out, err = run(tg, capsys, *MICRO, *data_args(shards), "--num_iterations", 30, "--val_loss_every", 10,
                       "--warmdown_iters", 10, "--seed", 3, "--out_dir", out_dir)
    assert rc == 0, err
    lines = out.splitlines()
    assert any(re.fullmatch(r"model parameters: [\d,]+ \(\d+\.\d\dM\)", l) for l in lines)
    train = [TRAIN_RE.match(l) for l in lines if "train_loss" in l]
    val = [VAL_RE.match(l) for l in lines if "val_loss" in l]
    assert all(train) and all(val) and len(train) == 30 and [int(m[1]) for m in val] == [0, 10, 20, 30]
    assert train[0][5] == "nan" and train[-1][5] != "nan"  # the first 11 steps are not timed, as in the record
    assert re.fullmatch(r"peak memory consumption: \d+ MiB", lines[-1])
    # metrics.jsonl: one record per step and per validation, numbers matching stdout
    recs = read_jsonl(out_dir / "metrics.jsonl")
    tr = [r for r in recs if "train_loss" in r]
    va = [r for r in recs if "val_loss" in r]
    assert [r["step"] for r in tr] == list(range(1, 31)) and [r["step"] for r in va] == [0, 10, 20, 30]
    assert [f"{r['train_loss']:.4f}" for r in tr] == [m[3] for m in train]
    assert tr[-1]["lr_scale"] == pytest.approx(0.1) and tr[0]["lr_scale"] == 1.0
    # summary.json
    s = load_summary(out_dir)
    assert s["schema"] == 1 and s["status"] == "ok" and s["error"] is None and s["steps_completed"] == 30
    assert s["script"] == "train_gpt.py" and s["variant"] == "baseline" and s["seed"] == 3
    m = s["metrics"]
    assert m["val_loss"] == pytest.approx(va[-1]["val_loss"]) and m["train_loss"] == pytest.approx(tr[-1]["train_loss"])
    assert m["num_params"] == 64 * 32 + 2 * (4 * 32 * 32 + 2 * 32 * 128)
    assert m["train_time_s"] == pytest.approx(va[-1]["train_time_ms"] / 1000)
    assert m["tokens_per_s"] == pytest.approx(20 * 8 * 32 / m["train_time_s"])
    assert m["wall_time_s"] >= m["train_time_s"] and m["peak_memory_mib"] > 0
    assert s["config"]["num_iterations"] == 30 and s["config"]["learning_rate"] == 0.02
    env = s["env"]
    assert env["device"] == "cpu" and env["torch"] == torch.__version__ and isinstance(env["git_dirty"], (bool, type(None)))
    assert env["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}", env["git_commit"])
    with open(out_dir / "train_gpt.py") as f1, open(SCRIPT) as f2:
        assert f1.read() == f2.read()
    # it learned: the stream is mostly a fixed successor table (ln 64 = 4.16 at chance)
    assert va[-1]["val_loss"] < va[0]["val_loss"] - 1.0
    # the directory now holds a run: a second run into it is refused, nothing is overwritten
    before = (out_dir / "summary.json").read_bytes()
    rc, out, err = run(tg, capsys, *MICRO, *data_args(shards), "--num_iterations", 1, "--out_dir", out_dir)
    assert rc == 2 and "--out_dir" in err and (out_dir / "summary.json").read_bytes() == before


def test_without_out_dir_a_fresh_directory_under_logs(tg, shards, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(tg, "SCRIPT_DIR", str(tmp_path))
    dirs = []
    for _ in range(2):
        rc, out, err = run(tg, capsys, *MICRO, *data_args(shards), "--num_iterations", 1)
        assert rc == 0, err
        dirs.append(re.search(r"run directory: (\S+)", out)[1])
    assert dirs[0] != dirs[1] and all(os.path.dirname(d) == str(tmp_path / "logs") for d in dirs)
    assert all(load_summary(d)["status"] == "ok" for d in dirs)


def loader_read_counts(tg, lens, B, T, W, start_pos, micro_steps):
    """How often the real DataLoader (all W ranks) reads each input token: an independent count."""
    shards = [np.zeros(n, dtype=np.uint16) for n in lens]
    counts = [np.zeros(n, dtype=np.int64) for n in lens]
    loaders = [tg.DataLoader(shards, B, T, r, W, start_pos) for r in range(W)]
    for _ in range(micro_steps):
        for ld in loaders:
            start = ld.pos + ld.rank * B * T
            counts[ld.shard][start:start + B * T] += 1
            ld.next_batch(torch.device("cpu"))
    return counts


@pytest.mark.parametrize("lens,start,steps", [([2000, 2000], 0, 20), ([2000, 2000], 700, 20), ([2000, 1500], 300, 9),
                                              ([2000, 1000], 1500, 6), ([5000], 4000, 3)])
def test_repeated_tokens_counts_what_the_loader_reads_twice(tg, lens, start, steps):
    B, T, W = 4, 32, 2
    counts = loader_read_counts(tg, lens, B, T, W, start, steps)
    by_hand = sum(int(np.maximum(c - 1, 0).sum()) for c in counts)
    assert tg.repeated_tokens(lens, B * T * W, start, steps) == by_hand
    if (lens, start, steps) == ([2000, 1000], 1500, 6):  # wraps into the first shard's unread head: no repeat
        assert by_hand == 0 and counts[0][:1500].sum() > 0


def test_data_repeat_warning_names_the_tokens_and_shards_needed(tg, make_shards, capsys, tmp_path):
    sh = make_shards("small", n_train=2, train_tokens=2_000, val_tokens=2_000)
    rc, out, err = run(tg, capsys, *MICRO, *data_args(sh), "--num_iterations", 20, "--out_dir", tmp_path / "r")
    assert rc == 0
    cfg = load_summary(tmp_path / "r")["config"]
    counts = loader_read_counts(tg, [2000, 2000], 8, 32, 1, cfg["train_start_offset"], 20)
    twice = sum(int(np.maximum(c - 1, 0).sum()) for c in counts)
    assert twice > 0 and f"{twice:,} tokens are trained on more than once" in err
    assert f"consumes {20 * 8 * 32:,} train tokens" in err and "4,000" in err
    assert f"About {math.ceil((20 * 8 * 32 + cfg['train_start_offset']) / 2000)} shards" in err
    # 12 steps from a late start offset wrap into the first shard's unread head: nothing is read twice
    def start_for(seed):  # the trainer's draw (open_data): a shard permutation, then the offset
        rng = np.random.default_rng(seed)
        rng.permutation(2)
        return int(rng.integers(0, 2000 - 256 - 1 + 1))
    seed = next(s for s in range(100) if (1999 - start_for(s)) // 256 + 7 < 12 and start_for(s) >= 5 * 256)
    rc, out, err = run(tg, capsys, *MICRO, *data_args(sh), "--num_iterations", 12, "--seed", seed,
                       "--out_dir", tmp_path / "r2")
    assert rc == 0 and load_summary(tmp_path / "r2")["config"]["train_start_offset"] == start_for(seed)
    assert "warning" not in err


def test_same_seed_same_curve_other_seed_other_curve(tg, shards, capsys, tmp_path):
    curves = {}
    for name, seed in [("a", 5), ("b", 5), ("c", 6)]:
        rc, out, err = run(tg, capsys, *MICRO, *data_args(shards), "--num_iterations", 5, "--seed", seed,
                           "--out_dir", tmp_path / name)
        assert rc == 0, err
        curves[name] = [r.get("train_loss", r.get("val_loss")) for r in read_jsonl(tmp_path / name / "metrics.jsonl")]
        curves[name + "cfg"] = load_summary(tmp_path / name)["config"]
    assert curves["a"] == curves["b"]
    assert curves["a"][0] != curves["c"][0]  # another initialisation...
    assert curves["acfg"]["train_start_offset"] != curves["ccfg"]["train_start_offset"]  # ...and data order


def checkpoint_params(run_dir, step):
    ck = torch.load(os.path.join(run_dir, "checkpoints", f"step_{step:06d}.pt"), map_location="cpu", weights_only=False)
    return ck["model"]


def max_param_diff(a, b):
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def initial_params(tg, seed):
    torch.manual_seed(seed)  # what the trainer draws for --seed (MICRO's shape)
    return tg.GPT(64, 2, 2, 32).state_dict()


def relative_disagreement(a, b, init):
    """Largest parameter difference between two runs, as a fraction of the largest distance any
    parameter travelled from its initial value. bf16 Newton-Schulz turns last-bit differences of
    the gradients (another summation order) into differences of a few percent of one update."""
    return max_param_diff(a, b) / max_param_diff(a, init)


def test_gradient_accumulation_equals_the_large_batch_step(tg, shards, capsys, tmp_path):
    common = [*MICRO, *data_args(shards), "--num_iterations", 4, "--save_every", 3, "--seed", 2]
    for name, dbs in [("big", 8), ("accum", 2)]:
        rc, out, err = run(tg, capsys, *common, "--device_batch_size", dbs, "--out_dir", tmp_path / name)
        assert rc == 0, err
    big, acc = checkpoint_params(tmp_path / "big", 3), checkpoint_params(tmp_path / "accum", 3)
    init = initial_params(tg, 2)
    assert load_summary(tmp_path / "accum")["config"]["grad_accum_steps"] == 4
    assert relative_disagreement(big, acc, init) < 0.05
    # the same measure between two seeds: the bound above can fail
    rc, out, err = run(tg, capsys, *common, "--device_batch_size", 8, "--seed", 3, "--out_dir", tmp_path / "other")
    assert relative_disagreement(big, checkpoint_params(tmp_path / "other", 3), init) > 0.5


def test_two_gloo_processes_match_one_process(tg, shards, capsys, tmp_path):
    common = [*MICRO, *data_args(shards), "--num_iterations", 4, "--save_every", 3, "--seed", 4,
              "--device_batch_size", 4, "--device", "cpu"]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", SCRIPT,
                        *map(str, common), "--out_dir", str(tmp_path / "two")], env=ONE_THREAD, capture_output=True,
                       text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len([l for l in r.stdout.splitlines() if TRAIN_RE.match(l)]) == 4  # only rank 0 prints
    s = load_summary(tmp_path / "two")
    assert s["status"] == "ok" and s["env"]["processes"] == 2 and s["config"]["grad_accum_steps"] == 1
    rc, out, err = run(tg, capsys, *common, "--out_dir", tmp_path / "one")
    assert rc == 0, err
    assert load_summary(tmp_path / "one")["config"]["grad_accum_steps"] == 2
    one, two = checkpoint_params(tmp_path / "one", 3), checkpoint_params(tmp_path / "two", 3)
    assert relative_disagreement(one, two, initial_params(tg, 4)) < 0.05


# ----------------------------------------------------------------------------- faults, checkpoints, resume


def test_non_finite_loss_is_diverged(tg, shards, capsys, tmp_path):
    rc, out, err = run(tg, capsys, *MICRO, *data_args(shards), "--num_iterations", 20, "--learning_rate", 1e30,
                       "--out_dir", tmp_path / "nan")
    s = load_summary(tmp_path / "nan")
    assert rc == 3 and s["status"] == "diverged" and "non-finite" in s["error"]
    assert s["steps_completed"] < 20 and "train_loss" not in s["metrics"]  # a NaN is not a number to report


def test_out_of_memory_is_classified_oom(tg):
    assert tg.is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert tg.is_oom(RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"))
    assert not tg.is_oom(RuntimeError("shape mismatch"))


def test_sigint_stops_with_status_interrupted_and_a_checkpoint(shards, tmp_path):
    out_dir = tmp_path / "int"
    p = subprocess.Popen([sys.executable, SCRIPT, *MICRO, *data_args(shards), "--num_iterations", "100000",
                          "--out_dir", str(out_dir)], env=ONE_THREAD, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        if metrics.exists() and sum(1 for l in open(metrics) if "train_loss" in l) >= 2:
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    s = load_summary(out_dir)
    assert s["status"] == "interrupted" and "--resume" in s["error"]
    k = s["steps_completed"]
    assert 2 <= k < 100000
    assert os.path.exists(out_dir / "checkpoints" / f"step_{k:06d}.pt")
    assert max(r["step"] for r in read_jsonl(metrics)) == k


def test_resume_ends_exactly_where_an_uninterrupted_run_ends(tg, shards, capsys, tmp_path):
    full = tmp_path / "full"
    args = [*MICRO, *data_args(shards), "--num_iterations", 8, "--val_loss_every", 4, "--seed", 7]
    rc, out, err = run(tg, capsys, *args, "--save_every", 3, "--keep_checkpoints", 2, "--out_dir", full)
    assert rc == 0, err
    assert sorted(os.listdir(full / "checkpoints")) == ["step_000003.pt", "step_000006.pt"]
    # a run that died after its step-3 checkpoint: copy it, drop the later checkpoint and the summary
    cut = tmp_path / "cut"
    shutil.copytree(full, cut)
    os.remove(cut / "checkpoints" / "step_000006.pt")
    os.remove(cut / "summary.json")
    rc, out, err = run(tg, capsys, "--resume", cut, "--num_iterations", 8)  # same value: allowed
    assert rc == 0, err
    assert "resuming from step 3" in out
    a, b = load_summary(full), load_summary(cut)
    assert b["status"] == "ok" and b["steps_completed"] == 8
    assert b["metrics"]["val_loss"] == a["metrics"]["val_loss"]  # exactly
    assert b["metrics"]["train_loss"] == a["metrics"]["train_loss"]
    losses = lambda d: [(r["step"], r.get("train_loss"), r.get("val_loss")) for r in read_jsonl(d / "metrics.jsonl")]
    assert losses(cut) == losses(full)  # the metrics file reads as one uninterrupted run
    assert (cut / "metrics.before_resume_3.jsonl").exists()  # the old file is kept
    # a finished run cannot be resumed; a changed hyperparameter is refused
    rc, out, err = run(tg, capsys, "--resume", cut)
    assert rc == 2 and "already finished" in err
    os.remove(cut / "summary.json")
    rc, out, err = run(tg, capsys, "--resume", cut, "--learning_rate", 0.5)
    assert rc == 2 and "--learning_rate" in err
    # a damaged checkpoint is named, not a traceback
    assert sorted(os.listdir(cut / "checkpoints")) == ["step_000003.pt", "step_000006.pt"]  # the resumed run saved too
    (cut / "checkpoints" / "step_000006.pt").write_bytes(b"not a checkpoint")
    rc, out, err = run(tg, capsys, "--resume", cut)
    assert rc == 2 and "step_000006.pt" in err and len(err.strip().splitlines()) == 1


def test_compile_on_cpu_matches_eager(tg, shards, capsys, tmp_path):
    common = [*MICRO, *data_args(shards), "--num_iterations", 2, "--n_layer", 1, "--seed", 1]
    rc, out, err = run(tg, capsys, *common, "--out_dir", tmp_path / "eager")
    assert rc == 0, err
    rc, out, err = run(tg, capsys, *common, "--compile", "--out_dir", tmp_path / "compiled")
    assert rc == 0, err
    assert "compile on" in out
    e, c = load_summary(tmp_path / "eager"), load_summary(tmp_path / "compiled")
    assert c["config"]["compiled"] and not e["config"]["compiled"]
    assert c["metrics"]["val_loss"] == pytest.approx(e["metrics"]["val_loss"], rel=1e-4)


def test_unused_path_never_points_at_an_existing_file(tg, tmp_path):
    p = tmp_path / "metrics.before_resume_3.jsonl"
    assert tg.unused_path(str(p)) == str(p)
    p.write_text("x")
    assert tg.unused_path(str(p)) == str(tmp_path / "metrics.before_resume_3.1.jsonl")
    (tmp_path / "metrics.before_resume_3.1.jsonl").write_text("y")
    assert tg.unused_path(str(p)) == str(tmp_path / "metrics.before_resume_3.2.jsonl")


# ----------------------------------------------------------------------------- device batch, GPU-path guards


@pytest.mark.parametrize("batch,T,val_tokens,default", [
    (512, 1024, 10485760, 64),  # stage_b, stage_c, lmd: the record's settings
    (128, 1024, 10485760, 64),  # stage_a's batch with the device batch left to the trainer
    (32, 128, 32768, 16)])  # --preset tiny
def test_device_batch_keeps_the_global_batch_on_1_to_64_processes(tg, batch, T, val_tokens, default):
    for world in range(1, 65):
        if batch % world or val_tokens % (T * world):
            with pytest.raises(tg.ConfigError, match="--batch_size|--val_tokens"):
                tg.device_batch(batch, default, world, T, val_tokens, typed=False)
            continue
        d = tg.device_batch(batch, default, world, T, val_tokens, typed=False)
        per_rank, val_seqs = batch // world, val_tokens // (T * world)
        assert 1 <= d <= default and per_rank % d == 0 and val_seqs % d == 0
        assert not any(per_rank % e == 0 and val_seqs % e == 0 for e in range(d + 1, default + 1))  # the largest
        grad_accum = batch // (d * world)
        assert grad_accum * d * world == batch  # global batch, so tokens per step, unchanged
    # by hand: 2 nodes x 8 GPUs take 32 of the record's 512 sequences each, no accumulation; 1 GPU keeps 64 x 8
    assert tg.device_batch(512, 64, 16, 1024, 10485760, typed=False) == 32
    assert tg.device_batch(512, 64, 1, 1024, 10485760, typed=False) == 64
    assert tg.device_batch(128, 64, 64, 1024, 10485760, typed=False) == 2
    assert tg.device_batch(32, 16, 16, 128, 32768, typed=False) == 2
    with pytest.raises(tg.ConfigError, match="--batch_size 512 cannot be split evenly over 3 processes"):
        tg.device_batch(512, 64, 3, 1024, 10485760, typed=False)
    # a typed device batch is kept, or refused when it cannot work
    assert tg.device_batch(512, 16, 8, 1024, 10485760, typed=True) == 16
    with pytest.raises(tg.ConfigError, match="--device_batch_size 64 x 16 processes"):
        tg.device_batch(512, 64, 16, 1024, 10485760, typed=True)


def test_rotary_frequencies_are_a_plain_attribute_that_follows_the_model(tg):
    model = tg.GPT(64, 2, 2, 32)
    rot = model.blocks[0].attn.rotary
    assert "inv_freq" not in dict(model.named_buffers(recurse=True)) and not list(model.buffers())  # DDP has nothing to broadcast
    assert torch.equal(rot.inv_freq, 1.0 / 10000 ** (torch.arange(0, 16, 2).float() / 16))
    model.to("meta")
    assert rot.inv_freq.device.type == "meta"  # model.to(device) moves it with the parameters


def test_a_checkpoint_holding_code_is_refused_and_the_code_never_runs(tg, shards, capsys, tmp_path):
    d = tmp_path / "run"
    rc, out, err = run(tg, capsys, *MICRO, *data_args(shards), "--num_iterations", 4, "--save_every", 2,
                       "--out_dir", d)
    assert rc == 0, err
    os.remove(d / "summary.json")
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('ran')",))
    real = torch.load(d / "checkpoints" / "step_000002.pt", map_location="cpu", weights_only=True)
    evil = d / "checkpoints" / "step_000009.pt"
    torch.save({**real, "extra": Payload()}, evil)
    rc, out, err = run(tg, capsys, "--resume", d)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and str(evil) in err and "refused" in err
    assert not marker.exists()
    torch.load(evil, weights_only=False)  # the file really is hostile: an unrestricted load runs it
    assert marker.read_text() == "ran"


def test_summary_goes_only_into_the_directory_the_run_started_in(tg, shards, capsys, tmp_path, monkeypatch):
    d, moved = tmp_path / "run", tmp_path / "moved"
    real = tg.lr_scale

    def lr_scale_that_moves_the_run(step, a):
        if step == 2 and not moved.exists():  # mid-run, someone moves the directory and reuses its name
            os.rename(d, moved)
            d.mkdir()
        return real(step, a)
    monkeypatch.setattr(tg, "lr_scale", lr_scale_that_moves_the_run)
    rc, out, err = run(tg, capsys, *MICRO, *data_args(shards), "--num_iterations", 4, "--out_dir", d)
    assert not (d / "summary.json").exists() and not (moved / "summary.json").exists()
    assert "(or no longer) this run's directory" in err and rc == 1
    assert [r["step"] for r in read_jsonl(moved / "metrics.jsonl") if "train_loss" in r] == [1, 2, 3, 4]


@pytest.mark.parametrize("where", ["checkpoint", "summary"])
def test_a_full_disk_is_one_line_status_failed_and_leaves_no_temp_files(tg, shards, capsys, tmp_path, monkeypatch,
                                                                        where):
    def full(*args, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")
    if where == "checkpoint":
        monkeypatch.setattr(tg.torch, "save", full)
    else:
        monkeypatch.setattr(tg.os, "fsync", full)
    d = tmp_path / "run"
    rc, out, err = run(tg, capsys, *MICRO, *data_args(shards), "--num_iterations", 4, "--save_every", 2,
                       "--out_dir", d)
    assert rc == 1 and "Traceback" not in err and "No space left on device" in err
    left = [f for _, _, files in os.walk(d) for f in files if ".tmp" in f]
    assert left == []
    if where == "checkpoint":
        s = load_summary(d)
        assert s["status"] == "failed" and "step_000002.pt" in s["error"] and "No space left" in s["error"]
        assert s["steps_completed"] == 2 and not os.listdir(d / "checkpoints")
    else:  # the summary itself cannot be written: the status is the exit code and one line
        assert not (d / "summary.json").exists()
        assert [l for l in err.splitlines() if "summary.json" in l and "No space left" in l]


def test_ten_steps_or_fewer_store_no_train_time(tg, shards, capsys, tmp_path):
    for n, timed in [(10, False), (12, True)]:
        rc, out, err = run(tg, capsys, *MICRO, *data_args(shards), "--num_iterations", n, "--out_dir", tmp_path / str(n))
        assert rc == 0, err
        m = load_summary(tmp_path / str(n))["metrics"]
        if timed:
            assert m["train_time_s"] > 0 and m["tokens_per_s"] == pytest.approx(2 * 8 * 32 / m["train_time_s"])
        else:  # the first 10 steps are untimed: no time rather than ~0
            assert m["train_time_s"] is None and m["tokens_per_s"] is None and m["val_loss"] > 0


def test_a_device_that_cannot_start_writes_a_failed_summary(tg, shards, capsys, tmp_path, monkeypatch):
    def bad_ordinal(device):
        raise RuntimeError("CUDA error: invalid device ordinal\nCUDA kernel errors might be reported later")
    monkeypatch.setattr(tg.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(tg.torch.cuda, "set_device", bad_ordinal)
    rc, out, err = run(tg, capsys, *MICRO, *data_args(shards), "--device", "cuda", "--out_dir", tmp_path / "r")
    s = load_summary(tmp_path / "r")
    assert rc == 1 and s["status"] == "failed" and "invalid device ordinal" in s["error"] and "cuda:0" in s["error"]
    assert "\n" not in s["error"] and "Traceback" not in err


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_rendezvous_nobody_joins_writes_a_failed_summary(shards, tmp_path):
    env = {**ONE_THREAD, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    r = subprocess.run([sys.executable, SCRIPT, *MICRO, *data_args(shards), "--device_batch_size", "4",
                        "--dist_timeout", "3", "--out_dir", str(tmp_path / "r")], env=env, capture_output=True,
                       text=True, timeout=120)
    s = load_summary(tmp_path / "r")
    assert r.returncode == 1 and s["status"] == "failed" and "process group" in s["error"], r.stderr[-2000:]
    assert "\n" not in s["error"] and "Traceback" not in r.stderr


def torchrun(script, nproc, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                           str(script), *map(str, args)], env=ONE_THREAD, capture_output=True, text=True,
                          timeout=timeout)


def test_ranks_agree_on_divergence_every_check_every_steps(shards, tmp_path):
    r = torchrun(SCRIPT, 2, *MICRO, *data_args(shards), "--device_batch_size", 4, "--num_iterations", 30,
                 "--learning_rate", 1e30, "--check_every", 4, "--out_dir", tmp_path / "nan")
    s = load_summary(tmp_path / "nan")
    assert r.returncode != 0 and s["status"] == "diverged" and s["steps_completed"] % 4 == 0, r.stderr[-2000:]
    assert s["steps_completed"] < 30


OOM_ON_RANK_1 = '''
import importlib.util, os, sys, torch
spec = importlib.util.spec_from_file_location("tg", {script!r})
tg = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tg)
if os.environ["RANK"] == "1":
    real, calls = tg.GPT.forward, []
    def forward(self, idx, targets):
        calls.append(1)
        if self.training and len(calls) == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, idx, targets)
    tg.GPT.forward = forward
sys.exit(tg.main(sys.argv[1:]))
'''


def test_out_of_memory_on_one_rank_stops_its_peers_with_status_oom(shards, tmp_path):
    wrapper = tmp_path / "oom_on_rank_1.py"
    wrapper.write_text(OOM_ON_RANK_1.format(script=SCRIPT))
    r = torchrun(wrapper, 2, *MICRO, *data_args(shards), "--device_batch_size", 4, "--num_iterations", 1000,
                 "--out_dir", tmp_path / "oom", timeout=240)
    s = load_summary(tmp_path / "oom")
    assert r.returncode != 0 and s["status"] == "oom" and s["error"].startswith("rank 1: OutOfMemoryError"), \
        r.stderr[-3000:]
    assert s["steps_completed"] == 2  # rank 1 failed in its third step; nobody went on training


def test_sixteen_gloo_processes_match_eight(tg, shards, tmp_path):
    # the device batch is left to the trainer: 1 sequence per micro-step on 16 processes, 2 on 8
    i = MICRO.index("--device_batch_size")
    micro = MICRO[:i] + MICRO[i + 2:]
    common = [*micro, *data_args(shards), "--batch_size", 16, "--num_iterations", 3, "--save_every", 2, "--seed", 4,
              "--val_loss_every", 0, "--device", "cpu"]
    for n in (16, 8):
        r = torchrun(SCRIPT, n, *common, "--out_dir", tmp_path / str(n), timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        s = load_summary(tmp_path / str(n))
        assert s["env"]["processes"] == n and s["config"]["batch_size"] == 16
        assert s["config"]["device_batch_size"] == 16 // n and s["config"]["grad_accum_steps"] == 1
    assert "device batch: 2 sequences per process per micro-step (the largest <= 64" in r.stdout  # the 8-process run
    a, b = checkpoint_params(tmp_path / "16", 2), checkpoint_params(tmp_path / "8", 2)
    torch.manual_seed(4)
    assert relative_disagreement(a, b, tg.GPT(64, 2, 2, 32).state_dict()) < 0.05
