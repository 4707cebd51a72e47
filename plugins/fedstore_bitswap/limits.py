"""Tunables of the bitswap backend and a fair, cancellation-safe byte budget."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import trio

__all__ = ["BitswapLimits", "ByteBudget"]

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class BitswapLimits:
    """Bounds for serving and fetching. Defaults suit a LAN of a few dozen peers.

    Serving (what one greedy peer can take from this node):

    * ``max_requests_per_peer``: blocks read and sent concurrently for one peer;
    * ``max_queued_wants_per_peer``: want-blocks waiting for one peer; beyond it
      the peer gets DONT_HAVE (if it asked for that) and must ask again later;
    * ``max_entries_per_message``: wantlist entries read from one message;
    * ``max_serving_bytes``: bytes read from disk but not yet handed to the
      network, over all peers (a FIFO budget: every peer waits its turn);
    * ``send_timeout``: a peer that does not read one message within this many
      seconds has its response stream reset;
    * ``max_pending_wants_per_peer``: wants for blocks this node does not hold
      yet, remembered per peer (oldest forgotten first) so that the peer is
      told (HAVE, or the block for a want-block) as soon as the block arrives;
    * ``serve_batch_bytes``: queued blocks read together and sent in one
      message, up to this many bytes (at least one block);
    * ``defer_duplicates``: a block sent to some peer less than this many
      seconds ago is served after the other queued wants (0: never deferred).

    Fetching:

    * ``per_peer_inflight``: most block requests outstanding at one peer; the
      actual limit follows the peer's observed rate (``inflight_horizon``
      seconds of its deliveries, at least 2), and is ``initial_inflight``
      before it has delivered anything;
    * ``window_bytes`` / ``max_window_blocks``: how far ahead of the byte being
      written blocks are requested (this bounds a fetch's memory);
    * ``hedge_after``: a request not answered after this long (or three times
      the peer's usual latency, if longer) is also sent to another peer that
      has the block; the first copy to arrive wins;
    * ``provider_timeout``: a request not answered after this long (or four
      times the peer's usual latency, if longer, but never beyond
      ``block_timeout``) counts as a timeout at that peer and is cancelled
      there; ``max_peer_timeouts`` timeouts in a row drop the peer from the
      fetch, and it is then tried last by every fetch for ``demote_for``
      seconds (a peer that says HAVE and never sends costs one short timeout);
    * ``root_timeout``: how long to wait for any peer to say HAVE for the root;
    * ``stall_timeout``: a fetch that receives no block for this long fails;
    * ``rediscover_interval``: how often peers not yet asked are asked for the
      root and the blocks in the window (peers that join help);
    * ``dont_have_retry``: a block no peer has is asked for again (WANT_HAVE)
      this often, for peers that do not announce blocks they receive;
    * ``max_block_size``: larger blocks are refused (the bitswap spec's 2 MiB);
    * ``max_dag_blocks``: a DAG with more blocks is refused (hostile DAGs).
    """

    max_requests_per_peer: int = 4
    max_queued_wants_per_peer: int = 1024
    max_entries_per_message: int = 4096
    max_serving_bytes: int = 32 * MiB
    send_timeout: float = 30.0
    open_stream_timeout: float = 10.0
    max_pending_wants_per_peer: int = 1024
    serve_batch_bytes: int = 512 * 1024
    defer_duplicates: float = 1.0

    per_peer_inflight: int = 16
    initial_inflight: int = 4
    inflight_horizon: float = 1.0
    window_bytes: int = 32 * MiB
    max_window_blocks: int = 256
    hedge_after: float = 0.5
    provider_timeout: float = 2.0
    block_timeout: float = 15.0
    max_peer_timeouts: int = 3
    demote_for: float = 300.0
    root_timeout: float = 5.0
    stall_timeout: float = 60.0
    rediscover_interval: float = 2.0
    dont_have_retry: float = 1.0
    max_block_size: int = 2 * MiB
    max_dag_blocks: int = 4_000_000

    def __post_init__(self) -> None:
        for name in (
            "max_requests_per_peer",
            "max_queued_wants_per_peer",
            "max_entries_per_message",
            "per_peer_inflight",
            "initial_inflight",
            "max_pending_wants_per_peer",
            "max_window_blocks",
            "max_peer_timeouts",
            "max_dag_blocks",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"BitswapLimits.{name} must be at least 1")
        if self.max_serving_bytes < self.max_block_size:
            raise ValueError("max_serving_bytes must hold at least one block (max_block_size)")
        if self.window_bytes < 1:
            raise ValueError("window_bytes must be positive")
        for name in (
            "send_timeout",
            "open_stream_timeout",
            "inflight_horizon",
            "hedge_after",
            "provider_timeout",
            "block_timeout",
            "demote_for",
            "root_timeout",
            "stall_timeout",
            "rediscover_interval",
            "dont_have_retry",
        ):
            value = getattr(self, name)
            if not (value > 0 and value < float("inf")):
                raise ValueError(f"BitswapLimits.{name} must be a positive number of seconds")
        if not 0 <= self.defer_duplicates < float("inf"):
            raise ValueError("BitswapLimits.defer_duplicates must be a finite number >= 0")
        if self.serve_batch_bytes < 1:
            raise ValueError("serve_batch_bytes must be positive")


class ByteBudget:
    """A byte-counting semaphore with FIFO waiters.

    ``async with budget.hold(n):`` waits until *n* bytes fit (requests larger
    than the capacity are clipped to it), first come first served, so one
    peer's requests cannot overtake everyone else's. Cancellation while
    waiting or holding never leaks capacity.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self.used = 0
        self.peak = 0
        self._waiters: deque[tuple[int, trio.Event]] = deque()

    async def acquire(self, n: int) -> int:
        """Take *n* bytes (clipped to the capacity); return the amount to release."""
        n = max(0, min(n, self.capacity))
        if not self._waiters and self.used + n <= self.capacity:
            self._take(n)
            await trio.lowlevel.checkpoint()
            return n
        entry = (n, trio.Event())
        self._waiters.append(entry)
        try:
            await entry[1].wait()
        except BaseException:
            if entry[1].is_set():
                self.release(n)  # granted just as we were cancelled
            else:
                self._waiters.remove(entry)
                self._wake()
            raise
        return n

    def _take(self, n: int) -> None:
        self.used += n
        self.peak = max(self.peak, self.used)

    def release(self, n: int) -> None:
        self.used -= n
        if self.used < 0:  # pragma: no cover - a bug in a caller
            raise RuntimeError("ByteBudget released more than it granted")
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.used + self._waiters[0][0] <= self.capacity:
            n, event = self._waiters.popleft()
            self._take(n)
            event.set()

    def hold(self, n: int) -> _Hold:
        return _Hold(self, n)


class _Hold:
    def __init__(self, budget: ByteBudget, n: int) -> None:
        self._budget = budget
        self._n = n
        self._granted = 0

    async def __aenter__(self) -> int:
        self._granted = await self._budget.acquire(self._n)
        return self._granted

    async def __aexit__(self, *exc_info: object) -> None:
        self._budget.release(self._granted)
