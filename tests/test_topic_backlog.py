"""TopicHub's work is bounded: a flood from a real second host over loopback meets a fixed
pool of workers and a bounded queue; the excess is dropped and counted as ``backlog_full``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

from fedstore.ipld.cid import cid_of_bytes
from fedstore.p2p.guard import DropCounters, PeerGuard
from fedstore.p2p.host import P2PHost, open_host
from fedstore.p2p.identity import load_or_create_identity
from fedstore.p2p.messages import (
    ANNOUNCE_TOPIC,
    TRAINING_TOPIC,
    Announcement,
    encode_reference,
    format_announcement,
)
from fedstore.p2p.topics import ANNOUNCEMENT_BACKLOG, REFERENCE_BACKLOG, Backlog, TopicHub

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
BACKLOG = Backlog(workers=2, queue=5)
FLOOD = 60


class Probe:
    """Slow handlers that block until released and record how many run at once."""

    def __init__(self) -> None:
        self.release = trio.Event()
        self.running = 0
        self.max_running = 0
        self.handled = 0
        self.delivered = 0
        self.dropped: list[tuple[str, str, str]] = []
        self._changed = trio.Event()

    def _poke(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def until(self, cond: Callable[[], bool], timeout: float = 20.0) -> None:
        with trio.fail_after(timeout):
            while not cond():
                await self._changed.wait()

    async def slow(self) -> None:
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        self._poke()
        try:
            await self.release.wait()
        finally:
            self.running -= 1
        self.handled += 1
        self._poke()

    async def on_announcement(self, sender: str, ann: Announcement) -> None:
        await self.slow()

    async def fetch(self, cid: str, size: int) -> bytes:
        await self.slow()
        return b"x" * size

    def on_message(self, topic: str, sender: str, data: bytes) -> None:
        self.delivered += 1
        self._poke()

    def on_drop(self, topic: str, reason: str, peer: str) -> None:
        self.dropped.append((topic, reason, peer))
        self._poke()


class CountingGuard(PeerGuard):
    """Lets everything through and counts what the hub's validator saw (the arrivals)."""

    def __init__(self, probe: Probe) -> None:
        super().__init__(rate=1, burst=1)
        self.seen = 0
        self._probe = probe

    def allow(self, peer: str) -> bool:
        self.seen += 1
        self._probe._poke()
        return True


@asynccontextmanager
async def two_hosts(tmp_path: Path) -> AsyncIterator[tuple[P2PHost, P2PHost]]:
    async with AsyncExitStack() as stack:
        a, b = [
            await stack.enter_async_context(
                open_host(load_or_create_identity(tmp_path / name), LOOPBACK)
            )
            for name in ("sender", "receiver")
        ]
        yield a, b


def test_default_backlogs_are_bounded() -> None:
    for backlog in (ANNOUNCEMENT_BACKLOG, REFERENCE_BACKLOG):
        assert 1 <= backlog.workers <= 16 and 0 <= backlog.queue <= 1024


@pytest.mark.parametrize("topic", [ANNOUNCE_TOPIC, TRAINING_TOPIC])
async def test_a_flood_meets_a_fixed_pool_and_the_excess_is_counted(
    tmp_path: Path, topic: str
) -> None:
    probe = Probe()
    guard = CountingGuard(probe)
    counters = DropCounters()
    async with two_hosts(tmp_path) as (sender, receiver), trio.open_nursery() as nursery:
        hub = TopicHub(
            receiver,
            nursery,
            guard=guard,
            counters=counters,
            inline_limit=1000,
            max_reference_size=1 << 20,
            fetch=probe.fetch,
            on_announcement=probe.on_announcement,
            on_message=probe.on_message,
            on_drop=probe.on_drop,
            announcement_backlog=BACKLOG,
            reference_backlog=BACKLOG,
            references_per_sender=FLOOD,  # the pool's bound under test, not the per-sender cap
        )
        await hub.join(topic)
        await sender.connect(receiver.addrs()[0])
        await sender.wait_for_subscription(receiver.peer_id, topic, timeout=10)
        tasks_before = len(nursery.child_tasks)

        for i in range(FLOOD):
            cid = cid_of_bytes(f"flood {i}".encode())
            wire = (
                format_announcement(i, cid)
                if topic == ANNOUNCE_TOPIC
                else encode_reference(cid, 10)
            )
            await sender.publish(topic, wire)
            # one at a time as far as the sender's own 32-message queue goes, far faster
            # than the (blocked) handlers: wait until the receiver's validator saw it
            await probe.until(lambda i=i: guard.seen > i)

        # workers + queue are taken, the rest of the flood is dropped
        excess = FLOOD - BACKLOG.workers - BACKLOG.queue
        try:
            await probe.until(
                lambda: len(probe.dropped) >= excess and probe.running == BACKLOG.workers
            )
        except trio.TooSlowError:
            raise AssertionError(
                f"dropped={len(probe.dropped)} running={probe.running} delivered={probe.delivered}"
            ) from None
        assert len(probe.dropped) == excess
        # at most `workers` run at once; the pool's tasks are all there is, no task per message
        assert probe.max_running == BACKLOG.workers
        assert len(nursery.child_tasks) == tasks_before
        assert {d[:2] for d in probe.dropped} == {(topic, "backlog_full")}
        assert {d[2] for d in probe.dropped} == {sender.peer_id}
        assert counters.snapshot() == {f"{topic}:backlog_full": excess}

        # released: exactly the messages that were taken are handled, nothing more
        probe.release.set()
        taken = BACKLOG.workers + BACKLOG.queue
        await probe.until(lambda: probe.handled == taken)
        with trio.fail_after(10):
            await trio.testing.wait_all_tasks_blocked(cushion=0.1)
        assert probe.handled == taken and probe.running == 0
        if topic == ANNOUNCE_TOPIC:  # delivered to subscribers before the work was queued
            assert probe.delivered == FLOOD
        else:  # references are delivered once fetched
            assert probe.delivered == taken
        nursery.cancel_scope.cancel()


def test_a_backlog_needs_a_worker() -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            with pytest.raises(ValueError, match="at least one worker"):
                TopicHub(
                    None,  # type: ignore[arg-type]
                    nursery,
                    guard=PeerGuard(1, 1),
                    counters=DropCounters(),
                    inline_limit=1,
                    max_reference_size=1,
                    fetch=Probe().fetch,
                    on_announcement=Probe().on_announcement,
                    announcement_backlog=Backlog(workers=0, queue=1),
                )

    trio.run(main)
