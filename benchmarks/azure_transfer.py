"""Backup and restore throughput of an az:// store against plain adlfs transfers, on Azurite.

One run starts its own Azurite, writes a random file, and then, round-robin for each run
index: uploads it with adlfs `put_file` and downloads it with `get_file` (the plain
transfer), and backs it up and restores it with strongroom into an `az://` store on the
same server. Everything is checked (untimed) against the source's SHA-256. It prints a
Markdown table of median MB/s [min-max] and strongroom's ratio to the plain transfer.

    .venv/bin/python benchmarks/azure_transfer.py --size-mib 256 --runs 3
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import psutil
from adlfs import AzureBlobFileSystem  # type: ignore[import-untyped]
from azure.storage.blob import BlobServiceClient

from strongroom import Engine, Store, StoreSpec
from strongroom_azure.store import open_azure_store

MIB = 1024 * 1024
MB = 1_000_000
CHUNK = 4 * MIB
ACCOUNT = "devstoreaccount1"
#: Azurite's published development key.
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
CONTAINER = "bench"
PASSCODE = "benchmark passcode"


@contextmanager
def azurite(location: Path) -> Iterator[tuple[str, psutil.Process]]:
    """Run azurite-blob on a free port; yield its blob endpoint and its process."""
    binary = Path(sys.prefix) / "node" / "node_modules" / ".bin" / "azurite-blob"
    found = str(binary) if binary.exists() else shutil.which("azurite-blob")
    if not found:
        sys.exit("azurite-blob not found: run 'make test' (it installs Azurite into .venv/node).")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [found, "--blobHost", "127.0.0.1", "--blobPort", str(port)]
    command += ["--location", str(location), "--skipApiVersionCheck", "--loose"]
    command += ["--silent", "--disableTelemetry"]
    with (location / "azurite.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"azurite-blob did not start; see {location / 'azurite.log'}")
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/{ACCOUNT}", psutil.Process(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(4 * MIB):
            sha.update(block)
    return sha.hexdigest()


@dataclass(frozen=True)
class Sample:
    seconds: float
    client_cpu: float  # this process, all threads
    server_cpu: float  # Azurite


def measure(action: Callable[[], object], server: psutil.Process) -> Sample:
    def server_cpu() -> float:
        times = server.cpu_times()
        return float(times.user + times.system)

    wall, cpu, served = time.perf_counter(), time.process_time(), server_cpu()
    action()
    return Sample(time.perf_counter() - wall, time.process_time() - cpu, server_cpu() - served)


def store_upload(store: Store, payload: Path, prefix: str) -> None:
    """The file as 4 MiB objects through the az:// store, `concurrency` at a time."""
    with payload.open("rb") as source, ThreadPoolExecutor(store.concurrency) as pool:
        pieces = enumerate(iter(partial(source.read, CHUNK), b""))
        list(pool.map(lambda piece: store.put(f"{prefix}/{piece[0]:010d}", piece[1]), pieces))


def store_download(store: Store, prefix: str, copy: Path) -> None:
    keys = [obj.key for obj in store.list(f"{prefix}/")]
    with copy.open("wb") as target, ThreadPoolExecutor(store.concurrency) as pool:
        for data in pool.map(store.get, keys):
            target.write(data)


def run(size_mib: int, runs: int, workdir: Path, concurrency: int | None) -> str:
    source = workdir / "source"
    source.mkdir()
    payload = source / "payload.bin"
    with payload.open("wb") as handle:
        for _ in range(size_mib):
            handle.write(os.urandom(MIB))
    expected = digest(payload)
    samples: dict[str, list[Sample]] = {}

    (workdir / "azurite").mkdir()
    with azurite(workdir / "azurite") as (endpoint, server):
        connection_string = (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
            f"BlobEndpoint={endpoint};"
        )
        with BlobServiceClient.from_connection_string(connection_string) as client:
            client.create_container(CONTAINER)
        plain = AzureBlobFileSystem(connection_string=connection_string, skip_instance_cache=True)
        options: dict[str, str | int] = {"account_name": ACCOUNT, "account_key": KEY}
        options["account_url"] = endpoint
        if concurrency is not None:
            options["concurrency"] = concurrency
        store = open_azure_store(StoreSpec("bench", f"az://{CONTAINER}/strongroom", options))
        engine = Engine(stores=[store])

        for index in range(runs):
            copy, target = workdir / "copy.bin", workdir / "restore"
            blob, prefix, name = f"{CONTAINER}/plain/{index}", f"objects/{index}", f"bench-{index}"
            steps: list[tuple[str, Callable[[], object], Path | None]] = [
                ("put_file", partial(plain.put_file, str(payload), blob), None),
                ("get_file", partial(plain.get_file, blob, str(copy)), copy),
                ("store puts", partial(store_upload, store, payload, prefix), None),
                ("store gets", partial(store_download, store, prefix, copy), copy),
                (
                    "backup",
                    partial(engine.create, name, [payload], passcode=PASSCODE, store="bench"),
                    None,
                ),
                (
                    "restore",
                    partial(engine.restore, name, target, passcode=PASSCODE, store="bench"),
                    target / payload.name,
                ),
            ]
            for step, action, result in steps:
                samples.setdefault(step, []).append(measure(action, server))
                if result is not None and digest(result) != expected:
                    sys.exit(f"{step} did not give back the source's bytes")
            copy.unlink()
            shutil.rmtree(target)
            plain.rm_file(blob)
            store.delete_prefix(f"{prefix}/")
            engine.delete(name, "bench")
            print(f"run {index + 1}/{runs} done", file=sys.stderr)

    return report(samples, size_mib, runs, store.concurrency)


def report(samples: dict[str, list[Sample]], size_mib: int, runs: int, concurrency: int) -> str:
    def rate(name: str) -> float:
        return statistics.median(size_mib * MIB / MB / sample.seconds for sample in samples[name])

    def row(label: str, name: str, plain: str) -> str:
        rates = sorted(size_mib * MIB / MB / sample.seconds for sample in samples[name])
        client = statistics.median(sample.client_cpu for sample in samples[name])
        server = statistics.median(sample.server_cpu for sample in samples[name])
        return (
            f"| {label} | {rate(name):.0f} [{rates[0]:.0f}-{rates[-1]:.0f}] | "
            f"{rate(name) / rate(plain):.2f}x | {client:.2f} + {server:.2f} |"
        )

    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return "\n".join(
        [
            f"Azurite on 127.0.0.1, {size_mib} MiB of random data, {runs} runs, {os.cpu_count()} "
            f"CPUs (load average after the runs {load}), Python {platform.python_version()}.",
            "",
            "| transfer | MB/s, median [min-max] | vs plain adlfs | CPU s, client + Azurite |",
            "| --- | --- | --- | --- |",
            row("upload: plain adlfs `put_file`", "put_file", "put_file"),
            row(
                f"upload: az:// store, 4 MiB puts, {concurrency} at once", "store puts", "put_file"
            ),
            row("upload: strongroom backup", "backup", "put_file"),
            row("download: plain adlfs `get_file`", "get_file", "get_file"),
            row(
                f"download: az:// store, 4 MiB gets, {concurrency} at once",
                "store gets",
                "get_file",
            ),
            row("download: strongroom restore", "restore", "get_file"),
            "",
            "The store rows are the plugin alone (one Put Blob or Get Blob per object); backup and "
            "restore add the engine's work: tar, a zstd attempt per chunk, AES-256-GCM, and "
            "Argon2id key derivation.",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256, help="size of the random file")
    parser.add_argument("--runs", type=int, default=3, help="runs per transfer (median shown)")
    parser.add_argument(
        "--concurrency", type=int, help="the store's concurrency option (default: its default)"
    )
    parser.add_argument("--workdir", type=Path, help="scratch directory (default: a temporary one)")
    args = parser.parse_args()
    if args.runs < 1 or args.size_mib < 1:
        parser.error("--runs and --size-mib must be at least 1")
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix="azure-transfer-", dir=args.workdir))
    else:
        workdir = Path(tempfile.mkdtemp(prefix="azure-transfer-"))
    os.environ["STRONGROOM_HOME"] = str(workdir / "home")  # read no one's configuration
    os.environ.pop("STRONGROOM_CONFIG", None)
    try:
        print(run(args.size_mib, args.runs, workdir, args.concurrency))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
