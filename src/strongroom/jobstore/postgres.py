"""The shared job store: tables in PostgreSQL, read and written by every replica.

A replica running a job holds a lease on it (`lease_until`, in the database's clock, so
the replicas' clocks need not agree), which it renews every third of the lease; a job
whose lease has run out was left by a replica that stopped, and whichever replica
notices first marks it FAILED (rows locked with SKIP LOCKED, so two never both do).
An outage of the database is not taken for stopped replicas: no job is failed until
one full lease after the server started and after this replica reached it again, which
gives the running replicas time to renew first. That lease is the job's own (its owner's,
kept in its row), as replicas and tenants sharing the table may each set their own.
The tables are created on first use; their schema version is kept in
`strongroom_schema`, and migrations run under an advisory lock, so replicas that start
together migrate once.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import psycopg
from psycopg.abc import PQGen
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow, dict_row

from ..errors import ConfigError, JobError, JobStoreUnavailableError

if tuple(int(part) for part in psycopg.__version__.split(".")[:2]) < (3, 3):
    # `_BoundedConnection` passes a timeout to `Connection.wait`, which 3.3 added
    raise ImportError(f"psycopg 3.3 or later is needed, not {psycopg.__version__}")
from ..jobrecord import Job, JobStatus, failed
from . import ACTIVE_SQL, COLUMNS, Saved, from_row, to_row, to_stop

__all__ = ["SCHEMA_VERSION", "PostgresJobStore"]

#: Each migration's statements; the schema version is how many have run.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE strongroom_jobs (
            jobid TEXT PRIMARY KEY, owner TEXT NOT NULL, status TEXT NOT NULL,
            operation TEXT NOT NULL, store TEXT, name TEXT,
            starttime BIGINT NOT NULL, endtime BIGINT, updatedtime BIGINT NOT NULL,
            bytes_done BIGINT NOT NULL, bytes_total BIGINT, stage TEXT NOT NULL,
            messages TEXT NOT NULL, result TEXT, operation_uri TEXT,
            stages TEXT NOT NULL, scheduled BOOLEAN NOT NULL,
            lease_until TIMESTAMPTZ NOT NULL,
            cancel_requested BOOLEAN NOT NULL DEFAULT FALSE)""",
        "CREATE INDEX strongroom_active_jobs ON strongroom_jobs (status, lease_until)",
        "CREATE INDEX strongroom_newest_jobs ON strongroom_jobs (starttime)",
        """CREATE TABLE strongroom_periodic_runs (
            task TEXT NOT NULL, slot BIGINT NOT NULL,
            claimed_at TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY (task, slot))""",
    ),
    (  # 2: namespaces (jobs of schema 1 belong to the empty one); claims are transient
        "ALTER TABLE strongroom_jobs ADD COLUMN namespace TEXT NOT NULL DEFAULT ''",
        "CREATE INDEX strongroom_namespace_jobs ON strongroom_jobs (namespace, starttime)",
        "DROP TABLE strongroom_periodic_runs",
        """CREATE TABLE strongroom_periodic_runs (
            namespace TEXT NOT NULL, task TEXT NOT NULL, slot BIGINT NOT NULL,
            claimed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            PRIMARY KEY (namespace, task, slot))""",
    ),
    (  # 3: each job's lease, which is its owner's: replicas (and tenants) may differ
        "ALTER TABLE strongroom_jobs ADD COLUMN lease_seconds DOUBLE PRECISION",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)
#: The advisory lock that serializes migrations (any number, the same in every replica).
_MIGRATION_LOCK = 0x5354524F4E47  # "STRONG"
#: The advisory lock class of periodic claims (with a hash of namespace and task).
_PERIODIC_LOCK = 0x53524F4D  # "SROM"
_LEASE = "clock_timestamp() + %(lease)s * interval '1 second'"
#: A job's own lease; rows from before schema 3 have none, and take the caller's.
_ROW_LEASE = "COALESCE(lease_seconds, %(lease)s)"
_UPSERT = (  # a job's namespace is set when it is inserted, and never changed
    f"INSERT INTO strongroom_jobs ({', '.join(COLUMNS)}, lease_until, lease_seconds, namespace) "
    f"VALUES ({', '.join(f'%({c})s' for c in COLUMNS)}, {_LEASE}, %(lease)s, %(namespace)s) "
    f"ON CONFLICT (jobid) DO UPDATE SET "
    f"{', '.join(f'{c} = excluded.{c}' for c in COLUMNS)}, lease_until = excluded.lease_until, "
    "lease_seconds = excluded.lease_seconds "
    f"WHERE strongroom_jobs.status IN ({ACTIVE_SQL}) "
    "RETURNING cancel_requested"
)


class PostgresJobStore:
    """Jobs in PostgreSQL, owned by replicas that renew their leases.

    One connection (autocommit, short transactions), used by one thread at a time and
    opened again after the server was lost; every failure to reach the server is a
    JobStoreUnavailableError.
    """

    def __init__(self, url: str, owner: str, lease: timedelta, namespace: str = "") -> None:
        self.owner = owner
        self.namespace = namespace
        self._url = url
        self._lease = lease.total_seconds()
        self._where = _describe(url)
        self._timeouts = _timeouts(url, self._lease)
        self._lock = threading.Lock()
        self._db: psycopg.Connection[DictRow] | None = None
        self._closed = False
        #: When this replica reached the server again after losing it (monotonic), or
        #: None while it never lost it: no orphan is failed until a lease after that.
        self._reachable_since: float | None = None
        self._lost = False
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    def _migrate(self) -> None:
        """Create or upgrade the tables, one replica at a time."""
        with self._connection() as db, db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            db.execute("CREATE TABLE IF NOT EXISTS strongroom_schema (version INTEGER NOT NULL)")
            row = db.execute("SELECT max(version) AS version FROM strongroom_schema").fetchone()
            version = (row or {}).get("version") or 0
            if version > SCHEMA_VERSION:
                raise JobError(
                    f"The job database {self._where} was written by a newer strongroom "
                    f"(schema {version}); upgrade strongroom to use it."
                )
            for number in range(version, SCHEMA_VERSION):
                for statement in _MIGRATIONS[number]:
                    db.execute(statement)
                db.execute("INSERT INTO strongroom_schema VALUES (%s)", (number + 1,))

    def save(self, job: Job) -> Saved:
        with self._connection() as db:
            row = db.execute(_UPSERT, self._values(to_row(job, self.owner), self._lease)).fetchone()
        if row is None:
            return Saved.ENDED
        return Saved.CANCEL_ASKED if row["cancel_requested"] else Saved.WRITTEN

    def load(self, jobid: str) -> Job | None:
        with self._connection() as db:
            row = db.execute(
                "SELECT * FROM strongroom_jobs WHERE jobid = %s AND namespace = %s",
                (jobid, self.namespace),
            ).fetchone()
        return None if row is None else from_row(row)

    def find(
        self, status: JobStatus | None, operation: str | None, offset: int, limit: int | None
    ) -> tuple[list[Job], int]:
        where = (
            "WHERE namespace = %(namespace)s "
            "AND (%(status)s::text IS NULL OR status = %(status)s) "
            "AND (%(operation)s::text IS NULL OR operation = %(operation)s)"
        )
        match = {
            "namespace": self.namespace,
            "status": None if status is None else status.value,
            "operation": operation,
        }
        with self._connection() as db:
            counted = db.execute(f"SELECT count(*) AS n FROM strongroom_jobs {where}", match)
            total: int = (counted.fetchone() or {"n": 0})["n"]
            rows = db.execute(
                f"SELECT * FROM strongroom_jobs {where} ORDER BY starttime DESC, jobid DESC "
                "LIMIT %(limit)s OFFSET %(offset)s",
                {**match, "limit": limit, "offset": offset},
            ).fetchall()
        return [from_row(row) for row in rows], total

    def request_cancel(self, jobid: str) -> bool:
        with self._connection() as db:
            changed = db.execute(
                "UPDATE strongroom_jobs SET cancel_requested = TRUE "
                f"WHERE jobid = %s AND namespace = %s AND status IN ({ACTIVE_SQL})",
                (jobid, self.namespace),
            ).rowcount
        return changed > 0

    def renew(self, jobids: Collection[str]) -> dict[str, Saved]:
        if not jobids:
            return {}
        with self._connection() as db:
            rows = db.execute(
                f"UPDATE strongroom_jobs SET lease_until = {_LEASE}, lease_seconds = %(lease)s "
                "WHERE owner = %(owner)s AND jobid = ANY(%(jobids)s) "
                f"AND status IN ({ACTIVE_SQL}) RETURNING jobid, cancel_requested",
                {"owner": self.owner, "jobids": list(jobids), "lease": self._lease},
            ).fetchall()
        return to_stop(jobids, {row["jobid"]: row["cancel_requested"] for row in rows})

    def fail_orphans(self, now: int, message: str) -> int:
        """Fail the active jobs of other owners whose lease ran out, once both the server
        and this replica's connection to it have been up for the job's lease (its
        owner's: it renews within a third of that after an outage). Rows another replica
        is failing (or its owner is saving) right now are skipped, not waited for."""
        since = self._reachable_since
        reachable = math.inf if since is None else time.monotonic() - since
        with self._connection() as db, db.transaction():
            rows = db.execute(
                f"SELECT * FROM strongroom_jobs WHERE status IN ({ACTIVE_SQL}) "
                "AND lease_until < clock_timestamp() AND owner <> %(owner)s "
                "AND clock_timestamp() - pg_postmaster_start_time() "
                f"> {_ROW_LEASE} * interval '1 second' "
                f"AND %(reachable)s > {_ROW_LEASE} FOR UPDATE SKIP LOCKED",
                {"owner": self.owner, "lease": self._lease, "reachable": reachable},
            ).fetchall()
            for row in rows:
                ended = to_row(failed(from_row(row), now, message), row["owner"])
                db.execute(_UPSERT, self._values(ended, 0))
        return len(rows)

    def forget_ended(self, before: int) -> None:
        with self._connection() as db:
            db.execute(
                f"DELETE FROM strongroom_jobs WHERE status NOT IN ({ACTIVE_SQL}) "
                "AND endtime < %s AND namespace = %s",
                (before, self.namespace),
            )

    def claim_periodic(self, task: str, slot: int) -> bool:
        with self._connection() as db, db.transaction():
            # one claim of a task at a time, so none can slip in below a newer slot
            db.execute(
                "SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                (_PERIODIC_LOCK, f"{self.namespace}/{task}"),
            )
            claimed = db.execute(
                "INSERT INTO strongroom_periodic_runs (namespace, task, slot) "
                "SELECT %s, %s, %s WHERE NOT EXISTS (SELECT 1 FROM strongroom_periodic_runs "
                "WHERE namespace = %s AND task = %s AND slot >= %s)",
                (self.namespace, task, slot, self.namespace, task, slot),
            ).rowcount
            db.execute(
                "DELETE FROM strongroom_periodic_runs "
                "WHERE namespace = %s AND task = %s AND slot < %s",
                (self.namespace, task, slot),
            )
        return claimed > 0

    def _values(self, row: dict[str, Any], lease: float) -> dict[str, Any]:
        """The parameters of `_UPSERT` for a row (an insert puts it in this namespace)."""
        return {**row, "lease": lease, "namespace": self.namespace}

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._db is not None:
                self._db.close()
                self._db = None

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[DictRow]]:
        """The connection, opened if need be; a lost server becomes JobStoreUnavailableError
        (and the connection is opened anew next time)."""
        with self._lock:
            if self._closed:  # a straggling thread of a closed manager opens nothing
                raise JobStoreUnavailableError("This job store is closed; open a new JobManager.")
            try:
                if self._db is None or self._db.closed:
                    db = _BoundedConnection.connect(
                        self._url, autocommit=True, row_factory=dict_row, **self._timeouts
                    )
                    db.call_timeout = max(1.0, self._lease / 3)
                    self._db = db
                    if self._lost:
                        self._lost = False
                        self._reachable_since = time.monotonic()
                yield self._db
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                self._lost = True
                if self._db is not None:
                    self._db.close()
                    self._db = None
                reason = (str(exc).strip() or type(exc).__name__).splitlines()[0]
                raise JobStoreUnavailableError(  # a refused login reads like an outage here
                    f"The job database {self._where} cannot be used ({reason}). If it is "
                    "down, new jobs can start once it is back, and running jobs record their "
                    "end then; if it refused the login or has no such database, correct the "
                    "job database URL."
                ) from None


RV = TypeVar("RV")


class _BoundedConnection(psycopg.Connection[DictRow]):
    """A connection whose every wait for the server ends within `call_timeout` seconds
    (then OperationalError: unavailable). A frozen server (its processes stopped, its disk
    stuck) still acknowledges packets, so neither TCP's user timeout nor keepalives fire,
    and statement_timeout runs on the frozen side: calls, and the running jobs waiting
    for the store's lock behind them, hung until it thawed."""

    call_timeout: float = 20.0

    def wait(self, gen: PQGen[RV], interval: float = 0.1, timeout: float | None = None) -> RV:
        return super().wait(gen, interval, self.call_timeout if timeout is None else timeout)


def _timeouts(url: str, lease: float) -> dict[str, Any]:
    """Connection options under which a server that stops answering (down, or its
    packets dropped) fails a call within about a third of the lease, so the call
    becomes JobStoreUnavailableError (a 503) instead of hanging, and a renewal is
    retried in time. The URL's own `options` are kept."""
    seconds = max(1.0, lease / 3)
    millis = int(seconds * 1000)
    options = conninfo_to_dict(url).get("options") or ""
    return {
        "connect_timeout": max(2, math.ceil(seconds)),  # libpq waits 2 s at least
        "keepalives": 1,
        "keepalives_idle": max(1, int(seconds / 2)),
        "keepalives_interval": 1,
        "keepalives_count": 3,
        "tcp_user_timeout": millis,
        "options": f"{options} -c statement_timeout={millis}".strip(),
    }


def _describe(url: str) -> str:
    """The database as user@host:port/name: never its password."""
    try:
        parts: dict[str, Any] = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        raise ConfigError(
            "The job database URL is not valid; write it as postgresql://user@host:port/db."
        ) from None
    host = parts.get("host", "localhost")
    return f"{parts.get('user', '')}@{host}:{parts.get('port', 5432)}/{parts.get('dbname', '')}"
