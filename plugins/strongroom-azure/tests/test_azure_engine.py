"""Whole backups through the engine: a few hundred MB, and two creates racing for one name."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from strongroom import BackupExistsError, BackupInfo, Engine
from strongroom_azure.store import AzureStore

PASSCODE = "correct horse battery"
MB = 1_000_000

#: azure-storage-blob hands aiohttp (>= 3.13) each single-put body as bytes, and aiohttp warns
#: about any body over 1 MiB (Azure/azure-sdk-for-python#39845); at 4 MiB it is one copy.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Sending a large body directly with raw bytes:ResourceWarning"
)


def digests(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def test_a_200_mb_tree_round_trips(
    store: AzureStore, make_engine: Callable[..., Engine], tmp_path: Path
) -> None:
    source = tmp_path / "srv"
    (source / "media").mkdir(parents=True)
    for index in range(10):
        (source / "media" / f"blob{index}.bin").write_bytes(os.urandom(17 * MB))
    line = b"2026-01-01T00:00:00Z INFO request served in 3 ms\n"
    (source / "app.log").write_bytes(line * (30 * MB // len(line)))
    engine = make_engine(store)

    info = engine.create("nightly", [source], passcode=PASSCODE, store=store.name)

    assert info.chunk_count == len(store.list("data/")) > 40
    assert info.stored_size < info.source_size - 25 * MB  # the log compressed
    engine.verify("nightly", passcode=PASSCODE, store=store.name)
    target = engine.restore("nightly", tmp_path / "restored", passcode=PASSCODE, store=store.name)
    assert digests(target / "srv") == digests(source)


def test_racing_creates_of_one_name_have_one_winner(
    store: AzureStore,
    make_engine: Callable[..., Engine],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sources = []
    for index in range(2):
        source = tmp_path / f"source{index}"
        source.mkdir()
        (source / "data.bin").write_bytes(os.urandom(600_000))
        sources.append(source)
    both_written = threading.Barrier(2)
    put = store.put

    def put_after_both_wrote_their_data(key: str, data: bytes, **options: Any) -> None:
        if key.startswith("manifests/"):
            both_written.wait(timeout=60)  # both passed the name check: a real race
        put(key, data, **options)

    monkeypatch.setattr(store, "put", put_after_both_wrote_their_data)
    results: dict[int, BackupInfo | BaseException] = {}

    def create(index: int) -> None:
        engine = make_engine(store, chunk_size=64 * 1024)
        try:
            results[index] = engine.create(
                "raced", [sources[index]], passcode=PASSCODE, store=store.name
            )
        except BaseException as exc:
            results[index] = exc

    threads = [threading.Thread(target=create, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    winners = [i for i, result in results.items() if isinstance(result, BackupInfo)]
    losers = [i for i, result in results.items() if isinstance(result, BackupExistsError)]
    assert len(winners) == len(losers) == 1, results
    backup = json.loads(store.get("manifests/raced"))["backup"]
    data = store.list("data/raced/")
    assert len(data) == backup["chunkCount"]  # the loser's data is gone
    assert all(obj.key.startswith(f"data/raced/{backup['backupId']}/") for obj in data)
    engine = make_engine(store)
    target = engine.restore("raced", tmp_path / "restored", passcode=PASSCODE, store=store.name)
    winner = sources[winners[0]]
    assert (target / winner.name / "data.bin").read_bytes() == (winner / "data.bin").read_bytes()
