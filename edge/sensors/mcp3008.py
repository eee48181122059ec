"""Analog inputs (soil moisture, light, ...) through gpiozero's MCP3008 ADC on SPI0.

The raw reading is a fraction 0..1 of Vref; ``raw_range`` and ``out_range`` map it
linearly (and clamped) to the metric, e.g. a capacitive soil probe that reads 0.82
dry and 0.35 in water: raw_range = [0.82, 0.35], out_range = [0, 100]. ``samples``
reads are taken and the median kept.

The chip comes from the hardware (edge/hardware.py): with backend "sim" a mock MCP3008
(the chip's SPI bit protocol on gpiozero MockFactory pins) is attached first, so the real
gpiozero driver is exercised.
"""

from __future__ import annotations

from typing import Any, ClassVar

from edge.errors import SensorError
from edge.hardware import Hardware
from edge.sensors.base import Opt, Sample, SensorBase, SensorContext, median, metric_name, positive


def _channel(value: Any) -> str | None:
    return None if 0 <= value <= 7 else "MCP3008 channels are 0-7"


def _ce(value: Any) -> str | None:
    return None if value in (0, 1) else "SPI chip enable is 0 (CE0, GPIO8) or 1 (CE1, GPIO7)"


def _pair(value: Any) -> str | None:
    ok = len(value) == 2 and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    if not ok:
        return "must be a list of two numbers [from, to]"
    return None if value[0] != value[1] else "the two ends must differ"


class MCP3008Sensor(SensorBase):
    OPTIONS: ClassVar[dict[str, Opt]] = {
        "channel": Opt((int,), check=_channel, doc="ADC channel 0-7"),
        "chip_select": Opt((int,), 0, _ce, "SPI chip enable: 0 = CE0 (GPIO8), 1 = CE1 (GPIO7)"),
        "metric": Opt((str,), "analog", metric_name, "metric name, e.g. soil_moisture or light"),
        "raw_range": Opt((list,), [0.0, 1.0], _pair, "raw fraction at the two ends of out_range"),
        "out_range": Opt((list,), [0.0, 1.0], _pair, "metric values for the two ends of raw_range"),
        "samples": Opt((int,), 5, positive, "reads per reading (median)"),
    }
    hardware: Hardware

    def __init__(self, name: str, options: dict[str, Any], ctx: SensorContext, hardware: Hardware) -> None:
        super().__init__(name, options, ctx, hardware)
        self.device: Any = None

    def _open(self) -> Any:
        return self.hardware.mcp3008(self.options["channel"], self.options["chip_select"])

    def scale(self, raw: float) -> float:
        r0, r1 = (float(v) for v in self.options["raw_range"])
        o0, o1 = (float(v) for v in self.options["out_range"])
        value = o0 + (raw - r0) / (r1 - r0) * (o1 - o0)
        return min(max(value, min(o0, o1)), max(o0, o1))

    def read(self) -> Sample:
        try:
            if self.device is None:
                self.device = self._open()
            raws = [float(self.device.value) for _ in range(self.options["samples"])]
        except SensorError:
            raise
        except Exception as err:  # gpiozero raises its own tree (SPIError, PinError, ...) and OSError
            self.close()
            raise SensorError(
                f"MCP3008 '{self.name}' channel {self.options['channel']}: {err}; check that SPI is enabled "
                "(dtparam=spi=on), the chip's wiring to GPIO11/10/9 and CE"
                f"{self.options['chip_select']}, and that the user is in the spi group") from err
        return Sample({self.options["metric"]: round(self.scale(median(raws)), 4)})

    def close(self) -> None:
        if self.device is not None:
            try:
                self.device.close()
            finally:
                self.device = None
