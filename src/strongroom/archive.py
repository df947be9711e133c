"""Sources → a POSIX (pax) tar stream, and a tar stream → a safe extraction.

Files and directories are archived under their base name with relative paths,
modes, mtimes, symlinks (never followed) and empty directories. A named stream of
unknown length is archived as one or more consecutive members of the same name,
each up to `STREAM_PART_SIZE` bytes; every part after the first carries the pax
record `STRONGROOM.part` = its number and is appended on extraction.

Extraction reads members with `tarstream` and refuses absolute paths, `..`, links that
point outside the target and device files (Python's tarfile "data" filter, for links and
for paths that run through one; names alone for the rest, see `_PathGuard`), but keeps
permission bits and, when running as root, ownership. A file or link replaces whatever
has its name; it never writes through it. Small files are written by helper processes
(`filewrite`); large files on the main thread, their blocks preallocated first where
that pays (`preallocate`).
"""

from __future__ import annotations

import io
import os
import tarfile
import time
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO, Protocol, cast

from .errors import ConfigError, IntegrityError, InvalidNameError, UnsafeArchiveError
from .filewrite import SMALL_FILE, FileMeta, SmallFileWriters, in_place, owner_ids, write_file
from .preallocate import Preallocate, preallocator_for
from .tarstream import TarSource, read_members

if TYPE_CHECKING:
    from _typeshed import StrOrBytesPath, SupportsRead

__all__ = [
    "StreamSource",
    "archive_name_of",
    "extract_archive",
    "normalize_archive_path",
    "scan_archive",
    "source_size",
    "write_archive",
]

#: A named stream: a binary file object, or an iterable of bytes.
StreamSource = BinaryIO | Iterable[bytes]

STREAM_PART_SIZE = 8 * 1024 * 1024
PART_RECORD = "STRONGROOM.part"
COPY_BUFFER = 1024 * 1024
#: Finished directories whose attributes are set together, after the pending writes.
DIRECTORY_GROUP = 1000


def archive_name_of(source: Path) -> str:
    """The top-level name a source gets in the archive: its base name."""
    name = source.absolute().name
    if not name or name in (".", ".."):
        raise ConfigError(f"Cannot back up {str(source)!r} by itself; name a directory inside it.")
    return name


def normalize_archive_path(path: str) -> str:
    """Validate a relative archive path (a stream name or a path to restore)."""
    cleaned = path.rstrip("/")
    parts = cleaned.split("/")
    if path.startswith("/") or "\\" in cleaned or any(p in ("", ".", "..") for p in parts):
        raise InvalidNameError(
            f"{path!r} is not a relative archive path: use names joined by '/', "
            "without '.', '..', backslashes or a leading '/'."
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
        _claim(seen, archive_name_of(source), str(source))
    for name in streams:
        _claim(seen, normalize_archive_path(name).split("/")[0], f"stream {name!r}")


def _claim(seen: dict[str, str], top: str, owner: str) -> None:
    if top in seen:
        raise ConfigError(
            f"{owner} and {seen[top]} would both be archived as {top!r}; rename one of them."
        )
    seen[top] = owner


def source_size(sources: Sequence[Path]) -> int:
    """Bytes of regular files under the sources, for a progress bar's total."""
    total = 0
    for source in sources:
        if source.is_file() and not source.is_symlink():
            total += source.stat().st_size
        elif source.is_dir() and not source.is_symlink():
            for directory, _, files in os.walk(source):
                for name in files:
                    path = os.path.join(directory, name)
                    if not os.path.islink(path):
                        total += os.stat(path).st_size
    return total


class ArchiveReader(TarSource, Protocol):
    """What extraction reads from: a forward-only stream that can also lend views."""

    def read_view(self, size: int) -> memoryview: ...


class _ForgetfulTarFile(tarfile.TarFile):
    """A TarFile that forgets each member once it is written, so memory stays flat.

    tarfile keeps every member in `members`; over millions of files that grows without
    bound. Hard links are found by inode (see `gettarinfo`), not in `members`.
    """

    def addfile(self, tarinfo: tarfile.TarInfo, fileobj: SupportsRead[bytes] | None = None) -> None:
        super().addfile(tarinfo, fileobj)
        self.members.clear()  # type: ignore[attr-defined]  # not in typeshed

    def gettarinfo(
        self,
        name: StrOrBytesPath | None = None,
        arcname: str | None = None,
        fileobj: IO[bytes] | None = None,
    ) -> tarfile.TarInfo:
        """tarfile remembers every file's inode, to find hard links; only a file with more
        than one link can be met again, so the others are forgotten and memory stays flat."""
        info = super().gettarinfo(name, arcname, fileobj)
        if info.isreg() and name is not None:
            status = os.lstat(name)
            if status.st_nlink == 1:
                self.inodes.pop((status.st_ino, status.st_dev), None)  # type: ignore[attr-defined]
        return info


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
) -> None:
    """Write every source and stream into `sink` as one pax tar stream."""
    with _open_writer(sink) as tar:
        for source in sources:
            tar.add(source, arcname=archive_name_of(source), recursive=True)
        for name, stream in streams.items():
            _add_stream(tar, normalize_archive_path(name), stream)


def _add_stream(tar: tarfile.TarFile, name: str, stream: StreamSource) -> None:
    for number, part in enumerate(_parts(stream)):
        info = tarfile.TarInfo(name)
        info.size = len(part)
        info.mode = 0o600
        info.mtime = int(time.time())
        if number:
            info.pax_headers = {PART_RECORD: str(number)}
        tar.addfile(info, io.BytesIO(part))


def _parts(stream: StreamSource) -> Iterator[bytes]:
    """Cut a stream of unknown length into parts; always at least one (maybe empty)."""
    pieces = _pieces(stream)
    buffer = bytearray()
    for piece in pieces:
        buffer += piece
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


def extract_archive(stream: ArchiveReader, target: Path, selected: Sequence[str] = ()) -> set[str]:
    """Extract the tar stream into `target` (an empty staging directory).

    Returns which of the `selected` paths were found (all of them must be; the caller
    checks). With no selection, everything is extracted.
    """
    found: set[str] = set()
    guard = _PathGuard(target)
    root = os.path.join(target, "")
    preallocate = preallocator_for(target)
    with SmallFileWriters() as writers:
        directories = _Directories(writers)
        for member in read_members(stream):
            match = _selection_match(member.name, selected)
            if selected and match is None:
                continue
            if match is not None:
                found.add(match)
            safe = guard.check(member)
            path = root + safe.name
            directories.leave_unless_inside(path)
            if safe.isdir():
                os.makedirs(path, 0o700, exist_ok=True)
                directories.enter(safe, path)
            elif safe.isreg():
                writers.wait_for(path)  # a later member of the same name must land last
                if PART_RECORD in safe.pax_headers:
                    _append_part(stream, safe, path, preallocate)
                elif safe.size <= SMALL_FILE:
                    writers.submit(_file_meta(safe, path), list(_views(stream, safe.size)))
                else:
                    write_file(_file_meta(safe, path), _views(stream, safe.size), preallocate)
            else:  # a symbolic or hard link; the guard refuses everything else
                writers.wait_all()  # a link could redirect a pending write
                _make_link(safe, path, target)
        directories.finish_all()
    return found


class _Directories:
    """Gives directories their owner, mtime and mode once their contents are written.

    Archives list a directory's contents right after it (depth first), so a directory is
    done when a member outside it comes. Done directories are finished in groups, after
    the pending file writes, so memory stays flat however many directories a backup has.
    A directory its mode makes read-only waits for the end, in case an archive written in
    another order puts something in it later.
    """

    def __init__(self, writers: SmallFileWriters) -> None:
        self._writers = writers
        self._open: list[tuple[tarfile.TarInfo, str]] = []  # the path to the current member
        self._done: list[tuple[tarfile.TarInfo, str]] = []  # deepest first
        self._read_only: list[tuple[tarfile.TarInfo, str]] = []  # deepest first

    def enter(self, member: tarfile.TarInfo, path: str) -> None:
        self._open.append((member, path))

    def leave_unless_inside(self, path: str) -> None:
        """Close the open directories that `path` is not inside."""
        while self._open and not path.startswith(self._open[-1][1] + os.sep):
            member, closed = self._open.pop()
            (self._done if member.mode & 0o200 else self._read_only).append((member, closed))
        if len(self._done) >= DIRECTORY_GROUP:
            self._writers.wait_all()
            self._finish(self._done)
            self._done = []

    def finish_all(self) -> None:
        self._writers.wait_all()
        self._finish([*self._done, *reversed(self._open), *self._read_only])

    @staticmethod
    def _finish(directories: list[tuple[tarfile.TarInfo, str]]) -> None:
        for member, path in directories:
            _set_owner(member, path)  # a directory the guard let through, not a link
            os.utime(path, (member.mtime, member.mtime))
            os.chmod(path, member.mode)


def _file_meta(member: tarfile.TarInfo, path: str) -> FileMeta:
    return FileMeta(
        path,
        member.size,
        member.mode,
        member.mtime,
        member.uname,
        member.uid,
        member.gname,
        member.gid,
    )


def _make_link(member: tarfile.TarInfo, path: str, target: Path) -> None:
    """Create a symbolic link, or a hard link to a file restored before it, in place of
    whatever has its name; then its owner and mtime, and unless it is (a hard link to) a
    symbolic link, whose target chmod would change, its mode."""
    if member.issym():
        in_place(path, lambda: os.symlink(member.linkname, path))
    else:
        original = os.path.join(target, member.linkname)
        if not os.path.lexists(original):
            raise ConfigError(
                f"{member.name!r} is a hard link to {member.linkname!r}, which this restore "
                "does not include; restore both paths."
            )
        in_place(path, lambda: os.link(original, path, follow_symlinks=False))
    _set_owner(member, path)
    if not os.path.islink(path):
        os.chmod(path, member.mode)
    os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)


def _set_owner(member: tarfile.TarInfo, path: str) -> None:
    """As root, give the path the member's owner (by name where this system knows it);
    a path that is a link gets the link's own owner, never its target's."""
    if os.geteuid() == 0:
        os.lchown(path, *owner_ids(member.uname, member.uid, member.gname, member.gid))


def scan_archive(stream: TarSource) -> int:
    """Parse a whole tar stream (member data is read past); return how many members it has."""
    return sum(1 for _ in read_members(stream))


def _selection_match(name: str, selected: Sequence[str]) -> str | None:
    for path in selected:
        if name == path or name.startswith(path + "/"):
            return path
    return None


class _PathGuard:
    """Decides which members may be extracted, without a syscall for most of them.

    The staging directory is new and empty, so the only links in it are those the
    archive itself made. A file or directory whose path runs through none of them is
    checked by its name alone; links, and members whose path runs through one, go
    through tarfile's data filter, which resolves real paths. Paths are compared
    case-folded and NFC-normalized, so a case-insensitive filesystem cannot hide a link.
    """

    def __init__(self, target: Path) -> None:
        self._target = str(target)
        self._links: set[str] = set()

    def check(self, member: tarfile.TarInfo) -> tarfile.TarInfo:
        """The member as it may be extracted (mode bits and ownership kept), or an error."""
        parts = member.name.split("/")
        if member.name.startswith("/") or ".." in parts:
            raise UnsafeArchiveError(
                f"The backup holds {member.name!r}, which would land outside the target."
            )
        if not member.isdir() and parts[-1] in ("", "."):
            raise UnsafeArchiveError(
                f"The backup holds {member.name!r}, which strongroom will not restore: "
                "it does not end in a file name."
            )
        plain = member.isreg() or member.isdir()
        if not plain:
            self._links.add(_folded(member.name))
        elif not self._links or not self._runs_through_link(parts):
            member.mode &= 0o777
            return member
        try:
            filtered = tarfile.data_filter(member, self._target)
        except tarfile.FilterError as exc:
            raise UnsafeArchiveError(
                f"The backup holds {member.name!r}, which strongroom will not restore: {exc}. "
                "Restore the other paths by naming them."
            ) from None
        keep: dict[str, Any] = {
            "uid": member.uid,
            "gid": member.gid,
            "uname": member.uname,
            "gname": member.gname,
        }
        if not member.issym():
            keep["mode"] = member.mode & 0o777
        return filtered.replace(**keep, deep=False)

    def _runs_through_link(self, parts: list[str]) -> bool:
        folded = _folded("/".join(parts)).split("/")
        return any("/".join(folded[:depth]) in self._links for depth in range(1, len(folded) + 1))


def _folded(name: str) -> str:
    return unicodedata.normalize("NFC", name).casefold()


def _views(stream: ArchiveReader, size: int) -> Iterator[memoryview]:
    """The next `size` bytes of the stream as views into its chunks (no copies)."""
    while size:
        piece = stream.read_view(min(size, COPY_BUFFER))
        if not piece:
            raise IntegrityError("The backup ends inside a file.")
        size -= len(piece)
        yield piece


def _append_part(
    stream: ArchiveReader, member: tarfile.TarInfo, path: str, preallocate: Preallocate | None
) -> None:
    """Append one continuation part of a named stream to the file its first part made."""
    if not os.path.isfile(path) or os.path.islink(path):
        raise IntegrityError(
            f"Part {member.pax_headers[PART_RECORD]} of {member.name!r} has no start."
        )
    with open(path, "ab") as out:
        if preallocate is not None:
            preallocate(out.fileno(), os.fstat(out.fileno()).st_size, member.size)
        for piece in _views(stream, member.size):
            out.write(piece)
