"""The report directory of a federation run: plot, catalog copy, summary.

:func:`write_report` writes, into one directory:

* ``accuracy.png``: test accuracy per round, with centralised training on the
  same data (same number of epochs per round) as a dashed reference line and
  a marker where a late trainer joined (matplotlib, Agg backend, no display);
* ``catalog.sqlite``: a consistent copy of the aggregator's catalog (SQLite
  online backup through the catalog's read-only API, so it is complete even
  if the source used WAL, and the source is never written);
* ``summary.json`` (everything, machine-readable) and ``summary.md`` (the
  same for people: targets, per-round table with the trainers' metrics as
  the aggregator's catalog stored them, final CIDs of every peer).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fedstore.errors import CatalogError

__all__ = [
    "RoundRow",
    "RunSummary",
    "copy_catalog",
    "plot_accuracy",
    "stored_trainer_metrics",
    "write_report",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RoundRow:
    round: int
    participants: int
    accuracy: float
    loss: float
    centralised_accuracy: float | None
    cid: str
    size: int
    bytes_stored: int
    seconds: float
    partial: bool = False
    #: the trainers' metrics for the round as the catalog stored them (weighted means)
    trainer_metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class RunSummary:
    """Everything the report says about one run."""

    rounds: list[RoundRow]
    strategy: str
    num_trainers: int
    late_trainer: int | None
    late_round: int | None
    final_cid: str
    peer_final_cids: dict[str, str]
    centralised_final: float
    wall_seconds: float
    status: str = "complete"
    backends: Sequence[str] = ("filesystem",)
    rejections: Mapping[str, int] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    reason: str = ""

    @property
    def final_accuracy(self) -> float:
        return self.rounds[-1].accuracy if self.rounds else 0.0

    def targets(self) -> dict[str, bool]:
        """The demo's targets: accuracy, gap to centralised, same CID everywhere, time."""
        return {
            "final_accuracy_at_least_0.90": self.final_accuracy >= 0.90,
            "within_0.03_of_centralised": self.centralised_final - self.final_accuracy <= 0.03,
            "all_peers_same_final_cid": bool(self.peer_final_cids)
            and set(self.peer_final_cids.values()) == {self.final_cid},
            "under_90_seconds": self.wall_seconds < 90.0,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "reason": self.reason,
            "strategy": self.strategy,
            "num_trainers": self.num_trainers,
            "late_trainer": self.late_trainer,
            "late_round": self.late_round,
            "backends": list(self.backends),
            "final_round": self.rounds[-1].round if self.rounds else 0,
            "final_cid": self.final_cid,
            "final_accuracy": self.final_accuracy,
            "centralised_final_accuracy": self.centralised_final,
            "gap_to_centralised": self.centralised_final - self.final_accuracy,
            "wall_seconds": round(self.wall_seconds, 2),
            "peer_final_cids": dict(self.peer_final_cids),
            "rejections": dict(self.rejections),
            "targets": self.targets(),
            "config": dict(self.config),
            "rounds": [
                {
                    "round": r.round,
                    "participants": r.participants,
                    "accuracy": r.accuracy,
                    "loss": r.loss,
                    "centralised_accuracy": r.centralised_accuracy,
                    "cid": r.cid,
                    "size": r.size,
                    "bytes_stored": r.bytes_stored,
                    "seconds": r.seconds,
                    "partial": r.partial,
                    "trainer_metrics": dict(r.trainer_metrics),
                }
                for r in self.rounds
            ],
        }


def plot_accuracy(summary: RunSummary, path: Path, centralised: Sequence[float]) -> None:
    """Write the accuracy-per-round PNG (Agg backend; safe without a display)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(7.0, 4.2), dpi=110)
    ax = fig.subplots()
    rounds = [r.round for r in summary.rounds]
    ax.plot(
        rounds,
        [r.accuracy for r in summary.rounds],
        marker="o",
        label=(f"federated ({summary.strategy}, {summary.num_trainers} trainers)"),
    )
    if centralised:
        xs = list(range(1, len(centralised) + 1))
        ax.plot(
            xs,
            list(centralised),
            linestyle="--",
            color="grey",
            label="centralised, same data and epochs",
        )
    if summary.late_trainer and summary.late_round:
        ax.axvline(
            summary.late_round - 0.5,
            linestyle=":",
            color="tab:red",
            label=f"trainer {summary.late_trainer} joins",
        )
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0.0, 1.0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title("fedstore demo: digits, held-out test accuracy per round")
    fig.tight_layout()
    fig.savefig(path)


def copy_catalog(src: Path, dest: Path) -> bool:
    """Copy a catalog read-only (online backup); False if ``src`` does not exist."""
    from fedstore.catalog import copy_read_only

    if not src.is_file():
        return False
    copy_read_only(src, dest)
    return True


def stored_trainer_metrics(catalog: Path) -> dict[tuple[int, str], dict[str, float]]:
    """``(round, cid) -> {name: value}`` of the trainers' metrics stored in ``catalog``.

    Read through the catalog's read-only query API. A catalog without the
    ``round_metrics`` table (written by an older fedstore) has none: {}.
    """
    from fedstore.catalog import read_only_query

    try:
        _, rows = read_only_query(
            catalog,
            "SELECT round, cid, name, value FROM round_metrics WHERE source = 'trainers' "
            "ORDER BY round, cid, name",
        )
    except CatalogError as exc:
        log.info("no stored round metrics in %s: %s", catalog, exc)
        return {}
    out: dict[tuple[int, str], dict[str, float]] = {}
    for rnd, cid, name, value in rows:
        if isinstance(rnd, int) and isinstance(value, int | float):
            out.setdefault((rnd, str(cid)), {})[str(name)] = float(value)
    return out


def _metric_names(summary: RunSummary) -> list[str]:
    return sorted({name for r in summary.rounds for name in r.trainer_metrics})


def _markdown(summary: RunSummary, catalog_copied: bool) -> str:
    doc = summary.to_json()
    t = summary.targets()
    yes = {True: "yes", False: "**no**"}
    lines = [
        "# fedstore federation demo",
        "",
        f"Status: **{summary.status}**" + (f" ({summary.reason})" if summary.reason else ""),
        f"- strategy `{summary.strategy}`, {summary.num_trainers} trainers"
        + (
            f", trainer {summary.late_trainer} offline until round {summary.late_round}"
            if summary.late_trainer
            else ""
        ),
        f"- backends: {', '.join(summary.backends)}",
        f"- final test accuracy **{summary.final_accuracy:.4f}**, centralised "
        f"{summary.centralised_final:.4f} (gap {doc['gap_to_centralised']:+.4f})",
        f"- final CID `{summary.final_cid}`",
        f"- wall time {summary.wall_seconds:.1f} s",
        "",
        "## Targets",
        "",
        *(f"- {name.replace('_', ' ')}: {yes[ok]}" for name, ok in t.items()),
        "",
        "## Rounds",
        "",
    ]
    names = _metric_names(summary)
    if names:
        lines += [
            "Trainer metrics (`trainers: ...`) are the trainers' reports combined by the "
            "strategy (mean weighted by samples), as stored in the aggregator's catalog "
            "(table `round_metrics`).",
            "",
        ]
    head = ["round", "participants", "accuracy", "centralised"]
    head += [f"trainers: {n}" for n in names] + ["CID", "checkpoint bytes", "stored total"]
    lines += [
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" if h == "CID" else "---:" for h in head) + "|",
    ]
    for r in summary.rounds:
        cen = f"{r.centralised_accuracy:.4f}" if r.centralised_accuracy is not None else "-"
        stored = [f"{r.trainer_metrics[n]:.4f}" if n in r.trainer_metrics else "-" for n in names]
        cells = [str(r.round), f"{r.participants}{' (partial)' if r.partial else ''}"]
        cells += [f"{r.accuracy:.4f}", cen, *stored]
        cells += [f"`{r.cid}`", str(r.size), str(r.bytes_stored)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Final CID of every peer", ""]
    lines += [f"- {name}: `{cid}`" for name, cid in sorted(summary.peer_final_cids.items())]
    if summary.rejections:
        lines += ["", "## Rejected updates", ""]
        lines += [f"- {k}: {v}" for k, v in sorted(summary.rejections.items())]
    lines += [
        "",
        "## Files",
        "",
        "- `accuracy.png`: accuracy per round, centralised reference dashed",
        "- `summary.json`: this summary, machine-readable",
    ]
    if catalog_copied:
        lines.append("- `catalog.sqlite`: a copy of the aggregator's catalog (SQLite)")
    return "\n".join(lines) + "\n"


def write_report(
    out_dir: Path,
    summary: RunSummary,
    *,
    centralised_curve: Sequence[float] = (),
    catalog: Path | None = None,
) -> dict[str, Path]:
    """Write the report files into ``out_dir`` (created); return name -> path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "plot": out_dir / "accuracy.png",
        "summary_json": out_dir / "summary.json",
        "summary_md": out_dir / "summary.md",
    }
    plot_accuracy(summary, paths["plot"], centralised_curve)
    copied = False
    if catalog is not None:
        copied = copy_catalog(catalog, out_dir / "catalog.sqlite")
        if copied:
            paths["catalog"] = out_dir / "catalog.sqlite"
            stored = stored_trainer_metrics(paths["catalog"])
            summary.rounds = [
                replace(r, trainer_metrics=stored.get((r.round, r.cid), {})) for r in summary.rounds
            ]
    doc = summary.to_json()
    doc["centralised_curve"] = list(centralised_curve)
    paths["summary_json"].write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    paths["summary_md"].write_text(_markdown(summary, copied))
    return paths
