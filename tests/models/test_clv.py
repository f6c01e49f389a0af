"""CLV models on the CDNOW sample of Fader, Hardie & Lee (2005), plus bad and tiny input.

Calibration is weeks 1-39 (1997-01-01 to 1997-09-30), the holdout weeks 40-78 (to 1998-06-30).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from winback.errors import BadInputError
from winback.models.clv import (
    BetaGeoModel,
    ConvergenceError,
    GammaGammaModel,
    customer_lifetime_value,
    rfm_summary,
)

CALIBRATION_END = "1997-09-30"
HOLDOUT_END = "1998-06-30"
# Fader, Hardie & Lee (2005), table of BG/NBD estimates; Fader & Hardie (2013) for Gamma-Gamma.
PUBLISHED_BGNBD = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
PUBLISHED_LL = -9582.4
PUBLISHED_GG = {"p": 6.25, "q": 3.74, "gamma": 15.44}


@pytest.fixture(scope="module")
def cdnow_sample(data_dir: Path) -> pd.DataFrame:
    tx = pd.read_csv(
        data_dir / "cdnow" / "CDNOW_sample.txt",
        sep=r"\s+",
        header=None,
        names=["master_id", "id", "date", "cds", "dollars"],
        dtype={"date": str},
    )
    tx["timestamp"] = pd.to_datetime(tx["date"], format="%Y%m%d")
    return tx


@pytest.fixture(scope="module")
def summary(cdnow_sample: pd.DataFrame) -> pd.DataFrame:
    return rfm_summary(
        cdnow_sample,
        customer_col="id",
        value_col="dollars",
        observation_end=HOLDOUT_END,
        calibration_end=CALIBRATION_END,
    )


@pytest.fixture(scope="module")
def bgnbd(summary: pd.DataFrame) -> BetaGeoModel:
    return BetaGeoModel().fit(summary)


@pytest.fixture(scope="module")
def gg(summary: pd.DataFrame) -> GammaGammaModel:
    return GammaGammaModel().fit(summary)


# --- rfm_summary -------------------------------------------------------------------------------------


def test_rfm_summary_matches_the_published_cdnow_summaries(summary: pd.DataFrame, data_dir: Path) -> None:
    published = pd.read_csv(data_dir / "cdnow" / "cdnow_customers_summary_with_transactions.csv")
    published = published.set_index("ID")
    short = pd.read_csv(data_dir / "cdnow" / "cdnow_customers_summary.csv").set_index("ID")
    assert len(summary) == len(published) == len(short) == 2357
    assert summary.index.tolist() == published.index.tolist()
    # frequency exactly; recency, T and zbar were published rounded to 2 decimals
    np.testing.assert_array_equal(summary["frequency"], published["x"])
    np.testing.assert_array_equal(summary["frequency"], short["frequency"])
    np.testing.assert_allclose(summary["recency"], published["t_x"], atol=0.005)
    np.testing.assert_allclose(summary["recency"], short["recency"], atol=0.005)
    np.testing.assert_allclose(summary["T"], published["T"], atol=0.005)
    np.testing.assert_allclose(summary["monetary_value"], published["zbar"], atol=0.0051)
    assert summary["frequency"].sum() == 2457  # repeat purchase days in weeks 1-39
    assert (published["x"] > 0).sum() == 946
    assert summary.attrs["time_unit"] == "week"
    assert (summary["duration_holdout"] == 39).all()


def test_rfm_summary_counts_purchase_days_and_sums_their_value() -> None:
    tx = pd.DataFrame(
        {
            "user_id": ["a", "a", "a", "a", "b"],
            "timestamp": ["2024-01-01 09:00", "2024-01-01 18:00", "2024-01-08", "2024-01-22", "2024-01-05"],
            "value": [10.0, 5.0, 20.0, 40.0, 7.0],
        }
    )
    s = rfm_summary(tx, observation_end="2024-01-29", time_unit="day")
    assert s.loc["a"].to_dict() == {"frequency": 2.0, "recency": 21.0, "T": 28.0, "monetary_value": 30.0}
    assert s.loc["b"].to_dict() == {"frequency": 0.0, "recency": 0.0, "T": 24.0, "monetary_value": 0.0}
    # the observation end is a whole (inclusive) day; later purchases are ignored
    cut = rfm_summary(tx, observation_end="2024-01-08 00:00", time_unit="day")
    assert cut.loc["a", "frequency"] == 1.0
    assert cut.loc["a", "T"] == 7.0


def test_rfm_summary_reads_tz_aware_timestamps_as_local_days() -> None:
    # 23:30 in New York on Jan 1 is Jan 2 in UTC: the customer's own day is what counts
    stamps = pd.to_datetime(["2024-01-01 23:30", "2024-01-02 08:00", "2024-01-09 12:00"])
    tx = pd.DataFrame({"user_id": [1, 1, 1], "value": [1.0, 2.0, 3.0]})
    tx["timestamp"] = stamps.tz_localize("America/New_York")
    s = rfm_summary(tx, observation_end="2024-01-15", time_unit="day")
    assert s.loc[1, "frequency"] == 2.0
    assert s.loc[1, "recency"] == 8.0
    tx["timestamp"] = tx["timestamp"].dt.tz_convert("UTC")
    in_utc = rfm_summary(tx, observation_end="2024-01-15", time_unit="day")
    assert in_utc.loc[1, "frequency"] == 1.0  # both first orders fall on Jan 2 in UTC
    aware_end = rfm_summary(tx, observation_end=pd.Timestamp("2024-01-15", tz="UTC"), time_unit="day")
    pd.testing.assert_frame_equal(aware_end, in_utc)


def test_rfm_summary_holdout_drops_customers_first_seen_after_calibration() -> None:
    tx = pd.DataFrame(
        {
            "user_id": ["a", "a", "a", "z"],
            "timestamp": pd.to_datetime(["2024-01-01", "2024-01-03", "2024-02-10", "2024-02-01"]),
            "value": [1.0, 2.0, 4.0, 9.0],
        }
    )
    s = rfm_summary(tx, observation_end="2024-02-29", calibration_end="2024-01-31", time_unit="day")
    assert s.index.tolist() == ["a"]
    assert s.loc["a", "frequency_holdout"] == 1.0
    assert s.loc["a", "monetary_value_holdout"] == 4.0
    assert s.loc["a", "duration_holdout"] == 29.0
    assert s.loc["a", "T"] == 30.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.drop(columns=["value"]), "missing column(s) 'value'"),
        (lambda t: t.rename(columns={"user_id": "customer"}), "'user_id'"),
        (lambda t: t.assign(value=[-1.0, 2.0]), "1 negative value(s)"),
        (lambda t: t.assign(value=[np.nan, 2.0]), "missing or infinite"),
        (lambda t: t.assign(timestamp=["not a date", "2024-01-02"]), "'timestamp' must hold timestamps"),
        (lambda t: t.assign(user_id=[None, "a"]), "missing customer id"),
    ],
)
def test_rfm_summary_bad_input(change: Callable[[pd.DataFrame], pd.DataFrame], message: str) -> None:
    tx = pd.DataFrame({"user_id": ["a", "a"], "timestamp": ["2024-01-01", "2024-01-02"], "value": [1.0, 2.0]})
    with pytest.raises(BadInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        rfm_summary(change(tx), observation_end="2024-02-01")


def test_rfm_summary_bad_periods() -> None:
    tx = pd.DataFrame({"user_id": ["a"], "timestamp": ["2024-01-10"], "value": [1.0]})
    with pytest.raises(BadInputError, match="no purchases on or before 2024-01-01; the first purchase is on"):
        rfm_summary(tx, observation_end="2024-01-01")
    with pytest.raises(BadInputError, match=r"calibration_end .* must be before observation_end"):
        rfm_summary(tx, observation_end="2024-02-01", calibration_end="2024-03-01")
    with pytest.raises(BadInputError, match="time_unit"):
        rfm_summary(tx, observation_end="2024-02-01", time_unit="month")  # type: ignore[arg-type]


# --- BG/NBD --------------------------------------------------------------------------------------------


def test_bgnbd_reproduces_fader_hardie_lee_2005(bgnbd: BetaGeoModel) -> None:
    for name, published in PUBLISHED_BGNBD.items():
        assert bgnbd.params_[name] == pytest.approx(published, rel=0.01), name
    assert bgnbd.log_likelihood_ == pytest.approx(PUBLISHED_LL, abs=0.5)
    assert bgnbd.n_customers_ == 2357
    assert bgnbd.n_repeat_buyers_ == 946
    table = bgnbd.summary()
    assert table.index.tolist() == ["r", "alpha", "a", "b"]
    assert (table["std_error"] > 0).all()
    assert (table["lower_95"] < table["estimate"]).all()
    assert (table["estimate"] < table["upper_95"]).all()


def test_bgnbd_in_days_is_the_same_model_rescaled(cdnow_sample: pd.DataFrame) -> None:
    days = rfm_summary(
        cdnow_sample, customer_col="id", value_col=None, observation_end=CALIBRATION_END, time_unit="day"
    )
    model = BetaGeoModel().fit(days)
    for name in ("r", "a", "b"):
        assert model.params_[name] == pytest.approx(PUBLISHED_BGNBD[name], rel=0.01)
    assert model.params_["alpha"] == pytest.approx(7 * PUBLISHED_BGNBD["alpha"], rel=0.01)
    assert model.time_unit_ == "day"


def test_bgnbd_holdout_forecast_against_actual(summary: pd.DataFrame, bgnbd: BetaGeoModel) -> None:
    expected = bgnbd.expected_purchases(
        summary["duration_holdout"], summary["frequency"], summary["recency"], summary["T"]
    )
    actual = summary["frequency_holdout"].sum()
    # Actual repeat purchase days in weeks 40-78 (1,959 order rows fall on 1,882 customer-days).
    assert actual == 1882
    # The forecast is fixed by the reproduced parameters: 1,653.4 measured. It is 12% under the actual:
    # the model is stationary and CDNOW's holdout holds a Christmas season; a wrong formula or
    # summary moves it far more (counting per week instead of per day gives another model).
    assert expected.sum() == pytest.approx(1653.4, rel=0.005)
    assert 0.85 < expected.sum() / actual < 0.92
    # Per calibration frequency the ordering is right: more past purchases, more expected and actual.
    by_x = pd.DataFrame(
        {"x": summary["frequency"].clip(upper=7), "pred": expected, "act": summary["frequency_holdout"]}
    )
    means = by_x.groupby("x").mean()
    assert means["pred"].is_monotonic_increasing
    assert means.loc[0.0, "pred"] == pytest.approx(means.loc[0.0, "act"], rel=0.1)
    # The unconditional forecast for the cohort (each customer from their first purchase) agrees.
    first = (summary["T"].max() - summary["T"]).to_numpy()  # weeks after 1997-01-01
    cohort = bgnbd.expected_purchases_new(78 - first) - bgnbd.expected_purchases_new(39 - first)
    assert cohort.sum() == pytest.approx(expected.sum(), rel=0.02)


def test_bgnbd_predictions_behave(bgnbd: BetaGeoModel) -> None:
    # one-time buyers are alive for sure in BG/NBD (drop-out happens only after a purchase)
    assert bgnbd.p_alive(0, 0, 38.86) == pytest.approx(1.0)
    # the same two purchases, the last longer ago: less likely alive and fewer expected purchases
    p_recent, p_old = bgnbd.p_alive([2, 2], [30.43, 5.0], [38.86, 38.86])
    assert 0 < p_old < p_recent < 1
    e_recent, e_old = bgnbd.expected_purchases(39, [2, 2], [30.43, 5.0], [38.86, 38.86])
    assert 0 < e_old < e_recent
    # many purchases stay finite (Euler's transformation of the hypergeometric term)
    assert np.isfinite(bgnbd.expected_purchases(39, 500, 38.5, 39.0))
    new = bgnbd.expected_purchases_new([0.0, 13.0, 39.0, 78.0])
    assert new[0] == 0.0
    assert np.all(np.diff(new) > 0)
    # customer 1 of the sample: the time until one purchase is expected, checked by plugging it back
    wait = bgnbd.expected_time_to_next_purchase([2, 2], [30.43, 5.0], [38.86, 38.86])
    np.testing.assert_allclose(
        bgnbd.expected_purchases(wait, [2, 2], [30.43, 5.0], [38.86, 38.86]), 1.0, rtol=1e-6
    )
    assert wait[0] < wait[1]
    assert np.isinf(bgnbd.expected_time_to_next_purchase(2, 5.0, 38.86, max_time=10.0))


def test_expected_next_purchase_date(summary: pd.DataFrame, bgnbd: BetaGeoModel) -> None:
    dates = bgnbd.expected_next_purchase_date(summary)
    assert dates.index.equals(summary.index)
    known = dates.dropna()
    assert len(known) > 0.5 * len(dates)
    assert (known > pd.Timestamp(CALIBRATION_END)).all()
    assert (known <= pd.Timestamp(CALIBRATION_END) + pd.Timedelta(days=3653)).all()


# --- Gamma-Gamma and CLV -------------------------------------------------------------------------------


def test_gamma_gamma_reproduces_fader_hardie_2013(gg: GammaGammaModel, summary: pd.DataFrame) -> None:
    for name, published in PUBLISHED_GG.items():
        assert gg.params_[name] == pytest.approx(published, rel=0.01), name
    assert gg.n_customers_ == 946
    # spend and frequency are nearly independent here, as the model assumes
    assert abs(gg.frequency_monetary_corr_) < 0.2
    assert gg.population_mean_ == pytest.approx(6.25 * 15.44 / 2.74, rel=0.02)
    value = gg.conditional_expected_average_profit(summary["frequency"], summary["monetary_value"])
    one_timers = value[summary["frequency"].to_numpy() == 0]
    np.testing.assert_allclose(one_timers, gg.population_mean_)
    # customer 1 (x = 2, zbar = 22.35): shrunk from 22.35 towards the population mean of 35.2
    assert gg.population_mean_ > value[0] > 22.35


def test_clv_telescopes_without_discount_and_shrinks_with_it(
    summary: pd.DataFrame, bgnbd: BetaGeoModel, gg: GammaGammaModel
) -> None:
    clv = customer_lifetime_value(bgnbd, gg, summary, horizon=12, freq="month")
    assert clv.index.equals(summary.index)
    year = 365.25 / 7
    purchases = bgnbd.expected_purchases(year, summary["frequency"], summary["recency"], summary["T"])
    spend = gg.conditional_expected_average_profit(summary["frequency"], summary["monetary_value"])
    np.testing.assert_allclose(clv, purchases * spend, rtol=1e-9)
    discounted = customer_lifetime_value(bgnbd, gg, summary, horizon=12, discount_rate=0.1)
    assert (discounted < clv).all()
    assert (discounted > clv / 1.1).all()
    weekly = customer_lifetime_value(bgnbd, gg, summary, horizon=52, freq="week", discount_rate=0.1)
    np.testing.assert_allclose(weekly, discounted, rtol=0.01)  # 52 weeks is about 12 months
    longer = customer_lifetime_value(bgnbd, gg, summary, horizon=24, discount_rate=0.1)
    assert (longer > discounted).all()


def test_clv_bad_options(summary: pd.DataFrame, bgnbd: BetaGeoModel, gg: GammaGammaModel) -> None:
    with pytest.raises(BadInputError, match="horizon must be a whole number of months"):
        customer_lifetime_value(bgnbd, gg, summary, horizon=0)
    with pytest.raises(BadInputError, match="discount_rate"):
        customer_lifetime_value(bgnbd, gg, summary, discount_rate=-2)
    with pytest.raises(BadInputError, match="fitted in weeks but the summary is in days"):
        customer_lifetime_value(bgnbd, gg, summary, time_unit="day")
    with pytest.raises(BadInputError, match="'monetary_value'"):
        customer_lifetime_value(bgnbd, gg, summary.drop(columns=["monetary_value"]))


# --- estimator contract, bad and tiny input ---------------------------------------------------------------


def test_estimator_contract(summary: pd.DataFrame) -> None:
    model = BetaGeoModel(penalizer_coef=0.001)
    assert clone(model).get_params() == {"penalizer_coef": 0.001, "min_customers": 10, "max_iter": 1000}
    with pytest.raises(NotFittedError, match="not fitted"):
        model.p_alive(1, 1, 2)
    with pytest.raises(BadInputError):
        GammaGammaModel().conditional_expected_average_profit(1, 10)
    fitted = model.fit(summary)
    assert fitted is model
    again = pickle.loads(pickle.dumps(fitted))
    assert again.params_ == fitted.params_
    np.testing.assert_array_equal(again.predict(summary, t=39), fitted.predict(summary, t=39))
    with pytest.raises(BadInputError, match="missing column\\(s\\) 'recency'"):
        fitted.predict(summary.drop(columns=["recency"]))
    gg = GammaGammaModel().fit(summary)
    with pytest.raises(BadInputError, match="'monetary_value'"):
        gg.predict(summary.drop(columns=["monetary_value"]))
    assert gg.predict(summary)[0] == pytest.approx(gg.conditional_expected_average_profit(2, 22.345))
    # a penalty pulls the estimates towards 0 without breaking the fit
    assert fitted.params_["alpha"] < PUBLISHED_BGNBD["alpha"]


def _tiny(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    freq = rng.integers(0, 4, n).astype(float)
    recency = np.where(freq > 0, rng.uniform(1, 10, n), 0.0)
    return pd.DataFrame(
        {"frequency": freq, "recency": recency, "T": 10.0, "monetary_value": 20.0 * (freq > 0)}
    )


def test_too_little_history_says_what_is_missing() -> None:
    with pytest.raises(BadInputError, match="BG/NBD needs at least 10 customers, got 5"):
        BetaGeoModel().fit(_tiny(5))
    no_repeat = _tiny(30).assign(frequency=0.0, recency=0.0)
    with pytest.raises(BadInputError, match=r"needs repeat buyers .* none of the 30 customers"):
        BetaGeoModel().fit(no_repeat)
    few_repeat = _tiny(30).assign(frequency=[1.0] * 4 + [0.0] * 26)
    few_repeat["recency"] = np.where(few_repeat["frequency"] > 0, 5.0, 0.0)
    with pytest.raises(BadInputError, match="needs at least 10; got 4 of 30 customers"):
        GammaGammaModel().fit(few_repeat)
    # 20 customers: a penalised fit works and its predictions are finite
    small = BetaGeoModel(penalizer_coef=0.001).fit(_tiny(20))
    assert np.all(np.isfinite(small.expected_purchases(10, 1, 5, 10)))


def test_summary_columns_and_values_are_checked() -> None:
    good = _tiny(20)
    with pytest.raises(BadInputError, match="missing column\\(s\\) 'recency', 'T'"):
        BetaGeoModel().fit(good[["frequency"]])
    with pytest.raises(BadInputError, match="frequency has 1 negative value"):
        BetaGeoModel().fit(good.assign(frequency=[-1.0] + [1.0] * 19))
    with pytest.raises(BadInputError, match="recency is greater than T for 1 customer"):
        BetaGeoModel().fit(good.assign(recency=[11.0] + [1.0] * 19, frequency=1.0))
    with pytest.raises(BadInputError, match="whole numbers"):
        BetaGeoModel().fit(good.assign(frequency=1.5, recency=1.0))
    zero_spend = good.assign(frequency=1.0, recency=1.0, monetary_value=[0.0] + [5.0] * 19)
    with pytest.raises(BadInputError, match="monetary_value must be > 0 for repeat buyers; 1 have 0"):
        GammaGammaModel().fit(zero_spend)


def test_non_convergence_is_an_error_not_numbers() -> None:
    with pytest.raises(ConvergenceError, match=r"did not converge .*ITERATIONS REACHED LIMIT"):
        BetaGeoModel(max_iter=1).fit(_tiny(20))
    # every repeat buyer's last purchase is today: nothing identifies the drop-out rate
    always_now = _tiny(20).assign(frequency=2.0, recency=10.0)
    with pytest.raises(ConvergenceError, match=r"ran off towards 0 or infinity|did not converge"):
        BetaGeoModel(penalizer_coef=0.001).fit(always_now)
    assert issubclass(ConvergenceError, BadInputError)
