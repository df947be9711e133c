"""Engine round trips and every refusal the engine makes before writing anything."""

from __future__ import annotations

import array
import errno
import io
import logging
import os
import stat
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import strongroom.backupinfo
import strongroom.enginecreate
from strongroom import (
    BackupExistsError,
    BackupInfo,
    BackupNotFoundError,
    CommitUncertainError,
    ConfigError,
    Engine,
    InvalidNameError,
    PasscodeError,
    Store,
    StoreSpec,
    StoreUnavailableError,
    archive,
)
from strongroom.backends.file import LocalStore
from strongroom.format import Manifest, data_prefix, manifest_key
from strongroom.pipeline import ChunkWriter
from strongroom.sourcetree import walk_source
from tests.conftest import FAST_KDF, PASSCODE, SMALL_CHUNK, change_after_open, snapshot

FUTURE_MS = 4_102_444_800_000  # 2100-01-01


def store_dir(home: Path) -> Path:
    return home / "stores" / "backupsDefault"


def test_round_trip_of_a_real_tree_is_exact(engine: Engine, tree: Path, tmp_path: Path) -> None:
    info = engine.create("nightly", [tree], passcode=PASSCODE, description="first")
    assert info.chunk_count > 5, "the tree must span several chunks for this test to mean much"
    target = engine.restore("nightly", tmp_path / "restored", passcode=PASSCODE)
    assert snapshot(target / "data") == snapshot(tree)
    restored = target / "data" / "nested" / "secret-hardlink"
    assert restored.stat().st_ino == (target / "data" / "secret.key").stat().st_ino


def test_mtimes_come_back_to_the_nanosecond(engine: Engine, tree: Path, tmp_path: Path) -> None:
    """Files small and large, directories and links (README: "mtimes to the microsecond";
    the archive once held them as floats, and 1600000000.207788108 came back a microsecond
    early)."""
    paths = sorted([tree, *tree.rglob("*")], reverse=True)
    for n, path in enumerate(paths):
        ns = 1_600_000_000_207_788_108 + n * 1_000_003
        os.utime(path, ns=(ns, ns), follow_symlinks=False)
    given = {str(path.relative_to(tree.parent)): path.lstat().st_mtime_ns for path in paths}
    assert len(set(given.values())) > 10
    engine.create("exact", [tree], passcode=PASSCODE)
    engine.restore("exact", tmp_path / "back", passcode=PASSCODE)
    back = tmp_path / "back"
    restored = {str(p.relative_to(back)): p.lstat().st_mtime_ns for p in back.rglob("*")}
    assert restored == given


@pytest.fixture
def tmpfs_dir() -> Iterator[Path]:
    """A directory on tmpfs, whose mtimes reach past year 9999 (ext4's end in 2446)."""
    if not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm")
    with tempfile.TemporaryDirectory(dir="/dev/shm") as directory:
        yield Path(directory)


def test_mtimes_at_the_ends_of_what_a_restore_sets(engine: Engine, tmpfs_dir: Path) -> None:
    """The last nanosecond of 9999 comes back (its float rounds past the end, and the
    backup was refused as damaged at restore); a file dated past 9999 is left out at
    create, saying why, rather than making a backup no restore accepts."""
    source = tmpfs_dir / "data"
    source.mkdir()
    last, beyond = 253_402_300_800 * 10**9 - 1, 253_402_300_800 * 10**9
    for name, ns in (("last", last), ("beyond", beyond)):
        (source / name).write_text(name)
        os.utime(source / name, ns=(ns, ns))
    engine.create("ends", [source], passcode=PASSCODE)  # left out: logged as a warning
    engine.restore("ends", tmpfs_dir / "back", passcode=PASSCODE)
    back = tmpfs_dir / "back" / "data"
    assert sorted(p.name for p in back.iterdir()) == ["last"]
    assert (back / "last").stat().st_mtime_ns == last
    # listed in 9999 too (a float of its seconds is 253402300800.0, year 10000: ls --long died)
    (listed,) = [e for e in engine.ls("ends", passcode=PASSCODE) if e.path == "data/last"]
    assert listed.modified == datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert listed.to_dict()["mtime"] == 253_402_300_799_999


def test_a_file_that_shrinks_as_it_is_read_fails_the_backup_naming_it(
    engine: Engine, tree: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its header already gave its size, so the archive cannot hold it whole: nothing is
    committed, and the error says which file and why (it said "unexpected end of data",
    and to check permissions and free space)."""
    big = tree / "big.bin"
    size = big.stat().st_size
    change_after_open(monkeypatch, b"big.bin", lambda: os.truncate(big, 1000))
    with pytest.raises(OSError, match=f"data/big.bin shrank .*it had {size} bytes when opened"):
        engine.create("shrunk", [tree], passcode=PASSCODE)
    assert engine.listing().backups == []
    assert not [p for p in (home / "stores").rglob("*") if p.is_file() and "data" in p.parts]


def test_a_file_rewritten_as_it_is_read_with_its_mtime_set_back_is_warned_of(
    engine: Engine, tree: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Same size, mtime put back (rsync -t --inplace, touch -r): only the ctime tells."""
    notes = tree / "nested" / "deeper" / "notes.md"
    before = notes.stat()

    def rewrite() -> None:
        time.sleep(0.02)  # past the kernel's coarse clock tick of the file's last change
        notes.write_text("X" * before.st_size)
        os.utime(notes, ns=(before.st_atime_ns, before.st_mtime_ns))

    change_after_open(monkeypatch, b"notes.md", rewrite)
    with caplog.at_level(logging.WARNING, logger="strongroom"):
        engine.create("rewritten", [tree], passcode=PASSCODE)
    assert "data/nested/deeper/notes.md changed while it was being backed up" in caplog.text


def test_a_file_that_grows_as_it_is_read_is_backed_up_as_opened_with_a_warning(
    engine: Engine,
    tree: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    big = tree / "big.bin"
    before = big.read_bytes()

    def append() -> None:
        with big.open("ab") as handle:
            handle.write(b"appended meanwhile")

    change_after_open(monkeypatch, b"big.bin", append)
    with caplog.at_level(logging.WARNING, logger="strongroom"):
        engine.create("grown", [tree], passcode=PASSCODE)
    assert "data/big.bin changed while it was being backed up" in caplog.text
    engine.restore("grown", tmp_path / "back", passcode=PASSCODE)
    assert (tmp_path / "back" / "data" / "big.bin").read_bytes() == before


def test_directories_get_their_attributes_whenever_they_are_finished(
    engine: Engine, tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Directories are finished in groups as the stream leaves them (here one at a time),
    read-only ones at the end; every mode and mtime still comes back."""
    monkeypatch.setattr("strongroom.archive.DIRECTORY_GROUP", 1)
    for number in range(5):
        sub = tree / f"dir-{number}" / "inner"
        sub.mkdir(parents=True)
        (sub / "file.txt").write_text(f"file {number}")
        os.utime(sub, (1_500_000_000 + number, 1_500_000_000 + number))
    (tree / "dir-2").chmod(0o555)  # read-only: finished last
    (tree / "dir-3" / "inner").chmod(0o711)
    restored = tmp_path / "out" / "data"
    try:
        engine.create("dirs", [tree], passcode=PASSCODE)
        engine.restore("dirs", tmp_path / "out", passcode=PASSCODE)
        assert snapshot(restored) == snapshot(tree)
    finally:  # so pytest can remove both trees
        for read_only in (tree / "dir-2", restored / "dir-2"):
            if read_only.exists():
                read_only.chmod(0o755)


def test_a_backup_remembers_only_the_inodes_of_files_with_several_links(tree: Path) -> None:
    """tarfile would keep every file's inode, so memory would grow with the file count."""
    with archive._open_writer(io.BytesIO()) as tar:
        members = archive._Members(tar)
        for entry in walk_source(tree, "data", lambda name, error: pytest.fail(str(error))):
            members.info(entry.arcname, entry.status)
        remembered = set(members._links)
    files = [p.lstat() for p in tree.rglob("*") if p.is_file() and not p.is_symlink()]
    linked = {(status.st_ino, status.st_dev) for status in files if status.st_nlink > 1}
    assert len(files) > 5 and linked
    assert remembered == linked


@pytest.mark.skipif(os.geteuid() != 0, reason="only root restores ownership")
def test_a_restore_as_root_gives_files_and_directories_their_owners(
    engine: Engine, tmp_path: Path
) -> None:
    tree = tmp_path / "owned"
    (tree / "shared").mkdir(parents=True)
    (tree / "shared" / "by-name.txt").write_text("nobody's")
    (tree / "by-number.txt").write_text("no name")
    os.chown(tree / "shared", 65534, 65534)  # nobody:nogroup, known by name here
    os.chown(tree / "shared" / "by-name.txt", 65534, 65534)
    os.chown(tree / "by-number.txt", 4321, 1234)  # no such user or group: by number
    engine.create("owned", [tree], passcode=PASSCODE)
    out = engine.restore("owned", tmp_path / "out", passcode=PASSCODE) / "owned"
    for relative in ("shared", "shared/by-name.txt", "by-number.txt"):
        original, restored = (tree / relative).stat(), (out / relative).stat()
        assert (restored.st_uid, restored.st_gid) == (original.st_uid, original.st_gid), relative


def test_a_store_set_to_compression_none_stores_chunks_as_they_are(
    home: Path, tree: Path, tmp_path: Path
) -> None:
    """`compression = "none"` is the store's: every create into it seals its chunks
    uncompressed (the manifest and info say so), and they restore as any other."""
    engine = Engine(kdf=FAST_KDF, chunk_size=SMALL_CHUNK)
    engine.add_store(StoreSpec("fast", (tmp_path / "fast").as_uri(), compression="none"))
    raw = engine.create("raw", [tree], passcode=PASSCODE, store="fast")
    packed = engine.create("packed", [tree], passcode=PASSCODE)
    assert raw.stored_size > raw.source_size  # nothing compressed, only sealed
    assert packed.stored_size < raw.source_size
    manifest = Manifest.from_bytes((tmp_path / "fast" / manifest_key("raw")).read_bytes())
    assert manifest.compression == "none"
    assert engine.info("raw", "fast").to_dict()["compression"] == "none"
    assert (packed.compression, engine.info("packed").compression) == ("zstd", "zstd")
    target = engine.restore("raw", tmp_path / "out", passcode=PASSCODE, store="fast")
    assert snapshot(target / "data") == snapshot(tree)


def test_compressible_data_is_stored_smaller(engine: Engine, tmp_path: Path) -> None:
    source = tmp_path / "log.txt"
    source.write_bytes(b"INFO request served in 3 ms\n" * 50_000)
    info = engine.create("logs", [source], passcode=PASSCODE)
    assert info.stored_size < info.source_size / 10


def test_single_file_and_several_sources(engine: Engine, tree: Path, tmp_path: Path) -> None:
    extra = tmp_path / "extra.cfg"
    extra.write_text("key = value\n")
    engine.create("mixed", [tree, extra], passcode=PASSCODE)
    target = engine.restore("mixed", tmp_path / "out", passcode=PASSCODE)
    assert sorted(os.listdir(target)) == ["data", "extra.cfg"]
    assert (target / "extra.cfg").read_text() == "key = value\n"


def test_streams_of_unknown_length(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("strongroom.archive.STREAM_PART_SIZE", 100_000)
    payload = os.urandom(350_123)
    chunks = (payload[i : i + 7_000] for i in range(0, len(payload), 7_000))
    engine.create(
        "streams",
        passcode=PASSCODE,
        streams={"db/dump.sql": io.BytesIO(payload), "events.log": chunks, "empty": io.BytesIO()},
    )
    target = engine.restore("streams", tmp_path / "out", passcode=PASSCODE)
    assert (target / "db" / "dump.sql").read_bytes() == payload
    assert (target / "events.log").read_bytes() == payload
    assert (target / "empty").read_bytes() == b""


def test_a_stream_may_yield_any_buffer(engine: Engine, tmp_path: Path) -> None:
    pieces = [array.array("B", b"abc"), memoryview(b"def"), bytearray(b"ghi")]
    engine.create("buffers", passcode=PASSCODE, streams={"s": iter(pieces)})
    target = engine.restore("buffers", tmp_path / "out", passcode=PASSCODE)
    assert (target / "s").read_bytes() == b"abcdefghi"


def test_a_stream_of_text_is_refused_clearly_and_commits_nothing(
    engine: Engine, tmp_path: Path
) -> None:
    """Text as a stream failed with "can't concat str to bytearray" halfway through."""
    (tmp_path / "notes.txt").write_text("hello")
    with (tmp_path / "notes.txt").open() as text_file:
        for stream, told in (
            ("hello", "is given as str; give a binary file object"),
            (b"hello", "is given as bytes; give a binary file object"),
            (iter(["hello"]), "gave str, not bytes; open it in binary mode"),
            (text_file, "gave str, not bytes; open it in binary mode"),
        ):
            with pytest.raises(ConfigError, match=f"Stream 'notes' {told}"):
                engine.create("text", passcode=PASSCODE, streams={"notes": stream})  # type: ignore[dict-item]
    assert engine.list() == []


def test_large_files_and_stream_parts_come_back_exact(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files above SMALL_FILE are written on the main thread (preallocated on ext4, so
    their sizes must still come out exact), and so are a stream's later parts."""
    monkeypatch.setattr("strongroom.archive.STREAM_PART_SIZE", archive.SMALL_FILE + 4321)
    source = tmp_path / "large"
    source.mkdir()
    payload = os.urandom(3 * archive.SMALL_FILE + 77)
    (source / "large.bin").write_bytes(payload)
    engine.create("large", [source], passcode=PASSCODE, streams={"dump": io.BytesIO(payload)})
    target = engine.restore("large", tmp_path / "out", passcode=PASSCODE)
    assert snapshot(target / "large") == snapshot(source)
    assert (target / "dump").read_bytes() == payload


def test_files_and_stream_parts_are_read_straight_into_the_chunk_buffer(
    engine: Engine, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Never through tarfile's copy, which reads into a buffer of its own first."""

    def copy(*args: object, **kwargs: object) -> None:
        raise AssertionError("tarfile copied a member's bytes")

    monkeypatch.setattr(tarfile, "copyfileobj", copy)
    monkeypatch.setattr("strongroom.archive.STREAM_PART_SIZE", 1000)
    engine.create("direct", [tree], passcode=PASSCODE, streams={"dump": io.BytesIO(b"d" * 2500)})
    engine.verify("direct", passcode=PASSCODE)


def test_restore_selected_paths(engine: Engine, tree: Path, tmp_path: Path) -> None:
    engine.create("nightly", [tree], passcode=PASSCODE)
    target = engine.restore(
        "nightly", tmp_path / "out", passcode=PASSCODE, paths=["data/nested/deeper", "data/big.bin"]
    )
    restored = sorted(str(p.relative_to(target)) for p in target.rglob("*"))
    assert restored == [
        "data",
        "data/big.bin",
        "data/nested",
        "data/nested/deeper",
        "data/nested/deeper/notes.md",
    ]
    assert (target / "data" / "big.bin").read_bytes() == (tree / "big.bin").read_bytes()
    for directory in ("data", "data/nested"):  # as the backup has them, not made up (0700)
        restored_dir, source_dir = (target / directory).stat(), (tree.parent / directory).stat()
        assert restored_dir.st_mode == source_dir.st_mode, directory
        assert restored_dir.st_mtime == pytest.approx(source_dir.st_mtime, abs=1e-5), directory


@pytest.mark.parametrize("first", ["outer", "inner"])
def test_a_selected_path_inside_another_is_found_too(
    engine: Engine, tree: Path, tmp_path: Path, first: str
) -> None:
    """`data/nested` then `data/nested/deeper` failed as 'Not in backup: data/nested/deeper'
    (each member counted for the first path it matched); the other order worked."""
    engine.create("nightly", [tree], passcode=PASSCODE)
    paths = ["data/nested", "data/nested/deeper"][:: 1 if first == "outer" else -1]
    listed = [e.path for e in engine.ls("nightly", paths, passcode=PASSCODE)]
    assert "data/nested/deeper/notes.md" in listed
    target = engine.restore("nightly", tmp_path / "out", passcode=PASSCODE, paths=paths)
    assert snapshot(target / "data" / "nested") == snapshot(tree / "nested")


@pytest.mark.parametrize("change", ["deleted", "replaced"])
def test_a_backup_deleted_or_replaced_while_restored_is_said_so_not_blamed_on_the_store(
    engine: Engine, tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    """A delete running beside a restore made it fail with 'Chunk 0 is missing from the
    store', which reads as damage."""
    engine.create("nightly", [tree], passcode=PASSCODE)
    store = engine.store()
    real_get = store.get
    changed: list[str] = []

    def get_after_a_change(key: str, **options: Any) -> bytes:
        if key.startswith("data/") and not changed:
            changed.append(key)
            engine.delete("nightly")
            if change == "replaced":
                engine.create("nightly", [tree], passcode=PASSCODE)
        return real_get(key, **options)

    monkeypatch.setattr(store, "get", get_after_a_change)
    with pytest.raises(BackupNotFoundError, match=f"was {change} .*Nothing was restored"):
        engine.restore("nightly", tmp_path / "out", passcode=PASSCODE)
    assert not (tmp_path / "out").exists()


def test_a_path_longer_than_any_backup_holds_is_refused_without_quoting_it_whole(
    engine: Engine, tree: Path, tmp_path: Path
) -> None:
    """An API caller's 100 KB path came back whole in the error."""
    engine.create("nightly", [tree], passcode=PASSCODE)
    long = "data/" + "x" * 100_000
    with pytest.raises(InvalidNameError, match="longer than any path a backup holds") as raised:
        engine.restore("nightly", tmp_path / "out", passcode=PASSCODE, paths=[long])
    assert len(str(raised.value)) < 200


def test_a_hard_link_restored_without_its_original_is_a_clear_error(
    engine: Engine, tree: Path, tmp_path: Path
) -> None:
    """tarfile archives in sorted order, so nested/secret-hardlink holds the data and
    secret.key is the hard link to it."""
    engine.create("nightly", [tree], passcode=PASSCODE)
    with pytest.raises(ConfigError, match="hard link to 'data/nested/secret-hardlink'"):
        engine.restore("nightly", tmp_path / "out", passcode=PASSCODE, paths=["data/secret.key"])
    assert sorted(os.listdir(tmp_path)) == ["home", "source"]
    both = ["data/secret.key", "data/nested/secret-hardlink"]
    target = engine.restore("nightly", tmp_path / "out", passcode=PASSCODE, paths=both)
    assert (target / both[0]).stat().st_ino == (target / both[1]).stat().st_ino


def test_restore_of_a_path_not_in_the_backup_restores_nothing(
    engine: Engine, tree: Path, tmp_path: Path
) -> None:
    engine.create("nightly", [tree], passcode=PASSCODE)
    with pytest.raises(ConfigError, match="data/nope"):
        engine.restore("nightly", tmp_path / "out", passcode=PASSCODE, paths=["data/nope"])
    assert sorted(os.listdir(tmp_path)) == ["home", "source"]


def test_restore_into_an_existing_empty_directory(
    engine: Engine, tree: Path, tmp_path: Path
) -> None:
    engine.create("nightly", [tree], passcode=PASSCODE)
    (tmp_path / "out").mkdir()
    engine.restore("nightly", tmp_path / "out", passcode=PASSCODE)
    assert snapshot(tmp_path / "out" / "data") == snapshot(tree)


@pytest.mark.parametrize("occupant", ["file", "dir-with-content"])
def test_restore_refuses_a_target_in_use(
    engine: Engine, tree: Path, tmp_path: Path, occupant: str
) -> None:
    engine.create("nightly", [tree], passcode=PASSCODE)
    target = tmp_path / "out"
    if occupant == "file":
        target.write_text("precious")
    else:
        target.mkdir()
        (target / "keep.txt").write_text("precious")
    before = snapshot(tmp_path / "out") if target.is_dir() else target.read_text()
    with pytest.raises(ConfigError, match="restore target"):
        engine.restore("nightly", target, passcode=PASSCODE)
    after = snapshot(tmp_path / "out") if target.is_dir() else target.read_text()
    assert before == after


def test_wrong_passcode_fails_before_anything_is_written(
    engine: Engine, tree: Path, tmp_path: Path
) -> None:
    engine.create("nightly", [tree], passcode=PASSCODE)
    with pytest.raises(PasscodeError, match="does not open"):
        engine.restore("nightly", tmp_path / "out", passcode="not the passcode")
    assert not (tmp_path / "out").exists()
    assert sorted(os.listdir(tmp_path)) == ["home", "source"]
    with pytest.raises(PasscodeError):
        engine.verify("nightly", passcode="not the passcode")


@pytest.mark.parametrize(
    ("given", "doubt"),
    [
        (PASSCODE + "\n", "ends with white space or a line break"),
        (" " + PASSCODE, "starts or ends with white space"),
        ("\ufeff" + PASSCODE, "starts with a byte-order mark"),
        ("pa\u0308sscode-123", r"not in Unicode's composed form \(NFC\)"),
    ],
    ids=["newline", "space", "bom", "nfd"],
)
def test_a_wrong_passcode_says_what_is_odd_about_it_never_what_it_is(
    engine: Engine, tree: Path, tmp_path: Path, given: str, doubt: str
) -> None:
    """A passcode is used exactly as given, so a line break from an environment variable,
    an editor's byte-order mark or an accent typed another way is another passcode: the
    error says which, so nobody doubts the right passcode (the text is never shown)."""
    meant = given.strip().lstrip("\ufeff").replace("a\u0308", "\u00e4")
    engine.create("nightly", [tree], passcode=meant)
    with pytest.raises(PasscodeError, match=doubt) as refused:
        engine.restore("nightly", tmp_path / "out", passcode=given)
    assert meant not in str(refused.value) and given not in str(refused.value)
    with pytest.raises(PasscodeError) as plain:
        engine.verify("nightly", passcode="not the passcode")
    assert str(plain.value).endswith(
        "use the passcode it was made with (for a backup made with a write key or by a "
        "schedule: the one that key was made from)."
    )
    engine.verify("nightly", passcode=meant)


@pytest.mark.parametrize("passcode", ["", "short", "1234567"])
def test_short_passcode_is_refused(engine: Engine, tree: Path, passcode: str) -> None:
    with pytest.raises(PasscodeError, match="at least 8"):
        engine.create("nightly", [tree], passcode=passcode)
    assert engine.list() == []


@pytest.mark.parametrize(
    "name",
    ["", ".", "..", "a/b", "a\\b", "../x", ".hidden", "x..y", "name with space", "é", "a" * 129],
)
def test_bad_backup_names_are_refused(engine: Engine, tree: Path, name: str) -> None:
    with pytest.raises(InvalidNameError):
        engine.create(name, [tree], passcode=PASSCODE)


@pytest.mark.parametrize(
    "retention", [1_000, "yesterday", 1.5, -5, True, "12.5"], ids=lambda v: repr(v)
)
def test_bad_retention_dates_are_refused(engine: Engine, tree: Path, retention: object) -> None:
    with pytest.raises(ConfigError, match="retentionDate|milliseconds"):
        engine.create("nightly", [tree], passcode=PASSCODE, retention_date=retention)  # type: ignore[arg-type]
    assert engine.list() == []


def test_missing_sources_and_colliding_names_are_refused(
    engine: Engine, tree: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        engine.create("x", [tmp_path / "missing"], passcode=PASSCODE)
    other = tmp_path / "other" / "data"
    other.mkdir(parents=True)
    with pytest.raises(ConfigError, match="both be archived"):
        engine.create("x", [tree, other], passcode=PASSCODE)
    with pytest.raises(ConfigError, match="Nothing to back up"):
        engine.create("x", [], passcode=PASSCODE)
    with pytest.raises(InvalidNameError):
        engine.create("x", passcode=PASSCODE, streams={"../escape": io.BytesIO(b"x")})
    assert not store_dir(Path(os.environ["STRONGROOM_HOME"])).exists() or engine.list() == []


def test_a_name_is_never_overwritten(engine: Engine, tree: Path, tmp_path: Path) -> None:
    engine.create("nightly", [tree], passcode=PASSCODE, description="original")
    with pytest.raises(BackupExistsError, match="never overwritten"):
        engine.create("nightly", [tree], passcode="another passcode", description="impostor")
    assert engine.info("nightly").description == "original"
    engine.restore("nightly", tmp_path / "out", passcode=PASSCODE)


def test_losing_a_commit_race_leaves_the_winner_intact(
    engine: Engine, home: Path, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two writers pass the early existence check; the manifest's put-if-absent decides."""
    store = engine.store()
    real_exists = store.exists
    early = manifest_key("nightly")  # the early check's; the rest as they are
    monkeypatch.setattr(store, "exists", lambda key: key != early and real_exists(key))
    engine.create("nightly", [tree], passcode=PASSCODE, description="winner")
    with pytest.raises(BackupExistsError):
        engine.create("nightly", [tree], passcode=PASSCODE, description="loser")
    monkeypatch.setattr(store, "exists", real_exists)
    assert engine.info("nightly").description == "winner"
    data_dirs = os.listdir(store_dir(home) / "data" / "nightly")
    assert len(data_dirs) == 1, "the loser's data must be removed again"
    engine.verify("nightly", passcode=PASSCODE)


def test_an_uncommitted_backup_is_not_listed(
    engine: Engine, home: Path, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash between the data and the manifest leaves data nobody lists or restores."""

    original_finish = ChunkWriter.finish

    def finish_then_die(self: ChunkWriter) -> None:
        original_finish(self)
        raise SystemExit("killed")  # the process dies after the data, before the commit

    monkeypatch.setattr(ChunkWriter, "finish", finish_then_die)
    monkeypatch.setattr(type(engine.store()), "delete_prefix", lambda self, prefix: None)
    with pytest.raises(SystemExit):
        engine.create("nightly", [tree], passcode=PASSCODE)
    assert any((store_dir(home) / "data" / "nightly").iterdir()), "data objects were written"
    assert not (store_dir(home) / manifest_key("nightly")).exists()
    assert engine.list() == []
    with pytest.raises(BackupNotFoundError):
        engine.info("nightly")


def test_a_failed_create_removes_what_it_wrote(
    engine: Engine, home: Path, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before its first chunk, its pending marker too (test_sweep: not after one)."""

    def broken_source(*args: object, **kwargs: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr("strongroom.enginecreate.write_archive", broken_source)
    with pytest.raises(OSError, match="disk on fire"):
        engine.create("nightly", [tree], passcode=PASSCODE)
    assert not (store_dir(home) / "pending").exists()
    assert engine.list() == []
    data = store_dir(home) / "data" / "nightly"
    assert not data.exists() or not any(data.rglob("*[0-9]"))


def test_the_key_is_derived_beside_the_writing_and_its_failure_commits_nothing(
    engine: Engine, home: Path, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Argon2id runs while the chunks are written; if it fails, the create fails like
    any other and removes what it wrote."""
    writing = threading.Event()
    real_write_archive = strongroom.enginecreate.write_archive

    def write_archive(*args: Any) -> Any:
        writing.set()
        return real_write_archive(*args)

    def derive(*args: object, **kwargs: object) -> None:
        assert writing.wait(10), "the key derivation did not run beside the writing"
        raise MemoryError("Argon2id could not allocate its memory")

    monkeypatch.setattr("strongroom.enginecreate.write_archive", write_archive)
    monkeypatch.setattr("strongroom.enginecreate.WriteKey.derive", derive)
    with pytest.raises(MemoryError, match="Argon2id"):
        engine.create("nightly", [tree], passcode=PASSCODE)
    assert engine.list() == []
    data = store_dir(home) / "data" / "nightly"
    assert not data.exists() or not any(data.rglob("*[0-9]"))


def test_list_info_update_delete(engine: Engine, tree: Path) -> None:
    now = datetime.now(UTC)
    engine.create("a", [tree], passcode=PASSCODE, description="one")
    engine.create("b", [tree], passcode=PASSCODE, retention_date=FUTURE_MS)
    listed = engine.list()
    assert [b.name for b in listed] == ["a", "b"]
    assert listed[0].created >= now - timedelta(seconds=5)
    info = engine.info("b").to_dict()
    assert info["retentionDate"] == FUTURE_MS and info["backupStore"] == "backupsDefault"
    assert info["status"] == "COMPLETED" and info["backupType"] == "FULL"
    updated = engine.update_retention("a", FUTURE_MS + 1)
    assert engine.info("a").retention_date == updated.retention_date
    with pytest.raises(ConfigError, match="in the past"):
        engine.update_retention("a", 1_000)
    engine.verify("a", passcode=PASSCODE)  # the update needs no passcode and breaks nothing
    engine.delete("a")
    assert [b.name for b in engine.list()] == ["b"]
    with pytest.raises(BackupNotFoundError):
        engine.delete("a")


def test_a_manifest_that_does_not_read_is_listed_as_unreadable_not_left_out(
    engine: Engine, home: Path, tree: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine.create("good", [tree], passcode=PASSCODE)
    engine.create("damaged", [tree], passcode=PASSCODE)
    (store_dir(home) / manifest_key("damaged")).write_bytes(b"not a manifest")

    listing = engine.listing()
    assert [b.name for b in listing.backups] == ["good"]
    assert list(listing.unreadable) == ["damaged"]
    assert "not JSON" in listing.unreadable["damaged"]
    assert listing.to_dict()["unreadable"] == [
        {"name": "damaged", "problem": listing.unreadable["damaged"]}
    ]
    assert not caplog.records  # the caller reports them, once
    assert engine.list() == listing.backups
    assert [r.getMessage() for r in caplog.records] == [
        f"Not listed: {listing.unreadable['damaged']}"
    ]


def test_delete_removes_manifest_and_data(engine: Engine, home: Path, tree: Path) -> None:
    info = engine.create("gone", [tree], passcode=PASSCODE)
    assert info.chunk_count > 1
    backup_id = os.listdir(store_dir(home) / "data" / "gone")[0]
    engine.delete("gone")
    assert not (store_dir(home) / manifest_key("gone")).exists()
    assert not list((store_dir(home) / data_prefix("gone", backup_id)).glob("*"))


def test_unknown_store_is_a_clear_error(engine: Engine, tree: Path) -> None:
    with pytest.raises(ConfigError, match="strongroom stores add offsite"):
        engine.create("x", [tree], passcode=PASSCODE, store="offsite")


@pytest.mark.parametrize("umask", [0o077, 0o000])
def test_modes_are_restored_exactly_whatever_the_umask(
    engine: Engine, tree: Path, tmp_path: Path, umask: int
) -> None:
    """New files are created with the member's mode less the umask, and fixed only where
    that differs, so a umask that takes bits away must not leave them off."""
    (tree / "shared.txt").write_text("for everyone\n")
    (tree / "shared.txt").chmod(0o666)
    engine.create("modes", [tree], passcode=PASSCODE)
    previous = os.umask(umask)
    try:
        target = engine.restore("modes", tmp_path / "restored", passcode=PASSCODE)
    finally:
        os.umask(previous)
    assert snapshot(target / "data") == snapshot(tree)


def test_a_shared_directory_keeps_its_sticky_bit_and_nothing_gains_setuid(
    engine: Engine, tree: Path, tmp_path: Path
) -> None:
    """A world-writable directory restored without its sticky bit (1777 as 0777) would let
    any local user delete or replace the others' files in it; setuid and setgid are never
    given back (a write key's holder must not hand a setuid program to a root restore)."""
    shared, program = tree / "shared", tree / "program"
    shared.mkdir()
    (shared / "mine.txt").write_text("mine\n")
    program.write_text("#!/bin/sh\n")
    shared.chmod(0o1777)
    program.chmod(0o6755)
    (tree / "nested").chmod(0o2755)
    engine.create("modes", [tree], passcode=PASSCODE)
    target = engine.restore("modes", tmp_path / "restored", passcode=PASSCODE)
    assert stat.S_IMODE((target / "data" / "shared").stat().st_mode) == 0o1777
    assert stat.S_IMODE((target / "data" / "program").stat().st_mode) == 0o755
    assert stat.S_IMODE((target / "data" / "nested").stat().st_mode) == 0o755
    listed = {e.path: e.mode for e in engine.ls("modes", passcode=PASSCODE)}
    assert (listed["data/shared"], listed["data/program"]) == (0o1777, 0o755)


def test_a_backups_document_lists_at_most_so_many_left_out_entries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A job keeps its result in the job table: a tree of a million sockets must not put a
    million lines there (the log names each)."""
    monkeypatch.setattr(strongroom.backupinfo, "LEFT_OUT_LISTED", 2)
    monkeypatch.setattr(strongroom.backupinfo, "LEFT_OUT_TEXT", 4)
    created = datetime(2026, 1, 1, tzinfo=UTC)
    left_out = ("a: x", "b: yy", "c: z")
    info = BackupInfo("n", "s", "", created, None, 1, 1, 1, "0" * 32, left_out=left_out)
    assert info.to_dict()["leftOut"] == ["a: x", "b: …"]
    assert info.to_dict()["leftOutCount"] == 3
    assert info.left_out == left_out


def test_a_resent_commit_that_finds_its_own_manifest_succeeds(
    engine: Engine, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transport resends a lost-answer put: the resend sees our manifest, not a rival's."""
    store = engine.store()
    real_put = store.put

    def put_then_resend(key: str, data: bytes | bytearray | memoryview, **options: Any) -> None:
        real_put(key, data, **options)
        if key.startswith("manifests/"):
            real_put(key, data, **options)  # raises FileExistsError, as a resend would

    monkeypatch.setattr(store, "put", put_then_resend)
    info = engine.create("nightly", [tree], passcode=PASSCODE)
    assert engine.info("nightly") == info
    engine.verify("nightly", passcode=PASSCODE)


def fail_at_the_manifest(
    store: Store, monkeypatch: pytest.MonkeyPatch, failure: BaseException, *, lands: bool
) -> None:
    """The manifest's put fails (a Ctrl-C as it returns, an fsync of its directory that
    fails, a connection cut), having landed or not (`lands`)."""
    real_put = store.put

    def put(key: str, data: bytes | bytearray | memoryview, **options: Any) -> None:
        if not key.startswith("manifests/"):
            return real_put(key, data, **options)
        if lands:
            real_put(key, data, **options)
        raise failure

    monkeypatch.setattr(store, "put", put)


@pytest.mark.parametrize("lands", [True, False], ids=["landed", "not landed"])
@pytest.mark.parametrize(
    "failure", [KeyboardInterrupt(), StoreUnavailableError("fsync: Input/output error")]
)
def test_a_commit_that_fails_as_its_manifest_is_written_removes_nothing_and_says_so(
    engine: Engine,
    home: Path,
    tree: Path,
    monkeypatch: pytest.MonkeyPatch,
    failure: BaseException,
    lands: bool,
) -> None:
    """Whether a manifest's put landed is not known when it fails (a remote store's
    upload can even land after an interrupt): removing the data then left a listed,
    COMPLETED backup that restored nothing. Nothing is removed: a backup that landed is
    whole, one that did not is swept later, and the error says to look."""
    fail_at_the_manifest(engine.store(), monkeypatch, failure, lands=lands)
    with pytest.raises(CommitUncertainError) as caught:
        engine.create("nightly", [tree], passcode=PASSCODE)
    reason = "it was interrupted" if isinstance(failure, KeyboardInterrupt) else str(failure)
    assert str(caught.value) == (
        "Backup 'nightly' may or may not have been committed in store 'backupsDefault': its "
        f"create stopped while its manifest was being written ({reason}). 'strongroom list "
        "--store backupsDefault' shows which: if it is listed, it is complete and restores "
        "(delete it if unwanted); if not, a cleanup sweeps what it wrote once that is older "
        "than its grace period (a day by default)."
    )
    monkeypatch.undo()
    if lands:
        assert [info.name for info in engine.list()] == ["nightly"]
        engine.verify("nightly", passcode=PASSCODE)
    else:
        assert engine.list() == []
        assert any((store_dir(home) / "data" / "nightly").rglob("*[0-9]")), "kept for a sweep"


class DyingDisk(LocalStore):
    """A backend that forgot `translate_errors` around its reads of data."""

    def get(self, key: str, *, limit: int | None = None) -> bytes:
        if key.startswith("data/"):
            raise OSError(errno.EIO, "Input/output error")
        return super().get(key, limit=limit)


def test_an_os_error_a_backend_lets_escape_names_the_store_not_the_target(
    tmp_path: Path, tree: Path, home: Path
) -> None:
    """Such an error read "cannot use OUT: Input/output error. Check the path, its
    permissions and the free space.": the user's restore target blamed for the store."""
    (tmp_path / "disk").mkdir()
    store = DyingDisk("dying", f"file://{tmp_path / 'disk'}", tmp_path / "disk")
    engine = Engine(stores=[store], kdf=FAST_KDF, chunk_size=SMALL_CHUNK)
    engine.create("b", [tree], passcode=PASSCODE, store="dying")
    with pytest.raises(StoreUnavailableError, match=r"^Store 'dying' \(file://.*\) failed: "):
        engine.restore("b", tmp_path / "out", passcode=PASSCODE, store="dying")
    assert not (tmp_path / "out").exists()


def test_a_failed_cleanup_does_not_hide_why_create_failed(
    engine: Engine, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = engine.store()

    def broken_source(*args: object, **kwargs: object) -> None:
        raise OSError("the real reason")

    def store_gone(prefix: str) -> None:
        raise OSError("store unreachable during cleanup")

    monkeypatch.setattr("strongroom.enginecreate.write_archive", broken_source)
    monkeypatch.setattr(store, "delete_prefix", store_gone)
    with pytest.raises(OSError, match="the real reason"):
        engine.create("nightly", [tree], passcode=PASSCODE)


def test_progress_keeps_its_total_and_never_passes_it(engine: Engine, tree: Path) -> None:
    """A create's total is an estimate (tar headers and padding are not in it): done stops
    at it. With streams, whose size is not known beforehand, the total is unknown."""
    reports: list[tuple[int, int | None]] = []
    engine.create("files", [tree], passcode=PASSCODE, progress=lambda *r: reports.append(r))
    totals = {total for _, total in reports}
    assert len(totals) == 1 and all(done <= total for done, total in reports if total)
    assert [done for done, _ in reports] == sorted(done for done, _ in reports)
    reports.clear()
    streams = {"dump": io.BytesIO(os.urandom(300_000))}
    engine.create(
        "dump", [tree], passcode=PASSCODE, streams=streams, progress=lambda *r: reports.append(r)
    )
    assert {total for _, total in reports} == {None}


def test_restore_and_verify_progress_keep_their_total_and_end_on_it(
    engine: Engine, tree: Path, tmp_path: Path
) -> None:
    """Reads know their total (the manifest's sourceSize): it never moves, done never
    passes it, and the tail that is only authenticated (tar padding) counts too."""
    info = engine.create("files", [tree], passcode=PASSCODE)
    restores: list[tuple[int, int | None]] = []
    engine.restore(
        "files", tmp_path / "out", passcode=PASSCODE, progress=lambda *r: restores.append(r)
    )
    verifies: list[tuple[int, int | None]] = []
    engine.verify("files", passcode=PASSCODE, progress=lambda *r: verifies.append(r))
    for reports in (restores, verifies):
        assert {total for _, total in reports} == {info.source_size}
        assert [done for done, _ in reports] == sorted(done for done, _ in reports)
        assert reports[-1][0] == info.source_size


@pytest.mark.parametrize("swapped_in", ["link to a secret", "fifo"])
def test_a_file_swapped_while_the_backup_runs_is_left_out_not_followed(
    engine: Engine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    swapped_in: str,
) -> None:
    """A local user replaces a file, after it was listed and before it is read, with a link
    to a file only the backup can read, or with a FIFO that would block the read forever:
    neither is followed; the file is left out, and the log says why."""
    source = tmp_path / "shared"
    source.mkdir()
    (source / "notes.txt").write_bytes(b"mine\n")
    (source / "report.txt").write_bytes(b"report\n")
    secret = tmp_path / "secret"
    secret.write_bytes(b"root's secret\n")
    real_open_regular = strongroom.archive.open_regular

    def swapping_open_regular(entry: Any) -> Any:
        if entry.name == b"report.txt":
            (source / "report.txt").unlink()
            if swapped_in == "fifo":
                os.mkfifo(source / "report.txt")
            else:
                (source / "report.txt").symlink_to(secret)
        return real_open_regular(entry)

    monkeypatch.setattr("strongroom.archive.open_regular", swapping_open_regular)
    created = threading.Thread(
        target=engine.create, args=("swapped", [source]), kwargs={"passcode": PASSCODE}
    )
    created.start()
    created.join(60)
    if created.is_alive():  # the read blocked on the FIFO: unblock it, then fail
        with open(source / "report.txt", "wb"):
            pass
        created.join(10)
        pytest.fail("the backup blocked on a FIFO swapped in for a file")
    assert "shared/report.txt: a link or a file took its place" in caplog.text or (
        "shared/report.txt: it is no longer a regular file" in caplog.text
    )
    out = engine.restore("swapped", tmp_path / "out", passcode=PASSCODE)
    assert sorted(p.name for p in (out / "shared").iterdir()) == ["notes.txt"]
    assert b"secret" not in b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())


def test_a_directory_swapped_for_a_link_while_the_backup_runs_is_not_entered(
    engine: Engine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Listed as a directory, then replaced by a link to a directory outside the source:
    nothing outside is archived."""
    source = tmp_path / "shared"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "mine.txt").write_bytes(b"mine\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"root's secret\n")
    real_add_entry = strongroom.archive._add_entry

    def swapping_add_entry(tar: Any, members: Any, entry: Any, *rest: Any) -> None:
        real_add_entry(tar, members, entry, *rest)
        if entry.arcname == "shared/sub":  # archived as a directory; now a link
            os.rename(source / "sub", tmp_path / "sub-moved")
            (source / "sub").symlink_to(outside)

    monkeypatch.setattr("strongroom.archive._add_entry", swapping_add_entry)
    engine.create("swapped", [source], passcode=PASSCODE)
    assert "shared/sub: a link or a file took its place" in caplog.text
    out = engine.restore("swapped", tmp_path / "out", passcode=PASSCODE)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["shared", "shared/sub"]


def test_a_source_that_is_a_link_is_backed_up_as_the_link_and_says_so(
    engine: Engine, tree: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """As tar, restic and borg do; someone backing up /srv/data, a link to a mounted disk,
    must hear that the backup holds no data."""
    link = tmp_path / "link-to-data"
    link.symlink_to(tree)
    with caplog.at_level(logging.WARNING, logger="strongroom"):
        engine.create("linked", [link], passcode=PASSCODE)
    assert any(
        "is a symbolic link" in r.getMessage() and str(tree) in r.getMessage()
        for r in caplog.records
    )
    engine.restore("linked", tmp_path / "out", passcode=PASSCODE)
    assert os.readlink(tmp_path / "out" / "link-to-data") == str(tree)
