"""Reading ahead of the archive writer: tarfile's order, within its window, never through a
link, out of the way on a warm tree, and in a helper process that gets no passcode and ends
with the backup."""

from __future__ import annotations

import ctypes
import errno
import io
import mmap
import os
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from strongroom import prefetcher
from strongroom.helperprocess import helper_environment
from strongroom.prefetcher import POSITION, Progress, prefetch
from strongroom.readahead import ReadAhead

NAMES = ("b/2", "b/10", "a/z/x", "a/B/deep/f", "a/B/g", "A/h", "top", "_")


@pytest.fixture
def sources(tmp_path: Path) -> list[Path]:
    """Names whose sorted order differs from creation order, nested directories, a link
    to a directory (never walked into) and a FIFO (never read)."""
    root = tmp_path / "tree"
    for directory in ("b", "a/z", "a/B", "a/B/deep", "A"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    for n, name in enumerate(NAMES):
        (root / name).write_bytes(b"x" * (1000 * n + 1))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "never").write_bytes(b"not in the archive")
    (root / "a" / "link").symlink_to(outside)
    os.mkfifo(root / "a" / "fifo")
    single = tmp_path / "single.bin"
    single.write_bytes(b"y" * 5000)
    return [root, single]


def _walked(sources: list[Path]) -> list[tuple[Path, int]]:
    """The regular files the writer archives, in its order, with their sizes."""
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for source in sources:
            tar.add(source, arcname=str(source))
    archive.seek(0)
    with tarfile.open(fileobj=archive) as tar:
        return [(Path("/", m.name), m.size) for m in tar.getmembers() if m.isreg()]


def _advised(monkeypatch: pytest.MonkeyPatch, cached: bool = False) -> list[Path]:
    """The files the kernel is asked to read, in order; each probe of the page cache says
    `cached` (the kernel's answer mimicked: a real probe of an evicted file starts reading
    it, so a test could not keep it out of the cache)."""
    advised: list[Path] = []
    advise = os.posix_fadvise

    def recording(fd: int, offset: int, length: int, advice: int) -> None:
        advised.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        advise(fd, offset, length, advice)

    def probe(fd: int, buffers: list[bytearray], offset: int, flags: int) -> int:
        advised.append(Path(os.readlink(f"/proc/self/fd/{fd}"))) if cached else None
        if not cached:
            raise BlockingIOError(errno.EAGAIN, "not cached")
        return 1

    monkeypatch.setattr(os, "posix_fadvise", recording)
    monkeypatch.setattr(os, "preadv", probe)
    return advised


@contextmanager
def _prefetching(sources: list[Path], window: int) -> Iterator[Callable[[int], None]]:
    """`prefetch` on a thread, following a pipe as the helper does; yields a function that
    sends the writer's position, and waits for the walk when the pipe closes."""
    progress = Progress(window)
    read_end, write_end = os.pipe()
    follower = threading.Thread(target=progress.follow, args=(read_end,))
    walker = threading.Thread(target=prefetch, args=([os.fsencode(s) for s in sources], progress))
    follower.start()
    walker.start()
    try:
        yield lambda position: os.write(write_end, POSITION.pack(position)) and None
    finally:
        os.close(write_end)
        follower.join()
        walker.join()


def _until(condition: Callable[[], bool]) -> None:
    """Wait for `condition`, up to 30 s (a loaded CI machine once took more than 5)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)


def _in_archive(size: int) -> int:
    """What a file takes in the archive: its header and its padded data."""
    return prefetcher.BLOCK + -(-size // prefetcher.BLOCK) * prefetcher.BLOCK


def test_one_at_a_time_it_asks_in_the_writers_order_a_window_ahead(
    sources: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prefetcher, "WORKERS", 1)
    walked = _walked(sources)
    advised = _advised(monkeypatch)
    window = sum(_in_archive(size) for _, size in walked[:3])
    with _prefetching(sources, window=window) as writer_at:
        time.sleep(0.3)  # time enough to run ahead, were it not held back
        assert 0 < len(advised) <= 3  # (the walk counts directories' headers, too)
        assert advised == [path for path, _ in walked[: len(advised)]]
        writer_at(10**12)
        _until(lambda: len(advised) == len(walked))
    assert advised == [path for path, _ in walked]


def test_the_window_counts_a_large_file_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the window's worth of a large file is asked for, but the writer passes all of
    it: once it has, the files after it must still be held to the window. (One worker:
    several reserve their files out of the walk's order, so the count is not exact.)"""
    monkeypatch.setattr(prefetcher, "WORKERS", 1)
    (tmp_path / "tree" / "b").mkdir(parents=True)
    (tmp_path / "tree" / "a.large").write_bytes(b"l" * (1024 * 1024))
    for n in range(20):
        (tmp_path / "tree" / "b" / f"{n:02}").write_bytes(b"s" * 4096)
    advised = _advised(monkeypatch)
    window = 4 * _in_archive(4096)
    with _prefetching([tmp_path / "tree"], window=window) as writer_at:
        writer_at(2 * prefetcher.BLOCK + _in_archive(1024 * 1024))  # past the large file
        time.sleep(0.3)
        assert len(advised) == 1 + 4  # the large file and the window's worth


def test_a_source_that_is_a_link_is_not_walked_into(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer archives such a source as a link; what it points to is not backed up."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "never").write_bytes(b"not in the archive")
    (tmp_path / "source").symlink_to(tmp_path / "outside")
    (tmp_path / "file-link").symlink_to(tmp_path / "outside" / "never")
    advised = _advised(monkeypatch)
    with _prefetching([tmp_path / "source", tmp_path / "file-link"], window=10**12):
        time.sleep(0.2)
    assert advised == []


def test_several_at_once_it_asks_for_every_regular_file_never_through_a_link(
    sources: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    advised = _advised(monkeypatch)
    with _prefetching(sources, window=10**12):
        _until(lambda: len(advised) == len(NAMES) + 1)
    assert sorted(advised) == sorted(path for path, _ in _walked(sources))


def test_on_a_warm_tree_it_stops(sources: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prefetcher, "WORKERS", 1)
    monkeypatch.setattr(prefetcher, "WARM_FILES", 2)
    probed = _advised(monkeypatch, cached=True)
    with _prefetching(sources, window=10**12):
        time.sleep(0.3)
    assert len(probed) == 2


def _evicted(path: Path, size: int) -> Path:
    """A file of `size` bytes on the disk and out of the page cache."""
    with path.open("wb") as file:
        file.write(os.urandom(size))
        file.flush()
        os.fsync(file.fileno())
        os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return path


def _last_page_cached(path: Path) -> bool:
    """Whether the file's last page is in the page cache, asked of `mincore`, which (unlike
    a read, even one with RWF_NOWAIT) starts no reading of its own."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t] + [ctypes.c_int] * 3 + [ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    page = os.sysconf("SC_PAGE_SIZE")
    fd = os.open(path, os.O_RDONLY)
    try:
        last = (path.stat().st_size - 1) // page * page
        address = libc.mmap(None, page, mmap.PROT_READ, mmap.MAP_SHARED, fd, last)
        assert address not in (None, ctypes.c_void_p(-1).value)
        try:
            residency = ctypes.c_ubyte()
            assert libc.mincore(address, page, ctypes.byref(residency)) == 0
            return bool(residency.value & 1)
        finally:
            libc.munmap(address, page)
    finally:
        os.close(fd)


def test_the_helper_reads_the_files_ahead(tmp_path: Path) -> None:
    """Files larger than the kernel's own read-ahead of a first read (the helper's probe of
    the page cache starts one): only asking for the whole file brings its last page in."""
    tree = tmp_path / "cold"
    tree.mkdir()
    files = [_evicted(tree / f"{n}.bin", 4 * 1024 * 1024) for n in range(4)]
    assert not any(_last_page_cached(path) for path in files)
    with ReadAhead([tree], lambda: 10**12) as reading:
        assert reading._helper is not None
        _until(lambda: all(_last_page_cached(path) for path in files))
        assert all(_last_page_cached(path) for path in files)
    assert reading._helper.returncode is not None  # ended and reaped


def test_a_helper_held_back_by_the_window_shows_nothing_and_ends_with_the_context(
    sources: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No passcode, credential or setting but the locale in its environment, and no name
    of what is backed up in its command line (every local user can read it)."""
    monkeypatch.setenv("STRONGROOM_PASSCODE", "never-in-a-helper")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "a-store-credential")
    monkeypatch.setenv("LANG", "C.UTF-8")
    expected = b"".join(os.fsencode(f"{k}={v}\0") for k, v in helper_environment().items())
    started = time.monotonic()
    with ReadAhead(sources, lambda: 0, window=1) as reading:  # the writer never moves
        assert reading._helper is not None
        proc = Path(f"/proc/{reading._helper.pid}")
        _until(lambda: b"prefetcher.py" in (proc / "cmdline").read_bytes())  # its own program
        environment = (proc / "environ").read_bytes()
        command_line = (proc / "cmdline").read_bytes()
    assert environment == expected and b"LANG=C.UTF-8\0" in environment
    assert b"never-in-a-helper" not in environment and b"a-store-credential" not in environment
    assert b"tree" not in command_line and b"single.bin" not in command_line
    assert reading._helper.returncode is not None  # ended and reaped
    assert time.monotonic() - started < 5


def test_a_backup_of_streams_only_starts_no_helper() -> None:
    with ReadAhead([], lambda: 0) as reading:
        assert reading._helper is None


def test_without_a_python_to_start_there_is_no_read_ahead(
    sources: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("strongroom.helperprocess.sys.executable", "")
    with ReadAhead(sources, lambda: 0) as reading:
        assert reading._helper is None
