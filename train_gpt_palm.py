"""PaLM-parallel blocks on the baseline speedrun trainer: train_gpt.py with one change to the block.

Each block normalises its input once and feeds the same normalised input to attention and MLP, whose
outputs are summed and scaled by 1/sqrt(2):  h = rms(x);  x = x + (attn(h) + mlp(h)) / sqrt(2).
The baseline computes the two sub-layers one after the other, each with its own RMSNorm:
x = x + attn(rms(x)); x = x + mlp(rms(x)). Everything else (model shape, Muon/AdamW, schedule, data,
outputs, checkpoints, faults) is train_gpt.py's; `python train_gpt_palm.py --help` lists the flags.
This file is a copy of train_gpt.py changed only inside `# --- variant: palm ---` regions;
tests/test_variants.py checks that, and docs/variants.md says how to re-sync after train_gpt.py changes.

How to run
    # CPU, a small model on character-level Shakespeare (~1 minute on 2 cores):
    python data/prepare_shakespeare.py
    python train_gpt_palm.py --preset tiny
    # CPU, two processes (gloo):
    torchrun --standalone --nproc_per_node=2 train_gpt_palm.py --preset tiny --device_batch_size 8
    # 1 GPU (gradient accumulation makes up the 512-sequence batch):
    python data/cached_fineweb10B.py 27
    python train_gpt_palm.py
    # 8 GPUs on one node:
    torchrun --standalone --nproc_per_node=8 train_gpt_palm.py
    # several nodes (run on every node; torchrun does the rendezvous):
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 \
        --rdzv-id=run1 train_gpt_palm.py

Outputs go to --out_dir (or a fresh logs/<id>/ next to this script): metrics.jsonl while training,
summary.json at the end (variant "palm"), a copy of this file, checkpoints/ with --save_every.
Format: docs/RUN_FORMAT.md. Exit code 0 only when the run finished with status "ok".
Synced with train_gpt.py git blob 49d03eab75975fb7c14db0372c6bb7aef0b88f51.
"""
import argparse
import dataclasses
import glob
import json
import math
import os
import platform
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

SCRIPT_PATH = os.path.abspath(__file__)
SCRIPT_DIR = os.path.dirname(SCRIPT_PATH)

# -----------------------------------------------------------------------------
# Muon: momentum, then the update orthogonalised by a Newton-Schulz iteration


def newton_schulz5(G, steps=5, eps=1e-7):
    """Approximately orthogonalise G (replace its singular values by ~1) with the quintic iteration
    X <- aX + b(XX^T)X + c(XX^T)^2 X. The coefficients push small singular values up fast at the price
    of not converging exactly to 1, which does not hurt training. Runs in bfloat16 on every device."""
    assert G.ndim == 2
    a, b, c = (3.4445, -4.7750, 2.0315)
    X = G.bfloat16()
    X = X / (X.norm() + eps)  # singular values <= 1, where the iteration is stable
    transposed = X.size(0) > X.size(1)
    if transposed:  # rows <= columns keeps X X^T the small Gram matrix
        X = X.T
    for _ in range(steps):
        A = X @ X.T
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    if transposed:
        X = X.T
    return X


class Muon(torch.optim.Optimizer):
    """Momentum (optionally Nesterov) followed by orthogonalisation, `p -= lr * sqrt(max(rows, cols)) * X`.

    Every rank keeps the momentum of every matrix (the gradients are already averaged everywhere, so
    this is cheap and makes a checkpoint from rank 0 complete), but each rank orthogonalises only
    every world_size-th matrix of each shape; the results are all-gathered so that all ranks apply
    the same update. Parameter groups may carry their own `momentum` (per-layer momentum variants)."""

    def __init__(self, params, lr=0.02, momentum=0.95, nesterov=True, ns_steps=5, rank=0, world_size=1):
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps)
        super().__init__(params, defaults)
        self.rank, self.world_size = rank, world_size

    @torch.no_grad()
    def step(self):
        work = []  # (param, nesterov-momentum gradient, group)
        for group in self.param_groups:
            m = group["momentum"]
            for p in group["params"]:
                if p.grad is None:  # same on every rank: gradients are synchronised
                    continue
                g = p.grad
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(g)
                buf = state["momentum_buffer"]
                buf.mul_(m).add_(g)
                g = g.add(buf, alpha=m) if group["nesterov"] else buf
                work.append((p, g, group))
        # matrices of one shape are orthogonalised in rounds of world_size, one per rank, so that
        # all_gather sees equal-sized tensors; the order is the parameter order, identical on all ranks
        by_shape = {}
        for item in work:
            by_shape.setdefault(tuple(item[0].shape), []).append(item)
        for shape, items in by_shape.items():
            for base in range(0, len(items), self.world_size):
                round_items = items[base:base + self.world_size]
                mine = base + self.rank
                if mine < len(items):
                    _, g, group = items[mine]
                    update = newton_schulz5(g, steps=group["ns_steps"])
                else:  # this rank has no matrix left in the round; it still joins the all_gather
                    update = torch.zeros(shape, dtype=torch.bfloat16, device=items[0][0].device)
                if self.world_size > 1:
                    gathered = [torch.empty_like(update) for _ in range(self.world_size)]
                    dist.all_gather(gathered, update.contiguous())
                else:
                    gathered = [update]
                for (p, _, group), u in zip(round_items, gathered):
                    scale = max(p.size(0), p.size(1)) ** 0.5
                    p.add_(u.to(p.dtype), alpha=-group["lr"] * scale)


# -----------------------------------------------------------------------------
# The model: GPT with rotary embeddings, QK-norm, ReLU^2 MLP, parameter-free RMSNorm


def rms_norm(x):
    return F.rms_norm(x, (x.size(-1),))


class Rotary(nn.Module):
    def __init__(self, dim, base=10000):
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim)), persistent=False)

    def forward(self, x):  # x: (B, T, H, D); returns cos, sin of shape (1, T, 1, D/2) in x's dtype
        t = torch.arange(x.size(1), device=x.device, dtype=torch.float32)
        freqs = torch.outer(t, self.inv_freq)[None, :, None, :]
        return freqs.cos().to(x.dtype), freqs.sin().to(x.dtype)


def apply_rotary(x, cos, sin):
    d = x.size(-1) // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos + x2 * sin, -x1 * sin + x2 * cos], dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd, n_head):
        super().__init__()
        self.n_head, self.head_dim = n_head, n_embd // n_head
        self.c_q = nn.Linear(n_embd, n_embd, bias=False)
        self.c_k = nn.Linear(n_embd, n_embd, bias=False)
        self.c_v = nn.Linear(n_embd, n_embd, bias=False)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=False)
        self.c_proj.weight.data.zero_()  # each block starts as the identity
        self.rotary = Rotary(self.head_dim)

    def forward(self, x):
        B, T, C = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_head, self.head_dim)
        cos, sin = self.rotary(q)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q, k = rms_norm(q), rms_norm(k)  # QK-norm
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, n_embd):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=False)
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=False)
        self.c_proj.weight.data.zero_()

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, n_embd, n_head):
        super().__init__()
        self.attn = CausalSelfAttention(n_embd, n_head)
        self.mlp = MLP(n_embd)

    # --- block forward (variants replace this) ---
    # --- variant: palm ---
    def forward(self, x):
        # one norm feeds both sub-layers, which then run side by side; the 1/sqrt(2) keeps the
        # variance of the summed update that of one sub-layer when the two are uncorrelated
        h = rms_norm(x)
        return x + (self.attn(h) + self.mlp(h)) / math.sqrt(2)
    # --- end variant ---
    # --- end block forward ---


class GPT(nn.Module):
    def __init__(self, vocab_size, n_layer, n_head, n_embd):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.blocks = nn.ModuleList([Block(n_embd, n_head) for _ in range(n_layer)])
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight  # tied: one matrix, AdamW's only parameter

    def forward(self, idx, targets):
        x = self.wte(idx)
        for block in self.blocks:
            x = block(x)
        x = rms_norm(x)
        logits = self.lm_head(x).float()  # the loss in float32 even under bf16 autocast
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


# -----------------------------------------------------------------------------
# Data: memory-mapped token shards, each rank reading its own slice of every batch

SHARD_MAGIC, SHARD_VERSION, HEADER_INTS = 20240520, 1, 256


class DataError(Exception):
    """Bad or missing data; the message is one line naming the file and what to do."""


def open_shard(path, hint):
    """Check the header against the file size and return the tokens as a read-only memory map."""
    try:
        size = os.path.getsize(path)
        header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    except OSError as e:
        raise DataError(f"cannot read shard {path}: {e.strerror}; {hint}")
    if len(header) < HEADER_INTS:
        raise DataError(f"shard {path} is shorter than its 1024-byte header; {hint}")
    if header[0] != SHARD_MAGIC:
        raise DataError(f"shard {path} has magic {header[0]}, expected {SHARD_MAGIC} (not a token shard); {hint}")
    if header[1] != SHARD_VERSION:
        raise DataError(f"shard {path} has version {header[1]}, expected {SHARD_VERSION}; {hint}")
    ntok = int(header[2])
    expected = HEADER_INTS * 4 + 2 * ntok
    if ntok <= 0 or size != expected:
        raise DataError(f"shard {path} is {size} bytes but its header promises {ntok} tokens ({expected} bytes): "
                        f"truncated or corrupt; {hint}")
    return np.memmap(path, dtype="<u2", mode="r", offset=HEADER_INTS * 4, shape=(ntok,))


class DataLoader:
    """Walks the shards in the given order; each call returns this rank's (B, T) slice of the next
    chunk of B*T*world_size tokens. `shard` and `pos` (rank independent) are the whole state."""

    def __init__(self, shards, B, T, rank, world_size, start_pos=0):
        self.shards, self.B, self.T, self.rank, self.world_size = shards, B, T, rank, world_size
        self.start_pos = start_pos
        self.reset()

    def reset(self):
        self.shard, self.pos, self.epoch = 0, self.start_pos, 0
        self._skip_if_short()

    def _skip_if_short(self):
        while self.pos + self.B * self.T * self.world_size + 1 > len(self.shards[self.shard]):
            self.shard, self.pos = self.shard + 1, 0
            if self.shard == len(self.shards):  # out of data: start over (a warning was printed)
                self.shard, self.epoch = 0, self.epoch + 1

    def next_batch(self, device):
        n = self.B * self.T
        start = self.pos + self.rank * n
        buf = torch.from_numpy(self.shards[self.shard][start:start + n + 1].astype(np.int64))
        x, y = buf[:-1].view(self.B, self.T), buf[1:].view(self.B, self.T)
        self.pos += n * self.world_size
        self._skip_if_short()
        if device.type == "cuda":
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x, y

    def state_dict(self):
        return dict(shard=self.shard, pos=self.pos, epoch=self.epoch)

    def load_state_dict(self, s):
        self.shard, self.pos, self.epoch = s["shard"], s["pos"], s["epoch"]


# -----------------------------------------------------------------------------
# Hyperparameters


@dataclass
class Hyperparameters:
    # data (default paths are relative to this script's directory, given ones to the working directory)
    input_bin: str = field(default="data/fineweb10B/fineweb_train_*.bin", metadata={"help": "train shards (glob)"})
    input_val_bin: str = field(default="data/fineweb10B/fineweb_val_*.bin", metadata={"help": "val shards (glob)"})
    # optimisation
    batch_size: int = field(default=8 * 64, metadata={"help": "global batch, sequences"})
    device_batch_size: int = field(default=64, metadata={"help": "sequences per process per micro-step"})
    sequence_length: int = field(default=1024, metadata={"help": "tokens per sequence"})
    num_iterations: int = field(default=5100, metadata={"help": "optimiser steps"})
    learning_rate: float = field(default=0.0036, metadata={"help": "AdamW lr (embedding/head)"})
    muon_lr_ratio: float = field(default=0.1, metadata={"help": "Muon lr = ratio x learning_rate"})
    muon_momentum: float = field(default=0.95, metadata={"help": "Muon momentum"})
    muon_nesterov: bool = field(default=True, metadata={"help": "Nesterov momentum in Muon"})
    ns_steps: int = field(default=5, metadata={"help": "Newton-Schulz iterations"})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1"})
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    warmup_iters: int = field(default=0, metadata={"help": "linear LR warm-up steps"})
    warmdown_iters: int = field(default=1450, metadata={"help": "linear LR decay to 0 over the last N steps"})
    # model
    vocab_size: int = field(default=50304, metadata={"help": "GPT-2's 50,257 padded to a multiple of 128"})
    n_layer: int = field(default=12, metadata={"help": "transformer blocks"})
    n_head: int = field(default=6, metadata={"help": "attention heads"})
    n_embd: int = field(default=768, metadata={"help": "model width"})
    # evaluation
    val_loss_every: int = field(default=125, metadata={"help": "validate every N steps (0: only at the end)"})
    val_tokens: int = field(default=10485760, metadata={"help": "validation tokens, a fixed prefix of the val shards"})
    # run
    seed: int = field(default=0, metadata={"help": "initialisation and data order (shard order, start offset)"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda", "choices": ["auto", "cpu", "cuda"]})
    dtype: str = field(default="auto", metadata={
        "help": "autocast dtype: auto = bfloat16 on cuda, float32 on cpu (measured faster there)",
        "choices": ["auto", "bfloat16", "float32"]})
    compile: str = field(default="auto", metadata={
        "help": "torch.compile the model: auto = on for cuda; a bare --compile means on",
        "choices": ["auto", "on", "off"], "const": "on"})
    out_dir: str = field(default="", metadata={"help": "run directory; empty: a fresh logs/<id>/ next to this script"})
    variant: str = field(default="", metadata={"help": "variant name for summary.json; empty: from the script name"})
    save_every: int = field(default=0, metadata={"help": "checkpoint every N steps (0: never)"})
    keep_checkpoints: int = field(default=1, metadata={"help": "most recent checkpoints kept"})
    resume: str = field(default="", metadata={"help": "RUN_DIR: continue that run from its latest checkpoint"})
    preset: str = field(default="", metadata={"help": "tiny: a small model on Shakespeare characters for CPUs (values below)",
                                              "choices": ["", "tiny"]})


# values a preset changes; flags given on the command line still win
PRESETS = {
    "tiny": dict(
        input_bin="data/shakespeare_char/shakespeare_train_*.bin",
        input_val_bin="data/shakespeare_char/shakespeare_val_*.bin",
        vocab_size=128, n_layer=4, n_head=4, n_embd=128, sequence_length=128,
        batch_size=32, device_batch_size=16, num_iterations=150, warmdown_iters=45,
        learning_rate=0.02, val_loss_every=25, val_tokens=32768,
    ),
}

# flags that may differ from the saved config when resuming (they do not change the maths)
RESUME_MAY_CHANGE = {"device", "compile", "save_every", "keep_checkpoints", "resume", "out_dir"}


class ConfigError(Exception):
    """A flag or combination that cannot work; the message names the flag."""


def build_parser():
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="presets: " + "; ".join(f"{k}: " + ", ".join(f"{a}={v}" for a, v in d.items()) for k, d in PRESETS.items()))
    for f in dataclasses.fields(Hyperparameters):
        md = dict(f.metadata)
        kw = dict(default=f.default, help=md["help"])
        if f.type in (bool, "bool"):
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = {int: int, float: float, str: str, "int": int, "float": float, "str": str}[f.type]
            if "choices" in md:
                kw["choices"] = md["choices"]
            if "const" in md:
                kw.update(nargs="?", const=md["const"])
        p.add_argument(f"--{f.name}", **kw)
    return p


def parse_args(argv):
    """Returns (Hyperparameters, set of flag names given on the command line)."""
    values = vars(build_parser().parse_args(argv))
    probe = build_parser()  # the same flags with no defaults: what remains was typed by the user
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    given = set(vars(probe.parse_args(argv)))
    if values["preset"]:
        for k, v in PRESETS[values["preset"]].items():
            if k not in given:
                values[k] = v
    for k in ("input_bin", "input_val_bin"):  # typed paths are relative to the working directory
        if k in given:
            values[k] = os.path.abspath(values[k])
    return Hyperparameters(**values), given


def resolve_path(pattern):
    """Default (relative) paths live next to the script; typed ones were made absolute by parse_args."""
    return pattern if os.path.isabs(pattern) else os.path.join(SCRIPT_DIR, pattern)


def validate_static(a, world_size):
    if a.num_iterations < 1:
        raise ConfigError(f"--num_iterations must be >= 1 (got {a.num_iterations})")
    for name in ("batch_size", "device_batch_size", "sequence_length", "vocab_size", "n_layer", "n_head", "n_embd",
                 "val_tokens", "ns_steps", "keep_checkpoints"):
        if getattr(a, name) < 1:
            raise ConfigError(f"--{name} must be >= 1 (got {getattr(a, name)})")
    for name in ("val_loss_every", "save_every", "warmup_iters", "warmdown_iters"):
        if getattr(a, name) < 0:
            raise ConfigError(f"--{name} must be >= 0 (got {getattr(a, name)})")
    if a.batch_size % (a.device_batch_size * world_size):
        raise ConfigError(f"--batch_size {a.batch_size} is not divisible by --device_batch_size {a.device_batch_size} "
                          f"x {world_size} processes")
    if a.val_tokens % (a.device_batch_size * a.sequence_length * world_size):
        raise ConfigError(f"--val_tokens {a.val_tokens} is not divisible by --device_batch_size x --sequence_length x "
                          f"processes = {a.device_batch_size * a.sequence_length * world_size}")
    if a.n_embd % a.n_head or (a.n_embd // a.n_head) % 2:
        raise ConfigError(f"--n_embd {a.n_embd} must be divisible by --n_head {a.n_head} into an even head size (rotary)")
    if a.vocab_size > 65536:
        raise ConfigError(f"--vocab_size {a.vocab_size} does not fit the uint16 tokens of the shards")
    if a.learning_rate <= 0 or not math.isfinite(a.learning_rate):
        raise ConfigError(f"--learning_rate must be a positive number (got {a.learning_rate})")


def how_to_get(pattern_default, needed_shards=None):
    if "shakespeare" in pattern_default:
        return "run `python data/prepare_shakespeare.py`"
    if "fineweb" in pattern_default:
        n = needed_shards or 1
        return f"run `python data/cached_fineweb10B.py {n}`"
    return "pass the shards with --input_bin/--input_val_bin"


def shards_needed(a, shard_tokens=100_000_000):
    return min(103, math.ceil(a.num_iterations * a.batch_size * a.sequence_length / shard_tokens))


def open_data(a, given, world_size):
    """Open and check every shard; returns (train shards in seed order, start offset, val shards)."""
    out = []
    for flag in ("input_bin", "input_val_bin"):
        pattern = getattr(a, flag)
        path = resolve_path(pattern)
        hint = how_to_get(pattern, shards_needed(a)) if flag not in given else f"check --{flag}"
        files = sorted(glob.glob(path))
        if not files:
            raise DataError(f"no files match --{flag} {path}; {hint}")
        out.append([(f, open_shard(f, hint)) for f in files])
    train, val = out
    chunk = a.device_batch_size * a.sequence_length * world_size + 1
    for f, s in train:
        if len(s) < chunk:
            raise DataError(f"train shard {f} has {len(s)} tokens, fewer than one batch of --device_batch_size x "
                            f"--sequence_length x processes + 1 = {chunk}")
    val_batches = sum((len(s) - 1) // (chunk - 1) for _, s in val)
    if val_batches * (chunk - 1) < a.val_tokens:
        raise DataError(f"--val_tokens {a.val_tokens} is more than the val shards hold in whole batches "
                        f"({val_batches * (chunk - 1)} tokens in {', '.join(f for f, _ in val)})")
    # token ids beyond the embedding would only fail at the first batch: look at the val prefix and the
    # start of every train shard (a full scan of 100M-token shards would cost seconds each)
    for f, s in val[:1] + train:
        top = int(s[:min(len(s), max(a.val_tokens, 1 << 20))].max())
        if top >= a.vocab_size:
            raise DataError(f"shard {f} holds token id {top}, but --vocab_size is {a.vocab_size}: "
                            f"wrong data for this model (or raise --vocab_size)")
    # the seed fixes the data order: a permutation of the shards and a start offset in the first one
    rng = np.random.default_rng(a.seed)
    order = rng.permutation(len(train))
    train = [train[i] for i in order]
    room = len(train[0][1]) - a.batch_size * a.sequence_length - 1
    start = int(rng.integers(0, room + 1)) if room > 0 else 0
    return train, start, val


# -----------------------------------------------------------------------------
# Run directory: metrics, summary, checkpoints, environment

STATUS_EXIT = {"ok": 0, "failed": 1, "diverged": 3, "oom": 4, "interrupted": 130}


def atomic_write_json(path, obj):
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, allow_nan=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def unused_path(path):
    """`path`, or path with .1, .2 ... before the extension when it exists: never overwrite a record."""
    base, ext = os.path.splitext(path)
    i, p = 0, path
    while os.path.exists(p):
        i += 1
        p = f"{base}.{i}{ext}"
    return p


def git_info():
    def git(*cmd):
        try:
            r = subprocess.run(["git", "-C", SCRIPT_DIR, *cmd], capture_output=True, text=True, timeout=20)
            return r.stdout.strip() if r.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            return None
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return commit, (bool(status) if status is not None else None)


def peak_memory_mib(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() // 1024 // 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024  # Linux reports KiB


def finite_numbers(d):
    return {k: v for k, v in d.items() if isinstance(v, (int, float)) and math.isfinite(v)}


def is_oom(e):
    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None),
                                  MemoryError) if t is not None)
    return isinstance(e, oom_types) or "can't allocate memory" in str(e) or "out of memory" in str(e).lower()


class StopFlag:
    """SIGINT/SIGTERM ask the loop to stop at the next step boundary; a second Ctrl-C stops at once."""

    def __init__(self):
        self.signum, self.previous = None, {}

    def install(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            self.previous[s] = signal.signal(s, self._handle)

    def uninstall(self):
        for s, h in self.previous.items():
            signal.signal(s, h)
        self.previous = {}

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum


def list_checkpoints(run_dir):
    d = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(d):
        return []
    return sorted(os.path.join(d, f) for f in os.listdir(d) if f.startswith("step_") and f.endswith(".pt"))


def save_checkpoint(run_dir, step, model, optimizers, loader, a, timing, keep):
    d = os.path.join(run_dir, "checkpoints")
    os.makedirs(d, exist_ok=True)
    state = dict(
        step=step, config=dataclasses.asdict(a), model=model.state_dict(),
        optimizers=[o.state_dict() for o in optimizers], loader=loader.state_dict(), timing=timing,
        rng=dict(torch=torch.get_rng_state(), cuda=torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
                 numpy=np.random.get_state(), python=random.getstate()))
    path = os.path.join(d, f"step_{step:06d}.pt")
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)
    for old in list_checkpoints(run_dir)[:-keep]:
        os.remove(old)
    return path


# -----------------------------------------------------------------------------
# main


def lr_scale(step, a):
    if step < a.warmup_iters:
        return (step + 1) / a.warmup_iters
    if step < a.num_iterations - a.warmdown_iters:
        return 1.0
    return (a.num_iterations - step) / a.warmdown_iters


def main(argv=None):
    t_wall0 = time.time()
    a, given = parse_args(argv)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    distributed = "RANK" in os.environ  # under torchrun, even with one process
    master = rank == 0

    def fail_input(msg):
        if master:
            print(f"error: {msg}", file=sys.stderr, flush=True)
        return 2

    # --- everything that can be checked is checked before a process group, a directory or a model exists
    resume_ckpt = None
    try:
        if a.resume:
            run_dir = os.path.abspath(a.resume)
            ckpts = list_checkpoints(run_dir)
            if not ckpts:
                raise ConfigError(f"--resume {a.resume}: no checkpoints in {run_dir}/checkpoints "
                                  f"(the run needs --save_every, or was interrupted before its first step)")
            summ = os.path.join(run_dir, "summary.json")
            if os.path.exists(summ):
                try:
                    with open(summ) as f:
                        finished = json.load(f).get("status") == "ok"
                except (OSError, ValueError):
                    finished = False  # a damaged summary does not make a finished run
                if finished:
                    raise ConfigError(f"--resume {a.resume}: that run already finished (summary.json status ok)")
            if "out_dir" in given and os.path.abspath(a.out_dir) != run_dir:
                raise ConfigError(f"--out_dir {a.out_dir}: a resumed run continues in its own directory {run_dir}")
            try:
                resume_ckpt = torch.load(ckpts[-1], map_location="cpu", weights_only=False)
                saved = resume_ckpt["config"]
            except Exception as e:
                raise ConfigError(f"--resume {a.resume}: cannot read checkpoint {ckpts[-1]} ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''}); delete it to fall back to an older one")
            for k in given - RESUME_MAY_CHANGE:
                if getattr(a, k) != saved.get(k):
                    raise ConfigError(f"--{k} {getattr(a, k)} differs from the resumed run's {saved[k]}; "
                                      f"--resume continues with the saved settings")
            keep = {k: getattr(a, k) for k in RESUME_MAY_CHANGE if k in given}
            known = {f.name for f in dataclasses.fields(Hyperparameters)}
            a = Hyperparameters(**{**{k: v for k, v in saved.items() if k in known}, **keep, "resume": a.resume,
                                   "out_dir": run_dir})
        validate_static(a, world_size)
        if a.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda but no CUDA device is available; use --device cpu")
        if a.out_dir and not a.resume:
            for name in ("summary.json", "metrics.jsonl", "checkpoints"):
                if os.path.exists(os.path.join(a.out_dir, name)):
                    raise ConfigError(f"--out_dir {a.out_dir} already holds a run ({name}); choose a new directory "
                                      f"or --resume it")
        train_shards, start_pos, val_shards = open_data(a, given, world_size)
    except (ConfigError, DataError) as e:
        return fail_input(str(e))

    device_type = "cuda" if a.device == "cuda" or (a.device == "auto" and torch.cuda.is_available()) else "cpu"
    if device_type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if distributed:
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    amp_dtype = {"auto": torch.bfloat16 if device_type == "cuda" else torch.float32,
                 "bfloat16": torch.bfloat16, "float32": torch.float32}[a.dtype]
    use_compile = a.compile == "on" or (a.compile == "auto" and device_type == "cuda")
    ctx = torch.autocast(device_type=device_type, dtype=amp_dtype, enabled=amp_dtype != torch.float32)

    def print0(*args, **kw):
        if master:
            print(*args, **kw, flush=True)

    # --- the run directory (rank 0 names it, everyone learns it)
    if master:
        run_dir = a.out_dir or os.path.join(SCRIPT_DIR, "logs", time.strftime("%Y%m%d_%H%M%S") + "_" + uuid.uuid4().hex[:8])
        run_dir = os.path.abspath(run_dir)
        os.makedirs(run_dir, exist_ok=True)
    else:
        run_dir = None
    if distributed:
        obj = [run_dir]
        dist.broadcast_object_list(obj, src=0)
        run_dir = obj[0]
    a.out_dir = run_dir
    script_name = os.path.basename(SCRIPT_PATH)
    variant = a.variant or (os.path.splitext(script_name)[0].removeprefix("train_gpt").lstrip("_") or "baseline")

    grad_accum = a.batch_size // (a.device_batch_size * world_size)
    tokens_per_step = a.batch_size * a.sequence_length
    status, error, step, summary_metrics = "failed", None, 0, {}
    stop = StopFlag()
    metrics_f = None
    commit, dirty = git_info() if master else (None, None)
    try:
        # --- model and optimisers; the init is drawn on the CPU so that a seed means the same model on every device
        torch.manual_seed(a.seed)
        np.random.seed(a.seed)
        random.seed(a.seed)
        raw_model = GPT(a.vocab_size, a.n_layer, a.n_head, a.n_embd)
        num_params = sum(p.numel() for p in raw_model.parameters())
        raw_model = raw_model.to(device)
        model = torch.compile(raw_model) if use_compile else raw_model
        if distributed:
            model = DDP(model, device_ids=[local_rank] if device_type == "cuda" else None)
        optimizer1 = torch.optim.AdamW([raw_model.lm_head.weight], lr=a.learning_rate, betas=(a.adam_beta1, a.adam_beta2),
                                       weight_decay=a.weight_decay, fused=device_type == "cuda")
        # --- Muon momentum setup (variants replace this) ---
        muon_groups = [dict(params=list(raw_model.blocks.parameters()), momentum=a.muon_momentum)]
        # --- end Muon momentum setup ---
        optimizer2 = Muon(muon_groups, lr=a.muon_lr_ratio * a.learning_rate, nesterov=a.muon_nesterov,
                          ns_steps=a.ns_steps, rank=rank, world_size=world_size)
        optimizers = [optimizer1, optimizer2]
        for opt in optimizers:
            for g in opt.param_groups:
                g["base_lr"] = g["lr"]

        train_loader = DataLoader([s for _, s in train_shards], a.device_batch_size, a.sequence_length, rank, world_size,
                                  start_pos)
        val_loader = DataLoader([s for _, s in val_shards], a.device_batch_size, a.sequence_length, rank, world_size)
        val_steps = a.val_tokens // (a.device_batch_size * a.sequence_length * world_size)

        timing = dict(training_time_ms=0.0, timed_tokens=0)
        if resume_ckpt is not None:
            raw_model.load_state_dict(resume_ckpt["model"])
            for opt, sd in zip(optimizers, resume_ckpt["optimizers"]):
                opt.load_state_dict(sd)
            train_loader.load_state_dict(resume_ckpt["loader"])
            timing = resume_ckpt["timing"]
            step = resume_ckpt["step"]
            rng = resume_ckpt["rng"]
            torch.set_rng_state(rng["torch"])
            if rng["cuda"] is not None and device_type == "cuda":
                torch.cuda.set_rng_state(rng["cuda"])
            np.random.set_state(rng["numpy"])
            random.setstate(rng["python"])

        # --- outputs
        if master:
            dst = os.path.join(run_dir, script_name)
            if os.path.exists(dst):
                with open(dst, "rb") as f1, open(SCRIPT_PATH, "rb") as f2:
                    if f1.read() != f2.read():
                        dst = os.path.join(run_dir, f"{os.path.splitext(script_name)[0]}.resume_{step}.py")
            if not os.path.exists(dst):
                shutil.copyfile(SCRIPT_PATH, dst)
            mpath = os.path.join(run_dir, "metrics.jsonl")
            if resume_ckpt is not None and os.path.exists(mpath):
                # keep what happened up to the checkpoint; the full old file is kept beside it
                old = unused_path(mpath.replace(".jsonl", f".before_resume_{step}.jsonl"))
                os.replace(mpath, old)
                with open(old) as f, open(mpath, "w") as g:
                    for line in f:
                        try:
                            r = json.loads(line)
                        except json.JSONDecodeError:
                            continue
                        if ("val_loss" in r and r.get("step", 0) < step) or ("val_loss" not in r and r.get("step", 0) <= step):
                            g.write(line if line.endswith("\n") else line + "\n")
                summ = os.path.join(run_dir, "summary.json")
                if os.path.exists(summ):
                    os.replace(summ, unused_path(os.path.join(run_dir, f"summary.before_resume_{step}.json")))
            metrics_f = open(mpath, "a")

        def log_metrics(rec):
            if metrics_f is not None:
                metrics_f.write(json.dumps(rec) + "\n")
                metrics_f.flush()

        print0(f"model parameters: {num_params:,} ({num_params / 1e6:.2f}M)")
        print0(f"run directory: {run_dir}")
        print0(f"device: {device_type} x {world_size} process(es), autocast {str(amp_dtype).removeprefix('torch.')}, "
               f"compile {'on' if use_compile else 'off'}, grad accumulation {grad_accum}, "
               f"{tokens_per_step:,} tokens/step")
        need = a.num_iterations * tokens_per_step + start_pos
        have = sum(len(s) for _, s in train_shards)
        if need > have and master:
            per = have / len(train_shards)
            n_need = math.ceil(need / per)
            hint = (f"; {how_to_get(a.input_bin, n_need)}" if "input_bin" not in given else "")
            print(f"warning: this run consumes {need:,} train tokens but the {len(train_shards)} train shard(s) hold "
                  f"{have:,}: data will repeat. About {n_need} shards of this size are needed{hint}",
                  file=sys.stderr, flush=True)
        if resume_ckpt is not None:
            print0(f"resuming from step {step} ({list_checkpoints(run_dir)[-1]})")
        stop.install()

        # --- the training loop (the record's structure: validate, then step; the first 10 steps are not timed)
        training_time_ms = timing["training_time_ms"]
        timed_tokens = timing["timed_tokens"]
        last_train_loss, last_val_loss = float("nan"), float("nan")
        sync = torch.cuda.synchronize if device_type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        N = a.num_iterations
        while True:
            last_step = step == N
            if step == 10:  # compile and warm-up end here
                training_time_ms, timed_tokens = 0.0, 0
                t0 = time.perf_counter()
            timed_steps = float("nan") if step <= 11 else (step - 10) + 1
            if last_step or (a.val_loss_every > 0 and step % a.val_loss_every == 0):
                sync()
                training_time_ms += 1000 * (time.perf_counter() - t0)
                model.eval()
                val_loader.reset()
                val_loss = torch.zeros((), device=device)
                with torch.no_grad():
                    for _ in range(val_steps):
                        x, y = val_loader.next_batch(device)
                        with ctx:
                            val_loss += model(x, y).detach()
                if distributed:
                    dist.all_reduce(val_loss, op=dist.ReduceOp.AVG if device_type == "cuda" else dist.ReduceOp.SUM)
                    if device_type != "cuda":
                        val_loss /= world_size
                last_val_loss = val_loss.item() / val_steps
                print0(f"step:{step}/{N} val_loss:{last_val_loss:.4f} train_time:{training_time_ms:.0f}ms "
                       f"step_avg:{training_time_ms / (timed_steps - 1):.2f}ms")
                log_metrics(dict(step=step, val_loss=last_val_loss, train_time_ms=training_time_ms))
                if not math.isfinite(last_val_loss):
                    status, error = "diverged", f"non-finite val loss at step {step}"
                    break
                sync()
                t0 = time.perf_counter()
            if last_step:
                status = "ok"
                break

            model.train()
            scale = lr_scale(step, a)
            for opt in optimizers:
                for g in opt.param_groups:
                    g["lr"] = g["base_lr"] * scale
            for i in range(1, grad_accum + 1):
                x, y = train_loader.next_batch(device)
                with ctx:
                    loss = model(x, y)
                train_loss = loss.detach()
                if distributed and i < grad_accum:
                    with model.no_sync():  # gradients are averaged over ranks once, at the last micro-step
                        loss.backward()
                else:
                    loss.backward()
            if grad_accum > 1:
                for p in raw_model.parameters():
                    p.grad /= grad_accum
            for opt in optimizers:
                opt.step()
            raw_model.zero_grad(set_to_none=True)
            step += 1
            if step > 10:
                timed_tokens += tokens_per_step
            # one small collective per step: stop requests and divergence must end every rank at the same step
            last_train_loss = train_loss.item()
            flags = torch.tensor([float(stop.signum is not None), float(not math.isfinite(last_train_loss))], device=device)
            if distributed:
                dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            approx_ms = training_time_ms + 1000 * (time.perf_counter() - t0)
            print0(f"step:{step}/{N} train_loss:{last_train_loss:.4f} train_time:{approx_ms:.0f}ms "
                   f"step_avg:{approx_ms / timed_steps:.2f}ms")
            log_metrics(dict(step=step, train_loss=last_train_loss, train_time_ms=approx_ms, lr_scale=scale))
            stop_requested, non_finite = flags.tolist()
            if non_finite:
                status, error = "diverged", f"non-finite train loss at step {step}"
                break
            if stop_requested or (a.save_every and step % a.save_every == 0 and step < N):
                sync()
                training_time_ms += 1000 * (time.perf_counter() - t0)  # checkpointing is not training time
                if master:
                    path = save_checkpoint(run_dir, step, raw_model, optimizers, train_loader, a,
                                           dict(training_time_ms=training_time_ms, timed_tokens=timed_tokens),
                                           a.keep_checkpoints)
                    print0(f"checkpoint: {path}")
                if distributed:
                    dist.barrier()
                if stop_requested:
                    status, error = "interrupted", f"stopped by signal at step {step}; resume with --resume {run_dir}"
                    break
                t0 = time.perf_counter()

        sync()
        if status != "ok":
            training_time_ms += 1000 * (time.perf_counter() - t0)
        mem = peak_memory_mib(device)
        print0(f"peak memory consumption: {mem} MiB")
        timed_s = training_time_ms / 1000
        summary_metrics = dict(
            val_loss=last_val_loss, train_loss=last_train_loss, train_time_s=timed_s,
            wall_time_s=time.time() - t_wall0, peak_memory_mib=mem,
            tokens_per_s=timed_tokens / timed_s if timed_tokens and timed_s > 0 else float("nan"),
            num_params=num_params)
    except KeyboardInterrupt:
        status, error = "interrupted", f"interrupted at step {step} (second Ctrl-C, no checkpoint written)"
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        status = "oom" if is_oom(e) else "failed"
        error = f"{type(e).__name__}: {first}"[:500]
        traceback.print_exc()
    finally:
        stop.uninstall()
        if metrics_f is not None:
            metrics_f.close()
    if status != "ok" and not summary_metrics:
        summary_metrics = dict(wall_time_s=time.time() - t_wall0)
    # rank 0 writes the summary; another rank writes it only when it failed on its own
    if master or status in ("oom", "failed"):
        summary = dict(
            schema=1, status=status, error=error, script=script_name, variant=variant, seed=a.seed,
            steps_completed=step, metrics=finite_numbers(summary_metrics),
            config={**dataclasses.asdict(a), "world_size": world_size, "grad_accum_steps": grad_accum,
                    "tokens_per_step": tokens_per_step, "train_start_offset": start_pos,
                    "train_shard_order": [os.path.basename(f) for f, _ in train_shards],
                    "autocast_dtype": str(amp_dtype).removeprefix("torch."), "compiled": use_compile},
            env=dict(torch=torch.__version__, python=platform.python_version(), device=device_type, gpus=world_size
                     if device_type == "cuda" else 0, processes=world_size,
                     nodes=world_size // int(os.environ.get("LOCAL_WORLD_SIZE", world_size)),
                     gpu_name=torch.cuda.get_device_name(device) if device_type == "cuda" else None,
                     cpu_threads=torch.get_num_threads(), git_commit=commit, git_dirty=dirty,
                     hostname=socket.gethostname(), argv=sys.argv if argv is None else [script_name, *argv]))
        try:
            atomic_write_json(os.path.join(run_dir, "summary.json"), summary)
        except OSError as e:
            print(f"error: could not write {run_dir}/summary.json: {e}", file=sys.stderr, flush=True)
    if status != "ok":
        print(f"status: {status}: {error}", file=sys.stderr, flush=True)
    if distributed and dist.is_initialized():
        if status in ("ok", "interrupted", "diverged"):
            dist.destroy_process_group()
    return STATUS_EXIT[status]


if __name__ == "__main__":
    sys.exit(main())
