"""The `strongroom` command-line contract: commands, --json shapes, exit codes, secrets.

Most tests call `strongroom.cli.main` in-process; a few run the installed script in a
subprocess. Backups that the CLI only reads are made with the fast test engine (the
manifest carries its cheap KDF parameters); `create` through the CLI uses the default,
slow Argon2 parameters and is kept to a handful of calls.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import pty
import re
import shutil
import socket
import stat
import subprocess
import sys
import tarfile
import time
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import pytest

import strongroom.scheduler
from strongroom import ConfigError, Engine, StoresConfig, StoreSpec, StoreUnavailableError
from strongroom.cli import main
from strongroom.web.auth import add_token, configured_hashes, hash_token
from strongroom.web.serve import _listen
from tests.conftest import (
    FAST_KDF,
    SMALL_CHUNK,
    MountTables,
    change_after_open,
    snapshot,
    write_key_secrets,
)
from tests.forge import entry, forge_backup, tar_of

#: The passcode of every backup here; it must never appear in any output.
PASSCODE = "Cli-Passc0de-that-must-never-print"
WRONG_PASSCODE = "Another-passc0de-also-secret"
SECRETS = (PASSCODE, WRONG_PASSCODE)
DAY_MS = 24 * 60 * 60 * 1000
STRONGROOM = Path(sys.executable).with_name("strongroom")


@dataclass(frozen=True)
class Outcome:
    """One command's exit code and captured output."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    @property
    def error_line(self) -> str:
        """The single `strongroom: error: ...` line a failing command prints."""
        lines = self.err.splitlines()
        assert len(lines) == 1, self.err
        assert lines[0].startswith("strongroom: error: "), self.err
        return lines[0]


class Cli:
    """Runs `strongroom.cli.main` in-process and checks no secret ever reaches the output."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self._capsys = capsys

    def __call__(self, *args: str | Path) -> Outcome:
        self._capsys.readouterr()
        try:
            code = main([str(arg) for arg in args])
        except SystemExit as exit_:  # argparse rejects the command line
            code = exit_.code if isinstance(exit_.code, int) else 1
        captured = self._capsys.readouterr()
        outcome = Outcome(code, captured.out, captured.err)
        _assert_no_secrets(outcome)
        return outcome


def _assert_no_secrets(outcome: Outcome) -> None:
    for secret in SECRETS:
        assert secret not in outcome.out
        assert secret not in outcome.err


def now_ms() -> int:
    return int(time.time() * 1000)


@pytest.fixture
def cli(home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    """The CLI with a non-terminal stdin, so it never prompts."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    return Cli(capsys)


@pytest.fixture
def passcode_file(tmp_path: Path) -> Path:
    path = tmp_path / "passcode.txt"
    path.write_text(PASSCODE + "\n", encoding="utf-8")
    return path


@pytest.fixture
def fast() -> Engine:
    """A cheap-KDF engine for backups the CLI then reads (config is read at construction)."""
    return Engine(kdf=FAST_KDF, chunk_size=SMALL_CHUNK)


@pytest.fixture
def small(tmp_path: Path) -> Path:
    """A small source directory: two files and a subdirectory."""
    root = tmp_path / "small" / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("alpha\n")
    (root / "sub" / "b.txt").write_text("bravo\n" * 1000)
    return root


@pytest.fixture
def backup(home: Path, fast: Engine, small: Path) -> str:
    """A committed backup `kept` of `small`, made through the API with PASSCODE."""
    fast.create("kept", [small], passcode=PASSCODE, description="made by the API")
    return "kept"


def _default_store(home: Path) -> Path:
    return home / "stores" / "backupsDefault"


def _chunk_paths(store: Path, name: str) -> list[Path]:
    return sorted(p for p in (store / "data" / name).rglob("*") if p.is_file())


# -- the whole life of a backup -----------------------------------------------------------


def test_backup_lifecycle(
    cli: Cli,
    home: Path,
    tree: Path,
    tmp_path: Path,
    passcode_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """create → list → info → verify → restore → update → cleanup --dry-run → cleanup → delete."""
    retention = now_ms() + DAY_MS
    before = now_ms()
    created = cli(
        "create", "--name", "first", "--description", "nightly db", "--retention-date",
        str(retention), "--passcode-file", passcode_file, "--json", tree,
    )  # fmt: skip
    after = now_ms()
    assert created.code == 0, created.err
    first = created.json()
    assert first["name"] == "first"
    assert first["description"] == "nightly db"
    assert first["backupStore"] == "backupsDefault"
    assert before - 1000 <= first["completeTime"] <= after + 1000
    assert first["retentionDate"] == retention
    assert (first["backupType"], first["scheduleType"], first["status"]) == (
        "FULL", "MANUAL", "COMPLETED",
    )  # fmt: skip
    files = sum(p.stat().st_size for p in tree.rglob("*") if p.is_file() and not p.is_symlink())
    assert first["sourceSize"] >= files
    stored = _chunk_paths(_default_store(home), "first")
    assert first["storedSize"] == sum(p.stat().st_size for p in stored) > 0

    monkeypatch.setenv("STRONGROOM_PASSCODE", PASSCODE)
    second = cli("create", "--name", "second", "--json", tree)
    assert second.code == 0, second.err
    assert second.json()["retentionDate"] == -1  # never, as ArcGIS writes it
    assert second.json()["description"] == ""
    assert "STRONGROOM_PASSCODE" not in os.environ, "taken out: no child process gets it"

    listing = cli("list", "--json")
    assert listing.code == 0
    assert listing.json() == {"backups": [first, second.json()], "unreadable": []}
    table = cli("list")
    assert table.out.splitlines()[0].split()[:2] == ["NAME", "CREATED"]
    assert "nightly db" in table.out and "second" in table.out

    info = cli("info", "first", "--json")
    assert info.code == 0
    assert info.json() == first
    plain = cli("info", "first")
    assert any(line.split() == ["name", "first"] for line in plain.out.splitlines())
    assert f"sourceSize     {first['sourceSize'] / 1e3:.1f} kB" in plain.out.splitlines()
    assert f"storedSize     {first['storedSize'] / 1e3:.1f} kB" in plain.out.splitlines()

    verified = cli("verify", "first", "--passcode-file", passcode_file)
    assert verified.code == 0, verified.err
    assert verified.out.startswith("first: OK")

    full = tmp_path / "restored-full"
    restored = cli("restore", "first", "--target", full, "--passcode-file", passcode_file)
    assert restored.code == 0, restored.err
    assert str(full) in restored.out
    assert snapshot(full / tree.name) == snapshot(tree)

    part = tmp_path / "restored-part"
    selected = cli(
        "restore", "first", f"{tree.name}/big.bin", f"{tree.name}/nested/deeper",
        "--target", part, "--passcode-file", passcode_file,
    )  # fmt: skip
    assert selected.code == 0, selected.err
    got = {str(p.relative_to(part)) for p in part.rglob("*") if not p.is_dir()}
    assert got == {f"{tree.name}/big.bin", f"{tree.name}/nested/deeper/notes.md"}
    assert (part / tree.name / "big.bin").read_bytes() == (tree / "big.bin").read_bytes()

    later = retention + DAY_MS
    updated = cli("update", "first", "--retention-date", str(later))
    assert updated.code == 0, updated.err
    assert cli("info", "first", "--json").json()["retentionDate"] == later

    as_of = str(later + DAY_MS)
    dry = cli("cleanup", "--store", "backupsDefault", "--dry-run", "--as-of", as_of, "--json")
    assert dry.code == 0, dry.err
    assert dry.json() == {
        "asOf": int(as_of),
        "errors": [],
        "dryRun": True,
        "kept": 1,
        "waiting": 0,
        "backups": [
            {
                "backupStore": "backupsDefault",
                "name": "first",
                "retentionDate": later,
                "action": "would delete",
                "message": "",
            }
        ],
    }
    dry_table = cli("cleanup", "--dry-run", "--as-of", as_of)
    assert "would delete" in dry_table.out
    assert "1 would delete as of" in dry_table.out and "1 kept" in dry_table.out
    assert [b["name"] for b in cli("list", "--json").json()["backups"]] == ["first", "second"]

    early = cli("cleanup", "--dry-run", "--as-of", str(later - 1), "--json")
    assert early.json()["backups"] == [] and early.json()["kept"] == 2
    as_date = datetime.fromtimestamp(int(as_of) / 1000, UTC).isoformat()
    assert cli("cleanup", "--dry-run", "--as-of", as_date, "--json").json() == dry.json()
    ahead = cli("cleanup", "--as-of", as_of)  # looking ahead never deletes
    assert ahead.code == 2 and "use it with --dry-run" in ahead.err

    year_ago = datetime.now(UTC) - timedelta(days=365)  # a backup that expired long ago
    Engine(kdf=FAST_KDF, chunk_size=SMALL_CHUNK, clock=lambda: year_ago).create(
        "expired", [tree], passcode=PASSCODE, retention_date=now_ms() - 300 * DAY_MS
    )
    cleaned = cli("cleanup", "--json")
    assert cleaned.code == 0, cleaned.err
    assert [(e["name"], e["action"]) for e in cleaned.json()["backups"]] == [("expired", "deleted")]
    assert [b["name"] for b in cli("list", "--json").json()["backups"]] == ["first", "second"]
    assert _chunk_paths(_default_store(home), "expired") == []

    deleted = cli("delete", "second")
    assert deleted.code == 0
    assert "Deleted second" in deleted.out
    assert [b["name"] for b in cli("list", "--json").json()["backups"]] == ["first"]
    assert cli("info", "second").code == 5


# -- where the passcode comes from --------------------------------------------------------


@pytest.mark.parametrize(
    "given",
    [
        ["--passcode", "Typed-Secret-123"],
        ["--passcode=Typed-Secret-123"],
        ["--password", "Typed-Secret-123"],
        ["--pass", "Typed-Secret-123"],
        ["-passcode", "Typed-Secret-123"],
        ["--Passcode", "Typed-Secret-123"],
        ["--PASSWORD=Typed-Secret-123"],
        ["--pass_word=Typed-Secret-123"],
        ["--pw", "Typed-Secret-123"],
    ],
)
def test_a_passcode_given_as_an_argument_is_refused_without_printing_it(
    cli: Cli, backup: str, given: list[str]
) -> None:
    """`--passcode X` was taken for an abbreviation of --passcode-file, and the error
    printed X ('Cannot read the passcode file X') to stderr, cron mail and CI logs."""
    outcome = cli("ls", backup, *given)
    assert outcome.code == 2
    assert "Typed-Secret-123" not in outcome.out + outcome.err
    assert "never given as an argument" in outcome.error_line


def test_what_may_be_a_passcode_is_not_printed_among_unrecognized_arguments(
    cli: Cli, backup: str, passcode_file: Path
) -> None:
    """A mistyped option's value (a passcode after --pascode) is not echoed; --passcode-file
    and the abbreviations argparse takes for it work; after `--` every argument is a path."""
    for mistyped in (["--pascode", "Typed-Secret-123"], ["--pascode=Typed-Secret-123"]):
        outcome = cli("list", *mistyped)
        assert outcome.code == 2 and "Typed-Secret-123" not in outcome.out + outcome.err
        assert "unrecognized arguments: --pascode" in outcome.err
    assert "unrecognized arguments: nosuch" in cli("list", "nosuch").err  # a plain one is
    for option in ("--passcode-file", "--passcode-fil", "--passcode-f"):
        assert cli("ls", backup, option, passcode_file).code == 0
    path_after = cli("ls", backup, "--passcode-file", passcode_file, "--", "--pass")
    assert (path_after.code, path_after.error_line) == (
        3,
        f"strongroom: error: Not in backup {backup!r}: --pass.",
    )


def test_the_passcode_from_the_environment_reaches_no_child_process(
    cli: Cli, backup: str, passcode_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process started while a command runs (a cloud SDK's credential_process, `az`)
    inherited STRONGROOM_PASSCODE: the command takes it out of its environment before
    anything runs, whether it reads it (ls), takes the passcode from a file, or needs none
    (list)."""
    seen: list[str] = []
    listed, listing = Engine.ls, Engine.listing

    def child() -> None:
        seen.append(subprocess.run(["env"], capture_output=True, text=True, check=True).stdout)

    def ls(self: Engine, *args: Any, **kwargs: Any) -> Any:
        child()
        return listed(self, *args, **kwargs)

    def spy(self: Engine, *args: Any, **kwargs: Any) -> Any:
        child()
        return listing(self, *args, **kwargs)

    monkeypatch.setattr(Engine, "ls", ls)
    monkeypatch.setattr(Engine, "listing", spy)
    for command in (["ls", backup], ["ls", backup, "--passcode-file", passcode_file], ["list"]):
        monkeypatch.setenv("STRONGROOM_PASSCODE", PASSCODE)
        outcome = cli(*command)
        assert outcome.code == 0, outcome.err
    assert len(seen) == 3 and not [env for env in seen if PASSCODE in env]


def test_passcode_file_takes_precedence_over_environment(
    cli: Cli, backup: str, passcode_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--passcode-file wins over STRONGROOM_PASSCODE; the environment alone also works."""
    monkeypatch.setenv("STRONGROOM_PASSCODE", WRONG_PASSCODE)
    assert cli("verify", backup, "--passcode-file", passcode_file).code == 0
    monkeypatch.setenv("STRONGROOM_PASSCODE", WRONG_PASSCODE)  # each command takes it out
    wrong = cli("verify", backup)
    assert wrong.code == 7
    assert "does not open this backup" in wrong.error_line
    monkeypatch.setenv("STRONGROOM_PASSCODE", PASSCODE)
    assert cli("verify", backup).code == 0


def test_unreadable_passcode_file_is_a_passcode_error(
    cli: Cli, backup: str, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-file"
    outcome = cli("verify", backup, "--passcode-file", missing)
    assert outcome.code == 7
    assert str(missing) in outcome.error_line


def test_non_utf8_passcode_file_is_a_passcode_error(cli: Cli, backup: str, tmp_path: Path) -> None:
    binary = tmp_path / "binary-passcode"
    binary.write_bytes(b"\xff\xfe not utf-8 \xff")
    assert cli("verify", backup, "--passcode-file", binary).code == 7


def test_passcode_file_first_line_is_the_passcode(cli: Cli, backup: str, tmp_path: Path) -> None:
    annotated = tmp_path / "annotated-passcode"
    annotated.write_text(f"{PASSCODE}\n# rotated 2024-01-01\n", encoding="utf-8")
    assert cli("verify", backup, "--passcode-file", annotated).code == 0


@pytest.mark.parametrize("command", ["create", "verify", "restore"])
def test_no_passcode_and_no_terminal_is_exit_7(
    cli: Cli, backup: str, small: Path, tmp_path: Path, command: str
) -> None:
    """Without a file, the environment or a terminal to prompt on, nothing happens."""
    target = tmp_path / "never-created"
    args: dict[str, list[str | Path]] = {
        "create": ["create", "--name", "new", small],
        "verify": ["verify", backup],
        "restore": ["restore", backup, "--target", target],
    }
    outcome = cli(*args[command])
    assert outcome.code == 7
    assert outcome.out == ""
    assert "--passcode-file" in outcome.error_line
    assert "STRONGROOM_PASSCODE" in outcome.error_line
    assert not target.exists()
    assert [b["name"] for b in cli("list", "--json").json()["backups"]] == [backup]


def test_short_passcode_is_refused(cli: Cli, small: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRONGROOM_PASSCODE", "short")
    outcome = cli("create", "--name", "tiny", small)
    assert outcome.code == 7
    assert "at least 8 characters" in outcome.error_line
    assert "short" not in outcome.err
    assert cli("list", "--json").json() == {"backups": [], "unreadable": []}


def test_an_empty_store_lists_as_a_sentence(cli: Cli) -> None:
    listing = cli("list")
    assert listing.code == 0
    assert listing.out == "No backups in store backupsDefault.\n"
    assert cli("list", "--json").json() == {"backups": [], "unreadable": []}


def test_a_manifest_that_does_not_read_fails_the_list_after_the_rest(
    cli: Cli, home: Path, fast: Engine, backup: str, small: Path
) -> None:
    """A damaged store must not look like a complete one, to a person or to a script."""
    fast.create("damaged", [small], passcode=PASSCODE)
    manifest = _default_store(home) / "manifests" / "damaged"
    manifest.write_bytes(b"not a manifest")

    listing = cli("list")
    assert listing.code == 8
    assert listing.out.splitlines()[1].startswith(backup)
    assert "damaged" not in listing.out
    assert "1 backup(s) in store backupsDefault are not listed" in listing.error_line
    assert "are not listed because their manifest does not read: damaged." in listing.err
    document = cli("list", "--json")
    assert document.code == 8
    assert [b["name"] for b in document.json()["backups"]] == [backup]
    assert [u["name"] for u in document.json()["unreadable"]] == ["damaged"]
    assert "'strongroom delete NAME --unreadable' deletes one" in listing.err
    info = cli("info", "damaged")
    assert info.code == 8 and "--store backupsDefault --unreadable'" in info.error_line

    deleted = cli("delete", "damaged", "--unreadable")
    assert deleted.code == 0, deleted.err
    assert "a cleanup removes its data once that is a day old" in deleted.out
    assert cli("list").code == 0
    refused = cli("delete", backup, "--unreadable")
    assert refused.code == 3 and "reads; delete it without --unreadable" in refused.error_line
    (_default_store(home) / "manifests" / backup).write_bytes(b"{}")
    only_damaged = cli("list")
    assert only_damaged.code == 8
    assert only_damaged.out == "No readable backups in store backupsDefault.\n"


def test_an_empty_passcode_says_where_it_came_from(
    cli: Cli, small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An empty variable or file is a mistake in the setup, not a passcode that is short."""
    monkeypatch.setenv("STRONGROOM_PASSCODE", "")
    from_env = cli("create", "--name", "tiny", small)
    assert from_env.code == 7
    assert "STRONGROOM_PASSCODE is set but empty" in from_env.error_line
    empty = tmp_path / "empty-passcode"
    empty.write_text("\nsecond line\n", encoding="utf-8")
    from_file = cli("create", "--name", "tiny", "--passcode-file", empty, small)
    assert from_file.code == 7
    assert "empty first line" in from_file.error_line
    assert cli("list", "--json").json() == {"backups": [], "unreadable": []}


@pytest.mark.parametrize(
    "url",
    ["sftp://backup:hunter2@nas/srv", "ftp://u:hunter2@host:99999/x", "smb://u:hunter2@[::1/s"],
)
def test_a_password_in_a_store_url_is_refused_and_never_shown(
    home: Path, cli: Cli, url: str
) -> None:
    """Attack on confidentiality: a password in the URL would sit in config.toml, and show
    in every repr, error, job message and store listing that shows the URL."""
    with pytest.raises(ConfigError, match="password=env:VARIABLE") as refused:
        StoreSpec("nas", url)
    assert "hunter2" not in str(refused.value)
    added = cli("stores", "add", "nas", url)
    assert added.code == ConfigError.exit_code and "hunter2" not in added.out + added.err
    assert "nas" not in StoresConfig.load().stores
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text(f'[stores.nas]\nurl = "{url}"\n', encoding="utf-8")
    listed = cli("stores", "list")
    assert listed.code == ConfigError.exit_code and "hunter2" not in listed.out + listed.err
    assert "config.toml" in listed.err and "options = { password" in listed.err
    assert StoreSpec("nas", "sftp://backup@nas/srv").url == "sftp://backup@nas/srv"  # a user


# -- exit codes -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../evil", "has space", "a/b", ".hidden", "x" * 129, "a..b"])
def test_bad_backup_names_are_config_errors(
    cli: Cli, small: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv("STRONGROOM_PASSCODE", PASSCODE)
    outcome = cli("create", "--name", name, small)
    assert outcome.code == 3
    assert "not a valid backup name" in outcome.error_line
    assert cli("info", name).code == 3
    assert cli("list", "--json").json() == {"backups": [], "unreadable": []}


@pytest.mark.parametrize("value", ["1", "tomorrow", "1.7e12", "-5", "", "12ms"])
def test_bad_retention_dates_are_config_errors(
    cli: Cli, backup: str, small: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """A retentionDate must be whole epoch milliseconds in the future, for create and update."""
    monkeypatch.setenv("STRONGROOM_PASSCODE", PASSCODE)
    created = cli("create", "--name", "dated", "--retention-date", value, small)
    assert created.code == 3
    assert "retentionDate" in created.error_line
    updated = cli("update", backup, "--retention-date", value)
    assert updated.code == 3
    assert cli("info", backup, "--json").json()["retentionDate"] == -1
    assert [b["name"] for b in cli("list", "--json").json()["backups"]] == [backup]


def test_retention_dates_as_people_write_them(
    cli: Cli, backup: str, small: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ISO 8601 dates and times (UTC unless they say), a number of days, and never."""
    monkeypatch.setenv("STRONGROOM_PASSCODE", PASSCODE)
    year = datetime.now(UTC).year + 2
    dated = cli("create", "--name", "dated", "--retention-date", f"{year}-01-31", "--json", small)
    assert dated.code == 0, dated.err
    assert dated.json()["retentionDate"] == int(
        datetime(year, 1, 31, tzinfo=UTC).timestamp() * 1000
    )
    for value, moment in [
        (f"{year}-01-31T02:00Z", datetime(year, 1, 31, 2, tzinfo=UTC)),
        (f"{year}-01-31T02:00+02:00", datetime(year, 1, 31, 0, tzinfo=UTC)),
        (f"{year}-01-31 02:00", datetime(year, 1, 31, 2, tzinfo=UTC)),
    ]:
        updated = cli("update", backup, "--retention-date", value)
        assert updated.code == 0, updated.err
        assert f"{moment:%Y-%m-%d %H:%M:%S} UTC" in updated.out, "printed in UTC, as stored"
        expected = int(moment.timestamp() * 1000)
        assert cli("info", backup, "--json").json()["retentionDate"] == expected
    kept = cli("update", backup, "--keep-days", "14")
    assert kept.code == 0, kept.err
    in_14_days = cli("info", backup, "--json").json()["retentionDate"] - now_ms()
    assert 14 * DAY_MS - 60_000 < in_14_days <= 14 * DAY_MS
    for never in ("never", "-1"):
        cleared = cli("update", backup, "--retention-date", never)
        assert cleared.code == 0, cleared.err
        assert "retentionDate is now never" in cleared.out
        assert cli("info", backup, "--json").json()["retentionDate"] == -1
    both = cli("update", backup, "--keep-days", "1", "--retention-date", "never")
    assert both.code == 2
    assert cli("update", backup).code == 2  # one of them is required


def test_control_characters_from_a_store_never_reach_the_terminal(
    cli: Cli, fast: Engine, small: Path
) -> None:
    """Attack: `list` needs no passcode, and whoever can write to the store can plant a
    description; an escape sequence in it would drive the operator's terminal."""
    fast.create("planted", [small], passcode=PASSCODE, description="\x1b]0;owned\x07\nfake row")
    for outcome in (cli("list"), cli("info", "planted")):
        assert outcome.code == 0, outcome.err
        assert "\x1b" not in outcome.out and "\x07" not in outcome.out
        assert "fake row" not in outcome.out.splitlines()
        assert "\\x1b]0;owned\\x07\\nfake row" in outcome.out


def test_a_path_ls_prints_can_be_given_back_to_it(
    cli: Cli, tmp_path: Path, passcode_file: Path
) -> None:
    """Printed as it is, a name with a backslash can be pasted back to ls or restore."""
    source = tmp_path / "odd"
    source.mkdir()
    (source / "back\\slash").write_text("b\n")
    assert cli("create", "--name", "odd", "--passcode-file", passcode_file, source).code == 0
    printed = cli("ls", "odd", "--passcode-file", passcode_file).out.split()
    assert printed == ["odd", "odd/back\\slash"]
    again = cli("ls", "odd", "--passcode-file", passcode_file, printed[1])
    assert (again.code, again.out.split()) == (0, [printed[1]]), again.err


def test_a_retention_date_in_seconds_is_recognised(cli: Cli, backup: str) -> None:
    seconds = now_ms() // 1000 + 86_400
    outcome = cli("update", backup, "--retention-date", str(seconds))
    assert outcome.code == 3
    assert f"give {seconds * 1000}" in outcome.error_line and "counts seconds" in outcome.error_line


def test_retention_date_just_past_is_refused(cli: Cli, backup: str) -> None:
    outcome = cli("update", backup, "--retention-date", str(now_ms() - 1000))
    assert outcome.code == 3
    assert "in the past" in outcome.error_line


@pytest.mark.parametrize(
    "args",
    [
        ["update", "kept", "--retention-date", "²"],
        ["update", "kept", "--retention-date", "99999999999999999999"],
        ["cleanup", "--dry-run", "--as-of", "²"],
        ["cleanup", "--dry-run", "--as-of", "99999999999999999999"],
    ],
    ids=["update-superscript", "update-huge", "cleanup-superscript", "cleanup-huge"],
)
def test_unparseable_epoch_ms_is_a_config_error(cli: Cli, backup: str, args: list[str]) -> None:
    """Digits int() rejects, or a moment no datetime holds, are exit 3, not a traceback."""
    outcome = cli(*args)
    assert outcome.code == 3
    assert re.search(
        "whole number of milliseconds|neither epoch milliseconds|after the year 9999",
        outcome.error_line,
    )
    assert "as_of" not in outcome.error_line, "the option is named as it is typed"


def test_missing_backup_is_exit_5(cli: Cli, tmp_path: Path, passcode_file: Path) -> None:
    target = tmp_path / "target"
    for args in (
        ["info", "ghost"],
        ["verify", "ghost", "--passcode-file", passcode_file],
        ["restore", "ghost", "--target", target, "--passcode-file", passcode_file],
        ["delete", "ghost"],
        ["update", "ghost", "--retention-date", str(now_ms() + DAY_MS)],
    ):
        outcome = cli(*args)
        assert outcome.code == 5, args
        assert "No backup named 'ghost'" in outcome.error_line
    assert not target.exists()


def test_existing_backup_is_exit_6_and_untouched(
    cli: Cli, backup: str, tree: Path, passcode_file: Path
) -> None:
    before = cli("info", backup, "--json").json()
    outcome = cli("create", "--name", backup, "--passcode-file", passcode_file, tree)
    assert outcome.code == 6
    assert "already exists" in outcome.error_line
    assert cli("info", backup, "--json").json() == before
    assert cli("verify", backup, "--passcode-file", passcode_file).code == 0


def test_tampered_backup_is_exit_8(
    cli: Cli, home: Path, backup: str, tmp_path: Path, passcode_file: Path
) -> None:
    chunk = _chunk_paths(_default_store(home), backup)[0]
    sealed = bytearray(chunk.read_bytes())
    sealed[len(sealed) // 2] ^= 0x01
    chunk.write_bytes(sealed)
    verified = cli("verify", backup, "--passcode-file", passcode_file)
    assert verified.code == 8
    assert "failed authentication" in verified.error_line
    target = tmp_path / "restore-here"
    restored = cli("restore", backup, "--target", target, "--passcode-file", passcode_file)
    assert restored.code == 8
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir() if "restore-here" in p.name] == []


def test_unsafe_archive_is_exit_10(
    cli: Cli, home: Path, tmp_path: Path, passcode_file: Path
) -> None:
    """A member through a link the backup made is refused on restore; the rest can be
    restored by name. (An absolute link alone is data, restored as it is.)"""
    members = [
        (entry("root/fine.txt"), b"fine\n"),
        (entry("root/escape", tarfile.SYMTYPE, "/etc"), b""),
        (entry("root/escape/passwd"), b"pwned\n"),
    ]
    forge_backup(home / "stores" / "backupsDefault", "unsafe", PASSCODE, tar_of(members))

    target = tmp_path / "unsafe-target"
    refused = cli("restore", "unsafe", "--target", target, "--passcode-file", passcode_file)
    assert refused.code == 10
    assert "root/escape/passwd" in refused.error_line
    assert not target.exists()
    partial = cli(
        "restore", "unsafe", "root/fine.txt", "--target", target, "--passcode-file", passcode_file
    )
    assert partial.code == 0, partial.err
    assert (target / "root" / "fine.txt").read_text() == "fine\n"
    assert not (target / "root" / "escape").exists()


def test_restore_paths_after_options(
    cli: Cli, backup: str, tmp_path: Path, passcode_file: Path
) -> None:
    """PATHs may follow the options, as in the usage line."""
    target = tmp_path / "target"
    outcome = cli(
        "restore", backup, "--target", target, "--passcode-file", passcode_file, "docs/a.txt"
    )
    assert outcome.code == 0
    assert [p.name for p in (target / "docs").iterdir()] == ["a.txt"]


def test_paths_after_options_and_a_double_dash_may_start_with_a_dash(
    cli: Cli, tmp_path: Path, passcode_file: Path
) -> None:
    """`--` ends the options wherever it stands, as the usage lines show them: a name that
    starts with a dash is a path after it, for `restore` and `ls` alike."""
    source = tmp_path / "-weird"
    source.mkdir()
    (source / "f").write_text("dashed\n")
    (source / "g").write_text("not asked for\n")
    made = cli("create", "--name", "dash", "--passcode-file", passcode_file, "--", source)
    assert made.code == 0, made.err
    listed = cli("ls", "dash", "--passcode-file", passcode_file, "--", "-weird/f")
    assert (listed.code, listed.out.split()) == (0, ["-weird/f"]), listed.err
    target = tmp_path / "target"
    restored = cli(
        "restore", "dash", "--target", target, "--passcode-file", passcode_file, "--", "-weird/f"
    )
    assert restored.code == 0, restored.err
    assert [p.name for p in (target / "-weird").iterdir()] == ["f"]
    refused = cli("restore", "dash", "--target", target, "--bogus", "--", "-weird/f")
    assert refused.code == 2 and "unrecognized arguments: --bogus" in refused.err
    assert refused.err.startswith("usage: strongroom restore "), "the command's own usage"
    empty = cli("restore", "dash", "--target", "", "--passcode-file", passcode_file)
    assert empty.code == 3 and "The restore target is empty" in empty.error_line


def test_restore_argument_errors_are_exit_3(
    cli: Cli, backup: str, tmp_path: Path, passcode_file: Path
) -> None:
    """A path not in the backup, or a non-empty target, restores nothing."""
    target = tmp_path / "target"
    absent = cli(
        "restore", backup, "docs/nope", "--target", target, "--passcode-file", passcode_file
    )
    assert absent.code == 3
    assert "docs/nope" in absent.error_line
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".target")] == []

    target.mkdir()
    (target / "keep.txt").write_text("mine")
    occupied = cli("restore", backup, "--target", target, "--passcode-file", passcode_file)
    assert occupied.code == 3
    assert "not empty" in occupied.error_line
    assert [p.name for p in target.iterdir()] == ["keep.txt"]

    a_file = tmp_path / "a-file"
    a_file.write_text("")
    not_a_dir = cli("restore", backup, "--target", a_file, "--passcode-file", passcode_file)
    assert not_a_dir.code == 3
    assert "not a directory" in not_a_dir.error_line


def test_a_local_file_that_cannot_be_used_is_exit_12(
    cli: Cli, backup: str, tmp_path: Path, passcode_file: Path
) -> None:
    """A restore target under a regular file: one line naming the path, no traceback."""
    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    before = sorted(tmp_path.iterdir())
    outcome = cli("restore", backup, "--target", a_file / "sub", "--passcode-file", passcode_file)
    assert outcome.code == 12
    assert f"cannot use {a_file}: it is not a directory." in outcome.error_line
    assert a_file.read_text() == "mine"
    assert sorted(tmp_path.iterdir()) == before


def test_a_full_disk_during_restore_names_the_target(
    cli: Cli, backup: str, tmp_path: Path, passcode_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed write carries no file name; the error line still says where. (Files are
    written on this thread here, so the failure can be injected.)"""

    def disk_full(*_args: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("strongroom.smallfiles.MAX_HELPERS", 0)
    monkeypatch.setattr("strongroom.smallfiles.write_file", disk_full)
    target = tmp_path / "restored"
    outcome = cli("restore", backup, "--target", target, "--passcode-file", passcode_file)
    assert outcome.code == 12
    assert f"cannot use {target}: No space left on device" in outcome.error_line
    assert not target.exists()


def test_missing_source_and_unknown_store_are_exit_3(
    cli: Cli, tmp_path: Path, passcode_file: Path
) -> None:
    missing = cli("create", "--name", "x", "--passcode-file", passcode_file, tmp_path / "nope")
    assert missing.code == 3
    assert "does not exist" in missing.error_line
    unknown = cli("list", "--store", "nowhere")
    assert unknown.code == 3
    assert "stores add nowhere" in unknown.error_line
    twice = cli("create", "--name", "x", "--passcode-file", passcode_file, tmp_path, tmp_path)
    assert twice.code == 3
    assert "is given twice" in twice.error_line


def test_version(cli: Cli) -> None:
    outcome = cli("--version")
    assert outcome.code == 0
    assert re.fullmatch(r"strongroom \S+\n", outcome.out), outcome.out


def test_unwritable_store_is_exit_4(
    cli: Cli, tmp_path: Path, small: Path, passcode_file: Path
) -> None:
    """A store that cannot be written fails validation and cannot take a backup."""
    directory = tmp_path / "store"
    assert cli("stores", "add", "broken", directory.as_uri()).code == 0
    for blocker in ("probes", "pending", "data"):  # files where directories belong
        (directory / blocker).write_text("")

    validated = cli("stores", "validate", "broken")
    assert validated.code == 4
    assert "write          FAILED" in validated.out
    warning, error = validated.err.splitlines()  # the listing names the file in the way
    assert "'probes' is a file where strongroom keeps a directory" in warning
    assert error.startswith("strongroom: error: Store 'broken' failed: write: ")

    created = cli(
        "create", "--store", "broken", "--name", "x", "--passcode-file", passcode_file, small
    )
    assert created.code == 4
    assert "stores validate broken" in created.error_line


def test_a_store_whose_directory_cannot_be_made_is_not_added(cli: Cli, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    added = cli("stores", "add", "broken", (blocker / "store").as_uri())
    assert added.code == 4
    assert "broken" in added.error_line
    assert cli("stores", "list", "--json").json()["backupStores"][0]["name"] == "backupsDefault"
    assert blocker.read_text() == ""


#: Commands that would take a store that is not there for one without backups.
STORE_COMMANDS = pytest.mark.parametrize(
    "command",
    [
        ["list"],
        ["info", "kept"],
        ["restore", "kept", "--target", "OUT", "--passcode-file", "PASSCODE"],
        ["stores", "validate", "disk"],
        ["create", "--name", "again", "--passcode-file", "PASSCODE", "SOURCE"],
        ["cleanup"],
        ["schedules", "run", "nightly"],
        ["schedules", "add", "weekly", "--every", "7d", "--passcode-file", "PASSCODE"],
    ],
    ids=["list", "info", "restore", "validate", "create", "cleanup", "run", "schedule"],
)


@STORE_COMMANDS
def test_a_store_whose_directory_went_missing_is_an_error_never_an_empty_store(
    cli: Cli, tmp_path: Path, small: Path, passcode_file: Path, command: list[str]
) -> None:
    """An unmounted disk or a moved directory: listing it as empty would hide every backup,
    and the next create would start a new store where the disk belongs."""
    directory = tmp_path / "disk" / "store"
    _store_with_a_backup(cli, directory, small, passcode_file)
    assert directory.is_dir(), "adding a file store makes its directory"
    directory.rename(tmp_path / "moved")

    outcome = cli(*_store_command(command, small, tmp_path / "out", passcode_file))
    assert outcome.code in (1, 4), outcome
    assert "is missing" in outcome.out + outcome.err
    assert "No backup named" not in outcome.err
    assert not directory.exists(), "nothing made the store's directory again"


@STORE_COMMANDS
def test_a_disk_not_mounted_at_the_store_directory_is_an_error_never_an_empty_store(
    cli: Cli,
    tmp_path: Path,
    small: Path,
    passcode_file: Path,
    command: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The store's directory is a mount point: with the disk not mounted it is there,
    empty. Taken for a store without backups, it would list none, and the next create
    would write onto the disk below it, where nobody would look for the backup."""
    mount_point = tmp_path / "mnt" / "backup"
    _store_with_a_backup(cli, mount_point, small, passcode_file)
    # a schedule's claim that a failed run withdraws would hide that it was ever written
    monkeypatch.setattr(strongroom.scheduler, "_release", lambda *args: None)
    mount_point.rename(tmp_path / "the-disk")  # unmounted: ...
    mount_point.mkdir()  # ... and the empty directory it was mounted on is left

    outcome = cli(*_store_command(command, small, tmp_path / "out", passcode_file))
    assert outcome.code in (1, 4), outcome
    assert "holds no backups and no store marker" in outcome.out + outcome.err
    assert "mount it" in outcome.out + outcome.err
    assert "No backup named" not in outcome.err
    assert list(mount_point.iterdir()) == [], "nothing was written below the mount point"
    assert not (tmp_path / "out").exists()


def _store_with_a_backup(cli: Cli, directory: Path, source: Path, passcode: Path) -> None:
    """The default store `disk` in `directory`, holding the backup `kept` of `source`, and
    the schedule `nightly` backing `source` up into it."""
    assert cli("stores", "add", "disk", directory.as_uri(), "--default").code == 0
    assert cli("create", "--name", "kept", "--passcode-file", passcode, source).code == 0
    every = ["--every", "1h", "--source", source, "--passcode-file", passcode]
    assert cli("schedules", "add", "nightly", *every).code == 0


def _store_command(command: list[str], source: Path, target: Path, passcode: Path) -> list[str]:
    """One of STORE_COMMANDS with its placeholders filled in."""
    filled = {"SOURCE": str(source), "OUT": str(target), "PASSCODE": str(passcode)}
    return [filled.get(arg, arg) for arg in command]


@pytest.mark.parametrize(
    "args",
    [["restore", "kept"], ["create", "--name", "x"], ["update", "kept"], ["stores", "add", "x"]],
    ids=["restore-no-target", "create-no-source", "update-no-date", "stores-add-no-url"],
)
def test_usage_errors_are_exit_2(cli: Cli, args: list[str]) -> None:
    """A missing required argument is argparse's usage error, exit 2, before any work."""
    outcome = cli(*args)
    assert outcome.code == 2
    assert re.search("the following arguments are required|one of the arguments", outcome.err)


# -- stores -------------------------------------------------------------------------------


def test_a_store_written_into_config_toml_by_hand_is_made_and_marked_by_stores_init(
    cli: Cli, home: Path, tmp_path: Path, small: Path, passcode_file: Path
) -> None:
    """Configured by hand, an empty directory is indistinguishable from a disk that is not
    mounted; `stores init` says once that it is a new store, as `stores add` does."""
    by_hand = tmp_path / "by-hand"
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text(f'[stores.nas]\nurl = "{by_hand.as_uri()}"\n')
    create = ["create", "--store", "nas", "--passcode-file", passcode_file, "--name"]
    missing = cli(*create, "first", small)
    assert missing.code == 4 and "run 'strongroom stores init nas'" in missing.err
    by_hand.mkdir()
    empty = cli(*create, "first", small)
    assert empty.code == 4 and "run 'strongroom stores init nas'" in empty.err
    assert list(by_hand.iterdir()) == []

    assert cli("stores", "init", "nas").code == 0
    assert cli(*create, "first", small).code == 0
    assert cli("stores", "init", "nas").code == 0, "a store made already is left as it is"
    assert cli("list", "--store", "nas", "--json").json()["backups"][0]["name"] == "first"


@pytest.mark.parametrize("added", ["stores add", "stores init", "an older strongroom"])
def test_a_place_that_was_a_store_is_never_marked_again_while_its_disk_is_not_mounted(
    cli: Cli, home: Path, tmp_path: Path, small: Path, passcode_file: Path, added: str
) -> None:
    """An empty directory and a disk not mounted look alike, and marking is what `stores
    init` and `stores add` do to an empty place: once this home has known a store there
    (added, initialised, or recognised by any command, as a store added by an older
    strongroom is), neither marks it again, under its name or another, and the refusals
    do not offer a plain init. Nothing is written below the mount point."""
    mount_point = tmp_path / "mnt"
    if added == "stores init":
        home.mkdir(exist_ok=True)
        (home / "config.toml").write_text(f'[stores.nas]\nurl = "{mount_point.as_uri()}"\n')
        assert cli("stores", "init", "nas").code == 0
    else:
        assert cli("stores", "add", "nas", mount_point.as_uri()).code == 0
    if added == "an older strongroom":
        (home / "known-stores").unlink()  # added before homes remembered stores
    create = ["create", "--store", "nas", "--passcode-file", passcode_file, "--name"]
    assert cli(*create, "first", small).code == 0
    mount_point.rename(tmp_path / "the-disk")  # unmounted: ...
    mount_point.mkdir()  # ... and the empty directory it was mounted on is left

    listed = cli("list", "--store", "nas")
    assert listed.code == 4 and "mount it" in listed.err
    assert "has known a strongroom store there" in listed.err
    assert "'strongroom stores init nas'" not in listed.err
    init = cli("stores", "init", "nas")
    assert init.code == 4, init
    assert "this home has known a strongroom store there" in init.err
    assert "'strongroom stores init nas --anew' starts it anew" in init.err
    (tmp_path / "link").symlink_to(tmp_path)
    spellings = [
        mount_point.as_uri() + "/",
        f"file://{tmp_path}//mnt",
        f"file://{tmp_path}/./mnt",
        f"file://{tmp_path}/x/../mnt",
        f"file://localhost{mount_point}",
        (tmp_path / "link" / "mnt").as_uri(),
    ]
    assert cli(*create, "second", small).code == 4
    for spelling in spellings:  # a second name for the place, however written: refused
        assert cli("stores", "add", "nas2", spelling).code == 3, spelling  # while configured,
    assert cli("stores", "remove", "nas").code == 0
    for spelling in spellings:  # and once it is not, since the home knew a store there
        other_name = cli("stores", "add", "nas2", spelling)
        assert other_name.code == 4, spelling
        assert f"'strongroom stores add nas2 {spelling} --anew'" in other_name.err
    assert list(mount_point.iterdir()) == [], "nothing was written below the mount point"
    assert "nas2" not in cli("stores", "list").out

    mount_point.rmdir()
    (tmp_path / "the-disk").rename(mount_point)  # mounted again
    assert cli("stores", "add", "nas", mount_point.as_uri()).code == 0, "its marker is there"
    assert cli("stores", "init", "nas").code == 0, "init of a marked store changes nothing"
    assert len(cli("list", "--store", "nas", "--json").json()["backups"]) == 1


def test_a_store_under_a_mount_point_nothing_is_mounted_on_is_refused_in_any_home(
    cli: Cli,
    home: Path,
    tmp_path: Path,
    small: Path,
    passcode_file: Path,
    mount_tables: MountTables,
) -> None:
    """`stores add` before the share was first mounted, or `stores init` in a home that
    never knew the store (a new replica, a restore machine), would mark the directory on
    the disk below: /etc/fstab says a disk belongs there, so nothing is marked, --anew or
    not. Once the store is there, every command refuses it while the disk is not mounted:
    the disk below shows none of its backups, and would take new ones."""
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    mount_tables.expect(mount_point)
    place = mount_point / "backups"
    added = cli("stores", "add", "nas", place.as_uri())
    assert added.code == 4, added
    assert f"Mount it (as root: 'mount {mount_point}')" in added.err
    assert list(mount_point.iterdir()) == [] and "nas" not in cli("stores", "list").out
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text(f'[stores.nas]\nurl = "{place.as_uri()}"\n')
    for init in (["stores", "init", "nas"], ["stores", "init", "nas", "--anew"]):
        refused = cli(*init)
        assert refused.code == 4 and "nothing is mounted there now" in refused.err, refused
    assert list(mount_point.iterdir()) == []

    mount_tables.mount(mount_point)
    assert cli("stores", "init", "nas").code == 0
    create = ["create", "--store", "nas", "--passcode-file", passcode_file, "--name"]
    assert cli(*create, "first", small).code == 0
    mount_tables.unmount(mount_point)  # its files stand for the disk below from here on
    before = snapshot(place)
    restore = ["restore", "--store", "nas", "first", "--passcode-file", passcode_file]
    commands = [
        ["list", "--store", "nas"],
        ["info", "--store", "nas", "first"],
        [*restore, "--target", tmp_path / "restored"],
        ["update", "--store", "nas", "first", "--keep-days", "1"],
        ["delete", "--store", "nas", "first"],
        [*create, "second", small],
    ]
    for command in commands:
        refused = cli(*command)
        assert refused.code == 4 and "nothing is mounted there now" in refused.err, command
    validated = cli("stores", "validate", "nas")
    assert validated.code == 4 and "recognised     FAILED" in validated.out
    assert "atomic_put" not in validated.out, "nothing probed, so nothing to show beside it"
    cleaned = cli("cleanup", "--store", "nas")
    assert cleaned.code == 1 and "nothing is mounted there now" in cleaned.err
    assert "0 kept; 1 error(s) below, where nothing was counted." in cleaned.out
    assert snapshot(place) == before, "nothing was written"


def test_the_embedded_store_is_not_made_below_a_volume_meant_for_it(
    cli: Cli, home: Path, small: Path, passcode_file: Path, mount_tables: MountTables
) -> None:
    """The embedded store is made whenever it is missing, but not where /etc/fstab mounts
    a volume for it that is not mounted: its backups would land on the disk below."""
    volume = home / "stores" / "backupsDefault"
    mount_tables.expect(volume)
    create = ["create", "--passcode-file", passcode_file, "--name", "x", small]
    for command in (["list"], create):
        refused = cli(*command)
        assert refused.code == 4 and "nothing is mounted there now" in refused.err, command
    assert not volume.exists()
    volume.mkdir(parents=True)  # the mount point, left empty while unmounted
    assert cli(*create).code == 4 and list(volume.iterdir()) == []
    mount_tables.mount(volume)
    assert cli(*create).code == 0


def test_a_place_has_one_name(cli: Cli, home: Path, tmp_path: Path) -> None:
    """Under a second name, every backup there would be listed and counted twice, and a
    cleanup would delete each expired one once a name: a second name is refused, however
    the place is spelt, the embedded store's place too."""
    place = tmp_path / "nas" / "backups"
    assert cli("stores", "add", "nas", place.as_uri()).code == 0
    for name, url in [
        ("nas2", place.as_uri()),
        ("nas3", f"file://{tmp_path}/nas//backups/"),
        ("mine", (home / "stores" / "backupsDefault").as_uri()),
    ]:
        refused = cli("stores", "add", name, url)
        assert refused.code == 3 and "the same place under another name" in refused.err, url
        assert name not in cli("stores", "list").out
    assert cli("stores", "add", "other", (tmp_path / "nas" / "other").as_uri()).code == 0
    with (home / "config.toml").open("a") as config:  # or written by hand
        config.write(f'\n[stores.twin]\nurl = "{place.as_uri()}"\n')
    refused = cli("stores", "init", "twin")
    assert refused.code == 3 and "the same place under another name" in refused.err


def test_a_store_emptied_on_purpose_starts_anew_only_when_told(
    cli: Cli, tmp_path: Path, small: Path, passcode_file: Path
) -> None:
    """The refusals name `--anew`, for backups deleted on purpose (by hand, or a bucket's
    lifecycle rule); with it, init marks the place again and it takes backups."""
    place = tmp_path / "store"
    assert cli("stores", "add", "nas", place.as_uri()).code == 0
    shutil.rmtree(place)  # its backups and marker deleted by hand
    place.mkdir()
    assert cli("stores", "init", "nas").code == 4
    assert cli("stores", "init", "nas", "--anew").code == 0
    create = ["create", "--store", "nas", "--passcode-file", passcode_file, "--name", "x"]
    assert cli(*create, small).code == 0


def test_a_store_whose_directory_is_missing_is_offered_init_only_if_new(
    cli: Cli, home: Path, tmp_path: Path, small: Path, passcode_file: Path
) -> None:
    """A missing directory is a disk not mounted or a store not made yet: init is the
    remedy only for a place this home never knew as a store."""
    known, new = tmp_path / "mnt" / "known", tmp_path / "new"
    assert cli("stores", "add", "known", known.as_uri()).code == 0
    home.mkdir(exist_ok=True)
    with (home / "config.toml").open("a", encoding="utf-8") as config:
        config.write(f'[stores.new]\nurl = "{new.as_uri()}"\n')
    shutil.rmtree(tmp_path / "mnt")

    gone = cli("list", "--store", "known")
    assert gone.code == 4 and "is missing" in gone.err
    assert "has known a strongroom store there" in gone.err
    assert cli("stores", "init", "known").code == 4
    assert not known.exists()
    not_made = cli("list", "--store", "new")
    assert not_made.code == 4 and "run 'strongroom stores init new'" in not_made.err


def test_stores_add_list_validate_remove(cli: Cli, home: Path, tmp_path: Path) -> None:
    """Stores come and go in config.toml; the embedded default is always there."""
    embedded = {
        "name": "backupsDefault",
        "default": True,
        "type": "file",
        "url": _default_store(home).absolute().as_uri(),
        "rootDir": str(_default_store(home).absolute()),
        "compression": "zstd",
    }
    assert cli("stores", "list", "--json").json() == {"backupStores": [embedded]}

    offsite = tmp_path / "offsite"
    added = cli("stores", "add", "offsite", offsite.as_uri(), "--default", "--compression", "none")
    assert added.code == 0, added.err
    config = tomllib.loads((home / "config.toml").read_text(encoding="utf-8"))
    assert config == {
        "default": "offsite",
        "stores": {"offsite": {"url": offsite.as_uri(), "compression": "none"}},
    }
    stores = cli("stores", "list", "--json").json()["backupStores"]
    assert sorted(stores, key=lambda s: s["name"]) == [
        {**embedded, "default": False},
        {
            "name": "offsite",
            "default": True,
            "type": "file",
            "url": offsite.as_uri(),
            "rootDir": str(offsite),
            "compression": "none",
        },
    ]
    table = cli("stores", "list")
    assert any(line.split()[:3] == ["offsite", "*", "none"] for line in table.out.splitlines())
    assert cli("stores", "default", "backupsDefault").code == 0
    assert tomllib.loads((home / "config.toml").read_text(encoding="utf-8"))["default"] == (
        "backupsDefault"
    )
    assert cli("stores", "default", "nope").code == 3
    assert cli("stores", "default", "offsite").code == 0

    validated = cli("stores", "validate", "offsite")
    assert validated.code == 0, validated.err
    assert validated.out.split("\n")[:4] == [
        "write          ok",
        "read           ok",
        "list           ok",
        "delete         ok",
    ]
    assert "locks backups  no" in validated.out
    report = cli("stores", "validate", "offsite", "--json").json()
    assert report["ok"] is True
    checks = {"write": True, "read": True, "list": True, "delete": True, "recognised": True}
    assert report["checks"] == checks
    assert report["capabilities"]["put_if_absent"] is True
    assert not any((offsite / "probes").glob("*"))

    duplicate = cli("stores", "add", "offsite", (tmp_path / "other").as_uri(), "--default")
    assert duplicate.code == 3
    assert "already configured" in duplicate.error_line
    assert "stores remove offsite" in duplicate.error_line and "--default" in duplicate.error_line
    embedded_again = cli("stores", "add", "backupsDefault", (tmp_path / "elsewhere").as_uri())
    assert embedded_again.code == 3
    assert "is the embedded default store" in embedded_again.error_line
    assert "--default" in embedded_again.error_line
    assert config == tomllib.loads((home / "config.toml").read_text(encoding="utf-8"))

    removed = cli("stores", "remove", "offsite")
    assert removed.code == 0
    assert cli("stores", "list", "--json").json() == {"backupStores": [embedded]}
    assert cli("stores", "remove", "offsite").code == 3
    embedded_removal = cli("stores", "remove", "backupsDefault")
    assert embedded_removal.code == 3
    assert "cannot be removed" in embedded_removal.error_line


def test_default_store_receives_backups(
    cli: Cli, tmp_path: Path, small: Path, passcode_file: Path
) -> None:
    """After `stores add --default`, commands without --store use the new store."""
    offsite = tmp_path / "offsite"
    assert cli("stores", "add", "offsite", offsite.as_uri(), "--default").code == 0
    Engine(kdf=FAST_KDF).create("away", [small], passcode=PASSCODE)
    assert (offsite / "manifests" / "away").is_file()
    backups = cli("list", "--json").json()["backups"]
    assert [(b["name"], b["backupStore"]) for b in backups] == [("away", "offsite")]
    assert cli("list", "--store", "backupsDefault", "--json").json() == {
        "backups": [],
        "unreadable": [],
    }
    assert cli("verify", "away", "--passcode-file", passcode_file).code == 0


def test_store_options_keep_secrets_as_env_references(
    cli: Cli, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--option KEY=env:VAR is written as {env = "VAR"}; the value never reaches the file."""
    monkeypatch.setattr("strongroom.backends.generic.PERSISTENT", {"memory"})  # any options
    monkeypatch.setenv("SR_TEST_TOKEN", "token-value-xyz")
    added = cli(
        "stores", "add", "vault", "memory://vault",
        "--option", "token=env:SR_TEST_TOKEN", "--option", "region=eu-west-1",
    )  # fmt: skip
    assert added.code == 0, added.err
    text = (home / "config.toml").read_text(encoding="utf-8")
    assert "token-value-xyz" not in text
    config = tomllib.loads(text)
    assert config["stores"]["vault"]["options"] == {
        "token": {"env": "SR_TEST_TOKEN"},
        "region": "eu-west-1",
    }
    assert config["default"] == "backupsDefault"

    # The store is opened before it is saved: options a backend refuses, or a secret
    # reference to an unset variable, are reported and nothing is written.
    rejected = cli(
        "stores", "add", "local", (tmp_path / "l").as_uri(), "--option", "token=env:SR_TEST_TOKEN"
    )  # fmt: skip
    assert rejected.code == 3
    assert "takes no options" in rejected.error_line
    assert "token-value-xyz" not in rejected.err
    monkeypatch.delenv("SR_TEST_TOKEN")
    unset = cli("stores", "add", "later", "memory://later", "--option", "token=env:SR_TEST_TOKEN")
    assert unset.code == 3
    assert "SR_TEST_TOKEN is not set" in unset.error_line
    assert set(tomllib.loads((home / "config.toml").read_text())["stores"]) == {"vault"}
    assert cli("stores", "validate", "vault").code == 3, "validate needs the variable too"

    malformed = cli("stores", "add", "other", (tmp_path / "o").as_uri(), "--option", "novalue")
    assert malformed.code == 3
    assert "KEY=VALUE" in malformed.error_line


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("memory://m", "memory:// keeps objects in this process's memory"),
        ("http://127.0.0.1:1/backups", "http:// is read-only"),
        ("gopher-like://x", "no installed backend"),
    ],
)
def test_stores_add_refuses_a_store_that_would_not_keep_backups(
    cli: Cli, home: Path, url: str, reason: str
) -> None:
    """The backend decides (`persistent`); nothing is saved."""
    outcome = cli("stores", "add", "gone", url)
    assert outcome.code == 3
    assert reason in outcome.error_line
    assert not (home / "config.toml").exists()


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp:///y", "ftp:///y gives no host; write it in the URL (ftp://HOST/PATH)"),
        ("ftp://127.0.0.1:PORT/y", "cannot be opened (ConnectionRefusedError"),
        ("dir://x", "dir://x cannot be opened (AttributeError"),
    ],
)
def test_a_url_its_backend_cannot_open_is_one_line_naming_the_store(
    cli: Cli, home: Path, url: str, reason: str
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = url.replace("PORT", str(closed.getsockname()[1]))  # nothing listens there
        outcome = cli("stores", "add", "bad", url)
    assert outcome.code == 3
    assert outcome.error_line.startswith(f"strongroom: error: Store 'bad': {url}")
    assert reason in outcome.error_line
    assert not (home / "config.toml").exists()


@pytest.mark.parametrize(
    ("url", "package"), [("s3://b/p", "strongroom-s3"), ("az://c/p", "strongroom-azure")]
)
def test_unknown_scheme_names_the_plugin_to_install(
    cli: Cli, home: Path, url: str, package: str
) -> None:
    """With autoload disabled no cloud backend exists; the error says what to install."""
    outcome = cli("stores", "add", "cloud", url)
    assert outcome.code == 3
    assert package in outcome.error_line
    assert "installed: file" in outcome.error_line
    assert not (home / "config.toml").exists()
    assert [s["name"] for s in cli("stores", "list", "--json").json()["backupStores"]] == [
        "backupsDefault"
    ]


def test_configured_store_with_unknown_scheme_names_the_plugin(cli: Cli, home: Path) -> None:
    home.mkdir()
    (home / "config.toml").write_text('[stores.cloud]\nurl = "s3://b/p"\n', encoding="utf-8")
    listed = cli("stores", "list", "--json").json()["backupStores"]
    cloud = {"name": "cloud", "type": "s3", "url": "s3://b/p", "rootDir": "b/p"}
    cloud |= {"default": False, "compression": "zstd"}
    assert cloud in listed
    outcome = cli("list", "--store", "cloud")
    assert outcome.code == 3
    assert "strongroom-s3" in outcome.error_line


@pytest.mark.parametrize("name", ["bad name", "../up", ".dot"])
def test_bad_store_names_are_config_errors(cli: Cli, home: Path, tmp_path: Path, name: str) -> None:
    outcome = cli("stores", "add", name, (tmp_path / "s").as_uri())
    assert outcome.code == 3
    assert "not a valid store name" in outcome.error_line
    assert not (home / "config.toml").exists()


# -- the installed script -----------------------------------------------------------------


def _script_env(home: Path, passcode: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")}
    env["STRONGROOM_HOME"] = str(home)
    env["STRONGROOM_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    if passcode is not None:
        env["STRONGROOM_PASSCODE"] = passcode
    return env


def _run_script(home: Path, *args: str | Path, passcode: str | None = PASSCODE) -> Outcome:
    result = subprocess.run(
        [str(STRONGROOM), *map(str, args)],
        env=_script_env(home, passcode),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    outcome = Outcome(result.returncode, result.stdout, result.stderr)
    _assert_no_secrets(outcome)
    return outcome


def test_installed_script_end_to_end(home: Path, small: Path, tmp_path: Path) -> None:
    """The real executable: passcode from the environment, JSON out, exit codes."""
    assert STRONGROOM.is_file(), f"{STRONGROOM} is not installed"
    script_home = home
    created = _run_script(script_home, "create", "--name", "sub", "--json", small)
    assert created.code == 0, created.err
    assert created.json()["name"] == "sub"
    assert created.err == ""

    verified = _run_script(script_home, "verify", "sub")
    assert verified.code == 0, verified.err
    assert verified.out.startswith("sub: OK")

    target = tmp_path / "script-restore"
    restored = _run_script(script_home, "restore", "sub", "--target", target)
    assert restored.code == 0, restored.err
    assert snapshot(target / small.name) == snapshot(small)

    locked = _run_script(script_home, "verify", "sub", passcode=None)
    assert locked.code == 7
    assert locked.out == ""
    assert "STRONGROOM_PASSCODE" in locked.error_line

    wrong = _run_script(script_home, "verify", "sub", passcode=WRONG_PASSCODE)
    assert wrong.code == 7
    assert "does not open this backup" in wrong.error_line


def test_progress_bar_only_on_a_terminal(home: Path, small: Path, tmp_path: Path) -> None:
    """With stderr on a terminal, create and restore draw a progress bar; piped, they do not."""
    primary, secondary = pty.openpty()
    try:
        result = subprocess.run(
            [str(STRONGROOM), "create", "--name", "tty", str(small)],
            env=_script_env(home, PASSCODE),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=secondary,
            timeout=60,
            check=False,
        )
        os.close(secondary)
        drawn = b""
        with contextlib.suppress(OSError):  # EIO once the terminal's other end is closed
            while chunk := os.read(primary, 65536):
                drawn += chunk
    finally:
        os.close(primary)
    assert result.returncode == 0
    assert b"backup tty" in drawn and b"100%" in drawn
    piped = _run_script(home, "restore", "tty", "--target", tmp_path / "piped")
    assert piped.code == 0 and piped.err == ""


# -- the admin API's server and tokens ----------------------------------------------------


def test_token_new_prints_each_token_once_and_keeps_only_its_hash(cli: Cli, home: Path) -> None:
    tokens = [cli("token", "new").out.strip() for _ in range(2)]
    assert tokens[0] != tokens[1]
    assert all(len(token) >= 40 for token in tokens)
    path = home / "api-tokens"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [line.split()[0] for line in path.read_text().splitlines()] == [
        hash_token(token) for token in tokens
    ]
    assert "# added " in path.read_text()


def test_a_token_is_removed_by_the_id_that_token_list_shows(
    cli: Cli, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token that leaked (a URL's token=… in a browser's history) can be refused again
    without editing the token file by hand."""
    first, second = (cli("token", "new") for _ in range(2))
    first_id = hash_token(first.out.strip())[:12]
    assert f"Its id is {first_id}" in first.err
    monkeypatch.setenv("STRONGROOM_API_TOKEN_HASHES", hash_token("from-the-environment"))
    listed = json.loads(cli("token", "list", "--json").out)["tokens"]
    assert [(entry["tokenId"], entry["source"]) for entry in listed] == [
        (first_id, "api-tokens"),
        (hash_token(second.out.strip())[:12], "api-tokens"),
        (hash_token("from-the-environment")[:12], "STRONGROOM_API_TOKEN_HASHES"),
    ]
    assert listed[0]["comment"].startswith("added ")
    assert first_id in cli("token", "list").out

    assert cli("token", "remove", "abc").code == 3  # too short to name one surely
    outside = cli("token", "remove", hash_token("from-the-environment")[:10])
    assert outside.code == 3 and "STRONGROOM_API_TOKEN_HASHES" in outside.error_line
    assert cli("token", "remove", first_id.upper()).code == 0
    assert configured_hashes(home) == [
        hash_token(second.out.strip()),
        hash_token("from-the-environment"),
    ]
    again = cli("token", "remove", first_id)
    assert again.code == 3 and "token list" in again.error_line
    assert stat.S_IMODE((home / "api-tokens").stat().st_mode) == 0o600

    second_hash = hash_token(second.out.strip())
    with (home / "api-tokens").open("a") as tokens:  # pasted again, in upper case
        tokens.write(second_hash.upper() + "\r\n")
    assert cli("token", "remove", second_hash).code == 0  # every line that holds it
    add_token("listed-twice")
    monkeypatch.setenv("STRONGROOM_API_TOKEN_HASHES", hash_token("listed-twice"))
    both = cli("token", "remove", hash_token("listed-twice")[:12])
    assert both.code == 3 and "remove it there" in both.error_line  # else still accepted
    assert hash_token("listed-twice") in (home / "api-tokens").read_text()


def test_serve_refuses_a_source_that_does_not_exist(cli: Cli, tmp_path: Path) -> None:
    with socket.socket() as taken:  # were the source not checked first, serving would fail
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        outcome = cli("serve", "--port", port, "--source", tmp_path / "missing")
    assert outcome.code == 3
    assert "does not exist" in outcome.error_line


def test_serve_on_a_port_in_use_is_one_clear_error(cli: Cli) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        outcome = cli("serve", "--host", "127.0.0.1", "--port", port)
    assert outcome.code == 3, outcome
    [error] = [line for line in outcome.err.splitlines() if line.startswith("strongroom: error")]
    assert f"Cannot listen on 127.0.0.1:{port}" in error and "--port" in error
    assert "serving" not in outcome.err and "Traceback" not in outcome.err


def test_serve_on_every_ipv6_address_takes_ipv4_too() -> None:
    """`--host ::` listened on both before serve bound its own socket, and still does."""
    if not socket.has_dualstack_ipv6():
        pytest.skip("this machine has no dual-stack IPv6")
    with _listen("::", 0, "[::]") as listener:
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass


@pytest.mark.parametrize("port", ["99999", "-1", "http"])
def test_serve_refuses_what_is_not_a_port_number(cli: Cli, port: str) -> None:
    outcome = cli("serve", "--port", port)
    assert outcome.code == 2
    assert "is not a port number (0 to 65535)" in outcome.err


def test_output_cut_short_by_its_reader_is_no_error(home: Path, tmp_path: Path) -> None:
    """`strongroom ls big | head -1`: the closed pipe ends the command quietly, exit 0."""
    source = tmp_path / "many"
    source.mkdir()
    for n in range(5000):
        (source / f"file-{n:05}").write_bytes(b"")
    Engine(kdf=FAST_KDF, chunk_size=SMALL_CHUNK).create("many", [source], passcode=PASSCODE)
    command = [str(STRONGROOM), "ls", "many"]
    with subprocess.Popen(
        command, env=_script_env(home, PASSCODE), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        assert process.stdout.readline() == b"many\n"
        process.stdout.close()  # as `head -1` does
        error = process.stderr.read()
        assert process.wait(timeout=60) == 0
    assert error == b""


@pytest.mark.parametrize("option", ["token", "password", "client_secret", "account_key"])
def test_options_named_like_secrets_are_never_saved_in_plain_text(
    cli: Cli, home: Path, option: str
) -> None:
    added = cli("stores", "add", "vault", "memory://vault", "--option", f"{option}=THE-KEY")
    assert added.code == 3
    assert f"{option} must not be written in plain text" in added.error_line
    assert "THE-KEY" not in added.err
    assert not (home / "config.toml").exists()


def test_jobs_list_and_show_read_the_job_table_without_a_server(
    cli: Cli, home: Path, small: Path, tmp_path: Path
) -> None:
    with Engine(kdf=FAST_KDF, chunk_size=SMALL_CHUNK) as engine:
        created = engine.jobs.wait(
            engine.submit_backup("nightly", [small], passcode=PASSCODE).jobid
        )
        time.sleep(0.002)  # one job per millisecond: newest first is then one order
        wrong = engine.submit_restore("nightly", tmp_path / "out", passcode=WRONG_PASSCODE)
        failed = engine.jobs.wait(wrong.jobid)

    listed = cli("jobs", "list")
    assert listed.code == 0, listed.err
    header, *rows = listed.out.splitlines()
    assert header.split() == ["JOB", "OPERATION", "STORE", "BACKUP", "STATUS", "STAGE", "SUBMITTED"]
    assert [row.split()[:6] for row in rows] == [
        [failed.jobid, "restore", "backupsDefault", "nightly", "FAILED", "authenticating"],
        [created.jobid, "create", "backupsDefault", "nightly", "COMPLETED", "done"],
    ]
    as_json = cli("jobs", "list", "--status", "COMPLETED", "--json").json()
    assert as_json == {"jobs": [created.to_dict()]}
    assert cli("jobs", "list", "--status", "completed", "--json").json() == as_json
    assert cli("jobs", "list", "--operation", "restore", "--json").json() == {
        "jobs": [failed.to_dict()]
    }
    assert cli("jobs", "list", "--status", "DONE").code == 2
    assert cli("jobs", "list", "--status", "CANCELLED").out == "No jobs with status 'CANCELLED'.\n"
    typo = cli("jobs", "list", "--operation", "backup")
    assert (typo.code, typo.out) == (
        0,
        "No jobs with operation 'backup'. strongroom's operations are create, restore, "
        "verify, delete, cleanup, register.\n",
    )

    assert cli("jobs", "show", created.jobid, "--json").json() == created.to_dict()
    shown = cli("jobs", "show", failed.jobid)
    assert f"jobid          {failed.jobid}" in shown.out
    assert f"message        {failed.messages[-1]}" in shown.out
    assert re.search(
        r"^authenticating  failed  \d{4}-\d\d-\d\d .* UTC  \d+\.\d s$", shown.out, re.M
    )
    missing = cli("jobs", "show", "j7d22f855-2c9f-4934-94e4-93c5e85cd271")
    assert missing.code == 9
    assert "No job has the id" in missing.error_line


# -- write keys -------------------------------------------------------------------------


def test_write_key_new_writes_an_owner_only_key_and_never_over_a_file(
    cli: Cli, passcode_file: Path, tmp_path: Path
) -> None:
    key = tmp_path / "keys" / "nightly.key"
    mistyped = cli("write-key", "new", "--out", key, "--passcode-file", passcode_file)
    assert mistyped.code == 3 and "does not exist; make it first" in mistyped.error_line
    assert not key.parent.exists()
    key.parent.mkdir()
    made = cli("write-key", "new", "--out", key, "--passcode-file", passcode_file)
    assert made.code == 0, made.err
    assert str(key) in made.out and "opens nothing" in made.out
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    content = key.read_bytes()
    assert PASSCODE.encode() not in content
    again = cli("write-key", "new", "--out", key, "--passcode-file", passcode_file)
    assert again.code == 3 and "already exists" in again.error_line
    assert key.read_bytes() == content
    forced = cli("write-key", "new", "--out", key, "--passcode-file", passcode_file, "--force")
    assert forced.code == 0, forced.err
    assert key.read_bytes() != content  # a fresh salt
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_write_key_new_needs_the_passcode_as_other_commands_do(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No file and no terminal to prompt on: refused; STRONGROOM_PASSCODE works."""
    key = tmp_path / "write.key"
    refused = cli("write-key", "new", "--out", key)
    assert refused.code == 7 and "--passcode-file" in refused.error_line
    assert not key.exists()
    monkeypatch.setenv("STRONGROOM_PASSCODE", PASSCODE)
    assert cli("write-key", "new", "--out", key).code == 0


def test_create_with_a_write_key_needs_no_passcode_and_restores_with_it(
    cli: Cli, passcode_file: Path, small: Path, tmp_path: Path
) -> None:
    key = tmp_path / "write.key"
    assert cli("write-key", "new", "--out", key, "--passcode-file", passcode_file).code == 0
    # From here on no passcode anywhere: no file, no STRONGROOM_PASSCODE, no terminal.
    created = cli("create", "--name", "keyed", "--write-key", key, "--json", small)
    assert created.code == 0, created.err
    assert created.json()["name"] == "keyed"
    target = tmp_path / "restored"
    restored = cli("restore", "keyed", "--target", target, "--passcode-file", passcode_file)
    assert restored.code == 0, restored.err
    assert snapshot(target / small.name) == snapshot(small)
    wrong = tmp_path / "wrong.txt"
    wrong.write_text(WRONG_PASSCODE)
    assert cli("verify", "keyed", "--passcode-file", wrong).code == 7


def test_a_file_that_shrinks_as_it_is_read_is_one_line_that_says_so(
    cli: Cli, passcode_file: Path, small: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exit 12 with strongroom's sentence only: no advice to check permissions or free
    space, which the file never lacked."""
    victim = small / "sub" / "b.txt"
    change_after_open(monkeypatch, b"b.txt", lambda: os.truncate(victim, 10))
    outcome = cli("create", "--name", "shrunk", "--passcode-file", passcode_file, small)
    assert outcome.code == 12
    assert outcome.error_line == (
        "strongroom: error: docs/sub/b.txt shrank while it was being backed up (it had 6000 "
        "bytes when opened), so nothing was committed; back it up when nothing is writing to "
        "it (a log truncated or rotated meanwhile)."
    )


def test_a_dropped_transport_task_prints_no_traceback(home: Path) -> None:
    """s3fs's aiohttp tasks that a dropped connection failed were printed by asyncio as
    dozens of 'Task exception was never retrieved' tracebacks before the one error line
    (a process of its own: pytest's log capture would hide them either way)."""
    script = """if True:
        import asyncio, gc
        from strongroom.cli import main

        async def upload():
            raise ConnectionResetError("Cannot write to closing transport")

        async def drop():
            asyncio.get_running_loop().create_task(upload())
            await asyncio.sleep(0)

        assert main(["stores", "list"]) == 0
        if SERVE:  # as `serve` goes on: its logging configured over the command's
            import logging.config
            from strongroom.web.serve import _log_config
            logging.config.dictConfig(_log_config())
        asyncio.run(drop())
        gc.collect()  # the task's exception is logged as it is collected
    """
    for serve in (False, True):
        ran = subprocess.run(
            [sys.executable, "-c", f"SERVE = {serve}\n{script}"], capture_output=True, text=True
        )
        assert ran.returncode == 0, ran.stderr
        # the server's log keeps its event loop's errors; the command prints none
        assert ("Task exception was never retrieved" in ran.stderr) is serve, ran.stderr


def test_an_interrupt_says_what_it_left_by_command(
    cli: Cli, passcode_file: Path, small: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A create commits nothing; a read-only command changed nothing, and is not told it
    'committed nothing' as if it could have."""

    def interrupted(*args: object, **kwargs: object) -> NoReturn:
        raise KeyboardInterrupt

    monkeypatch.setattr(Engine, "create", interrupted)
    monkeypatch.setattr(Engine, "listing", interrupted)
    made = cli("create", "--name", "x", "--passcode-file", passcode_file, small)
    assert (made.code, made.err) == (130, "strongroom: interrupted; nothing was committed.\n")
    listed = cli("list")
    assert (listed.code, listed.err) == (130, "strongroom: interrupted.\n")

    def bare(*args: object, **kwargs: object) -> NoReturn:
        raise TimeoutError  # no errno, no text: its kind is what there is to say

    monkeypatch.setattr(Engine, "listing", bare)
    assert cli("list").error_line.startswith("strongroom: error: cannot use: TimeoutError. ")


def test_an_interrupt_after_the_commit_says_the_backup_is_committed(
    cli: Cli, passcode_file: Path, small: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C (or SIGTERM) while a create tidies up after its commit, removing its pending
    marker, must not say nothing was committed: the backup is listed and whole."""

    def interrupted(*args: object, **kwargs: object) -> NoReturn:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr("strongroom.enginecreate._remove_quietly", interrupted)
        made = cli("create", "--name", "x", "--passcode-file", passcode_file, small)
    committed = "strongroom: interrupted; the backup was committed before it, and is whole.\n"
    assert (made.code, made.err) == (130, committed)
    assert cli("verify", "x", "--passcode-file", passcode_file).code == 0
    with monkeypatch.context() as patch:  # or as the command prints what it made
        patch.setattr("strongroom.cli._emit_backup", interrupted)
        printing = cli("create", "--name", "y", "--passcode-file", passcode_file, small)
    assert (printing.code, printing.err) == (130, committed)


def test_other_libraries_records_are_not_printed_beside_the_error(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store SDK's own warnings ('Incomplete download.' at each try of a download cut
    off) were printed by Python's fallback as bare lines beside the command's one-line
    error, in a process that configures no logging."""

    def listing(*args: object, **kwargs: object) -> NoReturn:
        logging.getLogger("azure.core.pipeline.transport").warning("Incomplete download.")
        raise StoreUnavailableError("Store 'x' failed: the connection broke.")

    monkeypatch.setattr(Engine, "listing", listing)
    monkeypatch.setattr(logging.root, "handlers", [])  # a command's process: none configured
    outcome = cli("list")
    assert outcome.err == "strongroom: error: Store 'x' failed: the connection broke.\n"


def test_warnings_are_the_commands_own_lines(
    cli: Cli, passcode_file: Path, small: Path, tmp_path: Path
) -> None:
    """The library's warnings print as `strongroom: warning: ...` (once, however many
    commands run in one process), not as bare lines no one can place."""
    key = tmp_path / "write.key"
    assert cli("write-key", "new", "--out", key, "--passcode-file", passcode_file).code == 0
    key.chmod(0o644)
    for name in ("first", "second"):
        made = cli("create", "--name", name, "--write-key", key, small)
        assert made.code == 0, made.err
        assert made.err.splitlines() == [
            f"strongroom: warning: The write key {key} can be read by others (mode 644): "
            "whoever reads it can add backups that the passcode restores; make it owner-only "
            "(chmod 600)."
        ]


def test_create_takes_a_write_key_or_a_passcode_file_not_both(
    cli: Cli, passcode_file: Path, small: Path, tmp_path: Path
) -> None:
    key = tmp_path / "write.key"
    key.write_text("{}")
    key.chmod(0o600)  # no warning beside the error
    both = ["--write-key", key, "--passcode-file", passcode_file]
    assert cli("create", "--name", "both", *both, small).code == 2
    damaged = cli("create", "--name", "damaged", "--write-key", key, small)
    assert damaged.code == 3 and "not a strongroom write key" in damaged.error_line
    missing = cli("create", "--name", "missing", "--write-key", tmp_path / "none", small)
    assert missing.code == 3 and "Cannot read the write key" in missing.error_line


# -- schedules --------------------------------------------------------------------------


def test_schedules_from_the_command_line(
    cli: Cli, home: Path, tree: Path, passcode_file: Path
) -> None:
    added = cli(
        "schedules",
        "add",
        "nightly",
        "--cron",
        "0 2 * * *",
        "--keep-days",
        "14",
        "--description",
        "at two",
        "--source",
        tree,
        "--passcode-file",
        passcode_file,
    )
    assert added.code == 0, added.err
    assert "keeps a write key, not the passcode" in added.out
    assert PASSCODE not in (home / "config.toml").read_text()
    shown_texts = [
        cli("schedules", "show", "nightly", "--json").out,
        cli("schedules", "show", "nightly").out,
        cli("schedules", "list", "--json").out,
        cli("schedules", "list").out,
    ]
    for secret in write_key_secrets(home / "config.toml", "nightly"):
        assert not [text for text in shown_texts if secret in text]
    listed = cli("schedules", "list", "--json").json()["schedules"]
    assert [(s["name"], s["cron"], s["keepDays"], s["sources"]) for s in listed] == [
        ("nightly", "0 2 * * *", 14, [str(tree)])
    ]
    text = cli("schedules", "list").out
    assert "nightly" in text and 'cron "0 2 * * *" (UTC)' in text
    assert cli("schedules", "pause", "nightly").code == 0
    assert "paused" in cli("schedules", "list").out
    assert cli("schedules", "show", "nightly", "--json").json()["enabled"] is False
    assert "(when resumed)" in cli("schedules", "show", "nightly").out
    assert cli("schedules", "resume", "nightly").code == 0

    ran = cli("schedules", "run", "nightly", "--json")
    assert ran.code == 0, ran.err
    backup = ran.json()
    assert re.fullmatch(r"nightly-\d{4}(-\d{2}){5}", backup["name"])
    assert backup["scheduleType"] == "SCHEDULED"
    slot = datetime.strptime(backup["name"][8:], "%Y-%m-%d-%H-%M-%S").replace(tzinfo=UTC)
    assert backup["retentionDate"] == int((slot + timedelta(days=14)).timestamp() * 1000)
    shown = cli("schedules", "show", "nightly", "--json").json()
    assert shown["lastRun"]["backupName"] == backup["name"]
    assert shown["lastRun"]["status"] == "COMPLETED"
    assert "last run" in cli("schedules", "show", "nightly").out
    restored = cli(
        "restore", backup["name"], "--target", home / "back", "--passcode-file", passcode_file
    )
    assert restored.code == 0, restored.err
    assert snapshot(home / "back" / tree.name) == snapshot(tree)

    assert cli("schedules", "remove", "nightly").code == 0
    assert cli("schedules", "list", "--json").json() == {"schedules": [], "damaged": []}
    missing = cli("schedules", "show", "nightly")
    assert missing.code == 3
    assert "No schedule is named 'nightly'" in missing.error_line


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        (["--every", "0s"], "every '0s' is not a duration"),
        (["--cron", "61 * * * *"], 'cron "61 * * * *": bad minute'),
        (["--every", "1h", "--store", "nowhere"], "No store is named 'nowhere'"),
        (["--every", "1h", "--keep-days", "0"], "keep days"),
    ],
)
def test_a_bad_schedule_is_refused_by_the_command_line(
    cli: Cli, home: Path, passcode_file: Path, arguments: list[str], fragment: str
) -> None:
    refused = cli("schedules", "add", "nightly", *arguments, "--passcode-file", passcode_file)
    assert refused.code == 3
    assert fragment in refused.error_line
    unasked = cli("schedules", "add", "nightly", *arguments)  # refused before the passcode
    assert (unasked.code, unasked.error_line) == (3, refused.error_line)
    assert not (home / "config.toml").exists()


def test_a_duplicate_schedule_and_a_bad_name_are_refused(
    cli: Cli, home: Path, passcode_file: Path
) -> None:
    add = ("schedules", "add", "--every", "1h", "--passcode-file", passcode_file)
    assert cli(*add, "nightly").code == 0
    duplicate = cli(*add, "nightly")
    assert duplicate.code == 3 and "already exists" in duplicate.error_line
    assert cli(*add, "bad/name").code == 3
    assert cli(*add, "x" * 109).code == 3
    no_sources = cli("schedules", "run", "nightly")
    assert no_sources.code == 3 and "has no sources" in no_sources.error_line


def test_a_backup_command_loads_only_what_it_runs(tmp_path: Path) -> None:
    """Every command pays for its imports before its first byte (docs/benchmarks.md): the
    schedules, the TOML parser (no configuration file here) and platformdirs
    (STRONGROOM_HOME is set) load only for the commands that use them."""
    source = tmp_path / "source"
    source.mkdir()
    (source / "a.txt").write_text("a\n")
    script = (
        "import sys\n"
        "from strongroom.cli import main\n"
        f"assert main(['create', '--name', 'n', {str(source)!r}]) == 0\n"
        "assert main(['list']) == 0\n"
        "print(' '.join(sorted(set(sys.argv[1:]) & set(sys.modules))), file=sys.stderr)\n"
    )
    lazy = ["tomllib", "tomli_w", "platformdirs", "cronsim", "strongroom.schedules"]
    lazy += ["strongroom.scheduler", "strongroom.web.serve"]
    home = {"STRONGROOM_HOME": str(tmp_path / "home"), "STRONGROOM_PASSCODE": PASSCODE}
    ran = subprocess.run(
        [sys.executable, "-c", script, *lazy],
        capture_output=True,
        text=True,
        env={**os.environ, **home, "STRONGROOM_DISABLE_PLUGIN_AUTOLOAD": "1"},
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stderr.splitlines()[-1:] == [""]


def test_create_says_what_it_left_out_on_stderr_and_in_its_json(
    cli: Cli, small: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each left-out entry is a warning; the table on stdout does not repeat them as a
    Python list, and --json has them for a script."""
    os.mkfifo(small / "pipe")
    monkeypatch.setenv("STRONGROOM_PASSCODE", PASSCODE)
    table = cli("create", "--name", "table", small)
    assert table.code == 0, table.err
    assert "pipe: it is a FIFO" in table.err and "leftOut" not in table.out
    monkeypatch.setenv("STRONGROOM_PASSCODE", PASSCODE)  # each command takes it out
    document = cli("create", "--name", "json", "--json", small).json()
    assert document["leftOutCount"] == 1 and "pipe: it is a FIFO" in document["leftOut"][0]
