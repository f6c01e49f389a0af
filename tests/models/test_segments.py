"""RFM segments and customer clusters on CDNOW (23,570 customers) and on data with known clusters."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.metrics import adjusted_rand_score

from winback.errors import BadInputError
from winback.models.clv import rfm_summary
from winback.models.segments import SEGMENT_MAP, SEGMENTS, CustomerClusters, rfm_scores

FEATURES = ["since_last_purchase", "frequency", "monetary"]


@pytest.fixture(scope="module")
def cdnow_master(data_dir: Path) -> pd.DataFrame:
    tx = pd.read_csv(
        data_dir / "cdnow" / "CDNOW_master.txt", sep=r"\s+", dtype={"customer_id": str, "date": str}
    )
    tx["timestamp"] = pd.to_datetime(tx["date"], format="%Y%m%d")
    return tx


@pytest.fixture(scope="module")
def scores(cdnow_master: pd.DataFrame) -> pd.DataFrame:
    return rfm_scores(cdnow_master, customer_col="customer_id", value_col="dollar_value")


@pytest.fixture(scope="module")
def clusters(scores: pd.DataFrame) -> CustomerClusters:
    return CustomerClusters().fit(scores[FEATURES])


# --- RFM ---------------------------------------------------------------------------------------------


def test_segment_map_covers_every_cell_once() -> None:
    assert set(SEGMENT_MAP) == {(r, fm) for r in range(1, 6) for fm in range(1, 6)}
    assert set(SEGMENT_MAP.values()) == set(SEGMENTS)
    assert len(SEGMENTS) == 11
    assert SEGMENT_MAP[(5, 5)] == "champions"
    assert SEGMENT_MAP[(1, 1)] == "lost"
    assert SEGMENT_MAP[(1, 5)] == "cannot lose them"


def test_rfm_scores_on_cdnow(scores: pd.DataFrame, cdnow_master: pd.DataFrame) -> None:
    assert len(scores) == cdnow_master["customer_id"].nunique() == 23570
    assert scores[["R", "F", "M"]].isin([1, 2, 3, 4, 5]).all().all()
    # recency measured to the last day of the data (1998-06-30); customer 00001 bought once on 1997-01-01
    first = scores.loc["00001"]
    assert first["since_last_purchase"] == 545
    assert first["frequency"] == 1
    assert first["segment"] == "lost"
    # ties share a score: every one-time buyer (half of CDNOW) gets F = 1, nobody else does
    one_timers = scores["frequency"] == 1
    assert one_timers.mean() == pytest.approx(0.51, abs=0.01)
    assert (scores.loc[one_timers, "F"] == 1).all()
    assert (scores.loc[~one_timers, "F"] >= 3).all()
    # R has few ties, so its quintiles are nearly equal
    assert scores["R"].value_counts(normalize=True).between(0.19, 0.21).all()
    means = scores.groupby("segment", observed=True)[FEATURES].mean()
    assert means.loc["champions", "since_last_purchase"] < means.loc["lost", "since_last_purchase"]
    assert means.loc["champions", "frequency"] > 3 * means.loc["lost", "frequency"]
    assert means.loc["cannot lose them", "monetary"] > means.loc["hibernating", "monetary"]
    assert scores["segment"].isin(SEGMENTS).all()
    assert (scores["RFM"].str.len() == 3).all()


def test_rfm_scores_first_ties_give_equal_quintiles(cdnow_master: pd.DataFrame) -> None:
    first = rfm_scores(cdnow_master, customer_col="customer_id", value_col="dollar_value", ties="first")
    for column in ("R", "F", "M"):
        assert first[column].value_counts().tolist() == [4714] * 5


def test_rfm_scores_from_a_summary_match_transactions(cdnow_master: pd.DataFrame) -> None:
    tx = cdnow_master.head(3000)  # CDNOW is sorted by customer: about 1,000 whole customers
    summary = rfm_summary(
        tx,
        customer_col="customer_id",
        value_col="dollar_value",
        observation_end="1998-06-30",
        time_unit="day",
    )
    from_summary = rfm_scores(summary)
    from_tx = rfm_scores(
        tx, customer_col="customer_id", value_col="dollar_value", observation_end="1998-06-30"
    )
    pd.testing.assert_series_equal(from_summary["R"], from_tx["R"])
    pd.testing.assert_series_equal(from_summary["F"], from_tx["F"])
    np.testing.assert_allclose(from_summary["frequency"], from_tx["frequency"])


def test_rfm_scores_bad_input() -> None:
    tx = pd.DataFrame({"user_id": [1, 2], "timestamp": ["2024-01-01", "2024-01-02"], "value": [1.0, 2.0]})
    with pytest.raises(BadInputError, match="at least 5 customers, got 2"):
        rfm_scores(tx)
    with pytest.raises(BadInputError, match="missing column\\(s\\) 'value'"):
        rfm_scores(tx.drop(columns=["value"]))
    with pytest.raises(BadInputError, match="1 negative value"):
        rfm_scores(tx.assign(value=[-1.0, 2.0]))
    with pytest.raises(BadInputError, match="ties must be"):
        rfm_scores(tx, ties="average")  # type: ignore[arg-type]
    summary = pd.DataFrame({"frequency": [1.0], "recency": [1.0], "T": [2.0]})
    with pytest.raises(BadInputError, match="'monetary_value'"):
        rfm_scores(summary)


# --- clusters ------------------------------------------------------------------------------------------


def _blobs(seed: int, n_per: int = 300) -> tuple[pd.DataFrame, np.ndarray]:
    """Four customer types with log-normal spend and Poisson-ish frequency: known truth."""
    rng = np.random.default_rng(seed)
    types = [  # (days since last purchase, purchases, spend per purchase)
        (10, 12, 25),
        (300, 1, 20),
        (40, 3, 200),
        (200, 6, 60),
    ]
    frames, truth = [], []
    for label, (days, freq, spend) in enumerate(types):
        frames.append(
            pd.DataFrame(
                {
                    "since_last_purchase": days * rng.lognormal(0, 0.15, n_per),
                    "frequency": freq * rng.lognormal(0, 0.15, n_per),
                    "monetary": spend * rng.lognormal(0, 0.15, n_per),
                }
            )
        )
        truth += [label] * n_per
    return pd.concat(frames, ignore_index=True), np.array(truth)


@pytest.mark.parametrize("seed", [0, 1])
def test_clusters_recover_known_groups(seed: int) -> None:
    X, truth = _blobs(seed)  # noqa: N806
    model = CustomerClusters(random_state=seed).fit(X)
    assert model.n_clusters_ == 4
    assert max(model.silhouette_scores_, key=model.silhouette_scores_.get) == 4
    assert set(model.silhouette_scores_) == set(range(2, 9))
    assert adjusted_rand_score(truth, model.labels_) > 0.95
    # spend is skewed across the mixture (20 to 200), so it is logged before scaling
    assert "monetary" in model.log_features_
    profile = model.profile_
    assert profile["size"].sum() == len(X)
    assert profile["share"].sum() == pytest.approx(1.0)
    assert profile["size"].is_monotonic_decreasing
    # the profile is in the features' own units: one cluster spends about 200 per purchase
    assert profile["monetary"].max() == pytest.approx(200, rel=0.1)
    big_spenders = profile.loc[profile["monetary"].idxmax(), "label"]
    assert "high spend" in big_spenders
    regulars = profile.loc[profile["frequency"].idxmax(), "label"]
    assert "frequent" in regulars.split(", ")
    assert "recent" in regulars.split(", ")
    # new customers of a known type land in its cluster
    fresh, fresh_truth = _blobs(seed + 100, n_per=20)
    assert adjusted_rand_score(fresh_truth, model.predict(fresh)) > 0.95


def test_clusters_on_cdnow(clusters: CustomerClusters, scores: pd.DataFrame) -> None:
    assert 2 <= clusters.n_clusters_ <= 8
    assert clusters.silhouette_scores_[clusters.n_clusters_] == max(clusters.silhouette_scores_.values())
    assert clusters.silhouette_scores_[clusters.n_clusters_] > 0.3
    assert "frequency" in clusters.log_features_
    profile = clusters.profile_
    assert profile["size"].sum() == len(scores)
    assert list(profile.columns) == ["size", "share", *FEATURES, "label"]
    assert profile["label"].str.len().gt(0).all()
    # the clusters differ the way a shop cares about: someone buys more often and more recently
    assert profile["frequency"].max() > 3 * profile["frequency"].min()
    assert np.array_equal(clusters.predict(scores[FEATURES]), clusters.labels_)


def test_clusters_contract_and_fixed_k() -> None:
    X, _ = _blobs(3, n_per=50)  # noqa: N806
    model = CustomerClusters(n_clusters=3, log_transform=None)
    assert clone(model).get_params()["n_clusters"] == 3
    with pytest.raises(NotFittedError):
        model.predict(X)
    fitted = model.fit(X)
    assert fitted is model
    assert model.n_clusters_ == 3
    assert model.log_features_ == []
    assert np.array_equal(pickle.loads(pickle.dumps(model)).predict(X), model.labels_)
    # same seed, same clusters
    assert np.array_equal(CustomerClusters(n_clusters=3, log_transform=None).fit(X).labels_, model.labels_)


def test_clusters_bad_input() -> None:
    X, _ = _blobs(0, n_per=20)  # noqa: N806
    with pytest.raises(BadInputError, match="'segment' must be numeric"):
        CustomerClusters().fit(X.assign(segment="x"))
    with pytest.raises(BadInputError, match="'monetary' have missing or infinite"):
        CustomerClusters().fit(X.assign(monetary=np.nan))
    with pytest.raises(BadInputError, match="needs more than 2 distinct customers; got 2"):
        CustomerClusters().fit(pd.DataFrame({"frequency": [1.0, 1.0, 5.0, 5.0]}))
    with pytest.raises(BadInputError, match="k_min"):
        CustomerClusters(k_min=5, k_max=3).fit(X)
    with pytest.raises(BadInputError, match="log_transform names unknown feature"):
        CustomerClusters(log_transform=["spend"]).fit(X)
    fitted = CustomerClusters(n_clusters=2).fit(X)
    with pytest.raises(BadInputError, match="missing column\\(s\\) 'monetary'"):
        fitted.predict(X.drop(columns=["monetary"]))
    with pytest.raises(BadInputError, match="cannot be negative"):
        fitted.predict(X.assign(monetary=-1.0))
