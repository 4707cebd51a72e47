"""The filesystem backend: conformance suite plus its own guarantees."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
from fedstore_filesystem import FilesystemBackend, default_root

from fedstore.backends import BackendChain, load_backend
from fedstore.backends.testing import BackendConformance, sample_bytes
from fedstore.errors import IntegrityError, NotFoundError
from fedstore.ipld.cid import cid_of_bytes


class TestFilesystemConformance(BackendConformance):
    @pytest.fixture
    async def backend(self, tmp_path: Path):  # type: ignore[override]
        b = FilesystemBackend(tmp_path / "root")
        yield b
        await b.aclose()

    @pytest.fixture
    def backend_settings(self, tmp_path: Path) -> dict[str, str]:
        return {"FEDSTORE_FS_ROOT": str(tmp_path / "fresh-root")}


def test_root_from_env(tmp_path: Path) -> None:
    b = load_backend("filesystem", {"FEDSTORE_FS_ROOT": str(tmp_path / "x")})
    assert isinstance(b, FilesystemBackend)
    assert b.root == tmp_path / "x"


def test_default_root_is_per_user(tmp_path: Path) -> None:
    assert default_root({"XDG_DATA_HOME": str(tmp_path)}) == tmp_path / "fedstore" / "objects"


async def test_two_peers_share_one_root(tmp_path: Path) -> None:
    a = FilesystemBackend(tmp_path / "shared")
    b = FilesystemBackend(tmp_path / "shared")
    data = sample_bytes(300_000, "shared")
    cid = (await a.add(data)).cid
    assert await BackendChain([b]).fetch_bytes(cid) == data


async def test_no_temp_files_left_after_add(tmp_path: Path) -> None:
    b = FilesystemBackend(tmp_path / "r")
    for i in range(3):
        await b.add(sample_bytes(1000 + i, "t"))
    assert list((tmp_path / "r" / "tmp").iterdir()) == []


async def test_corrupted_object_is_rejected_by_chain(tmp_path: Path) -> None:
    b = FilesystemBackend(tmp_path / "r")
    data = sample_bytes(5000, "corrupt")
    cid = (await b.add(data)).cid
    obj = b._object_path(cid)
    raw = bytearray(obj.read_bytes())
    raw[100] ^= 0xFF
    obj.write_bytes(bytes(raw))
    chain = BackendChain([b])
    with pytest.raises(IntegrityError):
        await chain.fetch_bytes(cid)
    out = tmp_path / "out.bin"
    with pytest.raises(IntegrityError):
        await chain.fetch_to_file(cid, out)
    assert not out.exists()
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".out.bin")] == []


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "emptied"])
async def test_put_again_repairs_a_corrupted_object(tmp_path: Path, damage: str) -> None:
    """Re-adding the bytes of a damaged object replaces it: no success reported over garbage."""
    b = FilesystemBackend(tmp_path / "r")
    data = sample_bytes(300_000, "repair")
    cid = (await b.add(data)).cid
    obj = b._object_path(cid)
    raw = bytearray(obj.read_bytes())
    if damage == "flipped byte":
        raw[123_456] ^= 0x01  # same size: a size check cannot see it
    elif damage == "truncated":
        del raw[200_000:]
    else:
        raw.clear()
    obj.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError):
        await BackendChain([b]).fetch_bytes(cid)

    again = await b.add(data)
    assert again.cid == cid and again.size == len(data)
    assert obj.read_bytes() == data
    assert await BackendChain([b]).fetch_bytes(cid) == data
    assert list((tmp_path / "r" / "tmp").iterdir()) == []


async def test_put_again_through_the_chain_repairs_it(tmp_path: Path) -> None:
    b = FilesystemBackend(tmp_path / "r")
    data = sample_bytes(70_000, "chain-repair")
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    cid = (await BackendChain([b]).add(src)).cid
    obj = b._object_path(cid)
    raw = bytearray(obj.read_bytes())
    raw[0] ^= 0x80
    obj.write_bytes(bytes(raw))
    assert (await BackendChain([b]).add(src)).cid == cid
    assert await BackendChain([b]).fetch_bytes(cid) == data


async def test_unpin_keeps_object_for_other_peers(tmp_path: Path) -> None:
    b = FilesystemBackend(tmp_path / "r")
    cid = (await b.add(b"keep me")).cid
    assert await b.is_pinned(cid)
    await b.unpin(cid)
    assert not await b.is_pinned(cid)
    assert await b.has(cid)
    with pytest.raises(NotFoundError):
        await b.pin(cid_of_bytes(b"never"))


async def test_concurrent_writers_across_threads(tmp_path: Path) -> None:
    """Many writers of different and identical objects at once: all land whole."""
    b = FilesystemBackend(tmp_path / "r")
    blobs = [sample_bytes(270_000, f"w{i % 3}") for i in range(9)]
    async with trio.open_nursery() as nursery:
        for blob in blobs:
            nursery.start_soon(b.add, blob)
    chain = BackendChain([b])
    for blob in blobs:
        assert await chain.fetch_bytes(cid_of_bytes(blob)) == blob
    assert os.listdir(tmp_path / "r" / "tmp") == []


async def test_unwritable_root_is_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    b = FilesystemBackend(blocker / "root")
    health = await b.health()
    assert not health.reachable
    from fedstore.errors import UnavailableError

    with pytest.raises(UnavailableError):
        await b.add(b"x")


async def test_cid_spellings_map_to_one_object(tmp_path: Path) -> None:
    from fedstore.ipld.cid import parse_cid

    b = FilesystemBackend(tmp_path / "r")
    data = b"one object, several spellings"
    v1 = (await b.add(data, cid_version=1)).cid
    base58_v1 = "z" + __import__("base58").b58encode(bytes(parse_cid(v1))).decode()
    for spelling in (v1, f" {v1}\n", v1.upper(), base58_v1):
        assert await b.has(spelling), spelling
    assert len(list((tmp_path / "r" / "objects").rglob("*"))) == 2  # one shard dir, one file
