"""The C library's calls that Python's `os` module lacks, for the few places that need one
(preallocation, writeback, a rename that never replaces, the command's allocator)."""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import sys
from typing import Any

__all__ = ["c_function", "exists_at", "rename_noreplace"]

#: renameat2's flag: fail with EEXIST rather than replace what has the new name.
RENAME_NOREPLACE = 1


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def c_function(name: str, *argtypes: Any) -> Any:
    """The C library's `name` taking `argtypes` and returning an int (errno is kept for
    `ctypes.get_errno`), or None off Linux or where this C library has no such call."""
    if not sys.platform.startswith("linux"):
        return None
    function = getattr(_libc(), name, None)
    if function is not None:
        function.argtypes = list(argtypes)
        function.restype = ctypes.c_int
    return function


#: renameat2(2), from glibc 2.28; None where the C library has none.
_RENAMEAT2 = c_function(
    "renameat2", ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint
)


def rename_noreplace(source: int, name: str, target: int, new_name: str) -> None:
    """Rename `name` in one directory to `new_name` in another, failing (EEXIST) if that
    is taken, even by an empty directory or a dangling link: renameat2's RENAME_NOREPLACE,
    or, where the file system or C library has no such flag, a check just before the
    rename (which a racer could slip between)."""
    if _RENAMEAT2 is not None:
        old, new = os.fsencode(name), os.fsencode(new_name)
        if _RENAMEAT2(source, old, target, new, RENAME_NOREPLACE) == 0:
            return
        error = ctypes.get_errno()
        if error not in (errno.EINVAL, errno.ENOSYS):
            raise OSError(error, os.strerror(error), new_name)
    if exists_at(new_name, target):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), new_name)
    os.rename(name, new_name, src_dir_fd=source, dst_dir_fd=target)


def exists_at(name: str, directory: int) -> bool:
    """Whether anything (a link too, never followed) has `name` in `directory`."""
    try:
        os.stat(name, dir_fd=directory, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True
