"""``fedstore simulate --fault ...``: a members-only federation on loopback, faults injected.

Every process is a member (or the intruder) started at once on 127.0.0.1
with a fixed port and its own data directory: ``agg-1..agg-A`` (aggregator
role, each dialling the others), ``trainer-1..trainer-N`` (trainer role,
dialling every aggregator), and for ``intruder`` a node outside the manifest
dialling everyone. The faults (:mod:`fedstore.demos.faults`) are injected
as the run goes: the round-R opener is SIGKILLed once it admitted an update
(or 2 s after it opened the round), the liar and the poisoned trainer were
told at start. When every honest member has exited, the hostile processes
are stopped; the clean run (:mod:`fedstore.demos.fault_clean`) follows and
:mod:`fedstore.demos.fault_report` writes the summary and decides the exit
status. The entry point, live view and clean-run glue are in
:mod:`fedstore.demos.fault_demo`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedstore.demos.faults import CRASH, FederationPlan

if TYPE_CHECKING:
    from fedstore.demos.federation_state import DemoState, Proc

__all__ = ["FaultState", "federate_with_faults", "on_event"]

#: seconds after opening its round that the round-R aggregator is killed at the latest
KILL_FALLBACK = 2.0
#: seconds the hostile processes get to stop after a SIGTERM
STOP_GRACE = 5.0


@dataclass
class FaultState:
    """What the fault run saw, folded from the processes' JSON events (stamped on arrival)."""

    demo: DemoState
    plan: FederationPlan
    #: every round_closed: round, cid, aggregator (name), takeover, metrics, participants (names)
    closed: list[dict[str, Any]] = field(default_factory=list)
    #: per process: model_adopted events (round, cid, aggregator name, how, at)
    adopted: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    refused: list[dict[str, Any]] = field(default_factory=list)
    takeovers: list[dict[str, Any]] = field(default_factory=list)
    #: round -> the honest process that opened it first (the round's aggregator)
    opened: dict[int, str] = field(default_factory=dict)
    #: the SIGKILL of aggregator-crash: name, round, at (monotonic), when (which event)
    killed: dict[str, Any] | None = None
    intruder_sent: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def honest(self) -> list[str]:
        """Members that are not hostile (the killed one included)."""
        hostile = self.plan.hostile()
        return [p.name for p in self.plan.members if p.name not in hostile]

    def live_honest(self) -> list[str]:
        gone = {self.killed["name"]} if self.killed else set()
        return [n for n in self.honest() if n not in gone]


def _note(state: FaultState, plain: Callable[[str], None], text: str) -> None:
    state.notes.append(text)
    plain(text)


def _maybe_row(state: FaultState, rnd: int, plain: Callable[[str], None]) -> None:
    """Add round ``rnd`` to the view once an honest member adopted a model whose maker we heard."""
    from fedstore.console import metric_text
    from fedstore.demos.federation_state import RoundInfo

    demo = state.demo
    if any(r.round == rnd for r in demo.rounds):
        return
    honest = set(state.honest())
    cids = [
        a["cid"]
        for n, evs in state.adopted.items()
        if n in honest
        for a in evs
        if a["round"] == rnd
    ]
    made = {c["cid"]: c for c in state.closed if c["round"] == rnd}
    cid = next((c for c in cids if c in made), None)
    if cid is None:
        return
    c = made[cid]
    demo.rounds.append(
        RoundInfo(
            round=rnd,
            participants=list(c["participants"]),
            metrics=dict(c["metrics"]),
            cid=cid,
            size=int(c["size"]),
            bytes_stored=int(c["bytes_stored"]),
            seconds=float(c["seconds"]),
            partial=bool(c["partial"]),
            trainer_metrics=dict(c["trainer_metrics"]),
        )
    )
    demo.rounds.sort(key=lambda r: r.round)
    how = " (takeover)" if c["takeover"] else ""
    plain(
        f"round {rnd:>2}: aggregated by {c['aggregator']}{how}, {len(c['participants'])} "
        f"updates, "
        + "".join(f"{k} {metric_text(v)}, " for k, v in sorted(c["metrics"].items()))
        + f"CID {cid}"
    )


def on_event(
    state: FaultState,
    proc: Proc,
    ev: dict[str, Any],
    plain: Callable[[str], None],
    kill: Callable[[Proc, str], None],
) -> None:
    """Fold one event of ``proc`` into ``state`` (and trigger the crash when it is due)."""
    from fedstore.demos.federation_state import apply_event

    kind = ev.get("event")
    ev["at"] = time.monotonic()
    name_of = state.plan.name_of
    crash = state.plan.faults.get(CRASH)
    if kind == "round_closed":
        state.closed.append(
            {
                "round": int(ev["round"]),
                "cid": str(ev["cid"]),
                "aggregator": proc.name,
                "takeover": bool(ev.get("takeover")),
                "metrics": {str(k): float(v) for k, v in dict(ev.get("metrics") or {}).items()},
                "trainer_metrics": dict(ev.get("trainer_metrics") or {}),
                "participants": sorted(name_of(p) for p in ev.get("participants", [])),
                "partial": bool(ev.get("partial")),
                "size": int(ev.get("size", 0)),
                "bytes_stored": int(ev.get("bytes_stored", 0)),
                "seconds": float(ev.get("seconds", 0.0)),
                "at": ev["at"],
            }
        )
        _maybe_row(state, int(ev["round"]), plain)
        return
    if kind == "model_adopted":
        state.adopted.setdefault(proc.name, []).append(
            {
                "round": int(ev["round"]),
                "cid": str(ev["cid"]),
                "aggregator": name_of(str(ev.get("aggregator", ""))),
                "how": str(ev.get("how", "")),
                "at": ev["at"],
            }
        )
        proc.state, proc.detail = "adopted", f"round {ev['round']}"
        _maybe_row(state, int(ev["round"]), plain)
        return
    if kind == "model_refused":
        state.refused.append(
            {
                "by": proc.name,
                "round": int(ev["round"]),
                "cid": str(ev["cid"]),
                "expected": str(ev.get("expected", "")),
                "aggregator": name_of(str(ev.get("aggregator", ""))),
                "reason": str(ev.get("reason", ""))[:200],
            }
        )
        _note(
            state,
            plain,
            f"round {ev['round']}: {proc.name} refused {ev['cid']} from "
            f"{name_of(str(ev.get('aggregator', '')))} (recomputed: {ev.get('expected') or '-'})",
        )
        return
    if kind == "aggregation_taken_over":
        state.takeovers.append(
            {
                "by": proc.name,
                "round": int(ev["round"]),
                "position": int(ev.get("position", 0)),
                "replaced": name_of(str(ev.get("replaced", ""))),
                "at": ev["at"],
            }
        )
        _note(
            state,
            plain,
            f"round {ev['round']}: {proc.name} takes over from "
            f"{name_of(str(ev.get('replaced', '')))}",
        )
        return
    if kind == "intruder_sent":
        state.intruder_sent = {
            "updates": int(ev.get("updates", 0)),
            "announcements": int(ev.get("announcements", 0)),
            "rounds": state.intruder_sent.get("rounds", 0) + 1,
        }
        proc.state, proc.detail = (
            "intruding",
            (
                f"{state.intruder_sent['updates']} updates, "
                f"{state.intruder_sent['announcements']} announcements sent"
            ),
        )
        return
    if kind == "round_opened":
        rnd = int(ev["round"])
        if proc.name not in state.plan.hostile():  # a liar opens rounds on its own fork
            state.opened.setdefault(rnd, proc.name)
        if crash and rnd == crash.arg and state.opened.get(rnd) == proc.name and not state.killed:
            state.demo.procs[proc.name].detail = f"round {rnd}"
            kill(proc, "fallback")  # arms the fallback timer; kills at once on an update
    if (
        kind == "update_accepted"
        and crash
        and int(ev["round"]) == crash.arg
        and state.opened.get(crash.arg) == proc.name
        and not state.killed
    ):
        kill(proc, "update")
    apply_event(state.demo, proc, ev, plain)


def _argv(args: argparse.Namespace, plan: FederationPlan, name: str, tmp: Path) -> list[str]:
    """The process's command line: it waits offline for ``GO`` (py-libp2p remembers a peer
    that could not be dialled for a while, so nobody dials a peer before it listens)."""
    p = plan.procs[name]
    aggs = [q for q in plan.procs.values() if q.role == "aggregator"]
    # aggregators go online in order, each dialling those before it; the others dial them all
    dial = aggs[: aggs.index(p)] if p.role == "aggregator" else aggs
    # on namespace hosts every process has a disk of its own: objects travel over bitswap
    fs_root = p.data_dir / "objects" if plan.netns else tmp / "objects"
    backends = "filesystem,bitswap" if plan.netns else args.backends
    common = [
        "--app",
        args.app_spec,
        *[f"--app-config={k}={v}" for k, v in args.app_config_values.items()],
        "--data-dir",
        str(p.data_dir),
        "--fs-root",
        str(fs_root),
        "--backends",
        backends,
        "--listen",
        f"/ip4/{p.host}/tcp/{p.port}",
        "--log-level",
        os.environ.get("FEDSTORE_FAULT_LOG_LEVEL", "WARNING"),
        "--go-from-stdin",
        *[f"--bootstrap={q.addr}" for q in dial],
    ]
    if p.role == "intruder":
        return [*p.prefix, sys.executable, "-m", "fedstore.demos.intruder", *common]
    argv = [*p.prefix, sys.executable, "-m", "fedstore.demos.federation_worker", p.role, *common]
    trainers = sum(1 for q in plan.procs.values() if q.role == "trainer")
    idle = 4 * args.round_timeout + 30
    argv += ["--federation", str(plan.manifest_path), "--trainers", str(trainers)]
    argv += ["--index", str(max(1, p.index)), "--idle-timeout", f"{idle:g}"]
    if plan.netns and p.role == "aggregator":
        # separate disks: the last round's objects live on the aggregators alone; they stay
        # a round deadline so members still checking that model can fetch what it lists
        argv += ["--linger", f"{args.round_timeout:g}"]
    if name == plan.poisoned:
        argv.append("--poison")
    if name == plan.liar:
        argv += ["--lie-round", str(plan.faults["lying-aggregator"].arg)]
    return argv


async def federate_with_faults(
    state: FaultState, tmp: Path, plain: Callable[[str], None], refresh: Callable[[], None]
) -> None:
    """Run every process of the plan until the honest members are done (see the module doc)."""
    import trio

    from fedstore.demos.federation import _go, _run_proc

    args, plan, demo = state.demo.args, state.plan, state.demo

    async with trio.open_nursery() as nursery:
        armed: list[str] = []

        def kill(proc: Proc, why: str) -> None:
            if state.killed:
                return
            if why == "fallback":
                if proc.name not in armed:
                    armed.append(proc.name)
                    nursery.start_soon(fallback, proc)
                return
            if proc.process is None or proc.process.returncode is not None:
                return
            os.kill(proc.process.pid, signal.SIGKILL)
            crash_round = plan.faults[CRASH].arg
            state.killed = {
                "name": proc.name,
                "round": crash_round,
                "at": time.monotonic(),
                "when": why,
            }
            _note(
                state,
                plain,
                f"round {crash_round}: SIGKILL to {proc.name}, the round's "
                f"aggregator ({'after it admitted an update' if why == 'update' else 'timer'})",
            )

        async def fallback(proc: Proc) -> None:
            await trio.sleep(KILL_FALLBACK)
            kill(proc, "timer")

        def line(proc: Proc, ev: dict[str, Any]) -> None:
            on_event(state, proc, ev, plain, kill)
            refresh()

        for name in plan.procs:  # every interpreter starts at once: imports overlap
            argv = _argv(args, plan, name, tmp)
            demo.procs[name].went = True
            nursery.start_soon(_run_proc, demo, demo.procs[name], argv, line)
        for p in plan.procs.values():  # online: aggregators one by one, then everyone else
            if p.role == "aggregator":
                await _online(demo.procs[p.name])
        for p in plan.procs.values():
            if p.role != "aggregator":
                nursery.start_soon(_go, demo.procs[p.name], "")
        for name in state.honest():
            await demo.procs[name].exited.wait()
        stopped = []
        for name in sorted(plan.hostile()):  # the liar and the intruder never finish on their own
            proc = demo.procs[name]
            if proc.process is not None and proc.process.returncode is None:
                stopped.append(proc)
                proc.process.terminate()
                with trio.move_on_after(STOP_GRACE):
                    await proc.exited.wait()
                if proc.process.returncode is None:
                    proc.process.kill()
        with trio.move_on_after(STOP_GRACE):
            for name in plan.hostile():
                await demo.procs[name].exited.wait()
        for proc in stopped:
            proc.state, proc.detail = "stopped", "by the demo once the honest members were done"
        if state.killed:
            victim = demo.procs[state.killed["name"]]
            victim.state, victim.detail = "killed", f"SIGKILL in round {state.killed['round']}"
        nursery.cancel_scope.cancel()


async def _online(proc: Proc) -> None:
    """Tell ``proc`` to go online and wait until it listens (ConfigError if it exits first)."""
    import trio

    from fedstore.demos.federation import _go
    from fedstore.errors import ConfigError

    await _go(proc, "")
    async with trio.open_nursery() as wait:

        async def died() -> None:
            await proc.exited.wait()
            raise ConfigError(f"{proc.name} exited before it was ready; see {proc.log_path}")

        wait.start_soon(died)
        await proc.ready.wait()
        wait.cancel_scope.cancel()
