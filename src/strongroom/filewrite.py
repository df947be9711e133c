"""Writing restored files: one at a time, or many small ones in helper processes.

A restore of many small files is bound by the syscalls that create them, and a Python
thread needs the GIL back after every syscall, while the tar reader on the main thread
holds it most of the time. So small files are written by helper processes, each with
its own interpreter: the main process copies a batch of files into a slot of shared
memory and sends the helper their names and metadata down a pipe; the helper writes
them and says which slot it has finished with (or why it failed). Where helpers cannot
be started (no `os.memfd_create`, no Python executable), or one ends unexpectedly, files
are written in order on the calling thread.

This module imports the standard library only, and runs as the helper's program
(`python -I -S filewrite.py TASKS ACKS MEMORY`), so a helper starts in milliseconds.
"""

from __future__ import annotations

import functools
import grp
import logging
import mmap
import os
import pickle
import pwd
import re
import selectors
import signal
import stat
import struct
import subprocess
import sys
from collections.abc import Callable, Iterable
from contextlib import suppress
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer as Buffer

__all__ = ["FileMeta", "SmallFileWriters", "in_place", "owner_ids", "write_file"]

#: The most helpers started for one restore (one per core is enough: the work is CPU);
#: 0 writes every file on the calling thread.
MAX_HELPERS = 8
#: The largest file `SmallFileWriters` takes.
SMALL_FILE = 1024 * 1024
#: A batch is sent once it holds this many files or SMALL_FILE bytes; its last file may take
#: it past that, so a slot holds two files' worth.
BATCH_FILES = 32
SLOT_SIZE = 2 * SMALL_FILE
#: Slots per helper: enough to keep it busy while the main process fills the next.
SLOTS_PER_HELPER = 4
_LENGTH = struct.Struct("<I")
_PYTHON = re.compile(r"python[0-9.]*")

_Made = TypeVar("_Made")
_log = logging.getLogger("strongroom.filewrite")


class FileMeta(NamedTuple):
    """Where a restored file goes, its size, and what it gets besides its bytes."""

    path: str | bytes
    size: int
    mode: int
    mtime: float
    uname: str
    uid: int
    gname: str
    gid: int


def write_file(
    meta: FileMeta,
    pieces: Iterable[Buffer],
    preallocate: Callable[[int, int, int], None] | None = None,
) -> None:
    """Create the file (replacing, never following, whatever has its name) with its
    contents, then its owner, mode and mtime, all through one file descriptor."""
    fd = _create(meta.path, meta.mode)
    try:
        if preallocate is not None:
            preallocate(fd, 0, meta.size)
        for piece in pieces:
            view = memoryview(piece)
            while view:
                view = view[os.write(fd, view) :]
        _set_owner_and_mode(meta, fd)
        os.utime(fd, (meta.mtime, meta.mtime))
    finally:
        os.close(fd)


def _create(path: str | bytes, mode: int) -> int:
    """Create a new file for writing, replacing (never opening) whatever has its name. It
    gets `mode` (less the umask) at once, which is safe because the staging directory is
    private to this process's user."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    return in_place(path, lambda: os.open(path, flags, mode))


def in_place(path: str | bytes, make: Callable[[], _Made]) -> _Made:
    """Run `make`, which creates `path` and fails if anything has that name; if it fails
    for want of the directory or because of an earlier entry, fix that and run it again."""
    try:
        return make()
    except FileNotFoundError:  # no member for its directory came first
        os.makedirs(os.path.dirname(path), 0o700, exist_ok=True)
    except FileExistsError:  # a file or link of the same name came first
        os.unlink(path)
    return make()


def _set_owner_and_mode(meta: FileMeta, fd: int) -> None:
    """Give an open file the member's owner (as root) and mode, skipping the calls that
    would change nothing: an fstat is cheaper than an fchown or fchmod, which dirty the
    inode even when the values are already right (as they are for most restored files;
    creating 20,000 files took 12% less kernel time)."""
    status = os.fstat(fd)
    if os.geteuid() == 0:
        owner = owner_ids(meta.uname, meta.uid, meta.gname, meta.gid)
        if owner != (status.st_uid, status.st_gid):
            os.fchown(fd, *owner)
    if stat.S_IMODE(status.st_mode) != meta.mode:
        os.fchmod(fd, meta.mode)


@functools.cache
def owner_ids(uname: str, uid: int, gname: str, gid: int) -> tuple[int, int]:
    """The member's owner on this system: by name where it knows the name, else by number."""
    with suppress(KeyError):
        uid = pwd.getpwnam(uname).pw_uid if uname else uid
    with suppress(KeyError):
        gid = grp.getgrnam(gname).gr_gid if gname else gid
    return uid, gid


class SmallFileWriters:
    """Writes small files in helper processes while the caller reads on.

    The caller checks every path first, and calls `wait_for` before it touches a path
    again and `wait_all` before anything (a link) that could redirect a pending write.
    A failed write is raised as an OSError by the next call that waits.
    """

    def __init__(self) -> None:
        self._helpers: list[_Helper] = []
        self._ready = selectors.DefaultSelector()
        self._memory: mmap.mmap | None = None
        self._may_start = min(os.cpu_count() or 2, MAX_HELPERS) if _can_start_helpers() else 0
        self._written_here = 0  # files written on this thread before the helpers start
        self._free: list[int] = []
        self._in_flight: dict[int, list[tuple[FileMeta, int]]] = {}  # slot → its batch
        self._pending: dict[str | bytes, int] = {}  # path → the slot of its batch in flight
        self._new_batch()

    def __enter__(self) -> SmallFileWriters:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        self._stop_helpers(kill=exc_type is not None)
        self._release_memory()

    @property
    def helper_count(self) -> int:
        """How many helper processes write, or will once a batch's worth of files has come
        (0: files are written on the calling thread)."""
        return len(self._helpers) or self._may_start

    def submit(self, meta: FileMeta, pieces: list[memoryview]) -> None:
        """Write a file of up to SMALL_FILE bytes soon (at once if there are no helpers)."""
        if meta.size > SMALL_FILE:
            raise ValueError(f"{meta.path!r} has {meta.size} bytes, more than SMALL_FILE.")
        if self._may_start:
            if self._written_here < BATCH_FILES:  # too few files yet to pay for helpers
                self._written_here += 1
                write_file(meta, pieces)
                return
            self._start(self._may_start)
        if self._slot < 0 and self._helpers:
            self._take_slot()
        if self._memory is None:
            write_file(meta, pieces)
            return
        start = offset = self._slot * SLOT_SIZE + self._batch_bytes
        for piece in pieces:
            self._memory[offset : offset + len(piece)] = piece
            offset += len(piece)
        self._batch.append((meta, start))
        self._batch_paths.add(meta.path)
        self._batch_bytes += meta.size
        if len(self._batch) >= BATCH_FILES or self._batch_bytes >= SMALL_FILE:
            self._send()

    def wait_for(self, path: str | bytes) -> None:
        """Return once any queued write of `path` is done (raising a helper's failure)."""
        if path in self._batch_paths:
            self._send()
        while path in self._pending:
            self._collect(block=True)

    def wait_all(self) -> None:
        self._send()
        while self._in_flight:
            self._collect(block=True)

    def _start(self, count: int) -> None:
        """Start the helpers (so a restore with few small files starts none); if that
        fails, files are written on this thread."""
        self._may_start = 0
        try:
            fd = os.memfd_create("strongroom-files", os.MFD_CLOEXEC)
        except OSError:
            return
        try:
            size = count * SLOTS_PER_HELPER * SLOT_SIZE
            os.ftruncate(fd, size)
            self._memory = mmap.mmap(fd, size)
            for _ in range(count):
                helper = _Helper.start(fd)
                self._helpers.append(helper)
                self._ready.register(helper.acks, selectors.EVENT_READ, helper)
        except OSError:
            self._stop_helpers(kill=True)
            self._release_memory()
            return
        finally:
            os.close(fd)
        self._free = list(range(count * SLOTS_PER_HELPER))

    def _stop_helpers(self, *, kill: bool) -> None:
        """Stop the helpers: once they are done, or at once if `kill`."""
        for helper in self._helpers:
            helper.stop(kill=kill)
        self._helpers = []
        self._ready.close()

    def _release_memory(self) -> None:
        if self._memory is not None:
            self._memory.close()
            self._memory = None

    def _take_slot(self) -> None:
        self._collect(block=False)
        while not self._free and self._helpers:
            self._collect(block=True)
        if self._helpers:
            self._slot = self._free.pop()

    def _send(self) -> None:
        if not self._batch or not self._helpers:
            return
        helper = min(self._helpers, key=lambda h: h.in_flight)
        try:
            helper.send(self._slot, [(os.fsencode(m.path), *m[1:], at) for m, at in self._batch])
        except _HelperEnded as ended:
            self._do_without_helpers(ended)
            return
        self._in_flight[self._slot] = self._batch
        self._pending.update((meta.path, self._slot) for meta, _ in self._batch)
        self._new_batch()

    def _new_batch(self) -> None:
        self._batch: list[tuple[FileMeta, int]] = []  # each file and where it starts
        self._batch_paths: set[str | bytes] = set()
        self._batch_bytes = 0
        self._slot = -1  # its slot of shared memory, taken with its first file

    def _collect(self, *, block: bool) -> None:
        """Take the helpers' reports of finished batches (waiting for one if `block`)."""
        for key, _ in self._ready.select(None if block else 0):
            try:
                slot, failure = key.data.receive()
            except _HelperEnded as ended:
                self._do_without_helpers(ended)
                return
            if failure is not None:
                raise OSError(*failure)
            for meta, _ in self._in_flight.pop(slot):
                if self._pending.get(meta.path) == slot:
                    del self._pending[meta.path]
            self._free.append(slot)

    def _do_without_helpers(self, ended: _HelperEnded) -> None:
        """A helper ended unexpectedly (killed, out of memory): stop them all and write
        their unfinished batches, the next one and every later file on this thread. The
        batches name distinct paths (see `wait_for`), so rewriting them in any order is
        safe, and a file a helper left half written is replaced."""
        _log.warning("%s; this restore writes its other files itself.", ended)
        self._stop_helpers(kill=True)
        assert self._memory is not None
        for batch in [*self._in_flight.values(), self._batch]:
            for meta, start in batch:
                write_file(meta, (self._memory[start : start + meta.size],))
        self._in_flight, self._pending = {}, {}
        self._new_batch()
        self._release_memory()


def _can_start_helpers() -> bool:
    """Whether this process can start a Python on this file and share memory with it
    (not where Python is embedded in another program, or imported from a zip file)."""
    return (
        hasattr(os, "memfd_create")
        and _PYTHON.fullmatch(os.path.basename(sys.executable)) is not None
        and os.path.isfile(__file__)
    )


class _Helper:
    """One helper process and the two pipes to it."""

    def __init__(self, process: subprocess.Popen[bytes], tasks: int, acks: int) -> None:
        self.process, self.tasks, self.acks = process, tasks, acks
        self.in_flight = 0

    @classmethod
    def start(cls, memory_fd: int) -> _Helper:
        task_read, task_write = os.pipe2(os.O_CLOEXEC)
        ack_read, ack_write = os.pipe2(os.O_CLOEXEC)
        fds = (task_read, ack_write, memory_fd)
        try:
            process = subprocess.Popen(
                [sys.executable, "-I", "-S", __file__, *map(str, fds)],
                pass_fds=fds,
                stdin=subprocess.DEVNULL,
                env={k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")},
            )
        except BaseException:
            os.close(task_write)
            os.close(ack_read)
            raise
        finally:
            os.close(task_read)
            os.close(ack_write)
        return cls(process, task_write, ack_read)

    def send(self, slot: int, batch: list[tuple[object, ...]]) -> None:
        try:
            _write_message(self.tasks, (slot, batch))
        except BrokenPipeError:
            raise _HelperEnded(self.process.wait()) from None
        self.in_flight += 1

    def receive(self) -> tuple[int, tuple[Any, ...] | None]:
        try:
            slot, failure = _read_message(self.acks)
        except EOFError:
            raise _HelperEnded(self.process.wait()) from None
        self.in_flight -= 1
        return slot, failure

    def stop(self, *, kill: bool) -> None:
        if kill:
            self.process.kill()
        os.close(self.tasks)  # the helper reads to the end of its tasks, then exits
        self.process.wait()
        os.close(self.acks)


class _HelperEnded(Exception):
    def __init__(self, exit_code: int) -> None:
        super().__init__(f"A file writer process ended unexpectedly (exit code {exit_code})")


def _write_message(fd: int, message: object) -> None:
    data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    view = memoryview(_LENGTH.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def _read_message(fd: int) -> Any:
    (length,) = _LENGTH.unpack(_read_exactly(fd, _LENGTH.size))
    return pickle.loads(_read_exactly(fd, length))


def _read_exactly(fd: int, size: int) -> bytes:
    parts = []
    while size:
        part = os.read(fd, size)
        if not part:
            raise EOFError
        parts.append(part)
        size -= len(part)
    return b"".join(parts)


def _serve(tasks: int, acks: int, memory_fd: int) -> None:
    """The helper: write each batch of files from shared memory, then report its slot."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides what it stops
    memory = memoryview(mmap.mmap(memory_fd, 0))
    while True:
        try:
            slot, batch = _read_message(tasks)
        except EOFError:
            return
        failure = None
        try:
            for *fields, start in batch:
                meta = FileMeta(*fields)
                write_file(meta, (memory[start : start + meta.size],))
        except OSError as exc:
            failure = (exc.errno, exc.strerror, exc.filename) if exc.errno else (str(exc),)
        _write_message(acks, (slot, failure))


if __name__ == "__main__":
    _serve(*(int(arg) for arg in sys.argv[1:4]))
