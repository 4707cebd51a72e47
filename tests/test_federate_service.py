"""``fedstore aggregate`` and ``fedstore train`` as services, on loopback: SIGTERM stops each
cleanly (exit 0, a ``stopped`` event, the run's end in the catalog, no traceback), and the same
command on the same data directory resumes from the catalog.

The numpy example app (``examples/numpy_linear/app.py``) with one trainer and
quorum 1; tests/test_netns_federation.py runs the same commands across
network-namespace hosts with a SIGKILLed trainer.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from _json_lines import JsonLinesProcess

from fedstore.catalog import Catalog
from fedstore.node.driver import python_env

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

APP = str(Path(__file__).resolve().parents[1] / "examples" / "numpy_linear" / "app.py") + ":app"
FEDSTORE = [sys.executable, "-m", "fedstore"]
ROUNDS = 40  # rounds take a fraction of a second: the stop lands mid-run


@pytest.fixture
def processes() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


def start(stack: ExitStack, tmp_path: Path, name: str, *argv: str) -> JsonLinesProcess:
    common = ["--app", APP, "--log-json", "--backends", "filesystem", "--dir", str(tmp_path / name)]
    env = python_env({"FEDSTORE_REANNOUNCE_INTERVAL": "1"}, root=tmp_path / "fsroot")
    proc = JsonLinesProcess(name, [*FEDSTORE, *argv, *common], env=env)
    stack.callback(proc.close)
    return proc


def assert_stopped(proc: JsonLinesProcess, data_dir: Path) -> list[object]:
    """Exit 0 on SIGTERM, a ``stopped`` event naming the catalog's head, the run's end kept."""
    assert proc.signal(signal.SIGTERM) == 0, proc.stderr_tail()
    assert "Traceback" not in proc.stderr_tail(), proc.stderr_tail()
    stopped = proc.event("stopped")
    with Catalog.open(data_dir) as cat:
        head = cat.latest_checkpoint()
        run = cat.last_node_run()
    assert run is not None and run.stopped_at is not None  # the run's end is recorded
    assert head is not None and stopped["local_head"] == [head.round, head.cid]
    return list(stopped["local_head"])


def test_sigterm_stops_aggregate_and_train_cleanly_and_the_same_commands_resume(
    tmp_path: Path, processes: ExitStack
) -> None:
    listen = ["--listen", "/ip4/127.0.0.1/tcp/0"]
    agg_argv = ["aggregate", "--rounds", str(ROUNDS), "--quorum", "1", *listen]
    agg = start(processes, tmp_path, "agg", *agg_argv)
    addr = agg.event("ready")["addr"]
    trainer = start(processes, tmp_path, "t1", "train", "--bootstrap", addr, *listen)
    agg.event("round_closed", round=2)

    saved, _cid = assert_stopped(agg, tmp_path / "agg")
    assert isinstance(saved, int) and 2 <= saved < ROUNDS
    trained, _ = assert_stopped(trainer, tmp_path / "t1")
    assert isinstance(trained, int) and trained <= saved  # it holds what it last fetched

    # the same commands again: the aggregator opens the round after its catalog's last one
    agg = start(processes, tmp_path, "agg", *agg_argv)
    addr_again = agg.event("ready")["addr"]
    assert addr_again.rsplit("/", 1)[1] == addr.rsplit("/", 1)[1]  # the same identity
    trainer = start(processes, tmp_path, "t1", "train", "--bootstrap", addr_again, *listen)
    assert agg.wait(lambda e: e.get("event") == "round_opened")["round"] == saved + 1
    done = agg.event("done")
    assert (done["status"], done["final_round"]) == ("complete", ROUNDS)
    tdone = trainer.event("done")
    assert (tdone["status"], tdone["final_cid"]) == ("complete", done["final_cid"])
    assert agg.proc.wait(timeout=60) == 0 and trainer.proc.wait(timeout=60) == 0
    with Catalog.open(tmp_path / "agg") as cat:
        assert len(cat.node_runs()) == 2  # two runs of one node, one catalog
