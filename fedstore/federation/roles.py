"""The round protocol: aggregator and trainer loops over a :class:`FederationPeer`.

Round ``r``, as the aggregator runs it:

1. It announces ``ROUND r`` (base model ``r-1`` by CID, quorum, seconds
   left, senders received so far) on the training topic, again every
   ``announce_interval`` seconds while the round is open.
2. Trainers that hear it load the base model by CID (from their store or
   fetched and verified through the backend chain), train locally, and
   publish an ``UPDATE`` (tensors inline, or by CID when too large).
3. The aggregator admits updates through
   :class:`~fedstore.federation.validation.RoundValidator` until the quorum
   is reached or the deadline passes. With at least ``min_updates`` it
   aggregates (deterministically), saves the new global checkpoint (local
   store, backend chain, announcement) and evaluates it; with fewer, the
   round is reported as failed and re-opened, up to ``max_attempts`` times,
   after which the federation ends with status ``failed``: it never hangs.
4. After the last round it announces ``DONE`` with the final CID for
   ``linger`` seconds; trainers make sure they hold that checkpoint and stop.

A trainer that was offline asks for the head when it starts (syncing it by
CID), and joins at the next ``ROUND``: whatever it missed, the base CID of
that round is all it needs. Lost messages cost little: a trainer whose id is
missing from a later ``ROUND`` announcement re-sends its update, and an
identical re-sent update is recognised and ignored by the aggregator.

Progress is reported through an ``on_event`` callback with the dataclasses
below (the demo prints them as JSON lines).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import trio

from fedstore.errors import FedstoreError
from fedstore.federation.aggregators import Update, get_aggregator
from fedstore.federation.messages import (
    DEFAULT_INLINE_LIMIT,
    MAX_HEADER_BYTES,
    MAX_METRICS,
    METRIC_NAME_RE,
    Done,
    MessageError,
    RoundOpen,
    UpdateMessage,
    decode_message,
    decode_tensors,
    encode_tensors,
)
from fedstore.federation.transport import Arrays, FederationPeer, Inbox
from fedstore.federation.validation import (
    ModelSpec,
    RejectionCounter,
    RejectReason,
    RoundValidator,
)

__all__ = [
    "AggregatorSettings",
    "Event",
    "FederationResult",
    "QuorumSchedule",
    "RoundClosed",
    "RoundFailed",
    "RoundOpened",
    "TrainerResult",
    "TrainerSettings",
    "TrainerSynced",
    "TrainerUpdated",
    "UpdateAccepted",
    "run_aggregator",
    "run_trainer",
]

log = logging.getLogger(__name__)

NDArray = npt.NDArray[np.generic]
TrainFn = Callable[[Arrays, int], tuple[Mapping[str, NDArray], int, Mapping[str, float]]]
EvaluateFn = Callable[[Arrays], Mapping[str, float]]


# -- events --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RoundOpened:
    round: int
    attempt: int
    base_cid: str
    quorum: int
    kind: str = "round_opened"


@dataclass(frozen=True, slots=True)
class UpdateAccepted:
    round: int
    sender: str
    num_samples: int
    by_cid: bool
    kind: str = "update_accepted"


@dataclass(frozen=True, slots=True)
class RoundClosed:
    round: int
    participants: tuple[str, ...]
    num_samples: int
    cid: str
    size: int
    bytes_stored: int
    metrics: Mapping[str, float]
    partial: bool
    rejected: Mapping[str, int]
    seconds: float
    kind: str = "round_closed"


@dataclass(frozen=True, slots=True)
class RoundFailed:
    round: int
    attempt: int
    received: int
    needed: int
    reason: str
    kind: str = "round_failed"


@dataclass(frozen=True, slots=True)
class TrainerSynced:
    round: int
    cid: str
    kind: str = "trainer_synced"


@dataclass(frozen=True, slots=True)
class TrainerUpdated:
    round: int
    num_samples: int
    metrics: Mapping[str, float]
    by_cid: bool
    size: int
    kind: str = "trainer_updated"


Event = RoundOpened | UpdateAccepted | RoundClosed | RoundFailed | TrainerSynced | TrainerUpdated
EventSink = Callable[[Event], None]


def event_dict(event: Event) -> dict[str, Any]:
    """A JSON-ready dict of an event."""
    d = asdict(event)
    for k, v in d.items():
        if isinstance(v, tuple):
            d[k] = list(v)
    return d


def _noop(_: Event) -> None:
    return None


# -- settings --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QuorumSchedule:
    """How many updates close round ``r``: ``default``, or from a round on, another count.

    Parsed from text such as ``"3"`` or ``"2,5:3"`` (2 updates, and 3 from
    round 5 on).
    """

    default: int
    changes: tuple[tuple[int, int], ...] = ()

    def __call__(self, round: int) -> int:
        q = self.default
        for start, count in self.changes:
            if round >= start:
                q = count
        return q

    @classmethod
    def parse(cls, text: str) -> QuorumSchedule:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        try:
            default = int(parts[0])
            changes = []
            for p in parts[1:]:
                start, count = p.split(":")
                changes.append((int(start), int(count)))
        except (IndexError, ValueError):
            raise ValueError(f"bad quorum {text!r}: expected N or N,ROUND:M (e.g. 2,5:3)") from None
        if default < 1 or any(s < 1 or c < 1 for s, c in changes):
            raise ValueError(f"bad quorum {text!r}: counts and rounds must be >= 1")
        return cls(default, tuple(sorted(changes)))


@dataclass(frozen=True, slots=True)
class AggregatorSettings:
    rounds: int
    strategy: str = "fedavg"
    quorum: QuorumSchedule = field(default_factory=lambda: QuorumSchedule(1))
    #: fewest updates a round may be aggregated with once the deadline passed
    min_updates: int = 1
    round_timeout: float = 30.0
    announce_interval: float = 0.5
    max_attempts: int = 3
    #: largest update accepted by CID (inline ones are bounded by the message size)
    max_update_bytes: int = 1 << 30
    linger: float = 1.5
    #: extra, deterministic metadata stored with every global checkpoint
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TrainerSettings:
    #: give up when no message from an aggregator arrives for this long
    idle_timeout: float = 60.0
    inline_limit: int = DEFAULT_INLINE_LIMIT
    #: only follow this aggregator (peer id); None follows the first one heard
    aggregator: str | None = None
    #: seconds after sending before a missing acknowledgement triggers a re-send
    resend_after: float = 1.5


@dataclass(frozen=True, slots=True)
class FederationResult:
    status: str  # "complete" | "failed"
    final_round: int
    final_cid: str
    history: tuple[RoundClosed, ...]
    rejections: Mapping[str, int]
    reason: str = ""


@dataclass(frozen=True, slots=True)
class TrainerResult:
    status: str  # "complete" | "failed"
    final_round: int
    final_cid: str
    rounds_trained: tuple[int, ...]
    reason: str = ""


# -- aggregator ------------------------------------------------------------------


def _checkpoint_metadata(
    strategy: str, round: int, base_cid: str, updates: list[Update], extra: Mapping[str, str]
) -> dict[str, str]:
    meta = dict(extra)
    meta.update(
        {
            "fedstore.aggregator": strategy,
            "fedstore.base_cid": base_cid,
            "fedstore.num_samples": str(sum(u.num_samples for u in updates)),
            "fedstore.participants": ",".join(sorted(u.sender for u in updates)),
            "fedstore.round": str(round),
        }
    )
    return meta


def aggregate_round(
    strategy: str, round: int, base_cid: str, updates: list[Update], extra: Mapping[str, str]
) -> tuple[dict[str, NDArray], dict[str, str], bytes]:
    """Aggregate and encode one round: (arrays, metadata, checkpoint bytes). Deterministic."""
    arrays = get_aggregator(strategy)(updates)
    meta = _checkpoint_metadata(strategy, round, base_cid, updates, extra)
    return arrays, meta, encode_tensors(arrays, meta)


class _Collector:
    """Admits UPDATE messages for one round attempt."""

    def __init__(
        self,
        peer: FederationPeer,
        validator: RoundValidator,
        base_cid: str,
        settings: AggregatorSettings,
        on_event: EventSink,
    ) -> None:
        self.peer = peer
        self.v = validator
        self.base_cid = base_cid
        self.settings = settings
        self.on_event = on_event
        self.digests: dict[str, bytes] = {}

    async def handle(self, sender: str, data: bytes) -> None:
        v = self.v
        try:
            msg = decode_message(data)
        except MessageError as exc:
            v.reject(RejectReason.MALFORMED, sender, v.round, str(exc))
            return
        if not isinstance(msg, UpdateMessage):
            if msg.aggregator != self.peer.peer_id:
                log.warning("ignoring %s from another aggregator %s", type(msg).__name__, sender)
            return
        digest = hashlib.sha256(data).digest()
        if self.digests.get(msg.sender) == digest:
            log.debug("ignoring re-sent update from %s for round %d", msg.sender, msg.round)
            return
        if (
            v.check_header(
                sender=msg.sender,
                round=msg.round,
                num_samples=msg.num_samples,
                transport_sender=sender,
            )
            is not None
        ):
            return
        if msg.base_cid is not None and msg.base_cid != self.base_cid:
            v.reject(
                RejectReason.UNKNOWN_ROUND,
                msg.sender,
                msg.round,
                f"trained from {msg.base_cid}, round base is {self.base_cid}",
            )
            return
        payload = msg.payload
        if msg.cid is not None:
            if msg.size > self.settings.max_update_bytes:
                v.reject(
                    RejectReason.FETCH_FAILED,
                    msg.sender,
                    msg.round,
                    f"update of {msg.size} bytes exceeds {self.settings.max_update_bytes}",
                )
                return
            try:
                with trio.fail_after(max(5.0, self.settings.round_timeout / 2)):
                    payload = await self.peer.get_blob(msg.cid, max_size=msg.size)
            except (FedstoreError, trio.TooSlowError) as exc:
                v.reject(RejectReason.FETCH_FAILED, msg.sender, msg.round, f"{msg.cid}: {exc}")
                return
        try:
            arrays = await trio.to_thread.run_sync(
                lambda: decode_tensors(payload, max_decoded_size=self._max_decoded())
            )
        except MessageError as exc:
            v.reject(RejectReason.MALFORMED, msg.sender, msg.round, str(exc))
            return
        update = Update(msg.sender, msg.num_samples, arrays, dict(msg.metrics))
        if v.offer(update, round=msg.round, transport_sender=sender):
            self.digests[msg.sender] = digest
            self.on_event(
                UpdateAccepted(msg.round, msg.sender, msg.num_samples, msg.cid is not None)
            )

    def _max_decoded(self) -> int:
        total = 0
        for spec in self.v.spec.tensors.values():
            total += math.prod(spec.shape) * int(np.dtype(spec.dtype).itemsize)
        return total + 64 * 1024 + MAX_HEADER_BYTES


def _announcement(
    me: str, rnd: int, attempt: int, base_cid: str, quorum: int, validator: RoundValidator
) -> Callable[[float], RoundOpen]:
    """The ROUND message of an open round, given the seconds left (senders read live)."""

    def announce(left: float) -> RoundOpen:
        return RoundOpen(
            round=rnd,
            base_round=rnd - 1,
            base_cid=base_cid,
            aggregator=me,
            quorum=quorum,
            deadline=left,
            attempt=attempt,
            received=tuple(validator.senders),
        )

    return announce


async def _collect_round(
    peer: FederationPeer,
    inbox: Inbox,
    collector: _Collector,
    announce: Callable[[float], RoundOpen],
    quorum: int,
    deadline: float,
    interval: float,
) -> None:
    """Announce the round and admit updates until ``quorum`` or ``deadline`` (trio time)."""
    v = collector.v

    async def announcer() -> None:
        while True:
            msg = announce(max(0.0, deadline - trio.current_time()))
            await peer.publish(msg.encode())
            await trio.sleep(interval)

    with trio.move_on_at(deadline):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(announcer)
            while len(v.accepted) < quorum:
                sender, data = await inbox.receive()
                if sender == peer.peer_id:
                    continue
                await collector.handle(sender, data)
            nursery.cancel_scope.cancel()


async def run_aggregator(
    peer: FederationPeer,
    initial: Mapping[str, NDArray],
    settings: AggregatorSettings,
    *,
    evaluate: EvaluateFn | None = None,
    on_event: EventSink = _noop,
) -> FederationResult:
    """Run the federation's rounds as aggregator; see the module docstring for the protocol.

    If the peer already knows a head (a restarted aggregator, or a network
    that ran before), the federation resumes from it: the head's arrays are
    loaded by CID and the next round is ``head + 1``. Otherwise ``initial`` is
    saved as round 0.
    """
    get_aggregator(settings.strategy)  # fail fast on an unknown name
    spec = ModelSpec.of(initial)
    totals = RejectionCounter()
    history: list[RoundClosed] = []
    bytes_stored = 0
    async with peer.messages() as inbox:
        head = await peer.head()
        if head is None:
            rec = await peer.save_global(0, initial, {**settings.metadata, "fedstore.round": "0"})
            base_round, base_cid = 0, rec.cid
            bytes_stored += rec.size
        else:
            base_round, base_cid = head
            arrays = await peer.load_global(base_round, base_cid)
            if ModelSpec.of(arrays) != spec:
                raise FedstoreError(
                    f"the network's head (round {base_round}, {base_cid}) is not this model; "
                    "start with an empty data directory or the same model"
                )
            log.info("resuming from round %d (%s)", base_round, base_cid)
        rnd = base_round + 1
        while rnd <= settings.rounds:
            quorum = settings.quorum(rnd)
            closed: RoundClosed | None = None
            for attempt in range(1, settings.max_attempts + 1):
                started = trio.current_time()
                validator = RoundValidator(spec, rnd, totals=totals)
                collector = _Collector(peer, validator, base_cid, settings, on_event)
                on_event(RoundOpened(rnd, attempt, base_cid, quorum))

                await _collect_round(
                    peer,
                    inbox,
                    collector,
                    _announcement(peer.peer_id, rnd, attempt, base_cid, quorum, validator),
                    quorum,
                    started + settings.round_timeout,
                    settings.announce_interval,
                )
                got = len(validator.accepted)
                if got < max(1, min(settings.min_updates, quorum)):
                    on_event(
                        RoundFailed(
                            rnd,
                            attempt,
                            got,
                            settings.min_updates,
                            f"{got} update(s) by the {settings.round_timeout:g}s deadline, "
                            f"need at least {settings.min_updates}",
                        )
                    )
                    continue
                updates = [validator.accepted[s] for s in validator.senders]
                arrays, meta, _ = await trio.to_thread.run_sync(
                    aggregate_round, settings.strategy, rnd, base_cid, updates, settings.metadata
                )
                rec = await peer.save_global(rnd, arrays, meta)
                bytes_stored += rec.size
                metrics = dict(await trio.to_thread.run_sync(evaluate, arrays)) if evaluate else {}
                closed = RoundClosed(
                    round=rnd,
                    participants=tuple(validator.senders),
                    num_samples=sum(u.num_samples for u in updates),
                    cid=rec.cid,
                    size=rec.size,
                    bytes_stored=bytes_stored,
                    metrics=metrics,
                    partial=got < quorum,
                    rejected=dict(validator.rejections),
                    seconds=round(trio.current_time() - started, 3),
                )
                on_event(closed)
                break
            if closed is None:
                reason = (
                    f"round {rnd} failed {settings.max_attempts} time(s): too few updates "
                    f"(need {settings.min_updates}); the last global model is round "
                    f"{rnd - 1}, {base_cid}"
                )
                await _announce_done(peer, rnd - 1, base_cid, "failed", reason, settings)
                return FederationResult(
                    "failed", rnd - 1, base_cid, tuple(history), dict(totals), reason
                )
            history.append(closed)
            base_round, base_cid = rnd, closed.cid
            rnd += 1
        await _announce_done(peer, base_round, base_cid, "complete", "", settings)
    return FederationResult("complete", base_round, base_cid, tuple(history), dict(totals))


async def _announce_done(
    peer: FederationPeer,
    round: int,
    cid: str,
    status: str,
    reason: str,
    settings: AggregatorSettings,
) -> None:
    msg = Done(round, cid, peer.peer_id, status, reason[:500]).encode()
    end = trio.current_time() + settings.linger
    while True:
        await peer.publish(msg)
        if trio.current_time() + settings.announce_interval > end:
            break
        await trio.sleep(settings.announce_interval)


# -- trainer ---------------------------------------------------------------------


async def run_trainer(
    peer: FederationPeer,
    train: TrainFn,
    settings: TrainerSettings | None = None,
    *,
    on_event: EventSink = _noop,
) -> TrainerResult:
    """Take part in rounds until the aggregator announces DONE; see the module docstring.

    ``train(arrays, round) -> (arrays, num_samples, metrics)`` runs in a
    worker thread. Returns when DONE arrives (after making sure the final
    checkpoint is held locally), or with status ``failed`` after
    ``idle_timeout`` seconds without any message from the aggregator.
    """
    settings = settings or TrainerSettings()
    me = peer.peer_id
    aggregator = settings.aggregator
    trained: list[int] = []
    current: tuple[int, str] | None = None
    arrays: Arrays | None = None
    last: tuple[int, bytes, float, int] | None = None  # round, message, sent at, attempt
    async with peer.messages() as inbox:
        head = await peer.head()
        if head is not None:
            arrays = await peer.load_global(*head)
            current = head
            on_event(TrainerSynced(*head))
        while True:
            with trio.move_on_after(settings.idle_timeout) as idle:
                sender, data = await inbox.receive()
            if idle.cancelled_caught:
                reason = f"no message from an aggregator for {settings.idle_timeout:g}s"
                return TrainerResult(
                    "failed",
                    current[0] if current else -1,
                    current[1] if current else "",
                    tuple(trained),
                    reason,
                )
            if sender == me:
                continue
            try:
                msg = decode_message(data)
            except MessageError as exc:
                log.warning("dropping malformed message from %s: %s", sender, exc)
                continue
            if isinstance(msg, UpdateMessage):
                continue
            if msg.aggregator != sender:
                log.warning(
                    "dropping %s signed by %s on behalf of %s",
                    type(msg).__name__,
                    sender,
                    msg.aggregator,
                )
                continue
            if aggregator is None:
                aggregator = sender
            elif sender != aggregator:
                continue
            if isinstance(msg, Done):
                if msg.status == "complete" and (current is None or current[1] != msg.cid):
                    arrays = await peer.load_global(msg.round, msg.cid)
                    current = (msg.round, msg.cid)
                    on_event(TrainerSynced(msg.round, msg.cid))
                return TrainerResult(msg.status, msg.round, msg.cid, tuple(trained), msg.reason)
            # RoundOpen
            if last is not None and msg.round == last[0]:
                if me not in msg.received and (
                    msg.attempt != last[3] or trio.current_time() - last[2] > settings.resend_after
                ):
                    log.info("round %d: update not acknowledged, re-sending", msg.round)
                    await peer.publish(last[1])
                    last = (last[0], last[1], trio.current_time(), msg.attempt)
                continue
            if last is not None and msg.round < last[0]:
                continue
            if current is None or current[1] != msg.base_cid or arrays is None:
                arrays = await peer.load_global(msg.base_round, msg.base_cid)
                current = (msg.base_round, msg.base_cid)
                on_event(TrainerSynced(msg.base_round, msg.base_cid))
            base = arrays
            new, num_samples, metrics = await trio.to_thread.run_sync(train, base, msg.round)
            out = await _make_update(peer, msg, new, int(num_samples), metrics, settings)
            wire = out.encode()
            await peer.publish(wire)
            last = (msg.round, wire, trio.current_time(), msg.attempt)
            trained.append(msg.round)
            on_event(
                TrainerUpdated(
                    msg.round,
                    int(num_samples),
                    {k: float(v) for k, v in metrics.items()},
                    out.cid is not None,
                    len(out.payload) or out.size,
                )
            )


async def _make_update(
    peer: FederationPeer,
    rnd: RoundOpen,
    arrays: Mapping[str, NDArray],
    num_samples: int,
    metrics: Mapping[str, float],
    settings: TrainerSettings,
) -> UpdateMessage:
    clean: dict[str, float] = {}
    for k, v in metrics.items():
        if len(clean) < MAX_METRICS and METRIC_NAME_RE.fullmatch(k) and math.isfinite(float(v)):
            clean[k] = float(v)
        else:
            log.debug("metric %r not sent (bad name, not finite, or too many)", k)
    payload = await trio.to_thread.run_sync(encode_tensors, dict(arrays), None)
    if len(payload) + MAX_HEADER_BYTES <= settings.inline_limit:
        return UpdateMessage(
            rnd.round, peer.peer_id, num_samples, payload, base_cid=rnd.base_cid, metrics=clean
        )
    cid = await peer.put_blob(payload)
    return UpdateMessage(
        rnd.round,
        peer.peer_id,
        num_samples,
        b"",
        cid,
        len(payload),
        base_cid=rnd.base_cid,
        metrics=clean,
    )
