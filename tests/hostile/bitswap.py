"""Bitswap peers that misbehave: a liar and a staller, each a real libp2p host.

Both speak bitswap 1.2.0 over Noise + yamux on 127.0.0.1, read wantlists
with py-libp2p's own framing helpers (not fedstore's, so a bug in the code
under test cannot hide here) and answer on their own outbound stream, as
Kubo does:

* ``liar``: answers HAVE to every want (want-have and want-block) and never
  sends a block. This is the peer of issue 15 item 2: before hedging and
  short provider timeouts, each of its requests cost a 15 s block timeout.
* ``staller``: holds real blocks (``blocks``); answers HAVE/DONT_HAVE
  truthfully, but sends each wanted block's message ``chunk`` bytes at a
  time with ``pause`` seconds between chunks.

Use::

    async with HostilePeer.start("liar") as liar:
        await liar.connect_to(victim_host)
        ...
        liar.stats.wants  # want entries it has seen
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import multiaddr
import trio
import varint
from libp2p import new_host
from libp2p.bitswap.config import BITSWAP_PROTOCOL_V120
from libp2p.bitswap.messages import create_message
from libp2p.bitswap.pb.bitswap_pb2 import Message
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.tools.utils import connect
from libp2p.utils.varint import decode_uvarint_from_stream

Mode = Literal["liar", "staller"]
LOOPBACK = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
MAX_MESSAGE = 4 * 1024 * 1024


@dataclass
class HostileStats:
    wants: int = 0  # want entries seen (want-have + want-block)
    want_blocks: int = 0
    haves_sent: int = 0
    bytes_trickled: int = 0
    peers: set[str] = field(default_factory=set)


def _prefix(cid: bytes) -> bytes:
    if len(cid) == 34 and cid[:2] == b"\x12\x20":
        return b"\x00\x70\x12\x20"  # CIDv0
    return cid[:-32]


class HostilePeer:
    """A misbehaving bitswap peer (see the module docstring)."""

    def __init__(
        self,
        mode: Mode,
        blocks: Mapping[bytes, bytes] | None = None,
        *,
        chunk: int = 1024,
        pause: float = 1.0,
    ) -> None:
        key_pair = create_new_key_pair()
        noise = NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)
        self.host: Any = new_host(key_pair=key_pair, sec_opt={NOISE_PROTOCOL_ID: noise})
        self.mode = mode
        self.blocks = {cid[-32:]: (cid, data) for cid, data in (blocks or {}).items()}
        self.chunk = chunk
        self.pause = pause
        self.stats = HostileStats()
        #: set when the first want-block arrives (wait on it instead of sleeping)
        self.asked_for_block = trio.Event()
        self._out: dict[Any, tuple[Any, trio.Lock]] = {}
        self._nursery: trio.Nursery | None = None

    @classmethod
    @asynccontextmanager
    async def start(
        cls, mode: Mode, blocks: Mapping[bytes, bytes] | None = None, **kwargs: Any
    ) -> AsyncIterator[HostilePeer]:
        peer = cls(mode, blocks, **kwargs)
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(peer.host.run(LOOPBACK))
            stack.push_async_callback(peer.host.close)  # its connections, while the swarm runs
            peer._nursery = await stack.enter_async_context(trio.open_nursery())
            peer.host.set_stream_handler(BITSWAP_PROTOCOL_V120, peer._handle)
            try:
                yield peer
            finally:
                peer._nursery.cancel_scope.cancel()

    @property
    def id(self) -> Any:
        return self.host.get_id()

    async def connect_to(self, host: Any) -> None:
        await connect(self.host, host)

    # -- reading wantlists ---------------------------------------------------------------

    async def _handle(self, stream: Any) -> None:
        peer = stream.muxed_conn.peer_id
        self.stats.peers.add(str(peer))
        try:
            while True:
                length = await decode_uvarint_from_stream(stream)
                if length > MAX_MESSAGE:
                    return
                body = b""
                while len(body) < length:
                    chunk = await stream.read(length - len(body))
                    if not chunk:
                        return
                    body += chunk
                msg = Message()
                msg.ParseFromString(body)
                await self._answer(peer, msg)
        except Exception:  # the victim closed or reset the stream
            return

    async def _answer(self, peer: Any, msg: Message) -> None:
        haves: list[tuple[bytes, bool]] = []
        sends: list[tuple[bytes, bytes]] = []
        for entry in msg.wantlist.entries:
            if entry.cancel:
                continue
            self.stats.wants += 1
            cid = bytes(entry.block)
            want_block = entry.wantType == Message.Wantlist.Block
            self.stats.want_blocks += want_block
            if want_block:
                self.asked_for_block.set()
            if self.mode == "liar":
                haves.append((cid, True))  # for everything, and nothing ever follows
                continue
            held = self.blocks.get(cid[-32:])
            if held is None:
                if entry.sendDontHave:
                    haves.append((cid, False))
            elif want_block:
                sends.append(held)
            else:
                haves.append((cid, True))
        if haves:
            self.stats.haves_sent += sum(1 for _, h in haves if h)
            await self._write(peer, create_message(block_presences=haves).SerializeToString())
        for cid, data in sends:
            raw = create_message(blocks_v110=[(_prefix(cid), data)]).SerializeToString()
            assert self._nursery is not None
            self._nursery.start_soon(self._trickle, peer, raw)

    # -- answering on our own stream -----------------------------------------------------------

    async def _stream(self, peer: Any) -> tuple[Any, trio.Lock]:
        if peer not in self._out:
            stream = await self.host.new_stream(peer, [BITSWAP_PROTOCOL_V120])
            self._out[peer] = (stream, trio.Lock())
        return self._out[peer]

    async def _write(self, peer: Any, body: bytes) -> None:
        try:
            stream, lock = await self._stream(peer)
            async with lock:
                await stream.write(varint.encode(len(body)) + body)
        except Exception:
            self._out.pop(peer, None)

    async def _trickle(self, peer: Any, body: bytes) -> None:
        """The whole message, ``chunk`` bytes every ``pause`` seconds."""
        raw = varint.encode(len(body)) + body
        try:
            stream, lock = await self._stream(peer)
            async with lock:
                for i in range(0, len(raw), self.chunk):
                    await stream.write(raw[i : i + self.chunk])
                    self.stats.bytes_trickled += len(raw[i : i + self.chunk])
                    await trio.sleep(self.pause)
        except Exception:
            self._out.pop(peer, None)
