"""The node's commands: one table for the ``Command>`` prompt and ``fedstore ctl``.

:data:`COMMANDS` maps each name to a :class:`Command`: its usage line (the
placeholders name the argument kinds the prompt completes and ``ctl``
resolves: a ``[weights-file]`` is made absolute on the client side), its
help, its argument count and its handler. A handler runs against a
:class:`Session` (the node and the prompt's state), writes its lines to a
:class:`~fedstore.cli.node_output.Sink` (``KEY=value`` for programs, a
sentence for people) and returns a JSON-ready result for ``ctl --json``.

:meth:`Session.execute` is the one way a command runs, whoever typed it:
it never raises for bad input; it ends with ``OK=<name>`` or, after an
``ERROR=`` line, ``FAILED=<name>`` (both shown to programs only). Node
events a command causes (``SAVED=``, ``SYNCED=``, ``HEAD=`` ...) reach the
node's own output as always and, while a ``ctl`` command runs, its reply
too (:class:`EventRouter`, through a context variable that the command's
tasks inherit).

Nothing heavy is imported at module level: ``fedstore ctl`` reads the table
without trio, numpy or the node.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
import shlex
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedstore.errors import CheckpointNotFoundError, FedstoreError, RoundConflictError

if TYPE_CHECKING:
    import numpy as np

    from fedstore.cli.node_output import Capture, Output, Sink
    from fedstore.node import Node
    from fedstore.node.events import NodeEvent

__all__ = [
    "COMMANDS",
    "Command",
    "CommandRunner",
    "EventRouter",
    "Outcome",
    "Session",
    "UsageError",
    "arg_kinds",
    "demo_weights",
    "split_line",
]

JsonDict = dict[str, Any]
Handler = Callable[["Session", "Sink", list[str]], Awaitable[JsonDict | None]]

#: Argument kinds by placeholder name (completion, and path resolution in ctl).
_KINDS = {
    "multiaddr": "multiaddr",
    "topic": "topic",
    "msg": "text",
    "round": "round",
    "keep": "count",
    "n": "count",
    "weights-file": "path",
    "cid": "cid",
    "timeout": "seconds",
}
_PLACEHOLDER = re.compile(r"[<\[]([^>\]]+)[>\]]")


class UsageError(Exception):
    """A command's argument is malformed (reported with the usage line)."""


@dataclass(frozen=True)
class Command:
    usage: str
    help: str
    min_args: int
    max_args: int | None
    handler: Handler

    @property
    def name(self) -> str:
        return self.usage.split()[0]


def arg_kinds(cmd: Command) -> list[str]:
    """The kind of each positional argument of *cmd*, from its usage line."""
    return [_KINDS.get(m, "text") for m in _PLACEHOLDER.findall(cmd.usage)]


def split_line(line: str) -> list[str]:
    """A command line as words (shell quoting, ``#`` comments); ValueError if unbalanced."""
    return shlex.split(line, comments=True)


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


def _round_arg(text: str) -> int:
    from fedstore.p2p.messages import parse_round

    try:
        return parse_round(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _seconds_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= 86_400:
        raise UsageError(f"seconds must be above 0 and at most 86400, got {text}")
    return value


# -- event routing ----------------------------------------------------------------------

_capture: contextvars.ContextVar[Capture | None] = contextvars.ContextVar(
    "fedstore_ctl_capture", default=None
)


class EventRouter:
    """The node's ``on_event``: prints every event, and copies it into the reply of the
    ``ctl`` command whose task caused it."""

    def __init__(self, out: Output) -> None:
        self.out = out

    def __call__(self, event: NodeEvent) -> None:
        self.out.node_event(event)
        capture = _capture.get()
        if capture is not None and not capture.closed:
            capture.node_event(event)


# -- the session ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one command ended: *result* for ``ctl --json``, *error* when it failed."""

    name: str
    ok: bool
    result: JsonDict = field(default_factory=dict)
    error: str | None = None


class Session:
    """A node and the state its commands share (the last loaded weights, the stop request)."""

    def __init__(self, node: Node) -> None:
        import trio

        self.node = node
        self.current: dict[str, np.ndarray] | None = None
        self.stop_requested = trio.Event()
        self.failures = 0
        self.started = time.monotonic()
        self._replying = 0
        self._replies_done = trio.Event()

    @contextlib.contextmanager
    def replying(self) -> Iterator[None]:
        """Mark a control request in progress until its reply is sent (see :meth:`drain`)."""
        self._replying += 1
        try:
            yield
        finally:
            self._replying -= 1
            if self._replying == 0:
                self._replies_done.set()

    async def drain(self, timeout: float = 2.0) -> None:
        """Wait (at most *timeout* s) until control replies in progress are sent: the
        ``exit`` that stopped the node is answered before the node goes."""
        import trio

        with trio.move_on_after(timeout):
            while self._replying:
                self._replies_done = trio.Event()
                await self._replies_done.wait()

    async def execute(
        self, words: list[str] | str, out: Sink, *, capture: Capture | None = None
    ) -> Outcome:
        """Run one command (a line, or its words); never raises for bad input.

        With *capture* (a ``ctl`` request), node events this command causes
        are copied into it as well.
        """
        if isinstance(words, str):
            try:
                words = split_line(words)
            except ValueError as exc:
                return self._failed(out, "?", f"cannot parse command: {exc}")
        if not words:
            return Outcome("", True)
        name, args = words[0].lower(), words[1:]
        cmd = COMMANDS.get(name)
        if cmd is None:
            return self._failed(out, name, f"unknown command {name!r}; type 'help' for the list")
        if len(args) < cmd.min_args or (cmd.max_args is not None and len(args) > cmd.max_args):
            return self._failed(out, name, f"usage: {cmd.usage}")
        token = _capture.set(capture)
        try:
            result = await cmd.handler(self, out, args)
        except UsageError as exc:
            return self._failed(out, name, f"{exc}; usage: {cmd.usage}")
        except (FedstoreError, ValueError, OSError) as exc:
            return self._failed(out, name, f"{name}: {exc}")
        finally:
            _capture.reset(token)
        out.event("OK", name, "")
        return Outcome(name, True, result or {})

    def _failed(self, out: Sink, name: str, message: str) -> Outcome:
        self.failures += 1
        out.event("ERROR", message)
        out.event("FAILED", name, "")
        return Outcome(name, False, error=message)


class CommandRunner:
    """A session bound to one output: ``await runner.execute(line) -> bool`` (selftest)."""

    def __init__(self, node: Node, out: Sink) -> None:
        self.session = Session(node)
        self.out = out

    @property
    def node(self) -> Node:
        return self.session.node

    async def execute(self, line: str) -> bool:
        return (await self.session.execute(line, self.out)).ok


# -- handlers ---------------------------------------------------------------------------


def _head_json(head: Any) -> JsonDict | None:
    return None if head is None else {"round": head.round, "cid": head.cid}


async def _connect(s: Session, out: Sink, args: list[str]) -> JsonDict:
    peer = await s.node.connect(args[0])
    return {"peer_id": peer}


async def _join(s: Session, out: Sink, args: list[str]) -> JsonDict:
    joined = await s.node.join(args[0])
    if not joined:
        out.info(f"already joined {args[0]}")
    return {"topic": args[0], "joined": joined}


async def _leave(s: Session, out: Sink, args: list[str]) -> JsonDict:
    if not await s.node.leave(args[0]):
        raise UsageError(f"not joined to {args[0]!r}")
    return {"topic": args[0]}


async def _publish(s: Session, out: Sink, args: list[str]) -> JsonDict:
    sent = await s.node.publish(args[0], " ".join(args[1:]).encode("utf-8"))
    return {"topic": sent.topic, "size": sent.size, "digest": sent.digest, "cid": sent.cid}


async def _peers(s: Session, out: Sink, args: list[str]) -> JsonDict:
    peers = [{"peer_id": p, "addrs": s.node.host.peer_addrs(p)} for p in s.node.peers()]
    out.event("PEERS", len(peers))
    for p in peers:
        out.event("PEER", p["peer_id"], f"  {p['peer_id']}  {', '.join(p['addrs']) or '-'}")
    return {"peers": peers}


def _topic_rows(s: Session) -> list[JsonDict]:
    return [
        {
            "topic": t,
            "subscribed": len(s.node.host.topic_peers(t)),
            "mesh": len(s.node.host.mesh_peers(t)),
        }
        for t in s.node.joined_topics()
    ]


async def _topics(s: Session, out: Sink, args: list[str]) -> JsonDict:
    rows = _topic_rows(s)
    for r in rows:
        out.event(
            "TOPIC",
            f"{r['topic']}:{r['subscribed']}:{r['mesh']}",
            f"  {r['topic']}: {r['subscribed']} peer(s) subscribed, {r['mesh']} in mesh",
        )
    return {"topics": rows}


async def _describe(s: Session) -> JsonDict:
    node = s.node
    head = await node.head()
    return {
        "peer_id": node.peer_id,
        "role": node.role,
        "data_dir": str(node.store.dir),
        "backends": list(node.chain.names),
        "head": _head_json(head),
        "drops": node.counters.snapshot(),
        "addresses": node.addrs(),
    }


def _emit_description(out: Sink, d: JsonDict) -> None:
    head = d["head"]
    drops = ",".join(f"{k}={v}" for k, v in d["drops"].items()) or "none"
    rows = {
        "PEER_ID": d["peer_id"],
        "ROLE": d["role"],
        "DATA_DIR": d["data_dir"],
        "BACKENDS": ",".join(d["backends"]),
        "LOCAL_HEAD": f"{head['round']}:{head['cid']}" if head else "none",
        "DROPS": drops,
    }
    for key, value in rows.items():
        out.event(key, value, f"  {key.lower().replace('_', ' ')}: {value}")
    for addr in d["addresses"]:
        out.event("LISTENING", addr, f"  address: {addr}")


async def _local(s: Session, out: Sink, args: list[str]) -> JsonDict:
    d = await _describe(s)
    _emit_description(out, d)
    return d


async def _status(s: Session, out: Sink, args: list[str]) -> JsonDict:
    from fedstore import __version__

    d = await _describe(s)
    d.update(
        {
            "version": __version__,
            "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - s.started, 1),
            "peers": len(s.node.peers()),
            "topics": _topic_rows(s),
            "bound": s.node.host.transport_addrs(),
        }
    )
    _emit_description(out, d)
    out.event("PEERS", d["peers"])
    for r in d["topics"]:
        out.event("TOPIC", f"{r['topic']}:{r['subscribed']}:{r['mesh']}", "")
    for addr in d["bound"]:
        out.event("BOUND", addr, f"  bound: {addr}")
    out.event("UPTIME", d["uptime_s"], f"  up {d['uptime_s']:.0f} s, pid {d['pid']}")
    out.event("VERSION", d["version"], f"  fedstore {d['version']}")
    return d


async def _advertize(s: Session, out: Sink, args: list[str]) -> JsonDict:
    head = await s.node.advertize()
    addrs = s.node.addrs()
    for addr in addrs:
        out.event("LISTENING", addr)
    if head is None:
        out.event("ADVERTIZED", "none")
    return {"head": _head_json(head), "addresses": addrs}


async def _checkpoint_save(s: Session, out: Sink, args: list[str]) -> JsonDict:
    round_ = _round_arg(args[0])
    if len(args) > 1:
        import trio

        from fedstore.format.weight_files import load_weights_file

        arrays = await trio.to_thread.run_sync(load_weights_file, Path(args[1]))
    else:
        arrays = s.current if s.current is not None else demo_weights(round_)
    rec = await s.node.save_checkpoint(round_, arrays, {"round": str(round_)})
    return {"round": rec.round, "cid": rec.cid}


async def _checkpoint_load(s: Session, out: Sink, args: list[str]) -> JsonDict:
    round_ = _round_arg(args[0]) if args else None
    ckpt = await s.node.load_checkpoint(round_)
    s.current = dict(ckpt.arrays)
    rec = await s.node.store.get(round_) if round_ is not None else await s.node.store.latest()
    if rec is None:
        raise CheckpointNotFoundError("no local checkpoint")
    params = sum(int(a.size) for a in ckpt.arrays.values())
    out.event("LOADED", f"{rec.round}:{rec.cid}:{len(ckpt.arrays)}:{params}")
    return {"round": rec.round, "cid": rec.cid, "tensors": len(ckpt.arrays), "parameters": params}


async def _checkpoint_fetch(s: Session, out: Sink, args: list[str]) -> JsonDict:
    import trio

    from fedstore.format import inspect
    from fedstore.p2p.messages import WireFormatError, validate_cid

    cid = args[0]
    try:
        validate_cid(cid)
    except WireFormatError as exc:
        raise UsageError(str(exc)) from None
    data = await s.node.fetch(cid)
    info = await trio.to_thread.run_sync(inspect, data)
    stored: int | None = None
    anns = await s.node.catalog.announcements(cid=cid, limit=1)
    if anns:  # the round is known: keep a local copy (no-op if already stored)
        try:
            stored = (await s.node.store.save_encoded(anns[0].round, data, cid)).round
        except RoundConflictError as exc:
            out.info(f"  not stored locally: {exc}")
    suffix = "" if stored is None else f":{stored}"
    out.event("FETCHED", f"{cid}:{len(data)}{suffix}")
    out.info(f"  {info}")
    return {"cid": cid, "size": len(data), "round": stored}


async def _checkpoint_prune(s: Session, out: Sink, args: list[str]) -> JsonDict:
    removed = await s.node.store.prune(_round_arg(args[0]))
    rounds = [r.round for r in removed]
    out.event("PRUNED", ",".join(map(str, rounds)) or "none")
    return {"pruned": rounds}


async def _sync(s: Session, out: Sink, args: list[str]) -> JsonDict:
    from fedstore.node.core import SYNC_PROGRESS

    with out.progress_bar("syncing") as progress:
        token = SYNC_PROGRESS.set(progress)
        try:
            head = await s.node.sync()  # SYNCED= / HEAD= are node events
        finally:
            SYNC_PROGRESS.reset(token)
    if head is None:
        out.event("SYNCED", "none")
    return {"head": _head_json(head)}


async def _cids(s: Session, out: Sink, args: list[str]) -> JsonDict:
    local = [{"round": r.round, "cid": r.cid} for r in await s.node.store.list_checkpoints()]
    heard = [
        {"round": a.round, "cid": a.cid, "peer": a.sender_peer}
        for a in await s.node.catalog.announcements(limit=100)
    ]
    for c in local:
        out.event("CID", f"{c['round']}:{c['cid']}:local")
    for h in heard:
        out.event("CID", f"{h['round']}:{h['cid']}:{h['peer']}")
    return {"local": local, "heard": heard}


async def _rounds(s: Session, out: Sink, args: list[str]) -> JsonDict:
    rounds = await s.node.store.list_rounds()
    out.event("ROUNDS", ",".join(map(str, rounds)) or "none")
    return {"rounds": rounds}


async def _heads(s: Session, out: Sink, args: list[str]) -> JsonDict:
    heads = await s.node.peer_heads()  # each answer is a HEAD= node event
    if not heads:
        out.event("HEAD", "none")
    return {"heads": [{"peer": h.peer_id, "round": h.round, "cid": h.cid} for h in heads]}


async def _wait_peers(s: Session, out: Sink, args: list[str]) -> JsonDict:
    count = _round_arg(args[0])
    topic = args[1] if len(args) > 1 else None
    timeout = _seconds_arg(args[2]) if len(args) > 2 else 30.0
    peers = await s.node.wait_for_peers(count, topic=topic, timeout=timeout)
    out.event("PEERS", len(peers))
    return {"peers": peers}


async def _help(s: Session, out: Sink, args: list[str]) -> JsonDict:
    width = max(len(c.usage) for c in COMMANDS.values())
    for cmd in COMMANDS.values():
        out.event("HELP", cmd.usage, f"  {cmd.usage.ljust(width)}  {cmd.help}")
    return {"commands": [{"usage": c.usage, "help": c.help} for c in COMMANDS.values()]}


async def _exit(s: Session, out: Sink, args: list[str]) -> JsonDict:
    s.stop_requested.set()
    return {"stopping": True}


def _cmd(usage: str, help: str, lo: int, hi: int | None, handler: Handler) -> Command:
    return Command(usage, help, lo, hi, handler)


COMMANDS: dict[str, Command] = {
    c.name: c
    for c in [
        _cmd("connect <multiaddr>", "dial a peer (/ip4/../tcp/../p2p/..)", 1, 1, _connect),
        _cmd("join <topic>", "subscribe to a topic", 1, 1, _join),
        _cmd("leave <topic>", "unsubscribe from a topic", 1, 1, _leave),
        _cmd(
            "publish <topic> <msg>",
            "publish text (large payloads travel as a CID)",
            2,
            None,
            _publish,
        ),
        _cmd("peers", "connected peers", 0, 0, _peers),
        _cmd("topics", "joined topics and their peers", 0, 0, _topics),
        _cmd("local", "this node: id, addresses, data dir, head, drop counters", 0, 0, _local),
        _cmd("status", "local, plus peers, topics, bound addresses, uptime", 0, 0, _status),
        _cmd("advertize", "re-announce this node's head, print its addresses", 0, 0, _advertize),
        _cmd(
            "checkpoint_save <round> [weights-file]",
            "save, store, announce",
            1,
            2,
            _checkpoint_save,
        ),
        _cmd(
            "checkpoint_load [round]",
            "load a local checkpoint (latest by default)",
            0,
            1,
            _checkpoint_load,
        ),
        _cmd(
            "checkpoint_fetch <cid>",
            "fetch and verify a CID through the backends",
            1,
            1,
            _checkpoint_fetch,
        ),
        _cmd(
            "checkpoint_prune <keep>",
            "keep only the newest <keep> local rounds",
            1,
            1,
            _checkpoint_prune,
        ),
        _cmd("sync", "fetch the network's latest checkpoint if newer", 0, 0, _sync),
        _cmd("cids", "CIDs stored locally and heard from peers", 0, 0, _cids),
        _cmd("rounds", "local rounds", 0, 0, _rounds),
        _cmd("heads", "ask every connected peer for its head now", 0, 0, _heads),
        _cmd(
            "wait_peers <n> [topic] [timeout]",
            "wait for n peers (in topic's mesh)",
            1,
            3,
            _wait_peers,
        ),
        _cmd("help", "this list", 0, 0, _help),
        _cmd("exit", "stop the node", 0, 0, _exit),
    ]
}
