"""Backups in format v1, as strongroom wrote them before format v2 (commit 03e59d5), kept
in tests/fixtures/v1-store/ so every later strongroom is tested against a real v1 writer's
bytes rather than its own idea of them.

The store was made once, with that commit's code, by

    PYTHONPATH=<a checkout of 03e59d5>/src:. python -m tests.v1_fixture

and is never regenerated: its being old is the point. It holds the tamper lab's two
backups (tests/test_tamper.py) of the payload `make_payload` builds, which is the same
bytes, modes and times on every run.
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

from tests.conftest import FAST_KDF, PASSCODE, SMALL_CHUNK

V1_STORE = Path(__file__).parent / "fixtures" / "v1-store"
#: The backup that gets tampered with, and a sibling made from the same data and passcode.
VICTIM = "victim"
SIBLING = "sibling"
#: The backups' retentionDate (in 2096), so a manifest has digits there to flip.
RETENTION = 4_000_000_000_000
#: The payload's fixed times (2020-09-13), files and directories alike.
MTIME = 1_600_000_000


def make_payload(parent: Path) -> Path:
    """~6 chunks of incompressible data and a small text file, identical on every call."""
    source = parent / "payload"
    (source / "inner").mkdir(parents=True)
    noise = random.Random(17).randbytes(5 * SMALL_CHUNK + 777)
    files = {source / "random.bin": noise, source / "inner" / "note.txt": b"tamper-evident\n" * 50}
    for path, data in files.items():
        path.write_bytes(data)
        path.chmod(0o644)
    for directory in (source / "inner", source):
        directory.chmod(0o755)
    for path in (*files, source / "inner", source):  # directories last: writing bumps them
        os.utime(path, (MTIME, MTIME))
    return source


def _make_store(workdir: Path) -> None:
    """Create the fixture store with whatever strongroom is importable (see the docstring)."""
    from strongroom import Engine
    from strongroom.format import FORMAT_VERSION

    assert FORMAT_VERSION == 1, "run this with strongroom 03e59d5, the last v1 writer"
    engine = Engine(home=workdir / "home", kdf=FAST_KDF, chunk_size=SMALL_CHUNK)
    source = make_payload(workdir)
    for name in (VICTIM, SIBLING):
        engine.create(
            name, [source], passcode=PASSCODE, description=f"the {name}", retention_date=RETENTION
        )
    shutil.copytree(workdir / "home" / "stores" / "backupsDefault", V1_STORE)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as scratch:
        _make_store(Path(scratch))
    print(f"wrote {V1_STORE}", file=sys.stderr)
