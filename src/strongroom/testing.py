"""A conformance suite that every store backend runs, ours and third parties'.

Subclass `StoreConformance` in a test module and provide a `store` fixture that
returns a fresh, empty `Store` (each test gets its own)::

    from strongroom.testing import StoreConformance

    class TestMyStore(StoreConformance):
        @pytest.fixture
        def store(self, my_server):
            return MyStore("conformance", "my://bucket/prefix", ...)

The suite checks the object contract the engine relies on, that the capabilities a
store claims are real (a store that claims put-if-absent must survive a race), and a
full backup, restore and verify through the engine.
"""

from __future__ import annotations

import io
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from .config import StoresConfig
from .crypto import KdfParams
from .engine import Engine
from .format import to_epoch_ms
from .plugins import build_registry, get_plugin_manager
from .store import Store

__all__ = ["StoreConformance"]

#: Cheap key derivation: the suite tests stores, not Argon2id.
FAST_KDF = KdfParams(memory_cost_kib=8 * 1024, iterations=1, lanes=1)
PASSCODE = "conformance passcode"


class StoreConformance:
    """The contract of `strongroom.Store`. Override the `store` fixture."""

    #: How many backups the cleanup test makes; object stores raise it to show scale.
    cleanup_backups = 20

    @pytest.fixture
    def store(self) -> Store:
        raise NotImplementedError("Override the 'store' fixture to return a fresh, empty store.")

    def test_put_then_get_returns_the_bytes(self, store: Store) -> None:
        payload = os.urandom(100_000)
        store.put("data/a/0000000000", payload)
        assert store.get("data/a/0000000000") == payload

    def test_put_takes_any_bytes_like(self, store: Store) -> None:
        store.put("k/view", memoryview(b"xview")[1:])
        store.put("k/array", bytearray(b"array"))
        store.put("k/empty", b"")
        assert (store.get("k/view"), store.get("k/array"), store.get("k/empty")) == (
            b"view",
            b"array",
            b"",
        )

    def test_get_of_a_missing_key_is_file_not_found(self, store: Store) -> None:
        with pytest.raises(FileNotFoundError):
            store.get("manifests/nothing-here")
        assert not store.exists("manifests/nothing-here")

    def test_create_never_overwrites(self, store: Store) -> None:
        store.put("manifests/once", b"first")
        with pytest.raises(FileExistsError):
            store.put("manifests/once", b"second")
        assert store.get("manifests/once") == b"first"

    def test_overwrite_replaces(self, store: Store) -> None:
        store.put("manifests/twice", b"first")
        store.put("manifests/twice", b"second", overwrite=True)
        assert store.get("manifests/twice") == b"second"

    def test_list_finds_nested_keys_with_sizes_and_times(self, store: Store) -> None:
        keys = ["data/n/id/0000000000", "data/n/id/0000000001", "data/n2.x/id/0000000000"]
        for size, key in enumerate(keys, start=1):
            store.put(key, b"x" * size)
        store.put("manifests/n", b"{}")
        listed = store.list("data/")
        assert [obj.key for obj in listed] == sorted(keys)
        assert [obj.size for obj in listed] == [1, 2, 3]
        for obj in listed:
            assert obj.modified is None or (
                isinstance(obj.modified, datetime) and obj.modified.tzinfo is not None
            )
        assert [obj.key for obj in store.list("data/n/")] == keys[:2]
        assert store.list("nowhere/") == []

    def test_delete_is_idempotent_and_prefix_delete_is_complete(self, store: Store) -> None:
        for index in range(3):
            store.put(f"data/gone/id/{index:010d}", b"x")
        store.put("data/kept/id/0000000000", b"y")
        store.delete(["data/gone/id/0000000000", "data/gone/id/never-existed"])
        store.delete(["data/gone/id/0000000000"])
        store.delete_prefix("data/gone/")
        assert store.list("data/gone/") == []
        assert [obj.key for obj in store.list("data/")] == ["data/kept/id/0000000000"]

    def test_racing_creates_have_exactly_one_winner(self, store: Store) -> None:
        if not store.capabilities.put_if_absent:
            pytest.skip(f"{type(store).__name__} does not claim put-if-absent")
        winners: list[bytes] = []
        losers: list[BaseException] = []
        start = threading.Barrier(8)

        def contend(payload: bytes) -> None:
            start.wait()
            try:
                store.put("manifests/raced", payload)
                winners.append(payload)
            except FileExistsError as exc:
                losers.append(exc)

        threads = [threading.Thread(target=contend, args=(os.urandom(64),)) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(winners) == 1 and len(losers) == 7
        assert store.get("manifests/raced") == winners[0]

    def test_the_backend_declares_its_endpoint_and_secret_options(self, store: Store) -> None:
        """The admin API lets a caller set only the options a backend declares harmless, and
        the core refuses plain secrets by the same declaration: `registry.add(scheme,
        factory, options=BackendOptions(settings=..., endpoints=..., secrets=...))`."""
        registry = build_registry(get_plugin_manager(autoload=True))
        assert registry.options_of(store.url) is not None, (
            f"no installed plugin declares the options of {store.url!r} stores"
        )

    def test_validate_probes_everything_and_cleans_up(self, store: Store) -> None:
        report = store.validate()
        assert report.ok, report.errors
        assert set(report.checks) == {"write", "read", "list", "delete"}
        assert report.capabilities == store.capabilities
        assert store.list("probes/") == []

    def test_backup_restore_verify_through_the_engine(self, store: Store, tmp_path: Path) -> None:
        source = tmp_path / "payload"
        (source / "sub").mkdir(parents=True)
        files = {
            "random.bin": os.urandom(300_000),
            "text.txt": b"line of text\n" * 20_000,
            "sub/empty": b"",
        }
        for name, data in files.items():
            (source / name).write_bytes(data)
        isolated = StoresConfig.load(tmp_path / "no-config.toml")  # never the user's stores
        engine = Engine(isolated, stores=[store], kdf=FAST_KDF, chunk_size=64 * 1024)
        info = engine.create("conformance", [source], passcode=PASSCODE, store=store.name)
        assert [b.name for b in engine.list(store.name)] == ["conformance"]
        engine.verify("conformance", passcode=PASSCODE, store=store.name)
        target = engine.restore(
            "conformance", tmp_path / "restored", passcode=PASSCODE, store=store.name
        )
        for name, data in files.items():
            assert (target / "payload" / name).read_bytes() == data
        assert info.chunk_count > 1
        engine.delete("conformance", store.name)
        assert engine.list(store.name) == []
        assert store.list("data/") == []

    def test_cleanup_deletes_exactly_the_expired_half_even_twice_at_once(
        self, store: Store, tmp_path: Path
    ) -> None:
        start = datetime(2026, 1, 1, tzinfo=UTC)
        now = [start]
        isolated = StoresConfig.load(tmp_path / "no-config.toml")
        engine = Engine(isolated, stores=[store], kdf=FAST_KDF, clock=lambda: now[0])
        names = [f"b{number:04d}" for number in range(self.cleanup_backups)]
        for number, name in enumerate(names):
            engine.create(
                name,
                passcode=PASSCODE,
                streams={"data": io.BytesIO(b"%d" % number)},
                store=store.name,
                retention_date=to_epoch_ms(start) + 1 if number % 2 else None,
            )
        now[0] = start + timedelta(days=1)

        with ThreadPoolExecutor(2) as pool:  # two cleanups at once are harmless
            reports = list(pool.map(lambda _: engine.cleanup([store.name]), range(2)))

        deleted = {e.name for r in reports for e in r.entries if e.action == "deleted"}
        assert sorted(deleted) == names[1::2]
        assert all(r.errors == [] and r.failed == [] for r in reports)
        assert [b.name for b in engine.list(store.name)] == names[::2]
        assert {obj.key.split("/")[1] for obj in store.list("data/")} == set(names[::2])
        again = engine.cleanup([store.name])
        assert again.entries == [] and again.kept == len(names[::2]), "nothing more to do"
