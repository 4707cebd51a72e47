"""Verified aggregates: recompute a round's global model from its signed updates.

A member never adopts a global model on an aggregator's word. Given the
announced CID of round ``r`` and the verified model of round ``r - 1`` it
builds on, :meth:`Verifier.verify` fetches the checkpoint (bytes checked
against the CID) and

1. checks what its metadata binds it to: this federation (manifest CID),
   this run (session), round ``r``, the base model, the manifest's strategy;
2. checks every update it lists (``fedstore.updates``): the sender is a
   member with the trainer role, listed once, and its Ed25519 signature over
   the update claim (federation, session, round, base, sender, samples,
   payload CID) is valid; there are at least ``quorum`` of them;
3. fetches each update's tensors by payload CID (verified; payloads heard on
   the topic come from the :class:`UpdatePool` instead) and admits them with
   the same checks the aggregator applies (names, shapes, dtypes, finite);
4. aggregates them again with the same deterministic strategy and the state
   stored with the base model
   (:func:`~fedstore.federation.global_model.aggregate_round`), encodes the
   result with the same metadata and compares the bytes with the announced
   checkpoint's.

Any difference is a :class:`~fedstore.errors.VerificationError` carrying the
announced and the recomputed CID; the model is never stored as a head. The
same bytes mean the same CID, whoever aggregated: a standby aggregator that
takes over a round computes the very checkpoint the first one would have.

With ``full=False`` (``verify = off``) only step 1 runs: the member still
refuses models from another federation, run or round, but trusts the
arithmetic. :meth:`Verifier.verify_round_zero` checks a run's starting point
(binding, and the manifest's ``initial`` pin if it has one);
:meth:`Verifier.verify_chain` catches up over several rounds at once (a
restarted or late member walks back from an announced model to one it
trusts, then verifies forward).
"""

from __future__ import annotations

import functools
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import trio

from fedstore.errors import FedstoreError, FormatError, StrategyError, VerificationError
from fedstore.federation.global_model import (
    BASE_CID_KEY,
    MANIFEST_KEY,
    OWN_KEYS,
    ROUND_KEY,
    SESSION_KEY,
    STRATEGY_KEY,
    Binding,
    RoundOutcome,
    UpdateRef,
    aggregate_round,
    decode_state,
    encode_global,
    read_strategy_record,
    read_update_refs,
)
from fedstore.federation.manifest import initial_cid
from fedstore.federation.membership import Membership
from fedstore.federation.messages import (
    MAX_HEADER_BYTES,
    MessageError,
    check_config,
    decode_tensors,
    update_claim,
)
from fedstore.federation.signing import UPDATE_DOMAIN, decode_signature, verify_signature
from fedstore.federation.strategies.base import RoundContext, StrategyState, Update
from fedstore.federation.transport import Arrays, FederationPeer
from fedstore.federation.update_codec import CodecError, decode_update
from fedstore.federation.validation import ModelSpec

__all__ = ["UpdatePool", "VerifiedModel", "Verifier", "model_state"]

#: largest number of update payloads the pool keeps (least recently used go first)
POOL_ENTRIES = 4096
#: concurrent payload fetches during one verification
FETCH_CONCURRENCY = 8


@dataclass(frozen=True, slots=True)
class VerifiedModel:
    """A global model a member may build on: checked, with the state it carries."""

    round: int
    cid: str
    arrays: Arrays
    metadata: Mapping[str, str]
    state: StrategyState = field(default_factory=StrategyState)
    #: the encoded checkpoint (kept locally once adopted); None if already stored
    data: bytes | None = field(default=None, repr=False)
    participants: tuple[str, ...] = ()
    #: the strategy state blob to keep with it (recomputed), if any
    state_blob: bytes | None = field(default=None, repr=False)
    #: how it was checked: "full" (recomputed), "binding" (verify off), "own", "trusted"
    how: str = "full"
    #: seconds the check took
    seconds: float = 0.0


class UpdatePool:
    """Update payloads heard on the topic, by payload CID (bounded, least recently used out)."""

    def __init__(self, capacity: int = POOL_ENTRIES, max_bytes: int = 1 << 30) -> None:
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._capacity = capacity
        self._max_bytes = max_bytes
        self._bytes = 0

    def put(self, cid: str, data: bytes) -> None:
        """Keep ``data`` under ``cid``; the caller has checked that it hashes to ``cid``."""
        if cid in self._items:
            self._items.move_to_end(cid)
            return
        self._items[cid] = data
        self._bytes += len(data)
        while self._items and (len(self._items) > self._capacity or self._bytes > self._max_bytes):
            _, old = self._items.popitem(last=False)
            self._bytes -= len(old)

    def get(self, cid: str) -> bytes | None:
        data = self._items.get(cid)
        if data is not None:
            self._items.move_to_end(cid)
        return data

    def __len__(self) -> int:
        return len(self._items)


async def model_state(
    peer: FederationPeer, strategy_name: str, metadata: Mapping[str, str], *, max_size: int
) -> StrategyState:
    """The strategy state stored with a global checkpoint (empty if another strategy made it).

    Fetches the state blob the metadata names (verified by CID); FormatError
    if the metadata or the blob is unusable.
    """
    record = read_strategy_record(metadata)
    if record.name != strategy_name:
        return StrategyState()
    if record.state_cid is None:
        return StrategyState(dict(record.state_values))
    if record.state_size > max_size:
        raise FormatError(f"strategy state of {record.state_size} bytes exceeds {max_size}")
    data = await peer.get_blob(record.state_cid, max_size=record.state_size)
    return await trio.to_thread.run_sync(decode_state, record, data)


def _decoded_cap(spec: ModelSpec | None) -> int | None:
    if spec is None:
        return None
    total = 0
    for t in spec.tensors.values():
        total += math.prod(t.shape) * int(np.dtype(t.dtype).itemsize)
    return total + 64 * 1024 + MAX_HEADER_BYTES


class Verifier:
    """Checks global models of one federation run (module docstring).

    ``peer`` fetches checkpoints and payloads; ``session`` is the run's id;
    ``pool`` holds payloads heard on the topic; ``full`` False skips the
    recomputation (``verify = off``). ``expect_initial`` (an aggregator's own
    starting weights) makes :meth:`verify_round_zero` refuse any other.
    """

    def __init__(
        self,
        peer: FederationPeer,
        membership: Membership,
        session: str,
        *,
        pool: UpdatePool | None = None,
        full: bool = True,
        max_update_bytes: int = 1 << 30,
        expect_initial: Mapping[str, np.ndarray] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.peer = peer
        self.membership = membership
        self.session = session
        self.binding = Binding(membership.cid, session)
        self.pool = pool if pool is not None else UpdatePool()
        self.full = full
        self.max_update_bytes = max_update_bytes
        self.expect_initial = expect_initial
        self._clock = clock
        #: fetched checkpoint bytes by CID, while a chain is being verified
        self._fetched: OrderedDict[str, bytes] = OrderedDict()

    # -- fetching ----------------------------------------------------------------------
    async def _checkpoint(self, cid: str) -> bytes:
        data = self._fetched.get(cid)
        if data is None:
            data = await self.peer.fetch_global(cid)
            self._fetched[cid] = data
            while len(self._fetched) > 8:
                self._fetched.popitem(last=False)
        return data

    async def _decode(
        self, cid: str, data: bytes, spec: ModelSpec | None
    ) -> tuple[Arrays, dict[str, str]]:
        from fedstore.format import decode

        try:
            ckpt = await trio.to_thread.run_sync(
                functools.partial(decode, data, max_decoded_size=_decoded_cap(spec))
            )
        except FormatError as exc:
            raise VerificationError(f"{cid} is not a usable checkpoint: {exc}", cid=cid) from exc
        return dict(ckpt.arrays), dict(ckpt.metadata)

    # -- checks ------------------------------------------------------------------------
    def _check_binding(self, cid: str, meta: Mapping[str, str], round: int) -> None:
        def refuse(what: str) -> VerificationError:
            return VerificationError(f"round {round} model {cid} {what}", cid=cid)

        if meta.get(ROUND_KEY) != str(round):
            raise refuse(f"says round {meta.get(ROUND_KEY)!r:.20}")
        if meta.get(MANIFEST_KEY) != self.membership.cid:
            raise refuse(f"belongs to federation {meta.get(MANIFEST_KEY)!r:.80}, not this one")
        if meta.get(SESSION_KEY) != self.session:
            raise refuse(f"belongs to run {meta.get(SESSION_KEY)!r:.40}, not {self.session}")
        if round > self.membership.manifest.rounds:
            raise refuse(f"is past the federation's {self.membership.manifest.rounds} rounds")

    def check_refs(self, cid: str, round: int, base_cid: str, refs: Sequence[UpdateRef]) -> None:
        """Check a checkpoint's update list: members, order, signatures, quorum."""
        m = self.membership

        def refuse(what: str) -> VerificationError:
            return VerificationError(f"round {round} model {cid}: {what}", cid=cid)

        senders = [r.sender for r in refs]
        if senders != sorted(set(senders)):
            raise refuse("its updates are not listed once each, sorted by sender")
        if len(refs) < m.manifest.quorum:
            raise refuse(f"{len(refs)} update(s), the quorum is {m.manifest.quorum}")
        for ref in refs:
            if not m.can(ref.sender, "trainer"):
                raise refuse(f"lists an update from {ref.sender}, not a trainer of the federation")
            if not 1 <= ref.num_samples <= 10**12:
                raise refuse(f"lists num_samples={ref.num_samples} for {ref.sender}")
            sig = decode_signature(ref.sig)
            if ref.encoding is not None and ref.encoding != m.update_encoding.text:
                raise refuse(
                    f"lists an update of {ref.sender} in another encoding ({ref.encoding})"
                )
            claim = update_claim(
                m.cid,
                self.session,
                round,
                base_cid,
                ref.sender,
                ref.num_samples,
                ref.payload_cid,
                ref.encoding,
            )
            if sig is None or not verify_signature(ref.sender, UPDATE_DOMAIN, claim, sig):
                raise refuse(f"the update of {ref.sender} does not carry its signature")

    async def _payloads(self, cid: str, refs: Sequence[UpdateRef]) -> list[bytes]:
        out: list[bytes | None] = [self.pool.get(r.payload_cid) for r in refs]
        limiter = trio.CapacityLimiter(FETCH_CONCURRENCY)
        failures: list[str] = []

        async def fetch(i: int) -> None:
            ref = refs[i]
            async with limiter:
                try:
                    data = await self.peer.get_blob(ref.payload_cid, max_size=self.max_update_bytes)
                except FedstoreError as exc:
                    failures.append(f"{ref.sender}'s update {ref.payload_cid}: {exc}")
                    return
            self.pool.put(ref.payload_cid, data)
            out[i] = data

        async with trio.open_nursery() as nursery:
            for i, data in enumerate(out):
                if data is None:
                    nursery.start_soon(fetch, i)
        if failures:
            raise VerificationError(
                f"cannot check model {cid}: {failures[0]}"
                + (f" (+{len(failures) - 1} more)" if len(failures) > 1 else ""),
                cid=cid,
                unavailable=True,
            )
        return [d for d in out if d is not None]

    # -- verification ------------------------------------------------------------------
    async def verify_round_zero(self, cid: str) -> VerifiedModel:
        """Check a run's starting checkpoint: binding, and the manifest's ``initial`` pin."""
        started = self._clock()
        data = await self._checkpoint(cid)
        arrays, meta = await self._decode(cid, data, None)
        self._check_binding(cid, meta, 0)
        pin = self.membership.manifest.initial
        if pin is not None and await trio.to_thread.run_sync(initial_cid, arrays) != pin:
            raise VerificationError(
                f"round 0 model {cid} does not hold the initial weights the manifest pins ({pin})",
                cid=cid,
            )
        if self.expect_initial is not None and not _same_arrays(arrays, self.expect_initial):
            raise VerificationError(
                f"round 0 model {cid} starts from other weights than this aggregator's own "
                "initial model (resume explicitly to take a federation's head from the network)",
                cid=cid,
            )
        return VerifiedModel(
            0, cid, arrays, meta, data=data, how="full", seconds=self._clock() - started
        )

    async def verify(self, round: int, cid: str, base: VerifiedModel) -> VerifiedModel:
        """Verify ``cid`` as round ``round``'s model built on ``base`` (module docstring)."""
        started = self._clock()
        data = await self._checkpoint(cid)
        spec = ModelSpec.of(base.arrays)
        arrays, meta = await self._decode(cid, data, spec)
        self._check_binding(cid, meta, round)
        if round != base.round + 1:
            raise VerificationError(f"round {round} cannot follow round {base.round}", cid=cid)
        if meta.get(BASE_CID_KEY) != base.cid:
            raise VerificationError(
                f"round {round} model {cid} builds on {meta.get(BASE_CID_KEY)!r:.80}, "
                f"not on round {base.round}'s {base.cid}",
                cid=cid,
            )
        strategy = self.membership.strategy()
        if meta.get(STRATEGY_KEY) != strategy.name:
            raise VerificationError(
                f"round {round} model {cid} was aggregated with {meta.get(STRATEGY_KEY)!r:.40}, "
                f"the federation's strategy is {strategy.name}",
                cid=cid,
            )
        try:
            refs = read_update_refs(meta)
        except FormatError as exc:
            raise VerificationError(f"round {round} model {cid}: {exc}", cid=cid) from exc
        self.check_refs(cid, round, base.cid, refs)
        participants = tuple(r.sender for r in refs)
        if not self.full:
            if ModelSpec.of(arrays) != spec:
                raise VerificationError(f"round {round} model {cid} is another model", cid=cid)
            state = await self._state(meta)
            return VerifiedModel(
                round,
                cid,
                arrays,
                meta,
                state,
                data,
                participants,
                None,
                "binding",
                self._clock() - started,
            )
        payloads = await self._payloads(cid, refs)
        outcome, expected = await trio.to_thread.run_sync(
            self._recompute, round, base, spec, refs, payloads, meta
        )
        if expected != data:
            from fedstore.ipld.cid import cid_of_bytes, parse_cid

            expected_cid = cid_of_bytes(expected, parse_cid(cid).version)
            raise VerificationError(
                f"round {round} model {cid} is not the aggregate of the updates it lists: "
                f"recomputed {expected_cid}",
                cid=cid,
                expected=expected_cid,
            )
        assert outcome.arrays is not None
        return VerifiedModel(
            round,
            cid,
            outcome.arrays,
            meta,
            outcome.state,
            data,
            participants,
            outcome.state_blob,
            "full",
            self._clock() - started,
        )

    def _recompute(
        self,
        round: int,
        base: VerifiedModel,
        spec: ModelSpec,
        refs: Sequence[UpdateRef],
        payloads: Sequence[bytes],
        meta: Mapping[str, str],
    ) -> tuple[RoundOutcome, bytes]:
        """Decode and admit the payloads, aggregate, encode (a worker thread runs this)."""
        from fedstore.ipld.cid import cid_of_bytes

        cap = _decoded_cap(spec) or (1 << 30)
        updates: list[Update] = []
        for ref, payload in zip(refs, payloads, strict=True):
            if cid_of_bytes(payload, 1) != ref.payload_cid:  # the pool's copy, re-checked
                raise VerificationError(f"payload of {ref.sender} is not {ref.payload_cid}")
            try:
                if ref.encoding is None:
                    arrays = decode_tensors(payload, max_decoded_size=cap)
                else:
                    arrays = decode_update(payload, base.arrays, self.membership.update_encoding)
            except (MessageError, CodecError) as exc:
                raise VerificationError(
                    f"the update of {ref.sender} does not decode: {exc}"
                ) from exc
            problem = spec.problem(arrays)
            if problem is not None:
                raise VerificationError(
                    f"the update of {ref.sender} would be refused: {problem[0]}: {problem[1]}"
                )
            updates.append(Update(ref.sender, ref.num_samples, arrays))
        strategy = self.membership.strategy()
        ctx = RoundContext(round, base.cid, base.arrays, base.state)
        try:
            config = check_config(strategy.configure_round(ctx))
            outcome = aggregate_round(
                strategy,
                ctx,
                updates,
                (),
                config=config,
                extra={k: v for k, v in meta.items() if k not in OWN_KEYS},
                binding=self.binding,
                refs={r.sender: r for r in refs},
            )
        except (StrategyError, MessageError, ValueError) as exc:
            raise VerificationError(f"the updates do not aggregate: {exc}") from exc
        if outcome.arrays is None:
            raise VerificationError(f"the strategy declines these updates: {outcome.reason}")
        return outcome, encode_global(outcome)

    async def _state(self, meta: Mapping[str, str]) -> StrategyState:
        try:
            return await model_state(
                self.peer, self.membership.strategy().name, meta, max_size=self.max_update_bytes
            )
        except FedstoreError as exc:
            raise VerificationError(f"the strategy state cannot be read: {exc}") from exc

    async def verify_chain(
        self,
        round: int,
        cid: str,
        trusted: Callable[[int, str], VerifiedModel | None],
    ) -> list[VerifiedModel]:
        """Verify ``cid`` as round ``round``, and every round back to one already trusted.

        ``trusted(round, cid)`` returns a model this member holds as verified
        (or None). Walks back along the checkpoints' base CIDs (fetching each)
        until it reaches a trusted model or round 0, then verifies forward.
        Returns the newly verified models, oldest first.
        """
        path: list[tuple[int, str]] = []
        r, c = round, cid
        anchor: VerifiedModel | None = trusted(r, c)
        while anchor is None:
            path.append((r, c))
            if r == 0:
                break
            data = await self._checkpoint(c)
            _, meta = await self._decode(c, data, None)
            self._check_binding(c, meta, r)
            base_cid = meta.get(BASE_CID_KEY)
            if not base_cid:
                raise VerificationError(f"round {r} model {c} names no base model", cid=c)
            r, c = r - 1, base_cid
            anchor = trusted(r, c)
        out: list[VerifiedModel] = []
        prev = anchor
        for r, c in reversed(path):
            model = (
                await self.verify_round_zero(c) if r == 0 else await self.verify(r, c, _req(prev))
            )
            out.append(model)
            prev = model
        return out


def _req(model: VerifiedModel | None) -> VerifiedModel:
    assert model is not None
    return model


def _same_arrays(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> bool:
    if sorted(a) != sorted(b):
        return False
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
            return False
    return True
