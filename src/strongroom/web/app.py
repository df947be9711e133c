"""The disaster-recovery admin API as an ASGI app (Starlette), mountable in a host product.

Routes follow the products' API (docs/API.md lists them) under a root, `/admin` by
default: `{root}/system/disasterrecovery/...`, `{root}/jobs` and `{root}/jobs/{jobid}`;
each group's handlers are a module of their own (storeroutes.py, backuproutes.py,
scheduleroutes.py, jobs.py), and this one signs in, authenticates, reads the parameters and
answers in the format asked for.
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

import logging
import os
import posixpath
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlencode, urlsplit

import pluggy
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route, Router
from starlette.types import ASGIApp

from ..engine import Engine
from ..errors import StrongroomError
from ..restoretarget import remove_killed_restores
from .auth import COOKIE, Credentials, credentials, is_allowed
from .backuproutes import BackupRoutes
from .body import TOKEN_WINDOW, Body, Fields, single_values
from .call import Call, Derivations, Handler, RouteSpec, run
from .fence import StoreFence
from .headers import SecurityHeaders
from .jobs import JobRoutes
from .responses import FORMATS, SUCCESS, ApiError, Pages, Reply, status_of
from .scheduleroutes import ScheduleRoutes
from .settings import DrSettings, parse_timeout
from .storeroutes import StoreRoutes, store_path

logger = logging.getLogger("strongroom")

__all__ = ["create_app"]

DR = "/system/disasterrecovery"


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
        self._root, self._plugins, self._pages = root, plugins, Pages()
        derivations, dr = Derivations(), f"{root}{DR}"
        table: list[RouteSpec] = [
            ("login", f"{root}/login", self.login, ("GET", "POST")),
            ("logout", f"{root}/logout", self.logout, ("POST",)),
            ("dr", dr, self.dr_root, ("GET",)),
            ("settings", f"{dr}/settings", self.settings, ("GET",)),
            ("update_settings", f"{dr}/settings/update", self.update_settings, ("POST",)),
            *StoreRoutes(engine, fence).routes(dr),
            *BackupRoutes(engine, sources, restore_dir, derivations).routes(store_path(dr)),
            *ScheduleRoutes(engine, sources, derivations).routes(dr),
            *JobRoutes(engine).routes(root, dr),
        ]
        public = {"login", "logout"}
        self.routes: list[BaseRoute] = [
            Route(path, self._endpoint(handler, name in public), methods=methods, name=name)
            for name, path, handler, methods in table
        ]
        self._router = Router(self.routes)

    # -- the disaster-recovery root ------------------------------------------------------

    async def dr_root(self, call: Call) -> Reply:
        resources = ["stores", "schedules", "settings"]
        return Reply({"operations": ["status"], "resources": resources}, "root.html")

    async def settings(self, call: Call) -> Reply:
        document = {
            "defaultStore": self._engine.config.default,
            "sources": [str(source) for source in self._sources],
            "restoreDir": str(self._restore_dir),
            **(await run(DrSettings.load, self._engine.home)).to_dict(),
        }
        return Reply(document, "settings.html")

    async def update_settings(self, call: Call) -> Reply:
        call.take_only("timeoutInSeconds")
        settings = DrSettings(parse_timeout(call.require("timeoutInSeconds")))
        await run(settings.save, self._engine.home)
        return Reply(SUCCESS, redirect=call.url("settings"))

    # -- signing in to the HTML pages ----------------------------------------------------

    async def login(self, call: Call) -> Reply | Response:
        """The sign-in form; a good token is kept in an HttpOnly, SameSite=Strict cookie."""
        request, goto = call.request, self._safe_next(call.request, call.get("next"))
        if request.method != "POST":  # GET, or the HEAD Starlette routes with it
            return Reply({}, "login.html", {"messages": [], "next": goto})
        _refuse_other_sites(request)  # or another site could sign a browser in as itself
        token = call.get("token")
        if not await run(is_allowed, token, request, self._plugins, self._engine.home):
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

    async def logout(self, call: Call) -> Response:
        response = RedirectResponse(call.url("login"), status_code=303)
        response.delete_cookie(COOKIE, path=self._root_path(call.request))
        return response

    # -- plumbing ------------------------------------------------------------------------

    def _endpoint(self, handler: Handler, public: bool) -> Callable[[Request], Awaitable[Response]]:
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
                reply = await handler(Call(request, params, fmt, partial(self._url, request)))
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
        allowed = await run(is_allowed, presented.token, request, self._plugins, self._engine.home)
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


async def _params(request: Request, body: Body, public: bool) -> Fields:
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
