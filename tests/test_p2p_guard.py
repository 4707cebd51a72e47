"""Per-peer token buckets and drop counters (fake clock, no sleeps)."""

from __future__ import annotations

import logging

import pytest

from fedstore.p2p.guard import DropCounters, PeerGuard


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_rate() -> None:
    clock = FakeClock()
    guard = PeerGuard(rate=2.0, burst=5, clock=clock)
    allowed = [guard.allow("A") for _ in range(8)]
    assert allowed == [True] * 5 + [False] * 3
    clock.now += 1.0  # two tokens refill
    assert [guard.allow("A") for _ in range(3)] == [True, True, False]


def test_peers_are_independent() -> None:
    clock = FakeClock()
    guard = PeerGuard(rate=1.0, burst=1, clock=clock)
    assert guard.allow("A")
    assert not guard.allow("A")
    assert guard.allow("B")


def test_bucket_never_exceeds_burst_after_long_idle() -> None:
    clock = FakeClock()
    guard = PeerGuard(rate=100.0, burst=3, clock=clock)
    clock.now += 3600
    assert sum(guard.allow("A") for _ in range(10)) == 3


def test_memory_bounded_lru() -> None:
    clock = FakeClock()
    guard = PeerGuard(rate=1.0, burst=1, max_peers=10, clock=clock)
    for i in range(100):
        guard.allow(f"P{i}")
    assert len(guard._buckets) == 10
    # an evicted peer starts with a full bucket again, a kept one does not
    assert guard.allow("P0")
    assert not guard.allow("P99")


def test_invalid_parameters() -> None:
    with pytest.raises(ValueError):
        PeerGuard(rate=0, burst=1)
    with pytest.raises(ValueError):
        PeerGuard(rate=1, burst=0)


def test_drop_counters_count_everything_but_log_once_per_window(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    counters = DropCounters(quiet_period=10.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="fedstore.p2p.guard"):
        logged = [counters.drop("model-cids", "bad_cid", "PEER1") for _ in range(50)]
        assert logged == [True] + [False] * 49
        assert counters.drop("model-cids", "bad_round", "PEER1")  # other reason: own line
        assert counters.drop("model-cids", "bad_cid", "PEER2")  # other peer: own line
        clock.now += 11
        assert counters.drop("model-cids", "bad_cid", "PEER1")
    assert counters.count() == 53
    assert counters.count("model-cids", "bad_cid") == 52
    assert counters.snapshot() == {"model-cids:bad_cid": 52, "model-cids:bad_round": 1}
    messages = [r.getMessage() for r in caplog.records]
    assert any("49 more" in m for m in messages)
    assert len(messages) == 5  # 4 drop lines + 1 summary
