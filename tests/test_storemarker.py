"""The store marker: what recognises a store, what marks it, and who is not asked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from strongroom import Engine, StoreSpec, StoreUnavailableError
from strongroom.backends.file import LocalStore
from strongroom.format import STORE_MARKER_KEY
from tests.conftest import FAST_KDF, PASSCODE


class Clock:
    """A clock the test moves forward."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def _store_from_before_markers(engine: Engine, directory: Path, tree: Path) -> None:
    """The store `old` in `directory` with the backup `first` (expiring in a day), and
    no store marker: as strongroom 0.1.0 left its stores."""
    engine.add_store(StoreSpec("old", directory.as_uri()))
    in_a_day = datetime.now(UTC) + timedelta(days=1)
    engine.create("first", [tree], passcode=PASSCODE, store="old", retention_date=in_a_day)
    (directory / STORE_MARKER_KEY).unlink()


@pytest.mark.parametrize("write", ["create", "delete", "cleanup", "init"])
def test_a_store_from_before_markers_is_known_by_its_backups_and_marked_by_a_write(
    home: Path, tree: Path, tmp_path: Path, write: str
) -> None:
    """Stores added before strongroom marked them hold backups but no marker: they keep
    working, and the next operation that writes marks them, so one that empties the
    store (the last delete, a cleanup) leaves it known."""
    clock = Clock()
    engine = Engine(kdf=FAST_KDF, clock=clock)
    directory = tmp_path / "old"
    _store_from_before_markers(engine, directory, tree)

    assert [b.name for b in engine.list("old")] == ["first"]
    engine.verify("first", passcode=PASSCODE, store="old")
    assert not (directory / STORE_MARKER_KEY).exists(), "reading writes nothing"
    if write == "create":
        engine.create("second", [tree], passcode=PASSCODE, store="old")
        engine.delete("second", "old")
        engine.delete("first", "old")
    elif write == "delete":
        engine.delete("first", "old")
    elif write == "init":
        engine.init_store("old")
        assert (directory / STORE_MARKER_KEY).is_file(), "stores init marks it at once"
        engine.delete("first", "old")
    else:
        clock.now += timedelta(days=2)
        assert engine.cleanup(["old"], dry_run=True).errors == []
        assert not (directory / STORE_MARKER_KEY).exists(), "a dry run writes nothing"
        assert [e.action for e in engine.cleanup(["old"]).entries] == ["deleted"]
    assert (directory / STORE_MARKER_KEY).is_file()
    assert engine.list("old") == [], "emptied, and still a store"


def test_a_store_from_before_markers_is_added_with_read_only_access(
    home: Path, tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restore machine may add a store with read-only credentials: a store that holds
    backups is known by them, so adding it writes nothing. An unknown one needs a write."""
    directory = tmp_path / "old"
    _store_from_before_markers(Engine(kdf=FAST_KDF), directory, tree)
    restoring = Engine(kdf=FAST_KDF, home=tmp_path / "elsewhere")

    def refused(*args: object, **kwargs: object) -> None:
        raise StoreUnavailableError("Store 'old': [Errno 13] Permission denied")  # as put says

    monkeypatch.setattr(LocalStore, "put", refused)
    restoring.add_store(StoreSpec("old", directory.as_uri()))
    restoring.restore("first", tmp_path / "out", passcode=PASSCODE, store="old")
    with pytest.raises(StoreUnavailableError, match="Permission denied"):
        restoring.add_store(StoreSpec("new", (tmp_path / "new").as_uri()))


def test_a_backups_default_written_into_config_toml_is_asked_like_any_store(
    home: Path, tree: Path, tmp_path: Path
) -> None:
    """Only strongroom's own embedded store goes unasked, not any store of its name."""
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    home.mkdir()
    (home / "config.toml").write_text(f'[stores.backupsDefault]\nurl = "{mount_point.as_uri()}"\n')
    engine = Engine(kdf=FAST_KDF)
    with pytest.raises(StoreUnavailableError, match="holds no backups and no store marker"):
        engine.create("x", [tree], passcode=PASSCODE)
    assert list(mount_point.iterdir()) == []
    assert engine.init_store("backupsDefault").url == mount_point.as_uri()
    assert engine.create("x", [tree], passcode=PASSCODE).store == "backupsDefault"


def test_the_embedded_store_and_stores_handed_in_are_not_asked(
    engine: Engine, home: Path, tree: Path, tmp_path: Path
) -> None:
    """The embedded store is strongroom's own, made whenever it is missing; a store handed
    to the constructor is the product's own. Neither is marked or asked."""
    engine.create("x", [tree], passcode=PASSCODE)
    assert not (home / "stores" / "backupsDefault" / STORE_MARKER_KEY).exists()
    given = LocalStore("mine", (tmp_path / "mine").as_uri(), tmp_path / "mine")
    given.initialize()
    product = Engine(stores=[given], kdf=FAST_KDF)
    assert product.list("mine") == []
    product.create("y", [tree], passcode=PASSCODE, store="mine")
    assert not (tmp_path / "mine" / STORE_MARKER_KEY).exists()
