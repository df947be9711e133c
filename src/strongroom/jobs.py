"""Background jobs: a bounded pool that runs the work, and a job store that keeps every job.

A job is submitted, waits for one of a few worker threads, and ends COMPLETED, FAILED
or CANCELLED. Every change of status is written to the job store (see jobstore/): by
default `$STRONGROOM_HOME/jobs.sqlite3`, or a PostgreSQL database that several replicas
share. A process that restarts, or another replica, still answers for old job ids.

A job runs in the manager that accepted it. A job whose runner is gone (its process
died; for PostgreSQL, its lease ran out) is marked FAILED, with a message saying so, by
whichever manager notices first: when one starts, when someone asks for the job, and
every third of the lease (the upkeep thread, jobupkeep.py). A cancel asked of another
manager's job is written to the store, and the runner reads it at its next save (a
progress report) or lease renewal. An ended job never changes again: a runner that finds
its job ended in the store (failed by another manager while this one could not reach the
store) stops it at its next step, as if cancelled, so that nothing is committed after
the job read FAILED.

The work is a callable that receives a `JobHandle`. It reports progress and stages
through it (each stage is kept with its times), and the handle raises JobCancelledError
inside the work once a cancel was asked for. A job may have a time-out, counted from when
it starts running: a timer then marks it CANCELLING, and the handle raises JobTimeoutError
at the work's next report, so the job ends FAILED. This module knows nothing of backups;
the engine submits its operations here.

While the store cannot be reached, new jobs are refused (JobStoreUnavailableError), and
running jobs run on: their progress is kept in memory, and their end is written, retried
with backoff, once the store is back.

Every wait is bounded: `close` cancels the jobs and waits at most `CLOSE_TIMEOUT` for
them; a job still running then (stuck in a store call that never returns) is recorded
FAILED, and its worker, a daemon thread, cannot keep the process from exiting. That one
exception to "nothing is committed after FAILED" is the store call itself: should it
return, what it wrote stands (a create stuck in its commit may yet be listed).
"""

from __future__ import annotations

import logging
import math
import os
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import wait as wait_for
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from .errors import (
    ConfigError,
    JobCancelledError,
    JobError,
    JobIncompleteError,
    JobNotFoundError,
    JobStoreUnavailableError,
    JobTimeoutError,
    StrongroomError,
)
from .format import quoted, to_epoch_ms, utc_now
from .jobrecord import Job, JobStatus, Stage, end_stages
from .jobstore import Saved, open_job_store
from .jobupkeep import JobUpkeep, warn_ended_already

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
#: The longest `close` waits for cancelled jobs to stop (seconds).
CLOSE_TIMEOUT = 10.0
#: How long a job's runner holds it without renewing (STRONGROOM_JOB_LEASE, seconds).
DEFAULT_LEASE = timedelta(seconds=60)
#: How often `wait` reads the table for a job another manager runs: first, and at most.
WAIT_POLL_MIN, WAIT_POLL_MAX = 0.05, 1.0
_JOB_ID = re.compile(r"j[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


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


class JobManager(JobUpkeep):
    """Runs jobs on a bounded thread pool and keeps every job in the job store.

    `location` is a job-database URL (sqlite:///PATH, postgresql://...) or the path of
    an SQLite file. `lease`: how long this manager's jobs stay its own without renewal
    (default STRONGROOM_JOB_LEASE, else 60 s); it renews them every third of that.
    `namespace`: the deployment whose jobs these are, in a table several share; the
    manager sees, cancels and claims periodic tasks only within it.
    """

    def __init__(
        self,
        location: str | os.PathLike[str],
        *,
        workers: int = DEFAULT_WORKERS,
        clock: Callable[[], datetime] = utc_now,
        keep: timedelta = DEFAULT_KEEP,
        lease: timedelta | None = None,
        namespace: str = "",
    ) -> None:
        self._lease = lease if lease is not None else lease_from_environment()
        self._clock, self._keep = clock, keep
        self._store = open_job_store(location, uuid.uuid4().hex, self._lease, namespace)
        try:
            self._fail_orphans()
            self._forget_ended()
        except BaseException:
            self._store.close()
            raise
        self._lock = threading.Lock()
        self._running: dict[str, _Running] = {}
        #: Jobs that ended while the store was unreachable: their end is written later.
        self._unrecorded: dict[str, Job] = {}
        self._outage = False
        self._closed = False
        self._wake = threading.Event()
        self._queue: queue.SimpleQueue[tuple[_Running, Work] | None] = queue.SimpleQueue()
        self._workers = [
            threading.Thread(target=self._serve, name=f"strongroom-job-{n}", daemon=True)
            for n in range(workers)
        ]
        self._upkeeper = threading.Thread(
            target=self._keep_up, name="strongroom-job-upkeep", daemon=True
        )
        for thread in (*self._workers, self._upkeeper):
            thread.start()

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
            self._store.save(job)
            self._running[job.jobid] = running
            self._queue.put((running, work))
        target = "/".join(part for part in (store, name) if part)
        logger.info("Job %s submitted: %s %s", job.jobid, operation, target or "(all stores)")
        return job

    def get(self, jobid: str) -> Job:
        """The job's latest state, from memory if it runs here, else from the store."""
        with self._lock:
            if jobid in self._running or jobid in self._unrecorded:
                return self._latest_locked(jobid)
        job = self._load(jobid)
        if job.status.active and self._fail_orphans():
            job = self._load(jobid)
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
        self._fail_orphans()
        found, total = self._store.find(status, operation, offset, limit)
        with self._lock:
            latest = [self._latest_locked(job.jobid, job) for job in found]
        return latest, total

    def wait(self, jobid: str, timeout: float | None = None) -> Job:
        """Block until the job ends (or `timeout` seconds pass); return its state. A job
        another manager runs (a replica, another process on the same table) is followed
        in the table, more slowly the longer it runs (at least every WAIT_POLL_MAX s)."""
        with self._lock:
            running = self._running.get(jobid)
        if running is not None:
            wait_for([running.future], timeout)
            return self.get(jobid)
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        pause = WAIT_POLL_MIN
        job = self.get(jobid)  # which also fails the job if its runner is gone
        while job.status.active and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(pause, left))
            pause = min(2 * pause, WAIT_POLL_MAX)
            if self._closed:
                raise JobError("This job manager was closed while waiting for a job.")
            job = self._load(jobid)  # the upkeep thread fails it if its runner dies
        return job

    def cancel(self, jobid: str) -> Job:
        """Stop the job: at once if it is queued, at its next progress report if it runs.

        A job another manager runs (another process or replica sharing the store) is
        asked through the store: its runner stops it at its next progress report, or
        within a third of the lease if it is queued, so it may still read EXECUTING now.
        A job that has already ended is returned as it is.
        """
        with self._lock:
            running = self._running.get(jobid)
            if running is not None:
                return self._cancel_locked(running)
        job = self.get(jobid)
        if job.status.active and self._store.request_cancel(jobid):
            logger.info("Job %s: cancel asked of the job manager running it", jobid)
        return job

    def claim_periodic(self, task: str, slot: int) -> bool:
        """Whether this manager runs `task`'s run number `slot` (for instance the epoch
        time divided by the task's interval): one caller per slot among all the managers
        sharing the store, so a periodic task runs once per interval across replicas."""
        return self._store.claim_periodic(task, slot)

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Cancel what is queued or running, wait up to `timeout` seconds for it to stop,
        and release the store. A job still running then is recorded FAILED and left to
        its daemon thread, whose later outcome is not recorded. Ends the store could not
        take are retried until `timeout` too."""
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
        self._wake.set()
        self._upkeeper.join(max(0.0, deadline - time.monotonic()))
        self._record_ends_until(deadline)
        self._store.close()

    # -- internals --------------------------------------------------------------------

    def _serve(self) -> None:
        """A worker: run queued jobs until `close` sends None."""
        while self._serve_next():
            pass

    def _serve_next(self) -> bool:
        """Run the next queued job (a cancelled future is a job cancelled before it
        started); False once `close` sends None. A method of its own so that nothing of
        the job (its work holds the Engine, the passcode, the caller's streams) stays
        referenced while the worker waits for the next."""
        task = self._queue.get()
        if task is None:
            return False
        running, work = task
        future, jobid = running.future, running.job.jobid
        if future.set_running_or_notify_cancel():
            try:
                self._run(running.handle, work)
            except Exception:  # the job table failed; the worker lives on
                logger.exception("Job %s could not be recorded", jobid)
            finally:
                del task, running, work  # gone before a waiter wakes
                future.set_result(None)
        return True

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
        except JobIncompleteError as exc:
            self._finish(running, JobStatus.FAILED, str(exc), exc.result)
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
            stages=end_stages(running.job.stages, status.state, now),
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
                    *end_stages(running.job.stages, "success", now),
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
            self._save(running)

    def _save(self, running: _Running) -> None:
        """Write the job (the caller holds the lock), and act on a cancel asked through
        the store. While the store is unreachable the job runs on without waiting for
        it: a later save catches up, and an end is kept for the upkeep thread to write
        (which also finds when the store is back)."""
        if not self._outage:
            try:
                saved = self._store.save(running.job)
            except JobStoreUnavailableError as exc:
                self._note_outage(exc)
            else:
                self._act_on_locked(running, saved)
                return
        if not running.job.status.active:
            self._unrecorded[running.job.jobid] = running.job
            self._wake.set()

    def _act_on_locked(self, running: _Running, saved: Saved) -> None:
        """Act on what a save or renewal found (the caller holds the lock): a cancel
        asked through the store, or the job ended there already (another manager failed
        it while this one could not reach the store). Either stops the work before it
        commits anything; an ended record in the store stands."""
        if saved is Saved.CANCEL_ASKED:
            if running.job.status.active and not running.handle.cancel_requested:
                self._cancel_locked(running)
        elif saved is Saved.ENDED:
            self._ended_elsewhere_locked(running)

    def _ended_elsewhere_locked(self, running: _Running) -> None:
        if running.job.status.active:
            if not running.handle.cancel_requested:
                logger.warning(
                    "Job %s was marked ended by another job manager while this one could "
                    "not reach the job database; it stops at its next step.",
                    running.job.jobid,
                )
                self._cancel_locked(running)
        else:
            warn_ended_already(running.job)

    def _cancel_locked(self, running: _Running) -> Job:
        """Cancel a job of this manager (the caller holds the lock)."""
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

    def _latest_locked(self, jobid: str, stored: Job | None = None) -> Job:
        """The job as this manager knows it best: running here, ended but not yet
        recorded, or else as `stored` (the caller holds the lock)."""
        if jobid in self._running:
            return self._running[jobid].job
        latest = self._unrecorded.get(jobid, stored)
        if latest is None:
            raise JobNotFoundError(f"No job has the id {quoted(jobid)}.")
        return latest

    def _load(self, jobid: str) -> Job:
        found = self._store.load(jobid) if _JOB_ID.fullmatch(jobid) else None
        if found is None:
            raise JobNotFoundError(
                f"No job has the id {quoted(jobid)}; job ids look like "
                "j7d22f855-2c9f-4934-94e4-93c5e85cd271."
            )
        return found

    def _now(self) -> int:
        return to_epoch_ms(self._clock())


def lease_from_environment() -> timedelta:
    """STRONGROOM_JOB_LEASE (seconds), else DEFAULT_LEASE."""
    text = os.environ.get("STRONGROOM_JOB_LEASE", "").strip()
    if not text:
        return DEFAULT_LEASE
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigError(
            f"STRONGROOM_JOB_LEASE must be a number of seconds above 0 (such as 60), not {text!r}."
        )
    return timedelta(seconds=seconds)


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
