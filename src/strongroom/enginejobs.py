"""The Engine's background jobs: create, restore, verify, delete and cleanup as jobs
(`submit_*`), the cleanup system task, and the job manager's lifecycle.

Kept apart from engine.py so each file reads as one subject: engine.py does the
operations, this runs them on the job manager's worker pool (see jobs.py) and holds the
manager from its first use to `close`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from .archive import StreamSource, selected_path
from .crypto import Passcode
from .errors import ConfigError, JobError, JobIncompleteError, StrongroomError
from .jobs import DEFAULT_WORKERS, Job, JobHandle, JobManager
from .keys import WriteKey
from .restoretarget import check_restore_target
from .retention import CleanupReport, parse_moment

if TYPE_CHECKING:
    from .backupinfo import BackupInfo
    from .format import Manifest
    from .pipeline import Progress
    from .store import Store

__all__ = ["EngineJobs"]

logger = logging.getLogger("strongroom")


class EngineJobs(ABC):
    """The background-job half of `Engine`, its only subclass.

    It exists so that the Engine class stays a size a newcomer can read: the jobs wrap
    the operations without changing them, and this is where to look for them. Each
    `submit_*` checks a request the way its operation would (a bad one fails at once and
    never becomes a job), then runs the operation as a job.

    What it needs from the class that uses it: the job settings `jobs_db`,
    `jobs_namespace` and `_clock`, `__init__` called (with how many jobs run at once), and
    the operations declared
    abstract below (as the jobs call them; the class's own may accept more).
    """

    jobs_db: str | os.PathLike[str]
    jobs_namespace: str
    _clock: Callable[[], datetime]

    def __init__(self, workers: int = DEFAULT_WORKERS) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ConfigError(f"job_workers must be a whole number, at least 1, not {workers!r}.")
        #: How many jobs run at once (each on a worker thread of its own).
        self.job_workers = workers
        self._job_manager: JobManager | None = None
        self._job_manager_lock = threading.Lock()
        self._closed = False

    # -- what the class that uses it provides ----------------------------------------

    @abstractmethod
    def store_name(self, name: str | None = None) -> str: ...

    @abstractmethod
    def create(
        self,
        name: str,
        sources: Sequence[Path],
        *,
        passcode: Passcode | None,
        write_key: WriteKey | None,
        streams: Mapping[str, StreamSource],
        store: str,
        description: str,
        retention_date: int | str | datetime | None,
        progress: Progress,
        on_stage: Callable[[str], None],
        scheduled: bool,
    ) -> BackupInfo: ...

    @abstractmethod
    def _check_create(
        self,
        name: str,
        paths: Sequence[Path],
        streams: Mapping[str, StreamSource],
        passcode: str | Passcode | None,
        write_key: WriteKey | None,
        store: str | None,
        description: str,
        retention_date: int | str | datetime | None,
        scheduled: bool,
    ) -> tuple[Passcode | WriteKey, datetime | None, Store]: ...

    @abstractmethod
    def restore(
        self,
        name: str,
        target: str | os.PathLike[str],
        *,
        passcode: Passcode,
        store: str,
        paths: Sequence[str],
        progress: Progress,
        on_stage: Callable[[str], None],
    ) -> Path: ...

    @abstractmethod
    def verify(
        self, name: str, *, passcode: Passcode, store: str, progress: Progress
    ) -> BackupInfo: ...

    @abstractmethod
    def delete(self, name: str, store: str) -> None: ...

    @abstractmethod
    def cleanup(
        self, stores: Iterable[str] | None, *, as_of: datetime | None, dry_run: bool
    ) -> CleanupReport: ...

    @abstractmethod
    def _open(self, name: str, store: str | None) -> tuple[Store, Manifest]: ...

    # -- the jobs --------------------------------------------------------------------

    @property
    def jobs(self) -> JobManager:
        """The background jobs, kept in `jobs_db`; started on first use. An Engine
        dropped without `close` has them closed when it is collected."""
        with self._job_manager_lock:
            if self._closed:
                raise JobError("This Engine is closed; make a new one to run jobs.")
            if self._job_manager is None:
                manager = JobManager(
                    self.jobs_db,
                    workers=self.job_workers,
                    clock=self._clock,
                    namespace=self.jobs_namespace,
                )
                self._close_jobs = weakref.finalize(self, manager.close)
                self._job_manager = manager
            return self._job_manager

    def submit_backup(
        self,
        name: str,
        sources: Sequence[str | os.PathLike[str]] = (),
        *,
        passcode: str | Passcode | None = None,
        write_key: WriteKey | None = None,
        streams: Mapping[str, StreamSource] | None = None,
        store: str | None = None,
        description: str = "",
        retention_date: int | str | datetime | None = None,
        operation_uri: str | None = None,
        timeout: timedelta | None = None,
        scheduled: bool = False,
    ) -> Job:
        """`create` as a background job, with a passcode or a write key. The request is
        checked first, so a bad one fails here and never becomes a job; the passcode or
        key lives only in the job's closure. A create still running `timeout` after it
        started is cancelled and reads FAILED."""
        passcode = None if passcode is None else Passcode(passcode)  # no plain text in the frame
        paths = [Path(source) for source in sources]
        streams = dict(streams or {})
        credential, _, target = self._check_create(
            name, paths, streams, passcode, write_key, store, description, retention_date, scheduled
        )
        secret = credential if isinstance(credential, Passcode) else None
        key = credential if isinstance(credential, WriteKey) else None

        def work(job: JobHandle) -> dict[str, Any]:
            info = self.create(
                name,
                paths,
                passcode=secret,
                write_key=key,
                streams=streams,
                store=target.name,
                description=description,
                retention_date=retention_date,
                progress=job.progress,
                on_stage=job.stage,
                scheduled=scheduled,
            )
            return info.to_dict()

        return self.jobs.submit(
            "create",
            work,
            store=target.name,
            name=name,
            operation_uri=operation_uri,
            timeout=timeout,
            scheduled=scheduled,
        )

    def submit_restore(
        self,
        name: str,
        target: str | os.PathLike[str],
        *,
        passcode: str | Passcode,
        store: str | None = None,
        paths: Sequence[str] = (),
        operation_uri: str | None = None,
    ) -> Job:
        """`restore` as a background job, after the checks that need no passcode work."""
        passcode = Passcode(passcode)  # its frame holds no plain text (a traceback's locals)
        check_restore_target(target)
        for path in paths:
            selected_path(path)
        source, _ = self._open(name, store)

        def work(job: JobHandle) -> dict[str, Any]:
            restored = self.restore(
                name,
                target,
                passcode=passcode,
                store=source.name,
                paths=paths,
                progress=job.progress,
                on_stage=job.stage,
            )
            return {"name": name, "backupStore": source.name, "restoreDir": str(restored)}

        return self.jobs.submit(
            "restore", work, store=source.name, name=name, operation_uri=operation_uri
        )

    def submit_verify(
        self,
        name: str,
        *,
        passcode: str | Passcode,
        store: str | None = None,
        operation_uri: str | None = None,
    ) -> Job:
        """`verify` as a background job (it reads the whole backup); an unknown backup
        fails here."""
        passcode = Passcode(passcode)  # its frame holds no plain text (a traceback's locals)
        source, _ = self._open(name, store)

        def work(job: JobHandle) -> dict[str, Any]:
            job.stage("verifying")
            info = self.verify(name, passcode=passcode, store=source.name, progress=job.progress)
            return info.to_dict()

        return self.jobs.submit(
            "verify", work, store=source.name, name=name, operation_uri=operation_uri
        )

    def submit_delete(
        self, name: str, store: str | None = None, *, operation_uri: str | None = None
    ) -> Job:
        """`delete` as a background job; an unknown backup fails here."""
        source, _ = self._open(name, store)

        def work(job: JobHandle) -> dict[str, Any]:
            job.stage("deleting")
            self.delete(name, source.name)
            return {"name": name, "backupStore": source.name}

        return self.jobs.submit(
            "delete", work, store=source.name, name=name, operation_uri=operation_uri
        )

    def submit_cleanup(
        self,
        stores: Iterable[str] | None = None,
        *,
        as_of: int | datetime | None = None,
        dry_run: bool = False,
        operation_uri: str | None = None,
        scheduled: bool = False,
    ) -> Job:
        """`cleanup` as a background job; unknown store names fail here. `scheduled`: the
        cleanup system task submits it, not a person."""
        names = None if stores is None else [self.store_name(store) for store in stores]
        moment = parse_moment(as_of, "as_of") if as_of is not None else None

        def work(job: JobHandle) -> dict[str, Any]:
            job.stage("cleaning up")
            report = self.cleanup(names, as_of=moment, dry_run=dry_run)
            if report.failed or report.errors:  # as `strongroom cleanup` exits 1
                problems = [*report.errors, *(e.message for e in report.failed)]
                raise JobIncompleteError(
                    f"Cleanup {report.summary()}: {' '.join(problems)}", report.to_dict()
                )
            return report.to_dict()

        return self.jobs.submit("cleanup", work, operation_uri=operation_uri, scheduled=scheduled)

    def schedule_cleanup(self, interval: timedelta) -> threading.Event:
        """The cleanup system task: a cleanup job in every `interval` (counted in slots
        from the epoch), the first at once. Engines sharing the job store (replicas)
        each claim the slot, and those that do not get it skip: one run per interval
        among them all, and none at once if another already ran in this interval.

        Set the returned event to stop it. Each run is an ordinary job, so its result
        (what was deleted, swept and kept, and why) can be read back by job id.
        """
        stop = threading.Event()
        seconds = interval.total_seconds()

        def loop() -> None:
            while True:  # at least once, even if stopped at once
                slot = int(time.time() // seconds)
                try:
                    if self.jobs.claim_periodic(f"cleanup every {seconds:g} s", slot):
                        self.submit_cleanup(scheduled=True)
                except StrongroomError as exc:  # e.g. the job table is unavailable: try later
                    logger.warning("Could not start the scheduled cleanup: %s", exc)
                except Exception:  # a raw database error or a bug: log it, and keep the task
                    logger.exception("The scheduled cleanup failed to start; it tries again later")
                if stop.wait((slot + 1) * seconds - time.time()):
                    return

        threading.Thread(target=loop, name="strongroom-cleanup-schedule", daemon=True).start()
        return stop

    # -- the lifecycle ---------------------------------------------------------------

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Cancel this engine's background jobs, if it ever started any, and wait for
        them (at most `jobs.CLOSE_TIMEOUT`: a job stuck past that is recorded FAILED).
        Final: jobs cannot be submitted afterwards."""
        with self._job_manager_lock:
            self._closed = True
            if self._job_manager is not None:
                self._close_jobs()
                self._job_manager = None
