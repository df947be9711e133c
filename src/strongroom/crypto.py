"""Passcode key derivation, key wrapping, and the chunk stream cipher.

This module knows nothing of stores or manifests: bytes and keys in, bytes out.
The construction is described in docs/FORMAT.md; in short:

- passcode --Argon2id(salt, params)--> key-encryption key (KEK)
- a random 32-byte file key per backup, wrapped by the KEK with AES-256-GCM
- file key --HKDF-SHA256--> chunk key, manifest MAC key
- chunks: AES-256-GCM, nonce = 88-bit big-endian chunk index || last-chunk flag byte,
  associated data = the stream's binding bytes || the chunk's one-byte encoding tag
  (age's STREAM construction, with a per-backup key)
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import IntegrityError, PasscodeError

__all__ = [
    "KEY_SIZE",
    "MIN_PASSCODE_LENGTH",
    "MIN_SALT_SIZE",
    "TAG_SIZE",
    "BackupKeys",
    "KdfParams",
    "Passcode",
    "StreamCipher",
    "derive_kek",
    "new_file_key",
    "new_salt",
    "unwrap_file_key",
    "wrap_file_key",
]

KEY_SIZE = 32
TAG_SIZE = 16
NONCE_SIZE = 12
SALT_SIZE = 16
#: Argon2id refuses shorter salts.
MIN_SALT_SIZE = 8
MIN_PASSCODE_LENGTH = 8
_MAX_CHUNK_INDEX = 2**88 - 1
#: Key derivations in one process run one at a time: with cryptography 50 on OpenSSL 4,
#: two Argon2id derivations with more than one lane at once hang, and every later one
#: fails with MemoryError (issue #14). One takes about 0.1 s with the default parameters.
_KDF_LOCK = threading.Lock()


class Passcode:
    """A passcode that never shows itself in a repr, a log line or a traceback."""

    __slots__ = ("_secret",)

    def __init__(self, secret: str | Passcode) -> None:
        if isinstance(secret, Passcode):
            secret = secret.encode().decode("utf-8")
        if not isinstance(secret, str):
            raise PasscodeError("The passcode must be text.")
        if len(secret) < MIN_PASSCODE_LENGTH:
            raise PasscodeError(
                f"The passcode must be at least {MIN_PASSCODE_LENGTH} characters long; "
                "choose a longer one."
            )
        self._secret: str = secret

    def encode(self) -> bytes:
        """The passcode as UTF-8 bytes, for the KDF only."""
        return self._secret.encode("utf-8")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Passcode):
            return NotImplemented
        return hmac.compare_digest(self.encode(), other.encode())

    def __hash__(self) -> int:
        raise TypeError("A Passcode is not hashable.")

    def __repr__(self) -> str:
        return "Passcode('********')"

    __str__ = __repr__

    def __reduce__(self) -> str:
        raise TypeError("A Passcode cannot be pickled.")


@dataclass(frozen=True, slots=True)
class KdfParams:
    """Argon2id cost parameters, recorded in every manifest.

    Reading caps them (`check_bounds`): the KDF runs before the manifest's MAC can be
    checked, so the caps are all a tampered manifest can cost, at most 256 MiB and about
    a second (docs/FORMAT.md has the measurements).
    """

    memory_cost_kib: int = 64 * 1024
    iterations: int = 3
    lanes: int = 4

    MAX_MEMORY_KIB = 256 * 1024
    MAX_ITERATIONS = 16
    MAX_LANES = 16
    #: Memory times iterations: the time Argon2id takes grows with both.
    MAX_WORK_KIB = 1024 * 1024

    @property
    def within_bounds(self) -> bool:
        """Whether a reader accepts these parameters (so a writer may use them)."""
        lanes_ok = 1 <= self.lanes <= self.MAX_LANES
        iterations_ok = 1 <= self.iterations <= self.MAX_ITERATIONS
        memory_ok = 8 * self.lanes <= self.memory_cost_kib <= self.MAX_MEMORY_KIB
        work_ok = self.memory_cost_kib * self.iterations <= self.MAX_WORK_KIB
        return lanes_ok and iterations_ok and memory_ok and work_ok

    def check_bounds(self) -> None:
        """Raise IntegrityError when the parameters are outside what we ever write."""
        if not self.within_bounds:
            raise IntegrityError(
                "The backup's key-derivation parameters are out of bounds; "
                "the manifest has been tampered with."
            )


def new_salt() -> bytes:
    return os.urandom(SALT_SIZE)


def new_file_key() -> bytes:
    return os.urandom(KEY_SIZE)


def derive_kek(passcode: Passcode, salt: bytes, params: KdfParams) -> bytes:
    """Stretch the passcode into a key-encryption key (slow on purpose), one derivation
    at a time in the process."""
    params.check_bounds()
    kdf = Argon2id(
        salt=salt,
        length=KEY_SIZE,
        iterations=params.iterations,
        lanes=params.lanes,
        memory_cost=params.memory_cost_kib,
    )
    with _KDF_LOCK:
        return kdf.derive(passcode.encode())


def wrap_file_key(kek: bytes, file_key: bytes, binding: bytes) -> bytes:
    """Encrypt the file key under the KEK; `binding` ties it to one backup."""
    nonce = os.urandom(NONCE_SIZE)
    return nonce + AESGCM(kek).encrypt(nonce, file_key, binding)


def unwrap_file_key(kek: bytes, wrapped: bytes, binding: bytes) -> bytes:
    """Recover the file key, or raise PasscodeError: the only way this fails honestly."""
    try:
        file_key = AESGCM(kek).decrypt(wrapped[:NONCE_SIZE], wrapped[NONCE_SIZE:], binding)
    except (InvalidTag, ValueError):
        raise PasscodeError(
            "The passcode does not open this backup; use the passcode given when it was created."
        ) from None
    if len(file_key) != KEY_SIZE:
        raise IntegrityError("The wrapped file key has the wrong length.")
    return file_key


@dataclass(frozen=True, slots=True, repr=False)
class BackupKeys:
    """The sub-keys of one backup, derived from its file key with HKDF."""

    chunk_key: bytes
    mac_key: bytes

    @classmethod
    def from_file_key(cls, file_key: bytes) -> BackupKeys:
        return cls(
            chunk_key=_hkdf(file_key, b"strongroom v1 chunk key"),
            mac_key=_hkdf(file_key, b"strongroom v1 manifest mac key"),
        )

    def mac(self, message: bytes) -> bytes:
        return hmac.new(self.mac_key, message, hashlib.sha256).digest()

    def check_mac(self, message: bytes, tag: bytes) -> None:
        if not hmac.compare_digest(self.mac(message), tag):
            raise IntegrityError(
                "The backup's manifest failed authentication; it has been tampered with."
            )

    def __repr__(self) -> str:
        return "BackupKeys(<secret>)"


def _hkdf(key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=None, info=info).derive(key)


class StreamCipher:
    """Seals and opens the chunks of one stream (age's STREAM, with AES-256-GCM).

    A sealed chunk is `tag_byte || ciphertext || GCM tag`. The public tag byte (the
    pipeline uses it for "raw" or "zstd") is authenticated as associated data, and
    the nonce carries the chunk index and the last-chunk flag, so a flipped, cut,
    reordered, swapped, dropped or appended chunk fails to open.
    """

    __slots__ = ("_aead", "_binding")

    def __init__(self, chunk_key: bytes, binding: bytes) -> None:
        self._aead = AESGCM(chunk_key)
        self._binding = binding

    def seal(
        self, index: int, last: bool, tag_byte: int, plaintext: bytes | memoryview
    ) -> bytearray:
        sealed = bytearray(1 + len(plaintext) + TAG_SIZE)
        sealed[0] = tag_byte
        self._aead.encrypt_into(
            _nonce(index, last), plaintext, self._aad(tag_byte), memoryview(sealed)[1:]
        )
        return sealed

    def open(self, index: int, last: bool, sealed: bytes) -> tuple[int, bytearray]:
        """Return (tag_byte, plaintext) or raise IntegrityError."""
        if len(sealed) < 1 + TAG_SIZE:
            raise IntegrityError(f"Chunk {index} is truncated.")
        tag_byte = sealed[0]
        plaintext = bytearray(len(sealed) - 1 - TAG_SIZE)
        try:
            self._aead.decrypt_into(
                _nonce(index, last), memoryview(sealed)[1:], self._aad(tag_byte), plaintext
            )
        except InvalidTag:
            raise IntegrityError(
                f"Chunk {index} failed authentication: it was altered, truncated, "
                "moved from elsewhere, or the backup was cut short."
            ) from None
        return tag_byte, plaintext

    def _aad(self, tag_byte: int) -> bytes:
        return self._binding + bytes((tag_byte,))


def _nonce(index: int, last: bool) -> bytes:
    if not 0 <= index <= _MAX_CHUNK_INDEX:
        raise IntegrityError(f"Chunk index {index} is out of range.")
    return index.to_bytes(11, "big") + (b"\x01" if last else b"\x00")
