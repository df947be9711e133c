"""Schedules: recurrence parsing, definition, the runner's slots (with an injected clock),
claims across replicas, and the cleanup sweep of claims.

The real `serve` processes that run schedules are in test_web_server.py.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import stat
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest

from strongroom import (
    ConfigError,
    Engine,
    IntegrityError,
    InvalidNameError,
    JobHandle,
    UnknownStoreError,
    WriteKey,
)
from strongroom.cli import main
from strongroom.config import StoresConfig, StoreSpec
from strongroom.errors import JobError, JobStoreUnavailableError, UnknownScheduleError
from strongroom.format import (
    CLAIMS_PREFIX,
    MAX_DESCRIPTION_LENGTH,
    claim_key,
    manifest_key,
    parse_claim_key,
)
from strongroom.jobs import JobStatus
from strongroom.scheduler import ScheduleRunner, claim, run_now, runs
from strongroom.schedules import (
    Recurrence,
    Schedule,
    define,
    get_schedule,
    load_schedules,
    parse_duration,
    parse_keep_days,
    remove,
    update,
)
from tests.conftest import (
    FAST_KDF,
    PASSCODE,
    SMALL_CHUNK,
    MountTables,
    damage_write_key,
    write_key_secrets,
)

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
T = TypeVar("T")


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(T0 + timedelta(seconds=5))


@pytest.fixture
def engine(home: Path, clock: Clock) -> Iterator[Engine]:
    """An engine on the test's clock, so retention dates count from the slots' time."""
    with Engine(kdf=FAST_KDF, chunk_size=SMALL_CHUNK, clock=clock) as engine:
        yield engine


@pytest.fixture
def source(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    (root / "file.txt").write_text("scheduled bytes\n")
    return root


def _define(engine: Engine, source: Path, name: str = "nightly", **options: object) -> Schedule:
    settings: dict[str, object] = {"every": "1m", "keep_days": 3, "sources": [str(source)]}
    settings.update(options)
    return define(engine, name, passcode=PASSCODE, now=T0, **settings)  # type: ignore[arg-type]


# -- recurrences ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("every", "cron", "fragments"),
    [
        ("0s", None, ["every '0s'", "30s, 15m, 6h or 1d"]),
        ("15", None, ["every '15'", "whole number of seconds, minutes, hours or days"]),
        ("-5m", None, ["every '-5m'"]),
        ("400d", None, ["at most 366d", "cron expression"]),
        (None, "61 * * * *", ['cron "61 * * * *"', "bad minute", "0-59", "five fields"]),
        (None, "0 25 * * *", ["bad hour", "0-23"]),
        (None, "* * *", ["does not have five fields", '"0 2 * * *"']),
        (None, "0 0 30 2 *", ["would never run", "none of its months has the days"]),
        (None, "0 0 32 * *", ["bad day-of-month", "1-31"]),
        ("1h", "0 * * * *", ["exactly one"]),
        (None, None, ["exactly one"]),
    ],
)
def test_a_bad_recurrence_says_what_to_write(
    every: str | None, cron: str | None, fragments: list[str]
) -> None:
    with pytest.raises(ConfigError) as caught:
        Recurrence.parse(every, cron)
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_durations_read_back_as_written() -> None:
    assert parse_duration("30s") == timedelta(seconds=30)
    assert parse_duration(" 15M ") == timedelta(minutes=15)
    assert Recurrence.parse("90m", None).to_dict() == {"every": "90m", "cron": None}
    assert Recurrence.parse("24h", None).to_dict() == {"every": "1d", "cron": None}
    assert parse_keep_days("never") is None
    assert parse_keep_days("-1") is None
    assert parse_keep_days(14) == 14
    with pytest.raises(ConfigError, match="1 to 36500, or never"):
        parse_keep_days("0")


def test_slots_fall_in_utc_the_same_for_every_replica() -> None:
    every = Recurrence.parse("15m", None)
    moment = datetime(2026, 3, 1, 12, 7, 3, 500_000, tzinfo=UTC)
    assert every.latest(moment) == datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert every.latest(datetime(2026, 3, 1, 12, 15, tzinfo=UTC)) == datetime(
        2026, 3, 1, 12, 15, tzinfo=UTC
    )
    following = every.following(moment)
    assert [next(following), next(following)] == [
        datetime(2026, 3, 1, 12, 15, tzinfo=UTC),
        datetime(2026, 3, 1, 12, 30, tzinfo=UTC),
    ]
    cron = Recurrence.parse(None, "0 2 * * *")
    assert cron.latest(moment) == datetime(2026, 3, 1, 2, 0, tzinfo=UTC)
    assert cron.latest(datetime(2026, 3, 2, 2, 0, tzinfo=UTC)) == datetime(
        2026, 3, 2, 2, 0, tzinfo=UTC
    )
    assert next(cron.following(moment)) == datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
    # another timezone names the same moment: still the same slot
    assert cron.latest(moment.astimezone(tz=None)) == cron.latest(moment)


# -- definition -------------------------------------------------------------------------


def test_a_schedule_keeps_a_write_key_and_never_the_passcode(
    engine: Engine, home: Path, source: Path
) -> None:
    schedule = _define(engine, source, description="every minute")
    path = home / "config.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert PASSCODE not in text
    table = tomllib.loads(text)["schedules"]["nightly"]
    assert table["every"] == "1m"
    assert table["keep_days"] == 3
    assert table["store"] == "backupsDefault"  # the default, named at definition
    assert set(table["write_key"]) >= {"publicKey", "writerKey", "salt"}
    assert PASSCODE not in repr(schedule)
    assert get_schedule(StoresConfig.load(), "nightly") == schedule
    # editing the stores keeps the schedules, and a store in use cannot be removed
    config = StoresConfig.load()
    config.add(StoreSpec("other", (home / "other").as_uri()))
    config.save()
    Engine().init_store("other")  # configured by hand: made and marked once
    assert "nightly" in StoresConfig.load().schedules
    define(engine, "elsewhere", passcode=PASSCODE, every="1h", store="other")
    config = StoresConfig.load()
    with pytest.raises(
        ConfigError, match="schedule elsewhere backs up into store 'other'; remove it"
    ):
        config.remove("other")
    define(engine, "also", passcode=PASSCODE, every="1h", store="other")
    with pytest.raises(ConfigError, match="schedules also, elsewhere back up into .*; remove them"):
        StoresConfig.load().remove("other")
    with pytest.raises(ConfigError, match="embedded default store and cannot be removed"):
        config.remove("backupsDefault")  # not "remove the schedules first": no help


def test_no_repr_shows_the_write_key(engine: Engine, home: Path, source: Path) -> None:
    schedule = _define(engine, source)
    secrets = write_key_secrets(home / "config.toml", "nightly")
    config = StoresConfig.load()
    shown = [
        repr(config),
        str(config),
        repr(engine.config),
        repr(schedule),
        str(schedule),
        repr(get_schedule(config, "nightly")),
        json.dumps(schedule.to_dict(T0)),
    ]
    for text in shown:
        for secret in secrets:
            assert secret not in text


def test_the_passcode_is_asked_outside_the_lock_and_the_name_checked_again(
    engine: Engine, home: Path, source: Path
) -> None:
    """An operator at the prompt holds up no other edit (a replica's API, another
    operator); one who was quicker to take the name wins, and nothing is overwritten."""
    other = threading.Thread(target=lambda: _define(engine, source, every="6h"))

    def prompt() -> str:
        other.start()  # another operator, while this one types
        other.join(30)
        return PASSCODE

    with pytest.raises(ConfigError, match="'nightly' already exists"):
        define(engine, "nightly", passcode=prompt, every="1h")
    assert str(get_schedule(StoresConfig.load(), "nightly").recurrence) == "every 6h"


def test_a_store_without_atomic_put_if_absent_takes_no_schedule(
    engine: Engine, home: Path, source: Path
) -> None:
    """Its claims are check-then-put: two replicas could both win a slot."""
    config = StoresConfig.load()
    config.add(StoreSpec("racy", "memory://racy"))  # the generic fsspec backend
    config.save()
    asked = []
    with pytest.raises(ConfigError) as caught:
        define(
            engine,
            "nightly",
            passcode=lambda: asked.append(1) or PASSCODE,
            every="1h",
            store="racy",
        )
    message = str(caught.value)
    assert "'racy' (memory://racy) cannot take schedules" in message
    assert "put-if-absent" in message and "strongroom stores validate racy" in message
    assert asked == []  # refused before the passcode
    assert not engine.store("racy").capabilities.put_if_absent
    assert StoresConfig.load().schedules == {}


@pytest.mark.parametrize(
    "name", ["bad/name", ".hidden", "a..b", "x" * 109, "create", "", "with space"]
)
def test_a_name_that_cannot_name_backups_is_refused(
    engine: Engine, home: Path, source: Path, name: str
) -> None:
    with pytest.raises(InvalidNameError):
        _define(engine, source, name)
    assert not (home / "config.toml").exists()


def test_an_unknown_store_and_a_duplicate_name_are_refused(
    engine: Engine, home: Path, source: Path
) -> None:
    with pytest.raises(UnknownStoreError, match="No store is named 'nowhere'"):
        _define(engine, source, store="nowhere")
    assert not (home / "config.toml").exists()
    _define(engine, source)
    before = (home / "config.toml").read_text()
    with pytest.raises(ConfigError, match="already exists"):
        _define(engine, source, every="1h")
    assert (home / "config.toml").read_text() == before
    assert _define(engine, source, "x" * 108).backup_name(T0) == "x" * 108 + "-2026-03-01-12-00-00"


def test_update_and_remove(engine: Engine, source: Path) -> None:
    _define(engine, source)
    changed = update(engine, "nightly", cron="30 1 * * *", keep_days="never", enabled=False)
    assert (changed.recurrence.cron, changed.keep_days, changed.enabled) == (
        "30 1 * * *",
        None,
        False,
    )
    assert get_schedule(StoresConfig.load(), "nightly") == changed
    refusals = [({"description": 5}, "must be text"), ({"description": ["x"]}, "must be text")]
    refusals.append(({"description": "x" * (MAX_DESCRIPTION_LENGTH + 1)}, "shorten it"))
    for bad, why in refusals:  # as define refuses them: every run would fail
        with pytest.raises(ConfigError, match=f"description {why}|description is .*{why}"):
            update(engine, "nightly", **bad)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match=f"description {why}|description is .*{why}"):
            _define(engine, source, "other", **bad)
    assert get_schedule(StoresConfig.load(), "nightly") == changed
    remove(engine, "nightly")
    with pytest.raises(UnknownScheduleError, match="No schedule is named 'nightly'"):
        remove(engine, "nightly")


# -- the runner -------------------------------------------------------------------------


def _backups(engine: Engine) -> list[str]:
    return [info.name for info in engine.list()]


def _held(release: threading.Event) -> Callable[[JobHandle], None]:
    """A job's work that runs until `release` is set (a previous run still going)."""

    def work(job: JobHandle) -> None:
        release.wait(30)

    return work


def _finish(engine: Engine, outcomes: list) -> None:
    for outcome in outcomes:
        if outcome.job is not None:
            assert engine.jobs.wait(outcome.job.jobid, 30).status is JobStatus.COMPLETED


def test_each_slot_runs_once_and_a_missed_backlog_never_runs(
    engine: Engine, source: Path, clock: Clock
) -> None:
    _define(engine, source)
    runner = ScheduleRunner(engine, clock=clock)
    first = runner.tick()
    assert [(o.action, o.slot) for o in first] == [("submitted", T0)]
    _finish(engine, first)
    assert runner.tick() == []  # the same slot again: nothing
    clock.now = T0 + timedelta(minutes=10, seconds=30)  # ten slots missed: the latest runs
    later = runner.tick()
    assert [(o.action, o.slot) for o in later] == [("submitted", T0 + timedelta(minutes=10))]
    _finish(engine, later)
    assert _backups(engine) == ["nightly-2026-03-01-12-00-00", "nightly-2026-03-01-12-10-00"]
    info = engine.info("nightly-2026-03-01-12-10-00")
    assert info.scheduled
    assert info.to_dict()["scheduleType"] == "SCHEDULED"
    assert info.retention_date == T0 + timedelta(minutes=10, days=3)
    # a new runner (a restart) finds the latest slot claimed: nothing runs again
    assert [o.action for o in ScheduleRunner(engine, clock=clock).tick()] == ["claimed elsewhere"]


def test_a_slot_one_replica_could_not_start_shows_the_run_another_made(
    engine: Engine, source: Path, clock: Clock, tmp_path: Path
) -> None:
    """A replica whose source is gone records the slot FAILED and releases it; another
    replica then claims and runs it. `schedules show` took the newest job, the FAILED
    record made 1 ms later, as the slot's last run, for a backup that exists."""
    schedule = _define(engine, source)
    [ran] = ScheduleRunner(engine, clock=clock).tick()
    assert ran.job is not None
    assert engine.jobs.wait(ran.job.jobid, 30).status is JobStatus.COMPLETED
    elsewhere = ScheduleRunner(engine, [tmp_path / "unmounted"], clock=clock)
    clock.now += timedelta(milliseconds=1)  # its record comes after the run started
    failed = elsewhere._failed_job(schedule, ran.slot, ConfigError("The source is gone."))
    assert failed is not None and engine.jobs.wait(failed.jobid, 30).status is JobStatus.FAILED
    assert [job.jobid for job in runs(engine, schedule)] == [ran.job.jobid, failed.jobid]


def test_a_slot_that_cannot_start_is_a_failed_job_of_its_schedule(
    engine: Engine, source: Path, clock: Clock
) -> None:
    """Unattended runs are watched through the jobs (and `schedules show`): a slot that
    fails before its backup starts (a source gone, a store not mounted) is one, FAILED,
    not only a line in the server's log."""
    schedule = _define(engine, source)
    shutil.rmtree(source)
    [outcome] = ScheduleRunner(engine, clock=clock).tick()
    assert outcome.action == "failed" and outcome.job is not None
    failed = engine.jobs.wait(outcome.job.jobid, 30)
    assert failed.status is JobStatus.FAILED
    assert str(source) in failed.messages[-1]
    assert [job.jobid for job in runs(engine, schedule)] == [failed.jobid]
    assert (failed.name, failed.store, failed.scheduled) == (
        "nightly-2026-03-01-12-00-00",
        "backupsDefault",
        True,
    )
    assert _backups(engine) == []


def test_a_slot_that_cannot_start_is_one_failed_job_among_replicas(
    engine: Engine, source: Path, clock: Clock
) -> None:
    """Replicas sharing the job table fail the slot alike (no claim in the store orders
    them, as none is taken): one FAILED job, not one a replica, nor another after a
    restart; the next slot that cannot start is recorded again."""
    _define(engine, source)
    shutil.rmtree(source)
    with Engine(kdf=FAST_KDF, chunk_size=SMALL_CHUNK, clock=clock) as replica:
        outcomes = [ScheduleRunner(e, clock=clock).tick() for e in (engine, replica, engine)]
        assert [o.action for [o] in outcomes] == ["failed"] * 3
        assert [o.job is not None for [o] in outcomes] == [True, False, False]
        assert engine.jobs.find(limit=None)[1] == 1
        clock.now += timedelta(minutes=1)
        [[later]] = [ScheduleRunner(replica, clock=clock).tick()]
        assert later.job is not None and later.slot == T0 + timedelta(minutes=1)
        assert engine.jobs.find(limit=None)[1] == 2


def test_a_slot_whose_store_is_on_a_disk_not_mounted_fails_not_skips(
    engine: Engine, source: Path, clock: Clock, tmp_path: Path, mount_tables: MountTables
) -> None:
    """A store under a mount point that /etc/fstab lists and nothing is mounted on is the
    disk below: its slot is a FAILED job saying so, even where that disk holds a claim of
    the slot, which would otherwise skip it quietly as claimed elsewhere."""
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    mount_tables.expect(mount_point)
    mount_tables.mount(mount_point)
    engine.add_store(StoreSpec("nas", (mount_point / "backups").as_uri()))
    schedule = _define(engine, source, store="nas")
    assert claim(engine, schedule, T0)  # left on the disk below, say by an older version
    mount_tables.unmount(mount_point)
    [outcome] = ScheduleRunner(engine, clock=clock).tick()
    assert outcome.action == "failed" and outcome.job is not None, outcome
    failed = engine.jobs.wait(outcome.job.jobid, 30)
    assert failed.status is JobStatus.FAILED
    assert "nothing is mounted there now" in failed.messages[-1]


def test_a_claim_planted_far_ahead_never_stops_a_schedule(
    engine: Engine, home: Path, source: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """Attack: one object under schedules/<name>/ with a slot in 9999, put by anyone who
    can write to the store, was the high-water mark: no slot before it would ever run."""
    schedule = _define(engine, source)
    planted = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert claim(engine, schedule, planted)
    with caplog.at_level(logging.WARNING, logger="strongroom"):
        ran = ScheduleRunner(engine, clock=clock).tick()
    assert [(o.action, o.slot) for o in ran] == [("submitted", T0)]
    _finish(engine, ran)
    assert any("ignoring the claim of slot 9999-12-31" in r.getMessage() for r in caplog.records)
    # cleanup keeps the real newest claim as the high-water mark, and sweeps the planted one
    _age_claims(home, seconds=2 * 86400)
    engine.cleanup()
    assert [o.key for o in engine.store().list(CLAIMS_PREFIX)] == [claim_key("nightly", T0)]


def test_slots_before_the_definition_never_run(engine: Engine, source: Path, clock: Clock) -> None:
    define(
        engine,
        "late",
        passcode=PASSCODE,
        every="1h",
        sources=[str(source)],
        now=T0 + timedelta(seconds=1),
    )
    runner = ScheduleRunner(engine, clock=clock)
    clock.now = T0 + timedelta(minutes=59)
    assert runner.tick() == []  # 12:00 came before the definition
    clock.now = T0 + timedelta(hours=1)
    assert [o.slot for o in runner.tick()] == [T0 + timedelta(hours=1)]


def test_a_paused_schedule_skips_and_runs_its_latest_slot_when_resumed(
    engine: Engine, source: Path, clock: Clock
) -> None:
    _define(engine, source)
    update(engine, "nightly", enabled=False)
    clock.now = T0 + timedelta(minutes=3, seconds=1)
    runner = ScheduleRunner(engine, clock=clock)
    assert runner.tick() == []
    update(engine, "nightly", enabled=True)
    resumed = runner.tick()
    assert [(o.action, o.slot) for o in resumed] == [("submitted", T0 + timedelta(minutes=3))]
    _finish(engine, resumed)


def test_a_slot_whose_previous_run_is_going_is_skipped(
    engine: Engine, source: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    schedule = _define(engine, source)
    release = threading.Event()
    previous = engine.jobs.submit(
        "create",
        _held(release),
        name=schedule.backup_name(T0),
        scheduled=True,
        store="backupsDefault",
    )
    clock.now = T0 + timedelta(minutes=1)
    runner = ScheduleRunner(engine, clock=clock)
    with caplog.at_level(logging.WARNING, logger="strongroom"):
        skipped = runner.tick()
    assert [o.action for o in skipped] == ["still running"]
    assert previous.jobid in caplog.text and "still going" in caplog.text
    assert not engine.store().exists(claim_key("nightly", T0 + timedelta(minutes=1)))
    release.set()
    engine.jobs.wait(previous.jobid, 30)
    clock.now += timedelta(minutes=1)
    ran = runner.tick()
    assert [o.action for o in ran] == ["submitted"]
    _finish(engine, ran)


def test_a_slot_claimed_by_another_replica_is_skipped_quietly(
    engine: Engine, source: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    schedule = _define(engine, source)
    assert claim(engine, schedule, T0)  # the other replica, whose run of the slot still goes
    release = threading.Event()
    other = engine.jobs.submit(
        "create", _held(release), name=schedule.backup_name(T0), scheduled=True
    )
    assert not claim(engine, schedule, T0)
    with caplog.at_level(logging.INFO, logger="strongroom"):
        outcomes = ScheduleRunner(engine, clock=clock).tick()
    release.set()
    engine.jobs.wait(other.jobid, 30)
    assert [o.action for o in outcomes] == ["claimed elsewhere"]
    lines = [r for r in caplog.records if "nightly" in r.getMessage()]
    assert [r.levelno for r in lines] == [logging.INFO]
    assert "claimed by another replica" in lines[0].getMessage()
    assert engine.jobs.find(limit=None)[1] == 1  # the other replica's
    assert _backups(engine) == []


def _down_once(real: Callable[..., T]) -> Callable[..., T]:
    """`real`, except that its first call fails as when the job database is down."""
    calls = []

    def once(*args: object, **kwargs: object) -> T:
        calls.append(args)
        if len(calls) == 1:
            raise JobStoreUnavailableError("The job database cannot be reached.")
        return real(*args, **kwargs)

    return once


@pytest.mark.parametrize("failing", ["submit", "find"])
def test_a_slot_is_not_lost_while_the_job_database_is_down(
    engine: Engine,
    source: Path,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    failing: str,
) -> None:
    """Submitting the job (after the claim) or finding the previous runs (before it)
    fails once: no claim stays without a job, and the next tick runs the slot."""
    _define(engine, source)
    if failing == "submit":
        monkeypatch.setattr(engine, "submit_backup", _down_once(engine.submit_backup))
    else:
        monkeypatch.setattr(engine.jobs, "find", _down_once(engine.jobs.find))
    runner = ScheduleRunner(engine, clock=clock)
    with caplog.at_level(logging.WARNING, logger="strongroom"):
        (postponed,) = runner.tick()
    assert (postponed.action, postponed.slot) == ("postponed", T0)
    assert "cannot be reached" in caplog.text
    assert not engine.store().exists(claim_key("nightly", T0))
    (ran,) = runner.tick()
    assert (ran.action, ran.slot) == ("submitted", T0)
    _finish(engine, [ran])
    assert _backups(engine) == ["nightly-2026-03-01-12-00-00"]


def test_an_unexpected_error_is_logged_and_the_schedules_keep_running(
    engine: Engine,
    source: Path,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _define(engine, source, "a")
    _define(engine, source, "b")
    submit = engine.submit_backup

    def buggy(name: str, *args: object, **kwargs: object) -> object:
        if name.startswith("a-"):
            raise RuntimeError("a bug")
        return submit(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(engine, "submit_backup", buggy)
    runner = ScheduleRunner(engine, clock=clock)
    with caplog.at_level(logging.WARNING, logger="strongroom"):
        outcomes = runner.tick()  # one schedule's error: the other still runs
    assert [(o.schedule, o.action) for o in outcomes] == [("a", "failed"), ("b", "submitted")]
    assert "RuntimeError: a bug" in caplog.text  # with its traceback
    _finish(engine, outcomes)
    # an error out of a whole tick: the thread logs it and goes on ticking
    monkeypatch.setattr("strongroom.scheduler.MAX_SLEEP", 0.01)
    ticks: list[int] = []

    def tick() -> list[object]:
        ticks.append(len(ticks))
        if len(ticks) == 1:
            raise RuntimeError("a bug in tick")
        return []

    monkeypatch.setattr(runner, "tick", tick)
    stop = runner.start()
    try:
        deadline = time.monotonic() + 10
        while len(ticks) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
    assert len(ticks) >= 3, "the runner thread died"
    assert "RuntimeError: a bug in tick" in caplog.text


def test_a_damaged_schedule_is_named_in_its_command_quoted_for_a_shell(home: Path) -> None:
    """A table's name written by hand may hold anything; the command that removes it,
    pasted into a shell, must remove that schedule and run nothing else."""
    names = ["<img src=x> it's; rm -rf ~", "-v"]
    home.mkdir()
    tables = "".join(f"{json.dumps(name)} = 1\n" for name in names)
    (home / "config.toml").write_text(f"[schedules]\n{tables}")
    _, damaged = load_schedules(StoresConfig.load())
    quoted = "'<img src=x> it'\"'\"'s; rm -rf ~'"
    assert f"(strongroom schedules remove -- {quoted})" in damaged[names[0]]
    for name in names:  # the command as printed, run as a shell would split it
        command = re.search(r"\(strongroom (schedules remove .*)\)", damaged[name])
        assert command is not None
        assert main(shlex.split(command.group(1))) == 0
    assert load_schedules(StoresConfig.load()) == ({}, {})


def test_a_damaged_schedule_stops_no_other(
    engine: Engine,
    home: Path,
    source: Path,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One schedule's table damaged by hand: it is named wherever schedules are listed and
    logged once; every other schedule runs (once, every run stopped until it was mended)."""
    _define(engine, source, "broken")
    _define(engine, source, "healthy")
    damage_write_key(home / "config.toml", "broken")
    runner = ScheduleRunner(engine, clock=clock)
    with caplog.at_level(logging.WARNING, logger="strongroom"):
        first = runner.tick()
        _finish(engine, first)
        clock.now += timedelta(minutes=1)
        second = runner.tick()
        _finish(engine, second)
    assert [(o.schedule, o.action) for o in first + second] == [
        ("healthy", "submitted"),
        ("healthy", "submitted"),
    ]
    warnings = [r.getMessage() for r in caplog.records if "broken" in r.getMessage()]
    assert len(warnings) == 1 and "[schedules.broken] is damaged" in warnings[0]
    assert "schedules remove -- broken" in warnings[0]
    capsys.readouterr()
    assert main(["schedules", "list", "--json"]) == 3
    out, err = capsys.readouterr()
    listed = json.loads(out)
    assert [s["name"] for s in listed["schedules"]] == ["healthy"]
    assert [d["name"] for d in listed["damaged"]] == ["broken"]
    assert "1 schedule(s) are damaged and do not run (the others do)" in err
    assert main(["schedules", "list"]) == 3
    out, err = capsys.readouterr()
    assert "healthy" in out and "[schedules.broken] is damaged" in err
    assert main(["schedules", "remove", "broken"]) == 0  # as the message says to
    assert main(["schedules", "list"]) == 0
    # written by hand: an entry that is no table, and a description no backup can carry
    config = home / "config.toml"
    text = config.read_text().replace('description = ""', f'description = "{"x" * 5000}"')
    config.write_text(text + "\n[schedules]\nnot-a-table = 1\n")
    found, damaged = load_schedules(StoresConfig.load())
    assert list(found) == [] and sorted(damaged) == ["healthy", "not-a-table"]
    assert "shorten it" in damaged["healthy"] and "is not a table" in damaged["not-a-table"]
    assert main(["schedules", "remove", "not-a-table"]) == 0


def test_no_one_else_can_take_a_future_slots_name(
    engine: Engine, home: Path, source: Path, clock: Clock, tmp_path: Path
) -> None:
    """A manual create (a write key's, an API caller's) of the name a schedule gives a slot
    would make that slot's run fail; it is refused, and the slot then runs."""
    _define(engine, source, "sq")
    squat = "sq-2026-03-01-12-01-00"
    write_key = WriteKey.derive(PASSCODE, kdf=FAST_KDF)
    for credential in ({"passcode": PASSCODE}, {"write_key": write_key}):
        with pytest.raises(ConfigError, match="the schedule 'sq' gives its backup of that slot"):
            engine.create(squat, [source], **credential)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="the schedule 'sq' gives"):
            engine.submit_backup(squat, [source], **credential)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="the schedule 'SQ' gives"):  # a store may fold case
        engine.create(squat.upper(), [source], passcode=PASSCODE)
    engine.create("sq-notes", [source], passcode=PASSCODE)  # not a slot's shape
    engine.create("other-2026-03-01-12-01-00", [source], passcode=PASSCODE)  # no such schedule
    clock.now = T0 + timedelta(minutes=1, seconds=1)
    outcomes = ScheduleRunner(engine, clock=clock).tick()
    assert [(o.action, o.slot) for o in outcomes] == [("submitted", T0 + timedelta(minutes=1))]
    _finish(engine, outcomes)
    assert squat in _backups(engine)
    # another home, which defines no schedule, writing into the same store with a write
    # key: the schedule's claims there tell the name is its
    store_dir = home / "stores" / "backupsDefault"
    elsewhere = Engine(home=tmp_path / "elsewhere", kdf=FAST_KDF, chunk_size=SMALL_CHUNK)
    elsewhere.add_store(StoreSpec("shared", store_dir.as_uri()))
    with pytest.raises(ConfigError, match="the schedule 'sq' gives"):
        elsewhere.create("sq-2026-03-01-12-05-00", [source], write_key=write_key, store="shared")
    elsewhere.close()


def test_run_now_is_a_job_like_any_create(engine: Engine, source: Path) -> None:
    _define(engine, source, keep_days="never")
    moment = datetime(2026, 3, 1, 12, 0, 7, 250_000, tzinfo=UTC)
    job = run_now(engine, "nightly", now=moment)
    assert job.scheduled and job.name == "nightly-2026-03-01-12-00-07"
    done = engine.jobs.wait(job.jobid, 30)
    assert done.status is JobStatus.COMPLETED, done.messages
    assert done.result is not None and done.result["retentionDate"] == -1
    with pytest.raises(JobError, match="claimed already"):  # the same second
        run_now(engine, "nightly", now=moment)
    release = threading.Event()
    going = engine.jobs.submit(
        "create", _held(release), name="nightly-2026-03-01-12-00-08", scheduled=True
    )
    with pytest.raises(JobError, match=f"previous run \\(job {going.jobid}\\) is still going"):
        run_now(engine, "nightly", now=moment + timedelta(seconds=2))
    release.set()
    engine.jobs.wait(going.jobid, 30)
    with pytest.raises(UnknownScheduleError):
        run_now(engine, "nope")
    define(engine, "bare", passcode=PASSCODE, every="1h")
    with pytest.raises(ConfigError, match="has no sources"):  # to define, not a job failure
        run_now(engine, "bare")
    assert run_now(engine, "bare", [str(source)]).name.startswith("bare-")


# -- claims in the store ----------------------------------------------------------------


def test_claims_never_collide_with_backups_and_are_never_listed(
    engine: Engine, source: Path
) -> None:
    schedule = _define(engine, source, name="schedules")
    assert claim(engine, schedule, T0)
    engine.create("schedules", [source], passcode=PASSCODE)
    assert _backups(engine) == ["schedules"]
    assert parse_claim_key(claim_key("schedules", T0)) == ("schedules", T0)
    assert parse_claim_key("schedules/x/not-a-slot") is None
    assert parse_claim_key("manifests/schedules") is None
    engine.delete("schedules")
    assert engine.store().exists(claim_key("schedules", T0))


def _age_claims(home: Path, seconds: float = 3600) -> None:
    """Make every claim in the embedded store `seconds` old by the store's clock (mtimes)."""
    then = time.time() - seconds
    for path in (home / "stores" / "backupsDefault" / "schedules").rglob("*"):
        os.utime(path, (then, then))


def test_cleanup_sweeps_old_claims_but_each_schedules_latest(home: Path, source: Path) -> None:
    with Engine(kdf=FAST_KDF, leftover_grace=timedelta(minutes=30)) as engine:
        a, b = _define(engine, source, "a"), _define(engine, source, "b")
        slots = [T0 + timedelta(minutes=n) for n in range(3)]
        for slot in slots:
            assert claim(engine, a, slot)
        assert claim(engine, b, T0)
        store = engine.store()
        _age_claims(home)
        assert claim(engine, b, T0 + timedelta(minutes=1))  # new: kept
        dry = engine.cleanup(dry_run=True)
        assert sorted((e.name, e.action) for e in dry.entries) == [
            ("a", "would sweep"),
            ("a", "would sweep"),
            ("b", "would sweep"),
        ]
        assert len(store.list(CLAIMS_PREFIX)) == 5
        report = engine.cleanup()
        assert sorted((e.name, e.action) for e in report.entries) == [
            ("a", "swept"),
            ("a", "swept"),
            ("b", "swept"),
        ]
        assert [o.key for o in store.list(CLAIMS_PREFIX)] == [
            claim_key("a", slots[2]),  # an hour old, but a's latest
            claim_key("b", T0 + timedelta(minutes=1)),
        ]
    with Engine(kdf=FAST_KDF) as engine:  # the default grace: a day
        assert claim(engine, a, slots[2] + timedelta(minutes=1))
        _age_claims(home)
        assert engine.cleanup().entries == []
        assert len(engine.store().list(CLAIMS_PREFIX)) == 3


def test_a_slot_never_runs_twice_once_its_claim_is_swept(
    home: Path, source: Path, clock: Clock
) -> None:
    """Every hour; 12:00 runs; a run now at 12:10; cleanup sweeps the 12:00 claim (the
    12:10 one is the newest, and stays); the 12:00 backup expires; a restarted runner
    must not run 12:00 again: the newest claim is the high-water mark."""
    with Engine(
        kdf=FAST_KDF, chunk_size=SMALL_CHUNK, clock=clock, leftover_grace=timedelta(minutes=30)
    ) as engine:
        _define(engine, source, every="1h", keep_days=1)
        first = ScheduleRunner(engine, clock=clock).tick()
        assert [(o.action, o.slot) for o in first] == [("submitted", T0)]
        _finish(engine, first)
        clock.now = T0 + timedelta(minutes=10)
        now = run_now(engine, "nightly", now=clock.now)
        assert engine.jobs.wait(now.jobid, 30).status is JobStatus.COMPLETED
        _age_claims(home)
        swept = engine.cleanup()
        assert [(e.name, e.action) for e in swept.entries] == [("nightly", "swept")]
        assert [o.key for o in engine.store().list(CLAIMS_PREFIX)] == [
            claim_key("nightly", T0 + timedelta(minutes=10))
        ]
        engine.delete("nightly-2026-03-01-12-00-00")  # as cleanup does once it expires
        clock.now = T0 + timedelta(minutes=30)
        (again,) = ScheduleRunner(engine, clock=clock).tick()  # a restart: 12:00 is due
        assert again.action == "claimed elsewhere"
        assert "newest claim, of 2026-03-01 12:10:00 UTC" in again.message
        assert _backups(engine) == ["nightly-2026-03-01-12-10-00"]
        # an update that moves the slots earlier than the newest claim runs none of them
        update(engine, "nightly", cron="5 12 * * *")
        assert [o.action for o in ScheduleRunner(engine, clock=clock).tick()] == [
            "claimed elsewhere"
        ]
        clock.now = T0 + timedelta(days=1, minutes=6)  # the next slot after it runs
        (later,) = ScheduleRunner(engine, clock=clock).tick()
        assert (later.action, later.slot) == ("submitted", T0 + timedelta(days=1, minutes=5))
        _finish(engine, [later])


def test_cleanup_sweeps_every_old_claim_of_a_removed_schedule(home: Path, source: Path) -> None:
    with Engine(kdf=FAST_KDF, leftover_grace=timedelta(minutes=30)) as engine:
        gone, kept = _define(engine, source, "gone"), _define(engine, source, "kept")
        for schedule in (gone, kept):
            assert claim(engine, schedule, T0)
            assert claim(engine, schedule, T0 + timedelta(minutes=1))
        remove(engine, "gone")
        assert claim(engine, kept, T0 + timedelta(minutes=2))  # "kept" goes on
        _age_claims(home)
        assert claim(engine, _define(engine, source, "young"), T0)  # removed, but within grace
        remove(engine, "young")
        report = engine.cleanup()
        assert sorted((e.name, e.action) for e in report.entries) == [
            ("gone", "swept"),
            ("gone", "swept"),  # its latest too: no slot of it runs any more
            ("kept", "swept"),
            ("kept", "swept"),
        ]
        assert [o.key for o in engine.store().list(CLAIMS_PREFIX)] == [
            claim_key("kept", T0 + timedelta(minutes=2)),
            claim_key("young", T0),
        ]


def test_a_run_past_its_time_out_is_cancelled_and_fails(
    engine: Engine, tmp_path: Path, clock: Clock
) -> None:
    huge = tmp_path / "huge"
    huge.mkdir()
    with (huge / "sparse.img").open("wb") as sparse:
        sparse.truncate(1 << 40)  # minutes of zeros to read; no disk
    _define(engine, huge)
    runner = ScheduleRunner(engine, clock=clock, timeout=lambda: timedelta(seconds=0.3))
    (outcome,) = runner.tick()
    assert outcome.job is not None
    done = engine.jobs.wait(outcome.job.jobid, 30)
    assert done.status is JobStatus.FAILED
    assert "Timed out" in done.messages[-1]
    assert _backups(engine) == []


def test_schedule_type_is_under_the_macs(engine: Engine, source: Path) -> None:
    """A store writer who drops or changes the label is caught by verify (listings, which
    need no passcode, show what the store holds); manual manifests carry no label."""
    _define(engine, source)
    job = run_now(engine, "nightly", now=T0 + timedelta(seconds=5))
    assert engine.jobs.wait(job.jobid, 30).status is JobStatus.COMPLETED
    store, name = engine.store(), str(job.name)
    document = json.loads(store.get(manifest_key(name)))
    assert document["scheduleType"] == "SCHEDULED"
    del document["scheduleType"]  # as a store writer could
    store.put(manifest_key(name), json.dumps(document).encode(), overwrite=True)
    assert engine.info(name).to_dict()["scheduleType"] == "MANUAL"
    with pytest.raises(IntegrityError):
        engine.verify(name, passcode=PASSCODE)
    document["scheduleType"] = "HOURLY"
    store.put(manifest_key(name), json.dumps(document).encode(), overwrite=True)
    with pytest.raises(IntegrityError, match="malformed"):
        engine.info(name)
    manual = engine.create("by-hand", [source], passcode=PASSCODE)
    assert "scheduleType" not in json.loads(store.get(manifest_key("by-hand")))
    assert manual.to_dict()["scheduleType"] == "MANUAL"
