"""What interrupted creates and deletes leave behind is swept once past the grace period,
judged by the store's own timestamps; a create still running is never touched."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import strongroom.cleanup
import strongroom.enginecreate
from strongroom import (
    CommitUncertainError,
    ConfigError,
    Engine,
    IntegrityError,
    NewerFormatError,
    Store,
    StoreError,
    StoreUnavailableError,
)
from strongroom.cleanup import Cleanup
from strongroom.cli import main
from strongroom.format import (
    PENDING_PREFIX,
    data_prefix,
    parse_pending_key,
    pending_key,
    taken_key,
    to_epoch_ms,
)
from strongroom.pipeline import ChunkWriter
from tests.conftest import FAST_KDF, PASSCODE, SMALL_CHUNK

GRACE = timedelta(hours=24)


@pytest.fixture
def engine(home: Path) -> Engine:
    return Engine(kdf=FAST_KDF, chunk_size=SMALL_CHUNK, leftover_grace=GRACE)


def store_dir(home: Path) -> Path:
    return home / "stores" / "backupsDefault"


def age(path: Path, by: timedelta) -> None:
    """Make a stored object look older to the store (its timestamp is the file's mtime)."""
    when = time.time() - by.total_seconds()
    os.utime(path, (when, when))


def markers(home: Path, suffix: str = "") -> list[Path]:
    """The pending markers (`suffix` ".taken": the keys a sweep keeps of creates it took)."""
    root = store_dir(home) / PENDING_PREFIX
    found = sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []
    return [p for p in found if p.name.endswith(".taken") == bool(suffix)]


def crash_before_commit(engine: Engine, tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A create whose process dies after its data and before its manifest."""
    original_finish = ChunkWriter.finish

    def finish_then_die(self: ChunkWriter) -> None:
        original_finish(self)
        raise SystemExit("killed")

    with monkeypatch.context() as patch:
        patch.setattr(ChunkWriter, "finish", finish_then_die)
        patch.setattr("strongroom.enginecreate._remove_quietly", lambda *args: None)  # no cleanup
        with pytest.raises(SystemExit):
            engine.create("crashed", [tree], passcode=PASSCODE)


def test_a_create_and_a_delete_leave_nothing_behind_not_even_directories(
    engine: Engine, home: Path, tree: Path
) -> None:
    engine.create("fine", [tree], passcode=PASSCODE)
    assert markers(home) == []
    engine.delete("fine")
    assert list(store_dir(home).iterdir()) == []


def test_leftovers_are_kept_within_grace_and_swept_after(
    engine: Engine, home: Path, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    crash_before_commit(engine, tree, monkeypatch)
    [marker] = markers(home)
    data = store_dir(home) / "data" / "crashed"
    assert any(data.rglob("0*")), "the crash left chunks"

    young = engine.cleanup()
    assert young.entries == [] and young.waiting == 1, "seen, and said to be waiting"
    assert markers(home) == [marker] and any(data.rglob("0*")), "younger than the grace period"

    age(marker, GRACE + timedelta(minutes=1))
    dry = engine.cleanup(dry_run=True)
    assert [(e.name, e.action) for e in dry.entries] == [("crashed", "would sweep")]
    assert markers(home) == [marker]

    report = engine.cleanup()
    assert [(e.name, e.action) for e in report.entries] == [("crashed", "swept")]
    assert markers(home) == [] and not any(data.rglob("0*"))
    assert engine.cleanup().entries == [], "a second run finds nothing"


def test_a_sweep_removes_the_temporary_file_of_a_put_the_create_was_killed_in(
    engine: Engine, home: Path, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A create killed while it wrote a chunk leaves that put's temporary file (up to a
    chunk's size), which no listing shows: the sweep of its data removes it too, and the
    directories it kept."""
    crash_before_commit(engine, tree, monkeypatch)
    [chunks] = (store_dir(home) / "data" / "crashed").iterdir()
    (chunks / f".0000000099.{'ab' * 8}.tmp").write_bytes(b"half a chunk")
    (chunks / ".nfs0000000000bd1e00000001").write_bytes(b"not a put's: left alone")
    for marker in markers(home):
        age(marker, GRACE + timedelta(minutes=1))
    report = engine.cleanup()
    assert [(e.name, e.action) for e in report.entries] == [("crashed", "swept")]
    assert [path.name for path in (store_dir(home) / "data").rglob("*") if path.is_file()] == [
        ".nfs0000000000bd1e00000001"
    ]


def test_a_chunk_that_lands_after_its_create_failed_is_swept(
    engine: Engine, home: Path, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A remote store's upload can outlive its request's time-out: the create fails and
    removes what it sees, and the chunk lands after. The create's marker stays so that
    the sweep finds it; without the marker nothing would ever name that chunk."""
    store = engine.store()
    real_put = store.put_unsynced

    def timed_out(key: str, data: bytes | bytearray | memoryview, **options: Any) -> None:
        raise StoreUnavailableError("Read timeout on endpoint URL")

    monkeypatch.setattr(store, "put_unsynced", timed_out)
    with pytest.raises(StoreUnavailableError):
        engine.create("local", [tree], passcode=PASSCODE)
    assert markers(home) == [], "a local put that failed is over: nothing to sweep later"
    monkeypatch.setattr(store, "late_puts", True)  # as a remote store's
    with pytest.raises(StoreUnavailableError):
        engine.create("late", [tree], passcode=PASSCODE)
    [marker] = markers(home)
    backup_id = marker.name
    late = f"data/late/{backup_id}/0000000002"
    real_put(late, b"landed late", retain_until=None)  # after the create gave up
    store.sync([late])
    age(marker, GRACE + timedelta(minutes=1))
    report = engine.cleanup()
    assert [(e.name, e.action) for e in report.entries] == [("late", "swept")]
    assert markers(home) == [] and not (store_dir(home) / "data").exists()


def test_the_heartbeat_never_puts_back_the_marker_a_failed_create_removed(
    home: Path, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow delete of the marker (a remote store's) let the heartbeat refresh it after
    it was removed: a failed create left a marker, and a cleanup a day later reported a
    sweep of nothing."""
    engine = Engine(kdf=FAST_KDF, leftover_grace=timedelta(seconds=0.2))  # beats every 0.05 s
    store = engine.store()
    real_delete = store.delete

    def slow_delete(keys: list[str]) -> None:
        real_delete(keys)
        time.sleep(0.2)  # the answer comes late

    def broken_source(*args: object, **kwargs: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(store, "delete", slow_delete)
    monkeypatch.setattr("strongroom.enginecreate.write_archive", broken_source)
    with pytest.raises(OSError, match="disk on fire"):
        engine.create("nightly", [tree], passcode=PASSCODE)
    time.sleep(0.1)
    assert markers(home) == []


def test_the_command_says_what_waits_for_the_grace_period(
    engine: Engine,
    home: Path,
    tree: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """After a create or delete was cut off, a cleanup said only "nothing expired", as if it
    had not seen what they left."""
    crash_before_commit(engine, tree, monkeypatch)
    assert main(["cleanup"]) == 0
    assert capsys.readouterr().out.endswith(
        " 0 kept; 1 unfinished create(s) or delete(s) (under way, or cut off within the grace "
        "period: a later cleanup sweeps what they left).\n"
    )


def test_a_committed_backup_with_a_stale_marker_is_kept(
    engine: Engine, home: Path, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process died after the manifest, before removing its marker."""
    with monkeypatch.context() as patch:
        real = strongroom.enginecreate._remove_quietly

        def keep_marker_on_success(store: object, name: str, *keys: str) -> None:
            if any(k.endswith("/") for k in keys):
                real(store, name, *keys)

        patch.setattr("strongroom.enginecreate._remove_quietly", keep_marker_on_success)
        engine.create("kept", [tree], passcode=PASSCODE)
    [marker] = markers(home)
    age(marker, GRACE * 2)
    report = engine.cleanup()
    assert report.entries == []
    assert markers(home) == []
    engine.verify("kept", passcode=PASSCODE)


def index_entries(home: Path) -> list[Path]:
    root = store_dir(home) / "retention"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def killed_at(store: Store, prefix: str) -> Callable[[list[str]], None]:
    """A store's delete that dies, as a killed process would, at the first key under `prefix`."""
    real_delete = store.delete

    def delete(keys: list[str]) -> None:
        for key in keys:
            if key.startswith(prefix):
                raise SystemExit("killed during delete")
            real_delete([key])

    return delete


def interrupted_delete(
    engine: Engine, name: str, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Create a backup, then delete it in a process killed once its manifest is gone."""
    engine.create(name, [tree], passcode=PASSCODE)
    store = engine.store()
    with monkeypatch.context() as patch:
        patch.setattr(store, "delete", killed_at(store, f"data/{name}/"))
        with pytest.raises(SystemExit):
            engine.delete(name)


def test_an_interrupted_delete_is_finished_once_its_index_entry_is_past_grace(
    engine: Engine, home: Path, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    interrupted_delete(engine, "doomed", tree, monkeypatch)
    assert engine.list() == [], "the manifest went first"
    young = engine.cleanup()
    assert young.entries == [] and young.waiting == 1, (
        "an index entry within grace may be a create's"
    )
    [entry] = index_entries(home)
    age(entry, GRACE * 2)
    swept = engine.cleanup()
    assert [(e.name, e.action) for e in swept.entries] == [("doomed", "swept")]
    assert swept.waiting == 0
    assert not (store_dir(home) / "data" / "doomed").exists()
    assert index_entries(home) == []


def test_a_delete_whose_data_fails_to_go_says_the_backup_is_deleted(
    engine: Engine, home: Path, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The manifest went, the data did not (a connection cut): the error said only that a
    data delete failed, and a retry then said there is no such backup."""
    engine.create("doomed", [tree], passcode=PASSCODE)
    store = engine.store()
    real_delete = store.delete

    def cut(keys: list[str]) -> None:
        if any(key.startswith("data/") for key in keys):
            raise StoreUnavailableError("Connection was closed")
        real_delete(keys)

    monkeypatch.setattr(store, "delete", cut)
    with pytest.raises(StoreUnavailableError) as caught:
        engine.delete("doomed")
    assert str(caught.value) == (
        "Backup 'doomed' is deleted from store 'backupsDefault' (its manifest is gone), but "
        "not all of its data was removed: Connection was closed. A cleanup removes the rest "
        "once it is older than its grace period (a day by default)."
    )
    assert engine.list() == []


def test_after_an_interrupted_delete_and_a_new_backup_of_its_name_only_the_old_is_swept(
    engine: Engine, home: Path, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    interrupted_delete(engine, "reused", tree, monkeypatch)
    engine.create("reused", [tree], passcode=PASSCODE)
    for entry in index_entries(home):
        age(entry, GRACE * 2)
    assert [(e.name, e.action) for e in engine.cleanup().entries] == [("reused", "swept")]
    assert len(os.listdir(store_dir(home) / "data" / "reused")) == 1
    assert len(index_entries(home)) == 1
    engine.verify("reused", passcode=PASSCODE)


def slow_stream(started: threading.Event, release: threading.Event) -> Iterator[bytes]:
    yield b"first bytes\n"
    started.set()
    release.wait(30)
    yield b"last bytes\n"


def test_a_running_create_is_never_swept_however_slow(home: Path, tree: Path) -> None:
    """Its marker is refreshed while it runs; even one made to look ancient is renewed."""
    engine = Engine(kdf=FAST_KDF, chunk_size=SMALL_CHUNK, leftover_grace=timedelta(seconds=0.4))
    started, release = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            engine.create(
                "slow", passcode=PASSCODE, streams={"dump": slow_stream(started, release)}
            )
        except BaseException as exc:
            failure.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    try:
        assert started.wait(30)
        [marker] = markers(home)
        age(marker, timedelta(days=30))
        deadline = time.monotonic() + 30
        while marker.stat().st_mtime < time.time() - 60 and time.monotonic() < deadline:
            time.sleep(0.02)  # wait for the heartbeat (every 0.1 s here) to renew it
        report = engine.cleanup()
        assert report.entries == [], "a running create is not a leftover"
    finally:
        release.set()
        worker.join(30)
    assert failure == []
    assert engine.info("slow").name == "slow"
    target = engine.restore("slow", home.parent / "out", passcode=PASSCODE)
    assert (target / "dump").read_bytes() == b"first bytes\nlast bytes\n"


def test_keys_of_markers_are_validated() -> None:
    assert parse_pending_key(pending_key("nightly", "a" * 32)) == ("nightly", "a" * 32)
    assert parse_pending_key("pending/../" + "a" * 32) is None
    assert parse_pending_key("pending/nightly/not-hex") is None


def test_a_cleanup_killed_halfway_leaves_only_restorable_backups(
    home: Path, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock_now = [datetime(2026, 1, 1, tzinfo=UTC)]
    engine = Engine(
        kdf=FAST_KDF, chunk_size=SMALL_CHUNK, leftover_grace=GRACE, clock=lambda: clock_now[0]
    )
    expiry = to_epoch_ms(clock_now[0]) + 1
    for name in ("a", "b", "c"):
        engine.create(name, [tree], passcode=PASSCODE, retention_date=expiry)
    engine.create("forever", [tree], passcode=PASSCODE)
    clock_now[0] += timedelta(days=1)
    store = engine.store()
    with monkeypatch.context() as patch:
        patch.setattr(store, "delete", killed_at(store, "data/b/"))
        with pytest.raises(SystemExit):
            engine.cleanup()
    listed = [b.name for b in engine.list()]
    assert listed == ["forever"], "the manifests of a batch go first"
    engine.verify("forever", passcode=PASSCODE)  # nothing listed that cannot be restored

    for entry in index_entries(home):
        age(entry, GRACE * 2)
    report = engine.cleanup()
    assert {(e.name, e.action) for e in report.entries} == {
        ("a", "swept"),
        ("b", "swept"),
        ("c", "swept"),
    }
    assert [b.name for b in engine.list()] == ["forever"]
    assert not (store_dir(home) / "data" / "b").exists()


def make_unreadable_by_this_version(home: Path, name: str) -> bytes:
    """Rewrites a backup's manifest as a newer strongroom would (or a torn write leaves
    it): still there, unreadable here. Returns the original bytes."""
    manifest = store_dir(home) / "manifests" / name
    original = manifest.read_bytes()
    manifest.write_bytes(original.replace(b'"version": ', b'"version": 9', 1))
    return original


def backup_id_of(home: Path, name: str) -> str:
    [data] = (store_dir(home) / "data" / name).iterdir()
    return data.name


def test_a_backup_whose_manifest_is_unreadable_is_never_swept_as_a_cut_off_delete(
    engine: Engine, home: Path, tree: Path
) -> None:
    """Attack: one empty index entry planted under the name (put rights suffice) makes the
    name hold two backupIds; an unreadable manifest must not count as an absent one."""
    engine.create("precious", [tree], passcode=PASSCODE)
    backup_id = backup_id_of(home, "precious")
    index = store_dir(home) / "retention" / "precious"
    (index / f"{'ab' * 16}.1000").write_bytes(b"")  # long expired: judged by expiry too
    for path in [*index.iterdir(), *(store_dir(home) / "data").rglob("*")]:
        age(path, GRACE * 3)
    original = make_unreadable_by_this_version(home, "precious")

    report = engine.cleanup()
    assert report.entries == []
    assert len([error for error in report.errors if "precious" in error]) == 1, report.errors

    (store_dir(home) / "manifests" / "precious").write_bytes(original)
    engine.verify("precious", passcode=PASSCODE, backup_id=backup_id)


def test_a_backup_whose_manifest_is_unreadable_is_never_swept_as_an_unfinished_create(
    engine: Engine, home: Path, tree: Path
) -> None:
    """Attack: an empty pending marker planted with the committed backup's id."""
    engine.create("precious", [tree], passcode=PASSCODE)
    backup_id = backup_id_of(home, "precious")
    marker = store_dir(home) / pending_key("precious", backup_id)
    marker.parent.mkdir(parents=True)
    marker.write_bytes(b"")
    age(marker, GRACE * 3)
    original = make_unreadable_by_this_version(home, "precious")

    report = engine.cleanup()
    assert report.entries == []
    assert len([error for error in report.errors if "precious" in error]) == 1, report.errors
    assert markers(home) == [marker], "judged once the manifest can be read"

    (store_dir(home) / "manifests" / "precious").write_bytes(original)
    engine.verify("precious", passcode=PASSCODE, backup_id=backup_id)
    assert engine.cleanup().entries == [] and markers(home) == []


def test_a_backup_whose_manifest_does_not_read_is_deleted_on_request_then_swept(
    engine: Engine, home: Path, tree: Path
) -> None:
    """Nothing deletes a backup whose manifest does not read (a newer version's might be
    committed), and it made every list and cleanup fail: `delete --unreadable` deletes its
    manifest, on request, and the sweep its data once past grace. One that reads is refused."""
    engine.create("kept", [tree], passcode=PASSCODE)
    engine.create("damaged", [tree], passcode=PASSCODE)
    manifest = store_dir(home) / "manifests" / "damaged"
    manifest.write_bytes(manifest.read_bytes()[:100])
    advice = "'strongroom delete damaged --store backupsDefault --unreadable'"
    with pytest.raises(
        IntegrityError, match=f"in store 'backupsDefault' does not read: .*{advice}"
    ):
        engine.delete("damaged")
    with pytest.raises(ConfigError, match="reads; delete it without --unreadable"):
        engine.delete("kept", unreadable=True)
    assert manifest.exists() and engine.listing().unreadable.keys() == {"damaged"}

    engine.delete("damaged", unreadable=True)
    listing = engine.listing()
    assert ([b.name for b in listing.backups], listing.unreadable) == (["kept"], {})
    for entry in index_entries(home):
        age(entry, GRACE * 2)
    assert [(e.name, e.action) for e in engine.cleanup().entries] == [("damaged", "swept")]
    assert not (store_dir(home) / "data" / "damaged").exists()
    engine.verify("kept", passcode=PASSCODE)


def test_delete_unreadable_refuses_a_newer_versions_manifest_and_a_locking_store(
    engine: Engine, home: Path, tree: Path
) -> None:
    """A manifest a newer strongroom wrote is most likely whole: it is for that version to
    read or delete. In a store that locks backups, the manifest would say until when."""
    engine.create("newer", [tree], passcode=PASSCODE)
    manifest = store_dir(home) / "manifests" / "newer"
    manifest.write_bytes(manifest.read_bytes().replace(b'"version": 2', b'"version": 3'))
    with pytest.raises(NewerFormatError, match="Upgrade strongroom") as refused:
        engine.info("newer")
    assert "--unreadable" not in str(refused.value)
    with pytest.raises(ConfigError, match="was written by a newer strongroom"):
        engine.delete("newer", unreadable=True)
    assert manifest.exists()

    manifest.write_bytes(b"damaged")
    engine.store().lock_mode = "governance"
    with pytest.raises(ConfigError, match="cannot say until when backup 'newer' is locked"):
        engine.delete("newer", unreadable=True)
    assert manifest.exists()


class PausedCreate:
    """A create whose process stops after writing its data (SIGSTOP, a suspended machine):
    its heartbeat is frozen too, and both go on when resumed (the heartbeat at once, its
    interval long past: it puts the marker back)."""

    def __init__(
        self,
        engine: Engine,
        tree: Path,
        monkeypatch: pytest.MonkeyPatch,
        retention_date: int | None = None,
    ) -> None:
        self.reached, self.resumed = threading.Event(), threading.Event()
        self.outcome: list[BaseException | None] = []
        finish = ChunkWriter.finish
        beat = strongroom.enginecreate._Heartbeat._beat

        def finish_then_pause(writer: ChunkWriter) -> Any:
            stats = finish(writer)
            self.reached.set()
            self.resumed.wait(30)
            return stats

        def frozen_then_beat(heartbeat: Any) -> None:
            self.resumed.wait(30)
            heartbeat._store.put(heartbeat._key, b"", overwrite=True)  # its interval is past
            beat(heartbeat)

        monkeypatch.setattr(ChunkWriter, "finish", finish_then_pause)
        monkeypatch.setattr(strongroom.enginecreate._Heartbeat, "_beat", frozen_then_beat)
        self._thread = threading.Thread(target=self._run, args=(engine, tree, retention_date))
        self._thread.start()
        assert self.reached.wait(30)

    def _run(self, engine: Engine, tree: Path, retention_date: int | None) -> None:
        try:
            engine.create("paused", [tree], passcode=PASSCODE, retention_date=retention_date)
        except Exception as exc:  # what the test checks
            self.outcome.append(exc)
        else:
            self.outcome.append(None)

    def resume(self) -> BaseException | None:
        self.resumed.set()
        self._thread.join(30)
        return self.outcome[0]


def files(home: Path) -> list[str]:
    root = store_dir(home)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_a_create_paused_past_the_grace_whose_data_a_cleanup_swept_commits_nothing(
    engine: Engine, home: Path, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack on 'listed means whole': a create paused past the grace period looks cut
    off, and a cleanup sweeps its data; resumed (its heartbeat putting its marker back),
    it committed its manifest anyway, and the backup was listed but restored nothing
    ('Chunk 0 is missing')."""
    paused = PausedCreate(engine, tree, monkeypatch)
    for marker in markers(home):
        age(marker, GRACE + timedelta(hours=1))
    assert [entry.action for entry in engine.cleanup().entries] == ["swept"]
    failure = paused.resume()
    assert isinstance(failure, StoreError) and "Nothing was committed" in str(failure)
    assert engine.list() == []
    [taken] = files(home)  # what the sweep keeps, should the create resume again
    assert taken.startswith(PENDING_PREFIX + "paused/") and taken.endswith(".taken")


def test_a_create_that_commits_while_a_cleanup_judges_it_a_leftover_keeps_its_data(
    engine: Engine, home: Path, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other order: the paused create resumes and commits after a cleanup judged it a
    leftover and before the cleanup marked it taken: the cleanup reads its manifest again
    and leaves its data and index entry (and the key, which another sweep at the same
    time may rely on)."""
    later = to_epoch_ms(datetime.now(UTC) + timedelta(days=30))
    paused = PausedCreate(engine, tree, monkeypatch, retention_date=later)
    for marker in markers(home):
        age(marker, GRACE + timedelta(hours=1))
    store_type = type(engine.store())
    put = store_type.put

    def commit_first(store: Store, key: str, data: bytes, **options: Any) -> None:
        if key.endswith(".taken") and not paused.resumed.is_set():
            assert paused.resume() is None  # committed: the key was not there yet
        put(store, key, data, **options)

    monkeypatch.setattr(store_type, "put", commit_first)
    report = engine.cleanup()
    assert paused.resumed.is_set() and "swept" not in [entry.action for entry in report.entries]
    assert [backup.name for backup in engine.list()] == ["paused"]
    engine.verify("paused", passcode=PASSCODE)
    backup_id = engine.info("paused").backup_id
    assert [f for f in files(home) if not f.startswith("data/")] == [
        "manifests/paused",
        f"pending/paused/{backup_id}.taken",
        f"retention/paused/{backup_id}.{later}",
    ]


def test_a_leftover_whose_data_removal_failed_keeps_its_marker_for_the_next_run(
    engine: Engine, home: Path, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep marks a create taken before it removes its data; a data delete that fails
    then leaves the marker, so the next run finds the data again."""
    crash_before_commit(engine, tree, monkeypatch)
    for marker in markers(home):
        age(marker, GRACE + timedelta(hours=1))
    store_type = type(engine.store())

    def failing(store: Store, prefix: str) -> None:
        raise StoreUnavailableError("the disk went away")

    with monkeypatch.context() as patch:
        patch.setattr(store_type, "delete_prefix", failing)
        assert [entry.action for entry in engine.cleanup().entries] == ["failed"]
    assert len(markers(home)) == len(markers(home, ".taken")) == 1  # taken, but kept
    assert [entry.action for entry in engine.cleanup().entries] == ["swept"]
    assert [f.endswith(".taken") for f in files(home)] == [True]


class Killed(BaseException):
    """The create's process dies here (SIGKILL: no handler runs)."""


@pytest.mark.parametrize("killed", [False, True], ids=["resumed", "killed at its check"])
def test_two_sweeps_at_once_never_leave_a_listed_backup_without_data_unreported(
    engine: Engine, home: Path, tree: Path, monkeypatch: pytest.MonkeyPatch, killed: bool
) -> None:
    """A sweep that saw the resumed create's manifest removed the key that said a create
    was taken, while another sweep, on an earlier reading, removed its data: the create
    then found no key, and its listed backup restored nothing (helper-72's review). A
    create killed before its look for the key leaves that backup listed: every cleanup
    reports it, however often the sweeps put the key (helper-74's review)."""
    paused = PausedCreate(engine, tree, monkeypatch)
    for marker in markers(home):
        age(marker, GRACE + timedelta(hours=1))
    store_type = type(engine.store())
    take = Cleanup._take_from_its_create
    second_waits, committed, second_done = threading.Event(), threading.Event(), threading.Event()

    def second_sweep_after_the_commit(sweep: Cleanup, *args: Any) -> bool:
        if threading.current_thread().name != "second":
            return take(sweep, *args)
        second_waits.set()
        assert committed.wait(30)
        try:
            return take(sweep, *args)
        finally:
            second_done.set()

    delete_prefix, exists = store_type.delete_prefix, store_type.exists

    def first_sweep_resumes_the_create(store: Store, prefix: str) -> None:
        if threading.current_thread().name == "MainThread" and prefix.startswith("data/paused/"):
            paused.resumed.set()  # between this sweep's reading of the manifest and its delete
            assert second_done.wait(30)
        delete_prefix(store, prefix)

    def check_after_the_second_sweep(store: Store, key: str) -> bool:
        if key.endswith(".taken"):
            committed.set()
            assert second_done.wait(30)
            if killed:
                raise Killed
        return exists(store, key)

    monkeypatch.setattr(Cleanup, "_take_from_its_create", second_sweep_after_the_commit)
    monkeypatch.setattr(store_type, "delete_prefix", first_sweep_resumes_the_create)
    monkeypatch.setattr(store_type, "exists", check_after_the_second_sweep)
    second = threading.Thread(target=engine.cleanup, name="second")
    second.start()
    assert second_waits.wait(30)
    engine.cleanup()
    second.join(30)
    if not killed:
        failure = paused.resume()
        assert isinstance(failure, StoreError) and "Nothing was committed" in str(failure)
        assert engine.list() == []
        return
    assert isinstance(paused.resume(), CommitUncertainError)  # it removed nothing, as if killed
    monkeypatch.setattr(store_type, "exists", exists)
    assert [backup.name for backup in engine.list()] == ["paused"]
    assert not any((store_dir(home) / "data").rglob("0*"))  # its data gone
    for _ in range(2):
        [problem] = engine.cleanup().errors
        assert "'paused' was committed after a cleanup took its data" in problem


def taken_then_committed(engine: Engine, name: str, tree: Path) -> str:
    """A backup as a create leaves it that was killed between its manifest's put and its
    look for the taken key, while a sweep took its data (the one step the key cannot
    cover): committed after the key, and without its data. Its backupId."""
    engine.create(name, [tree], passcode=PASSCODE)
    backup_id = engine.info(name).backup_id
    engine.store().put(taken_key(name, backup_id), b"")
    engine.store().delete_prefix(data_prefix(name, backup_id))
    return backup_id


def test_a_backup_committed_after_a_sweep_took_its_data_is_reported_every_run(
    engine: Engine, home: Path, tree: Path
) -> None:
    """Attack on 'listed means whole' (helper-72): the create, killed before it could see
    the key and take its manifest back, left a listed backup that restored nothing, and no
    cleanup said so. It is reported, never deleted by a cleanup: a listing that came back
    short must not cost a whole backup (helper-73's review)."""
    taken_then_committed(engine, "orphaned", tree)
    engine.create("kept", [tree], passcode=PASSCODE)
    for dry_run in (True, False, False):
        report = engine.cleanup(dry_run=dry_run)
        assert report.entries == []
        [problem] = report.errors
        assert "'orphaned' was committed after a cleanup took its data" in problem
        assert "'strongroom verify orphaned --store backupsDefault'" in problem
    assert sorted(backup.name for backup in engine.list()) == ["kept", "orphaned"]
    engine.delete("orphaned")
    assert engine.cleanup().errors == []


def test_a_backup_missing_a_chunk_beside_its_taken_key_loses_nothing_more(
    engine: Engine, home: Path, tree: Path
) -> None:
    """A whole backup whose sweep read its manifest and left the data keeps the key: a
    chunk lost to something else, or missing from a short listing, is reported, and the
    others stay."""
    engine.create("whole", [tree], passcode=PASSCODE)
    backup_id = engine.info("whole").backup_id
    engine.store().put(taken_key("whole", backup_id), b"")
    chunks = sorted((store_dir(home) / data_prefix("whole", backup_id)).iterdir())
    chunks[0].unlink()
    [problem] = engine.cleanup().errors
    assert f"(1 of its {len(chunks)} chunks are not there)" in problem
    assert all(chunk.exists() for chunk in chunks[1:])
    assert [backup.name for backup in engine.list()] == ["whole"]


def test_a_whole_backup_beside_a_taken_key_is_kept(engine: Engine, home: Path, tree: Path) -> None:
    """A sweep that read the manifest again left the data (and the key); a key planted beside
    a whole backup, or left by an earlier create of its name, says nothing."""
    engine.create("whole", [tree], passcode=PASSCODE)
    store = engine.store()
    for backup_id in (engine.info("whole").backup_id, "0" * 32):
        store.put(taken_key("whole", backup_id), b"")
    report = engine.cleanup()
    assert (report.entries, report.errors) == ([], [])
    engine.verify("whole", passcode=PASSCODE)


def test_a_damaged_backup_beside_an_earlier_creates_taken_key_is_not_blamed_on_it(
    engine: Engine, home: Path, tree: Path
) -> None:
    """Only the create a sweep took is reported: a later backup of its name that lost a
    chunk to something else is verify's to report."""
    taken_then_committed(engine, "reused", tree)
    engine.delete("reused")
    engine.create("reused", [tree], passcode=PASSCODE)
    backup_id = engine.info("reused").backup_id
    (store_dir(home) / data_prefix("reused", backup_id) / f"{0:010d}").unlink()
    assert engine.cleanup().errors == []
    with pytest.raises(IntegrityError, match="missing"):
        engine.verify("reused", passcode=PASSCODE)


def test_a_backup_whose_data_cannot_be_listed_does_not_hide_the_others(
    engine: Engine, home: Path, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One data listing that fails (a link planted in the data) is reported, and the other
    backups are still checked."""
    for name in ("first", "second"):
        taken_then_committed(engine, name, tree)
    data_keys = strongroom.cleanup.data_keys

    def planted_link(store: Store, manifest: Any) -> list[str]:
        if manifest.name == "first":
            raise StoreError("a link where its data should be")
        return data_keys(store, manifest)

    monkeypatch.setattr(strongroom.cleanup, "data_keys", planted_link)
    first, second = engine.cleanup().errors
    assert "a link where its data should be" in first
    assert "'second' was committed after a cleanup took its data" in second
