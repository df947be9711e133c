"""Shared fixtures: an isolated STRONGROOM_HOME, a fast engine, a realistic tree, a
real `strongroom serve` on a loopback port, and real PostgreSQL servers."""

from __future__ import annotations

import base64
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest

from strongroom import Engine, JobHandle, KdfParams, archive
from strongroom.backends import mounts
from strongroom.backends.file import LocalStore
from strongroom.web.auth import hash_token

PASSCODE = "correct horse battery"
#: Argon2id at its cheapest, so tests spend their time on the code under test.
FAST_KDF = KdfParams(memory_cost_kib=8 * 1024, iterations=1, lanes=1)
#: Small chunks, so ordinary test data spans many chunks.
SMALL_CHUNK = 64 * 1024


def write_key_secrets(config: Path, schedule: str) -> list[str]:
    """The secret of a schedule's write key as its configuration file stores it (base64),
    and in the other encodings a leak could take (unpadded, URL-safe, hex, the inside of
    a bytes repr): none of them may appear in a repr, a log or a response."""
    stored = tomllib.loads(config.read_text())["schedules"][schedule]["write_key"]["writerKey"]
    raw = base64.b64decode(stored)
    urlsafe = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    return [stored, stored.rstrip("="), urlsafe, raw.hex(), repr(raw)[2:-1]]


def damage_write_key(config: Path, name: str) -> None:
    """Change one character of the schedule's writer key in the configuration file, as a
    slip of an editor would."""
    head, marker, rest = config.read_text().partition(f"[schedules.{name}.write_key]")
    line = next(line for line in rest.splitlines() if line.startswith("writerKey"))
    value = line.split('"')[1]
    damaged = line.replace(value, ("B" if value[0] == "A" else "A") + value[1:])
    config.write_text(head + marker + rest.replace(line, damaged, 1))


def change_after_open(
    monkeypatch: pytest.MonkeyPatch, name: bytes, change: Callable[[], None]
) -> None:
    """Run `change` right after the archive writer opens the file `name` to read it."""
    opened = archive.open_regular

    def open_then_change(entry: Any) -> Any:
        found = opened(entry)
        if entry.name == name:
            change()
        return found

    monkeypatch.setattr(archive, "open_regular", open_then_change)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh STRONGROOM_HOME with no configuration, no passcode and no plugins."""
    home = tmp_path / "home"
    monkeypatch.setenv("STRONGROOM_HOME", str(home))
    monkeypatch.setenv("STRONGROOM_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.delenv("STRONGROOM_CONFIG", raising=False)
    monkeypatch.delenv("STRONGROOM_PASSCODE", raising=False)
    monkeypatch.delenv("STRONGROOM_JOBS_DB", raising=False)  # jobs in the home's SQLite file
    monkeypatch.delenv("STRONGROOM_JOB_LEASE", raising=False)
    return home


@pytest.fixture
def engine(home: Path) -> Engine:
    return Engine(kdf=FAST_KDF, chunk_size=SMALL_CHUNK)


def local_store(name: str, directory: Path) -> LocalStore:
    """A file store in `directory`, which is made as adding the store makes it."""
    store = LocalStore(name, directory.as_uri(), directory)
    store.initialize()
    return store


def file_system_type(path: Path) -> str:
    return subprocess.run(
        ["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture
def ext4_dir(tmp_path: Path) -> Path:
    """tmp_path, for tests of what only ext4 does (skipped on other file systems)."""
    if file_system_type(tmp_path) != "ext2/ext3":  # GNU stat's name for ext2, ext3 and ext4
        pytest.skip("the test directory is not on ext4")
    return tmp_path


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


# -- PostgreSQL ---------------------------------------------------------------------------


@dataclass
class PostgresServer:
    """A PostgreSQL server of the tests' own: initdb in a temporary directory, trust
    authentication, listening on a free loopback port (and a unix socket in its directory).
    Run as the `postgres` user (else `nobody`) when the tests run as root, as initdb and
    postgres refuse root."""

    bindir: Path
    datadir: Path
    port: int
    user: str | None
    process: subprocess.Popen[bytes] | None = None

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        log = (self.datadir.parent / "server.log").open("ab")
        self.process = subprocess.Popen(
            [
                str(self.bindir / "postgres"),
                *("-D", str(self.datadir), "-p", str(self.port), "-k", str(self.datadir.parent)),
                *("-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"),
                *("-c", "synchronous_commit=off", "-c", "full_page_writes=off"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            user=self.user,
        )
        log.close()
        deadline = time.monotonic() + 30
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                log_text = (self.datadir.parent / "server.log").read_text(errors="replace")
                raise AssertionError(f"PostgreSQL did not start: {log_text}")
            time.sleep(0.05)

    def stop(self) -> None:
        """A fast shutdown: clients are disconnected, as when a database server goes away."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            self.process.wait(timeout=30)
        self.process = None

    def new_database(self) -> str:
        """A fresh, empty database on this server; its URL."""
        import psycopg

        name = f"t{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
        return self.url(name)

    def _answers(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.url(), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False


def _postgres_unavailable(reason: str) -> None:
    """Skip the test, with the reason; under CI a missing PostgreSQL fails it instead."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so PostgreSQL must be there: 'make test' installs it)")
    pytest.skip(reason)


def _start_postgres() -> PostgresServer:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _postgres_unavailable("psycopg is not installed: pip install 'strongroom[postgres]'")
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: p.parts)
    initdb = Path(found[-1]) if found else Path(shutil.which("initdb") or "/nonexistent")
    if not initdb.exists():
        _postgres_unavailable("PostgreSQL's server binaries (initdb) are not installed")
    user = None
    if os.geteuid() == 0:
        user = "postgres" if _user_exists("postgres") else "nobody"
    top = Path(tempfile.mkdtemp(prefix="strongroom-pg-"))
    datadir = top / "data"
    datadir.mkdir()
    if user is not None:
        shutil.chown(top, user)
        shutil.chown(datadir, user)
    subprocess.run(
        [str(initdb), "-D", str(datadir), "-U", "postgres", "--auth=trust", "--no-sync"],
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        user=user,
    )
    server = PostgresServer(initdb.parent, datadir, _free_port(), user)
    server.start()
    return server


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@contextmanager
def _postgres() -> Iterator[PostgresServer]:
    server = _start_postgres()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.datadir.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session; tests take a database each (`postgres_url`)."""
    with _postgres() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of a fresh database on the session's PostgreSQL server."""
    return postgres_server.new_database()


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of the test's own, which it may stop and start again."""
    with _postgres() as server:
        yield server


@pytest.fixture(autouse=True)
def no_host_fstab(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tests in this process do not depend on what the host's /etc/fstab and systemd mount
    units list (an unmounted disk would refuse every store under it; the `serve`
    subprocesses still read them); one that needs a table writes its own (`mount_tables`)."""
    monkeypatch.setattr(mounts, "FSTAB", tmp_path / "no-fstab")
    monkeypatch.setattr(mounts, "MOUNT_UNITS", tmp_path / "no-mount-units")


class MountTables:
    """Stand-ins for /etc/fstab, /etc/systemd/system and /proc/self/mountinfo: this
    process's real mounts, plus the lines and units a test adds."""

    def __init__(self, directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.fstab = directory / "fstab"
        self.units = directory / "systemd"
        self.mountinfo = directory / "mountinfo"
        self.fstab.write_text("# /etc/fstab: static file system information.\n")
        self.units.mkdir()
        self.mountinfo.write_text(Path("/proc/self/mountinfo").read_text())
        monkeypatch.setattr(mounts, "FSTAB", self.fstab)
        monkeypatch.setattr(mounts, "MOUNT_UNITS", self.units)
        monkeypatch.setattr(mounts, "MOUNTINFO", self.mountinfo)

    def expect(self, mount_point: Path) -> None:
        """/etc/fstab mounts a disk at `mount_point`."""
        with self.fstab.open("a") as file:
            file.write(
                "UUID=0a3407de / ext4 defaults 0 1\n"
                f"LABEL=nas {_escaped(mount_point)} nfs noauto 0 0\n"
            )

    def expect_unit(self, mount_point: Path, unit: str = "mnt-nas.mount") -> Path:
        """A systemd mount unit an administrator wrote mounts a disk at `mount_point`."""
        path = self.units / unit
        path.write_text(
            "[Unit]\nDescription=The NAS\n\n"
            f"[Mount]\nWhat=nas:/backups\nWhere={mount_point}\nType=nfs\n\n"
            "[Install]\nWantedBy=multi-user.target\n"
        )
        return path

    def mount(self, mount_point: Path, kind: str = "nfs nas:/backups") -> None:
        """A disk is mounted at `mount_point` now (`kind`: its type and source)."""
        with self.mountinfo.open("a") as file:
            file.write(f"99 27 0:99 / {_escaped(mount_point)} rw,relatime - {kind} rw\n")

    def unmount(self, mount_point: Path) -> None:
        lines = self.mountinfo.read_text().splitlines(keepends=True)
        point = f" {_escaped(mount_point)} "
        self.mountinfo.write_text("".join(line for line in lines if point not in line))


def _escaped(path: Path) -> str:
    """A path as both tables write it: a space is \\040."""
    return str(path).replace(" ", "\\040")


@pytest.fixture
def mount_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MountTables:
    """/etc/fstab and /proc/self/mountinfo as a test writes them (MountTables)."""
    (tmp_path / "tables").mkdir()
    return MountTables(tmp_path / "tables", monkeypatch)
