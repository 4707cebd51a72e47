"""The node asks for heads only peers whose Identify record lists ``/fedstore/head/1.0.0``.

The other side is a plain py-libp2p host (as an IPFS node would be: it speaks
Identify, not fedstore's protocol), once without and once with a head handler.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import multiaddr
import trio
import trio.testing
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol

from fedstore.backends import BackendChain
from fedstore.backends.memory import MemoryBackend
from fedstore.config import NodeConfig
from fedstore.ipld.cid import cid_of_bytes
from fedstore.node import Node, open_node
from fedstore.node.events import HeadReceived, NodeEvent, PeerConnected
from fedstore.p2p.headproto import HEAD_PROTOCOL, REQUEST
from fedstore.p2p.host import Stream

CID = cid_of_bytes(b"the plain host's round seven")


@asynccontextmanager
async def plain_host(serve_head: bool) -> AsyncIterator[Any]:
    """A py-libp2p host with its default protocols (Identify, ping...), nothing of fedstore's."""
    host = new_host(key_pair=create_new_key_pair())
    if serve_head:

        async def answer(stream: Any) -> None:
            assert await stream.read(len(REQUEST)) == REQUEST
            await stream.write(f"CID:7:{CID}".encode())
            await stream.close()

        host.set_stream_handler(TProtocol(HEAD_PROTOCOL), answer)
    async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        try:
            yield host
        finally:
            await host.close()


@asynccontextmanager
async def node_recording_streams(
    tmp_path: Path,
) -> AsyncIterator[tuple[Node, list[NodeEvent], list[tuple[str, str]]]]:
    events: list[NodeEvent] = []
    cfg = replace(
        NodeConfig(role="trainer", data_dir=tmp_path / "node"),
        reannounce_interval=0,
        head_timeout=3.0,
    )
    chain = BackendChain([MemoryBackend()])
    async with open_node(cfg, chain=chain, on_event=events.append) as node:
        opened: list[tuple[str, str]] = []
        real_open = node.host.open_stream

        async def recording_open(peer: str, protocol: str) -> Stream:
            opened.append((peer, protocol))
            return await real_open(peer, protocol)

        node.host.open_stream = recording_open  # type: ignore[method-assign]
        yield node, events, opened


async def test_a_peer_without_the_head_protocol_is_never_asked(tmp_path: Path) -> None:
    async with (
        node_recording_streams(tmp_path) as (node, events, opened),
        plain_host(serve_head=False) as plain,
    ):
        plain_id = plain.get_id().to_base58()
        await node.connect(str(plain.get_addrs()[0]))
        protocols = await node.host.peer_protocols(plain_id, timeout=10)
        assert protocols is not None, "Identify never completed"
        assert HEAD_PROTOCOL not in protocols and any("/ipfs/id/" in p for p in protocols)
        with trio.fail_after(10):
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)  # greeting done
        assert PeerConnected(plain_id) in events
        assert await node.peer_heads() == []  # asked explicitly: still not this peer
        assert [p for p in opened if p[1] == HEAD_PROTOCOL] == []
        assert not [e for e in events if isinstance(e, HeadReceived)]
        assert node.counters.count() == 0


async def test_a_peer_that_lists_the_head_protocol_is_asked_once(tmp_path: Path) -> None:
    async with (
        node_recording_streams(tmp_path) as (node, events, opened),
        plain_host(serve_head=True) as plain,
    ):
        plain_id = plain.get_id().to_base58()
        await node.connect(str(plain.get_addrs()[0]))
        with trio.fail_after(10):
            while HeadReceived(7, CID, plain_id) not in events:
                await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        assert opened.count((plain_id, HEAD_PROTOCOL)) == 1
        assert await node.host.speaks(plain_id, HEAD_PROTOCOL)
        await node.recorded()
        anns = await node.catalog.announcements(cid=CID)
        assert [(a.round, a.sender_peer, a.topic) for a in anns] == [(7, plain_id, HEAD_PROTOCOL)]


async def test_peer_protocols_gives_up_on_an_unknown_peer(tmp_path: Path) -> None:
    async with node_recording_streams(tmp_path) as (node, _, _):
        stranger = "12D3KooWJWoaqZhDaoEFshF7Rh1bpY9ohihFhzcW6d69Lr2NASuq"
        with trio.fail_after(5):
            assert await node.host.peer_protocols(stranger, timeout=0.2) is None
            assert not await node.host.speaks(stranger, HEAD_PROTOCOL, timeout=0.2)
