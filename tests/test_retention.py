"""Retention dates and the choice of expired backups (pure), and cleanup through the engine."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import strongroom.engine
from strongroom import BackupNotFoundError, ConfigError, Engine, IntegrityError, Store
from strongroom.format import (
    MAX_EPOCH_MS,
    Manifest,
    from_epoch_ms,
    parse_retention_key,
    to_epoch_ms,
)
from strongroom.retention import (
    CleanupEntry,
    CleanupReport,
    IndexEntry,
    check_retention_date,
    parse_epoch_ms,
    parse_moment,
    retention_from,
    select_candidates,
    select_orphans,
)
from tests.conftest import FAST_KDF, PASSCODE, SMALL_CHUNK


class Clock:
    """An injected clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


START = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def clock() -> Clock:
    return Clock(START)


@pytest.fixture
def timed_engine(home: Path, clock: Clock) -> Engine:
    return Engine(kdf=FAST_KDF, chunk_size=SMALL_CHUNK, clock=clock)


def test_parse_epoch_ms() -> None:
    assert parse_epoch_ms("1635945710988") == 1635945710988
    assert parse_epoch_ms(1635945710988) == 1635945710988
    for bad in ("", "1e12", "-1", 1.0, None, True, "ten"):
        with pytest.raises(ConfigError, match="milliseconds"):
            parse_epoch_ms(bad)


def test_retention_dates_as_people_mistype_them_say_what_they_meant() -> None:
    with pytest.raises(ConfigError, match="write it 2030-01-31"):
        parse_moment("20300131")
    with pytest.raises(ConfigError, match="after the year 9999"):
        parse_moment("9999999999999999")
    assert retention_from(None, "never", START) is None
    assert retention_from(None, "3", START) == START + timedelta(days=3)


def test_retention_date_must_be_after_now() -> None:
    now = START
    assert check_retention_date(to_epoch_ms(now) + 1, now) == now + timedelta(milliseconds=1)
    with pytest.raises(ConfigError, match="in the past"):
        check_retention_date(to_epoch_ms(now), now)


def entry(name: str, backup_id: str, when: datetime | None, age: timedelta) -> IndexEntry:
    return IndexEntry(f"retention/{name}/{backup_id}", name, backup_id, when, START - age)


def test_the_index_may_delay_a_deletion_but_never_hasten_it() -> None:
    hour = timedelta(hours=1)
    index = [
        entry("updating", "1", START - hour, hour),  # an update to never, cut off
        entry("updating", "1", None, hour),
        entry("extended", "2", START - hour, hour),  # an extension, cut off
        entry("extended", "2", START + hour, hour),
        entry("expired", "3", START - hour, hour),
        entry("at-the-boundary", "4", START, hour),
        entry("uncommitted", "5", START - hour, hour),
    ]
    committed = {"updating", "extended", "expired", "at-the-boundary"}
    expected = [("at-the-boundary", "4"), ("expired", "3")]
    assert select_candidates(index, committed, START) == expected


def test_orphans_are_entries_without_their_manifest_past_grace_and_not_being_written() -> None:
    grace = timedelta(hours=24)
    index = [
        entry("cut-off", "1", None, 2 * grace),
        entry("young", "2", None, grace / 2),
        entry("writing", "3", None, 2 * grace),
        entry("reused", "4", None, 2 * grace),  # the name now belongs to backup 5
        entry("reused", "5", None, 2 * grace),
    ]
    orphans = select_orphans(index, {"reused": "5"}, {("writing", "3")}, START, grace)
    assert [(o.name, o.backup_id) for o in orphans] == [("cut-off", "1"), ("reused", "4")]


def test_cleanup_deletes_exactly_the_expired(
    timed_engine: Engine, clock: Clock, tree: Path
) -> None:
    day = timedelta(days=1)
    expiry = to_epoch_ms(START + day)
    timed_engine.create("expires", [tree], passcode=PASSCODE, retention_date=expiry)
    timed_engine.create("later", [tree], passcode=PASSCODE, retention_date=expiry + 1)
    timed_engine.create("forever", [tree], passcode=PASSCODE)

    clock.now = START + day - timedelta(milliseconds=1)
    report = timed_engine.cleanup()
    assert report.entries == [] and report.kept == 3

    dry = timed_engine.cleanup(as_of=expiry, dry_run=True)
    assert [(e.name, e.action) for e in dry.entries] == [("expires", "would delete")]
    assert len(timed_engine.list()) == 3, "a dry run deletes nothing"

    clock.now = START + day  # exactly at the boundary: eligible
    report = timed_engine.cleanup()
    assert [(e.name, e.action) for e in report.entries] == [("expires", "deleted")]
    assert report.to_dict()["backups"][0]["retentionDate"] == expiry
    assert sorted(b.name for b in timed_engine.list()) == ["forever", "later"]

    clock.now = START + 1000 * day
    timed_engine.cleanup()
    assert [b.name for b in timed_engine.list()] == ["forever"]


def test_extended_retention_is_honoured(timed_engine: Engine, clock: Clock, tree: Path) -> None:
    timed_engine.create(
        "b", [tree], passcode=PASSCODE, retention_date=to_epoch_ms(START + timedelta(days=1))
    )
    timed_engine.update_retention("b", to_epoch_ms(START + timedelta(days=10)))
    clock.now = START + timedelta(days=5)
    assert timed_engine.cleanup().entries == []
    assert [b.name for b in timed_engine.list()] == ["b"]


def test_cleanup_reports_a_failed_delete_and_goes_on(
    timed_engine: Engine, clock: Clock, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("a", "b"):
        timed_engine.create(name, [tree], passcode=PASSCODE, retention_date=to_epoch_ms(START) + 1)
    store = timed_engine.store()
    real_delete = store.delete

    def flaky_delete(keys: list[str]) -> None:
        if "manifests/a" in keys:
            raise OSError("store said no")
        real_delete(keys)

    monkeypatch.setattr(store, "delete", flaky_delete)
    clock.now = START + timedelta(days=1)
    report = timed_engine.cleanup()
    assert {(e.name, e.action) for e in report.entries} == {("a", "failed"), ("b", "deleted")}
    assert [e.message for e in report.failed] == ["store said no"]


def test_cleanup_goes_on_past_an_unreadable_store_and_manifest(
    home: Path, clock: Clock, tree: Path, caplog: pytest.LogCaptureFixture
) -> None:
    home.mkdir()
    (home / "config.toml").write_text('[stores.aaa-broken]\nurl = "gopher://nowhere/x"\n')
    engine = Engine(kdf=FAST_KDF, chunk_size=SMALL_CHUNK, clock=clock)
    engine.create("old", [tree], passcode=PASSCODE, retention_date=to_epoch_ms(START) + 1)
    engine.create("mangled", [tree], passcode=PASSCODE, retention_date=to_epoch_ms(START) + 1)
    (home / "stores" / "backupsDefault" / "manifests" / "mangled").write_text("{not json")
    clock.now = START + timedelta(days=1)

    report = engine.cleanup()

    assert [(e.name, e.action) for e in report.entries] == [("old", "deleted")]
    assert report.kept == 0, "the manifest that does not read is an error, not counted kept"
    assert len(report.errors) == 2
    assert "gopher" in report.errors[0] and "'mangled'" in report.errors[1]
    assert engine.list() == []
    assert "mangled" in caplog.text, "list says what it could not list"


def test_the_system_task_runs_cleanup_as_jobs_and_logs_one_line(
    timed_engine: Engine, clock: Clock, tree: Path, caplog: pytest.LogCaptureFixture
) -> None:
    timed_engine.create("old", [tree], passcode=PASSCODE, retention_date=to_epoch_ms(START) + 1)
    timed_engine.create("young", [tree], passcode=PASSCODE)
    clock.now = START + timedelta(days=1)
    caplog.set_level(logging.INFO, logger="strongroom")
    stop = timed_engine.schedule_cleanup(timedelta(milliseconds=50))
    try:
        deadline = time.monotonic() + 30
        while len(timed_engine.list()) > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        timed_engine.close()
    assert [b.name for b in timed_engine.list()] == ["young"]
    summaries = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Cleanup ")]
    assert (
        "Cleanup as of 2026-01-02 00:00:00 UTC: 1 deleted; 1 kept; 0 within the grace period; "
        "0 failed; 0 errors"
    ) in summaries


def test_cleanup_finds_expired_backups_by_listing_alone(
    timed_engine: Engine, clock: Clock, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reads go to the manifests of expired candidates only, never one per backup."""
    for number in range(6):
        expiry = to_epoch_ms(START) + 1 if number % 2 else None
        timed_engine.create(f"b{number}", [tree], passcode=PASSCODE, retention_date=expiry)
    store = timed_engine.store()
    reads: list[str] = []
    real_get = store.get
    monkeypatch.setattr(
        store, "get", lambda key, limit=None: reads.append(key) or real_get(key, limit=limit)
    )
    clock.now = START + timedelta(days=1)
    report = timed_engine.cleanup()
    assert sorted(e.name for e in report.entries) == ["b1", "b3", "b5"]
    assert report.kept == 3
    assert sorted(reads) == ["manifests/b1", "manifests/b3", "manifests/b5"]


def test_the_index_follows_updates_and_deletes(
    timed_engine: Engine, clock: Clock, home: Path, tree: Path
) -> None:
    index = home / "stores" / "backupsDefault" / "retention"
    timed_engine.create("b", [tree], passcode=PASSCODE, retention_date=to_epoch_ms(START) + 1)
    timed_engine.update_retention("b", to_epoch_ms(START) + 10 * 86_400_000)
    [entry] = [p.name for p in index.rglob("*") if p.is_file()]
    assert entry.endswith(f".{to_epoch_ms(START) + 10 * 86_400_000}")
    timed_engine.delete("b")
    assert [p for p in index.rglob("*") if p.is_file()] == []


def test_an_index_entry_the_manifest_contradicts_is_not_trusted(
    timed_engine: Engine, clock: Clock, home: Path, tree: Path
) -> None:
    """An update cut off after writing its new entry: the manifest decides."""
    later = to_epoch_ms(START) + 10 * 86_400_000
    info = timed_engine.create("b", [tree], passcode=PASSCODE, retention_date=later)
    assert info.retention_date is not None
    [entry] = [
        p for p in (home / "stores" / "backupsDefault" / "retention").rglob("*") if p.is_file()
    ]
    entry.with_name(entry.name.rsplit(".", 1)[0] + f".{to_epoch_ms(START) + 1}").touch()
    clock.now = START + timedelta(days=1)
    report = timed_engine.cleanup()
    assert report.entries == [] and report.kept == 1
    assert [b.name for b in timed_engine.list()] == ["b"]


def test_a_retention_update_racing_a_delete_never_leaves_a_backup_without_data(
    timed_engine: Engine, clock: Clock, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whichever order the update's manifest write and the delete's steps take, the delete
    wins and nothing is listed that cannot be restored."""
    store = timed_engine.store()
    later = to_epoch_ms(START) + 10 * 86_400_000

    # The update writes the manifest back after the delete removed it, before the data went.
    timed_engine.create("first", [tree], passcode=PASSCODE)
    document = store.get("manifests/first")
    real_delete = store.delete

    def delete_with_a_racing_update(keys: list[str]) -> None:
        if any(key.startswith("data/first/") for key in keys):
            store.put("manifests/first", document, overwrite=True)
        real_delete(keys)

    with monkeypatch.context() as patch:
        patch.setattr(store, "delete", delete_with_a_racing_update)
        timed_engine.delete("first")
    assert timed_engine.list() == []

    # The update writes the manifest back after the whole delete.
    timed_engine.create("second", [tree], passcode=PASSCODE)
    real_put = store.put

    def put_after_a_whole_delete(key: str, data: bytes, **options: Any) -> None:
        if key == "manifests/second":
            with monkeypatch.context() as patch:
                patch.setattr(store, "put", real_put)
                timed_engine.delete("second")
        real_put(key, data, **options)

    with monkeypatch.context() as patch:
        patch.setattr(store, "put", put_after_a_whole_delete)
        with pytest.raises(BackupNotFoundError, match="deleted while its retentionDate"):
            timed_engine.update_retention("second", later)
    assert timed_engine.list() == []
    assert store.list("retention/") == [] and store.list("data/") == []


def test_extending_a_backup_whose_data_objects_are_missing_changes_nothing(
    timed_engine: Engine, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lock store extends each data object's lock; S3 answers NoSuchKey for a missing one."""
    timed_engine.create("damaged", [tree], passcode=PASSCODE)
    store = timed_engine.store()

    def missing(keys: list[str], until: datetime) -> None:
        raise FileNotFoundError(keys[0])

    monkeypatch.setattr(store, "extend_retention", missing)
    with pytest.raises(IntegrityError, match="missing data objects"):
        timed_engine.update_retention("damaged", to_epoch_ms(START) + 86_400_000)
    assert timed_engine.info("damaged").retention_date is None
    assert [obj.key.rsplit(".", 1)[1] for obj in store.list("retention/")] == ["never"]


@given(st.integers(0, MAX_EPOCH_MS))
@example(2**34 - 1)
def test_epoch_milliseconds_round_trip_exactly(value: int) -> None:
    """Through float seconds, 2**34 - 1 ms came back one millisecond short."""
    assert to_epoch_ms(from_epoch_ms(value)) == value


def test_an_index_entry_no_datetime_holds_is_a_stray_object() -> None:
    backup_id = "0" * 32
    assert parse_retention_key(f"retention/x/{backup_id}.{MAX_EPOCH_MS + 1}") is None
    assert parse_retention_key(f"retention/x/{backup_id}.{2**34 - 1}") == (
        "x",
        backup_id,
        datetime(1970, 7, 18, 20, 11, 9, 183000, tzinfo=UTC),
    )


def test_a_cleanup_report_counts_what_it_did_by_action() -> None:
    """The command line counted every entry as expired, a swept leftover too."""
    entries = [
        CleanupEntry("s", name, None, action)
        for name, action in (("a", "deleted"), ("b", "swept"), ("c", "swept"))
    ]
    now = datetime.now(UTC)
    assert CleanupReport(now, False, entries).counted() == "1 deleted, 2 swept"
    assert CleanupReport(now, True).counted() == "nothing expired"


def test_two_retention_updates_at_once_leave_the_entry_the_manifest_says(
    timed_engine: Engine, clock: Clock, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each update removed the other's index entry as an old one: the backup was left with
    none, and no cleanup ever found it expired (helper-70's race trial, 3 runs in 15)."""
    info = timed_engine.create("b", [tree], passcode=PASSCODE)
    first, second = (to_epoch_ms(START) + days * 86_400_000 for days in (1, 2))
    index_of = strongroom.engine.index_of

    def after_the_other_update(store: Store, manifest: Manifest) -> list[IndexEntry]:
        monkeypatch.setattr(strongroom.engine, "index_of", index_of)
        timed_engine.update_retention("b", second)  # whole, between the first one's steps
        return index_of(store, manifest)

    monkeypatch.setattr(strongroom.engine, "index_of", after_the_other_update)
    timed_engine.update_retention("b", first)
    said = timed_engine.info("b").retention_date
    listed = timed_engine.store().list("retention/")
    assert ("b", info.backup_id, said) in [parse_retention_key(o.key) for o in listed]
    clock.now = START + timedelta(days=3)
    assert [entry.name for entry in timed_engine.cleanup().entries] == ["b"]


def test_an_update_that_a_delete_overtook_says_the_backup_was_deleted(
    timed_engine: Engine, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its data gone because a delete ran meanwhile, not damage: exit 5 'deleted', as a
    restore says, not 8 'missing data objects (deleted meanwhile, or damaged)'."""
    timed_engine.create("b", [tree], passcode=PASSCODE)
    data_keys = strongroom.engine.data_keys

    def after_a_delete(store: Store, manifest: Manifest) -> list[str]:
        timed_engine.delete("b")
        return data_keys(store, manifest)

    monkeypatch.setattr(strongroom.engine, "data_keys", after_a_delete)
    with pytest.raises(BackupNotFoundError, match="was deleted while it was being updated"):
        timed_engine.update_retention("b", to_epoch_ms(START) + 86_400_000)
    assert timed_engine.list() == []
