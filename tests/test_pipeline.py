"""The chunk pipeline: its compression choice, and when chunks are durable."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from strongroom import Engine
from strongroom.crypto import StreamCipher
from strongroom.pipeline import SAMPLE_SIZE, ChunkWriter, _looks_compressible
from tests.conftest import PASSCODE


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
    synced: list[str] = []
    fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    engine.create("durable", [tree], passcode=PASSCODE)
    store = engine.store()
    root = Path(store.root)
    chunks = [str(root / obj.key) for obj in store.list("data/durable/")]
    manifest = next(n for n, path in enumerate(synced) if "/manifests/" in path)
    assert len(chunks) > 5
    for chunk in chunks:
        assert chunk in synced[:manifest], chunk
        assert os.path.dirname(chunk) in synced[:manifest]


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
