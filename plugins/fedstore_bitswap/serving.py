"""The serving side of the engine: per-peer want queues, the pending-wants ledger, workers.

For every peer that sends a wantlist, a :class:`PeerServer` holds:

* ``queue``: want-blocks for blocks this node has, served in order by at
  most ``max_requests_per_peer`` workers (bounded by
  ``max_queued_wants_per_peer``; beyond it the peer gets DONT_HAVE). A
  worker takes queued blocks up to ``serve_batch_bytes``, reads them in one
  worker-thread call under the global FIFO byte budget and sends them in one
  message. A block sent to another peer less than ``defer_duplicates``
  seconds ago waits while other wants are served: that peer announces it,
  and the asker usually gets it there and cancels here, so an origin's
  upload goes to blocks no one else has yet;
* ``pending``: wants for blocks this node does *not* have yet (want-have or
  want-block), as boxo's ledger keeps them: the peer got DONT_HAVE (if it
  asked for one), and the moment such a block is stored here (a fetch
  received it, or a file was added) the peer is told: HAVE for a want-have,
  the block itself for a want-block. This is what lets fetchers that are
  still downloading serve each other (a swarm), without polling. Bounded
  by ``max_pending_wants_per_peer`` (oldest forgotten first); CANCEL and a
  full wantlist clear entries;
* an outbox of presences (HAVE / DONT_HAVE, bitswap 1.2.0 peers only),
  sent by one task per peer so that reading a peer's wantlists never waits
  for that peer to read our answers.

Everything goes out on this node's own stream to the peer
(:class:`~fedstore_bitswap.responder.ResponseSender`), as boxo does.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, NamedTuple

import trio
from libp2p.bitswap.config import BITSWAP_PROTOCOL_V120
from libp2p.bitswap.messages import create_message
from libp2p.bitswap.pb.bitswap_pb2 import Message
from libp2p.peer.id import ID

from fedstore.errors import InvalidCIDError
from fedstore.ipld.cid import cid_from_bytes
from fedstore_bitswap.blockstore import BlockStore
from fedstore_bitswap.limits import BitswapLimits, ByteBudget
from fedstore_bitswap.responder import ResponseSender, blocks_message

if TYPE_CHECKING:
    from fedstore_bitswap.engine import FedstoreBitswapClient, ServeStats

__all__ = ["PRESENCE_PROTOCOLS", "PeerServer", "Server"]

log = logging.getLogger("fedstore.backends.bitswap")

PRESENCE_PROTOCOLS = frozenset({str(BITSWAP_PROTOCOL_V120), "/ipfs/bitswap/1.3.0"})
#: Presences per message (a CID is ~40 bytes; far below the 4 MiB message limit).
_PRESENCES_PER_MESSAGE = 8192
#: Blocks whose last send time is remembered.
_RECENT_SENDS = 16384


class _Queued(NamedTuple):
    digest: bytes
    cid_bytes: bytes
    send_dont_have: bool
    size: int


class PeerServer:
    """What one peer is waiting for from this node."""

    def __init__(self, sender: ResponseSender) -> None:
        self.sender = sender
        self.queue: OrderedDict[bytes, _Queued] = OrderedDict()
        #: digest -> (binary CID, it was a want-block)
        self.pending: OrderedDict[bytes, tuple[bytes, bool]] = OrderedDict()
        self.active = 0
        #: set when wants are added or cancelled (wakes workers waiting on deferred blocks)
        self.changed = trio.Event()
        self.outbox: list[tuple[bytes, bool]] = []
        self.flushing = False


class Server:
    """Serves one node's block store to its peers (owned by the engine)."""

    def __init__(
        self,
        client: FedstoreBitswapClient,
        store: BlockStore,
        limits: BitswapLimits,
        stats: ServeStats,
        stats_updated: Callable[[], None],
    ) -> None:
        self._client = client
        self._store = store
        self._limits = limits
        self.stats = stats
        self._stats_updated = stats_updated
        self.budget = ByteBudget(limits.max_serving_bytes)
        self.peers: dict[ID, PeerServer] = {}
        #: digest -> peers with a pending want for it
        self._pending_index: dict[bytes, set[ID]] = {}
        #: digest -> when it was last sent to a peer (duplicates wait, see _take_batch)
        self._recent_sends: OrderedDict[bytes, float] = OrderedDict()
        #: digest -> sends of it under way now
        self._sending: dict[bytes, int] = {}

    # -- peers ---------------------------------------------------------------------------

    def _peer(self, peer: ID, protocol: str) -> PeerServer:
        ps = self.peers.get(peer)
        if ps is None or ps.sender.closed:
            ps = PeerServer(ResponseSender(self._client, peer, protocol))
            self.peers[peer] = ps
        return ps

    def drop_peer(self, peer: ID) -> ResponseSender | None:
        """Forget everything about *peer*; return its sender (the caller closes it)."""
        ps = self.peers.pop(peer, None)
        if ps is None:
            return None
        for digest in ps.pending:
            self._unindex(digest, peer)
        ps.queue.clear()
        ps.pending.clear()
        ps.outbox.clear()
        self.stats.active_by_peer.pop(str(peer), None)
        return ps.sender

    def pending_wants(self) -> int:
        """Wants remembered for blocks not held yet, over all peers."""
        return sum(len(ps.pending) for ps in self.peers.values())

    # -- the ledger of wants for blocks not held yet ---------------------------------------

    def _unindex(self, digest: bytes, peer: ID) -> None:
        peers = self._pending_index.get(digest)
        if peers is not None:
            peers.discard(peer)
            if not peers:
                del self._pending_index[digest]

    def _forget(self, ps: PeerServer, peer: ID, digest: bytes) -> None:
        if ps.pending.pop(digest, None) is not None:
            self._unindex(digest, peer)

    def _remember(self, ps: PeerServer, peer: ID, digest: bytes, cid: bytes, block: bool) -> None:
        ps.pending[digest] = (cid, block)
        ps.pending.move_to_end(digest)
        self._pending_index.setdefault(digest, set()).add(peer)
        while len(ps.pending) > self._limits.max_pending_wants_per_peer:
            old, _ = ps.pending.popitem(last=False)
            self._unindex(old, peer)

    def notify_new_blocks(self, sizes: Mapping[bytes, int]) -> None:
        """Blocks were just stored here: tell the peers that wanted them.

        Want-have entries get HAVE; want-block entries get the block (queued
        like any want). Synchronous: sending happens in background tasks.
        """
        if not self._pending_index:
            return
        limit = self._limits.max_queued_wants_per_peer
        haves: dict[ID, list[tuple[bytes, bool]]] = {}
        queued: set[ID] = set()
        for digest, size in sizes.items():
            peers = self._pending_index.pop(digest, None)
            if not peers:
                continue
            for peer in peers:
                ps = self.peers.get(peer)
                entry = ps.pending.pop(digest, None) if ps is not None else None
                if ps is None or entry is None:
                    continue
                cid, block = entry
                if not block:
                    haves.setdefault(peer, []).append((cid, True))
                elif digest not in ps.queue and len(ps.queue) < limit:
                    ps.queue[digest] = _Queued(digest, cid, False, size)
                    queued.add(peer)
        for peer, presences in haves.items():
            self.stats.haves_pushed += len(presences)
            self.queue_presences(self.peers[peer], presences)
        for peer in queued:
            self.peers[peer].changed.set()
            self._spawn_workers(self.peers[peer])

    async def recheck_pending(self) -> None:
        """After blocks were added outside a fetch: notify peers waiting for any of them."""
        digests = list(self._pending_index)
        if not digests:
            return
        sizes = await trio.to_thread.run_sync(
            lambda: {d: s for d in digests if (s := self._store.block_size(d)) is not None}
        )
        self.notify_new_blocks(sizes)

    # -- wantlists -------------------------------------------------------------------------

    async def on_wantlist(self, wantlist: Message.Wantlist, peer: ID, protocol: str) -> None:
        ps = self._peer(peer, protocol)
        if wantlist.full:
            ps.queue.clear()
            for digest in ps.pending:
                self._unindex(digest, peer)
            ps.pending.clear()
        parsed: list[tuple[Message.Wantlist.Entry, bytes, bytes]] = []
        for entry in list(wantlist.entries)[: self._limits.max_entries_per_message]:
            try:
                cid = cid_from_bytes(bytes(entry.block))
            except InvalidCIDError:
                continue
            parsed.append((entry, bytes(cid), cid.digest))
        to_check = [d for e, _, d in parsed if not e.cancel]
        sizes: dict[bytes, int] = {}
        if to_check:
            store = self._store
            sizes = await trio.to_thread.run_sync(
                lambda: {d: s for d in to_check if (s := store.block_size(d)) is not None}
            )
        presences: list[tuple[bytes, bool]] = []
        limit = self._limits.max_queued_wants_per_peer
        for entry, cid_bytes, digest in parsed:
            if entry.cancel:
                ps.queue.pop(digest, None)
                self._forget(ps, peer, digest)
                continue
            want_block = entry.wantType != Message.Wantlist.Have
            size = sizes.get(digest)
            if size is None:
                if entry.sendDontHave:
                    presences.append((cid_bytes, False))
                self._remember(ps, peer, digest, cid_bytes, want_block)
                continue
            self._forget(ps, peer, digest)
            if not want_block:
                presences.append((cid_bytes, True))
            elif digest in ps.queue:
                continue
            elif len(ps.queue) >= limit:
                self.stats.wants_refused += 1
                self._stats_updated()
                if entry.sendDontHave:
                    presences.append((cid_bytes, False))
            else:
                ps.queue[digest] = _Queued(digest, cid_bytes, entry.sendDontHave, size)
        ps.changed.set()
        self._spawn_workers(ps)
        if presences:
            self.queue_presences(ps, presences)

    # -- presences -------------------------------------------------------------------------

    def queue_presences(self, ps: PeerServer, presences: list[tuple[bytes, bool]]) -> None:
        """Send HAVE/DONT_HAVE entries soon (1.2.0+ peers; others cannot receive them)."""
        if ps.sender.protocol not in PRESENCE_PROTOCOLS or ps.sender.closed:
            return
        room = 4 * self._limits.max_entries_per_message - len(ps.outbox)
        if room < len(presences):
            self.stats.presences_dropped += len(presences) - max(room, 0)
            presences = presences[: max(room, 0)]
        ps.outbox.extend(presences)
        nursery = self._client._nursery
        if ps.outbox and not ps.flushing and nursery is not None:
            ps.flushing = True
            nursery.start_soon(self._flush_presences, ps)

    async def _flush_presences(self, ps: PeerServer) -> None:
        try:
            while ps.outbox and not ps.sender.closed:
                batch = ps.outbox[:_PRESENCES_PER_MESSAGE]
                del ps.outbox[:_PRESENCES_PER_MESSAGE]
                if await ps.sender.send(create_message(block_presences=batch)):
                    self.stats.presences_sent += len(batch)
                    self._stats_updated()
                else:
                    ps.outbox.clear()
        finally:
            ps.flushing = False

    # -- workers ---------------------------------------------------------------------------

    def _spawn_workers(self, ps: PeerServer) -> None:
        nursery = self._client._nursery
        if nursery is None:
            return
        want = min(self._limits.max_requests_per_peer, len(ps.queue))
        key = str(ps.sender.peer)
        while ps.active < want:
            ps.active += 1
            self.stats.active_by_peer[key] = ps.active
            self.stats.peak_active_per_peer = max(self.stats.peak_active_per_peer, ps.active)
            nursery.start_soon(self._worker, ps)

    def _take_batch(self, ps: PeerServer, now: float) -> tuple[list[_Queued], float | None]:
        """Queued blocks to send now, and when the first deferred one is due.

        A block this node sent to some peer less than ``defer_duplicates``
        seconds ago waits (other wants go first): the peer that got it
        announces it, and the asker then usually fetches it there and
        cancels here, which spares this node's upload for blocks no one
        else has yet.
        """
        batch: list[_Queued] = []
        total = 0
        cap = self._limits.serve_batch_bytes
        defer = self._limits.defer_duplicates
        due: float | None = None
        for digest in list(ps.queue):
            q = ps.queue[digest]
            if defer > 0 and digest in self._sending:  # on its way to another peer now
                due = now + defer if due is None else min(due, now + defer)
                continue
            sent = self._recent_sends.get(digest) if defer > 0 else None
            if sent is not None and now - sent < defer:
                due = sent + defer if due is None else min(due, sent + defer)
                continue
            if batch and total + q.size > cap:
                break
            del ps.queue[digest]
            batch.append(q)
            total += q.size
        for q in batch:
            self._sending[q.digest] = self._sending.get(q.digest, 0) + 1
        return batch, due

    def _done_sending(self, batch: list[_Queued], now: float) -> None:
        for q in batch:
            left = self._sending.get(q.digest, 1) - 1
            if left > 0:
                self._sending[q.digest] = left
            else:
                self._sending.pop(q.digest, None)
            self._recent_sends[q.digest] = now
            self._recent_sends.move_to_end(q.digest)
        while len(self._recent_sends) > _RECENT_SENDS:
            self._recent_sends.popitem(last=False)
        for ps in self.peers.values():  # deferred wants may be due now
            if ps.queue:
                ps.changed.set()

    def _read_batch(self, batch: list[_Queued]) -> list[bytes | None]:
        return [self._store.get_block(q.digest) for q in batch]

    async def _worker(self, ps: PeerServer) -> None:
        try:
            while ps.queue and not ps.sender.closed:
                batch, due = self._take_batch(ps, trio.current_time())
                if not batch:  # only recently sent blocks: wait for one to be due
                    if ps.changed.is_set():
                        ps.changed = trio.Event()
                    with trio.move_on_at(due if due is not None else trio.current_time()):
                        await ps.changed.wait()
                    continue
                try:
                    await self._send_batch(ps, batch)
                finally:
                    self._done_sending(batch, trio.current_time())
        finally:
            ps.active -= 1
            key = str(ps.sender.peer)
            if ps.active:
                self.stats.active_by_peer[key] = ps.active
            else:
                self.stats.active_by_peer.pop(key, None)

    async def _send_batch(self, ps: PeerServer, batch: list[_Queued]) -> None:
        """Read the batch's blocks (one worker-thread call) and send them in one message."""
        total = sum(q.size for q in batch)
        async with self.budget.hold(total):
            datas = await trio.to_thread.run_sync(self._read_batch, batch)
            blocks = [(q.cid_bytes, d) for q, d in zip(batch, datas, strict=True) if d]
            if blocks:
                ok = await ps.sender.send(blocks_message(ps.sender.protocol, blocks))
                if ok:
                    self.stats.blocks_served += len(blocks)
                    self.stats.bytes_served += sum(len(d) for _, d in blocks)
                else:
                    self.stats.send_failures += 1
                    ps.queue.clear()  # the peer is gone or not reading
                self._stats_updated()
        missing = [
            (q.cid_bytes, False)
            for q, d in zip(batch, datas, strict=True)
            if d is None and q.send_dont_have
        ]
        if missing:
            self.queue_presences(ps, missing)
