"""The store marker: the object that marks a place as a strongroom store.

A place that merely looks empty (a disk not mounted at the mount point that is the
store's directory, a bucket or directory emptied, a URL pointing elsewhere) would
otherwise pass for a store without backups: a listing would show none and the next
create would write where the disk belongs. Adding a store puts `STORE_MARKER_KEY`
there (`stores init` for a store written into config.toml by hand); a store that
carries neither it nor a backup is refused.
"""

from __future__ import annotations

from contextlib import suppress

from .errors import StoreUnavailableError
from .format import CLAIMS_PREFIX, MANIFESTS_PREFIX, STORE_MARKER_KEY
from .store import Store

__all__ = ["mark", "require_marked"]

#: What the store marker holds, for a person who comes across it; strongroom reads only
#: that it is there (it is not authenticated, and need not be: it guards against
#: accidents, and whoever can delete it can delete the backups too).
MARKER_TEXT = (
    b"This is a strongroom backup store: its backups are under manifests/ and data/.\n"
    b"strongroom refuses a store without this object unless it holds backups, so that a\n"
    b"disk that is not mounted is never taken for an empty store. Do not delete it.\n"
)

#: How a refusal ends: what to do if the store is new, or was strongroom's before.
_NEW_BY_HAND = (
    "Only if it is a new store written into config.toml by hand, and never held backups, "
    "run 'strongroom stores init {name}'."
)
_WAS_MARKED = (
    "strongroom marked it before (marked = true in config.toml), so it is not a new "
    "store. Only if its backups were deleted by hand and you mean to start it anew, "
    "remove it and add it again ('strongroom stores remove {name}', then "
    "'strongroom stores add {name} URL')."
)


def mark(store: Store, *, unless_known: bool = False) -> None:
    """Put the store marker unless it is there (`stores init`). With `unless_known`
    (adding a store), a store that holds backups from before markers is left as it is:
    read access is enough to add it (to restore elsewhere), and its next write marks it."""
    if store.exists(STORE_MARKER_KEY) or (unless_known and _holds_backups(store)):
        return
    _put_marker(store)


def require_marked(store: Store, *, adopt: bool = False, marked: bool = False) -> None:
    """Refuse a store that carries no store marker and holds no backup. With `adopt`
    (an operation that writes, and may empty the store: create, delete, cleanup), a
    store known only by its backups gets the marker now, so it stays known once emptied.
    `marked`: the configuration says the store was marked (`StoreSpec.marked`), so it
    cannot be a new store, and `stores init` is no remedy."""
    if store.exists(STORE_MARKER_KEY):
        return
    if not _holds_backups(store):
        raise StoreUnavailableError(
            f"Store {store.name!r} ({store.url}) holds no backups and no store marker "
            f"({STORE_MARKER_KEY}), so it is not taken for an empty store: if its disk or "
            "share is not mounted, mount it; if its URL is wrong, correct it. "
            + (_WAS_MARKED if marked else _NEW_BY_HAND).format(name=store.name)
        )
    if adopt:
        _put_marker(store)


def _holds_backups(store: Store) -> bool:
    """Whether the store holds what only strongroom writes: a manifest, or a schedule's
    claim (cleanup keeps each schedule's newest), as a store from before markers does."""
    return bool(store.list(MANIFESTS_PREFIX) or store.list(CLAIMS_PREFIX))


def _put_marker(store: Store) -> None:
    with suppress(FileExistsError):  # another process marked it meanwhile
        store.put(STORE_MARKER_KEY, MARKER_TEXT)
