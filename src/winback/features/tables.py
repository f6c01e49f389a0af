"""The feature tables models train and score on, computed on either engine and returned as pandas.

This is the one place that checks the time arguments against the data (an as-of date outside the data,
a horizon longer than the data after it), so every command fails the same clear way.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import ibis
import pandas as pd

from winback.config import Settings
from winback.errors import BadInputError
from winback.features.carts import cart_snapshots, carts
from winback.features.customers import customer_features
from winback.features.engine import FeatureSource
from winback.features.sessions import SessionStages


def parse_time(value: str | datetime | pd.Timestamp, option: str = "--as-of") -> pd.Timestamp:
    """A moment given as ISO date or date-time (UTC unless it says otherwise)."""
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise BadInputError(f"{option} {value!r}: expected a date or date-time such as 2024-05-01") from exc
    if pd.isna(ts):
        raise BadInputError(f"{option} {value!r}: expected a date or date-time such as 2024-05-01")
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def parse_horizon(value: str | int) -> int:
    """A horizon in days from ``90``, ``90d`` or ``12w``."""
    text = str(value).strip().lower()
    unit = 7 if text.endswith("w") else 1
    try:
        days = int(text.rstrip("dw")) * unit
    except ValueError as exc:
        raise BadInputError(f"--horizon {value!r}: expected days such as 90d (or weeks such as 12w)") from exc
    if days <= 0:
        raise BadInputError(f"--horizon {value!r}: expected a positive number of days")
    return days


@dataclass
class Span:
    """First and last event of the store."""

    first: pd.Timestamp
    last: pd.Timestamp
    events: int


class FeatureTables:
    """Feature tables of one event source, on its engine."""

    def __init__(self, source: FeatureSource, settings: Settings) -> None:
        self.source = source
        self.settings = settings
        self._sessioned: ibis.Table | None = None
        self._carts: ibis.Table | None = None
        self._span: Span | None = None
        self._tables: dict[tuple[Any, ...], pd.DataFrame] = {}

    @property
    def sessioned(self) -> ibis.Table:
        """The sessionised events, computed once per source and shared by every table built from it;
        without this each table would re-run the session windows over all events. Each stage of
        :class:`~winback.features.sessions.SessionStages` is kept (Ibis ``cache``: a temporary table on
        DuckDB, a cached DataFrame on Spark) before the next reads it, so the events are copied once."""
        if self._sessioned is None:
            stages = SessionStages(self.source.events, self.settings.session_gap_minutes, self.source.cache)
            self._sessioned = stages.sessioned(is_empty=self._is_empty)
        return self._sessioned

    def _is_empty(self, table: ibis.Table) -> bool:
        return self.source.execute(table.limit(1)).empty

    def span(self) -> Span:
        if self._span is None:
            e = self.source.events
            row = self.source.execute(
                e.aggregate(first=e.timestamp.min(), last=e.timestamp.max(), events=e.count())
            ).iloc[0]
            if not row["events"]:
                raise BadInputError("the event store is empty: load events first with `winback ingest`")
            self._span = Span(pd.Timestamp(row["first"]), pd.Timestamp(row["last"]), int(row["events"]))
        return self._span

    def check_as_of(self, as_of: pd.Timestamp, horizon_days: int | None = None) -> None:
        """Refuse a moment outside the data, or a horizon that runs past its end."""
        span = self.span()
        if not span.first < as_of <= span.last + timedelta(seconds=1):
            raise BadInputError(
                f"--as-of {as_of.isoformat()}: outside the data, which runs from {span.first.isoformat()} "
                f"to {span.last.isoformat()}"
            )
        if horizon_days is not None and as_of + timedelta(days=horizon_days) > span.last + timedelta(hours=1):
            available = (span.last - as_of).total_seconds() / 86_400
            raise BadInputError(
                f"--horizon {horizon_days}d from --as-of {as_of.date()} runs past the end of the data "
                f"({span.last.date()}): only {available:.0f} days of outcomes follow; choose an earlier "
                "--as-of or a shorter --horizon"
            )

    def cart_snapshots(
        self, as_of: pd.Timestamp | None = None, *, active_since: pd.Timestamp | None = None
    ) -> pd.DataFrame:
        """Point-in-time cart states (see :func:`winback.features.carts.cart_snapshots`)."""
        expr = cart_snapshots(
            self.sessioned,
            recovery_window_days=self.settings.recovery_window_days,
            as_of=None if as_of is None else as_of.timestamp(),
            active_since=None if active_since is None else active_since.timestamp(),
        )
        return self._ordered(
            ("cart_snapshots", as_of, active_since), expr, ["ts", "cart_id", "events_so_far"]
        )

    @property
    def carts_table(self) -> ibis.Table:
        """The carts (:func:`winback.features.carts.carts`) as a table of the engine, computed once per
        source, for expressions that read them (the report's demand signals)."""
        if self._carts is None:
            self._carts = self.source.cache(
                carts(
                    self.sessioned,
                    idle_minutes=self.settings.abandon_idle_minutes,
                    recovery_window_days=self.settings.recovery_window_days,
                )
            )
        return self._carts

    def carts(self) -> pd.DataFrame:
        return self._ordered(("carts",), self.carts_table, ["started_ts", "cart_id"])

    def customers(self, as_of: pd.Timestamp, horizon_days: int | None = None) -> pd.DataFrame:
        expr = customer_features(self.sessioned, as_of.timestamp(), horizon_days)
        return self._ordered(("customers", as_of, horizon_days), expr, ["user_key"])

    def _ordered(self, key: tuple[Any, ...], expr: ibis.Table, keys: list[str]) -> pd.DataFrame:
        """The table in a deterministic row order on every engine (Spark returns partitions in any
        order), computed once per set of arguments: training, its card's evaluation and scoring ask for
        the same tables. Callers get a copy, so they may change it."""
        if key not in self._tables:
            self._tables[key] = self.source.execute(expr.order_by(keys)).reset_index(drop=True)
        return self._tables[key].copy(deep=False)
