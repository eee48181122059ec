"""CPU temperature through gpiozero's CPUTemperature (reads a thermal-zone sysfs file).

``sensor_file`` is configurable; the ``sim`` backend needs it pointed at a file a
test or the simulator writes (millidegrees, like the kernel's).
"""

from __future__ import annotations

from typing import Any, ClassVar

from edge.errors import SensorError
from edge.sensors.base import Opt, Sample, SensorBase, SensorContext, metric_name

DEFAULT_FILE = "/sys/class/thermal/thermal_zone0/temp"


class CPUTemperatureSensor(SensorBase):
    OPTIONS: ClassVar[dict[str, Opt]] = {
        "sensor_file": Opt((str,), DEFAULT_FILE, doc="thermal zone file (millidegrees C)"),
        "metric": Opt((str,), "cpu_temperature", metric_name, "metric name"),
    }

    def __init__(self, name: str, options: dict[str, Any], ctx: SensorContext) -> None:
        super().__init__(name, options, ctx)
        self.device: Any = None

    def read(self) -> Sample:
        path = self.options["sensor_file"]
        try:
            if self.device is None:
                from gpiozero import CPUTemperature

                self.device = CPUTemperature(sensor_file=path)
            value = float(self.device.temperature)
        except (OSError, ValueError) as err:
            raise SensorError(f"CPU temperature '{self.name}': cannot read {path} ({err}); check sensor_file "
                              "(on a Pi: /sys/class/thermal/thermal_zone0/temp)") from err
        return Sample({self.options["metric"]: round(value, 2)})

    def close(self) -> None:
        if self.device is not None:
            self.device.close()
            self.device = None
