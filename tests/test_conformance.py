"""The built-in backends run the public conformance suite."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fsspec.implementations.memory import MemoryFileSystem

from strongroom import Store, StoreCapabilities, StoreSpec, UnknownBackendError
from strongroom.backends.file import LocalStore
from strongroom.backends.generic import open_fsspec_store
from strongroom.plugins import build_registry, get_plugin_manager
from strongroom.testing import StoreConformance


class TestLocalStore(StoreConformance):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Store:
        return LocalStore("local", (tmp_path / "store").as_uri(), tmp_path / "store")


class TestGenericFsspecStore(StoreConformance):
    @pytest.fixture
    def store(self) -> Iterator[Store]:
        url = f"memory://conformance-{uuid.uuid4().hex}"
        opened = build_registry(get_plugin_manager(autoload=False)).open(StoreSpec("ram", url))
        yield opened
        memory = MemoryFileSystem()
        if memory.exists(opened.root):
            memory.rm(opened.root, recursive=True)


def test_generic_backend_claims_no_atomicity() -> None:
    store = open_fsspec_store(StoreSpec("ram", "memory://claims"))
    assert store.capabilities == StoreCapabilities(ranged_reads=True)


def test_generic_backend_yields_to_dedicated_ones_and_names_missing_packages() -> None:
    registry = build_registry(get_plugin_manager(autoload=False))
    assert "memory" not in registry.schemes, "fallback schemes are not listed as dedicated"
    with pytest.raises(UnknownBackendError, match="strongroom-azure"):
        registry.open(StoreSpec("blob", "az://container/prefix"))
    with pytest.raises(UnknownBackendError, match="install gcsfs"):
        registry.open(StoreSpec("cloud", "gcs://bucket/prefix"))
