"""Test tiers, hypothesis profiles and a timing hint for fedstore's suite.

Tiers are markers (registered in ``pyproject.toml``; ``--strict-markers``
refuses any other name):

``slow``
    Takes more than about a second on an idle 2-core machine, or starts
    ``fedstore node`` processes. ``pytest -m "not slow"`` is the development
    tier (well under a minute); CI runs every tier on Python 3.11, 3.12 and
    3.13.
``multiprocess``
    Starts other Python interpreters (``subprocess``, ``NodeProcess``). An
    interpreter that imports py-libp2p costs about a second of CPU before it
    does anything, so when tests do not need a fresh process they share one
    through a module-scoped fixture (``test_node_multiprocess.py``'s ``net``
    is the model: one bootstrap and two trainers for the whole module,
    distinct round numbers per test, and ``mark()``/``since=`` to read only
    the lines a test caused). Tests that kill or corrupt their process
    (SIGKILL, crash points, RSS measurements) start their own.
``netns``
    Builds Linux network namespaces (needs root; skipped with its reason
    elsewhere). Always ``slow`` as well: this file adds it.
``live``
    Talks to a real service that is not started by the test (a Kubo daemon,
    a Pinata account), configured by environment variables and skipped
    otherwise; ``tox -e integration`` runs them. ``kubo`` and ``pinata`` say
    which service; either one implies ``live`` (added here).

Rules for new tests:

* Mark a module with ``pytestmark = [pytest.mark.slow, ...]`` when every test
  in it belongs to a tier, otherwise mark the single test. Marks only choose
  what runs when; they never skip, and a marked test asserts as much as any.
* A test that starts a process is ``multiprocess``; one that starts a node
  process, or runs longer than a second idle, is also ``slow``.
* Timing-sensitive tests wait for events with deadlines, never fixed sleeps,
  so that running the interpreters' suites side by side (CI does) only makes
  them slower, not flaky.
* At the end of a run this file lists unmarked tests that took longer than
  ``SLOW_HINT_SECONDS`` (setup + call + teardown), as a hint to mark them.
  It is a hint, not a failure: a loaded machine stretches every test.

Reruns: with ``FEDSTORE_RERUNS=N`` (tox sets 1) a failed test of the
``slow``, ``multiprocess`` or ``netns`` tiers runs again up to N times
(pytest-rerunfailures), and the end of the run lists each one that needed it
with its first error, as a flake to investigate (:class:`_Reruns`).

Hypothesis profiles: ``dev`` (the default) and ``ci`` (selected by
``HYPOTHESIS_PROFILE=ci``, which tox sets): CI keeps no example database in
its throw-away clone and prints the blob that reproduces a failure.
Per-test ``@settings`` (example counts, deadlines) apply under both.
"""

from __future__ import annotations

import os
import traceback
from collections import defaultdict
from collections.abc import Generator

import pytest
from hypothesis import settings

#: Unmarked tests slower than this (seconds) are listed at the end of a run.
SLOW_HINT_SECONDS = 2.0

settings.register_profile("dev")
settings.register_profile("ci", database=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


#: Reruns of a failed ``slow``/``multiprocess``/``netns`` test (FEDSTORE_RERUNS; tox sets 1).
RERUNS = int(os.environ.get("FEDSTORE_RERUNS", "0") or 0)
#: The tiers whose tests wait on other processes, sockets and the OS scheduler.
SCHEDULED_TIERS = ("slow", "multiprocess", "netns")


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(_TimingHint(), "fedstore-timing-hint")
    config.pluginmanager.register(_Reruns(), "fedstore-reruns")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Add the implied tiers: ``netns`` -> ``slow``; ``kubo``/``pinata`` -> ``live``; and, with
    ``FEDSTORE_RERUNS``, the reruns of the scheduled tiers (see :class:`_Reruns`)."""
    rerun = RERUNS > 0 and config.pluginmanager.hasplugin("rerunfailures")
    for item in items:
        if item.get_closest_marker("netns") and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)
        if (
            item.get_closest_marker("kubo") or item.get_closest_marker("pinata")
        ) and not item.get_closest_marker("live"):
            item.add_marker(pytest.mark.live)
        if rerun and any(item.get_closest_marker(m) for m in SCHEDULED_TIERS):
            item.add_marker(pytest.mark.flaky(reruns=RERUNS, reruns_delay=2))


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failure inside (nested) trio nurseries arrives wrapped in exception groups: name its
    root errors first, with where each was raised, and put the first in the summary line."""
    report = yield
    exc = call.excinfo.value if call.excinfo is not None else None
    if not report.failed or not isinstance(exc, BaseExceptionGroup):
        return report
    lines = []
    for leaf in _leaves(exc)[:5]:
        where = traceback.extract_tb(leaf.__traceback__)[-1:] if leaf.__traceback__ else []
        at = f" (at {where[0].filename}:{where[0].lineno} in {where[0].name})" if where else ""
        lines.append(f"{type(leaf).__name__}: {leaf}{at}")
    report.sections.insert(0, ("root errors, inside the exception groups", "\n".join(lines)))
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None and lines:
        crash.message = lines[0]
    return report


class _Reruns:
    """Names, at the end of a run, every test that failed and then passed on a rerun.

    Tests of the scheduled tiers run real processes and sockets on a shared
    2-core machine; under tox (``FEDSTORE_RERUNS=1``) a failure there is run
    once more. It is never hidden: each first failure is listed here with its
    error's last line, as a flake to investigate, and a test that fails twice
    fails the run. Plain ``pytest`` runs rerun nothing.
    """

    def __init__(self) -> None:
        self.first_failures: dict[str, str] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.outcome == "rerun":
            crash = getattr(report.longrepr, "reprcrash", None)
            text = str(report.longrepr or "").strip().splitlines()
            what = crash.message.splitlines()[0] if crash and crash.message else "".join(text[-1:])
            self.first_failures.setdefault(report.nodeid, str(what)[:300])

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.first_failures:
            return
        terminalreporter.section("failed once, then passed on a rerun (flakes to investigate)")
        for nodeid, last in self.first_failures.items():
            terminalreporter.line(f"  {nodeid}: {last}")


class _TimingHint:
    """Collects per-test durations and lists the slow unmarked ones at the end."""

    def __init__(self) -> None:
        self.durations: defaultdict[str, float] = defaultdict(float)
        self.slow: set[str] = set()

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        self.slow = {item.nodeid for item in items if item.get_closest_marker("slow")}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if not report.skipped:
            self.durations[report.nodeid] += report.duration

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        over = sorted(
            (
                (seconds, nodeid)
                for nodeid, seconds in self.durations.items()
                if nodeid not in self.slow and seconds > SLOW_HINT_SECONDS
            ),
            reverse=True,
        )
        if over:
            terminalreporter.section("unmarked slow tests")
            terminalreporter.line(
                f"over {SLOW_HINT_SECONDS:g} s without the 'slow' mark (see tests/conftest.py):"
            )
            for seconds, nodeid in over[:10]:
                terminalreporter.line(f"  {seconds:6.2f}s {nodeid}")


@pytest.fixture(autouse=True)
def _restore_logging() -> object:
    """Undo what a test's in-process ``fedstore`` command did to logging.

    ``setup_logging`` (run by ``fedstore.cli.main``) puts a handler on the root
    logger that writes to the ``sys.stderr`` of that moment: pytest's capture
    of one test, closed when the test ends. Left in place it would turn every
    later log record into a "Logging error" traceback on the real stderr.
    """
    import logging

    names = (None, "fedstore", "libp2p")
    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).level) for n in names}
    propagate = {n: logging.getLogger(n).propagate for n in names if n}
    yield
    for n, (handlers, level) in saved.items():
        logger = logging.getLogger(n)
        logger.handlers[:] = handlers
        logger.setLevel(level)
    for n, value in propagate.items():
        logging.getLogger(n).propagate = value
