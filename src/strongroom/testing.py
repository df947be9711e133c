"""A conformance suite that every store backend runs, ours and third parties'.

Subclass `StoreConformance` in a test module and provide a `store` fixture that
returns a fresh, empty `Store` (each test gets its own)::

    from strongroom.testing import StoreConformance

    class TestMyStore(StoreConformance):
        @pytest.fixture
        def store(self, my_server):
            return MyStore("conformance", "my://bucket/prefix", ...)

The suite checks the object contract the engine relies on (see `strongroom.Store`),
that the capabilities a store claims are real (a store that claims put-if-absent must
survive a race from threads, instances and processes), that failures become
StoreErrors, and a full backup, restore and verify through the engine. Tests that need
more of the backend than a store are skipped until it provides the fixture:
`store_opener` (or `other_store`), `unreachable_store` and `storage_exceptions`.
Every assertion carries its own message, so a failure reads without assert rewriting.
"""

from __future__ import annotations

import errno
import io
import multiprocessing
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest

from .config import StoresConfig
from .crypto import KdfParams
from .engine import Engine
from .errors import IntegrityError, StoreError, StoreUnavailableError
from .format import STORE_MARKER_KEY, to_epoch_ms
from .plugins import build_registry, get_plugin_manager
from .store import Store
from .storemarker import mark, require_marked

__all__ = ["StoreConformance"]

#: Cheap key derivation: the suite tests stores, not Argon2id.
FAST_KDF = KdfParams(memory_cost_kib=8 * 1024, iterations=1, lanes=1)
PASSCODE = "conformance passcode"
#: How far a fresh object's time may be from this machine's clock: clocks drift, but
#: hours apart is a time zone taken for UTC.
CLOCK_TOLERANCE = timedelta(minutes=30)
#: Keys raced for by each put-if-absent test; one race can miss a window that several find.
RACES = 10


class StoreConformance:
    """The contract of `strongroom.Store`. Override the `store` fixture, and the optional
    fixtures below where the backend can give them."""

    #: How many backups the cleanup test makes; object stores raise it to show scale.
    cleanup_backups = 20

    @pytest.fixture
    def store(self) -> Store:
        raise NotImplementedError("Override the 'store' fixture to return a fresh, empty store.")

    @pytest.fixture
    def store_opener(self, store: Store) -> Callable[[], Store]:
        """A picklable callable (say, `functools.partial` of the backend's class) that opens
        another instance on the store's storage, in this process or another one. Storage
        that lives inside this process overrides `other_store` instead."""
        pytest.skip(f"{type(self).__name__} gives no 'store_opener' fixture")

    @pytest.fixture
    def other_store(self, store_opener: Callable[[], Store]) -> Store:
        """A second instance on the same storage, as another machine would open it."""
        return store_opener()

    @pytest.fixture
    def unreachable_store(self) -> Store:
        """A store whose storage fails or cannot be reached (a missing bucket, a wrong
        endpoint, a removed database): every operation must raise a StoreError."""
        pytest.skip(f"{type(self).__name__} gives no 'unreachable_store' fixture")

    @pytest.fixture
    def storage_exceptions(self) -> list[Exception]:
        """Failures of the backend's storage library, as it raises them; a backend with its
        own library extends the list with that library's exceptions."""
        return [
            OSError(errno.EIO, "Input/output error"),
            ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
            TimeoutError("timed out"),
        ]

    @pytest.fixture(autouse=True)
    def _store_starts_empty(self, store: Store) -> None:
        store.initialize()  # as adding it does (before it puts the store marker)
        found = [obj.key for obj in store.list("")]
        assert found == [], f"the 'store' fixture must return an empty store; it holds {found}"

    def test_put_then_get_returns_the_bytes(self, store: Store) -> None:
        payload = os.urandom(100_000)
        store.put("data/a/0000000000", payload)
        got = store.get("data/a/0000000000")
        assert got == payload, f"get returned {len(got)} other bytes than the 100000 put"

    def test_an_unsynced_put_is_an_object_once_synced(self, store: Store) -> None:
        """A backup's chunks: `put_unsynced` creates (never overwrites), `sync` makes the
        objects durable, and they read back like any other."""
        payload = bytearray(os.urandom(50_000))
        store.put_unsynced("data/u/0000000000", payload, retain_until=None)
        store.put_unsynced("data/u/0000000001", memoryview(b"xtail")[1:], retain_until=None)
        store.sync(["data/u/0000000000", "data/u/0000000001"])
        assert store.get("data/u/0000000000") == payload
        assert store.get("data/u/0000000001") == b"tail"
        with pytest.raises(FileExistsError):
            store.put_unsynced("data/u/0000000001", b"other", retain_until=None)
        assert store.get("data/u/0000000001") == b"tail"

    def test_put_takes_any_bytes_like(self, store: Store) -> None:
        store.put("k/view", memoryview(b"xview")[1:])
        store.put("k/array", bytearray(b"array"))
        store.put("k/empty", b"")
        got = (store.get("k/view"), store.get("k/array"), store.get("k/empty"))
        assert got == (b"view", b"array", b""), f"memoryview, bytearray, empty bytes: {got}"

    def test_get_with_a_limit_refuses_a_larger_object(self, store: Store) -> None:
        """`get(key, limit=n)` returns an object of at most n bytes and refuses a larger one
        (reading no more than n + 1 of it: an object planted in a store must not fill the
        memory before anything can authenticate it)."""
        store.put("manifests/sized", b"0123456789")
        store.put("manifests/nothing", b"")
        got = (store.get("manifests/sized", limit=10), store.get("manifests/nothing", limit=10))
        assert got == (b"0123456789", b""), f"objects within the limit: {got}"
        with pytest.raises(IntegrityError):
            store.get("manifests/sized", limit=9)
        with pytest.raises(FileNotFoundError):
            store.get("manifests/absent", limit=9)

    def test_prefetch_is_only_a_hint(self, store: Store) -> None:
        """`prefetch` of stored and missing keys neither fails nor changes anything."""
        store.put("manifests/soon", b"soon")
        store.prefetch(["manifests/soon", "manifests/never", "data/x/0000000000"])
        assert store.get("manifests/soon") == b"soon"
        assert not store.exists("manifests/never")

    def test_get_of_a_missing_key_is_file_not_found(self, store: Store) -> None:
        with pytest.raises(FileNotFoundError):
            store.get("manifests/nothing-here")

    def test_exists_is_true_exactly_for_stored_keys(self, store: Store) -> None:
        store.put("manifests/once", b"x")
        answers = {
            key: store.exists(key)
            for key in ("manifests/once", "manifests/onc", "manifests/once-more", "manifests")
        }
        expected = {key: key == "manifests/once" for key in answers}
        assert answers == expected, f"exists must be true of the stored key alone: {answers}"
        store.delete(["manifests/once"])
        assert not store.exists("manifests/once"), "exists is true after the delete"

    def test_create_never_overwrites(self, store: Store) -> None:
        store.put("manifests/once", b"first")
        with pytest.raises(FileExistsError):
            store.put("manifests/once", b"second")
        got = store.get("manifests/once")
        assert got == b"first", f"a refused create changed the object to {got!r}"

    def test_overwrite_replaces(self, store: Store) -> None:
        store.put("manifests/twice", b"first")
        store.put("manifests/twice", b"second", overwrite=True)
        got = store.get("manifests/twice")
        assert got == b"second", f"overwrite=True left {got!r}"

    def test_the_store_marker_is_an_object_at_the_root_that_marks_the_store(
        self, store: Store
    ) -> None:
        """The key of the store marker has no '/': the root of the store holds it. A store
        without it (and without backups) is refused; adding the store puts it."""
        with pytest.raises(StoreUnavailableError, match="holds no backups and no store marker"):
            require_marked(store)
        mark(store)
        assert store.exists(STORE_MARKER_KEY), f"{STORE_MARKER_KEY!r} was put but is not there"
        require_marked(store)
        assert store.list("manifests/") == [], "the marker is listed under a prefix"

    def test_list_is_recursive_sorted_and_sized(self, store: Store) -> None:
        """Sorted by the whole key, not directory by directory ('n-1/' before 'n/')."""
        keys = ["data/n-1/id/0", "data/n.x/id/0", "data/n/id/0000000000", "data/n/id/0000000001"]
        for size, key in reversed(list(enumerate(keys, start=1))):
            store.put(key, b"x" * size)
        store.put("manifests/n", b"{}")
        listed = [(obj.key, obj.size) for obj in store.list("data/")]
        expected = [(key, size) for size, key in enumerate(keys, start=1)]
        assert listed == expected, (
            f"list('data/') must give every key below it, sorted, with sizes: {expected}; "
            f"it gave {listed}"
        )
        below = [obj.key for obj in store.list("data/n/")]
        assert below == keys[2:], f"list('data/n/') gave {below}"
        assert store.list("nowhere/") == [], "a prefix with nothing below it lists nothing"

    def test_listed_times_are_the_stores_own_and_timezone_aware(self, store: Store) -> None:
        store.put("pending/n/id", b"")
        (listed,) = store.list("pending/")
        modified, now = listed.modified, store.now()
        for what, moment in (("ObjectInfo.modified", modified), ("Store.now()", now)):
            assert isinstance(moment, datetime) and moment.utcoffset() is not None, (
                f"{what} must be a timezone-aware datetime (without it leftovers of "
                f"interrupted creates are never swept); got {moment!r}"
            )
            drift = abs(moment - datetime.now(UTC))
            assert drift < CLOCK_TOLERANCE, f"{what} is {drift} off this machine's clock"
        leftovers = [obj.key for obj in store.list("probes/")]
        assert leftovers == [], f"now() left its probe behind: {leftovers}"

    def test_scan_gives_the_listing_and_skips_nothing_here(self, store: Store) -> None:
        store.put("data/s/id/0000000000", b"x")
        found = store.scan("data/")
        assert found.objects == store.list("data/"), "scan(prefix).objects must be list(prefix)"
        assert not found.skipped, f"a store holding only objects skipped {found.skipped}"

    def test_delete_is_idempotent_and_prefix_delete_is_complete(self, store: Store) -> None:
        for index in range(3):
            store.put(f"data/gone/id/{index:010d}", b"x")
        store.put("data/gone-too/id/0000000000", b"y")
        store.delete(["data/gone/id/0000000000", "data/gone/id/never-existed"])
        store.delete(["data/gone/id/0000000000"])
        store.delete_prefix("data/gone/")
        left = [obj.key for obj in store.list("data/")]
        assert left == ["data/gone-too/id/0000000000"], f"after delete_prefix: {left}"

    def test_one_instance_serves_many_threads(self, store: Store) -> None:
        def work(worker: int) -> None:
            for round_ in range(10):
                key, payload = f"data/t{worker}/id/{round_:010d}", os.urandom(1000)
                store.put(key, payload)
                if store.get(key) != payload or not store.exists(key):
                    raise AssertionError(f"thread {worker} did not read back {key}")
                if [obj.key for obj in store.list(f"data/t{worker}/")] != [key]:
                    raise AssertionError(f"thread {worker} did not list {key} alone")
                store.delete([key])

        with ThreadPoolExecutor(8) as pool:
            errors = [f.exception() for f in [pool.submit(work, n) for n in range(8)]]
        failed = [f"{type(e).__name__}: {e}" for e in errors if e is not None]
        assert failed == [], f"one store used from 8 threads at once failed: {failed}"

    def test_readers_never_see_a_partial_object(self, store: Store) -> None:
        if not store.capabilities.atomic_put:
            pytest.skip(f"{type(store).__name__} does not claim atomic put")
        payloads = [b"a" * 200_000, b"b" * 300_000]
        store.put("manifests/busy", payloads[0])
        writing = threading.Event()
        writing.set()

        def write() -> None:
            try:
                for round_ in range(1, 41):
                    store.put("manifests/busy", payloads[round_ % 2], overwrite=True)
            finally:
                writing.clear()

        writer = threading.Thread(target=write)
        writer.start()
        partial = []
        while writing.is_set():
            if (got := store.get("manifests/busy")) not in payloads:
                partial.append(len(got))
        writer.join()
        assert partial == [], f"a reader saw partially written objects of sizes {partial}"

    def test_racing_creates_have_exactly_one_winner(self, store: Store) -> None:
        _race([store] * 8)

    def test_racing_creates_from_two_instances(self, store: Store, other_store: Store) -> None:
        _race([store, other_store] * 4)

    def test_racing_creates_from_two_processes(
        self, store: Store, store_opener: Callable[[], Store]
    ) -> None:
        _claims_put_if_absent(store)
        outcomes = _race_in_processes(store_opener, 2)
        failed = [outcome for outcome in outcomes if isinstance(outcome, str)]
        assert failed == [], f"a racing process failed: {failed}"
        _check_race(store, [outcome for outcome in outcomes if isinstance(outcome, list)])

    def test_a_persistent_store_keeps_objects_for_another_process(
        self, store: Store, store_opener: Callable[[], Store]
    ) -> None:
        """What `persistent` promises: an object outlives this instance, and another
        process opening the storage anew reads it and can write beside it."""
        if not store.capabilities.persistent:
            pytest.skip(f"{type(store).__name__} does not claim persistent")
        payload = os.urandom(1000)
        store.put("manifests/kept", payload)
        outcome = _in_another_process(_read_and_write_in_child, store_opener, "manifests/kept")
        assert outcome == payload, f"another process read {outcome!r}, not the object written"
        assert store.get("manifests/kept-too") == payload[::-1], "its write was not kept"

    def test_storage_exceptions_become_store_errors(
        self, store: Store, storage_exceptions: list[Exception]
    ) -> None:
        for exc in storage_exceptions:
            with pytest.raises(StoreError) as caught, store.translate_errors("manifests/x"):
                raise exc
            assert caught.value.__cause__ is exc, f"{exc!r} must be the cause of {caught.value!r}"
            assert store.name in str(caught.value), f"{caught.value} does not name the store"
        for contract in (FileNotFoundError("manifests/x"), FileExistsError("manifests/x")):
            with pytest.raises(type(contract)) as passed, store.translate_errors("manifests/x"):
                raise contract
            assert passed.value is contract, f"{contract!r} must pass translate_errors unchanged"

    def test_an_unreachable_store_raises_store_errors(self, unreachable_store: Store) -> None:
        """Never a traceback of the storage's library, nor an empty listing or a False
        `exists` that would pass for an empty store."""
        store = unreachable_store
        calls: dict[str, Callable[[], object]] = {
            "put": lambda: store.put("manifests/x", b"x"),
            "get": lambda: store.get("manifests/x"),
            "exists": lambda: store.exists("manifests/x"),
            "list": lambda: store.list("manifests/"),
            "delete": lambda: store.delete(["manifests/x"]),
        }
        wrong = []
        for name, call in calls.items():
            try:
                result = call()
            except StoreUnavailableError:
                continue
            except Exception as exc:
                wrong.append(f"{name} raised {type(exc).__module__}.{type(exc).__name__}: {exc}")
            else:
                wrong.append(f"{name} returned {result!r}")
        assert wrong == [], f"an unreachable store must raise StoreUnavailableError: {wrong}"

    def test_the_backend_declares_its_endpoint_and_secret_options(self, store: Store) -> None:
        """The admin API lets a caller set only the options a backend declares harmless, and
        the core refuses plain secrets by the same declaration: `registry.add(scheme,
        factory, options=BackendOptions(settings=..., endpoints=..., secrets=...))`."""
        manager = get_plugin_manager(autoload=True)
        module = sys.modules[type(store).__module__]  # the plugin, if it is not installed yet
        if hasattr(module, "strongroom_register_backends") and not manager.is_registered(module):
            manager.register(module)
        registry = build_registry(manager)
        assert registry.options_of(store.url) is not None, (
            f"neither an installed plugin nor {module.__name__} declares the options of "
            f"{store.url!r} stores"
        )

    def test_validate_probes_everything_and_cleans_up(self, store: Store) -> None:
        report = store.validate()
        assert report.ok, f"validate failed: {report.errors}"
        assert set(report.checks) == {"write", "read", "list", "delete"}, f"{report.checks}"
        assert report.capabilities == store.capabilities, "validate reports other capabilities"
        leftovers = [obj.key for obj in store.list("probes/")]
        assert leftovers == [], f"validate left its probe behind: {leftovers}"

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
        listed = [b.name for b in engine.list(store.name)]
        assert listed == ["conformance"], f"after one create the engine lists {listed}"
        engine.verify("conformance", passcode=PASSCODE, store=store.name)
        target = engine.restore(
            "conformance", tmp_path / "restored", passcode=PASSCODE, store=store.name
        )
        for name, data in files.items():
            assert (target / "payload" / name).read_bytes() == data, f"{name} came back changed"
        assert info.chunk_count > 1, "the backup should span several chunks"
        engine.delete("conformance", store.name)
        assert engine.list(store.name) == [], "the deleted backup is still listed"
        left = [obj.key for obj in store.list("")]
        assert left == [], f"the deleted backup left {left}"

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
        assert sorted(deleted) == names[1::2], f"two cleanups deleted {sorted(deleted)}"
        problems = [(r.errors, r.failed) for r in reports if r.errors or r.failed]
        assert problems == [], f"the cleanups reported {problems}"
        kept = [b.name for b in engine.list(store.name)]
        assert kept == names[::2], f"after cleanup the engine lists {kept}"
        data = {obj.key.split("/")[1] for obj in store.list("data/")}
        assert data == set(names[::2]), f"data left for {sorted(data - set(names[::2]))}"
        again = engine.cleanup([store.name])
        assert again.entries == [] and again.kept == len(names[::2]), "nothing more to do"


def _claims_put_if_absent(store: Store) -> None:
    if not store.capabilities.put_if_absent:
        pytest.skip(f"{type(store).__name__} does not claim put-if-absent")


def _in_another_process(work: Callable[..., bytes | str], *args: object) -> bytes | str:
    """`work(*args)` in a process of its own; the pool is gone before the caller asserts."""
    context = multiprocessing.get_context("spawn")  # threads are running: never fork
    with context.Pool(1) as pool:
        return pool.apply(work, args)


def _read_and_write_in_child(opener: Callable[[], Store], key: str) -> bytes | str:
    """In a process of its own: read `key`, and write its bytes reversed beside it."""
    try:
        store = opener()
        data = store.get(key)
        store.put(f"{key}-too", data[::-1])
        return data
    except Exception as exc:  # the parent's assertion shows why
        return f"{type(exc).__name__}: {exc}"


def _race_keys() -> list[str]:
    return [f"manifests/raced-{number}" for number in range(RACES)]


def _race(contenders: list[Store]) -> None:
    """Every contender creates each race key at the same moment, from threads of its own."""
    _claims_put_if_absent(contenders[0])
    start = threading.Barrier(len(contenders))

    def contend(contender: Store) -> list[bytes | None]:
        return [_create(contender, key, lambda: start.wait(60)) for key in _race_keys()]

    with ThreadPoolExecutor(len(contenders)) as pool:
        _check_race(contenders[0], list(pool.map(contend, contenders)))


def _create(store: Store, key: str, start: Callable[[], object]) -> bytes | None:
    """Put a payload of this contender's own once `start` returns: the payload if the
    put won, None if it met FileExistsError."""
    payload = os.urandom(64)
    start()
    try:
        store.put(key, payload)
    except FileExistsError:
        return None
    return payload


def _check_race(store: Store, outcomes: list[list[bytes | None]]) -> None:
    """Exactly one contender won each key, and the key holds what that one put."""
    for index, key in enumerate(_race_keys()):
        winners = [outcome[index] for outcome in outcomes if outcome[index] is not None]
        assert len(winners) == 1, (
            f"{len(winners)} of {len(outcomes)} racing creates of {key!r} succeeded; "
            "with put-if-absent exactly one must"
        )
        assert store.get(key) == winners[0], f"{key!r} does not hold its one winner's bytes"


def _race_in_processes(
    opener: Callable[[], Store], processes: int
) -> list[list[bytes | None] | str]:
    """Race from processes of their own; what each reports. The barrier and the queue are
    gone before the caller asserts (a failure that kept them alive upsets the resource
    tracker at exit)."""
    context = multiprocessing.get_context("spawn")  # threads are running: never fork
    start, results = context.Barrier(processes), context.Queue()
    children = [
        context.Process(target=_create_in_child, args=(opener, start, results))
        for _ in range(processes)
    ]
    for child in children:
        child.start()
    outcomes = [results.get(timeout=300) for _ in children]
    for child in children:
        child.join()
    results.close()
    results.join_thread()
    return outcomes


def _create_in_child(
    opener: Callable[[], Store], start: Barrier, results: Queue[list[bytes | None] | str]
) -> None:
    """A process of its own racing for the keys; its outcomes, or why it failed, go to
    `results` (and the barrier breaks, so the other process does not wait forever)."""
    try:
        store = opener()
        results.put([_create(store, key, lambda: start.wait(60)) for key in _race_keys()])
    except BaseException as exc:
        start.abort()
        results.put(f"{type(exc).__name__}: {exc}")
