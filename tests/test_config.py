"""The stores configuration: embedded default, TOML stores, secret references."""

from __future__ import annotations

import fcntl
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from strongroom import (
    ConfigBusyError,
    ConfigError,
    Engine,
    StoresConfig,
    StoreSpec,
    StoreUnavailableError,
    UnknownStoreError,
)
from strongroom import config as config_module
from strongroom.config import editing
from strongroom.schedules import define
from strongroom.web.stores import register
from tests.conftest import FAST_KDF, PASSCODE


def test_no_configuration_gives_the_embedded_default_store(home: Path) -> None:
    config = StoresConfig.load()
    assert config.default == "backupsDefault"
    spec = config.get()
    assert spec.url == (home / "stores" / "backupsDefault").as_uri()


def test_first_backup_needs_no_setup(home: Path, tree: Path) -> None:
    info = Engine(kdf=FAST_KDF).create("first", [tree], passcode=PASSCODE)
    assert info.store == "backupsDefault"
    assert (home / "stores" / "backupsDefault" / "manifests" / "first").is_file()


def test_stores_from_toml_with_a_default(home: Path, tmp_path: Path, tree: Path) -> None:
    home.mkdir()
    offsite = tmp_path / "offsite"
    (home / "config.toml").write_text(
        f'default = "offsite"\n[stores.offsite]\nurl = "{offsite.as_uri()}"\n', encoding="utf-8"
    )
    engine = Engine(kdf=FAST_KDF)
    engine.init_store("offsite")  # configured by hand: made and marked once
    assert engine.create("x", [tree], passcode=PASSCODE).store == "offsite"
    assert (offsite / "manifests" / "x").is_file()
    assert [b.name for b in engine.list("backupsDefault")] == []


def test_config_path_from_environment(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere.toml"
    elsewhere.write_text('[stores.cold]\nurl = "file:///srv/cold"\n', encoding="utf-8")
    monkeypatch.setenv("STRONGROOM_CONFIG", str(elsewhere))
    assert StoresConfig.load().get("cold").url == "file:///srv/cold"


@pytest.mark.parametrize(
    "place",
    [
        "b\nc",  # a parser drops a raw line break: the place used is not this one
        "%0Ab",  # a name no listing shows plainly
        "a\x85b",  # C1's next line
        "a%E2%80%A8b",  # Unicode's line separator
    ],
)
def test_a_new_store_url_with_a_control_character_is_refused(
    home: Path, tmp_path: Path, place: str
) -> None:
    for url in (f"{tmp_path.as_uri()}/{place}", f"s3://bucket/{place}"):
        with pytest.raises(ConfigError, match="holds a control character"):
            Engine().add_store(StoreSpec("x", url))
    with pytest.raises(ConfigError, match="holds a control character"):
        Engine().add_store(StoreSpec("x", f"fi\tle://{tmp_path}/tab"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]  # no place made
    assert not (home / "config.toml").exists()


def test_a_configured_url_with_one_still_loads_to_be_removed(home: Path, tmp_path: Path) -> None:
    """An older strongroom took such a URL: the configuration still reads (every command
    and schedule would stop otherwise), `stores init` makes nothing there, and the store
    can be removed."""
    home.mkdir()
    url = f"{tmp_path.as_uri()}/place/%0Ab"
    (home / "config.toml").write_text(f'[stores.x]\nurl = "{url}"\n')
    assert StoresConfig.load().get("x").url == url
    with pytest.raises(ConfigError, match="holds a control character"):
        Engine().init_store("x")
    assert not (tmp_path / "place").exists()
    config = StoresConfig.load()
    config.remove("x")  # as 'strongroom stores remove x' does
    config.save()
    assert "x" not in StoresConfig.load().stores


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("this is = = not toml", "not valid TOML"),
        ("[stores.x]\nurl = 5\n", "needs a url"),
        ('[stores.x]\nurl = "file:///a"\nbucket = "b"\n', "unknown keys"),
        ('[stores.x]\nurl = "file:///a"\ncompression = "lz4"\n', "'lz4' is not one of zstd"),
        ('default = "nope"\n', "default store 'nope'"),
        ('[stores."bad/name"]\nurl = "file:///a"\n', "not a valid store name"),
        ('[stores.x]\nurl = "/no/scheme"\n', "not a URL"),
    ],
)
def test_bad_configuration_is_a_clear_error(home: Path, text: str, message: str) -> None:
    home.mkdir()
    (home / "config.toml").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        StoresConfig.load()


def test_secret_references_resolve_only_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = StoreSpec(
        "offsite", "s3://bucket/p", {"region": "eu-west-1", "secret": {"env": "OFFSITE_SECRET"}}
    )
    monkeypatch.delenv("OFFSITE_SECRET", raising=False)
    with pytest.raises(ConfigError, match="OFFSITE_SECRET is not set"):
        spec.resolve()
    monkeypatch.setenv("OFFSITE_SECRET", "hunter2-hunter2")
    resolved = spec.resolve()
    assert resolved.options == {"region": "eu-west-1", "secret": "hunter2-hunter2"}
    assert "hunter2" not in repr(resolved)


def test_malformed_secret_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="env = "):
        StoreSpec("s", "s3://b", {"secret": {"file": "/etc/x"}}).resolve()


def test_add_remove_and_save_round_trip(home: Path, tmp_path: Path) -> None:
    config = StoresConfig.load()
    config.add(
        StoreSpec("cold", (tmp_path / "cold").as_uri(), {"key": {"env": "COLD_KEY"}}),
        make_default=True,
    )
    config.save()
    reloaded = StoresConfig.load()
    assert reloaded.default == "cold"
    assert reloaded.get("cold").options == {"key": {"env": "COLD_KEY"}}
    with pytest.raises(ConfigError, match="already configured"):
        reloaded.add(StoreSpec("cold", "file:///x"))
    reloaded.remove("cold")
    reloaded.save()
    again = StoresConfig.load()
    assert again.default == "backupsDefault" and "cold" not in again.stores
    with pytest.raises(ConfigError, match="embedded default"):
        again.remove("backupsDefault")


def test_unknown_store_names_the_configured_ones(home: Path) -> None:
    with pytest.raises(UnknownStoreError, match="backupsDefault"):
        StoresConfig.load().get("nowhere")


def test_the_file_is_written_owner_only_atomically_and_keeps_the_api_table(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    os.umask(0o022)
    home.mkdir()
    path = home / "config.toml"
    path.write_text('[api]\nallow_stores = ["file:///srv/backups/"]\n')
    path.chmod(0o644)
    planted = home / ".config.toml.tmp"  # left by a crash, or planted: never written into
    planted.write_text("left over")
    planted.chmod(0o644)
    replaced: list[int] = []
    real_replace = os.replace

    def replace(source: str, target: str, *, src_dir_fd: int, dst_dir_fd: int) -> None:
        replaced.append(stat.S_IMODE(os.stat(source, dir_fd=src_dir_fd).st_mode))
        real_replace(source, target, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)

    monkeypatch.setattr(os, "replace", replace)
    config = StoresConfig.load()
    assert config.allow_stores == ["file:///srv/backups/"]
    config.add(StoreSpec("offsite", "file:///srv/offsite"))
    config.save()
    assert replaced == [0o600]  # never readable by others, not even before the rename
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert StoresConfig.load().allow_stores == ["file:///srv/backups/"]
    assert planted.read_text() == "left over" and stat.S_IMODE(planted.stat().st_mode) == 0o644
    assert sorted(p.name for p in home.iterdir()) == [".config.toml.tmp", "config.toml"]


@pytest.mark.parametrize(
    "table", ['[api]\nallow_stores = "s3://b/"\n', "[api]\nallow = []\n", "api = 1\n"]
)
def test_a_bad_api_table_is_refused(home: Path, table: str) -> None:
    home.mkdir()
    (home / "config.toml").write_text(table)
    with pytest.raises(ConfigError, match=r"\[api\] takes allow_stores"):
        StoresConfig.load()


def test_an_edit_waits_for_another_process_editing_the_file(home: Path, tmp_path: Path) -> None:
    """The CLI and a server (or two servers) editing stores or schedules at once: each
    re-reads the file under the lock, so neither edit is lost."""
    path = home / "config.toml"
    first = tmp_path / "first"
    command = [str(Path(sys.executable).with_name("strongroom")), "stores", "add"]
    with editing(path):
        process = subprocess.Popen([*command, "first", first.as_uri()], env=os.environ)
        time.sleep(1.5)
        assert process.poll() is None, "the edit did not wait for the lock"
        config = StoresConfig.load()  # the edit the lock holder makes meanwhile
        config.add(StoreSpec("second", (tmp_path / "second").as_uri()))
        config.save()
    assert process.wait(timeout=30) == 0
    assert {"first", "second"} <= set(StoresConfig.load().stores)


def test_an_edit_gives_up_on_a_lock_held_too_long_and_names_it(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lock holder that never lets go (an operator gone from a prompt, a hung process)
    costs another edit at most LOCK_TIMEOUT, then an error that names the lock file."""
    monkeypatch.setattr(config_module, "LOCK_TIMEOUT", 0.3)
    path = home / "config.toml"
    lock = home / ".config.toml.lock"
    home.mkdir()
    holder = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)  # as another process would hold it
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        started = time.monotonic()
        with pytest.raises(ConfigBusyError) as caught, editing(path):
            pytest.fail("the edit ran while another held the lock")
        assert 0.3 <= time.monotonic() - started < 5
        assert str(lock) in str(caught.value) and "Try again" in str(caught.value)
    finally:
        os.close(holder)
    with editing(path):  # once it is let go, edits go on
        pass


def test_a_tenants_edits_keep_its_own_embedded_store(home: Path, tmp_path: Path) -> None:
    """The admin API's store edits and the schedules' edits share one helper, which reads
    the file with the engine's home: a tenant's backupsDefault stays in the tenant's home."""
    tenant = tmp_path / "tenant"
    engine = Engine(home=tenant, kdf=FAST_KDF)
    own = (tenant / "stores" / "backupsDefault").absolute().as_uri()
    register(engine, StoreSpec("other", (tmp_path / "other").as_uri()), default=False)
    assert engine.config.get("backupsDefault").url == own
    with pytest.raises(ConfigError):  # a failed check leaves the engine and the file as they were
        register(engine, StoreSpec("volatile", "memory://volatile"), default=False)
    assert set(engine.config.stores) == set(StoresConfig.load(home=tenant).stores)
    assert "volatile" not in engine.config.stores
    define(engine, "nightly", passcode=PASSCODE, every="1h")
    assert engine.config.get("backupsDefault").url == own
    assert not (home / "config.toml").exists()


def test_a_product_adds_a_file_store_through_the_api_and_its_directory_is_made(
    home: Path, tmp_path: Path, tree: Path
) -> None:
    engine = Engine(kdf=FAST_KDF)
    nas = tmp_path / "nas" / "strongroom"
    engine.add_store(StoreSpec("nas", nas.as_uri()), default=True)
    assert nas.is_dir()
    assert engine.create("x", [tree], passcode=PASSCODE).store == "nas"
    assert StoresConfig.load().default == "nas"

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(StoreUnavailableError):
        engine.add_store(StoreSpec("broken", (blocker / "store").as_uri()))
    assert "broken" not in StoresConfig.load().stores, "nothing is saved that cannot be used"
    assert "broken" not in engine.config.stores
