"""What a fetch knows about each peer, and what the engine remembers across fetches.

:class:`PeerState` is one fetch's view of one peer: its outstanding
requests, what it delivered and how fast, how long its answers take, and
its timeouts in a row. From that come the three numbers the scheduler uses:

* :meth:`PeerState.limit`: how many requests it may have outstanding
  (``initial_inflight`` before its first block; then enough for
  ``inflight_horizon`` seconds of its observed rate, at least 2, at most
  ``per_peer_inflight``);
* :meth:`PeerState.expected`: when a new request to it would be answered
  (queue length over rate; peers without a delivery yet are assumed to take
  ``hedge_after`` per block, demoted peers come last);
* :meth:`PeerState.hedge_delay` / :meth:`PeerState.timeout`: when a request
  is also sent elsewhere, and when it counts as a timeout.

:class:`Reputation` (one per engine) remembers peers that were dropped from a
fetch for timeouts or bad data, so the next fetch tries them last instead of
paying the same timeouts again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from libp2p.peer.id import ID

from fedstore_bitswap.limits import BitswapLimits

__all__ = ["PeerState", "Reputation"]

#: Added to a demoted peer's expected completion time: used only when no one else can.
_DEMOTED = 1e6
#: Weight of the newest sample in the latency average.
_EWMA = 0.25


@dataclass(slots=True)
class PeerState:
    """One fetch's view of one peer (times are ``trio.current_time()`` seconds)."""

    demoted: bool = False
    #: digest -> when the WANT_BLOCK was sent
    inflight: dict[bytes, float] = field(default_factory=dict)
    delivered: int = 0
    bytes_delivered: int = 0
    last_delivery: float = 0.0
    latency: float | None = None
    timeouts_in_row: int = 0
    #: the peer has been sent WANT_HAVE for the root / every want so far
    introduced: bool = False
    #: answered HAVE for the root and never DONT_HAVE: assumed to hold every block
    likely_complete: bool = False
    #: answered DONT_HAVE at least once in this fetch
    refused: bool = False
    _busy_acc: float = 0.0
    _busy_since: float | None = None

    # -- bookkeeping -----------------------------------------------------------------------

    def add(self, digest: bytes, now: float) -> None:
        if not self.inflight:
            self._busy_since = now
        self.inflight[digest] = now

    def remove(self, digest: bytes, now: float) -> float | None:
        """Forget a request; return when it was sent (None if it was not outstanding)."""
        sent = self.inflight.pop(digest, None)
        if sent is not None and not self.inflight and self._busy_since is not None:
            self._busy_acc += now - self._busy_since
            self._busy_since = None
        return sent

    def record_delivery(self, size: int, sent_at: float | None, now: float) -> None:
        self.delivered += 1
        self.bytes_delivered += size
        self.last_delivery = now
        self.timeouts_in_row = 0
        if sent_at is not None:
            sample = max(now - sent_at, 0.0)
            self.latency = (
                sample if self.latency is None else ((1 - _EWMA) * self.latency + _EWMA * sample)
            )

    # -- figures ---------------------------------------------------------------------------

    def busy_seconds(self, now: float) -> float:
        running = now - self._busy_since if self._busy_since is not None else 0.0
        return self._busy_acc + running

    def rate(self, now: float) -> float | None:
        """Bytes per second while it had requests outstanding (None before a delivery)."""
        if not self.delivered:
            return None
        return self.bytes_delivered / max(self.busy_seconds(now), 0.02)

    def limit(self, limits: BitswapLimits, block: int, now: float) -> int:
        if self.demoted:
            return 1
        rate = self.rate(now)
        if rate is None:
            return min(limits.initial_inflight, limits.per_peer_inflight)
        want = int(rate * limits.inflight_horizon / max(block, 1)) + 1
        return max(2, min(want, limits.per_peer_inflight))

    def expected(self, limits: BitswapLimits, block: int, now: float) -> float:
        """Seconds until a request sent now would be answered (for choosing peers)."""
        queued = len(self.inflight) + 1
        rate = self.rate(now)
        per_block = limits.hedge_after if rate is None else max(block, 1) / rate
        return queued * per_block + (_DEMOTED if self.demoted else 0.0)

    def hedge_delay(self, limits: BitswapLimits) -> float:
        if self.latency is None:
            return limits.hedge_after
        return min(max(limits.hedge_after, 3 * self.latency), limits.block_timeout)

    def timeout(self, limits: BitswapLimits) -> float:
        if self.latency is None:
            return min(limits.provider_timeout, limits.block_timeout)
        return min(max(limits.provider_timeout, 4 * self.latency), limits.block_timeout)


class Reputation:
    """Peers dropped from a fetch (timeouts, bad data), remembered for a while.

    A demoted peer is still asked (it may be the only one with a block) but
    last, one request at a time. Bounded: at most ``capacity`` peers.
    """

    def __init__(self, demote_for: float, capacity: int = 4096) -> None:
        self.demote_for = demote_for
        self.capacity = capacity
        self._until: dict[ID, float] = {}
        self._reasons: dict[ID, str] = {}

    def demote(self, peer: ID, now: float, reason: str) -> None:
        if len(self._until) >= self.capacity and peer not in self._until:
            oldest = min(self._until, key=self._until.__getitem__)
            self._until.pop(oldest)
            self._reasons.pop(oldest, None)
        self._until[peer] = now + self.demote_for
        self._reasons[peer] = reason

    def is_demoted(self, peer: ID, now: float) -> bool:
        until = self._until.get(peer)
        if until is None:
            return False
        if now >= until:
            self._until.pop(peer, None)
            self._reasons.pop(peer, None)
            return False
        return True

    def reason(self, peer: ID) -> str | None:
        return self._reasons.get(peer)

    def forgive(self, peer: ID) -> None:
        """A demoted peer delivered a verified block: it is useful after all."""
        self._until.pop(peer, None)
        self._reasons.pop(peer, None)
