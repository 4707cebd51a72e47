"""Fetch one UnixFS file DAG from peers: in order, windowed, every block verified.

A :class:`DagFetch` walks the DAG depth-first from its root and yields the
file's bytes in order. It keeps a list of the blocks still to be written
(``order``); blocks are requested only inside a window ahead of the write
position (``window_bytes`` / ``max_window_blocks``), so memory stays bounded
whatever the file size. Internal nodes are decoded as soon as they arrive and
replaced in place by their children, which extends the look-ahead.

For each block the fetch first looks in the node's block store (a file
fetched or added before, or a resumed fetch), then asks the network. The
rules are built so that many fetchers of one file form a swarm (each serves
the others the blocks it already has) and so that a peer that lies or
stalls costs one short timeout:

* **Who has what.** Every block that enters the window is asked as
  WANT_HAVE (send_dont_have) from every connected peer. Peers answer HAVE or
  DONT_HAVE; a fedstore peer (or Kubo) that answered DONT_HAVE remembers the
  want and sends HAVE the moment it stores the block (see
  :mod:`fedstore_bitswap.serving`), so a peer that is itself still
  downloading becomes a source block by block. A peer that answered HAVE for
  the root and never DONT_HAVE is assumed to hold everything (it is asked
  WANT_BLOCK directly, without the HAVE round trip).
* **Which block next.** Rarest first: blocks known at the fewest peers
  first, ties broken by a random key fixed per block, so fetchers of one file
  do not all walk the DAG in the same order and the origin's upload goes to
  blocks nobody else has yet. The output still streams in order; the window
  bounds how far ahead the random order reaches.
* **From whom.** Among the peers that have the block, the one expected to
  answer first (its outstanding requests over its observed rate); each peer
  gets as many outstanding requests as it delivers in ``inflight_horizon``
  seconds (``initial_inflight`` before its first block; at most
  ``per_peer_inflight``).
* **Hedging and timeouts.** A request unanswered after ``hedge_after``
  (or three times the peer's usual latency) is also sent to another peer
  that has the block; the first copy wins and the other is cancelled. A
  request the peer has made no progress on for ``provider_timeout`` (or four
  times its usual latency, at most ``block_timeout``) counts as a timeout
  there; ``max_peer_timeouts`` in a row drop the peer from this fetch and
  demote it in the engine (later fetches try it last) for ``demote_for``.
* **Verification.** The engine hashes every received block and hands it over
  only when its sha2-256 equals the digest of a CID this fetch asked for;
  the block is then in the block store (so it is served onwards at once)
  and kept in memory until written out.
* **Misbehaviour.** A provider that sends a block nobody asked for (what
  wrong data for a CID looks like on the wire, where the CID is recomputed
  from the bytes) or an oversized block is dropped for this fetch (and
  demoted); its outstanding requests go to other providers.
* **Departures.** When a provider disconnects its requests are reassigned at
  once. DONT_HAVE moves a request to another provider; blocks no peer has
  are asked again (WANT_HAVE) every ``dont_have_retry`` seconds, for peers
  that do not announce what they receive.

Errors: :class:`~fedstore.errors.NotFoundError` when no connected peer has
the root (nothing yielded yet), :class:`~fedstore.errors.UnavailableError`
when the transfer stalls for ``stall_timeout`` seconds or every provider is
gone, and :class:`~fedstore.errors.FormatError` when the DAG is not a UnixFS
file.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

import trio
from libp2p.peer.id import ID

from fedstore.errors import FormatError, NotFoundError, UnavailableError
from fedstore.ipld.blocks import decode_block
from fedstore.ipld.cid import ParsedCid
from fedstore_bitswap.blockstore import MAX_DEPTH
from fedstore_bitswap.engine import FedstoreBitswapClient
from fedstore_bitswap.limits import BitswapLimits
from fedstore_bitswap.peers import PeerState

__all__ = ["DagFetch", "FetchStats"]

log = logging.getLogger("fedstore.backends.bitswap")

BACKEND = "bitswap"
#: Size assumed for a block whose size is not known yet (Kubo's chunk size).
_DEFAULT_LEAF = 262144
#: Size assumed for an internal node (174 links of ~45 bytes, rounded up).
_INTERNAL_NODE = 16384
#: Longest wait between two looks at timeouts when nothing happens.
_TICK = 0.1


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


class _Node:
    """One entry of the file, in order: a block still to come, or bytes ready to write."""

    __slots__ = ("cid", "data", "depth", "digest", "payload", "ready", "tsize")

    def __init__(self, cid: ParsedCid | None, tsize: int | None, depth: int) -> None:
        self.cid = cid
        self.digest = cid.digest if cid is not None else b""
        self.tsize = tsize
        self.depth = depth
        self.data: bytes | None = None  # the block, until decoded
        self.payload = b""  # file bytes, once ready
        self.ready = False

    @classmethod
    def literal(cls, data: bytes) -> _Node:
        node = cls(None, None, 0)
        node.payload = data
        node.ready = True
        return node


class _Want:
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


class DagFetch:
    """One fetch of one root CID. Iterate :meth:`run` once."""

    def __init__(
        self, engine: FedstoreBitswapClient, root: ParsedCid, limits: BitswapLimits
    ) -> None:
        self._engine = engine
        self._store = engine.store
        self._limits = limits
        self.root = root
        self._root_bytes = bytes(root)
        self.stats = FetchStats(cid=str(root))
        self._wants: dict[bytes, _Want] = {}
        self._fresh: list[bytes] = []
        #: wants requested from an origin that a partial holder has just announced
        self._reroute: set[bytes] = set()
        self._arrived: dict[bytes, bytes] = {}
        self._peers: dict[ID, PeerState] = {}
        self._root_answers: dict[ID, bool] = {}
        self._dropped: dict[ID, str] = {}
        self._root_arrived = False
        self._all_stored = True
        self._decoded = 0
        self._leaf_estimate = _DEFAULT_LEAF
        self._changed = trio.Event()
        self._started = 0.0
        self._last_progress = 0.0
        self._next_discovery = 0.0
        self._no_peers_since: float | None = None
        self._priority = (1 << 31) - 1
        self._random = random.Random()  # noqa: S311 (block order, not secrets)

    # -- engine callbacks (FetchListener) -----------------------------------------------

    def wants(self, digest: bytes) -> bool:
        return digest in self._wants

    def wanted(self) -> Iterable[bytes]:
        return self._wants.keys()

    def has_inflight(self, peer: ID) -> bool:
        """Whether *peer* was asked for blocks of this fetch (WANT_BLOCK or WANT_HAVE)."""
        state = self._peers.get(peer)
        return bool(state and (state.inflight or state.introduced))

    def on_block(self, peer: ID, digest: bytes, data: bytes, stored: bool) -> None:
        want = self._wants.get(digest)
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
        self._arrive(digest, want, data, peer, stored)

    def on_presence(self, peer: ID, digest: bytes, have: bool) -> None:
        want = self._wants.get(digest)
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
                want = self._wants.get(digest)
                if want is not None:
                    want.requests.pop(peer, None)
        for want in self._wants.values():
            want.holders.discard(peer)
            want.asked.discard(peer)
        self._poke()

    # -- bookkeeping ----------------------------------------------------------------------

    def _poke(self) -> None:
        self._changed.set()

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
                want = self._wants.get(digest)
                if want is not None:
                    want.requests.pop(peer, None)
                    cancels.append(want.cid_bytes)
            self._engine.send_cancels(peer, cancels)
        self._poke()

    def _arrive(
        self, digest: bytes, want: _Want, data: bytes, peer: ID | None, stored: bool
    ) -> None:
        del self._wants[digest]
        now = trio.current_time()
        for other in want.asked:
            if other != peer:
                state = self._peers.get(other)
                if state is not None:
                    state.remove(digest, now)
                self._engine.send_cancels(other, [want.cid_bytes])
        self._arrived[digest] = data
        self._all_stored = self._all_stored and stored
        self.stats.blocks += 1
        if peer is None:
            self.stats.blocks_local += 1
        if digest == self.root.digest:
            self._root_arrived = True
        self._last_progress = now
        self._poke()

    # -- the walk ---------------------------------------------------------------------------

    async def run(self) -> AsyncIterator[bytes]:
        """Yield the file's bytes in order (see the module docstring for errors)."""
        self._engine.register(self)
        self._started = self._last_progress = trio.current_time()
        order: list[_Node | None] = [_Node(self.root, None, 0)]
        head = 0
        try:
            while True:
                self._changed = trio.Event()
                needs = self._scan(order, head)
                while head < len(order):
                    node = order[head]
                    assert node is not None
                    if not node.ready:
                        break
                    order[head] = None
                    head += 1
                    if node.payload:
                        self.stats.bytes += len(node.payload)
                        yield node.payload
                if head >= len(order):
                    break
                if head > 4096:
                    del order[:head]
                    head = 0
                if not needs:
                    continue  # the head became ready while we were yielding
                unchecked = [
                    d for d in needs if d in self._wants and not self._wants[d].local_checked
                ]
                if unchecked:
                    found = await trio.to_thread.run_sync(self._load_local, unchecked)
                    for d in unchecked:
                        want = self._wants.get(d)
                        if want is not None:
                            want.local_checked = True
                    for d, data in found.items():
                        want = self._wants.get(d)
                        if want is not None:
                            self._arrive(d, want, data, None, True)
                    if found:
                        continue
                self._tick(trio.current_time())
                with trio.move_on_after(_TICK):
                    await self._changed.wait()
            self.stats.complete = True
            self.stats.seconds = trio.current_time() - self._started
            log.info(
                "bitswap fetched %s: %d bytes, %d blocks (%d local) in %.2f s, %d hedged, "
                "%d rerouted, %d timed out; from peers: %s%s",
                self.root,
                self.stats.bytes,
                self.stats.blocks,
                self.stats.blocks_local,
                self.stats.seconds,
                self.stats.hedges,
                self.stats.reroutes,
                self.stats.timeouts,
                ", ".join(f"{p}={n}" for p, n in sorted(self.stats.blocks_by_peer.items()))
                or "none",
                self._dropped_note(),
            )
            if self._all_stored:
                await trio.to_thread.run_sync(
                    self._store.mark_file, str(self.root), self.stats.bytes, self._decoded
                )
        finally:
            self._engine.unregister(self)
            cancels: dict[ID, list[bytes]] = {}
            for want in self._wants.values():
                for peer in want.asked:
                    cancels.setdefault(peer, []).append(want.cid_bytes)
            for peer, cids in cancels.items():
                self._engine.send_cancels(peer, cids)

    def _load_local(self, digests: list[bytes]) -> dict[bytes, bytes]:
        found = {}
        for d in digests:
            data = self._store.get_block(d)
            if data is not None:
                found[d] = data
        return found

    def _estimate(self, node: _Node) -> int:
        t = node.tsize
        if t is not None and t > self._limits.max_block_size:
            return _INTERNAL_NODE
        if t is not None:
            return max(t, 1)
        return self._leaf_estimate

    def _scan(self, order: list[_Node | None], head: int) -> list[bytes]:
        """Decode arrived blocks in the window and list the digests it still needs, in order."""
        limits = self._limits
        needs: list[bytes] = []
        seen: set[bytes] = set()
        used = 0
        count = 0
        i = head
        while i < len(order):
            node = order[i]
            assert node is not None
            if node.ready:
                used += len(node.payload)
                i += 1
                continue
            if node.data is None:
                node.data = self._arrived.pop(node.digest, None)
            if node.data is None:
                est = self._estimate(node)
                if count and (
                    used + est > limits.window_bytes or count >= limits.max_window_blocks
                ):
                    break
                used += est
                count += 1
                if node.digest not in seen:
                    seen.add(node.digest)
                    needs.append(node.digest)
                    if node.digest not in self._wants:
                        assert node.cid is not None
                        self._wants[node.digest] = _Want(bytes(node.cid), self._random.random())
                        self._fresh.append(node.digest)
                i += 1
                continue
            self._decode_into(order, i, node)
        return needs

    def _decode_into(self, order: list[_Node | None], i: int, node: _Node) -> None:
        assert node.cid is not None and node.data is not None
        self._decoded += 1
        if self._decoded > self._limits.max_dag_blocks:
            raise FormatError(
                f"{self.root} has more than {self._limits.max_dag_blocks} blocks; refused"
            )
        if node.cid.codec == 0x55 or len(node.data) > _INTERNAL_NODE:
            self._leaf_estimate = max(self._leaf_estimate, len(node.data))
        decoded = decode_block(node.cid, node.data)
        node.data = None
        if not decoded.links:
            node.payload = decoded.data
            node.ready = True
            return
        depth = node.depth + 1
        if depth > MAX_DEPTH:
            raise FormatError(f"DAG under {self.root} is deeper than {MAX_DEPTH} levels")
        children: list[_Node | None] = [
            _Node(link.cid, link.tsize, depth) for link in decoded.links
        ]
        if decoded.data:
            children.insert(0, _Node.literal(decoded.data))
        order[i : i + 1] = children

    # -- talking to peers ---------------------------------------------------------------------

    def _tick(self, now: float) -> None:
        """Timeouts, hedges, new peers, then assign requests; check the failure rules."""
        candidates = [p for p in self._engine.bitswap_peers() if p not in self._dropped]
        self._check_requests(now, candidates)
        self._schedule(now, candidates)
        self._introduce(now, candidates)
        self._check_failures(now, candidates)

    def _introduce(self, now: float, candidates: list[ID]) -> None:
        """WANT_HAVE for fresh wants to every peer; everything to peers seen the first time."""
        fresh = [d for d in self._fresh if d in self._wants]
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
                digests = list(self._wants)
            elif state.likely_complete:
                continue  # asked WANT_BLOCK directly by the scheduler
            else:
                digests = fresh
            cids = []
            for d in digests:
                want = self._wants.get(d)
                if want is not None and p not in want.asked and p not in want.dont_have:
                    want.asked.add(p)
                    want.last_ask = now
                    cids.append(want.cid_bytes)
            self._engine.send_wants(p, cids, have=True)
        # blocks nobody has: ask again (peers that do not announce what they receive)
        retry_after = self._limits.dont_have_retry
        asks: dict[ID, list[bytes]] = {}
        for want in self._wants.values():
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

    def _holders(self, want: _Want, likely: list[ID]) -> set[ID]:
        holders = set(want.holders)
        for p in likely:
            if p not in want.dont_have:
                holders.add(p)
        return holders

    def _schedule(self, now: float, candidates: list[ID]) -> None:
        """Rarest first (random tie-break); each block to the holder expected to answer first."""
        limits = self._limits
        block = self._leaf_estimate
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
        items: list[tuple[int, float, bytes, _Want, set[ID]]] = []
        hedges: list[tuple[bytes, _Want, set[ID]]] = []
        for digest, want in self._wants.items():
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

        def assign(digest: bytes, want: _Want, holders: set[ID]) -> bool:
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

        self._reroute_from_origins(now, assign, free)
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

    def _alternatives(self, want: _Want, peer: ID, candidates: list[ID]) -> bool:
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

    def _reroute_from_origins(
        self, now: float, assign: Callable[[bytes, _Want, set[ID]], bool], free: dict[ID, int]
    ) -> None:
        """Move requests from a peer that holds everything to one that just announced the block.

        Everyone asks the origin; a peer that received a block a moment ago
        is idle for it. The request goes there and is cancelled at the origin
        (whose upload then serves blocks no one else has).
        """
        for digest in list(self._reroute):
            want = self._wants.get(digest)
            if want is None or len(want.requests) != 1:
                self._reroute.discard(digest)
                continue
            if not free:
                return
            ((origin, _),) = want.requests.items()
            state = self._peers.get(origin)
            if state is None or not state.likely_complete:
                self._reroute.discard(digest)
                continue
            partial = {
                p
                for p in want.holders
                if p in free
                and p not in want.avoid
                and not self._peers[p].likely_complete
                and not self._peers[p].demoted
            }
            if partial and assign(digest, want, partial):
                self._reroute.discard(digest)
                del want.requests[origin]
                state.remove(digest, now)
                self._engine.send_cancels(origin, [want.cid_bytes])
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
                want = self._wants.get(d)
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
                want = self._wants.get(digest)
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
        if not self._root_arrived:
            if not candidates:
                raise NotFoundError(
                    f"bitswap: no connected peer to fetch {self.root} from", backend=BACKEND
                )
            if all(self._root_answers.get(p) is False for p in candidates):
                raise NotFoundError(
                    f"bitswap: none of {len(candidates)} connected peer(s) has {self.root}",
                    backend=BACKEND,
                )
            if not providers and now - self._started > limits.root_timeout:
                raise NotFoundError(
                    f"bitswap: no peer said it has {self.root} within "
                    f"{limits.root_timeout:g} s (asked {len(candidates)})",
                    backend=BACKEND,
                )
        elif self._no_peers_since is not None and now - self._no_peers_since > limits.root_timeout:
            raise UnavailableError(
                f"bitswap: all peers serving {self.root} are gone or dropped "
                f"after {self.stats.bytes} bytes{self._dropped_note()}",
                backend=BACKEND,
            )
        if now - self._last_progress > limits.stall_timeout:
            raise UnavailableError(
                f"bitswap: no block of {self.root} arrived for {limits.stall_timeout:g} s "
                f"({len(providers)} provider(s){self._dropped_note()})",
                backend=BACKEND,
            )

    def _dropped_note(self) -> str:
        if not self._dropped:
            return ""
        return "; dropped: " + ", ".join(f"{p} ({r})" for p, r in self._dropped.items())
