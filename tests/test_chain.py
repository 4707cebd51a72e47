"""Backend chain: write fallback, verified reads, error aggregation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fedstore.backends import BackendChain, StoredObject
from fedstore.backends.base import Source
from fedstore.backends.memory import MemoryBackend
from fedstore.backends.testing import BackendConformance, sample_bytes
from fedstore.errors import (
    CIDMismatchError,
    IntegrityError,
    InvalidCIDError,
    NotConfiguredError,
    NotFoundError,
    SizeLimitError,
    UnavailableError,
)
from fedstore.ipld.cid import cid_of_bytes


class TestMemoryConformance(BackendConformance):
    @pytest.fixture
    async def backend(self):  # type: ignore[override]
        yield MemoryBackend()


class DownBackend(MemoryBackend):
    async def add(self, source: Source, **kw: object) -> StoredObject:  # type: ignore[override]
        raise UnavailableError(f"{self.name} is down", backend=self.name)

    async def fetch(self, cid: str) -> AsyncIterator[bytes]:
        raise UnavailableError(f"{self.name} is down", backend=self.name)
        yield b""  # pragma: no cover


class LyingBackend(MemoryBackend):
    """Serves wrong bytes for every CID it holds."""

    async def fetch(self, cid: str) -> AsyncIterator[bytes]:
        async for chunk in super().fetch(cid):
            yield bytes(b ^ 1 for b in chunk)


class WrongCidBackend(MemoryBackend):
    async def add(self, source: Source, *, cid_version: int = 0, **kw: object) -> StoredObject:  # type: ignore[override]
        stored = await super().add(source, cid_version=cid_version)
        return StoredObject(cid=cid_of_bytes(b"something else"), size=stored.size)


class TruncatingBackend(MemoryBackend):
    async def fetch(self, cid: str) -> AsyncIterator[bytes]:
        data = self.objects[cid]
        yield data[: len(data) // 2]
        raise UnavailableError("connection dropped mid-body", backend=self.name)


async def test_write_goes_to_first_that_accepts() -> None:
    down, mem = DownBackend("pinata"), MemoryBackend("filesystem")
    chain = BackendChain([down, mem])
    data = sample_bytes(1000)
    result = await chain.add(data)
    assert result.stored_on == "filesystem"
    assert result.cid == cid_of_bytes(data)
    assert [(a.backend, a.ok) for a in result.attempts] == [("pinata", False), ("filesystem", True)]
    assert "down" in result.attempts[0].describe()
    assert isinstance(result.attempts[0].error, UnavailableError)
    assert result.cid in mem.objects and result.cid not in down.objects


async def test_all_backends_down_lists_each_failure() -> None:
    chain = BackendChain([DownBackend("a"), DownBackend("b")])
    with pytest.raises(UnavailableError) as info:
        await chain.add(b"data")
    assert "a: a is down" in str(info.value) and "b: b is down" in str(info.value)


async def test_cid_mismatch_counts_as_failure() -> None:
    liar, good = WrongCidBackend("svc"), MemoryBackend("fs")
    result = await BackendChain([liar, good]).add(b"payload")
    assert result.stored_on == "fs"
    error = result.attempts[0].error
    assert isinstance(error, CIDMismatchError)
    assert (error.backend, error.cid) == ("svc", result.cid)


async def test_read_falls_back_past_corrupt_copy(caplog: pytest.LogCaptureFixture) -> None:
    data = sample_bytes(200_000)
    liar, good = LyingBackend("liar"), MemoryBackend("good")
    await liar.add(data)
    cid = (await good.add(data)).cid
    chain = BackendChain([liar, good])
    assert await chain.fetch_bytes(cid) == data
    assert any("rejected data from liar" in r.getMessage() for r in caplog.records)


async def test_read_only_corrupt_copies_is_integrity_error(tmp_path: Path) -> None:
    liar = LyingBackend("liar")
    cid = (await liar.add(b"x" * 1000)).cid
    chain = BackendChain([liar, MemoryBackend("empty")])
    with pytest.raises(IntegrityError):
        await chain.fetch_bytes(cid)
    with pytest.raises(IntegrityError):
        await chain.fetch_to_file(cid, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


async def test_truncated_stream_falls_back(tmp_path: Path) -> None:
    data = sample_bytes(100_000)
    trunc, good = TruncatingBackend("trunc"), MemoryBackend("good")
    await trunc.add(data)
    cid = (await good.add(data)).cid
    result = await BackendChain([trunc, good]).fetch_to_file(cid, tmp_path / "o.bin")
    assert result.backend == "good"
    assert (tmp_path / "o.bin").read_bytes() == data


async def test_fetch_bytes_hashes_and_joins_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Verifying and assembling a large object runs in worker threads, never on trio's thread."""
    import threading

    from fedstore.backends import chain as chain_mod
    from fedstore.ipld.cid import CidVerifier

    loop_thread = threading.current_thread()
    threads: dict[str, set[threading.Thread]] = {"update": set(), "join": set()}
    real_update, real_join = CidVerifier.update, chain_mod._MemorySink.getvalue

    def update(self: CidVerifier, data: bytes) -> None:
        threads["update"].add(threading.current_thread())
        real_update(self, data)

    def getvalue(self: chain_mod._MemorySink) -> bytes:
        threads["join"].add(threading.current_thread())
        return real_join(self)

    monkeypatch.setattr(CidVerifier, "update", update)
    monkeypatch.setattr(chain_mod._MemorySink, "getvalue", getvalue)
    data = sample_bytes(3 * 1024 * 1024 + 7)
    mem = MemoryBackend(chunk_size=1 << 20)
    cid = (await mem.add(data)).cid
    assert await BackendChain([mem]).fetch_bytes(cid) == data
    assert threads["update"] and threads["join"]
    assert loop_thread not in threads["update"] | threads["join"]


async def test_missing_everywhere_is_not_found() -> None:
    chain = BackendChain([MemoryBackend("a"), MemoryBackend("b")])
    with pytest.raises(NotFoundError):
        await chain.fetch_bytes(cid_of_bytes(b"nobody has this"))


async def test_invalid_cid_refused_before_any_backend() -> None:
    with pytest.raises(InvalidCIDError):
        await BackendChain([MemoryBackend()]).fetch_bytes("../../etc/passwd")


async def test_max_size_enforced() -> None:
    mem = MemoryBackend()
    cid = (await mem.add(sample_bytes(50_000))).cid
    with pytest.raises(SizeLimitError):
        await BackendChain([mem]).fetch_bytes(cid, max_size=10_000)


async def test_large_fetch_to_file_streams(tmp_path: Path) -> None:
    data = sample_bytes(9 * 1024 * 1024 + 5)
    mem = MemoryBackend(chunk_size=1 << 20)
    cid = (await mem.add(data)).cid
    seen: list[int] = []
    result = await BackendChain([mem]).fetch_to_file(cid, tmp_path / "big", progress=seen.append)
    assert result.size == len(data)
    assert (tmp_path / "big").read_bytes() == data
    assert seen and seen[-1] == len(data)


def test_empty_chain_refused() -> None:
    with pytest.raises(NotConfiguredError):
        BackendChain([])


async def test_has_and_health() -> None:
    a, b = MemoryBackend("a"), MemoryBackend("b")
    cid = (await b.add(b"only in b")).cid
    chain = BackendChain([a, b])
    assert await chain.has(cid) == ["b"]
    health = await chain.health()
    assert set(health) == {"a", "b"} and all(h.ok for h in health.values())
