"""The aggregator's round close at 100 MB: one encode per global model, against the old two.

Until the strategy rework, the aggregator's per-round step computed the
aggregate *and encoded it* (``aggregate_round`` returned the checkpoint
bytes), threw those bytes away, and ``save_global`` encoded the same arrays
again. Now :func:`fedstore.federation.global_model.aggregate_round` returns
arrays and metadata and :func:`fedstore.federation.aggregator.publish_round`
saves them, encoding once.

Both variants run here side by side, each in a fresh process (so peak RSS is
the step's own), alternating, ``--runs`` times each:

* ``new``: ``aggregate_round`` + ``publish_round`` into a real local store
  and catalog (what ``lead_rounds`` does per round, minus the network);
* ``old``: the same plus the discarded ``encode_global`` the old
  ``aggregate_round`` did.

Printed: median wall time of the step and median peak RSS growth during it
(``VmHWM`` after resetting it, minus ``VmRSS`` before), and the differences.

    python benchmarks/bench_aggregate_encode.py [--mb 100] [--trainers 3] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def child(variant: str, mb: int, trainers: int, seed: int) -> dict[str, float]:
    import numpy as np
    import trio

    from fedstore.federation.aggregator import publish_round
    from fedstore.federation.global_model import aggregate_round, encode_global
    from fedstore.federation.strategies import FedAvg, RoundContext, Update
    from fedstore.federation.transport import GlobalModel, RoundMetrics, SavedModel
    from fedstore.store import AsyncLocalStore

    rng = np.random.default_rng(seed)
    n = mb * (1 << 20) // 4 // 4
    base = {f"layer{i}.weight": rng.standard_normal(n, dtype=np.float32) for i in range(4)}
    updates = [
        Update(
            f"trainer-{t}",
            100 + t,
            {k: (v + rng.standard_normal(n, dtype=np.float32) * 0.01) for k, v in base.items()},
        )
        for t in range(trainers)
    ]

    class StorePeer:
        """save_global and record_round as a node does them, without the network."""

        def __init__(self, store: AsyncLocalStore) -> None:
            self.store = store

        async def save_global(
            self, round: int, arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str]
        ) -> SavedModel:
            rec = await self.store.save(round, arrays, metadata)
            return SavedModel(rec.round, rec.cid, rec.stored_size)

        async def put_blob(self, data: bytes) -> str:
            raise AssertionError("FedAvg has no state")

        async def record_round(self, metrics: RoundMetrics) -> None:
            await self.store.catalog.record_round_metrics(
                metrics.round,
                metrics.cid,
                participants=len(metrics.participants),
                num_samples=metrics.num_samples,
                metrics=metrics.metrics,
            )

        async def load_global(self, round: int, cid: str) -> GlobalModel:
            raise NotImplementedError

    async def step(tmp: Path) -> dict[str, float]:
        store = await AsyncLocalStore.open(tmp)
        try:
            peer = StorePeer(store)
            ctx = RoundContext(1, "bafkqaaa", base)
            rss0 = _status("VmRSS")
            _reset_peak()
            t0 = time.perf_counter()
            outcome = await trio.to_thread.run_sync(
                lambda: aggregate_round(FedAvg(), ctx, updates, extra={"bench": "1"})
            )
            discarded = b""
            if variant == "old":
                # the old aggregate_round also encoded; the aggregator bound the bytes to
                # ``_`` (alive until the loop's next round) and saved the arrays again
                discarded = await trio.to_thread.run_sync(encode_global, outcome)
            rec, _ = await publish_round(peer, 1, outcome)  # type: ignore[arg-type]
            seconds = time.perf_counter() - t0
            del discarded
            peak = _status("VmHWM") - rss0
            return {"seconds": seconds, "peak_bytes": peak, "stored_bytes": rec.size}
        finally:
            await store.aclose()

    with tempfile.TemporaryDirectory(prefix="fedstore-bench-agg-") as tmp:
        return trio.run(step, Path(tmp))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=100, help="model size in MB (default 100)")
    ap.add_argument("--trainers", type=int, default=3, help="updates per round (default 3)")
    ap.add_argument("--runs", type=int, default=5, help="runs per variant (default 5)")
    ap.add_argument("--child", choices=["old", "new"], help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.mb, args.trainers, args.seed)))
        return 0
    results: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    for i in range(args.runs):
        for variant in ("old", "new") if i % 2 == 0 else ("new", "old"):
            proc = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    variant,
                    "--mb",
                    str(args.mb),
                    "--trainers",
                    str(args.trainers),
                    "--seed",
                    str(i),
                ],
                capture_output=True,
                text=True,
                check=True,
                env={"OPENBLAS_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
            )
            results[variant].append(json.loads(proc.stdout))
    med = {
        v: {k: statistics.median(r[k] for r in rs) for k in ("seconds", "peak_bytes")}
        for v, rs in results.items()
    }
    mib = 1 << 20
    print(
        f"aggregator round close, {args.mb} MB model, {args.trainers} updates, FedAvg, "
        f"median of {args.runs} runs each (fresh process per run)"
    )
    print(f"{'variant':<28}{'time':>10}{'peak RSS growth':>18}")
    for v, label in (("old", "old: aggregate+encode, save"), ("new", "new: aggregate, save")):
        print(
            f"{label:<28}{med[v]['seconds'] * 1000:>8.0f}ms{med[v]['peak_bytes'] / mib:>14.0f} MiB"
        )
    dt = (med["old"]["seconds"] - med["new"]["seconds"]) * 1000
    dm = (med["old"]["peak_bytes"] - med["new"]["peak_bytes"]) / mib
    ratio = med["old"]["seconds"] / med["new"]["seconds"]
    print(f"saved per round: {dt:.0f} ms ({ratio:.2f}x), {dm:.0f} MiB of peak memory")
    return 0


if __name__ == "__main__":
    sys.exit(main())
