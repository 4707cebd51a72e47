"""``fedstore pins ls`` and ``fedstore pins retry``: where each checkpoint is kept."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from fedstore.cli.datadir import add_dir_argument, data_dir

if TYPE_CHECKING:
    from fedstore.backends.chain import BackendChain
    from fedstore.node.replication import PinOutcome

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "pins",
        help="show and repair where each CID is pinned, per storage backend",
        description=(
            "Each save records one pin row per backend it tried (pinned, failed with the "
            "error, or pending while it runs). 'ls' shows them; 'retry' stores the failed, "
            "interrupted and missing ones again."
        ),
    )
    pins_sub = p.add_subparsers(dest="pins_command", metavar="SUBCOMMAND")
    pins_sub.required = True

    ls = pins_sub.add_parser(
        "ls",
        help="every CID's state per backend",
        description="Show every CID in the catalog and its pin state on each backend.",
    )
    _dir_arg(ls)
    ls.add_argument(
        "--state", choices=["pinned", "failed", "pending"], help="only rows in this state"
    )
    ls.add_argument("--json", action="store_true", help="one JSON object per pin row")
    ls.set_defaults(func=cmd_ls)

    retry = pins_sub.add_parser(
        "retry",
        help="store failed, interrupted and missing pins again once their backend is back",
        description=(
            "For every pin row in state 'failed' or 'pending' (an attempt a crash "
            "interrupted), store the CID again on that backend: from the local checkpoint "
            "file, else fetched (verified) from another backend. A local checkpoint with no "
            "pin row at all (the node stopped between the local save and the backend "
            "chain's write) is stored by the chain's write policy. "
            "Exit status 1 if some remain failed."
        ),
    )
    _dir_arg(retry)
    retry.add_argument(
        "--backends",
        metavar="LIST",
        help="comma-separated backends whose failed pins to retry (default: those of the chain "
        "the node last ran with on this data directory)",
    )
    retry.add_argument("--json", action="store_true", help="one JSON object per attempt")
    retry.set_defaults(func=cmd_retry)


def _dir_arg(p: argparse.ArgumentParser) -> None:
    add_dir_argument(p)


def _catalog_path(args: argparse.Namespace) -> Path:
    from fedstore.cli.checkpoint_cmd import existing_catalog

    return existing_catalog(data_dir(args))


def cmd_ls(args: argparse.Namespace) -> int:
    from rich.table import Table

    from fedstore.catalog import Catalog

    with Catalog.open(_catalog_path(args), read_only=None) as catalog:
        rows = catalog.pins(args.state)
    if args.json:
        for r in rows:
            print(
                json.dumps(
                    {
                        "cid": r.cid,
                        "backend": r.backend,
                        "state": r.state,
                        "backend_ref": r.backend_ref,
                        "error": r.last_error,
                        "attempts": r.attempts,
                        "updated_at": r.updated_at.isoformat(),
                    }
                )
            )
        return 0
    if not rows:
        print("no pin rows" + (f" in state {args.state}" if args.state else ""), file=sys.stderr)
        return 0
    from rich.text import Text

    from fedstore.console import cell, clean, table_console

    backends = sorted({r.backend for r in rows})
    by_cid: dict[str, dict[str, Text]] = {}
    for r in sorted(rows, key=lambda r: r.updated_at):
        # error texts quote what services answered: shown as text, control characters escaped
        shown = cell(r.state)
        if r.state == "failed" and r.last_error:
            err = r.last_error if len(r.last_error) <= 60 else r.last_error[:57] + "..."
            shown = Text.assemble(("failed", "red"), f" ({clean(err)})")
        elif r.state == "pinned":
            shown = cell("pinned", style="green")
        by_cid.setdefault(r.cid, {})[r.backend] = shown
    table = Table(title="pins per backend")
    table.add_column("CID", no_wrap=True, min_width=max(len(c) for c in by_cid))
    for name in backends:
        table.add_column(cell(name), overflow="ellipsis", min_width=len(name))
    for cid, cells in by_cid.items():
        table.add_row(cell(cid), *(cells.get(name, cell("-")) for name in backends))
    width = max(120, len(max(by_cid, key=len)) + 24 * len(backends))
    table_console(width=width).print(table)
    return 0


def _retry_chain(args: argparse.Namespace, db: Path, settings: dict[str, str]) -> BackendChain:
    """The chain to retry with: ``--backends`` added to the default chain, else the chain the
    node last ran with on this data directory (``node_runs``), else the default chain.

    Backends that only work inside a running node (bitswap) are left out with a log line:
    the node completes their copies itself when it starts.
    """
    import fedstore.backends as registry
    from fedstore.backends import BackendContext, default_backend_names, parse_backend_list
    from fedstore.catalog import Catalog

    ctx = BackendContext(data_dir=db.parent)
    if args.backends:
        names = default_backend_names(settings, ctx)
        names += [n for n in parse_backend_list(args.backends) if n not in names]
    else:
        with Catalog.open(db) as catalog:
            run = catalog.last_node_run()
        if run is not None and run.backends:
            names = list(run.backends)
            print(
                f"retrying with the chain the node last ran with here: {','.join(names)}",
                file=sys.stderr,
            )
        else:
            names = default_backend_names(settings, ctx)
    return registry.build_chain(names, settings, ctx)  # unusable ones: skipped, logged


def cmd_retry(args: argparse.Namespace) -> int:
    import trio

    from fedstore.backends import parse_backend_list
    from fedstore.catalog import AsyncCatalog, Catalog
    from fedstore.config import load_settings
    from fedstore.console import clean
    from fedstore.node.replication import retry_failed_pins

    settings = load_settings()
    wanted = parse_backend_list(args.backends) if args.backends else None
    db = _catalog_path(args)
    chain = _retry_chain(args, db, settings)

    async def run() -> list[PinOutcome]:
        catalog = AsyncCatalog(await trio.to_thread.run_sync(Catalog.open, db))
        async with catalog, chain:
            return await retry_failed_pins(chain, catalog, backends=wanted)

    outcomes = trio.run(run)
    if args.json:
        for o in outcomes:
            print(json.dumps(_outcome_json(o)))
        return 1 if any(o.state == "failed" for o in outcomes) else 0
    if not outcomes:
        print("nothing to retry: no failed, pending or missing pins", file=sys.stderr)
        return 0
    for o in outcomes:
        detail = o.backend_ref or "" if o.state == "pinned" else o.error or ""
        print(clean(f"{o.cid}  {o.backend:<12} {o.state:<8} {detail}".rstrip()))
    return 1 if any(o.state == "failed" for o in outcomes) else 0


def _outcome_json(o: PinOutcome) -> dict[str, object]:
    return {
        "cid": o.cid,
        "backend": o.backend,
        "state": o.state,
        "backend_ref": o.backend_ref,
        "error": o.error,
    }
