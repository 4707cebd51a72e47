"""The aggregator's side of the round protocol: :func:`lead_rounds`.

Round ``r``, as the aggregator runs it:

1. It asks the strategy for the round's config
   (:meth:`~fedstore.federation.strategies.Strategy.configure_round`) and
   announces ``ROUND r`` (base model ``r-1`` by CID, quorum, seconds left,
   senders received so far, the config) on the training topic, again every
   ``announce_interval`` seconds while the round is open.
2. Trainers that hear it load the base model by CID, run
   ``train(arrays, round, config)`` and publish an ``UPDATE`` (tensors
   inline, or by CID when too large); see :mod:`fedstore.federation.trainer`.
3. The aggregator admits updates through
   :class:`~fedstore.federation.validation.RoundValidator` until the quorum
   is reached or the deadline passes. With at least ``min_updates`` it
   aggregates with the strategy (deterministically,
   :func:`~fedstore.federation.global_model.aggregate_round`), stores the
   strategy's state blob if it has one, saves the new global checkpoint
   (encoded once: local store, backend chain, announcement), evaluates it and
   records the round's metrics (the trainers' combined, the evaluation's, the
   strategy's) with the peer. With fewer updates, or when the strategy
   declines, the round is reported as failed and re-opened, up to
   ``max_attempts`` times, after which the federation ends with status
   ``failed``: it never hangs.
4. After the last round it announces ``DONE`` with the final CID for
   ``linger`` seconds; trainers make sure they hold that checkpoint and stop.

If the peer holds a head locally (a restarted aggregator), the federation
resumes from it, strategy state included (read from the head's metadata and
state blob). The head is never taken from the network unless
``settings.resume`` asks for it: a peer's claim is not this aggregator's
history. Lost messages cost little: a trainer whose id is missing from a
later ``ROUND`` announcement re-sends its update, and an identical re-sent
update is recognised and ignored.

Without a manifest this is an *open* federation: any peer that connects may
send updates (a warning says so once). With ``settings.federation`` (a
:class:`~fedstore.federation.membership.Membership`) the round protocol of
:mod:`fedstore.federation.member` runs instead: members only, signed and
verified aggregates, duty rotating among the aggregator-capable members.

Progress is reported through an ``on_event`` callback with the dataclasses
of :mod:`fedstore.federation.events`.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Mapping

import numpy as np
import numpy.typing as npt
import trio

from fedstore.errors import FedstoreError, FormatError, StrategyError
from fedstore.federation.collect import Admission, Collector, collect_round
from fedstore.federation.events import (
    EventSink,
    FederationResult,
    RoundClosed,
    RoundFailed,
    RoundOpened,
    noop_sink,
)
from fedstore.federation.global_model import (
    ROUND_KEY,
    RoundOutcome,
    aggregate_round,
    decode_state,
    read_strategy_record,
)
from fedstore.federation.messages import (
    Done,
    MessageError,
    RoundOpen,
    check_config,
)
from fedstore.federation.settings import AggregatorSettings
from fedstore.federation.strategies.base import (
    ConfigValue,
    RoundContext,
    Strategy,
    StrategyState,
    Update,
)
from fedstore.federation.transport import (
    Arrays,
    FederationPeer,
    GlobalModel,
    RoundMetrics,
    SavedModel,
)
from fedstore.federation.update_encoding import ENCODING_CONFIG_KEY, UpdateEncoding
from fedstore.federation.validation import (
    ModelSpec,
    RejectionCounter,
    RoundValidator,
)
from fedstore.ipld import same_cid
from fedstore.p2p.guard import DropCounters

__all__ = ["OPEN_MODE_WARNING", "EvaluateFn", "lead_rounds", "publish_round", "warn_open_mode"]

log = logging.getLogger(__name__)

#: said once when a federation runs without a manifest
OPEN_MODE_WARNING = (
    "open federation: no manifest, so any peer that connects may send updates and round "
    "messages; run with --federation MANIFEST (FEDSTORE_FEDERATION) to admit members only"
)

_open_mode_warned: list[bool] = []


def warn_open_mode(logger: logging.Logger) -> None:
    """Log :data:`OPEN_MODE_WARNING` once per process: a process that runs many open
    federations (a simulation, a benchmark, a node that aggregates and trains) says it once."""
    if not _open_mode_warned:
        _open_mode_warned.append(True)
        logger.warning(OPEN_MODE_WARNING)


NDArray = npt.NDArray[np.generic]
#: ``evaluate(arrays) -> metrics`` of a global model (runs in a worker thread)
EvaluateFn = Callable[[Arrays], Mapping[str, float]]


def _announcement(
    me: str,
    rnd: int,
    attempt: int,
    base_cid: str,
    quorum: int,
    validator: RoundValidator,
    config: Mapping[str, ConfigValue],
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
            config=config,
        )

    return announce


def _round_config(
    strategy: Strategy, ctx: RoundContext, encoding: UpdateEncoding
) -> dict[str, ConfigValue]:
    """The strategy's config for the round, plus the update encoding when it is lossy."""
    try:
        config = check_config(strategy.configure_round(ctx))
        if ENCODING_CONFIG_KEY in config:
            raise MessageError(f"{ENCODING_CONFIG_KEY} is reserved for the update encoding")
        if encoding.lossy:
            config = check_config({**config, ENCODING_CONFIG_KEY: encoding.text})
        return config
    except MessageError as exc:
        raise StrategyError(
            f"strategy {strategy.name!r} configured round {ctx.round} with a config that "
            f"cannot be sent: {exc}",
            strategy=strategy.name,
        ) from exc


async def _resume_state(
    peer: FederationPeer, strategy: Strategy, model: GlobalModel
) -> StrategyState:
    """The strategy state stored with the head ``model`` (empty if another strategy made it)."""
    try:
        record = read_strategy_record(model.metadata)
    except FormatError as exc:
        raise FedstoreError(
            f"the head (round {model.round}, {model.cid}) has unreadable strategy metadata: {exc}"
        ) from exc
    if record.name != strategy.name:
        if record.name is not None:
            log.warning(
                "round %d was aggregated with strategy %r; continuing with %r from a fresh state",
                model.round,
                record.name,
                strategy.name,
            )
        return StrategyState()
    if dict(record.settings) != dict(strategy.settings()):
        log.info(
            "strategy %r resumes with settings %s (round %d used %s)",
            strategy.name,
            dict(strategy.settings()),
            model.round,
            dict(record.settings),
        )
    if record.state_cid is None:
        return StrategyState(dict(record.state_values))
    data = await peer.get_blob(record.state_cid, max_size=record.state_size)
    try:
        return await trio.to_thread.run_sync(decode_state, record, data)
    except FormatError as exc:
        raise FedstoreError(
            f"the strategy state {record.state_cid} of round {model.round} is unusable: {exc}"
        ) from exc


def _finite(source: str, metrics: Mapping[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, value in metrics.items():
        try:
            f = float(value)
        except (TypeError, ValueError):
            f = math.nan
        if math.isfinite(f) and isinstance(name, str) and 1 <= len(name) <= 64:
            out[name] = f
        else:
            log.warning(
                "%s metric %r=%r is not recorded (not a finite number)", source, name, value
            )
    return out


async def publish_round(
    peer: FederationPeer,
    round: int,
    outcome: RoundOutcome,
    evaluate: EvaluateFn | None = None,
) -> tuple[SavedModel, dict[str, float]]:
    """Store what :func:`aggregate_round` computed; return the saved model and its evaluation.

    The strategy's state blob first (the checkpoint names it), then the
    global checkpoint - encoded once, by ``save_global`` - then
    ``evaluate`` in a worker thread, then the round's metrics through
    ``peer.record_round`` (a failure to record is logged, not fatal: the
    model is saved and announced by then).
    """
    if outcome.arrays is None:
        raise ValueError(f"round {round} was declined: nothing to publish")
    if outcome.state_blob is not None and outcome.state_cid is not None:
        stored = await peer.put_blob(outcome.state_blob)
        if not same_cid(stored, outcome.state_cid):
            raise FedstoreError(f"strategy state stored as {stored}, expected {outcome.state_cid}")
    rec = await peer.save_global(round, outcome.arrays, outcome.metadata)
    metrics = dict(await trio.to_thread.run_sync(evaluate, outcome.arrays)) if evaluate else {}
    by_source = {
        "trainers": _finite("trainer", outcome.trainer_metrics),
        "evaluate": _finite("evaluate", metrics),
        "strategy": _finite("strategy", outcome.strategy_metrics),
    }
    try:
        await peer.record_round(
            RoundMetrics(
                round,
                rec.cid,
                outcome.participants,
                outcome.num_samples,
                {k: v for k, v in by_source.items() if v},
            )
        )
    except FedstoreError as exc:
        log.error("round %d: metrics not recorded: %s", round, exc)
    return rec, metrics


async def lead_rounds(
    peer: FederationPeer,
    initial: Mapping[str, NDArray],
    settings: AggregatorSettings,
    *,
    evaluate: EvaluateFn | None = None,
    on_event: EventSink = noop_sink,
) -> FederationResult:
    """Run the federation's rounds as aggregator over ``peer``; see the module docstring.

    If the peer holds a head locally (a restarted aggregator; with
    ``settings.resume``, also one learned from the network), the federation
    resumes from it: the head's arrays are loaded by CID, the strategy's
    state from the head's metadata, and the next round is ``head + 1``.
    Otherwise ``initial`` is saved as round 0. With ``settings.federation``
    the members-only protocol of :mod:`fedstore.federation.member` runs.
    """
    if settings.federation is not None:
        from fedstore.federation.member import lead_federation

        return await lead_federation(peer, initial, settings, evaluate=evaluate, on_event=on_event)
    warn_open_mode(log)
    strategy = settings.strategy
    spec = ModelSpec.of(initial)
    totals = RejectionCounter()
    drops = DropCounters()
    history: list[RoundClosed] = []
    bytes_stored = 0
    admission = Admission(
        max_update_bytes=settings.max_update_bytes,
        fetch_timeout=max(5.0, settings.round_timeout / 2),
    )
    async with peer.messages() as inbox:
        head = await (peer.head() if settings.resume else peer.local_head())
        if head is None:
            rec = await peer.save_global(0, initial, {**settings.metadata, ROUND_KEY: "0"})
            base_round, base_cid = 0, rec.cid
            base: Mapping[str, NDArray] = dict(initial)
            state = StrategyState()
            bytes_stored += rec.size
        else:
            base_round, base_cid = head
            model = await peer.load_global(base_round, base_cid)
            if ModelSpec.of(model.arrays) != spec:
                raise FedstoreError(
                    f"the network's head (round {base_round}, {base_cid}) is not this model; "
                    "start with an empty data directory or the same model"
                )
            base = model.arrays
            state = await _resume_state(peer, strategy, model)
            log.info("resuming from round %d (%s)", base_round, base_cid)
        rnd = base_round + 1
        while rnd <= settings.rounds:
            quorum = settings.quorum(rnd)
            ctx = RoundContext(rnd, base_cid, base, state)
            config = _round_config(strategy, ctx, settings.update_encoding)
            closed: RoundClosed | None = None
            outcome: RoundOutcome | None = None
            for attempt in range(1, settings.max_attempts + 1):
                started = trio.current_time()
                validator = RoundValidator(spec, rnd, totals=totals)
                on_event(RoundOpened(rnd, attempt, base_cid, quorum, config))
                # the updates still in work when the attempt ends are moot: cancelled
                async with trio.open_nursery() as work:
                    collector = Collector(
                        peer,
                        validator,
                        base_cid,
                        admission,
                        on_event,
                        work,
                        drops=drops,
                        base=base,
                        encoding=settings.update_encoding,
                    )
                    await collect_round(
                        peer,
                        inbox,
                        collector,
                        _announcement(
                            peer.peer_id, rnd, attempt, base_cid, quorum, validator, config
                        ),
                        quorum,
                        started + settings.round_timeout,
                        settings.announce_interval,
                    )
                    await collector.settle()
                    work.cancel_scope.cancel()
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
                updates: list[Update] = [validator.accepted[s] for s in validator.senders]
                outcome = await trio.to_thread.run_sync(
                    functools.partial(
                        aggregate_round,
                        strategy,
                        ctx,
                        updates,
                        tuple(validator.log_rejections),
                        config=config,
                        extra=settings.metadata,
                    )
                )
                # the updates' arrays are not needed past aggregation: free them before the
                # save and the next round (a large model's updates are most of the memory)
                del updates
                validator.accepted.clear()
                if outcome.arrays is None:
                    on_event(
                        RoundFailed(
                            rnd,
                            attempt,
                            got,
                            settings.min_updates,
                            f"strategy {strategy.name} declined the round: {outcome.reason}",
                        )
                    )
                    continue
                rec, metrics = await publish_round(peer, rnd, outcome, evaluate)
                bytes_stored += rec.size + len(outcome.state_blob or b"")
                closed = RoundClosed(
                    round=rnd,
                    participants=outcome.participants,
                    num_samples=outcome.num_samples,
                    cid=rec.cid,
                    size=rec.size,
                    bytes_stored=bytes_stored,
                    metrics=metrics,
                    partial=got < quorum,
                    rejected=dict(validator.rejections),
                    seconds=round(trio.current_time() - started, 3),
                    trainer_metrics=dict(outcome.trainer_metrics),
                    strategy_metrics=dict(outcome.strategy_metrics),
                )
                on_event(closed)
                break
            if closed is None or outcome is None or outcome.arrays is None:
                reason = (
                    f"round {rnd} failed {settings.max_attempts} time(s): too few updates "
                    f"(need {settings.min_updates}) or declined by the strategy; the last "
                    f"global model is round {rnd - 1}, {base_cid}"
                )
                await _announce_done(peer, rnd - 1, base_cid, "failed", reason, settings)
                return FederationResult(
                    "failed",
                    rnd - 1,
                    base_cid,
                    tuple(history),
                    dict(totals),
                    reason,
                    dropped=drops.snapshot(),
                )
            history.append(closed)
            base_round, base_cid = rnd, closed.cid
            base, state = outcome.arrays, outcome.state
            rnd += 1
        await _announce_done(peer, base_round, base_cid, "complete", "", settings)
    return FederationResult(
        "complete",
        base_round,
        base_cid,
        tuple(history),
        dict(totals),
        dropped=drops.snapshot(),
    )


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
