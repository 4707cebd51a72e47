"""The fault demo's intruder: ``python -m fedstore.demos.intruder``.

A real fedstore node that is not in the federation's manifest (it runs
without one, under its own identity) connects to the members and does what
any peer on the network can: it answers every ``ROUND`` it hears with
well-formed updates signed by its own key (poisoned weights claiming many
samples, inline), and announces checkpoints of its own on ``model-cids``
(``CID:<round>:<cid>``, the round it heard and one far beyond the run).
Members drop all of it before decoding (membership check in the pubsub
validator); the fault demo checks that none of it was ever aggregated.

Prints JSON lines like the worker (:mod:`fedstore.demos.federation_worker`):
``ready``, then ``intruder_sent`` per round it answered (``updates``,
``announcements`` so far), until it is stopped (SIGTERM, or stdin closed).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import trio

from fedstore.demos.federation_worker import emit, load_worker_app
from fedstore.errors import FedstoreError

__all__ = ["main"]

TOPIC = "fed-learn"
#: samples an intruder's update claims (FedAvg would weigh it above everyone's)
CLAIMED_SAMPLES = 1_000_000
#: the round of the checkpoint it announces beyond any run
FAR_ROUND = 10**12
#: updates sent per ROUND heard (distinct payloads)
COPIES = 2


def _bogus(initial: Mapping[str, npt.NDArray[np.generic]], value: float) -> dict[str, Any]:
    return {k: np.full_like(v, value) for k, v in initial.items()}


async def _intrude(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from fedstore.federation import api
    from fedstore.federation.messages import (
        RoundOpen,
        UpdateMessage,
        decode_message,
        encode_tensors,
    )
    from fedstore.federation.nodepeer import NodePeer
    from fedstore.federation.signing import UPDATE_DOMAIN, encode_signature
    from fedstore.ipld.cid import cid_of_bytes
    from fedstore.node import open_node

    app = await trio.to_thread.run_sync(load_worker_app, args)
    initial = await trio.to_thread.run_sync(app.initial_arrays)
    if args.go_from_stdin:  # offline until told (the members must listen before it dials)
        emit({"event": "waiting", "role": "intruder"})
        line = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
        word, _, addr = line.strip().partition(" ")
        if word != "GO":
            return 1
        if addr:
            args.bootstrap.append(addr)
    cfg = api.make_node_config(
        role="trainer",
        data_dir=args.data_dir,
        bootstrap=args.bootstrap,
        listen=args.listen,
        backends=[b for b in args.backends.split(",") if b],
        settings={"FEDSTORE_FS_ROOT": args.fs_root} if args.fs_root else {},
    )
    updates = announcements = 0
    answered: set[tuple[str, int, int]] = set()
    async with open_node(cfg) as node:
        addr = node.addrs()[0]
        emit({"event": "ready", "role": "intruder", "peer_id": node.peer_id, "addr": addr})
        if cfg.bootstrap:
            await node.wait_for_bootstrap(30.0)
        signer = NodePeer(node).signer
        async with node.subscribe(TOPIC) as sub:
            async for _, data in sub:
                try:
                    msg = decode_message(data)
                except Exception:  # noqa: BLE001, S112 (whatever it is, the intruder ignores it)
                    continue
                if not isinstance(msg, RoundOpen) or msg.federation is None or not msg.session:
                    continue
                key = (msg.session, msg.round, msg.attempt)
                if key in answered:
                    continue
                answered.add(key)
                for copy in range(COPIES):
                    payload = encode_tensors(_bogus(initial, 100.0 * (copy + 1)))
                    upd = UpdateMessage(
                        msg.round,
                        node.peer_id,
                        CLAIMED_SAMPLES,
                        payload,
                        base_cid=msg.base_cid,
                        federation=msg.federation,
                        session=msg.session,
                        payload_cid=cid_of_bytes(payload, 1),
                    )
                    sig = encode_signature(signer.sign(UPDATE_DOMAIN, upd.claim()))
                    await node.publish(TOPIC, replace(upd, sig=sig).encode())
                    updates += 1
                for rnd in (msg.round, FAR_ROUND):
                    meta = {"fedstore.round": str(rnd)}
                    rec = await node.save_checkpoint(rnd, _bogus(initial, 666.0), meta)
                    await node.announce(rnd, rec.cid)
                    announcements += 1
                emit(
                    {
                        "event": "intruder_sent",
                        "round": msg.round,
                        "updates": updates,
                        "announcements": announcements,
                    }
                )
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fedstore.demos.intruder")
    p.add_argument("--app", default="fedstore.demos.digits:make_app")
    p.add_argument("--app-config", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--fs-root")
    p.add_argument("--backends", default="filesystem")
    p.add_argument("--listen", default="/ip4/127.0.0.1/tcp/0")
    p.add_argument("--bootstrap", action="append", default=[])
    p.add_argument("--go-from-stdin", action="store_true", help="wait for 'GO' on stdin first")
    p.add_argument("--log-level", default="WARNING")
    for name in ("hidden", "epochs", "lr", "alpha", "seed"):  # load_worker_app reads them
        p.add_argument(f"--{name}", default=None)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from fedstore.logsetup import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    logging.getLogger("libp2p").setLevel(logging.ERROR)
    try:
        return trio.run(_intrude, args)
    except KeyboardInterrupt:
        return 130
    except FedstoreError as exc:
        emit({"event": "error", "message": " ".join(str(exc).split())})
        return 1


if __name__ == "__main__":
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    sys.exit(main())
