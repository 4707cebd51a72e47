"""Settings of the round loops: quorum schedule, aggregator and trainer settings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fedstore.federation.messages import DEFAULT_INLINE_LIMIT
from fedstore.federation.strategies.base import Strategy
from fedstore.federation.strategies.builtin import FedAvg
from fedstore.federation.update_encoding import FLOAT32, UpdateEncoding

if TYPE_CHECKING:
    from fedstore.federation.member import MemberOptions
    from fedstore.federation.membership import Membership

__all__ = ["AggregatorSettings", "QuorumSchedule", "TrainerSettings"]


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
    """How :func:`~fedstore.federation.aggregator.lead_rounds` runs a federation.

    ``strategy`` is a :class:`~fedstore.federation.strategies.Strategy`
    instance (by name: :func:`~fedstore.federation.strategies.load_strategy`).
    """

    rounds: int
    strategy: Strategy = field(default_factory=FedAvg)
    quorum: QuorumSchedule = field(default_factory=lambda: QuorumSchedule(1))
    #: fewest updates a round may be aggregated with once the deadline passed
    min_updates: int = 1
    round_timeout: float = 30.0
    announce_interval: float = 0.5
    max_attempts: int = 3
    #: largest update accepted by CID (inline ones are bounded by the message size)
    max_update_bytes: int = 1 << 30
    #: seconds the aggregator keeps announcing DONE (and serving the final model) before it
    #: stops: trainers fetch the final model after DONE, over the network, from it
    linger: float = 5.0
    #: extra, deterministic metadata stored with every global checkpoint
    metadata: Mapping[str, str] = field(default_factory=dict)
    #: take the head from the network if none is held locally (explicit resume)
    resume: bool = False
    #: run members-only under this manifest (strategy, rounds, quorum and
    #: round timeout then come from the manifest; see fedstore.federation.member)
    federation: Membership | None = None
    #: the members-only protocol's own options (verification, fault hooks, ...)
    member: MemberOptions | None = None
    #: how trainers encode their updates (sent in every ROUND's config when lossy);
    #: float32 updates are accepted whatever this says
    update_encoding: UpdateEncoding = FLOAT32


@dataclass(frozen=True, slots=True)
class TrainerSettings:
    """How :func:`~fedstore.federation.trainer.follow_rounds` takes part."""

    #: give up when no message from an aggregator arrives for this long
    idle_timeout: float = 60.0
    inline_limit: int = DEFAULT_INLINE_LIMIT
    #: only follow this aggregator (peer id); None follows the first one heard
    aggregator: str | None = None
    #: seconds after sending before a missing acknowledgement triggers a re-send
    resend_after: float = 1.5
    #: run members-only under this manifest: follow only its aggregators,
    #: verify every global model (see fedstore.federation.member)
    federation: Membership | None = None
    member: MemberOptions | None = None
    #: with a lossy update encoding, carry what it dropped into the next update
    error_feedback: bool = True
