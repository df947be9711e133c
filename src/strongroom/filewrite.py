"""Writing restored entries under a staging directory that no name can leave; also the
program of the helper processes that write a restore's small files (`smallfiles`).

Every file, directory and link is made relative to a descriptor of the staging
directory, one path component at a time, never following a link (`Staging`, after Go's
`os.Root`): a name in a backup cannot reach outside it, whatever links the backup made.
The helpers receive that descriptor and write by the same rules.

As the helper's program (`python -I -S filewrite.py TASKS ACKS MEMORY STAGING`) this module
imports only the few standard modules it runs on (not even `typing`, which alone took
longer than the rest of a helper's start), so a helper writes its first files ~10 ms after
it is started (31 ms before): the main process waits for that at the start of every restore of many
small files.
"""

from __future__ import annotations

# not `signal`, which imports enum: a third of the helper's start (`_signal` has no stub)
import _signal  # type: ignore[import-not-found]
import errno
import grp
import marshal
import mmap
import os
import pwd
import stat
import sys

TYPE_CHECKING = False  # what `typing.TYPE_CHECKING` is, without importing typing
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any, TypeVar

    from _typeshed import ReadableBuffer as Buffer

    _Made = TypeVar("_Made")

    #: Told (descriptor, offset, length) of a range of a file being written.
    RangeHint = Callable[[int, int, int], None]

__all__ = [
    "FileMeta",
    "Staging",
    "owner_ids",
    "read_message",
    "write_file",
    "write_message",
    "write_pieces",
]

#: A large file's writeback is started each time this much more of it is written.
WRITEBACK_STEP = 8 * 1024 * 1024
#: The bytes of a message's length, which comes before it (little-endian).
_LENGTH_BYTES = 4


class FileMeta:
    """Where a restored file goes, its size, and what it gets besides its bytes."""

    __slots__ = ("gid", "gname", "mode", "mtime_ns", "path", "size", "uid", "uname")

    def __init__(
        self,
        path: str | bytes,
        size: int,
        mode: int,
        mtime_ns: int,
        uname: str,
        uid: int,
        gname: str,
        gid: int,
    ) -> None:
        self.path, self.size, self.mode, self.mtime_ns = path, size, mode, mtime_ns
        self.uname, self.uid, self.gname, self.gid = uname, uid, gname, gid

    def fields(self) -> tuple[bytes, int, int, int, str, int, str, int]:
        """Its fields, as a message to a helper carries them (`FileMeta(*fields)`)."""
        path = os.fsencode(self.path)
        return (
            path,
            self.size,
            self.mode,
            self.mtime_ns,
            self.uname,
            self.uid,
            self.gname,
            self.gid,
        )


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
                try:  # noqa: SIM105 (contextlib would slow the helper's start)
                    os.mkdir(name, 0o700, dir_fd=parent)
                except FileExistsError:
                    pass  # made meanwhile
            except NotADirectoryError:  # O_NOFOLLOW: a link or a file is never opened
                try:
                    status = os.stat(name, dir_fd=parent, follow_symlinks=False)
                    if stat.S_ISLNK(status.st_mode) and not replace:
                        raise OSError(
                            errno.ELOOP, "it runs through a symbolic link", os.fsdecode(path)
                        ) from None
                    os.unlink(name, dir_fd=parent)
                except (FileNotFoundError, IsADirectoryError):
                    pass  # removed, or made a directory, meanwhile
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


def owner_ids(uname: str, uid: int, gname: str, gid: int) -> tuple[int, int]:
    """The member's owner on this system: by name where it knows the name, else by number
    (each asked of the system once)."""
    key = (uname, uid, gname, gid)
    owner = _owners.get(key)
    if owner is None:
        owner = _owners[key] = (_user_id(uname, uid), _group_id(gname, gid))
    return owner


_owners: dict[tuple[str, int, str, int], tuple[int, int]] = {}


def _user_id(name: str, number: int) -> int:
    try:
        return pwd.getpwnam(name).pw_uid if name else number
    except (KeyError, ValueError):  # unknown here, or no name at all (a NUL in it)
        return number


def _group_id(name: str, number: int) -> int:
    try:
        return grp.getgrnam(name).gr_gid if name else number
    except (KeyError, ValueError):  # unknown here, or no name at all (a NUL in it)
        return number


def write_message(fd: int, message: Any) -> None:
    """Send a message (tuples, lists, bytes, text and numbers, none of them a subclass) down
    a pipe between the main process and a helper, which trust each other; `marshal` needs
    no import."""
    data = marshal.dumps(message)
    view = memoryview(len(data).to_bytes(_LENGTH_BYTES, "little") + data)
    while view:
        view = view[os.write(fd, view) :]


def read_message(fd: int) -> Any:
    """The next message `write_message` sent; EOFError once the pipe is closed."""
    length = int.from_bytes(_read_exactly(fd, _LENGTH_BYTES), "little")
    return marshal.loads(_read_exactly(fd, length))


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
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)  # the main process decides what stops
    memory = memoryview(mmap.mmap(memory_fd, 0))
    staging = Staging(root_fd)
    while True:
        try:
            slot, batch = read_message(tasks)
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
            write_message(acks, (slot, failure))
        except BrokenPipeError:  # the main process is gone (killed): nobody to tell
            return


if __name__ == "__main__":
    _serve(*(int(arg) for arg in sys.argv[1:5]))
