"""Starting a file's writeback as soon as it is written, so a later fsync finds it done (Linux).

The file store writes each chunk without waiting for the disk and fsyncs it later (before the
manifest commits it). Left alone, the kernel keeps those pages dirty until the fsync, so every
fsync writes its chunk, allocates its blocks and commits a journal transaction of its own,
one after another. Asking for the writeback right after the write (`sync_file_range` with
SYNC_FILE_RANGE_WRITE, which does not wait) lets the disk work while the backup goes on, and
the first fsync's journal commit then covers the blocks of every chunk written back so far.
1 GiB of random data, cold cache, until durable, medians of 8 interleaved runs: chunks synced
in batches 1.69 s with this hint and 1.85 s without (docs/benchmarks.md).

A restore asks the same for each large file it writes, every WRITEBACK_STEP bytes
(`filewrite.write_pieces`): otherwise the kernel keeps up to a tenth of the memory dirty
and the user's `sync` writes it all after the restore ends. 1 GiB of log text, cold cache,
until durable, 7 interleaved: 1.55 -> 1.13 s; random data unchanged (1.55 s, bound by
the disk reading the chunks too). Small files are not hinted one by one: that made 20,000
of them restore 25% slower (2.26 -> 2.85 s), each file then its own small write. Instead
`FlushBehind` flushes the whole file system (`syncfs`) on a thread of its own each time
FLUSH_STEP more bytes of small files have been written: 20,000 files (500 MB), cold cache,
until durable, 10 interleaved: 1.89 -> 1.78 s.

These are only hints: where the calls are missing (not Linux) or fail, nothing happens.
Durability and write errors come from fsync through the descriptor that wrote a chunk, and
from `flush_file_system` once a restore is whole, before it moves into place: `syncfs`,
which (Linux 5.8 on) reports any write-back error on the file system since the descriptor it
is given was opened, and once only through each open descriptor: so `FlushBehind` syncs
through a descriptor of its own, and never takes an error from the restore's.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading

from .libc import c_function

__all__ = ["FlushBehind", "flush_file_system", "start_writeback", "syncfs_runs"]

SYNC_FILE_RANGE_WRITE = 2
#: Small files' bytes written between two flushes of their file system.
FLUSH_STEP = 64 * 1024 * 1024


_SYNC_FILE_RANGE = c_function(
    "sync_file_range", ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint
)

_SYNCFS = c_function("syncfs", ctypes.c_int)
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def start_writeback(fd: int, offset: int = 0, length: int = 0) -> None:
    """Ask the kernel to start writing the open file `fd`'s dirty pages now, without waiting
    (`length` 0: from `offset` to the end)."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, offset, length, SYNC_FILE_RANGE_WRITE)


def flush_file_system(directory: int) -> None:
    """Write back everything written on the file system of the open `directory` and wait
    for it, its names and metadata too: OSError if the file system reported a write error
    since `directory` was opened or last flushed this way, or one nobody had been told of
    before it was opened (`syncfs`; `sync`, which tells no failure, where there is none or
    a sandbox refuses it)."""
    if _SYNCFS is not None:
        if _SYNCFS(directory) == 0:
            return
        error = ctypes.get_errno()
        if error not in (errno.ENOSYS, errno.EPERM) or syncfs_runs():
            raise OSError(error, os.strerror(error))  # FUSE and NFS pass on a server's EPERM
    os.sync()


def syncfs_runs() -> bool:
    """Whether this process can call syncfs: the C library has it, and no sandbox (seccomp)
    refuses it, as it does for any descriptor before the kernel looks (ENOSYS, EPERM),
    where the kernel answers EBADF for none."""
    return _SYNCFS is not None and _SYNCFS(-1) == -1 and ctypes.get_errno() == errno.EBADF


class FlushBehind:
    """Flushes the file system of an open directory on a thread of its own, one `syncfs`
    at a time, each time `wrote` has counted FLUSH_STEP more bytes. Only a hint, like the
    above, through a descriptor of its own (see the top)."""

    def __init__(self, directory: int) -> None:
        try:
            self._directory = os.open(".", _DIRECTORY, dir_fd=directory)
        except OSError:  # no descriptor to be had: no flushes, as where syncfs is missing
            self._directory = -1
        self._unflushed = 0
        self._asked = False
        self._closing = self._directory < 0
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> FlushBehind:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.close(abandon=exc_type is not None)

    def wrote(self, size: int) -> None:
        """Count `size` more bytes written under the directory."""
        self._unflushed += size
        if self._unflushed < FLUSH_STEP or _SYNCFS is None or self._closing:
            return
        self._unflushed = 0
        if self._thread is None:
            fd, self._directory = self._directory, -1  # the thread's from here on: it closes it
            thread = threading.Thread(target=self._flush, args=(fd,), name="strongroom-flush")
            try:
                thread.start()
            except RuntimeError:  # no thread to be had: no flushes, as where syncfs is missing
                self._directory, self._closing = fd, True
                return
            self._thread = thread
        with self._changed:
            self._asked = True
            self._changed.notify()

    def close(self, *, abandon: bool = False) -> None:
        """Wait for the flush under way and, unless `abandon` (a failed restore), the one
        asked for; start none."""
        with self._changed:
            self._closing = True
            self._asked = self._asked and not abandon
            self._changed.notify()
        if self._thread is not None:
            self._thread.join()  # it closes the descriptor as it ends, also if this is cut off
        if self._directory >= 0:  # never handed to a thread
            os.close(self._directory)
            self._directory = -1

    def _flush(self, directory: int) -> None:
        try:
            while True:
                with self._changed:
                    self._changed.wait_for(lambda: self._asked or self._closing)
                    if not self._asked:
                        return
                    self._asked = False
                _SYNCFS(directory)
        finally:
            os.close(directory)
