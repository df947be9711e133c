"""The S3 store on its own: the conformance suite, options, request shapes and errors."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

import strongroom_s3.store
from strongroom import (
    BackupNotFoundError,
    ConfigError,
    Engine,
    StoreSpec,
    StoreUnavailableError,
)
from strongroom.cli import main
from strongroom.format import STORE_MARKER_KEY
from strongroom.plugins import BackendRegistry, build_registry, get_plugin_manager
from strongroom.testing import StoreConformance
from strongroom_s3.store import S3Store

OpenS3 = Callable[..., S3Store]


class TestS3Store(StoreConformance):
    cleanup_backups = 200  # "a cleanup run over a few hundred backups, half expired"

    @pytest.fixture
    def store(self, bucket: str, open_s3: OpenS3) -> S3Store:
        return open_s3(bucket)


# -- registration and configuration ------------------------------------------------------


def test_the_distribution_is_a_strongroom_plugin_for_s3_and_s3a() -> None:
    (entry_point,) = entry_points(group="strongroom", name="s3")
    manager = get_plugin_manager(autoload=False)
    manager.register(entry_point.load())
    assert {"s3", "s3a"} <= set(build_registry(manager).schemes)


def test_an_s3a_url_opens_the_bucket_prefix(
    bucket: str, s3_endpoint: str, s3_admin: Callable[..., Any], s3_registry: BackendRegistry
) -> None:
    store = s3_registry.open(
        StoreSpec("lake", f"s3a://{bucket}/some/prefix/", {"endpoint_url": s3_endpoint})
    )
    store.put("manifests/x", b"payload")
    assert s3_admin().cat_file(f"{bucket}/some/prefix/manifests/x") == b"payload"
    assert [obj.key for obj in store.list("")] == ["manifests/x"]


def test_defaults_and_text_options_from_the_command_line(bucket: str, open_s3: OpenS3) -> None:
    assert open_s3(bucket).concurrency == 8
    store = open_s3(bucket, concurrency="16", max_attempts="3", retry_mode="adaptive")
    assert store.concurrency == 16
    assert store.fs.config_kwargs["retries"] == {"mode": "adaptive", "total_max_attempts": 3}
    assert store.fs.config_kwargs["max_pool_connections"] >= 16


def test_unknown_options_are_refused_with_the_known_ones(s3_registry: BackendRegistry) -> None:
    spec = StoreSpec("offsite", "s3://bucket/p", {"bucket_region": "eu-west-1"})
    with pytest.raises(ConfigError, match=r"'offsite'.*bucket_region.*knows endpoint_url, region"):
        s3_registry.open(spec)


def test_plain_text_credentials_are_refused_without_showing_them(
    s3_registry: BackendRegistry,
) -> None:
    spec = StoreSpec("offsite", "s3://bucket/p", {"key": "AKIAPLAIN", "secret": "plain-secret-1"})
    with pytest.raises(
        ConfigError, match=r'key, secret must not be written.*env = "VARIABLE"'
    ) as err:
        s3_registry.open(spec)
    assert "plain-secret-1" not in str(err.value) and "AKIAPLAIN" not in str(err.value)


def test_referenced_credentials_are_used(
    auth_s3: dict[str, str], monkeypatch: pytest.MonkeyPatch, s3_registry: BackendRegistry
) -> None:
    monkeypatch.setenv("OFFSITE_KEY", auth_s3["key"])
    monkeypatch.setenv("OFFSITE_SECRET", auth_s3["secret"])
    options = {
        "endpoint_url": auth_s3["endpoint"],
        "key": {"env": "OFFSITE_KEY"},
        "secret": {"env": "OFFSITE_SECRET"},
    }
    store = s3_registry.open(StoreSpec("offsite", f"s3://{auth_s3['bucket']}/p", options))
    store.put("manifests/x", b"signed with the referenced key")  # the ambient dummy key is refused
    assert store.get("manifests/x") == b"signed with the referenced key"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_attempts": "0"}, "max_attempts must be a whole number from 1 to 20"),
        ({"concurrency": "lots"}, "concurrency must be a whole number from 1 to 64"),
        ({"concurrency": True}, "concurrency must be a whole number"),
        ({"retry_mode": "legacy"}, "retry_mode is one of standard, adaptive"),
        ({"endpoint_url": "localhost:9000"}, "endpoint_url must be an http:// or https:// URL"),
        ({"region": ""}, "region must be non-empty text"),
        ({"key": {"env": "HOME"}}, "key and secret go together"),
        ({"profile": "x", "key": {"env": "HOME"}, "secret": {"env": "HOME"}}, "either profile"),
    ],
)
def test_bad_option_values_are_refused(
    options: dict[str, Any], message: str, s3_registry: BackendRegistry
) -> None:
    with pytest.raises(ConfigError, match=message):
        s3_registry.open(StoreSpec("offsite", "s3://bucket/p", options))


@pytest.mark.parametrize("url", ["s3:///no-bucket", "s3://b/p?versionId=1", "s3://user@b/p"])
def test_urls_that_do_not_name_a_bucket_are_refused(url: str, s3_registry: BackendRegistry) -> None:
    with pytest.raises(ConfigError, match=r"s3://bucket/prefix"):
        s3_registry.open(StoreSpec("offsite", url))


# -- the requests a store makes ----------------------------------------------------------


def test_a_listing_never_hides_what_another_writer_put_since(
    bucket: str, open_s3: OpenS3, s3_admin: Callable[..., Any]
) -> None:
    """A long-lived process (`serve`) keeps its store: an s3fs listings cache would answer
    later lookups from an old listing, and miss a key a cleanup put meanwhile."""
    store = open_s3(bucket)
    store.put("pending/b/1", b"")
    store.fs.ls(f"{bucket}/strongroom/pending/b")
    s3_admin().pipe_file(f"{bucket}/strongroom/pending/b/1.taken", b"")
    assert store.fs.size(f"{bucket}/strongroom/pending/b/1.taken") == 0
    assert store.exists("pending/b/1.taken")


def test_a_create_is_one_conditional_put_and_an_overwrite_is_not_conditional(
    bucket: str, open_s3: OpenS3, fault_proxy: Callable[[str], Any], s3_endpoint: str
) -> None:
    proxy = fault_proxy(s3_endpoint)
    store = open_s3(bucket, endpoint=proxy.url)
    store.put("manifests/m", b"first")
    store.put("manifests/m", b"second", overwrite=True)
    with pytest.raises(FileExistsError):
        store.put("manifests/m", b"third")
    puts = [(method, headers.get("If-None-Match")) for method, _, headers in proxy.requests]
    assert puts[:3] == [("PUT", "*"), ("PUT", None), ("PUT", "*")]
    assert store.get("manifests/m") == b"second"


def test_a_put_past_s3fs_multipart_threshold_is_still_one_put_object(
    bucket: str,
    open_s3: OpenS3,
    fault_proxy: Callable[[str], Any],
    s3_endpoint: str,
    s3_admin: Callable[..., Any],
) -> None:
    proxy = fault_proxy(s3_endpoint)
    store = open_s3(bucket, endpoint=proxy.url)
    payload = os.urandom(100 * 2**20 + 1)  # s3fs.pipe_file goes multipart from 2 x 50 MiB
    store.put("data/big/id/0000000000", payload)
    assert [(m, p) for m, p, _ in proxy.requests] == [
        ("PUT", f"/{bucket}/strongroom/data/big/id/0000000000")
    ]
    info = s3_admin().info(f"{bucket}/strongroom/data/big/id/0000000000")
    assert "-" not in info["ETag"], "a multipart upload's ETag ends in -<parts>"
    assert store.get("data/big/id/0000000000") == payload


def test_a_create_whose_answer_was_lost_is_not_taken_for_a_conflict(
    bucket: str, open_s3: OpenS3, fault_proxy: Callable[[str], Any], s3_endpoint: str
) -> None:
    proxy = fault_proxy(s3_endpoint)
    proxy.rule = lambda method, path, attempt: "drop" if method == "PUT" and attempt == 1 else None
    store = open_s3(bucket, endpoint=proxy.url)
    store.put("manifests/lost", b"ours")  # S3 stored it; botocore's retry gets 412
    assert [m for m, _, _ in proxy.requests].count("PUT") == 2
    with pytest.raises(FileExistsError):
        store.put("manifests/lost", b"someone else's")
    assert store.get("manifests/lost") == b"ours"


def test_a_large_object_met_by_a_create_is_read_no_further_than_the_create_is_long(
    bucket: str, open_s3: OpenS3, fault_proxy: Callable[[str], Any], s3_endpoint: str
) -> None:
    """Attack: an object of any size planted (or racing in) under a key a create will
    use; telling a retry's own object from it must not read it whole."""
    proxy = fault_proxy(s3_endpoint)
    store = open_s3(bucket, endpoint=proxy.url)
    store.put("manifests/planted", os.urandom(3 * 1024 * 1024))
    with pytest.raises(FileExistsError):
        store.put("manifests/planted", b"ours")
    reads = [headers for method, _, headers in proxy.requests if method == "GET"]
    assert reads, "the conflict is told apart by reading the object"
    ranges = [{k.lower(): v for k, v in headers.items()}.get("range") for headers in reads]
    assert ranges == ["bytes=0-4"] * len(reads)  # len(b"ours") + 1 bytes at most


def test_listing_and_deleting_go_page_by_page(
    bucket: str, open_s3: OpenS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(strongroom_s3.store, "LIST_PAGE", 2)
    monkeypatch.setattr(strongroom_s3.store, "DELETE_BATCH", 2)
    store = open_s3(bucket)
    keys = [f"data/n/id/{i:010d}" for i in range(5)]
    for key in keys:
        store.put(key, b"x")
    assert [obj.key for obj in store.list("data/n")] == keys
    store.delete([*keys[:4], "data/n/id/never-was"])
    assert [obj.key for obj in store.list("data/")] == keys[4:]


@pytest.fixture
def paged(
    bucket: str,
    open_s3: OpenS3,
    fault_proxy: Callable[[str], Any],
    s3_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[Any, S3Store]:
    """A fault proxy, and a store of five objects behind it, listed two to a page."""
    proxy = fault_proxy(s3_endpoint)
    monkeypatch.setattr(strongroom_s3.store, "LIST_PAGE", 2)
    store = open_s3(bucket, endpoint=proxy.url)
    for index in range(5):
        store.put(f"data/n/id/{index:010d}", b"x")
    return proxy, store


def test_a_listing_whose_server_repeats_its_marker_is_unavailable_not_endless(
    paged: tuple[Any, S3Store],
) -> None:
    """Attack on availability: a server (or a man in the middle of http://) answering every
    page with the first page's continuation marker kept list, cleanup and restore paging
    forever while memory grew."""
    proxy, store = paged
    first: list[bytes] = []

    def repeat_first_marker(method: str, path: str, body: bytes) -> bytes:
        found = re.search(rb"<NextContinuationToken>.*?</NextContinuationToken>", body)
        if method != "GET" or not found:
            return body
        first[:] = first or [found.group()]
        return body.replace(found.group(), first[0])

    proxy.rewrite = repeat_first_marker
    with pytest.raises(StoreUnavailableError, match="does not end") as endless:
        store.list("data/")
    assert str(endless.value).count("Store 's3test'") == 1, "said once, not wrapped again"
    proxy.rewrite = lambda method, path, body: re.sub(
        rb"<NextContinuationToken>.*?</NextContinuationToken>", b"", body
    )
    with pytest.raises(StoreUnavailableError, match="does not end"):  # not a KeyError
        store.list("data/")


def test_a_body_cut_off_as_it_is_read_is_the_stores_failure_not_a_traceback(
    paged: tuple[Any, S3Store],
) -> None:
    """aiohttp's ClientPayloadError, once s3fs's retries gave up, escaped as a traceback
    from restore, verify, ls, info and list."""
    proxy, store = paged
    proxy.rule = lambda method, path, attempt: "halfbody" if method == "GET" else None
    with pytest.raises(
        StoreUnavailableError, match=r"^Store 's3test' .*failed on 'data/n/id/"
    ) as cut:
        store.get("data/n/id/0000000001")
    assert "broke while the object was read; check the network" in str(cut.value)


def test_listed_keys_outside_the_store_are_left_out(paged: tuple[Any, S3Store]) -> None:
    """A key the server lists outside the asked prefix is not the store's: never cut into a
    store key (`other/...` became `er/...`). test_s3_object_lock: nor deleted with a prefix."""
    proxy, store = paged
    proxy.rewrite = lambda method, path, body: body.replace(
        b"<Key>strongroom/data/n/id/0000000001</Key>", b"<Key>elsewhere/data/n/id/1</Key>"
    )
    listed = [obj.key for obj in store.list("data/")]
    assert listed == [f"data/n/id/{index:010d}" for index in (0, 2, 3, 4)]


def test_validate_reports_object_lock_only_when_the_bucket_has_it(
    new_bucket: Callable[..., str], open_s3: OpenS3
) -> None:
    locked = open_s3(new_bucket(ObjectLockEnabledForBucket=True)).validate()
    plain = open_s3(new_bucket()).validate()
    assert locked.ok and plain.ok, (locked.errors, plain.errors)
    assert locked.capabilities.object_lock and locked.capabilities.put_if_absent
    assert not plain.capabilities.object_lock


def test_validate_notes_a_versioned_bucket_that_keeps_what_the_store_deletes(
    new_bucket: Callable[..., str],
    open_s3: OpenS3,
    s3_admin: Callable[..., Any],
    s3_endpoint: str,
    fault_proxy: Callable[[str], Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A delete in a versioned bucket only hides the object: the operator hears that the
    data of deleted and expired backups stays, until a lifecycle rule covers the store."""
    bucket, admin = new_bucket(), s3_admin()
    admin.call_s3(
        "put_bucket_versioning", Bucket=bucket, VersioningConfiguration={"Status": "Enabled"}
    )
    store = open_s3(bucket)
    store.put("data/n/id/0000000000", b"chunk")
    store.delete(["data/n/id/0000000000"])
    kept = admin.call_s3("list_object_versions", Bucket=bucket, Prefix="strongroom/data/")
    assert kept.get("Versions"), "the deleted object is still there, as a noncurrent version"

    def notes() -> list[str]:
        report = store.validate()
        assert report.ok, report.errors
        return report.notes

    assert len(notes()) == 1 and "NoncurrentVersionExpiration" in notes()[0]

    def expire(*rules: dict[str, Any]) -> None:
        every = [
            {"ID": f"r{n}", "NoncurrentVersionExpiration": {"NoncurrentDays": 1}, **rule}
            for n, rule in enumerate(rules)
        ]
        admin.call_s3(
            "put_bucket_lifecycle_configuration",
            Bucket=bucket,
            LifecycleConfiguration={"Rules": every},
        )

    expire({"Status": "Enabled", "Filter": {"Prefix": "elsewhere/"}})
    assert notes(), "a rule for another prefix does not expire the store's versions"
    expire({"Status": "Disabled", "Filter": {"Prefix": ""}})
    assert notes(), "nor does a disabled rule"
    tagged = {"And": {"Prefix": "strongroom/", "Tags": [{"Key": "k", "Value": "v"}]}}
    expire({"Status": "Enabled", "Filter": tagged})
    assert notes(), "nor one for tagged objects only (strongroom tags none)"
    expire({"Status": "Enabled", "Filter": {"Prefix": "strong"}})
    assert notes() == []
    # S3 answers a rule that keeps the newest noncurrent versions so (moto drops the field)
    proxy = fault_proxy(s3_endpoint)
    behind = open_s3(bucket, endpoint=proxy.url, max_attempts=1)
    newer = b"</NoncurrentDays><NewerNoncurrentVersions>1</NewerNoncurrentVersions>"
    proxy.rewrite = lambda method, path, body: body.replace(b"</NoncurrentDays>", newer)
    assert behind.validate().notes, "nor one that keeps each key's newest old version (its only)"
    proxy.rewrite = lambda method, path, body: body
    admin.call_s3(
        "put_bucket_versioning", Bucket=bucket, VersioningConfiguration={"Status": "Suspended"}
    )
    assert notes() == [], "suspended, with the rule: still covered"
    admin.call_s3("delete_bucket_lifecycle", Bucket=bucket)
    assert "versioning: Suspended" in notes()[0], "what was written before stays versioned"
    proxy.rule = lambda method, path, attempt: "cut" if "lifecycle" in path else None
    unread = behind.validate()
    assert unread.ok and "its lifecycle rules could not be read" in unread.notes[0]
    assert open_s3(new_bucket()).validate().notes == [], "an unversioned bucket keeps nothing"

    url = f"s3://{bucket}/strongroom"
    assert main(["stores", "add", "kept", url, "--option", f"endpoint_url={s3_endpoint}"]) == 0
    capsys.readouterr()
    assert main(["stores", "validate", "kept"]) == 0
    assert f"note: bucket {bucket!r} keeps old versions" in capsys.readouterr().out
    assert main(["stores", "validate", "kept", "--json"]) == 0
    assert "keeps old versions" in json.loads(capsys.readouterr().out)["notes"][0]


# -- permanent errors fail at once, naming the store ---------------------------------------


def test_a_missing_bucket_fails_at_once_and_is_never_an_empty_store(
    open_s3: OpenS3, fault_proxy: Callable[[str], Any], s3_endpoint: str, tmp_path: Path
) -> None:
    proxy = fault_proxy(s3_endpoint)
    store = open_s3("strongroom-no-such-bucket", endpoint=proxy.url)
    engine = Engine(stores=[store])
    (tmp_path / "f").write_bytes(b"data")
    expected = r"Store 's3test'.*bucket 'strongroom-no-such-bucket' does not exist"
    with pytest.raises(StoreUnavailableError, match=expected):
        engine.create("nightly", [tmp_path / "f"], passcode="a passcode", store="s3test")
    with pytest.raises(StoreUnavailableError, match=expected):
        engine.list("s3test")
    with pytest.raises(StoreUnavailableError, match=expected) as err:
        engine.info("nightly", "s3test")
    assert not isinstance(err.value, BackupNotFoundError)
    requested = [(method, path) for method, path, _ in proxy.requests]
    assert requested and len(set(requested)) == len(requested), "nothing was retried"


def test_an_emptied_prefix_is_refused_until_it_is_started_anew(
    bucket: str,
    s3_endpoint: str,
    s3_admin: Callable[..., Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Adding the store marks its prefix; once everything under it is gone (a lifecycle
    rule, a wrong prefix), a create is refused rather than starting a new store there,
    and so is `stores init`, unless told that it was emptied on purpose (`--anew`)."""
    (tmp_path / "passcode").write_text("a passcode\n")
    (tmp_path / "f").write_bytes(b"data")
    create = ["create", "--store", "offsite", "--name", "nightly", str(tmp_path / "f")]
    create += ["--passcode-file", str(tmp_path / "passcode")]
    add = ["stores", "add", "offsite", f"s3://{bucket}/cli", "--option"]
    assert main([*add, f"endpoint_url={s3_endpoint}"]) == 0
    assert s3_admin().exists(f"{bucket}/cli/{STORE_MARKER_KEY}")
    assert main(create) == 0
    s3_admin().rm(f"{bucket}/cli", recursive=True)
    capsys.readouterr()

    assert main(create) == 4
    refused = capsys.readouterr().err
    assert "holds no backups and no store marker" in refused
    assert "its bucket or container was emptied" in refused and "mount" not in refused
    assert main(["stores", "init", "offsite"]) == 4
    refused = capsys.readouterr().err
    assert "this home has known a strongroom store there" in refused
    assert "endpoint or account" in refused and "mount" not in refused  # a bucket, no disk
    assert not s3_admin().find(f"{bucket}/cli")
    assert main(["stores", "init", "offsite", "--anew"]) == 0
    assert main(create) == 0


def test_rejected_credentials_fail_at_once(
    auth_s3: dict[str, str], open_s3: OpenS3, fault_proxy: Callable[[str], Any]
) -> None:
    proxy = fault_proxy(auth_s3["endpoint"])
    store = open_s3(auth_s3["bucket"], endpoint=proxy.url)  # the ambient dummy credentials
    with pytest.raises(
        StoreUnavailableError, match=r"'s3test'.*not exist in our records.*Check the"
    ):
        store.put("manifests/x", b"x")
    with pytest.raises(StoreUnavailableError, match=r"Check the credentials .*AWS_ACCESS_KEY_ID"):
        store.list("manifests/")
    assert [m for m, _, _ in proxy.requests] == ["PUT", "GET"]


def test_missing_credentials_fail_before_any_request(
    open_s3: OpenS3,
    fault_proxy: Callable[[str], Any],
    s3_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    proxy = fault_proxy(s3_endpoint)
    store = open_s3("strongroom-any", endpoint=proxy.url)
    with pytest.raises(StoreUnavailableError, match=r"'s3test'.*Unable to locate.*Check the cred"):
        store.put("manifests/x", b"x")
    assert proxy.requests == []


def test_an_unreachable_endpoint_is_named(open_s3: OpenS3) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{probe.getsockname()[1]}"  # closed again: refused
    store = open_s3("strongroom-any", endpoint=endpoint, max_attempts=2)
    with pytest.raises(
        StoreUnavailableError, match=rf"'s3test'.*Check that {endpoint} is reachable"
    ):
        store.get("manifests/x")


def test_registering_the_plugin_loads_no_aws_sdk() -> None:
    """Every strongroom command loads the plugin; only an s3:// store may pay for boto."""
    probe = (
        "import sys; from strongroom.plugins import build_registry, get_plugin_manager; "
        "registry = build_registry(get_plugin_manager()); "
        "assert 's3' in registry.schemes, registry.schemes; "
        "print(sorted(m for m in ('botocore', 's3fs', 'aiobotocore') if m in sys.modules))"
    )
    env = {k: v for k, v in os.environ.items() if k != "STRONGROOM_DISABLE_PLUGIN_AUTOLOAD"}
    loaded = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "[]"
