"""What a member remembers of a federation: manifests used, models adopted or refused.

The round loops write through the small :class:`Ledger` protocol; a node
keeps it in its catalog (tables ``manifests`` and ``federation_rounds``,
:class:`fedstore.catalog.Catalog`), the in-memory fake in a
:class:`MemoryLedger`. A member restarted with the same data directory reads
its run (session) and the last global model it adopted back from the ledger
and resumes from there - never from what the network claims.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from fedstore.catalog.records import FederationRoundRecord as LedgerEntry

__all__ = ["ADOPTED", "REFUSED", "Ledger", "LedgerEntry", "MemoryLedger"]

#: a global model this member verified (or computed) and built on
#: (:class:`LedgerEntry` is :class:`fedstore.catalog.records.FederationRoundRecord`)
ADOPTED = "adopted"
#: a global model announced to this member that did not verify
REFUSED = "refused"


class Ledger(Protocol):
    """Where a member records its federation runs (a node: its catalog)."""

    async def record_manifest(self, cid: str, data: bytes) -> None:
        """Keep a manifest this member runs with (idempotent)."""
        ...

    async def record(self, entry: LedgerEntry) -> None:
        """Record a model adopted or refused (the same one again replaces the row)."""
        ...

    async def last_adopted(self, manifest: str) -> LedgerEntry | None:
        """The newest adopted model of the newest run of ``manifest``, if any."""
        ...


@dataclass
class MemoryLedger:
    """A :class:`Ledger` in memory (the fake network keeps one per peer id)."""

    manifests: dict[str, bytes] = field(default_factory=dict)
    entries: list[LedgerEntry] = field(default_factory=list)

    async def record_manifest(self, cid: str, data: bytes) -> None:
        self.manifests.setdefault(cid, bytes(data))

    async def record(self, entry: LedgerEntry) -> None:
        self.entries = [
            e
            for e in self.entries
            if (e.manifest, e.session, e.round, e.cid)
            != (entry.manifest, entry.session, entry.round, entry.cid)
        ]
        self.entries.append(entry)

    async def last_adopted(self, manifest: str) -> LedgerEntry | None:
        adopted = [e for e in self.entries if e.manifest == manifest and e.status == ADOPTED]
        if not adopted:
            return None
        session = adopted[-1].session  # the newest run: the last one written
        return max((e for e in adopted if e.session == session), key=lambda e: e.round)

    def adopted(self, session: str | None = None) -> list[LedgerEntry]:
        """Adopted entries (of one run), in the order recorded."""
        return [
            e
            for e in self.entries
            if e.status == ADOPTED and (session is None or e.session == session)
        ]

    def refused(self) -> list[LedgerEntry]:
        return [e for e in self.entries if e.status == REFUSED]
