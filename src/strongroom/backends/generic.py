"""The generic fsspec backend: any fsspec protocol (`sftp://`, `gcs://`, `memory://`, …) as a store.

It registers as a fallback, so a dedicated backend for a scheme always wins, and it
claims only what every fsspec filesystem gives: no atomic put, no put-if-absent.
Schemes with a dedicated strongroom distribution (s3, az) are left to it, so a missing
plugin is reported with the package to install instead of silently losing guarantees.

It claims `persistent` only for the protocols in PERSISTENT, storage known to keep what
is written for other machines; the rest (`memory://`, read-only `http://`, archives,
caches) open, for tests and tools, but cannot be configured as stores, and the error
says why (NOT_PERSISTENT).
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

from ..config import StoreSpec
from ..errors import ConfigError, UnknownBackendError
from ..plugins import INSTALL_HINTS, BackendRegistry, hookimpl
from ..store import Store, StoreCapabilities
from .file import open_local_store

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

__all__ = ["NOT_PERSISTENT", "PERSISTENT", "FsspecStore", "open_fsspec_store"]

#: Schemes this backend never claims: the built-in filesystem and dedicated plugins.
NOT_CLAIMED = {"file", "local", *INSTALL_HINTS}
#: Protocols of storage that takes writes and keeps them after the writing process ends.
PERSISTENT = frozenset(
    {
        *("sftp", "ssh", "ftp", "smb", "webdav"),
        *("gcs", "gs", "gdrive", "dropbox", "box", "oci", "ocilake", "oss", "tos", "tosfs"),
        *("hdfs", "webhdfs", "arrow_hdfs", "dbfs", "adl", "lakefs"),
    }
)
_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
_READ_ONLY = "is read-only (fsspec cannot write there)"
_WRAPPER = "wraps another filesystem; configure the storage it wraps instead"
#: Why a protocol is not PERSISTENT; one missing here is simply not known to be.
NOT_PERSISTENT = {
    "memory": "keeps objects in this process's memory, so every backup would vanish when "
    "the process exits",
    **dict.fromkeys(("http", "https", "github", "gist", "git", "data", "reference"), _READ_ONLY),
    **dict.fromkeys(("zip", "tar", "libarchive"), "is one archive file, not a place for objects"),
    **dict.fromkeys(
        ("cached", "blockcache", "filecache", "simplecache", "dir", "generic", "async_wrapper"),
        _WRAPPER,
    ),
}


class FsspecStore(Store):
    """A store over any fsspec filesystem, `persistent` when its protocol is known to be."""

    def __init__(self, name: str, url: str, fs: AbstractFileSystem, root: str) -> None:
        super().__init__(name, url, fs, root)
        self.protocol = _protocol_of(url)
        self.capabilities = StoreCapabilities(persistent=self.protocol in PERSISTENT)

    def check_persistent(self) -> None:
        if self.protocol not in PERSISTENT:
            why = NOT_PERSISTENT.get(self.protocol, "is not known to keep what is written")
            raise ConfigError(
                f"Store {self.name!r} ({self.url}) cannot keep backups: {self.protocol}:// "
                f"{why}. Use a directory (file:///...), a cloud store (s3://, az://) or "
                "storage that keeps what is written (sftp://, gcs://, …; see README.md)."
            )


def open_fsspec_store(spec: StoreSpec) -> Store:
    """Open the URL as fsspec does (host, port and user come from the URL), with the
    spec's options as the filesystem's keywords."""
    import fsspec  # here, not at the top: see `_fsspec_claims`
    from fsspec.implementations.local import LocalFileSystem

    protocol = _protocol_of(spec.url)
    try:
        filesystem = fsspec.get_filesystem_class(protocol)
    except ImportError as exc:
        raise UnknownBackendError(f"Store {spec.name!r}: {exc}") from None
    arguments = {**filesystem._get_kwargs_from_urls(spec.url), **spec.options}
    # Checked before the call: a constructor that fails half-way leaves an object whose
    # __del__ may fail too, and Python prints that traceback at exit (fsspec's ftp does).
    required = inspect.signature(filesystem.__init__).parameters.values()
    missing = [p.name for p in required if p.default is p.empty and p.kind in _NAMED]
    missing = [name for name in missing[1:] if name not in arguments]  # [0] is self
    if missing:
        raise ConfigError(
            f"Store {spec.name!r}: {spec.url} gives no {', '.join(missing)}; write it in the "
            f"URL ({protocol}://HOST/PATH) or as --option {missing[0]}=VALUE."
        )
    fs = filesystem(skip_instance_cache=True, **arguments)
    if isinstance(fs, LocalFileSystem):  # another name for file://: never fsspec's local rules
        return open_local_store(spec)
    return FsspecStore(spec.name, spec.url, fs, fs._strip_protocol(spec.url).rstrip("/"))


def _protocol_of(url: str) -> str:
    """The URL's protocol as fsspec names it (what comes before '://', or '')."""
    protocol, separator, _ = url.partition("://")
    return protocol if separator else ""


def _fsspec_claims(scheme: str) -> bool:
    """Whether fsspec knows the protocol. fsspec is imported here, only when a URL no
    dedicated backend handles is opened: importing it (it reads every installed package's
    entry points) took a third of every command's start from a cold cache."""
    import fsspec

    return scheme not in NOT_CLAIMED and scheme in fsspec.available_protocols()


@hookimpl
def strongroom_register_backends(registry: BackendRegistry) -> None:
    # Any fsspec keyword may redirect or authenticate, so none is declared harmless: over
    # the admin API these stores take no options, and options named like secrets are
    # references everywhere.
    registry.add_fallback(
        _fsspec_claims,
        open_fsspec_store,
        takes="fsspec protocols that keep what is written (sftp, gcs, webdav, hdfs, ...) "
        "when their library is installed; not s3 or az (strongroom-s3, strongroom-azure)",
    )
