"""The archive writer's member headers: pax format, byte for byte as tarfile writes them.

tarfile's `TarInfo.tobuf` checks every field through generic helpers and sums each 512-byte
block twice (signed and unsigned); as every file's sub-second mtime takes a pax record,
each file costs two such blocks. Backing up 20,000 small files, that was 41% of the archive
writer's thread (py-spy). `member_header` lays out the common member directly: ASCII names
and owners that fit the ustar fields, numbers that fit their octal fields, no device
numbers. Anything else goes to tarfile's own code, so the archive is the same either way
(tests/test_tarheader.py compares the two on every kind of member).
"""

from __future__ import annotations

import functools
import struct
import tarfile

__all__ = ["member_header", "set_mtime"]

#: One ustar block: name; mode, uid, gid, size and mtime in octal; checksum; type; link
#: name; magic; user and group names; device numbers, prefix and padding left NUL.
_BLOCK = struct.Struct("100s48s8sc100s8s32s32s183x")
#: What the checksum counts besides the variable fields: its own field as eight spaces,
#: and the magic.
_FIXED_SUM = sum(b" " * 8) + sum(tarfile.POSIX_MAGIC)
_PAX_NAME = b"././@PaxHeader"
_UID_LIMIT = 8**7  # what an 8-byte octal field holds
_SIZE_LIMIT = 8**11  # what a 12-byte octal field holds
_NAME_LENGTH = tarfile.LENGTH_NAME
_OWNER_LENGTH = 32


def set_mtime(info: tarfile.TarInfo, mtime_ns: int) -> None:
    """Give `info` the mtime `mtime_ns` exactly: whole seconds in the ustar field and, when
    there is a fraction, its nanoseconds in a pax record written in decimal (tarfile writes
    `str(float)`, which at today's times is off by up to a microsecond)."""
    info.mtime = mtime_ns // 10**9  # the ustar field; readers take the pax record over it
    if mtime_ns % 10**9:
        whole, fraction = divmod(abs(mtime_ns), 10**9)
        sign = "-" if mtime_ns < 0 else ""
        info.pax_headers = {**info.pax_headers, "mtime": f"{sign}{whole}.{fraction:09d}"}


def member_header(info: tarfile.TarInfo, encoding: str, errors: str) -> bytes:
    """The pax header blocks of `info`, as `info.tobuf(PAX_FORMAT, encoding, errors)`."""
    return _common_header(info) or info.tobuf(tarfile.PAX_FORMAT, encoding, errors)


def _common_header(info: tarfile.TarInfo) -> bytes | None:
    """The header of a member every field of which fits the ustar block, and whose only pax
    record is its mtime (`set_mtime`'s, or as tarfile writes a float: `str(mtime)`); None
    for any other."""
    name, linkname, uname, gname = info.name, info.linkname, info.uname, info.gname
    if info.type == tarfile.DIRTYPE and not name.endswith("/"):
        name += "/"
    mtime, size, uid, gid = info.mtime, info.size, info.uid, info.gid
    whole_mtime = round(mtime) if isinstance(mtime, float) else mtime
    records = dict(info.pax_headers)
    if isinstance(mtime, float):
        records.setdefault("mtime", str(mtime))  # as tarfile: a record given first wins
    if not (
        name.isascii()
        and len(name) <= _NAME_LENGTH
        and linkname.isascii()
        and len(linkname) <= tarfile.LENGTH_LINK
        and uname.isascii()
        and len(uname) <= _OWNER_LENGTH
        and gname.isascii()
        and len(gname) <= _OWNER_LENGTH
        and type(uid) is int
        and 0 <= uid < _UID_LIMIT
        and type(gid) is int
        and 0 <= gid < _UID_LIMIT
        and type(size) is int
        and 0 <= size < _SIZE_LIMIT
        and type(whole_mtime) is int
        and 0 <= whole_mtime < _SIZE_LIMIT
        and info.type not in (tarfile.CHRTYPE, tarfile.BLKTYPE)
        and records.keys() <= {"mtime"}
    ):
        return None
    numbers = (info.mode & 0o7777, uid, gid, size, whole_mtime)
    ascii_fields = (name, linkname, uname, gname)
    block = _block(info.type, numbers, *(field.encode("ascii") for field in ascii_fields))
    if not records:
        return block
    pax = _pax_record(b"mtime", records["mtime"].encode("ascii"))
    padding = -len(pax) % tarfile.BLOCKSIZE
    return b"".join((_extended_block(len(pax)), pax, tarfile.NUL * padding, block))


@functools.lru_cache(maxsize=64)
def _extended_block(size: int) -> bytes:
    """The block before `size` bytes of pax records (it differs only by their size)."""
    return _block(tarfile.XHDTYPE, (0, 0, 0, size, 0), _PAX_NAME, b"", b"", b"")


def _block(
    kind: bytes,
    numbers: tuple[int, int, int, int, int],
    name: bytes,
    linkname: bytes,
    uname: bytes,
    gname: bytes,
) -> bytes:
    """One ustar block; its checksum is the unsigned sum of its bytes, its own field counted
    as spaces, written as six octal digits, NUL and a space."""
    octal = b"%07o\0%07o\0%07o\0%011o\0%011o\0" % numbers
    checksum = _FIXED_SUM + sum(name) + sum(octal) + kind[0] + sum(linkname)
    checksum += sum(uname) + sum(gname)
    return _BLOCK.pack(
        name, octal, b"%06o\0 " % checksum, kind, linkname, tarfile.POSIX_MAGIC, uname, gname
    )


def _pax_record(keyword: bytes, value: bytes) -> bytes:
    """`LENGTH keyword=value\\n`, where LENGTH counts the whole record, its own digits too."""
    length = len(keyword) + len(value) + 3
    digits = len(str(length))
    if len(str(length + digits)) > digits:
        digits += 1
    return b"%d %s=%s\n" % (length + digits, keyword, value)
