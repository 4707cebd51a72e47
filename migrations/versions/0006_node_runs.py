"""Node runs: the backend chain, role and addresses each node run on this directory used.

Revision ID: 0006
Revises: 0005
Create Date: 2027-02-01 12:00:00

* ``node_runs``: one row per start of a node on this data directory (peer
  id, role, the backend chain in order, the advertised addresses, the
  fedstore version, when it started and when it stopped cleanly). ``fedstore
  pins retry`` without ``--backends`` retries with the newest run's chain.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "node_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("peer_id", sa.String(length=128), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("backends", sa.Text(), nullable=False),
        sa.Column("addrs", sa.Text(), nullable=False),
        sa.Column("version", sa.String(length=32), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("stopped_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_node_runs")),
    )


def downgrade() -> None:
    op.drop_table("node_runs")
