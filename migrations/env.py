"""Alembic environment for the fedstore catalog (SQLite only).

Run in code by :mod:`fedstore.catalog.migrate`, which passes an open
connection in ``config.attributes["connection"]``; from the ``alembic`` CLI
the database comes from ``-x db=PATH``. Either way:

* ``render_as_batch=True``: SQLite cannot ALTER most things, so Alembic
  rebuilds tables (copy, drop, rename); every constraint is named (see
  ``fedstore.catalog.models.NAMING_CONVENTION``) so rebuilds keep them.
* the whole upgrade runs in ONE transaction (SQLite has transactional DDL;
  fedstore's engine emits the BEGIN), with foreign keys off during table
  rebuilds and ``PRAGMA foreign_key_check`` required to be clean before commit.
"""

from __future__ import annotations

from logging.config import fileConfig
from pathlib import Path

from alembic import context
from sqlalchemy.engine import Connection

from fedstore.catalog.engine import WRITE_OPTION, make_engine
from fedstore.catalog.models import Base

config = context.config
target_metadata = Base.metadata

if config.config_file_name is not None and "connection" not in config.attributes:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _db_path() -> Path:
    xargs = context.get_x_argument(as_dictionary=True)
    if "db" in xargs:
        return Path(xargs["db"])
    url = config.get_main_option("sqlalchemy.url")
    if url and url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///"))
    raise SystemExit("fedstore migrations: pass the catalog file with -x db=PATH")


def _check_foreign_keys(connection: Connection) -> None:
    bad = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if bad:
        raise RuntimeError(
            f"migration left {len(bad)} rows violating foreign keys (first: {tuple(bad[0])}); "
            "rolled back"
        )


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()
        if not context.is_offline_mode():
            _check_foreign_keys(connection)


def run_migrations_offline() -> None:
    context.configure(
        url=f"sqlite:///{_db_path()}",
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    conn = config.attributes.get("connection")
    if conn is not None:
        _run(conn)
        return
    engine = make_engine(_db_path(), foreign_keys=False, pooled=False)
    try:
        with engine.connect() as connection:
            _run(connection.execution_options(**{WRITE_OPTION: True}))
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
