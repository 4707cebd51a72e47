"""The members-only round protocol over the in-memory network: rotation, takeover, leaderless.

Every member here is a real Ed25519 identity and every global model is
verified by recomputation, exactly as over real nodes; only the transport is
the in-memory fake. Hostile peers over real nodes are in
tests/test_federation_hostile.py.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import trio
from _federation import (
    AGGREGATOR,
    BOTH,
    MODEL,
    TRAINER,
    kinds,
    make_membership,
    new_signer,
    scaled_trainer,
    shift_trainer,
    signed_update,
)

from fedstore.federation.events import Event, MemberResult, UpdateAccepted
from fedstore.federation.fake import FakeNetwork, FakePeer
from fedstore.federation.member import MemberOptions, take_part
from fedstore.federation.membership import Membership
from fedstore.federation.messages import RoundOpen, encode_tensors
from fedstore.format import decode

pytestmark = pytest.mark.slow  # whole federations with round deadlines, in-process

FAST = MemberOptions(announce_interval=0.05, linger=0.2, listen_first=0.2)
CID = "bafkreibnoelefnzgwbcacyt4vh52ymxvzbjq7mmqhtcnwarfq4lzegsiqe"


class Fed:
    """A federation of fake signing peers with the given roles, run in one nursery."""

    def __init__(self, roles: list[frozenset[str]], **manifest: Any) -> None:
        self.net = FakeNetwork()
        self.owner = new_signer()
        self.peers: list[FakePeer] = [self.net.signing_peer() for _ in roles]
        self.roles = roles
        manifest.setdefault("round_timeout", 2.0)
        self.membership: Membership = make_membership(
            self.owner, {p.peer_id: r for p, r in zip(self.peers, roles, strict=True)}, **manifest
        )
        self.results: dict[int, MemberResult] = {}
        self.events: dict[int, list[Event]] = {i: [] for i in range(len(roles))}

    def index(self, peer_id: str) -> int:
        return next(i for i, p in enumerate(self.peers) if p.peer_id == peer_id)

    async def member(
        self,
        i: int,
        *,
        train: Any = None,
        options: MemberOptions = FAST,
        peer: FakePeer | None = None,
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        def sink(e: Event) -> None:
            self.events[i].append(e)
            if on_event is not None:
                on_event(e)

        roles = self.roles[i]
        self.results[i] = await take_part(
            peer or self.peers[i],
            self.membership,
            initial=MODEL if "aggregator" in roles else None,
            train=(train or shift_trainer(1.0)) if "trainer" in roles else None,
            options=options,
            on_event=sink,
        )

    def finals(self, members: list[int] | None = None) -> set[str]:
        idx = members if members is not None else list(self.results)
        return {self.results[i].final_cid for i in idx}


async def test_rotating_duty_every_member_verifies_and_ends_on_the_same_cid() -> None:
    fed = Fed([BOTH, BOTH, TRAINER, AGGREGATOR, TRAINER], rounds=6, quorum=3, strategy="median")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for i in range(5):
                nursery.start_soon(fed.member, i)
    assert {r.status for r in fed.results.values()} == {"complete"}
    assert len(fed.finals()) == 1 and all(r.final_round == 6 for r in fed.results.values())
    # duty moved between the aggregator-capable members, decided by the manifest's order
    closed = {e.round: e for i in fed.events for e in kinds(fed.events[i], "RoundClosed")}
    assert sorted(closed) == [1, 2, 3, 4, 5, 6]
    for rnd, e in closed.items():
        assert e.aggregator == fed.membership.duty_order(rnd)[0] and not e.takeover
    assert len({e.aggregator for e in closed.values()}) >= 2
    # every member that did not compute a round recomputed it before adopting it
    for i, r in fed.results.items():
        hows = {rnd: how for rnd, _, _, how in r.adopted}
        for rnd, e in closed.items():
            assert hows[rnd] == ("own" if e.aggregator == fed.peers[i].peer_id else "full")
    final = decode(fed.net.blobs[fed.results[0].final_cid])
    assert np.all(final.arrays["w"] == 6.0)
    meta = final.metadata
    assert meta["fedstore.manifest"] == fed.membership.cid
    assert meta["fedstore.session"] == fed.results[0].session
    assert len(meta["fedstore.updates"].split("],[")) == 4  # the four trainer members


async def test_leaderless_majority_adopts_one_cid() -> None:
    fed = Fed([BOTH, BOTH, BOTH, TRAINER], rounds=3, quorum=4, aggregation="leaderless")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(
                    functools.partial(fed.member, i, train=shift_trainer(float(i + 1)))
                )
    assert {r.status for r in fed.results.values()} == {"complete"}
    assert len(fed.finals()) == 1
    # each adopted model was announced by a strict majority of the three aggregators
    final = decode(fed.net.blobs[fed.results[3].final_cid])
    assert np.allclose(final.arrays["w"], 3 * 2.5)  # FedAvg of +1..+4, equal samples


async def test_takeover_when_the_round_aggregator_crashes() -> None:
    fed = Fed([BOTH, BOTH, BOTH, TRAINER], rounds=4, quorum=2, round_timeout=3.0)
    crash_round = 2
    victim = fed.index(fed.membership.duty_order(crash_round)[0])
    scopes: dict[int, trio.CancelScope] = {}
    opened: list[float] = []

    def crash(e: Event) -> None:
        # SIGKILL stand-in: the member stops mid-round, after its ROUND went out
        if isinstance(e, UpdateAccepted) and e.round == crash_round and not opened:
            opened.append(time.time())
            scopes[victim].cancel()

    adopted_at: list[float] = []

    def note(e: Event) -> None:
        if type(e).__name__ == "ModelAdopted" and getattr(e, "round", 0) == crash_round:
            adopted_at.append(time.time())

    async def run(i: int) -> None:
        with trio.CancelScope() as scope:
            scopes[i] = scope
            await fed.member(i, on_event=crash if i == victim else note)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(run, i)
    survivors = [i for i in range(3) if i != victim]
    assert victim not in fed.results
    assert all(fed.results[i].status == "complete" for i in survivors)
    assert len(fed.finals(survivors)) == 1
    took = [e for i in survivors for e in kinds(fed.events[i], "AggregationTakenOver")]
    assert [e.round for e in took] == [crash_round]
    assert took[0].replaced == fed.peers[victim].peer_id
    closed = [e for i in survivors for e in kinds(fed.events[i], "RoundClosed")]
    redone = [e for e in closed if e.round == crash_round]
    assert len(redone) == 1 and redone[0].takeover
    assert redone[0].aggregator == fed.membership.duty_order(crash_round)[1]
    # from the crash to every survivor holding round 2's model: the target is under one round
    # deadline (a figure, printed); a standby acts at the deadline plus a grace, so a second
    # deadline's worth means something hung
    assert len(opened) == 1 and len(adopted_at) == len(survivors)
    cost, deadline = max(adopted_at) - opened[0], fed.membership.manifest.round_timeout
    print(f"takeover: {cost:.2f} s from the crash (target < {deadline:g} s)")
    assert cost < 2 * deadline


async def test_lying_aggregator_is_refused_and_the_round_redone() -> None:
    fed = Fed([BOTH, BOTH, BOTH, TRAINER], rounds=3, quorum=3, round_timeout=3.0)
    lie_round = 2
    liar = fed.index(fed.membership.duty_order(lie_round)[0])

    def lie(rnd: int, arrays: dict[str, Any]) -> dict[str, Any]:
        if rnd != lie_round:
            return arrays
        return {k: (v + np.float32(100.0)).astype(v.dtype) for k, v in arrays.items()}

    liar_options = MemberOptions(announce_interval=0.05, linger=0.2, listen_first=0.2, tamper=lie)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(
                    lambda i=i: fed.member(i, options=liar_options if i == liar else FAST)
                )
    honest = [i for i in range(4) if i != liar]
    assert all(fed.results[i].status == "complete" for i in honest)
    assert len(fed.finals(honest)) == 1
    lie_cid = next(e.cid for e in kinds(fed.events[liar], "RoundClosed") if e.round == lie_round)
    for i in honest:
        refused = fed.results[i].refused
        assert [(e.round, e.cid, e.aggregator) for e in refused] == [
            (lie_round, lie_cid, fed.peers[liar].peer_id)
        ]
        assert refused[0].expected and refused[0].expected != lie_cid
        # never kept, never a head: the ledger says refused, the member's copies hold the truth
        adopted = {(rnd, cid) for rnd, cid, _, _ in fed.results[i].adopted}
        assert (lie_round, lie_cid) not in adopted
        kept = fed.net.kept.get(fed.peers[i].peer_id, {})
        assert kept[lie_round][0] != lie_cid
        assert (
            kept[lie_round][0] == refused[0].expected
        )  # the standby's model is the recomputed one
        ledger = fed.net.ledgers[fed.peers[i].peer_id]
        assert [(e.round, e.cid, e.expected) for e in ledger.refused()] == [
            (lie_round, lie_cid, refused[0].expected)
        ]
    final = decode(fed.net.blobs[fed.results[honest[0]].final_cid])
    assert np.all(final.arrays["w"] == 3.0)  # the lie never reached the chain


async def test_restarted_member_resumes_from_its_ledger() -> None:
    fed = Fed([BOTH, BOTH, TRAINER], rounds=5, quorum=2)
    restarted_at: list[int] = []
    first = trio.CancelScope()

    def stop_after_two(e: Event) -> None:
        if type(e).__name__ == "ModelAdopted" and getattr(e, "round", 0) == 2:
            first.cancel()

    async def restarting() -> None:
        with first:
            await fed.member(2, on_event=stop_after_two)
        restarted_at.append(len(fed.net.ledgers[fed.peers[2].peer_id].adopted()))
        signer = fed.net.signers[fed.peers[2].peer_id]
        await fed.member(2, peer=fed.net.signing_peer(signer))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fed.member, 0)
            nursery.start_soon(fed.member, 1)
            nursery.start_soon(restarting)
    assert {r.status for r in fed.results.values()} == {"complete"}
    assert len(fed.finals()) == 1
    assert restarted_at == [3]  # rounds 0-2 were in its ledger when it stopped
    joined = kinds(fed.events[2], "SessionJoined")
    assert [e.created for e in joined] == [False, False]
    assert joined[1].round >= 2 and joined[1].session == joined[0].session


async def test_messages_from_non_members_are_dropped() -> None:
    fed = Fed([BOTH, TRAINER, TRAINER], rounds=2, quorum=2)
    intruder = fed.net.signing_peer()
    sybils = [fed.net.signing_peer() for _ in range(3)]

    async def flood() -> None:
        payload = encode_tensors({k: np.full_like(v, 1000.0) for k, v in MODEL.items()})
        for _ in range(40):
            for s in sybils:  # well-formed, signed by their own keys: only membership stops them
                signer = fed.net.signers[s.peer_id]
                await s.publish(signed_update(signer, fed.membership.cid, "ab" * 16, 1, payload))
            forged = RoundOpen(99, 98, CID, intruder.peer_id, 1, 5.0)
            await intruder.publish(forged.encode())
            await trio.sleep(0.02)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(fed.member, i)
            nursery.start_soon(flood)
    assert {r.status for r in fed.results.values()} == {"complete"}
    for r in fed.results.values():
        assert r.dropped.get("fed-learn:non_member", 0) >= 40
    final = decode(fed.net.blobs[fed.results[0].final_cid])
    assert np.all(final.arrays["w"] == 2.0)
    members = {p.peer_id for p in fed.peers}
    for e in kinds(fed.events[0], "RoundClosed"):
        assert set(e.participants) <= members


@pytest.mark.parametrize("strategy", ["median", "trimmed-mean"])
@pytest.mark.parametrize("factor", [1000.0, -50.0])
async def test_a_poisoned_member_is_outvoted(strategy: str, factor: float) -> None:
    fed = Fed(
        [BOTH] + [TRAINER] * 4,
        rounds=2,
        quorum=5,
        strategy=strategy,
        strategy_settings={"trim": 0.2} if strategy == "trimmed-mean" else {},
    )
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fed.member, 0)
            for i in range(1, 5):
                fn = scaled_trainer(factor) if i == 4 else shift_trainer(1.0)
                nursery.start_soon(functools.partial(fed.member, i, train=fn))
    final = decode(fed.net.blobs[fed.results[0].final_cid])
    assert np.all(final.arrays["w"] == 2.0)  # as if the poisoned member had trained honestly


async def test_competing_runs_at_start_settle_on_one() -> None:
    fed = Fed([AGGREGATOR, AGGREGATOR, TRAINER, TRAINER], rounds=2, quorum=2)
    eager = MemberOptions(announce_interval=0.05, linger=0.2, listen_first=0.0)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(lambda i=i: fed.member(i, options=eager))
    assert {r.status for r in fed.results.values()} == {"complete"}
    assert len({r.session for r in fed.results.values()}) == 1
    assert len(fed.finals()) == 1


@pytest.mark.parametrize("encoding", ["int8", "topk:0.5"])
async def test_lossy_updates_are_signed_listed_and_verified(encoding: str) -> None:
    """A manifest's lossy update encoding: updates carry it in their signed claim, the global
    model lists it, and every member recomputes the model by decoding them the same way."""
    fed = Fed([BOTH, BOTH, TRAINER], rounds=2, quorum=3, update_encoding=encoding)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(fed.member, i)
    assert {r.status for r in fed.results.values()} == {"complete"}
    assert len(fed.finals()) == 1
    meta = decode(fed.net.blobs[fed.results[0].final_cid]).metadata
    entries = json.loads(meta["fedstore.updates"])
    assert len(entries) == 3 and all(e[4] == encoding for e in entries)
    sent = kinds(fed.events[2], "TrainerUpdated")
    assert [e.encoding for e in sent] == [encoding, encoding]
    # the trainer-only member verified both rounds by decoding the encoded updates
    assert [how for rnd, _, _, how in fed.results[2].adopted if rnd > 0] == ["full", "full"]


async def test_a_late_aggregator_that_started_its_own_run_switches_to_the_one_further_along() -> (
    None
):
    """Aggregators that start far apart may each start a run; every member ends in the one
    with more (verifiable) rounds, whatever the duty order."""
    fed = Fed([BOTH, BOTH, BOTH], rounds=4, quorum=2)
    hasty = MemberOptions(announce_interval=0.05, linger=0.2, listen_first=0.0)
    first_round = trio.Event()

    def note(e: Event) -> None:
        if type(e).__name__ == "ModelAdopted" and getattr(e, "round", 0) == 1:
            first_round.set()

    # it hears nothing (a slow mesh) until it has started a run of its own; deafness ends on
    # that event, not on a clock, so a slow machine cannot let it hear the other run first
    deaf = [True]
    late_id = fed.peers[2].peer_id
    fed.net.drop = lambda sender, receiver, data: receiver == late_id and deaf[0]

    def hear_once_started(e: Event) -> None:
        if type(e).__name__ == "SessionJoined" and getattr(e, "created", False):
            deaf[0] = False

    async def late() -> None:
        await first_round.wait()
        await fed.member(2, options=hasty, on_event=hear_once_started)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(fed.member, 0, on_event=note))
            nursery.start_soon(fed.member, 1)
            nursery.start_soon(late)
    assert {r.status for r in fed.results.values()} == {"complete"}
    assert len({r.session for r in fed.results.values()}) == 1
    assert len(fed.finals()) == 1
    joined = kinds(fed.events[2], "SessionJoined")
    assert joined[0].created and not joined[-1].created  # started its own, then switched


async def test_two_valid_models_of_one_round_settle_on_one() -> None:
    """The opener dies right after sending its update; both standbys aggregate the round
    (the second did not hear the first): two valid models of one round, and neither
    standby can go on alone (quorum 2). Both keep the same one (more participants, then
    the lower CID) and the federation completes."""
    fed = Fed([BOTH, BOTH, BOTH], rounds=4, quorum=2, round_timeout=3.0)
    crash_round = 2
    order = fed.membership.duty_order(crash_round)
    victim, first, second = (fed.index(p) for p in order)
    cut = [False]
    muted = {fed.peers[first].peer_id}
    fed.net.drop = lambda sender, receiver, data: (
        cut[0] and receiver == fed.peers[second].peer_id and sender in muted
    )
    scopes: dict[int, trio.CancelScope] = {}

    crashed = [False]

    def crash(e: Event) -> None:
        right = type(e).__name__ == "TrainerUpdated" and getattr(e, "round", 0) == crash_round
        if right and not crashed[0]:
            crashed[0] = True
            scopes[victim].cancel()

    def second_hook(e: Event) -> None:
        name, rnd = type(e).__name__, getattr(e, "round", 0)
        if name == "ModelAdopted" and rnd == crash_round - 1:
            cut[0] = True  # through round 2 it does not hear the first standby
        if name == "RoundClosed" and rnd == crash_round:
            cut[0] = False

    async def run(i: int) -> None:
        with trio.CancelScope() as scope:
            scopes[i] = scope
            hook = crash if i == victim else second_hook if i == second else None
            await fed.member(i, on_event=hook)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(run, i)
    survivors = [i for i in range(3) if i != victim]
    assert all(fed.results[i].status == "complete" for i in survivors)
    assert len(fed.finals(survivors)) == 1
    assert len({fed.results[i].session for i in survivors}) == 1
    closed = [
        e for i in (first, second) for e in kinds(fed.events[i], "RoundClosed")
        if e.round == crash_round
    ]  # fmt: skip
    assert len({e.cid for e in closed}) == 2 and all(e.takeover for e in closed)
    kept = {
        cid for i in survivors for rnd, cid, _, _ in fed.results[i].adopted if rnd == crash_round
    }
    final_chain = decode(fed.net.blobs[fed.results[first].final_cid]).metadata
    assert final_chain["fedstore.round"] == "4"
    winner = min(closed, key=lambda e: (-len(e.participants), e.cid))
    # the one every member built on is the preferred one (the other was only passed through)
    assert winner.cid in kept
