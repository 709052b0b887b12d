"""Renormalisations: a sample's model renormalised on its own cells, and predictions kept as
a history (a cell may have several: the upload's, then one per renormalisation).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 23:50:00
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
        "renormalisations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sample_id", sa.String(length=32), nullable=False),
        sa.Column("reviewer", sa.String(length=200), nullable=False),
        sa.Column("model_sha256", sa.String(length=64), nullable=False),
        sa.Column("cells", sa.Integer(), nullable=False),
        sa.Column("adaptation", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["sample_id"], ["samples.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_renormalisations_sample_id", "renormalisations", ["sample_id"])
    with op.batch_alter_table("predictions") as batch:
        batch.drop_index("ix_predictions_cell_id")
        batch.create_index("ix_predictions_cell_id", ["cell_id"], unique=False)
        batch.add_column(sa.Column("renormalisation_id", sa.Integer(), nullable=True))
        batch.create_index("ix_predictions_renormalisation_id", ["renormalisation_id"])
        batch.create_foreign_key(
            "fk_predictions_renormalisation_id_renormalisations",
            "renormalisations",
            ["renormalisation_id"],
            ["id"],
            ondelete="CASCADE",
        )


def downgrade() -> None:
    """Back to one prediction per cell: each cell keeps its first (the upload's) call."""
    op.execute(
        "DELETE FROM predictions WHERE id NOT IN (SELECT MIN(id) FROM predictions GROUP BY cell_id)"
    )
    with op.batch_alter_table("predictions") as batch:
        batch.drop_constraint(
            "fk_predictions_renormalisation_id_renormalisations", type_="foreignkey"
        )
        batch.drop_index("ix_predictions_renormalisation_id")
        batch.drop_column("renormalisation_id")
        batch.drop_index("ix_predictions_cell_id")
        batch.create_index("ix_predictions_cell_id", ["cell_id"], unique=True)
    op.drop_index("ix_renormalisations_sample_id", table_name="renormalisations")
    op.drop_table("renormalisations")
