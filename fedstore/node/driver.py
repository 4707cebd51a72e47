"""Drive ``fedstore node`` subprocesses through their ``KEY=value`` status lines.

Used by ``fedstore selftest``, the multi-process tests and the announcement
benchmark. Plain threads and blocking calls (no trio), so it works from any
script. Every wait has a deadline; a timeout raises :class:`NodeTimeout`
with the node's recent output and stderr tail, so a failure explains itself.
Lines are kept as text (``KEY``, ``value``); node events can be read back as
the dataclasses of :mod:`fedstore.node.events` (:meth:`NodeProcess.wait_event`).

::

    with NodeProcess("boot", ["--role", "bootstrap", "--dir", d], env) as boot:
        addr = boot.expect("LISTENING")
        boot.run("checkpoint_save 1")              # waits for OK=/FAILED=
        trainer.expect("HEARD", lambda v: v.startswith("1:"))
        heard = trainer.wait_event(Heard, lambda e: e.round == 1)   # a Heard
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self, TypeVar

from fedstore.node.events import NodeEvent
from fedstore.node.status import parse_status

__all__ = ["CommandFailed", "NodeProcess", "NodeTimeout", "StatusLine", "python_env"]

E = TypeVar("E", bound=NodeEvent)

DEFAULT_TIMEOUT = 30.0


class NodeTimeout(TimeoutError):
    """A status line did not arrive in time (message includes recent output)."""


class CommandFailed(RuntimeError):
    """A command ended with ``FAILED=`` (message includes the ``ERROR=`` line)."""


@dataclass(frozen=True, slots=True)
class StatusLine:
    at: float  # time.monotonic() when the line was read
    key: str
    value: str

    def event(self) -> NodeEvent | None:
        """The node event this line reports, None for command output (ValueError if malformed)."""
        return parse_status(self.key, self.value)


class NodeProcess:
    """One ``python -m fedstore node`` subprocess with piped stdin/stdout.

    With ``command="daemon"`` it runs ``fedstore daemon`` instead: stdin is
    ``/dev/null``, commands go through the control socket
    (``fedstore.cli.control.call(node.data_dir(), [...])``), and :meth:`stop`
    sends SIGTERM.
    """

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        env: Mapping[str, str] | None = None,
        *,
        python: str = sys.executable,
        global_args: Sequence[str] = (),
        command: str = "node",
    ) -> None:
        self.name = name
        self.command = command
        self.argv = [python, "-m", "fedstore", *global_args, command, "--status", *args]
        self.env = dict(os.environ if env is None else env)
        self.lines: list[StatusLine] = []
        self._cond = threading.Condition()
        self._proc: subprocess.Popen[str] | None = None
        self._stderr: IO[str] | None = None
        self._reader: threading.Thread | None = None
        self._eof = False

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> Self:
        self._stderr = tempfile.TemporaryFile(mode="w+", encoding="utf-8")  # noqa: SIM115 (closed in stop)
        self._proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE if self.command == "node" else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=self.env,
            text=True,
            bufsize=1,
        )
        self._eof = False
        self._reader = threading.Thread(target=self._read, name=f"node-{self.name}", daemon=True)
        self._reader.start()
        return self

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def kill(self, sig: int = signal.SIGKILL) -> int:
        """Send *sig* (default SIGKILL) and wait for the process; returns its exit code."""
        assert self._proc is not None
        with contextlib.suppress(ProcessLookupError):
            self._proc.send_signal(sig)
        code = self._proc.wait(timeout=DEFAULT_TIMEOUT)
        self._join_reader()
        return code

    def stop(self, timeout: float = 15.0) -> int | None:
        """Ask the node to stop (``exit``, then SIGTERM); kill it if it does not.

        End of input alone no longer stops a node (it keeps running, as a
        service would), so the driver says ``exit`` and closes stdin.
        """
        if self._proc is None:
            return None
        if self._proc.poll() is None and self._proc.stdin is not None:
            with contextlib.suppress(OSError, ValueError):
                self._proc.stdin.write("exit\n")
                self._proc.stdin.flush()
            with contextlib.suppress(OSError, ValueError):
                self._proc.stdin.close()
        if self._proc.poll() is None:
            first = None if self._proc.stdin is not None else signal.SIGTERM
            for sig in (first, signal.SIGTERM, signal.SIGKILL):
                if sig is not None:
                    with contextlib.suppress(ProcessLookupError):
                        self._proc.send_signal(sig)
                try:
                    self._proc.wait(timeout=timeout if sig != signal.SIGKILL else DEFAULT_TIMEOUT)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self._join_reader()
        if self._proc.stdin is not None:
            with contextlib.suppress(OSError, ValueError):
                self._proc.stdin.close()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        return self._proc.returncode

    def close(self) -> None:
        """Stop the process and release the captured stderr."""
        self.stop()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def _join_reader(self) -> None:
        if self._reader is not None:
            self._reader.join(timeout=5)

    def stderr_tail(self, n: int = 20) -> str:
        if self._stderr is None:
            return ""
        self._stderr.flush()
        self._stderr.seek(0)
        return "".join(self._stderr.readlines()[-n:])

    def wait_stderr(
        self, text: str, *, count: int = 1, timeout: float = DEFAULT_TIMEOUT
    ) -> None:  # fmt: skip
        """Block until *text* appears *count* times in the node's stderr (its log).

        Polls the captured stderr file (the log has no reader thread); raises
        NodeTimeout with the tail if it does not appear in time or the node exits.
        """
        deadline = time.monotonic() + timeout
        while True:
            if self._stderr is not None:
                self._stderr.flush()
                self._stderr.seek(0)
                if self._stderr.read().count(text) >= count:
                    return
            ended = self._proc is None or self._proc.poll() is not None
            if ended or time.monotonic() >= deadline:
                why = "exited" if ended else f"timed out after {timeout:g} s"
                raise NodeTimeout(
                    f"node {self.name}: {text!r} not {count}x in its log ({why}); "
                    f"stderr tail:\n{self.stderr_tail()}"
                )
            time.sleep(0.05)

    # -- reading ---------------------------------------------------------------------------
    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for raw in self._proc.stdout:
            key, sep, value = raw.rstrip("\n").partition("=")
            if not sep:
                continue
            with self._cond:
                self.lines.append(StatusLine(time.monotonic(), key, value))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def mark(self) -> int:
        """Position in the output; pass as *since* to wait only for later lines."""
        with self._cond:
            return len(self.lines)

    def values(self, key: str, since: int = 0) -> list[str]:
        with self._cond:
            return [ln.value for ln in self.lines[since:] if ln.key == key]

    def wait_count(self, key: str, count: int, *, timeout: float = DEFAULT_TIMEOUT) -> int:
        """Wait (bounded) until *count* ``KEY=`` lines arrived; how many did (no error)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                seen = sum(1 for ln in self.lines if ln.key == key)
                remaining = deadline - time.monotonic()
                if seen >= count or self._eof or remaining <= 0:
                    return seen
                self._cond.wait(remaining)

    def wait_line(
        self,
        key: str,
        pred: Callable[[str], bool] | None = None,
        *,
        since: int = 0,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> StatusLine:
        """The first line ``KEY=value`` at or after *since* whose value satisfies *pred*."""
        return self._wait(
            lambda ln: ln.key == key and (pred is None or pred(ln.value)),
            f"{key}= line",
            since,
            timeout,
        )

    def _wait(
        self, match: Callable[[StatusLine], bool], what: str, since: int, timeout: float
    ) -> StatusLine:
        deadline = time.monotonic() + timeout
        pos = since
        with self._cond:
            while True:
                for i in range(pos, len(self.lines)):
                    line = self.lines[i]
                    if match(line):
                        return line
                pos = len(self.lines)
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    break
                self._cond.wait(remaining)
        why = "exited" if self._eof else f"timed out after {timeout:g} s"
        recent = "\n".join(f"  {ln.key}={ln.value}" for ln in self.lines[-15:])
        raise NodeTimeout(
            f"node {self.name}: no {what} ({why}); last status lines:\n{recent}\n"
            f"stderr tail:\n{self.stderr_tail()}"
        )

    def expect(
        self,
        key: str,
        pred: Callable[[str], bool] | None = None,
        *,
        since: int = 0,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> str:
        """Value of the first matching line (see :meth:`wait_line`)."""
        return self.wait_line(key, pred, since=since, timeout=timeout).value

    def wait_event(
        self,
        kind: type[E],
        pred: Callable[[E], bool] | None = None,
        *,
        since: int = 0,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> E:
        """The first node event of type *kind* at or after *since* satisfying *pred*."""

        def matches(line: StatusLine) -> bool:
            event = line.event()
            return isinstance(event, kind) and (pred is None or pred(event))

        line = self._wait(matches, f"{kind.__name__} event", since, timeout)
        event = line.event()
        assert isinstance(event, kind)
        return event

    def events(self, kind: type[E], since: int = 0) -> list[E]:
        """Every node event of type *kind* read so far (at or after *since*)."""
        with self._cond:
            lines = self.lines[since:]
        return [e for ln in lines if isinstance(e := ln.event(), kind)]

    # -- commands --------------------------------------------------------------------------
    def data_dir(self) -> Path:
        """The ``--dir`` this node was started with."""
        i = self.argv.index("--dir")
        return Path(self.argv[i + 1])

    def send(self, command: str) -> int:
        """Write one command line; returns the output position before it."""
        assert self._proc is not None and self._proc.stdin is not None
        pos = self.mark()
        self._proc.stdin.write(command.rstrip("\n") + "\n")
        self._proc.stdin.flush()
        return pos

    def run(self, command: str, *, timeout: float = DEFAULT_TIMEOUT) -> list[StatusLine]:
        """Send *command*, wait for its ``OK=`` and return the lines it produced.

        Raises :class:`CommandFailed` on ``FAILED=``.
        """
        name = command.split()[0].lower()
        pos = self.send(command)
        end = self._wait_done(name, pos, timeout)
        with self._cond:
            produced = self.lines[pos : self.lines.index(end)]
        if end.key == "FAILED":
            errors = [ln.value for ln in produced if ln.key == "ERROR"]
            raise CommandFailed(f"node {self.name}: {command!r} failed: {'; '.join(errors)}")
        return produced

    def _wait_done(self, name: str, pos: int, timeout: float) -> StatusLine:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[pos:]:
                    if line.key in ("OK", "FAILED") and line.value == name:
                        return line
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    break
                self._cond.wait(remaining)
        raise NodeTimeout(
            f"node {self.name}: command {name!r} did not finish in {timeout:g} s\n"
            f"stderr tail:\n{self.stderr_tail()}"
        )


def python_env(
    extra: Mapping[str, str] | None = None, *, root: Path | None = None
) -> dict[str, str]:
    """The current environment plus *extra*, with ``FEDSTORE_FS_ROOT`` set to *root* if given."""
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    if root is not None:
        env["FEDSTORE_FS_ROOT"] = str(root)
    env.update(extra or {})
    return env
