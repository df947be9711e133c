"""Cleanup: delete the backups whose retentionDate has passed, and sweep what cut-off
creates and deletes and old schedule claims left behind; also the batched delete of
backups and the listings of a backup's keys that the engine's delete, retention update and
verify share.

A module of its own because a cleanup works on whole stores, from one listing of each,
where the engine works on one named backup. Which backups have expired and which leftovers
may be swept is decided in retention.py; this module lists, reads and deletes.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from .errors import IntegrityError, ObjectLockedError, StoreError, StrongroomError
from .format import (
    CLAIMS_PREFIX,
    MANIFESTS_PREFIX,
    MAX_MANIFEST_SIZE,
    PENDING_PREFIX,
    RETENTION_PREFIX,
    Manifest,
    data_prefix,
    is_chunk,
    manifest_key,
    name_from_manifest_key,
    parse_claim_key,
    parse_pending_key,
    parse_retention_key,
    parse_taken_key,
    taken_key,
)
from .retention import (
    Action,
    Claim,
    CleanupEntry,
    CleanupReport,
    IndexEntry,
    PendingMarker,
    select_candidates,
    select_claims_to_sweep,
    select_expired,
    select_leftovers,
    select_orphans,
)
from .store import ObjectInfo, Store

__all__ = [
    "DELETE_BATCH",
    "LISTING_THRESHOLD",
    "Cleanup",
    "ManifestNames",
    "ManifestReader",
    "data_keys",
    "delete_backups",
    "delete_resurrected",
    "index_of",
    "manifest_names",
]

#: Up to this many deleted backups are checked for a racing update one request each;
#: more take one listing of the manifests.
LISTING_THRESHOLD = 8
#: Cleanup deletes the keys of several backups in one call once they add up to this many
#: (one S3 DeleteObjects request).
DELETE_BATCH = 1000

#: Reads the manifests of the named backups in a store: those still there, and why each
#: unreadable one is, by name (`Engine._read_manifests`).
ManifestReader = Callable[[Store, list[str]], tuple[list[Manifest], dict[str, str]]]


@dataclass(frozen=True, slots=True)
class Cleanup:
    """A cleanup of stores: what it needs of the engine, handed in."""

    #: Opens a store by name (a StrongroomError if it cannot: reported, not raised).
    open_store: Callable[[str], Store]
    read_manifests: ManifestReader
    #: The names of the schedules the configuration file defines, read when needed.
    defined_schedules: Callable[[], Collection[str]]
    #: How old a leftover or a schedule's claim must be, by the store's clock, to be swept.
    leftover_grace: timedelta

    def run(self, store_names: Iterable[str], moment: datetime, dry_run: bool) -> CleanupReport:
        """Delete the backups whose retentionDate has passed at `moment` in these stores,
        and sweep their leftovers; one store that fails does not stop the others."""
        report = CleanupReport(as_of=moment, dry_run=dry_run)
        for store_name in store_names:
            try:
                source = self.open_store(store_name)
                listing = _Listing.of(source)
            except StrongroomError as exc:  # one unreachable store must not stop the others
                report.errors.append(str(exc))
                continue
            report.errors.extend(listing.skipped)
            expired, problems = self._confirm_expired(source, listing, moment)
            report.kept += len(listing.names) - len(expired) - len(problems)  # errors below
            report.entries.extend(_expire(source, expired, listing.index, dry_run))
            unjudged: list[str] = []
            try:
                swept, unjudged, waiting = self._sweep(source, listing, dry_run)
                report.entries.extend(swept)
                report.waiting += waiting
                report.entries.extend(self._sweep_claims(source, dry_run))
            except StrongroomError as exc:
                report.errors.append(str(exc))
            try:
                report.errors.extend(self._taken_but_committed(source, listing))
            except StrongroomError as exc:
                report.errors.append(str(exc))
            report.errors.extend(p for p in problems if p not in unjudged)  # each said once
            report.errors.extend(
                f"{p} Its leftovers are kept until it can be read."
                for p in [*listing.unreadable.values(), *unjudged]
            )
        return report

    def _confirm_expired(
        self, source: Store, listing: _Listing, moment: datetime
    ) -> tuple[list[Manifest], list[str]]:
        """The expired backups: candidates come from the index (listing only), the verdict
        from each candidate's manifest, which stays the truth (read several at a time)."""
        candidates = dict(select_candidates(listing.index, listing.names, moment))
        manifests, unreadable = self.read_manifests(source, sorted(candidates))
        confirmed = [m for m in manifests if candidates[m.name] == m.backup_id]
        return select_expired(confirmed, moment), list(unreadable.values())

    def _sweep(
        self, source: Store, listing: _Listing, dry_run: bool
    ) -> tuple[list[CleanupEntry], list[str], int]:
        """Remove what interrupted creates and deletes left behind, once past the grace
        period; why the leftovers of some names were not judged (unreadable manifests); and
        how many backups' leftovers are still within the grace period.

        A create cut off leaves its pending marker; a delete cut off leaves index entries
        without a manifest. Ages come from the store's own timestamps (against a fresh
        probe object), never from this machine's clock. A name whose manifest is there but
        unreadable (a newer version's, a torn write, something else at its place:
        `manifest_names`) may be committed: nothing of it is judged, so planting an index
        entry or a marker can never sweep a backup's data.
        """
        writing = {(m.name, m.backup_id) for m in listing.markers}
        ambiguous = _ambiguous(listing)
        suspects = [e for e in listing.index if e.name not in listing.names or e.name in ambiguous]
        if not listing.markers and not suspects:
            return [], [], 0
        store_now = source.now()
        if store_now is None:
            return [], [], 0
        names = {m.name for m in listing.markers} | ambiguous
        manifests, unreadable = self.read_manifests(source, sorted(names))
        committed = {m.name: m.backup_id for m in manifests}
        unjudged = listing.unreadable.keys() | unreadable.keys()
        judged_markers = [m for m in listing.markers if m.name not in unjudged]
        leftovers, stale = select_leftovers(
            judged_markers, committed, store_now, self.leftover_grace
        )
        judged = [e for e in suspects if e.name not in unjudged]
        orphans = select_orphans(judged, committed, writing, store_now, self.leftover_grace)
        unfinished = {
            (m.name, m.backup_id) for m in judged_markers if committed.get(m.name) != m.backup_id
        } | {(e.name, e.backup_id) for e in judged if committed.get(e.name) != e.backup_id}
        waiting = (
            unfinished
            - {(m.name, m.backup_id) for m in leftovers}
            - {(e.name, e.backup_id) for e in orphans}
        )
        backups = {(m.name, m.backup_id): "an unfinished create" for m in leftovers}
        backups.update({(e.name, e.backup_id): "a delete that was cut off" for e in orphans})
        for name in {name for name, _ in backups} - listing.names:  # the last check: nothing
            if source.occupied(manifest_key(name)):  # at all where its manifest would be
                unreadable[name] = (
                    f"Store {source.name!r}: {manifest_key(name)!r} holds something other "
                    "than a manifest, which no listing shows (a directory, say)."
                )
        backups = {key: what for key, what in backups.items() if key[0] not in unreadable}
        leftovers = [m for m in leftovers if m.name not in unreadable]
        keys = _keys_by_backup(listing.index)
        markers = {(m.name, m.backup_id): m.key for m in leftovers}
        entries, swept = [], set()
        for (name, backup_id), what in sorted(backups.items()):
            action: Action = "would sweep" if dry_run else "swept"
            message = f"data of {what} (backupId {backup_id})"
            if not dry_run:
                try:
                    if not self._take_from_its_create(source, name, backup_id, markers):
                        continue  # its create committed after all: nothing to sweep
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
        return entries, list(unreadable.values()), len(waiting)

    def _take_from_its_create(
        self, source: Store, name: str, backup_id: str, markers: dict[tuple[str, str], str]
    ) -> bool:
        """Whether the data of an unfinished create may go. A create only paused past the
        grace period (a stopped process, a suspended machine) looks cut off: so its
        `taken_key` is put first, then its manifest read again. The create, after its
        manifest's put, looks for that key and withdraws its manifest if it is there; so
        either it sees the key or this sees its manifest, and a listed backup never loses
        its data (`EngineCreate.create`). Its heartbeat may put its marker back; it never
        writes that key. The key is never removed: another sweep at the same time may be
        removing the data on an earlier reading of the manifest. A manifest that cannot be
        read now is a StoreError: nothing goes, and the run reports it."""
        if (name, backup_id) not in markers:  # a delete cut off: no create to race
            return True
        taken = taken_key(name, backup_id)
        source.put(taken, b"", overwrite=True)
        manifests, unreadable = self.read_manifests(source, [name])
        if unreadable:
            raise StoreError(f"{unreadable[name]} Its leftovers are kept until it can be read.")
        return all(m.backup_id != backup_id for m in manifests)  # else committed: whole

    def _taken_but_committed(self, source: Store, listing: _Listing) -> list[str]:
        """The backups committed after a sweep took their data, a sentence each: the create
        was killed between its manifest's put and its look for the `taken_key`, the one
        step `_take_from_its_create` cannot cover, and what is listed cannot be restored.
        Reported every run, never deleted: a listing that came back short, or a key planted
        beside a whole backup, must not cost a backup. A backup a sweep left whole beside its
        key (it read the manifest again) costs a data listing per run; such are rare. Its
        times cannot tell them apart: two sweeps at once put the key twice (helper-74)."""
        suspects = {(name, backup_id) for name, backup_id in listing.taken if name in listing.names}
        if not suspects:
            return []
        manifests, _ = self.read_manifests(source, sorted({name for name, _ in suspects}))
        problems = []
        for manifest in manifests:
            if (manifest.name, manifest.backup_id) not in suspects:
                continue
            try:
                there = sum(is_chunk(key, manifest) for key in data_keys(source, manifest))
            except StrongroomError as exc:
                problems.append(str(exc))
                continue
            if there < manifest.chunk_count:
                problems.append(
                    f"Store {source.name!r}: backup {manifest.name!r} was committed after a "
                    f"cleanup took its data ({manifest.chunk_count - there} of its "
                    f"{manifest.chunk_count} chunks are not there): its create was cut off "
                    "before it could take it back, and it cannot be restored in full. Check "
                    f"it with 'strongroom verify {manifest.name} --store {source.name}' and "
                    f"delete it ('strongroom delete {manifest.name} --store {source.name}') "
                    "if that fails."
                )
        return problems

    def _sweep_claims(self, source: Store, dry_run: bool) -> list[CleanupEntry]:
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
        defined = self.defined_schedules()  # as now
        old = select_claims_to_sweep(claims, store_now, self.leftover_grace, defined)
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


def _expire(
    source: Store, manifests: list[Manifest], index: list[IndexEntry], dry_run: bool
) -> list[CleanupEntry]:
    if dry_run:
        return [
            CleanupEntry(source.name, m.name, m.retention_date, "would delete") for m in manifests
        ]
    failures = delete_backups(source, manifests, index)
    return [
        CleanupEntry(source.name, m.name, m.retention_date, *_outcome(failures.get(m.name)))
        for m in manifests
    ]


@dataclass(frozen=True, slots=True)
class _Listing:
    """What a cleanup lists of a store, in this order: the markers first, so a create
    running meanwhile is seen as writing whenever its index entry is seen at all."""

    markers: list[PendingMarker]
    #: (name, backupId) of the creates a sweep took (`taken_key`).
    taken: set[tuple[str, str]]
    names: set[str]
    #: Names whose manifest's place holds something no manifest is (`manifest_names`).
    unreadable: dict[str, str]
    index: list[IndexEntry]
    #: What the store skipped as not being objects (a planted link), one sentence each.
    skipped: tuple[str, ...]

    @classmethod
    def of(cls, store: Store) -> _Listing:
        pending = store.scan(PENDING_PREFIX)
        manifests = manifest_names(store)
        retention = store.scan(RETENTION_PREFIX)
        markers = [
            PendingMarker(obj.key, *parsed, obj.modified)
            for obj in pending.objects
            if (parsed := parse_pending_key(obj.key))
        ]
        taken = {parsed for obj in pending.objects if (parsed := parse_taken_key(obj.key))}
        skipped = (*pending.skipped.values(), *manifests.skipped, *retention.skipped.values())
        names, unreadable = set(manifests.names), manifests.unreadable
        index = _parse_index(retention.objects)
        return cls(markers, taken, names, unreadable, index, skipped)


@dataclass(frozen=True, slots=True)
class ManifestNames:
    """What a listing of the manifests found (`manifest_names`)."""

    #: The names the store holds a manifest for.
    names: list[str]
    #: By name, why another name's manifest is not there as one.
    unreadable: dict[str, str]
    #: What the store skipped there that is no name's manifest, one sentence each.
    skipped: list[str]


def manifest_names(store: Store) -> ManifestNames:
    """The names the store holds a manifest for, and, by name, why any other name's
    manifest is not there as one (a link or a directory at its place, objects under it).
    Such a name is not taken for deleted, so nothing of it is swept. Anything but a
    directory where the manifests are kept is a StoreError: none of them could be listed."""
    found = store.scan(MANIFESTS_PREFIX)
    names = [n for obj in found.objects if (n := name_from_manifest_key(obj.key))]
    unreadable, skipped = {}, []
    for obj in found.objects:
        name = _manifest_place(obj.key)
        if name and name not in names:  # beside a manifest (a key-value store), a stray
            unreadable[name] = (
                f"Store {store.name!r}: {obj.key!r} lies under {manifest_key(name)!r}, the "
                "place of that backup's manifest, which is one object; it was not read."
            )
    for key, reason in found.skipped.items():
        if key == MANIFESTS_PREFIX.rstrip("/"):
            raise StoreError(reason)
        if name := _manifest_place(key):
            unreadable[name] = reason
        else:
            skipped.append(reason)
    return ManifestNames(names, unreadable, skipped)


def _manifest_place(key: str) -> str | None:
    """The backup name whose manifest's place `key` is, or lies under; None if none."""
    if not key.startswith(MANIFESTS_PREFIX):
        return None
    return name_from_manifest_key(MANIFESTS_PREFIX + key[len(MANIFESTS_PREFIX) :].split("/")[0])


def data_keys(store: Store, manifest: Manifest) -> list[str]:
    """The keys of a backup's data objects as the store lists them: what is there, never a
    list as long as a (perhaps tampered, not yet authenticated) chunkCount says."""
    listing = store.scan(data_prefix(manifest.name, manifest.backup_id))
    if listing.skipped:  # a planted link: what lies behind it was not deleted or read
        raise StoreError(" ".join(listing.skipped.values()))
    return [obj.key for obj in listing.objects]


def _ambiguous(listing: _Listing) -> set[str]:
    """Names whose index holds several backups: which one is committed takes a manifest read."""
    ids: dict[str, set[str]] = {}
    for entry in listing.index:
        ids.setdefault(entry.name, set()).add(entry.backup_id)
    return {name for name, found in ids.items() if len(found) > 1 and name in listing.names}


def _index_entries(store: Store, prefix: str) -> list[IndexEntry]:
    return _parse_index(store.list(prefix))


def _parse_index(objects: Iterable[ObjectInfo]) -> list[IndexEntry]:
    return [
        IndexEntry(obj.key, *parsed, obj.modified)
        for obj in objects
        if (parsed := parse_retention_key(obj.key))
    ]


def _keys_by_backup(index: list[IndexEntry]) -> dict[tuple[str, str], list[str]]:
    keys: dict[tuple[str, str], list[str]] = {}
    for entry in index:
        keys.setdefault((entry.name, entry.backup_id), []).append(entry.key)
    return keys


def index_of(store: Store, manifest: Manifest) -> list[IndexEntry]:
    """The index entries of one backup (normally one; two after a cut-off update)."""
    entries = _index_entries(store, f"{RETENTION_PREFIX}{manifest.name}/")
    return [e for e in entries if e.backup_id == manifest.backup_id]


def delete_backups(
    store: Store, manifests: list[Manifest], index: list[IndexEntry]
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
    steps: list[Callable[[Manifest], list[str]]] = [
        lambda m: [manifest_key(m.name)],
        lambda m: data_keys(store, m),
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
                    gone = keys_of is not steps[0]
                    failures[manifest.name] = _deleted_but(manifest, store, exc) if gone else exc
        remaining = [m for m in remaining if m.name not in failures]
    try:
        delete_resurrected(store, remaining)
    except Exception as exc:  # reported like any failed step
        failures.update((m.name, exc) for m in remaining)
    return failures


def _deleted_but(manifest: Manifest, store: Store, exc: Exception) -> StoreError:
    """A delete whose manifest went and whose data did not (all of it): the backup is gone,
    which the error must say, or a retry that finds no backup reads as a contradiction."""
    message = (
        f"Backup {manifest.name!r} is deleted from store {store.name!r} (its manifest is "
        f"gone), but not all of its data was removed: {str(exc).rstrip('.')}. A cleanup "
        "removes the rest once "
        "it is older than its grace period (a day by default)."
    )
    return type(exc)(message) if isinstance(exc, StoreError) else StoreError(message)


def _batches(
    manifests: list[Manifest], keys_of: Callable[[Manifest], list[str]]
) -> Iterator[list[str]]:
    """The backups' keys, gathered until a batch holds DELETE_BATCH or more.

    A backup's keys are never split between batches: a store that locks objects lists
    the versions of each folder it deletes from, and should list a backup's data once.
    """
    batch: list[str] = []
    for manifest in manifests:
        batch.extend(keys_of(manifest))
        if len(batch) >= DELETE_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def delete_resurrected(store: Store, deleted: list[Manifest]) -> None:
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
            current = Manifest.from_bytes(
                store.get(manifest_key(manifest.name), limit=MAX_MANIFEST_SIZE)
            )
        except (FileNotFoundError, IntegrityError):
            continue
        if current.backup_id == manifest.backup_id:
            store.delete([manifest_key(manifest.name)])


def _outcome(failure: Exception | None) -> tuple[Action, str]:
    if failure is None:
        return "deleted", ""
    return ("locked" if isinstance(failure, ObjectLockedError) else "failed"), str(failure)
