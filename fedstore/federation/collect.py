"""Collecting a round's updates from the training topic (the aggregator's inbox side).

:class:`Collector` admits UPDATE messages into a round's
:class:`~fedstore.federation.validation.RoundValidator`. :meth:`Collector.handle`
never blocks the inbox: it runs the header checks at once (nothing is fetched
or decoded for an update that fails them) and hands the rest - fetching an
update sent by CID, decoding and scanning the tensors - to a task of its own,
so no sender can hold up the admission of another:

* at most one update per sender is in work at a time; further messages from
  a sender whose update is still being fetched or decoded are dropped
  (``busy_sender``), so one peer cannot queue up work;
* fetches run concurrently (at most :data:`MAX_FETCHES` at once), each with a
  deadline that starts when its fetch starts, not while it waits for a slot;
* at most :data:`MAX_PENDING` updates are in work at all (``busy_sender``
  beyond that).

An update in a lossy encoding (:mod:`~fedstore.federation.update_codec`)
must use the federation's ``encoding`` and is decoded against ``base``, the
round's base model, into full arrays; float32 updates are always accepted.

In a federation with a manifest (``federated``), an update must also come
from a member with the trainer role, carry the federation's manifest CID and
the run's session, name its payload by CID (checked against the bytes) and
carry the sender's valid signature over its claim; the collector then keeps,
per admitted sender, the :class:`~fedstore.federation.global_model.UpdateRef`
the global checkpoint will list and the payload bytes (stored with the
checkpoint so any member can fetch them to verify it).

:func:`collect_round` announces the open round and feeds the collector until
the quorum or the deadline (open federations,
:func:`fedstore.federation.aggregator.lead_rounds`).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import trio

from fedstore.errors import FedstoreError
from fedstore.federation.events import EventSink, UpdateAccepted
from fedstore.federation.global_model import UpdateRef
from fedstore.federation.membership import Membership
from fedstore.federation.messages import (
    MAX_HEADER_BYTES,
    MessageError,
    RoundOpen,
    UpdateMessage,
    decode_message,
    decode_tensors,
)
from fedstore.federation.signing import UPDATE_DOMAIN, decode_signature, verify_signature
from fedstore.federation.strategies.base import Update
from fedstore.federation.transport import Arrays, FederationPeer, Inbox
from fedstore.federation.update_codec import CodecError, NDArray, decode_update
from fedstore.federation.update_encoding import FLOAT32, UpdateEncoding
from fedstore.federation.validation import RejectReason, RoundValidator
from fedstore.p2p.guard import DropCounters

__all__ = [
    "MAX_FETCHES",
    "MAX_PENDING",
    "Admission",
    "Collector",
    "FederatedAdmission",
    "collect_round",
]

log = logging.getLogger(__name__)

#: updates by CID fetched at once, per collector
MAX_FETCHES = 8
#: updates in work (fetching or decoding) at once, per collector
MAX_PENDING = 64
#: topic name used for counting dropped control messages
_TOPIC = "fed-learn"


@dataclass(frozen=True, slots=True)
class Admission:
    """Limits of admission: largest update by CID, and how long one fetch may take."""

    max_update_bytes: int = 1 << 30
    fetch_timeout: float = 15.0


@dataclass(frozen=True, slots=True)
class FederatedAdmission:
    """What a federated update must match: the manifest's membership and the run's session."""

    membership: Membership
    session: str

    @property
    def manifest_cid(self) -> str:
        return self.membership.cid

    def can_train(self, peer: str) -> bool:
        return self.membership.can(peer, "trainer")


class Collector:
    """Admits the UPDATE messages of one round attempt into its validator (module docstring)."""

    def __init__(
        self,
        peer: FederationPeer,
        validator: RoundValidator,
        base_cid: str,
        admission: Admission,
        on_event: EventSink,
        nursery: trio.Nursery,
        *,
        federated: FederatedAdmission | None = None,
        drops: DropCounters | None = None,
        base: Mapping[str, NDArray] | None = None,
        encoding: UpdateEncoding = FLOAT32,
    ) -> None:
        self.peer = peer
        self.base = base
        self.encoding = encoding
        self.v = validator
        self.base_cid = base_cid
        self.admission = admission
        self.on_event = on_event
        self.federated = federated
        self.drops = drops if drops is not None else DropCounters()
        self._nursery = nursery
        self.digests: dict[str, bytes] = {}
        self.busy: set[str] = set()
        #: federated only: how each admitted update is listed, and its payload
        self.refs: dict[str, UpdateRef] = {}
        self.payloads: dict[str, bytes] = {}
        self._fetch_limiter = trio.CapacityLimiter(MAX_FETCHES)
        #: set whenever an update is admitted (waiters re-check their condition)
        self.changed = trio.Event()
        #: updates being decoded now, and whether the round attempt has closed
        self._decoding = 0
        self._decoded = trio.Event()
        self.closed = False

    # -- entry points --------------------------------------------------------------------
    def handle(self, sender: str, data: bytes) -> None:
        """Take one message off the topic: check it now, admit it in a task of its own."""
        v = self.v
        try:
            msg = decode_message(data)
        except MessageError as exc:
            v.reject(RejectReason.MALFORMED, sender, v.round, str(exc))
            return
        if not isinstance(msg, UpdateMessage):
            if getattr(msg, "aggregator", None) != self.peer.peer_id:
                # counted; logged once per sender and period, not once per message
                self.drops.drop(_TOPIC, "foreign_control", sender, type(msg).__name__)
            return
        self.offer_message(sender, msg, data)

    def offer_message(self, sender: str, msg: UpdateMessage, data: bytes) -> None:
        """Admit a decoded update (the header checks now, the rest in a task)."""
        v = self.v
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
        if sender in self.busy:  # its previous update is still being fetched or decoded
            self.drops.drop(_TOPIC, "busy_sender", sender, f"round {msg.round}")
            v.count(RejectReason.BUSY_SENDER)
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
        if self.federated is not None and not self._federated_header(msg):
            return
        if msg.cid is not None and msg.size > self.admission.max_update_bytes:
            v.reject(
                RejectReason.FETCH_FAILED,
                msg.sender,
                msg.round,
                f"update of {msg.size} bytes exceeds {self.admission.max_update_bytes}",
            )
            return
        if len(self.busy) >= MAX_PENDING:
            self.drops.drop(_TOPIC, "busy_sender", sender, "too many updates in work")
            v.count(RejectReason.BUSY_SENDER)
            return
        self.busy.add(sender)
        self._nursery.start_soon(self._admit, sender, msg, digest)

    # -- checks ----------------------------------------------------------------------------
    def _federated_header(self, msg: UpdateMessage) -> bool:
        fed = self.federated
        assert fed is not None
        v = self.v
        if msg.federation != fed.manifest_cid or msg.session != fed.session:
            v.reject(
                RejectReason.WRONG_RUN,
                msg.sender,
                msg.round,
                f"federation {msg.federation}, session {msg.session}",
            )
            return False
        if not fed.can_train(msg.sender):
            v.reject(RejectReason.NOT_TRAINER, msg.sender, msg.round, "not a trainer member")
            return False
        sig = decode_signature(msg.sig)
        if sig is None or not verify_signature(msg.sender, UPDATE_DOMAIN, msg.claim(), sig):
            v.reject(RejectReason.BAD_SIGNATURE, msg.sender, msg.round, "signature invalid")
            return False
        return True

    async def _admit(self, sender: str, msg: UpdateMessage, digest: bytes) -> None:
        v = self.v
        try:
            payload = msg.payload
            if msg.cid is not None:
                fetched = await self._fetch(msg)
                if fetched is None:
                    return
                payload = fetched
            max_decoded = self._max_decoded()
            want_cid = msg.payload_cid if self.federated is not None else None
            base, encoding = self.base, self.encoding

            def decode_and_check() -> tuple[Arrays, tuple[RejectReason, str] | None]:
                if want_cid is not None and msg.cid is None:
                    from fedstore.ipld.cid import cid_of_bytes

                    if cid_of_bytes(payload, 1) != want_cid:
                        return {}, (RejectReason.MALFORMED, f"payload is not {want_cid}")
                if msg.encoding is None:
                    arrays = decode_tensors(payload, max_decoded_size=max_decoded)
                elif base is None:  # _encoding_ok refused it already; never decode without a base
                    raise CodecError("no base model to decode an encoded update against")
                else:
                    arrays = decode_update(payload, base, encoding)
                return arrays, v.spec.problem(arrays)

            self._decoding += 1
            try:  # decoding and the NaN/Inf scan read the whole update: off the event loop
                arrays, problem = await trio.to_thread.run_sync(decode_and_check)
            except CodecError as exc:
                v.reject(_codec_reason(exc.reason), msg.sender, msg.round, str(exc))
                return
            except MessageError as exc:
                v.reject(RejectReason.MALFORMED, msg.sender, msg.round, str(exc))
                return
            finally:
                self._decoding -= 1
                self._decoded.set()
                self._decoded = trio.Event()
            if problem is not None:
                v.reject(problem[0], msg.sender, msg.round, problem[1])
                return
            if self.closed:  # decoded after the attempt closed: too late to take part
                return
            update = Update(msg.sender, msg.num_samples, arrays, dict(msg.metrics))
            if v.offer(update, round=msg.round, transport_sender=sender, tensors_checked=True):
                self.digests[msg.sender] = digest
                if self.federated is not None:
                    assert msg.payload_cid is not None and msg.sig is not None
                    self.refs[msg.sender] = UpdateRef(
                        msg.sender, msg.payload_cid, msg.num_samples, msg.sig, msg.encoding
                    )
                    self.payloads[msg.sender] = payload
                self.on_event(
                    UpdateAccepted(msg.round, msg.sender, msg.num_samples, msg.cid is not None)
                )
                self.changed.set()
                self.changed = trio.Event()
        finally:
            self.busy.discard(sender)

    async def _fetch(self, msg: UpdateMessage) -> bytes | None:
        assert msg.cid is not None
        async with self._fetch_limiter:
            try:  # the deadline starts with the fetch, not while waiting for a slot
                with trio.fail_after(self.admission.fetch_timeout):
                    return await self.peer.get_blob(msg.cid, max_size=msg.size)
            except (FedstoreError, trio.TooSlowError) as exc:
                detail = "timed out" if isinstance(exc, trio.TooSlowError) else str(exc)
                self.v.reject(
                    RejectReason.FETCH_FAILED, msg.sender, msg.round, f"{msg.cid}: {detail}"
                )
                return None

    async def settle(self, timeout: float = 2.0) -> None:
        """Close the attempt: admit nothing more, let updates being decoded be judged.

        Updates still being fetched are left to be cancelled; ones being
        decoded get up to ``timeout`` seconds, so their rejections are counted
        with the round they were sent for.
        """
        self.closed = True
        with trio.move_on_after(timeout):
            while self._decoding:
                await self._decoded.wait()

    def _encoding_ok(self, msg: UpdateMessage) -> bool:
        """A lossy update must use this federation's encoding; reject it otherwise."""
        expected = self.encoding
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
) -> None:
    """Announce the round and admit updates until ``quorum`` or ``deadline`` (trio time).

    The collector's tasks must run in a nursery that outlives this call (they
    are cancelled with it by the caller).
    """
    v = collector.v

    async def announcer() -> None:
        while True:
            msg = announce(max(0.0, deadline - trio.current_time()))
            await peer.publish(msg.encode())
            await trio.sleep(interval)

    async def reader(done: trio.CancelScope) -> None:
        while True:
            sender, data = await inbox.receive()
            if sender != peer.peer_id:
                collector.handle(sender, data)

    with trio.move_on_at(deadline):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(announcer)
            nursery.start_soon(reader, nursery.cancel_scope)
            while len(v.accepted) < quorum:
                await collector.changed.wait()
            nursery.cancel_scope.cancel()
