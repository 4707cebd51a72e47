"""Section ``verify``: what verifying every global model costs a member, per round.

The digits task (:mod:`fedstore.demos.digits_task`: 3 trainers, the
2,410-parameter MLP, FedAvg as in ``fedstore demo``) runs ``verify_rounds``
rounds as a federation with a manifest, through the members-only protocol
(:func:`fedstore.federation.member.take_part`) over the in-memory
:class:`~fedstore.federation.fake.FakeNetwork`: one aggregator member and
three trainer members with real Ed25519 identities, every update signed,
every global model listed with its updates. It runs twice, side by side:
with ``verify = full`` (each trainer member recomputes every global model
from the updates it lists before adopting it) and ``verify = off`` (binding
checks only).

Figures, over the trainer members' rounds 2.. (round 1 includes start-up):
the median seconds one verification takes (fetch and decode of the listed
updates not already heard, the signature checks, aggregation, encoding,
comparison), the median round time (adoption to adoption at a member), and
their ratio, with the target of the issue: verification under 10 % of the
round. The round times of the two runs are compared as well (what the
member's whole round pays for verification, end to end).
"""

from __future__ import annotations

import functools
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from fedstore.bench.common import BenchSizes, Row, SayFn, SectionResult, Target

NAME = "verify"
TITLE = "Verified aggregates"
TRAINERS = 3
#: verification at most this share of a round
TARGET_SHARE = 0.10


def describe(sizes: BenchSizes) -> str:
    return (
        f"digits task, 1 aggregator + {TRAINERS} trainer members x {sizes.verify_rounds} rounds "
        "over the in-memory network, verify full and off side by side"
    )


@dataclass
class _Run:
    #: per trainer member: the seconds each verification took, and adoption times
    verify_seconds: list[float] = field(default_factory=list)
    round_seconds: list[float] = field(default_factory=list)
    accuracy: float = 0.0


def _federate(verify: bool, rounds: int, seed: int) -> _Run:
    import time

    import trio
    from libp2p.crypto.ed25519 import create_new_key_pair

    from fedstore.demos.digits_task import DigitsConfig, DigitsTask
    from fedstore.federation.events import Event, ModelAdopted, RoundClosed
    from fedstore.federation.fake import FakeNetwork, FakePeer
    from fedstore.federation.manifest import Manifest, Member, sign_manifest
    from fedstore.federation.member import MemberOptions, take_part
    from fedstore.federation.membership import Membership
    from fedstore.federation.signing import KeySigner

    task = DigitsTask(TRAINERS, DigitsConfig(seed=seed))
    net = FakeNetwork()
    owner = KeySigner(create_new_key_pair())
    agg = net.signing_peer()
    trainers = [net.signing_peer() for _ in range(TRAINERS)]
    members = [Member(agg.peer_id, frozenset({"aggregator"}))]
    members += [Member(t.peer_id, frozenset({"trainer"})) for t in trainers]
    manifest = Manifest(
        name="verify bench",
        owner=owner.peer_id,
        members=tuple(sorted(members, key=lambda m: m.peer)),
        rounds=rounds,
        round_timeout=60.0,
        quorum=TRAINERS,
    )
    membership = Membership(sign_manifest(manifest, owner))
    options = MemberOptions(verify=verify, announce_interval=0.05, linger=0.2, listen_first=0.1)
    run = _Run()
    adopted_at: dict[str, list[tuple[int, float]]] = {t.peer_id: [] for t in trainers}
    closed: list[RoundClosed] = []

    def on_trainer(peer_id: str, ev: Event) -> None:
        if isinstance(ev, ModelAdopted) and ev.round > 0:
            adopted_at[peer_id].append((ev.round, time.perf_counter()))
            if ev.round > 1 and ev.how in ("full", "binding"):
                run.verify_seconds.append(ev.seconds)

    def on_agg(ev: Event) -> None:
        if isinstance(ev, RoundClosed):
            closed.append(ev)

    async def trainer(i: int, t: FakePeer) -> None:
        await take_part(
            t,
            membership,
            train=task.trainer(i),
            options=options,
            on_event=functools.partial(on_trainer, t.peer_id),
        )

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for i, t in enumerate(trainers, start=1):
                nursery.start_soon(trainer, i, t)
            result = await take_part(
                agg,
                membership,
                initial=task.initial_arrays(),
                evaluate=task.evaluate,
                options=options,
                on_event=on_agg,
            )
            if result.status != "complete":
                raise RuntimeError(f"federation failed: {result.reason}")

    trio.run(main)
    for times in adopted_at.values():
        ordered = [t for _, t in sorted(times)]
        run.round_seconds.extend(b - a for a, b in zip(ordered, ordered[1:], strict=False))
    run.accuracy = float(closed[-1].metrics["accuracy"]) if closed else 0.0
    return run


def run(sizes: BenchSizes, workdir: Path, say: SayFn) -> SectionResult:
    result = SectionResult(
        NAME,
        TITLE,
        params={
            "task": "digits mlp32",
            "trainer members": TRAINERS,
            "rounds": sizes.verify_rounds,
            "strategy": "fedavg",
        },
    )
    say("verify full")
    full = _federate(True, sizes.verify_rounds, 0)
    say("verify off")
    off = _federate(False, sizes.verify_rounds, 0)
    verify = statistics.median(full.verify_seconds)
    round_full = statistics.median(full.round_seconds)
    round_off = statistics.median(off.round_seconds)
    result.add(
        Row(
            "one verification (median, trainer members)",
            "verify full",
            verify,
            "s",
            "time",
            samples=full.verify_seconds,
        )
    )
    result.add(
        Row(
            "round time (median, adoption to adoption)",
            "verify off",
            round_off,
            "s",
            "time",
            samples=off.round_seconds,
        )
    )
    result.add(
        Row(
            "round time (median, adoption to adoption)",
            "verify full",
            round_full,
            "s",
            "time",
            baseline="verify off",
            ratio=round_full / round_off,
            samples=full.round_seconds,
        )
    )
    result.add(
        Row(
            "verification / round time",
            "verify full",
            100 * verify / round_full,
            "%",
            "count",
            target=Target("<", 100 * TARGET_SHARE, on="value", shown=f"{TARGET_SHARE:.0%}"),
        )
    )
    result.notes.append(
        f"final accuracy: verify full {full.accuracy:.3f}, off {off.accuracy:.3f} "
        "(the same models: verification only checks them)"
    )
    return result
