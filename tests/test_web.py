"""The admin API in-process (httpx against the ASGI app): every operation and error path.

The passcode must never appear in a response, a log record or the job table; every
response of every test here is checked for it.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import re
import shutil
import stat
import threading
import time
import tomllib
import traceback
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlencode

import httpx
import pytest
from fsspec.implementations.memory import MemoryFileSystem
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Mount

from strongroom import (
    BackendOptions,
    BackendRegistry,
    ConfigError,
    Engine,
    JobHandle,
    Store,
    StoresConfig,
    StoreSpec,
    hookimpl,
    schedules,
)
from strongroom import config as config_module
from strongroom.format import from_epoch_ms
from strongroom.jobs import JOBS_FILE
from strongroom.plugins import get_plugin_manager
from strongroom.store import StoreCapabilities
from strongroom.units import human_size
from strongroom.web import create_app
from strongroom.web.auth import COOKIE, add_token, hash_token, remove_token
from strongroom.web.body import Fields
from strongroom.web.settings import SETTINGS_FILE
from tests.conftest import (
    FAST_KDF,
    SMALL_CHUNK,
    MountTables,
    damage_write_key,
    snapshot,
    until_cancelled,
    write_key_secrets,
)

pytestmark = pytest.mark.anyio

TOKEN = "web-token-3c9a61"
SECRET = "Web-Passc0de-never-shown"
DAY_MS = 24 * 60 * 60 * 1000
DR = "/admin/system/disasterrecovery"
STORE = f"{DR}/stores/backupsDefault"
BACKUP = f"{STORE}/backups/kept"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def engine(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    monkeypatch.setenv("STRONGROOM_API_TOKEN_HASHES", hash_token(TOKEN))
    engine = Engine(kdf=FAST_KDF, chunk_size=SMALL_CHUNK)
    yield engine
    engine.close()


class Api:
    """An httpx client on the app that adds the token and f=json unless told otherwise,
    and remembers every response to check that none shows the passcode."""

    def __init__(self, http: httpx.AsyncClient, engine: Engine) -> None:
        self.http, self.engine = http, engine
        self.responses: list[httpx.Response] = []

    async def get(self, path: str, **params: str) -> httpx.Response:
        return self._seen(await self.http.get(path, params={"f": "json", "token": TOKEN, **params}))

    async def post(self, path: str, **form: str) -> httpx.Response:
        return self._seen(await self.http.post(path, data={"f": "json", "token": TOKEN, **form}))

    async def send(self, method: str, path: str, **options: Any) -> httpx.Response:
        """A request exactly as given: no token, no format."""
        return self._seen(await self.http.request(method, path, **options))

    def job(self, response: httpx.Response) -> dict[str, Any]:
        """Wait for the job a response names; return its document."""
        assert response.status_code == 200, response.text
        return self.engine.jobs.wait(response.json()["jobid"], timeout=30).to_dict()

    def _seen(self, response: httpx.Response) -> httpx.Response:
        self.responses.append(response)
        return response


def _app(engine: Engine, tree: Path, tmp_path: Path, **options: Any) -> Starlette:
    return create_app(engine, sources=[tree], restore_dir=tmp_path / "restores", **options)


#: Where the `api` fixture's callers may register stores (besides STRONGROOM_HOME): schemes
#: with no installed backend, so that the engine's own refusals can be seen behind the fence.
ALLOWED = ["gopher://host/", "s3://bucket/", "memory://ram/", "ftp:///"]


@pytest.fixture
async def api(engine: Engine, tree: Path, tmp_path: Path, home: Path) -> AsyncIterator[Api]:
    allowed = [home.as_uri(), *ALLOWED]
    transport = httpx.ASGITransport(app=_app(engine, tree, tmp_path, allow_stores=allowed))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        client = Api(http, engine)
        yield client
    for response in client.responses:
        assert SECRET not in response.text
        assert SECRET not in str(response.url)


@pytest.fixture
def kept(engine: Engine, tree: Path) -> str:
    engine.create("kept", [tree], passcode=SECRET, description="made in code")
    return "kept"


def _error(response: httpx.Response, code: int, fragment: str) -> None:
    """The admin error shape, with the matching HTTP status and a message that says why."""
    assert response.status_code == code, response.text
    document = response.json()
    assert document["status"] == "error"
    assert document["code"] == code
    assert len(document["messages"]) == 1
    assert fragment in document["messages"][0], document


async def test_a_client_gone_before_its_body_ended_logs_no_traceback(
    engine: Engine, tree: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A caller with no token could fill the server's log with tracebacks by announcing a
    body and hanging up; it is a 400 that nobody reads."""
    app = _app(engine, tree, tmp_path)
    arriving = [
        {"type": "http.request", "body": b"name=x&descr", "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return arriving.pop(0) if arriving else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [
        (b"content-type", b"application/x-www-form-urlencoded"),
        (b"content-length", b"5000"),
    ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": f"{STORE}/backups/create",
        "raw_path": f"{STORE}/backups/create".encode(),
        "query_string": b"f=json",
        "root_path": "",
        "headers": headers,
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 50000),
    }
    with caplog.at_level(logging.DEBUG):
        await app(scope, receive, send)
    assert sent[0]["status"] == 400
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


def _future(days: int = 14) -> str:
    return str(int(time.time() * 1000) + days * DAY_MS)


# -- root, formats ----------------------------------------------------------------------


async def test_root_status_and_settings(api: Api, tree: Path, tmp_path: Path) -> None:
    root = await api.get(DR)
    assert root.json() == {
        "operations": ["status"],
        "resources": ["stores", "schedules", "settings"],
    }
    assert (await api.get(f"{DR}/status")).json() == {"status": NO_JOB}
    assert (await api.get(f"{DR}/settings")).json() == {
        "defaultStore": "backupsDefault",
        "sources": [str(tree)],
        "restoreDir": str(tmp_path / "restores"),
        "timeoutInSeconds": 7200,
    }


#: The status document before any job: the keys of a job's, with nothing in them.
NO_JOB = {
    "jobid": None,
    "operation": None,
    "backupName": None,
    "backupStore": None,
    "state": None,
    "scheduleType": None,
    "startTime": None,
    "completeTime": None,
    "overallDuration": None,
    "message": "No job has been submitted yet.",
    "stages": [],
}


async def test_status_describes_the_last_submitted_job_and_its_stages(
    api: Api, engine: Engine, kept: str
) -> None:
    created = api.job(await api.post(f"{STORE}/backups/create", name="nightly", passcode=SECRET))
    status = (await api.get(f"{DR}/status")).json()["status"]
    assert set(status) == set(NO_JOB)
    assert status | {"stages": None} == {
        "jobid": created["jobid"],
        "operation": "Backup",
        "backupName": "nightly",
        "backupStore": "backupsDefault",
        "state": "success",
        "scheduleType": "MANUAL",
        "startTime": created["starttime"],
        "completeTime": created["endtime"],
        "overallDuration": created["endtime"] - created["starttime"],
        "message": "Completed.",
        "stages": None,
    }
    assert status["stages"] == created["stages"]
    names = [stage["name"] for stage in status["stages"]]
    assert names == ["validating", "writing", "deriving the key", "committing"]
    for stage in status["stages"]:
        assert stage["state"] == "success"
        assert stage["duration"] >= 0
        assert created["starttime"] <= stage["lastUpdated"] <= created["endtime"]

    restore = f"{BACKUP}/restore"
    api.job(await api.post(restore, passcode="Not-the-passc0de"))
    status = (await api.get(f"{DR}/status")).json()["status"]
    assert (status["operation"], status["backupName"], status["state"]) == (
        "Restore",
        "kept",
        "failed",
    )
    assert "passcode" in status["message"]
    assert [(s["name"], s["state"]) for s in status["stages"]] == [("authenticating", "failed")]
    page = await api.send("GET", f"{DR}/status", params={"token": TOKEN})
    assert 'id="state" class="state-failed">failed<' in page.text
    assert "<td>authenticating</td>" in page.text
    assert f'href="http://testserver/admin/jobs/{status["jobid"]}"' in page.text

    engine.schedule_cleanup(timedelta(hours=1)).set()  # the cleanup system task, run once
    deadline = time.monotonic() + 10
    while not engine.jobs.find(operation="cleanup")[0]:
        assert time.monotonic() < deadline, "the scheduled cleanup never started"
        time.sleep(0.01)
    engine.jobs.wait(engine.jobs.find(operation="cleanup")[0][0].jobid, timeout=30)
    status = (await api.get(f"{DR}/status")).json()["status"]
    assert (status["operation"], status["scheduleType"], status["state"]) == (
        "Cleanup",
        "SCHEDULED",
        "success",
    )
    assert status["backupName"] is status["backupStore"] is None


async def test_the_backup_time_out_is_a_setting(api: Api, home: Path) -> None:
    updated = await api.post(f"{DR}/settings/update", timeoutInSeconds="60")
    assert updated.json() == {"status": "success"}
    assert (await api.get(f"{DR}/settings")).json()["timeoutInSeconds"] == 60
    assert stat.S_IMODE((home / SETTINGS_FILE).stat().st_mode) == 0o600
    for bad in ("0", "-5", "1.5", "an hour", "9" * 5000, str(30 * 24 * 3600 + 1)):
        response = await api.post(f"{DR}/settings/update", timeoutInSeconds=bad)
        _error(response, 400, "timeoutInSeconds must be a whole number of seconds")
    _error(await api.post(f"{DR}/settings/update"), 400, "timeoutInSeconds is required")
    assert (await api.get(f"{DR}/settings")).json()["timeoutInSeconds"] == 60
    (home / SETTINGS_FILE).write_text("{broken")
    _error(await api.get(f"{DR}/settings"), 400, f"{SETTINGS_FILE} is not JSON")
    (home / SETTINGS_FILE).write_text('{"timeoutInSeconds": "soon"}')  # names the file
    _error(await api.get(f"{DR}/settings"), 400, f"{SETTINGS_FILE}: timeoutInSeconds must be")

    form = await api.send(
        "POST", f"{DR}/settings/update", data={"token": TOKEN, "timeoutInSeconds": "90"}
    )
    assert form.status_code == 303
    page = await api.send("GET", form.headers["location"], params={"token": TOKEN})
    assert 'id="timeout">90 seconds<' in page.text
    assert 'name="timeoutInSeconds"' in page.text


async def test_a_create_past_the_time_out_is_cancelled_and_reads_failed(
    engine: Engine, home: Path, tmp_path: Path
) -> None:
    """A 1 TiB sparse file (no disk, all zeros) keeps a create running for minutes."""
    huge = tmp_path / "huge"
    huge.mkdir()
    with (huge / "sparse.img").open("wb") as sparse:
        sparse.truncate(1 << 40)
    app = create_app(engine, sources=[huge])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        api = Api(http, engine)
        await api.post(f"{DR}/settings/update", timeoutInSeconds="1")
        started = time.monotonic()
        job = api.job(await api.post(f"{STORE}/backups/create", name="huge", passcode=SECRET))
        status = (await api.get(f"{DR}/status")).json()["status"]
    assert time.monotonic() - started < 20
    assert job["status"] == "FAILED", job
    assert job["messages"][-1] == (
        "Timed out: still running after its time-out of 1 s, so it was cancelled; "
        "nothing was committed."
    )
    assert (status["state"], status["message"]) == ("failed", job["messages"][-1])
    assert status["stages"][-1]["name"] == "writing"
    assert status["stages"][-1]["state"] == "failed"
    assert engine.list() == []
    assert not list((home / "stores" / "backupsDefault").rglob("*huge*"))


async def test_f_chooses_json_pjson_or_html(api: Api) -> None:
    compact = await api.get(DR, f="json")
    assert compact.text == (
        '{"operations":["status"],"resources":["stores","schedules","settings"]}'
    )
    pretty = await api.get(DR, f="pjson")
    assert pretty.text.startswith('{\n  "operations": [\n')
    assert json.loads(pretty.text) == compact.json()
    page = await api.send("GET", DR, params={"token": TOKEN})
    assert page.headers["content-type"].startswith("text/html")
    assert "<h1>Disaster recovery</h1>" in page.text
    _error(await api.get(DR, f="xml"), 400, "f must be html, json or pjson")


# -- authentication ---------------------------------------------------------------------

OPERATIONS = [
    ("GET", DR),
    ("GET", f"{DR}/status"),
    ("GET", f"{DR}/settings"),
    ("GET", f"{DR}/stores"),
    ("POST", f"{DR}/stores/register"),
    ("GET", STORE),
    ("POST", f"{STORE}/update"),
    ("POST", f"{STORE}/unregister"),
    ("POST", f"{STORE}/validate"),
    ("GET", f"{STORE}/backups"),
    ("POST", f"{STORE}/backups/create"),
    ("GET", BACKUP),
    ("POST", f"{BACKUP}/update"),
    ("POST", f"{BACKUP}/restore"),
    ("POST", f"{BACKUP}/delete"),
    ("GET", "/admin/jobs/j7d22f855-2c9f-4934-94e4-93c5e85cd271"),
    ("POST", "/admin/jobs/j7d22f855-2c9f-4934-94e4-93c5e85cd271/cancel"),
]


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
@pytest.mark.parametrize("token", [None, "wrong-token"])
async def test_every_operation_needs_a_valid_token_and_does_nothing_without_one(
    api: Api, engine: Engine, home: Path, kept: str, method: str, path: str, token: str | None
) -> None:
    form = {
        "f": "json",
        "name": "other",
        "passcode": SECRET,
        "retentionDate": _future(),
        "storeName": "offsite",
        "settings": json.dumps({"url": (home / "offsite").as_uri(), "default": True}),
        **({"token": token} if token else {}),
    }
    if method == "GET":
        response = await api.send(method, path, params={"f": "json", "token": token or ""})
    else:
        response = await api.send(method, path, data=form)
    _error(response, 401, "token")
    assert response.headers["www-authenticate"] == "Bearer"
    assert [info.to_dict() for info in engine.list()] == [engine.info(kept).to_dict()]
    assert engine.info(kept).retention_date is None
    assert not (home / "config.toml").exists()
    assert not (home / JOBS_FILE).exists()
    assert not (home / "stores" / "backupsDefault" / "probes").exists()


async def test_tokens_ride_in_headers_the_form_or_a_get_query(api: Api) -> None:
    for header in ("Authorization", "X-Esri-Authorization"):
        response = await api.send(
            "GET", DR, params={"f": "json"}, headers={header: f"Bearer {TOKEN}"}
        )
        assert response.status_code == 200, header
    form = await api.send("POST", f"{STORE}/validate", data={"f": "json", "token": TOKEN})
    assert form.json()["ok"] is True
    query = await api.send("GET", DR, params={"f": "json", "token": TOKEN})
    assert query.status_code == 200
    in_post_query = await api.send(
        "POST", f"{STORE}/validate", params={"token": TOKEN}, data={"f": "json"}
    )
    _error(in_post_query, 401, "A POST takes its token in its body (token=...) or an")


async def test_the_token_file_holds_hashes_only(
    api: Api, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STRONGROOM_API_TOKEN_HASHES")
    _error(await api.get(DR), 401, "not valid")
    path = add_token("from-the-file-0123")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().startswith(hash_token("from-the-file-0123") + "  # added ")
    assert "from-the-file-0123" not in path.read_text()
    assert (await api.get(DR, token="from-the-file-0123")).status_code == 200
    _error(await api.get(DR), 401, "not valid")

    signed_in = await api.send("POST", "/admin/login", data={"token": "from-the-file-0123"})
    assert signed_in.status_code == 303
    assert (await api.http.get(DR)).status_code == 200  # the cookie holds the token
    remove_token(hash_token("from-the-file-0123")[:12])
    assert (await api.http.get(DR)).status_code == 401  # removed: refused, cookie or not


class _HostAuth:
    """A host product's login: its session header admits, a banned token is refused."""

    @hookimpl
    def strongroom_authenticate(self, token: str | None, request: Request) -> bool | None:
        if request.headers.get("x-host-session") == "admin":
            return True
        return False if token == TOKEN else None


async def test_a_plugin_decides_before_the_token_list(
    engine: Engine, tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugins = get_plugin_manager()
    plugins.register(_HostAuth())
    monkeypatch.setenv(
        "STRONGROOM_API_TOKEN_HASHES", f"{hash_token(TOKEN)},{hash_token('other-token')}"
    )
    app = _app(engine, tree, tmp_path, plugin_manager=plugins)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as http:
        session = await http.get(DR, params={"f": "json"}, headers={"X-Host-Session": "admin"})
        assert session.status_code == 200
        _error(await http.get(DR, params={"f": "json", "token": TOKEN}), 401, "not valid")
        deferred = await http.get(DR, params={"f": "json", "token": "other-token"})
        assert deferred.status_code == 200


# -- stores -----------------------------------------------------------------------------


async def test_store_register_get_update_validate_unregister(
    api: Api, engine: Engine, home: Path
) -> None:
    embedded = {
        "name": "backupsDefault",
        "default": True,
        "type": "file",
        "url": (home / "stores" / "backupsDefault").as_uri(),
        "rootDir": str(home / "stores" / "backupsDefault"),
        "compression": "zstd",
    }
    assert (await api.get(f"{DR}/stores")).json() == {"backupStores": [embedded]}

    offsite = home / "offsite"
    settings = json.dumps({"type": "file", "url": offsite.as_uri(), "compression": "none"})
    registered = await api.post(f"{DR}/stores/register", storeName="offsite", settings=settings)
    assert registered.json() == {"status": "success"}
    config = tomllib.loads((home / "config.toml").read_text())
    confined = {"confine_to": str(home)}  # the allowed directory it is walked down from
    assert config["stores"] == {
        "offsite": {
            "url": offsite.as_uri(),
            "options": confined,
            "compression": "none",
        }
    }
    assert (await api.get(f"{DR}/stores/offsite")).json() == {
        "name": "offsite",
        "default": False,
        "type": "file",
        "url": offsite.as_uri(),
        "rootDir": str(offsite),
        "compression": "none",
    }

    updated = await api.post(f"{DR}/stores/offsite/update", settings='{"default": true}')
    assert updated.json() == {"status": "success"}
    listed = (await api.get(f"{DR}/stores")).json()["backupStores"]
    assert {s["name"]: s["default"] for s in listed} == {"backupsDefault": False, "offsite": True}
    assert engine.config.default == "offsite"

    report = (await api.post(f"{DR}/stores/offsite/validate")).json()
    assert report["ok"] is True
    checks = {"write": True, "read": True, "list": True, "delete": True, "recognised": True}
    assert report["checks"] == checks

    gone = await api.post(f"{DR}/stores/offsite/unregister")
    assert gone.json() == {"status": "success"}
    _error(await api.get(f"{DR}/stores/offsite"), 404, "No store is named 'offsite'")
    assert tomllib.loads((home / "config.toml").read_text()) == {
        "default": "backupsDefault",
        "stores": {},
    }

    later = await api.post(
        f"{DR}/stores/register",
        storeName="later",
        settings=settings,
        isDefault="true",
        **{"async": "true"},
    )
    job = api.job(later)
    assert job["status"] == "COMPLETED", job
    assert job["operation"] == "register"
    assert job["result"]["default"] is True


async def test_a_place_that_was_a_store_is_not_registered_again_while_unmounted(
    api: Api, engine: Engine, home: Path, cli_added: None
) -> None:
    """The API confines what it registers (an option the CLI's store lacks): the place
    is the same, and an unmounted one is not marked again, nor offered a flag the API
    does not have without saying who runs it."""
    mount_point = home / "nas"
    mount_point.rename(home / "the-disk")  # unmounted: ...
    mount_point.mkdir()  # ... and the empty directory it was mounted on is left
    settings = json.dumps({"url": mount_point.as_uri()})
    refused = await api.post(f"{DR}/stores/register", storeName="again", settings=settings)
    _error(refused, 400, "the same place under another name")  # while 'nas' is configured
    config = StoresConfig.load()
    config.remove("nas")
    config.save()
    refused = await api.post(f"{DR}/stores/register", storeName="again", settings=settings)
    _error(refused, 503, "has known a strongroom store there")
    assert f"'strongroom stores add again {mount_point.as_uri()} --anew'" in refused.text
    assert list(mount_point.iterdir()) == []


async def test_a_store_under_a_mount_point_nothing_is_mounted_on_is_not_registered(
    api: Api, home: Path, mount_tables: MountTables
) -> None:
    """The API's register marks a place as `stores add` does: never on the disk below a
    share that /etc/fstab mounts and nothing is mounted on."""
    mount_point = home / "nas"
    mount_point.mkdir(parents=True)
    mount_tables.expect(mount_point)
    settings = json.dumps({"url": (mount_point / "backups").as_uri()})
    refused = await api.post(f"{DR}/stores/register", storeName="nas", settings=settings)
    _error(refused, 503, "fstab mounts, but nothing is mounted there now")
    assert list(mount_point.iterdir()) == []


@pytest.fixture
def cli_added(engine: Engine, home: Path) -> None:
    """The store `nas` at HOME/nas, added as the CLI adds it (no confinement)."""
    engine.add_store(StoreSpec("nas", (home / "nas").as_uri()))


@pytest.mark.parametrize(
    ("settings", "code", "fragment"),
    [
        ("{not json", 400, "settings is not JSON"),
        pytest.param("[" * 100_000, 400, "settings nests too deeply", id="deep-nesting"),
        ('["file:///x"]', 400, "must be a JSON object"),
        ('{"url": "file:///x", "region": "eu"}', 400, "unknown keys ['region']"),
        ('{"type": "file"}', 400, "needs the store's location as a url"),
        ('{"url": "no-scheme"}', 400, "is not a URL"),
        ('{"url": "file:///x", "type": "s3"}', 400, "does not match the url's scheme"),
        ('{"url": "file:///x", "options": {"a": [1]}}', 400, "settings.options must be"),
        ('{"url": "file:///x", "compression": 3}', 400, "settings.compression is one of"),
        (
            '{"url": "file:///x", "compression": "lz4"}',
            400,
            "'lz4' is not one of zstd, zstd-fixed, none",
        ),
        ('{"url": "HOME/x", "options": {"object_lock": "governance"}}', 400, "cannot lock"),
        ('{"url": "HOME/x", "options": {"confine_to": "/"}}', 403, "cannot be set over the API"),
        ('{"url": "gopher://host/x"}', 400, "no installed backend handles 'gopher'"),
        ('{"url": "s3://bucket/prefix"}', 400, "Install strongroom-s3"),
        ('{"url": "memory://ram/x"}', 400, "memory:// keeps objects in this process's memory"),
        ('{"url": "ftp:///x"}', 400, "ftp:///x gives no host"),
    ],
)
async def test_bad_store_settings_say_what_is_wrong(
    api: Api, home: Path, settings: str, code: int, fragment: str
) -> None:
    settings = settings.replace("HOME", home.as_uri())
    response = await api.post(f"{DR}/stores/register", storeName="offsite", settings=settings)
    _error(response, code, fragment)
    assert not (home / "config.toml").exists()


async def test_a_store_edit_while_another_holds_the_config_lock_is_a_conflict(
    api: Api, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another edit (a replica, the CLI) holding the configuration's lock is no fault of
    the request: 409 and "try again", not 400, and nothing is registered."""
    monkeypatch.setattr(config_module, "LOCK_TIMEOUT", 0.3)
    home.mkdir(exist_ok=True)
    holder = os.open(home / ".config.toml.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)  # as another process would hold it
        settings = json.dumps({"url": (home / "x").as_uri()})
        response = await api.post(f"{DR}/stores/register", storeName="x", settings=settings)
        _error(response, 409, "Try again")
    finally:
        os.close(holder)
    assert not (home / "config.toml").exists()


async def test_store_errors(api: Api, home: Path) -> None:
    register = f"{DR}/stores/register"
    settings = json.dumps({"url": (home / "x").as_uri()})
    _error(await api.post(register, settings=settings), 400, "storeName is required")
    _error(await api.post(register, storeName="bad name", settings=settings), 400, "bad name")
    _error(
        await api.post(register, storeName="x", settings=settings, isDefault="maybe"),
        400,
        "isDefault must be true or false",
    )
    await api.post(register, storeName="x", settings=settings)
    _error(await api.post(register, storeName="x", settings=settings), 400, "already configured")
    embedded = await api.post(register, storeName="backupsDefault", settings=settings)
    _error(embedded, 400, "is the embedded default store")
    _error(await api.post(f"{STORE}/unregister"), 400, "cannot be removed")
    _error(await api.get(f"{DR}/stores/nowhere"), 404, "No store is named 'nowhere'")
    _error(await api.get(f"{DR}/stores/nowhere/backups"), 404, "No store is named 'nowhere'")
    _error(await api.post(f"{DR}/stores/nowhere/validate"), 404, "No store is named")
    _error(
        await api.post(f"{DR}/stores/x/update", settings='{"default": false}'),
        400,
        '{"default": true}',
    )


# -- backups ----------------------------------------------------------------------------


async def test_backup_create_list_get_update_restore_delete(
    api: Api, engine: Engine, tree: Path
) -> None:
    retention = _future()
    created = await api.post(
        f"{STORE}/backups/create",
        name="backup_first",
        passcode=SECRET,
        description="",
        retentionDate=retention,
        f="pjson",
    )
    document = created.json()
    assert set(document) == {"jobsUrl", "jobid", "status"}
    assert document["status"] == "SUBMITTED"
    assert document["jobsUrl"] == f"http://testserver/admin/jobs/{document['jobid']}"
    job = api.job(created)
    assert job["status"] == "COMPLETED", job
    assert job["operationURI"] == f"http://testserver{STORE}/backups/create"
    assert job["progress"]["percent"] == 100
    assert (await api.get(document["jobsUrl"])).json() == job

    info = engine.info("backup_first").to_dict()
    assert info["retentionDate"] == int(retention)
    assert (await api.get(f"{STORE}/backups")).json() == {"backups": [info], "unreadable": []}
    assert (await api.get(f"{STORE}/backups/backup_first")).json() == info

    later = _future(30)
    updated = await api.post(f"{STORE}/backups/backup_first/update", retentionDate=later)
    assert updated.json() == {"status": "success"}
    assert (await api.get(f"{STORE}/backups/backup_first")).json()["retentionDate"] == int(later)

    restored = api.job(await api.post(f"{STORE}/backups/backup_first/restore", passcode=SECRET))
    assert restored["status"] == "COMPLETED", restored
    assert snapshot(Path(restored["result"]["restoreDir"]) / tree.name) == snapshot(tree)

    wrong = api.job(
        await api.post(f"{STORE}/backups/backup_first/restore", passcode="Not-the-passc0de")
    )
    assert wrong["status"] == "FAILED"
    assert "passcode" in wrong["messages"][0]
    assert "Not-the-passc0de" not in json.dumps(wrong)

    deleted = await api.post(f"{STORE}/backups/backup_first/delete")
    assert deleted.json() == {"status": "success"}
    assert (await api.get(f"{STORE}/backups")).json() == {"backups": [], "unreadable": []}

    engine.create("second", [tree], passcode=SECRET)
    job = api.job(await api.post(f"{STORE}/backups/second/delete", **{"async": "true"}))
    assert (job["status"], job["operation"], job["backupName"]) == ("COMPLETED", "delete", "second")
    assert engine.list() == []


@pytest.mark.parametrize(
    ("form", "code", "fragment"),
    [
        ({"name": None}, 400, "The parameter name is required."),
        ({"passcode": None}, 400, "The parameter passcode is required."),
        ({"passcode": "short12"}, 400, "at least 8 characters"),
        ({"name": "../escape"}, 400, "'../escape'"),
        ({"retentionDate": "1635945710988"}, 400, "is in the past"),
        ({"retentionDate": "tomorrow"}, 400, "neither epoch milliseconds"),
        ({"keepDays": "14"}, 400, "not both"),
        ({"retentionDate": None, "keepDays": "-1"}, 400, "keepDays must be"),
        ({"retentionDate": None, "keepDays": "9" * 5000}, 400, "keepDays must be"),
        ({"name": "kept"}, 409, "already exists"),
        ({"store": "nowhere"}, 404, "No store is named 'nowhere'"),
    ],
)
async def test_a_bad_create_says_what_is_wrong_and_starts_nothing(
    api: Api, home: Path, kept: str, form: dict[str, str | None], code: int, fragment: str
) -> None:
    store = form.pop("store", None) or "backupsDefault"
    fields = {"name": "fresh", "passcode": SECRET, "retentionDate": _future(), **form}
    sent = {key: value for key, value in fields.items() if value is not None}
    _error(await api.post(f"{DR}/stores/{store}/backups/create", **sent), code, fragment)
    assert not (home / JOBS_FILE).exists()


async def test_other_backup_errors(api: Api, kept: str) -> None:
    _error(await api.get(f"{STORE}/backups/missing"), 404, "No backup named 'missing'")
    _error(await api.post(f"{STORE}/backups/missing/restore", passcode=SECRET), 404, "missing")
    _error(await api.post(f"{STORE}/backups/missing/delete"), 404, "No backup named")
    _error(
        await api.post(f"{STORE}/backups/missing/update", retentionDate=_future()),
        404,
        "No backup named",
    )
    _error(await api.post(f"{BACKUP}/restore"), 400, "The parameter passcode is required.")
    _error(await api.post(f"{BACKUP}/update"), 400, "The parameter retentionDate is required.")
    _error(await api.post(f"{BACKUP}/update", retentionDate="12:00"), 400, "nor an ISO 8601 date")
    _error(await api.post(f"{BACKUP}/delete", **{"async": "yes"}), 400, "true or false")
    _error(await api.get(f"{STORE}/backups/create"), 405, "create takes a POST")
    passcode_in_url = await api.send(
        "POST",
        f"{BACKUP}/restore",
        params={"passcode": "In-the-URL-1"},
        data={"token": TOKEN, "f": "json"},
    )
    _error(passcode_in_url, 400, "never in the URL")


async def test_minus_one_means_never_expires_both_ways(api: Api, engine: Engine) -> None:
    """The ArcGIS convention: retentionDate=-1 asks for no expiry, and answers say -1."""
    created = api.job(
        await api.post(
            f"{STORE}/backups/create", name="forever", passcode=SECRET, retentionDate="-1"
        )
    )
    assert created["status"] == "COMPLETED", created
    assert (await api.get(f"{STORE}/backups/forever")).json()["retentionDate"] == -1
    assert (await api.post(f"{STORE}/backups/forever/update", retentionDate=_future())).json()[
        "status"
    ] == "success"
    assert (await api.get(f"{STORE}/backups/forever")).json()["retentionDate"] > 0
    await api.post(f"{STORE}/backups/forever/update", retentionDate="-1")
    assert engine.info("forever").retention_date is None


async def test_create_needs_sources(engine: Engine, tmp_path: Path) -> None:
    app = create_app(engine)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as http:
        response = await http.post(
            f"{STORE}/backups/create",
            data={"name": "x", "passcode": SECRET, "f": "json", "token": TOKEN},
        )
    _error(response, 400, "--source")


# -- jobs -------------------------------------------------------------------------------


async def test_jobs_are_found_cancelled_and_shown(api: Api, engine: Engine) -> None:
    _error(await api.get("/admin/jobs/j7d22f855-2c9f-4934-94e4-93c5e85cd271"), 404, "No job")
    _error(await api.get("/admin/jobs/not-a-job"), 404, "No job has the id 'not-a-job'")
    long = await api.get(f"/admin/jobs/{'j' * 5000}")  # a caller's text is quoted in part
    _error(long, 404, "No job has the id 'jjj")
    assert len(long.text) < 1000

    jobid = engine.jobs.submit("loop", until_cancelled, store="backupsDefault").jobid
    page = await api.send("GET", f"/admin/jobs/{jobid}", params={"token": TOKEN})
    assert '<meta http-equiv="refresh"' in page.text
    assert 'id="cancel"' in page.text
    cancelled = await api.post(f"/admin/jobs/{jobid}/cancel")
    assert cancelled.json()["status"] in ("CANCELLING", "CANCELLED")
    assert engine.jobs.wait(jobid, timeout=30).status == "CANCELLED"
    ended = await api.send("GET", f"/admin/jobs/{jobid}", params={"token": TOKEN})
    assert 'id="status" class="status-CANCELLED">CANCELLED<' in ended.text
    assert "refresh" not in ended.text
    assert "No stages reported." in ended.text

    staged = engine.jobs.submit("steps", lambda job: job.stage("counting"))
    engine.jobs.wait(staged.jobid)
    page = await api.send("GET", f"/admin/jobs/{staged.jobid}", params={"token": TOKEN})
    assert '<td>counting</td><td class="state-success">success</td>' in page.text


async def test_jobs_are_listed_newest_first_a_page_at_a_time(api: Api, engine: Engine) -> None:
    submitted = []
    for operation in ("create", "restore", "create", "delete", "create"):
        work = (lambda job: None) if operation != "restore" else _refuse
        submitted.append(engine.jobs.wait(engine.jobs.submit(operation, work).jobid).to_dict())
        time.sleep(0.002)  # one job per millisecond: newest first is then one order
    newest = submitted[::-1]

    listed = (await api.get("/admin/jobs")).json()
    assert listed == {"jobs": newest, "total": 5, "start": 1, "num": 10, "nextStart": -1}
    first = (await api.get("/admin/jobs", num="2")).json()
    assert (first["jobs"], first["nextStart"]) == (newest[:2], 3)
    last = (await api.get("/admin/jobs", num="2", start="5")).json()
    assert (last["jobs"], last["nextStart"]) == (newest[4:], -1)
    creates = (await api.get("/admin/jobs", operation="create")).json()
    assert (creates["jobs"], creates["total"]) == ([newest[0], newest[2], newest[4]], 3)
    failed = (await api.get("/admin/jobs", status="failed")).json()
    assert failed["jobs"] == [submitted[1]]
    for key, value in (("num", "0"), ("num", "101"), ("start", "0"), ("start", "x")):
        _error(await api.get("/admin/jobs", **{key: value}), 400, f"{key} must be a whole number")
    _error(await api.get("/admin/jobs", status="DONE"), 400, "status must be one of SUBMITTED")

    page = await api.send(
        "GET", "/admin/jobs", params={"token": TOKEN, "num": "2", "start": "3", "status": ""}
    )
    assert "Jobs 3 to 4 of 5, newest first." in page.text
    assert f'href="http://testserver/admin/jobs/{newest[2]["jobid"]}"' in page.text
    assert (
        'id="newer" href="http://testserver/admin/jobs?num=2&amp;status=&amp;operation=&amp;start=1"'
        in page.text
    )
    assert (
        'id="older" href="http://testserver/admin/jobs?num=2&amp;status=&amp;operation=&amp;start=5"'
        in page.text
    )
    every = await api.send("GET", DR, params={"token": TOKEN})
    assert '<a href="http://testserver/admin/jobs" id="nav-jobs">Jobs</a>' in every.text


def _refuse(job: Any) -> None:
    raise ConfigError("Refused on purpose.")


# -- routing and limits -----------------------------------------------------------------


async def test_unknown_paths_wrong_methods_and_huge_bodies(api: Api) -> None:
    _error(await api.get("/admin/system/nothing"), 404, "There is no /admin/system/nothing here")
    wrong_method = await api.get(f"{BACKUP}/restore")
    _error(wrong_method, 405, "does not take GET")
    assert wrong_method.headers["allow"] == "POST"  # RFC 9110: a 405 says what is allowed
    huge = await api.send(
        "POST",
        f"{STORE}/validate",
        content=b"x" * (1024 * 1024 + 1),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Authorization": f"Bearer {TOKEN}",
        },
        params={"f": "json"},
    )
    _error(huge, 413, "larger than")
    page = await api.send("GET", "/admin/system/nothing")
    assert page.status_code == 404 and "<h1>Error 404</h1>" in page.text


async def test_the_app_mounts_inside_a_host_product(
    engine: Engine, tree: Path, tmp_path: Path
) -> None:
    host = Starlette(routes=[Mount("/context", app=_app(engine, tree, tmp_path))])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=host), base_url="https://org.example"
    ) as http:
        created = await http.post(
            f"/context{STORE}/backups/create",
            data={"name": "mounted", "passcode": SECRET, "f": "json", "token": TOKEN},
        )
        jobs_url = created.json()["jobsUrl"]
        assert jobs_url.startswith("https://org.example/context/admin/jobs/j")
        engine.jobs.wait(created.json()["jobid"], timeout=30)
        job = await http.get(jobs_url, params={"f": "json", "token": TOKEN})
    assert job.json()["status"] == "COMPLETED"


# -- secrets ----------------------------------------------------------------------------


async def test_the_passcode_is_never_logged_echoed_or_stored(
    api: Api, home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    create = f"{STORE}/backups/create"
    api.job(await api.post(create, name="secret", passcode=SECRET))
    api.job(await api.post(f"{STORE}/backups/secret/restore", passcode=SECRET))
    api.job(await api.post(f"{STORE}/backups/secret/restore", passcode=SECRET + "-wrong"))
    await api.post(create, name="secret", passcode=SECRET)  # 409
    await api.post(create, name="bad name", passcode=SECRET)  # 400
    await api.post(create, name="x", passcode=SECRET, retentionDate="soon")  # 400
    html = await api.send("POST", create, data={"name": "page", "passcode": SECRET, "token": TOKEN})
    assert html.status_code == 303
    assert SECRET not in caplog.text
    assert "Job" in caplog.text  # the jobs did log
    stored = b"".join(p.read_bytes() for p in home.glob(f"{JOBS_FILE}*") if p.is_file())
    assert b"secret" in stored
    assert SECRET.encode() not in stored


# -- the HTML pages ---------------------------------------------------------------------


async def test_pages_sign_in_with_a_cookie_and_refuse_other_sites(
    api: Api, engine: Engine, kept: str
) -> None:
    http = api.http
    asked = await api.send("GET", f"{STORE}/backups", params={"token": "wrong"})
    assert asked.status_code == 401
    assert 'name="next" value="/admin/system/disasterrecovery/stores/backupsDefault/backups"' in (
        asked.text
    )
    refused = await api.send("POST", "/admin/login", data={"token": "wrong", "next": "/x"})
    assert refused.status_code == 401 and COOKIE not in refused.cookies

    signed_in = await api.send(
        "POST", "/admin/login", data={"token": TOKEN, "next": f"{STORE}/backups"}
    )
    assert signed_in.status_code == 303
    assert signed_in.headers["location"] == f"{STORE}/backups"
    cookie = signed_in.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/admin" in cookie

    listing = await http.get(f"{STORE}/backups")
    assert listing.status_code == 200
    assert "made in code" in listing.text and "Sign out" in listing.text

    elsewhere = await http.post(
        f"{BACKUP}/delete", data={"f": "json"}, headers={"Origin": "https://evil.example"}
    )
    _error(elsewhere, 403, "another site")
    assert engine.info(kept)

    sent_elsewhere = await api.send(
        "POST", "/admin/login", data={"token": TOKEN, "next": "https://evil.example/"}
    )
    assert sent_elsewhere.headers["location"] == f"http://testserver{DR}"

    await http.post("/admin/logout")
    assert (await http.get(f"{STORE}/backups")).status_code == 401


def _broken_listing(*_: object, **__: object) -> None:
    raise RuntimeError("a bug")


async def test_every_answer_forbids_framing_caching_and_other_sites_referer(
    engine: Engine, tree: Path, tmp_path: Path, kept: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page another site frames (clickjacking: two clicks deleted a backup), a page Back
    shows after signing out, a Referer carrying a URL's token: every kind of answer says
    no, the server's own 500 too."""
    transport = httpx.ASGITransport(app=_app(engine, tree, tmp_path), raise_app_exceptions=False)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        answers = {
            "JSON": await http.get(DR, params={"f": "json"}, headers=bearer),
            "page": await http.get(BACKUP, headers=bearer),
            "sign-in page": await http.get(BACKUP),
            "unknown path": await http.get(f"{DR}/nothing"),
            "wrong method": await http.get(f"{BACKUP}/restore", headers=bearer),
            "signed in": await http.post("/admin/login", data={"token": TOKEN}),
            "contents": await http.post(
                f"{BACKUP}/contents", data={"passcode": SECRET}, headers=bearer
            ),
        }
        monkeypatch.setattr(Engine, "listing", _broken_listing)
        answers["server failure"] = await http.get(f"{STORE}/backups", headers=bearer)
    statuses = {what: answer.status_code for what, answer in answers.items()}
    assert statuses == {
        "JSON": 200,
        "page": 200,
        "sign-in page": 401,
        "unknown path": 404,
        "wrong method": 405,
        "signed in": 303,
        "contents": 200,
        "server failure": 500,
    }
    for what, answer in answers.items():
        headers = answer.headers
        assert headers["x-frame-options"] == "DENY", what
        policy = headers["content-security-policy"]
        assert "frame-ancestors 'none'" in policy and "default-src 'none'" in policy, what
        assert headers["cache-control"] == "no-store", what
        assert headers["referrer-policy"] == "same-origin", what
        assert headers["x-content-type-options"] == "nosniff", what


async def test_pages_show_control_and_format_characters_escaped(
    api: Api, engine: Engine, tree: Path
) -> None:
    """A right-to-left override made `evil\\u202etxt.exe` read as `evilexe.txt` on the
    contents page, and a line break in a name read as a space; the CLI escaped both."""
    (tree / "evil\u202etxt.exe").write_text("x")
    (tree / "new\nline").write_text("x")
    engine.create("odd", [tree], passcode=SECRET, description="pay\u202eslip \x1b[31m")
    odd = f"{STORE}/backups/odd"
    pages = [
        await api.send("GET", odd, params={"token": TOKEN}),
        await api.send("GET", f"{STORE}/backups", params={"token": TOKEN}),
        await api.send("POST", f"{odd}/contents", data={"token": TOKEN, "passcode": SECRET}),
    ]
    for page in pages:
        assert page.status_code == 200
        assert "\u202e" not in page.text and "\x1b" not in page.text
    assert all("pay\\u202eslip \\x1b[31m" in page.text for page in pages[:2])
    contents = pages[2].text
    assert "data/evil\\u202etxt.exe" in contents and "data/new\\nline" in contents


async def test_no_frame_holds_the_passcode_for_a_server_errors_traceback(
    api: Api, kept: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error reporter that records a traceback's locals (Sentry does by default, in a
    product that mounts the API) saw the passcode in the request's parameters and in every
    frame from the handler to the engine. Tokens too: the request's form holds one."""

    def failing(*args: object, **kwargs: object) -> NoReturn:
        raise RuntimeError("the store's library failed")

    monkeypatch.setattr(Engine, "ls", failing)
    with pytest.raises(RuntimeError) as caught:
        await api.post(f"{STORE}/backups/{kept}/contents", passcode=SECRET)
    _assert_no_secret_in_the_servers_frames(caught.value)


def test_a_requests_parameters_show_no_secret_in_their_repr() -> None:
    """What a traceback's locals show of a request: a store's settings and option values
    may hold a credential typed by mistake, as the passcode and the token are secrets."""
    fields = Fields(
        passcode="p-secret", token="t-secret", settings='{"k": "s-secret"}', option2Value="o-secret"
    )
    fields.update(storeName="nas", option2Key="account_key")
    assert (
        "secret" not in repr(fields) and "'nas'" in repr(fields) and "account_key" in repr(fields)
    )


def _assert_no_secret_in_the_servers_frames(error: BaseException) -> None:
    """(Its own frame, so that no secret is a local of the test's.) The frames from the
    ASGI app in: the test's client above it holds the secrets it sends."""
    stack = traceback.TracebackException.from_exception(error, capture_locals=True).stack
    server = ("/starlette/", "/anyio/", "/strongroom/")
    shown = "".join(
        stack.from_list([f for f in stack if any(p in f.filename for p in server)]).format()
    )
    assert "Passcode('********')" in shown  # the frames' locals were shown
    for secret in (SECRET, TOKEN):
        assert secret not in shown, shown


async def test_the_next_contents_page_keeps_a_path_that_pages_show_escaped(
    api: Api, engine: Engine, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A form field's value is sent back as given: escaped like shown text, the hidden
    path named another path, and the next page was a 400 "Not in backup"."""
    odd = tree / "dir\u202e\u00a0x"
    odd.mkdir()
    for number in range(3):
        (odd / f"{number}.txt").write_text("x")
    engine.create("odd", [tree], passcode=SECRET)
    monkeypatch.setattr("strongroom.web.backuproutes.CONTENTS_LIMIT", 2)
    url = f"{STORE}/backups/odd/contents"
    form = {"token": TOKEN, "passcode": SECRET, "path": "data/dir\u202e\u00a0x"}
    first = await api.send("POST", url, data=form)
    hidden = re.search(r'name="path" value="([^"]*)"', first.text)
    assert hidden is not None and hidden.group(1) == form["path"]
    following = await api.send("POST", url, data={**form, "path": hidden.group(1), "start": "3"})
    assert following.status_code == 200 and "2.txt" in following.text
    past = await api.send("POST", url, data={**form, "start": "99"})
    assert "There are fewer than 99 entries." in past.text


async def test_pages_render_every_resource(api: Api, engine: Engine, kept: str) -> None:
    engine.update_retention(kept, _future())
    pages = {
        DR: "Backup stores",
        f"{DR}/settings": "Backup time-out",
        f"{DR}/status": "No job has been submitted yet.",
        "/admin/jobs": "No jobs.",
        f"{DR}/stores": 'href="http://testserver/admin/system/disasterrecovery/stores/backupsDefault"',
        STORE: "Validate",
        f"{STORE}/backups": "made in code",
        f"{STORE}/backups/create": 'name="passcode"',
        BACKUP: "Restore into a new directory",
    }
    for path, expected in pages.items():
        page = await api.send("GET", path, params={"token": TOKEN})
        assert page.status_code == 200, path
        assert expected in page.text, path
    validated = await api.send("POST", f"{STORE}/validate", data={"token": TOKEN})
    assert "<h1>Store backupsDefault: valid</h1>" in validated.text
    assert "put_if_absent" in validated.text


async def test_forms_create_through_a_redirect_and_escape_what_they_show(
    api: Api, engine: Engine
) -> None:
    response = await api.send(
        "POST",
        f"{STORE}/backups/create",
        data={
            "name": "from-form",
            "passcode": SECRET,
            "description": "<script>alert(1)</script>",
            "keepDays": "14",
            "token": TOKEN,
        },
    )
    assert response.status_code == 303
    jobid = response.headers["location"].rsplit("/", 1)[1]
    assert engine.jobs.wait(jobid, timeout=30).status == "COMPLETED"
    retention = engine.info("from-form").retention_date
    assert retention is not None
    assert 13.9 < (retention.timestamp() - time.time()) / 86400 <= 14
    page = await api.send("GET", f"{STORE}/backups/from-form", params={"token": TOKEN})
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "<script>" not in page.text
    job_page = await api.send("GET", f"/admin/jobs/{jobid}", params={"token": TOKEN})
    assert 'id="backup"' in job_page.text and "refresh" not in job_page.text


# -- contents ---------------------------------------------------------------------------


async def test_one_apps_requests_derive_at_most_two_keys_at_once(
    api: Api, kept: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Derivations take one process-wide lock: eight contents requests at once (wrong
    passcodes, say) all queued on it, ahead of every other tenant's."""
    running, most = [0], [0]
    lock = threading.Lock()
    ls = Engine.ls

    def counted(self: Engine, *args: Any, **kwargs: Any) -> Any:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            time.sleep(0.1)
            return ls(self, *args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(Engine, "ls", counted)
    answers = await asyncio.gather(
        *(api.post(f"{BACKUP}/contents", passcode=SECRET) for _ in range(8))
    )
    assert [a.status_code for a in answers] == [200] * 8
    assert most[0] == 2


async def test_a_name_that_is_not_utf8_is_escaped_not_a_failed_answer(
    api: Api, engine: Engine, tmp_path: Path
) -> None:
    """A source name with a byte that is not UTF-8 failed every answer that showed it
    (500): the contents as JSON and as a page, and, once a create's result named what it
    left out, the job and every caller's jobs list."""
    source = tmp_path / "odd"
    source.mkdir()
    (source / os.fsdecode(b"bad\xffname")).write_text("kept\n")
    os.mkfifo(source / os.fsdecode(b"pipe\xfe"))
    job = engine.jobs.wait(engine.submit_backup("odd", [source], passcode=SECRET).jobid, 30)
    assert job.status.value == "COMPLETED"
    for fmt in ("json", "pjson", "html"):
        listed = await api.post(f"{STORE}/backups/odd/contents", passcode=SECRET, f=fmt)
        assert listed.status_code == 200, listed.text
        assert "bad\\udcffname" in listed.text
        for page in (f"/admin/jobs/{job.jobid}", "/admin/jobs"):
            shown = await api.get(page, f=fmt)
            assert shown.status_code == 200, shown.text
            assert "pipe\\udcfe" in shown.text or (fmt, page) == ("html", "/admin/jobs")
    entries = (await api.post(f"{STORE}/backups/odd/contents", passcode=SECRET)).json()
    assert "odd/bad\udcffname" in [e["path"] for e in entries["entries"]]  # the same name


async def test_a_restore_takes_a_path_and_no_call_drops_what_it_was_given(
    api: Api, kept: str, tmp_path: Path
) -> None:
    """`path` on a restore was ignored: the whole backup came back, answered as done. A
    second `path` on contents (or a second `f`) was dropped the same way, and settings took
    a `restoreDir` it does not change."""
    form = {"f": "json", "token": TOKEN, "passcode": SECRET, "path": "data/nested"}
    job = api.job(await api.send("POST", f"{BACKUP}/restore", data=form))
    assert job["status"] == "COMPLETED", job
    restored = Path(job["result"]["restoreDir"])
    assert sorted(p.name for p in (restored / "data").iterdir()) == ["nested"]
    twice = {"f": "json", "token": TOKEN, "passcode": SECRET}
    answers = [
        await api.send(
            "POST",
            f"{BACKUP}/contents",
            content=f"{urlencode(twice)}&{extra}",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        for extra in ("path=data&path=data/nested", "f=html")
    ]
    _error(answers[0], 400, "The parameter path is given more than once")
    assert answers[1].status_code == 400 and "given more than once" in answers[1].text  # a page
    twice_f = await api.send("GET", f"{DR}/settings?f=json&f=html&token={TOKEN}")
    assert twice_f.status_code == 400 and "given more than once" in twice_f.text
    in_query = {"token": TOKEN, "passcode": SECRET}
    for query, fragment in (
        ("f=json&path=data/nested", "path as a form field"),
        ("f=json&f=html", "given more than once"),
        ("f=html", "differently"),
    ):
        answer = await api.send("POST", f"{BACKUP}/restore?{query}", data={**in_query, "f": "json"})
        assert answer.status_code == 400 and fragment in answer.text, (query, answer.text)
    _error(await api.post(f"{BACKUP}/restore", passcode=SECRET, paths="data"), 400, "paths")
    _error(await api.send("POST", f"{BACKUP}/verify", data=form), 400, "path")
    _error(await api.post(f"{BACKUP}/verify", passcode=SECRET, **{"async": "false"}), 400, "job")
    refused = await api.post(f"{DR}/settings/update", timeoutInSeconds="60", restoreDir="/etc")
    _error(refused, 400, "restoreDir")


async def test_a_body_that_is_not_a_form_or_not_utf8_is_refused_saying_so(
    api: Api, kept: str
) -> None:
    """A JSON body was answered 'The parameter passcode is required.'; `%E9` in a field was
    stored as U+FFFD without a word."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    as_json = await api.send(
        "POST", f"{BACKUP}/verify?f=json", json={"passcode": SECRET}, headers=headers
    )
    _error(as_json, 415, "form fields")
    assert "application/json" in as_json.json()["messages"][0]
    # a delete that reads no parameter at all must not run on a body it cannot read
    as_json = await api.send(
        "POST", f"{BACKUP}/delete?f=json", json={"async": True}, headers=headers
    )
    _error(as_json, 415, "form fields")
    assert kept in [b["name"] for b in (await api.get(f"{STORE}/backups")).json()["backups"]]
    nothing = await api.send("POST", f"{STORE}/validate?f=json", json={}, headers=headers)
    assert nothing.status_code == 200, nothing.text  # an empty {} carries nothing to drop
    latin1 = await api.send(
        "POST",
        f"{BACKUP}/update?f=json",
        content=b"retentionDate=never&description=caf%E9",
        headers={**headers, "content-type": "application/x-www-form-urlencoded"},
    )
    _error(latin1, 400, "not UTF-8")
    stranger = await api.send(
        "POST",
        f"{BACKUP}/update?f=json",
        content=b"token=not-a-token&description=caf%E9",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert stranger.status_code == 401, stranger.text  # who asks comes first


async def test_contents_lists_a_backup_with_its_passcode_only(api: Api, kept: str) -> None:
    listed = await api.post(f"{BACKUP}/contents", passcode=SECRET)
    assert listed.status_code == 200, listed.text
    entries = {entry["path"]: entry for entry in listed.json()["entries"]}
    assert listed.json()["truncated"] is False
    assert entries["data/link-to-notes"]["type"] == "symlink"
    assert entries["data/link-to-notes"]["linkTarget"] == "nested/deeper/notes.md"
    assert entries["data/nested/run.sh"]["mode"] == "0750"
    form = {"f": "json", "token": TOKEN, "passcode": SECRET, "path": "data/nested/deeper"}
    narrowed = await api.send("POST", f"{BACKUP}/contents", data=form)
    assert [e["path"] for e in narrowed.json()["entries"]] == [
        "data/nested/deeper",
        "data/nested/deeper/notes.md",
    ]
    _error(await api.post(f"{BACKUP}/contents", passcode="Wrong-passcode-1"), 400, "passcode")
    _error(await api.post(f"{BACKUP}/contents"), 400, "passcode")
    _error(await api.get(f"{BACKUP}/contents"), 405, "")


async def test_contents_are_cut_at_the_limit_and_say_so(
    api: Api, kept: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    everything = (await api.post(f"{BACKUP}/contents", passcode=SECRET)).json()["entries"]
    assert len(everything) > 3 and not everything[-1]["path"].startswith("data/nested")
    monkeypatch.setattr("strongroom.web.backuproutes.CONTENTS_LIMIT", 3)
    listed = (await api.post(f"{BACKUP}/contents", passcode=SECRET)).json()
    assert len(listed["entries"]) == 3 and listed["truncated"] is True
    assert (listed["start"], listed["nextStart"]) == (1, 4)
    pages, start = [], 1
    while start != -1:  # a directory with more entries than a page is listed in full
        page = (await api.post(f"{BACKUP}/contents", passcode=SECRET, start=str(start))).json()
        pages.extend(page["entries"])
        start = page["nextStart"]
    assert pages == everything
    under = {"f": "json", "token": TOKEN, "passcode": SECRET, "path": "data/nested", "start": "2"}
    nested = await api.send("POST", f"{BACKUP}/contents", data=under)
    assert [entry["path"] for entry in nested.json()["entries"]] == [
        entry["path"] for entry in everything if entry["path"].startswith("data/nested")
    ][1:4]
    past_the_end = await api.post(f"{BACKUP}/contents", passcode=SECRET, start="999")
    assert past_the_end.json()["entries"] == [] and past_the_end.json()["nextStart"] == -1
    _error(await api.post(f"{BACKUP}/contents", passcode=SECRET, start="0"), 400, "start")
    html = await api.send(
        "POST", f"{BACKUP}/contents", data={"token": TOKEN, "passcode": SECRET, "start": "4"}
    )
    assert "Entries 4 to 6 are shown; there are more." in html.text
    assert '<input type="hidden" name="start" value="7">' in html.text
    assert SECRET not in html.text  # the next page's form asks for the passcode again


async def test_the_backup_page_shows_contents_on_a_passcode(api: Api, kept: str) -> None:
    page = await api.send(
        "POST", f"{BACKUP}/contents", data={"token": TOKEN, "passcode": SECRET, "path": ""}
    )
    assert page.status_code == 200, page.text
    assert '<table id="contents">' in page.text and "nested/deeper/notes.md" in page.text
    backup_page = await api.send("GET", BACKUP, params={"token": TOKEN})
    assert "/backups/kept/contents" in backup_page.text


# -- what a token holder may register ---------------------------------------------------


async def test_a_caller_can_give_the_default_back_to_the_operators_store(
    api: Api, engine: Engine, home: Path, tmp_path: Path
) -> None:
    """Making a store the default reaches no new place: a caller who made its own store the
    default can choose the operator's again, though it could not register it."""
    engine.add_store(StoreSpec("operator", (tmp_path / "operator").as_uri()), default=True)
    settings = json.dumps({"url": (home / "mine").as_uri()})
    assert (await api.post(f"{DR}/stores/register", storeName="mine", settings=settings)).is_success
    mine = await api.post(f"{DR}/stores/mine/update", settings='{"default": true}')
    assert mine.json() == {"status": "success"}
    assert StoresConfig.load().default == "mine"
    back = await api.post(f"{DR}/stores/operator/update", settings='{"default": true}')
    assert back.json() == {"status": "success"}  # was 403: not under an allowed location
    assert StoresConfig.load().default == "operator"
    _error(await api.post(f"{DR}/stores/operator/unregister"), 403, "is not under")
    _error(await api.post(f"{DR}/stores/nope/update", settings='{"default": true}'), 404, "nope")


async def test_without_allowed_locations_the_api_edits_no_store(
    engine: Engine, tree: Path, tmp_path: Path, home: Path
) -> None:
    closed = _app(engine, tree, tmp_path)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=closed), base_url="http://testserver"
    ) as http:
        api = Api(http, engine)
        settings = json.dumps({"url": (home / "offsite").as_uri()})
        registered = await api.post(f"{DR}/stores/register", storeName="x", settings=settings)
        _error(registered, 403, "--allow-store")
        _error(await api.post(f"{STORE}/update", settings='{"default": true}'), 403, "allow")
        _error(await api.post(f"{STORE}/unregister"), 403, "--allow-store")
        assert (await api.post(f"{STORE}/validate")).json()["ok"] is True  # still usable
    assert not (home / "config.toml").exists()


@pytest.mark.parametrize(
    ("url", "options", "fragment"),
    [
        ("file:///tmp/elsewhere", {}, "is not under a location this server allows"),
        ("HOME-evil/x", {}, "is not under"),
        ("HOME/../evil", {}, "not a plain location"),
        ("HOME/%2e%2e/evil", {}, "not a plain location"),
        ("HOME//x", {}, "not a plain location"),
        ("HOME/x?y=1", {}, "not a plain location"),
        ("file://user@localhost/HOMEPATH/x", {}, "not a plain location"),
        ("http://127.0.0.1:9/internal/admin?x=", {}, "not a plain location"),
        ("http://127.0.0.1:9/internal/admin", {}, "is not under"),
        ("s3://bucket-other/x", {}, "is not under"),
        ("s3://bucket/x", {"key": {"env": "SECRET_DB_PASSWORD"}}, "secrets come from"),
        ("s3://bucket/x", {"region": {"env": "SECRET_DB_PASSWORD"}}, "secrets come from"),
        ("s3://bucket/x", {"secret": "plain"}, "secrets come from"),
        ("s3://bucket/x", {"endpoint_url": "http://127.0.0.1:9"}, "cannot be set over the API"),
        ("gopher://host/x", {"client_kwargs": "x"}, "cannot be set over the API"),
        ("HOME/x", {"a": "b"}, "cannot be set over the API"),
    ],
)
async def test_a_caller_registers_only_what_the_operator_allows(
    api: Api, home: Path, url: str, options: dict[str, Any], fragment: str
) -> None:
    url = url.replace("HOMEPATH", str(home).lstrip("/")).replace("HOME", home.as_uri())
    settings = json.dumps({"url": url, "options": options})
    response = await api.post(f"{DR}/stores/register", storeName="x", settings=settings)
    _error(response, 403, fragment)
    assert "SECRET_DB_PASSWORD" not in response.text or "env" not in fragment
    assert not (home / "config.toml").exists()
    _error(await api.get(f"{DR}/stores/x"), 404, "No store is named")


async def test_a_link_below_an_allowed_directory_is_not_followed(
    api: Api, home: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (home / "teams").mkdir(parents=True)
    (home / "teams" / "a").symlink_to(outside)
    settings = json.dumps({"url": (home / "teams" / "a" / "store").as_uri()})
    response = await api.post(f"{DR}/stores/register", storeName="x", settings=settings)
    _error(response, 403, "through a link")
    assert list(outside.iterdir()) == []
    _error(await api.post(f"{DR}/stores/x/validate"), 404, "No store is named")


@pytest.mark.parametrize(
    ("name", "code", "fragment"),
    [
        ("a" * 300, 400, "cannot be used: File name too long"),  # once a 500, as HTML
        ("a\nb", 400, "holds a control character"),  # was saved as a\nb, made as ab
        ("%2E%0a%2e", 400, "holds a control character"),
    ],
    ids=["too-long", "line-break", "escaped-line-break"],
)
async def test_a_store_directory_no_one_could_use_is_a_clear_refusal(
    api: Api, home: Path, name: str, code: int, fragment: str
) -> None:
    (home / "teams").mkdir(parents=True)
    settings = json.dumps({"url": f"{(home / 'teams').as_uri()}/{name}"})
    response = await api.post(f"{DR}/stores/register", storeName="x", settings=settings)
    _error(response, code, fragment)
    assert list((home / "teams").iterdir()) == []
    _error(await api.get(f"{DR}/stores/x"), 404, "No store is named")


async def test_a_link_put_in_place_of_a_registered_store_later_is_not_followed(
    api: Api, home: Path, tmp_path: Path
) -> None:
    """Attack: whoever can write to the allowed directory swaps a registered store's
    directory for a link after the registration's check; the store is walked down from
    the allowed directory on every open, so nothing is written through the link."""
    outside = tmp_path / "outside"
    outside.mkdir()
    store = home / "teams" / "late"
    settings = json.dumps({"url": store.as_uri()})
    registered = await api.post(f"{DR}/stores/register", storeName="late", settings=settings)
    assert registered.status_code == 200, registered.text
    assert store.is_dir()
    shutil.rmtree(store)
    store.symlink_to(outside)
    created = await api.post(f"{DR}/stores/late/backups/create", name="b", passcode=SECRET)
    _error(created, 503, "reached through a link")
    assert list(outside.iterdir()) == []
    _error(await api.get(f"{DR}/stores/late/backups"), 503, "reached through a link")


async def test_a_registered_store_whose_disk_is_not_mounted_is_unavailable(
    api: Api, home: Path
) -> None:
    """Its directory is there but empty: a 503 that says so, never an empty list, and
    a create writes nothing there."""
    store = home / "teams" / "nas"
    settings = json.dumps({"url": store.as_uri()})
    registered = await api.post(f"{DR}/stores/register", storeName="nas", settings=settings)
    assert registered.status_code == 200, registered.text
    shutil.rmtree(store)
    store.mkdir()  # the mount point, with nothing mounted on it
    _error(await api.get(f"{DR}/stores/nas/backups"), 503, "holds no backups and no store marker")
    created = await api.post(f"{DR}/stores/nas/backups/create", name="b", passcode=SECRET)
    _error(created, 503, "is not mounted, mount it")
    assert list(store.iterdir()) == []


async def test_a_third_party_backend_is_fenced_by_what_it_declares(
    home: Path, tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class ThirdParty:
        """Registers `tp://` (declared: one harmless option, one endpoint) and `raw://`
        (declared nothing), both in memory."""

        @hookimpl
        def strongroom_register_backends(self, registry: BackendRegistry) -> None:
            def open_(spec: StoreSpec) -> Store:
                opened.append(dict(spec.options))
                store = Store(spec.name, spec.url, MemoryFileSystem(), f"/tp-{uuid.uuid4()}")
                store.capabilities = StoreCapabilities(persistent=True)  # as a real one would
                return store

            declared = BackendOptions(settings=("colour",), endpoints=("server",))
            registry.add("tp", open_, options=declared)
            registry.add("raw", open_)

    opened: list[dict[str, Any]] = []
    monkeypatch.setenv("STRONGROOM_API_TOKEN_HASHES", hash_token(TOKEN))
    monkeypatch.setenv("SECRET_DB_PASSWORD", "hunter2-hunter2")
    plugins = get_plugin_manager(autoload=False)
    plugins.register(ThirdParty())
    engine = Engine(plugin_manager=plugins, kdf=FAST_KDF)
    allowed = ["tp://bucket/", "raw://bucket/", "https://allowed.example/"]
    app = _app(engine, tree, tmp_path, allow_stores=allowed)
    register = f"{DR}/stores/register"
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver"
    ) as http:
        api = Api(http, engine)

        async def attempt(url: str, **options: object) -> httpx.Response:
            settings = json.dumps({"url": url, "options": options})
            return await api.post(register, storeName=f"s{len(api.responses)}", settings=settings)

        _error(await attempt("tp://bucket/a", server="http://127.0.0.1:9/"), 403, "not under")
        _error(await attempt("tp://bucket/a", server="https://allowed.example.evil/"), 403, "")
        _error(await attempt("tp://bucket/a", other="x"), 403, "cannot be set over the API")
        _error(await attempt("tp://bucket/a", password="x"), 403, "secrets come from")
        _error(await attempt("tp://bucket/a", colour={"env": "SECRET_DB_PASSWORD"}), 403, "secrets")
        _error(await attempt("raw://bucket/a", colour="blue"), 403, "cannot be set over")
        assert opened == []
        accepted = await attempt(
            "tp://bucket/a", colour="blue", server="https://allowed.example/v1"
        )
        assert accepted.json() == {"status": "success"}, accepted.text
        assert (await attempt("raw://bucket/b")).json() == {"status": "success"}
    engine.close()
    assert opened == [{"colour": "blue", "server": "https://allowed.example/v1"}, {}]


# -- bodies -----------------------------------------------------------------------------


class _Upload:
    """A chunked request body of `total` bytes that counts how much the app pulled."""

    def __init__(self, total: int, head: bytes = b"", chunk: int = 64 * 1024) -> None:
        self.total, self.head, self.chunk, self.pulled = total, head, chunk, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self.head:
            self.pulled += len(self.head)
            yield self.head
        while self.pulled < self.total:
            self.pulled += self.chunk
            yield b"x" * self.chunk


@pytest.mark.parametrize(
    "content_type",
    ["application/x-www-form-urlencoded", "multipart/form-data; boundary=b", "text/plain"],
)
async def test_without_a_token_at_most_64_kib_of_a_body_is_read(
    api: Api, content_type: str
) -> None:
    upload = _Upload(400 * 1024 * 1024)
    response = await api.send(
        "POST",
        f"{STORE}/validate",
        content=upload,
        headers={"Content-Type": content_type},
        params={"f": "json"},
    )
    _error(response, 401, "needs a token")
    assert upload.pulled <= 2 * 64 * 1024


async def test_with_a_token_the_cap_counts_the_bytes_that_arrive(api: Api) -> None:
    upload = _Upload(400 * 1024 * 1024)
    response = await api.send(
        "POST",
        f"{STORE}/validate",
        content=upload,
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Esri-Authorization": f"Bearer {TOKEN}",
        },
        params={"f": "json"},
    )
    _error(response, 413, "larger than 1048576 bytes")
    assert upload.pulled <= 1024 * 1024 + 2 * 64 * 1024


async def test_a_form_token_counts_only_within_the_first_64_kib(api: Api) -> None:
    padding = "p=" + "x" * (100 * 1024)
    early = f"f=json&token={TOKEN}&{padding}".encode()
    late = f"f=json&{padding}&token={TOKEN}".encode()
    for body, code in ((early, 200), (late, 401)):
        response = await api.send(
            "POST",
            f"{STORE}/validate",
            content=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert response.status_code == code, response.text


async def test_multipart_forms_take_fields_but_never_files(api: Api, home: Path) -> None:
    fields = {"f": "json", "token": TOKEN}
    ok = await api.send("POST", f"{STORE}/validate", data=fields, files={})
    assert ok.status_code == 200
    with_a_file = await api.send(
        "POST",
        f"{STORE}/validate",
        data=fields,
        files={"upload": ("a.bin", b"x" * 1000)},
        params={"f": "json"},  # a form that cannot be read cannot say f=json itself
    )
    _error(with_a_file, 400, "no files")
    as_multipart = await api.send(
        "POST", f"{STORE}/validate", data=fields, files={"note": (None, b"text field")}
    )
    assert as_multipart.json()["ok"] is True
    too_large = await api.send(
        "POST",
        f"{STORE}/validate",
        data={"f": "json"},
        files={"upload": ("a.bin", b"x" * (2 * 1024 * 1024))},
        headers={"Authorization": f"Bearer {TOKEN}"},
        params={"f": "json"},
    )
    _error(too_large, 413, "larger than")


# -- signing in -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Referer": "https://evil.example/page"},
        {"Origin": "http://testserver.evil.example"},
    ],
)
async def test_a_page_of_another_site_cannot_sign_a_browser_in(
    api: Api, headers: dict[str, str]
) -> None:
    response = await api.send(
        "POST", "/admin/login", data={"token": TOKEN, "f": "json"}, headers=headers
    )
    _error(response, 403, "another site")
    assert "set-cookie" not in response.headers
    signed_in = await api.send("POST", "/admin/login", data={"token": TOKEN})
    assert COOKIE in signed_in.cookies
    listed = await api.http.post(f"{STORE}/validate", data={"f": "json"}, headers=headers)
    _error(listed, 403, "another site")


@pytest.mark.parametrize(
    "path", ["/admin/login", f"{STORE}/backups/create", f"{DR}/schedules/create"], ids=str
)
async def test_a_head_request_never_runs_what_a_post_does(api: Api, path: str) -> None:
    """Starlette routes HEAD with GET, and a HEAD carries no Origin for the other-site
    check: it must only show the form, never sign in or create."""
    response = await api.send("HEAD", path, params={"token": TOKEN, "next": "/admin/x"})
    assert response.status_code == 200, response.status_code
    assert "set-cookie" not in response.headers
    assert api.engine.list() == []


@pytest.mark.parametrize(
    "goto",
    [
        "/admin/../evil",
        "/admin/%2e%2e/evil",
        "/admin/%2E%2E/%2E%2E/evil",
        "/admin/./../evil",
        "//evil.example/admin/",
        "/\\evil.example/admin/",
        "/admin/\\..\\evil",
        "https://evil.example/admin/",
        "/adminx/",
        "/admin/%0d%0aSet-Cookie:x=y",
        "admin/relative",
        "",
    ],
)
async def test_next_always_stays_under_the_admin_root(api: Api, goto: str) -> None:
    response = await api.send("POST", "/admin/login", data={"token": TOKEN, "next": goto})
    assert response.status_code == 303
    location = response.headers["location"]
    assert "\r" not in location and "\n" not in location
    parts = httpx.URL(location)
    assert parts.host in ("", "testserver")
    resolved = httpx.URL("http://testserver/admin/system/").join(location)
    assert resolved.host == "testserver"
    assert resolved.path.startswith("/admin/") and "/../" not in resolved.path


async def test_next_keeps_a_page_under_the_root_and_its_query(api: Api) -> None:
    goto = f"{STORE}/backups/../backups?f=html"
    response = await api.send("POST", "/admin/login", data={"token": TOKEN, "next": goto})
    assert response.headers["location"] == f"{STORE}/backups?f=html"


# -- pages people read: sizes, times, results, pace, actions, retention, store form ------


async def _page(api: Api, path: str, **form: str) -> httpx.Response:
    """An HTML page: a GET, or a POST of `form` when one is given."""
    if form:
        return await api.send("POST", path, data={"token": TOKEN, **form})
    return await api.send("GET", path, params={"token": TOKEN})


async def test_a_manifest_that_does_not_read_is_reported_by_the_list_not_left_out(
    api: Api, engine: Engine, kept: str, home: Path, tree: Path
) -> None:
    engine.create("damaged", [tree], passcode=SECRET)
    (home / "stores" / "backupsDefault" / "manifests" / "damaged").write_bytes(b"not a manifest")

    document = (await api.get(f"{STORE}/backups")).json()
    assert [b["name"] for b in document["backups"]] == [kept]
    assert [u["name"] for u in document["unreadable"]] == ["damaged"]
    page = (await _page(api, f"{STORE}/backups")).text
    assert 'id="unreadable"' in page and '<span class="name">damaged</span>' in page
    assert "No backups yet" not in page


async def test_pages_show_sizes_as_people_read_them_and_json_keeps_bytes(
    api: Api, engine: Engine, kept: str
) -> None:
    info = engine.info(kept)
    source, stored = human_size(info.source_size), human_size(info.stored_size)
    assert source.endswith(" kB") and stored.endswith(" kB")
    backups = (await _page(api, f"{STORE}/backups")).text
    assert f'<td class="number">{source}</td>' in backups
    assert f'<td class="number">{stored}</td>' in backups
    assert f'id="size">{source}, {stored} stored<' in (await _page(api, BACKUP)).text
    contents = (await _page(api, f"{BACKUP}/contents", passcode=SECRET)).text
    assert f'<td class="number">{human_size(5 * SMALL_CHUNK + 1234)}</td>' in contents
    for page in (backups, contents):
        assert f"{info.source_size:,}" not in page and f"{5 * SMALL_CHUNK + 1234:,}" not in page

    job = api.job(await api.post(f"{BACKUP}/restore", passcode=SECRET))
    done = human_size(job["progress"]["bytesDone"])
    assert f"{done} of {source}" in (await _page(api, f"/admin/jobs/{job['jobid']}")).text
    assert f'<td class="number">{done} of {source}</td>' in (await _page(api, "/admin/jobs")).text
    assert (await api.get(f"{STORE}/backups")).json()["backups"][0]["sourceSize"] == (
        info.source_size
    )


async def test_the_job_page_shows_its_result_as_a_labelled_table(api: Api, engine: Engine) -> None:
    job = api.job(
        await api.post(f"{STORE}/backups/create", name="tabled", passcode=SECRET, keepDays="7")
    )
    result = job["result"]
    page = (await _page(api, f"/admin/jobs/{job['jobid']}")).text
    table = page[page.index('<table id="result">') :]
    completed = f"{from_epoch_ms(result['completeTime']):%Y-%m-%d %H:%M:%S} UTC"
    for label, text in (
        ("Completed", completed),
        ("Source size", human_size(result["sourceSize"])),
        ("Stored size", human_size(result["storedSize"])),
        ("Retention date", f"{from_epoch_ms(result['retentionDate']):%Y-%m-%d %H:%M:%S} UTC"),
    ):
        assert f'<th scope="row">{label}</th><td class="name">{text}</td>' in table
    for raw in ("completeTime", "sourceSize", str(result["completeTime"])):
        assert raw not in page
    assert "<dt>Duration</dt><dd>" in page


async def test_a_running_job_shows_its_speed_and_time_left_only_when_it_makes_sense(
    api: Api, engine: Engine
) -> None:
    release = threading.Event()

    def moving(total: int | None) -> Callable[[JobHandle], None]:
        def work(job: JobHandle) -> None:
            job.stage("writing")
            time.sleep(0.05)
            job.progress(1_000_000, total)
            release.wait(30)

        return work

    known = engine.jobs.submit("create", moving(4_000_000)).jobid
    unknown = engine.jobs.submit("create", moving(None)).jobid
    try:
        for jobid in (known, unknown):
            while engine.jobs.get(jobid).bytes_done == 0:
                time.sleep(0.01)
        page = (await _page(api, f"/admin/jobs/{known}")).text
        assert re.search(r'id="pace">[\d.]+ [kMG]?B/s, about .+ left<', page), page
        assert "1.0 MB of 4.0 MB" in page
        assert 'id="pace"' not in (await _page(api, f"/admin/jobs/{unknown}")).text
    finally:
        release.set()
    for jobid in (known, unknown):
        engine.jobs.wait(jobid, timeout=30)
    assert 'id="pace"' not in (await _page(api, f"/admin/jobs/{known}")).text


async def test_the_backups_page_offers_restore_verify_and_a_confirmed_delete(
    api: Api, engine: Engine, kept: str
) -> None:
    page = (await _page(api, f"{STORE}/backups")).text
    assert "<th>Source size</th>" in page
    backup_url = f"http://testserver{BACKUP}"
    for action in ("restore", "verify", "delete"):
        assert f'<a href="{backup_url}#{action}">{action}</a>' in page
    backup = (await _page(api, BACKUP)).text
    for action in ("restore", "verify", "delete"):
        assert f'<fieldset id="{action}">' in backup
    assert f'action="{backup_url}/verify"' in backup
    assert '<input type="checkbox" id="confirm-delete" required>' in backup
    assert "/delete" not in page  # the list itself deletes nothing: the backup page asks first


async def test_verify_runs_as_a_job(api: Api, engine: Engine, kept: str) -> None:
    verified = api.job(await api.post(f"{BACKUP}/verify", passcode=SECRET))
    assert verified["status"] == "COMPLETED", verified
    assert (verified["operation"], verified["result"]) == ("verify", engine.info(kept).to_dict())
    assert verified["progress"]["bytesDone"] == verified["progress"]["bytesTotal"] > 0
    assert [(s["name"], s["state"]) for s in verified["stages"]] == [("verifying", "success")]
    wrong = api.job(await api.post(f"{BACKUP}/verify", passcode="Not-the-passc0de"))
    assert wrong["status"] == "FAILED" and "passcode" in wrong["messages"][0]
    _error(await api.post(f"{BACKUP}/verify"), 400, "The parameter passcode is required.")
    _error(await api.post(f"{STORE}/backups/missing/verify", passcode=SECRET), 404, "missing")
    form = await _page(api, f"{BACKUP}/verify", passcode=SECRET)
    assert form.status_code == 303 and "/admin/jobs/j" in form.headers["location"]


def _day(days_from_today: int) -> str:
    return f"{datetime.now(UTC).date() + timedelta(days=days_from_today):%Y-%m-%d}"


async def test_the_forms_keep_a_backup_until_a_chosen_day(api: Api, engine: Engine) -> None:
    day = _day(40)
    created = await _page(
        api,
        f"{STORE}/backups/create",
        name="until-a-day",
        passcode=SECRET,
        keepDays="date",
        retentionDay=day,
    )
    assert created.status_code == 303, created.text
    engine.jobs.wait(created.headers["location"].rsplit("/", 1)[1], timeout=30)
    midnight = datetime.fromisoformat(day).replace(tzinfo=UTC)
    assert engine.info("until-a-day").retention_date == midnight

    later = _day(400)
    updated = await _page(
        api, f"{STORE}/backups/until-a-day/update", keepDays="date", retentionDay=later
    )
    assert updated.status_code == 303
    assert engine.info("until-a-day").retention_date == datetime.fromisoformat(later).replace(
        tzinfo=UTC
    )
    for page in (f"{STORE}/backups/create", f"{STORE}/backups/until-a-day"):
        text = (await _page(api, page)).text
        assert '<option value="date">on the date below</option>' in text
        assert '<input type="date" name="retentionDay" id="retentionDay">' in text


async def test_the_forms_keep_a_backup_for_ever_and_say_so(api: Api, engine: Engine) -> None:
    """Both forms offer "never": a new backup kept for ever, and a kept one made so."""
    created = await _page(
        api, f"{STORE}/backups/create", name="for-ever", passcode=SECRET, keepDays="never"
    )
    assert created.status_code == 303, created.text
    engine.jobs.wait(created.headers["location"].rsplit("/", 1)[1], timeout=30)
    assert engine.info("for-ever").retention_date is None
    await _page(api, f"{STORE}/backups/for-ever/update", keepDays="7")
    assert engine.info("for-ever").retention_date is not None
    updated = await _page(api, f"{STORE}/backups/for-ever/update", keepDays="never")
    assert updated.status_code == 303, updated.text
    assert engine.info("for-ever").retention_date is None
    create_form = (await _page(api, f"{STORE}/backups/create")).text
    assert '<option value="never" selected>never</option>' in create_form
    assert (
        '<option value="never">never</option>'
        in (await _page(api, f"{STORE}/backups/for-ever")).text
    )


@pytest.mark.parametrize(
    ("form", "fragment"),
    [
        ({"keepDays": "date", "retentionDay": _day(-1)}, "is not in the future"),
        ({"keepDays": "date", "retentionDay": _day(0)}, "is not in the future"),
        ({"keepDays": "date", "retentionDay": "31/01/2030"}, "retentionDay must be a date like"),
        ({"keepDays": "date"}, 'choose "on the date below" and a date'),
        ({"keepDays": "14", "retentionDay": _day(3)}, 'choose "on the date below" and a date'),
        ({"keepDays": "date", "retentionDay": _day(3), "retentionDate": "-1"}, "not both"),
    ],
)
async def test_a_chosen_day_must_be_a_day_to_come(
    api: Api, kept: str, form: dict[str, str], fragment: str
) -> None:
    for path in (f"{STORE}/backups/create", f"{BACKUP}/update"):
        sent = {"name": "fresh", "passcode": SECRET, **form} if "create" in path else form
        page = await _page(api, path, **sent)
        assert page.status_code == 400, page.text
        assert page.text.count(fragment.replace('"', "&#34;")) == 1, page.text
    assert [info.name for info in api.engine.list()] == [kept]


async def test_a_store_is_registered_with_fields(api: Api, engine: Engine, home: Path) -> None:
    place = home / "by-fields"
    named = {"storeName": "fields", "url": place.as_uri()}
    page = await _page(
        api,
        f"{DR}/stores/register",
        **named,
        option1Key="",
        option1Value="",
        option2Key="object_lock",
        option2Value="",
        option3Key="",
        option3Value="",
    )
    assert page.status_code == 400
    assert page.text.count("Option &#39;object_lock&#39; has no value.") == 1

    registered = await _page(
        api, f"{DR}/stores/register", **named, isDefault="true", compression="none"
    )
    assert registered.status_code == 303, registered.text
    assert engine.config.get("fields").url == place.as_uri() and engine.config.default == "fields"
    assert engine.config.get("fields").compression == "none"
    form = (await _page(api, f"{DR}/stores")).text
    assert 'name="url"' in form and 'name="option3Value"' in form and "<textarea" not in form
    assert "<option>zstd</option><option>zstd-fixed</option><option>none</option>" in form
    page = await _page(api, f"{DR}/stores/fields")
    assert "<dt>Compression</dt><dd>none</dd>" in page.text


@pytest.mark.parametrize(
    ("fields", "code", "messages"),
    [
        (
            {
                "option1Value": "eu-west-1",
                "option2Key": "region",
                "option3Key": "region",
                "url": "",
            },
            400,
            [
                "Give the store&#39;s URL, for example file:///srv/backups.",
                "Option row 1 has a value but no name.",
                "Option &#39;region&#39; has no value.",
            ],
        ),
        ({"url": "s3://bucket/x"}, 400, ["Install strongroom-s3"]),
        (
            {"url": "file:///x", "compression": "lz4"},
            400,
            ["Compression is one of zstd, zstd-fixed, none."],
        ),
        (
            {"url": "gopher://host/x", "option2Key": "secret", "option2Value": "Hunter2-typed"},
            403,
            ["Option &#39;secret&#39;: secrets come from the operator"],
        ),
        ({"url": "file:///etc/elsewhere"}, 403, ["is not under a location this server allows"]),
    ],
)
async def test_the_store_form_shows_each_error_once_and_keeps_what_is_safe(
    api: Api, home: Path, fields: dict[str, str], code: int, messages: list[str]
) -> None:
    page = await _page(api, f"{DR}/stores/register", storeName="typed", **fields)
    assert page.status_code == code, page.text
    form = page.text[page.text.index('<fieldset id="register">') :]
    for message in messages:
        assert form.count(message) == 1, form
    assert form.count('class="error"') == len(messages)
    assert 'value="typed"' in form
    assert "Hunter2-typed" not in page.text and "eu-west-1" not in page.text
    assert not (home / "config.toml").exists()


async def test_the_store_fields_go_through_json_too_but_never_with_settings(
    api: Api, home: Path
) -> None:
    place = (home / "json-fields").as_uri()
    _error(
        await api.post(f"{DR}/stores/register", storeName="x", url=place, settings="{}"),
        400,
        "not both",
    )
    _error(
        await api.post(f"{DR}/stores/register", storeName="x", url=place, option1Key="a"),
        400,
        "Option 'a' has no value.",
    )
    registered = await api.post(f"{DR}/stores/register", storeName="x", url=place)
    assert registered.json() == {"status": "success"}


# -- schedules --------------------------------------------------------------------------

SCHEDULES = f"{DR}/schedules"


async def test_schedules_are_defined_run_changed_and_deleted_over_the_api(
    api: Api, engine: Engine, home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    assert (await api.get(SCHEDULES)).json() == {"schedules": [], "damaged": []}
    created = await api.post(
        f"{SCHEDULES}/create",
        name="hourly",
        storeName="backupsDefault",
        passcode=SECRET,
        every="1h",
        keepDays="7",
        description="by the hour",
    )
    assert created.status_code == 200, created.text
    document = created.json()
    assert {k: document[k] for k in ("name", "storeName", "every", "cron", "keepDays")} == {
        "name": "hourly",
        "storeName": "backupsDefault",
        "every": "1h",
        "cron": None,
        "keepDays": 7,
    }
    assert len(document["nextRuns"]) == 3
    assert document["nextRuns"][0] % 3_600_000 == 0
    listed = await api.get(SCHEDULES)
    assert [s["name"] for s in listed.json()["schedules"]] == ["hourly"]
    one = await api.get(f"{SCHEDULES}/hourly")
    secrets = write_key_secrets(home / "config.toml", "hourly")
    for secret in secrets:
        assert not [r for r in (created, listed, one) if secret in r.text]
    shown = one.json()
    assert (shown["lastRun"], shown["recentBackups"], shown["enabled"]) == (None, [], True)

    ran = await api.post(f"{SCHEDULES}/hourly/run")
    assert set(ran.json()) == {"jobsUrl", "jobid", "status"}
    job = api.job(ran)
    assert job["status"] == "COMPLETED", job
    assert job["result"]["scheduleType"] == "SCHEDULED"
    assert job["result"]["name"].startswith("hourly-")
    status = (await api.get(f"{DR}/status")).json()["status"]
    assert (status["operation"], status["scheduleType"]) == ("Backup", "SCHEDULED")
    shown = (await api.get(f"{SCHEDULES}/hourly")).json()
    assert shown["lastRun"]["jobid"] == job["jobid"]
    assert [b["name"] for b in shown["recentBackups"]] == [job["result"]["name"]]
    restored = api.job(
        await api.post(f"{STORE}/backups/{job['result']['name']}/restore", passcode=SECRET)
    )
    assert restored["status"] == "COMPLETED", restored

    updated = await api.post(
        f"{SCHEDULES}/hourly/update", cron="0 2 * * *", keepDays="-1", enabled="false"
    )
    assert updated.json() == {"status": "success"}
    for other in ({"storeName": "elsewhere"}, {"passcode": SECRET}, {"bogus": "1"}):
        # a change that would be ignored is refused, never answered success
        _error(await api.post(f"{SCHEDULES}/hourly/update", **other), 400, "does not take")
    shown = (await api.get(f"{SCHEDULES}/hourly")).json()
    assert (shown["every"], shown["cron"], shown["keepDays"], shown["enabled"]) == (
        None,
        "0 2 * * *",
        -1,
        False,
    )
    assert (await api.post(f"{SCHEDULES}/hourly/delete")).json() == {"status": "success"}
    _error(await api.get(f"{SCHEDULES}/hourly"), 404, "No schedule is named 'hourly'")
    assert SECRET not in (home / "config.toml").read_text()
    assert SECRET not in caplog.text
    assert not [secret for secret in secrets if secret in caplog.text]


@pytest.mark.parametrize(
    ("fields", "code", "fragment"),
    [
        ({"every": "0s"}, 400, "every '0s' is not a duration"),
        ({"cron": "61 * * * *"}, 400, 'cron "61 * * * *": bad minute'),
        ({"every": "1h", "cron": "0 * * * *"}, 400, "exactly one"),
        ({"every": "1h", "storeName": "nowhere"}, 404, "No store is named 'nowhere'"),
        ({"every": "1h", "name": "bad/name"}, 400, "not a valid schedule name"),
        ({"every": "1h", "name": "create"}, 400, "taken by the admin API"),
        ({"every": "1h", "passcode": "short"}, 400, "at least 8"),
        ({"every": "1h", "keepDays": "0"}, 400, "keep days"),
    ],
)
async def test_a_bad_schedule_is_refused_with_what_to_do(
    api: Api, home: Path, fields: dict[str, str], code: int, fragment: str
) -> None:
    form = {"name": "nightly", "passcode": SECRET, **fields}
    _error(await api.post(f"{SCHEDULES}/create", **form), code, fragment)
    assert (await api.get(SCHEDULES)).json() == {"schedules": [], "damaged": []}


async def test_a_damaged_schedule_is_named_beside_the_others(api: Api, home: Path) -> None:
    """One schedule's table damaged by hand: the list answers with the others and names
    it (it once answered 400 for all of them); its own page says what is wrong."""
    for name in ("broken", "healthy"):
        form = {"name": name, "passcode": SECRET, "every": "1h"}
        assert (await api.post(f"{SCHEDULES}/create", **form)).status_code == 200
    damage_write_key(home / "config.toml", "broken")
    listed = await api.get(SCHEDULES)
    assert listed.status_code == 200
    assert [s["name"] for s in listed.json()["schedules"]] == ["healthy"]
    (damaged,) = listed.json()["damaged"]
    assert damaged["name"] == "broken" and "is damaged" in damaged["problem"]
    page = await api.get(SCHEDULES, f="html")
    assert 'id="damaged"' in page.text and "[schedules.broken] is damaged" in page.text
    _error(await api.get(f"{SCHEDULES}/broken"), 400, "[schedules.broken] is damaged")


async def test_a_schedule_into_a_store_without_put_if_absent_is_refused(api: Api) -> None:
    config = StoresConfig.load()
    config.add(StoreSpec("racy", "memory://racy"))  # the generic fsspec backend
    config.save()
    form = {"name": "nightly", "passcode": SECRET, "every": "1h", "storeName": "racy"}
    _error(await api.post(f"{SCHEDULES}/create", **form), 400, "no atomic put-if-absent")
    assert (await api.get(SCHEDULES)).json() == {"schedules": [], "damaged": []}


async def test_a_duplicate_schedule_and_an_unknown_one_are_refused(api: Api) -> None:
    form = {"name": "nightly", "passcode": SECRET, "every": "1d"}
    assert (await api.post(f"{SCHEDULES}/create", **form)).status_code == 200
    _error(await api.post(f"{SCHEDULES}/create", **form), 400, "already exists")
    for path in ("nope/run", "nope/update", "nope/delete"):
        _error(await api.post(f"{SCHEDULES}/{path}"), 404, "No schedule is named 'nope'")
    _error(await api.post(f"{SCHEDULES}/create", **form | {"passcode": ""}), 400, "passcode")


async def test_the_schedule_form_takes_the_names_a_schedule_can_have(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(schedules, "MAX_SCHEDULE_NAME", 50)
    page = (await api.send("GET", f"{SCHEDULES}/create", params={"token": TOKEN})).text
    assert 'pattern="[A-Za-z0-9_][A-Za-z0-9_.\\-]{0,49}" maxlength="50"' in page


async def test_a_scheduled_backup_that_does_not_read_is_named_on_its_schedule(
    api: Api, home: Path
) -> None:
    await api.post(f"{SCHEDULES}/create", name="hourly", passcode=SECRET, every="1h")
    name = api.job(await api.post(f"{SCHEDULES}/hourly/run"))["result"]["name"]
    (home / "stores" / "backupsDefault" / "manifests" / name).write_bytes(b"not a manifest")

    shown = (await api.get(f"{SCHEDULES}/hourly")).json()
    assert shown["recentBackups"] == []
    assert [u["name"] for u in shown["unreadable"]] == [name]
    page = (await _page(api, f"{SCHEDULES}/hourly")).text
    assert 'id="unreadable"' in page and f'<span class="name">{name}</span>' in page
    assert "No backups yet" not in page


async def test_a_schedule_whose_store_is_not_mounted_still_shows_its_runs(
    api: Api, home: Path, mount_tables: MountTables
) -> None:
    """When its disk is not mounted is when a schedule's page is read: it shows the runs
    (the last most likely failed for it) and says why no backups are listed."""
    await api.post(f"{SCHEDULES}/create", name="hourly", passcode=SECRET, every="1h")
    api.job(await api.post(f"{SCHEDULES}/hourly/run"))
    mount_tables.expect(home / "stores" / "backupsDefault")  # a volume for it, not mounted

    shown = await api.get(f"{SCHEDULES}/hourly")
    assert shown.status_code == 200, shown.text
    assert "nothing is mounted there now" in shown.json()["storeUnavailable"]
    assert shown.json()["lastRun"]["status"] == "COMPLETED"
    page = (await _page(api, f"{SCHEDULES}/hourly")).text
    assert 'id="store-unavailable"' in page and 'id="runs"' in page
    assert "No backups yet" not in page


async def test_the_schedule_pages(api: Api, engine: Engine, home: Path) -> None:
    form = {"token": TOKEN, "name": "nightly", "passcode": SECRET, "every": "", "cron": "0 2 * * *"}
    defined = await api.send("POST", f"{SCHEDULES}/create", data=form | {"keepDays": "14"})
    assert defined.status_code == 303, defined.text
    assert defined.headers["location"].endswith("/schedules/nightly")
    api.job(await api.post(f"{SCHEDULES}/nightly/run"))
    pages = {
        DR: 'href="http://testserver/admin/system/disasterrecovery/schedules"',
        SCHEDULES: 'href="http://testserver/admin/system/disasterrecovery/schedules/nightly"',
        f"{SCHEDULES}/create": 'name="passcode"',
        f"{SCHEDULES}/nightly": 'id="recent-backups"',
    }
    secrets = write_key_secrets(home / "config.toml", "nightly")
    for path, expected in pages.items():
        page = await api.send("GET", path, params={"token": TOKEN})
        assert page.status_code == 200, page.text
        assert expected in page.text, path
        assert not [secret for secret in secrets if secret in page.text], path
    page = (await api.send("GET", f"{SCHEDULES}/nightly", params={"token": TOKEN})).text
    assert "<code>0 2 * * *</code> (UTC)" in page
    assert 'id="runs"' in page and "COMPLETED" in page
    assert re.search(r'id="next-runs">\d{4}-\d{2}-\d{2} 02:00:00 UTC', page)
    form = await api.send(
        "POST",
        f"{SCHEDULES}/nightly/update",
        data={"token": TOKEN, "enabled": "false"},
    )
    assert form.status_code == 303
    assert form.headers["location"].endswith("/schedules/nightly")
    page = (await api.send("GET", f"{SCHEDULES}/nightly", params={"token": TOKEN})).text
    assert 'id="state">paused<' in page
    assert SECRET not in page
