"""Late-joiner sync: find the network's latest checkpoint and fetch it.

Gossipsub does not replay history, so :class:`Syncer` gathers what is known
about the network's head from two places:

* the peers, asked right now over the head protocol
  (:mod:`fedstore.p2p.headproto`), all at once with a timeout;
* the announcements already recorded in the catalog (heard on
  ``model-cids`` or learned from earlier head answers).

Candidates are the (round, CID) pairs above the local head, highest round
first; for one round, the CID vouched for by the most distinct peers first.
The syncer fetches the best candidate through the backend chain (which
verifies every byte against the CID), stores it locally and returns the new
head; if that candidate cannot be fetched it tries the next, up to
``max_attempts``. Nothing newer than the local head: the local head is
returned without fetching anything.

The syncer takes plain async callables, so it can be tested without a
network, a catalog or a store.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

import trio

from fedstore.errors import FedstoreError, NotFoundError

__all__ = ["Candidate", "Head", "SyncOutcome", "Syncer", "rank_candidates"]

log = logging.getLogger(__name__)


class Head(NamedTuple):
    """A checkpoint head: its *round* and *cid*."""

    round: int
    cid: str


@dataclass(frozen=True)
class Candidate:
    """A (round, CID) some peers claim, and which peers claim it."""

    round: int
    cid: str
    peers: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class SyncOutcome:
    """Result of :meth:`Syncer.sync`: the head after syncing and whether it was fetched."""

    head: Head | None
    fetched: bool
    failures: tuple[str, ...] = ()


#: (round, cid, peer) claims
Claim = tuple[int, str, str]


def rank_candidates(claims: Iterable[Claim], *, above: int | None) -> list[Candidate]:
    """Group claims by (round, CID), keep rounds above *above*, best first."""
    groups: dict[tuple[int, str], set[str]] = {}
    for round_, cid, peer in claims:
        if above is not None and round_ <= above:
            continue
        groups.setdefault((round_, cid), set()).add(peer)
    ranked = sorted(groups.items(), key=lambda kv: (-kv[0][0], -len(kv[1]), kv[0][1]))
    return [Candidate(r, c, frozenset(p)) for (r, c), p in ranked]


class Syncer:
    """Brings the local store up to the network's latest checkpoint (module docstring)."""

    def __init__(
        self,
        *,
        local_head: Callable[[], Awaitable[Head | None]],
        ask_peers: Callable[[], Awaitable[list[Claim]]],
        known_claims: Callable[[], Awaitable[list[Claim]]],
        fetch: Callable[[str], Awaitable[bytes]],
        store: Callable[[int, bytes, str], Awaitable[Head]],
        max_attempts: int = 3,
    ) -> None:
        self._local_head = local_head
        self._ask_peers = ask_peers
        self._known_claims = known_claims
        self._fetch = fetch
        self._store = store
        self._max_attempts = max_attempts
        self._lock = trio.Lock()

    async def candidates(self) -> tuple[Head | None, list[Candidate]]:
        """The local head and the ranked candidates above it (asks the peers)."""
        local = await self._local_head()
        claims = list(await self._ask_peers())
        claims.extend(await self._known_claims())
        return local, rank_candidates(claims, above=None if local is None else local.round)

    async def sync(self) -> SyncOutcome:
        """Fetch the best newer checkpoint, if any. One sync runs at a time."""
        async with self._lock:
            local, ranked = await self.candidates()
            if not ranked:
                return SyncOutcome(local, fetched=False)
            failures: list[str] = []
            for cand in ranked[: self._max_attempts]:
                try:
                    data = await self._fetch(cand.cid)
                    head = await self._store(cand.round, data, cand.cid)
                except FedstoreError as exc:
                    kind = "not found" if isinstance(exc, NotFoundError) else type(exc).__name__
                    log.warning(
                        "sync: round %d (%s) failed: %s: %s", cand.round, cand.cid, kind, exc
                    )
                    failures.append(f"round {cand.round} {cand.cid}: {exc}")
                    continue
                log.info(
                    "sync: fetched round %d (%s), vouched by %d peer(s)",
                    cand.round,
                    cand.cid,
                    len(cand.peers),
                )
                return SyncOutcome(head, fetched=True, failures=tuple(failures))
            return SyncOutcome(local, fetched=False, failures=tuple(failures))
