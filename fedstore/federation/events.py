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
    "Event",
    "EventSink",
    "FederationResult",
    "RoundClosed",
    "RoundFailed",
    "RoundOpened",
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


Event = RoundOpened | UpdateAccepted | RoundClosed | RoundFailed | TrainerSynced | TrainerUpdated
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


@dataclass(frozen=True, slots=True)
class TrainerResult:
    status: str  # "complete" | "failed"
    final_round: int
    final_cid: str
    rounds_trained: tuple[int, ...]
    reason: str = ""
