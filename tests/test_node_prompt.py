"""The ``Command>`` prompt on a real pseudo-terminal (pexpect), and its completion table.

``fedstore node`` on a terminal: Tab completes commands and arguments,
history persists in the data directory (mode 0600), a message arriving while
you type prints above the input line and leaves the typed text intact,
Ctrl-C clears the line, Ctrl-D stops the node with status 0. Without a
terminal the node keeps printing ``KEY=value`` lines (tests/test_node_cli.py).
"""

from __future__ import annotations

import os
import re
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedstore.cli.node_commands import COMMANDS, arg_kinds
from fedstore.node.driver import NodeProcess, python_env

pexpect = pytest.importorskip("pexpect", reason="pexpect drives the prompt on a pty")

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

TIMEOUT = 40.0
PROMPT = "Command>"


def _env(tmp: Path) -> dict[str, str]:
    env = python_env({"FEDSTORE_BACKENDS": "filesystem"}, root=tmp / "fsroot")
    # pexpect's terminal does not answer cursor-position requests; say so instead of waiting
    env.update({"TERM": "xterm", "PROMPT_TOOLKIT_NO_CPR": "1", "COLUMNS": "200"})
    return env


#: terminal control sequences (CSI, OSC, charset) and carriage returns
_ESCAPES = re.compile(
    r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][0-9A-Za-z]|\r"
)


class Terminal:
    """A pexpect child whose output is matched as text (escape sequences removed)."""

    def __init__(self, child: pexpect.spawn) -> None:
        self.child = child
        self.raw = ""
        self.pos = 0

    def text(self) -> str:
        raw = self.raw
        cut = raw.rfind("\x1b")
        if cut >= 0 and not _ESCAPES.match(raw, cut):
            raw = raw[:cut]  # an escape sequence still arriving
        return _ESCAPES.sub("", raw)

    def expect(self, pattern: str, timeout: float = TIMEOUT) -> re.Match[str]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            m = regex.search(self.text(), self.pos)
            if m:
                self.pos = m.end()
                return m
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{pattern!r} not shown; screen tail:\n{self.text()[-800:]}")
            try:
                self.raw += self.child.read_nonblocking(65536, timeout=min(remaining, 0.5))
            except pexpect.TIMEOUT:
                continue

    def send(self, text: str) -> None:
        self.child.send(text)

    def expect_exit(self) -> int:
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                self.raw += self.child.read_nonblocking(65536, timeout=0.5)
            except pexpect.TIMEOUT:
                assert time.monotonic() < deadline, "the node did not exit"
            except pexpect.EOF:
                break
        self.child.close()
        return int(self.child.exitstatus)


def _spawn(tmp_path: Path) -> Terminal:
    child = pexpect.spawn(
        sys.executable,
        ["-m", "fedstore", "node", "--dir", str(tmp_path / "n")],
        env=_env(tmp_path),
        encoding="utf-8",
        timeout=TIMEOUT,
        dimensions=(40, 200),
    )
    term = Terminal(child)
    term.expect(PROMPT)
    return term


@pytest.fixture
def prompt(tmp_path: Path) -> Iterator[Terminal]:
    term = _spawn(tmp_path)
    try:
        yield term
    finally:
        if term.child.isalive():
            term.child.terminate(force=True)


def test_completion_history_ctrl_c_and_ctrl_d(prompt: Terminal, tmp_path: Path) -> None:
    prompt.send("checkpoint_sa\t")  # Tab completes the command name
    prompt.expect("checkpoint_save")
    prompt.send(" 3\r")
    prompt.expect(r"Saved round 3 as Qm\w+")  # a sentence, not a status line
    prompt.expect(PROMPT)
    prompt.send("checkpoint_load \t")  # ... and a round that exists
    prompt.expect("checkpoint_load 3")
    prompt.send("\r")
    prompt.expect(r"Loaded round 3 \(Qm\w+\): 4 tensors, 1,370 parameters")
    prompt.expect(PROMPT)
    prompt.send("half-typed junk")
    prompt.expect("junk")
    prompt.send("\x03")  # Ctrl-C clears the line, the node stays
    prompt.expect(PROMPT)
    prompt.send("rounds\r")
    prompt.expect("Local rounds: 3")
    prompt.expect(PROMPT)
    prompt.send("\x04")  # Ctrl-D on an empty line stops the node
    prompt.expect(r"Stopped \(0 failed command\(s\)\)\.")
    assert prompt.expect_exit() == 0
    history = tmp_path / "n" / "prompt_history"
    assert stat.S_IMODE(history.stat().st_mode) == 0o600
    text = history.read_text()
    assert "+checkpoint_save 3" in text and "+rounds" in text
    assert "junk" not in text  # a cleared line is not history


def test_history_survives_a_restart(tmp_path: Path) -> None:
    (tmp_path / "n").mkdir()
    (tmp_path / "n" / "prompt_history").write_text("\n# t\n+checkpoint_save 77\n")
    term = _spawn(tmp_path)
    try:
        term.send("\x1b[A")  # Up: the previous session's command comes back
        term.expect("checkpoint_save 77")
        term.send("\r")
        term.expect("Saved round 77")
        term.expect(PROMPT)
        term.send("\x04")
        assert term.expect_exit() == 0
    finally:
        if term.child.isalive():
            term.child.terminate(force=True)


def test_a_message_arrives_above_the_line_being_typed(prompt: Terminal, tmp_path: Path) -> None:
    env = python_env({"FEDSTORE_BACKENDS": "filesystem"}, root=tmp_path / "fsroot")
    prompt.send("local\r")
    addr = prompt.expect(r"address: (/ip4/127\.0\.0\.1/tcp/\d+/p2p/\w+)").group(1)
    prompt.expect(PROMPT)
    with NodeProcess("other", ["--dir", str(tmp_path / "o"), "--bootstrap", addr], env) as other:
        other.expect("CONNECTED", timeout=TIMEOUT)
        prompt.expect("Connected to")
        prompt.expect(PROMPT)
        prompt.send("roun")  # typing, not yet sent
        other.run("wait_peers 1 model-cids 30", timeout=TIMEOUT)
        other.run("checkpoint_save 9", timeout=TIMEOUT)
        prompt.expect(r"Heard round 9 = Qm\w+ from")
        prompt.expect(f"{PROMPT} roun")  # the prompt and the typed text are redrawn below
        prompt.send("ds\r")
        prompt.expect("No local rounds")  # heard, not fetched: the command ran whole
        prompt.expect(PROMPT)
    prompt.send("\x04")
    assert prompt.expect_exit() == 0


def test_every_argument_placeholder_has_a_known_kind() -> None:
    kinds = {k for c in COMMANDS.values() for k in arg_kinds(c)}
    assert kinds <= {"multiaddr", "topic", "text", "round", "count", "path", "cid", "seconds"}
    assert arg_kinds(COMMANDS["checkpoint_save"]) == ["round", "path"]
    assert arg_kinds(COMMANDS["wait_peers"]) == ["count", "topic", "seconds"]


def test_without_a_terminal_status_lines_stay(tmp_path: Path) -> None:
    """stdin a pipe: KEY=value lines, no prompt, no escape sequences."""
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-m", "fedstore", "node", "--dir", str(tmp_path / "n")],
        input="rounds\nexit\n",
        capture_output=True,
        text=True,
        env={k: v for k, v in _env(tmp_path).items() if k != "TERM"},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "ROUNDS=none" in lines and "OK=rounds" in lines and lines[-1] == "EXIT=0"
    assert all("=" in ln and "\x1b" not in ln for ln in lines)
    assert os.path.exists(tmp_path / "n" / "identity.key")
