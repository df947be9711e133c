"""The chunk pipeline's compression choice."""

from __future__ import annotations

import os

from strongroom.pipeline import SAMPLE_SIZE, _looks_compressible


def test_random_data_is_not_worth_compressing() -> None:
    assert not _looks_compressible(memoryview(os.urandom(4 * 1024 * 1024)))


def test_a_compressible_stretch_under_a_sample_is_found() -> None:
    chunk = bytearray(os.urandom(4 * 1024 * 1024))
    chunk[-SAMPLE_SIZE:] = b"log line\n" * (SAMPLE_SIZE // 9) + b"\n" * (SAMPLE_SIZE % 9)
    assert _looks_compressible(memoryview(chunk))


def test_small_chunks_are_always_tried() -> None:
    assert _looks_compressible(memoryview(os.urandom(1000)))
