"""One host of tests/test_netns_federation.py: an aggregator or a trainer, through the Python API.

Run as a script inside a network namespace::

    python tests/_federation_host.py aggregator --dir D --listen /ip4/0.0.0.0/tcp/4001 --rounds 5
    python tests/_federation_host.py trainer --dir D --bootstrap ADDR --index 1

It prints one JSON object per line on stdout: ``{"event": "ready", "addr": ...}``
once the node listens, the federation's events (``round_opened``,
``round_closed``, ``trainer_synced``, ``trainer_updated`` ...) as they
happen, and ``{"event": "result", ...}`` at the end. SIGTERM stops it
cleanly (``{"event": "stopped"}``, exit status 0).

The model is a toy with a large tensor (1 MB of float32, above the inline
limit, so updates travel by CID like the global models: both over bitswap,
the only backend): trainer *i* pulls the weights toward its own target, and
each round's training takes 2 s.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from dataclasses import asdict, is_dataclass
from typing import Any

import numpy as np
import trio

from fedstore.federation import api
from fedstore.federation.events import Event, event_dict

SIZE = 250_000  # float32 elements: 1 MB, above the 768 KiB inline limit
TRAIN_SECONDS = 2.0


def initial() -> dict[str, np.ndarray]:
    return {"w": np.zeros(SIZE, np.float32), "b": np.zeros(1, np.float32)}


def make_train(index: int) -> api.TrainFn:
    target = np.random.default_rng(index).standard_normal(SIZE).astype(np.float32)

    def train(
        arrays: dict[str, np.ndarray], round: int, config: Any
    ) -> tuple[dict[str, np.ndarray], int, dict[str, float]]:
        time.sleep(TRAIN_SECONDS)  # "training" takes a moment: a window the test uses
        w = arrays["w"] + np.float32(0.5) * (target - arrays["w"])
        loss = float(np.mean((w - target) ** 2))
        return {"w": w.astype(np.float32), "b": arrays["b"] + 1}, 100 + index, {"loss": loss}

    return train


def emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def on_event(event: Event) -> None:
    emit({"event": event.kind, **{k: v for k, v in event_dict(event).items() if k != "kind"}})


def _result(result: object) -> dict[str, Any]:
    d = asdict(result) if is_dataclass(result) and not isinstance(result, type) else {}
    return {"event": "result", **{k: v for k, v in d.items() if k != "history"}}


async def main(args: argparse.Namespace) -> None:
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for _ in signals:
                    emit({"event": "stopped"})
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(stop_on_signal)
            ready = lambda addr: emit({"event": "ready", "addr": addr})  # noqa: E731
            if args.role == "aggregator":
                result: object = await api.aggregate(
                    initial(),
                    rounds=args.rounds,
                    quorum=2,
                    min_updates=2,
                    round_timeout=60,
                    data_dir=args.dir,
                    backends=["bitswap"],
                    listen=args.listen,
                    on_ready=ready,
                    on_event=on_event,
                )
            else:
                result = await api.train(
                    make_train(args.index),
                    data_dir=args.dir,
                    bootstrap=[args.bootstrap],
                    backends=["bitswap"],
                    listen=args.listen,
                    idle_timeout=90,
                    on_event=on_event,
                )
            emit(_result(result))
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    import os

    from fedstore.logsetup import setup_logging

    setup_logging(os.environ.get("FEDSTORE_TEST_LOG_LEVEL", "WARNING"))
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["aggregator", "trainer"])
    parser.add_argument("--dir", required=True)
    parser.add_argument("--listen", default="/ip4/0.0.0.0/tcp/4001")
    parser.add_argument("--bootstrap")
    parser.add_argument("--index", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    trio.run(main, parser.parse_args())
    sys.exit(0)
