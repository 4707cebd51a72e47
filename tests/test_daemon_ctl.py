"""``fedstore daemon`` as a service and ``fedstore ctl`` against it, as real processes.

The daemon runs without a terminal or stdin (``setsid ... < /dev/null > log
2>&1``), answers ``fedstore ctl`` through ``<dir>/control.sock`` (mode 0600)
with the prompt's commands, and stops cleanly on SIGTERM/SIGINT or ``ctl
exit``: exit 0, no traceback, the catalog closed, the identity kept.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from _waiting import wait_until

from fedstore.cli.control import MAX_CLIENTS, Reply, call, socket_path
from fedstore.cli.node_commands import COMMANDS
from fedstore.errors import NetworkError
from fedstore.format.weight_files import save_weights_file
from fedstore.node.driver import NodeProcess, python_env

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


def ctl(node: NodeProcess, *words: str) -> Reply:
    """What ``fedstore ctl`` does: one command through the node's control socket."""
    return call(node.data_dir(), list(words), timeout=60)


FEDSTORE = [sys.executable, "-m", "fedstore"]
TIMEOUT = 40.0


def _env(tmp: Path) -> dict[str, str]:
    return python_env({"FEDSTORE_BACKENDS": "filesystem"}, root=tmp / "fsroot")


def _ctl(
    tmp: Path, data: Path, *words: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FEDSTORE, "ctl", "--dir", str(data), *words],
        capture_output=True,
        text=True,
        env=_env(tmp),
        timeout=60,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def daemon_shell(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """``setsid fedstore daemon --dir d < /dev/null > log 2>&1 &``, exactly as a user would."""
    data, log = tmp_path / "d", tmp_path / "daemon.log"
    argv = " ".join([*FEDSTORE, "daemon", "--role", "bootstrap", "--dir", str(data)])
    shell = subprocess.Popen(
        ["sh", "-c", f"setsid {argv} < /dev/null > {log} 2>&1 & echo $!"],
        stdout=subprocess.PIPE,
        env=_env(tmp_path),
    )
    assert shell.stdout is not None
    with shell.stdout:
        pid = int(shell.stdout.readline())
    shell.wait(timeout=10)
    yield data, log
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_daemon_started_with_setsid_serves_ctl_and_stops_on_sigterm(
    daemon_shell: tuple[Path, Path], tmp_path: Path
) -> None:
    data, log = daemon_shell
    wait_until(
        lambda: (data / "node.lock").exists() and "READY=" in log.read_text(),
        f"the daemon ready (log: {log})",
        timeout=TIMEOUT,
    )
    pid = int((data / "node.lock").read_text().split()[0])
    peer_id = next(
        ln.split("=", 1)[1] for ln in log.read_text().splitlines() if ln.startswith("PEER_ID=")
    )

    sock = socket_path(data)
    assert stat.S_ISSOCK(sock.stat().st_mode)
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600

    peers = _ctl(tmp_path, data, "peers", "--json")  # options after the command, as documented
    assert peers.returncode == 0, peers.stderr
    reply = json.loads(peers.stdout)
    assert reply["ok"] is True and reply["result"] == {"peers": []}

    # a file argument is resolved where ctl runs, not where the daemon runs
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    save_weights_file(elsewhere / "w.npz", {"w": np.arange(6, dtype=np.float32)})
    saved = _ctl(tmp_path, data, "checkpoint_save", "4", "w.npz", cwd=elsewhere)
    assert saved.returncode == 0, saved.stderr
    lines = saved.stdout.splitlines()  # piped: the node's status-line format
    assert any(ln.startswith("SAVED=4:") for ln in lines) and any(
        ln.startswith("ANNOUNCED=4:") for ln in lines
    ), lines

    status = json.loads(_ctl(tmp_path, data, "status", "--json").stdout)["result"]
    assert status["peer_id"] == peer_id and status["pid"] == pid
    assert status["head"]["round"] == 4 and status["role"] == "bootstrap"

    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not _alive(pid), "the daemon stopped on SIGTERM", timeout=TIMEOUT)
    text = log.read_text()
    assert "Traceback" not in text, text
    assert text.splitlines()[-1] == "EXIT=0"
    assert not sock.exists()  # the socket goes with the node

    # restart: same identity, resumed from the catalog
    env = _env(tmp_path)
    with NodeProcess("again", ["--dir", str(data)], env, command="daemon") as again:
        assert again.expect("PEER_ID", timeout=TIMEOUT) == peer_id
        assert again.expect("RESUMED", timeout=TIMEOUT) == "4"
        again.expect("READY", timeout=TIMEOUT)  # the control socket answers from here on
        assert ctl(again, "rounds").result == {"rounds": [4]}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (its parent, the shell, is gone: init reaps it) counts as stopped
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[NodeProcess]:
    with NodeProcess("d", ["--dir", str(tmp_path / "d")], _env(tmp_path), command="daemon") as d:
        d.expect("READY", timeout=TIMEOUT)
        yield d


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_daemon_stops_cleanly_on_signals(daemon: NodeProcess, sig: int) -> None:
    ctl(daemon, "checkpoint_save", "1")
    assert daemon.kill(sig) == 0
    assert daemon.values("EXIT") == ["0"]
    assert "Traceback" not in daemon.stderr_tail(200)


def test_ctl_exit_is_answered_then_the_daemon_stops(daemon: NodeProcess) -> None:
    reply = ctl(daemon, "exit")
    assert reply.ok and reply.result == {"stopping": True}
    daemon.expect("EXIT", timeout=TIMEOUT)
    assert daemon.stop() == 0


def test_ctl_failures_and_usage(daemon: NodeProcess, tmp_path: Path) -> None:
    data = daemon.data_dir()
    bad = _ctl(tmp_path, data, "checkpoint_save", "x")
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [
        "fedstore: error: a round is a whole number written with the digits 0-9, got 'x'; "
        "usage: checkpoint_save <round> [weights-file]"
    ]
    usage = _ctl(tmp_path, data, "peers", "extra")
    assert usage.returncode == 2 and "usage: peers" in usage.stderr
    unknown = _ctl(tmp_path, data, "bogus")
    assert unknown.returncode == 2
    missing = _ctl(tmp_path, tmp_path / "nothing-here", "peers")
    assert missing.returncode == 1
    assert missing.stderr.startswith("fedstore: error: no node is running on ")
    assert len(missing.stderr.splitlines()) == 1
    # the daemon counted the failed command and still serves
    assert ctl(daemon, "rounds").ok


def test_ctl_runs_the_prompts_command_table(daemon: NodeProcess) -> None:
    reply = ctl(daemon, "help")
    assert [c["usage"] for c in reply.result["commands"]] == [c.usage for c in COMMANDS.values()]
    assert [v for k, v, _ in reply.lines if k == "HELP"] == [c.usage for c in COMMANDS.values()]


def test_second_node_on_the_same_directory_is_refused(daemon: NodeProcess, tmp_path: Path) -> None:
    proc = subprocess.run(
        [*FEDSTORE, "daemon", "--dir", str(daemon.data_dir())],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"fedstore: error: the data directory {daemon.data_dir()} is in use by another "
        f"fedstore node (pid {daemon.pid}); stop it first or choose another --dir"
    ]
    assert ctl(daemon, "peers").ok  # the first one is untouched


def test_control_socket_bounds(daemon: NodeProcess) -> None:
    data = daemon.data_dir()
    # a request over 64 KiB is refused, the node carries on
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(socket_path(data)))
        s.sendall(b"x" * (70 * 1024))
        answer = json.loads(s.makefile().readline())
    assert answer["ok"] is False and "65536 bytes" in answer["error"]
    # MAX_CLIENTS slow requests fill the slots; one more is turned away at once
    holders = []
    for _ in range(MAX_CLIENTS):
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(socket_path(data)))
        s.sendall(b'{"v": 1, "command": "wait_peers", "args": ["5", "model-cids", "600"]}\n')
        holders.append(s)
    try:

        def refused() -> bool:  # once the node has taken all of them in
            try:
                call(data, ["peers"], timeout=5)
            except Exception as exc:  # noqa: BLE001 - asserting on the refusal
                assert "busy" in str(exc)
                return True
            return False

        wait_until(refused, "every slot taken", timeout=TIMEOUT)
    finally:
        for s in holders:
            s.close()  # a client that leaves cancels its command and frees its slot

    def served() -> bool:
        try:
            return call(data, ["peers"], timeout=5).ok
        except Exception:  # noqa: BLE001 - still busy for a moment
            return False

    wait_until(served, "the slots freed", timeout=TIMEOUT)


def test_long_data_directory_paths_still_get_a_socket(tmp_path: Path) -> None:
    deep = tmp_path / ("x" * 60) / ("y" * 60)
    assert len(str(socket_path(deep))) > 108
    with NodeProcess("deep", ["--dir", str(deep)], _env(tmp_path), command="daemon") as d:
        d.expect("READY", timeout=TIMEOUT)
        assert ctl(d, "rounds").result == {"rounds": []}


def test_node_keeps_running_when_stdin_closes(tmp_path: Path) -> None:
    data = tmp_path / "n"
    proc = subprocess.Popen(
        [*FEDSTORE, "node", "--dir", str(data)],
        stdin=subprocess.DEVNULL,  # end of input at once
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(tmp_path),
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        for line in proc.stdout:
            if line.startswith("READY="):
                break
        assert "keeps running" in proc.stderr.readline()
        assert proc.poll() is None
        assert call(data, ["checkpoint_save", "2"]).ok
        proc.send_signal(signal.SIGTERM)
        rest, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    assert "SAVED=2:" in rest and rest.splitlines()[-1] == "EXIT=0"
    assert "Traceback" not in err


def test_ctl_without_a_node_is_a_network_error(tmp_path: Path) -> None:
    with pytest.raises(NetworkError, match="no node is running"):
        call(tmp_path, ["peers"], timeout=5)


def test_sync_through_ctl_streams_progress_before_its_reply(tmp_path: Path) -> None:
    env = _env(tmp_path)
    weights = tmp_path / "big.npz"
    save_weights_file(weights, {"w": np.random.default_rng(1).standard_normal(2_000_000)})
    with NodeProcess("a", ["--dir", str(tmp_path / "a"), "--role", "bootstrap"], env,
                     command="daemon") as a:  # fmt: skip
        addr = a.expect("LISTENING", timeout=TIMEOUT)
        a.expect("READY", timeout=TIMEOUT)
        with NodeProcess("b", ["--dir", str(tmp_path / "b"), "--bootstrap", addr], env,
                         command="daemon") as b:  # fmt: skip
            b.expect("READY", timeout=TIMEOUT)
            b.expect("CONNECTED", timeout=TIMEOUT)
            saved = ctl(a, "checkpoint_save", "5", str(weights))
            cid = next(v for k, v, _ in saved.lines if k == "SAVED").split(":", 1)[1]
            b.expect("HEARD", lambda v: v.startswith(f"5:{cid}:"), timeout=TIMEOUT)
            frames: list[tuple[str, int]] = []
            reply = call(b.data_dir(), ["sync"], timeout=60,
                         on_progress=lambda label, done: frames.append((label, done)))  # fmt: skip
    assert reply.ok and reply.result["head"] == {"round": 5, "cid": cid}
    assert ("SYNCED", f"5:{cid}", None) in reply.lines  # the node event, in the reply
    assert frames and all(label == "syncing" for label, _ in frames)
    sizes = [done for _, done in frames]
    assert sizes == sorted(sizes) and 0 < sizes[-1] <= weights.stat().st_size * 2


def test_ctl_into_a_closed_pipe_and_ctrl_c_are_quiet(tmp_path: Path) -> None:
    argv = ["--dir", str(tmp_path / "d"), "--log-level", "DEBUG"]  # logs each control request
    with NodeProcess("d", argv, _env(tmp_path), command="daemon") as daemon:
        daemon.expect("READY", timeout=TIMEOUT)
        _closed_pipe_and_ctrl_c(daemon, tmp_path)


def _closed_pipe_and_ctrl_c(daemon: NodeProcess, tmp_path: Path) -> None:
    data = daemon.data_dir()
    proc = subprocess.Popen(
        [*FEDSTORE, "ctl", "--dir", str(data), "help"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(tmp_path),
        stdin=subprocess.DEVNULL,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith(b"HELP=")
    proc.stdout.close()  # `| head -1`
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=60) in (0, 141) and b"Traceback" not in err, err
    # Ctrl-C while ctl waits for a long command: one line, status 130, the node unharmed
    waiting = subprocess.Popen(
        [*FEDSTORE, "ctl", "--dir", str(data), "wait_peers", "5", "model-cids", "600"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(tmp_path),
        stdin=subprocess.DEVNULL,
    )
    daemon.wait_stderr("control: running wait_peers", timeout=TIMEOUT)  # it reached the node
    waiting.send_signal(signal.SIGINT)
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 130
    assert err.decode().strip().splitlines() == ["fedstore: interrupted"]
    assert ctl(daemon, "peers").ok  # its command was cancelled, the node serves on
