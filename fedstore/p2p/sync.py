"""Late-joiner sync: find the network's latest checkpoint and fetch it.

Gossipsub does not replay history, so :class:`Syncer` gathers what is known
about the network's head from two places:

* the peers, asked right now over the head protocol
  (:mod:`fedstore.p2p.headproto`), all at once with a timeout (a sync may
  skip this: ``sync(ask_peers=False)``, which auto-sync does, so a node never
  spends its head-request allowance at its own peers on every announcement);
* the claims already recorded in the catalog (heard on ``model-cids`` or
  learned from earlier head answers; a bounded number per sender).

Candidates are the (round, CID) pairs above the local head. Anyone can claim
anything, so the syncer remembers what failed (``failures``/``record_failure``,
the catalog's ``failed_claims`` table, kept across restarts) and ranks by
trust before height:

1. candidates that never failed, claimed by at least one peer with no failed
   claim on record;
2. candidates that never failed, claimed only by peers with failed claims
   (a peer that announced what it could not serve);
3. candidates that failed before and whose back-off has passed
   (``retry_after`` seconds after the first failure, doubling with each
   further failure up to ``retry_cap``);

and within a tier the highest round first, then the CID the most distinct
peers vouch for, spread so that no peer's claims come twice before every
other claimer's first (one peer with many claims costs one attempt per
pass). Candidates still inside their back-off are not tried at all
(counted in :attr:`SyncOutcome.skipped`). So three claims of CIDs nobody has
at round 10^12 cost one failed attempt, once: the same sync goes on to the
honest peer's older round, and a fresh claim from the same peer ranks below
every honest peer's. A candidate fetched after all has its failures cleared.

The syncer fetches candidates in that order through the backend chain (which
verifies every byte against the CID), stores the first that works and returns
the new head, trying at most ``max_attempts``. Nothing newer than the local
head: the local head is returned without fetching anything.

The syncer takes plain async callables, so it can be tested without a
network, a catalog or a store.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import trio

from fedstore.errors import FedstoreError, NotFoundError

__all__ = [
    "Candidate",
    "Failure",
    "Head",
    "SyncOutcome",
    "Syncer",
    "backoff",
    "rank_candidates",
]

log = logging.getLogger(__name__)

#: Seconds a failed candidate is left alone after its first failure (doubles per failure).
RETRY_AFTER = 30.0
#: Longest back-off of a failed candidate, seconds.
RETRY_CAP = 3600.0


class Head(NamedTuple):
    """A checkpoint head: its *round* and *cid*."""

    round: int
    cid: str


@dataclass(frozen=True)
class Candidate:
    """A (round, CID) some peers claim, and which peers claim it.

    *failures* is how often it failed to fetch before (0: never), *suspect*
    whether every claimer has a failed claim on record.
    """

    round: int
    cid: str
    peers: frozenset[str] = field(default_factory=frozenset)
    failures: int = 0
    suspect: bool = False


class Failure(NamedTuple):
    """A remembered failed claim: *peer* claimed (*round*, *cid*); *attempts* fetches
    failed, the last at *last_failed* (seconds since the epoch)."""

    round: int
    cid: str
    peer: str
    attempts: int
    last_failed: float


@dataclass(frozen=True)
class SyncOutcome:
    """Result of :meth:`Syncer.sync`: the head after syncing and whether it was fetched.

    *failures* describes each candidate tried in vain; *skipped* counts the
    candidates left alone because they failed recently.
    """

    head: Head | None
    fetched: bool
    failures: tuple[str, ...] = ()
    skipped: int = 0


#: (round, cid, peer) claims
Claim = tuple[int, str, str]


def backoff(attempts: int, *, retry_after: float = RETRY_AFTER, cap: float = RETRY_CAP) -> float:
    """Seconds a candidate that failed *attempts* times is left alone after its last failure."""
    if attempts <= 0:
        return 0.0
    return float(min(cap, retry_after * 2 ** min(attempts - 1, 32)))


def rank_candidates(
    claims: Iterable[Claim],
    *,
    above: int | None,
    failures: Sequence[Failure] = (),
    now: float | None = None,
    retry_after: float = RETRY_AFTER,
    retry_cap: float = RETRY_CAP,
) -> list[Candidate]:
    """Group claims by (round, CID), keep rounds above *above*, best first (module docstring).

    Candidates in their back-off (by *failures* at time *now*) are left out.
    """
    ranked, _skipped = _rank(claims, above, failures, now, retry_after, retry_cap)
    return ranked


def _rank(
    claims: Iterable[Claim],
    above: int | None,
    failures: Sequence[Failure],
    now: float | None,
    retry_after: float,
    retry_cap: float,
) -> tuple[list[Candidate], int]:
    groups: dict[tuple[int, str], set[str]] = {}
    for round_, cid, peer in claims:
        if above is not None and round_ <= above:
            continue
        groups.setdefault((round_, cid), set()).add(peer)
    failed: dict[tuple[int, str], tuple[int, float]] = {}
    suspects: set[str] = set()
    for f in failures:
        key = (f.round, f.cid)
        attempts, last = failed.get(key, (0, 0.0))
        failed[key] = (max(attempts, f.attempts), max(last, f.last_failed))
        if f.peer:
            suspects.add(f.peer)
    when = time.time() if now is None else now
    out: list[Candidate] = []
    skipped = 0
    for (round_, cid), peers in groups.items():
        attempts, last = failed.get((round_, cid), (0, 0.0))
        if attempts and when - last < backoff(attempts, retry_after=retry_after, cap=retry_cap):
            skipped += 1
            continue
        suspect = bool(peers) and peers <= suspects
        out.append(Candidate(round_, cid, frozenset(peers), attempts, suspect))
    out.sort(key=lambda c: (c.failures > 0, c.suspect, -c.round, -len(c.peers), c.cid))
    return _spread(out), skipped


def _spread(ranked: list[Candidate]) -> list[Candidate]:
    """Within each tier, no peer's claims come twice before every other claimer's first.

    Passes over the tier in rank order, taking a candidate only if none of its
    claimers was taken in this pass: one peer's many claims cost one attempt
    each time round, not the whole sync.
    """
    out: list[Candidate] = []
    start = 0
    while start < len(ranked):
        tier = (ranked[start].failures > 0, ranked[start].suspect)
        end = start
        while end < len(ranked) and (ranked[end].failures > 0, ranked[end].suspect) == tier:
            end += 1
        remaining = ranked[start:end]
        while remaining:
            used: set[str] = set()
            later: list[Candidate] = []
            for cand in remaining:
                if cand.peers & used:
                    later.append(cand)
                else:
                    out.append(cand)
                    used |= cand.peers
            remaining = later
        start = end
    return out


class Syncer:
    """Brings the local store up to the network's latest checkpoint (module docstring).

    *failures* lists the remembered failed claims; *record_failure* is called
    with a candidate that could not be fetched and the error text (it should
    remember it and expire its claims); *clear_failure* with a candidate that
    was fetched. All three are optional (then nothing is remembered).
    """

    def __init__(
        self,
        *,
        local_head: Callable[[], Awaitable[Head | None]],
        ask_peers: Callable[[], Awaitable[list[Claim]]],
        known_claims: Callable[[], Awaitable[list[Claim]]],
        fetch: Callable[[str], Awaitable[bytes]],
        store: Callable[[int, bytes, str], Awaitable[Head]],
        failures: Callable[[], Awaitable[Sequence[Failure]]] | None = None,
        record_failure: Callable[[Candidate, str], Awaitable[None]] | None = None,
        clear_failure: Callable[[Candidate], Awaitable[None]] | None = None,
        max_attempts: int = 3,
        retry_after: float = RETRY_AFTER,
        retry_cap: float = RETRY_CAP,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._local_head = local_head
        self._ask_peers = ask_peers
        self._known_claims = known_claims
        self._fetch = fetch
        self._store = store
        self._failures = failures
        self._record_failure = record_failure
        self._clear_failure = clear_failure
        self._max_attempts = max_attempts
        self._retry_after = retry_after
        self._retry_cap = retry_cap
        self._clock = clock
        self._lock = trio.Lock()
        #: (round, cid) -> (attempts, last failure): the failures the last sync saw
        self._cache: dict[tuple[int, str], tuple[int, float]] = {}
        #: peers with a failed claim, as the last sync saw them
        self._suspects: set[str] = set()

    async def _ranked(self, *, ask_peers: bool) -> tuple[Head | None, list[Candidate], int]:
        local = await self._local_head()
        claims = list(await self._ask_peers()) if ask_peers else []
        claims.extend(await self._known_claims())
        failures = list(await self._failures()) if self._failures is not None else []
        self._cache = {}
        self._suspects = {f.peer for f in failures if f.peer}
        for f in failures:
            attempts, last = self._cache.get((f.round, f.cid), (0, 0.0))
            self._cache[(f.round, f.cid)] = (max(attempts, f.attempts), max(last, f.last_failed))
        ranked, skipped = _rank(
            claims,
            None if local is None else local.round,
            failures,
            self._clock(),
            self._retry_after,
            self._retry_cap,
        )
        return local, ranked, skipped

    async def candidates(self, *, ask_peers: bool = True) -> tuple[Head | None, list[Candidate]]:
        """The local head and the ranked candidates above it (asks the peers unless told not)."""
        local, ranked, _skipped = await self._ranked(ask_peers=ask_peers)
        return local, ranked

    def worth_trying(self, round: int, cid: str) -> bool:
        """Whether a claim of (*round*, *cid*) is out of back-off, by what the last sync
        knew (no I/O: cheap enough to ask for every announcement heard)."""
        known = self._cache.get((round, cid))
        if known is None:
            return True
        attempts, last = known
        wait = backoff(attempts, retry_after=self._retry_after, cap=self._retry_cap)
        return self._clock() - last >= wait

    def suspect(self, peer: str) -> bool:
        """Whether *peer* had a claim fail, by what the last sync knew (no I/O)."""
        return peer in self._suspects

    async def sync(self, *, ask_peers: bool = True) -> SyncOutcome:
        """Fetch the best newer checkpoint, if any. One sync runs at a time."""
        async with self._lock:
            local, ranked, skipped = await self._ranked(ask_peers=ask_peers)
            if not ranked:
                return SyncOutcome(local, fetched=False, skipped=skipped)
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
                    await self._remember(cand, f"{kind}: {exc}")
                    continue
                log.info(
                    "sync: fetched round %d (%s), vouched by %d peer(s)",
                    cand.round,
                    cand.cid,
                    len(cand.peers),
                )
                self._cache.pop((cand.round, cand.cid), None)
                if cand.failures and self._clear_failure is not None:
                    await self._forget(cand)
                return SyncOutcome(head, fetched=True, failures=tuple(failures), skipped=skipped)
            return SyncOutcome(local, fetched=False, failures=tuple(failures), skipped=skipped)

    async def _remember(self, cand: Candidate, error: str) -> None:
        if self._record_failure is None:
            return
        self._cache[(cand.round, cand.cid)] = (cand.failures + 1, self._clock())
        self._suspects |= cand.peers
        try:
            await self._record_failure(cand, error)
        except FedstoreError as exc:  # memory is an optimisation: never fail the sync for it
            log.warning("sync: could not remember the failure of round %d: %s", cand.round, exc)

    async def _forget(self, cand: Candidate) -> None:
        assert self._clear_failure is not None
        try:
            await self._clear_failure(cand)
        except FedstoreError as exc:
            log.warning("sync: could not clear the failures of round %d: %s", cand.round, exc)
