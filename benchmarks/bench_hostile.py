"""What one hostile peer costs a node: CPU, memory, disk and delay, per attack.

For each attack of issue 15 a fresh ``fedstore node`` process (``--auto-sync``,
joined to ``fed-learn``, chain ``filesystem,bitswap``) is attacked for
``--seconds`` by one hostile peer from ``tests/hostile`` over loopback, while
this script drives its prompt (``local``, ``rounds``) every 0.5 s and times
each command. Printed per attack: the victim's CPU seconds over the attack
(from ``/proc``), resident memory before and after, growth of its data
directory (catalog and block store), prompt latency (median and worst) and
the drops the node counted.

    python benchmarks/bench_hostile.py [--seconds 30] [--only announce,envelopes,...]

Attacks (each within the default per-peer allowance, 20 messages/s):

* ``announce``: bogus ``CID:<round>:<cid>`` announcements at 19/s (rounds near
  10^12, CIDs nobody has), with auto-sync on;
* ``flood``: 10,000 signed announcements written as fast as the stream takes
  them (far beyond the allowance);
* ``envelopes``: valid 700 KiB inline envelopes at 19/s;
* ``references``: references to CIDs nobody has at 19/s, and a bitswap liar
  that claims them all;
* ``blobs``: a node publishing distinct 1 MiB payloads at 4/s, fetched by the
  victim over bitswap (the block store's cache budget at work);
* ``locked``: a second process holding the catalog's write lock for the
  whole attack while ``announce`` runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from hostile.bitswap import HostilePeer  # noqa: E402
from hostile.gossip import GossipWriter  # noqa: E402
from hostile.nodes import machine  # noqa: E402

from fedstore.ipld.cid import cid_of_bytes  # noqa: E402
from fedstore.node.driver import NodeProcess, python_env  # noqa: E402
from fedstore.p2p.messages import (  # noqa: E402
    ANNOUNCE_TOPIC,
    TRAINING_TOPIC,
    encode_inline,
    encode_reference,
    format_announcement,
)

MIB = 1 << 20
RATE = 19.0

_HOLDER = """
import sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
con.execute("BEGIN EXCLUSIVE")
print("LOCKED", flush=True)
time.sleep(float(sys.argv[2]))
con.execute("ROLLBACK")
"""


def proc_stats(pid: int) -> tuple[float, int]:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    with open(f"/proc/{pid}/status") as fh:
        rss = next(int(ln.split()[1]) * 1024 for ln in fh if ln.startswith("VmRSS:"))
    return cpu, rss


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


Attack = Callable[[str, Path, float, trio.Event], Awaitable[None]]


def bogus_announcement(i: int) -> tuple[str, bytes]:
    return ANNOUNCE_TOPIC, format_announcement(10**12 - i, cid_of_bytes(b"nobody %d" % i))


async def announce(addr: str, tmp: Path, seconds: float, stop: trio.Event) -> None:
    async with GossipWriter.start([ANNOUNCE_TOPIC]) as w:
        target = await w.connect(addr)
        await w.send_at_rate(
            target, bogus_announcement, count=int(RATE * seconds), rate=RATE, stop=stop
        )


async def flood(addr: str, tmp: Path, seconds: float, stop: trio.Event) -> None:
    async with GossipWriter.start([ANNOUNCE_TOPIC]) as w:
        target = await w.connect(addr)
        await w.send_at_rate(
            target, bogus_announcement, count=10_000, rate=10_000 / 5, per_rpc=100, stop=stop
        )
        await trio.sleep(seconds - 5)


async def envelopes(addr: str, tmp: Path, seconds: float, stop: trio.Event) -> None:
    async with GossipWriter.start([TRAINING_TOPIC]) as w:
        target = await w.connect(addr)

        def make(i: int) -> tuple[str, bytes]:
            body = i.to_bytes(8, "big") + os.urandom(8) + bytes(700 * 1024 - 16)
            return TRAINING_TOPIC, encode_inline(body, limit=786_432)

        await w.send_at_rate(target, make, count=int(RATE * seconds), rate=RATE, stop=stop)


async def references(addr: str, tmp: Path, seconds: float, stop: trio.Event) -> None:
    async with (
        HostilePeer.start("liar") as liar,
        GossipWriter.start([TRAINING_TOPIC]) as w,
    ):
        import multiaddr
        from libp2p.peer.peerinfo import info_from_p2p_addr

        await liar.host.connect(info_from_p2p_addr(multiaddr.Multiaddr(addr)))
        target = await w.connect(addr)

        def make(i: int) -> tuple[str, bytes]:
            return TRAINING_TOPIC, encode_reference(cid_of_bytes(b"liar %d" % i), MIB)

        await w.send_at_rate(target, make, count=int(RATE * seconds), rate=RATE, stop=stop)


async def blobs(addr: str, tmp: Path, seconds: float, stop: trio.Event) -> None:
    async with machine(tmp, "blobber") as (node, _):
        await node.join(TRAINING_TOPIC)
        await node.connect(addr)
        await node.wait_for_peers(1, topic=TRAINING_TOPIC)
        end = trio.current_time() + seconds
        while trio.current_time() < end and not stop.is_set():
            await node.publish(TRAINING_TOPIC, os.urandom(MIB))
            await trio.sleep(0.25)


ATTACKS: dict[str, Attack] = {
    "announce": announce,
    "flood": flood,
    "envelopes": envelopes,
    "references": references,
    "blobs": blobs,
    "locked": announce,
}


def run_attack(name: str, seconds: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix=f"hostile-{name}-") as tmp_name:
        tmp = Path(tmp_name)
        env = python_env(
            {
                "FEDSTORE_BACKENDS": "filesystem,bitswap",
                "FEDSTORE_BITSWAP_CACHE_BYTES": str(16 * MIB),
                "FEDSTORE_BITSWAP_CACHE_TTL": "10",
                "FEDSTORE_BITSWAP_GC_INTERVAL": "1",
            },
            root=tmp / "victim-objects",
        )
        data = tmp / "victim"
        args = ["--dir", str(data), "--reannounce", "0", "--auto-sync"]
        with NodeProcess(name, args, env) as victim:
            victim.expect("READY")
            victim.run("join fed-learn")
            addr = victim.expect("LISTENING")
            holder = None
            if name == "locked":
                holder = subprocess.Popen(
                    [sys.executable, "-c", _HOLDER, str(data / "catalog.sqlite"), str(seconds)],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                assert holder.stdout is not None and holder.stdout.readline().strip() == "LOCKED"
            disk0 = dir_bytes(data)
            cpu0, rss0 = proc_stats(victim.pid)
            latencies: list[float] = []

            async def main() -> None:
                stop = trio.Event()
                async with trio.open_nursery() as nursery:

                    async def prompt() -> None:
                        while not stop.is_set():
                            for command in ("local", "rounds"):
                                t0 = time.monotonic()
                                await trio.to_thread.run_sync(victim.run, command)
                                latencies.append(time.monotonic() - t0)
                            with trio.move_on_after(0.5):
                                await stop.wait()

                    nursery.start_soon(prompt)
                    with trio.move_on_after(seconds):
                        await ATTACKS[name](addr, tmp, seconds, stop)
                        await trio.sleep_forever()
                    stop.set()

            trio.run(main)
            cpu1, rss1 = proc_stats(victim.pid)
            disk1 = dir_bytes(data)
            drops = [ln.value for ln in victim.run("local") if ln.key == "DROPS"]
            if holder is not None:
                holder.kill()
                holder.wait(timeout=10)
                if holder.stdout is not None:
                    holder.stdout.close()
    return {
        "cpu": cpu1 - cpu0,
        "rss0": rss0,
        "rss1": rss1,
        "disk": disk1 - disk0,
        "median": statistics.median(latencies) if latencies else float("nan"),
        "worst": max(latencies, default=float("nan")),
        "drops": drops[0] if drops else "?",
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--only", default=",".join(ATTACKS))
    args = p.parse_args()
    print(f"one hostile peer for {args.seconds:g} s each; victim = a fresh node process")
    print(
        f"{'attack':<11} {'CPU s':>6} {'CPU %':>6} {'RSS MiB':>14} {'disk MiB':>9} "
        f"{'prompt med/max s':>17}  drops"
    )
    for name in args.only.split(","):
        r = run_attack(name, args.seconds)
        print(
            f"{name:<11} {r['cpu']:>6.1f} {100 * r['cpu'] / args.seconds:>5.0f}% "  # type: ignore[operator]
            f"{r['rss0'] / MIB:>6.0f}->{r['rss1'] / MIB:<6.0f} "  # type: ignore[operator]
            f"{r['disk'] / MIB:>9.1f} "  # type: ignore[operator]
            f"{r['median']:>8.3f}/{r['worst']:<8.3f}  {r['drops']}",
            flush=True,
        )


if __name__ == "__main__":
    main()
