"""The chunk pipeline: its compression choice, and when chunks are durable."""

from __future__ import annotations

import errno
import io
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from strongroom import Engine, StoreError, keys
from strongroom.backends.file import LocalStore
from strongroom.crypto import StreamCipher
from strongroom.pipeline import (
    PREFETCH_AHEAD,
    SAMPLE_SIZE,
    SYNC_BATCH,
    ChunkWriter,
    _looks_compressible,
)
from tests.conftest import PASSCODE, local_store


def test_random_data_is_not_worth_compressing() -> None:
    assert not _looks_compressible(memoryview(os.urandom(4 * 1024 * 1024)))


def test_a_compressible_stretch_under_a_sample_is_found() -> None:
    chunk = bytearray(os.urandom(4 * 1024 * 1024))
    chunk[-SAMPLE_SIZE:] = b"log line\n" * (SAMPLE_SIZE // 9) + b"\n" * (SAMPLE_SIZE % 9)
    assert _looks_compressible(memoryview(chunk))


def test_small_chunks_are_always_tried() -> None:
    assert _looks_compressible(memoryview(os.urandom(1000)))


def test_every_chunk_is_durable_before_the_manifest_commits_it(
    engine: Engine, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks are written without waiting for the disk, but each one, and its directory,
    is fsynced before the manifest is written: a crash never leaves a manifest whose
    chunks the disk lost."""
    synced: list[tuple[int, int]] = []  # the inode of each fsync, in order
    fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        status = os.fstat(fd)
        synced.append((status.st_dev, status.st_ino))
        fsync(fd)

    def inode(path: str | Path) -> tuple[int, int]:
        status = os.stat(path)
        return status.st_dev, status.st_ino

    opened: list[str] = []
    open_object = LocalStore._open

    def recording_open(store: LocalStore, key: str) -> int:
        opened.append(key)
        return open_object(store, key)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(LocalStore, "_open", recording_open)
    engine.create("durable", [tree], passcode=PASSCODE)
    # each chunk is fsynced through the descriptor that wrote it, never one opened later
    # (which could miss a write-back error the kernel has forgotten by then)
    assert not [key for key in opened if key.startswith("data/")]
    store = engine.store()
    root = Path(store.root)
    chunks = [root / obj.key for obj in store.list("data/durable/")]
    manifest = synced.index(inode(root / "manifests" / "durable"))
    assert len(chunks) > 5
    for chunk in chunks:
        assert inode(chunk) in synced[:manifest], chunk
        assert inode(chunk.parent) in synced[:manifest]


def test_a_file_that_ends_sooner_than_its_size_is_an_error(engine: Engine) -> None:
    """tarfile's words for a file that shrank while it was read."""
    writer = ChunkWriter(
        engine.store(), lambda index: f"scratch/{index}", StreamCipher(bytes(32), b"")
    )
    try:
        with pytest.raises(OSError, match="unexpected end of data"):
            writer.write_from(io.BytesIO(b"short"), 6)
    finally:
        writer.abort()


@pytest.mark.parametrize("chunks", [SYNC_BATCH - 1, 2 * SYNC_BATCH + 3])
def test_an_aborted_write_leaves_no_descriptor_open(tmp_path: Path, chunks: int) -> None:
    """The file store holds each chunk's descriptor until its batch is synced; a backup
    stopped before a batch filled still gives every one back."""
    store = local_store("local", tmp_path / "store")
    before = len(os.listdir("/proc/self/fd"))
    writer = ChunkWriter(
        store, lambda index: f"data/b/{index}", StreamCipher(bytes(32), b""), chunk_size=1024
    )
    writer.write(os.urandom(1024 * chunks + 1))  # the last byte waits in the writer's buffer
    writer.abort()
    assert len(os.listdir("/proc/self/fd")) == before
    assert store.list("data/b/")  # some were put before the abort dropped the rest


def test_a_failed_fsync_still_closes_every_descriptor_of_its_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write-back error fails the sync (so the backup), and the batch's other descriptors
    are closed all the same: a server that meets a failing disk does not run out of them."""
    store = local_store("local", tmp_path / "store")
    keys = [f"data/b/{index}" for index in range(SYNC_BATCH)]
    before = len(os.listdir("/proc/self/fd"))
    for key in keys:
        store.put_unsynced(key, b"chunk", retain_until=None)
    fsync = os.fsync
    failed: list[int] = []

    def failing_once(fd: int) -> None:
        if not failed:
            failed.append(fd)
            raise OSError(errno.EIO, "write-back error")
        fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_once)
    with pytest.raises(StoreError, match="write-back error"):
        store.sync(keys)
    assert len(os.listdir("/proc/self/fd")) == before


def cached(path: Path) -> bool:
    """Whether any of the file is in the page cache (util-linux's fincore: mincore, which
    reads nothing, unlike a probing read)."""
    resident = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(resident) > 0


@pytest.mark.skipif(shutil.which("fincore") is None, reason="needs util-linux's fincore")
def test_prefetch_reads_an_object_into_the_page_cache(tmp_path: Path) -> None:
    store = local_store("local", tmp_path / "store")
    store.put("data/b/0", os.urandom(1024 * 1024))
    path = tmp_path / "store" / "data" / "b" / "0"
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # clean pages: dropped
    os.close(fd)
    if cached(path):
        pytest.skip("this file system keeps the pages (tmpfs?)")
    (tmp_path / "store" / "data" / "b" / "1").symlink_to(path)
    store.prefetch(["data/b/missing", "data/b/1", "data/b/0"])  # only a hint: never fails
    deadline = time.monotonic() + 5
    while not cached(path):
        assert time.monotonic() < deadline, "the object never reached the page cache"
        time.sleep(0.01)


def test_a_reader_tells_the_store_every_chunk_before_reading_it(
    engine: Engine, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine.create("ahead", [tree], passcode=PASSCODE)
    store = engine.store()
    hinted: set[str] = set()
    unhinted: list[str] = []
    get = store.get

    def recording_get(key: str, *, limit: int | None = None) -> bytes:
        if key.startswith("data/") and key not in hinted:
            unhinted.append(key)
        return get(key, limit=limit)

    monkeypatch.setattr(store, "prefetch", hinted.update)
    monkeypatch.setattr(store, "get", recording_get)
    engine.verify("ahead", passcode=PASSCODE)
    assert len(hinted) > 5
    assert unhinted == []


def test_the_first_chunks_are_hinted_before_the_key_is_derived(
    engine: Engine, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk reads the first chunks while Argon2id runs, not after it."""
    info = engine.create("early", [tree], passcode=PASSCODE)
    store = engine.store()
    events: list[object] = []
    derive = keys.derive_kek

    def recording_derive(*args: object) -> bytes:
        events.append("derive")
        return derive(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "prefetch", lambda hinted: events.append(list(hinted)))
    monkeypatch.setattr(keys, "derive_kek", recording_derive)
    engine.verify("early", passcode=PASSCODE)
    first = min(PREFETCH_AHEAD, info.chunk_count)
    expected = [f"data/early/{info.backup_id}/{index:010d}" for index in range(first)]
    assert events[:2] == [expected, "derive"]
