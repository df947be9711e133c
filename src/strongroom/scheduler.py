"""Running schedules: each due slot claimed in its store, then backed up as a job.

A `ScheduleRunner` (`strongroom serve` starts one) wakes at each slot, re-reads the
schedules from the configuration file (so the CLI's edits reach a running server), and
for each enabled schedule looks at its latest slot only. So after downtime at most the
most recent missed slot runs, never a backlog; slots before a schedule was defined
never run.

Several replicas, each slot once, with no coordination service: before a slot runs, the
runner puts `schedules/<name>/<slot>` with put-if-absent into the schedule's store. Of
the `serve` processes sharing the configuration and the store, exactly one wins (on a
store that claims `put_if_absent`); the others log one line and skip the slot. A slot
whose previous run (a scheduled create of an earlier slot of this schedule, active in the
job table, which replicas sharing a home share) is still going is skipped with a warning.

Cleanup sweeps old claims (cleanup.py, `_sweep_claims`), but never a schedule's newest:
that one is the high-water mark. A slot at or before it is never run, since it ran (its
claim may be swept, its backup expired) or a later run superseded it: a run now (which
claims the second it starts in, off the recurrence), or a slot of the recurrence before
an update moved its slots. A claim of a slot later than now (`retention.believable_claim`)
is no high-water mark: someone who can write to the store could otherwise stop a schedule
for good with one object.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, NoReturn

from .config import StoresConfig
from .engine import Engine
from .errors import ConfigError, JobError, JobStoreUnavailableError, StrongroomError
from .format import claim_key, claims_prefix, parse_claim_key, to_epoch_ms, utc_now
from .jobs import Job, JobHandle, JobStatus
from .retention import believable_claim
from .schedules import Schedule, get_schedule, load_schedules

__all__ = ["Outcome", "ScheduleRunner", "claim", "newest_claim", "run_now", "run_slot", "runs"]

logger = logging.getLogger("strongroom")

#: The longest a runner sleeps (seconds), so edits of the schedules are seen this soon.
MAX_SLEEP = 5.0
#: The shortest, so a wake-up a little before a slot does not spin.
MIN_SLEEP = 0.05

#: "postponed": the job database could not be reached; the slot is tried again next tick.
Action = Literal["submitted", "claimed elsewhere", "still running", "failed", "postponed"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a runner did with one slot."""

    schedule: str
    slot: datetime
    action: Action
    job: Job | None = None
    message: str = ""


def claim(engine: Engine, schedule: Schedule, slot: datetime) -> bool:
    """Claim the slot in the schedule's store (put-if-absent); False if another has it."""
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "claimed": to_epoch_ms(utc_now())}
    try:
        engine.recognised_store(schedule.store).put(
            claim_key(schedule.name, slot), json.dumps(owner).encode(), overwrite=False
        )
    except FileExistsError:
        return False
    return True


def newest_claim(engine: Engine, schedule: Schedule, now: datetime) -> datetime | None:
    """The latest slot claimed in the schedule's store, by any replica or run now: the
    high-water mark, which cleanup keeps whatever its age. None before the first run.
    A claim of a slot later than `now` (`believable_claim`) is ignored, with a warning."""
    claimed = [
        parsed[1]
        for obj in engine.reachable_store(schedule.store).list(claims_prefix(schedule.name))
        if (parsed := parse_claim_key(obj.key)) and parsed[0] == schedule.name
    ]
    for slot in sorted(s for s in claimed if not believable_claim(s, now)):
        logger.warning(
            "Schedule %r: ignoring the claim of slot %s in store %r, which is later than now: "
            "someone who can write to the store put it there, or a replica's clock is ahead.",
            schedule.name,
            f"{slot:%Y-%m-%d %H:%M:%S} UTC",
            schedule.store,
        )
    return max((s for s in claimed if believable_claim(s, now)), default=None)


def runs(engine: Engine, schedule: Schedule, *, active: bool = False) -> list[Job]:
    """The schedule's backup jobs in the job table (only unfinished ones with `active`),
    newest slot first; within a slot, a job that did not fail first: a replica that could
    not start a slot (its source missing there) records it FAILED and leaves it to the
    others, so a slot may have another replica's run beside that record."""
    statuses = [s for s in JobStatus if s.active] if active else [None]
    found: list[tuple[datetime, Job]] = []
    for status in statuses:
        jobs, _ = engine.jobs.find(status=status, operation="create", limit=None)
        for job in jobs:
            if job.scheduled and job.name and (slot := schedule.slot_of(job.name)):
                found.append((slot, job))
    ordered = sorted(
        found,
        key=lambda pair: (pair[0], pair[1].status is not JobStatus.FAILED, pair[1].starttime),
        reverse=True,
    )
    return [job for _, job in ordered]


def run_slot(
    engine: Engine,
    schedule: Schedule,
    slot: datetime,
    sources: Sequence[str] = (),
    *,
    on_demand: bool = False,
    operation_uri: str | None = None,
    timeout: timedelta | None = None,
    now: datetime | None = None,
) -> Outcome:
    """Run one slot: skip it if it is at or before the schedule's newest claim (unless it
    is a run now, `on_demand`) or if the previous run still goes, else claim it and submit
    its backup job with the schedule's write key. `sources` back up a schedule that has
    none; a run still going `timeout` after it started is cancelled and reads FAILED."""
    paths = list(schedule.sources) or list(sources)
    if not paths:
        raise ConfigError(
            f"Schedule {schedule.name!r} has no sources, and this process none to lend it: "
            "define it with --source, or run it from 'strongroom serve --source DIR'."
        )
    newest = None if on_demand else newest_claim(engine, schedule, now or utc_now())
    if newest is not None and slot <= newest:
        message = (
            f"it is at or before the schedule's newest claim, of {newest:%Y-%m-%d %H:%M:%S} "
            "UTC (claimed by another replica, by a run now, or by this replica before a "
            "restart), so it ran already or a later run superseded it"
        )
        return Outcome(schedule.name, slot, "claimed elsewhere", message=message)
    # a run of an earlier slot; one of this slot is another replica's (its claim decides)
    previous = [j for j in runs(engine, schedule, active=True) if _slot_of(schedule, j) < slot]
    if previous:
        message = (
            f"the previous run (job {previous[0].jobid}) is still going; wait for it to end, "
            "or cancel it"
        )
        return Outcome(schedule.name, slot, "still running", previous[0], message)
    if not claim(engine, schedule, slot):
        message = (
            f"its slot {slot:%Y-%m-%d %H:%M:%S} UTC was claimed already: claimed by another "
            "replica, or by a run now in the same second"
        )
        return Outcome(schedule.name, slot, "claimed elsewhere", message=message)
    try:
        job = engine.submit_backup(
            schedule.backup_name(slot),
            paths,
            write_key=schedule.write_key,
            store=schedule.store,
            description=schedule.description,
            retention_date=schedule.retention(slot),
            operation_uri=operation_uri,
            timeout=timeout,
            scheduled=True,
        )
    except Exception:  # no job: a claim left would keep every replica off the slot
        _release(engine, schedule, slot)
        raise
    return Outcome(schedule.name, slot, "submitted", job)


def _release(engine: Engine, schedule: Schedule, slot: datetime) -> None:
    """Delete the claim of `slot` this process has just put (put-if-absent: no other
    process can hold that key), so the slot can run once the failure is over."""
    try:
        engine.store(schedule.store).delete([claim_key(schedule.name, slot)])
    except (StrongroomError, OSError) as exc:
        logger.warning(
            "Schedule %r: the claim of slot %s UTC stays (%s), so no replica runs that slot",
            schedule.name,
            f"{slot:%Y-%m-%d %H:%M:%S}",
            exc,
        )


def run_now(
    engine: Engine,
    name: str,
    sources: Sequence[str] = (),
    *,
    now: datetime | None = None,
    operation_uri: str | None = None,
    timeout: timedelta | None = None,
) -> Job:
    """One backup of the schedule now, as a job (`schedules run`, the API's `run`); the
    slot is this second, claimed like any other. JobError when it cannot start (ConfigError
    when the schedule has no sources to back up)."""
    schedule = get_schedule(StoresConfig.load(engine.config.path, home=engine.home), name)
    slot = (now or utc_now()).replace(microsecond=0)
    outcome = run_slot(
        engine,
        schedule,
        slot,
        sources,
        on_demand=True,
        operation_uri=operation_uri,
        timeout=timeout,
    )
    if outcome.job is None or outcome.action != "submitted":
        raise JobError(f"Schedule {name!r} did not run now: {outcome.message}.")
    return outcome.job


def _slot_of(schedule: Schedule, job: Job) -> datetime:
    """The slot of one of the schedule's jobs (as `runs` returns them)."""
    slot = schedule.slot_of(job.name or "")
    if slot is None:
        raise JobError(f"Job {job.jobid} is not a run of schedule {schedule.name!r}.")
    return slot


class ScheduleRunner:
    """Runs the schedules of an engine's configuration file until stopped."""

    def __init__(
        self,
        engine: Engine,
        sources: Sequence[str | os.PathLike[str]] = (),
        *,
        clock: Callable[[], datetime] = utc_now,
        timeout: Callable[[], timedelta | None] | None = None,
    ) -> None:
        """`timeout`, asked at each run, says how long a run may go before it is cancelled
        (`serve` asks the admin API's settings; default: no limit)."""
        self._engine, self._clock, self._timeout = engine, clock, timeout
        self._sources = [str(source) for source in sources]
        #: The latest slot this runner has handled, by schedule.
        self._handled: dict[str, datetime] = {}
        #: What was last logged about each damaged schedule, so it is said once, not each tick.
        self._damaged: dict[str, str] = {}

    def tick(self) -> list[Outcome]:
        """Handle every slot that fell due since the last tick (per schedule, the latest);
        one postponed while the job database is down is tried again at the next tick."""
        now = self._clock()
        config = StoresConfig.load(self._engine.config.path, home=self._engine.home)
        found, damaged = load_schedules(config)
        for name, problem in damaged.items():
            if self._damaged.get(name) != problem:
                logger.warning("Schedule %s not run until it is mended: %s", name, problem)
        self._damaged = damaged
        outcomes = []
        for schedule in found.values():
            slot = schedule.due(now) if schedule.enabled else None
            last = self._handled.get(schedule.name)
            if slot is None or (last is not None and slot <= last):
                continue
            outcome = self._run(schedule, slot, now)
            if outcome.action != "postponed":
                self._handled[schedule.name] = slot
            outcomes.append(outcome)
        return outcomes

    def seconds_to_next(self) -> float:
        """How long to sleep: until the next slot of any enabled schedule, within bounds."""
        now = self._clock()
        try:
            config = StoresConfig.load(self._engine.config.path, home=self._engine.home)
            slots = [
                next(s.recurrence.following(now))
                for s in load_schedules(config)[0].values()
                if s.enabled
            ]
        except (StrongroomError, OSError):  # tick says why
            slots = []
        wait = min(slots, default=now + timedelta(seconds=MAX_SLEEP)) - now
        return min(MAX_SLEEP, max(MIN_SLEEP, wait.total_seconds()))

    def start(self) -> threading.Event:
        """Run on a daemon thread; set the returned event to stop it."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.is_set():
                wait = MAX_SLEEP
                try:
                    self.tick()
                    wait = self.seconds_to_next()
                except (StrongroomError, OSError) as exc:  # a configuration file edited badly
                    logger.warning("Schedules not run: %s", exc)  # or unreadable: retried
                except Exception:  # a bug must not stop every schedule for good
                    logger.exception("Schedules not run (tried again shortly)")
                stop.wait(wait)

        threading.Thread(target=loop, name="strongroom-schedules", daemon=True).start()
        return stop

    def _run(self, schedule: Schedule, slot: datetime, now: datetime) -> Outcome:
        when = f"{slot:%Y-%m-%d %H:%M:%S} UTC"
        try:
            timeout = self._timeout() if self._timeout else None
            outcome = run_slot(
                self._engine, schedule, slot, self._sources, timeout=timeout, now=now
            )
        except JobStoreUnavailableError as exc:
            logger.warning(
                "Schedule %r, slot %s, not run yet (tried again shortly): %s",
                schedule.name,
                when,
                exc,
            )
            return Outcome(schedule.name, slot, "postponed", message=str(exc))
        except StrongroomError as exc:
            logger.warning("Schedule %r, slot %s, did not run: %s", schedule.name, when, exc)
            job = self._failed_job(schedule, slot, exc)
            return Outcome(schedule.name, slot, "failed", job, str(exc))
        except Exception as exc:  # a bug: the other schedules still run
            logger.exception("Schedule %r, slot %s, did not run", schedule.name, when)
            return Outcome(schedule.name, slot, "failed", message=repr(exc))
        if outcome.action == "claimed elsewhere":
            logger.info("Schedule %r, slot %s, skipped: %s", schedule.name, when, outcome.message)
        elif outcome.action == "still running":
            logger.warning(
                "Schedule %r, slot %s, skipped: %s", schedule.name, when, outcome.message
            )
        return outcome

    def _failed_job(self, schedule: Schedule, slot: datetime, error: StrongroomError) -> Job | None:
        """The slot's backup job, FAILED with `error`, so that whoever watches the jobs
        (and `schedules show`) sees a slot that could not even start, not only the log.
        One job a slot among the replicas sharing the job table, and across restarts: no
        claim in the store orders them, since none is taken for a slot that cannot start.
        It gives the first replica's reason (the others' stay in their logs); a replica
        whose clock ran ahead keeps the records of earlier slots away (`claim_periodic`).
        None if another recorded it, or the job table cannot take it either (the log line
        stays)."""

        def fail(job: JobHandle) -> NoReturn:
            raise error

        task = f"record the failed slots of schedule {schedule.name}"
        try:
            if not self._engine.jobs.claim_periodic(task, int(slot.timestamp())):
                return None
            return self._engine.jobs.submit(
                "create",
                fail,
                store=schedule.store,
                name=schedule.backup_name(slot),
                scheduled=True,
            )
        except StrongroomError:
            return None
