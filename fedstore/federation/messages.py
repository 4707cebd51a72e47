"""Messages of the federation protocol on the ``fed-learn`` topic. Pure, no I/O.

Wire format (all integers big-endian)::

    b"FSFL" | version (u8, = 1) | kind (u8) | header length (u16) | header | payload

The header is canonical JSON (sorted keys, no whitespace, ASCII, no NaN) of
at most :data:`MAX_HEADER_BYTES`; the payload is raw bytes whose meaning
depends on the kind. Three kinds exist:

``UPDATE`` (trainer -> aggregator)
    ``round``, ``sender``, ``num_samples``, optional ``metrics`` (name ->
    finite float) and ``base_cid`` (the global model it was trained from).
    The tensors travel either *inline* as the payload (a checkpoint made by
    :func:`fedstore.format.encode`), or, when that would not fit under the
    pubsub limit, stored through the backend chain and referenced by ``cid``
    and exact ``size`` with an empty payload. An optional ``encoding`` names
    a lossy encoding of the payload relative to ``base_cid`` (text such as
    ``int8`` or ``topk:0.05``, see :mod:`fedstore.federation.update_codec`);
    without it the payload is a lossless checkpoint of the full arrays.
``ROUND`` (aggregator -> trainers)
    round ``round`` is open, starting from global model ``base_round`` /
    ``base_cid``; ``attempt`` counts re-openings after a failed round,
    ``quorum`` is how many updates close it, ``deadline`` the seconds left,
    ``received`` lists the senders already accepted (a trainer missing
    from it re-sends its update, so a lost message costs one announcement
    interval, not the round), and the optional ``config`` is the strategy's
    per-round config for ``train(arrays, round, config)``: at most
    :data:`MAX_CONFIG` names (metric-name syntax) mapped to strings of at most
    :data:`MAX_CONFIG_TEXT` characters, integers (|n| <= 2**53) or finite
    floats.
``DONE`` (aggregator -> trainers)
    the federation ended at ``round`` with global model ``cid``;
    ``status`` is ``complete`` or ``failed`` (then ``reason`` says why).
``RESULT`` (aggregator -> members; federations with a manifest only)
    ``aggregator`` computed (or, leaderless, endorses) global model ``cid``
    for ``round`` from base ``base_cid`` with ``participants`` updates.

In a federation with a manifest (:mod:`fedstore.federation.manifest`) every
message also carries ``federation`` (the manifest's CID) and ``session``
(32 hex digits naming the run), so nothing from another federation or an
earlier run is taken for this one. Then an ``UPDATE`` also carries
``payload_cid`` (the CIDv1 of its tensor payload, inline or by reference)
and ``sig``: the sender's Ed25519 signature over its update claim
(:func:`update_claim`), which lets any member check an update listed in a
global checkpoint without having heard it; a ``ROUND`` carries
``deadline_at`` (the deadline as Unix time, so every member agrees on it)
and ``position`` (the sender's place in the round's duty order); a ``DONE``
carries ``at`` (Unix time it was sent: an old one replayed is stale).

Parsing is strict and bounded: sizes are checked before anything is
decoded, duplicate or unknown JSON keys, wrong types, out-of-range numbers,
malformed ids and CIDs are all rejected with
:class:`fedstore.errors.ProtocolError` (``reason`` gives a short counter
key). The tensors of an inline update are decoded separately, with a size
cap, by :func:`decode_tensors`.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np
import numpy.typing as npt

from fedstore.errors import FormatError, InvalidCIDError, ProtocolError
from fedstore.rounds import MAX_ROUND

__all__ = [
    "DEFAULT_INLINE_LIMIT",
    "FEDERATED_VERSION",
    "MAGIC",
    "MAX_CONFIG",
    "MAX_CONFIG_TEXT",
    "MAX_HEADER_BYTES",
    "MAX_METRICS",
    "MAX_MESSAGE_BYTES",
    "MAX_ROUND",
    "METRIC_NAME_RE",
    "Done",
    "MessageError",
    "MessageKind",
    "RoundOpen",
    "RoundResult",
    "UpdateMessage",
    "check_config",
    "check_session",
    "update_claim",
    "decode_message",
    "decode_tensors",
    "encode_tensors",
]

MAGIC = b"FSFL"
VERSION = 1
#: py-libp2p silently drops pubsub messages over 1 MiB; keep room for the
#: pubsub envelope (signature, key, seqno, topic) and the node's framing.
MAX_MESSAGE_BYTES = (1 << 20) - 32 * 1024
#: Default largest message sent inline; bigger updates go by CID.
DEFAULT_INLINE_LIMIT = MAX_MESSAGE_BYTES
MAX_HEADER_BYTES = 16 * 1024
MAX_SAMPLES = 10**12
MAX_METRICS = 32
MAX_RECEIVED = 1024
MAX_CONFIG = 32
MAX_CONFIG_TEXT = 256
_MAX_CONFIG_INT = 2**53
MAX_REFERENCED_BYTES = 1 << 34
_PREFIX = struct.Struct(">4sBBH")
_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
METRIC_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_CID_RE = re.compile(r"[A-Za-z0-9]{1,200}")
_SESSION_RE = re.compile(r"[0-9a-f]{32}")
#: Unix times in messages must lie in this range (years 2001-2286)
_MIN_TIME, _MAX_TIME = 1e9, 1e10
#: the marker of federated messages (federation + session) in docs and errors
FEDERATED_VERSION = 1
#: syntax of an update's ``encoding`` (its meaning: fedstore.federation.update_codec)
_ENCODING_RE = re.compile(r"[a-z0-9]{1,16}(?::[0-9a-z.+-]{1,24})?")


class MessageError(ProtocolError):
    """A federation message is malformed. ``reason`` is a short counter key."""

    def __init__(self, message: str, *, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason


class MessageKind(IntEnum):
    UPDATE = 1
    ROUND = 2
    DONE = 3
    RESULT = 4


@dataclass(frozen=True, slots=True)
class UpdateMessage:
    """A trainer's update for one round: inline ``payload`` or ``cid``/``size``."""

    round: int
    sender: str
    num_samples: int
    payload: bytes = b""
    cid: str | None = None
    size: int = 0
    base_cid: str | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    #: lossy encoding of the payload relative to ``base_cid``; None: a float32 checkpoint
    encoding: str | None = None
    #: manifest CID and session (federations with a manifest; both or neither)
    federation: str | None = None
    session: str | None = None
    #: CIDv1 of the tensor payload, and the sender's signature of the claim (base64)
    payload_cid: str | None = None
    sig: str | None = None

    def claim(self) -> bytes:
        """The statement :attr:`sig` signs (:func:`update_claim`); federated updates only."""
        if (
            self.federation is None
            or self.session is None
            or self.base_cid is None
            or self.payload_cid is None
        ):
            raise MessageError("only a federated update with base and payload CIDs has a claim")
        return update_claim(
            self.federation,
            self.session,
            self.round,
            self.base_cid,
            self.sender,
            self.num_samples,
            self.payload_cid,
            self.encoding,
        )

    def encode(self) -> bytes:
        header: dict[str, Any] = {
            "round": self.round,
            "sender": self.sender,
            "num_samples": self.num_samples,
        }
        _bind(header, self.federation, self.session)
        if self.payload_cid is not None:
            header["payload_cid"] = self.payload_cid
        if self.sig is not None:
            header["sig"] = self.sig
        if self.encoding is not None:
            if self.base_cid is None:
                raise MessageError("an encoded update names the base_cid it is relative to")
            header["encoding"] = self.encoding
        if self.metrics:
            header["metrics"] = {k: float(v) for k, v in self.metrics.items()}
        if self.base_cid is not None:
            header["base_cid"] = self.base_cid
        if self.cid is not None:
            if self.payload:
                raise MessageError("an update by CID carries no inline payload")
            header["cid"] = self.cid
            header["size"] = self.size
        elif not self.payload:
            raise MessageError("an inline update needs a payload")
        return _encode(MessageKind.UPDATE, header, self.payload)


@dataclass(frozen=True, slots=True)
class RoundOpen:
    """The aggregator's announcement that a round is open."""

    round: int
    base_round: int
    base_cid: str
    aggregator: str
    quorum: int
    deadline: float
    attempt: int = 1
    received: tuple[str, ...] = ()
    #: the strategy's config for this round (``train(arrays, round, config)``)
    config: Mapping[str, str | int | float] = field(default_factory=dict)
    federation: str | None = None
    session: str | None = None
    #: the deadline as Unix time, and the sender's place in the duty order (federated)
    deadline_at: float | None = None
    position: int | None = None

    def encode(self) -> bytes:
        header: dict[str, Any] = {
            "round": self.round,
            "base_round": self.base_round,
            "base_cid": self.base_cid,
            "aggregator": self.aggregator,
            "quorum": self.quorum,
            "deadline": round(float(self.deadline), 3),
            "attempt": self.attempt,
            "received": sorted(self.received),
        }
        _bind(header, self.federation, self.session)
        if self.deadline_at is not None:
            header["deadline_at"] = round(float(self.deadline_at), 3)
        if self.position is not None:
            header["position"] = self.position
        if self.config:
            header["config"] = check_config(self.config)
        return _encode(MessageKind.ROUND, header, b"")


@dataclass(frozen=True, slots=True)
class Done:
    """The aggregator's announcement that the federation ended."""

    round: int
    cid: str
    aggregator: str
    status: str = "complete"
    reason: str = ""
    federation: str | None = None
    session: str | None = None
    #: Unix time it was sent (federated)
    at: float | None = None

    def encode(self) -> bytes:
        header: dict[str, Any] = {
            "round": self.round,
            "cid": self.cid,
            "aggregator": self.aggregator,
            "status": self.status,
            "reason": self.reason,
        }
        _bind(header, self.federation, self.session)
        if self.at is not None:
            header["at"] = round(float(self.at), 3)
        return _encode(MessageKind.DONE, header, b"")


@dataclass(frozen=True, slots=True)
class RoundResult:
    """An aggregator's global model for a round (federated): computed or endorsed."""

    round: int
    cid: str
    base_cid: str
    aggregator: str
    participants: int
    federation: str
    session: str

    def encode(self) -> bytes:
        header: dict[str, Any] = {
            "round": self.round,
            "cid": self.cid,
            "base_cid": self.base_cid,
            "aggregator": self.aggregator,
            "participants": self.participants,
        }
        _bind(header, self.federation, self.session)
        return _encode(MessageKind.RESULT, header, b"")


Message = UpdateMessage | RoundOpen | Done | RoundResult


def update_claim(
    federation: str,
    session: str,
    round: int,
    base_cid: str,
    sender: str,
    num_samples: int,
    payload_cid: str,
    encoding: str | None = None,
) -> bytes:
    """The canonical statement a trainer signs for its update (domain ``fedstore/update/v1``).

    It binds the update to the federation, the run, the round and the base
    model it was trained from, and names the tensors by CID and how they are
    encoded (``float32``, or a lossy encoding relative to the base), so the
    signature stays checkable after the message is gone (the global
    checkpoint lists each update's sender, payload CID, samples, sig and
    encoding).
    """
    return json.dumps(
        {
            "base": base_cid,
            "encoding": encoding or "float32",
            "federation": federation,
            "num_samples": num_samples,
            "payload": payload_cid,
            "round": round,
            "sender": sender,
            "session": session,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    ).encode("ascii")


def _bind(header: dict[str, Any], federation: str | None, session: str | None) -> None:
    if (federation is None) != (session is None):
        raise MessageError("federation and session go together")
    if federation is not None:
        header["federation"] = federation
        header["session"] = session


def _encode(kind: MessageKind, header: Mapping[str, Any], payload: bytes) -> bytes:
    # Validate what we send with the same rules we apply to what we receive.
    raw = json.dumps(
        header, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")
    if len(raw) > MAX_HEADER_BYTES:
        raise MessageError(f"header of {len(raw)} bytes exceeds {MAX_HEADER_BYTES}")
    data = _PREFIX.pack(MAGIC, VERSION, int(kind), len(raw)) + raw + payload
    if len(data) > MAX_MESSAGE_BYTES:
        raise MessageError(
            f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}; send the update by CID",
            reason="oversized",
        )
    decode_message(data)
    return data


# -- strict header readers ---------------------------------------------------


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise MessageError(f"duplicate header key {key!r}")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise MessageError(f"non-finite number {name} in header")


def _int(h: Mapping[str, Any], key: str, lo: int, hi: int) -> int:
    v = h.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise MessageError(f"{key} must be an integer in [{lo}, {hi}], got {v!r:.40}")
    return v


def _float(h: Mapping[str, Any], key: str, lo: float, hi: float) -> float:
    v = h.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise MessageError(f"{key} must be a number, got {v!r:.40}")
    f = float(v)
    if not (math.isfinite(f) and lo <= f <= hi):
        raise MessageError(f"{key} out of range: {f}")
    return f


def _peer_id(h: Mapping[str, Any], key: str) -> str:
    v = h.get(key)
    if not isinstance(v, str) or not _ID_RE.fullmatch(v):
        raise MessageError(f"{key} is not a valid peer id: {v!r:.40}", reason="bad_sender")
    return v


def check_cid(value: object, key: str = "cid") -> str:
    """Return ``value`` if it is a CID string fedstore can parse; MessageError otherwise."""
    if not isinstance(value, str) or not _CID_RE.fullmatch(value):
        raise MessageError(f"{key} is not a CID: {value!r:.60}", reason="bad_cid")
    from fedstore.ipld.cid import parse_cid

    try:
        parse_cid(value)
    except InvalidCIDError as exc:
        raise MessageError(f"{key} is not a valid CID: {exc}", reason="bad_cid") from exc
    return value


def _keys(h: Mapping[str, Any], required: set[str], optional: set[str]) -> None:
    missing = required - h.keys()
    if missing:
        raise MessageError(f"missing header keys: {', '.join(sorted(missing))}")
    unknown = h.keys() - required - optional
    if unknown:
        raise MessageError(f"unknown header keys: {', '.join(sorted(unknown))[:120]}")


def _metrics(v: object) -> dict[str, float]:
    if not isinstance(v, dict) or len(v) > MAX_METRICS:
        raise MessageError(f"metrics must be an object of at most {MAX_METRICS} entries")
    out: dict[str, float] = {}
    for k in v:
        if not METRIC_NAME_RE.fullmatch(k):
            raise MessageError(f"bad metric name {k!r:.70}")
        out[k] = _float(v, k, -1e300, 1e300)
    return out


def check_config(v: object) -> dict[str, str | int | float]:
    """A round config as sent and received; MessageError (reason ``bad_config``) otherwise.

    At most :data:`MAX_CONFIG` entries, names matching :data:`METRIC_NAME_RE`,
    values strings of at most :data:`MAX_CONFIG_TEXT` characters, integers
    within +-2**53 or finite floats (booleans are refused: JSON cannot keep
    them apart from numbers in every reader).
    """
    if not isinstance(v, Mapping) or len(v) > MAX_CONFIG:
        raise MessageError(
            f"config must be an object of at most {MAX_CONFIG} entries", reason="bad_config"
        )
    out: dict[str, str | int | float] = {}
    for k, value in v.items():
        if not isinstance(k, str) or not METRIC_NAME_RE.fullmatch(k):
            raise MessageError(f"bad config name {k!r:.70}", reason="bad_config")
        if isinstance(value, bool):
            raise MessageError(f"config {k}: booleans are not allowed", reason="bad_config")
        if isinstance(value, str):
            if len(value) > MAX_CONFIG_TEXT:
                raise MessageError(
                    f"config {k}: text longer than {MAX_CONFIG_TEXT} characters",
                    reason="bad_config",
                )
            out[k] = value
        elif isinstance(value, int):
            if abs(value) > _MAX_CONFIG_INT:
                raise MessageError(f"config {k}: integer out of range", reason="bad_config")
            out[k] = value
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise MessageError(f"config {k}: not a finite number", reason="bad_config")
            out[k] = value
        else:
            raise MessageError(
                f"config {k}: must be a string or a number, got {type(value).__name__}",
                reason="bad_config",
            )
    return out


def decode_message(data: bytes) -> Message:
    """Parse one ``fed-learn`` message strictly; raise :class:`MessageError` otherwise."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise MessageError(f"message of {len(data)} bytes is too large", reason="oversized")
    if len(data) < _PREFIX.size:
        raise MessageError("message too short")
    magic, version, kind_byte, hlen = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise MessageError("not a federation message (bad magic)")
    if version != VERSION:
        raise MessageError(f"unsupported message version {version}", reason="bad_version")
    if hlen > MAX_HEADER_BYTES or _PREFIX.size + hlen > len(data):
        raise MessageError("header length out of bounds")
    raw = bytes(data[_PREFIX.size : _PREFIX.size + hlen])
    payload = bytes(data[_PREFIX.size + hlen :])
    try:
        header = json.loads(
            raw.decode("ascii"),
            object_pairs_hook=_reject_duplicates,
            parse_constant=_reject_constant,
        )
    except MessageError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MessageError(f"header is not ASCII JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise MessageError("header is not a JSON object")
    try:
        kind = MessageKind(kind_byte)
    except ValueError:
        raise MessageError(f"unknown message kind {kind_byte}") from None
    if kind is MessageKind.UPDATE:
        return _decode_update(header, payload)
    if payload:
        raise MessageError(f"{kind.name} messages carry no payload")
    if kind is MessageKind.ROUND:
        return _decode_round(header)
    if kind is MessageKind.RESULT:
        return _decode_result(header)
    return _decode_done(header)


_BINDING = {"federation", "session"}


def check_session(value: object, key: str = "session") -> str:
    """``value`` if it is a session id (32 lowercase hex digits); MessageError otherwise."""
    if not isinstance(value, str) or not _SESSION_RE.fullmatch(value):
        raise MessageError(f"{key} is not a session id: {value!r:.40}", reason="bad_session")
    return value


def _binding(
    h: Mapping[str, Any], needs: set[str], also: frozenset[str] = frozenset()
) -> tuple[str | None, str | None]:
    """The (federation, session) of a header; federated headers must have ``needs | also``.

    ``needs`` are keys only federated messages may carry; ``also`` keys open
    ones may carry too.
    """
    if ("federation" in h) != ("session" in h):
        raise MessageError("federation and session go together")
    if "federation" not in h:
        present = sorted(needs & h.keys())
        if present:
            raise MessageError(f"{', '.join(present)} only go with federation and session")
        return None, None
    missing = (needs | also) - h.keys()
    if missing:
        raise MessageError(f"federated message lacks {', '.join(sorted(missing))}")
    return check_cid(h["federation"], "federation"), check_session(h["session"])


def _time(h: Mapping[str, Any], key: str) -> float:
    return _float(h, key, _MIN_TIME, _MAX_TIME)


def _decode_update(h: dict[str, Any], payload: bytes) -> UpdateMessage:
    _keys(
        h,
        {"round", "sender", "num_samples"},
        {"metrics", "base_cid", "cid", "size", "encoding", "payload_cid", "sig"} | _BINDING,
    )
    rnd = _int(h, "round", 1, MAX_ROUND)
    sender = _peer_id(h, "sender")
    n = _int(h, "num_samples", 1, MAX_SAMPLES)
    metrics = _metrics(h["metrics"]) if "metrics" in h else {}
    base = check_cid(h["base_cid"], "base_cid") if "base_cid" in h else None
    encoding = _encoding(h["encoding"]) if "encoding" in h else None
    if encoding is not None and base is None:
        raise MessageError("an encoded update must name its base_cid", reason="bad_encoding")
    federation, session = _binding(h, {"payload_cid", "sig"}, frozenset({"base_cid"}))
    payload_cid = check_cid(h["payload_cid"], "payload_cid") if federation else None
    sig = h.get("sig") if federation else None
    if federation and (not isinstance(sig, str) or len(sig) != 88):
        raise MessageError("sig must be a base64 Ed25519 signature", reason="bad_signature")
    bound = {"federation": federation, "session": session, "payload_cid": payload_cid, "sig": sig}
    if ("cid" in h) != ("size" in h):
        raise MessageError("cid and size go together")
    if "cid" in h:
        if payload:
            raise MessageError("an update by CID must not carry an inline payload")
        cid = check_cid(h["cid"])
        size = _int(h, "size", 1, MAX_REFERENCED_BYTES)
        if federation and cid != payload_cid:
            raise MessageError("an update by CID names its payload by that CID")
        return UpdateMessage(rnd, sender, n, b"", cid, size, base, metrics, encoding, **bound)
    if not payload:
        raise MessageError("inline update without payload")
    return UpdateMessage(rnd, sender, n, payload, None, 0, base, metrics, encoding, **bound)


def _encoding(v: object) -> str:
    if not isinstance(v, str) or not _ENCODING_RE.fullmatch(v):
        raise MessageError(f"encoding is not an encoding name: {v!r:.40}", reason="bad_encoding")
    return v


def _decode_round(h: dict[str, Any]) -> RoundOpen:
    _keys(
        h,
        {
            "round",
            "base_round",
            "base_cid",
            "aggregator",
            "quorum",
            "deadline",
            "attempt",
            "received",
        },
        {"config", "deadline_at", "position"} | _BINDING,
    )
    federation, session = _binding(h, {"deadline_at", "position"})
    rnd = _int(h, "round", 1, MAX_ROUND)
    base_round = _int(h, "base_round", 0, rnd - 1)
    received = h["received"]
    if not isinstance(received, list) or len(received) > MAX_RECEIVED:
        raise MessageError(f"received must be a list of at most {MAX_RECEIVED} peer ids")
    ids = tuple(_peer_id({"id": r}, "id") for r in received)
    return RoundOpen(
        round=rnd,
        base_round=base_round,
        base_cid=check_cid(h["base_cid"], "base_cid"),
        aggregator=_peer_id(h, "aggregator"),
        quorum=_int(h, "quorum", 1, 1_000_000),
        deadline=_float(h, "deadline", 0.0, 1e7),
        attempt=_int(h, "attempt", 1, 1_000_000),
        received=ids,
        config=check_config(h["config"]) if "config" in h else {},
        federation=federation,
        session=session,
        deadline_at=_time(h, "deadline_at") if federation else None,
        position=_int(h, "position", 0, 1_000_000) if federation else None,
    )


def _decode_result(h: dict[str, Any]) -> RoundResult:
    _keys(h, {"round", "cid", "base_cid", "aggregator", "participants"} | _BINDING, set())
    federation, session = _binding(h, set())
    assert federation is not None and session is not None
    return RoundResult(
        round=_int(h, "round", 1, MAX_ROUND),
        cid=check_cid(h["cid"]),
        base_cid=check_cid(h["base_cid"], "base_cid"),
        aggregator=_peer_id(h, "aggregator"),
        participants=_int(h, "participants", 1, 1_000_000),
        federation=federation,
        session=session,
    )


def _decode_done(h: dict[str, Any]) -> Done:
    _keys(h, {"round", "cid", "aggregator", "status", "reason"}, {"at"} | _BINDING)
    federation, session = _binding(h, {"at"})
    status = h["status"]
    if status not in ("complete", "failed"):
        raise MessageError(f"unknown status {status!r:.40}")
    reason = h["reason"]
    if not isinstance(reason, str) or len(reason) > 500:
        raise MessageError("reason must be a string of at most 500 characters")
    return Done(
        round=_int(h, "round", 0, MAX_ROUND),
        cid=check_cid(h["cid"]),
        aggregator=_peer_id(h, "aggregator"),
        status=status,
        reason=reason,
        federation=federation,
        session=session,
        at=_time(h, "at") if federation else None,
    )


# -- tensors -----------------------------------------------------------------


def encode_tensors(
    arrays: Mapping[str, npt.NDArray[np.generic]], metadata: Mapping[str, str] | None = None
) -> bytes:
    """Encode tensors for an update (deterministic :func:`fedstore.format.encode`)."""
    from fedstore.format import encode

    return encode(arrays, metadata)


def decode_tensors(data: bytes, *, max_decoded_size: int) -> dict[str, npt.NDArray[np.generic]]:
    """Decode an update's tensors; a malformed or oversized payload is a ProtocolError."""
    from fedstore.format import decode

    try:
        ckpt = decode(data, max_decoded_size=max_decoded_size)
    except FormatError as exc:
        raise MessageError(f"update tensors do not decode: {exc}", reason="bad_tensors") from exc
    return dict(ckpt.arrays)
