"""py-libp2p's log records reach fedstore's handlers at both levels, one line each.

Importing py-libp2p resets its ``libp2p`` logger (WARNING, no handlers, no
propagation), so routing has to happen after the import: these run a fresh
interpreter each, as ``fedstore`` does, and read its stderr.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from fedstore.node.driver import python_env

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

#: A line written by fedstore's plain formatter: ``<date> <time> <LEVEL> <logger>: <message>``.
FORMATTED = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ [\w.]+: ")

_SCRIPT = """
import logging, sys
from pathlib import Path
import trio
from fedstore.logsetup import setup_logging
setup_logging(sys.argv[1])
from fedstore.p2p.host import open_host   # imports py-libp2p, which resets its logger
from fedstore.p2p.identity import load_or_create_identity

async def main():
    ident = load_or_create_identity(Path(sys.argv[2]))
    async with open_host(ident, ["/ip4/127.0.0.1/tcp/0"]):
        lib = logging.getLogger("libp2p.fedstore_probe")
        lib.debug("probe debug")
        lib.warning("probe warning\\nwith a second line")
        lib.critical("probe critical")
        chatty = logging.getLogger("libp2p.fedstore_chatty")
        chatty.setLevel(logging.INFO)  # as py-libp2p's auto_connector does at import
        chatty.info("chatty info")

trio.run(main)
"""


def run_probe(level: str, tmp_path: Path) -> list[str]:
    env = python_env()
    env.pop("LIBP2P_DEBUG", None)
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, level, str(tmp_path / "id")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return [ln for ln in out.stderr.splitlines() if ln.strip()]


def test_debug_level_shows_libp2p_records_formatted_one_line_each(tmp_path: Path) -> None:
    lines = run_probe("DEBUG", tmp_path)
    bare = [ln for ln in lines if not FORMATTED.match(ln)]
    assert bare == []
    assert any(ln.endswith("DEBUG libp2p.fedstore_probe: probe debug") for ln in lines)
    assert any(
        ln.endswith("WARNING libp2p.fedstore_probe: probe warning | with a second line")
        for ln in lines
    )
    assert any(ln.endswith("INFO libp2p.fedstore_chatty: chatty info") for ln in lines)
    # py-libp2p's own debug lines (host start-up) come through too, not only the probe's
    own = [ln for ln in lines if " DEBUG libp2p." in ln and "fedstore_probe" not in ln]
    assert own, "no py-libp2p debug line at DEBUG level"


def test_default_level_hides_routine_libp2p_records_and_prints_nothing_bare(
    tmp_path: Path,
) -> None:
    lines = run_probe("WARNING", tmp_path)
    assert [ln for ln in lines if not FORMATTED.match(ln)] == []
    assert not any("probe debug" in ln or "probe warning" in ln for ln in lines)
    assert not any("second line" in ln for ln in lines)
    assert not any("chatty info" in ln for ln in lines)  # its own INFO level does not leak
    assert any(ln.endswith("CRITICAL libp2p.fedstore_probe: probe critical") for ln in lines)


def test_libp2p_debug_env_keeps_libp2p_in_charge(tmp_path: Path) -> None:
    """With LIBP2P_DEBUG set, py-libp2p's own documented logging applies untouched."""
    env = python_env({"LIBP2P_DEBUG": "libp2p.fedstore_probe:DEBUG"})
    env["LIBP2P_DEBUG_FILE"] = str(tmp_path / "libp2p.log")
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, "WARNING", str(tmp_path / "id")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    # not routed through fedstore's handler (py-libp2p writes its own format)
    assert "DEBUG libp2p.fedstore_probe: probe debug" not in out.stderr
    assert "probe debug" in (tmp_path / "libp2p.log").read_text()


@pytest.mark.parametrize("level", ["DEBUG"])
def test_node_command_at_debug_level_shows_libp2p_lines(level: str, tmp_path: Path) -> None:
    script = tmp_path / "cmds.txt"
    script.write_text("exit\n")
    env = python_env({"FEDSTORE_BACKENDS": "filesystem"}, root=tmp_path / "fs")
    env.pop("LIBP2P_DEBUG", None)
    out = subprocess.run(
        [sys.executable, "-m", "fedstore", "node", "--dir", str(tmp_path / "n"),
         "--script", str(script), "--log-level", level],
        capture_output=True, text=True, env=env, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert any(" DEBUG libp2p." in ln for ln in lines)
    assert [ln for ln in lines if not FORMATTED.match(ln)] == []
