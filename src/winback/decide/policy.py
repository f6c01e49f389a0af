"""Policies: who gets which action, with the probability it was chosen, behind one interface.

Every policy answers ``decide(context, allowed) -> Decision``: one action among those the guardrails
allowed, the probability with which the policy chose it (so any other policy can later be evaluated off
the decision log, :mod:`winback.decide.ope`), its name and version, the expected incremental profit where
it has one, and its reasons. ``decide_batch(carts, allowed, mask)`` does the same for a table of carts at
once (``mask[i, j]``: whether cart ``i`` may take ``allowed[j]``).

- :class:`StaticPolicy`: one fixed action, the baselines shops run today (a flow's first step: `plan`
  and the decision log apply one action per cart, see :meth:`StaticPolicy.from_flow`).
- :class:`RandomPolicy`: uniform over the allowed actions (or a subset); the randomising logging
  policy whose exact propensities make off-policy evaluation and uplift training possible.
- :class:`UpliftPolicy`: the action with the highest expected incremental profit from fitted
  :class:`~winback.decide.uplift.UpliftModel` s, optionally epsilon-greedy, optionally under a discount
  budget (:func:`allocate`).
- :class:`Guarded`: computes the allowed actions from the context with
  :class:`~winback.decide.guardrails.Guardrails` and asks the wrapped policy; it never returns a refused
  action.

Incremental profit of an action ``a`` for a cart of value ``v`` (DESIGN.md, "Definitions"):
``margin * v * (p(a) - p(nothing)) - coupon(a) * redemption(a) * v * p(a) - channel_cost(a)``, with
``p`` the purchase model's predicted recovery probabilities. ``redemption(a)`` is the share of recoveries
under ``a`` that use its coupon; 1 (the default) charges the discount on every recovery, which is safe but
overstates it (a recovery that never opened the message pays no discount); :func:`redemption_shares`
estimates it from the decision log.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from winback.decide.actions import CHANNELS, NOTHING, Action, Channel
from winback.decide.catalogue import Catalogue
from winback.decide.context import DecisionContext
from winback.decide.guardrails import Guardrails
from winback.decide.uplift import UpliftModel
from winback.errors import BadInputError

__all__ = [
    "Decision",
    "Estimates",
    "Guarded",
    "Policy",
    "RandomPolicy",
    "StaticPolicy",
    "UpliftPolicy",
    "allocate",
    "context_from_row",
    "redemption_shares",
]

_EPSILON = 1e-9
#: Largest number of (cart, action) cells ``allocate(method="exact")`` solves as an integer programme.
EXACT_CELLS = 200_000


@dataclass(frozen=True, slots=True)
class Decision:
    """One choice, as it is logged.

    Attributes
    ----------
    action
        What to do.
    propensity
        Probability with which the policy chose ``action`` in this context (1 for a deterministic one).
    policy, version
        Which policy decided, so the log can be traced to the model that produced it.
    expected_profit
        The policy's expected incremental profit of ``action`` (currency), None if it has no model.
    reasons
        Short human-readable reasons: why this action, what the guardrails refused.
    """

    action: Action
    propensity: float
    policy: str
    version: str
    expected_profit: float | None = None
    reasons: tuple[str, ...] = ()


@runtime_checkable
class Policy(Protocol):
    """What every policy offers: a name, a version, one decision, and a table of decisions."""

    name: str
    version: str

    def decide(self, context: DecisionContext, allowed: Sequence[Action]) -> Decision: ...

    def decide_batch(
        self, carts: pd.DataFrame, allowed: Sequence[Action], mask: NDArray[np.bool_] | None = None
    ) -> list[Decision]: ...


def _mask(
    carts: pd.DataFrame, allowed: Sequence[Action], mask: NDArray[np.bool_] | None
) -> NDArray[np.bool_]:
    """The (carts x allowed) permission matrix, checked; all True when None."""
    shape = (len(carts), len(allowed))
    if mask is None:
        return np.ones(shape, dtype=bool)
    m = np.asarray(mask, dtype=bool)
    if m.shape != shape:
        raise BadInputError(f"mask: expected shape {shape} (carts x allowed actions), got {m.shape}")
    return m


def _nothing_index(allowed: Sequence[Action]) -> int:
    """Position of doing nothing in ``allowed``, -1 if absent."""
    for j, action in enumerate(allowed):
        if not action.is_message:
            return j
    return -1


# --------------------------------------------------------------------------- static and random


class StaticPolicy:
    """One fixed action for everyone (nothing where the guardrails refuse it); propensity 1.

    Parameters
    ----------
    action
        The action, or its name (``"reminder/email/10h"``).
    name
        The policy's name in logs and reports; the action's name by default.
    version
        Recorded with every decision.

    Examples
    --------
    >>> from winback.decide.catalogue import load_catalogue
    >>> policy = StaticPolicy.from_flow(load_catalogue(), "static-10h")
    >>> ctx = DecisionContext(user_id="u1", now=0.0, value=50.0, consent=frozenset({"email"}))
    >>> decision = policy.decide(ctx, [NOTHING, Action.parse("reminder/email/10h")])
    >>> decision.action.name, decision.propensity, decision.policy
    ('reminder/email/10h', 1.0, 'static-10h')
    >>> policy.decide(ctx, [NOTHING]).action.name
    'nothing'
    """

    def __init__(self, action: Action | str, name: str | None = None, version: str = "1") -> None:
        self.action = action if isinstance(action, Action) else Action.parse(action)
        self.name = name or self.action.name
        self.version = version

    @classmethod
    def from_flow(cls, catalogue: Catalogue, flow: str, version: str = "1") -> StaticPolicy:
        """The catalogue's flow ``flow`` as a policy of its **first step only**.

        ``winback plan`` and the decision log apply one action per cart, so there a multi-step flow such
        as ``static-1h-24h-72h`` (reminders at 1 h and 24 h, a 10% coupon at 72 h) is represented by its
        first step (the 1 h reminder); against the simulator's truth the whole flow is scored
        (:mod:`winback.sim.flows`). A flow of no steps sends nothing.
        """
        try:
            steps = catalogue.flows[flow].steps
        except KeyError:
            known = ", ".join(sorted(catalogue.flows)) or "none"
            raise BadInputError(f"flow {flow!r}: not in the catalogue (flows: {known})") from None
        return cls(steps[0] if steps else NOTHING, name=flow, version=version)

    def decide(self, context: DecisionContext, allowed: Sequence[Action]) -> Decision:
        if self.action in allowed:
            return Decision(self.action, 1.0, self.name, self.version, reasons=(f"static: {self.action}",))
        return Decision(
            NOTHING, 1.0, self.name, self.version, reasons=(f"static: {self.action} not allowed; nothing",)
        )

    def decide_batch(
        self, carts: pd.DataFrame, allowed: Sequence[Action], mask: NDArray[np.bool_] | None = None
    ) -> list[Decision]:
        m = _mask(carts, allowed, mask)
        column = list(allowed).index(self.action) if self.action in allowed else -1
        ok = m[:, column] if column >= 0 else np.zeros(len(carts), dtype=bool)
        sent = Decision(self.action, 1.0, self.name, self.version, reasons=(f"static: {self.action}",))
        held = Decision(
            NOTHING, 1.0, self.name, self.version, reasons=(f"static: {self.action} not allowed; nothing",)
        )
        return [sent if o else held for o in ok.tolist()]


class RandomPolicy:
    """Uniform over the allowed actions (or those of ``actions`` among them), with exact propensities.

    The logging policy of a randomised period: each cart's action is drawn uniformly among its allowed
    candidates, and its propensity is ``1 / number of candidates`` for that cart. Where no candidate is
    allowed it does nothing (propensity 1).

    Parameters
    ----------
    actions
        The subset to randomise over; None for every allowed action.
    seed
        Seed of the draws (reproducible logs).
    name, version
        Recorded with every decision.
    """

    def __init__(
        self,
        actions: Sequence[Action | str] | None = None,
        seed: int = 0,
        name: str = "random",
        version: str = "1",
    ) -> None:
        self.actions = (
            None if actions is None else [a if isinstance(a, Action) else Action.parse(a) for a in actions]
        )
        self._subset = None if self.actions is None else frozenset(self.actions)
        self.seed = seed
        self.name = name
        self.version = version
        self._rng = np.random.default_rng(seed)

    def candidates(self, allowed: Sequence[Action]) -> list[Action]:
        """The allowed actions this policy draws from."""
        subset = self._subset
        return list(allowed) if subset is None else [a for a in allowed if a in subset]

    def decide(self, context: DecisionContext, allowed: Sequence[Action]) -> Decision:
        pool = self.candidates(allowed)
        if not pool:
            return Decision(NOTHING, 1.0, self.name, self.version, reasons=("random: no candidate allowed",))
        action = pool[int(self._rng.integers(len(pool)))]
        return Decision(
            action, 1.0 / len(pool), self.name, self.version, reasons=(f"random: 1 of {len(pool)}",)
        )

    def probabilities(
        self, carts: pd.DataFrame, allowed: Sequence[Action], mask: NDArray[np.bool_] | None = None
    ) -> NDArray[np.float64]:
        """(carts x allowed) probability of each action for each cart (rows sum to 1 when any is allowed)."""
        m = _mask(carts, allowed, mask)
        if self._subset is not None:
            m = m & np.array([a in self._subset for a in allowed], dtype=bool)[None, :]
        counts = m.sum(axis=1, keepdims=True)
        return np.divide(m, counts, out=np.zeros(m.shape), where=counts > 0)

    def decide_batch(
        self, carts: pd.DataFrame, allowed: Sequence[Action], mask: NDArray[np.bool_] | None = None
    ) -> list[Decision]:
        probabilities = self.probabilities(carts, allowed, mask)
        pool = (probabilities > 0).sum(axis=1)
        # The k-th candidate of each row, k uniform in [0, pool): the first column whose running count > k.
        k = np.floor(self._rng.random(len(carts)) * np.maximum(pool, 1)).astype(np.int64)
        chosen = ((probabilities > 0).cumsum(axis=1) > k[:, None]).argmax(axis=1)
        out = []
        for j, size in zip(chosen.tolist(), pool.tolist(), strict=True):
            if size == 0:
                out.append(
                    Decision(NOTHING, 1.0, self.name, self.version, reasons=("random: no candidate allowed",))
                )
            else:
                out.append(
                    Decision(
                        allowed[j], 1.0 / size, self.name, self.version, reasons=(f"random: 1 of {size}",)
                    )
                )
        return out


# --------------------------------------------------------------------------- uplift


@dataclass(frozen=True)
class Estimates:
    """A model's view of each (cart, action): what it earns and what it gives away.

    Attributes
    ----------
    profit
        (carts x actions) expected incremental profit against doing nothing; NaN where the model cannot
        score the action (it never saw it).
    discount
        (carts x actions) expected discount given.
    baseline
        Per cart, expected margin with no action (``margin * predicted revenue under nothing``), so
        ``baseline + profit`` is each action's expected margin.
    """

    profit: NDArray[np.float64]
    discount: NDArray[np.float64]
    baseline: NDArray[np.float64]


def redemption_shares(
    actions: Sequence[str], recovered: Sequence[bool], redeemed: Sequence[bool], prior_weight: float = 20.0
) -> dict[str, float]:
    """Per coupon action, the share of its recoveries that used the coupon, from a decision log.

    ``redeemed[i]``: whether decision ``i``'s recovery paid the coupon's discount (a coupon order). Each
    action's share is shrunk towards the share over every coupon action with ``prior_weight`` pseudo
    recoveries, so rarely logged actions get the pooled share.
    """
    frame = pd.DataFrame(
        {"action": np.asarray(actions, dtype=object), "recovered": np.asarray(recovered, dtype=bool),
         "redeemed": np.asarray(redeemed, dtype=bool)}
    )  # fmt: skip
    coupons = frame[[Action.parse(str(a)).coupon > 0 for a in frame["action"]]]
    back = coupons[coupons["recovered"]]
    if back.empty:
        return {}
    pooled = float(back["redeemed"].mean())
    counts = back.groupby("action")["redeemed"].agg(["sum", "size"])
    shares = (counts["sum"] + prior_weight * pooled) / (counts["size"] + prior_weight)
    return {str(a): float(s) for a, s in shares.items()}


def _feature_value(context: DecisionContext, name: str) -> Any:
    if name in context.features:
        return context.features[name]
    if name == "value":
        return context.value
    channel = name.removeprefix("consent_")
    if channel != name and channel in CHANNELS:
        return float(context.can_message(channel))
    return math.nan


class _FastOutcomes:
    """One row's predicted outcome of every treatment of a fitted UpliftModel, without pandas.

    ``UpliftModel.outcomes`` on a one-row DataFrame spends milliseconds in pandas; this calls the fitted
    heads directly (one LightGBM call per treatment) and is checked against ``outcomes`` on first use:
    if they ever disagree, or the model's fitted attributes are not as expected, the policy falls back to
    ``outcomes`` for good.
    """

    def __init__(self, model: UpliftModel) -> None:
        self.model = model
        self.names = [str(c) for c in model.feature_names_in_]
        self.categories = dict(getattr(model, "categories_", {}))
        self.checked = False
        self.usable = True
        try:
            self.parts = self._parts(model)
        except (AttributeError, KeyError, TypeError, ValueError):
            self.usable = False

    @staticmethod
    def _parts(model: UpliftModel) -> list[tuple[float, list[tuple[float, Any]]]]:
        """Per treatment after the control: ``(constant, [(weight, fitted piece), ...])``, its outcome
        being the control head's plus the constant plus the weighted pieces' predictions (the T-learner's
        own head replaces the control's: weight 1 on it, -1 on the control head)."""
        control, learner = model.control, model.learner
        heads, effects, fallback = model.heads_, model.effect_models_, model.fallback_
        parts: list[tuple[float, list[tuple[float, Any]]]] = []
        for arm in model.treatments_[1:]:
            if learner == "t":
                if arm in fallback or control in fallback:
                    parts.append((float(heads[arm].constant - heads[control].constant), []))
                else:
                    parts.append((0.0, [(1.0, heads[arm]), (-1.0, heads[control])]))
            elif learner == "x":
                tau_t, tau_c, g = effects[arm]
                parts.append((0.0, [(float(g), tau_c), (1.0 - float(g), tau_t)]))
            else:
                parts.append((0.0, [(1.0, effects[arm])]))
        return parts

    def _fast(self, row: NDArray[np.float64]) -> NDArray[np.float64]:
        control = self.model.heads_[self.model.control]
        base = float(control.predict(row, 1)[0])
        out = [base]
        for constant, pieces in self.parts:
            value = base + constant
            for weight, piece in pieces:
                value += weight * (base if piece is control else float(piece.predict(row, 1)[0]))
            out.append(value)
        return np.array(out)

    def encode(self, values: Sequence[Any]) -> NDArray[np.float64]:
        row = np.empty((1, len(self.names)))
        for j, (name, value) in enumerate(zip(self.names, values, strict=True)):
            categories = self.categories.get(name)
            if categories is not None:
                code = categories.get_indexer([value])[0]
                row[0, j] = math.nan if code < 0 else float(code)
            else:
                row[0, j] = math.nan if value is None else float(value)
        return row

    def __call__(self, values: Sequence[Any]) -> NDArray[np.float64]:
        if self.usable:
            row = self.encode(values)
            fast = self._fast(row)
            if self.checked:
                return fast
            slow = self._slow(values)
            self.checked = True
            if np.allclose(fast, slow, rtol=1e-9, atol=1e-9):
                return fast
            self.usable = False
            return slow
        return self._slow(values)

    def _slow(self, values: Sequence[Any]) -> NDArray[np.float64]:
        frame = pd.DataFrame({n: [v] for n, v in zip(self.names, values, strict=True)})
        for name, categories in self.categories.items():
            frame[name] = frame[name].astype(pd.CategoricalDtype(categories))
        return self.model.outcomes(frame).to_numpy()[0]


class UpliftPolicy:
    """The allowed action with the highest expected incremental profit; doing nothing if none is positive.

    Parameters
    ----------
    purchase
        A fitted binary :class:`~winback.decide.uplift.UpliftModel` of the purchase (cart recovered), with
        ``"nothing"`` (or whatever its ``control`` is) as the control.
    catalogue
        Supplies the margin and the channel costs.
    revenue
        Optionally a fitted continuous UpliftModel of the revenue (the recovered order's value); where
        given it replaces ``value x p`` (needed where the order value is not known in advance, e.g. a
        customer-level win-back).
    redemption
        Per coupon action name, the share of recoveries that pay the discount (see
        :func:`redemption_shares`); missing actions: 1.
    epsilon
        Exploration share: with probability ``epsilon`` a uniformly drawn allowed action the model can
        score (or nothing) instead of the best; propensities say so.
    seed
        Seed of the exploration draws.
    name, version
        Recorded with every decision.

    Notes
    -----
    Features: the models' feature columns are read from the cart table in :meth:`decide_batch`, and from
    ``context.features`` (and ``value`` / ``consent_<channel>`` from the context) in :meth:`decide`.
    Actions the models never saw cannot be scored and are never chosen.
    """

    def __init__(
        self,
        purchase: UpliftModel,
        catalogue: Catalogue,
        *,
        revenue: UpliftModel | None = None,
        redemption: Mapping[str, float] | None = None,
        epsilon: float = 0.0,
        seed: int = 0,
        name: str = "uplift",
        version: str = "1",
    ) -> None:
        if not hasattr(purchase, "treatments_"):
            raise BadInputError("purchase: the UpliftModel is not fitted; call fit(...) first")
        if purchase.outcome != "binary":
            raise BadInputError("purchase: expected a binary UpliftModel of the purchase (outcome='binary')")
        if revenue is not None and (not hasattr(revenue, "treatments_") or revenue.outcome != "continuous"):
            raise BadInputError("revenue: expected a fitted continuous UpliftModel of the revenue")
        if not 0 <= epsilon <= 1:
            raise BadInputError(f"epsilon {epsilon}: expected an exploration share in [0, 1]")
        for action, share in (redemption or {}).items():
            if not 0 <= share <= 1:
                raise BadInputError(f"redemption[{action!r}] {share}: expected a share in [0, 1]")
        self.purchase = purchase
        self.revenue = revenue
        self.catalogue = catalogue
        self.redemption = dict(redemption or {})
        self.epsilon = epsilon
        self.seed = seed
        self.name = name
        self.version = version
        self._rng = np.random.default_rng(seed)
        try:
            self._arms = {Action.parse(a): i for i, a in enumerate(purchase.treatments_)}
        except ValueError as error:
            raise BadInputError(f"purchase: its treatments must be action names ({error})") from None
        self._fast = _FastOutcomes(purchase)
        self._fast_revenue = None if revenue is None else _FastOutcomes(revenue)
        self._revenue_order: list[int] = []  # the revenue model's columns in the purchase model's order
        if revenue is not None:
            missing = [t for t in purchase.treatments_ if t not in revenue.treatments_]
            if missing:
                raise BadInputError(
                    f"revenue: the model never saw {', '.join(missing)} (the purchase model did)"
                )
            self._revenue_order = [revenue.treatments_.index(t) for t in purchase.treatments_]
        self._terms: dict[Action, tuple[float, float]] = {}  # action -> (coupon x redemption, channel cost)

    @property
    def treatments(self) -> list[Action]:
        """The actions the purchase model can score (its control first)."""
        return list(self._arms)

    def _action_terms(self, action: Action) -> tuple[float, float]:
        terms = self._terms.get(action)
        if terms is None:
            share = self.redemption.get(action.name, 1.0)
            terms = self._terms[action] = (action.coupon * share, self.catalogue.channel_cost(action.channel))
        return terms

    def _margin(self, categories: frozenset[str]) -> float:
        if not categories:
            return self.catalogue.default_margin
        return float(np.mean([self.catalogue.margin(c) for c in categories]))

    def _profit(
        self,
        p: NDArray[np.float64],
        revenue: NDArray[np.float64],
        margin: NDArray[np.float64],
        actions: Sequence[Action],
    ) -> Estimates:
        """From predicted purchase probabilities / revenues (carts x model treatments) to Estimates."""
        n = p.shape[0]
        control = self._arms[Action.parse(self.purchase.control)]
        profit = np.full((n, len(actions)), np.nan)
        discount = np.full((n, len(actions)), np.nan)
        for j, action in enumerate(actions):
            arm = self._arms.get(action)
            if not action.is_message:
                profit[:, j], discount[:, j] = 0.0, 0.0
            elif arm is not None:
                share, cost = self._action_terms(action)
                discount[:, j] = share * revenue[:, arm]
                profit[:, j] = margin * (revenue[:, arm] - revenue[:, control]) - discount[:, j] - cost
        return Estimates(profit, discount, margin * revenue[:, control])

    def estimates(self, carts: pd.DataFrame, actions: Sequence[Action]) -> Estimates:
        """Expected incremental profit, discount and baseline margin of ``actions`` for each cart.

        ``carts`` needs the models' feature columns and ``value`` (unless a revenue model is given); an
        optional ``margin_rate`` column overrides the catalogue's default margin per cart.
        """
        features = list(map(str, self.purchase.feature_names_in_))
        missing = [c for c in features if c not in carts.columns]
        if missing:
            raise BadInputError(
                f"carts: missing feature column(s) {', '.join(missing)} of the purchase model"
            )
        p = self.purchase.outcomes(carts[features]).to_numpy()
        if self.revenue is not None:
            columns = list(map(str, self.revenue.feature_names_in_))
            revenue = self.revenue.outcomes(carts[columns]).to_numpy()[:, self._revenue_order]
        else:
            if "value" not in carts.columns:
                raise BadInputError("carts: no 'value' column (the cart value a recovery earns)")
            revenue = p * carts["value"].to_numpy(dtype=float)[:, None]
        margin = (
            carts["margin_rate"].to_numpy(dtype=float)
            if "margin_rate" in carts.columns
            else np.full(len(carts), self.catalogue.default_margin)
        )
        return self._profit(p, revenue, margin, actions)

    def _pick(
        self, profit: NDArray[np.float64], allowed: Sequence[Action], mask: NDArray[np.bool_]
    ) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """Each row's choice (a column of ``allowed``; -1 for doing nothing when it is not a column) and
        the probability it was chosen with."""
        n = profit.shape[0]
        rows = np.arange(n)
        scorable = mask & ~np.isnan(profit)
        scores = np.where(scorable, profit, -np.inf)
        best = scores.argmax(axis=1)
        nothing = _nothing_index(allowed)
        pool = scorable.copy()  # what exploration draws from: the scorable actions and doing nothing
        fallback = np.full(n, -1)
        if nothing >= 0:
            fallback = np.where(mask[:, nothing], nothing, -1)
            pool[:, nothing] |= mask[:, nothing]
        greedy = np.where(scores[rows, best] > 0, best, fallback)  # a tie at 0 goes to doing nothing
        if self.epsilon == 0:
            return greedy, np.ones(n)
        size = pool.sum(axis=1)
        explore = (self._rng.random(n) < self.epsilon) & (size > 0)
        k = np.floor(self._rng.random(n) * np.maximum(size, 1)).astype(np.int64)
        drawn = (pool.cumsum(axis=1) > k[:, None]).argmax(axis=1)
        chosen = np.where(explore, drawn, greedy)
        in_pool = (chosen >= 0) & pool[rows, np.maximum(chosen, 0)]
        share = np.where(size > 0, self.epsilon / np.maximum(size, 1), 0.0)
        propensity = np.where(chosen == greedy, 1 - self.epsilon * (size > 0), 0.0) + np.where(
            in_pool, share, 0.0
        )
        return chosen, propensity

    def decide(self, context: DecisionContext, allowed: Sequence[Action]) -> Decision:
        values = [_feature_value(context, n) for n in self._fast.names]
        p = self._fast(values)[None, :]
        if self._fast_revenue is not None:
            rv = [_feature_value(context, n) for n in self._fast_revenue.names]
            revenue = self._fast_revenue(rv)[None, self._revenue_order]
        else:
            revenue = p * context.value
        margin = np.array([self._margin(context.categories)])
        profit = self._profit(p, revenue, margin, allowed).profit
        mask = np.ones(profit.shape, dtype=bool)
        best, propensity = self._pick(profit, allowed, mask)
        return self._decision(allowed, int(best[0]), float(propensity[0]), profit[0])

    def decide_batch(
        self,
        carts: pd.DataFrame,
        allowed: Sequence[Action],
        mask: NDArray[np.bool_] | None = None,
        budget: float | None = None,
    ) -> list[Decision]:
        """Decisions for every cart; with ``budget``, coupons are allocated by :func:`allocate` so the
        expected discount of the batch stays within it (then without exploration)."""
        m = _mask(carts, allowed, mask)
        est = self.estimates(carts, allowed)
        if budget is not None:
            chosen = allocate(est.profit, est.discount, budget, allowed=m)
            propensity = np.ones(len(chosen))
        else:
            chosen, propensity = self._pick(est.profit, allowed, m)
        return [
            self._decision(allowed, int(j), float(q), row)
            for j, q, row in zip(chosen.tolist(), propensity.tolist(), est.profit, strict=True)
        ]

    def _decision(
        self, allowed: Sequence[Action], j: int, propensity: float, profit: NDArray[np.float64]
    ) -> Decision:
        if j < 0:
            return Decision(NOTHING, 1.0, self.name, self.version, 0.0, ("uplift: nothing allowed to score",))
        action = allowed[j]
        expected = float(profit[j]) if not math.isnan(profit[j]) else None
        scored = int((~np.isnan(profit)).sum())
        if action.is_message:
            reason = f"uplift: best expected incremental profit {expected:.2f} of {scored} scored actions"
        else:
            reason = f"uplift: no action beats doing nothing ({scored} scored)"
        if propensity < 1:
            reason += f"; chosen with probability {propensity:.3g}"
        return Decision(action, propensity, self.name, self.version, expected, (reason,))


# --------------------------------------------------------------------------- budget


def allocate(
    expected_profit: NDArray[np.float64],
    expected_discount: NDArray[np.float64],
    budget: float,
    *,
    allowed: NDArray[np.bool_] | None = None,
    method: Literal["greedy", "exact"] = "greedy",
) -> NDArray[np.int64]:
    """Choose one action (column) per cart (row) to maximise total profit with total discount <= budget.

    Parameters
    ----------
    expected_profit, expected_discount
        (carts x actions) expected incremental profit and discount of each action; NaN profit means the
        action cannot be chosen. Every row needs an allowed action of no discount (doing nothing).
    budget
        Total expected discount the batch may give; 0 means no coupons; ``inf`` no limit.
    allowed
        (carts x actions) which actions each cart may take; None for all.
    method
        ``"greedy"``: each cart starts at its best action without discount; the upgrades to actions with
        more discount are taken in order of incremental profit per unit of extra discount, along each
        cart's upper convex hull of (discount, profit), as long as they fit. This is the optimum of the
        linear relaxation of the multiple-choice knapsack except for the upgrades that no longer fit
        (it then keeps filling with smaller ones), scales to millions of carts, and is what the batch
        planner uses. ``"exact"``: the integer programme (``scipy.optimize.milp``), for a small batch
        (up to :data:`EXACT_CELLS` cells) where the leftover budget matters.

    Returns
    -------
    numpy.ndarray
        The chosen column of each row.

    Examples
    --------
    >>> profit = np.array([[0.0, 2.0, 3.0], [0.0, 1.0, 4.0]])
    >>> discount = np.array([[0.0, 0.0, 2.0], [0.0, 0.0, 1.0]])
    >>> allocate(profit, discount, budget=1.0).tolist()   # the second cart's coupon pays 3 per unit
    [1, 2]
    >>> allocate(profit, discount, budget=0.0).tolist()
    [1, 1]
    """
    profit = np.asarray(expected_profit, dtype=float)
    discount = np.asarray(expected_discount, dtype=float)
    if profit.ndim != 2 or discount.shape != profit.shape:
        raise BadInputError(
            f"expected_profit {profit.shape} and expected_discount {discount.shape}: expected two "
            "(carts x actions) matrices of the same shape"
        )
    if not budget >= 0:
        raise BadInputError(f"budget {budget}: expected an amount of 0 or more (0: no coupons)")
    ok = ~np.isnan(profit) & ~np.isnan(discount)
    if allowed is not None:
        allowed = np.asarray(allowed, dtype=bool)
        if allowed.shape != profit.shape:
            raise BadInputError(f"allowed: expected shape {profit.shape}, got {allowed.shape}")
        ok &= allowed
    if (discount[ok] < 0).any():
        raise BadInputError("expected_discount: expected discounts of 0 or more")
    free = ok & (discount <= 0)
    if not free.any(axis=1).all():
        row = int(np.flatnonzero(~free.any(axis=1))[0])
        raise BadInputError(
            f"row {row}: no allowed action without discount; every cart needs one (doing nothing)"
        )
    if method == "exact":
        return _allocate_exact(profit, discount, budget, ok)
    if method != "greedy":
        raise BadInputError(f"method {method!r}: expected 'greedy' or 'exact'")
    n = profit.shape[0]
    rows = np.arange(n)
    P = np.where(ok, profit, -np.inf)  # noqa: N806
    D = np.where(ok, discount, np.inf)  # noqa: N806
    start = np.where(free, P, -np.inf).argmax(axis=1)
    current = start.copy()
    cur_p, cur_d = P[rows, current], np.maximum(D[rows, current], 0.0)
    step_row, step_to, step_slope, step_extra, step_rank = [], [], [], [], []
    active = np.ones(n, dtype=bool)
    for rank in range(profit.shape[1]):
        extra = D - cur_d[:, None]
        gain = P - cur_p[:, None]
        candidate = active[:, None] & (extra > _EPSILON) & (gain > _EPSILON)
        with np.errstate(divide="ignore", invalid="ignore"):
            slope = np.where(candidate, gain / np.where(candidate, extra, 1.0), -np.inf)
        best_slope = slope.max(axis=1)
        has = np.isfinite(best_slope)
        if not has.any():
            break
        # Along equal slopes, go to the farthest point (fewer, larger steps on the same line).
        on_line = candidate & (slope >= best_slope[:, None] * (1 - 1e-12) - 1e-15)
        to = np.where(on_line, extra, -np.inf).argmax(axis=1)
        r = np.flatnonzero(has)
        step_row.append(r)
        step_to.append(to[r])
        step_slope.append(best_slope[r])
        step_extra.append(extra[r, to[r]])
        step_rank.append(np.full(r.size, rank))
        current[r] = to[r]
        cur_p[r], cur_d[r] = P[r, to[r]], D[r, to[r]]
        active = has
    chosen = start
    if not step_row:
        return chosen
    s_row, s_to, s_slope, s_extra, s_rank = (np.concatenate(x) for x in (step_row, step_to, step_slope,
                                                                          step_extra, step_rank))  # fmt: skip
    order = np.lexsort((s_rank, -s_slope))  # best slope first; a cart's own steps in hull order
    s_row, s_to, s_extra = s_row[order], s_to[order], s_extra[order]
    spent = np.cumsum(s_extra)
    prefix = int(np.searchsorted(spent, budget + _EPSILON, side="right"))
    chosen[s_row[:prefix]] = s_to[:prefix]  # in order, so each cart ends at its last accepted step
    left = budget - (float(spent[prefix - 1]) if prefix else 0.0)
    blocked = np.zeros(n, dtype=bool)
    for row, to, extra in zip(s_row[prefix:].tolist(), s_to[prefix:].tolist(), s_extra[prefix:].tolist(),
                              strict=True):  # fmt: skip
        if blocked[row]:
            continue
        if extra <= left + _EPSILON:
            chosen[row] = to
            left -= extra
        else:
            blocked[row] = True  # its later steps build on this one
    return chosen


def _allocate_exact(
    profit: NDArray[np.float64], discount: NDArray[np.float64], budget: float, ok: NDArray[np.bool_]
) -> NDArray[np.int64]:
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import csr_matrix

    rows, cols = np.nonzero(ok)
    if rows.size > EXACT_CELLS:
        raise BadInputError(
            f"allocate(method='exact'): {rows.size:,} (cart, action) cells, more than {EXACT_CELLS:,}; "
            "use method='greedy'"
        )
    n = profit.shape[0]
    one_each = csr_matrix((np.ones(rows.size), (rows, np.arange(rows.size))), shape=(n, rows.size))
    spend = discount[rows, cols][None, :]
    constraints = [LinearConstraint(one_each, 1, 1)]
    if np.isfinite(budget):
        constraints.append(LinearConstraint(spend, -np.inf, budget))
    result = milp(
        -profit[rows, cols], constraints=constraints, integrality=np.ones(rows.size), bounds=Bounds(0, 1)
    )
    if result.x is None:
        raise BadInputError(f"allocate(method='exact'): the integer programme failed ({result.message})")
    chosen = np.zeros(n, dtype=np.int64)
    picked = result.x > 0.5
    chosen[rows[picked]] = cols[picked]
    return chosen


# --------------------------------------------------------------------------- guardrails


def consent_mask(carts: pd.DataFrame, actions: Sequence[Action]) -> NDArray[np.bool_]:
    """(carts x actions): doing nothing always; a message where the cart's customer consented to its
    channel (a missing ``consent_<channel>`` column counts as no consent)."""
    n = len(carts)
    columns = []
    for action in actions:
        if action.channel is None:
            columns.append(np.ones(n, dtype=bool))
        else:
            name = f"consent_{action.channel}"
            columns.append(
                carts[name].to_numpy(dtype=bool) if name in carts.columns else np.zeros(n, dtype=bool)
            )
    return np.column_stack(columns) if columns else np.zeros((n, 0), dtype=bool)


def context_from_row(row: Mapping[Any, Any], now: float | None = None) -> DecisionContext:
    """A DecisionContext for one cart of a cart table (``user_id``, ``abandoned_at``, ``value``,
    ``consent_<channel>``; optionally ``cart_id``, ``now``, ``utc_offset_minutes``, ``in_stock``,
    ``is_harvester``). Times may be timestamps or epoch seconds; ``now`` defaults to abandonment."""
    abandoned = _epoch(row.get("abandoned_at"))
    at = now if now is not None else _epoch(row.get("now")) if row.get("now") is not None else abandoned
    consent: frozenset[Channel] = frozenset(c for c in CHANNELS if bool(row.get(f"consent_{c}", False)))
    stock = row.get("in_stock")
    return DecisionContext(
        user_id=str(row.get("user_id", "")),
        now=float(at if at is not None else 0.0),
        cart_id=None if row.get("cart_id") is None else str(row["cart_id"]),
        abandoned_at=abandoned,
        value=float(row.get("value", 0.0)),
        consent=consent,
        utc_offset_minutes=int(row.get("utc_offset_minutes", 0) or 0),
        in_stock=None if stock is None or (isinstance(stock, float) and math.isnan(stock)) else bool(stock),
        is_harvester=bool(row.get("is_harvester", False)),
    )


def _epoch(value: Any) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, pd.Timestamp | np.datetime64):
        stamp = pd.Timestamp(value)
        if stamp.tzinfo is None:
            stamp = stamp.tz_localize("UTC")
        return float(stamp.timestamp())
    return float(value)


class Guarded:
    """A policy behind the guardrails: the policy only ever sees, and so only returns, allowed actions.

    Parameters
    ----------
    policy
        Any :class:`Policy`.
    guardrails
        The checks; their catalogue's actions are the candidates unless ``candidates`` is given.
    candidates
        The actions to offer the policy (before the guardrails); None for the catalogue's.

    A decision whose action the guardrails refused (a policy that ignored ``allowed``) is replaced by
    doing nothing, with the reason; the reasons also say how many candidates were refused and why.
    """

    def __init__(
        self, policy: Policy, guardrails: Guardrails, candidates: Sequence[Action] | None = None
    ) -> None:
        self.policy = policy
        self.guardrails = guardrails
        self.candidates = list(candidates) if candidates is not None else list(guardrails.catalogue.actions)
        self.name = policy.name
        self.version = policy.version

    def decide(self, context: DecisionContext, allowed: Sequence[Action] | None = None) -> Decision:
        candidates = self.candidates if allowed is None else list(allowed)
        passed, refused = self.guardrails.allowed(context, candidates)
        decision = self.policy.decide(context, passed)
        return self._checked(decision, set(passed), refused, len(candidates))

    def decide_batch(
        self,
        carts: pd.DataFrame,
        allowed: Sequence[Action] | None = None,
        mask: NDArray[np.bool_] | None = None,
    ) -> list[Decision]:
        """Each cart's context from its row (:func:`context_from_row`), the guardrails per cart, then the
        policy's batch decision on what they allow (and on ``mask``, if given)."""
        candidates = self.candidates if allowed is None else list(allowed)
        m = _mask(carts, candidates, mask).copy()
        refusals: list[dict[str, str]] = []
        for i, row in enumerate(carts.to_dict("records")):
            _, refused = self.guardrails.allowed(context_from_row(row), candidates)
            refusals.append(refused)
            if refused:
                m[i] &= np.array([a.name not in refused for a in candidates], dtype=bool)
        decisions = self.policy.decide_batch(carts, candidates, m)
        out = []
        for i, decision in enumerate(decisions):
            passed = {a for a, ok in zip(candidates, m[i].tolist(), strict=True) if ok} | {NOTHING}
            out.append(self._checked(decision, passed, refusals[i], len(candidates)))
        return out

    @staticmethod
    def _checked(decision: Decision, passed: set[Action], refused: Mapping[str, str], n: int) -> Decision:
        reasons = list(decision.reasons)
        if decision.action not in passed:
            why = refused.get(decision.action.name, "not among the allowed actions")
            return Decision(
                NOTHING, 1.0, decision.policy, decision.version, 0.0,
                (*reasons, f"guardrails: {decision.action} refused ({why}); nothing"),
            )  # fmt: skip
        if refused:
            distinct = list(dict.fromkeys(refused.values()))
            shown = "; ".join(distinct[:3]) + (f"; and {len(distinct) - 3} more" if len(distinct) > 3 else "")
            reasons.append(f"guardrails: {len(refused)} of {n} actions refused ({shown})")
        return replace(decision, reasons=tuple(reasons))
