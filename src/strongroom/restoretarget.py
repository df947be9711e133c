"""Where a restore lands: checking the target, and moving a finished restore into it.

Restores are all or nothing: a restore is extracted into a staging directory on the
target's file system and moved into place only once the whole backup has been read and
authenticated; a restore that fails removes its staging directory, and nothing appears
at the target. A target that does not exist yet gets its staging directory beside it and
becomes it by one rename; an existing empty directory (a mount point, say) holds its own,
whose entries move up into it.

From its check to its move, the target is held by descriptors (`Landing`): its parent,
and the target itself if it exists. Every later step is relative to them and never
follows a link, so a link planted at the target's path while the restore runs sends
nothing elsewhere, and whatever appears there meanwhile is never overwritten.

A restore that is killed (SIGKILL, the OOM killer, a power cut) cannot remove its staging
directory. It holds a lock on it while it runs, which the kernel drops when the process
dies, so the next restore to the same target knows a staging directory nobody holds for
an abandoned one, removes it, and is not refused by it; one still held is a restore
running into the same target.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import stat
from contextlib import suppress
from pathlib import Path
from types import TracebackType

from .errors import ConfigError
from .libc import exists_at, rename_noreplace

__all__ = ["Landing", "check_restore_target"]

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: A staging directory's name: in an existing target, or beside a new one (its name first).
_STAGING = ".strongroom-"
_STAGING_ID = re.compile(r"[0-9a-f]{16}")


def check_restore_target(given: str | os.PathLike[str]) -> Path:
    """The target as an absolute path, if it does not exist or is an empty directory."""
    if not os.fspath(given):  # Path("") would be the current directory
        raise ConfigError("The restore target is empty; give the directory to restore into.")
    target = Path(given).absolute()
    if target.is_symlink():
        raise ConfigError(
            f"The restore target {str(target)!r} is a symbolic link; give the directory it "
            "points to, or a new one."
        )
    if target.exists() and not target.is_dir():
        raise _not_a_directory(target)
    if target.is_dir():
        with suppress(FileNotFoundError):  # the parents of a new target are made later
            parent = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                if (fd := _open_empty_directory(parent, target)) >= 0:
                    os.close(fd)
            finally:
                os.close(parent)
    return target


class Landing:
    """One restore's target, held by descriptors: `staging` is the directory to extract
    into; `move_into_place` finishes the restore, and leaving without it removes the
    staging directory and any parent directories this restore created."""

    def __init__(self, target: Path) -> None:
        self.path = check_restore_target(target)
        self._created = _make_parents(self.path.parent)
        self._parent = self._target = self.staging = -1
        self._staging_name = ""  # set while the directory is made, and once it is
        self._moved = False
        try:
            self._parent = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            self._target = _open_empty_directory(self._parent, self.path)
            prefix = f".{self.path.name}{_STAGING}" if self._target < 0 else _STAGING
            if self._target < 0:
                _remaining(self._parent, os.listdir(self._parent), prefix, self.path)
            self._staging_name = f"{prefix}{os.urandom(8).hex()}"
            try:
                os.mkdir(self._staging_name, 0o700, dir_fd=self._within)
            except OSError:
                self._staging_name = ""  # not made: nothing to remove
                raise
            self.staging = os.open(self._staging_name, _DIRECTORY, dir_fd=self._within)
            _lock(self.staging, self.path)  # held until the restore ends
        except BaseException as exc:
            self.__exit__(None, None, None)
            if isinstance(exc, OSError) and exc.filename is not None:
                exc.filename = str(self.path)  # the target, not the staging name made for it
            raise

    def __enter__(self) -> Landing:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not self._moved:
            if self._staging_name:
                _remove_tree(self._within, self._staging_name)
            for parent in reversed(self._created):
                with suppress(OSError):
                    parent.rmdir()
        for fd in (self.staging, self._target, self._parent):
            if fd >= 0:
                os.close(fd)
        self.staging = self._target = self._parent = -1

    @property
    def _within(self) -> int:
        """The directory that holds the staging directory."""
        return self._parent if self._target < 0 else self._target

    def move_into_place(self) -> None:
        """The staging directory becomes the target (one rename), or its entries move
        into the existing target; something that appeared there meanwhile is a
        ConfigError, and nothing is moved."""
        try:
            if self._target < 0:
                os.fchmod(self.staging, 0o777 & ~_umask())
                rename_noreplace(self._parent, self._staging_name, self._parent, self.path.name)
            else:
                _move_entries(self.staging, self._target)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                raise
            raise ConfigError(
                f"Something appeared at the restore target {str(self.path)!r} while the "
                "restore ran; nothing was restored. Restore again into a new directory."
            ) from None
        self._moved = True
        if self._target >= 0:
            with suppress(OSError):  # empty now; left behind, it is only an empty directory
                os.rmdir(self._staging_name, dir_fd=self._target)


def _not_a_directory(target: Path) -> ConfigError:
    return ConfigError(
        f"The restore target {str(target)!r} exists and is not a directory; choose a new one."
    )


def _not_empty(target: Path) -> ConfigError:
    return ConfigError(
        f"The restore target {str(target)!r} is not empty; restore into a new or empty "
        "directory so nothing there is overwritten."
    )


def _remaining(directory: int, names: list[str], prefix: str, target: Path) -> list[str]:
    """`names` (in `directory`) less the staging directories, named `prefix` and an id,
    that restores to `target` left when they were killed: each is removed, as no restore
    holds its lock. One that a restore holds refuses this one."""
    return [name for name in names if not _removed_if_abandoned(directory, name, prefix, target)]


def _removed_if_abandoned(directory: int, name: str, prefix: str, target: Path) -> bool:
    """Remove `name` if it is a staging directory that no restore holds (never through a
    link: a link of that name is not one); whether it was removed."""
    if not (name.startswith(prefix) and _STAGING_ID.fullmatch(name[len(prefix) :])):
        return False
    try:
        fd = os.open(name, _DIRECTORY, dir_fd=directory)
    except OSError:
        return False
    try:
        _lock(fd, target)
        _remove_tree(directory, name)
    finally:
        os.close(fd)
    return not exists_at(name, directory)


def _lock(staging: int, target: Path) -> None:
    """Hold a staging directory, or refuse the restore if another one holds it."""
    try:
        fcntl.flock(staging, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ConfigError(
            f"Another restore is writing into the restore target {str(target)!r} now; "
            "wait for it to finish, or restore into another new or empty directory."
        ) from None


def _make_parents(directory: Path) -> list[Path]:
    """Create `directory` and its missing ancestors; return the ones created, outermost first."""
    missing = [d for d in (directory, *directory.parents) if not d.exists()]
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        found = next(d for d in (directory, *directory.parents) if d.exists())
        raise ConfigError(
            f"The restore target cannot be made under {str(found)!r}: it is not a directory. "
            "Choose a target in a directory."
        ) from None
    return missing[::-1]


def _open_empty_directory(parent: int, target: Path) -> int:
    """The target directory, opened without following a link, if it is there and empty
    (a fresh disk mounted there holds only lost+found); -1 if it is not there."""
    try:
        fd = os.open(target.name, _DIRECTORY, dir_fd=parent)
    except FileNotFoundError:
        return -1
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise _not_a_directory(target) from None
        raise
    try:
        names = _remaining(fd, os.listdir(fd), _STAGING, target)
        fresh = names == ["lost+found"] and os.fstat(fd).st_dev != os.fstat(parent).st_dev
        if names and not fresh:  # a new file system's lost+found, at a mount point, is not data
            raise _not_empty(target)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _move_entries(source: int, target: int) -> None:
    """Move every entry of `source` into `target`, replacing nothing; if one cannot be
    moved, those already moved go back, so it is all or nothing."""
    moved: list[str] = []
    try:
        for name in sorted(os.listdir(source)):
            try:
                rename_noreplace(source, name, target, name)
            finally:  # moved, even if an interrupt came between the rename and this line
                if not exists_at(name, source):
                    moved.append(name)
    except BaseException:
        for name in reversed(moved):
            with suppress(OSError):
                os.rename(name, name, src_dir_fd=target, dst_dir_fd=source)
        raise


def _remove_tree(parent: int, name: str) -> None:
    """Remove a failed restore's staging directory whole, though directories in it may
    already be read-only (as the backup had them): each is made writable again first,
    by descriptor, never through a link."""
    with suppress(OSError):
        for _, names, _, fd in os.fwalk(name, dir_fd=parent):  # names holds links too
            for entry in names:
                with suppress(OSError):
                    _make_writable(entry, fd)
    shutil.rmtree(name, dir_fd=parent, ignore_errors=True)


def _make_writable(name: str, parent: int) -> None:
    """Give the directory `name` in `parent` its owner's rwx, if it is a directory and not
    a link (chmod by name would follow a link; an O_PATH descriptor never does)."""
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    try:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            os.chmod(f"/proc/self/fd/{fd}", 0o700)  # fchmod refuses O_PATH descriptors
    finally:
        os.close(fd)


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
