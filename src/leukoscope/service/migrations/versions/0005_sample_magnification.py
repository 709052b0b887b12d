"""A sample's magnification: measured on its first upload with enough cells and used for every
later upload, so that one sample's cell images are all rescaled alike.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 02:45:00
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
    op.add_column("samples", sa.Column("magnification", sa.JSON(), nullable=True))


def downgrade() -> None:
    # Not in batch mode: SQLite would copy ``samples`` and drop the old table, and dropping it
    # deletes every cell through their ON DELETE CASCADE (SQLite drops columns itself since
    # 3.35).
    op.drop_column("samples", "magnification")
