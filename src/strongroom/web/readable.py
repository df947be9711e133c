"""How the admin pages write numbers for people: sizes, times, durations, a running job's
pace, and the labelled fields of a job's result.

Only the pages use these; JSON answers keep bytes, epoch ms and -1 for never. Every page
gets them from `register`, so a size or a time reads the same wherever it is shown.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jinja2

from ..format import from_epoch_ms
from ..jobs import Job, JobStatus
from ..retention import NEVER_MS
from ..units import human_size

__all__ = ["Pace", "duration", "fields", "register", "retention", "transferred", "when"]

#: Fields of job results (backups, stores, restores, cleanups) as the pages label them.
_LABELS = {
    "name": "Name",
    "description": "Description",
    "backupStore": "Store",
    "completeTime": "Completed",
    "retentionDate": "Retention date",
    "backupType": "Backup type",
    "scheduleType": "Schedule",
    "status": "Status",
    "sourceSize": "Source size",
    "storedSize": "Stored size",
    "backupId": "Backup id",
    "restoreDir": "Restored into",
    "default": "Default store",
    "type": "Type",
    "url": "URL",
    "rootDir": "Location",
    "asOf": "As of",
    "dryRun": "Dry run",
    "kept": "Backups kept",
    "errors": "Errors",
    "backups": "Backups",
    "action": "Action",
    "message": "Message",
    "leftOut": "Left out",
    "leftOutCount": "Left out in all",
}
_SIZES = frozenset({"sourceSize", "storedSize"})
_TIMES = frozenset({"completeTime", "asOf"})


def when(epoch_ms: int | None) -> str:
    """Epoch ms as a UTC date and time."""
    return "-" if epoch_ms is None else f"{from_epoch_ms(epoch_ms):%Y-%m-%d %H:%M:%S} UTC"


def retention(epoch_ms: int | None) -> str:
    """A retentionDate (-1: never expires) as a UTC time, or what never means."""
    return "kept until deleted" if epoch_ms in (None, NEVER_MS) else when(epoch_ms)


def duration(milliseconds: int | None) -> str:
    """A duration as seconds under a minute (`4.2 s`), else in whole minutes and hours
    (`3 min 12 s`, `2 h 5 min`)."""
    if milliseconds is None:
        return "-"
    if milliseconds < 60_000:
        return f"{milliseconds / 1000:.1f} s"
    minutes, seconds = divmod(milliseconds // 1000, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours:,} h {minutes} min"


def transferred(progress: Mapping[str, Any]) -> str:
    """A job document's progress as `12.3 MB of 40.0 MB` (or without the total while it is
    unknown)."""
    done, total = progress["bytesDone"], progress["bytesTotal"]
    return human_size(done) + (f" of {human_size(total)}" if total else "")


@dataclass(frozen=True, slots=True)
class Pace:
    """How fast a running job moves its bytes, and how long the rest takes at that speed."""

    bytes_per_second: float
    remaining_ms: int

    @classmethod
    def of(cls, job: Job) -> Pace | None:
        """Measured over the running stage (bytes move in one stage: writing, reading,
        verifying); None when that would be nonsense: the job is not executing, the total
        is unknown or zero, nothing or everything has moved, or no time has passed."""
        stage = job.stages[-1] if job.stages else None
        if job.status is not JobStatus.EXECUTING or stage is None or stage.ended is not None:
            return None
        elapsed = job.updatedtime - stage.started
        total, done = job.bytes_total or 0, job.bytes_done
        if not 0 < done < total or elapsed <= 0:
            return None
        rate = done * 1000 / elapsed
        return cls(rate, round((total - done) * 1000 / rate))

    @property
    def speed(self) -> str:
        return f"{human_size(round(self.bytes_per_second))}/s"


def fields(document: Mapping[str, Any]) -> list[tuple[str, str | list[str]]]:
    """A result document as (label, text) rows; a list becomes one text per item."""
    return [(_LABELS.get(key, key), _value(key, value)) for key, value in document.items()]


def _value(key: str, value: Any) -> str | list[str]:
    if isinstance(value, list):
        return [_item(item) for item in value] or ["none"]
    return _text(key, value)


def _item(item: Any) -> str:
    """One entry of a list (a cleanup's backups): its fields on one line."""
    if isinstance(item, Mapping):
        return "; ".join(f"{_LABELS.get(k, k)}: {_text(k, v)}" for k, v in item.items())
    return str(item)


def _text(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None or value == "":
        return "-"
    if key in _SIZES:
        return human_size(value)
    if key in _TIMES:
        return when(value)
    if key == "retentionDate":
        return retention(value)
    return str(value)


def register(templates: jinja2.Environment) -> None:
    """Make these the pages' filters."""
    templates.filters.update(
        size=human_size,
        when=when,
        retention=retention,
        duration=duration,
        transferred=transferred,
        fields=fields,
    )
