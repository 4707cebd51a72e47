"""A fedstore node: a libp2p peer with a local checkpoint store, a catalog and a backend chain.

:class:`Node` composes the pieces and keeps the orchestration short:

* :mod:`fedstore.p2p.host` (libp2p host, gossipsub), :mod:`fedstore.p2p.topics`
  (validation, fan-out, payloads sent by CID), :mod:`fedstore.p2p.headproto`
  (asking peers for their head), :mod:`fedstore.p2p.sync` (late-joiner sync);
* :class:`~fedstore.store.AsyncLocalStore` and its catalog;
* a :class:`~fedstore.backends.BackendChain`.

Start one with ``async with open_node(config) as node:`` or
``node = await nursery.start(serve_node, config)``. While it runs, the node

* resumes from the catalog's latest local checkpoint (event :class:`Resumed`);
* connects to the configured bootstrap peers, retrying for a while;
* asks every newly connected peer that speaks the head protocol for its head
  (event :class:`HeadReceived`) and records the answer in the catalog, so
  ``sync`` knows it even if the announcement was missed;
* records every valid announcement heard on ``model-cids`` (event :class:`Heard`);
* re-announces its own head every ``reannounce_interval`` seconds.

With a peer filter (:meth:`Node.set_peer_filter`, e.g. a federation's
membership), messages on every joined topic from peers it refuses are
dropped inside the pubsub validator (counted as ``non_member``), and their
head answers and announcements are neither asked for nor used by ``sync``.

Events are the frozen dataclasses of :mod:`fedstore.node.events`, passed to
an optional ``on_event(event)`` callback; ``fedstore node`` prints them as
``KEY=value`` status lines (:mod:`fedstore.node.status`, docs/NODE.md).
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import trio

from fedstore.config import MAX_INLINE_LIMIT, NodeConfig
from fedstore.errors import (
    ConfigError,
    FedstoreError,
    NetworkError,
    ProtocolError,
    SizeLimitError,
)
from fedstore.node.bootstrap import BootstrapDialer
from fedstore.node.catalog_writer import CatalogWriter
from fedstore.node.events import (
    Announced,
    AutoSyncFailed,
    BootstrapFailed,
    Dropped,
    EventSink,
    HeadReceived,
    Heard,
    Listening,
    NodeEvent,
    NodeStarted,
    PeerConnected,
    PeerDisconnected,
    Published,
    Received,
    Resumed,
    Saved,
    Synced,
    SyncFailed,
    TopicJoined,
    TopicLeft,
)
from fedstore.p2p.guard import DropCounters, PeerGuard
from fedstore.p2p.headproto import HEAD_PROTOCOL, HeadServer, PeerHead, request_head
from fedstore.p2p.host import GossipSettings, P2PHost, open_host
from fedstore.p2p.identity import load_or_create_identity
from fedstore.p2p.messages import (
    ANNOUNCE_TOPIC,
    Announcement,
    encode_inline,
    encode_reference,
    format_announcement,
)
from fedstore.p2p.sync import Candidate, Claim, Failure, Head, Syncer, SyncOutcome
from fedstore.p2p.topics import Subscription, TopicHub, check_topic

if TYPE_CHECKING:
    from fedstore.backends import BackendChain
    from fedstore.catalog import CheckpointRecord
    from fedstore.format import Checkpoint
    from fedstore.store import AsyncLocalStore

__all__ = ["SYNC_PROGRESS", "Head", "Node", "PublishResult", "open_node", "serve_node"]

log = logging.getLogger(__name__)

#: Called with (topic, sender, payload) for every validated message from another peer.
MessageSink = Callable[[str, str, bytes], None]
#: Which peers' messages and claims the node takes (peer id -> allowed).
PeerFilter = Callable[[str], bool]
#: Set by a caller of :meth:`Node.sync` (the ``sync`` command) to hear how many verified
#: bytes of the checkpoint being fetched have arrived; a context variable, so it applies
#: to that call only.
SYNC_PROGRESS: contextvars.ContextVar[Callable[[int], None] | None] = contextvars.ContextVar(
    "fedstore_sync_progress", default=None
)
#: seconds between prunings of old announcements from the catalog
_PRUNE_INTERVAL = 60.0
#: Failed sync claims are remembered this long (seconds) and at most this many rows.
_FAILED_CLAIM_RETENTION = 7 * 86400.0
_FAILED_CLAIMS_KEPT = 10_000
#: Failed claims a sync reads back (the most recent ones).
_FAILED_CLAIMS_READ = 2_000
#: Claims per sender and in all that sync reads from the catalog.
_CLAIMS_PER_SENDER = 3
_CLAIMS_READ = 200
#: Auto-sync: wait this long after a wake-up for more announcements before syncing
#: (a burst costs one sync), at least this long between syncs, and twice as long
#: after each sync that found only failures (up to the cap; a success resets it).
AUTO_SYNC_SETTLE = 0.5
AUTO_SYNC_MIN_INTERVAL = 2.0
AUTO_SYNC_MAX_INTERVAL = 60.0
#: (round, cid, sender) keys remembered to emit HEARD once per announcement.
_HEARD_MEMORY = 8192


def payload_digest(data: bytes) -> str:
    """The 16-hex-digit SHA-256 prefix status lines use to identify a payload."""
    return hashlib.sha256(data).hexdigest()[:16]


#: Payloads up to this size are hashed on the event loop; larger ones in a thread.
_INLINE_HASH = 1 << 20


async def _digest(data: bytes) -> str:
    if len(data) <= _INLINE_HASH:
        return payload_digest(data)
    return await trio.to_thread.run_sync(payload_digest, data)


@dataclass(frozen=True, slots=True)
class PublishResult:
    """What :meth:`Node.publish` sent: *size* bytes, inline or (if *cid*) by reference."""

    topic: str
    size: int
    digest: str
    cid: str | None = None


class Node:
    """A running node. Create with :func:`open_node`; the constructor does no I/O."""

    def __init__(
        self,
        config: NodeConfig,
        host: P2PHost,
        store: AsyncLocalStore,
        chain: BackendChain,
        nursery: trio.Nursery,
        *,
        on_event: EventSink | None = None,
        on_message: MessageSink | None = None,
    ) -> None:
        self.config = config
        self.host = host
        self.store = store
        self.catalog = store.catalog
        self.chain = chain
        self._nursery = nursery
        self._on_event = on_event
        self._on_message = on_message
        self.counters = DropCounters()
        self.topics = TopicHub(
            host,
            nursery,
            guard=PeerGuard(config.peer_rate, config.peer_burst),
            counters=self.counters,
            inline_limit=config.inline_limit,
            max_reference_size=config.max_update_size,
            fetch=self._fetch_sized,
            on_announcement=self._heard,
            on_message=self._received,
            on_drop=lambda topic, reason, peer: self._emit(Dropped(topic, reason, peer)),
            on_membership=lambda topic, joined: self._emit(
                TopicJoined(topic) if joined else TopicLeft(topic)
            ),
        )
        self.head_server = HeadServer(
            self.head,
            guard=PeerGuard(rate=2.0, burst=10),
            counters=self.counters,
            timeout=config.head_timeout,
        )
        self.syncer = Syncer(
            local_head=self.head,
            ask_peers=self._ask_peers,
            known_claims=self._known_claims,
            fetch=lambda cid: self.chain.fetch_bytes(
                cid, max_size=config.max_fetch_size, progress=SYNC_PROGRESS.get()
            ),
            store=self._store_fetched,
            failures=self._failed_claims,
            record_failure=self._record_failed_claim,
            clear_failure=self._clear_failed_claim,
        )
        #: the node's own catalog writes (announcements, heads, peers, pruning), batched
        self.writer = CatalogWriter(
            record=self.catalog.record_announcements,
            upsert_peer=self.catalog.upsert_peer,
            counters=self.counters,
            drop_topic=ANNOUNCE_TOPIC,
        )
        self._heard_keys: OrderedDict[tuple[int, str, str], None] = OrderedDict()
        self._head_round: int | None = None
        self._connected: set[str] = set()
        self._peers_changed = trio.Event()  # set at the next new connection
        self._membership_changed = trio.Event()  # set at the next connection or disconnection
        self._bootstrap = BootstrapDialer(
            self.connect,
            self.host.connected_peers,
            lambda: self._membership_changed,
            lambda addr, reason: self._emit(BootstrapFailed(addr, reason)),
        )
        self._auto_sync_wanted = trio.Event()
        self._auto_sync_trusted = False  # a claim from a peer without failures is waiting
        #: auto-sync runs (tried something) and runs that fetched nothing
        self.auto_syncs = 0
        self.auto_syncs_failed = 0

    # -- identity and status -------------------------------------------------------------
    @property
    def peer_id(self) -> str:
        return self.host.peer_id

    @property
    def role(self) -> str:
        return self.config.role

    def addrs(self) -> list[str]:
        """Full multiaddrs other peers can dial (``/ip4/../tcp/../p2p/<id>``)."""
        return self.host.addrs()

    def peers(self) -> list[str]:
        return self.host.connected_peers()

    def joined_topics(self) -> list[str]:
        return self.topics.joined()

    @property
    def peer_filter(self) -> PeerFilter | None:
        return self.topics.peer_filter

    def set_peer_filter(self, allowed: PeerFilter | None) -> None:
        """Take messages, announcements and head answers only from peers ``allowed`` accepts.

        Applies at once to every joined topic (in the pubsub validator, before
        any decoding: reason ``non_member``) and to sync. None removes it.
        """
        self.topics.peer_filter = allowed

    def _allowed(self, peer: str) -> bool:
        allowed = self.topics.peer_filter
        return allowed is None or allowed(peer)

    def _emit(self, event: NodeEvent) -> None:
        if self._on_event is not None:
            self._on_event(event)

    async def head(self) -> Head | None:
        """This node's latest local checkpoint, from the catalog."""
        rec = await self.store.latest()
        self._head_round = None if rec is None else rec.round
        return None if rec is None else Head(rec.round, rec.cid)

    # -- peers -------------------------------------------------------------------------
    async def connect(self, addr: str) -> str:
        """Dial a peer by full multiaddr; return its peer id (NetworkError/ConfigError)."""
        return await self.host.connect(addr, timeout=self.config.connect_timeout)

    async def wait_for_peers(
        self, count: int, *, topic: str | None = None, timeout: float = 10.0
    ) -> list[str]:
        """Wait until *count* peers are connected (with *topic*: in our mesh for it).

        Event-driven: wakes on connections and on libp2p's mesh events, no
        polling. Raises :class:`NetworkError` after *timeout* seconds.
        """
        try:
            with trio.fail_after(timeout):
                while True:
                    peers = self.host.mesh_peers(topic) if topic else self.host.connected_peers()
                    if len(peers) >= count:
                        return peers
                    await self._wait_for_change(topic, set(peers))
        except trio.TooSlowError:
            what = f"in the {topic} mesh" if topic else "connected"
            raise NetworkError(f"fewer than {count} peer(s) {what} after {timeout:g} s") from None

    async def wait_for_bootstrap(self, timeout: float = 30.0) -> str:
        """Wait until one configured bootstrap peer is connected; return its peer id.

        Raises :class:`NetworkError` after *timeout* seconds with one line
        naming the address tried, why it failed and what to check
        (:func:`fedstore.node.bootstrap.explain`); :class:`ConfigError` if no
        bootstrap address is configured.
        """
        from fedstore.p2p.host import parse_peer_multiaddr

        if not self.config.bootstrap:
            raise ConfigError("no bootstrap address configured (--bootstrap, FEDSTORE_BOOTSTRAP)")
        wanted = {parse_peer_multiaddr(a)[0] for a in self.config.bootstrap}
        with trio.move_on_after(timeout):
            while True:
                found = sorted(wanted & set(self.host.connected_peers()))
                if found:
                    return found[0]
                await self._membership_changed.wait()
        raise self._bootstrap.error(self.config.bootstrap, timeout)

    async def _wait_for_change(self, topic: str | None, have: set[str]) -> None:
        """Return when a peer connects or (with *topic*) a connected peer enters the mesh."""
        changed = self._peers_changed

        async with trio.open_nursery() as nursery:

            async def on_connect() -> None:
                await changed.wait()
                nursery.cancel_scope.cancel()

            async def on_mesh(peer: str) -> None:
                try:
                    await self.host.wait_for_mesh(peer, topic or "", timeout=3600)
                except NetworkError:
                    return
                nursery.cancel_scope.cancel()

            nursery.start_soon(on_connect)
            if topic:
                for peer in set(self.host.connected_peers()) - have:
                    nursery.start_soon(on_mesh, peer)

    async def peer_heads(self) -> list[PeerHead]:
        """Ask every connected peer that speaks the head protocol for its head now.

        Peers whose Identify record does not list ``/fedstore/head/1.0.0``
        (an IPFS node, say) are not asked; peers that fail are skipped.
        """
        heads: list[PeerHead] = []

        async def ask(peer: str) -> None:
            if not await self.host.speaks(peer, HEAD_PROTOCOL, timeout=self.config.head_timeout):
                return
            head = await self._ask_head(peer)
            if head is not None:
                heads.append(head)

        async with trio.open_nursery() as nursery:
            for peer in self.host.connected_peers():
                nursery.start_soon(ask, peer)
        return sorted(heads, key=lambda h: (-h.round, h.peer_id))

    async def _ask_head(self, peer: str) -> PeerHead | None:
        if not self._allowed(peer):
            return None
        try:
            head = await request_head(self.host.open_stream, peer, timeout=self.config.head_timeout)
        except (NetworkError, ProtocolError) as exc:
            log.info("no head from %s: %s", peer, exc)
            return None
        if head is not None:
            self._emit(HeadReceived(head.round, head.cid, peer))
            self.writer.announcement(head.round, head.cid, peer, HEAD_PROTOCOL)
        return head

    # -- topics ------------------------------------------------------------------------
    async def join(self, topic: str) -> bool:
        """Join *topic* (event ``JOINED``); False if already joined."""
        return await self.topics.join(topic)

    async def leave(self, topic: str) -> bool:
        """Leave *topic* (event ``LEFT``); its subscriptions end. False if not joined."""
        return await self.topics.leave(topic)

    def subscribe(self, topic: str) -> Subscription:
        """Validated messages of *topic* as ``(sender, data)``; joins the topic on entry.

        ``async with node.subscribe("fed-learn") as sub: async for sender, data in sub: ...``
        Payloads sent by reference arrive already fetched and verified.
        """
        return self.topics.subscribe(topic)

    async def publish(self, topic: str, data: bytes) -> PublishResult:
        """Publish *data* on *topic*; above the inline limit it travels as a CID.

        A payload sent by CID is stored by the chain's write policy first (the
        first backend that accepts it, and bitswap), so subscribers on other
        machines can fetch it from this node.

        On ``model-cids`` the bytes are sent verbatim (the compatibility
        format; use :meth:`announce` to send a validated announcement).
        Raises :class:`~fedstore.errors.SizeLimitError` for payloads peers
        would refuse (above ``max_update_size``, or above 1 MB verbatim on
        ``model-cids``) instead of letting py-libp2p drop them silently.
        """
        check_topic(topic)
        if len(data) > self.config.max_update_size:
            raise SizeLimitError(
                f"{len(data)} bytes exceed FEDSTORE_MAX_UPDATE_SIZE={self.config.max_update_size}"
                "; peers would refuse it"
            )
        digest = await _digest(data)
        cid = None
        if topic == ANNOUNCE_TOPIC:
            if len(data) > MAX_INLINE_LIMIT:
                raise SizeLimitError(f"{len(data)} bytes are too large for one pubsub message")
            wire = data
        elif len(data) <= self.config.inline_limit:
            wire = encode_inline(data, limit=self.config.inline_limit)
        else:
            added = await self.chain.add(
                data,
                cid_version=1,
                name=f"{topic}-{digest}",
                labels={"topic": topic, "peer": self.peer_id},
            )
            cid = added.cid
            wire = encode_reference(cid, len(data))
        await self.host.publish(topic, wire)
        self._emit(Published(topic, len(data), digest, cid))
        return PublishResult(topic, len(data), digest, cid)

    async def announce(self, round: int, cid: str) -> None:
        """Announce ``CID:<round>:<cid>`` on ``model-cids``."""
        await self.host.publish(ANNOUNCE_TOPIC, format_announcement(round, cid))
        self._emit(Announced(round, cid))

    async def advertize(self) -> Head | None:
        """Re-announce this node's head now (the original ``advertize`` command)."""
        head = await self.head()
        if head is not None:
            await self.announce(head.round, head.cid)
        return head

    def _received(self, topic: str, sender: str, data: bytes) -> None:
        if self._on_message is not None:
            self._on_message(topic, sender, data)
        if self._on_event is None:
            return
        if len(data) <= _INLINE_HASH:
            self._emit(Received(topic, sender, len(data), payload_digest(data)))
        else:  # hash large payloads off the event loop

            async def emit_later() -> None:
                self._emit(Received(topic, sender, len(data), await _digest(data)))

            self._nursery.start_soon(emit_later)

    async def _heard(self, sender: str, ann: Announcement) -> None:
        """A valid announcement: HEARD at once (the first time), recorded in the background."""
        key = (ann.round, ann.cid, sender)
        if key in self._heard_keys:
            self._heard_keys.move_to_end(key)
        else:
            self._heard_keys[key] = None
            if len(self._heard_keys) > _HEARD_MEMORY:
                self._heard_keys.popitem(last=False)
            self._emit(Heard(ann.round, ann.cid, sender))
        self.writer.announcement(ann.round, ann.cid, sender, ANNOUNCE_TOPIC)
        if self.config.auto_sync:
            self._want_sync(ann.round, ann.cid, sender)

    async def recorded(self) -> None:
        """Return once every announcement, head answer and peer heard so far is in the
        catalog (they are recorded in the background, after their events)."""
        await self.writer.wait_idle()

    def _want_sync(self, round: int, cid: str, sender: str) -> None:
        """Wake the auto-sync task if *round* is newer than the local head and the claim
        is not in its failure back-off (no I/O: runs for every announcement). A claim
        from a peer with no failed claim skips the back-off between failed syncs."""
        if self._head_round is not None and round <= self._head_round:
            return
        if not self.syncer.worth_trying(round, cid):
            return
        if not self.syncer.suspect(sender):
            self._auto_sync_trusted = True
        self._auto_sync_wanted.set()

    async def _fetch_sized(self, cid: str, size: int) -> bytes:
        return await self.chain.fetch_bytes(cid, max_size=size)

    # -- checkpoints -------------------------------------------------------------------
    async def save_checkpoint(
        self,
        round: int,
        arrays: Mapping[str, np.ndarray],
        metadata: Mapping[str, str] | None = None,
    ) -> CheckpointRecord:
        """Save locally, store through the backend chain (pins recorded), then announce.

        If no backend accepts the checkpoint it stays saved locally, the
        failure is recorded per backend, and the error is raised: nothing is
        announced that peers could not fetch.
        """
        rec = await self.store.save(round, arrays, metadata)
        self._emit(Saved(rec.round, rec.cid))
        await self.replicate(rec)
        await self.announce(rec.round, rec.cid)
        return rec

    async def replicate(self, rec: CheckpointRecord) -> None:
        """Store a local checkpoint by the chain's write policy (the first backend that
        accepts it and every backend that keeps a local copy), recording a pin row
        per backend tried.

        Delegates to :func:`fedstore.node.replication.replicate`; raises
        :class:`~fedstore.errors.UnavailableError` if no backend accepted it.
        """
        from fedstore.node.replication import replicate

        await replicate(
            self.store.dir / rec.path,
            rec.cid,
            self.chain,
            self.catalog,
            {"round": str(rec.round), "peer": self.peer_id},
            name=f"round-{rec.round}",
        )

    async def load_checkpoint(self, round: int | None = None) -> Checkpoint:
        """Load (and CID-verify) a local checkpoint; the latest without *round*."""
        return await self.store.load(round, max_decoded_size=None)

    async def fetch(self, cid: str) -> bytes:
        """Fetch *cid* through the backend chain, verified (at most ``max_fetch_size``)."""
        return await self.chain.fetch_bytes(cid, max_size=self.config.max_fetch_size)

    async def _store_fetched(self, round: int, data: bytes, cid: str) -> Head:
        from fedstore.node.replication import keep_local_copies

        rec = await self.store.save_encoded(round, data, cid)
        # backends that serve peers (bitswap) keep a copy of what we fetched elsewhere
        await keep_local_copies(
            self.chain, self.store.dir / rec.path, rec.cid, self.catalog, missing_only=True
        )
        return Head(rec.round, rec.cid)

    async def keep_checkpoint(self, round: int, data: bytes, cid: str) -> Head:
        """Keep checkpoint bytes fetched elsewhere as this node's copy of ``round``.

        The bytes are verified against ``cid`` first; another checkpoint held
        for that round is replaced. Backends that serve peers (bitswap) get
        their copy, so this node can serve what it keeps.
        """
        from fedstore.node.replication import keep_local_copies

        rec = await self.store.save_encoded(round, data, cid, replace=True)
        await keep_local_copies(
            self.chain, self.store.dir / rec.path, rec.cid, self.catalog, missing_only=True
        )
        return Head(rec.round, rec.cid)

    async def _complete_local_copies(self, *, limit: int | None = None) -> None:
        """Give keep-local-copy backends (bitswap) the local checkpoints they lack.

        A save killed between the local write and the bitswap copy leaves a
        round the node would advertise but could not serve; this finishes it.
        """
        from fedstore.node.replication import complete_local_copies

        try:
            outcomes = await complete_local_copies(self.chain, self.catalog, limit=limit)
        except FedstoreError as exc:
            log.warning("could not complete local copies of checkpoints: %s", exc)
            return
        for o in outcomes:
            if o.state == "failed":
                log.warning("%s still lacks %s: %s", o.backend, o.cid, o.error)

    async def _ask_peers(self) -> list[Claim]:
        return [(h.round, h.cid, h.peer_id) for h in await self.peer_heads()]

    async def _known_claims(self) -> list[Claim]:
        """Claims recorded in the catalog, and those heard but not written yet (the catalog
        may be busy: sync must not wait for it)."""
        local = await self.head()
        above = None if local is None else local.round
        pending = self.writer.pending_claims(above=above, per_sender=_CLAIMS_PER_SENDER)
        recorded = await self.catalog.sync_claims(
            above=above, per_sender=_CLAIMS_PER_SENDER, limit=_CLAIMS_READ
        )
        # a federation's node takes claims only from its members (the peer filter)
        return [c for c in recorded + pending if self._allowed(c[2])]

    async def _failed_claims(self) -> list[Failure]:
        recs = await self.catalog.failed_claims(limit=_FAILED_CLAIMS_READ)
        return [
            Failure(r.round, r.cid, r.peer, r.attempts, r.last_failed_at.timestamp()) for r in recs
        ]

    async def _record_failed_claim(self, cand: Candidate, error: str) -> None:
        await self.catalog.record_failed_claim(cand.round, cand.cid, sorted(cand.peers), error)

    async def _clear_failed_claim(self, cand: Candidate) -> None:
        await self.catalog.clear_failed_claim(cand.round, cand.cid)

    async def sync(self, *, ask_peers: bool = True) -> Head | None:
        """Fetch the network's latest checkpoint if newer than ours; return our head after.

        Asks every connected peer for its head first unless *ask_peers* is
        false (then only claims already recorded count). Candidates that
        failed before are demoted and backed off from (:mod:`fedstore.p2p.sync`).
        Emits :class:`Synced` when the node holds the latest known round,
        :class:`SyncFailed` if newer rounds exist but none could be fetched.
        """
        outcome = await self._sync(ask_peers=ask_peers)
        return outcome.head

    async def _sync(self, *, ask_peers: bool) -> SyncOutcome:
        outcome: SyncOutcome = await self.syncer.sync(ask_peers=ask_peers)
        if outcome.failures and not outcome.fetched:
            self._emit(SyncFailed(len(outcome.failures), outcome.failures[0]))
        elif outcome.head is not None:
            self._emit(Synced(outcome.head.round, outcome.head.cid))
        if outcome.head is not None:
            self._head_round = outcome.head.round
        return outcome

    # -- background tasks ---------------------------------------------------------------
    async def _watch_connections(self) -> None:
        async for event in self.host.connection_events():
            peer = event.peer_id
            if event.kind == "connected" and peer not in self._connected:
                self._connected.add(peer)
                self._emit(PeerConnected(peer))
                self._nursery.start_soon(self._greet, peer)
                self._peers_changed.set()
                self._peers_changed = trio.Event()
                self._changed_membership()
            elif (
                event.kind == "disconnected"
                and peer in self._connected
                and peer not in self.host.connected_peers()
            ):
                self._connected.discard(peer)
                self._emit(PeerDisconnected(peer))
                self._changed_membership()

    def _changed_membership(self) -> None:
        event, self._membership_changed = self._membership_changed, trio.Event()
        event.set()

    async def _greet(self, peer: str) -> None:
        """Record a newly connected peer and, if it speaks the head protocol, ask for its head."""
        try:
            self.writer.peer(peer, self.host.peer_addrs(peer) or None)
            if not await self.host.speaks(peer, HEAD_PROTOCOL, timeout=self.config.head_timeout):
                log.debug("%s does not list %s; not asking for its head", peer, HEAD_PROTOCOL)
                return
            head = await self._ask_head(peer)
            if head is not None and self.config.auto_sync:
                self._want_sync(head.round, head.cid, peer)
        except FedstoreError as exc:
            log.warning("could not record peer %s: %s", peer, exc)
        except Exception:  # one peer must never take the node down
            log.exception("greeting peer %s failed", peer)

    async def _prune_announcements(self) -> None:
        """Bound the catalog: keep each peer's newest announcements only, and forget old
        failed claims (through the writer, so pruning never holds a second catalog thread)."""
        while True:
            await trio.sleep(_PRUNE_INTERVAL)
            self.writer.job(self._prune_once)

    async def _prune_once(self) -> None:
        try:
            dropped = await self.catalog.prune_announcements(self.config.announcements_per_peer)
            if dropped:
                log.info("pruned %d old announcements from the catalog", dropped)
            cutoff = datetime.fromtimestamp(time.time() - _FAILED_CLAIM_RETENTION, UTC)
            await self.catalog.prune_failed_claims(older_than=cutoff, keep=_FAILED_CLAIMS_KEPT)
        except Exception as exc:  # try again next time
            log.warning("pruning the catalog failed: %s", exc)

    async def _reannounce(self) -> None:
        interval = self.config.reannounce_interval
        if interval <= 0:
            return
        while True:
            await trio.sleep(interval)
            try:
                head = await self.head()
                if head is not None and self.host.topic_peers(ANNOUNCE_TOPIC):
                    await self.host.publish(ANNOUNCE_TOPIC, format_announcement(*head))
                    log.debug("re-announced round %d", head.round)
            except Exception as exc:  # try again next time
                log.warning("re-announcement failed: %s", exc)

    async def _auto_sync(self) -> None:
        """Sync when a newer claim arrives: debounced, from recorded claims only.

        A burst of announcements costs one sync (:data:`AUTO_SYNC_SETTLE`),
        syncs are at least :data:`AUTO_SYNC_MIN_INTERVAL` apart, and each sync
        that only failed doubles that gap (up to :data:`AUTO_SYNC_MAX_INTERVAL`):
        bogus claims cannot make the node sync in a loop. A claim from a peer
        with no failed claim on record waits only the minimum gap, so an
        honest peer's new round is not held up by an attacker's failures. Auto-sync never asks
        peers for their heads (it acts on what it heard), so it never spends
        the node's head-request allowance at its bootstrap peer.
        """
        interval = AUTO_SYNC_MIN_INTERVAL
        last = -float("inf")
        while True:
            await self._auto_sync_wanted.wait()
            while True:  # wait out the gap; a trusted peer's claim shortens it to the minimum
                gap = AUTO_SYNC_MIN_INTERVAL if self._auto_sync_trusted else interval
                wake = max(trio.current_time() + AUTO_SYNC_SETTLE, last + gap)
                if self._auto_sync_trusted:
                    await trio.sleep_until(wake)
                    break
                with trio.move_on_at(wake):
                    while not self._auto_sync_trusted:
                        self._auto_sync_wanted = trio.Event()
                        await self._auto_sync_wanted.wait()
                    continue
                break
            self._auto_sync_wanted = trio.Event()
            self._auto_sync_trusted = False
            last = trio.current_time()
            try:
                outcome = await self._sync(ask_peers=False)
            except FedstoreError as exc:
                self._emit(AutoSyncFailed(str(exc)))
                interval = min(interval * 2, AUTO_SYNC_MAX_INTERVAL)
                continue
            if outcome.failures or outcome.skipped or outcome.fetched:
                self.auto_syncs += 1
            if outcome.failures and not outcome.fetched:
                self.auto_syncs_failed += 1
                interval = min(interval * 2, AUTO_SYNC_MAX_INTERVAL)
            else:
                interval = AUTO_SYNC_MIN_INTERVAL

    async def _start(self) -> None:
        # the head must be servable before any peer can ask for it; older rounds follow
        await self._complete_local_copies(limit=1)
        self.host.set_stream_handler(HEAD_PROTOCOL, self.head_server.handle)
        self._emit(NodeStarted(self.peer_id))
        for addr in self.addrs():
            self._emit(Listening(addr))
        await self.join(ANNOUNCE_TOPIC)
        self._nursery.start_soon(self.writer.run)
        self._nursery.start_soon(self._watch_connections)
        self._nursery.start_soon(self._reannounce)
        self._nursery.start_soon(self._prune_announcements)
        self._nursery.start_soon(self._complete_local_copies)
        if self.config.auto_sync:
            self._nursery.start_soon(self._auto_sync)
        head = await self.head()
        if head is not None:
            log.info("Resumed from local checkpoint round %d", head.round)
            self._emit(Resumed(head.round))
        for addr in self.config.bootstrap:
            self._nursery.start_soon(self._bootstrap.keep, addr)


@asynccontextmanager
async def open_node(
    config: NodeConfig,
    *,
    on_event: EventSink | None = None,
    on_message: MessageSink | None = None,
    chain: BackendChain | None = None,
) -> AsyncIterator[Node]:
    """Start a node and yield it once it listens, has resumed and joined ``model-cids``.

    *on_event* receives every :mod:`fedstore.node.events` event, synchronously
    on the trio loop (it must be quick and must not raise); *on_message*
    ``(topic, sender, data)`` every validated message from another peer.
    *chain* replaces the configured backend chain (tests, embedding); the
    caller owns it: the node neither runs its backends' lifespans nor closes
    it (``async with chain:`` around the node does both). Otherwise the chain
    is built in the node's context (data directory, host) and runs for the
    node's lifetime. Leaving the block stops every background task, the
    chain, the host, the store and the catalog. One node per data directory:
    a :class:`~fedstore.errors.ConfigError` names the process holding it
    (:mod:`fedstore.store.dirlock`). An exception raised in the block comes out
    as raised, not wrapped in an exception group by the node's nurseries.
    """
    from fedstore.store import AsyncLocalStore

    identity = await trio.to_thread.run_sync(load_or_create_identity, config.data_dir)
    raised: list[BaseException] = []
    try:
        async with AsyncExitStack() as stack:
            # exclusive: a second node on this directory fails at once, naming our pid
            # (released when the store closes, the last thing to close)
            store = await AsyncLocalStore.open(
                config.data_dir, peer_id=identity.peer_id, exclusive=True
            )
            stack.push_async_callback(store.aclose)
            settings = GossipSettings(heartbeat_interval=config.heartbeat_interval)
            host = await stack.enter_async_context(
                open_host(
                    identity,
                    config.listen,
                    announce=config.announce,
                    announce_ip=config.announce_ip,
                    settings=settings,
                )
            )
            if chain is None:
                chain = await _open_chain(config, host, stack)
            await _record_run(store, config, host, chain, stack)
            nursery = await stack.enter_async_context(trio.open_nursery())
            node = Node(
                config, host, store, chain, nursery, on_event=on_event, on_message=on_message
            )
            await node._start()
            try:
                yield node
            except BaseException as exc:
                raised.append(exc)
                raise
            finally:
                with trio.move_on_after(2) as flushing:  # what was heard but not yet recorded
                    flushing.shield = True
                    await node.writer.flush()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # the caller's own exception, wrapped by the node's nurseries on its way out:
        # give it back as it was raised (one error, not a group around it)
        if raised and _sole_leaf(group) is raised[0]:
            raise raised[0] from None
        raise


async def _record_run(
    store: AsyncLocalStore,
    config: NodeConfig,
    host: P2PHost,
    chain: BackendChain,
    stack: AsyncExitStack,
) -> None:
    """Record this run in the catalog (``node_runs``: chain, role, addresses), and its
    clean stop when the node closes."""
    from fedstore import __version__

    run_id = await store.catalog.record_node_start(
        peer_id=host.peer_id,
        role=config.role,
        backends=chain.names,
        addrs=host.addrs(),
        version=__version__,
    )

    async def stopped() -> None:
        with trio.CancelScope(shield=True):  # a stop by signal still records it
            try:
                await store.catalog.record_node_stop(run_id)
            except FedstoreError as exc:
                log.warning("could not record the node's stop: %s", exc)

    stack.push_async_callback(stopped)


def _sole_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception inside *group* besides trio's Cancelled, or None."""
    found: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending and len(found) < 2:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        elif not isinstance(exc, trio.Cancelled):
            found.append(exc)
    return found[0] if len(found) == 1 else None


async def _open_chain(config: NodeConfig, host: P2PHost, stack: AsyncExitStack) -> BackendChain:
    """Build the configured chain in the node's context and keep it running for the node's life.

    Every backend is created with a :class:`~fedstore.backends.BackendContext`
    holding the node's data directory and host (so backends that need the
    peers, such as bitswap, can be built), and the chain is entered on
    *stack*: each backend's lifespan runs until the node stops, then the
    chain closes them.
    """
    from fedstore.backends import BackendContext, build_chain, default_backend_names

    ctx = BackendContext(data_dir=config.data_dir, host=host)
    settings = config.settings
    if config.backends:
        names = list(config.backends)
    else:
        names = await trio.to_thread.run_sync(default_backend_names, settings, ctx)
    chain = await trio.to_thread.run_sync(build_chain, names, settings, ctx)
    return await stack.enter_async_context(chain)


async def serve_node(
    config: NodeConfig,
    *,
    on_event: EventSink | None = None,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a node until cancelled; ``node = await nursery.start(serve_node, config)``."""
    async with open_node(config, on_event=on_event) as node:
        task_status.started(node)
        await trio.sleep_forever()
