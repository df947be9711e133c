"""A file store under a mount point that the system lists (/etc/fstab, a systemd mount unit)
and nothing is mounted on is the disk below it: refused in any home, before anything is
marked, read or written."""

from __future__ import annotations

from pathlib import Path

import pytest

from strongroom import Engine, StoreUnavailableError
from strongroom.backends.file import LocalStore
from strongroom.backends.mounts import unmounted_mount_point
from strongroom.jobs import JobStatus
from tests.conftest import FAST_KDF, PASSCODE, SMALL_CHUNK, MountTables


def _unmounted(path: Path) -> str | None:
    """The unmounted mount point the system lists at or above `path`, if any."""
    found = unmounted_mount_point(str(path))
    return None if found is None else found.point


def test_a_path_under_an_unmounted_mount_point_is_found(
    mount_tables: MountTables, tmp_path: Path
) -> None:
    mount_point = tmp_path / "mnt nas"
    mount_point.mkdir()
    mount_tables.expect(mount_point)
    for path in (mount_point, mount_point / "backups", mount_point / "not" / "made"):
        assert _unmounted(path) == str(mount_point), path
    assert _unmounted(tmp_path / "mnt nasty") is None, "a sibling is not under it"
    assert _unmounted(tmp_path) is None

    mount_tables.mount(mount_point)
    assert _unmounted(mount_point / "backups") is None, "mounted"
    mount_tables.unmount(mount_point)
    mount_tables.mount(mount_point, kind="autofs systemd-1")  # mounted when first reached
    assert _unmounted(mount_point / "backups") is None


def test_a_mount_deeper_than_the_unmounted_one_is_what_counts(
    mount_tables: MountTables, tmp_path: Path
) -> None:
    """A disk mounted inside the unmounted one's mount point holds what is under it."""
    outer, inner = tmp_path / "mnt", tmp_path / "mnt" / "usb"
    inner.mkdir(parents=True)
    mount_tables.expect(outer)
    mount_tables.mount(inner)
    assert _unmounted(inner / "backups") is None
    assert _unmounted(outer / "other") == str(outer)

    mount_tables.expect(inner)  # and listed itself: mounted, so still fine
    assert _unmounted(inner / "backups") is None


def test_a_mount_point_listed_through_a_link_is_where_the_link_leads(
    mount_tables: MountTables, tmp_path: Path
) -> None:
    (tmp_path / "mnt").mkdir()
    (tmp_path / "media").symlink_to(tmp_path / "mnt")
    mount_tables.expect(tmp_path / "media")
    assert _unmounted(tmp_path / "mnt" / "backups") == str(tmp_path / "media"), "as listed"


def test_comments_swap_a_chroot_and_unreadable_tables_find_nothing(
    mount_tables: MountTables, tmp_path: Path
) -> None:
    mount_tables.fstab.write_text(
        f"#LABEL=old {tmp_path} ext4 defaults 0 2\n  # {tmp_path}\n   \nUUID=1 none swap sw 0 0\n"
        "proc /proc proc defaults 0 0\n"
    )
    assert _unmounted(tmp_path / "backups") is None
    mount_tables.fstab.write_text("UUID=0a3407de / ext4 defaults 0 1\n")
    mount_tables.mountinfo.write_text("22 27 0:21 / /proc rw,relatime - proc proc rw\n")
    assert _unmounted(tmp_path) is None, "a chroot's table has no /"

    mount_tables.expect(tmp_path)
    assert _unmounted(tmp_path / "backups") == str(tmp_path)
    mount_tables.fstab.unlink()  # a system without /etc/fstab cannot tell
    assert _unmounted(tmp_path / "backups") is None


def test_a_systemd_mount_unit_lists_its_mount_point(
    mount_tables: MountTables, tmp_path: Path
) -> None:
    """A disk an administrator mounts by a `.mount` unit instead of an fstab line is
    expected there too, and is mounted with the unit; a masked unit lists nothing."""
    mount_point = tmp_path / "mnt nas"
    mount_point.mkdir()
    unit = mount_tables.expect_unit(mount_point, "mnt-nas.mount")
    found = unmounted_mount_point(str(mount_point / "backups"))
    assert found is not None and found.point == str(mount_point)
    assert found.listed_in == str(unit)
    assert found.mount_command == "systemctl start mnt-nas.mount"
    store = LocalStore("nas", (mount_point / "backups").as_uri(), mount_point / "backups")
    with pytest.raises(StoreUnavailableError, match="systemctl start mnt-nas.mount"):
        store.check_mounted()

    mount_tables.mount(mount_point)
    assert _unmounted(mount_point / "backups") is None, "mounted"
    mount_tables.unmount(mount_point)
    unit.unlink()
    unit.symlink_to("/dev/null")  # `systemctl mask`
    assert _unmounted(mount_point / "backups") is None
    (mount_tables.units / "backup.service").write_text(f"[Service]\nWhere={mount_point}\n")
    assert _unmounted(mount_point / "backups") is None, "only .mount units mount"
    (mount_tables.units / "odd.mount").write_text(f"[Unit]\nWhere={mount_point}\n")
    assert _unmounted(mount_point / "backups") is None, "only [Mount] says where"


def test_a_file_store_is_placed_through_links_but_not_below_its_confinement(
    mount_tables: MountTables, tmp_path: Path
) -> None:
    """A link to the unmounted disk is followed to it; below a directory an admin API
    caller is confined to, no link is followed (nor told of: the store refuses it)."""
    mount_point, allowed = tmp_path / "mnt", tmp_path / "allowed"
    mount_point.mkdir()
    allowed.mkdir()
    mount_tables.expect(mount_point)
    (tmp_path / "srv").symlink_to(mount_point)
    (allowed / "link").symlink_to(mount_point)
    through_link = tmp_path / "srv" / "backups"
    with pytest.raises(StoreUnavailableError, match="nothing is mounted there now"):
        LocalStore("nas", through_link.as_uri(), through_link).check_mounted()
    confined = allowed / "link" / "backups"
    LocalStore("nas", confined.as_uri(), confined, confine_to=allowed).check_mounted()


def test_a_server_sees_the_volume_of_its_embedded_store_go(
    home: Path, mount_tables: MountTables, tmp_path: Path
) -> None:
    """An engine that opened the embedded store while its volume was mounted refuses it
    once the volume is gone, as it does any store."""
    volume = home / "stores" / "backupsDefault"
    volume.mkdir(parents=True)
    mount_tables.expect(volume)
    mount_tables.mount(volume)
    engine = Engine(kdf=FAST_KDF, chunk_size=SMALL_CHUNK)
    assert engine.list() == []
    mount_tables.unmount(volume)
    source = tmp_path / "file.txt"
    source.write_text("kept on the volume, not below it\n")
    with pytest.raises(StoreUnavailableError, match="nothing is mounted there now"):
        engine.create("x", [source], passcode=PASSCODE)
    assert list(volume.iterdir()) == []


def test_validating_the_embedded_store_below_its_volume_reports_it(
    home: Path, mount_tables: MountTables
) -> None:
    """`stores validate` reports, as for any store, and makes nothing on the disk below."""
    volume = home / "stores" / "backupsDefault"
    mount_tables.expect(volume)
    report = Engine(kdf=FAST_KDF, chunk_size=SMALL_CHUNK).validate_store()
    assert report.checks == {"recognised": False} and not report.ok
    assert "nothing is mounted there now" in report.errors[0]
    assert not volume.exists()


def test_a_cleanup_job_of_the_embedded_store_below_its_volume_reports_it(
    home: Path, mount_tables: MountTables
) -> None:
    """Submitted, it runs and fails saying why, as for any store, instead of failing to
    submit (and it makes nothing on the disk below)."""
    volume = home / "stores" / "backupsDefault"
    mount_tables.expect(volume)
    with Engine(kdf=FAST_KDF, chunk_size=SMALL_CHUNK) as engine:
        job = engine.jobs.wait(engine.submit_cleanup(["backupsDefault"]).jobid, 30)
    assert job.status is JobStatus.FAILED
    assert "nothing is mounted there now" in job.messages[-1]
    assert not volume.exists()
