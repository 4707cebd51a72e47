"""One node per data directory: ``<dir>/node.lock``, held while the node runs.

Two nodes on one directory would share an identity (one peer id on two
hosts) and race on the control socket, so :func:`acquire_node_lock` takes an
exclusive ``flock`` on ``node.lock`` (released by the kernel when the
process dies, SIGKILL included, so there is never a stale lock to remove)
and writes the holder's pid into it for the error message. Where ``fcntl``
does not exist (Windows) there is no lock.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

from fedstore.errors import ConfigError

__all__ = ["LOCK_NAME", "NodeLock", "acquire_node_lock"]

LOCK_NAME = "node.lock"


class NodeLock:
    """A held lock; :meth:`release` (idempotent) lets the next node start."""

    def __init__(self, fh: IO[str] | None) -> None:
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing the descriptor releases the flock
            self._fh = None


def acquire_node_lock(data_dir: Path) -> NodeLock:
    """Lock *data_dir* for this process; ConfigError naming the holder if another node has it."""
    try:
        import fcntl
    except ImportError:  # Windows
        return NodeLock(None)
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / LOCK_NAME
    fh = open(path, "a+", encoding="ascii")  # noqa: SIM115 - held open while the node runs
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        holder = fh.read(32).strip() or "unknown"
        fh.close()
        raise ConfigError(
            f"data directory {data_dir} is in use by another node (pid {holder}): stop it, "
            "or give this node its own --dir"
        ) from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return NodeLock(fh)
