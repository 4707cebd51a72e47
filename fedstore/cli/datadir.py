"""The ``--dir`` option every command shares, and the one rule that resolves it.

``--dir``, else ``FEDSTORE_DIR`` (environment, ``.env``, ``fedstore.toml``;
older name ``CHECKPOINT_DIR``), else ``./fedstore-data``: see
:func:`fedstore.store.paths.resolve_data_dir`. Nodes (``node``, ``daemon``)
resolve it through :func:`fedstore.config.load_node_config`, which applies
the same rule.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

__all__ = ["DIR_HELP", "add_dir_argument", "data_dir"]

log = logging.getLogger(__name__)

DIR_HELP = "data directory (default: $FEDSTORE_DIR, else ./fedstore-data)"


def add_dir_argument(p: argparse.ArgumentParser, help: str = DIR_HELP) -> None:
    """Add ``--dir DIR``."""
    p.add_argument("--dir", metavar="DIR", help=help)


def data_dir(args: argparse.Namespace) -> Path:
    """The data directory for *args* by the one rule (absolute)."""
    from fedstore.config import load_settings
    from fedstore.store.paths import legacy_data_dir_hint, resolve_data_dir

    flag = getattr(args, "dir", None)
    chosen = resolve_data_dir(flag, None if flag else load_settings())
    if not flag:
        hint = legacy_data_dir_hint(chosen)
        if hint:
            log.warning("%s", hint)
    return chosen
