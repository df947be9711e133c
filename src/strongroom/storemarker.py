"""The object that marks a place as a strongroom store.

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
from .format import MANIFESTS_PREFIX, STORE_MARKER_KEY
from .store import Store

__all__ = ["mark", "require_marked"]

#: What the marker holds, for a person who comes across it; strongroom reads only that
#: it is there (it is not authenticated, and need not be: it guards against accidents).
MARKER_TEXT = (
    b"This is a strongroom backup store: its backups are under manifests/ and data/.\n"
    b"strongroom refuses a store without this object unless it holds backups, so that a\n"
    b"disk that is not mounted is never taken for an empty store. Do not delete it.\n"
)


def mark(store: Store) -> None:
    """Put the marker unless it is there: when a store is added, and when the embedded
    store is first used (it is strongroom's own, made whenever it is missing)."""
    if not store.exists(STORE_MARKER_KEY):
        with suppress(FileExistsError):  # another process marked it meanwhile
            store.put(STORE_MARKER_KEY, MARKER_TEXT)


def require_marked(store: Store, *, adopt: bool = False) -> None:
    """Refuse a store that carries no marker and holds no backup. A store that holds
    backups but no marker was made before stores were marked; with `adopt` (a create,
    which writes anyway) it is marked now, so it stays recognised once emptied."""
    if store.exists(STORE_MARKER_KEY):
        return
    if not store.list(MANIFESTS_PREFIX):
        raise StoreUnavailableError(
            f"Store {store.name!r} ({store.url}) does not look like a strongroom store: it "
            f"holds no backups and not the object {STORE_MARKER_KEY!r} that adding a store "
            "puts there. If it lives on a disk or share that is not mounted, mount it; if "
            "its URL is wrong, correct it. If it is a new store written into config.toml "
            "by hand, or one added empty before strongroom marked its stores, run "
            f"'strongroom stores init {store.name}' once."
        )
    if adopt:
        mark(store)
