"""A catalog locked by another process does not stall a running node (issue 15 item 7).

A second process holds the catalog's write lock (``BEGIN EXCLUSIVE``) for
45 s, more than twice SQLite's busy timeout, while a hostile peer (a raw
signed gossipsub writer) sends 300 valid announcements at 15/s. Before: the
prompt did not answer for over 30 s and 40 of the 300 announcements were
lost, because every announcement was its own catalog write and the writes
held every thread the node's catalog calls had. Now announcements are
reported (``HEARD``) at once, recorded by one background writer in batches
that are retried, not lost, and reads never wait for the writer (WAL).

The victim is a real ``fedstore node`` process; the prompt is driven through
its status lines (``fedstore.node.driver``), each command timed.
"""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
from _waiting import wait_until
from hostile.gossip import GossipWriter

from fedstore.ipld.cid import cid_of_bytes
from fedstore.node.driver import NodeProcess, python_env
from fedstore.p2p.messages import ANNOUNCE_TOPIC, format_announcement

LOCK_SECONDS = 45.0
COUNT = 300
RATE = 15.0
#: the issue's target (printed, judged by benchmarks/bench_hostile.py); the assert below is
#: a stall guard that holds on a loaded CI machine (a stalled prompt waits out the 45 s lock)
PROMPT_TARGET = 1.0
PROMPT_BOUND = 5.0

_HOLDER = """
import sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
con.execute("BEGIN EXCLUSIVE")
print("LOCKED", flush=True)
time.sleep(float(sys.argv[2]))
con.execute("ROLLBACK")
print("RELEASED", flush=True)
"""


def wait_lines(node: NodeProcess, key: str, count: int, timeout: float = 30.0) -> int:
    """Block (bounded) until *node* printed *count* ``KEY=`` lines; how many it did."""
    return node.wait_count(key, count, timeout=timeout)


def count_announcements(db: Path) -> int:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return int(
            con.execute(
                "SELECT count(*) FROM announcements WHERE topic = ?", (ANNOUNCE_TOPIC,)
            ).fetchone()[0]
        )
    finally:
        con.close()


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_catalog_locked_for_45_s_neither_stalls_the_prompt_nor_loses_announcements(
    tmp_path: Path,
) -> None:
    env = python_env({"FEDSTORE_BACKENDS": "filesystem"}, root=tmp_path / "objects")
    data = tmp_path / "victim"
    with NodeProcess("victim", ["--dir", str(data), "--reannounce", "0"], env) as victim:
        victim.expect("READY")
        addr = victim.expect("LISTENING")
        holder = subprocess.Popen(
            [sys.executable, "-c", _HOLDER, str(data / "catalog.sqlite"), str(LOCK_SECONDS)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "LOCKED"
            locked_at = time.monotonic()
            latencies: list[float] = []
            done = trio.Event()

            async def prompt() -> None:
                while not done.is_set():
                    for command in ("local", "rounds", "cids"):
                        t0 = time.monotonic()
                        await trio.to_thread.run_sync(lambda c=command: victim.run(c, timeout=30))
                        latencies.append(time.monotonic() - t0)
                    with trio.move_on_after(0.5):
                        await done.wait()

            async def attack() -> None:
                async with GossipWriter.start([ANNOUNCE_TOPIC]) as writer:
                    target = await writer.connect(addr)

                    def ann(i: int) -> tuple[str, bytes]:
                        cid = cid_of_bytes(f"locked {i}".encode())
                        return ANNOUNCE_TOPIC, format_announcement(1000 + i, cid)

                    await writer.send_at_rate(target, ann, count=COUNT, rate=RATE)
                    # every announcement is reported at once, lock or no lock (the writer
                    # stays connected meanwhile: leaving could take its last message with it)
                    await trio.to_thread.run_sync(
                        wait_lines, victim, "HEARD", COUNT, LOCK_SECONDS - 5
                    )
                heard_at = time.monotonic() - locked_at
                assert len(victim.values("HEARD")) == COUNT
                assert heard_at < LOCK_SECONDS, "HEARD waited for the catalog"
                # keep the prompt busy until the lock is gone
                await trio.to_thread.run_sync(holder.wait)
                done.set()

            async def main() -> None:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(prompt)
                    nursery.start_soon(attack)

            trio.run(main)
            released_at = time.monotonic()
        finally:
            if holder.poll() is None:
                holder.kill()
            holder.wait(timeout=10)
            if holder.stdout is not None:
                holder.stdout.close()

        # none lost: once the lock is gone every announcement is in the catalog
        with contextlib.suppress(AssertionError):  # asserted on the count below
            wait_until(
                lambda: count_announcements(data / "catalog.sqlite") >= COUNT,
                "every announcement recorded",
                timeout=30,
                interval=0.2,
            )
        recorded = count_announcements(data / "catalog.sqlite")
        recorded_after = time.monotonic() - released_at
        drops = [ln.value for ln in victim.run("local") if ln.key == "DROPS"]
        print(
            f"\ncatalog locked {LOCK_SECONDS:g} s, {COUNT} announcements at {RATE:g}/s: prompt "
            f"max {max(latencies):.3f} s over {len(latencies)} commands (median "
            f"{sorted(latencies)[len(latencies) // 2]:.3f} s; target < {PROMPT_TARGET:g} s); "
            f"{recorded} recorded "
            f"{recorded_after:.1f} s after the release; drops {drops}"
        )
        assert max(latencies) < PROMPT_BOUND, latencies
        assert recorded == COUNT
        assert drops == ["none"]
