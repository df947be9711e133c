"""Restore, verify and ls of `Engine`: a backup's manifest authenticated by its passcode,
then its chunks read as one stream (ChunkReader) into the archive reader, which extracts
into a staging directory (restoretarget.py), checks every member, or lists them."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from .archive import (
    ArchiveEntry,
    check_archive,
    extract_archive,
    list_archive,
    selected_path,
    selection_matches,
)
from .backupinfo import BackupInfo
from .cleanup import data_keys
from .crypto import Passcode, StreamCipher
from .enginecreate import ignore_stage
from .enginemanifests import EngineManifests
from .errors import (
    BackupNotFoundError,
    ConfigError,
    IntegrityError,
    StoreUnavailableError,
    StrongroomError,
)
from .format import Manifest, chunk_key, is_backup_id, is_chunk
from .keys import open_backup
from .pipeline import ChunkKey, ChunkReader, Progress, announce_first_chunks, progress_counter
from .restoretarget import Landing, check_restore_target
from .store import Store

__all__ = ["EngineRestore"]


class EngineRestore(EngineManifests):
    """Reading backups whole, for `Engine`, its only subclass."""

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
        passcode = Passcode(passcode)  # its frame holds no plain text (a traceback's locals)
        stage = on_stage or ignore_stage
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
        passcode = Passcode(passcode)  # its frame holds no plain text (a traceback's locals)
        source, manifest, cipher = self._open_authenticated(name, store, passcode, backup_id)
        unexpected = [key for key in data_keys(source, manifest) if not is_chunk(key, manifest)]
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
        passcode = Passcode(passcode)  # its frame holds no plain text (a traceback's locals)
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

    def _open_authenticated(
        self, name: str, store: str | None, passcode: Passcode, backup_id: str | None
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
                on_read=progress_counter(progress, manifest.source_size),
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

    def _changed_since(self, source: Store, manifest: Manifest, doing: str = "read") -> str:
        """Why a backup whose chunks failed to read is not damaged but gone: deleted, or
        replaced under its name, since its manifest was read ('' if neither)."""
        try:
            now = self._manifest(source, manifest.name)
        except BackupNotFoundError:
            return f"was deleted while it was being {doing}"
        except StrongroomError:  # unreadable now: the damage is what to report
            return ""
        if now.backup_id != manifest.backup_id:
            return f"was replaced by another backup of that name while it was being {doing}"
        return ""


def _chunk_key_of(manifest: Manifest) -> ChunkKey:
    return lambda index: chunk_key(manifest.name, manifest.backup_id, index)
