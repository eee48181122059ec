"""CPU temperature through gpiozero's CPUTemperature (reads a thermal-zone sysfs file).

``sensor_file`` is configurable. With backend "sim" and ``sensor_file`` left at its default,
the simulator's stand-in (simulator.hardware.cpu, gpiozero's surface) is read instead; a
``sensor_file`` you set is read in either backend (e.g. a file a test writes, millidegrees).
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any, ClassVar

from edge.errors import SensorError
from edge.sensors.base import Opt, Sample, SensorBase, SensorContext, fraction, metric_name

DEFAULT_FILE = "/sys/class/thermal/thermal_zone0/temp"
SIM_MODULE = "simulator.hardware.cpu"
SIM_CLASS = "CPUTemperatureStandIn"


class CPUTemperatureSensor(SensorBase):
    OPTIONS: ClassVar[dict[str, Opt]] = {
        "sensor_file": Opt((str,), DEFAULT_FILE, doc="thermal zone file (millidegrees C)"),
        "metric": Opt((str,), "cpu_temperature", metric_name, "metric name"),
        "sim_temperature": Opt((int, float), 48.0, doc="sim backend: mean temperature of the stand-in (°C)"),
        "sim_failure_rate": Opt((int, float), 0.0, fraction, "sim backend: share of reads that fail"),
        "sim_seed": Opt((int,), 0, doc="sim backend: random seed of the stand-in"),
    }

    def __init__(self, name: str, options: dict[str, Any], ctx: SensorContext) -> None:
        super().__init__(name, options, ctx)
        self.device: Any = None

    def _open(self) -> Any:
        options = self.options
        if self.ctx.backend == "sim" and options["sensor_file"] == DEFAULT_FILE:
            try:
                cls = getattr(importlib.import_module(SIM_MODULE), SIM_CLASS)
            except (ImportError, AttributeError) as err:
                raise SensorError(f"backend \"sim\" needs {SIM_MODULE}.{SIM_CLASS} ({err})") from err
            return cls(float(options["sim_temperature"]), options["sim_seed"], float(options["sim_failure_rate"]))
        try:
            from gpiozero import CPUTemperature
            from gpiozero.exc import GPIOZeroError, PinFactoryFallback
        except ImportError as err:
            raise SensorError(f"CPU temperature '{self.name}': gpiozero is missing ({err}); "
                              "pip install '.[edge]'") from err
        try:
            with warnings.catch_warnings():  # one "falling back from ..." line per library; the error below says it
                warnings.simplefilter("ignore", PinFactoryFallback)
                return CPUTemperature(sensor_file=options["sensor_file"])
        except GPIOZeroError as err:  # BadPinFactory off a Pi: gpiozero finds no GPIO library to load
            raise SensorError(
                f"CPU temperature '{self.name}': gpiozero has no pin factory here ({err}); on a Raspberry Pi "
                "install python3-lgpio (see docs/edge-agent.md), elsewhere set backend = \"sim\" (simulated "
                "sensors) or GPIOZERO_PIN_FACTORY=mock") from err

    def read(self) -> Sample:
        path = self.options["sensor_file"]
        if self.ctx.backend == "sim" and path == DEFAULT_FILE:
            path = "the sim stand-in"
        try:
            if self.device is None:
                self.device = self._open()
            value = float(self.device.temperature)
        except (OSError, ValueError) as err:
            raise SensorError(f"CPU temperature '{self.name}': cannot read {path} ({err}); check sensor_file "
                              "(on a Pi: /sys/class/thermal/thermal_zone0/temp)") from err
        return Sample({self.options["metric"]: round(value, 2)})

    def close(self) -> None:
        if self.device is not None:
            self.device.close()
            self.device = None
