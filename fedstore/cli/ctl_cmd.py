"""``fedstore ctl COMMAND [ARGS]``: run a prompt command against the node running on a data dir.

The node (``fedstore daemon`` or ``fedstore node``) serves a control socket
in its data directory (:mod:`fedstore.cli.control`); ``ctl`` sends one
command from the table the prompt uses (:mod:`fedstore.cli.node_commands`)
and prints the node's answer: sentences on a terminal, ``KEY=value`` lines
when piped (the node's status-line format), or the JSON reply with
``--json``. A file argument (``checkpoint_save 3 weights.npz``) is made
absolute here, since the node may run in another directory. Exit status: 0,
1 if the command failed or no node answered, 2 for a command or argument
count the table does not know.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fedstore.cli.datadir import add_dir_argument
from fedstore.cli.node_commands import COMMANDS, arg_kinds

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    width = max(len(c.usage) for c in COMMANDS.values())
    listing = "\n".join(f"  {c.usage.ljust(width)}  {c.help}" for c in COMMANDS.values())
    p = sub.add_parser(
        "ctl",
        help="run a Command> prompt command against a running node (daemon or node)",
        description=(
            "Send one command to the node running on the data directory, through its "
            "control socket (<dir>/control.sock, mode 0600), and print the answer."
        ),
        epilog=f"commands:\n{listing}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_dir_argument(p, "data directory of the running node (default: $FEDSTORE_DIR, "
                     "else ./fedstore-data)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the node's JSON reply")
    p.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="give up waiting for the answer after this long (default 600; 0: no limit)",
    )
    p.add_argument(
        "ctl_command", metavar="COMMAND", choices=sorted(COMMANDS), help="a node command"
    )
    p.add_argument(
        "args",
        metavar="ARG",
        nargs=argparse.REMAINDER,
        help="its arguments (ctl's own options may follow them; '--' ends them)",
    )
    p.set_defaults(func=run)


def _resolve_paths(name: str, args: list[str]) -> list[str]:
    kinds = arg_kinds(COMMANDS[name])
    return [
        str(Path(a).expanduser().resolve()) if i < len(kinds) and kinds[i] == "path" else a
        for i, a in enumerate(args)
    ]


def _own_options(args: argparse.Namespace) -> None:
    """Take ``--json``, ``--dir`` and ``--timeout`` given after the command
    (``fedstore ctl peers --json``) out of its arguments; ``--`` ends this."""
    rest: list[str] = []
    words = list(args.args)
    while words:
        word = words.pop(0)
        name, eq, value = word.partition("=")
        if word == "--":
            rest += words
            break
        if word == "--json":
            args.json = True
        elif name in ("--dir", "--timeout") and (eq or words):
            text = value if eq else words.pop(0)
            if name == "--dir":
                args.dir = text
            else:
                try:
                    args.timeout = float(text)
                except ValueError:
                    raise SystemExit(f"fedstore ctl: --timeout {text!r} is not a number") from None
        else:
            rest.append(word)
    args.args = rest


def run(args: argparse.Namespace) -> int:
    from fedstore.cli.control import call
    from fedstore.cli.datadir import data_dir
    from fedstore.cli.node_output import Output, render

    _own_options(args)
    cmd = COMMANDS[args.ctl_command]
    n = len(args.args)
    if n < cmd.min_args or (cmd.max_args is not None and n > cmd.max_args):
        print(f"fedstore ctl: usage: {cmd.usage}", file=sys.stderr)
        return 2
    from fedstore.cli.progress import byte_progress

    words = [cmd.name, *_resolve_paths(cmd.name, list(args.args))]
    with byte_progress(f"{cmd.name} on the node") as progress:
        reply = call(
            data_dir(args),
            words,
            timeout=args.timeout or None,
            on_progress=lambda label, done: progress(done),
        )
    if args.json:
        print(json.dumps(reply.to_json(), indent=2))
    else:
        shown = [ln for ln in reply.lines if ln[0] not in ("OK", "FAILED", "ERROR")]
        render(shown, Output(machine=not sys.stdout.isatty()))
    if reply.truncated:
        print("fedstore ctl: the answer was cut at the reply size limit", file=sys.stderr)
    if not reply.ok:
        from fedstore.console import clean

        print(f"fedstore: error: {clean(reply.error or 'command failed')}", file=sys.stderr)
        return 1
    return 0
