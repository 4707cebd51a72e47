"""Block-level DAG helpers (fedstore.ipld.blocks) and the filesystem block store."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import trio
import trio.lowlevel
import trio.testing
from fedstore_bitswap.blockstore import BlockStore, digest_of
from fedstore_bitswap.engine import block_prefix
from fedstore_bitswap.limits import ByteBudget
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedstore.errors import FormatError, IntegrityError, NotFoundError
from fedstore.ipld.blocks import decode_block, write_dag_blocks
from fedstore.ipld.cid import DagParams, cid_from_bytes, cid_of_bytes, parse_cid
from fedstore.ipld.unixfs import encode_varint

SMALL = [
    DagParams(cid_version=0, chunk_size=1024, max_links=4),
    DagParams(cid_version=1, chunk_size=1000, max_links=3),
    DagParams(cid_version=1, chunk_size=512, max_links=5, raw_leaves=False),
]


def _blocks(data: bytes, params: DagParams) -> tuple[str, list[tuple[bytes, bytes]]]:
    out: list[tuple[bytes, bytes]] = []
    summary = write_dag_blocks(data, params, lambda c, b: out.append((c, b)))
    return summary.cid, out


@pytest.mark.parametrize("n", [0, 1, 262143, 262144, 262145, 3 * 262144 + 7])
@pytest.mark.parametrize("version", [0, 1])
def test_blocks_give_kubo_cid(n: int, version: int) -> None:
    data = os.urandom(n)
    cid, blocks = _blocks(data, DagParams.kubo(version))
    assert cid == cid_of_bytes(data, version)
    # every block hashes to the digest of its own CID, and the root block is last
    for cid_bytes, block in blocks:
        assert hashlib.sha256(block).digest() == cid_bytes[-32:]
    assert blocks[-1][0] == bytes(parse_cid(cid))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(min_value=0, max_value=40_000), which=st.sampled_from(range(len(SMALL))))
def test_deep_small_dags_round_trip(
    tmp_path_factory: pytest.TempPathFactory, n: int, which: int
) -> None:
    params = SMALL[which]
    data = os.urandom(n)
    store = BlockStore(tmp_path_factory.mktemp("bs"))
    summary = store.put_file(data, params)
    assert summary.cid == cid_of_bytes(data, params=params)
    assert store.has_file(summary.cid)
    assert b"".join(store.iter_file(summary.cid)) == data


def test_file_source_equals_bytes_source(tmp_path: Path) -> None:
    data = os.urandom(5 * 262144 + 3)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    a = _blocks(data, DagParams.kubo(1))
    got: list[tuple[bytes, bytes]] = []
    summary = write_dag_blocks(path, DagParams.kubo(1), lambda c, b: got.append((c, b)))
    assert (summary.cid, got) == a
    assert summary.size == len(data)


def test_decode_leaf_internal_and_raw() -> None:
    data = os.urandom(2 * 1024 + 10)
    params = DagParams(cid_version=0, chunk_size=1024, max_links=174)
    cid, blocks = _blocks(data, params)
    root = decode_block(parse_cid(cid), blocks[-1][1])
    assert [bytes(link.cid) for link in root.links] == [c for c, _ in blocks[:-1]]
    assert root.data == b"" and root.filesize == len(data)
    first = decode_block(cid_from_bytes(blocks[0][0]), blocks[0][1])
    assert first.links == () and first.data == data[:1024]
    raw_cid, raw_blocks = _blocks(b"abc", DagParams.kubo(1))
    assert decode_block(parse_cid(raw_cid), raw_blocks[0][1]).data == b"abc"


def test_decode_refuses_directory() -> None:
    # an empty UnixFS directory: PBNode{Data: UnixFS{Type=Directory}}
    unixfs = b"\x08\x01"
    block = b"\x0a" + encode_varint(len(unixfs)) + unixfs
    cid = cid_from_bytes(b"\x12\x20" + hashlib.sha256(block).digest())
    assert str(cid) == "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn"
    with pytest.raises(FormatError, match="not a file"):
        decode_block(cid, block)


def test_put_block_refuses_wrong_bytes(tmp_path: Path) -> None:
    store = BlockStore(tmp_path)
    digest = hashlib.sha256(b"right").digest()
    with pytest.raises(IntegrityError):
        store.put_block(digest, b"wrong")
    assert not store.has_block(digest)
    assert store.put_block(digest, b"right") is True
    assert store.put_block(digest, b"right") is False  # already there
    assert store.get_block(digest) == b"right"


def test_damaged_block_is_not_served(tmp_path: Path) -> None:
    store = BlockStore(tmp_path)
    summary = store.put_file(os.urandom(3 * 262144), DagParams.kubo(0))
    victim = next((tmp_path / "objects").rglob("*"))
    while victim.is_dir():
        victim = next(victim.iterdir())
    digest = bytes.fromhex(victim.name)
    victim.write_bytes(b"bit rot")
    assert store.get_block(digest) is None
    assert not store.has_block(digest)  # removed, so it is never served again
    with pytest.raises(NotFoundError):
        b"".join(store.iter_file(summary.cid))
    assert not store.has_file(summary.cid)  # the complete-mark went with it


def test_marks(tmp_path: Path) -> None:
    store = BlockStore(tmp_path)
    s = store.put_file(b"hello\n", DagParams.kubo(0))
    assert s.cid == "QmZULkCELmmk5XNfCgTnCyFgAVxBRBXyDHGGMVoLFLiXEN"
    mark = store.file_mark(s.cid)
    assert mark is not None and mark.size == 6 and mark.blocks == 1
    assert [m.cid for m in store.files()] == [s.cid]
    # the v1 form of the same dag-pb block is the same mark (keyed by digest)
    assert store.has_file(str(parse_cid(s.cid).to_v1()))
    store.unmark_file(s.cid)
    store.unmark_file(s.cid)
    assert not store.has_file(s.cid)
    assert store.has_block(digest_of(s.cid))


def test_block_prefix() -> None:
    v0 = parse_cid("QmZULkCELmmk5XNfCgTnCyFgAVxBRBXyDHGGMVoLFLiXEN")
    assert block_prefix(bytes(v0)) == bytes.fromhex("00701220")  # as go-cid writes it
    v1 = parse_cid("bafkreicysg23kiwv34eg2d7qweipxwosdo2py4ldv42nbauguluen5v6am")
    assert block_prefix(bytes(v1)) == bytes.fromhex("01551220")


async def test_byte_budget_is_fifo_and_bounded() -> None:
    budget = ByteBudget(100)
    order: list[str] = []
    first = await budget.acquire(80)

    async def want(name: str, n: int) -> None:
        got = await budget.acquire(n)
        order.append(name)
        await trio.lowlevel.checkpoint()
        budget.release(got)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(want, "big", 60)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(want, "small", 10)  # fits now, but must not overtake "big"
        await trio.testing.wait_all_tasks_blocked()
        assert order == []  # "small" fits, yet waits behind "big"
        budget.release(first)
    assert sorted(order) == ["big", "small"]
    assert budget.used == 0 and budget.peak <= 100
    assert await budget.acquire(500) == 100  # clipped to the capacity
    budget.release(100)


async def test_byte_budget_cancelled_waiter_leaks_nothing() -> None:
    budget = ByteBudget(10)
    held = await budget.acquire(10)
    with trio.move_on_after(0.05):
        await budget.acquire(5)
    budget.release(held)
    assert budget.used == 0
    async with budget.hold(10) as n:
        assert n == 10 and budget.used == 10
    assert budget.used == 0
