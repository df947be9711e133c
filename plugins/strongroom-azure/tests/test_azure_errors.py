"""Permanent errors fail at once, without retries, naming the store and what to check."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from azure.identity import CredentialUnavailableError

from strongroom import Engine, StoreUnavailableError
from strongroom_azure.store import AzureStore

if TYPE_CHECKING:
    from conftest import FaultProxy

PASSCODE = "correct horse battery"
WRONG_KEY = "A" * 86 + "=="


def test_a_missing_container_is_reported_not_listed_as_empty(
    make_store: Callable[..., AzureStore],
    make_engine: Callable[..., Engine],
    fault_proxy: FaultProxy,
    tmp_path: Path,
) -> None:
    store = make_store(
        name="offsite", url="az://no-such-container/p", account_url=fault_proxy.endpoint
    )
    engine = make_engine(store)
    with pytest.raises(StoreUnavailableError) as listing:
        engine.list("offsite")
    assert fault_proxy.counts["GET"] == 1  # a 404 is not retried
    (tmp_path / "f").write_bytes(b"x" * 1000)
    with pytest.raises(StoreUnavailableError) as creating:
        engine.create("nightly", [tmp_path / "f"], passcode=PASSCODE, store="offsite")
    for caught in (listing, creating):
        message = str(caught.value)
        assert "Store 'offsite'" in message
        assert "container 'no-such-container' does not exist" in message
        assert "strongroom stores validate offsite" in message


def test_a_wrong_account_key_is_reported_at_once(
    make_store: Callable[..., AzureStore],
    make_engine: Callable[..., Engine],
    fault_proxy: FaultProxy,
) -> None:
    store = make_store(name="offsite", account_key=WRONG_KEY, account_url=fault_proxy.endpoint)
    with pytest.raises(StoreUnavailableError) as caught:
        make_engine(store).list("offsite")
    assert fault_proxy.counts["GET"] == 1  # a 403 is not retried
    message = str(caught.value)
    assert "Store 'offsite'" in message
    assert "refused the credentials (HTTP 403" in message
    assert "account_key" in message
    assert WRONG_KEY not in message


def test_validate_reports_every_failed_probe(make_store: Callable[..., AzureStore]) -> None:
    report = make_store(account_key=WRONG_KEY).validate()
    assert not report.ok
    assert report.checks == dict.fromkeys(["write", "read", "list", "delete"], False)
    assert all("refused the credentials" in error for error in report.errors)


def test_no_credential_for_the_default_azure_credential_says_how_to_get_one(
    make_store: Callable[..., AzureStore],
) -> None:
    store = make_store(name="offsite")
    failure = CredentialUnavailableError("DefaultAzureCredential failed to retrieve a token.")
    with pytest.raises(StoreUnavailableError) as caught, store.translate_errors("manifests/x"):
        raise failure
    assert "Store 'offsite'" in str(caught.value)
    assert "no credential was found" in str(caught.value) and "az login" in str(caught.value)
