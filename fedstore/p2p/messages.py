"""Wire codecs for fedstore's two gossipsub topics. Pure functions, no I/O.

``model-cids`` carries checkpoint announcements in the original design's
text format, kept for compatibility::

    CID:<round>:<cid>

``<round>`` is a decimal integer without sign or leading zeros (``0`` itself
is allowed), at most :data:`MAX_ROUND`; ``<cid>`` must parse as a CID
(:func:`fedstore.ipld.cid.parse_cid`). The whole message is ASCII, at most
:data:`MAX_ANNOUNCEMENT_BYTES` bytes, with no whitespace, not even a trailing
newline. Anything else is rejected with :class:`WireFormatError`.

``fed-learn`` (and any other topic a user joins) carries *update envelopes*:
a 4-byte magic, one kind byte, then the payload:

* ``FSE1 0x00 <data>``: the data itself (at most the configured inline limit,
  well under py-libp2p's 1 MiB RPC limit, which drops larger messages without
  a word);
* ``FSE1 0x01 <cid>:<size>``: the data was stored through the backend chain
  and must be fetched (and verified) by CID; ``<size>`` is its exact length.

What goes inside an envelope (tensors, round numbers, sample counts) is the
business of the layer above; the node only moves bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum

from fedstore.errors import InvalidCIDError, ProtocolError
from fedstore.rounds import MAX_ROUND, parse_round, validate_round

__all__ = [
    "ANNOUNCE_TOPIC",
    "ENVELOPE_MAGIC",
    "MAX_ANNOUNCEMENT_BYTES",
    "MAX_ROUND",
    "PUBSUB_MAX_MESSAGE",
    "TRAINING_TOPIC",
    "Announcement",
    "Envelope",
    "EnvelopeKind",
    "WireFormatError",
    "decode_envelope",
    "encode_inline",
    "encode_reference",
    "format_announcement",
    "parse_announcement",
    "parse_round",
    "validate_cid",
    "validate_round",
]

#: Topic of checkpoint announcements (``CID:<round>:<cid>``).
ANNOUNCE_TOPIC = "model-cids"
#: Topic of live training traffic (update envelopes).
TRAINING_TOPIC = "fed-learn"

#: Longest announcement accepted; a CIDv1 in base32 with sha2-256 is 59 chars.
MAX_ANNOUNCEMENT_BYTES = 256
#: py-libp2p drops any single pubsub message above this size (1 MiB) silently.
PUBSUB_MAX_MESSAGE = 1 << 20

ENVELOPE_MAGIC = b"FSE1"
_MAX_REFERENCE_BYTES = 256
_ANNOUNCE_RE = re.compile(rb"CID:(0|[1-9][0-9]{0,12}):([A-Za-z0-9]{1,200})")
_REFERENCE_RE = re.compile(rb"([A-Za-z0-9]{1,200}):(0|[1-9][0-9]{0,15})")


class WireFormatError(ProtocolError):
    """A message does not follow the wire format. ``reason`` is a short counter key."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def validate_cid(cid: str) -> str:
    """Return *cid* if :func:`fedstore.ipld.parse_cid` accepts it, else raise WireFormatError."""
    from fedstore.ipld.cid import parse_cid

    try:
        parse_cid(cid)
    except InvalidCIDError as exc:
        raise WireFormatError(f"invalid CID {cid[:80]!r}: {exc}", reason="bad_cid") from exc
    return cid


@dataclass(frozen=True, slots=True)
class Announcement:
    """A checkpoint announcement: round *round* is available under *cid*."""

    round: int
    cid: str

    def encode(self) -> bytes:
        return format_announcement(self.round, self.cid)


def format_announcement(round: int, cid: str) -> bytes:
    """Encode ``CID:<round>:<cid>``, validating both parts first."""
    try:
        validate_round(round)
    except ValueError as exc:
        raise WireFormatError(str(exc), reason="bad_round") from exc
    validate_cid(cid)
    data = f"CID:{round}:{cid}".encode("ascii")
    if len(data) > MAX_ANNOUNCEMENT_BYTES:
        raise WireFormatError("announcement too long", reason="oversized")
    return data


def parse_announcement(data: bytes) -> Announcement:
    """Decode a ``model-cids`` message strictly; raise :class:`WireFormatError` otherwise.

    ``reason`` is one of ``oversized``, ``malformed``, ``bad_round``, ``bad_cid``.
    """
    if len(data) > MAX_ANNOUNCEMENT_BYTES:
        raise WireFormatError(
            f"announcement of {len(data)} bytes exceeds {MAX_ANNOUNCEMENT_BYTES}",
            reason="oversized",
        )
    if not data.startswith(b"CID:") or data.count(b":") != 2:
        raise WireFormatError(
            f"not an announcement (expected CID:<round>:<cid>): {data[:40]!r}", reason="malformed"
        )
    match = _ANNOUNCE_RE.fullmatch(data)
    if match is None:
        round_part = data.split(b":")[1]
        if not round_part.isdigit() or (len(round_part) > 1 and round_part.startswith(b"0")):
            raise WireFormatError(f"round is not a number: {round_part[:20]!r}", reason="bad_round")
        if len(round_part) > 13:
            raise WireFormatError("round out of range", reason="bad_round")
        raise WireFormatError(f"malformed CID field: {data[:80]!r}", reason="bad_cid")
    round_ = int(match.group(1))
    if round_ > MAX_ROUND:
        raise WireFormatError(f"round {round_} exceeds {MAX_ROUND}", reason="bad_round")
    cid = match.group(2).decode("ascii")
    validate_cid(cid)
    return Announcement(round_, cid)


class EnvelopeKind(IntEnum):
    INLINE = 0
    REFERENCE = 1


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded update envelope: inline *data*, or a *cid* and exact *size* to fetch."""

    kind: EnvelopeKind
    data: bytes = b""
    cid: str | None = None
    size: int = 0


def encode_inline(data: bytes, *, limit: int) -> bytes:
    """Wrap *data* in an inline envelope; raise :class:`WireFormatError` above *limit* bytes."""
    if len(data) > limit:
        raise WireFormatError(
            f"{len(data)} bytes exceed the inline limit of {limit}; send a reference",
            reason="oversized",
        )
    return ENVELOPE_MAGIC + bytes([EnvelopeKind.INLINE]) + data


def encode_reference(cid: str, size: int) -> bytes:
    """Wrap a reference to *size* bytes stored under *cid*."""
    validate_cid(cid)
    if size < 0:
        raise WireFormatError("size must not be negative", reason="malformed")
    return ENVELOPE_MAGIC + bytes([EnvelopeKind.REFERENCE]) + f"{cid}:{size}".encode("ascii")


def decode_envelope(data: bytes, *, inline_limit: int, max_reference_size: int) -> Envelope:
    """Decode an update envelope strictly.

    Raises :class:`WireFormatError` with ``reason`` ``malformed`` (no magic,
    unknown kind, bad reference text), ``oversized`` (inline data above
    *inline_limit*, or a reference to more than *max_reference_size* bytes)
    or ``bad_cid``.
    """
    if len(data) < 5 or not data.startswith(ENVELOPE_MAGIC):
        raise WireFormatError("not a fedstore envelope (bad magic)", reason="malformed")
    kind_byte, body = data[4], data[5:]
    if kind_byte == EnvelopeKind.INLINE:
        if len(body) > inline_limit:
            raise WireFormatError(
                f"inline payload of {len(body)} bytes exceeds {inline_limit}", reason="oversized"
            )
        return Envelope(EnvelopeKind.INLINE, data=body)
    if kind_byte == EnvelopeKind.REFERENCE:
        if len(body) > _MAX_REFERENCE_BYTES:
            raise WireFormatError("reference text too long", reason="oversized")
        match = _REFERENCE_RE.fullmatch(body)
        if match is None:
            raise WireFormatError(f"malformed reference {body[:60]!r}", reason="malformed")
        size = int(match.group(2))
        if size > max_reference_size:
            raise WireFormatError(
                f"referenced object of {size} bytes exceeds {max_reference_size}",
                reason="oversized",
            )
        cid = validate_cid(match.group(1).decode("ascii"))
        return Envelope(EnvelopeKind.REFERENCE, cid=cid, size=size)
    raise WireFormatError(f"unknown envelope kind {kind_byte}", reason="malformed")
