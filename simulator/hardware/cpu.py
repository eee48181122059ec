"""Fake CPU temperature with the surface of gpiozero's ``CPUTemperature`` (Pi agent, backend "sim").

``.temperature`` is the SoC temperature in °C with the kernel thermal zone's millidegree
resolution: ``mean`` plus a slow load cycle (``period_s``), noise and drift. ``failure_rate``
of reads raise ``OSError(EIO)``, as a thermal-zone read can. ``close()`` as gpiozero's.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable

from simulator.sensors.base import Seed, make_rng
from simulator.sensors.temperature import DailyTemperature


class CPUTemperatureStandIn:
    def __init__(self, mean: float = 48.0, seed: Seed = 0, failure_rate: float = 0.0, period_s: float = 600.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.rng = make_rng(seed)
        self.model = DailyTemperature(self.rng, mean=mean, amplitude=3.0, phase_s=0.0, period_s=period_s,
                                      noise=0.3, metric="cpu_temperature")
        self.failure_rate = failure_rate
        self.clock = clock
        self.closed = False

    @property
    def temperature(self) -> float:
        if self.closed:
            raise OSError(errno.EBADF, "device closed")
        if self.failure_rate and self.rng.random() < self.failure_rate:
            raise OSError(errno.EIO, "Input/output error")
        return round(self.model.sample(self.clock())["cpu_temperature"], 3)

    def close(self) -> None:
        self.closed = True
