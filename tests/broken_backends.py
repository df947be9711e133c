"""Backends that each get one thing of the store contract wrong, the way real ones have.

tests/test_testing.py runs the conformance suite against each and expects it to fail, by
name, the tests that catch the mistake: the suite's own test. Each starts from the correct
`SQLiteStore` and overrides one thing.
"""

from __future__ import annotations

import builtins
import os
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from strongroom import ObjectInfo
from tests.sqlite_store import SQLiteStore

__all__ = [
    "DeleteNotIdempotent",
    "ListNotRecursive",
    "ListNotSorted",
    "NaiveTimes",
    "NoTimes",
    "OneDatabasePerProcess",
    "PartialWritesVisible",
    "PrefixExists",
    "RacyPutIfAbsent",
    "UntranslatedErrors",
]


class ListNotSorted(SQLiteStore):
    """Lists in the order objects were written, as a log-structured store would."""

    def list(self, prefix: str) -> builtins.list[ObjectInfo]:
        with self._connect(prefix) as db:
            rows = db.execute("SELECT key FROM objects ORDER BY rowid").fetchall()
        listed = {obj.key: obj for obj in super().list(prefix)}
        return [listed[key] for (key,) in rows if key in listed]


class ListNotRecursive(SQLiteStore):
    """Lists only the objects directly below the prefix, as one level of a directory."""

    def list(self, prefix: str) -> builtins.list[ObjectInfo]:
        return [obj for obj in super().list(prefix) if "/" not in obj.key[len(prefix) :]]


class NaiveTimes(SQLiteStore):
    """Gives local times without their time zone, so nobody can compare them."""

    def list(self, prefix: str) -> builtins.list[ObjectInfo]:
        return [
            replace(obj, modified=datetime.fromtimestamp(obj.modified.timestamp()))
            for obj in super().list(prefix)
            if obj.modified is not None
        ]


class NoTimes(SQLiteStore):
    """Gives no times at all, which silently turns off the sweep of leftovers."""

    def list(self, prefix: str) -> builtins.list[ObjectInfo]:
        return [replace(obj, modified=None) for obj in super().list(prefix)]


class PartialWritesVisible(SQLiteStore):
    """Claims atomic puts but writes in place, 64 KiB at a time, as a file opened for writing."""

    def put(
        self,
        key: str,
        data: bytes | bytearray | memoryview,
        *,
        overwrite: bool = False,
        retain_until: datetime | None = None,
    ) -> None:
        step = 64 * 1024
        super().put(key, data[:step], overwrite=overwrite)
        for start in range(step, len(data), step):
            with self._connect(key) as db:
                piece = bytes(data[start : start + step])
                db.execute("UPDATE objects SET data = data || ? WHERE key = ?", (piece, key))


class RacyPutIfAbsent(SQLiteStore):
    """Claims put-if-absent but checks, then writes: two writers can both pass the check."""

    def put(
        self,
        key: str,
        data: bytes | bytearray | memoryview,
        *,
        overwrite: bool = False,
        retain_until: datetime | None = None,
    ) -> None:
        if not overwrite and self.exists(key):
            raise FileExistsError(key)
        time.sleep(0.001)  # the round trip between the check and the write, on a network
        super().put(key, data, overwrite=True)


class PrefixExists(SQLiteStore):
    """Answers `exists` with a prefix query, as an object store's listing call would."""

    def exists(self, key: str) -> bool:
        return any(obj.key.startswith(key) for obj in self.list(key))


class DeleteNotIdempotent(SQLiteStore):
    """Refuses to delete what is not there."""

    def delete(self, keys: builtins.list[str]) -> None:
        for key in keys:
            if not self.exists(key):
                raise FileNotFoundError(key)
        super().delete(keys)


class OneDatabasePerProcess(SQLiteStore):
    """Claims persistent, but each process writes a database of its own, as `memory://`
    keeps objects in the process that wrote them: no one else ever reads a backup."""

    def __init__(self, name: str, url: str, database: Path) -> None:
        super().__init__(name, url, database.with_name(f"{database.name}.{os.getpid()}"))


class UntranslatedErrors(SQLiteStore):
    """Lets sqlite3's own exceptions escape, so the command line shows a traceback."""

    storage_errors = (OSError,)
