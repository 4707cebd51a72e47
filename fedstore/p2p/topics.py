"""Joined topics: validation, fan-out to subscribers, and payloads sent by CID.

:class:`TopicHub` owns every gossipsub topic the node has joined. For each
one it installs a validator that runs inside libp2p *before* a message is
delivered or forwarded, so bad input never reaches fedstore's code and is
never relayed to other peers:

* a peer the :attr:`TopicHub.peer_filter` refuses (a non-member of the
  node's federation) is dropped with reason ``non_member``, before anything
  else is looked at;
* a peer over its rate (:class:`~fedstore.p2p.guard.PeerGuard`) is dropped
  with reason ``rate_limited``;
* ``model-cids`` messages must parse as ``CID:<round>:<cid>``;
* every other topic carries update envelopes (:mod:`fedstore.p2p.messages`).

Every drop is counted, logged (one line, floods summarised) and reported to
``on_drop``. A pump task per topic drains libp2p's small subscription queue
at once and never waits for slow work: announcements (recorded in the
catalog by ``on_announcement``) and references (payloads sent as a CID,
fetched through the backend chain, verified, checked for their announced
size, then delivered like inline payloads) go to two fixed pools of worker
tasks through bounded queues. When a queue is full the message is dropped,
counted as ``backlog_full``: however fast peers send, the hub holds at most
``workers + queue`` pieces of work of each kind. Subscribers each get a
bounded queue; a subscriber that falls behind loses messages, counted as
``subscriber_overflow``.

References cost a fetch each, so one peer must not be able to take them all:

* a sender may have at most ``references_per_sender`` references queued or
  being fetched at once; the excess is dropped, counted as ``reference_cap``
  (a peer sending references at its full allowance, to CIDs a lying peer
  claims to have, holds at most that many of the workers; an honest
  reference from anyone else is fetched at once);
* each fetch has its own deadline, counted from when a worker takes it, not
  from when it was queued: ``reference_timeout`` plus one second per
  ``reference_min_rate`` bytes announced; a fetch past it is abandoned,
  counted as ``fetch_timeout``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import NamedTuple, Self

import trio

from fedstore.errors import FedstoreError
from fedstore.p2p.guard import DropCounters, PeerGuard
from fedstore.p2p.host import P2PHost, RawMessage
from fedstore.p2p.messages import (
    ANNOUNCE_TOPIC,
    Announcement,
    EnvelopeKind,
    WireFormatError,
    decode_envelope,
    parse_announcement,
)

__all__ = ["Backlog", "Subscription", "TopicHub", "TopicMessage", "check_topic"]

log = logging.getLogger(__name__)

#: Messages queued per subscriber before new ones are dropped.
SUBSCRIBER_QUEUE = 256


@dataclass(frozen=True, slots=True)
class Backlog:
    """A fixed pool of *workers* tasks fed by a queue of at most *queue* items."""

    workers: int
    queue: int


#: Announcements being recorded (a catalog write each) and waiting to be. The queue
#: absorbs a burst of 25 peers' full allowance (``FEDSTORE_PEER_BURST`` 40 each) while
#: the catalog writes (one fsynced transaction each) catch up; a few hundred bytes an item.
ANNOUNCEMENT_BACKLOG = Backlog(workers=4, queue=1024)
#: Payloads sent by reference being fetched (one fetch per worker) and waiting to be.
REFERENCE_BACKLOG = Backlog(workers=4, queue=64)
#: References one sender may have queued or being fetched at once.
REFERENCES_PER_SENDER = 2
#: Deadline of one reference fetch: this many seconds, plus the announced size at
#: :data:`REFERENCE_MIN_RATE` bytes per second (a 256 MiB update gets ~290 s).
REFERENCE_TIMEOUT = 30.0
REFERENCE_MIN_RATE = 1 << 20

FetchFn = Callable[[str, int], Awaitable[bytes]]
AnnouncementFn = Callable[[str, Announcement], Awaitable[None]]
MessageFn = Callable[[str, str, bytes], None]
DropFn = Callable[[str, str, str], None]


class TopicMessage(NamedTuple):
    """A validated message: its verified *sender* (peer id) and the payload *data*."""

    sender: str
    data: bytes


class Subscription:
    """Messages of one topic for one consumer. Use ``async with`` and ``async for``.

    Entering joins the topic if needed. Iteration ends when the topic is left
    or the node stops. Without ``async with``, the first iteration registers.
    """

    def __init__(self, hub: TopicHub, topic: str) -> None:
        self._hub = hub
        self.topic = topic
        self._receive: trio.MemoryReceiveChannel[TopicMessage] | None = None
        self._send: trio.MemorySendChannel[TopicMessage] | None = None

    async def _register(self) -> None:
        if self._receive is None:
            self._send, self._receive = trio.open_memory_channel[TopicMessage](SUBSCRIBER_QUEUE)
            await self._hub._add_subscriber(self.topic, self._send)

    async def __aenter__(self) -> Self:
        await self._register()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._send is not None:
            self._hub._remove_subscriber(self.topic, self._send)
            self._send.close()
        if self._receive is not None:
            self._receive.close()

    def __aiter__(self) -> AsyncIterator[TopicMessage]:
        return self

    async def __anext__(self) -> TopicMessage:
        await self._register()
        assert self._receive is not None
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None


class _Work(NamedTuple):
    topic: str
    sender: str
    announcement: Announcement | None = None
    cid: str = ""
    size: int = 0


class TopicHub:
    """Topics joined by one node (see the module docstring).

    The constructor starts the worker tasks in *nursery*; they run until the
    nursery is cancelled.
    """

    def __init__(
        self,
        host: P2PHost,
        nursery: trio.Nursery,
        *,
        guard: PeerGuard,
        counters: DropCounters,
        inline_limit: int,
        max_reference_size: int,
        fetch: FetchFn,
        on_announcement: AnnouncementFn,
        on_message: MessageFn | None = None,
        on_drop: DropFn | None = None,
        on_membership: Callable[[str, bool], None] | None = None,
        announcement_backlog: Backlog = ANNOUNCEMENT_BACKLOG,
        reference_backlog: Backlog = REFERENCE_BACKLOG,
        references_per_sender: int = REFERENCES_PER_SENDER,
        reference_timeout: float = REFERENCE_TIMEOUT,
        reference_min_rate: float = REFERENCE_MIN_RATE,
    ) -> None:
        if references_per_sender < 1 or reference_timeout <= 0 or reference_min_rate <= 0:
            raise ValueError("references_per_sender, reference_timeout and min rate must be > 0")
        self._host = host
        self._nursery = nursery
        self._guard = guard
        self.counters = counters
        self._inline_limit = inline_limit
        self._max_reference_size = max_reference_size
        self._fetch = fetch
        self._on_announcement = on_announcement
        self._on_message = on_message
        self._on_drop = on_drop
        self._on_membership = on_membership
        self._scopes: dict[str, trio.CancelScope] = {}
        self._subscribers: dict[str, list[trio.MemorySendChannel[TopicMessage]]] = {}
        #: peer id -> whether its messages are taken at all (None: everyone's)
        self.peer_filter: Callable[[str], bool] | None = None
        self._references_per_sender = references_per_sender
        self._reference_timeout = reference_timeout
        self._reference_min_rate = reference_min_rate
        #: sender -> references of its queued or being fetched
        self._pending_references: dict[str, int] = {}
        self._announcements = self._pool(announcement_backlog, self._announce_safely)
        self._references = self._pool(reference_backlog, self._resolve)

    def _pool(
        self, backlog: Backlog, handle: Callable[[_Work], Awaitable[None]]
    ) -> trio.MemorySendChannel[_Work]:
        """Start *backlog.workers* tasks running *handle* on items sent to the returned channel."""
        if backlog.workers < 1 or backlog.queue < 0:
            raise ValueError(f"a backlog needs at least one worker and a queue >= 0: {backlog}")
        send, receive = trio.open_memory_channel[_Work](backlog.queue)

        async def worker() -> None:
            async for work in receive:
                await handle(work)

        for _ in range(backlog.workers):
            self._nursery.start_soon(worker)
        return send

    # -- joining -----------------------------------------------------------------------
    def joined(self) -> list[str]:
        return sorted(self._scopes)

    async def join(self, topic: str) -> bool:
        """Join *topic*; False if already joined."""
        check_topic(topic)
        if topic in self._scopes:
            return False
        self._host.set_validator(topic, self._validator(topic))
        raw = await self._host.subscribe(topic)
        scope = trio.CancelScope()
        self._scopes[topic] = scope
        self._nursery.start_soon(self._pump, topic, raw, scope)
        if self._on_membership is not None:
            self._on_membership(topic, True)
        return True

    async def leave(self, topic: str) -> bool:
        """Leave *topic*; its subscribers' iterations end. False if not joined."""
        scope = self._scopes.pop(topic, None)
        if scope is None:
            return False
        scope.cancel()
        await self._host.unsubscribe(topic)
        for send in self._subscribers.pop(topic, []):
            send.close()
        if self._on_membership is not None:
            self._on_membership(topic, False)
        return True

    def subscribe(self, topic: str) -> Subscription:
        check_topic(topic)
        return Subscription(self, topic)

    async def _add_subscriber(self, topic: str, send: trio.MemorySendChannel[TopicMessage]) -> None:
        await self.join(topic)
        self._subscribers.setdefault(topic, []).append(send)

    def _remove_subscriber(self, topic: str, send: trio.MemorySendChannel[TopicMessage]) -> None:
        subs = self._subscribers.get(topic, [])
        if send in subs:
            subs.remove(send)

    # -- validation (runs inside libp2p, must not raise or block) ---------------------
    def _drop(self, topic: str, reason: str, peer: str, detail: str = "") -> None:
        self.counters.drop(topic, reason, peer, detail)
        if self._on_drop is not None:
            self._on_drop(topic, reason, peer)

    def _validator(self, topic: str) -> Callable[[str, str, bytes], bool]:
        def validate(sender: str, forwarder: str, data: bytes) -> bool:
            allowed = self.peer_filter
            if allowed is not None and not allowed(sender):
                self._drop(topic, "non_member", sender)
                return False
            if not self._guard.allow(sender):
                self._drop(topic, "rate_limited", sender)
                return False
            try:
                if topic == ANNOUNCE_TOPIC:
                    parse_announcement(data)
                else:
                    decode_envelope(
                        data,
                        inline_limit=self._inline_limit,
                        max_reference_size=self._max_reference_size,
                    )
            except WireFormatError as exc:
                self._drop(topic, exc.reason, sender, str(exc))
                return False
            return True

        return validate

    # -- delivery ------------------------------------------------------------------------
    async def _pump(
        self, topic: str, raw: AsyncIterator[RawMessage], scope: trio.CancelScope
    ) -> None:
        with scope:
            async for msg in raw:
                if msg.sender == self._host.peer_id:
                    continue  # our own publish, echoed by pubsub
                try:
                    await self._dispatch(topic, msg)
                except WireFormatError as exc:  # validators ran already; belt and braces
                    self._drop(topic, exc.reason, msg.sender, str(exc))
                except Exception:  # a bug must not let one message stop the topic
                    log.exception("handling a %s message from %s failed", topic, msg.sender)
                    self._drop(topic, "internal_error", msg.sender)

    async def _dispatch(self, topic: str, msg: RawMessage) -> None:
        if topic == ANNOUNCE_TOPIC:
            ann = parse_announcement(msg.data)
            self._deliver(topic, TopicMessage(msg.sender, msg.data))
            self._enqueue(self._announcements, _Work(topic, msg.sender, announcement=ann))
            return
        env = decode_envelope(
            msg.data,
            inline_limit=self._inline_limit,
            max_reference_size=self._max_reference_size,
        )
        if env.kind is EnvelopeKind.INLINE:
            self._deliver(topic, TopicMessage(msg.sender, env.data))
        else:
            assert env.cid is not None
            pending = self._pending_references.get(msg.sender, 0)
            if pending >= self._references_per_sender:
                self._drop(topic, "reference_cap", msg.sender, env.cid)
                return
            work = _Work(topic, msg.sender, cid=env.cid, size=env.size)
            if self._enqueue(self._references, work):
                self._pending_references[msg.sender] = pending + 1

    def _enqueue(self, queue: trio.MemorySendChannel[_Work], work: _Work) -> bool:
        try:
            queue.send_nowait(work)
        except trio.WouldBlock:
            self._drop(work.topic, "backlog_full", work.sender)
            return False
        return True

    def pending_references(self, sender: str) -> int:
        """References of *sender* queued or being fetched now."""
        return self._pending_references.get(sender, 0)

    async def _announce_safely(self, work: _Work) -> None:
        sender, ann = work.sender, work.announcement
        assert ann is not None
        try:
            await self._on_announcement(sender, ann)
        except FedstoreError as exc:
            log.warning(
                "could not record announcement of round %d from %s: %s", ann.round, sender, exc
            )
        except Exception:
            log.exception("handling announcement of round %d from %s failed", ann.round, sender)

    async def _resolve(self, work: _Work) -> None:
        try:
            await self._resolve_in_time(work)
        finally:
            left = self._pending_references.get(work.sender, 1) - 1
            if left > 0:
                self._pending_references[work.sender] = left
            else:
                self._pending_references.pop(work.sender, None)

    async def _resolve_in_time(self, work: _Work) -> None:
        topic, sender, cid, size = work.topic, work.sender, work.cid, work.size
        deadline = self._reference_timeout + size / self._reference_min_rate
        try:
            with trio.move_on_after(deadline) as scope:
                data = await self._fetch(cid, size)
            if scope.cancelled_caught:
                self._drop(topic, "fetch_timeout", sender, f"{cid}: none in {deadline:.0f} s")
                return
        except FedstoreError as exc:
            self._drop(topic, "fetch_failed", sender, f"{cid}: {exc}")
            return
        except Exception as exc:  # a backend bug must not take the node down
            log.exception("fetching %s for %s failed", cid, topic)
            self._drop(topic, "fetch_failed", sender, f"{cid}: {type(exc).__name__}")
            return
        if len(data) != size:
            self._drop(topic, "size_mismatch", sender, f"{cid}: {len(data)} != {size}")
            return
        self._deliver(topic, TopicMessage(sender, data))

    def _deliver(self, topic: str, message: TopicMessage) -> None:
        if self._on_message is not None:
            self._on_message(topic, message.sender, message.data)
        for send in list(self._subscribers.get(topic, [])):
            try:
                send.send_nowait(message)
            except trio.WouldBlock:
                self._drop(topic, "subscriber_overflow", message.sender)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._remove_subscriber(topic, send)


def check_topic(topic: str) -> None:
    """Raise ``ValueError`` unless *topic* is 1-128 printable characters without spaces."""
    if not topic or len(topic) > 128 or any(c.isspace() for c in topic) or not topic.isprintable():
        raise ValueError(f"invalid topic name {topic[:40]!r}: 1-128 printable, no spaces")
