"""Simulated sensors behind one interface (``SensorModel.sample(t_s) -> {metric: value}``).

Adding a sensor is one module plus one row in ``SENSORS``; adding a failure behaviour is
one module plus one row in ``WRAPPERS``. ``make_sensor("climate", seed, dropout=0.05)``
builds a model; ``parse_sensor_spec("climate,spikes=0.01,dropout=0.05")`` reads the CLI form.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from simulator.errors import SimConfigError
from simulator.sensors.base import Combined, Seed, SensorModel, Wrapper, make_rng
from simulator.sensors.dropout import Dropout
from simulator.sensors.humidity import Humidity
from simulator.sensors.spikes import Spikes
from simulator.sensors.stuck import Stuck
from simulator.sensors.temperature import DailyTemperature


def _climate(seed: Seed, **params: Any) -> SensorModel:
    rng = make_rng(seed)
    temperature = DailyTemperature(rng, **params)
    return Combined(temperature, Humidity(rng, temperature=temperature))


# name -> factory(seed, **params)
SENSORS: dict[str, Callable[..., SensorModel]] = {
    "temperature": DailyTemperature,
    "humidity": Humidity,
    "climate": _climate,  # temperature + humidity anti-correlated, one generator
}

# name -> (wrapper class, the keyword its single CLI number sets)
WRAPPERS: dict[str, tuple[Callable[..., Wrapper], str]] = {
    "spikes": (Spikes, "probability"),
    "stuck": (Stuck, "probability"),
    "dropout": (Dropout, "probability"),
}


def make_sensor(name: str, seed: Seed = 0, wrappers: dict[str, float] | None = None,
                **params: Any) -> SensorModel:
    """Build sensor ``name`` from SENSORS, wrapped by WRAPPERS rows (name -> probability)."""
    factory = SENSORS.get(name)
    if factory is None:
        raise SimConfigError(f"unknown sensor {name!r}; choose one of {', '.join(sorted(SENSORS))}")
    rng = make_rng(seed)
    model = factory(rng, **params)
    for wname, value in (wrappers or {}).items():
        row = WRAPPERS.get(wname)
        if row is None:
            raise SimConfigError(f"unknown sensor fault {wname!r}; choose from {', '.join(sorted(WRAPPERS))}")
        cls, keyword = row
        model = cls(model, rng, **{keyword: value})
    return model


def parse_sensor_spec(spec: str) -> tuple[str, dict[str, float]]:
    """``"climate,spikes=0.01,dropout=0.05"`` -> ("climate", {"spikes": 0.01, "dropout": 0.05})."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not parts:
        raise SimConfigError("empty --sensor spec; example: climate,dropout=0.05")
    wrappers: dict[str, float] = {}
    for part in parts[1:]:
        key, _, raw = part.partition("=")
        try:
            wrappers[key] = float(raw)
        except ValueError:
            raise SimConfigError(f"sensor fault {part!r} needs a number, e.g. {key}=0.01") from None
    return parts[0], wrappers


__all__ = [
    "SENSORS", "WRAPPERS", "Combined", "DailyTemperature", "Dropout", "Humidity", "SensorModel",
    "Spikes", "Stuck", "Wrapper", "make_rng", "make_sensor", "parse_sensor_spec",
]
