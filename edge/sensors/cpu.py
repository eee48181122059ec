"""CPU temperature through gpiozero's CPUTemperature (reads a thermal-zone sysfs file).

``sensor_file`` is configurable (e.g. a file a test writes, millidegrees). The hardware
(edge/hardware.py) hands the sensor its thermometer: gpiozero's, or with backend "sim" the
simulator's stand-in in place of the default file.
"""

from __future__ import annotations

from typing import Any, ClassVar

from edge.errors import SensorError
from edge.hardware import Hardware
from edge.sensors.base import Opt, Sample, SensorBase, SensorContext, metric_name

DEFAULT_FILE = "/sys/class/thermal/thermal_zone0/temp"


class CPUTemperatureSensor(SensorBase):
    OPTIONS: ClassVar[dict[str, Opt]] = {
        "sensor_file": Opt((str,), DEFAULT_FILE, doc="thermal zone file (millidegrees C)"),
        "metric": Opt((str,), "cpu_temperature", metric_name, "metric name"),
    }
    hardware: Hardware

    def __init__(self, name: str, options: dict[str, Any], ctx: SensorContext, hardware: Hardware) -> None:
        super().__init__(name, options, ctx, hardware)
        self.device: Any = None

    def read(self) -> Sample:
        path = self.options["sensor_file"]
        try:
            if self.device is None:
                self.device = self.hardware.cpu_temperature(self.name, path)
            value = float(self.device.temperature)
        except (OSError, ValueError) as err:
            raise SensorError(f"CPU temperature '{self.name}': cannot read {self.hardware.describe(path)} ({err}); "
                              "check sensor_file (on a Pi: /sys/class/thermal/thermal_zone0/temp)") from err
        return Sample({self.options["metric"]: round(value, 2)})

    def close(self) -> None:
        if self.device is not None:
            self.device.close()
            self.device = None
