"""The catalog locked by another process: wait, then a clear CatalogError; no data lost.

A separate Python process opens the node's ``catalog.sqlite`` and holds an
exclusive write transaction (``BEGIN EXCLUSIVE``, with a row of its own that
it never commits). While it holds the lock, a save must wait for the busy
timeout, then fail with a CatalogError that says what happened, and leave no
checkpoint file behind; reads keep working (WAL). Once the holder lets go
(or is SIGKILLed) the same save succeeds and nothing else changed.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

import fedstore.catalog.engine as engine_mod
from fedstore.errors import CatalogError
from fedstore.store import LocalStore

pytestmark = [pytest.mark.multiprocess]

BUSY_MS = 600

_HOLDER = """
import sqlite3, sys
con = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
con.execute("BEGIN EXCLUSIVE")
con.execute(
    "INSERT INTO peers (peer_id, addrs, first_seen, last_seen) "
    "VALUES ('uncommitted-peer', '[]', '2020-01-01 00:00:00', '2020-01-01 00:00:00')"
)
print("LOCKED", flush=True)
if sys.stdin.readline().strip() == "commit":
    con.execute("COMMIT")
else:
    con.execute("ROLLBACK")
print("RELEASED", flush=True)
"""


@contextmanager
def lock_holder(db: Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "LOCKED", line + (proc.stderr.read() if proc.stderr else "")
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def weights(seed: int) -> dict[str, np.ndarray]:
    return {"w": np.random.default_rng(seed).standard_normal((16, 16)).astype(np.float32)}


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalStore]:
    monkeypatch.setattr(engine_mod, "BUSY_TIMEOUT_MS", BUSY_MS)
    with LocalStore(tmp_path / "node") as s:
        yield s


def files(store: LocalStore) -> list[str]:
    return sorted(p.name for p in (store.dir / "rounds").iterdir()) + sorted(
        p.name for p in (store.dir / "tmp").iterdir()
    )


def test_save_waits_then_fails_clearly_and_leaves_nothing(store: LocalStore) -> None:
    first = store.save(1, weights(1))
    before = files(store)
    with lock_holder(store.catalog.path) as holder:
        # readers are not blocked by the writer (WAL)
        assert store.latest() == first and store.list_rounds() == [1]
        start = time.monotonic()
        with pytest.raises(CatalogError, match="busy") as exc:
            store.save(2, weights(2))
        waited = time.monotonic() - start
        assert waited >= BUSY_MS / 1000 * 0.9, f"gave up after {waited:.2f} s, not the timeout"
        assert "another process" in str(exc.value) and "try again" in str(exc.value)
        assert files(store) == before  # the new checkpoint's file was removed again
        assert store.latest() == first
        assert holder.stdin is not None
        holder.stdin.write("rollback\n")
        holder.stdin.flush()
        assert holder.stdout is not None and holder.stdout.readline().strip() == "RELEASED"
    second = store.save(2, weights(2))
    assert store.list_rounds() == [1, 2] and store.latest() == second
    assert np.array_equal(store.load(1).arrays["w"], weights(1)["w"])
    assert np.array_equal(store.load(2).arrays["w"], weights(2)["w"])
    assert store.catalog.get_peer("uncommitted-peer") is None
    report = store.reconcile("full")
    assert not (report.missing or report.corrupt or report.orphans)


def test_lock_holder_killed_mid_transaction_loses_only_its_own_uncommitted_work(
    store: LocalStore,
) -> None:
    store.save(1, weights(1))
    store.catalog.upsert_peer("committed-peer", ["/ip4/127.0.0.1/tcp/1"])
    with lock_holder(store.catalog.path) as holder:
        holder.kill()  # SIGKILL while it holds the write lock
        holder.wait(timeout=10)
    rec = store.save(2, weights(2))  # the lock died with the process
    assert store.latest() == rec and store.list_rounds() == [1, 2]
    assert store.catalog.get_peer("committed-peer") is not None
    assert store.catalog.get_peer("uncommitted-peer") is None
    report = store.reconcile("full")
    assert report.checked == 2 and not (report.missing or report.corrupt or report.orphans)
