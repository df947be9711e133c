"""Measuring: how fast this machine runs each stage of a backup, and how fast a store
moves objects, so harness runs can compare machines and stores (`strongroom benchmark`,
after `kopia benchmark`).

Every stage runs the engine's own code: Argon2id at the engine's cost, the chunk
cipher, the pipeline's zstd, the archive writer and reader, the store's operations at
its concurrency. Each is timed with `time.perf_counter` for a bounded time or size.
No one's passcode is involved: keys are random and the key derivation stretches a
fixed benchmark passcode. Nothing is written outside a temporary directory, which is
removed, and a fresh prefix of the store, whose objects are deleted whatever happens.
"""

from __future__ import annotations

import io
import math
import os
import platform
import random
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .archive import extract_archive, write_archive
from .compressionlevel import LEVELS, ZSTD_LEVEL
from .crypto import KEY_SIZE, KdfParams, Passcode, StreamCipher, derive_kek, new_salt
from .engine import Engine
from .errors import ConfigError
from .pipeline import TAG_RAW, compressor, decompress_chunk
from .store import PROBE_PREFIX, Store

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = [
    "DEFAULT_SIZE",
    "STAGE_SECONDS",
    "BenchmarkReport",
    "Measurement",
    "measure",
]

#: Bytes the store stages put, get and list, unless told otherwise.
DEFAULT_SIZE = 64 * 1024 * 1024
#: How long each repeated stage runs, unless told otherwise: long enough to be steady,
#: short enough that the whole command takes seconds.
STAGE_SECONDS = 0.5
#: The tree the archive writer and reader time: many small files, as a server has.
ARCHIVE_FILES = 256
ARCHIVE_FILE_SIZE = 32 * 1024
#: Stretched by the key derivation stage; never anyone's passcode.
BENCHMARK_PASSCODE = Passcode("strongroom benchmark, not a passcode")
#: Words of the compressible text: a server's logs repeat a small vocabulary.
WORDS = (
    "GET POST request response user session backup store chunk error warning info "
    "debug started finished took ms bytes from to id status ok failed retry timeout"
)


@dataclass(frozen=True, slots=True)
class Measurement:
    """One stage: how much it processed, and in how long."""

    stage: str
    #: What the stage processed ("random", "text", "files"); None where data plays no part.
    data: str | None
    seconds: float
    #: Bytes processed; 0 where bytes are not the point (a key derivation, a listing).
    size: int
    count: int
    #: What `count` counts: "derivations", "chunks", "files" or "objects".
    unit: str

    @property
    def bytes_per_second(self) -> float | None:
        return self.size / self.seconds if self.size else None

    @property
    def per_second(self) -> float:
        return self.count / self.seconds

    @property
    def seconds_each(self) -> float:
        return self.seconds / self.count

    def to_dict(self) -> dict[str, Any]:
        """Plain units (bytes, seconds) for `--json`."""
        return {
            "stage": self.stage,
            "data": self.data,
            "seconds": self.seconds,
            "bytes": self.size,
            "count": self.count,
            "unit": self.unit,
            "bytesPerSecond": self.bytes_per_second,
            "perSecond": self.per_second,
            "secondsEach": self.seconds_each,
        }


@dataclass(frozen=True, slots=True)
class BenchmarkReport:
    """Every stage's measurement, and what was measured with what, for comparison."""

    store: str
    url: str
    concurrency: int
    size: int
    chunk_size: int
    kdf: KdfParams
    stages: list[Measurement]
    #: The machine measured: CPUs, Python, platform, strongroom's version.
    machine: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "settings": {
                "backupStore": self.store,
                "url": self.url,
                "concurrency": self.concurrency,
                "size": self.size,
                "chunkSize": self.chunk_size,
                "zstdLevel": ZSTD_LEVEL,
                "zstdFastLevel": LEVELS[-1],
                "kdf": {
                    "algorithm": "argon2id",
                    "memoryCostKib": self.kdf.memory_cost_kib,
                    "iterations": self.kdf.iterations,
                    "lanes": self.kdf.lanes,
                },
            },
            "stages": [stage.to_dict() for stage in self.stages],
        }


def measure(
    engine: Engine,
    store: str | None = None,
    *,
    size: int = DEFAULT_SIZE,
    seconds: float = STAGE_SECONDS,
    files: int = ARCHIVE_FILES,
) -> BenchmarkReport:
    """Time the store (default: the default store) first, so one that cannot be written
    fails at once, then this machine's stages at the engine's settings."""
    if not (size > 0 and 0 < seconds < math.inf and files > 0):  # NaN fails too
        raise ConfigError(
            "The benchmark's size, seconds and number of files must be finite and above 0."
        )
    target = engine.recognised_store(store)  # not the disk below an unmounted one
    stages = _store_stages(target, size, engine.chunk_size, seconds)
    stages += _machine_stages(engine.kdf, engine.chunk_size, seconds)
    with tempfile.TemporaryDirectory(prefix="strongroom-benchmark-") as workdir:
        stages += _archive_stages(Path(workdir), files)
    return BenchmarkReport(
        target.name,
        target.url,
        target.concurrency,
        size,
        engine.chunk_size,
        engine.kdf,
        stages,
        _machine(),
    )


def _store_stages(store: Store, size: int, chunk_size: int, seconds: float) -> list[Measurement]:
    """Put, then get, `size` bytes in chunk-sized objects at the store's concurrency, and
    list them for `seconds`, under a fresh prefix whose objects are deleted afterwards,
    also on a failure or Ctrl-C. Nothing outside the prefix is listed or touched."""
    sizes = [min(chunk_size, size - start) for start in range(0, size, chunk_size)]
    prefix = f"{PROBE_PREFIX}benchmark-{uuid.uuid4().hex}/"
    keys = [f"{prefix}{index:010d}" for index in range(len(sizes))]
    payload = memoryview(os.urandom(sizes[0]))  # as incompressible as a sealed chunk
    pool = ThreadPoolExecutor(max(1, store.concurrency), thread_name_prefix="strongroom-bench")
    try:
        put = _transfer(
            pool, [partial(store.put, key, payload[:n]) for key, n in zip(keys, sizes, strict=True)]
        )
        get = _transfer(pool, [partial(_get_size, store, key) for key in keys])
        listings, listed = _repeat(partial(store.list, prefix), seconds)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # no put may land after the delete
        store.delete(keys)
    return [
        Measurement("put", "random", put, size, len(keys), "objects"),
        Measurement("get", "random", get, size, len(keys), "objects"),
        Measurement("list", None, listed, 0, listings * len(keys), "objects"),
    ]


def _machine_stages(kdf: KdfParams, chunk_size: int, seconds: float) -> list[Measurement]:
    """Argon2id, then sealing and opening a chunk, then zstd on text and on random data."""
    random_chunk = os.urandom(chunk_size)
    text = _text(chunk_size)
    cipher = StreamCipher(os.urandom(KEY_SIZE), os.urandom(KEY_SIZE))
    sealed = bytes(cipher.seal(0, False, TAG_RAW, random_chunk))
    salt = new_salt()
    return [
        _timed(
            "argon2id", "derivations", partial(derive_kek, BENCHMARK_PASSCODE, salt, kdf), seconds
        ),
        _timed(
            "seal",
            "chunks",
            partial(cipher.seal, 0, False, TAG_RAW, random_chunk),
            seconds,
            data="random",
            size=chunk_size,
        ),
        _timed(
            "open",
            "chunks",
            partial(cipher.open, 0, False, sealed),
            seconds,
            data="random",
            size=chunk_size,
        ),
        *_zstd(text, "text", seconds),
        _timed(  # the level a create steps down to while compressing holds it back
            "compress fast",
            "chunks",
            partial(compressor(LEVELS[-1]).compress, text),
            seconds,
            data="text",
            size=len(text),
        ),
        *_zstd(random_chunk, "random", seconds),
    ]


def _archive_stages(workdir: Path, files: int) -> list[Measurement]:
    """Archive a tree of `files` small files into memory, then extract it into `workdir`
    as a restore does (helper processes for small files included)."""
    tree = workdir / "tree"
    tree.mkdir()
    content = _text(ARCHIVE_FILE_SIZE)
    for number in range(files):
        (tree / f"{number:06d}.txt").write_bytes(content)
    sink = _MemorySink()
    start = time.perf_counter()
    write_archive(sink, [tree], {})
    written = time.perf_counter() - start
    archive = bytes(sink.data)
    extracted = workdir / "extracted"
    extracted.mkdir()
    directory = os.open(extracted, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        start = time.perf_counter()
        extract_archive(_MemorySource(archive), directory, len(archive))
        read = time.perf_counter() - start
    finally:
        os.close(directory)
    return [
        Measurement("archive write", "files", written, len(archive), files, "files"),
        Measurement("archive read", "files", read, len(archive), files, "files"),
    ]


def _zstd(chunk: bytes, data: str, seconds: float) -> list[Measurement]:
    """Compress and decompress one chunk at the pipeline's level, with its own functions."""
    compressed = compressor().compress(chunk)
    return [
        _timed(
            "compress",
            "chunks",
            partial(compressor().compress, chunk),
            seconds,
            data=data,
            size=len(chunk),
        ),
        _timed(
            "decompress",
            "chunks",
            partial(decompress_chunk, compressed, len(chunk), 0),
            seconds,
            data=data,
            size=len(chunk),
        ),
    ]


def _timed(
    stage: str,
    unit: str,
    step: Callable[[], object],
    seconds: float,
    *,
    data: str | None = None,
    size: int = 0,
) -> Measurement:
    """Repeat `step` (one `unit`, of `size` bytes of `data`) for about `seconds`."""
    runs, elapsed = _repeat(step, seconds)
    return Measurement(stage, data, elapsed, runs * size, runs, unit)


def _repeat(step: Callable[[], object], seconds: float) -> tuple[int, float]:
    """Run `step` until `seconds` have passed, at least once: (runs, seconds taken)."""
    runs = 0
    start = time.perf_counter()
    while True:
        step()
        runs += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return runs, elapsed


def _transfer(pool: ThreadPoolExecutor, calls: list[Callable[[], object]]) -> float:
    """Seconds to run every call on the pool; a failure is raised once the calls before
    it are done (the caller cancels the rest)."""
    start = time.perf_counter()
    for future in [pool.submit(call) for call in calls]:
        future.result()
    return time.perf_counter() - start


def _get_size(store: Store, key: str) -> int:
    """Get an object and keep only its size, so memory stays flat whatever `size` is."""
    return len(store.get(key))


def _text(size: int) -> bytes:
    """`size` bytes of text about as compressible as a server's logs: lines of a few
    words, a time, a request id and numbers (words alone compress far better, and
    faster, than logs do)."""
    pick = random.Random(size)
    words, lines, length = WORDS.split(), [], 0
    while length < size:
        line = (
            f"2026-12-04T{pick.randrange(24):02d}:{pick.randrange(60):02d}:"
            f"{pick.randrange(60):02d}.{pick.randrange(1000):03d}Z {pick.choice(words)} "
            f"{' '.join(pick.choices(words, k=3))} id={pick.getrandbits(32):08x} "
            f"took={pick.randrange(5000)}ms bytes={pick.randrange(10**6)}\n"
        )
        lines.append(line)
        length += len(line)
    return "".join(lines).encode("ascii")[:size]


def installed_version() -> str | None:
    """strongroom's version as installed; None when it runs from a source tree."""
    from importlib import metadata  # here: importing it is 50 ms of every command's cold start

    try:
        return metadata.version("strongroom")
    except metadata.PackageNotFoundError:
        return None


def _machine() -> dict[str, Any]:
    """What a comparison between machines needs to know of this one."""
    version = installed_version()
    return {
        "cpuCount": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "strongroom": version,
    }


class _MemorySink(io.RawIOBase):
    """Where the archive writer writes: memory, so the stage times the writer alone."""

    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: ReadableBuffer) -> int:
        self.data += data
        return memoryview(data).nbytes

    def tell(self) -> int:
        return len(self.data)


class _MemorySource(io.BytesIO):
    """A finished archive, read as restore reads its chunk stream (`read_view`)."""

    def read_view(self, size: int) -> memoryview:
        return memoryview(self.read(size))
