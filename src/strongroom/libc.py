"""The C library's calls that Python's `os` module lacks, for the few places that need one
(preallocation, writeback, a rename that never replaces, the command's allocator)."""

from __future__ import annotations

import ctypes
import functools
import sys
from typing import Any

__all__ = ["c_function"]


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
