"""What a job is: its status, its stages and the document the admin API shows.

Kept apart from the job manager (jobs.py) and the job stores (jobstore/), which both
read and write these records.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

__all__ = ["OPERATION_NAMES", "Job", "JobStatus", "Stage", "end_stages", "failed"]

#: strongroom's job operations, with the names the admin API's status document gives them
#: (a host product's own jobs may have others).
OPERATION_NAMES = {
    "create": "Backup",
    "restore": "Restore",
    "verify": "Verify",
    "delete": "Delete",
    "cleanup": "Cleanup",
    "register": "Register",
}


class JobStatus(StrEnum):
    SUBMITTED = "SUBMITTED"
    EXECUTING = "EXECUTING"
    CANCELLING = "CANCELLING"
    CANCELLED = "CANCELLED"
    FAILED = "FAILED"
    COMPLETED = "COMPLETED"

    @property
    def active(self) -> bool:
        """The job has not ended yet."""
        return self in (JobStatus.SUBMITTED, JobStatus.EXECUTING, JobStatus.CANCELLING)

    @property
    def state(self) -> str:
        """The status as the status document and the stages say it: running (not ended
        yet), success, failed or cancelled."""
        if self.active:
            return "running"
        return {JobStatus.COMPLETED: "success", JobStatus.FAILED: "failed"}.get(self, "cancelled")


@dataclass(frozen=True, slots=True)
class Stage:
    """One step a job's work reported through `JobHandle.stage`; times in epoch ms."""

    name: str
    #: running, success, failed or cancelled (see JobStatus.state).
    state: str
    started: int
    ended: int | None = None

    def to_dict(self, now: int) -> dict[str, Any]:
        """The stage as the admin API shows it; a running stage's duration counts to `now`."""
        return {
            "name": self.name,
            "state": self.state,
            "lastUpdated": self.started if self.ended is None else self.ended,
            "duration": (now if self.ended is None else self.ended) - self.started,
        }


@dataclass(frozen=True, slots=True)
class Job:
    """One job as clients see it. Never holds a passcode: the work's closure does."""

    jobid: str
    operation: str
    status: JobStatus
    store: str | None
    name: str | None
    #: Epoch ms: when the job was submitted.
    starttime: int
    updatedtime: int
    endtime: int | None = None
    bytes_done: int = 0
    bytes_total: int | None = None
    stage: str = "queued"
    messages: tuple[str, ...] = ()
    result: Mapping[str, Any] | None = None
    operation_uri: str | None = None
    #: The stages the work reported, oldest first; only the last may still be running.
    stages: tuple[Stage, ...] = ()
    #: Submitted by a schedule (the cleanup system task), not by a person.
    scheduled: bool = False

    @property
    def percent(self) -> int | None:
        """Whole percent done; below 100 until the job completes (a create's total is an
        estimate), None while the total is unknown."""
        if self.status is JobStatus.COMPLETED:
            return 100
        if not self.bytes_total:
            return None
        return min(99, self.bytes_done * 100 // self.bytes_total)

    def to_dict(self) -> dict[str, Any]:
        """The admin API's job document."""
        return {
            "jobid": self.jobid,
            "status": self.status.value,
            "operation": self.operation,
            "backupStore": self.store,
            "backupName": self.name,
            "operationURI": self.operation_uri,
            "starttime": self.starttime,
            "endtime": self.endtime,
            "updatedtime": self.updatedtime,
            "progress": {
                "bytesDone": self.bytes_done,
                "bytesTotal": self.bytes_total,
                "percent": self.percent,
                "stage": self.stage,
            },
            "messages": list(self.messages),
            "result": None if self.result is None else dict(self.result),
            "stages": self.stage_dicts(),
        }

    def stage_dicts(self) -> list[dict[str, Any]]:
        """The stages as documents; a running one's duration counts to `updatedtime`, the
        job's last report."""
        return [stage.to_dict(self.endtime or self.updatedtime) for stage in self.stages]


def end_stages(stages: tuple[Stage, ...], state: str, now: int) -> tuple[Stage, ...]:
    """The stages with the running one ended in `state` at `now`."""
    return tuple(s if s.ended is not None else replace(s, state=state, ended=now) for s in stages)


def failed(job: Job, now: int, message: str) -> Job:
    """The job ended FAILED at `now` (epoch ms) with `message` (which may name the status
    it had as {status}), its running stage failed too."""
    return replace(
        job,
        status=JobStatus.FAILED,
        endtime=now,
        updatedtime=now,
        messages=(*job.messages, message.format(status=job.status.value)),
        stages=end_stages(job.stages, "failed", now),
    )
