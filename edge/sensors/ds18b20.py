"""DS18B20 1-wire temperature probes through the kernel's w1 sysfs interface.

``<devices_dir>/28-*/w1_slave`` holds two lines: the CRC check (``... crc=xx YES``)
and the value (``... t=21437`` millidegrees). A ``NO`` CRC is retried; 85000
(the power-on value, seen when the probe lost power mid-conversion) is retried
and reported ``suspect`` if it persists. ``devices_dir`` is configurable so a
fake tree in a temp dir stands in for /sys/bus/w1/devices. The files are listed and read
through the hardware (edge/hardware.py): with backend "sim" the default directory holds the
simulator's stand-in probe (simulator.hardware.w1: the w1_slave text, CRC failures included).
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from edge.errors import SensorError
from edge.hardware import Hardware
from edge.sensors.base import (
    QUALITY_OK,
    QUALITY_RETRIED,
    QUALITY_SUSPECT,
    Opt,
    Sample,
    SensorBase,
    SensorContext,
    metric_name,
    non_negative,
    positive,
)

DEFAULT_DIR = "/sys/bus/w1/devices"
POWER_ON_VALUE = 85.0


class DS18B20Sensor(SensorBase):
    OPTIONS: ClassVar[dict[str, Opt]] = {
        "device": Opt((str,), "", doc="probe id like 28-0316a2794d2f; empty = the only probe present"),
        "devices_dir": Opt((str,), DEFAULT_DIR, doc="w1 sysfs devices directory"),
        "metric": Opt((str,), "temperature", metric_name, "metric name"),
        "attempts": Opt((int,), 3, positive, "reads tried per reading"),
        "spacing": Opt((int, float), 0.2, non_negative, "seconds between retries"),
    }
    hardware: Hardware

    def __init__(self, name: str, options: dict[str, Any], ctx: SensorContext, hardware: Hardware) -> None:
        super().__init__(name, options, ctx, hardware)

    def _path(self) -> str:
        base = self.options["devices_dir"]
        device = self.options["device"]
        if device:
            return os.path.join(base, device, "w1_slave")
        found = self.hardware.w1_probes(base)
        if len(found) == 1:
            return found[0]
        if not found:
            raise SensorError(
                f"DS18B20 '{self.name}': no probe under {base}/28-*; check that 1-wire is enabled "
                "(dtoverlay=w1-gpio in /boot/firmware/config.txt, GPIO4 by default), the 4.7 kOhm pull-up "
                "from data to 3.3 V, and the probe's wiring")
        raise SensorError(f"DS18B20 '{self.name}': {len(found)} probes found; set `device` to one of "
                          + ", ".join(os.path.basename(os.path.dirname(p)) for p in found))

    def read(self) -> Sample:
        attempts: int = self.options["attempts"]
        problem = ""
        suspect_value: float | None = None
        for attempt in range(attempts):
            if attempt:
                self.ctx.sleep(float(self.options["spacing"]))
            path = self._path()
            try:
                lines = self.hardware.w1_read(path).splitlines()
            except OSError as err:
                problem = f"cannot read {self.hardware.describe(path)} ({err.strerror or err})"
                continue
            if len(lines) < 2 or not lines[0].strip().endswith("YES"):
                problem = "CRC check failed (NO)"
                continue
            _, sep, raw = lines[1].rpartition("t=")
            try:
                value = int(raw.strip()) / 1000.0
            except ValueError:
                problem = f"no temperature in {self.hardware.describe(path)}"
                continue
            if not sep:
                problem = f"no temperature in {self.hardware.describe(path)}"
                continue
            if value == POWER_ON_VALUE:
                suspect_value = value
                problem = "power-on value 85 C"
                continue
            quality = QUALITY_RETRIED if attempt else QUALITY_OK
            return Sample({self.options["metric"]: round(value, 3)}, quality)
        if suspect_value is not None:
            return Sample({self.options["metric"]: suspect_value}, QUALITY_SUSPECT)
        raise SensorError(f"DS18B20 '{self.name}': {problem} after {attempts} reads; check the probe's power "
                          "(3.3 V, not parasitic), the 4.7 kOhm pull-up and cable length")
