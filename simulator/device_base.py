"""The state a VirtualDevice's parts share, its counters, and the clock helpers they all use.

``DeviceBase`` declares the attributes that simulator/sampling.py, simulator/sending.py and
simulator/device_commands.py read and change; ``VirtualDevice.__init__`` (simulator/device.py)
sets every one of them.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from protocol.device import DeviceSession
from protocol.outbox import MemoryOutbox
from simulator.faults import FaultInjector
from simulator.sensors import SensorModel


@dataclass(slots=True)
class DeviceCounters:
    """What one device did; simulator/device.py's docstring says what each field counts."""

    generated: int = 0
    sent_frames: int = 0
    sent_readings: int = 0
    acked: int = 0
    resent: int = 0
    rejected: int = 0
    dropped: int = 0
    reconnects: int = 0
    slowed: int = 0
    commands: int = 0
    malformed: int = 0
    sensor_errors: int = 0
    status_sent: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def count_error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class DeviceBase:
    """What the parts of a simulated device share (see the module docstring)."""

    # settings
    rate: float
    batch: int
    linger_s: float
    interval_s: float
    # parts
    rng: random.Random
    sensor: SensorModel
    faults: FaultInjector | None
    counters: DeviceCounters
    outbox: MemoryOutbox
    session: DeviceSession
    # state changed by commands
    thresholds: dict[str, tuple[float | None, float | None]]  # metric -> (low, high)
    outputs: dict[str, bool]
    reboot_pending: bool
    # sampling and the device's clock (loop time, s)
    boot: str
    _generating: bool
    _loop_t0: float
    _boot_at: float
    _next_sample_at: float
    _clock_extra_s: float  # correction from the welcome's time (clock_sync)
    # sending
    _max_sent_seq: int

    def _time(self) -> float:
        try:
            return asyncio.get_running_loop().time()
        except RuntimeError:  # called outside the device's loop (tests, CLIs)
            return time.monotonic()

    @staticmethod
    def _ms(now: float) -> int:
        return int(now * 1000)

    def _uptime_ms(self, now: float) -> int:
        return max(0, int((now - self._boot_at) * 1000))

    def _sync_counts(self) -> None:
        counters, outbox = self.counters, self.outbox
        counters.acked, counters.rejected, counters.dropped = outbox.acked, outbox.rejected, outbox.dropped

