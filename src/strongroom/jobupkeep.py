"""A job manager's upkeep: what keeps the job store true while the manager runs.

Every third of the lease (sooner while a job's end waits for the store, backing off while
the store cannot be reached) the upkeep thread writes the ends the store missed during an
outage, renews this manager's hold on its jobs and acts on the cancels asked of them
through the store, and marks FAILED the jobs of managers that stopped; once a day it
forgets the jobs that ended more than `keep` ago. `JobManager` (jobs.py) runs it; the
state it shares with the manager is read and changed under the manager's lock.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import abstractmethod
from datetime import timedelta
from typing import TYPE_CHECKING

from .errors import JobStoreUnavailableError
from .jobrecord import Job
from .jobstore import JobStore, Saved

if TYPE_CHECKING:
    from .jobs import _Running

__all__ = ["FORGET_INTERVAL", "RETRY_DELAY", "JobUpkeep", "warn_ended_already"]

logger = logging.getLogger("strongroom")

#: The first wait before trying an unreachable store again; it doubles up to lease/3.
RETRY_DELAY = 0.5
#: How often a running manager forgets the jobs that ended more than `keep` ago (seconds).
FORGET_INTERVAL = 24 * 60 * 60.0
#: A job's process may stop after its work committed but before its end was recorded (the
#: job database was down then): so the message says what is visible either way.
_ORPHAN_MESSAGE = (
    "The strongroom process running this job stopped before it recorded the job's end "
    "(last recorded: {status}). What it had not finished is not visible: a create's "
    "half-written backup is never listed, and a restore's never lands at its target; a "
    "backup that is listed (a restore whose target exists) finished before it stopped."
)


class JobUpkeep:
    """The upkeep half of a JobManager: its thread's loop (`_keep_up`), and the writes of
    ends an outage held back (`_record_ends_until` at close)."""

    _store: JobStore
    _lease: timedelta
    _keep: timedelta
    _lock: threading.Lock
    _running: dict[str, _Running]
    #: Jobs that ended while the store was unreachable: their end is written later.
    _unrecorded: dict[str, Job]
    _outage: bool
    _closed: bool
    _wake: threading.Event
    _forgotten_at: float

    @abstractmethod
    def _act_on_locked(self, running: _Running, saved: Saved) -> None: ...

    @abstractmethod
    def _now(self) -> int: ...

    def _fail_orphans(self) -> bool:
        """Mark FAILED the jobs whose runner is gone; say whether there were any."""
        failed = self._store.fail_orphans(self._now(), _ORPHAN_MESSAGE)
        if failed:
            logger.warning("Marked %d job(s) of a stopped process FAILED.", failed)
        return failed > 0

    def _keep_up(self) -> None:
        """The upkeep thread: every third of the lease (sooner when a job's end awaits
        the store, backing off while it is unreachable), write the ends the store
        missed, renew this manager's leases and read the cancels asked of its jobs, and
        fail the jobs of managers that stopped; and once a day forget old ended jobs."""
        period = self._lease.total_seconds() / 3
        delay = period
        while True:
            self._wake.wait(delay)
            self._wake.clear()
            if self._closed:
                return
            try:
                self._record_ends()
                self._renew()
                self._fail_orphans()
                if time.monotonic() - self._forgotten_at >= FORGET_INTERVAL:
                    self._forget_ended()
            except JobStoreUnavailableError as exc:
                self._note_outage(exc)
                delay = RETRY_DELAY if delay >= period else min(period, delay * 2)
            else:
                delay = period
                if self._outage:
                    self._outage = False
                    logger.info("The job database is reachable again.")

    def _forget_ended(self) -> None:
        """Forget the jobs that ended more than `keep` ago: when the manager starts, and
        once every FORGET_INTERVAL while it runs (a server's table would grow for good)."""
        self._store.forget_ended(before=self._now() - int(self._keep.total_seconds() * 1000))
        self._forgotten_at = time.monotonic()

    def _renew(self) -> None:
        """Renew this manager's hold on its jobs, and stop those the store says to: a
        cancel was asked, or the job was ended by another manager."""
        with self._lock:
            jobids = list(self._running)
        for jobid, saved in self._store.renew(jobids).items():
            with self._lock:
                running = self._running.get(jobid)
                if running is not None:
                    self._act_on_locked(running, saved)

    def _record_ends(self) -> None:
        """Write the ends of jobs that ended while the store was unreachable."""
        with self._lock:
            ended = list(self._unrecorded.values())
        for job in ended:
            saved = self._store.save(job)
            with self._lock:
                if self._unrecorded.get(job.jobid) is job:
                    del self._unrecorded[job.jobid]
            if saved is Saved.ENDED:
                warn_ended_already(job)
            else:
                logger.info("Job %s: its end (%s) is recorded now.", job.jobid, job.status.value)

    def _record_ends_until(self, deadline: float) -> None:
        """`_record_ends`, retried until `deadline` (monotonic); what is still unwritten
        then is logged, as it is lost with this manager."""
        delay = RETRY_DELAY
        while True:
            try:
                self._record_ends()
                return
            except JobStoreUnavailableError as exc:
                if time.monotonic() + delay > deadline:
                    logger.error(
                        "The end of job(s) %s could not be recorded before close: %s",
                        ", ".join(self._unrecorded),
                        exc,
                    )
                    return
                time.sleep(delay)
                delay *= 2

    def _note_outage(self, exc: JobStoreUnavailableError) -> None:
        """Log an outage of the store once, however many saves it fails."""
        if not self._outage:
            self._outage = True
            logger.warning("%s", exc)


def warn_ended_already(job: Job) -> None:
    """Log that the store kept another end of `job` than this manager's."""
    logger.warning(
        "Job %s ended %s here, but the job database had it ended already (another "
        "job manager failed it while this one could not reach the database); its record "
        "there stands.",
        job.jobid,
        job.status.value,
    )
