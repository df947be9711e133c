"""Reading ahead of the archive writer, so a backup of many small files waits less on the disk.

The archive writer reads one file after another. From a cold cache each small file costs a
disk round trip (its inode, then its data), one at a time. A thread walks the sources in the
order the writer will (tarfile's: names sorted, depth first, links not followed) and asks
the kernel to start reading each regular file into the page cache (`posix_fadvise`
WILLNEED, which does not wait for the disk), staying at most WINDOW bytes ahead of what the
writer has written. Its `lstat` calls bring the inodes in too.

Nothing here changes what is archived: a file read ahead is read again by the writer, as it
is then; a file the walk misses or cannot open is simply not read ahead.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType

__all__ = ["WINDOW", "ReadAhead"]

#: How far ahead of the writer the kernel is asked to read (bytes); also the most of any
#: one file asked for, since a large file is read ahead by the kernel as it is read.
WINDOW = 64 * 1024 * 1024
#: How long the walk sleeps while it is a window ahead (seconds).
_PAUSE = 0.005
_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class ReadAhead:
    """A thread reading `sources` ahead while `written()` (the archive's size so far)
    grows; stopped when the context ends."""

    def __init__(
        self, sources: Sequence[Path], written: Callable[[], int], window: int = WINDOW
    ) -> None:
        self._sources, self._written, self._window = sources, written, window
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="strongroom-readahead", daemon=True)

    def __enter__(self) -> ReadAhead:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        asked = 0
        for source in self._sources:
            for path, size in _files_in_archive_order(os.fsencode(source)):
                while asked - self._written() >= self._window:
                    if self._stop.wait(_PAUSE):
                        return
                if self._stop.is_set():
                    return
                asked += _advise(path, min(size, self._window))


def _files_in_archive_order(path: bytes) -> Iterator[tuple[bytes, int]]:
    """The regular files under `path` (or `path` itself) and their sizes, in the order
    `tarfile.add` archives them; whatever cannot be read is passed over."""
    try:
        status = os.lstat(path)
    except OSError:
        return
    if stat.S_ISREG(status.st_mode):
        yield path, status.st_size
    elif stat.S_ISDIR(status.st_mode):
        try:
            names = sorted(os.listdir(os.fsdecode(path)))  # sorted as tarfile sorts them
        except OSError:
            return
        for name in names:
            yield from _files_in_archive_order(os.path.join(path, os.fsencode(name)))


def _advise(path: bytes, size: int) -> int:
    """Ask the kernel to read the first `size` bytes of the file; how many it was asked."""
    try:
        fd = os.open(path, _OPEN)
    except OSError:
        return 0
    try:
        os.posix_fadvise(fd, 0, size, os.POSIX_FADV_WILLNEED)
    except OSError:
        return 0
    finally:
        os.close(fd)
    return size
