"""Fallback calls: whether a cell's call was made by the model's fallback model (the model
flagged the cell uncertain; ``leukoscope fallback``). Earlier calls were the model's own.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 23:45:00
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
    op.add_column(
        "predictions",
        sa.Column("fallback", sa.Boolean(), nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    # Not in batch mode, as in 0005: SQLite drops the column itself (3.35 and later).
    op.drop_column("predictions", "fallback")
