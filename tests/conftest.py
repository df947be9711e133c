"""Shared fixtures: an isolated STRONGROOM_HOME, a fast engine, and a realistic tree."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from strongroom import Engine, KdfParams

PASSCODE = "correct horse battery"
#: Argon2id at its cheapest, so tests spend their time on the code under test.
FAST_KDF = KdfParams(memory_cost_kib=8 * 1024, iterations=1, lanes=1)
#: Small chunks, so ordinary test data spans many chunks.
SMALL_CHUNK = 64 * 1024


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh STRONGROOM_HOME with no configuration, no passcode and no plugins."""
    home = tmp_path / "home"
    monkeypatch.setenv("STRONGROOM_HOME", str(home))
    monkeypatch.setenv("STRONGROOM_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.delenv("STRONGROOM_CONFIG", raising=False)
    monkeypatch.delenv("STRONGROOM_PASSCODE", raising=False)
    return home


@pytest.fixture
def engine(home: Path) -> Engine:
    return Engine(kdf=FAST_KDF, chunk_size=SMALL_CHUNK)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A directory tree with the awkward cases a real server has."""
    root = tmp_path / "source" / "data"
    (root / "empty-dir").mkdir(parents=True)
    (root / "nested" / "deeper").mkdir(parents=True)
    (root / "empty-file").write_bytes(b"")
    (root / "ünïcødé – 文件.txt").write_text("héllo wörld\n", encoding="utf-8")
    (root / "nested" / "deeper" / "notes.md").write_text("# notes\n" * 100)
    (root / "big.bin").write_bytes(os.urandom(5 * SMALL_CHUNK + 1234))
    (root / "compressible.txt").write_bytes(b"the same line again\n" * 20_000)
    script = root / "nested" / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o750)
    secret = root / "secret.key"
    secret.write_bytes(b"k" * 32)
    secret.chmod(0o600)
    (root / "link-to-notes").symlink_to("nested/deeper/notes.md")
    (root / "dangling-inside").symlink_to("nested/missing")
    os.link(root / "secret.key", root / "nested" / "secret-hardlink")
    (root / "nested").chmod(0o700)
    os.utime(root / "big.bin", (1_600_000_000, 1_600_000_000))
    return root


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything a restore must reproduce: kind, bytes, permission bits, mtimes, link targets."""
    entries: dict[str, tuple[object, ...]] = {}
    for path in sorted([root, *root.rglob("*")]):
        info = path.lstat()
        relative = str(path.relative_to(root))
        mode = stat.S_IMODE(info.st_mode)
        if stat.S_ISLNK(info.st_mode):
            entries[relative] = ("link", os.readlink(path))
        elif stat.S_ISDIR(info.st_mode):
            entries[relative] = ("dir", mode, int(info.st_mtime))
        else:
            entries[relative] = ("file", mode, int(info.st_mtime), path.read_bytes())
    return entries
