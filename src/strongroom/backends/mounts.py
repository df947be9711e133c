"""Whether a directory lies on the disk below a mount point that nothing is mounted on.

While a disk or share that /etc/fstab mounts is not mounted, a store's directory under its
mount point is a directory on the disk below it. Marking it then (`stores add` before the
share was first mounted, or `stores init` in a home that never knew the store) would make
it a store: the backups would fill the root disk and vanish under the share once it is
mounted. The home's known places (knownstores.py) cannot tell a place it never saw; the
system's own list of what should be mounted can, in any home.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["FSTAB", "MOUNTINFO", "unmounted_mount_point"]

#: What the system mounts (fstab(5)); and what this process sees mounted (proc(5)).
#: Module constants, so that tests can give their own tables.
FSTAB = Path("/etc/fstab")
MOUNTINFO = Path("/proc/self/mountinfo")

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")  # a space is \040 in both tables


def unmounted_mount_point(path: str) -> str | None:
    """The mount point /etc/fstab lists at or above `path` (as the kernel reaches it: links
    resolved) that nothing is mounted on now, deeper than every mount that is there: None
    if there is none, or if either table cannot be read (a system without them cannot tell).

    Only fstab's points not mounted are resolved: a mounted one is not touched (a dead
    network share there would hang the call); `/` is mounted even where the table of a
    chroot does not show it."""
    try:
        mounted = _mount_points(MOUNTINFO, field=4) | {"/"}
        listed = _mount_points(FSTAB, field=1)
    except OSError:
        return None
    expected = {point if point in mounted else os.path.realpath(point) for point in listed}
    covering = [point for point in expected | mounted if _covers(point, path)]
    deepest = max(covering, key=len)  # "/" covers every path
    return None if deepest in mounted else deepest


def _mount_points(table: Path, *, field: int) -> set[str]:
    """The absolute paths in column `field` of a mount table (swap and comments skipped)."""
    points = set()
    for line in table.read_text(encoding="utf-8", errors="replace").splitlines():
        fields = line.split()
        if len(fields) > field and not fields[0].startswith("#"):
            point = _OCTAL_ESCAPE.sub(lambda match: chr(int(match[1], 8)), fields[field])
            if point.startswith("/"):
                points.add(os.path.normpath(point))
    return points


def _covers(mount_point: str, path: str) -> bool:
    """Whether `path` is on what is mounted at `mount_point` (a name, not a prefix)."""
    return path == mount_point or path.startswith(mount_point.rstrip("/") + "/")
