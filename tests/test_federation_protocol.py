"""The round protocol over the in-memory fake network (no libp2p)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import trio

from fedstore.demos.digits_task import DigitsConfig, DigitsTask
from fedstore.federation.aggregator import lead_rounds
from fedstore.federation.events import (
    Event,
    RoundClosed,
    RoundFailed,
    RoundOpened,
    TrainerSynced,
    UpdateAccepted,
)
from fedstore.federation.fake import FakeNetwork
from fedstore.federation.messages import UpdateMessage, decode_message
from fedstore.federation.settings import AggregatorSettings, QuorumSchedule, TrainerSettings
from fedstore.federation.strategies import load_strategy
from fedstore.federation.trainer import follow_rounds

Arrays = dict[str, npt.NDArray[np.generic]]
MODEL: Arrays = {"w": np.zeros((8, 4), np.float32), "b": np.zeros(4, np.float32)}


def shift_trainer(delta: float, samples: int = 10):  # type: ignore[no-untyped-def]
    """A stand-in training function: adds ``delta`` to every weight."""

    def train(arrays: Mapping[str, npt.NDArray[np.generic]], rnd: int, config: Any):  # type: ignore[no-untyped-def]
        return (
            {k: (v + np.float32(delta)).astype(v.dtype) for k, v in arrays.items()},
            samples,
            {"delta": delta},
        )

    return train


FAST: dict[str, Any] = dict(round_timeout=10.0, announce_interval=0.05, linger=0.2)


async def test_late_trainer_syncs_by_cid_and_everyone_ends_on_the_same_cid() -> None:
    task = DigitsTask(3, DigitsConfig(hidden=8, epochs=1))
    net = FakeNetwork()
    events: list[Event] = []
    results = {}
    settings = AggregatorSettings(
        rounds=6, quorum=QuorumSchedule.parse("2,5:3"), min_updates=2, **FAST
    )
    late_events: list[Event] = []

    async def trainer(i: int, sink: list[Event] | None = None) -> None:
        peer = net.peer(f"trainer-{i}")
        results[i] = await follow_rounds(
            peer,
            task.trainer(i),
            TrainerSettings(idle_timeout=10),
            on_event=(sink.append if sink is not None else lambda e: None),
        )

    async with trio.open_nursery() as nursery:

        def on_event(ev: Event) -> None:
            events.append(ev)
            if isinstance(ev, RoundClosed) and ev.round == 4:
                nursery.start_soon(trainer, 3, late_events)

        nursery.start_soon(trainer, 1)
        nursery.start_soon(trainer, 2)
        result = await lead_rounds(
            net.peer("aggregator"),
            task.initial_arrays(),
            settings,
            evaluate=task.evaluate,
            on_event=on_event,
        )

    assert result.status == "complete" and result.final_round == 6
    closed = [e for e in events if isinstance(e, RoundClosed)]
    assert [e.round for e in closed] == [1, 2, 3, 4, 5, 6]
    assert all(len(e.participants) == 2 for e in closed[:4])
    assert all(len(e.participants) == 3 for e in closed[4:])
    assert not any(e.partial for e in closed)
    # the late trainer first synced round 4's head by CID, then trained rounds 5 and 6
    first_sync = next(e for e in late_events if isinstance(e, TrainerSynced))
    assert (first_sync.round, first_sync.cid) == (4, closed[3].cid)
    assert results[3].rounds_trained == (5, 6)
    assert results[1].rounds_trained == (1, 2, 3, 4, 5, 6)
    assert {r.final_cid for r in results.values()} == {result.final_cid}
    assert result.final_cid == closed[-1].cid
    # the evaluation ran on every round and the model learns
    assert closed[-1].metrics["accuracy"] > closed[0].metrics["accuracy"]
    # every global checkpoint is in the shared store under its CID
    assert all(e.cid in net.blobs for e in closed)


async def test_too_few_updates_is_reported_not_hung() -> None:
    net = FakeNetwork()
    events: list[Event] = []
    settings = AggregatorSettings(
        rounds=3,
        quorum=QuorumSchedule(2),
        min_updates=2,
        round_timeout=0.3,
        announce_interval=0.05,
        max_attempts=2,
        linger=0.2,
    )
    trainer_result = []

    async def lone_trainer() -> None:
        trainer_result.append(
            await follow_rounds(net.peer("t1"), shift_trainer(1.0), TrainerSettings(idle_timeout=5))
        )

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lone_trainer)
            result = await lead_rounds(net.peer("agg"), MODEL, settings, on_event=events.append)
    assert result.status == "failed"
    assert result.final_round == 0
    assert "too few updates" in result.reason
    failed = [e for e in events if isinstance(e, RoundFailed)]
    assert [(e.round, e.attempt, e.received) for e in failed] == [(1, 1, 1), (1, 2, 1)]
    assert trainer_result[0].status == "failed"
    assert trainer_result[0].final_cid == result.final_cid


async def test_partial_round_after_deadline_when_min_updates_met() -> None:
    net = FakeNetwork()
    events: list[Event] = []
    settings = AggregatorSettings(
        rounds=1,
        quorum=QuorumSchedule(3),
        min_updates=2,
        round_timeout=0.3,
        announce_interval=0.05,
        linger=0.1,
    )
    async with trio.open_nursery() as nursery:
        for i, d in ((1, 1.0), (2, 3.0)):
            nursery.start_soon(
                follow_rounds, net.peer(f"t{i}"), shift_trainer(d), TrainerSettings(idle_timeout=5)
            )
        result = await lead_rounds(net.peer("agg"), MODEL, settings, on_event=events.append)
    closed = [e for e in events if isinstance(e, RoundClosed)]
    assert result.status == "complete"
    assert closed[0].partial and closed[0].participants == ("t1", "t2")


async def test_lost_update_is_resent_after_announcement() -> None:
    dropped: list[bytes] = []

    def drop(sender: str, receiver: str, data: bytes) -> bool:
        if sender == "t1" and receiver == "agg" and not dropped:
            msg = decode_message(data)
            if isinstance(msg, UpdateMessage):
                dropped.append(data)
                return True
        return False

    net = FakeNetwork(drop=drop)
    events: list[Event] = []
    settings = AggregatorSettings(rounds=2, quorum=QuorumSchedule(2), min_updates=2, **FAST)
    tset = TrainerSettings(idle_timeout=5, resend_after=0.1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow_rounds, net.peer("t1"), shift_trainer(1.0), tset)
        nursery.start_soon(follow_rounds, net.peer("t2"), shift_trainer(2.0), tset)
        result = await lead_rounds(net.peer("agg"), MODEL, settings, on_event=events.append)
    assert dropped, "the test did not drop anything"
    closed = [e for e in events if isinstance(e, RoundClosed)]
    assert [e.participants for e in closed] == [("t1", "t2"), ("t1", "t2")]
    # an identical re-send is not counted as a duplicate-sender rejection
    assert result.rejections == {}


async def test_bad_updates_are_rejected_and_counted() -> None:
    net = FakeNetwork()
    events: list[Event] = []

    def nan_trainer(arrays: Mapping[str, npt.NDArray[np.generic]], rnd: int, config: Any):  # type: ignore[no-untyped-def]
        return {k: np.full_like(v, np.nan) for k, v in arrays.items()}, 10, {}

    def wrong_shape(arrays: Mapping[str, npt.NDArray[np.generic]], rnd: int, config: Any):  # type: ignore[no-untyped-def]
        return {k: np.zeros((2, 2), np.float32) for k in arrays}, 10, {}

    # quorum 3 is never met (two updates are bad), so the round runs to its deadline
    settings = AggregatorSettings(
        rounds=1,
        quorum=QuorumSchedule(3),
        min_updates=2,
        round_timeout=0.5,
        announce_interval=0.05,
        linger=0.1,
    )
    async with trio.open_nursery() as nursery:
        for name, fn in (
            ("good1", shift_trainer(1.0)),
            ("good2", shift_trainer(3.0)),
            ("evil1", nan_trainer),
            ("evil2", wrong_shape),
        ):
            nursery.start_soon(follow_rounds, net.peer(name), fn, TrainerSettings(idle_timeout=5))
        # a peer that publishes garbage and a spoofed update
        junk = net.peer("junk")
        spoof = UpdateMessage(1, "good1", 10, b"not a checkpoint").encode()

        opened = trio.Event()

        def sink(e: Event) -> None:
            events.append(e)
            if isinstance(e, RoundOpened):
                opened.set()

        async def noise() -> None:
            await opened.wait()  # while the round is open
            await junk.publish(b"FSFL garbage")
            await junk.publish(spoof)

        nursery.start_soon(noise)
        result = await lead_rounds(net.peer("agg"), MODEL, settings, on_event=sink)
    closed = next(e for e in events if isinstance(e, RoundClosed))
    assert closed.participants == ("good1", "good2") and closed.partial
    assert result.rejections.get("non_finite") == 1
    assert result.rejections.get("wrong_shape") == 1
    assert result.rejections.get("malformed") == 1
    assert result.rejections.get("sender_mismatch") == 1


async def test_large_update_goes_by_cid() -> None:
    net = FakeNetwork()
    events: list[Event] = []
    big = {"w": np.zeros((256, 256), np.float32)}  # 256 KiB raw
    settings = AggregatorSettings(rounds=1, quorum=QuorumSchedule(1), **FAST)

    def noisy(arrays: Mapping[str, npt.NDArray[np.generic]], rnd: int, config: Any):  # type: ignore[no-untyped-def]
        rng = np.random.default_rng(rnd)
        return {"w": rng.standard_normal((256, 256)).astype(np.float32)}, 5, {}

    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            follow_rounds,
            net.peer("t1"),
            noisy,
            TrainerSettings(idle_timeout=5, inline_limit=64 * 1024),
        )
        await lead_rounds(net.peer("agg"), big, settings, on_event=events.append)
    acc = [e for e in events if isinstance(e, UpdateAccepted)]
    assert len(acc) == 1 and acc[0].by_cid


async def test_aggregator_scans_updates_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoding an update and scanning it for NaN/Inf read every value: never on trio's thread."""
    import threading

    from fedstore.federation.validation import ModelSpec, RoundValidator

    loop_thread = threading.current_thread()
    scanned_on: list[threading.Thread] = []
    real_problem, real_check = ModelSpec.problem, RoundValidator.check_tensors

    def problem(self: ModelSpec, arrays: Mapping[str, npt.NDArray[np.generic]]) -> Any:
        scanned_on.append(threading.current_thread())
        return real_problem(self, arrays)

    def check_tensors(self: RoundValidator, *args: Any) -> Any:
        scanned_on.append(threading.current_thread())
        return real_check(self, *args)

    monkeypatch.setattr(ModelSpec, "problem", problem)
    monkeypatch.setattr(RoundValidator, "check_tensors", check_tensors)
    net = FakeNetwork()
    events: list[Event] = []
    settings = AggregatorSettings(rounds=1, quorum=QuorumSchedule(2), **FAST)
    async with trio.open_nursery() as nursery:
        for name, delta in (("t1", 1.0), ("t2", 2.0)):
            nursery.start_soon(
                follow_rounds, net.peer(name), shift_trainer(delta), TrainerSettings(idle_timeout=5)
            )
        result = await lead_rounds(net.peer("agg"), MODEL, settings, on_event=events.append)
    assert result.status == "complete"
    assert len([e for e in events if isinstance(e, UpdateAccepted)]) == 2
    assert len(scanned_on) >= 2
    assert loop_thread not in scanned_on


@pytest.mark.parametrize("strategy", ["median", "trimmed-mean"])
async def test_robust_strategies_over_the_protocol(strategy: str) -> None:
    net = FakeNetwork()
    settings = AggregatorSettings(
        rounds=1, strategy=load_strategy(strategy), quorum=QuorumSchedule(3), **FAST
    )
    events: list[Event] = []
    async with trio.open_nursery() as nursery:
        for name, d in (("a", 1.0), ("b", 2.0), ("c", 1000.0)):
            nursery.start_soon(
                follow_rounds, net.peer(name), shift_trainer(d), TrainerSettings(idle_timeout=5)
            )
        result = await lead_rounds(net.peer("agg"), MODEL, settings, on_event=events.append)
    from fedstore.format import decode

    final = decode(net.blobs[result.final_cid])
    if strategy == "median":
        assert np.all(final.arrays["w"] == 2.0)
    else:  # trim=0.2 with 3 updates trims nothing: plain mean
        assert np.allclose(final.arrays["w"], (1 + 2 + 1000) / 3)
    assert final.metadata["fedstore.strategy"] == strategy
    assert final.metadata["fedstore.participants"] == "a,b,c"


async def test_aggregator_resumes_from_head() -> None:
    net = FakeNetwork()
    settings = AggregatorSettings(rounds=2, quorum=QuorumSchedule(1), **FAST)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            follow_rounds, net.peer("t"), shift_trainer(1.0), TrainerSettings(idle_timeout=5)
        )
        first = await lead_rounds(net.peer("agg"), MODEL, settings)
    settings4 = AggregatorSettings(rounds=4, quorum=QuorumSchedule(1), resume=True, **FAST)
    events: list[Event] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            follow_rounds, net.peer("t"), shift_trainer(1.0), TrainerSettings(idle_timeout=5)
        )
        second = await lead_rounds(net.peer("agg2"), MODEL, settings4, on_event=events.append)
    assert first.final_round == 2
    assert [e.round for e in events if isinstance(e, RoundClosed)] == [3, 4]
    from fedstore.format import decode

    assert np.all(decode(net.blobs[second.final_cid]).arrays["w"] == 4.0)
