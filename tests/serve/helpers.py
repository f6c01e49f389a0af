"""What several service tests share: a fixed start time, a clock the test moves, the app's engine."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from fastapi.testclient import TestClient

#: A Monday morning the detection tests start from.
BASE = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)


class Clock:
    """A clock that says ``now`` until the test sets another time (the detector's ``clock``)."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def engine_of(client: TestClient) -> sa.Engine:
    """The state database engine of the app behind ``client``."""
    engine: sa.Engine = client.app.state.winback.engine  # type: ignore[attr-defined]
    return engine
