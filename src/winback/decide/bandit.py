"""A contextual Thompson-sampling bandit that keeps exploring a bounded share of traffic, and a replay
loop that plays any policy through simulated carts day by day and scores it against the truth.

:class:`ThompsonBandit` learns online which of a compact set of *arms* earns the most margin per cart
(issue 5, "Policies", point 3). Each arm is an action, or a named group of interchangeable actions (the
first one a cart is allowed gets sent, e.g. a reminder by e-mail, else by push). The reward is what a shop
observes once a cart's recovery window has closed: the cart's realised margin,
``margin_rate x recovered revenue - discount - channel cost``, so doing nothing earns the natural
recoveries' margin and the arm with the largest expected margin is the one with the largest incremental
margin.

Model (Bayesian linear regression, conjugate, Gaussian posterior). A cart's features ``x`` are an
intercept, ``log(value / 60)``, ``log(n_items)``, the consent flags and any extra ``features``. The reward
of arm ``a`` is ``value x (x . theta_a) + value x noise``: margins scale with the cart's value, and so
does their noise (a recovered 1,000 cart earns 300, a recovered 20 cart 6), so the regression is on
``reward / value`` (the margin rate), which makes every cart count alike instead of letting a few large
carts drown the rest (``value_scaled=False`` regresses the reward itself). With ``shared_baseline``
(default) ``theta_a = beta + delta_a``: a baseline every arm shares plus a per-arm effect, zero for the
reference arm (doing nothing), with tighter priors on the effects (a few points of margin rate, the
baseline is not) and tighter still on how they vary with the features, so every cart teaches the
baseline and each arm only has to learn its difference; ``shared_baseline=False`` fits an independent
regression per arm. Prior ``theta ~ N(0, sigma^2 Lambda0^-1)``, posterior ``N(mu, sigma^2 P^-1)`` with
``P = Lambda0 + X'X`` and ``mu = P^-1 X'y`` (accumulated sums, so learning is exact and order-free), and
``sigma^2`` a plug-in estimate, ``(nu0 s0^2 + y'y - mu' P mu) / (nu0 + n)``, shrunk towards the prior
guess ``s0^2``.

Decisions. The *greedy* arm has the highest posterior-mean reward among the arms a cart is allowed. In
each call a uniformly random subset of ``floor(max_explore x n + u)`` carts (``u`` uniform; one cart:
with probability ``max_explore``) takes a Thompson draw instead: one of ``n_draws`` posterior samples,
picked at random, and its best allowed arm (often the greedy one again). So at most
``ceil(max_explore x n)`` carts of a batch deviate from the greedy choice, and in expectation at most a
``max_explore`` share of single decisions. Propensity of the chosen arm ``a``::

    P(a) = (1 - max_explore) 1[a = greedy] + max_explore x (draws whose best arm is a) / n_draws

This is **exact for the policy as run** (a Thompson step over the ``n_draws`` samples it drew; a
cart's gate is Bernoulli(``max_explore``) marginally, independent of its context), and an unbiased
Monte-Carlo estimate, standard error at most ``0.5 x max_explore / sqrt(n_draws)``, of the ideal
Thompson-sampling probability under the full posterior. A batch shares one set of draws (each cart
picks its own at random); a single :meth:`~ThompsonBandit.decide` draws afresh. Several decisions of
one batch are not independent (the subset size and the draws are shared), which leaves each
propensity exact and inverse-propensity estimates unbiased.

:func:`run_online` replays a table of simulated carts (e.g. ``simulate(...).carts`` of a run without a
policy) in time order: each day the policy decides for that day's carts; the realised outcome of the
chosen action (:func:`winback.sim.response.realised_outcomes`) is shown to it once the recovery window
has passed (``feedback_delay_days``); each decision is scored by the exact expected incremental margin
of its action (:func:`winback.sim.response.expected_outcomes`), which the policy never sees. Honest
limits: the replay does not feed the policy's messages back into the shop (fatigue, unsubscribes and
learnt coupon harvesting are those of the run the carts came from), and the simulator applies one
action per cart.

Examples
--------
>>> import pandas as pd
>>> bandit = ThompsonBandit(["nothing", "reminder/email/24h"], seed=0)
>>> carts = pd.DataFrame({"value": [80.0, 40.0], "n_items": [2, 1], "consent_email": [True, True]})
>>> _ = bandit.update(carts, ["reminder/email/24h", "nothing"], [24.0, 0.0])
>>> decision = bandit.decide_batch(carts, bandit.actions)[0]
>>> decision.policy, 0 < decision.propensity <= 1
('bandit', True)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from scipy.linalg import cho_solve, solve_triangular

from winback.decide.actions import CHANNELS, NOTHING, Action
from winback.decide.context import DecisionContext
from winback.decide.policy import Decision, Policy, consent_mask
from winback.errors import BadInputError
from winback.sim import ShopConfig, expected_outcomes, realised_outcomes

__all__ = [
    "BASE_FEATURES",
    "DEFAULT_ARMS",
    "EXPLORED",
    "OBSERVED",
    "OnlineRun",
    "ThompsonBandit",
    "consent_mask",
    "run_online",
]

#: The default arms: nothing, the plain reminder, and the reminder and 5/10/15% coupons with
#: recommendations, all e-mailed at 24 h (the delay the evidence favours): 6 arms, not the catalogue's 97,
#: so that a shop of a few thousand carts a quarter can tell them apart.
DEFAULT_ARMS: tuple[str, ...] = (
    "nothing",
    "reminder/email/24h",
    "reminder+recs/email/24h",
    "coupon5+recs/email/24h",
    "coupon10+recs/email/24h",
    "coupon15+recs/email/24h",
)
#: The features every cart has, before the intercept and any extra ``features``.
BASE_FEATURES: tuple[str, ...] = ("log_value", "log_items", *(f"consent_{c}" for c in CHANNELS))
_VALUE_CENTRE = 60.0  # log(value / 60): about the median cart, so the intercept is a typical cart's rate
#: The cart columns a policy sees in :func:`run_online` (those the simulator hands its own policy hook).
OBSERVED: tuple[str, ...] = (
    "cart_id", "user_id", "abandoned_at", "value", "n_items", *(f"consent_{c}" for c in CHANNELS),
)  # fmt: skip
#: How a decision's reasons start when it deviates from the greedy arm (a Thompson draw chose another).
EXPLORED = "bandit: explored"
_NO_ARM = "bandit: no arm allowed; nothing"
_CHUNK = 2048  # carts scored against one set of draws at a time (memory: chunk x draws x arms floats)


def _as_action(action: Action | str, where: str) -> Action:
    if isinstance(action, Action):
        return action
    try:
        return Action.parse(str(action))
    except ValueError as error:
        raise BadInputError(f"{where}: {error}") from None


class ThompsonBandit:
    """Contextual Thompson sampling over a compact set of arms, exploring at most ``max_explore``.

    Parameters
    ----------
    arms
        The arms: a sequence of actions (or names), one arm each; or a mapping from an arm's name to its
        actions in order of preference (the first one a cart is allowed gets sent; groups may not
        overlap). None: :data:`DEFAULT_ARMS`. Doing nothing should be one of them: it is the reference
        the effects are measured against (else the first arm is).
    features
        Extra numeric features by name: read from the cart table's columns in :meth:`decide_batch` and
        :meth:`update`, and from ``context.features`` in :meth:`decide`; missing values count as 0, so
        give them centred and on a unit scale.
    max_explore
        Largest share of decisions that may deviate from the greedy (posterior-mean) arm.
    n_draws
        Posterior draws behind each Thompson step and its propensity.
    value_scaled
        Regress ``reward / value`` (margin rate; noise proportional to the cart's value) rather than the
        reward itself.
    shared_baseline
        One baseline regression shared by every arm plus a per-arm effect (the reference arm's is 0);
        False: an independent regression per arm.
    prior_precision, effect_precision, slope_precision
        Prior precision, in units of the noise variance, of the baseline (or per-arm) coefficients, of
        each arm's effect at a typical cart (its intercept), and of how the effect varies with the
        features (its slopes). With the default ``value_scaled`` noise of about 0.1 in margin rate:
        prior standard deviations of about 0.1, 0.03 and 0.01, i.e. effects of a few points of margin
        rate that vary less across carts than the baseline does.
    noise_variance, noise_prior_weight
        Prior guess of the noise variance (of ``reward / value`` when ``value_scaled``; None: 0.0225, the
        largest variance of a purchase earning a 30% margin) and its weight in pseudo-observations.
    seed
        Seed of the exploration and the posterior draws.
    name, version
        Recorded with every decision.

    Attributes
    ----------
    precision_, moment_, sum_squares_, n_
        The accumulated posterior: ``Lambda0 + X'X``, ``X'y``, ``y'y`` and the number of rewards learnt.
    """

    def __init__(
        self,
        arms: Sequence[Action | str] | Mapping[str, Sequence[Action | str]] | None = None,
        *,
        features: Sequence[str] = (),
        max_explore: float = 0.2,
        n_draws: int = 200,
        value_scaled: bool = True,
        shared_baseline: bool = True,
        prior_precision: float = 1.0,
        effect_precision: float = 10.0,
        slope_precision: float = 100.0,
        noise_variance: float | None = None,
        noise_prior_weight: float = 10.0,
        seed: int = 0,
        name: str = "bandit",
        version: str = "1",
    ) -> None:
        self.arms = arms
        self.features = tuple(features)
        self.max_explore = max_explore
        self.n_draws = n_draws
        self.value_scaled = value_scaled
        self.shared_baseline = shared_baseline
        self.prior_precision = prior_precision
        self.effect_precision = effect_precision
        self.slope_precision = slope_precision
        self.noise_variance = noise_variance
        self.noise_prior_weight = noise_prior_weight
        self.seed = seed
        self.name = name
        self.version = version
        self._check()
        self._groups = self._arm_groups(DEFAULT_ARMS if arms is None else arms)
        self.arm_names = [g[0] for g in self._groups]
        self._arm_of = {a: k for k, (_, members) in enumerate(self._groups) for a in members}
        self._rank = {a: (k, r) for k, (_, m) in enumerate(self._groups) for r, a in enumerate(m)}
        self._reference = next((k for k, (_, m) in enumerate(self._groups) if NOTHING in m), 0)
        self._rng = np.random.default_rng(seed)
        k, d = len(self._groups), 1 + len(BASE_FEATURES) + len(self.features)
        # Which coefficient blocks (of d each) make up each arm's linear score.
        self._blocks = np.zeros((k, k))
        for arm in range(k):
            if shared_baseline:
                self._blocks[arm, 0] = 1.0
                if arm != self._reference:
                    self._blocks[arm, arm if arm != 0 else self._reference] = 1.0
            else:
                self._blocks[arm, arm] = 1.0
        prior = np.full(k * d, float(prior_precision))
        if shared_baseline:
            for block in range(1, k):  # an effect's intercept, then its slopes on the features
                prior[block * d] = effect_precision
                prior[block * d + 1 : (block + 1) * d] = slope_precision
        self._dim = d
        self.precision_ = np.diag(prior)
        self.moment_ = np.zeros(k * d)
        self.sum_squares_ = 0.0
        self.n_ = 0
        self._posterior: tuple[NDArray[np.float64], NDArray[np.float64], float] | None = None

    # -- configuration ---------------------------------------------------------------------------------

    def _check(self) -> None:
        if not 0 <= self.max_explore <= 1:
            raise BadInputError(f"max_explore {self.max_explore}: expected a share in [0, 1]")
        if not (isinstance(self.n_draws, int) and self.n_draws >= 1):
            raise BadInputError(f"n_draws {self.n_draws}: expected a whole number of draws, at least 1")
        for key in ("prior_precision", "effect_precision", "slope_precision", "noise_prior_weight"):
            if not getattr(self, key) > 0:
                raise BadInputError(f"{key} {getattr(self, key)}: expected a positive number")
        if self.noise_variance is not None and not self.noise_variance > 0:
            raise BadInputError(f"noise_variance {self.noise_variance}: expected a positive variance")
        clash = set(self.features) & {"value", "n_items", *BASE_FEATURES}
        if clash:
            raise BadInputError(f"features: {sorted(clash)[0]!r} is already a base feature")

    @staticmethod
    def _arm_groups(
        arms: Sequence[Action | str] | Mapping[str, Sequence[Action | str]],
    ) -> list[tuple[str, tuple[Action, ...]]]:
        if isinstance(arms, Mapping):
            groups = []
            for name, members in arms.items():
                if isinstance(members, str | Action):
                    members = [members]
                parsed = tuple(_as_action(a, f"arms[{name!r}]") for a in members)
                if not parsed:
                    raise BadInputError(f"arms[{name!r}]: expected at least one action")
                groups.append((str(name), parsed))
        else:
            groups = []
            for i, a in enumerate(arms):
                action = _as_action(a, f"arms[{i}]")
                groups.append((action.name, (action,)))
        if not groups:
            raise BadInputError("arms: expected at least one arm")
        seen: dict[Action, str] = {}
        for name, members in groups:
            for action in members:
                if action in seen:
                    raise BadInputError(
                        f"arms: {action} is in both {seen[action]!r} and {name!r}; arms may not overlap "
                        "(an action's propensity is its arm's)"
                    )
                seen[action] = name
        return groups

    @property
    def actions(self) -> list[Action]:
        """Every action of every arm, arm by arm."""
        return [a for _, members in self._groups for a in members]

    # -- features --------------------------------------------------------------------------------------

    def _matrix(self, carts: pd.DataFrame) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """(features with intercept, value) of each cart of a table."""
        if "value" not in carts.columns:
            raise BadInputError("carts: no 'value' column (the cart value; margins scale with it)")
        missing = [f for f in self.features if f not in carts.columns]
        if missing:
            raise BadInputError(f"carts: missing feature column(s) {', '.join(missing)}")
        n = len(carts)
        value = carts["value"].to_numpy(dtype=float)
        if np.isnan(value).any() or (value < 0).any():
            row = int(np.flatnonzero(np.isnan(value) | (value < 0))[0])
            raise BadInputError(f"carts: row {row}: value {value[row]}: expected a cart value of 0 or more")
        items = carts["n_items"].to_numpy(dtype=float) if "n_items" in carts.columns else np.full(n, np.nan)
        columns = [np.ones(n), np.log(np.maximum(value, 1.0) / _VALUE_CENTRE), np.log(np.maximum(items, 1.0))]
        for c in CHANNELS:
            name = f"consent_{c}"
            columns.append(carts[name].to_numpy(dtype=float) if name in carts.columns else np.zeros(n))
        columns.extend(carts[f].to_numpy(dtype=float) for f in self.features)
        x = np.column_stack(columns)
        return np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0), value

    def _vector(self, context: DecisionContext) -> NDArray[np.float64]:
        f = context.features
        items = float(f.get("n_items", 1.0))
        row = [1.0, math.log(max(context.value, 1.0) / _VALUE_CENTRE), math.log(max(items, 1.0))]
        row += [float(context.can_message(c)) for c in CHANNELS]
        row += [float(f.get(name, 0.0)) for name in self.features]
        return np.nan_to_num(np.array(row), nan=0.0, posinf=0.0, neginf=0.0)

    def _contexts(
        self, contexts: Sequence[DecisionContext]
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        if not contexts:
            return np.zeros((0, self._dim)), np.zeros(0)
        x = np.vstack([self._vector(c) for c in contexts])
        return x, np.array([c.value for c in contexts], dtype=float)

    # -- posterior -------------------------------------------------------------------------------------

    def update(
        self,
        carts: pd.DataFrame | Sequence[DecisionContext],
        actions: Sequence[Action | str],
        rewards: Sequence[float] | NDArray[np.float64],
    ) -> ThompsonBandit:
        """Learn the realised rewards of the actions taken on ``carts`` (a cart table or contexts).

        Each action must belong to an arm. Rewards are in currency (the cart's realised margin).
        """
        x, value = self._matrix(carts) if isinstance(carts, pd.DataFrame) else self._contexts(carts)
        y = np.asarray(rewards, dtype=float)
        if len(actions) != len(x) or y.shape != (len(x),):
            raise BadInputError(
                f"update: {len(x)} carts, {len(actions)} actions and {y.size} rewards; expected one of each"
            )
        if not np.isfinite(y).all():
            raise BadInputError(f"rewards: row {int(np.flatnonzero(~np.isfinite(y))[0])}: expected a number")
        arm = np.empty(len(x), dtype=np.int64)
        cache: dict[Action | str, int] = {}
        for i, a in enumerate(actions):
            k = cache.get(a)
            if k is None:
                action = _as_action(a, f"actions[{i}]")
                if action not in self._arm_of:
                    raise BadInputError(
                        f"actions[{i}]: {action} is not in any arm ({', '.join(self.arm_names)})"
                    )
                k = cache[a] = self._arm_of[action]
            arm[i] = k
        if self.value_scaled:
            y = y / np.maximum(value, 1.0)
        phi = (self._blocks[arm][:, :, None] * x[:, None, :]).reshape(len(x), -1)
        self.precision_ = self.precision_ + phi.T @ phi
        self.moment_ = self.moment_ + phi.T @ y
        self.sum_squares_ += float(y @ y)
        self.n_ += len(x)
        self._posterior = None
        return self

    def _state(self) -> tuple[NDArray[np.float64], NDArray[np.float64], float]:
        """Posterior mean, a root ``R`` of the posterior covariance over the noise variance
        (``R R' = P^-1``), and the noise variance; computed once per update."""
        if self._posterior is None:
            lower = np.linalg.cholesky(self.precision_)
            mean = cho_solve((lower, True), self.moment_)
            root = solve_triangular(lower.T, np.eye(lower.shape[0]), lower=False)  # L^-T: R R' = P^-1
            s0 = (
                self.noise_variance
                if self.noise_variance is not None
                else (0.0225 if self.value_scaled else 1.0)
            )
            residual = max(self.sum_squares_ - float(mean @ self.moment_), 0.0)  # y'y - mu' P mu >= 0
            variance = (self.noise_prior_weight * s0 + residual) / (self.noise_prior_weight + self.n_)
            self._posterior = (mean, root, variance)
        return self._posterior

    def _score_draws(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        """(carts x draws x arms) each arm's linear score under ``n_draws`` posterior draws of the
        coefficients, shared by the carts of ``x``."""
        mean, root, variance = self._state()
        z = self._rng.standard_normal((mean.size, self.n_draws))
        theta = (mean[:, None] + math.sqrt(variance) * (root @ z)).T.reshape(
            self.n_draws, len(self._groups), self._dim
        )
        return np.asarray(np.einsum("nd,sbd->nsb", x, theta) @ self._blocks.T)

    def _one_score_draws(self, x: NDArray[np.float64], arms: list[int]) -> NDArray[np.float64]:
        """(draws x arms) the scores of ``arms`` for one cart under ``n_draws`` posterior draws, drawn in
        the arms' score space: they are jointly Gaussian with mean ``A mu`` and covariance
        ``sigma^2 (A R)(A R)'`` (``A``: the arms' rows of the design), so ``arms x n_draws`` normals do
        instead of ``coefficients x n_draws``."""
        mean, root, variance = self._state()
        design = (self._blocks[arms][:, :, None] * x[0][None, None, :]).reshape(len(arms), -1)
        w = design @ root
        cov = variance * (w @ w.T)
        lower = np.linalg.cholesky(cov + 1e-12 * np.trace(cov) * np.eye(len(arms)))
        draws = (design @ mean)[:, None] + lower @ self._rng.standard_normal((len(arms), self.n_draws))
        return np.asarray(draws.T)

    def scores(self, carts: pd.DataFrame) -> NDArray[np.float64]:
        """(carts x arms) posterior-mean reward (currency) of each arm."""
        x, value = self._matrix(carts)
        return self._mean_scores(x) * (np.maximum(value, 1.0)[:, None] if self.value_scaled else 1.0)

    def _mean_scores(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        mean = self._state()[0].reshape(len(self._groups), self._dim)
        return np.asarray((x @ mean.T) @ self._blocks.T)

    # -- decisions -------------------------------------------------------------------------------------

    def _arm_columns(
        self, allowed: Sequence[Action], mask: NDArray[np.bool_]
    ) -> tuple[NDArray[np.bool_], NDArray[np.int64]]:
        """Per cart and arm: whether the arm is available, and the column of ``allowed`` it would send."""
        n = mask.shape[0]
        where = {a: j for j, a in enumerate(allowed)}
        available = np.zeros((n, len(self._groups)), dtype=bool)
        column = np.full((n, len(self._groups)), -1, dtype=np.int64)
        for k, (_, members) in enumerate(self._groups):
            for action in members:
                j = where.get(action)
                if j is None:
                    continue
                take = mask[:, j] & ~available[:, k]
                column[take, k] = j
                available[:, k] |= take
        return available, column

    def probabilities(
        self, carts: pd.DataFrame, allowed: Sequence[Action], mask: NDArray[np.bool_] | None = None
    ) -> NDArray[np.float64]:
        """(carts x allowed) probability that the policy sends each action, estimated with ``n_draws``
        fresh posterior draws per chunk of carts (rows sum to 1 where an arm is available)."""
        x, _ = self._matrix(carts)
        m = self._mask(len(carts), allowed, mask)
        available, column = self._arm_columns(allowed, m)
        out = np.zeros(m.shape)
        for lo in range(0, len(x), _CHUNK):
            part = slice(lo, lo + _CHUNK)
            greedy = self._greedy(x[part], available[part])
            best = self._best_per_draw(self._score_draws(x[part]), available[part])
            arm_p = np.stack([(best == k).sum(axis=1) for k in range(len(self._groups))], axis=1)
            arm_p = self.max_explore * arm_p / self.n_draws * (greedy >= 0)[:, None]
            rows = np.arange(arm_p.shape[0])
            arm_p[rows, greedy] += (1 - self.max_explore) * (greedy >= 0)
            cols = column[part]
            for k in range(arm_p.shape[1]):
                ok = cols[:, k] >= 0
                out[lo + np.flatnonzero(ok), cols[ok, k]] += arm_p[ok, k]
        return out

    def _best_per_draw(self, draws: NDArray[np.float64], available: NDArray[np.bool_]) -> NDArray[np.int64]:
        """(carts x draws) the best available arm under each draw."""
        return np.asarray(np.where(available[:, None, :], draws, -np.inf).argmax(axis=2))

    def _greedy(self, x: NDArray[np.float64], available: NDArray[np.bool_]) -> NDArray[np.int64]:
        scores = np.where(available, self._mean_scores(x), -np.inf)
        return np.where(available.any(axis=1), scores.argmax(axis=1), -1)

    @staticmethod
    def _mask(n: int, allowed: Sequence[Action], mask: NDArray[np.bool_] | None) -> NDArray[np.bool_]:
        if mask is None:
            return np.ones((n, len(allowed)), dtype=bool)
        m = np.asarray(mask, dtype=bool)
        if m.shape != (n, len(allowed)):
            raise BadInputError(
                f"mask: expected shape {(n, len(allowed))} (carts x allowed actions), got {m.shape}"
            )
        return m

    def decide(self, context: DecisionContext, allowed: Sequence[Action]) -> Decision:
        # The same decision as a one-cart decide_batch, without its (carts x allowed) arrays: this is the
        # real-time path, and must stay well under a millisecond.
        column = [-1] * len(self._groups)
        rank = [len(self.actions)] * len(self._groups)
        for j, action in enumerate(allowed):
            hit = self._rank.get(action)
            if hit is not None and hit[1] < rank[hit[0]]:
                column[hit[0]], rank[hit[0]] = j, hit[1]
        arms = [k for k, j in enumerate(column) if j >= 0]
        if not arms:
            return Decision(NOTHING, 1.0, self.name, self.version, 0.0, (_NO_ARM,))
        x = self._vector(context)[None, :]
        means = self._mean_scores(x)[0]
        draws = self._one_score_draws(x, arms)  # (draws x available arms)
        greedy = int(np.argmax(means[arms]))
        best = draws.argmax(axis=1)
        gated = bool(self._rng.random() < self.max_explore)
        pick = int(best[self._rng.integers(self.n_draws)]) if gated else greedy
        share = float(np.count_nonzero(best == pick)) / self.n_draws
        propensity = self.max_explore * share + (1 - self.max_explore) * (pick == greedy)
        k = arms[pick]
        scale = max(context.value, 1.0) if self.value_scaled else 1.0
        reference = self._reference if NOTHING in self._groups[self._reference][1] else -1
        expected = float(scale * (means[k] - means[reference])) if reference >= 0 else None
        reason = self._reason(k, arms[greedy], gated, len(arms), propensity)
        return Decision(allowed[column[k]], propensity, self.name, self.version, expected, (reason,))

    def _reason(self, arm: int, greedy: int, gated: bool, n_available: int, propensity: float) -> str:
        how = EXPLORED if arm != greedy else "bandit: drawn greedy" if gated else "bandit: greedy"
        return (
            f"{how}, arm {self.arm_names[arm]} of {n_available} allowed (posterior mean best: "
            f"{self.arm_names[greedy]}); chosen with probability {propensity:.3g}"
        )

    def decide_batch(
        self, carts: pd.DataFrame, allowed: Sequence[Action], mask: NDArray[np.bool_] | None = None
    ) -> list[Decision]:
        x, value = self._matrix(carts)
        m = self._mask(len(carts), allowed, mask)
        out: list[Decision] = []
        n_gate = math.floor(self.max_explore * len(x) + self._rng.random())
        gate = np.zeros(len(x), dtype=bool)
        gate[self._rng.choice(len(x), size=min(n_gate, len(x)), replace=False)] = True
        for lo in range(0, len(x), _CHUNK):
            part = slice(lo, lo + _CHUNK)
            draws = self._score_draws(x[part])
            out += self._decide(x[part], value[part], allowed, m[part], draws, gate[part])
        return out

    def _decide(
        self,
        x: NDArray[np.float64],
        value: NDArray[np.float64],
        allowed: Sequence[Action],
        mask: NDArray[np.bool_],
        draws: NDArray[np.float64],
        gate: NDArray[np.bool_] | None = None,
    ) -> list[Decision]:
        n = len(x)
        available, column = self._arm_columns(allowed, mask)
        greedy = self._greedy(x, available)
        best = self._best_per_draw(draws, available)
        rows = np.arange(n)
        if gate is None:
            gate = self._rng.random(n) < self.max_explore
        pick = best[rows, self._rng.integers(self.n_draws, size=n)]
        arm = np.where(gate, pick, greedy)
        agree = (best == arm[:, None]).sum(axis=1) / self.n_draws
        propensity = self.max_explore * agree + (1 - self.max_explore) * (arm == greedy)
        means = self._mean_scores(x) * (np.maximum(value, 1.0)[:, None] if self.value_scaled else 1.0)
        reference = self._reference if NOTHING in self._groups[self._reference][1] else -1
        decisions = []
        for i in range(n):
            k = int(arm[i])
            if greedy[i] < 0:
                decisions.append(Decision(NOTHING, 1.0, self.name, self.version, 0.0, (_NO_ARM,)))
                continue
            action = allowed[int(column[i, k])]
            expected = float(means[i, k] - means[i, reference]) if reference >= 0 else None
            reason = self._reason(k, int(greedy[i]), bool(gate[i]), int(available[i].sum()), propensity[i])
            decisions.append(
                Decision(action, float(propensity[i]), self.name, self.version, expected, (reason,))
            )
        return decisions


# --------------------------------------------------------------------------- online replay


@dataclass(frozen=True)
class OnlineRun:
    """What :func:`run_online` measured.

    Attributes
    ----------
    log
        One row per cart, in decision order: ``cart_id``, ``day`` (whole days since the shop's start),
        ``action``, ``propensity``, ``reward`` (the realised margin the policy was shown),
        ``learnt_on_day`` (when it was shown; NaN if the run ended first), ``expected_profit`` (the
        policy's own estimate, NaN if none) and the truth it never saw: ``true_incremental_margin`` and
        ``true_margin`` (exact expectations of its action).
    daily
        One row per day with carts: ``day``, ``carts``, ``profit_per_cart`` (mean true incremental margin)
        and ``margin_per_cart``, ``explore_share`` (share of carts not given the action the policy rated
        best, where it says so in its reasons) and ``learnt`` (rewards learnt before that day's decisions).
    """

    log: pd.DataFrame
    daily: pd.DataFrame

    def by_period(self, days: int = 30, start: int | None = None) -> pd.DataFrame:
        """True incremental margin per cart over consecutive periods of ``days`` (from ``start``, the first
        day by default): ``period``, ``first_day``, ``carts``, ``profit_per_cart``, ``margin_per_cart``."""
        log = self.log
        first = int(log["day"].min()) if start is None else start
        period = (log["day"] - first) // days
        grouped = log.assign(period=period).groupby("period")
        return pd.DataFrame(
            {
                "first_day": first + grouped.size().index.to_numpy() * days,
                "carts": grouped.size(),
                "profit_per_cart": grouped["true_incremental_margin"].mean(),
                "margin_per_cart": grouped["true_margin"].mean(),
            }
        ).reset_index()


class _Outcomes:
    """Each action's realised margin and true expected (incremental) margin on every cart, computed for
    the whole table the first time the action is chosen (one vectorised call instead of one per day)."""

    def __init__(self, carts: pd.DataFrame, config: ShopConfig) -> None:
        self.carts, self.config = carts, config
        self.table: dict[str, NDArray[np.float64]] = {}  # action -> (carts x 3)

    def of(
        self, actions: NDArray[Any], rows: NDArray[np.int64]
    ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
        """(realised margin, true incremental margin, true margin) of ``actions[i]`` on cart ``rows[i]``."""
        out = np.empty((len(rows), 3))
        for name in pd.unique(actions):
            if name not in self.table:
                realised = realised_outcomes(self.carts, name, self.config)
                truth = expected_outcomes(self.carts, name, self.config)
                self.table[name] = np.column_stack(
                    [realised["margin"], truth["incremental_margin"], truth["margin"]]
                ).astype(float)
            on = actions == name
            out[on] = self.table[name][rows[on]]
        return out[:, 0], out[:, 1], out[:, 2]


def _days(carts: pd.DataFrame, origin: datetime | pd.Timestamp) -> NDArray[np.int64]:
    at = pd.to_datetime(carts["abandoned_at"], utc=True)
    return np.asarray(np.floor((at - pd.Timestamp(origin)) / pd.Timedelta(days=1)), dtype=np.int64)


def run_online(
    policy: Policy,
    carts: pd.DataFrame,
    config: ShopConfig | None = None,
    *,
    batch_days: int = 1,
    feedback_delay_days: int = 7,
    allowed: Sequence[Action | str] | None = None,
    features: Sequence[str] = (),
) -> OnlineRun:
    """Play ``policy`` through simulated abandoned carts in time order, learning from delayed outcomes.

    Parameters
    ----------
    policy
        Any policy; if it has ``update(carts, actions, rewards)`` (:class:`ThompsonBandit`) it is shown
        each decision's realised margin once available.
    carts
        Abandoned carts with the simulator's columns (``SimulationResult.carts``); the policy reads only
        the observable ones it asks for (``value``, ``n_items``, ``consent_*`` and its extra features).
    config
        The shop's knobs the carts were simulated with (margin, costs, effects).
    batch_days
        Days of carts decided in one call.
    feedback_delay_days
        Days after a batch's last day at which its outcomes are shown: 7 (the recovery window) by default,
        so a cart abandoned on day 0 teaches the decisions of day 7 on.
    allowed
        The actions offered (each cart: those on channels it consented to); None: nothing, the policy's
        ``actions`` (or ``action``) if it has them.
    features
        Extra columns of ``carts`` the policy may see (e.g. customer history built from the event log);
        it always sees the observable ones (:data:`OBSERVED`), never the simulator's latent truth.
    """
    config = config or ShopConfig()
    if batch_days < 1 or feedback_delay_days < 0:
        raise BadInputError(
            f"batch_days {batch_days}, feedback_delay_days {feedback_delay_days}: expected at least 1 and 0"
        )
    missing = [c for c in (*OBSERVED, *features) if c not in carts.columns]
    if missing:
        raise BadInputError(
            f"carts: missing column(s) {', '.join(missing)}; expected the simulator's cart table"
        )
    shown_columns = list(dict.fromkeys([*OBSERVED, *features]))
    if allowed is None:
        offered: list[Action] = [NOTHING, *getattr(policy, "actions", [])]
        if isinstance(getattr(policy, "action", None), Action):
            offered.append(policy.action)  # type: ignore[attr-defined]
    else:
        offered = [_as_action(a, f"allowed[{i}]") for i, a in enumerate(allowed)]
    offered = list(dict.fromkeys(offered))
    learns = callable(getattr(policy, "update", None))
    ordered = carts.sort_values("abandoned_at", kind="stable").reset_index(drop=True)
    day = _days(ordered, pd.Timestamp(config.start, tz="UTC"))
    first = int(day.min()) if len(day) else 0
    batch = (day - first) // batch_days
    outcomes = _Outcomes(ordered, config)
    visible = ordered[shown_columns]
    pending: list[tuple[int, pd.DataFrame, list[Action], NDArray[np.float64], NDArray[np.int64]]] = []
    logs, daily = [], []
    learnt_on = np.full(len(ordered), np.nan)
    learnt = 0
    for b in np.unique(batch):
        rows = np.flatnonzero(batch == b)
        today = first + int(b) * batch_days
        while learns and pending and pending[0][0] <= today:
            _, seen, acts, rewards, where = pending.pop(0)
            policy.update(seen, acts, rewards)  # type: ignore[attr-defined]
            learnt_on[where] = today
            learnt += len(where)
        shown = visible.iloc[rows]
        decisions = policy.decide_batch(shown, offered, consent_mask(shown, offered))
        chosen = [d.action for d in decisions]
        names = np.array([a.name for a in chosen], dtype=object)
        rewards, true_incremental, true_margin = outcomes.of(names, rows)
        due = today + batch_days - 1 + max(feedback_delay_days, 1)
        pending.append((due, shown, chosen, rewards, rows))
        explored = np.array([any(r.startswith(EXPLORED) for r in d.reasons) for d in decisions])
        logs.append(
            pd.DataFrame(
                {
                    "cart_id": shown["cart_id"].to_numpy(),
                    "day": day[rows],
                    "action": names,
                    "propensity": [d.propensity for d in decisions],
                    "reward": rewards,
                    "expected_profit": [
                        np.nan if d.expected_profit is None else d.expected_profit for d in decisions
                    ],
                    "true_incremental_margin": true_incremental,
                    "true_margin": true_margin,
                    "explored": explored,
                }
            )
        )
        for d in np.unique(day[rows]):
            on = day[rows] == d
            daily.append(
                {"day": int(d), "carts": int(on.sum()),
                 "profit_per_cart": float(true_incremental[on].mean()),
                 "margin_per_cart": float(true_margin[on].mean()),
                 "explore_share": float(explored[on].mean()), "learnt": learnt}
            )  # fmt: skip
    log = pd.concat(logs, ignore_index=True) if logs else pd.DataFrame()
    if len(log):
        log.insert(5, "learnt_on_day", learnt_on)
    return OnlineRun(log, pd.DataFrame(daily))
