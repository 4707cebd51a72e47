"""Adapter around py-libp2p 0.8.1: host, Pubsub and GossipSub, nothing else.

This is the only fedstore module that builds libp2p services or imports
``background_trio_service`` (moved between py-libp2p releases). Everything
above it sees plain strings (peer ids, multiaddrs, topics) and bytes.

Settings chosen against py-libp2p's defaults (see the reference notes):

* GossipSub ``heartbeat_interval`` 0.5 s instead of 120 s, so mesh repair
  after a peer leaves is quick;
* ``spam_protection_enabled=False``: upstream's limiter also throttles the
  node's *own* publishes beyond 10/s per topic; fedstore rate-limits remote
  peers itself (:mod:`fedstore.p2p.guard`) in topic validators;
* ``eclipse_protection_enabled=False`` and ``adaptive_gossip_enabled=False``:
  on loopback every peer shares one IP and the adaptive logic only adds
  non-determinism;
* ``strict_signing=True``: every message is signed by its origin and verified
  before validators run, so the sender a validator sees is the signer;
* security: Noise only (the default offer list also contains plaintext);
* transport: py-libp2p 0.8.1's Noise and yamux layers run with the fixes in
  :mod:`fedstore.p2p.libp2p_patches` (fewer frames, writes and reads per
  byte; same bytes on the wire), applied when a host opens, 0.8.1 only;
* a larger per-subscription queue (:data:`SUBSCRIPTION_QUEUE`), set when a
  host opens and only on the py-libp2p release it was checked against
  (:data:`LIBP2P_VERSION`); on another release fedstore warns and keeps
  py-libp2p's default;
* a peer store that wakes fedstore when Identify tells it a peer's protocols
  (:meth:`P2PHost.peer_protocols`), so the node asks only peers that speak a
  protocol instead of trying and getting ``na``.

:func:`open_host` also routes py-libp2p's log records into fedstore's logging
(:func:`fedstore.logsetup.route_libp2p_logs`): importing py-libp2p resets
its logger, so this has to happen after the import.
"""

from __future__ import annotations

import importlib.metadata
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import libp2p.pubsub.pubsub as _libp2p_pubsub
import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import INetConn, INetStream, INetwork, INotifee
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.peer.peerstore import PeerStore
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.tools.anyio_service import background_trio_service

from fedstore.errors import ConfigError, NetworkError
from fedstore.logsetup import route_libp2p_logs
from fedstore.p2p import libp2p_patches, pubsub_patches
from fedstore.p2p.addresses import AddressPlan, parse_announce
from fedstore.p2p.identity import Identity

#: The py-libp2p release this adapter was written and tested against.
LIBP2P_VERSION = "0.8.1"
#: py-libp2p 0.8.1 queues at most 32 validated messages per subscription
#: (``SUBSCRIPTION_CHANNEL_SIZE``, read when a topic is subscribed) and drops
#: the rest with only a log line, so a burst one peer is allowed to send
#: (``FEDSTORE_PEER_BURST``, 40 by default) could lose valid announcements
#: before fedstore's own guard sees them. The node drains its subscriptions
#: continuously; this only absorbs bursts. Messages are at most 1 MiB, so the
#: queue is bounded at 128 MiB in the worst case.
SUBSCRIPTION_QUEUE = 128

__all__ = [
    "ConnectionEvent",
    "GossipSettings",
    "P2PHost",
    "RawMessage",
    "RawSubscription",
    "Stream",
    "open_host",
    "parse_peer_multiaddr",
]

log = logging.getLogger(__name__)

#: A topic validator: (sender peer id, forwarder peer id, data) -> accept?
Validator = Callable[[str, str, bytes], bool]


class Stream(Protocol):
    """A byte stream to one peer, as fedstore's own protocols see it.

    ``read(n)`` returns up to *n* bytes and ``b""`` at end of stream;
    ``read``/``write`` raise :class:`~fedstore.errors.NetworkError` when the
    stream breaks. ``close``/``reset`` never raise.
    """

    async def read(self, n: int) -> bytes: ...
    async def write(self, data: bytes) -> None: ...
    async def close(self) -> None: ...
    async def close_write(self) -> None: ...
    async def reset(self) -> None: ...


class _NetStream:
    """Adapts a libp2p ``INetStream`` to :class:`Stream` (EOF as b"", errors translated)."""

    def __init__(self, stream: INetStream) -> None:
        self._stream: Any = stream  # NetStream; INetStream lacks close_write

    async def read(self, n: int) -> bytes:
        try:
            data: bytes = await self._stream.read(n)
            return data
        except StreamEOF:
            return b""
        except Exception as exc:  # StreamReset, StreamError, muxer errors
            raise NetworkError(f"stream broke while reading: {type(exc).__name__}") from exc

    async def write(self, data: bytes) -> None:
        try:
            await self._stream.write(data)
        except Exception as exc:
            raise NetworkError(f"stream broke while writing: {type(exc).__name__}") from exc

    async def close(self) -> None:
        try:
            await self._stream.close()
        except Exception:
            log.debug("stream close failed", exc_info=True)

    async def close_write(self) -> None:
        try:
            await self._stream.close_write()
        except Exception as exc:
            raise NetworkError(f"stream broke while closing: {type(exc).__name__}") from exc

    async def reset(self) -> None:
        await _reset_quietly(self._stream)


StreamHandler = Callable[[Stream, str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class GossipSettings:
    """Tunables for the pubsub layer (defaults suit loopback and LAN)."""

    heartbeat_interval: float = 0.5
    degree: int = 6
    degree_low: int = 4
    degree_high: int = 12
    #: py-libp2p rejects inbound pubsub RPC frames above this (1 MiB).
    max_inbound_rpc: int = 1 << 20


@dataclass(frozen=True, slots=True)
class RawMessage:
    """A pubsub message whose signature libp2p has verified. ``sender`` is the signer."""

    topic: str
    sender: str
    data: bytes


@dataclass(frozen=True, slots=True)
class ConnectionEvent:
    kind: str  # "connected" | "disconnected"
    peer_id: str


def parse_peer_multiaddr(text: str) -> tuple[str, multiaddr.Multiaddr]:
    """Split ``/ip4/.../tcp/.../p2p/<id>`` into (peer id, multiaddr); ConfigError if invalid."""
    try:
        addr = multiaddr.Multiaddr(text.strip())
        info = info_from_p2p_addr(addr)
    except Exception as exc:  # multiaddr and libp2p raise assorted ValueErrors
        raise ConfigError(
            f"not a peer multiaddr {text!r}: expected /ip4/<host>/tcp/<port>/p2p/<peer id>"
        ) from exc
    return info.peer_id.to_base58(), addr


class RawSubscription:
    """Messages of one topic as libp2p delivers them (signature-checked, validated)."""

    def __init__(self, topic: str, sub: Any) -> None:
        self.topic = topic
        self._sub = sub

    async def get(self) -> RawMessage:
        """Next message; raises ``trio.EndOfChannel`` once unsubscribed."""
        msg: rpc_pb2.Message = await self._sub.get()
        return RawMessage(topic=self.topic, sender=ID(msg.from_id).to_base58(), data=msg.data)

    def __aiter__(self) -> RawSubscription:
        return self

    async def __anext__(self) -> RawMessage:
        try:
            return await self.get()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None


class _ConnectionNotifee(INotifee):
    """Forwards connect/disconnect events to a bounded channel without ever blocking the swarm."""

    def __init__(self, send: trio.MemorySendChannel[ConnectionEvent]) -> None:
        self._send = send

    def _push(self, kind: str, conn: INetConn) -> None:
        try:
            peer = conn.muxed_conn.peer_id.to_base58()
            self._send.send_nowait(ConnectionEvent(kind, peer))
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            log.debug("connection event queue full or closed; %s event dropped", kind)

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        await trio.lowlevel.checkpoint()

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        await trio.lowlevel.checkpoint()

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._push("connected", conn)
        await trio.lowlevel.checkpoint()

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._push("disconnected", conn)
        await trio.lowlevel.checkpoint()

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        await trio.lowlevel.checkpoint()

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        await trio.lowlevel.checkpoint()


class _WatchedPeerStore(PeerStore):
    """py-libp2p's peer store that also wakes waiters when a peer's protocols are recorded.

    Identify (run by py-libp2p on every new connection) and Identify push
    record the protocols a peer lists through ``add_protocols``; py-libp2p
    offers no event for it, and polling would be the alternative.
    """

    def __init__(self) -> None:
        super().__init__()
        self.protocols_changed = trio.Event()

    def _wake(self) -> None:
        event, self.protocols_changed = self.protocols_changed, trio.Event()
        event.set()

    def add_protocols(self, peer_id: ID, protocols: Sequence[str]) -> None:
        super().add_protocols(peer_id, protocols)
        self._wake()

    def set_protocols(self, peer_id: ID, protocols: Sequence[str]) -> None:
        super().set_protocols(peer_id, protocols)
        self._wake()


class P2PHost:
    """A running libp2p host with gossipsub. Create with :func:`open_host`."""

    def __init__(
        self,
        host: Any,
        pubsub: Pubsub,
        gossipsub: GossipSub,
        events: trio.MemoryReceiveChannel[ConnectionEvent],
        peerstore: _WatchedPeerStore,
    ) -> None:
        self._host = host
        self._pubsub = pubsub
        self._gossipsub = gossipsub
        self._events = events
        self._peerstore = peerstore
        self.peer_id: str = host.get_id().to_base58()

    # -- escape hatch ----------------------------------------------------------------
    @property
    def libp2p_host(self) -> Any:
        """The underlying py-libp2p host, for extensions such as a Bitswap backend."""
        return self._host

    # -- addresses and peers -----------------------------------------------------------
    def addrs(self) -> list[str]:
        """Full announced multiaddrs, ``/ip4/.../tcp/.../p2p/<id>``."""
        return [str(a) for a in self._host.get_addrs()]

    def transport_addrs(self) -> list[str]:
        """Addresses actually bound, without ``/p2p``."""
        return [str(a) for a in self._host.get_transport_addrs()]

    async def connect(self, addr: str, *, timeout: float = 10.0) -> str:
        """Dial a peer by full multiaddr; return its peer id. Raises NetworkError/ConfigError."""
        peer_id, maddr = parse_peer_multiaddr(addr)
        if peer_id == self.peer_id:
            raise ConfigError("refusing to connect to this node's own address")
        info = info_from_p2p_addr(maddr)
        # py-libp2p refuses to dial a peer for 60 s after all its addresses failed once; an
        # explicit dial (a bootstrap retry, the connect command) is a reason to try again
        unblock = getattr(self._host.get_network(), "unblock_peer", None)
        if unblock is not None:
            unblock(info.peer_id)
        try:
            with trio.fail_after(timeout):
                await self._host.connect(info)
        except trio.TooSlowError as exc:
            raise NetworkError(f"connecting to {addr} timed out after {timeout:g} s") from exc
        except Exception as exc:  # libp2p raises SwarmException and friends
            raise NetworkError(f"cannot connect to {addr}: {type(exc).__name__}: {exc}") from exc
        return peer_id

    async def disconnect(self, peer_id: str) -> None:
        await self._host.disconnect(ID.from_base58(peer_id))

    def connected_peers(self) -> list[str]:
        return sorted(p.to_base58() for p in self._host.get_connected_peers())

    def peer_addrs(self, peer_id: str) -> list[str]:
        try:
            return [str(a) for a in self._host.get_peerstore().addrs(ID.from_base58(peer_id))]
        except Exception:  # PeerStoreError when unknown
            return []

    async def peer_protocols(self, peer_id: str, *, timeout: float = 5.0) -> frozenset[str] | None:
        """The protocols *peer_id* listed in its Identify record.

        py-libp2p runs Identify on every new connection; this waits (event
        driven, at most *timeout* seconds) until it has. None if it has not
        by then: the peer left, does not speak Identify, or is too slow.
        """
        pid = ID.from_base58(peer_id)
        with trio.move_on_after(timeout):
            while True:
                known = self._identified_protocols(pid)
                if known is not None:
                    return known
                await self._peerstore.protocols_changed.wait()
        return None

    async def speaks(self, peer_id: str, protocol: str, *, timeout: float = 5.0) -> bool:
        """Whether *peer_id*'s Identify record lists *protocol* (see :meth:`peer_protocols`)."""
        protocols = await self.peer_protocols(peer_id, timeout=timeout)
        return protocols is not None and protocol in protocols

    def _identified_protocols(self, pid: ID) -> frozenset[str] | None:
        try:
            listed = self._peerstore.get_protocols(pid)
        except Exception:  # PeerStoreError: nothing known about the peer yet
            listed = []
        # BasicHost 0.8.1 records peers whose Identify completed (even with no protocols)
        if listed or pid in getattr(self._host, "_identified_peers", ()):
            return frozenset(str(p) for p in listed)
        return None

    def connection_events(self) -> trio.MemoryReceiveChannel[ConnectionEvent]:
        """Connect/disconnect events (one consumer; bounded, oldest kept when full)."""
        return self._events

    # -- pubsub ----------------------------------------------------------------------
    def topic_peers(self, topic: str) -> list[str]:
        """Remote peers that told us they subscribe to *topic*."""
        return sorted(p.to_base58() for p in self._pubsub.peer_topics.get(topic, set()))

    def mesh_peers(self, topic: str) -> list[str]:
        return sorted(p.to_base58() for p in self._gossipsub.mesh.get(topic, set()))

    async def subscribe(self, topic: str) -> RawSubscription:
        return RawSubscription(topic, await self._pubsub.subscribe(topic))

    async def unsubscribe(self, topic: str) -> None:
        await self._pubsub.unsubscribe(topic)

    async def publish(self, topic: str, data: bytes) -> None:
        await self._pubsub.publish(topic, data)

    def set_validator(self, topic: str, validator: Validator) -> None:
        """Run *validator* on every message of *topic* before delivery and forwarding.

        Messages this node publishes itself are not validated. The validator
        must not raise; returning False drops the message (it is neither
        delivered nor forwarded).
        """
        me = self._host.get_id()

        def _check(forwarder: ID, msg: rpc_pb2.Message) -> bool:
            if forwarder == me:
                return True
            try:
                return validator(ID(msg.from_id).to_base58(), forwarder.to_base58(), msg.data)
            except Exception:
                log.exception("validator for %s failed; message dropped", topic)
                return False

        self._pubsub.set_topic_validator(topic, _check, False)

    async def wait_for_mesh(self, peer_id: str, topic: str, *, timeout: float = 5.0) -> None:
        """Wait until *peer_id* is in our mesh for *topic*; NetworkError on timeout."""
        try:
            await self._pubsub.wait_for_mesh(ID.from_base58(peer_id), topic, timeout=timeout)
        except trio.TooSlowError as exc:
            raise NetworkError(f"{peer_id} not in the {topic} mesh after {timeout:g} s") from exc

    async def wait_for_subscription(
        self, peer_id: str, topic: str, *, timeout: float = 5.0
    ) -> None:
        try:
            await self._pubsub.wait_for_subscription(
                ID.from_base58(peer_id), topic, timeout=timeout
            )
        except trio.TooSlowError as exc:
            raise NetworkError(f"{peer_id} did not subscribe to {topic} in {timeout:g} s") from exc

    # -- streams ---------------------------------------------------------------------
    def set_stream_handler(self, protocol: str, handler: StreamHandler) -> None:
        """Serve *protocol*; *handler(stream, remote peer id)* must not raise."""

        async def _handle(stream: INetStream) -> None:
            peer = stream.muxed_conn.peer_id.to_base58()
            try:
                await handler(_NetStream(stream), peer)
            except Exception:
                log.exception("handler for %s from %s failed", protocol, peer)
                await _reset_quietly(stream)

        self._host.set_stream_handler(TProtocol(protocol), _handle)

    async def open_stream(self, peer_id: str, protocol: str) -> Stream:
        """Open a stream to a connected peer; NetworkError if it fails."""
        try:
            stream = await self._host.new_stream(ID.from_base58(peer_id), [TProtocol(protocol)])
        except Exception as exc:  # StreamFailure, SwarmException, negotiation errors
            raise NetworkError(
                f"cannot open {protocol} stream to {peer_id}: {type(exc).__name__}"
            ) from exc
        return _NetStream(stream)


async def _reset_quietly(stream: Any) -> None:
    try:
        await stream.reset()
    except Exception:
        log.debug("stream reset failed", exc_info=True)


def _address_plan(announce: Sequence[str], announce_ip: str | None) -> AddressPlan:
    """The advertised-address rules of :mod:`fedstore.p2p.addresses` for this host.

    *announce_ip* (``IS_CLOUD``/``IP``) means ``/ip4/<IP>`` (``/ip6`` for an
    IPv6 address) with the bound port.
    """
    texts = list(announce)
    if announce_ip:
        proto = "ip6" if ":" in announce_ip else "ip4"
        try:
            multiaddr.Multiaddr(f"/{proto}/{announce_ip}")
        except Exception as exc:
            raise ConfigError(f"IP={announce_ip!r} is not an IP address") from exc
        texts.insert(0, f"/{proto}/{announce_ip}")
    return AddressPlan(parse_announce(texts))


def _enlarge_subscription_queue() -> None:
    """Raise py-libp2p's per-subscription queue to :data:`SUBSCRIPTION_QUEUE` (0.8.1 only).

    The size is a module global of ``libp2p.pubsub.pubsub`` read when a topic
    is subscribed, so this must run before the first subscription. On a
    py-libp2p release other than :data:`LIBP2P_VERSION` the global may mean
    something else or be gone: fedstore then leaves it alone and warns once.
    """
    global _queue_checked
    if _queue_checked:
        return
    _queue_checked = True
    try:
        version = importlib.metadata.version("libp2p")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    current = getattr(_libp2p_pubsub, "SUBSCRIPTION_CHANNEL_SIZE", None)
    if version != LIBP2P_VERSION or not isinstance(current, int):
        log.warning(
            "py-libp2p %s is not the tested %s: its subscription queue is left at %s "
            "messages, so a burst of valid messages may be dropped before fedstore sees them",
            version,
            LIBP2P_VERSION,
            current if isinstance(current, int) else "its default",
        )
        return
    _libp2p_pubsub.SUBSCRIPTION_CHANNEL_SIZE = max(current, SUBSCRIPTION_QUEUE)


_queue_checked = False


def _check_port_free(maddr: multiaddr.Multiaddr) -> None:
    """Refuse a fixed TCP port another process listens on.

    py-libp2p binds listeners with SO_REUSEPORT (for hole punching), so a
    second node on the same port would silently share it with the first and
    the kernel would split incoming connections between them. A probe bind
    without SO_REUSEPORT fails exactly when some socket listens there.
    """
    names = [p.name for p in maddr.protocols()]
    if "tcp" not in names or not ({"ip4", "ip6"} & set(names)):
        return
    port = int(maddr.value_for_protocol("tcp"))
    if port == 0:
        return
    family = socket.AF_INET6 if "ip6" in names else socket.AF_INET
    ip = maddr.value_for_protocol("ip6" if "ip6" in names else "ip4")
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine
        try:
            probe.bind((ip, port))
        except OSError as exc:
            raise NetworkError(
                f"cannot listen on {maddr}: {exc.strerror or exc} (is another node running?)"
            ) from exc


#: seconds a stopping host may spend closing its connections
_CLOSE_TIMEOUT = 5.0


async def _close_shielded(host: Any) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_TIMEOUT):
        await host.close()


def _without_auto_connector(host: Any) -> None:
    """Keep py-libp2p's auto-connector from dialling on this host's behalf.

    Left running it re-dials every peer its peerstore ever saw, up to 150
    at once, whenever connections drop: peers that only passed through,
    hostile ones included (a Sybil fills the peerstore by connecting), and
    dials still in flight at shutdown leave their sockets to the garbage
    collector. A fedstore node dials its bootstrap peers (redialling those
    that leave, :mod:`fedstore.node.bootstrap`) and whom it is told to.
    """
    auto = getattr(host.get_network(), "auto_connector", None)
    if auto is None:
        return

    async def stay_stopped() -> None:  # start() would set _started; the loop then never runs
        return None

    auto.start = stay_stopped


@asynccontextmanager
async def open_host(
    identity: Identity,
    listen: Sequence[str],
    *,
    announce: Sequence[str] = (),
    announce_ip: str | None = None,
    settings: GossipSettings | None = None,
) -> AsyncIterator[P2PHost]:
    """Start a host listening on *listen* with Pubsub + GossipSub; stop it on exit.

    What it advertises follows :mod:`fedstore.p2p.addresses`: the *announce*
    multiaddrs if any (*announce_ip*, the original design's
    ``IS_CLOUD``/``IP``, is one more: ``/ip4/<IP>`` with the bound port);
    else the bound addresses, a wildcard (``0.0.0.0``, ``::``) replaced by
    the host's dialable interface addresses. Raises :class:`ConfigError`
    for bad addresses and :class:`NetworkError` if the host cannot listen.
    """
    route_libp2p_logs()
    _enlarge_subscription_queue()
    libp2p_patches.apply()  # Noise/yamux fixes (0.8.1 only; wire format unchanged)
    pubsub_patches.apply()  # equivocation check keeps digests, not whole messages (0.8.1)
    settings = settings or GossipSettings()
    try:
        listen_addrs = [multiaddr.Multiaddr(a) for a in listen]
    except Exception as exc:
        raise ConfigError(f"bad listen multiaddr in {list(listen)!r}: {exc}") from exc
    if not listen_addrs:
        raise ConfigError("no listen address configured")
    for maddr in listen_addrs:
        _check_port_free(maddr)
    plan = _address_plan(announce, announce_ip)
    key_pair = identity.key_pair
    noise = NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)
    peerstore = _WatchedPeerStore()
    host = new_host(
        key_pair=key_pair,
        peerstore_opt=peerstore,
        sec_opt={NOISE_PROTOCOL_ID: noise},
        listen_addrs=listen_addrs,
        addrs_factory=plan,
    )
    _without_auto_connector(host)
    gossipsub = GossipSub(
        protocols=[PROTOCOL_ID_V11, PROTOCOL_ID],
        degree=settings.degree,
        degree_low=settings.degree_low,
        degree_high=settings.degree_high,
        heartbeat_initial_delay=0.1,
        heartbeat_interval=settings.heartbeat_interval,  # type: ignore[arg-type]
        spam_protection_enabled=False,
        eclipse_protection_enabled=False,
        adaptive_gossip_enabled=False,
    )
    pubsub = Pubsub(
        host,
        gossipsub,
        strict_signing=True,
        max_inbound_rpc_size=settings.max_inbound_rpc,
    )
    send, receive = trio.open_memory_channel[ConnectionEvent](256)
    host.get_network().register_notifee(_ConnectionNotifee(send))
    async with AsyncExitStack() as stack:
        stack.push_async_callback(host.close)  # runs last, after the services stopped
        try:
            await stack.enter_async_context(host.run(listen_addrs))
        except Exception as exc:  # OSError, or libp2p's wrappers around it
            detail = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise NetworkError(f"cannot listen on {', '.join(listen)}: {detail}") from exc
        if not host.get_transport_addrs():  # py-libp2p logs bind failures and carries on
            raise NetworkError(
                f"cannot listen on {', '.join(listen)}: address in use or not available"
            )
        await stack.enter_async_context(background_trio_service(pubsub))
        await stack.enter_async_context(background_trio_service(gossipsub))
        # Leaving: close the connections first, while the swarm and pubsub still
        # run. py-libp2p's close() tears each socket down only while the swarm
        # runs (after host.run() has stopped it, dialled sockets are left to the
        # garbage collector), and no stream arrives for a stopped pubsub. Shielded:
        # a node stopped by cancellation closes its sockets too.
        stack.push_async_callback(_close_shielded, host)
        await pubsub.wait_until_ready()
        try:
            yield P2PHost(host, pubsub, gossipsub, receive, peerstore)
        finally:
            send.close()
