"""The embedded job store: one SQLite file (WAL, so other processes read while one writes).

Its owners are the processes of one machine. Each holds an exclusive lock on a small
owner file for as long as its store is open (the operating system drops it when the
process dies, however it dies), so a job whose owner's lock is free was running in a
process that died, and is failed at once: no lease needs to run out.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections.abc import Collection, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from ..errors import JobError
from ..jobrecord import Job, JobStatus, failed
from . import ACTIVE_SQL, COLUMNS, Saved, from_row, to_row, to_stop

__all__ = ["SCHEMA_VERSION", "SqliteJobStore"]

#: 1: the first table; 2: adds the stages (JSON) and whether a schedule submitted the job;
#: 3: adds cancel requests and the claims of periodic tasks; 4: adds namespaces.
SCHEMA_VERSION = 4

_UPSERT = (  # a job's namespace is set when it is inserted, and never changed
    f"INSERT INTO jobs ({', '.join(COLUMNS)}, namespace) "
    f"VALUES ({', '.join(f':{c}' for c in COLUMNS)}, :namespace) "
    f"ON CONFLICT (jobid) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in COLUMNS)} "
    f"WHERE jobs.status IN ({ACTIVE_SQL}) "
    "RETURNING cancel_requested"
)


class SqliteJobStore:
    """Jobs as rows of one SQLite table, owned by processes that hold owner-file locks."""

    def __init__(self, path: Path, owner: str, namespace: str = "") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.owner = owner
        self.namespace = namespace
        self._owners = path.with_name(f"{path.name}.owners")
        self._lock = threading.Lock()
        _owner_only(path)
        self._db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        with self._transaction():
            self._migrate(path)
        self._owner_lock = _OwnerLock(self._owners, owner)

    def _migrate(self, path: Path) -> None:
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
        if version < 3:
            self._db.execute(
                "ALTER TABLE jobs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0"
            )
            self._db.execute(
                "CREATE TABLE periodic_runs (task TEXT NOT NULL, slot INTEGER NOT NULL, "
                "PRIMARY KEY (task, slot))"
            )
        if version < 4:  # older jobs belong to the empty namespace; claims are transient
            self._db.execute("ALTER TABLE jobs ADD COLUMN namespace TEXT NOT NULL DEFAULT ''")
            self._db.execute("CREATE INDEX namespace_jobs ON jobs (namespace, starttime)")
            self._db.execute("DROP TABLE periodic_runs")
            self._db.execute(
                "CREATE TABLE periodic_runs (namespace TEXT NOT NULL, task TEXT NOT NULL, "
                "slot INTEGER NOT NULL, PRIMARY KEY (namespace, task, slot))"
            )
        self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def save(self, job: Job) -> Saved:
        with self._lock:
            row = self._db.execute(_UPSERT, self._values(to_row(job, self.owner))).fetchone()
        if row is None:
            return Saved.ENDED
        return Saved.CANCEL_ASKED if row[0] else Saved.WRITTEN

    def load(self, jobid: str) -> Job | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM jobs WHERE jobid = ? AND namespace = ?", (jobid, self.namespace)
            ).fetchone()
        return None if row is None else from_row(row)

    def find(
        self, status: JobStatus | None, operation: str | None, offset: int, limit: int | None
    ) -> tuple[list[Job], int]:
        where = (
            "WHERE namespace = :namespace AND (:status IS NULL OR status = :status) "
            "AND (:operation IS NULL OR operation = :operation)"
        )
        match = {
            "namespace": self.namespace,
            "status": None if status is None else status.value,
            "operation": operation,
        }
        with self._lock:
            total: int = self._db.execute(f"SELECT count(*) FROM jobs {where}", match).fetchone()[0]
            rows = self._db.execute(
                f"SELECT * FROM jobs {where} ORDER BY starttime DESC, jobid DESC "
                "LIMIT :limit OFFSET :offset",
                {**match, "limit": -1 if limit is None else limit, "offset": offset},
            ).fetchall()
        return [from_row(row) for row in rows], total

    def request_cancel(self, jobid: str) -> bool:
        with self._lock:
            changed = self._db.execute(
                "UPDATE jobs SET cancel_requested = 1 "
                f"WHERE jobid = ? AND namespace = ? AND status IN ({ACTIVE_SQL})",
                (jobid, self.namespace),
            ).rowcount
        return changed > 0

    def renew(self, jobids: Collection[str]) -> dict[str, Saved]:
        """Nothing to renew (the owner lock is held while the store is open): only the
        cancel requests, and the jobs ended in the table, are read."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT jobid, cancel_requested FROM jobs WHERE owner = ? "
                f"AND status IN ({ACTIVE_SQL})",
                (self.owner,),
            ).fetchall()
        return to_stop(jobids, {row["jobid"]: bool(row["cancel_requested"]) for row in rows})

    def fail_orphans(self, now: int, message: str) -> int:
        with self._lock:
            rows = self._db.execute(
                f"SELECT DISTINCT owner FROM jobs WHERE status IN ({ACTIVE_SQL}) AND owner != ?",
                (self.owner,),
            ).fetchall()
        return sum(self._fail_if_dead(row["owner"], now, message) for row in rows)

    def _fail_if_dead(self, owner: str, now: int, message: str) -> int:
        """Mark the owner's active jobs FAILED if its process is gone; return how many."""
        with _lock_if_dead(self._owners, owner) as dead:
            if not dead:
                return 0
            with self._lock, self._transaction():
                rows = self._db.execute(
                    f"SELECT * FROM jobs WHERE owner = ? AND status IN ({ACTIVE_SQL})", (owner,)
                ).fetchall()
                for row in rows:
                    ended = to_row(failed(from_row(row), now, message), owner)
                    self._db.execute(_UPSERT, self._values(ended)).fetchall()
            return len(rows)

    def forget_ended(self, before: int) -> None:
        with self._lock:
            self._db.execute(
                f"DELETE FROM jobs WHERE status NOT IN ({ACTIVE_SQL}) AND endtime < ? "
                "AND namespace = ?",
                (before, self.namespace),
            )

    def claim_periodic(self, task: str, slot: int) -> bool:
        with self._lock, self._transaction():
            claimed = self._db.execute(
                "INSERT INTO periodic_runs (namespace, task, slot) SELECT ?, ?, ? "
                "WHERE NOT EXISTS (SELECT 1 FROM periodic_runs "
                "WHERE namespace = ? AND task = ? AND slot >= ?)",
                (self.namespace, task, slot, self.namespace, task, slot),
            ).rowcount
            self._db.execute(
                "DELETE FROM periodic_runs WHERE namespace = ? AND task = ? AND slot < ?",
                (self.namespace, task, slot),
            )
        return claimed > 0

    def _values(self, row: dict[str, Any]) -> dict[str, Any]:
        """The parameters of `_UPSERT` for a row (an insert puts it in this namespace)."""
        return {**row, "namespace": self.namespace}

    def close(self) -> None:
        self._owner_lock.release()
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


def _owner_only(path: Path) -> None:
    """Make the job table readable by its owner only, as config.toml is: its jobs name
    backups, descriptions, restore targets and errors. SQLite gives its -wal and -shm
    files the table's mode."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        mode = os.fstat(fd).st_mode
        if mode & 0o077:  # made by an older strongroom, readable by others
            os.fchmod(fd, mode & 0o700)
    finally:
        os.close(fd)


class _OwnerLock:
    """An exclusive lock on `<directory>/<name>.lock`, held while the store is open."""

    def __init__(self, directory: Path, name: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
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
