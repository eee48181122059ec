"""Relative humidity anti-correlated with a temperature curve (warm afternoons are dry)."""

from __future__ import annotations

from simulator.sensors.base import Seed, SensorModel, make_rng
from simulator.sensors.temperature import DailyTemperature


class Humidity(SensorModel):
    """``mean + coupling * (T(t) - T.mean) + noise`` in %RH, clamped to 0..100.

    ``T(t)`` is the noiseless curve of ``temperature``; ``coupling`` is %RH per °C and
    negative (anti-correlated). Pair it with the same ``DailyTemperature`` instance in a
    ``Combined`` model to read both metrics together (see ``climate`` in the registry).
    """

    metrics = ("humidity",)

    def __init__(
        self,
        seed: Seed = 0,
        temperature: DailyTemperature | None = None,
        mean: float = 50.0,
        coupling: float = -2.5,
        noise: float = 0.5,
    ) -> None:
        self.rng = make_rng(seed)
        self.temperature = temperature if temperature is not None else DailyTemperature(self.rng, noise=0.0)
        self.mean = mean
        self.coupling = coupling
        self.noise = noise

    def sample(self, t_s: float) -> dict[str, float]:
        temp = self.temperature.curve(t_s) + self.temperature.drift
        value = self.mean + self.coupling * (temp - self.temperature.mean)
        if self.noise > 0:
            value += self.rng.gauss(0.0, self.noise)
        return {"humidity": round(max(0.0, min(100.0, value)), 2)}
