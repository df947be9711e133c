"""Reading ahead of the archive writer: tarfile's order, within its window, never through a
link, and out of the way on a warm tree."""

from __future__ import annotations

import errno
import io
import os
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from strongroom import readahead
from strongroom.readahead import ReadAhead
from strongroom.sourcetree import SourceEntry

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


def _walked(sources: list[Path]) -> list[tuple[str, int]]:
    """The regular files the writer archives, in its order, with their sizes."""
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for source in sources:
            tar.add(source)
    archive.seek(0)
    with tarfile.open(fileobj=archive) as tar:
        return [(m.name.rsplit("/", 1)[-1], m.size) for m in tar.getmembers() if m.isreg()]


def _spy(monkeypatch: pytest.MonkeyPatch, cached: bool) -> list[str]:
    advised: list[str] = []

    def advise(entry: SourceEntry, size: int) -> bool:
        advised.append(os.fsdecode(entry.name))
        return cached

    monkeypatch.setattr(readahead, "_advise", advise)
    return advised


def test_it_stays_a_window_ahead_of_the_writer(
    sources: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    walked = _walked(sources)
    blocks = [512 + -(-size // 512) * 512 for _, size in walked]  # header and padded data
    advised = _spy(monkeypatch, cached=False)
    written = 0
    with ReadAhead(sources, lambda: written, window=sum(blocks[:3])):
        threading.Event().wait(0.3)  # time enough to run ahead, were it not held back
        assert advised == [name for name, _ in walked[:3]]
        written = sum(blocks)
        for _ in range(500):
            if len(advised) == len(walked):
                break
            threading.Event().wait(0.01)
    assert advised == [name for name, _ in walked]


def test_on_a_warm_tree_it_stops(sources: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(readahead, "WARM_FILES", 2)
    advised = _spy(monkeypatch, cached=True)
    with ReadAhead(sources, lambda: 10**12):
        threading.Event().wait(0.3)
    assert len(advised) == 2


def test_only_regular_files_are_asked_for_and_it_stops_with_its_context(
    sources: list[Path],
) -> None:
    with ReadAhead(sources, lambda: 0, window=1):
        pass  # ends at once, though the writer never moves
    with _entries(sources[0]) as entries:
        for not_a_file in ("fifo", "link", "gone"):
            assert readahead._advise(entries[not_a_file], 10) is False
        readahead._advise(entries["top"], 10)  # whether cached or not: no error


@pytest.mark.parametrize(
    ("probe", "cached"),
    [
        (BlockingIOError(errno.EAGAIN, "not cached"), False),
        (OSError(errno.EOPNOTSUPP, "cannot say"), False),
        (None, True),
    ],
)
def test_a_file_not_in_the_page_cache_is_asked_for(
    sources: list[Path],
    monkeypatch: pytest.MonkeyPatch,
    probe: OSError | None,
    cached: bool,
) -> None:
    """What RWF_NOWAIT says decides (the kernel's answer is mimicked: a real probe of an
    evicted file starts reading it, so a test could not keep it out of the cache)."""
    asked: list[int] = []
    advise, preadv = os.posix_fadvise, os.preadv

    def recording_advise(fd: int, offset: int, length: int, advice: int) -> None:
        asked.append(advice)
        advise(fd, offset, length, advice)

    def probing(fd: int, buffers: list[bytearray], offset: int, flags: int) -> int:
        if probe is not None:
            raise probe
        return preadv(fd, buffers, offset, flags)

    monkeypatch.setattr(os, "posix_fadvise", recording_advise)
    monkeypatch.setattr(os, "preadv", probing)
    with _entries(sources[0]) as entries:
        assert readahead._advise(entries["top"], 10) is cached
    assert asked == ([] if cached else [os.POSIX_FADV_WILLNEED])


@contextmanager
def _entries(root: Path) -> Iterator[dict[str, SourceEntry]]:
    """Entries of `root` and of `root/a` by name (stat'ed now), and one that is gone."""
    top = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    a = os.open(root / "a", os.O_RDONLY | os.O_DIRECTORY)
    try:
        status = os.stat(root / "top")
        entries = {
            name: SourceEntry(directory, os.fsencode(name), name, status)
            for directory, names in ((top, ("top", "gone")), (a, ("fifo", "link")))
            for name in names
        }
        yield entries
    finally:
        os.close(top)
        os.close(a)
