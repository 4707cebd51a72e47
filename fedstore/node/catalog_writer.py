"""The node's background catalog writes: one task, batched, never in the way of readers.

Everything a running node writes to its catalog on its own account (the
announcements it hears, the heads peers answer, the peers it meets, the
periodic pruning) goes through one :class:`CatalogWriter`, which

* takes each write at once and returns (the caller, a topic worker or a
  connection greeting, never waits on SQLite);
* coalesces: repeats of one (round, CID, sender, topic) while a write is
  pending become one row update (``times_heard`` grows by the repeats);
* writes what is pending in one transaction (:meth:`Catalog.record_announcements`),
  one batch at a time, so at most one of the catalog facade's threads ever
  waits on a lock held by another process; the others stay free for reads
  (``catalog.sqlite`` is WAL: readers never wait for writers);
* keeps a batch whose write failed (a lock held past the busy timeout) and
  tries again, so a locked catalog delays announcements but does not lose
  them; only when more than ``max_pending`` distinct announcements wait are
  new ones dropped, each counted (``model-cids:catalog_busy`` in the drop
  counters) and logged, never silently.

Statistics (:attr:`CatalogWriter.stats`) say how many announcements were
written, coalesced and dropped, and how many batches failed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import trio

from fedstore.catalog import HeardAnnouncement
from fedstore.catalog.models import utcnow
from fedstore.errors import FedstoreError
from fedstore.p2p.guard import DropCounters

__all__ = ["CatalogWriter", "WriterStats"]

log = logging.getLogger(__name__)

#: Distinct announcements waiting for the catalog before new ones are dropped.
MAX_PENDING = 20_000
#: Most announcements written in one transaction.
MAX_BATCH = 2_000
#: Seconds between attempts after a failed batch.
RETRY_DELAY = 0.5

_Key = tuple[int, str, str, str]


@dataclass
class WriterStats:
    """Counts since the node started."""

    written: int = 0
    coalesced: int = 0
    dropped: int = 0
    batches: int = 0
    failed_batches: int = 0


class _Pending:
    __slots__ = ("count", "first", "last")

    def __init__(self, when: datetime) -> None:
        self.first = when
        self.last = when
        self.count = 1


class CatalogWriter:
    """Batches a node's own catalog writes (see the module docstring).

    *record* writes a batch of announcements (``AsyncCatalog.record_announcements``),
    *upsert_peer* records a peer's addresses, *counters* receives the drops.
    Run :meth:`run` in a nursery for the node's life.
    """

    def __init__(
        self,
        *,
        record: Callable[[Sequence[HeardAnnouncement]], Awaitable[int]],
        upsert_peer: Callable[[str, list[str] | None], Awaitable[object]],
        counters: DropCounters,
        drop_topic: str,
        max_pending: int = MAX_PENDING,
        max_batch: int = MAX_BATCH,
        retry_delay: float = RETRY_DELAY,
    ) -> None:
        self._record = record
        self._upsert_peer = upsert_peer
        self._counters = counters
        self._drop_topic = drop_topic
        self._max_pending = max_pending
        self._max_batch = max_batch
        self._retry_delay = retry_delay
        self._pending: dict[_Key, _Pending] = {}
        self._peers: dict[str, list[str] | None] = {}
        self._jobs: list[Callable[[], Awaitable[object]]] = []
        self._wake = trio.Event()
        self._idle = trio.Event()
        self._idle.set()
        self._lock = trio.Lock()  # one batch at a time, between run() and flush()
        self.stats = WriterStats()

    # -- taking writes (never blocks) ------------------------------------------------

    def announcement(
        self, round: int, cid: str, sender: str, topic: str, when: datetime | None = None
    ) -> bool:
        """Queue one heard announcement; False if it was dropped (too much pending)."""
        key = (round, cid, sender, topic)
        at = when or utcnow()
        pending = self._pending.get(key)
        if pending is not None:
            pending.count += 1
            pending.last = max(pending.last, at)
            self.stats.coalesced += 1
            return True
        if len(self._pending) >= self._max_pending:
            self.stats.dropped += 1
            self._counters.drop(self._drop_topic, "catalog_busy", sender, f"round {round}")
            return False
        self._pending[key] = _Pending(at)
        self._poke()
        return True

    def peer(self, peer_id: str, addrs: list[str] | None) -> None:
        """Queue recording *peer_id* (and its addresses, if given)."""
        if len(self._peers) < self._max_pending or peer_id in self._peers:
            self._peers[peer_id] = addrs
            self._poke()

    def job(self, fn: Callable[[], Awaitable[object]]) -> None:
        """Queue another write (pruning, ...), run in turn with the batches."""
        if len(self._jobs) < 16:
            self._jobs.append(fn)
            self._poke()

    def pending_claims(self, *, above: int | None, per_sender: int) -> list[tuple[int, str, str]]:
        """``(round, cid, sender)`` of announcements not yet written, above *above*, at most
        *per_sender* (the highest) per sender: what sync may use while the catalog is busy."""
        best: dict[str, list[tuple[int, str]]] = {}
        for round_, cid, sender, _topic in self._pending:
            if above is not None and round_ <= above:
                continue
            best.setdefault(sender, []).append((round_, cid))
        out = []
        for sender, claims in best.items():
            for round_, cid in sorted(claims, reverse=True)[:per_sender]:
                out.append((round_, cid, sender))
        return out

    @property
    def pending(self) -> int:
        """Announcements waiting to be written."""
        return len(self._pending)

    def _poke(self) -> None:
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        self._wake.set()

    async def wait_idle(self) -> None:
        """Return once everything queued so far has been written (or dropped)."""
        await self._idle.wait()

    # -- writing ----------------------------------------------------------------------

    async def run(self) -> None:
        """Write batches until cancelled."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while self._pending or self._peers or self._jobs:
                if not await self._write_once():
                    await trio.sleep(self._retry_delay)
            self._idle.set()

    async def flush(self) -> None:
        """Write what is pending now (a node stopping calls it, with a deadline)."""
        while self._pending or self._peers or self._jobs:
            if not await self._write_once():
                return

    async def _write_once(self) -> bool:
        """One batch (or one peer, or one job); False if the catalog refused it."""
        async with self._lock:
            return await self._write_next()

    async def _write_next(self) -> bool:
        if self._pending:
            keys = list(self._pending)[: self._max_batch]
            batch = [
                HeardAnnouncement(*key, received_at=p.first, last_received_at=p.last, times=p.count)
                for key in keys
                for p in (self._pending[key],)
            ]
            try:
                await self._record(batch)
            except FedstoreError as exc:
                self.stats.failed_batches += 1
                log.warning(
                    "catalog busy: %d announcement(s) wait to be recorded (%s)",
                    len(self._pending),
                    exc,
                )
                return False
            for key in keys:
                del self._pending[key]
            self.stats.written += len(keys)
            self.stats.batches += 1
            return True
        if self._peers:
            peer_id, addrs = next(iter(self._peers.items()))
            try:
                await self._upsert_peer(peer_id, addrs)
            except FedstoreError as exc:
                log.warning("could not record peer %s: %s", peer_id, exc)
                return False
            if self._peers.get(peer_id) == addrs:
                del self._peers[peer_id]
            return True
        if not self._jobs:
            return True  # the other writer (run or flush) took it meanwhile
        job = self._jobs.pop(0)
        try:
            await job()
        except FedstoreError as exc:
            log.warning("background catalog write failed: %s", exc)
        return True
