"""The Engine's stores: opening the configured ones (and the product's own) once,
adding, initialising and validating them, and switching to an edited configuration.

Kept apart from engine.py, as enginejobs.py is, so each file reads as one subject:
engine.py does the operations on a store, this says which store that is and whether
it may be taken for one (storemarker.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import pluggy

from .config import COMPRESSIONS, StoresConfig, StoreSpec, edit_config, embedded_store
from .errors import StoreUnavailableError
from .plugins import BackendRegistry, Backends
from .store import Store, ValidationReport
from .storemarker import mark, require_marked

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
            if spec == embedded_store(self.config.home):  # strongroom's own: made on first use
                store.initialize()
            self._stores[spec.name] = store
        return self._stores[spec.name]

    def recognised_store(self, name: str | None = None, *, adopt: bool = False) -> Store:
        """`store(name)`, refused (StoreUnavailableError) unless it carries strongroom's
        marker or holds a backup (storemarker.py): what writes and what finds nothing
        ask first, so an unmounted disk is never taken for an empty store; `adopt`: see
        `require_marked`. Not asked: a store handed to the constructor (the product's
        own) and the embedded store (strongroom's own, made whenever it is missing)."""
        store = self.store(name)
        if store.name in self._given:
            return store
        spec = self.config.get(store.name)
        if spec != embedded_store(self.config.home):
            require_marked(store, adopt=adopt, marked=spec.marked)
        return store

    def add_store(self, spec: StoreSpec, *, default: bool = False) -> None:
        """Add a store to the configuration file, as `strongroom stores add` does: it is
        opened first (scheme, options, secret references), refused if it cannot keep
        backups, and its place made (a file store's directory) and marked; only then saved."""

        def prepare() -> None:
            store = self.store(spec.name)
            store.check_persistent()
            store.initialize()
            mark(store, unless_known=True)

        marked = replace(spec, marked=True)
        edit_config(self, lambda config: config.add(marked, make_default=default), check=prepare)

    def init_store(self, name: str) -> Store:
        """Make a store's place and put its store marker (storemarker.py), as adding it
        does, and note in config.toml that it is marked: once for a new store written
        there by hand (or for one from before markers). A store noted as marked that has
        lost its marker and holds no backup is refused: that is a disk not mounted or a
        store emptied, and marking it would take it for a new store."""
        was_marked = False

        def note(config: StoresConfig) -> None:  # as the file says now, not as first read
            nonlocal was_marked
            was_marked = config.get(name).marked
            config.record_marked(name)

        def prepare() -> None:
            store = self.store(name)
            if was_marked:
                require_marked(store, marked=True)
            store.initialize()
            mark(store)

        edit_config(self, note, check=prepare)
        return self.store(name)

    def validate_store(self, name: str | None = None) -> ValidationReport:
        """Whether the store is recognisably strongroom's (`recognised_store`), then, if it
        is, probe its permissions (`Store.validate`): an unmounted disk would pass every
        probe, written onto the disk below it."""
        store = self.store(name)
        try:
            self.recognised_store(store.name)
        except StoreUnavailableError as exc:
            checks, errors = {"recognised": False}, [f"recognised: {exc}"]
            return ValidationReport(
                store.name, store.url, checks, errors, store.capabilities, store.lock_mode
            )
        report = store.validate()
        return replace(report, checks={**report.checks, "recognised": True})

    def compression(self, store: Store) -> str:
        """How creates into `store` encode their chunks: its `compression` setting; a
        store handed in has no settings, and gets the default."""
        if store.name in self._given:
            return COMPRESSIONS[0]
        return self.config.get(store.name).compression

    def use_config(self, config: StoresConfig) -> None:
        """Switch to a changed stores configuration; stores whose spec changed reopen."""
        for name, spec in self.config.stores.items():
            if config.stores.get(name) != spec:
                self._stores.pop(name, None)
        self.config = config
