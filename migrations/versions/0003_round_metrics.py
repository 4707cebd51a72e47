"""Round metrics of federated learning, and the round_summary view.

Revision ID: 0003
Revises: 0002
Create Date: 2027-01-10 12:00:00

* ``round_metrics``: one row per (round, CID, source, metric name), with the
  round's participant count and sample total; ``source`` is ``trainers``,
  ``evaluate`` or ``strategy``.
* view ``round_summary`` (documented in docs/CATALOG.md): one row per
  (round, CID) with the metrics of each source as ``name=value`` text. Its
  SQL is copied here on purpose.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROUND_SUMMARY = """
CREATE VIEW round_summary AS
WITH keys AS (
    SELECT round, cid, MAX(participants) AS participants, MAX(num_samples) AS num_samples,
           MAX(recorded_at) AS recorded_at
    FROM round_metrics
    GROUP BY round, cid
)
SELECT
    k.round AS round,
    k.cid AS cid,
    k.participants AS participants,
    k.num_samples AS num_samples,
    (SELECT group_concat(x.name || '=' || x.value, ', ')
       FROM (SELECT name, value FROM round_metrics AS m
              WHERE m.round = k.round AND m.cid = k.cid AND m.source = 'trainers'
              ORDER BY m.name) AS x) AS trainer_metrics,
    (SELECT group_concat(x.name || '=' || x.value, ', ')
       FROM (SELECT name, value FROM round_metrics AS m
              WHERE m.round = k.round AND m.cid = k.cid AND m.source = 'evaluate'
              ORDER BY m.name) AS x) AS evaluate_metrics,
    (SELECT group_concat(x.name || '=' || x.value, ', ')
       FROM (SELECT name, value FROM round_metrics AS m
              WHERE m.round = k.round AND m.cid = k.cid AND m.source = 'strategy'
              ORDER BY m.name) AS x) AS strategy_metrics,
    c.id IS NOT NULL AS stored_locally,
    k.recorded_at AS recorded_at
FROM keys AS k
LEFT JOIN checkpoints AS c ON c.round = k.round AND c.cid = k.cid
ORDER BY k.round DESC, k.cid
"""


def upgrade() -> None:
    op.create_table(
        "round_metrics",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("cid", sa.String(length=128), nullable=False),
        sa.Column("participants", sa.Integer(), nullable=False),
        sa.Column("num_samples", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint("round >= 0", name=op.f("ck_round_metrics_round_nonnegative")),
        sa.CheckConstraint(
            "source IN ('trainers', 'evaluate', 'strategy')",
            name=op.f("ck_round_metrics_source_valid"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_round_metrics")),
        sa.UniqueConstraint(
            "round", "cid", "source", "name", name=op.f("uq_round_metrics_round_cid_source_name")
        ),
    )
    op.execute(ROUND_SUMMARY)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS round_summary")
    op.drop_table("round_metrics")
