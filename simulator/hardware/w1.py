"""Fake DS18B20 behind the Linux ``w1_therm`` driver: the text of ``/sys/bus/w1/devices/28-*/w1_slave``.

``W1ThermStandIn.w1_slave()`` returns the two lines the kernel produces: the 9 scratchpad bytes
with the driver's CRC verdict (``crc=57 YES``), then the same bytes and ``t=<millidegrees>``.
Values have the probe's 12-bit resolution (1/16 °C) and follow a slow temperature curve around
``mean``. Failure modes of real probes on long cables: a CRC mismatch (``NO``) for
``crc_failure_rate`` of reads, and the power-on value 85000 (a probe that lost power during a
conversion) for ``power_on_rate`` of reads.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from simulator.sensors.base import Seed, make_rng
from simulator.sensors.temperature import DailyTemperature

POWER_ON_MILLI = 85000


def crc8(data: bytes) -> int:
    """Dallas/Maxim 1-Wire CRC8 (polynomial x^8 + x^5 + x^4 + 1, reflected 0x8C)."""
    crc = 0
    for byte in data:
        for _ in range(8):
            mix = (crc ^ byte) & 1
            crc >>= 1
            if mix:
                crc ^= 0x8C
            byte >>= 1
    return crc


class W1ThermStandIn:
    def __init__(self, device_id: str = "28-00000000a1b2", mean: float = 18.0, seed: Seed = 0,
                 crc_failure_rate: float = 0.05, power_on_rate: float = 0.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.device_id = device_id
        self.rng = make_rng(seed)
        self.model = DailyTemperature(self.rng, mean=mean, amplitude=2.0, noise=0.05)
        self.crc_failure_rate = crc_failure_rate
        self.power_on_rate = power_on_rate
        self.clock = clock

    def w1_slave(self) -> str:
        if self.power_on_rate and self.rng.random() < self.power_on_rate:
            raw = POWER_ON_MILLI * 16 // 1000
        else:
            raw = round(self.model.sample(self.clock())["temperature"] * 16)
        raw &= 0xFFFF  # two's complement, as the probe sends it
        scratch = bytearray([raw & 0xFF, raw >> 8, 0x4B, 0x46, 0x7F, 0xFF, 0x0C, 0x10])
        scratch.append(crc8(bytes(scratch)))
        ok = not (self.crc_failure_rate and self.rng.random() < self.crc_failure_rate)
        if not ok:  # a bit flipped on the wire: the driver's CRC check fails
            scratch[0] ^= 0x04
        text = " ".join(f"{b:02x}" for b in scratch)
        verdict = "YES" if crc8(bytes(scratch[:8])) == scratch[8] else "NO"
        signed = raw - 0x10000 if raw & 0x8000 else raw
        return f"{text} : crc={scratch[8]:02x} {verdict}\n{text} t={signed * 1000 // 16}\n"
