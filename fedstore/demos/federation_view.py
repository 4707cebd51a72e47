"""The federation demo's output: the Rich live view, the summary and the final report lines."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fedstore.demos.federation_state import DemoState, short_cid

__all__ = ["finish", "render"]


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def render(state: DemoState) -> Any:
    """The live view of ``state``: a table of rounds and one of processes."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    a = state.args
    elapsed = time.monotonic() - state.started
    title = (
        f"fedstore demo · digits · {a.aggregator} · {a.update_encoding} updates · "
        f"{a.trainers} trainers · {a.rounds} rounds · {elapsed:4.1f}s"
    )
    rounds = Table(title=title, title_justify="left", expand=False)
    for col, just in (
        ("round", "right"),
        ("participants", "left"),
        ("test acc", "right"),
        ("centralised", "right"),
        ("train loss", "right"),
        ("update", "right"),
        ("CID", "left"),
        ("stored", "right"),
        ("time", "right"),
    ):
        rounds.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in state.rounds:
        cen = state.centralised[r.round - 1] if len(state.centralised) >= r.round else None
        rounds.add_row(
            str(r.round),
            " ".join(r.participants) + (" (partial)" if r.partial else ""),
            f"{r.accuracy:.3f}",
            f"{cen:.3f}" if cen is not None else "…",
            f"{r.trainer_metrics['train_loss']:.3f}" if "train_loss" in r.trainer_metrics else "-",
            _size(int(sent)) if (sent := state.update_bytes(r.round)) is not None else "-",
            short_cid(r.cid),
            _size(r.bytes_stored),
            f"{r.seconds:.2f}s",
        )
    if state.open_round and (not state.rounds or state.rounds[-1].round < state.open_round):
        rounds.add_row(
            str(state.open_round),
            Text(f"{state.open_updates}/{state.open_quorum} updates…", style="dim"),
            "",
            "",
            "",
            "",
            "",
            "",
            "",
        )
    peers = Table(show_header=True, expand=False, box=None)
    peers.add_column("process")
    peers.add_column("peer id")
    peers.add_column("state")
    for p in state.procs.values():
        style = {"done": "green", "failed": "red", "offline": "dim"}.get(p.state, "")
        peers.add_row(
            p.name,
            p.peer_id[-12:] if p.peer_id else "-",
            Text(f"{p.state} {p.detail}".strip(), style=style),
        )
    return Group(rounds, peers)


def _dir_size(root: Path) -> int:
    total = 0
    if root.is_dir():
        for p in root.rglob("*"):
            if p.is_file():
                total += p.stat().st_size
    return total


def _mean_update_bytes(state: DemoState) -> float | None:
    sizes = [n for per_round in state.update_sizes.values() for n in per_round]
    return round(sum(sizes) / len(sizes), 1) if sizes else None


def _summary(state: DemoState, tmp: Path, wall: float) -> Any:
    from fedstore.demos.federation_report import RoundRow, RunSummary

    args = state.args
    agg = state.procs["aggregator"]
    rows = [
        RoundRow(
            round=r.round,
            participants=len(r.participants),
            accuracy=r.accuracy,
            loss=r.loss,
            centralised_accuracy=(
                state.centralised[r.round - 1] if len(state.centralised) >= r.round else None
            ),
            cid=r.cid,
            size=r.size,
            bytes_stored=r.bytes_stored,
            seconds=r.seconds,
            partial=r.partial,
        )
        for r in state.rounds
    ]
    done = agg.done or {}
    late = args.late_trainer if 1 <= args.late_trainer <= args.trainers else None
    return RunSummary(
        rounds=rows,
        strategy=args.aggregator,
        num_trainers=args.trainers,
        late_trainer=late,
        late_round=args.late_round if late else None,
        final_cid=str(done.get("final_cid", "")),
        peer_final_cids={p.name: p.final_cid for p in state.procs.values() if p.final_cid},
        centralised_final=state.centralised[-1] if state.centralised else 0.0,
        wall_seconds=wall,
        status=str(done.get("status", "failed")),
        backends=[b for b in args.backends.split(",") if b],
        rejections=dict(done.get("rejections", {})),
        reason=str(done.get("reason", "")) or "; ".join(state.failures),
        config={
            "rounds": args.rounds,
            "seed": args.seed,
            "round_timeout": args.round_timeout,
            "objects_bytes": _dir_size(tmp / "objects"),
            "update_encoding": args.update_encoding,
            "update_bytes_mean": _mean_update_bytes(state),
            "task": "digits",
        },
    )


def finish(state: DemoState, tmp: Path, wall: float, console: Any) -> int:
    """Write the report directory, print the outcome; the demo's exit status (0: all good)."""
    from fedstore.catalog import resolve_db_path
    from fedstore.demos.federation_report import write_report

    args = state.args
    summary = _summary(state, tmp, wall)
    paths = write_report(
        args.out,
        summary,
        centralised_curve=state.centralised,
        catalog=resolve_db_path(tmp / "aggregator"),
    )
    doc = summary.to_json()
    ok = summary.status == "complete" and doc["targets"]["all_peers_same_final_cid"]
    for p in state.procs.values():
        if p.state == "failed" or (p.returncode not in (0, None)):
            ok = False
            console.print(f"[red]{p.name} failed[/red] ({p.detail}); log: {p.log_path}")
            args.keep = True
    console.print(
        f"final test accuracy {summary.final_accuracy:.4f}, centralised "
        f"{summary.centralised_final:.4f} (gap {doc['gap_to_centralised']:+.4f}); "
        f"{wall:.1f} s",
        highlight=False,
    )
    agree = sorted(n for n, c in summary.peer_final_cids.items() if c == summary.final_cid)
    console.print(f"final CID {summary.final_cid}: same on {', '.join(agree)}", highlight=False)
    missed = [k for k, v in doc["targets"].items() if not v]
    if missed:
        console.print(f"[yellow]targets not met:[/yellow] {', '.join(missed)}")
    console.print(
        f"report: {args.out.resolve()} ({', '.join(p.name for p in paths.values())})",
        highlight=False,
    )
    return 0 if ok else 1
