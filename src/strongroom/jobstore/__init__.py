"""Where jobs are kept: the `JobStore` protocol, and the store a job-database URL names.

`sqlite:///PATH` (or a plain path) keeps the job table in one SQLite file, embedded,
for the processes of one machine; `postgresql://user@host:port/db` keeps it in
PostgreSQL, shared by replicas on several machines (psycopg 3, the `postgres` extra).
Each JobManager opens its own store, which knows the manager as its `owner`.

A table may hold the jobs of several deployments (tenants: Engines with different homes
sharing one database). Each store works in one `namespace`, which its jobs and its
claims of periodic tasks carry: it finds, cancels and forgets only that namespace's
jobs, and its claims never collide with another namespace's. Failing orphans is the one
thing done across namespaces, as a stopped runner is stopped whoever it worked for.

A store also says which of its jobs' runners are gone (`fail_orphans`): SQLite by the
owner's lock file, PostgreSQL by a lease that the running side renews. Both keep a
cancel request in the table, which the running side reads at its next save or renewal,
so a job may be cancelled from any manager sharing the table.

An ended job is final: no save changes its row again, whoever makes it. A runner whose
save or renewal finds its job ended in the table (another manager failed it while this
one could not reach the table) is told so, and stops the job as if it were cancelled.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Collection
from dataclasses import asdict
from datetime import timedelta
from enum import Enum
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

from ..errors import ConfigError
from ..jobrecord import Job, JobStatus, Stage

__all__ = [
    "ACTIVE_SQL",
    "COLUMNS",
    "JobStore",
    "Saved",
    "check_location",
    "from_row",
    "has_password",
    "open_job_store",
    "to_row",
    "to_stop",
]

logger = logging.getLogger("strongroom")

#: The columns a saved job writes, in both stores.
COLUMNS = (
    "jobid",
    "owner",
    "status",
    "operation",
    "store",
    "name",
    "starttime",
    "endtime",
    "updatedtime",
    "bytes_done",
    "bytes_total",
    "stage",
    "messages",
    "result",
    "operation_uri",
    "stages",
    "scheduled",
)
#: The active statuses as an SQL list, for both stores' queries.
ACTIVE_SQL = ",".join(f"'{status.value}'" for status in JobStatus if status.active)


class Saved(Enum):
    """What a save found in the table."""

    #: Written; nobody asked to cancel the job.
    WRITTEN = "written"
    #: Written, and a cancel was asked for the job: its runner stops it.
    CANCEL_ASKED = "cancel asked"
    #: Not written: the table has the job ended already (a replica failed it while its
    #: runner could not reach the table); the runner stops it without committing.
    ENDED = "ended"


class JobStore(Protocol):
    """A job table as one JobManager (the `owner`) sees it, in its `namespace`. Every
    method may raise JobStoreUnavailableError when the database cannot be reached."""

    owner: str
    namespace: str

    def save(self, job: Job) -> Saved:
        """Write the job as this owner's, unless the table has it ended already: an ended
        job's row never changes again."""

    def load(self, jobid: str) -> Job | None: ...

    def find(
        self, status: JobStatus | None, operation: str | None, offset: int, limit: int | None
    ) -> tuple[list[Job], int]:
        """Jobs with that status and operation (None: any), newest first; and how many."""

    def request_cancel(self, jobid: str) -> bool:
        """Ask the job's runner to cancel it; False if the job is no longer active."""

    def renew(self, jobids: Collection[str]) -> dict[str, Saved]:
        """Renew this owner's hold on its running jobs `jobids`; return those it must stop
        and why: CANCEL_ASKED, or ENDED (the table has them ended, or no longer has them)."""

    def fail_orphans(self, now: int, message: str) -> int:
        """Mark FAILED the active jobs of other owners that are gone; return how many."""

    def forget_ended(self, before: int) -> None:
        """Delete the jobs that ended before `before` (epoch ms)."""

    def claim_periodic(self, task: str, slot: int) -> bool:
        """Claim run `slot` of a periodic task: True for exactly one caller per slot, and
        never for a slot below one already claimed (a caller that read the clock just
        before the slot changed is too late)."""

    def close(self) -> None: ...


def open_job_store(
    location: str | os.PathLike[str], owner: str, lease: timedelta, namespace: str = ""
) -> JobStore:
    """The store at `location`: a URL (sqlite:///PATH, postgresql://...) or a file path."""
    if check_location(location) == "sqlite":
        return _sqlite(_sqlite_path(location), owner, namespace)
    try:
        from .postgres import PostgresJobStore  # psycopg loads only for PostgreSQL
    except ImportError:
        raise ConfigError(
            "A postgresql:// job database needs psycopg 3.3 or later: run "
            "\"pip install --upgrade 'strongroom[postgres]'\"."
        ) from None
    return PostgresJobStore(str(location), owner, lease, namespace)


#: What a job database URL may be, for the errors that refuse one.
_ACCEPTED = (
    "write sqlite:///PATH (three slashes, then the file's path), "
    "postgresql://user@host:port/db, or a plain file path"
)


def check_location(location: str | os.PathLike[str]) -> str:
    """The kind of store `location` names, "sqlite" or "postgresql", without opening it;
    ConfigError, saying which forms are accepted, if it names none."""
    if isinstance(location, os.PathLike) or "://" not in location:
        return "sqlite"
    parts = _split(location)
    if parts.scheme in ("postgresql", "postgres"):
        return "postgresql"
    if parts.scheme != "sqlite":
        raise ConfigError(
            f"The job database URL must start with sqlite:/// or postgresql://, "
            f"not {parts.scheme}://: {_ACCEPTED}."
        )
    if parts.netloc or not parts.path.strip("/"):
        raise ConfigError(f"The job database URL names no SQLite file: {_ACCEPTED}.")
    return "sqlite"


def has_password(location: str | os.PathLike[str]) -> bool:
    """Whether the job database URL carries a password (in its user part or its query)."""
    if isinstance(location, os.PathLike) or "://" not in location:
        return False
    parts = _split(location)
    return parts.password is not None or "password" in parse_qs(parts.query)


def _sqlite_path(location: str | os.PathLike[str]) -> Path:
    if isinstance(location, os.PathLike) or "://" not in location:
        return Path(location)
    return Path(unquote(_split(location).path))


def _split(location: str) -> SplitResult:
    """The URL's parts; ConfigError for one that does not parse (`[::1:5432`)."""
    try:
        return urlsplit(location)
    except ValueError:
        # not the parser's own words: they may quote the URL, password and all
        raise ConfigError(f"The job database URL is not valid: {_ACCEPTED}.") from None


def _sqlite(path: Path, owner: str, namespace: str) -> JobStore:
    from .sqlite import SqliteJobStore

    return SqliteJobStore(path, owner, namespace)


def to_stop(jobids: Collection[str], active: dict[str, bool]) -> dict[str, Saved]:
    """What `renew` returns, from the `jobids` a renewal found active in the table, each
    with whether a cancel was asked for it."""
    stop = dict.fromkeys(set(jobids) - active.keys(), Saved.ENDED)
    stop.update((jobid, Saved.CANCEL_ASKED) for jobid in jobids if active.get(jobid))
    return stop


def to_row(job: Job, owner: str) -> dict[str, Any]:
    """The job as the values of `COLUMNS` (lists and documents as JSON text)."""
    return {
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


def from_row(row: Any) -> Job:
    """A job from a row of either store (anything that maps the column names). A row this
    version cannot read (a newer version's, or damaged) reads as a FAILED job that says
    so: one such row must not fail every listing, every status page and every restart,
    of every tenant sharing the job table."""
    try:
        return _job_of(row)
    except (ValueError, TypeError, KeyError) as exc:
        logger.warning("Job %r: its row in the job table cannot be read: %r", row["jobid"], exc)
        return Job(
            jobid=str(row["jobid"]),
            operation=str(row["operation"]),
            status=JobStatus.FAILED,
            store=None,
            name=None,
            starttime=_epoch_ms_or_zero(row["starttime"]),
            updatedtime=_epoch_ms_or_zero(row["updatedtime"]),
            messages=(
                "This job's row in the job table cannot be read by this version of "
                f"strongroom ({type(exc).__name__}): a newer version wrote it, or it is damaged.",
            ),
        )


def _epoch_ms_or_zero(value: object) -> int:
    return value if type(value) is int else 0


def _job_of(row: Any) -> Job:
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
