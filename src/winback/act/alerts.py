"""Alerts for the shop's own staff: a big cart abandoned, or a valuable customer drifting away, posted as
Slack-compatible JSON to a helpdesk or team-chat webhook, so that someone can reach out in person.

An alert says who, what is at stake (the cart's value, or the customer's expected lifetime value), how
likely the loss is and why (the models' reasons). The body is Slack's incoming-webhook format (``text``
plus ``blocks``), which Slack, Mattermost, Rocket.Chat and most helpdesks accept; it also carries the
alert as plain fields under ``winback``. When ``WINBACK_WEBHOOK_SECRET`` is set the body is signed like
the SMS and push webhooks (``X-Winback-Signature``), and every alert has an ``Idempotency-Key`` of its
subject, so a repeated call is recognisable. ``winback plan`` sends them for the carts and customers it
plans, and ``winback detect`` for the big carts it decides at their threshold (each cart is decided
once, so each is alerted once).
"""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

import pandas as pd

from winback.act.channels.webhook import SIGNATURE_HEADER, sign
from winback.errors import BadInputError


@dataclass(frozen=True)
class Alert:
    """One thing staff should know about."""

    kind: str  # "abandoned_cart" or "churn_risk"
    user_id: str
    cart_id: str | None
    value: float  # the cart's value, or the customer's expected lifetime value
    probability: float | None  # of abandoning for good / of churning; None when no model scored it
    reasons: str

    @property
    def key(self) -> str:
        """Its idempotency key: the same subject gives the same key."""
        subject = f"{self.kind}|{self.user_id}|{self.cart_id or ''}"
        return "alert-" + hashlib.sha256(subject.encode()).hexdigest()[:32]

    def text(self) -> str:
        if self.kind == "abandoned_cart":
            head = f"Big cart abandoned: {self.value:,.2f} by customer {self.user_id} (cart {self.cart_id})"
            odds = (
                f"chance it stays abandoned: {self.probability:.0%}" if self.probability is not None else ""
            )
        else:
            head = f"Valuable customer at risk: {self.user_id}, expected lifetime value {self.value:,.2f}"
            odds = f"churn probability: {self.probability:.0%}" if self.probability is not None else ""
        return head + (f"; {odds}" if odds else "") + (f". Why: {self.reasons}" if self.reasons else "")

    def payload(self) -> dict[str, Any]:
        """Slack's incoming-webhook JSON, with the alert's fields under ``winback``."""
        return {
            "text": self.text(),
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": self.text()}}],
            "winback": {**asdict(self), "id": self.key},
        }


def _number(value: object) -> float:
    number = pd.to_numeric(pd.Series([value]), errors="coerce").iloc[0]
    return float(number) if pd.notna(number) else 0.0


def find_alerts(
    carts: pd.DataFrame,
    customers: pd.DataFrame,
    *,
    cart_value: float,
    customer_value: float,
    churn_probability: float,
) -> list[Alert]:
    """Abandoned carts worth at least ``cart_value`` (``cart_id, user_id, cart_value``, and
    ``abandon_probability`` when a model scored them, ``reasons``) and customers with an expected
    lifetime value of at least ``customer_value`` whose churn probability is at least
    ``churn_probability`` (``user_id, clv, churn_probability, reasons``), most at stake first."""
    found: list[Alert] = []
    for row in carts.to_dict("records"):
        value = _number(row.get("cart_value"))
        if value >= cart_value:
            odds = row.get("abandon_probability")
            found.append(
                Alert("abandoned_cart", str(row["user_id"]), str(row["cart_id"]), value,
                      None if odds is None or pd.isna(odds) else _number(odds), str(row.get("reasons") or ""))
            )  # fmt: skip
    for row in customers.to_dict("records"):
        value, risk = _number(row.get("clv")), _number(row.get("churn_probability"))
        if value >= customer_value and risk >= churn_probability:
            found.append(
                Alert("churn_risk", str(row["user_id"]), None, value, risk, str(row.get("reasons") or ""))
            )
    return sorted(found, key=lambda a: -a.value)


@dataclass(frozen=True)
class AlertReport:
    sent: int
    failed: int
    first_error: str | None = None


def send_alerts(
    alerts: list[Alert], url: str, secret: str | None = None, timeout: float = 10.0
) -> AlertReport:
    """POST each alert to ``url``; a failure is counted and reported, never raised (an alert must not
    stop the plan it comes from)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadInputError(f"WINBACK_ALERT_WEBHOOK_URL {url!r}: expected an http:// or https:// URL")
    sent, failed, first_error = 0, 0, None
    for alert in alerts:
        body = json.dumps(alert.payload(), separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", "Idempotency-Key": alert.key}
        if secret:
            headers[SIGNATURE_HEADER] = sign(secret.encode(), body)
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                response.read()
            sent += 1
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            failed += 1
            first_error = first_error or f"{type(error).__name__}: {error}"
    return AlertReport(sent, failed, first_error)
