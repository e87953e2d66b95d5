"""Download the GPT-2-tokenised FineWeb-10B shards from the Hugging Face hub.

The dataset repo kjj0/fineweb10B-gpt2 holds one val shard (fineweb_val_000000.bin) and 103 train
shards numbered from 1 (fineweb_train_000001.bin ... fineweb_train_000103.bin), 100M tokens each,
in the shard format of docs/DATA.md. This script fetches the val shard and the first N train shards
into data/fineweb10B/ next to itself:

    python data/cached_fineweb10B.py 8                   # val + train shards 1..8 (800M tokens)
    python data/cached_fineweb10B.py --for-steps 5100    # as many as 5,100 steps x 524,288 tokens use (27)
    python data/cached_fineweb10B.py --for-steps 1000 --batch-tokens 131072   # stage_a (2)
    python data/cached_fineweb10B.py --stages            # the shard count each stage needs
    python data/cached_fineweb10B.py 27 --dir /scratch/fineweb10B --dry-run

Running it again downloads nothing that is already complete (a shard is complete when its header is
valid and its size matches the token count in the header; no network is touched for it). A download
goes to DIR/.partial/ first and is renamed into place only once its size and sha256 match what the
hub announced, so a shard under its final name is always whole. An interrupted download (Ctrl-C,
lost connection, killed job) resumes from its partial file on the next run with an HTTP Range request.
HF_ENDPOINT selects a mirror, as for every huggingface_hub tool.
"""

import argparse
import errno
import fcntl
import hashlib
import os
import re
import shutil
import struct
import sys
from pathlib import Path
from urllib.parse import urlparse

REPO_ID = "kjj0/fineweb10B-gpt2"
REVISION = "main"
NUM_TRAIN_SHARDS = 103  # train shards in the repo, numbered 1..103
TOKENS_PER_SHARD = 100_000_000  # every train shard but the last holds exactly this many
MAGIC, VERSION = 20240520, 1
HEADER_BYTES = 256 * 4
RECORD_BATCH_TOKENS = 512 * 1024  # the record's global batch: 512 sequences of 1,024 tokens

# (stage, steps, tokens per step) as the runner's stages define them; stage_b keeps the record's batch.
STAGES = [
    ("stage_a", 1000, 128 * 1024),
    ("stage_b", 3000, RECORD_BATCH_TOKENS),
    ("stage_c", 5100, RECORD_BATCH_TOKENS),
    ("lmd", 5100, RECORD_BATCH_TOKENS),
]

EXIT_USAGE, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 130
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class DownloadError(Exception):
    """A failure the user can act on; its message is the one line we print."""


# ----------------------------------------------------------------------------- shard arithmetic

def shards_needed(steps: int, batch_tokens: int = RECORD_BATCH_TOKENS,
                  tokens_per_shard: int = TOKENS_PER_SHARD) -> int:
    """Train shards that `steps` steps of `batch_tokens` tokens read without repeating data.

    The loader takes a whole batch from one shard and moves on when fewer than batch+1 tokens are
    left, so a shard yields floor((tokens_per_shard - 1) / batch_tokens) batches, not a fractional
    number. Counting whole batches never under-counts; for the stages it equals
    ceil(steps * batch_tokens / tokens_per_shard).
    """
    if steps < 0 or batch_tokens <= 0:
        raise ValueError("steps must be >= 0 and batch_tokens > 0")
    batches_per_shard = (tokens_per_shard - 1) // batch_tokens
    if batches_per_shard == 0:
        raise ValueError(f"a batch of {batch_tokens:,} tokens does not fit in one shard")
    return -(-steps // batches_per_shard)


def stage_table() -> str:
    lines = ["stage     steps  tokens/step  tokens consumed  train shards (100M tokens each)"]
    for name, steps, batch in STAGES:
        lines.append(f"{name:<8} {steps:>6,}  {batch:>11,}  {steps * batch:>15,}  {shards_needed(steps, batch):>3}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- local files

def shard_name(index: int, split: str) -> str:
    return f"fineweb_{split}_{index:06d}.bin"


def check_shard(path: Path):
    """Return None if `path` is a complete shard, else a short reason it is not."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    if size < HEADER_BYTES:
        return f"truncated ({size:,} bytes, shorter than the {HEADER_BYTES}-byte header)"
    with open(path, "rb") as f:
        magic, version, ntok = struct.unpack("<3i", f.read(12))
    if magic != MAGIC:
        return f"bad magic {magic} (expected {MAGIC})"
    if version != VERSION:
        return f"bad version {version} (expected {VERSION})"
    expected = HEADER_BYTES + 2 * ntok
    if size != expected:
        kind = "truncated" if size < expected else "too long"
        return f"{kind} ({size:,} bytes, header says {ntok:,} tokens = {expected:,} bytes)"
    return None


# ----------------------------------------------------------------------------- hub access

def _hub():
    """Import huggingface_hub lazily, so --help, --stages and bad flags work without it."""
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        raise DownloadError("huggingface_hub is not installed: pip install -r requirements.txt")
    import httpx2
    from huggingface_hub import constants, errors, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers
    return dict(httpx=httpx2, constants=constants, errors=errors, metadata=get_hf_file_metadata,
                url=hf_hub_url, http_get=http_get, headers=build_hf_headers)


def _explain(exc: BaseException, hub, what: str, repo: str, revision: str) -> DownloadError:
    """Turn a network or hub failure into one line saying what to do."""
    e, endpoint = hub["errors"], hub["constants"].ENDPOINT
    if isinstance(exc, e.OfflineModeIsEnabled):
        return DownloadError("HF_HUB_OFFLINE is set: unset it (or set HF_HUB_OFFLINE=0) to download")
    if isinstance(exc, e.GatedRepoError):
        return DownloadError(f"{repo} is gated on {endpoint}: accept its terms and log in (hf auth login)")
    if isinstance(exc, e.RepositoryNotFoundError):
        return DownloadError(f"dataset repo {repo} not found on {endpoint}: check --repo and HF_ENDPOINT")
    if isinstance(exc, e.RevisionNotFoundError):
        return DownloadError(f"revision {revision!r} not found in {repo}: check --revision")
    if isinstance(exc, e.RemoteEntryNotFoundError):
        return DownloadError(f"{what} is not in {repo}@{revision} on {endpoint}: check N and --repo")
    if isinstance(exc, e.FileMetadataError):
        return DownloadError(f"{endpoint} did not answer like a Hugging Face hub for {what} ({exc}); "
                             "check HF_ENDPOINT, proxy and firewall settings")
    if isinstance(exc, e.HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", "?")
        return DownloadError(f"the hub answered HTTP {status} for {what}; retry later "
                             "(finished shards are kept, partial ones resume)")
    if isinstance(exc, (hub["httpx"].TransportError, ConnectionError, TimeoutError)):
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return DownloadError(f"cannot reach {endpoint} while fetching {what} ({reason}); check the network "
                             "or set HF_ENDPOINT to a reachable mirror, then rerun (partial files resume)")
    if isinstance(exc, OSError) and "Consistency check failed" in str(exc):
        return DownloadError(f"{what} arrived incomplete (the connection kept dropping); rerun to resume it")
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return DownloadError(f"disk full while writing {what}: free space and rerun (the download resumes)")
    return DownloadError(f"download of {what} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def fetch(name: str, out_dir: Path, hub, repo: str, revision: str) -> int:
    """Download one file into out_dir/name through out_dir/.partial/; return bytes transferred."""
    url = hub["url"](repo, name, repo_type="dataset", revision=revision)
    try:
        meta = hub["metadata"](url)
    except Exception as exc:  # every failure becomes one actionable line
        raise _explain(exc, hub, name, repo, revision) from None
    size, etag = meta.size, meta.etag
    if not etag:
        raise DownloadError(f"the hub sent no ETag for {name}; check HF_ENDPOINT")

    partial_dir = out_dir / ".partial"
    partial_dir.mkdir(parents=True, exist_ok=True)
    # The etag is part of the name so bytes of an older upstream version are never resumed into a newer one.
    part = partial_dir / f"{name}.{etag[:16]}.part"
    for stale in partial_dir.glob(f"{name}.*.part"):
        if stale != part:
            stale.unlink()

    if size is not None:
        have = part.stat().st_size if part.exists() else 0
        free = shutil.disk_usage(out_dir).free
        if free < size - have:
            raise DownloadError(f"not enough disk space in {out_dir} for {name}: need {(size - have) / 1e9:.2f} GB, "
                                f"{free / 1e9:.2f} GB free")

    headers = hub["headers"]()
    if urlparse(meta.location).netloc != urlparse(url).netloc:
        headers.pop("authorization", None)  # signed CDN urls need no token, and must not receive it

    for attempt in (1, 2):
        with open(part, "a+b") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise DownloadError(f"another process is downloading {name} into {out_dir}: wait for it to finish")
            f.seek(0, os.SEEK_END)
            resume = f.tell()
            if size is not None and resume > size:
                f.truncate(0)
                resume = 0
            if resume:
                print(f"  resuming {name} at {resume:,} of {size or 0:,} bytes", flush=True)
            try:
                hub["http_get"](meta.location, f, resume_size=resume, headers=headers,
                                expected_size=size, displayed_filename=name)
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                raise _explain(exc, hub, name, repo, revision) from None
            f.flush()
            os.fsync(f.fileno())
        got = part.stat().st_size
        if size is not None and got != size:
            raise DownloadError(f"{name}: received {got:,} of {size:,} bytes; rerun to resume")
        # For LFS files (all shards) the etag is the sha256 of the content: check it, above all after a resume.
        if SHA256_RE.match(etag) and _sha256(part) != etag:
            part.unlink()
            if resume and attempt == 1:
                print(f"  {name}: checksum mismatch after resuming; downloading it again from the start", flush=True)
                continue
            raise DownloadError(f"{name}: sha256 does not match the hub's ({etag[:12]}...); partial file removed, rerun")
        break

    bad = check_shard(part)
    if bad is not None:
        raise DownloadError(f"{name} from {repo} is not a valid shard ({bad}); kept as {part} for inspection")
    os.replace(part, out_dir / name)  # atomic: the final name only ever holds a whole shard
    return got - resume


# ----------------------------------------------------------------------------- main

class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage + error
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def parse_args(argv=None):
    p = _Parser(prog="cached_fineweb10B.py",
                description="Download the FineWeb-10B val shard and the first N train shards (100M tokens each).",
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("n", nargs="?", metavar="N", help=f"train shards to fetch, 0..{NUM_TRAIN_SHARDS}")
    p.add_argument("--for-steps", type=str, default=None, metavar="STEPS",
                   help="fetch as many train shards as STEPS steps of --batch-tokens consume")
    p.add_argument("--batch-tokens", type=str, default=str(RECORD_BATCH_TOKENS),
                   help="tokens per optimizer step, for --for-steps")
    p.add_argument("--dir", type=Path, default=Path(__file__).resolve().parent / "fineweb10B",
                   help="where the shards go")
    p.add_argument("--repo", default=REPO_ID, help="Hugging Face dataset repo")
    p.add_argument("--revision", default=REVISION, help="branch, tag or commit of the repo")
    p.add_argument("--dry-run", action="store_true", help="print what would be fetched; touch no network")
    p.add_argument("--stages", action="store_true", help="print the shard count each stage needs and exit")
    args = p.parse_args(argv)
    if args.stages:
        return args, p

    def as_int(flag, text, low):
        try:
            v = int(text)
        except ValueError:
            p.error(f"{flag} must be a whole number, got {text!r}")
        if v < low:
            p.error(f"{flag} must be >= {low}, got {v}")
        return v

    if (args.n is None) == (args.for_steps is None):
        p.error("give either N (train shards, 0.."f"{NUM_TRAIN_SHARDS}) or --for-steps STEPS, not both or neither")
    if args.n is not None:
        args.n = as_int("N", args.n, 0)
        why, args.batch = "", RECORD_BATCH_TOKENS
    else:
        steps = as_int("--for-steps", args.for_steps, 0)
        batch = as_int("--batch-tokens", args.batch_tokens, 1)
        if batch >= TOKENS_PER_SHARD:
            p.error(f"--batch-tokens {batch:,} does not fit in one {TOKENS_PER_SHARD:,}-token shard")
        args.n, args.batch = shards_needed(steps, batch), batch
        why = f" ({steps:,} steps x {batch:,} tokens = {steps * batch:,} tokens)"
    if args.n > NUM_TRAIN_SHARDS:
        p.error(f"{args.n} train shards requested{why}, but the repo has {NUM_TRAIN_SHARDS} "
                f"({NUM_TRAIN_SHARDS * TOKENS_PER_SHARD / 1e9:.1f}B tokens): ask for at most {NUM_TRAIN_SHARDS}")
    args.why = why
    return args, p


def main(argv=None) -> int:
    args, _ = parse_args(argv)
    if args.stages:
        print(stage_table())
        return 0
    out_dir: Path = args.dir
    names = [shard_name(0, "val")] + [shard_name(i, "train") for i in range(1, args.n + 1)]
    print(f"{args.n} train shards{args.why} = {args.n * TOKENS_PER_SHARD / 1e9:.1f}B tokens, "
          f"enough for {args.n * ((TOKENS_PER_SHARD - 1) // args.batch):,} steps of "
          f"{args.batch:,} tokens; plus the val shard; into {out_dir}", flush=True)

    todo = []
    for name in names:
        bad = check_shard(out_dir / name)
        if bad is None:
            continue
        if bad != "missing":
            print(f"  {name}: {bad}; will download it again", flush=True)
        todo.append(name)
    print(f"{len(names) - len(todo)} of {len(names)} files already complete, {len(todo)} to download", flush=True)
    if args.dry_run:
        for name in todo:
            print(f"  would fetch {name}")
        return 0
    if not todo:
        return 0

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"error: cannot create --dir {out_dir}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILED
    try:
        hub = _hub()
        total = 0
        for k, name in enumerate(todo, 1):
            print(f"[{k}/{len(todo)}] {name}", flush=True)
            total += fetch(name, out_dir, hub, args.repo, args.revision)
    except DownloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"\ninterrupted: rerun the same command to resume (partial data kept in {out_dir / '.partial'})",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"done: {len(todo)} files, {total / 1e6:,.1f} MB downloaded into {out_dir}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
