"""Per-round state of a member of a federation with a manifest, and its options.

:class:`RoundState` is what a member knows about the round it is in: the
verified base model, who opened the round and until when, the updates its
collector admitted (aggregator-capable members), the global models announced
for it (votes, verifications, refusals) and its own update (trainers).
:class:`MemberOptions` are the knobs of :mod:`fedstore.federation.member`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from fedstore.federation.collect import Collector
from fedstore.federation.strategies.base import ConfigValue
from fedstore.federation.transport import Arrays
from fedstore.federation.validation import RoundValidator
from fedstore.federation.verify import VerifiedModel

__all__ = ["MemberOptions", "RoundState", "Tamper"]

#: a fault hook: the arrays an aggregator publishes instead of the aggregate
Tamper = Callable[[int, Arrays], Arrays]


@dataclass(frozen=True, slots=True)
class MemberOptions:
    """How a member takes part (the rules every member shares are in the manifest).

    ``verify`` False (``verify = off``) adopts announced models after the
    binding checks only (federation, run, round, base, listed updates'
    signatures) without recomputing them. ``resume`` lets an aggregator with
    no run of this federation in its catalog join one it did not start from
    its own initial weights. ``clock`` gives Unix time (deadlines in messages
    are absolute, so members' clocks must agree to within
    ``max_clock_skew``). ``tamper`` is a fault hook for tests and the fault
    demo: an aggregator with it publishes ``tamper(round, aggregate)``
    under the aggregate's metadata - a lie every verifying member refuses.
    """

    verify: bool = True
    announce_interval: float = 0.5
    #: seconds an aggregator keeps announcing DONE after the last round
    linger: float = 1.5
    #: attempts of a round that gets too few updates before the run fails
    max_attempts: int = 3
    resend_after: float = 1.5
    #: give up after this long without progress (None: 4 round timeouts + 30 s)
    idle_timeout: float | None = None
    resume: bool = False
    #: seconds a fresh aggregator listens for a running session before starting one
    listen_first: float = 1.0
    max_clock_skew: float = 30.0
    clock: Callable[[], float] = time.time
    tamper: Tamper | None = None


@dataclass(eq=False)
class RoundState:
    """One round as a member sees it (see the module docstring)."""

    round: int
    base: VerifiedModel
    #: Unix time the member entered the round (after adopting the base)
    entered: float
    config: Mapping[str, ConfigValue] = field(default_factory=dict)
    # -- opening (rotate: the lowest duty position heard opening; leaderless: own) --
    opener: str | None = None
    opener_pos: int | None = None
    attempt: int = 1
    deadline_at: float | None = None
    opening: bool = False
    #: Unix time the opener's announced model was refused (takeover counts from it)
    opener_failed_at: float | None = None
    #: Unix time the opener's ROUND was last heard (it repeats it while the round is open)
    opener_seen_at: float | None = None
    #: this member took the round over from the duty order's earlier members (its model,
    #: whether it aggregates at once or re-opens the round first, is a takeover)
    taken_over: bool = False
    # -- collecting and aggregating (aggregator-capable members) --
    validator: RoundValidator | None = None
    collector: Collector | None = None
    aggregating: bool = False
    own_cid: str | None = None
    # -- global models announced for this round --
    votes: dict[str, set[str]] = field(default_factory=dict)
    announcers: dict[str, str] = field(default_factory=dict)
    verifying: set[str] = field(default_factory=set)
    verified: dict[str, VerifiedModel] = field(default_factory=dict)
    refused: set[str] = field(default_factory=set)
    my_vote: str | None = None
    adopted: bool = False
    # -- training (trainer members) --
    training: bool = False
    update_wire: bytes | None = None
    sent_at: float = 0.0
    sent_attempt: int = 0

    def vote(self, cid: str, voter: str) -> int:
        """Count ``voter``'s announcement of ``cid`` (one vote per member); return its votes."""
        for voters in self.votes.values():
            voters.discard(voter)
        self.votes.setdefault(cid, set()).add(voter)
        return len(self.votes[cid])
