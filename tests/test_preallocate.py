"""Preallocating large restored files: only on ext4, size kept, fatal errors raised."""

from __future__ import annotations

import errno
import os
import tarfile
from pathlib import Path

import pytest

from strongroom import Engine, IntegrityError, archive
from strongroom.preallocate import Preallocate, preallocator_for
from tests.conftest import PASSCODE, file_system_type
from tests.forge import forge_backup


def preallocator_of(directory: Path) -> Preallocate | None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return preallocator_for(fd)
    finally:
        os.close(fd)


def test_on_ext4_blocks_are_reserved_and_the_size_is_kept(ext4_dir: Path) -> None:
    preallocate = preallocator_of(ext4_dir)
    assert preallocate is not None
    path = ext4_dir / "large"
    with path.open("wb") as out:
        out.write(b"head")
        out.flush()
        preallocate(out.fileno(), 4, 8 * 1024 * 1024)
        status = os.fstat(out.fileno())
    assert status.st_size == 4
    assert status.st_blocks * 512 >= 8 * 1024 * 1024


def test_a_file_that_cannot_be_written_fails_at_once(ext4_dir: Path) -> None:
    preallocate = preallocator_of(ext4_dir)
    assert preallocate is not None
    with (ext4_dir / "huge").open("wb") as out, pytest.raises(OSError) as raised:
        preallocate(out.fileno(), 2**62, 2**20)  # beyond ext4's largest file
    assert raised.value.errno == errno.EFBIG


def test_other_failures_only_mean_no_preallocation(ext4_dir: Path) -> None:
    preallocate = preallocator_of(ext4_dir)
    assert preallocate is not None
    with (ext4_dir / "empty").open("wb") as out:
        preallocate(out.fileno(), 0, 0)  # EINVAL from the kernel; the write goes on
        assert os.fstat(out.fileno()).st_blocks == 0


def test_other_file_systems_are_left_alone() -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or file_system_type(shm) != "tmpfs":
        pytest.skip("no tmpfs at /dev/shm")
    assert preallocator_of(shm) is None


def test_a_member_never_reserves_more_than_the_stream_has_left(
    engine: Engine, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: a backup of a few KiB whose member claims 1 TiB; preallocating the claim
    would reserve the whole disk until the stream ran out (or for good, if the restore
    were killed meanwhile)."""
    reserved: list[int] = []
    monkeypatch.setattr(
        archive, "preallocator_for", lambda directory: lambda fd, offset, n: reserved.append(n)
    )
    member = tarfile.TarInfo("huge")
    member.size = 2**40
    stream = member.tobuf(tarfile.PAX_FORMAT) + b"A" * 4096  # and then the stream ends
    chunk_size = 64 * 1024  # one chunk: the most the stream can hold, authenticated
    forge_backup(home / "stores" / "backupsDefault", "huge", PASSCODE, stream, chunk_size)
    with pytest.raises(IntegrityError):
        engine.restore("huge", tmp_path / "out", passcode=PASSCODE)
    assert reserved and max(reserved) <= chunk_size, reserved
