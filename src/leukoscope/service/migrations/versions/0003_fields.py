"""Field images: the fields table and their bytes, and for each cell found in a field its
field, box, edge flag and possible duplicate.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "fields",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("sample_id", sa.String(length=32), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("original_name", sa.String(length=255), nullable=False),
        sa.Column("image_format", sa.String(length=8), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("byte_size", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["sample_id"], ["samples.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_fields_sample_id", "fields", ["sample_id"], unique=False)
    op.create_table(
        "field_images",
        sa.Column("field_id", sa.String(length=32), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["field_id"], ["fields.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("field_id"),
    )
    with op.batch_alter_table("cells") as batch:
        batch.add_column(sa.Column("field_id", sa.String(length=32), nullable=True))
        for name in ("x_min", "y_min", "x_max", "y_max"):
            batch.add_column(sa.Column(name, sa.Integer(), nullable=True))
        batch.add_column(sa.Column("edge", sa.Boolean(), nullable=True))
        batch.add_column(sa.Column("possible_duplicate_of", sa.String(length=32), nullable=True))
        batch.create_index("ix_cells_field_id", ["field_id"], unique=False)
        batch.create_foreign_key(
            "fk_cells_field_id_fields", "fields", ["field_id"], ["id"], ondelete="CASCADE"
        )


def downgrade() -> None:
    with op.batch_alter_table("cells") as batch:
        batch.drop_constraint("fk_cells_field_id_fields", type_="foreignkey")
        batch.drop_index("ix_cells_field_id")
        for name in ("possible_duplicate_of", "edge", "y_max", "x_max", "y_min", "x_min"):
            batch.drop_column(name)
        batch.drop_column("field_id")
    op.drop_table("field_images")
    op.drop_index("ix_fields_sample_id", table_name="fields")
    op.drop_table("fields")
