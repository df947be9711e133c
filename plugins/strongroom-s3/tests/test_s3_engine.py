"""Backups through the engine into S3: size, races, a dying server, a cut connection, throttling."""

from __future__ import annotations

import filecmp
import itertools
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from strongroom import BackupExistsError, Engine, StoreUnavailableError
from strongroom_s3.store import S3Store

MIB = 2**20
PASSCODE = "s3 test passcode"
SMALL_CHUNK = 256 * 1024
#: What a sealed chunk of incompressible data weighs: tag byte + ciphertext + GCM tag.
SEALED_RANDOM_CHUNK = 1 + SMALL_CHUNK + 16

OpenS3 = Callable[..., S3Store]
MakeEngine = Callable[..., Engine]


def random_file(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        for start in range(0, size, 8 * MIB):
            handle.write(os.urandom(min(8 * MIB, size - start)))
    return path


def same_tree(left: Path, right: Path) -> bool:
    files = sorted(p.relative_to(left) for p in left.rglob("*") if p.is_file())
    if files != sorted(p.relative_to(right) for p in right.rglob("*") if p.is_file()):
        return False
    return all(filecmp.cmp(left / name, right / name, shallow=False) for name in files)


def kill_after(size: int, act: Callable[[], None]) -> Callable[[int, int | None], None]:
    """A progress callback that calls `act` once, when `size` bytes have been written."""
    fired = threading.Event()

    def progress(done: int, total: int | None) -> None:
        if done >= size and not fired.is_set():
            fired.set()
            act()

    return progress


def test_a_tree_of_200_mb_round_trips(
    bucket: str, open_s3: OpenS3, make_engine: MakeEngine, tmp_path: Path
) -> None:
    source = tmp_path / "tree"
    random_file(source / "disk.img", 120 * MIB)
    random_file(source / "media" / "video.bin", 40 * MIB + 12345)
    for index in range(100):
        random_file(source / "small" / f"{index:03d}.bin", 100_000 + index)
    (source / "logs").mkdir()
    (source / "logs" / "app.log").write_bytes(b"GET /index.html 200 0.003s\n" * 1_200_000)
    store = open_s3(bucket)
    engine = make_engine(store, chunk_size=4 * MIB)

    info = engine.create("big", [source], passcode=PASSCODE, store="s3test")

    assert info.source_size > 200 * 10**6
    assert len(store.list("data/big/")) == info.chunk_count
    assert info.stored_size < info.source_size, "the log compressed"
    engine.verify("big", passcode=PASSCODE, store="s3test")
    target = engine.restore("big", tmp_path / "restored", passcode=PASSCODE, store="s3test")
    assert same_tree(source, target / "tree")


def test_racing_creates_of_one_name_have_one_winner_and_the_losers_leave_nothing(
    bucket: str,
    open_s3: OpenS3,
    make_engine: MakeEngine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    racers = 4
    commit = threading.Barrier(racers, timeout=60)
    stores = [open_s3(bucket) for _ in range(racers)]
    for store in stores:  # every racer reaches its commit before any of them commits

        def put_at_barrier(key: str, data: Any, _put: Any = store.put, **options: Any) -> None:
            if key.startswith("manifests/"):
                commit.wait()
            _put(key, data, **options)

        monkeypatch.setattr(store, "put", put_at_barrier)
    sources = [random_file(tmp_path / f"racer{i}" / "data.bin", MIB + i) for i in range(racers)]
    outcomes: list[BaseException | None] = [None] * racers

    def race(index: int) -> None:
        try:
            make_engine(stores[index]).create(
                "raced", [sources[index]], passcode=PASSCODE, store="s3test"
            )
        except BaseException as exc:
            outcomes[index] = exc

    threads = [threading.Thread(target=race, args=(i,)) for i in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    winners = [i for i, outcome in enumerate(outcomes) if outcome is None]
    assert len(winners) == 1, outcomes
    losers = [o for o in outcomes if o is not None]
    assert all(isinstance(o, BackupExistsError) for o in losers), losers
    manifest = json.loads(stores[0].get("manifests/raced"))
    backup_ids = {obj.key.split("/")[2] for obj in stores[0].list("data/raced/")}
    assert backup_ids == {manifest["backup"]["backupId"]}, "the losers' chunks were removed"
    engine = make_engine(stores[0])
    target = engine.restore("raced", tmp_path / "restored", passcode=PASSCODE, store="s3test")
    assert (target / "data.bin").read_bytes() == sources[winners[0]].read_bytes()


def test_a_server_killed_mid_backup_fails_cleanly_and_a_retry_succeeds(
    moto_server: Callable[..., Any],
    new_bucket: Callable[..., str],
    open_s3: OpenS3,
    make_engine: MakeEngine,
    tmp_path: Path,
) -> None:
    server = moto_server()
    bucket = new_bucket(server.url)
    store = open_s3(bucket, endpoint=server.url, max_attempts=1)
    engine = make_engine(store)
    source = random_file(tmp_path / "src" / "data.bin", 8 * MIB)

    with pytest.raises(StoreUnavailableError, match=r"Store 's3test'.*Check that .* reachable"):
        engine.create(
            "nightly",
            [source],
            passcode=PASSCODE,
            store="s3test",
            progress=kill_after(MIB, server.kill),
        )

    restarted = moto_server(port=server.port)
    new_bucket(restarted.url, name=bucket)
    assert engine.list("s3test") == []
    engine.create("nightly", [source], passcode=PASSCODE, store="s3test")
    target = engine.restore("nightly", tmp_path / "restored", passcode=PASSCODE, store="s3test")
    assert (target / "data.bin").read_bytes() == source.read_bytes()


def test_a_connection_cut_mid_backup_commits_nothing_and_leaves_no_partial_object(
    bucket: str,
    open_s3: OpenS3,
    make_engine: MakeEngine,
    fault_proxy: Callable[[str], Any],
    s3_endpoint: str,
    s3_admin: Callable[..., Any],
    tmp_path: Path,
) -> None:
    proxy = fault_proxy(s3_endpoint)
    cut = threading.Event()
    proxy.rule = lambda method, path, attempt: "cut" if cut.is_set() else None
    engine = make_engine(open_s3(bucket, endpoint=proxy.url, max_attempts=1))
    source = random_file(tmp_path / "src" / "data.bin", 8 * MIB)

    with pytest.raises(StoreUnavailableError, match=r"Store 's3test'"):
        engine.create(
            "nightly",
            [source],
            passcode=PASSCODE,
            store="s3test",
            progress=kill_after(MIB, cut.set),
        )

    direct = open_s3(bucket)  # the server itself kept everything that reached it
    assert not direct.exists("manifests/nightly")
    assert make_engine(direct).list("s3test") == []
    leftovers = direct.list("data/nightly/")
    assert all(obj.size == SEALED_RANDOM_CHUNK for obj in leftovers), "every object is whole"
    assert s3_admin().call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads", []) == []
    cut.clear()
    engine.create("nightly", [source], passcode=PASSCODE, store="s3test")
    target = engine.restore("nightly", tmp_path / "restored", passcode=PASSCODE, store="s3test")
    assert (target / "data.bin").read_bytes() == source.read_bytes()


@pytest.mark.parametrize(
    ("retry_mode", "every"),
    [("standard", 2), ("adaptive", 0)],  # adaptive slows right down while throttled: a burst only
)
def test_bursts_of_503_slowdown_are_survived(
    retry_mode: str,
    every: int,
    bucket: str,
    open_s3: OpenS3,
    make_engine: MakeEngine,
    fault_proxy: Callable[[str], Any],
    s3_endpoint: str,
    tmp_path: Path,
) -> None:
    proxy = fault_proxy(s3_endpoint)
    arrivals, requests = itertools.count(), itertools.count()

    def throttle(method: str, path: str, attempt: int) -> str | None:
        """The first 2 requests, then the first attempt at every `every`-th request."""
        if next(arrivals) < 2 or (every and attempt == 1 and next(requests) % every == 0):
            return "slowdown"
        return None

    proxy.rule = throttle
    engine = make_engine(open_s3(bucket, endpoint=proxy.url, retry_mode=retry_mode))
    source = tmp_path / "src"
    random_file(source / "data.bin", 2 * MIB)
    (source / "notes.txt").write_bytes(b"throttled but not beaten\n" * 40_000)

    engine.create("throttled", [source], passcode=PASSCODE, store="s3test")
    target = engine.restore("throttled", tmp_path / "restored", passcode=PASSCODE, store="s3test")

    assert same_tree(source, target / "src")
    refused = [method for action, method, _ in proxy.faults if action == "slowdown"]
    assert refused[:2] == ["HEAD"] * 2, "the first request was refused twice running"
    if every:
        assert refused.count("PUT") >= 4 and refused.count("GET") >= 4


def test_lost_answers_to_creates_are_resent_and_still_commit(
    bucket: str,
    open_s3: OpenS3,
    make_engine: MakeEngine,
    fault_proxy: Callable[[str], Any],
    s3_endpoint: str,
    tmp_path: Path,
) -> None:
    """S3 stored the object but its answer never came; the resent PUT meets our own bytes."""
    proxy = fault_proxy(s3_endpoint)
    lost = ("/0000000001", "/manifests/nightly")  # a chunk and the manifest, the commit
    proxy.rule = lambda method, path, attempt: (
        "drop" if method == "PUT" and path.endswith(lost) and attempt == 1 else None
    )
    engine = make_engine(open_s3(bucket, endpoint=proxy.url))
    source = random_file(tmp_path / "src" / "data.bin", MIB)

    engine.create("nightly", [source], passcode=PASSCODE, store="s3test")

    resent = [p for m, p, _ in proxy.requests if m == "PUT" and p.endswith(lost)]
    assert len(resent) == 4 and len(set(resent)) == 2
    target = engine.restore("nightly", tmp_path / "restored", passcode=PASSCODE, store="s3test")
    assert (target / "data.bin").read_bytes() == source.read_bytes()
