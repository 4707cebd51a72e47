"""``fedstore bench``: measure fedstore against the alternatives and print a table with ratios.

::

    fedstore bench              # full sizes: 100 MB model, 256 MiB file, 100k rows, 8 peers
    fedstore bench --quick      # small sizes, well under 3 minutes on 2 cores
    fedstore bench --only format,cid --json out.json
    fedstore bench --quick --size model_mb=50 --size peers=6

Progress goes to stderr, the table to stdout, the JSON report to ``--json``
(default ``fedstore-bench.json``). Exit code 0 when every section ran (missed
targets are figures, not failures), 1 when a section raised (it shows as an
error row; the other sections still ran).
"""

from __future__ import annotations

import argparse
import shlex
import sys

from fedstore.bench.common import BenchSizes
from fedstore.bench.runner import SECTIONS

__all__ = ["DEFAULT_JSON", "register", "run"]

DEFAULT_JSON = "fedstore-bench.json"


def _sections(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown section(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(SECTIONS)}"
        )
    return names


def _size(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name.strip(), value.strip()


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sizes = BenchSizes()
    p = sub.add_parser(
        "bench",
        help="benchmark fedstore against pickle, npz, safetensors, sha256sum, a dir scan",
        description=(
            "Measure, side by side in one run: checkpoint save/load against pickle, np.savez "
            "and safetensors; CID hashing against sha256sum and its peak memory; catalog "
            "lookups against a directory scan; announcement delivery across peer processes; "
            "an offline peer's catch-up against reading and hashing the file; lossy update "
            "encodings against float32 on the digits task (bytes, accuracy). Prints a table "
            "with ratios and writes a JSON report. Ratios are the result; absolute times vary "
            "between machines."
        ),
        epilog=(
            f"Sections: {', '.join(SECTIONS)}. Sizes (--size NAME=VALUE): "
            + ", ".join(f"{k}={v}" for k, v in sizes.to_dict().items())
            + " (full defaults)."
        ),
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="small sizes (16 MB model, 32 MiB file, 10,000 rows, 4 peers)",
    )
    p.add_argument(
        "--json",
        metavar="PATH",
        default=DEFAULT_JSON,
        help=f"where to write the JSON report (default {DEFAULT_JSON})",
    )
    p.add_argument(
        "--only",
        metavar="SECTIONS",
        type=_sections,
        help=f"comma-separated sections to run (default all: {','.join(SECTIONS)})",
    )
    p.add_argument(
        "--size",
        metavar="NAME=VALUE",
        type=_size,
        action="append",
        default=[],
        help="override one size or run count, e.g. --size model_mb=50 (repeatable)",
    )
    p.add_argument(
        "--dir",
        metavar="DIR",
        default=None,
        help="parent directory for the temporary files (default: the system temp dir)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; print the table; write the JSON. 1 if a section failed."""
    sizes = BenchSizes.quick() if args.quick else BenchSizes.full()
    try:
        sizes = sizes.with_overrides(dict(args.size))
    except ValueError as exc:
        print(f"fedstore bench: error: {exc}", file=sys.stderr)
        return 2
    from rich.console import Console

    from fedstore.bench.runner import default_console, print_report, run_bench, write_json

    command = _command_line(args)
    report = run_bench(
        sizes,
        only=args.only,
        quick=args.quick,
        workdir=args.dir,
        console=Console(stderr=True),
        command=command,
    )
    out = default_console()
    print_report(report, out)
    path = write_json(report, args.json)
    out.print(f"JSON report: {path}")
    return 1 if report.failed else 0


def _command_line(args: argparse.Namespace) -> str:
    """The command as a user would type it to reproduce this run (for the report)."""
    parts = ["fedstore", "bench"]
    if args.quick:
        parts.append("--quick")
    if args.only:
        parts += ["--only", ",".join(args.only)]
    for name, value in args.size:
        parts += ["--size", f"{name}={value}"]
    if args.json != DEFAULT_JSON:
        parts += ["--json", args.json]
    return shlex.join(parts)
