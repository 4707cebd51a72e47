"""Section ``startup``: wall time of ``fedstore --help`` and ``--version`` vs ``python -c pass``.

Each variant is a fresh interpreter started with :func:`subprocess.run`, so
the figures include what a user waits for: interpreter start, ``site``
(with the editable-install finder when fedstore is installed so), the
imports the command line needs, and building the argument parser. Variants
run interleaved (one run of each, repeated) so load on a shared machine hits
them alike; the medians are reported with the difference to the bare
interpreter. Target: ``fedstore --help`` under 0.3 s.

Two conditions, each with its own ``python -c pass`` baseline:

* *bytecode cached*, as an installed package runs: ``PYTHONPYCACHEPREFIX``
  points into the section's temporary directory and a warm-up run fills it
  (``PYTHONDONTWRITEBYTECODE`` is removed for these runs), so no source tree
  is written to;
* *compiled from source*: the same prefix pointing at an empty directory and
  ``PYTHONDONTWRITEBYTECODE=1``, so every module (the standard library's
  too) is compiled on every start; what an editable install pays in an
  environment that never writes ``.pyc`` files.

A last subprocess builds the parser and lists which heavy libraries got
imported along the way (there should be none; see :mod:`fedstore.cli`).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from fedstore.bench.common import BenchSizes, Row, SayFn, SectionResult, Target

NAME = "startup"
TITLE = "CLI start-up"

HELP_TARGET = Target("<", 0.3, on="value")

#: Libraries that cost tens to hundreds of milliseconds to import; ``fedstore --help`` needs none.
HEAVY_MODULES = (
    "alembic",
    "httpx",
    "libp2p",
    "numpy",
    "rich",
    "safetensors",
    "sqlalchemy",
    "stevedore",
    "trio",
    "zstandard",
)

_IMPORTED_SCRIPT = """
import json, sys
from fedstore.cli import build_parser
build_parser()
print(json.dumps(sorted(m for m in sys.argv[1:] if m in sys.modules)))
"""


def describe(sizes: BenchSizes) -> str:
    return f"fresh interpreters, median of {sizes.startup_runs} runs each, interleaved"


def fedstore_command() -> list[str]:
    """The ``fedstore`` console script beside this interpreter, else ``python -m fedstore``."""
    script = Path(sys.executable).with_name("fedstore")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "fedstore"]


def heavy_modules_imported() -> list[str]:
    """Which of :data:`HEAVY_MODULES` a fresh interpreter imports to build the CLI parser."""
    out = subprocess.run(
        [sys.executable, "-c", _IMPORTED_SCRIPT, *HEAVY_MODULES],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    names: list[str] = json.loads(out.stdout)
    return names


def _time_once(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, timeout=120
    )
    return time.perf_counter() - start


def _environments(workdir: Path) -> dict[str, dict[str, str]]:
    cached = dict(os.environ)
    cached.pop("PYTHONDONTWRITEBYTECODE", None)
    cached["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache")
    empty = workdir / "no-pycache"
    empty.mkdir()
    uncached = {**cached, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPYCACHEPREFIX": str(empty)}
    return {"bytecode cached": cached, "compiled from source": uncached}


def run(sizes: BenchSizes, workdir: Path, say: SayFn) -> SectionResult:
    fedstore = fedstore_command()
    envs = _environments(workdir)
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "fedstore --help": [*fedstore, "--help"],
        "fedstore --version": [*fedstore, "--version"],
    }
    variants = [
        (condition, name, argv)
        for condition in envs
        for name, argv in commands.items()
        if condition == "bytecode cached" or name != "fedstore --version"
    ]
    runs = max(1, sizes.startup_runs)
    result = SectionResult(
        NAME, TITLE, params={"runs": runs, "command": " ".join(commands["fedstore --help"])}
    )
    for condition, _, argv in variants:  # fills the bytecode cache; warms the page cache
        _time_once(argv, envs[condition])
    times: dict[tuple[str, str], list[float]] = {(c, n): [] for c, n, _ in variants}
    for i in range(runs):
        for condition, name, argv in variants:
            say(f"run {i + 1}/{runs}: {name} ({condition})")
            times[condition, name].append(_time_once(argv, envs[condition]))
    for condition in envs:
        base = statistics.median(times[condition, "python -c pass"])
        for (cond, name), samples in times.items():
            if cond != condition:
                continue
            value = statistics.median(samples)
            is_base = name == "python -c pass"
            target = name == "fedstore --help" and condition == "bytecode cached"
            result.add(
                Row(
                    f"wall time, {condition}",
                    name,
                    value,
                    "s",
                    "time",
                    baseline=None if is_base else "python -c pass",
                    ratio=None if is_base else value / base,
                    target=HELP_TARGET if target else None,
                    note="" if is_base else f"+{(value - base) * 1000:.0f} ms over python -c pass",
                    samples=samples,
                )
            )
        result.add(
            Row(
                f"wall time, {condition}",
                "fedstore --help − python -c pass",
                statistics.median(times[condition, "fedstore --help"]) - base,
                "s",
                "time",
                note="difference of the medians: fedstore's own start-up",
            )
        )
    say("which heavy libraries building the parser imports")
    heavy = heavy_modules_imported()
    result.params["heavy_modules_imported"] = heavy
    result.notes.append(
        "fresh interpreters, variants interleaved, medians; building the parser imported "
        + (", ".join(heavy) if heavy else f"none of {', '.join(HEAVY_MODULES)}")
    )
    return result
