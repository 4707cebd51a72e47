"""A save killed between the local write and the bitswap copy; pins the crash left undone.

Real processes, real SIGKILL (no cleanup handler runs). Each node has its
own data directory and its own filesystem root, as on separate machines, so
the only way a peer can fetch a checkpoint is bitswap.

* ``checkpoint_save`` of a large checkpoint is killed while bitswap's copy
  is being written (some blocks on disk, no "complete" mark). Restarted, the
  node resumes that round, so it must be able to serve it: it completes the
  copy on start, and a fresh peer syncs the round over bitswap.
* ``fedstore pins retry`` treats a local checkpoint with no pin row (a node
  stopped between the local save and the chain's write) and a row left
  ``pending`` (a write interrupted) as failed, and stores them.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from _waiting import wait_until

from fedstore.catalog import Catalog
from fedstore.node.driver import NodeProcess, python_env
from fedstore.store import LocalStore

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

TIMEOUT = 90.0


def node_env(tmp_path: Path, name: str) -> dict[str, str]:
    return python_env(
        {"FEDSTORE_BACKENDS": "filesystem,bitswap", "FEDSTORE_REANNOUNCE_INTERVAL": "0"},
        root=tmp_path / f"{name}-fsroot",
    )


def block_files(data_dir: Path) -> list[Path]:
    objects = data_dir / "blocks" / "objects"
    if not objects.is_dir():
        return []
    return [f for d in objects.iterdir() if d.is_dir() for f in d.iterdir()]


def wait_for_first_block(data_dir: Path, deadline: float) -> None:
    """Return as soon as bitswap's copy has put a block on disk (bounded by *deadline*)."""
    wait_until(
        lambda: block_files(data_dir),
        "the bitswap copy's first block",
        timeout=max(0.0, deadline - time.monotonic()),
        interval=0.002,
    )


def test_sigkill_mid_bitswap_copy_then_restart_serves_the_round(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    weights = tmp_path / "big.npz"
    arrays = {f"layer{i}": rng.standard_normal((2048, 2048)).astype(np.float32) for i in range(4)}
    np.savez(weights, **arrays)  # 64 MiB of incompressible floats: the copy takes a while
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    env_a = node_env(tmp_path, "a")

    with NodeProcess("a", ["--dir", str(a_dir)], env_a) as a:
        a.expect("PEER_ID", timeout=TIMEOUT)
        a.send(f"checkpoint_save 1 {weights}")
        a.expect("SAVED", timeout=TIMEOUT)
        wait_for_first_block(a_dir, time.monotonic() + TIMEOUT)
        assert a.kill(signal.SIGKILL) == -signal.SIGKILL

    # the fault as the issue describes it: a round saved, its bitswap copy partial
    roots = a_dir / "blocks" / "roots"
    assert not roots.is_dir() or list(roots.iterdir()) == [], "the copy finished before the kill"
    with Catalog.open(a_dir) as cat:
        (rec,) = cat.list_checkpoints()
        cid = rec.cid
        assert {p.backend: p.state for p in cat.pins_for(cid)}.get("bitswap") != "pinned"

    with NodeProcess("a", ["--dir", str(a_dir)], env_a) as a:
        assert a.expect("RESUMED", timeout=TIMEOUT) == "1"
        addr = a.expect("LISTENING", lambda v: "/ip4/127.0.0.1/" in v, timeout=TIMEOUT)
        with Catalog.open(a_dir) as cat:
            assert {p.backend: p.state for p in cat.pins_for(cid)}["bitswap"] == "pinned"
        env_b = node_env(tmp_path, "b")
        with NodeProcess("b", ["--dir", str(b_dir), "--bootstrap", addr], env_b) as b:
            b.expect("CONNECTED", timeout=TIMEOUT)
            out = b.run("sync", timeout=TIMEOUT)
            assert [ln.value for ln in out if ln.key == "SYNCED"] == [f"1:{cid}"], out
    with LocalStore(b_dir) as store:
        loaded = store.load(1)
        assert rec.cid == store.get(1).cid
        assert np.array_equal(loaded.arrays["layer2"], arrays["layer2"])
    # separate roots: B's filesystem backend never held the CID, so bitswap served it
    assert not any((tmp_path / "b-fsroot").rglob(cid))


@pytest.mark.parametrize("left", ["no row", "pending row"])
def test_pins_retry_treats_missing_and_pending_rows_as_failed(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    left: str,
) -> None:
    from fedstore.cli import main

    node_dir, fsroot = tmp_path / "node", tmp_path / "fsroot"
    rng = np.random.default_rng(2)
    with LocalStore(node_dir) as store:  # saved locally; the chain's write never happened
        rec = store.save(4, {"w": rng.standard_normal((64, 64)).astype(np.float32)})
    if left == "pending row":
        with Catalog.open(node_dir) as cat:
            cat.set_pin(rec.cid, "filesystem", "pending")
    monkeypatch.setenv("FEDSTORE_BACKENDS", "filesystem")
    monkeypatch.setenv("FEDSTORE_FS_ROOT", str(fsroot))
    monkeypatch.chdir(tmp_path)

    assert main(["pins", "retry", "--dir", str(node_dir)]) == 0
    out = capsys.readouterr().out
    assert f"{rec.cid}  filesystem   pinned" in out, out
    assert any(fsroot.rglob(rec.cid))
    with Catalog.open(node_dir) as cat:
        assert [(p.backend, p.state) for p in cat.pins_for(rec.cid)] == [("filesystem", "pinned")]

    # nothing left to do: a second retry changes nothing
    assert main(["pins", "retry", "--dir", str(node_dir)]) == 0
    assert "nothing to retry" in capsys.readouterr().err
    assert main(["pins", "ls", "--dir", str(node_dir), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["backend"], r["state"]) for r in rows] == [("filesystem", "pinned")]
