"""Catalog API: checkpoints, announcements, peers, pins, views, pragmas, errors."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from fedstore.catalog import Catalog, CheckpointRecord, RoundConflictError, migrate, resolve_db_path
from fedstore.errors import CatalogError

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def cat(tmp_path: Path) -> Iterator[Catalog]:
    c = Catalog.open(tmp_path)
    yield c
    c.close()


def add(c: Catalog, rnd: int, cid: str, **kw: object) -> CheckpointRecord:
    args: dict[str, object] = {
        "cid_version": 0,
        "codec": "fsc1+zstd",
        "raw_size": 1000 + rnd,
        "stored_size": 500 + rnd,
        "path": f"rounds/r{rnd}_{cid}.fsc",
    }
    args.update(kw)
    return c.add_checkpoint(rnd, cid, **args)  # type: ignore[arg-type]


def test_open_creates_catalog_at_head_with_pragmas(tmp_path: Path) -> None:
    with Catalog.open(tmp_path / "node") as c:
        assert c.path == tmp_path / "node" / "catalog.sqlite"
        assert c.path.is_file()
        assert c.revision() == migrate.head_revision()
        assert c.opened.from_revision is None and c.opened.changed
        with c.engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
            assert (conn.execute(text("PRAGMA busy_timeout")).scalar() or 0) >= 1000
    # reopening an up-to-date catalog changes nothing
    with Catalog.open(tmp_path / "node") as c2:
        assert not c2.opened.changed


def test_resolve_db_path(tmp_path: Path) -> None:
    assert resolve_db_path(tmp_path) == tmp_path / "catalog.sqlite"
    assert resolve_db_path(tmp_path / "x.sqlite") == tmp_path / "x.sqlite"
    assert resolve_db_path(tmp_path / "dir") == tmp_path / "dir" / "catalog.sqlite"


def test_checkpoint_crud_and_latest(cat: Catalog) -> None:
    assert cat.latest_checkpoint() is None and cat.latest_round() is None
    for r, cid in [(3, "QmC"), (1, "QmA"), (2, "QmB")]:
        add(cat, r, cid, created_by="peerX")
    latest = cat.latest_checkpoint()
    assert latest is not None and (latest.round, latest.cid) == (3, "QmC")
    assert latest.created_by == "peerX" and latest.status == "ok"
    assert latest.created_at.tzinfo is not None
    assert cat.latest_round() == 3
    assert cat.list_rounds() == [1, 2, 3]
    assert [r.round for r in cat.list_checkpoints(descending=True, limit=2)] == [3, 2]
    got = cat.get_checkpoint(2)
    assert got is not None and got.cid == "QmB" and got.raw_size == 1002
    assert cat.get_checkpoint(99) is None
    assert [r.round for r in cat.checkpoints_with_cid("QmA")] == [1]


def test_same_cid_is_idempotent_and_keeps_created_at(cat: Catalog) -> None:
    first = add(cat, 1, "QmA", created_at=T0)
    again = add(cat, 1, "QmA", stored_size=777)
    assert again.created_at == first.created_at == T0
    assert again.stored_size == 777
    assert cat.list_rounds() == [1]


def test_different_cid_for_round_conflicts_unless_replace(cat: Catalog) -> None:
    add(cat, 1, "QmA")
    with pytest.raises(RoundConflictError, match="round 1 already has checkpoint QmA"):
        add(cat, 1, "QmB")
    got = cat.get_checkpoint(1)
    assert got is not None and got.cid == "QmA"
    replaced = add(cat, 1, "QmB", replace=True)
    assert replaced.cid == "QmB"
    assert [r.cid for r in cat.list_checkpoints()] == ["QmB"]


def test_latest_skips_flagged_rows_and_status_is_conditional_on_cid(cat: Catalog) -> None:
    add(cat, 1, "QmA")
    add(cat, 2, "QmB")
    assert not cat.mark_checkpoint_status(2, "corrupt", cid="QmOther")
    assert cat.latest_round() == 2
    assert cat.mark_checkpoint_status(2, "corrupt", cid="QmB")
    latest = cat.latest_checkpoint()
    assert latest is not None and latest.round == 1
    assert [r.round for r in cat.list_checkpoints(status="corrupt")] == [2]
    assert cat.list_rounds(status="ok") == [1]
    with pytest.raises(ValueError, match="status must be one of"):
        cat.mark_checkpoint_status(1, "weird")


def test_delete_checkpoint(cat: Catalog) -> None:
    add(cat, 1, "QmA")
    assert cat.delete_checkpoint(1, cid="QmZ") is None
    deleted = cat.delete_checkpoint(1)
    assert deleted is not None and deleted.cid == "QmA"
    assert cat.delete_checkpoint(1) is None
    assert cat.list_rounds() == []


def test_negative_round_and_naive_timestamps_rejected(cat: Catalog) -> None:
    with pytest.raises(ValueError, match="round must be >= 0"):
        add(cat, -1, "QmA")
    with pytest.raises(CatalogError, match="timezone-aware"):
        add(cat, 1, "QmA", created_at=datetime(2026, 1, 1))


def test_announcements_upsert_and_latest_announced(cat: Catalog) -> None:
    a1 = cat.record_announcement(4, "QmD", "peerA", "model-cids", received_at=T0)
    assert a1.times_heard == 1 and a1.received_at == T0
    a2 = cat.record_announcement(
        4, "QmD", "peerA", "model-cids", received_at=T0 + timedelta(seconds=5)
    )
    assert a2.times_heard == 2
    assert a2.received_at == T0 and a2.last_received_at == T0 + timedelta(seconds=5)
    # an out-of-order older repeat moves first-heard back, never forward
    a3 = cat.record_announcement(
        4, "QmD", "peerA", "model-cids", received_at=T0 - timedelta(seconds=1)
    )
    assert a3.received_at == T0 - timedelta(seconds=1)
    assert a3.last_received_at == T0 + timedelta(seconds=5)

    # round 5: two CIDs; QmE2 is announced by two distinct peers and wins
    cat.record_announcement(5, "QmE1", "peerA", "t", received_at=T0)
    cat.record_announcement(5, "QmE2", "peerB", "t", received_at=T0 + timedelta(seconds=1))
    cat.record_announcement(5, "QmE2", "peerC", "t", received_at=T0 + timedelta(seconds=2))
    cat.record_announcement(5, "QmE2", "peerB", "t", received_at=T0 + timedelta(seconds=3))
    latest = cat.latest_announced()
    assert latest is not None
    assert (latest.round, latest.cid, latest.sender_peer) == (5, "QmE2", "peerB")
    assert [a.round for a in cat.announcements()][:1] == [5]
    assert {a.sender_peer for a in cat.announcements(round=5, cid="QmE2")} == {"peerB", "peerC"}
    # senders became peers
    assert {p.peer_id for p in cat.list_peers()} == {"peerA", "peerB", "peerC"}


def test_latest_announced_none_when_empty(cat: Catalog) -> None:
    assert cat.latest_announced() is None


def test_peers_upsert_keeps_unspecified_fields(cat: Catalog) -> None:
    p1 = cat.upsert_peer("peerA", ["/ip4/127.0.0.1/tcp/4001"], "trainer", seen_at=T0)
    assert p1.addrs == ("/ip4/127.0.0.1/tcp/4001",) and p1.role == "trainer"
    later = T0 + timedelta(minutes=1)
    p2 = cat.upsert_peer("peerA", seen_at=later)
    assert p2.addrs == p1.addrs and p2.role == "trainer"
    assert p2.first_seen == T0 and p2.last_seen == later
    p3 = cat.upsert_peer("peerA", [], "aggregator", seen_at=T0)  # older sighting
    assert p3.addrs == () and p3.role == "aggregator" and p3.last_seen == later
    assert cat.get_peer("nobody") is None


def test_pins_states_attempts_and_errors(cat: Catalog) -> None:
    p = cat.set_pin("QmA", "pinata", "pending")
    assert (p.state, p.attempts, p.backend_ref) == ("pending", 0, None)
    p = cat.set_pin("QmA", "pinata", "failed", error="HTTP 503")
    assert (p.state, p.attempts, p.last_error) == ("failed", 1, "HTTP 503")
    p = cat.set_pin("QmA", "pinata", "pinned", backend_ref="file-123")
    assert (p.state, p.attempts, p.last_error, p.backend_ref) == ("pinned", 2, None, "file-123")
    cat.set_pin("QmA", "kubo", "pinned")
    cat.set_pin("QmB", "kubo", "failed", error="nope")
    assert [x.backend for x in cat.pins_for("QmA")] == ["kubo", "pinata"]
    assert {(x.cid, x.backend) for x in cat.pins("failed")} == {("QmB", "kubo")}
    assert len(cat.pins()) == 3
    with pytest.raises(ValueError, match="pin state"):
        cat.set_pin("QmA", "kubo", "maybe")
    assert cat.delete_pin("QmB", "kubo") and not cat.delete_pin("QmB", "kubo")


def test_round_history_view(cat: Catalog) -> None:
    add(cat, 1, "QmA")
    add(cat, 2, "QmB")
    cat.record_announcement(2, "QmB", "peerA", "t", received_at=T0)
    cat.record_announcement(2, "QmB", "peerB", "t", received_at=T0 + timedelta(seconds=1))
    cat.record_announcement(3, "QmC", "peerA", "t", received_at=T0 + timedelta(seconds=2))
    cat.set_pin("QmB", "kubo", "pinned")
    cat.set_pin("QmB", "pinata", "failed", error="x")
    rows = cat.round_history()
    assert [(r.round, r.cid) for r in rows] == [(3, "QmC"), (2, "QmB"), (1, "QmA")]
    r3, r2, r1 = rows
    assert not r3.stored_locally and r3.announced_by == 1 and r3.local_status is None
    assert r2.stored_locally and r2.announced_by == 2 and r2.first_heard == T0
    assert r2.pinned_on == 1 and r2.pin_states is not None
    assert set(r2.pin_states.split(", ")) == {"kubo:pinned", "pinata:failed"}
    assert r1.stored_locally and r1.announced_by == 0 and r1.first_heard is None
    assert len(cat.round_history(limit=1)) == 1
    cols, lrows = cat.read_only_query("SELECT round, cid FROM latest_checkpoint")
    assert cols == ("round", "cid") and lrows == [(2, "QmB")]
    cols, prow = cat.read_only_query("SELECT round, backend, state FROM pin_status")
    assert sorted(prow) == [(2, "kubo", "pinned"), (2, "pinata", "failed")]


def test_foreign_keys_are_enforced(cat: Catalog) -> None:
    with pytest.raises(Exception, match="FOREIGN KEY"), cat.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO announcements (round, cid, sender_peer, topic, received_at, "
                "last_received_at, times_heard) VALUES (1, 'QmA', 'ghost', 't', "
                "'2026-01-01 00:00:00', '2026-01-01 00:00:00', 1)"
            )
        )


def test_closed_catalog_raises_catalog_error(tmp_path: Path) -> None:
    c = Catalog.open(tmp_path)
    c.close()
    c.close()  # idempotent
    with pytest.raises(CatalogError, match="closed"):
        c.latest_checkpoint()


def test_busy_writer_times_out_with_clear_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fedstore.catalog.engine as engine_mod

    monkeypatch.setattr(engine_mod, "BUSY_TIMEOUT_MS", 200)
    with Catalog.open(tmp_path) as c:
        blocker = sqlite3.connect(c.path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(CatalogError, match="busy"):
                add(c, 1, "QmA")
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        add(c, 1, "QmA")  # and works once the lock is gone
        assert c.list_rounds() == [1]


def test_refuses_foreign_sqlite_file(tmp_path: Path) -> None:
    db = tmp_path / "catalog.sqlite"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE stuff (x)")
    con.commit()
    con.close()
    with pytest.raises(CatalogError, match="not a fedstore catalog"):
        Catalog.open(tmp_path)


def test_refuses_catalog_from_newer_fedstore(tmp_path: Path) -> None:
    Catalog.open(tmp_path).close()
    con = sqlite3.connect(tmp_path / "catalog.sqlite")
    con.execute("UPDATE alembic_version SET version_num = 'ffff_future'")
    con.commit()
    con.close()
    with pytest.raises(CatalogError, match="newer fedstore"):
        Catalog.open(tmp_path)


def test_prune_announcements_keeps_each_senders_newest(tmp_path: Path) -> None:
    cat = Catalog.open(tmp_path)
    cid = "QmZULkCELmmk5XNfCgTnCyFgAVxBRBXyDHGGMVoLFLiXEN"
    for r in range(30):
        cat.record_announcement(r, cid, "12D3KooWflooder", "model-cids")
    for r in range(3):
        cat.record_announcement(r, cid, "12D3KooWhonest", "model-cids")
    assert cat.prune_announcements(per_sender=5) == 25
    kept = cat.announcements()
    flooder = sorted(a.round for a in kept if a.sender_peer == "12D3KooWflooder")
    honest = sorted(a.round for a in kept if a.sender_peer == "12D3KooWhonest")
    assert flooder == [25, 26, 27, 28, 29]
    assert honest == [0, 1, 2]
    assert cat.prune_announcements(per_sender=5) == 0
    with pytest.raises(ValueError):
        cat.prune_announcements(per_sender=0)
