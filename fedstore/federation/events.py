"""What the round loops report: events as rounds go, and results at the end.

The aggregator and trainer loops (:mod:`fedstore.federation.aggregator`,
:mod:`fedstore.federation.trainer`) call an ``on_event`` callback
(:data:`EventSink`) with the frozen dataclasses below; :func:`event_dict`
turns one into a JSON-ready dict (the demo prints them as JSON lines).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "AggregationTakenOver",
    "Event",
    "EventSink",
    "FederationResult",
    "MemberResult",
    "ModelAdopted",
    "ModelRefused",
    "RoundClosed",
    "RoundFailed",
    "RoundOpened",
    "SessionJoined",
    "TrainerResult",
    "TrainerSynced",
    "TrainerUpdated",
    "UpdateAccepted",
    "event_dict",
    "noop_sink",
]

# -- events --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RoundOpened:
    round: int
    attempt: int
    base_cid: str
    quorum: int
    #: the strategy's config for the round, as sent to the trainers
    config: Mapping[str, str | int | float] = field(default_factory=dict)
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
    #: bytes of this round's global checkpoint
    size: int
    #: bytes stored so far: every global checkpoint and strategy state blob of this run
    bytes_stored: int
    #: the aggregator's evaluation of the new global model (``evaluate``)
    metrics: Mapping[str, float]
    partial: bool
    rejected: Mapping[str, int]
    seconds: float
    #: the trainers' reported metrics, combined by the strategy (weighted mean by default)
    trainer_metrics: Mapping[str, float] = field(default_factory=dict)
    #: the strategy's own figures for the round
    strategy_metrics: Mapping[str, float] = field(default_factory=dict)
    #: who aggregated it (federations with a manifest), and whether it took the round over
    aggregator: str = ""
    takeover: bool = False
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
    #: bytes of the update's payload (inline) or referenced object (by CID)
    size: int
    #: how the payload is encoded (fedstore.federation.update_codec)
    encoding: str = "float32"
    kind: str = "trainer_updated"


@dataclass(frozen=True, slots=True)
class SessionJoined:
    """A member starts (``created``) or joins a federation run at ``round``'s model ``cid``."""

    session: str
    round: int
    cid: str
    created: bool
    kind: str = "session_joined"


@dataclass(frozen=True, slots=True)
class ModelAdopted:
    """A member adopts a round's global model, after checking it (``how``: full, binding, own)."""

    round: int
    cid: str
    aggregator: str
    how: str
    #: seconds the check took (0 for a model this member computed)
    seconds: float
    participants: int
    kind: str = "model_adopted"


@dataclass(frozen=True, slots=True)
class ModelRefused:
    """A member refuses a round's global model: it is not the aggregate of its listed updates."""

    round: int
    cid: str
    #: the CID recomputing the round gave (empty when it could not be recomputed)
    expected: str
    aggregator: str
    reason: str
    kind: str = "model_refused"


@dataclass(frozen=True, slots=True)
class AggregationTakenOver:
    """A standby aggregator aggregates a round the one before it did not deliver."""

    round: int
    position: int
    replaced: str
    kind: str = "aggregation_taken_over"


Event = (
    RoundOpened
    | UpdateAccepted
    | RoundClosed
    | RoundFailed
    | TrainerSynced
    | TrainerUpdated
    | SessionJoined
    | ModelAdopted
    | ModelRefused
    | AggregationTakenOver
)
EventSink = Callable[[Event], None]


def event_dict(event: Event) -> dict[str, Any]:
    """A JSON-ready dict of an event."""
    d = asdict(event)
    for k, v in d.items():
        if isinstance(v, tuple):
            d[k] = list(v)
    return d


def noop_sink(_: Event) -> None:
    """An :data:`EventSink` that drops every event."""
    return None


# -- results -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FederationResult:
    status: str  # "complete" | "failed"
    final_round: int
    final_cid: str
    history: tuple[RoundClosed, ...]
    rejections: Mapping[str, int]
    reason: str = ""
    #: messages dropped before they could be updates, by ``topic:reason``
    #: (e.g. ``fed-learn:foreign_control``: round control from another aggregator)
    dropped: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TrainerResult:
    status: str  # "complete" | "failed"
    final_round: int
    final_cid: str
    rounds_trained: tuple[int, ...]
    reason: str = ""


@dataclass(frozen=True, slots=True)
class MemberResult:
    """How a member's part in a federation run (with a manifest) ended."""

    status: str  # "complete" | "failed"
    final_round: int
    final_cid: str
    session: str
    #: rounds this member trained, and the rounds it aggregated (RoundClosed events)
    rounds_trained: tuple[int, ...] = ()
    history: tuple[RoundClosed, ...] = ()
    #: (round, cid, aggregator, how) of each global model adopted, in order
    adopted: tuple[tuple[int, str, str, str], ...] = ()
    refused: tuple[ModelRefused, ...] = ()
    #: updates refused while aggregating, and messages dropped, by reason
    rejections: Mapping[str, int] = field(default_factory=dict)
    dropped: Mapping[str, int] = field(default_factory=dict)
    reason: str = ""
