"""``/fedstore/head/1.0.0``: ask a peer for its latest checkpoint (round, CID).

Gossipsub does not replay history, so a peer that was offline when a
checkpoint was announced would never hear of it. On connecting, and before
``sync``, a node asks its peers directly with this request/response
protocol of fedstore's own. One exchange per stream:

* request, client to server: the 5 bytes ``HEAD\\n``, then the client closes
  its write side;
* response, server to client: ``CID:<round>:<cid>`` (exactly the
  announcement format of :mod:`fedstore.p2p.messages`) or ``NONE`` when the
  server has no checkpoint, then the server closes.

Both sides read at most a few hundred bytes (anything longer is a protocol
error) and give up after a timeout, so a silent or babbling peer costs one
stream and a few seconds, never memory. Servers rate-limit requests per peer.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from fedstore.errors import NetworkError, ProtocolError
from fedstore.p2p.guard import DropCounters, PeerGuard
from fedstore.p2p.host import Stream
from fedstore.p2p.messages import (
    MAX_ANNOUNCEMENT_BYTES,
    Announcement,
    WireFormatError,
    format_announcement,
    parse_announcement,
)

__all__ = [
    "HEAD_PROTOCOL",
    "HeadServer",
    "PeerHead",
    "decode_response",
    "encode_response",
    "read_bounded",
    "request_head",
]

log = logging.getLogger(__name__)

HEAD_PROTOCOL = "/fedstore/head/1.0.0"
REQUEST = b"HEAD\n"
NONE = b"NONE"
MAX_REQUEST_BYTES = 64
MAX_RESPONSE_BYTES = MAX_ANNOUNCEMENT_BYTES
DEFAULT_TIMEOUT = 5.0

HeadFn = Callable[[], Awaitable[tuple[int, str] | None]]


@dataclass(frozen=True, slots=True)
class PeerHead:
    """What one peer answered: its latest *round* and *cid*."""

    peer_id: str
    round: int
    cid: str


async def read_bounded(stream: Stream, limit: int) -> bytes:
    """Read until end of stream; raise :class:`ProtocolError` past *limit* bytes."""
    buf = bytearray()
    while True:
        chunk = await stream.read(limit + 1 - len(buf))
        if not chunk:
            return bytes(buf)
        buf += chunk
        if len(buf) > limit:
            raise ProtocolError(f"peer sent more than {limit} bytes")


def encode_response(head: tuple[int, str] | None) -> bytes:
    return NONE if head is None else format_announcement(head[0], head[1])


def decode_response(data: bytes) -> Announcement | None:
    """Parse a head response; :class:`WireFormatError` if it is neither ``NONE`` nor valid."""
    if data == NONE:
        return None
    return parse_announcement(data)


async def request_head(
    open_stream: Callable[[str, str], Awaitable[Stream]],
    peer_id: str,
    *,
    timeout: float = DEFAULT_TIMEOUT,
) -> PeerHead | None:
    """Ask *peer_id* for its head; None if it has none.

    *open_stream* is :meth:`P2PHost.open_stream`. Raises
    :class:`~fedstore.errors.NetworkError` if the peer cannot be reached or
    does not answer within *timeout* seconds, :class:`ProtocolError` (or its
    subclass :class:`WireFormatError`) if the answer is malformed.
    """
    try:
        with trio.fail_after(timeout):
            stream = await open_stream(peer_id, HEAD_PROTOCOL)
            try:
                await stream.write(REQUEST)
                await stream.close_write()
                data = await read_bounded(stream, MAX_RESPONSE_BYTES)
            except BaseException:
                with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                    await stream.reset()
                raise
            await stream.close()
    except trio.TooSlowError as exc:
        raise NetworkError(f"{peer_id} did not answer a head request within {timeout:g} s") from exc
    answer = decode_response(data)
    return None if answer is None else PeerHead(peer_id, answer.round, answer.cid)


class HeadServer:
    """Serves head requests: reads the request (bounded, timed), answers, closes."""

    def __init__(
        self,
        get_head: HeadFn,
        *,
        guard: PeerGuard | None = None,
        counters: DropCounters | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._get_head = get_head
        self._guard = guard
        self._counters = counters or DropCounters()
        self._timeout = timeout
        self.served = 0

    async def handle(self, stream: Stream, peer_id: str) -> None:
        """Stream handler; never raises (bad requests reset the stream and are counted)."""
        if self._guard is not None and not self._guard.allow(peer_id):
            self._counters.drop(HEAD_PROTOCOL, "rate_limited", peer_id)
            await stream.reset()
            return
        try:
            with trio.fail_after(self._timeout):
                request = await read_bounded(stream, MAX_REQUEST_BYTES)
                if request != REQUEST:
                    raise WireFormatError(f"bad head request {request[:20]!r}", reason="malformed")
                head = await self._get_head()
                await stream.write(encode_response(head))
            await stream.close()
            self.served += 1
        except trio.TooSlowError:
            self._counters.drop(HEAD_PROTOCOL, "timeout", peer_id)
            await stream.reset()
        except WireFormatError as exc:
            self._counters.drop(HEAD_PROTOCOL, exc.reason, peer_id, str(exc))
            await stream.reset()
        except ProtocolError as exc:
            self._counters.drop(HEAD_PROTOCOL, "oversized", peer_id, str(exc))
            await stream.reset()
        except NetworkError as exc:
            log.debug("head request from %s broke: %s", peer_id, exc)
            await stream.reset()
