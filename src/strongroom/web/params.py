"""Request parameters that are counts: checked as text before Python turns them into
numbers (so a 5,000-digit value is a 400, not a ValueError)."""

from __future__ import annotations

from ..errors import ConfigError

__all__ = ["whole_number"]


def whole_number(key: str, text: str, most: int, unit: str = "") -> int:
    """`text` as a whole number from 1 to `most`; ConfigError (400) naming `key` otherwise."""
    digits = text.isascii() and text.isdigit() and len(text) <= len(str(most))
    if not digits or not 1 <= int(text) <= most:
        of = f" of {unit}" if unit else ""
        raise ConfigError(f"{key} must be a whole number{of} from 1 to {most}.")
    return int(text)
