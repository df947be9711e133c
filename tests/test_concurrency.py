"""Many jobs at once in one process: creates and restores with the default key derivation
(4 lanes, which hangs `cryptography`'s Argon2id when two threads run it at once) all
complete, through the engine and through `strongroom serve`, and a server full of jobs
stops on SIGTERM within seconds."""

from __future__ import annotations

import time
from pathlib import Path

from strongroom import Engine, KdfParams
from strongroom.jobs import JobStatus
from tests.conftest import SMALL_CHUNK, ServerFactory, snapshot

PASSCODE = "Concurrent-Passc0de-1"
BACKUPS = "/admin/system/disasterrecovery/stores/backupsDefault/backups"
JOBS = 8


def small_tree(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("a\n" * 1000)
    (root / "sub" / "b.bin").write_bytes(bytes(range(256)) * 100)
    return root


def test_eight_jobs_submitted_at_once_through_the_engine_all_complete(
    home: Path, tmp_path: Path
) -> None:
    source = small_tree(tmp_path / "source")
    with Engine(kdf=KdfParams(), chunk_size=SMALL_CHUNK) as engine:
        engine.create("base", [source], passcode=PASSCODE)
        jobs = [
            engine.submit_backup(f"new-{n}", [source], passcode=PASSCODE)
            if n % 2
            else engine.submit_restore("base", tmp_path / f"out-{n}", passcode=PASSCODE)
            for n in range(JOBS)
        ]
        ended = [engine.jobs.wait(job.jobid, timeout=120) for job in jobs]
    assert [job.status for job in ended] == [JobStatus.COMPLETED] * JOBS, ended
    for n in range(0, JOBS, 2):
        assert snapshot(tmp_path / f"out-{n}" / "source") == snapshot(source)


def test_eight_jobs_through_the_api_complete_and_sigterm_stops_a_busy_server(
    serve: ServerFactory, tmp_path: Path
) -> None:
    server = serve([small_tree(tmp_path / "source")])
    base = server.post(f"{BACKUPS}/create", name="base", passcode=PASSCODE).json()
    assert server.wait_for_job(base["jobsUrl"])["status"] == "COMPLETED"

    def submit_all(batch: str) -> list[str]:
        return [
            server.post(f"{BACKUPS}/create", name=f"{batch}-{n}", passcode=PASSCODE).json()[
                "jobsUrl"
            ]
            if n % 2
            else server.post(f"{BACKUPS}/base/restore", passcode=PASSCODE).json()["jobsUrl"]
            for n in range(JOBS)
        ]

    ended = [server.wait_for_job(url) for url in submit_all("first")]
    assert [job["status"] for job in ended] == ["COMPLETED"] * JOBS, ended

    submit_all("second")
    started = time.monotonic()
    server.process.terminate()
    server.process.wait(timeout=10)
    assert time.monotonic() - started < 10
