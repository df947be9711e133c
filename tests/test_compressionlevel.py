"""The adaptive zstd level: strongest while the store sets a create's pace, lower while
compressing does, and chunks of every level restore alike."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import zstandard

from strongroom import Engine, StoreSpec, pipeline
from strongroom.backends.file import LocalStore
from strongroom.compressionlevel import (
    HELD_BACK,
    LEVELS,
    SETTLED_AFTER,
    STEP_UP_AFTER,
    ZSTD_LEVEL,
    AdaptiveLevel,
    levels_for,
)
from strongroom.crypto import StreamCipher
from strongroom.pipeline import SAMPLE_SIZE, SAMPLES, ChunkReader, ChunkWriter
from tests.conftest import FAST_KDF, PASSCODE, local_store, snapshot

CHUNK = SAMPLES * SAMPLE_SIZE  # no larger: every chunk is compressed without sampling
TEXT = b"".join(
    b"%08d GET /api/backups/%d 200 %d ms\n" % (n, n % 97, n % 13) for n in range(40_000)
)
KEY = bytes(32)


def compressing_levels(monkeypatch: pytest.MonkeyPatch, *, seconds: float = 0.0) -> list[int]:
    """The level of every chunk the pipeline compresses from now on; each compression takes
    `seconds` longer than it does."""
    levels: list[int] = []
    make = pipeline.compressor

    class Slow:
        def __init__(self, level: int) -> None:
            self.level = level

        def compress(self, data: memoryview) -> bytes:
            levels.append(self.level)
            time.sleep(seconds)
            return make(self.level).compress(data)

    monkeypatch.setattr(pipeline, "compressor", Slow)
    return levels


class SlowStore(LocalStore):
    """A store whose puts take a while, as a remote one's do."""

    def put_unsynced(self, key: str, data: bytes, *, retain_until: datetime | None) -> None:
        time.sleep(0.03)
        super().put_unsynced(key, data, retain_until=retain_until)


def key_of(index: int) -> str:
    return f"data/b/{index}"


def write(store: LocalStore, data: bytes) -> int:
    writer = ChunkWriter(store, key_of, StreamCipher(KEY, b""), chunk_size=CHUNK)
    writer.write(data)
    return writer.finish().chunk_count


def read(store: LocalStore, chunks: int) -> bytes:
    cipher = StreamCipher(KEY, b"")
    with ChunkReader(store, key_of, cipher, chunk_count=chunks, chunk_size=CHUNK) as reader:
        return reader.read()


def settled(level: AdaptiveLevel, compressing: float, putting: float) -> None:
    """Enough chunks stored at the current level for its timings to count (one thread)."""
    for _ in range(1 + SETTLED_AFTER):
        level.chunk_stored(level.level, compressing, putting)


def held_back_by_compressing(level: AdaptiveLevel) -> None:
    """Chunks at the current level compressed slowly (10 ms) and put quickly, and a reader
    that waited for them."""
    settled(level, compressing=0.010, putting=0.001)
    level.chunk_handed_over(took=0.010, waited=HELD_BACK * 0.010)


def stepped_down() -> AdaptiveLevel:
    """One thread: 10 ms a chunk at the strongest level, a step down, and 5 ms a chunk at
    the level below, settled; puts take 1 ms."""
    level = AdaptiveLevel()
    held_back_by_compressing(level)
    settled(level, compressing=0.005, putting=0.001)
    return level


def test_the_level_steps_down_while_compressing_holds_the_reader_back() -> None:
    level = AdaptiveLevel()
    seen = []
    for _ in range(len(LEVELS) + 2):
        held_back_by_compressing(level)
        seen.append(level.level)
    assert seen == [*LEVELS[1:], LEVELS[-1], LEVELS[-1], LEVELS[-1]]


def test_a_step_waits_for_chunks_at_its_level() -> None:
    """The chunks in flight when the level stepped down were compressed at the old level,
    and the first at the new one is cold (its compressor made, its memory new): their
    timings and the reader's waits for them do not step it down again."""
    level = AdaptiveLevel()
    held_back_by_compressing(level)
    assert level.level == LEVELS[1]
    for _ in range(3):
        level.chunk_stored(ZSTD_LEVEL, compressing=0.010, putting=0.001)
        level.chunk_handed_over(took=0.010, waited=0.010)
    assert level.level == LEVELS[1]
    level.chunk_stored(LEVELS[1], compressing=0.050, putting=0.001)  # a cold first one
    level.chunk_handed_over(took=0.010, waited=0.010)
    assert level.level == LEVELS[1]
    held_back_by_compressing(level)
    assert level.level == LEVELS[2]


def test_each_threads_first_chunk_at_a_level_is_set_aside() -> None:
    """Every compressing thread makes its own compressor at a new level: with two, the
    first two chunks at it are cold (helper-75)."""
    level = AdaptiveLevel(threads=2)
    for _ in range(2):
        level.chunk_stored(ZSTD_LEVEL, compressing=0.050, putting=0.001)
        level.chunk_handed_over(took=0.010, waited=0.010)
    assert level.level == ZSTD_LEVEL
    level.chunk_stored(ZSTD_LEVEL, compressing=0.010, putting=0.001)
    level.chunk_handed_over(took=0.010, waited=0.010)
    assert level.level == LEVELS[1]


def test_the_level_steps_up_while_a_slow_reader_leaves_room_for_the_level_above() -> None:
    """A reader slower than the threads were at the level above (a slow disk to back up
    from): compressing harder costs no time."""
    level = stepped_down()
    assert level.level == LEVELS[1]
    for _ in range(STEP_UP_AFTER - 1):
        level.chunk_handed_over(took=0.020, waited=0.0)
    assert level.level == LEVELS[1]
    level.chunk_handed_over(took=0.020, waited=0.0)
    assert level.level == ZSTD_LEVEL
    settled(level, compressing=0.005, putting=0.001)
    for _ in range(2 * STEP_UP_AFTER):
        level.chunk_handed_over(took=0.020, waited=0.0)
    assert level.level == ZSTD_LEVEL


def test_a_reader_that_did_not_wait_is_no_reason_to_step_up() -> None:
    """A disk that stalls for a few chunks lets the threads catch up, so the reader does
    not wait; but as fast as it reads, the level above would hold it back again. Stepping
    up on the missing wait alone put a third of a text backup at levels 1 and 2."""
    level = stepped_down()
    for _ in range(4 * STEP_UP_AFTER):
        level.chunk_handed_over(took=0.004, waited=0.0)
    assert level.level == LEVELS[1]


def test_chunks_in_a_row_must_find_room_above() -> None:
    level = stepped_down()
    for _ in range(3):
        for _ in range(STEP_UP_AFTER - 1):
            level.chunk_handed_over(took=0.020, waited=0.0)
        level.chunk_handed_over(took=0.004, waited=0.0)  # the disk caught up for a chunk
    assert level.level == LEVELS[1]


def test_room_is_judged_at_the_level_above_not_the_current_one() -> None:
    level = stepped_down()  # 10 ms a chunk at the strongest level, 5 ms at the next
    for _ in range(4 * STEP_UP_AFTER):  # 8 ms: room for level 1 (6 ms), not level 2 (11 ms)
        level.chunk_handed_over(took=0.008, waited=0.0)
    assert level.level == LEVELS[1]


def stepped_down_with_two_threads(strongest: float, now: float) -> AdaptiveLevel:
    """Two threads: `strongest` seconds a chunk at the strongest level, a step down, and
    `now` seconds a chunk at the level below, settled; puts take 1 ms."""
    level = AdaptiveLevel(threads=2)
    for _ in range(3):
        level.chunk_stored(level.level, strongest, 0.001)
    level.chunk_handed_over(took=0.010, waited=0.005)
    assert level.level == LEVELS[1]
    for _ in range(3):
        level.chunk_stored(level.level, now, 0.001)
    return level


def test_room_above_counts_every_thread() -> None:
    level = stepped_down_with_two_threads(0.010, 0.005)
    for _ in range(STEP_UP_AFTER):  # two threads at level 2: a chunk per 5.5 ms
        level.chunk_handed_over(took=0.006, waited=0.0)
    assert level.level == ZSTD_LEVEL


def test_the_readers_wait_is_not_its_reading() -> None:
    level = stepped_down()
    for _ in range(4 * STEP_UP_AFTER):  # read 10.5 ms of 11.5: under level 2's 11 ms
        level.chunk_handed_over(took=0.0115, waited=0.001)
    assert level.level == LEVELS[1]


def test_a_level_above_timed_on_busy_cores_does_not_keep_the_level_down() -> None:
    """Level 2 was timed at 20 ms a chunk while Argon2id shared the cores; level 1 now
    takes 6 ms, so level 2 would take about 10: a reader at 8 ms a chunk leaves room for
    two threads at it (helper-76: it stayed at level 1 for good)."""
    level = stepped_down_with_two_threads(0.020, 0.006)
    for _ in range(STEP_UP_AFTER):
        level.chunk_handed_over(took=0.008, waited=0.0)
    assert level.level == ZSTD_LEVEL


def test_a_disk_that_sets_the_pace_keeps_the_strongest_level() -> None:
    """The puts are quick, but every batch waits for the disk to make the earlier ones
    durable: each chunk's share of that wait is putting too (helper-77: left out, the
    level stepped down on a slow disk and stored more on it)."""
    level = AdaptiveLevel()
    settled(level, compressing=0.010, putting=0.001)
    level.batch_waited(0.8, 8)  # 100 ms a chunk
    for _ in range(4 * STEP_UP_AFTER):
        level.chunk_handed_over(took=0.1, waited=0.09)
    assert level.level == ZSTD_LEVEL


def test_a_disk_that_falls_behind_steps_the_level_up_again() -> None:
    level = stepped_down()
    level.batch_waited(0.8, 8)
    for _ in range(STEP_UP_AFTER):
        level.chunk_handed_over(took=0.1, waited=0.09)
    assert level.level == ZSTD_LEVEL


def test_one_slow_sync_is_shared_by_its_batch() -> None:
    """150 ms for a batch of 32 is under 5 ms a chunk: no room for the level above's 10
    (helper-76: charged to one chunk, it stepped the level up)."""
    level = stepped_down()
    level.batch_waited(0.150, 32)
    for _ in range(4 * STEP_UP_AFTER):
        level.chunk_handed_over(took=0.005, waited=0.0)
    assert level.level == LEVELS[1]


def test_the_writer_reports_each_batchs_wait_for_the_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The put that fills a batch waits for a sync slot while earlier batches are made
    durable: that wait goes to the level as the batch's, not as that chunk's put."""
    store = local_store("behind", tmp_path / "store")
    sync = store.sync

    def slow_sync(keys: list[str]) -> None:
        time.sleep(0.3)
        sync(keys)

    monkeypatch.setattr(store, "sync", slow_sync)
    monkeypatch.setattr(pipeline, "SYNC_BATCH", 8)
    monkeypatch.setattr(pipeline, "SYNCS_IN_FLIGHT", 1)
    putting: list[float] = []
    waits: list[tuple[float, int]] = []
    stored = AdaptiveLevel.chunk_stored

    def record(self: AdaptiveLevel, level: int, compressing: float, put: float) -> None:
        putting.append(put)
        stored(self, level, compressing, put)

    monkeypatch.setattr(AdaptiveLevel, "chunk_stored", record)
    monkeypatch.setattr(
        AdaptiveLevel, "batch_waited", lambda _, seconds, chunks: waits.append((seconds, chunks))
    )
    write(store, (TEXT * 2)[: 32 * CHUNK])
    assert len(putting) == 32 and max(putting) < 0.15  # no chunk's put holds a sync's wait
    assert {chunks for _, chunks in waits} == {8} and max(s for s, _ in waits) > 0.15


def test_puts_slower_than_the_level_above_step_it_up() -> None:
    """A store that slowed down after the level stepped down (a remote one's puts taking
    longer): the reader waits for the puts, and compressing harder hands them less."""
    level = AdaptiveLevel()
    held_back_by_compressing(level)
    settled(level, compressing=0.005, putting=0.030)
    for _ in range(STEP_UP_AFTER):
        level.chunk_handed_over(took=0.035, waited=0.030)
    assert level.level == ZSTD_LEVEL


def test_a_reader_held_back_by_the_puts_keeps_the_strongest_level() -> None:
    """Compressing less would only hand the slow store more bytes."""
    level = AdaptiveLevel()
    for _ in range(3 * STEP_UP_AFTER):
        level.chunk_stored(level.level, compressing=0.010, putting=0.050)
        level.chunk_handed_over(took=0.050, waited=0.045)
        assert level.level == ZSTD_LEVEL


def test_a_slow_store_gets_every_chunk_at_the_strongest_level(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SlowStore("slow", (tmp_path / "store").as_uri(), tmp_path / "store")
    store.initialize()
    levels = compressing_levels(monkeypatch)
    write(store, TEXT[: 30 * CHUNK])
    assert set(levels) == {ZSTD_LEVEL}


def test_a_fast_store_gets_faster_levels_while_compressing_is_slow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = local_store("fast", tmp_path / "store")
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # a busy disk must not set the pace
    levels = compressing_levels(monkeypatch, seconds=0.03)
    chunks = write(store, TEXT[: 30 * CHUNK])
    assert levels[0] == ZSTD_LEVEL and LEVELS[-1] in levels
    assert read(store, chunks) == TEXT[: 30 * CHUNK]


def test_chunks_of_every_level_restore_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = local_store("mixed", tmp_path / "store")
    turns: Iterator[int] = itertools.cycle(LEVELS)
    monkeypatch.setattr(AdaptiveLevel, "level", property(lambda _: next(turns)))
    monkeypatch.setattr(AdaptiveLevel, "chunk_handed_over", lambda *_, **__: None)
    levels = compressing_levels(monkeypatch)
    chunks = write(store, TEXT)
    assert set(levels) == set(LEVELS)
    assert read(store, chunks) == TEXT
    sizes = {level: len(zstandard.ZstdCompressor(level=level).compress(TEXT)) for level in LEVELS}
    assert sizes[ZSTD_LEVEL] < sizes[LEVELS[-1]]  # the steps are worth taking


def test_the_store_setting_chooses_the_levels(
    home: Path, tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """zstd steps, zstd-fixed keeps the strongest level however slow compressing is, and
    both are zstd to a reader."""
    assert (levels_for("zstd"), levels_for("zstd-fixed"), levels_for("none")) == (
        LEVELS,
        (ZSTD_LEVEL,),
        (),
    )
    (tree / "log.txt").write_bytes(TEXT * 4)
    engine = Engine(kdf=FAST_KDF, chunk_size=CHUNK)
    engine.add_store(StoreSpec("fixed", (tmp_path / "fixed").as_uri(), compression="zstd-fixed"))
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # a busy disk must not set the pace
    levels = compressing_levels(monkeypatch, seconds=0.03)
    fixed = engine.create("fixed", [tree], passcode=PASSCODE, store="fixed")
    assert set(levels) == {ZSTD_LEVEL} and fixed.compression == "zstd"
    levels.clear()
    engine.create("stepped", [tree], passcode=PASSCODE)
    assert LEVELS[-1] in levels
    target = engine.restore("fixed", tmp_path / "out", passcode=PASSCODE, store="fixed")
    assert snapshot(target / "data") == snapshot(tree)
