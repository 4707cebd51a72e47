"""``collect_round`` fetches updates sent by CID side by side, and a re-sent copy only once."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import trio

from fedstore.federation.collect import Collector, collect_round
from fedstore.federation.events import Event, UpdateAccepted
from fedstore.federation.fake import FakeNetwork, FakePeer
from fedstore.federation.messages import RoundOpen, UpdateMessage, encode_tensors
from fedstore.federation.settings import AggregatorSettings, QuorumSchedule
from fedstore.federation.validation import ModelSpec, RoundValidator
from fedstore.ipld.cid import cid_of_bytes

MODEL: dict[str, npt.NDArray[np.float32]] = {
    "w": np.zeros((8, 4), np.float32),
    "b": np.zeros(4, np.float32),
}
FETCH_SECONDS = 0.5


@dataclass
class SlowFetchPeer(FakePeer):
    """A fake aggregator whose blob fetches take half a second; records when each ran."""

    fetches: list[tuple[str, float, float]] = field(default_factory=list)

    async def get_blob(self, cid: str, *, max_size: int) -> bytes:
        start = trio.current_time()
        await trio.sleep(FETCH_SECONDS)
        data = await super().get_blob(cid, max_size=max_size)
        self.fetches.append((cid, start, trio.current_time()))
        return data


async def _update(net: FakeNetwork, sender: str, delta: float, base_cid: str) -> bytes:
    payload = encode_tensors({k: v + np.float32(delta) for k, v in MODEL.items()})
    cid = await net.peer(sender).put_blob(payload)
    return UpdateMessage(1, sender, 10, b"", cid, len(payload), base_cid=base_cid).encode()


async def _collect(concurrency: int) -> tuple[SlowFetchPeer, RoundValidator, list[Event]]:
    net = FakeNetwork()
    agg = SlowFetchPeer(net, "aggregator")
    base_cid = cid_of_bytes(b"round 0", 1)
    validator = RoundValidator(ModelSpec.of(MODEL), 1)
    settings = AggregatorSettings(rounds=1, quorum=QuorumSchedule(2), round_timeout=60.0)
    events: list[Event] = []
    collector = Collector(agg, validator, base_cid, settings, events.append, base=MODEL)
    first = await _update(net, "trainer-1", 0.5, base_cid)
    second = await _update(net, "trainer-2", 1.5, base_cid)

    def announce(left: float) -> RoundOpen:
        return RoundOpen(1, 0, base_cid, "aggregator", 2, left, received=tuple(validator.senders))

    async with agg.messages() as inbox:
        net.deliver("trainer-1", first)
        net.deliver("trainer-1", first)  # re-sent while the first copy is being fetched
        net.deliver("trainer-2", second)
        with trio.fail_after(30):
            await collect_round(
                agg,
                inbox,
                collector,
                announce,
                2,
                trio.current_time() + 60.0,
                0.5,
                concurrency=concurrency,
            )
    return agg, validator, events


async def test_updates_by_cid_are_fetched_side_by_side_and_a_resent_copy_once() -> None:
    agg, validator, events = await _collect(concurrency=3)
    assert validator.senders == ["trainer-1", "trainer-2"]
    assert sorted(e.sender for e in events if isinstance(e, UpdateAccepted)) == [
        "trainer-1",
        "trainer-2",
    ]
    assert len(agg.fetches) == 2, agg.fetches  # the re-sent copy was not fetched again
    (_, _, end1), (_, start2, _) = sorted(agg.fetches, key=lambda f: f[1])
    assert start2 < end1  # the second fetch did not wait for the first


async def test_one_at_a_time_when_asked() -> None:
    agg, validator, _ = await _collect(concurrency=1)
    assert validator.senders == ["trainer-1", "trainer-2"]
    assert len(agg.fetches) == 2, agg.fetches  # the re-sent copy is recognised afterwards too
    (_, _, end1), (_, start2, _) = sorted(agg.fetches, key=lambda f: f[1])
    assert start2 >= end1
