"""The stores configuration: a TOML file naming stores, and the embedded default store.

```toml
default = "offsite"                       # optional; else "backupsDefault"

[stores.offsite]
url = "s3://my-bucket/backups"
options = { region = "eu-west-1", key = { env = "KEY_ID" }, secret = { env = "SECRET" } }
compression = "none"                      # optional; else "zstd" (or "zstd-fixed")

[api]                                     # optional: what admin API callers may register
allow_stores = ["s3://my-bucket/teams/", "file:///srv/backups/"]

[schedules.nightly]                       # recurring backups: see schedules.py
store = "offsite"
cron = "0 2 * * *"
```

The file is `$STRONGROOM_CONFIG`, else `$STRONGROOM_HOME/config.toml`; STRONGROOM_HOME
defaults to the platform's user data directory. With no file at all there is still
one store, `backupsDefault`, in `$STRONGROOM_HOME/stores/backupsDefault`, so a first
backup needs no setup. Secrets are written as `{ env = "NAME" }` references and read
from the environment only when the store is opened. The file is written owner-only
(0600), atomically.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlsplit

from .errors import ConfigBusyError, ConfigError, UnknownStoreError
from .format import validate_name
from .libc import rename_noreplace

if TYPE_CHECKING:
    from .enginestores import EngineStores

__all__ = [
    "COMPRESSIONS",
    "EMBEDDED_STORE_NAME",
    "StoreSpec",
    "StoresConfig",
    "config_path",
    "edit_config",
    "editing",
    "strongroom_home",
    "write_private",
]

EMBEDDED_STORE_NAME = "backupsDefault"
#: A store's `compression` settings; the first is the default.
COMPRESSIONS = ("zstd", "zstd-fixed", "none")
HOME_ENV = "STRONGROOM_HOME"
CONFIG_ENV = "STRONGROOM_CONFIG"

OptionValue = str | int | float | bool | dict[str, str]
T = TypeVar("T")
#: How long an edit waits for another to end (seconds) before it gives up and says so.
LOCK_TIMEOUT = 10.0
#: How often a waiting edit tries the lock again (seconds).
_LOCK_POLL = 0.05
#: Held by the thread of this process that is editing a configuration file.
_EDITS = threading.Lock()


def strongroom_home() -> Path:
    """Where strongroom keeps its state: $STRONGROOM_HOME or the user data directory."""
    configured = os.environ.get(HOME_ENV)
    if configured:
        return Path(configured)
    import platformdirs  # here, not at the top: only this needs it, and it costs every start

    return Path(platformdirs.user_data_dir("strongroom"))


def config_path() -> Path:
    configured = os.environ.get(CONFIG_ENV)
    return Path(configured) if configured else strongroom_home() / "config.toml"


@dataclass(frozen=True, slots=True)
class StoreSpec:
    """A configured store: its name, URL and backend options (secrets as env references)."""

    name: str
    url: str
    options: Mapping[str, OptionValue] = field(default_factory=dict, repr=False)
    #: How its backups' chunks are encoded (`COMPRESSIONS`): "zstd" (a chunk that does
    #: not shrink is stored as it is; the level steps down while compressing holds the
    #: create back: `compressionlevel`), "zstd-fixed" (always the strongest level), or
    #: "none", for speed over size on a fast disk.
    compression: str = "zstd"

    def __post_init__(self) -> None:
        validate_name(self.name, "store")
        if self.compression not in COMPRESSIONS:
            raise ConfigError(
                f"Store {self.name!r}: compression {self.compression!r} is not one of "
                f"{', '.join(COMPRESSIONS)}."
            )
        if "://" not in self.url:
            raise ConfigError(
                f"Store {self.name!r}: {self.url!r} is not a URL; write it with a scheme, "
                "for example file:///srv/backups or s3://bucket/prefix."
            )
        if _has_password(self.url):  # so no spec, repr, error or config file can hold one
            raise ConfigError(
                f"Store {self.name!r}: the URL carries a password. Leave it out of the URL and "
                "give it as an option read from the environment: --option "
                "password=env:VARIABLE (in config.toml, under the store's url: "
                'options = { password = { env = "VARIABLE" } }).'
            )

    def __repr__(self) -> str:
        return f"StoreSpec(name={self.name!r}, url={self.url!r}, options={sorted(self.options)})"

    def to_dict(self, *, default: bool) -> dict[str, Any]:
        """The admin API's store fields (`stores list --json` prints the same); no options,
        so nothing secret is shown. `rootDir` is the directory, or the bucket and prefix."""
        parts = urlsplit(self.url)
        root = unquote(parts.path) if parts.scheme == "file" else parts.netloc + parts.path
        return {
            "name": self.name,
            "default": default,
            "type": parts.scheme,
            "url": self.url,
            "rootDir": root,
            "compression": self.compression,
        }

    def resolve(self) -> StoreSpec:
        """The same spec with every `{env = "NAME"}` reference replaced by its value."""
        return replace(self, options={k: self._resolve(k, v) for k, v in self.options.items()})

    def _resolve(self, key: str, value: OptionValue) -> OptionValue:
        if not isinstance(value, dict):
            return value
        variable = value.get("env")
        if set(value) != {"env"} or not isinstance(variable, str):
            raise ConfigError(
                f"Store {self.name!r}, option {key!r}: a secret reference is written "
                '{ env = "VARIABLE_NAME" }.'
            )
        if variable not in os.environ:
            raise ConfigError(
                f"Store {self.name!r}, option {key!r}: the environment variable {variable} "
                "is not set; export it before using this store."
            )
        return os.environ[variable]


@dataclass(slots=True)
class StoresConfig:
    """The named stores, which one is the default, and the locations the operator lets
    admin API callers register stores at (`[api] allow_stores`, URL prefixes)."""

    path: Path
    stores: dict[str, StoreSpec]
    default: str
    allow_stores: list[str] = field(default_factory=list)
    #: Where the embedded store lives (and, for an Engine, everything else it keeps).
    home: Path = field(default_factory=strongroom_home)
    #: The `[schedules.NAME]` tables as written; schedules.py reads and edits them, and
    #: `save` writes them back, so an edit of the stores never loses a schedule. Out of
    #: the repr: each holds its write key's secret.
    schedules: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, path: Path | None = None, *, home: Path | None = None) -> StoresConfig:
        """The configuration file at `path`, else `home`/config.toml when a home is given
        (a tenant's own), else `$STRONGROOM_CONFIG` or `$STRONGROOM_HOME`/config.toml."""
        if path is None:
            path = home / "config.toml" if home is not None else config_path()
        home = home if home is not None else strongroom_home()
        document: dict[str, Any] = {}
        if path.exists():
            import tomllib  # only a command that finds a configuration file pays for it

            try:
                document = tomllib.loads(path.read_text(encoding="utf-8"))
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise ConfigError(
                    f"The stores configuration {path} is not valid TOML: {exc}"
                ) from None
        stores = {EMBEDDED_STORE_NAME: embedded_store(home)}
        tables = document.get("stores", {})
        if not isinstance(tables, dict):
            raise ConfigError(f"{path}: 'stores' must be a table of [stores.NAME] sections.")
        for name, table in tables.items():
            stores[name] = _spec_from_table(path, name, table)
        default = document.get("default", EMBEDDED_STORE_NAME)
        if default not in stores:
            raise ConfigError(f"{path}: the default store {default!r} is not configured.")
        allowed = _allow_stores(path, document.get("api", {}))
        return cls(path, stores, default, allowed, home, _schedule_tables(path, document))

    def get(self, name: str | None = None) -> StoreSpec:
        """The store called `name`, or the default store."""
        name = self.default if name is None else validate_name(name, "store")
        try:
            return self.stores[name]
        except KeyError:
            raise UnknownStoreError(
                f"No store is named {name!r} (configured: {', '.join(sorted(self.stores))}). "
                f"Add it with 'strongroom stores add {name} URL'."
            ) from None

    def add(self, spec: StoreSpec, *, make_default: bool = False) -> None:
        """Add a new store. A configured name is refused, the embedded store's too: re-adding
        one would silently repoint it, and every backup in it would vanish from listings."""
        if spec.name == EMBEDDED_STORE_NAME:
            raise ConfigError(
                f"{EMBEDDED_STORE_NAME!r} is the embedded default store "
                f"({self.stores[EMBEDDED_STORE_NAME].url}). Give your store another name, and "
                "add it with --default to make it the default store."
            )
        if spec.name in self.stores:
            raise ConfigError(
                f"A store named {spec.name!r} is already configured "
                f"({self.stores[spec.name].url}). To point it elsewhere, remove it first "
                f"('strongroom stores remove {spec.name}'; its backups stay where they are) and "
                "add it again; to make a new store the default, add it with --default."
            )
        self.stores[spec.name] = spec
        if make_default:
            self.default = spec.name

    def make_default(self, name: str) -> None:
        """Make the configured store `name` the default store."""
        self.default = self.get(name).name

    def is_embedded(self, spec: StoreSpec) -> bool:
        """Whether `spec` is strongroom's own embedded store (made whenever it is missing,
        never asked for a store marker), however its settings were written."""
        return spec.name == EMBEDDED_STORE_NAME and spec.url == embedded_store(self.home).url

    def remove(self, name: str) -> None:
        spec = self.get(name)
        if self.is_embedded(spec):  # first: removing schedules would not help
            raise ConfigError(f"{name!r} is the embedded default store and cannot be removed.")
        users = sorted(
            s
            for s, table in self.schedules.items()
            if isinstance(table, dict) and table.get("store") == name
        )
        if users:
            if len(users) == 1:
                which, them = f"schedule {users[0]} backs", "it"
            else:
                which, them = f"schedules {', '.join(users)} back", "them"
            raise ConfigError(
                f"The {which} up into store {name!r}; remove {them} first ('strongroom "
                "schedules remove NAME', or the admin API's schedules/NAME/delete)."
            )
        del self.stores[name]
        self.stores.setdefault(EMBEDDED_STORE_NAME, embedded_store(self.home))
        if self.default == name:
            self.default = EMBEDDED_STORE_NAME

    def save(self) -> None:
        """Write the configuration atomically (the embedded store is implicit)."""
        tables = {
            spec.name: {
                "url": spec.url,
                **({"options": dict(spec.options)} if spec.options else {}),
                **({"compression": spec.compression} if spec.compression != "zstd" else {}),
            }
            for spec in self.stores.values()
            if spec != embedded_store(self.home)
        }
        document: dict[str, Any] = {"default": self.default, "stores": tables}
        if self.allow_stores:
            document["api"] = {"allow_stores": self.allow_stores}
        if self.schedules:
            document["schedules"] = self.schedules
        import tomli_w  # only edits write TOML

        write_private(self.path, tomli_w.dumps(document))


@contextmanager
def editing(path: Path) -> Iterator[None]:
    """Hold the configuration file at `path` for one edit (re-read, change, save): one at a
    time across threads and processes (a lock on `.<name>.lock` beside it), so a `serve`
    replica and the CLI editing stores or schedules at once never lose each other's edit.
    An edit waits at most LOCK_TIMEOUT for another to end, then raises ConfigBusyError."""
    lock = path.with_name(f".{path.name}.lock")
    deadline = time.monotonic() + LOCK_TIMEOUT
    if not _EDITS.acquire(timeout=LOCK_TIMEOUT):
        raise _busy(lock)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            while not _try_lock(fd):
                if time.monotonic() >= deadline:
                    raise _busy(lock)
                time.sleep(_LOCK_POLL)
            yield
        finally:
            os.close(fd)
    finally:
        _EDITS.release()


def edit_config(
    engine: EngineStores,
    change: Callable[[StoresConfig], T],
    *,
    check: Callable[[], None] | None = None,
) -> T:
    """One edit of the engine's configuration file (its stores or schedules), locked:
    re-read it (with the engine's home, so a tenant keeps its own embedded store), change
    it, switch the engine to it and run `check` (say, open a store just added); only then
    write it (0600). If the check or the write fails, the engine goes back to what it had
    and the file is as it was."""
    with editing(engine.config.path):
        config = StoresConfig.load(engine.config.path, home=engine.home)
        result = change(config)
        previous = engine.config
        engine.use_config(config)
        try:
            if check is not None:
                check()
            config.save()
        except BaseException:
            engine.use_config(previous)
            raise
        return result


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _busy(lock: Path) -> ConfigBusyError:
    return ConfigBusyError(
        f"Another edit of the configuration has held its lock {lock} for over "
        f"{LOCK_TIMEOUT:g} s, so this one was not made. Try again once it ends; 'fuser "
        f"{lock}' names the process that holds it (the lock goes with that process)."
    )


def write_private(
    path: Path, text: str, *, overwrite: bool = True, make_parents: bool = True
) -> None:
    """Replace `path` atomically with `text`, readable by its owner only (0600) from the
    first byte: a new temporary file of a random name (never one planted beforehand, nor
    another writer's) beside it, fsynced, then renamed over it, all relative to one
    descriptor of the directory. Without `overwrite` it is put in place only if nothing,
    not even a link, has the name, else FileExistsError (`_place_new`). Neither follows a
    link at `path`. Without `make_parents`, a missing directory is FileNotFoundError."""
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    parent = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    temporary = f".{path.name}.{os.urandom(8).hex()}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(temporary, flags, 0o600, dir_fd=parent)
        try:
            with open(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(fd)
            if overwrite:
                os.replace(temporary, path.name, src_dir_fd=parent, dst_dir_fd=parent)
            else:
                _place_new(parent, temporary, path.name)
        finally:
            with suppress(FileNotFoundError):
                os.unlink(temporary, dir_fd=parent)
    finally:
        os.close(parent)


#: What link(2) answers on a file system without hard links (FAT: EPERM).
_NO_HARD_LINKS = frozenset((errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK))


def _place_new(directory: int, temporary: str, name: str) -> None:
    """Give `temporary` the name `name` only if nothing has it: a hard link, atomic wherever
    there are hard links; where there are none (a USB stick's FAT), a rename that never
    replaces (`libc.rename_noreplace`)."""
    try:
        os.link(temporary, name, src_dir_fd=directory, dst_dir_fd=directory)
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        rename_noreplace(directory, temporary, directory, name)


def _has_password(url: str) -> bool:
    try:
        return urlsplit(url).password is not None
    except ValueError:  # a malformed host: a user and a password may still precede an "@"
        return ":" in url.partition("://")[2].split("/", 1)[0].rpartition("@")[0]


def embedded_store(home: Path | None = None) -> StoreSpec:
    """The store that exists with no configuration at all, in `home` (default
    $STRONGROOM_HOME)."""
    directory = (home if home is not None else strongroom_home()) / "stores" / EMBEDDED_STORE_NAME
    return StoreSpec(EMBEDDED_STORE_NAME, directory.absolute().as_uri())


def _allow_stores(path: Path, table: object) -> list[str]:
    allowed = table.get("allow_stores", []) if isinstance(table, dict) else None
    if (
        not isinstance(table, dict)
        or set(table) - {"allow_stores"}
        or not isinstance(allowed, list)
        or not all(isinstance(url, str) for url in allowed)
    ):
        raise ConfigError(
            f"{path}: [api] takes allow_stores, a list of URL prefixes, for example "
            'allow_stores = ["s3://bucket/teams/", "file:///srv/backups/"].'
        )
    return allowed


def _schedule_tables(path: Path, document: dict[str, Any]) -> dict[str, Any]:
    """The `[schedules.NAME]` tables as written; one that is not a table is the business
    of its own schedule (schedules.py reports it, and it alone does not run)."""
    tables = document.get("schedules", {})
    if not isinstance(tables, dict):
        raise ConfigError(f"{path}: 'schedules' must be a table of [schedules.NAME] sections.")
    return tables


def _spec_from_table(path: Path, name: str, table: object) -> StoreSpec:
    if not isinstance(table, dict) or not isinstance(table.get("url"), str):
        raise ConfigError(
            f'{path}: [stores.{name}] needs a url, for example url = "file:///srv/backups".'
        )
    unknown = set(table) - {"url", "options", "compression"}
    if unknown:
        raise ConfigError(
            f"{path}: [stores.{name}] has unknown keys {sorted(unknown)}; use url, options "
            "and compression."
        )
    options = table.get("options", {})
    if not isinstance(options, dict):
        raise ConfigError(f"{path}: [stores.{name}] options must be a table.")
    compression = table.get("compression", COMPRESSIONS[0])
    try:
        return StoreSpec(validate_name(name, "store"), table["url"], options, str(compression))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc} Edit the file to fix it.") from None
