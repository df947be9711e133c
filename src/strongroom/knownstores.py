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
store's URL) and the options that say where it is (`places`), whatever the store is
named: a second name for an unmounted store's directory is refused too. The list is the
home's own file, `known-stores` (one JSON line a spelling, 0600), not config.toml:
it is written by commands that only read a store, and a configuration file may be
read-only, hand-commented, or shared by replicas of other versions. A home that cannot
write it still works, with the guard only as strong as the places it remembered; one
whose file is there but cannot be read marks nothing without `--anew`, since nobody can
tell then whether a place was a store.
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
from urllib.parse import unquote, urlsplit, urlunsplit

from .config import StoreSpec
from .plugins import BackendOptions

__all__ = ["KNOWN_STORES_FILE", "KnownStores", "places"]

logger = logging.getLogger("strongroom")

KNOWN_STORES_FILE = "known-stores"


class KnownStores:
    """The places of `home`'s known-stores file: read whenever asked, appended once a place.

    A store's place is given as the set of its spellings (`places`); a place is known if
    any of them is in the file."""

    def __init__(self, home: Path) -> None:
        self.path = home / KNOWN_STORES_FILE
        self._remembered: set[str] = set()  # by this process: not again
        self._warned: set[str] = set()  # could not be remembered, said so
        self._lock = threading.Lock()

    def knows(self, places: Collection[str]) -> bool:
        """Whether the file holds any of `places`. A file that is there but cannot be read
        is an OSError: then nobody can tell, and a guard must not guess "new"."""
        return not self._read().isdisjoint(places)

    def remember(self, places: Collection[str], name: str) -> None:
        """Add what the file does not hold yet of a store's `places` (`name`: for the log).
        A home that cannot keep them says so once a place, goes on, and tries again."""
        with self._lock:
            missing = set(places) - self._remembered
            if not missing:
                return
            try:
                for place in sorted(missing - self._read()):
                    self._append(place)
            except OSError as exc:
                if not missing <= self._warned:
                    logger.warning("Store %r is not remembered in %s: %s", name, self.path, exc)
                    self._warned |= missing
                return
            self._remembered |= missing

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
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.path, flags, 0o600)
        try:
            size = os.fstat(fd).st_size
            cut = size > 0 and os.pread(fd, 1, size - 1) != b"\n"  # a write cut short
            line = ("\n" if cut else "") + place + "\n"
            if os.write(fd, line.encode()) != len(line.encode()):
                raise OSError(errno.ENOSPC, "the line was written in part")
        finally:
            os.close(fd)


def places(spec: StoreSpec, declared: BackendOptions | None) -> set[str]:
    """Where a store is, as lines: its location, and the options that say where it is.

    A file store's location is its directory written plainly (`//`, `.`, `..`, `%xx` and
    `localhost` folded) and as the kernel reaches it now (`realpath`, of the URL's path
    and of the plain one: a link that lives on a disk not mounted resolves differently
    then); any spelling is the place, and its one option (`confine_to`) says only where
    it is opened from. Any other store's location is its URL (scheme and host in lower
    case, no trailing slash), and the options are the endpoints its backend `declared`
    (a bucket reached through another endpoint is another place), or, if it declared
    none, every option not secret (a host, a port).
    """
    parts = urlsplit(spec.url)
    if parts.scheme == "file":
        path = unquote(parts.path)
        plain = posixpath.normpath("/" + path.lstrip("/"))
        locations = {plain, os.path.realpath(plain), os.path.realpath(path or "/")}
        where: dict[str, object] = {}
    else:
        declared = declared or BackendOptions()
        path = parts.path.rstrip("/")
        locations = {
            urlunsplit((parts.scheme.lower(), parts.netloc.lower(), path, parts.query, ""))
        }
        keys = declared.endpoints or [k for k in spec.options if not declared.is_secret(k)]
        where = {key: spec.options[key] for key in sorted(keys) if key in spec.options}
    return {json.dumps([location, where], sort_keys=True) for location in locations}


def _no_follow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)
