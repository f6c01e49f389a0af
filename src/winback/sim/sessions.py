"""Sessions and their events: what a visit looks like, when it happens, and keeping a user's visits apart.

A browsing session has about 4.5 views (geometric): the session's focus category (drawn from the
customer's affinities) for 70% of views, a complement of it for 15%, another favourite for 15%;
products by popularity within the category times closeness to the customer's price tier; in a
replenishable category, the customer's staple instead with probability ``0.25 + 0.5 loyalty``. Three
quarters of complement views follow a product of the focus category viewed before in the session (the
latest one) and go to one of its linked complement products (a phone's page shows its cases); the rest,
and those with no focus view before them, pick a product of a complement category as above.
:func:`view_shares` gives each customer's resulting probability of viewing each product: the truth a
recommender is measured against. A quarter of sessions (more for loyal customers) add 1+
viewed products to the cart (each add right after the view of that product); 15% of multi-item carts
lose their first item again; the cart is bought in-session with a probability that falls with price
sensitivity x log cart value and with learnt coupon harvesting; 30% of the others start checkout first.
A return visit that recovers a cart views its items, starts checkout and buys them all.

The truth keeps each browsing cart's in-session purchase probability (``Sessions.p_purchase``): the
probability from which the purchase was drawn, given the customer's traits and the cart's final contents.
A ``checkout_start`` reveals part of that draw (checkout = purchased, or else with probability
``checkout_without_purchase`` = c), so once a checkout has started the probability of a purchase is
``p / (p + (1 - p) c)``; before it, ``p``.

Gaps between events are lognormal (median 40 s, from 2 s to 25 min), so a 30-minute inactivity rule
recovers sessions; one order's line items share a timestamp. Visits follow the local hour of day,
weekday and month (:func:`day_factor`, :data:`HOURLY`), and a user's sessions are always more than 30
minutes apart (:func:`place`, :class:`Busy`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import date

import numpy as np
import scipy.sparse as sp

from winback.sim.catalogue import LINKS, Catalogue
from winback.sim.config import ShopConfig
from winback.sim.customers import STAPLE_BASE, STAPLE_LOYALTY, Customers, expit, logit

VIEW, ADD, REMOVE, CHECKOUT, PURCHASE, SENT, OPENED, CLICKED, UNSUBSCRIBED = range(9)  # EventType order
#: Shares of a session's views: its focus category, a complement category of it, another favourite.
FOCUS_SHARE, COMPLEMENT_SHARE = 0.70, 0.15
#: Share of complement views that go to a linked complement of the latest focus product viewed before.
LINKED_SHARE = 0.75
#: Smallest gap between two sessions of a user, in seconds: strictly more than 30 minutes.
SESSION_GAP = 30 * 60 + 1
#: Relative visits by local hour (0-23): quiet nights, a lunch bump, an evening peak.
HOURLY = np.array(
    [0.30, 0.16, 0.09, 0.06, 0.06, 0.10, 0.25, 0.50, 0.75, 0.85, 0.90, 0.95,
     1.05, 1.00, 0.90, 0.90, 0.95, 1.05, 1.20, 1.45, 1.65, 1.55, 1.15, 0.65]
)  # fmt: skip
#: Relative visits by weekday (Monday first; Sunday evening is shopping time) and month (November and
#: December peak); both average 1, so ``sessions_per_week`` is the yearly mean.
WEEKDAY = np.array([1.04, 0.99, 0.97, 0.97, 0.93, 0.96, 1.14])
MONTH = np.array([0.92, 0.86, 0.93, 0.94, 0.96, 0.92, 0.91, 0.94, 0.96, 1.02, 1.32, 1.42])
WEEKDAY, MONTH = WEEKDAY / WEEKDAY.mean(), MONTH / MONTH.mean()
#: Events of one kind for a batch: (session, position in the session, type, product, quantity).
Part = tuple[np.ndarray, np.ndarray | int, int, np.ndarray | int, np.ndarray | int]
_KEY_SHIFT = 1 << 11  # event order key: session * _KEY_SHIFT + position
_TAIL = 1 << 10  # positions of remove/checkout/purchase events, after every view and add


def day_factor(day: date) -> float:
    """Seasonal multiplier of visits on a local calendar day."""
    return float(WEEKDAY[day.weekday()] * MONTH[day.month - 1])


@dataclass
class Sessions:
    """A batch of sessions (one entry per session) and their events (one entry per event)."""

    user: np.ndarray
    start: np.ndarray  # seconds; planned, then placed
    duration: np.ndarray  # seconds from the first to the last event
    purchased: np.ndarray  # bool
    coupon: np.ndarray  # discount on this session's purchases (a return visit through a coupon)
    cart: np.ndarray  # the cart a return visit recovers, -1 for browsing
    event_session: np.ndarray  # index into this batch
    event_offset: np.ndarray  # seconds after the session start
    event_type: np.ndarray
    event_product: np.ndarray  # -1 for none
    event_quantity: np.ndarray  # 0 for none
    #: Per session: the true in-session purchase probability of a browsing cart; NaN for a browsing
    #: session without a cart and for a return visit (which always buys).
    p_purchase: np.ndarray

    @property
    def size(self) -> int:
        """Number of sessions."""
        return int(self.user.size)

    def take(self, keep: np.ndarray) -> Sessions:
        """The sessions where ``keep`` is True, with their events."""
        renumber = np.cumsum(keep) - 1
        events = keep[self.event_session]
        return Sessions(
            self.user[keep], self.start[keep], self.duration[keep], self.purchased[keep],
            self.coupon[keep], self.cart[keep], renumber[self.event_session[events]],
            self.event_offset[events], self.event_type[events], self.event_product[events],
            self.event_quantity[events], self.p_purchase[keep],
        )  # fmt: skip

    def concat(self, other: Sessions) -> Sessions:
        """This batch followed by ``other``."""
        merged = {
            f.name: np.concatenate([getattr(self, f.name), getattr(other, f.name)]) for f in fields(self)
        }
        merged["event_session"] = np.concatenate([self.event_session, other.event_session + self.size])
        return Sessions(**merged)


@dataclass
class Items:
    """Cart lines of a batch of browsing sessions."""

    session: np.ndarray  # index into the batch
    product: np.ndarray
    quantity: np.ndarray
    removed: np.ndarray  # bool: taken out of the cart again

    def lines(self, keep: np.ndarray) -> Items:
        """The lines where ``keep`` (one entry per line) is True."""
        return Items(self.session[keep], self.product[keep], self.quantity[keep], self.removed[keep])

    def take(self, keep: np.ndarray) -> Items:
        """The lines of the sessions where ``keep`` (one entry per session) is True, renumbered."""
        renumber = np.cumsum(keep) - 1
        lines = keep[self.session]
        return Items(
            renumber[self.session[lines]], self.product[lines], self.quantity[lines], self.removed[lines]
        )


def browse(
    user: np.ndarray,
    start: np.ndarray,
    customers: Customers,
    catalogue: Catalogue,
    config: ShopConfig,
    rng: np.random.Generator,
    open_lines: np.ndarray,
    tastes: np.random.Generator,
) -> tuple[Sessions, Items]:
    """Browsing sessions of ``user`` starting at ``start``.

    ``rng`` draws the sessions and categories, ``tastes`` the staple and linked-complement choices.
    ``open_lines`` holds ``user * n_products + product`` for items of the users' recent carts: such a
    product is swapped for a substitute before it enters a new cart, so that buying it later is always
    the recovery of the cart it came from.
    """
    n = user.size
    loyalty = customers.loyalty[user]
    is_cart = rng.random(n) < np.clip(config.cart_rate * (0.75 + 0.5 * loyalty), 0.0, 1.0)
    n_items = np.where(is_cart, 1 + np.minimum(rng.poisson(0.45, n), 5), 0)
    n_views = np.maximum(np.minimum(rng.geometric(1 / config.views_per_session, n), 60), n_items)
    owner = np.repeat(np.arange(n), n_views)
    first = np.cumsum(n_views) - n_views
    position = np.arange(owner.size) - first[owner]

    category = _favourite(customers.affinity_cdf, user, rng.random(n))[owner]
    r = rng.random(owner.size)
    focus = r < FOCUS_SHARE
    complement = ~focus & (r < FOCUS_SHARE + COMPLEMENT_SHARE)
    category[complement] = catalogue.complement(category[complement], rng.random(int(complement.sum())))
    other = r >= FOCUS_SHARE + COMPLEMENT_SHARE
    category[other] = _favourite(customers.affinity_cdf, user[owner[other]], rng.random(int(other.sum())))
    viewer = user[owner]
    product = catalogue.sample(
        category, rng.random(owner.size), catalogue.tier_index(customers.price_tier)[viewer]
    )
    product = _tastes(
        product, category, focus, complement, owner, first, viewer, customers, catalogue, tastes
    )

    # Which viewed products go into the cart: n_items of the session's views, at random.
    line_view = np.flatnonzero(rank_within(owner, rng.random(owner.size)) < n_items[owner])
    line_product, clear = _avoid_open_lines(
        product[line_view], user[owner[line_view]], start[owner[line_view]], line_view, catalogue, open_lines
    )
    product[line_view] = line_product
    line_view, line_product = line_view[clear], line_product[clear]
    line_session = owner[line_view]
    n_items = np.bincount(line_session, minlength=n)
    is_cart = n_items > 0
    u = rng.random(line_view.size)
    quantity = 1 + (u < 0.12) + (u < 0.03)
    first_line = _starts(line_session)
    removes = (n_items >= 2) & (rng.random(n) < config.remove_rate)
    removed = first_line & removes[line_session]
    value = np.bincount(
        line_session[~removed], (catalogue.price[line_product] * quantity)[~removed], minlength=n
    )

    sensitivity = customers.price_sensitivity[user]
    log_odds = (
        logit(config.purchase_rate)
        + 1.2 * (loyalty - 0.5)
        - 0.6 * sensitivity * np.log(np.maximum(value, 1.0) / 60.0)
        - config.effects.harvest_purchase_drop * customers.harvest_level[user]
    )
    p_purchase = expit(log_odds)
    purchased = is_cart & (rng.random(n) < p_purchase)
    checkout = purchased | (is_cart & (rng.random(n) < config.checkout_without_purchase))

    bought = ~removed & purchased[line_session]
    rank_in_cart = np.arange(line_view.size) - np.searchsorted(line_session, line_session)
    parts: list[Part] = [
        (owner, 4 * position, VIEW, product, 0),
        (line_session, 4 * position[line_view] + 1, ADD, line_product, quantity),
        (line_session[removed], _TAIL, REMOVE, line_product[removed], quantity[removed]),
        (np.flatnonzero(checkout), _TAIL + 1, CHECKOUT, -1, 0),
        (line_session[bought], _TAIL + 2 + rank_in_cart[bought], PURCHASE, line_product[bought],
         quantity[bought]),
    ]  # fmt: skip
    sessions = _assemble(
        user, start, purchased, np.zeros(n), np.full(n, -1), parts, rng, np.where(is_cart, p_purchase, np.nan)
    )
    return sessions, Items(line_session, line_product, quantity, removed)


def returns(
    user: np.ndarray,
    start: np.ndarray,
    cart: np.ndarray,
    coupon: np.ndarray,
    line_owner: np.ndarray,
    line_product: np.ndarray,
    line_quantity: np.ndarray,
    rng: np.random.Generator,
) -> Sessions:
    """Return visits that recover carts: view each item, start checkout, buy them all.

    ``line_owner`` maps each cart line (grouped by owner) to its visit in ``user``/``start``.
    """
    n = user.size
    rank = np.arange(line_owner.size) - np.searchsorted(line_owner, line_owner)
    parts: list[Part] = [
        (line_owner, 4 * rank, VIEW, line_product, 0),
        (np.arange(n), _TAIL + 1, CHECKOUT, -1, 0),
        (line_owner, _TAIL + 2 + rank, PURCHASE, line_product, line_quantity),
    ]
    return _assemble(user, start, np.ones(n, dtype=bool), coupon, cart, parts, rng, np.full(n, np.nan))


def _assemble(
    user: np.ndarray,
    start: np.ndarray,
    purchased: np.ndarray,
    coupon: np.ndarray,
    cart: np.ndarray,
    parts: list[Part],
    rng: np.random.Generator,
    p_purchase: np.ndarray,
) -> Sessions:
    """Order each session's events and space them in time."""
    session = np.concatenate([p[0] for p in parts])

    def column(i: int) -> np.ndarray:
        return np.concatenate([np.broadcast_to(np.asarray(p[i], dtype=np.int64), p[0].shape) for p in parts])

    order = np.argsort(session * _KEY_SHIFT + column(1), kind="stable")
    session, kind = session[order], column(2)[order]
    product, quantity = column(3)[order], column(4)[order]
    gap = np.rint(np.clip(rng.lognormal(np.log(40.0), 0.9, session.size), 2, 1500)).astype(np.int64)
    new = _starts(session)
    gap[new | ((kind == PURCHASE) & (np.roll(kind, 1) == PURCHASE))] = 0
    elapsed = np.cumsum(gap)
    first = np.flatnonzero(new)
    offset = elapsed - np.repeat(elapsed[first], np.diff(np.append(first, session.size)))
    duration = np.zeros(user.size, dtype=np.int64)
    last = np.append(first[1:], session.size)[: first.size] - 1
    duration[session[last]] = offset[last]
    return Sessions(
        user, start, duration, purchased, coupon.astype(float), cart.astype(np.int64), session, offset,
        kind.astype(np.int8), product, quantity, p_purchase.astype(float),
    )  # fmt: skip


def _tastes(
    product: np.ndarray,
    category: np.ndarray,
    focus: np.ndarray,
    complement: np.ndarray,
    owner: np.ndarray,
    first: np.ndarray,
    viewer: np.ndarray,
    customers: Customers,
    catalogue: Catalogue,
    rng: np.random.Generator,
) -> np.ndarray:
    """Views with the customer's staples and the linked complements (see the module docstring)."""
    u = rng.random((product.size, 2))
    staple = customers.staple[viewer, category]
    rate = STAPLE_BASE + STAPLE_LOYALTY * customers.loyalty[viewer]
    product = np.where((staple >= 0) & (u[:, 0] < rate), staple, product)
    # The latest focus view before each view, if it is in the same session.
    latest = np.maximum.accumulate(np.where(focus, np.arange(product.size), -1))
    linked = complement & (latest >= first[owner]) & (u[:, 1] < LINKED_SHARE)
    pick = np.minimum((u[linked, 1] / LINKED_SHARE * LINKS).astype(np.int64), LINKS - 1)
    product[linked] = catalogue.links[product[latest[linked]], pick]
    return product


def view_shares(
    customers: Customers, catalogue: Catalogue, users: np.ndarray, views_per_session: float
) -> np.ndarray:
    """(users, products): each customer's probability that a browsing view of theirs is of each product,
    as :func:`browse` draws it; the ceiling of taste-based recommendations.

    Exact but for one approximation: the share of complement views with a focus view before them in the
    session is taken for sessions of unbounded geometric length (the 60-view cap is ignored).
    """
    k = len(catalogue.category_names)
    cdf = customers.affinity_cdf[users].astype(float)
    affinity = np.diff(cdf, axis=1, prepend=0.0)
    complements = np.zeros((k, k))
    for c in range(k):
        for j in range(int(catalogue.n_complements[c])):
            complements[c, catalogue.complements[c, j]] += 1.0 / catalogue.n_complements[c]
    # Within each category: tier share, with the staple's share moved to the staple.
    within = catalogue.tier_share[catalogue.tier_index(customers.price_tier[users])]
    staple = customers.staple[users][:, catalogue.category]  # (users, products): the staple of j's category
    rate = (STAPLE_BASE + STAPLE_LOYALTY * customers.loyalty[users])[:, None]
    is_staple = staple == np.arange(catalogue.size)
    within = np.where(staple >= 0, (1 - rate) * within + rate * is_staple, within)
    by_category = affinity[:, catalogue.category] * within  # focus and other-favourite views
    by_complement = (affinity @ complements)[:, catalogue.category] * within
    anchor = np.repeat(np.arange(catalogue.size), LINKS)
    links = sp.csr_matrix(
        (np.full(anchor.size, 1.0 / LINKS), (anchor, catalogue.links.ravel())), shape=(catalogue.size,) * 2
    )  # duplicates are summed
    # P(a complement view has a focus view before it): 1 - E[(1 - focus)^position] over views.
    p = 1.0 / views_per_session
    anchored = 1.0 - p / (1.0 - (1.0 - FOCUS_SHARE) * (1.0 - p))
    linked = anchored * LINKED_SHARE
    other = 1.0 - FOCUS_SHARE - COMPLEMENT_SHARE
    return (FOCUS_SHARE + other) * by_category + COMPLEMENT_SHARE * (
        linked * (links.T @ by_category.T).T + (1 - linked) * by_complement
    )


def _starts(values: np.ndarray) -> np.ndarray:
    """True where a run of equal (non-negative) values begins."""
    return np.diff(values, prepend=-1) != 0


def _favourite(affinity_cdf: np.ndarray, user: np.ndarray, u: np.ndarray) -> np.ndarray:
    """A category per entry, drawn from the user's affinities."""
    index = (affinity_cdf[user] < u[:, None].astype(np.float32)).sum(axis=1)
    return np.minimum(index, affinity_cdf.shape[1] - 1)


def _avoid_open_lines(
    product: np.ndarray,
    user: np.ndarray,
    when: np.ndarray,
    tiebreak: np.ndarray,
    catalogue: Catalogue,
    open_lines: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Swap cart products already in a recent cart of the user (or earlier in this batch) for substitutes.

    Returns the products and whether each is clear of conflicts; the few still in conflict after a few
    substitutes (small categories) stay mere views.
    """
    product = product.copy()
    taken = np.sort(open_lines)
    for step in (1, -1, 2, -2, 3, -3, 0):
        key = user * catalogue.size + product
        at = np.minimum(np.searchsorted(taken, key), max(taken.size - 1, 0))
        conflict = taken[at] == key if taken.size else np.zeros(key.size, dtype=bool)
        order = np.lexsort((tiebreak, when, key))
        conflict[order[~_starts(key[order])]] = True
        if not step or not conflict.any():
            break
        product[conflict] = catalogue.substitute(product[conflict], step)
    return product, ~conflict


def place(user: np.ndarray, planned: np.ndarray, duration: np.ndarray, last_end: np.ndarray) -> np.ndarray:
    """Start times at or after ``planned``, each more than 30 minutes after the user's previous session.

    The recurrence ``start_i = max(planned_i, start_(i-1) + duration_(i-1) + gap)`` per user is solved
    without a loop: with ``c_i`` the cumulative durations and gaps before session i, ``start_i - c_i`` is a
    running maximum of ``planned_j - c_j``, floored at ``last_end + gap``.
    """
    if user.size == 0:
        return planned.copy()
    order = np.lexsort((planned, user))
    u, p = user[order], planned[order]
    step = duration[order] + SESSION_GAP
    new = _starts(u)
    group = np.cumsum(new) - 1
    before = np.cumsum(step) - step
    c = before - before[new][group]
    x = p - c
    span = int(x.max() - x.min()) + 1
    x = np.maximum.accumulate(x + group * span) - group * span
    start = np.empty_like(planned)
    start[order] = np.maximum(x, last_end[u] + SESSION_GAP) + c
    return start


class Busy:
    """Recently placed sessions (user, start, end), for fitting return visits in between them."""

    def __init__(self) -> None:
        self.user = np.zeros(0, dtype=np.int64)
        self.start = np.zeros(0, dtype=np.int64)
        self.end = np.zeros(0, dtype=np.int64)
        self.key = np.zeros(0, dtype=np.int64)

    def add(self, user: np.ndarray, start: np.ndarray, end: np.ndarray, keep_after: int) -> None:
        """Record sessions; forget those that ended before ``keep_after``."""
        recent = self.end >= keep_after
        self.user = np.concatenate([self.user[recent], user])
        self.start = np.concatenate([self.start[recent], start])
        self.end = np.concatenate([self.end[recent], end])
        self.key = user_time_key(self.user, self.start)
        order = np.argsort(self.key, kind="stable")
        self.user, self.start, self.end, self.key = (
            a[order] for a in (self.user, self.start, self.end, self.key)
        )

    def fit(self, user: np.ndarray, planned: np.ndarray, duration: np.ndarray, keep_after: int) -> np.ndarray:
        """Start times at or after ``planned`` clear of every recorded session of the user (which are
        added to the record): each visit moves past whichever session it would touch, until it fits."""
        start = planned.copy()
        turn = rank_within(user, planned)
        for k in range(int(turn.max(initial=-1)) + 1):
            mine = np.flatnonzero(turn == k)
            u, a, d = user[mine], start[mine], duration[mine]
            while self.key.size:
                # The last session starting before this visit's end + gap is the only one it can touch.
                i = np.searchsorted(self.key, user_time_key(u, a + d + SESSION_GAP), side="left") - 1
                j = np.maximum(i, 0)
                touch = (i >= 0) & (self.user[j] == u) & (self.end[j] + SESSION_GAP > a)
                if not touch.any():
                    break
                a = np.where(touch, self.end[j] + SESSION_GAP, a)
            start[mine] = a
            self.add(u, a, a + d, keep_after)
        return start


def rank_within(group: np.ndarray, by: np.ndarray) -> np.ndarray:
    """Rank of each entry within its group (0 for the first), ordered by ``by``."""
    order = np.lexsort((by, group))
    new = _starts(group[order])
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size) - np.flatnonzero(new)[np.cumsum(new) - 1]
    return rank


def user_time_key(user: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """Sort key ordering by user, then time (seconds from -2^30, 34 years before the start, to 2^32)."""
    return (user.astype(np.int64) << 33) + (seconds + (1 << 30))
