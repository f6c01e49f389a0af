"""Model quality on the simulator: each model's ROC-AUC over the AUC of the simulator's true probabilities.

Usage: ``.venv/bin/python bench/model_quality.py [--customers 20000] [--days 180] [--seed 7] [--horizon 30]``

Simulates a shop (the defaults are what ``winback demo`` simulates), stores its events in a temporary
winback home, and evaluates winback's own models and baselines with the same time split as
``winback evaluate`` (:func:`winback.models.tasks.evaluate_abandonment` and
:func:`~winback.models.tasks.evaluate_churn`). On the very same test rows it scores the truth:

- Abandonment, at the first add: ``1 - p_purchase`` of the cart's session
  (:attr:`winback.sim.SimulationResult.cart_sessions`; a cart's id is its session id). That is the
  probability the purchase was drawn from, given the customer's latent traits *and the cart's final
  contents*, so at the first add (before the later adds and removes) it knows more than any model can:
  an oracle ceiling, an upper bound of the attainable AUC (in practice: AUC is not strictly monotone in
  information).
- Abandonment, at every cart state: the same, and after a ``checkout_start`` the posterior
  ``p / (p + (1 - p) c)`` (:func:`winback.sim.purchase_probability_after_checkout`).
- Churn (no purchase in ``[T, T + H)``): there is no closed form, so the ceiling is computed from the
  simulator's own structure given each customer's latent state at ``T``. Visits while alive are Poisson
  in ``visit_rate x season x hour of day`` until the customer's lifetime ends (``initial_churn_at``; no
  policy runs, so nothing shortens it); each visit buys with a per-customer probability ``a`` (cart rate
  x mean ``p_purchase``) or abandons a cart that comes back naturally before ``T + H`` with probability
  ``b x F(T + H - t)`` (``b``: mean ``(1 - p) x p_natural``, ``F``: the natural-delay distribution).
  ``a`` and ``b`` are Monte-Carlo means over simulated sessions of that customer (the simulator's own
  :func:`~winback.sim.sessions.browse`). Carts abandoned before ``T`` and not back by ``T`` come back in
  the horizon with their posterior probability. By Poisson thinning,
  ``P(no purchase) = P(no pending cart back) x exp(-integral of rate x (a + b F))``. Approximations
  (so it is labelled approximate): placement of a user's sessions, open-cart product swaps and the
  one-second lifetime extension after a return visit are ignored, and ``a``, ``b`` carry Monte-Carlo
  error. Its calibration against the realised labels is printed to show how close it is. A cruder
  proxy is printed beside it: ``alive at T`` (lifetime not ended), which a purchase needs unless a cart
  comes back.

The ratio model AUC / ceiling AUC says how much of the learnable signal a model gets (1.0 = all).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import fields
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from winback.config import load_settings
from winback.events.store import EventStore
from winback.features.engine import open_source
from winback.features.tables import FeatureTables
from winback.models import tasks
from winback.sim import SimulationResult, purchase_probability_after_checkout, simulate
from winback.sim.customers import DAY, Customers
from winback.sim.response import natural_before, natural_probability
from winback.sim.sessions import HOURLY, browse, day_factor
from winback.sim.shop import _Run

#: Simulated sessions per customer for the churn ceiling's per-customer purchase probabilities.
MC_SESSIONS = 200


def abandonment_ceilings(
    shop: SimulationResult, test: pd.DataFrame
) -> dict[str, tuple[pd.DataFrame, np.ndarray]]:
    """Test rows (every state, first add) and the true abandonment probability of each."""
    truth = shop.cart_sessions.set_index("session_id")
    missing = ~test.cart_id.isin(truth.index)
    if missing.any():
        raise SystemExit(f"{int(missing.sum())} test carts have no truth row: cart ids are not session ids?")
    p = test.cart_id.map(truth.p_purchase).to_numpy()
    agree = (test.cart_id.map(truth.purchased).to_numpy() == ~test.abandoned.to_numpy()).mean()
    if agree < 0.999:
        raise SystemExit(f"the log's labels and the truth's draws agree on only {agree:.2%} of test states")
    after = purchase_probability_after_checkout(p, shop.config)
    every = 1 - np.where(test.checkout_started.to_numpy() > 0, after, p)
    first = test.drop_duplicates("cart_id", keep="first")
    return {
        "every cart state": (test, every),
        "at the first add": (first, 1 - first.cart_id.map(truth.p_purchase).to_numpy()),
    }


def churn_ceiling(
    shop: SimulationResult, users: pd.Series, as_of: pd.Timestamp, horizon_days: int
) -> np.ndarray:
    """P(no purchase in [as_of, as_of + horizon)) for each of ``users`` given the latent state at as_of."""
    config = shop.config
    run = _Run(config, shop.seed, None)  # the same customers and catalogue, before any day is simulated
    people, catalogue = run.people, run.catalogue
    index = pd.Index(run.user_ids)
    u = index.get_indexer(users)
    if (u < 0).any():
        raise SystemExit("test customers missing from the simulation")
    origin = pd.Timestamp(config.start, tz="UTC")
    t0 = (as_of - origin).total_seconds()
    t1 = t0 + horizon_days * DAY
    end = np.clip(people.churn_at[u].astype(float), t0, t1)  # alive until its lifetime ends

    # Visit intensity per UTC hour for each market (visits per customer per hour at visit rate 1/day),
    # and the same weighted by F(t1 - t): the chance a cart abandoned then comes back before t1.
    hours = np.arange(int(np.ceil(t1 / 3600)) + 1)
    mid = (hours + 0.5) * 3600.0
    days = np.arange(-2, config.days + 2)
    factor = np.array([day_factor(config.start + timedelta(days=int(d))) for d in days])
    back = np.where(mid < t1, natural_before(np.maximum(t1 - mid, 0) / 3600, config.effects), 0.0)
    rate_ns = np.zeros(u.size)
    rate_nsw = np.zeros(u.size)
    for offset in np.unique(people.utc_offset[u]):
        local = hours + int(offset)
        g = factor[local // 24 - days[0]] * HOURLY[local % 24] / HOURLY.sum()
        cum_g = np.concatenate([[0.0], np.cumsum(g)])
        cum_gw = np.concatenate([[0.0], np.cumsum(g * back)])
        edges = np.arange(cum_g.size) * 3600.0
        mine = people.utc_offset[u] == offset
        for cum, out in ((cum_g, rate_ns), (cum_gw, rate_nsw)):
            out[mine] = np.interp(end[mine], edges, cum) - np.interp(t0, edges, cum)

    # Per customer: a = P(cart bought in-session), b = P(cart abandoned and naturally recovered), as
    # P(cart) (closed form) x Monte-Carlo means over carts of the simulator's own sessions. Each simulated
    # session is given to its own copy of the customer, so that they do not swap each other's products
    # as one customer's concurrent carts would. No policy runs: harvest levels stay 0.
    rng = np.random.default_rng(12345)
    live = np.flatnonzero(end > t0)
    a, b = np.zeros(u.size), np.zeros(u.size)
    cart_rate = np.clip(config.cart_rate * (0.75 + 0.5 * people.loyalty[u]), 0.0, 1.0)
    chunk = max(1, 200_000 // MC_SESSIONS)
    for lo in range(0, live.size, chunk):
        rows = live[lo : lo + chunk]
        who = np.repeat(u[rows], MC_SESSIONS)
        copies = Customers(**{f.name: getattr(people, f.name)[who] for f in fields(Customers) if f.init})
        sessions, items = browse(
            np.arange(who.size), np.full(who.size, int(t0)), copies, catalogue, config, rng,
            np.zeros(0, np.int64), rng,
        )  # fmt: skip
        value = np.bincount(
            items.session[~items.removed],
            (catalogue.price[items.product] * items.quantity)[~items.removed],
            minlength=who.size,
        )
        is_cart = ~np.isnan(sessions.p_purchase)
        p = np.nan_to_num(sessions.p_purchase, nan=0.0)
        p0 = natural_probability(copies.loyalty, copies.forgetfulness, value, np.zeros(who.size), config)
        carts = np.maximum(is_cart.reshape(-1, MC_SESSIONS).sum(axis=1), 1)
        a[rows] = p.reshape(-1, MC_SESSIONS).sum(axis=1) / carts
        b[rows] = np.where(is_cart, (1 - p) * p0, 0.0).reshape(-1, MC_SESSIONS).sum(axis=1) / carts
    a, b = cart_rate * a, cart_rate * b
    visit = people.visit_rate[u]  # sessions per day
    log_none_new = -visit * (a * rate_ns + b * rate_nsw)

    # Carts abandoned before as_of and not back by then: their posterior chance to come back in time.
    carts = shop.carts
    at = ((carts.abandoned_at - origin).dt.total_seconds()).to_numpy()
    came = ((carts.natural_recovery_at - origin).dt.total_seconds()).to_numpy()
    pending = (at < t0) & ~(came < t0)
    hours_before, hours_after = (t0 - at[pending]) / 3600, (t1 - at[pending]) / 3600
    f0 = natural_before(hours_before, config.effects)
    f1 = natural_before(hours_after, config.effects)
    p0 = carts.p_natural.to_numpy()[pending]
    r = np.clip(p0 * (f1 - f0) / (1 - p0 * f0), 0, 1)
    owner = index.get_indexer(carts.user_id.to_numpy()[pending])
    log_none_pending = np.zeros(index.size)
    np.add.at(log_none_pending, owner, np.log1p(-r))
    return np.exp(log_none_new + log_none_pending[u])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=180)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--horizon", type=int, default=30, help="churn horizon in days")
    args = parser.parse_args()
    started = time.perf_counter()
    shop = simulate(customers=args.customers, days=args.days, seed=args.seed)
    print(
        f"simulated {args.customers:,} customers x {args.days} days (seed {args.seed}): "
        f"{shop.events.num_rows:,} events, {len(shop.cart_sessions):,} carts"
    )
    with tempfile.TemporaryDirectory() as home:
        settings = load_settings(home=Path(home) / "home")
        with EventStore(settings) as store:
            store.append(shop.events, source="simulated")
        with open_source(settings) as source:
            tables = FeatureTables(source, settings)
            as_of = tasks.default_eval_as_of(tables)
            abandonment = tasks.evaluate_abandonment(tables, as_of)
            test = tasks._cart_split(tables, as_of, with_test=True).test
            churn_as_of = tasks.default_eval_as_of(tables, args.horizon)
            churn = tasks.evaluate_churn(tables, churn_as_of, args.horizon)
            customers = tables.customers(churn_as_of, args.horizon)

    print(
        f"\nabandonment: trained before {as_of.isoformat()}, tested on {abandonment['test_carts']:,} carts "
        f"started after it ({len(test):,} states)"
    )
    for label, (rows, truth) in abandonment_ceilings(shop, test).items():
        ceiling = roc_auc_score(rows.abandoned, truth)
        print(
            f"  {label}: ceiling AUC (simulator's true probability) {ceiling:.4f}, n = {len(rows):,}; "
            f"its mean {truth.mean():.3f} vs realised {rows.abandoned.mean():.3f}"
        )
        for name, metrics in abandonment[label].items():
            print(
                f"    {name:<28} AUC {metrics['roc_auc']:.4f}   "
                f"/ ceiling = {metrics['roc_auc'] / ceiling:.3f}"
            )

    if len(customers) != churn["test_customers"]:
        raise SystemExit("the churn test rows differ from evaluate_churn's")
    y = customers.churned.to_numpy()
    ceiling_p = churn_ceiling(shop, customers.user_key, churn_as_of, args.horizon)
    ceiling = roc_auc_score(y, ceiling_p)
    alive = (
        shop.customers.set_index("user_id").initial_churn_at.reindex(customers.user_key) > churn_as_of
    ).to_numpy()
    proxy = roc_auc_score(y, ~alive)
    print(
        f"\nchurn ({args.horizon}-day horizon from {churn_as_of.date()}): {len(customers):,} customers "
        f"who had bought, {y.mean():.1%} churned"
    )
    print(
        f"  ceiling AUC, approximate (P(no purchase | latent state), Monte Carlo): {ceiling:.4f}; "
        f"its mean {ceiling_p.mean():.3f} vs realised {y.mean():.3f}"
    )
    groups = pd.qcut(ceiling_p, 5, labels=False, duplicates="drop")  # ties at ~1 merge the top fifths
    calib = pd.DataFrame({"p": ceiling_p, "y": y}).groupby(groups).mean()
    print(
        "  its calibration by quantile group (predicted / realised): "
        + ", ".join(f"{row.p:.2f}/{row.y:.2f}" for row in calib.itertuples())
    )
    print(
        f"  proxy 'lifetime ended before T' (not a ceiling): AUC {proxy:.4f}, "
        f"{1 - alive.mean():.1%} of customers"
    )
    for name, metrics in churn["metrics"].items():
        print(f"    {name:<42} AUC {metrics['roc_auc']:.4f}   / ceiling = {metrics['roc_auc'] / ceiling:.3f}")
    print(f"\n{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
