"""The places a home has known as strongroom stores, so that one that has lost its store
marker is never marked again as a new store.

A store marker (storemarker.py) tells a store from an empty place, but marking is what
`stores add` and `stores init` do to an empty place: run on a disk not mounted at its
mount point, they would make the empty directory below it a store again, and the next
backup would land on the root disk. So every place this home has seen marked (added,
initialised, or recognised by any command) is remembered here, and marking a remembered
place that has neither its marker nor a backup any more is refused unless the operator
says it was emptied on purpose (`--anew`).

A place is a store's location (a file store's directory, however spelled; any other
store's URL) and endpoint (a bucket reached through another endpoint is another place),
whatever the store is named: a second name for an unmounted store's directory is
refused too. The list is the home's own file, `known-stores` (one JSON line
a place, 0600), not config.toml: it is written by commands that only read a store, and
a configuration file may be read-only, hand-commented, or shared by replicas of other
versions. A home that cannot write it still works, with the guard only as strong as the
places it remembered; one whose file is there but cannot be read marks nothing without
`--anew`, since nobody can tell then whether a place was a store.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import posixpath
import threading
from collections.abc import Collection
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .config import StoreSpec

__all__ = ["KNOWN_STORES_FILE", "KnownStores", "places"]

logger = logging.getLogger("strongroom")

KNOWN_STORES_FILE = "known-stores"


class KnownStores:
    """The places of `home`'s known-stores file: read whenever asked, appended once a place.

    A store's place is given as the set of its spellings (`places`); a place is known if
    any of them is in the file."""

    def __init__(self, home: Path) -> None:
        self.path = home / KNOWN_STORES_FILE
        self._remembered: set[str] = set()  # by this process (or failed): not again
        self._lock = threading.Lock()

    def knows(self, places: Collection[str]) -> bool:
        """Whether the file holds any of `places`. A file that is there but cannot be read
        is an OSError: then nobody can tell, and a guard must not guess "new"."""
        return not self._read().isdisjoint(places)

    def remember(self, places: Collection[str], name: str) -> None:
        """Add what the file does not hold yet of a store's `places` (`name`: for the log).
        A home that cannot keep them says so once and goes on."""
        with self._lock:
            missing = set(places) - self._remembered
            if not missing:
                return
            self._remembered |= missing
            try:
                for place in sorted(missing - self._read()):
                    self._append(place)
            except OSError as exc:
                logger.warning("Store %r is not remembered in %s: %s", name, self.path, exc)

    def _read(self) -> set[str]:
        try:
            with open(self.path, encoding="utf-8", errors="replace", opener=_no_follow) as file:
                return {line.rstrip("\n") for line in file}
        except FileNotFoundError:
            return set()

    def _append(self, place: str) -> None:
        """One line, in one write to a file opened for appending: whole even if another
        process appends at the same time."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.path, flags, 0o600)
        try:
            line = (place + "\n").encode()
            if os.write(fd, line) != len(line):
                raise OSError(errno.ENOSPC, "the line was written in part")
        finally:
            os.close(fd)


def places(spec: StoreSpec, endpoints: Collection[str]) -> set[str]:
    """Where a store is, as lines: its location, and the values of its `endpoints` options
    (as written: a bucket reached through another endpoint is another place; any other
    option, an API caller's confinement or a secret's variable, is not). A file store's
    location is its directory written plainly (`//`, `.`, `..`, `%xx` and `localhost`
    folded) and as the kernel reaches it now (`realpath`): a link that lives on a disk
    not mounted resolves differently then, and either spelling is the place. Any other
    store's location is its URL without a trailing slash."""
    endpoint = {key: spec.options[key] for key in sorted(endpoints) if key in spec.options}
    parts = urlsplit(spec.url)
    if parts.scheme == "file":
        plain = posixpath.normpath("/" + unquote(parts.path).lstrip("/"))
        locations = {plain, os.path.realpath(plain)}
    else:
        locations = {spec.url.rstrip("/")}
    return {json.dumps([location, endpoint], sort_keys=True) for location in locations}


def _no_follow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)
