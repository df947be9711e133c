"""Shared fixtures: an isolated STRONGROOM_HOME, a fast engine, a realistic tree, and a
real `strongroom serve` on a loopback port."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest

from strongroom import Engine, JobHandle, KdfParams
from strongroom.web.auth import hash_token

PASSCODE = "correct horse battery"
#: Argon2id at its cheapest, so tests spend their time on the code under test.
FAST_KDF = KdfParams(memory_cost_kib=8 * 1024, iterations=1, lanes=1)
#: Small chunks, so ordinary test data spans many chunks.
SMALL_CHUNK = 64 * 1024


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh STRONGROOM_HOME with no configuration, no passcode and no plugins."""
    home = tmp_path / "home"
    monkeypatch.setenv("STRONGROOM_HOME", str(home))
    monkeypatch.setenv("STRONGROOM_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.delenv("STRONGROOM_CONFIG", raising=False)
    monkeypatch.delenv("STRONGROOM_PASSCODE", raising=False)
    return home


@pytest.fixture
def engine(home: Path) -> Engine:
    return Engine(kdf=FAST_KDF, chunk_size=SMALL_CHUNK)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A directory tree with the awkward cases a real server has."""
    root = tmp_path / "source" / "data"
    (root / "empty-dir").mkdir(parents=True)
    (root / "nested" / "deeper").mkdir(parents=True)
    (root / "empty-file").write_bytes(b"")
    (root / "ünïcødé – 文件.txt").write_text("héllo wörld\n", encoding="utf-8")
    (root / "nested" / "deeper" / "notes.md").write_text("# notes\n" * 100)
    (root / "big.bin").write_bytes(os.urandom(5 * SMALL_CHUNK + 1234))
    (root / "compressible.txt").write_bytes(b"the same line again\n" * 20_000)
    script = root / "nested" / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o750)
    secret = root / "secret.key"
    secret.write_bytes(b"k" * 32)
    secret.chmod(0o600)
    (root / "link-to-notes").symlink_to("nested/deeper/notes.md")
    (root / "dangling-inside").symlink_to("nested/missing")
    os.link(root / "secret.key", root / "nested" / "secret-hardlink")
    (root / "nested").chmod(0o700)
    os.utime(root / "big.bin", (1_600_000_000, 1_600_000_000))
    os.utime(root / "link-to-notes", (1_500_000_000, 1_500_000_000), follow_symlinks=False)
    return root


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything a restore must reproduce: kind, bytes, permission bits, mtimes (of links
    too), link targets."""
    entries: dict[str, tuple[object, ...]] = {}
    for path in sorted([root, *root.rglob("*")]):
        info = path.lstat()
        relative = str(path.relative_to(root))
        mode = stat.S_IMODE(info.st_mode)
        if stat.S_ISLNK(info.st_mode):
            entries[relative] = ("link", os.readlink(path), int(info.st_mtime))
        elif stat.S_ISDIR(info.st_mode):
            entries[relative] = ("dir", mode, int(info.st_mtime))
        else:
            entries[relative] = ("file", mode, int(info.st_mtime), path.read_bytes())
    return entries


def until_cancelled(job: JobHandle) -> None:
    """A job's work that reports progress until it is cancelled, or gives up after 10 s
    (so a broken cancel fails a test instead of hanging it)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        job.progress(1, 2)
        time.sleep(0.001)


#: The admin API token of the servers the tests start.
API_TOKEN = "test-token-7b1f0c5e9d"
STRONGROOM = Path(sys.executable).with_name("strongroom")


@dataclass
class Server:
    """A `strongroom serve` subprocess and how to reach it."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path
    #: The server's own TMPDIR, so a test can see what it spools.
    tmpdir: Path

    def get(self, path: str, **params: str) -> httpx.Response:
        """GET a path under the server (or an absolute URL) as JSON, with the token."""
        url = path if path.startswith("http") else self.url + path
        return httpx.get(url, params={"f": "json", "token": API_TOKEN, **params}, timeout=30)

    def post(self, path: str, **form: str) -> httpx.Response:
        data = {"f": "json", "token": API_TOKEN, **form}
        return httpx.post(self.url + path, data=data, timeout=30)

    def wait_for_job(self, jobs_url: str) -> dict[str, Any]:
        """Follow a jobsUrl until the job ends."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            job: dict[str, Any] = self.get(jobs_url).json()
            if job["status"] not in ("SUBMITTED", "EXECUTING", "CANCELLING"):
                return job
            time.sleep(0.05)
        raise AssertionError(f"job {jobs_url} did not end: {job}")


class ServerFactory(Protocol):
    def __call__(
        self, sources: Sequence[Path], *options: str, env: dict[str, str] | None = None
    ) -> Server:
        """Start a server backing up `sources`, with more `serve` options and environment."""


@pytest.fixture
def serve(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServerFactory]:
    """Start `strongroom serve --source ...` processes on free loopback ports; stop them after."""
    monkeypatch.setenv("STRONGROOM_API_TOKEN_HASHES", hash_token(API_TOKEN))
    servers: list[Server] = []

    def start(sources: Sequence[Path], *options: str, env: dict[str, str] | None = None) -> Server:
        port = _free_port()
        log = tmp_path / f"server-{len(servers)}.log"
        tmpdir = tmp_path / f"server-{len(servers)}-tmp"
        tmpdir.mkdir()
        arguments = [str(STRONGROOM), "serve", "--port", str(port), *options]
        for source in sources:
            arguments += ["--source", str(source)]
        environment = {**os.environ, **(env or {}), "TMPDIR": str(tmpdir)}
        with log.open("wb") as output:
            process = subprocess.Popen(
                arguments,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=environment,
            )
        server = Server(process, f"http://127.0.0.1:{port}", log, tmpdir)
        servers.append(server)
        _wait_until_listening(server)
        return server

    yield start
    for server in servers:
        if server.process.poll() is None:
            server.process.terminate()
            try:
                server.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_until_listening(server: Server) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"strongroom serve exited: {server.log.read_text()}")
        try:
            if server.get("/admin/system/disasterrecovery").status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.05)
    raise AssertionError(f"strongroom serve did not answer: {server.log.read_text()}")
