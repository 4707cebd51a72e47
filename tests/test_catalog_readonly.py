"""``read_only_query``: SELECTs work, anything that would write is refused, file untouched."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from fedstore.catalog import Catalog, ReadOnlyViolation, read_only_query
from fedstore.errors import CatalogError


@pytest.fixture
def db(tmp_path: Path) -> Path:
    with Catalog.open(tmp_path) as c:
        for r in range(1, 6):
            c.add_checkpoint(
                r, f"Qm{r}", cid_version=0, codec="c", raw_size=10, stored_size=5, path=f"p{r}"
            )
        c.record_announcement(5, "Qm5", "peerA", "model-cids")
        path = c.path
    return path  # catalog closed: WAL checkpointed into the main file


def fingerprint(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return hashlib.sha256(path.read_bytes()).hexdigest(), st.st_mtime_ns, st.st_size


def test_select_and_params_and_truncation(db: Path) -> None:
    cols, rows = read_only_query(db, "SELECT round, cid FROM checkpoints WHERE round > ?", (3,))
    assert cols == ("round", "cid") and rows == [(4, "Qm4"), (5, "Qm5")]
    res = read_only_query(db, "SELECT round FROM checkpoints ORDER BY round", max_rows=2)
    assert res.rows == [(1,), (2,)] and res.truncated
    res = read_only_query(db, "SELECT round FROM round_history", max_rows=10)
    assert len(res.rows) == 5 and not res.truncated
    assert read_only_query(db, "PRAGMA table_info(pins)").rows  # introspection allowed
    assert read_only_query(db, "PRAGMA user_version").rows == [(0,)]


WRITES = [
    "INSERT INTO peers (peer_id, addrs, first_seen, last_seen) VALUES ('x', '[]', 'a', 'b')",
    "REPLACE INTO peers (peer_id, addrs, first_seen, last_seen) VALUES ('x', '[]', 'a', 'b')",
    "UPDATE checkpoints SET status = 'corrupt'",
    "DELETE FROM checkpoints",
    "DROP TABLE checkpoints",
    "DROP VIEW round_history",
    "CREATE TABLE evil (x)",
    "CREATE INDEX ix_evil ON checkpoints (path)",
    "ALTER TABLE checkpoints ADD COLUMN evil TEXT",
    "ATTACH DATABASE ':memory:' AS other",
    "PRAGMA user_version = 7",
    "PRAGMA journal_mode = DELETE",
    "PRAGMA wal_checkpoint(TRUNCATE)",
    "VACUUM",
    "REINDEX",
    "ANALYZE",
    "BEGIN IMMEDIATE",
    "/* sneaky */ DELETE FROM pins",
    "WITH x AS (SELECT 1) DELETE FROM checkpoints",
]


@pytest.mark.parametrize("sql", WRITES)
def test_writes_are_refused_and_database_untouched(db: Path, sql: str) -> None:
    before = fingerprint(db)
    count = read_only_query(db, "SELECT COUNT(*) FROM checkpoints").rows[0][0]
    with pytest.raises(ReadOnlyViolation, match=r"refused: .*Nothing was changed"):
        read_only_query(db, sql)
    assert read_only_query(db, "SELECT COUNT(*) FROM checkpoints").rows[0][0] == count == 5
    assert fingerprint(db) == before
    # and through the Catalog method, with the catalog open (WAL mode, live connections)
    with Catalog.open(db.parent) as c:
        with pytest.raises(ReadOnlyViolation):
            c.read_only_query(sql)
        assert c.list_rounds() == [1, 2, 3, 4, 5]
        assert c.revision() is not None


def test_violation_message_names_the_statement(db: Path) -> None:
    with pytest.raises(ReadOnlyViolation, match="this DELETE statement") as info:
        read_only_query(db, "-- comment\nDELETE FROM checkpoints")
    assert "denied: DELETE checkpoints" in str(info.value)
    assert isinstance(info.value, CatalogError)


def test_several_statements_refused(db: Path) -> None:
    with pytest.raises(CatalogError, match="one statement"):
        read_only_query(db, "SELECT 1; DELETE FROM checkpoints")
    assert read_only_query(db, "SELECT COUNT(*) FROM checkpoints").rows == [(5,)]


def test_sql_errors_and_missing_catalog(db: Path, tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="no such table"):
        read_only_query(db, "SELECT * FROM nope")
    with pytest.raises(CatalogError, match="no catalog at"):
        read_only_query(tmp_path / "absent.sqlite", "SELECT 1")


def test_runaway_query_is_stopped(db: Path) -> None:
    forever = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT MAX(x) FROM c"
    with pytest.raises(CatalogError, match="stopped after"):
        read_only_query(db, forever, timeout=0.2)
