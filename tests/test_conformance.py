"""The built-in backends run the public conformance suite."""

from __future__ import annotations

import functools
import io
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fsspec.implementations.memory import MemoryFileSystem

from strongroom import (
    ConfigError,
    Engine,
    IntegrityError,
    ScanResult,
    Store,
    StoreCapabilities,
    StoresConfig,
    StoreSpec,
    UnknownBackendError,
)
from strongroom.backends.file import LocalStore
from strongroom.backends.generic import FsspecStore, open_fsspec_store
from strongroom.plugins import build_registry, get_plugin_manager
from strongroom.testing import StoreConformance
from tests.conftest import FAST_KDF, PASSCODE, local_store


class TestLocalStore(StoreConformance):
    @pytest.fixture
    def store_opener(self, tmp_path: Path) -> Callable[[], Store]:
        return functools.partial(
            LocalStore, "local", (tmp_path / "store").as_uri(), tmp_path / "store"
        )

    @pytest.fixture
    def store(self, store_opener: Callable[[], Store]) -> Store:
        return store_opener()


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
    assert store.capabilities == StoreCapabilities()


def test_generic_backend_claims_persistence_only_where_it_is_known(tmp_path: Path) -> None:
    kept = FsspecStore("remote", "sftp://host/backups", MemoryFileSystem(), "/backups")
    assert kept.capabilities == StoreCapabilities(persistent=True)
    kept.check_persistent()
    for url, why in [
        ("memory://claims", "every backup would vanish when the process exits"),
        ("http://host/backups", "http:// is read-only"),
        ("jupyter://host/x", "jupyter:// is not known to keep what is written"),
    ]:
        store = FsspecStore("lost", url, MemoryFileSystem(), "/x")
        assert not store.capabilities.persistent
        with pytest.raises(ConfigError, match=f"Store 'lost' .* cannot keep backups: .*{why}"):
            store.check_persistent()
    assert LocalStore("local", tmp_path.as_uri(), tmp_path).capabilities.persistent


def test_a_create_into_a_store_without_guarantees_says_what_can_go_wrong(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    generic = open_fsspec_store(StoreSpec("ram", f"memory://warned-{uuid.uuid4().hex}"))
    local = local_store("local", tmp_path / "store")
    engine = Engine(
        StoresConfig.load(tmp_path / "none.toml"), stores=[generic, local], kdf=FAST_KDF
    )
    with caplog.at_level(logging.WARNING, logger="strongroom"):
        for store in (generic, local):
            engine.create(
                "warned", passcode=PASSCODE, streams={"s": io.BytesIO(b"x")}, store=store.name
            )
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 2 and all(w.startswith("Store 'ram': ") for w in warnings)
    assert "truncated manifest" in warnings[0] and "both succeed" in warnings[1]


def test_generic_backend_yields_to_dedicated_ones_and_names_missing_packages() -> None:
    registry = build_registry(get_plugin_manager(autoload=False))
    assert "memory" not in registry.schemes, "fallback schemes are not listed as dedicated"
    with pytest.raises(UnknownBackendError, match="strongroom-azure"):
        registry.open(StoreSpec("blob", "az://container/prefix"))
    with pytest.raises(UnknownBackendError, match="install gcsfs"):
        registry.open(StoreSpec("cloud", "gcs://bucket/prefix"))


def test_local_puts_survive_deletes_pruning_their_directory_meanwhile(tmp_path: Path) -> None:
    """A delete removes the directories it leaves empty; a put racing it makes them again."""
    store = local_store("race", tmp_path / "store")
    errors: list[BaseException] = []

    def churn(worker: int) -> None:
        try:
            for round_ in range(200):
                key = f"pending/shared/{worker}-{round_}"
                store.put(key, b"")
                store.delete([key])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert list((tmp_path / "store").iterdir()) == []


def test_a_backend_whose_get_passes_keywords_on_keeps_the_memory_bound(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`get(self, key, **options)` takes the limit too: it was warned about, wrapped, and
    its reads lost the bound (whole objects read before their size was checked)."""
    asked: list[dict[str, Any]] = []

    class Wrapping(LocalStore):
        def get(self, key: str, **options: Any) -> bytes:
            asked.append(options)
            return super().get(key, **options)

    class Dropping(LocalStore):
        def get(self, key: str, **options: Any) -> bytes:
            return super().get(key)  # the limit dropped: the object is checked once read

    assert "takes no 'limit'" not in caplog.text
    for backend in (Wrapping, Dropping):
        store = backend("wrapping", tmp_path.as_uri(), tmp_path / backend.__name__)
        store.initialize()
        store.put("manifests/x", b"0123456789")
        with pytest.raises(IntegrityError, match="larger than the 9 bytes"):
            store.get("manifests/x", limit=9)
    assert asked == [{"limit": 9}]


def test_a_backend_whose_get_takes_no_limit_still_refuses_larger_objects(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A third-party backend written before `get(key, limit=...)` keeps working, bounded
    after the read, and the log says what it lacks."""

    class OldStore(LocalStore):
        def get(self, key: str) -> bytes:  # type: ignore[override]
            return super().get(key)

    assert "OldStore.get takes no 'limit'" in caplog.text
    store = OldStore("old", tmp_path.as_uri(), tmp_path)
    store.put("manifests/x", b"0123456789")
    assert store.get("manifests/x", limit=10) == b"0123456789"
    with pytest.raises(IntegrityError, match="larger than the 9 bytes"):
        store.get("manifests/x", limit=9)


def test_a_scan_result_of_a_backend_from_before_keys_still_reads() -> None:
    """`skipped` became a mapping by key; a backend that still gives a tuple of sentences
    broke every listing with an AttributeError."""
    result = ScanResult([], ("a link was skipped",))  # type: ignore[arg-type]
    assert dict(result.skipped) == {"(entry 0)": "a link was skipped"}
