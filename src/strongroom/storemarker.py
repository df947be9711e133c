"""The store marker: the object that marks a place as a strongroom store.

A place that merely looks empty (a disk not mounted at the mount point that is the
store's directory, a bucket or directory emptied, a URL pointing elsewhere) would
otherwise pass for a store without backups: a listing would show none and the next
create would write where the disk belongs. Adding a store puts `STORE_MARKER_KEY`
there (`stores init` for a store written into config.toml by hand); a store that
carries neither it nor a backup is refused. Marking a place that was a store once is
refused too (knownstores.py): that is the same unmounted disk.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from urllib.parse import urlsplit

from .errors import StoreMissingError, StoreUnavailableError
from .format import CLAIMS_PREFIX, MANIFESTS_PREFIX, STORE_MARKER_KEY
from .store import Store

__all__ = ["lost", "mark", "recognised", "require_marked"]

#: What the store marker holds, for a person who comes across it; strongroom reads only
#: that it is there (it is not authenticated, and need not be: it guards against
#: accidents, and whoever can delete it can delete the backups too).
MARKER_TEXT = (
    b"This is a strongroom backup store: its backups are under manifests/ and data/.\n"
    b"strongroom refuses a store without this object unless it holds backups, so that a\n"
    b"disk that is not mounted is never taken for an empty store. Do not delete it.\n"
)


def mark(store: Store, *, unless_known: bool = False) -> None:
    """Put the store marker unless it is there (`stores init`). With `unless_known`
    (adding a store), a store that holds backups from before markers is left as it is:
    read access is enough to add it (to restore elsewhere), and its next write marks it."""
    if store.exists(STORE_MARKER_KEY) or (unless_known and _holds_backups(store)):
        return
    _put_marker(store)


def recognised(store: Store, *, adopt: bool = False) -> bool:
    """Whether the store carries the store marker or holds a backup. With `adopt` (an
    operation that writes, and may empty the store: create, delete, cleanup), a store
    known only by its backups gets the marker now, so it stays known once emptied.
    StoreMissingError if its place is not there at all."""
    if store.exists(STORE_MARKER_KEY):
        return True
    if not _holds_backups(store):
        return False
    if adopt:
        _put_marker(store)
    return True


def require_marked(
    store: Store, *, adopt: bool = False, known: Callable[[], bool] = lambda: False
) -> None:
    """Refuse a store that is not `recognised`, saying what to do: `known()` tells
    whether this home has known a store there before (knownstores.py), and so whether
    it can be a new store that `stores init` would make."""
    try:
        if recognised(store, adopt=adopt):
            return
    except StoreMissingError as exc:
        raise StoreMissingError(f"{exc} {_remedy(store, known())}") from None
    raise StoreUnavailableError(
        f"Store {store.name!r} ({store.url}) holds no backups and no store marker "
        f"({STORE_MARKER_KEY}), so it is not taken for an empty store: {_likely(store)}. "
        f"{_remedy(store, known())}"
    )


def lost(store: Store, anew: str) -> StoreUnavailableError:
    """The refusal to mark a place this home has known as a store (knownstores.py) that
    has neither its marker nor a backup now; `anew` says how to insist."""
    return StoreUnavailableError(
        f"Store {store.name!r} ({store.url}): this home has known a strongroom store there, "
        f"and it holds neither its store marker nor a backup now: {_likely(store)}. Nothing "
        f"was marked. Only if its backups were deleted on purpose, and {_really_there(store)}, "
        f"{anew} starts it anew."
    )


def _likely(store: Store) -> str:
    """What most likely hides a store's backups, by the kind of place it is."""
    if urlsplit(store.url).scheme == "file":
        return "if its disk or share is not mounted, mount it; if its URL is wrong, correct it"
    return (
        "if its URL, endpoint or account is not the one its backups are in, correct it; if "
        "its bucket or container was emptied, its backups are gone from there"
    )


def _really_there(store: Store) -> str:
    if urlsplit(store.url).scheme == "file":
        return "its disk or share is mounted (check with 'findmnt' or 'df' on its directory)"
    return "its URL and endpoint are the ones its backups were in"


def _remedy(store: Store, known: bool) -> str:
    if known:
        return "This home has known a strongroom store there, so it is not a new store."
    return (
        "Only if it is a new store written into config.toml by hand, that never held "
        "backups here or for any other machine or home sharing it, run "
        f"'strongroom stores init {store.name}'."
    )


def _holds_backups(store: Store) -> bool:
    """Whether the store holds what only strongroom writes: a manifest, or a schedule's
    claim (cleanup keeps each schedule's newest), as a store from before markers does."""
    return bool(store.list(MANIFESTS_PREFIX) or store.list(CLAIMS_PREFIX))


def _put_marker(store: Store) -> None:
    with suppress(FileExistsError):  # another process marked it meanwhile
        store.put(STORE_MARKER_KEY, MARKER_TEXT)
