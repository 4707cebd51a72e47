"""Progress bars for large transfers (``put``, ``get``, ``sync``), on a terminal only.

:func:`byte_progress` gives a callback ``progress(bytes_so_far)``; on a
terminal (stderr is a tty) a Rich bar appears once :data:`THRESHOLD` bytes
have gone through, so small checkpoints never flash a bar, and is cleared
when the transfer ends. Piped or redirected, the callback does nothing: no
escape sequences in logs. The callback may be called from any thread.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

__all__ = ["THRESHOLD", "byte_progress", "on_terminal"]

#: Transfers smaller than this get no bar.
THRESHOLD = 16 * 1024 * 1024

ProgressFn = Callable[[int], None]


def on_terminal() -> bool:
    """Whether progress can be shown: stderr is a terminal."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class _LazyBar:
    """A bar that starts at the first update past the threshold (thread-safe)."""

    def __init__(self, label: str, total: int | None, threshold: int) -> None:
        self._label = label
        self._total = total
        self._threshold = threshold
        self._lock = threading.Lock()
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def update(self, done: int) -> None:
        with self._lock:
            if self._progress is None:
                if done < self._threshold:
                    return
                self._start()
            assert self._progress is not None and self._task is not None
            self._progress.update(self._task, completed=done)

    def _start(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        columns: list[Any] = [TextColumn("{task.description}"), BarColumn(), DownloadColumn()]
        columns.append(TransferSpeedColumn())
        if self._total is not None:
            columns.append(TimeRemainingColumn())
        self._progress = Progress(*columns, console=Console(stderr=True), transient=True)
        self._progress.start()
        self._task = self._progress.add_task(self._label, total=self._total)

    def describe(self, label: str) -> None:
        with self._lock:
            self._label = label
            if self._progress is not None and self._task is not None:
                self._progress.update(self._task, description=label)

    def stop(self) -> None:
        with self._lock:
            if self._progress is not None:
                self._progress.stop()
                self._progress = None


@contextmanager
def byte_progress(
    label: str,
    total: int | None = None,
    *,
    enabled: bool | None = None,
    threshold: int = THRESHOLD,
) -> Iterator[ProgressFn]:
    """``with byte_progress("fetching", size) as progress: ... progress(done) ...``

    *enabled* None: only on a terminal. *total* None: the size is not known
    (a bar without an end, with bytes and speed).
    """
    if not (on_terminal() if enabled is None else enabled):
        yield lambda done: None
        return
    bar = _LazyBar(label, total, threshold)
    try:
        yield bar.update
    finally:
        bar.stop()
