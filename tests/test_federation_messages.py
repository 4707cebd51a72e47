"""fed-learn wire format: round trips and strict, bounded parsing."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedstore.errors import ProtocolError
from fedstore.federation.messages import (
    MAX_HEADER_BYTES,
    MAX_MESSAGE_BYTES,
    Done,
    MessageError,
    RoundOpen,
    UpdateMessage,
    decode_message,
)
from fedstore.ipld.cid import cid_of_bytes

CID_A = cid_of_bytes(b"a")
CID_B = cid_of_bytes(b"b", cid_version=1)


def _raw(kind: int, header: object, payload: bytes = b"", *, version: int = 1) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack(">4sBBH", b"FSFL", version, kind, len(raw)) + raw + payload


def test_round_trips() -> None:
    msgs = [
        UpdateMessage(3, "peer-1", 120, b"\x00tensors", base_cid=CID_A, metrics={"loss": 0.5}),
        UpdateMessage(3, "peer-1", 120, cid=CID_B, size=5_000_000),
        RoundOpen(4, 3, CID_A, "agg", quorum=3, deadline=12.5, attempt=2, received=("b", "a")),
        Done(10, CID_B, "agg"),
        Done(2, CID_A, "agg", status="failed", reason="too few updates"),
    ]
    for m in msgs:
        back = decode_message(m.encode())
        if isinstance(m, RoundOpen):
            assert back == RoundOpen(4, 3, CID_A, "agg", 3, 12.5, 2, ("a", "b"))
        else:
            assert back == m


def test_encoding_is_canonical() -> None:
    a = UpdateMessage(1, "p", 5, b"x", metrics={"b": 1.0, "a": 2.0})
    b = UpdateMessage(1, "p", 5, b"x", metrics={"a": 2.0, "b": 1.0})
    assert a.encode() == b.encode()


def test_sender_cannot_build_invalid_messages() -> None:
    with pytest.raises(MessageError):
        UpdateMessage(1, "p", 5, b"").encode()  # inline without payload
    with pytest.raises(MessageError):
        UpdateMessage(1, "p", 5, b"x", cid=CID_A, size=1).encode()  # both
    with pytest.raises(MessageError):
        UpdateMessage(1, "bad sender!", 5, b"x").encode()
    with pytest.raises(MessageError) as exc:
        UpdateMessage(1, "p", 5, b"x" * MAX_MESSAGE_BYTES).encode()
    assert exc.value.reason == "oversized"


GOOD_UPDATE = {"round": 1, "sender": "p", "num_samples": 5}


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "malformed"),
        (b"FSFL", "malformed"),
        (b"XXXX" + _raw(1, GOOD_UPDATE, b"x")[4:], "malformed"),
        (_raw(1, GOOD_UPDATE, b"x", version=2), "bad_version"),
        (_raw(9, GOOD_UPDATE, b"x"), "malformed"),
        (struct.pack(">4sBBH", b"FSFL", 1, 1, 500) + b"{}", "malformed"),  # header overruns
        (_raw(1, [1, 2], b"x"), "malformed"),
        (_raw(1, {**GOOD_UPDATE, "extra": 1}, b"x"), "malformed"),
        (_raw(1, {"round": 1, "sender": "p"}, b"x"), "malformed"),
        (_raw(1, {**GOOD_UPDATE, "round": 0}, b"x"), "malformed"),
        (_raw(1, {**GOOD_UPDATE, "round": True}, b"x"), "malformed"),
        (_raw(1, {**GOOD_UPDATE, "round": 1.5}, b"x"), "malformed"),
        (_raw(1, {**GOOD_UPDATE, "num_samples": -3}, b"x"), "malformed"),
        (_raw(1, {**GOOD_UPDATE, "sender": "a b"}, b"x"), "bad_sender"),
        (_raw(1, {**GOOD_UPDATE, "sender": "x" * 200}, b"x"), "bad_sender"),
        (_raw(1, GOOD_UPDATE, b""), "malformed"),
        (_raw(1, {**GOOD_UPDATE, "cid": CID_A}, b""), "malformed"),  # cid without size
        (_raw(1, {**GOOD_UPDATE, "cid": CID_A, "size": 3}, b"x"), "malformed"),
        (_raw(1, {**GOOD_UPDATE, "cid": "QmNotACid", "size": 3}), "bad_cid"),
        (_raw(1, {**GOOD_UPDATE, "metrics": {"loss": "high"}}, b"x"), "malformed"),
        (_raw(1, {**GOOD_UPDATE, "metrics": {"bad name": 1}}, b"x"), "malformed"),
        (_raw(2, {"round": 1}), "malformed"),
        (
            _raw(3, {"round": 1, "cid": CID_A, "aggregator": "a", "status": "ok", "reason": ""}),
            "malformed",
        ),
        (
            _raw(
                3,
                {"round": 1, "cid": CID_A, "aggregator": "a", "status": "complete", "reason": ""},
                b"payload",
            ),
            "malformed",
        ),
    ],
)
def test_rejects_malformed(data: bytes, reason: str) -> None:
    with pytest.raises(MessageError) as exc:
        decode_message(data)
    assert exc.value.reason == reason
    assert isinstance(exc.value, ProtocolError)


def test_rejects_duplicate_keys_nan_and_oversize() -> None:
    raw = b'{"round":1,"round":2,"sender":"p","num_samples":5}'
    data = struct.pack(">4sBBH", b"FSFL", 1, 1, len(raw)) + raw + b"x"
    with pytest.raises(MessageError, match="duplicate"):
        decode_message(data)
    raw = b'{"round":1,"sender":"p","num_samples":5,"metrics":{"l":NaN}}'
    data = struct.pack(">4sBBH", b"FSFL", 1, 1, len(raw)) + raw + b"x"
    with pytest.raises(MessageError, match="non-finite"):
        decode_message(data)
    with pytest.raises(MessageError) as exc:
        decode_message(b"FSFL" + b"\x00" * MAX_MESSAGE_BYTES)
    assert exc.value.reason == "oversized"
    big = struct.pack(">4sBBH", b"FSFL", 1, 1, MAX_HEADER_BYTES + 1) + b" " * (MAX_HEADER_BYTES + 1)
    with pytest.raises(MessageError, match="header length"):
        decode_message(big)


def test_round_base_must_precede_round() -> None:
    good = RoundOpen(5, 4, CID_A, "agg", quorum=2, deadline=1.0).encode()
    hdr = json.loads(good[8:].decode())
    hdr["base_round"] = 5
    with pytest.raises(MessageError):
        decode_message(_raw(2, hdr))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    for candidate in (data, b"FSFL\x01\x01" + data, b"FSFL\x01\x02\x00\x10" + data):
        try:
            decode_message(candidate)
        except MessageError:
            pass


def test_round_config_round_trips_and_is_omitted_when_empty() -> None:
    config = {"lr": 0.05, "epochs": 3, "phase": "warm-up", "big": -(2**53)}
    msg = RoundOpen(4, 3, CID_A, "agg", quorum=3, deadline=1.0, config=config)
    back = decode_message(msg.encode())
    assert isinstance(back, RoundOpen) and back == msg
    assert type(back.config["epochs"]) is int and type(back.config["lr"]) is float
    plain = RoundOpen(4, 3, CID_A, "agg", quorum=3, deadline=1.0)
    assert b"config" not in plain.encode()  # messages without a config are unchanged


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"flag": True}, "booleans are not allowed"),
        ({"x": "y" * 257}, "text longer than 256"),
        ({"bad name": 1}, "bad config name"),
        ({f"k{i}": i for i in range(33)}, "at most 32 entries"),
        ({"n": 2**53 + 1}, "integer out of range"),
        ({"n": float("inf")}, "not a finite number"),
        ({"n": [1, 2]}, "must be a string or a number, got list"),
        ([["lr", 1]], "must be an object"),
    ],
)
def test_bad_round_configs_are_refused_both_ways(config: object, match: str) -> None:
    with pytest.raises(MessageError, match=match) as info:
        RoundOpen(4, 3, CID_A, "agg", quorum=3, deadline=1.0, config=config).encode()  # type: ignore[arg-type]
    assert info.value.reason == "bad_config"
    header = {
        "round": 4,
        "base_round": 3,
        "base_cid": CID_A,
        "aggregator": "agg",
        "quorum": 3,
        "deadline": 1.0,
        "attempt": 1,
        "received": [],
        "config": config,
    }
    if isinstance(config, dict) and config.get("n") == float("inf"):
        return  # JSON has no Infinity: the strict header parser refuses it before (tested above)
    with pytest.raises(MessageError, match=match):
        decode_message(_raw(2, header))
