"""The manifests of `Engine`: a backup's manifest read and parsed (not authenticated: that
needs its passcode, enginerestore.py), and a store's manifests read several at a time."""

from __future__ import annotations

import builtins
from concurrent.futures import ThreadPoolExecutor

from .cleanup import manifest_names
from .enginestores import EngineStores
from .errors import BackupNotFoundError, IntegrityError, NewerFormatError
from .format import MAX_MANIFEST_SIZE, Manifest, manifest_key, validate_name
from .store import Store

__all__ = ["EngineManifests"]


class EngineManifests(EngineStores):
    """Reading manifests, for `Engine`, its only subclass, and its restores."""

    def _open(self, name: str, store: str | None) -> tuple[Store, Manifest]:
        source = self.reachable_store(store)
        return source, self._manifest(source, name)

    def _manifest(self, source: Store, name: str) -> Manifest:
        """The manifest of backup `name` in `source`, read and parsed, not authenticated."""
        validate_name(name)
        try:
            with self.explaining_missing(source):
                data = source.get(manifest_key(name), limit=MAX_MANIFEST_SIZE)
            manifest = Manifest.from_bytes(data)
            if manifest.name != name:
                raise IntegrityError(f"It belongs to {manifest.name!r}.")
        except FileNotFoundError:
            self.recognised_store(source.name)  # not "no backup" where no store is
            raise BackupNotFoundError(
                f"No backup named {name!r} in store {source.name!r}; "
                f"'strongroom list --store {source.name}' shows the backups there."
            ) from None
        except NewerFormatError as exc:
            raise NewerFormatError(
                f"The manifest of backup {name!r} in store {source.name!r} does not read: {exc}"
            ) from None
        except IntegrityError as exc:
            raise IntegrityError(
                f"The manifest of backup {name!r} in store {source.name!r} does not read: "
                f"{exc} Nothing was changed; the backup does not restore until its manifest "
                "is whole again (from the store's versioning or a copy). To delete it: "
                f"'strongroom delete {name} --store {source.name} --unreadable'."
            ) from None
        return manifest

    def _manifests(self, source: Store) -> tuple[builtins.list[Manifest], dict[str, str]]:
        """The store's readable manifests, oldest first, and why any others were unreadable
        (by name)."""
        listed = manifest_names(source)
        manifests, unreadable = self._read_manifests(source, listed.names)
        ordered = sorted(manifests, key=lambda m: (m.created, m.name))
        return ordered, listed.unreadable | unreadable

    def _read_manifests(
        self, source: Store, names: builtins.list[str]
    ) -> tuple[builtins.list[Manifest], dict[str, str]]:
        """The manifests of these backups, read several at a time, and why each unreadable
        one is (by name); a backup deleted meanwhile is in neither."""

        def read(name: str) -> Manifest | str:
            try:
                return self._manifest(source, name)
            except BackupNotFoundError:
                return ""  # deleted since the listing
            except IntegrityError as exc:
                return str(exc)

        with ThreadPoolExecutor(max(1, source.concurrency)) as pool:
            results = list(pool.map(read, names))
        manifests = [r for r in results if isinstance(r, Manifest)]
        unreadable = {n: r for n, r in zip(names, results, strict=True) if isinstance(r, str) and r}
        return manifests, unreadable
