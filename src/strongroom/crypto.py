"""Passcode key derivation, key wrapping, and the chunk stream cipher.

This module knows nothing of stores or manifests: bytes and keys in, bytes out.
The construction is described in docs/FORMAT.md; in short:

- passcode --Argon2id(salt, params)--> key-encryption key (KEK; v2 calls it the master key)
- a random 32-byte file key per backup, wrapped by the KEK with AES-256-GCM (v1), or to an
  X25519 recipient whose private key only the master key yields (v2, like age's X25519
  stanza), so a write key can wrap file keys without being able to unwrap any
- file key --HKDF-SHA256--> chunk key, manifest MAC key
- chunks: AES-256-GCM, nonce = 88-bit big-endian chunk index || last-chunk flag byte,
  associated data = the stream's binding bytes || the chunk's one-byte encoding tag
  (age's STREAM construction, with a per-backup key)
"""

from __future__ import annotations

import os
import threading
import unicodedata
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import IntegrityError, PasscodeError

__all__ = [
    "KEY_SIZE",
    "MIN_PASSCODE_LENGTH",
    "MIN_SALT_SIZE",
    "TAG_SIZE",
    "WRAPPED_KEY_SIZE",
    "BackupKeys",
    "KdfParams",
    "Passcode",
    "StreamCipher",
    "derive_kek",
    "hmac_sha256",
    "new_file_key",
    "new_salt",
    "recipient_private_key",
    "recipient_public_key",
    "same_bytes",
    "sha256",
    "unwrap_file_key",
    "unwrap_from_recipient",
    "wrap_file_key",
    "wrap_to_recipient",
    "writer_key",
    "wrong_passcode",
]

KEY_SIZE = 32
TAG_SIZE = 16
NONCE_SIZE = 12
#: A wrapped file key: nonce, encrypted key, GCM tag.
WRAPPED_KEY_SIZE = NONCE_SIZE + KEY_SIZE + TAG_SIZE
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
            del secret  # nor in this frame's locals, which a traceback may show
            raise PasscodeError("The passcode must be text.")
        if len(secret) < MIN_PASSCODE_LENGTH:
            del secret
            raise PasscodeError(
                f"Every strongroom passcode has at least {MIN_PASSCODE_LENGTH} characters; "
                "this one has fewer."
            )
        self._secret: str = secret

    def encode(self) -> bytes:
        """The passcode as UTF-8 bytes, for the KDF only."""
        return self._secret.encode("utf-8")

    def doubts(self) -> str:
        """What about this passcode could make it differ from the one meant, as a sentence
        for a wrong passcode's error (empty if nothing): only that, never the passcode.
        It is used exactly as given, so such a difference is another passcode."""
        secret = self._secret
        odd = [
            what
            for what, found in (
                (
                    "starts with a byte-order mark (as some editors save files)",
                    secret[:1] == "\ufeff",
                ),
                ("starts or ends with white space or a line break", secret != secret.strip()),
                (
                    "is not in Unicode's composed form (NFC): an accented letter typed as a "
                    "letter and a combining accent, as some systems do, is another passcode",
                    unicodedata.normalize("NFC", secret) != secret,
                ),
            )
            if found
        ]
        return f" The passcode given {'; and it '.join(odd)}." if odd else ""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Passcode):
            return NotImplemented
        return same_bytes(self.encode(), other.encode())

    def __hash__(self) -> int:
        raise TypeError("A Passcode is not hashable.")

    def __repr__(self) -> str:
        return "Passcode('********')"

    __str__ = __repr__

    def __reduce__(self) -> str:
        raise TypeError("A Passcode cannot be pickled.")

    def __getstate__(self) -> object:  # object's would hand out the secret to any serializer
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
    """Encrypt the file key under the KEK (v1) or a wrap key (v2); `binding` ties it to
    one backup."""
    nonce = os.urandom(NONCE_SIZE)
    return nonce + AESGCM(kek).encrypt(nonce, file_key, binding)


def unwrap_file_key(kek: bytes, wrapped: bytes, binding: bytes) -> bytes:
    """Recover the file key, or raise PasscodeError: the only way this fails honestly."""
    file_key = _open_wrapped(kek, wrapped, binding)
    if file_key is None:
        raise wrong_passcode()
    return file_key


def wrong_passcode() -> PasscodeError:
    """What a passcode that does not open a backup is told (in v1 and v2 alike)."""
    return PasscodeError(
        "The passcode does not open this backup; use the passcode it was made with (for a "
        "backup made with a write key or by a schedule: the one that key was made from)."
    )


def recipient_private_key(master: bytes) -> bytes:
    """sk: the X25519 private key that unwraps v2 file keys; only the passcode yields it."""
    return _hkdf(master, b"strongroom v2 recipient")


def recipient_public_key(private_key: bytes) -> bytes:
    """pk: what a write key wraps file keys to."""
    return X25519PrivateKey.from_private_bytes(private_key).public_key().public_bytes_raw()


def writer_key(master: bytes) -> bytes:
    """The key of the writer MAC: only the passcode or a write key can make a v2 manifest."""
    return _hkdf(master, b"strongroom v2 writer")


def wrap_to_recipient(public_key: bytes, file_key: bytes, binding: bytes) -> tuple[bytes, bytes]:
    """(ephemeral public key, wrapped file key): age's X25519 stanza, with AES-256-GCM."""
    ephemeral = X25519PrivateKey.generate()
    ephemeral_public = ephemeral.public_key().public_bytes_raw()
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(public_key))
    wrap_key = _wrap_key(shared, ephemeral_public, public_key)
    return ephemeral_public, wrap_file_key(wrap_key, file_key, binding)


def unwrap_from_recipient(
    private_key: bytes, ephemeral_public: bytes, wrapped: bytes, binding: bytes
) -> bytes:
    """Recover a v2 file key with sk. Called after the writer MAC has passed, so a failure
    is damage, not a wrong passcode: IntegrityError."""
    recipient = X25519PrivateKey.from_private_bytes(private_key)
    try:
        shared = recipient.exchange(X25519PublicKey.from_public_bytes(ephemeral_public))
    except ValueError:  # a low-order point: the shared secret would be all zeros
        shared = None
    public_key = recipient.public_key().public_bytes_raw()
    file_key = (
        None
        if shared is None
        else _open_wrapped(_wrap_key(shared, ephemeral_public, public_key), wrapped, binding)
    )
    if file_key is None:
        raise IntegrityError("The backup's wrapped file key does not open; it has been damaged.")
    return file_key


def _wrap_key(shared: bytes, ephemeral_public: bytes, public_key: bytes) -> bytes:
    return _hkdf(shared, b"strongroom v2 wrap", salt=ephemeral_public + public_key)


def _open_wrapped(key: bytes, wrapped: bytes, binding: bytes) -> bytes | None:
    """The file key in `wrapped`, or None when it does not authenticate under `key`."""
    try:
        file_key = AESGCM(key).decrypt(wrapped[:NONCE_SIZE], wrapped[NONCE_SIZE:], binding)
    except (InvalidTag, ValueError):
        return None
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
        return hmac_sha256(self.mac_key, message)

    def check_mac(self, message: bytes, tag: bytes) -> None:
        if not same_bytes(self.mac(message), tag):
            raise IntegrityError(
                "The backup's manifest failed authentication; it has been tampered with."
            )

    def __repr__(self) -> str:
        return "BackupKeys(<secret>)"


def hmac_sha256(key: bytes, message: bytes) -> bytes:
    mac = hmac.HMAC(key, hashes.SHA256())
    mac.update(message)
    return mac.finalize()


def sha256(message: bytes) -> bytes:
    digest = hashes.Hash(hashes.SHA256())
    digest.update(message)
    return digest.finalize()


def same_bytes(a: bytes, b: bytes) -> bool:
    """Whether `a == b`, in time that does not tell where they differ: their HMACs under a
    fresh key, compared by cryptography's constant-time check. (Python's hmac.compare_digest
    would do, but importing hmac loads a second OpenSSL into every command: about 20 ms
    of a cold start.)"""
    key = os.urandom(KEY_SIZE)
    mac = hmac.HMAC(key, hashes.SHA256())
    mac.update(a)
    try:
        mac.verify(hmac_sha256(key, b))
    except InvalidSignature:
        return False
    return True


def _hkdf(key: bytes, info: bytes, salt: bytes | None = None) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=salt, info=info).derive(key)


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
