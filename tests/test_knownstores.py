"""The places a home remembers as stores: one line each, whatever they are named, kept
in the home's own file, and a home that cannot keep them still works."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from strongroom import Engine, StoreSpec
from strongroom.config import EMBEDDED_STORE_NAME
from strongroom.knownstores import KNOWN_STORES_FILE, KnownStores
from tests.conftest import FAST_KDF, PASSCODE


def test_a_place_is_remembered_once_whatever_its_name(tmp_path: Path) -> None:
    known = KnownStores(tmp_path / "home")
    nas = StoreSpec("nas", "file:///mnt/nas/")
    assert nas not in known
    known.remember(nas)
    known.remember(nas)
    KnownStores(tmp_path / "home").remember(StoreSpec("nas2", "file:///mnt/nas"))
    assert StoreSpec("other-name", "file:///mnt/nas") in KnownStores(tmp_path / "home")
    assert StoreSpec("nas", "file:///mnt/other") not in known
    assert StoreSpec("nas", "s3://b/p", {"endpoint_url": "http://a"}) not in known
    path = tmp_path / "home" / KNOWN_STORES_FILE
    assert len(path.read_text().splitlines()) == 1
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_link_planted_at_the_file_is_not_followed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Whoever can write to the home could point the file elsewhere: strongroom neither
    appends to nor reads the link's target, and says so."""
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.write_text("")
    (home / KNOWN_STORES_FILE).symlink_to(elsewhere)
    known = KnownStores(home)
    with caplog.at_level(logging.WARNING, logger="strongroom"):
        known.remember(StoreSpec("nas", "file:///mnt/nas"))
    assert elsewhere.read_text() == ""
    assert "cannot be read" in caplog.text and "is not remembered" in caplog.text


def test_a_home_that_cannot_keep_the_file_still_backs_up(
    home: Path, tree: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = Engine(kdf=FAST_KDF)
    engine.add_store(StoreSpec("nas", (tmp_path / "nas").as_uri()))
    (home / KNOWN_STORES_FILE).unlink()
    (home / KNOWN_STORES_FILE).mkdir()  # not a file: appending fails
    with caplog.at_level(logging.WARNING, logger="strongroom"):
        Engine(kdf=FAST_KDF).create("x", [tree], passcode=PASSCODE, store="nas")
    assert "Store 'nas' is not remembered" in caplog.text


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
