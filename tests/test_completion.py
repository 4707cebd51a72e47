"""``fedstore completion bash|zsh``: generated from the argparse tree, run in a real bash."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from fedstore.cli import build_parser, main
from fedstore.cli.completion_cmd import script, tree
from fedstore.cli.node_commands import COMMANDS


def _complete(tmp_path: Path, *words: str) -> list[str]:
    """COMPREPLY of the generated bash function for the command line *words* (last: cursor)."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    path = tmp_path / "fedstore.bash"
    path.write_text(script(build_parser(), "bash"))
    quoted = " ".join(f"'{w}'" for w in words)
    probe = (
        f"source {path}\nCOMP_WORDS=(fedstore {quoted})\n"
        "COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))\n_fedstore\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n"
    )
    out = subprocess.run([bash, "-c", probe], capture_output=True, text=True, cwd=tmp_path,
                         timeout=30)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return [w for w in out.stdout.splitlines() if w]


def test_commands_subcommands_options_and_choices(tmp_path: Path) -> None:
    top = _complete(tmp_path, "")
    assert {"node", "daemon", "ctl", "checkpoint", "completion", "--log-level"} <= set(top)
    assert _complete(tmp_path, "chec") == ["checkpoint"]
    assert set(_complete(tmp_path, "checkpoint", "")) >= {"save", "load", "ls", "verify"}
    assert "--weights" in _complete(tmp_path, "checkpoint", "save", "--")
    assert _complete(tmp_path, "--log-level", "") == ["DEBUG", "INFO", "WARNING", "ERROR"]
    assert _complete(tmp_path, "node", "--role", "") == ["bootstrap", "trainer"]


def test_ctl_completes_the_node_commands_after_its_options(tmp_path: Path) -> None:
    got = _complete(tmp_path, "--log-level", "INFO", "ctl", "--dir", "/tmp", "")
    assert set(COMMANDS) <= set(got)
    assert _complete(tmp_path, "ctl", "checkpoint_s") == ["checkpoint_save"]


def test_values_without_choices_complete_file_names(tmp_path: Path) -> None:
    (tmp_path / "weights.npz").write_bytes(b"")
    assert _complete(tmp_path, "checkpoint", "save", "--weights", "wei") == ["weights.npz"]


def test_the_tree_covers_every_command() -> None:
    parser = build_parser()
    root = tree(parser)
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert set(root.subcommands) == set(sub.choices)  # type: ignore[attr-defined]


def test_zsh_uses_the_same_function(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", "zsh"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("#compdef fedstore\n") and "bashcompinit" in out
    assert "complete -o filenames -F _fedstore fedstore" in out
    if shutil.which("zsh"):
        assert subprocess.run(["zsh", "-n"], input=out, text=True, timeout=30).returncode == 0
