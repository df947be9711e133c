"""The Engine's stores: opening the configured ones (and the product's own) once,
adding, initialising and validating them, and switching to an edited configuration.

Kept apart from engine.py, as enginejobs.py is, so each file reads as one subject:
engine.py does the operations on a store, this says which store that is and whether
it may be taken for one (storemarker.py).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pluggy

from .backends.file import CONFINE_OPTION
from .config import COMPRESSIONS, StoresConfig, StoreSpec, edit_config
from .errors import ConfigError, StoreMissingError, StoreUnavailableError
from .format import quoted
from .knownstores import KnownStores, places
from .plugins import BackendRegistry, Backends
from .store import Store, ValidationReport
from .storemarker import lost, mark, recognised, require_marked

__all__ = ["EngineStores"]


class EngineStores:
    """The store half of `Engine`, its only subclass: the configuration (`config`,
    `home`) and the stores opened from it, the backends that open them, and the stores a
    host product handed in."""

    def __init__(
        self,
        config: StoresConfig,
        *,
        home: Path,
        stores: Iterable[Store],
        plugin_manager: pluggy.PluginManager | None,
    ) -> None:
        self.config = config
        self.home = home
        self._backends = Backends(plugin_manager)
        self._stores: dict[str, Store] = {store.name: store for store in stores}
        self._given = frozenset(self._stores)
        self._known = KnownStores(home)

    @property
    def plugin_manager(self) -> pluggy.PluginManager:
        """Every plugin (the admin API calls their hooks); installed ones load on first use."""
        return self._backends.manager

    @property
    def registry(self) -> BackendRegistry:
        """The backends stores are opened with (the admin API reads their declarations)."""
        return self._backends.registry

    def store(self, name: str | None = None) -> Store:
        """The store called `name` (default: the configured default store), opened once.

        Stores handed to the constructor come first: a host product (or a backend's
        conformance tests) can use a store it built itself, with no configuration.
        """
        if name in self._stores:
            return self._stores[name]
        spec = self.config.get(name)
        if spec.name not in self._stores:
            store = self._backends.open(spec)
            if self.config.is_embedded(spec):  # strongroom's own: made on first use,
                store.check_mounted()  # but not on the disk below a volume meant for it
                store.initialize()
            self._stores[spec.name] = store
        return self._stores[spec.name]

    def reachable_store(self, name: str | None = None) -> Store:
        """`store(name)`, refused (StoreUnavailableError) where its place is not the one it
        stands for now (`Store.check_mounted`: a file store's directory on the disk below
        an unmounted share, which shows none of the share's backups and would take new
        ones). Every operation on a store asks, reads too, the embedded store's included
        (a volume may be mounted for it); not asked: a store handed to the constructor."""
        store = self.store(name)
        if not self.handed_in(store.name):
            store.check_mounted()
        return store

    def recognised_store(self, name: str | None = None, *, adopt: bool = False) -> Store:
        """`reachable_store(name)`, refused (StoreUnavailableError) unless it carries
        strongroom's marker or holds a backup (storemarker.py): what writes and what finds
        nothing ask first, so an unmounted disk is never taken for an empty store; `adopt`:
        see `recognised`. Its place is remembered (knownstores.py). Not asked: a store
        handed to the constructor (the product's own) and the embedded store (strongroom's
        own, made whenever it is missing)."""
        store = self.reachable_store(name)
        if self._needs_marker(store):
            spec = self.config.get(store.name)
            require_marked(store, adopt=adopt, known=lambda: self._knows(spec))
            self._known.remember(self._places(spec), spec.name)
        return store

    def handed_in(self, name: str | None) -> bool:
        """Whether `name` is a store handed to the constructor (the product's own)."""
        return name in self._given

    def store_name(self, name: str | None = None) -> str:
        """The name of the store `name` refers to (default: the default store), without
        opening it; ConfigError for a name neither configured nor handed in."""
        return name if name is not None and self.handed_in(name) else self.config.get(name).name

    def _needs_marker(self, store: Store) -> bool:
        """Whether `store` is asked for the store marker: any configured store but the
        embedded one (strongroom's own, made whenever it is missing)."""
        return not self.handed_in(store.name) and not self.config.is_embedded(
            self.config.get(store.name)
        )

    @contextmanager
    def explaining_missing(self, store: Store) -> Iterator[None]:
        """Around a read that finds a store's place missing: refuse it as
        `recognised_store` does, which says what to do (mount it; init it if new)."""
        try:
            yield
        except StoreMissingError:
            self.recognised_store(store.name)
            raise

    def add_store(self, spec: StoreSpec, *, default: bool = False, anew: bool = False) -> None:
        """Add a store to the configuration file, as `strongroom stores add` does: it is
        opened first (scheme, options, secret references), refused if it cannot keep
        backups, and its place made (a file store's directory) and marked; only then saved.
        A place this home has known as a store that lost its marker is refused (`_mark`),
        and so is a place configured under another name (`_refuse_second_name`)."""

        def prepare() -> None:
            _check_url_text(spec)
            self._refuse_second_name(spec)
            store = self.store(spec.name)
            store.check_persistent()
            _check_locks(store)
            insist = f"'{add_command(spec, default=default)}'"
            self._mark(spec, store, unless_known=True, anew=anew, insist=insist)

        edit_config(self, lambda config: config.add(spec, make_default=default), check=prepare)

    def _refuse_second_name(self, spec: StoreSpec) -> None:
        """A directory has one store name: under two, every backup there would be listed,
        cleaned up and counted twice (a cleanup would delete each expired one once a
        name). File stores only: another store's place (knownstores.py) is its URL and
        declared endpoints, which leave out what some backends take as settings (Azure's
        account), so two different stores could share one."""
        if not _is_file(spec):
            return
        new = self._places(spec)
        for other in self.config.stores.values():
            if other.name == spec.name or not _is_file(other):
                continue
            if not new.isdisjoint(self._places(other)):
                rename = (
                    ""
                    if self.config.is_embedded(other)
                    else f"; to rename it, remove it ('strongroom stores remove {other.name}': "
                    "its backups stay) and add it again"
                )
                raise ConfigError(
                    f"Store {spec.name!r} ({spec.url}) would be the store {other.name!r} "
                    f"({other.url}) again: the same place under another name. Use --store "
                    f"{other.name}{rename}."
                )

    def init_store(self, name: str, *, anew: bool = False) -> Store:
        """Make a store's place and put its store marker (storemarker.py), as adding it
        does: once for a new store written into config.toml by hand (or for one from
        before markers). A marked store is left as it is; a place this home has known as
        a store that lost its marker is refused unless `anew` (`_mark`)."""
        store = self.store(name)
        spec = self.config.get(store.name)
        _check_url_text(spec)  # written by hand: checked before its place is made
        self._refuse_second_name(spec)
        _check_locks(store)
        insist = f"'strongroom stores init {store.name} --anew'"
        self._mark(spec, store, unless_known=False, anew=anew, insist=insist)
        return store

    def _mark(
        self, spec: StoreSpec, store: Store, *, unless_known: bool, anew: bool, insist: str
    ) -> None:
        """Make the store's place and mark it (`mark`), and remember it. Refused, unless
        `anew`, for a place this home has known as a store (knownstores.py) that has
        neither its marker nor a backup now: that is a disk not mounted or a store
        emptied, and marking it would make the empty place below a new store. A place
        under a mount point that nothing is mounted on is refused even so (`check_mounted`):
        that is the disk below, in any home."""
        store.check_mounted()
        if not anew and self._knows(spec, marking=insist):
            try:
                found = recognised(store)
            except StoreMissingError:
                found = False
            if not found:
                raise lost(store, insist)
        store.initialize()
        mark(store, unless_known=unless_known)
        if not self.config.is_embedded(spec):
            self._known.remember(self._places(spec), spec.name)

    def _knows(self, spec: StoreSpec, *, marking: str | None = None) -> bool:
        """Whether this home has known a store at the spec's place. A known-stores file
        that cannot be read refuses a marking (`marking`: how to insist), since nobody
        can tell then; for a refusal's advice it counts as not known (marking it would
        be refused anyway)."""
        try:
            return self._known.knows(self._places(spec))
        except OSError as exc:
            if marking is None:
                return False
            raise ConfigError(
                f"Store {spec.name!r} ({spec.url}): the places this home has known as stores "
                f"({self._known.path}) cannot be read ({exc.strerror or exc}), so nobody can "
                "tell whether a store that lost its marker was there. Replace it with a "
                "regular file you own (or remove it, forgetting every place it held), or, "
                f"only if its disk is mounted and no store was there, {marking}."
            ) from None

    def _places(self, spec: StoreSpec) -> set[str]:
        return places(spec, self.registry.options_of(spec.url))

    def validate_store(self, name: str | None = None) -> ValidationReport:
        """Whether the store is recognisably strongroom's (`recognised_store`), then, if it
        is, probe its permissions (`Store.validate`): an unmounted disk would pass every
        probe, written onto the disk below it."""
        try:
            store = self.recognised_store(name)
        except StoreUnavailableError as exc:
            spec = self.config.get(name)  # opened only (`store` makes the embedded store)
            store = self._stores.get(spec.name) or self._backends.open(spec)
            checks, errors = {"recognised": False}, [f"recognised: {exc}"]
            return ValidationReport(
                store.name, store.url, checks, errors, store.capabilities, store.lock_mode
            )
        report = store.validate()
        return replace(report, checks={**report.checks, "recognised": True})

    def compression(self, store: Store) -> str:
        """How creates into `store` encode their chunks: its `compression` setting; a
        store handed in has no settings, and gets the default."""
        if self.handed_in(store.name):
            return COMPRESSIONS[0]
        return self.config.get(store.name).compression

    def use_config(self, config: StoresConfig) -> None:
        """Switch to a changed stores configuration; stores whose spec changed reopen."""
        for name, spec in self.config.stores.items():
            if config.stores.get(name) != spec:
                self._stores.pop(name, None)
        self.config = config


def _is_file(spec: StoreSpec) -> bool:
    return urlsplit(spec.url).scheme == "file"


def add_command(spec: StoreSpec, *, default: bool) -> str:
    """The `stores add` command line that adds `spec` anew, quoted for a shell (without
    the confinement the admin API adds to what it registers)."""
    options = [
        ["--option", f"{key}=env:{value['env']}" if isinstance(value, dict) else f"{key}={value}"]
        for key, value in spec.options.items()
        if key != CONFINE_OPTION
    ]
    return shlex.join(
        [
            "strongroom",
            "stores",
            "add",
            spec.name,
            spec.url,
            *(["--default"] if default else []),
            *(["--compression", spec.compression] if spec.compression != COMPRESSIONS[0] else []),
            *[part for option in options for part in option],
            "--anew",
        ]
    )


def _check_locks(store: Store) -> None:
    """A store added to lock backups must be able to: else an operator would believe its
    backups immutable while they are not (the lock check of `stores validate`, alone)."""
    if not store.lock_mode:
        return
    try:
        store.check_object_lock()
    except ConfigError as exc:
        raise ConfigError(
            f"Store {store.name!r} ({store.url}) cannot lock backups: {exc}."
        ) from None


#: Characters a URL parser drops or a listing cannot show plainly: C0 and C1 controls,
#: DEL, and Unicode's line and paragraph separators.
_UNSEEN = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _check_url_text(spec: StoreSpec) -> None:
    """Refuse a new store's URL that holds, as written or unescaped, a character that is
    read one way and used another (a parser drops a raw line break, so the place used is
    not the one saved; an escaped one makes a name no listing shows plainly). Checked
    when a store is added, not when the configuration is read: one an older strongroom
    took still loads, to be removed."""
    for text in (spec.url, *(str(v) for v in spec.options.values() if isinstance(v, str))):
        if _UNSEEN.search(text + unquote(text)):
            raise ConfigError(
                f"Store {spec.name!r}: {quoted(text)} holds a control character (a line "
                "break, a tab; or one written as %0a and the like), which would be read one "
                "way and used another; write it without."
            )
