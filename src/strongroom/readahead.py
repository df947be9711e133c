"""Reading ahead of the archive writer, so a backup of many small files waits less on the disk.

The archive writer reads one file after another. From a cold cache each small file costs a
disk round trip (its inode, then its data), one at a time. A thread walks the sources in the
order the writer will (tarfile's: names sorted, depth first, links not followed) and asks
the kernel to start reading each regular file into the page cache (`posix_fadvise`
WILLNEED, which does not wait for the disk), staying at most WINDOW bytes of archive ahead
of what the writer has written. Its `lstat` calls bring the inodes in too. Once many files
in a row are in the cache already, it stops: on a warm tree it would only compete with the
writer.

The walk is the archive writer's own (`sourcetree`: from directory descriptor to directory
descriptor, never through a link), and opens only the regular file it listed. Nothing here
changes what is archived: a file read ahead is read again by the writer, as it is then; one
the walk misses is simply not read ahead. Any failure ends the read-ahead, never the backup.
"""

from __future__ import annotations

import logging
import os
import stat
import tarfile
import threading
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path
from types import TracebackType

from .sourcetree import SourceEntry, open_regular, walk_source

__all__ = ["WINDOW", "ReadAhead"]

#: How far ahead of the writer the kernel is asked to read (bytes of archive); also the most
#: of any one file asked for, since the kernel reads a large file ahead as it is read.
WINDOW = 64 * 1024 * 1024
#: After this many files in a row found in the page cache, the tree is warm: stop.
WARM_FILES = 256
#: How long the walk sleeps while it is a window ahead (seconds).
_PAUSE = 0.005
_log = logging.getLogger("strongroom.readahead")


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
        self._thread.join(timeout=1)  # a daemon: a walk stuck on a dead mount is left behind

    def _run(self) -> None:
        try:
            self._read_ahead()
        except Exception:  # advisory only: the writer reads every file itself anyway
            _log.debug("Reading ahead stopped", exc_info=True)

    def _read_ahead(self) -> None:
        position = 0  # where the archive will be once the writer has reached the file
        cached_in_a_row = 0
        for source in self._sources:
            for entry in walk_source(source, "", _ignore):
                if self._stop.is_set():
                    return
                if not stat.S_ISREG(entry.status.st_mode):
                    continue
                size = entry.status.st_size
                position += tarfile.BLOCKSIZE + -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
                while position - self._written() > self._window:
                    if self._stop.wait(_PAUSE):
                        return
                cached = _advise(entry, min(size, self._window))
                cached_in_a_row = cached_in_a_row + 1 if cached else 0
                if cached_in_a_row == WARM_FILES:
                    return


def _ignore(arcname: str, error: OSError) -> None:
    """Whatever cannot be walked is not read ahead; the writer says why, not this thread."""


def _advise(entry: SourceEntry, size: int) -> bool:
    """Ask the kernel to read the first `size` bytes of the regular file `entry`; whether
    its first bytes were in the page cache already."""
    try:
        fd, _ = open_regular(entry)
    except OSError:
        return False
    try:
        if not size:
            return False
        with suppress(OSError):  # EAGAIN: not cached; EOPNOTSUPP: the file system cannot say
            os.preadv(fd, [bytearray(1)], 0, os.RWF_NOWAIT)
            return True
        os.posix_fadvise(fd, 0, size, os.POSIX_FADV_WILLNEED)
        return False
    except OSError:
        return False
    finally:
        os.close(fd)
