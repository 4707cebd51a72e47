"""An in-memory reference backend: the smallest complete implementation of the contract.

Useful in tests and as a template for new plugins. Not registered as an entry
point: data vanishes with the process.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import trio

from fedstore.backends.base import Health, Source, StorageBackend, StoredObject
from fedstore.errors import NotFoundError

__all__ = ["MemoryBackend"]


class MemoryBackend(StorageBackend):
    name = "memory"

    def __init__(self, name: str | None = None, *, chunk_size: int = 65536) -> None:
        if name:
            self.name = name  # type: ignore[misc]
        self.objects: dict[str, bytes] = {}
        self.pinned: set[str] = set()
        self.chunk_size = chunk_size

    async def add(
        self,
        source: Source,
        *,
        cid_version: int = 0,
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> StoredObject:
        from fedstore.ipld.cid import cid_of_bytes

        if isinstance(source, bytes | bytearray | memoryview):
            data = bytes(source)
        else:
            data = await trio.Path(source).read_bytes()
        cid = await trio.to_thread.run_sync(cid_of_bytes, data, cid_version)
        self.objects[cid] = data
        self.pinned.add(cid)
        return StoredObject(cid=cid, size=len(data))

    async def fetch(self, cid: str) -> AsyncIterator[bytes]:
        from fedstore.ipld.cid import parse_cid

        parse_cid(cid)
        try:
            data = self.objects[cid]
        except KeyError:
            raise NotFoundError(f"{self.name}: {cid} not held", backend=self.name) from None
        for i in range(0, len(data), self.chunk_size):
            yield data[i : i + self.chunk_size]
            await trio.lowlevel.checkpoint()

    async def has(self, cid: str) -> bool:
        from fedstore.ipld.cid import parse_cid

        parse_cid(cid)
        return cid in self.objects

    async def unpin(self, cid: str, *, backend_ref: str | None = None) -> None:
        self.pinned.discard(cid)

    async def health(self) -> Health:
        return Health(reachable=True, authenticated=True, version="memory")
