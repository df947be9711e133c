"""Backends come from pluggy plugins; the built-in one registers like any other."""

from __future__ import annotations

import json
import pydoc
import re
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fsspec.implementations.memory import MemoryFileSystem

import strongroom
from strongroom import (
    ConfigError,
    Engine,
    Store,
    StoresConfig,
    StoreSpec,
    UnknownBackendError,
    hookimpl,
)
from strongroom.cli import main
from strongroom.plugins import (
    DEFAULT_PLUGINS,
    BackendRegistry,
    StrongroomHookSpecs,
    build_registry,
    get_plugin_manager,
)
from tests.conftest import FAST_KDF, PASSCODE


def test_builtin_filesystem_backend_is_an_ordinary_plugin() -> None:
    manager = get_plugin_manager(autoload=False)
    assert [name for name, _ in manager.list_name_plugin() if name in DEFAULT_PLUGINS] == list(
        DEFAULT_PLUGINS
    )
    assert build_registry(manager).schemes == ["file"]


def test_unknown_scheme_names_installed_backends_and_the_package_to_install() -> None:
    registry = build_registry(get_plugin_manager(autoload=False))
    with pytest.raises(
        UnknownBackendError, match=r"installed: file; other fsspec.*Install strongroom-s3"
    ):
        registry.open(StoreSpec("offsite", "s3://bucket/prefix"))
    with pytest.raises(UnknownBackendError, match="no installed backend handles 'gopher'"):
        registry.open(StoreSpec("odd", "gopher://x/y"))


def test_a_third_party_backend_plugs_in_through_the_same_hook(
    home: Path, tree: Path, tmp_path: Path
) -> None:
    """A plugin registering `mem://` stores is used by the engine with no other change."""

    class MemoryStore(strongroom.Store):
        pass

    plugin = types.ModuleType("strongroom_mem_plugin")

    @hookimpl
    def strongroom_register_backends(registry: strongroom.BackendRegistry) -> None:
        registry.add(
            "mem",
            lambda spec: MemoryStore(spec.name, spec.url, MemoryFileSystem(), "/" + spec.name),
        )

    plugin.strongroom_register_backends = strongroom_register_backends  # type: ignore[attr-defined]
    manager = get_plugin_manager(autoload=False)
    manager.register(plugin)
    config = StoresConfig.load()
    config.add(StoreSpec("ram", "mem://ram"))
    engine = Engine(config, plugin_manager=manager, kdf=FAST_KDF)
    engine.init_store("ram")  # configured by hand: marked once
    engine.create("in-memory", [tree], passcode=PASSCODE, store="ram")
    assert [b.name for b in engine.list("ram")] == ["in-memory"]
    engine.restore("in-memory", tmp_path / "out", passcode=PASSCODE, store="ram")
    assert (tmp_path / "out" / "data" / "big.bin").read_bytes() == (tree / "big.bin").read_bytes()


@pytest.mark.parametrize("url", ["file:///srv/backups", "memory://backups"])
def test_a_backend_without_object_lock_refuses_the_option(url: str) -> None:
    registry = build_registry(get_plugin_manager(autoload=False))
    with pytest.raises(ConfigError, match="cannot lock objects until a date") as caught:
        registry.open(StoreSpec("vault", url, {"object_lock": "governance"}))
    assert "object_lock option cannot be honoured" in str(caught.value)
    assert registry.open(StoreSpec("vault", url)).lock_mode is None


@pytest.mark.parametrize("failure", [TypeError("missing 'host'"), OSError(111, "refused")])
def test_a_backend_failing_to_open_a_url_is_a_config_error_naming_the_store(
    failure: Exception,
) -> None:
    """Whatever a backend's constructor raises, the operator reads one sentence."""

    def factory(spec: StoreSpec) -> strongroom.Store:
        raise failure

    registry = build_registry(get_plugin_manager(autoload=False))
    registry.add("odd", factory)
    with pytest.raises(ConfigError, match=r"Store 'bad': odd://x/y cannot be opened \(") as caught:
        registry.open(StoreSpec("bad", "odd://x/y"))
    assert str(failure) in str(caught.value) and caught.value.__cause__ is failure


def test_an_unknown_object_lock_mode_is_refused_with_the_known_ones() -> None:
    registry = build_registry(get_plugin_manager(autoload=False))
    with pytest.raises(ConfigError, match="governance or compliance.*got 'legal-hold'"):
        registry.open(StoreSpec("vault", "file:///srv/backups", {"object_lock": "legal-hold"}))


def test_two_plugins_claiming_one_scheme_is_an_error() -> None:
    registry = build_registry(get_plugin_manager(autoload=False))
    with pytest.raises(ConfigError, match="Two strongroom plugins register the 'file'"):
        registry.add("file", lambda spec: None)  # type: ignore[arg-type,return-value]


def test_autoload_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(
        "pluggy.PluginManager.load_setuptools_entrypoints",
        lambda self, group: calls.append(group) or 0,
    )
    monkeypatch.setenv("STRONGROOM_DISABLE_PLUGIN_AUTOLOAD", "1")
    get_plugin_manager()
    assert calls == []
    monkeypatch.delenv("STRONGROOM_DISABLE_PLUGIN_AUTOLOAD")
    get_plugin_manager()
    assert calls == ["strongroom"]


def test_every_hook_is_prefixed_and_documented() -> None:
    hooks = [name for name in vars(StrongroomHookSpecs) if not name.startswith("_")]
    assert hooks, "there must be hooks to check"
    for name in hooks:
        assert name.startswith("strongroom_")
        assert ":param" in (getattr(StrongroomHookSpecs, name).__doc__ or "")


def test_misspelt_hook_fails_loudly() -> None:
    plugin = types.ModuleType("typo_plugin")

    @hookimpl
    def strongroom_register_backend(registry: object) -> None:  # missing "s"
        pass

    plugin.strongroom_register_backend = strongroom_register_backend  # type: ignore[attr-defined]
    manager = get_plugin_manager(autoload=False)
    manager.register(plugin)
    with pytest.raises(Exception, match="unknown hook"):
        manager.check_pending()
    assert "typo_plugin" not in sys.modules


def test_pydoc_shows_every_hook_with_its_docstring() -> None:
    """Plugin authors read the hooks with `pydoc strongroom.plugins`: they must be there."""
    assert "StrongroomHookSpecs" in strongroom.plugins.__all__
    text = pydoc.render_doc(strongroom.plugins, renderer=pydoc.plaintext)
    for name in (name for name in vars(StrongroomHookSpecs) if name.startswith("strongroom_")):
        summary = getattr(StrongroomHookSpecs, name).__doc__.strip().splitlines()[0]
        assert name in text and summary in text, f"pydoc strongroom.plugins omits {name}"


def install_plugin(site: Path, name: str, source: str) -> Path:
    """A distribution `strongroom-NAME` on sys.path whose `strongroom` entry point is the
    module `strongroom_NAME` with `source`."""
    dist_info = site / f"strongroom_{name}-1.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: strongroom-{name}\n")
    (dist_info / "entry_points.txt").write_text(f"[strongroom]\n{name} = strongroom_{name}\n")
    (site / f"strongroom_{name}.py").write_text(source)
    return site


def install_broken_plugin(site: Path) -> Path:
    """A distribution on sys.path whose `strongroom` entry point fails to import."""
    return install_plugin(site, "broken", "raise ImportError('no module named botocore')\n")


#: A plugin module registering a backend for `scheme` by the hook `hook(arguments)`,
#: whose body first runs `before` (on a line of its own).
PLUGIN = """
from strongroom import hookimpl
from strongroom.backends.file import LocalStore

@hookimpl
def {hook}({arguments}):
    {before}
    registry.add("{scheme}", lambda spec: LocalStore(spec.name, spec.url.split("://")[1]))
"""


def plugin(
    scheme: str,
    *,
    hook: str = "strongroom_register_backends",
    arguments: str = "registry",
    before: str = "pass",
) -> str:
    return PLUGIN.format(scheme=scheme, hook=hook, arguments=arguments, before=before)


BROKEN_PLUGINS = {
    "a misspelt hook": (
        {"typo": plugin("typo", hook="strongroom_register_backend")},
        r"plugin typo = strongroom_typo from strongroom-typo is not valid: unknown hook "
        r"'strongroom_register_backend'",
    ),
    "a hook with an argument no spec has": (
        {"wrongsig": plugin("wrongsig", arguments="registry, config")},
        r"plugin wrongsig = strongroom_wrongsig from strongroom-wrongsig is not valid: .*"
        r"Argument\(s\) \{'config'\} are declared in the hookimpl but can not be found",
    ),
    "a hook that raises": (
        {"raises": plugin("raises", before="import os; os.environ['NO_SUCH_VARIABLE']")},
        r"plugin raises = strongroom_raises from strongroom-raises failed to register its "
        r"backends \(KeyError: 'NO_SUCH_VARIABLE'\)",
    ),
    "two plugins claiming one scheme": (
        {"one": plugin("twice"), "two": plugin("twice")},
        r"Two strongroom plugins register the 'twice' store backend \(two = strongroom_two "
        r"from strongroom-two and one = strongroom_one from strongroom-one\); only one may\. "
        r"Reinstall or uninstall one of them",
    ),
    "a plugin claiming the built-in scheme": (
        {"file": plugin("file")},
        r"register the 'file' store backend \(file = strongroom_file from strongroom-file "
        r"and strongroom.backends.file \(built in\)\)",
    ),
}


@pytest.mark.parametrize("plugins", BROKEN_PLUGINS.values(), ids=BROKEN_PLUGINS.keys())
def test_a_broken_plugin_is_named_in_one_line_and_local_stores_and_cleanup_go_on(
    plugins: tuple[dict[str, str], str],
    home: Path,
    tree: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A plugin's mistake is a ConfigError that names its entry point and distribution
    and says what to do (not a traceback, nor "one of them"); backups on file:// stores
    are untouched, and a cleanup of every store reports the store that needs the plugins
    and still cleans the others."""
    sources, message = plugins
    for name, source in sources.items():
        monkeypatch.syspath_prepend(install_plugin(tmp_path / "site", name, source))
    monkeypatch.delenv("STRONGROOM_DISABLE_PLUGIN_AUTOLOAD")
    config = StoresConfig.load()
    config.add(StoreSpec("plugged", f"odd://{tmp_path / 'plugged'}"))
    engine = Engine(config, kdf=FAST_KDF)
    engine.create("expired", [tree], passcode=PASSCODE, retention_date="2100-01-01")
    with pytest.raises(ConfigError, match=message) as caught:
        engine.registry  # noqa: B018 (the admin API's fence reads every backend's options)
    assert "\n" not in str(caught.value) and "Reinstall or uninstall" in str(caught.value)
    later = datetime(2101, 1, 1, tzinfo=UTC)
    report = Engine(config, kdf=FAST_KDF, clock=lambda: later).cleanup()
    assert [entry.name for entry in report.entries if entry.action == "deleted"] == ["expired"]
    assert re.search(message, " ".join(report.errors))


@dataclass
class HostPlugin:
    """A host program's plugin object, whose repr holds its settings."""

    api_token: str

    @hookimpl
    def strongroom_register_backends(self, registry: BackendRegistry) -> None:
        registry.add("file", lambda spec: None)  # type: ignore[arg-type,return-value]


def test_a_host_programs_plugin_is_named_by_its_class_never_its_repr() -> None:
    manager = get_plugin_manager(autoload=False)
    manager.register(HostPlugin(api_token="s3cr3t-token"))
    with pytest.raises(ConfigError) as caught:
        build_registry(manager)
    assert "HostPlugin (registered by the host program)" in str(caught.value)
    assert "s3cr3t" not in str(caught.value)


def test_a_wrapper_of_the_registration_hook_is_refused_not_silently_skipped() -> None:
    plugin = types.ModuleType("wrapping_plugin")

    @hookimpl(wrapper=True)
    def strongroom_register_backends(registry: BackendRegistry) -> Iterator[None]:
        yield

    plugin.strongroom_register_backends = strongroom_register_backends  # type: ignore[attr-defined]
    manager = get_plugin_manager(autoload=False)
    manager.register(plugin)
    with pytest.raises(ConfigError, match="wrapping_plugin .* wraps strongroom_register_backends"):
        build_registry(manager)


def test_a_backend_library_that_is_missing_says_to_install_it(home: Path) -> None:
    registry = build_registry(get_plugin_manager(autoload=False))

    def lazy(spec: StoreSpec) -> Store:
        import strongroom_sdk_not_installed  # type: ignore[import-not-found]  # noqa: F401

        raise AssertionError("not reached")

    registry.add("lazy", lazy)
    with pytest.raises(
        ConfigError,
        match=r"needs the Python module 'strongroom_sdk_not_installed'"
        r", which is not installed: install it where strongroom runs",
    ):
        registry.open(StoreSpec("lz", "lazy://x"))


def test_local_stores_work_without_loading_installed_plugins(
    home: Path, tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broken (or merely slow to find) installed plugin does not stand between a person
    and a backup or restore on a local store; whatever may need a plugin loads them all
    first and says which failed."""
    monkeypatch.syspath_prepend(install_broken_plugin(tmp_path / "site"))
    monkeypatch.delenv("STRONGROOM_DISABLE_PLUGIN_AUTOLOAD")
    engine = Engine(kdf=FAST_KDF)
    engine.create("local", [tree], passcode=PASSCODE)
    engine.restore("local", tmp_path / "out", passcode=PASSCODE)
    assert (tmp_path / "out" / "data" / "big.bin").read_bytes() == (tree / "big.bin").read_bytes()
    failed = (
        r"plugin failed to load \(ImportError: no module named botocore\): "
        r"broken = strongroom_broken from strongroom-broken\. Reinstall"
    )
    with pytest.raises(ConfigError, match=failed):
        engine.registry  # noqa: B018 (the admin API's fence reads every backend's options)
    with pytest.raises(ConfigError, match=failed):
        engine.plugin_manager  # noqa: B018 (the admin API calls the authenticate hook)
    config = StoresConfig.load()
    config.add(StoreSpec("offsite", "s3://bucket/prefix"))
    with pytest.raises(ConfigError, match=failed):
        Engine(config, kdf=FAST_KDF).store("offsite")


#: A plugin registering the scheme odd:// with declared options.
DECLARING_PLUGIN = """
from strongroom import hookimpl
from strongroom.backends.file import LocalStore
from strongroom.plugins import BackendOptions

@hookimpl
def strongroom_register_backends(registry):
    options = BackendOptions(settings=["depth"], secrets=["pin"])
    registry.add("odd", lambda spec: LocalStore(spec.name, spec.url), options=options)
"""


def test_stores_backends_names_each_scheme_with_its_plugin_and_options(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """After installing a plugin, a person checks it loaded: `stores backends` lists every
    scheme with the entry point and distribution that registered it and what it declared."""
    monkeypatch.syspath_prepend(install_plugin(tmp_path / "site", "odd", DECLARING_PLUGIN))
    monkeypatch.delenv("STRONGROOM_DISABLE_PLUGIN_AUTOLOAD")
    assert main(["stores", "backends"]) == 0
    rows = [" ".join(line.split()) for line in capsys.readouterr().out.splitlines()]
    assert "odd:// odd = strongroom_odd from strongroom-odd depth; secrets: pin" in rows
    assert "file:// strongroom.backends.file (built in) -" in rows
    assert rows[-1].startswith("other strongroom.backends.generic (built in) fsspec protocols")
    assert "not s3 or az" in rows[-1]
    assert main(["stores", "backends", "--json"]) == 0
    backends = json.loads(capsys.readouterr().out)["backends"]
    assert {
        "scheme": "odd",
        "plugin": "odd = strongroom_odd from strongroom-odd",
        "settings": ["depth"],
        "endpoints": [],
        "secrets": ["pin"],
    } in backends
    assert backends[-1]["scheme"] is None and "sftp" in backends[-1]["takes"]


def test_stores_backends_says_when_installed_plugins_were_not_loaded(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With autoload off only the built-in backends show, and the command says why; a
    configuration that does not parse does not hide them."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text("[stores.broken\n")
    assert main(["stores", "backends"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == (
        "Installed plugins were not loaded: STRONGROOM_DISABLE_PLUGIN_AUTOLOAD is set."
    )
    assert [line.split()[0] for line in lines[1:-1]] == ["file://", "other"]
    assert main(["stores", "backends", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["autoload"] is False
