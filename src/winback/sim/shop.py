"""The simulation loop: day by day, vectorised over that day's sessions and abandoned carts.

Stepping by day is what lets actions feed back into behaviour (unsubscribes, fatigue, shortened
lifetimes, customers learning to wait for coupons) while every step stays a handful of numpy operations
over thousands of rows, so 10M events take seconds, not hours.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from winback.decide.actions import Action
from winback.events.schema import EVENT_SCHEMA, EventType
from winback.sim.response import CART_COLUMNS, Response, natural_delay_hours, p_natural, respond
from winback.sim.world import CHANNEL_NAMES, HOURLY, MONTH, WEEKDAY, Catalogue, Customers, ShopConfig

#: A policy sees the day's abandoned carts (observable columns only) and returns one action per cart.
Policy = Callable[[pd.DataFrame], Sequence[Action]]

TYPES = [t.value for t in EventType]
VIEW, ADD, REMOVE, CHECKOUT, PURCHASE, SENT, OPENED, CLICKED, UNSUBSCRIBED = range(9)
US = 1_000_000  # microseconds per second


@dataclass
class _Events:
    """Columns of events being built (numpy), with properties as indexes into a list of JSON strings."""

    ts: list[np.ndarray] = field(default_factory=list)
    kind: list[np.ndarray] = field(default_factory=list)
    user: list[np.ndarray] = field(default_factory=list)
    session: list[np.ndarray] = field(default_factory=list)
    product: list[np.ndarray] = field(default_factory=list)
    quantity: list[np.ndarray] = field(default_factory=list)
    order: list[np.ndarray] = field(default_factory=list)
    prop: list[np.ndarray] = field(default_factory=list)
    properties: list[str] = field(default_factory=list)

    def add(
        self,
        ts: np.ndarray,
        kind: int | np.ndarray,
        user: np.ndarray,
        session: np.ndarray | int = -1,
        product: np.ndarray | int = -1,
        quantity: np.ndarray | int = 0,
        order: np.ndarray | int = -1,
        prop: np.ndarray | int = -1,
    ) -> None:
        n = ts.size
        self.ts.append(ts.astype(np.int64))
        for name, value, dtype in (
            ("kind", kind, np.int8),
            ("user", user, np.int64),
            ("session", session, np.int64),
            ("product", product, np.int64),
            ("quantity", quantity, np.int16),
            ("order", order, np.int64),
            ("prop", prop, np.int64),
        ):
            getattr(self, name).append(np.broadcast_to(np.asarray(value, dtype=dtype), (n,)).copy())

    def props(self, texts: list[str]) -> np.ndarray:
        start = len(self.properties)
        self.properties.extend(texts)
        return np.arange(start, start + len(texts))

    def columns(self) -> dict[str, np.ndarray]:
        names = ("ts", "kind", "user", "session", "product", "quantity", "order", "prop")
        return {
            n: np.concatenate(getattr(self, n)) if getattr(self, n) else np.zeros(0, np.int64) for n in names
        }


@dataclass
class SimulationResult:
    """What a simulation produced: the event log, and the latent truth behind it."""

    config: ShopConfig
    seed: int
    events: pa.Table  # EVENT_SCHEMA, ordered by time
    customers: pd.DataFrame  # one row per customer: latent traits and final state
    carts: pd.DataFrame  # one row per abandoned cart: what the response model needs, and what happened
    catalogue: Catalogue


def simulate(
    customers: int = 2000,
    days: int = 180,
    seed: int = 0,
    *,
    config: ShopConfig | None = None,
    policy: Policy | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SimulationResult:
    """Simulate a shop's customers for ``days`` days; deterministic for a seed (and policy).

    Parameters
    ----------
    customers, days
        Size of the run (ignored when ``config`` is given).
    seed
        Seeds every random draw.
    config
        All knobs, see :class:`ShopConfig`.
    policy
        Called once a day with that day's abandoned carts; without one nobody is messaged.
    progress
        Called with (days done, days) after each day.

    Examples
    --------
    >>> result = simulate(customers=300, days=30, seed=1)
    >>> result.events.num_rows > 1000
    True
    """
    config = config or ShopConfig(customers=customers, days=days)
    return _Simulation(config, seed, policy).run(progress)


class _Simulation:
    def __init__(self, config: ShopConfig, seed: int, policy: Policy | None) -> None:
        streams = np.random.SeedSequence(seed).spawn(4)
        self.config, self.seed, self.policy = config, seed, policy
        world, self.rng, self.cart_rng = (np.random.default_rng(s) for s in streams[:3])
        self.catalogue = Catalogue.generate(config, world)
        self.people = Customers.generate(config, self.catalogue, world)
        self.out = _Events()
        self.start_us = (
            int(datetime(config.start.year, config.start.month, config.start.day, tzinfo=UTC).timestamp())
            * US
        )
        self.end_us = self.start_us + config.days * 86_400 * US
        self.next_session = 0
        self.next_order = 0
        self.session_user: list[np.ndarray] = []
        self.cart_frames: list[pd.DataFrame] = []
        self.hour_p = HOURLY / HOURLY.sum()

    # -- the loop ---------------------------------------------------------------------------------

    def run(self, progress: Callable[[int, int], None] | None) -> SimulationResult:
        for day in range(self.config.days):
            self.people.recent_messages[:, day % 7] = 0
            self._day(day)
            if progress:
                progress(day + 1, self.config.days)
        return self._result()

    def _day(self, day: int) -> None:
        people, rng = self.people, self.rng
        date = self.config.start + timedelta(days=day)
        alive = np.flatnonzero((people.acquired_day <= day) & (day < people.churn_day))
        season = WEEKDAY[date.weekday()] * MONTH[date.month - 1] / MONTH.mean()
        counts = np.minimum(rng.poisson(people.visit_rate[alive] * season), 3)
        user = np.repeat(alive, counts)
        if user.size == 0:
            return
        nth = np.arange(user.size) - np.repeat(np.cumsum(counts) - counts, counts)  # k-th session today
        hour = rng.choice(24, size=user.size, p=self.hour_p)
        local = (day * 86_400 + hour * 3600 + rng.integers(0, 3600, user.size) + nth * 4 * 3600) * US
        start = self.start_us + local - people.tz_offset[user] * 3600 * US
        self._sessions(user, start, day)

    def _new_sessions(self, user: np.ndarray) -> np.ndarray:
        ids = np.arange(self.next_session, self.next_session + user.size)
        self.next_session += user.size
        self.session_user.append(user)
        return ids

    def _sessions(self, user: np.ndarray, start: np.ndarray, day: int) -> None:
        """Views, cart changes and maybe a checkout and purchase in each of today's sessions."""
        people, cat, rng, cfg = self.people, self.catalogue, self.rng, self.config
        n = user.size
        session = self._new_sessions(user)
        harvest = people.harvest_level[user]
        is_cart = rng.random(n) < cfg.cart_session_share * (0.6 + 0.8 * people.loyalty[user])
        n_views = 1 + rng.poisson(2.5 + 1.5 * is_cart)
        # Views: mostly the favourite categories, some complements, some anything popular.
        owner = np.repeat(np.arange(n), n_views)
        fav = people.favourite[user[owner], rng.integers(0, 2, owner.size)]
        r = rng.random(owner.size)
        category = np.where(r < 0.65, fav, cat.complements[fav, rng.integers(0, 2, owner.size)])
        product = cat.sample(category, rng)
        anything = r > 0.85
        product[anything] = np.searchsorted(np.cumsum(cat.popularity), rng.random(int(anything.sum())))
        product = product.clip(0, cat.price.size - 1)
        gap = np.clip(rng.lognormal(np.log(45), 0.9, owner.size), 3, 900) * US
        first = np.cumsum(n_views) - n_views
        gap[first] = 0
        elapsed = np.cumsum(gap) - np.repeat(np.cumsum(gap)[first], n_views)
        view_ts = (start[owner] + elapsed).astype(np.int64)
        self.out.add(view_ts, VIEW, user[owner], session[owner], product)

        # Carts: the first few viewed products of a cart session go into the cart.
        n_items = np.where(is_cart, np.minimum(n_views, 1 + rng.binomial(2, 0.35, n)), 0)
        pos = np.arange(owner.size) - first[owner]
        in_cart = pos < n_items[owner]
        item_owner, item_product = owner[in_cart], product[in_cart]
        item_qty = 1 + (rng.random(item_owner.size) < 0.12)
        add_ts = view_ts[in_cart] + rng.integers(5, 60, item_owner.size) * US
        self.out.add(add_ts, ADD, user[item_owner], session[item_owner], item_product, item_qty)
        # Some carts lose their last item again (a second thought, a cheaper alternative elsewhere).
        last_item = np.zeros(item_owner.size, dtype=bool)
        last_item[np.cumsum(np.bincount(item_owner, minlength=n))[n_items > 0] - 1] = True
        removed = last_item & (n_items[item_owner] >= 2) & (rng.random(item_owner.size) < 0.15)
        rm_ts = add_ts[removed] + rng.integers(30, 300, int(removed.sum())) * US
        self.out.add(
            rm_ts, REMOVE, user[item_owner[removed]], session[item_owner[removed]], item_product[removed]
        )
        # Price-sensitive customers often swap what they removed for a cheaper substitute.
        gone_owner, gone_product = item_owner[removed], item_product[removed]
        swaps = rng.random(gone_owner.size) < people.price_sensitivity[user[gone_owner]]
        substitute = cat.cheaper_substitute(gone_product[swaps], rng)
        swaps[swaps] = substitute >= 0
        sub_owner, sub_product = gone_owner[swaps], substitute[substitute >= 0]
        sub_ts = rm_ts[swaps] + rng.integers(20, 200, sub_owner.size) * US
        sub_qty = np.ones(sub_owner.size, dtype=np.int64)
        self.out.add(sub_ts, ADD, user[sub_owner], session[sub_owner], sub_product, sub_qty)
        kept = ~removed
        k_owner = np.concatenate([item_owner[kept], sub_owner])
        k_product = np.concatenate([item_product[kept], sub_product])
        k_qty = np.concatenate([item_qty[kept], sub_qty])
        order = np.argsort(k_owner, kind="stable")
        k_owner, k_product, k_qty = k_owner[order], k_product[order], k_qty[order]
        value = np.bincount(k_owner, weights=cat.price[k_product] * k_qty, minlength=n)
        last_ts = np.maximum(view_ts[np.cumsum(n_views) - 1], 0)
        np.maximum.at(last_ts, item_owner, add_ts)
        np.maximum.at(last_ts, gone_owner, rm_ts)
        np.maximum.at(last_ts, sub_owner, sub_ts)

        # Checkout and purchase: price-sensitive customers balk at big carts; harvesters wait for coupons.
        sensitivity = people.price_sensitivity[user]
        p_buy = (
            0.27 * (1.2 - 0.5 * sensitivity * np.minimum(value / 60, 2)) * (0.75 + 0.5 * people.loyalty[user])
        )
        p_buy = np.clip(p_buy * (1 - 0.7 * harvest), 0.02, 0.95)
        buys = is_cart & (rng.random(n) < p_buy)
        checks_out = buys | (is_cart & (rng.random(n) < 0.25))
        checkout_ts = last_ts + rng.integers(30, 180, n) * US
        self.out.add(checkout_ts[checks_out], CHECKOUT, user[checks_out], session[checks_out])
        purchase_ts = checkout_ts + rng.integers(30, 240, n) * US
        self._purchase(buys, purchase_ts, user, session, k_owner, k_product, k_qty)

        carts = is_cart & ~buys
        if carts.any():
            abandoned_at = last_ts[carts] + cfg.idle_minutes * 60 * US
            self._abandoned(
                day,
                user[carts],
                session[carts],
                abandoned_at,
                value[carts],
                np.bincount(k_owner, minlength=n)[carts],
                np.flatnonzero(carts),
                k_owner,
                k_product,
                k_qty,
            )

    def _purchase(
        self,
        buys: np.ndarray,
        ts: np.ndarray,
        user: np.ndarray,
        session: np.ndarray,
        item_owner: np.ndarray,
        item_product: np.ndarray,
        item_qty: np.ndarray,
        prop: np.ndarray | None = None,
    ) -> None:
        """One order per buying session: a purchase line per cart item."""
        order = np.full(buys.size, -1)
        order[buys] = np.arange(self.next_order, self.next_order + int(buys.sum()))
        self.next_order += int(buys.sum())
        line = buys[item_owner]
        owner = item_owner[line]
        self.out.add(
            ts[owner],
            PURCHASE,
            user[owner],
            session[owner],
            item_product[line],
            item_qty[line],
            order[owner],
            -1 if prop is None else prop[owner],
        )

    def _abandoned(
        self,
        day: int,
        user: np.ndarray,
        session: np.ndarray,
        abandoned_at: np.ndarray,
        value: np.ndarray,
        n_items: np.ndarray,
        cart_rows: np.ndarray,
        item_owner: np.ndarray,
        item_product: np.ndarray,
        item_qty: np.ndarray,
    ) -> None:
        """Decide (policy or nothing), realise each cart's response, emit messages and recoveries."""
        people, cfg = self.people, self.config
        m = user.size
        u = self.cart_rng.random((m, 5))
        carts: dict[str, np.ndarray] = {
            "cart_id": session.copy(),
            "user": user,
            "session": session,
            "abandoned_at_us": abandoned_at,
            "value": np.round(value, 2),
            "n_items": n_items,
            "p_natural": p_natural(
                people.forgetfulness[user], people.loyalty[user], people.harvest_level[user]
            ),
            "forgetfulness": people.forgetfulness[user],
            "price_sensitivity": people.price_sensitivity[user],
            "loyalty": people.loyalty[user],
            "harvest_level": people.harvest_level[user].copy(),
            "messages_last_week": people.messages_last_week(user),
            "u_rec": u[:, 0],
            "u_time": u[:, 1],
            "u_open": u[:, 2],
            "u_lag": u[:, 3],
            "u_unsub": u[:, 4],
        }
        for i, ch in enumerate(CHANNEL_NAMES):
            carts[f"can_{ch}"] = people.consent[user, i] & ~people.unsubscribed[user, i]
            carts[f"responsiveness_{ch}"] = people.responsiveness[user, i]
        actions = self._decide(carts)
        names = np.array([a.name for a in actions])
        recovered = np.zeros(m, dtype=bool)
        hours = np.full(m, np.nan)
        via = np.zeros(m, dtype=bool)
        coupon = np.zeros(m)
        for action in {a.name: a for a in actions}.values():
            rows = np.flatnonzero(names == action.name)
            r = respond({c: carts[c][rows] for c in CART_COLUMNS}, action, cfg)
            recovered[rows], hours[rows], via[rows] = r.recovered, r.recovered_after_hours, r.via_message
            coupon[rows] = action.coupon
            if action.is_message:
                self._messages(day, action, rows, carts, r)
        carts["action"] = names
        carts["recovered"] = recovered
        carts["recovered_at_us"] = np.where(recovered, abandoned_at + np.nan_to_num(hours) * 3600 * US, 0)
        carts["natural_delay_hours"] = natural_delay_hours(carts["u_time"])
        carts["discount"] = np.where(via, coupon * carts["value"], 0.0)
        self.cart_frames.append(pd.DataFrame(carts))
        self._recoveries(carts, recovered, via, coupon, cart_rows, item_owner, item_product, item_qty)

    def _decide(self, carts: dict[str, np.ndarray]) -> list[Action]:
        m = carts["user"].size
        if self.policy is None:
            return [Action()] * m
        observable = pd.DataFrame(
            {
                "cart_id": [f"s{c}" for c in carts["cart_id"]],
                "user_id": [self._user_id(u) for u in carts["user"]],
                "abandoned_at": pd.to_datetime(carts["abandoned_at_us"], unit="us", utc=True),
                "value": carts["value"],
                "n_items": carts["n_items"],
                **{f"can_{ch}": carts[f"can_{ch}"] for ch in CHANNEL_NAMES},
            }
        )
        actions = list(self.policy(observable))
        if len(actions) != m:
            raise ValueError(f"the policy returned {len(actions)} actions for {m} carts")
        return actions

    def _messages(
        self, day: int, action: Action, rows: np.ndarray, carts: dict[str, np.ndarray], r: Response
    ) -> None:
        """message_sent / opened / clicked / unsubscribed events, and what they do to the customer."""
        assert action.channel is not None
        people, out = self.people, self.out
        ch = CHANNEL_NAMES.index(action.channel)
        user = carts["user"][rows]
        send_ts = carts["abandoned_at_us"][rows] + action.delay_hours * 3600 * US
        lag = (0.1 + 2.0 * carts["u_lag"][rows]) * 3600 * US
        texts = [
            f'{{"action":"{action.name}","cart_id":"s{c}","channel":"{action.channel}"}}'
            for c in carts["cart_id"][rows]
        ]
        prop = out.props(texts)
        s = r.sent
        out.add(send_ts[s], SENT, user[s], prop=prop[s])
        o = r.opened
        open_ts = send_ts + (lag * 0.5).astype(np.int64)
        out.add(open_ts[o], OPENED, user[o], prop=prop[o])
        c = r.via_message
        click_ts = send_ts + lag.astype(np.int64) - 60 * US
        out.add(click_ts[c], CLICKED, user[c], prop=prop[c])
        un = r.unsubscribed
        out.add(open_ts[un] + 60 * US, UNSUBSCRIBED, user[un], prop=prop[un])
        # Feedback: fatigue, unsubscribes and harvesting change the customer from now on.
        np.add.at(people.recent_messages, (user[s], day % 7), 1)
        people.unsubscribed[user[un], ch] = True
        # Every message costs a little goodwill (more when they pile up); an unsubscribe costs a lot.
        remaining = people.churn_day[user] - day
        shrink = np.where(s, 0.98, 1.0) * np.where(people.messages_last_week(user) >= 3, 0.95, 1.0)
        shrink = np.where(un, 0.6, shrink)
        people.churn_day[user] = np.where(remaining > 0, day + remaining * shrink, people.churn_day[user])
        if action.kind == "coupon":
            learner = user[o]
            people.harvest_level[learner] = np.minimum(
                1.0, people.harvest_level[learner] + 0.5 * people.harvest_propensity[learner]
            )

    def _recoveries(
        self,
        carts: dict[str, np.ndarray],
        recovered: np.ndarray,
        via: np.ndarray,
        coupon: np.ndarray,
        cart_rows: np.ndarray,
        item_owner: np.ndarray,
        item_product: np.ndarray,
        item_qty: np.ndarray,
    ) -> None:
        """A later session that views the cart again and buys it (with the coupon, if it came by one)."""
        if not recovered.any():
            return
        rng = self.rng
        rec = np.flatnonzero(recovered)
        user = carts["user"][rec]
        session = self._new_sessions(user)
        ts = carts["recovered_at_us"][rec].astype(np.int64)
        # Map the day's cart items to the recovered carts (index within ``rec``).
        position = np.full(int(max(cart_rows.max(), item_owner.max(initial=0))) + 1, -1)
        position[cart_rows[rec]] = np.arange(rec.size)
        line = position[item_owner]
        has = line >= 0
        owner, product, qty = line[has], item_product[has], item_qty[has]
        self.out.add(
            ts[owner] + rng.integers(5, 60, owner.size) * US, VIEW, user[owner], session[owner], product
        )
        checkout_ts = ts + 120 * US
        self.out.add(checkout_ts, CHECKOUT, user, session)
        texts = [
            f'{{"coupon":"WINBACK{round(c * 100)}","discount":{c * v:.2f}}}' if f and c > 0 else ""
            for f, c, v in zip(via[rec], coupon[rec], carts["value"][rec], strict=True)
        ]
        prop = np.where(np.array([bool(t) for t in texts]), self.out.props(texts), -1)
        self._purchase(
            np.ones(rec.size, dtype=bool), checkout_ts + 90 * US, user, session, owner, product, qty, prop
        )

    # -- results ----------------------------------------------------------------------------------

    def _user_id(self, index: int) -> str:
        return f"u{index:0{len(str(self.config.customers))}d}"

    def _result(self) -> SimulationResult:
        cols = self.out.columns()
        session_user = np.concatenate(self.session_user) if self.session_user else np.zeros(0, np.int64)
        cols["ts"] = _space_sessions(cols["ts"], cols["session"], session_user)
        keep = (cols["ts"] >= self.start_us) & (cols["ts"] < self.end_us)
        order = np.lexsort((cols["kind"][keep], cols["user"][keep], cols["ts"][keep]))
        cols = {k: v[keep][order] for k, v in cols.items()}
        events = self._table(cols)
        carts = pd.concat(self.cart_frames, ignore_index=True) if self.cart_frames else pd.DataFrame()
        return SimulationResult(
            self.config, self.seed, events, self._customers(), self._carts(carts), self.catalogue
        )

    def _table(self, c: dict[str, np.ndarray]) -> pa.Table:
        n = c["ts"].size
        cat, cfg = self.catalogue, self.config
        width = len(str(cfg.customers))
        pwidth = len(str(cat.price.size))
        has_product = c["product"] >= 0
        product = np.where(has_product, c["product"], 0)

        def ids(prefix: str, values: np.ndarray, valid: np.ndarray | None = None, pad: int = 0) -> pa.Array:
            text = pc.cast(pa.array(values), pa.string())
            if pad:
                text = pc.utf8_lpad(text, pad, "0")
            joined = pc.binary_join_element_wise(prefix, text, "")
            return (
                pc.if_else(pa.array(valid), joined, pa.nulls(n, pa.string())) if valid is not None else joined
            )

        props = np.array([*self.out.properties, ""], dtype=object)[np.where(c["prop"] >= 0, c["prop"], -1)]
        arrays = {
            "event_id": ids(f"sim-{self.seed}-", np.arange(n), pad=len(str(n))),
            "event_type": pa.DictionaryArray.from_arrays(pa.array(c["kind"]), pa.array(TYPES)).cast(
                pa.string()
            ),
            "timestamp": pa.array(c["ts"], type=pa.timestamp("us", tz="UTC")),
            "user_id": ids("u", c["user"], pad=width),
            "anonymous_id": pa.nulls(n, pa.string()),
            "session_id": ids("s", c["session"], c["session"] >= 0),
            "product_id": ids("p", product, has_product, pad=pwidth),
            "category": pc.if_else(
                pa.array(has_product),
                pa.DictionaryArray.from_arrays(
                    pa.array(cat.category[product]), pa.array(cat.category_names)
                ).cast(pa.string()),
                pa.nulls(n, pa.string()),
            ),
            "price": pa.array(cat.price[product], mask=~has_product),
            "quantity": pa.array(c["quantity"].astype(np.int32), mask=c["quantity"] <= 0),
            "order_id": ids("o", c["order"], c["order"] >= 0),
            "value": pa.nulls(n, pa.float64()),
            "currency": pa.array(np.full(n, cfg.currency, dtype=object), pa.string()),
            "properties": pa.array(props, pa.string(), mask=c["prop"] < 0),
        }
        return pa.Table.from_pydict(arrays, schema=EVENT_SCHEMA)

    def _customers(self) -> pd.DataFrame:
        p, cfg = self.people, self.config
        start = pd.Timestamp(cfg.start, tz="UTC")
        frame = pd.DataFrame(
            {
                "user_id": [self._user_id(i) for i in range(p.size)],
                "price_sensitivity": p.price_sensitivity,
                "forgetfulness": p.forgetfulness,
                "loyalty": p.loyalty,
                "sessions_per_week": p.visit_rate * 7,
                "tz_offset_hours": p.tz_offset,
                "acquired_at": start + pd.to_timedelta(p.acquired_day, unit="D"),
                "churned_at": start + pd.to_timedelta(p.churn_day, unit="D"),
                "alive_at_end": p.churn_day > cfg.days,
                "harvest_propensity": p.harvest_propensity,
                "harvest_level": p.harvest_level,
                "favourite_categories": [
                    ",".join(self.catalogue.category_names[k] for k in row) for row in p.favourite
                ],
            }
        )
        for i, ch in enumerate(CHANNEL_NAMES):
            frame[f"consent_{ch}"] = p.consent[:, i]
            frame[f"unsubscribed_{ch}"] = p.unsubscribed[:, i]
            frame[f"responsiveness_{ch}"] = p.responsiveness[:, i]
        return frame

    def _carts(self, carts: pd.DataFrame) -> pd.DataFrame:
        if carts.empty:
            return carts
        carts = carts.assign(
            cart_id=["s" + str(c) for c in carts["cart_id"]],
            user_id=[self._user_id(u) for u in carts["user"]],
            session_id=["s" + str(c) for c in carts["session"]],
            abandoned_at=pd.to_datetime(carts["abandoned_at_us"], unit="us", utc=True),
            recovered_at=pd.to_datetime(
                carts["recovered_at_us"].where(carts["recovered"]), unit="us", utc=True
            ),
        )
        return carts.drop(columns=["user", "session", "abandoned_at_us", "recovered_at_us"])


def _space_sessions(ts: np.ndarray, session: np.ndarray, session_user: np.ndarray) -> np.ndarray:
    """Push sessions later until each starts over 31 minutes after the user's previous one ended.

    Sessions are generated independently (today's visits, a recovery days later), so two could touch;
    a real log would show them as one, and the store's 30-minute sessionisation would merge them.
    """
    n_sessions = session_user.size
    if n_sessions == 0:
        return ts
    has = session >= 0
    start = np.full(n_sessions, np.iinfo(np.int64).max)
    end = np.full(n_sessions, np.iinfo(np.int64).min)
    np.minimum.at(start, session[has], ts[has])
    np.maximum.at(end, session[has], ts[has])
    used = start <= end
    shift = np.zeros(n_sessions, dtype=np.int64)
    order = np.flatnonzero(used)
    for _ in range(50):
        o = order[np.lexsort((start[order] + shift[order], session_user[order]))]
        same_user = session_user[o][1:] == session_user[o][:-1]
        gap = (start[o][1:] + shift[o][1:]) - (end[o][:-1] + shift[o][:-1])
        need = same_user & (gap < 31 * 60 * US)
        if not need.any():
            break
        shift[o[1:][need]] += 31 * 60 * US - gap[need] + 60 * US
    out = ts.copy()
    out[has] += shift[session[has]]
    return out
