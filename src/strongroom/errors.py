"""The exception tree. Every error a person can cause says what to do next.

```
StrongroomError
├── ConfigError
│   ├── InvalidNameError
│   ├── UnknownStoreError
│   ├── UnknownScheduleError
│   ├── UnknownBackendError
│   └── ConfigBusyError
├── StoreError
│   ├── BackupNotFoundError      (also a FileNotFoundError)
│   ├── BackupExistsError        (also a FileExistsError)
│   ├── ObjectLockedError        (also a PermissionError)
│   └── StoreUnavailableError
├── PasscodeError
├── IntegrityError
├── UnsafeArchiveError
└── JobError
    ├── JobIncompleteError
    ├── JobNotFoundError         (also a LookupError)
    ├── JobStoreUnavailableError (also a ConnectionError)
    └── JobCancelledError
        └── JobTimeoutError
```
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "BackupExistsError",
    "BackupNotFoundError",
    "ConfigBusyError",
    "ConfigError",
    "IntegrityError",
    "InterruptedAfterCommit",
    "InvalidNameError",
    "JobCancelledError",
    "JobError",
    "JobIncompleteError",
    "JobNotFoundError",
    "JobStoreUnavailableError",
    "JobTimeoutError",
    "NewerFormatError",
    "ObjectLockedError",
    "PasscodeError",
    "RestoreDiskError",
    "StoreError",
    "StoreMissingError",
    "StoreUnavailableError",
    "StrongroomError",
    "UnknownBackendError",
    "UnknownScheduleError",
    "UnknownStoreError",
    "UnsafeArchiveError",
    "os_error_text",
]


class StrongroomError(Exception):
    """Base class of every error strongroom raises on purpose."""

    #: The CLI's exit status for this class of error (documented in the README).
    exit_code: int = 1


class ConfigError(StrongroomError):
    """The configuration or an argument is wrong; fix it and run again."""

    exit_code = 3


class InvalidNameError(ConfigError, ValueError):
    """A store, backup or path name is not acceptable."""


class UnknownStoreError(ConfigError, LookupError):
    """No store is configured under that name."""


class UnknownScheduleError(ConfigError, LookupError):
    """No schedule is configured under that name."""


class UnknownBackendError(ConfigError, LookupError):
    """No installed backend handles a store URL's scheme."""


class ConfigBusyError(ConfigError):
    """Another edit of the configuration held its lock too long; nothing is wrong with
    this one, so try it again once that edit ends."""


class StoreError(StrongroomError):
    """The backup store refused or failed an operation."""

    exit_code = 4


class BackupNotFoundError(StoreError, FileNotFoundError):
    """No committed backup has that name in the store."""

    exit_code = 5


class BackupExistsError(StoreError, FileExistsError):
    """A backup with that name already exists; names are never overwritten."""

    exit_code = 6


class ObjectLockedError(StoreError, PermissionError):
    """The store's object lock (S3 Object Lock) keeps the objects until their retain-until
    date; nobody can delete them or shorten it before then."""

    exit_code = 11


class CommitUncertainError(StoreError):
    """A create stopped while its manifest was being written (an interrupt, the store
    failing mid-put), so whether the backup was committed is not known here: a listing
    tells. Everything it wrote is kept, so it is whole if it was committed."""


class InterruptedAfterCommit(KeyboardInterrupt):
    """An interrupt (Ctrl-C, SIGTERM) that came once a create had committed, while it
    tidied up after itself: the backup is listed and whole (a sweep removes what the
    tidying left)."""


class StoreUnavailableError(StoreError, ConnectionError):
    """The store cannot be reached, read or written."""


class StoreMissingError(StoreUnavailableError):
    """The store's place itself is not there (a file store's directory: a disk not
    mounted, a directory moved), so no object of it can be; never "no such object"."""


class PasscodeError(StrongroomError):
    """The passcode is too short, missing, or does not open this backup."""

    exit_code = 7


class IntegrityError(StrongroomError):
    """Stored bytes failed authentication: tampered, truncated, reordered or foreign."""

    exit_code = 8


class NewerFormatError(IntegrityError):
    """A manifest in a format version newer than this strongroom reads: whole, most
    likely, and for a newer strongroom to read (or delete)."""


class RestoreDiskError(StrongroomError):
    """The restore target's file system reported a write error while a restore made its
    files durable; the message says whether anything was restored."""

    exit_code = 12  # as an OSError on a local source or target


class UnsafeArchiveError(StrongroomError):
    """A restore would write outside its target or create a device; nothing was restored."""

    exit_code = 10


class JobError(StrongroomError):
    """A background job could not be run, found or cancelled."""

    exit_code = 9


class JobIncompleteError(JobError):
    """Raised by a job's work that did what it could but not all of it (a cleanup that
    met errors): the job reads FAILED, and keeps `result`, which says what was done."""

    def __init__(self, message: str, result: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.result = result


class JobNotFoundError(JobError, LookupError):
    """No job has that id in this STRONGROOM_HOME's job table."""


class JobStoreUnavailableError(JobError, ConnectionError):
    """The job database cannot be reached; new jobs wait until it is back, running ones
    keep running and record their end then."""


class JobCancelledError(JobError):
    """Raised inside a job's work when someone cancelled it; nothing was committed."""


class JobTimeoutError(JobCancelledError):
    """Raised inside a job's work once it ran past its time-out; the job reads FAILED."""


def os_error_text(exc: OSError) -> str:
    """What an OSError says: the system's text, else its own, else its kind (never an
    empty message)."""
    return exc.strerror or str(exc) or type(exc).__name__
