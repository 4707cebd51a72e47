"""SIGKILL in the middle of a sync and of an aggregation; a trainer that leaves mid-round.

Real processes, killed with SIGKILL (no cleanup handlers run). Afterwards:
no catalog row points at a missing or corrupt file, nothing that was
committed is lost, and a restarted process carries on to the same result
it would have reached without the fault. (SIGKILL during a plain save is
covered by test_store_crash.py and test_node_multiprocess.py.)
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
from _json_lines import JsonLinesProcess
from fedstore_filesystem import FilesystemBackend

from fedstore.catalog import Catalog
from fedstore.format import encode
from fedstore.node.driver import NodeProcess, python_env
from fedstore.store import LocalStore

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

TIMEOUT = 60.0


def assert_store_consistent(directory: Path) -> LocalStore:
    """Open the store as a restarted node would and check every row against its file."""
    store = LocalStore(directory, verify_on_open=None)
    report = store.reconcile("full")
    assert report.missing == [] and report.corrupt == [], report.lines()
    for rec in store.list_checkpoints():
        assert rec.status == "ok" and (directory / rec.path).is_file()
        store.load(rec.round)  # hashes to its CID and decodes
    assert list((directory / "tmp").iterdir()) == []  # partial writes were cleaned up
    return store


# -- sync ---------------------------------------------------------------------------------


def test_sigkill_during_sync_then_restart_completes_it(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    arrays = {f"layer{i}": rng.standard_normal((1024, 1024)).astype(np.float32) for i in range(6)}
    data = encode(arrays, {"round": "5"})  # ~22 MB stored: the sync takes a moment
    fsroot = tmp_path / "fsroot"
    cid = trio.run(FilesystemBackend(fsroot).add, data).cid
    node_dir = tmp_path / "node"
    with Catalog.open(node_dir) as cat:  # the node heard of round 5 before it went down
        cat.record_announcement(5, cid, "12D3KooWAnnouncingPeer", "model-cids")
    env = python_env(
        {"FEDSTORE_BACKENDS": "filesystem", "FEDSTORE_REANNOUNCE_INTERVAL": "0"}, root=fsroot
    )
    outcomes = []
    for delay in (0.05, 0.2, 0.4):
        with NodeProcess("n", ["--dir", str(node_dir)], env) as node:
            node.expect("PEER_ID", timeout=TIMEOUT)
            node.send("sync")
            time.sleep(delay)  # the fault's timing, not a wait for an event
            assert node.kill(signal.SIGKILL) == -signal.SIGKILL
            outcomes.append(node.values("SYNCED"))
        with assert_store_consistent(node_dir) as store:
            rounds = store.list_rounds()
            assert rounds in ([], [5])
            if rounds:
                assert store.get(5).cid == cid
                assert np.array_equal(store.load(5).arrays["layer3"], arrays["layer3"])

    with NodeProcess("n", ["--dir", str(node_dir)], env) as node:
        out = node.run("sync", timeout=TIMEOUT)
        assert [ln.value for ln in out if ln.key == "SYNCED"] == [f"5:{cid}"]
        loaded = node.run("checkpoint_load", timeout=TIMEOUT)
        assert [ln.value for ln in loaded if ln.key == "LOADED"][0].startswith(f"5:{cid}:")
    with assert_store_consistent(node_dir) as store:
        assert store.list_rounds() == [5]


# -- federation ---------------------------------------------------------------------------


def Worker(  # noqa: N802 - reads as the process it starts
    name: str, args: list[str], *, on_event: Callable[[dict[str, Any]], None] | None = None
) -> JsonLinesProcess:
    """A ``fedstore.demos.federation_worker`` process; its JSON event lines are collected."""
    argv = [sys.executable, "-m", "fedstore.demos.federation_worker", *args, "--log-level", "ERROR"]
    return JsonLinesProcess(name, argv, env=python_env(), timeout=TIMEOUT, on_event=on_event)


def test_trainer_leaves_mid_round_and_aggregator_sigkilled_while_aggregating(
    tmp_path: Path,
) -> None:
    fsroot = str(tmp_path / "fsroot")
    common = ["--fs-root", fsroot, "--trainers", "3"]
    agg_args = [
        "aggregator", "--data-dir", str(tmp_path / "agg"), *common, "--rounds", "3",
        "--quorum", "2", "--min-updates", "2", "--round-timeout", "45",
    ]  # fmt: skip
    workers: list[JsonLinesProcess] = []
    accepted_round2: list[str] = []

    def kill_when_aggregating(event: dict[str, Any]) -> None:
        # runs in the reader thread: the SIGKILL goes out the moment the quorum is reached
        if event.get("event") == "update_accepted" and event.get("round") == 2:
            accepted_round2.append(event["sender"])
            if len(accepted_round2) == 2:
                os.kill(agg.proc.pid, signal.SIGKILL)

    try:
        agg = Worker("aggregator", agg_args, on_event=kill_when_aggregating)
        workers.append(agg)
        addr = agg.event("ready")["addr"]

        def trainer(i: int) -> JsonLinesProcess:
            t = Worker(
                f"trainer-{i}",
                ["trainer", "--data-dir", str(tmp_path / f"t{i}"), *common, "--index", str(i),
                 "--bootstrap", addr, "--idle-timeout", "90"],
            )  # fmt: skip
            workers.append(t)
            return t

        # trainer 3 joins first and leaves in the middle of round 1, right after sending its
        # update. Trainers 1 and 2 start only then, so the round cannot close before it left
        # (the quorum is 2); it closes at its quorum (trainer 3's update counts only if it
        # reached the aggregator before the SIGKILL).
        t3 = trainer(3)
        t3.event("trainer_updated", round=1)
        t3.kill()
        t1, t2 = trainer(1), trainer(2)
        ids = {t.name: t.event("ready")["peer_id"] for t in (t1, t2, t3)}
        closed1 = agg.event("round_closed", round=1)
        assert len(closed1["participants"]) >= 2, closed1

        # the aggregator is SIGKILLed as round 2 reaches its quorum
        agg.proc.wait(timeout=TIMEOUT)
        assert agg.proc.returncode == -signal.SIGKILL and len(accepted_round2) == 2
        with assert_store_consistent(tmp_path / "agg") as store:
            rounds = store.list_rounds()
            assert rounds in ([0, 1], [0, 1, 2]), rounds
            assert store.get(1).cid == closed1["cid"]

        # restarted with the same data directory: resumes from its head and finishes
        agg2 = Worker(
            "aggregator-2",
            [*agg_args, *(a for t in (t1, t2) for a in ("--bootstrap", t.event("ready")["addr"]))],
        )
        workers.append(agg2)
        assert agg2.event("ready")["peer_id"] == agg.event("ready")["peer_id"]
        first = agg2.event("round_opened")
        assert first["round"] == rounds[-1] + 1
        done = agg2.event("done")
        assert done["status"] == "complete" and done["final_round"] == 3, done
        for t in (t1, t2):
            tdone = t.event("done")
            assert tdone["status"] == "complete" and tdone["final_cid"] == done["final_cid"]
        later = [e for e in agg.events + agg2.events if e.get("event") == "round_closed"]
        assert [e["round"] for e in later if e["round"] > 1][-1] == 3
        assert all(ids["trainer-3"] not in e["participants"] for e in later if e["round"] > 1)
    finally:
        for w in workers:
            w.close()
    with assert_store_consistent(tmp_path / "agg") as store:
        assert store.list_rounds() == [0, 1, 2, 3]
        assert store.get(3).cid == done["final_cid"]
