"""Sizes as people read them: the one formatter the command line and the admin pages share."""

from __future__ import annotations

__all__ = ["human_size"]


def human_size(size: int) -> str:
    """Bytes in decimal SI units, as `du -h --si` and the progress bar count (1 kB = 1000 B);
    JSON keeps bytes."""
    if size < 1000:
        return f"{size} B"
    value = size / 1000
    for unit in ("kB", "MB", "GB", "TB"):
        if round(value, 1) < 1000:
            return f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} PB"
