"""The admin API's jobs: the status document (the last submitted job, as the products'
`…/disasterrecovery/status` describes it), the paged job listing, a job, its cancel."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..engine import Engine
from ..errors import ConfigError
from ..jobrecord import OPERATION_NAMES
from ..jobs import Job, JobStatus
from .call import Call, RouteSpec, run
from .params import whole_number
from .readable import Pace
from .responses import Reply

__all__ = ["MAX_NUM", "JobQuery", "JobRoutes", "status_document"]

#: The most jobs one listing request answers with, as the products page their searches.
MAX_NUM = 100
DEFAULT_NUM = 10
#: The highest `start` (it becomes an SQLite offset, which must fit 64 bits).
MAX_START = 1_000_000_000


def status_document(job: Job | None) -> dict[str, Any]:
    """The last submitted job as `{"status": {...}}`; the same keys, null, before any job."""
    if job is None:
        status: dict[str, Any] = dict.fromkeys(_STATUS_KEYS)
        return {"status": status | {"message": "No job has been submitted yet.", "stages": []}}
    return {
        "status": {
            "jobid": job.jobid,
            "operation": OPERATION_NAMES.get(job.operation, job.operation.capitalize()),
            "backupName": job.name,
            "backupStore": job.store,
            "state": job.status.state,
            "scheduleType": "SCHEDULED" if job.scheduled else "MANUAL",
            "startTime": job.starttime,
            "completeTime": job.endtime,
            "overallDuration": (job.endtime or job.updatedtime) - job.starttime,
            "message": job.messages[-1] if job.messages else "",
            "stages": job.stage_dicts(),
        }
    }


_STATUS_KEYS = (
    "jobid",
    "operation",
    "backupName",
    "backupStore",
    "state",
    "scheduleType",
    "startTime",
    "completeTime",
    "overallDuration",
    "message",
    "stages",
)


@dataclass(frozen=True, slots=True)
class JobQuery:
    """A listing request, ArcGIS style: `start` (1-based) and `num`, and filters."""

    start: int = 1
    num: int = DEFAULT_NUM
    status: JobStatus | None = None
    operation: str | None = None

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> JobQuery:
        """From request parameters (an empty value counts as absent)."""
        status = params.get("status") or None
        if status is not None and status.upper() not in JobStatus.__members__:
            raise ConfigError(f"status must be one of {', '.join(JobStatus)}.")
        return cls(
            start=whole_number("start", params.get("start") or "1", MAX_START),
            num=whole_number("num", params.get("num") or str(DEFAULT_NUM), MAX_NUM),
            status=None if status is None else JobStatus(status.upper()),
            operation=params.get("operation") or None,
        )

    def document(self, jobs: list[Job], total: int) -> dict[str, Any]:
        """The listing: the page's jobs and where the next page starts (-1: none)."""
        following = self.start + len(jobs)
        return {
            "jobs": [job.to_dict() for job in jobs],
            "total": total,
            "start": self.start,
            "num": self.num,
            "nextStart": following if following <= total else -1,
        }


class JobRoutes:
    """The handlers of `{root}/jobs` and of the status of the last job."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def routes(self, root: str, dr: str) -> list[RouteSpec]:
        """The routes under the app's root path `root` and the disaster-recovery root `dr`."""
        return [
            ("status", f"{dr}/status", self.status, ("GET",)),
            ("jobs", f"{root}/jobs", self.list_jobs, ("GET",)),
            ("job", f"{root}/jobs/{{jobid}}", self.get_job, ("GET",)),
            ("cancel", f"{root}/jobs/{{jobid}}/cancel", self.cancel_job, ("POST",)),
        ]

    async def status(self, call: Call) -> Reply:
        """The last submitted job, whichever process ran it."""
        jobs, _ = await run(self._engine.jobs.find, limit=1)
        return Reply(status_document(jobs[0] if jobs else None), "status.html")

    async def list_jobs(self, call: Call) -> Reply:
        """Jobs newest first, `num` at a time from `start` (1-based), as the products page."""
        query = JobQuery.parse(call.params)
        jobs, total = await run(
            self._engine.jobs.find,
            status=query.status,
            operation=query.operation,
            offset=query.start - 1,
            limit=query.num,
        )
        return Reply(query.document(jobs, total), "jobs.html", {"query": query})

    async def get_job(self, call: Call) -> Reply:
        job = await run(self._engine.jobs.get, call.path("jobid"))
        return Reply(job.to_dict(), "job.html", {"job": job, "pace": Pace.of(job)})

    async def cancel_job(self, call: Call) -> Reply:
        job = await run(self._engine.jobs.cancel, call.path("jobid"))
        return Reply(job.to_dict(), redirect=call.url("job", jobid=job.jobid))
