"""Rare spikes: now and then one reading jumps by a large amount (EMI, a loose wire)."""

from __future__ import annotations

from protocol.wire import metric_range
from simulator.sensors.base import Seed, SensorModel, Wrapper, make_rng


class Spikes(Wrapper):
    """With ``probability`` per sample, add ``±magnitude`` to every metric of that sample.

    ``clamp`` keeps values inside the protocol's plausible range (``wire.metric_range``)
    so a spike is a suspicious value, not a refused frame; ``clamp=False`` lets it out.
    ``spikes`` counts the samples altered.
    """

    def __init__(
        self, inner: SensorModel, seed: Seed = 0, probability: float = 0.001, magnitude: float = 25.0,
        clamp: bool = True,
    ) -> None:
        super().__init__(inner)
        self.rng = make_rng(seed)
        self.probability = probability
        self.magnitude = magnitude
        self.clamp = clamp
        self.spikes = 0

    def sample(self, t_s: float) -> dict[str, float]:
        values = self.inner.sample(t_s)
        if self.probability <= 0 or self.rng.random() >= self.probability:
            return values
        self.spikes += 1
        sign = 1.0 if self.rng.random() < 0.5 else -1.0
        out: dict[str, float] = {}
        for name, value in values.items():
            spiked = value + sign * self.magnitude
            if self.clamp:
                low, high = metric_range(name)
                spiked = max(low, min(high, spiked))
            out[name] = spiked
        return out
