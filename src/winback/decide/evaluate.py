"""Policies against the simulator's truth: the true incremental profit per abandoned cart of each policy.

Real logs never show what another action would have done; the simulator knows (DESIGN.md, "The
simulator"). For each seed, :func:`evaluate_seed` runs one shop whose abandoned carts all get an action
drawn by a :class:`~winback.decide.policy.RandomPolicy` over :data:`LOGGED_ACTIONS` (among the channels
the customer consented to), with its exact propensity: the randomised decision log a shop would collect.
Then, as a shop would:

- **train** (carts abandoned before ``train_days - 7``, so every outcome is in the log by then): the
  uplift policy is fitted on what a shop has, the event log and this decision log: the observable cart
  columns (value, items, consent) and point-in-time customer history built from the events
  (:func:`history_features`), and each training cart's outcome as the log records it (recovered or
  not, the discount redeemed); never the simulator's latent traits or counterfactuals;
- **test** (carts abandoned from ``train_days`` to ``days - 7``): every policy chooses an action for each
  later cart, and is scored by the **exact expected** incremental margin of its choices
  (:func:`winback.sim.response.expected_outcomes`: margin with the action - discount - channel cost -
  margin with nothing). The ``oracle`` alone sees the truth: per cart, the catalogue action with the best
  true expected incremental margin (``oracle-logged``: the best of the logged actions, the ceiling of a
  policy that learns from this log).

Off-policy: the test carts' own random decisions (their realised margin as the log records it: margin on
the recovered order, less the discount redeemed and the message cost) estimate each policy's value with
:func:`winback.decide.ope.evaluate` (doubly robust, the uplift model's predicted margins as the reward
model): ``ope_margin`` is the estimated margin per cart and ``ope_estimate`` the estimated incremental
profit per cart (the policy's estimate less that of doing nothing, the log's randomised holdout). A
policy that takes actions outside the log (the oracle) has none.

Multi-step flows are scored whole by :func:`winback.sim.flows.expected_flow` (``static-1h-24h-72h``: its
1 h and 24 h reminders and its 72 h coupon, each step cancelled once the cart has recovered; a one-step
flow's value is exactly the single-action model's). ``fitted-q`` (:mod:`winback.decide.fitted_q`) learns
from the training carts' randomised multi-step log (flows drawn with known propensities and realised
with :func:`winback.sim.flows.realise_flow` on those carts: the shop's own record of what it sent and
what happened) and plans a whole flow per test cart. ``bandit``
(:class:`~winback.decide.bandit.ThompsonBandit`, cold start) learns online over the test carts in time
order from their realised outcomes, 7 days after each decision (:func:`~winback.decide.bandit.run_online`).
``oracle-flow`` sees the truth: per cart the best of every catalogue action and every e-mail flow of up to
three steps at 6, 24 and 72 h among reminders and 5/10/15% coupons with recommendations.
The log has one action per cart, so multi-step flows, fitted-q and the bandit (whose arms are not all
logged) have no off-policy estimate.

Honest limits: the truth is the per-cart expectation: long-run costs of messaging (unsubscribes, fatigue,
coupon harvesting learnt) are outside it, though they shape the shop the carts come from. Policies are
guarded by consent only (the simulator has no quiet hours or frequency caps).

Run ``python -m winback.decide.evaluate --help`` for the table from the command line.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from scipy import stats

from winback.decide.actions import CHANNELS, NOTHING, Action
from winback.decide.bandit import ThompsonBandit, run_online
from winback.decide.catalogue import Catalogue, load_catalogue
from winback.decide.fitted_q import FittedQPolicy, log_trajectories
from winback.decide.ope import evaluate as off_policy
from winback.decide.ope import one_hot
from winback.decide.policy import (
    Policy,
    RandomPolicy,
    UpliftPolicy,
    consent_mask,
    redemption_shares,
)
from winback.decide.uplift import Learner, UpliftModel
from winback.errors import BadInputError
from winback.sim import ShopConfig, SimulationResult, expected_outcomes, simulate
from winback.sim.flows import expected_flow_outcomes

__all__ = [
    "BASELINES",
    "FEATURES",
    "LOGGED_ACTIONS",
    "POLICIES",
    "UPLIFT_PARAMS",
    "LoggedShop",
    "consent_mask",
    "evaluate_seed",
    "fit_fitted_q",
    "fit_uplift",
    "goals",
    "history_features",
    "logged_shop",
    "main",
    "observable_features",
    "simulate_policies",
]

#: The randomising logging policy's actions: doing nothing (the holdout), every baseline's action (so the
#: log can evaluate them off-policy), and reminders and coupons with recommendations at the delays the
#: evidence favours, on every channel.
LOGGED_ACTIONS: tuple[str, ...] = (
    "nothing",
    "reminder/email/1h",
    "reminder/email/10h",
    "coupon10/email/24h",
    "reminder+recs/email/24h",
    "coupon5+recs/email/24h",
    "coupon10+recs/email/24h",
    "coupon15+recs/email/24h",
    "coupon10+recs/email/72h",
    "reminder+recs/sms/24h",
    "coupon10+recs/sms/24h",
    "reminder+recs/push/24h",
    "coupon10+recs/push/24h",
)
#: The baselines shops run today, by policy name: the catalogue flow each one is (scored whole).
BASELINES: dict[str, str] = {
    "static-10h": "static-10h",
    "static-1h-24h-72h": "static-1h-24h-72h",
    "coupon-everyone": "coupon-everyone",
}
#: LightGBM settings of the uplift policy's purchase model: few, shallow, heavily populated trees, so each
#: arm's head stays near its arm's mean and effects (small differences of noisy heads) are not overfitted.
#: Chosen on tuning shops (seed 100), never on the seeds reported: with UpliftModel's defaults the uplift
#: policy earned 1.95 (20,000 customers x 180 days) and 1.92 (60,000) per cart, with these 2.55 and 2.61.
UPLIFT_PARAMS: dict[str, Any] = {"n_estimators": 40, "num_leaves": 3, "min_child_samples": 1000}
#: Every policy :func:`simulate_policies` knows by name.
POLICIES: tuple[str, ...] = (
    *BASELINES, "uplift", "bandit", "fitted-q", "random", "oracle-logged", "oracle", "oracle-flow",
)  # fmt: skip
#: The e-mail steps the flow oracle combines (at most three, in order of delay).
ORACLE_FLOW_STEPS: tuple[str, ...] = tuple(
    f"{offer}/email/{h}h"
    for h in (6, 24, 72)
    for offer in ("reminder+recs", "coupon5+recs", "coupon10+recs", "coupon15+recs")
)
#: Days after abandonment by which a cart's outcome is in the log (the recovery window).
RECOVERY_DAYS = 7
_DAY_US = 86_400 * 1_000_000
_OBSERVED = ("value", "n_items", *(f"consent_{c}" for c in CHANNELS))
_HISTORY = (
    "visits",
    "carts_started",
    "orders",
    "revenue",
    "coupon_orders",
    "clicks",
    *(f"{kind}_{c}" for kind in ("sent", "opened") for c in CHANNELS),
    "abandoned",
    "messaged",
    "recovered",
    "recovered_unmessaged",
)
#: Per-seed columns simulate_policies averages over seeds.
_AVERAGED = (
    "ope_estimate", "ope_error", "margin_per_cart", "ope_margin", "ope_margin_error", "coupon_share",
    "messages_per_cart", "coupon_low", "coupon_high",
)  # fmt: skip
#: The uplift policy's features: observable cart columns and point-in-time customer history.
FEATURES: tuple[str, ...] = (
    *_OBSERVED,
    *_HISTORY,
    *(f"open_rate_{c}" for c in CHANNELS),
    "natural_rate",
    "days_since_first_visit",
    "days_since_last_order",
)


# --------------------------------------------------------------------------- features


def _micros(values: pd.Series | pa.ChunkedArray) -> np.ndarray:
    """Timestamps as integer microseconds since the epoch."""
    if isinstance(values, pd.Series):
        return values.to_numpy(dtype="datetime64[us]").astype(np.int64)
    return np.asarray(pc.cast(values, pa.timestamp("us")).cast(pa.int64()).to_numpy())


def _array(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(values.to_numpy(zero_copy_only=False))


def history_features(
    events: pa.Table, carts: pd.DataFrame, decisions: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Each cart's customer history strictly before its abandonment, from the event log.

    Parameters
    ----------
    events
        The shop's event log (:data:`winback.events.schema.EVENT_SCHEMA`).
    carts
        The carts to describe: ``user_id`` and ``abandoned_at``.
    decisions
        The shop's own past abandoned carts and decisions: ``user_id``, ``abandoned_at``, ``action`` and
        ``recovered_at`` (the recovering purchase's time, NaT if none); None to leave those counts at 0.

    Returns
    -------
    pandas.DataFrame
        Indexed like ``carts``: the :data:`FEATURES` except the cart's own columns: visits, carts started,
        orders and revenue, coupon orders, clicks, messages sent and opened per channel (and smoothed open
        rates), past abandoned carts, how many were messaged and recovered, the recovery rate of those
        not messaged, and days since the first visit and since the last order (NaN if none).
    """
    ledger, users = _ledger(events, carts, decisions)
    counts = list(_HISTORY)
    for column in counts:
        if column not in ledger.columns:
            ledger[column] = 0.0
    ledger[counts] = ledger[counts].fillna(0.0)
    grouped = ledger.groupby("user", sort=False)
    running = grouped[counts].cumsum()
    running["last_order"] = grouped["last_order"].ffill()
    first_visit = ledger["ts"].where(ledger["visits"] > 0).groupby(ledger["user"]).cummin()
    running["first_visit"] = first_visit.groupby(ledger["user"]).ffill()  # cummin leaves NaN rows NaN
    running["user"], running["ts"] = ledger["user"], ledger["ts"]

    at = _micros(carts["abandoned_at"])
    query = pd.DataFrame(
        {"user": users.get_indexer(pd.Index(carts["user_id"].to_numpy(dtype=object))), "ts": at}
    )
    query["row"] = np.arange(len(carts))
    query = query.sort_values("ts", kind="stable")
    joined = pd.merge_asof(
        query, running, on="ts", by="user", allow_exact_matches=False, direction="backward"
    )
    joined = joined.sort_values("row").reset_index(drop=True)
    out = joined[counts].fillna(0.0)
    for c in CHANNELS:
        out[f"open_rate_{c}"] = (out[f"opened_{c}"] + 1.0) / (out[f"sent_{c}"] + 2.0)
    unmessaged = out["abandoned"] - out["messaged"]
    out["natural_rate"] = (out["recovered_unmessaged"] + 0.15) / (unmessaged + 1.0)
    out["days_since_first_visit"] = np.nan_to_num((at - joined["first_visit"].to_numpy()) / _DAY_US)
    out["days_since_last_order"] = (at - joined["last_order"].to_numpy()) / _DAY_US
    out.index = carts.index
    return out


def _ledger(
    events: pa.Table, carts: pd.DataFrame, decisions: pd.DataFrame | None
) -> tuple[pd.DataFrame, pd.Index]:
    """One row per countable happening (a visit, a cart started, an order, a message sent / opened /
    clicked, an abandoned cart, a recovery): ``user`` (a code), ``ts`` (microseconds) and the counts it
    adds, sorted by time; and the user id of each code."""
    types, ts = events["event_type"], _micros(events["timestamp"])
    user_ids = _array(events["user_id"])
    users = pd.Index(pd.unique(np.concatenate([user_ids, carts["user_id"].to_numpy(dtype=object)])))
    code = users.get_indexer(pd.Index(user_ids))
    frames: list[pd.DataFrame] = []

    def add(user: np.ndarray, at: np.ndarray, **columns: np.ndarray | float) -> None:
        frames.append(pd.DataFrame({"user": user, "ts": at, **columns}))

    def first(key: np.ndarray, keep: np.ndarray, **values: np.ndarray) -> pd.DataFrame:
        """Per distinct key among the kept events: its user, first time, and the sum/max of ``values``."""
        frame = pd.DataFrame({"key": key[keep], "user": code[keep], "ts": ts[keep]})
        for name, column in values.items():
            frame[name] = column[keep]
        how = {"user": ("user", "first"), "ts": ("ts", "min"), **{n: (n, "max") for n in values}}
        if "money" in values:
            how["money"] = ("money", "sum")
        return frame.groupby("key", sort=False).agg(**how)

    def of_type(name: str) -> np.ndarray:
        return _array(pc.equal(types, name))

    session = _array(events["session_id"])
    visits = first(session, _array(pc.is_valid(events["session_id"])))
    add(visits["user"].to_numpy(), visits["ts"].to_numpy(), visits=1.0)
    started = first(session, of_type("add_to_cart"))
    add(started["user"].to_numpy(), started["ts"].to_numpy(), carts_started=1.0)
    money = np.nan_to_num(_array(events["price"]).astype(float) * _array(events["quantity"]).astype(float))
    coupon = _array(pc.is_valid(events["properties"])).astype(float)
    orders = first(_array(events["order_id"]), of_type("purchase"), money=money, coupon=coupon)
    placed = orders["ts"].to_numpy()
    add(orders["user"].to_numpy(), placed, orders=1.0, revenue=orders["money"].to_numpy(),
        coupon_orders=orders["coupon"].to_numpy(), last_order=placed.astype(float))  # fmt: skip
    found = pc.extract_regex(events["properties"], r'"channel":"(?P<channel>\w+)"')
    channel = _array(pc.struct_field(found, "channel"))
    for kind, event_type in (("sent", "message_sent"), ("opened", "message_opened")):
        hit = of_type(event_type)
        for c in CHANNELS:
            on = hit & (channel == c)
            add(code[on], ts[on], **{f"{kind}_{c}": 1.0})
    clicked = of_type("message_clicked")
    add(code[clicked], ts[clicked], clicks=1.0)
    if decisions is not None and len(decisions):
        who = users.get_indexer(pd.Index(decisions["user_id"].to_numpy(dtype=object)))
        messaged = (decisions["action"].astype(str) != NOTHING.name).to_numpy()
        add(who, _micros(decisions["abandoned_at"]), abandoned=1.0, messaged=messaged.astype(float))
        back = decisions["recovered_at"].notna().to_numpy()
        add(who[back], _micros(decisions["recovered_at"][back]), recovered=1.0,
            recovered_unmessaged=(~messaged[back]).astype(float))  # fmt: skip
    ledger = pd.concat(frames, ignore_index=True).sort_values("ts", kind="stable", ignore_index=True)
    if "last_order" not in ledger.columns:
        ledger["last_order"] = np.nan
    return ledger, users


def observable_features(
    carts: pd.DataFrame, events: pa.Table, decisions: pd.DataFrame | None = None
) -> pd.DataFrame:
    """:data:`FEATURES` for ``carts``: their observable columns and :func:`history_features`."""
    own = carts[list(_OBSERVED)].astype(float)
    return pd.concat([own, history_features(events, carts, decisions)], axis=1)[list(FEATURES)]


# --------------------------------------------------------------------------- one shop


class _LoggingPolicy:
    """The simulator's policy hook: a consent-guarded RandomPolicy whose decisions are recorded."""

    def __init__(self, actions: Sequence[Action], seed: int) -> None:
        self.actions = list(actions)
        self.random = RandomPolicy(self.actions, seed=seed, name="random")
        self.rows: list[pd.DataFrame] = []

    def __call__(self, carts: pd.DataFrame) -> list[Action]:
        decisions = self.random.decide_batch(carts, self.actions, consent_mask(carts, self.actions))
        chosen = [d.action for d in decisions]
        names, propensities = [a.name for a in chosen], [d.propensity for d in decisions]
        self.rows.append(
            pd.DataFrame(
                {"cart_id": carts["cart_id"].to_numpy(), "logged": names, "propensity": propensities}
            )
        )
        return chosen

    def log(self) -> pd.DataFrame:
        return pd.concat(self.rows, ignore_index=True)


@dataclass
class LoggedShop:
    """One simulated shop run under the randomising logging policy, split in time.

    Attributes
    ----------
    shop
        The simulation (its ``carts`` hold the latent truth: only scoring reads them).
    carts
        Every abandoned cart with the logged ``action``, its ``propensity`` and the realised ``reward``
        (margin as the log shows it).
    features
        :data:`FEATURES` of every cart, point in time.
    train, test
        Which carts are for training (abandoned before ``train_days - 7``) and testing (from
        ``train_days`` to ``days - 7``).
    logging
        The logging policy (its ``probabilities`` are the propensities of every action).
    """

    shop: SimulationResult
    carts: pd.DataFrame
    features: pd.DataFrame
    train: np.ndarray
    test: np.ndarray
    logging: RandomPolicy


def logged_shop(
    seed: int,
    customers: int,
    days: int,
    *,
    train_days: int | None = None,
    config: ShopConfig | None = None,
    catalogue: Catalogue | None = None,
    logged_actions: Sequence[str] = LOGGED_ACTIONS,
) -> LoggedShop:
    """Simulate a shop whose every abandoned cart gets a random logged action, and split it in time."""
    catalogue = catalogue or load_catalogue()
    config = replace(config or ShopConfig(), customers=customers, days=days)
    train_days = round(days * 2 / 3) if train_days is None else train_days
    if not RECOVERY_DAYS < train_days < days - RECOVERY_DAYS:
        raise BadInputError(
            f"train_days {train_days}: expected more than {RECOVERY_DAYS} and fewer than days - "
            f"{RECOVERY_DAYS} ({days - RECOVERY_DAYS}): training needs carts whose outcomes are known, "
            "testing needs later ones"
        )
    logged = [Action.parse(a) for a in logged_actions]
    if NOTHING not in logged:
        raise BadInputError(
            "logged_actions: must include 'nothing' (the holdout effects are measured against)"
        )
    logger = _LoggingPolicy(logged, seed)
    shop = simulate(seed=seed, config=config, policy=logger)
    carts = shop.carts.merge(logger.log(), on="cart_id", how="left", validate="one_to_one")
    if (carts["logged"] != carts["action"]).any():
        raise AssertionError("the simulator applied other actions than the logging policy chose")
    carts["reward"] = _realised_margin(carts, catalogue)
    decisions = carts[["user_id", "abandoned_at", "action", "recovered_at"]]
    features = observable_features(carts, shop.events, decisions)
    day = ((carts["abandoned_at"] - pd.Timestamp(config.start, tz="UTC")) / pd.Timedelta(days=1)).to_numpy()
    train = day < train_days - RECOVERY_DAYS
    test = (day >= train_days) & (day < days - RECOVERY_DAYS)
    if train.sum() < 100 or test.sum() < 50:
        raise BadInputError(
            f"customers {customers}, days {days}: {int(train.sum())} training and {int(test.sum())} test "
            "carts; simulate a larger shop or more days"
        )
    return LoggedShop(shop, carts, features, train, test, logger.random)


def _realised_margin(carts: pd.DataFrame, catalogue: Catalogue) -> np.ndarray:
    """What the log shows each cart earned: margin on the recovered order, less discount and message cost."""
    cost = np.array([catalogue.channel_cost(Action.parse(a).channel) for a in carts["action"]])
    recovered = carts["recovered"].to_numpy(dtype=float)
    sent = carts["sent"].to_numpy(dtype=float)
    margin = catalogue.default_margin * carts["value"].to_numpy() * recovered
    return np.asarray(margin - carts["discount"].to_numpy() - cost * sent)


def fit_uplift(
    shop: LoggedShop,
    catalogue: Catalogue | None = None,
    *,
    learner: Learner = "t",
    features: Sequence[str] = FEATURES,
    params: Mapping[str, Any] | None = UPLIFT_PARAMS,
    threads: int = 1,
    seed: int = 0,
) -> UpliftPolicy:
    """The uplift policy trained on the shop's training carts: a purchase model on ``features`` (what a
    shop has) and the coupons' redemption shares, from the randomised log and its propensities."""
    unknown = sorted(set(features) - set(FEATURES))
    if unknown:
        raise BadInputError(f"features: unknown {', '.join(unknown)}; expected some of {', '.join(FEATURES)}")
    carts, X = shop.carts[shop.train], shop.features.loc[shop.train, list(features)]  # noqa: N806
    model = UpliftModel(
        learner=learner, outcome="binary", params=dict(params or {}), threads=threads, random_state=seed
    )
    purchase = model.fit(
        X,
        carts["action"].to_numpy(),
        carts["recovered"].to_numpy(dtype=float),
        carts["propensity"].to_numpy(),
    )
    shares = redemption_shares(
        carts["action"].tolist(), carts["recovered"].tolist(), (carts["discount"] > 0).tolist()
    )
    return UpliftPolicy(
        purchase, catalogue or load_catalogue(), redemption=shares, name="uplift", version=f"sim-{seed}"
    )


def _oracle(carts: pd.DataFrame, actions: Sequence[Action], config: ShopConfig) -> list[str]:
    """Per cart, the allowed action with the best true expected incremental margin (nothing if none > 0)."""
    mask = consent_mask(carts, actions)
    best = np.zeros(len(carts))
    choice = np.full(len(carts), NOTHING.name, dtype=object)
    for j, action in enumerate(actions):
        if action.is_message:
            value = expected_outcomes(carts, action, config)["incremental_margin"].to_numpy()
            better = mask[:, j] & (value > best)
            best[better], choice[better] = value[better], action.name
    return list(choice)


def _oracle_flow(carts: pd.DataFrame, actions: Sequence[Action], config: ShopConfig) -> list[tuple[str, ...]]:
    """Per cart, the best by true expected incremental margin of every allowed single action and every
    e-mail flow of up to three :data:`ORACLE_FLOW_STEPS` (nothing if none > 0)."""
    mask = consent_mask(carts, actions)
    best = np.zeros(len(carts))
    choice: list[tuple[str, ...]] = [()] * len(carts)

    def consider(flow: tuple[str, ...], value: np.ndarray, ok: np.ndarray) -> None:
        better = np.flatnonzero(ok & (value > best))
        best[better] = value[better]
        for i in better.tolist():
            choice[i] = flow

    for j, action in enumerate(actions):
        if action.is_message:
            value = expected_outcomes(carts, action, config)["incremental_margin"].to_numpy()
            consider((action.name,), value, mask[:, j])
    email = carts["consent_email"].to_numpy(dtype=bool)
    steps = [Action.parse(a) for a in ORACLE_FLOW_STEPS]
    for size in (2, 3):
        for combo in itertools.combinations(steps, size):
            if len({a.delay_hours for a in combo}) < size:
                continue
            flow = tuple(a.name for a in combo)
            value = expected_flow_outcomes(carts, list(flow), config)["incremental_margin"].to_numpy()
            consider(flow, value, email)
    return choice


def fit_fitted_q(
    shop: LoggedShop,
    *,
    features: Sequence[str] = FEATURES,
    threads: int = 1,
    seed: int = 0,
) -> FittedQPolicy:
    """The fitted-q policy trained on the shop's training carts: a randomised multi-step log of them
    (:func:`~winback.decide.fitted_q.log_trajectories`, realised on each cart's own random numbers) and
    their observable ``features``."""
    carts = shop.carts[shop.train].reset_index(drop=True)
    states = shop.features.loc[shop.train, list(features)].reset_index(drop=True)
    trajectories = log_trajectories(carts, shop.shop.config, seed=seed)
    return FittedQPolicy(list(features), seed=seed, threads=threads).fit(trajectories, states)


def _coupon_share(carts: pd.DataFrame, flows: Sequence[tuple[str, ...]]) -> float:
    """Share of carts whose flow has a coupon step on a channel the customer consented to."""
    consent = {c: carts[f"consent_{c}"].to_numpy(dtype=bool) for c in CHANNELS}
    offered = [
        any(a.coupon > 0 and a.channel is not None and consent[a.channel][i] for a in map(Action.parse, f))
        for i, f in enumerate(flows)
    ]
    return float(np.mean(offered)) if offered else 0.0


def _without_coupon(name: str) -> str:
    action = Action.parse(name)
    if not action.coupon:
        return name
    return Action("reminder", 0.0, action.channel, action.delay_hours, action.with_recommendations).name


def evaluate_seed(
    seed: int,
    customers: int = 20_000,
    days: int = 180,
    *,
    policies: Sequence[str | Policy] = POLICIES,
    train_days: int | None = None,
    config: ShopConfig | None = None,
    catalogue: Catalogue | None = None,
    logged_actions: Sequence[str] = LOGGED_ACTIONS,
    learner: Learner = "t",
    features: Sequence[str] = FEATURES,
    params: Mapping[str, Any] | None = UPLIFT_PARAMS,
    threads: int = 1,
    n_boot: int = 200,
    progress: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """One shop, one seed: each policy's true and off-policy value on the test carts.

    Parameters are those of :func:`simulate_policies`, for one ``seed``.

    Returns
    -------
    pandas.DataFrame
        One row per policy: ``seed``, ``name``, ``profit_per_cart`` (true expected incremental margin per
        test cart), ``margin_per_cart`` (true expected margin), ``sd`` (of the per-cart incremental
        margin), ``ope_estimate`` and ``ope_margin`` (NaN where not applicable), ``coupon_share`` (of
        carts whose flow has a coupon), ``messages_per_cart`` (expected messages sent),
        ``coupon_low`` / ``coupon_high`` (what its coupons add per cart over the same message without
        the coupon, on the less / more price-sensitive half of the carts: the simulator says the first
        is a loss), ``n_train``, ``n_test``.
    """
    for policy in policies:
        if isinstance(policy, str) and policy not in POLICIES:
            raise BadInputError(f"policy {policy!r}: expected one of {', '.join(POLICIES)} or a Policy")
    say = progress or (lambda _: None)
    catalogue = catalogue or load_catalogue()
    started = time.perf_counter()
    run = logged_shop(seed, customers, days, train_days=train_days, config=config, catalogue=catalogue,
                      logged_actions=logged_actions)  # fmt: skip
    config = run.shop.config
    say(f"seed {seed}: {len(run.carts):,} abandoned carts simulated ({time.perf_counter() - started:.0f} s)")
    uplift = fit_uplift(
        run, catalogue, learner=learner, features=features, params=params, threads=threads, seed=seed
    )
    fitted = time.perf_counter() - started
    say(f"seed {seed}: uplift fitted on {int(run.train.sum()):,} carts ({fitted:.0f} s)")

    carts, X = run.carts[run.test], run.features[run.test]  # noqa: N806
    logged = [Action.parse(a) for a in logged_actions]
    names = [a.name for a in logged]
    candidates = list(
        dict.fromkeys([*catalogue.actions, *(s for f in catalogue.flows.values() for s in f.steps)])
    )
    allowed = list(dict.fromkeys([NOTHING, *logged, *candidates]))
    estimates = uplift.estimates(X, logged)
    log = pd.DataFrame(
        {"action": carts["action"], "propensity": carts["propensity"], "reward": carts["reward"]}
    )
    reward_model = pd.DataFrame(
        estimates.baseline[:, None] + estimates.profit, columns=names, index=log.index
    )

    def ope(target: pd.DataFrame) -> float:
        found = off_policy(
            log, target, reward_model=reward_model, estimators=("dr",), n_boot=n_boot, seed=seed
        )
        return found["dr"].value

    holdout = ope(one_hot([NOTHING.name] * len(log), names, index=log.index))
    low_sensitivity = (carts["price_sensitivity"] < carts["price_sensitivity"].median()).to_numpy()
    rows = []
    for policy in policies:
        name = policy if isinstance(policy, str) else policy.name
        target: pd.DataFrame | None = None
        flows: list[tuple[str, ...]] | None = None
        if name == "oracle":
            chosen = _oracle(carts, candidates, config)
        elif name == "oracle-logged":
            chosen = _oracle(carts, logged, config)
        elif name == "oracle-flow":
            flows = _oracle_flow(carts, candidates, config)
        elif name == "random":  # the logging policy itself
            chosen = carts["action"].tolist()
            target = pd.DataFrame(
                run.logging.probabilities(carts, logged, consent_mask(carts, logged)),
                columns=names,
                index=log.index,
            )
        elif name == "fitted-q":
            fitted_q = fit_fitted_q(run, features=features, threads=threads, seed=seed)
            flows = [tuple(a.name for a in f) for f in fitted_q.plan(X)]
            say(f"seed {seed}: fitted-q learnt from {fitted_q.n_transitions_:,} decision points")
        elif name == "bandit":
            online = run_online(ThompsonBandit(seed=seed), carts, config)
            chosen = online.log.set_index("cart_id")["action"].reindex(carts["cart_id"]).tolist()
        elif name in BASELINES and isinstance(policy, str):
            if BASELINES[name] not in catalogue.flows:
                raise BadInputError(f"flow {BASELINES[name]!r}: not in the catalogue (flows: "
                                    f"{', '.join(sorted(catalogue.flows)) or 'none'})")  # fmt: skip
            steps = catalogue.flows[BASELINES[name]].steps
            if len(steps) > 1:
                flows = [tuple(a.name for a in steps)] * len(carts)
            else:  # one action, as the log can evaluate it: nothing where the channel is not consented
                first = steps[0] if steps else NOTHING
                ok = consent_mask(carts, [first])[:, 0]
                chosen = [first.name if o else NOTHING.name for o in ok.tolist()]
        else:
            chooser: Policy = policy if not isinstance(policy, str) else uplift
            chosen = [d.action.name for d in chooser.decide_batch(X, allowed, consent_mask(carts, allowed))]
        if flows is None:
            flows = [(a,) if a != NOTHING.name else () for a in chosen]
            if target is None and set(chosen) <= set(names):
                target = one_hot(chosen, names, index=log.index)
        truth = expected_flow_outcomes(carts, pd.Series(flows, index=carts.index), config)
        incremental = truth["incremental_margin"].to_numpy()
        plain = expected_flow_outcomes(
            carts, pd.Series([tuple(map(_without_coupon, f)) for f in flows], index=carts.index), config
        )
        coupon_gain = incremental - plain["incremental_margin"].to_numpy()
        estimate = ope(target) if target is not None else math.nan
        rows.append(
            {"seed": seed, "name": name, "profit_per_cart": float(incremental.mean()),
             "margin_per_cart": float(truth["margin"].mean()), "sd": float(incremental.std(ddof=1)),
             "ope_estimate": estimate - holdout, "ope_margin": estimate,
             "coupon_share": _coupon_share(carts, flows),
             "messages_per_cart": float(truth["p_send"].mean()),
             "coupon_low": float(coupon_gain[low_sensitivity].mean()),
             "coupon_high": float(coupon_gain[~low_sensitivity].mean()),
             "n_train": int(run.train.sum()), "n_test": int(run.test.sum())}
        )  # fmt: skip
    say(f"seed {seed}: {len(rows)} policies scored ({time.perf_counter() - started:.0f} s)")
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- many shops


def simulate_policies(
    policies: Sequence[str | Policy] = POLICIES,
    customers: int = 20_000,
    days: int = 180,
    seeds: Sequence[int] = (0, 1, 2),
    *,
    train_days: int | None = None,
    config: ShopConfig | None = None,
    catalogue: Catalogue | None = None,
    logged_actions: Sequence[str] = LOGGED_ACTIONS,
    learner: Learner = "t",
    features: Sequence[str] = FEATURES,
    params: Mapping[str, Any] | None = UPLIFT_PARAMS,
    threads: int = 1,
    n_boot: int = 200,
    level: float = 0.95,
    progress: Callable[[str], None] | None = None,
    per_seed: list[pd.DataFrame] | None = None,
) -> pd.DataFrame:
    """The true incremental profit per abandoned cart of each policy, over several simulated shops.

    Parameters
    ----------
    policies
        Names among :data:`POLICIES` (``static-10h``, ``static-1h-24h-72h`` (its whole 3-step flow),
        ``coupon-everyone``, ``uplift``, ``bandit`` (learning online over the test carts),
        ``fitted-q`` (multi-step flows), ``random``: the logging policy itself, ``oracle-logged``,
        ``oracle`` (the best single action), ``oracle-flow`` (the best of single actions and e-mail
        flows)), or :class:`~winback.decide.policy.Policy` objects (ready to decide on the
        :data:`FEATURES` of the test carts).
    customers, days
        Size of each shop.
    seeds
        One shop per seed.
    train_days
        Training covers carts abandoned before ``train_days - 7``, testing those from ``train_days`` to
        ``days - 7``; two thirds of ``days`` by default.
    config
        Other simulator knobs (its size is set by ``customers`` and ``days``).
    catalogue
        Margin, channel costs and flows; the packaged default (the simulator's costs and margin).
    logged_actions
        The actions the logging policy randomises over (and the uplift policy learns and chooses from).
    learner, features, params, threads
        The uplift policy's meta-learner (``"t"``, ``"x"`` or ``"dr"``), feature columns (some of
        :data:`FEATURES`), LightGBM settings (:data:`UPLIFT_PARAMS`) and threads.
    n_boot
        Bootstrap resamples of the off-policy estimator (only its point value is reported).
    level
        Confidence level of the interval over seeds.
    progress
        Called with a line of progress now and then.
    per_seed
        If a list is given, each seed's table (:func:`evaluate_seed`) is appended to it.

    Returns
    -------
    pandas.DataFrame
        One row per policy, in the order given: ``name``; ``profit_per_cart`` (mean over seeds of the
        true expected incremental margin per test cart) with ``ci_low`` / ``ci_high`` (a t interval over
        seeds; with one seed a normal interval over its carts); ``ope_estimate`` (off-policy estimate of
        the same, mean over seeds; NaN where not applicable) and ``ope_error`` (mean over seeds of
        ``|ope_estimate - truth| / |truth|``); ``margin_per_cart``, ``ope_margin`` and
        ``ope_margin_error`` (the same for the margin per cart, the policy's value as the log measures
        it); ``coupon_share``, ``messages_per_cart``, ``coupon_low``, ``coupon_high`` (see
        :func:`evaluate_seed`); ``seeds`` and
        ``n_test`` (test carts per seed).
    """
    if not seeds:
        raise BadInputError("seeds: expected at least one seed")
    tables = [
        evaluate_seed(
            s, customers, days, policies=policies, train_days=train_days, config=config, catalogue=catalogue,
            logged_actions=logged_actions, learner=learner, features=features, params=params, threads=threads,
            n_boot=n_boot, progress=progress,
        )
        for s in seeds
    ]  # fmt: skip
    if per_seed is not None:
        per_seed.extend(tables)
    every = pd.concat(tables, ignore_index=True)
    for estimate, truth, error in (
        ("ope_estimate", "profit_per_cart", "ope_error"),
        ("ope_margin", "margin_per_cart", "ope_margin_error"),
    ):
        every[error] = (every[estimate] - every[truth]).abs() / every[truth].abs()
    rows = []
    for name, group in every.groupby("name", sort=False):
        values = group["profit_per_cart"].to_numpy()
        mean, n = float(values.mean()), len(values)
        if n > 1:
            half = float(stats.t.ppf(0.5 + level / 2, n - 1) * values.std(ddof=1) / math.sqrt(n))
        else:
            spread = group["sd"].iloc[0] / math.sqrt(group["n_test"].iloc[0])
            half = float(stats.norm.ppf(0.5 + level / 2) * spread)
        means = group.mean(numeric_only=True)
        rows.append(
            {"name": name, "profit_per_cart": mean, "ci_low": mean - half, "ci_high": mean + half,
             **{c: float(means[c]) for c in _AVERAGED},
             "seeds": n, "n_test": int(means["n_test"])}
        )  # fmt: skip
    return pd.DataFrame(rows)


def goals(table: pd.DataFrame) -> dict[str, float]:
    """The issue's goals measured on a :func:`simulate_policies` table.

    ``uplift_vs_best_static`` (goal >= 1.5), ``uplift_vs_oracle`` and ``uplift_vs_oracle_logged`` (goal
    >= 0.8); ``coupon_everyone_low`` (what coupon-everyone's coupons add per cart on the less
    price-sensitive half, over the same message without them: negative where the simulator says
    coupons lose money) and ``coupon_everyone`` (its whole profit per cart, against doing nothing);
    ``fitted_q_vs_uplift``, ``fitted_q_vs_oracle``, ``fitted_q_vs_oracle_flow``: the sequential policy
    against the one-action ones and the oracles; ``ope_within_10pct`` and
    ``ope_margin_within_10pct``: how many policies' off-policy estimates (of the incremental profit, of
    the margin per cart) are on average within 10% of the truth (goal: 3).
    """
    by_name = table.set_index("name")
    value = by_name["profit_per_cart"]
    static = [n for n in BASELINES if n in value.index]
    out: dict[str, float] = {}
    if "uplift" in value.index and static:
        best = max(static, key=lambda n: value[n])
        out["best_static"] = float(value[best])
        out["uplift_vs_best_static"] = float(value["uplift"] / value[best])
        for oracle in ("oracle", "oracle-logged"):
            if oracle in value.index:
                out[f"uplift_vs_{oracle.replace('-', '_')}"] = float(value["uplift"] / value[oracle])
    if "fitted-q" in value.index:
        for other in ("uplift", "oracle", "oracle-flow"):
            if other in value.index:
                out[f"fitted_q_vs_{other.replace('-', '_')}"] = float(value["fitted-q"] / value[other])
    if "coupon-everyone" in value.index:
        out["coupon_everyone"] = float(value["coupon-everyone"])
        out["coupon_everyone_low"] = float(by_name["coupon_low"]["coupon-everyone"])
        out["coupon_everyone_high"] = float(by_name["coupon_high"]["coupon-everyone"])
    out["ope_within_10pct"] = float((table["ope_error"].dropna() <= 0.10).sum())
    out["ope_margin_within_10pct"] = float((table["ope_margin_error"].dropna() <= 0.10).sum())
    return out


# --------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m winback.decide.evaluate``: print the table (or ``--json``) for simulated shops."""
    parser = argparse.ArgumentParser(
        prog="python -m winback.decide.evaluate", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=180)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train-days", type=int, default=None)
    parser.add_argument("--learner", choices=["t", "x", "dr"], default="t")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    parser.add_argument("--json", action="store_true", help="print a JSON list, one object per policy")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    seeds_tables: list[pd.DataFrame] = []
    table = simulate_policies(
        args.policies, args.customers, args.days, args.seeds, train_days=args.train_days,
        learner=args.learner, threads=args.threads, progress=lambda line: print(line, file=sys.stderr),
        per_seed=seeds_tables,
    )  # fmt: skip
    if args.json:
        print(json.dumps(json.loads(table.to_json(orient="records")), indent=2))
        return 0
    shown = [
        "seed",
        "name",
        "profit_per_cart",
        "ope_estimate",
        "margin_per_cart",
        "ope_margin",
        "coupon_share",
    ]
    with pd.option_context(
        "display.width", 250, "display.max_columns", 30, "display.float_format", "{:.3f}".format
    ):
        print(table.to_string(index=False))
        print()
        print(pd.concat(seeds_tables)[shown].to_string(index=False))
    for key, number in goals(table).items():
        print(f"{key}: {number:.3f}")
    print(f"({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
