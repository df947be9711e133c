"""Schedules: recurring backups that keep a write key, never the passcode.

A schedule is a `[schedules.NAME]` table of the configuration file (config.py), written
0600 like the rest of it:

```toml
[schedules.nightly]
store = "offsite"
cron = "0 2 * * *"                # or every = "6h" (30s, 15m, 6h, 1d); cron is in UTC
keep_days = 14                    # or "never"
description = "before the office opens"
enabled = true
sources = ["/srv/app/data"]       # none: the sources of the serve that runs it
created = 1795788508933           # epoch ms: slots before the definition never run
write_key = { format = "strongroom-write-key", ... }
```

The passcode is used once, when the schedule is defined, to derive the write key; the
table keeps only that key, which creates backups and opens none (keys.py). This module
is the model: names, recurrences (slots in UTC), retention, and the edits of those
tables. scheduler.py runs them.
"""

from __future__ import annotations

import binascii
import re
import shlex
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cronsim import CronSim, CronSimError

from .archive import check_sources
from .config import StoresConfig, edit_config
from .crypto import Passcode
from .errors import ConfigError, InvalidNameError, UnknownScheduleError
from .format import (
    MAX_NAME_LENGTH,
    SLOT_FORMAT,
    from_epoch_ms,
    to_epoch_ms,
    validate_description,
    validate_name,
)
from .keys import WriteKey
from .retention import MAX_KEEP_DAYS, NEVER_MS

if TYPE_CHECKING:
    from .engine import Engine

__all__ = [
    "Recurrence",
    "Schedule",
    "define",
    "get_schedule",
    "load_schedules",
    "parse_duration",
    "parse_keep_days",
    "remove",
    "update",
]

#: What a backup name adds to its schedule's: `-YYYY-MM-DD-HH-MM-SS`, the slot in UTC.
SLOT_SUFFIX = len("-2026-01-31-02-00-00")
MAX_SCHEDULE_NAME = MAX_NAME_LENGTH - SLOT_SUFFIX
#: Path names of the admin API's schedule routes, which no schedule may take.
RESERVED_NAMES = frozenset({"create"})
#: The longest `every`; longer periods read better as a cron expression.
MAX_EVERY = timedelta(days=366)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"([0-9]{1,9})\s*([smhd])")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CRON_FIELDS = {
    "minute": "0-59",
    "hour": "0-23",
    "day-of-month": "1-31",
    "month": "1-12 or jan-dec",
    "day-of-week": "0-7 or sun-sat",
}
_CRON_HELP = (
    "Write five fields, minute hour day-of-month month day-of-week, evaluated in UTC, "
    'for example "0 2 * * *" (every day at 02:00 UTC) or "*/15 * * * *"'
)
#: The keys of a [schedules.NAME] table.
_TABLE_KEYS = frozenset(
    {
        "store",
        "every",
        "cron",
        "keep_days",
        "description",
        "enabled",
        "sources",
        "created",
        "write_key",
    }
)


def parse_duration(text: str) -> timedelta:
    """`30s`, `15m`, `6h`, `1d` as a timedelta from 1 s to MAX_EVERY, else ConfigError."""
    match = _DURATION.fullmatch(text.strip().lower()) if isinstance(text, str) else None
    seconds = int(match.group(1)) * _UNITS[match.group(2)] if match else 0
    if not 0 < seconds <= MAX_EVERY.total_seconds():
        raise ConfigError(
            f"every {text!r} is not a duration a schedule can recur at: write a whole number "
            "of seconds, minutes, hours or days above zero, such as 30s, 15m, 6h or 1d "
            f"(at most {MAX_EVERY.days}d; for rarer runs use a cron expression)."
        )
    return timedelta(seconds=seconds)


def format_duration(every: timedelta) -> str:
    """The shortest text `parse_duration` reads back as `every`."""
    seconds = int(every.total_seconds())
    unit = next(u for u in ("d", "h", "m", "s") if seconds % _UNITS[u] == 0)
    return f"{seconds // _UNITS[unit]}{unit}"


def parse_cron(expression: str) -> str:
    """A five-field cron expression, checked by cronsim; ConfigError says what is wrong."""
    text = " ".join(expression.split()) if isinstance(expression, str) else ""
    if len(text.split()) != len(_CRON_FIELDS):
        raise ConfigError(f"cron {expression!r} does not have five fields. {_CRON_HELP}.")
    try:
        CronSim(text, _EPOCH)
    except CronSimError as exc:
        field = str(exc).removeprefix("Bad ")  # cronsim names the field as _CRON_FIELDS do
        minute, hour, day, _, weekday = text.split()
        if field == "day-of-month" and _is_cron(f"{minute} {hour} {day} * {weekday}"):
            raise ConfigError(
                f'cron "{text}" would never run: none of its months has the days it names '
                "(30 February, say)."
            ) from None
        takes = _CRON_FIELDS.get(field, "its range")
        raise ConfigError(
            f'cron "{text}": bad {field} (it takes {takes}, a list a,b, a range a-b or a step '
            f"*/n). {_CRON_HELP}."
        ) from None
    return text


def _is_cron(text: str) -> bool:
    try:
        CronSim(text, _EPOCH)
    except CronSimError:
        return False
    return True


def parse_keep_days(value: object) -> int | None:
    """Days to keep each backup: 1 to MAX_KEEP_DAYS, or None for never (`never`, -1)."""
    text = str(value).strip().lower() if isinstance(value, str | int) else ""
    if value is None or text in ("never", str(NEVER_MS)):
        return None
    if not (text.isascii() and text.isdigit() and 0 < int(text) <= MAX_KEEP_DAYS):
        raise ConfigError(
            f"keep days must be a whole number from 1 to {MAX_KEEP_DAYS}, or never (-1); "
            f"got {value!r}."
        )
    return int(text)


@dataclass(frozen=True, slots=True)
class Recurrence:
    """When a schedule's slots fall: every a duration (counted from 1970-01-01 UTC, so
    every replica computes the same slots) or at the moments of a cron expression in UTC."""

    every: timedelta | None = None
    cron: str | None = None

    @classmethod
    def parse(cls, every: str | None, cron: str | None) -> Recurrence:
        if (every is None) == (cron is None):
            raise ConfigError(
                "A schedule recurs either every a duration (every 6h) or by a cron expression "
                '(cron "0 2 * * *"): give exactly one of them.'
            )
        if every is not None:
            return cls(every=parse_duration(every))
        return cls(cron=parse_cron(str(cron)))

    def latest(self, moment: datetime) -> datetime:
        """The latest slot at or before `moment`."""
        if self.every is not None:
            step = int(self.every.total_seconds())
            elapsed = int((moment - _EPOCH).total_seconds())
            return _EPOCH + timedelta(seconds=elapsed - elapsed % step)
        whole = moment.astimezone(UTC).replace(microsecond=0)
        return next(CronSim(str(self.cron), whole + timedelta(seconds=1), reverse=True))

    def following(self, moment: datetime) -> Iterator[datetime]:
        """The slots after `moment`, in order."""
        if self.every is None:
            yield from CronSim(str(self.cron), moment.astimezone(UTC))
            return
        slot = self.latest(moment)
        while True:
            slot += self.every
            yield slot

    def to_dict(self) -> dict[str, str | None]:
        return {
            "every": None if self.every is None else format_duration(self.every),
            "cron": self.cron,
        }

    def __str__(self) -> str:
        if self.every is not None:
            return f"every {format_duration(self.every)}"
        return f'cron "{self.cron}" (UTC)'


@dataclass(frozen=True, slots=True)
class Schedule:
    """One schedule as the configuration file holds it (the write key's repr shows nothing)."""

    name: str
    store: str
    recurrence: Recurrence
    write_key: WriteKey
    #: Slots before this moment never run: a new schedule does not start with a backlog.
    created: datetime
    keep_days: int | None = None
    description: str = ""
    enabled: bool = True
    #: Absolute paths; empty: the sources of the `serve` that runs the schedule.
    sources: tuple[str, ...] = ()

    def backup_name(self, slot: datetime) -> str:
        return f"{self.name}-{slot.astimezone(UTC):{SLOT_FORMAT}}"

    def slot_of(self, backup_name: str) -> datetime | None:
        """The slot of one of this schedule's backups, None for any other name."""
        suffix = backup_name.removeprefix(f"{self.name}-")
        if len(suffix) != SLOT_SUFFIX - 1 or suffix == backup_name:
            return None
        try:
            return datetime.strptime(suffix, SLOT_FORMAT).replace(tzinfo=UTC)
        except ValueError:
            return None

    def retention(self, slot: datetime) -> datetime | None:
        """The retentionDate of the slot's backup: the slot plus keep_days, or never."""
        return None if self.keep_days is None else slot + timedelta(days=self.keep_days)

    def due(self, moment: datetime) -> datetime | None:
        """The slot to run at `moment`: the latest one, unless it is before the definition."""
        slot = self.recurrence.latest(moment)
        return slot if slot >= self.created else None

    def next_runs(self, moment: datetime, count: int = 3) -> list[datetime]:
        return list(islice(self.recurrence.following(max(moment, self.created)), count))

    def to_dict(self, now: datetime) -> dict[str, Any]:
        """The admin API's fields (`schedules show --json` prints the same); never the key."""
        return {
            "name": self.name,
            "storeName": self.store,
            **self.recurrence.to_dict(),
            "keepDays": NEVER_MS if self.keep_days is None else self.keep_days,
            "description": self.description,
            "enabled": self.enabled,
            "sources": list(self.sources),
            "created": to_epoch_ms(self.created),
            "nextRuns": [to_epoch_ms(slot) for slot in self.next_runs(now)],
        }

    def to_table(self) -> dict[str, Any]:
        recurrence = {k: v for k, v in self.recurrence.to_dict().items() if v is not None}
        return {
            "store": self.store,
            **recurrence,
            "keep_days": "never" if self.keep_days is None else self.keep_days,
            "description": self.description,
            "enabled": self.enabled,
            "sources": list(self.sources),
            "created": to_epoch_ms(self.created),
            "write_key": self.write_key.to_document(),
        }

    @classmethod
    def from_table(cls, path: Path, name: str, table: object) -> Schedule:
        where = f"{path}: [schedules.{name}]"
        if not isinstance(table, Mapping):  # `schedules.NAME = 1` written by hand
            raise ConfigError(f"{where} is not a table; remove it ({_remove_command(name)}).")
        unknown = sorted(set(table) - _TABLE_KEYS)
        if unknown:
            raise ConfigError(f"{where} has unknown keys {unknown}; see 'strongroom schedules'.")
        try:
            write_key = WriteKey.from_document(table["write_key"])
            created = from_epoch_ms(int(table["created"]))
            sources = table.get("sources", [])
            if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
                raise TypeError("sources")
            return cls(
                name=_check_name(name),
                store=validate_name(table["store"], "store"),
                recurrence=Recurrence.parse(table.get("every"), table.get("cron")),
                write_key=write_key,
                created=created,
                keep_days=parse_keep_days(table.get("keep_days", "never")),
                description=validate_description(table.get("description", "")),
                enabled=table.get("enabled", True) is True,
                sources=tuple(sources),
            )
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        except (KeyError, TypeError, ValueError, OverflowError, binascii.Error):
            raise ConfigError(
                f"{where} is damaged (a missing or malformed store, created or write_key); "
                f"remove it ({_remove_command(name)}) and add it again."
            ) from None


def _remove_command(name: str) -> str:
    """The command that removes the schedule `name`, quoted for a shell: a hand-written
    table's name may hold anything (`<img src=x>`, a quote, a space, a leading -)."""
    return f"strongroom schedules remove -- {shlex.quote(name)}"


def load_schedules(config: StoresConfig) -> tuple[dict[str, Schedule], dict[str, str]]:
    """Every schedule of the configuration by name, and apart from them, by name, what is
    wrong with each one that does not read: one damaged table never stops the others."""
    found: dict[str, Schedule] = {}
    damaged: dict[str, str] = {}
    for name, table in sorted(config.schedules.items()):
        try:
            found[name] = Schedule.from_table(config.path, name, table)
        except ConfigError as exc:
            damaged[name] = str(exc)
    return found, damaged


def get_schedule(config: StoresConfig, name: str) -> Schedule:
    return Schedule.from_table(config.path, name, _table(config, name))


def _table(config: StoresConfig, name: str) -> Any:
    """The schedule's table as written, which may not read as a schedule."""
    if name not in config.schedules:
        known = ", ".join(sorted(config.schedules)) or "none"
        raise UnknownScheduleError(
            f"No schedule is named {name!r} (configured: {known}); 'strongroom schedules "
            "list' shows them, 'strongroom schedules add' defines one."
        )
    return config.schedules[name]


def define(
    engine: Engine,
    name: str,
    *,
    passcode: str | Passcode | Callable[[], str | Passcode],
    every: str | None = None,
    cron: str | None = None,
    store: str | None = None,
    keep_days: object = None,
    description: str = "",
    sources: Sequence[str] = (),
    now: datetime | None = None,
) -> Schedule:
    """Add a schedule to the engine's configuration file. Everything is checked before the
    passcode derives the write key (its only use); the passcode is kept nowhere. `passcode`
    may be a function that asks for it, called once the rest has been checked.

    The prompt and the derivation happen outside the configuration's lock, so an operator
    at the prompt holds up no other edit; the name and the store are checked again under
    the lock before the schedule is written."""
    if not callable(passcode):
        passcode = Passcode(passcode)  # its frame holds no plain text (a traceback's locals)
    _check_name(name)
    recurrence = Recurrence.parse(every, cron)
    config = StoresConfig.load(engine.config.path, home=engine.home)
    target = _check_new(config, name, store)
    engine.use_config(config)  # the file as it is now: it may name a store just added
    _check_claimable(engine, target)
    days = parse_keep_days(keep_days)
    validate_description(description)
    paths = [Path(source).absolute() for source in sources]
    if paths:  # none: the sources of the serve that runs it
        check_sources(paths, {})
    write_key = WriteKey.derive(passcode() if callable(passcode) else passcode, kdf=engine.kdf)

    def add(config: StoresConfig) -> Schedule:
        if _check_new(config, name, store) != target:
            raise ConfigError(
                f"The default store changed from {target!r} while the schedule was being "
                "defined; add it again (with --store to name its store)."
            )
        schedule = Schedule(
            name=name,
            store=target,
            recurrence=recurrence,
            write_key=write_key,
            created=(now or datetime.now(UTC)).replace(microsecond=0),
            keep_days=days,
            description=description,
            sources=tuple(str(path) for path in paths),
        )
        config.schedules[name] = schedule.to_table()
        return schedule

    return edit_config(engine, add)


def _check_claimable(engine: Engine, store: str) -> None:
    """Refuse a store that is not recognised (an unmounted disk) or whose put-if-absent
    is not atomic: replicas claim each slot there (scheduler.py), and two that both won
    a claim would both run the slot."""
    if not engine.store(store).capabilities.put_if_absent:
        raise ConfigError(
            f"Store {store!r} ({engine.config.get(store).url}) cannot take schedules: it has "
            "no atomic put-if-absent, so two 'serve' replicas could both claim one slot and "
            "back it up twice. Choose a store that has it (file://, S3 and Azure stores do; "
            f"'strongroom stores validate {store}' shows a store's capabilities)."
        )
    engine.recognised_store(store)


def _check_new(config: StoresConfig, name: str, store: str | None) -> str:
    """The name of the store a new schedule `name` would back up into; ConfigError if the
    name is taken or the store unknown."""
    if name in config.schedules:
        raise ConfigError(
            f"A schedule named {name!r} already exists; choose another name, or remove "
            f"it first ({_remove_command(name)})."
        )
    return config.get(store).name


def update(
    engine: Engine,
    name: str,
    *,
    every: str | None = None,
    cron: str | None = None,
    keep_days: object = None,
    description: str | None = None,
    enabled: bool | None = None,
) -> Schedule:
    """Change a schedule's recurrence (every or cron), keep_days, description or whether
    it runs; what is not given stays. Needs no passcode: the write key stays."""

    def change(config: StoresConfig) -> Schedule:
        schedule = get_schedule(config, name)
        if every is not None or cron is not None:
            schedule = replace(schedule, recurrence=Recurrence.parse(every, cron))
        if keep_days is not None:
            schedule = replace(schedule, keep_days=parse_keep_days(keep_days))
        if description is not None:
            schedule = replace(schedule, description=validate_description(description))
        if enabled is not None:
            schedule = replace(schedule, enabled=enabled)
        config.schedules[name] = schedule.to_table()
        return schedule

    return edit_config(engine, change)


def remove(engine: Engine, name: str) -> None:
    """Forget a schedule; its backups stay, and expire by their retentionDate."""

    def forget(config: StoresConfig) -> None:
        _table(config, name)  # a damaged one too: removing it is how it is mended
        del config.schedules[name]

    edit_config(engine, forget)


def _check_name(name: object) -> str:
    """A schedule name: a valid backup name once the slot is added, and no route's name."""
    validate_name(name, "schedule")
    if len(str(name)) > MAX_SCHEDULE_NAME or name in RESERVED_NAMES:
        raise InvalidNameError(
            f"{name!r} cannot name a schedule: its backups are named "
            f"NAME-YYYY-MM-DD-HH-MM-SS, so a name has at most {MAX_SCHEDULE_NAME} characters, "
            f"and {', '.join(sorted(RESERVED_NAMES))} is taken by the admin API."
        )
    return str(name)
