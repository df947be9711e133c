"""Write keys and format v2: the properties of docs/FORMAT.md's "Version 2" (KEYS.md's
six), each a test that fails when the property is broken. The tamper and bounds tests
(tests/test_tamper.py, tests/test_bounds.py) run on v1 and v2 backups alike."""

from __future__ import annotations

import base64
import errno
import json
import logging
import os
import shutil
import stat
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from strongroom import (
    ConfigError,
    Engine,
    IntegrityError,
    JobStatus,
    Passcode,
    PasscodeError,
    StrongroomError,
    WriteKey,
    libc,
)
from strongroom.crypto import (
    BackupKeys,
    StreamCipher,
    derive_kek,
    recipient_private_key,
    recipient_public_key,
    unwrap_from_recipient,
    writer_key,
)
from strongroom.format import Manifest
from strongroom.schedules import define
from tests.conftest import FAST_KDF, PASSCODE, snapshot
from tests.v1_fixture import SIBLING, V1_STORE, VICTIM, make_payload

WRONG_PASSCODE = "not the passcode at all"
SHORT_PASSCODE = "Zq8-Sho"  # one character short


@pytest.fixture
def write_key() -> WriteKey:
    return WriteKey.derive(PASSCODE, kdf=FAST_KDF)


def _store(home: Path) -> Path:
    return home / "stores" / "backupsDefault"


def _manifest_path(home: Path, name: str) -> Path:
    return _store(home) / "manifests" / name


def _document(home: Path, name: str) -> dict[str, object]:
    document: dict[str, object] = json.loads(_manifest_path(home, name).read_bytes())
    return document


def _forms(value: bytes) -> list[bytes]:
    """A secret as it could appear in a file: raw, base64 (and its unpadded stem), hex."""
    encoded = base64.b64encode(value)
    return [
        value,
        encoded,
        encoded.rstrip(b"="),
        value.hex().encode(),
        value.hex().upper().encode(),
    ]


# -- 1. a write key's backup restores with the passcode -----------------------------------


def test_a_write_key_backup_restores_with_the_passcode_byte_for_byte(
    engine: Engine, write_key: WriteKey, tree: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No Argon2id runs at create time: it ran when the key was derived."""
    with monkeypatch.context() as patched:

        def kdf_must_not_run(*args: object, **kwargs: object) -> None:
            raise AssertionError("Argon2id ran during a create with a write key")

        patched.setattr("strongroom.crypto.Argon2id", kdf_must_not_run)
        engine.create("keyed", [tree], write_key=write_key)
    assert _document(home, "keyed")["version"] == 2
    engine.verify("keyed", passcode=PASSCODE)
    assert {entry.path for entry in engine.ls("keyed", passcode=PASSCODE)} >= {"data/big.bin"}
    target = engine.restore("keyed", home / "restored", passcode=PASSCODE)
    assert snapshot(target / tree.name) == snapshot(tree)


def test_a_wrong_passcode_on_a_v2_backup_is_a_passcode_error(
    engine: Engine, write_key: WriteKey, tree: Path, home: Path
) -> None:
    engine.create("keyed", [tree], write_key=write_key)
    engine.create("interactive", [tree], passcode=PASSCODE)
    for name in ("keyed", "interactive"):
        with pytest.raises(PasscodeError):
            engine.verify(name, passcode=WRONG_PASSCODE)
        with pytest.raises(PasscodeError):
            engine.restore(name, home / f"restored-{name}", passcode=WRONG_PASSCODE)
        assert not (home / f"restored-{name}").exists()


def test_every_new_backup_is_v2_and_never_stores_pk(engine: Engine, tree: Path, home: Path) -> None:
    """An interactive create writes v2 with a fresh salt; its manifest never holds `pk`,
    from which, with the writer MAC gone, anyone could wrap keys the passcode opens."""
    engine.create("one", [tree], passcode=PASSCODE)
    engine.create("two", [tree], passcode=PASSCODE)
    one, two = (Manifest.from_bytes(_manifest_path(home, n).read_bytes()) for n in ("one", "two"))
    assert one.version == two.version == 2
    assert one.key_slot.salt != two.key_slot.salt
    master = derive_kek(Passcode(PASSCODE), one.key_slot.salt, one.key_slot.kdf)
    public_key = recipient_public_key(recipient_private_key(master))
    raw = _manifest_path(home, "one").read_bytes()
    assert not [form for form in _forms(public_key) if form in raw]


def test_a_create_takes_exactly_one_of_passcode_and_write_key(
    engine: Engine, write_key: WriteKey, tree: Path, home: Path
) -> None:
    with pytest.raises(ConfigError, match="exactly one.*both"):
        engine.create("both", [tree], passcode=PASSCODE, write_key=write_key)
    with pytest.raises(ConfigError, match="exactly one.*neither"):
        engine.create("neither", [tree])
    with pytest.raises(ConfigError, match="WriteKey"):
        engine.create("path", [tree], write_key="key.json")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="exactly one"):
        engine.submit_backup("job", [tree])
    assert engine.list() == []


def test_a_create_job_takes_a_write_key(
    engine: Engine, write_key: WriteKey, tree: Path, home: Path
) -> None:
    job = engine.jobs.wait(engine.submit_backup("job", [tree], write_key=write_key).jobid, 60)
    assert job.status is JobStatus.COMPLETED, job.messages
    target = engine.restore("job", home / "restored", passcode=PASSCODE)
    assert snapshot(target / tree.name) == snapshot(tree)
    engine.close()


# -- 2. the write key opens nothing ---------------------------------------------------------


def test_the_write_key_file_holds_neither_passcode_nor_master_nor_sk(
    write_key: WriteKey, tmp_path: Path
) -> None:
    path = write_key.save(tmp_path / "write.key")
    content = path.read_bytes()
    master = derive_kek(Passcode(PASSCODE), write_key.salt, write_key.kdf)
    secrets = {
        "passcode": PASSCODE.encode(),
        "master": master,
        "sk": recipient_private_key(master),
    }
    found = [what for what, value in secrets.items() for form in _forms(value) if form in content]
    assert found == []
    document = json.loads(content)
    assert document["format"] == "strongroom-write-key" and document["version"] == 1
    assert WriteKey.load(path) == write_key


def test_a_write_key_others_can_read_is_loaded_with_a_warning(
    write_key: WriteKey, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """It cannot decrypt, but it can forge backups the passcode restores: as ssh says of
    a private key others can read."""
    path = write_key.save(tmp_path / "write.key")
    with caplog.at_level(logging.WARNING, logger="strongroom"):
        WriteKey.load(path)
    assert caplog.records == [], "saved owner-only"
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="strongroom"):
        assert WriteKey.load(path) == write_key
    assert any("chmod 600" in r.getMessage() for r in caplog.records)


def test_the_write_key_and_the_whole_store_do_not_decrypt(
    engine: Engine, write_key: WriteKey, tree: Path, home: Path, tmp_path: Path
) -> None:
    """Every value in the key file and in the manifest, tried as master, sk, file key and
    chunk key, opens neither the wrapped file key nor a chunk; the passcode does."""
    engine.create("keyed", [tree], write_key=write_key)
    manifest = Manifest.from_bytes(_manifest_path(home, "keyed").read_bytes())
    document = json.loads(write_key.save(tmp_path / "write.key").read_bytes())
    slot = manifest.key_slot
    candidates = [base64.b64decode(document[f]) for f in ("salt", "publicKey", "writerKey")]
    candidates += [slot.salt, slot.ephemeral_key, slot.wrapped_key, slot.key_check]
    candidates += [manifest.mac, manifest.writer_mac]
    chunk = (_store(home) / "data" / "keyed" / manifest.backup_id / "0000000000").read_bytes()
    last = manifest.chunk_count == 1

    def opens(value: bytes) -> bool:
        key = value[:32].ljust(32, b"\0")
        tries = [
            lambda: unwrap_from_recipient(
                recipient_private_key(key),
                slot.ephemeral_key,
                slot.wrapped_key,
                manifest.key_binding(),
            ),
            lambda: unwrap_from_recipient(
                key, slot.ephemeral_key, slot.wrapped_key, manifest.key_binding()
            ),
            lambda: StreamCipher(key, manifest.stream_binding()).open(0, last, chunk),
            lambda: StreamCipher(
                BackupKeys.from_file_key(key).chunk_key, manifest.stream_binding()
            ).open(0, last, chunk),
        ]
        for attempt in tries:
            try:
                attempt()
            except IntegrityError:
                continue
            return True
        return False

    assert [value for value in candidates if opens(value)] == []
    assert opens(derive_kek(Passcode(PASSCODE), slot.salt, slot.kdf))  # the control


# -- 3. a forgery wrapped to pk is refused --------------------------------------------------


def test_a_forged_manifest_wrapped_to_pk_is_refused(
    engine: Engine, tree: Path, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone who can write to the store and knows every public value, `pk` included,
    but holds neither the passcode nor the write key: their backup has a valid file-key
    MAC and a key slot wrapped to `pk`, the genuine salt and key check; only the writer
    MAC is not the writer key's. Without that check the passcode would restore it."""
    engine.create("genuine", [tree], passcode=PASSCODE)
    genuine = Manifest.from_bytes(_manifest_path(home, "genuine").read_bytes())
    slot = genuine.key_slot
    master = derive_kek(Passcode(PASSCODE), slot.salt, slot.kdf)
    public_key = recipient_public_key(recipient_private_key(master))  # assume it leaked
    forger = WriteKey(slot.kdf, slot.salt, public_key, os.urandom(32))
    file_key = os.urandom(32)
    monkeypatch.setattr("strongroom.enginecreate.new_file_key", lambda: file_key)
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "evil.txt").write_text("planted\n")
    engine.create("forged", [planted], write_key=forger)
    forged = Manifest.from_bytes(_manifest_path(home, "forged").read_bytes())
    forged = replace(forged, key_slot=replace(forged.key_slot, key_check=slot.key_check))
    forged = forged.with_macs(
        BackupKeys.from_file_key(file_key).mac(forged.authenticated_bytes()), forged.writer_mac
    )
    _manifest_path(home, "forged").write_bytes(forged.to_bytes())
    with pytest.raises(IntegrityError, match="changed after it was written, or forged: the"):
        engine.verify("forged", passcode=PASSCODE)
    with pytest.raises(IntegrityError, match="forged"):
        engine.restore("forged", home / "restored", passcode=PASSCODE)
    assert not (home / "restored").exists()
    # Everything but the writer MAC holds: the forgery fails on that check alone.
    forged_slot = forged.key_slot
    unwrapped = unwrap_from_recipient(
        recipient_private_key(master),
        forged_slot.ephemeral_key,
        forged_slot.wrapped_key,
        forged.key_binding(),
    )
    assert unwrapped == file_key


# -- 4. key slots do not move between backups or versions ---------------------------------


def test_key_slots_swapped_between_write_key_backups_are_refused(
    engine: Engine, write_key: WriteKey, tree: Path, home: Path
) -> None:
    """Backups of one write key share salt and key check: the writer MAC still binds each
    slot to its backup (and the wrapped key to its backupId)."""
    engine.create("first", [tree], write_key=write_key)
    engine.create("second", [tree], write_key=write_key)
    first, second = _document(home, "first"), _document(home, "second")
    first["key"] = second["key"]
    _manifest_path(home, "first").write_text(json.dumps(first))
    with pytest.raises(IntegrityError):
        engine.verify("first", passcode=PASSCODE)
    engine.verify("second", passcode=PASSCODE)


def _v1_and_v2(engine: Engine, home: Path, tmp_path: Path) -> None:
    """The v1 fixture store, and a v2 backup `fresh` of the same payload in it."""
    shutil.copytree(V1_STORE, _store(home))
    engine.create("fresh", [make_payload(tmp_path / "source")], passcode=PASSCODE)


@pytest.mark.parametrize("into", [VICTIM, "fresh"], ids=["v2 slot in v1", "v1 slot in v2"])
def test_key_slots_swapped_between_v1_and_v2_are_refused(
    engine: Engine, home: Path, tmp_path: Path, into: str
) -> None:
    _v1_and_v2(engine, home, tmp_path)
    source = "fresh" if into == VICTIM else VICTIM
    document = _document(home, into)
    document["key"] = _document(home, source)["key"]
    _manifest_path(home, into).write_text(json.dumps(document))
    with pytest.raises((PasscodeError, IntegrityError)):
        engine.verify(into, passcode=PASSCODE)


@pytest.mark.parametrize("into", [VICTIM, "fresh"], ids=["v1 as v2", "v2 as v1"])
def test_a_changed_version_is_refused(
    engine: Engine, home: Path, tmp_path: Path, into: str
) -> None:
    _v1_and_v2(engine, home, tmp_path)
    document = _document(home, into)
    document["version"] = 3 - int(str(document["version"]))
    _manifest_path(home, into).write_text(json.dumps(document))
    with pytest.raises((PasscodeError, IntegrityError)):
        engine.verify(into, passcode=PASSCODE)


# -- 5. v1 backups still restore; a v1-only reader refuses v2 clearly ---------------------


def test_the_v1_fixture_backups_restore_byte_for_byte(
    engine: Engine, home: Path, tmp_path: Path
) -> None:
    shutil.copytree(V1_STORE, _store(home))
    expected = snapshot(make_payload(tmp_path / "source"))
    assert [info.name for info in engine.list()] == [VICTIM, SIBLING]
    for name in (VICTIM, SIBLING):
        assert _document(home, name)["version"] == 1
        engine.verify(name, passcode=PASSCODE)
        target = engine.restore(name, tmp_path / f"restored-{name}", passcode=PASSCODE)
        assert snapshot(target / "payload") == expected
        with pytest.raises(PasscodeError):
            engine.verify(name, passcode=WRONG_PASSCODE)


def test_a_reader_of_v1_only_refuses_a_v2_manifest_by_its_version(
    engine: Engine, tree: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a v1 strongroom does (its check is `version != 1`), and a v2 one with v3."""
    engine.create("fresh", [tree], passcode=PASSCODE)
    with monkeypatch.context() as v1_reader:
        v1_reader.setattr("strongroom.format.FORMAT_VERSIONS", (1,))
        with pytest.raises(IntegrityError, match="format version 2; .*Upgrade strongroom"):
            engine.info("fresh")
    document = _document(home, "fresh")
    document["version"] = 3
    _manifest_path(home, "fresh").write_text(json.dumps(document))
    with pytest.raises(IntegrityError, match="format version 3; .*Upgrade strongroom"):
        engine.info("fresh")


# -- the key file ---------------------------------------------------------------------------


@pytest.fixture(params=["hard links", "renameat2", "a check before the rename"])
def placing(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file saved without overwrite is put in place by a hard link; where the file system
    has none (a USB stick's FAT: link fails with EPERM), by renameat2's RENAME_NOREPLACE;
    and where it has neither, by a check just before the rename."""

    def refuse(*_: object, **__: object) -> None:
        raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))

    if request.param != "hard links":
        monkeypatch.setattr(os, "link", refuse)
    if request.param == "a check before the rename":
        monkeypatch.setattr(libc, "_RENAMEAT2", None)


@pytest.mark.usefixtures("placing")
def test_a_write_key_is_saved_owner_only_and_never_over_anything(
    write_key: WriteKey, tmp_path: Path
) -> None:
    path = write_key.save(tmp_path / "write.key")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(ConfigError, match="already exists"):
        write_key.save(path)
    other = WriteKey.derive(PASSCODE, kdf=FAST_KDF)
    assert WriteKey.load(other.save(path, overwrite=True)) == other
    victim = tmp_path / "elsewhere"
    victim.write_text("not to be touched")
    link = tmp_path / "link.key"
    link.symlink_to(victim)
    with pytest.raises(ConfigError, match="already exists"):
        write_key.save(link)
    write_key.save(link, overwrite=True)  # replaces the link, never writes through it
    assert victim.read_text() == "not to be touched"
    assert not link.is_symlink() and WriteKey.load(link) == write_key
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "link.key", "write.key"]
    for mistyped in (tmp_path / "no-such-dir" / "write.key", path / "write.key"):
        with pytest.raises(ConfigError, match="does not exist; make it first"):
            write_key.save(mistyped)  # a typo's directory is never made
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "link.key", "write.key"]


def _edited(document: dict[str, object], **changes: object) -> bytes:
    return json.dumps({**document, **changes}).encode()


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: b"not json",
        lambda d: b"[]",
        lambda d: _edited(d, format="strongroom-backup"),
        lambda d: _edited(d, version=2),
        lambda d: _edited(d, memoryCostKiB=10**9),
        lambda d: _edited(d, lanes=True),
        lambda d: _edited(d, salt="AAAA"),
        lambda d: _edited(d, publicKey=base64.b64encode(bytes(31)).decode()),
        lambda d: _edited(d, writerKey="not base64!"),
        lambda d: _edited(d, writerKey=None),
        lambda d: json.dumps({k: v for k, v in d.items() if k != "publicKey"}).encode(),
        lambda d: _edited(d, padding="x" * 70_000),
        lambda d: _edited(d, writerKey=base64.b64encode(bytes(32)).decode()),
        lambda d: _edited(d, publicKey=base64.b64encode(bytes(32)).decode()),
        lambda d: _edited(d, iterations=d["iterations"] + 1),  # type: ignore[operator]
        lambda d: _edited(d, salt=base64.b64encode(bytes(16)).decode()),
    ],
    ids=[
        "not JSON",
        "array",
        "format",
        "version",
        "huge KDF",
        "bool lanes",
        "short salt",
        "short pk",
        "bad base64",
        "null",
        "missing field",
        "huge",
        "other writer key",
        "other pk",
        "other iterations",
        "other salt",
    ],
)
def test_a_damaged_write_key_is_a_config_error(
    write_key: WriteKey, tmp_path: Path, damage: Callable[[dict[str, object]], bytes]
) -> None:
    path = write_key.save(tmp_path / "write.key")
    document = json.loads(path.read_bytes())
    path.write_bytes(damage(document))
    with pytest.raises(ConfigError, match="not a strongroom write key"):
        WriteKey.load(path)


def test_a_write_key_saved_before_the_checksum_still_loads_with_a_warning(
    write_key: WriteKey, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Its damage cannot be found (a changed writer key made backups no passcode opens), so
    it loads with the advice to make a new one; a key with its checksum, silently."""
    path = write_key.save(tmp_path / "write.key")
    with caplog.at_level(logging.WARNING, logger="strongroom"):
        assert WriteKey.load(path) == write_key
    assert caplog.records == []
    document = json.loads(path.read_bytes())
    path.write_bytes(json.dumps({k: v for k, v in document.items() if k != "checksum"}).encode())
    with caplog.at_level(logging.WARNING, logger="strongroom"):
        assert WriteKey.load(path) == write_key
    assert "has no checksum" in caplog.text and "strongroom write-key new" in caplog.text


# -- secrets stay secret ----------------------------------------------------------------------


def test_no_passcode_or_key_in_reprs_logs_or_errors(
    engine: Engine, write_key: WriteKey, tree: Path, home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    engine.create("keyed", [tree], write_key=write_key)
    engine.create("interactive", [tree], passcode=PASSCODE)
    messages = []
    for passcode in (WRONG_PASSCODE, PASSCODE):
        for name in ("keyed", "interactive"):
            try:
                engine.verify(name, passcode=passcode, backup_id="0" * 32)
            except (PasscodeError, IntegrityError) as exc:
                messages.append(str(exc) + repr(exc))
    manifest = Manifest.from_bytes(_manifest_path(home, "keyed").read_bytes())
    shown = " ".join(
        [
            *messages,
            caplog.text,
            repr(write_key),
            str(write_key),
            repr(manifest),
            repr(manifest.key_slot),
            repr(Passcode(PASSCODE)),
        ]
    ).encode()
    master = derive_kek(Passcode(PASSCODE), write_key.salt, write_key.kdf)
    for secret in (
        PASSCODE.encode(),
        WRONG_PASSCODE.encode(),
        master,
        write_key.writer_key,
        writer_key(master),
        recipient_private_key(master),
    ):
        assert not [form for form in _forms(secret) if form in shown]
    assert len(messages) == 4


def test_no_frame_holds_the_passcode_as_text_for_a_traceback_to_show(
    engine: Engine, tree: Path, tmp_path: Path
) -> None:
    """An error reporter that records a traceback's locals (Sentry does by default) saw
    the passcode in the frames of create, restore, ls, verify, the job submissions and a
    schedule's definition: each now takes it as a Passcode before anything can fail."""
    engine.create("kept", [tree], passcode=PASSCODE)
    missing, target = tmp_path / "missing", tmp_path / "target"
    failing: list[Callable[[], object]] = [
        lambda: engine.create("new", [missing], passcode=PASSCODE),
        lambda: engine.submit_backup("new", [missing], passcode=PASSCODE),
        lambda: engine.restore("kept", target, passcode=WRONG_PASSCODE),
        lambda: engine.restore("nosuch", target, passcode=PASSCODE),
        lambda: engine.submit_restore("nosuch", target, passcode=PASSCODE),
        lambda: list(engine.ls("kept", ["nosuch"], passcode=PASSCODE)),
        lambda: engine.verify("kept", passcode=WRONG_PASSCODE),
        lambda: engine.submit_verify("nosuch", passcode=PASSCODE),
        lambda: define(engine, "no spaces allowed", passcode=PASSCODE, every="1d"),
        lambda: Passcode(SHORT_PASSCODE),  # the frame of its error holds it no more
    ]
    for call in failing:
        with pytest.raises(StrongroomError) as caught:
            call()
        _assert_no_passcode_in(
            "".join(
                traceback.TracebackException.from_exception(
                    caught.value, capture_locals=True
                ).format()
            )
        )


def _assert_no_passcode_in(shown: str) -> None:
    """(Its own frame, so that no secret is a local of the test's, which tracebacks show.)"""
    for secret in (PASSCODE, WRONG_PASSCODE, SHORT_PASSCODE):
        assert secret not in shown, shown
