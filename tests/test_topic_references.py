"""One peer's references cannot take every fetch (issue 15 item 5), TopicHub over loopback.

Three real hosts: an attacker and an honest sender publish references
(payloads sent by CID) to a receiver's hub. The attacker's CIDs are "served"
by a liar: their fetches never finish. Each sender may have at most
``references_per_sender`` references queued or being fetched (the rest are
dropped, counted as ``reference_cap``), and each fetch has its own deadline
from when a worker takes it (counted as ``fetch_timeout``), so the honest
reference is fetched at once and the attacker's stuck fetches end.
"""

from __future__ import annotations

import time
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import trio

from fedstore.ipld.cid import cid_of_bytes
from fedstore.p2p.guard import DropCounters, PeerGuard
from fedstore.p2p.host import open_host
from fedstore.p2p.identity import load_or_create_identity
from fedstore.p2p.messages import TRAINING_TOPIC, Announcement, encode_reference
from fedstore.p2p.topics import Backlog, TopicHub

pytestmark = pytest.mark.slow

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
FLOOD = 20


class Liar:
    """fetch(): attacker CIDs hang forever (a peer said HAVE and sends nothing)."""

    def __init__(self, honest: set[str]) -> None:
        self.honest = honest
        self.started = 0
        self.delivered: list[tuple[str, float]] = []
        self.dropped: list[tuple[str, str]] = []
        self.changed = trio.Event()

    def poke(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def fetch(self, cid: str, size: int) -> bytes:
        self.started += 1
        self.poke()
        if cid in self.honest:
            return b"h" * size
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def on_announcement(self, sender: str, ann: Announcement) -> None:
        return None

    def on_message(self, topic: str, sender: str, data: bytes) -> None:
        self.delivered.append((sender, time.monotonic()))
        self.poke()

    def on_drop(self, topic: str, reason: str, peer: str) -> None:
        self.dropped.append((reason, peer))
        self.poke()

    async def until(self, cond: object, timeout: float = 20.0) -> None:
        with trio.fail_after(timeout):
            while not cond():  # type: ignore[operator]
                await self.changed.wait()


async def test_one_senders_references_hold_two_workers_and_expire(tmp_path: Path) -> None:
    honest_cid = cid_of_bytes(b"honest update")
    liar = Liar({honest_cid})
    counters = DropCounters()
    async with AsyncExitStack() as stack:
        attacker, honest, receiver = [
            await stack.enter_async_context(
                open_host(load_or_create_identity(tmp_path / name), LOOPBACK)
            )
            for name in ("attacker", "honest", "receiver")
        ]
        nursery = await stack.enter_async_context(trio.open_nursery())
        hub = TopicHub(
            receiver,
            nursery,
            guard=PeerGuard(1000, 1000),
            counters=counters,
            inline_limit=1000,
            max_reference_size=1 << 20,
            fetch=liar.fetch,
            on_announcement=liar.on_announcement,
            on_message=liar.on_message,
            on_drop=liar.on_drop,
            reference_backlog=Backlog(workers=4, queue=64),
            references_per_sender=2,
            reference_timeout=2.0,
        )
        await hub.join(TRAINING_TOPIC)
        for peer in (attacker, honest):
            await peer.connect(receiver.addrs()[0])
            await peer.wait_for_subscription(receiver.peer_id, TRAINING_TOPIC, timeout=10)

        for i in range(FLOOD):
            await attacker.publish(TRAINING_TOPIC, encode_reference(cid_of_bytes(b"%d" % i), 10))
        await liar.until(lambda: len(liar.dropped) >= FLOOD - 2 and liar.started >= 2)
        assert liar.dropped == [("reference_cap", attacker.peer_id)] * (FLOOD - 2)
        assert hub.pending_references(attacker.peer_id) == 2

        sent = time.monotonic()
        await honest.publish(TRAINING_TOPIC, encode_reference(honest_cid, 13))
        await liar.until(lambda: any(s == honest.peer_id for s, _ in liar.delivered))
        took = next(t for s, t in liar.delivered if s == honest.peer_id) - sent
        print(f"\nhonest reference with {FLOOD} of the attacker's pending: fetched in {took:.3f} s")
        # queued behind the attacker's stuck fetches it would wait for their 2 s deadline
        assert took < 2.0

        # the stuck fetches end at their deadline (2 s + 10 B at 1 MiB/s), not never
        await liar.until(lambda: hub.pending_references(attacker.peer_id) == 0, timeout=10)
        assert counters.count(TRAINING_TOPIC, "fetch_timeout") == 2
        assert counters.count(TRAINING_TOPIC, "reference_cap") == FLOOD - 2
        nursery.cancel_scope.cancel()
