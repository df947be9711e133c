"""The public conformance suite against Azurite, and how objects go up."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

from strongroom.testing import StoreConformance
from strongroom_azure.store import AzureStore

if TYPE_CHECKING:
    from conftest import FaultProxy


class TestAzureStore(StoreConformance):
    cleanup_backups = 200  # "a cleanup run over a few hundred backups, half expired"

    @pytest.fixture
    def store(self, make_store: Callable[..., AzureStore]) -> AzureStore:
        return make_store()


#: azure-storage-blob hands aiohttp (>= 3.13) each single-put body as bytes, and aiohttp warns
#: about any body over 1 MiB (Azure/azure-sdk-for-python#39845); it costs one copy.
@pytest.mark.filterwarnings("ignore:Sending a large body directly with raw bytes:ResourceWarning")
def test_the_largest_chunk_goes_up_in_one_put_blob(
    make_store: Callable[..., AzureStore], fault_proxy: FaultProxy
) -> None:
    """Above the SDK's 64 MiB default the SDK would stage blocks; strongroom never lets it."""
    store = make_store(account_url=fault_proxy.endpoint)
    payload = os.urandom(64 * 1024 * 1024 + 17)  # a sealed chunk of the largest chunkSize
    store.put("data/big/id/0000000000", payload)
    puts = [path for method, path in fault_proxy.requests if method == "PUT"]
    assert len(puts) == 1 and "comp=block" not in puts[0]
    assert store.get("data/big/id/0000000000") == payload
