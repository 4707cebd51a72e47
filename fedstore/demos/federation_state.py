"""What a simulation knows about its processes and rounds, and how worker events update it.

Each worker process (``python -m fedstore.demos.federation_worker``) prints JSON
lines; :func:`apply_event` folds one into the :class:`DemoState` that the
live view (:mod:`fedstore.demos.federation_view`) renders. The same state
serves ``fedstore simulate`` of any app and ``fedstore demo`` (the digits
app): metrics are whatever the app's ``evaluate`` and ``train`` report.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedstore.console import metric_text

if TYPE_CHECKING:  # trio loads when the demo runs, not for `fedstore --help`
    import trio

__all__ = ["DemoState", "Proc", "RoundInfo", "apply_event", "primary_metric", "short_cid"]


def _event() -> trio.Event:
    import trio

    return trio.Event()


@dataclass
class Proc:
    name: str
    role: str
    index: int = 0
    state: str = "offline"
    peer_id: str = ""
    addr: str = ""
    detail: str = ""
    final_cid: str = ""
    done: dict[str, Any] | None = None
    returncode: int | None = None
    log_path: Path | None = None
    #: the trainer was told to go online
    went: bool = False
    process: Any = None
    spawned: trio.Event = field(default_factory=_event)
    ready: trio.Event = field(default_factory=_event)
    exited: trio.Event = field(default_factory=_event)


@dataclass
class RoundInfo:
    round: int
    participants: list[str]
    #: the aggregator's evaluation of the round's global model (the app's ``evaluate``)
    metrics: dict[str, float]
    cid: str
    size: int
    bytes_stored: int
    seconds: float
    partial: bool
    #: the trainers' metrics combined by the strategy, as the aggregator reported them
    trainer_metrics: dict[str, float] = field(default_factory=dict)


def primary_metric(names: list[str] | set[str]) -> str:
    """The evaluation metric a run is judged and drawn by: ``accuracy`` if there, else the first."""
    if not names:
        return ""
    return "accuracy" if "accuracy" in names else sorted(names)[0]


@dataclass
class DemoState:
    """Everything the live view and the report show.

    ``args`` carries the run's settings as resolved (``strategy``,
    ``rounds``, ``trainers``, ``update_encoding``, ``backends``, ...);
    ``command`` is ``demo`` or ``simulate``; ``app`` the app's name.
    """

    args: argparse.Namespace
    procs: dict[str, Proc]
    started: float
    command: str = "simulate"
    app: str = "app"
    rounds: list[RoundInfo] = field(default_factory=list)
    open_round: int = 0
    open_updates: int = 0
    open_quorum: int = 0
    failures: list[str] = field(default_factory=list)
    #: the app's baseline (non-federated reference) metrics, one dict per round
    baseline: list[dict[str, float]] = field(default_factory=list)
    #: False when the app has no baseline (nothing to wait for or show)
    has_baseline: bool = True
    #: bytes of each update the trainers sent, by round
    update_sizes: dict[int, list[int]] = field(default_factory=dict)

    def update_bytes(self, round: int) -> float | None:
        """Mean bytes of the updates sent for ``round`` (None before any)."""
        sizes = self.update_sizes.get(round)
        return sum(sizes) / len(sizes) if sizes else None

    @property
    def metric(self) -> str:
        """The primary evaluation metric (see :func:`primary_metric`), "" before any round."""
        return primary_metric({k for r in self.rounds for k in r.metrics})

    def baseline_value(self, round: int, metric: str | None = None) -> float | None:
        """The baseline's ``metric`` (default: the primary one) after ``round``, if known."""
        name = metric or self.metric
        if len(self.baseline) >= round >= 1:
            value = self.baseline[round - 1].get(name)
            return None if value is None else float(value)
        return None

    def name_of(self, peer_id: str) -> str:
        for p in self.procs.values():
            if p.peer_id == peer_id:
                return p.name
        return peer_id[:10]


def short_cid(cid: str) -> str:
    """``cid`` shortened for a table cell (head…tail)."""
    return cid if len(cid) <= 20 else f"{cid[:8]}…{cid[-8:]}"


def apply_event(
    state: DemoState, proc: Proc, ev: dict[str, Any], plain: Callable[[str], None]
) -> None:
    """Fold one worker event ``ev`` of ``proc`` into ``state``; ``plain`` prints a line."""
    kind = ev.get("event")
    if kind == "waiting":
        proc.state, proc.detail = "offline", "(process up, no node yet)"
    elif kind == "ready":
        proc.peer_id = str(ev.get("peer_id", ""))
        proc.addr = str(ev.get("addr", ""))
        proc.state = "ready"
        proc.ready.set()
    elif kind == "round_opened":
        state.open_round = int(ev["round"])
        state.open_quorum = int(ev["quorum"])
        state.open_updates = 0
        proc.state, proc.detail = "collecting", f"round {ev['round']}"
    elif kind == "update_accepted":
        state.open_updates += 1
    elif kind == "round_closed":
        info = RoundInfo(
            round=int(ev["round"]),
            participants=sorted(state.name_of(p) for p in ev["participants"]),
            metrics={str(k): float(v) for k, v in dict(ev.get("metrics") or {}).items()},
            cid=str(ev["cid"]),
            size=int(ev["size"]),
            bytes_stored=int(ev["bytes_stored"]),
            seconds=float(ev["seconds"]),
            partial=bool(ev["partial"]),
            trainer_metrics={
                str(k): float(v) for k, v in dict(ev.get("trainer_metrics") or {}).items()
            },
        )
        state.rounds.append(info)
        sent = state.update_bytes(info.round)
        plain(
            f"round {info.round:>2}: {len(info.participants)} participants "
            f"({' '.join(info.participants)}), "
            + "".join(f"{k} {metric_text(v)}, " for k, v in sorted(info.metrics.items()))
            + "".join(
                f"trainers' {k} {metric_text(v)}, " for k, v in sorted(info.trainer_metrics.items())
            )
            + (f"updates {sent:,.0f} B, " if sent is not None else "")
            + f"CID {info.cid}, {info.bytes_stored} bytes stored"
        )
    elif kind == "round_failed":
        msg = f"round {ev['round']} attempt {ev['attempt']} failed: {ev['reason']}"
        state.failures.append(msg)
        plain(msg)
    elif kind == "trainer_synced":
        proc.state, proc.detail = "synced", f"round {ev['round']} {short_cid(str(ev['cid']))}"
    elif kind == "trainer_updated":
        proc.state, proc.detail = "sent update", f"round {ev['round']}"
        state.update_sizes.setdefault(int(ev["round"]), []).append(int(ev["size"]))
    elif kind == "done":
        proc.done = ev
        # the CID the peer's own catalog names as its head, not just what it was told
        head = ev.get("local_head")
        proc.final_cid = str(head[1]) if isinstance(head, list) and len(head) == 2 else ""
        if proc.final_cid != ev.get("final_cid"):
            state.failures.append(f"{proc.name}: local head {head} is not the final CID")
        proc.state = "done" if ev.get("status") == "complete" else "failed"
        proc.detail = f"round {ev.get('final_round')} {short_cid(proc.final_cid)}"
    elif kind == "exported":
        plain(f"final model written to {ev.get('path')} ({ev.get('parameters')} parameters)")
    elif kind == "error":
        proc.state, proc.detail = "failed", str(ev.get("message", ""))[:80]
