"""Alembic migrations: single head, upgrade keeps data, schema snapshot, concurrent opens."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.schema import CreateTable

from fedstore.catalog import Catalog, migrate
from fedstore.catalog.models import Base
from fedstore.errors import CatalogError

REPO = Path(__file__).resolve().parents[1]
SNAPSHOT = Path(__file__).parent / "schema" / "catalog.sql"
HOW_TO_FIX = """
HOW TO FIX
  The catalog models (fedstore/catalog/models.py) and the migrations
  (migrations/versions/) no longer describe the same schema.
  * If you changed the models on purpose, write a migration for the change:
      alembic -c migrations/alembic.ini -x db=/tmp/scratch.sqlite upgrade head
      alembic -c migrations/alembic.ini -x db=/tmp/scratch.sqlite \\
          revision --autogenerate --rev-id NNNN -m "what changed"
    review it (batch mode, named constraints, server defaults for new NOT NULL
    columns), then regenerate the snapshot:
      fedstore db schema --fresh > tests/schema/catalog.sql
  * If you did not mean to change the schema, revert the model/migration edit.
"""


def script() -> ScriptDirectory:
    return ScriptDirectory.from_config(migrate.alembic_config())


def first_revision() -> str:
    revs = list(script().walk_revisions())  # head first, base last
    return revs[-1].revision


def test_single_head_and_at_least_two_revisions() -> None:
    heads = migrate.heads()
    assert len(heads) == 1, f"migrations have several heads {heads}; merge them"
    revs = list(script().walk_revisions())
    assert len(revs) >= 2
    assert revs[-1].down_revision is None
    assert migrate.head_revision() == heads[0] == revs[0].revision


def test_migrations_are_packaged_in_the_wheel() -> None:
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())
    setuptools_cfg = cfg["tool"]["setuptools"]
    assert {"fedstore.catalog.migrations", "fedstore.catalog.migrations.versions"} <= set(
        setuptools_cfg["packages"]
    )
    assert setuptools_cfg["package-dir"]["fedstore.catalog.migrations"] == "migrations"
    assert "script.py.mako" in setuptools_cfg["package-data"]["fedstore.catalog.migrations"]
    d = migrate.migrations_dir()
    assert (d / "env.py").is_file() and (d / "script.py.mako").is_file()
    assert (d / "versions" / "__init__.py").is_file()


def insert_old_rows(db: Path) -> None:
    con = sqlite3.connect(db)
    with con:
        con.execute(
            "INSERT INTO peers (peer_id, addrs, first_seen, last_seen) VALUES "
            "('peerA', '[\"/ip4/127.0.0.1/tcp/4001\"]', '2026-01-01 10:00:00.000000', "
            "'2026-01-01 11:00:00.000000')"
        )
        for r in (1, 2, 3):
            con.execute(
                "INSERT INTO checkpoints (round, cid, cid_version, codec, raw_size, stored_size, "
                "created_at, created_by, path) VALUES (?, ?, 0, 'fsc1', ?, ?, "
                "'2026-01-01 10:00:00.000000', 'peerA', ?)",
                (r, f"QmOld{r}", 1000 * r, 400 * r, f"rounds/round_{r:06d}_QmOld{r}.fsc"),
            )
        con.execute(
            "INSERT INTO announcements (round, cid, sender_peer, topic, received_at, "
            "last_received_at, times_heard) VALUES (3, 'QmOld3', 'peerA', 'model-cids', "
            "'2026-01-01 10:30:00.000000', '2026-01-01 10:31:00.000000', 2)"
        )
    con.close()


def test_upgrade_from_first_revision_keeps_data(tmp_path: Path) -> None:
    db = tmp_path / "catalog.sqlite"
    base = first_revision()
    migrate.upgrade(db, base)
    assert migrate.current_revision(db) == base
    insert_old_rows(db)

    with Catalog.open(tmp_path) as cat:
        assert cat.opened.from_revision == base
        assert cat.opened.to_revision == migrate.head_revision()
        assert cat.revision() == migrate.head_revision()
        rows = cat.list_checkpoints()
        assert [(r.round, r.cid, r.raw_size, r.stored_size, r.status) for r in rows] == [
            (1, "QmOld1", 1000, 400, "ok"),
            (2, "QmOld2", 2000, 800, "ok"),
            (3, "QmOld3", 3000, 1200, "ok"),
        ]
        assert rows[0].created_by == "peerA" and rows[0].created_at.tzinfo is not None
        peer = cat.get_peer("peerA")
        assert peer is not None and peer.addrs == ("/ip4/127.0.0.1/tcp/4001",)
        assert peer.role is None
        ann = cat.announcements()
        assert [(a.round, a.cid, a.times_heard) for a in ann] == [(3, "QmOld3", 2)]
        hist = cat.round_history()
        assert [(h.round, h.stored_locally, h.announced_by) for h in hist] == [
            (3, True, 1),
            (2, True, 0),
            (1, True, 0),
        ]
        # new features work on the upgraded catalog
        cat.set_pin("QmOld3", "kubo", "pinned")
        cat.add_checkpoint(
            4, "QmNew4", cid_version=1, codec="c", raw_size=1, stored_size=1, path="p"
        )
        assert cat.latest_round() == 4
        backup = cat.opened.backup
    # the backup is the old catalog, at the old revision, with the old rows
    assert backup is not None and backup.is_file()
    assert migrate.current_revision(backup) == base
    con = sqlite3.connect(backup)
    assert con.execute("SELECT COUNT(*) FROM checkpoints").fetchone() == (3,)
    con.close()


def test_auto_upgrade_off_refuses_with_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "catalog.sqlite"
    migrate.upgrade(db, first_revision())
    monkeypatch.setenv(migrate.AUTO_UPGRADE_ENV, "0")
    with pytest.raises(CatalogError, match=r"run: fedstore db upgrade --dir "):
        Catalog.open(tmp_path)
    assert migrate.current_revision(db) == first_revision()
    with Catalog.open(tmp_path, auto_upgrade=True) as cat:
        assert cat.revision() == migrate.head_revision()


def fresh_head_db(tmp_path: Path) -> Path:
    db = tmp_path / "fresh" / "catalog.sqlite"
    migrate.upgrade(db)
    return db


def test_schema_matches_snapshot(tmp_path: Path) -> None:
    live = migrate.dump_schema(fresh_head_db(tmp_path))
    expected = SNAPSHOT.read_text() if SNAPSHOT.exists() else "(no snapshot file)"
    if live != expected:
        import difflib

        diff = "\n".join(
            difflib.unified_diff(
                expected.splitlines(), live.splitlines(), "snapshot", "migrated", lineterm=""
            )
        )
        pytest.fail(f"catalog schema differs from {SNAPSHOT.name}:\n{diff}\n{HOW_TO_FIX}")


def test_models_match_migrations(tmp_path: Path) -> None:
    db = fresh_head_db(tmp_path)
    engine = create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            diffs = compare_metadata(ctx, Base.metadata)
    finally:
        engine.dispose()
    assert not diffs, f"models and migrations differ: {diffs}\n{HOW_TO_FIX}"


def test_constraint_names_match_models(tmp_path: Path) -> None:
    """compare_metadata ignores CHECK constraints and names; compare those too."""
    db = fresh_head_db(tmp_path)
    con = sqlite3.connect(db)
    name_re = re.compile(r"CONSTRAINT (\w+)")
    for table in Base.metadata.sorted_tables:
        model_sql = str(CreateTable(table).compile(dialect=sqlite_dialect.dialect()))
        (db_sql,) = con.execute(
            "SELECT sql FROM sqlite_master WHERE type='table' AND name=?", (table.name,)
        ).fetchone()
        assert sorted(name_re.findall(model_sql)) == sorted(name_re.findall(db_sql)), (
            f"constraints of {table.name} differ\n{HOW_TO_FIX}"
        )
        model_idx = {i.name for i in table.indexes}
        db_idx = {
            r[0]
            for r in con.execute(
                "SELECT name FROM sqlite_master WHERE type='index' AND tbl_name=? "
                "AND name NOT LIKE 'sqlite_autoindex%'",
                (table.name,),
            )
        }
        assert model_idx == db_idx, f"indexes of {table.name} differ\n{HOW_TO_FIX}"
    con.close()


def test_downgrade_to_base_and_back(tmp_path: Path) -> None:
    from alembic import command

    db = fresh_head_db(tmp_path)
    command.downgrade(migrate.alembic_config(db), "base")
    assert migrate.current_revision(db) is None
    migrate.upgrade(db)
    assert migrate.dump_schema(db) == migrate.dump_schema(fresh_head_db(tmp_path / "again"))


CHILD = textwrap.dedent(
    """
    import sys
    from fedstore.catalog import Catalog
    sys.stdin.readline()                      # wait for the parent's "go"
    with Catalog.open(sys.argv[1]) as cat:
        print(cat.revision(), len(cat.list_checkpoints()), flush=True)
    """
)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_open_an_old_catalog_at_once(tmp_path: Path) -> None:
    db = tmp_path / "catalog.sqlite"
    migrate.upgrade(db, first_revision())
    insert_old_rows(db)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tmp_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    for p in procs:  # release both as close together as possible
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert out.split() == [migrate.head_revision(), "3"]
    backups = list(tmp_path.glob("catalog.sqlite.bak-*"))
    assert len(backups) == 1, "exactly one process must have upgraded (and backed up)"
    assert migrate.current_revision(db) == migrate.head_revision()
