"""This gateway's metric table: ``protocol.wire.METRICS`` plus the operator's ``[[metrics]]``.

A custom sensor's metric becomes first-class with one table in the configuration:

    [[gateway.metrics]]
    name = "leaf_wetness"        # a metric name (1-32 chars of a-z 0-9 _, starting with a letter)
    unit = "%"                   # "" (default): none
    low = 0.0                    # the plausible range: readings outside it are refused (bad_value)
    high = 100.0
    device_class = "moisture"    # Home Assistant sensor device class (optional)
    state_class = "measurement"  # Home Assistant state class (default measurement)
    label = "Leaf wetness"       # display name (default: the name, capitalised)

The merged table has the rows of ``wire.METRICS`` (same shape), so the gateway hands it to the
protocol as is (``GatewaySession(table=...)``, whose ranges validate readings); the dashboard's
``/v1/meta``, the history API's units and the MQTT bridge's discovery read it too. A built-in
metric cannot be redefined (its unit and meaning are shared by every device and dashboard):
declare a new name instead. protocol/ never reads the configuration.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gateway.errors import ConfigError
from protocol import wire

Row = tuple[str, float, float, str | None, str]
STATE_CLASSES = ("measurement", "measurement_angle", "total", "total_increasing")  # Home Assistant's
DEFAULT_STATE_CLASS = "measurement"
MAX_METRICS = 64
MAX_UNIT = 16
MAX_LABEL = 64
_DEVICE_CLASS = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_KEYS = ("name", "unit", "low", "high", "device_class", "state_class", "label")


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One ``[[metrics]]`` table, checked."""

    name: str
    unit: str = ""
    low: float = wire.GENERIC_RANGE[0]
    high: float = wire.GENERIC_RANGE[1]
    device_class: str | None = None
    state_class: str = DEFAULT_STATE_CLASS
    label: str = ""

    @property
    def row(self) -> Row:
        return (self.unit, self.low, self.high, self.device_class, self.label or default_label(self.name))


def default_label(name: str) -> str:
    return name.replace("_", " ").capitalize()


def _number(where: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{where}.{key}: must be a finite number, not {value!r:.40}")
    return float(value)


def _text(where: str, key: str, value: Any, limit: int) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise ConfigError(f"{where}.{key}: must be a string of at most {limit} characters, not {value!r:.40}")
    return value


def parse_metric(item: Any, where: str) -> MetricSpec:
    """One ``[[metrics]]`` table; ConfigError naming ``where`` and the key."""
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: must be a table with name, unit, low, high, device_class, state_class, label")
    unknown = sorted(set(item) - set(_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(_KEYS)})")
    name = item.get("name")
    if not wire.valid_metric_name(name):
        raise ConfigError(f"{where}.name: must be 1-32 characters of a-z 0-9 _ starting with a letter, "
                          f"not {name!r:.40}")
    if name in wire.METRICS:
        raise ConfigError(f"{where}.name: {name!r} is built in (protocol/wire.py METRICS); declare a metric "
                          f"of another name, e.g. 'my_{name}'")
    low = _number(where, "low", item.get("low", wire.GENERIC_RANGE[0]))
    high = _number(where, "high", item.get("high", wire.GENERIC_RANGE[1]))
    if not low < high:
        raise ConfigError(f"{where}: low ({low:g}) must be below high ({high:g})")
    device_class = item.get("device_class")
    if device_class is not None and (not isinstance(device_class, str) or not _DEVICE_CLASS.match(device_class)):
        raise ConfigError(f"{where}.device_class: must be a Home Assistant sensor device class such as "
                          f"'temperature' or 'moisture' (a-z 0-9 _), not {device_class!r:.40}")
    state_class = item.get("state_class", DEFAULT_STATE_CLASS)
    if state_class not in STATE_CLASSES:
        raise ConfigError(f"{where}.state_class: must be one of {', '.join(STATE_CLASSES)}, not {state_class!r:.40}")
    return MetricSpec(str(name), _text(where, "unit", item.get("unit", ""), MAX_UNIT), low, high, device_class,
                      state_class, _text(where, "label", item.get("label", ""), MAX_LABEL))


def parse_metrics(value: Any) -> list[MetricSpec]:
    """The ``[[metrics]]`` list of the configuration (file only), checked."""
    if not isinstance(value, list):
        raise ConfigError("metrics: must be a list of tables ([[metrics]] in the config file)")
    if len(value) > MAX_METRICS:
        raise ConfigError(f"metrics: at most {MAX_METRICS} extra metrics")
    specs: list[MetricSpec] = []
    for index, item in enumerate(value):
        spec = parse_metric(item, f"metrics[{index}]")
        if any(s.name == spec.name for s in specs):
            raise ConfigError(f"metrics[{index}].name: {spec.name!r} is declared twice")
        specs.append(spec)
    return specs


class MetricTable:
    """The merged table: ``rows`` has the shape of ``wire.METRICS``; the state class is kept beside it."""

    def __init__(self, extra: Iterable[MetricSpec] = ()) -> None:
        self.rows: dict[str, Row] = dict(wire.METRICS)
        self.state_classes: dict[str, str] = {}
        for spec in extra:
            self.rows[spec.name] = spec.row
            self.state_classes[spec.name] = spec.state_class

    def row(self, name: str) -> Row | None:
        return self.rows.get(name)

    def unit(self, name: str) -> str | None:
        """The metric's unit; None when it has none (or is not in the table)."""
        row = self.rows.get(name)
        return row[0] if row is not None and row[0] else None

    def state_class(self, name: str) -> str:
        return self.state_classes.get(name, DEFAULT_STATE_CLASS)


BUILT_IN = MetricTable()  # wire.METRICS alone: for components built without a configuration (tests, tools)
