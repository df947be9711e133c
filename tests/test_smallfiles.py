"""SmallFileWriters: files written by helper processes land exactly, in order, and
every failure (of a write, or of a helper) reaches the caller; no helper outlives it."""

from __future__ import annotations

import errno
import os
import signal
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from strongroom import filewrite, smallfiles
from strongroom.filewrite import FileMeta, Staging
from strongroom.smallfiles import SmallFileWriters


def meta(
    path: Path, data: bytes, mode: int = 0o640, mtime_ns: int = 1_600_000_000_500_000_000
) -> FileMeta:
    return FileMeta(str(path), len(data), mode, mtime_ns, "", os.getuid(), "", os.getgid())


#: The test's tmp_path: the staging directory that `submit` names paths relative to.
ROOT = Path("/")


@pytest.fixture(autouse=True)
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)


@contextmanager
def writers_in(root: Path) -> Iterator[SmallFileWriters]:
    """Writers into `root` as a restore's staging directory; paths are relative to it."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    staging = Staging(fd)
    try:
        with SmallFileWriters(staging) as writers:
            yield writers
    finally:
        staging.close()
        os.close(fd)


def submit(writers: SmallFileWriters, path: Path, data: bytes, **kwargs: int) -> None:
    """Submit `path`, given under the test's tmp_path, by its path relative to that."""
    view = memoryview(data)
    relative = Path(*path.parts[len(ROOT.parts) :]) if path.is_absolute() else path
    writers.submit(meta(relative, data, **kwargs), [view[:7], view[7:]])  # as chunks give


def no_children_left() -> bool:
    """No helper process of this one is left, running or unreaped (other tests may leave
    children of their own, such as multiprocessing's resource tracker)."""
    for status in Path("/proc").glob("[0-9]*/status"):
        with suppress(OSError):
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines())
            cmdline = (status.parent / "cmdline").read_bytes()
            if int(fields["PPid"]) == os.getpid() and (
                b"filewrite.py" in cmdline or fields["State"].startswith("Z")
            ):
                return False
    return True


@pytest.fixture(params=["helpers", "three helpers", "this thread"])
def helpers(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """As many helpers as this machine gets, three (so helpers race on any machine), or
    none."""
    if request.param == "this thread":
        monkeypatch.setattr(smallfiles, "MAX_HELPERS", 0)
        return 0
    if request.param == "three helpers":
        monkeypatch.setattr(smallfiles, "helpers_for", lambda cores: 3)
        return 3
    return smallfiles.helpers_for(smallfiles.usable_cores())


@pytest.mark.parametrize(("cores", "helpers"), [(None, 1), (1, 1), (2, 1), (4, 3), (16, 15)])
def test_one_helper_per_core_but_the_readers(cores: int | None, helpers: int) -> None:
    assert smallfiles.helpers_for(cores) == helpers


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity here")
def test_helpers_follow_the_cores_this_process_may_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A container's CPU set (or taskset) decides, not the machine's core count."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(5)))
    with writers_in(tmp_path) as writers:
        assert writers.helper_count == 4


def test_many_files_land_with_their_bytes_mode_and_mtime(tmp_path: Path, helpers: int) -> None:
    files = {tmp_path / f"d{n % 7}" / f"f{n}": os.urandom(n * 97 % 70_000) for n in range(600)}
    with writers_in(tmp_path) as writers:
        assert writers.helper_count == helpers
        for n, (path, data) in enumerate(files.items()):
            mtime_ns = (1_500_000_000 + n) * 10**9 + 123_456_789
            submit(writers, path, data, mode=0o600 + n % 0o100, mtime_ns=mtime_ns)
        writers.wait_all()
    for n, (path, data) in enumerate(files.items()):
        assert path.read_bytes() == data
        status = path.stat()
        assert stat.S_IMODE(status.st_mode) == 0o600 + n % 0o100
        assert status.st_mtime_ns == (1_500_000_000 + n) * 10**9 + 123_456_789
    assert no_children_left()


def test_a_later_file_of_the_same_name_lands_last(tmp_path: Path, helpers: int) -> None:
    target = tmp_path / "same"
    with writers_in(tmp_path) as writers:
        for n in range(200):
            writers.wait_for("same")
            submit(writers, target, f"version {n}".encode() * 50)
            submit(writers, tmp_path / f"other{n}", b"x" * 30_000)  # keeps batches moving
        writers.wait_all()
    assert target.read_bytes() == b"version 199" * 50


def test_a_write_through_a_link_fails_reaches_nothing_and_stops_the_helpers(
    tmp_path: Path, helpers: int
) -> None:
    """The helpers resolve every path by the staging directory's rules themselves: a
    link on the path (which no checker upstream caught) is never followed."""
    staging, outside = tmp_path / "staging", tmp_path / "outside"
    staging.mkdir()
    outside.mkdir()
    (staging / "a-link").symlink_to(outside)
    with pytest.raises(OSError) as raised, writers_in(staging) as writers:
        for n in range(smallfiles.BATCH_FILES + 1):  # the helpers start, if there are any
            submit(writers, Path(f"fine{n}"), b"fine, these")
        submit(writers, Path("a-link/below"), b"never written outside")
        writers.wait_all()
    assert raised.value.errno == errno.ELOOP
    assert not any(outside.iterdir())
    assert no_children_left()


def test_if_a_helper_dies_this_thread_writes_everything_it_had(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = {tmp_path / f"f{n}": os.urandom(40_000) for n in range(300)}
    with writers_in(tmp_path) as writers:
        for n, (path, data) in enumerate(files.items()):
            submit(writers, path, data)
            if n == 100:
                assert writers.helper_count
                os.kill(writers._helpers[0].process.pid, signal.SIGKILL)
        writers.wait_all()
        assert writers.helper_count == 0
    assert all(path.read_bytes() == data for path, data in files.items())
    assert "ended unexpectedly (exit code -9)" in caplog.text
    assert no_children_left()


def test_ctrl_c_at_a_terminal_leaves_the_helpers_writing_for_the_main_process_to_stop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A terminal sends Ctrl-C's SIGINT to the whole process group: the main process
    decides whether the restore stops (and then kills its helpers), not each helper."""
    files = {tmp_path / f"f{n}": os.urandom(1000) for n in range(200)}
    with writers_in(tmp_path) as writers:
        for n, (path, data) in enumerate(files.items()):
            submit(writers, path, data)
            if n == 100:
                writers.wait_all()  # the helpers are serving by now
                for helper in writers._helpers:
                    os.kill(helper.process.pid, signal.SIGINT)
        writers.wait_all()
        assert writers._helpers
        assert all(helper.process.poll() is None for helper in writers._helpers)
    assert all(path.read_bytes() == data for path, data in files.items())
    assert "ended unexpectedly" not in caplog.text


def test_helpers_get_only_the_loader_and_locale_settings_and_exact_file_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRONGROOM_PASSCODE", "never-in-a-helper")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "a-store-credential")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    name = os.fsdecode(b"caf\xe9-not-utf8")  # a surrogate-escaped name
    with writers_in(tmp_path) as writers:
        for n in range(smallfiles.BATCH_FILES):
            submit(writers, tmp_path / f"before-the-helpers-{n}", b"")
        submit(writers, tmp_path / name, b"bytes")
        writers.wait_all()  # the helper has written, so it runs its own program by now
        # (read sooner, /proc may still show the environment of the process before exec)
        environment = Path(f"/proc/{writers._helpers[0].process.pid}/environ").read_bytes()
    assert b"LC_ALL=C.UTF-8\0" in environment
    names = {entry.partition(b"=")[0] for entry in environment.split(b"\0") if entry}
    assert names <= {b"LD_LIBRARY_PATH", b"LD_PRELOAD", b"LANG", b"LANGUAGE", b"LOCPATH"} | {
        n for n in names if n.startswith(b"LC_")
    }
    assert b"caf\xe9-not-utf8" in os.listdir(os.fsencode(tmp_path))


def test_without_a_python_to_start_files_are_written_on_this_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", "")
    with writers_in(tmp_path) as writers:
        assert writers.helper_count == 0
        submit(writers, tmp_path / "here", b"written right away")
        assert (tmp_path / "here").read_bytes() == b"written right away"


def test_if_the_helpers_cannot_start_files_are_written_on_this_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "gone" / "python"))
    with writers_in(tmp_path) as writers:
        for n in range(smallfiles.BATCH_FILES):
            submit(writers, tmp_path / f"f{n}", b"before the helpers would start")
        submit(writers, tmp_path / "here", b"written right away")
        assert writers.helper_count == 0
        assert (tmp_path / "here").read_bytes() == b"written right away"
    assert no_children_left()


def test_a_file_larger_than_small_file_is_refused(tmp_path: Path, helpers: int) -> None:
    with writers_in(tmp_path) as writers:
        with pytest.raises(ValueError, match="more than SMALL_FILE"):
            submit(writers, tmp_path / "large", bytes(smallfiles.SMALL_FILE + 1))
        submit(writers, tmp_path / "largest", bytes(smallfiles.SMALL_FILE))
        writers.wait_all()
    assert not (tmp_path / "large").exists()
    assert (tmp_path / "largest").stat().st_size == smallfiles.SMALL_FILE


def test_a_restore_of_a_few_files_starts_no_helper(tmp_path: Path) -> None:
    with writers_in(tmp_path) as writers:
        for n in range(smallfiles.BATCH_FILES):
            submit(writers, tmp_path / f"f{n}", b"few")
            assert (tmp_path / f"f{n}").read_bytes() == b"few"  # written at once
        assert not writers._helpers
        submit(writers, tmp_path / "one-more", b"starts them")
        assert writers._helpers
        writers.wait_all()


def test_a_helper_whose_main_process_was_killed_ends_quietly(tmp_path: Path) -> None:
    """It printed a BrokenPipeError traceback to the terminal after a SIGKILL of the
    restore, reporting a batch to nobody."""
    tasks_read, tasks_write = os.pipe()
    acks_read, acks_write = os.pipe()
    os.close(acks_read)  # the main process is gone
    filewrite.write_message(tasks_write, (0, []))
    os.close(tasks_write)
    memory = os.memfd_create("test")
    os.ftruncate(memory, 4096)
    root = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    interrupt = signal.getsignal(signal.SIGINT)  # the helper ignores SIGINT: not pytest
    try:
        filewrite._serve(tasks_read, acks_write, memory, root)
    finally:
        signal.signal(signal.SIGINT, interrupt)
        for fd in (tasks_read, acks_write, memory, root):
            os.close(fd)
