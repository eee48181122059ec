"""Dropouts: reads fail (no answer on the bus), alone or in bursts."""

from __future__ import annotations

from simulator.errors import SensorReadError
from simulator.sensors.base import Seed, SensorModel, Wrapper, make_rng


class Dropout(Wrapper):
    """Each read fails with ``probability``; a failure starts a burst of ``burst`` failed reads.

    A failed read raises ``SensorReadError`` and does not call the inner model.
    ``failures`` counts failed reads.
    """

    def __init__(self, inner: SensorModel, seed: Seed = 0, probability: float = 0.01, burst: int = 1) -> None:
        super().__init__(inner)
        self.rng = make_rng(seed)
        self.probability = probability
        self.burst = max(1, burst)
        self.failures = 0
        self._left = 0

    def sample(self, t_s: float) -> dict[str, float]:
        if self._left == 0 and self.probability > 0 and self.rng.random() < self.probability:
            self._left = self.burst
        if self._left > 0:
            self._left -= 1
            self.failures += 1
            raise SensorReadError("simulated sensor dropout: no answer from the sensor; check wiring/power")
        return self.inner.sample(t_s)
