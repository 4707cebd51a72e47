"""References under attack (issue 15 item 5): real nodes, a raw gossip writer and a bitswap liar.

Before: one peer sending 19 references/s for 45 s to random CIDs, with a
lying bitswap peer claiming every block, starved an honest reference for
over 120 s (one task per message, no cap, each fetch held until the block
timeout); references to distinct 1 MiB blobs grew a node's block store by
41 MiB in 4 minutes, kept forever.

Here the victim is a node on its own data directory and filesystem root
(``filesystem,bitswap``), joined to ``fed-learn``:

* the attacker writes valid reference envelopes at 19/s (inside its
  allowance) naming CIDs nobody has, while the liar (:mod:`hostile.bitswap`)
  answers HAVE to every want and never sends a block; an honest node then
  publishes a 1 MiB update, which must arrive within 5 s;
* another attacker node publishes distinct 1 MiB payloads, which the victim
  fetches over bitswap from it; with a small cache budget the victim's block
  store stays within it.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import pytest
import trio
from _waiting import wait_until
from hostile.bitswap import HostilePeer
from hostile.gossip import GossipWriter
from hostile.nodes import machine

from fedstore.ipld.cid import cid_of_bytes
from fedstore.node.events import Dropped, Received
from fedstore.p2p.messages import TRAINING_TOPIC, encode_reference

pytestmark = pytest.mark.slow

MIB = 1 << 20


def store_bytes(data_dir: Path) -> int:
    objects = data_dir / "blocks" / "objects"
    return sum(f.stat().st_size for f in objects.rglob("*") if f.is_file())


def wait_within(data_dir: Path, budget: int, timeout: float) -> None:
    """Block (bounded) until the block store holds at most *budget* bytes."""
    with contextlib.suppress(AssertionError):  # the caller asserts on the size itself
        wait_until(lambda: store_bytes(data_dir) <= budget, "store within budget",
                   timeout=timeout, interval=0.25)  # fmt: skip


async def test_a_reference_flood_with_a_liar_does_not_starve_an_honest_reference(
    tmp_path: Path,
) -> None:
    async with (
        machine(tmp_path, "victim") as (victim, ev),
        machine(tmp_path, "honest") as (honest, _),
        HostilePeer.start("liar") as liar,
        GossipWriter.start([TRAINING_TOPIC]) as writer,
    ):
        await victim.join(TRAINING_TOPIC)
        await honest.join(TRAINING_TOPIC)
        await honest.connect(victim.addrs()[0])
        await liar.connect_to(victim.host.libp2p_host)
        target = await writer.connect(victim.addrs()[0])
        await honest.wait_for_peers(1, topic=TRAINING_TOPIC)

        stop = trio.Event()

        def bogus(i: int) -> tuple[str, bytes]:
            return TRAINING_TOPIC, encode_reference(cid_of_bytes(b"bogus %d" % i), MIB)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                lambda: writer.send_at_rate(target, bogus, count=19 * 60, rate=19.0, stop=stop)
            )
            # the attacker has filled whatever it may hold, and the liar is being asked
            await ev.until(lambda: len(ev.of(Dropped)) >= 20, timeout=30)
            with trio.fail_after(30):
                await liar.asked_for_block.wait()
            update = os.urandom(MIB)
            start = time.monotonic()
            await honest.publish(TRAINING_TOPIC, update)
            got = await ev.wait(
                Received, lambda e: e.peer == honest.peer_id and e.size == MIB, timeout=60
            )
            took = time.monotonic() - start
            stop.set()
        reasons = {d.reason for d in ev.of(Dropped) if d.peer == writer.peer_id}
        print(
            f"\nhonest 1 MiB reference during a {writer.stats.sent}-reference flood with a "
            f"liar: {took:.2f} s; attacker's references dropped as {sorted(reasons)}; "
            f"liar saw {liar.stats.wants} wants"
        )
        assert got.size == MIB
        # starved, it would wait out the 60 s flood; the figure above is what to quote, this
        # bound (well under the flood, over a loaded machine's worst) only catches starvation
        assert took < 15.0
        assert "reference_cap" in reasons  # the excess was refused and counted
        assert victim.topics.pending_references(writer.peer_id) <= 2


async def test_fetched_payloads_do_not_fill_the_block_store(tmp_path: Path) -> None:
    budget = 4 * MIB
    settings = {
        "FEDSTORE_BITSWAP_CACHE_BYTES": str(budget),
        "FEDSTORE_BITSWAP_CACHE_TTL": "3",
        "FEDSTORE_BITSWAP_GC_INTERVAL": "0.5",
    }
    async with (
        machine(
            tmp_path,
            "victim",
            settings={"FEDSTORE_FS_ROOT": str(tmp_path / "victim-objects"), **settings},
        ) as (victim, ev),
        machine(tmp_path, "blobber") as (blobber, _),
    ):
        await victim.join(TRAINING_TOPIC)
        await blobber.join(TRAINING_TOPIC)
        await blobber.connect(victim.addrs()[0])
        await blobber.wait_for_peers(1, topic=TRAINING_TOPIC)
        count, peak = 24, 0
        for i in range(count):  # distinct 1 MiB blobs, one every 0.25 s
            await blobber.publish(TRAINING_TOPIC, os.urandom(MIB))
            await ev.until(lambda i=i: len(ev.of(Received)) > i, timeout=30)
            peak = max(peak, store_bytes(victim.config.data_dir))
            await trio.sleep(0.25)
        await trio.to_thread.run_sync(wait_within, victim.config.data_dir, budget, 20.0)
        final = store_bytes(victim.config.data_dir)
        print(
            f"\n{count} distinct 1 MiB payloads fetched: block store peak {peak / MIB:.1f} MiB, "
            f"after collection {final / MIB:.1f} MiB (budget {budget / MIB:.0f} MiB, TTL 3 s)"
        )
        assert len(ev.of(Received)) == count
        assert final <= budget
        # bounded all along: the budget plus what arrives while the youngest are spared
        assert peak <= budget + 3 * 4 * MIB + MIB
