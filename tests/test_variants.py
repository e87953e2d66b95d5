"""The train_gpt_*.py variants: the diff guard (every variant differs from train_gpt.py only inside
marked regions and its docstring), its re-sync, the PaLM-parallel block, and layer-wise Muon momentum.
Models here are tiny; the trainings are a few steps."""
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import MICRO, REPO, data_args, load_script, load_summary, read_jsonl, run_main

sys.path.insert(0, os.path.join(REPO, "tools"))
import variant_guard as vg  # noqa: E402

BASE = os.path.join(REPO, "train_gpt.py")
VARIANTS = vg.discover(BASE)
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}

def load(name):
    return load_script(os.path.join(REPO, f"{name}.py"), f"{name}_under_test")


@pytest.fixture(scope="module")
def mods():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: a second thread only adds waiting on a busy machine
    yield {n: load(n) for n in ("train_gpt", "train_gpt_palm", "train_gpt_lmd")}
    torch.set_num_threads(threads)


@pytest.fixture
def shards(make_shards):
    return make_shards("synth", n_train=2, train_tokens=20_000, val_tokens=8_192, vocab=64)


run = run_main  # (module, capsys, *argv) -> (exit code, stdout, stderr)


# ----------------------------------------------------------------------------- the guard on the real files


def test_variants_are_discovered():
    names = [os.path.basename(p) for p in VARIANTS]
    assert "train_gpt_palm.py" in names and "train_gpt_lmd.py" in names


@pytest.mark.parametrize("variant", VARIANTS, ids=[os.path.basename(p) for p in VARIANTS])
def test_variant_differs_from_train_gpt_only_inside_marked_regions(variant):
    problems = vg.check(BASE, variant)
    assert not problems, "\n\n".join(problems)


# ----------------------------------------------------------------------------- the guard on small made-up files

BASE_SRC = '''"""Base doc.

Two lines.
"""
import os


def f(x):
    return x + 1


def g(x):
    y = x * 2
    return y


def main():
    print(f(1), g(2))
'''

GOOD_VARIANT = '''"""Demo variant: g triples.
"""
import os


def f(x):
    return x + 1


def g(x):
    # --- variant: demo ---
    y = x * 3
    # --- end variant ---
    return y


def main():
    print(f(1), g(2))
'''


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def guard(tmp_path, variant_text, base_text=BASE_SRC, record=False):
    base = write(tmp_path, "train_gpt.py", base_text)
    if record:
        variant_text = vg.set_sync_record(variant_text, "v", vg.git_blob_sha(base_text))
    var = write(tmp_path, "train_gpt_demo.py", variant_text)
    return vg.check(base, var, require_sync_record=record)


def test_guard_accepts_changes_inside_regions_and_docstring(tmp_path):
    assert guard(tmp_path, GOOD_VARIANT) == []
    assert guard(tmp_path, GOOD_VARIANT, record=True) == []


@pytest.mark.parametrize("old,new,shown", [
    ("    return x + 1\n", "    return x + 2\n", "+    return x + 2"),  # a changed line
    ("import os\n", "import os\nimport sys\n", "+import sys"),  # an added line
    ("import os\n", "", "-import os"),  # a removed line
    ("def main():\n", "\ndef main():\n", "+\n"),  # even a blank line
])
def test_guard_shows_drift_outside_regions_as_a_unified_diff(tmp_path, old, new, shown):
    text = GOOD_VARIANT.replace(old, new, 1)
    assert text != GOOD_VARIANT
    problems = guard(tmp_path, text)
    assert len(problems) == 1 and "outside its marked regions" in problems[0]
    diff = problems[0].split("\n", 1)[1]
    assert diff.startswith("--- ") and "+++ " in diff and "@@ " in diff and shown in diff
    # the diff shows the drift only, not the region
    assert "x * 3" not in diff


def test_guard_tolerates_blank_lines_that_difflib_may_place_either_side_of_a_region(tmp_path):
    base = '"""Base."""\nimport os\n\n\ndef f():\n    return 1\n'
    # an inserted top-level function: the region carries its own two blank lines
    var = ('"""Variant."""\nimport os\n\n\n# --- variant: demo ---\ndef h():\n    return 2\n\n\n# --- end variant ---\n'
           'def f():\n    return 1\n')
    assert guard(tmp_path, var, base_text=base) == []
    # two more blank lines outside the region are drift
    var2 = var.replace("import os\n", "import os\n\n\n", 1)
    assert len(guard(tmp_path, var2, base_text=base)) == 1


@pytest.mark.parametrize("text,expect", [
    (GOOD_VARIANT.replace("    # --- end variant ---\n", ""), "never closed"),
    (GOOD_VARIANT.replace("    # --- variant: demo ---\n", ""), "without an opening"),
    (GOOD_VARIANT.replace("# --- variant: demo ---", "# --- variant:  ---"), "without a name"),
    (GOOD_VARIANT.replace("# --- variant: demo ---", "# --- variant: palm ---"), "named 'palm'"),
    (GOOD_VARIANT.replace("    y = x * 3\n", "    # --- variant: demo ---\n    y = x * 3\n"), "do not nest"),
    (GOOD_VARIANT.replace("# --- end variant ---", "# --- end variant"), "looks like a region marker"),
    (GOOD_VARIANT.replace("    return x + 1\n", "    return x +\n"), "not valid Python"),
])
def test_unbalanced_unnamed_or_broken_regions_are_refused_with_the_line(tmp_path, text, expect):
    with pytest.raises(vg.GuardError) as e:
        guard(tmp_path, text)
    assert expect in str(e.value) and "train_gpt_demo.py:" in str(e.value)


def test_stale_or_missing_sync_record_fails(tmp_path):
    base = write(tmp_path, "train_gpt.py", BASE_SRC)
    var = write(tmp_path, "train_gpt_demo.py", GOOD_VARIANT)
    problems = vg.check(base, var)
    assert len(problems) == 1 and "does not say which" in problems[0]
    # a variant synced with another train_gpt.py: even a change that its region covers must be noticed
    var_text = vg.set_sync_record(GOOD_VARIANT, var, vg.git_blob_sha(BASE_SRC))
    write(tmp_path, "train_gpt_demo.py", var_text)
    assert vg.check(base, var) == []
    write(tmp_path, "train_gpt.py", BASE_SRC.replace("y = x * 2", "y = x * 2 + 0"))
    problems = vg.check(base, var)
    assert len(problems) == 1 and "changed since" in problems[0] and "sync" in problems[0]


def test_sync_three_way_merges_base_changes_and_stops_at_conflicts(tmp_path):
    old = write(tmp_path, "old_base.py", BASE_SRC)
    var = write(tmp_path, "train_gpt_demo.py", GOOD_VARIANT)
    new_text = BASE_SRC.replace("    return x + 1\n", "    return x + 1  # fixed\n").replace(
        '"""Base doc.', '"""Base doc, reworded.')
    base = write(tmp_path, "train_gpt.py", new_text)
    msgs = []
    assert vg.sync(base, var, old_base=old, out=msgs.append) == 0
    merged = open(var).read()
    assert "return x + 1  # fixed" in merged and "y = x * 3" in merged  # the base's fix and the region
    assert merged.startswith('"""Demo variant: g triples.\n')  # the variant's own docstring
    assert vg.check(base, var) == [] and "three-way" in msgs[0]
    assert vg.sync(base, var, out=msgs.append) == 0 and "already synced" in msgs[-1]
    # the base changes the very line the region replaces: a conflict, the variant is left as it was
    write(tmp_path, "old_base.py", new_text)
    write(tmp_path, "train_gpt.py", new_text.replace("y = x * 2", "y = 2 * x"))
    before = open(var).read()
    assert vg.sync(base, var, old_base=old, out=msgs.append) == 1
    assert open(var).read() == before and "conflict" in msgs[-1]
    conflict = open(var + ".merge").read()
    assert "<<<<<<<" in conflict and "y = 2 * x" in conflict and "y = x * 3" in conflict
    # an unresolved .merge file is never overwritten
    with pytest.raises(vg.GuardError, match="exists"):
        vg.sync(base, var, old_base=old, out=msgs.append)
    # resolved by hand (the region's side kept) and moved over: it records the new base, so check passes
    resolved = re.sub(r"<<<<<<< [^\n]*\n(.*?)=======\n.*?>>>>>>> [^\n]*\n", r"\1", conflict, flags=re.S)
    assert "<<<<<<<" not in resolved and resolved != conflict
    write(tmp_path, "train_gpt_demo.py", resolved)
    os.remove(var + ".merge")
    assert vg.check(base, var) == []
    assert vg.sync(base, var, out=msgs.append) == 0 and "already synced" in msgs[-1]


def test_sync_keeps_the_variants_own_drift_out_of_the_variant(tmp_path):
    base_text = BASE_SRC.replace("print(f(1), g(2))", "print(f(1), g(3))")
    base = write(tmp_path, "train_gpt.py", base_text)
    edited = vg.set_sync_record(GOOD_VARIANT.replace("    return x + 1\n", "    return x - 1\n"), "v",
                                vg.git_blob_sha(BASE_SRC))
    var = write(tmp_path, "train_gpt_demo.py", edited)
    # a three-way merge keeps the variant's own edit outside its regions: reported, the variant untouched
    msgs = []
    assert vg.sync(base, var, old_base=write(tmp_path, "old.py", BASE_SRC), out=msgs.append) == 1
    assert "remain" in msgs[-1] and "+    return x - 1" in msgs[-1] and open(var).read() == edited
    merged = open(var + ".merge").read()
    assert "g(3)" in merged and "x - 1" in merged  # the base's change arrived, the drift stayed visible


def test_cli_check_and_sync_in_a_git_checkout(tmp_path):
    """The documented workflow: record, change train_gpt.py, check fails, sync (old base from git), check passes."""
    def git(*a):
        subprocess.run(["git", "-C", str(tmp_path), *a], check=True, capture_output=True)

    def cli(*a):
        return subprocess.run([sys.executable, os.path.join(REPO, "tools", "variant_guard.py"), *a,
                               "--base", str(tmp_path / "train_gpt.py")], capture_output=True, text=True,
                              cwd=tmp_path)
    git("init", "-q")
    write(tmp_path, "train_gpt.py", BASE_SRC)
    write(tmp_path, "train_gpt_demo.py", GOOD_VARIANT)
    r = cli("sync")  # a clean copy without a record: the current base is recorded
    assert r.returncode == 0 and "synced" in r.stdout, r.stdout + r.stderr
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    write(tmp_path, "train_gpt.py", BASE_SRC.replace("    return x + 1\n", "    return x + 1  # fixed\n"))
    r = cli("check")
    assert r.returncode == 1 and "changed since" in r.stdout and "+    return x + 1\n" in r.stdout
    r = cli("sync", "train_gpt_demo.py")
    assert r.returncode == 0, r.stdout + r.stderr
    assert cli("check").returncode == 0 and "# fixed" in (tmp_path / "train_gpt_demo.py").read_text()


# ----------------------------------------------------------------------------- palm


def randomise(module, std=0.3):
    torch.manual_seed(1)
    for p in module.parameters():
        torch.nn.init.normal_(p, std=std)  # the zero-initialised projections would hide the sub-layers


def test_palm_block_equals_the_formula(mods):
    palm = mods["train_gpt_palm"]
    block = palm.Block(32, 4).double()
    randomise(block)
    x = torch.randn(2, 16, 32, dtype=torch.float64)
    # h = rms(x) written out, then x + (attn(h) + mlp(h)) / sqrt(2) with the block's own sub-layers
    h = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + torch.finfo(torch.float64).eps)
    expected = x + (block.attn(h) + block.mlp(h)) / math.sqrt(2)
    got = block(x)
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-12)
    # the sequential baseline block gives something else on the same weights (the check can fail)
    base = mods["train_gpt"].Block(32, 4).double()
    base.load_state_dict(block.state_dict())
    assert (base(x) - expected).abs().max() > 1e-2


def count_norms(mod, monkeypatch, fn, width):
    """Calls of the module's rms_norm while fn() runs, split into width-sized (residual stream) inputs
    and others (the QK-norm on heads)."""
    calls = []
    real = mod.rms_norm

    def counting(x):
        calls.append(x.size(-1))
        return real(x)
    monkeypatch.setattr(mod, "rms_norm", counting)
    fn()
    return sum(c == width for c in calls), sum(c != width for c in calls)


def test_palm_norm_is_computed_once_per_block(mods, monkeypatch):
    n_layer, width = 3, 32  # 4 heads of 8: QK-norm calls are told apart by their size
    idx = torch.randint(0, 64, (2, 16))
    for name, per_block in [("train_gpt_palm", 1), ("train_gpt", 2)]:
        mod = mods[name]
        torch.manual_seed(0)
        model = mod.GPT(64, n_layer, 4, width)
        block_x = torch.randn(2, 16, width)
        assert count_norms(mod, monkeypatch, lambda: model.blocks[0](block_x), width) == (per_block, 2)
        # the whole model: one norm per block (palm) plus the final norm
        assert count_norms(mod, monkeypatch, lambda: model(idx, idx), width) == (per_block * n_layer + 1, 2 * n_layer)


# ----------------------------------------------------------------------------- lmd


@pytest.mark.parametrize("preset,first,last", [
    ("baseline", 0.95, 0.95), ("moderate", 0.98, 0.90), ("fixed_high", 0.98, 0.98), ("fixed_low", 0.90, 0.90)])
def test_lmd_presets_and_momentum_per_block(mods, preset, first, last):
    lmd = mods["train_gpt_lmd"]
    a, _ = lmd.parse_args(["--lmd", preset, "--n_layer", "5"])
    assert (a.momentum_first, a.momentum_last) == (first, last) and a.muon_momentum is None
    m = lmd.block_momenta(a.momentum_first, a.momentum_last, 5)
    # five blocks: four equal steps from first to last
    by_hand = [first, first + (last - first) / 4, (first + last) / 2, last - (last - first) / 4, last]
    assert m == pytest.approx(by_hand, abs=1e-12) and m[0] == first and m[-1] == last
    if preset == "moderate":
        assert m == pytest.approx([0.98, 0.96, 0.94, 0.92, 0.90], abs=1e-12)
    if first == last:  # constant settings are exact, so "baseline" is train_gpt.py's 0.95 to the bit
        assert all(x == first for x in m)


def test_lmd_explicit_flags_override_the_preset(mods, capsys):
    lmd = mods["train_gpt_lmd"]
    a, given = lmd.parse_args(["--lmd", "moderate", "--momentum_last", "0.8"])
    assert (a.momentum_first, a.momentum_last) == (0.98, 0.8)  # the typed end wins, the other keeps the preset's
    a, _ = lmd.parse_args(["--momentum_first", "0.9", "--momentum_last", "0.99"])
    assert (a.momentum_first, a.momentum_last, a.lmd) == (0.9, 0.99, "baseline")
    assert lmd.block_momenta(0.9, 0.99, 1) == [0.9]
    with pytest.raises(SystemExit) as e:
        lmd.parse_args(["--muon_momentum", "0.9"])
    assert e.value.code == 2 and "--momentum_first" in capsys.readouterr().err


@pytest.mark.parametrize("flag,value", [("--momentum_first", "1.0"), ("--momentum_last", "-0.1"),
                                        ("--momentum_last", "nan")])
def test_lmd_impossible_momentum_is_one_line(mods, shards, capsys, tmp_path, flag, value):
    rc, out, err = run(mods["train_gpt_lmd"], capsys, *MICRO, *data_args(shards), flag, value,
                       "--out_dir", tmp_path / "r")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and flag in err
    assert not (tmp_path / "r").exists()


def losses(d):
    return [(r["step"], r.get("train_loss"), r.get("val_loss")) for r in read_jsonl(os.path.join(d, "metrics.jsonl"))]


def test_lmd_baseline_trains_bitwise_like_train_gpt(mods, shards, capsys, tmp_path):
    common = [*MICRO, *data_args(shards), "--num_iterations", 6, "--val_loss_every", 3, "--seed", 11]
    rc, out, err = run(mods["train_gpt"], capsys, *common, "--out_dir", tmp_path / "base")
    assert rc == 0, err
    rc, out, err = run(mods["train_gpt_lmd"], capsys, *common, "--lmd", "baseline", "--out_dir", tmp_path / "lmd")
    assert rc == 0, err
    assert "Muon momentum per block (baseline): 0.9500 0.9500" in out
    assert losses(tmp_path / "lmd") == losses(tmp_path / "base")  # float equality, every step
    s = load_summary(tmp_path / "lmd")
    assert s["variant"] == "baseline" and s["script"] == "train_gpt_lmd.py"
    assert s["config"]["muon_momentum_per_block"] == [0.95, 0.95]
    # another momentum setting gives another curve on the same seed (the comparison can fail)
    rc, out, err = run(mods["train_gpt_lmd"], capsys, *common, "--lmd", "fixed_low", "--out_dir", tmp_path / "low")
    assert rc == 0, err
    assert losses(tmp_path / "low") != losses(tmp_path / "base")


def checkpoint(run_dir, step):
    return torch.load(os.path.join(run_dir, "checkpoints", f"step_{step:06d}.pt"), map_location="cpu",
                      weights_only=False)


def relative_disagreement(a, b, init):
    """Largest difference of a block (Muon) parameter between two runs over the largest distance one
    travelled (bf16 Newton-Schulz turns last-bit gradient differences into a few percent of one update)."""
    diff = lambda p, q: max((p[k].float() - q[k].float()).abs().max().item() for k in p if k.startswith("blocks."))
    return diff(a, b) / diff(a, init)


def test_lmd_momentum_follows_each_block_over_two_gloo_processes(mods, shards, capsys, tmp_path):
    # extreme, unequal momenta: if a block's momentum followed the rank that orthogonalises it, or the
    # groups were mixed up, the two-process run would leave the one-process run
    momenta = ["--momentum_first", "0.0", "--momentum_last", "0.99"]
    common = [*MICRO, *data_args(shards), "--num_iterations", 4, "--save_every", 3, "--seed", 4,
              "--device_batch_size", 4, "--device", "cpu"]
    script = os.path.join(REPO, "train_gpt_lmd.py")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", script,
                        *map(str, common), *momenta, "--out_dir", str(tmp_path / "two")], env=ONE_THREAD,
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    s = load_summary(tmp_path / "two")
    assert s["status"] == "ok" and s["env"]["processes"] == 2 and s["variant"] == "custom"
    assert s["config"]["muon_momentum_per_block"] == [0.0, 0.99]
    lmd = mods["train_gpt_lmd"]
    rc, out, err = run(lmd, capsys, *common, *momenta, "--out_dir", tmp_path / "one")
    assert rc == 0, err
    rc, out, err = run(lmd, capsys, *common, "--momentum_first", "0.99", "--momentum_last", "0.0",
                       "--out_dir", tmp_path / "swapped")
    assert rc == 0, err
    one, two, swapped = (checkpoint(tmp_path / n, 3) for n in ("one", "two", "swapped"))
    # the optimiser holds one group per block, in block order, with that block's momentum
    groups = two["optimizers"][1]["param_groups"]
    assert [g["momentum"] for g in groups] == [0.0, 0.99] and groups[0]["params"] == [0, 1, 2, 3, 4, 5]
    torch.manual_seed(4)
    init = lmd.GPT(64, 2, 2, 32).state_dict()
    assert relative_disagreement(one["model"], two["model"], init) < 0.05
    assert relative_disagreement(one["model"], swapped["model"], init) > 0.2


# ----------------------------------------------------------------------------- both learn on the tiny preset


@pytest.mark.parametrize("script,extra,variant", [("train_gpt_palm", [], "palm"),
                                                  ("train_gpt_lmd", ["--lmd", "moderate"], "moderate")])
def test_variant_learns_on_the_tiny_preset(mods, shards, capsys, tmp_path, script, extra, variant):
    # the tiny preset's model and batch on synthetic shards, shortened to 8 steps
    rc, out, err = run(mods[script], capsys, "--preset", "tiny", *data_args(shards), "--num_iterations", 8,
                       "--warmdown_iters", 3, "--val_loss_every", 4, "--val_tokens", 2048, "--seed", 1, *extra,
                       "--out_dir", tmp_path / "r")
    assert rc == 0, err
    va = [r["val_loss"] for r in read_jsonl(tmp_path / "r" / "metrics.jsonl") if "val_loss" in r]
    assert len(va) == 3 and va[2] < va[1] < va[0] and va[2] < va[0] - 0.5
    s = load_summary(tmp_path / "r")
    assert s["status"] == "ok" and s["variant"] == variant and s["script"] == f"{script}.py"
    assert s["config"]["n_layer"] == 4  # the preset's model
    if script == "train_gpt_lmd":
        assert s["config"]["muon_momentum_per_block"] == pytest.approx([0.98, 0.98 - 0.08 / 3, 0.98 - 0.16 / 3, 0.90])
        assert "Muon momentum per block (moderate): 0.9800 0.9533 0.9267 0.9000" in out


def test_lmd_resume_continues_with_the_saved_momenta(mods, shards, capsys, tmp_path):
    lmd = mods["train_gpt_lmd"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    rc, out, err = run(lmd, capsys, *MICRO, *data_args(shards), "--num_iterations", 6, "--save_every", 3,
                       "--seed", 5, "--lmd", "moderate", "--out_dir", full)
    assert rc == 0, err
    shutil.copytree(full, cut)  # a run that died after its step-3 checkpoint (the last one written)
    os.remove(cut / "summary.json")
    rc, out, err = run(lmd, capsys, "--resume", cut)  # the default --lmd would be baseline: the saved one wins
    assert rc == 0, err
    assert "resuming from step 3" in out and "Muon momentum per block (moderate): 0.9800 0.9000" in out
    assert losses(cut) == losses(full)
    assert load_summary(cut)["config"]["muon_momentum_per_block"] == [0.98, 0.9]
    os.remove(cut / "summary.json")
    rc, out, err = run(lmd, capsys, "--resume", cut, "--lmd", "fixed_low")  # another setting is refused
    assert rc == 2 and "--lmd" in err


# ----------------------------------------------------------------------------- the worked example of docs/variants.md


def test_the_documented_example_variant_is_small_and_passes_the_guard(tmp_path):
    doc = open(os.path.join(REPO, "docs", "variants.md")).read()
    example = doc[doc.index("## Write a variant"):]
    first_line = re.search(r"```text\n\s*(\"\"\"GELU[^\n]*)\n", example)[1]
    region = re.search(r"```python\n(.*?)\s*```", example, re.S)[1]
    region = textwrap.indent(textwrap.dedent(region), "    ") + "\n"  # the doc's list indent off, a method's on
    base = open(BASE).read()
    base_forward = "    def forward(self, x):\n        return self.c_proj(F.relu(self.c_fc(x)).square())\n"
    assert base.count(base_forward) == 1
    lines = base.splitlines(True)
    variant = "".join([first_line + "\n"] + lines[1:]).replace(base_forward, region)
    shutil.copy(BASE, tmp_path / "train_gpt.py")
    (tmp_path / "train_gpt_gelu.py").write_text(variant)
    msgs = []
    assert vg.sync(str(tmp_path / "train_gpt.py"), str(tmp_path / "train_gpt_gelu.py"), out=msgs.append) == 0, msgs
    assert vg.check(str(tmp_path / "train_gpt.py"), str(tmp_path / "train_gpt_gelu.py")) == []
    import difflib
    changed = [l for l in difflib.unified_diff(base.splitlines(), (tmp_path / "train_gpt_gelu.py").read_text().splitlines(),
                                               lineterm="", n=0) if l[:1] in "+-" and not l.startswith(("+++", "---"))]
    assert len(changed) < 30
    # and it is the idea: the MLP now computes c_proj(gelu(c_fc(x)))
    gelu = load_script(str(tmp_path / "train_gpt_gelu.py"), "train_gpt_gelu_example")
    mlp = gelu.MLP(16)
    torch.nn.init.normal_(mlp.c_proj.weight)
    x = torch.randn(3, 16)
    assert torch.allclose(mlp(x), mlp.c_proj(torch.nn.functional.gelu(mlp.c_fc(x))))
    assert not torch.allclose(mlp(x), mlp.c_proj(torch.relu(mlp.c_fc(x)).square()))
