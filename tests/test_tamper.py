"""Property tests: any change to a backup's stored bytes is detected, and nothing is restored.

Each test builds its backups once (a function-scoped fixture), saves a pristine copy of
the store directory, and puts that copy back before every Hypothesis example. An
example then tampers with the stored objects and checks that both `verify` and
`restore` refuse, and that the restore left no trace: no target, no staging directory.
Every test runs on format v1 backups (the fixture store a v1 writer made) and on v2
backups made now.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from strongroom import Engine, IntegrityError, PasscodeError, StoreUnavailableError
from strongroom.backends.file import LocalStore
from strongroom.format import MAX_CHUNK_SIZE, Manifest
from tests.conftest import PASSCODE, snapshot
from tests.v1_fixture import RETENTION, SIBLING, V1_STORE, VICTIM, make_payload

#: Hypothesis settings for tests whose fixtures are built once and reset per example.
TAMPER_SETTINGS = settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    max_examples=25,
    deadline=None,
)

JsonDocument = dict[str, Any]
#: A planted object's size: far more than any strongroom writes, and sparse on disk.
HUGE = 1024**3 + 1

#: Restore selections: everything, a file at the start of the archive, one spanning chunks.
SELECTIONS: tuple[tuple[str, ...], ...] = ((), ("payload/inner/note.txt",), ("payload/random.bin",))


@dataclass
class Lab:
    """Two committed backups in the default store, and the means to tamper and reset."""

    engine: Engine
    store_dir: Path
    pristine_dir: Path
    scratch: Path
    source: Path
    expected: dict[str, tuple[object, ...]]
    _counter: Iterator[int] = field(default_factory=itertools.count)

    def reset(self) -> None:
        """Put the store back exactly as it was right after the backups were made."""
        shutil.rmtree(self.store_dir)
        shutil.copytree(self.pristine_dir, self.store_dir, symlinks=True)

    def manifest(self, name: str = VICTIM) -> Path:
        return self.store_dir / "manifests" / name

    def backup_id(self, name: str = VICTIM) -> str:
        backup_id: str = self.read_manifest(name)["backup"]["backupId"]
        return backup_id

    def chunk_dir(self, name: str = VICTIM) -> Path:
        return self.store_dir / "data" / name / self.backup_id(name)

    def chunk(self, index: int, name: str = VICTIM) -> Path:
        return self.chunk_dir(name) / f"{index:010d}"

    def chunks(self, name: str = VICTIM) -> list[Path]:
        return sorted(self.chunk_dir(name).iterdir())

    def read_manifest(self, name: str = VICTIM) -> JsonDocument:
        document: JsonDocument = json.loads(self.manifest(name).read_bytes())
        return document

    def write_manifest(self, document: object, name: str = VICTIM) -> None:
        self.manifest(name).write_text(json.dumps(document, indent=1), encoding="utf-8")

    def fresh_target(self, *, pre_existing: bool = False) -> Path:
        """A restore target inside its own new, empty parent directory."""
        parent = self.scratch / f"restore-{next(self._counter)}"
        parent.mkdir()
        target = parent / "restored"
        if pre_existing:
            target.mkdir()
        return target

    def assert_refused(
        self,
        error: type[BaseException] | tuple[type[BaseException], ...] = IntegrityError,
        *,
        pre_existing: bool = False,
        paths: tuple[str, ...] = (),
        match: str | None = None,
    ) -> None:
        """Both verify and restore raise `error` (its message matching `match`), and the
        restore leaves no trace at all.

        `paths` restores only those archive paths; the whole backup is still authenticated.
        """
        with pytest.raises(error, match=match):
            self.engine.verify(VICTIM, passcode=PASSCODE)
        target = self.fresh_target(pre_existing=pre_existing)
        before = sorted(os.listdir(target.parent))
        with pytest.raises(error, match=match):
            self.engine.restore(VICTIM, target, passcode=PASSCODE, paths=paths)
        assert sorted(os.listdir(target.parent)) == before
        if pre_existing:
            assert target.is_dir() and not any(target.iterdir())
        else:
            assert not os.path.lexists(target)

    def assert_restores_intact(self) -> None:
        """Verify passes and a restore reproduces the original source exactly."""
        self.engine.verify(VICTIM, passcode=PASSCODE)
        target = self.engine.restore(VICTIM, self.fresh_target(), passcode=PASSCODE)
        assert snapshot(target / self.source.name) == self.expected


@pytest.fixture(params=[1, 2], ids=["v1", "v2"])
def lab(engine: Engine, home: Path, tmp_path: Path, request: pytest.FixtureRequest) -> Lab:
    """~6 chunks of incompressible data backed up twice with the same passcode: by a v1
    writer (the fixture store), or now (v2)."""
    source = make_payload(tmp_path / "source")
    store_dir = home / "stores" / "backupsDefault"
    if request.param == 1:
        shutil.copytree(V1_STORE, store_dir)
    else:
        for name in (VICTIM, SIBLING):
            engine.create(
                name,
                [source],
                passcode=PASSCODE,
                description=f"the {name}",
                retention_date=RETENTION,
            )

    pristine_dir = tmp_path / "pristine-store"
    shutil.copytree(store_dir, pristine_dir, symlinks=True)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    lab = Lab(engine, store_dir, pristine_dir, scratch, source, snapshot(source))

    assert lab.read_manifest()["version"] == request.param
    info = engine.verify(VICTIM, passcode=PASSCODE)
    assert info.chunk_count == len(lab.chunks()) >= 5
    assert len(lab.chunks(SIBLING)) == info.chunk_count
    return lab


def _chunk_index(lab: Lab) -> st.SearchStrategy[int]:
    return st.integers(0, len(lab.chunks()) - 1)


# -- chunk objects ------------------------------------------------------------------------


@TAMPER_SETTINGS
@given(data=st.data())
def test_flipped_bit_in_any_chunk_is_detected(lab: Lab, data: st.DataObject) -> None:
    """One flipped bit anywhere in any chunk (tag byte, ciphertext or GCM tag) is caught."""
    lab.reset()
    path = lab.chunk(data.draw(_chunk_index(lab), label="chunk"))
    sealed = bytearray(path.read_bytes())
    offset = data.draw(st.integers(0, len(sealed) - 1), label="offset")
    sealed[offset] ^= 1 << data.draw(st.integers(0, 7), label="bit")
    path.write_bytes(sealed)
    lab.assert_refused(
        pre_existing=data.draw(st.booleans(), label="target exists"),
        paths=data.draw(st.sampled_from(SELECTIONS), label="paths"),
    )


@TAMPER_SETTINGS
@given(data=st.data())
def test_chunk_cut_at_any_length_is_detected(lab: Lab, data: st.DataObject) -> None:
    """A chunk object cut short, down to zero bytes, is caught."""
    lab.reset()
    path = lab.chunk(data.draw(_chunk_index(lab), label="chunk"))
    sealed = path.read_bytes()
    length = data.draw(st.integers(0, len(sealed) - 1), label="length")
    path.write_bytes(sealed[:length])
    lab.assert_refused()


def test_deleting_the_last_chunk_is_detected(lab: Lab) -> None:
    """Dropping the final chunk (truncating the stream at a chunk boundary) is caught, and
    told with the backup and store it is in."""
    lab.chunks()[-1].unlink()
    lab.assert_refused(match=f"^Backup {VICTIM!r} in store 'backupsDefault': Chunk ")
    target = lab.fresh_target()
    with pytest.raises(
        IntegrityError, match=r"is missing from the store\. Nothing was restored\.$"
    ):
        lab.engine.restore(VICTIM, target, passcode=PASSCODE)


def test_a_store_that_fails_midway_says_nothing_was_restored(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk the store cannot read (a dying disk or server) ends the restore as a store
    error that says the target was left as it was, as an integrity error does."""
    failing = lab.chunks()[1].name
    get = LocalStore.get

    def dying_get(store: LocalStore, key: str, **options: Any) -> bytes:
        if key.endswith(failing):
            raise StoreUnavailableError(f"Store {store.name!r} failed on {key!r}: I/O error.")
        return get(store, key, **options)

    monkeypatch.setattr(LocalStore, "get", dying_get)
    target = lab.fresh_target()
    with pytest.raises(StoreUnavailableError, match=r"Nothing was restored\.$"):
        lab.engine.restore(VICTIM, target, passcode=PASSCODE)
    assert not target.exists()


@TAMPER_SETTINGS
@given(data=st.data())
def test_deleting_any_chunk_is_detected(lab: Lab, data: st.DataObject) -> None:
    """Dropping any one chunk object, first, middle or last, is caught."""
    lab.reset()
    lab.chunk(data.draw(_chunk_index(lab), label="chunk")).unlink()
    lab.assert_refused()


@TAMPER_SETTINGS
@given(data=st.data(), extra=st.binary(min_size=1, max_size=100))
def test_bytes_appended_to_a_chunk_are_detected(
    lab: Lab, data: st.DataObject, extra: bytes
) -> None:
    """Anything appended to a chunk object is caught."""
    lab.reset()
    path = lab.chunk(data.draw(_chunk_index(lab), label="chunk"))
    path.write_bytes(path.read_bytes() + extra)
    lab.assert_refused()


def bytes_read() -> int:
    """What this process has read so far (`rchar`: every read call, cached or not)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def test_a_huge_chunk_object_is_refused_after_one_chunk_is_read(lab: Lab) -> None:
    """A chunk object grown to 1 GiB (sparse, so it costs no disk) is refused once a chunk's
    worth of it has been read, never read into memory whole."""
    lab.reset()
    with lab.chunk(1).open("r+b") as handle:
        handle.truncate(HUGE)
    before = bytes_read()
    lab.assert_refused(match="larger than the .* bytes strongroom writes there")
    assert bytes_read() - before < HUGE // 8


@TAMPER_SETTINGS
@given(data=st.data(), gap=st.integers(0, 3))
def test_extra_chunk_object_fails_verify(lab: Lab, data: st.DataObject, gap: int) -> None:
    """An extra chunk object beyond the last one fails verify.

    Restore reads only the manifest's authenticated chunkCount chunks, so it ignores
    the stray object and restores the authentic data unchanged.
    """
    lab.reset()
    count = len(lab.chunks())
    copied = lab.chunk(data.draw(_chunk_index(lab), label="copied chunk"))
    shutil.copyfile(copied, lab.chunk(count + gap))
    with pytest.raises(IntegrityError, match="unexpected object"):
        lab.engine.verify(VICTIM, passcode=PASSCODE)
    target = lab.engine.restore(VICTIM, lab.fresh_target(), passcode=PASSCODE)
    assert snapshot(target / lab.source.name) == lab.expected


def test_copy_of_last_chunk_as_next_index_fails_verify(lab: Lab) -> None:
    """The classic append: the last chunk copied to index n is an unexpected object, named
    so that whoever looks knows what to look at."""
    chunks = lab.chunks()
    appended = lab.chunk(len(chunks))
    shutil.copyfile(chunks[-1], appended)
    key = appended.relative_to(lab.store_dir).as_posix()
    with pytest.raises(
        IntegrityError, match=f"1 unexpected object\\(s\\) in its data \\('{key}'\\)"
    ):
        lab.engine.verify(VICTIM, passcode=PASSCODE)


@TAMPER_SETTINGS
@given(data=st.data())
def test_swapped_chunks_are_detected(lab: Lab, data: st.DataObject) -> None:
    """Exchanging two chunks of the same backup (reordering the stream) is caught."""
    lab.reset()
    first = data.draw(_chunk_index(lab), label="first")
    other = data.draw(st.integers(0, len(lab.chunks()) - 2), label="other")
    second = other + 1 if other >= first else other
    one, two = lab.chunk(first), lab.chunk(second)
    one_bytes, two_bytes = one.read_bytes(), two.read_bytes()
    one.write_bytes(two_bytes)
    two.write_bytes(one_bytes)
    lab.assert_refused()


@TAMPER_SETTINGS
@given(data=st.data())
def test_chunks_spliced_from_another_backup_are_detected(lab: Lab, data: st.DataObject) -> None:
    """Chunks of a sibling backup (same data, same passcode) put in place of ours are caught.

    Each backup has its own random file key and its id in the associated data, so a
    chunk sealed for one backup never opens in another, even at the same index.
    """
    lab.reset()
    indexes = data.draw(st.sets(_chunk_index(lab), min_size=1), label="spliced chunks")
    for index in indexes:
        shutil.copyfile(lab.chunk(index, SIBLING), lab.chunk(index))
    lab.assert_refused()


# -- the manifest -------------------------------------------------------------------------

#: Authenticated manifest fields outside the key slot, and a strategy for new values.
AUTHENTICATED_FIELDS: dict[str, Callable[[Any], st.SearchStrategy[Any]]] = {
    "description": lambda old: st.text(max_size=40).filter(lambda new: new != old),
    "created": lambda old: st.integers(0, 2**41).filter(lambda new: new != old),
    "chunkSize": lambda old: st.integers(1, MAX_CHUNK_SIZE).filter(lambda new: new != old),
    "chunkCount": lambda old: st.integers(1, 2**40).filter(lambda new: new != old),
    "sourceSize": lambda old: st.integers(0, 2**50).filter(lambda new: new != old),
    "storedSize": lambda old: st.integers(0, 2**50).filter(lambda new: new != old),
    "compression": lambda old: st.just("none" if old == "zstd" else "zstd"),
}


@TAMPER_SETTINGS
@given(data=st.data(), field_name=st.sampled_from(sorted(AUTHENTICATED_FIELDS)))
def test_edited_authenticated_manifest_field_is_detected(
    lab: Lab, data: st.DataObject, field_name: str
) -> None:
    """Any change to description, sizes, counts, times or compression fails the MAC."""
    lab.reset()
    document = lab.read_manifest()
    old = document["backup"][field_name]
    document["backup"][field_name] = data.draw(AUTHENTICATED_FIELDS[field_name](old), label="new")
    lab.write_manifest(document)
    lab.assert_refused()


@TAMPER_SETTINGS
@given(data=st.data())
def test_edited_manifest_mac_is_detected(lab: Lab, data: st.DataObject) -> None:
    """A changed MAC (any bit of it; in v2 of either MAC) no longer matches the manifest."""
    lab.reset()
    document = lab.read_manifest()
    field_name = data.draw(st.sampled_from(sorted({"mac", "writerMac"} & set(document))))
    mac = bytearray(base64.b64decode(document[field_name]))
    mac[data.draw(st.integers(0, len(mac) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    document[field_name] = base64.b64encode(bytes(mac)).decode()
    lab.write_manifest(document)
    lab.assert_refused()


@TAMPER_SETTINGS
@given(data=st.data())
def test_any_bit_flip_in_the_manifest_is_refused_or_harmless(lab: Lab, data: st.DataObject) -> None:
    """A flipped bit anywhere in the manifest file is refused unless it changed nothing signed.

    Harmless flips exist: retentionDate is unsigned, and base64 ignores a final character's
    unused bits, so such a flip decodes to the same key slot and MAC. Any flip that
    changes what the MAC covers (or the MAC itself) must be refused.
    """
    lab.reset()
    raw = bytearray(lab.manifest().read_bytes())
    original = Manifest.from_bytes(bytes(raw))
    anywhere = st.integers(0, len(raw) - 1)
    offset = data.draw(anywhere | st.sampled_from(_maybe_harmless_offsets(raw)), label="offset")
    raw[offset] ^= 1 << data.draw(st.integers(0, 7), label="bit")
    lab.manifest().write_bytes(raw)
    try:
        tampered: Manifest | None = Manifest.from_bytes(bytes(raw))
    except IntegrityError:
        tampered = None
    signed_unchanged = (
        tampered is not None
        and tampered.authenticated_bytes() == original.authenticated_bytes()
        and (tampered.mac, tampered.writer_mac) == (original.mac, original.writer_mac)
    )
    event("signed fields unchanged" if signed_unchanged else "refused")
    if signed_unchanged:
        lab.assert_restores_intact()
    else:
        lab.assert_refused((IntegrityError, PasscodeError))


#: The padded base64 fields of a manifest, by version.
PADDED_FIELDS = {1: ("mac", "salt"), 2: ("mac", "salt", "writerMac", "keyCheck", "ephemeralKey")}


def _maybe_harmless_offsets(raw: bytes | bytearray) -> list[int]:
    """Offsets of retentionDate's digits and of the last base64 character before '='."""
    retention = re.search(rb'"retentionDate": (\d+)', raw)
    assert retention is not None
    offsets = list(range(*retention.span(1)))
    padded_fields = PADDED_FIELDS[json.loads(raw)["version"]]
    names = "|".join(padded_fields).encode()
    for padded in re.finditer(rb'"(?:' + names + rb')": "[A-Za-z0-9+/]*([A-Za-z0-9+/])=', raw):
        offsets.append(padded.start(1))
    assert len(offsets) == len(str(RETENTION)) + len(padded_fields)
    return offsets


def test_manifest_moved_to_another_name_is_detected(lab: Lab) -> None:
    """The sibling's manifest stored under our name is refused: names are part of it."""
    shutil.copyfile(lab.manifest(SIBLING), lab.manifest())
    with pytest.raises(IntegrityError, match="belongs to"):
        lab.engine.info(VICTIM)
    lab.assert_refused()


def _other_first(text: str) -> str:
    """The base64 text with a different first character (an edit that always changes it)."""
    return ("B" if text[0] == "A" else "A") + text[1:]


#: Key-slot fields: any change makes the wrong key-encryption key or binding (v1), or fails
#: the key check or the writer MAC (v2).
KEY_SLOT_EDITS: dict[str, Callable[[JsonDocument], None]] = {
    "ephemeralKey": lambda doc: doc["key"].update(
        ephemeralKey=_other_first(doc["key"]["ephemeralKey"])
    ),
    "keyCheck": lambda doc: doc["key"].update(keyCheck=_other_first(doc["key"]["keyCheck"])),
    "memoryCostKiB": lambda doc: doc["key"].update(memoryCostKiB=doc["key"]["memoryCostKiB"] * 2),
    "iterations": lambda doc: doc["key"].update(iterations=doc["key"]["iterations"] + 1),
    "lanes": lambda doc: doc["key"].update(lanes=doc["key"]["lanes"] + 1),
    "salt": lambda doc: doc["key"].update(salt=_other_first(doc["key"]["salt"])),
    "wrappedKey": lambda doc: doc["key"].update(wrappedKey=_other_first(doc["key"]["wrappedKey"])),
    "backupId": lambda doc: doc["backup"].update(backupId="0" * 32),
}


@pytest.mark.parametrize("field_name", sorted(KEY_SLOT_EDITS))
def test_edited_key_slot_is_refused(lab: Lab, field_name: str) -> None:
    """Key-slot edits are refused before any chunk is read.

    The passcode check comes first and cannot tell a changed key slot from a wrong
    passcode, so these surface as PasscodeError (or IntegrityError), never as success.
    """
    document = lab.read_manifest()
    if field_name not in {*document["key"], *document["backup"]}:
        pytest.skip(f"a v{document['version']} manifest has no {field_name}")
    before = json.dumps(document, sort_keys=True)
    KEY_SLOT_EDITS[field_name](document)
    assert json.dumps(document, sort_keys=True) != before
    lab.write_manifest(document)
    lab.assert_refused((PasscodeError, IntegrityError))


def test_key_slot_swapped_between_backups_is_refused(lab: Lab) -> None:
    """The sibling's key slot (same passcode, same data) does not open the victim: in v1 its
    wrapped key is bound to the sibling's backupId, in v2 the writer MAC covers the slot."""
    document = lab.read_manifest()
    document["key"] = lab.read_manifest(SIBLING)["key"]
    lab.write_manifest(document)
    lab.assert_refused(PasscodeError if document["version"] == 1 else IntegrityError)


@settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=10, deadline=None
)
@given(retention=st.none() | st.integers(0, 4_102_444_800_000))
def test_editing_retention_date_keeps_backup_restorable(lab: Lab, retention: int | None) -> None:
    """retentionDate is deliberately outside the MAC: editing it breaks nothing."""
    lab.reset()
    document = lab.read_manifest()
    document["retentionDate"] = retention
    lab.write_manifest(document)
    info = lab.engine.info(VICTIM)
    assert (None if info.retention_date is None else info.to_dict()["retentionDate"]) == retention
    lab.assert_restores_intact()


@pytest.mark.parametrize(
    ("field_name", "value"),
    [
        ("memoryCostKiB", 10**9),
        ("memoryCostKiB", 0),
        ("iterations", 10**6),
        ("lanes", 10**4),
    ],
)
def test_absurd_kdf_parameters_fail_fast(
    lab: Lab, field_name: str, value: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out-of-bounds KDF costs are rejected by a bounds check; the KDF never runs."""
    document = lab.read_manifest()
    document["key"][field_name] = value
    lab.write_manifest(document)

    def kdf_must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("the KDF ran with out-of-bounds parameters")

    monkeypatch.setattr("strongroom.crypto.Argon2id", kdf_must_not_run)
    with pytest.raises(IntegrityError, match="out of bounds"):
        lab.engine.info(VICTIM)
    lab.assert_refused()


@pytest.mark.parametrize(
    "content",
    [b"[]", b"null", b'"manifest"', b"42", b"[" * 100_000],
    ids=["array", "null", "string", "number", "deeply-nested"],
)
def test_manifest_that_is_not_an_object_is_an_integrity_error(lab: Lab, content: bytes) -> None:
    """Any unreadable manifest is an IntegrityError, whatever JSON it holds."""
    lab.manifest().write_bytes(content)
    with pytest.raises(IntegrityError):
        lab.engine.info(VICTIM)
    lab.assert_refused()


def test_a_huge_manifest_is_refused_after_its_limit_is_read(
    lab: Lab, caplog: pytest.LogCaptureFixture
) -> None:
    """A manifest grown to 1 GiB (sparse) is refused by info, list, verify and restore once
    the largest manifest strongroom writes has been read, never read whole."""
    with lab.manifest().open("r+b") as handle:
        handle.truncate(HUGE)
    refusal = "larger than the 1048576 bytes strongroom writes there"
    before = bytes_read()
    with pytest.raises(IntegrityError, match=refusal):
        lab.engine.info(VICTIM)
    assert [info.name for info in lab.engine.list()] == [SIBLING]
    assert refusal in caplog.text
    lab.assert_refused(match=refusal)
    assert bytes_read() - before < HUGE // 8


@pytest.mark.parametrize(
    ("section", "field_name", "value"),
    [
        ("backup", "created", 10**20),
        ("backup", "created", 10**400),
        (None, "retentionDate", 10**20),
    ],
    ids=["created-1e20", "created-1e400", "retentionDate-1e20"],
)
def test_out_of_range_manifest_time_is_an_integrity_error(
    lab: Lab, section: str | None, field_name: str, value: int
) -> None:
    """A time no datetime can hold makes the manifest malformed: an IntegrityError."""
    document = lab.read_manifest()
    (document if section is None else document[section])[field_name] = value
    lab.write_manifest(document)
    with pytest.raises(IntegrityError, match="malformed"):
        lab.engine.info(VICTIM)
    lab.assert_refused()


# -- the passcode -------------------------------------------------------------------------


@TAMPER_SETTINGS
@given(passcode=st.text(min_size=8, max_size=30).filter(lambda text: text != PASSCODE))
def test_wrong_passcode_is_refused(lab: Lab, passcode: str) -> None:
    """A wrong passcode raises PasscodeError from verify and restore; nothing is created."""
    with pytest.raises(PasscodeError):
        lab.engine.verify(VICTIM, passcode=passcode)
    target = lab.fresh_target()
    with pytest.raises(PasscodeError):
        lab.engine.restore(VICTIM, target, passcode=passcode)
    assert os.listdir(target.parent) == []


def test_failed_restore_leaves_no_new_parent_directories(lab: Lab) -> None:
    """A restore that fails creates nothing at all, not even the target's missing parents."""
    lab.chunks()[-1].unlink()
    outer = lab.scratch / "outer"
    with pytest.raises(IntegrityError):
        lab.engine.restore(VICTIM, outer / "middle" / "restored", passcode=PASSCODE)
    assert not outer.exists()


def test_pristine_backup_restores(lab: Lab) -> None:
    """The control: untouched, the fixture's backup verifies and restores exactly."""
    lab.assert_restores_intact()
    for paths in SELECTIONS[1:]:
        target = lab.engine.restore(VICTIM, lab.fresh_target(), passcode=PASSCODE, paths=paths)
        restored = {str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()}
        assert restored == set(paths)
