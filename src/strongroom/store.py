"""Store: a named place that holds backup objects, and the contract every backend keeps.

A store speaks in keys (`manifests/nightly`, `data/nightly/<id>/0000000003`) relative
to its root and promises only what its `capabilities` say. It knows nothing of
encryption or manifests. The base class runs over an fsspec filesystem; backends
subclass it to give stronger guarantees (the built-in filesystem backend adds atomic
put-if-absent with `os.link`) or to reach storage that is no fsspec filesystem at all.
"""

from __future__ import annotations

import builtins
import errno
import functools
import inspect
import logging
import posixpath
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, IntegrityError, StoreError, StoreUnavailableError

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

__all__ = [
    "LOCK_MODES",
    "OBJECT_LOCK_OPTION",
    "ObjectInfo",
    "ScanResult",
    "Store",
    "StoreCapabilities",
    "ValidationReport",
    "check_limit",
]

PROBE_PREFIX = "probes/"
logger = logging.getLogger("strongroom")
#: The store option that makes every object of a backup undeletable until its retentionDate.
OBJECT_LOCK_OPTION = "object_lock"
#: Its values, as S3 Object Lock names them (in lower case).
LOCK_MODES = ("governance", "compliance")


@dataclass(frozen=True, slots=True)
class StoreCapabilities:
    """What a store guarantees beyond the contract of `Store`. Claim only what is true:
    the conformance suite tests every claim, `stores validate` shows them to the operator,
    and the engine warns on a create into a store that lacks `atomic_put` or `put_if_absent`.
    """

    #: No reader ever observes a partially written object, and a put cut off leaves the
    #: old object or none. Without it a create cut off mid-commit can leave a truncated
    #: manifest that blocks its name until someone deletes it.
    atomic_put: bool = False
    #: `put(..., overwrite=False)` is atomic: of writers racing for one key, from any
    #: number of instances, processes or machines, exactly one wins. Without it two
    #: creates of one name at the same moment can both succeed, and one backup is lost.
    put_if_absent: bool = False
    #: Objects can be made undeletable until a date (S3 Object Lock); `validate` refuses
    #: a `lock_mode` without it.
    object_lock: bool = False
    #: The store takes writes and keeps what it is given after the process that wrote it
    #: ends, for any other process or machine to read: it can hold backups for a disaster.
    #: Without it (`memory://` lives as long as its process, `http://` is read-only) every
    #: backup would vanish or fail, so `stores add` and the admin API refuse the store.
    persistent: bool = False

    def create_risks(self) -> list[str]:
        """What can go wrong on a create for want of a capability, one sentence each."""
        risks = []
        if not self.atomic_put:
            risks.append(
                "its writes are not atomic, so a create cut off mid-commit can leave "
                "a truncated manifest that blocks the name until it is deleted"
            )
        if not self.put_if_absent:
            risks.append(
                "it has no atomic put-if-absent, so two creates of one name at the "
                "same moment can both succeed and one backup is lost"
            )
        return risks


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """An object as a listing shows it."""

    key: str
    size: int
    #: When the store last wrote the object, by the store's own clock, timezone-aware.
    #: None only where the storage keeps no times: the engine then cannot tell a
    #: leftover's age and never sweeps it (the conformance suite fails such a store).
    modified: datetime | None


@dataclass(frozen=True, slots=True)
class ScanResult:
    """A listing: the objects, and what the store found there but would not take for one."""

    objects: list[ObjectInfo]
    #: Each entry skipped (a link in a filesystem store): its key, and one sentence naming
    #: the store and key that says why.
    skipped: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.skipped, Mapping):  # a backend's from before the keys
            unnamed = {f"(entry {n})": reason for n, reason in enumerate(self.skipped)}
            object.__setattr__(self, "skipped", unnamed)


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
    #: What works but the operator should know, one sentence each (a backend's own).
    notes: list[str] = field(default_factory=list)

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
            "notes": self.notes,
        }


class Store:
    """Objects under a root; the contract every backend keeps.

    A backend implements `put`, `get`, `exists`, `list` and `delete`. The base class
    implements them over the fsspec filesystem `fs`, so an fsspec backend may pass one
    and override only what it can do better; a backend that is no fsspec filesystem
    overrides all five and passes no `fs`. Everything else has a default built on those
    five: `scan`, `delete_prefix`, `now`, `validate`, `translate_errors`, and the object
    lock hooks (`enable_object_lock` refuses, `extend_retention` does nothing).

    One instance serves the whole process: the engine calls it from many threads at
    once (transfers, concurrent cleanups, the admin API's jobs), so every method must be
    thread-safe. Other instances, processes and machines may use the same storage at
    the same time.

    Errors: a missing object is FileNotFoundError (`get`), an existing one
    FileExistsError (`put` without `overwrite`); a store that fails or cannot be reached
    raises StoreUnavailableError, and a refusal the operator must act on another
    StoreError, each saying what to do. Nothing else may escape: wrap every call into
    the storage in `translate_errors`, which turns `storage_errors` into
    StoreUnavailableError, so the command line shows a sentence, never a traceback.

    The generic implementation claims no atomicity: `put` with `overwrite=False`
    checks for the object first, which two racing writers can both pass. Backends
    with stronger primitives override `put` and declare them in `capabilities`.
    """

    capabilities = StoreCapabilities()
    #: How many object transfers the engine runs at once against this store.
    concurrency = 4
    #: The object lock mode the store writes backups with (one of LOCK_MODES), or None.
    lock_mode: str | None = None
    #: Whether a put that failed or was interrupted may still land afterwards (a remote
    #: store's upload can outlive its request's time-out); a failed create then leaves its
    #: pending marker, so a sweep removes whatever lands. False where a put that has
    #: returned or raised has done all it ever will (a local file system).
    late_puts = True
    #: The exceptions of the storage's own library that mean the store failed; a backend
    #: with its own library (a database driver, a cloud SDK) adds its base exception.
    storage_errors: tuple[type[Exception], ...] = (OSError,)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A backend's operations name the store in an OSError that escaped its
        `translate_errors` (`_naming_the_store`); and a backend written before `get` took
        a `limit` keeps working: its `get` is wrapped to refuse a larger object once read
        (so without the memory bound)."""
        super().__init_subclass__(**kwargs)
        for name in _OPERATIONS:
            if name in cls.__dict__:
                setattr(cls, name, _naming_the_store(cls.__dict__[name]))
        get = cls.__dict__.get("get")
        if get is None:
            return
        parameters = inspect.signature(get).parameters.values()
        if any(p.name == "limit" for p in parameters):
            return
        if any(p.kind is p.VAR_KEYWORD for p in parameters):  # may pass it on, or drop it
            cls.get = _limited(get, passes_limit=True)  # type: ignore[method-assign]
            return
        logger.warning(
            "%s.get takes no 'limit': objects are read whole before their size is "
            "checked; add the keyword (see strongroom.Store.get).",
            cls.__qualname__,
        )
        cls.get = _limited(get)  # type: ignore[method-assign]

    def __init__(
        self, name: str, url: str, fs: AbstractFileSystem | None = None, root: str = ""
    ) -> None:
        self.name = name
        self.url = url
        self._fs = fs
        self.root = root.rstrip("/")

    @property
    def fs(self) -> AbstractFileSystem:
        """The fsspec filesystem the default operations use."""
        if self._fs is None:
            raise NotImplementedError(
                f"{type(self).__name__} was given no fsspec filesystem, so it must implement "
                "put, get, exists, list and delete itself."
            )
        return self._fs

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, url={self.url!r})"

    def path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def check_persistent(self) -> None:
        """Refuse a store that is not `persistent`, before it is configured: a backup into
        it would fail or vanish. A backend that knows why it is not overrides this to say so."""
        if not self.capabilities.persistent:
            raise ConfigError(
                f"Store {self.name!r} ({self.url}) cannot keep backups: its backend does not "
                "claim that what is written persists and can be read by other processes. "
                "Use a directory (file:///...) or a cloud store (s3://, az://)."
            )

    def check_mounted(self) -> None:
        """Refuse a store whose place is not the one it stands for now: a file store's
        directory under a mount point that nothing is mounted on is on the disk below it
        (backends/mounts.py). Asked before a store is marked and on every operation on it
        (`Engine.reachable_store`); most backends cannot tell, and accept."""

    def initialize(self) -> None:
        """Make the store's place where it is not there yet: called when the store is
        added or initialised (`stores init`), and for the embedded store when it is
        opened. Never on the way to an object: a place that went missing (an unmounted
        disk) must be an error, not an empty store. By default nothing (a bucket or
        container is made by its owner)."""

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

        `data` is any bytes-like object. Keys are names, not paths: nothing needs creating
        first. `retain_until` is the retentionDate of the backup the object belongs to: a
        store with `lock_mode` keeps the object undeletable until then; others ignore it.
        """
        with self.translate_errors(key):
            if not overwrite and self.exists(key):
                raise FileExistsError(key)
            self.fs.pipe_file(self.path(key), bytes(data))

    def put_unsynced(
        self, key: str, data: bytes | bytearray | memoryview, *, retain_until: datetime | None
    ) -> None:
        """Write a new object (as `put`, without overwrite) that need not be durable until
        `sync` returns for its key: a backup's chunks, written at full speed and made
        durable before its manifest commits it. Every key put so is synced afterwards (a
        store may hold resources until then: a create leaves up to (SYNCS_IN_FLIGHT +
        concurrency) x SYNC_BATCH chunks unsynced, `pipeline.py`, so what it holds for
        each should be small, a descriptor, not the data); a backend overrides both or
        neither. By default a `put`, durable already."""
        self.put(key, data, retain_until=retain_until)

    def sync(self, keys: Sequence[str]) -> None:
        """Make the objects `put_unsynced` wrote under `keys` durable (with their names).
        By default nothing is left to do."""

    def get(self, key: str, *, limit: int | None = None) -> bytes:
        """Read a whole object; FileNotFoundError if it does not exist. With a `limit`,
        at most `limit` + 1 bytes are read, and an object larger than `limit` is an
        IntegrityError (`check_limit`): what is read from a store is bounded before it
        is authenticated, so a planted object cannot fill the memory."""
        path = self.path(key)
        with self.translate_errors(key):
            if limit is None:
                data: bytes = self.fs.cat_file(path)
            else:
                try:
                    data = self.fs.cat_file(path, start=0, end=limit + 1)
                except FileNotFoundError:
                    raise
                except Exception:  # some stores refuse any range of an empty object (416)
                    if self.fs.size(path) != 0:
                        raise
                    data = b""
        check_limit(key, data, limit)
        return data

    def holds(self, key: str, body: bytes) -> bool:
        """Whether the object under `key` has exactly `body`, reading at most one byte more
        of it: a put-if-absent that met an object asks, since a retried put whose answer was
        lost meets its own first try, and a racing or planted object may be of any size."""
        try:
            return self.get(key, limit=len(body)) == body
        except (FileNotFoundError, IntegrityError):
            return False

    def prefetch(self, keys: Sequence[str]) -> None:
        """A hint: these objects will be read soon. A store that can start reading them
        without holding them in memory does (the file store: into the page cache); by
        default nothing happens. Never fails."""

    def occupied(self, key: str) -> bool:
        """Whether anything is at `key`: an object, or in a filesystem store a directory,
        link or other entry there too. A sweep takes a backup's manifest for deleted only
        where nothing is. A backend whose listings show everything need not override it."""
        return self.exists(key)

    def exists(self, key: str) -> bool:
        """Whether an object is stored under exactly this key (a prefix of keys is not)."""
        with self.translate_errors(key):  # not fs.exists: it is true of directories, and
            try:  # it takes every failure for absence
                info: dict[str, Any] = self.fs.info(self.path(key))
            except FileNotFoundError:
                return False
            return info.get("type") == "file"

    def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object whose key starts with `prefix` ('' or ending in '/'), however deep,
        sorted by key. Nothing under the prefix is an empty list, not an error; a store
        that cannot be reached raises, so it is never mistaken for an empty one."""
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
        planted link), for cleanup to report. A backend where every entry is an object
        need not override it; one that does makes `list` return `scan(prefix).objects`."""
        return ScanResult(self.list(prefix))

    def delete(self, keys: builtins.list[str]) -> None:
        """Delete objects; keys that do not exist are ignored (deletion is idempotent)."""
        for key in keys:
            with self.translate_errors(key), suppress(FileNotFoundError):
                self.fs.rm_file(self.path(key))

    def delete_prefix(self, prefix: str) -> None:
        """Delete every object under `prefix` (ending in '/'), and nothing beside it."""
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
            ("read", lambda: self.get(key, limit=len(payload)) == payload),
            ("list", lambda: any(obj.key == key for obj in self.list(PROBE_PREFIX))),
            ("delete", lambda: self._delete_probe(key)),
        ]
        if self.lock_mode:
            steps.append(("object lock", self.check_object_lock))
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
        """The store's own clock: the timestamp it gives a fresh probe object, against which
        the sweep ages leftovers (so this machine's clock never decides). None if the store
        keeps no times, which turns the sweep off. A backend with a cheaper clock overrides it."""
        key = f"{PROBE_PREFIX}clock-{uuid.uuid4().hex}"
        self.put(key, b"")
        try:
            return next((obj.modified for obj in self.list(PROBE_PREFIX) if obj.key == key), None)
        finally:
            self.delete([key])

    def check_object_lock(self) -> None:
        """Refuse (ConfigError) the `object_lock` option where the store has no object
        lock; a backend that learns it from the store overrides this to ask first."""
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
        """Turn the storage's failures (`storage_errors`) into StoreUnavailableError naming
        the store; FileNotFoundError, FileExistsError and StoreError pass: they are the contract."""
        try:
            yield
        except (FileNotFoundError, FileExistsError, StoreError):
            raise
        except self.storage_errors as exc:
            raise _failed(self, exc, f" on {key!r}" if key else "") from exc  # '': its place


#: A backend's operations that `_naming_the_store` wraps where a backend defines them.
_OPERATIONS = (
    "put",
    "put_unsynced",
    "sync",
    "get",
    "holds",
    "exists",
    "list",
    "scan",
    "delete",
    "delete_prefix",
    "extend_retention",
    "occupied",
)


def _failed(store: Store, exc: BaseException, where: str = "") -> StoreUnavailableError:
    return StoreUnavailableError(
        f"Store {store.name!r} ({store.url}) failed{where}: {exc}. {_advice(exc)}, "
        f"then run 'strongroom stores validate {store.name}'."
    )


def _naming_the_store(operation: Callable[..., Any]) -> Callable[..., Any]:
    """A backend's operation whose OSError, other than the contract's FileNotFoundError
    and FileExistsError, is a StoreUnavailableError naming the store: one that escaped a
    backend's `translate_errors` otherwise read as a fault of the user's own files (the
    restore target, a source)."""

    @functools.wraps(operation)
    def naming(store: Store, *args: Any, **kwargs: Any) -> Any:
        try:
            return operation(store, *args, **kwargs)
        except (FileNotFoundError, FileExistsError, StoreError):
            raise
        except OSError as exc:
            raise _failed(store, exc) from exc

    return naming


def _advice(exc: BaseException) -> str:
    """What to check after a storage error: most are the place (missing, read-only, not
    a directory), a few this process or machine."""
    code = exc.errno if isinstance(exc, OSError) else None
    if code in (errno.EMFILE, errno.ENFILE):
        return "This process (or the system) has too many files open; raise its limit (ulimit -n)"
    if code in (errno.ENOSPC, errno.EDQUOT):
        return "The disk is full (or the quota used up); free space"
    if code == errno.ENOTDIR:
        return "A file stands where the store keeps a directory; move it out of the store"
    return "Check that the location exists and is writable"


def _limited(get: Callable[..., bytes], *, passes_limit: bool = False) -> Callable[..., bytes]:
    """`get` checked against a limit once it has read: one that takes no limit, or one
    that takes **keywords (`passes_limit`: given the limit, which it may pass on or drop)."""

    @functools.wraps(get)
    def limited(store: Store, key: str, *, limit: int | None = None) -> bytes:
        data = get(store, key, limit=limit) if passes_limit else get(store, key)
        check_limit(key, data, limit)
        return data

    return limited


def check_limit(key: str, data: bytes, limit: int | None) -> None:
    """Refuse an object read with a limit that turned out larger: strongroom never writes
    one, so it was damaged or planted."""
    if limit is not None and len(data) > limit:
        raise IntegrityError(
            f"Object {key!r} is larger than the {limit} bytes strongroom writes there; "
            "it has been damaged or replaced."
        )


def _modified(info: dict[str, Any]) -> datetime | None:
    """The modification time from an fsspec info dict, whatever the backend calls it."""
    for name in ("mtime", "LastModified", "last_modified", "modified", "created"):
        value = info.get(name)
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=UTC)
        if isinstance(value, int | float):
            return datetime.fromtimestamp(value, tz=UTC)
    return None
