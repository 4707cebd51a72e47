"""Pins, checkpoint status, peer roles and the round-history views.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 15:00:00

* ``checkpoints.status`` (ok | missing | corrupt, existing rows become ``ok``);
  SQLite cannot add a CHECK with ALTER, so the table is rebuilt (batch mode).
* ``peers.role`` (nullable).
* ``pins`` (CID x backend) with an index on ``state``.
* views ``round_history``, ``latest_checkpoint``, ``pin_status``
  (documented in docs/CATALOG.md). Their SQL is copied here on purpose.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROUND_HISTORY = """
CREATE VIEW round_history AS
WITH keys AS (
    SELECT round, cid FROM checkpoints
    UNION
    SELECT round, cid FROM announcements
)
SELECT
    k.round AS round,
    k.cid AS cid,
    c.id IS NOT NULL AS stored_locally,
    c.status AS local_status,
    c.stored_size AS stored_size,
    (SELECT COUNT(DISTINCT a.sender_peer) FROM announcements AS a
      WHERE a.round = k.round AND a.cid = k.cid) AS announced_by,
    (SELECT MIN(a.received_at) FROM announcements AS a
      WHERE a.round = k.round AND a.cid = k.cid) AS first_heard,
    (SELECT COUNT(*) FROM pins AS p
      WHERE p.cid = k.cid AND p.state = 'pinned') AS pinned_on,
    (SELECT group_concat(p.backend || ':' || p.state, ', ') FROM pins AS p
      WHERE p.cid = k.cid) AS pin_states
FROM keys AS k
LEFT JOIN checkpoints AS c ON c.round = k.round AND c.cid = k.cid
ORDER BY k.round DESC, k.cid
"""

LATEST_CHECKPOINT = """
CREATE VIEW latest_checkpoint AS
SELECT round, cid, cid_version, codec, raw_size, stored_size, created_at, created_by, path
FROM checkpoints
WHERE status = 'ok'
ORDER BY round DESC
LIMIT 1
"""

PIN_STATUS = """
CREATE VIEW pin_status AS
SELECT
    p.cid AS cid,
    COALESCE(
        (SELECT MAX(c.round) FROM checkpoints AS c WHERE c.cid = p.cid),
        (SELECT MAX(a.round) FROM announcements AS a WHERE a.cid = p.cid)
    ) AS round,
    p.backend AS backend,
    p.state AS state,
    p.backend_ref AS backend_ref,
    p.attempts AS attempts,
    p.last_error AS last_error,
    p.updated_at AS updated_at
FROM pins AS p
ORDER BY round DESC, p.cid, p.backend
"""


def upgrade() -> None:
    with op.batch_alter_table("checkpoints", recreate="always") as batch:
        batch.add_column(
            sa.Column(
                "status", sa.String(length=16), nullable=False, server_default=sa.text("'ok'")
            )
        )
        batch.create_check_constraint(
            op.f("ck_checkpoints_status_valid"), "status IN ('ok', 'missing', 'corrupt')"
        )

    with op.batch_alter_table("peers") as batch:
        batch.add_column(sa.Column("role", sa.String(length=32), nullable=True))

    op.create_table(
        "pins",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("cid", sa.String(length=128), nullable=False),
        sa.Column("backend", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("backend_ref", sa.Text(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint(
            "state IN ('pending', 'pinned', 'failed')", name=op.f("ck_pins_state_valid")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pins")),
        sa.UniqueConstraint("cid", "backend", name=op.f("uq_pins_cid_backend")),
    )
    op.create_index(op.f("ix_pins_state"), "pins", ["state"], unique=False)

    op.execute(ROUND_HISTORY)
    op.execute(LATEST_CHECKPOINT)
    op.execute(PIN_STATUS)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS pin_status")
    op.execute("DROP VIEW IF EXISTS latest_checkpoint")
    op.execute("DROP VIEW IF EXISTS round_history")
    op.drop_index(op.f("ix_pins_state"), table_name="pins")
    op.drop_table("pins")
    with op.batch_alter_table("peers") as batch:
        batch.drop_column("role")
    with op.batch_alter_table("checkpoints", recreate="always") as batch:
        batch.drop_constraint(op.f("ck_checkpoints_status_valid"), type_="check")
        batch.drop_column("status")
