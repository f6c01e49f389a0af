"""Guardrails: each refuses with its reason and passes otherwise; budgets and pacing; coupon harvesters."""

from __future__ import annotations

import math
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import numpy as np
import pandas as pd
import pytest

from winback.decide.actions import NOTHING, Action
from winback.decide.catalogue import Catalogue, QuietHours, load_catalogue
from winback.decide.context import DecisionContext
from winback.decide.guardrails import DiscountBudget, Guardrails, HarvesterDetector, MonthlyPacer
from winback.errors import BadInputError

CATALOGUE = load_catalogue()
ACTIONS = CATALOGUE.actions
HOUR = 3600.0
#: Monday 2024-06-10 10:00 UTC: every default delay from here lands in the daytime for a UTC customer.
MORNING = datetime(2024, 6, 10, 10, tzinfo=UTC).timestamp()


def context(**changes: Any) -> DecisionContext:
    base: dict[str, Any] = {
        "user_id": "u1",
        "now": MORNING,
        "cart_id": "c1",
        "abandoned_at": MORNING,
        "value": 100.0,
        "consent": frozenset({"email", "sms", "push"}),
        "in_stock": True,
    }
    return DecisionContext(**{**base, **changes})


def with_limits(**changes: Any) -> Catalogue:
    return replace(CATALOGUE, limits=replace(CATALOGUE.limits, **changes))


def refusals(guardrails: Guardrails, ctx: DecisionContext) -> dict[str, str]:
    passed, refused = guardrails.allowed(ctx, ACTIONS)
    assert [a for a in ACTIONS if a.name not in refused] == passed  # a partition, in order
    assert NOTHING in passed
    return refused


def test_a_clean_context_passes_everything() -> None:
    passed, refused = Guardrails(CATALOGUE).allowed(context(), ACTIONS)
    assert passed == ACTIONS
    assert refused == {}


def test_consent_and_unsubscribes() -> None:
    refused = refusals(Guardrails(CATALOGUE), context(consent=frozenset({"email", "push"})))
    assert set(refused) == {a.name for a in ACTIONS if a.channel == "sms"}
    assert set(refused.values()) == {"no consent for sms"}
    refused = refusals(Guardrails(CATALOGUE), context(unsubscribed=frozenset({"push", "email"})))
    assert refused["coupon5/push/24h"] == "unsubscribed from push"
    assert refused["reminder/email/1h"] == "unsubscribed from e-mail"
    assert len(refused) == 64
    assert refusals(Guardrails(CATALOGUE), context(consent=frozenset())).keys() == {
        a.name for a in ACTIONS if a.is_message
    }


def test_frequency_cap_counts_from_the_last_message_to_the_send_time() -> None:
    ctx = context(last_message_at={"email": MORNING - 5 * HOUR, "sms": MORNING - 23 * HOUR})
    refused = refusals(Guardrails(CATALOGUE), ctx)
    assert (
        refused["reminder/email/1h"]
        == "e-mail frequency cap: last message 5 h ago, 6 h from this send (cap 16 h)"
    )
    assert refused["coupon10+recs/email/6h"].endswith("11 h from this send (cap 16 h)")
    assert "reminder/email/24h" not in refused  # 29 h after the last e-mail
    assert not any(name.startswith(("reminder/sms", "coupon5/sms")) for name in refused)  # 24 h: not < 24 h
    assert len(refused) == 16  # e-mail at 1 h and 6 h, 8 offers each
    # A decision made after the delay has passed sends now: the spec's plain form of the reason.
    late = context(abandoned_at=MORNING - 2 * HOUR, last_message_at={"email": MORNING - 5 * HOUR})
    _, refused = Guardrails(CATALOGUE).allowed(late, [Action("reminder", 0.0, "email", 1)])
    assert refused == {"reminder/email/1h": "e-mail frequency cap: last message 5 h ago (cap 16 h)"}
    # A cap of 0 is no cap.
    no_cap = Guardrails(with_limits(frequency_cap_hours={"email": 0.0, "sms": 24.0, "push": 24.0}))
    assert refusals(no_cap, ctx) == {}


def test_frequency_cap_also_keeps_a_message_away_from_one_already_scheduled() -> None:
    ctx = context(last_message_at={"push": MORNING + 30 * HOUR})
    refused = refusals(Guardrails(CATALOGUE), ctx)  # push at 1, 6, 24, 72 h: 29, 24, 6, 42 h away
    assert refused.keys() == {a.name for a in ACTIONS if a.channel == "push" and a.delay_hours == 24}
    assert (
        refused["reminder/push/24h"]
        == "push frequency cap: a message due in 30 h, 6 h from this send (cap 24 h)"
    )


def local_time_is_quiet(send_at: float, offset_minutes: int) -> bool:
    """Independently: the hour on the customer's wall clock, 21:00-08:00 quiet."""
    local = datetime.fromtimestamp(send_at, timezone(timedelta(minutes=offset_minutes)))
    return local.hour >= 21 or local.hour < 8


def test_quiet_hours_apply_at_the_send_time_in_the_customers_time_zone() -> None:
    evening = datetime(2024, 6, 10, 18, 30, tzinfo=UTC).timestamp()  # 20:30 in UTC+2, 13:30 in UTC-5
    guardrails = Guardrails(CATALOGUE)
    east = refusals(guardrails, context(now=evening, abandoned_at=evening, utc_offset_minutes=120))
    assert (
        east["reminder/email/1h"]
        == "quiet hours 21:00\N{EN DASH}08:00 for the customer (UTC+2): send time 21:30 local"
    )
    assert east["coupon5/sms/6h"].endswith("send time 02:30 local")  # across midnight
    assert {a.delay_hours for a in ACTIONS if a.name in east} == {1, 6}
    west = refusals(guardrails, context(now=evening, abandoned_at=evening, utc_offset_minutes=-300))
    assert west == {}
    india = refusals(guardrails, context(now=evening, abandoned_at=evening, utc_offset_minutes=330))
    assert (
        india["reminder/push/24h"]
        == "quiet hours 21:00\N{EN DASH}08:00 for the customer (UTC+5:30): send time 00:00 local"
    )
    # The morning edge: 06:30 + 1 h is still quiet, 07:30 + 1 h is not.
    dawn = datetime(2024, 6, 10, 6, 30, tzinfo=UTC).timestamp()
    assert "reminder/email/1h" in refusals(guardrails, context(now=dawn, abandoned_at=dawn))
    assert "reminder/email/1h" not in refusals(guardrails, context(now=dawn + HOUR, abandoned_at=dawn + HOUR))


def test_quiet_hours_agree_with_the_wall_clock_over_random_times_and_zones() -> None:
    rng = np.random.default_rng(5)
    guardrails = Guardrails(CATALOGUE)
    for _ in range(300):
        at = MORNING + float(rng.integers(0, 30 * 24 * 3600))
        offset = int(rng.choice([-600, -300, 0, 60, 120, 330, 345, 600, 780]))
        ctx = context(now=at, abandoned_at=at, utc_offset_minutes=offset)
        refused = refusals(guardrails, ctx)
        for action in ACTIONS[1:9]:  # e-mail at 1 h, each offer
            quiet = local_time_is_quiet(at + action.delay_hours * HOUR, offset)
            assert (action.name in refused) == quiet, (at, offset, action.name)


def test_quiet_hours_only_on_their_channels() -> None:
    night = datetime(2024, 6, 10, 23, tzinfo=UTC).timestamp()
    sms_only = Guardrails(with_limits(quiet_hours=QuietHours(21 * 60, 8 * 60, frozenset({"sms"}))))
    refused = refusals(sms_only, context(now=night, abandoned_at=night))
    assert {a.channel for a in ACTIONS if a.name in refused} == {"sms"}
    assert refusals(Guardrails(with_limits(quiet_hours=None)), context(now=night, abandoned_at=night)) == {}


def test_customer_level_win_back_counts_delays_from_now() -> None:
    night = datetime(2024, 6, 10, 20, 30, tzinfo=UTC).timestamp()
    ctx = context(cart_id=None, abandoned_at=None, now=night)
    assert ctx.send_time(1) == night + HOUR
    refused = refusals(Guardrails(CATALOGUE), ctx)
    assert {a.delay_hours for a in ACTIONS if a.name in refused} == {1, 6}


def test_out_of_stock_harvester_and_max_coupon() -> None:
    guardrails = Guardrails(CATALOGUE)
    refused = refusals(guardrails, context(in_stock=False))
    assert refused.keys() == {a.name for a in ACTIONS if a.is_message}
    assert set(refused.values()) == {"out of stock"}
    assert refusals(guardrails, context(in_stock=None)) == {}  # unknown stock is not checked
    refused = refusals(guardrails, context(is_harvester=True))
    assert refused.keys() == {a.name for a in ACTIONS if a.kind == "coupon"}
    assert set(refused.values()) == {"coupon harvester: no coupons"}
    refused = refusals(Guardrails(with_limits(max_coupon=0.10)), context())
    assert refused.keys() == {a.name for a in ACTIONS if a.coupon == 0.15}
    assert set(refused.values()) == {"coupon 15% is over the maximum of 10%"}


def test_discount_budget() -> None:
    refused = refusals(Guardrails(CATALOGUE, DiscountBudget(0.0)), context())
    assert refused.keys() == {a.name for a in ACTIONS if a.kind == "coupon"}  # budget 0: no coupons
    assert refused["coupon5/email/1h"] == "budget exhausted: 0.00 of 0.00 left, this coupon may cost 5.00"
    budget = DiscountBudget(12.0)
    refused = refusals(Guardrails(CATALOGUE, budget), context())  # a 100.00 cart: coupons cost 5, 10, 15
    assert refused.keys() == {a.name for a in ACTIONS if a.coupon == 0.15}
    assert refusals(Guardrails(CATALOGUE, budget, redemption_rate=0.5), context()) == {}  # 7.50 fits
    budget.spend(7.0)
    assert budget.remaining == 5.0
    assert budget.can_afford(5.0)
    assert not budget.can_afford(5.01)
    refused = refusals(Guardrails(CATALOGUE, budget), context())
    assert {a.coupon for a in ACTIONS if a.name in refused} == {0.10, 0.15}
    with pytest.raises(BadInputError, match="expected amounts of 0 or more"):
        DiscountBudget(-1.0)


def test_the_first_failing_guardrail_gives_the_reason() -> None:
    ctx = context(consent=frozenset({"email"}), is_harvester=True, in_stock=False)
    _, refused = Guardrails(CATALOGUE, DiscountBudget(0)).allowed(ctx, ACTIONS)
    assert refused["coupon5/sms/1h"] == "no consent for sms"
    assert refused["coupon5/email/1h"] == "out of stock"
    _, refused = Guardrails(CATALOGUE, DiscountBudget(0)).allowed(context(is_harvester=True), ACTIONS)
    assert refused["coupon5/email/1h"] == "coupon harvester: no coupons"


def test_actions_outside_the_catalogue_are_checked_too() -> None:
    night = datetime(2024, 6, 10, 12, tzinfo=UTC).timestamp()
    ten_hours = Action("reminder", 0.0, "email", 10)  # the static-10h flow's step: 22:00
    passed, refused = Guardrails(CATALOGUE).allowed(
        context(now=night, abandoned_at=night), [ten_hours, NOTHING]
    )
    assert passed == [NOTHING]
    assert refused["reminder/email/10h"].startswith("quiet hours")


def test_guardrails_are_fast_over_the_full_catalogue() -> None:
    guardrails = Guardrails(CATALOGUE, MonthlyPacer(10_000.0))
    ctx = context(consent=frozenset({"email", "push"}), last_message_at={"email": MORNING - 5 * HOUR})
    timings = []
    for _ in range(300):
        start = time.perf_counter()
        guardrails.allowed(ctx, ACTIONS)
        timings.append(time.perf_counter() - start)
    assert float(np.median(timings)) < 1e-3


def test_context_refuses_impossible_values() -> None:
    with pytest.raises(BadInputError, match="utc_offset_minutes 900"):
        context(utc_offset_minutes=900)
    with pytest.raises(BadInputError, match="consent: unknown channel 'fax'"):
        context(consent=frozenset({"fax"}))
    with pytest.raises(BadInputError, match="value -1"):
        context(value=-1.0)


# -- the monthly pacer -----------------------------------------------------------------------------------


def at(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()  # type: ignore[arg-type, misc]


def test_pacer_allowance_grows_with_the_month_and_resets() -> None:
    pacer = MonthlyPacer(3000.0, slack=0.0)
    assert pacer.allowance(at(2024, 6, 1)) == 0.0
    assert pacer.allowance(at(2024, 6, 16)) == pytest.approx(1500.0)  # June has 30 days
    assert pacer.allowance(at(2024, 7, 16, 12)) == pytest.approx(3000.0 * 15.5 / 31)
    pacer.spend(1000.0, at(2024, 6, 11))
    assert pacer.spent(at(2024, 6, 20)) == 1000.0
    assert pacer.refusal(10.0, at(2024, 6, 11)) == (  # 10 days gone: 1000 allowed
        "budget ahead of pace: 1,000.00 spent and this coupon's 10.00 pass the 1,000.00 allowed "
        "33% into the month"
    )
    assert not pacer.can_afford(10.0, at(2024, 6, 11, 2))  # 1008.33 allowed
    assert pacer.can_afford(10.0, at(2024, 6, 11, 3))  # 1012.50 allowed
    assert pacer.spent(at(2024, 7, 1)) == 0.0  # a new month
    assert pacer.can_afford(0.0, at(2024, 7, 1))
    assert not pacer.can_afford(3000.01, at(2024, 6, 30, 23))
    assert pacer.refusal(2100.0, at(2024, 6, 30)).startswith("budget exhausted: 2,000.00 of 3,000.00 left")  # type: ignore[union-attr]


def test_pacer_slack_lets_the_month_start_and_zero_means_no_coupons() -> None:
    pacer = MonthlyPacer(1000.0, slack=0.02)
    assert pacer.can_afford(20.0, at(2024, 6, 1))
    assert not pacer.can_afford(20.01, at(2024, 6, 1))
    zero = MonthlyPacer(0.0)
    assert zero.refusal(0.0, at(2024, 6, 15)) is not None
    refused = refusals(Guardrails(CATALOGUE, zero), context())
    assert refused.keys() == {a.name for a in ACTIONS if a.kind == "coupon"}


def test_pacer_weighted_by_traffic_matches_counting_hours() -> None:
    office = [1.0 if 9 <= h % 24 < 17 and h < 5 * 24 else 0.0 for h in range(168)]  # weekdays 9-17
    pacer = MonthlyPacer(1000.0, traffic=office, slack=0.0)

    def share(now: datetime) -> float:  # independently: office hours gone over office hours in June
        hours = [datetime(2024, 6, 1, tzinfo=UTC) + timedelta(hours=h) for h in range(30 * 24)]
        busy = [h for h in hours if h.weekday() < 5 and 9 <= h.hour < 17]
        return sum(h + timedelta(hours=1) <= now for h in busy) / len(busy)

    for when in (datetime(2024, 6, 3, 0, tzinfo=UTC), datetime(2024, 6, 12, 17, tzinfo=UTC),
                 datetime(2024, 6, 15, 12, tzinfo=UTC), datetime(2024, 6, 28, 9, tzinfo=UTC)):  # fmt: skip
        assert pacer.allowance(when.timestamp()) == pytest.approx(1000.0 * share(when))
    weekend = datetime(2024, 6, 8, 12, tzinfo=UTC).timestamp()
    assert pacer.allowance(weekend) == pytest.approx(pacer.allowance(weekend + 24 * HOUR))  # no traffic
    mid_hour = datetime(2024, 6, 3, 9, 30, tzinfo=UTC).timestamp()
    assert pacer.allowance(mid_hour) == pytest.approx(1000.0 * 0.5 / (20 * 8))  # 20 weekdays in June


def test_pacer_months_begin_in_the_shops_time_zone() -> None:
    pacer = MonthlyPacer(3100.0, slack=0.0, utc_offset_minutes=120)
    late_june_utc = at(2024, 6, 30, 23)  # 01:00 on 1 July in UTC+2
    pacer.spend(50.0, late_june_utc)
    assert pacer.spent(at(2024, 7, 15)) == 50.0
    assert pacer.allowance(late_june_utc) == pytest.approx(3100.0 / (31 * 24))


# -- coupon harvesters ---------------------------------------------------------------------------------


def history(seed: int = 3) -> pd.DataFrame:
    """500 ordinary customers at an 8% coupon-purchase rate, a heavy ordinary one, two planted harvesters."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(500):
        n = int(rng.integers(1, 13))
        rows += [(f"u{i}", bool(hit)) for hit in rng.random(n) < 0.08]
    rows += [("heavy", bool(hit)) for hit in rng.random(60) < 0.08]
    rows += [("harvester-a", hit) for hit in [True] * 7 + [False]]
    rows += [("harvester-b", True)] * 5
    rows += [("lucky", True)] * 2  # all coupon purchases, but too few abandonments to tell
    return pd.DataFrame(rows, columns=["user_id", "coupon_purchase"])


def test_harvester_detector_flags_planted_harvesters_only() -> None:
    data = history()
    detector = HarvesterDetector().fit(data)
    assert detector.harvesters_ == {"harvester-a", "harvester-b"}
    assert detector.is_harvester("harvester-a")
    assert not detector.is_harvester("heavy")
    assert not detector.is_harvester("lucky")
    assert not detector.is_harvester("never-seen")
    # The p-value is the binomial tail against everyone else's rate, computed here by hand.
    others = data[data.user_id != "harvester-a"].coupon_purchase
    p0 = others.sum() / len(others)
    tail = sum(math.comb(8, j) * p0**j * (1 - p0) ** (8 - j) for j in (7, 8))
    row = detector.stats_.loc["harvester-a"]
    assert row.p_value == pytest.approx(tail)
    assert (row.abandonments, row.coupon_purchases, row.rate) == (8, 7, 7 / 8)
    assert detector.base_rate_ == pytest.approx(data.coupon_purchase.mean())
    assert math.isnan(detector.stats_.loc["lucky"].p_value)  # under min_abandonments: not tested


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_harvester_detector_flags_no_ordinary_customer(seed: int) -> None:
    data = history(seed)
    ordinary = data[~data.user_id.str.startswith("harvester")]
    assert HarvesterDetector().fit(ordinary).harvesters_ == frozenset()


def test_harvester_detector_bad_input() -> None:
    with pytest.raises(BadInputError, match="no column 'coupon_purchase'"):
        HarvesterDetector().fit(pd.DataFrame({"user_id": ["a"]}))
    with pytest.raises(BadInputError, match="row 1: coupon_purchase 'yes'"):
        HarvesterDetector().fit(pd.DataFrame({"user_id": ["a", "b"], "coupon_purchase": [True, "yes"]}))
    with pytest.raises(BadInputError, match="not fitted"):
        HarvesterDetector().is_harvester("a")
    with pytest.raises(BadInputError, match="no abandonments"):
        HarvesterDetector().fit(pd.DataFrame({"user_id": [], "coupon_purchase": []}))
