"""The archive writer's own tar headers are tarfile's, byte for byte, for every member."""

from __future__ import annotations

import io
import tarfile

import pytest
from hypothesis import given
from hypothesis import strategies as st

from strongroom.tarheader import _common_header, member_header, set_mtime
from strongroom.tarstream import mtime_ns, read_members

ENCODING, ERRORS = "utf-8", "surrogateescape"


def member(
    name: str = "dir/file.log", kind: bytes = tarfile.REGTYPE, **fields: object
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode, info.uid, info.gid, info.size = 0o100644, 1000, 1000, 25_000
    info.mtime, info.uname, info.gname = 1_795_788_508.123456, "alice", "staff"
    for field, value in fields.items():
        setattr(info, field, value)
    return info


def exact(info: tarfile.TarInfo, ns: int) -> tarfile.TarInfo:
    set_mtime(info, ns)
    return info


def tarfiles(info: tarfile.TarInfo) -> bytes:
    return info.tobuf(tarfile.PAX_FORMAT, ENCODING, ERRORS)


COMMON = {
    "file, sub-second mtime": member(),
    "file, whole mtime as int": member(mtime=1_795_788_508),
    "file, whole mtime as float": member(mtime=1_795_788_508.0),
    "file, mtime rounding half to even": member(mtime=2.5),
    "file, mtime just after 1970": member(mtime=0.000001),
    "empty file, mode with setuid": member(size=0, mode=0o104755),
    "directory, no slash yet": member("dir", tarfile.DIRTYPE, size=0, mode=0o40755),
    "directory, with slash": member("dir/", tarfile.DIRTYPE, size=0),
    "symbolic link": member("link", tarfile.SYMTYPE, size=0, linkname="../target"),
    "hard link": member("again", tarfile.LNKTYPE, size=0, linkname="dir/file.log"),
    "fifo": member("pipe", tarfile.FIFOTYPE, size=0),
    "name of 100 bytes": member("n" * 100),
    "owner names of 32 bytes": member(uname="u" * 32, gname="g" * 32),
    "no owner names": member(uname="", gname=""),
    "largest numbers": member(uid=8**7 - 1, gid=8**7 - 1, size=8**11 - 1),
    "root": member(uid=0, gid=0, uname="root", gname="root"),
    "file, exact mtime": exact(member(), 1_600_000_000_207_788_108),
    "file, exact whole mtime": exact(member(), 1_600_000_000 * 10**9),
}

UNCOMMON = {
    "name of 101 bytes": member("n" * 101),
    "directory name of 100 bytes": member("d" * 100, tarfile.DIRTYPE, size=0),
    "non-ASCII name": member("café.txt"),
    "name of undecodable bytes": member("caf\udce9"),
    "non-ASCII link": member("link", tarfile.SYMTYPE, size=0, linkname="naïve"),
    "long link": member("link", tarfile.SYMTYPE, size=0, linkname="l" * 101),
    "owner name of 33 bytes": member(uname="u" * 33),
    "non-ASCII group": member(gname="équipe"),
    "uid over the octal field": member(uid=8**7),
    "size of 8 GiB": member(size=8**11),
    "mtime before 1970": member(mtime=-1.5),
    "character device": member("tty", tarfile.CHRTYPE, size=0, devmajor=4, devminor=1),
    "block device": member("sda", tarfile.BLKTYPE, size=0, devmajor=8, devminor=0),
    "pax header of its own": member(pax_headers={"comment": "kept"}),
    "exact mtime before 1970": exact(member(), -1_500_000_001),
    "exact mtime, name of 101 bytes": exact(member("n" * 101), 1_600_000_000_207_788_108),
}


@pytest.mark.parametrize("info", COMMON.values(), ids=COMMON.keys())
def test_the_common_member_is_laid_out_here_as_tarfile_would(info: tarfile.TarInfo) -> None:
    assert _common_header(info) is not None
    assert member_header(info, ENCODING, ERRORS) == tarfiles(info)


@pytest.mark.parametrize("info", UNCOMMON.values(), ids=UNCOMMON.keys())
def test_any_other_member_goes_to_tarfile(info: tarfile.TarInfo) -> None:
    assert _common_header(info) is None
    assert member_header(info, ENCODING, ERRORS) == tarfiles(info)


printable = st.text(st.characters(min_codepoint=1, max_codepoint=0x7F), max_size=120)


@given(
    name=printable.filter(bool),
    linkname=printable,
    uname=st.text(max_size=40),
    kind=st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE]),
    mode=st.integers(0, 0o177777),
    uid=st.integers(0, 8**8),
    size=st.integers(0, 8**12),
    mtime=st.one_of(st.floats(-1e3, 8.0**11), st.integers(-1, 8**12)),
)
def test_any_member_gets_tarfiles_header(
    name: str, linkname: str, uname: str, kind: bytes, mode: int, uid: int, size: int, mtime: float
) -> None:
    info = member(name, kind, linkname=linkname, uname=uname, mode=mode, uid=uid, size=size)
    info.mtime = mtime
    assert member_header(info, ENCODING, ERRORS) == tarfiles(info)


def test_tarfile_reads_back_what_was_written() -> None:
    written = [info for info in COMMON.values() if info.size < 1 << 20]
    sink = io.BytesIO()
    for info in written:
        sink.write(member_header(info, ENCODING, ERRORS))
        if info.isreg():
            sink.write(b"\0" * (info.size - info.size % -tarfile.BLOCKSIZE))
    sink.write(b"\0" * 1024)
    sink.seek(0)
    with tarfile.open(fileobj=sink, mode="r:") as tar:
        read = tar.getmembers()
    assert [(m.name, m.mtime, m.linkname, m.uname) for m in read] == [
        (i.name.rstrip("/"), float(i.pax_headers.get("mtime", i.mtime)), i.linkname, i.uname)
        for i in written
    ]


@pytest.mark.parametrize(
    "ns",
    [1_600_000_000_207_788_108, 1_600_000_000_123_456_789, 5, -1_500_000_001, 10**9, 0],
)
def test_an_mtime_is_read_back_to_the_nanosecond(ns: int) -> None:
    """Through a float (tarfile's `str(mtime)`) 1600000000.207788108 came back a microsecond
    early; the decimal record reads back exactly, and tarfile still reads it."""
    info = exact(member(size=0), ns)
    archive = member_header(info, ENCODING, ERRORS) + tarfile.NUL * (2 * tarfile.BLOCKSIZE)
    (read,) = read_members(io.BytesIO(archive))
    assert mtime_ns(read) == ns
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        (theirs,) = tar.getmembers()
    assert abs(theirs.mtime - ns / 10**9) < 1e-6


@pytest.mark.parametrize(
    ("record", "ns"),
    [
        ("1600000000.2077882", 1_600_000_000_207_788_200),  # an older strongroom's str(float)
        ("1e-06", 1_000),  # tarfile's str of a tiny float
        ("0" * 5000 + "1.5", 1_500_000_000),  # planted: more digits than int() takes
        ("7.1234567891", 7_123_456_789),  # past nanoseconds: cut
    ],
)
def test_any_pax_mtime_record_reads(record: str, ns: int) -> None:
    info = member(size=0, pax_headers={"mtime": record})
    info.mtime = 0
    archive = info.tobuf(tarfile.PAX_FORMAT, ENCODING, ERRORS) + tarfile.NUL * 1024
    (read,) = read_members(io.BytesIO(archive))
    assert mtime_ns(read) == ns
