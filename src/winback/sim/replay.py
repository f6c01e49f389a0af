"""A simulated event log replayed as a live stream, time-compressed, for the live demo.

Days of a shop cannot be watched in a minute at their own pace, and a single speed-up cannot keep both
what the service measures and enough carts to see: carts are judged by their idle time (30 minutes by
default) against the gaps between a session's events (under 25 minutes in the simulator), while a
small shop starts a session every half hour or so. So the replay runs two clocks:

- **within a session**, time runs ``speed`` times faster (600: a 10-minute session lasts one second,
  and a 30-minute idle threshold becomes 3 seconds), so each cart's rhythm against its threshold is the
  simulator's own;
- **between sessions**, their starts keep their order and their relative spacing, packed into
  ``seconds`` (3 days into 20 seconds is about 13,000 times faster).

Every event keeps its session, customer, products and prices; its timestamp is given at replay time,
``start + at``. A share of the sessions (``http_share``, by a hash of the session id) is marked to be
sent through ``POST /v1/events``, the rest through the Redis Stream, as a storefront's server and a
high-volume pipeline would.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from winback.errors import BadInputError

__all__ = ["Replay", "replay"]

#: The canonical fields a replayed event carries over from the simulated log (when not null).
FIELDS = (
    "event_id", "event_type", "user_id", "anonymous_id", "session_id", "product_id", "category", "brand",
    "price", "quantity", "order_id", "value", "currency", "properties",
)  # fmt: skip


@dataclass(frozen=True)
class Replay:
    """Events in the order to send them, each with when (seconds after the start) and by which path."""

    events: list[dict[str, Any]]  # canonical events without their timestamp
    at: np.ndarray  # seconds after the start, non-decreasing
    http: np.ndarray  # True: POST /v1/events; False: the Redis Stream
    sessions: int
    speed: float  # within a session
    packing: float  # between the sessions' starts
    span: timedelta  # of the simulated log

    def __len__(self) -> int:
        return len(self.events)

    @property
    def seconds(self) -> float:
        """When the last event is due."""
        return float(self.at[-1]) if len(self.at) else 0.0

    def stamped(self, i: int, start: datetime) -> dict[str, Any]:
        """Event ``i`` with its timestamp at replay time (``start`` + its offset, ISO 8601 with zone)."""
        return {**self.events[i], "timestamp": (start + timedelta(seconds=float(self.at[i]))).isoformat()}

    def due(self, done: int, elapsed: float) -> Iterator[int]:
        """The indices from ``done`` on whose time has come ``elapsed`` seconds after the start."""
        end = int(np.searchsorted(self.at, elapsed, side="right"))
        return iter(range(done, max(done, end)))


def _value(name: str, value: Any) -> Any:
    """A log value as JSON: None for nulls, numbers as Python numbers, properties as an object."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    if name == "properties":
        return json.loads(value) if isinstance(value, str) else value
    if name == "quantity":
        return int(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def replay(
    events: pa.Table | pd.DataFrame,
    *,
    seconds: float,
    speed: float = 600.0,
    http_share: float = 0.25,
) -> Replay:
    """The simulated log ``events`` as a stream of ``seconds``: sessions at ``speed`` times their pace,
    their starts packed in order into ``seconds`` (see the module docstring).

    Examples
    --------
    >>> from winback.sim import simulate
    >>> stream = replay(simulate(customers=100, days=2, seed=1).events, seconds=10)
    >>> stream.speed, float(stream.at[0]), stream.seconds <= 10 + stream.span.total_seconds() / 600
    (600.0, 0.0, True)
    """
    if not seconds > 0 or not speed > 0 or not 0 <= http_share <= 1:
        raise BadInputError(
            f"replay: seconds {seconds} and speed {speed} must be > 0, http_share {http_share} in [0, 1]"
        )
    frame = events.to_pandas() if isinstance(events, pa.Table) else events.copy()
    if frame.empty:
        raise BadInputError("replay: the simulated log has no events")
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    sessions = frame["session_id"].fillna("user:" + frame["user_id"].astype(str)).astype(str)
    start = frame.groupby(sessions)["timestamp"].transform("min")
    first, last = start.min(), start.max()
    span = (last - first).total_seconds()
    packing = span / seconds if span > 0 else 1.0
    within = (frame["timestamp"] - start).dt.total_seconds()
    at = (start - first).dt.total_seconds() / packing + within / speed
    order = np.lexsort((np.arange(len(frame)), at.to_numpy()))  # by due time, the log's order on ties
    shares = {s: zlib.crc32(s.encode()) % 10_000 < http_share * 10_000 for s in sessions.unique()}
    columns = [c for c in FIELDS if c in frame.columns]
    records = frame[columns].to_dict("records")
    out = []
    for i in order:
        row = records[i]
        event = {name: _value(name, row[name]) for name in columns}
        out.append({k: v for k, v in event.items() if v is not None})
    return Replay(
        events=out,
        at=at.to_numpy()[order],
        http=sessions.map(shares).to_numpy(dtype=bool)[order],
        sessions=len(shares),
        speed=float(speed),
        packing=float(packing),
        span=frame["timestamp"].max() - frame["timestamp"].min(),
    )
