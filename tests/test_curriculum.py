"""Behaviour of train_gpt_curriculum.py: the loader against a hand construction on a synthetic shard (same
tokens, shorter rows, targets shifted, nothing dropped or repeated), the fixed and plateau schedules against
hand values, the dry run at stage_a's settings, validation at full length, resume of a plateau run, and
equality with train_gpt.py when the curriculum is off. Models are tiny."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

from conftest import REPO, data_args, load_script, read_jsonl, run_main, write_shard

SCRIPT = os.path.join(REPO, "train_gpt_curriculum.py")
BASELINE = os.path.join(REPO, "train_gpt.py")
MICRO = ["--vocab_size", "64", "--n_layer", "2", "--n_head", "2", "--n_embd", "32", "--sequence_length", "32",
         "--batch_size", "8", "--device_batch_size", "4", "--val_tokens", "1024", "--val_loss_every", "0",
         "--learning_rate", "0.02", "--warmdown_iters", "2"]


@pytest.fixture(scope="module")
def cur():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: a second thread only waits on a busy machine
    yield load_script(SCRIPT, "train_gpt_curriculum_under_test")
    torch.set_num_threads(threads)


@pytest.fixture
def shards(make_shards):
    return make_shards("synth", n_train=2, train_tokens=20_000, val_tokens=4_000, vocab=64)


def hp(mod, argv=()):
    return mod.parse_args(list(argv))[0]


run = run_main  # (module, capsys, *argv) -> (exit code, stdout, stderr)


# ----------------------------------------------------------------------------- the loader


def test_loader_views_the_same_contiguous_tokens_as_shorter_rows(cur, tmp_path):
    # a shard whose token at position i is i: every batch can be checked against positions by hand
    shard = cur.open_shard(write_shard(tmp_path / "t_000000.bin", np.arange(5000)), "")
    B, T, W, start = 4, 16, 2, 7
    loaders = [cur.DataLoader([shard], B, T, r, W, start_pos=start) for r in range(W)]
    seen = []
    for step, L in enumerate([4, 4, 8, 16, 8]):  # lengths may change at any step
        for r, ld in enumerate(loaders):
            ld.seq_len = L
            x, y = ld.next_batch(torch.device("cpu"))
            first = start + step * B * T * W + r * B * T  # the baseline's chunk for this rank and step
            rows = B * T // L
            expect = first + np.arange(rows)[:, None] * L + np.arange(L)[None, :]
            assert x.shape == y.shape == (rows, L)  # B*T tokens per micro-step whatever L is
            assert np.array_equal(x.numpy(), expect)
            assert np.array_equal(y.numpy(), expect + 1)  # each target is the next token of the stream
            seen.append(x.numpy().ravel())
    seen = np.sort(np.concatenate(seen))
    # across ranks and steps: every token from the start offset on, once, none dropped or repeated
    assert np.array_equal(seen, np.arange(start, start + 5 * B * T * W))
    # the validation loader (no seq_len set) gives full rows
    x, _ = cur.DataLoader([shard], B, T, 0, 1).next_batch(torch.device("cpu"))
    assert x.shape == (B, T)


# ----------------------------------------------------------------------------- the schedule


def test_fixed_schedule_by_hand(cur):
    a = hp(cur, ["--num_iterations", "1000"])  # the record's 1,024 tokens
    assert cur.curriculum_lengths(a) == [256, 512, 1024]
    c = cur.Curriculum(a)
    got = {t: c.begin_step(t) for t in (0, 249, 250, 499, 500, 999)}
    assert got == {0: 256, 249: 256, 250: 512, 499: 512, 500: 1024, 999: 1024}
    # the tiny preset scales to its own length: 32 -> 64 -> 128, over the first 60 of 150 steps with frac 0.4
    a = hp(cur, ["--preset", "tiny", "--curriculum_frac", "0.4"])
    c = cur.Curriculum(a)
    assert [c.begin_step(t) for t in (0, 29, 30, 59, 60, 149)] == [32, 32, 64, 64, 128, 128]
    # an explicit start of 1/8 gives four stages; off is full length throughout
    # (60 steps x 0.5 = 30 steps shared by three shorter lengths: boundaries at 10, 20, 30)
    a = hp(cur, ["--num_iterations", "60", "--curriculum_start_len", "128"])
    c = cur.Curriculum(a)
    assert c.lengths == [128, 256, 512, 1024]
    assert [c.begin_step(t) for t in (0, 9, 10, 19, 20, 29, 30, 59)] == [128, 128, 256, 256, 512, 512, 1024, 1024]
    a = hp(cur, ["--curriculum", "off"])
    assert cur.Curriculum(a).begin_step(0) == 1024


def test_plateau_grows_after_patience_and_at_the_deadline_at_the_latest(cur):
    a = hp(cur, ["--num_iterations", "100", "--curriculum", "plateau", "--plateau_patience", "3",
                 "--plateau_threshold", "0.01", "--plateau_ema", "0"])
    c = cur.Curriculum(a)
    # no smoothing (ema 0): 10, 9, 8 improve; then 8, 7.95, 7.93 are each less than 1% below the best 8
    lengths, grew = [], []
    for t, loss in enumerate([10, 9, 8, 8, 7.95, 7.93, 7.0]):
        lengths.append(c.begin_step(t))
        grew.append(c.observe(loss))
    assert grew == [False] * 5 + [True, False]
    assert lengths == [256] * 6 + [512]
    # the next stage starts afresh, and the fixed boundary (step 50 for --curriculum_frac 0.5) forces growth
    assert c.begin_step(49) == 512 and c.begin_step(50) == 1024
    # with smoothing: EMA_k = 0.5 EMA_(k-1) + 0.5 loss
    c = cur.Curriculum(hp(cur, ["--curriculum", "plateau", "--plateau_ema", "0.5"]))
    c.begin_step(0)
    for loss in (4.0, 2.0, 3.0):
        c.observe(loss)
    assert c.ema == pytest.approx(0.5 * (0.5 * 4.0 + 0.5 * 2.0) + 0.5 * 3.0)


def test_dry_run_prints_stage_a_schedule_without_data(cur, capsys, tmp_path):
    rc, out, err = run(cur, capsys, "--num_iterations", 1000, "--batch_size", 128, "--device_batch_size", 16,
                       "--warmdown_iters", 284, "--input_bin", tmp_path / "none_*.bin", "--dry_run_schedule")
    assert rc == 0, err
    rows = [line.split() for line in out.splitlines()[2:5]]
    assert rows == [["0-249", "256", "512", "64", "131,072"], ["250-499", "512", "256", "32", "131,072"],
                    ["500-999", "1024", "128", "16", "131,072"]]
    assert "validation: always 1024 tokens" in out


@pytest.mark.parametrize("flag,value", [("--curriculum_start_len", "48"), ("--curriculum_start_len", "2048"),
                                        ("--curriculum_frac", "1.5"), ("--plateau_patience", "0")])
def test_bad_flags_are_one_line_errors(cur, capsys, flag, value):
    rc, out, err = run(cur, capsys, flag, value, "--dry_run_schedule")
    assert rc == 2 and flag in err and len(err.strip().splitlines()) == 1, err


# ----------------------------------------------------------------------------- whole runs


def test_run_records_seq_len_and_validates_at_full_length(cur, shards, capsys, tmp_path):
    d = tmp_path / "run"
    rc, out, err = run(cur, capsys, *MICRO, *data_args(shards), "--num_iterations", 4, "--val_loss_every", 2,
                       "--save_every", 2, "--seed", 3, "--out_dir", d)
    assert rc == 0, err
    recs = read_jsonl(d / "metrics.jsonl")
    # 4 steps, frac 0.5 over two shorter lengths: one step at 8, one at 16, then 32
    assert [r["seq_len"] for r in recs if "train_loss" in r] == [8, 16, 32, 32]
    # the val loss logged at step 2 is the model of the step-2 checkpoint evaluated on full-length rows
    val2 = next(r["val_loss"] for r in recs if r.get("val_loss") is not None and r["step"] == 2)
    ck = torch.load(d / "checkpoints" / "step_000002.pt", map_location="cpu", weights_only=False)
    model = cur.GPT(64, 2, 2, 32)
    model.load_state_dict(ck["model"])
    model.eval()
    val_shard = cur.open_shard(shards[1].replace("*", "000000"), "")

    def val_loss(seq_len):
        ld = cur.DataLoader([val_shard], 4, 32, 0, 1)
        ld.seq_len = seq_len
        with torch.no_grad():
            return sum(model(*ld.next_batch(torch.device("cpu"))).item() for _ in range(8)) / 8

    full, short = val_loss(32), val_loss(8)
    assert val2 == pytest.approx(full, rel=1e-5)
    assert abs(full - short) > 1e-3  # the check can tell the two apart
    s = json.load(open(d / "summary.json"))
    assert s["status"] == "ok" and s["variant"] == "curriculum" and s["config"]["tokens_per_step"] == 8 * 32


def test_plateau_run_resumes_where_it_stopped(cur, shards, capsys, tmp_path):
    full = tmp_path / "full"
    args = [*MICRO, *data_args(shards), "--num_iterations", 10, "--seed", 7, "--curriculum", "plateau",
            "--plateau_patience", 1, "--plateau_threshold", "0.5", "--curriculum_frac", 1.0]
    rc, out, err = run(cur, capsys, *args, "--save_every", 2, "--keep_checkpoints", 10, "--out_dir", full)
    assert rc == 0, err
    lens = [r["seq_len"] for r in read_jsonl(full / "metrics.jsonl") if "train_loss" in r]
    assert lens[:3] == [8, 8, 16]  # grown by the plateau rule (its deadline would be step 5)
    ck = torch.load(full / "checkpoints" / "step_000002.pt", map_location="cpu", weights_only=False)
    assert ck["loader"]["curriculum"]["stage"] == 1
    # a run that died after its step-2 checkpoint continues at the length it had reached
    cut = tmp_path / "cut"
    shutil.copytree(full, cut)
    for f in os.listdir(cut / "checkpoints"):
        if f != "step_000002.pt":
            os.remove(cut / "checkpoints" / f)
    os.remove(cut / "summary.json")
    rc, out, err = run(cur, capsys, "--resume", cut)
    assert rc == 0, err
    curve = lambda d: [(r["step"], r.get("train_loss"), r.get("seq_len")) for r in read_jsonl(d / "metrics.jsonl")]
    assert curve(cut) == curve(full)


def test_curriculum_off_trains_exactly_like_the_baseline(cur, shards, capsys, tmp_path):
    base = load_script(BASELINE, "train_gpt_baseline_for_curriculum")
    common = [*MICRO, *data_args(shards), "--num_iterations", 3, "--seed", 5, "--val_loss_every", 3]
    rc, out, err = run(base, capsys, *common, "--out_dir", tmp_path / "base")
    assert rc == 0, err
    rc, out, err = run(cur, capsys, *common, "--curriculum", "off", "--out_dir", tmp_path / "cur")
    assert rc == 0, err
    curve = lambda d: [(r["step"], r.get("train_loss"), r.get("val_loss")) for r in read_jsonl(d / "metrics.jsonl")]
    assert curve(tmp_path / "cur") == curve(tmp_path / "base")


def test_compiled_run_makes_one_graph_per_length_all_before_training(cur, shards, capsys, tmp_path, monkeypatch):
    from torch._dynamo.utils import counters
    real_compile = torch.compile
    # the trainer's torch.compile with dynamo's cheapest backend: the graphs are dynamo's, whatever the backend
    monkeypatch.setattr(torch, "compile", lambda model, **kw: real_compile(model, backend="eager", **kw))
    torch._dynamo.reset()
    counters.clear()
    rc, out, err = run(cur, capsys, *MICRO, *data_args(shards), "--num_iterations", 4, "--compile", "on",
                       "--out_dir", tmp_path / "c")
    assert rc == 0, err
    lens = [r["seq_len"] for r in read_jsonl(tmp_path / "c" / "metrics.jsonl") if "train_loss" in r]
    assert lens == [8, 16, 32, 32]
    # 3 training lengths (compiled by the warm-up) + 1 validation graph: training itself added none
    assert counters["stats"]["unique_graphs"] == 4, dict(counters["stats"])
    torch._dynamo.reset()
