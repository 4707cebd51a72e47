"""SQLite engines for the catalog: pragmas, transactions, error mapping, the database URL.

Every connection gets ``journal_mode=WAL`` (readers never block the writer),
``foreign_keys=ON``, ``busy_timeout`` (wait for a lock instead of failing at
once) and ``synchronous=FULL`` (a committed row survives a crash of the
process *and* of the machine).

pysqlite's own transaction handling does not emit ``BEGIN`` before DDL and
starts write transactions lazily; we switch it off and emit ``BEGIN`` from a
SQLAlchemy event instead, so migrations are atomic and a connection bound
for writing starts with ``BEGIN IMMEDIATE`` (takes the write lock up front,
which avoids ``SQLITE_BUSY`` half-way through a read-then-write transaction).

The catalog file is always named through a quoted ``file:`` URI
(:func:`sqlite_uri`), so a data directory whose path holds ``?``, ``#`` or
``%`` opens the file it names (a plain ``sqlite:///<path>`` URL cut the path
at the ``?``). A *read-only* engine (a data directory on a read-only
filesystem, or without write permission) opens the file with ``mode=ro``,
sets ``query_only`` and leaves the journal mode alone; when the directory
cannot be written and holds no ``-wal`` file it adds ``immutable=1``,
because SQLite cannot open a WAL database read-only without creating its
``-shm`` file otherwise.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.pool import NullPool, QueuePool

from fedstore.errors import CatalogError

__all__ = [
    "BUSY_TIMEOUT_MS",
    "MIN_SQLITE_VERSION",
    "WRITE_OPTION",
    "check_sqlite_version",
    "is_writable",
    "make_engine",
    "sqlite_uri",
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


def is_writable(db_path: Path) -> bool:
    """Whether the catalog at *db_path* can be written: its directory (for the ``-wal``,
    ``-shm`` and lock files) and the file itself, if it exists. False on a read-only
    filesystem, for root too."""
    directory = db_path.parent
    if not os.access(directory, os.W_OK):
        return False
    return not db_path.exists() or os.access(db_path, os.W_OK)


def sqlite_uri(db_path: Path, *, read_only: bool = False) -> str:
    """The ``file:`` URI of *db_path* for :func:`sqlite3.connect` (``uri=True``).

    Every character SQLite's URI parser treats specially (``?``, ``#``,
    ``%``) is percent-encoded. *read_only* adds ``mode=ro``, and
    ``immutable=1`` when the directory cannot be written and no ``-wal`` file
    exists beside the database (see the module docstring): then no process
    can be writing it.
    """
    uri = f"file:{quote(str(db_path.absolute()))}"
    if not read_only:
        return uri
    wal = db_path.with_name(db_path.name + "-wal")
    if wal.exists() or os.access(db_path.parent, os.W_OK):
        return uri + "?mode=ro"  # SQLite can use (or create) the -shm file: see writers
    return uri + "?mode=ro&immutable=1"  # nobody can write here: nothing to see


def make_engine(
    db_path: Path, *, foreign_keys: bool = True, pooled: bool = True, read_only: bool = False
) -> Engine:
    """An engine for the catalog file at ``db_path`` with fedstore's pragmas.

    ``foreign_keys=False`` is only for migrations (table rebuilds); they check
    ``PRAGMA foreign_key_check`` before committing. ``pooled=False`` gives a
    NullPool engine (one connection per use, nothing kept open).
    ``read_only=True`` opens the file read-only (module docstring): every
    write fails.
    """
    check_sqlite_version()
    uri = sqlite_uri(db_path, read_only=read_only)

    def connect() -> sqlite3.Connection:
        # the URI goes to sqlite3 as is: SQLAlchemy's URL parsing would cut it at "?"
        return sqlite3.connect(
            uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False
        )

    # the dialect's defaults for a file database: a QueuePool, threads share nothing else
    engine = create_engine(
        "sqlite:///catalog", creator=connect, poolclass=QueuePool if pooled else NullPool
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: object) -> None:
        # Let SQLAlchemy's "begin" event (below) decide when transactions start.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_MS)}")
            if read_only:
                cur.execute("PRAGMA query_only = 1")
            else:
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
