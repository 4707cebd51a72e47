"""Async facade over :class:`~fedstore.store.local.LocalStore` for the node.

Encoding, hashing, file I/O and catalog writes all run in a worker thread on
the facade's own :class:`trio.CapacityLimiter` (:mod:`fedstore.aio`), one
thread hop per call. The methods are the :class:`LocalStore` methods of the
same names, with the same parameters, results and errors (one ``in_thread``
line each; a test checks that every public ``LocalStore`` method has its
twin here). :attr:`AsyncLocalStore.catalog` is an
:class:`~fedstore.catalog.AsyncCatalog` over the store's catalog, with a
limiter of its own.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Self

import trio

from fedstore.aio import ThreadFacade, in_thread
from fedstore.catalog import AsyncCatalog, Catalog
from fedstore.store.local import LocalStore
from fedstore.store.reconcile import ReconcileReport, VerifyLevel

__all__ = ["STORE_THREADS", "AsyncLocalStore"]

#: Worker threads of one store's facade (saves compress and hash: CPU-bound).
STORE_THREADS = 4


class AsyncLocalStore(ThreadFacade[LocalStore]):
    """Awaitable twin of :class:`LocalStore`; same method names and contracts."""

    def __init__(self, store: LocalStore, *, limiter: trio.CapacityLimiter | None = None) -> None:
        super().__init__(store, limiter=limiter or trio.CapacityLimiter(STORE_THREADS))
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
        exclusive: bool = False,
        read_only: bool | None = False,
    ) -> Self:
        """Open the store (catalog open/upgrade and reconcile) in a worker thread.

        *exclusive* and *read_only* as for :class:`LocalStore` (a node opens
        its store exclusive: one node per data directory).
        """
        store = await trio.to_thread.run_sync(
            functools.partial(
                LocalStore,
                directory,
                catalog,
                peer_id=peer_id,
                cid_version=cid_version,
                verify_on_open=verify_on_open,
                exclusive=exclusive,
                read_only=read_only,
            )
        )
        return cls(store)

    @property
    def dir(self) -> Path:
        return self.sync.dir

    @property
    def last_reconcile(self) -> ReconcileReport | None:
        return self.sync.last_reconcile

    async def aclose(self) -> None:
        """Close the store (idempotent) and release the data directory's lock."""
        # shielded: closing while cancelled must still close (and release the data dir's lock)
        with trio.CancelScope(shield=True):
            await self.run_sync(self.sync.close)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    save = in_thread(LocalStore.save)
    save_encoded = in_thread(LocalStore.save_encoded)
    load = in_thread(LocalStore.load)
    read_verified = in_thread(LocalStore.read_verified)
    latest = in_thread(LocalStore.latest)
    get = in_thread(LocalStore.get)
    list_rounds = in_thread(LocalStore.list_rounds)
    list_checkpoints = in_thread(LocalStore.list_checkpoints)
    path_of = in_thread(LocalStore.path_of)
    delete = in_thread(LocalStore.delete)
    prune = in_thread(LocalStore.prune)
    reconcile = in_thread(LocalStore.reconcile)
