"""Retention: what a retentionDate may be, and which backups a cleanup deletes.

Pure functions of backups and a moment, so they are tested without a store or a clock.
A backup expires when its retentionDate is at or before the cleanup's `as_of`
moment; a backup without a retentionDate is kept forever.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from .errors import ConfigError
from .format import MAX_EPOCH_MS, Manifest, from_epoch_ms, to_epoch_ms

#: "Never expires", as the ArcGIS API writes a retentionDate.
NEVER_MS = -1
#: Epoch milliseconds from a hundredth of this to this (1970-01-12 to 1973-03-03) are
#: surely seconds (2001-09-09 to 5138-11-16).
SECONDS_LIKE = 100_000_000_000
#: The most days a backup can be kept by a number of days (a century).
MAX_KEEP_DAYS = 36_500
EXAMPLE_MS = 1_830_297_600_000  # 2028-01-01

__all__ = [
    "Action",
    "Claim",
    "CleanupEntry",
    "CleanupReport",
    "IndexEntry",
    "PendingMarker",
    "believable_claim",
    "check_retention_date",
    "parse_epoch_ms",
    "parse_moment",
    "retention_from",
    "retention_ms",
    "select_candidates",
    "select_claims_to_sweep",
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
    if type(value) is int and value > MAX_EPOCH_MS:
        raise ConfigError(
            f"{what} {value} is after the year 9999 in milliseconds since 1970-01-01 UTC; "
            f"give a moment such as {EXAMPLE_MS}, or never."
        )
    raise ConfigError(
        f"{what} must be a whole number of milliseconds since 1970-01-01 UTC, "
        f"for example {EXAMPLE_MS}; got {value!r}."
    )


def parse_moment(value: object, what: str = "retentionDate") -> datetime:
    """A moment from the outside, in UTC: epoch milliseconds (a number, or its digits), or
    an ISO 8601 date or date and time (`2027-01-31`, `2027-01-31T02:00+02:00`; UTC unless
    it says)."""
    if isinstance(value, datetime):
        return _in_utc(value)
    text = value.strip() if isinstance(value, str) else ""
    if text and not (text.isascii() and text.isdigit()):
        try:
            moment = datetime.fromisoformat(text.replace("z", "Z"))
        except ValueError:
            raise ConfigError(
                f"{what} {value!r} is neither epoch milliseconds ({EXAMPLE_MS}) nor an ISO 8601 "
                "date or time (2027-01-31, 2027-01-31T02:00Z)."
            ) from None
        return _in_utc(moment)
    if len(text) == 8 and (as_date := _compact_date(text)):
        raise ConfigError(
            f"{what} {text} reads as milliseconds since 1970 (a few hours into 1970-01-01); "
            f"if it is a date, write it {as_date:%Y-%m-%d}."
        )
    milliseconds = parse_epoch_ms(value, what)
    if SECONDS_LIKE // 100 <= milliseconds < SECONDS_LIKE:  # 2001 to 5138, as seconds
        as_seconds = from_epoch_ms(milliseconds * 1000)
        raise ConfigError(
            f"{what} {milliseconds} is before 1973 in milliseconds: if it counts seconds "
            f"({as_seconds:%Y-%m-%d %H:%M:%S} UTC), give {milliseconds * 1000} or "
            f"{as_seconds:%Y-%m-%dT%H:%M:%SZ}."
        )
    return from_epoch_ms(milliseconds)


def _compact_date(text: str) -> datetime | None:
    """`20300131` as the date it looks like, if it is one from 1971 on."""
    try:
        moment = datetime.strptime(text, "%Y%m%d")
    except ValueError:
        return None
    return moment if moment.year > 1970 else None


def _in_utc(moment: datetime) -> datetime:
    """The moment in UTC (what every report prints); a naive one is taken as UTC."""
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def check_retention_date(value: object, now: datetime) -> datetime | None:
    """A retentionDate from the outside, in the future; None (never expires) for None,
    -1 or "never", as the ArcGIS API and the CLI spell it."""
    if value is None or (type(value) is int and value == NEVER_MS):
        return None
    if isinstance(value, str) and value.strip().lower() in ("never", str(NEVER_MS)):
        return None
    moment = parse_moment(value)
    if moment <= now:
        raise ConfigError(
            f"retentionDate {to_epoch_ms(moment)} ({moment:%Y-%m-%d %H:%M:%S} UTC) is in the past; "
            "give a date after now, or never."
        )
    return moment


def retention_from(date: object, keep_days: object, now: datetime) -> datetime | None:
    """The retentionDate asked for as a date (see `check_retention_date`) or as a number
    of days from now; neither means never."""
    if keep_days is None:
        return check_retention_date(date, now)
    if date is not None:
        raise ConfigError("Give a retentionDate or a number of days to keep, not both.")
    text = keep_days.strip() if isinstance(keep_days, str) else keep_days
    if isinstance(text, str) and text.lower() == "never":  # as schedules spell it
        return None
    if isinstance(text, str) and text.isascii() and text.isdigit():
        text = int(text)
    if type(text) is not int or not 0 < text <= MAX_KEEP_DAYS:
        raise ConfigError(
            f"The days to keep must be a whole number from 1 to {MAX_KEEP_DAYS}; got {keep_days!r}."
        )
    return now + timedelta(days=text)


def retention_ms(moment: datetime | None) -> int:
    """A retentionDate as the API and `--json` write it: epoch ms, or -1 for never."""
    return NEVER_MS if moment is None else to_epoch_ms(moment)


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


@dataclass(frozen=True, slots=True)
class Claim:
    """A `schedules/<schedule>/<slot>` claim as listed, with the store's timestamp."""

    key: str
    schedule: str
    slot: datetime
    modified: datetime | None


#: How far ahead of this clock a schedule's claim may be: replicas' clocks differ a little.
CLAIM_CLOCK_SKEW = timedelta(minutes=10)


def believable_claim(slot: datetime, now: datetime) -> bool:
    """Whether a claimed slot can have been claimed by `now`, give or take how far
    replicas' clocks differ: a later one was planted by someone who can write to the
    store (or made by a clock that is wrong), and as a schedule's newest claim it would
    stop the schedule for good."""
    return slot <= now + CLAIM_CLOCK_SKEW


def select_claims_to_sweep(
    claims: list[Claim], store_now: datetime, grace: timedelta, defined: Collection[str]
) -> list[Claim]:
    """The claims older than `grace` by the store's clock, except the latest believable
    one of each schedule still `defined`.

    That latest claim stays whatever its age: it is what tells a replica that starts after
    a long pause (a weekly schedule, a week of downtime) that the slot already ran, and no
    slot at or before it runs (scheduler.py). A schedule no longer defined runs no slot,
    so its latest claim goes too. Only the configuration that runs a store's schedules
    should clean it up: to another, they would all look removed.
    """
    latest: dict[str, Claim] = {}
    for claim in claims:
        if not believable_claim(claim.slot, store_now):
            continue
        if claim.schedule not in latest or claim.slot > latest[claim.schedule].slot:
            latest[claim.schedule] = claim
    return [
        claim
        for claim in claims
        if not (claim.schedule in defined and claim is latest.get(claim.schedule))
        and claim.modified is not None
        and store_now - claim.modified > grace
    ]


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
            "retentionDate": retention_ms(self.retention_date),
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
    #: Backups (by backupId) whose leftovers are not yet past the grace period: creates
    #: and deletes under way, or cut off since; a later run sweeps those still there.
    waiting: int = 0
    #: Stores that could not be read and manifests that could not be judged.
    errors: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[CleanupEntry]:
        return [entry for entry in self.entries if entry.action == "failed"]

    def counted(self) -> str:
        """What this run did, counted by action ('1 deleted, 2 swept'): a swept leftover
        is no expired backup."""
        counts = dict.fromkeys(("deleted", "would delete", "swept", "would sweep", "locked"), 0)
        for entry in self.entries:
            counts[entry.action] = counts.get(entry.action, 0) + 1
        return ", ".join(f"{n} {action}" for action, n in counts.items() if n) or "nothing expired"

    def summary(self) -> str:
        """One line for the log: what this run did, counted by action."""
        return (
            f"as of {self.as_of:%Y-%m-%d %H:%M:%S} UTC{' (dry run)' if self.dry_run else ''}: "
            f"{self.counted()}; {self.kept} kept; {self.waiting} within the grace period; "
            f"{len(self.failed)} failed; {len(self.errors)} errors"
        )

    def waiting_text(self) -> str:
        """The leftovers not yet swept, said so that a person knows they are seen ('' for
        none)."""
        if not self.waiting:
            return ""
        return (
            f"{self.waiting} unfinished create(s) or delete(s) (under way, or cut off within "
            "the grace period: a later cleanup sweeps what they left)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "asOf": to_epoch_ms(self.as_of),
            "dryRun": self.dry_run,
            "kept": self.kept,
            "waiting": self.waiting,
            "errors": self.errors,
            "backups": [entry.to_dict() for entry in self.entries],
        }
