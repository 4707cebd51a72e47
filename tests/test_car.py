"""fedstore.ipld.car: CARv1 writing and verified reading."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import cbor2  # independent DAG-CBOR decoder for the header
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedstore.errors import FormatError, IntegrityError, SizeLimitError
from fedstore.ipld.car import (
    CarReader,
    car_header,
    iter_car,
    iter_car_verified,
    read_car_verified,
    write_car,
)
from fedstore.ipld.cid import DagParams, cid_of_bytes, cid_of_file, cid_to_bytes, parse_cid
from fedstore.ipld.unixfs import binary_cid, decode_pbnode, decode_varint, encode_varint

SMALL = DagParams(0, chunk_size=1000, max_links=3)
SMALL_V1 = DagParams(1, chunk_size=1000, max_links=3)
PARAMS = [DagParams(0), DagParams(1), DagParams.unixfs_v1_2025(), SMALL, SMALL_V1]


def split_car(car: bytes) -> tuple[bytes, list[bytes]]:
    """(header incl. its length varint, [sections incl. their length varints])."""
    hlen, pos = decode_varint(car, 0)
    header = car[: pos + hlen]
    pos += hlen
    sections = []
    while pos < len(car):
        n, body = decode_varint(car, pos)
        sections.append(car[pos : body + n])
        pos = body + n
    return header, sections


def section_parts(section: bytes) -> tuple[bytes, bytes]:
    """(cid bytes, block bytes) of one section."""
    _, body = decode_varint(section, 0)
    cid_len = 34 if section[body] == 0x12 else 36
    return section[body : body + cid_len], section[body + cid_len :]


@pytest.mark.parametrize("params", PARAMS, ids=lambda p: p.describe())
@pytest.mark.parametrize("size", [0, 1, 999, 1000, 1001, 3000, 9 * 1000 + 7, 300_000])
def test_round_trip_and_root_matches_cid(params: DagParams, size: int) -> None:
    data = os.urandom(size)
    car = b"".join(iter_car(data, params))
    root = cid_of_bytes(data, params=params)
    assert read_car_verified(car, expected_root=root) == data
    header, sections = split_car(car)
    doc = cbor2.loads(header[decode_varint(header, 0)[1] :])
    assert doc["version"] == 1
    assert [tag.value for tag in doc["roots"]] == [b"\0" + cid_to_bytes(root)]
    assert all(tag.tag == 42 for tag in doc["roots"])
    # depth-first pre-order: the root block comes first
    assert section_parts(sections[0])[0] == cid_to_bytes(root)
    # every block is stored once and hashes to its CID
    cids = [section_parts(s)[0] for s in sections]
    assert len(cids) == len(set(cids))
    for s in sections:
        cid_bytes, block = section_parts(s)
        assert (
            parse_cid(str(parse_cid("f" + cid_bytes.hex()))).digest
            == hashlib.sha256(block).digest()
        )


def test_write_car_from_file_matches_bytes_and_cid_of_file(tmp_path: Path) -> None:
    data = os.urandom(5 * 262144 + 17)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    for params in (DagParams(0), DagParams(1)):
        out = tmp_path / f"out-v{params.cid_version}.car"
        root = write_car(src, out, params)
        assert root == cid_of_file(src, params=params)
        assert out.read_bytes() == b"".join(iter_car(data, params))
        buf = io.BytesIO()
        assert write_car(data, buf, params) == root
        with out.open("rb") as f:
            assert b"".join(iter_car_verified(f, expected_root=root)) == data


def test_leaf_order_and_dedup_for_repeated_chunks() -> None:
    data = bytes(10_000)  # ten identical 1000-byte chunks: one distinct leaf
    car = b"".join(iter_car(data, SMALL))
    _, sections = split_car(car)
    leaves = [s for s in sections if not decode_pbnode(section_parts(s)[1]).links]
    assert len(leaves) == 1
    assert read_car_verified(car) == data


def test_header_shape() -> None:
    root = "QmZULkCELmmk5XNfCgTnCyFgAVxBRBXyDHGGMVoLFLiXEN"
    head = car_header(root)
    body = head[1:]
    assert head[0] == len(body)
    assert cbor2.loads(body) == {
        "roots": [cbor2.CBORTag(42, b"\0" + cid_to_bytes(root))],
        "version": 1,
    }


def test_tampered_block_is_refused() -> None:
    data = os.urandom(5000)
    header, sections = split_car(b"".join(iter_car(data, SMALL)))
    last = bytearray(sections[-1])
    last[-3] ^= 0xFF
    with pytest.raises(IntegrityError, match="does not match its CID"):
        read_car_verified(header + b"".join(sections[:-1]) + bytes(last))


def test_missing_block_is_refused() -> None:
    data = os.urandom(5000)
    header, sections = split_car(b"".join(iter_car(data, SMALL)))
    for i in range(1, len(sections)):
        with pytest.raises(IntegrityError, match="incomplete"):
            read_car_verified(header + b"".join(sections[:i] + sections[i + 1 :]))


def test_wrong_expected_root_is_refused() -> None:
    car = b"".join(iter_car(b"hello\n"))
    with pytest.raises(IntegrityError, match="not the requested CID"):
        read_car_verified(car, expected_root=cid_of_bytes(b"hello"))
    # the v1 form of the same block is accepted
    v1 = str(parse_cid(cid_of_bytes(b"hello\n")).to_v1())
    assert read_car_verified(car, expected_root=v1) == b"hello\n"


@settings(max_examples=60, deadline=None)
@given(cut=st.integers(min_value=0))
def test_truncated_car_is_refused(cut: int) -> None:
    car = b"".join(iter_car(bytes(range(256)) * 20, SMALL))
    cut %= len(car)
    with pytest.raises((FormatError, IntegrityError)):
        read_car_verified(car[:cut])


@settings(max_examples=150, deadline=None)
@given(junk=st.binary(max_size=300))
def test_random_bytes_only_raise_fedstore_errors(junk: bytes) -> None:
    with pytest.raises((FormatError, IntegrityError)):
        read_car_verified(junk)


@settings(max_examples=100, deadline=None)
@given(pos=st.integers(min_value=0), value=st.integers(0, 255))
def test_any_single_byte_change_is_caught_or_harmless(pos: int, value: int) -> None:
    data = bytes(range(256)) * 12
    car = bytearray(b"".join(iter_car(data, SMALL)))
    car[pos % len(car)] = value
    try:
        out = read_car_verified(bytes(car))
    except (FormatError, IntegrityError):
        return
    assert out == data  # the change did not alter meaning (e.g. it wrote the same byte)


def test_oversized_block_length_refused_before_reading() -> None:
    header = car_header(cid_of_bytes(b"x"))

    class NoBigReads(io.BytesIO):
        def read(self, n: int | None = -1) -> bytes:
            assert n is not None and 0 <= n <= 1 << 20, "reader tried a huge read"
            return super().read(n)

    stream = NoBigReads(header + encode_varint(5 << 20) + b"\0" * 64)
    with pytest.raises(FormatError, match="over the"):
        list(CarReader(stream).blocks())
    with pytest.raises(FormatError, match="header length"):
        read_car_verified(encode_varint(1 << 30) + b"\xa0")


def test_carv2_and_bad_headers_are_refused() -> None:
    v2_pragma = bytes.fromhex("0aa16776657273696f6e02")
    with pytest.raises(FormatError, match="CARv2"):
        read_car_verified(v2_pragma + bytes(40))
    two_roots = cbor2.dumps(
        {"roots": [cbor2.CBORTag(42, b"\0" + cid_to_bytes(cid_of_bytes(b"")))] * 2, "version": 1}
    )
    with pytest.raises(FormatError, match="exactly one root"):
        read_car_verified(encode_varint(len(two_roots)) + two_roots)


def _section(cid: bytes, block: bytes) -> bytes:
    return encode_varint(len(cid) + len(block)) + cid + block


def test_directory_dag_is_refused() -> None:
    block = b"\x0a\x02\x08\x01"  # PBNode{Data: UnixFS{Type: Directory}}
    cid = binary_cid(0, 0x70, hashlib.sha256(block).digest())
    car = car_header(str(parse_cid("f" + cid.hex()))) + _section(cid, block)
    with pytest.raises(FormatError, match="not a file"):
        read_car_verified(car)


def test_lying_blocksizes_are_refused() -> None:
    leaf = b"\x0a\x08\x08\x02\x12\x02hi\x18\x02"  # File leaf holding b"hi"
    leaf_cid = binary_cid(0, 0x70, hashlib.sha256(leaf).digest())
    link = b"\x0a\x22" + leaf_cid + b"\x12\x00\x18" + encode_varint(len(leaf))
    ufs = b"\x08\x02\x18\x05\x20\x05"  # claims the child holds 5 bytes
    root = b"\x12" + encode_varint(len(link)) + link + b"\x0a" + encode_varint(len(ufs)) + ufs
    root_cid = binary_cid(0, 0x70, hashlib.sha256(root).digest())
    car = car_header(str(parse_cid("f" + root_cid.hex())))
    car += _section(root_cid, root) + _section(leaf_cid, leaf)
    with pytest.raises(IntegrityError, match="holds 5 bytes"):
        read_car_verified(car)


def test_size_limit() -> None:
    data = os.urandom(5000)
    car = b"".join(iter_car(data, SMALL))
    assert read_car_verified(car, max_size=5000) == data
    with pytest.raises(SizeLimitError):
        read_car_verified(car, max_size=4999)


def test_writer_detects_file_changed_between_passes(tmp_path: Path) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(os.urandom(5000))
    pieces = iter_car(src, SMALL)  # first pass (the DAG) happens here
    src.write_bytes(os.urandom(5000))
    with pytest.raises(IntegrityError, match="changed"):
        list(pieces)


def test_leaf_with_lying_filesize_is_refused_by_the_one_block_decoder() -> None:
    """A leaf stating filesize 9 for 2 bytes: the CAR reader and bitswap's walk say the same."""
    from fedstore.ipld.blocks import decode_block

    leaf = b"\x0a\x08\x08\x02\x12\x02hi\x18\x09"  # File leaf holding b"hi", filesize 9
    leaf_cid = binary_cid(0, 0x70, hashlib.sha256(leaf).digest())
    parsed = parse_cid("f" + leaf_cid.hex())
    with pytest.raises(FormatError, match="filesize 9") as from_walk:
        decode_block(parsed, leaf)
    car = car_header(str(parsed)) + _section(leaf_cid, leaf)
    with pytest.raises(FormatError, match="filesize 9") as from_car:
        read_car_verified(car)
    assert str(from_walk.value) == str(from_car.value)
