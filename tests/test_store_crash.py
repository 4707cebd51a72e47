"""Crash safety: SIGKILL a real process in the middle of saves, then reopen the store.

After every kill: no catalog row points at a missing or torn file, every save
the child reported as finished is still there, the latest checkpoint loads
and has the right content, and reconcile cleans up temp files.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from fedstore.store import LocalStore

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

REPO = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    from fedstore.store import LocalStore

    directory, start, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]

    def weights(r):
        rng = np.random.default_rng(r)
        return {"fc.weight": rng.normal(size=(256, 256)).astype(np.float32),
                "fc.bias": rng.normal(size=(256,)).astype(np.float32)}

    store = LocalStore(directory, verify_on_open=None)
    die = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
    r = start
    while True:
        if r == start + 1 and mode == "before-fsync":      # temp file written, not renamed
            os.fsync = die
        if r == start + 1 and mode == "before-commit":     # file renamed, row not committed
            store.catalog.add_checkpoint = die
        store.save(r, weights(r), {"round": str(r)})
        print("saved", r, flush=True)
        r += 1
    """
)


def weights(r: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(r)
    return {
        "fc.weight": rng.normal(size=(256, 256)).astype(np.float32),
        "fc.bias": rng.normal(size=(256,)).astype(np.float32),
    }


def start_child(directory: Path, start: int, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(directory), str(start), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def wait_for_line(proc: subprocess.Popen[str], timeout: float = 60.0) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "child did not report a save in time"
    line = proc.stdout.readline()
    assert line, f"child exited early: {proc.communicate()[1]}"
    return line


def reported_saves(first: str, rest: str) -> list[int]:
    lines = (first + rest).splitlines()
    return [int(line.split()[1]) for line in lines if line.startswith("saved")]


def check_after_crash(directory: Path, reported: list[int]) -> int:
    """Reopen and check the invariants; return the latest round."""
    with LocalStore(directory, verify_on_open="full") as store:
        report = store.last_reconcile
        assert report is not None
        assert report.missing == [] and report.corrupt == [], report
        assert list((directory / "tmp").iterdir()) == []
        rows = store.list_checkpoints()
        assert all(r.status == "ok" for r in rows)
        assert all((directory / r.path).stat().st_size == r.stored_size for r in rows)
        latest = store.latest()
        assert latest is not None
        if reported:
            assert latest.round >= max(reported), "a save reported as done was lost"
            assert set(reported) <= set(store.list_rounds())
        ckpt = store.load()
        for k, v in weights(latest.round).items():
            np.testing.assert_array_equal(ckpt.arrays[k], v)
        assert ckpt.metadata == {"round": str(latest.round)}
        return latest.round


def test_kill_at_deterministic_points(tmp_path: Path) -> None:
    with LocalStore(tmp_path) as store:
        store.save(0, weights(0), {"round": "0"})
    # killed after the temp file is written, before the rename
    proc = start_child(tmp_path, 1, "before-fsync")
    first = wait_for_line(proc)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert reported_saves(first, rest) == [1]
    assert len(list((tmp_path / "tmp").iterdir())) == 1  # the partial write
    assert check_after_crash(tmp_path, [1]) == 1
    # killed after the rename, before the catalog row: an orphan, never a dangling row
    proc = start_child(tmp_path, 2, "before-commit")
    first = wait_for_line(proc)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert check_after_crash(tmp_path, reported_saves(first, rest)) == 2
    with LocalStore(tmp_path) as store:
        report = store.last_reconcile
        assert report is not None and len(report.orphans) == 1
        assert report.orphans[0].startswith("rounds/round_000003_")


@pytest.mark.parametrize("seed", [1])
def test_sigkill_at_random_points(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    with LocalStore(tmp_path) as store:
        store.save(0, weights(0), {"round": "0"})
    latest = 0
    kills = 0
    for _ in range(6):
        proc = start_child(tmp_path, latest + 1, "random")
        first = wait_for_line(proc)  # at least one save finished in this process
        time.sleep(rng.uniform(0.0, 0.06))  # the random kill point is the point of the test
        proc.send_signal(signal.SIGKILL)
        rest, _ = proc.communicate(timeout=60)
        kills += proc.returncode == -signal.SIGKILL
        new_latest = check_after_crash(tmp_path, reported_saves(first, rest))
        assert new_latest > latest
        latest = new_latest
    assert kills == 6
