"""The action catalogue as configuration: the packaged default, custom files, and bad files named exactly."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest

from winback.decide.actions import NOTHING, Action, default_catalogue
from winback.decide.catalogue import QuietHours, load_catalogue
from winback.errors import BadInputError
from winback.sim.config import ShopConfig

DEFAULT_TEXT = resources.files("winback.decide").joinpath("default_catalogue.toml").read_text("utf-8")


def edited(tmp_path: Path, old: str, new: str) -> Path:
    """The default catalogue with ``old`` replaced by ``new``, written to a file."""
    assert old in DEFAULT_TEXT, old
    path = tmp_path / "catalogue.toml"
    path.write_text(DEFAULT_TEXT.replace(old, new, 1), "utf-8")
    return path


def test_default_catalogue_is_the_97_actions_with_the_simulators_costs_and_margin() -> None:
    catalogue = load_catalogue()
    assert len(catalogue.actions) == 97
    assert catalogue.actions == default_catalogue()  # same actions, same order
    assert catalogue.actions[0] == NOTHING
    shop = ShopConfig()
    for channel, cost in shop.channel_cost.items():
        assert catalogue.channel_cost(channel) == cost  # type: ignore[arg-type]
    assert catalogue.channel_cost(None) == 0
    assert catalogue.margin() == catalogue.margin("anything unlisted") == shop.margin_rate
    limits = catalogue.limits
    assert dict(limits.frequency_cap_hours) == {"email": 16, "sms": 24, "push": 24}
    assert limits.quiet_hours == QuietHours(21 * 60, 8 * 60, frozenset({"email", "sms", "push"}))
    assert str(limits.quiet_hours) == "21:00\N{EN DASH}08:00"
    assert limits.max_coupon == pytest.approx(0.15)
    assert catalogue.action("coupon10+recs/email/24h") == Action("coupon", 0.10, "email", 24, True)


def test_default_flows_are_the_static_baselines() -> None:
    flows = load_catalogue().flows
    assert set(flows) == {"static-10h", "static-1h-24h-72h", "coupon-everyone"}
    assert flows["static-10h"].steps == (Action("reminder", 0.0, "email", 10),)
    assert [s.name for s in flows["static-1h-24h-72h"].steps] == [
        "reminder/email/1h",
        "reminder/email/24h",
        "coupon10/email/72h",
    ]
    assert [s.name for s in flows["coupon-everyone"].steps] == ["coupon10/email/24h"]
    assert all(flow.description for flow in flows.values())


def test_a_custom_file_replaces_its_sections_and_keeps_the_defaults_for_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "shop.toml"
    path.write_text(
        """
[margin]
default = 0.4
[margin.categories]
"electronics" = 0.12

[actions]
nothing = true
reminder = true
coupons = [10]
recommendations = [false]
channels = ["email"]
delays_hours = [24, 72]
extra = ["coupon12.5+recs/sms/6h", "reminder/email/24h"]
exclude = ["coupon10/email/24h"]
""",
        "utf-8",
    )
    catalogue = load_catalogue(path)
    assert [a.name for a in catalogue.actions] == [
        "nothing",
        "reminder/email/24h",
        "reminder/email/72h",
        "coupon10/email/72h",
        "coupon12.5+recs/sms/6h",  # the duplicate extra reminder is not added twice
    ]
    assert catalogue.margin() == 0.4
    assert catalogue.margin("electronics") == 0.12
    assert catalogue.margin("garden") == 0.4
    assert catalogue.channel_cost("sms") == 0.04  # [channels] came from the default
    assert set(catalogue.flows) == {"static-10h", "static-1h-24h-72h", "coupon-everyone"}
    assert catalogue.source == path
    with pytest.raises(BadInputError, match=r"coupon10/email/24h.*not in the catalogue.*shop\.toml"):
        catalogue.action("coupon10/email/24h")


def test_default_sections_keep_only_the_channels_a_file_declares(tmp_path: Path) -> None:
    path = tmp_path / "email-only.toml"
    path.write_text("[channels.email]\ncost = 0.002\n", "utf-8")
    catalogue = load_catalogue(path)
    assert len(catalogue.actions) == 1 + 4 * 8
    assert {a.channel for a in catalogue.actions} == {None, "email"}
    assert dict(catalogue.limits.frequency_cap_hours) == {"email": 16}
    assert catalogue.limits.quiet_hours is not None
    assert catalogue.limits.quiet_hours.channels == {"email"}
    assert len(catalogue.flows) == 3  # all e-mail
    push_only = tmp_path / "push-only.toml"
    push_only.write_text("[channels.push]\ncost = 0\n", "utf-8")
    assert load_catalogue(push_only).flows == {}


def test_quiet_hours_can_be_left_out_and_caps_switched_off(tmp_path: Path) -> None:
    text = (
        DEFAULT_TEXT.split("[limits.quiet_hours]")[0]
        + DEFAULT_TEXT.split('channels = ["email", "sms", "push"]\n')[-1]
    )
    path = tmp_path / "c.toml"
    path.write_text(text.replace("email = 16", "email = 0"), "utf-8")
    limits = load_catalogue(path).limits
    assert limits.quiet_hours is None
    assert limits.frequency_cap_hours["email"] == 0


@pytest.mark.parametrize(
    ("old", "new", "key", "reason"),
    [
        (
            "[channels.push]",
            "[channels.fax]\ncost = 0.01\n\n[channels.push]",
            "channels.fax",
            "unknown channel 'fax'",
        ),
        ("cost = 0.04", "cost = -0.04", "channels.sms.cost", "-0.04 is negative"),
        ("coupons = [5, 10, 15]", "coupons = [5, 10, 150]", "actions.coupons[2]", "150% is over 100%"),
        ("coupons = [5, 10, 15]", "coupons = [5, 0.1]", "actions.coupons[1]", "not fractions"),
        ("nothing = true", "nothing = false", "actions.nothing", "needs the 'nothing' action"),
        ("nothing = true", "", "actions.nothing", "missing: the catalogue needs the 'nothing' action"),
        ("exclude = []", 'exclude = ["nothing"]', "actions.exclude[0]", "'nothing' cannot be left out"),
        ("exclude = []", 'exclude = ["reminder/fax/1h"]', "actions.exclude[0]", "not in the catalogue"),
        (
            'channels = ["email", "sms", "push"]\ndelays',
            'channels = ["email", "fax"]\ndelays',
            "actions.channels[1]",
            "unknown channel 'fax'",
        ),
        ("delays_hours = [1, 6, 24, 72]", "delays_hours = [1, -6]", "actions.delays_hours[1]", "positive"),
        ("extra = []", 'extra = ["coupon20/email/2d"]', "actions.extra[0]", "expected 'nothing' or e.g."),
        ("cost = 0.001", "cots = 0.001", "channels.email.cots", "unknown key"),
        ("cost = 0.001", "cost = 0.001\nprovider = 'smtp'", "channels.email.provider", "unknown key"),
        ("default = 0.30", "default = 1.3", "margin.default", "between 0 and 1"),
        ("max_coupon = 15", "max_coupon = 120", "limits.max_coupon", "over 100%"),
        ("sms = 24\n", "sms = -1\n", "limits.frequency_cap_hours.sms", "negative"),
        ("sms = 24\n", "", "limits.frequency_cap_hours.sms", "missing"),
        ('start = "21:00"', 'start = "25:00"', "limits.quiet_hours.start", "expected a local time"),
        ('end = "08:00"', 'end = "21:00"', "limits.quiet_hours", "start equals end"),
        (
            'steps = ["reminder/email/10h"]',
            'steps = ["coupon150/email/10h"]',
            "flows.static-10h.steps[0]",
            "coupon 1.5",
        ),
        (
            'steps = ["reminder/email/10h"]',
            'steps = ["reminder/email/10h", "reminder/email/1h"]',
            "flows.static-10h.steps[1]",
            "expected steps in order of delay",
        ),
        ('steps = ["reminder/email/10h"]', 'steps = ["nothing"]', "flows.static-10h.steps[0]", "not a step"),
        ('steps = ["reminder/email/10h"]', "", "flows.static-10h.steps", "missing"),
        (
            "[channels.email]\ncost = 0.001",
            "",
            "actions.channels[0]",
            "channel 'email' has no [channels.email] cost",
        ),
    ],
)
def test_bad_catalogues_name_the_file_the_key_and_the_reason(
    tmp_path: Path, old: str, new: str, key: str, reason: str
) -> None:
    path = edited(tmp_path, old, new)
    with pytest.raises(BadInputError) as caught:
        load_catalogue(path)
    message = str(caught.value)
    assert str(path) in message.splitlines()[0]
    [line] = [p for p in caught.value.problems if p.startswith(f"{key}: ")]
    assert reason in line, line


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = edited(tmp_path, "cost = 0.04", "cost = -1")
    path.write_text(path.read_text("utf-8").replace("coupons = [5, 10, 15]", "coupons = [5, 200]"), "utf-8")
    with pytest.raises(BadInputError, match=r"2 problems") as caught:
        load_catalogue(path)
    assert [p.split(":")[0] for p in caught.value.problems] == ["channels.sms.cost", "actions.coupons[1]"]


def test_toml_syntax_errors_name_the_file_and_line(tmp_path: Path) -> None:
    path = edited(tmp_path, "email = 16", "email = = 16")
    line = DEFAULT_TEXT.splitlines().index("email = 16") + 1
    with pytest.raises(BadInputError, match=rf"{path.name}: not valid TOML: .*line {line}\b"):
        load_catalogue(path)


def test_a_missing_file_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match=r"nope\.toml: cannot read the action catalogue"):
        load_catalogue(tmp_path / "nope.toml")


def test_quiet_hours_within_one_day_and_across_midnight() -> None:
    night, lunch = QuietHours(21 * 60, 8 * 60), QuietHours(12 * 60, 13 * 60)
    assert [night.contains(h * 60) for h in (20, 21, 23, 0, 7, 8, 12)] == [0, 1, 1, 1, 1, 0, 0]
    assert [lunch.contains(m) for m in (719, 720, 779, 780)] == [False, True, True, False]
