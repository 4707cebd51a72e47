"""What the bitswap engine sends back to a peer: its own response stream, and block messages.

Responses (blocks and presences) go out on a stream this node opens to the
peer, as boxo does (boxo never reads the streams it did not accept). One
:class:`ResponseSender` per peer owns that stream: writes are serialised,
bounded by ``send_timeout`` (a peer that stops reading is reset), and a
broken stream is reopened once.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio
from libp2p.abc import INetStream
from libp2p.bitswap.config import BITSWAP_PROTOCOL_V100
from libp2p.bitswap.messages import create_message
from libp2p.bitswap.pb.bitswap_pb2 import Message
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from fedstore_bitswap.wire import encode_message

if TYPE_CHECKING:
    from fedstore_bitswap.engine import FedstoreBitswapClient

__all__ = ["ResponseSender", "block_prefix", "blocks_message", "close_quietly"]

log = logging.getLogger("fedstore.backends.bitswap")


def block_prefix(cid_bytes: bytes) -> bytes:
    """Bitswap 1.1 block prefix: CID version, codec, hash code, hash length.

    For a CIDv0 that is ``00 70 12 20`` (what go-cid's ``Prefix().Bytes()``
    writes); py-libp2p's ``get_cid_prefix`` returns ``b""`` for CIDv0, which
    boxo's ``cid.PrefixFromBytes`` refuses.
    """
    if len(cid_bytes) == 34 and cid_bytes[:2] == b"\x12\x20":
        return b"\x00\x70\x12\x20"
    return cid_bytes[:-32]


def blocks_message(protocol: str, blocks: list[tuple[bytes, bytes]]) -> Message:
    """A message carrying ``(binary CID, data)`` blocks, shaped for the peer's ``protocol``."""
    if protocol == str(BITSWAP_PROTOCOL_V100):
        return create_message(blocks_v100=[data for _, data in blocks])
    return create_message(blocks_v110=[(block_prefix(cid), data) for cid, data in blocks])


class ResponseSender:
    """This node's own outbound stream to one peer, for blocks and presences."""

    def __init__(self, client: FedstoreBitswapClient, peer: ID, protocol: str) -> None:
        self._client = client
        self.peer = peer
        self.protocol = protocol
        self._stream: INetStream | None = None
        self._lock = trio.Lock()
        self.closed = False

    async def send(self, msg: Message) -> bool:
        """Write *msg*; reopen the stream once if it broke. False if the peer is unreachable."""
        limits = self._client.limits
        async with self._lock:
            for _attempt in range(2):
                if self.closed:
                    return False
                stream = self._stream or await self._open()
                if stream is None:
                    return False
                try:
                    with trio.fail_after(limits.send_timeout):
                        await stream.write(encode_message(msg))
                    return True
                except trio.TooSlowError:
                    log.info(
                        "peer %s did not read for %.0f s; reset", self.peer, limits.send_timeout
                    )
                    await self._drop(stream)
                    return False
                except Exception as exc:
                    log.debug("response stream to %s broke: %r", self.peer, exc)
                    await self._drop(stream)
            return False

    async def _open(self) -> INetStream | None:
        nursery = self._client._nursery
        try:
            with trio.fail_after(self._client.limits.open_stream_timeout):
                stream = await self._client.host.new_stream(self.peer, [TProtocol(self.protocol)])
        except Exception as exc:
            log.debug("cannot open %s stream to %s: %r", self.protocol, self.peer, exc)
            return None
        self._stream = stream
        if nursery is not None:
            nursery.start_soon(self._watch, stream)
        return stream

    async def _watch(self, stream: INetStream) -> None:
        """The peer never writes here: EOF or reset means it stopped reading this stream."""
        try:
            while await stream.read(65536):
                pass
        except Exception as exc:
            log.debug("response stream to %s closed: %r", self.peer, exc)
        if self._stream is stream:
            self._stream = None
        await close_quietly(stream)

    async def _drop(self, stream: INetStream) -> None:
        if self._stream is stream:
            self._stream = None
        try:
            await stream.reset()
        except Exception as exc:
            log.debug("reset of response stream to %s failed: %r", self.peer, exc)

    async def close(self) -> None:
        self.closed = True
        stream, self._stream = self._stream, None
        if stream is not None:
            await close_quietly(stream)


async def close_quietly(stream: INetStream) -> None:
    try:
        await stream.close()
    except Exception as exc:
        log.debug("stream close failed: %r", exc)
