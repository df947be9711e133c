"""Whether a directory lies on the disk below a mount point that nothing is mounted on.

While a disk or share that the system mounts is not mounted, a store's directory under its
mount point is a directory on the disk below it. Marking it then (`stores add` before the
share was first mounted, or `stores init` in a home that never knew the store) would make
it a store: the backups would fill the root disk and vanish under the share once it is
mounted. The home's known places (knownstores.py) cannot tell a place it never saw; the
system's own lists of what should be mounted can, in any home: /etc/fstab, and the mount
units an administrator wrote for systemd.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FSTAB", "MOUNTINFO", "MOUNT_UNITS", "ExpectedMount", "unmounted_mount_point"]

#: What the system mounts (fstab(5)); the administrator's systemd units (systemd.mount(5):
#: a `.mount` file mounts at its `Where=`; the distribution's own, under /usr/lib, are the
#: kernel's file systems, not disks); and what this process sees mounted (proc(5)).
#: Module constants, so that tests can give their own tables.
FSTAB = Path("/etc/fstab")
MOUNT_UNITS = Path("/etc/systemd/system")
MOUNTINFO = Path("/proc/self/mountinfo")

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")  # a space is \040 in both tables


@dataclass(frozen=True, slots=True)
class ExpectedMount:
    """A mount point the system lists, where, how to mount it, and how to stop listing it."""

    point: str
    listed_in: str
    mount_command: str
    unlist: str


def unmounted_mount_point(path: str) -> ExpectedMount | None:
    """The mount point the system lists at or above `path` (as the kernel reaches it: links
    resolved) that nothing is mounted on now, deeper than every mount that is there: None
    if there is none, or if this process cannot see what is mounted (a system without
    /proc cannot tell).

    Only listed points not mounted are resolved: a mounted one is not touched (a dead
    network share there would hang the call); `/` is mounted even where the table of a
    chroot does not show it."""
    try:
        mounted = _table(MOUNTINFO, field=4) | {"/"}
    except OSError:
        return None
    expected = {
        (entry.point if entry.point in mounted else os.path.realpath(entry.point)): entry
        for entry in [*_fstab(), *_mount_units()]
    }
    covering = [point for point in expected.keys() | mounted if _covers(point, path)]
    deepest = max(covering, key=len)  # "/" covers every path
    return None if deepest in mounted else expected[deepest]


def _fstab() -> list[ExpectedMount]:
    try:
        table = _table(FSTAB, field=1)
    except OSError:
        return []
    where = str(FSTAB)
    return [
        ExpectedMount(point, where, f"mount {shlex.quote(point)}", f"remove its line from {where}")
        for point in sorted(table)
    ]


def _mount_units() -> list[ExpectedMount]:
    """Each `.mount` unit's `Where=` (a masked unit, a link to /dev/null, has none)."""
    try:
        units = sorted(unit for unit in MOUNT_UNITS.iterdir() if unit.suffix == ".mount")
    except OSError:
        return []
    found = []
    for unit in units:
        try:
            lines = unit.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        section = ""
        for line in lines:
            if line.strip().startswith("["):
                section = line.strip()
            key, _, value = line.partition("=")
            if section == "[Mount]" and key.strip() == "Where" and value.strip().startswith("/"):
                point = os.path.normpath(value.strip())
                command = f"systemctl start {shlex.quote(unit.name)}"
                unlist = f"disable and remove {unit}"
                found.append(ExpectedMount(point, str(unit), command, unlist))
    return found


def _table(table: Path, *, field: int) -> set[str]:
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
