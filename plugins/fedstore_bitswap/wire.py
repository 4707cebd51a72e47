"""Bitswap message framing: read length-prefixed messages from a stream in large chunks.

py-libp2p 0.8.1's ``BitswapClient._read_message`` reads the varint length one
byte at a time (one stream read, and with upstream's yamux one window update,
per byte) and then grows the body with ``bytes +=`` (quadratic copying for a
256 KiB block). :class:`MessageReader` reads whatever the stream has (up to
:data:`READ_SIZE`), cuts messages out of its buffer and parses them in place.
Same wire format: an unsigned varint length, then a ``bitswap_pb2.Message``.
"""

from __future__ import annotations

import logging

from google.protobuf.message import DecodeError
from libp2p.abc import INetStream
from libp2p.bitswap.config import MAX_MESSAGE_SIZE
from libp2p.bitswap.pb.bitswap_pb2 import Message
from libp2p.exceptions import BaseLibp2pError
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.stream_muxer.exceptions import MuxedStreamEOF

__all__ = ["READ_SIZE", "MessageReader", "MessageTooLarge", "encode_message"]

log = logging.getLogger("fedstore.backends.bitswap")

#: Largest single read from the stream.
READ_SIZE = 1024 * 1024


class MessageTooLarge(ValueError):
    """A peer announced a message above bitswap's 4 MiB limit."""


def encode_message(msg: Message) -> bytes:
    """*msg* with its varint length prefix, ready to write."""
    body = msg.SerializeToString()
    if len(body) > MAX_MESSAGE_SIZE:
        raise MessageTooLarge(f"bitswap message of {len(body)} bytes exceeds {MAX_MESSAGE_SIZE}")
    n = len(body)
    prefix = bytearray()
    while n >= 0x80:
        prefix.append((n & 0x7F) | 0x80)
        n >>= 7
    prefix.append(n)
    return bytes(prefix) + body


class MessageReader:
    """Length-prefixed bitswap messages from one stream (one reader per stream)."""

    def __init__(self, stream: INetStream, max_size: int = MAX_MESSAGE_SIZE) -> None:
        self._stream = stream
        self._max = max_size
        self._buf = bytearray()
        self._pos = 0

    def _header(self) -> tuple[int, int] | None:
        """(body length, header bytes) if a whole varint is buffered."""
        buf, pos = self._buf, self._pos
        value = shift = 0
        for i in range(pos, min(len(buf), pos + 10)):
            byte = buf[i]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value, i + 1 - pos
            shift += 7
        if len(buf) - pos >= 10:
            raise MessageTooLarge("varint length prefix longer than 10 bytes")
        return None

    async def _fill(self) -> bool:
        """Read more bytes; False at end of stream."""
        try:
            chunk = await self._stream.read(READ_SIZE)
        except (StreamEOF, MuxedStreamEOF):
            return False
        if not chunk:
            return False
        if self._pos and self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        elif self._pos > READ_SIZE:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += chunk
        return True

    async def read(self) -> Message | None:
        """The next message, or None at end of stream, when the stream broke, or
        when the peer sent something that is not a bitswap message (an
        over-long length or an undecodable body: the caller drops the stream).
        """
        try:
            while (header := self._header()) is None:
                if not await self._fill():
                    return None
            length, used = header
            if length > self._max:
                raise MessageTooLarge(f"peer announced a {length}-byte bitswap message")
            end = self._pos + used + length
            while len(self._buf) < end:
                if not await self._fill():
                    return None
                end = self._pos + used + length
            msg = Message()
            with memoryview(self._buf) as view:
                # upb parses any buffer (the stubs say bytes): no copy of the body
                msg.ParseFromString(view[self._pos + used : end])  # type: ignore[arg-type]
            self._pos = end
            return msg
        except BaseLibp2pError as exc:
            log.debug("bitswap stream ended: %r", exc)
            return None
        except (MessageTooLarge, DecodeError) as exc:
            log.info("bitswap stream dropped: %s", exc or type(exc).__name__)
            return None
