"""Where a node keeps its checkpoints, and how checkpoint files are named.

Layout of a data directory::

    <dir>/catalog.sqlite            the catalog (state lives here, not in file names)
    <dir>/rounds/round_000005_<CID>.fsck
    <dir>/tmp/                      partial writes (removed by reconcile)
    <dir>/store.lock                advisory lock between savers and reconcile

File names carry the round and full CID so a human (or a recovery tool) can
tell files apart, but fedstore never derives state from them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "CHECKPOINT_DIR_ENV",
    "CHECKPOINT_SUFFIX",
    "ROUNDS_DIR",
    "TMP_DIR",
    "checkpoint_filename",
    "default_checkpoint_dir",
    "parse_checkpoint_filename",
]

#: Environment variable overriding the data directory (its older alias: ``CHECKPOINT_DIR``).
CHECKPOINT_DIR_ENV = "FEDSTORE_DIR"
_CHECKPOINT_DIR_ALIAS = "CHECKPOINT_DIR"
#: Suffix of checkpoint files (zstd-compressed safetensors, see fedstore.format).
CHECKPOINT_SUFFIX = ".fsck"
ROUNDS_DIR = "rounds"
TMP_DIR = "tmp"

_NAME = re.compile(r"^round_(\d{6,})_([A-Za-z0-9]+)" + re.escape(CHECKPOINT_SUFFIX) + r"$")


def default_checkpoint_dir(role: str = "node", env: Mapping[str, str] | None = None) -> Path:
    """``$FEDSTORE_DIR`` (else its alias ``$CHECKPOINT_DIR``), else ``./checkpoints_<role>``."""
    environ = os.environ if env is None else env
    value = (
        environ.get(CHECKPOINT_DIR_ENV, "").strip()
        or environ.get(_CHECKPOINT_DIR_ALIAS, "").strip()
    )
    return Path(value).expanduser() if value else Path(f"checkpoints_{role}")


def checkpoint_filename(round: int, cid: str) -> str:
    """``round_000005_<cid>.fsck``: sorts by round, unique per (round, CID)."""
    if round < 0:
        raise ValueError(f"round must be >= 0, got {round}")
    if not cid.isalnum():
        raise ValueError(f"not a CID string: {cid!r}")
    return f"round_{round:06d}_{cid}{CHECKPOINT_SUFFIX}"


def parse_checkpoint_filename(name: str) -> tuple[int, str] | None:
    """``(round, cid)`` from a checkpoint file name, or None if it is not one."""
    m = _NAME.match(name)
    return None if m is None else (int(m.group(1)), m.group(2))
