"""Guardrails every policy passes through: consent, stock, coupon harvesters, frequency caps, quiet hours,
the largest coupon and the discount budget (DESIGN.md, "Decisions").

:meth:`Guardrails.allowed` takes one :class:`~winback.decide.context.DecisionContext` and the actions a
policy considers, and returns those that pass with, for each refused one, why. Doing nothing always
passes. Times are checked at the message's *send time* (``context.send_time(delay)``: the anchor, i.e.
abandonment, plus the delay, never before now): an action whose send time falls in the customer's quiet
hours is **refused, not deferred**, because deferring would silently turn a 1 h action into a 12 h one
and the policy's logged choice (and its propensity) would no longer describe what was sent; a later
delay in the catalogue is the deferral, and the policy can choose it. Frequency caps count the gap
between the channel's last message and that send time.

Budgets: :class:`DiscountBudget` is a fixed amount; :class:`MonthlyPacer` spreads a monthly amount over
the month so it is not gone by the 5th. Both answer ``refusal(expected_discount, now)``.

:class:`HarvesterDetector` flags customers whose abandonments are followed by coupon purchases far more
often than the shop's (see its docstring); the flag goes into ``DecisionContext.is_harvester``.
"""

from __future__ import annotations

import calendar
from collections.abc import Hashable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Protocol

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.base import BaseEstimator

from winback.decide.actions import Action, Channel
from winback.decide.catalogue import Catalogue
from winback.decide.context import DecisionContext
from winback.errors import BadInputError
from winback.models.clv import ModelNotFittedError

__all__ = ["Budget", "DiscountBudget", "Guardrails", "HarvesterDetector", "MonthlyPacer"]

#: How reasons name channels ("no consent for sms", "e-mail frequency cap: ...").
CHANNEL_LABELS: dict[str, str] = {"email": "e-mail", "sms": "sms", "push": "push"}
HOURS_PER_WEEK = 168
_EPSILON = 1e-9


class Budget(Protocol):
    """What the guardrails ask a budget: why a coupon of this expected cost is refused, if it is."""

    def refusal(self, expected_discount: float, now: float | None = None) -> str | None: ...


class Guardrails:
    """The catalogue's limits plus consent, stock, harvesters and an optional discount budget.

    Parameters
    ----------
    catalogue
        Supplies the frequency caps, quiet hours and largest coupon.
    budget
        A :class:`DiscountBudget`, :class:`MonthlyPacer` or anything with ``refusal``; None for no budget.
        The guardrails only ask; the caller records discount given with the budget's ``spend``.
    redemption_rate
        Share of a coupon's face value (coupon x cart value) counted as its expected discount; 1 (the
        default) reserves the full face value, which never overspends.
    """

    def __init__(
        self, catalogue: Catalogue, budget: Budget | None = None, redemption_rate: float = 1.0
    ) -> None:
        if not 0 < redemption_rate <= 1:
            raise BadInputError(f"redemption_rate {redemption_rate}: expected a share in (0, 1]")
        self.catalogue = catalogue
        self.budget = budget
        self.redemption_rate = redemption_rate
        limits = catalogue.limits
        self._caps = {c: h * 3600.0 for c, h in limits.frequency_cap_hours.items() if h > 0}
        self._quiet = limits.quiet_hours
        self._max_coupon = limits.max_coupon
        self._names: dict[Action, str] = {}  # Action.name builds a string each time; refusals need many

    def expected_discount(self, action: Action, context: DecisionContext) -> float:
        """What ``action`` is expected to cost in discount for this cart."""
        return action.coupon * context.value * self.redemption_rate

    def allowed(
        self, context: DecisionContext, actions: Iterable[Action]
    ) -> tuple[list[Action], dict[str, str]]:
        """The actions that pass, in order, and the reason each refused action (by name) was refused."""
        passed: list[Action] = []
        refused: dict[str, str] = {}
        channel_reasons: dict[Channel, str | None] = {}
        coupon_reasons: dict[float, str | None] = {}
        timing_reasons: dict[tuple[Channel, float], str | None] = {}
        budget_reasons: dict[float, str | None] = {}
        out_of_stock = context.in_stock is False
        for action in actions:
            channel = action.channel
            if channel is None:  # doing nothing
                passed.append(action)
                continue
            if channel in channel_reasons:
                reason = channel_reasons[channel]
            else:
                reason = channel_reasons[channel] = self._channel_reason(context, channel)
            if reason is None and out_of_stock:
                reason = "out of stock"
            if reason is None and action.coupon:
                if action.coupon in coupon_reasons:
                    reason = coupon_reasons[action.coupon]
                else:
                    reason = coupon_reasons[action.coupon] = self._coupon_reason(context, action)
            if reason is None:
                key = (channel, action.delay_hours)
                if key in timing_reasons:
                    reason = timing_reasons[key]
                else:
                    reason = timing_reasons[key] = self._timing_reason(context, channel, action.delay_hours)
            if reason is None and action.coupon and self.budget is not None:
                if action.coupon in budget_reasons:
                    reason = budget_reasons[action.coupon]
                else:
                    expected = self.expected_discount(action, context)
                    reason = budget_reasons[action.coupon] = self.budget.refusal(expected, context.now)
            if reason is None:
                passed.append(action)
            else:
                name = self._names.get(action)
                if name is None:
                    name = action.name
                    if len(self._names) < 10_000:
                        self._names[action] = name
                refused[name] = reason
        return passed, refused

    def _channel_reason(self, context: DecisionContext, channel: Channel) -> str | None:
        if channel in context.unsubscribed:
            return f"unsubscribed from {CHANNEL_LABELS[channel]}"
        if channel not in context.consent:
            return f"no consent for {CHANNEL_LABELS[channel]}"
        return None

    def _coupon_reason(self, context: DecisionContext, action: Action) -> str | None:
        if context.is_harvester:
            return "coupon harvester: no coupons"
        if action.coupon > self._max_coupon + _EPSILON:
            return f"coupon {_percent(action.coupon)} is over the maximum of {_percent(self._max_coupon)}"
        return None

    def _timing_reason(self, context: DecisionContext, channel: Channel, delay_hours: float) -> str | None:
        send_at = context.send_time(delay_hours)
        cap = self._caps.get(channel)
        last = context.last_message_at.get(channel)
        if cap is not None and last is not None and abs(send_at - last) < cap:
            if last > context.now:  # a message already scheduled
                when = f"a message due in {_hours(last - context.now)}"
            else:
                when = f"last message {_hours(context.now - last)} ago"
            if send_at > context.now:
                when += f", {_hours(abs(send_at - last))} from this send"
            return f"{CHANNEL_LABELS[channel]} frequency cap: {when} (cap {_hours(cap)})"
        quiet = self._quiet
        if quiet is not None and channel in quiet.channels:
            local = context.local_minute(send_at)
            if quiet.contains(local):
                return (
                    f"quiet hours {quiet} for the customer ({_utc(context.utc_offset_minutes)}): "
                    f"send time {local // 60:02d}:{local % 60:02d} local"
                )
        return None


def _hours(seconds: float) -> str:
    return f"{round(seconds / 3600, 1):g} h"


def _percent(share: float) -> str:
    return f"{round(share * 100, 6):g}%"


def _utc(offset_minutes: int) -> str:
    if offset_minutes == 0:
        return "UTC"
    sign = "+" if offset_minutes > 0 else "-"
    hours, minutes = divmod(abs(offset_minutes), 60)
    return f"UTC{sign}{hours}" + (f":{minutes:02d}" if minutes else "")


def _money(amount: float) -> str:
    return f"{amount:,.2f}"


# -- budgets ----------------------------------------------------------------------------------------------


class DiscountBudget:
    """A fixed discount amount; an amount of 0 means no coupons (not an error).

    Examples
    --------
    >>> budget = DiscountBudget(100.0)
    >>> budget.can_afford(30.0), budget.spend(90.0), budget.can_afford(30.0)
    (True, None, False)
    >>> budget.refusal(30.0)
    'budget exhausted: 10.00 of 100.00 left, this coupon may cost 30.00'
    """

    def __init__(self, amount: float, spent: float = 0.0) -> None:
        if not amount >= 0 or not spent >= 0:
            raise BadInputError(f"discount budget {amount}, spent {spent}: expected amounts of 0 or more")
        self.amount = float(amount)
        self.spent = float(spent)

    @property
    def remaining(self) -> float:
        return max(self.amount - self.spent, 0.0)

    def refusal(self, expected_discount: float, now: float | None = None) -> str | None:
        """Why a coupon expected to cost ``expected_discount`` is refused, or None if it fits."""
        remaining = self.remaining
        if remaining > 0 and expected_discount <= remaining + _EPSILON:
            return None
        return (
            f"budget exhausted: {_money(remaining)} of {_money(self.amount)} left, "
            f"this coupon may cost {_money(expected_discount)}"
        )

    def can_afford(self, expected_discount: float, now: float | None = None) -> bool:
        return self.refusal(expected_discount, now) is None

    def spend(self, amount: float, now: float | None = None) -> None:
        """Record discount given (or reserved); may go past the amount, as redemptions arrive late."""
        if not amount >= 0:
            raise BadInputError(f"spend {amount}: expected an amount of 0 or more")
        self.spent += amount


class MonthlyPacer:
    """Spreads a monthly discount budget over the month: by any moment, about the share of the budget
    that the elapsed share of the month (weighted by expected traffic, if given) allows.

    A coupon is refused when the month's spending plus its expected discount would pass the allowance so
    far plus ``slack`` x budget (the slack lets the first coupons of a month through), or the budget.

    Parameters
    ----------
    monthly_budget
        Discount per calendar month; 0 means no coupons.
    traffic
        Expected traffic per hour of the week in the shop's time, 168 values from Monday 00:00; None for
        uniform. Hours with more carts get a larger share of the budget.
    slack
        Share of the monthly budget that spending may run ahead of pace.
    utc_offset_minutes
        The shop's time zone, where its months begin.

    Examples
    --------
    >>> pacer = MonthlyPacer(3000.0, slack=0.0)
    >>> mid_june = datetime(2024, 6, 16, tzinfo=UTC).timestamp()  # 15 of 30 days gone
    >>> pacer.allowance(mid_june)
    1500.0
    >>> pacer.spend(1490.0, mid_june)
    >>> pacer.can_afford(5.0, mid_june), pacer.can_afford(20.0, mid_june)
    (True, False)
    """

    def __init__(
        self,
        monthly_budget: float,
        traffic: Sequence[float] | None = None,
        slack: float = 0.02,
        utc_offset_minutes: int = 0,
    ) -> None:
        if not monthly_budget >= 0:
            raise BadInputError(f"monthly_budget {monthly_budget}: expected an amount of 0 or more")
        if not 0 <= slack <= 1:
            raise BadInputError(f"slack {slack}: expected a share of the budget in [0, 1]")
        if traffic is not None:
            weights = [float(w) for w in traffic]
            if len(weights) != HOURS_PER_WEEK or min(weights) < 0 or sum(weights) <= 0:
                raise BadInputError(
                    f"traffic: expected {HOURS_PER_WEEK} non-negative weights (Monday 00:00 first) "
                    f"with a positive sum, got {len(weights)} values"
                )
        self.monthly_budget = float(monthly_budget)
        self.traffic = None if traffic is None else weights
        self.slack = slack
        self.utc_offset_minutes = utc_offset_minutes
        self._spent: dict[tuple[int, int], float] = {}
        self._cumulative: dict[tuple[int, int], list[float]] = {}
        self._last_month: tuple[tuple[int, int], float, float] = ((0, 0), 0.0, 0.0)  # month, start, end

    def _month(self, now: float) -> tuple[tuple[int, int], float, float]:
        """The shop's (year, month) at ``now``, its start (epoch seconds) and hours elapsed in it."""
        month, start, end = self._last_month
        if not start <= now < end:
            local = datetime.fromtimestamp(now + self.utc_offset_minutes * 60, UTC)
            month = (local.year, local.month)
            following = (local.year + local.month // 12, local.month % 12 + 1)
            start, end = (
                datetime(*m, 1, tzinfo=UTC).timestamp() - self.utc_offset_minutes * 60
                for m in (month, following)
            )
            self._last_month = month, start, end
        return month, start, (now - start) / 3600.0

    def elapsed_share(self, now: float) -> float:
        """Share of the month (in expected traffic) gone by ``now``."""
        month, _, hours = self._month(now)
        n_hours = calendar.monthrange(*month)[1] * 24
        if self.traffic is None:
            return min(hours / n_hours, 1.0)
        cumulative = self._cumulative.get(month)
        if cumulative is None:
            first = calendar.weekday(month[0], month[1], 1) * 24  # hour of the week the month starts
            weights = [self.traffic[(first + h) % HOURS_PER_WEEK] for h in range(n_hours)]
            cumulative = self._cumulative[month] = [0.0, *np.cumsum(weights).tolist()]
        whole = min(int(hours), n_hours - 1)
        part = cumulative[whole] + (hours - whole) * (cumulative[whole + 1] - cumulative[whole])
        return min(part / cumulative[-1], 1.0)

    def allowance(self, now: float) -> float:
        """Discount the month may have given by ``now``: budget x elapsed share."""
        return self.monthly_budget * self.elapsed_share(now)

    def spent(self, now: float) -> float:
        """Discount recorded in the month of ``now``."""
        return self._spent.get(self._month(now)[0], 0.0)

    def refusal(self, expected_discount: float, now: float | None = None) -> str | None:
        """Why a coupon expected to cost ``expected_discount`` at ``now`` is refused, or None."""
        if now is None:
            raise BadInputError("MonthlyPacer.refusal: needs now (epoch seconds)")
        spent, budget = self.spent(now), self.monthly_budget
        after = spent + expected_discount
        if budget <= 0 or after > budget + _EPSILON:
            return (
                f"budget exhausted: {_money(max(budget - spent, 0.0))} of {_money(budget)} left this month, "
                f"this coupon may cost {_money(expected_discount)}"
            )
        share = self.elapsed_share(now)
        allowed = budget * (share + self.slack)
        if after > allowed + _EPSILON:
            return (
                f"budget ahead of pace: {_money(spent)} spent and this coupon's {_money(expected_discount)} "
                f"pass the {_money(allowed)} allowed {share:.0%} into the month"
            )
        return None

    def can_afford(self, expected_discount: float, now: float | None = None) -> bool:
        return self.refusal(expected_discount, now) is None

    def spend(self, amount: float, now: float | None = None) -> None:
        """Record discount given at ``now`` in that month."""
        if now is None:
            raise BadInputError("MonthlyPacer.spend: needs now (epoch seconds)")
        if not amount >= 0:
            raise BadInputError(f"spend {amount}: expected an amount of 0 or more")
        month = self._month(now)[0]
        self._spent[month] = self._spent.get(month, 0.0) + amount


# -- coupon harvesters -----------------------------------------------------------------------------------


class HarvesterDetector(BaseEstimator):
    """Flags customers whose abandoned carts end in coupon purchases far more often than chance.

    Fitted on one row per past abandonment: the customer and whether a coupon purchase followed it. For
    each customer with at least ``min_abandonments``, a one-sided binomial test asks whether their count
    of coupon purchases could come from the rate of everyone else (the shop-wide rate leaving them out,
    so one heavy harvester does not raise their own bar). Customers are flagged when the test rejects at
    false-discovery rate ``alpha`` (Benjamini-Hochberg over all customers tested: a shop of thousands
    would otherwise flag dozens of ordinary customers by luck) and their rate is at least ``min_ratio``
    times the others'.

    Parameters
    ----------
    min_abandonments
        Customers with fewer abandonments are never flagged.
    min_ratio
        Smallest ratio of the customer's coupon-purchase rate to the others' that counts as harvesting.
    alpha
        False-discovery rate of the flags.
    user_col, outcome_col
        Columns of the customer id and of the outcome (bool, or 0/1).

    Attributes
    ----------
    base_rate_
        Shop-wide share of abandonments followed by a coupon purchase.
    stats_
        Per customer (index ``user_col``): ``abandonments``, ``coupon_purchases``, ``rate``,
        ``others_rate``, ``p_value`` (NaN if untested), ``harvester``.
    harvesters_
        The flagged customers.
    """

    def __init__(
        self,
        min_abandonments: int = 3,
        min_ratio: float = 2.0,
        alpha: float = 0.05,
        user_col: str = "user_id",
        outcome_col: str = "coupon_purchase",
    ) -> None:
        self.min_abandonments = min_abandonments
        self.min_ratio = min_ratio
        self.alpha = alpha
        self.user_col = user_col
        self.outcome_col = outcome_col

    def fit(self, X: pd.DataFrame, y: None = None) -> HarvesterDetector:  # noqa: N803
        """Count each customer's abandonments and coupon purchases and test them."""
        missing = [c for c in (self.user_col, self.outcome_col) if c not in X.columns]
        if missing:
            raise BadInputError(
                f"HarvesterDetector.fit: no column {', '.join(map(repr, missing))}; expected one row per "
                f"abandonment with {self.user_col!r} and {self.outcome_col!r} (bool)"
            )
        if len(X) == 0:
            raise BadInputError("HarvesterDetector.fit: no abandonments to learn from")
        outcome = X[self.outcome_col]
        valid = outcome.isin([True, False, 0, 1]) & outcome.notna()
        if not valid.all():
            row = X.index[~valid.to_numpy()][0]
            raise BadInputError(
                f"HarvesterDetector.fit: row {row}: {self.outcome_col} {outcome[row]!r}; expected true/false"
            )
        if X[self.user_col].isna().any():
            row = X.index[X[self.user_col].isna().to_numpy()][0]
            raise BadInputError(f"HarvesterDetector.fit: row {row}: {self.user_col} is missing")
        if self.min_abandonments < 1 or self.min_ratio < 1 or not 0 < self.alpha < 1:
            raise BadInputError(
                f"HarvesterDetector: min_abandonments {self.min_abandonments}, min_ratio {self.min_ratio}, "
                f"alpha {self.alpha}: expected at least 1, at least 1 and a rate in (0, 1)"
            )
        grouped = (
            pd.DataFrame({"user": X[self.user_col].to_numpy(), "hit": outcome.astype(bool).to_numpy()})
            .groupby("user", sort=True)["hit"]
            .agg(abandonments="size", coupon_purchases="sum")
        )
        n = grouped["abandonments"].to_numpy(dtype=np.int64)
        k = grouped["coupon_purchases"].to_numpy(dtype=np.int64)
        total_n, total_k = int(n.sum()), int(k.sum())
        others_n = total_n - n
        with np.errstate(invalid="ignore", divide="ignore"):
            others_rate = np.where(others_n > 0, (total_k - k) / np.maximum(others_n, 1), np.nan)
            rate = k / n
        tested = (n >= self.min_abandonments) & (others_n > 0)
        p_value = np.full(n.size, np.nan)
        # P(K >= k) for K ~ Binomial(n, others' rate): sf(k - 1).
        p_value[tested] = stats.binom.sf(k[tested] - 1, n[tested], others_rate[tested])
        flagged = np.zeros(n.size, dtype=bool)
        if tested.any():
            significant = _benjamini_hochberg(p_value[tested], self.alpha)
            strong = rate[tested] >= self.min_ratio * others_rate[tested]
            flagged[tested] = significant & strong & (k[tested] > 0)
        self.base_rate_ = total_k / total_n
        self.stats_ = grouped.assign(
            rate=rate, others_rate=others_rate, p_value=p_value, harvester=flagged
        ).rename_axis(self.user_col)
        self.harvesters_ = frozenset(grouped.index[flagged].tolist())
        return self

    def is_harvester(self, user_id: Hashable) -> bool:
        """Whether ``user_id`` was flagged (False for customers not seen in fit)."""
        if not hasattr(self, "harvesters_"):
            raise ModelNotFittedError("HarvesterDetector is not fitted yet; call fit(...) first")
        return user_id in self.harvesters_


def _benjamini_hochberg(p: np.ndarray, alpha: float) -> np.ndarray:
    """Which of the p-values are rejected at false-discovery rate ``alpha``."""
    order = np.argsort(p)
    ranked = p[order] * p.size / np.arange(1, p.size + 1)
    adjusted = np.minimum.accumulate(ranked[::-1])[::-1]
    rejected = np.empty(p.size, dtype=bool)
    rejected[order] = adjusted <= alpha
    return rejected
