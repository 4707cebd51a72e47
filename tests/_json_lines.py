"""A process that prints one JSON object per line, read as it runs: the tests' way to wait on
``--log-json`` events (``fedstore aggregate``/``train``) and the federation workers.

A reader thread collects every line that parses (other lines are ignored);
:meth:`JsonLinesProcess.wait` blocks, bounded, until an event matches, and on
failure says whether the process ended or the time ran out, with the last
events and the tail of its stderr.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

Event = dict[str, Any]


class JsonLinesProcess:
    """``argv`` started with stdin closed; its stdout's JSON lines land in :attr:`events`."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        env: Mapping[str, str],
        cwd: Path | None = None,
        timeout: float = 60.0,
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        self.name = name
        self.timeout = timeout
        self.lines: list[str] = []  # every stdout line, JSON or not
        self.events: list[Event] = []
        self._cond = threading.Condition()
        self._on_event = on_event
        self._eof = False
        self._stderr: IO[str] = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (see close)
        self.proc = subprocess.Popen(  # noqa: S603 - the test's own command line
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=dict(env),
            cwd=cwd,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            if isinstance(event, dict) and self._on_event is not None:
                self._on_event(event)
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                if isinstance(event, dict):
                    self.events.append(event)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def wait(
        self, pred: Callable[[Event], bool], what: str = "matching event", *,
        timeout: float | None = None,
    ) -> Event:  # fmt: skip
        """The first event (already seen or still to come) for which *pred* holds."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        with self._cond:
            while True:
                for event in self.events:
                    if pred(event):
                        return event
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    break
                self._cond.wait(left)
        raise AssertionError(
            f"{self.name}: no {what} ({'it exited' if self._eof else 'timed out'}); "
            f"last events {self.events[-8:]}\nstderr: {self.stderr_tail()}"
        )

    def event(self, kind: str, **fields: object) -> Event:
        """The first ``kind`` event whose *fields* have the given values."""
        return self.wait(
            lambda e: e.get("event") == kind and all(e.get(k) == v for k, v in fields.items()),
            f"{kind} event {fields or ''}".strip(),
        )

    def of(self, kind: str) -> list[Event]:
        """Every ``kind`` event so far."""
        with self._cond:
            return [e for e in self.events if e.get("event") == kind]

    @property
    def stderr(self) -> str:
        """Everything the process wrote on stderr so far."""
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read()

    def stderr_tail(self, chars: int = 2000) -> str:
        return self.stderr[-chars:]

    def finish(self, timeout: float | None = None) -> int:
        """Wait (bounded) for the process to end on its own; its exit status."""
        rc = self.proc.wait(timeout=self.timeout if timeout is None else timeout)
        self._reader.join(timeout=10)
        return rc

    def signal(self, signum: int) -> int:
        """Send *signum* and wait (bounded) for the exit status."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signum)
        rc = self.proc.wait(timeout=self.timeout)
        self._reader.join(timeout=10)
        return rc

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def close(self) -> None:
        """Kill it if still running, and release the pipes and the stderr file."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=self.timeout)
        self._reader.join(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()
