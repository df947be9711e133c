"""Walking a source: tarfile's order, never through a link, and nothing but a regular file
read, whatever is swapped in while a backup runs."""

from __future__ import annotations

import errno
import io
import os
import stat
import tarfile
from pathlib import Path
from typing import Any

import pytest

from strongroom import Engine, archive, sourcetree
from strongroom.cli import main
from strongroom.sourcetree import (
    SourceChanged,
    SourceEntry,
    SourceUnreadable,
    open_regular,
    read_link,
    walk_source,
)
from tests.conftest import PASSCODE


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """Names whose sorted order differs from creation order, nested directories, a link to
    a directory outside (never walked into), a FIFO and a single file beside."""
    root = tmp_path / "tree"
    for directory in ("b", "a/z", "a/B/deep", "A"):
        (root / directory).mkdir(parents=True)
    for n, name in enumerate(("b/2", "b/10", "a/z/x", "a/B/deep/f", "a/B/g", "A/h", "top", "_")):
        (root / name).write_bytes(b"x" * (1000 * n + 1))
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_bytes(b"not in the source")
    (root / "a" / "link").symlink_to(tmp_path / "outside")
    os.mkfifo(root / "a" / "fifo")
    return root


def _raise(arcname: str, error: OSError) -> None:
    raise error


def test_entries_come_in_the_order_and_with_the_names_tarfile_gives_them(source: Path) -> None:
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        tar.add(source, arcname="tree")
    archive.seek(0)
    with tarfile.open(fileobj=archive) as tar:
        archived = [(m.name, m.size if m.isreg() else 0) for m in tar.getmembers()]
    walked = [
        (entry.arcname, entry.status.st_size if stat.S_ISREG(entry.status.st_mode) else 0)
        for entry in walk_source(source, "tree", _raise)
    ]
    assert walked == archived
    assert "tree/a/link" in dict(walked) and "tree/a/link/secret" not in dict(walked)


def test_a_directory_swapped_for_a_link_after_it_was_listed_is_never_entered(
    source: Path, tmp_path: Path
) -> None:
    errors: list[tuple[str, OSError]] = []
    walked = []
    for entry in walk_source(source, "tree", lambda name, error: errors.append((name, error))):
        walked.append(entry.arcname)
        if entry.arcname == "tree/b":  # listed as a directory; now a link to outside
            os.rename(source / "b", tmp_path / "b-moved")
            (source / "b").symlink_to(tmp_path / "outside")
    assert "tree/b/secret" not in walked and not any(name.startswith("tree/b/") for name in walked)
    assert [(name, type(error)) for name, error in errors] == [("tree/b", SourceChanged)]


def test_an_entry_removed_after_its_directory_was_listed_is_reported_not_fatal(
    source: Path,
) -> None:
    errors: list[str] = []
    walked = []
    for entry in walk_source(source, "tree", lambda name, error: errors.append(name)):
        walked.append(entry.arcname)
        if entry.arcname == "tree/a/B/deep":
            (source / "a" / "B" / "g").unlink()
    assert errors == ["tree/a/B/g"] and "tree/a/B/g" not in walked


def test_a_directory_that_cannot_be_listed_goes_to_on_error(
    source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(fd: int) -> list[str]:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(sourcetree.os, "listdir", refuse)
    with pytest.raises(SourceUnreadable) as caught:
        list(walk_source(source, "tree", _raise))
    assert caught.value.errno == 13 and caught.value.filename == "tree"


def test_create_names_an_unreadable_entry_by_its_path(
    source: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], home: Path
) -> None:
    """The message named only the entry's last part, as bytes ("cannot use b'B'"), and
    told to check the free space."""
    listdir = os.listdir

    def refuse_b(fd: int) -> list[str]:
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")) == "B":
            raise PermissionError(13, "Permission denied")
        return listdir(fd)

    monkeypatch.setattr(sourcetree.os, "listdir", refuse_b)
    monkeypatch.setenv("STRONGROOM_PASSCODE", PASSCODE)
    assert main(["create", "--name", "t", str(source)]) == 12
    assert capsys.readouterr().err == (
        f"strongroom: error: cannot read {source / 'a' / 'B'}: Permission denied; strongroom "
        "reads what it backs up as this user: let it read that, or leave it out of the "
        "sources. Nothing was committed.\n"
    )


def test_create_names_a_file_whose_read_fails(
    source: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], home: Path
) -> None:
    """An I/O error while a file's bytes are read (a dying disk) named no file: "cannot
    use: Input/output error. Check the path, its permissions and the free space."."""

    class FailingFile(io.FileIO):
        def readinto(self, buffer: Any) -> int:
            raise OSError(errno.EIO, "Input/output error")

    def failing_open(fd: int, *args: object, **kwargs: object) -> io.FileIO:
        return FailingFile(fd, "rb")

    monkeypatch.setattr(archive, "open", failing_open, raising=False)
    monkeypatch.setenv("STRONGROOM_PASSCODE", PASSCODE)
    assert main(["create", "--name", "t", str(source / "top")]) == 12
    assert capsys.readouterr().err == (
        f"strongroom: error: cannot read {source / 'top'}: Input/output error; check the "
        "disk it is on, or leave it out of the sources. Nothing was committed.\n"
    )


def test_only_a_failed_read_is_called_an_unreadable_source(source: Path, home: Path) -> None:
    """What fails on the way while a file is archived (here the progress display, as a
    hung-up terminal fails it) is not the file's fault: it stays its own error."""

    def hung_up(done: int, total: int | None) -> None:
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(OSError) as caught:
        Engine().create("t", [source / "top"], passcode=PASSCODE, progress=hung_up)
    assert not isinstance(caught.value, SourceUnreadable)


def _entry(source: Path, name: str) -> tuple[int, SourceEntry]:
    directory = os.open(source, os.O_RDONLY | os.O_DIRECTORY)
    return directory, SourceEntry(
        directory, os.fsencode(name), name, os.stat(source / name, follow_symlinks=False)
    )


@pytest.mark.parametrize("swapped_in", ["link to a secret", "fifo", "directory"])
def test_only_a_regular_file_is_opened_whatever_took_its_place(
    source: Path, tmp_path: Path, swapped_in: str
) -> None:
    """Listed as a regular file, then replaced: a link to a file outside would be read
    through, a FIFO would block the open; neither is opened."""
    directory, entry = _entry(source, "top")
    try:
        (source / "top").unlink()
        if swapped_in == "link to a secret":
            (source / "top").symlink_to(tmp_path / "outside" / "secret")
        elif swapped_in == "fifo":
            os.mkfifo(source / "top")
        else:
            (source / "top").mkdir()
        with pytest.raises(SourceChanged):
            open_regular(entry)
    finally:
        os.close(directory)


def test_another_regular_file_in_its_place_is_read(source: Path, tmp_path: Path) -> None:
    """As an editor saves: a new file renamed over the old one is in the source."""
    directory, entry = _entry(source, "top")
    try:
        (tmp_path / "new").write_bytes(b"saved again")
        os.rename(tmp_path / "new", source / "top")
        fd, status = open_regular(entry)
        with open(fd, "rb") as file:
            assert file.read() == b"saved again" and status.st_size == len(b"saved again")
    finally:
        os.close(directory)


def test_a_link_is_read_only_while_it_is_one(source: Path) -> None:
    directory, entry = _entry(source / "a", "link")
    try:
        assert read_link(entry).endswith("outside")
        (source / "a" / "link").unlink()
        (source / "a" / "link").write_bytes(b"a file now")
        with pytest.raises(SourceChanged):
            read_link(entry)
    finally:
        os.close(directory)


def test_a_source_that_fails_to_read_is_not_blamed_on_permissions() -> None:
    failed = SourceUnreadable(errno.EIO, "Input/output error", "tree/a")
    failed.locate(Path("/srv/tree"))
    assert str(failed) == (
        "cannot read /srv/tree/a: Input/output error; check the disk it is on, or leave it "
        "out of the sources. Nothing was committed."
    )
