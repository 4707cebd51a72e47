"""One node per data directory: an exclusive ``flock`` on ``<dir>/node.lock``.

Two ``fedstore node --dir SAME`` at once would share one identity key (the
same peer id twice on the network) and one catalog. :class:`DataDirLock`
makes the second refuse: it takes an exclusive, non-blocking ``flock`` on
``node.lock`` and writes its pid there; a process that finds the lock taken
fails at once with a one-line :class:`~fedstore.errors.ConfigError` naming
the holder's pid. The kernel releases the lock when the holder exits, however
it exits (SIGKILL included), so a stale file never blocks anyone.

One-off commands (``fedstore checkpoint ls``, ``catalog sql`` ...) do not take
it: they share the directory with a running node, SQLite and the store's
own lock arbitrate. ``fedstore db rebuild`` takes it (it replaces the
catalog a node would be using).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Self

from fedstore.errors import ConfigError

__all__ = ["NODE_LOCK_NAME", "DataDirLock"]

#: The lock file in a data directory.
NODE_LOCK_NAME = "node.lock"


class DataDirLock:
    """Hold ``<directory>/node.lock`` exclusively until :meth:`release` (or exit).

    ``DataDirLock(d).acquire()`` raises :class:`ConfigError` when another
    process (or another holder in this one) has it. Usable as a context manager.
    """

    def __init__(self, directory: str | os.PathLike[str], *, purpose: str = "node") -> None:
        self.directory = Path(directory)
        self.path = self.directory / NODE_LOCK_NAME
        self.purpose = purpose
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> Self:
        """Take the lock now or raise :class:`ConfigError` naming the holder's pid."""
        if self._fd is not None:
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise ConfigError(
                f"cannot lock the data directory {self.directory}: {exc.strerror or exc}"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"pid {holder}" if holder else "another process"
            raise ConfigError(
                f"the data directory {self.directory} is in use by another fedstore node "
                f"({who}); stop it first or choose another --dir"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        with contextlib.suppress(OSError):  # the pid is informative; the lock is what counts
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {self.purpose}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Let go (idempotent). The file stays; an unlocked file means nothing."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").split()
    except OSError:
        return None
    return int(text[0]) if text and text[0].isdigit() else None
