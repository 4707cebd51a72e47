"""Section ``catalog``: latest round and round listing from the catalog vs a directory scan.

Builds a catalog with ``catalog_rows`` checkpoint rows (bulk-inserted) and a
directory with as many empty files named ``round_<N>_<CID>.fsck``, the layout
the original design scanned for its state. Then times the real API calls
(each opens a session, runs SQL and returns a dataclass) against
``os.scandir`` + parse every name + ``max``/``sort``, served from the page
cache after the first scan. Both sides are first checked to agree. Ratios
are catalog time / scan time (below 1 is faster). Target: the latest round
(and its full row) in under 0.2 ms at 100,000 rounds.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path

from fedstore.bench.common import BenchSizes, Row, SayFn, SectionResult, Target, median_time

NAME = "catalog"
TITLE = "Catalog vs directory scan"

LATEST_TARGET = Target("<", 0.2e-3, on="value", shown="0.2 ms")

Timing = tuple[float, list[float]]


def describe(sizes: BenchSizes) -> str:
    return f"{sizes.catalog_rows:,} rounds, median of {sizes.catalog_runs} scans"


def _fake_cid(r: int) -> str:
    return f"Qm{r:044d}"  # CIDv0-length, alphanumeric


def _build(workdir: Path, rows: int) -> tuple[object, Path]:
    from sqlalchemy import insert

    from fedstore.catalog import Catalog
    from fedstore.catalog.models import Checkpoint
    from fedstore.store.paths import checkpoint_filename

    cat = Catalog.open(workdir / "node")
    try:
        now = datetime.now(UTC)
        with cat.engine.begin() as conn:
            for start in range(0, rows, 10_000):
                conn.execute(
                    insert(Checkpoint),
                    [
                        {
                            "round": r,
                            "cid": _fake_cid(r),
                            "cid_version": 0,
                            "codec": "fsck1+zstd+shuffle",
                            "raw_size": 435_064,
                            "stored_size": 384_000 + r % 1000,
                            "created_at": now,
                            "created_by": "bench",
                            "path": f"rounds/{checkpoint_filename(r, _fake_cid(r))}",
                            "status": "ok",
                        }
                        for r in range(start, min(rows, start + 10_000))
                    ],
                )
        scan_dir = workdir / "scan" / "rounds"
        scan_dir.mkdir(parents=True)
        for r in range(rows):
            (scan_dir / checkpoint_filename(r, _fake_cid(r))).touch()
    except BaseException:
        cat.close()
        raise
    return cat, scan_dir


def _scan_rounds(directory: Path) -> list[int]:
    from fedstore.store.paths import parse_checkpoint_filename

    rounds = []
    with os.scandir(directory) as it:
        for entry in it:
            parsed = parse_checkpoint_filename(entry.name)
            if parsed is not None:
                rounds.append(parsed[0])
    return rounds


def run(sizes: BenchSizes, workdir: Path, say: SayFn) -> SectionResult:
    from fedstore.catalog import Catalog

    rows = sizes.catalog_rows
    say(f"building a catalog and a directory of {rows:,} checkpoints")
    t0 = time.perf_counter()
    cat, scan_dir = _build(workdir, rows)
    assert isinstance(cat, Catalog)
    build_s = time.perf_counter() - t0
    try:
        if not (cat.latest_round() == max(_scan_rounds(scan_dir)) == rows - 1):
            raise RuntimeError("catalog and directory scan disagree on the latest round")
        if cat.list_rounds() != sorted(_scan_rounds(scan_dir)):
            raise RuntimeError("catalog and directory scan disagree on the rounds")
        fast_runs = max(sizes.catalog_runs * 100, 200)
        say("latest round: catalog")
        latest_round = median_time(cat.latest_round, fast_runs)
        latest_rec = median_time(cat.latest_checkpoint, fast_runs)
        say("latest round: directory scan")
        scan_latest = median_time(lambda: max(_scan_rounds(scan_dir)), sizes.catalog_runs)
        say("listing: catalog")
        list_cat = median_time(cat.list_rounds, sizes.catalog_runs)
        say("listing: directory scan")
        list_scan = median_time(lambda: sorted(_scan_rounds(scan_dir)), sizes.catalog_runs)
    finally:
        cat.close()

    result = SectionResult(
        NAME,
        TITLE,
        params={
            "rows": rows,
            "catalog_runs": fast_runs,
            "scan_runs": sizes.catalog_runs,
            "setup_seconds": round(build_s, 2),
        },
    )
    scan = "directory scan"
    latest = f"latest round, {rows:,} rounds"
    listing = f"list all rounds, {rows:,} rounds"

    def catalog_row(
        measure: str,
        variant: str,
        fig: Timing,
        base: Timing,
        target: Target | None = None,
        note: str = "",
    ) -> Row:
        # hundreds of lookups: keep the median, not every sample
        samples = fig[1] if len(fig[1]) <= 50 else []
        ratio = fig[0] / base[0]
        return Row(measure, variant, fig[0], "s", "time", scan, ratio, target, note, samples)

    result.add(
        catalog_row(
            latest, "catalog.latest_round()", latest_round, scan_latest, target=LATEST_TARGET
        )
    )
    result.add(
        catalog_row(
            latest,
            "catalog.latest_checkpoint()",
            latest_rec,
            scan_latest,
            target=LATEST_TARGET,
            note="full row (CheckpointRecord)",
        )
    )
    result.add(
        Row(
            latest,
            scan,
            scan_latest[0],
            "s",
            "time",
            note="os.scandir + parse names + max",
            samples=scan_latest[1],
        )
    )
    result.add(catalog_row(listing, "catalog.list_rounds()", list_cat, list_scan))
    result.add(
        Row(
            listing,
            scan,
            list_scan[0],
            "s",
            "time",
            note="os.scandir + parse names + sort",
            samples=list_scan[1],
        )
    )
    result.notes.append(
        f"setup {build_s:.1f} s; catalog calls are full API calls (session, SQL, dataclass); "
        f"medians of {fast_runs} lookups and {sizes.catalog_runs} scans/listings"
    )
    return result
