"""A simulation's output: the Rich live view, the summary and the final report lines."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fedstore.console import metric_text, size_text
from fedstore.demos.federation_state import DemoState, short_cid

__all__ = ["finish", "render"]

#: evaluation metrics shown as columns of the live view (the primary one first)
MAX_EVAL_COLUMNS = 2


def _eval_columns(state: DemoState) -> list[str]:
    names = sorted({k for r in state.rounds for k in r.metrics})
    first = state.metric
    ordered = ([first] if first else []) + [n for n in names if n != first]
    return ordered[:MAX_EVAL_COLUMNS]


def _trainer_column(state: DemoState) -> str | None:
    names = sorted({k for r in state.rounds for k in r.trainer_metrics})
    if "train_loss" in names:
        return "train_loss"
    return names[0] if names else None


def render(state: DemoState) -> Any:
    """The live view of ``state``: a table of rounds and one of processes."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    a = state.args
    elapsed = time.monotonic() - state.started
    title = (
        f"fedstore {state.command} · {state.app} · {a.strategy} · {a.update_encoding} updates · "
        f"{a.trainers} trainers · {a.rounds} rounds · {elapsed:4.1f}s"
    )
    evals = _eval_columns(state)
    trainer_col = _trainer_column(state)
    rounds = Table(title=title, title_justify="left", expand=False)
    columns = [("round", "right"), ("participants", "left")]
    columns += [(name, "right") for name in evals]
    columns += [("baseline", "right")] if state.has_baseline else []
    columns += [(f"trainers' {trainer_col}", "right")] if trainer_col else []
    columns += [("update", "right"), ("CID", "left"), ("stored", "right"), ("time", "right")]
    for col, just in columns:
        rounds.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in state.rounds:
        cells = [str(r.round), " ".join(r.participants) + (" (partial)" if r.partial else "")]
        cells += [metric_text(r.metrics[n]) if n in r.metrics else "-" for n in evals]
        if state.has_baseline:
            base = state.baseline_value(r.round)
            cells.append(metric_text(base) if base is not None else "…")
        if trainer_col:
            value = r.trainer_metrics.get(trainer_col)
            cells.append(metric_text(value) if value is not None else "-")
        sent = state.update_bytes(r.round)
        cells += [
            size_text(sent) if sent is not None else "-",
            short_cid(r.cid),
            size_text(r.bytes_stored),
            f"{r.seconds:.2f}s",
        ]
        rounds.add_row(*cells)
    if state.open_round and (not state.rounds or state.rounds[-1].round < state.open_round):
        waiting = Text(f"{state.open_updates}/{state.open_quorum} updates…", style="dim")
        rounds.add_row(str(state.open_round), waiting, *[""] * (len(columns) - 2))
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
            metrics=dict(r.metrics),
            baseline=state.baseline_value(r.round),
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
    last = state.rounds[-1].round if state.rounds else 0
    return RunSummary(
        rounds=rows,
        strategy=args.strategy,
        num_trainers=args.trainers,
        late_trainer=late,
        late_round=args.late_round if late else None,
        final_cid=str(done.get("final_cid", "")),
        peer_final_cids={p.name: p.final_cid for p in state.procs.values() if p.final_cid},
        baseline_final=state.baseline_value(last) if last else None,
        wall_seconds=wall,
        status=str(done.get("status", "failed")),
        backends=[b for b in args.backends.split(",") if b],
        rejections=dict(done.get("rejections", {})),
        reason=str(done.get("reason", "")) or "; ".join(state.failures),
        app=state.app,
        command=state.command,
        metric=state.metric,
        minimums=dict(getattr(args, "targets", {}) or {}),
        max_seconds=getattr(args, "max_seconds", None),
        config={
            "rounds": args.rounds,
            "seed": getattr(args, "seed", None),
            "app_config": dict(getattr(args, "app_config_values", {}) or {}),
            "round_timeout": args.round_timeout,
            "objects_bytes": _dir_size(tmp / "objects"),
            "update_encoding": args.update_encoding,
            "update_bytes_mean": _mean_update_bytes(state),
            "task": state.app,
        },
    )


def finish(state: DemoState, tmp: Path, wall: float, console: Any) -> int:
    """Write the report directory, print the outcome; the run's exit status (0: all good)."""
    from fedstore.catalog import resolve_db_path
    from fedstore.demos.federation_report import write_report

    args = state.args
    summary = _summary(state, tmp, wall)
    metric = summary.metric
    curve = [m[metric] for m in state.baseline if metric in m] if metric else []
    paths = write_report(
        args.out,
        summary,
        baseline_curve=curve,
        catalog=resolve_db_path(tmp / "aggregator"),
    )
    doc = summary.to_json()
    ok = summary.status == "complete" and doc["targets"]["all_peers_same_final_cid"]
    for p in state.procs.values():
        if p.state == "failed" or (p.returncode not in (0, None)):
            ok = False
            console.print(f"[red]{p.name} failed[/red] ({p.detail}); log: {p.log_path}")
            args.keep = True
    if summary.final_value is not None:
        line = f"final {metric} {summary.final_value:.4f}"
        if summary.baseline_final is not None and summary.gap is not None:
            line += f", baseline {summary.baseline_final:.4f} (gap {summary.gap:+.4f})"
        console.print(f"{line}; {wall:.1f} s", highlight=False)
    else:
        console.print(f"status {summary.status}; {wall:.1f} s", highlight=False)
    agree = sorted(n for n, c in summary.peer_final_cids.items() if c == summary.final_cid)
    console.print(
        f"final CID {summary.final_cid or '-'}: same on {', '.join(agree) or 'no peer'}",
        highlight=False,
    )
    missed = [k for k, v in doc["targets"].items() if not v]
    if missed:
        console.print(f"[yellow]targets not met:[/yellow] {', '.join(missed)}")
    console.print(
        f"report: {args.out.resolve()} ({', '.join(p.name for p in paths.values())})",
        highlight=False,
    )
    return 0 if ok else 1
