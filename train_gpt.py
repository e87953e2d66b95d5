"""The baseline NanoGPT speedrun trainer: the 2024-10-14 "ModernArch" record recipe in one file.

GPT-2-small (12 layers, 6 heads of 128, width 768, tied embedding, rotary + QK-norm, ReLU^2 MLP), Muon on the block
matrices, AdamW on the embedding/head, FineWeb-10B token shards; the defaults are the record's. Sections as in the
record (optimizer, model, data, run), then the run directory (docs/RUN_FORMAT.md); docs/train_gpt.md has every flag.
    python train_gpt.py --preset tiny                          # a small model on a CPU
    python train_gpt.py                                        # one GPU: 8 micro-steps of 64 sequences a step
    torchrun --standalone --nproc_per_node=8 train_gpt.py      # the record's run, 8 GPUs
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST0:29500 --rdzv-id=run1 \
        train_gpt.py --out_dir /shared/run1                    # several nodes: the same command on each node

CUDA-only choices (the CPU runs the same code without them), each as the record makes it:
- bf16 autocast around the forward pass and bf16 Newton-Schulz (`--dtype auto`; fp32 on the CPU, where bf16
  matmuls are slow); fused AdamW; pinned memory, non-blocking copies; NCCL;
- torch.compile of the model and of Newton-Schulz, after setting inductor's coordinate_descent_tuning
  (`--compile auto`; `--compile off` turns off both);
- one host synchronisation per step (rank 0 reads the loss it prints); ranks agree on stop requests and
  non-finite losses by one all-reduce every --check_every steps.
"""
import argparse, contextlib, dataclasses, filecmp, glob, json, math, os, platform, resource, shutil, signal, socket
import subprocess, sys, time, traceback, uuid
from dataclasses import dataclass, field
from datetime import timedelta
from types import SimpleNamespace

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

def newton_schulz5(G, steps=5, eps=1e-7, dtype=torch.bfloat16):
    """Approximately orthogonalise G (singular values -> ~1) by the quintic X <- aX + b(XX^T)X + c(XX^T)^2 X,
    whose coefficients trade exact convergence for speed. Runs in `dtype`: bfloat16 as the record on CUDA,
    float32 on the CPU, where bfloat16 matmuls of these shapes are many times slower (bench/bench_muon_cpu.py)."""
    assert G.ndim == 2
    a, b, c = (3.4445, -4.7750, 2.0315)
    X = G.to(dtype)
    X = X / (X.norm() + eps)  # singular values <= 1, where the iteration is stable
    if G.size(0) > G.size(1):  # rows <= columns keeps X X^T the small Gram matrix
        X = X.T
    for _ in range(steps):
        A = X @ X.T
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    return X.T if G.size(0) > G.size(1) else X

class Muon(torch.optim.Optimizer):
    """Momentum (Nesterov by default), then orthogonalisation: `p -= lr * sqrt(max(rows, cols)) * X`.
    Every rank keeps every momentum buffer (gradients are averaged everywhere, so a checkpoint from rank 0
    is complete), but orthogonalises only every world_size-th matrix of a shape; the results are
    all-gathered. Groups may carry their own `momentum`; `orthogonalise` replaces newton_schulz5."""

    def __init__(self, params, lr=0.02, momentum=0.95, nesterov=True, rank=0, world_size=1, orthogonalise=None,
                 ns_dtype=torch.bfloat16):
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov))
        self.rank, self.world_size, self.orthogonalise, self.ns_dtype = rank, world_size, orthogonalise, ns_dtype

    @torch.no_grad()
    def step(self):
        by_shape = {}  # shape -> [(param, nesterov-momentum gradient, group)] in parameter order
        for group in self.param_groups:
            m = group["momentum"]
            for p in group["params"]:
                if p.grad is None:  # same on every rank: gradients are synchronised
                    continue
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p.grad))
                buf.mul_(m).add_(p.grad)
                g = p.grad.add(buf, alpha=m) if group["nesterov"] else buf
                by_shape.setdefault(tuple(p.shape), []).append((p, g, group))
        # matrices of one shape are orthogonalised in rounds of world_size, one per rank, so that
        # all_gather sees equal-sized tensors; the order is the parameter order, identical on all ranks
        ns = self.orthogonalise or newton_schulz5
        for shape, items in by_shape.items():
            for base in range(0, len(items), self.world_size):
                if base + self.rank < len(items):
                    update = ns(items[base + self.rank][1], dtype=self.ns_dtype)
                else:  # this rank has no matrix left in the round; it still joins the all_gather
                    update = torch.zeros(shape, dtype=self.ns_dtype, device=items[0][0].device)
                gathered = [update]
                if self.world_size > 1:
                    gathered = [torch.empty_like(update) for _ in range(self.world_size)]
                    dist.all_gather(gathered, update.contiguous())
                for (p, _, group), u in zip(items[base:base + self.world_size], gathered):
                    p.add_(u.to(p.dtype), alpha=-group["lr"] * max(p.size(0), p.size(1)) ** 0.5)

# -----------------------------------------------------------------------------
# The model: GPT with rotary embeddings, QK-norm, ReLU^2 MLP, parameter-free RMSNorm

def rms_norm(x):
    return F.rms_norm(x, (x.size(-1),))

class Rotary(nn.Module):
    def __init__(self, dim, base=10000):
        super().__init__()
        # a plain attribute as in the record, not a buffer, so DDP never broadcasts it; _apply moves it
        self.inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim))

    def _apply(self, fn, *args, **kwargs):  # model.to(device) reaches a plain attribute only through here
        self.inv_freq = fn(self.inv_freq)
        return super()._apply(fn, *args, **kwargs)

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
        self.c_q, self.c_k, self.c_v, self.c_proj = (nn.Linear(n_embd, n_embd, bias=False) for _ in range(4))
        self.c_proj.weight.data.zero_()  # each block starts as the identity
        self.rotary = Rotary(self.head_dim)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = (lin(x).view(B, T, self.n_head, self.head_dim) for lin in (self.c_q, self.c_k, self.c_v))
        cos, sin = self.rotary(q)
        q, k = rms_norm(apply_rotary(q, cos, sin)), rms_norm(apply_rotary(k, cos, sin))  # QK-norm
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

    def forward(self, x):
        x = x + self.attn(rms_norm(x))
        x = x + self.mlp(rms_norm(x))
        return x

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
        logits = self.lm_head(rms_norm(x)).float()  # the loss in float32 even under bf16 autocast
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

def muon_groups(model, a):
    """Muon's parameter groups: every block matrix, one momentum (per-layer momentum variants split them)."""
    return [dict(params=list(model.blocks.parameters()), momentum=a.muon_momentum)]

# -----------------------------------------------------------------------------
# Data: memory-mapped token shards, each rank reading its own slice of every batch

SHARD_MAGIC, SHARD_VERSION, HEADER_INTS = 20240520, 1, 256

class ConfigError(Exception):
    """A flag, a combination of flags or data that cannot work; the message is one line naming the flag or
    file and what to do."""

def open_shard(path, hint):
    """Check the header against the file size and return the tokens as a read-only memory map."""
    try:
        size, header = os.path.getsize(path), np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    except OSError as e:
        raise ConfigError(f"cannot read shard {path}: {e.strerror}; {hint}")
    magic, version, ntok = (int(v) for v in header[:3]) if len(header) == HEADER_INTS else (None, None, 0)
    for bad, why in [(magic is None, "is shorter than its 1024-byte header"),
                     (magic != SHARD_MAGIC, f"has magic {magic}, expected {SHARD_MAGIC} (not a token shard)"),
                     (version != SHARD_VERSION, f"has version {version}, expected {SHARD_VERSION}"),
                     (ntok <= 0 or size != HEADER_INTS * 4 + 2 * ntok, f"is {size} bytes but its header promises {ntok} "
                      f"tokens ({HEADER_INTS * 4 + 2 * ntok} bytes): truncated or corrupt")]:
        if bad:
            raise ConfigError(f"shard {path} {why}; {hint}")
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

def repeated_tokens(shard_lens, chunk, start_pos, n_chunks):
    """How many input tokens the loader reads more than once in `n_chunks` chunks of `chunk` tokens. A shard
    holds (length - 1 - start) // chunk chunks (a chunk needs one more token as its last target); the first pass
    enters the first shard at `start_pos`, later ones at 0. So after the first pass only the first shard's
    skipped head [0, start_pos) and a tail beyond the first pass's end are new, and a third pass reads nothing new."""
    first = [max(0, (shard_lens[0] - 1 - start_pos) // chunk)] + [(L - 1) // chunk for L in shard_lens[1:]]
    again = min(max(0, n_chunks - sum(first)), (shard_lens[0] - 1) // chunk) * chunk  # read by pass 2 in shard 0
    new = min(again, start_pos) + max(0, again - start_pos - first[0] * chunk)
    return max(0, n_chunks - sum(first)) * chunk - new

# -----------------------------------------------------------------------------
# Hyperparameters and the checks made before anything starts

def flag(default, help, **more):
    return field(default=default, metadata=dict(help=help, **more))

@dataclass
class Hyperparameters:  # default paths are relative to this script's directory, typed ones to the working directory
    input_bin: str = flag("data/fineweb10B/fineweb_train_*.bin", "train shards (glob)")
    input_val_bin: str = flag("data/fineweb10B/fineweb_val_*.bin", "val shards (glob)")
    batch_size: int = flag(8 * 64, "global batch, sequences")
    device_batch_size: int = flag(64, "sequences per process per micro-step (not given: the largest <= this that fits)")
    sequence_length: int = flag(1024, "tokens per sequence")
    num_iterations: int = flag(5100, "optimiser steps")
    learning_rate: float = flag(0.0036, "AdamW lr (embedding/head)")
    muon_lr_ratio: float = flag(0.1, "Muon lr = ratio x learning_rate")
    muon_momentum: float = flag(0.95, "Muon momentum")
    warmup_iters: int = flag(0, "linear LR warm-up steps")
    warmdown_iters: int = flag(1450, "linear LR decay to 0 over the last N steps")
    vocab_size: int = flag(50304, "GPT-2's 50,257 padded to a multiple of 128")
    n_layer: int = flag(12, "transformer blocks")
    n_head: int = flag(6, "attention heads")
    n_embd: int = flag(768, "model width")
    val_loss_every: int = flag(125, "validate every N steps (0: only at the end)")
    val_tokens: int = flag(10485760, "validation tokens, a fixed prefix of the val shards")
    seed: int = flag(0, "initialisation and data order (shard order, start offset)")
    device: str = flag("auto", "auto | cpu | cuda", choices=["auto", "cpu", "cuda"])
    dtype: str = flag("auto", "autocast and Newton-Schulz: auto = bf16 on cuda, fp32 on cpu",
                      choices=["auto", "bfloat16", "float32"])
    compile: str = flag("auto", "torch.compile: auto = on for cuda; bare --compile: on", choices=["auto", "on", "off"],
                        const="on")
    check_every: int = flag(10, "several processes: they agree on stop requests and non-finite losses every N steps")
    dist_timeout: int = flag(600, "several processes: seconds one waits for the others (start, a collective)")
    out_dir: str = flag("", "run directory; empty: a fresh logs/<id>/ next to this script")
    variant: str = flag("", "variant name for summary.json; empty: from the script name")
    save_every: int = flag(0, "checkpoint every N steps (0: never)")
    keep_checkpoints: int = flag(1, "most recent checkpoints kept")
    resume: str = flag("", "RUN_DIR: continue that run from its latest checkpoint")
    preset: str = flag("", "tiny: a small model on Shakespeare characters for CPUs (values below)",
                       choices=["", "tiny"])

# values a preset changes; flags given on the command line still win
PRESETS = {"tiny": dict(
    input_bin="data/shakespeare_char/shakespeare_train_*.bin", input_val_bin="data/shakespeare_char/shakespeare_val_*.bin",
    vocab_size=128, n_layer=4, n_head=4, n_embd=128, sequence_length=128, batch_size=32, device_batch_size=16,
    num_iterations=150, warmdown_iters=45, learning_rate=0.02, val_loss_every=25, val_tokens=32768)}
# flags that may differ from the saved config when resuming (they do not change the maths)
RESUME_MAY_CHANGE = {"device", "compile", "check_every", "dist_timeout", "save_every", "keep_checkpoints", "resume",
                     "out_dir"}

def build_parser():
    """One flag per field; a flag not typed is left out of the parse (its default is in its help)."""
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], argument_default=argparse.SUPPRESS,
        epilog="presets: " + "; ".join(f"{k}: " + ", ".join(f"{a}={v}" for a, v in d.items()) for k, d in PRESETS.items()))
    for f in dataclasses.fields(Hyperparameters):
        kw = dict(f.metadata, help=f"{f.metadata['help']} (default: {f.default})")
        if f.type is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw.update(type=f.type, nargs="?" if "const" in kw else None)
        p.add_argument(f"--{f.name}", **kw)
    return p

def parse_args(argv):
    """Returns (Hyperparameters, set of flag names given on the command line); a preset yields to typed flags."""
    typed = vars(build_parser().parse_args(argv))
    given, values = set(typed), dataclasses.asdict(Hyperparameters())
    values.update({**PRESETS.get(typed.get("preset", ""), {}), **typed})
    for k in ("input_bin", "input_val_bin"):  # typed paths are relative to the working directory
        if k in given:
            values[k] = os.path.abspath(values[k])
    return Hyperparameters(**values), given

def resolve_path(pattern):
    """Default (relative) paths live next to the script; typed ones were made absolute by parse_args."""
    return pattern if os.path.isabs(pattern) else os.path.join(SCRIPT_DIR, pattern)

def device_batch(batch_size, device_batch_size, world_size, sequence_length, val_tokens, typed):
    """Sequences per process per micro-step: `device_batch_size` itself when typed (it must fit), else the
    largest size <= it that divides the batch per process and the validation sequences per process."""
    if batch_size % world_size:
        raise ConfigError(f"--batch_size {batch_size} cannot be split evenly over {world_size} processes; "
                          f"use a multiple of {world_size}")
    if val_tokens % (sequence_length * world_size):
        raise ConfigError(f"--val_tokens {val_tokens} is not divisible by --sequence_length x processes = "
                          f"{sequence_length * world_size}")
    per_rank, val_seqs = batch_size // world_size, val_tokens // (sequence_length * world_size)
    if typed and (per_rank % device_batch_size or val_seqs % device_batch_size):
        raise ConfigError(f"--batch_size {batch_size} and --val_tokens / --sequence_length {val_seqs * world_size} "
                          f"are not both divisible by --device_batch_size {device_batch_size} x {world_size} processes")
    return max(d for d in range(1, device_batch_size + 1) if per_rank % d == 0 and val_seqs % d == 0)

def validate_static(a, world_size, given=()):
    for name in ("num_iterations", "batch_size", "device_batch_size", "sequence_length", "vocab_size", "n_layer",
                 "n_head", "n_embd", "val_tokens", "keep_checkpoints", "check_every", "dist_timeout"):
        if getattr(a, name) < 1:
            raise ConfigError(f"--{name} must be >= 1 (got {getattr(a, name)})")
    for name in ("val_loss_every", "save_every", "warmup_iters", "warmdown_iters"):
        if getattr(a, name) < 0:
            raise ConfigError(f"--{name} must be >= 0 (got {getattr(a, name)})")
    if a.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but no CUDA device is available; use --device cpu")
    for name in ("summary.json", "metrics.jsonl", "checkpoints"):
        if a.out_dir and not a.resume and os.path.exists(os.path.join(a.out_dir, name)):
            raise ConfigError(f"--out_dir {a.out_dir} already holds a run ({name}); choose a new one or --resume it")
    d = device_batch(a.batch_size, a.device_batch_size, world_size, a.sequence_length, a.val_tokens,
                     "device_batch_size" in given or bool(a.resume))
    if d != a.device_batch_size:
        print0(f"device batch: {d} sequences per process per micro-step (the largest <= {a.device_batch_size} "
               f"that divides {a.batch_size} sequences over {world_size} processes)")
    a.device_batch_size = d
    if a.n_embd % a.n_head or (a.n_embd // a.n_head) % 2:
        raise ConfigError(f"--n_embd {a.n_embd} must split over --n_head {a.n_head} into an even head size (rotary)")
    if a.vocab_size > 65536:
        raise ConfigError(f"--vocab_size {a.vocab_size} does not fit the uint16 tokens of the shards")
    if a.learning_rate <= 0 or not math.isfinite(a.learning_rate):
        raise ConfigError(f"--learning_rate must be a positive number (got {a.learning_rate})")

def how_to_get(a, given, flag_name, shards_needed):
    if flag_name in given:
        return f"check --{flag_name}"
    if "shakespeare" in getattr(a, flag_name):
        return "run `python data/prepare_shakespeare.py`"
    return f"run `python data/cached_fineweb10B.py {shards_needed}`"

def open_data(a, given, world_size):
    """Open and check every shard; returns (train shards in seed order, start offset, val shards)."""
    needed = min(103, math.ceil(a.num_iterations * a.batch_size * a.sequence_length / 100_000_000))
    train, val = [], []
    for flag_name, out in (("input_bin", train), ("input_val_bin", val)):
        path, hint = resolve_path(getattr(a, flag_name)), how_to_get(a, given, flag_name, needed)
        files = sorted(glob.glob(path))
        if not files:
            raise ConfigError(f"no files match --{flag_name} {path}; {hint}")
        out.extend((f, open_shard(f, hint)) for f in files)
    chunk = a.device_batch_size * a.sequence_length * world_size + 1
    for f, s in train:
        if len(s) < chunk:
            raise ConfigError(f"train shard {f} has {len(s)} tokens, fewer than one batch of --device_batch_size x "
                              f"--sequence_length x processes + 1 = {chunk}")
    val_batches = sum((len(s) - 1) // (chunk - 1) for _, s in val)
    if val_batches * (chunk - 1) < a.val_tokens:
        raise ConfigError(f"--val_tokens {a.val_tokens} is more than the val shards hold in whole batches "
                          f"({val_batches * (chunk - 1)} tokens in {', '.join(f for f, _ in val)})")
    # token ids beyond the embedding would only fail at the first batch: look at the val prefix and the
    # start of every train shard (a full scan of 100M-token shards would cost seconds each)
    for f, s in val[:1] + train:
        top = int(s[:min(len(s), max(a.val_tokens, 1 << 20))].max())
        if top >= a.vocab_size:
            raise ConfigError(f"shard {f} holds token id {top}, but --vocab_size is {a.vocab_size}: "
                              f"wrong data for this model (or raise --vocab_size)")
    # the seed fixes the data order: a permutation of the shards and a start offset in the first one
    rng = np.random.default_rng(a.seed)
    train = [train[i] for i in rng.permutation(len(train))]
    room = len(train[0][1]) - a.batch_size * a.sequence_length - 1
    return train, (int(rng.integers(0, room + 1)) if room > 0 else 0), val

def warn_if_data_repeats(a, given, train_shards, start_pos, world_size):
    chunk, lens = a.device_batch_size * a.sequence_length * world_size, [len(s) for _, s in train_shards]
    n_chunks = a.num_iterations * a.batch_size // (a.device_batch_size * world_size)
    twice = repeated_tokens(lens, chunk, start_pos, n_chunks)
    if twice:
        need, have = n_chunks * chunk, sum(lens)
        n_need = math.ceil((need + start_pos) / (have / len(lens)))
        print(f"warning: this run consumes {need:,} train tokens but the {len(lens)} train shard(s) hold {have:,}: "
              f"{twice:,} tokens are trained on more than once. About {n_need} shards of this size are needed; "
              f"{how_to_get(a, given, 'input_bin', n_need)}", file=sys.stderr, flush=True)

# -----------------------------------------------------------------------------
# The run: setup, the training loop (validate, step, log), main

def print0(*args, **kw):
    if int(os.environ.get("RANK", "0")) == 0:
        print(*args, **kw, flush=True)

def lr_scale(step, a):
    if step < a.warmup_iters:
        return (step + 1) / a.warmup_iters
    if step < a.num_iterations - a.warmdown_iters:
        return 1.0
    return (a.num_iterations - step) / a.warmdown_iters

def build(a, device, rank, world_size, use_compile, amp_dtype):
    """The model (initialised on the CPU: a seed is the same model on every device), its compiled/DDP
    wrapper and the two optimisers, set as the record's (Newton-Schulz in the autocast dtype)."""
    torch.manual_seed(a.seed)
    raw_model = GPT(a.vocab_size, a.n_layer, a.n_head, a.n_embd).to(device)
    cuda, ns = device.type == "cuda", None
    if use_compile and cuda:
        import torch._inductor.config as inductor_config
        inductor_config.coordinate_descent_tuning = True  # the record sets it just before compiling
        ns = torch.compile(newton_schulz5)
    model = torch.compile(raw_model) if use_compile else raw_model
    if dist.is_initialized():
        model = DDP(model, device_ids=[device.index] if cuda else None)
    adam = torch.optim.AdamW([raw_model.lm_head.weight], lr=a.learning_rate, betas=(0.9, 0.95), weight_decay=0.0,
                             fused=cuda)
    muon = Muon(muon_groups(raw_model, a), lr=a.muon_lr_ratio * a.learning_rate, rank=rank, world_size=world_size,
                orthogonalise=ns, ns_dtype=amp_dtype)
    for g in adam.param_groups + muon.param_groups:
        g["base_lr"] = g["lr"]
    return raw_model, model, [adam, muon]

@torch.no_grad()
def evaluate(model, loader, steps, ctx, device):
    model.eval()
    loader.reset()
    loss = torch.zeros((), device=device)
    for _ in range(steps):
        x, y = loader.next_batch(device)
        with ctx:
            loss += model(x, y).detach()
    if dist.is_initialized():
        dist.all_reduce(loss, op=dist.ReduceOp.SUM)
        loss /= dist.get_world_size()
    return loss.item() / steps

def train(a, t, run, stop):
    """The record's loop: validate, then step, then log; the first 10 steps are not timed. `t` holds the
    model, optimisers, loaders, step and timing. Returns (status, error)."""
    N, model, raw_model, distributed = a.num_iterations, t.model, t.raw_model, dist.is_initialized()
    sync = torch.cuda.synchronize if t.device.type == "cuda" else (lambda: None)
    bad = torch.zeros((), device=t.device)  # a non-finite train loss seen on this rank since the last check
    sync()
    t0 = time.perf_counter()
    while True:
        last_step = t.step == N
        if t.step == 10:  # compile and warm-up end here
            t.training_time_ms, t.timed_tokens, t0 = 0.0, 0, time.perf_counter()
        timed_steps = float("nan") if t.step <= 11 else (t.step - 10) + 1
        if last_step or (a.val_loss_every > 0 and t.step % a.val_loss_every == 0):
            sync()
            t.training_time_ms += 1000 * (time.perf_counter() - t0)
            t.val_loss = evaluate(model, t.val_loader, t.val_steps, t.ctx, t.device)
            print0(f"step:{t.step}/{N} val_loss:{t.val_loss:.4f} train_time:{t.training_time_ms:.0f}ms "
                   f"step_avg:{t.training_time_ms / (timed_steps - 1):.2f}ms")
            run.log(dict(step=t.step, val_loss=t.val_loss, train_time_ms=t.training_time_ms))
            if not math.isfinite(t.val_loss):  # the same all-reduced value on every rank
                return "diverged", f"non-finite val loss at step {t.step}"
            sync()
            t0 = time.perf_counter()
        if last_step:
            return "ok", None

        model.train()
        scale = lr_scale(t.step, a)
        for opt in t.optimizers:
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * scale
        for i in range(1, t.grad_accum + 1):
            x, y = t.train_loader.next_batch(t.device)
            with t.ctx:
                loss = model(x, y)
            train_loss = loss.detach()
            # gradients are averaged over ranks once, at the last micro-step
            with model.no_sync() if distributed and i < t.grad_accum else contextlib.nullcontext():
                loss.backward()
        if t.grad_accum > 1:
            for p in raw_model.parameters():
                p.grad /= t.grad_accum
        for opt in t.optimizers:
            opt.step()
        raw_model.zero_grad(set_to_none=True)
        t.step += 1
        t.timed_tokens += t.tokens_per_step if t.step > 10 else 0

        if run.master:  # rank 0 reads its loss: the one host synchronisation per step, as in the record
            t.train_loss = train_loss.item()
            approx_ms = t.training_time_ms + 1000 * (time.perf_counter() - t0)
            print0(f"step:{t.step}/{N} train_loss:{t.train_loss:.4f} train_time:{approx_ms:.0f}ms "
                   f"step_avg:{approx_ms / timed_steps:.2f}ms")
            rec = dict(step=t.step, train_loss=t.train_loss, train_time_ms=approx_ms, lr_scale=scale)
            run.log(rec)
        stop_requested, non_finite = stop.signum is not None, not math.isfinite(t.train_loss)
        if distributed:  # every rank stops at the same step, without a collective between checks
            bad = torch.maximum(bad, (~torch.isfinite(train_loss)).float())
            stop_requested = non_finite = False
            if t.step % a.check_every == 0:
                flags = torch.stack([torch.tensor(float(stop.signum is not None), device=t.device), bad])
                dist.all_reduce(flags, op=dist.ReduceOp.MAX)
                stop_requested, non_finite = flags.tolist()
        if non_finite or stop_requested or (a.save_every and t.step % a.save_every == 0 and t.step < N):
            sync()
            t.training_time_ms += 1000 * (time.perf_counter() - t0)  # checkpointing is not training time
            if non_finite:
                return "diverged", f"non-finite train loss at step {t.step}"
            run.checkpoint(t, a)
            if stop_requested:
                return "interrupted", f"stopped by signal at step {t.step}; resume with --resume {run.path}"
            t0 = time.perf_counter()

def setup(a, given, world_size, rank, resume_ckpt, run, data):
    """Device, process group, run directory, model, optimisers and loaders: everything the loop needs."""
    cuda = a.device == "cuda" or (a.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")
    try:
        if cuda:
            torch.cuda.set_device(device)
        if "RANK" in os.environ:  # under torchrun, even with one process
            dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=timedelta(seconds=a.dist_timeout))
    except Exception as e:  # a bad device ordinal, an unreachable rendezvous, a peer that never came
        raise RunError(f"cannot start {device if cuda else 'the process group'} ({type(e).__name__}: {first_line(e)})")
    t = run.open(resume_ckpt["step"] if resume_ckpt else 0)
    t.device, t.use_compile = device, a.compile == "on" or (a.compile == "auto" and cuda)
    t.amp_dtype = {"auto": torch.bfloat16 if cuda else torch.float32, "bfloat16": torch.bfloat16,
                   "float32": torch.float32}[a.dtype]
    t.ctx = torch.autocast(device_type=device.type, dtype=t.amp_dtype, enabled=t.amp_dtype != torch.float32)
    t.raw_model, t.model, t.optimizers = build(a, device, rank, world_size, t.use_compile, t.amp_dtype)
    t.num_params = sum(p.numel() for p in t.raw_model.parameters())
    train_shards, start_pos, val_shards = data
    B, T = a.device_batch_size, a.sequence_length
    t.train_loader = DataLoader([s for _, s in train_shards], B, T, rank, world_size, start_pos)
    t.val_loader = DataLoader([s for _, s in val_shards], B, T, rank, world_size)
    t.val_steps = a.val_tokens // (B * T * world_size)
    if resume_ckpt is not None:
        restore(t, resume_ckpt)
    print0(f"model parameters: {t.num_params:,} ({t.num_params / 1e6:.2f}M)\nrun directory: {run.path}\n"
           f"device: {device.type} x {world_size} process(es), autocast {str(t.amp_dtype).removeprefix('torch.')}, "
           f"compile {'on' if t.use_compile else 'off'}, grad accumulation {t.grad_accum}, "
           f"{t.tokens_per_step:,} tokens/step")
    if run.master:
        warn_if_data_repeats(a, given, train_shards, start_pos, world_size)
    if resume_ckpt is not None:
        print0(f"resuming from step {t.step} ({list_checkpoints(run.path)[-1]})")

def main(argv=None):
    t_wall0 = time.time()
    a, given = parse_args(argv)
    world_size, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    try:  # everything that can be checked is checked before a process group, a directory or a model exists
        a, resume_ckpt = check_resume(a, given)
        validate_static(a, world_size, given)
        data = open_data(a, given, world_size)
    except ConfigError as e:
        if rank == 0:
            print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    run, stop, status, error, handlers = RunDir(a, world_size, rank), StopFlag(), "failed", None, {}
    try:
        setup(a, given, world_size, rank, resume_ckpt, run, data)
        handlers = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
        status, error = train(a, run.t, run, stop)
    except KeyboardInterrupt:
        status, error = "interrupted", f"interrupted at step {run.t.step} (second Ctrl-C, no checkpoint written)"
    except RunError as e:
        error = str(e)
    except Exception as e:
        status, error = ("oom" if is_oom(e) else "failed"), f"{type(e).__name__}: {first_line(e, 500)}"[:500]
        traceback.print_exc()
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
        run.close()
    if world_size > 1 and status in ("oom", "failed"):
        error = f"rank {rank}: {error}"
    if not run.finish(status, error, t_wall0, data, argv) and status == "ok":
        status, error = "failed", "the run finished but its summary.json could not be written (above)"
    if status != "ok":
        print(f"status: {status}: {error}", file=sys.stderr, flush=True)
    if dist.is_initialized() and status in ("ok", "interrupted", "diverged"):
        dist.destroy_process_group()  # a failed rank leaves at once; its peers' collectives then fail too
    return STATUS_EXIT[status]

# -----------------------------------------------------------------------------
# The run directory contract: statuses and exit codes, metrics.jsonl, summary.json, checkpoints, resume

STATUS_EXIT = {"ok": 0, "failed": 1, "diverged": 3, "oom": 4, "interrupted": 130}

class RunError(Exception):
    """A failure explained in one line, without a traceback: an output that cannot be written (a full
    disk), a device or process group that cannot start."""

class StopFlag:
    """The SIGINT/SIGTERM handler: stop at the next step boundary; a second Ctrl-C stops at once."""
    signum = None

    def __call__(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

def first_line(e, n=300):
    return (str(e).strip().splitlines() or [""])[0][:n]

def is_oom(e):
    return (isinstance(e, (torch.OutOfMemoryError, MemoryError)) or "can't allocate memory" in str(e)
            or "out of memory" in str(e).lower())

def unused_path(path):
    """`path`, or path with .1, .2 ... before the extension when it exists: never overwrite a record."""
    base, ext = os.path.splitext(path)
    i, p = 0, path
    while os.path.exists(p):
        i, p = i + 1, f"{base}.{i + 1}{ext}"
    return p

def write_file(path, write, replace=True):
    """Write through `write(f)` into a temporary file, then move it to `path` (with replace=False: only if
    no `path` exists yet; returns False then). On an error the temporary file is removed and RunError
    names the file."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        try:
            (os.replace if replace else os.link)(tmp, path)  # a hard link is atomic and fails when `path` exists
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links (a failed os.replace fails again here: reported)
            os.replace(tmp, path)
        return True
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as a RuntimeError
        raise RunError(f"cannot write {path}: {getattr(e, 'strerror', None) or first_line(e)}")
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)

def git(*cmd):
    """The output of a git command in this script's checkout, or None."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        r = subprocess.run(["git", "-C", SCRIPT_DIR, *cmd], capture_output=True, text=True, timeout=20)
        return r.stdout.strip() if r.returncode == 0 else None

def list_checkpoints(run_dir):
    d = os.path.join(run_dir, "checkpoints")
    return sorted(os.path.join(d, f) for f in (os.listdir(d) if os.path.isdir(d) else [])
                  if f.startswith("step_") and f.endswith(".pt"))

def check_resume(a, given):
    """For --resume: (the saved settings plus the flags that may change, the newest checkpoint); else (a, None)."""
    if not a.resume:
        return a, None
    run_dir = os.path.abspath(a.resume)
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        raise ConfigError(f"--resume {a.resume}: no checkpoints in {run_dir}/checkpoints "
                          f"(the run needs --save_every, or was interrupted before its first step)")
    with contextlib.suppress(OSError, ValueError, AttributeError), open(os.path.join(run_dir, "summary.json")) as f:
        if json.load(f).get("status") == "ok":  # no summary, or a damaged one, is not a finished run
            raise ConfigError(f"--resume {a.resume}: that run already finished (summary.json status ok)")
    if "out_dir" in given and os.path.abspath(a.out_dir) != run_dir:
        raise ConfigError(f"--out_dir {a.out_dir}: a resumed run continues in its own directory {run_dir}")
    try:  # weights_only: a file holding anything but tensors and plain values (code to run) is refused
        ckpt = torch.load(ckpts[-1], map_location="cpu", weights_only=True)
        if not isinstance(ckpt, dict) or not {"config", "model", "optimizers", "loader", "rng"} <= ckpt.keys():
            raise ValueError("not a checkpoint of this trainer")
    except Exception as e:
        why = ("it holds objects other than tensors and plain values; refused, nothing in it was run"
               if "Unsupported global" in str(e) or "Unsupported operand" in str(e) else first_line(e, 200))
        raise ConfigError(f"--resume: cannot read checkpoint {ckpts[-1]} ({type(e).__name__}: {why}); delete it "
                          f"to fall back to an older one")
    saved = ckpt["config"]
    for k in given - RESUME_MAY_CHANGE:
        if getattr(a, k) != saved.get(k):
            raise ConfigError(f"--{k} {getattr(a, k)} differs from the resumed run's {saved.get(k)}; "
                              f"--resume continues with the saved settings")
    keep = {k: getattr(a, k) for k in RESUME_MAY_CHANGE if k in given}
    known = {f.name for f in dataclasses.fields(Hyperparameters)}
    return Hyperparameters(**{**{k: v for k, v in saved.items() if k in known}, **keep, "resume": a.resume,
                              "out_dir": run_dir}), ckpt

def restore(t, ckpt):
    t.raw_model.load_state_dict(ckpt["model"])
    for opt, sd in zip(t.optimizers, ckpt["optimizers"]):
        opt.load_state_dict(sd)
    t.train_loader.load_state_dict(ckpt["loader"])
    t.training_time_ms, t.timed_tokens = ckpt["timing"]["training_time_ms"], ckpt["timing"]["timed_tokens"]
    torch.set_rng_state(ckpt["rng"]["torch"])
    if ckpt["rng"]["cuda"] is not None and t.device.type == "cuda":
        torch.cuda.set_rng_state(ckpt["rng"]["cuda"])

class RunDir:
    """The run directory and the training state `t` that checkpoints, resume and summary.json read.
    Rank 0 writes the directory; a rank that fails on its own writes its summary too."""

    def __init__(self, a, world_size, rank):
        self.a, self.world_size, self.master, self.metrics_f = a, world_size, rank == 0, None
        self.path, self.identity = os.path.abspath(a.out_dir) if a.out_dir else None, None
        self.script_name = os.path.basename(SCRIPT_PATH)
        self.commit = git("rev-parse", "HEAD") if self.master else None
        self.dirty = git("status", "--porcelain", "--untracked-files=no") if self.commit else None
        self.t = SimpleNamespace(step=0, grad_accum=a.batch_size // (a.device_batch_size * world_size),
                                 tokens_per_step=a.batch_size * a.sequence_length, training_time_ms=0.0, timed_tokens=0,
                                 train_loss=float("nan"), val_loss=float("nan"), num_params=None, device=None,
                                 amp_dtype=None, use_compile=None)
        if self.master:  # the directory exists before anything that may fail (device, process group)
            self.path = self.path or os.path.join(SCRIPT_DIR, "logs", f"{time.strftime('%Y%m%d_%H%M%S')}_"
                                                                      f"{uuid.uuid4().hex[:8]}")
            os.makedirs(self.path, exist_ok=True)
            self.identity = self.stat()

    def stat(self):
        st = os.stat(self.path)
        return st.st_dev, st.st_ino

    def open(self, step):
        """Every rank learns the directory; rank 0 copies the script and opens metrics.jsonl (cut back to
        `step` when resuming: the full old file and summary are kept beside it). Returns `t`."""
        if dist.is_initialized():
            obj = [self.path]
            dist.broadcast_object_list(obj, src=0)
            self.path = obj[0]
        self.t.step, self.a.out_dir = step, self.path
        if not self.master:
            with contextlib.suppress(OSError):
                self.identity = self.stat()
            return self.t
        dst = os.path.join(self.path, self.script_name)
        if os.path.exists(dst) and not filecmp.cmp(dst, SCRIPT_PATH, shallow=False):  # a changed script: beside it
            dst = os.path.join(self.path, f"{os.path.splitext(self.script_name)[0]}.resume_{step}.py")
        if not os.path.exists(dst):
            shutil.copyfile(SCRIPT_PATH, dst)
        mpath, summ = os.path.join(self.path, "metrics.jsonl"), os.path.join(self.path, "summary.json")
        if self.a.resume and os.path.exists(mpath):
            old = unused_path(os.path.join(self.path, f"metrics.before_resume_{step}.jsonl"))
            os.replace(mpath, old)
            with open(old) as f, open(mpath, "w") as g:
                for line in f:
                    with contextlib.suppress(json.JSONDecodeError):
                        r = json.loads(line)
                        if r.get("step", 0) < step or ("val_loss" not in r and r.get("step", 0) == step):
                            g.write(line if line.endswith("\n") else line + "\n")
        if self.a.resume and os.path.exists(summ):
            os.replace(summ, unused_path(os.path.join(self.path, f"summary.before_resume_{step}.json")))
        self.metrics_f = open(mpath, "a")
        return self.t

    def log(self, rec):
        if self.metrics_f is not None:
            try:
                self.metrics_f.write(json.dumps(rec) + "\n")
                self.metrics_f.flush()
            except OSError as e:
                raise RunError(f"cannot write {self.path}/metrics.jsonl: {e.strerror or e}")

    def close(self):
        with contextlib.suppress(OSError, AttributeError):
            self.metrics_f.close()

    def checkpoint(self, t, a):
        """Rank 0 writes checkpoints/step_NNNNNN.pt (tensors and plain values only), keeps the newest few."""
        if self.master:
            os.makedirs(os.path.join(self.path, "checkpoints"), exist_ok=True)
            state = dict(
                step=t.step, config=dataclasses.asdict(a), model=t.raw_model.state_dict(),
                optimizers=[o.state_dict() for o in t.optimizers], loader=t.train_loader.state_dict(),
                timing=dict(training_time_ms=t.training_time_ms, timed_tokens=t.timed_tokens),
                rng=dict(torch=torch.get_rng_state(), cuda=torch.cuda.get_rng_state() if t.device.type == "cuda" else None))
            path = os.path.join(self.path, "checkpoints", f"step_{t.step:06d}.pt")
            write_file(path, lambda f: torch.save(state, f))
            for old in list_checkpoints(self.path)[:-a.keep_checkpoints]:
                os.remove(old)
            print0(f"checkpoint: {path}")
        if dist.is_initialized():
            dist.barrier()

    def finish(self, status, error, t_wall0, data, argv):
        """summary.json, written by rank 0 or a rank that failed on its own. Returns False when it could not
        be written: only into this run's own directory (not one moved there since), never over another's."""
        t, a, cuda = self.t, self.a, self.t.device is not None and self.t.device.type == "cuda"
        if self.path is None or not (self.master or status in ("oom", "failed")):
            return True
        mem = None
        if t.device is not None:
            mem = (torch.cuda.max_memory_allocated() if cuda else
                   resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) // 2**20  # Linux reports KiB
            print0(f"peak memory consumption: {mem} MiB")
        metrics = dict(val_loss=t.val_loss, train_loss=t.train_loss, wall_time_s=time.time() - t_wall0,
                       peak_memory_mib=mem, num_params=t.num_params)
        metrics = {k: v for k, v in metrics.items() if v is not None and math.isfinite(v)}
        timed = t.step > 10  # the first 10 steps are not timed: no time rather than a wrong one
        metrics.update(train_time_s=t.training_time_ms / 1000 if timed else None,
                       tokens_per_s=t.timed_tokens / (t.training_time_ms / 1000) if timed else None)
        summary = dict(
            schema=1, status=status, error=error, script=self.script_name, variant=variant_name(a, self.script_name),
            seed=a.seed, steps_completed=t.step, metrics=metrics,
            config={**dataclasses.asdict(a), "world_size": self.world_size, "grad_accum_steps": t.grad_accum,
                    "tokens_per_step": t.tokens_per_step, "train_start_offset": data[1],
                    "train_shard_order": [os.path.basename(f) for f, _ in data[0]],
                    "autocast_dtype": str(t.amp_dtype).removeprefix("torch.") if t.amp_dtype else None,
                    "compiled": t.use_compile},
            env=dict(torch=torch.__version__, python=platform.python_version(), device=t.device and t.device.type,
                     gpus=self.world_size if cuda else 0, processes=self.world_size,
                     nodes=self.world_size // int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size)),
                     gpu_name=torch.cuda.get_device_name(t.device) if cuda else None,
                     cpu_threads=torch.get_num_threads(), git_commit=self.commit,
                     git_dirty=None if self.dirty is None else bool(self.dirty),
                     hostname=socket.gethostname(), argv=sys.argv if argv is None else [self.script_name, *argv]))
        moved = True
        with contextlib.suppress(OSError):
            moved = self.identity is None or self.stat() != self.identity
        if moved:
            print(f"error: {self.path} is not (or no longer) this run's directory: moved, replaced or never "
                  f"created; summary.json not written", file=sys.stderr, flush=True)
            return False
        try:
            body = (json.dumps(summary, indent=2, allow_nan=False) + "\n").encode()
            if not write_file(os.path.join(self.path, "summary.json"), lambda f: f.write(body), replace=False):
                print(f"summary.json already written by another rank; this rank's status: {status}",
                      file=sys.stderr, flush=True)
            return True
        except RunError as e:
            print(f"error: {e}; status {status}: {error}", file=sys.stderr, flush=True)
            return False

def variant_name(a, script_name):
    return a.variant or (os.path.splitext(script_name)[0].removeprefix("train_gpt").lstrip("_") or "baseline")

if __name__ == "__main__":
    sys.exit(main())
