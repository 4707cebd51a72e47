"""Schema migrations run in code: Alembic, the scripts shipped in the wheel.

The migration scripts live in the top-level ``migrations/`` folder of the
source tree and are installed as the package ``fedstore.catalog.migrations``, so an
installed fedstore can upgrade a catalog without the source tree.

:func:`ensure_schema` is what :meth:`Catalog.open` runs. Under an exclusive
``fcntl.flock`` on ``<db>.lock`` (so two processes opening the same old
catalog at once cannot both migrate it) it

* creates the schema in a new or empty file (by running every migration);
* does nothing when the catalog is at the head revision;
* upgrades an older catalog after copying it to ``<db>.bak-<rev>-<time>``
  (SQLite backup API, consistent even in WAL mode), unless auto-upgrade is
  off (``auto_upgrade=False`` or ``FEDSTORE_CATALOG_AUTO_UPGRADE=0``): then it
  refuses with the exact ``fedstore db upgrade`` command to run;
* refuses a catalog written by a newer fedstore (unknown revision), a file
  that is not a fedstore catalog, a zero-length file (a truncated catalog:
  ``fedstore db rebuild`` makes a new one from the round files) and a
  directory it cannot write (read-only opens skip every step above).

Each migration runs in one transaction (``BEGIN IMMEDIATE``) with foreign
keys off, and ``PRAGMA foreign_key_check`` must be clean before it commits;
a crash half-way leaves the catalog at its previous revision.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import os
import re
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError

from fedstore.catalog.engine import (
    WRITE_OPTION,
    is_writable,
    make_engine,
    sqlite_uri,
    translate_errors,
)
from fedstore.errors import CatalogError

__all__ = [
    "AUTO_UPGRADE_ENV",
    "SchemaState",
    "UpgradeResult",
    "alembic_config",
    "backup_database",
    "catalog_lock",
    "check_not_emptied",
    "check_writable",
    "current_revision",
    "dump_schema",
    "ensure_schema",
    "head_revision",
    "heads",
    "migrations_dir",
    "schema_state",
    "upgrade",
]

log = logging.getLogger(__name__)

#: Set to 0/false/no to make opening an old catalog fail instead of upgrading it.
AUTO_UPGRADE_ENV = "FEDSTORE_CATALOG_AUTO_UPGRADE"


def migrations_dir() -> Path:
    """Where ``env.py`` and ``versions/`` are (the ``fedstore.catalog.migrations`` package)."""
    spec = importlib.util.find_spec("fedstore.catalog.migrations")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    # Source checkout that was never installed.
    here = Path(__file__).resolve().parents[2] / "migrations"
    if (here / "env.py").is_file():
        return here
    raise CatalogError(
        "fedstore's migration scripts (package fedstore.catalog.migrations) are not installed; "
        "reinstall fedstore"
    )


def alembic_config(db_path: Path | None = None) -> Config:
    """An Alembic Config pointing at the shipped scripts (and at ``db_path`` if given)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    if db_path is not None:
        cfg.set_main_option("sqlalchemy.url", f"sqlite:///{db_path}")
    return cfg


def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def heads() -> list[str]:
    """All head revisions of the shipped scripts (a healthy tree has exactly one)."""
    return list(_script().get_heads())


def head_revision() -> str:
    """The single head revision; CatalogError if the scripts have several."""
    hs = heads()
    if len(hs) != 1:
        raise CatalogError(
            f"fedstore's migration scripts have {len(hs)} heads ({', '.join(hs)}); "
            "this is a packaging bug, they must be merged into one"
        )
    return hs[0]


def _ro_connect(db_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(sqlite_uri(db_path.resolve(), read_only=True), uri=True)


def current_revision(db_path: Path) -> str | None:
    """The revision stamped in the catalog, or None if it has none (or does not exist).

    Opens the file read-only; never creates or changes it.
    """
    if not db_path.exists() or db_path.stat().st_size == 0:
        return None
    try:
        con = _ro_connect(db_path)
        try:
            has = con.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='alembic_version'"
            ).fetchone()
            if not has:
                return None
            rows = con.execute("SELECT version_num FROM alembic_version").fetchall()
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        raise CatalogError(f"{db_path} is not a readable SQLite database: {exc}") from exc
    if not rows:
        return None
    if len(rows) > 1:
        raise CatalogError(f"{db_path} is stamped with several revisions: {rows}")
    return str(rows[0][0])


def _user_tables(db_path: Path) -> list[str]:
    if not db_path.exists() or db_path.stat().st_size == 0:
        return []
    try:
        con = _ro_connect(db_path)
        try:
            rows = con.execute(
                "SELECT name FROM sqlite_master WHERE type='table' "
                "AND name NOT LIKE 'sqlite_%' ORDER BY name"
            ).fetchall()
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        raise CatalogError(f"{db_path} is not a readable SQLite database: {exc}") from exc
    return [str(r[0]) for r in rows]


@dataclass(frozen=True, slots=True)
class SchemaState:
    """Where a catalog stands relative to the shipped migrations."""

    current: str | None
    head: str
    #: "fresh" (no tables), "current", "behind", "ahead" (unknown revision), "foreign".
    status: str


def schema_state(db_path: Path) -> SchemaState:
    """Classify the catalog at ``db_path`` without changing it."""
    head = head_revision()
    cur = current_revision(db_path)
    if cur is None:
        tables = [t for t in _user_tables(db_path) if t != "alembic_version"]
        return SchemaState(None, head, "foreign" if tables else "fresh")
    if cur == head:
        return SchemaState(cur, head, "current")
    try:
        known = _script().get_revision(cur) is not None
    except CommandError:
        known = False
    return SchemaState(cur, head, "behind" if known else "ahead")


@contextlib.contextmanager
def catalog_lock(db_path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``<db>.lock`` (blocks until available)."""
    lock_path = db_path.with_name(db_path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def backup_database(db_path: Path, tag: str) -> Path:
    """Copy the catalog with SQLite's backup API to ``<db>.bak-<tag>-<UTC time>``."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    dest = db_path.with_name(f"{db_path.name}.bak-{tag}-{stamp}")
    n = 1
    while dest.exists():
        n += 1
        dest = db_path.with_name(f"{db_path.name}.bak-{tag}-{stamp}-{n}")
    src = sqlite3.connect(str(db_path))
    try:
        dst = sqlite3.connect(str(dest))
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()
    return dest


@dataclass(frozen=True, slots=True)
class UpgradeResult:
    """What :func:`upgrade` / :func:`ensure_schema` did."""

    from_revision: str | None
    to_revision: str
    backup: Path | None = None

    @property
    def changed(self) -> bool:
        return self.from_revision != self.to_revision


#: Alembic keeps the running migration context in module-level proxies
#: (``alembic.context``, ``alembic.op``), so two migrations in one process at
#: once (two nodes opening their catalogs in worker threads) would trample each
#: other. The file lock serialises processes; this serialises threads.
_ALEMBIC_LOCK = threading.Lock()


def _run_alembic_upgrade(db_path: Path, revision: str) -> None:
    with _ALEMBIC_LOCK:
        _run_alembic_upgrade_unlocked(db_path, revision)


def _run_alembic_upgrade_unlocked(db_path: Path, revision: str) -> None:
    engine = make_engine(db_path, foreign_keys=False, pooled=False)
    try:
        with (
            translate_errors(f"migrate {db_path} to {revision}"),
            engine.connect() as conn,
        ):
            conn = conn.execution_options(**{WRITE_OPTION: True})
            cfg = alembic_config()
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
            conn.commit()
    except CommandError as exc:
        raise CatalogError(f"cannot migrate {db_path} to {revision}: {exc}") from exc
    finally:
        engine.dispose()


def upgrade(db_path: Path, revision: str = "head", *, backup: bool = True) -> UpgradeResult:
    """Migrate the catalog at ``db_path`` to ``revision`` (under the catalog lock).

    An existing catalog with tables is backed up first when ``backup`` is true.
    A zero-length catalog and a read-only directory are refused (as by
    :func:`ensure_schema`).
    """
    check_not_emptied(db_path)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    check_writable(db_path)
    with catalog_lock(db_path):
        return _upgrade_locked(db_path, revision, backup=backup)


def _upgrade_locked(db_path: Path, revision: str, *, backup: bool) -> UpgradeResult:
    state = schema_state(db_path)
    if state.status == "foreign":
        raise CatalogError(
            f"{db_path} holds tables but no fedstore schema revision; it is not a fedstore "
            "catalog (move it away or choose another --dir)"
        )
    if state.status == "ahead":
        raise CatalogError(
            f"{db_path} is at schema revision {state.current}, which this fedstore does not "
            f"know (newest known: {state.head}); it was written by a newer fedstore, upgrade "
            "fedstore to use it"
        )
    target = state.head if revision == "head" else revision
    if state.current == target:
        return UpgradeResult(state.current, target)
    bak = None
    if backup and state.current is not None:
        bak = backup_database(db_path, state.current)
        log.info("catalog %s backed up to %s before upgrading", db_path, bak)
    _run_alembic_upgrade(db_path, revision)
    new = current_revision(db_path)
    assert new is not None
    log.info("catalog %s upgraded from %s to %s", db_path, state.current or "(empty)", new)
    return UpgradeResult(state.current, new, bak)


def _auto_upgrade_default() -> bool:
    return os.environ.get(AUTO_UPGRADE_ENV, "1").strip().lower() not in {"0", "false", "no", "off"}


def check_not_emptied(db_path: Path) -> None:
    """Refuse a zero-length catalog: CatalogError naming ``fedstore db rebuild``.

    SQLite writes a new catalog's first page as soon as it opens it (the WAL
    switch), so an empty file is a truncated catalog, not a new one: silently
    creating a fresh schema there would lose its history while the round
    files stay beside it as orphans.
    """
    try:
        empty = db_path.stat().st_size == 0
    except FileNotFoundError:
        return
    if empty:
        raise CatalogError(
            f"catalog {db_path} is empty (0 bytes): its history is lost. Rebuild it from the "
            f"checkpoint files with: fedstore db rebuild --dir {_shell_dir(db_path)} "
            "(or move it away to start a new catalog)"
        )


def check_writable(db_path: Path) -> None:
    """CatalogError when the catalog (or its directory) cannot be written."""
    if not is_writable(db_path):
        raise CatalogError(
            f"the data directory {db_path.parent} is read-only: commands that only read "
            "(checkpoint ls/inspect/load/verify, catalog sql/rounds, db current) work; "
            "saving, syncing and running a node need it writable"
        )


def ensure_schema(
    db_path: Path, *, auto_upgrade: bool | None = None, read_only: bool = False
) -> UpgradeResult:
    """Make the catalog at ``db_path`` usable: create, keep or upgrade its schema.

    See the module docstring for the rules. ``auto_upgrade=None`` reads
    ``FEDSTORE_CATALOG_AUTO_UPGRADE`` (default on). A zero-length file is
    refused (:func:`check_not_emptied`). With *read_only* nothing is
    created, locked or changed: the catalog must exist at the head revision.
    """
    check_not_emptied(db_path)
    if read_only:
        if not db_path.is_file():
            raise CatalogError(f"no catalog at {db_path}")
        state = schema_state(db_path)
        if state.status != "current":
            raise CatalogError(
                f"catalog {db_path} is at schema revision {state.current or '(none)'}, this "
                f"fedstore needs {state.head}, and it is read-only here: open it where it can "
                "be written once (fedstore db upgrade)"
            )
        return UpgradeResult(state.current, state.head)
    if auto_upgrade is None:
        auto_upgrade = _auto_upgrade_default()
    db_path.parent.mkdir(parents=True, exist_ok=True)
    check_writable(db_path)
    # Fast path without the lock: the usual case is an up-to-date catalog.
    if db_path.exists():
        state = schema_state(db_path)
        if state.status == "current":
            return UpgradeResult(state.current, state.head)
    with catalog_lock(db_path):
        state = schema_state(db_path)
        if state.status == "behind" and not auto_upgrade:
            raise CatalogError(
                f"catalog {db_path} is at schema revision {state.current}, this fedstore needs "
                f"{state.head}. Back it up, then run: fedstore db upgrade --dir "
                f"{_shell_dir(db_path)}"
            )
        return _upgrade_locked(db_path, "head", backup=True)


def _shell_dir(db_path: Path) -> str:
    d = str(db_path.parent)
    return d if re.fullmatch(r"[\w./-]+", d) else "'" + d.replace("'", "'\\''") + "'"


_WS = re.compile(r"\s+")


def dump_schema(db_path: Path) -> str:
    """The schema of the catalog as normalised SQL, one statement per line, sorted.

    Used by the schema snapshot test and ``fedstore db schema``.
    """
    con = _ro_connect(db_path)
    try:
        rows = con.execute(
            "SELECT type, name, sql FROM sqlite_master "
            "WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%' ORDER BY type, name"
        ).fetchall()
    finally:
        con.close()
    lines = []
    for type_, _name, sql in rows:
        norm = _WS.sub(" ", str(sql)).strip()
        norm = re.sub(r"\(\s+", "(", norm)
        norm = re.sub(r"\s+\)", ")", norm)
        if type_ == "table":
            norm = _sort_table_constraints(norm)
        lines.append(norm + ";")
    return "\n".join(lines) + "\n"


_CONSTRAINT_START = ("CONSTRAINT ", "PRIMARY KEY", "UNIQUE", "CHECK", "FOREIGN KEY")


def _split_top_level(body: str) -> list[str]:
    """Split ``a, b (c, d), 'e,f'`` at the commas outside parentheses and quotes."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(body):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"`[":
            quote = "]" if ch == "[" else ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(body[start:i].strip())
            start = i + 1
    parts.append(body[start:].strip())
    return parts


def _sort_table_constraints(sql: str) -> str:
    """Columns keep their order; table constraints are sorted (batch rebuilds shuffle them)."""
    open_at, close_at = sql.find("("), sql.rfind(")")
    if open_at < 0 or close_at < open_at:
        return sql
    items = _split_top_level(sql[open_at + 1 : close_at])
    columns = [i for i in items if not i.upper().startswith(_CONSTRAINT_START)]
    constraints = sorted(i for i in items if i.upper().startswith(_CONSTRAINT_START))
    body = ", ".join(columns + constraints)
    return f"{sql[: open_at + 1]}{body}{sql[close_at:]}"
