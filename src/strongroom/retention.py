"""Retention: what a retentionDate may be, and which backups a cleanup deletes.

Pure functions of backups and a moment, so they are tested without a store or a clock.
A backup expires when its retentionDate is at or before the cleanup's `as_of`
moment; a backup without a retentionDate is kept forever.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from .errors import ConfigError
from .format import MAX_EPOCH_MS, Manifest, from_epoch_ms, to_epoch_ms

__all__ = [
    "CleanupEntry",
    "CleanupReport",
    "check_retention_date",
    "parse_epoch_ms",
    "select_expired",
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


def select_expired(manifests: Iterable[Manifest], as_of: datetime) -> list[Manifest]:
    """The backups whose retentionDate has come by `as_of`."""
    return [m for m in manifests if m.retention_date is not None and m.retention_date <= as_of]


Action = Literal["deleted", "would delete", "failed"]


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "asOf": to_epoch_ms(self.as_of),
            "dryRun": self.dry_run,
            "kept": self.kept,
            "errors": self.errors,
            "backups": [entry.to_dict() for entry in self.entries],
        }
