"""In-process libp2p tests: host adapter, identity persistence, head protocol, validators."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest
import trio

from fedstore.errors import ConfigError, NetworkError, ProtocolError
from fedstore.ipld.cid import cid_of_bytes
from fedstore.p2p.guard import DropCounters, PeerGuard
from fedstore.p2p.headproto import (
    HEAD_PROTOCOL,
    HeadServer,
    PeerHead,
    read_bounded,
    request_head,
)
from fedstore.p2p.host import GossipSettings, P2PHost, open_host, parse_peer_multiaddr
from fedstore.p2p.identity import IDENTITY_FILENAME, load_or_create_identity

CID = cid_of_bytes(b"round seven")
LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]


@asynccontextmanager
async def hosts(tmp_path: Path, n: int) -> AsyncIterator[list[P2PHost]]:
    async with AsyncExitStack() as stack:
        out = []
        for i in range(n):
            ident = load_or_create_identity(tmp_path / f"n{i}")
            out.append(await stack.enter_async_context(open_host(ident, LOOPBACK)))
        yield out


def test_identity_created_once_mode_0600(tmp_path: Path) -> None:
    first = load_or_create_identity(tmp_path / "d")
    path = tmp_path / "d" / IDENTITY_FILENAME
    assert first.created
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = load_or_create_identity(tmp_path / "d")
    assert not again.created
    assert again.peer_id == first.peer_id
    assert first.peer_id.startswith("12D3KooW")
    other = load_or_create_identity(tmp_path / "e")
    assert other.peer_id != first.peer_id
    assert "key_pair" not in repr(first)


def test_identity_loose_mode_is_tightened_and_garbage_refused(tmp_path: Path) -> None:
    first = load_or_create_identity(tmp_path)
    path = tmp_path / IDENTITY_FILENAME
    os.chmod(path, 0o644)
    assert load_or_create_identity(tmp_path).peer_id == first.peer_id
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="not a libp2p private key"):
        load_or_create_identity(tmp_path)


def test_parse_peer_multiaddr() -> None:
    peer, _ = parse_peer_multiaddr(
        "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWAcVY5D6FR6fyc4t6f8cgvYHUw7AnkRJePoG7mgCcif67"
    )
    assert peer == "12D3KooWAcVY5D6FR6fyc4t6f8cgvYHUw7AnkRJePoG7mgCcif67"
    for bad in ["/ip4/127.0.0.1/tcp/4001", "nonsense", "/ip4/1.2.3.4/tcp/1/p2p/xyz"]:
        with pytest.raises(ConfigError):
            parse_peer_multiaddr(bad)


async def test_pubsub_signed_sender_and_validator(tmp_path: Path) -> None:
    async with hosts(tmp_path, 2) as (a, b):
        assert a.addrs()[0].endswith(f"/p2p/{a.peer_id}")
        seen: list[tuple[str, str, bytes]] = []

        def validator(sender: str, forwarder: str, data: bytes) -> bool:
            seen.append((sender, forwarder, data))
            return not data.startswith(b"bad")

        a.set_validator("t", validator)
        sub_a = await a.subscribe("t")
        await b.subscribe("t")
        assert await b.connect(a.addrs()[0]) == a.peer_id
        await b.wait_for_mesh(a.peer_id, "t")
        await b.publish("t", b"bad one")
        await b.publish("t", b"good one")
        with trio.fail_after(5):
            msg = await sub_a.get()
        assert (msg.sender, msg.data) == (b.peer_id, b"good one")
        assert [s[2] for s in seen] == [b"bad one", b"good one"]
        assert all(s[0] == b.peer_id for s in seen)
        assert a.connected_peers() == [b.peer_id]
        assert a.topic_peers("t") == [b.peer_id]


async def test_connect_failures_are_network_errors(tmp_path: Path) -> None:
    async with hosts(tmp_path, 1) as (a,):
        other = load_or_create_identity(tmp_path / "ghost").peer_id
        with pytest.raises(NetworkError):
            await a.connect(f"/ip4/127.0.0.1/tcp/1/p2p/{other}", timeout=3)
        with pytest.raises(ConfigError, match="own address"):
            await a.connect(a.addrs()[0])


async def test_head_protocol_roundtrip_and_none(tmp_path: Path) -> None:
    head: list[tuple[int, str] | None] = [None]

    async def get_head() -> tuple[int, str] | None:
        return head[0]

    async with hosts(tmp_path, 2) as (a, b):
        server = HeadServer(get_head)
        a.set_stream_handler(HEAD_PROTOCOL, server.handle)
        await b.connect(a.addrs()[0])
        assert await request_head(b.open_stream, a.peer_id, timeout=5) is None
        head[0] = (7, CID)
        got = await request_head(b.open_stream, a.peer_id, timeout=5)
        assert got == PeerHead(a.peer_id, 7, CID)
        assert server.served == 2


async def test_head_protocol_rejects_bad_answers_and_times_out(tmp_path: Path) -> None:
    async with hosts(tmp_path, 2) as (a, b):

        async def babble(stream, peer):  # type: ignore[no-untyped-def]
            await read_bounded(stream, 64)
            await stream.write(b"x" * 10_000)
            await stream.close()

        async def garbage(stream, peer):  # type: ignore[no-untyped-def]
            await read_bounded(stream, 64)
            await stream.write(b"CID:notanumber:" + CID.encode())
            await stream.close()

        release = trio.Event()

        async def silent(stream, peer):  # type: ignore[no-untyped-def]
            await release.wait()
            await stream.close()

        a.set_stream_handler("/t/babble", babble)
        a.set_stream_handler("/t/garbage", garbage)
        a.set_stream_handler("/t/silent", silent)
        await b.connect(a.addrs()[0])

        def opener(proto: str):  # type: ignore[no-untyped-def]
            return lambda peer, _p: b.open_stream(peer, proto)

        with pytest.raises(ProtocolError, match="more than"):
            await request_head(opener("/t/babble"), a.peer_id, timeout=5)
        with pytest.raises(ProtocolError):
            await request_head(opener("/t/garbage"), a.peer_id, timeout=5)
        with pytest.raises(NetworkError, match="did not answer"):
            await request_head(opener("/t/silent"), a.peer_id, timeout=0.5)
        release.set()
        with pytest.raises(NetworkError):
            await request_head(opener("/t/unknown"), a.peer_id, timeout=5)


async def test_head_server_rejects_bad_requests_and_floods(tmp_path: Path) -> None:
    async def get_head() -> tuple[int, str] | None:
        return (1, CID)

    counters = DropCounters()
    guard = PeerGuard(rate=0.001, burst=2)
    server = HeadServer(get_head, guard=guard, counters=counters, timeout=0.5)
    async with hosts(tmp_path, 2) as (a, b):
        a.set_stream_handler(HEAD_PROTOCOL, server.handle)
        await b.connect(a.addrs()[0])
        stream = await b.open_stream(a.peer_id, HEAD_PROTOCOL)
        await stream.write(b"GIMME\n")
        await stream.close_write()
        assert await read_bounded(stream, 100) == b""  # reset or closed, never an answer
        assert counters.count(HEAD_PROTOCOL, "malformed") == 1
        # a well-formed request still works (second token) ...
        assert (await request_head(b.open_stream, a.peer_id)) == PeerHead(a.peer_id, 1, CID)
        # ... the third is over the rate
        with pytest.raises((NetworkError, ProtocolError)):
            await request_head(b.open_stream, a.peer_id)
        assert counters.count(HEAD_PROTOCOL, "rate_limited") == 1


async def test_announce_ip_rewrites_advertised_address(tmp_path: Path) -> None:
    ident = load_or_create_identity(tmp_path)
    async with open_host(ident, LOOPBACK, announce_ip="203.0.113.7") as h:
        port = h.transport_addrs()[0].rsplit("/", 1)[1]
        assert h.addrs() == [f"/ip4/203.0.113.7/tcp/{port}/p2p/{h.peer_id}"]
    with pytest.raises(ConfigError):
        async with open_host(ident, LOOPBACK, announce_ip="not an ip"):
            pass


async def test_gossip_settings_applied(tmp_path: Path) -> None:
    ident = load_or_create_identity(tmp_path)
    async with open_host(ident, LOOPBACK, settings=GossipSettings(heartbeat_interval=0.25)) as h:
        assert h._gossipsub.heartbeat_interval == 0.25
        assert h._gossipsub.spam_protection_enabled is False


def test_subscription_queue_is_raised_only_on_the_tested_libp2p_release(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.metadata
    import logging

    import libp2p.pubsub.pubsub as libp2p_pubsub

    from fedstore.p2p import host as host_mod

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    host_mod.log.addHandler(handler)
    try:
        monkeypatch.setattr(libp2p_pubsub, "SUBSCRIPTION_CHANNEL_SIZE", 32)
        monkeypatch.setattr(host_mod, "_queue_checked", False)
        monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.9.0")
        host_mod._enlarge_subscription_queue()
        assert libp2p_pubsub.SUBSCRIPTION_CHANNEL_SIZE == 32  # left alone
        assert len(records) == 1 and "not the tested 0.8.1" in records[0].getMessage()
        host_mod._enlarge_subscription_queue()
        assert len(records) == 1  # warned once

        monkeypatch.setattr(host_mod, "_queue_checked", False)
        monkeypatch.setattr(importlib.metadata, "version", lambda name: host_mod.LIBP2P_VERSION)
        host_mod._enlarge_subscription_queue()
        assert libp2p_pubsub.SUBSCRIPTION_CHANNEL_SIZE == host_mod.SUBSCRIPTION_QUEUE
        assert len(records) == 1
    finally:
        host_mod.log.removeHandler(handler)


async def test_opening_a_host_applies_the_queue_on_this_release(tmp_path: Path) -> None:
    import importlib.metadata

    import libp2p.pubsub.pubsub as libp2p_pubsub

    from fedstore.p2p.host import LIBP2P_VERSION, SUBSCRIPTION_QUEUE

    assert importlib.metadata.version("libp2p") == LIBP2P_VERSION
    async with hosts(tmp_path, 1):
        assert libp2p_pubsub.SUBSCRIPTION_CHANNEL_SIZE >= SUBSCRIPTION_QUEUE
