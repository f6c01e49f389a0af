"""The outbox: scheduled messages, their deliveries, and coupon codes (winback.act).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("idempotency_key", sa.String(64), nullable=False, unique=True),
        sa.Column("decision_id", sa.String(200)),
        sa.Column("user_id", sa.String(200), nullable=False),
        sa.Column("cart_id", sa.String(200)),
        sa.Column("channel", sa.String(10), nullable=False),
        sa.Column("recipient", sa.String(320), nullable=False),
        sa.Column("template", sa.String(100), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("utc_offset_minutes", sa.Integer, nullable=False, server_default="0"),
        sa.Column("send_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_by", sa.String(100)),
        sa.Column("lease_until", sa.DateTime(timezone=True)),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_outbox_due", "outbox", ["status", "next_attempt_at"])
    op.create_index("ix_outbox_lease", "outbox", ["status", "lease_until"])
    op.create_index("ix_outbox_user", "outbox", ["user_id", "channel"])
    op.create_table(
        "deliveries",
        sa.Column("message_id", sa.Integer, sa.ForeignKey("outbox.id"), primary_key=True),
        sa.Column("idempotency_key", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(200), nullable=False),
        sa.Column("channel", sa.String(10), nullable=False),
        sa.Column("provider_message_id", sa.String(300)),
        sa.Column("result", sa.String(200), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("worker", sa.String(100)),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_deliveries_user", "deliveries", ["user_id", "channel", "sent_at"])
    op.create_table(
        "coupons",
        sa.Column("code", sa.String(40), primary_key=True),
        sa.Column("user_id", sa.String(200), nullable=False),
        sa.Column("message_id", sa.Integer, sa.ForeignKey("outbox.id"), unique=True),
        sa.Column("percent", sa.Float, nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True)),
        sa.Column("redeemed_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_coupons_user", "coupons", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_coupons_user", table_name="coupons")
    op.drop_table("coupons")
    op.drop_index("ix_deliveries_user", table_name="deliveries")
    op.drop_table("deliveries")
    op.drop_index("ix_outbox_user", table_name="outbox")
    op.drop_index("ix_outbox_lease", table_name="outbox")
    op.drop_index("ix_outbox_due", table_name="outbox")
    op.drop_table("outbox")
