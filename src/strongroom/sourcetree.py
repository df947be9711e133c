"""Walking a backup source the way the archive holds it: names sorted, depth first, from
directory descriptor to directory descriptor, never through a link.

The source itself is the caller's path; below it every directory is opened relative to its
parent's descriptor with `O_NOFOLLOW`, so a directory swapped for a link while a backup runs
is not entered and nothing outside the source is reached. Entries carry their `lstat`; the
one who reads a file opens it with `open_regular`, which refuses anything but a regular
file (a link, FIFO or device put in its place meanwhile). The archive writer and the
progress total walk with this one generator, so they meet the same files in the same
order (the read-ahead helper, `prefetcher`, walks by the same rules in a process of its
own, which may import nothing of strongroom's).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SourceChanged", "SourceEntry", "open_regular", "read_link", "walk_source"]

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: A FIFO or device swapped in for a file neither blocks the open nor becomes a terminal.
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class SourceChanged(OSError):
    """An entry that is no longer what the walk listed (removed, or something else put in
    its place) by the time it is read."""


class SourceUnreadable(OSError):
    """An entry this user may not read (or that fails to read), named by its path in the
    archive (`filename`) until `locate` names it on this machine: the walk opens entries
    relative to their directory, so the system's error names only the last part."""

    def locate(self, source: Path) -> None:
        """Name the entry by its path under `source`, whose archive name is its first part."""
        self.filename = str(source.joinpath(*str(self.filename).split("/")[1:]))

    def __str__(self) -> str:
        advice = (
            "strongroom reads what it backs up as this user: let it read that"
            if self.errno in (errno.EACCES, errno.EPERM)
            else "check the disk it is on"
        )
        return (
            f"cannot read {self.filename}: {self.strerror}; {advice}, or leave it out of "
            "the sources. Nothing was committed."
        )


@dataclass(frozen=True, slots=True)
class SourceEntry:
    """One file, directory, link or special file of a source, as `lstat` saw it.

    `directory` is the descriptor of the directory holding it, open only until the walk
    moves on.
    """

    directory: int
    name: bytes
    arcname: str
    status: os.stat_result


def walk_source(
    source: Path, arcname: str, on_error: Callable[[str, OSError], None]
) -> Iterator[SourceEntry]:
    """Every entry of `source` (archived as `arcname`), a directory before what it holds.

    An entry that cannot be looked at, or a directory that cannot be entered, goes to
    `on_error` with its archive name; whatever that raises ends the walk, otherwise the
    walk goes on without it. Closing the generator closes its descriptors.
    """
    parent, name = os.path.split(os.fsencode(source).rstrip(b"/") or b"/")
    fd = os.open(parent or b".", _DIRECTORY)  # the source's own parents are the caller's
    try:
        yield from _walk(fd, name or b".", arcname, on_error)
    finally:
        os.close(fd)


def _walk(
    directory: int, name: bytes, arcname: str, on_error: Callable[[str, OSError], None]
) -> Iterator[SourceEntry]:
    try:
        status = os.stat(name, dir_fd=directory, follow_symlinks=False)
    except OSError as exc:
        on_error(arcname, _changed(exc, arcname))
        return
    yield SourceEntry(directory, name, arcname, status)
    if not stat.S_ISDIR(status.st_mode):
        return
    try:
        fd = os.open(name, _DIRECTORY, dir_fd=directory)
    except OSError as exc:
        on_error(arcname, _changed(exc, arcname))
        return
    try:
        try:
            entries = sorted(os.listdir(fd))  # str names, sorted as tarfile sorts them
        except OSError as exc:
            on_error(arcname, _changed(exc, arcname))
            return
        for entry in entries:
            yield from _walk(fd, os.fsencode(entry), f"{arcname}/{entry}", on_error)
    finally:
        os.close(fd)


def open_regular(entry: SourceEntry) -> tuple[int, os.stat_result]:
    """A descriptor of the regular file named by `entry`, and its status now; raises
    `SourceChanged` if a link, FIFO, device or directory has taken its place. (Another
    regular file in its place, as an editor saves, is archived: it is in the source.)"""
    try:
        fd = os.open(entry.name, _FILE, dir_fd=entry.directory)
    except OSError as exc:
        raise _changed(exc, entry.arcname) from None
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise SourceChanged("it is no longer a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd, status


def read_link(entry: SourceEntry) -> str:
    """Where the symbolic link `entry` points; raises `SourceChanged` if it is no longer
    a link."""
    try:
        return os.fsdecode(os.readlink(entry.name, dir_fd=entry.directory))
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            raise SourceChanged("it is no longer a link") from None
        raise _changed(exc, entry.arcname) from None


def _changed(exc: OSError, arcname: str) -> OSError:
    """A removal or a link put in the place of what was listed, as `SourceChanged`; any
    other failure (no permission, an I/O error) as `SourceUnreadable`."""
    if isinstance(exc, FileNotFoundError):
        return SourceChanged("it was removed")
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return SourceChanged("a link or a file took its place")
    return SourceUnreadable(exc.errno, exc.strerror, arcname)
