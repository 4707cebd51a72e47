"""The shipped conformance suite runs under pytest-trio without ``trio_mode``.

A plugin's own project need not turn on ``trio_mode`` (this project does):
``BackendConformance`` marks its tests ``trio`` itself, so outside this
project's configuration they run on trio instead of being refused as
unsupported coroutines.
"""

from __future__ import annotations

import pytest

PLUGIN_TESTS = """
import pytest
from fedstore.backends.memory import MemoryBackend
from fedstore.backends.testing import BackendConformance


class TestMemoryBackend(BackendConformance):
    @pytest.fixture
    async def backend(self):
        b = MemoryBackend()
        yield b
        await b.aclose()
"""


def test_conformance_suite_runs_without_trio_mode(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\n")  # no trio_mode: a plugin project's own, plain config
    pytester.makepyfile(test_plugin=PLUGIN_TESTS)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) >= 10, result.stdout.str()
    assert "failed" not in outcomes and "skipped" not in outcomes, result.stdout.str()
