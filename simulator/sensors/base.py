"""The sensor model interface.

A ``SensorModel`` turns a time in seconds into one reading: ``sample(t_s)`` returns
``{metric: value}`` or raises ``SensorReadError`` (the read failed; nothing was measured).
Models are seeded: the same seed and the same sequence of ``t_s`` give the same values.
Time is whatever clock the caller uses (Unix seconds for the daily curve).
"""

from __future__ import annotations

import abc
import random

# A seed or an already-seeded generator (devices share one generator across their models
# to keep per-device memory small: a random.Random holds about 2.5 KiB of state).
Seed = int | random.Random


def make_rng(seed: Seed) -> random.Random:
    """The generator for ``seed``: a new ``random.Random(seed)`` or the one passed in."""
    if isinstance(seed, random.Random):
        return seed
    return random.Random(seed)


class SensorModel(abc.ABC):
    """One simulated sensor. ``metrics`` names what ``sample`` returns."""

    metrics: tuple[str, ...] = ()

    @abc.abstractmethod
    def sample(self, t_s: float) -> dict[str, float]:
        """Read at time ``t_s`` (s). Raises SensorReadError when the read fails."""


class Wrapper(SensorModel):
    """A model that alters another one (spikes, stuck values, dropouts)."""

    def __init__(self, inner: SensorModel) -> None:
        self.inner = inner
        self.metrics = inner.metrics


class Combined(SensorModel):
    """Several models read together; their metrics are merged (later models win on a clash)."""

    def __init__(self, *models: SensorModel) -> None:
        self.models = models
        names: list[str] = []
        for model in models:
            names.extend(m for m in model.metrics if m not in names)
        self.metrics = tuple(names)

    def sample(self, t_s: float) -> dict[str, float]:
        out: dict[str, float] = {}
        for model in self.models:
            out.update(model.sample(t_s))
        return out
