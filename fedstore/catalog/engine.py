"""SQLite engines for the catalog: pragmas, transactions, error mapping.

Every connection gets ``journal_mode=WAL`` (readers never block the writer),
``foreign_keys=ON``, ``busy_timeout`` (wait for a lock instead of failing at
once) and ``synchronous=FULL`` (a committed row survives a crash of the
process *and* of the machine).

pysqlite's own transaction handling does not emit ``BEGIN`` before DDL and
starts write transactions lazily; we switch it off and emit ``BEGIN`` from a
SQLAlchemy event instead, so migrations are atomic and a connection bound
for writing starts with ``BEGIN IMMEDIATE`` (takes the write lock up front,
which avoids ``SQLITE_BUSY`` half-way through a read-then-write transaction).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from fedstore.errors import CatalogError

__all__ = [
    "BUSY_TIMEOUT_MS",
    "MIN_SQLITE_VERSION",
    "WRITE_OPTION",
    "check_sqlite_version",
    "make_engine",
    "translate_errors",
]

#: How long a connection waits for another process's lock before giving up.
BUSY_TIMEOUT_MS = 20_000
#: Oldest SQLite library the catalog supports (window functions, RENAME COLUMN, UPSERT).
MIN_SQLITE_VERSION = (3, 31, 0)
#: Execution option that makes a connection start its transactions with BEGIN IMMEDIATE.
WRITE_OPTION = "fedstore_write"


def check_sqlite_version(version: tuple[int, int, int] = sqlite3.sqlite_version_info) -> None:
    """Raise :class:`CatalogError` if the SQLite library is too old for the catalog."""
    if version < MIN_SQLITE_VERSION:
        have = ".".join(map(str, version))
        need = ".".join(map(str, MIN_SQLITE_VERSION))
        raise CatalogError(
            f"SQLite {have} is too old for the fedstore catalog (need >= {need}); "
            "use a Python built against a newer SQLite"
        )


def make_engine(db_path: Path, *, foreign_keys: bool = True, pooled: bool = True) -> Engine:
    """An engine for the catalog file at ``db_path`` with fedstore's pragmas.

    ``foreign_keys=False`` is only for migrations (table rebuilds); they check
    ``PRAGMA foreign_key_check`` before committing. ``pooled=False`` gives a
    NullPool engine (one connection per use, nothing kept open).
    """
    check_sqlite_version()
    kwargs: dict[str, Any] = {"connect_args": {"timeout": BUSY_TIMEOUT_MS / 1000}}
    if not pooled:
        kwargs["poolclass"] = NullPool
    engine = create_engine(f"sqlite:///{db_path}", **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: object) -> None:
        # Let SQLAlchemy's "begin" event (below) decide when transactions start.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_MS)}")
            cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA synchronous = FULL")
            cur.execute(f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'}")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get(WRITE_OPTION):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")

    return engine


@contextlib.contextmanager
def translate_errors(action: str) -> Iterator[None]:
    """Turn SQLAlchemy/sqlite3 errors raised while doing ``action`` into CatalogError."""
    try:
        yield
    except CatalogError:
        raise
    except OperationalError as exc:
        msg = str(exc.orig) if isinstance(exc, DBAPIError) else str(exc)
        if "locked" in msg or "busy" in msg:
            raise CatalogError(
                f"catalog is busy while trying to {action}: another process held the "
                f"write lock for more than {BUSY_TIMEOUT_MS // 1000} s; try again"
            ) from exc
        raise CatalogError(f"catalog failed to {action}: {msg}") from exc
    except SQLAlchemyError as exc:
        msg = str(exc.orig) if isinstance(exc, DBAPIError) else str(exc)
        raise CatalogError(f"catalog failed to {action}: {msg}") from exc
    except sqlite3.Error as exc:
        raise CatalogError(f"catalog failed to {action}: {exc}") from exc
