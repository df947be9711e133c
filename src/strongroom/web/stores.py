"""Stores through the API: `settings` JSON into a StoreSpec, and edits of the stores file.

Register takes `settings={"url": "s3://bucket/prefix", "options": {...}, "type": "s3"}`:
`url` is the location, `options` the backend's options with secrets written as
`{"env": "VARIABLE"}` references (read from the server's environment when the store is
opened, never stored), and `type`, optional, must name the url's scheme. Update takes
`settings={"default": true}`. The HTML page registers with fields instead of JSON: `url` and
up to OPTION_ROWS option rows (`option1Key`, `option1Value`, ...), read by `spec_from_fields`.

Every edit re-reads the configuration file, opens the changed store through the engine
(so an unknown backend, a bad URL, an unset secret or a store that would not keep backups
fails before anything is saved), then saves the file and switches the engine to it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from ..config import COMPRESSIONS, StoreSpec, edit_config
from ..engine import Engine
from ..errors import ConfigError

__all__ = [
    "OPTION_ROWS",
    "FieldsError",
    "describe",
    "describe_all",
    "make_default",
    "register",
    "spec_from_fields",
    "spec_from_settings",
    "unregister",
]

EXAMPLE = '{"url": "file:///srv/backups"}'
#: The option rows (key and value) of the register form.
OPTION_ROWS = 3


def describe(engine: Engine, name: str) -> dict[str, Any]:
    spec = engine.config.get(name)
    return spec.to_dict(default=spec.name == engine.config.default)


def describe_all(engine: Engine) -> list[dict[str, Any]]:
    return [describe(engine, name) for name in engine.config.stores]


def spec_from_settings(name: str, text: str) -> StoreSpec:
    settings = _settings(text, {"type", "url", "options", "compression"})
    url, kind, options = settings.get("url"), settings.get("type"), settings.get("options", {})
    compression = settings.get("compression", COMPRESSIONS[0])
    if not isinstance(url, str):
        raise ConfigError(f"settings needs the store's location as a url, for example {EXAMPLE}.")
    if not isinstance(options, dict) or not all(_is_option(v) for v in options.values()):
        raise ConfigError(
            "settings.options must be an object of text, number or true/false values, with "
            'secrets as {"env": "VARIABLE"} references.'
        )
    if not isinstance(compression, str):
        raise ConfigError(f"settings.compression is one of {', '.join(COMPRESSIONS)}.")
    spec = StoreSpec(name, url, options, compression=compression)
    if kind is not None and str(kind).lower() != urlsplit(url).scheme.lower():
        raise ConfigError(
            f"settings.type {kind!r} does not match the url's scheme; leave type out or "
            f"write {urlsplit(url).scheme!r}."
        )
    return spec


class FieldsError(ConfigError):
    """Every problem with the register form's fields at once, one message each, so a
    person corrects them in one go."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__(" ".join(messages))
        self.messages = messages


def spec_from_fields(name: str, fields: Mapping[str, str]) -> StoreSpec:
    """A StoreSpec from the register form: `url`, and option rows whose values are text
    (a backend reads its options from text, as from `stores add --option KEY=VALUE`).
    Problems name the option, never its value (a value may be a secret typed by mistake)."""
    url = fields.get("url", "").strip()
    problems = [] if url else ["Give the store's URL, for example file:///srv/backups."]
    options: dict[str, str] = {}
    for row in range(1, OPTION_ROWS + 1):
        key = fields.get(f"option{row}Key", "").strip()
        value = fields.get(f"option{row}Value", "")
        if value and not key:
            problems.append(f"Option row {row} has a value but no name.")
        elif key and not value:
            problems.append(f"Option {key!r} has no value.")
        elif key in options:
            problems.append(f"Option {key!r} is given twice.")
        elif key:
            options[key] = value
    compression = fields.get("compression", COMPRESSIONS[0])
    if compression not in COMPRESSIONS:
        problems.append(f"Compression is one of {', '.join(COMPRESSIONS)}.")
    if problems:
        raise FieldsError(list(dict.fromkeys(problems)))  # each once, however many rows
    return StoreSpec(name, url, options, compression=compression)


def register(engine: Engine, spec: StoreSpec, *, default: bool) -> dict[str, Any]:
    engine.add_store(spec, default=default)
    return describe(engine, spec.name)


def make_default(engine: Engine, name: str, text: str) -> dict[str, Any]:
    if _settings(text, {"default"}).get("default") is not True:
        raise ConfigError(
            'The only store setting that changes is {"default": true}; to move a store, '
            "unregister it and register it again."
        )

    edit_config(engine, lambda config: config.make_default(name))
    return describe(engine, name)


def unregister(engine: Engine, name: str) -> None:
    edit_config(engine, lambda config: config.remove(name))


def _settings(text: str, allowed: set[str]) -> dict[str, Any]:
    try:
        settings = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"settings is not JSON ({exc.msg} at character {exc.pos}); "
            f"send an object such as {EXAMPLE}."
        ) from None
    except RecursionError:  # nesting deeper than the parser's stack
        raise ConfigError(f"settings nests too deeply; send an object such as {EXAMPLE}.") from None
    if not isinstance(settings, dict):
        raise ConfigError(f"settings must be a JSON object, such as {EXAMPLE}.")
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise ConfigError(
            f"settings has unknown keys {unknown}; it takes {', '.join(sorted(allowed))}."
        )
    return settings


def _is_option(value: object) -> bool:
    if isinstance(value, dict):
        return set(value) == {"env"} and isinstance(value["env"], str)
    return isinstance(value, str | int | float | bool)
