"""Stuck sensor: from some moment on, the value freezes (a hung ADC, a frozen I2C bus)."""

from __future__ import annotations

from simulator.sensors.base import Seed, SensorModel, Wrapper, make_rng


class Stuck(Wrapper):
    """Return the inner model's values until the sensor sticks, then repeat the last value.

    The sensor sticks at ``start_s`` (in the caller's time) if given, otherwise with
    ``probability`` per sample. It stays stuck for ``duration_s`` (None: for ever), then
    reads normally again. ``stuck`` is True while frozen.
    """

    def __init__(
        self, inner: SensorModel, seed: Seed = 0, start_s: float | None = None,
        probability: float = 0.0, duration_s: float | None = None,
    ) -> None:
        super().__init__(inner)
        self.rng = make_rng(seed)
        self.start_s = start_s
        self.probability = probability
        self.duration_s = duration_s
        self.stuck = False
        self._since = 0.0
        self._value: dict[str, float] | None = None

    def sample(self, t_s: float) -> dict[str, float]:
        if self.stuck and self.duration_s is not None and t_s - self._since >= self.duration_s:
            self.stuck = False
            self.start_s = None
        if not self.stuck and self._value is not None:
            due = self.start_s is not None and t_s >= self.start_s
            if due or (self.probability > 0 and self.rng.random() < self.probability):
                self.stuck = True
                self._since = t_s
        if self.stuck and self._value is not None:
            return dict(self._value)
        self._value = self.inner.sample(t_s)
        return dict(self._value)
