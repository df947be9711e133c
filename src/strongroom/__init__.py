"""strongroom: encrypted, streaming disaster-recovery backups into pluggable stores."""

from __future__ import annotations

from .backupinfo import BackupInfo, Listing
from .config import EMBEDDED_STORE_NAME, StoresConfig, StoreSpec
from .crypto import KdfParams, Passcode
from .engine import Engine
from .errors import (
    BackupExistsError,
    BackupNotFoundError,
    CommitUncertainError,
    ConfigBusyError,
    ConfigError,
    IntegrityError,
    InterruptedAfterCommit,
    InvalidNameError,
    JobCancelledError,
    JobError,
    JobIncompleteError,
    JobNotFoundError,
    JobStoreUnavailableError,
    JobTimeoutError,
    NewerFormatError,
    ObjectLockedError,
    PasscodeError,
    StoreError,
    StoreMissingError,
    StoreUnavailableError,
    StrongroomError,
    UnknownBackendError,
    UnknownScheduleError,
    UnknownStoreError,
    UnsafeArchiveError,
)
from .jobs import Job, JobHandle, JobManager, JobStatus, Stage
from .keys import WriteKey
from .plugins import BackendOptions, BackendRegistry, get_plugin_manager, hookimpl, hookspec
from .retention import CleanupEntry, CleanupReport
from .store import ObjectInfo, ScanResult, Store, StoreCapabilities, ValidationReport

__all__ = [
    "EMBEDDED_STORE_NAME",
    "BackendOptions",
    "BackendRegistry",
    "BackupExistsError",
    "BackupInfo",
    "BackupNotFoundError",
    "CleanupEntry",
    "CleanupReport",
    "CommitUncertainError",
    "ConfigBusyError",
    "ConfigError",
    "Engine",
    "IntegrityError",
    "InterruptedAfterCommit",
    "InvalidNameError",
    "Job",
    "JobCancelledError",
    "JobError",
    "JobHandle",
    "JobIncompleteError",
    "JobManager",
    "JobNotFoundError",
    "JobStatus",
    "JobStoreUnavailableError",
    "JobTimeoutError",
    "KdfParams",
    "Listing",
    "NewerFormatError",
    "ObjectInfo",
    "ObjectLockedError",
    "Passcode",
    "PasscodeError",
    "ScanResult",
    "Stage",
    "Store",
    "StoreCapabilities",
    "StoreError",
    "StoreMissingError",
    "StoreSpec",
    "StoreUnavailableError",
    "StoresConfig",
    "StrongroomError",
    "UnknownBackendError",
    "UnknownScheduleError",
    "UnknownStoreError",
    "UnsafeArchiveError",
    "ValidationReport",
    "WriteKey",
    "get_plugin_manager",
    "hookimpl",
    "hookspec",
]
