"""Where a node keeps its data, and how checkpoint files are named.

The data-directory rule, the same for every command (``node``, ``daemon``,
``ctl``, ``checkpoint``, ``catalog``, ``db``, ``pins``, ...) and for
:func:`fedstore.config.load_node_config`: ``--dir``, else the
``FEDSTORE_DIR`` setting (environment, ``.env``, ``fedstore.toml``; older
name ``CHECKPOINT_DIR``), else ``./fedstore-data`` (:data:`DEFAULT_DATA_DIR`),
relative to the current directory. :func:`resolve_data_dir` applies it.
Versions before this rule used ``./checkpoints_<role>`` (nodes) and
``./checkpoints_node`` (the other commands); when the default is used and
only such a directory exists, :func:`legacy_data_dir_hint` says how to keep
using it.

Layout of a data directory::

    <dir>/identity.key              the node's libp2p key (mode 0600)
    <dir>/catalog.sqlite            the catalog (state lives here, not in file names)
    <dir>/rounds/round_000005_<CID>.fsck
    <dir>/tmp/                      partial writes (removed by reconcile)
    <dir>/store.lock                advisory lock between savers and reconcile
    <dir>/node.lock                 held by the node running on this directory
    <dir>/control.sock              that node's control socket (mode 0600; fedstore ctl)
    <dir>/prompt_history            the Command> prompt's history

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
    "DEFAULT_DATA_DIR",
    "LEGACY_DATA_DIRS",
    "CHECKPOINT_SUFFIX",
    "ROUNDS_DIR",
    "TMP_DIR",
    "checkpoint_filename",
    "default_checkpoint_dir",
    "legacy_data_dir_hint",
    "parse_checkpoint_filename",
    "resolve_data_dir",
]

#: Environment variable overriding the data directory (its older alias: ``CHECKPOINT_DIR``).
CHECKPOINT_DIR_ENV = "FEDSTORE_DIR"
_CHECKPOINT_DIR_ALIAS = "CHECKPOINT_DIR"
#: Suffix of checkpoint files (zstd-compressed safetensors, see fedstore.format).
CHECKPOINT_SUFFIX = ".fsck"
ROUNDS_DIR = "rounds"
TMP_DIR = "tmp"
#: The data directory every command uses when neither --dir nor FEDSTORE_DIR says otherwise.
DEFAULT_DATA_DIR = "fedstore-data"
#: Defaults of older versions (nodes: ./checkpoints_<role>; other commands: ./checkpoints_node).
LEGACY_DATA_DIRS = ("checkpoints_node", "checkpoints_trainer", "checkpoints_bootstrap")

_NAME = re.compile(r"^round_(\d{6,})_([A-Za-z0-9]+)" + re.escape(CHECKPOINT_SUFFIX) + r"$")


def _configured(settings: Mapping[str, str]) -> str:
    return (
        settings.get(CHECKPOINT_DIR_ENV, "").strip()
        or settings.get(_CHECKPOINT_DIR_ALIAS, "").strip()
    )


def resolve_data_dir(
    flag: str | os.PathLike[str] | None = None,
    settings: Mapping[str, str] | None = None,
    *,
    cwd: Path | None = None,
) -> Path:
    """The data directory: *flag* (``--dir``), else ``FEDSTORE_DIR`` (or ``CHECKPOINT_DIR``)
    in *settings* (default: the process environment), else ``./fedstore-data``.

    The result is absolute (relative paths are taken from *cwd*, default the
    current directory) with ``~`` expanded.
    """
    text = str(flag).strip() if flag is not None and str(flag).strip() else ""
    if not text:
        text = _configured(os.environ if settings is None else settings) or DEFAULT_DATA_DIR
    path = Path(text).expanduser()
    return path if path.is_absolute() else (cwd or Path.cwd()) / path


def legacy_data_dir_hint(chosen: Path, *, cwd: Path | None = None) -> str | None:
    """A one-line hint when *chosen* is the default, does not exist, and an older
    version's default directory with a catalog does (None otherwise)."""
    base = cwd or Path.cwd()
    if chosen != base / DEFAULT_DATA_DIR or chosen.exists():
        return None
    old = [n for n in LEGACY_DATA_DIRS if (base / n / "catalog.sqlite").is_file()]
    if not old:
        return None
    return (
        f"using ./{DEFAULT_DATA_DIR}, the default data directory; ./{old[0]} is the default "
        f"of older fedstore versions: pass --dir {old[0]} (or set FEDSTORE_DIR) to use it"
    )


def default_checkpoint_dir(role: str = "node", env: Mapping[str, str] | None = None) -> Path:
    """The data directory without ``--dir`` (see :func:`resolve_data_dir`), not made absolute.

    *role* is ignored: since the one data-directory rule every role and
    command shares ``./fedstore-data``.
    """
    value = _configured(os.environ if env is None else env)
    return Path(value).expanduser() if value else Path(DEFAULT_DATA_DIR)


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
