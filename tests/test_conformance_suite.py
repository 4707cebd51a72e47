"""The conformance suite itself: it runs outside trio_mode, and its checks can fail.

A third-party plugin's test session is simulated in a subprocess: a fresh
directory with its own (empty) pytest configuration, so neither this
project's ``trio_mode = true`` nor its warning filters apply.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

PLUGIN_TESTS = """
import pytest

from fedstore.backends import StoredObject
from fedstore.backends.memory import MemoryBackend
from fedstore.backends.testing import BackendConformance


class TestGood(BackendConformance):
    @pytest.fixture
    async def backend(self):
        yield MemoryBackend()


class TestNoPins(BackendConformance):
    supports_pinning = False

    @pytest.fixture
    async def backend(self):
        yield MemoryBackend()


class PaddedSize(MemoryBackend):
    async def add(self, source, **kw):
        stored = await super().add(source, **kw)
        return StoredObject(stored.cid, stored.size + 100)


class TestWrongSize(BackendConformance):
    @pytest.fixture
    async def backend(self):
        yield PaddedSize()
"""


def test_suite_runs_without_trio_mode_and_can_fail(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_plugin.py").write_text(PLUGIN_TESTS)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "test_plugin.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout
    outcomes: dict[str, dict[str, str]] = {}
    for cls, test, outcome in re.findall(
        r"^test_plugin\.py::(\w+)::(\S+) (PASSED|FAILED|SKIPPED|ERROR)", out, re.M
    ):
        outcomes.setdefault(cls, {})[test] = outcome
    assert set(outcomes) == {"TestGood", "TestNoPins", "TestWrongSize"}, out
    good = outcomes["TestGood"]
    assert len(good) >= 20 and set(good.values()) == {"PASSED"}, out
    no_pins = outcomes["TestNoPins"]
    assert {t for t, o in no_pins.items() if o != "PASSED"} == {"test_pin_unpin"}
    assert no_pins["test_pin_unpin"] == "SKIPPED"  # visible, not a silent pass
    wrong = outcomes["TestWrongSize"]
    assert {t for t, o in wrong.items() if o != "PASSED"} == {
        "test_add_bytes_gives_kubo_cid_v0",
        "test_add_bytes_gives_kubo_cid_v1",
        "test_add_multi_chunk",
        "test_add_empty",
        "test_add_file_matches_add_bytes",
    }, out
    assert set(wrong.values()) == {"PASSED", "FAILED"}
    assert proc.returncode == 1
