"""Starting the Python helper processes of a restore (`smallfiles`) and a backup
(`readahead`): each runs one program of this package in an interpreter of its own, so its
work never waits for this process's GIL.

A helper gets of the host's environment only what the dynamic loader needs to start the
interpreter and the locale (`helper_environment`): store credentials, proxies and every
other setting stay in this process. It runs isolated (`-I -S`: no user site, no
PYTHON* variables, no site-packages). It stays in this process's process group (one of its
own would be stopped for good by a terminal set to `tostop` the moment it printed a
traceback, and this process would wait for it forever), and ignores SIGINT itself: Ctrl-C
at a terminal reaches the helpers too, and this process decides what stops.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Collection

__all__ = ["can_start_helpers", "helper_environment", "start_helper"]

_PYTHON = re.compile(r"python[0-9.]*")
#: The host's variables a helper process inherits (besides LC_*): `helper_environment`.
_INHERITED = frozenset(
    {"LD_LIBRARY_PATH", "LD_PRELOAD", "LANG", "LANGUAGE", "LOCPATH", "LOCALE_ARCHIVE"}
)


def can_start_helpers(program: str) -> bool:
    """Whether this process can start a Python on `program` (not where Python is embedded
    in another program, or strongroom imported from a zip file)."""
    return _PYTHON.fullmatch(os.path.basename(sys.executable)) is not None and os.path.isfile(
        program
    )


def helper_environment() -> dict[str, str]:
    """All a helper process gets of the host's environment: what the dynamic loader needs to
    start the interpreter, and the locale (how names are encoded, what language errors are
    in)."""
    return {k: v for k, v in os.environ.items() if k in _INHERITED or k.startswith("LC_")}


def start_helper(
    program: str, arguments: list[str], *, pass_fds: Collection[int] = (), stdin: int
) -> subprocess.Popen[bytes]:
    """Start `program` (a module of this package that imports only the standard library)
    with `arguments`, the descriptors `pass_fds` and `stdin` (subprocess.PIPE or DEVNULL)."""
    return subprocess.Popen(
        [sys.executable, "-I", "-S", program, *arguments],
        pass_fds=pass_fds,
        stdin=stdin,
        env=helper_environment(),
    )
