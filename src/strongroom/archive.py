"""Sources → a POSIX (pax) tar stream, and a tar stream → a safe extraction.

Files and directories are archived under their base name with relative paths,
modes, mtimes, symlinks (never followed) and empty directories. A named stream of
unknown length is archived as one or more consecutive members of the same name,
each up to `STREAM_PART_SIZE` bytes; every part after the first carries the pax
record `STRONGROOM.part` = its number and is appended on extraction.

Extraction reads members with `tarstream`, checks each against `MemberRules` (the same
rules verify and create apply) and makes it with `filewrite.Staging`, relative to a
descriptor of the staging directory and never following a link, so no backup can write
outside it. Symbolic links are restored verbatim, wherever they point; permission bits
are kept and, when running as root, ownership. A file or link replaces whatever has its
name; it never writes through it. Small files are written by helper processes
(`smallfiles`); large files on the main thread, their blocks preallocated first where
that pays (`preallocate`). Create archives no devices or FIFOs (restore would refuse them),
nor sockets, and says which it left out.
"""

from __future__ import annotations

import errno
import grp
import io
import logging
import os
import pwd
import stat
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO, NoReturn, Protocol, cast

from .errors import ConfigError, IntegrityError, InvalidNameError, UnsafeArchiveError
from .filewrite import FileMeta, Staging, owner_ids, write_file, write_pieces
from .format import quoted
from .pipeline import ChunkWriter, SourceEndedEarly
from .preallocate import Preallocate, preallocator_for
from .readahead import ReadAhead
from .smallfiles import SMALL_FILE, SmallFileWriters
from .sourcetree import (
    SourceChanged,
    SourceEntry,
    SourceUnreadable,
    open_regular,
    read_link,
    walk_source,
)
from .tarheader import member_header, set_mtime
from .tarstream import Member, TarSource, mtime_restorable, read_members
from .writeback import FlushBehind, start_writeback

if TYPE_CHECKING:
    from _typeshed import SupportsRead, WriteableBuffer

__all__ = [
    "ArchiveEntry",
    "MemberRules",
    "RefusedMember",
    "StreamSource",
    "archive_name_of",
    "check_archive",
    "extract_archive",
    "list_archive",
    "member_path",
    "normalize_archive_path",
    "selected_path",
    "selection_matches",
    "source_size",
    "write_archive",
]

logger = logging.getLogger("strongroom")

#: A named stream: a binary file object, or an iterable of bytes.
StreamSource = BinaryIO | Iterable[bytes]

STREAM_PART_SIZE = 8 * 1024 * 1024
PART_RECORD = "STRONGROOM.part"
COPY_BUFFER = 1024 * 1024
#: Finished directories whose attributes are set together, after the pending writes.
DIRECTORY_GROUP = 1000
#: The mode bits restore gives back: the permissions, and a directory's sticky bit, which
#: only takes rights away (without it a world-writable directory such as /tmp would let
#: anyone delete the others' files). setuid and setgid are never restored: a backup is
#: written by whoever holds a write key, who must not hand a setuid program to whoever
#: restores as root.
FILE_MODE_BITS = 0o777
DIRECTORY_MODE_BITS = stat.S_ISVTX | 0o777


def archive_name_of(source: Path) -> str:
    """The top-level name a source gets in the archive: its base name."""
    name = source.absolute().name
    if not name or name in (".", ".."):
        raise ConfigError(f"Cannot back up {str(source)!r} by itself; name a directory inside it.")
    return name


def normalize_archive_path(path: str) -> str:
    """Validate a stream's name: a relative archive path without backslashes (a Windows
    path is not what is meant)."""
    if "\\" in path:
        raise InvalidNameError(
            f"{path!r} is not a stream name: use names joined by '/', without backslashes."
        )
    return selected_path(path)


def selected_path(path: str) -> str:
    """Validate a path to restore or list: names joined by '/' as the archive holds them
    (a name may hold a backslash, as on the machine backed up), relative, without '.'
    or '..'."""
    if len(os.fsencode(path)) > MAX_PATH:  # and not quoted whole: a request may send 1 MiB
        raise InvalidNameError(
            f"{quoted(path)} is longer than any path a backup holds ({MAX_PATH} bytes)."
        )
    cleaned = path.rstrip("/")
    parts = cleaned.split("/")
    if path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise InvalidNameError(
            f"{path!r} is not a relative archive path: use names joined by '/', "
            "without '.', '..' or a leading '/'."
        )
    return cleaned


def check_sources(sources: Sequence[Path], streams: Mapping[str, StreamSource]) -> None:
    """Fail before anything is written if sources are missing or names collide."""
    if not sources and not streams:
        raise ConfigError("Nothing to back up: give at least one file, directory or stream.")
    seen: dict[str, str] = {}
    for source in sources:
        if not os.path.lexists(source):
            raise ConfigError(f"The source {str(source)!r} does not exist.")
        if os.path.islink(source):  # as tar, restic and borg do; said, since it surprises
            logger.warning(
                "The source %s is a symbolic link: the backup holds the link (to %s), not "
                "what it points to; give that path to back up its contents.",
                source,
                os.readlink(source),
            )
        _claim(seen, archive_name_of(source), str(source))
    for name, stream in streams.items():
        _claim(seen, normalize_archive_path(name).split("/")[0], f"stream {name!r}")
        if isinstance(stream, str | bytes | bytearray | memoryview):
            raise ConfigError(
                f"Stream {name!r} is given as {type(stream).__name__}; give a binary file "
                "object or an iterable of bytes (for bytes in memory: io.BytesIO(data))."
            )


def _claim(seen: dict[str, str], top: str, owner: str) -> None:
    if seen.get(top) == owner:
        raise ConfigError(f"{owner} is given twice; give each source once.")
    if top in seen:
        raise ConfigError(
            f"{owner} and {seen[top]} would both be archived as {top!r}; rename one of them."
        )
    seen[top] = owner


def source_size(sources: Sequence[Path]) -> int:
    """Bytes of regular files under the sources, for a progress bar's total."""
    return sum(
        entry.status.st_size
        for source in sources
        for entry in walk_source(source, "", _unwalkable)
        if stat.S_ISREG(entry.status.st_mode)
    )


def _unwalkable(arcname: str, error: OSError) -> None:
    """What cannot be walked counts nothing towards a progress total."""


class ArchiveReader(TarSource, Protocol):
    """What extraction reads from: a forward-only stream that can also lend views."""

    def read_view(self, size: int) -> memoryview: ...


class _ForgetfulTarFile(tarfile.TarFile):
    """A TarFile that forgets each member once it is written, so memory stays flat.

    tarfile keeps every member in `members`; over millions of files that grows without
    bound. Hard links are found by `_Members`, not in `members`.
    """

    def addfile(self, tarinfo: tarfile.TarInfo, fileobj: SupportsRead[bytes] | None = None) -> None:
        """As tarfile's, with headers from `member_header` (an eighth of tarfile's time),
        and into a ChunkWriter a file's bytes read straight into the chunk buffer (tarfile
        would read them into a new buffer, then copy that)."""
        sink = self.fileobj
        if fileobj is None:
            self._write_header(tarinfo)
        elif isinstance(sink, ChunkWriter) and isinstance(
            fileobj, io.RawIOBase | io.BufferedIOBase
        ):
            self._write_header(tarinfo)
            sink.write_from(fileobj, tarinfo.size)
            padding = -tarinfo.size % tarfile.BLOCKSIZE
            if padding:
                sink.write(tarfile.NUL * padding)
            self.offset += tarinfo.size + padding
        else:
            super().addfile(tarinfo, fileobj)
        self.members.clear()  # type: ignore[attr-defined]  # not in typeshed

    def _write_header(self, tarinfo: tarfile.TarInfo) -> None:
        """Write the member's header (pax: `_open_writer` makes every writer pax)."""
        self._check("awx")  # type: ignore[attr-defined]  # not in typeshed
        header = member_header(tarinfo, self.encoding, self.errors)
        cast(IO[bytes], self.fileobj).write(header)
        self.offset += len(header)


def _open_writer(sink: io.RawIOBase) -> _ForgetfulTarFile:
    """A pax tar writer straight on our chunk stream.

    The plain "w" mode (not tarfile's "w|" stream mode, whose buffer copies grow with
    every small write) needs only `tell`, which ChunkWriter provides.
    """
    tar = _ForgetfulTarFile(fileobj=cast(IO[bytes], sink), mode="w", format=tarfile.PAX_FORMAT)
    tar.copybufsize = COPY_BUFFER  # type: ignore[attr-defined]  # not in typeshed
    return tar


def write_archive(
    sink: io.RawIOBase, sources: Sequence[Path], streams: Mapping[str, StreamSource]
) -> list[str]:
    """Write every source and stream into `sink` as one pax tar stream.

    Sources are walked and read by descriptor, never through a link (`sourcetree`).
    Returns what was left out, each with the reason: what a restore would refuse (devices
    and FIFOs: every member goes through `MemberRules`, so nothing written here fails a
    restore later), and what changed as it was read (removed, or a link or FIFO put in its
    place).
    """
    left_out: list[str] = []

    def restorable(member: tarfile.TarInfo) -> tarfile.TarInfo | None:
        try:
            rules.check(member)
        except RefusedMember as refused:
            left_out.append(f"{refused.name}: {refused.reason}, so a restore would refuse it")
            return None
        if not mtime_restorable(member):
            left_out.append(
                f"{member.name}: its mtime is outside the years 1 to 9999, which a restore "
                "cannot set"
            )
            return None
        return member

    def changed(arcname: str, exc: OSError) -> None:
        if not isinstance(exc, SourceChanged):
            raise exc
        left_out.append(f"{arcname}: {exc} while it was being backed up")

    rules = MemberRules()
    with ReadAhead(sources, sink.tell), _open_writer(sink) as tar:
        members = _Members(tar)
        for source in sources:
            try:
                for entry in walk_source(source, archive_name_of(source), changed):
                    try:
                        _add_entry(tar, members, entry, restorable, left_out)
                    except SourceChanged as exc:
                        changed(entry.arcname, exc)
            except SourceUnreadable as exc:
                exc.locate(source)
                raise
        for name, stream in streams.items():
            _add_stream(tar, normalize_archive_path(name), stream)
    return left_out


def _add_entry(
    tar: tarfile.TarFile,
    members: _Members,
    entry: SourceEntry,
    keep: Callable[[tarfile.TarInfo], tarfile.TarInfo | None],
    left_out: list[str],
) -> None:
    """Archive one entry of a source walk, reading a file only through the descriptor that
    `open_regular` checked (tarfile's own `add` opens by path, following whatever link or
    FIFO was put there since it looked); a socket goes to `left_out`."""
    mode = entry.status.st_mode
    if not stat.S_ISREG(mode):
        linkname = read_link(entry) if stat.S_ISLNK(mode) else ""
        info = members.info(entry.arcname, entry.status, linkname)
        if info is None:
            left_out.append(f"{entry.arcname}: it is a socket, which only its program can make")
        elif keep(info) is not None:
            tar.addfile(info)
        return
    fd, status = open_regular(entry)
    with open(fd, "rb", buffering=0) as file:  # read into the chunk buffer, never buffered
        info = members.info(entry.arcname, status)
        if info is None or keep(info) is None:
            return
        try:
            tar.addfile(info, _Reading(file, entry.arcname) if info.isreg() else None)
        except SourceEndedEarly:
            raise OSError(  # no errno: not a permission or a full disk to check
                f"{entry.arcname} shrank while it was being backed up (it had "
                f"{status.st_size} bytes when opened), so nothing was committed; back it up "
                "when nothing is writing to it (a log truncated or rotated meanwhile)."
            ) from None
        if info.isreg() and _changed(status, os.fstat(fd)):
            logger.warning(
                "%s changed while it was being backed up; the backup holds its first %d "
                "bytes as they were read, which may mix old and new contents (back it up "
                "again when nothing is writing to it).",
                entry.arcname,
                info.size,
            )


class _Reading(io.RawIOBase):
    """A source file as the archive writer reads it: a read that fails (an I/O error on a
    dying disk) is a SourceUnreadable naming the file, which the system's error does not;
    the store's and the progress display's errors on the way are left as they are."""

    def __init__(self, file: io.FileIO, arcname: str) -> None:
        super().__init__()
        self._file, self._arcname = file, arcname

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int | None:
        try:
            return self._file.readinto(buffer)
        except OSError as exc:
            raise SourceUnreadable(exc.errno, exc.strerror, self._arcname) from exc


def _changed(opened: os.stat_result, now: os.stat_result) -> bool:
    """Whether a file was written to since it was opened (as tar's 'file changed as we
    read it'): its size, mtime or ctime moved (a writer can set the mtime back, never the
    ctime)."""
    return (opened.st_size, opened.st_mtime_ns, opened.st_ctime_ns) != (
        now.st_size,
        now.st_mtime_ns,
        now.st_ctime_ns,
    )


class _Members:
    """TarInfo for walked entries, as `TarFile.gettarinfo` makes them, with the owner
    names looked up once per id and only files with several links remembered (to archive
    their later names as hard links), so memory stays flat."""

    def __init__(self, tar: tarfile.TarFile) -> None:
        self._new = tar.tarinfo
        self._links: dict[tuple[int, int], str] = {}
        self._users: dict[int, str] = {}
        self._groups: dict[int, str] = {}

    def info(
        self, arcname: str, status: os.stat_result, linkname: str = ""
    ) -> tarfile.TarInfo | None:
        """None for a socket, which tarfile does not archive either."""
        mode = status.st_mode
        kind = _TYPES.get(stat.S_IFMT(mode))
        if kind is None:
            return None
        info = self._new(arcname)
        info.type = kind
        if stat.S_ISREG(mode) and status.st_nlink > 1:
            first = self._links.setdefault((status.st_ino, status.st_dev), arcname)
            if first != arcname:
                info.type, linkname = tarfile.LNKTYPE, first
        info.mode = mode
        info.uid, info.gid = status.st_uid, status.st_gid
        info.size = status.st_size if info.type == tarfile.REGTYPE else 0
        set_mtime(info, status.st_mtime_ns)
        info.linkname = linkname
        info.uname = _name_of(self._users, status.st_uid, pwd.getpwuid)
        info.gname = _name_of(self._groups, status.st_gid, grp.getgrgid)
        if info.type in (tarfile.CHRTYPE, tarfile.BLKTYPE):
            info.devmajor, info.devminor = os.major(status.st_rdev), os.minor(status.st_rdev)
        return info


#: The tar type of each file type a source can hold but sockets.
_TYPES = {
    stat.S_IFREG: tarfile.REGTYPE,
    stat.S_IFDIR: tarfile.DIRTYPE,
    stat.S_IFLNK: tarfile.SYMTYPE,
    stat.S_IFIFO: tarfile.FIFOTYPE,
    stat.S_IFCHR: tarfile.CHRTYPE,
    stat.S_IFBLK: tarfile.BLKTYPE,
}


def _name_of(names: dict[int, str], number: int, look_up: Callable[[int], Any]) -> str:
    """A user's or group's name, looked up once (an unknown id has none, as in tarfile)."""
    if number not in names:
        try:
            names[number] = look_up(number)[0]
        except KeyError:
            names[number] = ""
    return names[number]


def _add_stream(tar: tarfile.TarFile, name: str, stream: StreamSource) -> None:
    for number, part in enumerate(_parts(name, stream)):
        info = tarfile.TarInfo(name)
        info.size = len(part)
        info.mode = 0o600
        info.mtime = int(time.time())
        if number:
            info.pax_headers = {PART_RECORD: str(number)}
        tar.addfile(info, io.BytesIO(part))


def _parts(name: str, stream: StreamSource) -> Iterator[bytes]:
    """Cut a stream of unknown length into parts; always at least one (maybe empty)."""
    pieces = _pieces(stream)
    buffer = bytearray()
    for piece in pieces:
        try:
            buffer += memoryview(piece)  # bytes, or anything with the buffer protocol
        except TypeError:
            raise ConfigError(
                f"Stream {name!r} gave {type(piece).__name__}, not bytes; open it in binary "
                "mode, or yield bytes. Nothing was committed."
            ) from None
        while len(buffer) > STREAM_PART_SIZE:
            yield bytes(buffer[:STREAM_PART_SIZE])
            del buffer[:STREAM_PART_SIZE]
    yield bytes(buffer)


def _pieces(stream: StreamSource) -> Iterator[bytes]:
    read = getattr(stream, "read", None)
    if read is None:
        yield from stream
        return
    while piece := read(COPY_BUFFER):
        yield piece


def extract_archive(
    stream: ArchiveReader, target: int, stream_size: int, selected: Sequence[str] = ()
) -> set[str]:
    """Extract the tar stream, at most `stream_size` bytes long, into `target` (an open,
    empty staging directory).

    Returns which of the `selected` paths were found (all of them must be; the caller
    checks). With no selection, everything is extracted.
    """
    found: set[str] = set()
    rules = MemberRules()
    staging = Staging(target)
    preallocate = preallocator_for(target)
    if preallocate is not None:
        preallocate = _within_stream(preallocate, stream, stream_size)
    try:
        with FlushBehind(target) as flush, SmallFileWriters(staging) as writers:
            extraction = _Extraction(stream, staging, writers, preallocate, flush)
            for member in read_members(stream):
                if selected:
                    name = member_path(member.name)
                    matches = selection_matches(name, selected)
                    if not matches and not (member.isdir() and _leads_to(name, selected)):
                        continue  # but a directory on the way to a selected path is made
                    found.update(matches)
                path = rules.check(member)
                if path:  # not the archive's own top ('./')
                    extraction.make(member, path)
            extraction.directories.finish_all()
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # what `rules` refuses, should it ever miss one
            raise UnsafeArchiveError(
                f"The backup holds {exc.filename!r}, which strongroom will not restore: it "
                "runs through a link the backup made earlier."
            ) from None
        raise
    finally:
        staging.close()
    return found


def _within_stream(preallocate: Preallocate, stream: ArchiveReader, size: int) -> Preallocate:
    """Preallocation never beyond what the stream has left: a member's size is only
    what the archive claims, and a crafted one could reserve the whole disk."""

    def bounded(fd: int, offset: int, length: int) -> None:
        preallocate(fd, offset, min(length, size - stream.tell()))

    return bounded


class _Extraction:
    """What one restore makes its members with: the stream, the staging directory, the
    small-file writers, preallocation, the small files' flushes (large files start their
    own writeback), and the directories waiting for their attributes."""

    def __init__(
        self,
        stream: ArchiveReader,
        staging: Staging,
        writers: SmallFileWriters,
        preallocate: Preallocate | None,
        flush: FlushBehind,
    ) -> None:
        self.stream, self.staging, self.writers = stream, staging, writers
        self.preallocate, self.flush = preallocate, flush
        self.directories = _Directories(writers, staging)
        self._parent_ready = ""  # the last directory whose pending writes were waited for

    def make(self, member: Member, path: str) -> None:
        """Make one checked member at `path`, after any pending write it could replace."""
        self.directories.leave_unless_inside(path)
        parent = path.rpartition("/")[0]
        if parent != self._parent_ready:  # a file there is replaced by the directory:
            for ancestor in _ancestors(path):  # once it is written (no later file can
                self.writers.wait_for(ancestor)  # take a directory's name: MemberRules)
            self._parent_ready = parent
        self.writers.wait_for(path)
        if member.isdir():
            self.staging.make_directory(path)
            self.directories.enter(member, path)
        elif member.isreg():
            self._file(member, path)
        elif member.issym():
            self.staging.symlink(member.linkname, path)
            self.staging.set_link_metadata(path, _owner(member), member.mtime_ns)
        else:  # a hard link, to an entry of this restore; the inode has its metadata already
            original = member_path(member.linkname)
            self.writers.wait_for(original)
            try:
                self.staging.hard_link(original, path)
            except FileNotFoundError:
                raise ConfigError(
                    f"{member.name!r} is a hard link to {member.linkname!r}, which this "
                    "restore does not include; restore both paths."
                ) from None

    def _file(self, member: Member, path: str) -> None:
        stream, staging = self.stream, self.staging
        if PART_RECORD in member.pax_headers:
            _append_part(stream, member, path, staging, self.preallocate)
        elif member.size <= SMALL_FILE:
            self.writers.submit(_file_meta(member, path), list(_views(stream, member.size)))
            self.flush.wrote(member.size)
        else:
            meta = _file_meta(member, path)
            views = _views(stream, member.size)
            write_file(meta, views, staging, self.preallocate, start_writeback)


def _ancestors(path: str) -> Iterator[str]:
    """The directories `path` lies in, outermost first ('a', 'a/b' for 'a/b/c')."""
    end = path.find("/")
    while end >= 0:
        yield path[:end]
        end = path.find("/", end + 1)


class _Directories:
    """Gives directories their owner, mtime and mode once their contents are written.

    Archives list a directory's contents right after it (depth first), so a directory is
    done when a member outside it comes. Done directories are finished in groups, after
    the pending file writes, so memory stays flat however many directories a backup has.
    A directory its mode makes read-only waits for the end, in case an archive written in
    another order puts something in it later.
    """

    def __init__(self, writers: SmallFileWriters, staging: Staging) -> None:
        self._writers = writers
        self._staging = staging
        self._open: list[tuple[Member, str]] = []  # the path to the current member
        self._done: list[tuple[Member, str]] = []  # deepest first
        self._read_only: list[tuple[Member, str]] = []  # deepest first

    def enter(self, member: Member, path: str) -> None:
        self._open.append((member, path))

    def leave_unless_inside(self, path: str) -> None:
        """Close the open directories that `path` is not inside."""
        while self._open and not path.startswith(self._open[-1][1] + "/"):
            member, closed = self._open.pop()
            (self._done if member.mode & 0o200 else self._read_only).append((member, closed))
        if len(self._done) >= DIRECTORY_GROUP:
            self._writers.wait_all()
            self._finish(self._done)
            self._done = []

    def finish_all(self) -> None:
        self._writers.wait_all()
        self._finish([*self._done, *reversed(self._open), *self._read_only])

    def _finish(self, directories: list[tuple[Member, str]]) -> None:
        for member, path in directories:
            fd = self._staging.directory(path)
            owner = _owner(member)
            if owner is not None:
                os.fchown(fd, *owner)
            os.utime(fd, ns=(member.mtime_ns, member.mtime_ns))
            os.fchmod(fd, _restored_mode(member))


def _file_meta(member: Member, path: str) -> FileMeta:
    return FileMeta(
        path,
        member.size,
        _restored_mode(member),
        member.mtime_ns,
        member.uname,
        member.uid,
        member.gname,
        member.gid,
    )


def _restored_mode(member: tarfile.TarInfo) -> int:
    """The mode restore gives the member (FILE_MODE_BITS and DIRECTORY_MODE_BITS say why)."""
    return member.mode & (DIRECTORY_MODE_BITS if member.isdir() else FILE_MODE_BITS)


def _owner(member: tarfile.TarInfo) -> tuple[int, int] | None:
    """The member's owner on this system, when running as root (else None: unchanged)."""
    if os.geteuid() != 0:
        return None
    return owner_ids(member.uname, member.uid, member.gname, member.gid)


def check_archive(stream: TarSource) -> int:
    """Parse a whole tar stream (member data is read past) through the rules restore
    applies, so a backup restore would refuse fails here with the same message; return
    how many members it has."""
    rules = MemberRules()
    count = 0
    for member in read_members(stream):
        rules.check(member)
        count += 1
    return count


@dataclass(frozen=True, slots=True)
class ArchiveEntry:
    """One entry of a backup as restore would make it (a named stream's parts as one)."""

    path: str
    type: str  # "file", "dir", "symlink" or "hardlink"
    size: int
    mode: int
    mtime_ns: int  # exact: a float rounds the last moments of 9999 into year 10000
    link_target: str | None

    @property
    def modified(self) -> datetime:
        return _EPOCH + timedelta(microseconds=self.mtime_ns // 1000)

    def to_dict(self) -> dict[str, Any]:
        """As `ls --json` and the admin API show it (times in epoch ms, mode in octal)."""
        return {
            "path": self.path,
            "type": self.type,
            "size": self.size,
            "mode": f"{self.mode:04o}",
            "mtime": self.mtime_ns // 10**6,
            "linkTarget": self.link_target,
        }


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ENTRY_TYPES = {tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hardlink"}


def list_archive(stream: TarSource, selected: Sequence[str] = ()) -> Iterator[ArchiveEntry]:
    """The entries restore would make (only under `selected`, if given), in archive order,
    by the rules restore applies: a backup restore would refuse fails here the same way."""
    rules = MemberRules()
    pending: ArchiveEntry | None = None  # held back, as more parts of a stream may follow
    for member in read_members(stream):
        path = rules.check(member)
        if not path or (selected and not selection_matches(path, selected)):
            continue
        if pending is not None and pending.path == path and PART_RECORD in member.pax_headers:
            pending = replace(pending, size=pending.size + member.size)
            continue
        if pending is not None:
            yield pending
        pending = ArchiveEntry(
            path,
            _ENTRY_TYPES.get(member.type, "file"),
            member.size if member.isreg() else 0,
            _restored_mode(member),
            member.mtime_ns,
            member.linkname if member.issym() else _hard_link_target(member),
        )
    if pending is not None:
        yield pending


def _hard_link_target(member: tarfile.TarInfo) -> str | None:
    return member_path(member.linkname) if member.islnk() else None


def selection_matches(name: str, selected: Sequence[str]) -> list[str]:
    """The selected paths that `name` is, or lies under: all of them, as one selected path
    may lie under another (`data` and `data/logs`), and each must be found."""
    return [path for path in selected if name == path or name.startswith(path + "/")]


def _leads_to(name: str, selected: Sequence[str]) -> bool:
    """Whether `name` is a directory above one of the selected paths."""
    return any(path.startswith(name + "/") for path in selected)


def member_path(name: str) -> str:
    """A member's name as restore uses it: without './', '//' or a trailing '/'."""
    return "/".join(part for part in name.split("/") if part not in ("", "."))


_RESTORED_TYPES = {
    tarfile.REGTYPE: "a file",
    tarfile.AREGTYPE: "a file",
    tarfile.CONTTYPE: "a file",
    tarfile.DIRTYPE: "a directory",
    tarfile.SYMTYPE: "a symbolic link",
    tarfile.LNKTYPE: "a hard link",
}
_FILE_TYPES = frozenset((tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE))
#: The longest name (PATH_MAX, less its NUL) and path component (NAME_MAX) Linux takes.
MAX_PATH = 4095
MAX_NAME = 255
_OTHER_TYPES = {
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO",
}


class MemberRules:
    """The rules a member must meet to be restored: restore, verify and create apply
    the same ones, so what verifies restores.

    A member's name must stay inside the target (no absolute name, no '..', no NUL),
    it must be a file, directory, symbolic link or hard link to another member, and its
    path must not run through a symbolic link an earlier member made, nor replace a
    directory. Links themselves are data: restored verbatim, wherever they point, and
    never followed (`filewrite.Staging` makes that so by construction; these rules give
    the clear message, and let verify and create say it without writing). Names are
    compared exactly, as Linux file systems do.
    """

    def __init__(self) -> None:
        self._links: set[str] = set()  # symbolic links made, and hard links to them
        self._directories: set[str] = set()  # directories made, named or implied
        self._last_file: str | None = None  # the previous member, if a regular file

    def check(self, member: tarfile.TarInfo) -> str:
        """The path the member is restored at ('' for the top directory itself), or an
        UnsafeArchiveError saying why it cannot be."""
        kind = member.type
        path = self._path(member, member.name, "its name")
        if kind not in _RESTORED_TYPES:
            what = _OTHER_TYPES.get(kind, f"of tar type {kind!r}")
            _refuse(member, f"it is {what}; strongroom restores files, directories and links")
        is_directory = kind == tarfile.DIRTYPE
        if not is_directory and (not path or path in self._directories):
            _refuse(member, "it would replace a directory" if path else "it has no file name")
        part = PART_RECORD in member.pax_headers
        if part and (kind not in _FILE_TYPES or path != self._last_file):
            _refuse(member, "it continues a stream, but does not follow its earlier part")
        self._last_file = path if kind in _FILE_TYPES else None
        original = ""
        if kind == tarfile.SYMTYPE and "\x00" in member.linkname:
            _refuse(member, "its link target holds a NUL character")
        elif kind == tarfile.LNKTYPE:
            original = self._path(member, member.linkname, "its link target")
            if not original or original in self._directories:
                _refuse(member, "it is a hard link to a directory")
        self._record(path, is_directory, kind == tarfile.SYMTYPE or original in self._links)
        return path

    def _path(self, member: tarfile.TarInfo, name: str, what: str) -> str:
        """`member_path(name)`, refused if it leaves the target or runs through a link."""
        parts = name.split("/")
        if "" in parts or "." in parts:
            parts = [part for part in parts if part not in ("", ".")]
            path = "/".join(parts)
        else:
            path = name
        if name.startswith("/") or ".." in parts or "\x00" in name:
            _refuse(member, f"{what} would land outside the target")
        if _too_long(name, parts):
            _refuse(
                member, f"{what} is longer than strongroom restores (4095 bytes, 255 in one name)"
            )
        if self._links:
            through = next((d for d in _ancestors(path) if d in self._links), None)
            if through is not None:
                _refuse(member, f"{what} runs through {through!r}, a link the backup made earlier")
        return path

    def _record(self, path: str, is_directory: bool, is_link: bool) -> None:
        directory = path.rpartition("/")[0]
        while directory and directory not in self._directories:
            self._directories.add(directory)
            directory = directory.rpartition("/")[0]
        if is_directory:
            self._directories.add(path)
        if is_link:
            self._links.add(path)
        elif self._links:
            self._links.discard(path)


def _too_long(name: str, parts: list[str]) -> bool:
    """Whether the name, or one of its parts, has more bytes than Linux takes (counted
    cheaply: a character is at most 4 bytes, so only a name or part long enough to be
    too long is encoded; most names are too short for any part to be)."""
    if len(name) <= MAX_NAME // 4:
        return False
    return (len(name) > MAX_PATH // 4 and len(os.fsencode(name)) > MAX_PATH) or any(
        len(os.fsencode(part)) > MAX_NAME for part in parts if len(part) > MAX_NAME // 4
    )


class RefusedMember(UnsafeArchiveError):
    """A member restore will not make, and why."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(
            f"The backup holds {name!r}, which strongroom will not restore: {reason}. "
            "Restore the other paths by naming them."
        )
        self.name, self.reason = name, reason


def _refuse(member: tarfile.TarInfo, reason: str) -> NoReturn:
    raise RefusedMember(member.name, reason)


def _views(stream: ArchiveReader, size: int) -> Iterator[memoryview]:
    """The next `size` bytes of the stream as views into its chunks (no copies)."""
    while size:
        piece = stream.read_view(min(size, COPY_BUFFER))
        if not piece:
            raise IntegrityError("The backup ends inside a file.")
        size -= len(piece)
        yield piece


def _append_part(
    stream: ArchiveReader,
    member: tarfile.TarInfo,
    path: str,
    staging: Staging,
    preallocate: Preallocate | None,
) -> None:
    """Append one continuation part of a named stream to the file its first part made."""
    fd = staging.append_to(path)
    if fd is None:
        raise IntegrityError(
            f"Part {member.pax_headers[PART_RECORD]} of {member.name!r} has no start."
        )
    try:
        offset = os.fstat(fd).st_size
        if preallocate is not None:
            preallocate(fd, offset, member.size)
        write_pieces(fd, _views(stream, member.size), offset, start_writeback)
    finally:
        os.close(fd)
