"""Report directory: files, targets, catalog copy."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from fedstore.demos.federation_report import RoundRow, RunSummary, write_report


def _summary(final_acc: float, central: float, cids: dict[str, str]) -> RunSummary:
    rows = [
        RoundRow(
            r,
            2 if r < 3 else 3,
            {"accuracy": acc, "loss": 0.5},
            central,
            f"QmCid{r}",
            1000,
            1000 * r,
            0.1,
        )  # fmt: skip
        for r, acc in ((1, 0.6), (2, 0.8), (3, final_acc))
    ]
    return RunSummary(
        rounds=rows,
        strategy="fedavg",
        num_trainers=3,
        late_trainer=3,
        late_round=3,
        final_cid="QmCid3",
        peer_final_cids=cids,
        baseline_final=central,
        wall_seconds=12.0,
        rejections={"non_finite": 2},
        minimums={"accuracy": 0.90},
    )


def test_targets() -> None:
    same = {"aggregator": "QmCid3", "trainer-1": "QmCid3"}
    assert all(_summary(0.95, 0.97, same).targets().values())
    t = _summary(0.93, 0.97, same).targets()
    assert not t["within_0.03_of_baseline"] and t["final_accuracy_at_least_0.90"]
    t = _summary(0.85, 0.86, same).targets()
    assert not t["final_accuracy_at_least_0.90"] and t["within_0.03_of_baseline"]
    t = _summary(0.95, 0.96, {**same, "trainer-3": "QmOther"}).targets()
    assert not t["all_peers_same_final_cid"]
    assert not _summary(0.95, 0.96, {}).targets()["all_peers_same_final_cid"]


def test_write_report(tmp_path: Path) -> None:
    src = tmp_path / "catalog.sqlite"
    with sqlite3.connect(src) as db:
        db.execute("CREATE TABLE checkpoints (round INTEGER, cid TEXT)")
        db.execute("INSERT INTO checkpoints VALUES (3, 'QmCid3')")
    out = tmp_path / "report"
    summary = _summary(0.95, 0.96, {"aggregator": "QmCid3"})
    paths = write_report(out, summary, baseline_curve=[0.9, 0.95, 0.96], catalog=src)
    assert set(paths) == {"plot", "summary_json", "summary_md", "catalog"}
    assert paths["plot"].read_bytes()[:4] == b"\x89PNG"
    doc = json.loads(paths["summary_json"].read_text())
    assert doc["final_cid"] == "QmCid3" and doc["final_accuracy"] == 0.95
    assert doc["baseline_curve"] == [0.9, 0.95, 0.96]
    assert abs(doc["gap_to_baseline"] - 0.01) < 1e-9
    md = paths["summary_md"].read_text()
    assert "QmCid3" in md and "non_finite: 2" in md and "trainer 3 offline until round 3" in md
    with sqlite3.connect(paths["catalog"]) as db:
        assert db.execute("SELECT cid FROM checkpoints").fetchall() == [("QmCid3",)]
    # a missing catalog is not an error, just not copied
    again = write_report(tmp_path / "r2", summary, catalog=tmp_path / "nope.sqlite")
    assert "catalog" not in again
