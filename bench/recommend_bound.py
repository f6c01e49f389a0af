"""How far category interest can be learnt from a shop's history: the Bayes bound on the simulator.

Category affinity ranks by a customer's estimated share of interest in each category times their choice
within it. Knowing the simulator's true shares would lift recall@10 a long way, but no recommender
knows them: it sees a few visits. This bench asks how much any estimate can get from those visits. It
estimates each tested customer's posterior mean interest, given their training views and the
simulator's *true* parameters (focus / complement / stray shares of views, the complement categories,
the Dirichlet prior of interests), by importance sampling from category affinity's own estimate. That
posterior mean is the best estimate of the shares there is (up to the sampling error, shown by the
effective sample size). Views only: carts and purchases repeat products viewed in the same visit, and
the simulator draws categories for views. It then ranks with it, with category affinity's
within-category choice and with the simulator's true one (true price tier and staples):

- ``category affinity``: what winback learns (:class:`winback.recommend.affinity.CategoryAffinity`);
- ``Bayes interest x learnt within``: the best interest estimate, winback's choice within categories;
- ``Bayes interest x true within``: the best interest estimate, the true choice within categories;
  about the most a recommender can expect from category interest on this history (the complement
  links between products, left out here, added at most 0.01 x in a one-off trial);
- ``true interest x true within``: the simulator's truth (the oracle without complement links).

Run::

    .venv/bin/python bench/recommend_bound.py                # 30,000 customers x 120 days, seed 1
    .venv/bin/python bench/recommend_bound.py --seed 2 --samples 1000

Each ratio to popularity has its 95% interval (a bootstrap over the tested customers). The effective
sample size of the importance weights is printed; with 3,000 samples its median is in the hundreds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recommend_eval import K, simulated
from winback.recommend.affinity import CategoryAffinity
from winback.recommend.sources import Popularity
from winback.recommend.tasks import evaluate_lists
from winback.sim.config import ShopConfig
from winback.sim.customers import STAPLE_BASE, STAPLE_LOYALTY
from winback.sim.sessions import COMPLEMENT_SHARE, FOCUS_SHARE
from winback.sim.shop import _Run


def posterior_interest(
    visits: list[np.ndarray],
    proposal: np.ndarray,
    alpha: np.ndarray,
    complements: np.ndarray,
    samples: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, float]:
    """The posterior mean of one customer's category shares given their visits (arrays of viewed
    categories), by importance sampling from ``Dirichlet(proposal)``; and the effective sample size."""
    n = alpha.size
    theta = rng.dirichlet(proposal, size=samples) + 1e-300
    log_w = ((alpha - proposal) * np.log(theta)).sum(axis=1)  # prior over proposal, up to constants
    stray = 1.0 - FOCUS_SHARE - COMPLEMENT_SHARE
    for visit in visits:
        given_focus = np.ones((samples, n))  # P(the visit's views | focus f, theta)
        for c in visit:
            fixed = FOCUS_SHARE * (np.arange(n) == c) + COMPLEMENT_SHARE * complements[:, c]
            given_focus *= fixed[None, :] + stray * theta[:, [c]]
        log_w += np.log((theta * given_focus).sum(axis=1))
    w = np.exp(log_w - log_w.max())
    w /= w.sum()
    return w @ theta, float(1.0 / (w**2).sum())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=30_000)
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--products", type=int, default=300)
    parser.add_argument("--test-days", type=float, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--samples", type=int, default=3000, help="importance samples per customer")
    args = parser.parse_args()
    config = ShopConfig(customers=args.customers, days=args.days, n_products=args.products)
    with tempfile.TemporaryDirectory() as tmp:
        split, info = simulated(config, args.seed, args.test_days, Path(tmp))
    print(info)
    train, users = split.train, sorted(split.truth())
    affinity = CategoryAffinity().fit(train)
    run = _Run(config, args.seed, None)  # the same customers and catalogue, before any day is simulated
    catalogue, people = run.catalogue, run.people
    ids = np.asarray(catalogue.product_ids().to_numpy(zero_copy_only=False)).astype(str)
    names = [str(n) for n in catalogue.category_names]
    n = len(names)
    index = {str(u): i for i, u in enumerate(run.user_ids)}
    rows = np.array([index[u] for u in users])
    true_theta = np.diff(people.affinity_cdf[rows].astype(float), axis=1, prepend=0.0)
    tier = catalogue.tier_share[catalogue.tier_index(people.price_tier[rows])]
    staple = people.staple[rows][:, catalogue.category]
    rate = (STAPLE_BASE + STAPLE_LOYALTY * people.loyalty[rows])[:, None]
    true_within = np.where(
        staple >= 0, (1 - rate) * tier + rate * (staple == np.arange(catalogue.size)), tier
    )
    complements = np.zeros((n, n))
    for c in range(n):
        for j in range(int(catalogue.n_complements[c])):
            complements[c, catalogue.complements[c, j]] += 1.0 / catalogue.n_complements[c]
    alpha = 0.5 * n * catalogue.category_weight  # as winback.sim.customers draws interests

    learnt = np.array([affinity.score_products(u, list(ids)) for u in users])
    position = {str(c): i for i, c in enumerate(affinity.categories_)}
    theta = np.zeros((len(users), n))
    for i, u in enumerate(users):
        share = affinity.shares(u)
        assert share is not None
        theta[i] = [share[0][position[c]] if c in position else 0.0 for c in names]
    learnt_within = learnt / np.maximum(theta[:, catalogue.category], 1e-300)

    views = train[(train["kind"] == "view") & train["user_key"].isin(set(users))]
    views = views.assign(c=views["category"].map({c: i for i, c in enumerate(names)}).astype(int))
    visits = {
        u: [g.to_numpy() for _, g in d.groupby("session_key")["c"]] for u, d in views.groupby("user_key")
    }
    rng = np.random.default_rng(args.seed)
    bayes = np.zeros((len(users), n))
    ess = np.zeros(len(users))
    start = time.perf_counter()
    for i, u in enumerate(users):
        draws = affinity.profile(u) or {}
        proposal = np.array([draws.get(c, 0.0) for c in names]) + alpha  # category affinity's posterior
        bayes[i], ess[i] = posterior_interest(
            visits.get(u, []), proposal, alpha, complements, args.samples, rng
        )
    print(
        f"posterior means of {len(users):,} customers in {time.perf_counter() - start:.0f} s; effective "
        f"sample size median {np.median(ess):.0f}, 10th percentile {np.percentile(ess, 10):.0f}"
    )

    popular = [c.product_id for c in Popularity(half_life_days=7).fit(train, now=split.at).top(K)]
    scores = {
        "category affinity": learnt,
        "Bayes interest x learnt within": bayes[:, catalogue.category] * learnt_within,
        "Bayes interest x true within": bayes[:, catalogue.category] * true_within,
        "true interest x true within": true_theta[:, catalogue.category] * true_within,
    }
    lists = {"popularity": {u: popular for u in users}}
    for name, score in scores.items():
        best = np.argsort(-score, axis=1, kind="stable")[:, :K]
        lists[name] = {u: list(ids[b]) for u, b in zip(users, best, strict=True)}
    table = evaluate_lists(split, lists, K, baseline="popularity")
    with pd.option_context("display.width", 160, "display.float_format", "{:.3f}".format):
        print(table[[f"recall@{K}", f"ndcg@{K}", "x_popularity", "x_low", "x_high"]].to_string())


if __name__ == "__main__":
    main()
