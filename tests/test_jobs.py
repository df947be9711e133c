"""Jobs: the job table, the bounded pool, cancellation, and jobs of processes that died."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from strongroom import (
    BackupExistsError,
    BackupNotFoundError,
    ConfigError,
    Engine,
    JobError,
    JobHandle,
    JobManager,
    JobNotFoundError,
    JobStatus,
    PasscodeError,
    Stage,
    StoresConfig,
    StoreSpec,
    UnknownStoreError,
    jobupkeep,
)
from strongroom.backends.file import LocalStore
from strongroom.format import to_epoch_ms
from strongroom.jobs import JOBS_FILE
from tests.conftest import FAST_KDF, PASSCODE, SMALL_CHUNK, snapshot, until_cancelled


@pytest.fixture
def jobs(home: Path) -> Iterator[JobManager]:
    manager = JobManager(home / JOBS_FILE)
    yield manager
    manager.close()


def test_the_job_table_is_its_owners_only(home: Path) -> None:
    """Jobs name backups, descriptions, restore targets and errors: the table and its WAL
    are 0600 like config.toml (they were 0644), an older table too once opened."""
    home.mkdir()
    older = home / JOBS_FILE
    older.touch(mode=0o644)
    older.chmod(0o644)
    manager = JobManager(older)
    try:
        manager.wait(manager.submit("create", lambda job: {}).jobid, 10)
        for path in home.glob(f"{JOBS_FILE}*"):
            if path.is_file():
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    finally:
        manager.close()
    (home / "fresh").mkdir()
    fresh = JobManager(home / "fresh" / JOBS_FILE)
    fresh.close()
    assert stat.S_IMODE((home / "fresh" / JOBS_FILE).stat().st_mode) == 0o600


def _rows(home: Path) -> int:
    with closing(sqlite3.connect(home / JOBS_FILE)) as db:
        count: int = db.execute("SELECT count(*) FROM jobs").fetchone()[0]
    return count


def _store_files(home: Path) -> list[Path]:
    store = home / "stores" / "backupsDefault"
    return sorted(p for p in store.rglob("*") if p.is_file()) if store.exists() else []


def _eventually(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "the condition never became true"
        time.sleep(0.01)


# -- the job manager ------------------------------------------------------------------


def test_a_job_runs_and_its_record_outlives_the_manager(home: Path, jobs: JobManager) -> None:
    def work(job: JobHandle) -> dict[str, int]:
        job.stage("counting")
        job.progress(5, 10)
        return {"answer": 42}

    submitted = jobs.submit("count", work, store="s", name="n", operation_uri="http://x/op")
    assert submitted.status is JobStatus.SUBMITTED
    assert submitted.jobid.startswith("j") and len(submitted.jobid) == 37
    done = jobs.wait(submitted.jobid)
    assert done.status is JobStatus.COMPLETED
    assert done.result == {"answer": 42}
    assert done.endtime is not None and done.endtime >= done.starttime
    document = done.to_dict()
    assert document["progress"] == {
        "bytesDone": 5,
        "bytesTotal": 10,
        "percent": 100,
        "stage": "done",
    }
    assert document["operationURI"] == "http://x/op"
    assert (document["backupStore"], document["backupName"]) == ("s", "n")
    jobs.close()

    reopened = JobManager(home / JOBS_FILE)
    try:
        assert reopened.get(submitted.jobid) == done
    finally:
        reopened.close()


def test_ended_jobs_are_forgotten_after_the_keep_period_and_active_ones_never(
    home: Path,
) -> None:
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    jobs = JobManager(home / JOBS_FILE, clock=lambda: now[0])
    old = jobs.wait(jobs.submit("noop", lambda job: None).jobid, timeout=10)
    release = threading.Event()
    running = jobs.submit("slow", lambda job: {"released": release.wait(10)})
    now[0] += timedelta(days=29)
    recent = jobs.wait(jobs.submit("noop", lambda job: None).jobid, timeout=10)
    now[0] += timedelta(days=2)  # the first job ended 31 days ago, the second 2 days ago

    reopened = JobManager(home / JOBS_FILE, clock=lambda: now[0], keep=timedelta(days=30))
    try:
        with pytest.raises(JobNotFoundError):
            reopened.get(old.jobid)
        assert reopened.get(recent.jobid) == recent
        assert reopened.get(running.jobid).status.active
    finally:
        release.set()
        reopened.close()
        jobs.close()


def test_a_running_manager_forgets_old_ended_jobs_too(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a starting manager forgot them: a server's job table grew for good."""
    monkeypatch.setattr(jobupkeep, "FORGET_INTERVAL", 0.0)
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    lease = timedelta(seconds=0.3)  # the upkeep runs every 0.1 s
    with closing(JobManager(home / JOBS_FILE, clock=lambda: now[0], lease=lease)) as jobs:
        old = jobs.wait(jobs.submit("noop", lambda job: None).jobid, timeout=10)
        now[0] += timedelta(days=31)
        deadline = time.monotonic() + 30
        while jobs.find(operation="noop")[1]:
            assert time.monotonic() < deadline, "the ended job was never forgotten"
            time.sleep(0.05)
        with pytest.raises(JobNotFoundError):
            jobs.get(old.jobid)


def test_stages_are_kept_with_their_times_and_end_as_the_job_ends(home: Path) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    now = [start]
    jobs = JobManager(home / JOBS_FILE, clock=lambda: now[0])
    seen: list[dict[str, object]] = []

    def work(job: JobHandle) -> None:
        job.stage("reading")
        now[0] += timedelta(seconds=2)
        job.stage("checking")
        now[0] += timedelta(seconds=1)
        job.progress(1, 2)
        seen.append(jobs.get(job.jobid).to_dict()["stages"][-1])
        now[0] += timedelta(seconds=2)
        raise ConfigError("The thing is misconfigured; fix it.")

    failed = jobs.wait(jobs.submit("steps", work).jobid)
    t0 = to_epoch_ms(start)
    assert seen == [
        {"name": "checking", "state": "running", "lastUpdated": t0 + 2000, "duration": 1000}
    ]
    assert failed.stages == (
        Stage("reading", "success", t0, t0 + 2000),
        Stage("checking", "failed", t0 + 2000, t0 + 5000),
    )
    assert failed.to_dict()["stages"] == [
        {"name": "reading", "state": "success", "lastUpdated": t0 + 2000, "duration": 2000},
        {"name": "checking", "state": "failed", "lastUpdated": t0 + 5000, "duration": 3000},
    ]
    cancelled = jobs.submit("loop", lambda job: (job.stage("looping"), until_cancelled(job)))
    _eventually(lambda: jobs.get(cancelled.jobid).stage == "looping")
    jobs.cancel(cancelled.jobid)
    assert [(s.name, s.state) for s in jobs.wait(cancelled.jobid).stages] == [
        ("looping", "cancelled")
    ]
    jobs.close()

    reopened = JobManager(home / JOBS_FILE, clock=lambda: now[0])
    try:
        assert reopened.get(failed.jobid) == failed
    finally:
        reopened.close()


#: The job table as schema 1 wrote it, with one ended job.
_SCHEMA_1 = """
CREATE TABLE jobs (
    jobid TEXT PRIMARY KEY, owner TEXT NOT NULL, status TEXT NOT NULL,
    operation TEXT NOT NULL, store TEXT, name TEXT,
    starttime INTEGER NOT NULL, endtime INTEGER, updatedtime INTEGER NOT NULL,
    bytes_done INTEGER NOT NULL, bytes_total INTEGER, stage TEXT NOT NULL,
    messages TEXT NOT NULL, result TEXT, operation_uri TEXT);
CREATE INDEX active_jobs ON jobs (status, owner);
INSERT INTO jobs VALUES ('j7d22f855-2c9f-4934-94e4-93c5e85cd271', 'gone', 'COMPLETED',
    'create', 'backupsDefault', 'old', {now}, {now}, {now}, 5, 10, 'done',
    '["Completed."]', '{{"name": "old"}}', NULL);
PRAGMA user_version = 1;
"""


def test_a_schema_1_job_table_is_migrated_and_its_rows_still_read(home: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    now = int(time.time() * 1000)
    with closing(sqlite3.connect(home / JOBS_FILE)) as db:
        db.executescript(_SCHEMA_1.format(now=now))
    jobs = JobManager(home / JOBS_FILE)
    try:
        old = jobs.get("j7d22f855-2c9f-4934-94e4-93c5e85cd271")
        assert (old.status, old.name, old.result) == (JobStatus.COMPLETED, "old", {"name": "old"})
        assert (old.stages, old.scheduled, old.to_dict()["stages"]) == ((), False, [])
        new = jobs.wait(jobs.submit("steps", lambda job: job.stage("one")).jobid)
        assert [s.name for s in new.stages] == ["one"]
        assert jobs.find() == ([new, old], 2)
    finally:
        jobs.close()
    with closing(sqlite3.connect(home / JOBS_FILE)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 4


def test_find_lists_newest_first_a_page_at_a_time_by_status_and_operation(home: Path) -> None:
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    jobs = JobManager(home / JOBS_FILE, clock=lambda: now[0])

    def refuse(job: JobHandle) -> None:
        raise ConfigError("no")

    found = []
    for operation in ("create", "restore", "create", "delete", "create"):
        now[0] += timedelta(seconds=1)
        work = refuse if operation == "restore" else (lambda job: None)
        found.append(jobs.wait(jobs.submit(operation, work).jobid))
    try:
        assert jobs.find(limit=2) == ([found[4], found[3]], 5)
        assert jobs.find(offset=2, limit=2) == ([found[2], found[1]], 5)
        assert jobs.find(offset=4, limit=2) == ([found[0]], 5)
        assert jobs.find(operation="create") == ([found[4], found[2], found[0]], 3)
        assert jobs.find(status=JobStatus.FAILED) == ([found[1]], 1)
        assert jobs.find(status=JobStatus.COMPLETED, operation="restore") == ([], 0)
    finally:
        jobs.close()


def test_find_shows_a_running_job_as_it_is_in_memory(jobs: JobManager) -> None:
    reported, release = threading.Event(), threading.Event()

    def work(job: JobHandle) -> None:
        job.progress(5, 10)  # the first report reaches the table, the next not yet
        job.progress(7, 10)
        reported.set()
        release.wait(10)

    jobid = jobs.submit("slow", work).jobid
    assert reported.wait(10)
    try:
        (listed,), _ = jobs.find()
        assert (listed.jobid, listed.bytes_done) == (jobid, 7)
    finally:
        release.set()


def test_a_job_past_its_time_out_is_cancelled_and_reads_failed(jobs: JobManager) -> None:
    timeout = timedelta(seconds=0.2)
    ended = jobs.wait(jobs.submit("loop", until_cancelled, timeout=timeout).jobid)
    assert ended.status is JobStatus.FAILED
    assert ended.messages == (
        "Still running after its time-out of 0.2 s: it is cancelled, and stops at its next step.",
        "Timed out: still running after its time-out of 0.2 s, so it was cancelled; "
        "nothing was committed.",
    )
    quick = jobs.wait(jobs.submit("quick", lambda job: None, timeout=timeout).jobid)
    assert quick.status is JobStatus.COMPLETED
    with pytest.raises(JobError, match="positive"):
        jobs.submit("never", lambda job: None, timeout=timedelta(0))


def test_the_time_out_marks_a_quiet_job_at_once_and_stops_it_at_its_next_report(
    jobs: JobManager,
) -> None:
    release = threading.Event()

    def quiet(job: JobHandle) -> None:
        release.wait(10)
        job.progress(1, 2)

    jobid = jobs.submit("quiet", quiet, timeout=timedelta(seconds=0.1)).jobid
    _eventually(lambda: jobs.get(jobid).status is JobStatus.CANCELLING)
    release.set()
    assert jobs.wait(jobid).status is JobStatus.FAILED


def test_failures_are_recorded_with_their_message(
    jobs: JobManager, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(job: JobHandle) -> None:
        raise ConfigError("The thing is misconfigured; fix it.")

    def crash(job: JobHandle) -> None:
        raise RuntimeError("internal detail")

    refused = jobs.wait(jobs.submit("refuse", refuse).jobid)
    assert refused.status is JobStatus.FAILED
    assert refused.messages == ("The thing is misconfigured; fix it.",)
    with caplog.at_level(logging.ERROR, logger="strongroom"):
        crashed = jobs.wait(jobs.submit("crash", crash).jobid)
    assert crashed.status is JobStatus.FAILED
    assert "RuntimeError" in crashed.messages[0]
    assert "internal detail" not in crashed.messages[0]
    assert "internal detail" in caplog.text  # the traceback goes to the log


def test_progress_percent_stays_below_100_until_completed(jobs: JobManager) -> None:
    seen: list[int | None] = []
    release = threading.Event()

    def work(job: JobHandle) -> None:
        job.progress(300, 200)  # a create's total is an estimate and can be passed
        seen.append(jobs.get(job.jobid).percent)
        job.progress(10, None)
        seen.append(jobs.get(job.jobid).percent)
        release.wait(10)

    jobid = jobs.submit("estimate", work).jobid
    release.set()
    assert jobs.wait(jobid).percent == 100
    assert seen == [99, None]


def test_cancel_stops_a_queued_job_at_once_and_a_running_one_at_its_next_progress(
    home: Path,
) -> None:
    jobs = JobManager(home / JOBS_FILE, workers=1)
    started, cancelled_ran = threading.Event(), []

    def running(job: JobHandle) -> None:
        started.set()
        until_cancelled(job)

    first = jobs.submit("loop", running).jobid
    queued = jobs.submit("never", lambda job: cancelled_ran.append(True)).jobid
    assert started.wait(10)
    assert jobs.cancel(queued).status is JobStatus.CANCELLED
    assert jobs.cancel(first).status in (JobStatus.CANCELLING, JobStatus.CANCELLED)
    ended = jobs.wait(first)
    assert ended.status is JobStatus.CANCELLED
    assert ended.messages[0].startswith("Cancel asked: the job stops at its next step")
    assert ended.messages[1:] == ("Cancelled; nothing was committed.",)
    assert jobs.wait(queued).messages == ("Cancelled before it started.",)
    assert jobs.cancel(first) == ended  # an ended job stays as it is
    jobs.close()
    assert not cancelled_ran


def test_close_cancels_running_jobs_and_refuses_new_ones(home: Path) -> None:
    jobs = JobManager(home / JOBS_FILE)
    started = threading.Event()

    def running(job: JobHandle) -> None:
        started.set()
        until_cancelled(job)

    jobid = jobs.submit("loop", running).jobid
    assert started.wait(10)
    jobs.close()
    with pytest.raises(JobError, match="closed"):
        jobs.submit("late", lambda job: None)
    reopened = JobManager(home / JOBS_FILE)
    try:
        assert reopened.get(jobid).status is JobStatus.CANCELLED
    finally:
        reopened.close()


def test_close_is_bounded_even_when_a_job_ignores_its_cancel(home: Path) -> None:
    """A job stuck where no cancel reaches it (a store call that never returns) cannot
    hold `close`, nor keep the process alive: it is recorded FAILED and left behind."""
    jobs = JobManager(home / JOBS_FILE)
    started, stuck = threading.Event(), threading.Event()

    def ignores_cancel(job: JobHandle) -> None:
        started.set()
        stuck.wait(30)

    jobid = jobs.submit("stuck", ignores_cancel).jobid
    assert started.wait(10)
    begun = time.monotonic()
    jobs.close(timeout=0.5)
    assert time.monotonic() - begun < 5
    assert all(t.daemon for t in threading.enumerate() if t.name.startswith("strongroom-job"))
    stuck.set()  # it ends later: nothing more is recorded, nothing fails
    reopened = JobManager(home / JOBS_FILE)
    try:
        job = reopened.get(jobid)
        assert job.status is JobStatus.FAILED
        assert "Still running 0.5 s after its job manager was closed" in job.messages[-1]
    finally:
        reopened.close()


@pytest.mark.parametrize("jobid", ["j00000000-0000-0000-0000-000000000000", "nonsense", ""])
def test_unknown_job_ids_are_not_found(jobs: JobManager, jobid: str) -> None:
    with pytest.raises(JobNotFoundError, match="No job has the id"):
        jobs.get(jobid)


def _run_forever_in_another_process(home: Path) -> tuple[subprocess.Popen[str], str]:
    """A process whose JobManager runs one job forever; return it and the job's id."""
    script = textwrap.dedent(
        f"""
        import threading
        from pathlib import Path
        from strongroom import JobManager
        jobs = JobManager(Path({str(home / JOBS_FILE)!r}))
        started = threading.Event()
        def work(job):
            job.stage("waiting")
            job.progress(1, 2)
            started.set()
            threading.Event().wait()
        print(jobs.submit("forever", work).jobid, flush=True)
        started.wait()
        print("executing", flush=True)
        threading.Event().wait()
        """
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    jobid = process.stdout.readline().strip()
    assert process.stdout.readline().strip() == "executing"
    return process, jobid


def _kill(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGKILL)
    process.communicate()


def _status_in_table(home: Path, jobid: str) -> str:
    with closing(sqlite3.connect(home / JOBS_FILE)) as db:
        row = db.execute("SELECT status FROM jobs WHERE jobid = ?", (jobid,)).fetchone()
    return str(row[0])


def test_a_job_of_a_process_that_died_is_failed_when_a_manager_starts(home: Path) -> None:
    process, jobid = _run_forever_in_another_process(home)
    _kill(process)
    assert _status_in_table(home, jobid) == "EXECUTING"
    JobManager(home / JOBS_FILE).close()  # starting is enough
    assert _status_in_table(home, jobid) == "FAILED"
    assert not list((home / f"{JOBS_FILE}.owners").iterdir())


def test_a_job_of_a_living_process_is_left_alone_until_that_process_dies(home: Path) -> None:
    process, jobid = _run_forever_in_another_process(home)
    try:
        watcher = JobManager(home / JOBS_FILE)
        assert watcher.get(jobid).status is JobStatus.EXECUTING
        # asked through the table; this job's work never reports again, so it runs on
        assert watcher.cancel(jobid).status is JobStatus.EXECUTING
    finally:
        _kill(process)
    failed = watcher.get(jobid)  # asking for it notices the owner is gone
    watcher.close()
    assert failed.status is JobStatus.FAILED
    assert failed.messages[-1] == (
        "The strongroom process running this job stopped before it recorded the job's end "
        "(last recorded: EXECUTING). What it had not finished is not visible: a create's "
        "half-written backup is never listed, and a restore's never lands at its target; a "
        "backup that is listed (a restore whose target exists) finished before it stopped."
    )


def test_listing_fails_the_jobs_of_a_process_that_died_and_their_stage(home: Path) -> None:
    watcher = JobManager(home / JOBS_FILE)  # opened first: it has failed nothing yet
    process, jobid = _run_forever_in_another_process(home)
    _kill(process)
    try:
        (job,), total = watcher.find()
    finally:
        watcher.close()
    assert (job.jobid, job.status, total) == (jobid, JobStatus.FAILED, 1)
    assert [(s.name, s.state, s.ended) for s in job.stages] == [("waiting", "failed", job.endtime)]


# -- the engine's jobs ------------------------------------------------------------------


@pytest.fixture
def fast(home: Path) -> Iterator[Engine]:
    engine = Engine(kdf=FAST_KDF, chunk_size=SMALL_CHUNK)
    yield engine
    engine.close()


def test_engine_jobs_back_up_restore_and_delete(
    fast: Engine, home: Path, tree: Path, tmp_path: Path
) -> None:
    created = fast.jobs.wait(
        fast.submit_backup("nightly", [tree], passcode=PASSCODE, description="d").jobid
    )
    assert created.status is JobStatus.COMPLETED, created.messages
    assert created.result == fast.info("nightly").to_dict()
    assert created.bytes_done > 0
    assert [(s.name, s.state) for s in created.stages] == [
        ("validating", "success"),
        ("writing", "success"),
        ("deriving the key", "success"),
        ("committing", "success"),
    ]

    target = tmp_path / "restored"
    restored = fast.jobs.wait(fast.submit_restore("nightly", target, passcode=PASSCODE).jobid)
    assert restored.status is JobStatus.COMPLETED, restored.messages
    assert restored.result == {
        "name": "nightly",
        "backupStore": "backupsDefault",
        "restoreDir": str(target),
    }
    assert snapshot(target / tree.name) == snapshot(tree)
    assert [(s.name, s.state) for s in restored.stages] == [
        ("authenticating", "success"),
        ("reading", "success"),
        ("moving into place", "success"),
    ]

    wrong = fast.jobs.wait(
        fast.submit_restore("nightly", tmp_path / "wrong", passcode="not the passcode").jobid
    )
    assert wrong.status is JobStatus.FAILED
    assert "passcode" in wrong.messages[0].lower()
    assert [(s.name, s.state) for s in wrong.stages] == [("authenticating", "failed")]
    assert not (tmp_path / "wrong").exists()

    deleted = fast.jobs.wait(fast.submit_delete("nightly").jobid)
    assert deleted.status is JobStatus.COMPLETED
    assert [(s.name, s.state) for s in deleted.stages] == [("deleting", "success")]
    assert fast.list() == []


def test_engine_cleanup_job_reports_what_it_deleted(fast: Engine, tree: Path) -> None:
    fast.create("old", [tree], passcode=PASSCODE, retention_date=_soon())
    job = fast.jobs.wait(fast.submit_cleanup(as_of=_soon() + 1).jobid)
    assert job.status is JobStatus.COMPLETED
    assert job.result is not None
    assert [entry["name"] for entry in job.result["backups"]] == ["old"]
    assert not job.scheduled
    assert fast.list() == []
    stop = fast.schedule_cleanup(timedelta(hours=1))
    stop.set()
    _eventually(lambda: fast.jobs.find()[1] == 2)
    assert [listed.scheduled for listed in fast.jobs.find()[0]].count(True) == 1
    with pytest.raises(UnknownStoreError):
        fast.submit_cleanup(["nowhere"])


def test_a_cleanup_job_that_meets_errors_fails_and_keeps_what_it_did(
    fast: Engine, home: Path, tree: Path, tmp_path: Path
) -> None:
    """As `strongroom cleanup` exits 1: whoever watches the jobs (the cleanup system task
    runs unattended) sees FAILED, and the result still says what was deleted."""
    (tmp_path / "unmounted").mkdir()
    config = StoresConfig.load()
    config.add(StoreSpec("nas", (tmp_path / "unmounted").as_uri()))  # never initialised
    config.save()
    fast.use_config(StoresConfig.load())
    fast.create("old", [tree], passcode=PASSCODE, retention_date=_soon())
    job = fast.jobs.wait(fast.submit_cleanup(as_of=_soon() + 1).jobid)
    assert job.status is JobStatus.FAILED
    assert (
        "1 deleted" in job.messages[-1]
        and "holds no backups and no store marker" in (job.messages[-1])
    )
    assert job.result is not None
    assert [entry["name"] for entry in job.result["backups"]] == ["old"]
    assert fast.list() == []


def test_the_cleanup_task_lives_on_after_an_unexpected_error(
    fast: Engine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A raw database error (not a StrongroomError) in one run: logged with its
    traceback, and the next interval's run happens."""
    claim = fast.jobs.claim_periodic
    calls: list[int] = []

    def locked_once(task: str, slot: int) -> bool:
        calls.append(slot)
        if len(calls) == 1:
            raise sqlite3.OperationalError("database is locked")
        return claim(task, slot)

    monkeypatch.setattr(fast.jobs, "claim_periodic", locked_once)
    stop = fast.schedule_cleanup(timedelta(milliseconds=200))
    try:
        _eventually(lambda: fast.jobs.find(operation="cleanup")[1] >= 1)
    finally:
        stop.set()
    assert "database is locked" in caplog.text
    assert "The scheduled cleanup failed to start" in caplog.text


def _soon() -> int:
    return int(time.time() * 1000) + 60_000


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"name": "bad name"}, ConfigError),
        ({"passcode": "short"}, PasscodeError),
        ({"store": "nowhere"}, UnknownStoreError),
        ({"retention_date": "yesterday"}, ConfigError),
        ({"name": "taken"}, BackupExistsError),
    ],
)
def test_a_bad_backup_request_fails_at_once_and_makes_no_job(
    fast: Engine, home: Path, tree: Path, arguments: dict[str, str], error: type[Exception]
) -> None:
    fast.create("taken", [tree], passcode=PASSCODE)
    fast.jobs.wait(fast.submit_backup("warm-up", [tree], passcode=PASSCODE).jobid)
    request = {"name": "fresh", "passcode": PASSCODE, **arguments}
    with pytest.raises(error):
        fast.submit_backup(request.pop("name"), [tree], **request)  # type: ignore[arg-type]
    assert _rows(home) == 1


def test_a_bad_restore_or_delete_request_fails_at_once(
    fast: Engine, home: Path, tree: Path, tmp_path: Path
) -> None:
    fast.create("kept", [tree], passcode=PASSCODE)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "file").write_text("x")
    with pytest.raises(BackupNotFoundError):
        fast.submit_restore("missing", tmp_path / "t", passcode=PASSCODE)
    with pytest.raises(ConfigError, match="not empty"):
        fast.submit_restore("kept", occupied, passcode=PASSCODE)
    with pytest.raises(PasscodeError):
        fast.submit_restore("kept", tmp_path / "t", passcode="short")
    with pytest.raises(BackupNotFoundError):
        fast.submit_delete("missing")
    assert not (home / JOBS_FILE).exists() or _rows(home) == 0


def test_a_cancelled_backup_leaves_no_manifest_and_no_data(fast: Engine, home: Path) -> None:
    first_chunk_written, cancelled = threading.Event(), threading.Event()

    def endless() -> Iterator[bytes]:
        for index in range(1000):
            if index == 10:  # a stream is archived in 8 MiB parts: one part is out by now
                first_chunk_written.set()
                assert cancelled.wait(10)
            yield os.urandom(1024 * 1024)

    job = fast.submit_backup("cancelled", streams={"stream": endless()}, passcode=PASSCODE)
    assert first_chunk_written.wait(10)
    _eventually(lambda: any("/data/" in str(p) for p in _store_files(home)))
    assert fast.jobs.cancel(job.jobid).status is JobStatus.CANCELLING
    cancelled.set()
    ended = fast.jobs.wait(job.jobid)
    assert ended.status is JobStatus.CANCELLED
    assert [(s.name, s.state) for s in ended.stages][-1] == ("writing", "cancelled")
    assert _store_files(home) == []
    assert fast.list() == []


class _GatedStore(LocalStore):
    """A local store whose chunk reads wait at one chunk until the test opens the gate."""

    def __init__(self, directory: Path) -> None:
        super().__init__("backupsDefault", directory.as_uri(), directory)
        self.reached, self.gate = threading.Event(), threading.Event()

    def get(self, key: str, *, limit: int | None = None) -> bytes:
        if key.endswith("0000000003"):
            self.reached.set()
            assert self.gate.wait(10)
        return super().get(key, limit=limit)


def test_a_cancelled_restore_leaves_nothing_behind(home: Path, tree: Path, tmp_path: Path) -> None:
    store = _GatedStore(home / "stores" / "backupsDefault")
    store.initialize()  # a store handed to the engine is ready to use
    engine = Engine(kdf=FAST_KDF, chunk_size=SMALL_CHUNK, stores=[store])
    store.gate.set()
    engine.create("kept", [tree], passcode=PASSCODE)
    store.gate.clear()
    target = tmp_path / "restores" / "here"
    job = engine.submit_restore("kept", target, passcode=PASSCODE)
    assert store.reached.wait(10)
    engine.jobs.cancel(job.jobid)
    store.gate.set()
    ended = engine.jobs.wait(job.jobid)
    engine.close()
    assert ended.status is JobStatus.CANCELLED
    assert not (tmp_path / "restores").exists()


def test_passcodes_never_reach_the_job_table(fast: Engine, home: Path, tree: Path) -> None:
    secret = "Job-Passc0de-never-stored"
    fast.jobs.wait(fast.submit_backup("secret", [tree], passcode=secret).jobid)
    fast.jobs.wait(fast.submit_restore("secret", home / "out", passcode=secret).jobid)
    fast.jobs.wait(fast.submit_restore("secret", home / "bad", passcode=secret + "x").jobid)
    fast.close()
    stored = b"".join(p.read_bytes() for p in home.glob(f"{JOBS_FILE}*") if p.is_file())
    assert b"secret" in stored  # the backup's name is there, so the bytes are readable
    assert secret.encode() not in stored


def test_wait_follows_a_job_that_another_manager_runs(tmp_path: Path) -> None:
    """A replica, or a process restarted with a job id it read from the table, waited on
    a job of another manager: `wait` returned at once, EXECUTING, instead of blocking."""
    release = threading.Event()
    home = tmp_path / "shared"
    with Engine(home=home, kdf=FAST_KDF) as runner, Engine(home=home, kdf=FAST_KDF) as other:
        job = runner.jobs.submit("held", lambda job: {"released": release.wait(30)})
        started = time.monotonic()
        assert other.jobs.wait(job.jobid, timeout=0.5).status is JobStatus.EXECUTING
        assert time.monotonic() - started >= 0.5
        threading.Timer(0.3, release.set).start()
        assert other.jobs.wait(job.jobid, timeout=30).status is JobStatus.COMPLETED


def test_a_wait_on_another_managers_job_ends_when_its_own_manager_closes(
    tmp_path: Path,
) -> None:
    """It went on polling a closed job table: sqlite3.ProgrammingError."""
    release = threading.Event()
    home = tmp_path / "shared"
    with Engine(home=home, kdf=FAST_KDF) as runner:
        job = runner.jobs.submit("held", lambda job: {"released": release.wait(30)})
        other = Engine(home=home, kdf=FAST_KDF)
        raised: list[BaseException] = []

        def wait() -> None:
            try:
                other.jobs.wait(job.jobid, timeout=30)
            except BaseException as exc:
                raised.append(exc)

        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(0.3)
        other.close()
        waiter.join(timeout=30)
        release.set()
    assert len(raised) == 1 and isinstance(raised[0], JobError), raised
    assert "closed while waiting" in str(raised[0])
