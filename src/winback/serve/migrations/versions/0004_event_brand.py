"""The events' brand (an optional canonical field since the recommendations use it).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("events", sa.Column("brand", sa.String(500)))


def downgrade() -> None:
    op.drop_column("events", "brand")
