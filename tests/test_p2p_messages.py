"""Wire codecs: announcements and update envelopes (strict, never crash on garbage)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedstore.errors import ProtocolError
from fedstore.ipld.cid import cid_of_bytes
from fedstore.p2p.messages import (
    MAX_ANNOUNCEMENT_BYTES,
    MAX_ROUND,
    Announcement,
    EnvelopeKind,
    WireFormatError,
    decode_envelope,
    encode_inline,
    encode_reference,
    format_announcement,
    parse_announcement,
)

CID0 = cid_of_bytes(b"checkpoint bytes")
CID1 = cid_of_bytes(b"checkpoint bytes", cid_version=1)


@pytest.mark.parametrize("cid", [CID0, CID1])
@pytest.mark.parametrize("round_", [0, 1, 42, MAX_ROUND])
def test_announcement_roundtrip(cid: str, round_: int) -> None:
    data = format_announcement(round_, cid)
    assert data == f"CID:{round_}:{cid}".encode()
    assert parse_announcement(data) == Announcement(round_, cid)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "malformed"),
        (b"hello world", "malformed"),
        (b"CID:1", "malformed"),
        (f"CID:1:{CID0}:extra".encode(), "malformed"),
        (f"cid:1:{CID0}".encode(), "malformed"),
        (f"CID:abc:{CID0}".encode(), "bad_round"),
        (f"CID:-1:{CID0}".encode(), "bad_round"),
        (f"CID:+1:{CID0}".encode(), "bad_round"),
        (f"CID:01:{CID0}".encode(), "bad_round"),
        (f"CID:1.5:{CID0}".encode(), "bad_round"),
        (f"CID::{CID0}".encode(), "bad_round"),
        (f"CID:{MAX_ROUND + 1}:{CID0}".encode(), "bad_round"),
        (f"CID:99999999999999999999:{CID0}".encode(), "bad_round"),
        (b"CID:3:", "bad_cid"),
        (b"CID:3:QmNotReallyACidAtAll", "bad_cid"),
        (b"CID:3:Qm" + b"1" * 44, "bad_cid"),
        (f"CID:3:{CID0} ".encode(), "bad_cid"),
        (f"CID:3:{CID0}\n".encode(), "bad_cid"),
        (b"CID:3:" + b"a" * 300, "oversized"),
        ("CID:3:Qmé".encode(), "bad_cid"),
    ],
)
def test_bad_announcements_rejected_with_reason(data: bytes, reason: str) -> None:
    with pytest.raises(WireFormatError) as info:
        parse_announcement(data)
    assert info.value.reason == reason
    assert isinstance(info.value, ProtocolError)


def test_format_refuses_invalid_parts() -> None:
    with pytest.raises(WireFormatError):
        format_announcement(-1, CID0)
    with pytest.raises(WireFormatError):
        format_announcement(1, "not-a-cid")


@given(st.binary(max_size=MAX_ANNOUNCEMENT_BYTES + 50))
def test_parse_never_crashes_on_random_bytes(data: bytes) -> None:
    try:
        ann = parse_announcement(data)
    except WireFormatError as exc:
        assert exc.reason in {"malformed", "bad_round", "bad_cid", "oversized"}
    else:  # the only way to be accepted is to be canonical
        assert format_announcement(ann.round, ann.cid) == data


@given(st.integers(min_value=0, max_value=MAX_ROUND))
def test_any_valid_round_roundtrips(round_: int) -> None:
    assert parse_announcement(format_announcement(round_, CID1)).round == round_


def test_inline_envelope_roundtrip_and_limit() -> None:
    env = decode_envelope(encode_inline(b"abc", limit=10), inline_limit=10, max_reference_size=0)
    assert env.kind is EnvelopeKind.INLINE and env.data == b"abc"
    with pytest.raises(WireFormatError, match="inline limit"):
        encode_inline(b"x" * 11, limit=10)
    # a peer with a larger limit sent more than we accept
    big = encode_inline(b"x" * 11, limit=100)
    with pytest.raises(WireFormatError) as info:
        decode_envelope(big, inline_limit=10, max_reference_size=0)
    assert info.value.reason == "oversized"


def test_reference_envelope_roundtrip_and_limits() -> None:
    env = decode_envelope(
        encode_reference(CID1, 5_000_000), inline_limit=10, max_reference_size=10_000_000
    )
    assert (env.kind, env.cid, env.size) == (EnvelopeKind.REFERENCE, CID1, 5_000_000)
    with pytest.raises(WireFormatError) as info:
        decode_envelope(encode_reference(CID1, 50), inline_limit=10, max_reference_size=49)
    assert info.value.reason == "oversized"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "malformed"),
        (b"FSE1", "malformed"),
        (b"XXXX\x00abc", "malformed"),
        (b"FSE1\x07abc", "malformed"),
        (b"FSE1\x01nocolon", "malformed"),
        (b"FSE1\x01" + CID0.encode() + b":-5", "malformed"),
        (b"FSE1\x01QmBogusBogus:5", "bad_cid"),
    ],
)
def test_bad_envelopes_rejected(data: bytes, reason: str) -> None:
    with pytest.raises(WireFormatError) as info:
        decode_envelope(data, inline_limit=100, max_reference_size=100)
    assert info.value.reason == reason


@given(st.binary(max_size=300))
def test_decode_envelope_never_crashes(data: bytes) -> None:
    try:
        decode_envelope(data, inline_limit=200, max_reference_size=10**9)
    except WireFormatError:
        pass
