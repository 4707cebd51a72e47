"""Run benchmark sections one after another; render the table and the JSON report.

Sections are independent: each gets its own temporary directory (removed
when it ends), and one that raises is recorded as an error (type and
message) while the others still run. Progress goes to a Rich console on
stderr: one line when a section starts and ends, and a spinner naming the
current step on a terminal.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedstore.bench.common import BenchSizes, Row, SayFn, SectionResult

if TYPE_CHECKING:  # Rich is imported when a report is drawn: `fedstore --help` stays fast
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

__all__ = [
    "SECTIONS",
    "BenchReport",
    "describe_section",
    "format_ratio",
    "format_value",
    "print_report",
    "render_table",
    "run_bench",
    "write_json",
]

log = logging.getLogger(__name__)

#: Section name -> module (``run``, ``describe``, ``TITLE``), in run order.
SECTIONS: dict[str, str] = {
    "format": "fedstore.bench.format_bench",
    "cid": "fedstore.bench.cid_bench",
    "catalog": "fedstore.bench.catalog_bench",
    "announce": "fedstore.bench.announce_bench",
    "catchup": "fedstore.bench.catchup_bench",
    "updates": "fedstore.bench.updates_bench",
    "verify": "fedstore.bench.verify_bench",
    "startup": "fedstore.bench.startup_bench",
    "swarm": "fedstore.bench.swarm_bench",
    "federation-large": "fedstore.bench.federation_large_bench",
}

SectionFn = Callable[[BenchSizes, Path, SayFn], SectionResult]


@dataclass
class BenchReport:
    """One ``fedstore bench`` run: the sizes, every section's result, and the context."""

    sizes: BenchSizes
    quick: bool
    sections: list[SectionResult] = field(default_factory=list)
    command: str = ""
    started_at: str = ""
    seconds: float = 0.0

    @property
    def failed(self) -> list[str]:
        """Names of the sections that raised."""
        return [s.name for s in self.sections if not s.ok]

    def targets(self) -> tuple[int, int]:
        """(targets met, targets measured) over every row that has a target."""
        verdicts = [r.met for s in self.sections for r in s.rows if r.met is not None]
        return sum(verdicts), len(verdicts)

    def to_dict(self) -> dict[str, Any]:
        met, total = self.targets()
        import fedstore

        return {
            "fedstore_version": fedstore.__version__,
            "command": self.command,
            "quick": self.quick,
            "started_at": self.started_at,
            "seconds": round(self.seconds, 3),
            "machine": _machine(),
            "sizes": self.sizes.to_dict(),
            "targets": {"met": met, "measured": total},
            "failed_sections": self.failed,
            "sections": {s.name: s.to_dict() for s in self.sections},
        }


def _machine() -> dict[str, Any]:
    import numpy
    import zstandard

    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "numpy": numpy.__version__,
        "zstandard": zstandard.__version__,
    }


def _section_module(name: str) -> Any:
    return importlib.import_module(SECTIONS[name])


def describe_section(name: str, sizes: BenchSizes) -> str:
    """One line saying what section *name* measures at these sizes."""
    module = _section_module(name)
    return f"{module.TITLE}: {module.describe(sizes)}"


def run_bench(
    sizes: BenchSizes,
    *,
    only: Sequence[str] | None = None,
    quick: bool = False,
    workdir: str | os.PathLike[str] | None = None,
    console: Console | None = None,
    command: str = "",
    sections: dict[str, SectionFn] | None = None,
) -> BenchReport:
    """Run the selected sections (all by default, in :data:`SECTIONS` order).

    *workdir* is the parent of the temporary directories (default: the
    system's). *sections* replaces section functions by name (tests).
    Never raises for a failing section; see :attr:`BenchReport.failed`.
    """
    names = list(SECTIONS) if not only else [n for n in SECTIONS if n in set(only)]
    unknown = sorted(set(only or ()) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    if console is None:
        from rich.console import Console

        console = Console(stderr=True)
    report = BenchReport(
        sizes=sizes,
        quick=quick,
        command=command,
        started_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    t0 = time.perf_counter()
    for i, name in enumerate(names, 1):
        report.sections.append(
            _run_section(i, len(names), name, sizes, workdir, console, (sections or {}).get(name))
        )
    report.seconds = time.perf_counter() - t0
    return report


def _run_section(
    index: int,
    count: int,
    name: str,
    sizes: BenchSizes,
    workdir: str | os.PathLike[str] | None,
    console: Console,
    override: SectionFn | None,
) -> SectionResult:
    title = name
    t0 = time.perf_counter()
    try:
        module = _section_module(name)
        title = module.TITLE
        fn: SectionFn = override or module.run
        console.print(f"[bold][{index}/{count}] {name}[/bold]: {describe_section(name, sizes)}")
        with (
            tempfile.TemporaryDirectory(prefix=f"fedstore-bench-{name}-", dir=workdir) as tmp,
            console.status(f"{name}: starting", spinner="dots") as status,
        ):

            def say(text: str) -> None:
                status.update(f"{name}: {text}")
                log.debug("bench %s: %s", name, text)

            result = fn(sizes, Path(tmp), say)
    except Exception as exc:  # one section's failure must not stop the others
        seconds = time.perf_counter() - t0
        log.debug("bench section %s failed", name, exc_info=True)
        message = f"{type(exc).__name__}: {exc}".strip()
        console.print(f"    [red]failed[/red] after {seconds:.1f} s: {message}")
        return SectionResult(name, title, seconds=seconds, error=message)
    result.seconds = time.perf_counter() - t0
    console.print(f"    done in {result.seconds:.1f} s")
    return result


# -- rendering -------------------------------------------------------------------------


def format_value(row: Row) -> str:
    """The row's value with a readable unit (seconds become ms below 1 s)."""
    v = row.value
    if row.unit == "s":
        if v >= 1:
            return f"{v:.2f} s"
        if v >= 0.01:
            return f"{v * 1000:.0f} ms"
        return f"{v * 1000:.3f} ms"
    if row.unit == "ms":
        return f"{v:.1f} ms"
    if row.unit == "accuracy":
        return f"{v:.4f}"
    if row.unit == "B":
        return f"{v:,.0f} B"
    if row.unit in ("MB/s",):
        return f"{v:,.0f} {row.unit}"
    return f"{v:,.1f} {row.unit}"


def format_ratio(row: Row, baselines: set[str] | None = None) -> Text:
    """``2.06×``; small time ratios also say how many times faster; baselines say so."""
    from rich.text import Text

    if row.ratio is None or row.baseline is None:
        if baselines is not None and row.variant in baselines:
            return Text("baseline", style="dim")
        return Text("")
    r = row.ratio
    if row.kind == "time" and 0 < r < 0.1:
        return Text(f"{r:.4f}× ({1 / r:,.0f}× faster)")
    return Text(f"{r:.2f}×")


def _target_cell(row: Row) -> Text:
    from rich.text import Text

    if row.target is None:
        return Text("")
    text = row.target.text(row.unit)
    met = row.met
    if met is None:
        return Text(f"{text} ?")
    return Text(f"{text} ✓", style="green") if met else Text(f"{text} ✗ missed", style="red")


def render_table(report: BenchReport) -> Table:
    """The results as one Rich table, a group of rows per section."""
    from rich.table import Table
    from rich.text import Text

    mode = "quick" if report.quick else "full"
    table = Table(
        title=f"fedstore bench ({mode} sizes)",
        caption="ratio = value / baseline's value; for throughput, above 1 is faster",
        show_lines=False,
    )
    table.add_column("Section", style="bold")
    table.add_column("Measure")
    table.add_column("Variant")
    table.add_column("Value", justify="right")
    table.add_column("Ratio (vs baseline)")
    table.add_column("Target")
    for n, section in enumerate(report.sections):
        if n:
            table.add_section()
        if not section.ok:
            table.add_row(
                section.name, Text(f"ERROR: {section.error}", style="red"), "", "", "", ""
            )
            continue
        if not section.rows:  # skipped (the note says why)
            why = section.notes[0] if section.notes else "no figures"
            table.add_row(section.name, Text(why, style="yellow"), "", "", "", "")
            continue
        previous = None
        baselines = {r.baseline for r in section.rows if r.baseline is not None}
        for i, row in enumerate(section.rows):
            table.add_row(
                section.name if i == 0 else "",
                row.measure if row.measure != previous else "",
                row.variant,
                format_value(row),
                format_ratio(row, baselines),
                _target_cell(row),
            )
            previous = row.measure
    return table


def print_report(report: BenchReport, console: Console) -> None:
    """Table, then each section's notes, then the count of targets met."""
    console.print(render_table(report))
    for section in report.sections:
        for note in section.notes:
            console.print(f"[dim]{section.name}: {note}[/dim]")
    met, total = report.targets()
    summary = (
        f"targets met: {met}/{total}; {len(report.sections)} section(s) in {report.seconds:.0f} s"
    )
    if report.failed:
        summary += f"; [red]failed: {', '.join(report.failed)}[/red]"
    console.print(summary)


def write_json(report: BenchReport, path: str | os.PathLike[str]) -> Path:
    """Write the report as JSON (atomically: temp file then rename); return the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_finite(report.to_dict()), indent=2, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _finite(obj: Any) -> Any:
    """*obj* with NaN and infinities replaced by None (strict JSON has neither)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def default_console() -> Console:
    """Stdout console for the table; 140 columns wide when stdout is not a terminal."""
    from rich.console import Console

    return Console(file=sys.stdout, width=None if sys.stdout.isatty() else 140)
