"""The places a home remembers as stores: one line a spelling, whatever the store is
named, kept in the home's own file; a home that cannot write it still works, and one
whose file cannot be read marks nothing without --anew."""

from __future__ import annotations

import errno
import logging
import stat
from pathlib import Path

import pytest

from strongroom import ConfigError, Engine, StoreSpec
from strongroom.config import EMBEDDED_STORE_NAME
from strongroom.enginestores import add_command
from strongroom.knownstores import KNOWN_STORES_FILE, KnownStores, places
from strongroom.plugins import BackendOptions
from tests.conftest import FAST_KDF, PASSCODE

S3_LIKE = BackendOptions(settings=("region",), endpoints=("endpoint_url",), secrets=("key",))


def _places(url: str, declared: BackendOptions | None = S3_LIKE, **options: str) -> set[str]:
    return places(StoreSpec("any", url, options), declared)


def test_a_place_is_remembered_once_whatever_its_name_or_spelling(tmp_path: Path) -> None:
    known = KnownStores(tmp_path / "home")
    nas = _places("file:///mnt/nas/")
    assert not known.knows(nas)
    known.remember(nas, "nas")
    known.remember(nas, "nas")
    KnownStores(tmp_path / "home").remember(_places("file://localhost/mnt//nas"), "nas2")
    again = KnownStores(tmp_path / "home")
    for spelling in ("file:///mnt/nas", "file:///mnt/./x/../nas", "file:///mnt/%6Eas"):
        assert again.knows(_places(spelling)), spelling
    assert not again.knows(_places("file:///mnt/other"))
    path = tmp_path / "home" / KNOWN_STORES_FILE
    assert len(path.read_text().splitlines()) == 1
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_place_is_its_location_and_endpoint_not_its_other_options() -> None:
    bucket = _places("s3://b/p", region="eu", key="env-name")
    assert bucket == _places("S3://B/p/")
    assert bucket.isdisjoint(_places("s3://b/p", endpoint_url="http://minio:9000"))
    assert _places("file:///mnt/nas", confine_to="/mnt") == _places("file:///mnt/nas")


def test_a_backend_that_declares_no_endpoint_is_placed_by_its_options() -> None:
    """A generic backend names its server in options (`host`): another host is another
    place, another password variable is not."""
    sftp = _places("sftp:///backups", None, host="a", password="env-a")
    assert sftp == _places("sftp:///backups", None, host="a", password="env-b")
    assert sftp.isdisjoint(_places("sftp:///backups", None, host="b"))


def test_a_directory_reached_through_a_link_is_the_place_either_way(tmp_path: Path) -> None:
    """A link that lives on the store's disk resolves only while the disk is mounted:
    the place is remembered as written and as resolved, and either one is known."""
    disk = tmp_path / "disk"
    (disk / "real").mkdir(parents=True)
    (disk / "link").symlink_to(disk / "real")
    known = KnownStores(tmp_path / "home")
    known.remember(_places((disk / "link").as_uri()), "nas")
    (disk / "link").unlink()  # the disk that held the link is not mounted
    assert known.knows(_places((disk / "link").as_uri()))
    assert known.knows(_places((disk / "real").as_uri()))


def test_a_dot_dot_after_a_link_is_the_place_the_kernel_reaches(tmp_path: Path) -> None:
    """`/srv/x/../nas` with `/srv/x` a link into `/mnt` opens `/mnt/nas`."""
    (tmp_path / "mnt" / "x").mkdir(parents=True)
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "x").symlink_to(tmp_path / "mnt" / "x")
    known = KnownStores(tmp_path / "home")
    known.remember(_places((tmp_path / "mnt" / "nas").as_uri()), "nas")
    assert known.knows(_places(f"file://{tmp_path}/srv/x/../nas"))


def test_a_line_cut_short_does_not_swallow_the_next(tmp_path: Path) -> None:
    known = KnownStores(tmp_path / "home")
    known.remember(_places("file:///mnt/a"), "a")
    with known.path.open("a") as file:
        file.write('["file:///cut')  # a write the disk ran out of room for
    KnownStores(tmp_path / "home").remember(_places("file:///mnt/b"), "b")
    assert KnownStores(tmp_path / "home").knows(_places("file:///mnt/b"))


def test_a_link_planted_at_the_file_is_not_followed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Whoever can write to the home could point the file elsewhere: strongroom neither
    reads nor appends to the link's target."""
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.write_text("")
    (home / KNOWN_STORES_FILE).symlink_to(elsewhere)
    known = KnownStores(home)
    with pytest.raises(OSError):
        known.knows(_places("file:///mnt/nas"))
    with caplog.at_level(logging.WARNING, logger="strongroom"):
        known.remember(_places("file:///mnt/nas"), "nas")
    assert elsewhere.read_text() == ""
    assert "is not remembered" in caplog.text


def test_a_file_that_cannot_be_read_marks_nothing_without_anew(home: Path, tmp_path: Path) -> None:
    """Nobody can tell then whether an empty place was a store: init refuses, says why,
    and goes ahead only when told."""
    home.mkdir()
    place = tmp_path / "mnt"
    place.mkdir()
    (home / "config.toml").write_text(f'[stores.nas]\nurl = "{place.as_uri()}"\n')
    (home / KNOWN_STORES_FILE).mkdir()  # not a file: cannot be read
    engine = Engine(kdf=FAST_KDF)
    with pytest.raises(ConfigError, match="cannot be read .* --anew"):
        engine.init_store("nas")
    assert list(place.iterdir()) == []
    engine.init_store("nas", anew=True)
    assert [p.name for p in place.iterdir()] == ["strongroom.store"]


def test_a_home_that_cannot_write_the_file_still_backs_up(
    home: Path,
    tree: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A full or read-only home: the backup goes on, and the log says so once."""
    engine = Engine(kdf=FAST_KDF)
    engine.add_store(StoreSpec("nas", (tmp_path / "nas").as_uri()))
    (home / KNOWN_STORES_FILE).unlink()

    def full(self: KnownStores, place: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(KnownStores, "_append", full)
    other = Engine(kdf=FAST_KDF)
    with caplog.at_level(logging.WARNING, logger="strongroom"):
        other.create("x", [tree], passcode=PASSCODE, store="nas")
        other.create("y", [tree], passcode=PASSCODE, store="nas")
    assert caplog.text.count("Store 'nas' is not remembered") == 1, "said once"


def test_the_embedded_store_written_into_config_toml_is_still_the_embedded_store(
    home: Path, tree: Path
) -> None:
    """A `[stores.backupsDefault]` table at the embedded store's place (to set its
    compression) keeps it strongroom's own: made whenever missing, never asked, never
    remembered."""
    home.mkdir()
    url = (home / "stores" / EMBEDDED_STORE_NAME).absolute().as_uri()
    table = f'[stores.{EMBEDDED_STORE_NAME}]\nurl = "{url}"\ncompression = "none"\n'
    (home / "config.toml").write_text(table)
    info = Engine(kdf=FAST_KDF).create("x", [tree], passcode=PASSCODE)
    assert info.stored_size > info.source_size, "stored uncompressed, as its table says"
    assert not (home / KNOWN_STORES_FILE).exists()


def test_the_add_refusal_names_the_whole_command_to_insist_with() -> None:
    """Run as printed, it adds the same store (its endpoint, secrets by reference)."""
    spec = StoreSpec(
        "offsite",
        "s3://b/my prefix",
        {"endpoint_url": "http://minio:9000", "secret": {"env": "SECRET"}},
        compression="none",
    )
    assert add_command(spec, default=True) == (
        "strongroom stores add offsite 's3://b/my prefix' --default --compression none "
        "--option endpoint_url=http://minio:9000 --option secret=env:SECRET --anew"
    )
