"""Background jobs: a persistent job table (SQLite) and a bounded pool that runs the work.

A job is submitted, waits for one of a few worker threads, and ends COMPLETED, FAILED
or CANCELLED. Every change of status is written to `$STRONGROOM_HOME/jobs.sqlite3`,
so a process that restarts still answers for old job ids.

Each JobManager holds an exclusive lock on a small owner file for as long as it lives
(the operating system drops it when the process dies, however it dies). A job left
active by an owner whose lock is free was running in a process that died: it is marked
FAILED, with a message saying so, when a manager starts or when someone asks for it.

The work is a callable that receives a `JobHandle`. It reports progress and stages
through it (each stage is kept with its times), and the handle raises JobCancelledError
inside the work once a cancel was asked for. A job may have a time-out, counted from when
it starts running: a timer then marks it CANCELLING, and the handle raises JobTimeoutError
at the work's next report, so the job ends FAILED. This module knows nothing of backups;
the engine submits its operations here.

Every wait is bounded: `close` cancels the jobs and waits at most `CLOSE_TIMEOUT` for
them; a job still running then (stuck in a store call that never returns) is recorded
FAILED, and its worker, a daemon thread, cannot keep the process from exiting.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import queue
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from concurrent.futures import wait as wait_for
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from .errors import (
    JobCancelledError,
    JobError,
    JobNotFoundError,
    JobTimeoutError,
    StrongroomError,
)
from .format import to_epoch_ms, utc_now

__all__ = ["JOBS_FILE", "Job", "JobHandle", "JobManager", "JobStatus", "Stage", "Work"]

logger = logging.getLogger("strongroom")

#: The job table's file name inside STRONGROOM_HOME.
JOBS_FILE = "jobs.sqlite3"
#: Jobs run at once; each backup or restore already moves its chunks on several threads.
DEFAULT_WORKERS = 2
#: Ended jobs stay in the table this long, then a starting JobManager forgets them.
DEFAULT_KEEP = timedelta(days=30)
#: Progress reaches the table at most this often (seconds); status changes reach it at once.
PROGRESS_INTERVAL = 0.5
#: 1: the first table; 2: adds the stages (JSON) and whether a schedule submitted the job.
SCHEMA_VERSION = 2
#: The longest `close` waits for cancelled jobs to stop (seconds).
CLOSE_TIMEOUT = 10.0
_JOB_ID = re.compile(r"j[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class JobStatus(StrEnum):
    SUBMITTED = "SUBMITTED"
    EXECUTING = "EXECUTING"
    CANCELLING = "CANCELLING"
    CANCELLED = "CANCELLED"
    FAILED = "FAILED"
    COMPLETED = "COMPLETED"

    @property
    def active(self) -> bool:
        """The job has not ended yet."""
        return self in (JobStatus.SUBMITTED, JobStatus.EXECUTING, JobStatus.CANCELLING)

    @property
    def state(self) -> str:
        """The status as the status document and the stages say it: running (not ended
        yet), success, failed or cancelled."""
        if self.active:
            return "running"
        return {JobStatus.COMPLETED: "success", JobStatus.FAILED: "failed"}.get(self, "cancelled")


@dataclass(frozen=True, slots=True)
class Stage:
    """One step a job's work reported through `JobHandle.stage`; times in epoch ms."""

    name: str
    #: running, success, failed or cancelled (see JobStatus.state).
    state: str
    started: int
    ended: int | None = None

    def to_dict(self, now: int) -> dict[str, Any]:
        """The stage as the admin API shows it; a running stage's duration counts to `now`."""
        return {
            "name": self.name,
            "state": self.state,
            "lastUpdated": self.started if self.ended is None else self.ended,
            "duration": (now if self.ended is None else self.ended) - self.started,
        }


@dataclass(frozen=True, slots=True)
class Job:
    """One job as clients see it. Never holds a passcode: the work's closure does."""

    jobid: str
    operation: str
    status: JobStatus
    store: str | None
    name: str | None
    #: Epoch ms: when the job was submitted.
    starttime: int
    updatedtime: int
    endtime: int | None = None
    bytes_done: int = 0
    bytes_total: int | None = None
    stage: str = "queued"
    messages: tuple[str, ...] = ()
    result: Mapping[str, Any] | None = None
    operation_uri: str | None = None
    #: The stages the work reported, oldest first; only the last may still be running.
    stages: tuple[Stage, ...] = ()
    #: Submitted by a schedule (the cleanup system task), not by a person.
    scheduled: bool = False

    @property
    def percent(self) -> int | None:
        """Whole percent done; below 100 until the job completes (a create's total is an
        estimate), None while the total is unknown."""
        if self.status is JobStatus.COMPLETED:
            return 100
        if not self.bytes_total:
            return None
        return min(99, self.bytes_done * 100 // self.bytes_total)

    def to_dict(self) -> dict[str, Any]:
        """The admin API's job document."""
        return {
            "jobid": self.jobid,
            "status": self.status.value,
            "operation": self.operation,
            "backupStore": self.store,
            "backupName": self.name,
            "operationURI": self.operation_uri,
            "starttime": self.starttime,
            "endtime": self.endtime,
            "updatedtime": self.updatedtime,
            "progress": {
                "bytesDone": self.bytes_done,
                "bytesTotal": self.bytes_total,
                "percent": self.percent,
                "stage": self.stage,
            },
            "messages": list(self.messages),
            "result": None if self.result is None else dict(self.result),
            "stages": self.stage_dicts(),
        }

    def stage_dicts(self) -> list[dict[str, Any]]:
        """The stages as documents; a running one's duration counts to `updatedtime`, the
        job's last report."""
        return [stage.to_dict(self.endtime or self.updatedtime) for stage in self.stages]


class JobHandle:
    """What a job's work sees: progress and stage reports, and cancellation."""

    def __init__(self, manager: JobManager, jobid: str) -> None:
        self.jobid = jobid
        self._manager = manager
        self._cancel = threading.Event()
        #: Set (before the cancel) when the job ran past its time-out: what the job says.
        self._timed_out: str | None = None
        self._last_saved = 0.0

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def progress(self, done: int, total: int | None) -> None:
        """A `Progress` callback; it raises JobCancelledError once the job is cancelled,
        which stops a create or restore at its next chunk of bytes."""
        self.raise_if_cancelled()
        now = time.monotonic()
        save = now - self._last_saved >= PROGRESS_INTERVAL
        if save:
            self._last_saved = now
        self._manager._update(self.jobid, save=save, bytes_done=done, bytes_total=total)

    def stage(self, stage: str) -> None:
        """Name what the work is doing now: the previous stage ends with success, and
        this one runs (shown in the job's progress and stages)."""
        self.raise_if_cancelled()
        self._manager._start_stage(self.jobid, stage)

    def raise_if_cancelled(self) -> None:
        if self._cancel.is_set():
            if self._timed_out is not None:
                raise JobTimeoutError(self._timed_out)
            raise JobCancelledError(f"Job {self.jobid} was cancelled.")


#: A job's work: runs on a worker thread and returns the job's result document.
Work = Callable[[JobHandle], Mapping[str, Any] | None]


@dataclass(slots=True)
class _Running:
    """A job this manager runs: its latest state, its handle, its future, and its
    time-out with the timer that enforces it once the job runs."""

    job: Job
    handle: JobHandle
    timeout: timedelta | None = None
    timer: threading.Timer | None = None
    future: Future[None] = field(default_factory=Future)


class JobManager:
    """Runs jobs on a bounded thread pool and keeps every job in the job table."""

    def __init__(
        self,
        path: Path,
        *,
        workers: int = DEFAULT_WORKERS,
        clock: Callable[[], datetime] = utc_now,
        keep: timedelta = DEFAULT_KEEP,
    ) -> None:
        self._table = JobTable(path)
        self._owners = path.with_name(f"{path.name}.owners")
        self._owner = _OwnerLock(self._owners, uuid.uuid4().hex)
        self._clock = clock
        self._lock = threading.Lock()
        self._running: dict[str, _Running] = {}
        self._closed = False
        self._queue: queue.SimpleQueue[tuple[_Running, Work] | None] = queue.SimpleQueue()
        self._workers = [
            threading.Thread(target=self._serve, name=f"strongroom-job-{n}", daemon=True)
            for n in range(workers)
        ]
        for worker in self._workers:
            worker.start()
        for owner in self._table.active_owners() - {self._owner.name}:
            self._fail_if_orphaned(owner)
        self._table.forget_ended(before=self._now() - int(keep.total_seconds() * 1000))

    def submit(
        self,
        operation: str,
        work: Work,
        *,
        store: str | None = None,
        name: str | None = None,
        operation_uri: str | None = None,
        timeout: timedelta | None = None,
        scheduled: bool = False,
    ) -> Job:
        """Queue `work` and return its job (SUBMITTED) at once. A job still running
        `timeout` after it started is cancelled and ends FAILED."""
        if timeout is not None and timeout <= timedelta(0):
            raise JobError("A job's time-out must be positive.")
        now = self._now()
        job = Job(
            jobid=f"j{uuid.uuid4()}",
            operation=operation,
            status=JobStatus.SUBMITTED,
            store=store,
            name=name,
            starttime=now,
            updatedtime=now,
            operation_uri=operation_uri,
            scheduled=scheduled,
        )
        with self._lock:
            if self._closed:
                raise JobError("The job manager has been closed; no new job can start.")
            running = _Running(job, JobHandle(self, job.jobid), timeout)
            self._table.save(job, self._owner.name)
            self._running[job.jobid] = running
            self._queue.put((running, work))
        logger.info("Job %s submitted: %s %s/%s", job.jobid, operation, store, name)
        return job

    def get(self, jobid: str) -> Job:
        """The job's latest state, from memory if it runs here, else from the table."""
        with self._lock:
            if jobid in self._running:
                return self._running[jobid].job
        job, owner = self._load(jobid)
        if job.status.active and owner != self._owner.name and self._fail_if_orphaned(owner):
            job, _ = self._load(jobid)
        return job

    def find(
        self,
        *,
        status: JobStatus | None = None,
        operation: str | None = None,
        offset: int = 0,
        limit: int | None = 10,
    ) -> tuple[list[Job], int]:
        """Up to `limit` jobs (None: all), newest first, after skipping `offset`, and how
        many match in all. Jobs of processes that died read FAILED, as in `get`."""
        for owner in self._table.active_owners() - {self._owner.name}:
            self._fail_if_orphaned(owner)
        found, total = self._table.find(status, operation, offset, limit)
        with self._lock:
            latest = [
                self._running[job.jobid].job if job.jobid in self._running else job for job in found
            ]
        return latest, total

    def wait(self, jobid: str, timeout: float | None = None) -> Job:
        """Block until the job ends (or `timeout` seconds pass); return its state."""
        with self._lock:
            running = self._running.get(jobid)
        if running is not None:
            wait_for([running.future], timeout)
        return self.get(jobid)

    def cancel(self, jobid: str) -> Job:
        """Stop the job: at once if it is queued, at its next progress report if it runs.

        A job that has already ended is returned as it is.
        """
        with self._lock:
            running = self._running.get(jobid)
            if running is not None:
                running.handle._cancel.set()
                if running.future.cancel():
                    return self._end(running, JobStatus.CANCELLED, "Cancelled before it started.")
                if running.job.status is JobStatus.EXECUTING:
                    self._set(
                        running,
                        save=True,
                        status=JobStatus.CANCELLING,
                        messages=(*running.job.messages, _CANCELLING_MESSAGE),
                    )
                return running.job
        job = self.get(jobid)
        if job.status.active:
            raise JobError(
                f"Job {jobid} runs in another job manager (another Engine on this home, or "
                "another process); cancel it through that one."
            )
        return job

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Cancel what is queued or running, wait up to `timeout` seconds for it to stop,
        and release the table and the owner lock. A job still running then is recorded
        FAILED and left to its daemon thread, whose later outcome is not recorded."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            jobids = list(self._running)
        for jobid in jobids:
            self.cancel(jobid)
        for _ in self._workers:
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            for running in list(self._running.values()):
                logger.warning(
                    "Job %s did not stop within %g s of close", running.job.jobid, timeout
                )
                self._end(running, JobStatus.FAILED, _ABANDONED_MESSAGE.format(timeout=timeout))
            self._owner.release()
            self._table.close()

    # -- internals --------------------------------------------------------------------

    def _serve(self) -> None:
        """A worker: run queued jobs until `close` sends None (a cancelled future is a job
        cancelled before it started)."""
        while (task := self._queue.get()) is not None:
            running, work = task
            if running.future.set_running_or_notify_cancel():
                try:
                    self._run(running.handle, work)
                except Exception:  # the job table failed; the worker lives on
                    logger.exception("Job %s could not be recorded", running.job.jobid)
                finally:
                    running.future.set_result(None)

    def _run(self, handle: JobHandle, work: Work) -> None:
        with self._lock:
            running = self._running.get(handle.jobid)
            if running is None:  # abandoned by `close`
                return
            if handle.cancel_requested:
                self._end(running, JobStatus.CANCELLED, "Cancelled before it started.")
                return
            self._set(running, save=True, status=JobStatus.EXECUTING, stage="running")
            if running.timeout is not None:
                seconds = running.timeout.total_seconds()
                running.timer = threading.Timer(seconds, self._time_out, (running, seconds))
                running.timer.daemon = True
                running.timer.start()
        try:
            result = work(handle)
        except JobTimeoutError as exc:
            self._finish(running, JobStatus.FAILED, str(exc))
        except JobCancelledError:
            self._finish(running, JobStatus.CANCELLED, "Cancelled; nothing was committed.")
        except StrongroomError as exc:
            self._finish(running, JobStatus.FAILED, str(exc))
        except Exception as exc:  # the job records the failure; the traceback goes to the log
            logger.exception("Job %s failed unexpectedly", handle.jobid)
            self._finish(
                running,
                JobStatus.FAILED,
                f"Unexpected error ({type(exc).__name__}); the server log has the details.",
            )
        else:
            late = " before the cancel took effect" if handle.cancel_requested else ""
            self._finish(running, JobStatus.COMPLETED, f"Completed{late}.", result)

    def _finish(
        self,
        running: _Running,
        status: JobStatus,
        message: str,
        result: Mapping[str, Any] | None = None,
    ) -> None:
        with self._lock:
            if self._running.get(running.job.jobid) is running:  # not abandoned by `close`
                self._end(running, status, message, result)

    def _end(
        self,
        running: _Running,
        status: JobStatus,
        message: str,
        result: Mapping[str, Any] | None = None,
    ) -> Job:
        """Record the job's end and forget it (the caller holds the lock)."""
        stage = "done" if status is JobStatus.COMPLETED else running.job.stage
        now = self._now()
        self._set(
            running,
            save=True,
            status=status,
            stage=stage,
            stages=_end_stages(running.job.stages, status.state, now),
            endtime=now,
            messages=(*running.job.messages, message),
            result=result,
        )
        if running.timer is not None:
            running.timer.cancel()
        del self._running[running.job.jobid]
        logger.info("Job %s %s: %s", running.job.jobid, status.value, message)
        return running.job

    def _update(self, jobid: str, *, save: bool, **changes: Any) -> None:
        with self._lock:
            running = self._running.get(jobid)
            if running is not None:
                self._set(running, save=save, **changes)

    def _start_stage(self, jobid: str, name: str) -> None:
        """End the running stage with success and start `name`."""
        with self._lock:
            running = self._running.get(jobid)
            if running is not None:
                now = self._now()
                stages = (
                    *_end_stages(running.job.stages, "success", now),
                    Stage(name, "running", now),
                )
                self._set(running, save=True, stage=name, stages=stages)

    def _time_out(self, running: _Running, seconds: float) -> None:
        """The timer's end: have the handle raise JobTimeoutError at the work's next report."""
        with self._lock:
            executing = running.job.status is JobStatus.EXECUTING
            if self._running.get(running.job.jobid) is not running or not executing:
                return  # ended, or a cancel is already on its way
            running.handle._timed_out = _TIMED_OUT_MESSAGE.format(seconds=seconds)
            running.handle._cancel.set()
            self._set(
                running,
                save=True,
                status=JobStatus.CANCELLING,
                messages=(*running.job.messages, _TIMING_OUT_MESSAGE.format(seconds=seconds)),
            )

    def _set(self, running: _Running, *, save: bool, **changes: Any) -> None:
        running.job = replace(running.job, updatedtime=self._now(), **changes)
        if save:
            self._table.save(running.job, self._owner.name)

    def _load(self, jobid: str) -> tuple[Job, str]:
        found = self._table.load(jobid) if _JOB_ID.fullmatch(jobid) else None
        if found is None:
            raise JobNotFoundError(
                f"No job has the id {jobid!r}; job ids look like "
                "j7d22f855-2c9f-4934-94e4-93c5e85cd271."
            )
        return found

    def _fail_if_orphaned(self, owner: str) -> bool:
        """Mark the owner's active jobs FAILED if its process is gone; say whether it was."""
        with _lock_if_dead(self._owners, owner) as dead:
            if dead:
                failed = self._table.fail_active(owner, self._now(), _ORPHAN_MESSAGE)
                if failed:
                    logger.warning("Marked %d job(s) of a stopped process FAILED.", failed)
            return dead

    def _now(self) -> int:
        return to_epoch_ms(self._clock())


_CANCELLING_MESSAGE = (
    "Cancel asked: the job stops at its next step (a chunk read or written, a stage)."
)
_TIMING_OUT_MESSAGE = (
    "Still running after its time-out of {seconds:g} s: it is cancelled, and stops at its "
    "next step."
)
_TIMED_OUT_MESSAGE = (
    "Timed out: still running after its time-out of {seconds:g} s, so it was cancelled; "
    "nothing was committed."
)
_ABANDONED_MESSAGE = (
    "Still running {timeout:g} s after its job manager was closed (cancelled, but stuck, "
    "most likely in a store call); it was left behind, and whatever it did after this is "
    "not recorded here."
)
_ORPHAN_MESSAGE = (
    "The strongroom process running this job stopped while the job was {status}; "
    "the job did not finish, and nothing it left half-written is listed as a backup."
)


class JobTable:
    """Jobs as rows of one SQLite table (WAL, so other processes read while one writes)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        with self._transaction():
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise JobError(
                    f"The job table {path} was written by a newer strongroom "
                    f"(schema {version}); upgrade strongroom to read it."
                )
            self._db.execute(
                """CREATE TABLE IF NOT EXISTS jobs (
                    jobid TEXT PRIMARY KEY, owner TEXT NOT NULL, status TEXT NOT NULL,
                    operation TEXT NOT NULL, store TEXT, name TEXT,
                    starttime INTEGER NOT NULL, endtime INTEGER, updatedtime INTEGER NOT NULL,
                    bytes_done INTEGER NOT NULL, bytes_total INTEGER, stage TEXT NOT NULL,
                    messages TEXT NOT NULL, result TEXT, operation_uri TEXT)"""
            )
            self._db.execute("CREATE INDEX IF NOT EXISTS active_jobs ON jobs (status, owner)")
            if version < 2:  # rows of schema 1 get no stages and count as not scheduled
                self._db.execute("ALTER TABLE jobs ADD COLUMN stages TEXT NOT NULL DEFAULT '[]'")
                self._db.execute("ALTER TABLE jobs ADD COLUMN scheduled INTEGER NOT NULL DEFAULT 0")
                self._db.execute("CREATE INDEX newest_jobs ON jobs (starttime)")
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def save(self, job: Job, owner: str) -> None:
        row = {
            "jobid": job.jobid,
            "owner": owner,
            "status": job.status.value,
            "operation": job.operation,
            "store": job.store,
            "name": job.name,
            "starttime": job.starttime,
            "endtime": job.endtime,
            "updatedtime": job.updatedtime,
            "bytes_done": job.bytes_done,
            "bytes_total": job.bytes_total,
            "stage": job.stage,
            "messages": json.dumps(list(job.messages)),
            "result": None if job.result is None else json.dumps(dict(job.result)),
            "operation_uri": job.operation_uri,
            "stages": json.dumps([asdict(stage) for stage in job.stages]),
            "scheduled": job.scheduled,
        }
        columns = ", ".join(row)
        values = ", ".join(f":{column}" for column in row)
        with self._lock:
            self._db.execute(f"INSERT OR REPLACE INTO jobs ({columns}) VALUES ({values})", row)

    def load(self, jobid: str) -> tuple[Job, str] | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE jobid = ?", (jobid,)).fetchone()
        return None if row is None else (_from_row(row), row["owner"])

    def find(
        self, status: JobStatus | None, operation: str | None, offset: int, limit: int | None
    ) -> tuple[list[Job], int]:
        """Jobs with that status and operation (None: any), newest first; and how many."""
        where = (
            "WHERE (:status IS NULL OR status = :status) "
            "AND (:operation IS NULL OR operation = :operation)"
        )
        match = {"status": None if status is None else status.value, "operation": operation}
        with self._lock:
            total: int = self._db.execute(f"SELECT count(*) FROM jobs {where}", match).fetchone()[0]
            rows = self._db.execute(
                f"SELECT * FROM jobs {where} ORDER BY starttime DESC, jobid DESC "
                "LIMIT :limit OFFSET :offset",
                {**match, "limit": -1 if limit is None else limit, "offset": offset},
            ).fetchall()
        return [_from_row(row) for row in rows], total

    def active_owners(self) -> set[str]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT DISTINCT owner FROM jobs WHERE status IN ({_ACTIVE_SQL})"
            ).fetchall()
        return {row["owner"] for row in rows}

    def fail_active(self, owner: str, now: int, message: str) -> int:
        """Mark the owner's active jobs FAILED in one transaction; return how many."""
        with self._lock, self._transaction():
            rows = self._db.execute(
                f"SELECT * FROM jobs WHERE owner = ? AND status IN ({_ACTIVE_SQL})", (owner,)
            ).fetchall()
            for row in rows:
                job = _from_row(row)
                messages = [*job.messages, message.format(status=job.status.value)]
                stages = [asdict(stage) for stage in _end_stages(job.stages, "failed", now)]
                self._db.execute(
                    "UPDATE jobs SET status = ?, endtime = ?, updatedtime = ?, messages = ?, "
                    "stages = ? WHERE jobid = ?",
                    (
                        JobStatus.FAILED.value,
                        now,
                        now,
                        json.dumps(messages),
                        json.dumps(stages),
                        job.jobid,
                    ),
                )
        return len(rows)

    def forget_ended(self, before: int) -> None:
        """Delete the jobs that ended before `before` (epoch ms), so the table stays small."""
        with self._lock:
            self._db.execute(
                f"DELETE FROM jobs WHERE status NOT IN ({_ACTIVE_SQL}) AND endtime < ?", (before,)
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")


_ACTIVE_SQL = ",".join(f"'{status.value}'" for status in JobStatus if status.active)


def _from_row(row: sqlite3.Row) -> Job:
    return Job(
        jobid=row["jobid"],
        operation=row["operation"],
        status=JobStatus(row["status"]),
        store=row["store"],
        name=row["name"],
        starttime=row["starttime"],
        updatedtime=row["updatedtime"],
        endtime=row["endtime"],
        bytes_done=row["bytes_done"],
        bytes_total=row["bytes_total"],
        stage=row["stage"],
        messages=tuple(json.loads(row["messages"])),
        result=None if row["result"] is None else json.loads(row["result"]),
        operation_uri=row["operation_uri"],
        stages=tuple(Stage(**stage) for stage in json.loads(row["stages"])),
        scheduled=bool(row["scheduled"]),
    )


def _end_stages(stages: tuple[Stage, ...], state: str, now: int) -> tuple[Stage, ...]:
    """The stages with the running one ended in `state` at `now`."""
    return tuple(s if s.ended is not None else replace(s, state=state, ended=now) for s in stages)


class _OwnerLock:
    """An exclusive lock on `<directory>/<name>.lock`, held while this manager lives."""

    def __init__(self, directory: Path, name: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.name = name
        self._path = directory / f"{name}.lock"
        self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def release(self) -> None:
        self._path.unlink(missing_ok=True)
        os.close(self._fd)


@contextmanager
def _lock_if_dead(directory: Path, owner: str) -> Iterator[bool]:
    """Yield whether the owner's process is gone, holding its lock meanwhile if so."""
    path = directory / f"{owner}.lock"
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        yield True
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
        with suppress(FileNotFoundError):
            path.unlink()
    finally:
        os.close(fd)
