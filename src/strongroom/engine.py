"""Engine: create, restore, verify, list, info, delete, retention updates and cleanup;
create, restore, delete and cleanup also as background jobs (`submit_*`, see jobs.py).

The engine joins the pieces: stores from the configuration and plugins, keys from
the passcode, the archive stream through the chunk pipeline, and the manifest as
the commit. Data flows one way (see README.md):

    create:  sources → tar stream → ChunkWriter (chunk, zstd, seal, put) → manifest
             (keys from a write key, or from the passcode through one made on the fly)
    restore: manifest → passcode → ChunkReader (get, open, unzstd) → tar → staging → target
"""

from __future__ import annotations

import builtins
import logging
import os
import shutil
import stat
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pluggy

from .archive import (
    ArchiveEntry,
    StreamSource,
    check_archive,
    check_sources,
    extract_archive,
    list_archive,
    normalize_archive_path,
    source_size,
    write_archive,
)
from .config import StoresConfig
from .crypto import BackupKeys, KdfParams, Passcode, StreamCipher, new_file_key
from .errors import (
    BackupExistsError,
    BackupNotFoundError,
    ConfigError,
    IntegrityError,
    JobError,
    ObjectLockedError,
    StoreError,
    StrongroomError,
)
from .format import (
    CLAIMS_PREFIX,
    MANIFESTS_PREFIX,
    PENDING_PREFIX,
    RETENTION_PREFIX,
    KeySlot,
    Manifest,
    chunk_key,
    data_prefix,
    from_epoch_ms,
    manifest_key,
    name_from_manifest_key,
    parse_claim_key,
    parse_pending_key,
    parse_retention_key,
    pending_key,
    retention_key,
    to_epoch_ms,
    utc_now,
    validate_name,
)
from .jobs import JOBS_FILE, Job, JobHandle, JobManager
from .keys import WriteKey, open_backup
from .pipeline import DEFAULT_CHUNK_SIZE, ChunkReader, ChunkWriter, Progress
from .plugins import BackendRegistry, build_registry, get_plugin_manager
from .retention import (
    Action,
    Claim,
    CleanupEntry,
    CleanupReport,
    IndexEntry,
    PendingMarker,
    check_retention_date,
    parse_epoch_ms,
    retention_ms,
    select_candidates,
    select_claims_to_sweep,
    select_expired,
    select_leftovers,
    select_orphans,
)
from .store import ObjectInfo, Store

__all__ = ["BackupInfo", "Engine"]

logger = logging.getLogger("strongroom")

#: Up to this many deleted backups are checked for a racing update one request each;
#: more take one listing of the manifests.
LISTING_THRESHOLD = 8
#: Cleanup deletes the keys of several backups in one call once they add up to this many
#: (one S3 DeleteObjects request).
DELETE_BATCH = 1000


@dataclass(frozen=True, slots=True)
class BackupInfo:
    """What anyone may know about a committed backup, without its passcode."""

    name: str
    store: str
    description: str
    created: datetime
    retention_date: datetime | None
    source_size: int
    stored_size: int
    chunk_count: int
    backup_id: str
    #: Made by a schedule, not by a person.
    scheduled: bool = False

    @classmethod
    def from_manifest(cls, manifest: Manifest, store: str) -> BackupInfo:
        return cls(
            name=manifest.name,
            store=store,
            description=manifest.description,
            created=manifest.created,
            retention_date=manifest.retention_date,
            source_size=manifest.source_size,
            stored_size=manifest.stored_size,
            chunk_count=manifest.chunk_count,
            backup_id=manifest.backup_id,
            scheduled=manifest.scheduled,
        )

    def to_dict(self) -> dict[str, Any]:
        """The admin API's field names; the CLI's --json output uses the same."""
        return {
            "name": self.name,
            "description": self.description,
            "backupStore": self.store,
            "completeTime": to_epoch_ms(self.created),
            "retentionDate": retention_ms(self.retention_date),
            "backupType": "FULL",
            "scheduleType": "SCHEDULED" if self.scheduled else "MANUAL",
            "status": "COMPLETED",
            "sourceSize": self.source_size,
            "storedSize": self.stored_size,
            "backupId": self.backup_id,
        }


class Engine:
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
        compress: bool = True,
        clock: Callable[[], datetime] = utc_now,
        leftover_grace: timedelta = timedelta(hours=24),
        jobs_db: str | None = None,
        jobs_namespace: str | None = None,
    ) -> None:
        if config is None:
            config = StoresConfig.load(home=None if home is None else Path(home))
        self.config = config
        self.home = Path(home) if home is not None else config.home
        #: Where the jobs are kept: a URL (see jobstore), by default SQLite in the home.
        shared_db = jobs_db or os.environ.get("STRONGROOM_JOBS_DB")
        self.jobs_db: str | os.PathLike[str] = shared_db or self.home / JOBS_FILE
        #: Whose jobs these are in a job database several deployments share.
        self.jobs_namespace = (
            jobs_namespace
            or os.environ.get("STRONGROOM_JOBS_NAMESPACE")
            or (str(self.config.path.resolve()) if shared_db else "")
        )
        self.plugin_manager = plugin_manager or get_plugin_manager()
        self._registry = build_registry(self.plugin_manager)
        self._kdf = kdf or KdfParams()
        if not self._kdf.within_bounds:
            raise ConfigError(
                f"{self._kdf} is outside what any reader accepts (1 to 16 lanes and iterations, "
                "8 KiB per lane to 256 MiB of memory, memory times iterations up to 1 GiB): "
                "a backup made with it could never be restored."
            )
        self._chunk_size = chunk_size
        self._compress = compress
        self._clock = clock
        self._leftover_grace = leftover_grace
        #: A running create refreshes its marker this often, well inside the grace period.
        self._heartbeat = min(timedelta(hours=1), leftover_grace / 4)
        self._stores: dict[str, Store] = {store.name: store for store in stores}
        self._job_manager: JobManager | None = None
        self._job_manager_lock = threading.Lock()
        self._closed = False

    @property
    def kdf(self) -> KdfParams:
        """The Argon2id cost every create pays (the benchmark times it)."""
        return self._kdf

    @property
    def chunk_size(self) -> int:
        """The plaintext size of every chunk a create writes (the benchmark's unit)."""
        return self._chunk_size

    @property
    def registry(self) -> BackendRegistry:
        """The backends stores are opened with (the admin API reads their declarations)."""
        return self._registry

    def store(self, name: str | None = None) -> Store:
        """The store called `name` (default: the configured default store), opened once.

        Stores handed to the constructor come first: a host product (or a backend's
        conformance tests) can use a store it built itself, with no configuration.
        """
        if name in self._stores:
            return self._stores[name]
        spec = self.config.get(name)
        if spec.name not in self._stores:
            self._stores[spec.name] = self._registry.open(spec)
        return self._stores[spec.name]

    # -- create ----------------------------------------------------------------------

    def create(
        self,
        name: str,
        sources: Sequence[str | os.PathLike[str]] = (),
        *,
        passcode: str | Passcode | None = None,
        write_key: WriteKey | None = None,
        streams: Mapping[str, StreamSource] | None = None,
        store: str | None = None,
        description: str = "",
        retention_date: int | str | datetime | None = None,
        progress: Progress | None = None,
        on_stage: Callable[[str], None] | None = None,
        scheduled: bool = False,
    ) -> BackupInfo:
        """Back up files, directories and named streams as the backup `name`.

        Takes exactly one of `passcode` and `write_key`; either way the backup restores
        with the passcode. A write key has had its Argon2id run when it was derived, and
        cannot open what it writes. Everything is checked before anything is written.
        Data objects go first and the manifest last; if anything fails, what was written
        is removed again and no backup of that name appears. `on_stage` hears each step
        as it starts (validating, writing, deriving the key, committing: Argon2id runs
        beside the writing, and its stage is what is left of it); what it raises stops
        the create uncommitted. `scheduled`: a schedule makes it (scheduleType).
        """
        stage = on_stage or _ignore
        paths = [Path(source) for source in sources]
        streams = dict(streams or {})
        stage("validating")
        credential, retention, target = self._check_create(
            name, paths, streams, passcode, write_key, store, description, retention_date
        )

        backup_id = uuid.uuid4().hex
        file_key = new_file_key()
        draft = Manifest(
            name=name,
            backup_id=backup_id,
            description=description,
            created=from_epoch_ms(to_epoch_ms(self._clock())),  # as stored: whole ms
            chunk_size=self._chunk_size,
            chunk_count=0,
            source_size=0,
            stored_size=0,
            compression="zstd" if self._compress else "none",
            key_slot=KeySlot(self._kdf, b"", b""),  # wrapped at the commit
            retention_date=retention,
            scheduled=scheduled,
        )
        keys = BackupKeys.from_file_key(file_key)
        writer = ChunkWriter(
            target,
            lambda index: chunk_key(name, backup_id, index),
            StreamCipher(keys.chunk_key, draft.stream_binding()),
            chunk_size=self._chunk_size,
            compress=self._compress,
            retain_until=retention,
            # streams have no size beforehand: then the total is unknown, not too small
            on_write=_counter(progress, source_size(paths) if progress and not streams else None),
        )
        marker = pending_key(name, backup_id)
        index = retention_key(name, backup_id, retention)
        # Chunks are sealed under the random file key; the passcode's key is needed only
        # to wrap it at the commit, so its Argon2id runs beside the writing.
        with (
            _Heartbeat(target, marker, self._heartbeat),
            _KeyDerivation(credential, self._kdf) as derivation,
        ):
            try:
                stage("writing")
                left_out = write_archive(writer, paths, streams)
                stats = writer.finish()
                stage("deriving the key")
                write_key = derivation.result()
                manifest = replace(
                    draft,
                    created=from_epoch_ms(to_epoch_ms(self._clock())),  # as stored: whole ms
                    chunk_count=stats.chunk_count,
                    source_size=stats.source_size,
                    stored_size=stats.stored_size,
                    key_slot=write_key.wrap(file_key, draft),
                )
                manifest = write_key.sign(manifest, keys)
                stage("committing")
                target.put(index, b"", overwrite=True)  # before the commit: never missing
                _commit(target, manifest)
            except BaseException:
                writer.abort()
                _remove_quietly(target, name, data_prefix(name, backup_id), index, marker)
                raise
        _remove_quietly(target, name, marker)  # committed: a stale marker is harmless
        for what in left_out:
            logger.warning("Left out of backup %r: %s", name, what)
        return BackupInfo.from_manifest(manifest, target.name)

    def _check_create(
        self,
        name: str,
        paths: Sequence[Path],
        streams: Mapping[str, StreamSource],
        passcode: str | Passcode | None,
        write_key: WriteKey | None,
        store: str | None,
        description: str,
        retention_date: int | str | datetime | None,
    ) -> tuple[Passcode | WriteKey, datetime | None, Store]:
        """Everything create checks before it writes a byte; the target store last."""
        validate_name(name)
        if (passcode is None) == (write_key is None):
            raise ConfigError(
                "A create takes exactly one of a passcode and a write key "
                f"(given: {'both' if passcode is not None else 'neither'})."
            )
        credential = Passcode(passcode) if passcode is not None else _check_write_key(write_key)
        check_sources(paths, streams)
        retention = check_retention_date(retention_date, self._clock())
        if not isinstance(description, str):
            raise ConfigError("The description must be text.")
        target = self.store(store)
        for risk in target.capabilities.create_risks():
            logger.warning("Store %r: %s.", target.name, risk)
        if target.exists(manifest_key(name)):
            raise _exists(name, target)
        return credential, retention, target

    # -- restore and verify ----------------------------------------------------------

    def restore(
        self,
        name: str,
        target: str | os.PathLike[str],
        *,
        passcode: str | Passcode,
        store: str | None = None,
        paths: Sequence[str] = (),
        progress: Progress | None = None,
        backup_id: str | None = None,
        on_stage: Callable[[str], None] | None = None,
    ) -> Path:
        """Restore the backup (or only `paths` in it) into `target`, all or nothing.

        `target` must not exist or be an empty directory. Everything is extracted into
        a staging directory beside it and moved into place only after the whole
        backup has been read and authenticated. `backup_id` pins the backup expected
        under that name (see `_open_authenticated`). `on_stage` hears each step as it
        starts (authenticating, reading, moving into place); what it raises stops the
        restore with nothing left behind.
        """
        stage = on_stage or _ignore
        stage("authenticating")
        destination = _check_restore_target(Path(target))
        selected = [normalize_archive_path(path) for path in paths]
        source, manifest, cipher = self._open_authenticated(name, store, passcode, backup_id)
        created_parents = _make_parents(destination.parent)
        staging = Path(
            tempfile.mkdtemp(prefix=f".{destination.name}.strongroom-", dir=destination.parent)
        )
        try:
            stage("reading")
            with self._reader(source, manifest, cipher, progress) as reader:
                found = extract_archive(reader, staging, selected)
                reader.drain()
            missing = sorted(set(selected) - found)
            if missing:
                raise ConfigError(
                    f"Not in backup {name!r}: {', '.join(missing)}. Nothing was restored."
                )
            stage("moving into place")
            _move_into_place(staging, destination)
        except BaseException:
            _remove_staging(staging)
            for parent in reversed(created_parents):
                with suppress(OSError):
                    parent.rmdir()
            raise
        return destination

    def verify(
        self,
        name: str,
        *,
        passcode: str | Passcode,
        store: str | None = None,
        backup_id: str | None = None,
        progress: Progress | None = None,
    ) -> BackupInfo:
        """Read and authenticate every byte of the backup, and check every member by the
        rules restore applies (so what verifies restores); write nothing."""
        source, manifest, cipher = self._open_authenticated(name, store, passcode, backup_id)
        unexpected = sum(not _is_chunk(key, manifest) for key in _data_keys(source, manifest))
        if unexpected:
            raise IntegrityError(
                f"Backup {name!r} has {unexpected} unexpected object(s) in its data; "
                "something other than strongroom wrote there."
            )
        with self._reader(source, manifest, cipher, progress) as reader:
            check_archive(reader)
            reader.drain()
        return BackupInfo.from_manifest(manifest, source.name)

    def ls(
        self,
        name: str,
        paths: Sequence[str] = (),
        *,
        passcode: str | Passcode,
        store: str | None = None,
        backup_id: str | None = None,
    ) -> Iterator[ArchiveEntry]:
        """The entries of the backup (or only those under `paths`) as restore would make
        them, read as they come; writes nothing. The passcode is checked at once."""
        selected = [normalize_archive_path(path) for path in paths]
        source, manifest, cipher = self._open_authenticated(name, store, passcode, backup_id)

        def entries() -> Iterator[ArchiveEntry]:
            with self._reader(source, manifest, cipher, None) as reader:
                yield from list_archive(reader, selected)
                reader.drain()

        return entries()

    # -- listing and metadata --------------------------------------------------------

    def list(self, store: str | None = None) -> list[BackupInfo]:
        """Every committed backup in the store, oldest first."""
        source = self.store(store)
        manifests, problems = self._manifests(source)
        for problem in problems:
            logger.warning("Not listed: %s", problem)
        return [BackupInfo.from_manifest(m, source.name) for m in manifests]

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
        chunks = [key for key in _data_keys(source, manifest) if _is_chunk(key, manifest)]
        try:
            if len(chunks) < manifest.chunk_count:  # reported like a chunk deleted meanwhile
                raise FileNotFoundError(data_prefix(name, manifest.backup_id))
            if moment is not None:  # (a store with locks never gets None: refused above)
                source.extend_retention(chunks, moment)  # and so may the locks,
        except FileNotFoundError:
            source.delete([entry])
            raise IntegrityError(
                f"Backup {name!r} in store {source.name!r} is missing data objects (deleted "
                "meanwhile, or damaged); its retentionDate was not changed."
            ) from None
        source.put(
            manifest_key(name), updated.to_bytes(), overwrite=True, retain_until=moment
        )  # never less
        if not source.exists(chunk_key(name, manifest.backup_id, 0)):  # a delete won the race
            _delete_resurrected(source, [manifest])
            source.delete([entry])
            raise BackupNotFoundError(
                f"Backup {name!r} in store {source.name!r} was deleted while its retentionDate "
                "was being updated."
            )
        source.delete([e.key for e in _index_of(source, manifest) if e.key != entry])
        return BackupInfo.from_manifest(updated, source.name)

    def delete(self, name: str, store: str | None = None) -> None:
        """Delete a backup: the manifest first (so it is gone at once), then its data.

        A backup that its store still locks is refused before anything is touched.
        """
        source, manifest = self._open(name, store)
        locked_until = _locked_until(source, manifest)
        if locked_until is not None and locked_until > self._clock():
            raise ObjectLockedError(
                f"Backup {name!r} in store {source.name!r} is locked ({source.lock_mode} mode) "
                f"until {locked_until:%Y-%m-%d %H:%M:%S} UTC, its retentionDate; nobody can "
                "delete it before then. Cleanup deletes it once that date has passed."
            )
        failures = _delete_backups(source, [manifest], _index_of(source, manifest))
        if name in failures:
            raise failures[name]

    def cleanup(
        self,
        stores: Iterable[str] | None = None,
        *,
        as_of: int | datetime | None = None,
        dry_run: bool = False,
    ) -> CleanupReport:
        """Delete the backups whose retentionDate has passed, in the named or all stores."""
        moment = _as_datetime(as_of) if as_of is not None else self._clock()
        report = CleanupReport(as_of=moment, dry_run=dry_run)
        every_store = sorted({*self.config.stores, *self._stores})
        for store_name in stores if stores is not None else every_store:
            try:
                source = self.store(store_name)
                listing = _Listing.of(source)
            except StrongroomError as exc:  # one unreachable store must not stop the others
                report.errors.append(str(exc))
                continue
            report.errors.extend(listing.skipped)
            expired, problems = self._confirm_expired(source, listing, moment)
            report.errors.extend(problems)
            report.kept += len(listing.names) - len(expired)
            report.entries.extend(self._expire(source, expired, listing.index, dry_run))
            try:
                report.entries.extend(self._sweep(source, listing, dry_run))
                report.entries.extend(self._sweep_claims(source, dry_run))
            except StrongroomError as exc:
                report.errors.append(str(exc))
        logger.info("Cleanup %s", report.summary())
        return report

    def _confirm_expired(
        self, source: Store, listing: _Listing, moment: datetime
    ) -> tuple[builtins.list[Manifest], builtins.list[str]]:
        """The expired backups: candidates come from the index (listing only), the verdict
        from each candidate's manifest, which stays the truth (read several at a time)."""
        candidates = dict(select_candidates(listing.index, listing.names, moment))
        manifests, problems = self._read_manifests(source, sorted(candidates))
        confirmed = [m for m in manifests if candidates[m.name] == m.backup_id]
        return select_expired(confirmed, moment), problems

    def _expire(
        self,
        source: Store,
        manifests: builtins.list[Manifest],
        index: builtins.list[IndexEntry],
        dry_run: bool,
    ) -> builtins.list[CleanupEntry]:
        if dry_run:
            return [
                CleanupEntry(source.name, m.name, m.retention_date, "would delete")
                for m in manifests
            ]
        failures = _delete_backups(source, manifests, index)
        return [
            CleanupEntry(source.name, m.name, m.retention_date, *_outcome(failures.get(m.name)))
            for m in manifests
        ]

    def _sweep(
        self, source: Store, listing: _Listing, dry_run: bool
    ) -> builtins.list[CleanupEntry]:
        """Remove what interrupted creates and deletes left behind, once past the grace period.

        A create cut off leaves its pending marker; a delete cut off leaves index entries
        without a manifest. Ages come from the store's own timestamps (against a fresh
        probe object), never from this machine's clock.
        """
        writing = {(m.name, m.backup_id) for m in listing.markers}
        ambiguous = _ambiguous(listing)
        suspects = [e for e in listing.index if e.name not in listing.names or e.name in ambiguous]
        if not listing.markers and not suspects:
            return []
        store_now = source.now()
        if store_now is None:
            return []
        names = {m.name for m in listing.markers} | ambiguous
        committed = {m.name: m.backup_id for m in self._read_manifests(source, sorted(names))[0]}
        leftovers, stale = select_leftovers(
            listing.markers, committed, store_now, self._leftover_grace
        )
        orphans = select_orphans(suspects, committed, writing, store_now, self._leftover_grace)
        backups = {(m.name, m.backup_id): "an unfinished create" for m in leftovers}
        backups.update({(e.name, e.backup_id): "a delete that was cut off" for e in orphans})
        keys = _keys_by_backup(listing.index)
        entries, swept = [], set()
        for (name, backup_id), what in sorted(backups.items()):
            action: Action = "would sweep" if dry_run else "swept"
            message = f"data of {what} (backupId {backup_id})"
            if not dry_run:
                try:
                    source.delete_prefix(data_prefix(name, backup_id))
                    source.delete(keys.get((name, backup_id), []))
                    swept.add((name, backup_id))
                except ObjectLockedError as exc:  # kept, with its marker, for a later run
                    action, message = "locked", str(exc)
                except StoreError as exc:  # such as a link in its data; reported every run
                    action, message = "failed", str(exc)
            entries.append(CleanupEntry(source.name, name, None, action, message))
        if not dry_run:
            source.delete(
                [m.key for m in leftovers if (m.name, m.backup_id) in swept]
                + [m.key for m in stale]
            )
        return entries

    def _sweep_claims(self, source: Store, dry_run: bool) -> builtins.list[CleanupEntry]:
        """Remove the schedules' slot claims (scheduler.py) once past the grace period,
        the latest of each schedule the configuration file defines excepted; ages by the
        store's clock, as in `_sweep`."""
        claims = [
            Claim(obj.key, *parsed, obj.modified)
            for obj in source.list(CLAIMS_PREFIX)
            if (parsed := parse_claim_key(obj.key))
        ]
        store_now = source.now() if claims else None
        if store_now is None:
            return []
        defined = StoresConfig.load(self.config.path, home=self.home).schedules  # as now
        old = select_claims_to_sweep(claims, store_now, self._leftover_grace, defined)
        if not dry_run:
            source.delete([claim.key for claim in old])
        action: Action = "would sweep" if dry_run else "swept"
        return [
            CleanupEntry(
                source.name,
                c.schedule,
                None,
                action,
                f"claim of slot {c.slot:%Y-%m-%d %H:%M:%S} UTC",
            )
            for c in old
        ]

    # -- internals -------------------------------------------------------------------

    def _open(self, name: str, store: str | None) -> tuple[Store, Manifest]:
        validate_name(name)
        source = self.store(store)
        try:
            data = source.get(manifest_key(name))
        except FileNotFoundError:
            raise BackupNotFoundError(
                f"No backup named {name!r} in store {source.name!r}; "
                f"'strongroom list --store {source.name}' shows the backups there."
            ) from None
        manifest = Manifest.from_bytes(data)
        if manifest.name != name:
            raise IntegrityError(f"The manifest stored as {name!r} belongs to {manifest.name!r}.")
        return source, manifest

    def _manifests(self, source: Store) -> tuple[builtins.list[Manifest], builtins.list[str]]:
        """The store's readable manifests, oldest first, and why any others were unreadable."""
        names = [
            n for obj in source.list(MANIFESTS_PREFIX) if (n := name_from_manifest_key(obj.key))
        ]
        manifests, problems = self._read_manifests(source, names)
        return sorted(manifests, key=lambda m: (m.created, m.name)), problems

    def _read_manifests(
        self, source: Store, names: builtins.list[str]
    ) -> tuple[builtins.list[Manifest], builtins.list[str]]:
        """The manifests of these backups, read several at a time; a backup deleted
        meanwhile is left out, an unreadable one is described in the problems."""

        def read(name: str) -> Manifest | str:
            try:
                return self._open(name, source.name)[1]
            except BackupNotFoundError:
                return ""  # deleted since the listing
            except IntegrityError as exc:
                return f"backup {name!r} in store {source.name!r}: {exc}"

        with ThreadPoolExecutor(max(1, source.concurrency)) as pool:
            results = list(pool.map(read, names))
        manifests = [r for r in results if isinstance(r, Manifest)]
        problems = [r for r in results if isinstance(r, str) and r]
        return manifests, problems

    def _open_authenticated(
        self, name: str, store: str | None, passcode: str | Passcode, backup_id: str | None
    ) -> tuple[Store, Manifest, StreamCipher]:
        """The backup's manifest, its passcode and MAC checked, and its chunk cipher.

        Someone who can write to the store can put an older genuine backup back under the
        name (nothing inside a store can tell); a caller that knows which backup it expects
        pins its `backup_id` (shown by `info`), and anything else is an IntegrityError.
        """
        source, manifest = self._open(name, store)
        keys = open_backup(manifest, passcode)
        if backup_id is not None and backup_id != manifest.backup_id:
            raise IntegrityError(
                f"Backup {name!r} in store {source.name!r} is now {manifest.backup_id}, not the "
                f"pinned {backup_id}: the name was reused, or someone who can write to the "
                "store put another (older) backup in its place."
            )
        return source, manifest, StreamCipher(keys.chunk_key, manifest.stream_binding())

    def _reader(
        self, source: Store, manifest: Manifest, cipher: StreamCipher, progress: Progress | None
    ) -> ChunkReader:
        return ChunkReader(
            source,
            lambda index: chunk_key(manifest.name, manifest.backup_id, index),
            cipher,
            chunk_count=manifest.chunk_count,
            chunk_size=manifest.chunk_size,
            on_read=_counter(progress, manifest.source_size),
        )

    # -- configuration changes and background jobs -------------------------------------

    def use_config(self, config: StoresConfig) -> None:
        """Switch to a changed stores configuration; stores whose spec changed reopen."""
        for name, spec in self.config.stores.items():
            if config.stores.get(name) != spec:
                self._stores.pop(name, None)
        self.config = config

    @property
    def jobs(self) -> JobManager:
        """The background jobs, kept in `jobs_db`; started on first use. An Engine
        dropped without `close` has them closed when it is collected."""
        with self._job_manager_lock:
            if self._closed:
                raise JobError("This Engine is closed; make a new one to run jobs.")
            if self._job_manager is None:
                manager = JobManager(self.jobs_db, clock=self._clock, namespace=self.jobs_namespace)
                self._close_jobs = weakref.finalize(self, manager.close)
                self._job_manager = manager
            return self._job_manager

    def submit_backup(
        self,
        name: str,
        sources: Sequence[str | os.PathLike[str]] = (),
        *,
        passcode: str | Passcode | None = None,
        write_key: WriteKey | None = None,
        streams: Mapping[str, StreamSource] | None = None,
        store: str | None = None,
        description: str = "",
        retention_date: int | str | datetime | None = None,
        operation_uri: str | None = None,
        timeout: timedelta | None = None,
        scheduled: bool = False,
    ) -> Job:
        """`create` as a background job, with a passcode or a write key. The request is
        checked first, so a bad one fails here and never becomes a job; the passcode or
        key lives only in the job's closure. A create still running `timeout` after it
        started is cancelled and reads FAILED."""
        paths = [Path(source) for source in sources]
        streams = dict(streams or {})
        credential, _, target = self._check_create(
            name, paths, streams, passcode, write_key, store, description, retention_date
        )
        secret = credential if isinstance(credential, Passcode) else None
        key = credential if isinstance(credential, WriteKey) else None

        def work(job: JobHandle) -> dict[str, Any]:
            info = self.create(
                name,
                paths,
                passcode=secret,
                write_key=key,
                streams=streams,
                store=target.name,
                description=description,
                retention_date=retention_date,
                progress=job.progress,
                on_stage=job.stage,
                scheduled=scheduled,
            )
            return info.to_dict()

        return self.jobs.submit(
            "create",
            work,
            store=target.name,
            name=name,
            operation_uri=operation_uri,
            timeout=timeout,
            scheduled=scheduled,
        )

    def submit_restore(
        self,
        name: str,
        target: str | os.PathLike[str],
        *,
        passcode: str | Passcode,
        store: str | None = None,
        paths: Sequence[str] = (),
        operation_uri: str | None = None,
    ) -> Job:
        """`restore` as a background job, after the checks that need no passcode work."""
        secret = Passcode(passcode)
        _check_restore_target(Path(target))
        for path in paths:
            normalize_archive_path(path)
        source, _ = self._open(name, store)

        def work(job: JobHandle) -> dict[str, Any]:
            restored = self.restore(
                name,
                target,
                passcode=secret,
                store=source.name,
                paths=paths,
                progress=job.progress,
                on_stage=job.stage,
            )
            return {"name": name, "backupStore": source.name, "restoreDir": str(restored)}

        return self.jobs.submit(
            "restore", work, store=source.name, name=name, operation_uri=operation_uri
        )

    def submit_verify(
        self,
        name: str,
        *,
        passcode: str | Passcode,
        store: str | None = None,
        operation_uri: str | None = None,
    ) -> Job:
        """`verify` as a background job (it reads the whole backup); an unknown backup
        fails here."""
        secret = Passcode(passcode)
        source, _ = self._open(name, store)

        def work(job: JobHandle) -> dict[str, Any]:
            job.stage("verifying")
            info = self.verify(name, passcode=secret, store=source.name, progress=job.progress)
            return info.to_dict()

        return self.jobs.submit(
            "verify", work, store=source.name, name=name, operation_uri=operation_uri
        )

    def submit_delete(
        self, name: str, store: str | None = None, *, operation_uri: str | None = None
    ) -> Job:
        """`delete` as a background job; an unknown backup fails here."""
        source, _ = self._open(name, store)

        def work(job: JobHandle) -> dict[str, Any]:
            job.stage("deleting")
            self.delete(name, source.name)
            return {"name": name, "backupStore": source.name}

        return self.jobs.submit(
            "delete", work, store=source.name, name=name, operation_uri=operation_uri
        )

    def submit_cleanup(
        self,
        stores: Iterable[str] | None = None,
        *,
        as_of: int | datetime | None = None,
        dry_run: bool = False,
        operation_uri: str | None = None,
        scheduled: bool = False,
    ) -> Job:
        """`cleanup` as a background job; unknown store names fail here. `scheduled`: the
        cleanup system task submits it, not a person."""
        names = None if stores is None else [self.store(store).name for store in stores]
        moment = _as_datetime(as_of) if as_of is not None else None

        def work(job: JobHandle) -> dict[str, Any]:
            job.stage("cleaning up")
            return self.cleanup(names, as_of=moment, dry_run=dry_run).to_dict()

        return self.jobs.submit("cleanup", work, operation_uri=operation_uri, scheduled=scheduled)

    def schedule_cleanup(self, interval: timedelta) -> threading.Event:
        """The cleanup system task: a cleanup job in every `interval` (counted in slots
        from the epoch), the first at once. Engines sharing the job store (replicas)
        each claim the slot, and those that do not get it skip: one run per interval
        among them all, and none at once if another already ran in this interval.

        Set the returned event to stop it. Each run is an ordinary job, so its result
        (what was deleted, swept and kept, and why) can be read back by job id.
        """
        stop = threading.Event()
        seconds = interval.total_seconds()

        def loop() -> None:
            while True:  # at least once, even if stopped at once
                slot = int(time.time() // seconds)
                try:
                    if self.jobs.claim_periodic(f"cleanup every {seconds:g} s", slot):
                        self.submit_cleanup(scheduled=True)
                except StrongroomError as exc:  # e.g. the job table is unavailable: try later
                    logger.warning("Could not start the scheduled cleanup: %s", exc)
                except Exception:  # a raw database error or a bug: log it, and keep the task
                    logger.exception("The scheduled cleanup failed to start; it tries again later")
                if stop.wait((slot + 1) * seconds - time.time()):
                    return

        threading.Thread(target=loop, name="strongroom-cleanup-schedule", daemon=True).start()
        return stop

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Cancel this engine's background jobs, if it ever started any, and wait for
        them (at most `jobs.CLOSE_TIMEOUT`: a job stuck past that is recorded FAILED).
        Final: jobs cannot be submitted afterwards."""
        with self._job_manager_lock:
            self._closed = True
            if self._job_manager is not None:
                self._close_jobs()
                self._job_manager = None


class _KeyDerivation:
    """A create's write key: a given one, or a fresh one derived from the passcode in a
    thread of its own (Argon2id releases the GIL), joined when the key is needed."""

    def __init__(self, credential: Passcode | WriteKey, kdf: KdfParams) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="strongroom-kdf")
        self._key = (
            self._pool.submit(WriteKey.derive, credential, kdf)  # a fresh salt, as every create
            if isinstance(credential, Passcode)
            else self._pool.submit(lambda: credential)
        )

    def __enter__(self) -> _KeyDerivation:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._pool.shutdown(wait=True)  # a create that failed waits the Argon2id out

    def result(self) -> WriteKey:
        return self._key.result()


class _Heartbeat:
    """Puts a pending marker and refreshes it while a create runs, so however slow the
    create is, a sweep never mistakes it for a leftover."""

    def __init__(self, store: Store, key: str, interval: timedelta) -> None:
        self._store, self._key, self._interval = store, key, interval.total_seconds()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="strongroom-heartbeat", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._store.put(self._key, b"", overwrite=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._store.put(self._key, b"", overwrite=True)
            except Exception:  # the create itself reports a store that went away
                logger.warning("Could not refresh %s", self._key)


@dataclass(frozen=True, slots=True)
class _Listing:
    """What a cleanup lists of a store, in this order: the markers first, so a create
    running meanwhile is seen as writing whenever its index entry is seen at all."""

    markers: builtins.list[PendingMarker]
    names: set[str]
    index: builtins.list[IndexEntry]
    #: What the store skipped as not being objects (a planted link), one sentence each.
    skipped: tuple[str, ...]

    @classmethod
    def of(cls, store: Store) -> _Listing:
        pending = store.scan(PENDING_PREFIX)
        manifests = store.scan(MANIFESTS_PREFIX)
        retention = store.scan(RETENTION_PREFIX)
        markers = [
            PendingMarker(obj.key, *parsed, obj.modified)
            for obj in pending.objects
            if (parsed := parse_pending_key(obj.key))
        ]
        names = {n for o in manifests.objects if (n := name_from_manifest_key(o.key))}
        skipped = pending.skipped + manifests.skipped + retention.skipped
        return cls(markers, names, _parse_index(retention.objects), skipped)


def _data_keys(store: Store, manifest: Manifest) -> builtins.list[str]:
    """The keys of a backup's data objects as the store lists them: what is there, never a
    list as long as a (perhaps tampered, not yet authenticated) chunkCount says."""
    listing = store.scan(data_prefix(manifest.name, manifest.backup_id))
    if listing.skipped:  # a planted link: what lies behind it was not deleted or read
        raise StoreError(" ".join(listing.skipped))
    return [obj.key for obj in listing.objects]


def _is_chunk(key: str, manifest: Manifest) -> bool:
    """Whether a listed data key is one of the backup's chunks, 0 to chunkCount - 1."""
    prefix = data_prefix(manifest.name, manifest.backup_id)
    index = key[len(prefix) :]  # 10 decimal digits, as chunk_key writes them
    return (
        key.startswith(prefix)
        and len(index) == 10
        and index.isascii()
        and index.isdigit()
        and int(index) < manifest.chunk_count
    )


def _locked_until(store: Store, manifest: Manifest) -> datetime | None:
    """Until when the store's object lock keeps the backup (None: it does not lock it)."""
    return manifest.retention_date if store.lock_mode else None


def _ambiguous(listing: _Listing) -> set[str]:
    """Names whose index holds several backups: which one is committed takes a manifest read."""
    ids: dict[str, set[str]] = {}
    for entry in listing.index:
        ids.setdefault(entry.name, set()).add(entry.backup_id)
    return {name for name, found in ids.items() if len(found) > 1 and name in listing.names}


def _index_entries(store: Store, prefix: str) -> builtins.list[IndexEntry]:
    return _parse_index(store.list(prefix))


def _parse_index(objects: Iterable[ObjectInfo]) -> builtins.list[IndexEntry]:
    return [
        IndexEntry(obj.key, *parsed, obj.modified)
        for obj in objects
        if (parsed := parse_retention_key(obj.key))
    ]


def _keys_by_backup(index: builtins.list[IndexEntry]) -> dict[tuple[str, str], builtins.list[str]]:
    keys: dict[tuple[str, str], builtins.list[str]] = {}
    for entry in index:
        keys.setdefault((entry.name, entry.backup_id), []).append(entry.key)
    return keys


def _index_of(store: Store, manifest: Manifest) -> builtins.list[IndexEntry]:
    """The index entries of one backup (normally one; two after a cut-off update)."""
    entries = _index_entries(store, f"{RETENTION_PREFIX}{manifest.name}/")
    return [e for e in entries if e.backup_id == manifest.backup_id]


def _delete_backups(
    store: Store, manifests: builtins.list[Manifest], index: builtins.list[IndexEntry]
) -> dict[str, Exception]:
    """Delete backups in three batched steps: every manifest (the backups are gone at once),
    then their data, then their index entries, each step only for the backups the steps
    before removed in full. Returns why the others were not (by name).

    A delete cut off halfway leaves index entries without a manifest, which the sweep
    finishes. The data objects are those listed under each backup's data prefix, never as
    many as an unauthenticated chunkCount says. Batching lets a backend delete up to 1,000
    keys in one request.
    """
    entries = _keys_by_backup(index)
    steps: builtins.list[Callable[[Manifest], builtins.list[str]]] = [
        lambda m: [manifest_key(m.name)],
        lambda m: _data_keys(store, m),
        lambda m: entries.get((m.name, m.backup_id), []),
    ]
    failures: dict[str, Exception] = {}
    remaining = manifests
    for keys_of in steps:
        try:
            for batch in _batches(remaining, keys_of):
                store.delete(batch)
        except Exception:  # deletes are idempotent: one by one, to tell which backups failed
            for manifest in remaining:
                try:
                    store.delete(keys_of(manifest))
                except Exception as exc:  # reported; a later run (or the sweep) finishes
                    failures[manifest.name] = exc
        remaining = [m for m in remaining if m.name not in failures]
    try:
        _delete_resurrected(store, remaining)
    except Exception as exc:  # reported like any failed step
        failures.update((m.name, exc) for m in remaining)
    return failures


def _batches(
    manifests: builtins.list[Manifest], keys_of: Callable[[Manifest], builtins.list[str]]
) -> Iterator[builtins.list[str]]:
    """The backups' keys, gathered until a batch holds DELETE_BATCH or more.

    A backup's keys are never split between batches: a store that locks objects lists
    the versions of each folder it deletes from, and should list a backup's data once.
    """
    batch: builtins.list[str] = []
    for manifest in manifests:
        batch.extend(keys_of(manifest))
        if len(batch) >= DELETE_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _delete_resurrected(store: Store, deleted: builtins.list[Manifest]) -> None:
    """Delete again the manifests a racing retention update wrote back.

    An update that read a manifest before the delete may write it back after; its data
    is gone, so it would be listed and could not be restored. A new backup of the same
    name (another backupId) is left alone. Few backups are checked one by one, many by
    one listing.
    """
    if len(deleted) <= LISTING_THRESHOLD:
        back = [m for m in deleted if store.exists(manifest_key(m.name))]
    else:
        listed = {n for o in store.list(MANIFESTS_PREFIX) if (n := name_from_manifest_key(o.key))}
        back = [m for m in deleted if m.name in listed]
    for manifest in back:
        try:
            current = Manifest.from_bytes(store.get(manifest_key(manifest.name)))
        except (FileNotFoundError, IntegrityError):
            continue
        if current.backup_id == manifest.backup_id:
            store.delete([manifest_key(manifest.name)])


def _outcome(failure: Exception | None) -> tuple[Action, str]:
    if failure is None:
        return "deleted", ""
    return ("locked" if isinstance(failure, ObjectLockedError) else "failed"), str(failure)


def _remove_quietly(store: Store, name: str, *keys_or_prefixes: str) -> None:
    """Remove data (prefixes end in '/') and markers; on failure leave them for a sweep."""
    try:
        for item in keys_or_prefixes:
            if item.endswith("/"):
                store.delete_prefix(item)
            else:
                store.delete([item])
    except Exception:  # the first failure is the one to report; a sweep removes the rest
        logger.warning("Could not remove what the backup %r left; a cleanup sweeps it", name)


def _commit(store: Store, manifest: Manifest) -> None:
    """Write the manifest with put-if-absent: the moment the backup exists.

    A transport may resend a put whose answer was lost; the resend then finds the
    manifest already there. If the stored bytes are exactly ours, our commit landed.
    """
    document = manifest.to_bytes()
    try:
        store.put(manifest_key(manifest.name), document, retain_until=manifest.retention_date)
    except FileExistsError:
        try:
            ours = store.get(manifest_key(manifest.name)) == document
        except FileNotFoundError:
            ours = False
        if not ours:
            raise _exists(manifest.name, store) from None


def _exists(name: str, store: Store) -> BackupExistsError:
    return BackupExistsError(
        f"A backup named {name!r} already exists in store {store.name!r}; "
        "backups are never overwritten, so choose another name or delete the old one first."
    )


def _counter(progress: Progress | None, total: int | None) -> Callable[[int], None] | None:
    """Adapt a (done, total) progress callback to a stream of byte counts. A create's total
    is an estimate, so done stops at it: a bar's total never moves, done never passes it."""
    if progress is None:
        return None
    done = 0

    def advance(size: int) -> None:
        nonlocal done
        done += size
        progress(done if total is None else min(done, total), total)

    return advance


def _check_write_key(write_key: object) -> WriteKey:
    if not isinstance(write_key, WriteKey):
        raise ConfigError("write_key must be a WriteKey (from WriteKey.load or WriteKey.derive).")
    return write_key


def _ignore(stage: str) -> None:
    """The stage report of a create or restore that nobody follows."""


def _as_datetime(value: int | datetime) -> datetime:
    if isinstance(value, datetime):
        return value
    return from_epoch_ms(parse_epoch_ms(value, "as_of"))


def _check_restore_target(target: Path) -> Path:
    target = target.absolute()
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise ConfigError(
            f"The restore target {str(target)!r} exists and is not a directory; choose a new one."
        )
    if target.is_dir() and any(target.iterdir()):
        raise ConfigError(
            f"The restore target {str(target)!r} is not empty; restore into a new or empty "
            "directory so nothing there is overwritten."
        )
    return target


def _make_parents(directory: Path) -> builtins.list[Path]:
    """Create `directory` and its missing ancestors; return the ones created, outermost first."""
    missing = [d for d in (directory, *directory.parents) if not d.exists()]
    directory.mkdir(parents=True, exist_ok=True)
    return missing[::-1]


def _remove_staging(staging: Path) -> None:
    """Remove a failed restore's staging directory whole, though directories in it may
    already be read-only (as the backup had them): each is made writable again first,
    by descriptor, never through a link."""
    with suppress(OSError):
        for _, names, _, fd in os.fwalk(staging):  # names holds links to directories too
            for name in names:
                with suppress(OSError):
                    _make_writable(name, fd)
    shutil.rmtree(staging, ignore_errors=True)


def _make_writable(name: str, parent: int) -> None:
    """Give the directory `name` in `parent` its owner's rwx, if it is a directory and not
    a link (chmod by name would follow a link; an O_PATH descriptor never does)."""
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    try:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            os.chmod(f"/proc/self/fd/{fd}", 0o700)  # fchmod refuses O_PATH descriptors
    finally:
        os.close(fd)


def _move_into_place(staging: Path, target: Path) -> None:
    """Move a finished restore into the target: one rename, or one per entry if it exists."""
    os.chmod(staging, 0o777 & ~_umask())
    if not target.exists():
        os.rename(staging, target)
        return
    for entry in sorted(os.listdir(staging)):
        os.rename(staging / entry, target / entry)


def _umask() -> int:
    """The process's umask, read without setting it: os.umask both reads and sets it, so
    a thread creating a file meanwhile would create it with no bits masked."""
    mask = _proc_umask()
    return _UMASK_AT_IMPORT if mask is None else mask


def _proc_umask() -> int | None:
    """The umask as Linux (4.7 and later) shows it in /proc/self/status, else None."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _umask_at_import() -> int:
    """Where /proc does not show it, the umask is read (and set back) once, at import,
    before a host's threads are likely to be creating files."""
    mask = _proc_umask()
    if mask is None:
        mask = os.umask(0)
        os.umask(mask)
    return mask


_UMASK_AT_IMPORT = _umask_at_import()
