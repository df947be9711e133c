"""S3 backup stores for strongroom: `s3://bucket/prefix` (or `s3a://`), on s3fs.

Every put is a single PutObject, never a multipart upload, so S3 makes it atomic: a
reader sees the whole object or none, and a write that fails leaves nothing behind.
A create sends `If-None-Match: *`, so of two writers racing for a key exactly one wins.

Retries happen in two layers. botocore retries each HTTP request (connection errors,
timeouts, 500/502/503/504, throttling such as 503 SlowDown) with jittered exponential
backoff, `max_attempts` times in all, in `retry_mode` "standard" or "adaptive" (which
also slows the client down while S3 throttles). s3fs wraps each call once more and
retries what botocore cannot see: a response body cut off while it is read, an
unparsable throttling reply, and SlowDown after botocore gave up. Anything else (access
denied, a missing bucket) fails at once.

With the `object_lock` store option (governance or compliance), every object of a backup
is written with S3 Object Lock retention until the backup's retentionDate, in the same
PutObject that writes it (so it is locked from its first moment, on S3 and on moto alike;
moto would not lock a multipart upload, and strongroom never sends one). A later
retentionDate extends the lock (PutObjectRetention). Object Lock needs a versioned bucket,
where a plain delete only hides an object behind a delete marker, so such a store deletes
every version of a key instead: S3 refuses that for a locked version, which the store
reports as ObjectLockedError.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import s3fs  # type: ignore[import-untyped]
from aiohttp import ClientError as AiohttpClientError
from botocore.exceptions import (  # type: ignore[import-untyped]
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from strongroom import (
    ConfigError,
    ObjectInfo,
    ObjectLockedError,
    Store,
    StoreCapabilities,
    StoreError,
    StoreSpec,
    StoreUnavailableError,
    ValidationReport,
)
from strongroom.store import OBJECT_LOCK_OPTION

from . import OPTIONS

__all__ = ["KNOWN_OPTIONS", "S3Store", "open_s3_store"]

#: Every store option the backend understands (OPTIONS says what each carries).
KNOWN_OPTIONS = (*OPTIONS.endpoints, *OPTIONS.settings, "profile", *OPTIONS.secrets)
RETRY_MODES = ("standard", "adaptive")
DEFAULT_CONCURRENCY = 8
DEFAULT_MAX_ATTEMPTS = 5
#: s3fs's own attempts per call, around botocore's (its default of 5 would multiply them).
S3FS_ATTEMPTS = 2
#: Keys per ListObjectsV2 page and per DeleteObjects request (S3's maximum for both).
LIST_PAGE = DELETE_BATCH = 1000
#: What asks for a listing's next page: request field <- the last page's field.
_NEXT_OBJECTS = {"ContinuationToken": "NextContinuationToken"}
_NEXT_VERSIONS = {"KeyMarker": "NextKeyMarker", "VersionIdMarker": "NextVersionIdMarker"}
AUTH_CODES = {
    "AccessDenied",
    "ExpiredToken",
    "InvalidAccessKeyId",
    "InvalidToken",
    "SignatureDoesNotMatch",
}
#: What S3 answers for a bucket that has never had Object Lock on.
NO_LOCK_CONFIGURATION = "ObjectLockConfigurationNotFoundError"
#: A lifecycle rule's filters that leave some objects under its prefix out.
RULE_CONDITIONS = frozenset({"Tag", "Tags", "ObjectSizeGreaterThan", "ObjectSizeLessThan"})
#: What S3 answers for a bucket without lifecycle rules.
NO_LIFECYCLE_CONFIGURATION = "NoSuchLifecycleConfiguration"


class S3Store(Store):
    """A store under a bucket prefix, one S3 request per operation (deletes: per 1,000).

    The generic fsspec calls are avoided where they cost requests (`exists` would list
    after a miss, `list` would swallow a missing bucket as an empty listing).
    """

    capabilities = StoreCapabilities(atomic_put=True, put_if_absent=True, persistent=True)
    concurrency = DEFAULT_CONCURRENCY

    def __init__(
        self,
        name: str,
        url: str,
        fs: Any,
        root: str,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> None:
        super().__init__(name, url, fs, root)
        self.bucket, _, prefix = self.root.partition("/")
        self._key_prefix = f"{prefix}/" if prefix else ""
        self.concurrency = concurrency
        self._max_attempts = max_attempts

    def object_key(self, key: str) -> str:
        """The S3 object key of a store key."""
        return self._key_prefix + key

    def enable_object_lock(self, mode: str) -> None:
        """Write backup objects with Object Lock retention in `mode` (the bucket must have
        Object Lock on: S3 refuses locked writes otherwise, and `validate` checks it)."""
        self.lock_mode = mode

    def put(
        self,
        key: str,
        data: bytes | bytearray | memoryview,
        *,
        overwrite: bool = False,
        retain_until: datetime | None = None,
    ) -> None:
        """One PutObject; a create is conditional on the key being absent (If-None-Match)."""
        body = bytes(data)  # aiohttp warns about (and botocore refuses) other bytes-likes
        request: dict[str, Any] = {} if overwrite else {"IfNoneMatch": "*"}
        if self.lock_mode and retain_until is not None:
            request["ObjectLockMode"] = self.lock_mode.upper()
            request["ObjectLockRetainUntilDate"] = retain_until
        with self.translate_errors(key):
            try:
                self.fs.call_s3(
                    "put_object",
                    Bucket=self.bucket,
                    Key=self.object_key(key),
                    Body=body,
                    **request,
                )
                return
            except OSError as exc:
                if overwrite or not _is_precondition_failure(exc):
                    raise
        if not self.holds(key, body):  # S3 refused the create: the key exists
            raise FileExistsError(key)

    def extend_retention(self, keys: builtins.list[str], until: datetime) -> None:
        """Move the objects' retain-until date to `until` (PutObjectRetention, in parallel).

        S3 refuses to move it earlier, so only a later retentionDate gets here.
        """
        if not self.lock_mode:
            return
        retention = {"Mode": self.lock_mode.upper(), "RetainUntilDate": until}

        def extend(key: str) -> None:
            with self.translate_errors(key):
                self.fs.call_s3(
                    "put_object_retention",
                    Bucket=self.bucket,
                    Key=self.object_key(key),
                    Retention=retention,
                )

        with ThreadPoolExecutor(self.concurrency) as pool:
            builtins.list(pool.map(extend, keys))

    def exists(self, key: str) -> bool:
        with self.translate_errors(key):
            try:
                self.fs.call_s3("head_object", Bucket=self.bucket, Key=self.object_key(key))
            except FileNotFoundError:
                return False
            return True

    def list(self, prefix: str) -> builtins.list[ObjectInfo]:
        """Every object under the folder-like `prefix`; a missing bucket is an error, not empty."""
        folder = prefix if not prefix or prefix.endswith("/") else f"{prefix}/"
        request: dict[str, Any] = {
            "Bucket": self.bucket,
            "Prefix": self.object_key(folder),
            "MaxKeys": LIST_PAGE,
        }
        objects = [
            ObjectInfo(self._store_key(item["Key"]), item["Size"], item["LastModified"])
            for page in self._pages(prefix, "list_objects_v2", request, _NEXT_OBJECTS)
            for item in page.get("Contents", [])
            if item["Key"].startswith(request["Prefix"])
        ]
        return sorted(objects, key=lambda obj: obj.key)

    def delete(self, keys: builtins.list[str]) -> None:
        """Delete in batches of DeleteObjects; keys that do not exist are ignored.

        In a store with `lock_mode` every version of each key goes: the versions are
        listed once per folder of the keys (a backup's chunks share one).
        """
        if not self.lock_mode:
            self._delete_objects([{"Key": self.object_key(key)} for key in keys])
            return
        wanted = {self.object_key(key) for key in keys}
        folders = sorted({key.rpartition("/")[0] + "/" if "/" in key else key for key in keys})
        self._delete_objects([v for f in folders for v in self._versions(f) if v["Key"] in wanted])

    def delete_prefix(self, prefix: str) -> None:
        if self.lock_mode:
            self._delete_objects(self._versions(prefix))
        else:
            super().delete_prefix(prefix)

    def _versions(self, prefix: str) -> builtins.list[dict[str, str]]:
        """Every version and delete marker of the keys starting with `prefix`."""
        request: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.object_key(prefix)}
        return [
            {"Key": item["Key"], "VersionId": item["VersionId"]}
            for page in self._pages(prefix, "list_object_versions", request, _NEXT_VERSIONS)
            for item in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]
            if item["Key"].startswith(request["Prefix"])
        ]

    def _pages(
        self, prefix: str, operation: str, request: dict[str, Any], follow: Mapping[str, str]
    ) -> Iterator[dict[str, Any]]:
        """Every page of a listing, each asked for with the markers of the one before
        (`follow`: request field <- page field). A truncated page that gives no marker, or
        one given before, would list forever: the store is unavailable. (An empty truncated
        page is no such sign: S3 gives them where delete markers pile up.)"""
        seen: set[tuple[Any, ...]] = set()
        with self.translate_errors(prefix):
            while True:
                page: dict[str, Any] = self.fs.call_s3(operation, **request)
                yield page
                if not page.get("IsTruncated"):
                    return
                markers = tuple(page.get(field) for field in follow.values())
                if None in markers or markers in seen:
                    raise StoreUnavailableError(
                        f"Store {self.name!r} ({self.url}): the server's listing of "
                        f"{prefix or 'the store'!r} does not end (a truncated page without a "
                        "new continuation marker). Check endpoint_url: it should name an S3 "
                        "service, reached directly."
                    )
                seen.add(markers)
                request.update(zip(follow, markers, strict=True))

    def _delete_objects(self, objects: builtins.list[dict[str, str]]) -> None:
        """DeleteObjects, 1,000 at a time. Locked versions do not stop the other batches;
        they are reported together at the end as ObjectLockedError."""
        locked: builtins.list[str] = []
        for start in range(0, len(objects), DELETE_BATCH):
            batch = objects[start : start + DELETE_BATCH]
            with self.translate_errors(self._store_key(batch[0]["Key"])):
                reply = self.fs.call_s3(
                    "delete_objects",
                    Bucket=self.bucket,
                    Delete={"Objects": batch, "Quiet": True},
                )
            failed = reply.get("Errors", [])
            refused = [e for e in failed if "object lock" in str(e.get("Message", "")).lower()]
            locked.extend(self._store_key(str(e.get("Key", ""))) for e in refused)
            others = [e for e in failed if e not in refused]
            if others:
                first = others[0]
                raise StoreUnavailableError(
                    f"Store {self.name!r} ({self.url}) could not delete {len(others)} "
                    f"object(s), the first {self._store_key(str(first.get('Key', '')))!r}: "
                    f"{first.get('Code')} {first.get('Message')}. Check that the credentials "
                    f"may delete objects in bucket {self.bucket!r}."
                )
        if locked:
            raise ObjectLockedError(
                f"Store {self.name!r} ({self.url}): {len(locked)} object(s) are protected by "
                f"S3 Object Lock, the first {locked[0]!r}; they can be deleted once their "
                "retain-until date (the backup's retentionDate) has passed."
            )

    def _store_key(self, object_key: str) -> str:
        return object_key[len(self._key_prefix) :]

    def validate(self) -> ValidationReport:
        """The base probes, with `object_lock` claimed only if the bucket really has it on."""
        try:
            enabled = self._object_lock_enabled() is True
        except StoreUnavailableError:
            enabled = False  # the probes say why
        self.capabilities = replace(type(self).capabilities, object_lock=enabled)
        report = super().validate()
        return replace(report, notes=[*report.notes, *self._kept_versions()])

    def _kept_versions(self) -> builtins.list[str]:
        """A note if the bucket keeps what this store deletes: with versioning on (or
        suspended: what was written before stays versioned), a delete only hides an object
        behind a delete marker, so the objects of every deleted and expired backup stay, as
        noncurrent versions, unless a lifecycle rule expires them. (A store with
        `object_lock` deletes every version itself.) A versioning state that cannot be read
        gives no note: the probes say what fails."""
        if self.lock_mode:
            return []
        try:
            status = self.fs.call_s3("get_bucket_versioning", Bucket=self.bucket).get("Status")
        except (OSError, BotoCoreError, AiohttpClientError):
            return []
        if status not in ("Enabled", "Suspended"):
            return []
        try:
            if self._expires_noncurrent():
                return []
            unknown = ""
        except (OSError, BotoCoreError, AiohttpClientError) as exc:
            why = _error_code(exc) or type(exc).__name__
            unknown = f" (its lifecycle rules could not be read: {why})"
        return [
            f"bucket {self.bucket!r} keeps old versions (versioning: {status}), and no "
            f"lifecycle rule is known to expire the noncurrent versions under "
            f"{self._key_prefix or 'its root'!r}{unknown}: the objects of every deleted or "
            "expired backup stay there, and are billed, as noncurrent versions. Add a "
            "lifecycle rule with NoncurrentVersionExpiration (without NewerNoncurrentVersions) "
            "for them, or use a bucket with Object Lock and the "
            f"{OBJECT_LOCK_OPTION} option (its deletes remove every version)"
        ]

    def _expires_noncurrent(self) -> bool:
        """Whether an enabled lifecycle rule expires every noncurrent version of every key
        of this store: its prefix covers the store's, it has no tag or size condition, and
        it keeps no number of newer noncurrent versions (strongroom writes each key once, so
        a deleted object's one old version would be among them)."""
        try:
            reply = self.fs.call_s3("get_bucket_lifecycle_configuration", Bucket=self.bucket)
        except OSError as exc:
            if _error_code(exc) == NO_LIFECYCLE_CONFIGURATION:
                return False
            raise
        for rule in reply.get("Rules", []):
            found = rule.get("Filter", {})
            condition = found.get("And", found)
            expiry = rule.get("NoncurrentVersionExpiration")
            if (
                rule.get("Status") == "Enabled"
                and isinstance(expiry, dict)
                and not expiry.get("NewerNoncurrentVersions")
                and not RULE_CONDITIONS & condition.keys()
                and self._key_prefix.startswith(condition.get("Prefix", rule.get("Prefix", "")))
            ):
                return True
        return False

    def check_object_lock(self) -> None:
        """Ask the bucket whether Object Lock is on before the base check. What cannot be
        read is not taken for on (`stores validate` would report locks never checked)."""
        enabled = self._object_lock_enabled()
        if enabled is None:
            raise ConfigError(
                f"the {OBJECT_LOCK_OPTION} option asks for {self.lock_mode} locks, but the "
                "bucket's Object Lock configuration could not be read (access denied, or "
                "credentials refused), so whether backups would be locked is unknown; allow "
                "s3:GetBucketObjectLockConfiguration, or check the credentials"
            )
        self.capabilities = replace(type(self).capabilities, object_lock=enabled)
        super().check_object_lock()

    def _object_lock_enabled(self) -> bool | None:
        """Whether the bucket has Object Lock on; None if this role may not read that. A
        missing bucket or an endpoint that fails is said as such, not taken for "off"."""
        try:
            reply = self.fs.call_s3("get_object_lock_configuration", Bucket=self.bucket)
        except PermissionError:
            return None
        except (OSError, BotoCoreError, AiohttpClientError) as exc:
            if _error_code(exc) == NO_LOCK_CONFIGURATION:
                return False
            raise self._unavailable("", exc) from exc
        configuration = reply.get("ObjectLockConfiguration", {})
        return bool(configuration.get("ObjectLockEnabled") == "Enabled")

    @contextmanager
    def translate_errors(self, key: str) -> Iterator[None]:
        """Turn s3fs's and botocore's failures into StoreUnavailableError saying what to check.

        A missing key stays FileNotFoundError; a missing bucket (which s3fs also reports
        as FileNotFoundError) does not, so it is never mistaken for an empty store.
        """
        try:
            yield
        except (FileExistsError, StoreError):  # StoreError: already said (a listing's end)
            raise
        except FileNotFoundError as exc:
            if _error_code(exc) != "NoSuchBucket":
                raise
            raise self._unavailable(key, exc) from exc
        except (OSError, BotoCoreError, AiohttpClientError) as exc:  # aiohttp: a body cut off
            if _error_code(exc) == "InvalidRequest" and "ObjectLockConfiguration" in str(exc):
                raise ConfigError(
                    f"Store {self.name!r} ({self.url}) has the object_lock option, but bucket "
                    f"{self.bucket!r} has no Object Lock. Turn Object Lock on for the bucket "
                    "(aws s3api put-object-lock-configuration), or remove the option."
                ) from exc
            raise self._unavailable(key, exc) from exc

    def _unavailable(self, key: str, exc: BaseException) -> StoreUnavailableError:
        """The failure said with what to check; `key` '' for the bucket itself."""
        where = f" on {key!r}" if key else ""
        return StoreUnavailableError(
            f"Store {self.name!r} ({self.url}) failed{where}: {str(exc).rstrip('.')}. "
            f"{self._hint(exc)}, "
            f"then run 'strongroom stores validate {self.name}'."
        )

    def _hint(self, exc: BaseException) -> str:
        code = _error_code(exc)
        if code == "NoSuchBucket":
            return (
                f"The bucket {self.bucket!r} does not exist at this endpoint; create it or "
                "correct the store's URL"
            )
        if isinstance(exc, PermissionError | NoCredentialsError | PartialCredentialsError) or (
            code in AUTH_CODES
        ):
            return (
                "Check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
                "~/.aws, the store's profile or key/secret options, or the instance role) and "
                f"that they may read, write, list and delete in bucket {self.bucket!r}"
            )
        if isinstance(exc, ProfileNotFound):
            return "Check the store's profile option against the profiles in your AWS config"
        endpoint = self.fs.endpoint_url or "AWS S3"
        if isinstance(exc, BotoConnectionError | HTTPClientError | TimeoutError):
            return f"Check that {endpoint} is reachable and the endpoint_url and region are right"
        if isinstance(exc, AiohttpClientError):  # a body cut off, after s3fs's own tries
            return (
                f"The connection to {endpoint} broke while the object was read; check the "
                "network (and any proxy on the way), then try again"
            )
        return f"{endpoint} kept failing after {self._max_attempts} attempts; try again later"


def open_s3_store(spec: StoreSpec) -> S3Store:
    """Build an S3 store from a configured store's URL and (resolved) options."""
    bucket, prefix = _bucket_and_prefix(spec)
    options = spec.options
    unknown = sorted(set(options) - set(KNOWN_OPTIONS))
    if unknown:
        raise ConfigError(
            f"Store {spec.name!r}: unknown option(s) {', '.join(unknown)}; "
            f"the S3 backend knows {', '.join(KNOWN_OPTIONS)}."
        )
    credentials = {name: _text(spec, name) for name in OPTIONS.secrets if name in options}
    if ("secret" in credentials) != ("key" in credentials) or (
        "token" in credentials and "key" not in credentials
    ):
        raise ConfigError(
            f"Store {spec.name!r}: key and secret go together (token only with both); "
            "or leave all three out to use the standard AWS credential chain."
        )
    profile = _text(spec, "profile") if "profile" in options else None
    if profile and credentials:
        raise ConfigError(f"Store {spec.name!r}: give either profile or key/secret, not both.")
    endpoint_url = _text(spec, "endpoint_url") if "endpoint_url" in options else None
    if endpoint_url and not endpoint_url.startswith(("http://", "https://")):
        raise ConfigError(
            f"Store {spec.name!r}: endpoint_url must be an http:// or https:// URL, "
            f"for example https://s3.eu-west-1.amazonaws.com; got {endpoint_url!r}."
        )
    concurrency = _integer(spec, "concurrency", DEFAULT_CONCURRENCY, 1, 64)
    max_attempts = _integer(spec, "max_attempts", DEFAULT_MAX_ATTEMPTS, 1, 20)
    retry_mode = _text(spec, "retry_mode") if "retry_mode" in options else RETRY_MODES[0]
    if retry_mode not in RETRY_MODES:
        raise ConfigError(
            f"Store {spec.name!r}: retry_mode is one of {', '.join(RETRY_MODES)}; "
            f"got {retry_mode!r}."
        )
    region = _text(spec, "region") if "region" in options else None
    fs = s3fs.S3FileSystem(
        skip_instance_cache=True,
        use_listings_cache=False,  # other writers change the bucket; never trust a listing
        endpoint_url=endpoint_url,
        key=credentials.get("key"),
        secret=credentials.get("secret"),
        token=credentials.get("token"),
        profile=profile,
        client_kwargs={"region_name": region} if region else {},
        config_kwargs={
            # total_max_attempts is what AWS config files and AWS_MAX_ATTEMPTS call max_attempts
            "retries": {"mode": retry_mode, "total_max_attempts": max_attempts},
            "max_pool_connections": max(10, concurrency),
        },
        max_concurrency=1,  # one GET per object: the engine runs the transfers in parallel
    )
    fs.retries = S3FS_ATTEMPTS
    root = f"{bucket}/{prefix}" if prefix else bucket
    return S3Store(
        spec.name, spec.url, fs, root, concurrency=concurrency, max_attempts=max_attempts
    )


def _bucket_and_prefix(spec: StoreSpec) -> tuple[str, str]:
    parts = urlsplit(spec.url)
    if not parts.netloc or parts.query or parts.fragment or any(c in parts.netloc for c in "@:"):
        raise ConfigError(
            f"Store {spec.name!r}: {spec.url!r} is not an S3 store URL; write it as "
            "s3://bucket or s3://bucket/prefix (a custom endpoint goes in the endpoint_url option)."
        )
    return parts.netloc, parts.path.strip("/")


def _text(spec: StoreSpec, name: str) -> str:
    value = spec.options[name]
    if not isinstance(value, str) or not value:
        raise ConfigError(f"Store {spec.name!r}: option {name} must be non-empty text.")
    return value


def _integer(spec: StoreSpec, name: str, default: int, low: int, high: int) -> int:
    """An integer option; the CLI's --option gives text, TOML gives numbers."""
    value = spec.options.get(name, default)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(
            f"Store {spec.name!r}: option {name} must be a whole number from {low} to {high}."
        )
    return value


def _error_code(exc: BaseException) -> str:
    """The S3 error code behind an s3fs exception (s3fs keeps the ClientError as the cause)."""
    cause = exc if isinstance(exc, ClientError) else exc.__cause__
    if isinstance(cause, ClientError):
        error: Mapping[str, Any] = cause.response.get("Error", {})
        return str(error.get("Code", ""))
    return ""


def _is_precondition_failure(exc: OSError) -> bool:
    return isinstance(exc, FileExistsError) or _error_code(exc) == "PreconditionFailed"
