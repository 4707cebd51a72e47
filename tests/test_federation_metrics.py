"""Round metrics in the catalog: writes through the catalog API, the round_summary view,
the async facade, and the demo report that reads them back read-only."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fedstore.catalog import AsyncCatalog, Catalog, copy_read_only, read_only_query
from fedstore.demos.federation_report import (
    RoundRow,
    RunSummary,
    stored_trainer_metrics,
    write_report,
)
from fedstore.errors import CatalogError
from fedstore.ipld.cid import cid_of_bytes

CID1 = cid_of_bytes(b"round 1")
CID2 = cid_of_bytes(b"round 2")


def _record(cat: Catalog) -> None:
    cat.record_round_metrics(
        1,
        CID1,
        participants=2,
        num_samples=300,
        metrics={"trainers": {"train_loss": 0.75, "acc": 0.5}, "evaluate": {"accuracy": 0.8}},
    )
    cat.record_round_metrics(
        2,
        CID2,
        participants=3,
        num_samples=450,
        metrics={"trainers": {"train_loss": 0.5}, "strategy": {"step_norm": 0.125}},
        recorded_at=datetime(2027, 1, 2, 3, 4, 5, tzinfo=UTC),
    )


def test_record_and_read_round_metrics(tmp_path: Path) -> None:
    with Catalog.open(tmp_path) as cat:
        _record(cat)
        rows = cat.round_metrics()
        assert [(r.round, r.source, r.name, r.value) for r in rows] == [
            (1, "evaluate", "accuracy", 0.8),
            (1, "trainers", "acc", 0.5),
            (1, "trainers", "train_loss", 0.75),
            (2, "strategy", "step_norm", 0.125),
            (2, "trainers", "train_loss", 0.5),
        ]
        assert {(r.participants, r.num_samples) for r in rows if r.round == 2} == {(3, 450)}
        assert rows[-1].recorded_at == datetime(2027, 1, 2, 3, 4, 5, tzinfo=UTC)
        assert [r.name for r in cat.round_metrics(round=1, source="trainers")] == [
            "acc",
            "train_loss",
        ]
        # recording a round again replaces its values (a restarted aggregator re-closing it)
        n = cat.record_round_metrics(
            1, CID1, participants=2, num_samples=300, metrics={"trainers": {"train_loss": 0.7}}
        )
        assert n == 1
        again = cat.round_metrics(round=1, source="trainers")
        assert [(r.name, r.value) for r in again] == [("acc", 0.5), ("train_loss", 0.7)]
        assert cat.record_round_metrics(3, CID2, participants=0, num_samples=0, metrics={}) == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"metrics": {"server": {"x": 1.0}}}, "source must be one of trainers, evaluate, strategy"),
        ({"metrics": {"trainers": {"loss": float("nan")}}}, "trainers/loss is not finite"),
        ({"metrics": {"trainers": {"": 1.0}}}, "metric name must be 1-64 characters"),
        ({"metrics": {"trainers": {"x" * 65: 1.0}}}, "metric name must be 1-64 characters"),
        ({"participants": -1, "metrics": {"trainers": {"a": 1.0}}}, "must be >= 0"),
    ],
)
def test_bad_metrics_are_refused_and_nothing_is_written(
    tmp_path: Path, kwargs: dict[str, object], match: str
) -> None:
    args: dict[str, object] = {"participants": 1, "num_samples": 1}
    args.update(kwargs)
    with Catalog.open(tmp_path) as cat:
        with pytest.raises(ValueError, match=match):
            # a good source next to the bad one: all or nothing
            good = {"evaluate": {"ok": 1.0}}
            metrics = {**good, **args.pop("metrics")}  # type: ignore[dict-item]
            cat.record_round_metrics(1, CID1, metrics=metrics, **args)  # type: ignore[arg-type]
        assert cat.round_metrics() == []
        with pytest.raises(ValueError, match="source must be one of"):
            cat.round_metrics(source="server")


def test_round_summary_view(tmp_path: Path) -> None:
    with Catalog.open(tmp_path) as cat:
        _record(cat)
        cat.add_checkpoint(
            2,
            CID2,
            cid_version=0,
            codec="fsck1+zstd",
            raw_size=1,
            stored_size=1,
            path="rounds/x.fsck",
        )
    columns, rows = read_only_query(tmp_path / "catalog.sqlite", "SELECT * FROM round_summary")
    assert columns == (
        "round",
        "cid",
        "participants",
        "num_samples",
        "trainer_metrics",
        "evaluate_metrics",
        "strategy_metrics",
        "stored_locally",
        "recorded_at",
    )
    assert [r[:8] for r in rows] == [
        (2, CID2, 3, 450, "train_loss=0.5", None, "step_norm=0.125", 1),
        (1, CID1, 2, 300, "acc=0.5, train_loss=0.75", "accuracy=0.8", None, 0),
    ]
    assert rows[0][8] == "2027-01-02 03:04:05.000000"


async def test_async_facade(tmp_path: Path) -> None:
    acat = await AsyncCatalog.open(tmp_path)
    async with acat:
        n = await acat.record_round_metrics(
            4, CID1, participants=1, num_samples=9, metrics={"evaluate": {"accuracy": 0.25}}
        )
        assert n == 1
        rows = await acat.round_metrics(round=4)
        assert [(r.source, r.name, r.value, r.num_samples) for r in rows] == [
            ("evaluate", "accuracy", 0.25, 9)
        ]


# -- the demo report reads them back, read-only ---------------------------------------------


def _summary() -> RunSummary:
    rows = [
        RoundRow(r, 2, {"accuracy": acc, "loss": 0.5}, 0.9, cid, 1000, 1000 * r, 0.1)
        for r, acc, cid in ((1, 0.6, CID1), (2, 0.8, CID2))
    ]
    return RunSummary(
        rounds=rows,
        strategy="fedavg",
        num_trainers=2,
        late_trainer=None,
        late_round=None,
        final_cid=CID2,
        peer_final_cids={"aggregator": CID2},
        baseline_final=0.9,
        wall_seconds=5.0,
    )


def test_report_shows_the_stored_trainer_metrics(tmp_path: Path) -> None:
    with Catalog.open(tmp_path / "agg") as cat:
        _record(cat)
    # a directory name a raw, unquoted file: URI would misread
    src_dir = tmp_path / "agg dir?mode=rw#1"
    (tmp_path / "agg").rename(src_dir)
    db = src_dir / "catalog.sqlite"
    before = db.read_bytes()
    paths = write_report(tmp_path / "report", _summary(), catalog=db)
    assert db.read_bytes() == before, "the report must not write to the aggregator's catalog"
    doc = json.loads(paths["summary_json"].read_text())
    assert [r["trainer_metrics"] for r in doc["rounds"]] == [
        {"acc": 0.5, "train_loss": 0.75},
        {"train_loss": 0.5},
    ]
    md = paths["summary_md"].read_text()
    columns = ["round", "participants", "accuracy", "loss", "baseline", "trainers: acc"]
    assert "| " + " | ".join([*columns, "trainers: train_loss"]) + " |" in md
    assert f"| 1 | 2 | 0.6000 | 0.5000 | 0.9000 | 0.5000 | 0.7500 | `{CID1}` |" in md
    assert f"| 2 | 2 | 0.8000 | 0.5000 | 0.9000 | - | 0.5000 | `{CID2}` |" in md
    # the copy is a whole, readable catalog
    with Catalog.open(paths["catalog"]) as copy:
        assert len(copy.round_metrics()) == 5


def test_report_copy_refuses_to_write_and_tolerates_old_catalogs(tmp_path: Path) -> None:
    import sqlite3

    old = tmp_path / "old.sqlite"
    with sqlite3.connect(old) as db:
        db.execute("CREATE TABLE checkpoints (round INTEGER, cid TEXT)")
    assert stored_trainer_metrics(old) == {}  # no round_metrics table: no metrics, no error
    with pytest.raises(CatalogError, match="no catalog at"):
        copy_read_only(tmp_path / "missing.sqlite", tmp_path / "x.sqlite")
    if os.geteuid() != 0:  # root ignores file modes
        locked = tmp_path / "locked.sqlite"
        locked.write_bytes(old.read_bytes())
        locked.chmod(0o000)
        try:
            with pytest.raises(CatalogError, match="cannot copy catalog"):
                copy_read_only(locked, tmp_path / "y.sqlite")
        finally:
            locked.chmod(0o600)
        assert not (tmp_path / "y.sqlite").exists()
