"""The ``fedstore node`` runner (script mode, output modes) and ``fedstore selftest``."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from fedstore.cli import build_parser, main
from fedstore.cli.node_cmd import COMMANDS, Output
from fedstore.node.driver import python_env
from fedstore.node.events import AutoSyncFailed, Listening, Resumed, Saved

ORIGINAL_COMMANDS = {
    "connect", "join", "leave", "publish", "peers", "topics", "local", "advertize",
    "checkpoint_save", "checkpoint_load", "checkpoint_fetch", "sync", "cids", "rounds",
    "help", "exit",
}  # fmt: skip


def test_every_original_command_exists() -> None:
    assert set(COMMANDS) >= ORIGINAL_COMMANDS


def test_output_modes() -> None:
    machine = io.StringIO()
    Output(True, machine).node_event(Saved(3, "Qmabc"))
    Output(True, machine).node_event(AutoSyncFailed("two\nlines"))
    Output(True, machine).event("ERROR", "three\nmore\nlines")
    assert machine.getvalue() == (
        "SAVED=3:Qmabc\nERROR=auto-sync: two lines\nERROR=three more lines\n"
    )
    human = io.StringIO()
    out = Output(False, human, role="bootstrap")
    out.node_event(Listening("/ip4/127.0.0.1/tcp/1/p2p/X"))
    out.node_event(Resumed(4))
    out.event("READY", "X")  # silent for humans
    out.message("fed-learn", "12D3KooWsenderXYZ", b"hello")
    out.message("fed-learn", "12D3KooWsenderXYZ", b"\xff\x00")
    assert human.getvalue().splitlines() == [
        "Bootstrap address: /ip4/127.0.0.1/tcp/1/p2p/X",
        "Resumed from local checkpoint round 4",
        "[fed-learn] enderXYZ: hello",
        "[fed-learn] enderXYZ: <2 bytes>",
    ]


def test_node_flags_parse() -> None:
    args = build_parser().parse_args(
        ["node", "--role", "bootstrap", "--dir", "d", "--listen", "/ip4/127.0.0.1/tcp/0",
         "--bootstrap", "/ip4/1.2.3.4/tcp/1/p2p/X", "--backends", "filesystem", "--script", "f"]
    )  # fmt: skip
    assert (args.role, args.dir, args.backends, args.script) == (
        "bootstrap",
        "d",
        "filesystem",
        "f",
    )
    with pytest.raises(SystemExit):
        build_parser().parse_args(["node", "--role", "boss"])


@pytest.mark.slow
@pytest.mark.multiprocess
def test_script_mode_runs_commands_and_survives_bad_ones(tmp_path: Path) -> None:
    script = tmp_path / "cmds.txt"
    script.write_text(
        "# comment line\n"
        "join fed-learn\n"
        "bogus command\n"
        "checkpoint_save notanumber\n"
        "checkpoint_save 4\n"
        "rounds\n"
        "leave fed-learn\n"
    )
    env = python_env({"FEDSTORE_BACKENDS": "filesystem"}, root=tmp_path / "fs")
    proc = subprocess.run(
        [sys.executable, "-m", "fedstore", "node", "--dir", str(tmp_path / "n"),
         "--script", str(script)],
        capture_output=True, text=True, env=env, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    keys = [ln.split("=", 1)[0] for ln in lines]
    assert keys[:2] == ["PEER_ID", "LISTENING"]
    assert "JOINED=fed-learn" in lines and "LEFT=fed-learn" in lines
    assert lines.count("FAILED=bogus") == 1 and lines.count("FAILED=checkpoint_save") == 1
    assert "OK=checkpoint_save" in lines and "ROUNDS=4" in lines
    assert any(ln.startswith("SAVED=4:") for ln in lines)
    assert lines[-1] == "EXIT=2"  # two failed commands, node still ran to the end


def test_bad_configuration_is_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["node", "--dir", str(tmp_path), "--script", str(tmp_path / "missing.txt")])
    assert rc == 1
    assert "cannot read script" in capsys.readouterr().err


def test_selftest_part_a_reports_full_pass(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("FEDSTORE_BACKENDS", raising=False)
    rc = main(["selftest", "--part", "A"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "✗" not in out
    assert "(100.0%)" in out


def test_node_doc_lists_every_command_and_variable() -> None:
    from fedstore.config import CORE_SETTINGS

    doc = (Path(__file__).resolve().parents[1] / "docs" / "NODE.md").read_text()
    missing = [f"`{c.usage.split()[0]}" for c in COMMANDS.values()]
    missing = [m for m in missing if m not in doc]
    names = [n for v in CORE_SETTINGS for n in (v.name, *v.aliases)]
    missing += [n for n in names if f"`{n}`" not in doc]
    assert missing == []
