"""Daily temperature curve: a sinusoid over the day plus Gaussian noise and a slow random-walk drift."""

from __future__ import annotations

import math

from simulator.sensors.base import Seed, SensorModel, make_rng

DAY_S = 86400.0


class DailyTemperature(SensorModel):
    """``mean + amplitude * sin(2π (t - phase) / period) + drift + noise`` in °C.

    ``phase_s`` is the time of day (s) at which the curve crosses the mean going up;
    the default (9 h) puts the maximum at 15:00. ``drift_per_sqrt_h`` is the standard
    deviation of the drift's random walk per sqrt(hour); the drift is clamped to
    ``±max_drift``. ``noise`` is the standard deviation of white measurement noise.
    """

    metrics = ("temperature",)

    def __init__(
        self,
        seed: Seed = 0,
        mean: float = 21.0,
        amplitude: float = 4.0,
        phase_s: float = 9 * 3600.0,
        period_s: float = DAY_S,
        noise: float = 0.1,
        drift_per_sqrt_h: float = 0.05,
        max_drift: float = 2.0,
        metric: str = "temperature",
    ) -> None:
        self.rng = make_rng(seed)
        self.mean = mean
        self.amplitude = amplitude
        self.phase_s = phase_s
        self.period_s = period_s
        self.noise = noise
        self.drift_per_sqrt_h = drift_per_sqrt_h
        self.max_drift = max_drift
        self.metric = metric
        self.metrics = (metric,)
        self.drift = 0.0
        self._last_t: float | None = None

    def curve(self, t_s: float) -> float:
        """The noiseless, drift-free value at ``t_s``."""
        angle = 2.0 * math.pi * ((t_s - self.phase_s) % self.period_s) / self.period_s
        return self.mean + self.amplitude * math.sin(angle)

    def _advance_drift(self, t_s: float) -> None:
        if self._last_t is not None and t_s > self._last_t and self.drift_per_sqrt_h > 0:
            step = self.drift_per_sqrt_h * math.sqrt((t_s - self._last_t) / 3600.0)
            self.drift = max(-self.max_drift, min(self.max_drift, self.drift + self.rng.gauss(0.0, step)))
        self._last_t = t_s

    def sample(self, t_s: float) -> dict[str, float]:
        self._advance_drift(t_s)
        value = self.curve(t_s) + self.drift + (self.rng.gauss(0.0, self.noise) if self.noise > 0 else 0.0)
        return {self.metric: round(value, 2)}
