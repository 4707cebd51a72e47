"""`fedstore demo` end to end, shortened: 3 rounds, 3 trainer processes, trainer 3 joins late."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


def test_short_federation_demo(tmp_path: Path) -> None:
    out = tmp_path / "report"
    env = dict(os.environ, COLUMNS="200")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedstore",
            "demo",
            "--rounds",
            "3",
            "--trainers",
            "3",
            "--late-trainer",
            "3",
            "--late-round",
            "3",
            "--plain",
            "--out",
            str(out),
            "--timeout",
            "150",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "trainer 3 comes online" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete"
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert [r["participants"] for r in rounds] == [2, 2, 3]
    # the model learns, and every peer's own head is the aggregator's final CID
    assert rounds[-1]["accuracy"] > rounds[0]["accuracy"] > 0.3
    final = summary["final_cid"]
    assert final == rounds[-1]["cid"]
    assert summary["peer_final_cids"] == {
        name: final for name in ("aggregator", "trainer-1", "trainer-2", "trainer-3")
    }
    assert summary["targets"]["all_peers_same_final_cid"]
    assert len(summary["baseline_curve"]) == 3
    assert summary["command"] == "demo" and summary["app"] == "digits"
    # report files: a PNG, a markdown summary, and the aggregator's catalog
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert final in (out / "summary.md").read_text()
    with sqlite3.connect(out / "catalog.sqlite") as db:
        rows = db.execute("SELECT round, cid FROM checkpoints ORDER BY round").fetchall()
        pins = db.execute("SELECT DISTINCT backend FROM pins").fetchall()
        losses = db.execute(
            "SELECT round, cid, participants, value FROM round_metrics "
            "WHERE source = 'trainers' AND name = 'train_loss' ORDER BY round"
        ).fetchall()
    assert rows[-1] == (3, final)
    assert [r[0] for r in rows] == [0, 1, 2, 3]
    assert ("filesystem",) in pins
    # the trainers' losses, combined per round, as the catalog stored them and the report shows
    assert [(r, c, p) for r, c, p, _ in losses] == [
        (r["round"], r["cid"], r["participants"]) for r in rounds
    ]
    assert [r["trainer_metrics"]["train_loss"] for r in rounds] == [v for *_, v in losses]
    assert "trainers: train_loss" in (out / "summary.md").read_text()
