"""Several tenants in one process: each Engine keeps everything in its own home (stores,
jobs, tokens, restores), sees and cancels only its own jobs, answers to its own plugins,
and an Engine dropped without `close` leaves no descriptor or lock file behind."""

from __future__ import annotations

import gc
import os
import threading
import time
import weakref
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request

from strongroom import (
    ConfigError,
    Engine,
    JobError,
    JobNotFoundError,
    JobStatus,
    Passcode,
    hookimpl,
)
from strongroom.plugins import get_plugin_manager
from strongroom.web import create_app
from strongroom.web.auth import add_token, tokens_path
from tests.conftest import FAST_KDF, PASSCODE, SMALL_CHUNK, until_cancelled

pytestmark = pytest.mark.anyio
STORE = "/admin/system/disasterrecovery/stores/backupsDefault"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def tenant(root: Path, name: str) -> Engine:
    return Engine(home=root / name, kdf=FAST_KDF, chunk_size=SMALL_CHUNK)


async def test_two_tenants_share_nothing(home: Path, tree: Path, tmp_path: Path) -> None:
    a, b = tenant(tmp_path, "a"), tenant(tmp_path, "b")
    with a, b:
        a.create("only-a", [tree], passcode=PASSCODE)
        assert [info.name for info in a.list()] == ["only-a"]
        assert b.list() == []
        assert not home.exists(), "nothing went to $STRONGROOM_HOME"

        done = a.jobs.wait(a.submit_delete("only-a").jobid, timeout=30)
        running = a.jobs.submit("loop", until_cancelled)
        for jobid in (done.jobid, running.jobid):
            with pytest.raises(JobNotFoundError):
                b.jobs.get(jobid)
            with pytest.raises(JobNotFoundError):
                b.jobs.cancel(jobid)
        assert a.jobs.get(running.jobid).status.active

        token_a = "tenant-a-token-0123456789"
        assert add_token(token_a, a.home) == tokens_path(a.home)
        apps = {name: create_app(engine) for name, engine in (("a", a), ("b", b))}
        for name, app in apps.items():
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                listed = await http.get(f"{STORE}/backups", params={"f": "json", "token": token_a})
                assert listed.status_code == (200 if name == "a" else 401), listed.text
        assert (a.home / "jobs.sqlite3").exists() and (b.home / "jobs.sqlite3").exists()


async def test_the_app_asks_the_engines_own_plugins(tmp_path: Path) -> None:
    class HostAuth:
        @hookimpl
        def strongroom_authenticate(self, token: str | None, request: Request) -> bool | None:
            return token == "host-session"

    plugins = get_plugin_manager(autoload=False)
    plugins.register(HostAuth())
    with Engine(home=tmp_path / "host", plugin_manager=plugins, kdf=FAST_KDF) as engine:
        transport = httpx.ASGITransport(app=create_app(engine))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            asked = await http.get(STORE, params={"f": "json", "token": "host-session"})
            refused = await http.get(STORE, params={"f": "json", "token": "other"})
    assert asked.status_code == 200, asked.text
    assert refused.status_code == 401


def test_engines_dropped_without_close_leave_nothing_open(tmp_path: Path) -> None:
    def open_descriptors() -> int:
        return len(os.listdir("/proc/self/fd"))

    def use_and_drop(n: int) -> None:
        engine = tenant(tmp_path, f"t{n}")
        engine.jobs.wait(engine.jobs.submit("noop", lambda job: None).jobid, timeout=10)

    use_and_drop(-1)  # first imports and caches
    gc.collect()
    before = open_descriptors()
    for n in range(10):
        use_and_drop(n)
    gc.collect()
    assert open_descriptors() == before
    assert list(tmp_path.glob("t*/jobs.sqlite3.owners/*.lock")) == []


def test_an_engine_dropped_after_a_backup_job_is_collected_with_its_passcode(
    tmp_path: Path, tree: Path
) -> None:
    """Each job worker kept its last job (the submitted work, holding the Engine, the
    passcode and any streams) while it waited for the next: an Engine that had run a job
    was never collected, its threads, job table and lock stayed open, and the passcode
    stayed in memory for the life of the process."""
    secret = "dropped-tenant-passcode"

    def back_up_and_drop() -> weakref.ref[Engine]:
        engine = tenant(tmp_path, "dropped")
        job = engine.submit_backup("nightly", [tree], passcode=secret)
        assert engine.jobs.wait(job.jobid, timeout=30).status.value == "COMPLETED"
        return weakref.ref(engine)

    dropped = back_up_and_drop()
    gc.collect()
    assert dropped() is None
    held = [
        o
        for o in gc.get_objects()
        if isinstance(o, Passcode) and o.encode() == b"dropped-tenant-passcode"
    ]
    assert held == []
    assert list(tmp_path.glob("dropped/jobs.sqlite3.owners/*.lock")) == []


def test_close_is_final(tmp_path: Path) -> None:
    engine = tenant(tmp_path, "closing")
    engine.jobs.wait(engine.jobs.submit("noop", lambda job: None).jobid, timeout=10)
    engine.close()
    with pytest.raises(JobError, match="closed"):
        engine.submit_cleanup()
    with pytest.raises(JobError, match="closed"):
        engine.jobs.submit("late", lambda job: None)


async def test_the_embedding_example_mounts_the_api_and_closes_the_engine(
    tmp_path: Path, tree: Path
) -> None:
    """docs/EMBEDDING.md's example, as written, with its paths pointed at this test's."""
    document = (Path(__file__).parent.parent / "docs" / "EMBEDDING.md").read_text()
    example = document.split("```python\n", 1)[1].split("```", 1)[0]
    example = example.replace("/var/lib/product/strongroom", str(tmp_path / "product"))
    example = example.replace("/srv/app/data", str(tree))
    namespace: dict[str, object] = {}
    exec(compile(example, "EMBEDDING.md", "exec"), namespace)
    engine, app = namespace["engine"], namespace["app"]
    assert isinstance(engine, Engine) and isinstance(app, Starlette)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            answer = await http.get("/admin/system/disasterrecovery", params={"f": "json"})
        assert answer.status_code == 401  # no token yet: the Engine's home has none
        engine.jobs.submit("noop", lambda job: None)
    with pytest.raises(JobError, match="closed"):
        engine.jobs.submit("late", lambda job: None)


def test_an_engine_runs_as_many_jobs_at_once_as_it_is_given_workers(tmp_path: Path) -> None:
    release = threading.Event()
    with Engine(home=tmp_path / "one", kdf=FAST_KDF, job_workers=1) as engine:
        first = engine.jobs.submit("held", lambda job: {"released": release.wait(30)})
        second = engine.jobs.submit("next", lambda job: None)
        time.sleep(0.3)
        assert engine.jobs.get(first.jobid).status is JobStatus.EXECUTING
        assert engine.jobs.get(second.jobid).status is JobStatus.SUBMITTED
        release.set()
        assert engine.jobs.wait(second.jobid, timeout=30).status is JobStatus.COMPLETED
    for wrong in (0, 1.5, True):
        with pytest.raises(ConfigError, match="job_workers must be a whole number, at least 1"):
            Engine(home=tmp_path / "none", job_workers=wrong)  # type: ignore[arg-type]
