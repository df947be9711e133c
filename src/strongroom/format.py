"""The on-store layout and the manifest: names, keys, schema and validation.

docs/FORMAT.md is the prose version of this module; keep the two in step.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from .crypto import KEY_SIZE, MIN_SALT_SIZE, TAG_SIZE, WRAPPED_KEY_SIZE, KdfParams
from .errors import ConfigError, IntegrityError, InvalidNameError, NewerFormatError

__all__ = [
    "CLAIMS_PREFIX",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "FORMAT_VERSIONS",
    "MANIFESTS_PREFIX",
    "MAX_MANIFEST_SIZE",
    "PENDING_PREFIX",
    "RETENTION_PREFIX",
    "SLOT_FORMAT",
    "STORE_MARKER_KEY",
    "KeySlot",
    "Manifest",
    "chunk_key",
    "claim_key",
    "claims_prefix",
    "data_prefix",
    "from_b64",
    "from_epoch_ms",
    "is_chunk",
    "manifest_key",
    "name_from_manifest_key",
    "parse_claim_key",
    "parse_pending_key",
    "parse_retention_key",
    "parse_taken_key",
    "pending_key",
    "printable",
    "quoted",
    "retention_key",
    "slot_name_prefix",
    "taken_key",
    "to_b64",
    "to_epoch_ms",
    "validate_description",
    "validate_name",
]

FORMAT_NAME = "strongroom-backup"
#: The version every create writes.
FORMAT_VERSION = 2
#: The versions this strongroom reads: v1 (file key wrapped by the passcode's KEK) and v2
#: (file key wrapped to an X25519 recipient, manifest MACed by the writer key too).
FORMAT_VERSIONS = (1, 2)
MANIFESTS_PREFIX = "manifests/"
DATA_PREFIX = "data/"
PENDING_PREFIX = "pending/"
RETENTION_PREFIX = "retention/"
#: The object that marks the root of a store as strongroom's (storemarker.py).
STORE_MARKER_KEY = "strongroom.store"
#: Schedule slot claims: `schedules/<schedule>/<slot>`. A backup name holds no '/', so no
#: key of a backup (manifests/, data/, pending/, retention/) can ever fall under it.
CLAIMS_PREFIX = "schedules/"
#: How a slot (a UTC moment, whole seconds) is written in claim keys and backup names.
SLOT_FORMAT = "%Y-%m-%d-%H-%M-%S"
_SLOT = re.compile(r"[0-9]{4}(-[0-9]{2}){5}")
MAX_MANIFEST_SIZE = 1024 * 1024
MAX_NAME_LENGTH = 128
#: Characters of a backup's or schedule's description: a manifest writes each as up to 12
#: bytes (a JSON escape pair), so the longest stays far below MAX_MANIFEST_SIZE.
MAX_DESCRIPTION_LENGTH = 4096
MAX_CHUNK_SIZE = 64 * 1024 * 1024
#: Chunk indexes are 10 decimal digits in object keys.
MAX_CHUNK_COUNT = 10**10
#: What sealing adds to a chunk's payload: the encoding tag byte and the GCM tag.
CHUNK_OVERHEAD = 1 + TAG_SIZE
#: HMAC-SHA256 tags: the manifest MACs and the key check.
MAC_SIZE = 32
MAX_EPOCH_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the last moment datetime holds
SCHEDULE_TYPES = ("MANUAL", "SCHEDULED")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")


def validate_name(value: object, what: str = "backup") -> str:
    """Return `value` if it is a safe store or backup name, else raise InvalidNameError.

    Names become object keys and directory names, so only ASCII letters, digits, `_`, `-`
    and `.` are allowed, never `..`, and the first character is a letter, digit or `_`.
    """
    rule = (
        f"A {what} name uses 1 to {MAX_NAME_LENGTH} ASCII letters, digits, '_', '-' or '.', "
        "starts with a letter, digit or '_', and does not contain '..'"
    )
    if not isinstance(value, str) or not value:
        raise InvalidNameError(f"The {what} name is missing. {rule}.")
    if len(value) > MAX_NAME_LENGTH or not _NAME.fullmatch(value) or ".." in value:
        raise InvalidNameError(f"{quoted(value)} is not a valid {what} name. {rule}.")
    return value


def validate_description(value: object) -> str:
    """Return `value` if it is text a manifest can hold, else raise ConfigError (before
    anything is written: a backup whose manifest no reader accepts would be lost)."""
    if not isinstance(value, str):
        raise ConfigError("The description must be text.")
    if len(value) > MAX_DESCRIPTION_LENGTH:
        raise ConfigError(
            f"The description is {len(value)} characters long; shorten it to at most "
            f"{MAX_DESCRIPTION_LENGTH}."
        )
    return value


def printable(value: object) -> str:
    """The value as text with its control and format characters escaped (`\\x1b`,
    `\\u202e`): names and descriptions come from a store or a request, so a planted escape
    sequence must not reach a terminal, a newline break a table, nor a right-to-left
    override make `evil\\u202etxt.exe` read as `evilexe.txt`. A backslash stays as it is,
    so that a path shown can be given back (`--json` tells a name holding `\\n` from one
    holding a line break)."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def quoted(value: object, limit: int = 60) -> str:
    """The repr of a value for an error message, cut to about `limit` characters: values
    read from a store or a request are quoted in errors and logs, and one planted there
    could be a megabyte of text."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}…({len(text)} characters)"


def manifest_key(name: str) -> str:
    return MANIFESTS_PREFIX + validate_name(name)


def name_from_manifest_key(key: str) -> str | None:
    """The backup name a listed manifest key stands for, or None for a stray object."""
    if not key.startswith(MANIFESTS_PREFIX):
        return None
    name = key[len(MANIFESTS_PREFIX) :]
    try:
        return validate_name(name)
    except InvalidNameError:
        return None


def data_prefix(name: str, backup_id: str) -> str:
    return f"{DATA_PREFIX}{validate_name(name)}/{backup_id}/"


def chunk_key(name: str, backup_id: str, index: int) -> str:
    return f"{data_prefix(name, backup_id)}{index:010d}"


def is_chunk(key: str, manifest: Manifest) -> bool:
    """Whether a listed data key is one of the backup's chunks, 0 to chunkCount - 1."""
    prefix = data_prefix(manifest.name, manifest.backup_id)
    index = key[len(prefix) :]  # 10 decimal digits, as chunk_key writes them
    return (
        key.startswith(prefix)
        and len(index) == 10
        and index.isascii()
        and index.isdigit()
        and int(index) < manifest.chunk_count
    )


def pending_key(name: str, backup_id: str) -> str:
    """The marker that says a create of this backup is under way (or was cut off)."""
    return f"{PENDING_PREFIX}{validate_name(name)}/{backup_id}"


TAKEN_SUFFIX = ".taken"


def taken_key(name: str, backup_id: str) -> str:
    """What a sweep writes before it removes the data of a create it judged cut off, and
    keeps: the create, should it only have been paused, sees it after its commit and
    withdraws its manifest. Its heartbeat never writes it (it re-puts the marker)."""
    return f"{pending_key(name, backup_id)}{TAKEN_SUFFIX}"


def parse_taken_key(key: str) -> tuple[str, str] | None:
    """(name, backupId) of a listed `taken_key`, or None for any other key."""
    return parse_pending_key(key.removesuffix(TAKEN_SUFFIX)) if key.endswith(TAKEN_SUFFIX) else None


def parse_pending_key(key: str) -> tuple[str, str] | None:
    """(name, backupId) of a listed marker key, or None for a stray object."""
    parts = key[len(PENDING_PREFIX) :].split("/") if key.startswith(PENDING_PREFIX) else []
    if len(parts) != 2 or not re.fullmatch(r"[0-9a-f]{32}", parts[1]):
        return None
    try:
        return validate_name(parts[0]), parts[1]
    except InvalidNameError:
        return None


def retention_key(name: str, backup_id: str, retention: datetime | None) -> str:
    """The index entry that lets cleanup find expired backups by listing alone."""
    when = "never" if retention is None else str(to_epoch_ms(retention))
    return f"{RETENTION_PREFIX}{validate_name(name)}/{backup_id}.{when}"


def parse_retention_key(key: str) -> tuple[str, str, datetime | None] | None:
    """(name, backupId, retentionDate) of a listed index entry, or None for a stray object."""
    parts = key[len(RETENTION_PREFIX) :].split("/") if key.startswith(RETENTION_PREFIX) else []
    match = (
        re.fullmatch(r"([0-9a-f]{32})\.(never|[0-9]{1,15})", parts[1]) if len(parts) == 2 else None
    )
    if match is None:
        return None
    try:
        name = validate_name(parts[0])
    except InvalidNameError:
        return None
    if match.group(2) == "never":
        return name, match.group(1), None
    when = int(match.group(2))
    if when > MAX_EPOCH_MS:
        return None  # no datetime holds it: not an entry strongroom wrote
    return name, match.group(1), from_epoch_ms(when)


def claims_prefix(schedule: str) -> str:
    """Where a schedule's slot claims are: list it to find the newest."""
    return f"{CLAIMS_PREFIX}{validate_name(schedule, 'schedule')}/"


def claim_key(schedule: str, slot: datetime) -> str:
    """The object whose put-if-absent claims one slot of a schedule for one replica."""
    return f"{claims_prefix(schedule)}{slot.astimezone(UTC):{SLOT_FORMAT}}"


def parse_claim_key(key: str) -> tuple[str, datetime] | None:
    """(schedule, slot) of a listed claim key, or None for a stray object."""
    parts = key[len(CLAIMS_PREFIX) :].split("/") if key.startswith(CLAIMS_PREFIX) else []
    if len(parts) != 2 or not _SLOT.fullmatch(parts[1]):
        return None
    try:
        slot = datetime.strptime(parts[1], SLOT_FORMAT).replace(tzinfo=UTC)
        return validate_name(parts[0], "schedule"), slot
    except (InvalidNameError, ValueError):
        return None


def slot_name_prefix(backup_name: str) -> str | None:
    """The schedule a backup name of a slot's shape (`<schedule>-YYYY-MM-DD-HH-MM-SS`)
    would belong to, or None for any other name."""
    head, dash, slot = backup_name[:-20], backup_name[-20:-19], backup_name[-19:]
    return head if head and dash == "-" and _SLOT.fullmatch(slot) else None


def to_epoch_ms(moment: datetime) -> int:
    """Whole milliseconds since 1970, counted exactly: float seconds lose one now and then
    (2**34 - 1 ms came back as 2**34 - 2)."""
    return (moment.astimezone(UTC) - _EPOCH) // _MILLISECOND


def from_epoch_ms(value: int) -> datetime:
    return _EPOCH + value * _MILLISECOND


@dataclass(frozen=True, slots=True, repr=False)
class KeySlot:
    """How to recover the file key from a passcode: KDF parameters and the wrapped key;
    in v2 also the ephemeral X25519 public key it was wrapped with, and the key check
    that tells a wrong passcode from a forged manifest."""

    kdf: KdfParams
    salt: bytes
    wrapped_key: bytes
    ephemeral_key: bytes = b""
    key_check: bytes = b""

    def __repr__(self) -> str:
        return f"KeySlot(kdf={self.kdf!r})"


@dataclass(frozen=True, slots=True)
class Manifest:
    """Everything public about one committed backup. Its existence in a store is the commit.

    `retention_date` is the only mutable field and is left out of the MAC, so that
    retention can be changed and cleanup can run without the passcode.
    """

    name: str
    backup_id: str
    description: str
    created: datetime
    chunk_size: int
    chunk_count: int
    source_size: int
    stored_size: int
    compression: str
    key_slot: KeySlot
    retention_date: datetime | None = None
    mac: bytes = field(default=b"", repr=False)
    #: v2: HMAC-SHA256 under the writer key, over the same bytes as `mac`.
    writer_mac: bytes = field(default=b"", repr=False)
    version: int = FORMAT_VERSION
    #: Made by a schedule (`scheduleType: "SCHEDULED"`, under both MACs); manual
    #: backups have no such key, so their bytes are as before.
    scheduled: bool = False

    def stream_binding(self) -> bytes:
        """Associated data binding every chunk to this backup (the same in v1 and v2)."""
        return b"strongroom v1 chunk " + bytes.fromhex(self.backup_id)

    def key_binding(self) -> bytes:
        """Associated data binding the wrapped file key to this backup and format version,
        so a key slot moved between backups or versions does not open."""
        return b"strongroom v%d key " % self.version + bytes.fromhex(self.backup_id)

    def authenticated_bytes(self) -> bytes:
        """The canonical bytes both manifest MACs cover (everything but retention and the
        MACs)."""
        document = self._document()
        del document["retentionDate"], document["mac"]
        document.pop("writerMac", None)
        return _canonical_json(document)

    def with_macs(self, mac: bytes, writer_mac: bytes) -> Manifest:
        return replace(self, mac=mac, writer_mac=writer_mac)

    def with_retention(self, retention_date: datetime | None) -> Manifest:
        return replace(self, retention_date=retention_date)

    def to_bytes(self) -> bytes:
        """The stored manifest; never one that `from_bytes` refuses as too large."""
        data = json.dumps(self._document(), sort_keys=True, indent=1).encode("utf-8") + b"\n"
        if len(data) > MAX_MANIFEST_SIZE:
            raise ConfigError(
                f"The manifest of {self.name!r} would be {len(data)} bytes, more than the "
                f"{MAX_MANIFEST_SIZE} any strongroom reads; shorten its description."
            )
        return data

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        """Parse and validate a manifest read back from a store (untrusted input)."""
        if len(data) > MAX_MANIFEST_SIZE:
            raise IntegrityError("The manifest is larger than any strongroom writes.")
        try:
            document = json.loads(data)
        except (ValueError, RecursionError):
            raise IntegrityError("The manifest is not JSON.") from None
        if not isinstance(document, dict):
            raise IntegrityError("The manifest is not a JSON object.")
        try:
            return cls._from_document(document)
        except KeyError as exc:
            raise IntegrityError(f"The manifest is malformed: it has no {exc.args[0]!r}.") from None
        except (ValueError, TypeError):
            raise IntegrityError(
                "The manifest is malformed: a field has the wrong type or value."
            ) from None

    def _document(self) -> dict[str, Any]:
        slot = self.key_slot
        v2_key = {"ephemeralKey": to_b64(slot.ephemeral_key), "keyCheck": to_b64(slot.key_check)}
        document: dict[str, Any] = {
            "format": FORMAT_NAME,
            "version": self.version,
            "backup": {
                "name": self.name,
                "backupId": self.backup_id,
                "description": self.description,
                "created": to_epoch_ms(self.created),
                "chunkSize": self.chunk_size,
                "chunkCount": self.chunk_count,
                "sourceSize": self.source_size,
                "storedSize": self.stored_size,
                "compression": self.compression,
            },
            "key": {
                "kdf": "argon2id",
                "memoryCostKiB": slot.kdf.memory_cost_kib,
                "iterations": slot.kdf.iterations,
                "lanes": slot.kdf.lanes,
                "salt": to_b64(slot.salt),
                "wrappedKey": to_b64(slot.wrapped_key),
                **(v2_key if self.version == 2 else {}),
            },
            "retentionDate": (
                None if self.retention_date is None else to_epoch_ms(self.retention_date)
            ),
            "mac": to_b64(self.mac),
        }
        if self.version == 2:
            document["writerMac"] = to_b64(self.writer_mac)
        if self.scheduled:  # absent for manual backups: their bytes are as before
            document["scheduleType"] = "SCHEDULED"
        return document

    @classmethod
    def _from_document(cls, document: dict[str, Any]) -> Manifest:
        if document.get("format") != FORMAT_NAME:
            raise IntegrityError("This object is not a strongroom manifest.")
        version = document.get("version")
        if type(version) is not int or version not in FORMAT_VERSIONS:
            readable = " and ".join(str(v) for v in FORMAT_VERSIONS)
            newer = type(version) is int and version > max(FORMAT_VERSIONS)
            raise (NewerFormatError if newer else IntegrityError)(
                f"The manifest has format version {quoted(version)}; this strongroom "
                f"reads versions {readable}. Upgrade strongroom to read it."
            )
        v2 = version == 2
        backup, key = document["backup"], document["key"]
        if key["kdf"] != "argon2id":
            raise IntegrityError(f"Unknown key-derivation function {quoted(key['kdf'])}.")
        retention = document["retentionDate"]
        manifest = cls(
            name=validate_name(backup["name"]),
            backup_id=_hex_id(backup["backupId"]),
            description=_text(backup["description"]),
            created=from_epoch_ms(_count(backup["created"], high=MAX_EPOCH_MS)),
            chunk_size=_count(backup["chunkSize"], low=1, high=MAX_CHUNK_SIZE),
            chunk_count=_count(backup["chunkCount"], low=1),
            source_size=_count(backup["sourceSize"]),
            stored_size=_count(backup["storedSize"]),
            compression=_choice(backup["compression"], ("zstd", "none")),
            key_slot=KeySlot(
                kdf=KdfParams(
                    memory_cost_kib=_count(key["memoryCostKiB"]),
                    iterations=_count(key["iterations"]),
                    lanes=_count(key["lanes"]),
                ),
                salt=from_b64(key["salt"]),
                wrapped_key=from_b64(key["wrappedKey"]),
                ephemeral_key=from_b64(key["ephemeralKey"]) if v2 else b"",
                key_check=from_b64(key["keyCheck"]) if v2 else b"",
            ),
            retention_date=(
                None if retention is None else from_epoch_ms(_count(retention, high=MAX_EPOCH_MS))
            ),
            mac=from_b64(document["mac"]),
            writer_mac=from_b64(document["writerMac"]) if v2 else b"",
            version=version,
            scheduled=_choice(document.get("scheduleType", "MANUAL"), SCHEDULE_TYPES)
            == "SCHEDULED",
        )
        manifest._check_bounds()
        manifest.key_slot.kdf.check_bounds()
        return manifest

    def _check_bounds(self) -> None:
        """Refuse counts and sizes no writer produces, and salts Argon2id refuses, before
        anything relies on them (the MAC can only be checked after the KDF has run).

        Each chunk but the last holds `chunkSize` bytes, and the last 1 to `chunkSize`
        (0 only if the stream is empty), so the writer makes ceil(sourceSize / chunkSize)
        chunks, or 1; one more is allowed for a writer that ends with an empty chunk.
        """
        count, size = self.chunk_count, self.chunk_size
        most_chunks = min(-(-self.source_size // size) + 1, MAX_CHUNK_COUNT)
        if count > most_chunks or self.source_size > count * size:
            raise IntegrityError(
                f"The manifest of backup {self.name!r} says {count} chunks of up to {size} bytes "
                f"hold {self.source_size} bytes, which no writer does; it has been tampered with."
            )
        if not count * CHUNK_OVERHEAD <= self.stored_size <= count * (size + CHUNK_OVERHEAD):
            raise IntegrityError(
                f"The manifest of backup {self.name!r} says its {count} chunks take "
                f"{self.stored_size} bytes, which they cannot; it has been tampered with."
            )
        if len(self.key_slot.salt) < MIN_SALT_SIZE:
            raise IntegrityError(
                f"The manifest of backup {self.name!r} has a salt of {len(self.key_slot.salt)} "
                f"bytes (at least {MIN_SALT_SIZE} are needed); it has been tampered with."
            )
        if self.version == 2:
            self._check_v2_lengths()

    def _check_v2_lengths(self) -> None:
        """Every v2 key and MAC has the one length strongroom writes."""
        slot = self.key_slot
        lengths = {
            "ephemeralKey": (slot.ephemeral_key, KEY_SIZE),
            "wrappedKey": (slot.wrapped_key, WRAPPED_KEY_SIZE),
            "keyCheck": (slot.key_check, MAC_SIZE),
            "mac": (self.mac, MAC_SIZE),
            "writerMac": (self.writer_mac, MAC_SIZE),
        }
        for what, (value, size) in lengths.items():
            if len(value) != size:
                raise IntegrityError(
                    f"The {what} in the manifest of backup {self.name!r} is {len(value)} "
                    f"bytes long ({size} are written); it has been tampered with."
                )


def _canonical_json(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def to_b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def from_b64(text: object) -> bytes:
    if not isinstance(text, str):
        raise TypeError("expected base64 text")
    return base64.b64decode(text, validate=True)


def _count(value: object, low: int = 0, high: int | None = None) -> int:
    if type(value) is not int or value < low or (high is not None and value > high):
        raise ValueError(f"number out of range: {value!r}")
    return value


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError("expected text")
    return value


def _choice(value: object, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"unexpected value {value!r}")
    return str(value)


def is_backup_id(value: object) -> bool:
    """Whether `value` is written as a backupId is: 32 lowercase hex digits."""
    return isinstance(value, str) and re.fullmatch(r"[0-9a-f]{32}", value) is not None


def _hex_id(value: object) -> str:
    if not is_backup_id(value):
        raise ValueError("backupId must be 32 lowercase hex digits")
    return str(value)


def utc_now() -> datetime:
    return datetime.now(tz=UTC)
