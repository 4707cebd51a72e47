"""The aggregator's side of the round protocol (see :mod:`fedstore.federation.roles`).

:func:`run_aggregator` opens each round, admits updates through
:class:`~fedstore.federation.validation.RoundValidator` until the quorum or
the deadline, aggregates deterministically (:func:`aggregate_round`), saves
the new global checkpoint and announces ``DONE`` after the last round.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Mapping

import numpy as np
import numpy.typing as npt
import trio

from fedstore.errors import FedstoreError
from fedstore.federation.aggregators import Update, get_aggregator
from fedstore.federation.events import (
    EventSink,
    FederationResult,
    RoundClosed,
    RoundFailed,
    RoundOpened,
    UpdateAccepted,
    noop_sink,
)
from fedstore.federation.messages import (
    MAX_HEADER_BYTES,
    Done,
    MessageError,
    RoundOpen,
    UpdateMessage,
    decode_message,
    decode_tensors,
    encode_tensors,
)
from fedstore.federation.settings import AggregatorSettings
from fedstore.federation.transport import Arrays, FederationPeer, Inbox
from fedstore.federation.validation import (
    ModelSpec,
    RejectionCounter,
    RejectReason,
    RoundValidator,
)

__all__ = ["EvaluateFn", "aggregate_round", "run_aggregator"]

log = logging.getLogger(__name__)

NDArray = npt.NDArray[np.generic]
EvaluateFn = Callable[[Arrays], Mapping[str, float]]


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
        max_decoded = self._max_decoded()

        def decode_and_check() -> tuple[Arrays, tuple[RejectReason, str] | None]:
            arrays = decode_tensors(payload, max_decoded_size=max_decoded)
            return arrays, v.spec.problem(arrays)

        try:  # decoding and the NaN/Inf scan read the whole update: off the event loop
            arrays, problem = await trio.to_thread.run_sync(decode_and_check)
        except MessageError as exc:
            v.reject(RejectReason.MALFORMED, msg.sender, msg.round, str(exc))
            return
        if problem is not None:
            v.reject(problem[0], msg.sender, msg.round, problem[1])
            return
        update = Update(msg.sender, msg.num_samples, arrays, dict(msg.metrics))
        if v.offer(update, round=msg.round, transport_sender=sender, tensors_checked=True):
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
    on_event: EventSink = noop_sink,
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
