"""A raw signed gossipsub writer: a real libp2p peer that publishes what it likes, as fast as
it likes, with its own key.

A well-behaved py-libp2p publisher cannot flood: its outbound queue per peer
holds 32 RPCs and drops the rest, and fedstore's node paces itself. A hostile
peer does not use that queue. :class:`GossipWriter` runs a py-libp2p host
with Pubsub + GossipSub (Noise, strict signing, an Ed25519 key of its own,
so the victim sees an ordinary pubsub peer), and writes signed messages
straight onto a pubsub stream of its own to the victim, at a chosen rate:
every message is protocol-valid (signed by its sender, fresh seqno), so the
victim's libp2p accepts it and hands it to fedstore's validators.

Built on py-libp2p's own types (``rpc_pb2``, the signing prefix), not on the
code under test, except for the payload formats it is asked to send (the
caller builds those with :mod:`fedstore.p2p.messages` when they must be valid).

Use::

    async with GossipWriter.start() as w:
        await w.connect(victim_multiaddr)
        await w.send_at_rate(victim_id, lambda i: (ANNOUNCE_TOPIC, b"CID:..."), count=300,
                             rate=15)
        w.stats.sent
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.validators import PUBSUB_SIGNING_PREFIX
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.tools.anyio_service import background_trio_service
from libp2p.utils import encode_varint_prefixed

LOOPBACK = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]

#: (topic, payload) of the i-th message
MakeMessage = Callable[[int], tuple[str, bytes]]


@dataclass
class WriterStats:
    sent: int = 0
    bytes: int = 0
    rpcs: int = 0


class GossipWriter:
    """A pubsub peer that writes signed messages around its own outbound queue."""

    def __init__(self, topics: Sequence[str]) -> None:
        self.key_pair = create_new_key_pair()
        noise = NoiseTransport(self.key_pair, noise_privkey=create_x25519_key_pair().private_key)
        self.host: Any = new_host(key_pair=self.key_pair, sec_opt={NOISE_PROTOCOL_ID: noise})
        self.gossipsub = GossipSub(
            protocols=[PROTOCOL_ID_V11, PROTOCOL_ID],
            degree=6,
            degree_low=4,
            degree_high=12,
            heartbeat_initial_delay=0.1,
            heartbeat_interval=0.5,  # type: ignore[arg-type]
            spam_protection_enabled=False,
            eclipse_protection_enabled=False,
            adaptive_gossip_enabled=False,
        )
        self.pubsub = Pubsub(self.host, self.gossipsub, strict_signing=True)
        self.topics = list(topics)
        self.stats = WriterStats()
        self._streams: dict[str, Any] = {}
        self._seq = int.from_bytes(os.urandom(4), "big") << 24  # far from anything else

    @classmethod
    @asynccontextmanager
    async def start(cls, topics: Sequence[str] = ()) -> AsyncIterator[GossipWriter]:
        """Run the host (on 127.0.0.1) and its pubsub; subscribe to *topics*."""
        w = cls(topics)
        async with AsyncExitStack() as stack:
            stack.push_async_callback(w.host.close)
            await stack.enter_async_context(w.host.run(LOOPBACK))
            await stack.enter_async_context(background_trio_service(w.pubsub))
            await stack.enter_async_context(background_trio_service(w.gossipsub))
            # close the connections while the swarm still runs (as fedstore's open_host
            # does): after host.run() stops, dialled sockets are left to the collector
            stack.push_async_callback(w.host.close)
            await w.pubsub.wait_until_ready()
            for topic in w.topics:
                await w.pubsub.subscribe(topic)
            yield w

    @property
    def peer_id(self) -> str:
        return str(self.host.get_id())

    def addr(self) -> str:
        return f"{self.host.get_addrs()[0]}"

    async def connect(self, victim_addr: str) -> str:
        """Dial a victim by full multiaddr (``/ip4/../tcp/../p2p/<id>``); its peer id."""
        info = info_from_p2p_addr(multiaddr.Multiaddr(victim_addr))
        await self.host.connect(info)
        return str(info.peer_id)

    def sign(self, topic: str, data: bytes) -> rpc_pb2.Message:
        """A message from this peer, signed as strict signing requires, with a fresh seqno."""
        self._seq += 1
        msg = rpc_pb2.Message(
            data=data,
            topicIDs=[topic],
            from_id=self.host.get_id().to_bytes(),
            seqno=self._seq.to_bytes(8, "big"),
        )
        payload = PUBSUB_SIGNING_PREFIX.encode() + msg.SerializeToString()
        msg.signature = self.key_pair.private_key.sign(payload)
        msg.key = self.key_pair.public_key.serialize()
        return msg

    async def _stream(self, target: str) -> Any:
        stream = self._streams.get(target)
        if stream is None:
            stream = await self.host.new_stream(
                ID.from_base58(target), [TProtocol(PROTOCOL_ID_V11)]
            )
            self._streams[target] = stream  # kept open: closing it drops our pubsub state
        return stream

    async def send(self, target: str, messages: Sequence[tuple[str, bytes]]) -> None:
        """Write *messages* (topic, data) to *target* in one RPC, signed."""
        rpc = rpc_pb2.RPC()
        for topic, data in messages:
            rpc.publish.append(self.sign(topic, data))
            self.stats.bytes += len(data)
        stream = await self._stream(target)
        await stream.write(encode_varint_prefixed(rpc.SerializeToString()))
        self.stats.sent += len(messages)
        self.stats.rpcs += 1

    async def send_at_rate(
        self,
        target: str,
        make: MakeMessage,
        *,
        count: int,
        rate: float,
        per_rpc: int = 1,
        stop: trio.Event | None = None,
    ) -> None:
        """Send *count* messages ``make(0..count-1)`` at *rate* per second (paced against
        the clock, *per_rpc* to an RPC), or until *stop* is set."""
        start = trio.current_time()
        for first in range(0, count, per_rpc):
            if stop is not None and stop.is_set():
                return
            await trio.sleep_until(start + first / rate)
            batch = [make(i) for i in range(first, min(count, first + per_rpc))]
            await self.send(target, batch)
