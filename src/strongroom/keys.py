"""Write keys, and the keys a passcode opens a backup with (docs/FORMAT.md, version 2).

A write key holds what creating a backup needs and nothing that opens one: the KDF
parameters and salt (so the passcode can re-derive everything), the recipient's public
key `pk` that file keys are wrapped to, and the writer key that authenticates manifests.
Decrypting needs the recipient's private key, which only the passcode yields. So a
schedule or a server can keep a write key, and still cannot read a backup, its own
included.
"""

from __future__ import annotations

import binascii
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import write_private
from .crypto import (
    KEY_SIZE,
    MIN_SALT_SIZE,
    BackupKeys,
    KdfParams,
    Passcode,
    derive_kek,
    hmac_sha256,
    new_salt,
    recipient_private_key,
    recipient_public_key,
    same_bytes,
    sha256,
    unwrap_file_key,
    unwrap_from_recipient,
    wrap_to_recipient,
    writer_key,
    wrong_passcode,
)
from .errors import ConfigError, IntegrityError, PasscodeError
from .format import KeySlot, Manifest, from_b64, to_b64

__all__ = ["WRITE_KEY_FORMAT", "WriteKey", "open_backup"]

logger = logging.getLogger("strongroom")

WRITE_KEY_FORMAT = "strongroom-write-key"
WRITE_KEY_VERSION = 1
#: A write key file is a few hundred bytes; anything much larger is not one.
MAX_WRITE_KEY_SIZE = 64 * 1024


@dataclass(frozen=True, slots=True, repr=False)
class WriteKey:
    """Creates backups that the passcode restores; opens none (see the module docstring).

    It is still a secret: whoever holds it can add backups the passcode would restore.
    """

    kdf: KdfParams
    salt: bytes
    public_key: bytes
    writer_key: bytes

    @classmethod
    def derive(cls, passcode: str | Passcode, kdf: KdfParams | None = None) -> WriteKey:
        """A write key for `passcode`, with a fresh salt: the one Argon2id run it needs."""
        passcode = Passcode(passcode)  # its frame holds no plain text (a traceback's locals)
        kdf = kdf or KdfParams()
        salt = new_salt()
        return cls._from_master(derive_kek(passcode, salt, kdf), salt, kdf)

    @classmethod
    def _from_master(cls, master: bytes, salt: bytes, kdf: KdfParams) -> WriteKey:
        public_key = recipient_public_key(recipient_private_key(master))
        return cls(kdf, salt, public_key, writer_key(master))

    @property
    def key_check(self) -> bytes:
        """Public, in every manifest: the passcode re-derives it, so a mismatch is a wrong
        passcode, and a match with a failing writer MAC is a forgery."""
        return hmac_sha256(self.writer_key, b"strongroom v2 key check")

    def wrap(self, file_key: bytes, manifest: Manifest) -> KeySlot:
        """The v2 key slot of `manifest` (a draft with its backupId): `file_key` wrapped to
        the recipient."""
        ephemeral_key, wrapped = wrap_to_recipient(
            self.public_key, file_key, manifest.key_binding()
        )
        return KeySlot(self.kdf, self.salt, wrapped, ephemeral_key, self.key_check)

    def sign(self, manifest: Manifest, keys: BackupKeys) -> Manifest:
        """The manifest with both MACs: the file key's, and the writer key's."""
        message = manifest.authenticated_bytes()
        return manifest.with_macs(keys.mac(message), hmac_sha256(self.writer_key, message))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> WriteKey:
        """Read a write key file, checking every field before anything uses it."""
        path = Path(path)
        try:
            with path.open("rb") as handle:
                data = handle.read(MAX_WRITE_KEY_SIZE + 1)
                mode = os.fstat(handle.fileno()).st_mode
        except OSError as exc:
            raise ConfigError(f"Cannot read the write key {str(path)!r}: {exc.strerror}.") from None
        if mode & 0o077:
            logger.warning(
                "The write key %s can be read by others (mode %o): whoever reads it can add "
                "backups that the passcode restores; make it owner-only (chmod 600).",
                path,
                mode & 0o777,
            )
        try:
            if len(data) > MAX_WRITE_KEY_SIZE:
                raise ValueError("too large")
            document = json.loads(data)
            key = cls.from_document(document)
        except (ValueError, TypeError, KeyError, RecursionError, binascii.Error):
            raise ConfigError(
                f"{str(path)!r} is not a strongroom write key (made by 'strongroom write-key "
                "new'), or it is damaged."
            ) from None
        if "checksum" not in document:
            logger.warning(
                "The write key %s has no checksum (an older strongroom made it), so damage to "
                "it cannot be found before its backups fail to restore; make a new one with "
                "'strongroom write-key new'.",
                path,
            )
        return key

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the key file owner-only (0600), through a fresh temporary file; an existing
        `path` is refused unless `overwrite`. Returns the path written."""
        path = Path(path)
        document = json.dumps(self.to_document(), indent=1, sort_keys=True) + "\n"
        try:  # a mistyped directory is refused, never made
            write_private(path, document, overwrite=overwrite, make_parents=False)
        except FileExistsError:
            raise ConfigError(
                f"{str(path)!r} already exists; choose a new file, or replace it with --force."
            ) from None
        except (FileNotFoundError, NotADirectoryError):
            raise ConfigError(
                f"The directory {str(path.parent)!r} for the write key does not exist; make "
                "it first, or choose a file in a directory that does."
            ) from None
        return path

    def to_document(self) -> dict[str, Any]:
        """The key as JSON-able fields (what a key file holds; a schedule keeps it inline),
        with the checksum of them all."""
        fields = {
            "format": WRITE_KEY_FORMAT,
            "version": WRITE_KEY_VERSION,
            "kdf": "argon2id",
            "memoryCostKiB": self.kdf.memory_cost_kib,
            "iterations": self.kdf.iterations,
            "lanes": self.kdf.lanes,
            "salt": to_b64(self.salt),
            "publicKey": to_b64(self.public_key),
            "writerKey": to_b64(self.writer_key),
        }
        return {**fields, "checksum": _checksum(fields)}

    @classmethod
    def from_document(cls, document: Any) -> WriteKey:
        """The key of `to_document`'s fields, each checked; ValueError, TypeError or
        KeyError (binascii.Error for bad base64) if it is not one."""
        if (
            not isinstance(document, dict)
            or document["format"] != WRITE_KEY_FORMAT
            or _int(document["version"]) != WRITE_KEY_VERSION
            or document["kdf"] != "argon2id"
        ):
            raise ValueError("not a write key")
        if "checksum" in document:  # keys written before it was added have none
            fields = {name: value for name, value in document.items() if name != "checksum"}
            if document["checksum"] != _checksum(fields):
                raise ValueError("damaged")
        kdf = KdfParams(
            memory_cost_kib=_int(document["memoryCostKiB"]),
            iterations=_int(document["iterations"]),
            lanes=_int(document["lanes"]),
        )
        key = cls(
            kdf,
            from_b64(document["salt"]),
            from_b64(document["publicKey"]),
            from_b64(document["writerKey"]),
        )
        sizes_ok = len(key.public_key) == len(key.writer_key) == KEY_SIZE
        if not (kdf.within_bounds and len(key.salt) >= MIN_SALT_SIZE and sizes_ok):
            raise ValueError("out of bounds")
        return key

    def __repr__(self) -> str:
        return f"WriteKey(kdf={self.kdf!r}, <secret>)"


def open_backup(manifest: Manifest, passcode: str | Passcode) -> BackupKeys:
    """The backup's keys from its passcode, every MAC checked: a wrong passcode (or a
    changed KDF parameter, salt or key check) is a PasscodeError, anything else that does
    not authenticate an IntegrityError."""
    passcode = Passcode(passcode)  # its frame holds no plain text (a traceback's locals)
    try:
        return _open_backup(manifest, passcode)
    except PasscodeError as exc:
        raise PasscodeError(f"{exc}{passcode.doubts()}") from None


def _open_backup(manifest: Manifest, passcode: Passcode) -> BackupKeys:
    slot = manifest.key_slot
    master = derive_kek(passcode, slot.salt, slot.kdf)
    if manifest.version == 1:
        file_key = unwrap_file_key(master, slot.wrapped_key, manifest.key_binding())
    else:
        expected = WriteKey._from_master(master, slot.salt, slot.kdf)
        if not same_bytes(expected.key_check, slot.key_check):
            raise wrong_passcode()
        writer_mac = hmac_sha256(expected.writer_key, manifest.authenticated_bytes())
        if not same_bytes(writer_mac, manifest.writer_mac):
            raise IntegrityError(  # the key check matched: the passcode is the right one
                f"The manifest of backup {manifest.name!r} was changed after it was written, "
                "or forged: the passcode is right, but the manifest does not carry its "
                "writer's seal."
            )
        file_key = unwrap_from_recipient(
            recipient_private_key(master),
            slot.ephemeral_key,
            slot.wrapped_key,
            manifest.key_binding(),
        )
    keys = BackupKeys.from_file_key(file_key)
    keys.check_mac(manifest.authenticated_bytes(), manifest.mac)
    return keys


def _checksum(fields: dict[str, Any]) -> str:
    """A digest of a key's fields. A key damaged on disk or in a copy still parses, and it
    would make backups the passcode cannot open, found only at a restore; this finds it
    when the key is loaded."""
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    return to_b64(sha256(b"strongroom write key " + canonical)[:16])


def _int(value: object) -> int:
    if type(value) is not int:
        raise TypeError("expected an integer")
    return value
