"""The service's operational state, through SQLAlchemy: SQLite in the winback home by default,
PostgreSQL when ``WINBACK_DATABASE_URL`` points to it.

The tables are declared here once (SQLAlchemy Core); their DDL lives in Alembic migrations
(``serve/migrations``), which :func:`upgrade` applies, so a deployed database moves forward with the code.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from winback.config import Settings
from winback.errors import BadInputError

metadata = sa.MetaData()

#: Events as the service received them: the canonical model (winback.events.schema), one row per
#: event_id, so a retried or duplicated delivery is stored once.
events = sa.Table(
    "events",
    metadata,
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
    # The inserting transaction's id, filled by PostgreSQL itself (``pg_current_xact_id()``, migration
    # 0003; NULL on SQLite, where the rowid serves): how winback.serve.feed reads events in commit order.
    sa.Column("txid", sa.BigInteger),
    sa.Column("brand", sa.String(500)),  # migration 0004
    sa.Index("ix_events_user_time", "user_id", "timestamp"),
    sa.Index("ix_events_received", "received_at"),
    sa.Index(
        "ix_events_txid",
        "txid",
        "event_id",
        postgresql_where=sa.text("txid IS NOT NULL"),
        sqlite_where=sa.text("txid IS NOT NULL"),
    ),
)

#: The columns an event fills when it is stored (``txid`` is the database's own).
EVENT_COLUMNS: tuple[str, ...] = tuple(c.name for c in events.columns if c.name != "txid")

#: API keys: only a hash of each secret is kept; the key itself is shown once, when created.
api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("key_id", sa.String(32), primary_key=True),
    sa.Column("secret_hash", sa.String(64), nullable=False),
    sa.Column("scope", sa.String(10), nullable=False),
    sa.Column("label", sa.String(200), nullable=False, server_default=""),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
)

MIGRATIONS = Path(__file__).with_name("migrations")


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets a busy timeout and write-ahead logging so that the service,
    workers and CLI can share the file."""
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        raise BadInputError(
            f"database_url {url!r}: expected a SQLAlchemy URL such as sqlite:///state.db or "
            "postgresql+psycopg://user@host:5432/db"
        ) from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection, _record):  # type: ignore[no-untyped-def]
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    if parsed.get_backend_name() != "postgresql":
        raise BadInputError(
            f"database_url: {parsed.get_backend_name()} is not supported; expected sqlite or postgresql"
        )
    return sa.create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply the migrations up to ``revision`` (idempotent)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def current_revision(engine: Engine) -> str | None:
    """The database's migration revision (None before the first)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str:
    """The newest migration this winback ships."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    if head is None:
        raise RuntimeError("no migrations found")
    return head


@contextmanager
def state_engine(settings: Settings, *, migrate: bool = True) -> Iterator[Engine]:
    """The engine of the settings' database, migrated to the newest revision; disposed on exit."""
    engine = make_engine(settings.state_url)
    try:
        if migrate:
            upgrade(engine)
        yield engine
    finally:
        engine.dispose()


# -- the outbox (winback.act): scheduled messages, their one delivery, coupon codes ------------------------

#: Statuses of an outbox message. ``scheduled`` waits for ``next_attempt_at``; ``claimed`` is held by a
#: worker until ``lease_until`` (claimable again after it, if the worker died); ``sent`` has its one
#: delivery; ``failed`` was refused for good by the provider; ``dead`` ran out of retries; ``cancelled``
#: was stopped by the send-time re-check (a purchase, an unsubscribe, a frequency cap) or by hand.
OUTBOX_STATUSES = ("scheduled", "claimed", "sent", "failed", "dead", "cancelled")

#: Messages to send: one row per scheduled message, its state and its lease.
outbox = sa.Table(
    "outbox",
    metadata,
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
    sa.Index("ix_outbox_due", "status", "next_attempt_at"),
    sa.Index("ix_outbox_lease", "status", "lease_until"),
    sa.Index("ix_outbox_user", "user_id", "channel"),
)

#: The one delivery of a sent message: what the provider answered.
deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("message_id", sa.Integer, sa.ForeignKey("outbox.id"), primary_key=True),
    sa.Column("idempotency_key", sa.String(64), nullable=False),
    sa.Column("user_id", sa.String(200), nullable=False),
    sa.Column("channel", sa.String(10), nullable=False),
    sa.Column("provider_message_id", sa.String(300)),
    sa.Column("result", sa.String(200), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("worker", sa.String(100)),
    sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_deliveries_user", "user_id", "channel", "sent_at"),
)

#: Coupon codes: unique, one customer and one message each, with an expiry.
coupons = sa.Table(
    "coupons",
    metadata,
    sa.Column("code", sa.String(40), primary_key=True),
    sa.Column("user_id", sa.String(200), nullable=False),
    sa.Column("message_id", sa.Integer, sa.ForeignKey("outbox.id"), unique=True),
    sa.Column("percent", sa.Float, nullable=False),
    sa.Column("status", sa.String(10), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("sent_at", sa.DateTime(timezone=True)),
    sa.Column("redeemed_at", sa.DateTime(timezone=True)),
    sa.Index("ix_coupons_user", "user_id"),
)


# -- customers, live carts and decisions (winback.serve.profiles, .carts, .detect) -------------------------

#: Customers: where they are reached and what they agreed to; from ``PUT /v1/customers/{id}``, Segment
#: ``identify`` calls, Shopify ``customers/*`` webhooks and ``unsubscribed`` events. Consent per channel is
#: True, False, or NULL (not known: never messaged), with the moment it was given or withdrawn, so that a
#: later statement wins over an earlier one whatever order they arrive in.
customers = sa.Table(
    "customers",
    metadata,
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

#: Anonymous ids known to belong to a customer (an event or identify call carrying both): the first
#: customer seen with an anonymous id keeps it, as the event store's identity map does.
identities = sa.Table(
    "identities",
    metadata,
    sa.Column("anonymous_id", sa.String(200), primary_key=True),
    sa.Column("user_id", sa.String(200), nullable=False),
    sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_identities_user", "user_id"),
)

#: Per customer (or anonymous visitor), what sessionising their events needs: the number and last event
#: of their current session without a source session id, and their first purchase.
visitors = sa.Table(
    "visitors",
    metadata,
    sa.Column("user_key", sa.String(220), primary_key=True),
    sa.Column("session_no", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_seen_at", sa.DateTime(timezone=True)),
    sa.Column("first_purchase_at", sa.DateTime(timezone=True)),
)

#: Statuses of a live cart. ``open`` waits for ``due_at`` (its idle threshold; none while it is empty);
#: ``decided`` has its one decision; ``purchased`` was bought before it was abandoned; ``expired`` went
#: idle too long ago to act on it in real time (left to ``winback plan``).
CART_STATUSES = ("open", "decided", "purchased", "expired")

#: Live carts, keyed like the batch pipeline's carts: the session id, else ``<user key>#<session number>``.
carts = sa.Table(
    "carts",
    metadata,
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
    sa.Column("version", sa.Integer, nullable=False, server_default="0"),  # +1 on every change
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_carts_due", "status", "due_at"),
    sa.Index("ix_carts_user", "user_key", "status"),
)

#: The decisions the service made at the trigger (one per cart), with what the policy saw, the action
#: and its propensity, and -- once the attribution window has closed -- the outcome. ``winback sync``
#: copies them into the home's decision log.
decisions = sa.Table(
    "decisions",
    metadata,
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
    sa.Index("ix_decisions_user", "user_id"),
    sa.Index("ix_decisions_updated", "updated_at"),
    sa.Index("ix_decisions_pending", "outcome_observed_at", "decided_at"),
)

#: How far each reader of the events feed (the detector, ``winback sync``) has read (winback.serve.feed).
feed_cursors = sa.Table(
    "feed_cursors",
    metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("position", sa.BigInteger, nullable=False),
    sa.Column("event_id", sa.String(200), nullable=False, server_default=""),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)
