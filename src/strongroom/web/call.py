"""What every admin API handler works with: one request's parameters (`Call`), the way to
run the engine's blocking calls off the event loop (`run`, `Derivations`), and the route
table a group of handlers contributes (`RouteSpec`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import ParamSpec, Protocol, TypeVar

import anyio
import anyio.to_thread
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from ..crypto import Passcode
from ..errors import ConfigError
from ..jobs import Job
from .responses import Reply

__all__ = ["KDF_REQUESTS", "Call", "Derivations", "Handler", "RouteSpec", "UrlFor", "run"]

#: How many of one app's requests that take a passcode run at once (`Derivations`).
KDF_REQUESTS = 2

P = ParamSpec("P")
T = TypeVar("T")


class UrlFor(Protocol):
    """An absolute URL of one of the app's routes, wherever the app is mounted."""

    def __call__(self, route: str, /, **params: str) -> str: ...


@dataclass(frozen=True, slots=True)
class Call:
    """One request's parameters (a POST's form, a GET's query) and response format."""

    request: Request
    params: Mapping[str, str]
    fmt: str
    url: UrlFor

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

    def passcode(self) -> Passcode:
        """The required `passcode`, as a Passcode: no handler's frame holds its text."""
        return Passcode(self.require("passcode"))

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

    def job_reply(self, job: Job) -> Reply:
        """The answer of a call that submitted `job`: where to follow it."""
        url = self.url("job", jobid=job.jobid)
        return Reply({"jobsUrl": url, "jobid": job.jobid, "status": job.status.value}, redirect=url)


Handler = Callable[[Call], Awaitable[Reply | Response]]
#: A route: its name, path, handler and methods.
RouteSpec = tuple[str, str, Handler, Sequence[str]]


async def run(function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Engine calls block (I/O, the KDF): run them off the event loop."""
    return await run_in_threadpool(function, *args, **kwargs)


class Derivations:
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
