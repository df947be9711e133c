"""`strongroom benchmark`: every stage is measured and shown, and the store is left exactly as
it was, also when the store fails or the run is interrupted. No test here asserts on time."""

from __future__ import annotations

import builtins
import io
import os
import signal
import sys
import tempfile
import threading
from datetime import datetime
from pathlib import Path

import pytest

from strongroom import Engine, ObjectInfo, StoreUnavailableError
from strongroom.benchmark import measure
from strongroom.store import PROBE_PREFIX
from tests.conftest import FAST_KDF, SMALL_CHUNK
from tests.sqlite_store import SQLiteStore
from tests.test_cli import Cli

#: Every stage, with the data it runs on, in the order the command prints them.
STAGES = [
    ("put", "random"),
    ("get", "random"),
    ("list", None),
    ("argon2id", None),
    ("seal", "random"),
    ("open", "random"),
    ("compress", "text"),
    ("decompress", "text"),
    ("compress fast", "text"),
    ("compress", "random"),
    ("decompress", "random"),
    ("archive write", "files"),
    ("archive read", "files"),
]
#: Tiny: a quarter of a MiB in the store, each repeated stage run for 10 ms.
TINY = ("--size", "0.25", "--seconds", "0.01")


@pytest.fixture
def cli(home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    """The CLI with no terminal and no way to read a passcode: the benchmark needs none."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    monkeypatch.setattr("strongroom.cli.read_passcode", _no_passcode)
    return Cli(capsys)


def _no_passcode(*args: object, **kwargs: object) -> None:
    raise AssertionError("the benchmark read a passcode")


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The temporary directory the benchmark gets, to see that it leaves nothing there."""
    directory = tmp_path / "scratch"
    directory.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    return directory


def tree_of(root: Path) -> list[str]:
    """Every file and directory under `root`, so an empty directory left behind shows."""
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


def test_prints_every_stage(cli: Cli, home: Path) -> None:
    outcome = cli("benchmark", *TINY)
    assert outcome.code == 0, outcome.err
    header, table = outcome.out.split("\n\n")
    assert "store backupsDefault (file://" in header
    assert "Argon2id 67.1 MB, 3 iterations, 4 lanes" in header  # the engine's own cost
    lines = table.splitlines()
    data_column = lines[0].index("DATA")
    printed = [(line[:data_column].strip(), line[data_column:].split()[0]) for line in lines[1:]]
    assert printed == [(stage, data or "-") for stage, data in STAGES]
    assert not tree_of(home / "stores" / "backupsDefault")


def test_json_has_the_documented_keys_and_positive_numbers(cli: Cli) -> None:
    outcome = cli("benchmark", "--json", *TINY)
    assert outcome.code == 0, outcome.err
    document = outcome.json()
    assert set(document) == {"machine", "settings", "stages"}
    assert set(document["machine"]) == {"cpuCount", "python", "platform", "strongroom"}
    assert document["machine"]["cpuCount"] == os.cpu_count()
    settings = document["settings"]
    assert settings["backupStore"] == "backupsDefault"
    assert settings["size"] == 256 * 1024
    assert settings["kdf"] == {
        "algorithm": "argon2id",
        "memoryCostKib": 64 * 1024,
        "iterations": 3,
        "lanes": 4,
    }
    assert {"url", "concurrency", "chunkSize", "zstdLevel", "zstdFastLevel"} < set(settings)
    assert [(stage["stage"], stage["data"]) for stage in document["stages"]] == STAGES
    for stage in document["stages"]:
        assert set(stage) == {
            "stage",
            "data",
            "seconds",
            "bytes",
            "count",
            "unit",
            "bytesPerSecond",
            "perSecond",
            "secondsEach",
        }
        for key in ("seconds", "count", "perSecond", "secondsEach"):
            assert stage[key] > 0, (stage, key)
        if stage["stage"] in ("argon2id", "list"):  # no bytes to speak of
            assert (stage["bytes"], stage["bytesPerSecond"]) == (0, None)
        else:
            assert stage["bytes"] > 0 and stage["bytesPerSecond"] > 0, stage


def test_the_store_is_left_exactly_as_it_was(engine: Engine, home: Path, scratch: Path) -> None:
    """A store with a backup in it: after the benchmark, the same objects and directories,
    though it put several objects in, and nothing left in the temporary directory."""
    source = home.parent / "source"
    source.mkdir()
    (source / "file.txt").write_text("kept\n")
    engine.create("kept", [source], passcode="benchmark-test-passcode")
    store = engine.store()
    objects, directories = store.list(""), tree_of(Path(store.root))

    report = measure(engine, size=3 * SMALL_CHUNK + 1, seconds=0.001, files=3)

    assert [(m.stage, m.count) for m in report.stages[:2]] == [("put", 4), ("get", 4)]
    assert store.list("") == objects
    assert tree_of(Path(store.root)) == directories
    assert not tree_of(scratch)


class Recording(SQLiteStore):
    """Records every key and prefix the benchmark hands the store."""

    def __init__(self, database: Path) -> None:
        super().__init__("recorded", f"sqlite://{database}", database)
        self.seen: list[str] = []

    def put(
        self,
        key: str,
        data: bytes | bytearray | memoryview,
        *,
        overwrite: bool = False,
        retain_until: datetime | None = None,
    ) -> None:
        self.seen.append(key)
        super().put(key, data, overwrite=overwrite)

    def list(self, prefix: str) -> builtins.list[ObjectInfo]:
        self.seen.append(prefix)
        return super().list(prefix)

    def delete(self, keys: builtins.list[str]) -> None:
        self.seen.extend(keys)
        super().delete(keys)


def test_only_its_own_fresh_prefix_is_written_listed_or_deleted(tmp_path: Path) -> None:
    store = Recording(tmp_path / "objects.db")
    engine = Engine(stores=[store], kdf=FAST_KDF, chunk_size=SMALL_CHUNK)
    measure(engine, "recorded", size=2 * SMALL_CHUNK, seconds=0.001, files=1)
    first = store.seen[0]
    prefix = first[: first.rindex("/") + 1]
    assert prefix.startswith("probes/benchmark-")
    assert all(key.startswith(prefix) for key in store.seen)
    measure(engine, "recorded", size=SMALL_CHUNK, seconds=0.001, files=1)
    assert not store.seen[-1].startswith(prefix)  # a new prefix for each run


class Failing(SQLiteStore):
    """A store that fails one operation (`put` after two objects, `get`, or `list`) with
    a given exception, and already holds an object of someone else's."""

    def __init__(self, database: Path, operation: str, failure: BaseException) -> None:
        SQLiteStore("seed", "sqlite://seed", database).put("data/someone/else", b"theirs")
        super().__init__("failing", f"sqlite://{database}", database)
        self.operation, self.failure = operation, failure
        self.written: list[str] = []
        self._lock = threading.Lock()

    def put(
        self,
        key: str,
        data: bytes | bytearray | memoryview,
        *,
        overwrite: bool = False,
        retain_until: datetime | None = None,
    ) -> None:
        with self._lock:
            if self.operation == "put" and len(self.written) == 2:
                raise self.failure
            self.written.append(key)
        super().put(key, data, overwrite=overwrite)

    def get(self, key: str, *, limit: int | None = None) -> bytes:
        if self.operation == "get":
            raise self.failure
        return super().get(key, limit=limit)

    def list(self, prefix: str) -> builtins.list[ObjectInfo]:
        if self.operation == "list" and prefix:  # the tests' own listing of everything works
            raise self.failure
        return super().list(prefix)


class Interrupting(Failing):
    """A store during whose third put the person presses Ctrl-C: a real SIGINT, which
    interrupts the main thread wherever it waits."""

    def put(
        self,
        key: str,
        data: bytes | bytearray | memoryview,
        *,
        overwrite: bool = False,
        retain_until: datetime | None = None,
    ) -> None:
        super().put(key, data, overwrite=overwrite)
        if key.endswith("/0000000002"):
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.parametrize(
    ("operation", "failure"),
    [
        ("put", StoreUnavailableError("the disk is full")),
        ("get", KeyboardInterrupt()),
        ("list", RuntimeError("a bug in a backend")),
    ],
    ids=["put-fails", "ctrl-c-in-get", "list-raises"],
)
def test_a_failure_still_removes_what_it_wrote(
    tmp_path: Path, operation: str, failure: BaseException
) -> None:
    store = Failing(tmp_path / "objects.db", operation, failure)
    before = store.list("")
    engine = Engine(stores=[store], kdf=FAST_KDF, chunk_size=SMALL_CHUNK)
    with pytest.raises(type(failure)):
        measure(engine, "failing", size=8 * SMALL_CHUNK, seconds=0.001, files=1)
    assert len(store.written) >= 2  # it had written objects
    assert store.list("") == before


def test_a_failing_store_is_one_line_and_exit_4(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Failing(tmp_path / "objects.db", "put", StoreUnavailableError("Store is full."))
    before = store.list("")
    _use_engine(monkeypatch, Engine(stores=[store], kdf=FAST_KDF, chunk_size=SMALL_CHUNK))
    outcome = cli("benchmark", "--store", "failing", *TINY)
    assert outcome.code == 4
    assert outcome.error_line == "strongroom: error: Store is full."
    assert len(store.written) == 2
    assert store.list("") == before


def test_ctrl_c_exits_130_and_removes_what_it_wrote(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Interrupting(tmp_path / "objects.db", "none", RuntimeError())
    before = store.list("")
    _use_engine(monkeypatch, Engine(stores=[store], kdf=FAST_KDF, chunk_size=SMALL_CHUNK))
    outcome = cli("benchmark", "--store", "failing", *TINY)
    assert outcome.code == 130
    assert outcome.err.startswith("strongroom: interrupted")
    assert len(store.written) >= 3
    assert store.list("") == before


def _use_engine(monkeypatch: pytest.MonkeyPatch, engine: Engine) -> None:
    """Have the command use `engine`, which knows a store no configuration can name."""
    monkeypatch.setattr("strongroom.cli.Engine", lambda: engine)


def test_a_store_that_cannot_be_written_is_refused(cli: Cli, tmp_path: Path) -> None:
    directory = tmp_path / "store"
    assert cli("stores", "add", "broken", directory.as_uri()).code == 0
    blocker = directory / PROBE_PREFIX.rstrip("/")
    blocker.write_text("")  # a file where the benchmark's directory belongs
    outcome = cli("benchmark", "--store", "broken", *TINY)
    assert outcome.code == 4
    assert "stores validate broken" in outcome.error_line
    assert blocker.read_text() == ""


@pytest.mark.parametrize(
    ("option", "value", "code"),
    [
        ("--size", "0", 3),
        ("--seconds", "0", 3),
        ("--seconds", "nan", 3),
        ("--seconds", "inf", 3),
        ("--size", "nan", 2),
        ("--size", "lots", 2),
    ],
)
def test_nothing_to_measure_is_an_error_before_any_work(
    cli: Cli, home: Path, option: str, value: str, code: int
) -> None:
    outcome = cli("benchmark", option, value)
    assert outcome.code == code
    assert "must be finite and above 0" in outcome.err or "is not a number of MiB" in outcome.err
    assert not home.exists()
