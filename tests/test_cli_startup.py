"""``fedstore --help`` stays cheap: building the CLI imports none of the heavy libraries.

The wall time is measured by ``fedstore bench --only startup`` (figures, not
asserts); this checks the cause in a fresh interpreter: what got imported.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys

import pytest

from fedstore.bench.startup_bench import HEAVY_MODULES, heavy_modules_imported

#: What the CLI may never import just to parse its arguments (prefixes of module names).
FORBIDDEN = (
    "sqlalchemy",
    "alembic",
    "libp2p",
    "numpy",
    "trio",
    "rich",
    "httpx",
    "zstandard",
    "safetensors",
    "stevedore",
    "multiaddr",
    "prompt_toolkit",
    "fedstore.catalog.catalog",
    "fedstore.node.core",
    "fedstore.p2p.host",
    "fedstore.format",
    "fedstore.federation",
)

_SCRIPT = """
import json, sys
import fedstore.cli
fedstore.cli.build_parser()
print(json.dumps(sorted(sys.modules)))
"""


def imported_by_building_the_parser() -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT], check=True, capture_output=True, text=True, timeout=60
    )
    modules: list[str] = json.loads(out.stdout)
    return modules


def test_building_the_parser_imports_nothing_heavy() -> None:
    modules = imported_by_building_the_parser()
    assert "fedstore.cli.node_cmd" in modules  # the check would notice the commands
    heavy = [m for m in modules if m.split(".")[0] in FORBIDDEN or m in FORBIDDEN]
    heavy += [m for m in modules if m.startswith(tuple(f"{f}." for f in FORBIDDEN))]
    assert sorted(set(heavy)) == []


def test_the_benchmark_probe_agrees() -> None:
    assert set(HEAVY_MODULES) <= set(FORBIDDEN)
    assert heavy_modules_imported() == []


@pytest.mark.parametrize("argv", [["--help"], ["node", "--help"], ["bench", "--help"]])
def test_help_runs_without_importing_heavy_modules(argv: list[str]) -> None:
    code = (
        "import sys, runpy\n"
        "sys.argv = ['fedstore', *sys.argv[1:]]\n"
        "try:\n"
        "    runpy.run_module('fedstore', run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
        f"bad = [m for m in {list(FORBIDDEN)!r} if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *argv], check=True, capture_output=True, text=True, timeout=60
    )
    assert "usage: fedstore" in out.stdout
    assert out.stdout.rstrip().endswith("HEAVY="), out.stdout[-300:]


def test_version() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "fedstore", "--version"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.strip() == f"fedstore {importlib.metadata.version('fedstore')}"


def test_round_conflict_error_lives_in_the_error_tree() -> None:
    from fedstore import errors
    from fedstore.catalog import RoundConflictError

    assert RoundConflictError is errors.RoundConflictError
    assert issubclass(RoundConflictError, errors.CatalogError)
