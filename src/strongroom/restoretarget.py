"""Where a restore lands: checking the target, and moving a finished restore into it.

Restores are all or nothing: a restore is extracted into a staging directory beside its
target (on the same file system, so moving it is a rename) and moved into place only once
the whole backup has been read and authenticated; a restore that fails removes its staging
directory, and nothing appears at the target.
"""

from __future__ import annotations

import os
import shutil
import stat
from contextlib import suppress
from pathlib import Path

from .errors import ConfigError

__all__ = ["check_restore_target", "make_parents", "move_into_place", "remove_staging"]


def check_restore_target(target: Path) -> Path:
    """The target as an absolute path, if it does not exist or is an empty directory."""
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


def make_parents(directory: Path) -> list[Path]:
    """Create `directory` and its missing ancestors; return the ones created, outermost first."""
    missing = [d for d in (directory, *directory.parents) if not d.exists()]
    directory.mkdir(parents=True, exist_ok=True)
    return missing[::-1]


def remove_staging(staging: Path) -> None:
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


def move_into_place(staging: Path, target: Path) -> None:
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
