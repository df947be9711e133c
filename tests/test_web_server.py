"""A real `strongroom serve` on loopback: the seed's create request as written, a restore
through the API, a kill and a restart while a job executes, and a graceful stop."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import httpx

from tests.conftest import API_TOKEN, ServerFactory, snapshot

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
    assert any("stopped while the job was EXECUTING" in m for m in job.json()["messages"])
    listed = restarted.get(BACKUPS)
    assert listed.json() == {"backups": []}
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
