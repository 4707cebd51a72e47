"""Keep trio-typing's stale ``trio-stubs`` from shadowing trio's own types.

py-libp2p 0.8.1 depends on ``trio-typing`` and imports its runtime module
``trio_typing``. That distribution also installs a ``trio-stubs`` package,
written for trio 0.22; trio has shipped complete inline types since 0.23, but
PEP 561 makes a type checker prefer a stub package over the inline types, so
mypy would check fedstore against an API trio no longer has (e.g. no
``abandon_on_cancel``). ``trio_typing`` itself is untouched.

Two uses:

* ``python scripts/trio_stubs.py drop`` removes ``trio-stubs`` from the
  running interpreter's site-packages (tox's lint environment does this; run
  it once with your development venv's python after installing).
* As a mypy plugin (``[tool.mypy] plugins`` in pyproject.toml) it stops mypy
  with that instruction when the stubs are present, instead of a misleading
  error about trio's API.
"""

from __future__ import annotations

import shutil
import sys
import sysconfig
from pathlib import Path

STUBS = "trio-stubs"


def stale_stubs() -> list[Path]:
    """``trio-stubs`` directories in this interpreter's site-packages."""
    dirs = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    return [Path(d) / STUBS for d in sorted(dirs) if (Path(d) / STUBS).is_dir()]


def drop() -> int:
    found = stale_stubs()
    for path in found:
        shutil.rmtree(path)
        print(f"removed {path} (trio ships its own types)")
    if not found:
        print(f"no {STUBS} in {sysconfig.get_path('purelib')}")
    return 0


def plugin(version: str) -> type:
    """mypy plugin entry point: refuse to check against the stale stubs."""
    from mypy.plugin import Plugin

    found = stale_stubs()
    if found:
        raise SystemExit(
            f"mypy: {found[0]} (from trio-typing, a py-libp2p dependency) shadows trio's own "
            f"types; run: {sys.executable} scripts/trio_stubs.py drop"
        )
    return Plugin


if __name__ == "__main__":
    if sys.argv[1:] != ["drop"]:
        raise SystemExit("usage: python scripts/trio_stubs.py drop")
    raise SystemExit(drop())
