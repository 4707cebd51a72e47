"""Section ``startup``: wall time of ``fedstore --help`` and ``--version`` vs ``python -c pass``.

Each variant is a fresh interpreter started with :func:`subprocess.run`, so
the figures include what a user waits for: interpreter start, ``site``
(with the editable-install finder when fedstore is installed so), the
imports the command line needs, and building the argument parser. Variants
run interleaved (one run of each, repeated) so load on a shared machine hits
them alike; the medians are reported with the difference to the bare
interpreter. Target: ``fedstore --help`` under 0.3 s.

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


def _time_once(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)
    return time.perf_counter() - start


def run(sizes: BenchSizes, workdir: Path, say: SayFn) -> SectionResult:
    fedstore = fedstore_command()
    variants = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "fedstore --help": [*fedstore, "--help"],
        "fedstore --version": [*fedstore, "--version"],
    }
    runs = max(1, sizes.startup_runs)
    result = SectionResult(
        NAME, TITLE, params={"runs": runs, "command": " ".join(variants["fedstore --help"])}
    )
    for argv in variants.values():  # warm the page cache and the bytecode caches
        _time_once(argv)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for i in range(runs):
        for name, argv in variants.items():
            say(f"run {i + 1}/{runs}: {name}")
            times[name].append(_time_once(argv))
    base = statistics.median(times["python -c pass"])
    for name, samples in times.items():
        value = statistics.median(samples)
        is_base = name == "python -c pass"
        result.add(
            Row(
                "wall time of one command",
                name,
                value,
                "s",
                "time",
                baseline=None if is_base else "python -c pass",
                ratio=None if is_base else value / base,
                target=HELP_TARGET if name == "fedstore --help" else None,
                note="" if is_base else f"+{(value - base) * 1000:.0f} ms over python -c pass",
                samples=samples,
            )
        )
    help_median = statistics.median(times["fedstore --help"])
    result.add(
        Row(
            "fedstore's own start-up",
            "fedstore --help − python -c pass",
            help_median - base,
            "s",
            "time",
            note="difference of the medians",
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
