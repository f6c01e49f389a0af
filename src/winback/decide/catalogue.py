"""The action catalogue as configuration: offers, channels and their costs, delays, margins, limits, flows.

The catalogue is data a shop edits, not code (DESIGN.md, "Decisions"): a TOML file whose packaged
default (``default_catalogue.toml`` beside this module) reproduces the simulator's costs and margin and
:func:`~winback.decide.actions.default_catalogue`'s 97 actions, and carries the static baselines shops run
today as flows. :func:`load_catalogue` reads and checks it; every problem is reported at once, each
naming the file, the key (``actions.coupons[2]``) and what was expected.

Examples
--------
>>> catalogue = load_catalogue()
>>> len(catalogue.actions), catalogue.channel_cost("sms"), catalogue.margin()
(97, 0.04, 0.3)
>>> [step.name for step in catalogue.flows["static-1h-24h-72h"].steps]
['reminder/email/1h', 'reminder/email/24h', 'coupon10/email/72h']
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, cast

from winback.decide.actions import CHANNELS, NOTHING, Action, Channel
from winback.errors import BadInputError

__all__ = ["DEFAULT_CATALOGUE", "Catalogue", "Flow", "Limits", "QuietHours", "load_catalogue"]

#: Name of the packaged default catalogue inside :mod:`winback.decide`.
DEFAULT_CATALOGUE = "default_catalogue.toml"
SECTIONS = ("margin", "channels", "actions", "limits", "flows")
_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


@dataclass(frozen=True)
class QuietHours:
    """Local clock window in which no message is sent; ``start > end`` crosses midnight.

    Examples
    --------
    >>> night = QuietHours(21 * 60, 8 * 60)
    >>> night.contains(23 * 60), night.contains(7 * 60 + 59), night.contains(8 * 60)
    (True, True, False)
    """

    start_minute: int  # minutes after local midnight
    end_minute: int
    channels: frozenset[Channel] = frozenset(CHANNELS)

    def contains(self, local_minute: int) -> bool:
        """Whether ``local_minute`` (0-1439 after local midnight) is inside the window."""
        if self.start_minute <= self.end_minute:
            return self.start_minute <= local_minute < self.end_minute
        return local_minute >= self.start_minute or local_minute < self.end_minute

    def __str__(self) -> str:
        return f"{_clock(self.start_minute)}\N{EN DASH}{_clock(self.end_minute)}"


@dataclass(frozen=True)
class Limits:
    """What every policy must respect: per-channel frequency caps, quiet hours, the largest coupon."""

    frequency_cap_hours: Mapping[Channel, float] = field(
        default_factory=lambda: {"email": 16.0, "sms": 24.0, "push": 24.0}
    )
    quiet_hours: QuietHours | None = field(default_factory=lambda: QuietHours(21 * 60, 8 * 60))
    max_coupon: float = 0.15  # fraction of the cart value


@dataclass(frozen=True)
class Flow:
    """A fixed sequence of messages; each step's ``delay_hours`` counts from abandonment."""

    name: str
    steps: tuple[Action, ...]
    description: str = ""


@dataclass(frozen=True)
class Catalogue:
    """The actions a policy may choose from, what they cost, what a sale earns, limits and flows."""

    actions: list[Action]
    channel_costs: Mapping[Channel, float]
    default_margin: float
    category_margins: Mapping[str, float]
    limits: Limits
    flows: dict[str, Flow]
    source: Path | None = None  # the file read; None for the packaged default

    def channel_cost(self, channel: Channel | None) -> float:
        """Cost of one message on ``channel``; 0 for None (doing nothing)."""
        if channel is None:
            return 0.0
        try:
            return self.channel_costs[channel]
        except KeyError:
            raise BadInputError(f"channel {channel!r}: not in the catalogue ({self._where})") from None

    def margin(self, category: str | None = None) -> float:
        """Gross margin share of ``category``, or the shop's default for None or a category not listed."""
        if category is None:
            return self.default_margin
        return self.category_margins.get(category, self.default_margin)

    def action(self, name: str) -> Action:
        """The catalogue's action called ``name``."""
        for action in self.actions:
            if action.name == name:
                return action
        raise BadInputError(f"action {name!r}: not in the catalogue ({self._where})")

    @property
    def _where(self) -> str:
        return str(self.source) if self.source else "the packaged default"


def load_catalogue(path: Path | str | None = None) -> Catalogue:
    """Read and check the catalogue at ``path`` (None: the packaged default).

    Top-level sections missing from the file are taken whole from the packaged default. Raises
    :class:`~winback.errors.BadInputError` naming the file, the line of a TOML syntax error, or each bad
    key and why.
    """
    default_text = resources.files("winback.decide").joinpath(DEFAULT_CATALOGUE).read_text("utf-8")
    default = _parse(default_text, DEFAULT_CATALOGUE)
    if path is None:
        return _Reader(DEFAULT_CATALOGUE).catalogue(default, None)
    path = Path(path)
    try:
        text = path.read_text("utf-8")
    except OSError as error:
        raise BadInputError(f"{path}: cannot read the action catalogue ({error.strerror or error})") from None
    document = _parse(text, str(path))
    defaulted = frozenset(default).difference(document)
    merged = {**{k: default[k] for k in defaulted}, **document}
    return _Reader(str(path)).catalogue(merged, path, defaulted)


def _parse(text: str, where: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:  # the message ends "(at line 3, column 9)"
        raise BadInputError(f"{where}: not valid TOML: {error}") from None


def _clock(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


class _Reader:
    """Checks one parsed document, collecting every problem as ``key: reason``."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.problems: list[str] = []
        self.lenient = False  # whether references to undeclared channels are dropped, not refused

    def problem(self, key: str, reason: str) -> None:
        self.problems.append(f"{key}: {reason}")

    def catalogue(
        self, doc: dict[str, Any], source: Path | None, defaulted: frozenset[str] = frozenset()
    ) -> Catalogue:
        """The checked catalogue; sections in ``defaulted`` came from the packaged default and quietly
        drop what refers to channels the file does not declare (a flow on such a channel is left out)."""
        self.unknown_keys(doc, "", SECTIONS)
        default_margin, category_margins = self.margins(self.table(doc, "margin"))
        costs = self.channels(self.table(doc, "channels"))
        self.lenient = "actions" in defaulted
        actions = self.actions(self.table(doc, "actions"), costs)
        self.lenient = "limits" in defaulted
        limits = self.limits(self.table(doc, "limits"), costs)
        self.lenient = "flows" in defaulted
        flows = self.flows(self.table(doc, "flows"), costs)
        if self.problems:
            raise BadInputError(
                f"{self.where}: bad action catalogue ({_count(len(self.problems), 'problem')})", self.problems
            )
        return Catalogue(actions, costs, default_margin, category_margins, limits, flows, source)

    # -- sections --------------------------------------------------------------------------------------

    def margins(self, t: dict[str, Any]) -> tuple[float, dict[str, float]]:
        self.unknown_keys(t, "margin", ("default", "categories"))
        default = self.share(t, "default", "margin.default")
        categories: dict[str, float] = {}
        for name, value in self.table(t, "categories", "margin.categories", required=False).items():
            categories[name] = self.share({name: value}, name, f'margin.categories."{name}"')
        return default, categories

    def channels(self, t: dict[str, Any]) -> dict[Channel, float]:
        costs: dict[Channel, float] = {}
        for name, spec in t.items():
            key = f"channels.{name}"
            if name not in CHANNELS:
                self.problem(key, f"unknown channel {name!r}; expected {_choices(CHANNELS)}")
                continue
            if not isinstance(spec, dict):
                self.problem(key, "expected a table with a cost, e.g. [channels.email] cost = 0.001")
                continue
            self.unknown_keys(spec, key, ("cost",))
            cost = self.number(spec, "cost", f"{key}.cost")
            if cost is not None and cost < 0:
                self.problem(f"{key}.cost", f"{cost:g} is negative; expected a cost per message of 0 or more")
            # A bad cost is reported once; the channel still counts as declared for the other sections.
            costs[name] = float(cost or 0.0)
        if not t:
            self.problem("channels", "no channel; expected at least one of " + _choices(CHANNELS))
        return costs

    def actions(self, t: dict[str, Any], costs: Mapping[Channel, float]) -> list[Action]:
        required = ("reminder", "coupons", "recommendations", "channels", "delays_hours")
        self.unknown_keys(t, "actions", ("nothing", *required, "extra", "exclude"))
        for key in required:
            if key not in t:
                self.problem(f"actions.{key}", "missing")
        nothing, reminder = t.get("nothing"), t.get("reminder", False)
        if nothing is not True:
            self.problem(
                "actions.nothing",
                f"{'missing' if 'nothing' not in t else _toml(nothing)}: the catalogue needs the 'nothing' "
                "action (nothing = true); doing nothing is the baseline every action is measured against",
            )
        if not isinstance(reminder, bool):
            self.problem("actions.reminder", f"{reminder!r}: expected true or false")
        coupons = [self.coupon(v, f"actions.coupons[{i}]") for i, v in enumerate(self.array(t, "coupons"))]
        recs = self.array(t, "recommendations")
        for i, value in enumerate(recs):
            if not isinstance(value, bool):
                self.problem(f"actions.recommendations[{i}]", f"{value!r}: expected true or false")
        named = self.array(t, "channels")
        found = [self.channel(v, f"actions.channels[{i}]", costs) for i, v in enumerate(named)]
        channels = [c for c in found if c is not None]
        delays = []
        for i, value in enumerate(self.array(t, "delays_hours")):
            delay = self.number({"v": value}, "v", f"actions.delays_hours[{i}]")
            if delay is not None and delay <= 0:
                self.problem(f"actions.delays_hours[{i}]", f"{delay:g}: expected a positive number of hours")
            elif delay is not None:
                delays.append(int(delay) if float(delay).is_integer() else delay)

        offers: list[tuple[str, float]] = [("reminder", 0.0)] if reminder is True else []
        offers += [("coupon", c) for c in coupons if c is not None]
        actions = [NOTHING] if nothing is True else []
        for channel in channels:
            for delay in delays:
                for with_recs in (r for r in recs if isinstance(r, bool)):
                    for kind, coupon in offers:
                        actions.append(Action(kind, coupon, channel, delay, with_recs))  # type: ignore[arg-type]
        for i, name in enumerate(self.array(t, "extra")):
            extra = self.action_name(name, f"actions.extra[{i}]", costs)
            if extra is not None and extra not in actions:
                actions.append(extra)
        for i, name in enumerate(self.array(t, "exclude")):
            if name not in {a.name for a in actions}:
                self.problem(f"actions.exclude[{i}]", f"{name!r} is not in the catalogue")
            elif name == "nothing":
                self.problem(f"actions.exclude[{i}]", "'nothing' cannot be left out: it is always an option")
            else:
                actions = [a for a in actions if a.name != name]
        return actions

    def limits(self, t: dict[str, Any], costs: Mapping[Channel, float]) -> Limits:
        self.unknown_keys(t, "limits", ("max_coupon", "frequency_cap_hours", "quiet_hours"))
        max_coupon = self.coupon(t.get("max_coupon"), "limits.max_coupon") if "max_coupon" in t else None
        if "max_coupon" not in t:
            self.problem("limits.max_coupon", "missing; expected the largest coupon in percent, e.g. 15")
        caps: dict[Channel, float] = {}
        cap_table = self.table(t, "frequency_cap_hours", "limits.frequency_cap_hours")
        for name in cap_table:
            key = f"limits.frequency_cap_hours.{name}"
            channel = self.channel(name, key, costs)
            hours = self.number(cap_table, name, key)
            if channel is not None and hours is not None:
                if hours < 0:
                    self.problem(key, f"{hours:g} is negative; expected hours (0 for no cap)")
                caps[channel] = float(hours)
        for channel in costs:
            if channel not in cap_table:
                self.problem(
                    f"limits.frequency_cap_hours.{channel}", "missing; expected hours (0 for no cap)"
                )
        quiet = None
        if "quiet_hours" in t:
            quiet = self.quiet_hours(self.table(t, "quiet_hours", "limits.quiet_hours"), costs)
        return Limits(caps, quiet, max_coupon or 0.0)

    def quiet_hours(self, t: dict[str, Any], costs: Mapping[Channel, float]) -> QuietHours | None:
        self.unknown_keys(t, "limits.quiet_hours", ("start", "end", "channels"))
        start, end = (self.clock(t, k, f"limits.quiet_hours.{k}") for k in ("start", "end"))
        channels = list(costs)
        if "channels" in t:
            named = self.array(t, "channels", "limits.quiet_hours.channels")
            found = [self.channel(v, f"limits.quiet_hours.channels[{i}]", costs) for i, v in enumerate(named)]
            channels = [c for c in found if c is not None]
        if start is None or end is None:
            return None
        if start == end:
            self.problem("limits.quiet_hours", "start equals end; leave the table out for no quiet hours")
            return None
        return QuietHours(start, end, frozenset(channels))

    def flows(self, t: dict[str, Any], costs: Mapping[Channel, float]) -> dict[str, Flow]:
        flows = {}
        for name, spec in t.items():
            key = f"flows.{name}"
            if not isinstance(spec, dict):
                self.problem(key, "expected a table with steps = [...] and an optional description")
                continue
            self.unknown_keys(spec, key, ("steps", "description"))
            if "steps" not in spec:
                self.problem(f"{key}.steps", "missing; expected a list of action names (may be empty)")
            steps: list[Action] = []
            named = self.array(spec, "steps", f"{key}.steps")
            for i, step in enumerate(named):
                action = self.action_name(step, f"{key}.steps[{i}]", costs)
                if action is not None and not action.is_message:
                    self.problem(
                        f"{key}.steps[{i}]", "'nothing' is not a step; a flow of no steps sends nothing"
                    )
                elif action is not None:
                    if steps and action.delay_hours < steps[-1].delay_hours:
                        self.problem(
                            f"{key}.steps[{i}]",
                            f"{step} comes before the previous step's {steps[-1].delay_hours:g} h; "
                            "expected steps in order of delay (hours after abandonment)",
                        )
                    steps.append(action)
            description = spec.get("description", "")
            if not isinstance(description, str):
                self.problem(f"{key}.description", "expected a string")
                description = ""
            if len(steps) == len(named) or not self.lenient:
                flows[name] = Flow(name, tuple(steps), description)
        return flows

    # -- values ----------------------------------------------------------------------------------------

    def unknown_keys(self, t: dict[str, Any], key: str, known: tuple[str, ...]) -> None:
        for name in t:
            if name not in known:
                where = f"{key}.{name}" if key else name
                self.problem(where, f"unknown key; expected {_choices(known)}")

    def table(
        self, t: dict[str, Any], name: str, key: str | None = None, required: bool = True
    ) -> dict[str, Any]:
        value = t.get(name)
        if value is None:
            if required:
                self.problem(key or name, "missing table")
            return {}
        if not isinstance(value, dict):
            self.problem(key or name, f"expected a table, got {value!r}")
            return {}
        return value

    def array(self, t: dict[str, Any], name: str, key: str | None = None) -> list[Any]:
        """The list at ``t[name]``, [] if missing; ``key`` defaults to ``actions.<name>``."""
        key = key or f"actions.{name}"
        value = t.get(name)
        if value is None:
            return []  # a missing required key is reported by the caller
        if not isinstance(value, list):
            self.problem(key, f"expected a list, got {value!r}")
            return []
        return value

    def number(self, t: dict[str, Any], name: str, key: str) -> float | None:
        value = t.get(name)
        if value is None:
            self.problem(key, "missing")
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.problem(key, f"{value!r}: expected a number")
            return None
        return value

    def share(self, t: dict[str, Any], name: str, key: str) -> float:
        value = self.number(t, name, key)
        if value is not None and not 0 <= value <= 1:
            self.problem(key, f"{value:g}: expected a margin share between 0 and 1 (0.3 is 30%)")
        return float(value or 0.0)

    def coupon(self, value: Any, key: str) -> float | None:
        """A coupon in percent (10 is 10%), as a fraction."""
        percent = self.number({"v": value}, "v", key)
        if percent is None:
            return None
        if percent >= 100:
            self.problem(key, f"{percent:g}% is over 100%; expected a percentage of the cart below 100")
        elif percent <= 0:
            self.problem(
                key, f"{percent:g}%: expected a positive percentage (leave 0 out: that is a reminder)"
            )
        elif percent < 1:
            self.problem(key, f"{percent:g}%: coupons are in percent (10 is 10%), not fractions")
        else:
            return round(percent / 100, 6)
        return None

    def channel(self, value: Any, key: str, costs: Mapping[Channel, float]) -> Channel | None:
        if value not in CHANNELS:
            self.problem(key, f"unknown channel {value!r}; expected {_choices(CHANNELS)}")
            return None
        if value not in costs:
            if not self.lenient:
                self.problem(key, f"channel {value!r} has no [channels.{value}] cost")
            return None
        return cast(Channel, value)

    def action_name(self, value: Any, key: str, costs: Mapping[Channel, float]) -> Action | None:
        try:
            action = Action.parse(str(value))
        except ValueError as error:
            self.problem(key, str(error))
            return None
        if action.channel is not None and action.channel not in costs:
            if self.lenient:
                return None
            self.problem(
                key, f"{action.name}: channel {action.channel!r} has no [channels.{action.channel}] cost"
            )
            return None
        return action

    def clock(self, t: dict[str, Any], name: str, key: str) -> int | None:
        value = t.get(name)
        match = _CLOCK.match(value) if isinstance(value, str) else None
        if not match:
            self.problem(key, f'{value!r}: expected a local time such as "21:00"')
            return None
        return int(match[1]) * 60 + int(match[2])


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _toml(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else repr(value)


def _choices(names: tuple[str, ...]) -> str:
    return ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]
