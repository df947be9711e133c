"""Chunking, compression, sealing, and bounded parallel transfer of chunk objects.

`ChunkWriter` is a write-only file object: the archive writes a byte stream into it
and it cuts the stream into fixed-size chunks, compresses each (kept only if it
shrinks; at a level that steps down while compressing holds the backup back:
`compressionlevel`), seals it, and puts it into the store from a small thread pool. Chunks need
to be durable only before the manifest commits them, so each is written without
waiting for the disk and made durable (`Store.sync`, a batch at a time) by another
pool meanwhile.
`ChunkReader` is the mirror image: a read-only file object that fetches chunks
ahead in parallel, opens and decompresses them, and serves the stream in order.
Memory is bounded by chunk size x chunks in flight, whatever the backup's size.
"""

from __future__ import annotations

import io
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import zstandard

from .compressionlevel import LEVELS, ZSTD_LEVEL, AdaptiveLevel
from .crypto import StreamCipher
from .errors import IntegrityError, StoreUnavailableError, StrongroomError
from .format import CHUNK_OVERHEAD
from .store import Store

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "ChunkReader",
    "ChunkWriter",
    "SourceEndedEarly",
    "WriteStats",
    "announce_first_chunks",
    "compressor",
    "decompress_chunk",
    "progress_counter",
    "sealed_limit",
]

DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024
#: Chunks made durable together, by one `Store.sync`: the file store then fsyncs their
#: directory once, not once per chunk, and as their writeback began when they were put,
#: the first fsync's journal commit mostly covers the others (docs/benchmarks.md). Each
#: batch still costs a journal commit, slow on some disks: 1 GiB of random data, cold
#: cache, until durable, interleaved, medians of 8 (ext4 mounted with `discard`, on a
#: virtual disk): batches of 8 chunks 2.61 s, of 32 1.60 s, all at the end 2.10 s, the
#: bare loop 1.38 s; log text alike for all three (2.04, 2.01, 2.04 s). A create holds
#: at most (SYNCS_IN_FLIGHT + the store's concurrency) batches unsynced (each put thread
#: may wait with a full one): the file store, a descriptor per chunk, about 128 a create.
SYNC_BATCH = 32
#: Batches being made durable at once before a put waits for the disk.
SYNCS_IN_FLIGHT = 2
#: How many chunks ahead of the reader the store is told they will be read (`prefetch`):
#: the file store's disk reads then run ahead of the fetch threads, at no memory cost.
#: 1 GiB restore, cold, until durable, interleaved: 2.17 -> 2.00 s, 2.25 -> 2.04 s and
#: 2.42 -> 1.96 s (medians of 6, 8, 6); 64 ahead was slower (2.37 s).
PREFETCH_AHEAD = 16
#: A chunk is compressed if any of SAMPLES slices of SAMPLE_SIZE bytes shrinks below
#: COMPRESSIBLE_RATIO of its size.
SAMPLES = 4
SAMPLE_SIZE = 16 * 1024
COMPRESSIBLE_RATIO = 0.9

#: The public tag byte of a sealed chunk: how its plaintext is encoded.
TAG_RAW = 0
TAG_ZSTD = 1

#: Called with (bytes done, bytes expected or None) as a transfer advances.
Progress = Callable[[int, int | None], None]
#: Maps a chunk index to its object key.
ChunkKey = Callable[[int], str]

_compressors = threading.local()


@dataclass(frozen=True, slots=True)
class WriteStats:
    chunk_count: int
    source_size: int
    stored_size: int


class SourceEndedEarly(OSError):
    """A source that ended before the size given for it (a file that shrank as it was read)."""


class ChunkWriter(io.RawIOBase):
    """Bytes in; sealed chunk objects out, at most `in_flight` chunks held at once.
    `levels`: the zstd levels its chunks are compressed at (`compressionlevel`); none,
    and every chunk is stored as it is."""

    def __init__(
        self,
        store: Store,
        key_of: ChunkKey,
        cipher: StreamCipher,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        levels: tuple[int, ...] = LEVELS,
        retain_until: datetime | None = None,
        on_write: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__()
        self._store, self._key_of, self._cipher = store, key_of, cipher
        self._chunk_size, self._on_write = chunk_size, on_write
        self._retain_until = retain_until
        workers = max(1, store.concurrency)
        # none: every chunk stored as it is
        self._level = AdaptiveLevel(levels, threads=workers) if levels else None
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="strongroom-put")
        self._syncer = ThreadPoolExecutor(workers, thread_name_prefix="strongroom-sync")
        self._slots = threading.BoundedSemaphore(workers + 1)
        self._sync_slots = threading.BoundedSemaphore(SYNCS_IN_FLIGHT)
        self._futures: deque[Future[tuple[int, Future[None] | None]]] = deque()
        self._syncs: deque[Future[None]] = deque()
        self._unsynced: list[str] = []  # keys put, waiting for a batch to fill
        self._unsynced_lock = threading.Lock()
        self._buffer = bytearray(chunk_size)
        self._free_buffers: list[bytearray] = []  # appended by the puts' threads
        self._fill = 0
        self._index = 0
        self._handed_over = time.perf_counter()  # when the reader last submitted a chunk
        self._may_land_late = False
        self._source_size = 0
        self._stored_size = 0

    def writable(self) -> bool:
        return True

    @property
    def may_land_late(self) -> bool:
        """Whether a chunk's put failed without saying the chunk was not stored (a time-out,
        a lost connection; not a refusal): on a store whose puts can outlive their request
        (`Store.late_puts`) that chunk may land yet, so its backup's marker stays."""
        return self._may_land_late

    def tell(self) -> int:
        """Bytes written so far (tarfile asks once, at the start)."""
        return self._source_size

    def write(self, data: ReadableBuffer) -> int:
        view = memoryview(data).cast("B")
        size = len(view)
        while view:
            if self._fill == self._chunk_size:
                self._submit(last=False)
            take = min(len(view), self._chunk_size - self._fill)
            self._buffer[self._fill : self._fill + take] = view[:take]
            self._fill += take
            view = view[take:]
        self._source_size += size
        if self._on_write is not None:
            self._on_write(size)
        return size

    def write_from(self, source: io.RawIOBase | io.BufferedIOBase, size: int) -> None:
        """Append `size` bytes of `source` read straight into the chunk buffer (`readinto`:
        the only copy a file's bytes get before compression and sealing).
        SourceEndedEarly if the source ends sooner."""
        left = size
        while left:
            if self._fill == self._chunk_size:
                self._submit(last=False)
            take = min(left, self._chunk_size - self._fill)
            with memoryview(self._buffer) as buffer:
                got = source.readinto(buffer[self._fill : self._fill + take])
            if not got:
                raise SourceEndedEarly("unexpected end of data")
            self._fill += got
            left -= got
            self._source_size += got
            if self._on_write is not None:
                self._on_write(got)

    def finish(self) -> WriteStats:
        """Seal the final chunk, wait until every chunk is stored and durable, and report
        what was stored."""
        self._submit(last=True)
        while self._futures:
            self._account(self._futures.popleft())
        if rest := self._take_unsynced(at_least=1):
            self._syncs.append(self._sync(rest))
        while self._syncs:
            self._syncs.popleft().result()
        self._executor.shutdown()
        self._syncer.shutdown()
        return WriteStats(self._index, self._source_size, self._stored_size)

    def abort(self) -> None:
        """Stop: drop queued chunks, wait for the running puts, then sync what was put (a
        store may hold a descriptor until its object is synced; a failure is left to the
        error that stopped the backup)."""
        self._executor.shutdown(wait=True, cancel_futures=True)
        if rest := self._take_unsynced(at_least=1):
            self._sync(rest)
        self._syncer.shutdown(wait=True)

    def _submit(self, *, last: bool) -> None:
        self._collect_done()
        waiting = time.perf_counter()
        self._slots.acquire()
        now = time.perf_counter()
        if self._level is not None:
            self._level.chunk_handed_over(took=now - self._handed_over, waited=now - waiting)
        self._handed_over = now
        buffer, length = self._buffer, self._fill
        future = self._executor.submit(self._put_chunk, self._index, last, buffer, length)
        future.add_done_callback(lambda _: self._slots.release())
        self._futures.append(future)
        self._index += 1
        self._buffer = self._free_buffer() if not last else bytearray()
        self._fill = 0

    def _free_buffer(self) -> bytearray:
        """A chunk buffer that a put has sealed already, or a new one (the first few):
        allocating and zeroing a buffer for every chunk cost 12% of the archive thread."""
        try:
            return self._free_buffers.pop()
        except IndexError:
            return bytearray(self._chunk_size)

    def _collect_done(self) -> None:
        """Account for finished puts and syncs, raising the first failure without waiting."""
        while self._futures and self._futures[0].done():
            self._account(self._futures.popleft())
        while self._syncs and self._syncs[0].done():
            self._syncs.popleft().result()
        _raise_failure(self._futures)
        _raise_failure(self._syncs)

    def _account(self, put: Future[tuple[int, Future[None] | None]]) -> None:
        stored, sync = put.result()
        self._stored_size += stored
        if sync is not None:
            self._syncs.append(sync)

    def _take_unsynced(self, *, at_least: int) -> list[str]:
        """The keys waiting for a sync if there are `at_least` of them, else none."""
        with self._unsynced_lock:
            if len(self._unsynced) < at_least:
                return []
            keys, self._unsynced = self._unsynced, []
            return keys

    def _sync(self, keys: list[str]) -> Future[None]:
        self._sync_slots.acquire()  # a put waits while the disk is that far behind
        try:
            sync = self._syncer.submit(self._store.sync, keys)
        except BaseException:
            self._sync_slots.release()
            raise
        sync.add_done_callback(lambda _: self._sync_slots.release())
        return sync

    def _put_chunk(
        self, index: int, last: bool, buffer: bytearray, length: int
    ) -> tuple[int, Future[None] | None]:
        """Seal and put one chunk; its size as stored, and the sync of its batch if it
        filled one."""
        started = time.perf_counter()
        plaintext = memoryview(buffer)[:length]
        tag, payload = TAG_RAW, plaintext
        level = None if self._level is None else self._level.level
        if level is not None and _looks_compressible(plaintext):
            compressed = compressor(level).compress(plaintext)
            if len(compressed) < length:
                tag, payload = TAG_ZSTD, memoryview(compressed)
        sealed = self._cipher.seal(index, last, tag, payload)
        sealed_at = time.perf_counter()
        del plaintext, payload  # nothing reads the buffer once sealed: it takes a later chunk
        if not last:
            self._free_buffers.append(buffer)
        key = self._key_of(index)
        try:
            self._store.put_unsynced(key, sealed, retain_until=self._retain_until)
        except BaseException as exc:
            if not isinstance(exc, StrongroomError) or isinstance(exc, StoreUnavailableError):
                self._may_land_late = True  # a time-out, a lost connection: not a refusal
            raise
        with self._unsynced_lock:
            self._unsynced.append(key)
        put_at = time.perf_counter()
        batch = self._take_unsynced(at_least=SYNC_BATCH)
        sync = self._sync(batch) if batch else None  # waits while the disk is far behind
        if self._level is not None and level is not None:
            self._level.chunk_stored(level, sealed_at - started, put_at - sealed_at)
            if batch:
                self._level.batch_waited(time.perf_counter() - put_at, len(batch))
        return len(sealed), sync


class ChunkReader(io.RawIOBase):
    """A read-only stream over a backup's chunks, fetched and opened ahead in parallel.

    Every chunk is authenticated before any of its bytes are served, and reading to
    the end proves that the stream ended where its writer ended it.
    """

    def __init__(
        self,
        store: Store,
        key_of: ChunkKey,
        cipher: StreamCipher,
        *,
        chunk_count: int,
        chunk_size: int,
        on_read: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__()
        self._store, self._key_of, self._cipher = store, key_of, cipher
        self._chunk_count, self._chunk_size, self._on_read = chunk_count, chunk_size, on_read
        workers = max(1, store.concurrency)
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="strongroom-get")
        self._window = workers + 1
        self._pending: deque[Future[bytes | bytearray]] = deque()
        self._next_fetch = 0
        self._next_prefetch = 0
        self._current: memoryview = memoryview(b"")
        self._position = 0
        self._at_end = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Skip forward (reading and authenticating what is skipped); never backward."""
        target = offset if whence == io.SEEK_SET else self._position + offset
        if whence not in (io.SEEK_SET, io.SEEK_CUR) or target < self._position:
            raise io.UnsupportedOperation("A backup stream is read forward only.")
        while self._position < target and self.read_view(target - self._position):
            pass
        return self._position

    def readinto(self, target: WriteableBuffer) -> int:
        out = memoryview(target).cast("B")
        done = 0
        while done < len(out) and (piece := self.read_view(len(out) - done)):
            out[done : done + len(piece)] = piece
            done += len(piece)
        return done

    def read(self, size: int = -1) -> bytes:
        """Exactly `size` bytes unless the stream ends first (the tar reader relies on that)."""
        if size < 0:
            return self.readall()
        if size <= len(self._current) and self._on_read is None:  # the common case, inlined
            piece, self._current = self._current[:size], self._current[size:]
            self._position += size
            return bytes(piece)
        first = self.read_view(size)
        if len(first) == size or not first:
            return bytes(first)
        pieces = [bytes(first)]
        missing = size - len(first)
        while missing and (piece := self.read_view(missing)):
            pieces.append(bytes(piece))
            missing -= len(piece)
        return b"".join(pieces)

    def drain(self) -> None:
        """Read and authenticate everything left, so a cut or altered tail is detected;
        progress counts it too, so a finished read reports its whole total."""
        while True:
            if self._on_read is not None and self._current:
                self._on_read(len(self._current))
            self._current = memoryview(b"")
            if self._at_end:
                return
            self._advance()

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        super().close()

    def read_view(self, size: int) -> memoryview:
        """Up to `size` bytes of the current chunk, without a copy; empty at the end.

        The view stays valid after later reads (each chunk is its own buffer), so it can
        be written straight to a file.
        """
        while not self._current and not self._at_end:
            self._advance()
        piece = self._current[:size]
        self._current = self._current[len(piece) :]
        self._position += len(piece)
        if self._on_read is not None and piece:
            self._on_read(len(piece))
        return piece

    def _advance(self) -> None:
        ahead = min(self._chunk_count, self._next_fetch + self._window + PREFETCH_AHEAD)
        if self._next_prefetch < ahead:  # told before any of them is fetched
            self._store.prefetch([self._key_of(i) for i in range(self._next_prefetch, ahead)])
            self._next_prefetch = ahead
        while self._next_fetch < self._chunk_count and len(self._pending) < self._window:
            self._pending.append(self._executor.submit(self._open_chunk, self._next_fetch))
            self._next_fetch += 1
        if not self._pending:
            self._at_end = True
            return
        self._current = memoryview(self._pending.popleft().result())

    def _open_chunk(self, index: int) -> bytes | bytearray:
        try:
            sealed = self._store.get(self._key_of(index), limit=sealed_limit(self._chunk_size))
        except FileNotFoundError:
            raise IntegrityError(f"Chunk {index} is missing from the store.") from None
        tag, plaintext = self._cipher.open(index, index == self._chunk_count - 1, sealed)
        if tag == TAG_RAW:
            return plaintext
        if tag == TAG_ZSTD:
            return decompress_chunk(plaintext, self._chunk_size, index)
        raise IntegrityError(f"Chunk {index} has an unknown encoding {tag}.")


def announce_first_chunks(store: Store, key_of: ChunkKey, chunk_count: int) -> None:
    """Tell `store` which chunks a reader fetches first, so that the disk reads them while
    the passcode's key is derived: a hint, for at most PREFETCH_AHEAD chunks whatever an
    unauthenticated manifest claims. 1 GiB restore, cold, until durable, 9 interleaved
    runs: 1.71 -> 1.57 s."""
    store.prefetch([key_of(i) for i in range(min(PREFETCH_AHEAD, chunk_count))])


def _raise_failure(futures: Iterable[Future[Any]]) -> None:
    """Raise the failure of the first of `futures` that failed (none may have)."""
    for future in futures:
        if future.done() and future.exception() is not None:
            future.result()


def _looks_compressible(data: memoryview) -> bool:
    """Whether a chunk is worth compressing, judged from a few samples spread across it.

    Compressing a chunk of encrypted or already compressed data costs as much as a
    useful compression and saves nothing; the samples cost about 2% of that.
    """
    if len(data) <= SAMPLES * SAMPLE_SIZE:
        return True
    step = (len(data) - SAMPLE_SIZE) // (SAMPLES - 1)
    for start in range(0, len(data) - SAMPLE_SIZE + 1, step):
        sample = data[start : start + SAMPLE_SIZE]
        if len(compressor().compress(sample)) < COMPRESSIBLE_RATIO * SAMPLE_SIZE:
            return True
    return False


def sealed_limit(chunk_size: int) -> int:
    """The largest sealed chunk a writer can make of `chunk_size` bytes: zstd's worst case
    (ZSTD_COMPRESSBOUND: a frame of incompressible data grows a little; this writer stores
    such a chunk raw, another may not), plus the seal."""
    small = 128 * 1024
    margin = (small - chunk_size) >> 11 if chunk_size < small else 0
    return chunk_size + (chunk_size >> 8) + margin + CHUNK_OVERHEAD


def compressor(level: int = ZSTD_LEVEL) -> zstandard.ZstdCompressor:
    """This thread's compressor at `level` (zstandard's compressors are not thread-safe);
    the chunk writer's, and the benchmark's."""
    made: dict[int, zstandard.ZstdCompressor] | None = getattr(_compressors, "by_level", None)
    if made is None:
        made = _compressors.by_level = {}
    zstd = made.get(level)
    if zstd is None:
        zstd = made[level] = zstandard.ZstdCompressor(level=level)
    return zstd


def decompress_chunk(data: bytes | bytearray, chunk_size: int, index: int) -> bytes:
    """The chunk in a zstd frame, never more than `chunk_size` bytes of it.

    zstandard allocates whatever size a frame's header declares (`max_output_size` caps
    only frames that declare none), so the declared size is checked first. zstd itself
    refuses a frame whose content differs from its declared size, or overflows the cap.
    """
    try:
        declared = zstandard.frame_content_size(data)
        if declared > chunk_size:
            raise IntegrityError(
                f"Chunk {index} declares {declared} bytes, more than the backup's chunk size."
            )
        plaintext: bytes = zstandard.ZstdDecompressor().decompress(
            data, max_output_size=chunk_size, allow_extra_data=False
        )
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"Chunk {index} does not decompress: {exc}") from None
    return plaintext


def progress_counter(progress: Progress | None, total: int | None) -> Callable[[int], None] | None:
    """Adapt a (done, total) progress callback to a stream of byte counts. A create's total
    is an estimate, so done stops at it: a bar's total never moves, done never passes it."""
    if progress is None:
        return None
    done = 0

    def advance(size: int) -> None:
        nonlocal done
        done += size
        progress(done if total is None else min(done, total), total)

    return advance
