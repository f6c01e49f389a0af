"""A sequential policy for multi-step flows: fitted Q iteration with LightGBM as the Q function.

At each decision point of a flow (1, 6, 24 and 72 hours after abandonment, :data:`DECISION_HOURS`),
while the cart has not been recovered and fewer than three messages are scheduled, the policy chooses
to send nothing now or one step of :data:`OFFERS` at that delay (on a channel the customer consented
to). Its state is what a shop observes: the cart's and customer's observable features (those of
:func:`winback.decide.evaluate.observable_features`: cart value, items, consent and point-in-time
history from the event log; never the simulator's latent traits), the hours since abandonment, the
messages already scheduled in this flow and the largest coupon already offered in it. Opens are left
out of the state on purpose: then the policy's choices depend only on what it scheduled itself, so
its whole flow for a cart is fixed in advance (the send-time re-check stops it once the cart
recovers) and the simulator can score it exactly (:func:`winback.sim.flows.expected_flow`).

**Data** (:func:`log_trajectories`): the shop's own log of a randomised multi-step period. Each
training cart gets a flow drawn by a randomising logging policy with known propensities (at each
point: nothing with probability ``p_wait``, else one of the offers its consent allows, uniformly, while
fewer than three are scheduled), realised with :func:`winback.sim.flows.realise_flow` on that cart's
own random numbers: what the shop sent, what was opened, whether and when the cart was recovered and
through which step, the discount paid. (In the simulator the training shop itself ran a one-action
randomised period; these flows are replayed on the same carts as if the shop had run a multi-step one,
without feeding back into the event log.) A decision point is in the log only if the cart had not
recovered by then. The reward of a decision is what the shop booked until the next decision point:
minus the channel cost of the step sent, plus, if the cart was recovered in that interval, the margin on
it (``margin_rate x value``) minus the discount paid. So the return of a whole flow is the margin of the
eventual purchase minus discount minus channel costs.

**Fitting** (:class:`FittedQPolicy`): fitted Q iteration in its finite-horizon form, backward over the
decision points (the hours since abandonment index the Q function): at the last point Q learns the
reward; at each earlier one the reward plus the value of the best allowed action at the next point
under the Q just fitted there (zero once the cart has recovered or the flow has ended), so one pass of
four fits gives the optimal values of the problem the log describes. At each point the Q function is
gradient-boosted trees: a baseline LightGBM regressor on every logged action's rows, and per action
(nothing and each offer) a small LightGBM head for its difference from the baseline on its own rows,
``Q(s, a) = baseline(s) + head_a(s)``; all on the reward per unit of cart value (a margin rate, so
every cart counts alike). Separate heads each relearning the baseline differed by their own errors and
picked noise (a 1 h SMS looked best for thousands of carts; 1.08 per cart on the tuning shop against
3.28 with the shared baseline). The maximum over noisy estimates is biased upwards, so the fits are
cross-fitted in two folds of carts and the next point's value is double-Q: the action one fold's Q
chooses, valued by the other fold's, averaged both ways (3.12 per cart on the tuning shop with one
fold and a plain maximum). The policy takes the action of highest mean Q over the folds, nothing unless
an offer beats it; propensity 1.

**Pessimism** (:data:`PESSIMISM`): an offer is chosen only when its Q less ``pessimism`` standard errors
of its estimated difference from nothing still beats waiting (the standard error of the mean of each
action's rows, per fold; the backward targets follow the same rule, so they value the policy that is
run). The gains the log can show are a few thousandths of the cart value, and on a 20,000-customer shop
each offer has about 400-1,300 rows per fold and point, so several of nine offers lie within one
standard error of waiting: without it, the largest of those noisy estimates decided the flow of
thousands of carts at once (at 20,000 customers 72 of the 80 heads have too few rows for a tree and
are their action's mean, so one choice holds for every cart of a consent pattern). On the tuning shops
(seeds 100-104, never the reported ones) it sent a 1 h SMS or push reminder first, whose reactance made
that first step alone lose 0.52 per cart (seed 100); with two standard errors the first step earns
+1.32 and the whole flow 3.21 instead of 1.88 (docs/decide.md has the measurements).

Examples
--------
>>> [a.name for a in offers_at(24)][:2]
['reminder/email/24h', 'reminder+recs/email/24h']
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from winback.decide.actions import CHANNELS, NOTHING, Action
from winback.decide.context import DecisionContext
from winback.decide.policy import Decision, consent_mask
from winback.errors import BadInputError
from winback.sim.config import ShopConfig
from winback.sim.flows import MAX_STEPS, FlowEffects, Steps, realise_flow
from winback.sim.response import CART_COLUMNS

__all__ = [
    "BASE_PARAMS",
    "DECISION_HOURS",
    "OFFERS",
    "PESSIMISM",
    "Q_PARAMS",
    "STATE",
    "FittedQPolicy",
    "Trajectories",
    "log_trajectories",
    "offers_at",
]

#: When the policy decides, in hours after abandonment.
DECISION_HOURS: tuple[int, ...] = (1, 6, 24, 72)
#: What it may send at a decision point (at that point's delay): reminders and coupons with
#: recommendations on every channel, and the plain e-mail reminder of the static flows.
OFFERS: tuple[str, ...] = (
    "reminder/email",
    "reminder+recs/email",
    "coupon5+recs/email",
    "coupon10+recs/email",
    "coupon15+recs/email",
    "reminder+recs/sms",
    "coupon10+recs/sms",
    "reminder+recs/push",
    "coupon10+recs/push",
)
#: The flow's own state, after the cart's observable features.
STATE: tuple[str, ...] = ("hours", "sent_in_flow", "coupon_in_flow")
#: LightGBM settings of the baseline model of each decision point (every logged action's rows) and of
#: each action's head (its difference from the baseline, on its own rows: few, shallow trees on
#: well-populated leaves, as rewards are noisy and action effects small). Chosen on a tuning shop
#: (seed 100), never on the seeds reported.
BASE_PARAMS: dict[str, Any] = {
    "num_iterations": 100,
    "num_leaves": 15,
    "min_data_in_leaf": 200,
    "learning_rate": 0.05,
    "lambda_l2": 1.0,
}
#: Standard errors an offer's estimated gain over waiting must clear (the module docstring): chosen on
#: tuning shops (20,000 customers, seeds 100-104: 1.5, 2 and 2.5 earned 1.23, 1.22 and 1.22x the uplift
#: policy on the same shops, none 0.91x; 60,000 customers, seeds 100-101: 1.08, 1.09, 1.10x, none 0.98x).
PESSIMISM = 2.0
Q_PARAMS: dict[str, Any] = {
    "num_iterations": 40,
    "num_leaves": 3,
    "min_data_in_leaf": 1000,
    "learning_rate": 0.1,
    "lambda_l2": 1.0,
}


def offers_at(hours: float, offers: Sequence[str] = OFFERS) -> list[Action]:
    """The offers as actions sent ``hours`` after abandonment."""
    return [Action.parse(f"{offer}/{hours:g}h") for offer in offers]


def _offer_of(action: Action) -> str:
    return action.name.rsplit("/", 1)[0]


# --------------------------------------------------------------------------- the log


@dataclass(frozen=True)
class Trajectories:
    """A randomised multi-step period as the shop logs it.

    Attributes
    ----------
    transitions
        One row per decision point a cart reached: ``row`` (the cart's position in the carts given),
        ``point`` (index into :data:`DECISION_HOURS`), the state (:data:`STATE`), ``action`` (``nothing``
        or an offer, e.g. ``coupon10+recs/email``), ``propensity`` (of the logging policy), ``reward``
        (booked until the next decision point), ``value``, ``alive_next`` (whether the cart reached
        the next decision point undecided), and the next state ``next_sent_in_flow``,
        ``next_coupon_in_flow``.
    flows
        Each cart's flow as scheduled (action names).
    outcome
        :func:`~winback.sim.flows.realise_flow`'s per-cart totals.
    """

    transitions: pd.DataFrame
    flows: list[tuple[str, ...]]
    outcome: dict[str, NDArray[Any]]


def log_trajectories(
    carts: pd.DataFrame,
    config: ShopConfig,
    *,
    p_wait: float = 0.5,
    offers: Sequence[str] = OFFERS,
    hours: Sequence[int] = DECISION_HOURS,
    effects: FlowEffects | None = None,
    seed: int = 0,
) -> Trajectories:
    """Draw a randomised flow for every cart, realise it, and cut it into decision-point transitions.

    ``carts`` needs the simulator's columns (:data:`~winback.sim.response.CART_COLUMNS`): the flows are
    realised with each cart's own random numbers; only the outcome a shop sees goes into the log.
    """
    if not 0 < p_wait < 1:
        raise BadInputError(f"p_wait {p_wait}: expected a probability strictly between 0 and 1")
    missing = [c for c in CART_COLUMNS if c not in carts.columns]
    if missing:
        raise BadInputError(f"carts: missing columns {missing}; expected the simulator's cart table")
    n, rng = len(carts), np.random.default_rng(seed)
    catalogue = [offers_at(h, offers) for h in hours]
    consent = consent_mask(carts, catalogue[0])
    scheduled = np.zeros(n, dtype=np.int64)
    coupon = np.zeros(n)
    plan = np.full((n, len(hours)), -1, dtype=np.int64)  # offer index per point, -1 for nothing
    propensity = np.ones((n, len(hours)))
    state = np.zeros((n, len(hours), 2))
    for i in range(len(hours)):
        state[:, i, 0], state[:, i, 1] = scheduled, coupon
        allowed = consent & (scheduled < MAX_STEPS)[:, None]
        m = allowed.sum(axis=1)
        send = (rng.random(n) >= p_wait) & (m > 0)
        k = np.floor(rng.random(n) * np.maximum(m, 1)).astype(np.int64)
        pick = (allowed.cumsum(axis=1) > k[:, None]).argmax(axis=1)
        plan[send, i] = pick[send]
        propensity[:, i] = np.where(m > 0, np.where(send, (1 - p_wait) / np.maximum(m, 1), p_wait), 1.0)
        scheduled += send
        coupon = np.where(send, np.maximum(coupon, [catalogue[i][j].coupon for j in pick]), coupon)
    flows = [tuple(catalogue[i][j].name for i, j in enumerate(row) if j >= 0) for row in plan.tolist()]
    facts = {c: carts[c].to_numpy() for c in CART_COLUMNS}
    out = realise_flow(facts, Steps.of(flows), config, effects)
    rows = np.arange(n)
    step_of = np.cumsum(plan >= 0, axis=1) - 1  # the flow step a point's offer is
    recovered_at = np.where(out["recovered"], out["recovery_offset"], np.iinfo(np.int64).max)
    alive = np.zeros((n, len(hours) + 1), dtype=bool)
    reward = np.zeros((n, len(hours)))
    earned = config.margin_rate * carts["value"].to_numpy(dtype=float) - out["discount"]
    for i, h in enumerate(hours):
        planned = plan[:, i] >= 0
        k = np.maximum(step_of[:, i], 0)
        reached = out["step_reached"][rows, k].astype(bool)
        alive[:, i] = np.where(planned, reached, recovered_at >= h * 3600)
        until = hours[i + 1] * 3600 if i + 1 < len(hours) else np.iinfo(np.int64).max
        back = (recovered_at >= h * 3600) & (recovered_at < until)
        reward[:, i] = np.where(planned, -out["step_cost"][rows, k], 0.0) + np.where(back, earned, 0.0)
    for i in range(len(hours) - 1):  # the next point is reached only by carts alive with room to decide
        alive[:, i + 1] &= alive[:, i]
    frames = []
    for i, h in enumerate(hours):
        on = np.flatnonzero(alive[:, i])
        nxt = min(i + 1, len(hours) - 1)
        frames.append(
            pd.DataFrame(
                {
                    "row": on, "point": i, "hours": float(h), "sent_in_flow": state[on, i, 0],
                    "coupon_in_flow": state[on, i, 1],
                    "action": np.array(["nothing", *offers], dtype=object)[plan[on, i] + 1],
                    "propensity": propensity[on, i], "reward": reward[on, i],
                    "value": carts["value"].to_numpy(dtype=float)[on],
                    "alive_next": alive[on, i + 1] if i + 1 < len(hours) else np.zeros(on.size, dtype=bool),
                    "next_sent_in_flow": state[on, nxt, 0] if i + 1 < len(hours) else np.zeros(on.size),
                    "next_coupon_in_flow": state[on, nxt, 1] if i + 1 < len(hours) else np.zeros(on.size),
                }
            )
        )  # fmt: skip
    transitions = pd.concat(frames, ignore_index=True)
    return Trajectories(transitions, flows, {k: v for k, v in out.items() if np.ndim(v) == 1})


# --------------------------------------------------------------------------- the policy


class _Head:
    """One action's fitted booster, or its mean when it had too few rows; ``se`` is the standard error
    of its rows' mean (how well its data pins the action's value down)."""

    def __init__(self, booster: Any | None, constant: float, se: float = 0.0) -> None:
        self.booster, self.constant, self.se = booster, constant, se

    def predict(self, M: NDArray[np.float64]) -> NDArray[np.float64]:  # noqa: N803
        if self.booster is None:
            return np.full(M.shape[0], self.constant)
        return np.asarray(self.booster.predict(M, num_threads=1), dtype=float)


class FittedQPolicy:
    """Fitted Q iteration over multi-step flows (see the module docstring).

    Parameters
    ----------
    features
        The cart and customer feature columns of the state (before :data:`STATE`).
    offers, hours
        The offers and decision points (:data:`OFFERS`, :data:`DECISION_HOURS`).
    base_params, params
        LightGBM settings of each decision point's baseline (:data:`BASE_PARAMS`) and of each action's
        head (:data:`Q_PARAMS`).
    folds
        Cross-fitting folds of carts (2: double Q); 1 fits once on everything (plain maximum).
    pessimism
        Standard errors an offer's estimated gain over nothing must clear (:data:`PESSIMISM`; 0: the
        plain maximum).
    seed, threads
        Seed of the folds and LightGBM; threads of each fit.
    name, version
        Recorded with every decision.

    Attributes
    ----------
    heads_
        Per fold, per decision point, per action (``nothing``, then each offer), the fitted head.
    n_transitions_
        Transitions learnt from.
    """

    def __init__(
        self,
        features: Sequence[str],
        *,
        offers: Sequence[str] = OFFERS,
        hours: Sequence[int] = DECISION_HOURS,
        base_params: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        folds: int = 2,
        pessimism: float = PESSIMISM,
        seed: int = 0,
        threads: int = 1,
        name: str = "fitted-q",
        version: str = "1",
    ) -> None:
        self.features = tuple(features)
        self.offers = tuple(offers)
        self.hours = tuple(hours)
        self.base_params = dict(BASE_PARAMS if base_params is None else base_params)
        self.params = dict(Q_PARAMS if params is None else params)
        self.folds = folds
        self.pessimism = pessimism
        self.seed = seed
        self.threads = threads
        self.name = name
        self.version = version
        if not 0 <= pessimism < math.inf:
            raise BadInputError(f"pessimism {pessimism}: expected a non-negative number of standard errors")
        if folds not in (1, 2):
            raise BadInputError(f"folds {folds}: expected 1 (plain) or 2 (cross-fitted double Q)")
        self._arms = ("nothing", *self.offers)
        self._channel = np.array(
            [-1, *(CHANNELS.index(Action.parse(f"{o}/1h").channel) for o in self.offers)]
        )
        self._coupon = np.array([0.0, *(Action.parse(f"{o}/1h").coupon for o in self.offers)])

    # -- fitting ----------------------------------------------------------------------------------------

    def _matrix(self, features: NDArray[np.float64], state: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.column_stack([features, state])

    def _fit_head(
        self,
        M: NDArray[np.float64],  # noqa: N803
        y: NDArray[np.float64],
        params: Mapping[str, Any],
    ) -> _Head:
        import lightgbm as lgb

        se = float(y.std(ddof=1) / math.sqrt(len(y))) if len(y) > 1 else math.inf
        if len(y) < 2 * int(params.get("min_data_in_leaf", 20)):
            return _Head(None, float(y.mean()) if len(y) else 0.0, se)
        settings = {**params, "objective": "regression", "seed": self.seed, "deterministic": True,
                    "force_row_wise": True, "verbose": -1, "num_threads": self.threads}  # fmt: skip
        rounds = int(settings.pop("num_iterations", 100))
        booster = lgb.train(settings, lgb.Dataset(M, y, free_raw_data=True), num_boost_round=rounds)
        return _Head(booster, float(y.mean()), se)

    def _allowed(self, consent: NDArray[np.bool_], sent: NDArray[np.float64]) -> NDArray[np.bool_]:
        """(rows x arms): nothing always; an offer on a consented channel while fewer than 3 are sent."""
        ok = np.ones((len(sent), len(self._arms)), dtype=bool)
        ok[:, 1:] = consent[:, self._channel[1:]] & (sent < MAX_STEPS)[:, None]
        return ok

    def _penalty(self, folds: Sequence[tuple[_Head, list[_Head]]]) -> NDArray[np.float64]:
        """Per arm, ``pessimism`` standard errors of its difference from nothing in the mean Q of
        ``folds`` (0 for nothing): an offer is chosen only when its lower bound beats waiting."""
        if not self.pessimism:
            return np.zeros(len(self._arms))
        var = np.zeros(len(self._arms))
        for _, arms in folds:
            se = np.array([h.se for h in arms])
            var += se**2 + se[0] ** 2
        penalty = self.pessimism * np.sqrt(var) / len(folds)
        penalty[0] = 0.0
        return np.asarray(np.nan_to_num(penalty, nan=np.inf, posinf=np.inf))

    def _q(self, heads: tuple[_Head, list[_Head]], M: NDArray[np.float64]) -> NDArray[np.float64]:  # noqa: N803
        base, arms = heads
        return base.predict(M)[:, None] + np.column_stack([h.predict(M) for h in arms])

    def fit(self, trajectories: Trajectories, features: pd.DataFrame) -> FittedQPolicy:
        """Learn from ``trajectories`` (:func:`log_trajectories`); ``features`` holds the state's cart
        and customer columns for the carts the trajectories were logged on (row ``i`` for cart ``i``)."""
        missing = [c for c in self.features if c not in features.columns]
        if missing:
            raise BadInputError(f"features: missing column(s) {', '.join(missing)}")
        t = trajectories.transitions
        if t.empty:
            raise BadInputError("trajectories: no decision points logged; simulate a larger shop")
        unknown = sorted(set(t["action"]) - set(self._arms))
        if unknown:
            raise BadInputError(f"trajectories: actions {unknown} are not among the policy's offers")
        X = features[list(self.features)].to_numpy(dtype=float)[t["row"].to_numpy()]  # noqa: N806
        M = self._matrix(X, t[list(STATE)].to_numpy(dtype=float))  # noqa: N806
        point = t["point"].to_numpy()
        hours = np.array(self.hours, dtype=float)
        next_state = np.column_stack(
            [hours[np.minimum(point + 1, len(hours) - 1)], t["next_sent_in_flow"], t["next_coupon_in_flow"]]
        )
        M_next = self._matrix(X, next_state)  # noqa: N806
        channels = [Action("reminder", 0, c, 1) for c in CHANNELS]
        consent = consent_mask(features.iloc[t["row"].to_numpy()], channels)
        allowed_next = self._allowed(consent, t["next_sent_in_flow"].to_numpy(dtype=float))
        value = np.maximum(t["value"].to_numpy(dtype=float), 1e-9)
        reward = t["reward"].to_numpy(dtype=float) / value
        alive = t["alive_next"].to_numpy(dtype=bool)
        arm = pd.Index(self._arms).get_indexer(pd.Index(t["action"]))
        rng = np.random.default_rng(self.seed)
        carts, code = np.unique(t["row"].to_numpy(), return_inverse=True)
        fold = rng.integers(0, self.folds, carts.size)[code]
        # Backward over the decision points: the last point's heads learn its reward; each earlier
        # point's learn the reward plus the next point's value under the heads fitted just before.
        empty: tuple[_Head, list[_Head]] = (_Head(None, 0.0), [])
        heads = [[empty for _ in self.hours] for _ in range(self.folds)]
        for p in reversed(range(len(self.hours))):
            at = point == p
            target = reward[at]
            if p + 1 < len(self.hours):
                q = [self._q(heads[f][p + 1], M_next[at]) for f in range(self.folds)]
                pick = [
                    self._choose(q[f], allowed_next[at], self._penalty([heads[f][p + 1]]))[0]
                    for f in range(self.folds)
                ]
                rows = np.arange(int(at.sum()))
                if self.folds == 2:  # each fold's choice valued by the other fold
                    best = 0.5 * (q[1][rows, pick[0]] + q[0][rows, pick[1]])
                else:
                    best = q[0][rows, pick[0]]
                target = target + np.where(alive[at], best, 0.0)
            for f in range(self.folds):
                mine = fold[at] == f
                base = self._fit_head(M[at][mine], target[mine], self.base_params)
                residual = target - base.predict(M[at])
                arms = [
                    self._fit_head(M[at][mine & (arm[at] == a)], residual[mine & (arm[at] == a)], self.params)
                    for a in range(len(self._arms))
                ]
                heads[f][p] = (base, arms)
        self.heads_ = heads
        self.n_transitions_ = len(t)
        return self

    # -- deciding ---------------------------------------------------------------------------------------

    def q_values(self, features: NDArray[np.float64], state: NDArray[np.float64]) -> NDArray[np.float64]:
        """(rows x arms) mean Q over the folds, in margin per unit of cart value; arms: nothing, then
        the offers; each row at the decision point nearest its ``state[:, 0]`` (hours)."""
        if not hasattr(self, "heads_"):
            raise BadInputError("the fitted-q policy is not fitted; call fit(...) first")
        M = self._matrix(features, state)  # noqa: N806
        point = np.array([self._point(h) for h in state[:, 0]], dtype=np.int64)
        out = np.zeros((len(M), len(self._arms)))
        for p in np.unique(point):
            on = point == p
            out[on] = np.mean([self._q(fold[p], M[on]) for fold in self.heads_], axis=0)
        return out

    def _point(self, hours_since: float) -> int:
        return int(np.argmin([abs(h - hours_since) for h in self.hours]))

    def _choose(
        self, q: NDArray[np.float64], allowed: NDArray[np.bool_], penalty: NDArray[np.float64] | None = None
    ) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """(arm, its estimated gain over nothing): the allowed arm of highest Q less ``penalty``,
        nothing unless an offer beats it."""
        scores = np.where(allowed, q - (0.0 if penalty is None else penalty), -np.inf)
        scores[:, 0] = q[:, 0]
        best = scores.argmax(axis=1)
        rows = np.arange(len(q))
        chosen = np.where(scores[rows, best] > q[:, 0], best, 0)
        return chosen, q[rows, chosen] - q[:, 0]

    def plan(self, carts: pd.DataFrame) -> list[tuple[Action, ...]]:
        """Each cart's whole flow: the step chosen at every decision point, given the ones before (the
        send-time re-check stops it once the cart is recovered). ``carts`` holds :attr:`features` and
        ``consent_<channel>``."""
        X = carts[list(self.features)].to_numpy(dtype=float)  # noqa: N806
        consent = consent_mask(carts, [Action("reminder", 0, c, 1) for c in CHANNELS])
        n = len(carts)
        sent, coupon = np.zeros(n), np.zeros(n)
        chosen = np.zeros((n, len(self.hours)), dtype=np.int64)
        for i, h in enumerate(self.hours):
            q = self.q_values(X, np.column_stack([np.full(n, float(h)), sent, coupon]))
            arm, _ = self._choose(q, self._allowed(consent, sent), self._penalty([f[i] for f in self.heads_]))
            chosen[:, i] = arm
            sent += arm > 0
            coupon = np.maximum(coupon, self._coupon[arm])
        steps = [offers_at(h, self.offers) for h in self.hours]
        return [tuple(steps[i][a - 1] for i, a in enumerate(row) if a > 0) for row in chosen.tolist()]

    def _decisions(
        self,
        X: NDArray[np.float64],  # noqa: N803
        state: NDArray[np.float64],
        values: NDArray[np.float64],
        allowed: Sequence[Action],
        mask: NDArray[np.bool_],
    ) -> list[Decision]:
        q = self.q_values(X, state)
        out = []
        for r in range(len(X)):
            h = self.hours[self._point(state[r, 0])]
            offer_actions = offers_at(h, self.offers)
            ok = np.zeros(len(self._arms), dtype=bool)
            ok[0] = True
            if state[r, 1] < MAX_STEPS:
                permitted = {a for a, m in zip(allowed, mask[r].tolist(), strict=True) if m}
                ok[1:] = [a in permitted for a in offer_actions]
            penalty = self._penalty([f[self.hours.index(h)] for f in self.heads_])
            arm, gain = self._choose(q[r : r + 1], ok[None, :], penalty)
            j = int(arm[0])
            if j == 0:
                out.append(Decision(NOTHING, 1.0, self.name, self.version, 0.0,
                                    (f"fitted-q: nothing beats waiting at {h} h",)))  # fmt: skip
            else:
                action = offer_actions[j - 1]
                profit = float(gain[0] * values[r])
                why = f"fitted-q: best Q at {h} h (+{profit:.2f} over nothing now)"
                out.append(Decision(action, 1.0, self.name, self.version, profit, (why,)))
        return out

    def decide(self, context: DecisionContext, allowed: Sequence[Action]) -> Decision:
        """The step to send now (at the decision point nearest the hours since abandonment), or nothing.

        The state: ``context.features`` (the :attr:`features`; ``value`` and ``consent_<channel>`` from
        the context), hours since ``context.anchor``, and ``context.sent_in_flow``.
        """
        row = []
        for name in self.features:
            if name in context.features:
                row.append(float(context.features[name]))
            elif name == "value":
                row.append(context.value)
            elif name.startswith("consent_") and name.removeprefix("consent_") in CHANNELS:
                row.append(float(context.can_message(name.removeprefix("consent_"))))  # type: ignore[arg-type]
            else:
                row.append(math.nan)
        hours = (context.now - context.anchor) / 3600.0
        sent = context.sent_in_flow
        state = np.array(
            [[self.hours[self._point(hours)], len(sent), max((a.coupon for a in sent), default=0.0)]]
        )
        mask = np.ones((1, len(allowed)), dtype=bool)
        return self._decisions(np.array([row]), state, np.array([context.value]), allowed, mask)[0]

    def decide_batch(
        self, carts: pd.DataFrame, allowed: Sequence[Action], mask: NDArray[np.bool_] | None = None
    ) -> list[Decision]:
        """Decisions for a table: :attr:`features`, and optionally ``hours_since_abandonment`` (default:
        the first decision point), ``sent_in_flow`` and ``coupon_in_flow`` (default 0)."""
        n = len(carts)
        m = np.ones((n, len(allowed)), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        if m.shape != (n, len(allowed)):
            raise BadInputError(
                f"mask: expected shape {(n, len(allowed))} (carts x allowed actions), got {m.shape}"
            )
        X = carts[list(self.features)].to_numpy(dtype=float)  # noqa: N806

        def column(name: str, default: float) -> NDArray[np.float64]:
            return carts[name].to_numpy(dtype=float) if name in carts.columns else np.full(n, default)

        hours = np.array(
            [self.hours[self._point(h)] for h in column("hours_since_abandonment", self.hours[0])]
        )
        state = np.column_stack([hours, column("sent_in_flow", 0.0), column("coupon_in_flow", 0.0)])
        return self._decisions(X, state, carts["value"].to_numpy(dtype=float), allowed, m)
