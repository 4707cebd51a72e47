"""The bitswap backend across in-process libp2p hosts on 127.0.0.1.

Covers: multi-peer fetch of multi-block files (and the chain's verification),
serving fetched files onwards, a peer that sends wrong blocks being dropped,
a peer leaving mid-transfer, NotFound, the serving bounds, interop with a
plain py-libp2p BitswapClient in both directions, and the node-only rule.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
import varint
from _bitswap_hosts import CHUNK, LOOPBACK, make_host, payload, run_host, start_nodes
from fedstore_bitswap import BitswapBackend, BitswapLimits, attach
from libp2p.bitswap import BitswapClient, MemoryBlockStore
from libp2p.bitswap.config import BITSWAP_PROTOCOLS
from libp2p.bitswap.messages import create_message, create_wantlist_entry
from libp2p.tools.utils import connect

from fedstore.backends import BackendContext
from fedstore.backends.chain import BackendChain
from fedstore.backends.registry import default_backend_names, load_backend
from fedstore.backends.testing import BackendConformance
from fedstore.errors import (
    ConfigError,
    FormatError,
    NotConfiguredError,
    NotFoundError,
    UnavailableError,
)
from fedstore.ipld.blocks import write_dag_blocks
from fedstore.ipld.cid import DagParams, cid_of_bytes, parse_cid


@dataclass
class BareHost:
    """A bare py-libp2p host seen through the NodeHost protocol a backend context carries."""

    libp2p_host: Any

    @property
    def peer_id(self) -> str:
        return str(self.libp2p_host.get_id().to_base58())

    def connected_peers(self) -> list[str]:
        return [p.to_base58() for p in self.libp2p_host.get_connected_peers()]


def bitswap_handlers(host: Any) -> set[str]:
    return {str(p) for p in host.get_mux().handlers if "bitswap" in str(p)}


# -- the rule: only inside a node ----------------------------------------------------------


def test_backend_outside_a_node_is_not_configured() -> None:
    with pytest.raises(NotConfiguredError, match="only inside a running fedstore node"):
        load_backend("bitswap", {})


async def test_backend_built_from_the_node_context(tmp_path: Path) -> None:
    """The context's host and data dir, no process-wide lookup; the lifespan runs the handlers."""
    host = make_host()
    async with host.run(LOOPBACK):
        ctx = BackendContext(data_dir=tmp_path / "node", host=BareHost(host))
        assert default_backend_names({"IPFS_PATH": str(tmp_path / "none")}, ctx) == [
            "filesystem",
            "bitswap",
        ]
        backend = load_backend("bitswap", {}, ctx)
        assert isinstance(backend, BitswapBackend)
        assert backend.service.host is host
        assert backend.service.store.root == tmp_path / "node" / "blocks"
        assert bitswap_handlers(host) == set()
        async with backend.lifespan():
            assert "/ipfs/bitswap/1.2.0" in bitswap_handlers(host)
            with pytest.raises(ConfigError, match="already running"):
                async with backend.lifespan():
                    pass  # pragma: no cover
            data = payload(3 * CHUNK)
            stored = await backend.add(data)
            assert await BackendChain([backend]).fetch_bytes(stored.cid) == data
        assert bitswap_handlers(host) == set()
        await backend.aclose()
        # two nodes in one process: each backend holds its own service
        other = load_backend("bitswap", {}, BackendContext(tmp_path / "other", BareHost(host)))
        assert isinstance(other, BitswapBackend) and other.service is not backend.service


# -- the contract, on a single node (local block store only) ---------------------------------


class TestConformance(BackendConformance):
    @pytest.fixture
    async def backend(self, tmp_path: Path) -> AsyncIterator[BitswapBackend]:
        host = make_host()
        async with host.run(LOOPBACK), attach(host, tmp_path / "solo") as service:
            backend = BitswapBackend(service)
            yield backend
            await backend.aclose()

    @pytest.fixture
    async def backend_context(self, tmp_path: Path) -> AsyncIterator[BackendContext]:
        host = make_host()  # a host of its own: fresh backends run their lifespan on it
        async with host.run(LOOPBACK):
            yield BackendContext(data_dir=tmp_path / "fresh", host=BareHost(host))


# -- fetching across peers ----------------------------------------------------------------


async def test_fetch_from_two_peers_at_once(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        limits = BitswapLimits(per_peer_inflight=2)
        a, b, c = await start_nodes(stack, tmp_path, 3, [None, None, limits])
        data = payload(12 * CHUNK + 100)
        for holder in (a, b):
            stored = await holder.backend.add(data, cid_version=0)
        assert stored.cid == cid_of_bytes(data, 0)
        await connect(c.host, a.host)
        await connect(c.host, b.host)

        chain = BackendChain([c.backend])
        assert await chain.fetch_bytes(stored.cid) == data  # the chain re-verifies the file

        stats = c.service.last_fetch
        assert stats is not None and stats.complete
        served = stats.blocks_by_peer
        assert set(served) == {str(a.id), str(b.id)}, served
        assert all(count >= 2 for count in served.values()), served
        assert not stats.dropped
        # the fetched file is kept and marked complete in C's block store
        assert await c.backend.has(stored.cid)


@pytest.mark.slow
async def test_fetched_file_is_served_onwards(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        a, b, c = await start_nodes(stack, tmp_path, 3)
        data = payload(5 * CHUNK + 1)
        cid = (await a.backend.add(data, cid_version=1)).cid
        await connect(b.host, a.host)
        assert await BackendChain([b.backend]).fetch_bytes(cid) == data
        await b.host.disconnect(a.id)
        await connect(c.host, b.host)  # C only knows B, which only fetched the file
        assert await BackendChain([c.backend]).fetch_bytes(cid) == data
        assert c.service.last_fetch is not None
        assert set(c.service.last_fetch.blocks_by_peer) == {str(b.id)}


async def test_big_chunks_and_raw_leaves(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        a, c = await start_nodes(stack, tmp_path, 2)
        data = payload(3 * 1024 * 1024 + 5)
        params = DagParams.unixfs_v1_2025()  # 1 MiB raw leaves, above py-libp2p's 512 KiB default
        summary = await a.service.add(data, params)
        assert summary.cid == cid_of_bytes(data, params=params)
        await connect(c.host, a.host)
        assert await BackendChain([c.backend]).fetch_bytes(summary.cid) == data


async def test_local_file_needs_no_peer(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        (a,) = await start_nodes(stack, tmp_path, 1)
        data = payload(4 * CHUNK)
        cid = (await a.backend.add(data)).cid
        assert await BackendChain([a.backend]).fetch_bytes(cid) == data
        stats = a.service.last_fetch
        assert stats is not None and stats.blocks_local == stats.blocks and not stats.blocks_by_peer


async def test_not_found_when_no_peer_has_it(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        a, c = await start_nodes(stack, tmp_path, 2)
        missing = cid_of_bytes(payload(1000))
        with pytest.raises(NotFoundError, match="no connected peer"):
            await BackendChain([c.backend]).fetch_bytes(missing)
        await connect(c.host, a.host)
        with trio.fail_after(10):  # answered by DONT_HAVE, not by the root timeout
            with pytest.raises(NotFoundError):
                await BackendChain([c.backend]).fetch_bytes(missing)


# -- misbehaving and departing peers ------------------------------------------------------


async def test_peer_sending_wrong_blocks_is_dropped(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        a, c = await start_nodes(stack, tmp_path, 2)
        data = payload(10 * CHUNK)
        cid = (await a.backend.add(data)).cid

        # E runs plain py-libp2p bitswap with a store that lies: the right root
        # block, but garbage under every leaf CID (MemoryBlockStore checks nothing).
        evil_host = make_host()
        await run_host(stack, evil_host)
        evil_store = MemoryBlockStore()
        blocks: list[tuple[bytes, bytes]] = []
        write_dag_blocks(data, DagParams.kubo(0), lambda c_, b_: blocks.append((c_, b_)))
        for cid_bytes, block in blocks:
            is_root = cid_bytes == bytes(parse_cid(cid))
            await evil_store.put_block(cid_bytes, block if is_root else os.urandom(len(block)))
        nursery = await stack.enter_async_context(trio.open_nursery())
        evil = BitswapClient(evil_host, evil_store)
        evil.set_nursery(nursery)
        await evil.start()
        stack.callback(nursery.cancel_scope.cancel)
        stack.push_async_callback(evil.stop)

        await connect(c.host, evil_host)
        await connect(c.host, a.host)
        assert await BackendChain([c.backend]).fetch_bytes(cid) == data
        stats = c.service.last_fetch
        assert stats is not None
        assert str(evil_host.get_id()) in stats.dropped, stats
        assert stats.blocks_by_peer.get(str(a.id), 0) >= 9  # A made up for E's garbage
        # nothing E sent was kept: C's store holds exactly the file's blocks
        assert c.service.store.count_blocks() == len(blocks)


async def test_a_directory_is_refused(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        a, c = await start_nodes(stack, tmp_path, 2)
        block = bytes.fromhex("0a020801")  # PBNode{Data: UnixFS{Type=Directory}}
        empty_dir = parse_cid("QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn")
        a.service.store.put_block(empty_dir.digest, block)
        await connect(c.host, a.host)
        with pytest.raises(FormatError, match="not a file"):
            async for _ in c.backend.fetch(str(empty_dir)):
                pass
        with pytest.raises(UnavailableError, match="not a file"):  # as the chain reports it
            await BackendChain([c.backend]).fetch_bytes(str(empty_dir))


@pytest.mark.slow
async def test_peer_leaving_mid_transfer(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        small_window = BitswapLimits(window_bytes=4 * CHUNK, per_peer_inflight=2)
        a, b, c = await start_nodes(stack, tmp_path, 3, [None, None, small_window])
        data = payload(24 * CHUNK + 3)
        cid = (await a.backend.add(data)).cid
        await b.backend.add(data)
        await connect(c.host, a.host)
        await connect(c.host, b.host)

        received = bytearray()
        left = False
        async for chunk in c.backend.fetch(cid):
            received += chunk
            if not left and len(received) >= 2 * CHUNK:
                left = True
                await a.host.disconnect(c.id)  # A goes away with requests outstanding
        assert bytes(received) == data
        stats = c.service.last_fetch
        assert stats is not None and stats.complete
        from_a = stats.blocks_by_peer.get(str(a.id), 0)
        from_b = stats.blocks_by_peer.get(str(b.id), 0)
        assert 1 <= from_a < 25 and from_b >= 25 - from_a - 1, stats.blocks_by_peer


# -- serving bounds -------------------------------------------------------------------------


@pytest.mark.slow
async def test_greedy_peer_is_bounded(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        bounded = BitswapLimits(
            max_requests_per_peer=2,
            max_queued_wants_per_peer=8,
            max_serving_bytes=2 * 1024 * 1024,
        )
        a, greedy, polite = await start_nodes(stack, tmp_path, 3, [bounded])
        data = payload(40 * CHUNK)
        cid = (await a.backend.add(data)).cid
        leaves: list[bytes] = []
        write_dag_blocks(data, DagParams.kubo(0), lambda c_, b_: leaves.append(c_))
        leaves = leaves[:-1]  # 40 leaf CIDs (the last block is the root)
        await connect(greedy.host, a.host)
        await connect(polite.host, a.host)

        # the greedy peer asks for all 40 leaves in one wantlist message
        greedy.service.engine.send_wants(a.id, leaves, have=False)
        stats = a.service.engine.serve_stats
        with trio.fail_after(10):
            await a.service.engine.wait_serve_stats(
                lambda st: st.blocks_served + st.wants_refused >= 40
            )
        assert stats.wants_refused == 40 - 8  # beyond the queue bound: DONT_HAVE
        assert stats.blocks_served == 8
        assert stats.peak_active_per_peer <= 2
        assert a.service.engine.serving_budget.peak <= 2 * 1024 * 1024

        # meanwhile a polite peer still gets the whole file
        assert await BackendChain([polite.backend]).fetch_bytes(cid) == data
        assert stats.peak_active_per_peer <= 2


@pytest.mark.slow
async def test_peer_that_stops_reading_is_cut_off(tmp_path: Path) -> None:
    limits = BitswapLimits(send_timeout=1.0, max_serving_bytes=4 * CHUNK, max_block_size=CHUNK + 64)
    async with AsyncExitStack() as stack:
        a, polite = await start_nodes(stack, tmp_path, 2, [limits])
        data = payload(30 * CHUNK)
        cid = (await a.backend.add(data)).cid
        leaves: list[bytes] = []
        write_dag_blocks(data, DagParams.kubo(0), lambda c_, b_: leaves.append(c_))

        # a peer that asks for every block and then never reads what it is sent
        slow = make_host()
        await run_host(stack, slow)

        async def never_read(stream: Any) -> None:
            await trio.sleep_forever()

        for proto in BITSWAP_PROTOCOLS:
            slow.set_stream_handler(proto, never_read)
        await connect(slow, a.host)
        stream = await slow.new_stream(a.id, [BITSWAP_PROTOCOLS[0]])
        entries = [create_wantlist_entry(c_, want_type=0) for c_ in leaves[:-1]]
        raw = create_message(wantlist_entries=entries).SerializeToString()
        await stream.write(varint.encode(len(raw)) + raw)

        stats = a.service.engine.serve_stats
        with trio.fail_after(20):
            await a.service.engine.wait_serve_stats(lambda st: st.send_failures >= 1)
        served_to_slow = stats.blocks_served
        assert served_to_slow < 30  # cut off long before it had everything it asked for
        # its stream was reset after send_timeout; the budget is free again and
        # a peer that reads gets the whole file
        await connect(polite.host, a.host)
        with trio.fail_after(30):
            assert await BackendChain([polite.backend]).fetch_bytes(cid) == data
        assert a.service.engine.serving_budget.peak <= 4 * CHUNK
        assert stats.blocks_served - served_to_slow >= 31  # every block went to the polite peer


async def test_want_have_is_answered_with_a_presence(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        a, c = await start_nodes(stack, tmp_path, 2)
        cid = (await a.backend.add(payload(1000))).cid
        await connect(c.host, a.host)
        c.service.engine.send_wants(a.id, [bytes(parse_cid(cid))], have=True)
        stats = a.service.engine.serve_stats
        with trio.fail_after(10):
            await a.service.engine.wait_serve_stats(lambda st: st.presences_sent >= 1)
        assert stats.blocks_served == 0  # HAVE, not the block (py-libp2p sends the block)


# -- interop with plain py-libp2p -----------------------------------------------------------


@pytest.mark.slow
async def test_plain_py_libp2p_client_fetches_from_us(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        (a,) = await start_nodes(stack, tmp_path, 1)
        data = payload(3 * CHUNK)
        await a.backend.add(data)
        blocks: list[tuple[bytes, bytes]] = []
        write_dag_blocks(data, DagParams.kubo(0), lambda c_, b_: blocks.append((c_, b_)))

        host = make_host()
        await run_host(stack, host)
        nursery = await stack.enter_async_context(trio.open_nursery())
        client = BitswapClient(host, MemoryBlockStore())
        client.set_nursery(nursery)
        await client.start()
        stack.callback(nursery.cancel_scope.cancel)
        stack.push_async_callback(client.stop)
        await connect(host, a.host)
        got = await client.new_session().get_blocks_batch([c_ for c_, _ in blocks], timeout=20)
        assert got == dict(blocks)


# -- what makes a swarm: announcements, partial holders, block order ---------------------


class PresenceRecorder:
    """A FetchListener that wants nothing and records the presences it is told about."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, bytes, bool]] = []
        self.changed = trio.Event()

    def wants(self, digest: bytes) -> bool:
        return False

    def wanted(self) -> list[bytes]:
        return []

    def has_inflight(self, peer: Any) -> bool:
        return False

    def on_block(self, peer: Any, digest: bytes, data: bytes, stored: bool) -> None:
        pass

    def on_presence(self, peer: Any, digest: bytes, have: bool) -> None:
        self.seen.append((str(peer), digest, have))
        self.changed.set()
        self.changed = trio.Event()

    def on_wrong_block(self, peer: Any, reason: str) -> None:
        pass

    def on_peer_gone(self, peer: Any) -> None:
        pass

    async def wait_for(self, peer: Any, digest: bytes, have: bool) -> None:
        while (str(peer), digest, have) not in self.seen:
            await self.changed.wait()


async def test_have_is_pushed_when_a_wanted_block_arrives(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        a, b, c = await start_nodes(stack, tmp_path, 3)
        data = payload(4 * CHUNK)
        cid = (await a.backend.add(data)).cid
        leaves: list[bytes] = []
        write_dag_blocks(data, DagParams.kubo(0), lambda c_, b_: leaves.append(c_))
        await connect(c.host, b.host)
        recorder = PresenceRecorder()
        c.service.engine.register(recorder)

        # C asks B, which has nothing yet: DONT_HAVE, and B remembers the want
        c.service.engine.send_wants(b.id, [leaves[2]], have=True)
        with trio.fail_after(10):
            await recorder.wait_for(b.id, leaves[2][-32:], False)
        assert b.service.engine.server.pending_wants() == 1
        # B fetches the file from A; as soon as it stores that leaf, C hears HAVE
        await connect(b.host, a.host)
        assert await BackendChain([b.backend]).fetch_bytes(cid) == data
        with trio.fail_after(10):
            await recorder.wait_for(b.id, leaves[2][-32:], True)
        assert b.service.engine.serve_stats.haves_pushed == 1
        assert b.service.engine.server.pending_wants() == 0


async def test_want_block_for_a_missing_block_is_served_when_it_arrives(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        b, c = await start_nodes(stack, tmp_path, 2)
        block = payload(1000)
        cid = cid_of_bytes(block, 1, params=DagParams(cid_version=1, raw_leaves=True))
        await connect(c.host, b.host)
        c.service.engine.send_wants(b.id, [bytes(parse_cid(cid))], have=False)
        with trio.fail_after(10):
            await b.service.engine.wait_serve_stats(lambda st: st.presences_sent >= 1)  # DONT_HAVE
        assert b.service.engine.serve_stats.blocks_served == 0
        await b.service.add(block, DagParams(cid_version=1, raw_leaves=True))
        with trio.fail_after(10):
            await b.service.engine.wait_serve_stats(lambda st: st.blocks_served >= 1)


async def test_a_partial_holder_serves_the_blocks_it_has(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        a, b, c = await start_nodes(stack, tmp_path, 3)
        data = payload(16 * CHUNK)
        cid = (await a.backend.add(data)).cid
        blocks: list[tuple[bytes, bytes]] = []
        write_dag_blocks(data, DagParams.kubo(0), lambda c_, b_: blocks.append((c_, b_)))
        for cid_bytes, block in blocks[:8]:  # B holds half of the leaves, not the file
            b.service.store.put_block(cid_bytes[-32:], block)
        assert not await b.backend.has(cid)
        await connect(c.host, a.host)
        await connect(c.host, b.host)
        assert await BackendChain([c.backend]).fetch_bytes(cid) == data
        stats = c.service.last_fetch
        assert stats is not None
        assert 1 <= stats.blocks_by_peer.get(str(b.id), 0) <= 8, stats.blocks_by_peer


async def test_fetchers_take_blocks_in_different_orders_with_bounded_memory(
    tmp_path: Path,
) -> None:
    from fedstore_bitswap import DagFetch

    def recording(fetch: DagFetch) -> tuple[list[bytes], list[int]]:
        """Record the order blocks arrive in, and the most blocks buffered ahead of the output."""
        arrivals: list[bytes] = []
        most = [0]
        sched = fetch.scheduler
        deliver = sched.on_block

        def on_block(peer: Any, digest: bytes, data: bytes, stored: bool) -> None:
            if sched.wants(digest):
                arrivals.append(digest)
            deliver(peer, digest, data, stored)
            most[0] = max(most[0], len(sched.arrived))

        sched.on_block = on_block  # type: ignore[method-assign]
        return arrivals, most

    window = BitswapLimits(window_bytes=12 * CHUNK, max_window_blocks=12)
    async with AsyncExitStack() as stack:
        a, b, c = await start_nodes(stack, tmp_path, 3, [None, window, window])
        data = payload(40 * CHUNK)
        cid = (await a.backend.add(data)).cid
        leaves: list[bytes] = []
        write_dag_blocks(data, DagParams.kubo(0), lambda c_, b_: leaves.append(c_[-32:]))
        leaves = leaves[:-1]  # file order (the root comes last)
        orders = []
        for node in (b, c):
            await connect(node.host, a.host)
            fetch = DagFetch(node.service.engine, parse_cid(cid), window)
            arrivals, most = recording(fetch)
            out = bytearray()
            async for chunk in fetch.run():
                out += chunk
            assert bytes(out) == data  # streamed in order
            assert most[0] <= 12  # never more than the window ahead
            orders.append([d for d in arrivals if d in set(leaves)])
        assert sorted(orders[0]) == sorted(orders[1]) == sorted(leaves)
        assert orders[0] != leaves and orders[1] != leaves  # not the DAG walk order
        assert orders[0] != orders[1]  # and not the same order at both fetchers
