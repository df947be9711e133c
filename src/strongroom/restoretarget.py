"""Where a restore lands: checking the target, and moving a finished restore into it.

Restores are all or nothing: a restore is extracted into a staging directory on the
target's file system and moved into place only once the whole backup has been read and
authenticated, and written to the disk (a write-back error the file system reports then
fails it); a restore that fails removes its staging directory, and nothing appears at the
target. The move is made durable before the restore returns. A target that does not
exist yet gets its staging directory beside it and becomes it by one rename; an existing
empty directory (a mount point, say) holds its own, whose entries move up into it.

From its check to its move, the target is held by descriptors (`Landing`): its parent,
and the target itself if it exists. Every later step is relative to them and never
follows a link, so a link planted at the target's path while the restore runs sends
nothing elsewhere, and whatever appears there meanwhile is never overwritten.

A restore that is killed (SIGKILL, the OOM killer, a power cut) cannot remove its staging
directory, which would make its empty target refuse every later restore as not empty. A
restore holds a lock on its staging directory while it runs, which the kernel drops when
the process dies; so a restore into a target that holds nothing but such directories,
this user's and held by nobody, removes them first. One still held means another restore
is writing there. Where the file system cannot lock (flock(2) on NFS needs a descriptor
open for writing), nothing is removed. Older versions named their staging directories
without `restore-` and held no lock: those are never removed, only named in the refusal.
Beside a new target nothing is removed (its parent may be shared), only named by the
next restore there; except in a directory only strongroom restores into, the admin API's
(`remove_killed_restores`). Into an existing target the entries move one rename each: a
kill between two leaves some in the target and the rest in the staging directory, which
the next restore refuses, saying so, and leaves as it is.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import shutil
import stat
from contextlib import suppress
from pathlib import Path
from types import TracebackType

from .errors import ConfigError, RestoreDiskError
from .libc import exists_at, rename_noreplace
from .writeback import flush_file_system, syncfs_runs

logger = logging.getLogger("strongroom")

__all__ = ["Landing", "check_restore_target", "remove_killed_restores"]

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: A staging directory's name: in an existing target, or beside a new one (its name first).
_STAGING = ".strongroom-restore-"
_ABANDONED = re.compile(r"\.strongroom-restore-[0-9a-f]{16}")
#: A staging directory beside a new target (`_staging_name`).
_ABANDONED_BESIDE = re.compile(r"\..+\.strongroom-restore-[0-9a-f]{16}", re.DOTALL)
#: What versions before the lock named theirs: never removed, since nothing tells whether
#: such a restore is still running.
_UNLOCKED = re.compile(r"\.strongroom-[0-9a-f]{16}")


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
        self._staging_name = ""
        self._own = False  # whether `staging` is the directory this restore made and holds
        self._moved = False
        try:
            self._parent = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            self._target = _open_empty_directory(self._parent, self.path)
            self._staging_name = _staging_name(self.path.name if self._target < 0 else "")
            os.mkdir(self._staging_name, 0o700, dir_fd=self._within)
            try:
                self.staging = os.open(self._staging_name, _DIRECTORY, dir_fd=self._within)
            except OSError:
                raise _raced(self.path) from None
            _lock(self.staging, self.path)  # held until the restore ends
            self._claim_earlier_write_errors()
            if not (
                _made_here(self.staging)
                and _still_named(self.staging, self._staging_name, self._within)
            ):
                raise _raced(self.path)  # taken for abandoned, or swapped for another
            self._own = True
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
        try:
            if not self._moved:
                if self._own and self._still_staging():
                    _remove_tree(self._within, self._staging_name, self.staging)
                for parent in reversed(self._created):
                    with suppress(OSError):
                        parent.rmdir()
        finally:
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
        ConfigError, and nothing is moved. What was restored is on the disk before it
        moves, and the move before this returns: a restore that returned survives a power
        cut. A write error the file system reports meanwhile is a RestoreDiskError."""
        self._flush("while the restore was written; nothing was restored", "then restore again")
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
        self._moved = True  # from here on, what is at the target is the restore: kept
        if self._target < 0:
            with suppress(OSError):  # only a warning: never a reason to fail a restore in place
                self._name_leftovers()
        else:
            with suppress(OSError):  # empty now; left behind, it is only an empty directory
                os.rmdir(self._staging_name, dir_fd=self._target)
        self._flush(  # the names, modes and moves: syncfs commits them on every file system
            f"making it durable; the restore is at {str(self.path)!r}",
            "if in doubt, remove it and restore again",
        )

    def _flush(self, when: str, then: str) -> None:
        """flush_file_system through the staging directory's descriptor (which takes each
        write error once): RestoreDiskError saying `when` it failed, and what to do `then`."""
        try:
            flush_file_system(self.staging)
        except OSError as exc:
            raise RestoreDiskError(
                f"The file system of the restore target {str(self.path)!r} reported a write "
                f"error ({exc.strerror}) {when}. Check the disk (the kernel log) and its free "
                f"space; {then}."
            ) from exc

    def _still_staging(self) -> bool:
        """Whether the staging directory still has its staging name, so removing it cannot
        take a restore in place: one interrupted as its rename returned is, and so may be
        one whose check fails (a failing disk: the staging tree is then left, as a killed
        restore's)."""
        try:
            return _still_named(self.staging, self._staging_name, self._within)
        except OSError:
            return False

    def _claim_earlier_write_errors(self) -> None:
        """Take, through the new staging directory's descriptor, a write error the file
        system had reported to nobody yet (another program's, weeks old): the kernel gives
        it to the first flush through a newly opened descriptor, which would fail this
        restore at its end for a file that is none of its own."""
        if not syncfs_runs():
            return  # nothing to take: `sync` tells of no error
        try:
            flush_file_system(self.staging)
        except OSError as exc:
            logger.warning(
                "The file system of the restore target %s had reported a write error (%s) "
                "before this restore began; the restore goes on.",
                self.path,
                exc.strerror,
            )

    def _name_leftovers(self) -> None:
        """Warn of what killed restores of this new target left beside it (not removed here:
        its parent may be shared; `remove_killed_restores` is for the admin API's), which
        may hold a large part of a backup."""
        prefix = _beside_prefix(self.path.name)
        left = sorted(
            name
            for name in os.listdir(self._parent)
            if name.startswith(prefix) and _ABANDONED.fullmatch(name[len(prefix) :])
        )
        for name in left:
            logger.warning(
                "%s, beside the restore target, is the staging directory of an earlier "
                "restore there that was killed; if no restore is running, remove it.",
                self.path.parent / name,
            )


def remove_killed_restores(directory: Path) -> list[str]:
    """Remove the staging directories that killed restores of new targets left in
    `directory`, and return their names: for a directory that only strongroom restores
    into (the admin API's, a new target each time, so no later restore would name them).
    Each must be one a killed restore of this user left (`_hold_abandoned`); one that a
    running restore holds, or that is not clearly a restore's, stays."""
    try:
        parent = os.open(directory, _DIRECTORY)
    except OSError:  # none yet, or not a directory: nothing to remove
        return []
    removed = []
    try:
        for name in os.listdir(parent):
            if not _ABANDONED_BESIDE.fullmatch(name):
                continue
            try:
                held = _hold_abandoned(parent, name, directory / name)
            except ConfigError:  # a restore is writing there now
                continue
            if held >= 0:
                try:
                    _remove_tree(parent, name, held)
                finally:
                    os.close(held)
                removed.append(name)
    finally:
        os.close(parent)
    return removed


def _not_a_directory(target: Path) -> ConfigError:
    return ConfigError(
        f"The restore target {str(target)!r} exists and is not a directory; choose a new one."
    )


def _not_empty(
    target: Path, names: list[str], *, shared: bool = False, beside: list[str] | None = None
) -> ConfigError:
    """The refusal of a target that holds `names`; `shared`: one that others can write to,
    so a staging directory there may be anybody's; `beside`: staging directories found
    with them, as a restore killed while it moved its entries into the target leaves it."""
    staging = sorted(n for n in names if _ABANDONED.fullmatch(n) or _UNLOCKED.fullmatch(n))
    if staging:
        whose = (
            "others can write to the target, so it may not be this user's"
            if shared
            else "another user's, an older strongroom's, or on a file system that cannot lock it"
        )
        return ConfigError(
            f"The restore target {str(target)!r} holds {staging[0]!r}, the staging "
            f"directory of a restore that was killed or is still running ({whose}). If no "
            "restore is running, remove it, then restore again."
        )
    if beside:
        left = ", ".join(repr(name) for name in sorted(beside))
        return ConfigError(
            f"The restore target {str(target)!r} is not empty: it holds {left}, the staging "
            "directory of a restore that was killed (or is still running), beside other "
            "entries. A restore killed while it moved its files into place leaves part of "
            "them in the target and the rest there; one killed earlier leaves only part of "
            "a backup there, and the other entries are not its. Nothing was removed. If no "
            "restore is running, empty the target (or remove that directory and what that "
            "restore put there), then restore again."
        )
    return ConfigError(
        f"The restore target {str(target)!r} is not empty; restore into a new or empty "
        "directory so nothing there is overwritten."
    )


def _staging_name(beside: str) -> str:
    """A fresh staging directory's name: in an existing target, or beside a new one named
    `beside` (as much of its name as leaves room for the rest in 255 bytes)."""
    fresh = f"{_STAGING}{os.urandom(8).hex()}"
    return f"{_beside_prefix(beside)}{fresh}" if beside else fresh


def _beside_prefix(beside: str) -> str:
    """What a staging directory beside the new target `beside` is named before its own
    part (`_STAGING` and the random hex)."""
    kept = os.fsencode(beside)[:200].decode(errors="ignore")  # a whole last character
    return f".{kept}"


def _made_here(staging: int) -> bool:
    """Whether the directory open as `staging` is the one this restore just made: this
    user's, 0700 as made (less what the umask takes), and empty. Anyone who can write to
    its parent could have put another of theirs at its name before it was opened."""
    status = os.fstat(staging)
    made = stat.S_IMODE(status.st_mode) == 0o700 & ~_umask()
    return status.st_uid == os.geteuid() and made and not os.listdir(staging)


def _raced(target: Path) -> ConfigError:
    return ConfigError(
        f"Another restore into {str(target)!r} started at the same moment; nothing was "
        "restored. Restore again once it has finished."
    )


def _remove_abandoned(directory: int, names: list[str], target: Path) -> None:
    """Remove these staging directories in `directory`, all or none: each must be one a
    killed restore of this user left (`_hold_abandoned`), or the restore is refused."""
    held: list[tuple[str, int]] = []
    try:
        for name in names:
            fd = _hold_abandoned(directory, name, target)
            if fd < 0:
                raise _not_empty(target, [name])
            held.append((name, fd))
        for name, fd in held:
            _remove_tree(directory, name, fd)
    finally:
        for _, fd in held:
            os.close(fd)
    if left := [name for name in names if exists_at(name, directory)]:
        raise _not_empty(target, left)


def _only_ours(directory: int) -> bool:
    """Whether only this user can change the entries of `directory`: theirs, and not
    writable by its group or others."""
    status = os.fstat(directory)
    return status.st_uid == os.geteuid() and not status.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _hold_abandoned(directory: int, name: str, target: Path) -> int:
    """`name` opened and locked, if it is a staging directory that a restore of this user
    left when it was killed: a directory (not through a link), mode 0700 as a restore
    makes it (moving another's directory in needs write permission on it, so this one
    cannot have been), on the target's file system (not a mount point), held by no
    restore, and still the one at that name; -1 if not. A restore holding it refuses."""
    try:
        fd = os.open(name, _DIRECTORY, dir_fd=directory)
    except OSError:
        return -1
    try:
        status = os.fstat(fd)
        abandoned = (
            status.st_uid == os.geteuid()
            and stat.S_IMODE(status.st_mode) == 0o700
            and status.st_dev == os.fstat(directory).st_dev
            and _lock(fd, target)
            and _still_named(fd, name, directory)
        )
    except BaseException:
        os.close(fd)
        raise
    if not abandoned:
        os.close(fd)
        return -1
    return fd


def _lock(staging: int, target: Path) -> bool:
    """Hold a staging directory; False where the file system cannot lock it. Refuses the
    restore if another one holds it."""
    try:
        fcntl.flock(staging, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ConfigError(
            f"Another restore is writing into the restore target {str(target)!r} now; "
            "wait for it to finish, or restore into another new or empty directory."
        ) from None
    except OSError:
        return False
    return True


def _still_named(fd: int, name: str, directory: int) -> bool:
    """Whether `name` in `directory` is still the directory open as `fd`."""
    try:
        found = os.stat(name, dir_fd=directory, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return os.path.samestat(found, os.fstat(fd))


def _make_parents(directory: Path) -> list[Path]:
    """Create `directory` and its missing ancestors; return the ones created, outermost first."""
    missing = [d for d in (directory, *directory.parents) if not d.exists()]
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # not "File exists", but where and why
        found = next(d for d in (directory, *directory.parents) if os.path.lexists(d))
        what = "it is a link to nothing" if not found.exists() else "it is not a directory"
        raise NotADirectoryError(errno.ENOTDIR, what, str(found)) from None
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
        names = os.listdir(fd)
        abandoned = [name for name in names if _ABANDONED.fullmatch(name)]
        others = [name for name in names if name not in abandoned]
        fresh = others == ["lost+found"] and os.fstat(fd).st_dev != os.fstat(parent).st_dev
        if others and not fresh:  # a new file system's lost+found, at a mount point, is not data
            raise _not_empty(target, others, beside=abandoned)
        if abandoned and not _only_ours(fd):  # another could rename theirs to such a name
            raise _not_empty(target, abandoned, shared=True)
        _remove_abandoned(fd, abandoned, target)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _move_entries(source: int, target: int) -> None:
    """Move every entry of `source` into `target`, replacing nothing; if one cannot be
    moved, those already moved go back, so it is all or nothing. Others may write to the
    target: only what is still the entry moved goes back, and modes are set through
    descriptors, never by name there.

    Moving a directory to another parent rewrites its `..`, which needs its owner's write
    permission: a read-only one (as the backup had it) gets it while it moves, then its
    mode back."""
    entries: dict[str, tuple[int, int]] = {}
    try:
        for name in sorted(os.listdir(source)):
            entries[name] = _held(name, source)
        _move_held(entries, source, target)
    finally:
        for held, mode in entries.values():
            with suppress(OSError):  # moved or not, it gets its mode back
                if mode:
                    os.chmod(f"/proc/self/fd/{held}", mode)
            os.close(held)


def _move_held(entries: dict[str, tuple[int, int]], source: int, target: int) -> None:
    """`_move_entries`' moves, all or nothing, of entries held as `_held` gives them."""
    moved: list[str] = []
    try:
        for name, (held, mode) in entries.items():
            if mode:
                os.chmod(f"/proc/self/fd/{held}", mode | stat.S_IWUSR)  # fchmod refuses O_PATH
            try:
                rename_noreplace(source, name, target, name)
            finally:  # moved, even if an interrupt came between the rename and this line
                if not exists_at(name, source):
                    moved.append(name)
    except BaseException:
        for name in reversed(moved):
            with suppress(OSError):
                if _still_named(entries[name][0], name, target):
                    rename_noreplace(target, name, source, name)
        raise


def _held(name: str, parent: int) -> tuple[int, int]:
    """An O_PATH descriptor of `name` in `parent` (never a link's target), and its
    permission bits if it is a directory its owner cannot write to (else 0)."""
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    status = os.fstat(fd)
    read_only = stat.S_ISDIR(status.st_mode) and not status.st_mode & stat.S_IWUSR
    return fd, stat.S_IMODE(status.st_mode) if read_only else 0


def _remove_tree(parent: int, name: str, held: int) -> None:
    """Remove a staging directory whole: emptied through `held`, its open descriptor, so
    that whatever is put at its name meanwhile is never touched, and then the name, if
    an empty directory is there. Directories in it may be read-only (as the backup had
    them): each is made writable first, by descriptor, never through a link."""
    with suppress(OSError):
        for _, names, _, fd in os.fwalk(".", dir_fd=held):  # names holds links too
            for entry in names:
                with suppress(OSError):
                    _make_writable(entry, fd)
    try:
        entries = os.listdir(held)  # only this restore, or nobody, can enter it (0700)
    except OSError:
        entries = []
    for entry in entries:
        with suppress(OSError):
            if stat.S_ISDIR(os.stat(entry, dir_fd=held, follow_symlinks=False).st_mode):
                shutil.rmtree(entry, dir_fd=held, ignore_errors=True)
            else:
                os.unlink(entry, dir_fd=held)
    with suppress(OSError):
        os.rmdir(name, dir_fd=parent)


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
