"""passages keep the heading path of their chunk

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 21:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("passages", sa.Column("heading", sa.Text(), nullable=True))


def downgrade() -> None:
    # Not batch mode: on SQLite that would copy the table and lose the FTS5 triggers
    # (SQLite 3.35+ drops a column in place).
    op.drop_column("passages", "heading")
