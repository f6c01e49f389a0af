"""A simulated shop that ran winback with a permanent holdout: its event log and its decision log.

Measurement needs a shop whose messages were sent to some customers and withheld from a random
others; the simulator can run one, and knows what each cart would have done under every action, so
the holdout analysis can be checked against the truth. :func:`simulate_with_holdout` runs the shop as
``winback plan --policy random`` would have (the customers of the permanent holdout get nothing; every
other abandoned cart gets an action drawn uniformly among :data:`~winback.decide.plan.RANDOMISED_ACTIONS`
on the channels its customer consented to, with its exact propensity) and returns the decisions as the
decision log records them, one per abandoned cart, decided when the cart was abandoned.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from winback.config import Settings
from winback.decide.actions import CHANNELS, NOTHING, Action
from winback.decide.catalogue import Catalogue, load_catalogue
from winback.decide.holdout import DEFAULT_SALT, DEFAULT_SHARE, in_holdout
from winback.decide.log import DecisionLog
from winback.decide.outcomes import OutcomeReport, record_outcomes
from winback.decide.plan import RANDOMISED_ACTIONS
from winback.decide.policy import RandomPolicy, consent_mask
from winback.events.store import EventStore
from winback.features.engine import open_source
from winback.sim import ShopConfig, SimulationResult, simulate

__all__ = ["HoldoutLogger", "SimulatedLog", "simulate_with_holdout", "store_simulated"]

#: The policy name the simulated decisions are logged under (what ``winback plan --policy random`` logs).
POLICY = "random"


class HoldoutLogger:
    """The simulator's policy hook: nothing for the holdout's customers, a random action for the others;
    every decision is recorded as the decision log would hold it."""

    def __init__(
        self,
        actions: Sequence[str] = RANDOMISED_ACTIONS,
        *,
        share: float = DEFAULT_SHARE,
        salt: str = DEFAULT_SALT,
        seed: int = 0,
    ) -> None:
        self.actions = [Action.parse(a) for a in actions]
        self.share, self.salt = share, salt
        self.random = RandomPolicy(self.actions, seed=seed, name=POLICY, version=f"sim-{seed}")
        self.rows: list[pd.DataFrame] = []

    def __call__(self, carts: pd.DataFrame) -> list[Action]:
        held = np.array(in_holdout(carts["user_id"].tolist(), self.share, self.salt), dtype=bool)
        decisions = self.random.decide_batch(carts, self.actions, consent_mask(carts, self.actions))
        chosen = [NOTHING if h else d.action for h, d in zip(held, decisions, strict=True)]
        propensity = [1.0 if h else d.propensity for h, d in zip(held, decisions, strict=True)]
        consent = [
            sorted(c for c in CHANNELS if row[f"consent_{c}"])
            for row in carts[[f"consent_{c}" for c in CHANNELS]].to_dict("records")
        ]
        self.rows.append(
            pd.DataFrame(
                {
                    "cart_id": carts["cart_id"].to_numpy(),
                    "action": [a.name for a in chosen],
                    "propensity": propensity,
                    "holdout": held,
                    "consent": consent,
                }
            )
        )
        return chosen

    def log(self) -> pd.DataFrame:
        columns = ["cart_id", "action", "propensity", "holdout", "consent"]
        return pd.concat(self.rows, ignore_index=True) if self.rows else pd.DataFrame(columns=columns)


@dataclass
class SimulatedLog:
    """A shop simulated under :class:`HoldoutLogger` and its decisions (:class:`~winback.decide.log.
    DecisionLog` columns, without outcomes: ``winback outcomes`` reads them from the events)."""

    shop: SimulationResult
    decisions: pd.DataFrame


def simulate_with_holdout(
    seed: int,
    config: ShopConfig | None = None,
    *,
    share: float = DEFAULT_SHARE,
    actions: Sequence[str] = RANDOMISED_ACTIONS,
    progress: Callable[[float, float], None] | None = None,
) -> SimulatedLog:
    """Simulate a shop (``config``, default :class:`ShopConfig`) whose abandoned carts were decided by
    winback with a permanent holdout of ``share`` of the customers; see the module docstring."""
    logger = HoldoutLogger(actions, share=share, seed=seed)
    shop = simulate(seed=seed, config=config or ShopConfig(), policy=logger, progress=progress)
    logged = logger.log()
    carts = shop.carts.merge(
        logged.rename(columns={"action": "logged"}), on="cart_id", how="inner", validate="one_to_one"
    )
    if (carts["logged"] != carts["action"]).any():
        raise AssertionError("the simulator applied other actions than the logged ones")
    delay = pd.to_timedelta([Action.parse(a).delay_hours or 0.0 for a in carts["action"]], unit="h")
    messaged = carts["action"] != NOTHING.name
    held_reason = [f"holdout: in the permanent control group ({share:.0%} of customers)"]
    reasons = [held_reason if h else ["random: drawn among the consented actions"] for h in carts["holdout"]]
    context = [
        json.dumps({"subject": "cart", "value": float(v), "consent": c, "consent_known": True})
        for v, c in zip(carts["value"], carts["consent"], strict=True)
    ]
    decisions = pd.DataFrame(
        {
            "decided_at": carts["abandoned_at"],
            # the event store's cart is the session the items were added in
            "cart_id": carts["session_id"].astype(str),
            "user_id": carts["user_id"].astype(str),
            "policy": POLICY,
            "version": logger.random.version,
            "action": carts["action"],
            "propensity": carts["propensity"].astype(float),
            "send_at": (carts["abandoned_at"] + delay).where(messaged),
            "holdout": carts["holdout"].astype(bool),
            "reasons": reasons,
            "context": context,
        }
    )
    return SimulatedLog(shop, decisions.sort_values("decided_at", kind="stable", ignore_index=True))


def store_simulated(
    settings: Settings, log: SimulatedLog, catalogue: Catalogue | None = None
) -> OutcomeReport:
    """Store ``log``'s events in the home's event store and its decisions in the decision log, and record
    their outcomes from the events as ``winback outcomes`` does; what recording the outcomes did."""
    with EventStore(settings) as store:
        store.append(log.shop.events, source="simulated")
    with DecisionLog(settings) as decisions:
        decisions.append(log.decisions)
        with open_source(settings) as source:
            return record_outcomes(
                decisions,
                source.events,
                catalogue or load_catalogue(),
                window_days=settings.recovery_window_days,
            )
