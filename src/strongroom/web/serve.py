"""`strongroom serve`: the admin API on its own, under uvicorn.

The access log keeps paths but drops query strings, so a token sent as `?token=` (or a
passcode wrongly put in a URL) never reaches a log. `serve` also runs the
configured schedules (scheduler.py) unless told not to. Stopping the server cancels its
running jobs, which then read CANCELLED; a server that is killed leaves them to be
marked FAILED by the next one (or, sharing a PostgreSQL job table, by another replica
once their lease runs out).
"""

from __future__ import annotations

import copy
import ipaddress
import logging
import os
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.responses import RedirectResponse
from starlette.routing import Mount, Route

from ..archive import check_sources
from ..engine import Engine
from ..errors import ConfigError, JobStoreUnavailableError
from ..scheduler import ScheduleRunner
from .app import DR, create_app
from .auth import configured_hashes, tokens_path
from .headers import SecurityHeaders
from .settings import DrSettings

__all__ = ["serve"]


class _WithoutQuery(logging.Filter):
    """uvicorn's access-log records carry (client, method, path?query, version, status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) == 5:
            client, method, path, version, status = record.args
            record.args = (client, method, str(path).partition("?")[0], version, status)
        return True


def serve(
    engine: Engine,
    *,
    host: str,
    port: int,
    root_path: str,
    sources: Sequence[str | os.PathLike[str]],
    restore_dir: str | os.PathLike[str] | None,
    cleanup_interval: timedelta = timedelta(hours=1),
    allow_stores: Sequence[str] = (),
    schedules: bool = True,
) -> None:
    """Serve until stopped, running the schedules unless `schedules` is false. API callers
    may register stores under `allow_stores` and the configuration file's `[api]
    allow_stores`, as they stand now (a restart reads them again)."""
    if sources:
        check_sources([Path(source) for source in sources], {})  # a typo fails now, not later
    app = create_app(
        engine,
        sources=sources,
        restore_dir=restore_dir,
        root_path=root_path,
        allow_stores=[*engine.config.allow_stores, *allow_stores],
    )

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        schedule = engine.schedule_cleanup(cleanup_interval) if cleanup_interval else None
        # each run is cancelled after the settings' timeoutInSeconds, as an API create is
        runner = ScheduleRunner(
            engine, sources, timeout=lambda: DrSettings.load(engine.home).timeout
        )
        stop_runner = runner.start() if schedules else None
        yield
        for stop in (schedule, stop_runner):
            if stop is not None:
                stop.set()
        await run_in_threadpool(engine.close)  # before uvicorn re-raises SIGTERM and exits

    admin = "/" + root_path.strip("/") if root_path.strip("/") else ""
    home = f"{admin}{DR}"
    entrances = {"/", admin or "/", f"{admin}/"}  # a browser's first guesses
    redirects = [Route(path, RedirectResponse(home)) for path in sorted(entrances)]
    server = Starlette(routes=[*redirects, Mount("", app=app)], lifespan=lifespan)
    _warn(host, engine.home)
    shown = f"[{host}]" if ":" in host else host
    listener = _listen(host, port, shown)
    try:
        _open_jobs(engine)
    except BaseException:
        listener.close()
        raise
    port = listener.getsockname()[1]  # the one the system picked, for port 0
    print(f"strongroom: serving the admin API at http://{shown}:{port}{home}", file=sys.stderr)
    # the entrances' redirects too carry the admin answers' headers
    config = uvicorn.Config(SecurityHeaders(server), host=host, port=port, log_config=_log_config())
    uvicorn.Server(config).run(sockets=[listener])


def _listen(host: str, port: int, shown: str) -> socket.socket:
    """The listening socket, made here so a port in use is one clear error before the
    server says it serves."""
    ipv6 = ":" in host
    try:  # an IPv6 socket also takes IPv4 where it can, as uvicorn's own bind did
        return socket.create_server(
            (host, port),
            family=socket.AF_INET6 if ipv6 else socket.AF_INET,
            dualstack_ipv6=ipv6 and socket.has_dualstack_ipv6(),
        )
    except OSError as exc:
        raise ConfigError(
            f"Cannot listen on {shown}:{port}: {exc.strerror or exc}. If another server uses "
            "the port, choose another with --port."
        ) from None


def _log_config() -> dict[str, Any]:
    """uvicorn's logging, with query strings cut from access lines, strongroom's own
    records (jobs submitted and ended) beside uvicorn's, and every other library's warnings
    (the server's event loop, a store's SDK) too: the operator's to read, where the command
    line silences them (`cli.show_warnings`; this replaces that)."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config.setdefault("filters", {})["without_query"] = {"()": _WithoutQuery}
    config["handlers"]["access"]["filters"] = ["without_query"]
    config["loggers"]["strongroom"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    config["root"] = {"handlers": ["default"], "level": "WARNING"}
    return config


def _open_jobs(engine: Engine) -> None:
    """Open the job database before serving: a table a newer strongroom wrote stops the
    start (every call that reads a job would fail); an outage only warns, and jobs start
    once the database is back."""
    try:
        engine.jobs  # noqa: B018 (opened, and its tables made or migrated)
    except JobStoreUnavailableError as exc:
        print(f"strongroom: warning: {exc}", file=sys.stderr)


def _warn(host: str, home: Path) -> None:
    if not configured_hashes(home):
        print(
            f"strongroom: warning: no API tokens are configured ({tokens_path(home)} or "
            "STRONGROOM_API_TOKEN_HASHES): unless a plugin authenticates, every request "
            "is refused; 'strongroom token new' makes one.",
            file=sys.stderr,
        )
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        print(
            f"strongroom: warning: serving plain HTTP on {host}; tokens and passcodes cross "
            "the network unencrypted unless a TLS proxy stands in front.",
            file=sys.stderr,
        )
