"""One process of ``fedstore simulate`` / ``demo``: ``python -m fedstore.demos.federation_worker``.

The simulation (:mod:`fedstore.demos.federation`) starts one aggregator and
N trainers with this entry point (or, with a federation manifest, members:
``member`` takes every role the manifest gives it), each running the same app (``--app
MODULE:OBJ``, default the built-in digits app; ``--app-config KEY=VALUE`` for
an app factory). Each process runs a fedstore node and prints one JSON
object per line on stdout (machine-readable progress; logs go to stderr):

* ``{"event": "waiting"}`` with ``--go-from-stdin``: app loaded, node not started yet
  (the process is offline until ``GO <bootstrap multiaddr>`` arrives on stdin);
* ``{"event": "ready", "role": ..., "peer_id": ..., "addr": ...}`` once the node listens;
* the round events of :mod:`fedstore.federation.events` (``"event"`` is their ``kind``);
* ``{"event": "exported", "path": ..., "parameters": ...}`` (aggregator, ``--export``);
* ``{"event": "done", "status": ..., "final_round": ..., "final_cid": ..., ...}`` at the end;
* ``{"event": "error", "message": ...}`` if it fails (exit code 1).

The options ``--hidden``, ``--epochs``, ``--lr``, ``--alpha`` and ``--seed``
are app config entries of the same names (kept for the digits app).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from fedstore.errors import ConfigError, FedstoreError

if TYPE_CHECKING:
    from fedstore.app import App
    from fedstore.federation.events import Event

__all__ = ["DEFAULT_APP", "build_parser", "emit", "main", "parse_settings"]

#: The app a worker runs when none is named: the built-in digits task.
DEFAULT_APP = "fedstore.demos.digits:make_app"
#: Worker options that are app config entries (the digits app's settings).
_APP_OPTIONS = ("hidden", "epochs", "lr", "alpha", "seed")


def emit(obj: dict[str, Any]) -> None:
    """Print one JSON event line on stdout."""
    sys.stdout.write(json.dumps(obj, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def _event_sink(ev: Event) -> None:
    from fedstore.federation.events import event_dict

    d = event_dict(ev)
    d["event"] = d.pop("kind")
    emit(d)


def _read_line() -> str:
    return sys.stdin.readline()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fedstore.demos.federation_worker")
    p.add_argument(
        "role",
        choices=["aggregator", "trainer", "member"],
        help="member: both roles, in a federation with a manifest (--federation)",
    )
    p.add_argument("--app", default=DEFAULT_APP, help=f"MODULE:OBJ or FILE.py:OBJ ({DEFAULT_APP})")
    p.add_argument(
        "--app-config", action="append", default=[], metavar="KEY=VALUE", help="app factory setting"
    )
    p.add_argument("--data-dir", required=True, help="this node's data directory")
    p.add_argument("--fs-root", help="shared root of the filesystem backend")
    p.add_argument("--backends", default="filesystem", help="comma-separated backend chain")
    p.add_argument("--listen", default="/ip4/127.0.0.1/tcp/0")
    p.add_argument("--bootstrap", action="append", default=[], help="peer multiaddr (trainer)")
    p.add_argument(
        "--go-from-stdin",
        action="store_true",
        help="stay offline (no node) until a line 'GO <bootstrap multiaddr>' arrives on stdin",
    )
    p.add_argument("--trainers", type=int, default=3, help="number of trainers (data split)")
    p.add_argument("--index", type=int, default=1, help="this trainer's number (1-based)")
    p.add_argument("--rounds", type=int, default=None, help="rounds (default: the app's)")
    p.add_argument(
        "--strategy", "--aggregator", default=None, dest="strategy", help="strategy name"
    )
    p.add_argument(
        "--strategy-setting",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting of the strategy (repeatable), e.g. trim=0.1",
    )
    p.add_argument("--update-encoding", default=None, help="update encoding (aggregator)")
    p.add_argument("--quorum", default=None, help="N or N,ROUND:M (default: the app's)")
    p.add_argument("--min-updates", type=int, default=None)
    p.add_argument("--round-timeout", type=float, default=None)
    p.add_argument("--idle-timeout", type=float, default=60.0)
    p.add_argument("--export", type=Path, help="aggregator: write the final model to this file")
    for name in _APP_OPTIONS:
        p.add_argument(f"--{name}", default=None, help=f"app config {name}")
    p.add_argument(
        "--federation",
        metavar="FILE|CID",
        help="federation manifest: members only, verified aggregates (default: open)",
    )
    p.add_argument("--verify", choices=["full", "off"], default="full")
    p.add_argument(
        "--poison",
        action="store_true",
        help="fault demo: send poisoned updates (the honest step sign-flipped and scaled)",
    )
    p.add_argument(
        "--linger",
        type=float,
        default=None,
        metavar="S",
        help="member: seconds an aggregator stays after the last round, announcing the end "
        "and serving its objects (default 1.5)",
    )
    p.add_argument(
        "--lie-round",
        type=int,
        default=0,
        metavar="R",
        help="fault demo (member): announce a global model of round R that is not the aggregate",
    )
    p.add_argument("--log-level", default="WARNING")
    return p


def parse_settings(items: Sequence[str], what: str = "strategy setting") -> dict[str, str]:
    """``["trim=0.1", ...]`` -> ``{"trim": "0.1"}``; ConfigError for an item without ``=``."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{what} {item!r} is not KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def load_worker_app(args: argparse.Namespace) -> App:
    from fedstore.app import load_app

    config = parse_settings(args.app_config, "app config")
    for name in _APP_OPTIONS:
        if getattr(args, name) is not None:
            config[name] = str(getattr(args, name))
    return load_app(args.app, config=config)


async def _aggregate(args: argparse.Namespace, app: App, cfg: Any) -> int:
    from fedstore.federation import api
    from fedstore.federation.final_model import export_model, local_head

    def ready(addr: str) -> None:
        emit({"event": "ready", "role": "aggregator", "peer_id": addr.rsplit("/", 1)[-1],
              "addr": addr})  # fmt: skip

    result = await api.aggregate_app(
        app,
        rounds=args.rounds,
        quorum=args.quorum,
        min_updates=args.min_updates,
        round_timeout=args.round_timeout,
        strategy=args.strategy,
        strategy_settings=parse_settings(args.strategy_setting),
        update_encoding=args.update_encoding,
        node=cfg,
        on_event=_event_sink,
        on_ready=ready,
    )
    if result.status == "complete" and args.export is not None:
        params = await trio.to_thread.run_sync(
            export_model, cfg.data_dir, result.final_round, result.final_cid, args.export
        )
        emit({"event": "exported", "path": str(args.export), "parameters": params})
    head = await trio.to_thread.run_sync(local_head, cfg.data_dir)
    emit(
        {
            "event": "done",
            "status": result.status,
            "final_round": result.final_round,
            "final_cid": result.final_cid,
            "rejections": dict(result.rejections),
            "local_head": list(head) if head else None,
            "reason": result.reason,
        }
    )
    return 0 if result.status == "complete" else 1


async def _train(args: argparse.Namespace, app: App, cfg: Any, train_fn: Any) -> int:
    from fedstore.federation import api
    from fedstore.federation.final_model import local_head

    def ready(addr: str) -> None:
        emit({"event": "ready", "role": "trainer", "peer_id": addr.rsplit("/", 1)[-1],
              "addr": addr})  # fmt: skip

    result = await api.train(
        train_fn,
        node=cfg,
        idle_timeout=args.idle_timeout,
        connect_timeout=30.0,
        on_event=_event_sink,
        on_ready=ready,
    )
    head = await trio.to_thread.run_sync(local_head, cfg.data_dir)
    emit(
        {
            "event": "done",
            "status": result.status,
            "final_round": result.final_round,
            "final_cid": result.final_cid,
            "rounds_trained": list(result.rounds_trained),
            "local_head": list(head) if head else None,
            "reason": result.reason,
        }
    )
    return 0 if result.status == "complete" else 1


async def _member(args: argparse.Namespace, app: App, cfg: Any, train_fn: Any) -> int:
    """This process's part in a federation with a manifest (its roles come from the manifest;
    ``aggregator`` or ``trainer`` limits it to that one)."""
    from fedstore.federation.api import MemberOptions
    from fedstore.federation.final_model import local_head
    from fedstore.federation.member import take_part
    from fedstore.federation.nodepeer import NodePeer, join_federation
    from fedstore.node import open_node

    aggregates = args.role in ("aggregator", "member")
    initial = await trio.to_thread.run_sync(app.initial_arrays) if aggregates else None
    options = MemberOptions(
        verify=args.verify == "full", idle_timeout=args.idle_timeout, tamper=_tamper(args)
    )
    if args.linger is not None:
        options = replace(options, linger=args.linger)
    async with open_node(cfg) as node:
        addr = node.addrs()[0]
        emit({"event": "ready", "role": args.role, "peer_id": addr.rsplit("/", 1)[-1],
              "addr": addr})  # fmt: skip
        if cfg.bootstrap:
            await node.wait_for_bootstrap(30.0)
        membership = await join_federation(node, args.federation)
        peer = NodePeer(node)
        result = await take_part(
            peer,
            membership,
            initial=initial,
            train=train_fn,
            evaluate=app.evaluate_fn() if aggregates else None,
            options=options,
            metadata=dict(app.metadata),
            inline_limit=min(peer.inline_limit, 1 << 20),
            on_event=_event_sink,
        )
        node_dropped = dict(node.counters.snapshot())
    head = await trio.to_thread.run_sync(local_head, cfg.data_dir)
    emit(
        {
            "event": "done",
            "status": result.status,
            "final_round": result.final_round,
            "final_cid": result.final_cid,
            "session": result.session,
            "rounds_trained": list(result.rounds_trained),
            "adopted": [list(a) for a in result.adopted],
            "refused": [r.cid for r in result.refused],
            "rejections": dict(result.rejections),
            "dropped": dict(result.dropped),
            # dropped by the node before the member saw them (non-members: the pubsub validator)
            "node_dropped": node_dropped,
            "local_head": list(head) if head else None,
            "reason": result.reason,
        }
    )
    return 0 if result.status == "complete" else 1


def _tamper(args: argparse.Namespace) -> Any:
    """The fault demo's lie (``--lie-round R``): the aggregate of round R, shifted."""
    if not args.lie_round:
        return None
    from fedstore.demos.faults import lie_arrays

    lie_round = args.lie_round

    def tamper(round: int, arrays: Any) -> Any:
        return lie_arrays(arrays) if round == lie_round else arrays

    return tamper


def _poisoned(train_fn: Any) -> Any:
    """The fault demo's poisoned trainer (``--poison``): its honest step, sign-flipped, scaled."""
    from fedstore.demos.faults import poison_arrays

    def train(arrays: Any, round: int, config: Any) -> Any:
        new, samples, metrics = train_fn(arrays, round, config)
        return poison_arrays(arrays, new), samples, metrics

    return train


async def _run(args: argparse.Namespace) -> int:
    from fedstore.app import TrainerContext
    from fedstore.federation import api

    if args.role == "member" and not args.federation:
        raise ConfigError("the member role needs a federation manifest (--federation)")
    app = await trio.to_thread.run_sync(load_worker_app, args)
    train_fn = None
    if args.role in ("trainer", "member"):  # made before going online: data loading overlaps
        context = TrainerContext(args.index, args.trainers, Path(args.data_dir))
        train_fn = await trio.to_thread.run_sync(app.train_fn, context)
        if args.poison:
            train_fn = _poisoned(train_fn)
    if args.go_from_stdin:
        emit({"event": "waiting", "role": args.role})
        line = await trio.to_thread.run_sync(_read_line, abandon_on_cancel=True)
        word, _, addr = line.strip().partition(" ")
        if word != "GO":
            emit({"event": "error", "message": "stdin closed before GO"})
            return 1
        if addr:
            args.bootstrap.append(addr)
    settings = {"FEDSTORE_FS_ROOT": args.fs_root} if args.fs_root else {}
    cfg = api.make_node_config(
        role="bootstrap" if args.role == "aggregator" else "trainer",
        data_dir=args.data_dir,
        bootstrap=args.bootstrap,
        listen=args.listen,
        backends=[b for b in args.backends.split(",") if b],
        settings=settings,
    )
    if args.federation:
        return await _member(args, app, cfg, train_fn)
    if train_fn is None:
        return await _aggregate(args, app, cfg)
    return await _train(args, app, cfg, train_fn)


def main(argv: Sequence[str] | None = None) -> int:
    from fedstore.logsetup import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    logging.getLogger("libp2p").setLevel(logging.ERROR)
    try:
        return trio.run(_run, args)
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:
        err = _fedstore_error(exc)
        if err is None:
            raise
        emit({"event": "error", "message": " ".join(str(err).split())})
        print(f"fedstore worker: error: {err}", file=sys.stderr)
        return 1


def _fedstore_error(exc: BaseException) -> FedstoreError | None:
    """The FedstoreError inside ``exc`` (possibly nested in exception groups), if any."""
    if isinstance(exc, FedstoreError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            found = _fedstore_error(sub)
            if found is not None:
                return found
    return None


if __name__ == "__main__":
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    sys.exit(main())
