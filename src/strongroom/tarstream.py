"""Reads the members of a pax tar stream, as `tarfile` writes it, several times faster.

Restoring many small files was bound by tarfile's header parsing: about 40 µs a member,
and every member has two headers (tarfile puts the sub-second mtime in a pax record).
This reader knows exactly the subset that `tarfile` writes in PAX_FORMAT (ustar headers,
each optionally preceded by a pax header of records) and returns the same
`tarfile.TarInfo` objects, so the extraction filter and everything after it stay
tarfile's. Anything else (GNU long names or sparse files, global pax headers) is refused
with an IntegrityError rather than read wrongly.

The header checksum is not verified: every byte read here has been authenticated by
AES-GCM, which a checksum cannot add to. The ustar magic is checked instead, which
catches a stream that is not tar at all.
"""

from __future__ import annotations

import re
import struct
import sys
import tarfile
from collections.abc import Iterator
from typing import Protocol

from .errors import IntegrityError

__all__ = ["Member", "mtime_ns", "mtime_restorable", "read_members"]

BLOCK = 512
#: A pax header larger than this is refused (tarfile writes a few hundred bytes).
PAX_LIMIT = 1024 * 1024
#: The ustar header fields, in order (magic and version read together), then padding.
_HEADER = struct.Struct("100s8s8s8s12s12s8sc100s8s32s32s8s8s155s12x")
_POSIX_MAGIC = b"ustar\x0000"
_MAGICS = (_POSIX_MAGIC, b"ustar  \x00")
_END = bytes(BLOCK)
_NEWLINE = ord("\n")
_MEMBER_TYPES = frozenset(
    (
        tarfile.REGTYPE,
        tarfile.AREGTYPE,
        tarfile.CONTTYPE,
        tarfile.LNKTYPE,
        tarfile.SYMTYPE,
        tarfile.CHRTYPE,
        tarfile.BLKTYPE,
        tarfile.DIRTYPE,
        tarfile.FIFOTYPE,
    )
)
_MAX_ID = 2**32
#: The mtimes a restore sets and `ls` shows: 0001-01-01T00:00:00Z to the last nanosecond of
#: 9999-12-31 (what datetime holds).
_MIN_NS = -62_135_596_800 * 10**9
_MAX_NS = 253_402_300_800 * 10**9 - 1
#: What tarfile encodes ustar fields with, and pax fields marked hdrcharset=BINARY.
_ENCODING = sys.getfilesystemencoding()


class TarSource(Protocol):
    """A forward-only byte stream: full reads, its position, and skipping ahead."""

    def read(self, size: int = -1) -> bytes: ...
    def seek(self, offset: int, whence: int = 0) -> int: ...
    def tell(self) -> int: ...


class Member(tarfile.TarInfo):
    """A member as read here: a `tarfile.TarInfo` that also holds its exact mtime, read
    from its pax record once (a restore sets it on the file, lists it, checks it)."""

    __slots__ = ("mtime_ns",)
    mtime_ns: int


def read_members(stream: TarSource) -> Iterator[Member]:
    """Each member in order, with `offset_data` set to where its data starts.

    The caller may read some or all of a regular file's data before asking for the next
    member; whatever it leaves is skipped.
    """
    records: dict[str, str] = {}
    while True:
        header = stream.read(BLOCK)
        if not header or header == _END:
            return
        if len(header) < BLOCK:
            raise IntegrityError("The backup's archive ends inside a tar header.")
        fields = _HEADER.unpack(header)
        if fields[9] not in _MAGICS:
            raise IntegrityError("The backup's archive is not a tar stream strongroom can read.")
        if fields[7] == tarfile.XHDTYPE:
            if records:
                raise IntegrityError("The backup's archive has two pax headers in a row.")
            records = _read_pax(stream, _number(fields[4]))
            continue
        member = _member(fields)
        if records:
            _apply_pax(member, records)
            records = {}
        _check_ranges(member)
        member.offset_data = stream.tell()
        yield member
        if member.isreg():
            stream.seek(member.offset_data + _padded(member.size))


def _member(fields: tuple[bytes, ...]) -> Member:
    """The member a ustar header describes (its fields as `_HEADER` unpacks them)."""
    (name, mode, uid, gid, size, mtime, _, kind, linkname, magic, uname, gname, _, _, prefix) = (
        fields
    )
    member = Member(_text(name))
    if kind not in _MEMBER_TYPES:
        raise IntegrityError(
            f"The backup's archive holds {member.name!r} as a tar member of type {kind!r}, "
            "which strongroom does not read."
        )
    member.type = kind
    member.mode = _number(mode)
    member.uid = _number(uid)
    member.gid = _number(gid)
    member.size = _number(size)
    member.mtime = _number(mtime)
    member.linkname = _text(linkname)
    member.uname = _text(uname)
    member.gname = _text(gname)
    if kind == tarfile.AREGTYPE and member.name.endswith("/"):
        member.type = tarfile.DIRTYPE  # the old V7 way to store a directory
    if prefix[0] and magic == _POSIX_MAGIC:
        member.name = _text(prefix) + "/" + member.name
    if member.isdir():
        member.name = member.name.rstrip("/")
    return member


def _read_pax(stream: TarSource, size: int) -> dict[str, str]:
    if size > PAX_LIMIT:
        raise IntegrityError(f"The backup's archive has a pax header of {size} bytes; too large.")
    data = stream.read(_padded(size))
    if len(data) < _padded(size):
        raise IntegrityError("The backup's archive ends inside a pax header.")
    return _pax_records(data[:size])


def _pax_records(data: bytes) -> dict[str, str]:
    """Parse `<length> <key>=<value>\\n` records; values are decoded as tarfile does."""
    raw: dict[bytes, bytes] = {}
    position, size = 0, len(data)
    while position < size:
        space = data.find(b" ", position)
        length = data[position:space]
        if space <= position or not length.isdigit():
            raise IntegrityError("The backup's archive has a malformed pax header.")
        end = position + int(length)
        if end <= space or end > size or data[end - 1] != _NEWLINE:
            raise IntegrityError("The backup's archive has a malformed pax header.")
        key, equals, value = data[space + 1 : end - 1].partition(b"=")
        if not equals:
            raise IntegrityError("The backup's archive has a malformed pax header.")
        raw[key] = value
        position = end
    binary = raw.get(b"hdrcharset") == b"BINARY"
    return {key.decode("utf-8", "surrogateescape"): _pax_text(v, binary) for key, v in raw.items()}


def _apply_pax(member: tarfile.TarInfo, records: dict[str, str]) -> None:
    """Let the pax records override the ustar fields, as tarfile does."""
    try:
        for key, value in records.items():
            if key == "path":
                member.name = value.rstrip("/")
            elif key == "linkpath":
                member.linkname = value
            elif key in ("uname", "gname"):
                setattr(member, key, value)
            elif key in ("uid", "gid", "size"):
                setattr(member, key, int(value))
            elif key == "mtime":
                member.mtime = float(value)
            elif key.startswith("GNU.sparse."):
                raise IntegrityError(
                    f"The backup's archive holds {member.name!r} as a sparse file, "
                    "which strongroom does not read."
                )
    except ValueError:
        raise IntegrityError(
            f"The backup's archive has a malformed pax record for {member.name!r}."
        ) from None
    member.pax_headers = records
    if member.isdir():
        member.name = member.name.rstrip("/")


#: A pax mtime in plain decimal, as strongroom (`tarheader.set_mtime`) and tarfile write it.
_DECIMAL = re.compile(r"(-?)([0-9]+)(?:\.([0-9]*))?")


def mtime_ns(member: tarfile.TarInfo) -> int:
    """The member's mtime in nanoseconds, exactly as its pax record writes it (through a
    float, a time of today is off by up to a microsecond), else its whole seconds."""
    text = member.pax_headers.get("mtime")
    match = _DECIMAL.fullmatch(text) if text is not None else None
    if match is None:  # none, or an exponent (tarfile's str of a tiny float)
        return round(member.mtime * 10**9)
    sign, whole, fraction = match.groups()
    ns = int(whole.lstrip("0") or "0") * 10**9 + int((fraction or "")[:9].ljust(9, "0"))
    return -ns if sign else ns


def _check_ranges(member: Member) -> None:
    """Numbers a file system can take: a size not below 0, owner ids below 2**32, and an
    mtime within years 1 to 9999 (a pax record can hold any number, NaN included); the
    member keeps that exact mtime."""
    if member.size < 0:
        raise IntegrityError(f"The backup's archive gives {member.name!r} a negative size.")
    if not (0 <= member.uid < _MAX_ID and 0 <= member.gid < _MAX_ID):
        raise IntegrityError(f"The backup's archive gives {member.name!r} an impossible owner.")
    exact = _restorable_mtime_ns(member)
    if exact is None:
        raise IntegrityError(f"The backup's archive gives {member.name!r} an impossible mtime.")
    member.mtime_ns = exact


def mtime_restorable(member: tarfile.TarInfo) -> bool:
    """Whether the member's mtime, read exactly, is within years 1 to 9999."""
    return _restorable_mtime_ns(member) is not None


def _restorable_mtime_ns(member: tarfile.TarInfo) -> int | None:
    """The member's exact mtime if it is within years 1 to 9999, else None (a pax record
    can hold any number, NaN and infinity included: the float is bounded first)."""
    if not abs(member.mtime) < 10**12:  # NaN; years far past either end
        return None
    exact = mtime_ns(member)
    return exact if _MIN_NS <= exact <= _MAX_NS else None


def _number(field: bytes) -> int:
    """A numeric header field: octal text, or GNU's base-256 for large values."""
    if field[0] in (0o200, 0o377):
        value = int.from_bytes(field[1:], "big")
        return value - 256 ** (len(field) - 1) if field[0] == 0o377 else value
    try:
        return int(field.rstrip(b"\0") or b"0", 8)  # as tarfile writes it: digits, then NULs
    except ValueError:
        pass
    try:
        return int(field.split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:
        raise IntegrityError("The backup's archive has a malformed tar header.") from None


def _text(field: bytes) -> str:
    if not field[0]:
        return ""  # most link names and prefixes
    return field.split(b"\0", 1)[0].decode(_ENCODING, "surrogateescape")


def _pax_text(value: bytes, binary: bool) -> str:
    if not binary:
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return value.decode(_ENCODING, "surrogateescape")


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK
