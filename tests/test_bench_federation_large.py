"""``fedstore bench --only federation-large`` at a small size: the report's structure, one CID."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedstore.bench import BenchSizes, run_bench
from fedstore.bench.federation_large_bench import (
    NAME,
    LargeRun,
    critical_path,
    round_parts,
    verify_seconds,
)

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

TRAINER_STEPS = {"transfer", "store", "load", "train", "encode", "upload"}


def test_small_large_model_federation_reports_every_step_and_ends_on_one_cid(
    tmp_path: Path,
) -> None:
    sizes = BenchSizes.quick().with_overrides(
        {"federation_mb": "8", "federation_rounds": "2", "federation_trainers": "3"}
    )
    report = run_bench(sizes, only=[NAME], quick=True, workdir=tmp_path)
    assert report.failed == []
    (section,) = report.sections
    assert section.name == NAME and section.ok, section.error
    params = section.params
    assert params["rounds"] == 2 and params["trainers"] == 3 and params["backends"] == "bitswap"

    d = params["run"]
    run = LargeRun(d["model_mb"], d["rounds"], d["trainers"], d["seconds"], d["events"])
    assert sorted(run.events) == ["aggregator", "trainer1", "trainer2", "trainer3"]
    final = run.done("aggregator")
    assert final["status"] == "complete" and final["final_round"] == 2
    for t in run.trainer_names():  # every trainer ends on the aggregator's final CID, held locally
        done = run.done(t)
        assert done["status"] == "complete", done
        assert done["final_cid"] == run.final_cid
        assert done["local_head"] == [2, run.final_cid]
    assert params["trainers_on_final_cid"] is True

    for rnd in (1, 2):
        accepted = [
            e
            for e in run.events["aggregator"]
            if e.get("event") == "update_accepted" and e["round"] == rnd
        ]
        assert len(accepted) == 3 and all(e["by_cid"] for e in accepted)  # 8 MB: never inline
        for t in run.trainer_names():
            steps = {p["phase"] for p in run.phases(t) if p["round"] == rnd}
            assert steps == TRAINER_STEPS, (t, rnd, steps)
        agg = [p for p in run.phases("aggregator") if p["round"] == rnd]
        uploads = {
            p["cid"]
            for t in run.trainer_names()
            for p in run.phases(t)
            if p["round"] == rnd and p["phase"] == "upload"
        }
        assert {p["cid"] for p in agg if p["phase"] == "transfer"} == uploads
        assert [p["phase"] for p in agg if p["phase"] in ("aggregate", "save")] == [
            "aggregate",
            "save",
        ]
        assert len(verify_seconds(run, rnd)) == 3
        parts = round_parts(run, rnd)
        assert all(v >= 0 for v in parts.values()) and parts["trainer transfer"] > 0
        assert critical_path(run, rnd) > 0
        for p in agg:
            assert p["end"] >= p["start"]

    rows = {(r.measure, r.variant): r for r in section.rows}
    timing = "round time (median over rounds)"
    assert (timing, "round, aggregator open → closed") in rows
    assert rows[timing, "round, aggregator open → closed"].target is not None
    for part in (
        "trainer transfer",
        "trainer train",
        "aggregator transfer",
        "aggregator verify",
        "aggregator aggregate",
        "aggregator save",
    ):
        assert (timing, f"of which {part}") in rows
    memory = "peak resident set (VmHWM)"
    for name in run.events:
        row = rows[memory, name]
        assert row.target is not None and row.value > 8  # MiB: at least the model
        assert row.ratio == pytest.approx(row.value * 1024 * 1024 / 8e6)
