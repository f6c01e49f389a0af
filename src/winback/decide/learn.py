"""The uplift policy learnt from the shop's own decision log: ``winback train policy``.

A shop first plans with a randomising policy (``winback plan --policy random``: exact propensities),
sends, waits for the attribution window and records what happened (``winback outcomes``). This module
turns those logged cart decisions into the training set of the uplift policy: each decision's cart as
the plan saw it (value, items, consent: from the logged context), the customer's history strictly before
the cart's last activity (:func:`~winback.decide.evaluate.history_features`, the same point-in-time
features the simulator's evaluation trains on), the action, its propensity and whether the cart was
recovered. Holdout decisions are left out (their `nothing` was not drawn with the logged propensity),
as are decisions without a propensity or an outcome. ``winback plan --policy uplift`` loads the result.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
import pyarrow as pa

from winback.config import Settings
from winback.decide.actions import CHANNELS
from winback.decide.catalogue import Catalogue
from winback.decide.evaluate import FEATURES, UPLIFT_PARAMS, observable_features
from winback.decide.log import DecisionLog
from winback.decide.policy import UpliftPolicy, redemption_shares
from winback.decide.uplift import UpliftModel
from winback.errors import BadInputError
from winback.models.registry import ModelCard, load_model, save_model

#: Fewest usable logged cart decisions to learn from, and fewest per action.
MIN_DECISIONS = 500
MIN_PER_ACTION = 30


def _contexts(decisions: pd.DataFrame) -> pd.DataFrame:
    """The cart columns of each decision's logged context: ``abandoned_at``, ``value``, ``n_items`` and
    ``consent_<channel>``."""
    rows: list[dict[str, Any]] = []
    for text in decisions["context"]:
        data = json.loads(text) if isinstance(text, str) and text else {}
        given = set(data.get("consent") or ())
        at = data.get("abandoned_at")
        rows.append(
            {
                "abandoned_at": pd.Timestamp(at, unit="s", tz="UTC") if at is not None else pd.NaT,
                "value": float(data.get("value") or 0.0),
                "n_items": float(data.get("n_items") or 0.0),
                **{f"consent_{c}": float(c in given) for c in CHANNELS},
            }
        )
    return pd.DataFrame(rows, index=decisions.index)


def cart_features(subjects: pd.DataFrame, events: pa.Table) -> pd.DataFrame:
    """:data:`~winback.decide.evaluate.FEATURES` of carts (``user_id``, ``abandoned_at``, ``value``,
    ``n_items``, ``consent_<channel>``) from the event log before each cart's last activity."""
    carts = subjects.reset_index(drop=True)
    features = observable_features(carts, events)
    features.index = subjects.index
    return features


def training_set(decisions: pd.DataFrame, events: pa.Table) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The usable logged cart decisions and their features (see the module docstring); a clear error
    when the log cannot teach a policy yet."""
    known = decisions["outcome_observed_at"].notna() & decisions["cart_id"].notna()
    usable = known & ~decisions["holdout"].astype(bool) & (decisions["propensity"].fillna(0) > 0)
    chosen = decisions[usable]
    if len(chosen) < MIN_DECISIONS:
        raise BadInputError(
            f"decision log: {len(chosen):,} cart decisions with a propensity and a recorded outcome "
            f"(of {len(decisions):,}); the uplift policy needs at least {MIN_DECISIONS:,}. Plan with "
            "`winback plan --policy random` (exact propensities), let the attribution window pass, then "
            "`winback outcomes`"
        )
    counts = chosen["action"].value_counts()
    if "nothing" not in counts.index or counts.size < 2:
        raise BadInputError(
            "decision log: the logged decisions need 'nothing' and at least one message among their "
            f"actions to compare (found: {', '.join(counts.index.astype(str))})"
        )
    chosen = chosen[chosen["action"].isin(counts.index[counts >= MIN_PER_ACTION])]
    carts = pd.concat([chosen[["user_id"]].astype(str), _contexts(chosen)], axis=1)
    if carts["abandoned_at"].isna().any():
        raise BadInputError("decision log: a cart decision's context has no 'abandoned_at'")
    return chosen, cart_features(carts, events)


def train_policy(
    settings: Settings, events: pa.Table, as_of: pd.Timestamp | None = None, *, seed: int = 0
) -> ModelCard:
    """Fit the uplift policy's purchase model and coupon redemption shares on the decision log (the
    decisions made before ``as_of``, default all) and save them as model ``policy``."""
    with DecisionLog(settings, read_only=True) as log:
        decisions = log.read()
    if as_of is not None:
        stamp = as_of.tz_localize("UTC") if as_of.tzinfo is None else as_of
        decisions = decisions[pd.to_datetime(decisions["decided_at"], utc=True) < stamp]
    chosen, X = training_set(decisions, events)  # noqa: N806
    model = UpliftModel(
        learner="t",
        outcome="binary",
        params=dict(UPLIFT_PARAMS),
        threads=settings.threads or 1,
        random_state=seed,
    )
    recovered = chosen["recovered"].fillna(False).to_numpy(dtype=float)
    model.fit(X, chosen["action"].to_numpy(), recovered, chosen["propensity"].to_numpy(dtype=float))
    discount = pd.to_numeric(chosen["discount"], errors="coerce").fillna(0.0)
    shares = redemption_shares(
        chosen["action"].tolist(), recovered.astype(bool).tolist(), (discount > 0).tolist()
    )
    decided = pd.to_datetime(chosen["decided_at"], utc=True)
    per_action = chosen.assign(recovered=recovered).groupby("action")["recovered"].agg(["size", "mean"])
    card = ModelCard(
        name="policy",
        features=list(FEATURES),
        as_of=decided.max().isoformat(),
        train_window=(decided.min().isoformat(), decided.max().isoformat()),
        params={"learner": "t", **UPLIFT_PARAMS, "seed": seed},
        metrics={
            "decisions": len(chosen),
            "policies_logged": sorted(set(chosen["policy"].astype(str))),
            "per_action": {
                str(a): {"decisions": int(r["size"]), "recovery_rate": round(float(r["mean"]), 4)}
                for a, r in per_action.iterrows()
            },
            "redemption": {a: round(s, 4) for a, s in shares.items()},
        },
        notes=[
            "T-learner on LightGBM of the purchase, weighted by the logged propensities; quality against "
            "the truth: `winback policies evaluate --simulate`"
        ],
    )
    return save_model(settings, {"purchase": model, "redemption": shares}, card)


def load_policy(settings: Settings, catalogue: Catalogue, *, epsilon: float = 0.0) -> UpliftPolicy:
    """The trained uplift policy (``winback train policy``) with today's catalogue of costs and margins."""
    saved, card = load_model(settings, "policy", features=list(FEATURES))
    return UpliftPolicy(
        saved["purchase"],
        catalogue,
        redemption=saved["redemption"],
        epsilon=epsilon,
        name="uplift",
        version=card.version,
    )
