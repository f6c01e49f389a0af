"""The simulated log replayed as a live stream: every event once, each session at ``speed`` times its
pace, the sessions' starts packed in order into the stream's seconds, one path per session, and events
the service's model takes."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from winback.errors import BadInputError
from winback.events.model import Event
from winback.sim import simulate
from winback.sim.replay import replay


@pytest.fixture(scope="module")
def log() -> pd.DataFrame:
    return simulate(customers=300, days=3, seed=5).events.to_pandas()


def test_sessions_keep_their_rhythm_and_their_starts_their_order(log: pd.DataFrame) -> None:
    stream = replay(log, seconds=12, speed=600)
    assert len(stream) == len(log)
    assert sorted(e["event_id"] for e in stream.events) == sorted(log["event_id"])
    assert np.all(np.diff(stream.at) >= 0)
    sent = pd.DataFrame({"event_id": [e["event_id"] for e in stream.events], "at": stream.at})
    both = log.merge(sent, on="event_id")
    for _, session in both.groupby("session_id"):
        seconds = (session["timestamp"] - session["timestamp"].min()).dt.total_seconds()
        assert np.allclose(session["at"] - session["at"].min(), seconds / 600)
    starts = both.groupby("session_id").agg(sim=("timestamp", "min"), at=("at", "min")).sort_values("sim")
    assert starts["at"].is_monotonic_increasing
    assert starts["at"].iloc[0] == 0.0
    assert starts["at"].iloc[-1] == pytest.approx(12.0)
    span = (starts["sim"].iloc[-1] - starts["sim"].iloc[0]).total_seconds()
    assert stream.packing == pytest.approx(span / 12)
    # a 30-minute idle threshold keeps its meaning: no gap within a session reaches 3 s
    gaps = both.sort_values("timestamp").groupby("session_id")["at"].diff().dropna()
    assert gaps.max() < 30 * 60 / 600


def test_each_session_takes_one_path_and_events_validate(log: pd.DataFrame) -> None:
    stream = replay(log, seconds=10, http_share=0.3)
    paths = pd.DataFrame({"session": [e["session_id"] for e in stream.events], "http": stream.http})
    per_session = paths.groupby("session")["http"].nunique()
    assert (per_session == 1).all()
    share = paths.groupby("session")["http"].first().mean()
    assert 0.15 < share < 0.45
    start = datetime.now(UTC)
    events = [Event.model_validate(stream.stamped(i, start)) for i in range(len(stream))]
    assert events[0].timestamp == start
    assert all(e.timestamp >= start for e in events)
    purchases = [e for e in events if e.event_type == "purchase"]
    assert purchases
    assert all(e.order_id and e.quantity for e in purchases)
    assert list(stream.due(0, -1.0)) == []
    assert list(stream.due(0, stream.seconds)) == list(range(len(stream)))


def test_bad_arguments_are_refused(log: pd.DataFrame) -> None:
    with pytest.raises(BadInputError, match="seconds 0"):
        replay(log, seconds=0)
    with pytest.raises(BadInputError, match="no events"):
        replay(log.iloc[:0], seconds=5)
