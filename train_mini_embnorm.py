"""Embedding normalisation at small scale: does normalising E_tok + E_pos help a tiny GPT?

A GPT-3-style pre-LayerNorm transformer on character-level Shakespeare (8 layers, width 128,
8 heads, context 128, batch 16, learned token + position embeddings, tied input/output embedding,
AdamW lr 3e-4, 300 iterations). The three variants differ only in what is applied to the summed
embeddings before block 1:

    baseline   x0 = E_tok[t] + E_pos[p]
    layernorm  x0 = LayerNorm(E_tok[t] + E_pos[p])     (gain and bias)
    rmsnorm    x0 = RMSNorm(E_tok[t] + E_pos[p])       (gain)

Data (once): python data/prepare_shakespeare.py

CPU (this script's home; with --threads 1 two seeds can run side by side on two cores):
    python train_mini_embnorm.py --variant rmsnorm --seed 1 --out_dir logs/embnorm/rmsnorm/seed_1
1 GPU:
    python train_mini_embnorm.py --variant rmsnorm --seed 1 --device cuda
8 GPUs / several nodes: the model is far too small to split across devices; run one seed per GPU
instead, e.g. `CUDA_VISIBLE_DEVICES=3 python train_mini_embnorm.py --seed 3 ...`, on any node.

The file reads top to bottom: data (shards, batches), model (MiniGPT, optimizer, evaluation), run
(flags, run directory, training loop, summary).

Outputs follow docs/RUN_FORMAT.md: metrics.jsonl while training, summary.json at the end (status
ok | diverged | oom | failed | interrupted), speedrun-format log lines on stdout. Exit code 0 only
when the status is ok. summary.json is written only into the directory the run started in: if
--out_dir was moved or replaced meanwhile, the run prints one line and writes no summary. Every
training step is timed (validation excluded), so train_time_s is null only when no step completed.
A write that fails (a full disk) ends the run as failed with one line naming the file; no temporary
file is left behind.
"""
import argparse
import dataclasses
import json
import math
import os
import platform
import resource
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass

# Set before torch starts its OpenMP threads: busy-waiting threads collapse when other processes share
# the cores (bench/RESULTS.md). Export OMP_WAIT_POLICY=ACTIVE to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.optim.adamw import adamw  # noqa: E402

VARIANTS = ("baseline", "layernorm", "rmsnorm")
SCRIPT_DIR = os.path.dirname(os.path.abspath(__file__))


# -----------------------------------------------------------------------------
# Data

SHARD_MAGIC, SHARD_VERSION, HEADER_INTS = 20240520, 1, 256
PREPARE_HINT = "run `python data/prepare_shakespeare.py` first"


class DataError(Exception):
    pass


def load_shard(path):
    """Tokens of one shard (docs/DATA.md format) as an int64 tensor, with the header checked."""
    if not os.path.exists(path):
        raise DataError(f"{path} not found: {PREPARE_HINT}")
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size < HEADER_INTS * 4:
        raise DataError(f"{path}: too short to be a shard; {PREPARE_HINT}")
    header = raw[: HEADER_INTS * 4].view("<i4")
    n = int(header[2])
    if header[0] != SHARD_MAGIC or header[1] != SHARD_VERSION or raw.size != HEADER_INTS * 4 + 2 * n:
        raise DataError(f"{path}: bad shard header or size (magic {header[0]}, version {header[1]}, "
                        f"{n} tokens, {raw.size} bytes); {PREPARE_HINT}")
    return torch.from_numpy(raw[HEADER_INTS * 4:].view("<u2").astype(np.int64))


def batch_starts(n_tokens, seq_len, batch_size, num_iterations, seed):
    """Random window starts for every training step, drawn once from the run's seed."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, n_tokens - seq_len - 1, (num_iterations, batch_size), generator=g)


def val_starts(n_tokens, seq_len, n_seqs):
    """The fixed validation set: n_seqs windows spread evenly over the whole val shard."""
    return torch.linspace(0, n_tokens - seq_len - 1, n_seqs).long()


def windows(data, starts, seq_len):
    """(inputs, targets), each (len(starts), seq_len): next-character prediction."""
    idx = starts[:, None] + torch.arange(seq_len + 1)
    chunk = data[idx]
    return chunk[:, :-1], chunk[:, 1:]


def load_data(args, device):
    """(train tokens, window starts of every step, val inputs, val targets) on `device`, checked
    against --seq_len and --vocab_size."""
    train_data = load_shard(os.path.join(args.data_dir, "shakespeare_train_000000.bin"))
    val_data = load_shard(os.path.join(args.data_dir, "shakespeare_val_000000.bin"))
    for name, d in (("train", train_data), ("val", val_data)):
        if d.numel() < args.seq_len + 2:
            raise DataError(f"{args.data_dir}: the {name} shard has only {d.numel()} tokens, "
                            f"fewer than --seq_len {args.seq_len} + 2")
        if int(d.max()) >= args.vocab_size:
            raise DataError(f"{args.data_dir}: {name} shard has token id {int(d.max())} >= "
                            f"--vocab_size {args.vocab_size}")
    starts = batch_starts(train_data.numel(), args.seq_len, args.batch_size, args.num_iterations, args.seed)
    val_x, val_y = windows(val_data, val_starts(val_data.numel(), args.seq_len, args.val_seqs), args.seq_len)
    return train_data.to(device), starts.to(device), val_x.to(device), val_y.to(device)


# -----------------------------------------------------------------------------
# Model

class RMSNorm(nn.Module):
    """x / rms(x) * gain: rescales the vector's magnitude without centring it."""

    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.rms_norm(x, (x.size(-1),), self.weight, self.eps)


class CausalSelfAttention(nn.Module):
    def __init__(self, dim, n_head):
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(dim, 3 * dim)  # one matmul instead of three: fewer, larger kernels
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc = nn.Linear(dim, 4 * dim)
        self.proj = nn.Linear(4 * dim, dim)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x)))  # exact GELU: faster than the tanh form on CPU (bench/RESULTS.md)


class Block(nn.Module):
    def __init__(self, dim, n_head):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, n_head)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class MiniGPT(nn.Module):
    def __init__(self, variant, vocab_size=128, seq_len=128, n_layer=8, dim=128, n_head=8):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        self.variant = variant
        self.wte = nn.Embedding(vocab_size, dim)
        self.wpe = nn.Embedding(seq_len, dim)
        self.blocks = nn.ModuleList([Block(dim, n_head) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(dim)
        self.reset_parameters(n_layer)
        # Created after the random initialisation and itself initialised without random numbers,
        # so one seed gives every variant exactly the same shared weights (a paired comparison).
        self.emb_norm = {"baseline": nn.Identity, "layernorm": nn.LayerNorm, "rmsnorm": RMSNorm}[
            variant](*([] if variant == "baseline" else [dim]))

    def reset_parameters(self, n_layer):
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif "ln_" in name:
                nn.init.ones_(p)
            elif name.endswith("proj.weight"):
                # GPT-2/3: residual-branch outputs scaled down so the stream's variance stays O(1).
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * n_layer))
            else:
                nn.init.normal_(p, std=0.02)

    def embed(self, idx):
        """The vectors entering block 1."""
        pos = torch.arange(idx.size(1), device=idx.device)
        return self.emb_norm(self.wte(idx) + self.wpe(pos))

    def logits_from(self, x):
        for block in self.blocks:
            x = block(x)
        return F.linear(self.ln_f(x), self.wte.weight)  # tied output embedding

    def forward(self, idx, targets):
        logits = self.logits_from(self.embed(idx))
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


class FusedAdamW:
    """torch.optim.AdamW(param groups, lr, betas, eps, fused=True), the same update bit for bit: the same
    functional call (torch.optim.adamw.adamw, fused kernel: every tensor in one pass on CPU and CUDA)
    with the same state (fp32 step counter on the parameter's device, zeroed moments). Not built on
    torch.optim.Optimizer: its constructor imports torch._dynamo, which took 2.1-2.4 s of every run's
    start-up on the 2-core CPU (bench/RESULTS.md). Only step() and zero_grad() (grads to None)."""

    def __init__(self, groups, lr, betas, eps):
        """groups: (list of parameters, weight decay) pairs."""
        self.groups, self.lr, self.betas, self.eps = groups, lr, betas, eps
        self.state = {}

    @torch.no_grad()
    def step(self):
        for params, weight_decay in self.groups:
            params = [p for p in params if p.grad is not None]
            for p in params:
                if p not in self.state:  # (step, exp_avg, exp_avg_sq), created as AdamW does
                    self.state[p] = (torch.zeros((), dtype=torch.float32, device=p.device),
                                     torch.zeros_like(p, memory_format=torch.preserve_format),
                                     torch.zeros_like(p, memory_format=torch.preserve_format))
            steps = [self.state[p][0] for p in params]
            exp_avgs = [self.state[p][1] for p in params]
            exp_avg_sqs = [self.state[p][2] for p in params]
            adamw(params, [p.grad for p in params], exp_avgs, exp_avg_sqs, [], steps, fused=True,
                  amsgrad=False, beta1=self.betas[0], beta2=self.betas[1], lr=self.lr,
                  weight_decay=weight_decay, eps=self.eps, maximize=False)

    def zero_grad(self):
        for params, _ in self.groups:
            for p in params:
                p.grad = None


def make_optimizer(model, lr, betas, weight_decay, device):
    """AdamW; weight decay on matrices (incl. the embeddings), none on biases and norm gains (GPT-3)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return FusedAdamW([(decay, weight_decay), (no_decay, 0.0)], lr=lr, betas=betas, eps=1e-8)


def class_counts(logits, targets, num_classes):
    """(correct per target class, count per target class) for argmax predictions."""
    targets = targets.flatten()
    hit = logits.argmax(-1).flatten() == targets
    count = torch.bincount(targets, minlength=num_classes)
    correct = torch.bincount(targets[hit], minlength=num_classes)
    return correct, count


def accuracies(correct, count):
    """Accuracy over all tokens, and the mean over target classes present of per-class accuracy."""
    present = count > 0
    acc = correct.sum().item() / count.sum().item()
    macro = (correct[present].double() / count[present].double()).mean().item()
    return acc, macro


@torch.no_grad()
def evaluate(model, val_x, val_y, eval_batch, vocab_size, autocast):
    """Loss, accuracies and the mean L2 norm of block-1 inputs over the fixed validation set."""
    model.eval()
    loss_sum, norm_sum, n = 0.0, 0.0, 0
    correct = torch.zeros(vocab_size, dtype=torch.long, device=val_x.device)
    count = torch.zeros_like(correct)
    for i in range(0, val_x.size(0), eval_batch):
        x, y = val_x[i:i + eval_batch], val_y[i:i + eval_batch]
        with autocast():
            x0 = model.embed(x)
            logits = model.logits_from(x0)
        loss_sum += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").item()
        norm_sum += x0.float().norm(dim=-1).sum().item()
        c, k = class_counts(logits, y, vocab_size)
        correct += c
        count += k
        n += y.numel()
    model.train()
    acc, macro = accuracies(correct, count)
    return {"val_loss": loss_sum / n, "accuracy": acc, "macro_accuracy": macro, "embedding_norm": norm_sum / n}


def grad_norm(model):
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))).item()


# -----------------------------------------------------------------------------
# Run: flags, run directory, training loop, summary

@dataclass
class Hyperparameters:
    variant: str = "baseline"
    seed: int = 0
    num_iterations: int = 300
    batch_size: int = 16
    seq_len: int = 128
    n_layer: int = 8
    n_embd: int = 128
    n_head: int = 8
    vocab_size: int = 128           # every tiny preset of the project; Shakespeare uses ids < 128
    lr: float = 3e-4
    betas: tuple = (0.9, 0.95)
    weight_decay: float = 0.1
    grad_clip: float = 0.0          # 0: no clipping (the study names none); grad_norm is measured before it
    val_every: int = 100            # validation every this many steps and at the end
    val_seqs: int = 256             # fixed validation set: 256 x 128 = 32,768 predicted tokens
    eval_batch: int = 64
    log_every: int = 10
    device: str = "auto"            # auto | cpu | cuda
    dtype: str = "auto"             # auto | float32 | bfloat16 (autocast); auto: bf16 on CUDA, fp32 on CPU
    compile: str = "auto"           # auto | on | off; auto: on for CUDA, off for CPU (bench/RESULTS.md)
    threads: int = 0                # CPU threads; 0 keeps torch's default
    data_dir: str = os.path.join(SCRIPT_DIR, "data", "shakespeare_char")
    out_dir: str = None


class Interrupted(Exception):
    pass


class ArgError(Exception):
    """A bad flag or an unusable --out_dir: one line, exit code 2, nothing touched."""


class RunFileError(Exception):
    """A run-directory file could not be written (e.g. a full disk)."""


def parse_args(argv):
    defaults = Hyperparameters()
    p = argparse.ArgumentParser(description="Embedding-normalisation study on character-level Shakespeare.")
    for f in dataclasses.fields(defaults):
        default = getattr(defaults, f.name)
        if f.name == "variant":
            p.add_argument("--variant", choices=VARIANTS, default=default)
        elif f.name == "betas":
            p.add_argument("--betas", type=float, nargs=2, default=list(default))
        elif isinstance(default, bool):
            p.add_argument(f"--{f.name}", type=lambda s: s.lower() in ("1", "true", "yes", "on"), default=default)
        else:
            p.add_argument(f"--{f.name}", type=type(default) if default is not None else str, default=default)
    args = Hyperparameters(**vars(p.parse_args(argv)))
    args.betas = tuple(args.betas)
    return args


def resolve(args):
    """Check the flags and fill in the `auto` choices; returns the torch device. ArgError if bad."""
    for name in ("num_iterations", "batch_size", "seq_len", "n_layer", "n_embd", "n_head", "vocab_size",
                 "val_seqs", "eval_batch", "log_every"):
        if getattr(args, name) <= 0:
            raise ArgError(f"--{name} must be positive, got {getattr(args, name)}")
    if args.n_embd % args.n_head:
        raise ArgError(f"--n_embd {args.n_embd} must be divisible by --n_head {args.n_head}")
    if args.device not in ("auto", "cpu", "cuda") or args.dtype not in ("auto", "float32", "bfloat16") \
            or args.compile not in ("auto", "on", "off"):
        raise ArgError("--device auto|cpu|cuda, --dtype auto|float32|bfloat16, --compile auto|on|off")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ArgError("--device cuda but no CUDA device is visible; use --device cpu")
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    if args.dtype == "auto":
        args.dtype = "bfloat16" if cuda else "float32"
    if args.compile == "auto":
        args.compile = "on" if cuda else "off"
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.out_dir is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        args.out_dir = os.path.join("logs", f"mini_embnorm_{args.variant}_seed{args.seed}_{stamp}_{uuid.uuid4().hex[:6]}")
    return device


class RunDir:
    """The run directory: refuses one that already holds a run, appends metrics.jsonl while training,
    and writes summary.json once, atomically, only while --out_dir is still the directory it created."""

    def __init__(self, path):
        for name in ("summary.json", "metrics.jsonl"):
            if os.path.exists(os.path.join(path, name)):
                raise ArgError(f"{os.path.join(path, name)} exists: --out_dir already holds a run; "
                               "choose a new directory")
        self.path, self.metrics_path = path, os.path.join(path, "metrics.jsonl")
        try:
            os.makedirs(path, exist_ok=True)
            st = os.stat(path)
            self.identity = (st.st_dev, st.st_ino)
            self.metrics = open(self.metrics_path, "a")
        except OSError as e:
            raise ArgError(f"--out_dir {path}: cannot create the run directory ({e.strerror})") from None

    def log(self, obj):
        try:
            self.metrics.write(json.dumps(obj) + "\n")
            self.metrics.flush()
        except OSError as e:
            raise RunFileError(f"{self.metrics_path}: cannot write ({e.strerror})") from None

    def close_metrics(self):
        try:
            self.metrics.close()
        except OSError:
            pass  # the failed write already ended the run and named the file

    def write_summary(self, summary):
        """Returns None, or the one-line reason summary.json was not written (nothing is left behind)."""
        try:
            st = os.stat(self.path)
            same = (st.st_dev, st.st_ino) == self.identity
        except OSError:
            same = False
        if not same:
            return f"{self.path} is no longer the directory this run started in; summary.json not written"
        path = os.path.join(self.path, "summary.json")
        tmp = f"{path}.tmp{os.getpid()}"
        try:
            with open(tmp, "w") as f:
                f.write(json.dumps(summary, indent=1) + "\n")
            os.replace(tmp, path)
        except OSError as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            return f"{path}: cannot write ({e.strerror}); summary.json not written"
        return None


@dataclass
class Progress:
    """What the training loop has done so far; read by the summary whether or not it finished."""
    step: int = 0                   # the step being run
    done: int = 0                   # steps completed and logged
    train_time: float = 0.0         # seconds in training steps (validation excluded)
    train_loss: float = None        # loss of the last logged step
    grad_norm: float = float("nan")
    final: dict = dataclasses.field(default_factory=dict)  # the last validation
    num_params: int = None


def train(args, device, data, run, progress):
    """Build the model and train: a step per iteration; every --log_every steps the losses come back to
    the host, are logged and checked; validation every --val_every steps and at the end."""
    train_data, starts, val_x, val_y = data
    N = args.num_iterations
    offsets = torch.arange(args.seq_len + 1, device=device)
    torch.manual_seed(args.seed)
    model = MiniGPT(args.variant, args.vocab_size, args.seq_len, args.n_layer, args.n_embd,
                    args.n_head).to(device)
    progress.num_params = sum(p.numel() for p in model.parameters())
    print(f"train_mini_embnorm.py variant={args.variant} seed={args.seed} device={device.type} "
          f"dtype={args.dtype} compile={args.compile} threads={torch.get_num_threads()}")
    print(f"parameters: {progress.num_params:,} (embedding norm: "
          f"{sum(p.numel() for p in model.emb_norm.parameters())})")
    optimizer = make_optimizer(model, args.lr, args.betas, args.weight_decay, device)
    train_model = torch.compile(model) if args.compile == "on" else model
    amp_dtype = torch.bfloat16 if args.dtype == "bfloat16" else None

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    losses = torch.zeros(N, device=device)  # kept on the device: no host sync per step
    sync()
    t0 = time.perf_counter()
    for step in range(N):
        progress.step = step
        chunk = train_data[starts[step][:, None] + offsets]
        with autocast():
            loss = train_model(chunk[:, :-1], chunk[:, 1:])
        loss.backward()
        done = step + 1
        measure = done % args.log_every == 0 or done == N
        if args.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            if measure:
                progress.grad_norm = norm.item()
        elif measure:
            progress.grad_norm = grad_norm(model)
        optimizer.step()
        optimizer.zero_grad()
        losses[step] = loss.detach()
        validate_now = (args.val_every > 0 and done % args.val_every == 0) or done == N
        if measure or validate_now:
            sync()
            progress.train_time += time.perf_counter() - t0
            log_train_losses(losses, done, measure, run, progress)
            if validate_now:
                progress.final = validate(model, val_x, val_y, args, autocast, run, progress, done)
            sync()
            t0 = time.perf_counter()


def log_train_losses(losses, done, measure, run, progress):
    """metrics.jsonl lines for the steps since the last log, the speedrun line; diverged if not finite."""
    chunk_losses = losses[progress.done:done].tolist()
    ms = 1000 * progress.train_time
    for i, l in enumerate(chunk_losses):
        rec = {"step": progress.done + i + 1, "train_loss": l, "train_time_ms": ms, "lr_scale": 1.0}
        if progress.done + i + 1 == done and measure:
            rec["grad_norm"] = progress.grad_norm
        run.log(rec)
    progress.done, progress.train_loss = done, chunk_losses[-1]
    bad = [l for l in chunk_losses if not math.isfinite(l)]
    if bad:
        raise FloatingPointError(f"training loss became {bad[0]} by step {done}")
    print(f"step:{done}/{len(losses)} train_loss:{chunk_losses[-1]:.4f} train_time:{ms:.0f}ms "
          f"step_avg:{ms / done:.2f}ms")


def validate(model, val_x, val_y, args, autocast, run, progress, at_step):
    res = evaluate(model, val_x, val_y, args.eval_batch, args.vocab_size, autocast)
    ms = 1000 * progress.train_time
    print(f"step:{at_step}/{args.num_iterations} val_loss:{res['val_loss']:.4f} train_time:{ms:.0f}ms "
          f"step_avg:{ms / max(at_step, 1):.2f}ms")
    run.log({"step": at_step, "val_loss": res["val_loss"], "train_time_ms": ms,
             **{k: v for k, v in res.items() if k != "val_loss"}})
    if not math.isfinite(res["val_loss"]):
        raise FloatingPointError(f"validation loss is {res['val_loss']} at step {at_step}")
    return res


def outcome(e, progress):
    """(status, one-line error) of a run that ended with exception `e`."""
    if isinstance(e, FloatingPointError):
        return "diverged", str(e)
    if isinstance(e, (DataError, RunFileError)):
        return "failed", str(e)
    if isinstance(e, (Interrupted, KeyboardInterrupt)):
        return "interrupted", f"interrupted at step {progress.step} ({str(e) or 'Ctrl-C'})"
    line = str(e).splitlines()[0] if str(e) else ""
    # torch.OutOfMemoryError (CUDA) or the CPU allocator's failure
    if isinstance(e, RuntimeError) and (isinstance(e, torch.OutOfMemoryError) or "can't allocate memory" in line
                                        or "out of memory" in line):
        return "oom", line or type(e).__name__
    return "failed", f"{type(e).__name__}: {line}" if line else type(e).__name__


def run_env(device):
    def git(*args):
        try:
            return subprocess.run(["git", "-C", SCRIPT_DIR, *args], capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    commit = git("rev-parse", "HEAD") or None
    cuda = device.type == "cuda"
    return {"torch": torch.__version__, "python": platform.python_version(), "device": device.type,
            "gpus": torch.cuda.device_count() if cuda else 0,
            "gpu_name": torch.cuda.get_device_name(device) if cuda else None,
            "cpu_threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "git_commit": commit,
            "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")) if commit else None,
            "hostname": socket.gethostname()}


def final_metrics(args, device, progress, t_start, cpu_start):
    """summary.json's metrics: timings (train_time_s null when no step completed), last losses, validation."""
    if device.type == "cuda":
        mib = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    print(f"peak memory consumption: {mib:.0f} MiB")
    # cpu_time_s: CPU seconds of this process (all threads). With --threads 1 it is what the run takes
    # on an idle core, even when other jobs share the machine and stretch the wall time.
    metrics = {"train_time_s": progress.train_time if progress.done else None,
               "wall_time_s": time.perf_counter() - t_start,
               "cpu_time_s": time.process_time() - cpu_start, "peak_memory_mib": mib}
    if progress.done:
        metrics["tokens_per_s"] = progress.done * args.batch_size * args.seq_len / progress.train_time
        metrics["train_loss"] = progress.train_loss
        metrics["grad_norm"] = progress.grad_norm
    if progress.num_params is not None:
        metrics["num_params"] = progress.num_params
    if progress.final:
        metrics.update(progress.final)
        metrics["val_ppl"] = math.exp(progress.final["val_loss"])
    return {k: v for k, v in metrics.items()
            if (k == "train_time_s" and v is None) or (isinstance(v, (int, float)) and math.isfinite(v))}


def main(argv=None):
    t_start, cpu_start = time.perf_counter(), time.process_time()
    args = parse_args(argv)
    try:
        device = resolve(args)
        run = RunDir(args.out_dir)
    except ArgError as e:
        print(f"train_mini_embnorm.py: error: {e}", file=sys.stderr)
        return 2
    summary = {"schema": 1, "status": "failed", "error": None, "script": "train_mini_embnorm.py",
               "variant": args.variant, "seed": args.seed, "steps_completed": 0, "metrics": {},
               "config": dataclasses.asdict(args), "env": run_env(device)}

    def on_sigterm(signum, frame):
        raise Interrupted(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_sigterm)
    progress = Progress()
    try:
        train(args, device, load_data(args, device), run, progress)
        summary["status"] = "ok"
    except (Exception, KeyboardInterrupt) as e:
        summary["status"], summary["error"] = outcome(e, progress)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    summary["steps_completed"] = progress.done
    summary["metrics"] = final_metrics(args, device, progress, t_start, cpu_start)
    run.close_metrics()
    unwritten = run.write_summary(summary)
    if summary["status"] != "ok":
        print(f"train_mini_embnorm.py: {summary['status']}: {summary['error']}", file=sys.stderr)
    if unwritten:
        print(f"train_mini_embnorm.py: {unwritten}", file=sys.stderr)
    if summary["status"] != "ok" or unwritten:
        return {"diverged": 3, "oom": 4, "interrupted": 130}.get(summary["status"], 1)
    m = summary["metrics"]
    print(f"val_loss {m['val_loss']:.4f} val_ppl {m['val_ppl']:.3f} accuracy {m['accuracy']:.4f} "
          f"macro_accuracy {m['macro_accuracy']:.4f} grad_norm {m['grad_norm']:.4f} "
          f"embedding_norm {m['embedding_norm']:.3f} tokens/s {m['tokens_per_s']:.0f} -> {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
