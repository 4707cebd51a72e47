"""Async facade over :class:`~fedstore.catalog.catalog.Catalog` for trio code.

Every call runs the synchronous method in a worker thread
(``trio.to_thread.run_sync``), so a slow query or a lock wait never stalls
the event loop. Calls are not cancellable once started (the thread finishes
its transaction); cancellation takes effect when the call returns.

``await acat.run(fn, *args)`` runs any function taking the Catalog as its
first argument, for batches that should share one thread hop.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, Self, TypeVar

import trio

from fedstore.catalog.catalog import Catalog
from fedstore.catalog.records import (
    AnnouncementRecord,
    CheckpointRecord,
    FederationRoundRecord,
    LatestAnnounced,
    ManifestRecord,
    PeerRecord,
    PinRecord,
    QueryResult,
    RoundHistoryRow,
    RoundMetricRecord,
)

__all__ = ["AsyncCatalog"]

P = ParamSpec("P")
T = TypeVar("T")


class AsyncCatalog:
    """Awaitable twin of :class:`Catalog`; same method names and contracts."""

    def __init__(self, catalog: Catalog) -> None:
        self.sync = catalog

    @classmethod
    async def open(cls, location: str | Path, *, auto_upgrade: bool | None = None) -> Self:
        """Open (create or upgrade) the catalog in a worker thread."""
        cat = await trio.to_thread.run_sync(
            functools.partial(Catalog.open, location, auto_upgrade=auto_upgrade)
        )
        return cls(cat)

    async def run(
        self, fn: Callable[Concatenate[Catalog, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run ``fn(catalog, *args, **kwargs)`` in a worker thread."""
        return await trio.to_thread.run_sync(functools.partial(fn, self.sync, *args, **kwargs))

    async def aclose(self) -> None:
        """Close the catalog (idempotent)."""
        await trio.to_thread.run_sync(self.sync.close)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def path(self) -> Path:
        return self.sync.path

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))

    async def add_checkpoint(self, round: int, cid: str, **kwargs: Any) -> CheckpointRecord:
        return await self._call(self.sync.add_checkpoint, round, cid, **kwargs)

    async def get_checkpoint(self, round: int) -> CheckpointRecord | None:
        return await self._call(self.sync.get_checkpoint, round)

    async def latest_checkpoint(self) -> CheckpointRecord | None:
        return await self._call(self.sync.latest_checkpoint)

    async def latest_round(self) -> int | None:
        return await self._call(self.sync.latest_round)

    async def list_checkpoints(self, **kwargs: Any) -> list[CheckpointRecord]:
        return await self._call(self.sync.list_checkpoints, **kwargs)

    async def list_rounds(self, **kwargs: Any) -> list[int]:
        return await self._call(self.sync.list_rounds, **kwargs)

    async def delete_checkpoint(
        self, round: int, *, cid: str | None = None
    ) -> CheckpointRecord | None:
        return await self._call(self.sync.delete_checkpoint, round, cid=cid)

    async def mark_checkpoint_status(
        self, round: int, status: str, *, cid: str | None = None
    ) -> bool:
        return await self._call(self.sync.mark_checkpoint_status, round, status, cid=cid)

    async def record_announcement(
        self,
        round: int,
        cid: str,
        sender: str,
        topic: str,
        received_at: datetime | None = None,
    ) -> AnnouncementRecord:
        return await self._call(
            self.sync.record_announcement, round, cid, sender, topic, received_at
        )

    async def announcements(self, **kwargs: Any) -> list[AnnouncementRecord]:
        return await self._call(self.sync.announcements, **kwargs)

    async def prune_announcements(self, per_sender: int) -> int:
        return await self._call(self.sync.prune_announcements, per_sender)

    async def latest_announced(self) -> LatestAnnounced | None:
        return await self._call(self.sync.latest_announced)

    async def upsert_peer(
        self,
        peer_id: str,
        addrs: Sequence[str] | None = None,
        role: str | None = None,
        *,
        seen_at: datetime | None = None,
    ) -> PeerRecord:
        return await self._call(self.sync.upsert_peer, peer_id, addrs, role, seen_at=seen_at)

    async def get_peer(self, peer_id: str) -> PeerRecord | None:
        return await self._call(self.sync.get_peer, peer_id)

    async def list_peers(self) -> list[PeerRecord]:
        return await self._call(self.sync.list_peers)

    async def set_pin(
        self,
        cid: str,
        backend: str,
        state: str,
        backend_ref: str | None = None,
        error: str | None = None,
    ) -> PinRecord:
        return await self._call(self.sync.set_pin, cid, backend, state, backend_ref, error)

    async def pins_for(self, cid: str) -> list[PinRecord]:
        return await self._call(self.sync.pins_for, cid)

    async def pins(self, state: str | None = None) -> list[PinRecord]:
        return await self._call(self.sync.pins, state)

    async def record_round_metrics(
        self,
        round: int,
        cid: str,
        *,
        participants: int,
        num_samples: int,
        metrics: Mapping[str, Mapping[str, float]],
        recorded_at: datetime | None = None,
    ) -> int:
        return await self._call(
            self.sync.record_round_metrics,
            round,
            cid,
            participants=participants,
            num_samples=num_samples,
            metrics=metrics,
            recorded_at=recorded_at,
        )

    async def round_metrics(
        self, *, round: int | None = None, source: str | None = None
    ) -> list[RoundMetricRecord]:
        return await self._call(self.sync.round_metrics, round=round, source=source)

    async def record_manifest(self, cid: str, data: bytes) -> ManifestRecord:
        return await self._call(self.sync.record_manifest, cid, data)

    async def get_manifest(self, cid: str) -> ManifestRecord | None:
        return await self._call(self.sync.get_manifest, cid)

    async def record_federation_round(self, entry: FederationRoundRecord) -> None:
        await self._call(self.sync.record_federation_round, entry)

    async def federation_rounds(
        self, *, manifest: str | None = None, session: str | None = None
    ) -> list[FederationRoundRecord]:
        return await self._call(self.sync.federation_rounds, manifest=manifest, session=session)

    async def last_adopted_round(self, manifest: str) -> FederationRoundRecord | None:
        return await self._call(self.sync.last_adopted_round, manifest)

    async def round_history(self, *, limit: int | None = None) -> list[RoundHistoryRow]:
        return await self._call(self.sync.round_history, limit=limit)

    async def read_only_query(self, sql: str, **kwargs: Any) -> QueryResult:
        return await self._call(self.sync.read_only_query, sql, **kwargs)
