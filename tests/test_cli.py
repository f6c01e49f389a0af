"""The ``winback`` command as a user runs it: help, JSON output, exit codes, configuration."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

WINBACK = [sys.executable, "-m", "winback.cli"]


def run(
    *args: str, home: Path | None = None, cwd: Path | None = None, **env: str
) -> subprocess.CompletedProcess:
    environment = {**os.environ, **env}
    environment.pop("WINBACK_HOME", None)
    if home is not None:
        environment["WINBACK_HOME"] = str(home)
    return subprocess.run(
        [*WINBACK, *args], capture_output=True, text=True, env=environment, cwd=cwd, timeout=300
    )


@pytest.mark.parametrize(
    "command",
    [
        ["ingest"],
        ["events", "stats"],
        ["simulate"],
        ["demo"],
        ["train"],
        ["evaluate"],
        ["score"],
        ["clv", "fit"],
        ["warnings"],
        ["recommend"],
        ["plan"],
        ["policies", "evaluate"],
    ],
)
def test_every_command_has_help_with_an_example(command: list[str]) -> None:
    result = run(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Example" in result.stdout
    assert "winback " + " ".join(command) in result.stdout


def test_ingest_and_stats_as_json(tmp_path: Path, data_dir: Path) -> None:
    home = tmp_path / "home"
    result = run("ingest", str(data_dir / "rees46_2019-Oct_first1000rows.csv"), "--json", home=home)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["ingested"] == 1000
    again = json.loads(
        run("ingest", str(data_dir / "rees46_2019-Oct_first1000rows.csv"), "--json", home=home).stdout
    )
    assert {k: again[k] for k in ("ingested", "duplicates", "rejected")} == {
        "ingested": 0,
        "duplicates": 1000,
        "rejected": 0,
    }
    stats = json.loads(run("events", "stats", "--json", home=home).stdout)
    assert stats["events"] == 1000
    assert stats["by_type"] == {"view": 987, "purchase": 10, "add_to_cart": 3}
    assert stats["first"] == "2019-10-01T00:00:00+00:00"
    text = run("events", "stats", home=home)
    assert "abandoned" in text.stdout
    assert "1,000" in text.stdout


def test_exit_codes(tmp_path: Path) -> None:
    home = tmp_path / "home"
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,user_id,event_type,price\n2024-01-01T00:00:00Z,u,view,-1\n")
    result = run("ingest", str(bad), home=home)
    assert result.returncode == 2
    assert f"{bad}, line 2: price" in result.stderr
    assert run("ingest", "--no-such-option", home=home).returncode == 2
    assert run("ingest", str(tmp_path / "missing.csv"), home=home).returncode == 2
    assert run("events", "stats", home=tmp_path / "empty").returncode == 2  # no store yet
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "events.duckdb").write_text("not a database")
    failed = run("events", "stats", home=locked)
    assert failed.returncode == 1
    assert "cannot open the event store" in failed.stderr


def test_home_from_flag_env_and_toml(tmp_path: Path, data_dir: Path) -> None:
    sample = str(data_dir / "retailrocket_events_sample_1500visitors.csv")
    (tmp_path / "winback.toml").write_text('home = "from-toml"\nsession_gap_minutes = 10\n')
    assert run("ingest", sample, "--json", cwd=tmp_path).returncode == 0
    assert (tmp_path / "from-toml" / "events.duckdb").exists()
    stats_10 = json.loads(run("events", "stats", "--json", cwd=tmp_path).stdout)
    stats_30 = json.loads(
        run("events", "stats", "--json", cwd=tmp_path, WINBACK_SESSION_GAP_MINUTES="30").stdout
    )
    assert stats_10["sessions"] > stats_30["sessions"]  # a shorter gap splits more sessions
    assert run("ingest", sample, "--json", "--home", str(tmp_path / "flag"), cwd=tmp_path).returncode == 0
    assert (tmp_path / "flag" / "events.duckdb").exists()
    bad = run("events", "stats", cwd=tmp_path, WINBACK_SESSION_GAP_MINUTES="-3")
    assert bad.returncode == 2
    assert "session_gap_minutes" in bad.stderr


def test_simulate_writes_a_log_that_ingests_and_its_truth(tmp_path: Path) -> None:
    out, truth, home = tmp_path / "shop.csv", tmp_path / "truth", tmp_path / "home"
    args = ("simulate", "--customers", "300", "--days", "30", "--seed", "3", "--out", str(out), "--json")
    result = run(*args, "--truth", str(truth))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["events"] > 1000
    assert 0 < summary["natural_recovery_rate"] < 0.5
    assert (truth / "customers.parquet").exists()
    assert (truth / "carts.parquet").exists()
    header = out.read_text().splitlines()[0]
    assert header.startswith('"event_id","event_type","timestamp"')
    loaded = json.loads(run("ingest", str(out), "--json", home=home).stdout)
    assert (loaded["ingested"], loaded["rejected"]) == (summary["events"], 0)
    again = run(*args)  # the same seed writes the same file
    assert again.returncode == 0
    reloaded = json.loads(run("ingest", str(out), "--json", home=home).stdout)
    assert (reloaded["ingested"], reloaded["duplicates"]) == (0, summary["events"])
    bad = run("simulate", "--out", str(tmp_path / "shop.xlsx"))
    assert bad.returncode == 2
    assert "expected a .parquet or .csv" in bad.stderr


def test_demo_runs_end_to_end_and_a_rerun_adds_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = run("demo", "--customers", "400", "--days", "45", "--no-live", "--json", home=home)
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    assert summary["ingest"]["ingested"] == summary["stats"]["events"] > 1000
    assert summary["actions"]["reminder/email/1h"]["incremental_margin"] < 0
    assert Path(summary["store"]).exists()
    predictions = summary["predictions"]
    assert predictions["trained"] == ["abandonment", "churn", "clv", "segments", "recommend"]
    assert 0.3 < predictions["churn_auc"]["LightGBM + P(alive)"] < 1
    messages = predictions["messages"]
    assert len(messages) == 3
    for message in messages:
        shown = [p["product_id"] for p in message["products"]]
        assert shown
        assert not set(shown) & set(message["items"])  # never the cart's own items
        assert all(p["reason"] for p in message["products"])
    assert summary["policies"] == []  # 45 days of 400 customers: too few carts to learn a policy from
    assert all(Path(p).exists() for p in predictions["files"].values())
    second = json.loads(
        run("demo", "--customers", "400", "--days", "45", "--no-live", "--json", home=home).stdout
    )
    assert second["ingest"]["ingested"] == 0
    assert second["ingest"]["duplicates"] == summary["ingest"]["ingested"]
    text = run("demo", "--customers", "400", "--days", "45", "--no-live", home=home)
    assert "summary" in text.stdout
    assert str(home / "events.duckdb") in text.stdout
    assert "147 training and 44 test carts; simulate a larger shop" in text.stdout


def test_demo_compares_the_static_flows_with_the_uplift_policy(tmp_path: Path) -> None:
    shown = run("demo", "--customers", "1500", "--days", "60", "--no-live", "--json", home=tmp_path / "home")
    assert shown.returncode == 0, shown.stderr
    policies = {row["name"]: row for row in json.loads(shown.stdout)["policies"]}
    assert list(policies) == ["static-10h", "static-1h-24h-72h", "coupon-everyone", "uplift", "oracle"]
    for row in policies.values():
        assert row["ci_low"] <= row["profit_per_cart"] <= row["ci_high"]
    assert policies["oracle"]["profit_per_cart"] >= max(r["profit_per_cart"] for r in policies.values())
    # Its whole 3-step flow is scored; its 1 h reminder's reactance keeps it below the learnt policy.
    assert policies["static-1h-24h-72h"]["profit_per_cart"] < policies["uplift"]["profit_per_cart"]
    assert policies["uplift"]["profit_per_cart"] > policies["static-10h"]["profit_per_cart"]


def test_mapping_file_and_quiet_json(tmp_path: Path) -> None:
    log = tmp_path / "log.csv"
    log.write_text("when;who;what;sku\n20240301;7;pv;a\n20240302;7;buy;a\n20240303;8;hover;b\n")
    mapping = tmp_path / "mapping.toml"
    mapping.write_text(
        'delimiter = ";"\ntimestamp_format = "yyyymmdd"\n'
        '[columns]\ntimestamp = "when"\nuser_id = "who"\nevent_type = "what"\nproduct_id = "sku"\n'
        '[event_types]\npv = "view"\nbuy = "purchase"\nhover = "ignore"\n'
    )
    result = run("ingest", str(log), "--mapping", str(mapping), "--json", home=tmp_path / "home")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no progress bar when output is not a terminal
    report = json.loads(result.stdout)
    assert (report["ingested"], report["ignored"]) == (2, 1)
    bad = tmp_path / "bad.toml"
    bad.write_text("[colums]\nuser_id = 'who'\n")
    refused = run("ingest", str(log), "--mapping", str(bad), home=tmp_path / "home")
    assert refused.returncode == 2
    assert "unknown keys ['colums']" in refused.stderr


def test_progress_bar_on_a_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a pseudo-terminal the bar is drawn (on stderr); under pipes (the other tests) it is not."""
    import pty

    out = tmp_path / "shop.parquet"
    chunks: list[bytes] = []

    def read(fd: int) -> bytes:
        data = os.read(fd, 4096)
        chunks.append(data)
        return data

    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setenv("TERM", "xterm")
    status = pty.spawn(
        [*WINBACK, "simulate", "--customers", "2000", "--days", "120", "--out", str(out)], read
    )
    text = b"".join(chunks).decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0
    assert "simulating days" in text
    assert "simulated 2,000 customers" in text


def test_ingest_reads_properties_columns_and_refuses_ones_that_are_not_objects(tmp_path: Path) -> None:
    """A Parquet STRUCT, CSV JSON text and a JSON Lines object: each is the event's properties."""
    home, parquet, csv, jsonl = (
        tmp_path / "home",
        tmp_path / "a.parquet",
        tmp_path / "b.csv",
        tmp_path / "c.jsonl",
    )
    shape = pa.struct([("color", pa.string())])
    pq.write_table(
        pa.table({"timestamp": ["2024-03-01T10:00:00Z"], "user_id": ["u1"], "event_type": ["view"],
                  "properties": pa.array([{"color": "red"}], shape), "channel": ["web"]}),
        parquet,
    )  # fmt: skip
    csv.write_text('timestamp,user_id,event_type,properties\n2024-03-01T10:00:00Z,u2,view,"{""size"": 3}"\n')
    jsonl.write_text(
        '{"timestamp": "2024-03-01T10:00:00Z", "user_id": "u3", "event_type": "view", '
        '"properties": {"page": "home"}}\n'
    )
    result = run("ingest", str(parquet), str(csv), str(jsonl), "--json", home=home)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["ingested"] == 3
    with duckdb.connect(str(home / "events.duckdb"), read_only=True) as con:
        rows = con.execute("SELECT user_id, properties FROM events ORDER BY user_id").fetchall()
    assert rows == [
        ("u1", '{"channel":"web","color":"red"}'),
        ("u2", '{"size":3}'),
        ("u3", '{"page":"home"}'),
    ]

    bad = tmp_path / "bad.csv"
    bad.write_text('timestamp,user_id,event_type,properties\n2024-03-01T11:00:00Z,u4,view,"{size: 3}"\n')
    refused = run("ingest", str(jsonl), str(bad), home=home)
    assert refused.returncode == 2
    assert f"{bad}, line 2: properties: found '{{size: 3}}', expected a JSON object" in refused.stderr
    with duckdb.connect(str(home / "events.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*), max(batch_id) FROM events").fetchone() == (3, 3)
