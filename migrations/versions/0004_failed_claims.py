"""Failed sync claims: (round, CID, claiming peer) that could not be fetched.

Revision ID: 0004
Revises: 0003
Create Date: 2027-02-10 12:00:00

* ``failed_claims``: one row per (round, CID, peer that claimed it) sync
  could not fetch from anyone, with the number of failed attempts, the first
  and last failure and the last error. Sync demotes these candidates (and
  other claims of these peers) and backs off from them, across restarts.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "failed_claims",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("cid", sa.String(length=128), nullable=False),
        sa.Column("peer", sa.String(length=128), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("first_failed_at", sa.DateTime(), nullable=False),
        sa.Column("last_failed_at", sa.DateTime(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.CheckConstraint("attempts >= 1", name=op.f("ck_failed_claims_attempts_positive")),
        sa.CheckConstraint("round >= 0", name=op.f("ck_failed_claims_round_nonnegative")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_failed_claims")),
        sa.UniqueConstraint("round", "cid", "peer", name=op.f("uq_failed_claims_round_cid_peer")),
    )
    op.create_index(
        op.f("ix_failed_claims_last_failed_at"), "failed_claims", ["last_failed_at"], unique=False
    )
    op.create_index(op.f("ix_failed_claims_peer"), "failed_claims", ["peer"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_failed_claims_peer"), table_name="failed_claims")
    op.drop_index(op.f("ix_failed_claims_last_failed_at"), table_name="failed_claims")
    op.drop_table("failed_claims")
