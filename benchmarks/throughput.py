"""Backup and restore throughput and peak memory of strongroom beside the bare loop
(minimal_loop.py), borg, restic and `tar | age`, on the same datasets, machine and disk.

Measured as a user pays: the page cache is dropped before every timed backup and restore
(`sync; echo 3 > /proc/sys/vm/drop_caches`, so it needs root, unless --warm), and each is timed
until its data is durable (the tool as a subprocess, then `sync`). Within a run every tool goes
once, in an order rotated per run; every restore is verified, untimed, so a broken tool cannot
look fast. Run with --help for the options; benchmarks/README.md explains the method.
"""

import argparse
import datetime as dt
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import random
import re
import secrets
import shlex
import shutil
import statistics
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

MIB = 1024 * 1024
GIB = 1024 * MIB
MB = 1_000_000
BLOCK = 4 * MIB
BENCH_DIR = Path(__file__).resolve().parent
ARCHIVE_NAME = "bench"
DEFAULT_DATASETS = ("tiny", "random1g", "small", "compressible1g")
SMALL_FILES = 20_000
SMALL_TOTAL = 500 * MB
GNU_TIME = shutil.which("time") or "/usr/bin/time"
DROP_CACHES = Path("/proc/sys/vm/drop_caches")
PAGE_REPORTING_ORDER = Path("/sys/module/page_reporting/parameters/page_reporting_order")
#: Above the largest free block the kernel keeps: no block is ever reported.
PAGE_REPORTING_OFF = "11"


# --------------------------------------------------------------------------- datasets


class LogText:
    """Deterministic log-like text. Repeated templates compress well and per-line random ids do
    not, which lands zstd -3 at about 4.5x and leaves nothing for deduplication to find."""

    LEVELS = ("INFO", "DEBUG", "WARN", "ERROR")

    def __init__(self, seed: str) -> None:
        rng = random.Random(seed)
        letters = string.ascii_lowercase
        words = ["".join(rng.choices(letters, k=rng.randint(2, 10))) for _ in range(3000)]
        self._rng = rng
        self._messages = [" ".join(rng.choices(words, k=rng.randint(4, 12))) for _ in range(400)]
        self._components = [f"{rng.choice(words)}-{i}" for i in range(40)]
        self._clock_ms = 1_714_557_600_000
        self._pending = b""

    def _lines(self, count: int) -> bytes:
        """Draws every random field for `count` lines in bulk, which is what makes this fast."""
        rng = self._rng
        messages = rng.choices(self._messages, k=count)
        components = rng.choices(self._components, k=count)
        levels = rng.choices(self.LEVELS, weights=(70, 20, 8, 2), k=count)
        ids = rng.randbytes(12 * count).hex()
        took = rng.choices(range(1, 2000), k=count)
        steps = rng.choices(range(50), k=count)
        lines = []
        clock = self._clock_ms
        for i in range(count):
            clock += steps[i]
            lines.append(
                f"{clock // 1000}.{clock % 1000:03d} {levels[i]} [{components[i]}] {messages[i]}"
                f" id={ids[24 * i : 24 * i + 24]} took={took[i]}ms\n"
            )
        self._clock_ms = clock
        return "".join(lines).encode()

    def take(self, nbytes: int) -> bytes:
        """The next `nbytes` of the endless text."""
        parts, have = [self._pending], len(self._pending)
        while have < nbytes:
            chunk = self._lines((nbytes - have) // 100 + 1)
            parts.append(chunk)
            have += len(chunk)
        data = b"".join(parts)
        self._pending = data[nbytes:]
        return data[:nbytes]


def write_random_file(path: Path, nbytes: int) -> None:
    with path.open("wb") as f:
        for offset in range(0, nbytes, BLOCK):
            f.write(os.urandom(min(BLOCK, nbytes - offset)))


def write_text_file(path: Path, nbytes: int) -> None:
    text = LogText(path.name)
    with path.open("wb") as f:
        for offset in range(0, nbytes, BLOCK):
            f.write(text.take(min(BLOCK, nbytes - offset)))


def small_file_sizes(count: int, total: int, rng: random.Random) -> list[int]:
    """Log-normal sizes scaled to `total` (at full scale: median ~15 KB, largest ~0.6 MB)."""
    weights = [rng.lognormvariate(0.0, 1.0) for _ in range(count)]
    factor = total / sum(weights)
    return [max(64, round(w * factor)) for w in weights]


def write_small_tree(root: Path, count: int, total: int) -> None:
    """`count` text files in a two-level tree of 10 x 100-file directories."""
    rng = random.Random(f"{root.name}-sizes")
    text = LogText(root.name)
    for i, size in enumerate(small_file_sizes(count, total, rng)):
        path = root / f"d{i // 1000:02d}" / f"s{(i // 100) % 10}" / f"f{i:05d}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.take(size))


@dataclass(frozen=True)
class Dataset:
    """A named input. `path` (a file or a directory) is what every tool backs up."""

    name: str
    path: Path
    summary: str
    compressible: bool
    generate: Callable[[Path], None]
    #: False for `tiny`: it measures what a command costs before its first byte (start-up,
    #: key derivation, commit), which the issue's ratio targets are not about.
    has_targets: bool = True

    def ensure(self) -> None:
        """Generates into a temporary name and renames, so a half-written dataset is never used."""
        if self.path.exists():
            return
        partial = self.path.with_name(self.path.name + ".partial")
        remove(partial)
        print(f"generating {self.name} at {self.path} ...", file=sys.stderr, flush=True)
        self.generate(partial)
        partial.rename(self.path)


def make_dataset(name: str, root: Path, scale: float) -> Dataset:
    if match := re.fullmatch(r"random(\d+)g", name):
        size = int(int(match[1]) * GIB * scale)
        return Dataset(
            name,
            root / f"{name}.bin",
            "1 file, os.urandom",
            False,
            lambda p: write_random_file(p, size),
        )
    if name == "tiny":
        return Dataset(
            name,
            root / "tiny.txt",
            "1 file of 1 KiB: what each command costs before its first byte",
            True,
            lambda p: p.write_bytes(LogText(name).take(1024)),
            has_targets=False,
        )
    if name == "compressible1g":
        size = int(GIB * scale)
        return Dataset(
            name,
            root / f"{name}.log",
            "1 file, log-like text, zstd -3 ~4.5x",
            True,
            lambda p: write_text_file(p, size),
        )
    if name == "small":
        count, total = max(1, round(SMALL_FILES * scale)), int(SMALL_TOTAL * scale)

        def generate(p: Path) -> None:
            p.mkdir()
            write_small_tree(p, count, total)

        summary = f"{count} log-like text files, 100 per directory, 2 levels"
        return Dataset(name, root / name, summary, True, generate)
    raise ValueError(f"unknown dataset {name!r}: use tiny, random<N>g, small or compressible1g")


def dataset_root(workdir: Path, scale: float) -> Path:
    return workdir / ("datasets" if scale == 1 else f"datasets-scale{scale:g}")


# --------------------------------------------------------------------------- file helpers


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def files_under(path: Path) -> Iterator[Path]:
    """Regular files of a file-or-directory, in a stable order."""
    if not path.is_dir():
        yield path
        return
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        yield from (Path(dirpath, name) for name in sorted(filenames))


def total_size(path: Path) -> int:
    return sum(f.stat().st_size for f in files_under(path)) if path.exists() else 0


def tree_digest(path: Path) -> str:
    """SHA-256 over every file's relative path, size and content: equal digests, equal trees."""
    outer = hashlib.sha256()
    for file in files_under(path):
        with file.open("rb") as f:
            inner = hashlib.file_digest(f, "sha256").hexdigest()
        relative = file.relative_to(path).as_posix()
        outer.update(f"{relative}\0{file.stat().st_size}\0{inner}\n".encode())
    return outer.hexdigest()


def drop_caches() -> None:
    """Writes dirty pages back, then empties the page cache, dentries and inodes, so the next
    command reads from the disk as a first backup of the day does. Needs root."""
    os.sync()
    DROP_CACHES.write_text("3\n")


@contextmanager
def page_reporting_off(cold: bool) -> Iterator[str]:
    """Turn a VM's free page reporting off for the benchmark; yields what the report says.

    With it, the guest hands freed memory back to the host about 2 s after it is freed, and
    the first touch of each such page afterwards faults in the host. The page cache dropped
    before every timed run is such memory, so a run's kernel time depended on whether it began
    before or after the hand-back: on the project's VM, 1 GiB of random data took the bare
    loop 1.1-3.8 s and strongroom 1.5-3.4 s, run to run, for the same code. Off, a run meets
    memory as on a machine without it, and the order it had is restored after. A stock
    kernel refuses an order above its largest (10 on x86-64): the report then says it stayed on.
    """
    if not cold or not PAGE_REPORTING_ORDER.exists():
        yield "none" if cold else "left as it is (--warm)"
        return
    was = PAGE_REPORTING_ORDER.read_text().strip()
    if was == PAGE_REPORTING_OFF:
        yield f"off already (order {was})"
        return
    try:
        PAGE_REPORTING_ORDER.write_text(PAGE_REPORTING_OFF)
    except OSError as error:
        yield f"on, order {was} (could not turn it off: {error}); runs vary more"
        return
    try:
        yield f"turned off for the benchmark (it was on, order {was})"
    finally:
        try:
            PAGE_REPORTING_ORDER.write_text(was)
        except OSError as error:
            print(
                f"could not turn page reporting back on ({error}):"
                f" write {was} to {PAGE_REPORTING_ORDER}",
                file=sys.stderr,
            )


def tail(path: Path, lines: int = 4) -> str:
    if not path.exists():
        return ""
    text = path.read_text(errors="replace").strip().splitlines()[-lines:]
    return " / ".join(line.strip() for line in text)[-400:]


# --------------------------------------------------------------------------- measuring


class ToolFailed(Exception):
    """A tool exited non-zero or restored something other than the source."""


@dataclass(frozen=True)
class Command:
    """One process the harness runs and measures as a whole (a pipeline runs under bash)."""

    argv: list[str]
    cwd: Path
    env: dict[str, str]


def pipeline(script: str, cwd: Path, env: dict[str, str]) -> Command:
    """A shell pipeline that fails when any of its commands does."""
    return Command(["bash", "-o", "pipefail", "-c", script], cwd, env)


@dataclass(frozen=True)
class RunPaths:
    """Fresh locations for one backup+restore run; `root` is deleted afterwards."""

    root: Path

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def restore(self) -> Path:
        return self.root / "restore"

    @property
    def log(self) -> Path:
        return self.root / "log.txt"


@dataclass(frozen=True)
class Sample:
    seconds: float
    peak_rss_kib: int


def run_measured(command: Command, run: RunPaths, cold: bool) -> Sample:
    """Runs `command`, then `sync`, and returns the wall time of both (the data is durable when
    they return) and the command's peak RSS. With `cold`, the page cache is dropped first.

    The peak RSS is ru_maxrss (KiB) from the wait4 that GNU time does on the command, not from a
    wait4 here: a child of this Python process inherits the harness's own peak RSS as its
    ru_maxrss floor (the kernel keeps the high-water mark of the address space it leaves at exec,
    and with vfork that is ours), so `true` would read as big as the harness. GNU time is ~1 MiB.
    ru_maxrss covers the descendants that were waited for, so for `bash -c 'tar | age'` it is the
    largest of bash, tar and age.
    """
    rss_file = run.root / "maxrss.txt"
    argv = [GNU_TIME, "--format", "%M", "--output", str(rss_file), "--", *command.argv]
    with run.log.open("ab") as out:
        if cold:
            drop_caches()
        start = time.perf_counter()
        result = subprocess.run(
            argv,
            cwd=command.cwd,
            env=command.env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
        os.sync()
        seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise ToolFailed(
            f"`{shlex.join(command.argv)}` exited {result.returncode}: {tail(run.log)}"
        )
    try:
        return Sample(seconds, int(rss_file.read_text().split()[-1]))
    except (IndexError, ValueError):
        raise ToolFailed(f"GNU time wrote no peak RSS to {rss_file} (is the disk full?)") from None


# --------------------------------------------------------------------------- tools


@dataclass(frozen=True)
class Secrets:
    """Credentials shared by all tools; files live in the workdir, never on a command line."""

    passphrase: str
    key_file: Path
    age_identity: Path

    @classmethod
    def load(cls, workdir: Path) -> "Secrets":
        """The passphrase and the bare loop's raw key; the age identity is made by its tool."""
        passphrase_file, key_file = workdir / "passphrase.txt", workdir / "bare-loop.key"
        if not passphrase_file.exists():
            passphrase_file.touch(mode=0o600)
            passphrase_file.write_text(secrets.token_hex(16) + "\n")
        if not key_file.exists():
            key_file.touch(mode=0o600)
            key_file.write_bytes(secrets.token_bytes(32))
        age_identity = workdir / "age-identity.txt"
        return cls(passphrase_file.read_text().strip(), key_file, age_identity)


def first_line(argv: list[str]) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
    except OSError as error:
        return f"unknown ({error})"
    lines = (result.stdout or result.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


class Tool:
    """A backup program under test: builds its commands, the harness times and verifies them.

    `restore` must recreate the dataset under `run.restore` by its basename.
    """

    name = ""
    compression = ""
    apt_packages: tuple[str, ...] = ()
    restore_creates_target = True

    def __init__(self, keys: Secrets) -> None:
        self.keys = keys

    def binaries(self) -> list[str]:
        raise NotImplementedError

    def version(self) -> str:
        raise NotImplementedError

    def setup(self, run: RunPaths) -> list[Command]:
        """Untimed commands before the backup, e.g. creating a repository."""
        return []

    def backup(self, run: RunPaths, dataset: Dataset) -> Command:
        raise NotImplementedError

    def restore(self, run: RunPaths, dataset: Dataset) -> Command:
        raise NotImplementedError

    def missing(self) -> str | None:
        for binary in self.binaries():
            if shutil.which(binary) is None:
                hint = (
                    f" (apt-get install {' '.join(self.apt_packages)})" if self.apt_packages else ""
                )
                return f"{binary} not found{hint}"
        return None

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, **extra}


class Strongroom(Tool):
    name = "strongroom"
    compression = "its default"

    def binaries(self) -> list[str]:
        return [str(Path(sys.executable).parent / "strongroom")]

    def version(self) -> str:
        try:
            return f"strongroom {importlib.metadata.version('strongroom')}"
        except importlib.metadata.PackageNotFoundError:
            return "strongroom (not installed)"

    def setup(self, run: RunPaths) -> list[Command]:
        """Compile strongroom's bytecode, as pip does when it installs a package; an editable
        install under PYTHONDONTWRITEBYTECODE would compile every module at each start."""
        spec = importlib.util.find_spec("strongroom")
        if spec is None or not spec.submodule_search_locations:
            return []
        package = spec.submodule_search_locations[0]
        return [Command([sys.executable, "-m", "compileall", "-q", package], run.root, self.env())]

    def _env(self, run: RunPaths) -> dict[str, str]:
        return self.env(
            STRONGROOM_HOME=str(run.store),
            STRONGROOM_PASSCODE=self.keys.passphrase,
        )

    def backup(self, run: RunPaths, dataset: Dataset) -> Command:
        argv = [*self.binaries(), "create", "--name", ARCHIVE_NAME, str(dataset.path)]
        return Command(argv, run.root, self._env(run))

    def restore(self, run: RunPaths, dataset: Dataset) -> Command:
        argv = [*self.binaries(), "restore", ARCHIVE_NAME, "--target", str(run.restore)]
        return Command(argv, run.root, self._env(run))


class BareLoop(Tool):
    """benchmarks/minimal_loop.py, the floor every real tool's overhead is measured against.
    A directory goes through `tar` in its pipe, as the issue's bare loop does."""

    name = "bare"
    compression = "none (AES-256-GCM, 1 MiB chunks, no KDF; tar for a directory)"
    apt_packages = ("tar",)
    restore_creates_target = False

    def binaries(self) -> list[str]:
        return ["bash", "tar"]

    def version(self) -> str:
        cryptography = importlib.metadata.version("cryptography")
        return f"bare loop (cryptography {cryptography}), {first_line(['tar', '--version'])}"

    def _loop(self, mode: str, source: str | Path, target: str | Path) -> list[str]:
        script = str(BENCH_DIR / "minimal_loop.py")
        return [sys.executable, script, mode, str(self.keys.key_file), str(source), str(target)]

    def backup(self, run: RunPaths, dataset: Dataset) -> Command:
        archive, source = run.store / "archive.bin", dataset.path
        if not source.is_dir():
            return Command(self._loop("backup", source, archive), run.root, self.env())
        loop = shlex.join(self._loop("backup", "-", archive))
        return pipeline(f"tar -cf - {shlex.quote(source.name)} | {loop}", source.parent, self.env())

    def restore(self, run: RunPaths, dataset: Dataset) -> Command:
        archive = run.store / "archive.bin"
        if not dataset.path.is_dir():
            argv = self._loop("restore", archive, run.restore / dataset.path.name)
            return Command(argv, run.root, self.env())
        loop = shlex.join(self._loop("restore", archive, "-"))
        script = f"{loop} | tar -xf - -C {shlex.quote(str(run.restore))}"
        return pipeline(script, run.root, self.env())


class Restic(Tool):
    name = "restic"
    compression = "auto (zstd; repository format 2)"
    apt_packages = ("restic",)

    def binaries(self) -> list[str]:
        return ["restic"]

    def version(self) -> str:
        return first_line(["restic", "version"])

    def _env(self, run: RunPaths) -> dict[str, str]:
        return self.env(
            RESTIC_REPOSITORY=str(run.store),
            RESTIC_PASSWORD=self.keys.passphrase,
            RESTIC_CACHE_DIR=str(run.root / "cache"),
        )

    def setup(self, run: RunPaths) -> list[Command]:
        return [Command(["restic", "init", "--quiet"], run.root, self._env(run))]

    def backup(self, run: RunPaths, dataset: Dataset) -> Command:
        argv = ["restic", "backup", "--quiet", dataset.path.name]
        return Command(argv, dataset.path.parent, self._env(run))

    def restore(self, run: RunPaths, dataset: Dataset) -> Command:
        argv = ["restic", "restore", "latest", "--quiet", "--target", str(run.restore)]
        return Command(argv, run.root, self._env(run))


class Borg(Tool):
    """Borg 1.x and 2.x differ in commands, archive names and encryption modes: detect which.
    Only borg 1.2 (Debian 12) has been tried; the borg 2 commands follow its 2.0 betas."""

    name = "borg"
    compression = "none on random data, lz4 on text"
    apt_packages = ("borgbackup",)
    restore_creates_target = False

    def binaries(self) -> list[str]:
        return ["borg"]

    def version(self) -> str:
        return first_line(["borg", "--version"])

    @functools.cached_property
    def _is_borg2(self) -> bool:
        match = re.search(r"(\d+)\.", self.version())
        return match is not None and int(match[1]) >= 2

    def _env(self, run: RunPaths) -> dict[str, str]:
        return self.env(
            BORG_REPO=str(run.store),
            BORG_PASSPHRASE=self.keys.passphrase,
            BORG_BASE_DIR=str(run.root / "base"),
        )

    def _archive(self) -> str:
        """With BORG_REPO set, borg 1 names an archive `::NAME` and borg 2 just `NAME`."""
        return ARCHIVE_NAME if self._is_borg2 else f"::{ARCHIVE_NAME}"

    def setup(self, run: RunPaths) -> list[Command]:
        if self._is_borg2:
            argv = ["borg", "repo-create", "--encryption=repokey-blake2-aes-ocb"]
        else:
            argv = ["borg", "init", "--encryption=repokey-blake2"]
        return [Command(argv, run.root, self._env(run))]

    def backup(self, run: RunPaths, dataset: Dataset) -> Command:
        """lz4 where compression can win, none where it cannot: borg at its best on each."""
        compression = "lz4" if dataset.compressible else "none"
        argv = ["borg", "create", "--compression", compression, self._archive(), dataset.path.name]
        return Command(argv, dataset.path.parent, self._env(run))

    def restore(self, run: RunPaths, dataset: Dataset) -> Command:
        return Command(["borg", "extract", self._archive()], run.restore, self._env(run))


class TarAge(Tool):
    """The classic pipeline. age encrypts to an X25519 identity made with age-keygen: its
    passphrase mode reads the passphrase from a terminal, which a script cannot give it."""

    name = "tar-age"
    compression = "none"
    apt_packages = ("tar", "age")
    restore_creates_target = False

    def binaries(self) -> list[str]:
        return ["bash", "tar", "age", "age-keygen"]

    def version(self) -> str:
        return f"{first_line(['tar', '--version'])}, age {first_line(['age', '--version'])}"

    def setup(self, run: RunPaths) -> list[Command]:
        if self.keys.age_identity.exists():
            return []
        return [Command(["age-keygen", "-o", str(self.keys.age_identity)], run.root, self.env())]

    def backup(self, run: RunPaths, dataset: Dataset) -> Command:
        archive = shlex.quote(str(run.store / "archive.tar.age"))
        identity = shlex.quote(str(self.keys.age_identity))
        script = (
            f"tar -cf - {shlex.quote(dataset.path.name)} | age --encrypt -i {identity} -o {archive}"
        )
        return pipeline(script, dataset.path.parent, self.env())

    def restore(self, run: RunPaths, dataset: Dataset) -> Command:
        archive = shlex.quote(str(run.store / "archive.tar.age"))
        identity = shlex.quote(str(self.keys.age_identity))
        script = (
            f"age --decrypt -i {identity} {archive} | tar -xf - -C {shlex.quote(str(run.restore))}"
        )
        return pipeline(script, run.root, self.env())


TOOLS: dict[str, type[Tool]] = {
    cls.name: cls for cls in (Strongroom, BareLoop, Borg, Restic, TarAge)
}


# --------------------------------------------------------------------------- running


Phase = Literal["backup", "restore"]


@dataclass(frozen=True)
class RunResult:
    backup: Sample
    restore: Sample
    stored_bytes: int


@dataclass
class Outcome:
    """All runs of one tool on one dataset; `error` stops further runs of that pair."""

    dataset: Dataset
    dataset_bytes: int
    tool: Tool
    runs: list[RunResult] = field(default_factory=list)
    error: str | None = None

    def samples(self, phase: Phase) -> list[Sample]:
        return [r.backup if phase == "backup" else r.restore for r in self.runs]

    def seconds(self, phase: Phase) -> list[float]:
        return [s.seconds for s in self.samples(phase)]

    def mb_per_s(self, phase: Phase) -> list[float]:
        return [self.dataset_bytes / MB / s for s in self.seconds(phase)]

    def peak_rss_mib(self, phase: Phase) -> float:
        return max(s.peak_rss_kib for s in self.samples(phase)) / 1024

    def median_mb_per_s(self, phase: Phase) -> float | None:
        return statistics.median(self.mb_per_s(phase)) if self.runs and not self.error else None


def run_once(
    tool: Tool, dataset: Dataset, run: RunPaths, expected_digest: str, trash: Path, cold: bool
) -> RunResult:
    """One backup and one restore into fresh directories, each from a cold page cache (unless
    not `cold`) and timed until durable; setup and verification are untimed.

    The run's directories are moved into `trash`, not deleted: for a few minutes after many
    files are deleted, ext4 slows down every file creation nearby (its inode allocator skips
    recently deleted inodes, reading their inode table blocks to find them: `recently_deleted`
    was 40% of the kernel's time in a perf profile), which would bill one tool's cleanup to
    the next tool's restore. The trash is emptied once a dataset's runs are done."""
    remove(run.root)
    run.store.mkdir(parents=True)
    try:
        for command in tool.setup(run):
            run_measured(command, run, cold=False)
        backup = run_measured(tool.backup(run, dataset), run, cold)
        stored = total_size(run.store)
        if not tool.restore_creates_target:
            run.restore.mkdir()
        restore = run_measured(tool.restore(run, dataset), run, cold)
        restored = run.restore / dataset.path.name
        if not restored.exists():
            found = sorted(p.name for p in run.restore.iterdir()) if run.restore.exists() else []
            raise ToolFailed(f"restore produced no {restored.name} under the target: {found[:5]}")
        if tree_digest(restored) != expected_digest:
            raise ToolFailed("restored data differs from the source (SHA-256 tree digest)")
        return RunResult(backup, restore, stored)
    finally:
        set_aside(run.root, trash)


def set_aside(root: Path, trash: Path) -> None:
    """Moves a run's directories into the trash; deletes them when even that fails (a full
    disk cannot create the trash's next directory)."""
    if not root.exists():
        return
    try:
        root.rename(Path(tempfile.mkdtemp(dir=trash)) / root.name)
    except OSError:
        remove(root)


def run_benchmark(
    datasets: Sequence[Dataset], tools: Sequence[Tool], runs: int, workdir: Path, cold: bool
) -> list[Outcome]:
    """Runs every tool once per run index, so slow drift in the machine (thermal, background
    load) spreads over all tools instead of biasing the last one. Each run index starts with
    the next tool, so the disk's slow start after the previous dataset's runs are deleted
    (discard) does not always fall on the same tool.

    An untimed warm-up run of the last tool comes first, so every timed run follows another
    run, as it does in the rotation. Without it, the first timed run met a different machine:
    strongroom, the first tool, backed up random1g at 383-427 MB/s in run 1 of six harness runs
    and at 512-834 MB/s in runs 2 and 3, also when it was the only tool."""
    outcomes = []
    for dataset in datasets:
        dataset.ensure()
        print(f"[{dataset.name}] hashing source (untimed) ...", file=sys.stderr, flush=True)
        digest = tree_digest(dataset.path)
        size = total_size(dataset.path)
        pairs = [Outcome(dataset, size, tool) for tool in tools]
        for outcome in pairs:
            if reason := outcome.tool.missing():
                outcome.error = f"skipped: {reason}"
        if shortage := space_shortage(pairs, runs, workdir):
            for outcome in pairs:
                outcome.error = outcome.error or f"skipped: {shortage}"
        trash = workdir / "runs" / "trash"
        trash.mkdir(parents=True, exist_ok=True)
        try:  # empty the trash whatever happens
            warm_up_run(pairs[-1], workdir, digest, trash, cold)
            for index in range(runs):
                rotated = pairs[index % len(pairs) :] + pairs[: index % len(pairs)]
                for outcome in (o for o in rotated if o.error is None):
                    run = RunPaths(workdir / "runs" / f"{dataset.name}-{outcome.tool.name}")
                    try:
                        result = run_once(outcome.tool, dataset, run, digest, trash, cold)
                        outcome.runs.append(result)
                    except (ToolFailed, OSError) as failure:  # OSError: a full disk
                        outcome.error = str(failure)
                    report_progress(outcome, index, runs)
        finally:
            remove(trash)
        outcomes.extend(pairs)
    return outcomes


def space_shortage(pairs: Sequence[Outcome], runs: int, workdir: Path) -> str | None:
    """Why a dataset's runs would fill the disk, if they would: every run's store and
    restore (at most twice the dataset each) stay in the trash until the dataset's runs
    end, which filled a disk with 49 GB free at 5 runs of 1 GiB (docs/benchmarks.md)."""
    tools = [o for o in pairs if o.error is None]
    if not tools:
        return None
    needed = (runs * len(tools) + 1) * 2 * tools[0].dataset_bytes  # + 1: the warm-up run
    free = shutil.disk_usage(workdir).free
    if free >= needed:
        return None
    return (
        f"its runs keep every store and restore until they end: about {needed / 1e9:.1f} GB,"
        f" and {workdir} has {free / 1e9:.1f} GB free (use fewer --runs or --tools, or"
        " another --workdir)"
    )


def warm_up_run(outcome: Outcome, workdir: Path, digest: str, trash: Path, cold: bool) -> None:
    """One untimed run of a tool, its result dropped (see `run_benchmark`)."""
    if outcome.error is not None:
        return
    label = f"[{outcome.dataset.name}] {outcome.tool.name}"
    print(f"{label} warm-up run (untimed) ...", file=sys.stderr, flush=True)
    run = RunPaths(workdir / "runs" / f"{outcome.dataset.name}-{outcome.tool.name}")
    try:
        run_once(outcome.tool, outcome.dataset, run, digest, trash, cold)
    except (ToolFailed, OSError) as failure:
        outcome.error = str(failure)


def report_progress(outcome: Outcome, index: int, runs: int) -> None:
    label = f"[{outcome.dataset.name}] {outcome.tool.name} run {index + 1}/{runs}:"
    if outcome.error:
        print(f"{label} FAILED: {outcome.error}", file=sys.stderr, flush=True)
        return
    last = outcome.runs[-1]
    megabytes = outcome.dataset_bytes / MB
    print(
        f"{label} backup {last.backup.seconds:.2f} s {megabytes / last.backup.seconds:.1f} MB/s,"
        f" restore {last.restore.seconds:.2f} s {megabytes / last.restore.seconds:.1f} MB/s,"
        f" peak RSS {last.backup.peak_rss_kib / 1024:.0f}"
        f" / {last.restore.peak_rss_kib / 1024:.0f} MiB",
        file=sys.stderr,
        flush=True,
    )


# --------------------------------------------------------------------------- reporting


@dataclass(frozen=True)
class Target:
    """One of issue #16's goals: strongroom's median MB/s over another tool's, per dataset."""

    label: str
    phase: Phase
    other: str
    at_least: float


TARGETS = (
    Target("backup >= 0.8x bare loop", "backup", "bare", 0.8),
    Target("backup >= 3x borg", "backup", "borg", 3.0),
    Target("restore >= 2x restic", "restore", "restic", 2.0),
    Target("restore >= 2x borg", "restore", "borg", 2.0),
)
RSS_TARGET = "peak RSS <= 150 MiB"
RSS_LIMIT_MIB = 150.0


@dataclass(frozen=True)
class Check:
    """A target on one dataset: `value` is a ratio (or MiB for RSS); `passed` is None when it
    could not be computed, and `why` says why."""

    target: str
    dataset: str
    value: float | None
    passed: bool | None
    why: str = ""

    def cell(self) -> str:
        if self.value is None:
            return f"n/a ({self.why})"
        shown = f"{self.value:.0f} MiB" if self.target == RSS_TARGET else f"{self.value:.2f}x"
        return f"{shown} {'pass' if self.passed else 'FAIL'}"


def ratio_check(target: Target, dataset: str, found: dict[tuple[str, str], Outcome]) -> Check:
    ours, theirs = found.get((dataset, "strongroom")), found.get((dataset, target.other))
    a = ours.median_mb_per_s(target.phase) if ours else None
    b = theirs.median_mb_per_s(target.phase) if theirs else None
    if a is None or b is None:
        missing = [name for name, m in (("strongroom", a), (target.other, b)) if m is None]
        return Check(target.label, dataset, None, None, f"no {' or '.join(missing)} result")
    return Check(target.label, dataset, a / b, a / b >= target.at_least)


def rss_check(dataset: str, found: dict[tuple[str, str], Outcome]) -> Check:
    ours = found.get((dataset, "strongroom"))
    if ours is None or ours.error or not ours.runs:
        return Check(RSS_TARGET, dataset, None, None, "no strongroom result")
    peak = max(ours.peak_rss_mib("backup"), ours.peak_rss_mib("restore"))
    return Check(RSS_TARGET, dataset, peak, peak <= RSS_LIMIT_MIB)


def checks(outcomes: Sequence[Outcome]) -> list[Check]:
    found = {(o.dataset.name, o.tool.name): o for o in outcomes}
    result = []
    targeted = (o.dataset.name for o in outcomes if o.dataset.has_targets)
    for dataset in dict.fromkeys(targeted):
        result += [ratio_check(t, dataset, found) for t in TARGETS]
        result.append(rss_check(dataset, found))
    return result


def method(runs: int, cold: bool) -> list[str]:
    """The three lines every report starts with."""
    if cold:
        cache = "Cold cache: `sync; echo 3 > /proc/sys/vm/drop_caches` before every timed run."
    else:
        cache = "WARM cache (--warm): caches not dropped, so reading the data is not all paid."
    return [
        cache,
        "Until durable: the tool as a subprocess, then `sync`, inside the timing;"
        " MB/s = dataset bytes / 10^6 / s; peak RSS from GNU time.",
        f"Tools interleaved, order rotated per run, after one untimed warm-up run;"
        f" medians of {runs}, every run shown; restores verified by SHA-256 (untimed).",
    ]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> str:
    return (
        f"{platform.machine()}, {cpu_model()}, {os.cpu_count()} cores,"
        f" Python {platform.python_version()}"
    )


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def header(args: argparse.Namespace, datasets: Sequence[Dataset], tools: Sequence[Tool]) -> str:
    lines = [
        "# strongroom throughput benchmark" + ("" if args.cold else " (WARM CACHE)"),
        "",
        *(f"{i}. {line}" for i, line in enumerate(method(args.runs, args.cold), 1)),
        "",
        f"- date: {now()}; machine: {machine()}",
        f"- free page reporting (VM): {args.page_reporting}",
        f"- runs per tool and dataset: {args.runs}; dataset scale: {args.scale:g}",
    ]
    for d in datasets:
        lines.append(f"- dataset {d.name}: {total_size(d.path) / MB:.1f} MB, {d.summary}")
    for t in tools:
        version = "not installed" if t.missing() else t.version()
        lines.append(f"- tool {t.name}: {version}; compression: {t.compression}")
    return "\n".join(lines)


def phase_cells(outcome: Outcome, phase: Phase) -> str:
    """Median MB/s, then every run's seconds in run order."""
    runs = " ".join(f"{s:.2f}" for s in outcome.seconds(phase))
    return f"{statistics.median(outcome.mb_per_s(phase)):.1f} | {runs}"


def results_table(outcomes: Sequence[Outcome]) -> str:
    lines = [
        "| dataset | tool | backup MB/s median | backup s per run | restore MB/s median"
        " | restore s per run | peak RSS backup / restore MiB | stored MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for o in outcomes:
        if o.error:
            status = "skipped" if o.error.startswith("skipped:") else "FAILED"
            lines.append(f"| {o.dataset.name} | {o.tool.name} | {status} (see notes) | | | | | |")
            continue
        stored = statistics.median(r.stored_bytes for r in o.runs) / MB
        lines.append(
            f"| {o.dataset.name} | {o.tool.name} | {phase_cells(o, 'backup')}"
            f" | {phase_cells(o, 'restore')}"
            f" | {o.peak_rss_mib('backup'):.0f} / {o.peak_rss_mib('restore'):.0f}"
            f" | {stored:.1f} |"
        )
    return "\n".join(lines)


def targets_table(results: Sequence[Check]) -> str:
    """One row per target, one column per dataset: strongroom's ratio and pass or FAIL
    (nothing when only `tiny` ran)."""
    datasets = list(dict.fromkeys(c.dataset for c in results))
    if not datasets:
        return ""
    cells = {(c.target, c.dataset): c.cell() for c in results}
    lines = [
        "## Targets (strongroom, ratios of medians)",
        "",
        f"| target | {' | '.join(datasets)} |",
        "|---|" + "---:|" * len(datasets),
    ]
    for target in dict.fromkeys(c.target for c in results):
        lines.append(f"| {target} | {' | '.join(cells[target, d] for d in datasets)} |")
    return "\n".join(lines)


def notes(outcomes: Sequence[Outcome]) -> str:
    failed = [o for o in outcomes if o.error]
    if not failed:
        return ""
    lines = ["## Notes", ""]
    for o in failed:
        lines.append(f"- {o.dataset.name} / {o.tool.name}: {o.error}")
    return "\n".join(lines)


def scaling_summary(outcomes: Sequence[Outcome]) -> str:
    """Peak RSS per input size: flat numbers mean memory does not grow with the data."""
    lines = [
        "## Memory scaling",
        "",
        "| tool | input GiB | peak RSS backup MiB | peak RSS restore MiB |",
        "|---|---:|---:|---:|",
    ]
    for o in sorted(outcomes, key=lambda o: (o.tool.name, o.dataset_bytes)):
        size = f"{o.dataset_bytes / GIB:.2f}"
        if o.error:
            lines.append(f"| {o.tool.name} | {size} | failed | failed |")
        else:
            lines.append(
                f"| {o.tool.name} | {size} | {o.peak_rss_mib('backup'):.0f}"
                f" | {o.peak_rss_mib('restore'):.0f} |"
            )
    return "\n".join(lines)


def markdown_report(
    args: argparse.Namespace,
    datasets: Sequence[Dataset],
    tools: Sequence[Tool],
    outcomes: Sequence[Outcome],
) -> str:
    summary = scaling_summary(outcomes) if args.memory_scaling else targets_table(checks(outcomes))
    sections = [header(args, datasets, tools), results_table(outcomes), summary, notes(outcomes)]
    return "\n\n".join(s for s in sections if s) + "\n"


def phase_json(outcome: Outcome, phase: Phase) -> dict[str, Any]:
    return {
        "seconds": outcome.seconds(phase),
        "mb_per_s": outcome.mb_per_s(phase),
        "median_mb_per_s": outcome.median_mb_per_s(phase),
        "peak_rss_kib": [s.peak_rss_kib for s in outcome.samples(phase)],
    }


def json_report(
    args: argparse.Namespace,
    datasets: Sequence[Dataset],
    tools: Sequence[Tool],
    outcomes: Sequence[Outcome],
) -> str:
    """The same facts as the Markdown report, for harness runs to compare machines."""
    report = {
        "date": now(),
        "machine": machine(),
        "cold_cache": args.cold,
        "page_reporting": args.page_reporting,
        "method": method(args.runs, args.cold),
        "runs": args.runs,
        "scale": args.scale,
        "datasets": [
            {"name": d.name, "bytes": total_size(d.path), "summary": d.summary} for d in datasets
        ],
        "tools": [
            {
                "name": t.name,
                "version": None if t.missing() else t.version(),
                "compression": t.compression,
            }
            for t in tools
        ],
        "results": [
            {
                "dataset": o.dataset.name,
                "tool": o.tool.name,
                "error": o.error,
                "stored_bytes": [r.stored_bytes for r in o.runs],
                "backup": phase_json(o, "backup"),
                "restore": phase_json(o, "restore"),
            }
            for o in outcomes
        ],
        "targets": [] if args.memory_scaling else [asdict(c) for c in checks(outcomes)],
    }
    return json.dumps(report, indent=2) + "\n"


# --------------------------------------------------------------------------- command line


def comma_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--workdir", type=Path, required=True, help="datasets, stores, restores")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per tool and dataset")
    parser.add_argument(
        "--datasets",
        type=comma_list,
        default=list(DEFAULT_DATASETS),
        help="comma list of tiny, random<N>g, small, compressible1g",
    )
    parser.add_argument(
        "--tools",
        type=comma_list,
        default=argparse.SUPPRESS,
        help=f"comma list of {', '.join(TOOLS)} (default: all; strongroom with --memory-scaling)",
    )
    parser.add_argument("--scale", type=float, default=1.0, help="shrink datasets for trial runs")
    parser.add_argument(
        "--warm",
        action="store_true",
        help="do not drop the page cache (no root needed); the report says WARM",
    )
    parser.add_argument("--json", action="store_true", help="report as JSON instead of Markdown")
    parser.add_argument("--output", type=Path, help="also write the report to this file")
    parser.add_argument(
        "--memory-scaling",
        action="store_true",
        help="only back up and restore random files of --sizes-gib and report peak RSS per size",
    )
    parser.add_argument(
        "--sizes-gib", type=comma_list, default=["1", "4"], help="sizes for --memory-scaling"
    )
    args = parser.parse_args(argv)
    if args.runs < 1 or args.scale <= 0:
        parser.error("--runs must be >= 1 and --scale > 0")
    args.cold = not args.warm
    if "tools" not in args:
        args.tools = ["strongroom"] if args.memory_scaling else list(TOOLS)
    if unknown := [t for t in args.tools if t not in TOOLS]:
        parser.error(f"unknown tools {unknown}; choose from {list(TOOLS)}")
    if args.memory_scaling:
        if not all(s.isdigit() for s in args.sizes_gib):
            parser.error("--sizes-gib takes whole GiB, e.g. 1,4")
        args.datasets = [f"random{s}g" for s in args.sizes_gib]
    return args


def check_can_drop_caches() -> None:
    """Refuses to start a cold-cache run that could not drop the cache."""
    try:
        drop_caches()
    except OSError as error:
        sys.exit(
            f"cannot drop the page cache ({error}): every timed run starts with"
            " `sync; echo 3 > /proc/sys/vm/drop_caches`, which needs root. Run as root (sudo),"
            " or pass --warm for a run whose report is labelled WARM."
        )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.cold:
        check_can_drop_caches()
    if not Path(GNU_TIME).exists():
        sys.exit("GNU time is needed to measure peak RSS: apt-get install time (make bench does)")
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    root = dataset_root(workdir, args.scale)
    root.mkdir(exist_ok=True)
    try:
        datasets = [make_dataset(name, root, args.scale) for name in args.datasets]
    except ValueError as error:
        sys.exit(str(error))
    keys = Secrets.load(workdir)
    tools = [TOOLS[name](keys) for name in args.tools]
    for tool in tools:
        if reason := tool.missing():
            print(f"skipping {tool.name}: {reason}", file=sys.stderr)
    with page_reporting_off(args.cold) as args.page_reporting:
        outcomes = run_benchmark(datasets, tools, args.runs, workdir, args.cold)
    render = json_report if args.json else markdown_report
    report = render(args, datasets, tools, outcomes)
    print(report, end="")
    if args.output:
        args.output.write_text(report)


if __name__ == "__main__":
    main()
