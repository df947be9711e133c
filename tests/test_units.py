"""Sizes as the command line and the admin pages write them."""

from __future__ import annotations

import pytest

from strongroom.units import human_size


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0 B"), (999, "999 B"), (1000, "1.0 kB"), (67_800_000, "67.8 MB"), (999_960, "1.0 MB")],
)
def test_sizes_are_decimal_si_units(size: int, text: str) -> None:
    assert human_size(size) == text
