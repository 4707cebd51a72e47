"""One node under every attack of issue 15 items 2-7 at once keeps answering (the Done-when).

The victim is a real ``fedstore node`` process (``--auto-sync``, joined to
``fed-learn``, on its own data directory and filesystem root, chain
``filesystem,bitswap``). At the same time, for ~50 s:

* item 2: a lying bitswap peer (HAVE to everything, never a block) and a
  stalling one (real blocks, a kilobyte a second) are connected to it;
* items 3 and 6: a raw gossip writer announces CIDs nobody has at rounds
  near 10^12, at 19/s (inside its allowance), while auto-sync is on;
* item 4: another writer floods valid 700 KiB inline envelopes at 19/s;
* item 5: another writer sends references to CIDs nobody has (the liar
  claims them) at 19/s;
* item 7: another process holds the catalog's write lock for 45 s.

Meanwhile the test drives the victim's prompt through its status lines
(``local``, ``peers``, ``rounds``), timing every command, and an honest node
publishes a 1 MiB update (sent by reference) halfway through. Done when: every
command answers within 1 s and the honest update is delivered within 5 s.
The measured figures (prompt latency, delivery time, the victim's CPU and
memory, block store, drops) are printed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import multiaddr
import pytest
import trio
from hostile.bitswap import HostilePeer
from hostile.gossip import GossipWriter
from hostile.nodes import machine
from libp2p.peer.peerinfo import info_from_p2p_addr

from fedstore.ipld.blocks import write_dag_blocks
from fedstore.ipld.cid import DagParams, cid_of_bytes
from fedstore.node.driver import NodeProcess, python_env
from fedstore.node.events import SyncFailed
from fedstore.p2p.messages import (
    ANNOUNCE_TOPIC,
    TRAINING_TOPIC,
    encode_inline,
    encode_reference,
    format_announcement,
)

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

MIB = 1 << 20
ATTACK_SECONDS = 50.0
LOCK_SECONDS = 45.0
RATE = 19.0
#: the issue's target (printed, judged by benchmarks/bench_hostile.py); the assert below is
#: a stall guard that holds on a loaded CI machine (a stalled prompt waits out the 45 s lock)
PROMPT_TARGET = 1.0
PROMPT_BOUND = 5.0
DELIVERY_TARGET = 5.0
DELIVERY_BOUND = 15.0

_HOLDER = """
import sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
con.execute("BEGIN EXCLUSIVE")
print("LOCKED", flush=True)
time.sleep(float(sys.argv[2]))
con.execute("ROLLBACK")
"""


def proc_stats(pid: int) -> tuple[float, int]:
    """(CPU seconds, resident bytes) of process *pid* from /proc."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    with open(f"/proc/{pid}/status") as fh:
        rss = next(int(ln.split()[1]) * 1024 for ln in fh if ln.startswith("VmRSS:"))
    return cpu, rss


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


async def dial(host: object, addr: str) -> None:
    await host.connect(info_from_p2p_addr(multiaddr.Multiaddr(addr)))  # type: ignore[attr-defined]


def test_a_node_under_every_attack_keeps_its_prompt_and_delivers_an_honest_update(
    tmp_path: Path,
) -> None:
    env = python_env(
        {"FEDSTORE_BACKENDS": "filesystem,bitswap", "FEDSTORE_AUTO_SYNC": "true"},
        root=tmp_path / "victim-objects",
    )
    data = tmp_path / "victim"
    args = ["--dir", str(data), "--reannounce", "0", "--auto-sync"]
    latencies: list[tuple[str, float]] = []
    figures: dict[str, object] = {}
    with NodeProcess("victim", args, env) as victim:
        victim.expect("READY")
        victim.run("join fed-learn")
        addr = victim.expect("LISTENING")
        cpu0, rss0 = proc_stats(victim.pid)

        async def main() -> None:
            stalled = os.urandom(300 * 1024)
            staller_blocks: dict[bytes, bytes] = {}
            stalled_cid = write_dag_blocks(
                stalled, DagParams.kubo(0), staller_blocks.__setitem__
            ).cid
            async with (
                machine(tmp_path, "honest") as (honest, _events),
                HostilePeer.start("liar") as liar,
                HostilePeer.start("staller", staller_blocks, chunk=1024, pause=1.0) as staller,
                GossipWriter.start([ANNOUNCE_TOPIC]) as announcer,
                GossipWriter.start([TRAINING_TOPIC]) as flooder,
                GossipWriter.start([TRAINING_TOPIC]) as referrer,
                trio.open_nursery() as nursery,
            ):
                await honest.join(TRAINING_TOPIC)
                await honest.connect(addr)
                await honest.wait_for_peers(1, topic=TRAINING_TOPIC)
                await dial(liar.host, addr)
                await dial(staller.host, addr)
                targets = [await w.connect(addr) for w in (announcer, flooder, referrer)]
                stop = trio.Event()
                holder = subprocess.Popen(
                    [
                        sys.executable,
                        "-c",
                        _HOLDER,
                        str(data / "catalog.sqlite"),
                        str(LOCK_SECONDS),
                    ],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                try:
                    assert holder.stdout is not None
                    line = await trio.to_thread.run_sync(holder.stdout.readline)
                    assert line.strip() == "LOCKED"
                    started = trio.current_time()

                    def bogus_announcement(i: int) -> tuple[str, bytes]:
                        cid = cid_of_bytes(b"nobody has %d" % i)
                        return ANNOUNCE_TOPIC, format_announcement(10**12 - i, cid)

                    def envelope(i: int) -> tuple[str, bytes]:
                        body = i.to_bytes(8, "big") + os.urandom(8) + bytes(700 * 1024 - 16)
                        return TRAINING_TOPIC, encode_inline(body, limit=786_432)

                    def bogus_reference(i: int) -> tuple[str, bytes]:
                        if i % 10 == 0:  # a real file only the staller serves, 1 KiB/s
                            return TRAINING_TOPIC, encode_reference(stalled_cid, len(stalled))
                        cid = cid_of_bytes(b"liar's %d" % i)  # nobody has it; the liar says HAVE
                        return TRAINING_TOPIC, encode_reference(cid, MIB)

                    count = int(RATE * ATTACK_SECONDS)
                    for writer, target, make in zip(
                        (announcer, flooder, referrer),
                        targets,
                        (bogus_announcement, envelope, bogus_reference),
                        strict=True,
                    ):
                        nursery.start_soon(
                            lambda w=writer, t=target, m=make: w.send_at_rate(
                                t, m, count=count, rate=RATE, stop=stop
                            )
                        )

                    async def prompt() -> None:
                        while not stop.is_set():
                            for command in ("local", "peers", "rounds"):
                                t0 = time.monotonic()
                                await trio.to_thread.run_sync(
                                    lambda c=command: victim.run(c, timeout=30)
                                )
                                latencies.append((command, time.monotonic() - t0))
                            with trio.move_on_after(0.5):
                                await stop.wait()

                    nursery.start_soon(prompt)

                    # halfway through, an honest 1 MiB update (sent by reference)
                    await trio.sleep(ATTACK_SECONDS / 2)
                    mark = victim.mark()
                    update = os.urandom(MIB)
                    t0 = time.monotonic()
                    await honest.publish(TRAINING_TOPIC, update)
                    want = f"{TRAINING_TOPIC}:{honest.peer_id}:{MIB}:"

                    def delivered() -> float:
                        line = victim.wait_line(
                            "RECEIVED", lambda v: v.startswith(want), since=mark, timeout=60
                        )
                        return line.at - t0

                    figures["delivery"] = await trio.to_thread.run_sync(delivered)
                    await trio.sleep_until(started + ATTACK_SECONDS)
                    stop.set()
                    figures["sent"] = {
                        "announcements": announcer.stats.sent,
                        "envelopes": flooder.stats.sent,
                        "references": referrer.stats.sent,
                    }
                    figures["liar_wants"] = liar.stats.wants
                    figures["staller_bytes"] = staller.stats.bytes_trickled
                finally:
                    if holder.poll() is None:
                        holder.kill()
                    holder.wait(timeout=10)
                    if holder.stdout is not None:
                        holder.stdout.close()
                nursery.cancel_scope.cancel()

        trio.run(main)
        cpu1, rss1 = proc_stats(victim.pid)
        drops = [ln.value for ln in victim.run("local") if ln.key == "DROPS"]
        rounds = [ln.value for ln in victim.run("rounds") if ln.key == "ROUNDS"]
        failed_syncs = len(victim.events(SyncFailed))
        blocks = dir_bytes(data / "blocks") if (data / "blocks").exists() else 0

    worst = max(latencies, key=lambda x: x[1])
    median = sorted(t for _c, t in latencies)[len(latencies) // 2]
    print(
        f"\nvictim under items 2-7 at once for {ATTACK_SECONDS:g} s (catalog locked "
        f"{LOCK_SECONDS:g} s; sent {figures['sent']}):\n"
        f"  prompt: {len(latencies)} commands, median {median:.3f} s, max {worst[1]:.3f} s "
        f"({worst[0]}; target < {PROMPT_TARGET:g} s)\n"
        f"  honest 1 MiB reference delivered in {figures['delivery']:.2f} s "
        f"(target < {DELIVERY_TARGET:g} s)\n"
        f"  victim CPU {cpu1 - cpu0:.1f} s over the attack, RSS {rss0 / MIB:.0f} -> "
        f"{rss1 / MIB:.0f} MiB, block store {blocks / MIB:.1f} MiB, failed syncs "
        f"{failed_syncs}, local rounds {rounds}\n"
        f"  liar saw {figures['liar_wants']} wants, staller trickled "
        f"{figures['staller_bytes']} bytes\n  drops {drops}"
    )
    assert worst[1] < PROMPT_BOUND, latencies
    assert isinstance(figures["delivery"], float) and figures["delivery"] < DELIVERY_BOUND
