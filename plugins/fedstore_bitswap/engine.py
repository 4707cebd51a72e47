"""py-libp2p 0.8.1's ``BitswapClient`` with the fixes fedstore needs.

What is used from py-libp2p unchanged: protocol ids and negotiation
(``/ipfs/bitswap/1.2.0``, ``1.1.0``, ``1.0.0``), the stream handler that reads
inbound messages (``_handle_stream``), message framing (``_read_message``,
``_write_message``), protobuf messages (``create_message``), the per-peer
outbound message queues that coalesce wantlist updates
(``BitswapMessageQueue``), and the lifecycle (``start``/``stop``, network
notifee that reaps per-peer state on disconnect).

What is replaced, and why (details in ``docs/BITSWAP.md``):

* **Receiving blocks** (``_process_blocks_v100``/``_process_blocks_v110``):
  upstream stores *every* block a peer sends in the block store, wanted or
  not, and never tells the caller which peer sent what. Here each block is
  hashed (sha2-256) and kept only if a running fetch wants exactly that
  digest; a block nobody asked for is dropped and the sender is reported to
  the fetches that have requests outstanding at it ("wrong block").
* **Presences** (``_process_block_presences``): routed to fetches per peer,
  instead of upstream's presence table, which ``_send_wantlist_to_peer``
  pre-fills with a fake HAVE for every peer it asks.
* **Serving** (``_process_wantlist``): upstream reads every wanted block into
  memory at once (a 4 MiB wantlist message can name ~100,000 blocks), sends
  the full block for WANT_HAVE entries, and writes the answer back on the
  requester's own stream, which Kubo/boxo never read (boxo reads only
  streams it accepts). Here wants are queued per peer (bounded), served by at
  most ``max_requests_per_peer`` tasks per peer under a global FIFO byte
  budget, HAVE is answered with a presence, and responses go out on this
  node's own stream to the peer, as boxo does. CIDv0 blocks carry the prefix
  ``00 70 12 20`` (upstream sends an empty prefix, which go-cid rejects).
* **Reading our outbound streams** (``_on_message_queue_stream_opened``):
  upstream stops reading (and closes the stream) as soon as its presence
  table has no entry for the peer, which races with the next wantlist; here
  the reader stays until the remote closes or the stream idles.

The per-peer response stream and the shape of block messages live in
:mod:`fedstore_bitswap.responder`.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio
from libp2p.abc import INetStream
from libp2p.bitswap import BitswapClient
from libp2p.bitswap import BlockStore as LibP2PBlockStore
from libp2p.bitswap.cid import CIDInput
from libp2p.bitswap.cid import parse_cid as lp_parse_cid
from libp2p.bitswap.config import (
    BITSWAP_PROTOCOL_V100,
    BITSWAP_PROTOCOL_V110,
    BITSWAP_PROTOCOL_V120,
    BITSWAP_PROTOCOLS,
)
from libp2p.bitswap.messages import create_message
from libp2p.bitswap.pb.bitswap_pb2 import Message
from libp2p.peer.id import ID

from fedstore.errors import InvalidCIDError
from fedstore.ipld.cid import cid_from_bytes
from fedstore_bitswap.blockstore import BlockStore
from fedstore_bitswap.limits import BitswapLimits, ByteBudget
from fedstore_bitswap.responder import ResponseSender, block_message, block_prefix, close_quietly

__all__ = [
    "BITSWAP_PROTOCOL_IDS",
    "FedstoreBitswapClient",
    "FetchListener",
    "ServeStats",
    "block_prefix",
]

log = logging.getLogger("fedstore.backends.bitswap")

BITSWAP_PROTOCOL_IDS = frozenset(str(p) for p in BITSWAP_PROTOCOLS)
_PRESENCE_PROTOCOLS = frozenset({str(BITSWAP_PROTOCOL_V120), "/ipfs/bitswap/1.3.0"})
#: Blocks larger than this are hashed in a worker thread.
_HASH_IN_THREAD = 64 * 1024
#: Our outbound (wantlist) streams are closed after this long without a message.
_OUTBOUND_IDLE = 120.0
#: How many recently wanted digests are remembered (late duplicates are not "wrong").
_RECENT_WANTS = 1 << 16

PeersProvider = Callable[[], Iterable[Any]]


async def _sha256(data: bytes) -> bytes:
    if len(data) > _HASH_IN_THREAD:
        return await trio.to_thread.run_sync(lambda: hashlib.sha256(data).digest())
    return hashlib.sha256(data).digest()


class FetchListener(Protocol):
    """What the engine tells a running fetch. Callbacks are synchronous and never raise."""

    def wants(self, digest: bytes) -> bool: ...
    def has_inflight(self, peer: ID) -> bool: ...
    def on_block(self, peer: ID, digest: bytes, data: bytes, stored: bool) -> None: ...
    def on_presence(self, peer: ID, digest: bytes, have: bool) -> None: ...
    def on_wrong_block(self, peer: ID, reason: str) -> None: ...
    def on_peer_gone(self, peer: ID) -> None: ...


@dataclass(slots=True)
class ServeStats:
    """Counters of the serving side (read them in tests and health)."""

    blocks_served: int = 0
    bytes_served: int = 0
    presences_sent: int = 0
    wants_refused: int = 0
    send_failures: int = 0
    peak_active_per_peer: int = 0
    unsolicited_blocks: int = 0
    active_by_peer: dict[str, int] = field(default_factory=dict)


class _StoreAdapter(LibP2PBlockStore):
    """py-libp2p's BlockStore interface over fedstore's BlockStore (digest-keyed)."""

    def __init__(self, store: BlockStore) -> None:
        self.store = store

    @staticmethod
    def _digest(cid: CIDInput) -> bytes:
        mh = bytes(lp_parse_cid(cid).multihash)
        if len(mh) != 34 or mh[:2] != b"\x12\x20":
            raise ValueError("only sha2-256 CIDs are stored")
        return mh[2:]

    async def get_block(self, cid: CIDInput) -> bytes | None:
        return await trio.to_thread.run_sync(self.store.get_block, self._digest(cid))

    async def put_block(self, cid: CIDInput, data: bytes) -> None:
        await trio.to_thread.run_sync(self.store.put_block, self._digest(cid), data)

    async def has_block(self, cid: CIDInput) -> bool:
        return await trio.to_thread.run_sync(self.store.has_block, self._digest(cid))

    async def delete_block(self, cid: CIDInput) -> None:
        await trio.to_thread.run_sync(self.store.delete_block, self._digest(cid))

    def get_all_cids(self) -> list[bytes]:
        """Not supported: blocks are kept by digest, their codec is not recorded."""
        return []


class _PeerServer:
    """Wants one peer is waiting for, and the tasks serving them."""

    def __init__(self, sender: ResponseSender) -> None:
        self.sender = sender
        #: digest -> (binary CID, send DONT_HAVE if it turns out missing)
        self.queue: OrderedDict[bytes, tuple[bytes, bool]] = OrderedDict()
        self.active = 0


class FedstoreBitswapClient(BitswapClient):
    """BitswapClient serving from a fedstore :class:`BlockStore`, bounded, fetch-aware.

    Construct, then ``set_nursery(nursery)`` and ``await start()`` (the
    service does this). Fetches register with :meth:`register` and drive the
    wire with :meth:`send_wants` / :meth:`send_cancels`.
    """

    def __init__(
        self,
        host: Any,
        store: BlockStore,
        limits: BitswapLimits | None = None,
        peers: PeersProvider | None = None,
    ) -> None:
        super().__init__(host, _StoreAdapter(store))
        self.store = store
        self.limits = limits or BitswapLimits()
        self._peers_provider = peers
        self._fetches: set[FetchListener] = set()
        self._servers: dict[ID, _PeerServer] = {}
        self._budget = ByteBudget(self.limits.max_serving_bytes)
        self._recent_wants: OrderedDict[bytes, None] = OrderedDict()
        self.serve_stats = ServeStats()
        self._stats_changed = trio.Event()

    # -- peers ---------------------------------------------------------------------------

    @property
    def serving_budget(self) -> ByteBudget:
        return self._budget

    def _stats_updated(self) -> None:
        self._stats_changed.set()
        self._stats_changed = trio.Event()

    async def wait_serve_stats(self, predicate: Callable[[ServeStats], bool]) -> ServeStats:
        """Wait (without polling) until *predicate(serve_stats)* holds; wrap in a timeout."""
        while not predicate(self.serve_stats):
            await self._stats_changed.wait()
        return self.serve_stats

    def bitswap_peers(self) -> list[ID]:
        """Connected peers that may speak bitswap (per Identify, when it has answered)."""
        me = self.host.get_id()
        if self._peers_provider is not None:
            raw = list(self._peers_provider())
            peers = [p if isinstance(p, ID) else ID.from_base58(str(p)) for p in raw]
            connected = set(self.host.get_connected_peers())
            peers = [p for p in peers if p in connected]
        else:
            peers = list(self.host.get_connected_peers())
        out = []
        store = self.host.get_peerstore()
        for p in peers:
            if p == me:
                continue
            try:
                protos = set(store.get_protocols(p))
            except Exception:
                protos = set()
            if protos and not protos & BITSWAP_PROTOCOL_IDS:
                continue
            out.append(p)
        return out

    # -- fetch side: wire ----------------------------------------------------------------

    def register(self, fetch: FetchListener) -> None:
        self._fetches.add(fetch)

    def unregister(self, fetch: FetchListener) -> None:
        self._fetches.discard(fetch)

    def send_wants(self, peer: ID, cids: Sequence[bytes], *, have: bool, priority: int = 1) -> None:
        """Queue WANT_BLOCK (or WANT_HAVE) entries, all with send_dont_have, to *peer*."""
        if not cids:
            return
        objs = []
        infos: dict[Any, dict[str, Any]] = {}
        for c in cids:
            obj = lp_parse_cid(c)
            objs.append(obj)
            infos[obj] = {
                "priority": priority,
                "want_type": 1 if have else 0,
                "send_dont_have": True,
            }
            digest = c[-32:]
            self._recent_wants[digest] = None
            self._recent_wants.move_to_end(digest)
        while len(self._recent_wants) > _RECENT_WANTS:
            self._recent_wants.popitem(last=False)
        self.get_or_create_message_queue(peer).add_wants(objs, want_infos=infos)

    def send_cancels(self, peer: ID, cids: Sequence[bytes]) -> None:
        if cids and peer in self._message_queues:
            self._message_queues[peer].add_cancels([lp_parse_cid(c) for c in cids])

    # -- fetch side: what arrives ----------------------------------------------------------

    async def _process_blocks_v100(self, blocks: list[bytes], peer_id: ID) -> None:
        await self._accept_blocks(peer_id, [bytes(b) for b in blocks])

    async def _process_blocks_v110(self, blocks: Sequence[Any], peer_id: ID) -> None:
        # The prefix only names codec and hash; the bytes are checked against
        # the sha2-256 digest a fetch asked for, whatever the prefix says.
        await self._accept_blocks(peer_id, [bytes(b.data) for b in blocks])

    async def _accept_blocks(self, peer: ID, datas: list[bytes]) -> None:
        for data in datas:
            if len(data) > self.limits.max_block_size:
                self._blame(
                    peer, f"sent a block of {len(data)} bytes (limit {self.limits.max_block_size})"
                )
                continue
            digest = await _sha256(data)
            if not any(f.wants(digest) for f in self._fetches):
                if digest not in self._recent_wants:
                    self.serve_stats.unsolicited_blocks += 1
                    self._blame(peer, "sent a block no fetch asked for (wrong data for a CID?)")
                continue
            stored = True
            try:
                await trio.to_thread.run_sync(self.store.put_hashed, digest, data)
            except OSError as exc:
                log.warning("cannot store block %s: %s", digest.hex()[:16], exc)
                stored = False
            for f in list(self._fetches):
                if f.wants(digest):
                    f.on_block(peer, digest, data, stored)

    def _blame(self, peer: ID, reason: str) -> None:
        for f in list(self._fetches):
            if f.has_inflight(peer):
                f.on_wrong_block(peer, reason)

    async def _process_block_presences(self, presences: Sequence[Any], peer_id: ID) -> None:
        for presence in presences:
            try:
                cid = cid_from_bytes(bytes(presence.cid))
            except InvalidCIDError:
                continue
            have = presence.type == Message.Have
            for f in list(self._fetches):
                f.on_presence(peer_id, cid.digest, have)
        await trio.lowlevel.checkpoint()

    def _on_message_queue_stream_opened(self, stream: INetStream, peer_id: ID) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(self._read_outbound, stream, peer_id)

    async def _read_outbound(self, stream: INetStream, peer_id: ID) -> None:
        """Read answers a py-libp2p server writes back on our own wantlist stream."""
        try:
            while True:
                with trio.move_on_after(_OUTBOUND_IDLE) as scope:
                    msg = await self._read_message(stream)
                if scope.cancelled_caught or msg is None:
                    break
                await self._process_message(msg, peer_id, stream)
        except Exception as exc:
            log.debug("outbound bitswap stream to %s ended: %r", peer_id, exc)
        finally:
            await close_quietly(stream)

    def cleanup_peer(self, peer_id: ID) -> None:
        super().cleanup_peer(peer_id)
        server = self._servers.pop(peer_id, None)
        if server is not None:
            server.queue.clear()
            if self._nursery is not None:
                self._nursery.start_soon(server.sender.close)
        self.serve_stats.active_by_peer.pop(str(peer_id), None)
        for f in list(self._fetches):
            f.on_peer_gone(peer_id)

    # -- serving -------------------------------------------------------------------------

    def _server(self, peer: ID, protocol: str) -> _PeerServer:
        server = self._servers.get(peer)
        if server is None or server.sender.closed:
            server = _PeerServer(ResponseSender(self, peer, protocol))
            self._servers[peer] = server
        return server

    async def _process_wantlist(
        self, wantlist: Message.Wantlist, peer_id: ID, stream: INetStream
    ) -> None:
        protocol = str(stream.get_protocol() or BITSWAP_PROTOCOL_V100)
        if protocol not in BITSWAP_PROTOCOL_IDS:
            protocol = str(BITSWAP_PROTOCOL_V110)
        server = self._server(peer_id, protocol)
        if wantlist.full:
            server.queue.clear()
        parsed: list[tuple[Any, bytes, bytes]] = []
        for entry in list(wantlist.entries)[: self.limits.max_entries_per_message]:
            try:
                cid = cid_from_bytes(bytes(entry.block))
            except InvalidCIDError:
                continue
            parsed.append((entry, bytes(cid), cid.digest))
        to_check = [d for e, _, d in parsed if not e.cancel]
        present: set[bytes] = set()
        if to_check:
            present = await trio.to_thread.run_sync(
                lambda: {d for d in to_check if self.store.has_block(d)}
            )
        presences: list[tuple[bytes, bool]] = []
        limit = self.limits.max_queued_wants_per_peer
        for entry, cid_bytes, digest in parsed:
            if entry.cancel:
                server.queue.pop(digest, None)
                continue
            has = digest in present
            if entry.wantType == Message.Wantlist.Have:
                if has or entry.sendDontHave:
                    presences.append((cid_bytes, has))
            elif not has:
                if entry.sendDontHave:
                    presences.append((cid_bytes, False))
            elif digest in server.queue:
                continue
            elif len(server.queue) >= limit:
                self.serve_stats.wants_refused += 1
                self._stats_updated()
                if entry.sendDontHave:
                    presences.append((cid_bytes, False))
            else:
                server.queue[digest] = (cid_bytes, entry.sendDontHave)
        self._spawn_workers(server)
        if presences:
            await self._send_presences(server, presences)

    async def _send_presences(
        self, server: _PeerServer, presences: list[tuple[bytes, bool]]
    ) -> None:
        if server.sender.protocol not in _PRESENCE_PROTOCOLS:
            return  # HAVE / DONT_HAVE exist from bitswap 1.2.0 on
        msg = create_message(block_presences=presences)
        if await server.sender.send(msg):
            self.serve_stats.presences_sent += len(presences)
            self._stats_updated()

    def _spawn_workers(self, server: _PeerServer) -> None:
        nursery = self._nursery
        if nursery is None:
            return
        want = min(self.limits.max_requests_per_peer, len(server.queue))
        while server.active < want:
            server.active += 1
            key = str(server.sender.peer)
            self.serve_stats.active_by_peer[key] = server.active
            self.serve_stats.peak_active_per_peer = max(
                self.serve_stats.peak_active_per_peer, server.active
            )
            nursery.start_soon(self._serve_worker, server)

    async def _serve_worker(self, server: _PeerServer) -> None:
        try:
            while server.queue and not server.sender.closed:
                digest, (cid_bytes, send_dont_have) = server.queue.popitem(last=False)
                size = await trio.to_thread.run_sync(self.store.block_size, digest)
                data = None
                if size is not None:
                    async with self._budget.hold(size):
                        data = await trio.to_thread.run_sync(self.store.get_block, digest)
                        if data is not None:
                            ok = await server.sender.send(
                                block_message(server.sender.protocol, cid_bytes, data)
                            )
                            if ok:
                                self.serve_stats.blocks_served += 1
                                self.serve_stats.bytes_served += len(data)
                            else:
                                self.serve_stats.send_failures += 1
                                server.queue.clear()  # the peer is gone or not reading
                            self._stats_updated()
                if data is None and send_dont_have:
                    await self._send_presences(server, [(cid_bytes, False)])
        finally:
            server.active -= 1
            key = str(server.sender.peer)
            if server.active:
                self.serve_stats.active_by_peer[key] = server.active
            else:
                self.serve_stats.active_by_peer.pop(key, None)

    async def stop(self) -> None:
        for server in list(self._servers.values()):
            server.queue.clear()
            await server.sender.close()
        self._servers.clear()
        await super().stop()
