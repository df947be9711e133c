"""The generic fsspec backend: any fsspec protocol (`memory://`, `gcs://`, `sftp://`, …) as a store.

It registers as a fallback, so a dedicated backend for a scheme always wins, and it
claims only what every fsspec filesystem gives: no atomic put, no put-if-absent.
Schemes with a dedicated strongroom distribution (s3, az) are left to it, so a missing
plugin is reported with the package to install instead of silently losing guarantees.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ..config import StoreSpec
from ..errors import UnknownBackendError
from ..plugins import INSTALL_HINTS, BackendOptions, BackendRegistry, hookimpl
from ..store import Store
from .file import open_local_store

__all__ = ["open_fsspec_store"]

#: Schemes this backend never claims: the built-in filesystem and dedicated plugins.
NOT_CLAIMED = {"file", "local", *INSTALL_HINTS}


def open_fsspec_store(spec: StoreSpec) -> Store:
    protocol = urlsplit(spec.url).scheme.lower()
    try:
        fs = fsspec.filesystem(protocol, skip_instance_cache=True, **spec.options)
    except ImportError as exc:
        raise UnknownBackendError(f"Store {spec.name!r}: {exc}") from None
    if isinstance(fs, LocalFileSystem):  # another name for file://: never fsspec's local rules
        return open_local_store(spec)
    root = fs._strip_protocol(spec.url).rstrip("/")
    return Store(spec.name, spec.url, fs, root)


@hookimpl
def strongroom_register_backends(registry: BackendRegistry) -> None:
    for protocol in fsspec.available_protocols():
        if protocol not in NOT_CLAIMED:
            # Any fsspec keyword may redirect or authenticate, so none is declared harmless:
            # over the admin API these stores take no options, and options named like
            # secrets are references everywhere.
            registry.add(protocol, open_fsspec_store, options=BackendOptions(), fallback=True)
