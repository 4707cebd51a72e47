"""Collecting a round's updates from the training topic (the aggregator's inbox side).

:class:`Collector` admits one message at a time into a round's
:class:`~fedstore.federation.validation.RoundValidator`; :func:`collect_round`
announces the open round and feeds the collector until the quorum or the
deadline. :func:`fedstore.federation.aggregator.lead_rounds` runs them once
per round attempt.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Mapping

import numpy as np
import trio

from fedstore.errors import FedstoreError
from fedstore.federation.events import EventSink, UpdateAccepted
from fedstore.federation.messages import (
    MAX_HEADER_BYTES,
    MessageError,
    RoundOpen,
    UpdateMessage,
    decode_message,
    decode_tensors,
)
from fedstore.federation.settings import AggregatorSettings
from fedstore.federation.strategies.base import Update
from fedstore.federation.transport import Arrays, FederationPeer, Inbox
from fedstore.federation.update_codec import CodecError, NDArray, decode_update
from fedstore.federation.validation import RejectReason, RoundValidator

__all__ = ["MAX_CONCURRENT_UPDATES", "Collector", "collect_round"]

log = logging.getLogger(__name__)

#: Messages :func:`collect_round` handles at once (each may hold a fetched and a decoded update)
MAX_CONCURRENT_UPDATES = 3


class Collector:
    """Admits the UPDATE messages of one round attempt into its validator.

    :meth:`handle` takes one message off the training topic: it parses it,
    drops re-sent copies, runs the header checks before any work, fetches an
    update sent by CID (size-capped, verified, bounded in time), decodes and
    scans the tensors in a worker thread, and offers the update to the
    :class:`~fedstore.federation.validation.RoundValidator`. An update in a
    lossy encoding (:mod:`~fedstore.federation.update_codec`) must use the
    federation's encoding and is decoded against ``base``, the round's base
    model, into full arrays; float32 updates are always accepted.
    """

    def __init__(
        self,
        peer: FederationPeer,
        validator: RoundValidator,
        base_cid: str,
        settings: AggregatorSettings,
        on_event: EventSink,
        *,
        base: Mapping[str, NDArray] | None = None,
    ) -> None:
        self.peer = peer
        self.base = base
        self.v = validator
        self.base_cid = base_cid
        self.settings = settings
        self.on_event = on_event
        self.digests: dict[str, bytes] = {}
        #: digests of messages being handled now (a re-sent copy is not fetched twice)
        self._inflight: set[bytes] = set()

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
        if self.digests.get(msg.sender) == digest or digest in self._inflight:
            log.debug("ignoring re-sent update from %s for round %d", msg.sender, msg.round)
            return
        self._inflight.add(digest)
        try:
            await self._admit(msg, sender, digest)
        finally:
            self._inflight.discard(digest)

    async def _admit(self, msg: UpdateMessage, sender: str, digest: bytes) -> None:
        v = self.v
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
        if msg.encoding is not None and not self._encoding_ok(msg):
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
        base = self.base

        def decode_and_check() -> tuple[Arrays, tuple[RejectReason, str] | None]:
            if msg.encoding is None:
                arrays = decode_tensors(payload, max_decoded_size=max_decoded)
            elif base is None:  # _encoding_ok refused it already; never decode without a base
                raise CodecError("no base model to decode an encoded update against")
            else:
                arrays = decode_update(payload, base, self.settings.update_encoding)
            return arrays, v.spec.problem(arrays)

        try:  # decoding and the NaN/Inf scan read the whole update: off the event loop
            arrays, problem = await trio.to_thread.run_sync(decode_and_check)
        except CodecError as exc:
            v.reject(_codec_reason(exc.reason), msg.sender, msg.round, str(exc))
            return
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

    def _encoding_ok(self, msg: UpdateMessage) -> bool:
        """A lossy update must use this federation's encoding; reject it otherwise."""
        expected = self.settings.update_encoding
        if msg.encoding != expected.text or not expected.lossy or self.base is None:
            uses = expected.text if expected.lossy else "float32 updates only"
            self.v.reject(
                RejectReason.BAD_ENCODING,
                msg.sender,
                msg.round,
                f"update encoded as {msg.encoding}; this federation uses {uses}",
            )
            return False
        return True

    def _max_decoded(self) -> int:
        total = 0
        for spec in self.v.spec.tensors.values():
            total += math.prod(spec.shape) * int(np.dtype(spec.dtype).itemsize)
        return total + 64 * 1024 + MAX_HEADER_BYTES


def _codec_reason(reason: str) -> RejectReason:
    try:
        return RejectReason(reason)
    except ValueError:
        return RejectReason.BAD_ENCODING


async def collect_round(
    peer: FederationPeer,
    inbox: Inbox,
    collector: Collector,
    announce: Callable[[float], RoundOpen],
    quorum: int,
    deadline: float,
    interval: float,
    *,
    concurrency: int = MAX_CONCURRENT_UPDATES,
) -> None:
    """Announce the round and admit updates until ``quorum`` or ``deadline`` (trio time).

    Up to ``concurrency`` messages are handled at once, so an update sent by
    CID is fetched while another is still being fetched or decoded (trainers
    finish at different times); the inbox is not read further while that
    many are in hand.
    """
    v = collector.v
    limiter = trio.CapacityLimiter(max(1, concurrency))

    async def announcer() -> None:
        while True:
            msg = announce(max(0.0, deadline - trio.current_time()))
            await peer.publish(msg.encode())
            await trio.sleep(interval)

    with trio.move_on_at(deadline):
        async with trio.open_nursery() as nursery:

            async def admit(
                sender: str,
                data: bytes,
                task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
            ) -> None:
                async with limiter:
                    task_status.started()
                    await collector.handle(sender, data)
                if len(v.accepted) >= quorum:
                    nursery.cancel_scope.cancel()

            nursery.start_soon(announcer)
            while len(v.accepted) < quorum:
                sender, data = await inbox.receive()
                if sender == peer.peer_id:
                    continue
                await nursery.start(admit, sender, data)
            nursery.cancel_scope.cancel()
