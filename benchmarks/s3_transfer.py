"""Backup and restore throughput into a local S3 server, beside plain s3fs transfers of it.

Starts moto's standalone S3 server on a free port, writes one random file, and per run times
plain s3fs uploads (`put_file`) and downloads (`get_file`) of it, then a strongroom backup of
it (`Engine.create` with the default KDF, compression and chunk size, through the
strongroom-s3 store) and its restore (`Engine.restore`). The server, the bytes and the disk
are the same for all, so the ratios show what strongroom costs on top of moving the bytes;
the target is at least 0.9x. Prints a Markdown table of the medians.

Three plain baselines: s3fs's defaults (a multipart upload, and a ranged parallel download,
in 50 MiB parts, which moto serves slowly); one request for the whole file (a single PutObject
or GetObject, moto's fastest path); and the file as 4 MiB objects moved `concurrency` at a
time, strongroom's own request shape without its archive, compression and encryption.

    .venv/bin/python benchmarks/s3_transfer.py [--size-mib 256] [--runs 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import s3fs

from strongroom import Engine, KdfParams, Passcode, StoreSpec
from strongroom.crypto import derive_kek, new_salt
from strongroom_s3.store import S3Store, open_s3_store

MIB = 2**20
PIECE = 4 * MIB
BASELINES = ("s3fs defaults", "s3fs one request", "s3fs 4 MiB objects")
BUCKET = "strongroom-bench"
PASSCODE = "benchmark passcode"


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and server.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return server, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    server.kill()
    raise SystemExit("moto's S3 server did not start")


def timed(action: Callable[..., Any], *args: Any, **kwargs: Any) -> float:
    start = time.perf_counter()
    action(*args, **kwargs)
    return time.perf_counter() - start


def one_run(
    plain: Any, store: S3Store, engine: Engine, source: Path, workdir: Path, run: int
) -> dict[str, float]:
    """Seconds for each transfer; every download and restore is checked (untimed)."""
    size = source.stat().st_size
    remote, downloaded = f"{BUCKET}/plain/{run}", workdir / f"download-{run}"
    pieces = f"{remote}-pieces"
    seconds = {
        "s3fs defaults upload": timed(plain.put_file, str(source), remote),
        "s3fs defaults download": timed(plain.get_file, remote, str(downloaded)),
    }
    check(source, downloaded)
    seconds["s3fs one request upload"] = timed(plain.put_file, str(source), remote, chunksize=size)
    seconds["s3fs one request download"] = timed(
        plain.get_file, remote, str(downloaded), max_concurrency=1
    )
    check(source, downloaded)
    seconds["s3fs 4 MiB objects upload"] = timed(
        put_pieces, plain, source, pieces, store.concurrency
    )
    seconds["s3fs 4 MiB objects download"] = timed(
        get_pieces, plain, pieces, downloaded, store.concurrency
    )
    check(source, downloaded)
    plain.rm([remote, pieces], recursive=True)
    downloaded.unlink()
    name, restored = f"run{run}", workdir / f"restore-{run}"
    seconds["strongroom upload"] = timed(
        engine.create, name, [source], passcode=PASSCODE, store=store.name
    )
    seconds["strongroom download"] = timed(
        engine.restore, name, restored, passcode=PASSCODE, store=store.name
    )
    check(source, restored / source.name)
    engine.delete(name, store.name)
    shutil.rmtree(restored)
    return seconds


def put_pieces(plain: Any, source: Path, remote: str, workers: int) -> None:
    """The file as 4 MiB objects, `workers` PutObjects at a time: strongroom's request shape."""
    with open(source, "rb") as handle, ThreadPoolExecutor(workers) as pool:
        pieces = enumerate(iter(lambda: handle.read(PIECE), b""))
        list(pool.map(lambda piece: plain.pipe_file(f"{remote}/{piece[0]:06d}", piece[1]), pieces))


def get_pieces(plain: Any, remote: str, target: Path, workers: int) -> None:
    names = sorted(plain.ls(remote))
    with open(target, "wb") as out, ThreadPoolExecutor(workers) as pool:
        for data in pool.map(lambda name: plain.cat_file(name, max_concurrency=1), names):
            out.write(data)


def check(source: Path, copy: Path) -> None:
    if not same_bytes(source, copy):
        raise SystemExit(f"{copy} differs from {source}")


def same_bytes(left: Path, right: Path) -> bool:
    with open(left, "rb") as a, open(right, "rb") as b:
        while True:
            block_a, block_b = a.read(8 * MIB), b.read(8 * MIB)
            if block_a != block_b:
                return False
            if not block_a:
                return True


def report(size_mib: int, runs: Sequence[dict[str, float]], kdf_seconds: float) -> str:
    def speed(tool: str, direction: str) -> float:
        return size_mib / statistics.median(run[f"{tool} {direction}"] for run in runs)

    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}" for name in ("s3fs", "botocore", "moto")
    )
    lines = [
        f"{size_mib} MiB of random bytes, median of {len(runs)} runs, moto's S3 server on "
        f"127.0.0.1, {os.cpu_count()} CPUs, Python {platform.python_version()}, {versions}. "
        f"strongroom's times include one Argon2id derivation per backup and per restore "
        f"({kdf_seconds:.2f} s each here).",
        "",
        "| MiB/s | "
        + " | ".join(BASELINES)
        + " | strongroom | "
        + " | ".join(f"vs {b}" for b in BASELINES)
        + " |",
        "| --- |" + " ---: |" * (2 * len(BASELINES) + 1),
    ]
    for label, direction in (("upload / backup", "upload"), ("download / restore", "download")):
        ours = speed("strongroom", direction)
        theirs = [speed(baseline, direction) for baseline in BASELINES]
        lines.append(
            f"| {label} | "
            + " | ".join(f"{speed:.0f}" for speed in [*theirs, ours])
            + " | "
            + " | ".join(f"{ours / speed:.2f}x" for speed in theirs)
            + " |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256, help="size of the random file")
    parser.add_argument("--runs", type=int, default=3, help="runs; the table shows medians")
    parser.add_argument("--workdir", type=Path, help="where the file and restores go (temp dir)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="s3-bench-", dir=args.workdir))
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        STRONGROOM_HOME=str(workdir / "home"),
    )
    server, endpoint = start_moto()
    try:
        source = workdir / "random.bin"
        with open(source, "wb") as handle:
            for _ in range(args.size_mib):
                handle.write(os.urandom(MIB))
        plain = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)
        plain.mkdir(BUCKET)
        store = open_s3_store(
            StoreSpec("bench", f"s3://{BUCKET}/strongroom", {"endpoint_url": endpoint})
        )
        engine = Engine(stores=[store])
        runs = [one_run(plain, store, engine, source, workdir, run) for run in range(args.runs)]
        kdf_seconds = timed(derive_kek, Passcode(PASSCODE), new_salt(), KdfParams())
        print(report(args.size_mib, runs, kdf_seconds))
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
