"""The simulation loop: local day by local day, vectorised over that day's sessions and abandoned carts.

Stepping by day is what lets actions feed back into behaviour (unsubscribes, fatigue, shortened
lifetimes, customers learning to wait for coupons, return visits) while every step stays a few hundred
numpy operations over thousands of rows. Each step:

1. applies coupon harvesting learnt from coupons opened before the day;
2. draws the day's visits of customers alive that day (Poisson in visit rate x season), at local hours,
   generates their sessions (:func:`~winback.sim.sessions.browse`) and places them so a user's sessions
   never touch;
3. fits in the return visits due that day (carts recovered naturally or through a message);
4. hands the day's abandoned carts to the policy (nothing without one), realises each cart's response
   (:func:`~winback.sim.response.realise`), emits message events, updates the customers, and schedules
   return visits.

Each cart's outcome is its own realisation of the per-cart model, so the exact expectation on the cart's
recorded facts (:func:`~winback.sim.response.expected_outcomes` on :attr:`SimulationResult.carts`) is
the truth of the outcome the log shows. What one cart does to another reaches it only through those
facts, taken at its abandonment: consent and messages in the last 7 days (refreshed turn by turn for a
user's carts of one day), harvest level and ``p_natural``. A recovered cart's return visit always
happens (unless it falls after the end of the run), at the realised time or just after the customer's
other sessions (``recovered_at`` is where it started), and it buys only that cart's items; a new cart
never holds an item of the customer's carts of the last 8 days (:func:`~winback.sim.sessions.browse`
swaps it), so no other purchase recovers or pre-empts a cart, and a customer who comes back is kept
alive until the visit ends. The decision log's rewards (``recovered``, ``discount``, ``sent``) are
therefore draws whose mean is the expectation: on a 20,000-customer shop the per-arm gaps between the
two are within sampling error (see ``tests/decide/test_logged_truth.py``).

Times are whole seconds from the start date's UTC midnight until the event table is built.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from winback.decide.actions import Action
from winback.events.schema import EVENT_SCHEMA, EVENT_TYPES
from winback.sim.catalogue import Catalogue
from winback.sim.config import CHANNELS, ShopConfig
from winback.sim.customers import DAY, Customers
from winback.sim.ids import prefixed
from winback.sim.response import (
    CLICK_AFTER_OPEN,
    UNIFORMS,
    UNSUBSCRIBE_AFTER_OPEN,
    Actions,
    Treatments,
    expected_outcomes,
    natural_delay_hours,
    natural_probability,
    realise,
    realised_outcomes,
)
from winback.sim.sessions import (
    CLICKED,
    HOURLY,
    OPENED,
    PURCHASE,
    SENT,
    UNSUBSCRIBED,
    Busy,
    Items,
    Sessions,
    browse,
    day_factor,
    place,
    rank_within,
    returns,
    user_time_key,
)

#: A policy sees the day's abandoned carts (observable columns: ``cart_id``, ``user_id``,
#: ``abandoned_at``, ``value``, ``n_items``, ``consent_email``, ``consent_sms``, ``consent_push``) and
#: returns one action per cart, in order.
Policy = Callable[[pd.DataFrame], Sequence[Action]]

WEEK = 7 * DAY
#: Event columns while the run accumulates them, as compact as their ranges allow (10M events: 0.4 GB).
_EVENT_COLUMNS: dict[str, type[np.generic]] = {
    "ts": np.int64, "type": np.int8, "user": np.int32, "session": np.int32, "product": np.int32,
    "quantity": np.int8, "order": np.int32, "discount": np.float64, "special": np.int32,
}  # fmt: skip
_MESSAGE, _COUPON = 0, 1  # kinds of event properties
#: Columns of :attr:`SimulationResult.cart_sessions`.
CART_SESSION_COLUMNS = ("session_id", "user_id", "started_at", "p_purchase", "purchased")


def purchase_probability_after_checkout(p_purchase: np.ndarray, config: ShopConfig) -> np.ndarray:
    """The true purchase probability of a cart once its ``checkout_start`` was seen.

    In-session, ``checkout = purchased | (cart & u < c)`` with ``c = config.checkout_without_purchase``
    drawn independently, so by Bayes ``P(purchase | checkout) = p / (p + (1 - p) c)``. Before a
    checkout is seen, the probability is ``p_purchase`` itself.

    Examples
    --------
    >>> round(float(purchase_probability_after_checkout(np.array([0.5]), ShopConfig())[0]), 4)  # c = 0.3
    0.7692
    """
    p = np.asarray(p_purchase, dtype=float)
    c = config.checkout_without_purchase
    return p / (p + (1.0 - p) * c)


@dataclass
class SimulationResult:
    """What a simulation produced: the event log, and the latent truth behind it.

    Attributes
    ----------
    events
        The event log (:data:`winback.events.schema.EVENT_SCHEMA`), ordered by time.
    customers
        One row per customer: latent traits and final state.
    carts
        One row per abandoned cart: what was in it, the customer's state and traits at abandonment,
        its random numbers, the natural outcome, the action taken and what happened.
    products
        One row per product: category, price, popularity.
    cart_sessions
        One row per browsing session with a cart (bought in-session or not), in the order they were
        logged: ``session_id`` (the log's ``s<N>``, which is the ``cart_id`` of winback's cart
        features), ``user_id``, ``started_at``, ``p_purchase`` (the true probability the purchase was
        drawn from, given the customer's traits and the cart's final contents) and ``purchased`` (the
        draw). A ``checkout_start`` reveals part of the draw: after it the probability of a purchase is
        ``p / (p + (1 - p) c)`` with ``c = config.checkout_without_purchase`` (see
        :func:`purchase_probability_after_checkout`). Return visits (which always buy) are not here.
        A session that starts before the end of the run but would end after it keeps its row, though
        the log loses its later events.
    """

    config: ShopConfig
    seed: int
    events: pa.Table
    customers: pd.DataFrame
    carts: pd.DataFrame
    products: pd.DataFrame
    cart_sessions: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=list(CART_SESSION_COLUMNS))
    )

    def expected_outcomes(self, actions: Actions) -> pd.DataFrame:
        """:func:`~winback.sim.response.expected_outcomes` of ``actions`` on this shop's carts."""
        return expected_outcomes(self.carts, actions, self.config)

    def realised_outcomes(self, actions: Actions) -> pd.DataFrame:
        """:func:`~winback.sim.response.realised_outcomes` of ``actions`` on this shop's carts."""
        return realised_outcomes(self.carts, actions, self.config)


def simulate(
    customers: int | None = None,
    days: int | None = None,
    seed: int = 0,
    *,
    config: ShopConfig | None = None,
    policy: Policy | None = None,
    progress: Callable[[float, float], None] | None = None,
) -> SimulationResult:
    """Simulate a shop; the same seed (and policy) gives the same result.

    Parameters
    ----------
    customers, days
        Size of the run; when given they override ``config``.
    seed
        Seeds every random draw (through ``numpy.random.SeedSequence``).
    config
        All other knobs; :class:`ShopConfig` defaults if None.
    policy
        Called once per simulated day with that day's abandoned carts; without one nobody is messaged.
    progress
        Called with (steps done, steps) after each simulated day.

    Returns
    -------
    SimulationResult

    Examples
    --------
    >>> result = simulate(customers=300, days=30, seed=1)
    >>> result.events.num_rows > 1000
    True
    """
    config = config or ShopConfig()
    if customers is not None:
        config = replace(config, customers=customers)
    if days is not None:
        config = replace(config, days=days)
    return _Run(config, seed, policy).run(progress)


@dataclass
class _Log:
    """Output accumulated step by step, as numpy chunks."""

    events: list[dict[str, np.ndarray]] = field(default_factory=list)
    carts: list[dict[str, np.ndarray]] = field(default_factory=list)
    lines: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # (cart, product)
    returned: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # (cart, visit start)
    specials: list[tuple[np.ndarray, ...]] = field(default_factory=list)  # (kind, code, cart)
    #: Browsing sessions with a cart: (session id, user, start, p_purchase, purchased).
    cart_sessions: list[tuple[np.ndarray, ...]] = field(default_factory=list)
    n_specials: int = 0

    def add_events(self, **columns: np.ndarray) -> None:
        """Log events, one array per column of ``_EVENT_COLUMNS``."""
        self.events.append({name: np.asarray(columns[name], dtype) for name, dtype in _EVENT_COLUMNS.items()})

    def event_columns(self) -> dict[str, np.ndarray]:
        """All logged events by column (the chunks are released column by column)."""
        out = {}
        for name, dtype in _EVENT_COLUMNS.items():
            out[name] = np.concatenate([chunk.pop(name) for chunk in self.events] or [np.zeros(0, dtype)])
        self.events = []
        return out

    def special(self, kind: int, code: np.ndarray, cart: np.ndarray) -> np.ndarray:
        """Register event properties (a message's by action, a coupon order's by coupon); their indexes."""
        self.specials.append((np.full(cart.size, kind), code, cart))
        self.n_specials += cart.size
        return np.arange(self.n_specials - cart.size, self.n_specials)


class _Run:
    def __init__(self, config: ShopConfig, seed: int, policy: Policy | None) -> None:
        self.config, self.seed, self.policy = config, seed, policy
        world, steps = np.random.SeedSequence(seed).spawn(2)
        # Brands, links, price tiers and staples have a stream of their own, so the draws of the rest are
        # those of a shop without them.
        catalogue_seed, customer_seed, taste_seed = world.spawn(3)
        catalogue_details, customer_tastes = (np.random.default_rng(s) for s in taste_seed.spawn(2))
        self.catalogue = Catalogue.generate(
            config.products, config.n_categories, np.random.default_rng(catalogue_seed), catalogue_details
        )
        self.people = Customers.generate(
            config, self.catalogue, np.random.default_rng(customer_seed), customer_tastes
        )
        self.user_ids = self.people.user_ids()
        self.steps = config.days + 2  # local days -1 .. days cover every UTC second of the run
        self.step_seeds = steps.spawn(self.steps)
        self.horizon = config.days * DAY
        self.busy = Busy()
        self.pending: Sessions | None = None  # return visits not yet due
        self.open_lines: list[tuple[int, np.ndarray]] = []  # (day, user * n_products + product)
        self.sent: list[tuple[int, np.ndarray]] = []  # (last send time, key of user and send time)
        self.learning: list[tuple[np.ndarray, np.ndarray]] = []  # (day it takes effect, user)
        self.actions: list[Action] = []
        self.action_code: dict[Action, int] = {}
        self.coupons: list[float] = []
        self.coupon_code: dict[float, int] = {}
        self.next_session = self.next_order = self.next_cart = 0
        self.log = _Log()

    def run(self, progress: Callable[[float, float], None] | None) -> SimulationResult:
        for step in range(self.steps):
            self._day(step - 1, self.step_seeds[step])
            if progress:
                progress(step + 1, self.steps)
        return self._result()

    # -- one day ------------------------------------------------------------------------------------

    def _day(self, day: int, seed: np.random.SeedSequence) -> None:
        people, cfg = self.people, self.config
        visits_rng, carts_rng, tastes_rng = (np.random.default_rng(s) for s in seed.spawn(3))
        self._learn(day)
        # Visits on the local calendar day: alive customers, Poisson in rate x season, at local hours.
        alive = np.flatnonzero(
            (people.acquired_at < (day + 1) * DAY + 14 * 3600) & (people.churn_at > day * DAY - 14 * 3600)
        )
        factor = day_factor(cfg.start + timedelta(days=day))
        user = np.repeat(alive, visits_rng.poisson(people.visit_rate[alive] * factor))
        hour = visits_rng.choice(24, size=user.size, p=HOURLY / HOURLY.sum())
        local = day * DAY + hour * 3600 + visits_rng.integers(0, 3600, user.size)
        planned = local - self._utc_offset_seconds(user)
        ok = (
            (planned >= np.maximum(people.acquired_at[user], 0))
            & (planned < people.churn_at[user])
            & (planned < self.horizon)
        )
        sessions, items = browse(
            user[ok], planned[ok], people, self.catalogue, cfg, visits_rng, self._open_lines(day), tastes_rng
        )
        sessions.start = place(sessions.user, sessions.start, sessions.duration, people.last_end)
        end = sessions.start + sessions.duration
        keep = (end < people.churn_at[sessions.user]) & (sessions.start < self.horizon)
        sessions, items, end = sessions.take(keep), items.take(keep), end[keep]
        self.busy.add(sessions.user, sessions.start, end, keep_after=(day - 3) * DAY)
        np.maximum.at(people.last_end, sessions.user, end)
        session_ids = self._emit(sessions)

        if self.pending is not None:
            due = self._local_day(self.pending.user, self.pending.start) <= day
            self._return(self.pending.take(due), day)
            self.pending = self.pending.take(~due)
        abandoned = (np.bincount(items.session, minlength=sessions.size) > 0) & ~sessions.purchased
        if abandoned.any():
            self._abandoned(day, sessions.take(abandoned), items.take(abandoned), session_ids[abandoned],
                            carts_rng, visits_rng)  # fmt: skip

    def _utc_offset_seconds(self, user: np.ndarray) -> np.ndarray:
        return np.rint(self.people.utc_offset[user] * 3600).astype(np.int64)

    def _local_day(self, user: np.ndarray, seconds: np.ndarray) -> np.ndarray:
        return (seconds + self._utc_offset_seconds(user)) // DAY

    def _learn(self, day: int) -> None:
        """Harvest learning from coupons opened before ``day``: level -> 1 - (1-level)(1-rate x p)^k."""
        if not self.learning:
            return
        due_day, user = (np.concatenate(x) for x in zip(*self.learning, strict=True))
        now = due_day <= day
        self.learning = [(due_day[~now], user[~now])]
        people, rate = self.people, self.config.effects.harvest_learning
        learners, times = np.unique(user[now], return_counts=True)
        keep = (1 - rate * people.harvest_propensity[learners]) ** times
        people.harvest_level[learners] = 1 - (1 - people.harvest_level[learners]) * keep

    def _open_lines(self, day: int) -> np.ndarray:
        """Keys of the items of carts abandoned in the last 8 local days (7 days' window, plus time zones)."""
        self.open_lines = [(d, k) for d, k in self.open_lines if d >= day - 8]
        return np.concatenate([k for _, k in self.open_lines]) if self.open_lines else np.zeros(0, np.int64)

    def _return(self, visits: Sessions, day: int) -> None:
        """Fit return visits in between the users' other sessions, and emit them."""
        if visits.size == 0:
            return
        people = self.people
        visits.start = self.busy.fit(visits.user, visits.start, visits.duration, keep_after=(day - 3) * DAY)
        visits = visits.take(visits.start < self.horizon)
        end = visits.start + visits.duration
        np.maximum.at(people.last_end, visits.user, end)
        np.maximum.at(people.churn_at, visits.user, end + 1)  # a customer who comes back is not gone yet
        self.log.returned.append((visits.cart, visits.start))
        self._emit(visits)

    def _emit(self, s: Sessions) -> np.ndarray:
        """Give sessions and orders their ids and log their events; the session ids."""
        ids = self.next_session + np.arange(s.size)
        self.next_session += s.size
        order = np.full(s.size, -1)
        order[s.purchased] = self.next_order + np.arange(int(s.purchased.sum()))
        self.next_order += int(s.purchased.sum())
        special = np.full(s.size, -1)
        coupon = s.coupon > 0
        if coupon.any():
            fractions, which = np.unique(s.coupon[coupon], return_inverse=True)
            codes = np.array([self._coupon_code(float(f)) for f in fractions])
            special[coupon] = self.log.special(_COUPON, codes[which], s.cart[coupon])
        carted = ~np.isnan(s.p_purchase)
        self.log.cart_sessions.append(
            (ids[carted], s.user[carted], s.start[carted], s.p_purchase[carted], s.purchased[carted])
        )
        e = s.event_session
        bought = s.event_type == PURCHASE
        self.log.add_events(
            ts=s.start[e] + s.event_offset,
            type=s.event_type,
            user=s.user[e],
            session=ids[e],
            product=s.event_product,
            quantity=s.event_quantity,
            order=np.where(bought, order[e], -1),
            discount=np.where(bought, s.coupon[e], 0.0),
            special=np.where(bought, special[e], -1),
        )
        return ids

    def _code(self, action: Action) -> int:
        if action not in self.action_code:
            self.action_code[action] = len(self.actions)
            self.actions.append(action)
        return self.action_code[action]

    def _coupon_code(self, fraction: float) -> int:
        if fraction not in self.coupon_code:
            self.coupon_code[fraction] = len(self.coupons)
            self.coupons.append(fraction)
        return self.coupon_code[fraction]

    # -- abandoned carts ------------------------------------------------------------------------------

    def _abandoned(
        self,
        day: int,
        sessions: Sessions,
        items: Items,
        session_ids: np.ndarray,
        rng: np.random.Generator,
        visits_rng: np.random.Generator,
    ) -> None:
        """Decide, realise the response, message, and schedule the return visits of abandoned carts.

        The policy decides once for the day; a user's carts of the day are then realised in turns, so
        that each sees the consent and fatigue its predecessors' messages left at its abandonment.
        """
        self.open_lines.append((day, sessions.user[items.session] * self.catalogue.size + items.product))
        lines = items.lines(~items.removed)
        facts = self._facts(sessions, lines, session_ids, rng)
        codes, treatments = self._decide(facts)
        turn = rank_within(facts["user"], facts["abandoned_at"])
        out: dict[str, np.ndarray] = {}
        for k in range(int(turn.max()) + 1):
            rows = np.flatnonzero(turn == k)
            mine = {name: column[rows] for name, column in facts.items()}
            if k:
                self._state_at_abandonment(mine)
                for name in ("messages_7d", *(f"consent_{c}" for c in CHANNELS)):
                    facts[name][rows] = mine[name]
            t = treatments.take(rows)
            realised = realise(mine, t, self.config)
            for name, column in realised.items():
                out.setdefault(name, np.zeros(turn.size, dtype=column.dtype))[rows] = column
            self._message(mine, t, codes[rows], realised)
            self._schedule_returns(day, mine, t, realised, rows, lines, visits_rng)

        natural = facts["u_recover"] < facts["p_natural"]
        delay = np.rint(natural_delay_hours(facts["u_time"], self.config.effects) * 3600).astype(np.int64)
        at = facts["abandoned_at"]
        self.log.carts.append(
            {
                **facts,
                "natural_recovered": natural,
                "natural_recovery_at": np.where(natural, at + delay, -1),
                "action": codes,
                **{key: out[key] for key in ("sent", "opened", "clicked", "unsubscribed", "recovered")},
                "recovered_at": np.where(out["recovered"], at + out["recovery_offset"], -1),
                "discount": out["discount"],
            }
        )
        self.log.lines.append((facts["cart"][lines.session], lines.product))

    def _schedule_returns(
        self,
        day: int,
        facts: dict[str, np.ndarray],
        t: Treatments,
        out: dict[str, np.ndarray],
        rows: np.ndarray,
        lines: Items,
        rng: np.random.Generator,
    ) -> None:
        """Return visits of the recovered carts among ``rows`` of the day's carts (at the coupon's discount
        if they came through an opened coupon): those due today are fitted now, later ones on their day."""
        back = out["recovered"]
        position = np.cumsum(back) - 1  # among the recovered carts
        mine = np.isin(lines.session, rows[back])
        cart = np.searchsorted(rows, lines.session[mine])  # index into ``rows``
        visits = returns(
            facts["user"][back], (facts["abandoned_at"] + out["recovery_offset"])[back], facts["cart"][back],
            np.where(out["opened"], t.coupon, 0.0)[back], position[cart], lines.product[mine],
            lines.quantity[mine], rng,
        )  # fmt: skip
        today = self._local_day(visits.user, visits.start) <= day
        self._return(visits.take(today), day)
        later = visits.take(~today & (visits.start < self.horizon))
        self.pending = later if self.pending is None else self.pending.concat(later)

    def _facts(
        self, sessions: Sessions, lines: Items, session_ids: np.ndarray, rng: np.random.Generator
    ) -> dict[str, np.ndarray]:
        """One entry per abandoned cart: what it holds, the customer's traits and state, its uniforms."""
        people, k, user = self.people, sessions.size, sessions.user
        cart = self.next_cart + np.arange(k)
        self.next_cart += k
        at = sessions.start + sessions.duration
        price = self.catalogue.price[lines.product] * lines.quantity
        value = np.round(np.bincount(lines.session, price, minlength=k), 2)
        harvest = people.harvest_level[user].copy()
        uniforms = rng.random((k, len(UNIFORMS)))
        facts = {
            "cart": cart,
            "user": user,
            "session": session_ids,
            "abandoned_at": at,
            "value": value,
            "n_items": np.bincount(lines.session, minlength=k),
            "utc_offset_hours": people.utc_offset[user],
            **{f"open_{c}": people.open_probability[user, i] for i, c in enumerate(CHANNELS)},
            "price_sensitivity": people.price_sensitivity[user],
            "forgetfulness": people.forgetfulness[user],
            "loyalty": people.loyalty[user],
            "harvest_propensity": people.harvest_propensity[user],
            "harvest_level": harvest,
            "p_natural": natural_probability(
                people.loyalty[user], people.forgetfulness[user], value, harvest, self.config
            ),
            **{name: uniforms[:, i] for i, name in enumerate(UNIFORMS)},
        }
        self._state_at_abandonment(facts)
        return facts

    def _state_at_abandonment(self, facts: dict[str, np.ndarray]) -> None:
        """Refresh consent and fatigue: earlier carts of the day may have messaged the customer since."""
        user, at = facts["user"], facts["abandoned_at"]
        consent = self.people.consented_at(user, at)
        for i, channel in enumerate(CHANNELS):
            facts[f"consent_{channel}"] = consent[:, i]
        facts["messages_7d"] = self._messages_7d(user, at)

    def _decide(self, facts: dict[str, np.ndarray]) -> tuple[np.ndarray, Treatments]:
        """The policy's actions (nothing without a policy), as registry codes and treatment arrays."""
        k = facts["cart"].size
        if self.policy is None:
            return np.full(k, self._code(Action())), Treatments.repeat(Action(), k)
        observable = pd.DataFrame(
            {
                "cart_id": prefixed("c", facts["cart"]).to_numpy(zero_copy_only=False),
                "user_id": self.user_ids[facts["user"]],
                "abandoned_at": self._timestamps(facts["abandoned_at"]),
                "value": facts["value"],
                "n_items": facts["n_items"],
                **{f"consent_{c}": facts[f"consent_{c}"] for c in CHANNELS},
            }
        )
        chosen = list(self.policy(observable))
        if len(chosen) != k:
            raise ValueError(f"the policy returned {len(chosen)} actions for {k} carts")
        index, distinct = pd.factorize(pd.Series(chosen, dtype=object))
        actions = [a if isinstance(a, Action) else Action.parse(str(a)) for a in distinct]
        codes = np.array([self._code(a) for a in actions], dtype=np.int64)[index]
        return codes, Treatments.of(actions).take(index)

    def _messages_7d(self, user: np.ndarray, at: np.ndarray) -> np.ndarray:
        """Messages sent to each user in the 7 days before ``at``."""
        window = int(at.min(initial=0)) - WEEK - DAY  # a day's margin: time zones reorder the days
        self.sent = [(last, keys) for last, keys in self.sent if last >= window]
        if not self.sent:
            return np.zeros(user.size, dtype=np.int64)
        keys = np.sort(np.concatenate([k for _, k in self.sent]))
        now, week_ago = user_time_key(user, at), user_time_key(user, at - WEEK)
        return np.searchsorted(keys, now) - np.searchsorted(keys, week_ago)

    def _message(
        self, facts: dict[str, np.ndarray], t: Treatments, codes: np.ndarray, out: dict[str, np.ndarray]
    ) -> None:
        """Message events, and what messages do to the customers: unsubscribes, churn, harvest learning."""
        sent = np.flatnonzero(out["sent"])
        if sent.size == 0:
            return
        people, e = self.people, self.config.effects
        user, at = facts["user"][sent], facts["abandoned_at"][sent]
        send = at + out["send_offset"][sent]
        opening = at + out["open_offset"][sent]
        opened, left = out["opened"][sent], out["unsubscribed"][sent]
        special = self.log.special(_MESSAGE, codes[sent], facts["cart"][sent])
        for kind, mask, ts in (
            (SENT, np.ones(sent.size, dtype=bool), send),
            (OPENED, opened, opening),
            (CLICKED, out["clicked"][sent], opening + CLICK_AFTER_OPEN),
            (UNSUBSCRIBED, left, opening + UNSUBSCRIBE_AFTER_OPEN),
        ):
            n = int(mask.sum())
            self.log.add_events(
                ts=ts[mask], type=np.full(n, kind), user=user[mask], session=np.full(n, -1),
                product=np.full(n, -1), quantity=np.zeros(n), order=np.full(n, -1), discount=np.zeros(n),
                special=special[mask],
            )  # fmt: skip
        self.sent.append((int(send.max()), user_time_key(user, send)))

        flat = people.unsubscribed_at.reshape(-1)
        where = user[left] * len(CHANNELS) + t.channel[sent][left]
        np.minimum.at(flat, where, opening[left] + UNSUBSCRIBE_AFTER_OPEN)
        # Repeated messages and unsubscribes shorten what is left of the lifetime, from the first send.
        log_factor = -e.churn_per_recent_message * facts["messages_7d"][sent]
        log_factor += left * np.log(e.unsubscribe_lifetime_factor)
        hit, inverse = np.unique(user, return_inverse=True)
        since = np.full(hit.size, np.iinfo(np.int64).max)
        np.minimum.at(since, inverse, send)
        remaining = people.churn_at[hit] - since
        shortened = since + (remaining * np.exp(np.bincount(inverse, log_factor))).astype(np.int64)
        people.churn_at[hit] = np.where(
            remaining > 0, np.maximum(shortened, people.last_end[hit] + 1), people.churn_at[hit]
        )
        learnt = opened & (t.coupon[sent] > 0)
        if learnt.any():
            self.learning.append((self._local_day(user[learnt], opening[learnt]) + 1, user[learnt]))

    # -- results ------------------------------------------------------------------------------------

    def _timestamps(self, seconds: np.ndarray) -> pd.DatetimeIndex:
        origin = pd.Timestamp(self.config.start, tz="UTC")
        return pd.DatetimeIndex(origin + pd.to_timedelta(seconds, unit="s"))

    def _result(self) -> SimulationResult:
        return SimulationResult(
            config=self.config,
            seed=self.seed,
            events=self._events(),
            customers=self.people.to_frame(
                self.config.start, self.config.days, self.catalogue.category_names, self.user_ids
            ),
            carts=self._carts(),
            products=self.catalogue.to_frame(),
            cart_sessions=self._cart_sessions(),
        )

    def _cart_sessions(self) -> pd.DataFrame:
        if not self.log.cart_sessions:
            return pd.DataFrame(columns=list(CART_SESSION_COLUMNS))
        ids, user, start, p, purchased = (
            np.concatenate(x) for x in zip(*self.log.cart_sessions, strict=True)
        )
        return pd.DataFrame(
            {
                "session_id": prefixed("s", ids).to_numpy(zero_copy_only=False),
                "user_id": self.user_ids[user],
                "started_at": self._timestamps(start),
                "p_purchase": p,
                "purchased": purchased.astype(bool),
            }
        )

    def _events(self) -> pa.Table:
        c = self.log.event_columns()
        keep = (c["ts"] >= 0) & (c["ts"] < self.horizon)
        order = np.flatnonzero(keep)[np.argsort(c["ts"][keep], kind="stable")]
        for name in c:  # one column at a time, to hold one extra copy at most
            c[name] = c[name][order]
        n = order.size
        product = c["product"]
        has = product >= 0
        safe = np.where(has, product, 0)
        price = np.round(self.catalogue.price[safe] * (1 - c["discount"]), 2)
        origin = int(pd.Timestamp(self.config.start, tz="UTC").value // 1000)
        columns = {
            "event_id": prefixed(f"sim-{self.seed}-", np.arange(n)),
            "event_type": pa.array(EVENT_TYPES).take(pa.array(c["type"].astype(np.int32))),
            "timestamp": pa.array(origin + c["ts"] * 1_000_000, pa.timestamp("us", tz="UTC")),
            "user_id": pa.array(self.user_ids, pa.string()).take(pa.array(c["user"])),
            "anonymous_id": pa.nulls(n, pa.string()),
            "session_id": prefixed("s", c["session"], valid=c["session"] >= 0),
            "product_id": self.catalogue.product_ids().take(pa.array(safe, mask=~has)),
            "category": pa.array(self.catalogue.category_names).take(
                pa.array(self.catalogue.category[safe], mask=~has)
            ),
            "brand": pa.array(self.catalogue.brand_names).take(
                pa.array(self.catalogue.brand[safe], mask=~has)
            ),
            "price": pa.array(price, mask=~has),
            "quantity": pa.array(c["quantity"].astype(np.int32), mask=c["quantity"] <= 0),
            "order_id": prefixed("o", c["order"], valid=c["order"] >= 0),
            "value": pa.nulls(n, pa.float64()),
            "currency": pc.if_else(pa.array(has), self.config.currency, pa.scalar(None, pa.string())),
            "properties": self._properties().take(pa.array(c["special"], mask=c["special"] < 0)),
        }
        return pa.table(columns, schema=EVENT_SCHEMA)

    def _properties(self) -> pa.Array:
        """JSON properties of messages and coupon orders, by their index in the log."""
        if not self.log.specials:
            return pa.array([], pa.string())
        kind, code, cart = (np.concatenate(x) for x in zip(*self.log.specials, strict=True))
        heads = [f'{{"action":"{a.name}","channel":"{a.channel}","cart_id":"' for a in self.actions] + [
            f'{{"coupon":"WINBACK{round(c * 100, 6):g}","discount":{c:g},"cart_id":"' for c in self.coupons
        ]
        head = pa.array(heads).take(pa.array(np.where(kind == _COUPON, len(self.actions), 0) + code))
        return pc.binary_join_element_wise(head, prefixed("c", cart), '"}', "")

    def _carts(self) -> pd.DataFrame:
        if not self.log.carts:
            return pd.DataFrame(columns=["cart_id", "user_id", "recovered"])
        c = {name: np.concatenate([chunk[name] for chunk in self.log.carts]) for name in self.log.carts[0]}
        if self.log.returned:  # where the return visit really started (after the user's other sessions)
            cart, start = (np.concatenate(x) for x in zip(*self.log.returned, strict=True))
            c["recovered_at"][cart] = start
        line_cart, line_product = (np.concatenate(x) for x in zip(*self.log.lines, strict=True))
        order = np.argsort(line_cart, kind="stable")
        offsets = np.concatenate([[0], np.cumsum(np.bincount(line_cart, minlength=c["cart"].size))])
        items = pa.ListArray.from_arrays(
            pa.array(offsets.astype(np.int32)),
            self.catalogue.product_ids().take(pa.array(line_product[order])),
        )

        def when(seconds: np.ndarray) -> pd.Series:
            return pd.Series(self._timestamps(np.maximum(seconds, 0))).where(seconds >= 0)

        frame = pd.DataFrame(
            {
                "cart_id": prefixed("c", c.pop("cart")).to_numpy(zero_copy_only=False),
                "user_id": self.user_ids[c.pop("user")],
                "session_id": prefixed("s", c.pop("session")).to_numpy(zero_copy_only=False),
                "abandoned_at": self._timestamps(c.pop("abandoned_at")),
                "value": c.pop("value"),
                "n_items": c.pop("n_items"),
                "items": items.to_pandas(),
            }
        )
        for name, column in c.items():
            frame[name] = column
        frame["action"] = np.array([a.name for a in self.actions], dtype=object)[c["action"]]
        for name in ("natural_recovery_at", "recovered_at"):
            frame[name] = when(c[name])
        return frame
