"""A real `strongroom serve` on loopback: the seed's create request as written, a restore
through the API, a kill and a restart while a job executes, and a graceful stop."""

from __future__ import annotations

import itertools
import json
import os
import re
import select
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from strongroom import Engine, StoresConfig, StoreSpec
from strongroom.format import to_epoch_ms
from strongroom.schedules import define, update
from tests.conftest import API_TOKEN, FAST_KDF, Server, ServerFactory, snapshot

#: The seed's passcode, as the seed sends it.
SEED_PASSCODE = "passcode"
DAY_MS = 24 * 60 * 60 * 1000
BACKUPS = "/admin/system/disasterrecovery/stores/backupsDefault/backups"
CREATE = f"{BACKUPS}/create"


def test_seed_request_creates_a_backup_that_restores(serve: ServerFactory, tree: Path) -> None:
    server = serve([tree])
    refused = httpx.post(server.url + CREATE, data={"name": "x", "passcode": "p" * 8, "f": "json"})
    assert refused.status_code == 401
    assert refused.json()["code"] == 401
    retention = int(time.time() * 1000) + 14 * DAY_MS
    # seed-create-backup.txt, field by field; only the retentionDate is in the future
    body = (
        f"name=backup_first&passcode={SEED_PASSCODE}&description=&retentionDate={retention}"
        f"&f=pjson&token={API_TOKEN}"
    )
    response = httpx.post(
        server.url + CREATE,
        content=body.encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200, response.text
    assert response.text.startswith('{\n  "')  # pjson is indented
    created = response.json()
    assert set(created) == {"jobsUrl", "jobid", "status"}
    assert created["status"] == "SUBMITTED"
    assert created["jobsUrl"] == f"{server.url}/admin/jobs/{created['jobid']}"

    job = server.wait_for_job(created["jobsUrl"])
    assert job["status"] == "COMPLETED", job
    assert job["result"]["name"] == "backup_first"
    assert job["result"]["retentionDate"] == retention
    listed = server.get(BACKUPS).json()
    assert [backup["name"] for backup in listed["backups"]] == ["backup_first"]
    assert listed["backups"][0]["description"] == ""

    restore = server.post(f"{BACKUPS}/backup_first/restore", passcode=SEED_PASSCODE)
    assert restore.status_code == 200, restore.text
    restored = server.wait_for_job(restore.json()["jobsUrl"])
    assert restored["status"] == "COMPLETED", restored
    assert snapshot(Path(restored["result"]["restoreDir"]) / tree.name) == snapshot(tree)

    log = server.log.read_text()
    assert "POST /admin/system/disasterrecovery/stores/backupsDefault/backups/create" in log
    assert API_TOKEN not in log
    assert f"passcode={SEED_PASSCODE}" not in log


def test_a_job_killed_with_its_server_reads_failed_after_a_restart(
    serve: ServerFactory, home: Path, tmp_path: Path
) -> None:
    source = tmp_path / "big"
    source.mkdir()
    block = os.urandom(8 * 1024 * 1024)  # no repeats within a chunk: nothing compresses away
    with (source / "data.bin").open("wb") as handle:
        for _ in range(16):
            handle.write(block)
    server = serve([source])
    created = server.post(CREATE, name="interrupted", passcode=SEED_PASSCODE).json()
    _freeze_while_writing(server.process.pid, created["jobid"], home, "interrupted")
    server.process.kill()
    server.process.wait()

    restarted = serve([source])
    job = restarted.get(created["jobsUrl"].replace(server.url, ""))
    assert job.status_code == 200
    assert job.json()["status"] == "FAILED"
    assert any("(last recorded: EXECUTING)" in m for m in job.json()["messages"])
    listed = restarted.get(BACKUPS)
    assert listed.json() == {"backups": [], "unreadable": []}
    assert _data_objects(home, "interrupted"), "the killed create should have left data behind"


def test_a_graceful_stop_cancels_a_running_job(
    serve: ServerFactory, home: Path, tmp_path: Path
) -> None:
    """A create that would run for minutes (a 1 TiB sparse file: no disk, all zeros) is
    cancelled by SIGTERM, and leaves no backup and no data."""
    source = tmp_path / "huge"
    source.mkdir()
    with (source / "sparse.img").open("wb") as sparse:
        sparse.truncate(1 << 40)
    server = serve([source])
    created = server.post(CREATE, name="cut-short", passcode=SEED_PASSCODE).json()
    database = home / "jobs.sqlite3"
    _wait_for_status(database, created["jobid"], "EXECUTING")
    server.process.terminate()
    server.process.wait(timeout=30)
    assert server.process.returncode in (0, -signal.SIGTERM), "a clean stop, as systemd sees it"
    assert "interrupted" not in server.log.read_text()
    assert _job_status(database, created["jobid"]) == "CANCELLED"
    store = home / "stores" / "backupsDefault"
    assert not (store / "manifests" / "cut-short").exists()
    assert _data_objects(home, "cut-short") == []


def _wait_for_status(database: Path, jobid: str, status: str) -> None:
    deadline = time.monotonic() + 30
    while _job_status(database, jobid) != status:
        assert time.monotonic() < deadline, f"job {jobid} never became {status}"
        time.sleep(0.01)


def _freeze_while_writing(pid: int, jobid: str, home: Path, name: str) -> None:
    """Stop the server (SIGSTOP) at a moment its job is executing and has written data.

    Looking while the process is stopped means the job cannot finish between the look
    and what the test does next, whatever the machine's speed.
    """
    for _ in range(10_000):
        os.kill(pid, signal.SIGSTOP)
        status = _job_status(home / "jobs.sqlite3", jobid)
        if status == "EXECUTING" and _data_objects(home, name):
            return
        assert status in ("SUBMITTED", "EXECUTING"), f"the job ended too soon: {status}"
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.002)
    raise AssertionError("the job never started writing")


def _job_status(database: Path, jobid: str) -> str | None:
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        row = db.execute("SELECT status FROM jobs WHERE jobid = ?", (jobid,)).fetchone()
    return None if row is None else str(row[0])


def _data_objects(home: Path, name: str) -> list[Path]:
    data = home / "stores" / "backupsDefault" / "data" / name
    return [p for p in data.rglob("*") if p.is_file()] if data.exists() else []


# -- what a token holder can reach ------------------------------------------------------

REGISTER = "/admin/system/disasterrecovery/stores/register"
STORES = "/admin/system/disasterrecovery/stores"


class _Listener:
    """A loopback TCP port that records every connection made to it."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.socket.settimeout(0.2)
        self.port: int = self.socket.getsockname()[1]
        self.received: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self.socket.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(1)
                try:
                    self.received.append(connection.recv(65536))
                except OSError:
                    self.received.append(b"(connected)")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.socket.close()


def test_a_token_holder_reaches_only_the_locations_the_operator_allowed(
    serve: ServerFactory, tree: Path, tmp_path: Path
) -> None:
    allowed, chosen = tmp_path / "allowed", tmp_path / "chosen"
    allowed.mkdir()
    (allowed / "link").symlink_to(chosen, target_is_directory=True)
    listener = _Listener()
    server = serve(
        [tree],
        *("--allow-store", "s3://corp-backups/", "--allow-store", allowed.as_uri()),
        env={"SECRET_DB_PASSWORD": "db-Secret-9931", "STRONGROOM_DISABLE_PLUGIN_AUTOLOAD": ""},
    )
    here = f"http://127.0.0.1:{listener.port}"
    secret = {"env": "SECRET_DB_PASSWORD"}
    attacks = {
        "s3leak": {
            "url": "s3://corp-backups/x",
            "options": {"endpoint_url": here, "key": secret, "secret": secret},
        },
        "s3redirect": {"url": "s3://corp-backups/x", "options": {"endpoint_url": here}},
        "s3secret": {"url": "s3://corp-backups/x", "options": {"key": secret, "secret": secret}},
        "azredirect": {"url": "az://container/x", "options": {"account_url": here}},
        "httpget": {"url": f"{here}/internal/admin?x="},
        "httppath": {"url": f"{here}/internal/admin"},
        "anywhere": {"url": chosen.as_uri()},
        "throughlink": {"url": (allowed / "link" / "store").as_uri()},
        "dotdot": {"url": allowed.as_uri() + "/../chosen"},
    }
    try:
        for name, settings in attacks.items():
            for extra in ({}, {"async": "true"}):
                refused = server.post(
                    REGISTER, storeName=name, settings=json.dumps(settings), **extra
                )
                assert refused.status_code == 403, (name, refused.text)
                assert "db-Secret-9931" not in refused.text
            assert server.get(f"{STORES}/{name}/backups").status_code == 404
            assert server.post(f"{STORES}/{name}/validate").status_code == 404
            created = server.post(f"{STORES}/{name}/backups/create", name="b", passcode="p" * 8)
            assert created.status_code == 404
        time.sleep(0.5)
    finally:
        listener.close()
    assert listener.received == []
    assert not chosen.exists()

    team = (allowed / "team").as_uri()
    settings = json.dumps({"url": team})
    assert server.post(REGISTER, storeName="team", settings=settings).status_code == 200
    created = server.post(f"{STORES}/team/backups/create", name="first", passcode="p" * 8)
    assert server.wait_for_job(created.json()["jobsUrl"])["status"] == "COMPLETED"
    listed = server.get(f"{STORES}/team/backups").json()["backups"]
    assert [backup["name"] for backup in listed] == ["first"]
    assert (allowed / "team" / "manifests" / "first").is_file()


# -- what a request without a token costs -----------------------------------------------

MIB = 1024 * 1024


def _kib(pid: int, field: str) -> int:
    """A VmRSS/VmHWM line of /proc/PID/status, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def _spooled(pid: int, directory: Path) -> int:
    """Bytes in `directory`, and in files the process holds open there (a temporary file
    made with O_TMPFILE has no name to find it by)."""
    named = sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())
    held = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd).startswith(str(directory)):
                held += fd.stat().st_size
        except OSError:
            pass  # closed meanwhile
    return named + held


def _upload(url: str, path: str, content_type: str, pieces: Iterable[bytes]) -> int | None:
    """Send a chunked body piece by piece until the server answers; its status (None if it
    never answers)."""
    parts = httpx.URL(url)
    with socket.create_connection((parts.host, parts.port or 80), timeout=60) as connection:
        connection.sendall(
            f"POST {path}?f=json HTTP/1.1\r\nHost: {parts.host}\r\n"
            f"Content-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        for piece in pieces:
            if select.select([connection], [], [], 0)[0]:
                break  # the server has answered
            try:
                connection.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            except OSError:
                break
        try:
            answer = connection.recv(1024)
        except TimeoutError:
            return None
    return int(answer.split(b" ", 2)[1])


def _urlencoded() -> Iterator[bytes]:
    yield b"f=json&big="
    yield from itertools.repeat(b"x" * (256 * 1024), 1600)


def _file_part() -> Iterator[bytes]:
    yield b'--B\r\nContent-Disposition: form-data; name="f"; filename="a.bin"\r\n\r\n'
    yield from itertools.repeat(b"x" * (256 * 1024), 1600)


def _many_fields() -> Iterator[bytes]:
    """400 fields of just under 1 MiB each."""
    for number in range(400):
        yield b'--B\r\nContent-Disposition: form-data; name="f%d"\r\n\r\n' % number
        yield b"x" * (MIB - 1024) + b"\r\n"


@pytest.mark.parametrize(
    ("content_type", "pieces"),
    [
        ("application/x-www-form-urlencoded", _urlencoded),
        ("multipart/form-data; boundary=B", _file_part),
        ("multipart/form-data; boundary=B", _many_fields),
    ],
)
def test_a_huge_body_without_a_token_costs_the_server_nothing(
    serve: ServerFactory, tree: Path, content_type: str, pieces: Callable[[], Iterator[bytes]]
) -> None:
    server = serve([tree])
    pid = server.process.pid
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM restarts from the RSS now
    idle = _kib(pid, "VmRSS")
    spooled: list[int] = []
    done = threading.Event()

    def watch_tmpdir() -> None:
        while not done.is_set():
            spooled.append(_spooled(pid, server.tmpdir))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch_tmpdir)
    watcher.start()
    try:
        status = _upload(server.url, CREATE, content_type, pieces())
    finally:
        done.set()
        watcher.join()
    assert (_kib(pid, "VmHWM") - idle) * 1024 < 10 * MIB
    assert max(spooled) < 10 * MIB
    assert status in (401, 413)
    assert server.process.poll() is None


def test_serve_says_where_the_admin_api_is_and_the_entrances_lead_there(
    serve: ServerFactory, tree: Path
) -> None:
    server = serve([tree])
    home = "/admin/system/disasterrecovery"
    assert f"serving the admin API at {server.url}{home}" in server.log.read_text()
    for entrance in ("/", "/admin", "/admin/"):
        response = httpx.get(server.url + entrance, follow_redirects=False, timeout=30)
        assert response.is_redirect and response.headers["location"] == home, entrance
        assert response.headers["x-frame-options"] == "DENY", entrance
        assert response.headers.get_list("cache-control") == ["no-store"], entrance
    page = httpx.get(server.url + home, timeout=30)  # the admin app's: once, not twice
    assert page.headers.get_list("x-frame-options") == ["DENY"]


# -- schedules --------------------------------------------------------------------------

#: The passcode a schedule is defined with; nothing under STRONGROOM_HOME may hold it.
SCHEDULE_PASSCODE = "Scheduled-passc0de-kept-nowhere"
SLOT_NAME = re.compile(r"(?P<schedule>.+)-(?P<slot>\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2})")


def _define_schedule(
    name: str, every: str, sources: Iterable[Path] = (), store: str | None = None
) -> None:
    """Define a schedule in the configuration file, as `schedules add` does."""
    with Engine(kdf=FAST_KDF) as engine:
        define(
            engine,
            name,
            passcode=SCHEDULE_PASSCODE,
            every=every,
            store=store,
            keep_days=3,
            sources=[str(source) for source in sources],
        )


def _slot(name: str) -> datetime:
    match = SLOT_NAME.fullmatch(name)
    assert match is not None, name
    return datetime.strptime(match["slot"], "%Y-%m-%d-%H-%M-%S").replace(tzinfo=UTC)


def _wait_for_backups(
    server: Server, schedule: str, count: int, store: str = "backupsDefault"
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 60
    listing = f"/admin/system/disasterrecovery/stores/{store}/backups"
    while time.monotonic() < deadline:
        backups = [
            b for b in server.get(listing).json()["backups"] if b["name"].startswith(schedule)
        ]
        if len(backups) >= count:
            return backups
        time.sleep(0.2)
    raise AssertionError(f"fewer than {count} backups of {schedule}: {server.log.read_text()}")


def _jobs(database: Path) -> list[tuple[str, str, str]]:
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        return db.execute("SELECT operation, name, status FROM jobs").fetchall()


def _stop(*servers: Server) -> None:
    for server in servers:
        server.process.terminate()
    for server in servers:
        server.process.wait(timeout=30)


def test_serve_runs_a_schedule_whose_backups_restore_with_the_passcode(
    serve: ServerFactory, home: Path, tree: Path
) -> None:
    _define_schedule("tick", "2s")
    server = serve([tree])
    backups = _wait_for_backups(server, "tick-", 3)
    slots = [_slot(b["name"]) for b in backups]
    assert len(set(slots)) == len(slots)
    for backup, slot in zip(backups, slots, strict=True):
        assert SLOT_NAME.fullmatch(backup["name"])["schedule"] == "tick"
        assert slot.second % 2 == 0  # every 2 s, counted from 1970 in UTC
        assert backup["scheduleType"] == "SCHEDULED"
        assert backup["retentionDate"] == to_epoch_ms(slot + timedelta(days=3))
    restore = server.post(f"{BACKUPS}/{backups[0]['name']}/restore", passcode=SCHEDULE_PASSCODE)
    restored = server.wait_for_job(restore.json()["jobsUrl"])
    assert restored["status"] == "COMPLETED", restored
    assert snapshot(Path(restored["result"]["restoreDir"]) / tree.name) == snapshot(tree)
    _stop(server)
    found = subprocess.run(["grep", "-r", "-l", SCHEDULE_PASSCODE, str(home)], check=False)
    assert found.returncode == 1, "the passcode is stored under STRONGROOM_HOME"
    assert SCHEDULE_PASSCODE not in (home / "config.toml").read_text()
    assert SCHEDULE_PASSCODE not in server.log.read_text()


def test_serve_without_schedules_runs_none(serve: ServerFactory, home: Path, tree: Path) -> None:
    _define_schedule("idle", "1s")
    server = serve([tree], "--no-schedules")
    time.sleep(2.5)
    assert server.get(BACKUPS).json() == {"backups": [], "unreadable": []}


@pytest.mark.parametrize("homes", ["one home", "a home each"])
def test_two_replicas_run_each_slot_exactly_once(
    serve: ServerFactory,
    home: Path,
    tree: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    homes: str,
) -> None:
    """Two `serve` processes sharing the configuration and the store; the job table too,
    or (a home each) nothing else: then the claims are all they coordinate by."""
    monkeypatch.setenv("STRONGROOM_CONFIG", str(tmp_path / "shared.toml"))
    store = tmp_path / "shared-store"
    config = StoresConfig.load()
    config.add(StoreSpec("shared", store.as_uri()))
    config.save()  # the file every replica is deployed with; then one of them inits:
    Engine().init_store("shared")
    _define_schedule("pair", "1s", [tree], store="shared")
    own = [{"STRONGROOM_HOME": str(tmp_path / name)} for name in ("a", "b")]
    replicas = [serve([], env=env if homes == "a home each" else None) for env in own]
    _wait_for_backups(replicas[0], "pair-", 10, store="shared")
    with Engine(kdf=FAST_KDF) as engine:
        update(engine, "pair", enabled=False)  # the runners see it at their next tick
    tables = [home / "jobs.sqlite3"]
    if homes == "a home each":
        tables = [Path(env["STRONGROOM_HOME"]) / "jobs.sqlite3" for env in own]
    deadline = time.monotonic() + 30
    time.sleep(1.5)
    while any(s in ("SUBMITTED", "EXECUTING") for t in tables for *_, s in _jobs(t)):
        assert time.monotonic() < deadline, [_jobs(t) for t in tables]
        time.sleep(0.1)
    _stop(*replicas)

    jobs = [job for table in tables for job in _jobs(table)]
    assert {status for *_, status in jobs} == {"COMPLETED"}, jobs  # cleanups and creates
    names = sorted(p.name for p in (store / "manifests").iterdir())
    assert len(names) >= 10
    created = sorted(name for operation, name, _ in jobs if operation == "create")
    assert created == names  # one job per backup
    claims = sorted(p.name for p in (store / "schedules" / "pair").iterdir())
    assert [f"pair-{slot}" for slot in claims] == names  # each claimed slot ran, once
    with Engine(kdf=FAST_KDF) as engine:
        for name in names:
            info = engine.info(name, "shared")
            (backup_id,) = [p.name for p in (store / "data" / name).iterdir()]
            assert backup_id == info.backup_id
            chunks = list((store / "data" / name / backup_id).iterdir())
            assert len(chunks) == info.chunk_count  # nothing written twice
    logs = [replica.log.read_text() for replica in replicas]
    assert any("claimed by another replica" in log for log in logs), logs
    assert not any("did not run" in log for log in logs), logs
