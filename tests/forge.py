"""A backup writer built from docs/FORMAT.md alone, as an attacker who picks the passcode
would write one: it lets the tests put any tar stream into a store, never through the
engine, so what restore and verify make of hostile archives is tested as it really is."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import os
import tarfile
import time
import uuid
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

#: Cheap KDF parameters, inside the bounds every reader accepts.
KDF = {"kdf": "argon2id", "memoryCostKiB": 64, "iterations": 1, "lanes": 1}


def forge_backup(
    store_dir: Path, name: str, passcode: str, archive: bytes, chunk_size: int = 1 << 20
) -> None:
    """Write `archive` (a tar stream) into the filesystem store at `store_dir` as the
    backup `name`, sealed under `passcode` exactly as FORMAT.md says."""
    backup_id = uuid.uuid4().hex
    id_bytes = bytes.fromhex(backup_id)
    salt, file_key = os.urandom(16), os.urandom(32)
    kek = Argon2id(
        salt=salt, length=32, iterations=1, lanes=1, memory_cost=KDF["memoryCostKiB"]
    ).derive(passcode.encode())
    nonce = os.urandom(12)
    wrapped = nonce + AESGCM(kek).encrypt(nonce, file_key, b"strongroom v1 key " + id_bytes)
    chunk_key = _hkdf(file_key, b"strongroom v1 chunk key")
    mac_key = _hkdf(file_key, b"strongroom v1 manifest mac key")

    pieces = [archive[i : i + chunk_size] for i in range(0, len(archive), chunk_size)]
    stored = 0
    for index, piece in enumerate(pieces):
        last = b"\x01" if index == len(pieces) - 1 else b"\x00"
        tag = b"\x00"
        aad = b"strongroom v1 chunk " + id_bytes + tag
        sealed = tag + AESGCM(chunk_key).encrypt(index.to_bytes(11, "big") + last, piece, aad)
        _put(store_dir / "data" / name / backup_id / f"{index:010d}", sealed)
        stored += len(sealed)

    document = {
        "format": "strongroom-backup",
        "version": 1,
        "backup": {
            "name": name,
            "backupId": backup_id,
            "description": "forged",
            "created": int(time.time() * 1000),
            "chunkSize": chunk_size,
            "chunkCount": len(pieces),
            "sourceSize": len(archive),
            "storedSize": stored,
            "compression": "none",
        },
        "key": {**KDF, "salt": _b64(salt), "wrappedKey": _b64(wrapped)},
    }
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    document["mac"] = _b64(hmac.new(mac_key, canonical.encode(), hashlib.sha256).digest())
    document["retentionDate"] = None
    _put(store_dir / "retention" / name / f"{backup_id}.never", b"")
    _put(store_dir / "manifests" / name, json.dumps(document).encode())


def tar_of(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    """A pax tar stream of exactly these members, in this order."""
    sink = io.BytesIO()
    with tarfile.open(fileobj=sink, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member, data in members:
            member.size = len(data) if member.isreg() else 0
            tar.addfile(member, io.BytesIO(data) if member.isreg() else None)
    return sink.getvalue()


def entry(
    name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", mode: int | None = None
) -> tarfile.TarInfo:
    """A member as a hostile writer would set it: any name, type and link target."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    info.mode = mode if mode is not None else (0o755 if kind == tarfile.DIRTYPE else 0o644)
    info.mtime = 1_600_000_000
    return info


def _hkdf(key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(key)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _put(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
