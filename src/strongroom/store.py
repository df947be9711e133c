"""Store: a named place that holds backup objects, over an fsspec filesystem.

A store speaks in keys (`manifests/nightly`, `data/nightly/<id>/0000000003`) relative
to its root and promises only what its `capabilities` say. It knows nothing of
encryption or manifests. Backends subclass `Store` to give stronger guarantees
(the built-in filesystem backend adds atomic put-if-absent with `os.link`).
"""

from __future__ import annotations

import builtins
import posixpath
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from fsspec import AbstractFileSystem

from .errors import ConfigError, StoreUnavailableError

__all__ = [
    "LOCK_MODES",
    "OBJECT_LOCK_OPTION",
    "ObjectInfo",
    "ScanResult",
    "Store",
    "StoreCapabilities",
    "ValidationReport",
]

PROBE_PREFIX = "probes/"
#: The store option that makes every object of a backup undeletable until its retentionDate.
OBJECT_LOCK_OPTION = "object_lock"
#: Its values, as S3 Object Lock names them (in lower case).
LOCK_MODES = ("governance", "compliance")


@dataclass(frozen=True, slots=True)
class StoreCapabilities:
    """What a store really guarantees; the engine and `stores validate` rely on these."""

    #: No reader ever observes a partially written object.
    atomic_put: bool = False
    #: `put(..., overwrite=False)` is atomic: of two racing writers exactly one wins.
    put_if_absent: bool = False
    #: Objects can be made undeletable until a date (S3 Object Lock).
    object_lock: bool = False
    #: Byte ranges of an object can be read without fetching all of it.
    ranged_reads: bool = False


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    modified: datetime | None


@dataclass(frozen=True, slots=True)
class ScanResult:
    """A listing: the objects, and what the store found there but would not take for one."""

    objects: list[ObjectInfo]
    #: One sentence per entry skipped (a link in a filesystem store), naming the store and key.
    skipped: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ValidationReport:
    """The result of probing a store: which operations worked, and its capabilities."""

    store: str
    url: str
    checks: dict[str, bool]
    errors: list[str]
    capabilities: StoreCapabilities
    #: The object lock mode the store is configured to write with, if any.
    lock_mode: str | None = None

    @property
    def ok(self) -> bool:
        return all(self.checks.values())

    def to_dict(self) -> dict[str, Any]:
        """The report as `stores validate --json` and the admin API show it."""
        return {
            "name": self.store,
            "url": self.url,
            "ok": self.ok,
            "checks": self.checks,
            "errors": self.errors,
            "capabilities": asdict(self.capabilities),
            "objectLock": self.lock_mode,
        }


class Store:
    """Objects under a root of an fsspec filesystem.

    The generic implementation claims no atomicity: `put` with `overwrite=False`
    checks for the object first, which two racing writers can both pass. Backends
    with stronger primitives override `put` and declare them in `capabilities`.
    """

    capabilities = StoreCapabilities(ranged_reads=True)
    #: How many object transfers the engine runs at once against this store.
    concurrency = 4
    #: The object lock mode the store writes backups with (one of LOCK_MODES), or None.
    lock_mode: str | None = None

    def __init__(self, name: str, url: str, fs: AbstractFileSystem, root: str) -> None:
        self.name = name
        self.url = url
        self.fs = fs
        self.root = root.rstrip("/")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, url={self.url!r})"

    def path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def enable_object_lock(self, mode: str) -> None:
        """Lock every backup object until its retentionDate from now on (the `object_lock`
        option). A backend that cannot lock objects refuses, so the option is never ignored."""
        raise ConfigError(
            f"Store {self.name!r} ({self.url}) cannot lock objects until a date, so its "
            f"{OBJECT_LOCK_OPTION} option cannot be honoured. Remove the option, or keep backups "
            "that must be immutable in an S3 bucket with Object Lock enabled."
        )

    def put(
        self,
        key: str,
        data: bytes | bytearray | memoryview,
        *,
        overwrite: bool = False,
        retain_until: datetime | None = None,
    ) -> None:
        """Write an object; with `overwrite=False` raise FileExistsError if it exists.

        `retain_until` is the retentionDate of the backup the object belongs to: a store
        with `lock_mode` keeps the object undeletable until then; other stores ignore it.
        """
        with self.translate_errors(key):
            if not overwrite and self.fs.exists(self.path(key)):
                raise FileExistsError(key)
            self.fs.pipe_file(self.path(key), bytes(data))

    def get(self, key: str) -> bytes:
        """Read a whole object; FileNotFoundError if it does not exist."""
        with self.translate_errors(key):
            data: bytes = self.fs.cat_file(self.path(key))
            return data

    def exists(self, key: str) -> bool:
        with self.translate_errors(key):
            return bool(self.fs.exists(self.path(key)))

    def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object whose key starts with `prefix` (a folder-like prefix ending in '/')."""
        with self.translate_errors(prefix):
            base = self.path(prefix).rstrip("/")
            try:
                found: dict[str, dict[str, Any]] = self.fs.find(base, detail=True)
            except FileNotFoundError:
                return []
        objects: builtins.list[ObjectInfo] = []
        for path, info in found.items():
            key = self._key_of(path)
            if key is not None:
                objects.append(ObjectInfo(key, int(info.get("size") or 0), _modified(info)))
        return sorted(objects, key=lambda obj: obj.key)

    def scan(self, prefix: str) -> ScanResult:
        """`list`, and what the store skipped under `prefix` as not being objects (say, a
        planted link). A backend where every entry is an object need not override it."""
        return ScanResult(self.list(prefix))

    def delete(self, keys: builtins.list[str]) -> None:
        """Delete objects; keys that do not exist are ignored (deletion is idempotent)."""
        for key in keys:
            with self.translate_errors(key), suppress(FileNotFoundError):
                self.fs.rm_file(self.path(key))

    def delete_prefix(self, prefix: str) -> None:
        self.delete([obj.key for obj in self.list(prefix)])

    def extend_retention(self, keys: builtins.list[str], until: datetime) -> None:
        """Keep these objects locked until `until` (a later retentionDate); stores without
        `lock_mode` have no locks to extend."""

    def validate(self) -> ValidationReport:
        """Probe write, read, list and delete with a throwaway object, then remove it."""
        key = f"{PROBE_PREFIX}{uuid.uuid4().hex}"
        payload = uuid.uuid4().bytes
        checks: dict[str, bool] = {}
        errors: list[str] = []
        steps: builtins.list[tuple[str, Callable[[], object]]] = [
            ("write", lambda: self.put(key, payload)),
            ("read", lambda: self.get(key) == payload),
            ("list", lambda: any(obj.key == key for obj in self.list(PROBE_PREFIX))),
            ("delete", lambda: self._delete_probe(key)),
        ]
        if self.lock_mode:
            steps.append(("object lock", self._check_object_lock))
        for check, step in steps:
            try:
                checks[check] = step() is not False
            except Exception as exc:  # a probe reports every failure instead of stopping
                checks[check] = False
                errors.append(f"{check}: {exc}")
        return ValidationReport(
            self.name, self.url, checks, errors, self.capabilities, self.lock_mode
        )

    def now(self) -> datetime | None:
        """The store's own clock: the timestamp it gives a fresh probe object (None if none)."""
        key = f"{PROBE_PREFIX}clock-{uuid.uuid4().hex}"
        self.put(key, b"")
        try:
            return next((obj.modified for obj in self.list(PROBE_PREFIX) if obj.key == key), None)
        finally:
            self.delete([key])

    def _check_object_lock(self) -> None:
        if not self.capabilities.object_lock:
            raise ConfigError(
                f"the {OBJECT_LOCK_OPTION} option asks for {self.lock_mode} locks, but the "
                "store has no object lock; turn it on where the store lives (for S3, Object "
                "Lock on the bucket) or remove the option"
            )

    def _delete_probe(self, key: str) -> bool:
        self.delete([key])
        return not self.exists(key)

    def _key_of(self, path: str) -> str | None:
        path = path.rstrip("/")
        root = self.fs._strip_protocol(self.root).rstrip("/")
        if not path.startswith(root + "/"):
            return None
        key = path[len(root) + 1 :]
        if posixpath.basename(key).startswith("."):
            return None  # temporary files of an in-progress atomic write
        return key

    @contextmanager
    def translate_errors(self, key: str) -> Iterator[None]:
        """Turn a backend's failures into StoreUnavailableError naming the store."""
        try:
            yield
        except (FileNotFoundError, FileExistsError):
            raise
        except OSError as exc:
            raise StoreUnavailableError(
                f"Store {self.name!r} ({self.url}) failed on {key!r}: {exc}. "
                "Check that the location exists and is writable, then run "
                f"'strongroom stores validate {self.name}'."
            ) from exc


def _modified(info: dict[str, Any]) -> datetime | None:
    """The modification time from an fsspec info dict, whatever the backend calls it."""
    for field in ("mtime", "LastModified", "last_modified", "modified", "created"):
        value = info.get(field)
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=UTC)
        if isinstance(value, int | float):
            return datetime.fromtimestamp(value, tz=UTC)
    return None
