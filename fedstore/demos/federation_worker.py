"""One process of the digits demo: ``python -m fedstore.demos.federation_worker``.

The demo (:mod:`fedstore.demos.federation`) starts one aggregator and N
trainers with this entry point. Each process runs a fedstore node and
prints one JSON object per line on stdout (machine-readable progress; logs
go to stderr):

* ``{"event": "waiting"}`` with ``--go-from-stdin``: data loaded, node not started yet
  (the process is offline until ``GO <bootstrap multiaddr>`` arrives on stdin);
* ``{"event": "ready", "role": ..., "peer_id": ..., "addr": ...}`` once the node listens;
* the round events of :mod:`fedstore.federation.events` (``"event"`` is their ``kind``);
* ``{"event": "done", "status": ..., "final_round": ..., "final_cid": ..., ...}`` at the end;
* ``{"event": "error", "message": ...}`` if it fails (exit code 1).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import trio

from fedstore.errors import ConfigError, FedstoreError

if TYPE_CHECKING:
    from fedstore.demos.digits_task import DigitsTask
    from fedstore.federation.events import Event

__all__ = ["build_parser", "main", "parse_settings"]


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def _event_sink(ev: Event) -> None:
    from fedstore.federation.events import event_dict

    d = event_dict(ev)
    d["event"] = d.pop("kind")
    _emit(d)


def _read_line() -> str:
    return sys.stdin.readline()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fedstore.demos.federation_worker")
    p.add_argument(
        "role",
        choices=["aggregator", "trainer", "member"],
        help="member: both roles, in a federation with a manifest (--federation)",
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
    p.add_argument("--trainers", type=int, default=3, help="size of the data split")
    p.add_argument("--index", type=int, default=1, help="this trainer's data part (1-based)")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--aggregator", default="fedavg", dest="strategy", help="strategy name")
    p.add_argument(
        "--strategy-setting",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting of the strategy (repeatable), e.g. trim=0.1",
    )
    p.add_argument(
        "--update-encoding",
        default="float32",
        help="update encoding (aggregator): float32, float16, int8[:BLOCK], topk:FRACTION",
    )
    p.add_argument("--quorum", default="3", help="N or N,ROUND:M")
    p.add_argument("--min-updates", type=int, default=1)
    p.add_argument("--round-timeout", type=float, default=30.0)
    p.add_argument("--idle-timeout", type=float, default=60.0)
    p.add_argument("--hidden", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--alpha", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--federation",
        metavar="FILE|CID",
        help="federation manifest: members only, verified aggregates (default: open)",
    )
    p.add_argument("--verify", choices=["full", "off"], default="full")
    p.add_argument("--log-level", default="WARNING")
    return p


def _task(args: argparse.Namespace) -> DigitsTask:
    from fedstore.demos.digits_task import DigitsConfig, DigitsTask

    overrides = {
        k: getattr(args, k)
        for k in ("hidden", "epochs", "lr", "alpha", "seed")
        if getattr(args, k) is not None
    }
    return DigitsTask(args.trainers, DigitsConfig(**overrides))


def parse_settings(items: Sequence[str]) -> dict[str, str]:
    """``["trim=0.1", ...]`` -> ``{"trim": "0.1"}``; ConfigError for an item without ``=``."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"strategy setting {item!r} is not KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


async def _run(args: argparse.Namespace) -> int:
    from fedstore.federation import api
    from fedstore.federation.aggregator import lead_rounds
    from fedstore.federation.nodepeer import NodePeer
    from fedstore.federation.settings import AggregatorSettings, QuorumSchedule, TrainerSettings
    from fedstore.federation.strategies import load_strategy
    from fedstore.federation.trainer import follow_rounds
    from fedstore.federation.update_encoding import UpdateEncoding
    from fedstore.node import open_node

    if args.role == "member" and not args.federation:
        raise ConfigError("the member role needs a federation manifest (--federation)")
    strategy = (
        load_strategy(args.strategy, parse_settings(args.strategy_setting))
        if args.role == "aggregator" and not args.federation
        else None
    )
    encoding = UpdateEncoding.parse(args.update_encoding)
    task = await trio.to_thread.run_sync(_task, args)
    if args.go_from_stdin:
        _emit({"event": "waiting", "role": args.role})
        line = await trio.to_thread.run_sync(_read_line, abandon_on_cancel=True)
        word, _, addr = line.strip().partition(" ")
        if word != "GO":
            _emit({"event": "error", "message": "stdin closed before GO"})
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
    async with open_node(cfg) as node:
        _emit(
            {
                "event": "ready",
                "role": args.role,
                "peer_id": node.peer_id,
                "addr": node.addrs()[0] if node.addrs() else "",
            }
        )
        peer = NodePeer(node)
        if args.federation:
            return await _run_member(args, node, task)
        if strategy is not None:
            meta = {
                "fedstore.task": f"digits-{task.cfg.model_name}",
                "fedstore.task_seed": str(task.cfg.seed),
            }
            result = await lead_rounds(
                peer,
                task.initial_arrays(),
                AggregatorSettings(
                    rounds=args.rounds,
                    strategy=strategy,
                    quorum=QuorumSchedule.parse(args.quorum),
                    min_updates=args.min_updates,
                    round_timeout=args.round_timeout,
                    metadata=meta,
                    update_encoding=encoding,
                ),
                evaluate=task.evaluate,
                on_event=_event_sink,
            )
            head = await node.head()
            _emit(
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
        await node.wait_for_peers(1, timeout=30.0)
        tres = await follow_rounds(
            peer,
            task.trainer(args.index),
            TrainerSettings(
                idle_timeout=args.idle_timeout, inline_limit=min(peer.inline_limit, 1 << 20)
            ),
            on_event=_event_sink,
        )
        head = await node.head()
        _emit(
            {
                "event": "done",
                "status": tres.status,
                "final_round": tres.final_round,
                "final_cid": tres.final_cid,
                "rounds_trained": list(tres.rounds_trained),
                "local_head": list(head) if head else None,
                "reason": tres.reason,
                "class_counts": task.class_counts(args.index),
            }
        )
        return 0 if tres.status == "complete" else 1


async def _run_member(args: argparse.Namespace, node: Any, task: DigitsTask) -> int:
    """This process's part in a federation with a manifest (its roles come from the manifest)."""
    from fedstore.federation.member import MemberOptions, take_part
    from fedstore.federation.nodepeer import NodePeer, join_federation

    if args.bootstrap:
        await node.wait_for_peers(1, timeout=30.0)
    membership = await join_federation(node, args.federation)
    peer = NodePeer(node)
    roles = membership.manifest.roles_of(node.peer_id)
    aggregates = "aggregator" in roles and args.role in ("aggregator", "member")
    trains = "trainer" in roles and args.role in ("trainer", "member")
    result = await take_part(
        peer,
        membership,
        initial=task.initial_arrays() if aggregates else None,
        train=task.trainer(args.index) if trains else None,
        evaluate=task.evaluate if aggregates else None,
        options=MemberOptions(verify=args.verify == "full", idle_timeout=args.idle_timeout),
        metadata={
            "fedstore.task": f"digits-{task.cfg.model_name}",
            "fedstore.task_seed": str(task.cfg.seed),
        },
        inline_limit=min(peer.inline_limit, 1 << 20),
        on_event=_event_sink,
    )
    head = await node.head()
    _emit(
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
            "local_head": list(head) if head else None,
            "reason": result.reason,
        }
    )
    return 0 if result.status == "complete" else 1


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
        _emit({"event": "error", "message": str(err)})
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
