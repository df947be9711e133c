"""A directory that is never left: every path below it is walked one name at a time from
directory descriptors, and no link below it is ever followed (the shape of Go's `os.Root`).

Comparing path strings cannot stop a link planted in a shared directory; opening each
component with `O_NOFOLLOW` relative to its parent can. The root's own path is the
operator's and may run through links; only what lies below it is never followed.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import NoReturn

from ..errors import InvalidNameError

__all__ = ["MAX_WALK_DEPTH", "MissingRootError", "NotFollowedError", "Root", "kind_of"]

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
#: How many directory levels `Root.walk` descends, with one descriptor open per level:
#: strongroom's keys are four names deep, and a tree planted 1,000 levels deep exhausted
#: Python's stack (or the process's descriptors) in every listing.
MAX_WALK_DEPTH = 16


class NotFollowedError(OSError):
    """An entry below the root where a directory or file belongs is something else (a
    symbolic link, a FIFO, a socket, a device), so it was not followed or opened."""

    def __init__(self, path: str, status: os.stat_result) -> None:
        super().__init__(errno.ELOOP, f"{path!r} is {kind_of(status)}")
        self.path = path
        self.status = status


class MissingRootError(OSError):
    """The root directory itself is not there (an unmounted disk, a moved directory).
    Not a FileNotFoundError, on purpose: that would read as "no such object", and a
    store whose directory is gone would look empty; nor is the root ever made again
    on the way to an object (only `Root.make` makes it)."""

    def __init__(self, path: Path, cause: OSError) -> None:
        #: Whether the directory is there but reached through a link (else: missing).
        self.linked = isinstance(cause, NotFollowedError)
        reason = (
            "is reached through a link, which strongroom does not follow below the directory "
            "the store is confined to"
            if self.linked
            else "is missing or not a directory (is its disk mounted?)"
        )
        super().__init__(cause.errno, f"its directory {str(path)!r} {reason}")


class Root:
    """Opens directories and files below `path` without ever following a link there.

    With `below`, the root is those names under `path`, walked as a key is: a store an
    admin API caller registered under a directory the operator allowed is opened from that
    directory, so a link put in its place later cannot carry the store elsewhere.
    """

    def __init__(self, path: Path, below: tuple[str, ...] = ()) -> None:
        self.path = path
        self._below = below

    @property
    def root(self) -> Path:
        return self.path.joinpath(*self._below)

    @property
    def reached(self) -> str:
        """The root as the kernel reaches it: `path` through its links, then the names
        below, where none is followed (so nothing is told of a link's target there)."""
        return os.path.join(os.path.realpath(self.path), *self._below)

    def make(self) -> None:
        """Make the root directory and its missing parents, fsyncing each parent."""
        fd = _make_path(self.path)
        try:
            for depth, name in enumerate(self._below):
                below = _open_below(fd, name, "/".join(self._below[: depth + 1]), True)
                os.close(fd)
                fd = below
        finally:
            os.close(fd)

    @contextmanager
    def directory(self, path: str, *, create: bool = False) -> Iterator[int]:
        """A descriptor of the directory `path` ('' for the root), walked one name at a time;
        with `create`, missing directories below the root are made and their parents
        fsynced. A root that is missing, or reached through a link, is MissingRootError."""
        parts = _parts(path)
        fd = self._open_root()
        try:
            for depth, name in enumerate(parts):
                below = _open_below(fd, name, "/".join(parts[: depth + 1]), create)
                os.close(fd)
                fd = below
            yield fd
        finally:
            os.close(fd)

    @contextmanager
    def parent(self, path: str, *, create: bool = False) -> Iterator[tuple[int, str]]:
        """A descriptor of the directory that holds `path`, and the last name of `path`:
        what `os.unlink(name, dir_fd=fd)` and its kind need."""
        parts = _parts(path)
        if not parts:
            raise InvalidNameError("an empty path names no entry")
        with self.directory("/".join(parts[:-1]), create=create) as fd:
            yield fd, parts[-1]

    def open_file(self, path: str) -> int:
        """A read-only descriptor of the regular file `path`. O_NONBLOCK, so a planted FIFO
        cannot hang the caller; anything but a regular file is NotFollowedError."""
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        with self.parent(path) as (parent, name):
            try:
                fd = os.open(name, flags, dir_fd=parent)
            except OSError as exc:
                _refuse(exc, parent, name, path)
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            os.close(fd)
            raise NotFollowedError(path, status)
        return fd

    def _open_root(self) -> int:
        try:
            fd = os.open(self.path, _DIRECTORY)  # following links: the path is the operator's
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise MissingRootError(self.root, exc) from None
        try:
            for depth, name in enumerate(self._below):
                below = _open_below(fd, name, "/".join(self._below[: depth + 1]), False)
                os.close(fd)
                fd = below
        except (FileNotFoundError, NotADirectoryError, NotFollowedError) as exc:
            os.close(fd)
            raise MissingRootError(self.root, exc) from None
        except BaseException:
            os.close(fd)
            raise
        return fd

    def walk(self, path: str) -> Iterator[tuple[str, os.stat_result]]:
        """Every entry below the directory `path` that is not a directory, as its path and
        its own (lstat) status, descending into directories but never through links, and
        never more than MAX_WALK_DEPTH levels: a directory that deep is itself an entry.

        A link on the way to `path`, or anything but a directory at `path`, is itself such
        an entry; a missing `path` has none.
        """
        try:
            with self.directory(path) as fd:
                yield from _entries(fd, path, MAX_WALK_DEPTH)
        except NotFollowedError as exc:
            yield exc.path, exc.status
        except FileNotFoundError:
            return
        except NotADirectoryError:
            yield from self._not_a_directory(path)

    def _not_a_directory(self, path: str) -> Iterator[tuple[str, os.stat_result]]:
        """`path` and its status, if what is there is not a directory (else, something on
        the way to it is not: nothing)."""
        try:
            with self.parent(path) as (parent, name):
                status = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError, InvalidNameError):
            return
        if not stat.S_ISDIR(status.st_mode):
            yield path, status


def kind_of(status: os.stat_result) -> str:
    mode = status.st_mode
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "neither a regular file nor a directory"


def _entries(fd: int, directory: str, depth: int) -> Iterator[tuple[str, os.stat_result]]:
    """The entries below `fd` (named from `directory`), `depth` levels down at most."""
    found = []
    with os.scandir(fd) as listing:
        for entry in listing:  # stat while the listing's descriptor is open
            with suppress(FileNotFoundError):  # deleted meanwhile
                found.append((entry.name, entry.stat(follow_symlinks=False)))
    for name, status in found:
        path = f"{directory}/{name}" if directory else name
        if not stat.S_ISDIR(status.st_mode) or depth == 1:
            yield path, status
            continue
        try:
            below = _open_dir(fd, name, path)
        except NotFollowedError as exc:  # replaced by a link since it was listed
            yield exc.path, exc.status
            continue
        except FileNotFoundError:  # pruned meanwhile
            continue
        try:
            yield from _entries(below, path, depth - 1)
        finally:
            os.close(below)


def _make_path(path: Path) -> int:
    """Open a directory by its path (following links: that path is the operator's),
    making it and its missing parents first."""
    try:
        return os.open(path, _DIRECTORY)
    except FileNotFoundError:
        if path.parent == path:
            raise
    parent = _make_path(path.parent)
    try:
        with suppress(FileExistsError):
            _make_dir(parent, path.name)
        return os.open(path.name, _DIRECTORY, dir_fd=parent)
    finally:
        os.close(parent)


def _parts(path: str) -> list[str]:
    """The names of a relative path; an empty, '.' or '..' one would leave the walk."""
    parts = path.split("/") if path else []
    if any(name in ("", ".", "..") for name in parts):
        raise InvalidNameError(f"{path!r} has an empty, '.' or '..' component")
    return parts


def _open_below(parent: int, name: str, path: str, create: bool) -> int:
    try:
        return _open_dir(parent, name, path)
    except FileNotFoundError:
        if not create:
            raise
    with suppress(FileExistsError):  # a concurrent writer made it
        _make_dir(parent, name)
    return _open_dir(parent, name, path)  # FileNotFoundError if pruned meanwhile


def _open_dir(parent: int, name: str, path: str) -> int:
    try:
        return os.open(name, _DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
    except OSError as exc:
        _refuse(exc, parent, name, path)


def _refuse(exc: OSError, parent: int, name: str, path: str) -> NoReturn:
    """Re-raise a failed open, as NotFollowedError when a link or a special file was met."""
    if exc.errno not in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
        raise exc
    status = os.stat(name, dir_fd=parent, follow_symlinks=False)
    if stat.S_ISREG(status.st_mode) or stat.S_ISDIR(status.st_mode):
        raise exc  # a file where a directory belongs: NotADirectoryError
    raise NotFollowedError(path, status) from None


def _make_dir(parent: int, name: str) -> None:
    """Make a directory and fsync its parent, so the new entry survives a crash."""
    os.mkdir(name, dir_fd=parent)
    os.fsync(parent)
