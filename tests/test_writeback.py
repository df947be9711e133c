"""A chunk put without waiting for the disk has its writeback started at once (ext4, Linux).

ext4 allocates a file's blocks only when its pages are written back (delayed allocation), so
an extent still marked DELALLOC is a page nobody has asked the disk for yet.
"""

from __future__ import annotations

import fcntl
import os
import struct
from pathlib import Path

import pytest

from strongroom import writeback
from strongroom.backends.file import LocalStore
from tests.conftest import local_store

FS_IOC_FIEMAP = 0xC020660B
FIEMAP_HEADER = struct.Struct("=QQIIII")  # start, length, flags, mapped, count, reserved
FIEMAP_EXTENT = struct.Struct("=QQQQQIIII")  # logical, physical, length, 2 reserved, flags, 3
FIEMAP_EXTENT_DELALLOC = 0x4
MAX_EXTENTS = 64


def delalloc_extents(path: Path) -> int:
    """How many of the file's extents have no blocks yet (FS_IOC_FIEMAP)."""
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
    return sum(1 for flag in flags if flag & FIEMAP_EXTENT_DELALLOC)


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


def test_it_is_only_a_hint() -> None:
    """A descriptor the call cannot take (a pipe) is left alone, without an error."""
    read_end, write_end = os.pipe()
    try:
        writeback.start_writeback(write_end)
    finally:
        os.close(read_end)
        os.close(write_end)
