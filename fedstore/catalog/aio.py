"""Async facade over :class:`~fedstore.catalog.catalog.Catalog` for trio code.

Every call runs the synchronous method in a worker thread on the facade's
own :class:`trio.CapacityLimiter` (:mod:`fedstore.aio`), so a slow query or
a lock wait never stalls the event loop, and a burst of catalog calls cannot
take the threads other work needs. Calls are not cancellable once started
(the thread finishes its transaction); cancellation takes effect when the
call returns.

The methods are the :class:`Catalog` methods of the same names, with the
same parameters, results and errors (one ``in_thread`` line each; a test
checks that every public ``Catalog`` method has its twin here).
``await acat.run(fn, *args)`` runs any function taking the Catalog as its
first argument, for batches that should share one thread hop.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Concatenate, ParamSpec, Self, TypeVar

import trio

from fedstore.aio import ThreadFacade, in_thread
from fedstore.catalog.catalog import Catalog

__all__ = ["CATALOG_THREADS", "AsyncCatalog"]

P = ParamSpec("P")
T = TypeVar("T")

#: Worker threads of one catalog's facade (SQLite serialises writes anyway).
CATALOG_THREADS = 4


class AsyncCatalog(ThreadFacade[Catalog]):
    """Awaitable twin of :class:`Catalog`; same method names and contracts.

    *limiter* defaults to a new ``CapacityLimiter(CATALOG_THREADS)`` for this
    catalog alone.
    """

    def __init__(self, catalog: Catalog, *, limiter: trio.CapacityLimiter | None = None) -> None:
        super().__init__(catalog, limiter=limiter or trio.CapacityLimiter(CATALOG_THREADS))

    @classmethod
    async def open(
        cls,
        location: str | Path,
        *,
        auto_upgrade: bool | None = None,
        limiter: trio.CapacityLimiter | None = None,
    ) -> Self:
        """Open (create or upgrade) the catalog in a worker thread."""
        opened = functools.partial(Catalog.open, location, auto_upgrade=auto_upgrade)
        return cls(await trio.to_thread.run_sync(opened), limiter=limiter)

    async def run(
        self, fn: Callable[Concatenate[Catalog, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run ``fn(catalog, *args, **kwargs)`` in a worker thread."""
        return await self.run_sync(fn, self.sync, *args, **kwargs)

    async def aclose(self) -> None:
        """Close the catalog (idempotent)."""
        # shielded: closing while cancelled must still close (and release the data dir's lock)
        with trio.CancelScope(shield=True):
            await self.run_sync(self.sync.close)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def path(self) -> Path:
        return self.sync.path

    revision = in_thread(Catalog.revision)
    # checkpoints
    add_checkpoint = in_thread(Catalog.add_checkpoint)
    get_checkpoint = in_thread(Catalog.get_checkpoint)
    latest_checkpoint = in_thread(Catalog.latest_checkpoint)
    latest_round = in_thread(Catalog.latest_round)
    list_checkpoints = in_thread(Catalog.list_checkpoints)
    list_rounds = in_thread(Catalog.list_rounds)
    checkpoints_with_cid = in_thread(Catalog.checkpoints_with_cid)
    delete_checkpoint = in_thread(Catalog.delete_checkpoint)
    mark_checkpoint_status = in_thread(Catalog.mark_checkpoint_status)
    # announcements
    record_announcement = in_thread(Catalog.record_announcement)
    announcements = in_thread(Catalog.announcements)
    prune_announcements = in_thread(Catalog.prune_announcements)
    latest_announced = in_thread(Catalog.latest_announced)
    record_announcements = in_thread(Catalog.record_announcements)
    sync_claims = in_thread(Catalog.sync_claims)
    # failed sync claims
    record_failed_claim = in_thread(Catalog.record_failed_claim)
    failed_claims = in_thread(Catalog.failed_claims)
    clear_failed_claim = in_thread(Catalog.clear_failed_claim)
    prune_failed_claims = in_thread(Catalog.prune_failed_claims)
    # peers
    upsert_peer = in_thread(Catalog.upsert_peer)
    get_peer = in_thread(Catalog.get_peer)
    list_peers = in_thread(Catalog.list_peers)
    # pins
    set_pin = in_thread(Catalog.set_pin)
    pins_for = in_thread(Catalog.pins_for)
    pins = in_thread(Catalog.pins)
    delete_pin = in_thread(Catalog.delete_pin)
    # round metrics
    record_round_metrics = in_thread(Catalog.record_round_metrics)
    round_metrics = in_thread(Catalog.round_metrics)
    # federations
    record_manifest = in_thread(Catalog.record_manifest)
    get_manifest = in_thread(Catalog.get_manifest)
    list_manifests = in_thread(Catalog.list_manifests)
    record_federation_round = in_thread(Catalog.record_federation_round)
    federation_rounds = in_thread(Catalog.federation_rounds)
    last_adopted_round = in_thread(Catalog.last_adopted_round)
    # node runs
    record_node_start = in_thread(Catalog.record_node_start)
    record_node_stop = in_thread(Catalog.record_node_stop)
    node_runs = in_thread(Catalog.node_runs)
    last_node_run = in_thread(Catalog.last_node_run)
    # queries
    round_history = in_thread(Catalog.round_history)
    read_only_query = in_thread(Catalog.read_only_query)
