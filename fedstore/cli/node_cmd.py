"""``fedstore node``: run a peer with the interactive ``Command>`` prompt.

On a terminal it prints friendly lines and a prompt. Without one (stdin not a
tty, or ``--script FILE``, or ``--status``) it prints one machine-readable
``KEY=value`` status line per event on stdout, flushed at once, so tests,
``fedstore selftest`` and other programs can drive it; docs/NODE.md lists
the keys. Input is read in a worker thread, so the node keeps serving peers
while it waits for a command. End of input (or ``exit``) stops the node.

Node events arrive as the dataclasses of :mod:`fedstore.node.events` and are
rendered here, at the edge, by :func:`fedstore.node.status.status_line`;
command output (``OK=``, ``PEERS=``, ``LOADED=`` ...) is written directly.
numpy, trio and the node itself are imported when a command runs, so
``fedstore --help`` does not pay for them.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from fedstore.config import ROLES, NodeConfig, load_node_config
from fedstore.console import clean
from fedstore.errors import ConfigError, FedstoreError, RoundConflictError
from fedstore.p2p.messages import WireFormatError, parse_round, validate_cid

if TYPE_CHECKING:
    import numpy as np
    import trio

    from fedstore.node.events import NodeEvent

__all__ = ["CommandRunner", "Output", "demo_weights", "register", "run"]

log = logging.getLogger(__name__)


def demo_weights(round: int) -> dict[str, np.ndarray]:
    """The weights ``checkpoint_save`` stores without a file: conv/fc-shaped, seeded by round."""
    import numpy as np

    rng = np.random.default_rng(round)
    return {
        "conv1.weight": rng.standard_normal((8, 1, 3, 3)).astype(np.float32),
        "conv1.bias": rng.standard_normal(8).astype(np.float32),
        "fc.weight": rng.standard_normal((10, 128)).astype(np.float32),
        "fc.bias": rng.standard_normal(10).astype(np.float32),
    }


class Output:
    """Prints node events: ``KEY=value`` lines (machine) or sentences (human)."""

    _HUMAN = {
        "PEER_ID": "Peer ID: {}",
        "LISTENING": "Listening on {}",
        "RESUMED": "Resumed from local checkpoint round {}",
        "CONNECTED": "Connected to {}",
        "DISCONNECTED": "Disconnected from {}",
        "JOINED": "Joined topic {}",
        "LEFT": "Left topic {}",
        "PUBLISHED": "Published {}",
        "SAVED": "Saved checkpoint {}",
        "ANNOUNCED": "Announced {}",
        "HEARD": "Heard announcement {}",
        "HEAD": "Peer head {}",
        "SYNCED": "Synced to {}",
        "DROPPED": "Dropped bad input {}",
        "ERROR": "Error: {}",
        "LOADED": "Loaded round:cid:tensors:parameters {}",
        "FETCHED": "Fetched and verified {}",
        "PRUNED": "Pruned rounds: {}",
        "ROUNDS": "Local rounds: {}",
        "CID": "  {}",
        "PEERS": "{} peer(s)",
        "ADVERTIZED": "Nothing to advertize: no local checkpoint ({})",
        "EXIT": "Stopped ({} failed command(s)).",
        "READY": "",
    }

    def __init__(self, machine: bool, stream: IO[str] | None = None, role: str = "") -> None:
        self.machine = machine
        self._stream = stream or sys.stdout
        self._role = role

    def node_event(self, event: NodeEvent) -> None:
        """Print a node event (the node's ``on_event`` callback)."""
        from fedstore.node.status import status_line

        self.event(*status_line(event))

    def event(self, key: str, value: object) -> None:
        """Print one ``KEY=value`` line (machine) or its sentence (human)."""
        text = clean(str(value).replace("\n", " "))  # values may quote peers: no escapes
        if self.machine:
            self._write(f"{key}={text}")
            if key == "RESUMED":
                print(f"Resumed from local checkpoint round {text}", file=sys.stderr, flush=True)
            return
        if key == "RECEIVED":
            return  # the message text itself is printed by message()
        if key == "LISTENING" and self._role == "bootstrap":
            self._write(f"Bootstrap address: {text}")
            return
        template = self._HUMAN.get(key, key.title().replace("_", " ") + ": {}")
        if template:
            self._write(template.format(text))

    def message(self, topic: str, sender: str, data: bytes) -> None:
        if self.machine:
            return
        try:
            text = data.decode("utf-8")
            shown = text if text.isprintable() and len(text) <= 500 else f"<{len(data)} bytes>"
        except UnicodeDecodeError:
            shown = f"<{len(data)} bytes>"
        self._write(f"[{topic}] {sender[-8:]}: {shown}")

    def info(self, text: str) -> None:
        """Human-only prose (tables, help); silent in machine mode."""
        if not self.machine:
            self._write(text)

    def _write(self, line: str) -> None:
        self._stream.write(line + "\n")
        self._stream.flush()


@dataclass(frozen=True)
class Command:
    usage: str
    help: str
    min_args: int
    max_args: int | None
    handler: Callable[[CommandRunner, list[str]], Awaitable[None]]


class UsageError(Exception):
    pass


def _round_arg(text: str) -> int:
    try:
        return parse_round(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


class CommandRunner:
    """Executes runner commands against a node; used by the CLI and ``fedstore selftest``."""

    def __init__(self, node: Any, out: Output) -> None:
        self.node = node
        self.out = out
        self.current: dict[str, np.ndarray] | None = None
        self.stopped = False

    async def execute(self, line: str) -> bool:
        """Run one command line; False if it failed. Never raises for bad input.

        In machine mode the command ends with ``OK=<name>`` or, after an
        ``ERROR=`` line, ``FAILED=<name>``.
        """
        try:
            words = shlex.split(line, comments=True)
        except ValueError as exc:
            return self._failed("?", f"cannot parse command: {exc}")
        if not words:
            return True
        name, args = words[0].lower(), words[1:]
        cmd = COMMANDS.get(name)
        if cmd is None:
            return self._failed(name, f"unknown command {name!r}; type 'help' for the list")
        if len(args) < cmd.min_args or (cmd.max_args is not None and len(args) > cmd.max_args):
            return self._failed(name, f"usage: {cmd.usage}")
        try:
            await cmd.handler(self, args)
        except UsageError as exc:
            return self._failed(name, f"{exc}; usage: {cmd.usage}")
        except (FedstoreError, ValueError, OSError) as exc:
            return self._failed(name, f"{name}: {exc}")
        if self.out.machine:
            self.out.event("OK", name)
        return True

    def _failed(self, name: str, message: str) -> bool:
        self.out.event("ERROR", message)
        if self.out.machine:
            self.out.event("FAILED", name)
        return False

    # -- commands ----------------------------------------------------------------------
    async def connect(self, args: list[str]) -> None:
        await self.node.connect(args[0])

    async def join(self, args: list[str]) -> None:
        if not await self.node.join(args[0]):
            self.out.info(f"already joined {args[0]}")

    async def leave(self, args: list[str]) -> None:
        if not await self.node.leave(args[0]):
            raise UsageError(f"not joined to {args[0]!r}")

    async def publish(self, args: list[str]) -> None:
        await self.node.publish(args[0], " ".join(args[1:]).encode("utf-8"))

    async def peers(self, args: list[str]) -> None:
        peers = self.node.peers()
        self.out.event("PEERS", len(peers))
        for peer in peers:
            if self.out.machine:
                self.out.event("PEER", peer)
            else:
                addrs = ", ".join(self.node.host.peer_addrs(peer)) or "-"
                self.out.info(f"  {peer}  {addrs}")

    async def topics(self, args: list[str]) -> None:
        for topic in self.node.joined_topics():
            n = len(self.node.host.topic_peers(topic))
            mesh = len(self.node.host.mesh_peers(topic))
            if self.out.machine:
                self.out.event("TOPIC", f"{topic}:{n}:{mesh}")
            else:
                self.out.info(f"  {topic}: {n} peer(s) subscribed, {mesh} in mesh")

    async def local(self, args: list[str]) -> None:
        head = await self.node.head()
        rows = {
            "PEER_ID": self.node.peer_id,
            "ROLE": self.node.role,
            "DATA_DIR": self.node.store.dir,
            "BACKENDS": ",".join(self.node.chain.names),
            "LOCAL_HEAD": f"{head.round}:{head.cid}" if head else "none",
            "DROPS": ",".join(f"{k}={v}" for k, v in self.node.counters.snapshot().items())
            or "none",
        }
        for key, value in rows.items():
            if self.out.machine:
                self.out.event(key, value)
            else:
                self.out.info(f"  {key.lower().replace('_', ' ')}: {value}")
        for addr in self.node.addrs():
            self.out.event("LISTENING", addr)

    async def advertize(self, args: list[str]) -> None:
        head = await self.node.advertize()
        for addr in self.node.addrs():
            self.out.event("LISTENING", addr)
        if head is None:
            self.out.event("ADVERTIZED", "none")

    async def checkpoint_save(self, args: list[str]) -> None:
        round_ = _round_arg(args[0])
        if len(args) > 1:
            import trio

            from fedstore.format.weight_files import load_weights_file

            arrays = await trio.to_thread.run_sync(load_weights_file, Path(args[1]))
        else:
            arrays = self.current if self.current is not None else demo_weights(round_)
        await self.node.save_checkpoint(round_, arrays, {"round": str(round_)})

    async def checkpoint_load(self, args: list[str]) -> None:
        round_ = _round_arg(args[0]) if args else None
        ckpt = await self.node.load_checkpoint(round_)
        self.current = dict(ckpt.arrays)
        rec = (
            await self.node.store.get(round_)
            if round_ is not None
            else await self.node.store.latest()
        )
        params = sum(int(a.size) for a in ckpt.arrays.values())
        self.out.event("LOADED", f"{rec.round}:{rec.cid}:{len(ckpt.arrays)}:{params}")

    async def checkpoint_fetch(self, args: list[str]) -> None:
        cid = args[0]
        try:
            validate_cid(cid)
        except WireFormatError as exc:
            raise UsageError(str(exc)) from None
        data = await self.node.fetch(cid)
        import trio

        from fedstore.format import inspect

        info = await trio.to_thread.run_sync(inspect, data)
        stored = ""
        anns = await self.node.catalog.announcements(cid=cid, limit=1)
        if anns:  # the round is known: keep a local copy (no-op if already stored)
            try:
                rec = await self.node.store.save_encoded(anns[0].round, data, cid)
                stored = f":{rec.round}"
            except RoundConflictError as exc:
                self.out.info(f"  not stored locally: {exc}")
        self.out.event("FETCHED", f"{cid}:{len(data)}{stored}")
        self.out.info(f"  {info}")

    async def checkpoint_prune(self, args: list[str]) -> None:
        removed = await self.node.store.prune(_round_arg(args[0]))
        self.out.event("PRUNED", ",".join(str(r.round) for r in removed) or "none")

    async def sync(self, args: list[str]) -> None:
        head = await self.node.sync()
        if head is None:
            self.out.event("SYNCED", "none")

    async def cids(self, args: list[str]) -> None:
        for rec in await self.node.store.list_checkpoints():
            self.out.event("CID", f"{rec.round}:{rec.cid}:local")
        for ann in await self.node.catalog.announcements(limit=100):
            self.out.event("CID", f"{ann.round}:{ann.cid}:{ann.sender_peer}")

    async def rounds(self, args: list[str]) -> None:
        rounds = await self.node.store.list_rounds()
        self.out.event("ROUNDS", ",".join(map(str, rounds)) or "none")

    async def heads(self, args: list[str]) -> None:
        heads = await self.node.peer_heads()  # each answer is emitted as HEAD=
        if not heads:
            self.out.event("HEAD", "none")

    async def wait_peers(self, args: list[str]) -> None:
        count = _round_arg(args[0])
        topic = args[1] if len(args) > 1 else None
        timeout = float(args[2]) if len(args) > 2 else 30.0
        peers = await self.node.wait_for_peers(count, topic=topic, timeout=timeout)
        self.out.event("PEERS", len(peers))

    async def help(self, args: list[str]) -> None:
        width = max(len(c.usage) for c in COMMANDS.values())
        for cmd in COMMANDS.values():
            if self.out.machine:
                self.out.event("HELP", cmd.usage)
            else:
                self.out.info(f"  {cmd.usage.ljust(width)}  {cmd.help}")

    async def exit(self, args: list[str]) -> None:
        self.stopped = True


def _cmd(usage: str, help: str, lo: int, hi: int | None) -> Command:
    name = usage.split()[0]
    return Command(usage, help, lo, hi, getattr(CommandRunner, name))


COMMANDS: dict[str, Command] = {
    c.usage.split()[0]: c
    for c in [
        _cmd("connect <multiaddr>", "dial a peer (/ip4/../tcp/../p2p/..)", 1, 1),
        _cmd("join <topic>", "subscribe to a topic", 1, 1),
        _cmd("leave <topic>", "unsubscribe from a topic", 1, 1),
        _cmd("publish <topic> <msg>", "publish text (large payloads travel as a CID)", 2, None),
        _cmd("peers", "connected peers", 0, 0),
        _cmd("topics", "joined topics and their peers", 0, 0),
        _cmd("local", "this node: id, addresses, data dir, head, drop counters", 0, 0),
        _cmd("advertize", "re-announce this node's head and print its addresses", 0, 0),
        _cmd("checkpoint_save <round> [weights-file]", "save, store, announce", 1, 2),
        _cmd("checkpoint_load [round]", "load a local checkpoint (latest by default)", 0, 1),
        _cmd("checkpoint_fetch <cid>", "fetch and verify a CID through the backends", 1, 1),
        _cmd("checkpoint_prune <keep>", "keep only the newest <keep> local rounds", 1, 1),
        _cmd("sync", "fetch the network's latest checkpoint if newer", 0, 0),
        _cmd("cids", "CIDs stored locally and heard from peers", 0, 0),
        _cmd("rounds", "local rounds", 0, 0),
        _cmd("heads", "ask every connected peer for its head now", 0, 0),
        _cmd("wait_peers <n> [topic] [timeout]", "wait for n peers (in topic's mesh)", 1, 3),
        _cmd("help", "this list", 0, 0),
        _cmd("exit", "stop the node", 0, 0),
    ]
}


async def _read_lines(source: IO[str], send: trio.MemorySendChannel[str | None]) -> None:
    import trio

    async with send:
        while True:
            line = await trio.to_thread.run_sync(source.readline, abandon_on_cancel=True)
            if not line:
                await send.send(None)
                return
            await send.send(line)


async def _main(config: NodeConfig, out: Output, source: IO[str], prompt: bool) -> int:
    import trio

    from fedstore.node import open_node

    failures = 0
    async with open_node(config, on_event=out.node_event, on_message=out.message) as node:
        if config.federation:
            from fedstore.federation.nodepeer import join_federation

            membership = await join_federation(node)
            out.event("FEDERATION", membership.cid)
        runner = CommandRunner(node, out)
        out.event("READY", node.peer_id)
        if not out.machine:
            out.info("Type 'help' for the commands.")
        send, receive = trio.open_memory_channel[str | None](0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_read_lines, source, send)
            nursery.start_soon(_stop_on_signals, nursery.cancel_scope)
            while not runner.stopped:
                if prompt:
                    sys.stdout.write("Command> ")
                    sys.stdout.flush()
                line = await receive.receive()
                if line is None:
                    break
                if not await runner.execute(line):
                    failures += 1
            nursery.cancel_scope.cancel()
    out.event("EXIT", failures)
    return 0


async def _stop_on_signals(scope: trio.CancelScope) -> None:
    import trio

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP) as signals:
        async for _ in signals:
            scope.cancel()
            return


def run(args: argparse.Namespace) -> int:
    if args.node_log_level or args.node_log_json:
        from fedstore.logsetup import setup_logging

        setup_logging(args.node_log_level or "WARNING", json_lines=args.node_log_json)
    flags = {
        "FEDSTORE_ROLE": args.role,
        "CHECKPOINT_DIR": args.dir,
        "FEDSTORE_LISTEN": ",".join(args.listen) if args.listen else None,
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
    source: IO[str]
    if args.script:
        try:
            source = open(args.script, encoding="utf-8")  # noqa: SIM115 (closed below)
        except OSError as exc:
            raise ConfigError(f"cannot read script {args.script}: {exc.strerror}") from exc
    else:
        source = sys.stdin
    machine = bool(args.script or args.status or not sys.stdin.isatty())
    out = Output(machine, role=config.role)
    import trio

    try:
        return trio.run(_main, config, out, source, not machine)
    finally:
        if source is not sys.stdin:
            source.close()


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "node",
        help="run a peer with the interactive Command> prompt",
        description=(
            "Run a fedstore peer: a libp2p host with gossipsub (topics fed-learn and "
            "model-cids), the local checkpoint store and the backend chain. On a terminal "
            "it opens the 'Command>' prompt; otherwise (or with --script/--status) it "
            "prints KEY=value status lines (see docs/NODE.md)."
        ),
        epilog="Settings also come from the environment, .env and fedstore.toml (see "
        ".env.example); flags win.",
    )
    p.add_argument("--role", choices=ROLES, help="bootstrap prints its full multiaddr")
    p.add_argument("--dir", metavar="DIR", help="data directory (default ./checkpoints_<role>)")
    p.add_argument(
        "--listen",
        metavar="MULTIADDR",
        action="append",
        help="listen address (repeatable; default /ip4/127.0.0.1/tcp/0)",
    )
    p.add_argument(
        "--bootstrap",
        metavar="MULTIADDR",
        action="append",
        help="peer to connect to at start (repeatable)",
    )
    p.add_argument("--backends", metavar="LIST", help="backend chain, e.g. kubo,filesystem")
    p.add_argument(
        "--federation",
        metavar="FILE|CID",
        help="federation manifest: take messages and heads from its members only",
    )
    p.add_argument("--script", metavar="FILE", help="run the commands in FILE, then exit")
    p.add_argument(
        "--status", action="store_true", help="print KEY=value status lines even on a terminal"
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
    p.set_defaults(func=run)
