"""``fedstore node``: run a peer with the interactive ``Command>`` prompt.

On a terminal it opens the prompt (:mod:`fedstore.cli.prompt`: line editing,
history in the data directory, Tab completion, messages printed above the
input line) and prints readable sentences. Without one (stdin not a tty, or
``--script FILE``, or ``--status``) it prints one machine-readable
``KEY=value`` status line per event on stdout, flushed at once, so tests,
``fedstore selftest`` and other programs can drive it; docs/NODE.md lists
the keys. Commands come from the prompt, from stdin, from ``--script`` and,
through the control socket, from ``fedstore ctl``: one command table
(:mod:`fedstore.cli.node_commands`). End of stdin does not stop the node
(it runs on as ``fedstore daemon`` would); ``exit``, the end of a script,
Ctrl-D at the prompt, SIGTERM or SIGHUP stop it cleanly.

numpy, trio, prompt_toolkit and the node itself are imported when the
command runs, so ``fedstore --help`` does not pay for them.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import IO

from fedstore.cli.datadir import DIR_HELP
from fedstore.cli.node_commands import COMMANDS, CommandRunner, _round_arg, demo_weights
from fedstore.cli.node_output import Output
from fedstore.config import ROLES, NodeConfig, load_node_config
from fedstore.errors import ConfigError

__all__ = [
    "COMMANDS",
    "CommandRunner",
    "Output",
    "add_node_arguments",
    "demo_weights",
    "node_config",
    "register",
    "run",
]

_ = _round_arg  # re-exported for callers of the older module layout


def node_config(args: argparse.Namespace) -> NodeConfig:
    """The node's settings: these flags over the environment, .env and fedstore.toml."""
    if args.node_log_level or args.node_log_json:
        from fedstore.logsetup import setup_logging

        setup_logging(args.node_log_level or "WARNING", json_lines=args.node_log_json)
    flags = {
        "FEDSTORE_ROLE": args.role,
        "CHECKPOINT_DIR": args.dir,
        "FEDSTORE_LISTEN": ",".join(args.listen) if args.listen else None,
        "FEDSTORE_ANNOUNCE": ",".join(args.announce) if args.announce else None,
        "BOOTSTRAP_ADDR": ",".join(args.bootstrap) if args.bootstrap else None,
        "FEDSTORE_BACKENDS": args.backends,
        "FEDSTORE_AUTO_SYNC": "true" if args.auto_sync else None,
        "FEDSTORE_REANNOUNCE_INTERVAL": args.reannounce,
        "FEDSTORE_FEDERATION": args.federation,
    }
    config = load_node_config(flags, env_file=args.env_file, toml_file=args.config)
    # modules that read os.environ directly (catalog auto-upgrade, checkpoint size cap)
    # see .env and fedstore.toml values too, with the same precedence
    os.environ.update(config.settings)
    return config


def run(args: argparse.Namespace) -> int:
    import signal

    import trio

    from fedstore.cli.node_service import (
        PromptSource,
        ScriptSource,
        Source,
        StdinSource,
        exit_cleanly_on,
        run_node,
        stopped,
    )
    from fedstore.cli.prompt import HISTORY_NAME

    stop = (signal.SIGTERM, signal.SIGHUP)
    exit_cleanly_on(stop)
    config = node_config(args)
    script: IO[str] | None = None
    if args.script:
        try:
            script = open(args.script, encoding="utf-8")  # noqa: SIM115 (closed below)
        except OSError as exc:
            raise ConfigError(f"cannot read script {args.script}: {exc.strerror}") from exc
    machine = bool(args.script or args.status or not sys.stdin.isatty())
    source: Source
    if script is not None:
        source = ScriptSource(script)
    elif not machine and sys.stdout.isatty():
        source = PromptSource(config.data_dir / HISTORY_NAME)
    else:
        source = StdinSource(sys.stdin, echo_prompt=not machine)
    out = Output(machine, role=config.role)
    try:
        rc = trio.run(run_node, config, out, source)
        stopped(stop)
        return rc
    finally:
        if script is not None:
            script.close()


def add_node_arguments(p: argparse.ArgumentParser) -> None:
    """The options ``fedstore node`` and ``fedstore daemon`` share."""
    p.add_argument("--role", choices=ROLES, help="bootstrap prints its full multiaddr")
    p.add_argument("--dir", metavar="DIR", help=DIR_HELP)
    p.add_argument(
        "--listen",
        metavar="MULTIADDR",
        action="append",
        help="listen address (repeatable; default /ip4/127.0.0.1/tcp/0; "
        "/ip4/0.0.0.0/tcp/4001 to be reachable from other hosts)",
    )
    p.add_argument(
        "--announce",
        metavar="MULTIADDR",
        action="append",
        help="address peers should dial (repeatable), e.g. /ip4/203.0.113.7/tcp/4001, or "
        "/ip4/203.0.113.7 for the bound port (default: the bound addresses, 0.0.0.0 "
        "replaced by this host's interface addresses)",
    )
    p.add_argument(
        "--bootstrap",
        metavar="MULTIADDR",
        action="append",
        help="peer to connect to and stay connected to (repeatable)",
    )
    p.add_argument("--backends", metavar="LIST", help="backend chain, e.g. kubo,filesystem")
    p.add_argument(
        "--federation",
        metavar="FILE|CID",
        help="federation manifest: take messages and heads from its members only",
    )
    p.add_argument(
        "--auto-sync",
        action="store_true",
        help="fetch every newer checkpoint announced or learned at once",
    )
    p.add_argument(
        "--reannounce",
        metavar="SECONDS",
        help="seconds between re-announcements of the head (0: never)",
    )
    p.add_argument("--config", metavar="FILE", help="fedstore.toml to read")
    p.add_argument("--env-file", metavar="FILE", help=".env file to read")
    p.add_argument(
        "--log-level",
        dest="node_log_level",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log verbosity",
    )
    p.add_argument(
        "--log-json", dest="node_log_json", action="store_true", help="log JSON lines on stderr"
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "node",
        help="run a peer with the interactive Command> prompt",
        description=(
            "Run a fedstore peer: a libp2p host with gossipsub (topics fed-learn and "
            "model-cids), the local checkpoint store and the backend chain. On a terminal "
            "it opens the 'Command>' prompt; otherwise (or with --script/--status) it "
            "prints KEY=value status lines (see docs/NODE.md) and reads commands from "
            "stdin; at end of input it keeps running. 'fedstore ctl' runs the same "
            "commands against it from another shell."
        ),
        epilog="Settings also come from the environment, .env and fedstore.toml (see "
        ".env.example); flags win.",
    )
    add_node_arguments(p)
    p.add_argument("--script", metavar="FILE", help="run the commands in FILE, then exit")
    p.add_argument(
        "--status", action="store_true", help="print KEY=value status lines even on a terminal"
    )
    p.set_defaults(func=run)
