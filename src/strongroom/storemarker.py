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


def mark(store: Store) -> None:
    """Put the store marker in a store being added that is not known yet. One that holds
    backups from before markers is known by them and left as it is, so read-only
    access is enough to add it (to restore elsewhere); its next write marks it."""
    if _known(store) is None:
        _put_marker(store)


def require_marked(store: Store, *, adopt: bool = False) -> None:
    """Refuse a store that carries no store marker and holds no backup. With `adopt`
    (an operation that writes anyway: create, delete, update, cleanup), a store known
    only by its backups gets the marker now, so it stays known once emptied."""
    known = _known(store)
    if known is None:
        raise StoreUnavailableError(
            f"Store {store.name!r} ({store.url}) does not look like a strongroom store: it "
            f"holds no backups and not the object {STORE_MARKER_KEY!r} that adding a store "
            "puts there. If it lives on a disk or share that is not mounted, mount it; if "
            "its URL is wrong, correct it. If it is a new store written into config.toml "
            "by hand, or one added before strongroom marked its stores and emptied since, "
            f"run 'strongroom stores init {store.name}' once."
        )
    if adopt and not known:
        _put_marker(store)


def _known(store: Store) -> bool | None:
    """True if the store carries the marker; False if it does not but holds what only
    strongroom writes (a manifest, or a schedule's claim, of which cleanup keeps each
    schedule's newest): a store from before markers; None if neither."""
    if store.exists(STORE_MARKER_KEY):
        return True
    if store.list(MANIFESTS_PREFIX) or store.list(CLAIMS_PREFIX):
        return False
    return None


def _put_marker(store: Store) -> None:
    with suppress(FileExistsError):  # another process marked it meanwhile
        store.put(STORE_MARKER_KEY, MARKER_TEXT)
