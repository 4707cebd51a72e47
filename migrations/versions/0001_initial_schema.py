"""Initial catalog schema: checkpoints, peers, announcements.

Revision ID: 0001
Revises:
Create Date: 2026-11-29 14:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "checkpoints",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("cid", sa.String(length=128), nullable=False),
        sa.Column("cid_version", sa.Integer(), nullable=False),
        sa.Column("codec", sa.String(length=64), nullable=False),
        sa.Column("raw_size", sa.Integer(), nullable=False),
        sa.Column("stored_size", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=True),
        sa.Column("path", sa.Text(), nullable=False),
        sa.CheckConstraint("round >= 0", name=op.f("ck_checkpoints_round_nonnegative")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_checkpoints")),
        sa.UniqueConstraint("round", name=op.f("uq_checkpoints_round")),
    )
    op.create_index(op.f("ix_checkpoints_cid"), "checkpoints", ["cid"], unique=False)

    op.create_table(
        "peers",
        sa.Column("peer_id", sa.String(length=128), nullable=False),
        sa.Column("addrs", sa.Text(), nullable=False),
        sa.Column("first_seen", sa.DateTime(), nullable=False),
        sa.Column("last_seen", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("peer_id", name=op.f("pk_peers")),
    )

    op.create_table(
        "announcements",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("cid", sa.String(length=128), nullable=False),
        sa.Column("sender_peer", sa.String(length=128), nullable=False),
        sa.Column("topic", sa.String(length=256), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("last_received_at", sa.DateTime(), nullable=False),
        sa.Column("times_heard", sa.Integer(), nullable=False),
        sa.CheckConstraint("round >= 0", name=op.f("ck_announcements_round_nonnegative")),
        sa.ForeignKeyConstraint(
            ["sender_peer"],
            ["peers.peer_id"],
            name=op.f("fk_announcements_sender_peer_peers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_announcements")),
        sa.UniqueConstraint(
            "round", "cid", "sender_peer", "topic",
            name=op.f("uq_announcements_round_cid_sender_peer_topic"),
        ),
    )
    op.create_index(op.f("ix_announcements_cid"), "announcements", ["cid"], unique=False)
    op.create_index(
        op.f("ix_announcements_received_at"), "announcements", ["received_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_announcements_received_at"), table_name="announcements")
    op.drop_index(op.f("ix_announcements_cid"), table_name="announcements")
    op.drop_table("announcements")
    op.drop_table("peers")
    op.drop_index(op.f("ix_checkpoints_cid"), table_name="checkpoints")
    op.drop_table("checkpoints")
