"""The places a home has known as strongroom stores, so that one that has lost its store
marker is never marked again as a new store.

A store marker (storemarker.py) tells a store from an empty place, but marking is what
`stores add` and `stores init` do to an empty place: run on a disk not mounted at its
mount point, they would make the empty directory below it a store again, and the next
backup would land on the root disk. So every place this home has seen marked (added,
initialised, or recognised by any command) is remembered here, and marking a remembered
place that has neither its marker nor a backup any more is refused unless the operator
says it was emptied on purpose (`--anew`).

A place is a store's URL and options (a bucket reached through another endpoint is
another place), whatever the store is named: a second name for an unmounted store's
directory is refused too. The list is the home's own file, `known-stores` (one JSON line
a place, 0600), not config.toml: it is written by commands that only read a store, and
a configuration file may be read-only, hand-commented, or shared by replicas of other
versions. A home that cannot keep it still works, with the guard only as strong as the
places it remembered.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

from .config import StoreSpec

__all__ = ["KNOWN_STORES_FILE", "KnownStores"]

logger = logging.getLogger("strongroom")

KNOWN_STORES_FILE = "known-stores"


class KnownStores:
    """The places of `home`'s known-stores file: read whenever asked, appended once a place."""

    def __init__(self, home: Path) -> None:
        self._path = home / KNOWN_STORES_FILE
        self._remembered: set[str] = set()  # by this process: no need to read again
        self._lock = threading.Lock()

    def __contains__(self, spec: StoreSpec) -> bool:
        return _place(spec) in self._read()

    def remember(self, spec: StoreSpec) -> None:
        """Add the store's place, unless it is there (another process may have added it)."""
        place = _place(spec)
        with self._lock:
            if place in self._remembered:
                return
            if place not in self._read():
                try:
                    self._append(place)
                except OSError as exc:
                    logger.warning(
                        "Store %r is not remembered in %s: %s", spec.name, self._path, exc
                    )
                    return
            self._remembered.add(place)

    def _read(self) -> set[str]:
        """The places in the file; none if it cannot be read (said in the log: the guard
        is then only as good as the store markers)."""
        try:
            with open(self._path, encoding="utf-8", errors="replace", opener=_no_follow) as file:
                return {line.rstrip("\n") for line in file}
        except FileNotFoundError:
            return set()
        except OSError as exc:
            logger.warning("The known stores in %s cannot be read: %s", self._path, exc)
            return set()

    def _append(self, place: str) -> None:
        """One line, in one write to a file opened for appending: whole even if another
        process appends at the same time."""
        self._path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self._path, flags, 0o600)
        try:
            os.write(fd, (place + "\n").encode())
        finally:
            os.close(fd)


def _place(spec: StoreSpec) -> str:
    """Where a store is, as one line: its URL (without a trailing slash) and options (as
    written: an environment variable's name, never a secret's value)."""
    return json.dumps([spec.url.rstrip("/"), dict(spec.options)], sort_keys=True)


def _no_follow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)
