"""Engine: create (in enginecreate.py), restore, verify and ls (in enginerestore.py), list,
info, delete, retention updates and cleanup; create, restore, verify, delete and cleanup
also as background jobs (`submit_*`, in enginejobs.py).

The engine joins the pieces: stores from the configuration and plugins (opened in
enginestores.py), keys from the passcode, the archive stream through the chunk
pipeline, and the manifest as the commit. Data flows one way (see README.md):

    create:  sources → tar stream → ChunkWriter (chunk, zstd, seal, put) → manifest
             (keys from a write key, or from the passcode through one made on the fly)
    restore: manifest → passcode → ChunkReader (get, open, unzstd) → tar → staging → target

What a cleanup lists, deletes and sweeps is in cleanup.py; the restore target and its
staging directory are in restoretarget.py.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path

import pluggy

from .backupinfo import BackupInfo, Listing
from .cleanup import (
    Cleanup,
    data_keys,
    delete_backups,
    delete_resurrected,
    index_of,
)
from .config import StoresConfig
from .crypto import KdfParams
from .enginecreate import EngineCreate
from .enginejobs import EngineJobs
from .enginerestore import EngineRestore
from .enginestores import EngineStores
from .errors import (
    BackupNotFoundError,
    ConfigError,
    IntegrityError,
    NewerFormatError,
    ObjectLockedError,
    StrongroomError,
)
from .format import (
    Manifest,
    chunk_key,
    data_prefix,
    is_chunk,
    manifest_key,
    retention_key,
    utc_now,
)
from .jobs import DEFAULT_WORKERS, JOBS_FILE
from .pipeline import DEFAULT_CHUNK_SIZE
from .retention import CleanupReport, check_retention_date, parse_moment
from .store import Store

__all__ = ["Engine"]

logger = logging.getLogger("strongroom")


class Engine(EngineCreate, EngineRestore, EngineJobs):
    """The entry point of the Python API; stateless apart from the stores it has opened
    and its background jobs.

    Everything an Engine keeps lives in its `home`: the configuration file, the embedded
    store, the job table, and (for the admin API) the token file and the restores. Two
    Engines with different homes in one process share nothing, so each tenant of a host
    product gets its own; the default home is $STRONGROOM_HOME. The job table may live
    elsewhere instead: `jobs_db` (default $STRONGROOM_JOBS_DB) is a job-database URL,
    `postgresql://user@host:port/db` for replicas that share their jobs (see jobstore).
    Engines sharing one job database see only the jobs of their own `jobs_namespace`
    (default $STRONGROOM_JOBS_NAMESPACE, else the path of the configuration file, so
    replicas sharing a configuration share their jobs, and tenants do not; the home's
    own job table, which no other home uses, keeps the empty namespace of older jobs).
    `job_workers` jobs run at once (default 2), each on a thread of its own.
    Its stores (`store`, `reachable_store`, `recognised_store`, `add_store`, `init_store`,
    `validate_store`, `use_config`) are in `EngineStores` (enginestores.py), the base class
    of its create (`create`, in `EngineCreate`, enginecreate.py) and of its manifests'
    reading (`EngineManifests`, enginemanifests.py), on which its restore, verify and ls
    build (`EngineRestore`, enginerestore.py); the jobs (`jobs`, `submit_*`,
    `schedule_cleanup`, `close`) in `EngineJobs` (enginejobs.py).
    """

    def __init__(
        self,
        config: StoresConfig | None = None,
        *,
        home: str | os.PathLike[str] | None = None,
        stores: Iterable[Store] = (),
        plugin_manager: pluggy.PluginManager | None = None,
        kdf: KdfParams | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        clock: Callable[[], datetime] = utc_now,
        leftover_grace: timedelta = timedelta(hours=24),
        jobs_db: str | None = None,
        jobs_namespace: str | None = None,
        job_workers: int = DEFAULT_WORKERS,
    ) -> None:
        if config is None:
            config = StoresConfig.load(home=None if home is None else Path(home))
        EngineStores.__init__(
            self,
            config,
            home=Path(home) if home is not None else config.home,
            stores=stores,
            plugin_manager=plugin_manager,
        )
        #: Where the jobs are kept: a URL (see jobstore), by default SQLite in the home.
        shared_db = jobs_db or os.environ.get("STRONGROOM_JOBS_DB")
        self.jobs_db: str | os.PathLike[str] = shared_db or self.home / JOBS_FILE
        #: Whose jobs these are in a job database several deployments share.
        self.jobs_namespace = (
            jobs_namespace
            or os.environ.get("STRONGROOM_JOBS_NAMESPACE")
            or (str(self.config.path.resolve()) if shared_db else "")
        )
        self._kdf = kdf or KdfParams()
        if not self._kdf.within_bounds:
            raise ConfigError(
                f"{self._kdf} is outside what any reader accepts (1 to 16 lanes and iterations, "
                "8 KiB per lane to 256 MiB of memory, memory times iterations up to 1 GiB): "
                "a backup made with it could never be restored."
            )
        self._chunk_size = chunk_size
        self._clock = clock
        self._leftover_grace = leftover_grace
        #: A running create refreshes its marker this often, well inside the grace period.
        self._heartbeat = min(timedelta(hours=1), leftover_grace / 4)
        EngineJobs.__init__(self, job_workers)

    @property
    def kdf(self) -> KdfParams:
        """The Argon2id cost every create pays (the benchmark times it)."""
        return self._kdf

    @property
    def chunk_size(self) -> int:
        """The plaintext size of every chunk a create writes (the benchmark's unit)."""
        return self._chunk_size

    # -- listing and metadata --------------------------------------------------------

    def list(self, store: str | None = None) -> list[BackupInfo]:
        """Every committed backup in the store whose manifest reads, oldest first; each
        that does not is logged as a warning (`listing` returns them)."""
        listing = self.listing(store)
        for problem in listing.unreadable.values():
            logger.warning("Not listed: %s", problem)
        return listing.backups

    def listing(self, store: str | None = None) -> Listing:
        """Every committed backup in the store, oldest first, and why any manifest did not
        read."""
        source = self.reachable_store(store)
        with self.explaining_missing(source):
            manifests, unreadable = self._manifests(source)
        if not manifests and not unreadable:
            self.recognised_store(source.name)  # an unmounted disk lists nothing too
        return Listing([BackupInfo.from_manifest(m, source.name) for m in manifests], unreadable)

    def info(self, name: str, store: str | None = None) -> BackupInfo:
        source, manifest = self._open(name, store)
        return BackupInfo.from_manifest(manifest, source.name)

    def update_retention(
        self, name: str, retention_date: int | str | datetime | None, store: str | None = None
    ) -> BackupInfo:
        """Set a new retentionDate (None, -1 or "never": keep it until it is deleted); needs
        no passcode (it is outside the manifest's MAC).

        In a store that locks backups the date can only move later, and the locks of the
        data move with it before the manifest says so.
        """
        moment = check_retention_date(retention_date, self._clock())
        source, manifest = self._open(name, store)
        locked_until = _locked_until(source, manifest)
        if locked_until is not None and (moment is None or moment < locked_until):
            raise ObjectLockedError(
                f"Backup {name!r} in store {source.name!r} is locked ({source.lock_mode} mode) "
                f"until {locked_until:%Y-%m-%d %H:%M:%S} UTC, its retentionDate; there a "
                "retentionDate can only be extended to a later date, not brought forward or "
                "cleared."
            )
        updated = manifest.with_retention(moment)
        entry = retention_key(name, manifest.backup_id, moment)
        source.put(entry, b"", overwrite=True)  # the index may say more than the manifest,
        chunks = [key for key in data_keys(source, manifest) if is_chunk(key, manifest)]
        try:
            if len(chunks) < manifest.chunk_count:  # reported like a chunk deleted meanwhile
                raise FileNotFoundError(data_prefix(name, manifest.backup_id))
            if moment is not None:  # (a store with locks never gets None: refused above)
                source.extend_retention(chunks, moment)  # and so may the locks,
        except FileNotFoundError:
            source.delete([entry])
            if since := self._changed_since(source, manifest, "updated"):
                raise BackupNotFoundError(
                    f"Backup {name!r} in store {source.name!r} {since}; its retentionDate was "
                    "not changed."
                ) from None
            raise IntegrityError(
                f"Backup {name!r} in store {source.name!r} is missing data objects (deleted "
                "meanwhile, or damaged); its retentionDate was not changed."
            ) from None
        source.put(
            manifest_key(name), updated.to_bytes(), overwrite=True, retain_until=moment
        )  # never less
        if not source.exists(chunk_key(name, manifest.backup_id, 0)):  # a delete won the race
            delete_resurrected(source, [manifest])
            source.delete([entry])
            raise BackupNotFoundError(
                f"Backup {name!r} in store {source.name!r} was deleted while its retentionDate "
                "was being updated."
            )
        source.delete([e.key for e in index_of(source, manifest) if e.key != entry])
        self._index_as_it_says(source, manifest)
        return BackupInfo.from_manifest(updated, source.name)

    def _index_as_it_says(self, source: Store, manifest: Manifest) -> None:
        """Put the index entry of the retentionDate the manifest says now: two updates at
        once each removed the other's entry as an old one, and left the backup with none,
        which no cleanup would ever find expired."""
        try:
            now = self._manifest(source, manifest.name)
        except StrongroomError:  # deleted or unreadable meanwhile: nothing to index
            return
        if now.backup_id == manifest.backup_id:
            source.put(
                retention_key(now.name, now.backup_id, now.retention_date), b"", overwrite=True
            )

    def delete(self, name: str, store: str | None = None, *, unreadable: bool = False) -> None:
        """Delete a backup: the manifest first (so it is gone at once), then its data.

        A backup that its store still locks is refused before anything is touched.
        `unreadable` deletes a backup whose manifest is damaged, which nothing else
        deletes (`_delete_unreadable`).
        """
        self.recognised_store(store, adopt=True)  # it may be the last backup there
        if unreadable:
            self._delete_unreadable(name, store)
            return
        source, manifest = self._open(name, store)
        locked_until = _locked_until(source, manifest)
        if locked_until is not None and locked_until > self._clock():
            raise ObjectLockedError(
                f"Backup {name!r} in store {source.name!r} is locked ({source.lock_mode} mode) "
                f"until {locked_until:%Y-%m-%d %H:%M:%S} UTC, its retentionDate; nobody can "
                "delete it before then. Cleanup deletes it once that date has passed."
            )
        failures = delete_backups(source, [manifest], index_of(source, manifest))
        if name in failures:
            raise failures[name]

    def _delete_unreadable(self, name: str, store: str | None) -> None:
        """Delete the manifest of backup `name`, unread, if it is damaged; one that reads,
        one a newer strongroom wrote, or one in a store that locks backups (whose lock the
        manifest would tell) is refused. Without it, what the backup left (data, index
        entries) is a delete cut off, which the next cleanup sweeps (once its index entry
        is older than the grace period)."""
        source = self.reachable_store(store)
        if source.lock_mode is not None:
            raise ConfigError(
                f"Store {source.name!r} locks backups ({source.lock_mode} mode), and a "
                f"manifest that does not read cannot say until when backup {name!r} is "
                "locked, so strongroom does not delete it; the store's own tools can, once "
                "its lock has passed."
            )
        try:
            self._manifest(source, name)
        except NewerFormatError:
            raise ConfigError(
                f"Backup {name!r} in store {source.name!r} was written by a newer strongroom; "
                "upgrade strongroom to read or delete it (--unreadable deletes only a damaged "
                "manifest)."
            ) from None
        except IntegrityError:
            source.delete([manifest_key(name)])
            return
        raise ConfigError(
            f"Backup {name!r} in store {source.name!r} reads; delete it without --unreadable."
        )

    def cleanup(
        self,
        stores: Iterable[str] | None = None,
        *,
        as_of: int | datetime | None = None,
        dry_run: bool = False,
    ) -> CleanupReport:
        """Delete the backups whose retentionDate has passed, in the named or all stores."""
        moment = parse_moment(as_of, "as_of") if as_of is not None else self._clock()
        every_store = sorted({*self.config.stores, *self._stores})
        cleanup = Cleanup(
            open_store=partial(self.recognised_store, adopt=not dry_run),
            read_manifests=self._read_manifests,
            defined_schedules=self._defined_schedules,
            leftover_grace=self._leftover_grace,
        )
        report = cleanup.run(stores if stores is not None else every_store, moment, dry_run)
        logger.info("Cleanup %s", report.summary())
        return report


def _locked_until(store: Store, manifest: Manifest) -> datetime | None:
    """Until when the store's object lock keeps the backup (None: it does not lock it)."""
    return manifest.retention_date if store.lock_mode else None
