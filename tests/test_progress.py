"""Progress bars for large transfers: shown on a terminal, never when output is piped."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedstore.node.driver import python_env

pexpect = pytest.importorskip("pexpect", reason="pexpect gives the command a terminal")

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


def _big(tmp_path: Path) -> Path:
    path = tmp_path / "big.bin"
    with path.open("wb") as fh:
        for i in range(24):
            fh.write(bytes([i]) * (1 << 20))  # 24 MiB, above the 16 MiB threshold
    return path


def _env(tmp_path: Path) -> dict[str, str]:
    env = python_env({"FEDSTORE_BACKENDS": "filesystem"}, root=tmp_path / "fsroot")
    env.update({"TERM": "xterm", "COLUMNS": "120"})
    return env


def test_put_and_get_show_progress_on_a_terminal(tmp_path: Path) -> None:
    big = _big(tmp_path)
    put = pexpect.spawn(sys.executable, ["-m", "fedstore", "put", str(big)], env=_env(tmp_path),
                        encoding="utf-8", timeout=120, dimensions=(24, 120))  # fmt: skip
    put.expect("hashing big.bin")
    put.expect(r"(Qm\w{44})")
    cid = put.match.group(1)
    put.expect(pexpect.EOF)
    put.close()
    assert put.exitstatus == 0
    get = pexpect.spawn(
        sys.executable,
        ["-m", "fedstore", "get", cid, "-o", str(tmp_path / "back.bin")],
        env=_env(tmp_path), encoding="utf-8", timeout=120, dimensions=(24, 120),
    )  # fmt: skip
    get.expect("fetching")
    get.expect("bytes from filesystem, verified")
    get.expect(pexpect.EOF)
    get.close()
    assert get.exitstatus == 0
    assert (tmp_path / "back.bin").read_bytes() == big.read_bytes()


def test_no_progress_when_piped(tmp_path: Path) -> None:
    big = _big(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "fedstore", "put", str(big)],
        capture_output=True, text=True, env=_env(tmp_path), timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and "\x1b" not in proc.stdout
    assert proc.stdout.startswith("Qm") and len(proc.stdout.split()) == 1
