"""``fedstore bench``: fedstore against the alternatives, side by side, in one run.

Sections (one module each; run in this order, each independent)::

    format    checkpoint save/load of a float32 model vs pickle, np.savez, safetensors
    cid       CID of a file vs sha256sum; peak memory of hashing a large file
    catalog   latest round and round listing from the catalog vs a directory scan
    announce  announcement delivery across peer processes (median, p95)
    catchup   an offline peer's fetch + verify + load vs read + sha256
    updates   lossy update encodings (float16, int8, top-k) vs float32: bytes, accuracy
    startup   `fedstore --help` and `--version` vs `python -c pass` (median wall time)
    swarm     N trainers fetch a new model over capped links: bitswap swarm vs star
    federation-large  a 100 MB model's rounds over bitswap: time per step, peak memory

Use::

    from fedstore.bench import BenchSizes, run_bench, write_json
    report = run_bench(BenchSizes.quick(), only=["format", "cid"], quick=True)
    write_json(report, "fedstore-bench.json")

Figures are measured, never asserted: targets are recorded next to them and
the table says which were met. Absolute times vary between machines; the
ratios are the result.
"""

from fedstore.bench.common import BenchSizes, Row, SectionResult, Target
from fedstore.bench.runner import (
    SECTIONS,
    BenchReport,
    print_report,
    render_table,
    run_bench,
    write_json,
)

__all__ = [
    "SECTIONS",
    "BenchReport",
    "BenchSizes",
    "Row",
    "SectionResult",
    "Target",
    "print_report",
    "render_table",
    "run_bench",
    "write_json",
]
