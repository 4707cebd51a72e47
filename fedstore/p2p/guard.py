"""Per-peer flood protection and counters for dropped input.

:class:`PeerGuard` is a token bucket per peer: a peer may send ``burst``
messages at once and ``rate`` per second after that; what exceeds it is
dropped. :class:`DropCounters` counts every dropped message by topic and
reason and writes one log line per drop, except during a flood: after the
first line for a (peer, reason) pair, further drops within ``quiet_period``
seconds are only counted, and one summary line reports them when the period
is over. Neither ever raises on bad input. Both are plain synchronous objects
(no I/O), safe to call from pubsub validators.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["DropCounters", "PeerGuard", "TokenBucket"]

log = logging.getLogger(__name__)

Clock = Callable[[], float]


@dataclass(slots=True)
class TokenBucket:
    """A token bucket; :meth:`take` says whether one more event is allowed now."""

    rate: float
    burst: float
    tokens: float
    updated: float

    def take(self, now: float, cost: float = 1.0) -> bool:
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        self.updated = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False


class PeerGuard:
    """Rate-limits messages per peer id. Memory is bounded by *max_peers* (LRU)."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_peers: int = 4096,
        clock: Clock = time.monotonic,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = float(rate)
        self.burst = float(burst)
        self._max_peers = max_peers
        self._clock = clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def allow(self, peer: str) -> bool:
        """Record one message from *peer*; False if it exceeds the peer's allowance."""
        now = self._clock()
        bucket = self._buckets.get(peer)
        if bucket is None:
            bucket = TokenBucket(self.rate, self.burst, self.burst, now)
            self._buckets[peer] = bucket
            if len(self._buckets) > self._max_peers:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(peer)
        return bucket.take(now)


class DropCounters:
    """Counts dropped messages by ``(topic, reason)`` and logs them without flooding the log."""

    def __init__(self, *, quiet_period: float = 10.0, clock: Clock = time.monotonic) -> None:
        self._counts: Counter[tuple[str, str]] = Counter()
        self._quiet_period = quiet_period
        self._clock = clock
        # (peer, reason) -> (window start, drops suppressed since)
        self._windows: OrderedDict[tuple[str, str], tuple[float, int]] = OrderedDict()

    def drop(self, topic: str, reason: str, peer: str, detail: str = "") -> bool:
        """Count one dropped message; return True if a log line was written for it."""
        self._counts[(topic, reason)] += 1
        now = self._clock()
        key = (peer, reason)
        window = self._windows.get(key)
        if window is not None and now - window[0] < self._quiet_period:
            self._windows[key] = (window[0], window[1] + 1)
            return False
        if window is not None and window[1]:
            log.warning(
                "dropped %d more message(s) from %s (%s) in the last %.0f s",
                window[1],
                peer,
                reason,
                now - window[0],
            )
        self._windows[key] = (now, 0)
        self._windows.move_to_end(key)
        if len(self._windows) > 4096:
            self._windows.popitem(last=False)
        log.warning(
            "dropped message on %s from %s: %s%s",
            topic,
            peer,
            reason,
            f" ({detail})" if detail else "",
        )
        return True

    def count(self, topic: str | None = None, reason: str | None = None) -> int:
        """Total drops, optionally restricted to one topic and/or reason."""
        return sum(
            n
            for (t, r), n in self._counts.items()
            if (topic is None or t == topic) and (reason is None or r == reason)
        )

    def snapshot(self) -> dict[str, int]:
        """``{"<topic>:<reason>": count}``, sorted, for status output."""
        return {f"{t}:{r}": n for (t, r), n in sorted(self._counts.items())}
