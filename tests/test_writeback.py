"""A chunk put without waiting for the disk, and a large file a restore writes, have their
writeback started at once (ext4, Linux).

ext4 allocates a file's blocks only when its pages are written back (delayed allocation), so
an extent still marked DELALLOC is a page nobody has asked the disk for yet.
"""

from __future__ import annotations

import ctypes
import fcntl
import io
import os
import struct
import threading
from pathlib import Path

import pytest

from strongroom import Engine, writeback
from strongroom.backends.file import LocalStore
from strongroom.filewrite import WRITEBACK_STEP, write_pieces
from strongroom.libc import c_function
from strongroom.smallfiles import SMALL_FILE
from tests.conftest import PASSCODE, local_store

FS_IOC_FIEMAP = 0xC020660B
FIEMAP_HEADER = struct.Struct("=QQIIII")  # start, length, flags, mapped, count, reserved
FIEMAP_EXTENT = struct.Struct("=QQQQQIIII")  # logical, physical, length, 2 reserved, flags, 3
FIEMAP_EXTENT_DELALLOC = 0x4
FIEMAP_EXTENT_UNWRITTEN = 0x800
MAX_EXTENTS = 64
SYNC_FILE_RANGE_WAIT_BEFORE = 1


def delalloc_extents(path: Path, flag: int = FIEMAP_EXTENT_DELALLOC) -> int:
    """How many of the file's extents have no blocks yet (FS_IOC_FIEMAP), or another `flag`."""
    request = bytearray(FIEMAP_HEADER.size + MAX_EXTENTS * FIEMAP_EXTENT.size)
    FIEMAP_HEADER.pack_into(request, 0, 0, 2**64 - 1, 0, 0, MAX_EXTENTS, 0)
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, FS_IOC_FIEMAP, request)
    finally:
        os.close(fd)
    mapped = FIEMAP_HEADER.unpack_from(request)[3]
    flags = [
        FIEMAP_EXTENT.unpack_from(request, FIEMAP_HEADER.size + i * FIEMAP_EXTENT.size)[5]
        for i in range(mapped)
    ]
    return sum(1 for extent_flags in flags if extent_flags & flag)


def never_sent_to_disk(path: Path) -> int:
    """How many of the file's extents hold data nobody asked the disk for: blocks not yet
    allocated, or (where a restore preallocated them) still unwritten once the writeback
    already under way has ended (SYNC_FILE_RANGE_WAIT_BEFORE starts none)."""
    wait = c_function(
        "sync_file_range", ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint
    )
    assert wait is not None
    fd = os.open(path, os.O_RDONLY)
    try:
        assert wait(fd, 0, 0, SYNC_FILE_RANGE_WAIT_BEFORE) == 0
    finally:
        os.close(fd)
    return delalloc_extents(path) + delalloc_extents(path, FIEMAP_EXTENT_UNWRITTEN)


@pytest.fixture
def store(ext4_dir: Path) -> LocalStore:
    return local_store("local", ext4_dir / "store")


def test_a_plain_write_leaves_its_blocks_unallocated(ext4_dir: Path) -> None:
    """The control: what the test below looks for is there without the hint."""
    path = ext4_dir / "plain"
    path.write_bytes(os.urandom(1024 * 1024))
    assert delalloc_extents(path) > 0


def test_an_unsynced_put_starts_its_writeback(store: LocalStore, ext4_dir: Path) -> None:
    store.put_unsynced("data/b/0000000000", os.urandom(1024 * 1024), retain_until=None)
    try:
        assert delalloc_extents(ext4_dir / "store" / "data" / "b" / "0000000000") == 0
    finally:
        store.sync(["data/b/0000000000"])


def unsent_once_extracted(engine: Engine, name: str, out: Path, files: list[str]) -> list[int]:
    """Restore backup `name` to the new directory `out`; for each of `files` (paths in the
    restore), `never_sent_to_disk` once everything is extracted: before the restore's last
    flush and its move into place."""
    counts: list[int] = []

    def on_stage(stage: str) -> None:
        if stage == "moving into place":
            (staging,) = out.parent.glob(f".{out.name}.strongroom-restore-*")
            counts.extend(never_sent_to_disk(staging / file) for file in files)

    engine.restore(name, out, passcode=PASSCODE, on_stage=on_stage)
    return counts


def test_a_restore_starts_the_writeback_of_its_large_files(engine: Engine, ext4_dir: Path) -> None:
    """A large file and a stream's parts go to the disk while the restore reads on, not
    all at its end (small files are left to the kernel, a hint for each made 20,000 of them
    restore slower, until a flush: the tests below)."""
    source = ext4_dir / "source"
    source.mkdir()
    payload = os.urandom(2 * WRITEBACK_STEP + 77)  # two steps and a rest; the stream: 3 parts
    (source / "large.bin").write_bytes(payload)
    (source / "small.txt").write_bytes(os.urandom(SMALL_FILE // 2))
    engine.create("big", [source], passcode=PASSCODE, streams={"dump": io.BytesIO(payload)})
    files = ["source/large.bin", "dump"]
    assert unsent_once_extracted(engine, "big", ext4_dir / "out", files) == [0, 0]
    assert (ext4_dir / "out" / "source" / "large.bin").read_bytes() == payload
    assert (ext4_dir / "out" / "dump").read_bytes() == payload


def test_a_restore_is_on_the_disk_when_it_returns(engine: Engine, ext4_dir: Path) -> None:
    """Its last flush writes back what the kernel still held (the small file above) before
    the restore moves into place: a power cut after it returned loses nothing."""
    source = ext4_dir / "source"
    source.mkdir()
    (source / "small.txt").write_bytes(os.urandom(SMALL_FILE // 2))
    engine.create("small", [source], passcode=PASSCODE)
    target = engine.restore("small", ext4_dir / "out", passcode=PASSCODE)
    assert never_sent_to_disk(target / "source" / "small.txt") == 0


def test_a_restore_of_small_files_flushes_them_as_it_goes(
    engine: Engine, ext4_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each FLUSH_STEP of small files written asks for a flush of their file system while
    the restore reads on (with the default step no flush is asked here: they stay unsent
    until the restore's last flush, unless something else on the machine syncs)."""
    monkeypatch.setattr(writeback, "FLUSH_STEP", SMALL_FILE)
    source = ext4_dir / "source"
    source.mkdir()
    for number in range(4):  # written on the restore's own thread: too few for helpers
        (source / f"{number}.bin").write_bytes(os.urandom(SMALL_FILE // 2))
    engine.create("small", [source], passcode=PASSCODE)
    files = [f"source/{number}.bin" for number in range(4)]
    assert unsent_once_extracted(engine, "small", ext4_dir / "out", files) == [0] * 4


@pytest.mark.parametrize("offset", [0, 12345])
def test_a_large_file_is_hinted_each_step_and_at_its_end(tmp_path: Path, offset: int) -> None:
    """From where it starts (an appended part starts at the file's end), in ranges that
    tile what was written."""
    hints: list[tuple[int, int]] = []
    piece = b"p" * (WRITEBACK_STEP // 2)
    fd = os.open(tmp_path / "large", os.O_WRONLY | os.O_CREAT)
    try:
        os.lseek(fd, offset, os.SEEK_SET)
        write_pieces(
            fd, [piece] * 4 + [b"rest"], offset, lambda _, at, size: hints.append((at, size))
        )
    finally:
        os.close(fd)
    step = WRITEBACK_STEP
    assert hints == [(offset, step), (offset + step, step), (offset + 2 * step, 4)]


def test_it_is_only_a_hint() -> None:
    """A descriptor the call cannot take (a pipe) is left alone, without an error."""
    read_end, write_end = os.pipe()
    try:
        writeback.start_writeback(write_end)
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_flush_thread_whose_start_is_interrupted_closes_its_descriptor_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while `Thread.start` waits for the new thread: the thread runs, and the
    descriptor is its own to close; `close` must not close it too (in a server, the number
    may belong to another file by then)."""
    failures: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: failures.append(args.exc_value))
    start = threading.Thread.start

    def start_then_interrupt(thread: threading.Thread) -> None:
        start(thread)
        raise KeyboardInterrupt

    directory = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        flush = writeback.FlushBehind(directory)
        monkeypatch.setattr(threading.Thread, "start", start_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            flush.wrote(writeback.FLUSH_STEP)
        monkeypatch.undo()
        flush.close()
        for thread in threading.enumerate():
            if thread.name == "strongroom-flush":
                thread.join()
    finally:
        os.close(directory)
    assert failures == []
