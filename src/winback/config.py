"""One typed settings object for the whole of winback.

Values come, highest priority first, from explicit arguments (the CLI's ``--home``), environment variables
``WINBACK_*``, a ``winback.toml`` file (in the current directory, or the file named by
``WINBACK_CONFIG``), and the defaults below.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

#: The secret a development service runs with; `winback serve` refuses it in production.
DEVELOPMENT_SECRET = "development-only-secret-change-me"


def _config_file() -> Path:
    return Path(os.environ.get("WINBACK_CONFIG", "winback.toml"))


class Settings(BaseSettings):
    """Everything a user can configure; see the README's configuration table."""

    model_config = SettingsConfigDict(env_prefix="WINBACK_", extra="forbid", validate_default=True)

    home: Path = Field(Path(".winback"), description="Directory of the embedded state (event store, models).")
    session_gap_minutes: int = Field(30, gt=0, description="Inactivity that ends a session without an id.")
    max_future: timedelta = Field(
        timedelta(days=1), description="How far past the current time an event timestamp may lie."
    )
    min_timestamp: str = Field(
        "1990-01-01", description="Earlier timestamps are rejected (usually milliseconds read as seconds)."
    )
    default_currency: str = Field("USD", pattern=r"^[A-Z]{3}$", description="Currency of events without one.")
    error_limit: int = Field(20, gt=0, description="Bad rows listed in an error message.")
    memory_limit: str = Field(
        "1GB", description="DuckDB memory limit; larger work spills to the home's tmp/."
    )
    threads: int | None = Field(
        None, gt=0, description="Threads of DuckDB and of model training (default: all cores)."
    )
    lock_wait_seconds: float = Field(
        60.0,
        ge=0,
        description="How long a writer waits for the event store or decision log while another process "
        "(the dashboard, a report) reads it.",
    )
    feature_memory_limit: str = Field(
        "4GB",
        description="DuckDB memory limit while computing features and training (windows over every "
        "event need more than a load: 10M events need about 2GB).",
    )
    abandon_idle_minutes: int = Field(
        30, gt=0, description="Idle time after which a cart with items and no purchase is abandoned."
    )
    recovery_window_days: int = Field(
        7, gt=0, description="A purchase of an abandoned cart's item within this many days recovers it."
    )
    churn_horizon_days: int = Field(90, gt=0, description="Churn: no purchase within this many days.")
    spark_master: str = Field("local[2]", description="Spark master URL for --engine spark.")
    spark_events: Path | None = Field(
        None, description="Parquet dataset of canonical events for Spark (default: an export of the store)."
    )
    spark_shuffle_partitions: int = Field(8, gt=0, description="spark.sql.shuffle.partitions.")
    spark_driver_memory: str = Field("4g", description="spark.driver.memory for a local Spark session.")

    # The service (`winback serve`, `winback worker`): operational state, secrets, limits.
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the service's state, e.g. postgresql+psycopg://host/db (default: "
        "SQLite in the home, state.db).",
    )
    environment: Literal["development", "production"] = Field(
        "development", description="Outside development the service refuses the default secret key."
    )
    secret_key: SecretStr = Field(
        SecretStr(DEVELOPMENT_SECRET),
        description="Signs tracking and unsubscribe links and dashboard sessions; set it (only from the "
        "environment) in production.",
    )
    max_body_bytes: int = Field(
        8 * 1024 * 1024, gt=0, description="Largest request body the service accepts (413 beyond)."
    )
    max_batch_events: int = Field(10_000, gt=0, description="Most events one POST /v1/events may carry.")
    shopify_webhook_secret: SecretStr | None = Field(
        None, description="Verifies X-Shopify-Hmac-Sha256 on /v1/webhooks/shopify (the app's webhook secret)."
    )
    # The Redis Stream of events (`winback consume`).
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis that carries the event stream.")
    redis_stream: str = Field("winback:events", description="Stream `winback consume` reads events from.")
    redis_group: str = Field("winback", description="Consumer group of `winback consume`.")
    redis_dead_letter: str = Field(
        "winback:events:dead", description="Stream invalid entries go to, with the reason (then acked)."
    )
    redis_claim_idle_ms: int = Field(
        60_000, gt=0, description="Entries pending this long (a dead consumer's) are claimed by another."
    )

    # The outbox and its channels (`winback worker`, winback.act).
    smtp_host: str = Field("localhost", description="SMTP server the e-mail channel sends through.")
    smtp_port: int = Field(25, gt=0, lt=65536, description="Its port (587 with smtp_starttls).")
    smtp_user: str | None = Field(None, description="SMTP login (none: no authentication).")
    smtp_password: SecretStr | None = Field(None, description="SMTP password (only from the environment).")
    smtp_from: str = Field("winback@localhost", description="From address of the e-mails.")
    smtp_starttls: bool = Field(False, description="Upgrade the SMTP connection with STARTTLS.")
    sms_webhook_url: str | None = Field(None, description="URL the SMS provider's webhook is posted to.")
    push_webhook_url: str | None = Field(None, description="URL the push provider's webhook is posted to.")
    webhook_secret: SecretStr | None = Field(
        None, description="Signs webhook bodies (HMAC-SHA256, header X-Winback-Signature)."
    )
    webhook_timeout_seconds: float = Field(10.0, gt=0, description="A webhook call slower than this fails.")
    alert_webhook_url: str | None = Field(
        None,
        pattern=r"^https?://",
        description="Staff alerts (Slack-compatible JSON) go here: big abandoned carts, valuable "
        "customers at risk; none: no alerts.",
    )
    alert_cart_value: float = Field(
        500.0, ge=0, description="An abandoned cart worth this much raises an alert."
    )
    alert_customer_value: float = Field(
        1000.0, ge=0, description="A customer with this expected lifetime value at risk raises an alert."
    )
    alert_churn_probability: float = Field(
        0.7, ge=0, le=1, description="Churn probability from which a valuable customer counts as at risk."
    )
    outbox_lease_seconds: float = Field(
        60.0, gt=0, description="How long a worker holds a claimed message before others may take it."
    )
    outbox_max_attempts: int = Field(6, gt=0, description="Sends tried before a message is dead.")
    outbox_retry_seconds: float = Field(
        30.0, gt=0, description="First retry delay after a provider error; doubled each attempt."
    )
    coupon_valid_days: float = Field(7.0, gt=0, description="How long a coupon code stays valid.")
    templates_dir: Path | None = Field(
        None, description="Directory of message templates overriding the packaged ones."
    )
    public_url: str | None = Field(
        None,
        pattern=r"^https?://",
        description="The service's public base URL (e.g. https://winback.shop.example) for open, click and "
        "unsubscribe links; none: messages go out untracked and without an unsubscribe link.",
    )
    shop_url: str | None = Field(
        None, pattern=r"^https?://", description="The shop's cart page, linked (click-tracked) from e-mails."
    )
    # The dashboard (`winback serve`, /dashboard).
    dashboard_refresh_seconds: float = Field(
        30.0,
        gt=0,
        description="How often an open dashboard checks the store, decision log and models for new data "
        "(it recomputes only when they changed).",
    )
    dashboard_session_hours: float = Field(
        12.0, gt=0, description="How long a dashboard login lasts before the key is asked for again."
    )

    @field_validator("home")
    @classmethod
    def _expand(cls, home: Path) -> Path:
        return home.expanduser()

    @property
    def store_path(self) -> Path:
        return self.home / "events.duckdb"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def state_url(self) -> str:
        """The service's database: ``database_url``, else SQLite in the home."""
        return self.database_url or f"sqlite:///{(self.home / 'state.db').resolve()}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, _config_file()))


def check_production(settings: Settings, *, sends_messages: bool = False) -> None:
    """Refuse, outside development, the default secret and (for what sends messages) messages without
    unsubscribe links."""
    from winback.errors import BadInputError

    if settings.environment == "development":
        return
    if settings.secret_key.get_secret_value() == DEVELOPMENT_SECRET:
        raise BadInputError(
            "WINBACK_SECRET_KEY: the default development secret cannot be used with WINBACK_ENVIRONMENT="
            f"{settings.environment}; set a long random value in the environment "
            "(e.g. `openssl rand -hex 32`)"
        )
    if sends_messages and not settings.public_url:
        raise BadInputError(
            f"WINBACK_PUBLIC_URL is not set: with WINBACK_ENVIRONMENT={settings.environment} every message "
            "needs its unsubscribe link and tracking, which point at the service's public URL"
        )


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment and ``winback.toml``, with ``overrides`` (not None) on top."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
