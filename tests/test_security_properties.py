"""Property tests: every decoder of peer data gives a value or a clean fedstore error.

Each decoder below is fed arbitrary bytes and, more usefully, *near-valid*
input built from the real wire format with hostile field values (lying
lengths, huge numbers, wrong types, duplicated keys). The only acceptable
outcomes are a correct value or the decoder's documented fedstore error;
never another exception, never a hang (hypothesis ``deadline``), and, for
a handful of adversarial inputs that declare huge sizes, never more than a
small, fixed amount of memory (tracemalloc peak).

Decoders covered: the checkpoint codec, the ``model-cids`` announcement and
head-protocol parsers, the update envelope, the federation message and
tensor decoders, binary CIDs, dag-pb / UnixFS blocks and CAR archives.
(Their own test files hold the format-specific cases; these are the
cross-cutting "whatever arrives from the network" properties.)
"""

from __future__ import annotations

import io
import json
import struct
import tracemalloc
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedstore.errors import FormatError, IntegrityError, InvalidCIDError, ProtocolError
from fedstore.federation.messages import (
    MessageError,
    UpdateMessage,
    decode_message,
    decode_tensors,
)
from fedstore.format import decode, encode
from fedstore.format.container import FIXED
from fedstore.ipld.blocks import decode_block
from fedstore.ipld.car import car_header, read_car_verified
from fedstore.ipld.cid import cid_from_bytes, cid_of_bytes, read_binary_cid
from fedstore.ipld.unixfs import (
    CODEC_DAG_PB,
    CODEC_RAW,
    Link,
    binary_cid,
    decode_pbnode,
    decode_unixfs,
    decode_varint,
    encode_internal_node,
    encode_varint,
)
from fedstore.p2p.headproto import decode_response
from fedstore.p2p.messages import (
    MAX_ROUND,
    EnvelopeKind,
    WireFormatError,
    decode_envelope,
    encode_inline,
    encode_reference,
    format_announcement,
    parse_announcement,
)

#: A decoder taking longer than this on one example is treated as a hang.
HANG = timedelta(seconds=3)
PROPS = settings(
    max_examples=150,
    deadline=HANG,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

CIDS = [
    cid_of_bytes(b"a"),
    cid_of_bytes(b"b", cid_version=1),
    cid_of_bytes(b"c" * 300_000, cid_version=1),
]
PEER = "12D3KooWPropertyPeer"

# -- strategies -------------------------------------------------------------------------

cid_strings = st.one_of(
    st.sampled_from(CIDS),
    st.sampled_from(CIDS).map(lambda c: c.upper() if c.startswith("b") else c),
    st.sampled_from(CIDS).flatmap(
        lambda c: st.integers(0, len(c) - 1).map(lambda i: c[:i] + "1" + c[i + 1 :])
    ),
    st.text("QmbBzfF0123456789abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ/.:-", max_size=80),
)
round_texts = st.one_of(
    st.integers(0, MAX_ROUND * 10).map(str),
    st.sampled_from(["", "-1", "01", "+3", "1e3", "0x10", "../1", " 1", "1 ", "٣", "9" * 40]),
)


@st.composite
def announcement_like(draw: st.DrawFn) -> bytes:
    prefix = draw(st.sampled_from(["CID:", "CID:", "CID:", "cid:", "CID", "CID::"]))
    sep = draw(st.sampled_from([":", ":", "::", ";"]))
    tail = draw(st.sampled_from(["", "", "\n", " ", ":x", "\x00"]))
    return f"{prefix}{draw(round_texts)}{sep}{draw(cid_strings)}{tail}".encode(
        "utf-8", "surrogatepass"
    )


json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=20),
        st.sampled_from([*CIDS, PEER, "complete", "failed", "x" * 600]),
    ),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
header_keys = st.sampled_from(
    [
        "round", "sender", "num_samples", "metrics", "base_cid", "cid", "size", "base_round",
        "aggregator", "quorum", "deadline", "attempt", "received", "status", "reason", "extra",
    ]
)  # fmt: skip


@st.composite
def federation_message_like(draw: st.DrawFn) -> bytes:
    header = draw(st.dictionaries(header_keys, json_values, max_size=10))
    raw = json.dumps(header, sort_keys=draw(st.booleans()), separators=(",", ":")).encode()
    if draw(st.booleans()):  # a duplicated key
        raw = raw[:-1] + (b',"round":1}' if len(raw) > 2 else b'"round":1}')
    declared = draw(st.one_of(st.just(len(raw)), st.integers(0, 0xFFFF)))
    version = draw(st.sampled_from([1, 1, 1, 0, 2, 255]))
    kind = draw(st.sampled_from([1, 2, 3, 0, 4, 255]))
    payload = draw(st.binary(max_size=64))
    return struct.pack(">4sBBH", b"FSFL", version, kind, declared) + raw + payload


@st.composite
def checkpoint_like(draw: st.DrawFn) -> bytes:
    """A fixed header with arbitrary field values in front of a real or random frame."""
    metadata = draw(st.sampled_from([b"{}", b'{"round":"1"}', b'{"a":1}', b"[]", b"{", b""]))
    if draw(st.booleans()):
        payload = draw(st.binary(max_size=200))
        frame = zstandard.ZstdCompressor(write_checksum=True).compress(payload)
    else:
        frame = draw(st.binary(max_size=200))
    u64 = st.one_of(st.integers(0, 2**64 - 1), st.integers(0, 4096))
    fields = (
        draw(st.sampled_from([b"FSCK", b"FSCK", b"PK\x03\x04", b"\x80\x04\x95\x00"])),
        draw(st.sampled_from([1, 1, 0, 2])),
        draw(st.sampled_from([1, 1, 0, 2])),
        draw(st.sampled_from([0, 1, 2, 0xFFFF])),
        draw(u64),
        draw(st.one_of(st.just(len(frame)), u64)),
        draw(st.one_of(st.just(len(metadata)), st.integers(0, 2**32 - 1))),
    )
    return FIXED.pack(*fields) + metadata + frame


@st.composite
def protobuf_like(draw: st.DrawFn, depth: int = 2) -> bytes:
    """Protobuf-shaped bytes: tagged fields with varint or length-delimited values."""
    out = bytearray()
    for _ in range(draw(st.integers(0, 6))):
        fnum = draw(st.integers(0, 6))
        wtype = draw(st.sampled_from([0, 2, 2, 1, 5, 7]))
        out += encode_varint((fnum << 3) | wtype)
        if wtype == 0:
            out += encode_varint(draw(st.integers(0, 2**63 - 1)))
        elif wtype == 2:
            inner = (
                draw(protobuf_like(depth=depth - 1))
                if depth > 0 and draw(st.booleans())
                else draw(st.binary(max_size=40))
            )
            length = draw(st.one_of(st.just(len(inner)), st.integers(0, 2**63 - 1)))
            out += encode_varint(length) + inner
        else:
            out += draw(st.binary(max_size=8))
    return bytes(out)


# -- the checkpoint codec --------------------------------------------------------------------


@PROPS
@given(st.one_of(checkpoint_like(), st.binary(max_size=300)))
def test_checkpoint_decoder_gives_format_error_or_checkpoint(data: bytes) -> None:
    try:
        ckpt = decode(data, max_decoded_size=1 << 20)
    except FormatError:
        return
    assert sum(a.nbytes for a in ckpt.arrays.values()) <= 1 << 20
    assert all(isinstance(v, str) for v in ckpt.metadata.values())


def _peak(fn: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        fn()
    except (FormatError, InvalidCIDError, IntegrityError, ProtocolError):
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def _st_payload(index: dict[str, Any], data: bytes = b"") -> bytes:
    body = json.dumps(index, separators=(",", ":")).encode()
    body += b" " * (-len(body) % 8)
    return len(body).to_bytes(8, "little") + body + data


def _blob(payload: bytes, raw_size: int | None = None, metadata: bytes = b"{}") -> bytes:
    frame = zstandard.ZstdCompressor(write_checksum=True).compress(payload)
    raw = len(payload) if raw_size is None else raw_size
    return FIXED.pack(b"FSCK", 1, 1, 0, raw, len(frame), len(metadata)) + metadata + frame


ADVERSARIAL_CHECKPOINTS = {
    "raw size 7 GiB, tiny frame": FIXED.pack(b"FSCK", 1, 1, 0, 7 << 30, 9, 2) + b"{}" + b"\0" * 9,
    "metadata length 4 GiB": FIXED.pack(b"FSCK", 1, 1, 0, 10, 10, 2**32 - 1) + b"{}",
    "index length 2**63": _blob((2**63).to_bytes(8, "little") + b"{}"),
    "tensor of 2**40 elements": _blob(
        _st_payload({"x": {"dtype": "F32", "shape": [2**20, 2**20], "data_offsets": [0, 2**42]}})
    ),
    "shape product overflows u64": _blob(
        _st_payload({"x": {"dtype": "U8", "shape": [2**32, 2**32, 2**32], "data_offsets": [0, 8]}})
    ),
    "10,000 one-byte tensors claimed": _blob(
        _st_payload(
            {
                f"t{i}": {"dtype": "U8", "shape": [1], "data_offsets": [i, i + 1]}
                for i in range(10_000)
            }
        )
    ),
}


def _carried_index_len(blob: bytes) -> int:
    """Length of the safetensors index a blob's frame really starts with (0 if none)."""
    meta_len = FIXED.unpack_from(blob)[6]
    try:
        head = (
            zstandard.ZstdDecompressor().decompressobj().decompress(blob[FIXED.size + meta_len :])
        )
    except zstandard.ZstdError:
        return 0
    return min(int.from_bytes(head[:8], "little"), len(head))


@pytest.mark.parametrize("name", list(ADVERSARIAL_CHECKPOINTS))
def test_adversarial_checkpoints_are_refused_in_bounded_memory(name: str) -> None:
    data = ADVERSARIAL_CHECKPOINTS[name]
    with pytest.raises(FormatError):
        decode(data)
    peak = _peak(lambda: decode(data))
    # Memory may grow with the safetensors index the blob really carries (parsed
    # JSON costs ~15x its text; the index is capped at MAX_INDEX_BYTES, 16 MiB),
    # never with the sizes it merely declares.
    bound = 8 * len(data) + 24 * _carried_index_len(data) + (2 << 20)
    assert peak < bound, f"{name}: peak {peak:,} bytes, bound {bound:,}"


# -- announcements, head answers and envelopes --------------------------------------------


@PROPS
@given(st.one_of(announcement_like(), st.binary(max_size=300)))
def test_announcement_parser_is_strict_and_canonical(data: bytes) -> None:
    """Accepted only if it is exactly what the sender's encoder would produce."""
    try:
        ann = parse_announcement(data)
    except WireFormatError as exc:
        assert exc.reason in {"oversized", "malformed", "bad_round", "bad_cid"}
        return
    assert 0 <= ann.round <= MAX_ROUND
    assert format_announcement(ann.round, ann.cid) == data
    assert decode_response(data) == ann


@PROPS
@given(st.one_of(st.just(b"NONE"), st.binary(max_size=40), announcement_like()))
def test_head_response_is_none_an_announcement_or_an_error(data: bytes) -> None:
    try:
        answer = decode_response(data)
    except WireFormatError:
        return
    assert (answer is None) == (data == b"NONE")


@st.composite
def envelope_like(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from([0, 1, 1, 2, 255]))
    if kind == 1:
        size = draw(st.one_of(st.integers(0, 2**70).map(str), st.sampled_from(["", "01", "-1"])))
        body = f"{draw(cid_strings)}:{size}".encode("utf-8", "surrogatepass")
    else:
        body = draw(st.binary(max_size=120))
    return b"FSE1" + bytes([kind]) + body


@PROPS
@given(st.one_of(envelope_like(), st.binary(max_size=200)))
def test_envelope_decoder_is_strict_and_canonical(data: bytes) -> None:
    try:
        env = decode_envelope(data, inline_limit=100, max_reference_size=1 << 30)
    except WireFormatError as exc:
        assert exc.reason in {"oversized", "malformed", "bad_cid"}
        return
    if env.kind is EnvelopeKind.INLINE:
        assert len(env.data) <= 100 and encode_inline(env.data, limit=100) == data
    else:
        assert env.cid is not None and env.size <= 1 << 30
        assert encode_reference(env.cid, env.size) == data


# -- federation messages and update tensors -------------------------------------------------


@pytest.mark.slow
@PROPS
@given(st.one_of(federation_message_like(), st.binary(max_size=200)))
def test_federation_message_decoder_gives_message_or_protocol_error(data: bytes) -> None:
    try:
        msg = decode_message(data)
    except MessageError:
        return
    # whatever was accepted re-encodes to something that decodes to the same message
    assert decode_message(msg.encode()) == msg


@PROPS
@given(st.one_of(checkpoint_like(), st.binary(max_size=200)))
def test_update_tensor_decoder_gives_arrays_or_protocol_error(data: bytes) -> None:
    try:
        arrays = decode_tensors(data, max_decoded_size=4096)
    except ProtocolError:
        return
    assert sum(a.nbytes for a in arrays.values()) <= 4096


def test_update_claiming_a_huge_decoded_size_is_refused_in_bounded_memory() -> None:
    blob = ADVERSARIAL_CHECKPOINTS["raw size 7 GiB, tiny frame"]
    wire = UpdateMessage(round=1, sender=PEER, num_samples=3, payload=blob).encode()
    msg = decode_message(wire)
    assert isinstance(msg, UpdateMessage)
    with pytest.raises(ProtocolError):
        decode_tensors(msg.payload, max_decoded_size=1 << 20)
    assert _peak(lambda: decode_tensors(msg.payload, max_decoded_size=1 << 20)) < 1 << 20


# -- CIDs, dag-pb / UnixFS blocks, CAR archives ---------------------------------------------


@PROPS
@given(st.binary(max_size=80))
def test_binary_cid_reader_gives_cid_or_invalid_cid_error(data: bytes) -> None:
    try:
        cid, end = read_binary_cid(data)
    except InvalidCIDError:
        return
    assert cid.version in (0, 1) and len(cid.digest) == 32 and end <= len(data)
    assert bytes(cid) == data[:end]
    if end == len(data):
        assert cid_from_bytes(data) == cid


@PROPS
@given(st.binary(max_size=12))
def test_varints_are_bounded(data: bytes) -> None:
    try:
        value, end = decode_varint(data)
    except FormatError:
        return
    assert 0 <= value < 2**63 and end <= 9 and encode_varint(value) == data[:end]


@PROPS
@given(st.one_of(protobuf_like(), st.binary(max_size=200)), st.sampled_from([0, 1]))
def test_dag_blocks_give_a_decoded_block_or_format_error(data: bytes, raw: int) -> None:
    codec = CODEC_RAW if raw else CODEC_DAG_PB
    cid = cid_from_bytes(binary_cid(1, codec, bytes(32)))
    for decoder in (decode_pbnode, decode_unixfs, lambda b: decode_block(cid, b)):
        try:
            decoder(data)
        except FormatError:
            pass


def _car(root: bytes, blocks: list[tuple[bytes, bytes]]) -> bytes:
    out = bytearray(car_header(cid_from_bytes(root)))
    for cid, block in blocks:
        out += encode_varint(len(cid) + len(block)) + cid + block
    return bytes(out)


def _dag_bomb(levels: int, fanout: int = 174) -> tuple[bytes, bytes]:
    """A CAR of a few hundred bytes whose DAG links one leaf fanout**levels times."""
    import hashlib

    leaf = b"x"
    child = Link(binary_cid(1, CODEC_RAW, hashlib.sha256(leaf).digest()), 1, 1)
    blocks = [(child.cid, leaf)]
    for _ in range(levels):
        node = encode_internal_node([child] * fanout)
        cid = binary_cid(1, CODEC_DAG_PB, hashlib.sha256(node).digest())
        blocks.append((cid, node))
        child = Link(cid, len(node) + child.tsize * fanout, child.filesize * fanout)
    return child.cid, _car(child.cid, list(reversed(blocks)))


def test_car_dag_bomb_is_refused_by_size_before_expanding() -> None:
    root, car = _dag_bomb(levels=5)  # 174**5 ~ 1.6e11 bytes described by ~45 KB
    assert len(car) < 64 * 1024
    with pytest.raises(FormatError, match="limit"):
        read_car_verified(car, max_size=1 << 20)
    peak = _peak(lambda: read_car_verified(car, max_size=1 << 20))
    assert peak < 8 * len(car) + (2 << 20), f"peak {peak:,} bytes"


@pytest.mark.parametrize(
    "car",
    [
        encode_varint(2**62) + b"\xa2",  # header length far beyond the data and the cap
        car_header(CIDS[0]) + encode_varint(2**40) + b"\x00" * 10,  # a 1 TiB section
        car_header(CIDS[0]) + b"\xff" * 12,  # an endless varint
    ],
    ids=["huge header length", "huge section", "overlong varint"],
)
def test_car_with_lying_lengths_is_refused_in_bounded_memory(car: bytes) -> None:
    with pytest.raises(FormatError):
        read_car_verified(car)
    assert _peak(lambda: read_car_verified(io.BytesIO(car))) < 1 << 20


@PROPS
@given(st.binary(max_size=120), st.integers(0, 2**64 - 1))
def test_car_sections_with_random_content_never_crash(junk: bytes, length: int) -> None:
    car = car_header(CIDS[1]) + encode_varint(min(length, 2**63 - 1)) + junk
    with pytest.raises((FormatError, IntegrityError)):
        read_car_verified(car, max_size=1 << 20)


def test_valid_inputs_still_decode() -> None:
    """The strategies above are not all noise: the happy paths pass through them."""
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    assert np.array_equal(decode(encode(arrays)).arrays["w"], arrays["w"])
    assert parse_announcement(f"CID:5:{CIDS[1]}".encode()).round == 5
    msg = UpdateMessage(round=2, sender=PEER, num_samples=1, payload=encode(arrays))
    assert decode_message(msg.encode()) == msg
    root, _ = _dag_bomb(levels=1, fanout=3)
    _, car = _dag_bomb(levels=1, fanout=3)
    assert read_car_verified(car, expected_root=cid_from_bytes(root)) == b"xxx"
