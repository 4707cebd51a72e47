"""A conformance suite every storage backend runs, shipped inside fedstore.

Use it from a plugin's own tests (pytest with the pytest-trio plugin
installed; the tests are marked ``trio`` themselves, so ``trio_mode`` is not
needed)::

    import pytest
    from fedstore.backends.testing import BackendConformance

    class TestMyBackend(BackendConformance):
        @pytest.fixture
        async def backend(self, tmp_path):
            b = MyBackend(...)
            yield b
            await b.aclose()

Capability flags on the subclass: set ``supports_pinning = False`` for a
backend whose pins are meaningless (its pin test is then reported as
skipped, not silently passed), ``large_size`` lower for a slow service.
Every check here is part of the contract documented in
:class:`fedstore.backends.StorageBackend`; in particular ``add`` reports the
exact content size, and a fetch stopped early is closed at once with
``aclose()`` (the chain does that) and must release what it holds.

The construction and lifespan checks build fresh instances with the
``new_backend`` fixture: by default ``type(backend).create(backend_settings,
backend_context)`` with empty settings and a context holding a temporary data
directory. Override ``backend_settings`` (e.g. a root directory),
``backend_context`` (e.g. a running host, as bitswap needs) or ``new_backend``
itself (a backend that needs a fake transport)::

    @pytest.fixture
    def new_backend(self):
        return lambda: MyBackend(transport=FakeService())
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import trio

from fedstore.backends.base import BackendContext, Detected, Health, StorageBackend
from fedstore.backends.chain import BackendChain, aclosing_stream
from fedstore.backends.settings import Setting
from fedstore.errors import FedstoreError, InvalidCIDError, NotFoundError
from fedstore.ipld.cid import CidVerifier, cid_of_bytes
from fedstore.ipld.cidstr import same_cid

__all__ = ["BackendConformance", "sample_bytes"]


def sample_bytes(n: int, seed: str = "fedstore") -> bytes:
    """Deterministic pseudo-random bytes (compressible data would hide chunking bugs)."""
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:n])


async def _read_all(backend: StorageBackend, cid: str) -> bytes:
    async with aclosing_stream(backend.fetch(cid)) as stream:
        parts = [chunk async for chunk in stream]
    return b"".join(parts)


class BackendConformance:
    """Mixin of contract tests. Subclasses provide a ``backend`` fixture."""

    #: explicit, so the suite runs under pytest-trio without ``trio_mode = true``
    pytestmark = [pytest.mark.trio]

    #: whether pin()/unpin() are meaningful for this backend
    supports_pinning: bool = True
    #: size of the multi-chunk object (crosses several 256 KiB chunks)
    large_size: int = 3 * 262144 + 17

    @pytest.fixture
    async def backend(self) -> Any:  # pragma: no cover - always overridden
        raise NotImplementedError("subclasses of BackendConformance provide a backend fixture")

    async def test_add_bytes_gives_kubo_cid_v0(self, backend: StorageBackend) -> None:
        data = sample_bytes(1000, "v0")
        stored = await backend.add(data, cid_version=0)
        assert stored.cid == cid_of_bytes(data, 0)
        assert stored.cid.startswith("Qm")
        assert stored.size == len(data)  # the content's size, not the DAG's

    async def test_add_bytes_gives_kubo_cid_v1(self, backend: StorageBackend) -> None:
        data = sample_bytes(1000, "v1")
        stored = await backend.add(data, cid_version=1)
        assert stored.cid == cid_of_bytes(data, 1)
        assert stored.cid.startswith("b")
        assert stored.size == len(data)

    async def test_add_multi_chunk(self, backend: StorageBackend) -> None:
        data = sample_bytes(self.large_size, "large")
        stored = await backend.add(data, cid_version=0)
        assert stored.cid == cid_of_bytes(data, 0)
        assert stored.size == len(data)
        assert await _read_all(backend, stored.cid) == data

    async def test_add_empty(self, backend: StorageBackend) -> None:
        stored = await backend.add(b"", cid_version=0)
        assert stored.cid == cid_of_bytes(b"", 0)
        assert stored.size == 0
        assert await _read_all(backend, stored.cid) == b""

    async def test_add_file_matches_add_bytes(
        self, backend: StorageBackend, tmp_path: Path
    ) -> None:
        data = sample_bytes(300_000, "file")
        path = tmp_path / "blob.bin"
        path.write_bytes(data)
        from_file = await backend.add(path, cid_version=0)
        from_bytes = await backend.add(data, cid_version=0)
        assert from_file.cid == from_bytes.cid == cid_of_bytes(data, 0)
        assert from_file.size == from_bytes.size == len(data)

    async def test_add_is_idempotent(self, backend: StorageBackend) -> None:
        data = sample_bytes(5000, "twice")
        first = await backend.add(data)
        second = await backend.add(data)
        assert first.cid == second.cid
        assert await _read_all(backend, first.cid) == data

    async def test_concurrent_adds_of_same_bytes(self, backend: StorageBackend) -> None:
        data = sample_bytes(400_000, "race")
        cids: list[str] = []

        async def one() -> None:
            cids.append((await backend.add(data)).cid)

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(one)
        assert set(cids) == {cid_of_bytes(data, 0)}
        assert await _read_all(backend, cids[0]) == data

    async def test_fetch_round_trip_verifies(self, backend: StorageBackend) -> None:
        data = sample_bytes(70_000, "fetch")
        cid = (await backend.add(data)).cid
        verifier = CidVerifier(cid)
        async with aclosing_stream(backend.fetch(cid)) as stream:
            async for chunk in stream:
                verifier.update(chunk)
        verifier.verify()

    async def test_fetch_stopped_early_closes_cleanly(self, backend: StorageBackend) -> None:
        """A reader that stops after one chunk closes the stream; the backend stays usable."""
        data = sample_bytes(self.large_size, "early")
        cid = (await backend.add(data)).cid
        for _ in range(2):
            async with aclosing_stream(backend.fetch(cid)) as stream:
                async for first in stream:
                    assert first and data.startswith(first)
                    break
        assert await _read_all(backend, cid) == data

    async def test_fetch_missing_raises_not_found(self, backend: StorageBackend) -> None:
        missing = cid_of_bytes(sample_bytes(100, "never-stored-" + os.urandom(8).hex()), 0)
        with pytest.raises(NotFoundError):
            await _read_all(backend, missing)

    async def test_has(self, backend: StorageBackend) -> None:
        data = sample_bytes(64, "has")
        cid = (await backend.add(data)).cid
        assert await backend.has(cid) is True
        missing = cid_of_bytes(sample_bytes(64, "has-not-" + os.urandom(8).hex()), 0)
        assert await backend.has(missing) is False

    @pytest.mark.parametrize("bad", ["../../etc/passwd", "", "Qm/../x", "not a cid", "b" * 300])
    async def test_hostile_cid_strings_are_refused(self, backend: StorageBackend, bad: str) -> None:
        with pytest.raises((InvalidCIDError, NotFoundError)):
            await _read_all(backend, bad)
        with pytest.raises((InvalidCIDError, NotFoundError)):
            await backend.has(bad)

    async def test_pin_unpin(self, backend: StorageBackend) -> None:
        if not self.supports_pinning:
            pytest.skip(f"{type(backend).__name__} declares supports_pinning = False")
        data = sample_bytes(128, "pin")
        cid = (await backend.add(data)).cid
        pinned = await backend.pin(cid)
        assert same_cid(pinned.cid, cid)
        assert await backend.has(cid) is True
        await backend.unpin(cid, backend_ref=pinned.backend_ref)
        await backend.unpin(cid, backend_ref=pinned.backend_ref)  # idempotent

    async def test_unpin_absent_is_not_an_error(self, backend: StorageBackend) -> None:
        missing = cid_of_bytes(sample_bytes(32, "unpin-" + os.urandom(8).hex()), 0)
        await backend.unpin(missing)

    async def test_health(self, backend: StorageBackend) -> None:
        health = await backend.health()
        assert isinstance(health, Health)
        assert health.reachable is True
        assert isinstance(health.line(), str) and health.line()

    async def test_through_chain_verified(self, backend: StorageBackend) -> None:
        data = sample_bytes(10_000, "chain")
        chain = BackendChain([backend])
        result = await chain.add(data)
        assert result.stored_on == backend.name
        assert await chain.fetch_bytes(result.cid) == data

    async def test_errors_are_fedstore_errors(self, backend: StorageBackend) -> None:
        missing = cid_of_bytes(sample_bytes(16, "err-" + os.urandom(8).hex()), 1)
        try:
            await _read_all(backend, missing)
        except FedstoreError:
            pass
        else:  # pragma: no cover
            pytest.fail("fetching a missing CID must raise a FedstoreError")

    async def test_aclose_twice(self, backend: StorageBackend) -> None:
        await backend.aclose()
        await backend.aclose()

    # -- construction, detection and lifespan --------------------------------------------

    @pytest.fixture
    def backend_settings(self) -> Mapping[str, str]:
        """Settings :meth:`StorageBackend.create` gets in the checks below (default: none)."""
        return {}

    @pytest.fixture
    def backend_context(self, tmp_path: Path) -> BackendContext:
        """The context ``create`` and ``detect`` get (default: a temporary data dir, no host)."""
        return BackendContext(data_dir=tmp_path / "node")

    @pytest.fixture
    def new_backend(
        self,
        backend: StorageBackend,
        backend_settings: Mapping[str, str],
        backend_context: BackendContext,
    ) -> Callable[[], StorageBackend]:
        """Builds fresh instances, configured like *backend* and not yet running."""
        cls = type(backend)
        return lambda: cls.create(backend_settings, backend_context)

    async def test_declared_settings_are_well_formed(self, backend: StorageBackend) -> None:
        declared = type(backend).settings
        assert isinstance(declared, tuple)
        assert all(isinstance(s, Setting) for s in declared)
        names = [n for s in declared for n in (s.name, *s.aliases)]
        assert len(names) == len(set(names)), f"a setting name is declared twice: {names}"
        keys = [s.toml_key(backend.name) for s in declared]
        assert len(keys) == len(set(keys)), f"two settings share a fedstore.toml key: {keys}"
        for setting in declared:
            assert setting.help, f"{setting.name} has no help text"
            setting.validate({})  # the default itself is valid

    async def test_detect_answers_without_raising(
        self, backend: StorageBackend, backend_context: BackendContext
    ) -> None:
        cls = type(backend)
        for ctx in (backend_context, BackendContext()):
            found = cls.detect({}, ctx)
            assert found is None or (
                isinstance(found, Detected) and isinstance(found.priority, int) and found.reason
            ), found

    async def test_lifespan_brackets_use(self, new_backend: Callable[[], StorageBackend]) -> None:
        fresh = new_backend()
        data = sample_bytes(3000, "lifespan")
        async with fresh.lifespan():
            cid = (await fresh.add(data)).cid
            assert await _read_all(fresh, cid) == data
        await fresh.aclose()
        await fresh.aclose()

    async def test_lifespan_passes_errors_through(
        self, new_backend: Callable[[], StorageBackend]
    ) -> None:
        class Boom(Exception):
            pass

        fresh = new_backend()
        with pytest.raises(Boom):
            async with fresh.lifespan():
                raise Boom("raised inside the lifespan")
        await fresh.aclose()

    async def test_chain_runs_lifespans(self, new_backend: Callable[[], StorageBackend]) -> None:
        data = sample_bytes(2000, "chain-lifespan")
        async with BackendChain([new_backend()]) as chain:
            result = await chain.add(data)
            assert await chain.fetch_bytes(result.cid) == data
