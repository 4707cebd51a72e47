"""Benchmark: latest round and round listing from the SQLite catalog vs a directory scan.

Usage::

    python benchmarks/bench_catalog.py                 # 100,000 checkpoints
    python benchmarks/bench_catalog.py --rows 20000 --runs 5

Builds, in a temporary directory, a catalog with ``--rows`` checkpoint rows
and a directory with the same number of (empty) checkpoint files named
``round_<N>_<CID>.fsck``, the layout the seed design scanned. Then times:

* latest round: ``Catalog.latest_round()`` and ``Catalog.latest_checkpoint()``
  (full record) against ``os.scandir`` + parse every name + ``max``;
* round listing: ``Catalog.list_rounds()`` against ``os.scandir`` + parse + sort.

Every catalog call is a real API call (new session, SQL, dataclass); the
directory listing is served from the page cache after the first run. Prints
medians, the speedup of the catalog over the scan, and the targets (latest
round under 1 ms median and at least 100x faster than the scan). Prints
figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import insert

from fedstore.catalog import Catalog
from fedstore.catalog.models import Checkpoint
from fedstore.store.paths import checkpoint_filename, parse_checkpoint_filename


def fake_cid(r: int) -> str:
    return f"Qm{r:044d}"  # CIDv0-length, alphanumeric


def build(workdir: Path, rows: int) -> tuple[Catalog, Path]:
    cat = Catalog.open(workdir / "node")
    now = datetime.now(UTC)
    values = [
        {
            "round": r,
            "cid": fake_cid(r),
            "cid_version": 0,
            "codec": "fsck1+zstd+shuffle",
            "raw_size": 435_064,
            "stored_size": 384_000 + r % 1000,
            "created_at": now,
            "created_by": "bench",
            "path": f"rounds/{checkpoint_filename(r, fake_cid(r))}",
            "status": "ok",
        }
        for r in range(rows)
    ]
    with cat.engine.begin() as conn:
        for i in range(0, rows, 10_000):
            conn.execute(insert(Checkpoint), values[i : i + 10_000])
    scan_dir = workdir / "scan" / "rounds"
    scan_dir.mkdir(parents=True)
    for r in range(rows):
        (scan_dir / checkpoint_filename(r, fake_cid(r))).touch()
    return cat, scan_dir


def median_s(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def scan_rounds(directory: Path) -> list[int]:
    rounds = []
    with os.scandir(directory) as it:
        for entry in it:
            parsed = parse_checkpoint_filename(entry.name)
            if parsed is not None:
                rounds.append(parsed[0])
    return rounds


def scan_latest(directory: Path) -> int:
    return max(scan_rounds(directory))


def scan_list(directory: Path) -> list[int]:
    return sorted(scan_rounds(directory))


def run(rows: int, runs: int, workdir: Path) -> None:
    t0 = time.perf_counter()
    cat, scan_dir = build(workdir, rows)
    build_s = time.perf_counter() - t0
    try:
        # correctness first: both sides agree
        assert cat.latest_round() == scan_latest(scan_dir) == rows - 1
        assert cat.list_rounds() == scan_list(scan_dir)

        fast_runs = max(runs * 100, 200)
        latest_round = median_s(cat.latest_round, fast_runs)
        latest_rec = median_s(cat.latest_checkpoint, fast_runs)
        scan_latest_s = median_s(lambda: scan_latest(scan_dir), runs)
        list_cat = median_s(cat.list_rounds, runs)
        list_scan = median_s(lambda: scan_list(scan_dir), runs)
    finally:
        cat.close()

    print(
        f"{rows:,} checkpoints (catalog rows and files); setup {build_s:.1f} s; "
        f"medians of {fast_runs} catalog lookups and {runs} scans/listings"
    )
    header = f"{'operation':<44} {'catalog':>11} {'dir scan':>11} {'speedup':>9}"
    print(header)
    print("-" * len(header))

    def row(name: str, cat_s: float, scan_s: float) -> None:
        print(f"{name:<44} {cat_s * 1e3:>8.3f} ms {scan_s * 1e3:>8.1f} ms {scan_s / cat_s:>8.0f}x")

    row("latest round  (latest_round)", latest_round, scan_latest_s)
    row("latest round  (latest_checkpoint, full row)", latest_rec, scan_latest_s)
    row("list all rounds (list_rounds)", list_cat, list_scan)
    print()
    ok_time = latest_rec < 1e-3
    ok_ratio = scan_latest_s / latest_rec >= 100
    print(
        f"target: latest round < 1 ms median -> {latest_rec * 1e3:.3f} ms "
        f"({'met' if ok_time else 'MISSED'}); >= 100x faster than the scan -> "
        f"{scan_latest_s / latest_rec:.0f}x ({'met' if ok_ratio else 'MISSED'})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="checkpoints (default 100000)")
    parser.add_argument("--runs", type=int, default=7, help="timed scans per figure (default 7)")
    parser.add_argument("--dir", default=None, help="parent directory for the temporary files")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-catalog-", dir=args.dir) as tmp:
        run(args.rows, args.runs, Path(tmp))


if __name__ == "__main__":
    main()
