"""The README's "Writing a backend" example, verbatim, passes the conformance suite."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

README = Path(__file__).parent.parent / "README.md"


def python_blocks(section: str) -> dict[str, str]:
    """The README section's Python blocks, by the file name each names on its first line."""
    text = README.read_text().split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    return {block.split()[1].removesuffix(",").removesuffix(".py"): block for block in blocks}


def test_the_backend_example_passes_the_suite(pytester: pytest.Pytester) -> None:
    blocks = python_blocks("Writing a backend")
    assert set(blocks) == {"my_backend", "test_memory_store"}
    pytester.makepyfile(**blocks)
    pytester.syspathinsert()
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == outcomes.get("errors", 0) == 0, result.stdout.str()
    assert outcomes["passed"] >= 14, "the example must run the suite, not skip it"
