"""The admin API's own settings: how long a create may run (`timeoutInSeconds`).

They live in `$STRONGROOM_HOME/dr-settings.json` (0600, rewritten atomically), beside
the configuration rather than in it, so the API never rewrites the operator's file for
them. A home without the file has the products' default, 7200 seconds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from ..config import write_private
from ..errors import ConfigError
from .params import whole_number

__all__ = ["DEFAULT_TIMEOUT", "SETTINGS_FILE", "DrSettings", "parse_timeout"]

SETTINGS_FILE = "dr-settings.json"
#: The products' default backup time-out (seconds).
DEFAULT_TIMEOUT = 7200
#: The longest time-out accepted: 30 days.
MAX_TIMEOUT = 30 * 24 * 60 * 60


@dataclass(frozen=True, slots=True)
class DrSettings:
    """The settings of one home; `load` them for each use, as another process may change them."""

    timeout_seconds: int = DEFAULT_TIMEOUT

    @property
    def timeout(self) -> timedelta:
        """How long a create may run before it is cancelled."""
        return timedelta(seconds=self.timeout_seconds)

    @classmethod
    def load(cls, home: Path) -> DrSettings:
        path = home / SETTINGS_FILE
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls()
        except ValueError:
            raise ConfigError(f"{path} is not JSON; fix or delete it.") from None
        if not isinstance(document, dict):
            raise ConfigError(f"{path} must hold a JSON object; fix or delete it.")
        try:
            return cls(parse_timeout(str(document.get("timeoutInSeconds", DEFAULT_TIMEOUT))))
        except ConfigError as exc:  # the operator's file, not the request, is to be fixed
            raise ConfigError(f"{path}: {exc} Fix or delete it.") from None

    def save(self, home: Path) -> None:
        write_private(home / SETTINGS_FILE, json.dumps(self.to_dict()) + "\n")

    def to_dict(self) -> dict[str, int]:
        return {"timeoutInSeconds": self.timeout_seconds}


def parse_timeout(text: str) -> int:
    return whole_number("timeoutInSeconds", text, MAX_TIMEOUT, "seconds")
