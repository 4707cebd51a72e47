"""One process of the large-model federation benchmark (section ``federation-large``).

``python -m fedstore.bench.large_worker aggregator|trainer --data-dir D ...``
runs a fedstore node whose backend chain is ``bitswap`` alone (its own data
directory, no shared filesystem root) and takes part in a federation of a
float32 model of ``--model-mb`` MB in ``--layers`` large layers, through the
real round loops (:func:`~fedstore.federation.aggregator.lead_rounds`,
:func:`~fedstore.federation.trainer.follow_rounds`) and the real
:class:`~fedstore.federation.nodepeer.NodePeer`. ``train`` is trivial and
deterministic (it scales the weights), so a round's time is the transfer,
verification, encoding and storage of the model.

It prints one JSON object per line on stdout:

* ``{"event": "ready", "role", "peer_id", "addr"}`` once the node listens;
* ``{"event": "phase", "role", "phase", "round", "start", "end"}`` for every
  timed step (``time.monotonic()`` seconds: one clock for every process of
  the machine, so the parent can line the processes up);
* the round events of :mod:`fedstore.federation.events` with ``"at"``;
* ``{"event": "memory", "round", "vm_hwm", "vm_rss", "ru_maxrss"}`` (bytes,
  read by the process itself from ``/proc/self/status`` and ``getrusage``)
  after every round;
* ``{"event": "done", "status", "final_round", "final_cid", "vm_hwm", "cpu", ...}``;
* ``{"event": "error", "message"}`` on failure (exit code 1).

Phases, by who runs them (the round a phase belongs to is the round trained):

trainer
    ``transfer`` fetch of the round's base model by CID (bitswap; blocks and
    the whole file checked against the CID), ``store`` keeping it (CID check,
    write, catalog), ``load`` the rest of ``load_global`` (decoding; for a
    model already held: reading, CID check, decoding), ``train``,
    ``encode`` the update (``_make_update`` before the blob is stored),
    ``upload`` storing the update by CID (CID, blocks into the block store);
aggregator
    ``transfer`` fetch of one update by CID (the line names the CID), then
    its decode and NaN/shape scan until the ``update_accepted`` event (the
    parent matches the two through the trainer's ``upload`` line: its
    ``verify``), ``aggregate`` (last update accepted to the save starting),
    ``save`` the new global model (encode, CID, write, catalog, block store,
    announcement).

The steps are timed by wrapping this process's own node objects (the
peer's methods and the store's), so the federation code timed is the code
that runs everywhere else.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import resource
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import numpy.typing as npt
import trio

if TYPE_CHECKING:
    from fedstore.federation.events import Event
    from fedstore.federation.nodepeer import NodePeer
    from fedstore.node import Node

__all__ = ["build_parser", "large_model", "main", "memory", "perturb"]

NDArray = npt.NDArray[np.generic]
T = TypeVar("T")


def _emit(obj: Mapping[str, Any]) -> None:
    sys.stdout.write(json.dumps(dict(obj), sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def memory() -> dict[str, int]:
    """Peak and current resident set (``VmHWM``, ``VmRSS``) and ``ru_maxrss`` in bytes."""
    out = {"ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("VmHWM", "VmRSS"):
                    out[key.lower().replace("vm", "vm_")] = int(value.split()[0]) * 1024
    except OSError:  # not Linux: ru_maxrss is the peak
        pass
    return out


def large_model(total_bytes: int, layers: int, seed: int = 0) -> dict[str, NDArray]:
    """``layers`` float32 weight matrices of 1,024 columns (N(0, 0.05)) with their biases.

    About ``total_bytes`` in all; deterministic for a size, layer count and seed.
    """
    rng = np.random.default_rng(seed)
    cols = 1024
    rows = max(1, total_bytes // (4 * cols * max(1, layers)))
    arrays: dict[str, NDArray] = {}
    for i in range(max(1, layers)):
        arrays[f"layer{i}.weight"] = rng.normal(0.0, 0.05, size=(rows, cols)).astype(np.float32)
        arrays[f"layer{i}.bias"] = np.zeros(cols, dtype=np.float32)
    return arrays


def perturb(arrays: Mapping[str, NDArray], round: int, index: int) -> dict[str, NDArray]:
    """The trivial "training": every weight scaled by ``1 + (index + round) / 1000``."""
    factor = np.float32(1.0 + (index + round) / 1000.0)
    return {name: np.multiply(a, factor, dtype=a.dtype) for name, a in arrays.items()}


class RssSampler:
    """Samples this process's resident set every ``interval`` s in a daemon thread.

    :meth:`window` returns (and restarts) the largest sample since the last
    call and when it was taken, so a report can say which step the peak fell in.
    """

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._lock = threading.Lock()
        self._peak, self._at = 0, time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _rss(self) -> int:
        try:
            with open("/proc/self/statm", encoding="ascii") as fh:
                return int(fh.read().split()[1]) * self._page
        except OSError:
            return 0

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            rss = self._rss()
            with self._lock:
                if rss > self._peak:
                    self._peak, self._at = rss, time.monotonic()

    def window(self) -> dict[str, float]:
        with self._lock:
            out = {"window_peak": self._peak, "window_peak_at": self._at}
            self._peak = 0
        return out


class Phases:
    """Records timed steps as ``phase`` lines; knows the round being worked on."""

    def __init__(self, role: str) -> None:
        self.role = role
        self.round = 0
        self.marks: dict[str, float] = {}

    def emit(
        self, phase: str, start: float, end: float, round: int | None = None, **extra: Any
    ) -> None:
        _emit(
            {
                "event": "phase",
                "role": self.role,
                "phase": phase,
                "round": self.round if round is None else round,
                "start": start,
                "end": end,
                **extra,
            }
        )

    def timed(
        self,
        phase: str,
        fn: Callable[..., Awaitable[T]],
        *,
        round_of: Callable[..., int] | None = None,
    ) -> Callable[..., Awaitable[T]]:
        """``fn`` (async) emitting one ``phase`` line per call."""

        @functools.wraps(fn)
        async def run(*args: Any, **kwargs: Any) -> T:
            start = time.monotonic()
            out = await fn(*args, **kwargs)
            rnd = round_of(*args, **kwargs) if round_of is not None else None
            self.emit(phase, start, time.monotonic(), rnd)
            self.marks[f"{phase}_end"] = time.monotonic()
            return out

        return run


def _instrument_trainer(node: Node, peer: NodePeer, phases: Phases) -> None:
    """Time what ``NodePeer.load_global`` does, and the update's storage."""
    inner_load_global = peer.load_global

    async def load_global(round: int, cid: str) -> Any:
        phases.round = round + 1  # the model is the base of the next round (or the final one)
        start = time.monotonic()
        model = await inner_load_global(round, cid)
        end = time.monotonic()
        # what follows the fetch and the store (or all of it, read from the local store)
        phases.emit("load", max(start, phases.marks.get("store_end", start)), end)
        return model

    peer.load_global = load_global  # type: ignore[method-assign]
    inner_head = peer.head

    async def head() -> tuple[int, str] | None:
        """The join-time sync: fetches round 0, the base of round 1 (timed as its transfer)."""
        phases.round = 1
        start = time.monotonic()
        got = await inner_head()
        if got is not None:
            phases.emit("transfer", start, time.monotonic(), 1, via="sync")
        return got

    peer.head = head  # type: ignore[method-assign]
    node.fetch = phases.timed("transfer", node.fetch)  # type: ignore[method-assign,assignment]
    store = node.store
    store.save_encoded = phases.timed("store", store.save_encoded)
    inner_put = peer.put_blob

    async def put_blob(data: bytes) -> str:
        start = time.monotonic()
        phases.emit("encode", phases.marks.get("train_end", start), start)
        cid = await inner_put(data)
        phases.emit("upload", start, time.monotonic(), size=len(data), cid=cid)
        return cid

    peer.put_blob = put_blob  # type: ignore[method-assign]


def _instrument_aggregator(
    peer: NodePeer, phases: Phases, sampler: RssSampler
) -> Callable[[Event], None]:
    """Time update fetches and the global save; return the event sink that times the rest."""
    inner_get = peer.get_blob
    inner_save = peer.save_global

    async def get_blob(cid: str, *, max_size: int) -> bytes:
        start = time.monotonic()
        data = await inner_get(cid, max_size=max_size)
        phases.emit("transfer", start, time.monotonic(), size=len(data), cid=cid)
        return data

    async def save_global(round: int, arrays: Any, metadata: Any) -> Any:
        start = time.monotonic()
        if round > 0:
            phases.emit("aggregate", phases.marks.get("accepted", start), start, round)
        rec = await inner_save(round, arrays, metadata)
        phases.emit("save", start, time.monotonic(), round, size=rec.size)
        return rec

    peer.get_blob = get_blob  # type: ignore[method-assign]
    peer.save_global = save_global  # type: ignore[method-assign]

    def sink(ev: Event) -> None:
        now = time.monotonic()
        if ev.kind == "round_opened":
            phases.round = ev.round
        elif ev.kind == "update_accepted":
            phases.marks["accepted"] = now
        _event_sink(ev, now)
        if ev.kind == "round_closed":
            _emit({"event": "memory", "round": ev.round, **memory(), **sampler.window()})

    return sink


def _event_sink(ev: Event, at: float | None = None) -> None:
    from fedstore.federation.events import event_dict

    d = event_dict(ev)
    d["event"] = d.pop("kind")
    d["at"] = time.monotonic() if at is None else at
    _emit(d)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fedstore.bench.large_worker")
    p.add_argument("role", choices=["aggregator", "trainer"])
    p.add_argument("--data-dir", required=True, help="this node's data directory")
    p.add_argument("--listen", default="/ip4/127.0.0.1/tcp/0")
    p.add_argument("--bootstrap", action="append", default=[], help="aggregator multiaddr")
    p.add_argument("--trainers", type=int, default=3, help="aggregator: trainers to wait for")
    p.add_argument("--index", type=int, default=1, help="trainer: its number (1-based)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--model-mb", type=float, default=100.0)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--round-timeout", type=float, default=600.0)
    p.add_argument("--log-level", default="WARNING")
    # the aggregator keeps serving after its "done" line until stdin closes
    return p


async def _run(args: argparse.Namespace) -> int:
    from fedstore.federation import api
    from fedstore.federation.aggregator import lead_rounds
    from fedstore.federation.events import TrainerUpdated
    from fedstore.federation.global_model import ROUND_KEY
    from fedstore.federation.nodepeer import NodePeer
    from fedstore.federation.settings import AggregatorSettings, QuorumSchedule, TrainerSettings
    from fedstore.federation.trainer import follow_rounds
    from fedstore.node import open_node

    cfg = api.make_node_config(
        role="bootstrap" if args.role == "aggregator" else "trainer",
        data_dir=args.data_dir,
        bootstrap=args.bootstrap,
        listen=args.listen,
        backends=["bitswap"],
        # never shared: each process's own (unused) filesystem root
        settings={"FEDSTORE_FS_ROOT": os.path.join(args.data_dir, "fsroot")},
    )
    nbytes = int(args.model_mb * 1_000_000)
    sampler = RssSampler().start()
    async with open_node(cfg) as node:
        peer = NodePeer(node)
        phases = Phases(args.role)
        ready = {"event": "ready", "role": args.role, "peer_id": node.peer_id}
        if args.role == "aggregator":
            # round 0 exists before any trainer starts (as when a federation is set up):
            # trainers sync it when they join, lead_rounds resumes from it
            initial = await trio.to_thread.run_sync(large_model, nbytes, args.layers)
            sink = _instrument_aggregator(peer, phases, sampler)
            await peer.save_global(0, initial, {ROUND_KEY: "0"})
            _emit({**ready, "addr": node.addrs()[0], **memory()})
            await node.wait_for_peers(args.trainers, timeout=120.0)
            result = await lead_rounds(
                peer,
                initial,
                AggregatorSettings(
                    rounds=args.rounds,
                    quorum=QuorumSchedule(args.trainers),
                    min_updates=args.trainers,
                    round_timeout=args.round_timeout,
                    linger=3.0,
                ),
                on_event=sink,
            )
            del initial
            status, final_round, final_cid = result.status, result.final_round, result.final_cid
            reason = result.reason
        else:
            _emit({**ready, "addr": node.addrs()[0], **memory()})
            _instrument_trainer(node, peer, phases)
            index = args.index

            def train(arrays: Mapping[str, NDArray], rnd: int, config: object) -> Any:
                start = time.monotonic()
                out = perturb(arrays, rnd, index)
                phases.marks["train_end"] = end = time.monotonic()
                phases.emit("train", start, end, rnd)
                return out, 100, {}

            def trainer_sink(ev: Event) -> None:
                now = time.monotonic()
                _event_sink(ev, now)
                if isinstance(ev, TrainerUpdated) and not ev.by_cid:  # small: sent inline
                    phases.emit("encode", phases.marks.get("train_end", now), now, ev.round)
                if ev.kind == "trainer_updated":
                    _emit({"event": "memory", "round": ev.round, **memory(), **sampler.window()})

            await node.wait_for_peers(1, timeout=60.0)
            tres = await follow_rounds(
                peer,
                train,
                TrainerSettings(idle_timeout=args.round_timeout),
                on_event=trainer_sink,
            )
            status, final_round, final_cid, reason = (
                tres.status,
                tres.final_round,
                tres.final_cid,
                tres.reason,
            )
        head = await node.head()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        _emit(
            {
                "event": "done",
                "role": args.role,
                "status": status,
                "final_round": final_round,
                "final_cid": final_cid,
                "local_head": list(head) if head else None,
                "reason": reason,
                "cpu": usage.ru_utime + usage.ru_stime,
                **memory(),
                **sampler.window(),
            }
        )
        if args.role == "aggregator":  # serve the final model until the trainers hold it
            await trio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)
        return 0 if status == "complete" else 1


def main(argv: Sequence[str] | None = None) -> int:
    from fedstore.errors import FedstoreError
    from fedstore.logsetup import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    logging.getLogger("libp2p").setLevel(logging.ERROR)
    try:
        return trio.run(_run, args)
    except KeyboardInterrupt:
        return 130
    except (Exception, BaseExceptionGroup) as exc:
        found = _first_error(exc, FedstoreError) or exc
        logging.getLogger(__name__).error("worker failed", exc_info=exc)
        _emit({"event": "error", "message": f"{type(found).__name__}: {found}"})
        return 1


def _first_error(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first ``kind`` inside ``exc`` (possibly nested in exception groups)."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            found = _first_error(sub, kind)
            if found is not None:
                return found
    return None


if __name__ == "__main__":
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    sys.exit(main())
