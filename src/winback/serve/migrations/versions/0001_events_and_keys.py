"""Events received by the service and API keys.

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("event_id", sa.String(200), primary_key=True),
        sa.Column("event_type", sa.String(40), nullable=False),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("user_id", sa.String(200)),
        sa.Column("anonymous_id", sa.String(200)),
        sa.Column("session_id", sa.String(200)),
        sa.Column("product_id", sa.String(200)),
        sa.Column("category", sa.String(500)),
        sa.Column("price", sa.Float),
        sa.Column("quantity", sa.Integer),
        sa.Column("order_id", sa.String(200)),
        sa.Column("value", sa.Float),
        sa.Column("currency", sa.String(3)),
        sa.Column("properties", sa.Text),
        sa.Column("source", sa.String(40), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_events_user_time", "events", ["user_id", "timestamp"])
    op.create_index("ix_events_received", "events", ["received_at"])
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.String(32), primary_key=True),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("scope", sa.String(10), nullable=False),
        sa.Column("label", sa.String(200), nullable=False, server_default=""),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
    )


def downgrade() -> None:
    op.drop_table("api_keys")
    op.drop_index("ix_events_received", table_name="events")
    op.drop_index("ix_events_user_time", table_name="events")
    op.drop_table("events")
