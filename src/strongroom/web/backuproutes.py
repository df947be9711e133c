"""The admin API's backups of a store: list, create, show, change the retention date,
restore, verify, list the contents, delete. What a create backs up and where a restore
writes belong to the server (`sources`, `restore_dir`), never to the request."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..crypto import Passcode
from ..engine import Engine
from ..errors import ConfigError
from ..format import to_epoch_ms, utc_now
from ..retention import NEVER_MS
from .call import Call, Derivations, RouteSpec, run
from .params import whole_number
from .responses import SUCCESS, ApiError, Reply
from .settings import DrSettings

__all__ = ["CONTENTS_LIMIT", "BackupRoutes"]

DAY_MS = 24 * 60 * 60 * 1000
#: The longest keepDays a form may ask for (100 years).
MAX_KEEP_DAYS = 36_500
#: The most entries one contents request answers with (the next from `start`).
CONTENTS_LIMIT = 10_000
#: The highest `start` of a contents page (more entries than any backup holds).
MAX_CONTENTS_START = 1_000_000_000


class BackupRoutes:
    """The handlers under `{store}/backups`."""

    def __init__(
        self, engine: Engine, sources: list[Path], restore_dir: Path, derivations: Derivations
    ) -> None:
        self._engine, self._sources, self._restore_dir = engine, sources, restore_dir
        self._derivations = derivations

    def routes(self, store: str) -> list[RouteSpec]:
        """The routes under the store's path `store`."""
        backup = f"{store}/backups/{{name}}"
        return [
            ("backups", f"{store}/backups", self.list_backups, ("GET",)),
            ("create", f"{store}/backups/create", self.create, ("GET", "POST")),
            ("backup", backup, self.get_backup, ("GET",)),
            ("update_backup", f"{backup}/update", self.update_backup, ("POST",)),
            ("restore", f"{backup}/restore", self.restore, ("POST",)),
            ("verify", f"{backup}/verify", self.verify, ("POST",)),
            ("contents", f"{backup}/contents", self.contents, ("POST",)),
            ("delete", f"{backup}/delete", self.delete, ("POST",)),
        ]

    async def list_backups(self, call: Call) -> Reply:
        store = call.path("storeName")
        listing = await run(self._engine.listing, store)
        return Reply(listing.to_dict(), "backups.html", {"store": store})

    async def create(self, call: Call) -> Reply:
        store = call.path("storeName")
        if call.request.method != "POST":  # GET, or the HEAD Starlette routes with it
            if call.fmt != "html":
                raise ApiError(405, "create takes a POST; GET shows its form (f=html).")
            await run(self._engine.config.get, store)
            return Reply({}, "create.html", {"store": store, "sources": self._sources})
        if not self._sources:
            raise ConfigError(
                "This server has nothing to back up: start it with "
                "'strongroom serve --source DIR' (or give create_app sources)."
            )
        settings = await run(DrSettings.load, self._engine.home)
        job = await run(
            self._engine.submit_backup,
            call.require("name"),
            self._sources,
            passcode=call.passcode(),
            store=store,
            description=call.get("description") or "",
            retention_date=_retention(call),
            operation_uri=call.uri,
            timeout=settings.timeout,
        )
        return call.job_reply(job)

    async def get_backup(self, call: Call) -> Reply:
        info = await run(self._engine.info, call.path("name"), call.path("storeName"))
        return Reply(info.to_dict(), "backup.html")

    async def update_backup(self, call: Call) -> Reply:
        name, store = call.path("name"), call.path("storeName")
        retention = _retention(call)
        if retention is None:
            raise ConfigError("The parameter retentionDate is required.")
        await run(self._engine.update_retention, name, retention, store)
        return Reply(SUCCESS, redirect=call.url("backup", storeName=store, name=name))

    async def restore(self, call: Call) -> Reply:
        """The whole backup, or what is under one archive `path`, into a new directory."""
        call.only_as_a_job("passcode", "path")
        name, store = call.path("name"), call.path("storeName")
        target = self._restore_dir / store / f"{name}-{uuid.uuid4().hex[:12]}"
        path = call.get("path")
        job = await run(
            self._engine.submit_restore,
            name,
            target,
            passcode=call.passcode(),
            store=store,
            paths=[path] if path else [],
            operation_uri=call.uri,
        )
        return call.job_reply(job)

    async def verify(self, call: Call) -> Reply:
        call.only_as_a_job("passcode")
        name, store = call.path("name"), call.path("storeName")
        job = await run(
            self._engine.submit_verify,
            name,
            passcode=call.passcode(),
            store=store,
            operation_uri=call.uri,
        )
        return call.job_reply(job)

    async def contents(self, call: Call) -> Reply:
        """What the backup holds (a POST: it needs the passcode), CONTENTS_LIMIT entries at
        a time from `start` (1-based, as the jobs listing); `path` narrows it to one
        archive path."""
        call.take_only("passcode", "path", "start")
        name, store = call.path("name"), call.path("storeName")
        path = call.get("path")
        start = whole_number("start", call.get("start") or "1", MAX_CONTENTS_START)
        entries = await self._derivations.run(
            _entries_from,
            self._engine,
            name,
            store,
            call.passcode(),
            [path] if path else [],
            start,
        )
        more = len(entries) > CONTENTS_LIMIT
        document = {
            "entries": entries[:CONTENTS_LIMIT],
            "truncated": more,
            "start": start,
            "nextStart": start + CONTENTS_LIMIT if more else -1,
        }
        return Reply(document, "contents.html", {"store": store, "name": name, "path": path})

    async def delete(self, call: Call) -> Reply:
        name, store = call.path("name"), call.path("storeName")
        if call.flag("async"):
            job = await run(self._engine.submit_delete, name, store, operation_uri=call.uri)
            return call.job_reply(job)
        await run(self._engine.delete, name, store)
        return Reply(SUCCESS, redirect=call.url("backups", storeName=store))


def _retention(call: Call) -> int | str | None:
    """retentionDate (epoch ms, -1 for never), or from the HTML forms keepDays: a number of
    days from now, `never`, or `date` for the day in retentionDay (a date field)."""
    date, days, day = call.get("retentionDate"), call.get("keepDays"), call.get("retentionDay")
    if (days == "date") != (day is not None):
        raise ConfigError(
            'To keep a backup until a date, choose "on the date below" and a date; '
            "otherwise leave the date empty."
        )
    if days is None:
        return date
    if date is not None:
        raise ConfigError("Give retentionDate or keepDays, not both.")
    if day is not None:
        return _start_of_day(day)
    if days == "never":
        return NEVER_MS
    return to_epoch_ms(utc_now()) + whole_number("keepDays", days, MAX_KEEP_DAYS, "days") * DAY_MS


def _start_of_day(text: str) -> int:
    """A date field's day (YYYY-MM-DD) as epoch ms at 00:00 UTC, which must be after now:
    the forms say the date is UTC, as the CLI reads `--retention-date 2027-01-31`."""
    try:
        moment = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise ConfigError(f"retentionDay must be a date like 2027-01-31, not {text!r}.") from None
    if moment <= utc_now():
        raise ConfigError(
            f"The retention date {moment:%Y-%m-%d} is not in the future (it starts at 00:00 UTC); "
            "choose a later day, a number of days, or never."
        )
    return to_epoch_ms(moment)


def _entries_from(
    engine: Engine, name: str, store: str, passcode: Passcode, paths: list[str], start: int
) -> list[dict[str, Any]]:
    """Up to one more than CONTENTS_LIMIT entries from the `start`th (so a longer listing
    shows as truncated)."""
    entries = engine.ls(name, paths, passcode=passcode, store=store)
    page = itertools.islice(entries, start - 1, start - 1 + CONTENTS_LIMIT + 1)
    return [entry.to_dict() for entry in page]
