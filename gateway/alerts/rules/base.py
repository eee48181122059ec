"""What every alert rule type shares: parameters and their checking, verdicts, per-series tracks.

A rule type is one module in this package plus one row in ``RULE_TYPES`` (rules/__init__.py).
It subclasses ``Rule``: declares its parameters (``PARAMS``), its track class (the learned
state of one device's series, ``__slots__`` only: the hot path allocates nothing), and
``update``, which looks at one reading and answers a verdict:

- ``FIRE``: the condition holds (the engine raises once it held for ``for_s``);
- ``CALM``: the condition does not hold (an open alert clears);
- ``HOLD``: in between (hysteresis band, warming up): an open alert stays, none is raised;
- ``SAME``: this reading changes nothing (e.g. a trend refits only when a time slot closes).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable
from typing import Any, ClassVar

from gateway.errors import ConfigError
from protocol import wire

FIRE, CALM, HOLD, SAME = 1, 0, 2, 3

SEVERITIES = ("critical", "major", "minor", "warning")  # most severe first
ANY_METRIC = "*"  # the metric of a device-level rule (no_data, health without a metric)
MAX_ID = 64
MAX_DEVICE_PATTERNS = 100
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.:")


class Device:
    """What the engine knows about one device, set once per reading and shared by its rules:
    ``arrival`` (gateway ms) and ``quality`` of the current reading, and whether it is online."""

    __slots__ = ("arrival", "online", "quality")

    def __init__(self) -> None:
        self.arrival = -1
        self.online = True
        self.quality: str | None = None


class Track:
    """One (rule, device) series: the engine's part. Rule types subclass it with their state."""

    __slots__ = ("alert", "device_id", "latched", "since")

    def __init__(self, device_id: str) -> None:
        self.device_id = device_id
        self.since = -1  # reading time the condition started to hold (the `for` clock), -1 if not
        self.alert: Any = None  # the open AlertRow of this series, if any
        self.latched = False  # cleared by hand: no new alert until the condition has ended once


class Param:
    """One parameter of a rule type: its kind, default and bounds (the docs table comes from here)."""

    __slots__ = ("choices", "default", "doc", "high", "kind", "low", "name", "positive", "required")

    def __init__(self, name: str, kind: str, default: Any = None, doc: str = "", *, required: bool = False,
                 low: float | None = None, high: float | None = None, positive: bool = False,
                 choices: tuple[str, ...] = ()) -> None:
        self.name = name
        self.kind = kind  # "number", "int", "bool", "choice", "names"
        self.default = default
        self.doc = doc
        self.required = required
        self.low = low
        self.high = high
        self.positive = positive
        self.choices = choices

    def check(self, value: Any, where: str) -> Any:
        """The value in canonical form, or ConfigError naming ``where`` and the parameter."""
        key = f"{where}: {self.name}"
        if self.kind in ("number", "int"):
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ConfigError(f"{key}: must be a number, not {_show(value)}")
            if self.kind == "int" and value != int(value):
                raise ConfigError(f"{key}: must be a whole number, not {_show(value)}")
            number = int(value) if self.kind == "int" else float(value)
            if self.positive and number <= 0:
                raise ConfigError(f"{key}: must be greater than 0, not {_show(value)}")
            if self.low is not None and number < self.low:
                raise ConfigError(f"{key}: must be at least {self.low:g}, not {_show(value)}")
            if self.high is not None and number > self.high:
                raise ConfigError(f"{key}: must be at most {self.high:g}, not {_show(value)}")
            return number
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ConfigError(f"{key}: must be true or false, not {_show(value)}")
            return value
        if self.kind == "choice":
            if value not in self.choices:
                raise ConfigError(f"{key}: must be one of {', '.join(self.choices)}, not {_show(value)}")
            return value
        # "names": a list of short strings, each one of ``choices`` when there are choices
        if not isinstance(value, list) or not all(isinstance(v, str) and 0 < len(v) <= MAX_ID for v in value):
            raise ConfigError(f"{key}: must be a list of names, not {_show(value)}")
        for item in value:
            if self.choices and item not in self.choices:
                raise ConfigError(f"{key}: {_show(item)} is not one of {', '.join(self.choices)}")
        return list(value)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


COMMON = (
    Param("id", "id", None, "the rule's name (letters, digits, _ - . :); default: metric_type[_threshold]"),
    Param("type", "type", None, "the rule type; may be left out when `above` or `below` is given"),
    Param("metric", "metric", None, "the metric the rule watches (protocol.wire METRICS, or any valid name)"),
    Param("severity", "choice", None, "critical, major, minor or warning (default: the type's)", choices=SEVERITIES),
    Param("devices", "names", [], "glob patterns of the device ids the rule applies to (default: all)"),
)
FOR = Param("for_s", "number", 0.0, "seconds the condition must hold before the alert is raised", low=0,
            high=7 * 86400)


class Rule:
    """A configured rule of one type. ``spec`` is its canonical table (every parameter set)."""

    kind: ClassVar[str]
    PARAMS: ClassVar[tuple[Param, ...]] = ()
    DEFAULT_SEVERITY: ClassVar[str] = "major"
    METRIC: ClassVar[str] = "required"  # "required", or "optional" (absent: a device-level rule)
    SUSPENDS: ClassVar[bool] = True  # a value alert: suspended while its device is offline
    TIMED: ClassVar[bool] = False  # also judged by the engine's timer (no_data)
    HAS_FOR: ClassVar[bool] = True
    track_class: ClassVar[type[Track]] = Track

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.id: str = spec["id"]
        self.metric: str = spec.get("metric") or ANY_METRIC
        self.severity: str = spec["severity"]
        self.for_ms = int(spec.get("for_s", 0.0) * 1000)
        self.patterns: tuple[str, ...] = tuple(spec["devices"])
        self.tracks: dict[str, Track | None] = {}  # device id -> track (None: the rule does not apply)
        self.unit = unit_of(self.metric)
        self.hour_of: Callable[[int], int] = lambda time_ms: time_ms // 3_600_000 % 24  # the engine binds local time

    @classmethod
    def complete(cls, spec: dict[str, Any], where: str) -> None:
        """Fill the defaults that depend on other parameters and check them together (ConfigError)."""

    def applies(self, device_id: str) -> bool:
        return not self.patterns or any(fnmatch.fnmatchcase(device_id, p) for p in self.patterns)

    def new_track(self, device_id: str) -> Track:
        return self.track_class(device_id)

    # -- what a rule type provides
    def update(self, track: Any, value: float, time_ms: int, device: Device) -> int:
        """Look at one reading of the metric (``value``; NaN for a device-level rule); return a verdict."""
        raise NotImplementedError

    def silence(self, track: Any, now_ms: int, started_ms: int) -> int:
        """A timed rule's check without a reading (``TIMED``): FIRE or SAME."""
        return SAME

    def text(self, track: Any, value: float | None, time_ms: int) -> str:
        """The alert's text for its current state, in words with units."""
        raise NotImplementedError

    def reset(self, track: Any) -> None:
        """The device went offline: forget short-term state (windows, runs); keep what was learned."""

    def forget(self, track: Any) -> None:
        """The alert was cleared by hand: a learning rule starts learning anew."""

    def save(self, track: Any) -> Any:
        """Learned state worth keeping over a restart (JSON-able), or None."""
        return None

    def load(self, track: Any, data: Any) -> None:
        """Restore what ``save`` returned (checked: a malformed entry raises ValueError/TypeError)."""

    def clear_reason(self, track: Any) -> str:
        return "condition ended"

    # -- helpers for the texts
    def fmt(self, value: float | None) -> str:
        return fmt_value(value, self.unit)

    def fmt_against(self, value: float | None, limit: float) -> tuple[str, str]:
        """``value`` and the ``limit`` it is compared with, with their unit and enough decimals to
        differ when they do (fmt_apart)."""
        if value is None or value != value:
            return "-", self.fmt(limit)
        shown, bound = fmt_apart(value, limit)
        return with_unit(shown, self.unit), with_unit(bound, self.unit)

    @property
    def subject(self) -> str:
        return "device" if self.metric == ANY_METRIC else self.metric


def unit_of(metric: str) -> str:
    row = wire.METRICS.get(metric)
    return "" if row is None or row[0] == "fraction" else row[0]


def fmt_number(value: float) -> str:
    size = abs(value)
    if size >= 1000:
        return f"{value:.0f}"
    if size >= 1 or value == 0:
        return f"{value:.1f}"
    return f"{value:.3g}"


def fmt_apart(value: float, other: float) -> tuple[str, str]:
    """``value`` and ``other`` as fmt_number writes them, but with as many decimals (the same for
    both) as it takes to tell two different numbers apart: 30.04 against a threshold of 30 is
    "30.04" and "30.00", never "30.0" above "30.0"."""
    first, second = fmt_number(value), fmt_number(other)
    if first != second or value == other or not math.isfinite(value) or not math.isfinite(other):
        return first, second
    for decimals in range(1, 16):
        first, second = f"{value:.{decimals}f}", f"{other:.{decimals}f}"
        if first != second:
            return first, second
    return repr(value), repr(other)


def with_unit(text: str, unit: str) -> str:
    if not unit:
        return text
    return text + unit if unit == "%" else f"{text} {unit}"


def fmt_value(value: float | None, unit: str) -> str:
    """A value with its unit: "31.2 °C", "45.0%", "0.05"."""
    if value is None or value != value:
        return "-"
    return with_unit(fmt_number(value), unit)


def fmt_duration(ms: float) -> str:
    """ "45 s", "18 min", "2.5 h", "3 days"."""
    seconds = ms / 1000
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        hours = seconds / 3600
        return f"{hours:.1f} h" if hours < 10 else f"{hours:.0f} h"
    return f"{seconds / 86400:.0f} days"


def default_min_std(metric: str) -> float:
    """The anomaly rule's floor for the standard deviation: 1/1000 of the metric's plausible range."""
    row = wire.METRICS.get(metric)
    return 0.01 if row is None else (row[2] - row[1]) / 1000


def check_id(value: Any, where: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID or not set(value) <= _ID_CHARS:
        raise ConfigError(f"{where}: id: must be 1-{MAX_ID} letters, digits, _ - . or :, not {_show(value)}")
    return value


def check_metric(value: Any, where: str) -> str:
    if not isinstance(value, str) or not wire.valid_metric_name(value):
        raise ConfigError(f"{where}: metric: must be a metric name such as \"temperature\" "
                          f"(lowercase letters, digits, _), not {_show(value)}")
    return value
