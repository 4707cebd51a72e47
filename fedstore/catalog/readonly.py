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
"""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path
from urllib.parse import quote

from fedstore.catalog.records import QueryResult
from fedstore.errors import CatalogError

__all__ = ["ReadOnlyViolation", "copy_read_only", "read_only_query"]


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
    return f"file:{quote(str(db_path.resolve()))}?mode=ro"


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
) -> QueryResult:
    """Run one SQL statement on the catalog at ``db_path`` without any chance of writing.

    Raises :class:`ReadOnlyViolation` (a :class:`CatalogError`) for a statement
    that would write, and :class:`CatalogError` for SQL errors, a missing
    catalog, several statements, or a query exceeding ``timeout`` seconds.
    """
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
        con.set_authorizer(guard)
        con.set_progress_handler(_progress, 10_000)
        try:
            cur = con.execute(sql, params)
            columns = tuple(d[0] for d in cur.description or ())
            if max_rows is None:
                rows = [tuple(r) for r in cur.fetchall()]
                truncated = False
            else:
                rows = [tuple(r) for r in cur.fetchmany(max_rows + 1)]
                truncated = len(rows) > max_rows
                rows = rows[:max_rows]
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
            raise CatalogError(f"SQL error: {exc}") from exc
    finally:
        con.close()
    return QueryResult(columns, rows, truncated)
