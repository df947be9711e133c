"""What anyone may know about committed backups without their passcode: `BackupInfo`
(one backup) and `Listing` (a store's), in the admin API's field names.

What create, list and info return, and what the CLI, the admin API and the jobs print;
kept apart from the engine (enginecreate.py and engine.py make them from manifests), so
every part that only shows them need not know how.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .format import Manifest, to_epoch_ms
from .retention import retention_ms

__all__ = ["BackupInfo", "Listing"]

#: The most left-out entries a backup's document lists, and the longest text of each (a job
#: keeps its result in the job table; a path may be kilobytes): the log names every one whole.
LEFT_OUT_LISTED = 20
LEFT_OUT_TEXT = 500


@dataclass(frozen=True, slots=True)
class BackupInfo:
    """What anyone may know about a committed backup, without its passcode."""

    name: str
    store: str
    description: str
    created: datetime
    retention_date: datetime | None
    source_size: int
    stored_size: int
    chunk_count: int
    backup_id: str
    #: Made by a schedule, not by a person.
    scheduled: bool = False
    #: How its chunks were encoded ("zstd" or "none": its store's setting then).
    compression: str = "zstd"
    #: What the create that made it left out, each with why (a socket, a device, an entry
    #: that changed as it was read); known to that create only, never stored, so an API
    #: job's or a schedule's result says it as `strongroom create` does.
    left_out: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def from_manifest(cls, manifest: Manifest, store: str) -> BackupInfo:
        return cls(
            name=manifest.name,
            store=store,
            description=manifest.description,
            created=manifest.created,
            retention_date=manifest.retention_date,
            source_size=manifest.source_size,
            stored_size=manifest.stored_size,
            chunk_count=manifest.chunk_count,
            backup_id=manifest.backup_id,
            scheduled=manifest.scheduled,
            compression=manifest.compression,
        )

    def to_dict(self) -> dict[str, Any]:
        """The admin API's field names; the CLI's --json output uses the same."""
        return {
            "name": self.name,
            "description": self.description,
            "backupStore": self.store,
            "completeTime": to_epoch_ms(self.created),
            "retentionDate": retention_ms(self.retention_date),
            "backupType": "FULL",
            "scheduleType": "SCHEDULED" if self.scheduled else "MANUAL",
            "status": "COMPLETED",
            "sourceSize": self.source_size,
            "storedSize": self.stored_size,
            "compression": self.compression,
            "backupId": self.backup_id,
            **(_left_out_fields(self.left_out) if self.left_out else {}),
        }


def _left_out_fields(left_out: Sequence[str]) -> dict[str, Any]:
    """`leftOut`: the first LEFT_OUT_LISTED, each cut at LEFT_OUT_TEXT characters;
    `leftOutCount`: how many in all."""
    shown = [
        what if len(what) <= LEFT_OUT_TEXT else what[: LEFT_OUT_TEXT - 1] + "…"
        for what in left_out[:LEFT_OUT_LISTED]
    ]
    return {"leftOut": shown, "leftOutCount": len(left_out)}


@dataclass(frozen=True, slots=True)
class Listing:
    """A store's backups, oldest first, and those whose manifest does not read (name: why):
    a damaged or altered manifest is reported, never silently left out of a list."""

    backups: list[BackupInfo]
    unreadable: dict[str, str]

    def only(self, named: Callable[[str], object]) -> Listing:
        """The backups, readable or not, whose names `named` accepts (a schedule's slots)."""
        return Listing(
            [info for info in self.backups if named(info.name)],
            {name: problem for name, problem in self.unreadable.items() if named(name)},
        )

    def to_dict(self) -> dict[str, Any]:
        """The admin API's list document; the CLI's `list --json` prints the same."""
        return {
            "backups": [info.to_dict() for info in self.backups],
            "unreadable": [{"name": n, "problem": p} for n, p in self.unreadable.items()],
        }
