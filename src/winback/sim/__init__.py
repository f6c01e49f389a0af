"""A shop simulator with known causal effects: the default data of the demo and the truth for policies.

Real logs never show what would have happened under another action, so the simulator generates a shop
whose causal structure is known, and keeps the truth:

- a catalogue (:mod:`.catalogue`): categories with plausible prices, Zipf popularity, brands with a
  price position, complement categories and, per product, linked complement products, substitutes of
  similar price, replenishable categories;
- customers (:mod:`.customers`) with latent price sensitivity, forgetfulness, loyalty, channel consent
  and responsiveness, time zone, category affinities, a price tier (the price-sensitive buy the cheaper
  products of a category), a staple product in each replenishable category, visit rate, acquisition
  and churn dates, and a coupon-harvesting propensity; what each customer views, product by product,
  is known exactly (:func:`.sessions.view_shares`), the ceiling recommenders are measured against;
- their sessions, local day by local day (:mod:`.sessions`, :mod:`.shop`), seasonal by local hour,
  weekday and month;
- for every abandoned cart, what the customer would do under each action of
  :mod:`winback.decide.actions` (:mod:`.response`, with the effect sizes of :class:`Effects`): exact
  expectations in closed form, and realisations with the cart's own random numbers (common to all
  actions, so differences between actions are exact);
- an optional policy that acts on each day's abandoned carts, whose messages, coupon orders,
  unsubscribes, fatigue-shortened lifetimes and learnt coupon harvesting feed back into the run;
- for every browsing cart, the true probability its in-session purchase was drawn from
  (``SimulationResult.cart_sessions``): the ceiling an abandonment model can be measured against.

Measured with the defaults (2,000 customers, 120 days): about 5 events and 4.4 views per session, a
quarter of sessions add to cart, 70% of carts are abandoned, 15% of abandoned carts come back within
7 days with no action (the log agrees with the truth cart by cart), e-mail opens 44%, sessions of a user
always more than 30 minutes apart and events within a session less than 25 minutes apart; November and
December bring about 1.4 times the visits per customer of the other months. Size: see
:class:`ShopConfig`; 10M events take about 20 s on 2 cores (``bench/bench_simulate.py``).

>>> from winback.sim import simulate
>>> shop = simulate(customers=500, days=60, seed=7)
>>> table = shop.expected_outcomes(["nothing", "reminder/email/24h"])
>>> sorted(table["action"].unique())
['nothing', 'reminder/email/24h']
"""

from winback.sim.config import Effects, ShopConfig
from winback.sim.output import write_events, write_truth
from winback.sim.response import CART_COLUMNS, expected_outcomes, realised_outcomes
from winback.sim.shop import (
    CART_SESSION_COLUMNS,
    Policy,
    SimulationResult,
    purchase_probability_after_checkout,
    simulate,
)

__all__ = [
    "CART_COLUMNS",
    "CART_SESSION_COLUMNS",
    "Effects",
    "Policy",
    "ShopConfig",
    "SimulationResult",
    "expected_outcomes",
    "purchase_probability_after_checkout",
    "realised_outcomes",
    "simulate",
    "write_events",
    "write_truth",
]
