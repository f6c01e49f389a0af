"""`winback detect`, `winback sync` and `winback erase` as a user runs them, on both databases."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tests.test_cli import run

from winback.act.outbox import write_transaction
from winback.decide.holdout import in_holdout
from winback.events.model import Event
from winback.serve.db import make_engine, upgrade
from winback.serve.ingest import store_events
from winback.serve.profiles import ProfileUpdate, upsert_profiles


@pytest.mark.slow
def test_detect_sync_and_erase_from_the_command_line(tmp_path: Path, database_url: str) -> None:
    candidates = [f"cli{i}" for i in range(100)]
    people = [u for u, held in zip(candidates, in_holdout(candidates), strict=True) if not held][:3]
    engine = make_engine(database_url)
    upgrade(engine)
    idle = datetime.now(UTC) - timedelta(hours=1)  # abandoned half an hour ago
    store_events(engine, [Event.model_validate(
        {"event_id": f"add-{u}", "event_type": "add_to_cart", "user_id": u, "session_id": f"s-{u}",
         "product_id": "p1", "price": 30.0, "timestamp": idle.isoformat()}) for u in people])  # fmt: skip
    with write_transaction(engine) as connection:  # any time zone where the reminder is not in quiet hours
        send = idle + timedelta(hours=10)
        offset = (13 * 60 - (send.hour * 60 + send.minute)) % 1440
        offset -= 1440 if offset > 840 else 0
        upsert_profiles(connection, [
            ProfileUpdate(u, {"email": f"{u}@example.com", "utc_offset_minutes": offset},
                          {"email": (True, idle - timedelta(days=1))}) for u in people])  # fmt: skip
    engine.dispose()
    env = {"WINBACK_DATABASE_URL": database_url}

    detected = run("detect", "--once", "--json", "--outcomes-every", "0", home=tmp_path, **env)
    assert detected.returncode == 0, detected.stderr
    stats = json.loads(detected.stdout)
    assert (stats["events"], stats["carts_opened"], stats["decided"], stats["messages"]) == (3, 3, 3, 3)
    assert stats["actions"] == {"reminder/email/10h": 3}
    assert "winback detect: policy static-10h" in detected.stderr
    again = json.loads(run("detect", "--once", "--json", home=tmp_path, **env).stdout)
    assert again["decided"] == 0  # decided once

    synced = run("sync", home=tmp_path, **env)
    assert synced.returncode == 0, synced.stderr
    assert "events: 3 read, 3 new" in synced.stdout
    assert "decisions: 3 read, 3 new, 0 outcomes" in synced.stdout
    assert json.loads(run("sync", "--json", home=tmp_path, **env).stdout)["events_stored"] == 0

    erased = run("erase", people[0], "--json", home=tmp_path, **env)
    assert erased.returncode == 0, erased.stderr
    counts = json.loads(erased.stdout)["erased"]
    assert (counts["events"], counts["decisions"], counts["outbox"], counts["customers"]) == (1, 1, 1, 1)
    assert (counts["home_events"], counts["home_decisions"]) == (1, 1)

    bad = tmp_path / "thresholds.csv"
    bad.write_text("customer,threshold_minutes\nnew,abc\n")
    refused = run("detect", "--once", "--thresholds", str(bad), home=tmp_path, **env)
    assert refused.returncode == 2
    assert "--thresholds" in refused.stderr
    assert "missing columns" in refused.stderr

    zero = run("detect", "--once", "--window-days", "0", home=tmp_path, **env)
    assert zero.returncode == 2
    assert "--window-days 0.0: expected a number of days > 0" in zero.stderr
