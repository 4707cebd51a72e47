"""A federation across three hosts (Linux network namespaces), run with the commands a user
types: ``fedstore aggregate`` and ``fedstore train`` with the numpy example app
(``examples/numpy_linear/app.py``), surviving a killed trainer and a restarted aggregator.

    ns agg (10.208.0.1) ──veth──┐
    ns t1  (10.208.0.2) ──veth──┼── bridge
    ns t2  (10.208.0.3) ──veth──┘

Each host is its own process with its own data directory and filesystem root;
the only storage backend is bitswap, so every global model moves between hosts
over the (namespaced) network. The aggregator listens on 0.0.0.0 and the
trainers dial the address it printed (``--log-json`` events on stdout). The
story:

1. rounds 1-2 with both trainers;
2. trainer 1's host is killed (SIGKILL) as round 2 closes and restarted on the
   same data directory: the rounds that follow need its update (quorum 2 of 2
   trainers), so the federation goes on only once it has rejoined;
3. the aggregator is stopped with SIGTERM after round 4 (a clean stop: a
   ``stopped`` event, exit 0, the run's end in its catalog) and restarted: it
   resumes from its catalog at the round after the last one it recorded, the
   trainers reconnect by themselves, and the remaining rounds run;
4. every host ends on the same final CID, and holds that checkpoint, byte for
   byte, in its own data directory.

Skipped with the reason when namespaces cannot be built (not root, no ``ip``).
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from _json_lines import JsonLinesProcess

from fedstore.catalog import Catalog
from fedstore.netns import Lan, bridged_hosts, ns_argv, unavailable_reason
from fedstore.node.driver import python_env

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.multiprocess]

FEDSTORE = [sys.executable, "-m", "fedstore"]
APP = str(Path(__file__).resolve().parents[1] / "examples" / "numpy_linear" / "app.py") + ":app"
TIMEOUT = 60.0
ROUNDS = 12  # rounds take a fraction of a second: enough to stop the aggregator mid-run


@pytest.fixture(scope="module")
def lan() -> Iterator[Lan]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with bridged_hosts(["agg", "t1", "t2"], rate=None, subnet="10.208.0") as lan:
        yield lan


def closed(round_: int) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["event"] == "round_closed" and e["round"] == round_


def test_federation_across_hosts_survives_a_killed_trainer_and_a_restarted_aggregator(
    lan: Lan, tmp_path: Path
) -> None:
    started = time.monotonic()
    common = ["--app", APP, "--backends", "bitswap", "--log-json"]
    with ExitStack() as stack:

        def host(name: str, role: str, *argv: str) -> JsonLinesProcess:
            data = tmp_path / name / "data"
            env = python_env({"FEDSTORE_REANNOUNCE_INTERVAL": "2"}, root=data.parent / "fsroot")
            cmd = [*ns_argv(lan.namespaces[name]), *FEDSTORE, role, *common, *argv]
            h = JsonLinesProcess(name, [*cmd, "--dir", str(data)], env=env, timeout=TIMEOUT)
            stack.callback(h.close)
            return h

        def aggregator() -> JsonLinesProcess:
            listen = "/ip4/0.0.0.0/tcp/4001"
            return host("agg", "aggregate", "--rounds", str(ROUNDS), "--listen", listen)

        def trainer(index: int) -> JsonLinesProcess:
            where = ["--bootstrap", addr, "--listen", "/ip4/0.0.0.0/tcp/4001"]
            split = ["--trainer-index", str(index), "--trainers", "2"]
            return host(f"t{index}", "train", *where, *split)

        agg = aggregator()
        addr = agg.wait(lambda e: e["event"] == "ready", "ready")["addr"]
        assert addr.startswith(f"/ip4/{lan.addrs['agg']}/tcp/4001/p2p/")  # dialable, printed
        t1, t2 = trainer(1), trainer(2)

        # 1. two rounds with both trainers
        agg.wait(closed(2), "round 2 closed")
        assert {len(e["participants"]) for e in agg.events if e["event"] == "round_closed"} == {2}

        # 2. trainer 1's host dies and comes back on the same data directory
        t1.kill()
        killed_after = max(e["round"] for e in agg.events if e["event"] == "round_closed")
        t1 = trainer(1)
        rejoined = t1.wait(lambda e: e["event"] == "trainer_updated", "an update after the restart")
        agg.wait(closed(rejoined["round"]), f"round {rejoined['round']} closed")
        assert rejoined["round"] > 2
        assert all(
            len(e["participants"]) == 2
            for e in agg.events
            if e["event"] == "round_closed" and e["round"] > killed_after
        )

        # 3. the aggregator stops cleanly (SIGTERM) mid-run, and resumes from its catalog
        agg.wait(closed(rejoined["round"] + 1), "a round after the rejoin")
        assert agg.signal(signal.SIGTERM) == 0
        stop = agg.event("stopped")
        with Catalog.open(tmp_path / "agg" / "data") as cat:
            saved = cat.latest_round()
            assert cat.last_node_run().stopped_at is not None  # type: ignore[union-attr]
        assert saved is not None and rejoined["round"] < saved < ROUNDS
        assert stop["local_head"][0] == saved
        agg = aggregator()
        assert agg.wait(lambda e: e["event"] == "ready", "ready again")["addr"] == addr
        first = agg.wait(lambda e: e["event"] == "round_opened", "a round after the restart")
        assert first["round"] == saved + 1  # resumed from the catalog, not started over

        # 4. the end: one final CID everywhere, the same bytes on every host
        final = agg.event("done")
        assert final["status"] == "complete" and final["final_round"] == ROUNDS
        for t in (t1, t2):
            res = t.event("done")
            assert (res["status"], res["final_cid"]) == ("complete", final["final_cid"])
            assert res["local_head"] == [ROUNDS, final["final_cid"]]
        assert agg.proc.wait(timeout=TIMEOUT) == 0

    cid = final["final_cid"]
    copies = {name: list((tmp_path / name / "data" / "rounds").glob(f"round_*_{cid}.*"))
              for name in ("agg", "t1", "t2")}  # fmt: skip
    assert all(len(files) == 1 for files in copies.values()), copies
    blobs = {name: files[0].read_bytes() for name, files in copies.items()}
    assert blobs["t1"] == blobs["agg"] == blobs["t2"]
    for name in ("t1", "t2"):  # nothing came from a shared disk: separate roots, bitswap only
        assert not any((tmp_path / name / "fsroot").rglob(cid))
        with Catalog.open(tmp_path / name / "data") as cat:
            assert {r.backends for r in cat.node_runs()} == {("bitswap",)}
    print(f"federation across 3 hosts, {ROUNDS} rounds: {time.monotonic() - started:.1f} s")
