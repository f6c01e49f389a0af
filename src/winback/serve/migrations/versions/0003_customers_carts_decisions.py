"""Customers, live carts and the detector's decisions; the events' inserting transaction (txid).

``events.txid`` is filled by PostgreSQL with the inserting transaction's id (``pg_current_xact_id()``, a
server default, so inserts name no new column); it lets winback.serve.feed read events in commit order.
On SQLite it stays NULL (the rowid serves). Its index is partial (``txid IS NOT NULL``): SQLite never
writes to it, and events stored before this migration are left out of it.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_NOT_NULL = sa.text("txid IS NOT NULL")


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    default = sa.text("(pg_current_xact_id()::text::bigint)") if postgresql else None
    op.add_column("events", sa.Column("txid", sa.BigInteger, server_default=default))
    op.create_index(
        "ix_events_txid", "events", ["txid", "event_id"], postgresql_where=_NOT_NULL, sqlite_where=_NOT_NULL
    )
    op.create_table(
        "customers",
        sa.Column("user_id", sa.String(200), primary_key=True),
        sa.Column("name", sa.String(200)),
        sa.Column("email", sa.String(320)),
        sa.Column("phone", sa.String(40)),
        sa.Column("push_token", sa.String(500)),
        sa.Column("time_zone", sa.String(64)),
        sa.Column("utc_offset_minutes", sa.Integer),
        sa.Column("consent_email", sa.Boolean),
        sa.Column("consent_email_at", sa.DateTime(timezone=True)),
        sa.Column("consent_sms", sa.Boolean),
        sa.Column("consent_sms_at", sa.DateTime(timezone=True)),
        sa.Column("consent_push", sa.Boolean),
        sa.Column("consent_push_at", sa.DateTime(timezone=True)),
        sa.Column("source", sa.String(40), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "identities",
        sa.Column("anonymous_id", sa.String(200), primary_key=True),
        sa.Column("user_id", sa.String(200), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_identities_user", "identities", ["user_id"])
    op.create_table(
        "visitors",
        sa.Column("user_key", sa.String(220), primary_key=True),
        sa.Column("session_no", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_seen_at", sa.DateTime(timezone=True)),
        sa.Column("first_purchase_at", sa.DateTime(timezone=True)),
    )
    op.create_table(
        "carts",
        sa.Column("cart_id", sa.String(220), primary_key=True),
        sa.Column("user_key", sa.String(220), nullable=False),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("items", sa.Text, nullable=False),
        sa.Column("n_items", sa.Integer, nullable=False),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("checkout_started", sa.Boolean, nullable=False),
        sa.Column("returning_customer", sa.Boolean, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_event_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("idle_minutes", sa.Float, nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True)),
        sa.Column("purchased_at", sa.DateTime(timezone=True)),
        sa.Column("version", sa.Integer, nullable=False, server_default="0"),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_carts_due", "carts", ["status", "due_at"])
    op.create_index("ix_carts_user", "carts", ["user_key", "status"])
    op.create_table(
        "decisions",
        sa.Column("decision_id", sa.String(64), primary_key=True),
        sa.Column("cart_id", sa.String(220), unique=True),
        sa.Column("user_id", sa.String(220), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("abandoned_at", sa.DateTime(timezone=True)),
        sa.Column("due_at", sa.DateTime(timezone=True)),
        sa.Column("policy", sa.String(100), nullable=False),
        sa.Column("version", sa.String(100), nullable=False),
        sa.Column("action", sa.String(60), nullable=False),
        sa.Column("channel", sa.String(10)),
        sa.Column("send_at", sa.DateTime(timezone=True)),
        sa.Column("propensity", sa.Float),
        sa.Column("expected_profit", sa.Float),
        sa.Column("holdout", sa.Boolean, nullable=False),
        sa.Column("discount_reserved", sa.Float, nullable=False, server_default="0"),
        sa.Column("reasons", sa.Text, nullable=False),
        sa.Column("context", sa.Text, nullable=False),
        sa.Column("message_key", sa.String(64)),
        sa.Column("outcome_observed_at", sa.DateTime(timezone=True)),
        sa.Column("recovered", sa.Boolean),
        sa.Column("revenue", sa.Float),
        sa.Column("discount", sa.Float),
        sa.Column("margin", sa.Float),
        sa.Column("attributed_revenue", sa.Float),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_decisions_user", "decisions", ["user_id"])
    op.create_index("ix_decisions_updated", "decisions", ["updated_at"])
    op.create_index("ix_decisions_pending", "decisions", ["outcome_observed_at", "decided_at"])
    op.create_table(
        "feed_cursors",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("event_id", sa.String(200), nullable=False, server_default=""),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("feed_cursors")
    op.drop_index("ix_decisions_pending", table_name="decisions")
    op.drop_index("ix_decisions_updated", table_name="decisions")
    op.drop_index("ix_decisions_user", table_name="decisions")
    op.drop_table("decisions")
    op.drop_index("ix_carts_user", table_name="carts")
    op.drop_index("ix_carts_due", table_name="carts")
    op.drop_table("carts")
    op.drop_table("visitors")
    op.drop_index("ix_identities_user", table_name="identities")
    op.drop_table("identities")
    op.drop_table("customers")
    op.drop_index("ix_events_txid", table_name="events")
    op.drop_column("events", "txid")
