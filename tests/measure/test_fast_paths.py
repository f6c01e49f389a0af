"""The report's fast paths give the numbers of the straightforward computations they replace, on a small
shop that ran winback with a holdout (real DuckDB stores and decision log)."""

from __future__ import annotations

import bisect

import duckdb
import pandas as pd

from winback.config import Settings
from winback.events.store import EventStore
from winback.measure.data import SEGMENTS, MeasureData


def _segments_one_by_one(settings: Settings, decisions: pd.DataFrame) -> list[str]:
    """Each decision's segment by counting, in pandas, its customer's orders strictly before it."""
    with EventStore(settings, read_only=True) as store:
        orders = store.con.execute(
            "SELECT coalesce(user_id, 'anonymous:' || anonymous_id) AS user_id, min(timestamp) AS at "
            "FROM event_log WHERE event_type = 'purchase' "
            "GROUP BY 1, coalesce(order_id, CAST(timestamp AS VARCHAR))"
        ).df()
    times = {user: sorted(group["at"]) for user, group in orders.groupby("user_id")}
    out = []
    for user, decided in zip(decisions["user_id"], decisions["decided_at"], strict=True):
        before = bisect.bisect_left(times.get(user, []), decided)  # orders strictly before the decision
        out.append(SEGMENTS[0] if before == 0 else SEGMENTS[1] if before <= 2 else SEGMENTS[2])
    return out


def test_decisions_read_with_segments_in_one_query(measured_shop: Settings) -> None:
    with duckdb.connect(str(measured_shop.home / "decisions.duckdb"), read_only=True) as con:
        logged = con.execute(
            "SELECT decision_id, recovered FROM decisions ORDER BY decided_at, decision_id"
        ).df()
    with MeasureData(measured_shop) as data:
        frame = data.all_decisions()
    assert frame["decision_id"].tolist() == logged["decision_id"].tolist()
    assert frame["recovered"].dtype == "boolean"
    assert frame["recovered"].isna().sum() == logged["recovered"].isna().sum()
    expected = _segments_one_by_one(measured_shop, frame)
    assert frame["segment"].tolist() == expected
    assert len(set(expected)) == 3  # the shop has customers of every segment: the check bites
    decided = pd.to_datetime(frame["decided_at"], utc=True).dt.tz_localize(None)
    weeks = decided.dt.to_period("W-SUN").dt.start_time.dt.strftime("%Y-%m-%d")
    assert frame["week"].tolist() == weeks.tolist()
