"""Writing restored entries under a staging directory that no name can leave, and many
small files in helper processes.

Every file, directory and link is made relative to a descriptor of the staging
directory, one path component at a time, never following a link (`Staging`, after Go's
`os.Root`): a name in a backup cannot reach outside it, whatever links the backup made.
The helpers receive that descriptor and write by the same rules.

A restore of many small files is bound by the syscalls that create them, and a Python
thread needs the GIL back after every syscall, while the tar reader on the main thread
holds it most of the time. So small files are written by helper processes, each with
its own interpreter: the main process copies a batch of files into a slot of shared
memory and sends the helper their names and metadata down a pipe; the helper writes
them and says which slot it has finished with (or why it failed). Where helpers cannot
be started (no `os.memfd_create`, no Python executable), or one ends unexpectedly, files
are written in order on the calling thread.

This module imports the standard library only, and runs as the helper's program
(`python -I -S filewrite.py TASKS ACKS MEMORY STAGING`), so a helper starts in milliseconds.
"""

from __future__ import annotations

import errno
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

__all__ = [
    "FileMeta",
    "RangeHint",
    "SmallFileWriters",
    "Staging",
    "can_start_helpers",
    "owner_ids",
    "write_file",
    "write_pieces",
]

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
#: A large file's writeback is started each time this much more of it is written.
WRITEBACK_STEP = 8 * 1024 * 1024
_LENGTH = struct.Struct("<I")

#: Told (descriptor, offset, length) of a range of a file being written.
RangeHint = Callable[[int, int, int], None]
_PYTHON = re.compile(r"python[0-9.]*")
#: The host's variables a helper process inherits (besides LC_*): `helper_environment`.
_INHERITED = frozenset(
    {"LD_LIBRARY_PATH", "LD_PRELOAD", "LANG", "LANGUAGE", "LOCPATH", "LOCALE_ARCHIVE"}
)

_Made = TypeVar("_Made")
_log = logging.getLogger("strongroom.filewrite")


class FileMeta(NamedTuple):
    """Where a restored file goes, its size, and what it gets besides its bytes."""

    path: str | bytes
    size: int
    mode: int
    mtime_ns: int
    uname: str
    uid: int
    gname: str
    gid: int


def write_file(
    meta: FileMeta,
    pieces: Iterable[Buffer],
    staging: Staging,
    preallocate: RangeHint | None = None,
    writeback: RangeHint | None = None,
) -> None:
    """Create the file (replacing, never following, whatever has its name) with its
    contents, then its owner, mode and mtime, all through one file descriptor."""
    fd = staging.create_file(meta.path, meta.mode)
    try:
        if preallocate is not None:
            preallocate(fd, 0, meta.size)
        write_pieces(fd, pieces, 0, writeback)
        _set_owner_and_mode(meta, fd, staging.as_root)
        os.utime(fd, ns=(meta.mtime_ns, meta.mtime_ns))
    finally:
        os.close(fd)


def write_pieces(
    fd: int, pieces: Iterable[Buffer], offset: int, writeback: RangeHint | None
) -> None:
    """Write the pieces at `fd`'s position, `offset`, calling `writeback` for each
    WRITEBACK_STEP bytes written and for the rest at the end (writeback.py says why)."""
    started = offset
    for piece in pieces:
        view = memoryview(piece)
        while view:
            written = os.write(fd, view)
            view = view[written:]
            offset += written
        if writeback is not None and offset - started >= WRITEBACK_STEP:
            writeback(fd, started, offset - started)
            started = offset
    if writeback is not None and offset > started:
        writeback(fd, started, offset - started)


class Staging:
    """The directory a restore writes into, held by a file descriptor.

    Every entry is made relative to it, one path component at a time, each directory
    opened with O_NOFOLLOW, so no name can reach outside it and no link is ever
    followed: a path that runs through a symbolic link fails with ELOOP. Paths are
    relative, of plain components (the caller refuses '', '.' and '..'). A later entry
    replaces an earlier one of the same name (a file or link, never a directory), and a
    regular file where a directory must be is replaced by the directory.

    Nothing here renames or removes a directory, so a directory once opened stays the
    one at its path for the whole restore: the most recently used ones are kept open,
    since consecutive members mostly share a directory. One instance serves one thread.
    """

    #: Directory descriptors kept open (each helper process has its own).
    KEEP_OPEN = 64

    def __init__(self, root: int) -> None:
        self.root = root
        self.as_root = os.geteuid() == 0  # so files get their owners (asked once)
        self._open: dict[bytes, int] = {}  # insertion order: least recently used first

    def close(self) -> None:
        """Close the directories kept open (not the root, which the caller owns)."""
        for fd in self._open.values():
            os.close(fd)
        self._open.clear()

    def directory(self, path: str | bytes) -> int:
        """A descriptor of the directory `path` (b'' is the root), making missing ones.
        It stays open until the next call."""
        self._close_oldest()
        return self._walk(os.fsencode(path))

    def make_directory(self, path: str | bytes) -> int:
        """The directory `path`, made in place of a file or link of that name."""
        self._close_oldest()
        path = os.fsencode(path)
        fd = self._open.pop(path, None)  # a directory of this name was made already
        if fd is None:
            parent, _, name = path.rpartition(b"/")
            fd = self._open_directory(self._walk(parent), _plain(name, path), path, replace=True)
        self._open[path] = fd
        return fd

    def create_file(self, path: str | bytes, mode: int) -> int:
        """A new file, open for writing, in place of whatever file or link has its name.
        It gets `mode` (less the umask) at once, which is safe because the staging
        directory is private to this process's user."""
        parent, name = self._parent(path)
        try:  # as `_replacing` does, without a function per file: restores make many
            return os.open(name, _NEW_FILE, mode, dir_fd=parent)
        except FileExistsError:
            os.unlink(name, dir_fd=parent)
        return os.open(name, _NEW_FILE, mode, dir_fd=parent)

    def append_to(self, path: str | bytes) -> int | None:
        """The regular file `path`, open for appending; None if there is none."""
        parent, name = self._parent(path)
        try:
            fd = os.open(name, _APPEND, dir_fd=parent)
        except (FileNotFoundError, IsADirectoryError):
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # a link, which is never opened
                return None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        return fd

    def symlink(self, target: str, path: str | bytes) -> None:
        """A symbolic link to `target`, verbatim (it is never followed here)."""
        parent, name = self._parent(path)
        _replacing(parent, name, lambda: os.symlink(target, name, dir_fd=parent))

    def hard_link(self, original: str | bytes, path: str | bytes) -> None:
        """A hard link to the entry `original` (a link itself, if it is one)."""
        self._close_oldest()
        source, source_name = self._parent(original, close_oldest=False)
        parent, name = self._parent(path, close_oldest=False)
        _replacing(
            parent,
            name,
            lambda: os.link(
                source_name, name, src_dir_fd=source, dst_dir_fd=parent, follow_symlinks=False
            ),
        )

    def set_link_metadata(
        self, path: str | bytes, owner: tuple[int, int] | None, mtime_ns: int
    ) -> None:
        """Give a symbolic link its owner (if given) and mtime; its mode means nothing."""
        parent, name = self._parent(path)
        if owner is not None:
            os.chown(name, *owner, dir_fd=parent, follow_symlinks=False)
        os.utime(name, ns=(mtime_ns, mtime_ns), dir_fd=parent, follow_symlinks=False)

    def _parent(self, path: str | bytes, *, close_oldest: bool = True) -> tuple[int, bytes]:
        if close_oldest:
            self._close_oldest()
        parent, _, name = os.fsencode(path).rpartition(b"/")
        return self._walk(parent), _plain(name, path)

    def _close_oldest(self) -> None:
        """Keep KEEP_OPEN directories open; done only as a call starts, so a descriptor
        that call has taken stays open until it returns."""
        while len(self._open) > self.KEEP_OPEN:
            os.close(self._open.pop(next(iter(self._open))))

    def _walk(self, path: bytes) -> int:
        if not path:
            return self.root
        fd = self._open.pop(path, None)
        if fd is not None:
            self._open[path] = fd  # now the most recently used
            return fd
        if len(path) > _MAX_PATH:  # also bounds the descriptors one walk holds open
            raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), os.fsdecode(path))
        parts = path.split(b"/")
        known = len(parts) - 1  # the deepest directory on the path that is open already
        while known and b"/".join(parts[:known]) not in self._open:
            known -= 1
        fd = self._open[b"/".join(parts[:known])] if known else self.root
        for depth in range(known + 1, len(parts) + 1):
            fd = self._open_directory(fd, _plain(parts[depth - 1], path), path, replace=False)
            self._open[b"/".join(parts[:depth])] = fd
        return fd

    @staticmethod
    def _open_directory(parent: int, name: bytes, path: bytes, *, replace: bool) -> int:
        """Open (making it if missing) the directory `name` in `parent`; a link there is
        replaced if `replace`, else refused with ELOOP. Another helper may be making the
        same directory meanwhile (in place of a file, too): whatever it did, try again."""
        for _ in range(_ATTEMPTS):
            try:
                return os.open(name, _DIRECTORY, dir_fd=parent)
            except FileNotFoundError:
                with suppress(FileExistsError):
                    os.mkdir(name, 0o700, dir_fd=parent)
            except NotADirectoryError:  # O_NOFOLLOW: a link or a file is never opened
                with suppress(FileNotFoundError, IsADirectoryError):
                    status = os.stat(name, dir_fd=parent, follow_symlinks=False)
                    if stat.S_ISLNK(status.st_mode) and not replace:
                        raise OSError(
                            errno.ELOOP, "it runs through a symbolic link", os.fsdecode(path)
                        ) from None
                    os.unlink(name, dir_fd=parent)
        return os.open(name, _DIRECTORY, dir_fd=parent)


#: Tries at opening a directory that other writers are making or replacing meanwhile.
_ATTEMPTS = 10
#: The longest relative path Linux takes (PATH_MAX less its NUL).
_MAX_PATH = 4095
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_APPEND = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC


def _plain(name: bytes, path: str | bytes) -> bytes:
    """A path component that names an entry in its directory: never '', '.' or '..'."""
    if name in (b"", b".", b".."):
        raise OSError(errno.EINVAL, "it is not a plain relative path", os.fsdecode(path))
    return name


def _replacing(parent: int, name: bytes, make: Callable[[], _Made]) -> _Made:
    """Run `make`, which creates `name` in `parent` and fails if anything has that name;
    if something does, remove it (a file or link; unlink refuses a directory) and run
    it again."""
    try:
        return make()
    except FileExistsError:
        os.unlink(name, dir_fd=parent)
    return make()


def _set_owner_and_mode(meta: FileMeta, fd: int, as_root: bool) -> None:
    """Give an open file the member's owner (as root) and mode, skipping the calls that
    would change nothing: an fstat is cheaper than an fchown or fchmod, which dirty the
    inode even when the values are already right (as they are for most restored files;
    creating 20,000 files took 12% less kernel time)."""
    status = os.fstat(fd)
    if as_root:
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
        self._may_start = helpers if shares_memory and can_start_helpers() else 0
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


def helper_environment() -> dict[str, str]:
    """All a helper process gets of the host's environment: what the dynamic loader needs to
    start the interpreter, and the locale (how names are encoded, what language errors are
    in). Store credentials, proxies and every other setting stay in this process."""
    return {k: v for k, v in os.environ.items() if k in _INHERITED or k.startswith("LC_")}


def can_start_helpers(program: str = __file__) -> bool:
    """Whether this process can start a Python on `program` (not where Python is embedded
    in another program, or strongroom imported from a zip file)."""
    return _PYTHON.fullmatch(os.path.basename(sys.executable)) is not None and os.path.isfile(
        program
    )


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
            process = subprocess.Popen(
                [sys.executable, "-I", "-S", __file__, *map(str, fds)],
                pass_fds=fds,
                stdin=subprocess.DEVNULL,
                env=helper_environment(),
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


def _serve(tasks: int, acks: int, memory_fd: int, root_fd: int) -> None:
    """The helper: write each batch of files from shared memory into the staging
    directory (by the same rules as the main process), then report its slot."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides what it stops
    memory = memoryview(mmap.mmap(memory_fd, 0))
    staging = Staging(root_fd)
    while True:
        try:
            slot, batch = _read_message(tasks)
        except EOFError:
            return
        failure = None
        try:
            for *fields, start in batch:
                meta = FileMeta(*fields)
                write_file(meta, (memory[start : start + meta.size],), staging)
        except OSError as exc:
            failure = (exc.errno, exc.strerror, exc.filename) if exc.errno else (str(exc),)
        try:
            _write_message(acks, (slot, failure))
        except BrokenPipeError:  # the main process is gone (killed): nobody to tell
            return


if __name__ == "__main__":
    _serve(*(int(arg) for arg in sys.argv[1:5]))
