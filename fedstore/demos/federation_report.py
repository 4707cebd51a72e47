"""The report directory of a simulated federation run: plot, catalog copy, summary.

:func:`write_report` writes, into one directory:

* ``METRIC.png`` (``accuracy.png`` for the digits app): the run's primary
  evaluation metric per round (accuracy when the app reports it), with the
  app's baseline (for the digits app: centralised training on the same data
  and epochs) as a dashed reference line and a marker where a late trainer
  joined (matplotlib, Agg backend, no display);
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
    "GAP_TOLERANCE",
    "plot_name",
    "RoundRow",
    "RunSummary",
    "copy_catalog",
    "plot_metric",
    "stored_trainer_metrics",
    "write_report",
]

log = logging.getLogger(__name__)


def plot_name(metric: str) -> str:
    """The report's plot file: the primary metric's name (``accuracy.png``, ``mse.png``)."""
    stem = "".join(c if c.isalnum() or c in "_-." else "_" for c in metric).strip(".")
    return f"{stem or 'metric'}.png"


#: Largest shortfall against the baseline a targeted metric may have (see RunSummary).
GAP_TOLERANCE = 0.03


@dataclass(frozen=True, slots=True)
class RoundRow:
    round: int
    participants: int
    #: the aggregator's evaluation of the round's global model
    metrics: Mapping[str, float]
    #: the baseline's value of the run's primary metric after this round, if any
    baseline: float | None
    cid: str
    size: int
    bytes_stored: int
    seconds: float
    partial: bool = False
    #: the trainers' metrics for the round as the catalog stored them (weighted means)
    trainer_metrics: Mapping[str, float] = field(default_factory=dict)

    @property
    def accuracy(self) -> float | None:
        return self.metrics.get("accuracy")


@dataclass(slots=True)
class RunSummary:
    """Everything the report says about one run.

    ``metric`` is the evaluation metric the run is judged by (``accuracy``
    when the app reports it). Targets (:meth:`targets`): every peer ends on
    the final CID; each metric in ``minimums`` (the app's ``targets``)
    reaches its minimum, and, when there is a baseline, the primary metric
    (if targeted) is at most ``max_gap`` below it; the run took under
    ``max_seconds`` (when set). Only the first is part of the exit status.
    """

    rounds: list[RoundRow]
    strategy: str
    num_trainers: int
    late_trainer: int | None
    late_round: int | None
    final_cid: str
    peer_final_cids: dict[str, str]
    wall_seconds: float
    baseline_final: float | None = None
    status: str = "complete"
    backends: Sequence[str] = ("filesystem",)
    rejections: Mapping[str, int] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    reason: str = ""
    app: str = "digits"
    command: str = "demo"
    metric: str = "accuracy"
    minimums: Mapping[str, float] = field(default_factory=dict)
    max_gap: float | None = GAP_TOLERANCE
    max_seconds: float | None = None

    @property
    def final_metrics(self) -> Mapping[str, float]:
        return self.rounds[-1].metrics if self.rounds else {}

    @property
    def final_value(self) -> float | None:
        """The primary metric of the last round, if reported."""
        return self.final_metrics.get(self.metric)

    @property
    def gap(self) -> float | None:
        """``baseline - final`` of the primary metric (positive: the federation scores lower)."""
        final = self.final_value
        if final is None or self.baseline_final is None:
            return None
        return self.baseline_final - final

    def targets(self) -> dict[str, bool]:
        """Which targets the run met (see the class docstring), by name."""
        out: dict[str, bool] = {}
        final = self.final_metrics
        for name, minimum in sorted(self.minimums.items()):
            value = final.get(name)
            out[f"final_{name}_at_least_{minimum:.2f}"] = value is not None and value >= minimum
        if (
            self.max_gap is not None
            and self.metric in self.minimums
            and self.baseline_final is not None
        ):
            gap = self.gap
            out[f"within_{self.max_gap:.2f}_of_baseline"] = gap is not None and gap <= self.max_gap
        out["all_peers_same_final_cid"] = bool(self.peer_final_cids) and set(
            self.peer_final_cids.values()
        ) == {self.final_cid}
        if self.max_seconds is not None:
            out[f"under_{self.max_seconds:g}_seconds"] = self.wall_seconds < self.max_seconds
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "app": self.app,
            "status": self.status,
            "reason": self.reason,
            "strategy": self.strategy,
            "num_trainers": self.num_trainers,
            "late_trainer": self.late_trainer,
            "late_round": self.late_round,
            "backends": list(self.backends),
            "final_round": self.rounds[-1].round if self.rounds else 0,
            "final_cid": self.final_cid,
            "metric": self.metric,
            "final_metric": self.final_value,
            "final_metrics": dict(self.final_metrics),
            "final_accuracy": self.final_metrics.get("accuracy"),
            "baseline_final": self.baseline_final,
            "gap_to_baseline": self.gap,
            "wall_seconds": round(self.wall_seconds, 2),
            "peer_final_cids": dict(self.peer_final_cids),
            "rejections": dict(self.rejections),
            "targets": self.targets(),
            "config": dict(self.config),
            "rounds": [
                {
                    "round": r.round,
                    "participants": r.participants,
                    "metrics": dict(r.metrics),
                    "accuracy": r.accuracy,
                    "baseline": r.baseline,
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


def plot_metric(summary: RunSummary, path: Path, baseline: Sequence[float]) -> None:
    """Write the PNG of the primary metric per round (Agg backend; safe without a display).

    ``baseline`` (the app's reference, same metric, one value per round) is
    drawn dashed; a late trainer's first round is marked.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    metric = summary.metric or "metric"
    fig = Figure(figsize=(7.0, 4.2), dpi=110)
    ax = fig.subplots()
    points = [(r.round, r.metrics[metric]) for r in summary.rounds if metric in r.metrics]
    ax.plot(
        [x for x, _ in points],
        [y for _, y in points],
        marker="o",
        label=f"federated ({summary.strategy}, {summary.num_trainers} trainers)",
    )
    if baseline:
        xs = list(range(1, len(baseline) + 1))
        ax.plot(xs, list(baseline), linestyle="--", color="grey", label="baseline (not federated)")
    if summary.late_trainer and summary.late_round:
        ax.axvline(
            summary.late_round - 0.5,
            linestyle=":",
            color="tab:red",
            label=f"trainer {summary.late_trainer} joins",
        )
    ax.set_xlabel("round")
    ax.set_ylabel(metric)
    values = [y for _, y in points] + list(baseline)
    if values and all(0.0 <= v <= 1.0 for v in values):
        ax.set_ylim(0.0, 1.0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if points or baseline:
        ax.legend(loc="best")
    ax.set_title(f"fedstore {summary.command}: {summary.app}, {metric} of the global model")
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


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _markdown(summary: RunSummary, catalog_copied: bool) -> str:
    t = summary.targets()
    yes = {True: "yes", False: "**no**"}
    metric = summary.metric
    lines = [
        f"# fedstore {summary.command}: {summary.app}",
        "",
        f"Status: **{summary.status}**" + (f" ({summary.reason})" if summary.reason else ""),
        f"- app `{summary.app}`, strategy `{summary.strategy}`, {summary.num_trainers} trainers"
        + (
            f", trainer {summary.late_trainer} offline until round {summary.late_round}"
            if summary.late_trainer
            else ""
        ),
        f"- backends: {', '.join(summary.backends)}",
    ]
    if metric:
        final = f"- final {metric} **{_num(summary.final_value)}**"
        if summary.baseline_final is not None:
            final += f", baseline {_num(summary.baseline_final)}"
            if summary.gap is not None:
                final += f" (gap {summary.gap:+.4f})"
        lines.append(final)
    lines += [
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
    evals = sorted({n for r in summary.rounds for n in r.metrics})
    if names:
        lines += [
            "Trainer metrics (`trainers: ...`) are the trainers' reports combined by the "
            "strategy (mean weighted by samples), as stored in the aggregator's catalog "
            "(table `round_metrics`).",
            "",
        ]
    head = ["round", "participants", *evals]
    head += ["baseline"] if summary.baseline_final is not None else []
    head += [f"trainers: {n}" for n in names] + ["CID", "checkpoint bytes", "stored total"]
    lines += [
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" if h == "CID" else "---:" for h in head) + "|",
    ]
    for r in summary.rounds:
        cells = [str(r.round), f"{r.participants}{' (partial)' if r.partial else ''}"]
        cells += [_num(r.metrics.get(n)) for n in evals]
        cells += [_num(r.baseline)] if summary.baseline_final is not None else []
        cells += [_num(r.trainer_metrics.get(n)) for n in names]
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
        f"- `{plot_name(metric)}`: {metric or 'the metric'} per round, baseline dashed",
        "- `summary.json`: this summary, machine-readable",
    ]
    if catalog_copied:
        lines.append("- `catalog.sqlite`: a copy of the aggregator's catalog (SQLite)")
    return "\n".join(lines) + "\n"


def write_report(
    out_dir: Path,
    summary: RunSummary,
    *,
    baseline_curve: Sequence[float] = (),
    catalog: Path | None = None,
) -> dict[str, Path]:
    """Write the report files into ``out_dir`` (created); return name -> path.

    ``baseline_curve`` is the baseline's primary metric per round.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "plot": out_dir / plot_name(summary.metric),
        "summary_json": out_dir / "summary.json",
        "summary_md": out_dir / "summary.md",
    }
    plot_metric(summary, paths["plot"], baseline_curve)
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
    doc["baseline_curve"] = list(baseline_curve)
    paths["summary_json"].write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    paths["summary_md"].write_text(_markdown(summary, copied))
    return paths
