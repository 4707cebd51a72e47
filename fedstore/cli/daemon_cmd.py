"""``fedstore daemon``: a node that runs as a service, without a terminal or stdin.

It starts the node (same options as ``fedstore node``), serves the control
socket ``<dir>/control.sock`` through which ``fedstore ctl`` runs the
prompt's commands, prints the node's events (``KEY=value`` lines when
stdout is not a terminal, e.g. a log file or journald; sentences on one)
and runs until SIGTERM, SIGINT or SIGHUP, or ``fedstore ctl exit``; then it
stops cleanly (``EXIT=0``, exit status 0): the catalog is closed, the
identity kept for the next start. It never reads stdin, so
``setsid fedstore daemon ... < /dev/null > log 2>&1 &``, systemd and
containers all work (examples/deploy/).
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from fedstore.cli.node_cmd import add_node_arguments

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "daemon",
        help="run a node as a service (no prompt, no stdin; fedstore ctl talks to it)",
        description=(
            "Run a fedstore node without a terminal until SIGTERM/SIGINT/SIGHUP or "
            "'fedstore ctl exit'. 'fedstore ctl COMMAND' runs the Command> prompt's commands "
            "against it through <dir>/control.sock."
        ),
        epilog="Settings also come from the environment, .env and fedstore.toml (see "
        ".env.example); flags win. See examples/deploy/ for systemd and Docker.",
    )
    add_node_arguments(p)
    p.add_argument(
        "--address-file",
        metavar="FILE",
        help="write the addresses peers should dial to FILE (one per line) once ready",
    )
    p.add_argument(
        "--status",
        action="store_true",
        help="print KEY=value status lines even when stdout is a terminal",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import trio

    from fedstore.cli.node_cmd import node_config
    from fedstore.cli.node_output import Output
    from fedstore.cli.node_service import exit_cleanly_on, run_node, stopped

    stop = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    exit_cleanly_on(stop)
    config = node_config(args)
    out = Output(bool(args.status or not sys.stdout.isatty()), role=config.role)
    address_file = Path(args.address_file) if args.address_file else None
    rc = trio.run(lambda: run_node(config, out, None, stop_signals=stop, address_file=address_file))
    stopped(stop)
    return rc
