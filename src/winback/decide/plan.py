"""The plan: for every abandoned cart (and at-risk customer) right now, what winback will do and why, and
off-policy evaluation of the static flows from the decision log that plans fill.

:func:`plan_decisions` is the core: each subject (a cart, or a customer with no cart) gets a
:class:`~winback.decide.context.DecisionContext` (consent and time zone from a consent file, earlier
messages from the decision log), customers in the permanent holdout get nothing and are listed as the
control, and every other decision goes through the guardrails (consent, frequency caps, quiet hours, the
largest coupon, the discount budget) to the named policy. :func:`run_plan` gathers the subjects from the
event store (``score_abandonment``; at-risk customers from ``score_customers(require="churn")``), plans
and logs every decision in the :class:`~winback.decide.log.DecisionLog` (idempotent: the same moment and
policy again adds nothing).

**Consent file** (``--consent``, CSV or Parquet): one row per customer, a ``user_id`` column and at least
one of the channel columns ``email``, ``sms``, ``push`` holding whether the customer consented to be
messaged there (true/false, 1/0, yes/no; empty is no), and optionally ``utc_offset_minutes`` (the
customer's time zone as minutes east of UTC, for quiet hours; UTC when absent). A customer not in the
file, or every customer when there is no file, has no known consent and so gets nothing: winback never
messages without consent.

Honest limits: a flow is planned by its first step (like the simulator and the log, one action per
subject); delays count from the cart's last activity (from now for a customer), and a message whose
time has passed goes out now (``send_at``); stock and coupon harvesters are not known here (no stock
feed, and the harvester detector needs recorded coupon outcomes), so neither refuses anything yet.

:func:`evaluate_log` estimates, from the decisions whose outcomes were recorded, what each static flow,
doing nothing, and the logged policies themselves earn per decision (IPS, SNIPS, DR, direct; see
:mod:`winback.decide.ope`) and their incremental profit over doing nothing with a paired bootstrap
interval. The reward of a decision is the margin the log records (the recovered order's margin after
its discount; or, without it, the catalogue margin times the revenue, less the discount) less the
message's channel cost.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from statistics import NormalDist
from typing import Any, cast
from urllib.parse import urlsplit

import numpy as np
import pandas as pd

from winback.config import Settings
from winback.decide.actions import CHANNELS, NOTHING, Action, Channel
from winback.decide.catalogue import Catalogue
from winback.decide.context import DecisionContext
from winback.decide.guardrails import DiscountBudget, Guardrails
from winback.decide.holdout import DEFAULT_SALT, DEFAULT_SHARE, in_holdout
from winback.decide.log import DecisionLog
from winback.decide.ope import ESTIMATORS, NO_PROPENSITIES, WEIGHTED, Estimate, one_hot
from winback.decide.ope import evaluate as off_policy
from winback.decide.policy import Decision, Policy, RandomPolicy, StaticPolicy
from winback.errors import BadInputError

__all__ = [
    "CONSENT_COLUMNS",
    "PLAN_COLUMNS",
    "RANDOMISED_ACTIONS",
    "UPLIFT_MISSING",
    "CustomerConsent",
    "Plan",
    "PlanResult",
    "candidate_actions",
    "context_from_json",
    "evaluate_log",
    "load_consent",
    "log_rewards",
    "make_policy",
    "plan_decisions",
    "policy_candidates",
    "policy_names",
    "run_plan",
    "with_policy_features",
]

#: Columns of the plan file, in order.
PLAN_COLUMNS = (
    "cart_id", "user_id", "subject", "action", "channel", "send_at", "coupon", "recommended",
    "expected_profit", "propensity", "holdout", "reasons",
)  # fmt: skip
#: Columns a consent file may have beside ``user_id``.
CONSENT_COLUMNS = (*CHANNELS, "utc_offset_minutes")
#: What ``--policy random`` randomises over (the simulator's logging actions): doing nothing, each
#: baseline's action, reminders and coupons with recommendations at the delays the evidence favours.
RANDOMISED_ACTIONS: tuple[str, ...] = (
    "nothing", "reminder/email/1h", "reminder/email/10h", "coupon10/email/24h", "reminder+recs/email/24h",
    "coupon5+recs/email/24h", "coupon10+recs/email/24h", "coupon15+recs/email/24h",
    "coupon10+recs/email/72h", "reminder+recs/sms/24h", "coupon10+recs/sms/24h", "reminder+recs/push/24h",
    "coupon10+recs/push/24h",
)  # fmt: skip
#: What ``--policy uplift`` needs when no policy is trained.
UPLIFT_MISSING = (
    "--policy uplift needs a trained uplift policy: plan with `--policy random` for a while (it "
    "randomises over a small set of actions and logs each one's exact propensity), record what happened "
    "with `winback outcomes` once the attribution window has closed, then `winback train policy`; to see "
    "what an uplift policy earns against the truth, run `winback policies evaluate --simulate`"
)
#: Days during which an at-risk customer already planned for is not planned for again.
CUSTOMER_COOLDOWN_DAYS = 30
#: Products a ``+recs`` message carries.
RECOMMENDED_PRODUCTS = 3
_TRUE = frozenset({"true", "t", "yes", "y", "1", "1.0"})
_FALSE = frozenset({"false", "f", "no", "n", "0", "0.0", ""})
_PREFERRED = ("dr", "snips", "ips", "direct")
_CHUNK_CELLS = 1 << 22


# --------------------------------------------------------------------------- consent


@dataclass(frozen=True)
class CustomerConsent:
    """What a consent file says about one customer."""

    consent: frozenset[Channel]
    utc_offset_minutes: int = 0


def _flag(value: Any, where: str) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer) and int(value) in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise BadInputError(f"{where}: found {value!r}, expected true or false (1/0, yes/no; empty is no)")


def load_consent(path: Path) -> dict[str, CustomerConsent]:
    """Each customer's consented channels and time zone from a CSV or Parquet consent file (see the
    module docstring for its format); BadInputError naming the file, line and column of a bad value."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
            first_line = 2  # line 1 is the header
        elif suffix == ".parquet":
            frame = pd.read_parquet(path)
            first_line = 1
        else:
            raise BadInputError(f"--consent {path}: expected a .csv or .parquet file")
    except (OSError, ValueError) as error:
        raise BadInputError(f"--consent {path}: cannot read it ({error})") from None
    label = "line" if suffix == ".csv" else "row"
    frame.columns = [str(c).strip() for c in frame.columns]
    if "user_id" not in frame.columns:
        raise BadInputError(
            f"--consent {path}: no user_id column; expected user_id and some of {', '.join(CHANNELS)} "
            f"(true/false), optionally utc_offset_minutes (found {', '.join(frame.columns) or 'no columns'})"
        )
    channels = [c for c in CHANNELS if c in frame.columns]
    if not channels:
        raise BadInputError(
            f"--consent {path}: no channel column; expected some of {', '.join(CHANNELS)} holding whether "
            "each customer consented to be messaged there"
        )
    unknown = [c for c in frame.columns if c != "user_id" and c not in CONSENT_COLUMNS]
    if unknown:
        raise BadInputError(
            f"--consent {path}: unknown column(s) {', '.join(unknown)}; expected user_id, "
            f"{', '.join(CONSENT_COLUMNS)}"
        )
    out: dict[str, CustomerConsent] = {}
    for i, row in enumerate(frame.to_dict("records")):
        where = f"--consent {path}, {label} {i + first_line}"
        user = row["user_id"]
        if user is None or str(user).strip() == "" or (isinstance(user, float) and math.isnan(user)):
            raise BadInputError(f"{where}: user_id is empty; expected the customer's id")
        user = str(user).strip()
        if user in out:
            raise BadInputError(f"{where}: user_id {user} appears twice; expected one row per customer")
        given = frozenset(c for c in channels if _flag(row[c], f"{where}, column {c}"))
        offset = 0
        raw = row.get("utc_offset_minutes")
        if raw is not None and str(raw).strip() not in ("", "nan"):
            try:
                number = float(raw)
            except (TypeError, ValueError):
                number = math.nan
            if not number.is_integer() or not -720 <= number <= 840:
                raise BadInputError(
                    f"{where}, column utc_offset_minutes: found {raw!r}, expected whole minutes east of "
                    "UTC between -720 (UTC-12) and 840 (UTC+14), e.g. 120 for UTC+2"
                )
            offset = int(number)
        out[user] = CustomerConsent(given, offset)
    return out


# --------------------------------------------------------------------------- policies


def policy_names(catalogue: Catalogue) -> list[str]:
    """The policies ``winback plan --policy`` knows: the catalogue's flows, ``random`` and ``uplift``."""
    return [*catalogue.flows, "random", "uplift"]


def candidate_actions(catalogue: Catalogue) -> list[Action]:
    """What a policy may choose from before the guardrails: nothing, the catalogue's actions, and every
    flow's first step (a flow may use a delay outside the catalogue's grid, e.g. Shopify's 10 h)."""
    firsts = [flow.steps[0] for flow in catalogue.flows.values() if flow.steps]
    return list(dict.fromkeys([NOTHING, *catalogue.actions, *firsts]))


def policy_candidates(policy: Policy, catalogue: Catalogue) -> list[Action]:
    """The actions worth putting through the guardrails for ``policy``: a static policy's action, a
    random policy's pool (its propensities are over the allowed ones among them), else every
    candidate (doing nothing first)."""
    if isinstance(policy, StaticPolicy):
        return [NOTHING, policy.action] if policy.action.is_message else [NOTHING]
    if isinstance(policy, RandomPolicy) and policy.actions is not None:
        return list(dict.fromkeys([NOTHING, *policy.actions]))
    return candidate_actions(catalogue)


def make_policy(name: str, catalogue: Catalogue, *, seed: int = 0) -> Policy:
    """The policy called ``name`` (see :func:`policy_names`).

    A flow becomes a :class:`~winback.decide.policy.StaticPolicy` of its first step; ``random`` a
    :class:`~winback.decide.policy.RandomPolicy` over :data:`RANDOMISED_ACTIONS` (those in the
    catalogue or its flows), whose exact propensities make the log usable for off-policy evaluation and
    uplift training; ``uplift`` is refused with :data:`UPLIFT_MISSING`.
    """
    if name in catalogue.flows:
        return StaticPolicy.from_flow(catalogue, name)
    if name == "random":
        known = set(candidate_actions(catalogue))
        pool = [a for a in map(Action.parse, RANDOMISED_ACTIONS) if a in known]
        if len(pool) < 2:
            raise BadInputError(
                "--policy random: the catalogue has fewer than two of the randomised actions "
                f"({', '.join(RANDOMISED_ACTIONS)})"
            )
        return RandomPolicy(pool, seed=seed, name="random", version=f"1-seed{seed}")
    if name == "uplift":  # needs the saved model: see run_plan and winback.decide.learn.load_policy
        raise BadInputError(UPLIFT_MISSING)
    raise BadInputError(f"--policy {name!r}: expected one of {', '.join(policy_names(catalogue))}")


def load_chooser(settings: Settings, name: str, catalogue: Catalogue, *, seed: int = 0) -> Policy:
    """:func:`make_policy`, or for ``uplift`` the policy trained on the shop's decision log
    (``winback train policy``), with :data:`UPLIFT_MISSING` if there is none."""
    if name != "uplift":
        return make_policy(name, catalogue, seed=seed)
    from winback.decide.learn import load_policy

    try:
        return load_policy(settings, catalogue)
    except BadInputError as error:
        if "train one first" not in str(error):
            raise
        raise BadInputError(UPLIFT_MISSING) from None


# --------------------------------------------------------------------------- planning


@dataclass
class Plan:
    """What :func:`plan_decisions` decided: the plan file's rows and the decision log's rows."""

    table: pd.DataFrame
    decisions: pd.DataFrame
    discount_reserved: float = 0.0
    notes: list[str] = field(default_factory=list)


Recommend = Callable[[str | None, str], tuple[list[str], str]]


def _epoch(value: Any) -> float | None:
    if value is None or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
        return None
    stamp = pd.Timestamp(value)
    if pd.isna(stamp):
        return None
    return float((stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp).timestamp())


def _stamp(epoch: float | None) -> pd.Timestamp | None:
    return None if epoch is None else pd.Timestamp(epoch, unit="s", tz="UTC")


def _plain(value: Any) -> Any:
    """A JSON-friendly scalar."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return value


def _context_json(
    context: DecisionContext, subject: str, consent_known: bool, extra: Mapping[str, Any]
) -> dict[str, Any]:
    return {
        "subject": subject,
        "now": context.now,
        "abandoned_at": context.abandoned_at,
        "value": context.value,
        "consent": sorted(context.consent),
        "consent_known": consent_known,
        "utc_offset_minutes": context.utc_offset_minutes,
        "last_message_at": dict(context.last_message_at),
        **{k: _plain(v) for k, v in extra.items()},
    }


def context_from_json(data: Mapping[str, Any] | str) -> DecisionContext | None:
    """The DecisionContext a plan logged (its ``context`` column); None if the log holds no consent
    (a decision logged by something else)."""
    found = json.loads(data) if isinstance(data, str) else dict(data)
    if not isinstance(found, dict) or "consent" not in found or "now" not in found:
        return None
    return DecisionContext(
        user_id=str(found.get("user_id", "")),
        now=float(found["now"]),
        abandoned_at=None if found.get("abandoned_at") is None else float(found["abandoned_at"]),
        value=float(found.get("value") or 0.0),
        consent=frozenset(cast(Channel, c) for c in found["consent"]),
        utc_offset_minutes=int(found.get("utc_offset_minutes") or 0),
        last_message_at={cast(Channel, k): float(v) for k, v in (found.get("last_message_at") or {}).items()},
    )


def plan_decisions(
    subjects: pd.DataFrame,
    now: pd.Timestamp,
    policy: Policy,
    catalogue: Catalogue,
    *,
    budget: float | None = None,
    consent: Mapping[str, CustomerConsent] | None = None,
    holdout_share: float = DEFAULT_SHARE,
    holdout_salt: str = DEFAULT_SALT,
    last_messages: Mapping[str, Mapping[Channel, float]] | None = None,
    recommend: Recommend | None = None,
    candidates: Sequence[Action] | None = None,
    context_columns: Sequence[str] = (),
    feature_columns: Sequence[str] = (),
) -> Plan:
    """Decide for each row of ``subjects`` (in order) and say why.

    Parameters
    ----------
    subjects
        One row per decision: ``user_id``, ``cart_id`` (None for a customer-level win-back),
        ``abandoned_at`` (the cart's last activity; NaT for a customer) and ``value`` (the cart's value,
        or the customer's expected order value: what a coupon's percentage applies to).
    now
        The moment of the plan (every decision's ``decided_at``).
    policy
        Any policy (see :func:`make_policy`).
    catalogue
        The actions, costs and limits.
    budget
        Discount this plan may give, as expected coupon cost (its face value, coupon x value); 0 means
        no coupons; None no limit.
    consent
        Per customer, the consented channels and time zone; None or a missing customer: no consent.
    holdout_share, holdout_salt
        The permanent holdout (:func:`~winback.decide.holdout.in_holdout`): its customers get nothing.
    last_messages
        Per customer and channel, when winback last messaged them (epoch seconds; a scheduled message may
        lie in the future), for the frequency caps. Messages this plan schedules count too.
    recommend
        ``recommend(cart_id, user_id) -> (products, reason_if_none)`` for ``+recs`` messages.
    candidates
        The actions offered to the policy; :func:`policy_candidates` by default.
    context_columns
        Further columns of ``subjects`` recorded in each decision's logged context.
    feature_columns
        Columns of ``subjects`` a model-based policy reads (``DecisionContext.features``).
    """
    if budget is not None and not budget >= 0:
        raise BadInputError(f"--budget {budget}: expected an amount of 0 or more (0: no coupons)")
    wallet = DiscountBudget(budget) if budget is not None else None
    guardrails = Guardrails(catalogue, wallet)
    offered = list(candidates) if candidates is not None else policy_candidates(policy, catalogue)
    now_s = float(now.timestamp())
    users = [str(u) for u in subjects["user_id"].tolist()]
    held = in_holdout(users, holdout_share, holdout_salt)
    scheduled: dict[str, dict[Channel, float]] = {u: dict(m) for u, m in (last_messages or {}).items()}
    consent = consent or {}
    rows: list[dict[str, Any]] = []
    logged: list[dict[str, Any]] = []
    reserved = 0.0
    records = subjects.to_dict("records")
    for record, user, holdout in zip(records, users, held, strict=True):
        cart = record.get("cart_id")
        cart_id = None if cart is None or (isinstance(cart, float) and math.isnan(cart)) else str(cart)
        known = consent.get(user)
        value = float(record.get("value") or 0.0)
        context = DecisionContext(
            user_id=user,
            now=now_s,
            cart_id=cart_id,
            abandoned_at=_epoch(record.get("abandoned_at")) if cart_id is not None else None,
            value=value if math.isfinite(value) and value > 0 else 0.0,
            consent=known.consent if known else frozenset(),
            utc_offset_minutes=known.utc_offset_minutes if known else 0,
            last_message_at=dict(scheduled.get(user, {})),
            features={c: float(record[c]) for c in feature_columns if record.get(c) is not None},
        )
        if holdout:
            decision = Decision(
                NOTHING, 1.0, policy.name, policy.version, None,
                (f"holdout: in the permanent control group ({holdout_share:.0%} of customers are never "
                 "messaged, to measure what messages change)",),
            )  # fmt: skip
        else:
            decision = _guarded_decision(policy, guardrails, context, offered)
            if known is None:
                decision = replace(
                    decision, reasons=("no consent known for this customer", *decision.reasons)
                )
        action = decision.action
        send_at = context.send_time(action.delay_hours) if action.is_message else None
        if action.channel is not None and send_at is not None:
            scheduled.setdefault(user, {})[action.channel] = send_at
        if action.coupon:
            discount = guardrails.expected_discount(action, context)
            reserved += discount
            if wallet is not None:
                wallet.spend(discount, now_s)
        reasons = list(decision.reasons)
        products: list[str] = []
        if action.with_recommendations and recommend is not None:
            products, why = recommend(cart_id, user)
            if not products:
                reasons.append(f"recommendations: none ({why})")
        elif action.with_recommendations:
            reasons.append("recommendations: no trained recommender (`winback train recommend`)")
        subject = "cart" if cart_id is not None else "customer"
        rows.append(
            {"cart_id": cart_id, "user_id": user, "subject": subject, "action": action.name,
             "channel": action.channel, "send_at": _stamp(send_at), "coupon": round(action.coupon * 100, 6),
             "recommended": " ".join(products), "expected_profit": decision.expected_profit,
             "propensity": decision.propensity, "holdout": holdout, "reasons": "; ".join(reasons)}
        )  # fmt: skip
        extra = {c: record.get(c) for c in context_columns if c in record}
        logged.append(
            {"decided_at": now, "cart_id": cart_id, "user_id": user, "policy": decision.policy,
             "version": decision.version, "action": action.name, "propensity": decision.propensity,
             "expected_profit": decision.expected_profit, "send_at": _stamp(send_at), "holdout": holdout,
             "reasons": reasons,
             "context": _context_json(context, subject, known is not None, {"user_id": user, **extra})}
        )  # fmt: skip
    table = pd.DataFrame(rows, columns=list(PLAN_COLUMNS))
    table["send_at"] = pd.to_datetime(table["send_at"], utc=True)
    table["expected_profit"] = pd.to_numeric(table["expected_profit"], errors="coerce")
    return Plan(table, pd.DataFrame(logged), reserved)


def _guarded_decision(
    policy: Policy, guardrails: Guardrails, context: DecisionContext, offered: Sequence[Action]
) -> Decision:
    """The policy's choice among what the guardrails allow, with why: for a static policy whose action
    was refused, that action's refusal; otherwise how many actions were refused and the main reasons."""
    passed, refused = guardrails.allowed(context, offered)
    decision = policy.decide(context, passed)
    reasons = list(decision.reasons)
    if decision.action not in passed:  # a policy that ignored what it was allowed
        why = refused.get(decision.action.name, "not among the allowed actions")
        reasons.append(f"guardrails: {decision.action} refused ({why}); nothing")
        return Decision(NOTHING, 1.0, decision.policy, decision.version, 0.0, tuple(reasons))
    intended = policy.action if isinstance(policy, StaticPolicy) else None
    if intended is not None and intended.name in refused:  # one reason instead of the policy's "not allowed"
        reasons = [f"static: {intended} refused by the guardrails ({refused[intended.name]}); nothing"]
    elif intended is None and refused:
        distinct = list(dict.fromkeys(refused.values()))
        shown = "; ".join(distinct[:3]) + (f"; and {len(distinct) - 3} more" if len(distinct) > 3 else "")
        reasons.append(f"guardrails: {len(refused)} of {len(offered)} actions refused ({shown})")
    return replace(decision, reasons=tuple(reasons))


@dataclass
class PlanResult:
    """What :func:`run_plan` did."""

    plan: Plan
    as_of: pd.Timestamp
    policy: str
    version: str
    carts: int
    customers: int
    logged: int
    log_path: Path
    notes: list[str]

    def summary(self) -> dict[str, Any]:
        """Headline numbers for ``--json`` and the terminal."""
        table = self.plan.table
        messaged = table[table["action"] != NOTHING.name]
        return {
            "as_of": self.as_of.isoformat(),
            "policy": self.policy,
            "version": self.version,
            "rows": len(table),
            "carts": self.carts,
            "customers": self.customers,
            "actions": {str(k): int(v) for k, v in table["action"].value_counts().items()},
            "messages": len(messaged),
            "coupons": int((table["coupon"] > 0).sum()),
            "discount_reserved": round(self.plan.discount_reserved, 2),
            "holdout": int(table["holdout"].sum()),
            "logged": self.logged,
            "log": str(self.log_path),
            "notes": self.notes,
        }


def _earlier(log: DecisionLog, now: pd.Timestamp, policy: str, version: str) -> pd.DataFrame:
    """Decisions logged up to ``now`` other than this plan's own (the same moment, policy and version,
    which planning again reproduces): who, which cart, which action, when it is sent."""
    return log.con.execute(
        "SELECT decided_at, cart_id, user_id, action, send_at, holdout FROM decisions "
        "WHERE decided_at <= ? AND NOT (decided_at = ? AND policy = ? AND version = ?)",
        [now.to_pydatetime(), now.to_pydatetime(), policy, version],
    ).df()


def _last_messages(earlier: pd.DataFrame) -> dict[str, dict[Channel, float]]:
    sent = earlier[earlier["send_at"].notna() & (earlier["action"] != NOTHING.name)]
    out: dict[str, dict[Channel, float]] = {}
    for user, action, send_at in zip(sent["user_id"], sent["action"], sent["send_at"], strict=True):
        channel = Action.parse(str(action)).channel
        at = _epoch(send_at)
        if channel is None or at is None:
            continue
        mine = out.setdefault(str(user), {})
        mine[channel] = max(mine.get(channel, at), at)
    return out


def _customer_value(customers: pd.DataFrame, history: pd.DataFrame) -> pd.Series:
    """Expected order value of a customer (what a coupon's percentage applies to): the CLV model's
    expected value over the horizon per expected purchase, else their average order so far."""
    purchases = pd.to_numeric(customers["expected_purchases"], errors="coerce")
    value = pd.to_numeric(customers["expected_value"], errors="coerce")
    per_order = value / purchases.where(purchases > 0.01)
    average = history.set_index(history["user_key"].astype(str))["avg_order_value"]
    past = customers["user_id"].astype(str).map(average).astype(float)
    return per_order.fillna(past).fillna(0.0).clip(lower=0.0)


def with_policy_features(
    subjects: pd.DataFrame, consent: Mapping[str, CustomerConsent], events: Any
) -> tuple[pd.DataFrame, list[str]]:
    """``subjects`` (carts) with the uplift policy's features added, and the names of those it reads
    from the subjects (the value comes from the decision context itself)."""
    from winback.decide.learn import cart_features

    carts = subjects[["user_id", "abandoned_at", "value", "n_items"]].copy()
    carts["abandoned_at"] = pd.to_datetime(carts["abandoned_at"], utc=True)  # object after the concat
    for channel in CHANNELS:
        carts[f"consent_{channel}"] = [
            float(channel in consent[u].consent) if u in consent else 0.0 for u in carts["user_id"]
        ]
    features = cart_features(carts, events)
    added = features.drop(columns=["value", "n_items"])
    return subjects.join(added), ["n_items", *added.columns]


def _alert_staff(settings: Settings, plan: Plan, carts: pd.DataFrame, customers: pd.DataFrame) -> str:
    """Post the staff alerts of the carts and customers just planned (not the holdout's: a personal call
    would treat the control group) and say what happened."""
    from winback.act.alerts import find_alerts, send_alerts

    held = set(plan.table.loc[plan.table["holdout"].astype(bool), "user_id"].astype(str))
    found = find_alerts(
        carts,
        customers,
        cart_value=settings.alert_cart_value,
        customer_value=settings.alert_customer_value,
        churn_probability=settings.alert_churn_probability,
    )
    alerts = [a for a in found if a.user_id not in held]
    if not alerts:
        return "staff alerts: nothing above the thresholds"
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
    url = str(settings.alert_webhook_url)
    report = send_alerts(alerts, url, secret, settings.webhook_timeout_seconds)
    failed = f"; {report.failed} failed ({report.first_error})" if report.failed else ""
    return f"staff alerts: {report.sent} sent to {urlsplit(url).hostname}{failed}"


def run_plan(
    settings: Settings,
    tables: Any,
    *,
    policy: str,
    catalogue: Catalogue,
    budget: float | None = None,
    consent: Mapping[str, CustomerConsent] | None = None,
    as_of: pd.Timestamp | None = None,
    holdout_share: float = DEFAULT_SHARE,
    at_risk_share: float = 0.1,
    on_stage: Callable[[str, str], None] | None = None,
) -> PlanResult:
    """Plan for every abandoned cart (and the ``at_risk_share`` of customers most at stake) as of
    ``as_of`` (default: just after the last event), and log every decision.

    ``tables`` is a :class:`~winback.features.tables.FeatureTables`. A cart has one decision: carts
    already planned (at an earlier moment, or by another policy) are not planned again, nor customers
    planned in the last :data:`CUSTOMER_COOLDOWN_DAYS`; planning the same moment with the same policy
    again reproduces the same plan and logs nothing new.
    """
    from datetime import timedelta

    from winback.models import tasks
    from winback.recommend.tasks import load_recommender

    stage = on_stage or (lambda _source, _stage: None)
    if not 0 <= at_risk_share <= 1:
        raise BadInputError(f"--at-risk {at_risk_share}: expected a share of customers from 0 to 1")
    in_holdout([], holdout_share)  # refuse a bad share before the work
    if budget is not None and not budget >= 0:
        raise BadInputError(f"--budget {budget}: expected an amount of 0 or more (0: no coupons)")
    now = as_of or tables.span().last + timedelta(seconds=1)
    tables.check_as_of(now)
    now = pd.Timestamp(now)
    chooser = load_chooser(settings, policy, catalogue, seed=int(now.timestamp()) % 2**31)
    notes: list[str] = []
    stage("abandonment", "scoring carts")
    carts = tasks.score_abandonment(tables, now)
    open_carts = int((carts["state"] != "abandoned").sum())
    carts = carts[carts["state"] == "abandoned"]
    if open_carts:
        notes.append(
            f"{open_carts:,} carts still open (idle under {settings.abandon_idle_minutes} min): not planned"
        )
    customers = pd.DataFrame()
    if at_risk_share > 0:
        stage("churn", "scoring customers")
        try:
            scored = tasks.score_customers(tables, now, require="churn")
        except BadInputError as error:
            notes.append(f"at-risk customers not planned: {error}")
        else:
            top = scored.head(math.ceil(at_risk_share * len(scored)))
            customers = top[~top["user_id"].isin(set(carts["user_id"]))]
    with DecisionLog(settings) as log:
        earlier = _earlier(log, now, chooser.name, chooser.version)
        planned = set(earlier["cart_id"].dropna().astype(str))
        again = carts["cart_id"].astype(str).isin(planned)
        if again.any():
            notes.append(
                f"{int(again.sum()):,} carts already planned (at an earlier moment or by another policy): "
                "not planned again"
            )
        carts = carts[~again]
        if policy == "uplift" and len(customers):
            notes.append(
                f"{len(customers):,} at-risk customers not planned: the uplift policy is learnt from cart "
                "decisions (plan them with a flow, e.g. --policy static-10h)"
            )
            customers = customers.iloc[0:0]
        if len(customers):
            since = now - pd.Timedelta(days=CUSTOMER_COOLDOWN_DAYS)
            recent = earlier[earlier["cart_id"].isna() & (earlier["decided_at"] >= since)]
            cooling = customers["user_id"].astype(str).isin(set(recent["user_id"].astype(str)))
            if cooling.any():
                notes.append(
                    f"{int(cooling.sum()):,} at-risk customers planned in the last {CUSTOMER_COOLDOWN_DAYS} "
                    "days: not planned again"
                )
            customers = customers[~cooling]
        subjects = pd.concat(
            [
                pd.DataFrame(
                    {"cart_id": carts["cart_id"].astype(str), "user_id": carts["user_id"].astype(str),
                     "abandoned_at": carts["last_event_at"], "value": carts["cart_value"].astype(float),
                     "n_items": carts["items_in_cart"].astype(float),
                     "abandon_probability": carts["abandon_probability"].astype(float)}
                ),
                pd.DataFrame(
                    {"cart_id": None, "user_id": customers.get("user_id", pd.Series(dtype=str)).astype(str),
                     "abandoned_at": pd.NaT,
                     "value": _customer_value(customers, tables.customers(now)) if len(customers) else [],
                     "churn_probability": customers.get("churn_probability", pd.Series(dtype=float)),
                     "severity": customers.get("severity", pd.Series(dtype=float))}
                ),
            ],
            ignore_index=True,
        )  # fmt: skip
        recommend: Recommend | None = None
        try:
            recommender, _ = load_recommender(settings)
        except BadInputError as error:
            notes.append(f"no recommended products: {error}")
        else:

            def recommend(cart_id: str | None, user_id: str) -> tuple[list[str], str]:
                found = (
                    recommender.for_cart(cart_id, RECOMMENDED_PRODUCTS, user_key=user_id)
                    if cart_id is not None
                    else recommender.for_user(user_id, RECOMMENDED_PRODUCTS)
                )
                return [c.product_id for c in found], found.reason

        if consent is None:
            notes.append(
                "no consent file (--consent): no customer's consent is known, so every decision is "
                "'nothing' (winback never messages without consent)"
            )
        elif not any(c.utc_offset_minutes for c in consent.values()):
            notes.append("no time zones in the consent file: quiet hours are checked in UTC")
        features: list[str] = []
        if policy == "uplift" and len(subjects):
            stage("uplift", "customer histories")
            subjects, features = with_policy_features(
                subjects, consent or {}, tables.source.events.to_pyarrow()
            )
        stage(chooser.name, "deciding")
        plan = plan_decisions(
            subjects, now, chooser, catalogue, budget=budget, consent=consent, holdout_share=holdout_share,
            last_messages=_last_messages(earlier), recommend=recommend,
            context_columns=("n_items", "abandon_probability", "churn_probability", "severity"),
            feature_columns=features,
        )  # fmt: skip
        stage(str(log.path), "logging")
        added = log.append(plan.decisions)
        path = log.path
    if settings.alert_webhook_url and len(plan.table):
        notes.append(_alert_staff(settings, plan, carts, customers))
    plan.notes = notes
    return PlanResult(
        plan, now, chooser.name, chooser.version, len(carts), len(customers), added, path, notes
    )


# --------------------------------------------------------------------------- off-policy, from the log


def log_rewards(decisions: pd.DataFrame, catalogue: Catalogue) -> pd.Series:
    """Each decision's reward: recorded margin (after discount) less the message's channel cost; without
    a margin, the catalogue margin x revenue less discount; not recovered and nothing recorded: 0 less
    the cost. BadInputError names a decision marked recovered with neither margin nor revenue."""
    costs = {a: catalogue.channel_cost(Action.parse(str(a)).channel) for a in decisions["action"].unique()}
    cost = decisions["action"].map(costs).astype(float)  # parsed once per distinct action: logs are long
    margin = pd.to_numeric(decisions["margin"], errors="coerce")
    revenue = pd.to_numeric(decisions["revenue"], errors="coerce")
    discount = pd.to_numeric(decisions["discount"], errors="coerce").fillna(0.0)
    from_revenue = catalogue.default_margin * revenue - discount
    earned = margin.where(margin.notna(), from_revenue)
    recovered = decisions["recovered"]
    unknown = earned.isna() & recovered.fillna(False).astype(bool)
    if unknown.any():
        first = decisions.loc[unknown, "decision_id"].iloc[0]
        raise BadInputError(
            f"decision log: {int(unknown.sum()):,} recovered decisions have neither margin nor revenue "
            f"(first {first}); record one with DecisionLog.record_outcomes"
        )
    return (earned.fillna(0.0) - cost).astype(float)


def _static_targets(
    decisions: pd.DataFrame, action: Action, catalogue: Catalogue, contexts: list[DecisionContext | None]
) -> list[str]:
    """What a static policy of ``action`` would have done for each logged decision: nothing in the
    holdout or where the guardrails (from the logged context, parsed once for every flow: ``contexts``)
    refuse it, else ``action``."""
    guardrails = Guardrails(catalogue)
    out = []
    for holdout, ctx in zip(decisions["holdout"], contexts, strict=True):
        if bool(holdout) or not action.is_message:
            out.append(NOTHING.name)
            continue
        if ctx is None:
            out.append(action.name)  # nothing known that would refuse it
            continue
        passed, _ = guardrails.allowed(ctx, [action])
        out.append(action.name if passed else NOTHING.name)
    return out


def _terms(
    estimator: str,
    pi: np.ndarray,
    codes: np.ndarray,
    propensity: np.ndarray,
    reward: np.ndarray,
    q: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-decision numerator and denominator whose sums' ratio is the estimate (as in ope.evaluate)."""
    rows = np.arange(len(reward))
    if estimator == "direct":
        return (pi * q).sum(axis=1), np.ones(len(reward))
    weights = pi[rows, codes] / propensity
    if estimator == "ips":
        return weights * reward, np.ones(len(reward))
    if estimator == "snips":
        return weights * reward, weights
    return (pi * q).sum(axis=1) + weights * (reward - q[rows, codes]), np.ones(len(reward))


def _paired_intervals(
    numerators: np.ndarray,
    denominators: np.ndarray,
    baseline: np.ndarray,
    n_boot: int,
    level: float,
    seed: int,
) -> np.ndarray:
    """(columns x 2) bootstrap percentile intervals of ``ratio(column) - ratio(baseline column)``, each
    ratio ``sum(numerator) / sum(denominator)`` over the same resamples of the decisions."""
    n, k = numerators.shape
    rng = np.random.default_rng(seed)
    terms = np.hstack([numerators, denominators])
    sums = np.empty((n_boot, 2 * k))
    per_chunk = max(1, _CHUNK_CELLS // max(n, 1))
    for start in range(0, n_boot, per_chunk):
        size = min(per_chunk, n_boot - start)
        counts = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(size)])
        sums[start : start + size] = counts @ terms
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = sums[:, :k] / sums[:, k:]
        differences = ratios - ratios[:, baseline]
    tail = 100 * (1 - level) / 2
    out = np.full((k, 2), np.nan)
    for j in range(k):
        finite = differences[:, j][np.isfinite(differences[:, j])]
        if finite.size:
            out[j] = np.percentile(finite, [tail, 100 - tail])
    return out


def evaluate_log(
    decisions: pd.DataFrame,
    catalogue: Catalogue,
    *,
    estimators: Iterable[str] = ("ips", "snips", "dr"),
    n_boot: int = 500,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Off-policy values of doing nothing and of the catalogue's static flows, and the logged policies'
    own value, from the decisions in ``decisions`` (:meth:`DecisionLog.read`) whose outcomes are known.

    Returns one dict per policy (``name``, ``estimator`` (the one ``profit_per_cart`` comes from: DR,
    else SNIPS, IPS, direct), ``profit_per_cart`` (estimated margin per decision less that of doing
    nothing) with ``ci_low`` / ``ci_high`` (paired bootstrap), ``margin_per_decision`` and its interval,
    ``effective_sample_size``, ``n``, ``warnings``, and ``estimates``: every estimator's figures), and
    notes about the log. The reward model of DR and direct is each logged action's mean reward (an action
    never logged: that of doing nothing). Raises BadInputError when nothing has an outcome, or when
    every requested estimator needs propensities the log lacks.
    """
    wanted = [e for e in dict.fromkeys(estimators)]
    unknown = [e for e in wanted if e not in ESTIMATORS]
    if unknown or not wanted:
        raise BadInputError(
            f"--estimator {', '.join(unknown) or '(none)'}: expected some of {', '.join(ESTIMATORS)}"
        )
    if decisions.empty:
        raise BadInputError("the decision log has no decisions: run `winback plan` first")
    known = decisions[list(("recovered", "revenue", "discount", "margin"))].notna().any(axis=1)
    known |= decisions["outcome_observed_at"].notna()
    notes: list[str] = []
    if not known.any():
        raise BadInputError(
            f"the decision log has {len(decisions):,} decisions and none has an outcome: off-policy "
            "evaluation needs what happened after each decision (recovered, and margin or revenue and "
            "discount), recorded with DecisionLog.record_outcomes once the recovery window has closed"
        )
    if not known.all():
        notes.append(f"{int((~known).sum()):,} decisions without outcomes yet: left out")
    log = decisions[known].reset_index(drop=True)
    reward = log_rewards(log, catalogue).to_numpy()
    missing = int(log["propensity"].isna().sum())
    if missing and any(e in WEIGHTED for e in wanted):
        refused = [e for e in wanted if e in WEIGHTED]
        why = (
            f"{NO_PROPENSITIES} ({missing:,} of {len(log):,} decisions with outcomes have none), so "
            f"{', '.join(e.upper() for e in refused)} are refused"
        )
        wanted = [e for e in wanted if e not in WEIGHTED]
        if not wanted:
            raise BadInputError(
                f"{why}; only the direct estimate (--estimator direct: a reward model of each logged "
                "action's mean reward, needing no propensities and as biased as that model) can run"
            )
        notes.append(why)
    actions = log["action"].astype(str)
    logged_names = list(dict.fromkeys(actions))
    policies: dict[str, list[str]] = {"nothing": [NOTHING.name] * len(log)}
    contexts = [context_from_json(c) for c in log["context"]] if catalogue.flows else []
    for name in catalogue.flows:
        first = StaticPolicy.from_flow(catalogue, name).action
        policies[name] = _static_targets(log, first, catalogue, contexts)
    columns = list(dict.fromkeys([*logged_names, *(a for t in policies.values() for a in t)]))
    means = pd.Series(reward).groupby(actions.to_numpy()).mean()
    fallback = float(means.get(NOTHING.name, float(np.mean(reward))))
    q_row = np.array([float(means.get(c, fallback)) for c in columns])
    reward_model = pd.DataFrame(np.tile(q_row, (len(log), 1)), columns=columns, index=log.index)
    for c in columns:
        if c not in means.index:
            notes.append(f"{c} was never logged: the reward model gives it the mean reward of doing nothing")
    frame = pd.DataFrame(
        {"action": actions, "propensity": log["propensity"].astype(float), "reward": reward}, index=log.index
    )
    codes = pd.Index(columns).get_indexer(pd.Index(actions))
    propensity = frame["propensity"].fillna(1.0).to_numpy()
    q = reward_model.to_numpy()
    results: dict[str, dict[str, Estimate]] = {}
    numerators, denominators, keys = [], [], []
    for name, chosen in policies.items():
        target = one_hot(chosen, columns, index=log.index)
        results[name] = off_policy(
            frame, target, reward_model=reward_model, estimators=wanted, n_boot=n_boot, level=level, seed=seed
        )
        pi = target.to_numpy()
        for estimator in wanted:
            num, den = _terms(estimator, pi, codes, propensity, reward, q)
            numerators.append(num)
            denominators.append(den)
            keys.append((name, estimator))
    # The logged policies' own value: the mean reward (on-policy, needs no propensities).
    numerators.append(reward)
    denominators.append(np.ones(len(reward)))
    keys.append(("logged", "mean"))
    preferred = next(e for e in _PREFERRED if e in wanted)
    baseline = np.array([keys.index(("nothing", preferred if e == "mean" else e)) for _, e in keys])
    num_matrix, den_matrix = np.column_stack(numerators), np.column_stack(denominators)
    intervals = _paired_intervals(num_matrix, den_matrix, baseline, n_boot, level, seed)
    points = num_matrix.sum(axis=0) / den_matrix.sum(axis=0)
    at = {key: j for j, key in enumerate(keys)}
    out: list[dict[str, Any]] = []
    for name, estimates in results.items():
        best = preferred
        figures = {}
        for estimator, estimate in estimates.items():
            j = at[(name, estimator)]
            figures[estimator] = {
                "profit_per_cart": float(points[j] - points[baseline[j]]),
                "ci_low": float(intervals[j, 0]) if name != "nothing" else 0.0,
                "ci_high": float(intervals[j, 1]) if name != "nothing" else 0.0,
                "margin_per_decision": estimate.value,
                "margin_ci_low": estimate.ci_low,
                "margin_ci_high": estimate.ci_high,
                "effective_sample_size": estimate.effective_sample_size,
                "warnings": list(estimate.warnings),
            }
        headline = figures[best]
        out.append(
            {"name": name, "estimator": best, **{k: headline[k] for k in
             ("profit_per_cart", "ci_low", "ci_high", "margin_per_decision", "margin_ci_low",
              "margin_ci_high", "effective_sample_size", "warnings")},
             "n": len(log), "estimates": figures}
        )  # fmt: skip
    j = at[("logged", "mean")]
    spread = np.std(reward, ddof=1) / math.sqrt(len(reward)) if len(reward) > 1 else math.nan
    half = NormalDist().inv_cdf(0.5 + level / 2) * spread
    logged_by = {str(k): int(v) for k, v in log["policy"].value_counts().items()}
    out.append(
        {"name": "logged", "estimator": "mean", "profit_per_cart": float(points[j] - points[baseline[j]]),
         "ci_low": float(intervals[j, 0]), "ci_high": float(intervals[j, 1]),
         "margin_per_decision": float(points[j]), "margin_ci_low": float(points[j] - half),
         "margin_ci_high": float(points[j] + half), "effective_sample_size": float(len(log)),
         "warnings": [], "n": len(log), "policies": logged_by, "estimates": {}}
    )  # fmt: skip
    return out, notes
