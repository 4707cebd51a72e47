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
of :mod:`fedstore.federation.events` (the demo prints them as JSON lines).

The loops live in :mod:`fedstore.federation.aggregator` and
:mod:`fedstore.federation.trainer`, their settings in
:mod:`fedstore.federation.settings`; this module re-exports the lot, so
``from fedstore.federation.roles import run_aggregator, run_trainer`` keeps
working.
"""

from __future__ import annotations

from fedstore.federation.aggregator import EvaluateFn, aggregate_round, run_aggregator
from fedstore.federation.events import (
    Event,
    EventSink,
    FederationResult,
    RoundClosed,
    RoundFailed,
    RoundOpened,
    TrainerResult,
    TrainerSynced,
    TrainerUpdated,
    UpdateAccepted,
    event_dict,
    noop_sink,
)
from fedstore.federation.settings import AggregatorSettings, QuorumSchedule, TrainerSettings
from fedstore.federation.trainer import TrainFn, run_trainer

__all__ = [
    "AggregatorSettings",
    "EvaluateFn",
    "Event",
    "EventSink",
    "FederationResult",
    "QuorumSchedule",
    "RoundClosed",
    "RoundFailed",
    "RoundOpened",
    "TrainFn",
    "TrainerResult",
    "TrainerSettings",
    "TrainerSynced",
    "TrainerUpdated",
    "UpdateAccepted",
    "aggregate_round",
    "event_dict",
    "noop_sink",
    "run_aggregator",
    "run_trainer",
]
