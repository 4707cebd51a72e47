"""Shared pieces of ``fedstore bench``: sizes, result rows, timing and the test model.

Every section module exposes ``run(sizes, workdir, say) -> SectionResult``.
A section measures, it never asserts: targets are recorded next to the
figures (:class:`Target`) and the table says whether each was met.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # numpy is imported where a model is built: `fedstore --help` stays fast
    import numpy as np

__all__ = [
    "MB",
    "MIB",
    "BenchSizes",
    "Kind",
    "Row",
    "SayFn",
    "SectionResult",
    "Target",
    "median_time",
    "percentile",
    "trained_like",
]

MB = 1_000_000
MIB = 1024 * 1024

#: What a figure measures; decides its unit, formatting and which way is better.
Kind = Literal["time", "bytes", "throughput", "memory", "count"]

#: Reports a sub-step of a section to the progress display.
SayFn = Callable[[str], None]


@dataclass(frozen=True)
class BenchSizes:
    """Problem sizes and repetition counts of one benchmark run."""

    #: Checkpoint save/load: model size in MB (10^6 bytes) and timed runs per figure.
    model_mb: float = 100.0
    format_runs: int = 5
    #: CID: size of the hashed file (MiB), timed runs, and the peak-memory file (MiB).
    cid_mib: int = 256
    cid_runs: int = 3
    rss_mib: int = 1024
    #: Catalog: checkpoint rows (and files in the scanned directory), timed scans.
    catalog_rows: int = 100_000
    catalog_runs: int = 7
    #: Announcements: peer processes, timed announcements (after warm-up ones).
    peers: int = 8
    announcements: int = 30
    warmup: int = 2
    #: Catch-up: checkpoint size in MB and timed runs.
    catchup_mb: float = 100.0
    catchup_runs: int = 5
    #: Start-up: interpreter launches per command (median reported).
    startup_runs: int = 21
    #: Compressed updates: digits rounds per federation, seeds per encoding.
    updates_rounds: int = 10
    updates_seeds: int = 3
    #: Verified aggregates: digits rounds per federation (verify full and off).
    verify_rounds: int = 10
    #: Swarm: model size in MB and the largest number of trainers (N = 1, 2, 4, ... up to it).
    swarm_mb: float = 20.0
    swarm_trainers: int = 8
    #: Large-model federation: model size in MB, rounds, trainer processes.
    federation_mb: float = 100.0
    federation_rounds: int = 3
    federation_trainers: int = 3

    @classmethod
    def full(cls) -> BenchSizes:
        """The sizes the issue asks for (100 MB model, 256 MiB file, 100,000 rows, 8 peers)."""
        return cls()

    @classmethod
    def quick(cls) -> BenchSizes:
        """Small sizes for ``--quick``: well under three minutes on two cores."""
        return cls(
            model_mb=16.0,
            cid_mib=32,
            rss_mib=256,
            catalog_rows=100_000,  # the target is stated at 100,000 rounds
            catalog_runs=5,
            peers=4,
            announcements=10,
            warmup=1,
            catchup_mb=16.0,
            startup_runs=9,
            updates_seeds=1,
            verify_rounds=5,
            swarm_mb=5.0,
            swarm_trainers=4,
            federation_mb=16.0,
        )

    def with_overrides(self, overrides: Mapping[str, str]) -> BenchSizes:
        """A copy with fields replaced from text values (``{"model_mb": "50"}``).

        Raises ValueError naming the field for an unknown name or a bad value.
        """
        types = {f.name: f.type for f in dataclasses.fields(self)}
        changes: dict[str, Any] = {}
        for name, text in overrides.items():
            if name not in types:
                known = ", ".join(sorted(types))
                raise ValueError(f"unknown size {name!r} (known: {known})")
            kind = float if types[name] in (float, "float") else int
            try:
                value = kind(text)
            except ValueError:
                raise ValueError(f"size {name} must be a number, got {text!r}") from None
            if not math.isfinite(value) or value < (0 if name == "warmup" else 1e-9):
                raise ValueError(f"size {name} must be positive, got {text!r}")
            changes[name] = value
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Target:
    """A goal for one figure: ``ratio <= 2.0`` or ``value < 200`` (in the row's unit)."""

    op: Literal["<=", ">=", "<", ">"]
    threshold: float
    on: Literal["ratio", "value"] = "ratio"
    #: How the threshold is shown when the row's unit would be awkward (``"0.2 ms"``).
    shown: str | None = None

    def met(self, row: Row) -> bool | None:
        x = row.ratio if self.on == "ratio" else row.value
        if x is None or math.isnan(x):
            return None
        return {
            "<=": x <= self.threshold,
            ">=": x >= self.threshold,
            "<": x < self.threshold,
            ">": x > self.threshold,
        }[self.op]

    def text(self, unit: str) -> str:
        sym = {"<=": "≤", ">=": "≥", "<": "<", ">": ">"}[self.op]
        if self.shown is not None:
            return f"{sym} {self.shown}"
        if self.on == "ratio":
            return f"{sym} {self.threshold:g}×"
        return f"{sym} {self.threshold:g} {unit}"

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "threshold": self.threshold, "on": self.on}


@dataclass
class Row:
    """One figure: *variant* measured on *measure*, optionally against a baseline.

    *value* is in *unit* (``s``, ``MB``, ``MB/s``, ``MiB``...). *ratio* is
    ``value / baseline's value`` (for throughput too: above 1 is faster).
    *samples* keeps the individual timings behind a median.
    """

    measure: str
    variant: str
    value: float
    unit: str
    kind: Kind
    baseline: str | None = None
    ratio: float | None = None
    target: Target | None = None
    note: str = ""
    samples: list[float] = field(default_factory=list)

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.target.met(self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "measure": self.measure,
            "variant": self.variant,
            "value": self.value,
            "unit": self.unit,
            "kind": self.kind,
            "baseline": self.baseline,
            "ratio": self.ratio,
            "target": None if self.target is None else self.target.to_dict(),
            "met": self.met,
            "note": self.note,
            "samples": list(self.samples),
        }


@dataclass
class SectionResult:
    """Everything one section measured, or why it failed."""

    name: str
    title: str
    params: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "status": "ok" if self.ok else "error",
            "error": self.error,
            "seconds": round(self.seconds, 3),
            "params": dict(self.params),
            "rows": [r.to_dict() for r in self.rows],
            "notes": list(self.notes),
        }


def median_time(fn: Callable[[], object], runs: int) -> tuple[float, list[float]]:
    """Run *fn* *runs* times (at least once); return the median and every duration in s."""
    import statistics

    samples = []
    for _ in range(max(1, runs)):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), samples


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (``q`` in 0..1); NaN for no values."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


# Layer shapes cycled until the model reaches its size: weight matrices and biases.
_SHAPES = [(2048, 512), (512,), (1024, 1024), (1024,), (1024, 512), (512,), (512, 256), (256,)]


def trained_like(total_bytes: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Float32 "trained-like" weights, N(0, 0.05), of about *total_bytes*, several tensors.

    Matrices and bias vectors cycle through layer-like shapes; the last
    matrix is cut to fit, so even a 1 MB model has more than one tensor.
    Deterministic for a given size and seed.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    size = i = 0
    while size < total_bytes:
        shape = _SHAPES[i % len(_SHAPES)]
        remaining = total_bytes - size
        if len(shape) == 2 and shape[0] * shape[1] * 4 > remaining:
            shape = (max(1, remaining // (shape[1] * 4)), shape[1])
        kind = "bias" if len(shape) == 1 else "weight"
        arr = rng.normal(0.0, 0.05, size=shape).astype(np.float32)
        arrays[f"layer{i // 2:03d}.{kind}"] = arr
        size += arr.nbytes
        i += 1
    return arrays
