"""The decision log keeps every decision once, all or nothing, and takes outcomes later; the holdout is
a fixed random share of customers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from winback.config import load_settings
from winback.decide.holdout import holdout_draw, in_holdout
from winback.decide.log import DecisionLog
from winback.errors import BadInputError

AT = pd.Timestamp("2024-06-01T12:00:00Z")


def _decisions(n: int = 3) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "decided_at": [AT] * n,
            "cart_id": [f"c{i}" for i in range(n)],
            "user_id": [f"u{i}" for i in range(n)],
            "policy": "uplift",
            "version": "v1",
            "action": ["reminder/email/24h", "nothing", "coupon10/email/24h"][:n],
            "propensity": [0.9, 0.05, 0.05][:n],
            "expected_profit": [1.2, 0.0, 0.4][:n],
            "reasons": [("best incremental profit",), (), ("price-sensitive",)][:n],
            "context": [{"value": 80.0}, {"value": 12.0}, {"value": 300.0}][:n],
        }
    )


def test_append_is_idempotent_and_survives_reopening(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path / "home")
    with DecisionLog(settings) as log:
        assert log.append(_decisions()) == 3
        assert log.append(_decisions()) == 0  # planning the same carts at the same moment adds nothing
    with DecisionLog(settings, read_only=True) as log:
        table = log.read()
    assert list(table["action"]) == ["reminder/email/24h", "nothing", "coupon10/email/24h"]
    assert table["decision_id"].is_unique
    assert table["reasons"].iloc[0] == '["best incremental profit"]'
    assert table["context"].iloc[2] == '{"value": 300.0}'
    assert not table["holdout"].any()
    assert table["recovered"].isna().all()


def test_outcomes_are_recorded_later(tmp_path: Path) -> None:
    with DecisionLog(load_settings(home=tmp_path)) as log:
        log.append(_decisions())
        ids = log.read()["decision_id"]
        outcomes = pd.DataFrame({"decision_id": ids[:2], "recovered": [True, False], "margin": [24.0, 0.0]})
        updated = log.record_outcomes(outcomes)
        table = log.read()
    assert updated == 2
    assert list(table["recovered"].iloc[:2]) == [True, False]
    assert table["outcome_observed_at"].notna().sum() == 2
    assert pd.isna(table["recovered"].iloc[2])


def test_bad_decisions_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path)
    bad = _decisions()
    bad.loc[1, "propensity"] = 0.0
    with DecisionLog(settings) as log:
        with pytest.raises(BadInputError, match=r"row 1: propensity 0\.0"):
            log.append(bad)
        with pytest.raises(BadInputError, match="missing columns \\['policy'\\]"):
            log.append(_decisions().drop(columns="policy"))
        with pytest.raises(BadInputError, match="unknown columns \\['colour'\\]"):
            log.append(_decisions().assign(colour="red"))
        assert log.count() == 0
    with pytest.raises(BadInputError, match="run `winback plan` first"):
        DecisionLog(load_settings(home=tmp_path / "none"), read_only=True)


def test_holdout_is_a_stable_random_share() -> None:
    users = [f"u{i}" for i in range(50_000)]
    held = np.array(in_holdout(users, share=0.1))
    assert abs(held.mean() - 0.1) < 0.005
    assert in_holdout(users[:100], share=0.1) == list(held[:100])  # the same on every run
    other = np.array(in_holdout(users, share=0.1, salt="other"))
    assert other.mean() == pytest.approx(0.1, abs=0.005)
    assert (other != held).any()
    assert not any(in_holdout(users[:1000], share=0.0))
    assert 0 <= holdout_draw("u1") < 1
    with pytest.raises(BadInputError, match=r"holdout share 1\.5"):
        in_holdout(users, share=1.5)
