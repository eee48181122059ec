"""The one small sensor interface, the option schema, and the sensor table.

A sensor is built from its config table (``[[sensors]]``) and read with ``read()``,
which blocks (DHT reads take seconds) and returns a Sample or raises SensorError.
Adding a sensor type = one module with a class like the ones below + one row in
``SENSOR_TYPES``. A sensor gets its pins, devices and files from ``hardware``, the backend
``agent.backend`` names (edge/hardware.py, like gpiozero's pin factories); it never tests
which backend that is.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from edge.errors import ConfigError
from protocol import wire

QUALITY_OK: str = wire.QUALITY_OK
QUALITY_RETRIED: str = wire.QUALITY_RETRIED
QUALITY_SUSPECT: str = wire.QUALITY_SUSPECT
QUALITY_STALE: str = wire.QUALITY_STALE

# type name -> "module:Class". The class implements Sensor and has OPTIONS.
SENSOR_TYPES: dict[str, str] = {
    "dht22": "edge.sensors.dht:DHT22Sensor",
    "dht11": "edge.sensors.dht:DHT11Sensor",
    "cpu_temperature": "edge.sensors.cpu:CPUTemperatureSensor",
    "mcp3008": "edge.sensors.mcp3008:MCP3008Sensor",
    "ds18b20": "edge.sensors.ds18b20:DS18B20Sensor",
}

# backend name (agent.backend) -> "module:Class", a subclass of edge.hardware.Hardware.
BACKENDS: dict[str, str] = {
    "hardware": "edge.hardware:Hardware",
    "sim": "edge.sim:SimHardware",
}


@dataclass(slots=True)
class Sample:
    """One successful read: metric name -> value, and its read quality (wire.QUALITIES)."""

    metrics: dict[str, float]
    quality: str = QUALITY_OK


@dataclass(slots=True)
class SensorContext:
    """What a sensor gets besides its options and its hardware: the sleep and clock it must use,
    and the backend (its name) build_sensor asks for the hardware."""

    backend: str = "hardware"
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic


class Sensor(Protocol):
    name: str

    def read(self) -> Sample:
        """Read once (with the sensor's own retries); raise SensorError if nothing usable."""
        ...

    def close(self) -> None:
        """Release pins and devices."""
        ...


_REQUIRED: Any = object()


@dataclass(frozen=True, slots=True)
class Opt:
    """One sensor option: its type(s), default (or required) and an optional check."""

    kinds: tuple[type, ...]
    default: Any = _REQUIRED
    check: Callable[[Any], str | None] | None = None
    doc: str = ""

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED


def positive(value: Any) -> str | None:
    return None if value > 0 else "must be > 0"


def non_negative(value: Any) -> str | None:
    return None if value >= 0 else "must be >= 0"


def fraction(value: Any) -> str | None:
    return None if 0.0 <= value <= 1.0 else "must be between 0 and 1"


def bcm_pin(value: Any) -> str | None:
    return None if 0 <= value <= 27 else "must be a BCM GPIO number 0-27"


def metric_name(value: Any) -> str | None:
    ok = (
        0 < len(value) <= wire.MAX_NAME
        and value[0].isascii() and value[0].islower()
        and all(ch in "abcdefghijklmnopqrstuvwxyz0123456789_" for ch in value)
    )
    return None if ok else "metric names are 1-32 chars of a-z 0-9 _ starting with a letter"


COMMON_OPTIONS: dict[str, Opt] = {
    "type": Opt((str,), doc="sensor type: " + ", ".join(SENSOR_TYPES)),
    "name": Opt((str,), "", doc="label in logs and `check` output (default: the type)"),
}


def _load(path: str) -> Any:
    module_name, _, attr = path.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def sensor_class(type_name: str) -> Any:
    """The class for a sensor type (imported on first use)."""
    return _load(SENSOR_TYPES[type_name])


def backend_class(name: str) -> Any:
    """The Hardware class of a backend (imported on first use)."""
    return _load(BACKENDS[name])


def backend_options(type_name: str) -> dict[str, Opt]:
    """Every backend's own options for a sensor type (the sim backend's ``sim_*``)."""
    options: dict[str, Opt] = {}
    for name in BACKENDS:
        options.update(backend_class(name).OPTIONS.get(type_name, {}))
    return options


@dataclass(slots=True)
class SensorSpec:
    """A validated ``[[sensors]]`` entry."""

    type: str
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    metrics: list[str] = field(default_factory=list)
    backend_options: dict[str, Any] = field(default_factory=dict)  # for the backend (edge/hardware.py)


def validate_sensor(index: int, raw: Any) -> SensorSpec:
    """Check one ``[[sensors]]`` table against its type's OPTIONS; ConfigError names the key."""
    where = f"sensors[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(where, "must be a table ([[sensors]])")
    kind = raw.get("type")
    if kind not in SENSOR_TYPES:
        raise ConfigError(f"{where}.type", f"{kind!r} is not a sensor type; use one of "
                                           + ", ".join(SENSOR_TYPES))
    cls = sensor_class(kind)
    extra = backend_options(kind)
    schema: dict[str, Opt] = {**COMMON_OPTIONS, **cls.OPTIONS, **extra}
    for key in raw:
        if key not in schema:
            raise ConfigError(f"{where}.{key}", f"unknown option for {kind}; known: "
                                                + ", ".join(sorted(schema)))
    options: dict[str, Any] = {}
    for key, opt in schema.items():
        if key in ("type", "name"):
            continue
        if key not in raw:
            if opt.required:
                raise ConfigError(f"{where}.{key}", f"required for {kind} ({opt.doc})")
            options[key] = opt.default
            continue
        value = raw[key]
        if (isinstance(value, bool) and bool not in opt.kinds) or not isinstance(value, opt.kinds):
            raise ConfigError.wrong_type(f"{where}.{key}", opt.kinds, value, opt.doc)
        if opt.check is not None:
            problem = opt.check(value)
            if problem:
                raise ConfigError(f"{where}.{key}", problem)
        options[key] = value
    name = raw.get("name") or kind
    if not isinstance(name, str):
        raise ConfigError(f"{where}.name", "must be a string")
    own = {key: value for key, value in options.items() if key not in extra}
    metrics: list[str] = cls.metric_names(own)
    return SensorSpec(kind, name, own, metrics, {key: options[key] for key in extra})


def build_sensor(spec: SensorSpec, ctx: SensorContext) -> Sensor:
    """Construct the sensor object for a validated spec, with its hardware from ctx's backend."""
    hardware = backend_class(ctx.backend)(spec.type, spec.backend_options)
    sensor: Sensor = sensor_class(spec.type)(spec.name, spec.options, ctx, hardware)
    return sensor


class SensorBase:
    """Shared helpers; subclasses set OPTIONS and implement read()."""

    OPTIONS: ClassVar[dict[str, Opt]] = {}

    def __init__(self, name: str, options: dict[str, Any], ctx: SensorContext, hardware: Any) -> None:
        self.name = name
        self.options = options
        self.ctx = ctx
        self.hardware = hardware  # an edge.hardware.Hardware: pins, devices, files

    @classmethod
    def metric_names(cls, options: dict[str, Any]) -> list[str]:
        """The metrics a reading carries; by default the one named by the ``metric`` option."""
        return [options["metric"]]

    def close(self) -> None:
        return None


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[mid]
    return (ordered[mid - 1] + ordered[mid]) / 2
