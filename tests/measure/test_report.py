"""The report on a simulated shop that ran winback with a holdout, and on bad input: real DuckDB stores,
the real decision log and outcomes, the HTML checked as a file a manager would open."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from winback.config import Settings, load_settings
from winback.decide.log import DecisionLog
from winback.events.stats import event_stats
from winback.events.store import EventStore
from winback.measure import demand, kpis
from winback.measure.data import Filters, MeasureData
from winback.measure.health import psi
from winback.measure.report import SECTIONS, write_report
from winback.measure.simulated import simulate_with_holdout, store_simulated
from winback.sim import ShopConfig, SimulationResult

SHOP = ShopConfig(customers=1500, days=75)


def _home(tmp_path_factory: pytest.TempPathFactory, label: str, **options: object) -> Settings:
    settings = load_settings(home=tmp_path_factory.mktemp(label) / "home")
    store_simulated(settings, simulate_with_holdout(4, SHOP, **options))  # type: ignore[arg-type]
    return settings


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A home whose shop ran winback's randomising policy with a 10% holdout, outcomes recorded."""
    return _home(tmp_path_factory, "measured")


def _visible(page: str) -> str:
    """The page without the bundled plotly.js (whose own source mentions NaN and URLs)."""
    return re.sub(r'<script id="plotly-js".*?</script>', "", page, flags=re.S)


def _check_clean(page: str) -> str:
    """The page is self-contained and shows no NaN, infinity or None; its visible part."""
    assert not re.findall(r"<(?:script|link|img)[^>]+(?:src|href)=[\"']?(?:https?:)?//", page)
    assert page.count('<script id="plotly-js"') == 1
    visible = _visible(page)
    text = re.sub(r"<[^>]+>", " ", visible)
    for bad in ("NaN", "nan%", "inf ", "Infinity", "None"):
        assert bad not in text, bad
    assert "NaN" not in visible
    return visible


def test_report_on_a_shop_with_a_holdout(shop: Settings, tmp_path: Path) -> None:
    result = write_report(shop, Filters(), tmp_path / "report.html")
    visible = _check_clean(result.path.read_text())
    for name, _ in SECTIONS:
        assert f'<section id="{name}">' in visible
    summary = result.summary
    assert summary["incremental_margin"] is not None
    assert summary["ci_low"] < summary["incremental_margin"] < summary["ci_high"]
    assert "margin that would otherwise have been" in visible
    # the attributed number is beside the incremental one, and larger: a vendor counts every order after one
    assert summary["attributed_revenue"] > summary["incremental_revenue"]
    # the plots: funnel, recovery with the control line, uplift by decile, cohort heatmap, price bands
    for marker in ('"type":"funnel"', "holdout (natural recovery)", "Uplift by decile", '"type":"heatmap"'):
        assert marker in visible, marker
    assert "delta-method Welch" in visible
    assert "Newcombe" in visible


def test_the_figures_agree_with_the_stores(shop: Settings) -> None:
    with EventStore(shop, read_only=True) as store:
        stats = event_stats(store)
        sent = store.con.execute(
            "SELECT count(*) FROM event_log WHERE event_type = 'message_sent'"
        ).fetchone()
    with DecisionLog(shop, read_only=True) as log:
        logged = log.read()
    with MeasureData(shop) as data:
        f = Filters()
        carts = kpis.carts_over_time(data, f)
        assert int(carts["carts"].sum()) == stats["carts"]
        assert int(carts["abandoned"].sum()) == stats["abandoned_carts"]
        messages = kpis.messages_over_time(data, f)
        assert sent is not None
        assert int(messages["sent"].sum()) == sent[0]
        decisions = data.decisions(f)
        assert len(decisions) == int(logged["outcome_observed_at"].notna().sum())
        assert 0.06 < decisions["holdout"].mean() < 0.14
        cohorts = kpis.cohort_retention(data, f)
        assert (cohorts.loc[cohorts["month"] == 0, "retention"] == 1.0).all()
        orders = kpis.orders_over_time(data, f)
        assert orders["revenue"].sum() == pytest.approx(stats["revenue"], rel=1e-6)
        items = demand.abandoned_items(data, f)
        top = demand.top_products(data, f, top=3)
        counted = items.groupby("product_id").size().sort_values(ascending=False)
        assert top["abandoned"].tolist() == counted.head(3).tolist()
        assert ((top["recovered"] + top["lost"]) == top["abandoned"]).all()


def test_an_empty_period_is_said_in_words(shop: Settings, tmp_path: Path) -> None:
    result = write_report(shop, Filters.parse("2030-01-01", "2030-02-01"), tmp_path / "empty.html")
    visible = _check_clean(result.path.read_text())
    assert "No decisions with a recorded outcome in this period" in visible
    assert "No carts in this period" in visible
    assert "No abandoned carts in this period" in visible
    assert result.summary.get("incremental_margin") is None


def test_a_shop_without_a_decision_log(sim_shop: tuple[Settings, SimulationResult], tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path / "home")
    settings.home.mkdir()
    (settings.home / "events.duckdb").write_bytes(sim_shop[0].store_path.read_bytes())
    visible = _check_clean(write_report(settings, Filters(), tmp_path / "r.html").path.read_text())
    assert "No decision log" in visible
    assert "No messages sent in this period" in visible
    assert "no churn model" in visible.lower() or "train one first" in visible


@pytest.mark.slow
def test_no_holdout_and_no_sends(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    unheld = _home(tmp_path_factory, "unheld", share=0.0)
    visible = _check_clean(write_report(unheld, Filters(), tmp_path / "a.html").path.read_text())
    assert "No holdout in this period" in visible
    silent = _home(tmp_path_factory, "silent", actions=("nothing",))
    visible = _check_clean(write_report(silent, Filters(), tmp_path / "b.html").path.read_text())
    assert "No messages were sent in this period" in visible
    assert "No coupons were given in this period" in visible


def test_psi_flags_a_shifted_population() -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    same = psi(rng.normal(0, 1, 5000), rng.normal(0, 1, 5000))
    moved = psi(rng.normal(0, 1, 5000), rng.normal(1, 1, 5000))
    assert same is not None
    assert moved is not None
    assert same < 0.02
    assert moved > 0.25
    assert psi(np.array([]), np.ones(3)) is None


def _cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "WINBACK_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "winback.cli", *args], capture_output=True, text=True,
                          env=environment, timeout=300)  # fmt: skip


@pytest.mark.slow
def test_cli_report_and_its_bad_input(shop: Settings, tmp_path: Path) -> None:
    out = tmp_path / "cli.html"
    done = _cli("report", "--out", str(out), "--channel", "email", "--json", home=shop.home)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["out"] == str(out)
    assert out.exists()
    assert "channel email" in out.read_text()[-200_000:]
    for args, expected in (
        (("--since", "last tuesday"), "--since 'last tuesday'"),
        (("--out", str(tmp_path / "r.txt")), "expected an .html file name"),
        (("--channel", "fax"), "--channel 'fax'"),
        (("--since", "2024-03-01", "--until", "2024-02-01"), "is not after --since"),
    ):
        bad = _cli("report", *args, home=shop.home)
        assert bad.returncode == 2, (args, bad.stderr)
        assert expected in bad.stderr, (expected, bad.stderr)
    assert not (tmp_path / "r.txt").exists()


def test_filters_by_flow(shop: Settings) -> None:
    with MeasureData(shop) as data:
        assert data.policies() == ["random"]
        assert len(data.decisions(Filters(policy="nobody"))) == 0
        everything = data.decisions(Filters())
        email = data.decisions(Filters(channel="email"))
        assert set(email["channel"]) <= {"email", "none"}
        assert email["consent_email"].all()
        assert len(email) < len(everything)
        assert isinstance(everything["week"].iloc[0], str)
        assert pd.Timestamp(everything["week"].iloc[0]).day_of_week == 0
