"""A shrunken swarm run: an aggregator and two trainers in network namespaces, capped links.

Each node is a ``fedstore node`` process with ``--backends bitswap`` in its
own namespace (own data directory and filesystem root); every link is capped
at 25 Mbit/s each way with ``tc tbf``; the trainers are connected to the
aggregator and to each other (:mod:`fedstore.bench.swarm_bench`, the
``fedstore bench --only swarm`` machinery). Both trainers fetch a new model at
the same moment: both must end with the verified model, byte for byte the
aggregator's file, and they must have served each other blocks (the swarm).
Skipped with the reason when namespaces cannot be built (not root, no tc).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fedstore.bench.common import MB
from fedstore.bench.swarm_bench import swarm_lab
from fedstore.netns import unavailable_reason

pytestmark = [pytest.mark.netns, pytest.mark.slow]

MODEL_BYTES = 4 * MB


def test_two_trainers_fetch_at_once_and_serve_each_other(tmp_path: Path) -> None:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with swarm_lab(tmp_path, trainers=2) as lab:
        lab.mesh()
        cid, stored = lab.new_model(MODEL_BYTES)
        run = lab.fetch_at_once(2, cid, stored, "fedstore")
        print(
            f"2 trainers, {stored / MB:.1f} MB: {run.seconds:.2f} s; aggregator sent "
            f"{run.aggregator_bytes / stored:.2f}x the model; blocks from the aggregator "
            f"{run.blocks_from_aggregator()}, from trainers {run.blocks_from_trainers()}"
        )
        (original,) = (tmp_path / "agg" / "rounds").glob(f"round_*_{cid}.*")
        for trainer in ("t1", "t2"):
            (copy,) = (tmp_path / trainer / "rounds").glob(f"round_*_{cid}.*")
            assert copy.read_bytes() == original.read_bytes(), trainer
        assert all(run.sources.values()), run.sources  # both logged their fetch
        names = {lab.agg_id: "agg", **{a.rsplit("/", 1)[1]: t.name for a, t in
                 zip(lab.addrs, lab.trainers, strict=True)}}  # fmt: skip
        by_name = {t: {names[p]: n for p, n in src.items()} for t, src in run.sources.items()}
        assert by_name["t1"].get("t2", 0) + by_name["t2"].get("t1", 0) >= 1, by_name
