"""The ``fedstore`` command line.

Each command group lives in its own module under :mod:`fedstore.cli` and
exposes ``register(subparsers)``; this module only assembles them, sets up
logging and turns fedstore's errors into a one-line message and exit code 1
(2 for usage errors, as argparse does), Ctrl-C into 130 and a closed output
pipe into a quiet 141 (see :mod:`fedstore.cli.exits`).

Start-up contract: building the parser imports every command module, so a
command module imports only the standard library and light fedstore modules
at module level; SQLAlchemy, Alembic, py-libp2p, numpy, trio, Rich and the
plugins are imported inside the functions that run a command. ``fedstore
--help`` then costs about as much as starting Python (``fedstore bench
--only startup`` measures it; ``tests/test_cli_startup.py`` checks the
imports).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from fedstore import __version__
from fedstore.cli.exits import exit_status

__all__ = ["main"]

#: Command modules, in the order their commands appear in ``--help``.
COMMAND_MODULES = [
    "fedstore.cli.demo_cmd",
    "fedstore.cli.federate_cmd",
    "fedstore.cli.node_cmd",
    "fedstore.cli.daemon_cmd",
    "fedstore.cli.ctl_cmd",
    "fedstore.cli.federation_cmd",
    "fedstore.cli.checkpoint_cmd",
    "fedstore.cli.catalog_cmd",
    "fedstore.cli.db_cmd",
    "fedstore.cli.backends_cmd",
    "fedstore.cli.config_cmd",
    "fedstore.cli.pins_cmd",
    "fedstore.cli.cid_cmd",
    "fedstore.cli.selftest_cmd",
    "fedstore.cli.bench_cmd",
    "fedstore.cli.completion_cmd",
]

log = logging.getLogger("fedstore")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedstore",
        description=(
            "Checkpoint and model exchange for decentralised federated learning: "
            "zstd-compressed safetensors checkpoints addressed by IPFS CIDs, stored "
            "through pluggable backends and announced over libp2p gossipsub."
        ),
        epilog="Run 'fedstore COMMAND --help' for the options of one command.",
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log verbosity (default: WARNING)",
    )
    parser.add_argument(
        "--log-json", action="store_true", help="log one JSON object per line on stderr"
    )
    parser.add_argument("--version", action="version", version=f"fedstore {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for modname in COMMAND_MODULES:
        importlib.import_module(modname).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from fedstore.logsetup import setup_logging

    try:  # the parser too: Ctrl-C while commands import, --help into a closed pipe
        parser = build_parser()
        args = parser.parse_args(argv)
        setup_logging(args.log_level, json_lines=args.log_json)
        rc = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's last flush
    except BaseException as exc:  # sorted by exit_status: errors, Ctrl-C, closed pipes
        status = exit_status(exc)
        if status is None:  # SystemExit, or a crash: Python reports it
            raise
        return status
    return int(rc or 0)
