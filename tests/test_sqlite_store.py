"""A backend that is no fsspec filesystem passes the public conformance suite, and plugs in."""

from __future__ import annotations

import functools
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from strongroom import Engine, Store, StoreSpec
from strongroom.plugins import build_registry, get_plugin_manager
from strongroom.testing import StoreConformance
from tests import sqlite_store
from tests.conftest import FAST_KDF, PASSCODE
from tests.sqlite_store import SQLiteStore


class TestSQLiteStore(StoreConformance):
    #: The class under test; tests/test_testing.py puts broken ones here.
    backend: type[SQLiteStore] = SQLiteStore

    @pytest.fixture
    def store_opener(self, tmp_path: Path) -> Callable[[], Store]:
        database = tmp_path / "store" / "objects.db"
        database.parent.mkdir()
        return functools.partial(self.backend, "sqlite", database.as_uri(), database)

    @pytest.fixture
    def store(self, store_opener: Callable[[], Store]) -> Store:
        return store_opener()

    @pytest.fixture
    def unreachable_store(self, tmp_path: Path) -> Store:
        (tmp_path / "gone").mkdir()
        store = self.backend("sqlite", "sqlite:///gone/x.db", tmp_path / "gone" / "x.db")
        shutil.rmtree(tmp_path / "gone")  # its directory removed: the file cannot be opened
        return store

    @pytest.fixture
    def storage_exceptions(self) -> list[Exception]:
        return [sqlite3.OperationalError("disk I/O error"), sqlite3.DatabaseError("malformed")]


def test_the_backend_is_under_150_lines_and_needs_no_fsspec() -> None:
    source = Path(sqlite_store.__file__).read_text()
    assert len(source.splitlines()) < 150
    assert "import fsspec" not in source and "from fsspec" not in source
    with pytest.raises(NotImplementedError, match="must implement put, get, exists, list"):
        _ = SQLiteStore("sqlite", "sqlite:///x", Path(":memory:")).fs


def test_it_plugs_in_through_the_hook(tmp_path: Path) -> None:
    manager = get_plugin_manager(autoload=False)
    manager.register(sqlite_store)
    url = f"sqlite://{tmp_path / 'objects.db'}"
    store = build_registry(manager).open(StoreSpec("db", url))
    store.put("manifests/x", b"payload")
    assert SQLiteStore("again", url, tmp_path / "objects.db").get("manifests/x") == b"payload"


def test_a_stray_object_beside_a_manifest_leaves_its_backup_listed(
    tmp_path: Path, tree: Path
) -> None:
    """A key-value store can hold `manifests/b` and `manifests/b/x` at once: the stray
    made the listed backup read as unreadable too (exit 8, and a cleanup error each run)."""
    database = tmp_path / "objects.db"
    store = SQLiteStore("db", database.as_uri(), database)
    engine = Engine(home=tmp_path / "home", stores=[store], kdf=FAST_KDF)
    engine.create("b", [tree], passcode=PASSCODE, store="db")
    store.put("manifests/b/stray", b"")
    listing = engine.listing("db")
    assert [info.name for info in listing.backups] == ["b"]
    assert listing.unreadable == {}
    assert engine.cleanup(["db"]).errors == []
