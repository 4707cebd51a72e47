"""Which block to ask from which peer, and when to give up on a peer: a fetch's network side.

A :class:`Scheduler` belongs to one :class:`~fedstore_bitswap.fetch.DagFetch`:
the walk tells it which blocks the window needs (:meth:`Scheduler.add_want`)
and takes arrived blocks from :attr:`Scheduler.arrived`; the engine calls
its :class:`~fedstore_bitswap.engine.FetchListener` methods as blocks and
presences come in; :meth:`Scheduler.tick` (on every change, at least every
0.1 s) moves requests. The rules (who has what, rarest first, by observed
rate, sparing the origin, hedging, timeouts, demotion) are described in
:mod:`fedstore_bitswap.fetch` and ``docs/BITSWAP.md``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

import trio
from libp2p.peer.id import ID

from fedstore.errors import NotFoundError, UnavailableError
from fedstore.ipld.cid import ParsedCid
from fedstore_bitswap.engine import FedstoreBitswapClient
from fedstore_bitswap.limits import BitswapLimits
from fedstore_bitswap.peers import PeerState

__all__ = ["FetchStats", "Scheduler", "Want"]

log = logging.getLogger("fedstore.backends.bitswap")

BACKEND = "bitswap"
#: Size assumed for a block whose size is not known yet (Kubo's chunk size).
DEFAULT_LEAF = 262144
#: A request moved off an origin may exceed the partial holder's limit by this much
#: (queueing there is cheaper than a duplicate from the origin's upload).
_REROUTE_SLACK = 2


@dataclass(slots=True)
class FetchStats:
    """What one fetch did (for logs, tests and the benchmark)."""

    cid: str
    bytes: int = 0
    blocks: int = 0
    blocks_local: int = 0
    blocks_by_peer: dict[str, int] = field(default_factory=dict)
    bytes_by_peer: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    timeouts: int = 0
    hedges: int = 0
    reroutes: int = 0
    dont_haves: int = 0
    duplicates: int = 0
    complete: bool = False
    seconds: float = 0.0


class Want:
    """A block in the window that has not arrived yet."""

    __slots__ = (
        "asked",
        "avoid",
        "cid_bytes",
        "dont_have",
        "holders",
        "key",
        "last_ask",
        "local_checked",
        "requests",
    )

    def __init__(self, cid_bytes: bytes, key: float) -> None:
        self.cid_bytes = cid_bytes
        self.key = key
        #: peers that said HAVE
        self.holders: set[ID] = set()
        self.dont_have: set[ID] = set()
        #: peers with a WANT_BLOCK outstanding -> when it was sent
        self.requests: dict[ID, float] = {}
        #: peers that were sent a WANT_HAVE or WANT_BLOCK (cancelled on arrival)
        self.asked: set[ID] = set()
        #: peers this block timed out at
        self.avoid: set[ID] = set()
        self.last_ask = 0.0
        self.local_checked = False


class Scheduler:
    """The network side of one fetch (see the module docstring)."""

    def __init__(
        self,
        engine: FedstoreBitswapClient,
        root: ParsedCid,
        limits: BitswapLimits,
        stats: FetchStats,
    ) -> None:
        self._engine = engine
        self._limits = limits
        self.root = root
        self.stats = stats
        #: blocks the window needs that have not arrived
        self.needed: dict[bytes, Want] = {}
        #: blocks that arrived (verified, stored) and wait for the walk
        self.arrived: dict[bytes, bytes] = {}
        self.root_arrived = False
        self.all_stored = True
        #: largest leaf seen so far (the walk's size guess for unknown blocks)
        self.leaf_estimate = DEFAULT_LEAF
        #: set whenever something happened the walk or the scheduler should look at
        self.changed = trio.Event()
        self.started = 0.0
        self.last_progress = 0.0
        self._fresh: list[bytes] = []
        #: wants requested from an origin that a partial holder has just announced
        self._reroute: set[bytes] = set()
        self._peers: dict[ID, PeerState] = {}
        self._root_answers: dict[ID, bool] = {}
        self._dropped: dict[ID, str] = {}
        self._next_discovery = 0.0
        self._no_peers_since: float | None = None
        self._priority = (1 << 31) - 1
        self._random = random.Random()  # noqa: S311 (block order, not secrets)

    def start(self, now: float) -> None:
        self.started = self.last_progress = now
        self._engine.register(self)

    def stop(self) -> None:
        """Unregister, and cancel every want still outstanding at any peer."""
        self._engine.unregister(self)
        cancels: dict[ID, list[bytes]] = {}
        for want in self.needed.values():
            for peer in want.asked:
                cancels.setdefault(peer, []).append(want.cid_bytes)
        for peer, cids in cancels.items():
            self._engine.send_cancels(peer, cids)

    def add_want(self, digest: bytes, cid_bytes: bytes) -> Want:
        """The window needs this block (asked from peers at the next tick)."""
        want = self.needed.get(digest)
        if want is None:
            want = self.needed[digest] = Want(cid_bytes, self._random.random())
            self._fresh.append(digest)
        return want

    # -- engine callbacks (FetchListener) -----------------------------------------------

    def wants(self, digest: bytes) -> bool:
        return digest in self.needed

    def wanted(self) -> Iterable[bytes]:
        return self.needed.keys()

    def has_inflight(self, peer: ID) -> bool:
        """Whether *peer* was asked for blocks of this fetch (WANT_BLOCK or WANT_HAVE)."""
        state = self._peers.get(peer)
        return bool(state and (state.inflight or state.introduced))

    def on_block(self, peer: ID, digest: bytes, data: bytes, stored: bool) -> None:
        want = self.needed.get(digest)
        if want is None:
            return
        now = trio.current_time()
        state = self._peer(peer)
        sent = state.remove(digest, now)
        state.record_delivery(len(data), sent, now)
        if state.demoted and peer not in self._dropped:
            state.demoted = False
            self._engine.reputation.forgive(peer)
        key = str(peer)
        self.stats.blocks_by_peer[key] = self.stats.blocks_by_peer.get(key, 0) + 1
        self.stats.bytes_by_peer[key] = self.stats.bytes_by_peer.get(key, 0) + len(data)
        self.arrive(digest, want, data, peer, stored)

    def on_presence(self, peer: ID, digest: bytes, have: bool) -> None:
        want = self.needed.get(digest)
        is_root = digest == self.root.digest
        if want is None and not is_root:
            return
        state = self._peer(peer)
        if not have:
            state.refused = True
            if state.likely_complete:
                # no longer assumed to hold everything: ask it what it has, like the rest
                state.likely_complete = False
                state.introduced = False
        if is_root:
            self._root_answers[peer] = have
            if have and not state.refused and peer not in self._dropped:
                state.likely_complete = True
        if want is None:
            return
        if have:
            want.holders.add(peer)
            want.dont_have.discard(peer)
            if (
                want.requests
                and peer not in want.requests
                and not state.likely_complete
                and not state.demoted
                and all(p in self._peers and self._peers[p].likely_complete for p in want.requests)
            ):
                self._reroute.add(digest)  # a peer that just got it can spare the origin
        else:
            self.stats.dont_haves += 1
            want.holders.discard(peer)
            want.dont_have.add(peer)
            if peer in want.requests:
                del want.requests[peer]
                self._peer(peer).remove(digest, trio.current_time())
        self._poke()

    def on_wrong_block(self, peer: ID, reason: str) -> None:
        self._drop(peer, reason)

    def on_peer_gone(self, peer: ID) -> None:
        self._root_answers.pop(peer, None)
        state = self._peers.pop(peer, None)
        if state is not None:
            for digest in list(state.inflight):
                want = self.needed.get(digest)
                if want is not None:
                    want.requests.pop(peer, None)
        for want in self.needed.values():
            want.holders.discard(peer)
            want.asked.discard(peer)
        self._poke()

    # -- bookkeeping ----------------------------------------------------------------------

    def _poke(self) -> None:
        self.changed.set()

    def _peer(self, peer: ID) -> PeerState:
        state = self._peers.get(peer)
        if state is None:
            now = trio.current_time()
            state = self._peers[peer] = PeerState(
                demoted=self._engine.reputation.is_demoted(peer, now)
            )
        return state

    def _drop(self, peer: ID, reason: str) -> None:
        if peer in self._dropped:
            return
        log.warning("bitswap fetch of %s: dropping peer %s: %s", self.root, peer, reason)
        self._dropped[peer] = reason
        self.stats.dropped[str(peer)] = reason
        self._engine.reputation.demote(peer, trio.current_time(), reason)
        state = self._peers.get(peer)
        if state is not None:
            state.demoted = True
            state.likely_complete = False
            now = trio.current_time()
            cancels = []
            for digest in list(state.inflight):
                state.remove(digest, now)
                want = self.needed.get(digest)
                if want is not None:
                    want.requests.pop(peer, None)
                    cancels.append(want.cid_bytes)
            self._engine.send_cancels(peer, cancels)
        self._poke()

    def arrive(self, digest: bytes, want: Want, data: bytes, peer: ID | None, stored: bool) -> None:
        del self.needed[digest]
        now = trio.current_time()
        for other in want.asked:
            if other != peer:
                state = self._peers.get(other)
                if state is not None:
                    state.remove(digest, now)
                self._engine.send_cancels(other, [want.cid_bytes])
        self.arrived[digest] = data
        self.all_stored = self.all_stored and stored
        self.stats.blocks += 1
        if peer is None:
            self.stats.blocks_local += 1
        if digest == self.root.digest:
            self.root_arrived = True
        self.last_progress = now
        self._poke()

    # -- talking to peers ---------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Timeouts, hedges, new peers, then assign requests; check the failure rules."""
        candidates = [p for p in self._engine.bitswap_peers() if p not in self._dropped]
        self._check_requests(now, candidates)
        self._schedule(now, candidates)
        self._introduce(now, candidates)
        self._check_failures(now, candidates)

    def _introduce(self, now: float, candidates: list[ID]) -> None:
        """WANT_HAVE for fresh wants to every peer; everything to peers seen the first time."""
        fresh = [d for d in self._fresh if d in self.needed]
        self._fresh.clear()
        retry = now >= self._next_discovery
        if retry:
            self._next_discovery = now + self._limits.rediscover_interval
        for p in candidates:
            state = self._peer(p)
            if not self._engine.speaks_presences(p):
                continue
            if not state.introduced:
                state.introduced = True
                digests = list(self.needed)
            elif state.likely_complete:
                continue  # asked WANT_BLOCK directly by the scheduler
            else:
                digests = fresh
            cids = []
            for d in digests:
                want = self.needed.get(d)
                if want is not None and p not in want.asked and p not in want.dont_have:
                    want.asked.add(p)
                    want.last_ask = now
                    cids.append(want.cid_bytes)
            self._engine.send_wants(p, cids, have=True)
        # blocks nobody has: ask again (peers that do not announce what they receive)
        retry_after = self._limits.dont_have_retry
        asks: dict[ID, list[bytes]] = {}
        for want in self.needed.values():
            if want.holders or want.requests or now - want.last_ask < retry_after:
                continue
            if not want.dont_have:
                continue
            want.last_ask = now
            for p in list(want.dont_have):
                if p in self._peers and not self._peers[p].demoted:
                    asks.setdefault(p, []).append(want.cid_bytes)
            want.dont_have.clear()
        for p, cids in asks.items():
            self._engine.send_wants(p, cids, have=True)

    def _holders(self, want: Want, likely: list[ID]) -> set[ID]:
        holders = set(want.holders)
        for p in likely:
            if p not in want.dont_have:
                holders.add(p)
        return holders

    def _schedule(self, now: float, candidates: list[ID]) -> None:
        """Rarest first (random tie-break); each block to the holder expected to answer first."""
        limits = self._limits
        block = self.leaf_estimate
        free: dict[ID, int] = {}
        likely: list[ID] = []
        for p in candidates:
            state = self._peer(p)
            room = state.limit(limits, block, now) - len(state.inflight)
            if room > 0:
                free[p] = room
            if state.likely_complete:
                likely.append(p)
        if not free:
            return
        connected = set(candidates)
        trusted = {p for p in candidates if not self._peers[p].demoted}
        demoted = connected - trusted
        items: list[tuple[int, float, bytes, Want, set[ID]]] = []
        hedges: list[tuple[bytes, Want, set[ID]]] = []
        for digest, want in self.needed.items():
            holders = self._holders(want, likely) & connected
            if demoted and holders & demoted and trusted - want.dont_have:
                # demoted peers serve only blocks no trusted peer can have
                holders -= demoted
            if not holders:
                continue
            if want.requests:
                # hedge: outstanding too long at every peer asked, and someone else has it
                if len(want.requests) == 1:
                    ((peer, sent),) = want.requests.items()
                    if now - sent > self._peer(peer).hedge_delay(limits):
                        others = holders - want.requests.keys() - want.avoid
                        if others:
                            hedges.append((digest, want, others))
                continue
            usable = holders - want.avoid
            if not usable:
                want.avoid.clear()  # it timed out everywhere: try them all again
                usable = holders
            items.append((len(holders), want.key, digest, want, usable))
        batches: dict[ID, list[bytes]] = {}

        def assign(digest: bytes, want: Want, holders: set[ID]) -> bool:
            choices = [p for p in holders if free.get(p, 0) > 0]
            if not choices:
                return False
            peer = min(choices, key=lambda p: self._peers[p].expected(limits, block, now))
            want.requests[peer] = now
            want.asked.add(peer)
            self._peers[peer].add(digest, now)
            free[peer] -= 1
            if not free[peer]:
                del free[peer]
            batches.setdefault(peer, []).append(want.cid_bytes)
            return True

        self._reroute_from_origins(now, free)
        for digest, want, others in hedges:
            if not free:
                break
            if assign(digest, want, others):
                self.stats.hedges += 1
        items.sort(key=lambda item: (item[0], item[1]))
        for _, _, digest, want, usable in items:
            if not free:
                break
            assign(digest, want, usable)
        for peer, cids in batches.items():
            self._priority = max(1, self._priority - len(cids))
            self._engine.send_wants(peer, cids, have=False, priority=self._priority)

    def _alternatives(self, want: Want, peer: ID, candidates: list[ID]) -> bool:
        """Whether a trusted peer other than *peer* may serve *want*."""
        for p in candidates:
            if p == peer or p in want.dont_have or p in want.avoid:
                continue
            state = self._peers.get(p)
            if state is None or state.demoted:
                continue
            if p in want.holders or state.likely_complete:
                return True
        return False

    def _reroute_from_origins(self, now: float, free: dict[ID, int]) -> None:
        """Move requests from a peer that holds everything to one that just announced the block.

        Everyone asks the origin; a peer that received a block a moment ago
        is idle for it. The request goes there and is cancelled at the origin
        (whose upload then serves blocks no one else has).
        """
        for digest in list(self._reroute):
            want = self.needed.get(digest)
            if want is None or len(want.requests) != 1:
                self._reroute.discard(digest)
                continue
            ((origin, _),) = want.requests.items()
            state = self._peers.get(origin)
            if state is None or not state.likely_complete:
                self._reroute.discard(digest)
                continue
            block = self.leaf_estimate
            partial = [
                p
                for p in want.holders
                if p not in want.avoid
                and p in self._peers
                and not self._peers[p].likely_complete
                and not self._peers[p].demoted
                and len(self._peers[p].inflight)
                < self._peers[p].limit(self._limits, block, now) + _REROUTE_SLACK
            ]
            if not partial:
                continue
            peer = min(partial, key=lambda p: self._peers[p].expected(self._limits, block, now))
            self._reroute.discard(digest)
            del want.requests[origin]
            state.remove(digest, now)
            self._engine.send_cancels(origin, [want.cid_bytes])
            want.requests[peer] = now
            want.asked.add(peer)
            self._peers[peer].add(digest, now)
            if peer in free:
                free[peer] -= 1
                if not free[peer]:
                    del free[peer]
            self._engine.send_wants(peer, [want.cid_bytes], have=False, priority=self._priority)
            self.stats.reroutes += 1

    def _check_requests(self, now: float, candidates: list[ID]) -> None:
        """Requests a peer made no progress on for its timeout: counted, cancelled there.

        The short timeout applies when another peer may serve the block (the
        request is moved there); a peer that is the only source is given
        ``block_timeout`` (an honest but busy origin is not a liar).
        """
        limits = self._limits
        for peer, state in list(self._peers.items()):
            if not state.inflight or peer in self._dropped:
                continue
            timeout = state.timeout(limits)
            expired = []
            long_quiet = False
            for d, sent in state.inflight.items():
                quiet = now - max(sent, state.last_delivery)
                if quiet <= timeout:
                    continue
                want = self.needed.get(d)
                if quiet > limits.block_timeout:
                    long_quiet = True
                elif want is not None and not self._alternatives(want, peer, candidates):
                    continue
                expired.append(d)
            if not expired:
                continue
            cancels = []
            for digest in expired:
                state.remove(digest, now)
                want = self.needed.get(digest)
                if want is None:
                    continue
                self.stats.timeouts += 1
                want.requests.pop(peer, None)
                want.avoid.add(peer)
                cancels.append(want.cid_bytes)
            self._engine.send_cancels(peer, cancels)
            state.timeouts_in_row += len(cancels)
            if state.timeouts_in_row >= limits.max_peer_timeouts:
                self._drop(peer, f"{state.timeouts_in_row} requests in a row unanswered")
            elif long_quiet and not state.delivered:
                self._drop(peer, f"nothing delivered in {limits.block_timeout:g} s")

    def _check_failures(self, now: float, candidates: list[ID]) -> None:
        limits = self._limits
        if not candidates:
            if self._no_peers_since is None:
                self._no_peers_since = now
        else:
            self._no_peers_since = None
        providers = [
            p
            for p in candidates
            if self._root_answers.get(p) or (p in self._peers and self._peers[p].delivered)
        ]
        if not self.root_arrived:
            if not candidates:
                raise NotFoundError(
                    f"bitswap: no connected peer to fetch {self.root} from", backend=BACKEND
                )
            if all(self._root_answers.get(p) is False for p in candidates):
                raise NotFoundError(
                    f"bitswap: none of {len(candidates)} connected peer(s) has {self.root}",
                    backend=BACKEND,
                )
            if not providers and now - self.started > limits.root_timeout:
                raise NotFoundError(
                    f"bitswap: no peer said it has {self.root} within "
                    f"{limits.root_timeout:g} s (asked {len(candidates)})",
                    backend=BACKEND,
                )
        elif self._no_peers_since is not None and now - self._no_peers_since > limits.root_timeout:
            raise UnavailableError(
                f"bitswap: all peers serving {self.root} are gone or dropped "
                f"after {self.stats.bytes} bytes{self.dropped_note()}",
                backend=BACKEND,
            )
        if now - self.last_progress > limits.stall_timeout:
            raise UnavailableError(
                f"bitswap: no block of {self.root} arrived for {limits.stall_timeout:g} s "
                f"({len(providers)} provider(s){self.dropped_note()})",
                backend=BACKEND,
            )

    def dropped_note(self) -> str:
        if not self._dropped:
            return ""
        return "; dropped: " + ", ".join(f"{p} ({r})" for p, r in self._dropped.items())
