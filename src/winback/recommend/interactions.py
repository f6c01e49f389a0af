"""Interactions: who viewed, carted or bought which product, when, with a weight per kind.

Every recommendation source learns from this one table, built from the sessionised events of
:class:`winback.features.tables.FeatureTables` before an as-of moment, and every evaluation splits it in
time (train on the past, test on the purchases of the future).

>>> import pandas as pd
>>> frame = pd.DataFrame({"user_key": ["u1", "u1", "u2", "u2"], "product_id": ["a", "b", "a", "b"],
...                       "ts": [1.0, 5.0, 2.0, 9.0], "kind": ["view", "purchase", "view", "purchase"]})
>>> split = time_split(with_weights(frame), at=6.0)
>>> len(split.train), split.truth()
(3, {'u2': {'b'}})
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import pandas as pd

from winback.errors import BadInputError
from winback.features.tables import FeatureTables, parse_time

#: Interaction kinds and the event types they come from.
KINDS: dict[str, str] = {"view": "view", "add_to_cart": "cart", "purchase": "purchase"}

#: Default weight of each kind: a purchase says more than a cart, a cart more than a view.
DEFAULT_WEIGHTS: dict[str, float] = {"view": 1.0, "cart": 3.0, "purchase": 5.0}

#: Columns of :func:`interactions` (the first five are what every source needs).
COLUMNS = (
    "user_key", "product_id", "ts", "kind", "weight", "session_key", "order_id", "category", "price", "brand",
)  # fmt: skip

REQUIRED = ("user_key", "product_id", "ts", "kind", "weight")


def interactions(
    tables: FeatureTables,
    as_of: str | datetime | pd.Timestamp | None = None,
    weights: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """Views, carts and purchases of products before ``as_of`` (all of them if None).

    Parameters
    ----------
    tables
        The feature tables of an event source (their ``sessioned`` events are read).
    as_of
        Only events strictly before this moment; checked against the data's span.
    weights
        Weight per kind (``view``, ``cart``, ``purchase``); :data:`DEFAULT_WEIGHTS` if None.

    Returns
    -------
    DataFrame
        One row per event, ordered by ``ts``: ``user_key``, ``product_id``, ``ts`` (epoch seconds),
        ``kind``, ``weight``, ``session_key``, ``order_id``, ``category``, ``price``, ``brand``.
    """
    e = tables.sessioned
    expr = e.filter(e.event_type.isin(list(KINDS)) & e.product_id.notnull())
    if as_of is not None:
        moment = parse_time(as_of)
        tables.check_as_of(moment)
        expr = expr.filter(expr.ts < moment.timestamp())
    expr = expr.select(
        "user_key", "product_id", "ts", "event_type", "session_key", "order_id", "category", "price", "brand"
    )
    frame = tables.source.execute(expr.order_by(["ts", "user_key", "product_id"]))
    frame["kind"] = frame.pop("event_type").map(KINDS)
    return with_weights(frame, weights)[list(COLUMNS)].reset_index(drop=True)


def with_weights(frame: pd.DataFrame, weights: Mapping[str, float] | None = None) -> pd.DataFrame:
    """``frame`` (with a ``kind`` column) plus ``weight`` from ``weights``, and the optional columns
    (``session_key``, ``order_id``, ``category``, ``price``, ``brand``) as nulls where missing."""
    weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
    unknown = set(weights) - set(DEFAULT_WEIGHTS)
    if unknown:
        raise BadInputError(f"weights {sorted(unknown)}: expected kinds among {sorted(DEFAULT_WEIGHTS)}")
    if "kind" not in frame.columns:
        raise BadInputError("interactions: missing column 'kind' (view, cart or purchase)")
    out = frame.copy()
    out["weight"] = out["kind"].map(weights).astype("float64")
    if out["weight"].isna().any():
        bad = sorted(set(out.loc[out["weight"].isna(), "kind"].astype(str)))
        raise BadInputError(
            f"interactions column 'kind': values {bad} have no weight; expected {sorted(weights)}"
        )
    for column in ("session_key", "order_id", "category", "brand"):
        if column not in out.columns:
            out[column] = pd.Series([None] * len(out), index=out.index, dtype="object")
    if "price" not in out.columns:
        out["price"] = float("nan")
    return out


def check_interactions(frame: object, required: tuple[str, ...] = REQUIRED) -> pd.DataFrame:
    """``frame`` if it is a DataFrame with the ``required`` columns, else a :class:`BadInputError`."""
    if not isinstance(frame, pd.DataFrame):
        raise BadInputError(f"interactions: expected a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise BadInputError(f"interactions: missing columns {missing}; expected {list(required)}")
    if frame["product_id"].isna().any() or frame["user_key"].isna().any():
        raise BadInputError("interactions: columns 'user_key' and 'product_id' must not be null")
    return frame


@dataclass
class TimeSplit:
    """Interactions before ``at`` to train on, and the purchases after it to test against."""

    at: float
    train: pd.DataFrame
    test: pd.DataFrame  # user_key, product_id: one row per distinct purchase after ``at``

    def truth(self) -> dict[str, set[str]]:
        """Products each test user bought after ``at``."""
        return {str(u): set(g) for u, g in self.test.groupby("user_key")["product_id"]}


def time_split(
    frame: pd.DataFrame,
    at: float | str | datetime | pd.Timestamp,
    *,
    known_users_only: bool = True,
    test_kinds: tuple[str, ...] = ("purchase",),
) -> TimeSplit:
    """Split interactions at ``at`` (epoch seconds or a moment).

    ``train`` is every interaction before ``at``; ``test`` the distinct (user, product) purchases (or
    interactions of ``test_kinds``) at or after it, of users seen in ``train`` if ``known_users_only``
    (a source can only be asked about them).
    """
    check_interactions(frame)
    cut = float(at) if isinstance(at, int | float) else parse_time(at, "at").timestamp()
    train = frame[frame["ts"] < cut].reset_index(drop=True)
    future = frame[(frame["ts"] >= cut) & frame["kind"].isin(test_kinds)]
    if known_users_only:
        future = future[future["user_key"].isin(set(train["user_key"]))]
    test = future[["user_key", "product_id"]].drop_duplicates().reset_index(drop=True)
    return TimeSplit(cut, train, test)
