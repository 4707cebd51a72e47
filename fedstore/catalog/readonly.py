"""Run a user's SQL against the catalog, guaranteed read-only.

Three independent guards, so a mistake in one does not open a hole:

1. the database is opened through a ``file:...?mode=ro`` URI (SQLite refuses
   every write to the main file at the VFS level);
2. ``PRAGMA query_only = ON`` (SQLite refuses any statement that would
   change the database);
3. an authorizer callback that only allows reading: SELECT, reads of
   columns, functions, recursive CTEs, and introspection PRAGMAs (or plain
   reads of a PRAGMA value). INSERT/UPDATE/DELETE/CREATE/DROP/ALTER/ATTACH/
   DETACH/transaction control/PRAGMA assignments are denied, and the message
   names what was refused.

Table-valued PRAGMA functions (``SELECT * FROM pragma_table_info('t')``) are
refused because SQLite asks to update ``sqlite_master`` for them; use the
statement form ``PRAGMA table_info(t)``.

A progress handler aborts queries that run longer than ``timeout`` seconds.
Only one statement is accepted per call.

Memory is bounded too, so one query cannot exhaust the machine (``SELECT
randomblob(300000000)`` once took 4.4 GB): the connection's SQLite limits
cap any string or blob a query builds or returns at :data:`MAX_VALUE_BYTES`
and a result row at :data:`MAX_COLUMNS` columns, and the rows handed back
may hold at most ``max_bytes`` (default :data:`MAX_RESULT_BYTES`) of values.
Each bound fails the query with a :class:`CatalogError` that says which.
"""

from __future__ import annotations

import math
import re
import sqlite3
import time
from pathlib import Path

from fedstore.catalog.engine import sqlite_uri
from fedstore.catalog.records import QueryResult
from fedstore.errors import CatalogError

__all__ = [
    "MAX_COLUMNS",
    "MAX_RESULT_BYTES",
    "MAX_TIMEOUT",
    "MAX_VALUE_BYTES",
    "ReadOnlyViolation",
    "copy_read_only",
    "read_only_query",
]

#: Longest string or blob a query may build or return (SQLITE_LIMIT_LENGTH); the
#: catalog's own values are CIDs, names and error texts, far below it.
MAX_VALUE_BYTES = 1 << 20
#: Most columns in a result row (SQLITE_LIMIT_COLUMN): with the value cap, one
#: row stays under 64 MiB.
MAX_COLUMNS = 64
#: Default bound on the bytes of all values a query returns.
MAX_RESULT_BYTES = 64 << 20
#: Longest ``timeout`` accepted, seconds.
MAX_TIMEOUT = 24 * 3600.0
#: Rows fetched from SQLite at a time while the result's size is counted.
_BATCH = 256


class ReadOnlyViolation(CatalogError):
    """A statement passed to :func:`read_only_query` would have written; nothing was changed."""


_ALLOWED = {
    sqlite3.SQLITE_SELECT,
    sqlite3.SQLITE_READ,
    sqlite3.SQLITE_FUNCTION,
    getattr(sqlite3, "SQLITE_RECURSIVE", 33),
}
#: PRAGMAs that only describe the schema, whatever their argument.
_INTROSPECTION_PRAGMAS = {
    "table_info",
    "table_xinfo",
    "table_list",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "collation_list",
    "function_list",
    "pragma_list",
    "module_list",
    "compile_options",
    "database_list",
}
#: PRAGMAs that may be read (no argument) but never assigned.
_VALUE_PRAGMAS = {
    "user_version",
    "schema_version",
    "application_id",
    "journal_mode",
    "page_size",
    "page_count",
    "freelist_count",
    "encoding",
    "foreign_keys",
    "data_version",
}

_AUTHORIZER_ACTIONS = [
    "CREATE_INDEX",
    "CREATE_TABLE",
    "CREATE_TEMP_INDEX",
    "CREATE_TEMP_TABLE",
    "CREATE_TEMP_TRIGGER",
    "CREATE_TEMP_VIEW",
    "CREATE_TRIGGER",
    "CREATE_VIEW",
    "DELETE",
    "DROP_INDEX",
    "DROP_TABLE",
    "DROP_TEMP_INDEX",
    "DROP_TEMP_TABLE",
    "DROP_TEMP_TRIGGER",
    "DROP_TEMP_VIEW",
    "DROP_TRIGGER",
    "DROP_VIEW",
    "INSERT",
    "PRAGMA",
    "READ",
    "SELECT",
    "TRANSACTION",
    "UPDATE",
    "ATTACH",
    "DETACH",
    "ALTER_TABLE",
    "REINDEX",
    "ANALYZE",
    "CREATE_VTABLE",
    "DROP_VTABLE",
    "FUNCTION",
    "SAVEPOINT",
    "RECURSIVE",
]
#: authorizer action code -> readable name ("DROP TABLE", "INSERT", ...)
_ACTION_NAMES = {
    getattr(sqlite3, "SQLITE_" + name): name.replace("_", " ")
    for name in _AUTHORIZER_ACTIONS
    if hasattr(sqlite3, "SQLITE_" + name)
}


class _Guard:
    def __init__(self) -> None:
        self.denied: str | None = None

    def __call__(
        self,
        action: int,
        arg1: str | None,
        arg2: str | None,
        _db: str | None,
        _trigger: str | None,
    ) -> int:
        if action in _ALLOWED:
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_PRAGMA and arg1 is not None:
            name = arg1.lower()
            if name in _INTROSPECTION_PRAGMAS or (name in _VALUE_PRAGMAS and arg2 is None):
                return sqlite3.SQLITE_OK
        if self.denied is None:  # report the first refusal, the one the statement hit
            what = _ACTION_NAMES.get(action, f"action {action}")
            target = " ".join(a for a in (arg1, arg2) if a)
            self.denied = f"{what} {target}".strip()
        return sqlite3.SQLITE_DENY


_COMMENT = re.compile(r"^\s*(?:--[^\n]*\n|/\*.*?\*/)", re.S)


def _verb(sql: str) -> str:
    """The statement's first keyword (after comments), upper-cased, for messages."""
    text = sql
    while (m := _COMMENT.match(text)) is not None:
        text = text[m.end() :]
    words = text.split(None, 1)
    return words[0].upper().rstrip(";") if words else "empty"


def _ro_uri(db_path: Path) -> str:
    return sqlite_uri(db_path.resolve(), read_only=True)


def copy_read_only(db_path: Path, dest: Path) -> None:
    """Copy the catalog at ``db_path`` to ``dest`` with SQLite's online backup, reading only.

    The source is opened through a quoted ``file:...?mode=ro`` URI, so the
    copy cannot change it (any path, spaces and ``?``/``#`` included); the
    copy is consistent even while another process writes (WAL). ``dest`` is
    replaced. CatalogError if the source is missing or unreadable.
    """
    if not db_path.is_file():
        raise CatalogError(f"no catalog at {db_path}")
    dest.unlink(missing_ok=True)
    try:
        src = sqlite3.connect(_ro_uri(db_path), uri=True, timeout=5.0)
        try:
            dst = sqlite3.connect(dest)
            try:
                src.backup(dst)
            finally:
                dst.close()
        finally:
            src.close()
    except sqlite3.Error as exc:
        dest.unlink(missing_ok=True)
        raise CatalogError(f"cannot copy catalog {db_path}: {exc}") from exc


def read_only_query(
    db_path: Path,
    sql: str,
    params: tuple[object, ...] | dict[str, object] = (),
    *,
    max_rows: int | None = None,
    timeout: float = 30.0,
    max_bytes: int = MAX_RESULT_BYTES,
) -> QueryResult:
    """Run one SQL statement on the catalog at ``db_path`` without any chance of writing.

    ``max_rows`` (at least 0) cuts the result short and sets ``truncated``;
    ``timeout`` (seconds, finite, above 0, at most :data:`MAX_TIMEOUT`) and
    ``max_bytes`` (the values' total size: text in UTF-8, blobs, 8 per
    number) stop the query with an error.

    Raises :class:`ReadOnlyViolation` (a :class:`CatalogError`) for a statement
    that would write, and :class:`CatalogError` for SQL errors, a missing
    catalog, several statements, a bad limit, or a query exceeding ``timeout``
    seconds or one of the memory bounds of the module docstring.
    """
    if isinstance(timeout, bool) or not (
        isinstance(timeout, int | float) and math.isfinite(timeout) and 0 < timeout <= MAX_TIMEOUT
    ):
        raise CatalogError(
            f"query timeout must be a number of seconds above 0 and at most {MAX_TIMEOUT:g}, "
            f"got {timeout!r}"
        )
    if max_rows is not None and (isinstance(max_rows, bool) or max_rows < 0):
        raise CatalogError(f"max_rows must be 0 or more, got {max_rows!r}")
    if isinstance(max_bytes, bool) or max_bytes < 1:
        raise CatalogError(f"max_bytes must be at least 1, got {max_bytes!r}")
    if not db_path.is_file():
        raise CatalogError(f"no catalog at {db_path}")
    try:
        con = sqlite3.connect(_ro_uri(db_path), uri=True, timeout=5.0)
    except sqlite3.Error as exc:
        raise CatalogError(f"cannot open catalog {db_path} read-only: {exc}") from exc
    guard = _Guard()
    deadline = time.monotonic() + timeout
    timed_out = False

    def _progress() -> int:
        nonlocal timed_out
        if time.monotonic() > deadline:
            timed_out = True
            return 1
        return 0

    try:
        con.execute("PRAGMA query_only = ON")
        con.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
        con.setlimit(sqlite3.SQLITE_LIMIT_COLUMN, MAX_COLUMNS)
        con.set_authorizer(guard)
        con.set_progress_handler(_progress, 10_000)
        try:
            cur = con.execute(sql, params)
            columns = tuple(d[0] for d in cur.description or ())
            rows, truncated = _fetch(cur, max_rows, max_bytes)
        except sqlite3.DataError as exc:  # "string or blob too big"
            raise CatalogError(
                f"query stopped: a value would exceed {MAX_VALUE_BYTES} bytes, the limit "
                f"of catalog queries ({exc})"
            ) from exc
        except sqlite3.Warning as exc:  # "You can only execute one statement at a time."
            raise CatalogError(f"only one SQL statement per query is allowed ({exc})") from exc
        except sqlite3.ProgrammingError as exc:
            raise CatalogError(f"bad query: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            if guard.denied is not None or "readonly" in str(exc) or "read-only" in str(exc):
                raise ReadOnlyViolation(
                    f"refused: this {_verb(sql)} statement would change the catalog, which is "
                    f"read-only here (denied: {guard.denied or 'write'}). Only SELECT queries "
                    "and schema PRAGMAs run. Nothing was changed."
                ) from exc
            if timed_out:
                raise CatalogError(f"query stopped after {timeout:g} s") from exc
            if "too many columns" in str(exc):
                raise CatalogError(
                    f"SQL error: {exc} (catalog queries return at most {MAX_COLUMNS} columns)"
                ) from exc
            raise CatalogError(f"SQL error: {exc}") from exc
    finally:
        con.close()
    return QueryResult(columns, rows, truncated)


def _size(value: object) -> int:
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    if isinstance(value, bytes):
        return len(value)
    return 8


def _fetch(
    cur: sqlite3.Cursor, max_rows: int | None, max_bytes: int
) -> tuple[list[tuple[object, ...]], bool]:
    """The cursor's rows (at most *max_rows*; truncated?), counting their bytes as they come."""
    rows: list[tuple[object, ...]] = []
    total = 0
    while True:
        batch = cur.fetchmany(_BATCH)
        if not batch:
            return rows, False
        for row in batch:
            if max_rows is not None and len(rows) >= max_rows:
                return rows, True
            total += sum(_size(v) for v in row)
            if total > max_bytes:
                raise CatalogError(
                    f"query stopped: the result holds more than {max_bytes} bytes after "
                    f"{len(rows)} rows; narrow it (WHERE, LIMIT, fewer columns) or pass --max-rows"
                )
            rows.append(tuple(row))
