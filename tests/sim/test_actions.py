"""The action catalogue: stable names that parse back, and the default 97 actions."""

from __future__ import annotations

import pytest

from winback.decide.actions import NOTHING, Action, default_catalogue


def test_default_catalogue_has_97_distinct_actions_whose_names_parse_back() -> None:
    catalogue = default_catalogue()
    assert len(catalogue) == 97 == len(set(catalogue)) == len({a.name for a in catalogue})
    assert catalogue[0] == NOTHING
    assert all(Action.parse(a.name) == a for a in catalogue)
    assert {a.kind for a in catalogue} == {"nothing", "reminder", "coupon"}


@pytest.mark.parametrize(
    ("action", "name"),
    [
        (Action(), "nothing"),
        (Action("reminder", 0.0, "email", 24), "reminder/email/24h"),
        (Action("reminder", 0.0, "push", 1, True), "reminder+recs/push/1h"),
        (Action("coupon", 0.10, "email", 24, True), "coupon10+recs/email/24h"),
        (Action("coupon", 0.05, "sms", 72), "coupon5/sms/72h"),
        (Action("coupon", 0.125, "sms", 0.5), "coupon12.5/sms/0.5h"),
    ],
)
def test_names(action: Action, name: str) -> None:
    assert action.name == str(action) == name
    assert Action.parse(name) == action


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"kind": "nothing", "channel": "email"}, "takes no channel"),
        ({"kind": "reminder", "channel": "fax", "delay_hours": 1}, "channel 'fax'"),
        ({"kind": "reminder", "channel": "email", "delay_hours": 0}, "delay_hours 0"),
        ({"kind": "reminder", "channel": "email", "delay_hours": 1, "coupon": 0.1}, "coupon 0.1"),
        ({"kind": "coupon", "channel": "email", "delay_hours": 1, "coupon": 0.0}, "coupon 0.0"),
        ({"kind": "coupon", "channel": "email", "delay_hours": 1, "coupon": 1.5}, "coupon 1.5"),
    ],
)
def test_inconsistent_actions_are_refused(bad: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Action(**bad)  # type: ignore[arg-type]


def test_parse_says_what_it_expected() -> None:
    with pytest.raises(ValueError, match=r"expected 'nothing' or e\.g\."):
        Action.parse("coupon/email/24h")
