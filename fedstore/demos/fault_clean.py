"""The clean run a fault run is compared with: the same federation, no fault, in-process.

:func:`clean_run` runs the fault run's federation - the same signed
manifest, the same member identities, the same app, data split, seed and
strategy - through the real round protocol (:func:`fedstore.federation.member.take_part`,
every model verified by recomputation) over the in-memory network
(:class:`fedstore.federation.fake.FakeNetwork`) instead of processes on
loopback, with every member honest and alive. Training is deterministic per
(seed, trainer, round) and aggregation is bit-exact, so it yields the weights
a clean process run would (the session id differs, hence the CIDs); it costs
the training time only, not seven more interpreters.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from fedstore.errors import FedstoreError

if TYPE_CHECKING:
    from fedstore.app import App
    from fedstore.demos.faults import FederationPlan

__all__ = ["CleanRun", "clean_run"]


@dataclass(frozen=True, slots=True)
class CleanRun:
    """What the clean run ended with."""

    status: str
    final_round: int
    #: the app's evaluation of the final model (empty if the app has no evaluate)
    metrics: dict[str, float]
    #: the final model's arrays (compared with the fault run's)
    arrays: dict[str, Any]
    seconds: float
    reason: str = ""


async def clean_run(plan: FederationPlan, app: App, work: Path) -> CleanRun:
    """Run ``plan``'s federation without faults in-process (see the module docstring)."""
    from fedstore.app import TrainerContext
    from fedstore.federation.events import MemberResult
    from fedstore.federation.fake import FakeNetwork
    from fedstore.federation.member import MemberOptions, take_part
    from fedstore.federation.signing import load_signer
    from fedstore.format import decode

    started = time.monotonic()
    membership = plan.membership
    net = FakeNetwork(buffer=4096)
    options = MemberOptions(announce_interval=0.05, linger=0.2, listen_first=0.2)
    initial = await trio.to_thread.run_sync(app.initial_arrays)
    trainers = sum(1 for p in plan.members if p.role == "trainer")
    results: dict[str, MemberResult] = {}

    async def member(name: str) -> None:
        proc = plan.procs[name]
        peer = net.signing_peer(load_signer(proc.data_dir))
        train = None
        if proc.role == "trainer":
            context = TrainerContext(proc.index, trainers, work / "clean" / name)
            train = await trio.to_thread.run_sync(app.train_fn, context)
        results[name] = await take_part(
            peer,
            membership,
            initial=initial if proc.role == "aggregator" else None,
            train=train,
            evaluate=None,
            options=options,
        )

    async with trio.open_nursery() as nursery:
        for p in plan.members:
            nursery.start_soon(member, p.name)
    done = [r for r in results.values() if r.status == "complete"]
    seconds = time.monotonic() - started
    if len(done) != len(results) or len({r.final_cid for r in done}) != 1:
        reasons = "; ".join(sorted({r.reason for r in results.values() if r.reason}))
        return CleanRun("failed", -1, {}, {}, seconds, reasons or "members disagree")
    final = done[0]
    try:
        ckpt = await trio.to_thread.run_sync(decode, net.blobs[final.final_cid])
    except (KeyError, FedstoreError) as exc:
        return CleanRun("failed", final.final_round, {}, {}, seconds, f"final model: {exc}")
    arrays = dict(ckpt.arrays)
    metrics: dict[str, float] = {}
    evaluate = app.evaluate_fn()
    if evaluate is not None:
        metrics = dict(await trio.to_thread.run_sync(evaluate, arrays))
    return CleanRun("complete", final.final_round, dict(metrics), arrays, seconds)
