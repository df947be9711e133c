"""S3 Object Lock against moto: backups locked until their retentionDate, and what that refuses.

moto enforces Object Lock on objects written by a single PutObject (not on multipart
uploads), and checks retention against its own clock, which is this machine's: the short
retention dates here expire in real time.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError  # type: ignore[import-untyped]

from strongroom import ConfigError, Engine, ObjectLockedError, StoresConfig, StoreUnavailableError
from strongroom.cli import main
from strongroom.format import STORE_MARKER_KEY, manifest_key, to_epoch_ms
from strongroom_s3.store import S3Store

PASSCODE = "object lock passcode"
OpenS3 = Callable[..., S3Store]
MakeEngine = Callable[..., Engine]


class Clock:
    """The engine's clock, real unless a test moves it ahead of the server's."""

    def __init__(self) -> None:
        self.ahead = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.ahead


@pytest.fixture
def locked_bucket(new_bucket: Callable[..., str], s3_admin: Callable[..., Any]) -> Iterator[str]:
    name = new_bucket(ObjectLockEnabledForBucket=True)
    yield name
    # Whatever a test left locked stays: moto's server goes away with the session.


@pytest.fixture
def clock() -> Clock:
    return Clock()


Vault = Callable[[str], tuple[S3Store, Engine]]


@pytest.fixture
def vault(locked_bucket: str, open_s3: OpenS3, make_engine: MakeEngine, clock: Clock) -> Vault:
    """A store with the object_lock option in the given mode on a bucket with Object Lock,
    and an engine on `clock`."""

    def open_(mode: str) -> tuple[S3Store, Engine]:
        store = open_s3(locked_bucket, object_lock=mode)
        return store, make_engine(store, chunk_size=128 * 1024, clock=clock)

    return open_


@pytest.fixture
def source(tmp_path: Path) -> Path:
    tree = tmp_path / "source"
    tree.mkdir()
    (tree / "ledger.txt").write_bytes(b"entry\n" * 100_000)  # ~600 kB: several chunks
    return tree


def in_seconds(seconds: float) -> datetime:
    """A retentionDate `seconds` from now, whole milliseconds as the manifest keeps it."""
    moment = datetime.now(UTC) + timedelta(seconds=seconds)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def backup_keys(store: S3Store, name: str) -> list[str]:
    """The S3 keys of a backup's chunks and manifest."""
    return [obj.key for obj in store.list(f"data/{name}/")] + [manifest_key(name)]


def versions(store: S3Store, admin: Any, prefix: str = "") -> list[dict[str, Any]]:
    reply = admin.call_s3(
        "list_object_versions", Bucket=store.bucket, Prefix=store.object_key(prefix)
    )
    return [*reply.get("Versions", []), *reply.get("DeleteMarkers", [])]


def same_second(header: datetime, moment: datetime) -> bool:
    """Whether a retain-until date is `moment`; the header may carry whole seconds only."""
    return moment.replace(microsecond=0) <= header <= moment


def wait_until(moment: datetime) -> None:
    time.sleep(max(0.0, (moment - datetime.now(UTC)).total_seconds()) + 0.2)


@pytest.mark.parametrize("mode", ["governance", "compliance"])
def test_every_object_of_a_backup_is_locked_until_its_retention_date(
    mode: str,
    vault: Vault,
    s3_admin: Callable[..., Any],
    source: Path,
    tmp_path: Path,
) -> None:
    store, engine = vault(mode)
    until = in_seconds(3600)
    engine.create(
        "ledger", [source], passcode=PASSCODE, store=store.name, retention_date=to_epoch_ms(until)
    )
    admin = s3_admin()
    keys = backup_keys(store, "ledger")
    assert len(keys) > 3
    for key in keys:
        head = admin.call_s3("head_object", Bucket=store.bucket, Key=store.object_key(key))
        assert head["ObjectLockMode"] == mode.upper(), key
        assert same_second(head["ObjectLockRetainUntilDate"], until), key

    locked = versions(store, admin, "data/") + versions(store, admin, "manifests/")
    assert len(locked) == len(keys)
    for version in locked:  # a compromised host with the store's credentials
        with pytest.raises((ClientError, OSError), match=r"(?i)access ?denied"):
            admin.call_s3(
                "delete_object",
                Bucket=store.bucket,
                Key=version["Key"],
                VersionId=version["VersionId"],
            )
    with pytest.raises(ObjectLockedError, match="Object Lock"):
        store.delete([manifest_key("ledger")])
    with pytest.raises(ObjectLockedError, match=r"locked \(" + mode):
        engine.delete("ledger", store.name)

    assert [info.name for info in engine.list(store.name)] == ["ledger"]
    engine.restore("ledger", tmp_path / "restored", passcode=PASSCODE, store=store.name)
    assert (tmp_path / "restored" / "source" / "ledger.txt").read_bytes() == (
        source / "ledger.txt"
    ).read_bytes()


def test_cleanup_keeps_what_the_store_still_locks_and_deletes_every_version_after_the_date(
    vault: Vault,
    s3_admin: Callable[..., Any],
    clock: Clock,
    source: Path,
    tmp_path: Path,
) -> None:
    store, engine = vault("governance")
    until = in_seconds(4)
    engine.create(
        "short", [source], passcode=PASSCODE, store=store.name, retention_date=to_epoch_ms(until)
    )
    engine.create("forever", [source], passcode=PASSCODE, store=store.name)
    engine.update_retention("short", to_epoch_ms(until), store.name)  # a second manifest version

    clock.ahead = timedelta(hours=1)  # this machine's clock runs ahead of the store's
    early = engine.cleanup([store.name])
    assert [(e.name, e.action) for e in early.entries] == [("short", "locked")]
    assert "Object Lock" in early.entries[0].message
    assert not early.errors and not early.failed
    engine.verify("short", passcode=PASSCODE, store=store.name)

    clock.ahead = timedelta(0)
    wait_until(until)
    late = engine.cleanup([store.name])
    assert [(e.name, e.action) for e in late.entries] == [("short", "deleted")]
    assert not late.errors and late.kept == 1
    assert [info.name for info in engine.list(store.name)] == ["forever"]
    admin = s3_admin()
    assert versions(store, admin, "data/short/") == []
    assert versions(store, admin, manifest_key("short")) == []
    assert versions(store, admin, "pending/") == []
    assert {v["Key"] for v in versions(store, admin, "retention/")} == {
        store.object_key(obj.key) for obj in store.list("retention/forever/")
    }
    engine.restore("forever", tmp_path / "restored", passcode=PASSCODE, store=store.name)


def test_a_later_retention_date_extends_the_locks_and_an_earlier_one_is_refused(
    vault: Vault,
    s3_admin: Callable[..., Any],
    source: Path,
) -> None:
    store, engine = vault("compliance")
    first = in_seconds(3)
    engine.create(
        "ledger", [source], passcode=PASSCODE, store=store.name, retention_date=to_epoch_ms(first)
    )
    later = in_seconds(3600)
    engine.update_retention("ledger", to_epoch_ms(later), store.name)

    admin = s3_admin()
    for key in backup_keys(store, "ledger"):
        head = admin.call_s3("head_object", Bucket=store.bucket, Key=store.object_key(key))
        assert same_second(head["ObjectLockRetainUntilDate"], later), key
    with pytest.raises(ObjectLockedError, match="can only be extended"):
        engine.update_retention("ledger", to_epoch_ms(in_seconds(60)), store.name)
    assert engine.info("ledger", store.name).retention_date == later

    wait_until(first)  # the first date has passed; the extended locks still hold
    with pytest.raises(ObjectLockedError):
        store.delete_prefix("data/ledger/")
    with pytest.raises(ObjectLockedError):
        engine.delete("ledger", store.name)
    engine.verify("ledger", passcode=PASSCODE, store=store.name)


def test_a_backup_without_retention_date_is_not_locked_and_can_be_deleted(
    vault: Vault,
    s3_admin: Callable[..., Any],
    source: Path,
) -> None:
    store, engine = vault("governance")
    engine.create("kept", [source], passcode=PASSCODE, store=store.name)
    for key in backup_keys(store, "kept"):
        head = s3_admin().call_s3("head_object", Bucket=store.bucket, Key=store.object_key(key))
        assert "ObjectLockMode" not in head, key
    engine.delete("kept", store.name)
    assert engine.list(store.name) == []
    assert versions(store, s3_admin()) == []


def test_the_option_on_a_bucket_without_object_lock_fails_clearly_and_leaves_nothing(
    new_bucket: Callable[..., str],
    open_s3: OpenS3,
    make_engine: MakeEngine,
    s3_admin: Callable[..., Any],
    source: Path,
) -> None:
    store = open_s3(new_bucket(), object_lock="governance")
    report = store.validate()
    assert not report.ok and report.checks["object lock"] is False
    assert any("object_lock option asks for governance locks" in e for e in report.errors)

    engine = make_engine(store)
    with pytest.raises(ConfigError, match="has no Object Lock") as caught:
        engine.create(
            "ledger",
            [source],
            passcode=PASSCODE,
            store=store.name,
            retention_date=to_epoch_ms(in_seconds(60)),
        )
    assert "remove the option" in str(caught.value)
    assert s3_admin().find(store.root) == []


def test_adding_a_locking_store_on_a_bucket_without_object_lock_is_refused(
    new_bucket: Callable[..., str],
    s3_endpoint: str,
    s3_admin: Callable[..., Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """It was added, so an operator could believe its backups immutable; backups without a
    retention date then went in unlocked."""
    bucket = new_bucket()
    options = ["--option", f"endpoint_url={s3_endpoint}", "--option", "object_lock=compliance"]
    assert main(["stores", "add", "vault", f"s3://{bucket}/cli", *options]) == 3
    error = capsys.readouterr().err
    assert "'vault'" in error and "cannot lock backups" in error and "has no object lock" in error
    assert "vault" not in StoresConfig.load().stores
    assert s3_admin().find(bucket) == []


def test_a_lock_configuration_that_cannot_be_read_is_not_taken_for_on(
    locked_bucket: str, open_s3: OpenS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A role denied s3:GetBucketObjectLockConfiguration (or refused credentials): validate
    fails the lock check and says why, and adding such a store is refused, rather than
    reporting locks that were never checked."""
    store = open_s3(locked_bucket, object_lock="governance")
    call_s3 = store.fs.call_s3

    def denied(method: str, *args: Any, **kwargs: Any) -> Any:
        if method == "get_object_lock_configuration":
            raise PermissionError("Access Denied")
        return call_s3(method, *args, **kwargs)

    monkeypatch.setattr(store.fs, "call_s3", denied)
    report = store.validate()
    assert report.checks["object lock"] is False
    assert any("could not be read (access denied" in error for error in report.errors)
    with pytest.raises(ConfigError, match="s3:GetBucketObjectLockConfiguration"):
        store.check_object_lock()


def test_validate_reports_the_lock_mode_on_a_bucket_with_object_lock(
    locked_bucket: str, open_s3: OpenS3
) -> None:
    report = open_s3(locked_bucket, object_lock="Compliance").validate()
    assert report.ok, report.errors
    assert report.checks["object lock"] is True
    assert report.capabilities.object_lock
    assert report.to_dict()["objectLock"] == "compliance"


def test_the_command_line_adds_a_locking_store_and_refuses_an_early_delete_with_exit_11(
    locked_bucket: str,
    s3_endpoint: str,
    s3_admin: Callable[..., Any],
    source: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("STRONGROOM_PASSCODE", PASSCODE)
    url = f"s3://{locked_bucket}/cli"
    options = ["--option", f"endpoint_url={s3_endpoint}", "--option", "object_lock=governance"]
    assert main(["stores", "add", "vault", url, *options]) == 0
    # its lock was checked without writing a probe (one a locked bucket could not delete)
    assert [key.rsplit("/", 1)[-1] for key in s3_admin().find(f"{locked_bucket}/cli")] == [
        STORE_MARKER_KEY
    ]
    assert main(["stores", "validate", "vault"]) == 0
    assert "locks backups  governance" in capsys.readouterr().out
    until = str(to_epoch_ms(in_seconds(3600)))
    create = ["create", "--store", "vault", "--name", "ledger", "--retention-date", until]
    monkeypatch.setenv("STRONGROOM_PASSCODE", PASSCODE)  # each command takes it out
    assert main([*create, str(source)]) == 0
    capsys.readouterr()
    assert main(["delete", "--store", "vault", "ledger"]) == 11
    assert "is locked (governance mode)" in capsys.readouterr().err
    assert main(["list", "--store", "vault"]) == 0
    assert "ledger" in capsys.readouterr().out


def test_a_version_listed_outside_the_store_is_never_deleted_with_a_prefix(
    locked_bucket: str,
    open_s3: OpenS3,
    fault_proxy: Callable[[str], Any],
    s3_endpoint: str,
    s3_admin: Callable[..., Any],
) -> None:
    """Attack: a locking store deletes a prefix by deleting every version the server lists
    under it; one listed outside the store's prefix (a hostile server, a man in the middle
    of http://) is not the store's to delete."""
    admin = s3_admin()
    admin.call_s3("put_object", Bucket=locked_bucket, Key="elsewhere/keep", Body=b"theirs")
    theirs = versions_of(admin, locked_bucket, "elsewhere/keep")
    proxy = fault_proxy(s3_endpoint)
    store = open_s3(locked_bucket, endpoint=proxy.url, object_lock="governance")
    store.put("data/gone/0000000000", b"ours")
    ours = versions_of(admin, locked_bucket, store.object_key("data/gone/0000000000"))
    proxy.rewrite = lambda method, path, body: body.replace(
        store.object_key("data/gone/0000000000").encode(), b"elsewhere/keep"
    ).replace(ours[0].encode(), theirs[0].encode())
    store.delete_prefix("data/gone/")
    assert versions_of(admin, locked_bucket, "elsewhere/keep") == theirs


def versions_of(admin: Any, bucket: str, key: str) -> list[str]:
    reply = admin.call_s3("list_object_versions", Bucket=bucket, Prefix=key)
    return [version["VersionId"] for version in reply.get("Versions", [])]


def test_adding_a_locking_store_for_a_missing_bucket_names_the_bucket(
    s3_endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """It said the bucket had no Object Lock, so the operator went to turn it on for a
    bucket that does not exist (a typo in the URL)."""
    options = ["--option", f"endpoint_url={s3_endpoint}", "--option", "object_lock=governance"]
    assert main(["stores", "add", "vault", "s3://strongroom-no-such-bucket/x", *options]) != 0
    error = capsys.readouterr().err
    assert "'strongroom-no-such-bucket' does not exist" in error, error
    assert "no object lock" not in error.lower()
    assert "vault" not in StoresConfig.load().stores


def test_an_unreachable_endpoint_is_not_taken_for_a_bucket_without_object_lock(
    open_s3: OpenS3,
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{probe.getsockname()[1]}"  # closed again: refused
    store = open_s3("strongroom-any", endpoint=endpoint, max_attempts=2, object_lock="governance")
    with pytest.raises(StoreUnavailableError, match=rf"Check that {endpoint} is reachable"):
        store.check_object_lock()


def test_validate_reports_a_missing_bucket_of_a_locking_store(open_s3: OpenS3) -> None:
    """A probe reports every failure instead of stopping, the lock check's too."""
    report = open_s3("strongroom-no-such-bucket", object_lock="governance").validate()
    assert not report.ok and not report.capabilities.object_lock
    assert all(report.checks[check] is False for check in ("write", "object lock"))
    assert any("does not exist" in error for error in report.errors), report.errors
