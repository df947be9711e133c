"""Bounds on everything read from a store: a tampered manifest or chunk costs a clear
IntegrityError (or PasscodeError), never gigabytes of memory or a MemoryError.

The stores are the tamper lab's (tests/test_tamper.py); a chunk that must pass
authentication to reach decompression is sealed with the backup's own keys.
"""

from __future__ import annotations

import base64
import json
import os
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import zstandard

from strongroom import ConfigError, Engine, IntegrityError, KdfParams, StrongroomError
from strongroom.crypto import Passcode, StreamCipher, new_salt
from strongroom.format import (
    CHUNK_OVERHEAD,
    MAX_CHUNK_COUNT,
    MAX_DESCRIPTION_LENGTH,
    MAX_MANIFEST_SIZE,
    KeySlot,
    Manifest,
    manifest_key,
    utc_now,
)
from strongroom.keys import open_backup
from strongroom.pipeline import PREFETCH_AHEAD, TAG_ZSTD, ChunkWriter
from strongroom.restoretarget import _umask
from tests import test_tamper
from tests.conftest import FAST_KDF, PASSCODE, SMALL_CHUNK, local_store, snapshot
from tests.test_tamper import RETENTION, SIBLING, VICTIM, Lab

#: The tamper lab's fixture: two backups of ~6 chunks, and the means to tamper with them.
lab = test_tamper.lab
MIB = 1024 * 1024

# -- manifests ----------------------------------------------------------------------------


def _claim_chunks(lab: Lab, count: int, name: str = VICTIM) -> None:
    """Make the manifest claim `count` chunks, with sizes to match."""
    document = lab.read_manifest(name)
    backup = document["backup"]
    backup["chunkCount"] = count
    backup["sourceSize"] = count * backup["chunkSize"]
    backup["storedSize"] = count * (backup["chunkSize"] + CHUNK_OVERHEAD)
    lab.write_manifest(document, name)


#: Manifest edits that no writer produces, and what the error says about them.
IMPOSSIBLE_SIZES: dict[str, tuple[dict[str, int], str]] = {
    "a trillion chunks": ({"chunkCount": 10**12}, "chunks"),
    "chunks beyond 10 digits": (
        {
            "chunkCount": MAX_CHUNK_COUNT + 1,
            "sourceSize": (MAX_CHUNK_COUNT + 1) * SMALL_CHUNK,
            "storedSize": (MAX_CHUNK_COUNT + 1) * (SMALL_CHUNK + CHUNK_OVERHEAD),
        },
        "chunks",
    ),
    "one chunk too many": ({"chunkCount": 8, "sourceSize": 6 * SMALL_CHUNK}, "chunks"),
    "more bytes than chunks": ({"sourceSize": 2**50}, "chunks"),
    "huge storedSize": ({"storedSize": 2**50}, "take"),
    "empty storedSize": ({"storedSize": 0}, "take"),
}


@pytest.mark.parametrize("case", sorted(IMPOSSIBLE_SIZES))
def test_impossible_sizes_are_an_integrity_error_naming_the_backup(lab: Lab, case: str) -> None:
    edits, says = IMPOSSIBLE_SIZES[case]
    document = lab.read_manifest()
    document["backup"].update(edits)
    lab.write_manifest(document)
    with pytest.raises(IntegrityError, match=f"backup '{VICTIM}'.*{says}.*tampered"):
        lab.engine.info(VICTIM)
    lab.assert_refused()


def test_a_trillion_chunks_is_refused_by_every_operation(lab: Lab) -> None:
    """list leaves the backup out, cleanup reports it; nothing builds a list of a trillion."""
    for name in (VICTIM, SIBLING):
        _claim_chunks(lab, 10**12, name)
        document = lab.read_manifest(name)
        document["backup"]["sourceSize"] = 1000
        lab.write_manifest(document, name)
    assert lab.engine.list() == []
    with pytest.raises(IntegrityError, match=VICTIM):
        lab.engine.delete(VICTIM)
    with pytest.raises(IntegrityError, match=VICTIM):
        lab.engine.update_retention(VICTIM, RETENTION + 1)
    report = lab.engine.cleanup(as_of=RETENTION + 1)
    assert [error for error in report.errors if "chunks" in error and VICTIM in error]
    assert report.entries == []
    lab.assert_refused()


def test_a_claim_of_many_chunks_is_hinted_no_further_than_the_reader_looks_ahead(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first chunks are hinted before the manifest is authenticated: a manifest that
    claims a million chunks gets PREFETCH_AHEAD hints of the victim's own chunk names."""
    _claim_chunks(lab, 10**6)
    hinted: list[str] = []
    monkeypatch.setattr(lab.engine.store(), "prefetch", hinted.extend)
    lab.assert_refused()
    prefix = f"data/{VICTIM}/{lab.backup_id()}/"
    assert 0 < len(hinted) <= 2 * PREFETCH_AHEAD  # verify's and restore's
    assert all(key.startswith(prefix) for key in hinted)


def test_what_the_writer_makes_is_within_bounds(tmp_path: Path) -> None:
    """An empty stream (one empty chunk) and exact multiples of the chunk size pass."""
    store = local_store("bounds", tmp_path / "store")
    for size in (0, 1, SMALL_CHUNK - 1, SMALL_CHUNK, 3 * SMALL_CHUNK, 3 * SMALL_CHUNK + 1):
        writer = ChunkWriter(
            store,
            lambda index, size=size: f"data/{size}/{index:010d}",
            StreamCipher(os.urandom(32), b"bounds"),
            chunk_size=SMALL_CHUNK,
        )
        writer.write(os.urandom(size))
        stats = writer.finish()
        manifest = Manifest(
            name="bounds",
            backup_id="0" * 32,
            description="",
            created=utc_now(),
            chunk_size=SMALL_CHUNK,
            chunk_count=stats.chunk_count,
            source_size=stats.source_size,
            stored_size=stats.stored_size,
            compression="zstd",
            key_slot=KeySlot(KdfParams(), new_salt(), b"wrapped"),
            version=1,
        )
        assert Manifest.from_bytes(manifest.to_bytes()).chunk_count == max(
            1, -(-size // SMALL_CHUNK)
        )


def test_the_longest_description_commits_a_manifest_that_reads(
    engine: Engine, tree: Path, home: Path
) -> None:
    """A description's characters cost up to 12 bytes each in the manifest (JSON escape
    pairs): the longest allowed still reads back; one character more is refused before a
    byte is written, where it once committed a backup no reader accepted (a megabyte of
    control characters through the admin API)."""
    longest = "\U0001f600" * MAX_DESCRIPTION_LENGTH
    engine.create("longest", [tree], passcode=PASSCODE, description=longest)
    assert engine.info("longest").description == longest
    before = snapshot(home)
    for text in (longest + "x", "\x01" * (MAX_MANIFEST_SIZE // 6 + 1)):
        with pytest.raises(ConfigError, match=f"shorten it to at most {MAX_DESCRIPTION_LENGTH}"):
            engine.create("too-long", [tree], passcode=PASSCODE, description=text)
    assert snapshot(home) == before


def test_a_manifest_too_large_to_read_is_never_written() -> None:
    """Whatever a caller slips past the description's bound, the writer refuses to make a
    manifest `from_bytes` would refuse."""
    manifest = Manifest(
        name="huge",
        backup_id="0" * 32,
        description="\x01" * (MAX_MANIFEST_SIZE // 6 + 1),
        created=utc_now(),
        chunk_size=SMALL_CHUNK,
        chunk_count=1,
        source_size=0,
        stored_size=0,
        compression="zstd",
        key_slot=KeySlot(KdfParams(), new_salt(), b"wrapped"),
        version=1,
    )
    with pytest.raises(ConfigError, match="more than the 1048576 any strongroom reads"):
        manifest.to_bytes()


def test_a_malformed_manifest_is_told_by_what_is_wrong(engine: Engine, tree: Path) -> None:
    """It was told by a Python exception's class: "malformed (KeyError)", "(Error)"."""
    engine.create("b", [tree], passcode=PASSCODE)
    genuine = json.loads(engine.store().get(manifest_key("b")))
    missing = {k: v for k, v in genuine.items() if k != "backup"}
    bad_salt = {**genuine, "key": {**genuine["key"], "salt": "not base64!"}}
    for document, told in (
        (missing, "it has no 'backup'"),
        (bad_salt, "a field has the wrong type or value"),
        ({**genuine, "mac": 7}, "a field has the wrong type or value"),
    ):
        with pytest.raises(IntegrityError, match=f"^The manifest is malformed: {told}.$"):
            Manifest.from_bytes(json.dumps(document).encode())
    short = {**genuine, "key": {**genuine["key"], "ephemeralKey": "AAAA"}}
    with pytest.raises(IntegrityError, match="The ephemeralKey in the manifest of backup 'b' is 3"):
        Manifest.from_bytes(json.dumps(short).encode())


def test_an_archive_of_exact_chunk_multiples_restores(tree: Path, home: Path) -> None:
    """A tar stream is a multiple of 10240 bytes, so with that chunk size every backup is one."""
    exact = Engine(kdf=FAST_KDF, chunk_size=10240)
    info = exact.create("exact", [tree], passcode=PASSCODE)
    assert info.source_size == info.chunk_count * 10240
    target = exact.restore("exact", home / "restored", passcode=PASSCODE)
    assert snapshot(target / tree.name) == snapshot(tree)


#: Runs in a subprocess whose address space is capped: a list of ten billion keys (or any
#: other allocation the size of a claimed count) fails with MemoryError instead of
#: exhausting the machine.
BOUNDED_OPERATIONS = """
import json, resource, sys
from strongroom import Engine, KdfParams
args = json.loads(sys.argv[1])
with open("/proc/self/status") as status:
    size = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (size + args["headroom"], resource.RLIM_INFINITY))
engine = Engine(kdf=KdfParams(**args["kdf"]), chunk_size=args["chunk"])
outcomes = {}
for what, call in [
    ("info", lambda: engine.info("victim").chunk_count),
    ("verify", lambda: engine.verify("victim", passcode=args["passcode"])),
    ("restore", lambda: engine.restore("victim", args["target"], passcode=args["passcode"])),
    ("update", lambda: engine.update_retention("victim", args["retention"])),
    ("delete", lambda: engine.delete("victim")),
    ("cleanup", lambda: engine.cleanup(as_of=args["retention"]).to_dict()),
]:
    try:
        outcomes[what] = ["ok", call()]
    except BaseException as exc:
        outcomes[what] = [type(exc).__name__, str(exc)]
print(json.dumps(outcomes, default=str))
"""


def _run_bounded(lab: Lab, headroom: int) -> dict[str, list[Any]]:
    args = {
        "headroom": headroom,
        "kdf": {"memory_cost_kib": 8 * 1024, "iterations": 1, "lanes": 1},
        "chunk": SMALL_CHUNK,
        "passcode": PASSCODE,
        "target": str(lab.fresh_target()),
        "retention": RETENTION + 1,
    }
    result = subprocess.run(
        [sys.executable, "-c", BOUNDED_OPERATIONS, json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MALLOC_ARENA_MAX": "2"},
        check=True,
    )
    outcomes: dict[str, list[Any]] = json.loads(result.stdout)
    return outcomes


def test_ten_billion_chunks_cost_no_more_memory_than_the_data_there(lab: Lab) -> None:
    """The most chunks a manifest may claim: info shows them, verify and restore refuse
    (the MAC), an update finds the data missing, and delete and cleanup remove what is
    listed, all in 512 MiB of address space."""
    _claim_chunks(lab, MAX_CHUNK_COUNT)
    _claim_chunks(lab, MAX_CHUNK_COUNT, SIBLING)
    outcomes = _run_bounded(lab, headroom=512 * MIB)
    assert outcomes["info"] == ["ok", MAX_CHUNK_COUNT]
    assert outcomes["verify"][0] == outcomes["restore"][0] == "IntegrityError"
    assert outcomes["update"][0] == "IntegrityError"
    assert "missing data objects" in outcomes["update"][1]
    assert outcomes["delete"] == ["ok", None]
    assert [e["name"] for e in outcomes["cleanup"][1]["backups"]] == [SIBLING]
    assert not (lab.store_dir / "data").exists()
    assert not list(lab.store_dir.glob("manifests/*"))


def test_delete_removes_every_object_under_the_data_prefix(lab: Lab) -> None:
    """Delete takes what is listed, so a stray object beyond the last chunk goes too."""
    stray = lab.chunk(len(lab.chunks()) + 5)
    stray.write_bytes(b"stray")
    lab.engine.delete(VICTIM)
    assert not stray.parent.exists()
    assert lab.engine.verify(SIBLING, passcode=PASSCODE).name == SIBLING


# -- chunks -------------------------------------------------------------------------------


def _cipher(lab: Lab) -> StreamCipher:
    """The victim's chunk cipher, from the passcode the tests know."""
    manifest = Manifest.from_bytes(lab.manifest().read_bytes())
    keys = open_backup(manifest, Passcode(PASSCODE))
    return StreamCipher(keys.chunk_key, manifest.stream_binding())


def _zero_frame(declared: int | None, blocks: int) -> bytes:
    """A zstd frame of `blocks` RLE blocks of 128 KiB of zeros: 4 bytes each, so 32 KiB of
    frame hold 1 GiB. `declared` goes into the header (None: no content size)."""
    header = struct.pack("<I", 0xFD2FB528)
    if declared is None:
        header += bytes((0x00, 0x50))  # no content size; a 1 MiB window
    else:
        header += bytes((0xE0,)) + struct.pack("<Q", declared)  # single segment, 8-byte size
    block = 128 * 1024
    body = b"".join(
        ((i == blocks - 1) | 1 << 1 | block << 3).to_bytes(3, "little") + b"\0"
        for i in range(blocks)
    )
    return header + body


def _reseal(lab: Lab, index: int, payload: bytes) -> None:
    """Put a zstd payload in place of chunk `index`, sealed so it authenticates."""
    last = index == len(lab.chunks()) - 1
    lab.chunk(index).write_bytes(_cipher(lab).seal(index, last, TAG_ZSTD, payload))


@pytest.mark.parametrize(
    ("declared", "blocks"),
    [(1 << 30, 8192), (64 << 30, 1)],
    ids=["1 GiB of zeros in 32 KiB", "a header declaring 64 GiB"],
)
def test_a_chunk_declaring_more_than_the_chunk_size_is_refused_before_allocating(
    lab: Lab, declared: int, blocks: int
) -> None:
    _reseal(lab, 1, _zero_frame(declared, blocks))
    tracemalloc.start()
    try:
        with pytest.raises(IntegrityError, match="Chunk 1 declares"):
            lab.engine.verify(VICTIM, passcode=PASSCODE)
        lab.assert_refused()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 * MIB


def test_a_frame_without_a_size_is_bounded_by_the_chunk_size(lab: Lab) -> None:
    """Such a frame may hold up to a chunk (another writer's choice); more is refused."""
    cipher = _cipher(lab)
    _, plaintext = cipher.open(2, False, lab.chunk(2).read_bytes())
    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(plaintext))
    assert zstandard.frame_content_size(unsized) == -1
    _reseal(lab, 2, unsized)
    lab.assert_restores_intact()

    _reseal(lab, 2, _zero_frame(None, 8192))
    tracemalloc.start()
    try:
        with pytest.raises(IntegrityError, match="Chunk 2 does not decompress"):
            lab.engine.verify(VICTIM, passcode=PASSCODE)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 * MIB


# -- the key derivation -------------------------------------------------------------------


def test_the_defaults_are_within_the_bounds() -> None:
    """Every backup made with the default parameters can be read."""
    KdfParams().check_bounds()


def test_memory_times_iterations_is_capped(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each parameter within its cap, but together too slow: refused, the KDF never runs."""
    document = lab.read_manifest()
    document["key"].update(memoryCostKiB=KdfParams.MAX_MEMORY_KIB, iterations=5)
    lab.write_manifest(document)

    def kdf_must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("the KDF ran with out-of-bounds parameters")

    monkeypatch.setattr("strongroom.crypto.Argon2id", kdf_must_not_run)
    with pytest.raises(IntegrityError, match="out of bounds"):
        lab.engine.info(VICTIM)
    lab.assert_refused()


#: Verify with the costliest parameters a manifest may name, in a subprocess, reporting
#: how much the peak resident memory grew.
COSTLIEST_KDF = """
import json, resource, sys
from strongroom import Engine, StrongroomError
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    Engine().verify("victim", passcode=sys.argv[1])
    outcome = "verified"
except StrongroomError as exc:
    outcome = type(exc).__name__
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
print(json.dumps([outcome, grown]))
"""


def test_the_costliest_kdf_a_manifest_may_name_takes_at_most_256_mib(lab: Lab) -> None:
    document = lab.read_manifest()
    memory = KdfParams.MAX_MEMORY_KIB
    document["key"].update(
        memoryCostKiB=memory, iterations=KdfParams.MAX_WORK_KIB // memory, lanes=1
    )
    lab.write_manifest(document)
    result = subprocess.run(
        [sys.executable, "-c", COSTLIEST_KDF, PASSCODE],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    outcome, grown = json.loads(result.stdout)
    assert outcome == "PasscodeError"
    assert grown < 256 * MIB + 16 * MIB


@pytest.mark.parametrize("salt", ["", "AAAAAAAAAA=="], ids=["empty", "7 bytes"])
def test_a_short_salt_is_an_integrity_error(lab: Lab, salt: str) -> None:
    document = lab.read_manifest()
    document["key"]["salt"] = salt
    lab.write_manifest(document)
    with pytest.raises(IntegrityError, match=f"backup '{VICTIM}'.*salt"):
        lab.engine.info(VICTIM)
    lab.assert_refused()


@pytest.mark.parametrize(
    ("section", "field_name"), [(None, "version"), ("key", "kdf"), ("backup", "name")]
)
def test_a_planted_megabyte_of_text_is_quoted_in_errors_only_in_part(
    lab: Lab, section: str | None, field_name: str
) -> None:
    """Attack: values of a planted manifest are quoted in errors, reports and logs; one
    that is nearly the whole manifest must not flood them."""
    document = lab.read_manifest()
    (document if section is None else document[section])[field_name] = "\x1b[2J" * 50_000
    lab.write_manifest(document)
    with pytest.raises(StrongroomError) as refused:
        lab.engine.info(VICTIM)
    assert len(str(refused.value)) < 1000, len(str(refused.value))


#: Every key and MAC of a v2 manifest, and where it is.
V2_LENGTHS = {
    "ephemeralKey": ("key", 32),
    "wrappedKey": ("key", 60),
    "keyCheck": ("key", 32),
    "mac": (None, 32),
    "writerMac": (None, 32),
}


@pytest.mark.parametrize("field_name", sorted(V2_LENGTHS))
@pytest.mark.parametrize("change", [-1, 1], ids=["shorter", "longer"])
def test_a_v2_key_or_mac_of_another_length_is_an_integrity_error(
    lab: Lab, field_name: str, change: int
) -> None:
    """Checked when the manifest is read, before the KDF runs: info refuses it too."""
    document = lab.read_manifest()
    if document["version"] == 1:
        pytest.skip("v1 manifests have no lengths fixed")
    section_name, size = V2_LENGTHS[field_name]
    section = document if section_name is None else document[section_name]
    value = base64.b64decode(section[field_name])
    assert len(value) == size
    section[field_name] = base64.b64encode(value[:-1] if change < 0 else value + b"x").decode()
    lab.write_manifest(document)
    with pytest.raises(
        IntegrityError, match=f"{field_name} in the manifest of backup '{VICTIM}' is .*tampered"
    ):
        lab.engine.info(VICTIM)
    lab.assert_refused()


# -- the umask ----------------------------------------------------------------------------


def test_the_umask_is_read_without_setting_it(monkeypatch: pytest.MonkeyPatch) -> None:
    previous = os.umask(0o027)
    try:

        def must_not_set(mask: int) -> int:
            raise AssertionError("os.umask was called: another thread could see it changed")

        monkeypatch.setattr(os, "umask", must_not_set)
        assert _umask() == 0o027
    finally:
        monkeypatch.undo()
        os.umask(previous)


def test_an_engine_refuses_kdf_parameters_no_reader_accepts(home: Path) -> None:
    with pytest.raises(ConfigError, match="could never be restored"):
        Engine(kdf=KdfParams(memory_cost_kib=512 * 1024, iterations=1, lanes=1))
