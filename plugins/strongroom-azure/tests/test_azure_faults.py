"""Transient faults are retried; a dead server ends a backup cleanly with nothing committed."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from strongroom import Engine, StoreSpec, StoreUnavailableError, StrongroomError
from strongroom_azure.store import AzureStore, open_azure_store

if TYPE_CHECKING:
    from conftest import AzuriteServer, FaultProxy

PASSCODE = "correct horse battery"
CHUNK = 64 * 1024
#: Retries without waiting: these tests count faults, they do not time backoff.
NO_WAIT = {"initial_backoff": 0, "increment_base": 0}


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """About 40 chunks of CHUNK bytes."""
    root = tmp_path / "source"
    root.mkdir()
    (root / "data.bin").write_bytes(os.urandom(40 * CHUNK - 1000))
    return root


def restores_intact(engine: Engine, store: AzureStore, source: Path, target: Path) -> bool:
    restored = engine.restore("nightly", target, passcode=PASSCODE, store=store.name)
    return (restored / source.name / "data.bin").read_bytes() == (source / "data.bin").read_bytes()


def test_a_burst_of_503_server_busy_is_survived(
    make_store: Callable[..., AzureStore],
    make_engine: Callable[..., Engine],
    fault_proxy: FaultProxy,
    source: Path,
    tmp_path: Path,
) -> None:
    # Never more 503s than retries, so even one unlucky request that gets all of them succeeds.
    store = make_store(account_url=fault_proxy.endpoint, retry_total=10, **NO_WAIT)
    fault_proxy.busy_puts = 10
    engine = make_engine(store, chunk_size=CHUNK)
    engine.create("nightly", [source], passcode=PASSCODE, store=store.name)
    assert fault_proxy.counts["busy"] == 10
    assert restores_intact(engine, store, source, tmp_path / "restored")


def test_503s_beyond_the_retry_budget_fail_cleanly(
    make_store: Callable[..., AzureStore],
    make_engine: Callable[..., Engine],
    fault_proxy: FaultProxy,
    source: Path,
) -> None:
    store = make_store(name="offsite", account_url=fault_proxy.endpoint, retry_total=1, **NO_WAIT)
    fault_proxy.busy_puts = 1000
    engine = make_engine(store, chunk_size=CHUNK)
    busy = r"Store 'offsite'.* HTTP 503 ServerBusy \(retry_total=1\): The server is busy\."
    with pytest.raises(StoreUnavailableError, match=busy):
        engine.create("nightly", [source], passcode=PASSCODE, store="offsite")
    fault_proxy.busy_puts = 0
    assert engine.list("offsite") == []


def test_an_upload_cut_off_midway_leaves_no_blob(
    make_store: Callable[..., AzureStore], fault_proxy: FaultProxy
) -> None:
    store = make_store(account_url=fault_proxy.endpoint, retry_total=1, **NO_WAIT)
    fault_proxy.cut_puts = 10  # more than every retry (aiohttp's own included) can use
    with pytest.raises(StoreUnavailableError):
        store.put("manifests/cut", os.urandom(1_000_000))
    assert fault_proxy.counts["cut"] >= 2
    fault_proxy.cut_puts = 0
    assert not store.exists("manifests/cut")
    assert store.list("manifests/") == []
    store.put("manifests/cut", b"whole")  # nothing was there, so the create succeeds
    assert store.get("manifests/cut") == b"whole"


def test_a_create_whose_answer_was_lost_is_retried_into_success(
    make_store: Callable[..., AzureStore],
    make_engine: Callable[..., Engine],
    fault_proxy: FaultProxy,
    source: Path,
    tmp_path: Path,
) -> None:
    """A retry (aiohttp's or the SDK's) of the manifest's create meets its own first try."""
    store = make_store(account_url=fault_proxy.endpoint, retry_total=2, **NO_WAIT)
    fault_proxy.drop_answer_to = "/manifests/nightly"
    engine = make_engine(store, chunk_size=CHUNK)
    engine.create("nightly", [source], passcode=PASSCODE, store=store.name)
    assert fault_proxy.counts["dropped"] == 1
    assert [backup.name for backup in engine.list(store.name)] == ["nightly"]
    assert restores_intact(engine, store, source, tmp_path / "restored")


def test_a_large_blob_met_by_a_create_is_read_no_further_than_the_create_is_long(
    make_store: Callable[..., AzureStore], fault_proxy: FaultProxy
) -> None:
    """Attack: a blob of any size planted (or racing in) under a key a create will use;
    telling a retry's own blob from it must not read it whole."""
    store = make_store(account_url=fault_proxy.endpoint, **NO_WAIT)
    store.put("manifests/planted", os.urandom(1024 * 1024))  # aiohttp warns above 1 MiB
    with pytest.raises(FileExistsError):
        store.put("manifests/planted", b"ours")
    read = {path: size for path, size in fault_proxy.read_bytes.items() if "planted" in path}
    assert read and all(size <= len(b"ours") + 1 for size in read.values()), read


def test_a_download_cut_off_midway_says_the_connection_broke(
    make_store: Callable[..., AzureStore], fault_proxy: FaultProxy
) -> None:
    """A GET whose body stops short: the error names the store and the broken connection
    (it said "Azure answered HTTP None")."""
    store = make_store(account_url=fault_proxy.endpoint, **NO_WAIT)
    store.put("data/n/id/0000000000", os.urandom(64 * 1024))
    fault_proxy.cut_gets = 100
    with pytest.raises(StoreUnavailableError) as err:
        store.get("data/n/id/0000000000")
    assert fault_proxy.counts["cut"] >= 1
    assert "the connection broke before Azure's answer was read whole" in str(err.value)
    assert "HTTP None" not in str(err.value)


def test_a_listing_whose_server_repeats_its_marker_is_unavailable_not_endless(
    make_store: Callable[..., AzureStore], fault_proxy: FaultProxy
) -> None:
    """Attack on availability: a server (or a man in the middle of http://) that answers
    every page with the same next marker kept list, cleanup and restore paging forever."""
    store = make_store(account_url=fault_proxy.endpoint, **NO_WAIT)
    store.put("data/n/id/0000000000", b"x")
    fault_proxy.rewrite = lambda method, path, body: re.sub(
        rb"<NextMarker\s*/>|<NextMarker>.*?</NextMarker>", b"<NextMarker>again</NextMarker>", body
    )
    with pytest.raises(StoreUnavailableError, match="does not end"):
        store.list("data/")


def test_listed_blobs_outside_the_store_are_left_out(
    make_store: Callable[..., AzureStore], fault_proxy: FaultProxy
) -> None:
    """A blob the server lists outside the asked prefix is not the store's: never cut into
    a store key."""
    store = make_store(account_url=fault_proxy.endpoint, **NO_WAIT)
    for index in range(3):
        store.put(f"data/n/id/{index:010d}", b"x")
    fault_proxy.rewrite = lambda method, path, body: re.sub(
        rb"<Name>[^<]*data/n/id/0000000001</Name>", b"<Name>elsewhere/data/n/id/1</Name>", body
    )
    assert [obj.key for obj in store.list("data/")] == [
        "data/n/id/0000000000",
        "data/n/id/0000000002",
    ]


def test_a_server_killed_mid_backup_commits_nothing_and_a_retry_succeeds(
    azurite_server: AzuriteServer,
    make_engine: Callable[..., Engine],
    source: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    account = azurite_server.account
    azurite_server.start()
    for _ in range(5):  # until the container is on disk: it survives a graceful restart
        with account.client() as client:
            if client.get_container_client("killed").exists():
                break
            client.create_container("killed")
        azurite_server.stop()
        azurite_server.start()
    else:
        pytest.fail("Azurite lost its container at every graceful restart")
    options = account.options(retry_total=1, **NO_WAIT)
    store = open_azure_store(StoreSpec("offsite", "az://killed/backups", options))
    engine = make_engine(store, chunk_size=CHUNK)
    put = store.put
    puts = 0
    lock = threading.Lock()

    def put_and_kill_on_the_tenth(key: str, data: bytes, **options: Any) -> None:
        nonlocal puts
        with lock:
            puts += 1
            if puts == 10:
                azurite_server.kill()
        put(key, data, **options)

    monkeypatch.setattr(store, "put", put_and_kill_on_the_tenth)
    with pytest.raises(StrongroomError) as caught:
        engine.create("nightly", [source], passcode=PASSCODE, store="offsite")
    assert puts >= 10, f"the backup failed before the server was killed: {caught.value}"
    assert isinstance(caught.value, StoreUnavailableError)
    assert "Store 'offsite'" in str(caught.value)

    azurite_server.start()  # the same data directory
    assert engine.list("offsite") == []
    assert not store.exists("manifests/nightly")
    engine.create("nightly", [source], passcode=PASSCODE, store="offsite")
    assert [backup.name for backup in engine.list("offsite")] == ["nightly"]
    assert restores_intact(engine, store, source, tmp_path / "restored")
