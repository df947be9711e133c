"""The Engine's create: what it checks before it writes a byte, the chunks written
while Argon2id runs beside them, and the manifest put last as the commit.

Kept apart from engine.py so each file reads as one subject (as enginestores.py and
enginejobs.py are): this writes backups; engine.py reads, lists, updates and deletes
them. The order is the crash-safety guarantee: a pending marker first (kept fresh by a
heartbeat, so a sweep never takes a slow create for a leftover), the chunks made durable,
the retention index entry, then the manifest with put-if-absent; anything that fails
before the manifest removes what was written, and what a crash leaves is swept.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

from .archive import StreamSource, check_sources, source_size, write_archive
from .backupinfo import BackupInfo
from .cleanup import delete_resurrected
from .compressionlevel import levels_for
from .config import StoresConfig
from .crypto import BackupKeys, KdfParams, Passcode, StreamCipher, new_file_key
from .enginestores import EngineStores
from .errors import (
    BackupExistsError,
    CommitUncertainError,
    ConfigError,
    IntegrityError,
    InterruptedAfterCommit,
    StoreError,
)
from .format import (
    MAX_MANIFEST_SIZE,
    KeySlot,
    Manifest,
    chunk_key,
    claims_prefix,
    data_prefix,
    from_epoch_ms,
    manifest_key,
    pending_key,
    retention_key,
    slot_name_prefix,
    taken_key,
    to_epoch_ms,
    validate_description,
    validate_name,
)
from .keys import WriteKey
from .pipeline import ChunkWriter, Progress, progress_counter
from .retention import check_retention_date
from .store import Store

__all__ = ["EngineCreate", "ignore_stage"]

logger = logging.getLogger("strongroom")


class EngineCreate(EngineStores):
    """The create of `Engine`, its only subclass, on top of the stores it holds.

    What it needs from the class that uses it: the settings `_kdf` (every create's
    Argon2id cost), `_chunk_size`, `_clock` and `_heartbeat` (how often a running create
    refreshes its pending marker).
    """

    _kdf: KdfParams
    _chunk_size: int
    _clock: Callable[[], datetime]
    _heartbeat: timedelta

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
        is removed again (its pending marker stays for the sweep if a chunk's put failed
        without a refusal, on a store whose puts may land late)
        and no backup of that name appears; if it fails while the manifest is written,
        CommitUncertainError, and nothing is removed. `on_stage` hears each step
        as it starts (validating, writing, deriving the key, committing: Argon2id runs
        beside the writing, and its stage is what is left of it); what it raises stops
        the create uncommitted. `scheduled`: a schedule makes it (scheduleType).
        """
        passcode = None if passcode is None else Passcode(passcode)  # no plain text in the frame
        stage = on_stage or ignore_stage
        paths = [Path(source) for source in sources]
        streams = dict(streams or {})
        stage("validating")
        credential, retention, target = self._check_create(
            name, paths, streams, passcode, write_key, store, description, retention_date, scheduled
        )

        backup_id = uuid.uuid4().hex
        file_key = new_file_key()
        setting = self.compression(target)
        draft = Manifest(
            name=name,
            backup_id=backup_id,
            description=description,
            created=from_epoch_ms(to_epoch_ms(self._clock())),  # as stored: whole ms
            chunk_size=self._chunk_size,
            chunk_count=0,
            source_size=0,
            stored_size=0,
            compression="none" if setting == "none" else "zstd",  # the chunks' encoding
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
            levels=levels_for(setting),
            retain_until=retention,
            # streams have no size beforehand: then the total is unknown, not too small
            on_write=progress_counter(
                progress, source_size(paths) if progress and not streams else None
            ),
        )
        marker = pending_key(name, backup_id)
        index = retention_key(name, backup_id, retention)
        # Chunks are sealed under the random file key; the passcode's key is needed only
        # to wrap it at the commit, so its Argon2id runs beside the writing.
        committing = False  # from the manifest's put on, whether it landed may be unknown
        checking = False  # after it, whether a cleanup took the backup's data meanwhile
        withdrawn = False  # a cleanup took it: its manifest was taken back
        committed = False  # then an interrupt cuts off only the tidying
        try:
            with (
                _Heartbeat(target, marker, self._heartbeat) as heartbeat,
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
                    committing = True
                    _commit(target, manifest)
                    checking = True  # committed; whether a cleanup took it meanwhile is next
                    if target.exists(taken_key(name, backup_id)):  # Cleanup._take_from_its_create
                        delete_resurrected(target, [manifest])  # withdrawn: not whole
                        committing, withdrawn = False, True
                        raise _taken_by_cleanup(name, target)
                    committed = True
                except BaseException as exc:
                    writer.abort()
                    if committing and not isinstance(exc, BackupExistsError):
                        raise _uncertain(manifest, target, exc, checking) from exc
                    # A chunk's put that timed out may still land (a remote store's upload can
                    # outlive its request): then the marker stays, for a sweep to remove
                    # whatever does once the grace period has passed.
                    heartbeat.stop()  # or it could put the marker back after its removal
                    leftover = [] if writer.may_land_late and target.late_puts else [marker]
                    _remove_quietly(target, name, data_prefix(name, backup_id), index, *leftover)
                    if withdrawn:  # an update that read the manifest may have written it back
                        with suppress(StoreError):
                            delete_resurrected(target, [manifest])
                    raise
            _remove_quietly(target, name, marker)  # committed: a stale marker is harmless
            for what in left_out:
                logger.warning("Left out of backup %r: %s", name, what)
            return replace(
                BackupInfo.from_manifest(manifest, target.name), left_out=tuple(left_out)
            )
        except KeyboardInterrupt as exc:
            if committed:
                raise InterruptedAfterCommit from exc
            raise

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
        self.stop()

    def stop(self) -> None:
        """Refresh no more (again: a no-op), once the refresh under way has ended."""
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._store.put(self._key, b"", overwrite=True)
            except Exception:  # the create itself reports a store that went away
                logger.warning("Could not refresh %s", self._key)


def _remove_quietly(store: Store, name: str, *keys_or_prefixes: str) -> None:
    """Remove data (prefixes end in '/') and markers; on failure leave them for a sweep."""
    try:
        for item in keys_or_prefixes:
            if item.endswith("/"):
                store.delete_prefix(item)
            else:
                store.delete([item])
    except Exception:  # the first failure is the one to report; a sweep removes the rest
        logger.warning("Could not remove what the backup %r left; %s", name, _swept_when(store))


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


def _taken_by_cleanup(name: str, store: Store) -> StoreError:
    """What a create says that a cleanup took for a leftover: it ran past the grace period
    without refreshing its pending marker."""
    return StoreError(
        f"Backup {name!r} was not committed in store {store.name!r}: this create stopped "
        "refreshing its pending marker for longer than the grace period (its process was "
        "paused, its machine suspended, or a store request hung), so a cleanup took it for "
        "the leftover of a create that was cut off, and removes its data. Nothing was "
        "committed; create it again."
    )


def _uncertain(
    manifest: Manifest, store: Store, exc: BaseException, checking: bool
) -> CommitUncertainError:
    """What a create says when it stopped during its manifest's put: the put may have
    landed (or still land: a remote store's upload can outlive an interrupt), so nothing
    it wrote is removed, and the listing tells which it was; or, `checking`, after its
    put, while it checked whether a cleanup had taken it (then only a verify tells). A
    commit that lost to another create's (BackupExistsError) is not this: that one is known."""
    reason = "it was interrupted" if isinstance(exc, KeyboardInterrupt) else f"{exc}"
    if checking:
        return CommitUncertainError(
            f"Backup {manifest.name!r} was committed in store {store.name!r}, but whether a "
            "cleanup took it for a leftover meanwhile (had the create been paused past the "
            f"grace period) could not be checked ({reason}). 'strongroom verify "
            f"{manifest.name} --store {store.name}' tells: if it fails, delete the backup and "
            "create it again."
        )
    return CommitUncertainError(
        f"Backup {manifest.name!r} may or may not have been committed in store "
        f"{store.name!r}: its create stopped while its manifest was being written ({reason}). "
        f"'strongroom list --store {store.name}' shows which: if it is listed, it is "
        f"complete and restores (delete it if unwanted); if not, {_swept_when(store)}."
    )


def _swept_when(store: Store) -> str:
    """When a cleanup removes what a create that failed left in `store`."""
    locked = ", and their object lock has passed" if store.lock_mode else ""
    return (
        "a cleanup sweeps what it wrote once that is older than its grace period (a day "
        f"by default){locked}"
    )


def _exists(name: str, store: Store) -> BackupExistsError:
    return BackupExistsError(
        f"A backup named {name!r} already exists in store {store.name!r}; "
        "backups are never overwritten, so choose another name or delete the old one first."
    )


def _check_write_key(write_key: object) -> WriteKey:
    if not isinstance(write_key, WriteKey):
        raise ConfigError("write_key must be a WriteKey (from WriteKey.load or WriteKey.derive).")
    return write_key


def ignore_stage(stage: str) -> None:
    """The stage report of a create or restore that nobody follows."""
