"""A restore's target is held by descriptors from its check to its move: whatever is done
to the target's path while the restore runs, nothing is written anywhere else, nothing
that appeared there is overwritten, and a refused move leaves nothing behind."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from strongroom import ConfigError, Engine, RestoreDiskError, libc, restoretarget, writeback
from strongroom.smallfiles import SMALL_FILE
from strongroom.web import create_app
from tests.conftest import PASSCODE, snapshot


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A directory outside the target that a planted link points at."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "kept.txt").write_text("the victim's own")
    return victim


@pytest.fixture(params=["renameat2", "a check before each rename"])
def renames(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test that takes it runs with renameat2's RENAME_NOREPLACE, and again with the
    check that stands in where the C library or file system has none."""
    if request.param != "renameat2":
        monkeypatch.setattr(libc, "_RENAMEAT2", None)


def before_the_move(action: Callable[[], None]) -> Callable[[str], None]:
    """An on_stage hook that runs `action` once the backup is extracted, just before the
    restore moves it into place: the last moment an attacker could act."""

    def on_stage(stage: str) -> None:
        if stage == "moving into place":
            action()

    return on_stage


def staging_left(tmp_path: Path) -> list[str]:
    return [str(p) for p in tmp_path.rglob("*strongroom-*")]


@pytest.fixture
def empty_target(engine: Engine, tree: Path, tmp_path: Path) -> Path:
    """An existing empty directory to restore backup "b" (of `tree`) into."""
    engine.create("b", [tree], passcode=PASSCODE)
    target = tmp_path / "out"
    target.mkdir()
    return target


def test_a_link_planted_at_a_new_targets_path_is_not_followed(
    engine: Engine, tree: Path, tmp_path: Path, victim: Path
) -> None:
    engine.create("b", [tree], passcode=PASSCODE)
    target = tmp_path / "out"
    before = snapshot(victim)

    with pytest.raises(ConfigError, match="appeared at the restore target"):
        engine.restore(
            "b",
            target,
            passcode=PASSCODE,
            on_stage=before_the_move(lambda: target.symlink_to(victim)),
        )
    assert snapshot(victim) == before
    assert target.is_symlink()
    assert staging_left(tmp_path) == []


def test_an_empty_target_swapped_for_a_link_keeps_the_restore_in_the_directory_checked(
    engine: Engine, tree: Path, tmp_path: Path, victim: Path
) -> None:
    engine.create("b", [tree], passcode=PASSCODE)
    target = tmp_path / "out"
    target.mkdir()
    before = snapshot(victim)

    def swap() -> None:
        target.rename(tmp_path / "moved-aside")
        target.symlink_to(victim)

    engine.restore("b", target, passcode=PASSCODE, on_stage=before_the_move(swap))
    assert snapshot(victim) == before
    assert snapshot(tmp_path / "moved-aside" / "data") == snapshot(tree)
    assert staging_left(tmp_path) == []


def test_an_entry_that_appears_in_an_empty_target_is_never_overwritten_and_nothing_moves(
    engine: Engine, tree: Path, tmp_path: Path, renames: None
) -> None:
    engine.create("b", [tree / "secret.key", tree / "nested"], passcode=PASSCODE)
    target = tmp_path / "out"
    target.mkdir()
    intruder = target / "secret.key"  # moved after 'nested', in name order

    with pytest.raises(ConfigError, match="appeared at the restore target"):
        engine.restore(
            "b",
            target,
            passcode=PASSCODE,
            on_stage=before_the_move(lambda: intruder.write_text("mine")),
        )
    assert os.listdir(target) == ["secret.key"]
    assert intruder.read_text() == "mine"


def test_an_empty_directory_that_appears_at_a_new_targets_path_is_not_replaced(
    engine: Engine, tree: Path, tmp_path: Path, renames: None
) -> None:
    """rename(2) would replace it silently, and with it whatever is mounted or linked there."""
    engine.create("b", [tree], passcode=PASSCODE)
    target = tmp_path / "out"
    with pytest.raises(ConfigError, match="appeared at the restore target"):
        engine.restore("b", target, passcode=PASSCODE, on_stage=before_the_move(target.mkdir))
    assert target.is_dir() and os.listdir(target) == []
    assert staging_left(tmp_path) == []


@pytest.mark.parametrize("occupant", ["link", "file"])
def test_a_target_that_changed_after_its_check_is_refused_when_it_is_opened(
    tmp_path: Path, victim: Path, occupant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The path check gives the clear error; the open that pins the target is the guard."""
    target = tmp_path / "out"
    if occupant == "link":
        target.symlink_to(victim)
    else:
        target.write_text("theirs")
    monkeypatch.setattr(restoretarget, "check_restore_target", lambda path: path.absolute())
    before = snapshot(victim)
    with pytest.raises(ConfigError, match="exists and is not a directory"):
        restoretarget.Landing(target)
    assert snapshot(victim) == before
    assert staging_left(tmp_path) == []


def test_a_non_empty_directory_that_appears_at_a_new_targets_path_is_kept(
    engine: Engine, tree: Path, tmp_path: Path
) -> None:
    engine.create("b", [tree], passcode=PASSCODE)
    target = tmp_path / "out"

    def occupy() -> None:
        target.mkdir()
        (target / "theirs.txt").write_text("theirs")

    with pytest.raises(ConfigError, match="appeared at the restore target"):
        engine.restore("b", target, passcode=PASSCODE, on_stage=before_the_move(occupy))
    assert os.listdir(target) == ["theirs.txt"]
    assert staging_left(tmp_path) == []


@pytest.fixture
def mount_point(tmp_path: Path) -> Iterator[Path]:
    """An empty directory with a file system of its own mounted on it (needs root)."""
    point = tmp_path / "mounted"
    point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(point)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield point
    finally:
        subprocess.run(["umount", "--lazy", str(point)], check=True)


@pytest.mark.parametrize("fresh", [[], ["lost+found"]], ids=["empty", "lost+found"])
def test_a_restore_into_an_empty_mount_point_lands_on_its_file_system(
    engine: Engine, tree: Path, tmp_path: Path, mount_point: Path, fresh: list[str]
) -> None:
    """A fresh volume mounted for a disaster recovery (ext4 makes lost+found): staging
    beside it would be on another file system, and the move a copy."""
    for name in fresh:
        (mount_point / name).mkdir()
    engine.create("b", [tree], passcode=PASSCODE)
    engine.restore("b", mount_point, passcode=PASSCODE)
    assert snapshot(mount_point / "data") == snapshot(tree)
    assert sorted(os.listdir(mount_point)) == ["data", *fresh]
    assert staging_left(tmp_path) == []


def test_lost_and_found_outside_a_mount_point_is_data_like_any_other(
    engine: Engine, tree: Path, tmp_path: Path
) -> None:
    engine.create("b", [tree], passcode=PASSCODE)
    (tmp_path / "out" / "lost+found").mkdir(parents=True)
    with pytest.raises(ConfigError, match="is not empty"):
        engine.restore("b", tmp_path / "out", passcode=PASSCODE)


def test_a_restore_into_an_empty_directory_fills_it_and_leaves_no_staging_directory(
    engine: Engine, tree: Path, tmp_path: Path, renames: None
) -> None:
    engine.create("b", [tree], passcode=PASSCODE)
    target = tmp_path / "out"
    target.mkdir(mode=0o750)
    engine.restore("b", target, passcode=PASSCODE)
    assert snapshot(target / "data") == snapshot(tree)
    assert os.listdir(target) == ["data"] and staging_left(tmp_path) == []
    assert target.stat().st_mode & 0o777 == 0o750, "the directory checked is the one filled"


def write_errors(
    calls: list[int], since: Callable[[], bool], error: int = errno.EIO
) -> Callable[[int], int]:
    """syncfs on a file system that reported a write error once `since()` is true: EIO
    through each open descriptor once, as the kernel tells it (`calls`: the descriptors,
    in order). It tells them by number: a `dup` of one would share the kernel's account,
    and is not used."""
    told: set[int] = set()

    def syncfs(fd: int) -> int:
        if fd < 0:  # `syncfs_runs` asks
            ctypes.set_errno(errno.EBADF)
            return -1
        calls.append(fd)
        if not since() or fd in told:
            return 0
        told.add(fd)
        ctypes.set_errno(error)
        return -1

    return syncfs


def small_files_backup(engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Backup "b" of enough small files that a restore flushes as it writes them."""
    source = tmp_path / "source"
    source.mkdir()
    for number in range(4):
        (source / f"{number}.bin").write_bytes(os.urandom(SMALL_FILE // 2))
    engine.create("b", [source], passcode=PASSCODE)
    monkeypatch.setattr(writeback, "FLUSH_STEP", SMALL_FILE)


@pytest.mark.parametrize(
    ("existing", "error"),
    [(False, errno.EIO), (True, errno.EIO), (False, errno.EPERM)],
    ids=["new target", "empty directory", "EPERM from a network file system"],
)
def test_a_write_error_the_file_system_reports_restores_nothing(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existing: bool, error: int
) -> None:
    """A write error during the restore fails it before anything moves: no staging
    directory left, an existing target as empty as it was. It counts even after the
    flushes made while the restore wrote (each through a descriptor of its own: through the
    restore's, the first would have taken the error, and the last would find none). EPERM
    is a write error too where syncfs runs (FUSE and NFS pass on a server's)."""
    small_files_backup(engine, tmp_path, monkeypatch)
    stages: list[str] = []
    calls: list[int] = []
    since_reading = write_errors(calls, lambda: "reading" in stages, error)
    monkeypatch.setattr(writeback, "_SYNCFS", since_reading)
    target = tmp_path / "out"
    if existing:
        target.mkdir()
    with pytest.raises(RestoreDiskError, match=r"reported a write error .*nothing was restored"):
        engine.restore("b", target, passcode=PASSCODE, on_stage=stages.append)
    assert len(set(calls)) > 1, "the restore's flushes ran"
    assert (os.listdir(target) == []) if existing else not target.exists()
    assert staging_left(tmp_path) == []


def test_a_write_error_from_before_the_restore_is_only_a_warning(
    engine: Engine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An error the file system had reported to nobody (another program's) goes to the
    first flush through a new descriptor: the restore takes it as it begins, and warns."""
    small_files_backup(engine, tmp_path, monkeypatch)
    monkeypatch.setattr(writeback, "_SYNCFS", write_errors([], lambda: True))
    with caplog.at_level(logging.WARNING, logger="strongroom"):
        restored = engine.restore("b", tmp_path / "out", passcode=PASSCODE)
    assert sorted(os.listdir(restored / "source")) == [f"{n}.bin" for n in range(4)]
    assert "had reported a write error (Input/output error) before this restore" in caplog.text


@pytest.mark.parametrize(
    "refusal", [None, errno.ENOSYS, errno.EPERM], ids=["no syncfs", "ENOSYS", "EPERM"]
)
def test_without_syncfs_a_restore_syncs_every_file_system(
    engine: Engine,
    tree: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    refusal: int | None,
) -> None:
    """Where the C library has no syncfs, or a sandbox refuses it, `sync` (which tells of
    no error) is all there is."""

    def refused(fd: int) -> int:
        ctypes.set_errno(refusal or 0)
        return -1

    synced: list[bool] = []
    monkeypatch.setattr(writeback, "_SYNCFS", None if refusal is None else refused)
    monkeypatch.setattr(os, "sync", lambda: synced.append(True))
    engine.create("b", [tree], passcode=PASSCODE)
    engine.restore("b", tmp_path / "out", passcode=PASSCODE)
    assert synced == [True, True]  # before the move and after it


@pytest.mark.parametrize("existing", [False, True], ids=["new target", "empty directory"])
def test_the_restored_names_are_on_the_disk_when_a_restore_returns(
    engine: Engine, tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existing: bool
) -> None:
    """The file system is flushed once more after the move into place, so a power cut
    after the restore returned cannot take its names or modes back."""
    engine.create("b", [tree], passcode=PASSCODE)
    target = tmp_path / "restores" / "out"
    target.parent.mkdir()
    holder = target if existing else target.parent  # the directory the restored names are in
    if existing:
        target.mkdir()
    flushed_with: list[list[str]] = []  # what the holder had at each flush
    syncfs = writeback._SYNCFS
    assert syncfs is not None

    def recording_syncfs(fd: int) -> int:
        flushed_with.append(sorted(os.listdir(holder)))
        return int(syncfs(fd))

    monkeypatch.setattr(writeback, "_SYNCFS", recording_syncfs)
    engine.restore("b", target, passcode=PASSCODE)
    assert flushed_with[-1] == (["data"] if existing else ["out"])


@pytest.mark.parametrize("existing", [False, True], ids=["new target", "empty directory"])
def test_a_write_error_after_the_move_keeps_the_restore_and_says_where_it_is(
    engine: Engine, tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existing: bool
) -> None:
    engine.create("b", [tree], passcode=PASSCODE)
    target = tmp_path / "out"
    if existing:
        target.mkdir()
    moved = lambda: (target / "data").exists()  # noqa: E731
    monkeypatch.setattr(writeback, "_SYNCFS", write_errors([], moved))
    with pytest.raises(RestoreDiskError, match=r"making it durable; the restore is at .*out"):
        engine.restore("b", target, passcode=PASSCODE)
    assert snapshot(target / "data") == snapshot(tree)
    assert os.listdir(target) == ["data"] and staging_left(tmp_path) == []


def test_a_restore_interrupted_as_its_rename_returns_stays_in_place(
    engine: Engine, tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C raised just after the rename into place: the restore is whole at the
    target, so the cleanup on the way out must not empty it."""
    engine.create("b", [tree], passcode=PASSCODE)
    rename = restoretarget.rename_noreplace

    def rename_then_interrupt(*args: Any) -> None:
        rename(*args)
        raise KeyboardInterrupt

    monkeypatch.setattr(restoretarget, "rename_noreplace", rename_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        engine.restore("b", tmp_path / "out", passcode=PASSCODE)
    assert snapshot(tmp_path / "out" / "data") == snapshot(tree)


STOPPED_AFTER_EXTRACTING = """
import sys, time
import strongroom.enginerestore
from strongroom.cli import main

extract = strongroom.enginerestore.extract_archive

def extract_then_wait(*args, **kwargs):
    found = extract(*args, **kwargs)
    print("extracted", flush=True)
    time.sleep(60)
    return found

strongroom.enginerestore.extract_archive = extract_then_wait
sys.exit(main(sys.argv[1:]))
"""


@contextmanager
def restore_under_way(target: Path, home: Path) -> Iterator[subprocess.Popen[str]]:
    """`strongroom restore b --target TARGET` in a process of its own, stopped once it has
    extracted the backup into its staging directory (killed at the end if still running)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")}
    env |= {"STRONGROOM_HOME": str(home), "STRONGROOM_DISABLE_PLUGIN_AUTOLOAD": "1"}
    env["STRONGROOM_PASSCODE"] = PASSCODE
    with subprocess.Popen(
        [sys.executable, "-c", STOPPED_AFTER_EXTRACTING, "restore", "b", "--target", str(target)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as restore:
        try:
            assert restore.stdout is not None
            assert restore.stdout.readline() == "extracted\n"
            yield restore
        finally:
            restore.kill()


def test_sigterm_during_a_restore_leaves_nothing_behind(
    engine: Engine, tree: Path, tmp_path: Path, home: Path
) -> None:
    """kill, systemd and docker stop send SIGTERM: the restore unwinds as on Ctrl-C."""
    engine.create("b", [tree], passcode=PASSCODE)
    target = tmp_path / "out"
    with restore_under_way(target, home) as restore:
        assert staging_left(tmp_path) != [], "the restore is under way"
        restore.send_signal(signal.SIGTERM)
        _, err = restore.communicate(timeout=30)
    assert restore.returncode == 130, err
    assert err.endswith(
        "interrupted; a restore lands whole or not at all: the target holds all of it or nothing.\n"
    )
    assert not target.exists() and staging_left(tmp_path) == []


def test_a_killed_restores_staging_directory_is_removed_by_the_next_restore(
    engine: Engine, tree: Path, empty_target: Path, tmp_path: Path, home: Path
) -> None:
    """SIGKILL (the OOM killer, a power cut) leaves a restore no time to remove its staging
    directory, which made every later restore into that empty target (a mount point, say)
    refuse it as not empty. While that restore runs, another into the same target is
    refused; once it is dead, the next one removes what it left."""
    target = empty_target
    with restore_under_way(target, home) as restore:
        [left] = staging_left(tmp_path)
        with pytest.raises(ConfigError, match="Another restore is writing into the restore"):
            engine.restore("b", target, passcode=PASSCODE)
        restore.kill()
        restore.wait(timeout=30)
    assert Path(left).is_dir() and any(Path(left).iterdir()), "what the killed restore left"

    engine.restore("b", target, passcode=PASSCODE)
    assert snapshot(target / "data") == snapshot(tree)
    assert os.listdir(target) == ["data"] and staging_left(tmp_path) == []


def test_a_killed_restore_beside_a_new_target_stops_nothing_and_is_left_alone(
    engine: Engine, tree: Path, tmp_path: Path, home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Beside a new target (in a parent others may share), a killed restore's staging
    directory never stopped a restore, so nothing removes it there; the next restore into
    that target names it (it may hold much of a backup), and nothing else beside it."""
    engine.create("b", [tree], passcode=PASSCODE)
    target = tmp_path / "out"
    with restore_under_way(target, home) as restore:
        [left] = staging_left(tmp_path)
        restore.kill()
        restore.wait(timeout=30)
    other = tmp_path / f".outer.strongroom-restore-{'b' * 16}"  # another target's
    other.mkdir()
    with caplog.at_level(logging.WARNING, logger="strongroom"):
        engine.restore("b", target, passcode=PASSCODE)
    assert snapshot(target / "data") == snapshot(tree)
    assert sorted(staging_left(tmp_path)) == sorted([left, str(other)])
    warned = [r.getMessage() for r in caplog.records]
    assert warned == [
        f"{left}, beside the restore target, is the staging directory of an earlier "
        "restore there that was killed; if no restore is running, remove it."
    ]


def test_the_admin_api_removes_what_killed_restores_left_in_its_restore_directory(
    engine: Engine, tree: Path, home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The admin API restores into a new directory each time, so no later restore named
    what a killed one left beside its target (decrypted files, kept for good). The app
    removes it when it is made again; a staging directory a running restore holds, and
    one not made by a restore, stay."""
    engine.create("b", [tree], passcode=PASSCODE)
    restores = home / "restores" / "backupsDefault"
    with restore_under_way(restores / "b-killed", home) as killed:
        [left] = staging_left(restores)
        killed.kill()
        killed.wait(timeout=30)
    other = restores / f".b-other.strongroom-restore-{'b' * 16}"
    other.mkdir(mode=0o755)  # not as a restore makes its staging directory (0700)
    with restore_under_way(restores / "b-running", home):
        running = next(p for p in staging_left(restores) if p not in (left, str(other)))
        with caplog.at_level(logging.INFO, logger="strongroom"):
            create_app(engine)
        assert sorted(staging_left(restores)) == sorted([running, str(other)])
    assert [r.getMessage() for r in caplog.records if "Removed" in r.getMessage()] == [
        f"Removed {left}, left by a restore that was killed."
    ]


def abandoned_staging(target: Path, name: str = f".strongroom-restore-{'a' * 16}") -> Path:
    """What a restore into `target` that was killed leaves: its staging directory (0700,
    as a restore makes it), part filled, held by nobody."""
    left = target / name
    (left / "data").mkdir(parents=True)
    (left / "data" / "part").write_text("half")
    left.chmod(0o700)
    return left


def refused_and_kept(engine: Engine, target: Path, match: str, *kept: Path) -> None:
    """The restore into `target` is refused (`match`), and every one of `kept` is whole."""
    with pytest.raises(ConfigError, match=match):
        engine.restore("b", target, passcode=PASSCODE)
    for left in kept:
        assert (left / "data" / "part").read_text() == "half", left


def test_an_abandoned_staging_directory_is_removed_only_from_an_otherwise_empty_target(
    engine: Engine, empty_target: Path, tmp_path: Path
) -> None:
    """A target that holds anything else is refused as it was, and nothing in it is
    removed: a copy of a killed restore's directory among someone's files is data."""
    target = empty_target
    left = abandoned_staging(target)
    (target / "mine.txt").write_text("mine")
    refused_and_kept(engine, target, "is not empty", left)

    (target / "mine.txt").unlink()
    engine.restore("b", target, passcode=PASSCODE)
    assert os.listdir(target) == ["data"]


def test_a_restore_killed_while_moving_into_place_is_explained_and_kept(
    engine: Engine, empty_target: Path
) -> None:
    """Into an existing empty target, a restore moves its entries up one by one: a kill
    (a power cut) between two moves leaves some in the target and the rest in its staging
    directory. The next restore refuses, says so and what to do, and removes nothing."""
    target = empty_target
    left = abandoned_staging(target)
    (target / "moved.txt").write_text("moved before the kill")
    message = (
        f"is not empty: it holds '{left.name}', the staging directory of a restore that was "
        r"killed .* killed while it moved its files into place leaves part of them in the "
        r"target and the rest there; .* Nothing was removed\. If no restore is running, "
        r"empty the target"
    )
    refused_and_kept(engine, target, message, left)
    assert (target / "moved.txt").read_text() == "moved before the kill"


def test_only_a_staging_directory_as_this_users_restore_made_it_is_removed(
    engine: Engine, empty_target: Path, tmp_path: Path
) -> None:
    """Anyone who can write to the target can move a directory in under a staging name,
    but only one they can write to: a restore makes its own 0700, so one with any other
    mode is not one; nor is another user's, an older strongroom's (it held no lock: it
    may be running), one a name longer. Each refuses the restore, named, and none of
    those found with it is removed either."""
    target = empty_target
    mine = abandoned_staging(target)
    moved_in = abandoned_staging(target, f".strongroom-restore-{'c' * 16}")
    moved_in.chmod(0o755)
    refused_and_kept(engine, target, f"holds '{moved_in.name}', the staging", mine, moved_in)
    older = moved_in.rename(target / f".strongroom-{'b' * 16}")
    older.chmod(0o700)
    refused_and_kept(engine, target, f"holds '{older.name}', the staging", mine, older)
    longer = older.rename(target / f".strongroom-restore-{'d' * 16}.bak")
    refused_and_kept(engine, target, "is not empty", mine, longer)
    if os.geteuid() == 0:
        theirs = longer.rename(target / f".strongroom-restore-{'e' * 16}")
        os.chown(theirs, 65534, 65534)  # nobody
        refused_and_kept(engine, target, f"holds '{theirs.name}'", mine, theirs)
        shutil.rmtree(theirs)
    else:
        shutil.rmtree(longer)
    engine.restore("b", target, passcode=PASSCODE)
    assert os.listdir(target) == ["data"]


def test_a_staging_directory_that_cannot_be_locked_or_is_swapped_is_kept(
    engine: Engine,
    empty_target: Path,
    tmp_path: Path,
    victim: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where the file system cannot lock (flock(2) on NFS wants a descriptor open for
    writing), nobody can tell a killed restore's directory from a running one's; and one
    swapped for another directory after it was opened is not the one judged."""
    target = empty_target
    left = abandoned_staging(target)
    real_flock = fcntl.flock

    def no_lock_on_the_leftover(fd: int, operation: int) -> None:
        if os.path.samestat(os.fstat(fd), left.stat()):
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        real_flock(fd, operation)

    with monkeypatch.context() as patch:
        patch.setattr(fcntl, "flock", no_lock_on_the_leftover)
        refused_and_kept(engine, target, f"holds '{left.name}'", left)

    victim.chmod(0o700)
    before = snapshot(victim)
    still_named = restoretarget._still_named

    def swapped(fd: int, name: str, directory: int) -> bool:
        left.rename(tmp_path / "judged")
        victim.rename(left)
        return still_named(fd, name, directory)

    with monkeypatch.context() as patch:
        patch.setattr(restoretarget, "_still_named", swapped)
        with pytest.raises(ConfigError, match="the staging"):
            engine.restore("b", target, passcode=PASSCODE)
    assert snapshot(left) == before, "the directory put in its place is untouched"


def test_a_link_named_as_a_staging_directory_is_not_one(
    engine: Engine, empty_target: Path, tmp_path: Path, victim: Path
) -> None:
    """Only a directory is taken for a staging directory, never through a link."""
    target = empty_target
    victim.chmod(0o700)  # as a staging directory is
    (target / f".strongroom-restore-{'a' * 16}").symlink_to(victim)
    before = snapshot(victim)
    with pytest.raises(ConfigError, match="the staging directory of a restore"):
        engine.restore("b", target, passcode=PASSCODE)
    assert snapshot(victim) == before
    assert (target / f".strongroom-restore-{'a' * 16}").is_symlink()


def test_a_target_under_a_file_or_a_dangling_link_says_which_and_why(
    engine: Engine, tree: Path, tmp_path: Path
) -> None:
    """It read "cannot use …: File exists", naming neither the file in the way nor why."""
    engine.create("b", [tree], passcode=PASSCODE)
    (tmp_path / "afile").write_text("a file")
    (tmp_path / "gone").symlink_to(tmp_path / "nothing")
    for target, blocker, why in (
        (tmp_path / "afile" / "sub", "afile", "it is not a directory"),
        (tmp_path / "afile" / "sub" / "deeper", "afile", "it is not a directory"),
        (tmp_path / "gone" / "sub" / "t", "gone", "it is a link to nothing"),
    ):
        with pytest.raises(NotADirectoryError) as refused:
            engine.restore("b", target, passcode=PASSCODE)
        assert (refused.value.filename, refused.value.strerror) == (str(tmp_path / blocker), why)
    assert (tmp_path / "afile").read_text() == "a file"


def test_a_target_where_nothing_can_be_made_is_named_in_the_error(
    engine: Engine, tree: Path
) -> None:
    """Not the staging directory's made-up name, which the user never gave."""
    engine.create("b", [tree], passcode=PASSCODE)
    target = Path("/proc/strongroom-restore-target")  # /proc makes no directories
    with pytest.raises(OSError) as refused:
        engine.restore("b", target, passcode=PASSCODE)
    assert refused.value.filename == str(target)


def test_a_target_that_is_a_link_is_refused_and_says_so(
    engine: Engine, tree: Path, tmp_path: Path, victim: Path
) -> None:
    engine.create("b", [tree], passcode=PASSCODE)
    (tmp_path / "link").symlink_to(victim)
    with pytest.raises(ConfigError, match="is a symbolic link; give the directory it points to"):
        engine.restore("b", tmp_path / "link", passcode=PASSCODE)


RESTORE_WITHOUT_PRIVILEGE = """
import sys
from strongroom import Engine
Engine().restore("b", sys.argv[1], passcode=sys.argv[2])
"""


def test_a_read_only_directory_moves_into_an_existing_target_without_privilege(
    engine: Engine, tmp_path: Path, home: Path
) -> None:
    """Moving a directory to another parent needs its own write permission (its `..`
    changes); root has it anyway, so the restore runs without root's capabilities, as any
    user's would. The directory comes back read-only, as the backup has it."""
    unprivileged = ["setpriv", "--bounding-set", "-all", "--inh-caps", "-all", "--"]
    if shutil.which("setpriv") is None or subprocess.run([*unprivileged, "true"]).returncode:
        pytest.skip("needs setpriv (util-linux), allowed to drop capabilities")
    source = tmp_path / "ro"
    source.mkdir()
    (source / "f").write_text("kept\n")
    source.chmod(0o555)
    engine.create("b", [source], passcode=PASSCODE)
    target = tmp_path / "out"
    target.mkdir()
    restore = subprocess.run(
        [*unprivileged, sys.executable, "-c", RESTORE_WITHOUT_PRIVILEGE, str(target), PASSCODE],
        capture_output=True,
        text=True,
        check=False,
    )
    assert restore.returncode == 0, restore.stderr
    assert (target / "ro" / "f").read_text() == "kept\n"
    assert (target / "ro").stat().st_mode & 0o777 == 0o555
    assert staging_left(tmp_path) == []


def test_a_restore_whose_fresh_staging_directory_another_removed_stops(
    engine: Engine, empty_target: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between making its staging directory and locking it, another restore into the
    same target may take it for abandoned and remove it: this one then stops, saying so,
    instead of extracting into a directory no longer there."""
    target = empty_target
    lock = restoretarget._lock

    def removed_first(staging: int, where: Path) -> bool:
        [name] = os.listdir(target)
        os.rename(target / name, tmp_path / "taken")  # as if removed
        return lock(staging, where)

    monkeypatch.setattr(restoretarget, "_lock", removed_first)
    with pytest.raises(ConfigError, match="started at the same moment; nothing was restored"):
        engine.restore("b", target, passcode=PASSCODE)
    assert os.listdir(target) == []


def test_a_directory_put_at_a_fresh_staging_name_is_neither_used_nor_removed(
    engine: Engine, empty_target: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whoever can write to the target can rename the staging directory away between its
    making and its opening, and one of theirs (or one they can move) to its name: it is
    not the restore's, so nothing is extracted into it and nothing of it removed."""
    theirs = tmp_path / "theirs"
    (theirs / "kept").mkdir(parents=True)
    theirs.chmod(0o700)
    real_mkdir = os.mkdir

    def swapped(path: str, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        real_mkdir(path, mode, dir_fd=dir_fd)
        if str(path).startswith(".strongroom-restore-"):
            os.rename(empty_target / path, tmp_path / "moved-away")
            os.rename(theirs, empty_target / path)

    monkeypatch.setattr(restoretarget.os, "mkdir", swapped)
    with pytest.raises(ConfigError, match="started at the same moment"):
        engine.restore("b", empty_target, passcode=PASSCODE)
    [name] = os.listdir(empty_target)
    assert os.listdir(empty_target / name) == ["kept"]


def test_abandoned_staging_directories_are_left_in_a_target_others_can_write(
    engine: Engine, empty_target: Path
) -> None:
    """There anyone could rename a directory of theirs (or one they can move) to such a
    name: the restore names it instead of removing it."""
    left = abandoned_staging(empty_target)
    empty_target.chmod(0o777)
    refused_and_kept(engine, empty_target, f"holds '{left.name}'.*others can write", left)
    empty_target.chmod(0o755)
    engine.restore("b", empty_target, passcode=PASSCODE)
    assert os.listdir(empty_target) == ["data"]


def test_a_move_undone_takes_back_only_what_it_moved(
    engine: Engine, tree: Path, tmp_path: Path, victim: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whoever can write to the target can put another directory at a moved entry's name
    and make a later move fail: the undoing moves back only the entry it moved, so the
    other is never taken into the staging directory (and removed with it)."""
    other = tmp_path / "source" / "other"
    other.mkdir()
    engine.create("b", [tree, other], passcode=PASSCODE)
    target = tmp_path / "out"
    target.mkdir()
    before = snapshot(victim)
    real_rename = restoretarget.rename_noreplace
    moves: list[str] = []

    def attacked(src_dir: int, src: str, dst_dir: int, dst: str) -> None:
        moves.append(src)
        if len(moves) == 2:  # after "data" moved: swap it, and block "other"
            os.rename(target / "data", tmp_path / "data-moved")
            os.rename(victim, target / "data")
            (target / "other").mkdir()
        real_rename(src_dir, src, dst_dir, dst)

    monkeypatch.setattr(restoretarget, "rename_noreplace", attacked)
    with pytest.raises(ConfigError, match="Something appeared at the restore target"):
        engine.restore("b", target, passcode=PASSCODE)
    assert snapshot(target / "data") == before, "the directory put there stays, whole"
