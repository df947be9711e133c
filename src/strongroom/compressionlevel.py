"""How hard a create compresses: as hard as it can without holding the backup back.

Where the store sets the pace (a remote store, a slow disk), chunks wait to be put and
compressing harder costs nothing: the level stays at its strongest. Where compressing
sets the pace (a fast local disk on a few cores), the archive reader waits for the
compressing threads, and the level steps down until they keep up, as `zstd --adapt`
does; it steps up again only where the level above, as fast as it was, would keep up.
Any level decompresses alike, and the level is not in the format.
"""

from __future__ import annotations

import threading

__all__ = ["LEVELS", "ZSTD_LEVEL", "AdaptiveLevel", "levels_for"]

#: Per core, 4 MiB chunks (compressed MB/s, ratio) on the harness's log text, a tar of its
#: 20,000 small files, and a tar of pyenv's Python 3.11 library and /usr/bin: level 3 269 /
#: 4.41x, 272 / 4.50x, 238 / 4.00x; level 2 447 / 4.48x, 440 / 4.56x, 376 / 3.75x; level 1
#: 411 / 3.91x, 525 / 3.95x, 505 / 3.49x. Level 2 has 1.6x level 3's speed for 0-7% more
#: stored; level 1 stores 7-15% more than level 2 for 0.9-1.3x its speed. Decompression is
#: alike, and the level is not in the format.
#: The strongest of LEVELS; a store set to "zstd-fixed" compresses every chunk at it.
ZSTD_LEVEL = 2
#: zstd levels from the strongest down. Per core, 4 MiB chunks of the harness's log
#: text (MB/s, ratio): level 2 479 / 4.48x, level 1 537 / 3.91x, level -5 726 / 2.35x
#: (level -1 549 / 2.34x and -3 625 / 2.39x are no better than -5 in size, and slower).
LEVELS = (ZSTD_LEVEL, 1, -5)
#: The reader is held back when it waited for a free chunk slot this share of the time
#: since it handed over its previous chunk, or more.
HELD_BACK = 0.1
#: How much each chunk's timings move the running averages.
WEIGHT = 0.3
#: Chunks stored at a level before its timings count, beyond one per compressing thread:
#: each thread's first chunk at a level also makes its compressor and warms its memory
#: (10-100% slower, traced: helper-74, helper-75).
SETTLED_AFTER = 1
#: Chunks in a row that find room for the level above before the level steps up again: a
#: step down is taken at once, a step up once the level above would have kept up a while.
STEP_UP_AFTER = 4
#: How much longer than the current level the level above is taken to compress, at most:
#: its own time, as measured when it was left, may have been taken while something else
#: shared the cores (Argon2id beside a create's first chunks, another job), and would then
#: keep the level down for good (helper-76). One level up took 1.1-1.4x as long on the
#: corpora measured above.
STEP_COST = 2.0


class AdaptiveLevel:
    """The zstd level the next chunk is compressed at, moved one step at a time by what
    the chunks' threads report (how long they compressed, how long they put) and what
    the reader reports (how long it took to fill a chunk, and how much of that it waited
    for a free slot). After a step nothing moves it until `threads` + SETTLED_AFTER
    chunks compressed at the new level have been stored: until then the timings and the
    waits are those of the chunks in flight at the old level, or of each thread's cold
    first chunk at the new one.

    It steps up only when the level above, as timed while it was in use, would keep up:
    when the puts take longer than compressing at it, or when the reader fills chunks
    more slowly than the threads could compress and put them at it. A reader that merely
    did not wait (its disk stalled for a chunk or two) is no reason: stepping up on that
    alone put up to a third of a text backup's chunks at levels 1 and 2 (traced). 1 GiB
    of log text, cold cache, until durable, 16 interleaved runs each, this rule's first
    version (fb19c24) against the old one: 1.99 -> 1.88 s (medians), stored 390-429 MB
    -> 404-430 MB.
    """

    def __init__(self, levels: tuple[int, ...] = LEVELS, *, threads: int = 1) -> None:
        self._levels = levels
        self._threads = max(1, threads)
        self._settled_after = self._threads + SETTLED_AFTER
        self._step = 0
        #: Seconds per chunk at the current level, running averages of the chunks stored
        #: at it (`_stored` of them).
        self._compressing = 0.0
        self._putting = 0.0
        self._stored = 0
        #: Seconds per chunk the puts waited for the disk to make earlier chunks durable:
        #: a batch's wait shared by its chunks (running average, batch by batch).
        self._behind: float | None = None
        #: Seconds per chunk compressing took at each step left, when it was left.
        self._compressing_at: dict[int, float] = {}
        self._kept_up = 0  # chunks in a row that found room for the level above
        self._lock = threading.Lock()

    @property
    def level(self) -> int:
        return self._levels[self._step]

    def chunk_stored(self, level: int, compressing: float, putting: float) -> None:
        """A chunk's thread compressed it at `level` in `compressing` seconds and put it
        in `putting` (its share of waiting for the disk comes by `batch_waited`)."""
        with self._lock:
            if level != self.level:
                return  # compressed before the last step: it says nothing of this level
            if self._stored < self._settled_after:  # the cold first ones: each replaces the last
                self._compressing, self._putting = compressing, putting
            else:
                self._compressing += WEIGHT * (compressing - self._compressing)
                self._putting += WEIGHT * (putting - self._putting)
            self._stored += 1

    def batch_waited(self, seconds: float, chunks: int) -> None:
        """A put waited `seconds` for the disk before it could hand over a batch of
        `chunks` to be made durable: the batch's wait, each chunk's share of it part of
        putting (charged to the one chunk, a single slow sync stepped the level up; left
        out, a disk that sets the pace stepped it down: helper-76, helper-77)."""
        with self._lock:
            share = seconds / max(1, chunks)
            behind = self._behind
            self._behind = share if behind is None else behind + WEIGHT * (share - behind)

    def chunk_handed_over(self, took: float, waited: float) -> None:
        """The reader handed over a chunk `took` seconds after the one before, `waited` of
        them for a free slot: step down if compressing held it back; up once the level
        above found room (`_room_above`) STEP_UP_AFTER chunks in a row."""
        with self._lock:
            if self._stored < self._settled_after:
                return  # too few chunks at this level yet: the wait is the old level's
            if took > 0 and waited >= HELD_BACK * took and self._compressing > self._put():
                self._move(1)
                return
            self._kept_up = self._kept_up + 1 if self._room_above(took - waited) else 0
            if self._kept_up >= STEP_UP_AFTER:
                self._move(-1)

    def _room_above(self, reading: float) -> bool:
        """Whether compressing at the level above (as long as it took there, or STEP_COST
        times the current level's time if less) would still leave the puts, or the reader
        taking `reading` seconds for its last chunk, setting the pace. One chunk's reading,
        not an average: a stall of one chunk must not count for the chunks after it."""
        if self._step == 0:
            return False
        above = min(self._compressing_at[self._step - 1], STEP_COST * self._compressing)
        per_chunk = (above + self._put()) / self._threads  # the threads at the level above
        return self._put() >= above or per_chunk <= reading

    def _put(self) -> float:
        """Seconds per chunk putting takes, its share of the waits for the disk included."""
        return self._putting + (self._behind or 0.0)

    def _move(self, by: int) -> None:
        step = min(max(self._step + by, 0), len(self._levels) - 1)
        if step != self._step:
            self._compressing_at[self._step] = self._compressing
            self._step, self._stored = step, 0
        self._kept_up = 0


def levels_for(compression: str) -> tuple[int, ...]:
    """The levels a store's `compression` setting (`config.COMPRESSIONS`) lets a create
    step between: "zstd" all of them, "zstd-fixed" the strongest alone, "none" none."""
    return {"zstd": LEVELS, "zstd-fixed": LEVELS[:1], "none": ()}[compression]
