"""A third-party backend that is no fsspec filesystem: objects as rows of an SQLite table.

It is written from the contract alone (`strongroom.Store`'s docstring, README "Writing a
backend"), and tests/test_sqlite_store.py holds it to the conformance suite. The broken
backends of tests/broken_backends.py each get one thing wrong on top of it.
"""

from __future__ import annotations

import builtins
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from strongroom import (
    BackendRegistry,
    ConfigError,
    ObjectInfo,
    Store,
    StoreCapabilities,
    StoreSpec,
    hookimpl,
)
from strongroom.store import check_limit

SCHEMA = "CREATE TABLE IF NOT EXISTS objects (key TEXT PRIMARY KEY, data BLOB, modified REAL)"


class SQLiteStore(Store):
    """Objects in one SQLite database file, which threads and processes may share.

    Each statement is a transaction of its own, so a put is atomic, and a plain INSERT
    on the primary key is put-if-absent. Times are the writer's clock (SQLite has none).
    """

    capabilities = StoreCapabilities(atomic_put=True, put_if_absent=True, persistent=True)
    storage_errors = (OSError, sqlite3.Error)

    def __init__(self, name: str, url: str, database: Path) -> None:
        super().__init__(name, url)  # no fsspec filesystem: the five operations are ours
        self.database = database
        with self._connect("") as db:
            db.execute(SCHEMA)

    def put(
        self,
        key: str,
        data: bytes | bytearray | memoryview,
        *,
        overwrite: bool = False,
        retain_until: datetime | None = None,
    ) -> None:
        verb = "INSERT OR REPLACE" if overwrite else "INSERT"
        with self._connect(key) as db:
            try:
                db.execute(f"{verb} INTO objects VALUES (?, ?, ?)", (key, bytes(data), time.time()))
            except sqlite3.IntegrityError:
                raise FileExistsError(key) from None

    def get(self, key: str, *, limit: int | None = None) -> bytes:
        column = "data" if limit is None else f"substr(data, 1, {int(limit) + 1})"  # no more
        with self._connect(key) as db:
            row = db.execute(f"SELECT {column} FROM objects WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise FileNotFoundError(key)
        data = bytes(row[0] or b"")  # SQLite's substr of an empty blob is NULL
        check_limit(key, data, limit)
        return data

    def exists(self, key: str) -> bool:
        with self._connect(key) as db:
            return db.execute("SELECT 1 FROM objects WHERE key = ?", (key,)).fetchone() is not None

    def list(self, prefix: str) -> builtins.list[ObjectInfo]:
        with self._connect(prefix) as db:
            rows = db.execute(
                "SELECT key, length(data), modified FROM objects "
                "WHERE substr(key, 1, ?) = ? ORDER BY key",  # BINARY order: Python's str order
                (len(prefix), prefix),
            ).fetchall()
        return [ObjectInfo(key, size, datetime.fromtimestamp(at, UTC)) for key, size, at in rows]

    def delete(self, keys: builtins.list[str]) -> None:
        with self._connect(keys[0] if keys else "") as db:
            db.executemany("DELETE FROM objects WHERE key = ?", [(key,) for key in keys])

    @contextmanager
    def _connect(self, key: str) -> Iterator[sqlite3.Connection]:
        """A connection for this call alone (threads must not share one), in autocommit;
        its failures become StoreUnavailableError."""
        with (
            self.translate_errors(key),
            closing(sqlite3.connect(self.database, timeout=30, isolation_level=None)) as db,
        ):
            yield db


def open_sqlite_store(spec: StoreSpec) -> SQLiteStore:
    path = urlsplit(spec.url).path
    if not path or spec.options:
        raise ConfigError(f"Store {spec.name!r}: write sqlite:///path/to/file.db, no options.")
    return SQLiteStore(spec.name, spec.url, Path(path))


@hookimpl
def strongroom_register_backends(registry: BackendRegistry) -> None:
    registry.add("sqlite", open_sqlite_store)
