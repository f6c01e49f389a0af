"""The decide commands as a user runs them: `winback plan` (file, decision log, holdout, consent, budget,
idempotence, bad input) and `winback policies evaluate` (off the log, and against the simulator)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tests.test_cli import run

from winback.config import Settings, load_settings
from winback.decide.catalogue import load_catalogue
from winback.decide.holdout import in_holdout
from winback.decide.log import DecisionLog
from winback.decide.plan import PLAN_COLUMNS
from winback.features.engine import open_source
from winback.features.tables import FeatureTables
from winback.models import tasks
from winback.sim import SimulationResult

AS_OF = "2024-05-29T14:00"  # daytime in UTC, so quiet hours leave most messages through


@pytest.fixture(scope="module")
def trained_home(shop_copy: Callable[[str], Path]) -> Path:
    """The shared shop's store with the abandonment, churn and recommend models."""
    home = shop_copy("cli-decide")
    settings = load_settings(home=home)
    with open_source(settings, "duckdb") as source:
        tables = FeatureTables(source, settings)
        for name in ("abandonment", "churn", "recommend"):
            tasks.train(name, tables, None, 30)
    return home


@pytest.fixture
def home(trained_home: Path, tmp_path: Path) -> Path:
    """A fresh copy: each test starts with an empty decision log."""
    return Path(shutil.copytree(trained_home, tmp_path / "home"))


@pytest.fixture(scope="module")
def consent(sim_shop: tuple[Settings, SimulationResult], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every customer's channels from the simulator (what the shop's CRM would export)."""
    customers = sim_shop[1].customers
    path = tmp_path_factory.mktemp("consent") / "consent.csv"
    pd.DataFrame(
        {"user_id": customers.user_id, "email": customers.consent_email, "sms": customers.consent_sms,
         "push": customers.consent_push}
    ).to_csv(path, index=False)  # fmt: skip
    return path


def test_plan_writes_the_file_and_the_log_and_planning_again_adds_nothing(
    home: Path, consent: Path, tmp_path: Path
) -> None:
    out = tmp_path / "plan.csv"
    args = ["plan", "--policy", "random", "--consent", str(consent), "--as-of", AS_OF, "--holdout", "0.4",
            "--at-risk", "0.05", "--out", str(out), "--json"]  # fmt: skip
    first = run(*args, home=home)
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    plan = pd.read_csv(out, dtype={"cart_id": str})
    assert list(plan.columns) == list(PLAN_COLUMNS)
    assert summary["rows"] == len(plan) == summary["logged"] == summary["carts"] + summary["customers"]
    assert summary["carts"] >= 5
    assert summary["customers"] >= 5
    assert set(plan["subject"]) == {"cart", "customer"}
    # holdout: exactly the customers the hash puts there, every one of them given nothing
    assert plan["holdout"].tolist() == in_holdout(plan["user_id"], 0.4)
    assert plan["holdout"].any()
    assert (plan.loc[plan["holdout"], "action"] == "nothing").all()
    assert plan.loc[plan["holdout"], "reasons"].str.startswith("holdout").all()
    # consent: every message goes on a channel the customer consented to
    allowed = pd.read_csv(consent).set_index("user_id")
    sent = plan[plan["action"] != "nothing"]
    assert len(sent) > 0
    for user, channel in zip(sent["user_id"], sent["channel"], strict=True):
        assert allowed.loc[user, channel], (user, channel)
    assert (plan["propensity"].between(0, 1, inclusive="right")).all()
    recs = sent[sent["action"].str.contains(r"\+recs")]
    assert recs["recommended"].notna().any()  # the trained recommender fills '+recs' messages
    # the log holds every decision once
    with DecisionLog(load_settings(home=home), read_only=True) as log:
        logged = log.read()
    assert len(logged) == len(plan)
    assert sorted(logged["action"]) == sorted(plan["action"])
    # planning the same moment again reproduces the plan and logs nothing new
    again = run(*args, home=home)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["logged"] == 0
    pd.testing.assert_frame_equal(pd.read_csv(out, dtype={"cart_id": str}), plan)
    # another policy at the same moment: those carts and customers already have their decision
    other = run(
        "plan", "--consent", str(consent), "--as-of", AS_OF, "--at-risk", "0.05", "--out", str(out), "--json",
        home=home,
    )  # fmt: skip
    assert other.returncode == 0, other.stderr
    found = json.loads(other.stdout)
    assert found["rows"] == found["logged"] == 0
    assert any("already planned" in note for note in found["notes"])


def test_budget_zero_means_no_coupons_and_no_consent_means_no_messages(
    home: Path, consent: Path, tmp_path: Path
) -> None:
    out = tmp_path / "plan.parquet"
    common = ["plan", "--policy", "coupon-everyone", "--as-of", AS_OF, "--at-risk", "0", "--out", str(out)]
    free = run(*common, "--consent", str(consent), "--json", home=home)
    assert free.returncode == 0, free.stderr
    assert json.loads(free.stdout)["coupons"] > 0
    shutil.copy(home / "decisions.duckdb", home.parent / "spent.duckdb")
    (home / "decisions.duckdb").unlink()
    none = run(*common, "--consent", str(consent), "--budget", "0", home=home)
    assert none.returncode == 0, none.stderr
    plan = pd.read_parquet(out)
    assert (plan["coupon"] == 0).all()
    assert (plan["action"] == "nothing").all()
    assert plan["reasons"].str.contains("budget exhausted").any()
    assert "coupons: 0" in none.stdout
    (home / "decisions.duckdb").unlink()
    silent = run(*common, home=home)
    assert silent.returncode == 0, silent.stderr
    assert (pd.read_parquet(out)["action"] == "nothing").all()
    assert "no customer's consent is known" in silent.stdout


def test_bad_input_is_refused_before_the_work(tmp_path: Path) -> None:
    empty = tmp_path / "empty-home"  # no event store: anything that got as far as the work would fail
    catalogue = tmp_path / "shop.toml"
    catalogue.write_text(
        "[channels.fax]\ncost = 0.1\n[channels.email]\ncost = -0.5\n"
        "[actions]\nnothing = false\nreminder = true\ncoupons = [10, 150]\nrecommendations = [false]\n"
        'channels = ["email"]\ndelays_hours = [24]\n'
    )
    bad = run("plan", "--catalogue", str(catalogue), "--out", str(tmp_path / "p.csv"), home=empty)
    assert bad.returncode == 2
    for part in (
        str(catalogue), "channels.fax: unknown channel 'fax'", "channels.email.cost: -0.5 is negative",
        "actions.coupons[1]: 150% is over 100%", "actions.nothing: false: the catalogue needs the 'nothing'",
    ):  # fmt: skip
        assert part in bad.stderr, part
    cases = {
        ("--budget", "-5"): "--budget -5: expected an amount of 0 or more",
        ("--out", str(tmp_path / "plan.txt")): "expected a .parquet or .csv file name",
        ("--policy", "uplift"): "plan with `--policy random`",
        ("--policy", "klaviyo"): "expected one of static-10h",
        ("--holdout", "1.5"): "holdout share 1.5",
    }
    for (option, value), message in cases.items():
        args = {"--out": str(tmp_path / "p.csv"), option: value}
        result = run("plan", *(x for pair in args.items() for x in pair), home=empty)
        assert result.returncode == 2, (option, result.stderr)
        assert message in result.stderr, (option, result.stderr)
    assert not (empty / "decisions.duckdb").exists()


def _record(home: Path, propensities: bool) -> pd.DataFrame:
    """Outcomes for every logged decision (recovered about a third of the time), or a log without
    propensities; returns the log."""
    with DecisionLog(load_settings(home=home)) as log:
        if not propensities:
            log.con.execute("UPDATE decisions SET propensity = NULL")
        decisions = log.read()
        recovered = np.array([int(d[:8], 16) % 3 == 0 for d in decisions["decision_id"]])
        margins = np.where(recovered, 25.0, 0.0)
        log.record_outcomes(
            pd.DataFrame({"decision_id": decisions["decision_id"], "recovered": recovered, "margin": margins})
        )
        return log.read()


def test_policies_evaluate_from_the_log(home: Path, consent: Path, tmp_path: Path) -> None:
    out = tmp_path / "plan.csv"
    planned = run(
        "plan",
        "--policy",
        "random",
        "--consent",
        str(consent),
        "--as-of",
        AS_OF,
        "--out",
        str(out),
        home=home,
    )
    assert planned.returncode == 0, planned.stderr
    pending = run("policies", "evaluate", home=home)
    assert pending.returncode == 2
    assert "none has an outcome" in pending.stderr
    decisions = _record(home, propensities=True)
    result = run("policies", "evaluate", "--json", "--n-boot", "200", home=home)
    assert result.returncode == 0, result.stderr
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert set(rows) == {"nothing", "static-10h", "static-1h-24h-72h", "coupon-everyone", "logged"}
    catalogue = load_catalogue()
    channel = decisions["action"].str.extract(r"/(email|sms|push)/", expand=False)
    prices = {c: catalogue.channel_cost(c) for c in ("email", "sms", "push")}
    cost = channel.map(prices).fillna(0.0).astype(float)
    mean_reward = float((decisions["margin"] - cost).mean())
    assert rows["logged"]["margin_per_decision"] == pytest.approx(mean_reward)
    for row in rows.values():
        assert {"name", "profit_per_cart", "ci_low", "ci_high", "estimator"} <= set(row)
    assert rows["static-10h"]["estimator"] == "dr"
    text = run("policies", "evaluate", "--n-boot", "100", home=home)
    assert text.returncode == 0, text.stderr
    assert "static-10h" in text.stdout
    assert "logged" in text.stdout

    _record(home, propensities=False)
    refused = run("policies", "evaluate", home=home)
    assert refused.returncode == 2
    assert "no propensities" in refused.stderr
    assert "IPS, SNIPS, DR are refused" in refused.stderr
    direct = run("policies", "evaluate", "--estimator", "direct", "--json", home=home)
    assert direct.returncode == 0, direct.stderr
    assert {r["estimator"] for r in json.loads(direct.stdout)} == {"direct", "mean"}


def test_policies_evaluate_against_the_simulator(tmp_path: Path) -> None:
    result = run(
        "policies", "evaluate", "--simulate", "--customers", "600", "--days", "120", "--seeds", "0", "--json",
        home=tmp_path / "home",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == [
        "static-10h",
        "static-1h-24h-72h",
        "coupon-everyone",
        "uplift",
        "bandit",
        "fitted-q",
        "oracle",
    ]
    for row in rows:
        assert {"name", "profit_per_cart", "ci_low", "ci_high", "ope_estimate"} <= set(row)
        assert row["ci_low"] < row["profit_per_cart"] < row["ci_high"]
    by_name = {r["name"]: r for r in rows}
    assert by_name["oracle"]["ope_estimate"] is None  # it takes actions the log never tried
    assert all(isinstance(by_name[n]["ope_estimate"], float) for n in ("static-10h", "uplift"))
    one_step = [r for r in rows if r["name"] not in ("static-1h-24h-72h", "fitted-q")]  # flows can beat it
    assert by_name["oracle"]["profit_per_cart"] >= max(r["profit_per_cart"] for r in one_step)


@pytest.mark.parametrize("command", [["plan"], ["policies", "evaluate"]])
def test_decide_commands_have_help_with_examples(command: list[str]) -> None:
    result = run(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Example" in result.stdout
    assert "winback " + " ".join(command) in result.stdout


def test_plan_alerts_staff_about_big_carts_and_valuable_customers(
    home: Path, consent: Path, tmp_path: Path
) -> None:
    from tests.act.receivers import WebhookReceiver

    with WebhookReceiver("s3cret") as receiver:
        result = run(
            "plan", "--policy", "static-10h", "--consent", str(consent), "--as-of", AS_OF,
            "--at-risk", "0.05", "--out", str(tmp_path / "plan.csv"), "--json", home=home,
            WINBACK_ALERT_WEBHOOK_URL=receiver.url("/staff"), WINBACK_WEBHOOK_SECRET="s3cret",
            WINBACK_ALERT_CART_VALUE="0", WINBACK_ALERT_CUSTOMER_VALUE="0",
            WINBACK_ALERT_CHURN_PROBABILITY="0",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        plan = pd.read_csv(tmp_path / "plan.csv", dtype={"cart_id": str})
        outside = plan[~plan["holdout"]]
        assert receiver.bad_signatures == 0
        assert receiver.distinct == len(outside) > 0  # everyone planned outside the holdout, once
        alerted = {body["winback"]["user_id"] for body in receiver.bodies.values()}
        assert alerted == set(outside["user_id"].astype(str))
        assert not alerted & set(plan.loc[plan["holdout"], "user_id"].astype(str))
        kinds = {body["winback"]["kind"] for body in receiver.bodies.values()}
        assert kinds == {"abandoned_cart", "churn_risk"}
    notes = json.loads(result.stdout)["notes"]
    assert f"staff alerts: {len(outside)} sent to 127.0.0.1" in notes
