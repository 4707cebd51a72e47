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
from collections.abc import AsyncIterator

import trio

from fedstore.errors import FormatError
from fedstore.ipld.blocks import decode_block
from fedstore.ipld.cid import ParsedCid
from fedstore_bitswap.blockstore import MAX_DEPTH
from fedstore_bitswap.engine import FedstoreBitswapClient
from fedstore_bitswap.limits import BitswapLimits
from fedstore_bitswap.schedule import FetchStats, Scheduler

__all__ = ["DagFetch", "FetchStats"]

log = logging.getLogger("fedstore.backends.bitswap")

#: Size assumed for an internal node (174 links of ~45 bytes, rounded up).
_INTERNAL_NODE = 16384
#: Longest wait between two looks at timeouts when nothing happens.
_TICK = 0.1


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


class DagFetch:
    """One fetch of one root CID. Iterate :meth:`run` once."""

    def __init__(
        self, engine: FedstoreBitswapClient, root: ParsedCid, limits: BitswapLimits
    ) -> None:
        self._store = engine.store
        self._limits = limits
        self.root = root
        self.stats = FetchStats(cid=str(root))
        #: the network side: wants, peers, requests (registered with the engine while running)
        self.scheduler = Scheduler(engine, root, limits, self.stats)
        self._decoded = 0

    # -- the walk ---------------------------------------------------------------------------

    async def run(self) -> AsyncIterator[bytes]:
        """Yield the file's bytes in order (see the module docstring for errors)."""
        sched = self.scheduler
        sched.start(trio.current_time())
        order: list[_Node | None] = [_Node(self.root, None, 0)]
        head = 0
        try:
            while True:
                sched.changed = trio.Event()
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
                    d for d in needs if d in sched.needed and not sched.needed[d].local_checked
                ]
                if unchecked:
                    found = await trio.to_thread.run_sync(self._load_local, unchecked)
                    for d in unchecked:
                        want = sched.needed.get(d)
                        if want is not None:
                            want.local_checked = True
                    for d, data in found.items():
                        want = sched.needed.get(d)
                        if want is not None:
                            sched.arrive(d, want, data, None, True)
                    if found:
                        continue
                sched.tick(trio.current_time())
                with trio.move_on_after(_TICK):
                    await sched.changed.wait()
            self.stats.complete = True
            self.stats.seconds = trio.current_time() - sched.started
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
                sched.dropped_note(),
            )
            if sched.all_stored:
                await trio.to_thread.run_sync(
                    self._store.mark_file, str(self.root), self.stats.bytes, self._decoded
                )
        finally:
            sched.stop()

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
        return self.scheduler.leaf_estimate

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
                node.data = self.scheduler.arrived.pop(node.digest, None)
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
                    assert node.cid is not None
                    self.scheduler.add_want(node.digest, bytes(node.cid))
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
            self.scheduler.leaf_estimate = max(self.scheduler.leaf_estimate, len(node.data))
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
