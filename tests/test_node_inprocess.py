"""Nodes in one trio process on loopback: save/announce/sync, topics, bad input, floods.

Every wait is on a node event with a deadline; nothing sleeps for a fixed time.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
import trio

from fedstore.backends import BackendChain
from fedstore.backends.memory import MemoryBackend
from fedstore.config import NodeConfig
from fedstore.ipld.cid import cid_of_bytes
from fedstore.node import Node, open_node, payload_digest
from fedstore.node.events import (
    Announced,
    Dropped,
    HeadReceived,
    Heard,
    NodeEvent,
    NodeStarted,
    Received,
    Resumed,
    Saved,
    Synced,
    SyncFailed,
    TopicJoined,
)
from fedstore.p2p.headproto import HEAD_PROTOCOL
from fedstore.p2p.messages import ANNOUNCE_TOPIC, TRAINING_TOPIC

E = TypeVar("E", bound=NodeEvent)


class Events:
    """Collects node events; ``wait`` blocks until a matching one arrives."""

    def __init__(self) -> None:
        self.items: list[NodeEvent] = []
        self._changed = trio.Event()

    def __call__(self, event: NodeEvent) -> None:
        self.items.append(event)
        self._changed.set()
        self._changed = trio.Event()

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.items if isinstance(e, kind)]

    async def until(self, cond: Callable[[], bool], timeout: float = 10.0) -> None:
        with trio.fail_after(timeout):
            while not cond():
                await self._changed.wait()

    async def wait(
        self, kind: type[E], pred: Callable[[E], bool] = lambda e: True, timeout: float = 10.0
    ) -> E:
        with trio.fail_after(timeout):
            while True:
                for e in self.of(kind):
                    if pred(e):
                        return e
                await self._changed.wait()


def weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "fc.weight": rng.standard_normal((16, 8)).astype(np.float32),
        "fc.bias": rng.standard_normal(8).astype(np.float32),
    }


def config(tmp_path: Path, name: str, **kw: object) -> NodeConfig:
    base = NodeConfig(
        role="trainer",
        data_dir=tmp_path / name,
        reannounce_interval=0,
        head_timeout=3.0,
        connect_timeout=5.0,
        inline_limit=1000,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


@asynccontextmanager
async def cluster(
    tmp_path: Path, names: list[str], chain: BackendChain | None = None, **kw: object
) -> AsyncIterator[tuple[list[Node], list[Events]]]:
    chain = chain or BackendChain([MemoryBackend()])
    async with AsyncExitStack() as stack:
        nodes, events = [], []
        for name in names:
            ev = Events()
            node = await stack.enter_async_context(
                open_node(config(tmp_path, name, **kw), on_event=ev, chain=chain)
            )
            nodes.append(node)
            events.append(ev)
        yield nodes, events


async def connect_all_to_first(nodes: list[Node], topic: str = ANNOUNCE_TOPIC) -> None:
    hub = nodes[0]
    for node in nodes[1:]:
        await node.connect(hub.addrs()[0])
        await node.host.wait_for_mesh(hub.peer_id, topic)
        await hub.host.wait_for_mesh(node.peer_id, topic)


async def test_save_announce_sync_roundtrip(tmp_path: Path) -> None:
    async with cluster(tmp_path, ["a", "b"]) as ((a, b), (ea, eb)):
        assert ea.of(NodeStarted) == [NodeStarted(a.peer_id)]
        await connect_all_to_first([a, b])
        arrays = weights(1)
        rec = await a.save_checkpoint(3, arrays, {"task": "unit"})
        assert ea.of(Saved) == [Saved(3, rec.cid)]
        assert ea.of(Announced) == [Announced(3, rec.cid)]
        heard = await eb.wait(Heard)
        assert heard == Heard(3, rec.cid, a.peer_id)
        await b.recorded()  # HEARD comes first; the catalog row follows in the background
        latest = await b.catalog.latest_announced()
        assert latest is not None and (latest.round, latest.cid, latest.sender_peer) == (
            3,
            rec.cid,
            a.peer_id,
        )
        pins = await a.catalog.pins_for(rec.cid)
        assert [(p.backend, p.state) for p in pins] == [("memory", "pinned")]
        assert await b.head() is None
        head = await b.sync()
        assert head == (3, rec.cid)
        assert eb.of(Synced) == [Synced(3, rec.cid)]
        ckpt = await b.load_checkpoint()
        for name, arr in arrays.items():
            np.testing.assert_array_equal(ckpt.arrays[name], arr)
        assert ckpt.metadata["task"] == "unit"
        # a second sync has nothing newer and fetches nothing
        assert await b.sync() == (3, rec.cid)


async def test_late_joiner_learns_head_over_head_protocol(tmp_path: Path) -> None:
    async with cluster(tmp_path, ["a", "late"]) as ((a, late), (_, el)):
        # saved and stored but never announced (as if the announcement was long
        # gone from gossipsub's message cache): only the head protocol can tell
        rec = await a.store.save(5, weights(5))
        await a.replicate(rec)
        await late.connect(a.addrs()[0])
        assert await el.wait(HeadReceived) == HeadReceived(5, rec.cid, a.peer_id)
        assert el.of(Heard) == []
        await late.recorded()
        anns = await late.catalog.announcements()
        assert [(x.round, x.topic) for x in anns] == [(5, HEAD_PROTOCOL)]
        assert await late.sync() == (5, rec.cid)


async def test_resume_after_restart_keeps_peer_id(tmp_path: Path) -> None:
    async with cluster(tmp_path, ["a"]) as ((a,), _):
        first_id = a.peer_id
        rec = await a.save_checkpoint(2, weights(2))
    async with cluster(tmp_path, ["a"]) as ((a,), (ev,)):
        assert a.peer_id == first_id
        assert ev.of(Resumed) == [Resumed(2)]
        assert await a.head() == (2, rec.cid)


async def test_training_topic_inline_and_by_reference(tmp_path: Path) -> None:
    chain = BackendChain([MemoryBackend()])
    async with cluster(tmp_path, ["a", "b"], chain=chain) as ((a, b), (ea, eb)):
        await a.join(TRAINING_TOPIC)
        async with b.subscribe(TRAINING_TOPIC) as sub:
            assert eb.of(TopicJoined) == [TopicJoined(ANNOUNCE_TOPIC), TopicJoined(TRAINING_TOPIC)]
            await connect_all_to_first([a, b], TRAINING_TOPIC)
            small = b"update-small"
            big = bytes(range(256)) * 20  # 5120 bytes > inline limit 1000
            r1 = await a.publish(TRAINING_TOPIC, small)
            r2 = await a.publish(TRAINING_TOPIC, big)
            assert r1.cid is None and r2.cid is not None
            assert r2.cid in chain.backends[0].objects  # type: ignore[attr-defined]
            got = {}
            with trio.fail_after(10):
                async for sender, data in sub:
                    got[data] = sender
                    if len(got) == 2:
                        break
            assert got == {small: a.peer_id, big: a.peer_id}
            assert sorted(eb.of(Received), key=lambda e: e.size) == [
                Received(TRAINING_TOPIC, a.peer_id, len(d), payload_digest(d)) for d in (small, big)
            ]


async def test_bad_announcements_change_nothing(tmp_path: Path) -> None:
    good_cid = cid_of_bytes(b"x")
    async with cluster(tmp_path, ["a", "b"]) as ((a, b), (_, eb)):
        await connect_all_to_first([a, b])
        bad = [
            b"hello",
            f"CID:abc:{good_cid}".encode(),
            b"CID:4:QmNotACid",
            b"CID:4:" + b"Q" * 400,
        ]
        for payload in bad:
            await a.publish(ANNOUNCE_TOPIC, payload)
        await a.announce(9, good_cid)  # a valid one after the bad ones
        assert await eb.wait(Heard) == Heard(9, good_cid, a.peer_id)
        dropped = eb.of(Dropped)
        assert sorted(d.reason for d in dropped) == sorted(
            ["malformed", "bad_round", "bad_cid", "oversized"]
        )
        assert {(d.topic, d.peer) for d in dropped} == {(ANNOUNCE_TOPIC, a.peer_id)}
        await b.recorded()
        anns = await b.catalog.announcements()
        assert [(x.round, x.cid) for x in anns] == [(9, good_cid)]
        assert b.counters.count(ANNOUNCE_TOPIC) == 4


async def test_flood_from_one_peer_is_rate_limited(tmp_path: Path) -> None:
    async with cluster(tmp_path, ["a", "b"], peer_rate=0.01, peer_burst=5) as (
        (a, b),
        (_, eb),
    ):
        await a.join(TRAINING_TOPIC)
        await b.join(TRAINING_TOPIC)
        await connect_all_to_first([a, b], TRAINING_TOPIC)
        for i in range(30):
            await a.publish(TRAINING_TOPIC, f"m{i}".encode())

        def settled() -> bool:
            limited = [
                d for d in eb.of(Dropped) if d == Dropped(TRAINING_TOPIC, "rate_limited", a.peer_id)
            ]
            return len(limited) + len(eb.of(Received)) >= 30

        await eb.until(settled)
        assert len(eb.of(Received)) == 5  # the burst; the rate refills nothing meanwhile
        assert b.counters.count(TRAINING_TOPIC, "rate_limited") == 25


@pytest.mark.parametrize("count", [2])
async def test_wait_for_peers_is_event_driven(tmp_path: Path, count: int) -> None:
    async with cluster(tmp_path, ["hub", "x", "y"]) as ((hub, x, y), _):
        async with trio.open_nursery() as nursery:
            result: list[list[str]] = []

            async def waiter() -> None:
                result.append(await hub.wait_for_peers(count, topic=ANNOUNCE_TOPIC, timeout=10))

            nursery.start_soon(waiter)
            await x.connect(hub.addrs()[0])
            await y.connect(hub.addrs()[0])
        assert sorted(result[0]) == sorted([x.peer_id, y.peer_id])
        with pytest.raises(Exception, match="fewer than 5"):
            await hub.wait_for_peers(5, timeout=0.3)


async def test_periodic_reannounce_reaches_a_peer_that_missed_it(tmp_path: Path) -> None:
    async with cluster(tmp_path, ["a", "b"], reannounce_interval=0.2) as ((a, b), (_, eb)):
        rec = await a.store.save(4, weights(4))  # stored, never announced explicitly
        await a.replicate(rec)
        await connect_all_to_first([a, b])
        assert await eb.wait(Heard) == Heard(4, rec.cid, a.peer_id)
        await b.recorded()
        anns = await b.catalog.announcements(round=4)
        assert ANNOUNCE_TOPIC in {x.topic for x in anns}


async def test_auto_sync_fetches_new_rounds(tmp_path: Path) -> None:
    async with cluster(tmp_path, ["a", "b"], auto_sync=True) as ((a, b), (_, eb)):
        await connect_all_to_first([a, b])
        rec = await a.save_checkpoint(6, weights(6))
        assert await eb.wait(Synced, lambda e: e.round == 6) == Synced(6, rec.cid)
        assert await b.head() == (6, rec.cid)


async def test_unfetchable_announcement_is_an_error_not_a_crash(tmp_path: Path) -> None:
    ghost = cid_of_bytes(b"stored nowhere")
    async with cluster(tmp_path, ["a", "b"]) as ((a, b), (_, eb)):
        await a.join(TRAINING_TOPIC)
        await b.join(TRAINING_TOPIC)
        await connect_all_to_first([a, b], TRAINING_TOPIC)
        await b.host.wait_for_mesh(a.peer_id, ANNOUNCE_TOPIC)
        await a.announce(7, ghost)
        await eb.wait(Heard)
        assert await b.sync() is None
        failed = await eb.wait(SyncFailed)
        assert failed.failures == 1 and ghost in failed.first
        # a reference to an object nobody stored is dropped as fetch_failed
        from fedstore.p2p.messages import encode_reference

        await a.host.publish(TRAINING_TOPIC, encode_reference(ghost, 10))
        assert await eb.wait(Dropped, lambda e: e.reason == "fetch_failed") == Dropped(
            TRAINING_TOPIC, "fetch_failed", a.peer_id
        )
        assert [e for e in eb.of(Received) if e.topic == TRAINING_TOPIC] == []


async def test_serve_node_with_nursery_start(tmp_path: Path) -> None:
    from fedstore.node import serve_node

    ev = Events()
    async with trio.open_nursery() as nursery:
        cfg = config(
            tmp_path,
            "s",
            backends=("filesystem",),
            settings={"FEDSTORE_FS_ROOT": str(tmp_path / "fs")},
        )
        node = await nursery.start(functools.partial(serve_node, cfg, on_event=ev))
        assert isinstance(node, Node) and ev.of(NodeStarted) == [NodeStarted(node.peer_id)]
        nursery.cancel_scope.cancel()


async def test_startup_errors_are_clear(tmp_path: Path) -> None:
    from fedstore.errors import ConfigError, NetworkError

    chain = BackendChain([MemoryBackend()])
    with pytest.raises(ConfigError, match="listen"):
        async with open_node(config(tmp_path, "x", listen=("not-a-multiaddr",)), chain=chain):
            pass
    async with open_node(config(tmp_path, "y"), chain=chain) as node:
        taken = node.host.transport_addrs()[0]
        with pytest.raises(NetworkError, match="cannot listen"):
            async with open_node(config(tmp_path, "z", listen=(taken,)), chain=chain):
                pass
