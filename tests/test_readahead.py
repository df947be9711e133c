"""Reading ahead of the archive writer: the same order as tarfile, within its window."""

from __future__ import annotations

import io
import os
import tarfile
import threading
from pathlib import Path

import pytest

from strongroom import readahead
from strongroom.readahead import ReadAhead


@pytest.fixture
def sources(tmp_path: Path) -> list[Path]:
    """Names whose sorted order differs from creation order, nested directories, a link
    to a directory (never walked into) and a FIFO (never opened)."""
    root = tmp_path / "tree"
    for directory in ("b", "a/z", "a/B", "a/B/deep", "A"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    for n, name in enumerate(("b/2", "b/10", "a/z/x", "a/B/deep/f", "a/B/g", "A/h", "top", "_")):
        (root / name).write_bytes(b"x" * (100 * n + 1))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "never").write_bytes(b"not in the archive")
    (root / "a" / "link").symlink_to(outside)
    os.mkfifo(root / "a" / "fifo")
    single = tmp_path / "single.bin"
    single.write_bytes(b"y" * 5000)
    return [root, single]


def _walked(sources: list[Path]) -> list[tuple[bytes, int]]:
    return [
        entry
        for source in sources
        for entry in readahead._files_in_archive_order(os.fsencode(source))
    ]


def test_files_come_in_the_order_tarfile_archives_them(sources: list[Path]) -> None:
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for source in sources:
            tar.add(source)
    archive.seek(0)
    with tarfile.open(fileobj=archive) as tar:
        archived = [member.name for member in tar.getmembers() if member.isreg()]
    walked = _walked(sources)
    assert [os.fsdecode(path).lstrip("/") for path, _ in walked] == archived
    assert [size for _, size in walked] == [os.lstat(path).st_size for path, _ in walked]


def test_it_stays_a_window_ahead_of_the_writer(
    sources: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    walked = _walked(sources)
    window = sum(size for _, size in walked[:3])
    advised: list[bytes] = []
    every_file = threading.Event()
    written = 0

    def advise(path: bytes, size: int) -> int:
        advised.append(path)
        if len(advised) == len(walked):
            every_file.set()
        return size

    monkeypatch.setattr(readahead, "_advise", advise)
    with ReadAhead(sources, lambda: written, window=window):
        every_file.wait(0.5)  # time enough to run ahead, were it not held back
        assert advised == [path for path, _ in walked[:3]]
        written = window * len(walked)
        assert every_file.wait(5)
    assert advised == [path for path, _ in walked]


def test_it_asks_the_kernel_only_for_files_and_stops_with_its_context(
    sources: list[Path],
) -> None:
    with ReadAhead(sources, lambda: 0, window=1):
        pass  # ends at once, though the writer never moves
    tree = sources[0]
    assert readahead._advise(os.fsencode(tree / "top"), 10) == 10
    for not_a_file in ("a/fifo", "a/link", "gone"):
        assert readahead._advise(os.fsencode(tree / not_a_file), 10) == 0
