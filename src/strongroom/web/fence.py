"""What a token holder may do with stores: only what the operator allowed.

The operator lists the locations (URL prefixes) where admin API callers may register
stores: `strongroom serve --allow-store URL_PREFIX`, `[api] allow_stores` in the
configuration file, `create_app(allow_stores=...)`. With none, the API edits no store.
A store's URL, and every option its backend declares an endpoint, must lie under one of
them; a caller may otherwise set only the options its backend declares harmless
(`BackendOptions.settings`), never a secret or an `{"env": ...}` reference, which would
make the server send its own environment wherever the request says. A `file://` location
is walked from the allowed directory one name at a time, when it is registered and on every
open after (`confine_to`), so a link below it cannot carry the store elsewhere, not even
one put there later. Stores the operator configured are not judged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..backends.file import CONFINE_OPTION
from ..backends.root import MissingRootError, NotFollowedError, Root
from ..config import StoreSpec
from ..errors import ConfigError, os_error_text
from ..plugins import BackendOptions, BackendRegistry
from ..store import OBJECT_LOCK_OPTION
from .responses import ApiError

__all__ = ["Location", "StoreFence"]

HOW = (
    "the operator allows locations with 'strongroom serve --allow-store URL_PREFIX' "
    "or allow_stores in the [api] table of the configuration file"
)


@dataclass(frozen=True, slots=True)
class Location:
    """A URL reduced to what decides where it leads: scheme, host (or bucket), path names."""

    scheme: str
    netloc: str
    names: tuple[str, ...]

    @classmethod
    def parse(cls, url: str) -> Location:
        """The location of `url`; a ConfigError if it could be read two ways (a query, a
        fragment, user info, escapes in the host, or an empty, '.' or '..' path name)."""
        parts = urlsplit(url)
        path = unquote(parts.path)
        names = path.strip("/").split("/") if path.strip("/") else []
        netloc = parts.netloc.lower()
        if (
            not parts.scheme
            or parts.query
            or parts.fragment
            or any(c in netloc for c in "@%\\")
            or any(name in ("", ".", "..") or "\0" in name for name in names)
            or (path and not path.startswith("/"))
        ):
            raise ConfigError(
                f"{url!r} is not a plain location: write scheme://host/path with no query, "
                "user, '.' or '..'."
            )
        scheme = parts.scheme.lower()
        if scheme == "file" and netloc == "localhost":
            netloc = ""
        return cls(scheme, netloc, tuple(names))

    def within(self, prefix: Location) -> bool:
        size = len(prefix.names)
        return (self.scheme, self.netloc) == (prefix.scheme, prefix.netloc) and (
            self.names[:size] == prefix.names
        )


class StoreFence:
    """The operator's policy for store edits over the API, and its checks (403 when not)."""

    def __init__(self, allow_stores: Sequence[str]) -> None:
        self._allowed = [Location.parse(url) for url in allow_stores]

    def check_new(self, spec: StoreSpec, registry: BackendRegistry) -> StoreSpec:
        """A store a caller registers: its location, then each of its options. Returns the
        spec to register: a file store's is confined to the allowed directory it lies in
        (`CONFINE_OPTION`), so every later open walks down from there as this check did."""
        location = self._place(spec.url, "The store's url")
        declared = registry.options_of(spec.url) or BackendOptions()
        for name, value in spec.options.items():
            self._check_option(name, value, declared)
        if location.scheme != "file":
            return spec
        prefix = self._prefix_of(location)
        _refuse_links(location, prefix)
        allowed = str(Path("/", *prefix.names))
        return replace(spec, options={**spec.options, CONFINE_OPTION: allowed})

    def check_existing(self, spec: StoreSpec) -> None:
        """A configured store a caller unregisters: its location only."""
        self._place(spec.url, f"Store {spec.name!r}")

    def check_default(self) -> None:
        """A caller making a configured store the default. That reaches no new place, so
        any configured store may be chosen where callers may edit stores at all: a caller
        who made its own store the default can make the operator's the default again."""
        self._check_open()

    def _check_open(self) -> None:
        if not self._allowed:
            raise ApiError(403, f"This server lets no API caller register or change stores; {HOW}.")

    def _check_option(self, name: str, value: object, declared: BackendOptions) -> None:
        if isinstance(value, dict) or declared.is_secret(name):
            raise ApiError(
                403,
                f"Option {name!r}: secrets come from the operator's configuration (strongroom "
                "stores add, the configuration file), never from a request.",
            )
        if name in declared.endpoints:
            self._place(str(value), f"Option {name!r}")
        elif name not in declared.settings and name != OBJECT_LOCK_OPTION:
            raise ApiError(
                403,
                f"Option {name!r} cannot be set over the API (the backend does not declare "
                "it harmless); the operator can set it with 'strongroom stores add'.",
            )

    def _place(self, url: str, what: str) -> Location:
        """The location of `url` if the operator allowed it; 403 otherwise."""
        self._check_open()
        try:
            location = Location.parse(url)
        except ConfigError as exc:
            raise ApiError(403, f"{what}: {exc}") from None
        if not any(location.within(prefix) for prefix in self._allowed):
            raise ApiError(
                403, f"{what} {url!r} is not under a location this server allows; {HOW}."
            )
        return location

    def _prefix_of(self, location: Location) -> Location:
        return next(prefix for prefix in self._allowed if location.within(prefix))


def _refuse_links(location: Location, prefix: Location) -> None:
    """Walk from the allowed directory to the store's, following no link (what does not
    exist yet, the store makes as plain directories)."""
    below = "/".join(location.names[len(prefix.names) :])
    try:
        with Root(Path("/", *prefix.names)).directory(below):
            pass
    except (FileNotFoundError, MissingRootError):
        pass
    except NotFollowedError as exc:
        raise ApiError(
            403, f"The store's directory is reached through a link or a file: {exc.strerror}."
        ) from None
    except OSError as exc:  # a name too long, a directory not searchable: not a place to use
        raise ApiError(
            400,
            f"The store's directory cannot be used: {os_error_text(exc)}.",
        ) from None
