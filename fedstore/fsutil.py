"""File-system helpers: atomic replacement of a file, and making a rename durable.

:func:`write_atomic` writes a file's new content next to it (or in a given
temporary directory on the same file system) and renames it into place, so
readers see the old file or the new one, never a part. :func:`fsync_dir`
makes such a rename survive a power cut.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

__all__ = ["fsync_dir", "write_atomic"]


def write_atomic(
    path: str | os.PathLike[str],
    write: Callable[[IO[bytes]], object],
    *,
    tmp_dir: str | os.PathLike[str] | None = None,
    prefix: str | None = None,
    suffix: str = ".tmp",
    durable: bool = True,
) -> None:
    """Create or replace *path* with what ``write(fh)`` writes, all at once or not at all.

    The bytes go to a temporary file in *tmp_dir* (default: *path*'s
    directory; it must be on the same file system), named *prefix* (default
    ``.<name>.``) + random + *suffix*, which is then renamed over *path*. On
    any failure the temporary file is removed and *path* is left as it was.
    ``durable=True`` fsyncs the file before the rename; call :func:`fsync_dir`
    on the parent afterwards to make the rename itself durable.
    """
    target = Path(path)
    fd, tmp_name = tempfile.mkstemp(
        dir=target.parent if tmp_dir is None else tmp_dir,
        prefix=f".{target.name}." if prefix is None else prefix,
        suffix=suffix,
    )
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync directory *path* (after a rename in it). OS errors propagate."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
