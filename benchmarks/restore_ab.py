"""Restore time of two strongroom checkouts, side by side, on the same backups.

For a change to the restore path: is it slower than before? Both checkouts restore the
same backup (made once, with the current code), interleaved run by run, each from a cold
page cache (`sync; echo 3 > /proc/sys/vm/drop_caches`, so root is needed) and timed until
the restored data is durable (the `strongroom restore` process, then `sync`, inside the
timing). Every restore is checked against the source.

    sudo .venv/bin/python benchmarks/restore_ab.py --workdir /tmp/ab --before ab1446e
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from throughput import (
    dataset_root,
    drop_caches,
    make_dataset,
    remove,
    total_size,
    tree_digest,
)

REPOSITORY = Path(__file__).resolve().parent.parent
PASSCODE = "restore-ab-benchmark-passcode"
RUN = "import sys; from strongroom.cli import main; sys.exit(main())"


def strongroom(source: Path, home: Path, *args: str | Path) -> tuple[float, float]:
    """Run the CLI of the checkout whose `src` is `source`; seconds until durable, and the
    CPU seconds it and its helper processes used (steadier than wall time on a busy
    machine)."""
    environment = {
        **os.environ,
        "PYTHONPATH": str(source),
        "STRONGROOM_HOME": str(home),
        "STRONGROOM_PASSCODE": PASSCODE,
        "STRONGROOM_DISABLE_PLUGIN_AUTOLOAD": "1",
    }
    start, cpu = time.perf_counter(), _children_cpu()
    command = [sys.executable, "-c", RUN, *map(str, args)]
    subprocess.run(command, env=environment, check=True, stdout=subprocess.DEVNULL)
    os.sync()
    return time.perf_counter() - start, _children_cpu() - cpu


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def checkout(revision: str, workdir: Path) -> Path:
    """The `src` directory of `revision`, in a detached worktree under `workdir`."""
    tree = workdir / f"checkout-{revision}"
    if not tree.exists():
        subprocess.run(
            ["git", "-C", str(REPOSITORY), "worktree", "add", "--detach", str(tree), revision],
            check=True,
        )
    return tree / "src"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--before", required=True, help="git revision to compare with")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--datasets", default="small,random1g")
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    sources = {"before": checkout(args.before, args.workdir), "after": REPOSITORY / "src"}
    home = args.workdir / "home"
    print(
        f"| dataset | code | restore s median [min-max] | MB/s | CPU s median | runs: {args.runs} |"
    )
    print("|---|---|---:|---:|---:|---|")
    for name in args.datasets.split(","):
        root = dataset_root(args.workdir, args.scale)
        root.mkdir(parents=True, exist_ok=True)
        dataset = make_dataset(name, root, args.scale)
        dataset.ensure()
        size, digest = total_size(dataset.path), tree_digest(dataset.path)
        backup = f"ab-{name}-{time.time_ns()}"
        strongroom(sources["after"], home, "create", "--name", backup, dataset.path)
        times: dict[str, list[tuple[float, float]]] = {code: [] for code in sources}
        for run in range(args.runs):
            order = list(sources) if run % 2 == 0 else list(reversed(sources))
            for code in order:
                target = args.workdir / "restored"
                remove(target)
                drop_caches()
                times[code].append(
                    strongroom(sources[code], home, "restore", backup, "--target", target)
                )
                restored = target / dataset.path.name
                if tree_digest(restored) != digest:
                    raise SystemExit(f"{code} restored {name} wrong")
        for code, samples in times.items():
            seconds = [wall for wall, _ in samples]
            median = statistics.median(seconds)
            cpu = statistics.median(cpu for _, cpu in samples)
            runs = " ".join(f"{s:.2f}" for s in seconds)
            print(
                f"| {name} | {code} | {median:.2f} [{min(seconds):.2f}-{max(seconds):.2f}] "
                f"| {size / median / 1e6:.0f} | {cpu:.2f} | {runs} |"
            )
        strongroom(sources["after"], home, "delete", backup)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
