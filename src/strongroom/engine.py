"""Engine: create, restore, verify, list, info, delete, retention updates and cleanup;
create, restore, verify, delete and cleanup also as background jobs (`submit_*`, in
enginejobs.py).

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

import builtins
import logging
import os
import threading
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import partial
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
    selected_path,
    selection_matches,
    source_size,
    write_archive,
)
from .cleanup import (
    Cleanup,
    data_keys,
    delete_backups,
    delete_resurrected,
    index_of,
    manifest_names,
)
from .config import StoresConfig
from .crypto import BackupKeys, KdfParams, Passcode, StreamCipher, new_file_key
from .enginejobs import EngineJobs
from .enginestores import EngineStores
from .errors import (
    BackupExistsError,
    BackupNotFoundError,
    ConfigError,
    IntegrityError,
    NewerFormatError,
    ObjectLockedError,
    StoreUnavailableError,
    StrongroomError,
)
from .format import (
    MAX_MANIFEST_SIZE,
    KeySlot,
    Manifest,
    chunk_key,
    claims_prefix,
    data_prefix,
    from_epoch_ms,
    is_backup_id,
    manifest_key,
    pending_key,
    retention_key,
    slot_name_prefix,
    to_epoch_ms,
    utc_now,
    validate_description,
    validate_name,
)
from .jobs import DEFAULT_WORKERS, JOBS_FILE
from .keys import WriteKey, open_backup
from .pipeline import (
    DEFAULT_CHUNK_SIZE,
    ChunkKey,
    ChunkReader,
    ChunkWriter,
    Progress,
    announce_first_chunks,
)
from .restoretarget import Landing, check_restore_target
from .retention import CleanupReport, check_retention_date, parse_moment, retention_ms
from .store import Store

__all__ = ["BackupInfo", "Engine", "Listing"]

logger = logging.getLogger("strongroom")

#: The most left-out entries a backup's document lists, and the longest text of each (a job
#: keeps its result in the job table; a path may be kilobytes): the log names every one whole.
LEFT_OUT_LISTED = 20
LEFT_OUT_TEXT = 500


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
    #: How its chunks were encoded ("zstd" or "none": its store's setting then).
    compression: str = "zstd"
    #: What the create that made it left out, each with why (a socket, a device, an entry
    #: that changed as it was read); known to that create only, never stored, so an API
    #: job's or a schedule's result says it as `strongroom create` does.
    left_out: tuple[str, ...] = field(default=(), compare=False)

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
            compression=manifest.compression,
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
            "compression": self.compression,
            "backupId": self.backup_id,
            **(_left_out_fields(self.left_out) if self.left_out else {}),
        }


def _left_out_fields(left_out: Sequence[str]) -> dict[str, Any]:
    """`leftOut`: the first LEFT_OUT_LISTED, each cut at LEFT_OUT_TEXT characters;
    `leftOutCount`: how many in all."""
    shown = [
        what if len(what) <= LEFT_OUT_TEXT else what[: LEFT_OUT_TEXT - 1] + "…"
        for what in left_out[:LEFT_OUT_LISTED]
    ]
    return {"leftOut": shown, "leftOutCount": len(left_out)}


@dataclass(frozen=True, slots=True)
class Listing:
    """A store's backups, oldest first, and those whose manifest does not read (name: why):
    a damaged or altered manifest is reported, never silently left out of a list."""

    backups: list[BackupInfo]
    unreadable: dict[str, str]

    def only(self, named: Callable[[str], object]) -> Listing:
        """The backups, readable or not, whose names `named` accepts (a schedule's slots)."""
        return Listing(
            [info for info in self.backups if named(info.name)],
            {name: problem for name, problem in self.unreadable.items() if named(name)},
        )

    def to_dict(self) -> dict[str, Any]:
        """The admin API's list document; the CLI's `list --json` prints the same."""
        return {
            "backups": [info.to_dict() for info in self.backups],
            "unreadable": [{"name": n, "problem": p} for n, p in self.unreadable.items()],
        }


class Engine(EngineStores, EngineJobs):
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
    `validate_store`, `use_config`) are in its base class `EngineStores` (enginestores.py),
    the jobs (`jobs`, `submit_*`, `schedule_cleanup`, `close`) in `EngineJobs`
    (enginejobs.py).
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
            name, paths, streams, passcode, write_key, store, description, retention_date, scheduled
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
            compression=self.compression(target),
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
            compress=draft.compression == "zstd",
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
        return replace(BackupInfo.from_manifest(manifest, target.name), left_out=tuple(left_out))

    def _defined_schedules(self) -> Collection[str]:
        """The schedules' names as the configuration file has them now (a server's engine
        lives longer than one edit)."""
        return StoresConfig.load(self.config.path, home=self.home).schedules.keys()

    def _check_not_a_slot(self, name: str, target: Store) -> None:
        """Refuse a name a schedule gives its backups: a caller who could only add backups
        (a write key, an API token) must not take a future slot's name, which would make
        that slot's run fail. A schedule is known by this home's configuration (in any
        case: a file store may not tell names by case), or by the claims its runs left in
        the store, whichever home defines it."""
        schedule = slot_name_prefix(name)
        if schedule is None:
            return
        defined = {known.lower() for known in self._defined_schedules()}
        claimed = next(iter(target.list(claims_prefix(schedule))), None) is not None
        if schedule.lower() in defined or claimed:
            raise ConfigError(
                f"{name!r} is the name the schedule {schedule!r} gives its backup of that "
                "slot; choose a name that is not NAME-YYYY-MM-DD-HH-MM-SS of a schedule."
            )

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
        scheduled: bool,
    ) -> tuple[Passcode | WriteKey, datetime | None, Store]:
        """Everything create checks before it writes a byte; the target store last (one
        from before stores were marked, holding backups, gets its marker here)."""
        validate_name(name)
        if (passcode is None) == (write_key is None):
            raise ConfigError(
                "A create takes exactly one of a passcode and a write key "
                f"(given: {'both' if passcode is not None else 'neither'})."
            )
        credential = Passcode(passcode) if passcode is not None else _check_write_key(write_key)
        check_sources(paths, streams)
        retention = check_retention_date(retention_date, self._clock())
        validate_description(description)
        target = self.recognised_store(store, adopt=True)
        if not scheduled:
            self._check_not_a_slot(name, target)
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
        destination = check_restore_target(target)
        selected = [selected_path(path) for path in paths]
        source, manifest, cipher = self._open_authenticated(name, store, passcode, backup_id)
        with Landing(destination) as landing:
            stage("reading")
            reading = self._reading(
                source, manifest, cipher, progress, outcome=" Nothing was restored."
            )
            with reading as reader:
                size = manifest.chunk_count * manifest.chunk_size  # what the reader can give
                found = extract_archive(reader, landing.staging, size, selected)
                reader.drain()
            missing = sorted(set(selected) - found)
            if missing:
                raise ConfigError(
                    f"Not in backup {name!r}: {', '.join(missing)}. Nothing was restored."
                )
            stage("moving into place")
            landing.move_into_place()
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
        unexpected = [key for key in data_keys(source, manifest) if not _is_chunk(key, manifest)]
        if unexpected:
            shown = ", ".join(repr(key) for key in unexpected[:3])
            more = f" and {len(unexpected) - 3} more" if len(unexpected) > 3 else ""
            raise IntegrityError(
                f"Backup {name!r} in store {source.name!r} has {len(unexpected)} unexpected "
                f"object(s) in its data ({shown}{more}); something other than strongroom "
                "wrote there."
            )
        with self._reading(source, manifest, cipher, progress) as reader:
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
        selected = [selected_path(path) for path in paths]
        source, manifest, cipher = self._open_authenticated(name, store, passcode, backup_id)

        def entries() -> Iterator[ArchiveEntry]:
            found: set[str] = set()
            with self._reading(source, manifest, cipher, None) as reader:
                for entry in list_archive(reader, selected):
                    found.update(selection_matches(entry.path, selected))
                    yield entry
                reader.drain()  # authenticated to the end before a missing path is told
            if missing := sorted(set(selected) - found):
                raise ConfigError(f"Not in backup {name!r}: {', '.join(missing)}.")

        return entries()

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
        chunks = [key for key in data_keys(source, manifest) if _is_chunk(key, manifest)]
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
            delete_resurrected(source, [manifest])
            source.delete([entry])
            raise BackupNotFoundError(
                f"Backup {name!r} in store {source.name!r} was deleted while its retentionDate "
                "was being updated."
            )
        source.delete([e.key for e in index_of(source, manifest) if e.key != entry])
        return BackupInfo.from_manifest(updated, source.name)

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

    # -- internals -------------------------------------------------------------------

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

    def _open_authenticated(
        self, name: str, store: str | None, passcode: str | Passcode, backup_id: str | None
    ) -> tuple[Store, Manifest, StreamCipher]:
        """The backup's manifest, its passcode and MAC checked, and its chunk cipher.

        Someone who can write to the store can put an older genuine backup back under the
        name (nothing inside a store can tell); a caller that knows which backup it expects
        pins its `backup_id` (shown by `info`), and anything else is an IntegrityError.
        """
        backup_id = backup_id.lower() if isinstance(backup_id, str) else backup_id
        if backup_id is not None and not is_backup_id(backup_id):
            raise ConfigError(
                f"{backup_id!r} is not a backupId (32 lowercase hex digits); 'strongroom info "
                f"{name}' shows the backupId of the backup named {name!r} now."
            )
        source, manifest = self._open(name, store)
        announce_first_chunks(source, _chunk_key_of(manifest), manifest.chunk_count)
        keys = open_backup(manifest, passcode)
        if backup_id is not None and backup_id != manifest.backup_id:
            raise IntegrityError(
                f"Backup {name!r} in store {source.name!r} is now {manifest.backup_id}, not the "
                f"pinned {backup_id}: the name was reused, or someone who can write to the "
                "store put another (older) backup in its place."
            )
        return source, manifest, StreamCipher(keys.chunk_key, manifest.stream_binding())

    @contextmanager
    def _reading(
        self,
        source: Store,
        manifest: Manifest,
        cipher: StreamCipher,
        progress: Progress | None,
        *,
        outcome: str = "",
    ) -> Iterator[ChunkReader]:
        """The backup's chunks as one stream; what fails to authenticate while it is read
        is told with the backup and store it is in, and `outcome` (what was not done)."""
        try:
            with ChunkReader(
                source,
                _chunk_key_of(manifest),
                cipher,
                chunk_count=manifest.chunk_count,
                chunk_size=manifest.chunk_size,
                on_read=_counter(progress, manifest.source_size),
            ) as reader:
                yield reader
        except IntegrityError as exc:
            if since := self._changed_since(source, manifest):
                raise BackupNotFoundError(
                    f"Backup {manifest.name!r} in store {source.name!r} {since}.{outcome}"
                ) from None
            raise IntegrityError(
                f"Backup {manifest.name!r} in store {source.name!r}: {exc}{outcome}"
            ) from None
        except StoreUnavailableError as exc:  # the store went away midway: say so too
            if not outcome:
                raise
            raise type(exc)(f"{exc}{outcome}") from exc

    def _changed_since(self, source: Store, manifest: Manifest) -> str:
        """Why a backup whose chunks failed to read is not damaged but gone: deleted, or
        replaced under its name, since its manifest was read ('' if neither)."""
        try:
            now = self._manifest(source, manifest.name)
        except BackupNotFoundError:
            return "was deleted while it was being read"
        except StrongroomError:  # unreadable now: the damage is what to report
            return ""
        if now.backup_id != manifest.backup_id:
            return "was replaced by another backup of that name while it was being read"
        return ""


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


def _remove_quietly(store: Store, name: str, *keys_or_prefixes: str) -> None:
    """Remove data (prefixes end in '/') and markers; on failure leave them for a sweep."""
    try:
        for item in keys_or_prefixes:
            if item.endswith("/"):
                store.delete_prefix(item)
            else:
                store.delete([item])
    except Exception:  # the first failure is the one to report; a sweep removes the rest
        logger.warning(
            "Could not remove what the backup %r left; a cleanup sweeps it once it is a day old",
            name,
        )


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
            ours = store.get(manifest_key(manifest.name), limit=MAX_MANIFEST_SIZE) == document
        except (FileNotFoundError, IntegrityError):  # gone again, or nothing we wrote
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


def _chunk_key_of(manifest: Manifest) -> ChunkKey:
    return lambda index: chunk_key(manifest.name, manifest.backup_id, index)


def _check_write_key(write_key: object) -> WriteKey:
    if not isinstance(write_key, WriteKey):
        raise ConfigError("write_key must be a WriteKey (from WriteKey.load or WriteKey.derive).")
    return write_key


def _ignore(stage: str) -> None:
    """The stage report of a create or restore that nobody follows."""
