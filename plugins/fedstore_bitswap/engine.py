"""py-libp2p 0.8.1's ``BitswapClient`` with the fixes fedstore needs.

What is used from py-libp2p unchanged: protocol ids and negotiation
(``/ipfs/bitswap/1.2.0``, ``1.1.0``, ``1.0.0``), protobuf messages
(``create_message``), the per-peer outbound message queues that coalesce
wantlist updates (``BitswapMessageQueue``), and the lifecycle
(``start``/``stop``, network notifee that reaps per-peer state on
disconnect). On a host fedstore opens, the Noise and yamux layers underneath
run with the fixes in ``fedstore.p2p.libp2p_patches``.

What is replaced, and why (details in ``docs/BITSWAP.md``):

* **Reading messages** (``_handle_stream``, ``_read_message``): upstream
  reads the varint length byte by byte and grows the body with ``bytes +=``;
  here :class:`~fedstore_bitswap.wire.MessageReader` reads in large chunks.
  ``_process_message`` dispatches straight to the handlers below (no
  extension lookups or per-message debug formatting).
* **Receiving blocks** (``_process_blocks_v100``/``_process_blocks_v110``):
  upstream stores *every* block a peer sends in the block store, wanted or
  not, and never tells the caller which peer sent what. Here the blocks of a
  message are hashed (sha2-256) and the wanted ones stored in one worker
  thread call; a block is kept only if a running fetch wants exactly that
  digest; a block nobody asked for is dropped and the sender is reported to
  the fetches that have requests outstanding at it ("wrong block"). Peers
  that asked this node for a block it has just stored are told at once
  (:meth:`~fedstore_bitswap.serving.Server.notify_new_blocks`).
* **Presences** (``_process_block_presences``): routed to fetches per peer,
  instead of upstream's presence table, which ``_send_wantlist_to_peer``
  pre-fills with a fake HAVE for every peer it asks.
* **Serving** (``_process_wantlist``): upstream reads every wanted block into
  memory at once, sends the full block for WANT_HAVE entries, forgets wants
  it cannot serve, and writes the answer back on the requester's own stream,
  which Kubo/boxo never read. Here :mod:`fedstore_bitswap.serving` queues
  wants per peer (bounded), serves them under a global FIFO byte budget,
  answers HAVE with a presence, remembers wants for blocks not held yet
  (boxo's ledger) and responds on this node's own stream, as boxo does.
* **Reading our outbound streams** (``_on_message_queue_stream_opened``):
  upstream stops reading (and closes the stream) as soon as its presence
  table has no entry for the peer, which races with the next wantlist; here
  the reader stays until the remote closes or the stream idles.
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
from libp2p.bitswap.cid import CIDInput, CIDObject
from libp2p.bitswap.cid import parse_cid as lp_parse_cid
from libp2p.bitswap.config import BITSWAP_PROTOCOL_V100, BITSWAP_PROTOCOL_V110, BITSWAP_PROTOCOLS
from libp2p.bitswap.pb.bitswap_pb2 import Message
from libp2p.peer.id import ID

from fedstore.errors import InvalidCIDError
from fedstore.ipld.cid import cid_from_bytes
from fedstore_bitswap.blockstore import BlockStore
from fedstore_bitswap.limits import BitswapLimits, ByteBudget
from fedstore_bitswap.peers import Reputation
from fedstore_bitswap.responder import block_prefix, close_quietly
from fedstore_bitswap.serving import PRESENCE_PROTOCOLS, Server
from fedstore_bitswap.wire import MessageReader

__all__ = [
    "BITSWAP_PROTOCOL_IDS",
    "FedstoreBitswapClient",
    "FetchListener",
    "ServeStats",
    "block_prefix",
]

log = logging.getLogger("fedstore.backends.bitswap")

BITSWAP_PROTOCOL_IDS = frozenset(str(p) for p in BITSWAP_PROTOCOLS)
#: Our outbound (wantlist) streams are closed after this long without a message.
_OUTBOUND_IDLE = 120.0
#: A peer's inbound stream is closed after this long without a message (as upstream).
_INBOUND_IDLE = 60.0
#: How many recently wanted digests are remembered (late duplicates are not "wrong").
_RECENT_WANTS = 1 << 16
#: Parsed CID objects kept for the message queues (one per block in flight).
_CID_CACHE = 1 << 14

PeersProvider = Callable[[], Iterable[Any]]


class FetchListener(Protocol):
    """What the engine tells a running fetch. Callbacks are synchronous and never raise."""

    def wants(self, digest: bytes) -> bool: ...
    def wanted(self) -> Iterable[bytes]: ...
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
    presences_dropped: int = 0
    haves_pushed: int = 0
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
        self._recent_wants: OrderedDict[bytes, None] = OrderedDict()
        self._cid_objects: dict[bytes, CIDObject] = {}
        self._ids: dict[str, ID] = {}
        self.serve_stats = ServeStats()
        self._stats_changed = trio.Event()
        self.server = Server(self, store, self.limits, self.serve_stats, self._stats_updated)
        #: Peers dropped from a fetch recently (timeouts, bad data): tried last.
        self.reputation = Reputation(self.limits.demote_for)

    # -- peers ---------------------------------------------------------------------------

    @property
    def serving_budget(self) -> ByteBudget:
        return self.server.budget

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
            peers = [self._peer_id(p) for p in self._peers_provider()]
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

    def _peer_id(self, peer: Any) -> ID:
        """An ``ID`` for a peer given as ``ID`` or base58 text (decoded once, then cached)."""
        if isinstance(peer, ID):
            return peer
        text = str(peer)
        cached = self._ids.get(text)
        if cached is None:
            if len(self._ids) >= _CID_CACHE:
                self._ids.clear()
            cached = self._ids[text] = ID.from_base58(text)
        return cached

    def speaks_presences(self, peer: ID) -> bool:
        """Whether *peer* understands WANT_HAVE / HAVE (bitswap 1.2.0), as far as known."""
        queue = self._message_queues.get(peer)
        if queue is not None and queue.negotiated_protocol:
            return queue.negotiated_protocol in PRESENCE_PROTOCOLS
        try:
            protos = set(self.host.get_peerstore().get_protocols(peer))
        except Exception:
            return True  # not identified yet: assume a current peer
        return not (protos & BITSWAP_PROTOCOL_IDS) or bool(protos & PRESENCE_PROTOCOLS)

    # -- fetch side: wire ----------------------------------------------------------------

    def register(self, fetch: FetchListener) -> None:
        self._fetches.add(fetch)

    def unregister(self, fetch: FetchListener) -> None:
        self._fetches.discard(fetch)

    def _cid_object(self, cid: bytes) -> CIDObject:
        obj = self._cid_objects.get(cid)
        if obj is None:
            if len(self._cid_objects) >= _CID_CACHE:
                self._cid_objects.clear()
            obj = self._cid_objects[cid] = lp_parse_cid(cid)
        return obj

    def send_wants(self, peer: ID, cids: Sequence[bytes], *, have: bool, priority: int = 1) -> None:
        """Queue WANT_BLOCK (or WANT_HAVE) entries, all with send_dont_have, to *peer*."""
        if not cids:
            return
        objs = []
        infos: dict[Any, dict[str, Any]] = {}
        info = {"priority": priority, "want_type": 1 if have else 0, "send_dont_have": True}
        recent = self._recent_wants
        for c in cids:
            obj = self._cid_object(c)
            objs.append(obj)
            infos[obj] = info
            digest = c[-32:]
            recent[digest] = None
            recent.move_to_end(digest)
        while len(recent) > _RECENT_WANTS:
            recent.popitem(last=False)
        self.get_or_create_message_queue(peer).add_wants(objs, want_infos=infos)

    def send_cancels(self, peer: ID, cids: Sequence[bytes]) -> None:
        if cids and peer in self._message_queues:
            self._message_queues[peer].add_cancels([self._cid_object(c) for c in cids])

    # -- reading streams -------------------------------------------------------------------

    async def _handle_stream(self, stream: INetStream) -> None:
        """A peer's stream to us: its wantlists, and blocks/presences it sends."""
        peer = stream.muxed_conn.peer_id
        protocol = stream.get_protocol()
        if protocol:
            self._peer_protocols[peer] = str(protocol)
        await self._read_loop(stream, peer, _INBOUND_IDLE)

    def _on_message_queue_stream_opened(self, stream: INetStream, peer_id: ID) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(self._read_loop, stream, peer_id, _OUTBOUND_IDLE)

    async def _read_loop(self, stream: INetStream, peer: ID, idle: float) -> None:
        """Read and handle messages until the remote closes or the stream idles.

        On our own (wantlist) streams this reads answers a py-libp2p server
        writes back inline.
        """
        reader = MessageReader(stream)
        try:
            while True:
                with trio.move_on_after(idle) as scope:
                    msg = await reader.read()
                if scope.cancelled_caught or msg is None:
                    break
                await self._process_message(msg, peer, stream)
        except Exception as exc:
            log.debug("bitswap stream with %s ended: %r", peer, exc)
        finally:
            await close_quietly(stream)

    async def _read_message(self, stream: INetStream) -> Message | None:
        """One message (upstream's API; fedstore's loops keep a reader per stream)."""
        return await MessageReader(stream).read()

    async def _process_message(self, msg: Message, peer_id: ID, stream: INetStream) -> None:
        if msg.HasField("wantlist"):
            await self._process_wantlist(msg.wantlist, peer_id, stream)
        if msg.blocks:
            await self._accept_blocks(peer_id, [bytes(b) for b in msg.blocks])
        if msg.payload:
            # The prefix only names codec and hash; the bytes are checked against
            # the sha2-256 digest a fetch asked for, whatever the prefix says.
            await self._accept_blocks(peer_id, [bytes(b.data) for b in msg.payload])
        if msg.blockPresences:
            await self._process_block_presences(msg.blockPresences, peer_id)

    # -- fetch side: what arrives ----------------------------------------------------------

    async def _process_blocks_v100(self, blocks: list[bytes], peer_id: ID) -> None:
        await self._accept_blocks(peer_id, [bytes(b) for b in blocks])

    async def _process_blocks_v110(self, blocks: Sequence[Any], peer_id: ID) -> None:
        await self._accept_blocks(peer_id, [bytes(b.data) for b in blocks])

    def _hash_and_store(
        self, datas: list[bytes], wanted: set[bytes]
    ) -> list[tuple[bytes, bool | None]]:
        """(digest, stored) per block: True stored, False store failed, None not wanted."""
        out: list[tuple[bytes, bool | None]] = []
        for data in datas:
            digest = hashlib.sha256(data).digest()
            stored: bool | None = None
            if digest in wanted:
                try:
                    self.store.put_hashed(digest, data)
                    stored = True
                except OSError as exc:
                    log.warning("cannot store block %s: %s", digest.hex()[:16], exc)
                    stored = False
            out.append((digest, stored))
        return out

    def _wanted(self) -> set[bytes]:
        wanted: set[bytes] = set()
        for f in self._fetches:
            wanted.update(f.wanted())
        return wanted

    async def _accept_blocks(self, peer: ID, datas: list[bytes]) -> None:
        ok = []
        for data in datas:
            if len(data) > self.limits.max_block_size:
                self._blame(
                    peer, f"sent a block of {len(data)} bytes (limit {self.limits.max_block_size})"
                )
            else:
                ok.append(data)
        if not ok:
            return
        wanted = self._wanted()
        results = await trio.to_thread.run_sync(self._hash_and_store, ok, wanted)
        new: dict[bytes, int] = {}
        for data, (digest, stored) in zip(ok, results, strict=True):
            takers = [f for f in self._fetches if f.wants(digest)]
            if stored is None and takers:  # became wanted while we were hashing
                stored = (await trio.to_thread.run_sync(self._hash_and_store, [data], {digest}))[0][
                    1
                ]
            if stored is None:
                if digest not in self._recent_wants:
                    self.serve_stats.unsolicited_blocks += 1
                    self._blame(peer, "sent a block no fetch asked for (wrong data for a CID?)")
                continue
            if stored:
                new[digest] = len(data)
            for f in takers:
                f.on_block(peer, digest, data, stored)
        if new:
            self.server.notify_new_blocks(new)

    def _blame(self, peer: ID, reason: str) -> None:
        for f in list(self._fetches):
            if f.has_inflight(peer):
                f.on_wrong_block(peer, reason)

    async def _process_block_presences(self, presences: Sequence[Any], peer_id: ID) -> None:
        fetches = list(self._fetches)
        if fetches:
            for presence in presences:
                try:
                    cid = cid_from_bytes(bytes(presence.cid))
                except InvalidCIDError:
                    continue
                have = presence.type == Message.Have
                for f in fetches:
                    f.on_presence(peer_id, cid.digest, have)
        await trio.lowlevel.checkpoint()

    def cleanup_peer(self, peer_id: ID) -> None:
        super().cleanup_peer(peer_id)
        sender = self.server.drop_peer(peer_id)
        if sender is not None and self._nursery is not None:
            self._nursery.start_soon(sender.close)
        for f in list(self._fetches):
            f.on_peer_gone(peer_id)

    # -- serving -------------------------------------------------------------------------

    async def _process_wantlist(
        self, wantlist: Message.Wantlist, peer_id: ID, stream: INetStream
    ) -> None:
        protocol = str(stream.get_protocol() or BITSWAP_PROTOCOL_V100)
        if protocol not in BITSWAP_PROTOCOL_IDS:
            protocol = str(BITSWAP_PROTOCOL_V110)
        await self.server.on_wantlist(wantlist, peer_id, protocol)

    async def notify_stored(self) -> None:
        """Blocks were added to the store outside a fetch: tell peers that wanted them."""
        await self.server.recheck_pending()

    async def stop(self) -> None:
        for peer in list(self.server.peers):
            sender = self.server.drop_peer(peer)
            if sender is not None:
                await sender.close()
        await super().stop()
