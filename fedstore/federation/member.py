"""The round protocol of a federation with a manifest: members only, verified, no single leader.

:func:`take_part` runs one member. What it does depends on the member's
roles in the manifest (:mod:`fedstore.federation.manifest`) and on what it
was given: an aggregator-capable member with starting weights (``initial``)
takes aggregation duty, a trainer member with a ``train`` function trains; a
member with both does both over one subscription. ``lead_rounds`` and
``follow_rounds`` with ``settings.federation`` call it with one role each.

The protocol (docs/FEDERATION.md has the full picture):

* **Membership.** Messages from non-members are dropped (the node's peer
  filter does it in the pubsub validator; the member checks again). Only
  trainer members' updates are admitted, one per member per round; only
  aggregator-capable members' round control (``ROUND``, ``RESULT``,
  ``DONE``) is followed. Every message carries the manifest's CID and the
  run's session, and a round number that cannot pass the manifest's
  ``rounds``; anything from another federation or run is dropped.
* **Runs.** A fresh aggregator listens briefly for a running session; if
  none, the one first in round 1's duty order starts one: a random session
  id, round 0 (the initial weights, bound to manifest and session), then
  ``ROUND 1``. Others join by verifying the chain of models back to round 0
  (an aggregator only joins a run that started from its own initial weights,
  unless told to resume). A restarted member reads its run and last adopted
  model back from its ledger (catalog) and catches up from there.
* **Rounds.** Rotate mode: the round's duty order (from the manifest CID and
  the round number) says who opens and aggregates it; every
  aggregator-capable member collects the round's updates. The opener closes
  the round when every trainer member present has sent its update (at least
  ``quorum``), or at the deadline with at least ``quorum``; otherwise it
  re-opens the round (up to ``max_attempts``). It aggregates, stores the
  updates' payloads and the checkpoint, and announces ``RESULT``. If no
  verified result arrives by the deadline, standby ``k`` (k places after the
  opener) aggregates the updates it admitted at ``deadline + k * grace``:
  deterministic aggregation makes its CID the one the opener would have
  announced. Leaderless mode: every aggregator-capable member opens,
  aggregates at its deadline and announces its result; each then announces
  (endorses) the best verified result it knows (most participants, then the
  lowest CID) and a result is adopted once a strict majority of the
  aggregator-capable members announce it.
* **Adoption.** A member adopts a round's model only after verifying it
  (:mod:`fedstore.federation.verify`; ``verify = off`` checks the binding
  only). A model that does not verify is refused (event, ledger row with
  both CIDs), never kept, and its announcer is no longer waited for.
"""

from __future__ import annotations

import functools
import logging
import secrets
from collections import Counter
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import trio

from fedstore.errors import FedstoreError, FormatError, VerificationError
from fedstore.federation.aggregator import EvaluateFn, publish_round
from fedstore.federation.collect import Admission, Collector, FederatedAdmission
from fedstore.federation.events import (
    AggregationTakenOver,
    EventSink,
    FederationResult,
    MemberResult,
    ModelAdopted,
    ModelRefused,
    RoundClosed,
    RoundFailed,
    RoundOpened,
    SessionJoined,
    TrainerResult,
    TrainerUpdated,
    noop_sink,
)
from fedstore.federation.global_model import (
    BASE_CID_KEY,
    Binding,
    aggregate_round,
    read_update_refs,
    round_zero_metadata,
)
from fedstore.federation.ledger import ADOPTED, REFUSED, LedgerEntry
from fedstore.federation.membership import Membership
from fedstore.federation.messages import (
    DEFAULT_INLINE_LIMIT,
    MAX_HEADER_BYTES,
    Done,
    MessageError,
    RoundOpen,
    RoundResult,
    UpdateMessage,
    check_config,
    decode_message,
    encode_tensors,
)
from fedstore.federation.rounds import MemberOptions, RoundState
from fedstore.federation.signing import UPDATE_DOMAIN, encode_signature
from fedstore.federation.strategies.base import RoundContext
from fedstore.federation.trainer import TrainFn, clean_metrics
from fedstore.federation.transport import FederationPeer, Inbox
from fedstore.federation.update_codec import UpdateEncoder
from fedstore.federation.validation import ModelSpec, RejectionCounter, RoundValidator
from fedstore.federation.verify import UpdatePool, VerifiedModel, Verifier, model_state
from fedstore.p2p.guard import DropCounters

if TYPE_CHECKING:
    from fedstore.federation.settings import AggregatorSettings, TrainerSettings

__all__ = ["MemberOptions", "follow_federation", "lead_federation", "take_part"]

log = logging.getLogger(__name__)

NDArray = npt.NDArray[np.generic]
_TOPIC = "fed-learn"


class Member:
    """One member's part in a federation run (see the module docstring)."""

    def __init__(
        self,
        peer: FederationPeer,
        membership: Membership,
        options: MemberOptions,
        *,
        initial: Mapping[str, NDArray] | None,
        train: TrainFn | None,
        evaluate: EvaluateFn | None,
        on_event: EventSink,
        metadata: Mapping[str, str],
        inline_limit: int,
        max_update_bytes: int,
    ) -> None:
        self.peer = peer
        self.me = peer.peer_id
        self.m = membership
        self.manifest = membership.manifest
        self.opt = options
        self.initial = dict(initial) if initial is not None else None
        self.train_fn = train
        self.evaluate = evaluate
        self.on_event = on_event
        self.metadata = dict(metadata)
        self.inline_limit = inline_limit
        self.admission = Admission(
            max_update_bytes=max_update_bytes,
            fetch_timeout=max(2.0, min(30.0, self.manifest.round_timeout / 2)),
        )
        self.aggregates = membership.can(self.me, "aggregator") and initial is not None
        self.trains = membership.can(self.me, "trainer") and train is not None
        self.strategy = membership.strategy()
        self.encoding = membership.update_encoding
        #: lossy encodings: this trainer's encoder, with its error-feedback residuals
        self.encoder = UpdateEncoder(self.encoding) if self.encoding.lossy else None
        self.pool = UpdatePool()
        self.drops = DropCounters()
        self.rejections = RejectionCounter()
        #: drops counted without a log line (expected while joining a run)
        self.quiet: Counter[str] = Counter()
        self.suspects: set[str] = set()
        self.session: str | None = None
        self.session_rank = -1
        self.verifier: Verifier | None = None
        self.head: VerifiedModel | None = None
        self.known: dict[tuple[int, str], VerifiedModel] = {}
        self.rs: RoundState | None = None
        self.joining = False
        self.catching_up = False
        self.refused_runs: set[tuple[str, str]] = set()
        #: models refused in this run (never checked again; who builds on them is suspect)
        self.refused_models: set[str] = set()
        #: when a model's listed updates first could not be fetched, by CID
        self.unfetched: dict[str, float] = {}
        #: valid models of a round this member kept another model of (fork choice)
        self.forks: set[str] = set()
        self.last_result: bytes | None = None
        self.history: list[RoundClosed] = []
        self.adopted: list[tuple[int, str, str, str]] = []
        self.refused: list[ModelRefused] = []
        self.trained: list[int] = []
        self.result: MemberResult | None = None
        self.finished = trio.Event()
        self.started = self.now()
        self.progress_at = self.started
        self.idle_timeout = options.idle_timeout or (4 * self.manifest.round_timeout + 30.0)
        self._nursery: trio.Nursery | None = None

    # -- basics ----------------------------------------------------------------------------
    def now(self) -> float:
        return self.opt.clock()

    @property
    def _silence(self) -> float:
        """How long an opener may go without repeating its ROUND before it counts as gone."""
        return max(2.0, 6 * self.opt.announce_interval)

    @property
    def binding(self) -> Binding:
        assert self.session is not None
        return Binding(self.m.cid, self.session)

    @property
    def nursery(self) -> trio.Nursery:
        assert self._nursery is not None
        return self._nursery

    def _drop(self, reason: str, sender: str, detail: str = "") -> None:
        self.drops.drop(_TOPIC, reason, sender, detail)

    def _spawn(self, fn: object, *args: object) -> None:
        """Run ``fn(*args)`` as a task whose fedstore errors are logged, never fatal."""

        async def guarded() -> None:
            try:
                await fn(*args)  # type: ignore[operator]
            except FedstoreError as exc:
                log.warning("%s: %s", getattr(fn, "__name__", "task"), exc)

        self.nursery.start_soon(guarded)

    def _finish(self, status: str, reason: str = "") -> None:
        if self.result is not None:
            return
        head = self.head
        self.result = MemberResult(
            status=status,
            final_round=head.round if head else -1,
            final_cid=head.cid if head else "",
            session=self.session or "",
            rounds_trained=tuple(self.trained),
            history=tuple(self.history),
            adopted=tuple(self.adopted),
            refused=tuple(self.refused),
            rejections=dict(self.rejections),
            dropped={**self.drops.snapshot(), **self.quiet},
            reason=reason,
        )
        self.finished.set()

    # -- lifecycle -------------------------------------------------------------------------
    async def run(self) -> MemberResult:
        async with self.peer.messages() as inbox, trio.open_nursery() as nursery:
            self._nursery = nursery
            await self._start()
            if self.result is None:
                nursery.start_soon(self._read, inbox)
                nursery.start_soon(self._ticks)
                await self.finished.wait()
            if self.aggregates and self.result is not None and self.session is not None:
                await self._linger_done(self.result)
            nursery.cancel_scope.cancel()
        assert self.result is not None
        return self.result

    async def _start(self) -> None:
        await self.peer.ledger.record_manifest(self.m.cid, self.m.signed.data)
        last = await self.peer.ledger.last_adopted(self.m.cid)
        if last is None:
            return
        data_model = await self.peer.load_global(last.round, last.cid)
        state = await model_state(
            self.peer,
            self.strategy.name,
            data_model.metadata,
            max_size=self.admission.max_update_bytes,
        )
        try:
            listed = tuple(r.sender for r in read_update_refs(data_model.metadata))
        except FormatError:  # round 0 lists no updates
            listed = ()
        model = VerifiedModel(
            last.round,
            last.cid,
            data_model.arrays,
            data_model.metadata,
            state,
            participants=listed,
            how="trusted",
        )
        log.info("resuming run %s of %s at round %d", last.session, self.m.cid, last.round)
        self._join(last.session, model, rank=-1, created=False)

    async def _read(self, inbox: Inbox) -> None:
        while True:
            sender, data = await inbox.receive()
            self._on_message(sender, data)

    async def _ticks(self) -> None:
        while self.result is None:
            try:
                await self._tick()
            except FedstoreError as exc:
                log.warning("round tick failed: %s", exc)
            await trio.sleep(self.opt.announce_interval)

    async def _linger_done(self, result: MemberResult) -> None:
        """Announce the end for ``linger`` seconds (a failed run: only if this member opened)."""
        assert self.session is not None
        rs = self.rs
        if self.head is None or (result.status != "complete" and (rs is None or not rs.opening)):
            return
        end = self.now() + self.opt.linger
        while True:
            msg = Done(
                self.head.round,
                self.head.cid,
                self.me,
                result.status,
                result.reason[:500],
                self.m.cid,
                self.session,
                at=self.now(),
            )
            await self.peer.publish(msg.encode())
            if self.now() + self.opt.announce_interval > end:
                return
            await trio.sleep(self.opt.announce_interval)

    # -- runs (sessions) -------------------------------------------------------------------
    def _join(self, session: str, model: VerifiedModel, *, rank: int, created: bool) -> None:
        """Take part in run ``session`` from its model ``model`` (verified or own)."""
        if self.session != session:
            self.session = session
            self.verifier = Verifier(
                self.peer,
                self.m,
                session,
                pool=self.pool,
                full=self.opt.verify,
                max_update_bytes=self.admission.max_update_bytes,
                expect_initial=self.initial if self.aggregates and not self.opt.resume else None,
            )
            self.known.clear()
            self.rs = None
            self.head = None
        self.session_rank = rank
        self.on_event(SessionJoined(session, model.round, model.cid, created))
        self._enter(model)

    def _consider_run(self, sender: str, msg: RoundOpen) -> None:
        """A ROUND of a run this member is not in: join it, or switch to it, or drop it.

        Two runs can start at once (aggregators starting far apart). A member
        switches to another run when it is further along (its base is past
        this member's head: it has more rounds every member can verify), or,
        while both are at round 0, when it was opened by a member earlier in
        round 1's duty order. Every member applies the same rule, so they
        settle on one run; a switch verifies the other run's whole chain.
        """
        assert msg.session is not None
        if self.joining or (msg.session, msg.base_cid) in self.refused_runs:
            return
        if self.session is not None:
            head = self.head.round if self.head is not None else -1
            early = head == 0 and msg.round == 1
            better = msg.position is not None and msg.position < self.session_rank
            ahead = msg.base_round > head
            if not ((early and better) or ahead):
                self._drop("other_run", sender, f"session {msg.session}")
                return
        self.joining = True
        self._spawn(self._join_run, sender, msg)

    async def _join_run(self, sender: str, msg: RoundOpen) -> None:
        assert msg.session is not None
        try:
            verifier = Verifier(
                self.peer,
                self.m,
                msg.session,
                pool=self.pool,
                full=self.opt.verify,
                max_update_bytes=self.admission.max_update_bytes,
                expect_initial=self.initial if self.aggregates and not self.opt.resume else None,
            )
            try:
                models = await verifier.verify_chain(
                    msg.base_round, msg.base_cid, lambda r, c: None
                )
            except VerificationError as exc:
                self.refused_runs.add((msg.session, msg.base_cid))
                log.warning("not joining run %s announced by %s: %s", msg.session, sender, exc)
                self._refuse(msg.base_round, msg.base_cid, sender, exc)
                return
            except FedstoreError as exc:  # the chain could not be fetched: try again later
                log.warning("cannot fetch run %s's models yet: %s", msg.session, exc)
                return
            if self.head is not None and self.head.round >= models[-1].round > 0:
                return  # this member's own run moved on as far meanwhile
            for model in models:
                await self._remember(model, sender, session=msg.session)
            rank = msg.position if msg.round == 1 and msg.position is not None else -1
            self._join(msg.session, models[-1], rank=rank, created=False)
        finally:
            self.joining = False

    async def _start_run(self) -> None:
        """Start a new run: a session id, round 0 from the initial weights, then round 1."""
        assert self.initial is not None
        session = secrets.token_hex(16)
        meta = round_zero_metadata(Binding(self.m.cid, session), self.metadata)
        rec = await self.peer.save_global(0, self.initial, meta)
        model = VerifiedModel(0, rec.cid, dict(self.initial), meta, how="own")
        await self._record(model, self.me, session=session)
        log.info("started run %s of federation %s (round 0: %s)", session, self.m.cid, rec.cid)
        self._join(session, model, rank=self.m.position(self.me, 1) or 0, created=True)

    # -- rounds ----------------------------------------------------------------------------
    def _enter(self, model: VerifiedModel) -> None:
        """Build on ``model``: the run is complete, or its next round starts."""
        self.head = model
        self.known[(model.round, model.cid)] = model
        while len(self.known) > 4:
            del self.known[min(self.known)]
        self.progress_at = self.now()
        if model.round >= self.manifest.rounds:
            self._finish("complete")
            return
        rnd = model.round + 1
        ctx = RoundContext(rnd, model.cid, model.arrays, model.state)
        rs = RoundState(rnd, model, self.now())
        rs.config = check_config(self.strategy.configure_round(ctx))
        if self.aggregates:
            rs.validator = RoundValidator(ModelSpec.of(model.arrays), rnd, totals=self.rejections)
            assert self.session is not None
            rs.collector = Collector(
                self.peer,
                rs.validator,
                model.cid,
                self.admission,
                self.on_event,
                self.nursery,
                federated=FederatedAdmission(self.m, self.session),
                drops=self.drops,
                base=model.arrays,
                encoding=self.encoding,
            )
        self.rs = rs

    def _open(self, rs: RoundState) -> None:
        """Open ``rs`` as this member (its place in the manifest's duty order goes out with it)."""
        rs.opener, rs.opener_pos, rs.opening = self.me, self.m.position(self.me, rs.round), True
        rs.deadline_at = self.now() + self.manifest.round_timeout
        self.on_event(
            RoundOpened(rs.round, rs.attempt, rs.base.cid, self.manifest.quorum, rs.config)
        )

    def _round_message(self, rs: RoundState) -> bytes:
        assert rs.deadline_at is not None and rs.opener_pos is not None
        received = tuple(rs.validator.senders) if rs.validator is not None else ()
        return RoundOpen(
            round=rs.round,
            base_round=rs.base.round,
            base_cid=rs.base.cid,
            aggregator=self.me,
            quorum=self.manifest.quorum,
            deadline=max(0.0, rs.deadline_at - self.now()),
            attempt=rs.attempt,
            received=received,
            config=rs.config,
            federation=self.m.cid,
            session=self.session,
            deadline_at=rs.deadline_at,
            position=rs.opener_pos,
        ).encode()

    def _expected(self) -> set[str]:
        """Trainer members present now (the round waits for each of them until its deadline)."""
        present = self.peer.present() | ({self.me} if self.trains else set())
        return {t for t in self.m.trainers if t in present}

    async def _tick(self) -> None:
        now = self.now()
        if now - self.progress_at > self.idle_timeout:
            self._finish("failed", f"no progress for {self.idle_timeout:g}s")
            return
        if self.session is None:
            if self.aggregates and not self.joining:
                pos = self.m.position(self.me, 1) or 0
                if now >= self.started + self.opt.listen_first + pos * self.m.takeover_grace:
                    await self._start_run()
            return
        rs = self.rs
        if rs is None or rs.adopted:
            return
        if self.last_result is not None:
            await self.peer.publish(self.last_result)  # for members that missed it
        if self.aggregates:
            if self.manifest.aggregation == "leaderless":
                await self._tick_leaderless(rs, now)
            else:
                await self._tick_rotate(rs, now)
        if self.trains and rs.opening and rs.update_wire is None and not rs.training:
            rs.training = True  # this member opened the round: its own ROUND never comes back
            self._spawn(self._train, rs)

    async def _tick_rotate(self, rs: RoundState, now: float) -> None:
        # timing follows the duty order without the members suspected here (they failed
        # to deliver or lied); positions in messages are the manifest's, unfiltered
        order = self.m.duty_order(rs.round, skip=self.suspects - {self.me})
        mine = order.index(self.me)
        grace = self.m.takeover_grace
        if rs.opener is None:
            if now < rs.entered + mine * grace:
                return
            if mine > 0:  # the members before this one in the duty order did not open it
                rs.taken_over = True
                self.on_event(AggregationTakenOver(rs.round, mine, order[0]))
                self.suspects.update(order[:mine])
            self._open(rs)
        if rs.opening:
            await self.peer.publish(self._round_message(rs))
            if not rs.aggregating and self._should_close(rs, now):
                rs.aggregating = True
                self._spawn(self._aggregate, rs, rs.taken_over)
            return
        assert rs.deadline_at is not None and rs.opener_pos is not None
        # who takes over, and when, follows the manifest's order alone (not this member's
        # suspicions, which others may not share): two standbys never act at once
        behind = (self.m.position(self.me, rs.round) or 0) - rs.opener_pos
        # the opener failed at its deadline, when its model was refused, or when it
        # stopped repeating its ROUND (it does while the round is open: it is gone)
        since = rs.deadline_at
        if rs.opener_failed_at is not None:
            since = min(since, rs.opener_failed_at)
        if rs.opener_seen_at is not None:
            since = min(since, rs.opener_seen_at + self._silence)
        if behind > 0 and not rs.verified and not rs.aggregating and now >= since + behind * grace:
            rs.aggregating = rs.taken_over = True
            self.on_event(AggregationTakenOver(rs.round, behind, rs.opener or ""))
            if rs.opener is not None:
                self.suspects.add(rs.opener)
            self._spawn(self._aggregate, rs, True)

    async def _tick_leaderless(self, rs: RoundState, now: float) -> None:
        if not rs.opening:
            self._open(rs)
        await self.peer.publish(self._round_message(rs))
        if rs.own_cid is None and not rs.aggregating and self._should_close(rs, now):
            rs.aggregating = True
            self._spawn(self._aggregate, rs, False)
        if rs.my_vote is not None:
            await self._announce(rs, rs.my_vote)

    def _should_close(self, rs: RoundState, now: float) -> bool:
        assert rs.validator is not None and rs.deadline_at is not None
        have = set(rs.validator.accepted)
        if len(have) >= self.manifest.quorum and self._expected() <= have:
            return True
        return now >= rs.deadline_at

    async def _announce(self, rs: RoundState, cid: str) -> None:
        assert self.session is not None
        participants = len(rs.verified[cid].participants) if cid in rs.verified else 1
        msg = RoundResult(
            rs.round, cid, rs.base.cid, self.me, max(1, participants), self.m.cid, self.session
        ).encode()
        self.last_result = msg
        await self.peer.publish(msg)

    async def _aggregate(self, rs: RoundState, takeover: bool) -> None:
        """Aggregate the updates admitted in ``rs``, publish the model and announce it."""
        try:
            await self._aggregate_inner(rs, takeover)
        finally:
            if rs.own_cid is None:
                rs.aggregating = False

    async def _aggregate_inner(self, rs: RoundState, takeover: bool) -> None:
        assert rs.validator is not None and rs.collector is not None
        started = self.now()
        v, col = rs.validator, rs.collector
        senders = v.senders
        if len(senders) < self.manifest.quorum:
            self._round_failed(rs, len(senders), takeover)
            return
        updates = [v.accepted[s] for s in senders]
        ctx = RoundContext(rs.round, rs.base.cid, rs.base.arrays, rs.base.state)
        outcome = await trio.to_thread.run_sync(
            functools.partial(
                aggregate_round,
                self.strategy,
                ctx,
                updates,
                tuple(v.log_rejections),
                config=rs.config,
                extra=self.metadata,
                binding=self.binding,
                refs={s: col.refs[s] for s in senders},
            )
        )
        if outcome.arrays is None:
            self._round_failed(rs, len(senders), takeover, f"declined: {outcome.reason}")
            return
        if self.opt.tamper is not None:
            outcome = replace(outcome, arrays=self.opt.tamper(rs.round, dict(outcome.arrays)))
        for s in senders:  # every member must be able to fetch what the model lists
            await self.peer.put_blob(col.payloads[s])
            self.pool.put(col.refs[s].payload_cid, col.payloads[s])
        if rs.adopted or rs is not self.rs:
            return
        rec, metrics = await publish_round(self.peer, rs.round, outcome, self.evaluate)
        rs.own_cid = rec.cid
        assert outcome.arrays is not None
        own = VerifiedModel(
            rs.round,
            rec.cid,
            outcome.arrays,
            outcome.metadata,
            outcome.state,
            None,
            outcome.participants,
            None,
            "own",
        )
        rs.verified[rec.cid] = own
        rs.announcers.setdefault(rec.cid, self.me)
        closed = RoundClosed(
            round=rs.round,
            participants=tuple(senders),
            num_samples=outcome.num_samples,
            cid=rec.cid,
            size=rec.size,
            bytes_stored=rec.size + len(outcome.state_blob or b""),
            metrics=metrics,
            partial=not self._expected() <= set(senders),
            rejected=dict(v.rejections),
            seconds=round(self.now() - started, 3),
            trainer_metrics=dict(outcome.trainer_metrics),
            strategy_metrics=dict(outcome.strategy_metrics),
            aggregator=self.me,
            takeover=takeover,
        )
        self.history.append(closed)
        self.on_event(closed)
        if self.manifest.aggregation == "leaderless":
            rs.vote(rec.cid, self.me)
            self._decide(rs)
            return
        await self._announce(rs, rec.cid)
        await self._adopt(rs, own, self.me)

    def _round_failed(self, rs: RoundState, got: int, takeover: bool, why: str = "") -> None:
        reason = why or f"{got} member update(s), the quorum is {self.manifest.quorum}"
        self.on_event(RoundFailed(rs.round, rs.attempt, got, self.manifest.quorum, reason))
        if rs.attempt >= self.opt.max_attempts:
            self._finish("failed", f"round {rs.round} failed {rs.attempt} time(s): {reason}")
            return
        # re-open the round (a standby that found too few takes the round over)
        rs.attempt += 1
        self._open(rs)

    # -- adoption --------------------------------------------------------------------------
    def _decide(self, rs: RoundState) -> None:
        """Adopt a verified model of ``rs`` if the mode's rule allows it now."""
        if rs.adopted or not rs.verified:
            return
        if self.manifest.aggregation != "leaderless":
            cid = next(iter(rs.verified))
            rs.adopted = True
            self._spawn(self._adopt, rs, rs.verified[cid], rs.announcers.get(cid, ""))
            return
        best = min(rs.verified.values(), key=lambda m: (-len(m.participants), m.cid))
        if self.aggregates and rs.my_vote != best.cid:
            rs.my_vote = best.cid
            rs.vote(best.cid, self.me)
            self._spawn(self._announce, rs, best.cid)
        for cid, voters in rs.votes.items():
            if cid in rs.verified and len(voters) >= self.m.majority:
                rs.adopted = True
                self._spawn(self._adopt, rs, rs.verified[cid], rs.announcers.get(cid, ""))
                return

    async def _adopt(self, rs: RoundState, model: VerifiedModel, aggregator: str) -> None:
        rs.adopted = True
        if rs is not self.rs:
            return
        if self.manifest.aggregation != "leaderless" and aggregator:
            # every member sees who delivered the round: the ones before it in the duty
            # order did not, and are not waited for again (until they deliver one)
            order = self.m.duty_order(rs.round)
            if aggregator in order:
                self.suspects.update(order[: order.index(aggregator)])
            self.suspects.discard(aggregator)
            self.suspects.discard(self.me)  # this member knows whether it is alive
        await self._remember(model, aggregator)
        self._enter(model)

    async def _remember(
        self, model: VerifiedModel, aggregator: str, *, session: str | None = None
    ) -> None:
        """Keep a verified model locally and record it as adopted."""
        if model.data is not None:
            await self.peer.keep_global(model.round, model.cid, model.data)
        if model.state_blob is not None:
            await self.peer.put_blob(model.state_blob)
        if self.aggregates and model.how != "own":
            await self._keep_payloads(model)
        await self._record(model, aggregator, session=session)
        self.adopted.append((model.round, model.cid, aggregator, model.how))
        base_cid = model.metadata.get(BASE_CID_KEY)
        if self.aggregates and model.round > 0 and base_cid and model.participants:
            # an aggregator-capable member keeps announcing the model it built on: members
            # that missed it, or kept another valid model of the round, learn of it
            self.last_result = RoundResult(
                model.round,
                model.cid,
                base_cid,
                self.me,
                len(model.participants),
                self.m.cid,
                session or self.session or "",
            ).encode()
        self.on_event(
            ModelAdopted(
                model.round,
                model.cid,
                aggregator,
                model.how,
                round(model.seconds, 4),
                len(model.participants),
            )
        )

    async def _keep_payloads(self, model: VerifiedModel) -> None:
        """Store the payloads of the updates ``model`` lists that this member holds.

        Then members checking the model can fetch them from any aggregator-capable
        member, not only from the one that aggregated it (which may be gone, or not
        connected to them); the round's aggregator stored them before announcing.
        """
        try:
            refs = read_update_refs(model.metadata)
        except FormatError:  # round 0 lists no updates
            return
        for ref in refs:
            data = self.pool.get(ref.payload_cid)
            if data is not None:
                await self.peer.put_blob(data)

    async def _record(self, model: VerifiedModel, aggregator: str, *, session: str | None) -> None:
        rs = self.rs
        rejected = dict(rs.validator.rejections) if rs and rs.validator else {}
        for key, n in self.peer.drop_counts().items():
            if key.endswith(":non_member"):
                rejected["non_member"] = n
        await self.peer.ledger.record(
            LedgerEntry(
                manifest=self.m.cid,
                session=session or self.session or "",
                round=model.round,
                cid=model.cid,
                status=ADOPTED,
                aggregator=aggregator or None,
                how=model.how,
                participants=len(model.participants),
                rejections=rejected,
            )
        )

    def _may_retry(self, cid: str) -> bool:
        """True while ``cid``'s listed updates have been unreachable for under a round timeout."""
        first = self.unfetched.setdefault(cid, self.now())
        return self.now() - first < self.manifest.round_timeout

    def _refuse(self, round: int, cid: str, announcer: str, exc: VerificationError) -> None:
        self.refused_models.add(exc.cid or cid)
        event = ModelRefused(round, cid, exc.expected or "", announcer, str(exc)[:500])
        self.refused.append(event)
        self.on_event(event)
        if announcer and announcer != self.me:
            self.suspects.add(announcer)
        log.warning("refused round %d model %s from %s: %s", round, cid, announcer, exc)
        entry = LedgerEntry(
            manifest=self.m.cid,
            session=self.session or "",
            round=round,
            cid=cid,
            status=REFUSED,
            aggregator=announcer or None,
            how="full" if self.opt.verify else "binding",
            expected=exc.expected,
            detail=str(exc)[:2000],
        )
        self._spawn(self.peer.ledger.record, entry)

    async def _verify(self, rs: RoundState, cid: str, announcer: str) -> None:
        assert self.verifier is not None
        if rs.collector is not None:  # what this member admitted need not be fetched again
            for s, ref in rs.collector.refs.items():
                self.pool.put(ref.payload_cid, rs.collector.payloads[s])
        try:
            model = await self.verifier.verify(rs.round, cid, rs.base)
        except VerificationError as exc:
            if exc.unavailable and self._may_retry(cid):
                # listed updates not reachable yet (a slow or lost bitswap want): nothing shows
                # a lie, so the next announcement tries again; a model they stay unreachable
                # for a round timeout is refused (withholding them cannot stall the round)
                log.warning("cannot check round %d model %s yet: %s", rs.round, cid, exc)
                return
            rs.refused.add(cid)
            if announcer == rs.opener:
                rs.opener_failed_at = self.now()
            self._refuse(rs.round, cid, announcer, exc)
            return
        except FedstoreError as exc:  # could not fetch: the next announcement retries
            log.warning("cannot check round %d model %s yet: %s", rs.round, cid, exc)
            return
        finally:
            rs.verifying.discard(cid)
        rs.verified[cid] = model
        self._decide(rs)

    async def _catch_up(self, round: int, cid: str, via: str) -> None:
        """Verify ``cid`` (round ``round``) and every model back to one this member holds."""
        assert self.verifier is not None
        try:
            models = await self.verifier.verify_chain(
                round, cid, lambda r, c: self.known.get((r, c))
            )
        except VerificationError as exc:
            if exc.unavailable and self._may_retry(cid):  # as in _verify: try again later
                log.warning("cannot catch up to round %d (%s) yet: %s", round, cid, exc)
                return
            self._refuse(round, cid, via, exc)
            return
        except FedstoreError as exc:
            log.warning("cannot catch up to round %d (%s) yet: %s", round, cid, exc)
            return
        finally:
            self.catching_up = False
        if not models:
            return
        head = self.head
        if head is not None and models[-1].round < head.round:
            return
        if head is not None and models[-1].round == head.round and not _preferred(models[-1], head):
            self.forks.add(models[-1].cid)  # a valid model of this round, but not the one kept
            log.info("round %d: keeping %s over %s (fork choice)", head.round, head.cid, cid)
            return
        log.info("caught up to round %d (%s) from %s", models[-1].round, models[-1].cid, via)
        for model in models:
            await self._remember(model, via)
        if self.rs is not None:
            self.rs.adopted = True
        self._enter(models[-1])

    def _start_catch_up(self, round: int, cid: str, via: str) -> None:
        if cid in self.forks:
            return
        if cid in self.refused_models:
            self.suspects.add(via)
            self._drop("refused_model", via, f"builds on or announces {cid}")
            return
        rs = self.rs
        if self.catching_up or (rs is not None and (rs.verifying or rs.aggregating)):
            return
        if (round, cid) in self.known:
            return
        self.catching_up = True
        self._spawn(self._catch_up, round, cid, via)

    # -- messages --------------------------------------------------------------------------
    def _on_message(self, sender: str, data: bytes) -> None:
        if sender == self.me:
            return
        if not self.m.allows(sender):
            self._drop("non_member", sender)
            return
        try:
            msg = decode_message(data)
        except MessageError as exc:
            self._drop("malformed", sender, str(exc))
            return
        if msg.federation != self.m.cid:
            self._drop("wrong_federation", sender, str(msg.federation))
            return
        if isinstance(msg, UpdateMessage):
            self._on_update(sender, msg, data)
            return
        if msg.aggregator != sender or not self.m.can(sender, "aggregator"):
            self._drop("not_aggregator", sender, type(msg).__name__)
            return
        if isinstance(msg, RoundOpen):
            self._on_round(sender, msg)
        elif isinstance(msg, RoundResult):
            self._on_result(sender, msg)
        else:
            self._on_done(sender, msg)

    def _same_run(self, session: str | None, sender: str) -> bool:
        if self.session is None:  # not in a run yet: nothing to check it against
            self.quiet[f"{_TOPIC}:before_join"] += 1
            return False
        if session != self.session:
            self._drop("other_run", sender, f"session {session}")
            return False
        return True

    def _on_update(self, sender: str, msg: UpdateMessage, data: bytes) -> None:
        if not self._same_run(msg.session, sender):
            return
        rs = self.rs
        if rs is None or msg.round != rs.round:
            self._drop("other_round", sender, f"round {msg.round}")
            return
        if rs.collector is not None:
            rs.collector.offer_message(sender, msg, data)
        elif msg.cid is None and msg.payload_cid is not None and self.opt.verify:
            self._spawn(self._pool_payload, msg.payload_cid, msg.payload)

    async def _pool_payload(self, cid: str, payload: bytes) -> None:
        from fedstore.ipld.cid import cid_of_bytes

        if await trio.to_thread.run_sync(cid_of_bytes, payload, 1) == cid:
            self.pool.put(cid, payload)

    def _fresh(self, at: float, sender: str, *, ahead: float) -> bool:
        """``at`` is no older than the clock skew allows and no further ahead than ``ahead``."""
        now = self.now()
        if at < now - self.opt.max_clock_skew or at > now + ahead + self.opt.max_clock_skew:
            self._drop("stale", sender, f"time {at:.0f}, now {now:.0f}")
            return False
        return True

    def _on_round(self, sender: str, msg: RoundOpen) -> None:
        assert msg.deadline_at is not None
        if msg.round > self.manifest.rounds:
            self._drop("past_rounds", sender, f"round {msg.round}")
            return
        if not self._fresh(msg.deadline_at, sender, ahead=self.manifest.round_timeout):
            return
        if msg.position != self.m.position(sender, msg.round):
            self._drop("bad_position", sender, f"round {msg.round}")
            return
        if self.session is None or msg.session != self.session:
            self._consider_run(sender, msg)
            return
        rs = self.rs
        if rs is None:
            return
        if msg.round < rs.round:
            self._drop("old_round", sender, f"round {msg.round}")
            return
        if msg.round == rs.round and msg.base_cid == rs.base.cid:
            self._note_opener(rs, sender, msg)
            if self.trains:
                self._train_or_resend(rs, sender, msg)
            return
        if self.manifest.aggregation == "leaderless" and msg.round == rs.round + 1:
            rs.vote(msg.base_cid, sender)  # building on it is announcing it
            rs.announcers.setdefault(msg.base_cid, sender)
        self._start_catch_up(msg.round - 1, msg.base_cid, sender)

    def _note_opener(self, rs: RoundState, sender: str, msg: RoundOpen) -> None:
        assert msg.position is not None and msg.deadline_at is not None
        if self.manifest.aggregation == "leaderless":
            return
        lower = rs.opener_pos is None or msg.position < rs.opener_pos
        again = sender == rs.opener and msg.attempt >= rs.attempt
        if lower or again:
            if rs.opening and sender != self.me:
                rs.opening = False  # a member before this one in the duty order opened it
            rs.opener, rs.opener_pos = sender, msg.position
            rs.attempt, rs.deadline_at = msg.attempt, msg.deadline_at
        if sender == rs.opener:
            rs.opener_seen_at = self.now()

    def _train_or_resend(self, rs: RoundState, sender: str, msg: RoundOpen) -> None:
        if rs.training:
            return
        if rs.update_wire is None:
            rs.training = True
            self._spawn(self._train, rs)
            return
        if sender != rs.opener or self.me in msg.received:
            return
        if msg.attempt != rs.sent_attempt or self.now() - rs.sent_at > self.opt.resend_after:
            rs.sent_at, rs.sent_attempt = self.now(), msg.attempt
            self._spawn(self.peer.publish, rs.update_wire)

    async def _train(self, rs: RoundState) -> None:
        try:
            await self._train_inner(rs)
        finally:
            rs.training = False

    async def _train_inner(self, rs: RoundState) -> None:
        from fedstore.ipld.cid import cid_of_bytes

        assert self.train_fn is not None and self.session is not None
        new, num_samples, metrics = await trio.to_thread.run_sync(
            self.train_fn, rs.base.arrays, rs.round, dict(rs.config)
        )
        payload, encoding = await trio.to_thread.run_sync(
            self._encode_update, rs.base.arrays, dict(new)
        )
        payload_cid = await trio.to_thread.run_sync(cid_of_bytes, payload, 1)
        n = int(num_samples)
        inline = len(payload) + MAX_HEADER_BYTES <= self.inline_limit
        if not inline:
            stored = await self.peer.put_blob(payload)
            if stored != payload_cid:
                raise FedstoreError(f"update stored as {stored}, expected {payload_cid}")
        msg = UpdateMessage(
            rs.round,
            self.me,
            n,
            payload if inline else b"",
            None if inline else payload_cid,
            0 if inline else len(payload),
            base_cid=rs.base.cid,
            metrics=clean_metrics(metrics),
            encoding=encoding,
            federation=self.m.cid,
            session=self.session,
            payload_cid=payload_cid,
        )
        sig = self.peer.signer.sign(UPDATE_DOMAIN, msg.claim())
        msg = replace(msg, sig=encode_signature(sig))
        wire = msg.encode()
        if rs is not self.rs:
            return
        self.pool.put(payload_cid, payload)
        await self.peer.publish(wire)
        rs.update_wire, rs.sent_at, rs.sent_attempt = wire, self.now(), rs.attempt
        self.trained.append(rs.round)
        if rs.collector is not None:  # a member's own update does not come back to it
            rs.collector.offer_message(self.me, msg, wire)
        self.on_event(
            TrainerUpdated(
                rs.round,
                n,
                {k: float(v) for k, v in metrics.items()},
                not inline,
                len(payload),
                encoding or "float32",
            )
        )

    def _encode_update(
        self, base: Mapping[str, NDArray], new: Mapping[str, NDArray]
    ) -> tuple[bytes, str | None]:
        """The update's payload and encoding (None: a float32 checkpoint). A worker thread."""
        if self.encoder is not None:
            try:
                return self.encoder.encode(base, new), self.encoding.text
            except ValueError as exc:  # not the base's layout: the collectors will say why
                log.warning("update not encoded as %s (%s); sending float32", self.encoding, exc)
        return encode_tensors(dict(new), None), None

    def _on_result(self, sender: str, msg: RoundResult) -> None:
        if not self._same_run(msg.session, sender):
            return
        if msg.round > self.manifest.rounds:
            self._drop("past_rounds", sender, f"round {msg.round}")
            return
        rs = self.rs
        if rs is None:
            return
        if msg.round == rs.base.round and msg.cid != rs.base.cid:
            # another valid model of the round this member built on (two standbys took it
            # over at once, say): every member keeps the same one of the two
            if msg.cid not in self.forks and msg.cid not in self.refused_models:
                self._start_catch_up(msg.round, msg.cid, sender)
            return
        if msg.round < rs.round:
            return
        if msg.round == rs.round and msg.base_cid == rs.base.cid:
            rs.announcers.setdefault(msg.cid, sender)
            if self.manifest.aggregation == "leaderless":
                rs.vote(msg.cid, sender)
            if msg.cid in rs.refused or msg.cid in self.refused_models:
                self.suspects.add(sender)
            elif msg.cid not in rs.verified and msg.cid not in rs.verifying:
                rs.verifying.add(msg.cid)
                self._spawn(self._verify, rs, msg.cid, sender)
            self._decide(rs)
            return
        self._start_catch_up(msg.round, msg.cid, sender)

    def _on_done(self, sender: str, msg: Done) -> None:
        if not self._same_run(msg.session, sender):
            return
        assert msg.at is not None
        if not self._fresh(msg.at, sender, ahead=0.0):
            return
        if msg.status == "failed":
            rs = self.rs
            if rs is not None and sender == rs.opener:
                self._finish("failed", f"aggregator {sender}: {msg.reason}")
            return
        if msg.round != self.manifest.rounds:
            self._drop("bad_done", sender, f"round {msg.round}")
            return
        head = self.head
        if head is not None and (head.round, head.cid) == (msg.round, msg.cid):
            return
        self._start_catch_up(msg.round, msg.cid, sender)


def _preferred(a: VerifiedModel, b: VerifiedModel) -> bool:
    """Fork choice between two valid models of one round: more participants, then lower CID."""
    return (-len(a.participants), a.cid) < (-len(b.participants), b.cid)


# -- entry points ------------------------------------------------------------------------


async def take_part(
    peer: FederationPeer,
    membership: Membership,
    *,
    initial: Mapping[str, NDArray] | None = None,
    train: TrainFn | None = None,
    evaluate: EvaluateFn | None = None,
    options: MemberOptions | None = None,
    metadata: Mapping[str, str] | None = None,
    inline_limit: int = DEFAULT_INLINE_LIMIT,
    max_update_bytes: int = 1 << 30,
    on_event: EventSink = noop_sink,
) -> MemberResult:
    """Take part in a federation with a manifest until its last round (module docstring).

    ``initial`` (starting weights) gives an aggregator-capable member its
    duty; ``train`` gives a trainer member its. ``metadata`` is stored with
    every global model this member aggregates (deterministic: verifiers
    recompute it). Returns when the member adopted the last round's model
    (``complete``) or gave up (``failed``).
    """
    if not membership.allows(peer.peer_id):
        from fedstore.errors import ManifestError

        raise ManifestError(
            f"this node ({peer.peer_id}) is not a member of federation "
            f"{membership.manifest.name!r} ({membership.cid})"
        )
    member = Member(
        peer,
        membership,
        options or MemberOptions(),
        initial=initial,
        train=train,
        evaluate=evaluate,
        on_event=on_event,
        metadata=metadata or {},
        inline_limit=inline_limit,
        max_update_bytes=max_update_bytes,
    )
    if not member.aggregates and not member.trains:
        from fedstore.errors import ManifestError

        roles = ", ".join(sorted(membership.manifest.roles_of(peer.peer_id)))
        raise ManifestError(
            f"nothing to do: this node's roles are {roles}, but it was given "
            + ("no initial weights" if "aggregator" in roles else "no train function")
        )
    return await member.run()


async def lead_federation(
    peer: FederationPeer,
    initial: Mapping[str, NDArray],
    settings: AggregatorSettings,
    *,
    evaluate: EvaluateFn | None = None,
    on_event: EventSink = noop_sink,
) -> FederationResult:
    """``lead_rounds`` with a manifest: this member's aggregation duty (module docstring)."""
    assert settings.federation is not None
    options = settings.member or MemberOptions(
        announce_interval=settings.announce_interval,
        linger=settings.linger,
        max_attempts=settings.max_attempts,
        resume=settings.resume,
    )
    result = await take_part(
        peer,
        settings.federation,
        initial=initial,
        evaluate=evaluate,
        options=options,
        metadata=settings.metadata,
        max_update_bytes=settings.max_update_bytes,
        on_event=on_event,
    )
    return FederationResult(
        result.status,
        result.final_round,
        result.final_cid,
        result.history,
        result.rejections,
        result.reason,
        dropped=result.dropped,
    )


async def follow_federation(
    peer: FederationPeer,
    train: TrainFn,
    settings: TrainerSettings,
    *,
    on_event: EventSink = noop_sink,
) -> TrainerResult:
    """``follow_rounds`` with a manifest: this member's training (module docstring)."""
    assert settings.federation is not None
    options = settings.member or MemberOptions(
        resend_after=settings.resend_after, idle_timeout=settings.idle_timeout
    )
    result = await take_part(
        peer,
        settings.federation,
        train=train,
        options=options,
        inline_limit=settings.inline_limit,
        on_event=on_event,
    )
    return TrainerResult(
        result.status, result.final_round, result.final_cid, result.rounds_trained, result.reason
    )
