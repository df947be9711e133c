"""The admin API's schedules: list, define (the passcode derives the schedule's write key
and is kept nowhere), show with its runs and backups, change, remove, run now."""

from __future__ import annotations

from pathlib import Path

from .. import schedules
from ..backupinfo import Listing
from ..config import StoresConfig
from ..engine import Engine
from ..errors import StoreUnavailableError
from ..format import utc_now
from ..scheduler import run_now, runs
from .call import Call, Derivations, RouteSpec, run
from .responses import SUCCESS, ApiError, Reply
from .settings import DrSettings

__all__ = ["ScheduleRoutes"]

#: The most recent runs and backups a schedule's page shows.
RECENT = 10


class ScheduleRoutes:
    """The handlers under `{dr}/schedules`."""

    def __init__(self, engine: Engine, sources: list[Path], derivations: Derivations) -> None:
        self._engine, self._sources, self._derivations = engine, sources, derivations

    def routes(self, dr: str) -> list[RouteSpec]:
        """The routes under the disaster-recovery root's path `dr`."""
        schedule = f"{dr}/schedules/{{scheduleName}}"
        return [
            ("schedules", f"{dr}/schedules", self.list_schedules, ("GET",)),
            # before `schedule`, so that create is never read as a schedule's name
            ("create_schedule", f"{dr}/schedules/create", self.create_schedule, ("GET", "POST")),
            ("schedule", schedule, self.get_schedule, ("GET",)),
            ("update_schedule", f"{schedule}/update", self.update_schedule, ("POST",)),
            ("delete_schedule", f"{schedule}/delete", self.delete_schedule, ("POST",)),
            ("run_schedule", f"{schedule}/run", self.run_schedule, ("POST",)),
        ]

    async def list_schedules(self, call: Call) -> Reply:
        found, damaged = schedules.load_schedules(await run(self._config))
        document = {
            "schedules": [s.to_dict(utc_now()) for s in found.values()],
            "damaged": [{"name": name, "problem": problem} for name, problem in damaged.items()],
        }
        return Reply(document, "schedules.html")

    async def create_schedule(self, call: Call) -> Reply:
        """Define a schedule: the passcode derives its write key here and is kept nowhere."""
        if call.request.method != "POST":  # GET, or the HEAD Starlette routes with it
            if call.fmt != "html":
                raise ApiError(405, "create takes a POST; GET shows its form (f=html).")
            context = {
                "stores": list(self._engine.config.stores),
                "sources": self._sources,
                "max_name": schedules.MAX_SCHEDULE_NAME,
            }
            return Reply({}, "schedule_create.html", context)
        schedule = await self._derivations.run(
            schedules.define,
            self._engine,
            call.require("name"),
            passcode=call.passcode(),
            every=call.get("every"),
            cron=call.get("cron"),
            store=call.get("storeName"),
            keep_days=call.get("keepDays"),
            description=call.get("description") or "",
        )
        page = call.url("schedule", scheduleName=schedule.name)
        return Reply(schedule.to_dict(utc_now()), redirect=page)

    async def get_schedule(self, call: Call) -> Reply:
        """The schedule, its next runs, its last run's job, its recent backups, and those of
        its backups whose manifest does not read (by name: their manifest cannot say). A
        store that cannot be read now (a disk not mounted) is `storeUnavailable`, why: the
        page still shows the runs, whose last one most likely failed for it."""
        schedule = schedules.get_schedule(await run(self._config), call.path("scheduleName"))
        jobs = await run(runs, self._engine, schedule)
        unavailable = None
        try:
            listing = await run(self._engine.listing, schedule.store)
        except StoreUnavailableError as exc:
            listing, unavailable = Listing([], {}), str(exc)
        mine = listing.only(schedule.slot_of).to_dict()
        recent = [b for b in reversed(mine["backups"]) if b["scheduleType"] == "SCHEDULED"]
        document = {
            **schedule.to_dict(utc_now()),
            "lastRun": jobs[0].to_dict() if jobs else None,
            "recentBackups": recent[:RECENT],
            "unreadable": mine["unreadable"],
            "storeUnavailable": unavailable,
        }
        return Reply(document, "schedule.html", {"jobs": jobs[:RECENT]})

    async def update_schedule(self, call: Call) -> Reply:
        name = call.path("scheduleName")
        call.take_only("every", "cron", "keepDays", "description", "enabled")
        await run(
            schedules.update,
            self._engine,
            name,
            every=call.get("every"),
            cron=call.get("cron"),
            keep_days=call.get("keepDays"),
            description=call.params.get("description"),
            enabled=call.flag("enabled") if call.get("enabled") else None,
        )
        return Reply(SUCCESS, redirect=call.url("schedule", scheduleName=name))

    async def delete_schedule(self, call: Call) -> Reply:
        await run(schedules.remove, self._engine, call.path("scheduleName"))
        return Reply(SUCCESS, redirect=call.url("schedules"))

    async def run_schedule(self, call: Call) -> Reply:
        """One backup of the schedule now, as a job (its slot claimed like any other)."""
        settings = await run(DrSettings.load, self._engine.home)
        job = await run(
            run_now,
            self._engine,
            call.path("scheduleName"),
            [str(source) for source in self._sources],
            operation_uri=call.uri,
            timeout=settings.timeout,
        )
        return call.job_reply(job)

    def _config(self) -> StoresConfig:
        """The configuration file as it is now: the CLI may have edited its schedules."""
        return StoresConfig.load(self._engine.config.path, home=self._engine.home)
