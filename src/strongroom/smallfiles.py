"""Writing a restore's many small files in helper processes while the main thread reads on.

A restore of many small files is bound by the syscalls that create them, and a Python
thread needs the GIL back after every syscall, while the tar reader on the main thread
holds it most of the time. So small files are written by helper processes, each with
its own interpreter (`helperprocess`), running `filewrite` as their program: the main
process copies a batch of files into a slot of shared memory and sends the helper their
names and metadata down a pipe; the helper writes them by the rules of `filewrite.Staging`
and says which slot it has finished with (or why it failed). Where helpers cannot be
started (no `os.memfd_create`, no Python executable), or one ends unexpectedly, files are
written in order on the calling thread.
"""

from __future__ import annotations

import logging
import mmap
import os
import selectors
import subprocess
from typing import Any

from . import filewrite
from .filewrite import FileMeta, Staging, read_message, write_file, write_message
from .helperprocess import can_start_helpers, start_helper

__all__ = ["SMALL_FILE", "SmallFileWriters", "helpers_for", "usable_cores"]

#: The most helpers started for one restore; 0 writes every file on the calling thread.
#: Fewer start where there are fewer cores: one per core besides the one the reading
#: thread keeps busy (on 2 cores, two helpers cost 9% more CPU than one, and were no faster).
MAX_HELPERS = 8
#: The largest file `SmallFileWriters` takes.
SMALL_FILE = 1024 * 1024
#: A batch is sent once it holds this many files or SMALL_FILE bytes; its last file may take
#: it past that, so a slot holds two files' worth.
BATCH_FILES = 32
SLOT_SIZE = 2 * SMALL_FILE
#: Slots per helper: enough to keep it busy while the main process fills the next.
SLOTS_PER_HELPER = 4

_log = logging.getLogger("strongroom.smallfiles")


class SmallFileWriters:
    """Writes small files in helper processes while the caller reads on.

    The caller calls `wait_for` before it makes anything else at a path that a pending
    write may take (that path, a directory on it, the original of a hard link). A failed
    write is raised as an OSError by the next call that waits.
    """

    def __init__(self, staging: Staging) -> None:
        self._staging = staging
        self._helpers: list[_Helper] = []
        self._ready = selectors.DefaultSelector()
        self._memory: mmap.mmap | None = None
        helpers = min(helpers_for(usable_cores()), MAX_HELPERS)
        shares_memory = hasattr(os, "memfd_create")
        can_start = shares_memory and can_start_helpers(filewrite.__file__)
        self._may_start = helpers if can_start else 0
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
                write_file(meta, pieces, self._staging)
                return
            self._start(self._may_start)
        if self._slot < 0 and self._helpers:
            self._take_slot()
        if self._memory is None:
            write_file(meta, pieces, self._staging)
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
                helper = _Helper.start(fd, self._staging.root)
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
            helper.send(self._slot, [(*meta.fields(), at) for meta, at in self._batch])
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
                write_file(meta, (self._memory[start : start + meta.size],), self._staging)
        self._in_flight, self._pending = {}, {}
        self._new_batch()
        self._release_memory()


def usable_cores() -> int | None:
    """The cores this process may run on: a container's CPU set or `taskset` can allow
    fewer than the machine has, and more helpers than cores only take turns."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity on this platform
        return os.cpu_count()


def helpers_for(cores: int | None) -> int:
    """How many helpers suit a machine with `cores` cores: one per core but the reader's."""
    return max(1, (cores or 2) - 1)


class _Helper:
    """One helper process and the two pipes to it."""

    def __init__(self, process: subprocess.Popen[bytes], tasks: int, acks: int) -> None:
        self.process, self.tasks, self.acks = process, tasks, acks
        self.in_flight = 0

    @classmethod
    def start(cls, memory_fd: int, root_fd: int) -> _Helper:
        task_read, task_write = os.pipe2(os.O_CLOEXEC)
        ack_read, ack_write = os.pipe2(os.O_CLOEXEC)
        fds = (task_read, ack_write, memory_fd, root_fd)
        try:
            process = start_helper(
                filewrite.__file__, [str(fd) for fd in fds], pass_fds=fds, stdin=subprocess.DEVNULL
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
            write_message(self.tasks, (slot, batch))
        except BrokenPipeError:
            raise _HelperEnded(self.process.wait()) from None
        self.in_flight += 1

    def receive(self) -> tuple[int, tuple[Any, ...] | None]:
        try:
            slot, failure = read_message(self.acks)
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
