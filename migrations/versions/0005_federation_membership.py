"""Federation membership: the manifests a node ran with, and the global models it judged.

Revision ID: 0005
Revises: 0004
Create Date: 2027-02-01 12:00:00

* ``manifests``: one row per signed federation manifest (CID, name, owner,
  previous version, member count, the signed document itself).
* ``federation_rounds``: one row per (manifest CID, session, round, CID): a
  global model this node adopted (verified, computed itself, or trusted with
  verification off) or refused (then ``expected_cid`` is what recomputing
  the round gave), who announced it, and what the node dropped in the round.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "manifests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("cid", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("owner", sa.String(length=128), nullable=False),
        sa.Column("previous", sa.String(length=128), nullable=True),
        sa.Column("members", sa.Integer(), nullable=False),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_manifests")),
        sa.UniqueConstraint("cid", name=op.f("uq_manifests_cid")),
    )
    op.create_table(
        "federation_rounds",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("manifest_cid", sa.String(length=128), nullable=False),
        sa.Column("session", sa.String(length=64), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("cid", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("aggregator", sa.String(length=128), nullable=True),
        sa.Column("how", sa.String(length=16), nullable=False),
        sa.Column("expected_cid", sa.String(length=128), nullable=True),
        sa.Column("participants", sa.Integer(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("rejections", sa.Text(), nullable=True),
        sa.Column("recorded_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint("round >= 0", name=op.f("ck_federation_rounds_round_nonnegative")),
        sa.CheckConstraint(
            "status IN ('adopted', 'refused')", name=op.f("ck_federation_rounds_status_valid")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_federation_rounds")),
        sa.UniqueConstraint(
            "manifest_cid",
            "session",
            "round",
            "cid",
            name=op.f("uq_federation_rounds_manifest_cid_session_round_cid"),
        ),
    )
    op.create_index(
        op.f("ix_federation_rounds_manifest_cid_status_round"),
        "federation_rounds",
        ["manifest_cid", "status", "round"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(
        op.f("ix_federation_rounds_manifest_cid_status_round"), table_name="federation_rounds"
    )
    op.drop_table("federation_rounds")
    op.drop_table("manifests")
