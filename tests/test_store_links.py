"""A filesystem store never follows a link below its root: links planted under data/,
pending/, retention/ or manifests/ (by anyone who can write to a shared backup directory)
cannot make a cleanup, sweep, delete, list, info, put or get reach outside the store; nor
can a planted directory tree, however deep, stop them with anything but a clear error.

Every attack aims at canary files outside the store, three days old like an abandoned
marker, whose bytes, modes and mtimes must survive; what was skipped is reported.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from strongroom import (
    BackupNotFoundError,
    ConfigError,
    Engine,
    InvalidNameError,
    StoreError,
    StoreSpec,
)
from strongroom.backends.file import LocalStore, open_local_store
from strongroom.backends.generic import open_fsspec_store
from strongroom.cli import main
from strongroom.format import data_prefix, pending_key, retention_key, to_epoch_ms
from tests.conftest import FAST_KDF, PASSCODE, SMALL_CHUNK, snapshot

BACKUP_ID = "0123456789abcdef0123456789abcdef"
#: Past the default grace period of a leftover (24 h).
THREE_DAYS_AGO = time.time() - timedelta(days=3).total_seconds()


def store_dir(home: Path) -> Path:
    return home / "stores" / "backupsDefault"


def canary(root: Path, *files: str) -> Path:
    """Files outside the store, named like store objects and as old as an abandoned marker."""
    for name in files:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"canary {name}\n".encode())
        os.utime(path, (THREE_DAYS_AGO, THREE_DAYS_AGO))
    return root


def plant(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target, target_is_directory=target.is_dir())


def old_marker(store: LocalStore, home: Path, name: str) -> Path:
    """The marker a create cut off three days ago leaves."""
    store.put(pending_key(name, BACKUP_ID), b"")
    marker = store_dir(home) / pending_key(name, BACKUP_ID)
    os.utime(marker, (THREE_DAYS_AGO, THREE_DAYS_AGO))
    return marker


def raised(action: Callable[[], object]) -> Exception | None:
    """What `action` raised, so a test can look at the canary before at the error."""
    try:
        action()
    except Exception as exc:
        return exc
    return None


def local_store(engine: Engine) -> LocalStore:
    store = engine.store()
    assert isinstance(store, LocalStore)
    return store


def test_cleanup_never_sweeps_through_a_backups_data_that_is_a_link(
    engine: Engine, home: Path, tmp_path: Path
) -> None:
    outside = canary(tmp_path / "outside", "0000000000", "0000000001", "deeper/0000000002")
    before = snapshot(outside)
    marker = old_marker(local_store(engine), home, "nightly")
    plant(store_dir(home) / data_prefix("nightly", BACKUP_ID).rstrip("/"), outside)

    dry = engine.cleanup(dry_run=True)
    assert [(e.name, e.action) for e in dry.entries] == [("nightly", "would sweep")]
    assert snapshot(outside) == before

    for _ in range(2):  # kept with its marker, so every run reports it until someone looks
        report = engine.cleanup()
        assert snapshot(outside) == before
        [entry] = report.entries
        assert (entry.name, entry.action) == ("nightly", "failed")
        assert f"'data/nightly/{BACKUP_ID}' is a symbolic link" in entry.message
        assert "never follows links" in entry.message
        assert marker.exists()


def test_cleanup_never_sweeps_through_a_backup_name_that_is_a_link(
    engine: Engine, home: Path, tmp_path: Path
) -> None:
    outside = canary(tmp_path / "outside", f"{BACKUP_ID}/0000000000", f"{BACKUP_ID}/0000000001")
    before = snapshot(outside)
    old_marker(local_store(engine), home, "nightly")
    plant(store_dir(home) / "data" / "nightly", outside)

    assert engine.cleanup(dry_run=True).entries[0].action == "would sweep"
    assert snapshot(outside) == before
    [entry] = engine.cleanup().entries
    assert snapshot(outside) == before
    assert entry.action == "failed" and "'data/nightly' is a symbolic link" in entry.message


def test_one_leftover_behind_a_link_does_not_stop_the_sweep_of_the_others(
    engine: Engine, home: Path, tmp_path: Path
) -> None:
    outside = canary(tmp_path / "outside", "0000000000")
    before = snapshot(outside)
    store = local_store(engine)
    old_marker(store, home, "aaa")
    old_marker(store, home, "zzz")
    store.put(data_prefix("zzz", BACKUP_ID) + "0000000000", b"left over")
    plant(store_dir(home) / data_prefix("aaa", BACKUP_ID).rstrip("/"), outside)

    report = engine.cleanup()
    assert snapshot(outside) == before
    assert [(e.name, e.action) for e in report.entries] == [("aaa", "failed"), ("zzz", "swept")]
    assert store.list("data/zzz/") == []
    assert [o.key for o in store.list("pending/zzz/")] == [f"pending/zzz/{BACKUP_ID}.taken"]


@pytest.mark.parametrize("link", ["pending", "pending/nightly"])
def test_cleanup_never_reads_markers_through_a_pending_link(
    engine: Engine, home: Path, tmp_path: Path, link: str
) -> None:
    marker = pending_key("nightly", BACKUP_ID)
    outside = canary(tmp_path / "outside", marker[len(link) + 1 :])
    before = snapshot(outside)
    local_store(engine).put(data_prefix("nightly", BACKUP_ID) + "0000000000", b"x")
    plant(store_dir(home) / link, outside)

    for dry_run in (False, True):
        report = engine.cleanup(dry_run=dry_run)
        assert snapshot(outside) == before
        assert report.entries == []
        [error] = report.errors
        assert f"'{link}' is a symbolic link" in error and "it was skipped" in error


@pytest.mark.parametrize("link", ["retention", "retention/nightly"])
def test_cleanup_never_reads_index_entries_through_a_retention_link(
    engine: Engine, home: Path, tmp_path: Path, link: str
) -> None:
    entry = retention_key("nightly", BACKUP_ID, None)
    outside = canary(tmp_path / "outside", entry[len(link) + 1 :])
    before = snapshot(outside)
    local_store(engine).put(data_prefix("nightly", BACKUP_ID) + "0000000000", b"x")
    plant(store_dir(home) / link, outside)

    for dry_run in (False, True):
        report = engine.cleanup(dry_run=dry_run)
        assert snapshot(outside) == before
        assert report.entries == []
        assert [f"'{link}' is a symbolic link" in e for e in report.errors] == [True]


def test_cleanup_never_deletes_an_expired_manifest_through_a_manifests_link(
    home: Path, tree: Path, tmp_path: Path
) -> None:
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    engine = Engine(kdf=FAST_KDF, chunk_size=SMALL_CHUNK, clock=lambda: now[0])
    engine.create("victim", [tree], passcode=PASSCODE, retention_date=to_epoch_ms(now[0]) + 1)
    outside = tmp_path / "outside"
    shutil.move(store_dir(home) / "manifests", outside)
    plant(store_dir(home) / "manifests", outside)
    before = snapshot(outside)
    now[0] += timedelta(days=1)

    for dry_run in (False, True):
        report = engine.cleanup(dry_run=dry_run)
        assert snapshot(outside) == before
        assert report.entries == []
        assert ["'manifests' is a symbolic link" in e for e in report.errors] == [True]


def test_info_and_list_never_read_a_manifest_through_a_link(
    engine: Engine, home: Path, tree: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine.create("nightly", [tree], passcode=PASSCODE)
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.move(store_dir(home) / "manifests" / "nightly", outside / "nightly")
    plant(store_dir(home) / "manifests" / "nightly", outside / "nightly")
    before = snapshot(outside)

    with caplog.at_level(logging.WARNING, logger="strongroom"):
        assert engine.list() == []
        with pytest.raises(BackupNotFoundError):
            engine.info("nightly")
    assert snapshot(outside) == before
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3, warnings  # the listing's, list's "Not listed", info's
    assert warnings[1].startswith("Not listed: ")
    for warning in warnings:
        assert "'manifests/nightly' is a symbolic link" in warning
        assert "strongroom never follows links in a store" in warning


def test_delete_never_follows_a_link_in_a_backups_data(
    engine: Engine, home: Path, tree: Path, tmp_path: Path
) -> None:
    info = engine.create("nightly", [tree], passcode=PASSCODE)
    [backup_dir] = (store_dir(home) / "data" / "nightly").iterdir()
    outside = tmp_path / "outside"
    shutil.move(backup_dir, outside)
    plant(backup_dir, outside)
    before = snapshot(outside)

    refusal = raised(lambda: engine.delete("nightly"))
    assert snapshot(outside) == before
    assert isinstance(refusal, StoreError)
    assert re.search("is a symbolic link.*it was skipped", str(refusal))
    assert len(before) == info.chunk_count + 1, "the canary holds the backup's chunks"


def test_put_refuses_a_directory_path_through_a_link(
    engine: Engine, home: Path, tmp_path: Path
) -> None:
    outside = canary(tmp_path / "outside", "unrelated")
    before = snapshot(outside)
    plant(store_dir(home) / "data", outside)
    store = local_store(engine)

    with pytest.raises(StoreError, match="'data' is a symbolic link.*was not written"):
        store.put(data_prefix("nightly", BACKUP_ID) + "0000000000", b"written outside?")
    assert snapshot(outside) == before


def test_put_with_overwrite_replaces_a_link_at_the_key_never_writing_through_it(
    engine: Engine, home: Path, tmp_path: Path
) -> None:
    outside = canary(tmp_path / "outside", "manifest")
    before = snapshot(outside)
    link = store_dir(home) / "manifests" / "nightly"
    plant(link, outside / "manifest")
    store = local_store(engine)

    with pytest.raises(FileExistsError):
        store.put("manifests/nightly", b"new")
    store.put("manifests/nightly", b"new", overwrite=True)
    assert not link.is_symlink() and store.get("manifests/nightly") == b"new"
    assert snapshot(outside) == before


def test_get_and_exists_never_read_through_a_link(
    engine: Engine, home: Path, tmp_path: Path
) -> None:
    outside = canary(tmp_path / "outside", "0000000000")
    store = local_store(engine)
    chunks = store_dir(home) / data_prefix("nightly", BACKUP_ID)
    plant(chunks / "0000000000", outside / "0000000000")
    plant(store_dir(home) / "data" / "other", outside)

    for key in (data_prefix("nightly", BACKUP_ID) + "0000000000", "data/other/0000000000"):
        with pytest.raises(FileNotFoundError, match="is a symbolic link.*was not read"):
            store.get(key)
        assert not store.exists(key)


@pytest.mark.timeout(10)
def test_a_planted_fifo_is_skipped_and_never_blocks_a_read(
    engine: Engine, home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (store_dir(home) / "manifests").mkdir(parents=True)
    os.mkfifo(store_dir(home) / "manifests" / "nightly")
    store = local_store(engine)

    with caplog.at_level(logging.WARNING, logger="strongroom"):
        with pytest.raises(FileNotFoundError, match="'manifests/nightly' is a FIFO"):
            store.get("manifests/nightly")
        assert store.list("manifests/") == []
    assert len(caplog.records) == 2


def test_list_skips_links_and_reports_each_with_a_warning(
    engine: Engine, home: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outside = canary(tmp_path / "outside", "0000000000", "deeper/0000000001")
    store = local_store(engine)
    prefix = data_prefix("nightly", BACKUP_ID)
    store.put(prefix + "0000000000", b"real")
    plant(store_dir(home) / prefix / "0000000001", outside / "0000000000")
    plant(store_dir(home) / "data" / "evil", outside)

    with caplog.at_level(logging.WARNING, logger="strongroom"):
        found = store.scan("data/")
    assert [r.getMessage() for r in caplog.records] == list(found.skipped.values())
    assert [obj.key for obj in found.objects] == [prefix + "0000000000"]
    assert store.list("data/") == found.objects
    assert len(found.skipped) == 2
    assert "'data/evil' is a symbolic link" in found.skipped["data/evil"]
    assert f"'{prefix}0000000001' is a symbolic link" in found.skipped[f"{prefix}0000000001"]


def test_a_prefix_delete_never_removes_directories_behind_a_link(
    engine: Engine, home: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    (outside / BACKUP_ID).mkdir(parents=True)  # empty: what a prune would remove
    before = snapshot(outside)
    plant(store_dir(home) / "data" / "nightly", outside)

    with pytest.raises(StoreError, match="'data/nightly' is a symbolic link"):
        local_store(engine).delete_prefix(data_prefix("nightly", BACKUP_ID))
    assert snapshot(outside) == before


def test_keys_that_climb_out_of_the_store_are_refused(
    engine: Engine, home: Path, tmp_path: Path
) -> None:
    outside = canary(tmp_path / "outside", "secret")
    before = snapshot(outside)
    store = local_store(engine)
    store.put("manifests/something", b"so the store exists")
    climbing = "manifests/../../../../outside/secret"
    assert (store_dir(home) / climbing).exists(), "the path would reach the canary"

    for attempt in (
        lambda: store.get(climbing),
        lambda: store.put(climbing, b"x", overwrite=True),
        lambda: store.delete([climbing]),
    ):
        with pytest.raises(InvalidNameError):
            attempt()
    assert snapshot(outside) == before


def test_a_link_as_the_store_root_is_the_operators_and_is_followed(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    plant(tmp_path / "configured", tmp_path / "real")
    store = LocalStore("linked", (tmp_path / "configured").as_uri(), tmp_path / "configured")
    store.put("manifests/nightly", b"ok")
    assert store.get("manifests/nightly") == b"ok"
    assert (tmp_path / "real" / "manifests" / "nightly").read_bytes() == b"ok"


def test_a_local_fsspec_protocol_gets_the_filesystem_stores_rules(tmp_path: Path) -> None:
    outside = canary(tmp_path / "outside", "secret")
    store = open_fsspec_store(StoreSpec("alias", f"local://{tmp_path / 'store'}"))
    assert isinstance(store, LocalStore)
    plant(tmp_path / "store" / "manifests" / "nightly", outside / "secret")
    with pytest.raises(FileNotFoundError, match="symbolic link"):
        store.get("manifests/nightly")


def test_cli_cleanup_reports_skipped_links_in_json_and_exits_1(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outside = canary(tmp_path / "outside", f"{BACKUP_ID}.never")
    store = LocalStore("x", "file:///", store_dir(home))
    store.initialize()
    store.put(retention_key("kept", "a" * 32, None), b"")
    plant(store_dir(home) / "retention" / "nightly", outside)

    assert main(["cleanup", "--json"]) == 1
    errors = json.loads(capsys.readouterr().out)["errors"]
    assert len(errors) == 1 and "'retention/nightly' is a symbolic link" in errors[0]


def test_a_confined_store_must_lie_under_the_directory_it_is_confined_to(tmp_path: Path) -> None:
    spec = StoreSpec("x", (tmp_path / "a" / "store").as_uri(), {"confine_to": str(tmp_path / "b")})
    with pytest.raises(ConfigError, match="is not under its confine_to directory"):
        open_local_store(spec)
    confined = StoreSpec("x", (tmp_path / "a" / "store").as_uri(), {"confine_to": str(tmp_path)})
    store = open_local_store(confined)
    store.initialize()
    store.put("manifests/nightly", b"ok")
    assert (tmp_path / "a" / "store" / "manifests" / "nightly").read_bytes() == b"ok"


def plant_deep_tree(top: Path, levels: int = 1200) -> None:
    """Directories `levels` deep under `top`, made from descriptors (the path is too long
    for one call): as deep as Python's stack, and more descriptors than a walk may hold."""
    top.mkdir(parents=True, exist_ok=True)
    fd = os.open(top, os.O_RDONLY)
    try:
        for _ in range(levels):
            os.mkdir("d", dir_fd=fd)
            below = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = below
    finally:
        os.close(fd)


def remove_deep_tree(top: Path) -> None:
    """Remove what `plant_deep_tree` made a level at a time (rmtree recurses as deep)."""
    fd = os.open(top, os.O_RDONLY)
    try:
        while os.path.lexists(top / "d"):
            if os.path.lexists(top / "d" / "d"):
                os.rename("d/d", "next", src_dir_fd=fd, dst_dir_fd=fd)
                os.rmdir("d", dir_fd=fd)
                os.rename("next", "d", src_dir_fd=fd, dst_dir_fd=fd)
            else:
                os.rmdir("d", dir_fd=fd)
    finally:
        os.close(fd)


@pytest.fixture
def deep_tree(home: Path) -> Iterator[Callable[[str], Path]]:
    planted: list[Path] = []

    def plant_at(key: str) -> Path:
        top = store_dir(home) / key
        plant_deep_tree(top)
        planted.append(top)
        return top

    yield plant_at
    for top in planted:
        remove_deep_tree(top)


def test_a_tree_planted_deep_in_manifests_is_reported_and_cleanup_goes_on(
    engine: Engine,
    home: Path,
    tmp_path: Path,
    deep_tree: Callable[[str], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A listing walked it to Python's stack limit: every list and cleanup ended in a
    RecursionError traceback, and cleanup then stopped before the other stores."""
    source = tmp_path / "source"
    source.mkdir()
    (source / "f").write_bytes(b"data")
    engine.add_store(StoreSpec("other", (tmp_path / "other").as_uri()))
    expired = to_epoch_ms(datetime.now(UTC) + timedelta(seconds=1))
    engine.create("old", [source], passcode=PASSCODE, store="other", retention_date=expired)
    engine.create("kept", [source], passcode=PASSCODE)
    deep_tree("manifests/planted")
    time.sleep(1.1)

    assert [b.name for b in engine.list()] == ["kept"]
    assert main(["cleanup", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    [error] = report["errors"]
    assert "'manifests/planted/d/d/d" in error and "deeper than any object" in error, error
    assert [(e["name"], e["action"]) for e in report["backups"]] == [("old", "deleted")]


def test_a_tree_planted_deep_in_a_backups_data_fails_verify_and_delete_clearly(
    engine: Engine, home: Path, tmp_path: Path, deep_tree: Callable[[str], Path]
) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "f").write_bytes(b"data")
    info = engine.create("nightly", [source], passcode=PASSCODE)
    deep_tree(data_prefix("nightly", info.backup_id) + "planted")

    for action in (
        lambda: engine.verify("nightly", passcode=PASSCODE),
        lambda: engine.delete("nightly"),
    ):
        with pytest.raises(StoreError, match="deeper than any object strongroom writes"):
            action()


def test_a_directory_where_an_object_belongs_is_named_as_one(engine: Engine, home: Path) -> None:
    (store_dir(home) / "manifests" / "nightly" / "inside").mkdir(parents=True)
    with pytest.raises(FileNotFoundError) as caught:
        local_store(engine).get("manifests/nightly")
    assert "'manifests/nightly' is a directory where strongroom keeps a file" in str(caught.value)


def backed_up_with_an_old_index(engine: Engine, home: Path, tree: Path) -> Path:
    """Backup "nightly" of `tree`, its index entries aged past the grace period of a delete
    cut off (what cleanup sweeps); its data directory."""
    info = engine.create("nightly", [tree], passcode=PASSCODE)
    for entry in (store_dir(home) / "retention" / "nightly").iterdir():
        os.utime(entry, (THREE_DAYS_AGO, THREE_DAYS_AGO))
    return store_dir(home) / data_prefix("nightly", info.backup_id)


def cleanup_sweeps_nothing(engine: Engine, data: Path) -> list[str]:
    """Run cleanup, check that it left the backup's data whole; its errors."""
    before = snapshot(data)
    report = engine.cleanup()
    assert report.entries == [] and snapshot(data) == before
    return report.errors


def test_a_backup_whose_manifest_place_holds_a_directory_is_unreadable_not_deleted(
    engine: Engine, home: Path, tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It was taken for a backup whose delete was cut off: not listed, without a word, and
    a day later cleanup swept its data, though its manifest was still in the store (moved
    into a directory at its own place)."""
    data = backed_up_with_an_old_index(engine, home, tree)
    manifests = store_dir(home) / "manifests"
    (manifests / "nightly").rename(manifests / "moving")
    (manifests / "nightly").mkdir()
    (manifests / "moving").rename(manifests / "nightly" / "nightly")

    assert main(["list"]) == 8
    assert "are not listed because their manifest does not read: nightly" in capsys.readouterr().err
    [error] = cleanup_sweeps_nothing(engine, data)
    assert "'manifests/nightly/nightly' lies under 'manifests/nightly'" in error
    assert error.endswith("Its leftovers are kept until it can be read.")


def test_a_file_where_the_manifests_are_kept_fails_list_and_stops_the_sweep(
    engine: Engine, home: Path, tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It listed as a store without backups, and cleanup would have swept the data of
    every backup as a delete cut off."""
    data = backed_up_with_an_old_index(engine, home, tree)
    manifests = store_dir(home) / "manifests"
    shutil.rmtree(manifests)
    manifests.write_text("")

    assert main(["list"]) == 4
    assert "'manifests' is a file where strongroom keeps a directory" in capsys.readouterr().err
    errors = cleanup_sweeps_nothing(engine, data)
    assert any("'manifests' is a file where strongroom keeps" in e for e in errors)


def test_a_link_at_a_manifests_place_keeps_the_backups_data(
    engine: Engine, home: Path, tree: Path, tmp_path: Path
) -> None:
    data = backed_up_with_an_old_index(engine, home, tree)
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.move(store_dir(home) / "manifests" / "nightly", outside / "nightly")
    plant(store_dir(home) / "manifests" / "nightly", outside / "nightly")

    [error] = cleanup_sweeps_nothing(engine, data)
    assert "'manifests/nightly' is a symbolic link" in error
    assert error.endswith("Its leftovers are kept until it can be read.")


@pytest.mark.parametrize(
    ("code", "advice"),
    [
        (errno.EMFILE, "too many files open; raise its limit"),
        (errno.ENOSPC, "The disk is full"),
        (errno.ENOTDIR, "A file stands where the store keeps a directory"),
        (errno.EACCES, "Check that the location exists and is writable"),
    ],
)
def test_a_store_error_advises_by_its_cause(engine: Engine, code: int, advice: str) -> None:
    """Every failure told to check that the location exists and is writable, running out
    of descriptors (a deep tree) too."""
    with pytest.raises(StoreError) as caught, local_store(engine).translate_errors("k"):
        raise OSError(code, os.strerror(code))
    assert f"{advice}" in str(caught.value)
    assert str(caught.value).endswith("then run 'strongroom stores validate backupsDefault'.")


@pytest.mark.parametrize("inside", ["", ".nightly"])
def test_a_directory_no_listing_shows_at_a_manifests_place_keeps_the_backups_data(
    engine: Engine, home: Path, tree: Path, inside: str
) -> None:
    """Listings show neither an empty directory nor names starting with '.' (a put's
    temporary file), so such a directory at the place read as no manifest at all."""
    data = backed_up_with_an_old_index(engine, home, tree)
    place = store_dir(home) / "manifests" / "nightly"
    place.rename(place.with_name("moving"))
    place.mkdir()
    if inside:
        place.with_name("moving").rename(place / inside)

    [error] = cleanup_sweeps_nothing(engine, data)
    assert "'manifests/nightly' holds something other than a manifest" in error


def test_cleanup_reports_a_link_in_the_manifests_that_names_no_backup(
    engine: Engine, home: Path, tmp_path: Path
) -> None:
    outside = canary(tmp_path / "outside", "secret")
    (store_dir(home) / "manifests").mkdir(parents=True)
    plant(store_dir(home) / "manifests" / "bad name", outside / "secret")

    [error] = engine.cleanup().errors
    assert "'manifests/bad name' is a symbolic link" in error
