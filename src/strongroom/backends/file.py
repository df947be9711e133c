"""The built-in filesystem backend (`file://` URLs), registered like any third-party plugin.

Writes are durable and atomic: a temporary file is written and fsynced, then linked
into place (`os.link` fails if the name exists, which gives put-if-absent) or renamed
over the old object, and the directory is fsynced.

Every operation walks its key one name at a time from the store's root (`root.Root`) and
follows no link below it, so a link planted in a shared backup directory cannot make a
read, write, listing or cleanup reach outside the store. Listings and reads skip links and
special files with a warning; writes and deletes that would pass through one are refused.
"""

from __future__ import annotations

import builtins
import logging
import os
import posixpath
import re
import shlex
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from ..config import StoreSpec
from ..errors import ConfigError, StoreError, StoreMissingError, StoreUnavailableError
from ..plugins import BackendOptions, BackendRegistry, hookimpl
from ..store import ObjectInfo, ScanResult, Store, StoreCapabilities, check_limit
from ..writeback import start_writeback
from .mounts import unmounted_mount_point
from .root import MAX_WALK_DEPTH, MissingRootError, NotFollowedError, Root, kind_of

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

__all__ = ["CONFINE_OPTION", "LocalStore", "open_local_store"]

logger = logging.getLogger("strongroom")

#: The option the admin API sets on a file store a caller registers: the allowed directory
#: it lies under, from which its path is walked without following links (web/fence.py).
CONFINE_OPTION = "confine_to"
#: Tries at creating a file whose directory a concurrent delete may prune meanwhile.
ATTEMPTS = 10


#: A put's temporary file (`_write`): skipped by listings; deleted with its prefix.
_TEMPORARY = re.compile(r"\..+\.[0-9a-f]{16}\.tmp", re.DOTALL)


class LocalStore(Store):
    """A store in a local (or mounted) directory. `fs` is there for callers that want
    fsspec, but every operation of the store itself goes through `Root`."""

    capabilities = StoreCapabilities(atomic_put=True, put_if_absent=True, persistent=True)
    concurrency = 2
    late_puts = False  # a put's system calls are over when it returns

    def __init__(
        self, name: str, url: str, directory: Path, confine_to: Path | None = None
    ) -> None:
        """`confine_to`: a directory above `directory` from which the store's own path is
        walked without following links (`CONFINE_OPTION`)."""
        super().__init__(name, url, None, str(directory))
        below = () if confine_to is None else directory.relative_to(confine_to).parts
        self._root = Root(directory if confine_to is None else confine_to, below)
        self._unsynced: dict[str, int] = {}  # key → the descriptor put_unsynced wrote it with
        self._unsynced_lock = threading.Lock()

    @property
    def fs(self) -> AbstractFileSystem:
        """fsspec's view of the directory, made on first use: importing fsspec took a third
        of every command's start from a cold cache, and the store itself never needs it."""
        if self._fs is None:
            from fsspec.implementations.local import LocalFileSystem

            self._fs = LocalFileSystem(skip_instance_cache=True)
        return self._fs

    def check_mounted(self) -> None:
        """Refused under a mount point that the system lists (/etc/fstab, a systemd mount
        unit) and nothing is mounted on."""
        expected = unmounted_mount_point(self._root.reached)
        if expected is not None:
            point = shlex.quote(expected.point)
            raise StoreUnavailableError(
                f"Store {self.name!r} ({self.url}) lies under {point}, which "
                f"{expected.listed_in} mounts, but nothing is mounted there now: its "
                "directory would be on the disk below, so nothing was read or written. Mount "
                f"it (as root: '{expected.mount_command}'), then try again. Only if that disk "
                "is gone for good and the store is to live on the disk below, "
                f"{expected.unlist}."
            )

    def initialize(self) -> None:
        """Make the store's directory and its missing parents."""
        with self.translate_errors(""):
            self._root.make()

    def put(
        self,
        key: str,
        data: bytes | bytearray | memoryview,
        *,
        overwrite: bool = False,
        retain_until: datetime | None = None,
    ) -> None:
        with self.translate_errors(key), self._refusing_links(key, "written"):
            self._retrying(
                key, lambda parent, name: _write(parent, name, data, overwrite=overwrite)
            )

    def _retrying(self, key: str, write: Callable[[int, str], object]) -> None:
        """Run `write` in the directory of `key` (made if missing), again if a concurrent
        delete prunes that directory meanwhile."""
        attempt = 1
        while True:
            try:
                with self._root.parent(key, create=True) as (parent, name):
                    write(parent, name)
                return
            except FileNotFoundError:
                if attempt == ATTEMPTS:
                    raise
                attempt += 1

    def put_unsynced(
        self, key: str, data: bytes | bytearray | memoryview, *, retain_until: datetime | None
    ) -> None:
        def write(parent: int, name: str) -> None:
            fd = _write(parent, name, data, durable=False)
            assert fd is not None
            with self._unsynced_lock:
                self._unsynced[key] = fd

        with self.translate_errors(key), self._refusing_links(key, "written"):
            self._retrying(key, write)

    def sync(self, keys: Sequence[str]) -> None:
        """fsync each object through the descriptor that wrote it, then each directory
        holding them, once. Every descriptor is closed, even after a failure (the first
        failure is raised once all are)."""
        with self._unsynced_lock:
            held = {key: self._unsynced.pop(key, None) for key in keys}
        failure: BaseException | None = None
        for key, fd in held.items():
            try:
                with self.translate_errors(key):
                    if fd is None:  # not written by this instance's put_unsynced
                        fd = self._open(key)
                    os.fsync(fd)
            except BaseException as exc:
                failure = failure or exc
            finally:
                if fd is not None:
                    os.close(fd)
        if failure is not None:
            raise failure
        for directory in sorted({posixpath.dirname(key) for key in keys}):
            with self.translate_errors(directory), self._root.directory(directory) as fd:
                os.fsync(fd)

    def get(self, key: str, *, limit: int | None = None) -> bytes:
        with open(self._open(key), "rb") as handle, self.translate_errors(key):
            data = handle.read(-1 if limit is None else limit + 1)
        check_limit(key, data, limit)
        return data

    def prefetch(self, keys: Sequence[str]) -> None:
        """Ask the kernel to start reading each object into the page cache (WILLNEED)."""
        for key in keys:
            try:
                fd = self._root.open_file(key)
            except (OSError, NotFollowedError):  # only a hint: `get` says what is wrong
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            except OSError:
                pass
            finally:
                os.close(fd)

    def exists(self, key: str) -> bool:
        try:
            os.close(self._open(key))
        except FileNotFoundError:
            return False
        return True

    def occupied(self, key: str) -> bool:
        """Whether anything is at `key`, hidden from listings or not (a directory, a link, a
        name starting with '.' inside a directory there)."""
        with self.translate_errors(key):
            try:
                with self._root.parent(key) as (parent, name):
                    os.stat(name, dir_fd=parent, follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                return False
            except NotFollowedError:  # a link on the way there
                return True
        return True

    def list(self, prefix: str) -> builtins.list[ObjectInfo]:
        return self.scan(prefix).objects

    def scan(self, prefix: str) -> ScanResult:
        return self._scan(prefix)[0]

    def _scan(self, prefix: str) -> tuple[ScanResult, builtins.list[str]]:
        """What `scan` finds, and the temporary files of puts under the prefix (running, or
        left by a process killed as it wrote: never objects, so never listed)."""
        objects: builtins.list[ObjectInfo] = []
        skipped: dict[str, str] = {}
        temporaries: builtins.list[str] = []
        top = prefix.rstrip("/")
        with self.translate_errors(prefix):
            for key, status in self._root.walk(top):
                if key == top and not stat.S_ISLNK(status.st_mode):
                    skipped[key] = self._warned(self._not_a_directory(key, status))
                elif stat.S_ISDIR(status.st_mode):  # as deep as the walk goes
                    skipped[key] = self._warned(self._too_deep(key))
                elif not stat.S_ISREG(status.st_mode):
                    skipped[key] = self._skipped(key, status, "it was skipped")
                elif posixpath.basename(key).startswith("."):  # a put's temporary file
                    if _TEMPORARY.fullmatch(posixpath.basename(key)):
                        temporaries.append(key)
                else:
                    modified = datetime.fromtimestamp(status.st_mtime, UTC)
                    objects.append(ObjectInfo(key, status.st_size, modified))
        return ScanResult(sorted(objects, key=lambda obj: obj.key), skipped), temporaries

    def delete(self, keys: builtins.list[str]) -> None:
        """Delete the objects, then the directories they leave empty (up to the root).
        A link at a key is removed like a file (unlink never follows it)."""
        for key in keys:
            with (
                self.translate_errors(key),
                self._refusing_links(key, "deleted"),
                suppress(FileNotFoundError),
                self._root.parent(key) as (parent, name),
            ):
                os.unlink(name, dir_fd=parent)
        for directory in sorted({posixpath.dirname(key) for key in keys}, reverse=True):
            self._prune(directory)

    def delete_prefix(self, prefix: str) -> None:
        """Delete every object under `prefix`, and the temporary files of puts there (a
        backup's data is deleted whole, and swept once the create that wrote it is dead:
        a put it was killed in left one, up to a chunk's size); what the listing skipped
        stays, and a StoreError names it once the rest is gone."""
        found, temporaries = self._scan(prefix)
        self.delete([obj.key for obj in found.objects])
        for key in temporaries:  # a running put's may go meanwhile: its link then fails
            with suppress(OSError), self._root.parent(key) as (parent, name):
                os.unlink(name, dir_fd=parent)
        self._prune(prefix.rstrip("/"))
        if found.skipped:
            skipped = " ".join(found.skipped.values())
            raise StoreError(f"Not all of {prefix!r} was deleted. {skipped}")

    def _prune(self, directory: str) -> None:
        """Remove the directory and then its parents, up to the root, while they are empty."""
        while directory:
            try:
                with self._root.parent(directory) as (parent, name):
                    os.rmdir(name, dir_fd=parent)
            except FileNotFoundError:
                pass
            except OSError:
                return  # not empty (someone else's objects live here), or not a directory
            directory = posixpath.dirname(directory)

    def _open(self, key: str) -> int:
        """A descriptor of the object's file. A link or special file there, or on the way
        there, is not read: FileNotFoundError, and a warning."""
        with self.translate_errors(key):
            try:
                return self._root.open_file(key)
            except NotFollowedError as exc:
                message = self._skipped(exc.path, exc.status, f"{key!r} was not read")
                raise FileNotFoundError(message) from None

    @contextmanager
    def translate_errors(self, key: str) -> Iterator[None]:
        """As every store's, but a missing directory is told alone: no key is to blame."""
        with super().translate_errors(key):
            try:
                yield
            except MissingRootError as exc:
                error = StoreUnavailableError if exc.linked else StoreMissingError
                raise error(f"Store {self.name!r} ({self.url}): {exc.strerror}.") from None

    @contextmanager
    def _refusing_links(self, key: str, done: str) -> Iterator[None]:
        """Turn a link (or special file) on the way to `key` into a StoreError."""
        try:
            yield
        except NotFollowedError as exc:
            message = self._not_followed(exc.path, exc.status, f"{key!r} was not {done}")
            raise StoreError(message) from None

    def _skipped(self, path: str, status: os.stat_result, outcome: str) -> str:
        """Warn that an entry was not followed (a planted link may be an attack); the
        same sentence goes to the caller."""
        return self._warned(self._not_followed(path, status, outcome))

    @staticmethod
    def _warned(message: str) -> str:
        logger.warning("%s", message)
        return message

    def _not_followed(self, path: str, status: os.stat_result, outcome: str) -> str:
        where = f"Store {self.name!r} ({self.url}): {path!r} is {kind_of(status)}"
        if stat.S_ISDIR(status.st_mode):
            return f"{where} where strongroom keeps a file, so {outcome}. Move it out of the store."
        return (
            f"{where}; strongroom never follows links in a store, nor opens anything there but "
            f"files and directories, so {outcome}. Only the store's root may be a link: remove "
            "this one, or move what it points to into the store."
        )

    def _not_a_directory(self, path: str, status: os.stat_result) -> str:
        kind = "a file" if stat.S_ISREG(status.st_mode) else kind_of(status)
        return (
            f"Store {self.name!r} ({self.url}): {path!r} is {kind} where strongroom keeps a "
            "directory, so nothing under it was listed. Move it out of the store."
        )

    def _too_deep(self, path: str) -> str:
        return (
            f"Store {self.name!r} ({self.url}): {path!r} is a directory {MAX_WALK_DEPTH} levels "
            "down, deeper than any object strongroom writes, so what lies below it was "
            "skipped. Move it out of the store."
        )


def open_local_store(spec: StoreSpec) -> LocalStore:
    parts = urlsplit(spec.url)
    if parts.netloc not in ("", "localhost") or not parts.path:
        raise ConfigError(
            f"Store {spec.name!r}: {spec.url!r} is not a local directory URL; "
            "write it as file:///absolute/path."
        )
    directory = Path(unquote(parts.path))
    if set(spec.options) - {CONFINE_OPTION}:
        raise ConfigError(
            f"Store {spec.name!r}: the filesystem backend takes no options but "
            f"{CONFINE_OPTION} (got {', '.join(sorted(spec.options))})."
        )
    confine_to = spec.options.get(CONFINE_OPTION)
    if confine_to is not None and not directory.is_relative_to(str(confine_to)):
        raise ConfigError(
            f"Store {spec.name!r}: {spec.url!r} is not under its {CONFINE_OPTION} "
            f"directory {confine_to!r}."
        )
    confined = None if confine_to is None else Path(str(confine_to))
    return LocalStore(spec.name, spec.url, directory, confined)


@hookimpl
def strongroom_register_backends(registry: BackendRegistry) -> None:
    registry.add("file", open_local_store, options=BackendOptions())  # it takes no options


def _write(
    parent: int,
    name: str,
    data: bytes | bytearray | memoryview,
    *,
    overwrite: bool = False,
    durable: bool = True,
) -> int | None:
    """Write a temporary file and fsync it, link or rename it to `name`, fsync the
    directory. Unless `durable`, the fsyncs are left to `LocalStore.sync`, which gets the
    file's descriptor (returned): an fsync through a descriptor opened later could miss a
    write-back error the kernel has forgotten by then. Its writeback starts meanwhile
    (`writeback`), so that fsync finds the work done."""
    temporary = f".{name}.{os.urandom(8).hex()}.tmp"  # as _TEMPORARY matches
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temporary, flags, 0o666, dir_fd=parent)
    try:
        view = memoryview(data).cast("B")
        while view:
            view = view[os.write(fd, view) :]
        if durable:
            os.fsync(fd)
        else:
            start_writeback(fd)
        if overwrite:
            os.replace(temporary, name, src_dir_fd=parent, dst_dir_fd=parent)
        else:  # raises FileExistsError: the put-if-absent
            os.link(temporary, name, src_dir_fd=parent, dst_dir_fd=parent, follow_symlinks=False)
    except BaseException:
        os.close(fd)
        raise
    finally:
        with suppress(FileNotFoundError):
            os.unlink(temporary, dir_fd=parent)
    if not durable:
        return fd
    os.close(fd)
    os.fsync(parent)
    return None
