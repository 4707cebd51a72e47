"""The latest-round lookups, which bypass the ORM, agree with it row for row."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from fedstore.catalog import Catalog
from fedstore.errors import CatalogError


def _add(cat: Catalog, round: int, *, status: str = "ok", by: str | None = "peer") -> None:
    cat.add_checkpoint(
        round,
        f"Qm{round:044d}",
        cid_version=0,
        codec="fsck2+zstd+shuffle",
        raw_size=1000 + round,
        stored_size=900 + round,
        path=f"rounds/r{round}.fsck",
        created_by=by,
        created_at=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        status=status,
    )


def test_latest_lookups_match_the_orm_rows(tmp_path: Path) -> None:
    with Catalog.open(tmp_path) as cat:
        assert cat.latest_round() is None and cat.latest_checkpoint() is None
        _add(cat, 3)
        _add(cat, 7, by=None)
        _add(cat, 9, status="corrupt")
        _add(cat, 8, status="missing")
        assert cat.latest_round() == 7
        latest = cat.latest_checkpoint()
        assert latest == cat.get_checkpoint(7)  # every field, the aware timestamp included
        assert latest is not None and latest.created_at.tzinfo is UTC and latest.created_by is None
        assert cat.mark_checkpoint_status(9, "ok", cid=f"Qm{9:044d}")
        assert cat.latest_round() == 9 and cat.latest_checkpoint() == cat.get_checkpoint(9)


def test_latest_lookups_on_a_closed_catalog_raise(tmp_path: Path) -> None:
    cat = Catalog.open(tmp_path)
    _add(cat, 1)
    cat.close()
    with pytest.raises(CatalogError, match="closed"):
        cat.latest_round()
    with pytest.raises(CatalogError, match="closed"):
        cat.latest_checkpoint()


def test_latest_lookup_errors_become_catalog_errors(tmp_path: Path) -> None:
    with Catalog.open(tmp_path) as cat:
        with cat.engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE checkpoints")
        with pytest.raises(CatalogError, match="find the latest round"):
            cat.latest_round()
