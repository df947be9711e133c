"""The read-ahead helper's program (`readahead.ReadAhead` starts it): asks the kernel to read
the files of a backup's sources into the page cache, several at once, a window ahead of the
archive writer.

It walks the sources in the writer's order (names sorted, depth first, from directory
descriptor to directory descriptor, never through a link: a source that is a link is not
entered, as the writer archives it as a link), and WORKERS threads open each regular file
and ask for it (`posix_fadvise` WILLNEED, which does not wait for the disk), so the disk has
many inodes and files to fetch at once where the writer asks for one at a time. A worker
waits while what was asked for, counted as the archive counts it (a header and the padded
data for each file), is more than the window ahead of what the writer has written, which the
main process sends down a pipe (8 bytes, little-endian, each time it grows). It stops once
WARM_FILES files in a row were in the page cache already (on a warm tree it would only
compete with the writer), when the pipe closes, or at the end.

Only a hint: nothing here changes what is archived, and any failure ends only the helper.
This module imports the standard library only, and runs as the helper's program
(`python -I -S prefetcher.py PROGRESS WINDOW`, the sources NUL-separated on its standard
input, with only the loader's and locale's variables), so a helper starts in milliseconds.
"""

from __future__ import annotations

import os
import queue
import signal
import stat
import struct
import sys
import threading
from collections.abc import Sequence
from contextlib import suppress

__all__ = ["POSITION", "WARM_FILES", "WORKERS", "Progress", "advise", "prefetch"]

#: Files opened and asked for at once: eight `cat`s read 20,000 small files from a cold
#: cache in 0.87 s where one took 2.45 s (docs/benchmarks.md).
WORKERS = 8
#: After this many files in a row found in the page cache, the tree is warm: stop.
WARM_FILES = 256
#: The writer's position in the archive, as the main process sends it.
POSITION = struct.Struct("<Q")
#: The archive's unit: each entry's header, and the padded data of a file (tarfile's).
BLOCK = 512

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: A FIFO or device swapped in for a file neither blocks the open nor becomes a terminal.
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class Progress:
    """How far the writer is (`written`, from the pipe) and how far what was asked for
    reaches (`asked`, in bytes of archive); `ended` once the helper is to stop."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.written = self.asked = 0
        self.ended = False
        self._cached_in_a_row = 0
        self._changed = threading.Condition()

    def follow(self, pipe: int) -> None:
        """Take the writer's positions from `pipe` until it closes; then end."""
        with open(pipe, "rb", buffering=0) as positions:
            while len(message := positions.read(POSITION.size)) == POSITION.size:
                with self._changed:
                    (self.written,) = POSITION.unpack(message)
                    self._changed.notify_all()
        self.end()

    def end(self) -> None:
        with self._changed:
            self.ended = True
            self._changed.notify_all()

    def reserve(self, size: int) -> bool:
        """Wait until `size` more bytes of archive fit in the window (or nothing asked for
        is ahead of the writer), and count them; False once ended."""
        with self._changed:
            self._changed.wait_for(
                lambda: (
                    self.ended
                    or self.asked <= self.written
                    or self.asked + size - self.written <= self.window
                )
            )
            if not self.ended:
                self.asked += size
            return not self.ended

    def passed(self, size: int) -> None:
        """Count `size` bytes of archive that nobody reads ahead (a directory's header)."""
        with self._changed:
            self.asked += size

    def found(self, cached: bool) -> None:
        """Count a file that was in the page cache already, or was not."""
        with self._changed:
            self._cached_in_a_row = self._cached_in_a_row + 1 if cached else 0
            if self._cached_in_a_row >= WARM_FILES:
                self.ended = True
                self._changed.notify_all()


class Directory:
    """An open directory of the walk, closed once the walk and every worker given one of
    its files are done with it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._users = 1
        self._lock = threading.Lock()

    def take(self) -> Directory:
        with self._lock:
            self._users += 1
        return self

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            last = self._users == 0
        if last:
            os.close(self.fd)


def advise(fd: int, progress: Progress) -> None:
    """Ask the kernel to read the open file `fd` (its first `window` bytes), if it is a
    regular file not in the page cache already and there is room in the window."""
    status = os.fstat(fd)
    if not stat.S_ISREG(status.st_mode):
        return
    size = min(status.st_size, progress.window)
    if not progress.reserve(BLOCK + -(-status.st_size // BLOCK) * BLOCK) or not size:
        return
    try:
        os.preadv(fd, [bytearray(1)], 0, os.RWF_NOWAIT)
    except OSError:  # EAGAIN: not cached; EOPNOTSUPP: the file system cannot say
        os.posix_fadvise(fd, 0, size, os.POSIX_FADV_WILLNEED)
        progress.found(cached=False)
    else:
        progress.found(cached=True)


#: A file for the workers: its directory and name.
Task = tuple[Directory, bytes | str]


def prefetch(sources: Sequence[bytes], progress: Progress) -> None:
    """Walk `sources` in the writer's order and `advise` each regular file from WORKERS
    threads, until the end or `progress` ends."""
    tasks: queue.Queue[Task | None] = queue.Queue(maxsize=64 * WORKERS)
    workers = [threading.Thread(target=_work, args=(tasks, progress)) for _ in range(WORKERS)]
    for worker in workers:
        worker.start()
    try:
        for source in sources:
            with suppress(OSError):
                _walk_source(source, tasks, progress)
    finally:
        for _ in workers:
            tasks.put(None)
        for worker in workers:
            worker.join()


def _walk_source(source: bytes, tasks: queue.Queue[Task | None], progress: Progress) -> None:
    """A source's parents are the caller's path; the source itself and all below it are
    never followed if links (as `sourcetree.walk_source` walks)."""
    parent_path, name = os.path.split(source.rstrip(b"/") or b"/")
    parent = Directory(os.open(parent_path or b".", _DIRECTORY))
    try:
        status = os.stat(name or b".", dir_fd=parent.fd, follow_symlinks=False)
        if stat.S_ISREG(status.st_mode):
            tasks.put((parent.take(), name))
        elif stat.S_ISDIR(status.st_mode):
            progress.passed(BLOCK)
            directory = Directory(os.open(name or b".", _DIRECTORY, dir_fd=parent.fd))
            try:
                _walk(directory, tasks, progress)
            finally:
                directory.release()
    finally:
        parent.release()


def _walk(directory: Directory, tasks: queue.Queue[Task | None], progress: Progress) -> None:
    with os.scandir(directory.fd) as listing:
        entries = sorted(
            (entry.name, entry.is_dir(follow_symlinks=False), entry.is_file(follow_symlinks=False))
            for entry in listing
        )
    for name, is_directory, is_file in entries:
        if progress.ended:
            return
        if is_file:
            tasks.put((directory.take(), name))
            continue
        progress.passed(BLOCK)  # its header
        if is_directory:
            with suppress(OSError):
                below = Directory(os.open(name, _DIRECTORY, dir_fd=directory.fd))
                try:
                    _walk(below, tasks, progress)
                finally:
                    below.release()


def _work(tasks: queue.Queue[Task | None], progress: Progress) -> None:
    while (task := tasks.get()) is not None:
        directory, name = task
        if progress.ended:
            directory.release()
            continue
        with suppress(OSError):
            fd = _open(directory, name)
            try:
                advise(fd, progress)
            finally:
                os.close(fd)


def _open(directory: Directory, name: bytes | str) -> int:
    """A task's file, open (never through a link); its directory released in any case."""
    try:
        return os.open(name, _FILE, dir_fd=directory.fd)
    finally:
        directory.release()


def _main(pipe: int, window: int, sources: Sequence[bytes]) -> None:
    """The helper: its sources are NUL-separated on its standard input (not in its
    command line, which every local user can read)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides what it stops
    progress = Progress(window)
    threading.Thread(target=progress.follow, args=(pipe,), daemon=True).start()
    prefetch(sources, progress)


if __name__ == "__main__":
    _main(int(sys.argv[1]), int(sys.argv[2]), sys.stdin.buffer.read().split(b"\0")[:-1])
