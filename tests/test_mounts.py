"""A file store under a mount point that /etc/fstab lists and nothing is mounted on is the
disk below it: refused in any home, before anything is marked, read or written."""

from __future__ import annotations

from pathlib import Path

from strongroom.backends.mounts import unmounted_mount_point
from tests.conftest import MountTables


def test_a_directory_under_an_unmounted_mount_point_is_found(
    mount_tables: MountTables, tmp_path: Path
) -> None:
    mount_point = tmp_path / "mnt nas"
    mount_point.mkdir()
    mount_tables.expect(mount_point)
    for directory in (mount_point, mount_point / "backups", mount_point / "not" / "made"):
        assert unmounted_mount_point(str(directory)) == str(mount_point), directory
    assert unmounted_mount_point(str(tmp_path / "mnt nasty")) is None, "a sibling is not under it"
    assert unmounted_mount_point(str(tmp_path)) is None

    mount_tables.mount(mount_point)
    assert unmounted_mount_point(str(mount_point / "backups")) is None, "mounted"


def test_a_link_to_the_unmounted_disk_is_followed_to_it(
    mount_tables: MountTables, tmp_path: Path
) -> None:
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    mount_tables.expect(mount_point)
    (tmp_path / "srv").symlink_to(mount_point)
    assert unmounted_mount_point(str(tmp_path / "srv" / "backups")) == str(mount_point)


def test_a_mount_deeper_than_the_unmounted_one_is_what_counts(
    mount_tables: MountTables, tmp_path: Path
) -> None:
    """A disk mounted inside the unmounted one's mount point holds what is under it."""
    outer, inner = tmp_path / "mnt", tmp_path / "mnt" / "usb"
    inner.mkdir(parents=True)
    mount_tables.expect(outer)
    mount_tables.mount(inner)
    assert unmounted_mount_point(str(inner / "backups")) is None
    assert unmounted_mount_point(str(outer / "other")) == str(outer)

    mount_tables.expect(inner)  # and listed itself: mounted, so still fine
    assert unmounted_mount_point(str(inner / "backups")) is None


def test_comments_swap_and_unreadable_tables_find_nothing(
    mount_tables: MountTables, tmp_path: Path
) -> None:
    mount_tables.fstab.write_text(
        f"# LABEL=old {tmp_path} ext4 defaults 0 2\n   \nUUID=1 none swap sw 0 0\n"
    )
    assert unmounted_mount_point(str(tmp_path / "backups")) is None
    mount_tables.expect(tmp_path)
    assert unmounted_mount_point(str(tmp_path / "backups")) == str(tmp_path)
    mount_tables.fstab.unlink()  # a system without /etc/fstab cannot tell
    assert unmounted_mount_point(str(tmp_path / "backups")) is None
