"""Replicas: real `strongroom serve` processes on one home, sharing their jobs through a
real PostgreSQL server (`--jobs-db`). Any replica answers for any job, cancels it, and
notices a replica that was killed; the cleanup system task runs once per interval."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from strongroom import Engine, JobManager, JobStatus
from tests.conftest import (
    FAST_KDF,
    PASSCODE,
    SMALL_CHUNK,
    PostgresServer,
    Server,
    ServerFactory,
)

BACKUPS = "/admin/system/disasterrecovery/stores/backupsDefault/backups"
CREATE = f"{BACKUPS}/create"
#: The replicas' lease (seconds): short, so that a killed replica shows within the test.
LEASE = 2


@pytest.fixture
def replica(serve: ServerFactory, postgres_url: str) -> Callable[..., Server]:
    """Start a `serve` replica on the test's home and PostgreSQL database."""

    def start(sources: list[Path], *options: str) -> Server:
        env = {"STRONGROOM_JOB_LEASE": str(LEASE)}
        return serve(sources, "--jobs-db", postgres_url, *options, env=env)

    return start


def _job(server: Server, jobid: str) -> dict[str, Any]:
    job: dict[str, Any] = server.get(f"/admin/jobs/{jobid}").json()
    return job


def _until(condition: Callable[[], bool], within: float = 30) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "the condition never became true"
        time.sleep(0.05)


def _huge(tmp_path: Path) -> Path:
    """A create of this runs for minutes: a 1 TiB sparse file (no disk, all zeros)."""
    source = tmp_path / "huge"
    source.mkdir()
    with (source / "sparse.img").open("wb") as sparse:
        sparse.truncate(1 << 40)
    return source


def _data_objects(home: Path, name: str) -> list[Path]:
    data = home / "stores" / "backupsDefault" / "data" / name
    return [p for p in data.rglob("*") if p.is_file()] if data.exists() else []


def test_a_create_on_one_replica_completes_on_the_other_and_is_cancelled_from_it(
    replica: Callable[..., Server], tree: Path, tmp_path: Path
) -> None:
    a = replica([tree])
    b = replica([tree])
    created = a.post(CREATE, name="shared", passcode=PASSCODE).json()
    followed = b.wait_for_job(created["jobsUrl"].replace(a.url, b.url))
    assert followed["status"] == "COMPLETED", followed
    assert followed["result"]["name"] == "shared"
    assert [backup["name"] for backup in b.get(BACKUPS).json()["backups"]] == ["shared"]
    listed = b.get("/admin/jobs", operation="create").json()
    assert [job["jobid"] for job in listed["jobs"]] == [created["jobid"]]

    slow = replica([_huge(tmp_path)])
    running = slow.post(CREATE, name="cut-short", passcode=PASSCODE).json()
    _until(lambda: _job(b, running["jobid"])["status"] == "EXECUTING")
    assert b.post(f"/admin/jobs/{running['jobid']}/cancel").status_code == 200
    ended = b.wait_for_job(f"{b.url}/admin/jobs/{running['jobid']}")
    assert ended["status"] == "CANCELLED", ended
    assert slow.process.poll() is None
    assert [backup["name"] for backup in a.get(BACKUPS).json()["backups"]] == ["shared"]


def test_a_replica_killed_mid_create_reads_failed_on_another_within_the_lease(
    replica: Callable[..., Server], home: Path, tree: Path, tmp_path: Path
) -> None:
    a = replica([_huge(tmp_path)])
    b = replica([tree])
    created = a.post(CREATE, name="interrupted", passcode=PASSCODE).json()
    _until(lambda: _job(b, created["jobid"])["status"] == "EXECUTING")
    _until(lambda: bool(_data_objects(home, "interrupted")))
    os.kill(a.process.pid, signal.SIGKILL)
    a.process.wait()
    killed = time.monotonic()
    _until(lambda: _job(b, created["jobid"])["status"] != "EXECUTING", within=3 * LEASE)
    noticed = time.monotonic() - killed
    job = _job(b, created["jobid"])
    assert job["status"] == "FAILED", job
    assert noticed < LEASE + 1.5, f"noticed after {noticed:.1f} s"
    assert "(last recorded: EXECUTING)" in job["messages"][-1]
    assert b.get(BACKUPS).json() == {"backups": [], "unreadable": []}
    assert _data_objects(home, "interrupted"), "the killed create should have left data behind"


def test_two_replicas_run_the_cleanup_task_once_per_interval(
    replica: Callable[..., Server], home: Path, tree: Path
) -> None:
    soon = int(time.time() * 1000)
    with Engine(kdf=FAST_KDF, chunk_size=SMALL_CHUNK) as engine:
        for number in range(6):  # expiring one after another while the replicas run
            retention = soon + (4 + 2 * number) * 1000
            engine.create(f"expiring-{number}", [tree], passcode=PASSCODE, retention_date=retention)
        engine.create("kept", [tree], passcode=PASSCODE)
    interval = str(2 / 60)  # minutes
    first_slot = int(time.time() // 2)
    a = replica([tree], "--cleanup-interval", interval)
    b = replica([tree], "--cleanup-interval", interval)
    time.sleep(20)
    jobs = a.get("/admin/jobs", operation="cleanup", num="100").json()["jobs"]
    slots = int(time.time() // 2) - first_slot + 1
    assert [job["status"] for job in jobs] == ["COMPLETED"] * len(jobs), jobs
    # A run's job starts (is submitted) after its claim, later still on a busy machine, so
    # its start time can fall in the next slot: count the slots the test spans instead.
    starts = sorted(job["starttime"] for job in jobs)
    assert 8 <= len(jobs) <= slots, f"more than one run per interval: {starts}, {slots} slots"
    deleted = [
        entry["name"]
        for job in jobs
        for entry in job["result"]["backups"]
        if entry["action"] == "deleted"
    ]
    assert sorted(deleted) == [f"expiring-{number}" for number in range(6)]
    assert [backup["name"] for backup in b.get(BACKUPS).json()["backups"]] == ["kept"]


def test_with_postgresql_down_new_requests_get_503_and_running_jobs_end_recorded(
    serve: ServerFactory, own_postgres: PostgresServer, home: Path, tmp_path: Path
) -> None:
    database = own_postgres.new_database()
    server = serve([_huge(tmp_path)], "--jobs-db", database, "--cleanup-interval", "0")
    running = server.post(CREATE, name="long", passcode=PASSCODE).json()
    _until(lambda: _job(server, running["jobid"])["status"] == "EXECUTING")
    own_postgres.stop()
    refused = server.post(CREATE, name="refused", passcode=PASSCODE)
    assert refused.status_code == 503, refused.text
    assert "The job database postgres@127.0.0.1:" in refused.json()["messages"][0]
    assert "cannot be used" in refused.json()["messages"][0]
    assert server.get("/admin/jobs").status_code == 503
    assert _job(server, running["jobid"])["status"] == "EXECUTING"  # it runs on
    server.post(f"/admin/jobs/{running['jobid']}/cancel")
    _until(lambda: _job(server, running["jobid"])["status"] == "CANCELLED")
    own_postgres.start()
    # what every replica of this configuration reads, once it is back
    other = JobManager(database, namespace=str((home / "config.toml").resolve()))
    try:
        _until(lambda: other.get(running["jobid"]).status is JobStatus.CANCELLED)
    finally:
        other.close()
    created = server.post(CREATE, name="after", passcode=PASSCODE)
    assert created.status_code == 200, created.text
