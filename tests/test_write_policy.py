"""The chain's one write policy, its observer, and its error boundary (reads and writes alike).

* a write lands on the first backend that accepts it AND on every later
  backend that keeps a local copy (the peers' view of the node);
* a :class:`WriteObserver` hears pending/finished for every backend tried;
* CIDs are compared with ``same_cid`` (a multibase respelling is the same CID);
* a foreign exception from a plugin is translated, recorded and the next
  backend tried, on writes exactly as on reads;
* errors carry ``cid``/``backend``/``attempts`` and are classified by ``isinstance``;
* a backend's byte stream is closed at once when a read stops early;
* ``fetch_to_file`` does its temp-file work off the event loop and fsyncs the
  directory after the rename.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from fedstore.backends import BackendChain, StoredObject, aclosing_stream
from fedstore.backends.base import Source
from fedstore.backends.chain import Attempt
from fedstore.backends.memory import MemoryBackend
from fedstore.backends.testing import sample_bytes
from fedstore.errors import (
    CIDMismatchError,
    FedstoreError,
    IntegrityError,
    NotFoundError,
    SizeLimitError,
    UnavailableError,
)
from fedstore.ipld.cid import cid_of_bytes, parse_cid


class LocalCopy(MemoryBackend):
    """Stands for bitswap: keeps a local copy of everything the node holds."""

    keeps_local_copy = True


class Down(MemoryBackend):
    async def add(self, source: Source, **kw: object) -> StoredObject:  # type: ignore[override]
        raise UnavailableError(f"{self.name} is down")

    async def fetch(self, cid: str) -> AsyncIterator[bytes]:
        raise UnavailableError(f"{self.name} is down")
        yield b""  # pragma: no cover


class DownLocalCopy(Down):
    keeps_local_copy = True


class Buggy(MemoryBackend):
    """A plugin that leaks a foreign exception, on writes and mid-stream on reads."""

    async def add(self, source: Source, **kw: object) -> StoredObject:  # type: ignore[override]
        raise KeyError("internal plugin state")

    async def fetch(self, cid: str) -> AsyncIterator[bytes]:
        yield b"partial"
        raise RuntimeError("plugin bug mid-stream")


class Base58Answer(MemoryBackend):
    """Answers with the base58btc spelling of the CIDv1 it stored (the same CID)."""

    async def add(self, source: Source, *, cid_version: int = 0, **kw: object) -> StoredObject:  # type: ignore[override]
        stored = await super().add(source, cid_version=cid_version)
        return StoredObject(cid=_base58(stored.cid), size=stored.size)


def _base58(cid: str) -> str:
    from fedstore.ipld.cidstr import _b58encode

    return "z" + _b58encode(bytes(parse_cid(cid)))


class Recorder:
    """A WriteObserver that keeps what it was told."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    async def attempt_started(self, cid: str, backend: str) -> None:
        self.events.append((cid, backend, "pending"))

    async def attempt_finished(self, cid: str, attempt: Attempt) -> None:
        self.events.append((cid, attempt.backend, "pinned" if attempt.ok else "failed"))


# -- the write policy ----------------------------------------------------------------------


async def test_write_goes_to_first_accepting_and_every_local_copy_backend() -> None:
    fs, remote, peers = MemoryBackend("filesystem"), MemoryBackend("kubo"), LocalCopy("bitswap")
    chain = BackendChain([fs, remote, peers])
    data = sample_bytes(300_000, "policy")
    result = await chain.add(data, cid_version=1)
    assert result.stored_on == "filesystem"
    assert result.cid in fs.objects and result.cid in peers.objects
    assert result.cid not in remote.objects  # a second remote copy is not the policy
    assert [(a.backend, a.ok) for a in result.attempts] == [("filesystem", True), ("bitswap", True)]
    assert result.copies == ["filesystem", "bitswap"]


async def test_failed_local_copy_is_recorded_not_raised() -> None:
    fs = MemoryBackend("filesystem")
    result = await BackendChain([fs, DownLocalCopy("bitswap")]).add(b"payload")
    assert result.stored_on == "filesystem" and result.copies == ["filesystem"]
    failed = result.attempts[1]
    assert failed.backend == "bitswap" and isinstance(failed.error, UnavailableError)
    assert (failed.error.backend, failed.error.cid) == ("bitswap", result.cid)


async def test_nothing_accepts_raises_with_every_attempt() -> None:
    chain = BackendChain([Down("pinata"), Down("filesystem"), DownLocalCopy("bitswap")])
    with pytest.raises(UnavailableError) as info:
        await chain.add(b"data")
    err = info.value
    assert err.cid == cid_of_bytes(b"data")
    assert [a.backend for a in err.attempts] == ["pinata", "filesystem", "bitswap"]
    assert all(isinstance(a.error, UnavailableError) for a in err.attempts)


async def test_observer_hears_every_attempt_in_order() -> None:
    rec = Recorder()
    chain = BackendChain([Down("pinata"), MemoryBackend("filesystem"), LocalCopy("bitswap")])
    result = await chain.add(b"observed", observer=rec)
    cid = result.cid
    assert rec.events == [
        (cid, "pinata", "pending"),
        (cid, "pinata", "failed"),
        (cid, "filesystem", "pending"),
        (cid, "filesystem", "pinned"),
        (cid, "bitswap", "pending"),
        (cid, "bitswap", "pinned"),
    ]


async def test_keep_local_copies_alone_and_missing_only(tmp_path: Path) -> None:
    fs, peers, more = MemoryBackend("filesystem"), LocalCopy("bitswap"), LocalCopy("mirror")
    chain = BackendChain([fs, peers, more])
    data = b"fetched by a sync"
    cid = cid_of_bytes(data)
    await more.add(data)  # already there
    rec = Recorder()
    attempts = await chain.keep_local_copies(data, cid, observer=rec, missing_only=True)
    assert [(a.backend, a.ok) for a in attempts] == [("bitswap", True), ("mirror", True)]
    assert cid in peers.objects and cid not in fs.objects
    assert [e[1:] for e in rec.events] == [
        ("bitswap", "pending"),
        ("bitswap", "pinned"),
        ("mirror", "pending"),
        ("mirror", "pinned"),
    ]


async def test_one_cid_equality_rule_multibase_respelling_is_the_same_cid() -> None:
    chain = BackendChain([Base58Answer("svc"), MemoryBackend("fs")])
    result = await chain.add(b"respelled", cid_version=1)
    assert result.stored_on == "svc", result.attempts


async def test_a_different_cid_is_still_a_mismatch() -> None:
    class Liar(MemoryBackend):
        async def add(self, source: Source, **kw: object) -> StoredObject:  # type: ignore[override]
            return StoredObject(cid=cid_of_bytes(b"other", 1), size=5)

    result = await BackendChain([Liar("svc"), MemoryBackend("fs")]).add(b"x", cid_version=1)
    assert result.stored_on == "fs"
    assert isinstance(result.attempts[0].error, CIDMismatchError)


# -- the boundary: foreign exceptions, the same way for reads and writes --------------------


async def test_foreign_exception_on_write_is_translated_recorded_and_next_tried() -> None:
    good = MemoryBackend("good")
    result = await BackendChain([Buggy("buggy"), good]).add(b"data")
    assert result.stored_on == "good"
    error = result.attempts[0].error
    assert isinstance(error, UnavailableError) and isinstance(error.__cause__, KeyError)
    assert error.backend == "buggy" and "KeyError" in str(error)


async def test_foreign_exception_on_read_is_translated_recorded_and_next_tried() -> None:
    data = sample_bytes(10_000, "read")
    good = MemoryBackend("good")
    cid = (await good.add(data)).cid
    assert await BackendChain([Buggy("buggy"), good]).fetch_bytes(cid) == data
    with pytest.raises(UnavailableError) as info:
        await BackendChain([Buggy("buggy")]).fetch_bytes(cid)
    (attempt,) = info.value.attempts
    assert isinstance(attempt.error, UnavailableError)
    assert isinstance(attempt.error.__cause__, RuntimeError)


# -- structured errors, classified by isinstance --------------------------------------------


async def test_not_found_carries_cid_and_each_backend_attempt() -> None:
    cid = cid_of_bytes(b"nobody has this")
    with pytest.raises(NotFoundError) as info:
        await BackendChain([MemoryBackend("a"), MemoryBackend("b")]).fetch_bytes(cid)
    err = info.value
    assert err.cid == cid
    assert [(a.backend, type(a.error)) for a in err.attempts] == [
        ("a", NotFoundError),
        ("b", NotFoundError),
    ]


async def test_subclasses_classify_like_their_base() -> None:
    """A plugin's own NotFoundError subclass still means 'not found' (isinstance, not names)."""

    class GoneError(NotFoundError):
        pass

    class Gone(MemoryBackend):
        async def fetch(self, cid: str) -> AsyncIterator[bytes]:
            raise GoneError("gone")
            yield b""  # pragma: no cover

    with pytest.raises(NotFoundError):
        await BackendChain([Gone("g"), MemoryBackend("m")]).fetch_bytes(cid_of_bytes(b"z"))


async def test_corrupt_and_missing_is_integrity_error_with_backend_context() -> None:
    class Liar(MemoryBackend):
        async def fetch(self, cid: str) -> AsyncIterator[bytes]:
            yield b"not what you asked for"

    cid = cid_of_bytes(b"the real bytes")
    with pytest.raises(IntegrityError) as info:
        await BackendChain([Liar("liar"), MemoryBackend("empty")]).fetch_bytes(cid)
    liar_attempt = info.value.attempts[0]
    assert isinstance(liar_attempt.error, IntegrityError)
    assert liar_attempt.error.backend == "liar"


def test_no_class_name_strings_in_the_chain() -> None:
    from fedstore.backends import chain

    text = Path(chain.__file__).read_text()
    assert "error_type" not in text and '"NotFoundError"' not in text
    assert not hasattr(BackendChain, "add_to")


# -- streams closed deterministically ---------------------------------------------------------


class Tracked(MemoryBackend):
    def __init__(self, name: str) -> None:
        super().__init__(name, chunk_size=1000)
        self.closed = False

    async def fetch(self, cid: str) -> AsyncIterator[bytes]:
        try:
            async with aclosing_stream(super().fetch(cid)) as chunks:
                async for chunk in chunks:
                    yield chunk
        finally:
            self.closed = True


async def test_a_read_stopped_early_closes_the_backend_stream_at_once() -> None:
    tracked = Tracked("t")
    cid = (await tracked.add(sample_bytes(50_000, "close"))).cid
    with pytest.raises(SizeLimitError):
        await BackendChain([tracked]).fetch_bytes(cid, max_size=5_000)
    assert tracked.closed  # not left to the garbage collector / trio's finaliser


async def test_a_cancelled_read_closes_the_backend_stream(tmp_path: Path) -> None:
    class Slow(Tracked):
        async def fetch(self, cid: str) -> AsyncIterator[bytes]:
            try:
                yield b"x"
                await trio.sleep_forever()
            finally:
                self.closed = True

    slow = Slow("slow")
    with trio.move_on_after(0.05):
        await BackendChain([slow]).fetch_to_file(cid_of_bytes(b"x"), tmp_path / "out")
    assert slow.closed
    assert list(tmp_path.iterdir()) == []  # the .part file is gone too


# -- fetch_to_file: off the loop, durable ----------------------------------------------------


async def test_fetch_to_file_does_file_work_in_threads_and_fsyncs_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedstore.backends import chain as chain_mod
    from fedstore.fsutil import fsync_dir

    loop = threading.current_thread()
    calls: list[tuple[str, bool]] = []

    def spy(name: str, real: object) -> object:
        def wrapper(*args: object, **kwargs: object) -> object:
            calls.append((name, threading.current_thread() is loop))
            if name == "fsync_dir":
                calls.append((f"fsync_dir:{Path(str(args[0]))}", False))
            return real(*args, **kwargs)  # type: ignore[operator]

        return wrapper

    monkeypatch.setattr(tempfile, "mkstemp", spy("mkstemp", tempfile.mkstemp))
    monkeypatch.setattr(os, "replace", spy("replace", os.replace))
    monkeypatch.setattr(chain_mod, "fsync_dir", spy("fsync_dir", fsync_dir))
    data = sample_bytes(20_000, "durable")
    mem = MemoryBackend()
    cid = (await mem.add(data)).cid
    await BackendChain([Down("down"), mem]).fetch_to_file(cid, tmp_path / "obj")
    assert (tmp_path / "obj").read_bytes() == data
    names = [n for n, _ in calls]
    assert names.count("mkstemp") == 2 and names.count("replace") == 1
    assert f"fsync_dir:{tmp_path}" in names
    assert names.index("replace") < names.index("fsync_dir")
    assert not any(on_loop for _, on_loop in calls), calls
    assert sorted(p.name for p in tmp_path.iterdir()) == ["obj"]


def test_attempt_is_structured() -> None:
    err = UnavailableError("down", backend="b", cid="c")
    a = Attempt("b", err)
    assert not a.ok and a.describe() == "down" and a.error is err
    assert Attempt("b").ok and Attempt("b").describe() == "ok"
    assert isinstance(err, FedstoreError) and err.attempts == ()
