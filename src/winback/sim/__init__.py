"""A shop simulator with known causal effects: the default data of the demo and the truth for policies.

Real logs never show what would have happened under another action. The simulator makes customers with
latent traits (price sensitivity, forgetfulness, loyalty, channel consent and responsiveness, time zone,
a lifetime that ends, a propensity to learn coupon harvesting), a catalogue with categories, prices, a
power-law popularity and complement categories, and lets them visit, view, fill and abandon carts, buy,
and come back, with seasonality by local hour, weekday and month. For every abandoned cart it knows what
the customer would do under each action of :mod:`winback.decide.actions` (see :mod:`.response` for the
model and its effect sizes), with common random numbers so differences between actions are exact.

>>> from winback.sim import simulate, expected_outcomes
>>> from winback.decide.actions import Action
>>> result = simulate(customers=500, days=60, seed=7)
>>> table = expected_outcomes(result.carts, [Action(), Action.parse("reminder/email/24h")], result.config)
>>> sorted(table["action"].unique())
['nothing', 'reminder/email/24h']
"""

from winback.sim.output import write_events, write_truth
from winback.sim.response import CART_COLUMNS, expected_outcomes, realised_outcomes, respond
from winback.sim.shop import Policy, SimulationResult, simulate
from winback.sim.world import ShopConfig

__all__ = [
    "CART_COLUMNS",
    "Policy",
    "ShopConfig",
    "SimulationResult",
    "expected_outcomes",
    "realised_outcomes",
    "respond",
    "simulate",
    "write_events",
    "write_truth",
]
