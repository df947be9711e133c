"""Retention cleanup of many backups in a local S3 server: requests and seconds.

The target (issue "Retention at scale"): with 10,000 backups in a store, finding the expired
ones costs listing requests (about one per 1,000 objects), not one request per backup, and
deletes are batched where the backend allows (S3 DeleteObjects). Request counts show that
whatever the machine; seconds on a local moto server only hint at the cost of round trips.
Starts moto's standalone S3 server on a free port and, per run, in a fresh bucket prefix:

- setup (not measured): `--backups` real engine backups of one tiny named stream each,
  through the strongroom-s3 store, `--workers` at a time. Even-numbered backups get a
  retentionDate one day ahead, the others ten years ahead or none (alternately). The KDF is
  Argon2id at its cheapest (8 MiB, 1 iteration, 1 lane): it is setup cost, and cleanup needs
  no passcode.
- a dry run of `Engine.cleanup` as of two days ahead, then the real cleanup: wall seconds,
  and every HTTP request the store's botocore client sends (a `before-send` handler, so
  retries count too), by S3 operation, with the seconds spent in calls of each operation,
  the keys the listings returned and the keys named in DeleteObjects.
- checks (not counted): the report names exactly the expired half, `Engine.list` shows
  exactly the rest, and the bucket holds no object of a deleted backup; else it fails loudly.

Prints two Markdown tables of medians over `--runs`; each run sets up afresh, since cleanup
deletes. Setup takes minutes for 10,000 backups, so one run is the default. moto lists a
prefix by scanning every key in the bucket, so there a listing's time grows with the store.

    .venv/bin/python benchmarks/s3_cleanup.py [--backups 10000] [--runs 1] [--workers 16]
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import io
import math
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from s3_transfer import start_moto

from strongroom import CleanupReport, Engine, KdfParams, StoresConfig, StoreSpec
from strongroom.format import to_epoch_ms, utc_now
from strongroom_s3.store import S3Store, open_s3_store

BUCKET = "strongroom-bench"
PASSCODE = "benchmark passcode"
#: Argon2id at its cheapest: setup cost only; cleanup needs no passcode.
SETUP_KDF = KdfParams(memory_cost_kib=8 * 1024, iterations=1, lanes=1)
DAY = 24 * 3600 * 1000
LIST = "ListObjectsV2"
#: The table's order of S3 operations; only those sent are shown, others after these.
OPERATIONS = (LIST, "GetObject", "HeadObject", "PutObject", "DeleteObjects", "DeleteObject")
#: Where a call's start time waits in botocore's per-call context.
STARTED = "strongroom_bench_started"
PHASES = ("dry_run", "cleanup")


@dataclass
class Measured:
    """One phase: wall seconds, HTTP requests and seconds spent in calls, by S3 operation."""

    seconds: float = 0.0
    requests: Counter[str] = field(default_factory=Counter)
    call_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    listed: int = 0
    deleted: int = 0

    @property
    def total(self) -> int:
        return self.requests.total()


class RequestCounter:
    """Watches the store's botocore client: every HTTP request it sends (retries too) by
    operation, how long each call took, the keys its listings return and its deletes name."""

    def __init__(self, store: S3Store) -> None:
        self._current = Measured()
        self._lock = threading.Lock()
        events = store.fs.s3.meta.events  # connects the client if it is not yet
        events.register("before-send.s3", self._sent)
        events.register("before-call.s3", self._calling)
        events.register("after-call.s3", self._called)
        events.register("after-call-error.s3", self._called)
        events.register("before-parameter-build.s3.DeleteObjects", self._deleting)

    def _sent(self, event_name: str, **_: Any) -> None:
        with self._lock:
            self._current.requests[operation_of(event_name)] += 1

    def _calling(self, context: dict[str, Any], **_: Any) -> None:
        context[STARTED] = time.perf_counter()

    def _called(self, event_name: str, context: dict[str, Any], **kwargs: Any) -> None:
        elapsed = time.perf_counter() - context.pop(STARTED, time.perf_counter())
        with self._lock:
            self._current.call_seconds[operation_of(event_name)] += elapsed
            if operation_of(event_name) == LIST and "parsed" in kwargs:
                self._current.listed += len(kwargs["parsed"].get("Contents", []))

    def _deleting(self, params: dict[str, Any], **_: Any) -> None:
        with self._lock:
            self._current.deleted += len(params["Delete"]["Objects"])

    @contextmanager
    def counting(self) -> Iterator[Measured]:
        """Measure the block; the yielded record is complete when the block ends."""
        with self._lock:
            measured = self._current = Measured()
        start = time.perf_counter()
        yield measured
        measured.seconds = time.perf_counter() - start
        with self._lock:
            self._current = Measured()  # what happens after the block is not counted


def operation_of(event_name: str) -> str:
    """`ListObjectsV2` from `before-send.s3.ListObjectsV2`."""
    return event_name.rsplit(".", 1)[-1]


@dataclass
class RunResult:
    setup: Measured
    dry_run: Measured
    cleanup: Measured
    objects: int
    deleted: int


def one_run(endpoint: str, config: StoresConfig, backups: int, workers: int, run: int) -> RunResult:
    """Set up a fresh prefix, measure a dry run and a cleanup of it, check, and empty it."""
    store = open_s3_store(
        StoreSpec(f"run{run}", f"s3://{BUCKET}/run{run}", {"endpoint_url": endpoint})
    )
    engine = Engine(config, stores=[store], kdf=SETUP_KDF)
    counter = RequestCounter(store)
    names = [f"b{number:05d}" for number in range(backups)]
    start = utc_now()
    soon, later = to_epoch_ms(start + dt.timedelta(days=1)), to_epoch_ms(start) + 10 * 365 * DAY
    retention: dict[str, int | None] = {
        name: soon if number % 2 == 0 else (later if number % 4 == 1 else None)
        for number, name in enumerate(names)
    }
    expired = sorted(name for name, when in retention.items() if when == soon)

    def create(name: str) -> None:
        engine.create(
            name,
            passcode=PASSCODE,
            streams={"note.txt": io.BytesIO(f"backup {name}\n".encode())},
            store=store.name,
            retention_date=retention[name],
        )

    say(f"run {run + 1}: creating {backups:,} backups")
    with counter.counting() as setup, ThreadPoolExecutor(workers) as pool:
        list(pool.map(create, names))
    objects = len(store.list(""))
    as_of = start + dt.timedelta(days=2)
    say(f"run {run + 1}: set up in {setup.seconds:.0f} s; dry run")
    with counter.counting() as dry_run:
        dry = engine.cleanup([store.name], as_of=as_of, dry_run=True)
    check_report(dry, expired, backups, "would delete")
    say(f"run {run + 1}: dry run took {dry_run.seconds:.1f} s; cleanup")
    with counter.counting() as cleanup:
        report = engine.cleanup([store.name], as_of=as_of)
    check_report(report, expired, backups, "deleted")
    say(f"run {run + 1}: cleanup took {cleanup.seconds:.1f} s; checking the store")
    check_store(engine, store, sorted(set(names) - set(expired)))
    store.delete_prefix("")  # the next run starts from an empty prefix
    return RunResult(setup, dry_run, cleanup, objects, len(expired))


def say(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def check_report(report: CleanupReport, expired: list[str], backups: int, action: str) -> None:
    acted = sorted(entry.name for entry in report.entries if entry.action == action)
    others = [entry for entry in report.entries if entry.action != action]
    if acted != expired or others or report.errors or report.kept != backups - len(expired):
        raise SystemExit(
            f"cleanup ({action}) went wrong: {len(acted)} {action} (expected {len(expired)}), "
            f"{report.kept} kept, other entries {others[:3]}, errors {report.errors[:3]}"
        )


def check_store(engine: Engine, store: S3Store, kept: list[str]) -> None:
    """Exactly the kept backups are listed, and nothing of a deleted one is left."""
    listed = sorted(info.name for info in engine.list(store.name))
    if listed != kept:
        missing, extra = sorted(set(kept) - set(listed)), sorted(set(listed) - set(kept))
        raise SystemExit(f"after cleanup: missing {missing[:5]}, still listed {extra[:5]}")
    keys, keep = [obj.key for obj in store.list("")], set(kept)
    leftover = [key for key in keys if key.split("/")[1] not in keep]
    by_prefix = Counter(key.split("/")[0] for key in keys)
    if leftover or by_prefix != {"manifests": len(kept), "data": len(kept), "retention": len(kept)}:
        raise SystemExit(
            f"after cleanup, objects by prefix {dict(by_prefix)}; "
            f"{len(leftover)} belong to deleted backups: {leftover[:5]}"
        )


def report(backups: int, workers: int, runs: Sequence[RunResult]) -> str:
    """Two Markdown tables of medians: requests by operation, then what they add up to."""

    def cell(value: Callable[[Measured], float], phase: str, form: str) -> str:
        found = statistics.median(value(getattr(run, phase)) for run in runs)
        return "-" if math.isnan(found) else format(found, form)

    seen = {op for run in runs for phase in PHASES for op in getattr(run, phase).requests}
    operations = [op for op in OPERATIONS if op in seen] + sorted(seen - set(OPERATIONS))
    deleted = statistics.median(run.deleted for run in runs)
    objects = statistics.median(run.objects for run in runs)
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}" for name in ("moto", "s3fs", "botocore")
    )
    lines = [
        f"{backups:,} backups ({objects:,.0f} objects), {deleted:,.0f} of them expired; median "
        f"of {len(runs)} run(s); moto's S3 server on 127.0.0.1, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, {versions}. Setup ({workers} creates at a time, "
        f"not measured): {cell(lambda m: m.seconds, 'setup', '.0f')} s, "
        f"{cell(lambda m: m.total, 'setup', ',.0f')} requests.",
        "",
        "| S3 operation | dry run: requests | dry run: s in calls "
        "| cleanup: requests | cleanup: s in calls |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    rows: list[tuple[str, Callable[[Measured], float], Callable[[Measured], float]]] = [
        (op, partial(requests_of, op), partial(seconds_of, op)) for op in operations
    ]
    rows.append(("all (and wall seconds)", lambda m: m.total, lambda m: m.seconds))
    for label, count, seconds in rows:
        phases = [f"{cell(count, p, ',.0f')} | {cell(seconds, p, '.1f')}" for p in PHASES]
        lines.append(f"| {label} | {' | '.join(phases)} |")
    derived: list[tuple[str, Callable[[Measured], float], str]] = [
        ("requests per expired backup", lambda m: m.total / deleted, ".2f"),
        ("keys returned by listings", lambda m: m.listed, ",.0f"),
        (
            f"{LIST} per 1,000 keys listed",
            lambda m: ratio(1000 * m.requests[LIST], m.listed),
            ".2f",
        ),
        (
            f"{LIST} per 1,000 objects in the store",
            lambda m: 1000 * m.requests[LIST] / objects,
            ".2f",
        ),
        ("keys named in DeleteObjects", lambda m: m.deleted, ",.0f"),
        ("keys per DeleteObjects", lambda m: ratio(m.deleted, m.requests["DeleteObjects"]), ".2f"),
    ]
    lines += ["", "| | dry run | cleanup |", "| --- | ---: | ---: |"]
    for label, value, form in derived:
        lines.append(f"| {label} | {' | '.join(cell(value, p, form) for p in PHASES)} |")
    return "\n".join(lines)


def requests_of(operation: str, measured: Measured) -> float:
    return measured.requests[operation]


def seconds_of(operation: str, measured: Measured) -> float:
    return measured.call_seconds.get(operation, 0.0)


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backups", type=int, default=10_000, help="backups per run (even)")
    parser.add_argument("--runs", type=int, default=1, help="runs; the table shows medians")
    parser.add_argument("--workers", type=int, default=16, help="creates at a time in setup")
    args = parser.parse_args(argv)
    if args.backups < 2 or args.backups % 2:
        parser.error("--backups must be an even number, at least 2")
    with tempfile.TemporaryDirectory(prefix="s3-cleanup-bench-") as workdir:
        os.environ.update(
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_SESSION_TOKEN="testing",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_CONFIG_FILE=os.devnull,
            AWS_SHARED_CREDENTIALS_FILE=os.devnull,
            AWS_EC2_METADATA_DISABLED="true",
            STRONGROOM_HOME=str(Path(workdir) / "home"),
        )
        server, endpoint = start_moto()
        try:
            isolated = StoresConfig.load(Path(workdir) / "no-config.toml")
            bucket_maker = open_s3_store(
                StoreSpec("bucket", f"s3://{BUCKET}", {"endpoint_url": endpoint})
            )
            bucket_maker.fs.call_s3("create_bucket", Bucket=BUCKET)
            runs = [
                one_run(endpoint, isolated, args.backups, args.workers, run)
                for run in range(args.runs)
            ]
            print(report(args.backups, args.workers, runs))
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
