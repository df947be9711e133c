"""The az:// store: adlfs over an Azure client built with strongroom's settings.

adlfs builds its own service client with the SDK's default retries (first retry after
about 18 s) and no way to pass a retry policy or the single-put size, so the filesystem
here is adlfs with `do_connect` handing it the client from `AzureOptions.connect`. Puts,
gets and existence checks go through adlfs; listing goes to the SDK directly, because
adlfs's `find` reports a missing container as an empty one.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from typing import Any, cast

from adlfs import AzureBlobFileSystem  # type: ignore[import-untyped]
from azure.core.async_paging import AsyncPageIterator
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    IncompleteReadError,
    ServiceResponseError,
)
from azure.storage.blob import BlobProperties
from azure.storage.blob.aio import BlobServiceClient
from fsspec.asyn import sync

from strongroom import (
    ObjectInfo,
    Store,
    StoreCapabilities,
    StoreError,
    StoreSpec,
    StoreUnavailableError,
)

from ._options import AzureOptions

__all__ = ["AzureStore", "open_azure_store"]


class AzureStore(Store):
    """Blobs in one container, under an optional prefix.

    Azure creates a blob only when its single Put Blob request completes, and
    `If-None-Match: *` makes that request fail with 409 if the blob exists, so both
    atomic put and put-if-absent are real. Object lock is not offered: per-blob
    immutability policies need version-level immutability on the account or container,
    and Azurite implements none, so the claim could not be tested.
    """

    capabilities = StoreCapabilities(
        atomic_put=True, put_if_absent=True, object_lock=False, persistent=True
    )

    def __init__(self, name: str, url: str, fs: AzureBlobFileSystem, options: AzureOptions) -> None:
        super().__init__(name, url, fs, f"{options.container}/{options.prefix}")
        self.container = options.container
        self.concurrency = options.concurrency
        self._retries = options.retry_total
        self._blob_prefix = f"{options.prefix}/" if options.prefix else ""

    def put(
        self,
        key: str,
        data: bytes | bytearray | memoryview,
        *,
        overwrite: bool = False,
        retain_until: datetime | None = None,
    ) -> None:
        """Write the blob in one request; without `overwrite`, only if no blob has the name.

        A request whose answer is lost is sent again (aiohttp repeats a PUT on a dropped
        keep-alive connection, then the SDK's retries), and the repeat finds the blob its
        first try created: a conflicting blob holding exactly these bytes is that one.
        """
        payload = bytes(data)  # the SDK sends bytes in one request; other buffers it iterates
        path = self.path(key)
        with self.translate_errors(key):
            try:
                self.fs.pipe_file(path, payload, overwrite=overwrite)
            except FileExistsError:
                if not self.holds(key, payload):
                    raise

    def list(self, prefix: str) -> builtins.list[ObjectInfo]:
        """One listing request per 5000 blobs; a missing container is an error, not empty."""
        with self.translate_errors(prefix):
            blobs = sync(self.fs.loop, self._list_blobs, self._blob_prefix + prefix)
        start = len(self._blob_prefix)
        objects = [ObjectInfo(b.name[start:], b.size, b.last_modified) for b in blobs]
        return sorted(objects, key=lambda obj: obj.key)

    def delete(self, keys: builtins.list[str]) -> None:
        """Delete `concurrency` blobs at a time (a backup has one blob per 4 MiB)."""
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="strongroom-delete") as pool:
            for _ in pool.map(lambda key: Store.delete(self, [key]), keys):
                pass

    @contextmanager
    def translate_errors(self, key: str) -> Iterator[None]:
        """Turn the SDK's errors, which are not OSErrors, into StoreUnavailableError."""
        try:
            yield
        except StoreError:
            raise
        except (FileNotFoundError, FileExistsError) as exc:
            # adlfs reports a missing container as a missing blob.
            if getattr(exc.__cause__, "error_code", None) == "ContainerNotFound":
                raise self._unavailable(key, self._no_container()) from exc
            raise
        except HttpResponseError as exc:
            raise self._unavailable(key, self._explain(exc)) from exc
        except (AzureError, OSError) as exc:
            raise self._unavailable(
                key,
                f"{_first_line(exc)} (retry_total={self._retries}). Check account_url and "
                "that the storage service is reachable from here.",
            ) from exc

    async def _list_blobs(self, name_prefix: str) -> builtins.list[BlobProperties]:
        """Every blob under the prefix, page by page. A page whose next marker was given
        before would list forever: the store is unavailable (as the S3 store's listing)."""
        client: BlobServiceClient = self.fs.service_client
        blobs: builtins.list[BlobProperties] = []
        markers: set[str] = set()
        async with client.get_container_client(self.container) as container:
            listing = container.list_blobs(name_starts_with=name_prefix).by_page()
            pages = cast("AsyncPageIterator[BlobProperties]", listing)
            async for page in pages:
                blobs.extend([blob async for blob in page if blob.name.startswith(name_prefix)])
                marker = pages.continuation_token
                if marker in markers:
                    raise StoreUnavailableError(
                        f"Store {self.name!r} ({self.url}): the server's listing of "
                        f"{name_prefix!r} does not end (a page without a new continuation "
                        "marker). Check account_url: it should name the blob service."
                    )
                if marker:
                    markers.add(marker)
        return blobs

    def _explain(self, exc: HttpResponseError) -> str:
        code = getattr(exc, "error_code", None)
        status = f"HTTP {exc.status_code} {getattr(code, 'value', code) or ''}".strip()
        if code == "ContainerNotFound":
            return self._no_container()
        if exc.status_code is None and isinstance(exc, ClientAuthenticationError):
            return (
                f"no credential was found ({_first_line(exc)}). Without account_key, sas_token "
                "or connection_string, DefaultAzureCredential needs a managed or workload "
                "identity, AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET, or 'az login'."
            )
        if exc.status_code is None and _broke_off(exc):
            return (
                f"the connection broke before Azure's answer was read whole ({_first_line(exc)}; "
                f"retry_total={self._retries}). Check that the storage service is reachable "
                "from here, and try again."
            )
        if exc.status_code in (401, 403):
            return (
                f"the storage account {self._account()!r} refused the credentials "
                f"({status}: {_first_line(exc)}). Check account_name and the account_key, "
                "sas_token or connection_string option (a SAS token must allow read, write, "
                "delete and list, and be unexpired); without a secret, the identity needs the "
                "Storage Blob Data Contributor role."
            )
        if exc.status_code is None:  # too many redirects, an answer that does not parse
            return f"no usable answer came ({_first_line(exc)}). Check account_url."
        retried = f" (retry_total={self._retries})" if (exc.status_code or 0) >= 500 else ""
        return f"Azure answered {status}{retried}: {_first_line(exc)}."

    def _no_container(self) -> str:
        return (
            f"the container {self.container!r} does not exist in the storage account "
            f"{self._account()!r}. Create it (az storage container create --name "
            f"{self.container}) or correct the store's URL."
        )

    def _account(self) -> str:
        return str(self.fs.service_client.account_name)

    def _unavailable(self, key: str, reason: str) -> StoreUnavailableError:
        return StoreUnavailableError(
            f"Store {self.name!r} ({self.url}) failed on {key!r}: {reason} "
            f"Then run 'strongroom stores validate {self.name}'."
        )


class _ClientFileSystem(AzureBlobFileSystem):  # type: ignore[misc]
    """adlfs over a service client made elsewhere (adlfs's own takes no retry settings)."""

    def __init__(self, client: BlobServiceClient, **kwargs: Any) -> None:
        self._client = client
        super().__init__(**kwargs)

    def do_connect(self) -> None:
        self.service_client = self._client


def open_azure_store(spec: StoreSpec) -> AzureStore:
    """The store factory: check the URL and options, then build the client (no request yet)."""
    options = AzureOptions.from_spec(spec)
    client, credential = options.connect()
    fs = _ClientFileSystem(
        client,
        # Give adlfs the credential to close, and keep it from building one of its own from
        # AZURE_STORAGE_* variables: anon stops DefaultAzureCredential, a credential or
        # connection string stops the service principal.
        credential=credential,
        connection_string=options.connection_string,
        anon=True,
        use_listings_cache=False,  # other writers change the container; never trust a listing
        skip_instance_cache=True,
    )
    return AzureStore(spec.name, spec.url, fs, options)


def _broke_off(exc: BaseException) -> bool:
    """Whether the error, or one it wraps, is a connection that broke mid-answer: an answer
    cut short, a reset, a read that timed out."""
    broken = (IncompleteReadError, ServiceResponseError, ConnectionError, TimeoutError)
    for _ in range(8):  # a chain of wrappers, never a cycle
        if isinstance(exc, broken):
            return True
        inner = getattr(exc, "inner_exception", None) or exc.__cause__
        if not isinstance(inner, BaseException):
            return False
        exc = inner
    return False


def _first_line(exc: BaseException) -> str:
    """The SDK's message without the request id, time and XML body that follow it."""
    message = str(getattr(exc, "message", None) or exc)
    return message.strip().splitlines()[0] if message.strip() else type(exc).__name__
