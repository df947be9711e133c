"""Registration through the entry point, authentication modes, and refused configurations."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from azure.identity.aio import DefaultAzureCredential
from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

from strongroom import ConfigError, Engine, StoreSpec
from strongroom.cli import main
from strongroom.plugins import build_registry, get_plugin_manager
from strongroom_azure import OPTIONS
from strongroom_azure._options import KNOWN_OPTIONS, AzureOptions
from strongroom_azure.store import AzureStore, open_azure_store

if TYPE_CHECKING:
    from conftest import Account


def test_installing_the_plugin_registers_its_schemes() -> None:
    schemes = build_registry(get_plugin_manager()).schemes
    assert {"az", "abfs", "abfss"} <= set(schemes)


def test_a_configured_store_opens_with_its_secret_from_the_environment(
    account: Account, container: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_AZURE_KEY", account.key)
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "config.toml").write_text(
        f"""
[stores.offsite]
url = "abfs://{container}/backups"
options = {{ account_name = "{account.name}", account_key = {{ env = "TEST_AZURE_KEY" }}, \
account_url = "{account.endpoint}", concurrency = 3 }}
"""
    )
    store = Engine().store("offsite")
    assert isinstance(store, AzureStore)
    assert store.concurrency == 3
    assert store.validate().ok


def test_stores_add_and_validate_on_the_command_line(
    account: Account,
    container: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("TEST_AZURE_KEY", account.key)
    options = [f"account_name={account.name}", "account_key=env:TEST_AZURE_KEY"]
    options += [f"account_url={account.endpoint}", "concurrency=4", "retry_total=2"]
    add = ["stores", "add", "offsite", f"az://{container}/cli"]
    assert main([*add, *(arg for o in options for arg in ("--option", o))]) == 0
    assert account.key not in (tmp_path / "home" / "config.toml").read_text()
    capsys.readouterr()
    assert main(["stores", "validate", "offsite", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["checks"] == dict.fromkeys(
        ["write", "read", "list", "delete", "recognised"], True
    )  # adding the store marked it
    assert report["capabilities"] == {
        "atomic_put": True,
        "put_if_absent": True,
        "object_lock": False,
        "persistent": True,
    }


def test_with_no_options_the_connection_string_comes_from_the_environment(
    account: Account,
    container: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """As `az storage blob list` finds it: nothing is configured but the URL."""
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", account.connection_string())
    assert main(["stores", "add", "x", f"az://{container}/prefix"]) == 0
    config = (tmp_path / "home" / "config.toml").read_text()
    assert "options" not in config and account.key not in config
    assert main(["stores", "validate", "x"]) == 0, capsys.readouterr().err
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING")
    assert main(["stores", "validate", "x"]) == 3
    assert "export AZURE_STORAGE_CONNECTION_STRING" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("environment", "key", "sas_token"),
    [
        ({"AZURE_STORAGE_ACCOUNT_NAME": "acct", "AZURE_STORAGE_ACCOUNT_KEY": "a2V5"}, "a2V5", None),
        ({"AZURE_STORAGE_ACCOUNT": "acct", "AZURE_STORAGE_KEY": "a2V5"}, "a2V5", None),
        ({"AZURE_STORAGE_ACCOUNT_NAME": "acct", "AZURE_STORAGE_SAS_TOKEN": "sv=1"}, None, "sv=1"),
        ({"AZURE_STORAGE_ACCOUNT": "acct"}, None, None),
    ],
)
def test_with_no_options_the_account_comes_from_the_environment(
    environment: dict[str, str],
    key: str | None,
    sas_token: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    options = AzureOptions.from_spec(StoreSpec("azure", "az://backups/p", {"concurrency": 2}))
    assert (options.account_name, options.account_key, options.sas_token) == (
        "acct",
        key,
        sas_token,
    )
    client = open_azure_store(StoreSpec("azure", "az://backups/p", {})).fs.service_client
    assert client.url == "https://acct.blob.core.windows.net/"
    assert isinstance(client.credential, DefaultAzureCredential) == (key is sas_token is None)


def test_options_that_name_an_account_ignore_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", "AccountName=other;AccountKey=a2V5")
    store = open_azure_store(StoreSpec("azure", "az://backups/p", {"account_name": "acct"}))
    assert isinstance(store.fs.service_client.credential, DefaultAzureCredential)


def _sas_token(account: Account) -> str:
    return generate_account_sas(
        account.name,
        account.key,
        ResourceTypes(container=True, object=True),
        AccountSasPermissions(read=True, write=True, delete=True, list=True, create=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )


@pytest.mark.parametrize("mode", ["sas_token", "connection_string"])
def test_other_ways_to_authenticate(account: Account, container: str, mode: str) -> None:
    if mode == "sas_token":
        options = {"account_name": account.name, "account_url": account.endpoint}
        options["sas_token"] = _sas_token(account)
    else:
        options = {"connection_string": account.connection_string()}
    store = open_azure_store(StoreSpec("azure", f"az://{container}", options))
    report = store.validate()
    assert report.ok, report.errors


def test_without_a_secret_the_default_azure_credential_is_used() -> None:
    store = open_azure_store(StoreSpec("azure", "az://backups/p", {"account_name": "acct"}))
    client = store.fs.service_client
    assert isinstance(client.credential, DefaultAzureCredential)
    assert client.url == "https://acct.blob.core.windows.net/"


@pytest.mark.parametrize(
    ("url", "options", "complaint"),
    [
        (
            "az://backups",
            {"account_name": "acct", "region": "x", "account_key": "SeCrEt"},
            "unknown",
        ),
        (
            "az://backups",
            {"account_name": "acct", "account_key": "SeCrEt", "sas_token": "s"},
            "not both",
        ),
        (
            "az://backups",
            {"connection_string": "SeCrEt", "account_name": "acct"},
            "remove account_name",
        ),
        ("az://backups", {"account_key": "SeCrEt"}, "set account_name"),
        ("az://backups", {"account_name": "acct", "account_url": "http://127.0.0.1:1/a"}, "https"),
        (
            "az://backups",
            {"account_name": "acct", "account_url": "ftp://x"},
            "blob service endpoint",
        ),
        ("az://Bad_Name/x", {"account_name": "acct"}, "az://CONTAINER/PREFIX"),
        ("az://backups?x=1", {"account_name": "acct"}, "az://CONTAINER/PREFIX"),
        ("az://backups", {"account_name": "acct", "retry_total": -1}, "whole number >= 0"),
        ("az://backups", {"account_name": "acct", "concurrency": "many"}, "whole number >= 1"),
        ("az://backups", {"account_name": "acct", "concurrency": True}, "whole number >= 1"),
        ("az://backups", {"account_name": "acct", "account_key": 12}, "non-empty text"),
        ("az://backups", {"account_name": "evil.example/#"}, "3-24 lowercase letters"),
        ("az://backups", {"account_name": "127.0.0.1:9"}, "3-24 lowercase letters"),
    ],
)
def test_bad_configurations_are_refused_before_any_request(
    url: str, options: dict[str, object], complaint: str
) -> None:
    with pytest.raises(ConfigError, match="Store 'azure'") as caught:
        open_azure_store(StoreSpec("azure", url, options))
    assert complaint in str(caught.value)
    assert "SeCrEt" not in str(caught.value)


def test_object_lock_is_refused_because_azure_stores_cannot_lock_objects() -> None:
    """Azure's own immutability policies are not used by strongroom (Azurite has none)."""
    registry = build_registry(get_plugin_manager(autoload=False))
    registry.add("az", open_azure_store)
    spec = StoreSpec("azure", "az://backups", {"object_lock": "compliance", "account_name": "acct"})
    with pytest.raises(ConfigError, match="cannot lock objects until a date"):
        registry.open(spec)


def test_an_unknown_option_is_answered_with_the_known_ones() -> None:
    with pytest.raises(ConfigError) as caught:
        open_azure_store(StoreSpec("azure", "az://backups", {"acount_key": "x"}))
    assert "acount_key" in str(caught.value)
    for option in KNOWN_OPTIONS:
        assert option in str(caught.value)


@pytest.mark.parametrize("secret", ["account_key", "sas_token", "connection_string"])
def test_secrets_in_plain_text_are_refused_and_nothing_is_saved(
    secret: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STRONGROOM_HOME", str(tmp_path))
    add = ["stores", "add", "az", "az://backups", "--option", "account_name=acct"]
    assert main([*add, "--option", f"{secret}=THE-KEY"]) == 3
    error = capsys.readouterr().err
    assert f"{secret} must not be written in plain text" in error and "THE-KEY" not in error
    assert not (tmp_path / "config.toml").exists()


def test_the_declared_options_are_exactly_the_known_ones() -> None:
    declared = [*OPTIONS.settings, *OPTIONS.endpoints, *OPTIONS.secrets]
    assert sorted(declared) == KNOWN_OPTIONS


def test_numbers_may_come_as_text_from_the_command_line(
    make_store: Callable[..., AzureStore],
) -> None:
    store = make_store(concurrency="3", retry_total="0")
    assert store.concurrency == 3
    assert store.validate().ok


def test_registering_the_plugin_loads_no_azure_sdk() -> None:
    """Every strongroom command loads the plugin; only an az:// store may pay for the SDK."""
    probe = (
        "import sys; from strongroom.plugins import build_registry, get_plugin_manager; "
        "registry = build_registry(get_plugin_manager()); "
        "assert 'az' in registry.schemes, registry.schemes; "
        "print(sorted(m for m in ('adlfs', 'azure.storage.blob') if m in sys.modules))"
    )
    env = {k: v for k, v in os.environ.items() if k != "STRONGROOM_DISABLE_PLUGIN_AUTOLOAD"}
    loaded = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "[]"
