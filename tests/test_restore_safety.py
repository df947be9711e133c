"""Restore never touches anything outside its target, whatever the backup holds; links are
data, restored verbatim; and what verifies restores.

The hostile archives are forged from docs/FORMAT.md (tests/forge.py), as someone who
picks the passcode would write them, and restored with helper processes and without.
Canaries outside the target must keep their bytes, modes and mtimes.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path

import pytest

from strongroom import (
    Engine,
    IntegrityError,
    StrongroomError,
    UnsafeArchiveError,
    archive,
    smallfiles,
)
from tests.conftest import PASSCODE, snapshot
from tests.forge import entry, forge_backup, tar_of

#: Enough small files before the attack that helper processes are writing by then.
PADDING = [(entry(f"pad/f{n:03}"), b"padding %d" % n) for n in range(smallfiles.BATCH_FILES + 8)]


@pytest.fixture(params=["helpers", "no helpers"])
def helpers(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "no helpers":
        monkeypatch.setattr(smallfiles, "MAX_HELPERS", 0)
    return str(request.param)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """Canaries beside the restore target: a file, and a directory with a file in it."""
    canaries = tmp_path / "outside"
    (canaries / "dirvictim").mkdir(parents=True)
    (canaries / "victim.txt").write_bytes(b"the original bytes\n")
    (canaries / "dirvictim" / "inner.txt").write_bytes(b"inner\n")
    (canaries / "victim.txt").chmod(0o640)
    (canaries / "dirvictim").chmod(0o750)
    for path in (canaries / "victim.txt", canaries / "dirvictim" / "inner.txt"):
        os.utime(path, (1_400_000_000, 1_400_000_000))
    os.utime(canaries / "dirvictim", (1_400_000_000, 1_400_000_000))
    return canaries


def store_dir(home: Path) -> Path:
    return home / "stores" / "backupsDefault"


def restore_hostile(
    engine: Engine, home: Path, tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes]]
) -> Path:
    forge_backup(store_dir(home), "hostile", PASSCODE, tar_of([*PADDING, *members]))
    return engine.restore("hostile", tmp_path / "sandbox" / "out", passcode=PASSCODE)


def file(name: str, data: bytes = b"pwned\n", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    return entry(name, mode=mode), data


def link(name: str, target: str) -> tuple[tarfile.TarInfo, bytes]:
    return entry(name, tarfile.SYMTYPE, target), b""


def hard(name: str, original: str) -> tuple[tarfile.TarInfo, bytes]:
    return entry(name, tarfile.LNKTYPE, original), b""


def directory(name: str, mode: int = 0o755) -> tuple[tarfile.TarInfo, bytes]:
    return entry(name, tarfile.DIRTYPE, mode=mode), b""


def part(name: str, number: int, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    member = entry(name)
    member.pax_headers = {archive.PART_RECORD: str(number)}
    return member, data


#: Each attack, given the canaries' directory: the members that try to reach it.
ATTACKS: dict[str, Callable[[Path], list[tuple[tarfile.TarInfo, bytes]]]] = {
    "the link swap of the issue, with ./": lambda out: [
        link("q", "d/e"),
        link("p", "q/../../../.."),
        link("q", "."),
        file("./p/pwned.txt"),
        file("./p/outside/victim.txt"),
        directory("./p/outside/dirvictim", 0o777),
    ],
    "a link, then a write through it with //": lambda out: [
        link("l", str(out)),
        file("//l//victim.txt"),
    ],
    "a link, then a directory through it": lambda out: [
        link("l", str(out)),
        directory("l/dirvictim", 0o777),
    ],
    "an absolute name": lambda out: [file(f"{out}/victim.txt")],
    "a name with ..": lambda out: [file("../../outside/victim.txt")],
    "a name with .. after a directory": lambda out: [file("pad/../../../outside/victim.txt")],
    "a chain of links": lambda out: [link("a", "b"), link("b", str(out)), file("a/victim.txt")],
    "a relative link out, then a write": lambda out: [
        link("up", "../../outside"),
        file("up/victim.txt"),
    ],
    "a hard link to an absolute path": lambda out: [hard("h", f"{out}/victim.txt")],
    "a hard link with ..": lambda out: [hard("h", "../../outside/victim.txt")],
    "a hard link through a link": lambda out: [link("l", str(out)), hard("h", "l/victim.txt")],
    "a hard link to a link, then a write through it": lambda out: [
        link("l", str(out)),
        hard("h", "l"),
        file("h/victim.txt"),
    ],
    "a directory replaced by a link": lambda out: [
        directory("d"),
        link("d", str(out)),
        file("d/victim.txt"),
    ],
    "an append through a link to a file": lambda out: [
        link("s", f"{out}/victim.txt"),
        part("s", 1, b"appended\n"),
    ],
    "an append through a link to a directory": lambda out: [
        link("l", str(out)),
        part("l/victim.txt", 1, b"appended\n"),
    ],
    "a chmod through a link to a file": lambda out: [
        link("c", f"{out}/victim.txt"),
        file("c", b"replaces the link\n", mode=0o777),
    ],
    "a chmod through a link to a directory": lambda out: [
        link("c", f"{out}/dirvictim"),
        directory("c", 0o777),
    ],
    "an append to another name's hard-linked data": lambda out: [
        file("victim.conf", b"safe=1\n"),
        hard("h", "victim.conf"),
        part("h", 1, b"evil=1\n"),
    ],
    "a part that does not follow its stream": lambda out: [
        file("log", b"start\n"),
        file("other", b"other\n"),
        part("log", 1, b"more\n"),
    ],
    "a name deeper than any file system takes": lambda out: [file("a/" * 100_000 + "x")],
    "a name part longer than any file system takes": lambda out: [file("n" * 256)],
    "a device": lambda out: [(entry("dev", tarfile.CHRTYPE), b"")],
    "a FIFO": lambda out: [(entry("fifo", tarfile.FIFOTYPE), b"")],
    "a NUL in a name (a pax record)": lambda out: [file("n" * 120 + "\x00/../victim.txt")],
}
#: Attacks that are harmless as written: a later member replaces the link, in the target.
REPLACED = {"a chmod through a link to a file", "a chmod through a link to a directory"}


@pytest.mark.parametrize("attack", ATTACKS)
def test_a_hostile_backup_never_touches_anything_outside_the_target(
    engine: Engine, home: Path, tmp_path: Path, outside: Path, helpers: str, attack: str
) -> None:
    before = snapshot(outside)
    members = ATTACKS[attack](outside)
    if attack in REPLACED:  # allowed: the later member replaces the link, inside
        restored = restore_hostile(engine, home, tmp_path, members)
        assert not (restored / "c").is_symlink() and (restored / "c").exists()
    else:
        with pytest.raises((UnsafeArchiveError, IntegrityError)):
            restore_hostile(engine, home, tmp_path, members)
        assert not (tmp_path / "sandbox").exists(), "a failed restore leaves nothing behind"
    assert snapshot(outside) == before
    assert {p.name for p in tmp_path.iterdir()} <= {"outside", "home", "sandbox"}


@pytest.mark.parametrize("attack", ATTACKS)
def test_the_staging_directory_alone_keeps_every_attack_inside(
    engine: Engine,
    home: Path,
    tmp_path: Path,
    outside: Path,
    helpers: str,
    attack: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the member rules reduced to name cleaning, the fd-relative writes still reach
    nothing outside: the safety is in how entries are made, not in the checks."""
    monkeypatch.setattr(archive.MemberRules, "check", lambda self, m: archive.member_path(m.name))
    before = snapshot(outside)
    with suppress(StrongroomError, OSError, ValueError):  # refused on the way, or not
        restore_hostile(engine, home, tmp_path, ATTACKS[attack](outside))
    assert snapshot(outside) == before


@pytest.mark.parametrize("attack", ATTACKS)
def test_verify_refuses_what_restore_refuses_with_the_same_message(
    engine: Engine, home: Path, tmp_path: Path, outside: Path, attack: str
) -> None:
    members = ATTACKS[attack](outside)
    forge_backup(store_dir(home), "hostile", PASSCODE, tar_of([*PADDING, *members]))
    try:
        engine.restore("hostile", tmp_path / "out", passcode=PASSCODE)
    except UnsafeArchiveError as refused:
        with pytest.raises(UnsafeArchiveError) as verified:
            engine.verify("hostile", passcode=PASSCODE)
        assert str(verified.value) == str(refused)
    except IntegrityError:
        pass  # an append with no start: found only when there is nothing to append to
    else:
        engine.verify("hostile", passcode=PASSCODE)


def test_the_refusal_names_the_link_and_says_what_to_do(
    engine: Engine, home: Path, tmp_path: Path, outside: Path
) -> None:
    with pytest.raises(UnsafeArchiveError) as refused:
        restore_hostile(engine, home, tmp_path, ATTACKS["a chain of links"](outside))
    assert "'a/victim.txt'" in str(refused.value)
    assert "runs through 'a', a link the backup made earlier" in str(refused.value)
    assert "Restore the other paths by naming them" in str(refused.value)


def test_links_anywhere_are_restored_verbatim_and_later_members_replace_earlier_ones(
    engine: Engine, home: Path, tmp_path: Path, outside: Path, helpers: str
) -> None:
    members = [
        link("abs", str(outside / "victim.txt")),
        link("up", "../../../outside"),
        link("dangling", "no/such/thing"),
        link("dot", "."),
        file("file-then-dir"),
        file("file-then-dir/inside.txt", b"inside\n"),  # the directory replaces the file
        link("link-then-file", str(outside)),
        file("link-then-file", b"the file\n"),
        link("link-then-dir", str(outside)),
        directory("link-then-dir", 0o700),
        file("original", b"original\n"),
        hard("hard", "original"),
        file("./dotted//name/", b"dotted\n"),
    ]
    before = snapshot(outside)
    out = restore_hostile(engine, home, tmp_path, members)
    assert os.readlink(out / "abs") == str(outside / "victim.txt")
    assert os.readlink(out / "up") == "../../../outside"
    assert os.readlink(out / "dangling") == "no/such/thing"
    assert os.readlink(out / "dot") == "."
    assert (out / "file-then-dir" / "inside.txt").read_bytes() == b"inside\n"
    assert (out / "link-then-file").read_bytes() == b"the file\n"
    assert (out / "link-then-dir").is_dir() and not (out / "link-then-dir").is_symlink()
    assert (out / "hard").stat().st_ino == (out / "original").stat().st_ino
    assert (out / "dotted" / "name").read_bytes() == b"dotted\n"
    assert snapshot(outside) == before


def test_a_partial_restore_skips_what_it_does_not_name(
    engine: Engine, home: Path, tmp_path: Path, outside: Path
) -> None:
    members = [file("keep/me.txt", b"kept\n"), *ATTACKS["a chain of links"](outside)]
    forge_backup(store_dir(home), "mixed", PASSCODE, tar_of(members))
    out = engine.restore("mixed", tmp_path / "out", passcode=PASSCODE, paths=["keep"])
    assert (out / "keep" / "me.txt").read_bytes() == b"kept\n"


def test_an_owner_name_holding_a_nul_names_nobody_and_the_numbers_apply(
    engine: Engine, home: Path, tmp_path: Path, helpers: str
) -> None:
    """A pax record can give a name any bytes. As root, restore looks names up, which
    raised ValueError for one with a NUL: the helper died, then the restore with it."""
    odd = entry("odd.txt")
    odd.uid, odd.gid = 4321, 8765
    odd.pax_headers = {"uname": "ro\x00ot", "gname": "wh\x00eel"}
    forge_backup(store_dir(home), "nul", PASSCODE, tar_of([*PADDING, (odd, b"odd\n")]))
    out = engine.restore("nul", tmp_path / "out", passcode=PASSCODE)
    assert (out / "odd.txt").read_bytes() == b"odd\n"
    if os.geteuid() == 0:
        status = (out / "odd.txt").stat()
        assert (status.st_uid, status.st_gid) == (4321, 8765)


@pytest.fixture
def etc_like(tmp_path: Path) -> Path:
    """A tree like /etc: absolute links, links out of the tree, dangling links, hard
    links, and a link into the tree by its absolute path."""
    root = tmp_path / "source" / "etc"
    (root / "ssl" / "certs").mkdir(parents=True)
    (root / "alternatives").mkdir()
    (root / "ssl" / "certs" / "ca.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\n")
    (root / "ssl" / "certs" / "abs.pem").symlink_to("/usr/share/ca-certificates/abs.crt")
    (root / "ssl" / "certs" / "1a2b3c4d.0").symlink_to("ca.pem")
    (root / "alternatives" / "editor").symlink_to("/usr/bin/vim.basic")
    (root / "up-and-out").symlink_to("../../../../var/lib/thing")
    (root / "dangling").symlink_to("not/here")
    (root / "into-tree").symlink_to(root / "ssl" / "certs" / "ca.pem")
    (root / "dir-link").symlink_to("ssl")
    os.link(root / "ssl" / "certs" / "ca.pem", root / "hard.pem")
    return root


def test_a_tree_like_etc_backs_up_verifies_and_restores_identical(
    engine: Engine, etc_like: Path, tmp_path: Path, helpers: str
) -> None:
    engine.create("etc", [etc_like], passcode=PASSCODE)
    engine.verify("etc", passcode=PASSCODE)
    out = engine.restore("etc", tmp_path / "out", passcode=PASSCODE)
    assert snapshot(out / "etc") == snapshot(etc_like)
    assert (out / "etc" / "hard.pem").stat().st_ino == (out / "etc/ssl/certs/ca.pem").stat().st_ino


def _real_trees() -> list[Path]:
    """Real trees full of links: /etc/ssl, a Python installation, a virtualenv's bin."""
    candidates = [
        Path("/etc/ssl"),
        *sorted(Path("/usr/lib").glob("python3.*")),
        Path(sys.prefix) / "bin",
    ]
    return [path for path in candidates if path.is_dir()][:3]


@pytest.mark.parametrize("source", _real_trees(), ids=str)
def test_real_trees_full_of_links_restore_identical(
    engine: Engine, source: Path, tmp_path: Path
) -> None:
    engine.create("real", [source], passcode=PASSCODE)
    engine.verify("real", passcode=PASSCODE)
    out = engine.restore("real", tmp_path / "out", passcode=PASSCODE)
    assert snapshot(out / source.name) == snapshot(source)


def test_create_leaves_out_what_restore_would_refuse_and_says_so(
    engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "plain.txt").write_bytes(b"plain\n")
    os.mkfifo(source / "pipe")
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(source / "sock"))
        info = engine.create("with-fifo", [source], passcode=PASSCODE)
        job = engine.submit_backup("by-job", [source], passcode=PASSCODE)
        job = engine.jobs.wait(job.jobid, timeout=30)
    assert "Left out of backup 'with-fifo'" in caplog.text and "source/pipe" in caplog.text
    assert "source/sock: it is a socket" in caplog.text  # left out without a word before
    # so does what create returns, and a job's result (an API caller or a schedule sees no log)
    assert [what.split(":")[0] for what in info.left_out] == ["source/pipe", "source/sock"]
    assert info == engine.info("with-fifo") and "leftOut" not in engine.info("with-fifo").to_dict()
    assert job.result is not None and job.result["leftOut"] == list(info.left_out)
    engine.verify("with-fifo", passcode=PASSCODE)
    out = engine.restore("with-fifo", tmp_path / "out", passcode=PASSCODE)
    assert sorted(p.name for p in (out / "source").iterdir()) == ["plain.txt"]


def test_a_stream_of_many_parts_is_appended_not_written_through(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(archive, "STREAM_PART_SIZE", 1000)
    data = os.urandom(3500)
    engine.create("stream", passcode=PASSCODE, streams={"db/dump.sql": io.BytesIO(data)})
    out = engine.restore("stream", tmp_path / "out", passcode=PASSCODE)
    assert (out / "db" / "dump.sql").read_bytes() == data


def test_a_directory_named_again_and_again_holds_no_descriptor(
    engine: Engine, home: Path, tmp_path: Path
) -> None:
    members = [directory("d") for _ in range(3000)]
    forge_backup(store_dir(home), "dirs", PASSCODE, tar_of(members))
    before = len(os.listdir("/proc/self/fd"))
    engine.restore("dirs", tmp_path / "out", passcode=PASSCODE)
    assert len(os.listdir("/proc/self/fd")) <= before + 1  # the store's cached handles


def test_helpers_making_the_same_directory_in_place_of_a_file_do_not_trip(
    engine: Engine, home: Path, tmp_path: Path, helpers: str
) -> None:
    """A file, then files below its name: the writers replace the file with the directory,
    whichever comes first, and the restore ends as verify says it does."""
    members = []
    for n in range(40):
        members.append(file(f"b{n}", b"first a file\n"))
        members += [file(f"b{n}/{x}", b"x" * 300_000) for x in "xyz"]
    forge_backup(store_dir(home), "replaced", PASSCODE, tar_of([*PADDING, *members]))
    engine.verify("replaced", passcode=PASSCODE)
    out = engine.restore("replaced", tmp_path / "out", passcode=PASSCODE)
    assert all((out / f"b{n}" / "z").stat().st_size == 300_000 for n in range(40))


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A directory any user can reach (pytest's tmp_path is its owner's only)."""
    with tempfile.TemporaryDirectory(prefix="strongroom-nobody-") as directory:
        os.chmod(directory, 0o777)
        yield Path(directory)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to run the restore as nobody")
def test_a_failed_restore_as_a_user_leaves_nothing_though_its_directories_were_read_only(
    shared_tmp: Path,
) -> None:
    """Not root, read-only directories can only be emptied once made writable again; a
    restore that fails after finishing them (a path named that is not in the backup) must
    still leave no copy of what it read."""
    tmp_path = shared_tmp
    script = tmp_path / "restore_as_nobody.py"
    script.write_text(
        f"""
import os
from pathlib import Path
from strongroom import ConfigError, Engine
from tests.conftest import FAST_KDF
root = Path({str(tmp_path)!r}) / "nobody"
(root / "src" / "ro").mkdir(parents=True)
(root / "src" / "ro" / "secret.txt").write_text("secret")
(root / "src" / "ro").chmod(0o555)
engine = Engine(home=root / "home", kdf=FAST_KDF)
engine.create("b", [root / "src"], passcode="Nobody-Passc0de")
try:
    engine.restore("b", root / "out", passcode="Nobody-Passc0de", paths=["src/ro", "src/typo"])
except ConfigError:
    pass
print(sorted(p.name for p in root.iterdir()))
"""
    )
    script.chmod(0o644)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path.cwd()), *sys.path[1:]])}
    env.pop("STRONGROOM_HOME", None)
    result = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, script],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).parent.parent,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['home', 'src']"  # no '.out.strongroom-…' left
