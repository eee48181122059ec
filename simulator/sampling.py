"""A simulated device's sensor sampling, its boot and its own clock (skewed and drifting by fault plan).

Readings are sampled on schedule into the outbox; a sensor read that fails is retried once
(quality ``retried``) and otherwise counted in ``sensor_errors``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from protocol import wire
from simulator.device_base import DeviceBase
from simulator.errors import SensorReadError

FIRMWARE = "sim-0.1.0"


class Sampling(DeviceBase):
    """Sampling and the device clock of a VirtualDevice."""

    def _new_boot(self, now: float) -> None:
        self._boot_at = now
        self.boot = f"{self.rng.getrandbits(32):08x}"
        self.session.boot = self.boot

    def _true_time(self, now: float) -> float:
        """Wall-clock Unix time corresponding to loop time ``now``."""
        return time.time() - (asyncio.get_running_loop().time() - now)

    def device_time(self, now: float) -> float:
        """The device's own clock (Unix s) at loop time ``now``: true time + skew/drift + sync."""
        offset = self.faults.clock_offset_s(now - self._loop_t0) if self.faults is not None else 0.0
        return self._true_time(now) + offset + self._clock_extra_s

    def _generate_due(self, now: float, gen_until: float) -> None:
        """Take every sample that is due; the outbox drops its oldest reading when full."""
        if not self._generating:
            return
        interval = 1.0 / self.rate
        taken = 0
        while self._next_sample_at <= now and self._next_sample_at < gen_until:
            at = self._next_sample_at
            self._next_sample_at += interval
            self._sample(at)
            taken += 1
            if taken >= 1000:  # the loop stalled for long: skip ahead rather than burst
                self._next_sample_at = now + interval
                break
        if now >= gen_until:
            self._generating = False

    def _sample(self, at: float) -> None:
        t_device = self.device_time(at)
        quality = None
        try:
            metrics = self.sensor.sample(t_device)
        except SensorReadError:
            self.counters.sensor_errors += 1
            try:
                metrics = self.sensor.sample(t_device)
                quality = wire.QUALITY_RETRIED
            except SensorReadError:
                self.counters.sensor_errors += 1
                return
        self.outbox.add(metrics, max(0, int(t_device * 1000)), self._uptime_ms(at), quality)
        self.counters.generated += 1
        self.counters.dropped = self.outbox.dropped

    def _status_fields(self, now: float) -> dict[str, Any]:
        return {
            "dropped": self.outbox.dropped, "buffered": self.outbox.count, "fw": FIRMWARE,
            "rssi": -45 - self.rng.randrange(40), "up": self._uptime_ms(now),
            "sensor_errors": self.counters.sensor_errors,
            "outputs": dict(self.outputs),  # as the Pi agent reports them: the dashboard offers these to set_output
        }
