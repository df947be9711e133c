"""How the admin pages write sizes, times, durations, a job's pace and its result."""

from __future__ import annotations

import pytest

from strongroom.jobs import Job, JobStatus, Stage
from strongroom.web.readable import Pace, duration, fields, transferred

#: 2026-01-01 00:00:00 UTC
START = 1_767_225_600_000
WRITING = Stage("writing", "running", START)
VALIDATED = Stage("validating", "success", START - 5_000, START)


def _job(
    done: int,
    total: int | None,
    *,
    elapsed: int = 2_000,
    status: JobStatus = JobStatus.EXECUTING,
    stage: Stage | None = WRITING,
) -> Job:
    return Job(
        jobid="j1",
        operation="create",
        status=status,
        store="backupsDefault",
        name="nightly",
        starttime=START - 5_000,
        updatedtime=START + elapsed,
        bytes_done=done,
        bytes_total=total,
        stages=(VALIDATED, stage) if stage else (VALIDATED,),
    )


@pytest.mark.parametrize(
    ("milliseconds", "text"),
    [
        (None, "-"),
        (0, "0.0 s"),
        (4_240, "4.2 s"),
        (59_940, "59.9 s"),
        (192_000, "3 min 12 s"),
        (7_500_000, "2 h 5 min"),
    ],
)
def test_durations_read_in_seconds_minutes_and_hours(milliseconds: int | None, text: str) -> None:
    assert duration(milliseconds) == text


def test_progress_reads_as_sizes_with_the_total_when_known() -> None:
    assert transferred({"bytesDone": 12_300_000, "bytesTotal": 40_000_000}) == "12.3 MB of 40.0 MB"
    assert transferred({"bytesDone": 12_300_000, "bytesTotal": None}) == "12.3 MB"
    assert transferred({"bytesDone": 0, "bytesTotal": 0}) == "0 B"


def test_pace_is_measured_over_the_running_stage() -> None:
    """10 MB in the 2 s since writing began (the key derivation before it does not count):
    5 MB/s, and the remaining 30 MB take 6 s."""
    pace = Pace.of(_job(10_000_000, 40_000_000))
    assert pace is not None
    assert pace.speed == "5.0 MB/s"
    assert pace.remaining_ms == 6_000


@pytest.mark.parametrize(
    "job",
    [
        _job(10, None),  # a create of streams: the total is unknown
        _job(0, 0),  # nothing to move
        _job(0, 100),  # nothing moved yet
        _job(100, 100),  # all moved: committing, not moving
        _job(10, 100, elapsed=0),  # no time has passed
        _job(10, 100, status=JobStatus.COMPLETED),
        _job(10, 100, status=JobStatus.CANCELLING),
        _job(10, 100, stage=None),  # no stage runs
        _job(10, 100, stage=Stage("writing", "success", START, START + 1_000)),
    ],
)
def test_no_pace_rather_than_nonsense(job: Job) -> None:
    assert Pace.of(job) is None


def test_a_result_reads_as_labelled_fields() -> None:
    backup = {
        "name": "nightly",
        "description": "",
        "completeTime": START,
        "retentionDate": -1,
        "sourceSize": 67_800_000,
        "storedSize": 999,
        "dryRun": False,
    }
    assert fields(backup) == [
        ("Name", "nightly"),
        ("Description", "-"),
        ("Completed", "2026-01-01 00:00:00 UTC"),
        ("Retention date", "kept until deleted"),
        ("Source size", "67.8 MB"),
        ("Stored size", "999 B"),
        ("Dry run", "no"),
    ]
    cleanup = {
        "asOf": START,
        "errors": [],
        "backups": [{"name": "old", "retentionDate": START, "action": "deleted"}],
        "unforeseen": 3,
    }
    assert fields(cleanup) == [
        ("As of", "2026-01-01 00:00:00 UTC"),
        ("Errors", ["none"]),
        ("Backups", ["Name: old; Retention date: 2026-01-01 00:00:00 UTC; Action: deleted"]),
        ("unforeseen", "3"),
    ]
