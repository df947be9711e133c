"""The lean tar reader returns what tarfile's own reader returns, and refuses the rest."""

from __future__ import annotations

import io
import tarfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strongroom import IntegrityError
from strongroom.tarstream import PAX_LIMIT, mtime_ns, read_members

FIELDS = ("name", "type", "mode", "uid", "gid", "size", "mtime", "linkname", "uname", "gname")

#: Path segments: any text without NUL or "/", including names that are not UTF-8 on disk
#: (lone surrogates, which tarfile writes with hdrcharset=BINARY).
segments = (
    st.lists(
        st.characters(blacklist_characters="\0/", blacklist_categories=["Cs"])
        | st.sampled_from(["\udcff", "\udc80"]),
        min_size=1,
        max_size=60,
    )
    .map("".join)
    .filter(lambda s: s not in (".", ".."))
)


@st.composite
def members(draw: st.DrawFn) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo("/".join(draw(st.lists(segments, min_size=1, max_size=4))))
    info.type = draw(
        st.sampled_from(
            [tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE]
        )
    )
    info.mode = draw(st.integers(0, 0o7777))
    info.uid = draw(st.integers(0, 2**32 - 1))  # over 8**7 goes into a pax record
    info.gid = draw(st.integers(0, 2**32 - 1))
    info.uname = draw(st.text(max_size=40).filter(lambda s: "\0" not in s))
    info.gname = draw(st.text(max_size=10).filter(lambda s: "\0" not in s))
    info.mtime = draw(st.integers(0, 253_402_300_799) | st.floats(0, 2**33, allow_nan=False))
    data = b""
    if info.isreg():
        data = draw(st.binary(max_size=1500))
        info.size = len(data)
    elif info.issym() or info.islnk():
        info.linkname = "/".join(draw(st.lists(segments, min_size=1, max_size=4)))
    return info, data


def write(entries: list[tuple[tarfile.TarInfo, bytes]], **options: object) -> bytes:
    sink = io.BytesIO()
    with tarfile.open(fileobj=sink, mode="w", format=tarfile.PAX_FORMAT, **options) as tar:  # type: ignore[call-overload]
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data))
    return sink.getvalue()


def described(member: tarfile.TarInfo, data: bytes) -> dict[str, object]:
    fields = {name: getattr(member, name) for name in FIELDS}
    return {**fields, "pax": member.pax_headers, "offset_data": member.offset_data, "data": data}


def read_with_tarstream(archive: bytes) -> list[dict[str, object]]:
    """Every member and its data, reading the data as restore does."""
    stream = io.BytesIO(archive)
    found = []
    for member in read_members(stream):
        data = stream.read(member.size) if member.isreg() else b""
        found.append(described(member, data))
    return found


@settings(max_examples=200, deadline=None)
@given(st.lists(members(), max_size=8))
def test_members_are_read_exactly_as_tarfile_reads_them(
    entries: list[tuple[tarfile.TarInfo, bytes]],
) -> None:
    archive = write(entries)
    expected = []
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r") as tar:
        for member in tar:
            extracted = tar.extractfile(member) if member.isreg() else None
            expected.append(described(member, extracted.read() if extracted else b""))
    assert read_with_tarstream(archive) == expected
    assert len(expected) == len(entries)


def test_data_left_unread_is_skipped() -> None:
    first, second = tarfile.TarInfo("first"), tarfile.TarInfo("second")
    first.size, second.size = 1000, 3
    archive = write([(first, b"x" * 1000), (second, b"abc")])
    stream = io.BytesIO(archive)
    members = read_members(stream)
    assert next(members).name == "first"
    stream.read(10)
    member = next(members)
    assert (member.name, stream.read(member.size)) == ("second", b"abc")
    assert next(members, None) is None


def long_named() -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo("n" * 150), b""


@pytest.mark.parametrize(
    ("archive", "message"),
    [
        (b"not a tar stream at all".ljust(512, b"."), "not a tar stream"),
        (write([long_named()])[:700], "ends inside"),
        (write([long_named()])[:300], "ends inside a tar header"),
        (
            tarfile.TarInfo("gnu").tobuf(tarfile.GNU_FORMAT)[:156]
            + tarfile.GNUTYPE_LONGNAME
            + tarfile.TarInfo("gnu").tobuf(tarfile.GNU_FORMAT)[157:],
            "of type b'L'",
        ),
        (write([long_named()], pax_headers={"comment": "global"}), "of type b'g'"),
        (write([(tarfile.TarInfo("f"), b"")]).replace(b"0000644", b"00006x4", 1), "malformed tar"),
    ],
    ids=["not-tar", "cut-in-pax", "cut-in-header", "gnu-long-name", "global-pax", "bad-number"],
)
def test_what_it_cannot_read_is_an_integrity_error(archive: bytes, message: str) -> None:
    with pytest.raises(IntegrityError, match=message):
        list(read_members(io.BytesIO(archive)))


def pax_archive(records: bytes) -> bytes:
    header = tarfile.TarInfo("././@PaxHeader")
    header.type, header.size = tarfile.XHDTYPE, len(records)
    member = tarfile.TarInfo("f").tobuf(tarfile.USTAR_FORMAT)
    padding = b"\0" * (-len(records) % 512)
    return header.tobuf(tarfile.USTAR_FORMAT) + records + padding + member + bytes(1024)


@pytest.mark.parametrize(
    "records",
    [
        b"12 path=abc",  # no newline
        b"x path=abc\n",  # no length
        b"path=abc\n",  # no length and no space: must not loop forever
        b"99 path=abc\n",  # longer than the header
        b"0 path=abc\n",
        b"11 pathabc\n",  # no "="
        b"12 size=12a\n",
        b"11 size=-1\n",
        b"22 GNU.sparse.major=1\n",
    ],
)
def test_malformed_or_unsupported_pax_records_are_refused(records: bytes) -> None:
    with pytest.raises(IntegrityError, match="pax|sparse|negative"):
        list(read_members(io.BytesIO(pax_archive(records))))


def test_two_pax_headers_in_a_row_are_refused() -> None:
    """tarfile never writes them, and would merge them in an order of its own."""
    archive = pax_archive(b"16 path=abc/def\n")
    pax_header = archive[: 2 * 512]
    with pytest.raises(IntegrityError, match="two pax headers"):
        list(read_members(io.BytesIO(pax_header + archive)))


def test_a_well_formed_pax_archive_built_by_hand_is_read() -> None:
    """The counterpart of the refusals above: the same construction, well formed, reads."""
    (member,) = read_members(io.BytesIO(pax_archive(b"16 path=abc/def\n")))
    assert (member.name, member.pax_headers) == ("abc/def", {"path": "abc/def"})


def test_an_oversized_pax_header_is_refused_before_it_is_read() -> None:
    header = tarfile.TarInfo("././@PaxHeader")
    header.type, header.size = tarfile.XHDTYPE, PAX_LIMIT + 1
    with pytest.raises(IntegrityError, match="too large"):
        list(read_members(io.BytesIO(header.tobuf(tarfile.USTAR_FORMAT))))


@pytest.mark.parametrize(
    ("record", "value"),
    [
        ("mtime", "nan"),
        ("mtime", "inf"),
        ("mtime", "1e300"),
        ("mtime", "-62135596800.000000001"),  # before year 1: ls --long died on it
        ("mtime", "-200000000000"),  # year -4368, within what the check once let through
        ("mtime", "253402300800"),  # year 10000
        ("uid", str(2**32)),
        ("gid", "-1"),
    ],
)
def test_numbers_no_file_system_takes_are_refused(record: str, value: str) -> None:
    """A pax record can hold any number; restore, verify and ls would fail on these later
    with a bare ValueError or OverflowError (utime, chown, a date)."""
    info = tarfile.TarInfo("file")
    info.pax_headers = {record: value}
    sink = io.BytesIO()
    with tarfile.open(fileobj=sink, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(b""))
    sink.seek(0)
    with pytest.raises(IntegrityError, match="impossible"):
        list(read_members(sink))


@pytest.mark.parametrize("record", ["-62135596800", "253402300799.999999999"])
def test_the_first_and_last_moments_of_years_1_to_9999_are_read(record: str) -> None:
    """The last nanosecond of 9999 rounds up through a float (once refused as impossible,
    so a backup of a file dated so never restored)."""
    info = tarfile.TarInfo("file")
    info.pax_headers = {"mtime": record}
    sink = io.BytesIO()
    with tarfile.open(fileobj=sink, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(b""))
    sink.seek(0)
    (member,) = read_members(sink)
    assert mtime_ns(member) == int(record.replace(".", "")) * (1 if "." in record else 10**9)
