"""The disaster-recovery admin API as an ASGI app (Starlette), mountable in a host product.

Routes follow the products' API (docs/API.md lists them) under a root, `/admin` by
default: `{root}/system/disasterrecovery/...`, `{root}/jobs` and `{root}/jobs/{jobid}`.
Each answers as f=html (pages a person can browse), f=json or f=pjson. Every operation
needs a token (see auth.py). Create and restore, and delete or register with
`async=true`, return a job at once; the work runs in the engine's job pool, and a create
is cancelled once it runs past the time-out of the settings (see settings.py).

What a create backs up (`sources`) and where a restore writes (`restore_dir`, one new
directory per restore; what restores killed with their process left there is removed when
the app is made) belong to the server, not the request: the API never lets a caller name
a path on the server. Stores are registered only at locations the operator
allows (`allow_stores`, see fence.py). The token is checked before a body is read
beyond its first bytes (see body.py).
"""

from __future__ import annotations

import itertools
import logging
import os
import posixpath
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, ParamSpec, TypeVar
from urllib.parse import quote, unquote, urlencode, urlsplit

import anyio
import anyio.to_thread
import pluggy
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route, Router
from starlette.types import ASGIApp

from .. import schedules
from ..backupinfo import Listing
from ..config import COMPRESSIONS, StoresConfig, StoreSpec
from ..engine import Engine
from ..errors import ConfigError, StoreUnavailableError, StrongroomError
from ..format import to_epoch_ms, utc_now
from ..jobs import Job
from ..restoretarget import remove_killed_restores
from ..retention import NEVER_MS
from ..scheduler import run_now, runs
from . import stores
from .auth import COOKIE, Credentials, credentials, is_allowed
from .body import TOKEN_WINDOW, Body, single_values
from .fence import StoreFence
from .headers import SecurityHeaders
from .jobs import JobQuery, status_document
from .params import whole_number
from .readable import Pace
from .responses import FORMATS, SUCCESS, ApiError, Pages, Reply, status_of
from .settings import DrSettings, parse_timeout

logger = logging.getLogger("strongroom")

__all__ = ["create_app"]

DAY_MS = 24 * 60 * 60 * 1000
#: The longest keepDays a form may ask for (100 years).
MAX_KEEP_DAYS = 36_500
DR = "/system/disasterrecovery"
#: The most recent runs and backups a schedule's page shows.
RECENT = 10
#: The most entries one contents request answers with (the next from `start`).
CONTENTS_LIMIT = 10_000
#: The highest `start` of a contents page (more entries than any backup holds).
MAX_CONTENTS_START = 1_000_000_000
#: How many of one app's requests that take a passcode run at once (`_Derivations`).
KDF_REQUESTS = 2

P = ParamSpec("P")
T = TypeVar("T")


def create_app(
    engine: Engine,
    *,
    sources: Sequence[str | os.PathLike[str]] = (),
    restore_dir: str | os.PathLike[str] | None = None,
    root_path: str = "/admin",
    plugin_manager: pluggy.PluginManager | None = None,
    allow_stores: Sequence[str] = (),
) -> Starlette:
    """The admin API over `engine`.

    `sources` are what every create backs up; each restore goes into a new directory
    under `restore_dir` (default `restores` in the engine's home). Tokens are checked
    against the engine's home's token file, and the `strongroom_authenticate` hook is
    called through `plugin_manager` (default: the engine's). Callers may
    register stores only under the URL prefixes of `allow_stores` (default: none).
    """
    engine.registry  # noqa: B018 (every plugin's backends, so a broken one stops the start)
    restores = Path(restore_dir) if restore_dir is not None else engine.home / "restores"
    _remove_killed_restores(restores)
    api = _AdminApi(
        engine,
        [Path(source) for source in sources],
        restores,
        "/" + root_path.strip("/") if root_path.strip("/") else "",
        plugin_manager or engine.plugin_manager,
        StoreFence(allow_stores),
    )
    return _AdminApp(
        routes=api.routes,
        exception_handlers={HTTPException: api.http_error, Exception: api.internal_error},
    )


class _AdminApp(Starlette):
    """The admin API's app: every answer passes SecurityHeaders, the server's own 500s too
    (Starlette answers those outside any middleware it is given)."""

    def build_middleware_stack(self) -> ASGIApp:
        return SecurityHeaders(super().build_middleware_stack())


def _remove_killed_restores(restore_dir: Path) -> None:
    """Each restore has a new target (`restore_dir/<store>/<name>-<id>`), so no later one
    would find what a restore killed with its process left beside it: decrypted files."""
    try:
        stores = sorted(restore_dir.iterdir()) if restore_dir.is_dir() else []
    except OSError as exc:  # the restores then fail with their own error; the API starts
        logger.warning("The restore directory %s could not be read: %s", restore_dir, exc)
        return
    for store in stores:
        for name in remove_killed_restores(store):
            logger.info("Removed %s, left by a restore that was killed.", store / name)


@dataclass(frozen=True, slots=True)
class _Call:
    """One request's parameters (a POST's form, a GET's query) and response format."""

    request: Request
    params: Mapping[str, str]
    fmt: str

    def path(self, key: str) -> str:
        return str(self.request.path_params[key])

    def get(self, key: str) -> str | None:
        """A parameter's value; empty counts as absent (`description=` in the seed)."""
        return self.params.get(key) or None

    def require(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            raise ConfigError(f"The parameter {key} is required.")
        return value

    def take_only(self, *keys: str) -> None:
        """Refuse parameters other than `keys` (and the format and token every call may
        carry): a change whose parameter is ignored must not answer success."""
        others = sorted(set(self.params) - set(keys) - {"f", "token"})
        if others:
            raise ConfigError(
                f"This call does not take {', '.join(others)}; it takes {', '.join(keys)}."
            )

    def only_as_a_job(self, *keys: str) -> None:
        """`take_only(keys)` for a call that always answers with a job: `async` may say so,
        not otherwise."""
        self.take_only(*keys, "async")
        if "async" in self.params and not self.flag("async"):
            raise ConfigError("This call always runs as a job: give async=true or leave it out.")

    def flag(self, key: str) -> bool:
        value = (self.get(key) or "false").lower()
        if value not in ("true", "false"):
            raise ConfigError(f"{key} must be true or false.")
        return value == "true"

    @property
    def uri(self) -> str:
        """This operation's URL without its query (which may carry a token)."""
        return str(self.request.url.replace(query=""))


_Handler = Callable[[_Call], Awaitable[Reply | Response]]


async def _run(function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Engine calls block (I/O, the KDF): run them off the event loop."""
    return await run_in_threadpool(function, *args, **kwargs)


class _Derivations:
    """Runs at most KDF_REQUESTS of one app's requests that take a passcode at once (each
    derives a key, then may read on: a listing of contents); the rest wait here. Key
    derivations queue on one process-wide lock (crypto.py), so a burst of one tenant's
    requests (wrong passcodes included) keeps at most that many ahead of another
    tenant's there. Jobs are bounded by their worker pool already."""

    def __init__(self) -> None:
        self._limiter: anyio.CapacityLimiter | None = None  # made in the event loop

    async def run(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(KDF_REQUESTS)
        call = partial(function, *args, **kwargs)
        return await anyio.to_thread.run_sync(call, limiter=self._limiter)


class _AdminApi:
    def __init__(
        self,
        engine: Engine,
        sources: list[Path],
        restore_dir: Path,
        root: str,
        plugins: pluggy.PluginManager,
        fence: StoreFence,
    ) -> None:
        self._engine, self._sources, self._restore_dir = engine, sources, restore_dir
        self._root, self._plugins, self._fence, self._pages = root, plugins, fence, Pages()
        self._derivations = _Derivations()
        store = f"{root}{DR}/stores/{{storeName}}"
        backup = f"{store}/backups/{{name}}"
        schedule = f"{root}{DR}/schedules/{{scheduleName}}"
        table: list[tuple[str, str, _Handler, Sequence[str]]] = [
            ("login", f"{root}/login", self.login, ("GET", "POST")),
            ("logout", f"{root}/logout", self.logout, ("POST",)),
            ("dr", f"{root}{DR}", self.dr_root, ("GET",)),
            ("status", f"{root}{DR}/status", self.status, ("GET",)),
            ("settings", f"{root}{DR}/settings", self.settings, ("GET",)),
            ("update_settings", f"{root}{DR}/settings/update", self.update_settings, ("POST",)),
            ("stores", f"{root}{DR}/stores", self.list_stores, ("GET",)),
            ("register", f"{root}{DR}/stores/register", self.register, ("POST",)),
            ("store", store, self.get_store, ("GET",)),
            ("update_store", f"{store}/update", self.update_store, ("POST",)),
            ("unregister", f"{store}/unregister", self.unregister, ("POST",)),
            ("validate", f"{store}/validate", self.validate, ("POST",)),
            ("backups", f"{store}/backups", self.list_backups, ("GET",)),
            ("create", f"{store}/backups/create", self.create, ("GET", "POST")),
            ("backup", backup, self.get_backup, ("GET",)),
            ("update_backup", f"{backup}/update", self.update_backup, ("POST",)),
            ("restore", f"{backup}/restore", self.restore, ("POST",)),
            ("verify", f"{backup}/verify", self.verify, ("POST",)),
            ("contents", f"{backup}/contents", self.contents, ("POST",)),
            ("delete", f"{backup}/delete", self.delete, ("POST",)),
            ("schedules", f"{root}{DR}/schedules", self.list_schedules, ("GET",)),
            # before `schedule`, so that create is never read as a schedule's name
            (
                "create_schedule",
                f"{root}{DR}/schedules/create",
                self.create_schedule,
                ("GET", "POST"),
            ),
            ("schedule", schedule, self.get_schedule, ("GET",)),
            ("update_schedule", f"{schedule}/update", self.update_schedule, ("POST",)),
            ("delete_schedule", f"{schedule}/delete", self.delete_schedule, ("POST",)),
            ("run_schedule", f"{schedule}/run", self.run_schedule, ("POST",)),
            ("jobs", f"{root}/jobs", self.list_jobs, ("GET",)),
            ("job", f"{root}/jobs/{{jobid}}", self.get_job, ("GET",)),
            ("cancel", f"{root}/jobs/{{jobid}}/cancel", self.cancel_job, ("POST",)),
        ]
        public = {"login", "logout"}
        self.routes: list[BaseRoute] = [
            Route(path, self._endpoint(handler, name in public), methods=methods, name=name)
            for name, path, handler, methods in table
        ]
        self._router = Router(self.routes)

    # -- the disaster-recovery root ------------------------------------------------------

    async def dr_root(self, call: _Call) -> Reply:
        resources = ["stores", "schedules", "settings"]
        return Reply({"operations": ["status"], "resources": resources}, "root.html")

    async def status(self, call: _Call) -> Reply:
        """The last submitted job, whichever process ran it."""
        jobs, _ = await _run(self._engine.jobs.find, limit=1)
        return Reply(status_document(jobs[0] if jobs else None), "status.html")

    async def settings(self, call: _Call) -> Reply:
        document = {
            "defaultStore": self._engine.config.default,
            "sources": [str(source) for source in self._sources],
            "restoreDir": str(self._restore_dir),
            **(await _run(DrSettings.load, self._engine.home)).to_dict(),
        }
        return Reply(document, "settings.html")

    async def update_settings(self, call: _Call) -> Reply:
        call.take_only("timeoutInSeconds")
        settings = DrSettings(parse_timeout(call.require("timeoutInSeconds")))
        await _run(settings.save, self._engine.home)
        return Reply(SUCCESS, redirect=self._url(call.request, "settings"))

    # -- stores --------------------------------------------------------------------------

    async def list_stores(self, call: _Call) -> Reply:
        document = {"backupStores": stores.describe_all(self._engine)}
        return Reply(document, "stores.html", _register_form({}, []))

    async def register(self, call: _Call) -> Reply:
        """From `settings` (JSON), or from the page's fields (`url` and option rows). What
        is wrong with the fields is shown on the page itself, each problem once."""
        if "url" not in call.params:
            spec = stores.spec_from_settings(call.require("storeName"), call.require("settings"))
            return await self._register(call, spec)
        if "settings" in call.params:
            raise ConfigError("Give settings (JSON) or the fields url and options, not both.")
        try:
            return await self._register(
                call, stores.spec_from_fields(call.require("storeName"), call.params)
            )
        except (ApiError, StrongroomError) as exc:
            if call.fmt != "html":
                raise
            messages = exc.messages if isinstance(exc, stores.FieldsError) else [str(exc)]
            return Reply(
                {"backupStores": stores.describe_all(self._engine)},
                "stores.html",
                _register_form(call.params, messages),
                status=exc.code if isinstance(exc, ApiError) else status_of(exc),
            )

    async def _register(self, call: _Call, spec: StoreSpec) -> Reply:
        spec = await _run(self._fence.check_new, spec, self._engine.registry)
        work = partial(stores.register, self._engine, spec, default=call.flag("isDefault"))
        if call.flag("async"):
            job = await _run(
                self._engine.jobs.submit,
                "register",
                lambda _: work(),
                store=spec.name,
                operation_uri=call.uri,
            )
            return self._job_reply(call, job)
        await _run(work)
        return Reply(SUCCESS, redirect=self._url(call.request, "store", storeName=spec.name))

    async def get_store(self, call: _Call) -> Reply:
        return Reply(stores.describe(self._engine, call.path("storeName")), "store.html")

    async def update_store(self, call: _Call) -> Reply:
        name = call.path("storeName")
        self._fence.check_default()
        await _run(stores.make_default, self._engine, name, call.require("settings"))
        return Reply(SUCCESS, redirect=self._url(call.request, "store", storeName=name))

    async def unregister(self, call: _Call) -> Reply:
        self._fence.check_existing(self._engine.config.get(call.path("storeName")))
        await _run(stores.unregister, self._engine, call.path("storeName"))
        return Reply(SUCCESS, redirect=self._url(call.request, "stores"))

    async def validate(self, call: _Call) -> Reply:
        report = await _run(self._engine.validate_store, call.path("storeName"))
        return Reply(report.to_dict(), "validation.html")

    # -- backups -------------------------------------------------------------------------

    async def list_backups(self, call: _Call) -> Reply:
        store = call.path("storeName")
        listing = await _run(self._engine.listing, store)
        return Reply(listing.to_dict(), "backups.html", {"store": store})

    async def create(self, call: _Call) -> Reply:
        store = call.path("storeName")
        if call.request.method != "POST":  # GET, or the HEAD Starlette routes with it
            if call.fmt != "html":
                raise ApiError(405, "create takes a POST; GET shows its form (f=html).")
            await _run(self._engine.config.get, store)
            return Reply({}, "create.html", {"store": store, "sources": self._sources})
        if not self._sources:
            raise ConfigError(
                "This server has nothing to back up: start it with "
                "'strongroom serve --source DIR' (or give create_app sources)."
            )
        settings = await _run(DrSettings.load, self._engine.home)
        job = await _run(
            self._engine.submit_backup,
            call.require("name"),
            self._sources,
            passcode=call.require("passcode"),
            store=store,
            description=call.get("description") or "",
            retention_date=self._retention(call),
            operation_uri=call.uri,
            timeout=settings.timeout,
        )
        return self._job_reply(call, job)

    async def get_backup(self, call: _Call) -> Reply:
        info = await _run(self._engine.info, call.path("name"), call.path("storeName"))
        return Reply(info.to_dict(), "backup.html")

    async def update_backup(self, call: _Call) -> Reply:
        name, store = call.path("name"), call.path("storeName")
        retention = self._retention(call)
        if retention is None:
            raise ConfigError("The parameter retentionDate is required.")
        await _run(self._engine.update_retention, name, retention, store)
        page = self._url(call.request, "backup", storeName=store, name=name)
        return Reply(SUCCESS, redirect=page)

    async def restore(self, call: _Call) -> Reply:
        """The whole backup, or what is under one archive `path`, into a new directory."""
        call.only_as_a_job("passcode", "path")
        name, store = call.path("name"), call.path("storeName")
        target = self._restore_dir / store / f"{name}-{uuid.uuid4().hex[:12]}"
        path = call.get("path")
        job = await _run(
            self._engine.submit_restore,
            name,
            target,
            passcode=call.require("passcode"),
            store=store,
            paths=[path] if path else [],
            operation_uri=call.uri,
        )
        return self._job_reply(call, job)

    async def verify(self, call: _Call) -> Reply:
        call.only_as_a_job("passcode")
        name, store = call.path("name"), call.path("storeName")
        job = await _run(
            self._engine.submit_verify,
            name,
            passcode=call.require("passcode"),
            store=store,
            operation_uri=call.uri,
        )
        return self._job_reply(call, job)

    async def contents(self, call: _Call) -> Reply:
        """What the backup holds (a POST: it needs the passcode), CONTENTS_LIMIT entries at
        a time from `start` (1-based, as the jobs listing); `path` narrows it to one
        archive path."""
        call.take_only("passcode", "path", "start")
        name, store = call.path("name"), call.path("storeName")
        path = call.get("path")
        start = whole_number("start", call.get("start") or "1", MAX_CONTENTS_START)
        entries = await self._derivations.run(
            _entries_from,
            self._engine,
            name,
            store,
            call.require("passcode"),
            [path] if path else [],
            start,
        )
        more = len(entries) > CONTENTS_LIMIT
        document = {
            "entries": entries[:CONTENTS_LIMIT],
            "truncated": more,
            "start": start,
            "nextStart": start + CONTENTS_LIMIT if more else -1,
        }
        return Reply(document, "contents.html", {"store": store, "name": name, "path": path})

    async def delete(self, call: _Call) -> Reply:
        name, store = call.path("name"), call.path("storeName")
        if call.flag("async"):
            job = await _run(self._engine.submit_delete, name, store, operation_uri=call.uri)
            return self._job_reply(call, job)
        await _run(self._engine.delete, name, store)
        return Reply(SUCCESS, redirect=self._url(call.request, "backups", storeName=store))

    # -- schedules -----------------------------------------------------------------------

    async def list_schedules(self, call: _Call) -> Reply:
        found, damaged = schedules.load_schedules(await _run(self._config))
        document = {
            "schedules": [s.to_dict(utc_now()) for s in found.values()],
            "damaged": [{"name": name, "problem": problem} for name, problem in damaged.items()],
        }
        return Reply(document, "schedules.html")

    async def create_schedule(self, call: _Call) -> Reply:
        """Define a schedule: the passcode derives its write key here and is kept nowhere."""
        if call.request.method != "POST":  # GET, or the HEAD Starlette routes with it
            if call.fmt != "html":
                raise ApiError(405, "create takes a POST; GET shows its form (f=html).")
            context = {
                "stores": list(self._engine.config.stores),
                "sources": self._sources,
                "max_name": schedules.MAX_SCHEDULE_NAME,
            }
            return Reply({}, "schedule_create.html", context)
        schedule = await self._derivations.run(
            schedules.define,
            self._engine,
            call.require("name"),
            passcode=call.require("passcode"),
            every=call.get("every"),
            cron=call.get("cron"),
            store=call.get("storeName"),
            keep_days=call.get("keepDays"),
            description=call.get("description") or "",
        )
        page = self._url(call.request, "schedule", scheduleName=schedule.name)
        return Reply(schedule.to_dict(utc_now()), redirect=page)

    async def get_schedule(self, call: _Call) -> Reply:
        """The schedule, its next runs, its last run's job, its recent backups, and those of
        its backups whose manifest does not read (by name: their manifest cannot say). A
        store that cannot be read now (a disk not mounted) is `storeUnavailable`, why: the
        page still shows the runs, whose last one most likely failed for it."""
        schedule = schedules.get_schedule(await _run(self._config), call.path("scheduleName"))
        jobs = await _run(runs, self._engine, schedule)
        unavailable = None
        try:
            listing = await _run(self._engine.listing, schedule.store)
        except StoreUnavailableError as exc:
            listing, unavailable = Listing([], {}), str(exc)
        mine = listing.only(schedule.slot_of).to_dict()
        recent = [b for b in reversed(mine["backups"]) if b["scheduleType"] == "SCHEDULED"]
        document = {
            **schedule.to_dict(utc_now()),
            "lastRun": jobs[0].to_dict() if jobs else None,
            "recentBackups": recent[:RECENT],
            "unreadable": mine["unreadable"],
            "storeUnavailable": unavailable,
        }
        return Reply(document, "schedule.html", {"jobs": jobs[:RECENT]})

    async def update_schedule(self, call: _Call) -> Reply:
        name = call.path("scheduleName")
        call.take_only("every", "cron", "keepDays", "description", "enabled")
        await _run(
            schedules.update,
            self._engine,
            name,
            every=call.get("every"),
            cron=call.get("cron"),
            keep_days=call.get("keepDays"),
            description=call.params.get("description"),
            enabled=call.flag("enabled") if call.get("enabled") else None,
        )
        return Reply(SUCCESS, redirect=self._url(call.request, "schedule", scheduleName=name))

    async def delete_schedule(self, call: _Call) -> Reply:
        await _run(schedules.remove, self._engine, call.path("scheduleName"))
        return Reply(SUCCESS, redirect=self._url(call.request, "schedules"))

    async def run_schedule(self, call: _Call) -> Reply:
        """One backup of the schedule now, as a job (its slot claimed like any other)."""
        settings = await _run(DrSettings.load, self._engine.home)
        job = await _run(
            run_now,
            self._engine,
            call.path("scheduleName"),
            [str(source) for source in self._sources],
            operation_uri=call.uri,
            timeout=settings.timeout,
        )
        return self._job_reply(call, job)

    def _config(self) -> StoresConfig:
        """The configuration file as it is now: the CLI may have edited its schedules."""
        return StoresConfig.load(self._engine.config.path, home=self._engine.home)

    # -- jobs ----------------------------------------------------------------------------

    async def list_jobs(self, call: _Call) -> Reply:
        """Jobs newest first, `num` at a time from `start` (1-based), as the products page."""
        query = JobQuery.parse(call.params)
        jobs, total = await _run(
            self._engine.jobs.find,
            status=query.status,
            operation=query.operation,
            offset=query.start - 1,
            limit=query.num,
        )
        return Reply(query.document(jobs, total), "jobs.html", {"query": query})

    async def get_job(self, call: _Call) -> Reply:
        job = await _run(self._engine.jobs.get, call.path("jobid"))
        return Reply(job.to_dict(), "job.html", {"job": job, "pace": Pace.of(job)})

    async def cancel_job(self, call: _Call) -> Reply:
        job = await _run(self._engine.jobs.cancel, call.path("jobid"))
        return Reply(job.to_dict(), redirect=self._url(call.request, "job", jobid=job.jobid))

    # -- signing in to the HTML pages ----------------------------------------------------

    async def login(self, call: _Call) -> Reply | Response:
        """The sign-in form; a good token is kept in an HttpOnly, SameSite=Strict cookie."""
        request, goto = call.request, self._safe_next(call.request, call.get("next"))
        if request.method != "POST":  # GET, or the HEAD Starlette routes with it
            return Reply({}, "login.html", {"messages": [], "next": goto})
        _refuse_other_sites(request)  # or another site could sign a browser in as itself
        token = call.get("token")
        if not await _run(is_allowed, token, request, self._plugins, self._engine.home):
            raise ApiError(401, "That token is not valid for this server.")
        response = RedirectResponse(goto, status_code=303)
        response.set_cookie(
            COOKIE,
            token or "",
            path=self._root_path(request),
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
        return response

    async def logout(self, call: _Call) -> Response:
        response = RedirectResponse(self._url(call.request, "login"), status_code=303)
        response.delete_cookie(COOKIE, path=self._root_path(call.request))
        return response

    # -- plumbing ------------------------------------------------------------------------

    def _endpoint(
        self, handler: _Handler, public: bool
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            body, fmt = Body(request), None
            try:
                if "passcode" in request.query_params:
                    raise ApiError(
                        400, "Send the passcode in the body of a POST, never in the URL."
                    )
                if not public:
                    await self._authenticate(request, body)
                params = await _params(request, body, public)
                fmt = params.get("f") or "html"
                if fmt not in FORMATS:
                    fmt = "json"
                    raise ApiError(400, "f must be html, json or pjson.")
                reply = await handler(_Call(request, params, fmt))
            except (ApiError, StrongroomError) as exc:
                code = exc.code if isinstance(exc, ApiError) else status_of(exc)
                fmt = fmt or await _format_before_params(request, body)
                return self._error(request, fmt, code, str(exc))
            if isinstance(reply, Response):
                return reply
            return self._pages.reply(request, fmt, reply, self._links(request))

        return endpoint

    async def _authenticate(self, request: Request, body: Body) -> None:
        """Refuse before anything is done or read: no token, a refused one, or a cross-site
        POST. A POST's form token is looked for only in the body's first TOKEN_WINDOW bytes."""
        presented = credentials(request)
        if presented.token is None and request.method == "POST":
            presented = Credentials((await body.head()).get("token"))
        allowed = await _run(is_allowed, presented.token, request, self._plugins, self._engine.home)
        if not allowed:
            if presented.token is None and "token" in request.query_params:
                raise ApiError(
                    401,
                    f"A {request.method} takes its token in its body (token=...) or an "
                    "'Authorization: Bearer ...' header, not in the URL.",
                )
            if presented.token is None:
                raise ApiError(
                    401,
                    "This operation needs a token: send token=... or an "
                    "'Authorization: Bearer ...' header ('strongroom token new' makes one).",
                )
            raise ApiError(401, "The token is not valid for this server.")
        if presented.from_cookie and request.method == "POST":
            _refuse_other_sites(request)

    async def http_error(self, request: Request, exc: Exception) -> Response:
        """Unknown paths and wrong methods, in the admin error shape."""
        code = exc.status_code if isinstance(exc, HTTPException) else 500
        fmt = request.query_params.get("f") or "html"
        message = {
            404: f"There is no {request.url.path} here.",
            405: f"{request.url.path} does not take {request.method}.",
        }.get(code, str(getattr(exc, "detail", exc)))
        response = self._error(request, fmt if fmt in FORMATS else "json", code, message)
        if isinstance(exc, HTTPException) and exc.headers:  # a 405's Allow (RFC 9110)
            response.headers.update(exc.headers)
        return response

    async def internal_error(self, request: Request, exc: Exception) -> Response:
        """The details go to the server log (the server logs the exception), not the client."""
        fmt = request.query_params.get("f") or "html"
        message = "The server failed; its log has the details."
        return self._error(request, fmt if fmt in FORMATS else "json", 500, message)

    def _error(self, request: Request, fmt: str, code: int, message: str) -> Response:
        goto = self._safe_next(request, _own_address(request))
        return self._pages.error(request, fmt, code, message, self._links(request), next=goto)

    def _job_reply(self, call: _Call, job: Job) -> Reply:
        url = self._url(call.request, "job", jobid=job.jobid)
        return Reply({"jobsUrl": url, "jobid": job.jobid, "status": job.status.value}, redirect=url)

    def _retention(self, call: _Call) -> int | str | None:
        """retentionDate (epoch ms, -1 for never), or from the HTML forms keepDays: a
        number of days from now, `never`, or `date` for the day in retentionDay (a date
        field)."""
        date, days, day = call.get("retentionDate"), call.get("keepDays"), call.get("retentionDay")
        if (days == "date") != (day is not None):
            raise ConfigError(
                'To keep a backup until a date, choose "on the date below" and a date; '
                "otherwise leave the date empty."
            )
        if days is None:
            return date
        if date is not None:
            raise ConfigError("Give retentionDate or keepDays, not both.")
        if day is not None:
            return _start_of_day(day)
        if days == "never":
            return NEVER_MS
        return (
            to_epoch_ms(utc_now()) + whole_number("keepDays", days, MAX_KEEP_DAYS, "days") * DAY_MS
        )

    def _url(self, request: Request, route: str, /, **params: str) -> str:
        """An absolute URL of one of this app's routes, wherever the app is mounted."""
        path = self._mount_path(request) + str(self._router.url_path_for(route, **params))
        return str(request.url.replace(path=path, query="", fragment=""))

    def _root_path(self, request: Request) -> str:
        return self._mount_path(request) + self._root or "/"

    @staticmethod
    def _mount_path(request: Request) -> str:
        """Where a host product mounted this app ("" when it runs alone)."""
        return str(request.scope.get("root_path", "")).rstrip("/")

    def _safe_next(self, request: Request, goto: str | None) -> str:
        """Where to go after signing in: a page under the admin root, never elsewhere.

        The path is decoded and its dot segments resolved as a browser would resolve them,
        and only that normalised path (and the query) is ever sent back.
        """
        root = self._root_path(request).rstrip("/")
        parts = urlsplit(goto or "")
        path = posixpath.normpath(unquote(parts.path)) if parts.path.startswith("/") else ""
        inside = path == root or path.startswith(root + "/")
        if parts.scheme or parts.netloc or not inside or path.startswith("//"):
            return self._url(request, "dr")
        if any(c == "\\" or not c.isprintable() for c in path + parts.query):
            return self._url(request, "dr")
        return quote(path) + (f"?{parts.query}" if parts.query else "")

    def _links(self, request: Request) -> dict[str, Any]:
        """What every page needs: URLs of the app's routes and whether someone signed in."""
        return {"url": partial(self._url, request), "signed_in": COOKIE in request.cookies}


def _register_form(fields: Mapping[str, str], messages: list[str]) -> dict[str, Any]:
    """The stores page's register form: its option rows, the fields to fill in again after
    an error (never an option's value: it may be a secret typed by mistake), the errors."""
    kept = {
        key: value
        for key, value in fields.items()
        if key in ("storeName", "url", "isDefault", "compression")
        or re.fullmatch(r"option\d+Key", key)
    }
    return {
        "form": kept,
        "messages": messages,
        "option_rows": stores.OPTION_ROWS,
        "compressions": COMPRESSIONS,
    }


def _start_of_day(text: str) -> int:
    """A date field's day (YYYY-MM-DD) as epoch ms at 00:00 UTC, which must be after now:
    the forms say the date is UTC, as the CLI reads `--retention-date 2027-01-31`."""
    try:
        moment = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise ConfigError(f"retentionDay must be a date like 2027-01-31, not {text!r}.") from None
    if moment <= utc_now():
        raise ConfigError(
            f"The retention date {moment:%Y-%m-%d} is not in the future (it starts at 00:00 UTC); "
            "choose a later day, a number of days, or never."
        )
    return to_epoch_ms(moment)


def _entries_from(
    engine: Engine, name: str, store: str, passcode: str, paths: list[str], start: int
) -> list[dict[str, Any]]:
    """Up to one more than CONTENTS_LIMIT entries from the `start`th (so a longer listing
    shows as truncated)."""
    entries = engine.ls(name, paths, passcode=passcode, store=store)
    page = itertools.islice(entries, start - 1, start - 1 + CONTENTS_LIMIT + 1)
    return [entry.to_dict() for entry in page]


async def _params(request: Request, body: Body, public: bool) -> dict[str, str]:
    """A GET's query, or a POST's form (plus `f` from the query). Before anyone signed in
    (the login form) no more than TOKEN_WINDOW bytes are read."""
    query = single_values(request.query_params.multi_items())
    if request.method != "POST":
        return query
    params = await (body.form(TOKEN_WINDOW) if public else body.form())
    if stray := sorted(set(query) - {"f", "token"}):
        raise ApiError(
            400, f"A POST takes {', '.join(stray)} as a form field, not in its URL's query."
        )
    in_form, in_query = params.get("f"), query.get("f")
    if in_form and in_query and in_form != in_query:
        raise ApiError(400, "f is given in the URL and in the form, differently; give it once.")
    if in_query and not in_form:
        params["f"] = in_query
    return params


async def _format_before_params(request: Request, body: Body) -> str:
    """The f of a request refused before its parameters were read: a field in the first
    bytes of a POST's body, else the query's."""
    try:
        fields = await body.head() if request.method == "POST" else {}
    except ApiError:
        fields = {}
    fmt = fields.get("f") or request.query_params.get("f") or "html"
    return fmt if fmt in FORMATS else "json"


def _refuse_other_sites(request: Request) -> None:
    """403 for a browser POST that another site's page sent: its Origin (or, without
    one, its Referer) is not this server. Clients that send neither are not browsers."""
    own = f"{request.url.scheme}://{request.url.netloc}"
    origin = request.headers.get("origin")
    if origin is None and "referer" in request.headers:
        referer = urlsplit(request.headers["referer"])
        origin = f"{referer.scheme}://{referer.netloc}"
    if origin is not None and origin != own:
        raise ApiError(403, "A signed-in page of another site cannot send this request.")


def _own_address(request: Request) -> str | None:
    """The page a GET asked for, without a token in its query, to return to after signing in."""
    if request.method != "GET":
        return None
    query = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
    return request.url.path + (f"?{query}" if query else "")
