"""``fedstore catalog sql|rounds``: query the node's catalog (read-only)."""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from typing import IO, TYPE_CHECKING, Any

from fedstore.cli.checkpoint_cmd import add_dir_argument, data_dir, existing_catalog

if TYPE_CHECKING:
    from rich.text import Text

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "catalog",
        help="query the catalog: read-only SQL and the round history",
        description=(
            "The catalog (catalog.sqlite in the data directory) records local checkpoints, "
            "CID announcements heard from peers, peers and pins. Tables and views are "
            "described in docs/CATALOG.md."
        ),
    )
    cmds = p.add_subparsers(dest="catalog_command", metavar="SUBCOMMAND")
    cmds.required = True

    sql = cmds.add_parser(
        "sql",
        help="run a read-only SQL query and print the result",
        description=(
            "Run one SELECT statement (or a schema PRAGMA) on a read-only connection. "
            "Statements that would write (INSERT, UPDATE, DELETE, DROP, ATTACH, PRAGMA "
            "assignments...) are refused and the catalog is left untouched. Useful views: "
            "round_history, latest_checkpoint, pin_status, round_summary."
        ),
    )
    sql.add_argument("query", metavar="SQL", help='e.g. "SELECT * FROM round_history"')
    fmt = sql.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print a JSON array of row objects")
    fmt.add_argument("--csv", action="store_true", help="print CSV with a header row")
    sql.add_argument(
        "--max-rows", type=_count, default=None, metavar="N", help="stop after N rows (N >= 1)"
    )
    sql.add_argument(
        "--timeout",
        type=_seconds,
        default=30.0,
        metavar="S",
        help="abort after S seconds (default 30, at most one day)",
    )
    add_dir_argument(sql)
    sql.set_defaults(func=cmd_sql)

    rounds = cmds.add_parser(
        "rounds",
        help="the round history: local checkpoints, announcements and pins per round",
        description="Print the round_history view, newest round first.",
    )
    rounds.add_argument("--limit", type=_count, default=None, metavar="N", help="at most N rows")
    rounds.add_argument("--json", action="store_true", help="one JSON object per row")
    add_dir_argument(rounds)
    rounds.set_defaults(func=cmd_rounds)


def _count(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r:.40}")
    return int(text)


def _seconds(text: str) -> float:
    """argparse type: a finite number of seconds above 0, at most MAX_TIMEOUT."""
    from fedstore.catalog.readonly import MAX_TIMEOUT

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= MAX_TIMEOUT):
        raise argparse.ArgumentTypeError(
            f"expected seconds above 0 and at most {MAX_TIMEOUT:g}, got {text!r:.40}"
        )
    return value


def _warn_if_old(db: Any) -> None:
    from fedstore.catalog import migrate

    state = migrate.schema_state(db)
    if state.status == "behind":
        print(
            f"fedstore: warning: catalog schema is at {state.current}, head is {state.head}; "
            f"some views may be missing (run: fedstore db upgrade --dir {db.parent})",
            file=sys.stderr,
        )


#: Rows shown in the table view when --max-rows is not given (rendering a table
#: costs far more memory and time than the rows: --csv and --json print them all).
TABLE_MAX_ROWS = 10_000
#: Characters of one value shown in the table view (the rest is counted, not shown).
TABLE_CELL_CHARS = 1_000


def _cell(value: object) -> Text:
    from fedstore.console import cell

    if value is None:
        return cell("NULL", style="dim")
    if isinstance(value, bytes):
        shown = value[: TABLE_CELL_CHARS // 2]
        more = f"… (+{len(value) - len(shown)} bytes)" if len(shown) < len(value) else ""
        return cell("0x" + shown.hex() + more)
    return cell(value, limit=TABLE_CELL_CHARS)


class _LineFeedRows:
    """A text stream for ``csv.writer`` (one ``write`` per row) ending rows in ``\\n``."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def write(self, row: str) -> int:
        if row.endswith("\r\n"):
            row = row[:-2] + "\n"
        return self._stream.write(row)


def _jsonable(value: object) -> object:
    return "0x" + value.hex() if isinstance(value, bytes) else value


def cmd_sql(args: argparse.Namespace) -> int:
    from fedstore.catalog import read_only_query

    db = existing_catalog(data_dir(args))
    _warn_if_old(db)
    table_view = not (args.json or args.csv)
    max_rows = args.max_rows
    if table_view and max_rows is None:
        max_rows = TABLE_MAX_ROWS
    result = read_only_query(db, args.query, max_rows=max_rows, timeout=args.timeout)
    if args.json:
        rows = [
            {c: _jsonable(v) for c, v in zip(result.columns, row, strict=True)}
            for row in result.rows
        ]
        print(json.dumps(rows, indent=2))
    elif args.csv:
        # "\r\n" makes the csv module quote values holding a lone "\r" too (with "\n"
        # alone it would not, and a peer's "\r" could start a forged row for some
        # readers); each row still ends in "\n" on the way out
        writer = csv.writer(_LineFeedRows(sys.stdout), lineterminator="\r\n")
        writer.writerow(result.columns)
        writer.writerows([_jsonable(v) for v in row] for row in result.rows)
    else:
        from rich.table import Table

        from fedstore.console import cell, table_console

        table = Table()
        for col in result.columns:
            table.add_column(cell(col), overflow="fold")
        for row in result.rows:
            table.add_row(*(_cell(v) for v in row))
        console = table_console()
        console.print(table)
        console.print(f"{len(result.rows)} row(s)")
    if result.truncated:
        why = (
            "--max-rows"
            if args.max_rows is not None
            else "the table view's limit; --csv or --json print every row"
        )
        print(f"fedstore: stopped after {max_rows} rows ({why})", file=sys.stderr)
    return 0


def cmd_rounds(args: argparse.Namespace) -> int:
    from fedstore.catalog import Catalog

    db = existing_catalog(data_dir(args))
    with Catalog.open(db, read_only=None) as cat:
        rows = cat.round_history(limit=args.limit)
    if args.json:
        for r in rows:
            print(
                json.dumps(
                    {
                        "round": r.round,
                        "cid": r.cid,
                        "stored_locally": r.stored_locally,
                        "local_status": r.local_status,
                        "stored_size": r.stored_size,
                        "announced_by": r.announced_by,
                        "first_heard": r.first_heard.isoformat() if r.first_heard else None,
                        "pinned_on": r.pinned_on,
                        "pin_states": r.pin_states,
                    }
                )
            )
        return 0
    from rich.table import Table

    from fedstore.console import cell, table_console

    console = table_console()
    if not rows:
        console.print(cell(f"no rounds recorded in {db}"))
        return 0
    table = Table(title="round history")
    for col in ("round", "CID", "local", "announced by", "first heard (UTC)", "pins"):
        table.add_column(col, no_wrap=col in ("round", "CID"))
    for r in rows:
        if r.stored_locally:
            local = cell(r.local_status, style="green" if r.local_status == "ok" else "red")
        else:
            local = cell("-")
        table.add_row(
            str(r.round),
            cell(r.cid),
            local,
            f"{r.announced_by} peer(s)" if r.announced_by else "-",
            r.first_heard.strftime("%Y-%m-%d %H:%M:%S") if r.first_heard else "-",
            cell(r.pin_states or "-"),
        )
    console.print(table)
    return 0
