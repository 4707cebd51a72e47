"""Fetch one UnixFS file DAG from peers: in order, windowed, every block verified.

A :class:`DagFetch` walks the DAG depth-first from its root and yields the
file's bytes in order. It keeps a list of the blocks still to be written
(``order``); blocks are requested only inside a window ahead of the write
position (``window_bytes`` / ``max_window_blocks``), so memory stays bounded
whatever the file size. Internal nodes are decoded as soon as they arrive and
replaced in place by their children, which extends the look-ahead.

For each block the fetch first looks in the node's block store (a file
fetched or added before, or a resumed fetch), then asks the network:

* **Providers.** Peers are asked WANT_HAVE for the root; those answering
  HAVE (or delivering any block) are providers. Peers that answered
  DONT_HAVE, and new connections, are asked again every
  ``rediscover_interval`` seconds, so a peer that finishes its own download
  starts to help.
* **Spreading.** Each block is requested (WANT_BLOCK, send_dont_have) from
  one provider at a time: the one with the fewest outstanding requests, at
  most ``per_peer_inflight`` each, so several peers serve one fetch at once
  and faster peers end up serving more.
* **Verification.** The engine hashes every received block and hands it over
  only when its sha2-256 equals the digest of a CID this fetch asked for;
  the block is then written to the block store (so it can be served to
  others) and kept in memory until written out.
* **Misbehaviour.** A provider that sends a block nobody asked for (what
  wrong data for a CID looks like on the wire, where the CID is recomputed
  from the bytes), sends an oversized block, or lets ``max_peer_timeouts``
  requests in a row time out, is dropped for this fetch and its outstanding
  requests go to other providers.
* **Departures.** When a provider disconnects its requests are reassigned at
  once. DONT_HAVE moves a request to another provider; a block every
  provider said DONT_HAVE for is asked again after ``dont_have_retry``.

Errors: :class:`~fedstore.errors.NotFoundError` when no connected peer has
the root (nothing yielded yet), :class:`~fedstore.errors.UnavailableError`
when the transfer stalls for ``stall_timeout`` seconds, and
:class:`~fedstore.errors.FormatError` when the DAG is not a UnixFS file.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import trio
from libp2p.peer.id import ID

from fedstore.errors import FormatError, NotFoundError, UnavailableError
from fedstore.ipld.blocks import decode_block
from fedstore.ipld.cid import ParsedCid
from fedstore_bitswap.blockstore import MAX_DEPTH
from fedstore_bitswap.engine import FedstoreBitswapClient
from fedstore_bitswap.limits import BitswapLimits

__all__ = ["DagFetch", "FetchStats"]

log = logging.getLogger("fedstore.backends.bitswap")

BACKEND = "bitswap"
#: Size assumed for a block whose size is not known yet (Kubo's chunk size).
_DEFAULT_LEAF = 262144
#: Size assumed for an internal node (174 links of ~45 bytes, rounded up).
_INTERNAL_NODE = 16384
#: Longest wait between two looks at timeouts when nothing happens.
_TICK = 0.25


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
    dont_haves: int = 0
    complete: bool = False


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
    __slots__ = (
        "asked",
        "avoid",
        "cid_bytes",
        "dont_have",
        "dont_have_at",
        "local_checked",
        "peer",
        "sent_at",
    )

    def __init__(self, cid_bytes: bytes) -> None:
        self.cid_bytes = cid_bytes
        self.peer: ID | None = None
        self.sent_at = 0.0
        self.asked: set[ID] = set()
        self.dont_have: set[ID] = set()
        self.dont_have_at = 0.0
        self.avoid: set[ID] = set()
        self.local_checked = False


class _Peer:
    __slots__ = ("delivered", "inflight", "timeouts_in_row")

    def __init__(self) -> None:
        self.inflight: set[bytes] = set()
        self.delivered = 0
        self.timeouts_in_row = 0


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
        self._arrived: dict[bytes, bytes] = {}
        self._peers: dict[ID, _Peer] = {}
        self._providers: set[ID] = set()
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

    # -- engine callbacks (FetchListener) -----------------------------------------------

    def wants(self, digest: bytes) -> bool:
        return digest in self._wants

    def has_inflight(self, peer: ID) -> bool:
        state = self._peers.get(peer)
        return bool(state and state.inflight)

    def on_block(self, peer: ID, digest: bytes, data: bytes, stored: bool) -> None:
        if digest not in self._wants:
            return
        state = self._peer(peer)
        state.delivered += 1
        state.timeouts_in_row = 0
        key = str(peer)
        self.stats.blocks_by_peer[key] = self.stats.blocks_by_peer.get(key, 0) + 1
        self.stats.bytes_by_peer[key] = self.stats.bytes_by_peer.get(key, 0) + len(data)
        if peer not in self._dropped:
            self._providers.add(peer)
        self._arrive(digest, data, peer, stored)

    def on_presence(self, peer: ID, digest: bytes, have: bool) -> None:
        if digest == self.root.digest:
            self._root_answers[peer] = have
        if have:
            if peer not in self._dropped:
                self._providers.add(peer)
        else:
            want = self._wants.get(digest)
            if want is not None:
                self.stats.dont_haves += 1
                want.dont_have.add(peer)
                want.dont_have_at = trio.current_time()
                if want.peer == peer:
                    self._unassign(digest, want)
        self._poke()

    def on_wrong_block(self, peer: ID, reason: str) -> None:
        self._drop(peer, reason)

    def on_peer_gone(self, peer: ID) -> None:
        self._providers.discard(peer)
        self._root_answers.pop(peer, None)
        state = self._peers.get(peer)
        if state is not None:
            for digest in list(state.inflight):
                want = self._wants.get(digest)
                if want is not None:
                    self._unassign(digest, want)
        self._poke()

    # -- bookkeeping ----------------------------------------------------------------------

    def _poke(self) -> None:
        self._changed.set()

    def _peer(self, peer: ID) -> _Peer:
        state = self._peers.get(peer)
        if state is None:
            state = self._peers[peer] = _Peer()
        return state

    def _unassign(self, digest: bytes, want: _Want) -> None:
        if want.peer is not None:
            self._peer(want.peer).inflight.discard(digest)
            want.peer = None

    def _drop(self, peer: ID, reason: str) -> None:
        if peer in self._dropped:
            return
        log.warning("bitswap fetch of %s: dropping peer %s: %s", self.root, peer, reason)
        self._dropped[peer] = reason
        self.stats.dropped[str(peer)] = reason
        self._providers.discard(peer)
        state = self._peers.get(peer)
        if state is not None:
            cancels = []
            for digest in list(state.inflight):
                want = self._wants.get(digest)
                if want is not None:
                    cancels.append(want.cid_bytes)
                    self._unassign(digest, want)
            self._engine.send_cancels(peer, cancels)
        self._poke()

    def _arrive(self, digest: bytes, data: bytes, peer: ID | None, stored: bool) -> None:
        want = self._wants.pop(digest, None)
        if want is None:
            return
        self._unassign(digest, want)
        for other in want.asked:
            if other != peer:
                self._engine.send_cancels(other, [want.cid_bytes])
        self._arrived[digest] = data
        self._all_stored = self._all_stored and stored
        self.stats.blocks += 1
        if peer is None:
            self.stats.blocks_local += 1
        if digest == self.root.digest:
            self._root_arrived = True
        self._last_progress = trio.current_time()
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
                        self._arrive(d, data, None, True)
                    if found:
                        continue
                now = trio.current_time()
                self._check_deadlines(now)
                self._schedule([d for d in needs if d in self._wants], now)
                with trio.move_on_after(_TICK):
                    await self._changed.wait()
                self._changed = trio.Event()
            self.stats.complete = True
            log.info(
                "bitswap fetched %s: %d bytes, %d blocks (%d local); from peers: %s%s",
                self.root,
                self.stats.bytes,
                self.stats.blocks,
                self.stats.blocks_local,
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
            for peer, state in self._peers.items():
                cancels = [self._wants[d].cid_bytes for d in state.inflight if d in self._wants]
                self._engine.send_cancels(peer, cancels)

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
                        self._wants[node.digest] = _Want(bytes(node.cid))
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

    def _schedule(self, digests: list[bytes], now: float) -> None:
        limits = self._limits
        candidates = [p for p in self._engine.bitswap_peers() if p not in self._dropped]
        connected = set(candidates)
        if now >= self._next_discovery:
            self._next_discovery = now + limits.rediscover_interval
            for p in candidates:
                if p not in self._providers:
                    self._engine.send_wants(p, [self._root_bytes], have=True)
        live = [p for p in self._providers if p in connected]
        if not live:
            return
        batches: dict[ID, list[bytes]] = {}
        for digest in digests:
            want = self._wants[digest]
            if want.peer is not None:
                continue
            if want.dont_have and now - want.dont_have_at > limits.dont_have_retry:
                want.dont_have.clear()
            usable = [p for p in live if p not in want.dont_have]
            choices = [
                p
                for p in usable
                if p not in want.avoid and len(self._peer(p).inflight) < limits.per_peer_inflight
            ]
            if not choices:
                if usable and all(p in want.avoid for p in usable):
                    want.avoid.clear()  # every provider timed out once: try them again
                continue
            peer = min(
                choices, key=lambda p: (len(self._peer(p).inflight), -self._peer(p).delivered)
            )
            want.peer = peer
            want.sent_at = now
            want.asked.add(peer)
            self._peer(peer).inflight.add(digest)
            batches.setdefault(peer, []).append(want.cid_bytes)
        for peer, cids in batches.items():
            self._priority = max(1, self._priority - len(cids))
            self._engine.send_wants(peer, cids, have=False, priority=self._priority)

    def _check_deadlines(self, now: float) -> None:
        limits = self._limits
        for digest, want in list(self._wants.items()):
            peer = want.peer
            if peer is None or now - want.sent_at <= limits.block_timeout:
                continue
            self.stats.timeouts += 1
            self._unassign(digest, want)
            want.avoid.add(peer)
            self._engine.send_cancels(peer, [want.cid_bytes])
            state = self._peer(peer)
            state.timeouts_in_row += 1
            if state.timeouts_in_row >= limits.max_peer_timeouts:
                self._drop(peer, f"{state.timeouts_in_row} requests in a row timed out")
        candidates = [p for p in self._engine.bitswap_peers() if p not in self._dropped]
        if not candidates:
            if self._no_peers_since is None:
                self._no_peers_since = now
        else:
            self._no_peers_since = None
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
            if not self._providers and now - self._started > limits.root_timeout:
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
                f"({len(self._providers)} provider(s){self._dropped_note()})",
                backend=BACKEND,
            )

    def _dropped_note(self) -> str:
        if not self._dropped:
            return ""
        return "; dropped: " + ", ".join(f"{p} ({r})" for p, r in self._dropped.items())
