"""The session-focus model of category interest (winback.recommend.interest)."""

from __future__ import annotations

import numpy as np
import pytest

from winback.recommend.interest import dirichlet_precision, fit_interest


def _visits(
    seed: int, customers: int = 3000, categories: int = 12, visits: int = 12
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Interactions drawn from the model itself: Dirichlet interests (concentration 6), each visit a
    focus and 4 views from it (70%), its one complement category (15%) or the interests again (15%)."""
    rng = np.random.default_rng(seed)
    mix = rng.dirichlet(np.full(categories, 2.0))
    theta = rng.dirichlet(6.0 * mix, size=customers)
    complement = (np.arange(categories) + 1) % categories
    user, visit, category = [], [], []
    for u in range(customers):
        foci = rng.choice(categories, size=visits, p=theta[u])
        for v, f in enumerate(foci):
            r = rng.random(4)
            stray = rng.choice(categories, size=4, p=theta[u])
            views = np.where(r < 0.70, f, np.where(r < 0.85, complement[f], stray))
            user += [u] * 4
            visit += [u * visits + v] * 4
            category += list(views)
    return np.array(user), np.array(visit), np.array(category), theta


def test_the_fit_recovers_the_shares_and_the_concentration_it_was_drawn_with() -> None:
    user, visit, category, theta = _visits(seed=3)
    interest = fit_interest(user, visit, category)
    a, b, o = interest.shares
    assert a == pytest.approx(0.70, abs=0.03)
    assert b == pytest.approx(0.15, abs=0.03)
    assert o == pytest.approx(0.15, abs=0.03)
    assert interest.concentration == pytest.approx(6.0, rel=0.25)
    # The smoothed shares are closer to the true interests than each visit counted once.
    n_users = theta.shape[0]
    estimate = np.zeros_like(theta)
    estimate[interest.user, interest.category] = interest.smoothed(n_users)
    absent = estimate == 0
    estimate[absent] = (interest.concentration * interest.mean[np.nonzero(absent)[1]]) / (
        np.bincount(interest.user, weights=interest.draws, minlength=n_users)[np.nonzero(absent)[0]]
        + interest.concentration
    )
    simple = np.zeros_like(theta)
    np.add.at(simple, (user, category), 1.0 / 4)  # every visit has 4 interactions
    simple /= simple.sum(axis=1, keepdims=True)
    assert np.abs(estimate - theta).sum(axis=1).mean() < 0.9 * np.abs(simple - theta).sum(axis=1).mean()


def test_a_category_that_only_goes_with_the_focus_is_not_an_interest() -> None:
    """Everyone who browses phones looks at a case too; a customer whose every visit is phones and a
    case is interested in phones, not cases, while a stray view elsewhere counts as a whole draw."""
    rng = np.random.default_rng(5)
    user, visit, category = [], [], []
    phones, cases, books = 0, 1, 2  # and 3-7: other categories
    for u in range(300):  # the shop: three visits each; a phone visit shows a case; a third stray
        for v in range(3):
            focus = int(rng.choice([0, 2, 3, 4, 5, 6, 7]))
            views = [focus] * 3 + ([cases] if focus == phones else [])
            views += [int(rng.integers(8))] if rng.random() < 0.3 else []
            user += [u] * len(views)
            visit += [u * 10 + v] * len(views)
            category += views
    fan = 300  # the customer: three phone visits with a case each, and one with a stray book view
    for v, views in enumerate([[phones] * 3 + [cases]] * 3 + [[phones] * 4 + [books]]):
        user += [fan] * len(views)
        visit += [fan * 10 + v] * len(views)
        category += views
    interest = fit_interest(np.array(user), np.array(visit), np.array(category))
    mine = dict(zip(interest.category[interest.user == fan].tolist(),
                    interest.draws[interest.user == fan].tolist(), strict=True))  # fmt: skip
    assert mine[phones] == pytest.approx(4.0, abs=0.3)
    assert mine[cases] < 0.3
    assert mine[books] > 0.5  # as a visit shared out by views it would be 0.2


def test_a_fixed_concentration_and_a_single_category() -> None:
    user, visit, category, _ = _visits(seed=4, customers=200)
    assert fit_interest(user, visit, category, concentration=2.5).concentration == 2.5
    one = fit_interest(np.array([0, 0, 1]), np.array([0, 1, 2]), np.array([0, 0, 0]))
    assert one.draws.tolist() == [2.0, 1.0]  # each visit once
    assert one.shares == (1.0, 0.0, 0.0)


def test_dirichlet_precision_recovers_each_groups_precision() -> None:
    """Two groups of units, each unit's 20 draws from its own Dirichlet around a shared mean: precision 2
    in one (units keep to their own outcomes), 50 in the other (they choose much like the mean)."""
    rng = np.random.default_rng(7)
    mean = rng.dirichlet(np.full(8, 3.0))
    counts, means, pair_group, totals, total_group = [], [], [], [], []
    for group, precision in enumerate((2.0, 50.0)):
        for _ in range(3000):
            drawn = rng.multinomial(20, rng.dirichlet(precision * mean))
            seen = drawn > 0
            counts += list(drawn[seen])
            means += list(mean[seen])
            pair_group += [group] * int(seen.sum())
            totals.append(20)
            total_group.append(group)
    found = dirichlet_precision(
        np.array(counts, float), np.array(means), np.array(totals, float), start=10.0, steps=200,
        pair_group=np.array(pair_group), total_group=np.array(total_group), size=2,
    )  # fmt: skip
    assert found[0] == pytest.approx(2.0, rel=0.15)
    assert found[1] == pytest.approx(50.0, rel=0.25)
