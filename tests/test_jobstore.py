"""The job stores: one conformance suite run against SQLite and a real PostgreSQL server
(two JobManagers sharing a store stand for two processes or replicas), and what only
PostgreSQL does: leases, and running on while the database is down."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, suppress
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from strongroom import (
    ConfigError,
    Engine,
    JobError,
    JobHandle,
    JobManager,
    JobNotFoundError,
    JobStatus,
    JobStoreUnavailableError,
)
from strongroom.cli import main
from strongroom.jobrecord import Job, failed
from strongroom.jobs import JOBS_FILE
from strongroom.jobstore import JobStore, Saved, open_job_store
from tests.conftest import FAST_KDF, SMALL_CHUNK, PostgresServer, until_cancelled

#: Short, so that expiry and renewal show within a test.
LEASE = timedelta(seconds=1.5)


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request: pytest.FixtureRequest, home: Path) -> str:
    """A job database both kinds of store are tested against."""
    if request.param == "sqlite":
        return f"sqlite://{home / JOBS_FILE}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def replicas(location: str) -> Iterator[Callable[..., JobManager]]:
    """Open JobManagers on `location` (each stands for a replica); closed after the test."""
    opened: list[JobManager] = []

    def open_manager(**options: object) -> JobManager:
        manager = JobManager(location, lease=LEASE, **options)  # type: ignore[arg-type]
        opened.append(manager)
        return manager

    yield open_manager
    for manager in opened:
        manager.close()


def _eventually(condition: Callable[[], bool], within: float = 10) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "the condition never became true"
        time.sleep(0.02)


def test_a_job_submitted_on_one_replica_is_followed_to_its_end_on_another(
    replicas: Callable[..., JobManager],
) -> None:
    a, b = replicas(), replicas()
    release = threading.Event()

    def work(job: JobHandle) -> dict[str, str]:
        job.stage("waiting")
        job.progress(1, 4)
        release.wait(10)
        return {"answer": "42"}

    submitted = a.submit("create", work, store="s", name="n")
    _eventually(lambda: b.get(submitted.jobid).status is JobStatus.EXECUTING)
    assert b.find() == ([b.get(submitted.jobid)], 1)
    release.set()
    a.wait(submitted.jobid)
    seen = b.get(submitted.jobid)
    assert (seen.status, seen.result, seen.name) == (JobStatus.COMPLETED, {"answer": "42"}, "n")
    assert [(s.name, s.state) for s in seen.stages] == [("waiting", "success")]
    assert seen == a.get(submitted.jobid)


def test_a_cancel_on_one_replica_stops_a_job_running_on_another(
    replicas: Callable[..., JobManager],
) -> None:
    a, b = replicas(), replicas()
    running = a.submit("create", until_cancelled)
    _eventually(lambda: b.get(running.jobid).status is JobStatus.EXECUTING)
    b.cancel(running.jobid)
    ended = a.wait(running.jobid, timeout=10)
    assert ended.status is JobStatus.CANCELLED
    assert b.get(running.jobid) == ended
    assert b.cancel(running.jobid) == ended  # an ended job is returned as it is


def test_a_cancel_on_one_replica_stops_a_job_queued_on_another(
    replicas: Callable[..., JobManager],
) -> None:
    a, b = replicas(workers=1), replicas()
    busy = a.submit("create", until_cancelled)
    queued = a.submit("create", lambda job: None)
    b.cancel(queued.jobid)  # seen within a third of the lease
    _eventually(lambda: b.get(queued.jobid).status is JobStatus.CANCELLED)
    assert a.get(queued.jobid).messages[-1] == "Cancelled before it started."
    assert b.get(busy.jobid).status is JobStatus.EXECUTING
    a.cancel(busy.jobid)


def test_find_pages_every_replicas_jobs_newest_first(replicas: Callable[..., JobManager]) -> None:
    a, b = replicas(), replicas()
    ids = []
    for number in range(5):
        manager = a if number % 2 else b
        ids.append(manager.wait(manager.submit(f"op{number % 2}", lambda job: None).jobid).jobid)
        time.sleep(0.002)  # distinct start times
    page, total = a.find(offset=1, limit=2)
    assert ([job.jobid for job in page], total) == (ids[::-1][1:3], 5)
    odd, total = b.find(operation="op1", status=JobStatus.COMPLETED, limit=None)
    assert ([job.jobid for job in odd], total) == ([ids[3], ids[1]], 2)


def test_each_periodic_slot_is_claimed_once_across_replicas(
    replicas: Callable[..., JobManager],
) -> None:
    a, b = replicas(), replicas()
    assert a.claim_periodic("cleanup", 100)
    assert not b.claim_periodic("cleanup", 100)
    assert not a.claim_periodic("cleanup", 100)
    assert b.claim_periodic("other", 100)  # tasks are claimed apart
    assert b.claim_periodic("cleanup", 101)
    assert not a.claim_periodic("cleanup", 101)
    # a replica that read the clock just before the slot changed claims too late: the
    # newer claim swept the older one's row, but no slot below a claimed one is given out
    assert not a.claim_periodic("cleanup", 100)


def test_a_job_of_a_replica_killed_mid_job_reads_failed_and_never_runs_again(
    replicas: Callable[..., JobManager], location: str
) -> None:
    watcher = replicas()
    script = textwrap.dedent(
        f"""
        import threading
        from datetime import timedelta
        from strongroom import JobManager
        jobs = JobManager({location!r}, lease=timedelta(seconds={LEASE.total_seconds()}))
        def work(job):
            job.stage("writing")
            print("executing", flush=True)
            threading.Event().wait()
        print(jobs.submit("create", work).jobid, flush=True)
        threading.Event().wait()
        """
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        jobid = process.stdout.readline().strip()
        assert process.stdout.readline().strip() == "executing"
        time.sleep(LEASE.total_seconds())  # a live replica keeps its job however long it runs
        assert watcher.get(jobid).status is JobStatus.EXECUTING
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate()
    killed = time.monotonic()
    _eventually(lambda: watcher.get(jobid).status is JobStatus.FAILED)
    assert time.monotonic() - killed < LEASE.total_seconds() + 1
    job = watcher.get(jobid)
    assert job.messages[-1].startswith(
        "The strongroom process running this job stopped before it recorded the job's end "
        "(last recorded: EXECUTING)"
    )
    assert [(s.name, s.state) for s in job.stages] == [("writing", "failed")]


def test_a_save_never_changes_an_ended_job(location: str) -> None:
    owner = open_job_store(location, "owner", LEASE)
    try:
        manager = JobManager(location, lease=LEASE)
        job = manager.wait(manager.submit("op", lambda job: None).jobid)
        manager.close()
        assert owner.save(replace(job, status=JobStatus.EXECUTING)) is Saved.ENDED
        assert owner.save(replace(job, status=JobStatus.FAILED)) is Saved.ENDED
        assert owner.load(job.jobid) == job
        assert owner.renew([job.jobid]) == {job.jobid: Saved.ENDED}
    finally:
        owner.close()


def test_a_job_failed_by_another_manager_stops_before_it_commits(
    replicas: Callable[..., JobManager], location: str
) -> None:
    """What a replica cut off from the table for longer than the lease meets when it is
    back: another replica failed its job. The work stops at its next step, commits
    nothing, and the FAILED record stands."""
    a = replicas()
    proceed, midway, committed = threading.Event(), threading.Event(), threading.Event()

    def work(job: JobHandle) -> None:
        job.stage("writing")
        midway.set()
        proceed.wait(10)
        for done in range(1, 50):
            job.progress(done, 50)
            time.sleep(0.05)
        committed.set()

    running = a.submit("create", work)
    assert midway.wait(10)
    _fail_elsewhere(location, running.jobid)
    proceed.set()
    ended = a.wait(running.jobid, timeout=10)
    assert not committed.is_set()
    assert (ended.status, ended.messages[-1]) == (JobStatus.FAILED, "gone")


def test_a_job_failed_by_another_manager_stops_at_its_next_renewal(
    replicas: Callable[..., JobManager], location: str
) -> None:
    """Work that reports no progress learns it from the lease renewal instead."""
    a = replicas()
    proceed, midway, committed = threading.Event(), threading.Event(), threading.Event()

    def work(job: JobHandle) -> None:
        job.stage("writing")
        midway.set()
        proceed.wait(10)
        time.sleep(LEASE.total_seconds())  # a renewal or two, and no save
        job.raise_if_cancelled()
        committed.set()

    running = a.submit("create", work)
    assert midway.wait(10)
    _fail_elsewhere(location, running.jobid)
    proceed.set()
    ended = a.wait(running.jobid, timeout=10)
    assert not committed.is_set()
    assert ended.status is JobStatus.FAILED


def _fail_elsewhere(location: str, jobid: str) -> None:
    """What another replica does to a job whose runner it takes for gone."""
    other = open_job_store(location, "other", LEASE)
    try:
        stored = other.load(jobid)
        assert stored is not None and stored.status is JobStatus.EXECUTING
        assert other.save(failed(stored, stored.updatedtime, "gone")) is Saved.WRITTEN
    finally:
        other.close()


def test_a_bad_job_database_url_says_what_is_accepted(home: Path) -> None:
    with pytest.raises(ConfigError, match=r"sqlite:/// or postgresql://, not mysql://"):
        JobManager("mysql://db/jobs")
    for url in (
        "postgres://someone:Sekret-Pa55@[::1:5432/db",  # once a traceback
        "postgresql://someone:Sekret-Pa55\uff03x@db.internal/jobs",  # NFKC: '#' in the netloc
    ):
        with pytest.raises(ConfigError, match=r"URL is not valid: write") as caught:
            JobManager(url)
        assert "Sekret-Pa55" not in str(caught.value)


def test_without_psycopg_a_postgresql_url_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delitem(sys.modules, "strongroom.jobstore.postgres", raising=False)
    monkeypatch.setitem(sys.modules, "psycopg", None)  # what a missing package looks like
    with pytest.raises(ConfigError, match=r"pip install --upgrade 'strongroom\[postgres\]'"):
        JobManager("postgresql://nobody@127.0.0.1:1/jobs")


def test_an_older_psycopg_says_to_upgrade(monkeypatch: pytest.MonkeyPatch) -> None:
    """psycopg 3.1 and 3.2 take no timeout in Connection.wait: every call would fail with a
    TypeError traceback instead of the time-bounded waits."""
    import psycopg

    monkeypatch.delitem(sys.modules, "strongroom.jobstore.postgres", raising=False)
    monkeypatch.setattr(psycopg, "__version__", "3.2.10")
    with pytest.raises(ConfigError, match=r"psycopg 3.3 or later"):
        JobManager("postgresql://nobody@127.0.0.1:1/jobs")


def test_serve_does_not_start_on_a_job_table_a_newer_strongroom_wrote(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """It started, and answered every jobs, create and status call 409 "newer"; an outage
    only warns (the database may come back), this does not pass by itself."""
    table = tmp_path / "jobs.sqlite3"
    JobManager(table).close()
    with sqlite3.connect(table) as db:
        db.execute("PRAGMA user_version = 99")

    def run(*_: object, **__: object) -> None:
        raise AssertionError("served on a newer job table")

    monkeypatch.setattr("uvicorn.Server.run", run)
    assert main(["serve", "--port", "0", "--jobs-db", str(table)]) == JobError.exit_code
    assert "written by a newer strongroom (schema 99)" in capsys.readouterr().err


def test_a_newer_schema_is_refused(postgres_url: str) -> None:
    JobManager(postgres_url).close()  # creates the tables
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as db:
        db.execute("INSERT INTO strongroom_schema VALUES (99)")
    with pytest.raises(JobError, match="newer strongroom"):
        JobManager(postgres_url)


@pytest.mark.usefixtures("postgres_server")  # psycopg is there, or the test says why not
def test_an_unreachable_database_is_unavailable_and_never_shows_its_password(
    home: Path,
) -> None:
    url = "postgresql://someone:Sekret-Pa55@127.0.0.1:1/jobs"
    with pytest.raises(JobStoreUnavailableError, match="someone@127.0.0.1:1/jobs") as caught:
        JobManager(url)
    assert "Sekret-Pa55" not in str(caught.value)


def test_a_job_runs_on_while_postgresql_is_down_and_its_end_is_recorded_after(
    own_postgres: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    url = own_postgres.new_database()
    jobs = JobManager(url, lease=LEASE)
    try:
        proceed, midway = threading.Event(), threading.Event()

        def work(job: JobHandle) -> dict[str, int]:
            job.stage("first")
            midway.set()
            proceed.wait(30)
            for done in range(1, 4):
                job.progress(done, 3)  # the database is down: progress stays in memory
                time.sleep(0.3)
            job.stage("second")
            return {"done": 3}

        submitted = jobs.submit("create", work)
        assert midway.wait(10)
        own_postgres.stop()
        proceed.set()
        with pytest.raises(JobStoreUnavailableError, match="cannot be used"):
            jobs.submit("create", lambda job: None)
        ended = jobs.wait(submitted.jobid, timeout=20)
        assert ended.status is JobStatus.COMPLETED  # as this replica knows it
        time.sleep(2 * LEASE.total_seconds())  # down longer than a lease
        own_postgres.start()
        other = JobManager(url, lease=LEASE)  # its lease ran out, but the outage is no stop
        try:
            _eventually(lambda: not other.get(submitted.jobid).status.active)
            recorded = other.get(submitted.jobid)
        finally:
            other.close()
        assert recorded == ended
        assert recorded.result == {"done": 3}
        assert [s.name for s in recorded.stages] == ["first", "second"]
        follow = jobs.wait(jobs.submit("create", lambda job: None).jobid, timeout=10)
        assert follow.status is JobStatus.COMPLETED
    finally:
        jobs.close()


def test_an_outage_longer_than_the_lease_fails_no_live_job(
    own_postgres: PostgresServer,
) -> None:
    """PostgreSQL down for two leases while another replica keeps asking for the job: it
    never reads FAILED (the owner renews once the server is back, before anyone may fail
    it), and ends COMPLETED."""
    url = own_postgres.new_database()
    owner, watcher = JobManager(url, lease=LEASE), JobManager(url, lease=LEASE)
    seen: set[JobStatus] = set()
    proceed, midway, stop = threading.Event(), threading.Event(), threading.Event()

    def work(job: JobHandle) -> dict[str, int]:
        job.stage("writing")
        midway.set()
        proceed.wait(30)
        for done in range(1, 41):  # two leases and more after the server is back
            job.progress(done, 40)
            time.sleep(0.1)
        return {"done": 40}

    def poll(jobid: str) -> None:
        while not stop.is_set():
            with suppress(JobStoreUnavailableError):  # while the server is down
                seen.add(watcher.get(jobid).status)
            time.sleep(0.02)

    try:
        submitted = owner.submit("create", work)
        assert midway.wait(10)
        poller = threading.Thread(target=poll, args=(submitted.jobid,))
        poller.start()
        own_postgres.stop()
        time.sleep(2 * LEASE.total_seconds())
        own_postgres.start()
        proceed.set()
        ended = owner.wait(submitted.jobid, timeout=30)
        _eventually(lambda: not watcher.get(submitted.jobid).status.active)
        stop.set()
        poller.join()
        assert ended.status is JobStatus.COMPLETED
        assert watcher.get(submitted.jobid) == ended
        assert JobStatus.FAILED not in seen
    finally:
        stop.set()
        owner.close()
        watcher.close()


def test_after_an_outage_a_job_is_failed_only_once_its_own_lease_has_passed(
    own_postgres: PostgresServer,
) -> None:
    """Attack on availability across tenants: after an outage longer than every lease, a
    replica of another deployment (or a `jobs list`) with a shorter lease must wait out the
    job's own lease (its owner's, which renews within a third of it), not its own, before
    failing the job: failed, a live job is cancelled under its running owner."""
    import psycopg

    url = own_postgres.new_database()
    owner = open_job_store(url, "owner", 6 * LEASE, namespace="b")  # a long-lease owner
    watcher = open_job_store(url, "watcher", LEASE, namespace="a")
    try:
        running = Job("j-live", "create", JobStatus.EXECUTING, None, None, 1, 1)
        owner.save(running)
        own_postgres.stop()
        own_postgres.start()  # the server's uptime starts over
        with psycopg.connect(url, autocommit=True) as db:  # the owner could not renew
            db.execute("UPDATE strongroom_jobs SET lease_until = now() - interval '1 second'")
        _eventually(lambda: _reaches(watcher))
        time.sleep(2 * LEASE.total_seconds())  # the watcher's lease, twice over
        assert watcher.fail_orphans(0, "gone") == 0, "failed within its owner's lease"
        time.sleep(6 * LEASE.total_seconds())
        assert watcher.fail_orphans(0, "gone") == 1, "never failed after it"
    finally:
        owner.close()
        watcher.close()


def _reaches(store: JobStore) -> bool:
    with suppress(JobStoreUnavailableError):
        store.find(None, None, 0, 1)
        return True
    return False


def test_passcodes_never_reach_the_postgresql_job_table(
    postgres_url: str, home: Path, tree: Path
) -> None:
    import psycopg

    secret = "Job-Passc0de-never-stored"
    with Engine(kdf=FAST_KDF, chunk_size=SMALL_CHUNK, jobs_db=postgres_url) as engine:
        engine.jobs.wait(engine.submit_backup("secret", [tree], passcode=secret).jobid)
        engine.jobs.wait(engine.submit_restore("secret", home / "out", passcode=secret).jobid)
        bad = engine.submit_restore("secret", home / "bad", passcode=secret + "x")
        assert engine.jobs.wait(bad.jobid).status is JobStatus.FAILED
    assert not (home / JOBS_FILE).exists()  # the jobs went to PostgreSQL only
    with psycopg.connect(postgres_url) as db:
        rows = db.execute("SELECT * FROM strongroom_jobs").fetchall()
    stored = repr(rows)
    assert stored.count("'secret'") >= 3  # the backup's name is there, so the text is readable
    assert secret not in stored


def test_the_environment_chooses_the_job_database_and_the_lease(
    postgres_url: str, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRONGROOM_JOBS_DB", postgres_url)
    with Engine() as engine:
        job = engine.jobs.wait(engine.submit_cleanup().jobid)
    assert job.status is JobStatus.COMPLETED
    assert not (home / JOBS_FILE).exists()
    assert engine.jobs_namespace == str(home / "config.toml")  # the shared table's tenant
    reader = JobManager(postgres_url, namespace=engine.jobs_namespace)
    try:
        assert reader.find()[1] == 1
    finally:
        reader.close()
    monkeypatch.setenv("STRONGROOM_JOB_LEASE", "soon")
    with pytest.raises(ConfigError, match="STRONGROOM_JOB_LEASE must be a number of seconds"):
        JobManager(postgres_url)


def test_namespaces_sharing_a_table_see_and_claim_only_their_own(
    replicas: Callable[..., JobManager],
) -> None:
    a, also_a, b = replicas(namespace="a"), replicas(namespace="a"), replicas(namespace="b")
    job = a.wait(a.submit("create", lambda job: None).jobid)
    running = a.submit("create", until_cancelled)
    assert also_a.get(job.jobid) == job
    for jobid in (job.jobid, running.jobid):
        with pytest.raises(JobNotFoundError):
            b.get(jobid)
        with pytest.raises(JobNotFoundError):
            b.cancel(jobid)
    assert b.find() == ([], 0)
    assert a.get(running.jobid).status is not JobStatus.CANCELLING  # b's cancel did nothing
    assert a.claim_periodic("cleanup", 7)
    assert b.claim_periodic("cleanup", 7)  # another deployment's slot, not this one's
    assert not also_a.claim_periodic("cleanup", 7)
    a.cancel(running.jobid)


def test_tenants_on_one_job_database_each_run_their_scheduled_cleanup(
    location: str, tmp_path: Path
) -> None:
    """Two homes, one job database: each Engine's cleanup runs in its slot (the other
    home's claim is not its own), and replicas with different intervals do not collide
    (a 1 h run's claim does not free the slot a 2 h replica already ran)."""
    engines: list[Engine] = []
    stops: list[threading.Event] = []

    def scheduled(home: str, hours: int) -> Engine:
        engine = Engine(home=tmp_path / home, jobs_db=location, kdf=FAST_KDF)
        engines.append(engine)
        stops.append(engine.schedule_cleanup(timedelta(hours=hours)))
        return engine

    def cleanups(engine: Engine) -> int:
        return engine.jobs.find(operation="cleanup")[1]

    try:
        a = scheduled("a", 2)
        _eventually(lambda: cleanups(a) == 1)
        scheduled("a", 1)
        _eventually(lambda: cleanups(a) == 2)
        b = scheduled("b", 2)
        _eventually(lambda: cleanups(b) == 1)
        scheduled("a", 2)  # a replica of the first: this slot already ran
        time.sleep(1)
        assert cleanups(a) == 2
    finally:
        for stop in stops:
            stop.set()
        for engine in engines:
            engine.close()


def test_a_schema_1_postgresql_job_table_is_migrated_and_its_jobs_kept(
    postgres_url: str,
) -> None:
    import psycopg

    from strongroom.jobstore import postgres

    old = JobManager(postgres_url)
    job = old.wait(old.submit("create", lambda job: None).jobid)
    old.close()
    with psycopg.connect(postgres_url, autocommit=True) as db:  # back to schema 1
        db.execute("DROP TABLE strongroom_jobs, strongroom_periodic_runs, strongroom_schema")
        db.execute("CREATE TABLE strongroom_schema (version INTEGER NOT NULL)")
        db.execute("INSERT INTO strongroom_schema VALUES (1)")
        for statement in postgres._MIGRATIONS[0]:
            db.execute(statement)  # type: ignore[arg-type]
        db.execute(
            "INSERT INTO strongroom_jobs (jobid, owner, status, operation, starttime, "
            "updatedtime, bytes_done, stage, messages, stages, scheduled, lease_until) "
            "VALUES (%s, 'gone', 'COMPLETED', 'create', 1, 1, 0, 'done', '[]', '[]', "
            "false, now())",
            (job.jobid,),
        )
    migrated = JobManager(postgres_url)
    try:
        assert migrated.get(job.jobid).status is JobStatus.COMPLETED
        assert migrated.claim_periodic("cleanup", 1)
    finally:
        migrated.close()
    with psycopg.connect(postgres_url) as db:
        version = db.execute("SELECT max(version) FROM strongroom_schema").fetchone()
    assert version == (postgres.SCHEMA_VERSION,) == (3,)


def test_a_frozen_postgresql_server_is_unavailable_within_the_lease(postgres_url: str) -> None:
    """A server whose processes are stopped (SIGSTOP; or its disk stuck) still has its
    packets acknowledged, so no TCP timeout fires and its statement_timeout cannot run: a
    call hung for as long as it was frozen (30 s in a trial), and the running jobs with it."""
    import psycopg

    store = open_job_store(postgres_url, "owner", LEASE)
    manager = JobManager(postgres_url, lease=LEASE)
    job = manager.wait(manager.submit("op", lambda job: None).jobid)
    manager.close()
    with psycopg.connect(postgres_url, autocommit=True) as db:
        rows = db.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        ).fetchall()
    frozen = [pid for (pid,) in rows]
    assert frozen  # the store's own connection among them
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    with ThreadPoolExecutor(1) as pool:
        try:
            save = pool.submit(store.save, job)
            with pytest.raises(JobStoreUnavailableError, match="cannot be used"):
                save.result(timeout=LEASE.total_seconds())  # else TimeoutError: it hangs
        finally:
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
    store.close()


def test_a_postgresql_call_that_hangs_fails_within_the_lease(postgres_url: str) -> None:
    """A statement that cannot finish (here, waiting for a row another connection holds)
    becomes JobStoreUnavailableError within a third of the lease, not a hang; and the
    connection detects a silent server by TCP keepalives and a user timeout."""
    import psycopg

    store = open_job_store(postgres_url, "owner", LEASE)
    holder = psycopg.connect(postgres_url)
    try:
        manager = JobManager(postgres_url, lease=LEASE)
        job = manager.wait(manager.submit("op", lambda job: None).jobid)
        manager.close()
        holder.execute("SELECT * FROM strongroom_jobs FOR UPDATE")  # its transaction stays open
        started = time.monotonic()
        with pytest.raises(JobStoreUnavailableError, match="cannot be used"):
            store.save(job)
        assert time.monotonic() - started < LEASE.total_seconds()
        holder.rollback()
        assert store.load(job.jobid) == job  # connected anew
        parameters = store._db.info.get_parameters()  # type: ignore[attr-defined]
        assert parameters["keepalives"] == "1"
        assert parameters["tcp_user_timeout"] == "1000"
        assert "statement_timeout=1000" in parameters["options"]
    finally:
        holder.close()
        store.close()


@pytest.mark.parametrize(
    "url", ["sqlite://jobs.db", "sqlite:///", "mysql://db/jobs", "postgres://u@[::1:5432/db"]
)
def test_serve_refuses_a_bad_job_database_url_at_once(
    home: Path, url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def serve(*args: object, **options: object) -> None:
        raise AssertionError("serve started with a bad job database URL")

    monkeypatch.setattr("strongroom.web.serve.serve", serve)
    assert main(["serve", "--port", "1", "--jobs-db", url]) == ConfigError.exit_code
    error = capsys.readouterr().err
    assert "sqlite:///PATH (three slashes, then the file's path)" in error
    assert "postgresql://user@host:port/db" in error


def test_jobs_commands_take_the_job_database_and_warn_of_a_password_in_it(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite://{tmp_path / 'elsewhere.sqlite3'}"
    with Engine(jobs_db=url) as engine:
        job = engine.jobs.wait(engine.submit_cleanup().jobid)
    assert main(["jobs", "list", "--jobs-db", url, "--json"]) == 0
    assert [listed["jobid"] for listed in json.loads(capsys.readouterr().out)["jobs"]] == [
        job.jobid
    ]
    assert main(["jobs", "show", job.jobid, "--jobs-db", url]) == 0
    assert "warning" not in capsys.readouterr().err
    secret = "postgresql://someone:Sekret-Pa55@127.0.0.1:1/jobs"
    main(["jobs", "list", "--jobs-db", secret])
    error = capsys.readouterr().err
    assert "contains a password" in error and "STRONGROOM_JOBS_DB" in error
    assert "Sekret-Pa55" not in error


UNREADABLE = "j00000000-0000-4000-8000-000000000000"


@pytest.mark.parametrize(
    "damage",
    [{"stages": '[{"bogus": 1}]'}, {"status": "PAUSED"}, {"messages": "not json"}],
    ids=["stages", "status", "messages"],
)
def test_a_row_this_version_cannot_read_never_stops_the_others(
    home: Path, damage: dict[str, str]
) -> None:
    """A newer version's row (a rolling upgrade), or a damaged one, in any namespace of a
    shared table: it reads as a FAILED job that says so; every other job, listing and
    restart goes on."""
    location = f"sqlite://{home / JOBS_FILE}"
    manager = JobManager(location, namespace="a")
    done = manager.wait(manager.submit("create", lambda job: None).jobid)
    manager.close()
    columns = {
        "jobid": UNREADABLE, "owner": "gone", "status": "EXECUTING", "operation": "create",
        "store": None, "name": None, "starttime": 1, "endtime": None, "updatedtime": 1,
        "bytes_done": 0, "bytes_total": None, "stage": "", "messages": "[]", "result": None,
        "operation_uri": None, "stages": "[]", "scheduled": 0, "cancel_requested": 0,
        "namespace": "b", **damage,
    }  # fmt: skip
    with closing(sqlite3.connect(home / JOBS_FILE)) as db, db:
        names = ", ".join(columns)
        db.execute(
            f"INSERT INTO jobs ({names}) VALUES ({', '.join('?' * len(columns))})",
            [*columns.values()],
        )
    restarted = JobManager(location, namespace="a")
    try:
        assert restarted.find() == ([done], 1)
        assert restarted.get(done.jobid) == done
    finally:
        restarted.close()
    other = JobManager(location, namespace="b")
    try:
        unreadable = other.get(UNREADABLE)
        assert unreadable.status is JobStatus.FAILED
        assert any("cannot be read by this version" in m for m in unreadable.messages)
    finally:
        other.close()
