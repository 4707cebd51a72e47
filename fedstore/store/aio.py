"""Async facade over :class:`~fedstore.store.local.LocalStore` for the node.

Encoding, hashing, file I/O and catalog writes all run in a worker thread
(``trio.to_thread.run_sync``), one thread hop per call.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, TypeVar

import numpy as np
import trio

from fedstore.catalog import AsyncCatalog, Catalog, CheckpointRecord
from fedstore.store.local import LocalStore
from fedstore.store.reconcile import ReconcileReport, VerifyLevel

if TYPE_CHECKING:
    from fedstore.format import Checkpoint

__all__ = ["AsyncLocalStore"]

T = TypeVar("T")


class AsyncLocalStore:
    """Awaitable twin of :class:`LocalStore`; same method names and contracts."""

    def __init__(self, store: LocalStore) -> None:
        self.sync = store
        self.catalog = AsyncCatalog(store.catalog)

    @classmethod
    async def open(
        cls,
        directory: str | Path,
        catalog: Catalog | None = None,
        *,
        peer_id: str | None = None,
        cid_version: int = 0,
        verify_on_open: VerifyLevel | None = "latest",
    ) -> Self:
        """Open the store (catalog open/upgrade and reconcile) in a worker thread."""
        store = await trio.to_thread.run_sync(
            functools.partial(
                LocalStore,
                directory,
                catalog,
                peer_id=peer_id,
                cid_version=cid_version,
                verify_on_open=verify_on_open,
            )
        )
        return cls(store)

    @property
    def dir(self) -> Path:
        return self.sync.dir

    @property
    def last_reconcile(self) -> ReconcileReport | None:
        return self.sync.last_reconcile

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))

    async def aclose(self) -> None:
        await self._call(self.sync.close)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def save(
        self,
        round: int,
        arrays: Mapping[str, np.ndarray],
        metadata: Mapping[str, str] | None = None,
        *,
        replace: bool = False,
    ) -> CheckpointRecord:
        return await self._call(self.sync.save, round, arrays, metadata, replace=replace)

    async def save_encoded(
        self, round: int, data: bytes, cid: str, *, replace: bool = False
    ) -> CheckpointRecord:
        return await self._call(self.sync.save_encoded, round, data, cid, replace=replace)

    async def load(
        self, round: int | None = None, *, max_decoded_size: int | None = None
    ) -> Checkpoint:
        return await self._call(self.sync.load, round, max_decoded_size=max_decoded_size)

    async def read_verified(self, round: int | None = None) -> tuple[CheckpointRecord, bytes]:
        return await self._call(self.sync.read_verified, round)

    async def latest(self) -> CheckpointRecord | None:
        return await self._call(self.sync.latest)

    async def get(self, round: int) -> CheckpointRecord:
        return await self._call(self.sync.get, round)

    async def list_rounds(self) -> list[int]:
        return await self._call(self.sync.list_rounds)

    async def list_checkpoints(self) -> list[CheckpointRecord]:
        return await self._call(self.sync.list_checkpoints)

    async def path_of(self, round: int) -> Path:
        return await self._call(self.sync.path_of, round)

    async def delete(self, round: int) -> CheckpointRecord:
        return await self._call(self.sync.delete, round)

    async def prune(self, keep_last: int) -> list[CheckpointRecord]:
        return await self._call(self.sync.prune, keep_last)

    async def reconcile(self, verify: VerifyLevel = "latest") -> ReconcileReport:
        return await self._call(self.sync.reconcile, verify)
