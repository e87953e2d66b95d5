"""Behaviour of train_gpt_depthwarm.py: the schedule against hand values, skip masks that depend on (seed, step)
only, skipped blocks that do no work and get no update, the hand-made gradient average, ranks in lockstep
under two gloo processes, per-block compilation without recompiles, and equality with train_gpt.py when
nothing is skipped. Models are tiny."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import REPO, data_args, load_script, read_jsonl

SCRIPT = os.path.join(REPO, "train_gpt_depthwarm.py")
BASELINE = os.path.join(REPO, "train_gpt.py")
MICRO = ["--vocab_size", "64", "--n_layer", "4", "--n_head", "2", "--n_embd", "32", "--sequence_length", "32",
         "--batch_size", "8", "--device_batch_size", "8", "--val_tokens", "1024", "--val_loss_every", "0",
         "--learning_rate", "0.02", "--warmdown_iters", "2"]
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def dw():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: a second thread only waits on a busy machine
    yield load_script(SCRIPT, "train_gpt_depthwarm_under_test")
    torch.set_num_threads(threads)


@pytest.fixture
def shards(make_shards):
    return make_shards("synth", n_train=2, train_tokens=20_000, val_tokens=4_000, vocab=64)


def hp(dw, **kw):
    a, _ = dw.parse_args([])
    for k, v in kw.items():
        setattr(a, k, v)
    return a


# ----------------------------------------------------------------------------- the schedule


def test_schedule_phases_by_hand(dw):
    # 12 blocks, 9 steps: three steps per third
    a = hp(dw, n_layer=12, num_iterations=9)
    assert [dw.depthwarm_phase(t, a) for t in range(9)] == [(6, 0.5)] * 3 + [(9, 0.25)] * 3 + [(12, 0.0)] * 3
    # 1,000 steps: N/3 = 333.3 and 2N/3 = 666.7, so steps 0-333 | 334-666 | 667-999
    a = hp(dw, n_layer=12, num_iterations=1000)
    got = {t: dw.depthwarm_phase(t, a) for t in (0, 333, 334, 666, 667, 999)}
    assert got == {0: (6, 0.5), 333: (6, 0.5), 334: (9, 0.25), 666: (9, 0.25), 667: (12, 0.0), 999: (12, 0.0)}
    # the tiny preset's 4 blocks: L/2 = 2, 3L/4 = 3
    a = hp(dw, n_layer=4, num_iterations=150)
    assert dw.depthwarm_phase(49, a) == (2, 0.5) and dw.depthwarm_phase(50, a) == (3, 0.25)
    assert dw.depthwarm_phase(100, a) == (4, 0.0)
    assert dw.describe_depthwarm(a) == ["depth warming: steps 0-49: blocks 2..3 skipped with p=0.5 each",
                                        "depth warming: steps 50-99: block 3 skipped with p=0.25 each",
                                        "depth warming: steps 100-149: every block runs"]


def test_masks_follow_the_schedule_and_depend_on_seed_and_step_only(dw):
    a = hp(dw, n_layer=12, num_iterations=1500, seed=11)
    masks = np.array([dw.depthwarm_mask(t, a) for t in range(1500)])
    assert masks[:, :6].all()  # below d(t) nothing is ever skipped
    assert masks[500:, :9].all() and masks[1000:].all()
    # skip rates: 6 x 500 draws at p = 0.5, 3 x 500 at p = 0.25; 4 binomial standard deviations
    rate1 = 1 - masks[:500, 6:].mean()
    rate2 = 1 - masks[500:1000, 9:].mean()
    assert abs(rate1 - 0.5) < 4 * (0.25 / 3000) ** 0.5
    assert abs(rate2 - 0.25) < 4 * (0.25 * 0.75 / 1500) ** 0.5
    # the blocks are drawn independently: the pair (6, 7) is skipped together about p^2 of the time
    both = (~masks[:500, 6] & ~masks[:500, 7]).mean()
    assert abs(both - 0.25) < 4 * (0.25 * 0.75 / 500) ** 0.5
    # a pure function of (seed, step): recomputed in any order, it is the same; another seed differs
    assert [dw.depthwarm_mask(t, a) for t in (500, 7, 500)] == [masks[500].tolist(), masks[7].tolist(),
                                                                 masks[500].tolist()]
    other = np.array([dw.depthwarm_mask(t, hp(dw, n_layer=12, num_iterations=1500, seed=12)) for t in range(500)])
    assert (other != masks[:500]).any()


def test_bad_schedule_flags_are_one_line_errors(dw, shards, capsys, tmp_path):
    for flag, value in [("--depthwarm_prob1", "1.5"), ("--depthwarm_depth2", "-0.1"), ("--depthwarm_end1", "0.9")]:
        rc = dw.main([*MICRO, *data_args(shards), flag, value, "--out_dir", str(tmp_path / flag.strip("-"))])
        err = capsys.readouterr().err
        assert rc == 2 and flag in err and len(err.strip().splitlines()) == 1, err


# ----------------------------------------------------------------------------- skipped blocks


def test_skipped_block_does_no_work_and_is_not_updated(dw):
    torch.manual_seed(0)
    model = dw.GPT(64, 4, 2, 32)
    for p in model.parameters():  # leave the zero-initialised start, so every block has gradients
        p.data.add_(0.02 * torch.randn_like(p))
    calls = [0] * 4
    for i, b in enumerate(model.blocks):
        b.register_forward_pre_hook(lambda mod, inp, i=i: calls.__setitem__(i, calls[i] + 1))
    opt = dw.Muon([dict(params=list(model.blocks.parameters()), momentum=0.95)], lr=0.01)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randint(0, 64, (2, 16))
    model.train()
    model.active = [True, False, True, False]
    model(x, x).backward()
    assert calls == [1, 0, 1, 0]
    for i, b in enumerate(model.blocks):
        grads = [p.grad for p in b.parameters()]
        assert all(g is None for g in grads) if i in (1, 3) else all(g is not None for g in grads)
    opt.step()
    after = model.state_dict()
    for i in range(4):
        prefix = f"blocks.{i}."
        moved = [not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix)]
        assert (not any(moved)) if i in (1, 3) else all(moved)
    assert all("momentum_buffer" not in opt.state[p] for p in model.blocks[1].parameters())
    # evaluation runs every block whatever the mask
    model.eval()
    with torch.no_grad():
        model(x, x)
    assert calls == [2, 1, 2, 1]


def test_compiled_blocks_do_not_recompile_for_new_skip_patterns(dw):
    import itertools
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = dw.GPT(64, 4, 2, 32)
    dw.compile_blocks(model, backend="eager")  # graphs are counted by dynamo, whatever the backend
    x = torch.randint(0, 64, (2, 16))
    model.train()
    patterns = list(itertools.product([True, False], repeat=4))
    for mask in patterns:  # all 16 patterns, each forward and backward
        model.active = list(mask)
        model(x, x).backward()
    # one graph for the blocks (shared by all four) and one for the head, whatever the patterns
    assert counters["stats"]["unique_graphs"] == 2, dict(counters["stats"])
    torch._dynamo.reset()


# ----------------------------------------------------------------------------- gradient averaging over ranks


def _sync_worker(rank, init_file, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.manual_seed(0)
    m = torch.nn.ModuleList([torch.nn.Linear(3, 2, bias=False), torch.nn.Linear(2, 2, bias=False)])
    m[0].weight.grad = torch.full((2, 3), float(rank + 1))  # rank 0: 1s, rank 1: 2s
    # m[1] has no gradient on either rank (a skipped block)
    dw = load_script(SCRIPT, "dw_worker")
    dw.sync_gradients(m, grad_accum=2, world_size=2, bucket_numel=4)  # a bucket limit below one tensor's size
    if rank == 1:
        torch.save(dict(g0=m[0].weight.grad, g1=m[1].weight.grad), out_file)
    dist.destroy_process_group()


def test_sync_gradients_averages_over_ranks_and_micro_steps(tmp_path):
    out = str(tmp_path / "grads.pt")
    mp.spawn(_sync_worker, args=(str(tmp_path / "init"), out), nprocs=2)
    got = torch.load(out)
    # gradients accumulated over 2 micro-steps on each of 2 ranks: (1 + 2) / (2 x 2) = 0.75 everywhere
    assert torch.equal(got["g0"], torch.full((2, 3), 0.75))
    assert got["g1"] is None


# ----------------------------------------------------------------------------- whole runs


def test_two_gloo_ranks_skip_the_same_blocks_and_stay_in_lockstep(dw, shards, tmp_path):
    args = [*MICRO, *data_args(shards), "--num_iterations", 9, "--seed", 3, "--device_batch_size", 4,
            "--device", "cpu", "--depthwarm_trace", "--out_dir", str(tmp_path / "two")]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", SCRIPT,
                        *map(str, args)], env=ONE_THREAD, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    t0 = read_jsonl(tmp_path / "two" / "depthwarm_trace.rank0.jsonl")
    t1 = read_jsonl(tmp_path / "two" / "depthwarm_trace.rank1.jsonl")
    assert [r["step"] for r in t0] == list(range(9)) == [r["step"] for r in t1]
    assert [r["active"] for r in t0] == [r["active"] for r in t1]
    # identical weights on both ranks after every step: same skips, same averaged gradients, same updates
    assert [r["param_checksum"] for r in t0] == [r["param_checksum"] for r in t1]
    a = hp(dw, n_layer=4, num_iterations=9, seed=3)
    assert [r["active"] for r in t0] == [dw.depthwarm_mask(t, a) for t in range(9)]
    assert any(not all(r["active"]) for r in t0[:6])  # this seed does skip something, so the test means something
    m = [r for r in read_jsonl(tmp_path / "two" / "metrics.jsonl") if "train_loss" in r]
    assert [r["active_blocks"] for r in m] == [sum(r["active"]) for r in t0]
    assert [(r["depthwarm_depth"], r["depthwarm_prob"]) for r in m] == [dw.depthwarm_phase(t, a) for t in range(9)]
    with open(tmp_path / "two" / "summary.json") as f:
        s = json.load(f)
    assert s["status"] == "ok" and s["variant"] == "depthwarm" and s["env"]["processes"] == 2


def test_without_skips_it_trains_exactly_like_the_baseline(dw, shards, capsys, tmp_path):
    base = load_script(BASELINE, "train_gpt_baseline_for_depthwarm")
    common = [*MICRO, *data_args(shards), "--num_iterations", 4, "--seed", 5, "--device_batch_size", 4,
              "--val_loss_every", 2]
    assert base.main([*map(str, common), "--out_dir", str(tmp_path / "base")]) == 0
    assert dw.main([*map(str, common), "--depthwarm_prob1", "0", "--depthwarm_prob2", "0",
                    "--out_dir", str(tmp_path / "dw")]) == 0
    capsys.readouterr()
    curve = lambda d: [(r["step"], r.get("train_loss"), r.get("val_loss")) for r in read_jsonl(d / "metrics.jsonl")]
    assert curve(tmp_path / "dw") == curve(tmp_path / "base")  # bitwise: grad accumulation 2 included


def test_resumed_run_draws_the_same_skips_and_ends_where_an_uninterrupted_run_ends(dw, shards, capsys, tmp_path):
    import shutil
    full = tmp_path / "full"
    args = [*MICRO, *data_args(shards), "--num_iterations", 6, "--seed", 9]
    assert dw.main([*map(str, args), "--save_every", "2", "--keep_checkpoints", "5", "--out_dir", str(full)]) == 0
    cut = tmp_path / "cut"  # a run that died after its step-2 checkpoint (mid first third)
    shutil.copytree(full, cut)
    for f in os.listdir(cut / "checkpoints"):
        if f != "step_000002.pt":
            os.remove(cut / "checkpoints" / f)
    os.remove(cut / "summary.json")
    assert dw.main(["--resume", str(cut)]) == 0
    capsys.readouterr()
    curve = lambda d: [(r["step"], r.get("train_loss"), r.get("val_loss"), r.get("active_blocks"))
                       for r in read_jsonl(d / "metrics.jsonl")]
    assert curve(cut) == curve(full)
