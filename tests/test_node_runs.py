"""The catalog remembers each node run (``node_runs``): its chain, role, addresses, start and stop.

``fedstore pins retry`` without ``--backends`` retries with the chain the
node last ran with on that data directory, not with whatever the shell's
environment would pick; backends that only work inside a node (bitswap) are
left out with a note.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedstore.catalog import Catalog
from fedstore.config import NodeConfig
from fedstore.node import open_node

pytestmark = [pytest.mark.slow]


def _config(tmp_path: Path, backends: tuple[str, ...]) -> NodeConfig:
    return NodeConfig(
        role="bootstrap",
        data_dir=tmp_path / "node",
        backends=backends,
        reannounce_interval=0,
        settings={"FEDSTORE_FS_ROOT": str(tmp_path / "fsroot")},
    )


async def test_a_run_is_recorded_with_its_chain_and_its_clean_stop(tmp_path: Path) -> None:
    cfg = _config(tmp_path, ("filesystem", "bitswap"))
    async with open_node(cfg) as node:
        run = await node.catalog.last_node_run()
        assert run is not None and run.stopped_at is None  # running
        assert run.backends == ("filesystem", "bitswap")
        assert run.peer_id == node.peer_id and run.role == "bootstrap"
        assert run.addrs == tuple(node.addrs())
    async with open_node(cfg) as node:
        pass
    with Catalog.open(cfg.data_dir) as cat:
        runs = cat.node_runs()
    assert len(runs) == 2 and runs[0].id > runs[1].id
    assert all(r.stopped_at is not None and r.stopped_at >= r.started_at for r in runs)


def test_pins_retry_uses_the_chain_the_node_ran_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import trio

    from fedstore.cli import main

    cfg = _config(tmp_path, ("filesystem", "bitswap"))

    async def run_node() -> str:
        async with open_node(cfg) as node:
            arrays = {"w": np.arange(32, dtype=np.float32)}
            rec = await node.store.save(1, arrays)  # saved, never written through the chain
            return rec.cid

    cid = trio.run(run_node)
    # the shell's environment names a backend the node never used (and that is down)
    monkeypatch.setenv("FEDSTORE_BACKENDS", "kubo")
    monkeypatch.setenv("FEDSTORE_KUBO_API", "http://127.0.0.1:9")
    monkeypatch.setenv("FEDSTORE_FS_ROOT", str(tmp_path / "fsroot"))
    monkeypatch.chdir(tmp_path)
    assert main(["pins", "retry", "--dir", str(cfg.data_dir)]) == 0
    captured = capsys.readouterr()
    assert "the chain the node last ran with here: filesystem,bitswap" in captured.err
    assert "skipping backend bitswap" in captured.err
    assert f"{cid}  filesystem   pinned" in captured.out
    assert "kubo" not in captured.out
    assert any((tmp_path / "fsroot").rglob(cid))
