"""End-to-end tests of data/cached_fineweb10B.py against a stand-in for the Hugging Face hub.

The stand-in is two real HTTP servers on loopback, answering what huggingface_hub asks for when it
downloads a dataset file:
- the hub: HEAD/GET /datasets/{repo}/resolve/{revision}/{file} -> 302 to the CDN, with X-Repo-Commit,
  X-Linked-Etag (the sha256 of the content, as for LFS files), X-Linked-Size; hub-style errors
  (401 RepoNotFound, 404 RevisionNotFound / EntryNotFound with X-Error-Code);
- the CDN, on another port (another origin, so the client takes the metadata from the 302 and does not
  follow it): GET/HEAD /blobs/{sha256} with Range support (206 + Content-Range).
The script runs as a subprocess with HF_ENDPOINT pointing at the hub, exactly as a user runs it.
The shards are small synthetic files in the real format; one is 11 MB so that a transfer cut after
10 MB leaves data on disk (huggingface_hub writes in 10 MiB chunks).
"""

import hashlib
import http.server
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "data" / "cached_fineweb10B.py"
REPO = "kjj0/fineweb10B-gpt2"
COMMIT = hashlib.sha1(b"fake commit").hexdigest()
BIG = "fineweb_train_000002.bin"
CHUNK = 10 * 1024 * 1024  # huggingface_hub's download chunk: the granularity of data kept on disk


def load_module():
    spec = importlib.util.spec_from_file_location("cached_fineweb10B", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def make_shard(ntok: int, seed: int) -> bytes:
    header = np.zeros(256, dtype="<i4")
    header[:3] = (20240520, 1, ntok)
    tokens = np.random.default_rng(seed).integers(0, 50257, ntok).astype("<u2")
    return header.tobytes() + tokens.tobytes()


@pytest.fixture(scope="module")
def shards():
    files = {"fineweb_val_000000.bin": make_shard(3000, 0)}
    for i in range(1, 6):
        ntok = 5_500_000 if f"fineweb_train_{i:06d}.bin" == BIG else 2000 + 37 * i
        files[f"fineweb_train_{i:06d}.bin"] = make_shard(ntok, i)
    return files


class FakeHub:
    def __init__(self, files):
        self.files = files
        self.sha = {name: hashlib.sha256(b).hexdigest() for name, b in files.items()}
        self.by_sha = {s: name for name, s in self.sha.items()}
        self.log = []  # dicts: server, method, name, range, sent
        self.lock = threading.Lock()
        self.drop_once = {}  # name -> bytes sent before the connection is cut, once
        self.stall_once = {}  # name -> bytes sent before the transfer hangs, once
        self.stalled, self.release = threading.Event(), threading.Event()
        self.cdn = self._serve(CdnHandler)
        self.hub = self._serve(HubHandler)

    def _serve(self, handler):
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        srv.daemon_threads = True
        srv.fake = self
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return srv

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.hub.server_address[1]}"

    @property
    def cdn_url(self):
        return f"http://127.0.0.1:{self.cdn.server_address[1]}"

    def record(self, **entry):
        with self.lock:
            self.log.append(entry)

    def names(self, server, method):
        with self.lock:
            return sorted(e["name"] for e in self.log if e["server"] == server and e["method"] == method)

    def close(self):
        self.release.set()
        for srv in (self.hub, self.cdn):
            srv.shutdown()
            srv.server_close()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real hub; every answer carries Content-Length

    def log_message(self, *args):
        pass

    @property
    def fake(self) -> FakeHub:
        return self.server.fake

    def reply(self, status, headers=(), body=b""):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class HubHandler(_Handler):
    def do_HEAD(self):
        self.resolve()

    do_GET = do_HEAD

    def resolve(self):
        m = re.fullmatch(r"/datasets/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", unquote(self.path.split("?")[0]))
        repo, rev, name = m.groups() if m else (None, None, None)
        self.fake.record(server="hub", method=self.command, name=name, range=None, sent=0)
        json = lambda msg: f'{{"error":"{msg}"}}'.encode()  # noqa: E731
        if m is None or repo != REPO:
            return self.reply(401, [("X-Error-Code", "RepoNotFound")], json("Repository not found"))
        if rev not in ("main", COMMIT):
            return self.reply(404, [("X-Error-Code", "RevisionNotFound")], json("Invalid rev id"))
        if name not in self.fake.files:
            return self.reply(404, [("X-Error-Code", "EntryNotFound"), ("X-Repo-Commit", COMMIT)],
                              json("Entry not found"))
        sha = self.fake.sha[name]
        self.reply(302, [
            ("Location", f"{self.fake.cdn_url}/blobs/{sha}?X-Amz-Signature=fake"),
            ("X-Repo-Commit", COMMIT),
            ("ETag", f'"{hashlib.sha1(name.encode()).hexdigest()}"'),  # the pointer's etag
            ("X-Linked-Etag", f'"{sha}"'),
            ("X-Linked-Size", str(len(self.fake.files[name]))),
        ])


class CdnHandler(_Handler):
    def do_HEAD(self):
        self.blob()

    do_GET = do_HEAD

    def blob(self):
        sha = self.path.split("?")[0].rsplit("/", 1)[-1]
        name = self.fake.by_sha.get(sha)
        rng = self.headers.get("Range")
        if name is None:
            self.fake.record(server="cdn", method=self.command, name=None, range=rng, sent=0)
            return self.reply(404)
        data = self.fake.files[name]
        start = 0
        if rng:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
        if start >= len(data):
            return self.reply(416, [("Content-Range", f"bytes */{len(data)}")])
        body = data[start:]
        self.send_response(206 if rng else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{sha}"')
        self.send_header("Content-Length", str(len(body)))
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if self.command == "HEAD":
            return self.fake.record(server="cdn", method="HEAD", name=name, range=rng, sent=0)
        with self.fake.lock:
            cut = self.fake.drop_once.pop(name, None)
            stall = self.fake.stall_once.pop(name, None)
        limit = cut if cut is not None else stall
        self.wfile.write(body if limit is None else body[:limit])
        self.wfile.flush()
        sent = len(body) if limit is None else min(limit, len(body))
        self.fake.record(server="cdn", method="GET", name=name, range=rng, sent=sent)
        if stall is not None:
            self.fake.stalled.set()
            self.fake.release.wait(30)
        if limit is not None:  # the connection dies with the body unfinished
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def hub(shards):
    fake = FakeHub(shards)
    yield fake
    fake.close()


def script_env(endpoint, hf_home):
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("HF_", "HTTP_PROXY", "HTTPS_PROXY",
                                                                              "ALL_PROXY"))}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(hf_home), HF_HUB_OFFLINE="0", HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_DISABLE_PROGRESS_BARS="1", NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    return env


def run(args, endpoint, tmp_path, timeout=60):
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=script_env(endpoint, tmp_path / "hf_home"),
                          capture_output=True, text=True, timeout=timeout)


def assert_shards(d: Path, hub: FakeHub, names):
    for name in names:
        assert (d / name).read_bytes() == hub.files[name], name
    assert not list((d / ".partial").glob("*")), "partial files left behind"


def first_n(n):
    return ["fineweb_val_000000.bin"] + [f"fineweb_train_{i:06d}.bin" for i in range(1, n + 1)]


def test_downloads_val_and_n_shards_then_nothing(hub, tmp_path):
    d = tmp_path / "fw"
    r = run(["3", "--dir", str(d)], hub.endpoint, tmp_path)
    assert r.returncode == 0, r.stderr
    assert_shards(d, hub, first_n(3))
    assert sorted(p.name for p in d.glob("*.bin")) == sorted(first_n(3))
    assert hub.names("hub", "HEAD") == sorted(first_n(3))
    assert hub.names("cdn", "GET") == sorted(first_n(3))

    before = len(hub.log)
    r = run(["3", "--dir", str(d)], hub.endpoint, tmp_path)
    assert r.returncode == 0, r.stderr
    assert len(hub.log) == before, "a complete set must not touch the network"
    assert "4 of 4 files already complete, 0 to download" in r.stdout

    r = run(["4", "--dir", str(d)], hub.endpoint, tmp_path)
    assert r.returncode == 0, r.stderr
    assert [e["name"] for e in hub.log[before:]] == ["fineweb_train_000004.bin"] * 2
    assert_shards(d, hub, first_n(4))


def test_truncated_or_corrupt_file_is_fetched_again(hub, tmp_path):
    d = tmp_path / "fw"
    assert run(["3", "--dir", str(d)], hub.endpoint, tmp_path).returncode == 0
    short = d / "fineweb_train_000001.bin"
    short.write_bytes(hub.files[short.name][:-2])  # one token short: the header alone catches it
    bad = d / "fineweb_val_000000.bin"
    bad.write_bytes(b"\0" * 4 + hub.files[bad.name][4:])  # right size, wrong magic
    before = len(hub.log)
    r = run(["3", "--dir", str(d)], hub.endpoint, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "fineweb_train_000001.bin: truncated" in r.stdout and "fineweb_val_000000.bin: bad magic" in r.stdout
    assert sorted({e["name"] for e in hub.log[before:]}) == sorted([short.name, bad.name])
    assert_shards(d, hub, first_n(3))


def test_connection_cut_mid_file_is_resumed_with_a_range_request(hub, tmp_path):
    d = tmp_path / "fw"
    hub.drop_once[BIG] = CHUNK + 200_000
    r = run(["2", "--dir", str(d)], hub.endpoint, tmp_path)
    assert r.returncode == 0, r.stderr
    assert_shards(d, hub, first_n(2))
    gets = [e for e in hub.log if e["server"] == "cdn" and e["name"] == BIG]
    assert [(g["range"], g["sent"]) for g in gets] == [(None, CHUNK + 200_000),
                                                      (f"bytes={CHUNK}-", len(hub.files[BIG]) - CHUNK)]


def test_interrupted_download_resumes_on_the_next_run(hub, tmp_path):
    d = tmp_path / "fw"
    hub.stall_once[BIG] = CHUNK + 300_000
    env = script_env(hub.endpoint, tmp_path / "hf_home")
    # the stall lasts until Ctrl-C: the client's own read timeout (10 s by default) must not end it first
    # on a busy machine, or the client resumes by itself and the download completes
    env["HF_HUB_DOWNLOAD_TIMEOUT"] = "600"
    # a shell's background job inherits SIGINT ignored, and so would the script: give it the default
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "3", "--dir", str(d)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert hub.stalled.wait(30), "the download never reached the stalled shard"
        deadline = time.monotonic() + 20
        while not any(p.stat().st_size >= CHUNK for p in (d / ".partial").glob(f"{BIG}.*.part")):
            assert time.monotonic() < deadline, "no data reached the partial file"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        hub.release.set()
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("interrupted: rerun the same command to resume")
    assert not (d / BIG).exists(), "a partial shard must never sit under its final name"
    assert not (d / "fineweb_train_000003.bin").exists()
    (part,) = (d / ".partial").glob(f"{BIG}.*.part")
    assert part.read_bytes() == hub.files[BIG][:CHUNK]

    before = len(hub.log)
    r = run(["3", "--dir", str(d)], hub.endpoint, tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"resuming {BIG} at {CHUNK:,}" in r.stdout
    gets = [e for e in hub.log[before:] if e["server"] == "cdn" and e["name"] == BIG]
    assert [(g["range"], g["sent"]) for g in gets] == [(f"bytes={CHUNK}-", len(hub.files[BIG]) - CHUNK)]
    assert_shards(d, hub, first_n(3))


def test_corrupt_partial_file_is_detected_by_checksum_and_redone(hub, tmp_path):
    d = tmp_path / "fw"
    name = "fineweb_train_000001.bin"
    (d / ".partial").mkdir(parents=True)
    part = d / ".partial" / f"{name}.{hub.sha[name][:16]}.part"
    part.write_bytes(b"\x07" * 1500)  # what a torn write could leave: right length class, wrong bytes
    r = run(["1", "--dir", str(d)], hub.endpoint, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "checksum mismatch after resuming" in r.stdout
    gets = [e["range"] for e in hub.log if e["server"] == "cdn" and e["name"] == name]
    assert gets == ["bytes=1500-", None]
    assert_shards(d, hub, first_n(1))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_endpoint_gives_one_line_and_fails(tmp_path):
    endpoint = f"http://127.0.0.1:{free_port()}"
    d = tmp_path / "fw"
    r = run(["2", "--dir", str(d)], endpoint, tmp_path)
    assert r.returncode == 1
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot reach {endpoint}") and "rerun" in line
    assert not list(d.rglob("*.bin"))

    env = script_env(endpoint, tmp_path / "hf_home") | {"HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, str(SCRIPT), "1", "--dir", str(d)], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1
    (line,) = r.stderr.strip().splitlines()
    assert "HF_HUB_OFFLINE is set" in line


def test_wrong_repo_and_missing_file_give_one_line(hub, tmp_path):
    d = tmp_path / "fw"
    r = run(["1", "--dir", str(d), "--repo", "someone/else"], hub.endpoint, tmp_path)
    assert r.returncode == 1
    (line,) = r.stderr.strip().splitlines()
    assert "dataset repo someone/else not found" in line
    r = run(["6", "--dir", str(d)], hub.endpoint, tmp_path)  # the stand-in repo only has 5 train shards
    assert r.returncode == 1
    (line,) = r.stderr.strip().splitlines()
    assert "fineweb_train_000006.bin is not in" in line
    assert_shards(d, hub, first_n(5))  # everything before the missing file was kept


@pytest.mark.parametrize("args, says", [
    (["104"], "ask for at most 103"),
    (["-1"], "N must be >= 0"),
    (["three"], "N must be a whole number"),
    ([], "give either N"),
    (["3", "--for-steps", "10"], "give either N"),
    (["--for-steps", "19571"], "104 train shards requested"),  # 103 shards x 190 steps = 19,570
    (["--for-steps", "10", "--batch-tokens", "0"], "--batch-tokens must be >= 1"),
])
def test_bad_arguments_one_line_no_network(args, says, tmp_path, capsys):
    mod = load_module()
    with pytest.raises(SystemExit) as exc:
        mod.main([*args, "--dir", str(tmp_path / "fw")])
    assert exc.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert says in line
    assert not (tmp_path / "fw").exists()


def test_shard_counts_by_hand():
    mod = load_module()
    # A shard of 100,000,000 tokens holds floor(99,999,999 / batch) whole batches (the loader needs batch+1).
    assert mod.shards_needed(5100, 524_288) == 27  # 190 batches per shard; 5100 / 190 = 26.8
    assert mod.shards_needed(1000, 131_072) == 2  # 762 per shard
    assert mod.shards_needed(3000, 524_288) == 16  # 3000 / 190 = 15.8
    assert mod.shards_needed(190, 524_288) == 1 and mod.shards_needed(191, 524_288) == 2
    # 300M tokens in batches of 1M: 99 whole batches per shard, so 4 shards, not 3.
    assert mod.shards_needed(300, 1_000_000) == 4
    assert mod.shards_needed(0) == 0


def test_for_steps_prints_and_plans_the_count(tmp_path, capsys):
    mod = load_module()
    assert mod.main(["--for-steps", "5100", "--dry-run", "--dir", str(tmp_path / "fw")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("27 train shards (5,100 steps x 524,288 tokens = 2,673,868,800 tokens)")
    planned = re.findall(r"would fetch (\S+)", out)
    assert planned == first_n(27)
    assert mod.main(["--stages"]) == 0
    table = capsys.readouterr().out
    assert re.search(r"stage_a\s+1,000\s+131,072\s+131,072,000\s+2$", table, re.M)
    assert re.search(r"stage_c\s+5,100\s+524,288\s+2,673,868,800\s+27$", table, re.M)
