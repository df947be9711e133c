"""The built-in filesystem backend (`file://` URLs), registered like any third-party plugin.

Writes are durable and atomic: a temporary file is written and fsynced, then linked
into place (`os.link` fails if the name exists, which gives put-if-absent) or renamed
over the old object, and the directory is fsynced.
"""

from __future__ import annotations

import builtins
import os
import secrets
from datetime import datetime
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from fsspec.implementations.local import LocalFileSystem

from ..config import StoreSpec
from ..errors import ConfigError
from ..plugins import BackendRegistry, hookimpl
from ..store import Store, StoreCapabilities

__all__ = ["LocalStore", "open_local_store"]

#: Tries at creating a file whose directory a concurrent delete may prune meanwhile.
ATTEMPTS = 10


class LocalStore(Store):
    """A store in a local (or mounted) directory."""

    capabilities = StoreCapabilities(atomic_put=True, put_if_absent=True, ranged_reads=True)
    concurrency = 2

    def __init__(self, name: str, url: str, directory: Path) -> None:
        super().__init__(name, url, LocalFileSystem(skip_instance_cache=True), str(directory))

    def put(
        self,
        key: str,
        data: bytes | bytearray | memoryview,
        *,
        overwrite: bool = False,
        retain_until: datetime | None = None,
    ) -> None:
        final = Path(self.path(key))
        with self.translate_errors(key):
            temporary = final.parent / f".{final.name}.{secrets.token_hex(8)}.tmp"
            try:
                with _create_in_place(temporary) as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                if overwrite:
                    os.replace(temporary, final)
                else:
                    os.link(temporary, final)  # raises FileExistsError: the put-if-absent
            finally:
                temporary.unlink(missing_ok=True)
            _fsync_dir(final.parent)

    def delete(self, keys: builtins.list[str]) -> None:
        """Delete the objects, then the directories they leave empty (up to the root)."""
        super().delete(keys)
        for directory in sorted({Path(self.path(key)).parent for key in keys}, reverse=True):
            self._prune(directory)

    def delete_prefix(self, prefix: str) -> None:
        super().delete_prefix(prefix)
        self._prune(Path(self.path(prefix)))

    def _prune(self, directory: Path) -> None:
        root = Path(self.root)
        while directory != root and directory.is_relative_to(root):
            try:
                directory.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                break  # not empty: someone else's objects live here
            directory = directory.parent

    def get(self, key: str) -> bytes:
        with self.translate_errors(key), open(self.path(key), "rb") as handle:
            return handle.read()


def open_local_store(spec: StoreSpec) -> LocalStore:
    parts = urlsplit(spec.url)
    if parts.netloc not in ("", "localhost") or not parts.path:
        raise ConfigError(
            f"Store {spec.name!r}: {spec.url!r} is not a local directory URL; "
            "write it as file:///absolute/path."
        )
    if spec.options:
        raise ConfigError(
            f"Store {spec.name!r}: the filesystem backend takes no options "
            f"(got {', '.join(sorted(spec.options))})."
        )
    return LocalStore(spec.name, spec.url, Path(unquote(parts.path)))


@hookimpl
def strongroom_register_backends(registry: BackendRegistry) -> None:
    registry.add("file", open_local_store)


def _create_in_place(path: Path) -> BinaryIO:
    """Open a new file, making its directories; a concurrent delete may prune an empty
    directory between the two, so that is tried again."""
    attempt = 1
    while True:
        try:
            _make_dirs(path.parent)
            return open(path, "xb")
        except FileNotFoundError:
            if attempt == ATTEMPTS:
                raise
            attempt += 1


def _make_dirs(directory: Path) -> None:
    """Create missing directories, fsyncing each parent so the new entries survive a crash."""
    missing = []
    while not directory.is_dir():
        missing.append(directory)
        directory = directory.parent
    for new in reversed(missing):
        try:
            new.mkdir()
        except FileExistsError:
            continue  # a concurrent writer made it
        _fsync_dir(new.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
