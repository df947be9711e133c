"""`ls` shows what a backup holds as restore would make it; `backup_id` pins the backup a
name is expected to hold, so a store writer cannot roll it back unnoticed."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import pytest

from strongroom import ConfigError, Engine, IntegrityError, InvalidNameError, UnsafeArchiveError
from strongroom.cli import main
from tests.conftest import PASSCODE
from tests.forge import entry, forge_backup, tar_of


def test_ls_lists_every_entry_with_its_kind_mode_size_and_link(engine: Engine, tree: Path) -> None:
    engine.create("nightly", [tree], passcode=PASSCODE)
    entries = {e.path: e for e in engine.ls("nightly", passcode=PASSCODE)}
    on_disk = {str(p.relative_to(tree.parent)) for p in [tree, *tree.rglob("*")]}
    assert set(entries) == on_disk
    assert entries["data/link-to-notes"].type == "symlink"
    assert entries["data/link-to-notes"].link_target == "nested/deeper/notes.md"
    assert entries["data/big.bin"].size == (tree / "big.bin").stat().st_size
    assert entries["data/big.bin"].mtime_ns == 1_600_000_000 * 10**9
    assert entries["data/nested/run.sh"].mode == 0o750
    assert entries["data/nested"].type == "dir"
    pair = {entries["data/nested/secret-hardlink"], entries["data/secret.key"]}
    hard = next(e for e in pair if e.type == "hardlink")  # the second one archived
    assert {hard.link_target} == {e.path for e in pair} - {hard.path}


def test_ls_narrows_to_paths_and_joins_the_parts_of_a_stream(
    engine: Engine, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("strongroom.archive.STREAM_PART_SIZE", 1000)
    engine.create(
        "mixed", [tree], passcode=PASSCODE, streams={"db/dump.sql": io.BytesIO(b"x" * 3500)}
    )
    assert [(e.path, e.size) for e in engine.ls("mixed", ["db"], passcode=PASSCODE)] == [
        ("db/dump.sql", 3500)
    ]
    deeper = [e.path for e in engine.ls("mixed", ["data/nested/deeper"], passcode=PASSCODE)]
    assert deeper == ["data/nested/deeper", "data/nested/deeper/notes.md"]


def test_a_name_with_a_backslash_is_listed_and_restored_by_that_name(
    engine: Engine, tmp_path: Path
) -> None:
    """A POSIX file name may hold a backslash: backed up and restored whole, it could not
    be named to ls or to a partial restore. A stream's name still may not (a Windows path
    is not what is meant)."""
    source = tmp_path / "odd"
    source.mkdir()
    (source / "back\\slash").write_text("b\n")
    (source / "other").write_text("o\n")
    engine.create("odd", [source], passcode=PASSCODE)
    listed = [e.path for e in engine.ls("odd", ["odd/back\\slash"], passcode=PASSCODE)]
    assert listed == ["odd/back\\slash"]
    target = engine.restore("odd", tmp_path / "out", passcode=PASSCODE, paths=["odd/back\\slash"])
    assert os.listdir(target / "odd") == ["back\\slash"]
    with pytest.raises(InvalidNameError, match="not a stream name"):
        engine.create("s", passcode=PASSCODE, streams={"db\\dump.sql": io.BytesIO(b"x")})


def test_ls_of_a_path_the_backup_does_not_hold_fails_as_restore_does(
    engine: Engine, tree: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A typo must not look like an empty directory: the others are listed, then exit 3."""
    engine.create("typo", [tree], passcode=PASSCODE)
    monkeypatch.setenv("STRONGROOM_PASSCODE", PASSCODE)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert main(["ls", "typo", "data/nested/deeper", "data/nosuch"]) == 3
    captured = capsys.readouterr()
    assert captured.out.splitlines() == ["data/nested/deeper", "data/nested/deeper/notes.md"]
    assert "Not in backup 'typo': data/nosuch." in captured.err


def test_ls_refuses_what_restore_refuses(engine: Engine, home: Path) -> None:
    members = [(entry("l", b"2", "/etc"), b""), (entry("l/passwd"), b"pwned")]
    forge_backup(home / "stores" / "backupsDefault", "hostile", PASSCODE, tar_of(members))
    with pytest.raises(UnsafeArchiveError, match="runs through 'l'"):
        list(engine.ls("hostile", passcode=PASSCODE))


def test_ls_on_the_command_line(
    engine: Engine,
    tree: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine.create("cli", [tree], passcode=PASSCODE)
    monkeypatch.setenv("STRONGROOM_PASSCODE", PASSCODE)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert main(["ls", "cli", "data/nested/deeper"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "data/nested/deeper",
        "data/nested/deeper/notes.md",
    ]
    monkeypatch.setenv("STRONGROOM_PASSCODE", PASSCODE)  # each command takes it out
    assert main(["ls", "cli", "--long", "data/link-to-notes"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("lrwxrwxrwx ") and line.endswith(
        "data/link-to-notes -> nested/deeper/notes.md"
    )
    assert "2017-07-14 02:40:00 UTC" in line  # the link's own mtime
    monkeypatch.setenv("STRONGROOM_PASSCODE", PASSCODE)
    assert main(["ls", "cli", "--json", "data/nested/run.sh"]) == 0
    listed = json.loads(capsys.readouterr().out)["entries"]
    assert listed == [
        {
            "path": "data/nested/run.sh",
            "type": "file",
            "size": (tree / "nested" / "run.sh").stat().st_size,
            "mode": "0750",
            "mtime": (tree / "nested" / "run.sh").stat().st_mtime_ns // 10**6,  # floor, as ls
            "linkTarget": None,
        }
    ]


def test_a_pinned_backup_id_refuses_a_backup_rolled_back_under_its_name(
    engine: Engine, tree: Path, home: Path, tmp_path: Path
) -> None:
    """Someone with write access to the store keeps a copy of an old genuine backup and
    puts it back after the name was used again: only a pin can tell."""
    manifests = home / "stores" / "backupsDefault" / "manifests"
    old = engine.create("nightly", [tree], passcode=PASSCODE)
    old_manifest = (manifests / "nightly").read_bytes()
    old_data = home / "stores" / "backupsDefault" / "data" / "nightly" / old.backup_id
    kept = tmp_path / "kept-by-the-attacker"
    os.rename(old_data, kept)
    engine.delete("nightly")
    new = engine.create("nightly", [tree], passcode=PASSCODE)
    assert engine.info("nightly").to_dict()["backupId"] == new.backup_id
    (manifests / "nightly").write_bytes(old_manifest)  # the rollback
    os.rename(kept, old_data)

    engine.verify("nightly", passcode=PASSCODE)  # genuine, just not the one expected
    with pytest.raises(IntegrityError, match=f"now {old.backup_id}, not the pinned"):
        engine.verify("nightly", passcode=PASSCODE, backup_id=new.backup_id)
    with pytest.raises(IntegrityError, match="not the pinned"):
        engine.restore("nightly", tmp_path / "out", passcode=PASSCODE, backup_id=new.backup_id)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="'bogus' is not a backupId"):  # a typo, not tampering
        engine.restore("nightly", tmp_path / "out", passcode=PASSCODE, backup_id="bogus")
    engine.restore("nightly", tmp_path / "out", passcode=PASSCODE, backup_id=old.backup_id)
