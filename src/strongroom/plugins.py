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
import threading
from collections.abc import Callable, Collection
from contextlib import suppress
from dataclasses import dataclass, replace
from types import ModuleType
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pluggy

from .config import StoreSpec
from .errors import ConfigError, StrongroomError, UnknownBackendError
from .store import LOCK_MODES, OBJECT_LOCK_OPTION, Store

if TYPE_CHECKING:
    import importlib.metadata

    from starlette.requests import Request

__all__ = [
    "ENTRY_POINT_GROUP",
    "BackendInfo",
    "BackendOptions",
    "BackendRegistry",
    "Backends",
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


#: Parts of option names that mark a secret whatever a backend declares: the generic fsspec
#: backend cannot list its options, and a plugin that forgets one still keeps it out of files.
SECRET_WORDS = ("key", "secret", "token", "passw", "credential", "sas", "connection_string", "auth")


@dataclass(frozen=True, slots=True)
class BackendOptions:
    """What a backend's options carry, declared with `registry.add(..., options=...)`.

    `secrets` (and every option named like one, see SECRET_WORDS) may only be written as
    `{ env = "VARIABLE" }` references, never in plain text. Over the admin API a caller may
    set `settings` freely and `endpoints` (URLs where the store's requests go) only to a
    location the operator allowed; secrets and undeclared options come only from the
    operator's configuration. A backend that declares nothing takes no options over the API.
    """

    settings: Collection[str] = ()
    endpoints: Collection[str] = ()
    secrets: Collection[str] = ()

    def is_secret(self, name: str) -> bool:
        return name in self.secrets or any(word in name.lower() for word in SECRET_WORDS)


@dataclass(frozen=True, slots=True)
class BackendInfo:
    """A registered backend as `strongroom stores backends` shows it."""

    #: The URL scheme it handles; None for a fallback (the schemes it accepts when asked).
    scheme: str | None
    #: The plugin that registered it, as `_described` names one.
    plugin: str
    #: What it declared about its options (None: nothing; none taken over the admin API).
    options: BackendOptions | None
    #: For a fallback, which schemes it takes, in its own words.
    takes: str = ""

    def to_dict(self) -> dict[str, object]:
        declared = self.options or BackendOptions()
        return {
            "scheme": self.scheme,
            "plugin": self.plugin,
            "settings": sorted(declared.settings),
            "endpoints": sorted(declared.endpoints),
            "secrets": sorted(declared.secrets),
            **({"takes": self.takes} if self.scheme is None else {}),
        }


class BackendRegistry:
    """URL scheme → store factory. Plugins call `add`; the engine calls `open`."""

    def __init__(self) -> None:
        self._factories: dict[str, StoreFactory] = {}
        self._options: dict[str, BackendOptions] = {}
        self._fallbacks: list[tuple[Callable[[str], bool], StoreFactory]] = []
        self._owners: dict[str, object] = {}
        self._fallback_owners: list[tuple[object, str]] = []
        #: The plugin whose hook is registering now (`build_registry` says), for errors.
        self.registering: object = None

    def add(
        self, scheme: str, factory: StoreFactory, *, options: BackendOptions | None = None
    ) -> None:
        """Register `factory` for URLs of `scheme`; two claims on one scheme are an error.

        `options` declares which of the backend's options are harmless settings, endpoints
        and secrets (see BackendOptions).
        """
        scheme = scheme.lower()
        if scheme in self._factories:
            owners = [_described(p) for p in (self._owners[scheme], self.registering) if p]
            named = f" ({' and '.join(owners)})" if owners else ""
            raise ConfigError(
                f"Two strongroom plugins register the {scheme!r} store backend{named}; only "
                f"one may. {_remedy('one of them')}"
            )
        self._factories[scheme] = factory
        self._owners[scheme] = self.registering
        if options is not None:
            self._options[scheme] = options

    def add_fallback(
        self,
        claims: Callable[[str], bool],
        factory: StoreFactory,
        *,
        takes: str = "the schemes it claims when asked",
    ) -> None:
        """Register `factory` for the schemes `claims` accepts and no `add` registered (the
        generic fsspec backend). `claims` is asked only for such a scheme, so a fallback's
        library is imported only when one of its stores is opened. Its options are all
        undeclared: none is taken over the admin API. `takes` says which schemes it claims,
        for `strongroom stores backends`."""
        self._fallbacks.append((claims, factory))
        self._fallback_owners.append((self.registering, takes))

    def options_of(self, url: str) -> BackendOptions | None:
        """What the backend for `url` declared about its options (None: nothing)."""
        scheme = urlsplit(url).scheme.lower()
        if scheme in self._factories:
            return self._options.get(scheme)
        return BackendOptions() if self._fallback_for(scheme) is not None else None

    def registers(self, url: str) -> bool:
        """Whether a backend claimed `url`'s scheme with `add` (a fallback's do not count)."""
        return urlsplit(url).scheme.lower() in self._factories

    @property
    def schemes(self) -> list[str]:
        """The schemes of dedicated backends (fallbacks claim theirs only when asked)."""
        return sorted(self._factories)

    def backends(self) -> list[BackendInfo]:
        """Every registered backend by scheme, then the fallbacks, with the plugin that
        registered each: what a person checks after installing a plugin."""
        return [
            *(
                BackendInfo(scheme, _owner(self._owners[scheme]), self._options.get(scheme))
                for scheme in self.schemes
            ),
            *(
                BackendInfo(None, _owner(owner), None, takes)
                for owner, takes in self._fallback_owners
            ),
        ]

    def open(self, spec: StoreSpec) -> Store:
        """Open the store a spec describes. The `object_lock` option belongs to the core: it
        goes to the store's `enable_object_lock`, which a backend without locks refuses.
        Secrets written in plain text are refused before anything is resolved or opened,
        and a factory that fails otherwise than with a StrongroomError (fsspec's
        constructors raise TypeError, OSError, …) becomes a ConfigError naming the store."""
        _refuse_plain_secrets(spec, self.options_of(spec.url) or BackendOptions())
        resolved = spec.resolve()
        options = dict(resolved.options)
        lock_mode = options.pop(OBJECT_LOCK_OPTION, None)
        factory = self.factory_for(spec)
        try:
            store = factory(replace(resolved, options=options))
        except StrongroomError:
            raise
        except ModuleNotFoundError as exc:  # a library its backend imports only when used
            raise ConfigError(
                f"Store {spec.name!r}: the backend for {spec.url} needs the Python module "
                f"{exc.name!r}, which is not installed: install it where strongroom runs (pip "
                "install; the backend's documentation names the package)."
            ) from exc
        except Exception as exc:  # a backend's constructor refusing the URL or an option
            raise ConfigError(
                f"Store {spec.name!r}: {spec.url} cannot be opened ({type(exc).__name__}: "
                f"{exc}). Check the URL (the host, bucket or path it names) and the options."
            ) from exc
        if lock_mode is not None:
            store.enable_object_lock(_check_lock_mode(spec.name, lock_mode))
        return store

    def factory_for(self, spec: StoreSpec) -> StoreFactory:
        """The factory for the spec's URL scheme, or an error naming what to install."""
        scheme = urlsplit(spec.url).scheme.lower()
        factory = self._factories.get(scheme) or self._fallback_for(scheme)
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

    def _fallback_for(self, scheme: str) -> StoreFactory | None:
        return next((factory for claims, factory in self._fallbacks if claims(scheme)), None)


def _refuse_plain_secrets(spec: StoreSpec, declared: BackendOptions) -> None:
    """A secret option must be an `{ env = "VARIABLE" }` reference: the configuration file
    is no place for a credential, and the error never shows the value."""
    plain = [
        k for k, v in spec.options.items() if declared.is_secret(k) and not isinstance(v, dict)
    ]
    if plain:
        raise ConfigError(
            f"Store {spec.name!r}: option(s) {', '.join(plain)} must not be written in plain "
            f'text. Write {plain[0]} = {{ env = "VARIABLE" }} in the configuration (or '
            f"--option {plain[0]}=env:VARIABLE) and export VARIABLE."
        )


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

        :param registry: call ``registry.add("scheme", factory, options=BackendOptions(...))``
            where ``factory`` takes a :class:`strongroom.StoreSpec` and returns a
            :class:`strongroom.Store`, and ``options`` says which of its options are
            harmless settings, endpoints and secrets (the admin API fences by it).
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
    try:
        if autoload:
            manager.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        manager.check_pending()  # a hook that no spec has: a misspelt name
    except pluggy.PluginValidationError as exc:  # a hook of the wrong name or arguments
        raise ConfigError(
            f"The strongroom plugin {_described(exc.plugin)} is not valid: "
            f"{_one_line(exc)}. {_remedy()}"
        ) from exc
    except Exception as exc:  # an installed plugin's import failed
        which = ", ".join(_failing_plugins()) or "one of them"
        raise ConfigError(
            f"An installed strongroom plugin failed to load ({type(exc).__name__}: "
            f"{_one_line(exc)}): {which}. {_remedy()}"
        ) from exc
    return manager


def _remedy(plugin: str = "it") -> str:
    """What to do about a broken plugin: the end of every error that names one."""
    return (
        f"Reinstall or uninstall {plugin} (`pip list` shows them; backups and restores on "
        f"file:// stores do not need it), or set {DISABLE_AUTOLOAD_ENV}=1 to use the "
        "built-in backends only."
    )


def _one_line(exc: BaseException) -> str:
    """pluggy's messages run over several lines; an error is one."""
    return " ".join(str(exc).split())


def _failing_plugins() -> list[str]:
    """The installed plugins whose import fails, each as `name = module (from its
    distribution)`, for the error that has to say which one to reinstall or uninstall."""
    failing = []
    for entry_point in _entry_points():
        try:
            entry_point.load()
        except Exception:
            failing.append(_entry_point_text(entry_point))
    return failing


def _described(plugin: object) -> str:
    """A plugin as a person finds it: its entry point and distribution, or the name of
    the module or class a built-in one or the host program's is (never its repr, which
    may hold the host's settings)."""
    for entry_point in _entry_points():
        with suppress(Exception):  # one that fails to import is not this one
            if entry_point.load() is plugin:
                return _entry_point_text(entry_point)
    name = plugin.__name__ if isinstance(plugin, ModuleType) else type(plugin).__qualname__
    return f"{name} ({'built in' if name in DEFAULT_PLUGINS else 'registered by the host program'})"


def _owner(plugin: object) -> str:
    """A backend's plugin, described; one added outside any plugin's registration (a host
    program calling `add` itself) has none."""
    return _described(plugin) if plugin is not None else "the host program"


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    import importlib.metadata  # pluggy has just imported it; every command need not

    return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def _entry_point_text(entry_point: importlib.metadata.EntryPoint) -> str:
    source = f" from {entry_point.dist.name}" if entry_point.dist else ""
    return f"{entry_point.name} = {entry_point.value}{source}"


def build_registry(manager: pluggy.PluginManager) -> BackendRegistry:
    """Every plugin's backends, called plugin by plugin (in pluggy's order) so that a
    registration that fails, or claims a scheme another plugin has, names both."""
    registry = BackendRegistry()
    arguments = {"registry": registry}
    for hook in reversed(manager.hook.strongroom_register_backends.get_hookimpls()):
        registry.registering = hook.plugin
        if hook.hookwrapper or hook.wrapper:
            raise ConfigError(
                f"The strongroom plugin {_described(hook.plugin)} wraps "
                "strongroom_register_backends, and that hook is called plugin by plugin, "
                "without wrappers: register backends in a plain @hookimpl."
            )
        try:
            hook.function(*(arguments[name] for name in hook.argnames))
        except StrongroomError:
            raise
        except Exception as exc:
            raise ConfigError(
                f"The strongroom plugin {_described(hook.plugin)} failed to "
                f"register its backends ({type(exc).__name__}: {_one_line(exc)}). {_remedy()}"
            ) from exc
    registry.registering = None
    return registry


class Backends:
    """An engine's plugins and the registry it opens stores with, the installed plugins
    loaded only when first needed.

    A store on a scheme a built-in plugin registers (file://) is opened without them: no
    other plugin may claim that scheme, so the answer is the same, and a local backup or
    restore neither waits for every installed plugin to be found and imported nor fails
    because one of them is broken. Anything else (another scheme, the registry, the plugin
    manager for its hooks) loads them all first.
    """

    def __init__(self, manager: pluggy.PluginManager | None = None) -> None:
        self._lock = threading.Lock()
        self._manager = manager
        self._registry = None if manager is None else build_registry(manager)
        self._builtin = build_registry(get_plugin_manager(autoload=False))

    @property
    def manager(self) -> pluggy.PluginManager:
        """The plugin manager with every plugin, for hooks other than the backends'."""
        with self._lock:
            if self._manager is None:
                self._manager = get_plugin_manager()
            return self._manager

    @property
    def registry(self) -> BackendRegistry:
        """Every plugin's backends."""
        manager = self.manager
        with self._lock:
            if self._registry is None:
                self._registry = build_registry(manager)
            return self._registry

    def open(self, spec: StoreSpec) -> Store:
        """Open a store, loading the installed plugins only if a built-in cannot."""
        with self._lock:
            builtin = self._registry is None and self._builtin.registers(spec.url)
        return (self._builtin if builtin else self.registry).open(spec)


def open_store(spec: StoreSpec, manager: pluggy.PluginManager | None = None) -> Store:
    """Open the store a spec describes with whichever backend handles its URL scheme."""
    return build_registry(manager or get_plugin_manager()).open(spec)
