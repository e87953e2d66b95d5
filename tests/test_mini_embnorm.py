"""train_mini_embnorm.py: variants, norms, metrics by hand, run-dir outputs, reproducibility, faults."""
import errno
import json
import math
import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "data"))
import prepare_shakespeare as prep  # noqa: E402
from conftest import load_script  # noqa: E402
import train_mini_embnorm as mini  # noqa: E402

TINY = ["--n_layer", "2", "--n_embd", "32", "--n_head", "4", "--seq_len", "16", "--batch_size", "4",
        "--val_seqs", "8", "--eval_batch", "4", "--num_iterations", "6", "--val_every", "3",
        "--log_every", "2", "--device", "cpu", "--threads", "1"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tinychar")
    src = d / "text.txt"
    lines = [f"Line {i}: to be, or not to be {'x' * (i % 7)}; that is {i * 37 % 101}." for i in range(200)]
    src.write_text("\n".join(lines) + "\n")
    assert prep.main(["--text", str(src), "--out", str(d / "out")]) == 0
    return str(d / "out")


def test_variants_share_every_parameter_but_the_norms():
    models = {}
    for v in mini.VARIANTS:
        torch.manual_seed(7)
        models[v] = dict(mini.MiniGPT(v, n_layer=2).named_parameters())
    base = models["baseline"]
    assert not any(k.startswith("emb_norm") for k in base)
    for v, extra in (("layernorm", {"emb_norm.weight", "emb_norm.bias"}), ("rmsnorm", {"emb_norm.weight"})):
        assert set(models[v]) - set(base) == extra and set(base) <= set(models[v])
        for k, p in base.items():  # same seed: identical shared weights, so runs are paired
            assert torch.equal(p, models[v][k]), (v, k)


def test_embedding_norm_outputs_have_the_expected_statistics():
    torch.manual_seed(0)
    idx = torch.randint(0, 128, (3, 20))
    out = {}
    for v in mini.VARIANTS:
        torch.manual_seed(1)
        m = mini.MiniGPT(v, n_layer=1)
        with torch.no_grad():
            m.wte.weight.add_(0.5)  # give the summed embedding a clear non-zero mean
            raw = m.wte(idx) + m.wpe(torch.arange(20))
            out[v] = (raw, m.embed(idx))
    raw, x = out["baseline"]
    assert torch.equal(x, raw)
    _, ln = out["layernorm"]
    torch.testing.assert_close(ln.mean(-1), torch.zeros(3, 20), atol=1e-5, rtol=0)
    v = raw.var(-1, unbiased=False)  # LayerNorm divides by sqrt(var + eps), eps = 1e-5
    torch.testing.assert_close(ln.var(-1, unbiased=False), v / (v + 1e-5), atol=1e-4, rtol=0)
    assert (ln.var(-1, unbiased=False) > 0.9).all()
    _, rms = out["rmsnorm"]
    torch.testing.assert_close(rms.pow(2).mean(-1).sqrt(), torch.ones(3, 20), atol=1e-4, rtol=0)
    # RMSNorm rescales without centring: the direction of the raw vector is kept.
    torch.testing.assert_close(rms, raw / (raw.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt(), atol=1e-5, rtol=1e-5)
    assert rms.mean() > 0.5


def test_accuracy_and_macro_accuracy_by_hand():
    # 6 positions, 4 classes. Predictions (argmax): 0, 1, 1, 2, 2, 3; targets: 0, 0, 1, 1, 2, 0.
    logits = torch.tensor([[[5., 0, 0, 0], [0, 5, 0, 0], [0, 5, 0, 0]],
                           [[0, 0, 5, 0], [0, 0, 5, 0], [0, 0, 0, 5]]])
    targets = torch.tensor([[0, 0, 1], [1, 2, 0]])
    correct, count = mini.class_counts(logits, targets, 4)
    assert correct.tolist() == [1, 1, 1, 0] and count.tolist() == [3, 2, 1, 0]
    acc, macro = mini.accuracies(correct, count)
    assert acc == pytest.approx(3 / 6)
    # per class present: 0 -> 1/3, 1 -> 1/2, 2 -> 1/1; class 3 never a target, so not averaged
    assert macro == pytest.approx((1 / 3 + 1 / 2 + 1) / 3)


def test_the_optimizer_is_torch_adamw_fused_bit_for_bit():
    """make_optimizer's FusedAdamW against torch.optim.AdamW(fused=True) with the same two groups: the
    same parameters and moments, to the bit, after several steps from the same start."""
    models = []
    for _ in range(2):
        torch.manual_seed(3)
        models.append(mini.MiniGPT("layernorm", vocab_size=128, seq_len=16, n_layer=2, dim=32, n_head=4))
    start = [p.detach().clone() for p in models[0].parameters()]
    ours = mini.make_optimizer(models[0], 1e-2, (0.9, 0.95), 0.1, torch.device("cpu"))
    decay = [p for p in models[1].parameters() if p.dim() >= 2]
    no_decay = [p for p in models[1].parameters() if p.dim() < 2]
    ref = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-2, betas=(0.9, 0.95), eps=1e-8, fused=True)
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        idx = torch.randint(0, 128, (2, 17), generator=g)
        for model, opt in ((models[0], ours), (models[1], ref)):
            model(idx[:, :-1], idx[:, 1:]).backward()
            opt.step()
            opt.zero_grad()
    pairs = list(zip(models[0].named_parameters(), models[1].parameters()))
    for (name, a), b in pairs:
        assert torch.equal(a, b), name
        step, exp_avg, exp_avg_sq = ours.state[a]
        assert step.item() == ref.state[b]["step"].item() == 4
        assert torch.equal(exp_avg, ref.state[b]["exp_avg"]) and torch.equal(exp_avg_sq, ref.state[b]["exp_avg_sq"])
        assert a.grad is None
    assert not any(torch.equal(a, s) for ((_, a), _), s in zip(pairs, start))  # every tensor was updated


def test_training_does_not_import_torch_dynamo(data_dir, tmp_path):
    """The reason FusedAdamW exists: torch.optim.Optimizer's constructor imports torch._dynamo (seconds
    of start-up per run). A fresh process runs a whole training run without importing it."""
    code = ("import sys, train_mini_embnorm as m; "
            f"rc = m.main({[*TINY, '--data_dir', data_dir, '--out_dir', str(tmp_path / 'r')]!r}); "
            "print('rc', rc, 'dynamo', 'torch._dynamo' in sys.modules)")
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.stdout.strip().splitlines()[-1] == "rc 0 dynamo False", p.stdout + p.stderr


def run(data_dir, out_dir, *extra):
    return subprocess.run([sys.executable, os.path.join(REPO, "train_mini_embnorm.py"), *TINY,
                           "--data_dir", data_dir, "--out_dir", str(out_dir), *extra],
                          capture_output=True, text=True, timeout=120)


def run_here_err(data_dir, out_dir, capsys, *extra):
    """The same run in this process (saves starting Python and torch again); returns (code, stdout, stderr)."""
    threads = torch.get_num_threads()
    try:
        code = mini.main([*TINY, "--data_dir", data_dir, "--out_dir", str(out_dir), *extra])
    finally:
        torch.set_num_threads(threads)
    return (code, *capsys.readouterr())


def run_here(data_dir, out_dir, capsys, *extra):
    return run_here_err(data_dir, out_dir, capsys, *extra)[:2]


def read_jsonl(path):
    return [json.loads(line) for line in open(path)]


def test_same_seed_gives_identical_runs_and_full_summary(data_dir, tmp_path, capsys):
    code_a, out_a = run_here(data_dir, tmp_path / "a", capsys, "--variant", "rmsnorm", "--seed", "5")
    code_b, _ = run_here(data_dir, tmp_path / "b", capsys, "--variant", "rmsnorm", "--seed", "5")
    code_c, _ = run_here(data_dir, tmp_path / "c", capsys, "--variant", "rmsnorm", "--seed", "6")
    assert code_a == 0 and code_b == 0 and code_c == 0
    sa, sb, sc = (json.load(open(tmp_path / n / "summary.json")) for n in "abc")
    assert sa["status"] == "ok" and sa["error"] is None and sa["steps_completed"] == 6
    timing = {"train_time_s", "wall_time_s", "cpu_time_s", "tokens_per_s", "peak_memory_mib"}
    need = {"val_loss", "val_ppl", "grad_norm", "accuracy", "macro_accuracy", "embedding_norm",
            "train_time_s", "tokens_per_s", "wall_time_s", "peak_memory_mib", "num_params", "train_loss"}
    assert need <= set(sa["metrics"])
    same = {k: v for k, v in sa["metrics"].items() if k not in timing}
    assert same == {k: v for k, v in sb["metrics"].items() if k not in timing}
    assert same["val_loss"] != sc["metrics"]["val_loss"]
    assert same["val_ppl"] == pytest.approx(math.exp(same["val_loss"]))
    assert same["embedding_norm"] == pytest.approx(math.sqrt(32), rel=0.05)  # RMSNorm, gain ~1, d=32
    la = [r["train_loss"] for r in read_jsonl(tmp_path / "a" / "metrics.jsonl") if "train_loss" in r]
    lb = [r["train_loss"] for r in read_jsonl(tmp_path / "b" / "metrics.jsonl") if "train_loss" in r]
    assert la == lb and len(la) == 6
    vals = [r for r in read_jsonl(tmp_path / "a" / "metrics.jsonl") if "val_loss" in r]
    assert [r["step"] for r in vals] == [3, 6]
    assert f"step:6/6 val_loss:{vals[-1]['val_loss']:.4f} train_time:" in out_a
    n = sum(p.numel() for p in mini.MiniGPT("rmsnorm", 128, 16, 2, 32, 4).parameters())
    assert sa["metrics"]["num_params"] == n and f"parameters: {n:,}" in out_a
    assert sa["config"]["variant"] == "rmsnorm" and sa["env"]["device"] == "cpu"
    assert "git_commit" in sa["env"] and "git_dirty" in sa["env"]


def test_missing_data_fails_with_the_prepare_command(tmp_path):
    r = run(str(tmp_path / "nodata"), tmp_path / "o")
    assert r.returncode == 1
    s = json.load(open(tmp_path / "o" / "summary.json"))
    assert s["status"] == "failed" and "python data/prepare_shakespeare.py" in s["error"]
    assert "python data/prepare_shakespeare.py" in r.stderr.strip().splitlines()[-1]


def test_nan_loss_is_reported_as_diverged(data_dir, tmp_path, capsys):
    code, _ = run_here(data_dir, tmp_path / "o", capsys, "--lr", "inf")
    s = json.load(open(tmp_path / "o" / "summary.json"))
    assert code == 3 and s["status"] == "diverged" and "nan" in s["error"]


def test_existing_run_directory_is_not_overwritten(data_dir, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "summary.json").write_text('{"keep": true}')
    code = mini.main([*TINY, "--data_dir", data_dir, "--out_dir", str(out)])
    assert code == 2 and "already holds a run" in capsys.readouterr().err
    assert (out / "summary.json").read_text() == '{"keep": true}' and not (out / "metrics.jsonl").exists()


@pytest.mark.parametrize("exc, status, code", [
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes"), "oom", 4),
    (KeyboardInterrupt(), "interrupted", 130),
    (ValueError("something unexpected\nsecond line"), "failed", 1),
])
def test_faults_in_training_get_their_status(data_dir, tmp_path, capsys, monkeypatch, exc, status, code):
    def explode(self, idx, targets):
        raise exc
    monkeypatch.setattr(mini.MiniGPT, "forward", explode)
    got, _ = run_here(data_dir, tmp_path / "o", capsys)
    s = json.load(open(tmp_path / "o" / "summary.json"))
    assert (got, s["status"]) == (code, status)
    assert s["error"] and "\n" not in s["error"] and s["steps_completed"] == 0
    assert s["metrics"]["num_params"] > 0 and "val_loss" not in s["metrics"]
    # no step completed: there is no training time to report, so it is null (not a misleading 0)
    assert s["metrics"]["train_time_s"] is None and "tokens_per_s" not in s["metrics"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given when CUDA is absent")
def test_cuda_without_a_gpu_is_a_clear_flag_error(data_dir, tmp_path, capsys):
    code = mini.main([*TINY[:-4], "--device", "cuda", "--data_dir", data_dir, "--out_dir", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--device cuda" in err and "--device cpu" in err
    assert not (tmp_path / "o").exists()


def test_summary_goes_only_into_the_directory_the_run_started_in(data_dir, tmp_path, capsys, monkeypatch):
    # Mid-run, --out_dir is moved aside and a new directory takes its path (a rerun superseding it).
    out, moved = tmp_path / "o", tmp_path / "o.superseded"
    real = mini.log_train_losses

    def supersede_then_log(*a, **k):
        if not moved.exists():
            os.rename(out, moved)
            out.mkdir()
        return real(*a, **k)
    monkeypatch.setattr(mini, "log_train_losses", supersede_then_log)
    code, _, err = run_here_err(data_dir, out, capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "no longer the directory this run started in" in err
    assert os.listdir(out) == [] and sorted(os.listdir(moved)) == ["metrics.jsonl"]


class FullDisk:
    """A file whose writes fail with ENOSPC once `budget` writes have been made (a disk filling up)."""

    def __init__(self, f, budget):
        self.f, self.budget = f, budget

    def write(self, text):
        if self.budget <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.budget -= 1
        return self.f.write(text)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def fill_disk_on(monkeypatch, suffix, budget):
    """Files the trainer opens whose name ends with `suffix` get a full disk after `budget` writes."""
    def fake_open(path, *a, **k):
        f = open(path, *a, **k)
        return FullDisk(f, budget) if str(path).endswith(suffix) else f
    monkeypatch.setattr(mini, "open", fake_open, raising=False)


def test_full_disk_while_logging_metrics_fails_the_run_with_one_line(data_dir, tmp_path, capsys, monkeypatch):
    fill_disk_on(monkeypatch, "metrics.jsonl", budget=3)
    code, _, err = run_here_err(data_dir, tmp_path / "o", capsys)
    s = json.load(open(tmp_path / "o" / "summary.json"))
    assert code == 1 and s["status"] == "failed" and len(err.strip().splitlines()) == 1
    assert s["error"] == f"{tmp_path / 'o' / 'metrics.jsonl'}: cannot write (No space left on device)"
    assert s["error"] in err and sorted(os.listdir(tmp_path / "o")) == ["metrics.jsonl", "summary.json"]


def test_full_disk_when_writing_the_summary_leaves_no_temp_file(data_dir, tmp_path, capsys, monkeypatch):
    fill_disk_on(monkeypatch, f".tmp{os.getpid()}", budget=0)
    code, _, err = run_here_err(data_dir, tmp_path / "o", capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "summary.json: cannot write (No space left on device)" in err
    assert os.listdir(tmp_path / "o") == ["metrics.jsonl"]  # no summary, no summary.json.tmp*


# ----------------------------------------------------------------------------- the benchmarks' device choice
# (bench/peak.py, used by bench_mini_embnorm.py, bench_variants.py and bench_depthwarm.py; checked on CPU)

sys.path.insert(0, os.path.join(REPO, "bench"))
import peak  # noqa: E402


def test_each_rank_gets_its_own_gpu_or_a_one_line_refusal():
    assert peak.rank_device("cpu", 5, 0) == torch.device("cpu")
    assert [peak.rank_device("cuda", r, 8) for r in range(8)] == [torch.device("cuda", r) for r in range(8)]
    with pytest.raises(ValueError, match="local rank 8 needs a GPU of its own but 8 are visible"):
        peak.rank_device("cuda", 8, 8)
    with pytest.raises(ValueError, match="no CUDA device is visible; use --device cpu"):
        peak.rank_device("cuda", 0, 0)


def test_concurrent_runs_get_distinct_gpus_and_sharing_is_said():
    assert peak.visible_gpu_ids({}, 3) == ["0", "1", "2"]
    assert peak.visible_gpu_ids({"CUDA_VISIBLE_DEVICES": "3, 5"}, 2) == ["3", "5"]
    assert peak.assign_gpus(2, ["3", "5", "6"]) == (["3", "5"], None)
    ids, note = peak.assign_gpus(3, ["3", "5"])
    assert ids == ["3", "5", "3"] and "SHARE" in note and "GPU 3: slots 0 2" in note and "GPU 5" not in note
    with pytest.raises(ValueError, match="no CUDA device is visible"):
        peak.assign_gpus(1, [])


def test_bench_study_defaults_to_cpu_and_gives_each_cuda_run_its_own_gpu(tmp_path, monkeypatch, capsys):
    bench = load_script(os.path.join(REPO, "bench", "bench_mini_embnorm.py"), "bench_mini_embnorm_t")
    assert bench.parse_args([]).device == "cpu"
    with pytest.raises(SystemExit):
        bench.parse_args(["--malloc", "--device", "cuda"])
    started = []

    class Done:  # a run that has already finished
        returncode = 0

        def __init__(self, cmd, env, **kw):
            started.append((cmd, env.get("CUDA_VISIBLE_DEVICES")))

        def poll(self):
            return 0
    monkeypatch.setattr(bench.subprocess, "Popen", Done)
    monkeypatch.setattr(bench.torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    args = bench.parse_args(["--study", "--device", "cuda", "--jobs", "2", "--seeds", "1", "--variants", "baseline",
                             "layernorm", "--study_dir", str(tmp_path)])
    assert bench.run_study(args) == 0
    assert [gpu for _, gpu in started] == ["0", "1"]
    assert all(cmd[cmd.index("--device") + 1] == "cuda" for cmd, _ in started)
    assert "has a GPU of its own: 0, 1" in capsys.readouterr().out
    started.clear()
    assert bench.run_study(bench.parse_args(["--study", "--seeds", "1", "--variants", "baseline",
                                             "--study_dir", str(tmp_path / "cpu")])) == 0
    assert started[0][0][started[0][0].index("--device") + 1] == "cpu" and started[0][1] is None


def test_peak_matmul_size_shrinks_for_a_slow_dtype_by_hand():
    # a 256 matmul in 0.11 s (bf16 at ~0.3 GFLOP/s): 2048 would take 0.11 * 8^3 = 56 s, 1024 7 s, 512 0.88 s
    assert peak.matmul_size(0.11, 256, 2048, 2.0) == 512
    # fast enough (fp32 at ~40 GFLOP/s: 0.84 ms at 256, 0.43 s at 2048): the requested size stays
    assert peak.matmul_size(0.00084, 256, 2048, 2.0) == 2048
    # never below the probe's size, whatever the time
    assert peak.matmul_size(10.0, 256, 2048, 2.0) == 256
    assert peak.matmul_size(10.0, 128, 128, 2.0) == 128
