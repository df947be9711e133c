"""Retention: what a retentionDate may be, and which backups a cleanup deletes.

Pure functions of backups and a moment, so they are tested without a store or a clock.
A backup expires when its retentionDate is at or before the cleanup's `as_of`
moment; a backup without a retentionDate is kept forever.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from .errors import ConfigError
from .format import MAX_EPOCH_MS, Manifest, from_epoch_ms, to_epoch_ms

__all__ = [
    "Action",
    "CleanupEntry",
    "CleanupReport",
    "IndexEntry",
    "PendingMarker",
    "check_retention_date",
    "parse_epoch_ms",
    "select_candidates",
    "select_expired",
    "select_leftovers",
    "select_orphans",
]


def parse_epoch_ms(value: object, what: str = "retentionDate") -> int:
    """An epoch-milliseconds integer from an int or a string of digits, else ConfigError."""
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value.strip())
    if type(value) is int and 0 <= value <= MAX_EPOCH_MS:
        return value
    raise ConfigError(
        f"{what} must be a whole number of milliseconds since 1970-01-01 UTC, "
        f"for example 1735689600000; got {value!r}."
    )


def check_retention_date(value: object, now: datetime) -> datetime:
    """A retentionDate from the outside, checked to be epoch ms in the future."""
    moment = from_epoch_ms(parse_epoch_ms(value))
    if moment <= now:
        raise ConfigError(
            f"retentionDate {to_epoch_ms(moment)} ({moment:%Y-%m-%d %H:%M:%S} UTC) is in the past; "
            "give a date after now."
        )
    return moment


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """A `retention/<name>/<backupId>.<ms|never>` entry as listed, with the store's timestamp."""

    key: str
    name: str
    backup_id: str
    retention_date: datetime | None
    modified: datetime | None


def select_candidates(
    index: Iterable[IndexEntry], committed_names: set[str], as_of: datetime
) -> list[tuple[str, str]]:
    """(name, backupId) of the committed backups the index says have expired by `as_of`.

    A backup with several entries (a retention update was under way, or cut off) counts
    by the latest date among them, and never expires if one says never: the index may
    delay a deletion, never hasten it. The manifests of the candidates then decide.
    """
    latest: dict[tuple[str, str], datetime | None] = {}
    for entry in index:
        backup = (entry.name, entry.backup_id)
        if entry.name in committed_names:
            when = entry.retention_date
            latest[backup] = _later(latest[backup], when) if backup in latest else when
    return sorted(b for b, when in latest.items() if when is not None and when <= as_of)


def _later(one: datetime | None, other: datetime | None) -> datetime | None:
    """The later of two retention dates, where None (never) is latest of all."""
    return None if one is None or other is None else max(one, other)


def select_orphans(
    index: Iterable[IndexEntry],
    committed: dict[str, str],
    writing: set[tuple[str, str]],
    store_now: datetime,
    grace: timedelta,
) -> list[IndexEntry]:
    """Those of these index entries whose manifest is gone: deletes that were cut off.

    A delete removes the manifest, then the data, then the index entries, so an entry
    whose backup is not `committed` (name → backupId of every manifest the caller read
    for these names) outlives a delete cut off halfway.
    Entries of creates under way (`writing`, which have a pending marker) are not
    orphans, nor any entry younger than `grace` by the store's clock.
    """
    return [
        entry
        for entry in index
        if committed.get(entry.name) != entry.backup_id
        and (entry.name, entry.backup_id) not in writing
        and entry.modified is not None
        and store_now - entry.modified > grace
    ]


def select_expired(manifests: Iterable[Manifest], as_of: datetime) -> list[Manifest]:
    """The backups whose retentionDate has come by `as_of`."""
    return [m for m in manifests if m.retention_date is not None and m.retention_date <= as_of]


@dataclass(frozen=True, slots=True)
class PendingMarker:
    """A `pending/<name>/<backupId>` marker as listed, with the store's timestamp."""

    key: str
    name: str
    backup_id: str
    modified: datetime | None


def select_leftovers(
    markers: Iterable[PendingMarker],
    committed: dict[str, str],
    store_now: datetime,
    grace: timedelta,
) -> tuple[list[PendingMarker], list[PendingMarker]]:
    """(leftovers to sweep, markers of committed backups to drop), judged by store time.

    A marker is refreshed while its create runs, so one older than `grace` belongs to a
    create or delete that was cut off. If the manifest of its name carries its backupId
    the backup was committed and only the marker is stale; otherwise its data is a
    leftover. A marker without a timestamp is never judged old.
    """
    old = [m for m in markers if m.modified is not None and store_now - m.modified > grace]
    leftovers = [m for m in old if committed.get(m.name) != m.backup_id]
    stale = [m for m in old if committed.get(m.name) == m.backup_id]
    return leftovers, stale


#: "locked": the store's object lock still keeps it (its clock is behind ours, or the
#: manifest's retentionDate was moved earlier behind strongroom's back); a later run retries.
Action = Literal["deleted", "would delete", "swept", "would sweep", "locked", "failed"]


@dataclass(frozen=True, slots=True)
class CleanupEntry:
    store: str
    name: str
    retention_date: datetime | None
    action: Action
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "backupStore": self.store,
            "name": self.name,
            "retentionDate": None
            if self.retention_date is None
            else to_epoch_ms(self.retention_date),
            "action": self.action,
            "message": self.message,
        }


@dataclass(slots=True)
class CleanupReport:
    """What one cleanup run did (or, dry, would do)."""

    as_of: datetime
    dry_run: bool
    entries: list[CleanupEntry] = field(default_factory=list)
    kept: int = 0
    #: Stores that could not be read and manifests that could not be judged.
    errors: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[CleanupEntry]:
        return [entry for entry in self.entries if entry.action == "failed"]

    def summary(self) -> str:
        """One line for the log: what this run did, counted by action."""
        counts = dict.fromkeys(("deleted", "would delete", "swept", "would sweep", "locked"), 0)
        for entry in self.entries:
            counts[entry.action] = counts.get(entry.action, 0) + 1
        done = ", ".join(f"{n} {action}" for action, n in counts.items() if n)
        return (
            f"as of {self.as_of:%Y-%m-%d %H:%M:%S} UTC{' (dry run)' if self.dry_run else ''}: "
            f"{done or 'nothing expired'}; {self.kept} kept; "
            f"{len(self.failed)} failed; {len(self.errors)} errors"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "asOf": to_epoch_ms(self.as_of),
            "dryRun": self.dry_run,
            "kept": self.kept,
            "errors": self.errors,
            "backups": [entry.to_dict() for entry in self.entries],
        }
