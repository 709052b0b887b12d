"""Exclusions, duplicates, comments and amendments: cells.duplicate_of, the comments and
amendments tables, and corrections.amendment_id.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 07:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "amendments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sample_id", sa.String(length=32), nullable=False),
        sa.Column("reviewer", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("differential", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["sample_id"], ["samples.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_amendments_sample_id", "amendments", ["sample_id"], unique=False)
    op.create_table(
        "comments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sample_id", sa.String(length=32), nullable=False),
        sa.Column("cell_id", sa.String(length=32), nullable=True),
        sa.Column("reviewer", sa.String(length=200), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["cell_id"], ["cells.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["sample_id"], ["samples.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_comments_sample_id", "comments", ["sample_id"], unique=False)
    with op.batch_alter_table("cells") as batch:
        batch.add_column(sa.Column("duplicate_of", sa.String(length=32), nullable=True))
    with op.batch_alter_table("corrections") as batch:
        batch.add_column(sa.Column("amendment_id", sa.Integer(), nullable=True))
        batch.create_index("ix_corrections_amendment_id", ["amendment_id"], unique=False)
        batch.create_foreign_key(
            "fk_corrections_amendment_id_amendments",
            "amendments",
            ["amendment_id"],
            ["id"],
            ondelete="CASCADE",
        )


def downgrade() -> None:
    with op.batch_alter_table("corrections") as batch:
        batch.drop_constraint("fk_corrections_amendment_id_amendments", type_="foreignkey")
        batch.drop_index("ix_corrections_amendment_id")
        batch.drop_column("amendment_id")
    with op.batch_alter_table("cells") as batch:
        batch.drop_column("duplicate_of")
    op.drop_index("ix_comments_sample_id", table_name="comments")
    op.drop_table("comments")
    op.drop_index("ix_amendments_sample_id", table_name="amendments")
    op.drop_table("amendments")
