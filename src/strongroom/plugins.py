"""Hook specifications and the plugin manager (pluggy), as pytest, tox and datasette do it.

Every hook is a method of `StrongroomHookSpecs`, documented there. Backends register
through `strongroom_register_backends(registry)`; host products decide who may use the
admin API through `strongroom_authenticate(token, request)`. The built-in
filesystem backend is an ordinary plugin module registered by the same call as
third-party plugins, which come from the `strongroom` entry-point group unless
`STRONGROOM_DISABLE_PLUGIN_AUTOLOAD` is set.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pluggy

from .config import StoreSpec
from .errors import ConfigError, UnknownBackendError
from .store import LOCK_MODES, OBJECT_LOCK_OPTION, Store

if TYPE_CHECKING:
    from starlette.requests import Request

__all__ = [
    "ENTRY_POINT_GROUP",
    "BackendRegistry",
    "StoreFactory",
    "StrongroomHookSpecs",
    "get_plugin_manager",
    "hookimpl",
    "hookspec",
    "open_store",
]

ENTRY_POINT_GROUP = "strongroom"
DISABLE_AUTOLOAD_ENV = "STRONGROOM_DISABLE_PLUGIN_AUTOLOAD"
DEFAULT_PLUGINS = ("strongroom.backends.file", "strongroom.backends.generic")

hookspec = pluggy.HookspecMarker("strongroom")
hookimpl = pluggy.HookimplMarker("strongroom")

#: Builds a Store from a store's spec (name, URL and resolved options).
StoreFactory = Callable[[StoreSpec], Store]

#: Which distribution to install for schemes we know of but do not ship.
INSTALL_HINTS = {
    "s3": "strongroom-s3",
    "s3a": "strongroom-s3",
    "az": "strongroom-azure",
    "abfs": "strongroom-azure",
    "abfss": "strongroom-azure",
}


class BackendRegistry:
    """URL scheme → store factory. Plugins call `add`; the engine calls `open`."""

    def __init__(self) -> None:
        self._factories: dict[str, StoreFactory] = {}
        self._fallbacks: set[str] = set()

    def add(self, scheme: str, factory: StoreFactory, *, fallback: bool = False) -> None:
        """Register `factory` for URLs of `scheme`; two full claims on one scheme are an error.

        A `fallback` registration (the generic fsspec backend's) yields to any other.
        """
        scheme = scheme.lower()
        if scheme in self._factories:
            if fallback:
                return
            if scheme not in self._fallbacks:
                raise ValueError(f"Two plugins register the {scheme!r} store backend.")
        self._factories[scheme] = factory
        if fallback:
            self._fallbacks.add(scheme)
        else:
            self._fallbacks.discard(scheme)

    @property
    def schemes(self) -> list[str]:
        """The schemes of dedicated backends (the generic fsspec fallback's are not listed)."""
        return sorted(set(self._factories) - self._fallbacks)

    def open(self, spec: StoreSpec) -> Store:
        """Open the store a spec describes. The `object_lock` option belongs to the core: it
        goes to the store's `enable_object_lock`, which a backend without locks refuses."""
        resolved = spec.resolve()
        options = dict(resolved.options)
        lock_mode = options.pop(OBJECT_LOCK_OPTION, None)
        store = self.factory_for(spec)(replace(resolved, options=options))
        if lock_mode is not None:
            store.enable_object_lock(_check_lock_mode(spec.name, lock_mode))
        return store

    def factory_for(self, spec: StoreSpec) -> StoreFactory:
        """The factory for the spec's URL scheme, or an error naming what to install."""
        scheme = urlsplit(spec.url).scheme.lower()
        factory = self._factories.get(scheme)
        if factory is None:
            hint = INSTALL_HINTS.get(scheme)
            install = f" Install {hint} to use {scheme}:// stores." if hint else ""
            generic = "; other fsspec protocols through the generic backend"
            raise UnknownBackendError(
                f"Store {spec.name!r}: no installed backend handles {scheme or 'plain'!r} URLs "
                f"(installed: {', '.join(self.schemes)}{generic if self._fallbacks else ''})."
                f"{install}"
            )
        return factory


def _check_lock_mode(store: str, value: object) -> str:
    mode = value.lower() if isinstance(value, str) else value
    if mode not in LOCK_MODES:
        raise ConfigError(
            f"Store {store!r}: option {OBJECT_LOCK_OPTION} is {' or '.join(LOCK_MODES)} "
            f"(S3 Object Lock's retention modes); got {value!r}."
        )
    return str(mode)


class StrongroomHookSpecs:
    """Every hook strongroom calls; a plugin implements any of them with `@hookimpl` and
    the same name. Hooks only ever gain arguments, and an implementation may take fewer."""

    @hookspec
    def strongroom_register_backends(self, registry: BackendRegistry) -> None:
        """Register store backends by URL scheme; called once per plugin manager, by every
        plugin. What a backend must do is the contract of :class:`strongroom.Store`.

        :param registry: call ``registry.add("scheme", factory)`` where ``factory``
            takes a :class:`strongroom.StoreSpec` and returns a :class:`strongroom.Store`.
        """

    @hookspec(firstresult=True)
    def strongroom_authenticate(self, token: str | None, request: Request) -> bool | None:
        """Decide whether an admin API request may proceed (a host product's own login).

        Stops at the first plugin that returns True or False; if every plugin returns
        None, the server's configured API tokens decide.

        :param token: the token the request carries (form field, ``token`` query
            parameter on GET, ``Authorization``/``X-Esri-Authorization: Bearer`` header,
            or the HTML pages' cookie), or None if it carries none.
        :param request: the Starlette request, for hosts that authenticate otherwise
            (their own session cookie, a client certificate).
        :return: True to allow, False to refuse (HTTP 401), None to defer.
        """


def get_plugin_manager(*, autoload: bool | None = None) -> pluggy.PluginManager:
    """A fresh plugin manager with the built-in plugins and, unless disabled, installed ones."""
    manager = pluggy.PluginManager("strongroom")
    manager.add_hookspecs(StrongroomHookSpecs)
    for module_name in DEFAULT_PLUGINS:
        __import__(module_name)
        manager.register(sys.modules[module_name], name=module_name)
    if autoload is None:
        autoload = not os.environ.get(DISABLE_AUTOLOAD_ENV)
    if autoload:
        manager.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    manager.check_pending()
    return manager


def build_registry(manager: pluggy.PluginManager) -> BackendRegistry:
    registry = BackendRegistry()
    manager.hook.strongroom_register_backends(registry=registry)
    return registry


def open_store(spec: StoreSpec, manager: pluggy.PluginManager | None = None) -> Store:
    """Open the store a spec describes with whichever backend handles its URL scheme."""
    return build_registry(manager or get_plugin_manager()).open(spec)
