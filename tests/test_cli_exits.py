"""How ``fedstore`` commands end: one-line errors, Ctrl-C and closed pipes, never a traceback.

The interrupt and pipe tests run the real command line in subprocesses: SIGINT
is sent to the process group once the command is up (what a terminal's Ctrl-C
does), and stdout is a pipe whose reader leaves after one line.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import trio
import trio.lowlevel

from fedstore.cli import main
from fedstore.cli.exits import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, exit_status, leaves
from fedstore.errors import BackendLoadError, NetworkError
from fedstore.format.weight_files import save_weights_file
from fedstore.node.driver import python_env

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

FEDSTORE = [sys.executable, "-m", "fedstore"]


# ------------------------------------------------------------------ exception groups


def _group_from_nurseries(inner: BaseException) -> BaseException:
    """What trio raises when a task two nurseries deep fails while its siblings wait."""

    async def fail() -> None:
        await trio.lowlevel.checkpoint()
        raise inner

    async def run() -> None:
        async with trio.open_nursery() as outer:
            outer.start_soon(trio.sleep_forever)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.sleep_forever)
                nursery.start_soon(fail)

    try:
        trio.run(run)
    except BaseException as exc:  # noqa: BLE001 - the point is to look at it
        return exc
    raise AssertionError("run() did not fail")


def test_fedstore_error_inside_nurseries_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    exc = _group_from_nurseries(BackendLoadError("unknown backend 'nonexistent'"))
    assert isinstance(exc, BaseExceptionGroup)
    assert exit_status(exc) == 1
    err = capsys.readouterr().err
    assert err == "fedstore: error: unknown backend 'nonexistent'\n"


def test_several_fedstore_errors_print_the_first_and_count_the_rest(
    capsys: pytest.CaptureFixture[str],
) -> None:
    group = ExceptionGroup(
        "x",
        [NetworkError("peer a gone"), ExceptionGroup("y", [NetworkError("peer b gone")])],
    )
    assert [str(e) for e in leaves(group)] == ["peer a gone", "peer b gone"]
    assert exit_status(group) == 1
    assert capsys.readouterr().err == "fedstore: error: peer a gone (and 1 more error)\n"


def test_a_bug_inside_a_group_stays_a_crash_report(capsys: pytest.CaptureFixture[str]) -> None:
    exc = ExceptionGroup("x", [NetworkError("fine"), ZeroDivisionError("bug")])
    assert exit_status(exc) is None  # main re-raises: Python prints the traceback
    assert exit_status(_group_from_nurseries(TypeError("bug"))) is None
    assert exit_status(SystemExit(2)) is None
    assert capsys.readouterr().err == ""


def test_sys_exit_inside_a_task_group_exits_with_its_code(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert exit_status(_group_from_nurseries(SystemExit(3))) == 3
    assert exit_status(_group_from_nurseries(SystemExit(None))) == 0
    assert capsys.readouterr().err == ""


def test_ctrl_c_inside_a_group_is_interrupted(capsys: pytest.CaptureFixture[str]) -> None:
    exc = BaseExceptionGroup("x", [KeyboardInterrupt(), ValueError("side effect")])
    assert exit_status(exc) == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "fedstore: interrupted\n"


def test_error_line_escapes_control_characters(capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_status(NetworkError("peer said \x1b]0;owned\x07 hi")) == 1
    assert capsys.readouterr().err == "fedstore: error: peer said \\x1b]0;owned\\x07 hi\n"


def test_node_with_an_unknown_backend_is_one_line(tmp_path: Path) -> None:
    """Was a 110-line exception group: the error is raised inside the node's nurseries."""
    proc = subprocess.run(
        [*FEDSTORE, "node", "--backends", "nonexistent", "--dir", str(tmp_path / "n")],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env=python_env(root=tmp_path / "fs"),
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        "fedstore: error: unknown backend 'nonexistent'; installed backends: "
        "bitswap, filesystem, kubo, pinata"
    ]


# ------------------------------------------------------------------ Ctrl-C


def _start(argv: list[str], env: dict[str, str], **kw: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen(  # noqa: S603 - our own command line
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,  # its own process group, as a terminal gives a job
        **kw,  # type: ignore[call-overload]
    )


def _read_line(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    """The first line of stdout, within *timeout* seconds (empty if the process ended)."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"no output within {timeout} s"
    return proc.stdout.readline()


def _interrupt(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground job
    try:
        _out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError("the command did not stop within 60 s of Ctrl-C") from None
    return proc.returncode, err.decode("utf-8", "replace")


def test_ctrl_c_stops_a_running_node_without_a_traceback(tmp_path: Path) -> None:
    proc = _start(
        [*FEDSTORE, "node", "--dir", str(tmp_path / "n")],
        python_env({"FEDSTORE_BACKENDS": "filesystem"}, root=tmp_path / "fs"),
        stdin=subprocess.PIPE,  # open and silent: the node waits for commands
    )
    try:
        assert _read_line(proc, 60).startswith(b"PEER_ID=")
        rc, err = _interrupt(proc)
    finally:
        if proc.stdin:
            proc.stdin.close()
    assert "Traceback" not in err, err
    assert rc == EXIT_INTERRUPTED
    assert err.strip().splitlines()[-1:] == ["fedstore: interrupted"]
    assert len(err.strip().splitlines()) <= 2, err  # (was ~130 lines)


def test_ctrl_c_stops_the_demo_without_a_traceback(tmp_path: Path) -> None:
    pytest.importorskip("sklearn", reason="the demo needs the 'demo' extra")
    proc = _start(
        [*FEDSTORE, "demo", "--plain", "--rounds", "50", "--trainers", "2", "--late-trainer", "0"],
        python_env({"TMPDIR": str(tmp_path)}),
        stdin=subprocess.DEVNULL,
    )
    assert _read_line(proc, 60).startswith(b"fedstore demo:")
    # the worker processes run (Ctrl-C reaches them too): a round has closed
    deadline = time.monotonic() + 120
    while not _read_line(proc, max(0.1, deadline - time.monotonic())).startswith(b"round "):
        assert time.monotonic() < deadline and proc.poll() is None, "no round within 120 s"
    rc, err = _interrupt(proc)
    assert "Traceback" not in err, err
    assert rc == EXIT_INTERRUPTED
    assert err.strip().splitlines() == ["fedstore: interrupted"]


# ------------------------------------------------------------------ closed pipes


def _catalog(tmp_path: Path) -> Path:
    node = tmp_path / "node"
    weights = tmp_path / "w.npz"
    save_weights_file(weights, {"w": np.zeros(4, np.float32)})
    cmd = ["checkpoint", "save", "--round", "1", "--weights", str(weights), "--dir", str(node)]
    assert main(cmd) == 0
    return node


def _first_line_then_close(argv: list[str], env: dict[str, str]) -> tuple[bytes, int, str]:
    """Run *argv* with stdout a pipe whose reader takes one line and leaves (``| head -1``)."""
    proc = _start(argv, env, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None and proc.stderr is not None
    first = _read_line(proc, 60)
    proc.stdout.close()
    try:
        with proc.stderr:
            err = proc.stderr.read()
        rc = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return first, rc, err.decode("utf-8", "replace")


@pytest.mark.parametrize("fmt", ["--csv", "--json", None])
def test_catalog_sql_into_a_closed_pipe_exits_quietly(tmp_path: Path, fmt: str | None) -> None:
    node = _catalog(tmp_path)
    query = (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c LIMIT 200000) SELECT x FROM c"
    )
    argv = [*FEDSTORE, "catalog", "sql", query, "--dir", str(node)]
    first, rc, err = _first_line_then_close([*argv, fmt] if fmt else argv, python_env())
    assert first
    assert err == "", err  # no traceback, no "Exception ignored ... BrokenPipeError"
    assert rc == EXIT_BROKEN_PIPE


def test_node_into_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    script = tmp_path / "cmds.txt"
    script.write_text("".join(f"checkpoint_save {r}\nrounds\npeers\n" for r in range(1, 40)))
    first, rc, err = _first_line_then_close(
        [*FEDSTORE, "node", "--dir", str(tmp_path / "n"), "--script", str(script)],
        python_env({"FEDSTORE_BACKENDS": "filesystem"}, root=tmp_path / "fs"),
    )
    assert first.startswith(b"PEER_ID=")
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert rc == EXIT_BROKEN_PIPE


def test_demo_into_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    pytest.importorskip("sklearn", reason="the demo needs the 'demo' extra")
    first, rc, err = _first_line_then_close(
        [*FEDSTORE, "demo", "--plain", "--rounds", "50", "--trainers", "2", "--late-trainer", "0"],
        python_env({"TMPDIR": str(tmp_path)}),
    )
    assert first.startswith(b"fedstore demo:")
    assert "Traceback" not in err, err
    assert rc == EXIT_BROKEN_PIPE


def test_broken_pipe_elsewhere_is_an_ordinary_error(capsys: pytest.CaptureFixture[str]) -> None:
    """A BrokenPipeError while stdout is fine (a socket to a service) is an error, not quiet."""
    r, w = os.pipe()
    try:
        with open(w, "w", closefd=False) as stdout:
            mp = pytest.MonkeyPatch()
            mp.setattr(sys, "stdout", stdout)
            try:
                status = exit_status(BrokenPipeError(32, "Broken pipe"))
            finally:
                mp.undo()
    finally:
        os.close(r)
        os.close(w)
    assert status == 1
    assert capsys.readouterr().err == "fedstore: error: Broken pipe\n"
