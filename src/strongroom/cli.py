"""The `strongroom` command: a thin layer over Engine for people and scripts.

The passcode comes from --passcode-file, $STRONGROOM_PASSCODE or a prompt, never an
argument; `create --write-key FILE` needs no passcode at all. Errors print one line on
stderr and exit with the error class's code (see README.md); --json output uses the admin
API's field names.
"""

from __future__ import annotations

import argparse
import ctypes
import getpass
import json
import logging
import math
import os
import shutil
import signal
import stat
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

from .backupinfo import BackupInfo
from .benchmark import DEFAULT_SIZE, STAGE_SECONDS, BenchmarkReport, installed_version, measure
from .compressionlevel import LEVELS
from .config import COMPRESSIONS, StoresConfig, StoreSpec, config_path, editing
from .crypto import Passcode
from .engine import Engine
from .errors import (
    ConfigError,
    IntegrityError,
    InterruptedAfterCommit,
    JobError,
    PasscodeError,
    StoreUnavailableError,
    StrongroomError,
    os_error_text,
)
from .format import from_epoch_ms, printable, utc_now
from .jobrecord import OPERATION_NAMES
from .jobs import JobStatus
from .jobstore import check_location, has_password
from .keys import WriteKey
from .libc import c_function
from .pipeline import Progress
from .plugins import DISABLE_AUTOLOAD_ENV, build_registry, get_plugin_manager
from .retention import parse_moment, retention_from
from .sourcetree import SourceUnreadable
from .units import human_size

if TYPE_CHECKING:
    from .schedules import Schedule

__all__ = ["main"]

PASSCODE_ENV = "STRONGROOM_PASSCODE"
PASSCODE_NOT_AN_ARGUMENT = (
    "a passcode is never given as an argument (every user of this machine can read the "
    "arguments of its processes): use --passcode-file FILE, set STRONGROOM_PASSCODE, or "
    "type it at the prompt."
)
EXIT_INTERRUPTED = 130
#: A file or directory on this machine (a source, a restore target) could not be used.
EXIT_LOCAL_FILE = 12
#: glibc's mallopt parameters, and what the command sets them to.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's maximum
TRIM_THRESHOLD = 256 * 1024 * 1024
MIB = 1024 * 1024


def main(argv: Sequence[str] | None = None) -> int:
    reuse_freed_memory()
    # Out of the environment before anything runs, so that no process the command starts
    # (a cloud SDK's credential_process, `az`) inherits it, whether the command reads it or not.
    variable = _Variable(os.environ.pop(PASSCODE_ENV, None))
    if any(_gives_passcode(arg) for arg in _arguments(argv)):
        print(f"strongroom: error: {PASSCODE_NOT_AN_ARGUMENT}", file=sys.stderr)
        return 2  # as argparse's usage errors, which would have printed the value
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    args.passcode_variable = variable
    if args.run is not run_serve:  # serve logs every library's records to its own log
        show_warnings()
    command = getattr(args, "command_parser", parser)  # its usage, in a usage error
    paths = _trailing_paths(extra) if extra and hasattr(args, "paths") else None
    if paths is not None:
        args.paths += paths  # restore N --target DIR [--] PATH...: PATHs after the options
    elif extra:
        command.error(f"unrecognized arguments: {_unrecognized(extra)}")
    if getattr(args, "as_of", None) is not None and not args.dry_run:
        command.error(
            "--as-of looks ahead and deletes nothing: use it with --dry-run (a cleanup "
            "without --dry-run deletes what has expired now)"
        )
    try:
        with _sigterm_interrupts(args.run is not run_serve):  # uvicorn handles its own
            result: int = args.run(args)
        return result
    except StrongroomError as exc:
        print(f"strongroom: error: {printable(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        undone = {  # an interrupt after the move finds the restore done
            run_restore: "; a restore lands whole or not at all: the target holds all of it "
            "or nothing",
            run_create: "; the backup was committed before it, and is whole"
            if isinstance(exc, InterruptedAfterCommit)
            else "; nothing was committed",
        }.get(args.run, "")  # a read changed nothing; a cleanup's deletes so far stand
        print(f"strongroom: interrupted{undone}.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (`strongroom list | head`): no error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nor at exit's flush
        return 0
    except OSError as exc:  # stores raise StoreError; this is a local source or target
        if (exc.errno is None and str(exc)) or isinstance(exc, SourceUnreadable):  # its own
            print(f"strongroom: error: {exc}", file=sys.stderr)
            return EXIT_LOCAL_FILE
        path = exc.filename if exc.filename is not None else getattr(args, "target", None)
        where = f" {path}" if path is not None else ""  # a failed write names no file
        print(
            f"strongroom: error: cannot use{where}: {os_error_text(exc)}. "
            "Check the path, its permissions and the free space.",
            file=sys.stderr,
        )
        return EXIT_LOCAL_FILE


@dataclass(frozen=True, slots=True)
class _Variable:
    """STRONGROOM_PASSCODE as the command's environment had it; its repr shows none of it."""

    value: str | None = field(repr=False)


def _gives_passcode(argument: str) -> bool:
    """Whether an argument would give the passcode itself (--passcode X, -Password=X,
    --pw X), not --passcode-file or an abbreviation of it that argparse takes."""
    option = argument.partition("=")[0]
    if len(option) > len("--passcode-") and "--passcode-file".startswith(option):
        return False
    return option.startswith("-") and option.lstrip("-").lower().startswith(("pass", "pw"))


def _unrecognized(extra: list[str]) -> str:
    """The arguments argparse did not take, without what may be a value of a mistyped
    option (a passcode after --pasword): an option's `=value`, and the argument after it."""
    shown, after_option = [], False
    for argument in extra:
        if argument.startswith("-"):
            name, equals, _ = argument.partition("=")
            shown.append(f"{name}=..." if equals else name)
            after_option = not equals
        else:
            shown.append("..." if after_option else argument)
            after_option = False
    return " ".join(shown)


def _arguments(argv: Sequence[str] | None) -> list[str]:
    """The arguments before a `--` (after it, each is a path, even `--password`)."""
    given = list(sys.argv[1:] if argv is None else argv)
    return given[: given.index("--")] if "--" in given else given


def _trailing_paths(extra: list[str]) -> list[str] | None:
    """The PATHs that argparse leaves over when they follow a command's options: every
    argument, and after a `--` even one that starts with a dash (an archive path such as
    `-weird/f`); None if one before the `--` looks like an option."""
    split = extra.index("--") if "--" in extra else len(extra)
    before, after = extra[:split], extra[split + 1 :]
    return None if any(arg.startswith("-") for arg in before) else before + after


@contextmanager
def _sigterm_interrupts(wanted: bool) -> Iterator[None]:
    """SIGTERM (kill, systemd, docker stop) stops a command as Ctrl-C does: it unwinds, so
    a restore removes its staging directory and a create its uncommitted data. Only in
    the main thread (the only one that may set handlers), and undone afterwards."""
    if not wanted or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: FrameType | None) -> NoReturn:
    raise KeyboardInterrupt


class _Stderr(logging.Handler):
    """strongroom's warnings and errors as the command's own lines on the stderr of the
    moment (tests swap it), where Python's fallback printed them without saying whose."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(f"strongroom: {record.levelname.lower()}: {self.format(record)}", file=sys.stderr)
        except Exception:  # a broken stderr must not end the command
            self.handleError(record)


def show_warnings() -> None:
    """Print the library's warnings (`serve` configures its own logging instead), and no
    other library's records, which Python's fallback printed as bare lines: the tracebacks
    asyncio prints for an object store's transport tasks that a dropped connection failed
    ('Task exception was never retrieved'), the Azure SDK's 'Incomplete download.' at each
    try. The command says in one line what failed."""
    logger = logging.getLogger("strongroom")
    if not any(isinstance(handler, _Stderr) for handler in logger.handlers):
        logger.addHandler(_Stderr(logging.WARNING))
    if not logging.root.handlers:
        logging.root.addHandler(logging.NullHandler())


def reuse_freed_memory() -> None:
    """Have glibc keep freed chunk buffers for reuse instead of handing them back.

    Every chunk passes through a few fresh buffers of its size. By default glibc maps
    each anew and unmaps it when freed, and faulting in fresh pages took 13-17% of a
    restore's CPU (perf; restores got 5-35% faster, see docs/benchmarks.md). Peak memory
    is unchanged, since the pipeline bounds what is alive at once. Only the command does
    this: a product that embeds strongroom keeps its own allocator settings.
    """
    mallopt = c_function("mallopt", ctypes.c_int, ctypes.c_int)
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="strongroom",
        description="Encrypted disaster-recovery backups into named backup stores.",
    )
    parser.add_argument("--version", action=_Version, nargs=0, help="show the version and exit")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    create = _command(commands, "create", "back up files and directories", run_create)
    _store_option(create)
    create.add_argument("--name", required=True, help="name of the new backup")
    create.add_argument("--description", default="", help="free text shown in listings")
    _retention_options(create, required=False)
    credential = create.add_mutually_exclusive_group()
    _passcode_option(credential)
    credential.add_argument(
        "--write-key",
        metavar="FILE",
        help="create with this write key (from 'write-key new') instead of the passcode",
    )
    _json_option(create)
    create.add_argument("sources", nargs="+", metavar="SOURCE", help="files or directories")

    write_key = _command(commands, "write-key", "make a key that creates backups only", None)
    write_key_commands = write_key.add_subparsers(required=True, metavar="ACTION")
    write_key_new = _command(
        write_key_commands,
        "new",
        "derive a write key from the passcode: it creates backups and opens none",
        run_write_key_new,
    )
    write_key_new.add_argument("--out", required=True, metavar="FILE", help="where to write it")
    write_key_new.add_argument("--force", action="store_true", help="overwrite an existing FILE")
    _passcode_option(write_key_new)

    listing = _command(commands, "list", "list the backups in a store", run_list)
    _store_option(listing)
    _json_option(listing)

    info = _command(commands, "info", "show one backup", run_info)
    _store_option(info)
    _backup_name(info)
    _json_option(info)

    restore = _command(commands, "restore", "restore a backup into a new directory", run_restore)
    _store_option(restore)
    _backup_name(restore)
    restore.add_argument("--target", required=True, metavar="DIR", help="new or empty directory")
    _passcode_option(restore)
    _backup_id_option(restore)
    restore.add_argument(
        "paths", nargs="*", metavar="PATH", help="restore only these archive paths"
    )

    verify = _command(commands, "verify", "read and authenticate a whole backup", run_verify)
    _store_option(verify)
    _backup_name(verify)
    _passcode_option(verify)
    _backup_id_option(verify)

    ls = _command(commands, "ls", "list what a backup holds", run_ls)
    _store_option(ls)
    _backup_name(ls)
    ls.add_argument("paths", nargs="*", metavar="PATH", help="only these archive paths")
    ls.add_argument("--long", "-l", action="store_true", help="type, mode, size and mtime too")
    _passcode_option(ls)
    _backup_id_option(ls)
    _json_option(ls)

    delete = _command(commands, "delete", "delete a backup", run_delete)
    _store_option(delete)
    _backup_name(delete)
    delete.add_argument(
        "--unreadable",
        action="store_true",
        help="delete a backup whose manifest is damaged: its manifest now, unread; the next"
        " cleanup removes its data",
    )

    update = _command(commands, "update", "change a backup's retentionDate", run_update)
    _store_option(update)
    _backup_name(update)
    _retention_options(update, required=True)

    cleanup = _command(
        commands, "cleanup", "delete backups whose retentionDate has passed", run_cleanup
    )
    cleanup.add_argument(
        "--store", metavar="S", action="append", help="only this store (repeatable)"
    )
    cleanup.add_argument("--dry-run", action="store_true", help="only say what would be deleted")
    cleanup.add_argument(
        "--as-of",
        metavar="WHEN",
        help="with --dry-run: what would expire by then (2027-01-31, 2027-01-31T02:00Z, epoch ms)",
    )
    _json_option(cleanup)

    stores = _command(commands, "stores", "list, add, init, remove or validate backup stores", None)
    store_commands = stores.add_subparsers(required=True, metavar="ACTION")
    stores_list = _command(store_commands, "list", "list configured stores", run_stores_list)
    _json_option(stores_list)
    backends = _command(
        store_commands,
        "backends",
        "list the store backends (URL schemes) and the plugins that register them",
        run_stores_backends,
    )
    _json_option(backends)
    add = _command(
        store_commands,
        "add",
        "configure a store: open it, make its place, put its store marker, save",
        run_stores_add,
    )
    add.add_argument("store_name", metavar="NAME")
    add.add_argument(
        "url", metavar="URL", help="file:///dir, s3://bucket/prefix, az://container/prefix"
    )
    add.add_argument("--default", action="store_true", help="make it the default store")
    _anew_option(add)
    add.add_argument(
        "--compression",
        choices=COMPRESSIONS,
        default=COMPRESSIONS[0],
        help="how its backups' chunks are encoded: zstd (default; a chunk that does not "
        "shrink is stored as it is; the level steps down while compressing holds the "
        "backup back), zstd-fixed (always the strongest level: smaller, slower where "
        "compressing is the bottleneck) or none (faster on a fast disk, stored larger)",
    )
    add.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="backend option; write VALUE as env:VARIABLE for a secret; "
        "object_lock=governance|compliance locks backups until their retentionDate",
    )
    init = _command(
        store_commands,
        "init",
        "make a NEW store written into config.toml by hand, and put its store marker "
        "(strongroom.store), as add does; never for a disk that is not mounted",
        run_stores_init,
    )
    init.add_argument("store_name", metavar="NAME", help="the store's name in config.toml")
    _anew_option(init)
    remove = _command(
        store_commands, "remove", "forget a store (its backups stay)", run_stores_remove
    )
    remove.add_argument("store_name", metavar="NAME")
    default = _command(
        store_commands,
        "default",
        "make a configured store the default store",
        run_stores_default,
    )
    default.add_argument("store_name", metavar="NAME")
    validate = _command(
        store_commands,
        "validate",
        "check a store is recognised, then probe its permissions",
        run_stores_validate,
    )
    validate.add_argument("store_name", metavar="NAME")
    _json_option(validate)

    serve = _command(commands, "serve", "serve the disaster-recovery admin API", run_serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (%(default)s)")
    serve.add_argument("--port", type=_port, default=8080, help="port to listen on (%(default)s)")
    serve.add_argument("--root", default="/admin", help="URL path of the admin root (%(default)s)")
    serve.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="PATH",
        help="what every create backs up (repeatable)",
    )
    serve.add_argument(
        "--no-schedules",
        dest="schedules",
        action="store_false",
        help="do not run the configured schedules (by default serve runs them)",
    )
    serve.add_argument(
        "--cleanup-interval",
        type=float,
        default=60.0,
        metavar="MINUTES",
        help="run the cleanup system task this often (0: never; default 60)",
    )
    _jobs_db_option(serve)
    serve.add_argument(
        "--restore-dir",
        metavar="DIR",
        help="where restores go, one new directory each (default: $STRONGROOM_HOME/restores)",
    )
    serve.add_argument(
        "--allow-store",
        action="append",
        default=[],
        metavar="URL_PREFIX",
        help="a location where API callers may register stores, such as s3://bucket/teams/ "
        "or file:///srv/backups/ (repeatable; default: none, the API edits no store)",
    )

    _schedule_commands(commands)

    jobs = _command(commands, "jobs", "list or show the jobs of this home's job table", None)
    job_commands = jobs.add_subparsers(required=True, metavar="ACTION")
    jobs_list = _command(job_commands, "list", "list jobs, newest first", run_jobs_list)
    jobs_list.add_argument(
        "--status",
        type=str.upper,
        choices=[status.value for status in JobStatus],  # as written, not enum reprs
        metavar="S",
        help=f"only this status ({', '.join(JobStatus)})",
    )
    jobs_list.add_argument(
        "--operation", metavar="O", help="only this operation (create, restore, delete, ...)"
    )
    _jobs_db_option(jobs_list)
    _json_option(jobs_list)
    jobs_show = _command(job_commands, "show", "show one job and its stages", run_jobs_show)
    jobs_show.add_argument("jobid", metavar="ID")
    _jobs_db_option(jobs_show)
    _json_option(jobs_show)

    benchmark = _command(
        commands, "benchmark", "time this machine's backup stages and a store", run_benchmark
    )
    _store_option(benchmark)
    benchmark.add_argument(
        "--size",
        type=_mebibytes,
        default=DEFAULT_SIZE,
        metavar="MiB",
        help=f"data to put, get and list in the store (default {DEFAULT_SIZE // MIB})",
    )
    benchmark.add_argument(
        "--seconds",
        type=float,
        default=STAGE_SECONDS,
        metavar="S",
        help=f"how long each repeated stage runs (default {STAGE_SECONDS})",
    )
    _json_option(benchmark)

    token = _command(commands, "token", "manage the admin API's tokens", None)
    token_commands = token.add_subparsers(required=True, metavar="ACTION")
    _command(token_commands, "new", "print a new token and accept it from now on", run_token_new)
    listed = _command(token_commands, "list", "show the accepted tokens' ids", run_token_list)
    _json_option(listed)
    remove = _command(
        token_commands, "remove", "stop accepting a token (signed-in pages too)", run_token_remove
    )
    remove.add_argument("token_id", metavar="ID", help="its id, as 'token list' shows it")
    return parser


def _schedule_commands(commands: Any) -> None:
    schedules = _command(
        commands, "schedules", "recurring backups that keep a write key, not the passcode", None
    )
    actions = schedules.add_subparsers(required=True, metavar="ACTION")
    add = _command(actions, "add", "define a schedule (asks for the passcode once)", run_add)
    add.add_argument("schedule", metavar="NAME", help="also the start of its backups' names")
    _store_option(add)
    recurrence = add.add_mutually_exclusive_group(required=True)
    recurrence.add_argument("--every", metavar="D", help="a duration: 30s, 15m, 6h, 1d")
    recurrence.add_argument("--cron", metavar="EXPR", help='five fields in UTC: "0 2 * * *"')
    add.add_argument(
        "--keep-days", metavar="N", default="never", help="keep each backup N days, or never"
    )
    add.add_argument("--description", default="", help="free text of every backup")
    add.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="PATH",
        help="what to back up (repeatable; none: the sources of the serve that runs it)",
    )
    _passcode_option(add)
    listing = _command(actions, "list", "list the schedules", run_schedules_list)
    _json_option(listing)
    show = _command(actions, "show", "show a schedule, its next runs and last run", run_show)
    show.add_argument("schedule", metavar="NAME")
    _json_option(show)
    for action, help_text in (
        ("pause", "stop running a schedule until it is resumed"),
        ("resume", "run a paused schedule again (its latest missed slot runs)"),
        ("remove", "forget a schedule (its backups stay)"),
    ):
        edit = _command(actions, action, help_text, run_schedule_edit)
        edit.add_argument("schedule", metavar="NAME")
        edit.set_defaults(action=action)
    run = _command(actions, "run", "one backup of the schedule now, in this process", run_run)
    run.add_argument("schedule", metavar="NAME")
    _json_option(run)


# -- commands ---------------------------------------------------------------------------


def run_create(args: argparse.Namespace) -> int:
    write_key = WriteKey.load(args.write_key) if args.write_key else None
    passcode = None if write_key else read_passcode(args, confirm=True)
    info = None
    try:
        with progress_bar(f"backup {args.name}") as progress:
            info = Engine().create(
                args.name,
                args.sources,
                passcode=passcode,
                write_key=write_key,
                store=args.store,
                description=args.description,
                retention_date=_retention(args),
                progress=progress,
            )
        _emit_backup(info, args.json)
    except KeyboardInterrupt as exc:  # once create returned, the backup is committed
        if info is None or isinstance(exc, InterruptedAfterCommit):
            raise
        raise InterruptedAfterCommit from exc
    return 0


def run_write_key_new(args: argparse.Namespace) -> int:
    passcode = read_passcode(args, confirm=True)
    path = WriteKey.derive(passcode).save(args.out, overwrite=args.force)
    print(f"Wrote a write key to {path} (readable by you only).")
    print(
        "It creates backups ('strongroom create --write-key FILE ...') and opens nothing: "
        "restore, verify and ls still need the passcode. Keep it secret all the same: whoever "
        "holds it can add backups that the passcode restores."
    )
    return 0


def run_list(args: argparse.Namespace) -> int:
    """The store's backups; exit 8 (IntegrityError) after them if any manifest did not read,
    so that neither a person nor a script takes a damaged store for a complete one."""
    engine = Engine()
    listing = engine.listing(args.store)
    backups, unreadable = listing.backups, listing.unreadable
    store = printable(engine.store(args.store).name)
    if args.json:
        _print_json(listing.to_dict())
    elif not backups:
        print(f"No {'readable ' if unreadable else ''}backups in store {store}.")
    else:
        rows = [
            (
                b.name,
                _date(b.created),
                _until(b.retention_date),
                human_size(b.stored_size),
                b.description,
            )
            for b in backups
        ]
        _print_table(("NAME", "CREATED", "RETENTION DATE", "STORED", "DESCRIPTION"), rows)
    if unreadable:
        names = ", ".join(printable(name) for name in unreadable)
        raise IntegrityError(
            f"{len(unreadable)} backup(s) in store {store} are not listed because their "
            f"manifest does not read: {names}. 'strongroom info NAME' says why. Nothing was "
            "changed; none of them restores until its manifest is whole again (from the "
            "store's versioning or a copy), and 'strongroom delete NAME --unreadable' "
            "deletes one."
        )
    return 0


def run_info(args: argparse.Namespace) -> int:
    _emit_backup(Engine().info(args.name, args.store), args.json)
    return 0


def run_restore(args: argparse.Namespace) -> int:
    passcode = read_passcode(args)
    with progress_bar(f"restore {args.name}") as progress:
        target = Engine().restore(
            args.name,
            args.target,
            passcode=passcode,
            store=args.store,
            paths=args.paths,
            progress=progress,
            backup_id=args.backup_id,
        )
    print(f"Restored {args.name} into {target}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    info = Engine().verify(
        args.name,
        passcode=read_passcode(args),
        store=args.store,
        backup_id=args.backup_id,
    )
    chunks = "1 chunk" if info.chunk_count == 1 else f"{info.chunk_count} chunks"
    print(f"{info.name}: OK ({chunks} authenticated)")
    return 0


def run_ls(args: argparse.Namespace) -> int:
    entries = Engine().ls(
        args.name,
        args.paths,
        passcode=read_passcode(args),
        store=args.store,
        backup_id=args.backup_id,
    )
    if args.json:
        _print_json({"entries": [entry.to_dict() for entry in entries]})
        return 0
    for entry in entries:
        line = entry.path
        if entry.type == "symlink":
            line += f" -> {entry.link_target}"
        elif entry.type == "hardlink":
            line += f" link to {entry.link_target}"
        if args.long:
            mode = _KIND[entry.type] + stat.filemode(entry.mode)[1:]
            when = _date(entry.modified)
            line = f"{mode} {entry.size:>12} {when}  {line}"
        print(printable(line))
    return 0


def run_delete(args: argparse.Namespace) -> int:
    Engine().delete(args.name, args.store, unreadable=args.unreadable)
    if args.unreadable:
        print(
            f"Deleted the manifest of {args.name}; a cleanup removes its data once that is a "
            "day old (younger data could be a create's still writing)"
        )
    else:
        print(f"Deleted {args.name}")
    return 0


def run_update(args: argparse.Namespace) -> int:
    info = Engine().update_retention(args.name, _retention(args), args.store)
    print(f"{info.name}: retentionDate is now {_until(info.retention_date)}")
    return 0


def run_cleanup(args: argparse.Namespace) -> int:
    as_of = None if args.as_of is None else parse_moment(args.as_of, "--as-of")
    report = Engine().cleanup(args.store, as_of=as_of, dry_run=args.dry_run)
    if args.json:
        _print_json(report.to_dict())
    else:
        rows = [
            (e.store, e.name, _until(e.retention_date), e.action, e.message) for e in report.entries
        ]
        _print_table(("STORE", "NAME", "RETENTION DATE", "ACTION", "MESSAGE"), rows)
        counted = f"{report.counted()} as of {_date(report.as_of)}, {report.kept} kept"
        if waiting := report.waiting_text():
            counted += f"; {waiting}"
        errors = (
            f"{len(report.errors)} error(s) below, where nothing was counted"
            if report.errors
            else ""
        )
        print(f"{counted}{'; ' if errors else ''}{errors}.")
        for error in report.errors:
            print(f"strongroom: error: {printable(error)}", file=sys.stderr)
    return 1 if report.failed or report.errors else 0


def run_stores_list(args: argparse.Namespace) -> int:
    config = StoresConfig.load()
    stores = [s.to_dict(default=s.name == config.default) for s in config.stores.values()]
    if args.json:
        _print_json({"backupStores": stores})
    else:
        _print_table(
            ("NAME", "DEFAULT", "COMPRESSION", "URL"),
            [(s["name"], "*" if s["default"] else "", s["compression"], s["url"]) for s in stores],
        )
    return 0


def run_stores_backends(args: argparse.Namespace) -> int:
    """Built without the configuration (a broken one must not hide the plugins)."""
    registry = build_registry(get_plugin_manager())
    backends = [backend.to_dict() for backend in registry.backends()]
    autoload = not os.environ.get(DISABLE_AUTOLOAD_ENV)
    if args.json:
        _print_json({"backends": backends, "autoload": autoload})
        return 0
    _print_table(
        ("SCHEME", "PLUGIN", "OPTIONS"),
        [
            (
                f"{b['scheme']}://" if b["scheme"] else "other",
                str(b["plugin"]),
                _declared_options(b) if b["scheme"] else str(b["takes"]),
            )
            for b in backends
        ],
    )
    if not autoload:
        print(f"Installed plugins were not loaded: {DISABLE_AUTOLOAD_ENV} is set.")
    return 0


def _declared_options(backend: dict[str, Any]) -> str:
    """A backend's declared options in one line: their names, never a value."""
    parts = [
        ", ".join(backend["settings"]),
        *(
            f"{kind}: {', '.join(backend[kind])}"
            for kind in ("endpoints", "secrets")
            if backend[kind]
        ),
    ]
    return "; ".join(part for part in parts if part) or "-"


def run_stores_add(args: argparse.Namespace) -> int:
    options = dict(_parse_option(o) for o in args.option)
    spec = StoreSpec(args.store_name, args.url, options, compression=args.compression)
    engine = Engine()
    engine.add_store(spec, default=args.default, anew=args.anew)
    print(f"Added store {spec.name} ({spec.url}) to {engine.config.path}")
    return 0


def run_stores_init(args: argparse.Namespace) -> int:
    store = Engine().init_store(args.store_name, anew=args.anew)
    print(f"Store {store.name} ({store.url}) has its store marker and is ready for backups.")
    return 0


def run_stores_remove(args: argparse.Namespace) -> int:
    _edit_stores(lambda config: config.remove(args.store_name))
    print(f"Removed store {args.store_name}; its backups stay where they are.")
    return 0


def run_stores_default(args: argparse.Namespace) -> int:
    _edit_stores(lambda config: config.make_default(args.store_name))
    print(f"Store {args.store_name} is the default store.")
    return 0


def _edit_stores(change: Callable[[StoresConfig], None]) -> None:
    """One edit of config.toml, locked against every other (config.editing)."""
    with editing(config_path()):
        config = StoresConfig.load()
        change(config)
        config.save()


def run_stores_validate(args: argparse.Namespace) -> int:
    report = Engine().validate_store(args.store_name)
    if args.json:
        _print_json(report.to_dict())
    else:
        for check, passed in report.checks.items():
            print(f"{check:<14} {'ok' if passed else 'FAILED'}")
        if report.checks.get("recognised"):  # what its backend declares, beside the probes
            for capability, present in asdict(report.capabilities).items():
                print(f"{capability:<14} {'yes' if present else 'no'}")
            print(f"{'locks backups':<14} {report.lock_mode or 'no'}")
        for note in report.notes:
            print(f"note: {note}.")
    if not report.ok:  # each error once, on the one error line
        raise StoreUnavailableError(f"Store {report.store!r} failed: {'; '.join(report.errors)}")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from .web.serve import serve  # the web stack loads only for this command

    serve(
        _jobs_engine(args),
        host=args.host,
        port=args.port,
        root_path=args.root,
        sources=args.source,
        restore_dir=args.restore_dir,
        cleanup_interval=timedelta(minutes=args.cleanup_interval),
        allow_stores=args.allow_store,
        schedules=args.schedules,
    )
    return 0


def run_add(args: argparse.Namespace) -> int:
    from .schedules import define  # schedules load only for their commands (a faster start)

    engine = Engine()
    schedule = define(
        engine,
        args.schedule,
        passcode=lambda: read_passcode(args, confirm=True),  # once all is checked
        every=args.every,
        cron=args.cron,
        store=args.store,
        keep_days=args.keep_days,
        description=args.description,
        sources=args.source,
    )
    print(
        f"Added schedule {schedule.name} ({schedule.recurrence}, into {schedule.store}) to "
        f"{engine.config.path}. It keeps a write key, not the passcode: its backups "
        "restore with the passcode. 'strongroom serve' runs it."
    )
    return 0


def run_schedules_list(args: argparse.Namespace) -> int:
    """The schedules; exit 3 (ConfigError) after them if any is damaged, naming it."""
    from .schedules import load_schedules

    now = utc_now()
    found, damaged = load_schedules(StoresConfig.load())
    schedules = found.values()
    if args.json:
        _print_json(
            {
                "schedules": [s.to_dict(now) for s in schedules],
                "damaged": [{"name": n, "problem": p} for n, p in damaged.items()],
            }
        )
    else:
        _print_schedules(schedules, now)
    if damaged:
        raise ConfigError(
            f"{len(damaged)} schedule(s) are damaged and do not run (the others do): "
            + " ".join(damaged.values())
        )
    return 0


def _print_schedules(schedules: Iterable[Schedule], now: datetime) -> None:
    rows = [
        (
            s.name,
            s.store,
            str(s.recurrence),
            _keep(s.keep_days),
            _date(s.next_runs(now, 1)[0]) if s.enabled else "paused",
            s.description,
        )
        for s in schedules
    ]
    _print_table(("NAME", "STORE", "RECURRENCE", "KEEP", "NEXT RUN", "DESCRIPTION"), rows)


def run_show(args: argparse.Namespace) -> int:
    from .scheduler import runs
    from .schedules import get_schedule

    with Engine() as engine:
        schedule = get_schedule(engine.config, args.schedule)
        previous = runs(engine, schedule)
    document = schedule.to_dict(utc_now())
    document["lastRun"] = previous[0].to_dict() if previous else None
    if args.json:
        _print_json(document)
        return 0
    fields = {
        "name": schedule.name,
        "store": schedule.store,
        "recurrence": str(schedule.recurrence),
        "keep": _keep(schedule.keep_days),
        "state": "enabled" if schedule.enabled else "paused",
        "sources": ", ".join(schedule.sources) or "those of the serve that runs it",
        "description": schedule.description or "-",
        "next runs": ", ".join(_epoch(ms) for ms in document["nextRuns"]) or "-",
    }
    if not schedule.enabled:  # as the schedule's page says it
        fields["next runs"] += " (when resumed)"
    if previous:
        last = previous[0]
        fields["last run"] = f"{last.name} {last.status} (job {last.jobid})"
    _print_fields(fields.items(), 12)
    return 0


def run_schedule_edit(args: argparse.Namespace) -> int:
    from .schedules import remove, update

    engine = Engine()
    if args.action == "remove":
        remove(engine, args.schedule)
        print(f"Removed schedule {args.schedule}; its backups stay until their retentionDate.")
    else:
        update(engine, args.schedule, enabled=args.action == "resume")
        print(f"Schedule {args.schedule} is {'resumed' if args.action == 'resume' else 'paused'}.")
    return 0


def run_run(args: argparse.Namespace) -> int:
    from .scheduler import run_now

    with Engine() as engine:
        job = engine.jobs.wait(run_now(engine, args.schedule).jobid)
    if job.status is not JobStatus.COMPLETED or job.result is None:
        raise JobError(
            f"The run of schedule {args.schedule} ended {job.status}: {job.messages[-1]}"
        )
    if args.json:
        _print_json(dict(job.result))
    else:
        print(f"Backed up {job.result['name']} into {job.result['backupStore']} (job {job.jobid}).")
    return 0


def run_jobs_list(args: argparse.Namespace) -> int:
    with _jobs_engine(args) as engine:
        status = None if args.status is None else JobStatus(args.status)
        jobs, _ = engine.jobs.find(status=status, operation=args.operation, limit=None)
    if args.json:
        _print_json({"jobs": [job.to_dict() for job in jobs]})
        return 0
    if not jobs:
        print(_no_jobs(status, args.operation))
        return 0
    header = ("JOB", "OPERATION", "STORE", "BACKUP", "STATUS", "STAGE", "SUBMITTED")
    rows = [
        (
            j.jobid,
            j.operation,
            j.store or "-",
            j.name or "-",
            j.status,
            j.stage,
            _epoch(j.starttime),
        )
        for j in jobs
    ]
    _print_table(header, rows)
    return 0


def _no_jobs(status: JobStatus | None, operation: str | None) -> str:
    """What an empty job listing says, naming strongroom's operations when the one asked
    for is none of them (a typo finds nothing, and should not look like an empty table)."""
    asked = (("status", status and status.value), ("operation", operation))
    what = " and ".join(f"{key} {value!r}" for key, value in asked if value)
    message = f"No jobs with {what}." if what else "No jobs."
    if operation is not None and operation not in OPERATION_NAMES:
        message += f" strongroom's operations are {', '.join(OPERATION_NAMES)}."
    return message


def run_jobs_show(args: argparse.Namespace) -> int:
    with _jobs_engine(args) as engine:
        job = engine.jobs.get(args.jobid)
    if args.json:
        _print_json(job.to_dict())
        return 0
    fields = {
        "jobid": job.jobid,
        "operation": job.operation,
        "backupStore": job.store or "-",
        "backupName": job.name or "-",
        "status": job.status,
        "starttime": _epoch(job.starttime),
        "endtime": _epoch(job.endtime),
    }
    _print_fields([*fields.items(), *(("message", m) for m in job.messages)], 14)
    stages = [
        (s["name"], s["state"], _epoch(s["lastUpdated"]), f"{s['duration'] / 1000:.1f} s")
        for s in job.stage_dicts()
    ]
    if stages:
        print()
        _print_table(("STAGE", "STATE", "LAST UPDATED", "DURATION"), stages)
    return 0


def _jobs_db_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--jobs-db",
        metavar="URL",
        help="where jobs are kept: postgresql://user@host:port/db for replicas sharing "
        "them (default: $STRONGROOM_JOBS_DB, else sqlite:///$STRONGROOM_HOME/jobs.sqlite3)",
    )


def _jobs_engine(args: argparse.Namespace) -> Engine:
    """The Engine of a command that uses the job table (`--jobs-db`), its URL checked
    before any job starts; a password on the command line is warned of, not shown."""
    engine = Engine(jobs_db=args.jobs_db)
    check_location(engine.jobs_db)
    if args.jobs_db and has_password(args.jobs_db):
        print(
            "strongroom: warning: the --jobs-db URL contains a password, which other users "
            "of this machine can read in the process list (ps); set STRONGROOM_JOBS_DB "
            "or put the password in ~/.pgpass instead.",
            file=sys.stderr,
        )
    return engine


def run_benchmark(args: argparse.Namespace) -> int:
    report = measure(Engine(), args.store, size=args.size, seconds=args.seconds)
    if args.json:
        _print_json(report.to_dict())
    else:
        _print_benchmark(report)
    return 0


def run_token_new(args: argparse.Namespace) -> int:
    from .web.auth import TOKEN_ID, add_token, hash_token, new_token

    token = new_token()
    path = add_token(token)
    print(token)
    print(
        f"strongroom: its SHA-256 hash was added to {path}; the token itself is stored "
        f"nowhere, so keep it now. Its id is {hash_token(token)[:TOKEN_ID]} "
        "('strongroom token remove ID' stops accepting it).",
        file=sys.stderr,
    )
    return 0


def run_token_list(args: argparse.Namespace) -> int:
    from .web.auth import token_entries

    entries = token_entries()
    if args.json:
        _print_json({"tokens": [entry.to_dict() for entry in entries]})
    elif entries:
        rows = [(entry.token_id, entry.source, entry.comment) for entry in entries]
        _print_table(("ID", "FROM", "COMMENT"), rows)
    else:
        print("No tokens: 'strongroom token new' makes one.")
    return 0


def run_token_remove(args: argparse.Namespace) -> int:
    from .web.auth import remove_token

    path = remove_token(args.token_id)
    print(f"Removed the token {args.token_id} from {path}; it is refused from now on.")
    return 0


# -- helpers ----------------------------------------------------------------------------


def read_passcode(args: argparse.Namespace, *, confirm: bool = False) -> Passcode:
    """From a file (`--passcode-file`), the environment (STRONGROOM_PASSCODE, taken out of
    it by `main`), or a prompt: never from the command line."""
    passcode_file: str | None = args.passcode_file
    if passcode_file:
        try:
            lines = Path(passcode_file).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise PasscodeError(
                f"Cannot read the passcode file {passcode_file!r}: {exc.strerror}."
            ) from None
        except UnicodeDecodeError:
            raise PasscodeError(
                f"The passcode file {passcode_file!r} is not UTF-8 text; save it as UTF-8."
            ) from None
        if not lines or not lines[0]:
            raise PasscodeError(
                f"The passcode file {passcode_file!r} has an empty first line; "
                "put the passcode on it."
            )
        return Passcode(lines[0])
    variable: _Variable = args.passcode_variable
    if variable.value is not None:
        if not variable.value:
            raise PasscodeError(
                f"{PASSCODE_ENV} is set but empty: set it to the passcode, or unset it to be "
                "asked for one."
            )
        return Passcode(variable.value)
    if not sys.stdin.isatty():
        raise PasscodeError(
            f"A passcode is needed: use --passcode-file FILE or set {PASSCODE_ENV}."
        )
    passcode = Passcode(getpass.getpass("Passcode: "))
    if confirm and Passcode(getpass.getpass("Passcode again: ")) != passcode:
        raise PasscodeError("The two passcodes differ; nothing was backed up.")
    return passcode


@contextmanager
def progress_bar(label: str) -> Iterator[Progress | None]:
    """A progress bar on stderr when it is a terminal, else nothing."""
    if not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm  # only here: a command without a terminal starts 0.1 s sooner cold

    size = shutil.get_terminal_size()  # 80x24 where the terminal reports no size
    with tqdm(
        desc=label,
        unit="B",
        unit_scale=True,
        unit_divisor=1000,  # decimal SI, as every size the command prints
        file=sys.stderr,
        ncols=size.columns,
        nrows=size.lines,
    ) as bar:

        def update(done: int, total: int | None) -> None:
            if total is not None and bar.total != total:
                bar.total = total
            bar.update(done - bar.n)

        yield update
        if bar.total is not None:  # a create's total is an estimate: fill the bar, keep it
            bar.update(bar.total - bar.n)


def _command(
    commands: Any, name: str, help_text: str, run: Callable[[argparse.Namespace], int] | None
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        name, help=help_text, description=help_text
    )
    parser.set_defaults(command_parser=parser)
    if run is not None:
        parser.set_defaults(run=run)
    return parser


def _store_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", metavar="S", help="backup store (default: the default store)")


def _passcode_option(parser: argparse.ArgumentParser | argparse._MutuallyExclusiveGroup) -> None:
    parser.add_argument(
        "--passcode-file",
        metavar="F",
        help=f"file whose first line is the passcode (else ${PASSCODE_ENV} or a prompt)",
    )


def _backup_name(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="N", help="the backup's name (see 'strongroom list')")


def _json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON (stable; see README)")


def _anew_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--anew",
        action="store_true",
        help="mark the place even though this home knew a store there that has lost its "
        "store marker and backups: only if they were deleted on purpose, never for a disk "
        "that is not mounted",
    )


def _parse_option(text: str) -> tuple[str, str | dict[str, str]]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"--option takes KEY=VALUE (or KEY=env:VARIABLE); got {text!r}.")
    if value.startswith("env:"):
        return key, {"env": value[4:]}
    return key, value


#: The letter `ls -l` shows for each kind of entry.
_KIND = {"file": "-", "dir": "d", "symlink": "l", "hardlink": "h"}


def _backup_id_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backup-id",
        metavar="ID",
        help="fail unless the name still holds this backup (its backupId, shown by info)",
    )


def _emit_backup(info: BackupInfo, as_json: bool) -> None:
    if as_json:
        _print_json(info.to_dict())
        return
    fields = info.to_dict()
    fields["completeTime"] = _date(info.created)
    fields["retentionDate"] = _until(info.retention_date)
    fields["sourceSize"] = human_size(info.source_size)
    fields["storedSize"] = human_size(info.stored_size)
    for left_out in ("leftOut", "leftOutCount"):  # the warnings on stderr named each
        fields.pop(left_out, None)
    _print_fields(fields.items(), 14)


def _print_benchmark(report: BenchmarkReport) -> None:
    machine, kdf = report.machine, report.kdf
    print(
        f"strongroom {machine['strongroom']}, Python {machine['python']}, "
        f"{machine['cpuCount']} CPUs, {machine['platform']}"
    )
    print(
        f"store {report.store} ({report.url}): {human_size(report.size)} in objects of "
        f"{human_size(report.chunk_size)}, {report.concurrency} at a time"
    )
    print(
        f"Argon2id {human_size(kdf.memory_cost_kib * 1024)}, {kdf.iterations} iterations, "
        f"{kdf.lanes} lanes; AES-256-GCM; zstd levels {LEVELS[0]} to {LEVELS[-1]}"
    )
    print()
    rows = [
        (
            m.stage,
            m.data or "-",
            "-" if m.bytes_per_second is None else f"{human_size(round(m.bytes_per_second))}/s",
            f"{m.per_second:,.1f} {m.unit}/s",
            _duration(m.seconds_each),
            f"{m.seconds:.2f}",
        )
        for m in report.stages
    ]
    _print_table(("STAGE", "DATA", "SPEED", "RATE", "EACH", "SECONDS"), rows)


class _Version(argparse.Action):
    """--version, looked up only when asked for (argparse's wants it at every start)."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        print(f"strongroom {installed_version() or '(from a source tree)'}")
        parser.exit()


def _port(text: str) -> int:
    """--port: a TCP port number, 0 to 65535 (0: one the system picks)."""
    if not (text.isascii() and text.isdigit()) or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0 to 65535)")
    return int(text)


def _mebibytes(text: str) -> int:
    """--size: MiB, a fraction of one too, as bytes."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of MiB")
    return round(value * MIB)


def _duration(seconds: float) -> str:
    return f"{seconds:.3g} s" if seconds >= 1 else f"{seconds * 1000:.3g} ms"


def _print_json(document: object) -> None:
    print(json.dumps(document, indent=2, sort_keys=True))


def _print_table(header: Sequence[object], rows: Sequence[Sequence[object]]) -> None:
    cells = [[printable(cell) for cell in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def _print_fields(fields: Iterable[tuple[str, object]], width: int) -> None:
    """One `key value` line per field, the values' control characters escaped."""
    for key, value in fields:
        print(f"{key:<{width}} {printable(value)}")


def _retention_options(parser: argparse.ArgumentParser, *, required: bool) -> None:
    when = parser.add_mutually_exclusive_group(required=required)
    when.add_argument(
        "--retention-date",
        metavar="WHEN",
        help="when cleanup may delete it: 2027-01-31, 2027-01-31T02:00Z, epoch ms, or never",
    )
    when.add_argument("--keep-days", metavar="N", help="keep it N days from now, or never")


def _retention(args: argparse.Namespace) -> datetime | None:
    return retention_from(args.retention_date, args.keep_days, utc_now())


def _keep(days: int | None) -> str:
    return "never expires" if days is None else f"{days} day{'' if days == 1 else 's'}"


def _until(moment: datetime | None) -> str:
    return "never" if moment is None else _date(moment)


def _date(moment: datetime | None) -> str:
    return "-" if moment is None else f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def _epoch(epoch_ms: int | None) -> str:
    return _date(None if epoch_ms is None else from_epoch_ms(epoch_ms))


if __name__ == "__main__":
    sys.exit(main())
