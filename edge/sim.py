"""The ``sim`` backend (edge/hardware.py): simulated hardware behind the real one's surface.

``SimHardware`` hands sensors the simulator's stand-ins (simulator.hardware: a DHT with the
library's failure modes and timing, the CPU thermometer, DS18B20 probes with CRC failures) in
place of the devices and the sysfs files at their default paths, and gpiozero's MockFactory
pins with a mock MCP3008 (its SPI bit protocol) so the real gpiozero driver is exercised. A
file you name in an option (``sensor_file``, ``devices_dir``) is read as on the hardware (a
test's fake sysfs tree). The ``sim_*`` options that set the stand-ins up are this backend's
(``SimHardware.OPTIONS``), not the sensors'.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, ClassVar

from edge.errors import SensorError
from edge.hardware import Hardware
from edge.sensors.base import Opt, fraction
from edge.sensors.cpu import DEFAULT_FILE
from edge.sensors.ds18b20 import DEFAULT_DIR

SIM_PROBE = "28-00000000a1b2"  # the stand-in probe's id when the sensor names none

_DHT_OPTIONS = {
    "sim_failure_rate": Opt((int, float), 0.3, fraction, "sim backend: share of reads that fail"),
    "sim_seed": Opt((int,), 0, doc="sim backend: random seed of the stand-in"),
}

SPI_PINS = {"clock": 11, "mosi": 10, "miso": 9}
SELECT_PINS = (8, 7)
_chips: dict[int, Any] = {}


def use_mock_pins() -> Any:
    """Make gpiozero use MockFactory unless one is already set (GPIOZERO_PIN_FACTORY=mock)."""
    from gpiozero import Device
    from gpiozero.pins.mock import MockFactory

    if not isinstance(Device.pin_factory, MockFactory):
        Device.pin_factory = MockFactory()
    return Device.pin_factory


def _mock_chip_class() -> Any:
    from gpiozero.pins.mock import MockSPIDevice

    class MockMCP3008(MockSPIDevice):  # type: ignore[misc]
        """The slave side of an MCP3008: start bit, SGL/DIFF, 3 channel bits, then null + 10 bits."""

        def __init__(self, select_pin: int) -> None:
            super().__init__(SPI_PINS["clock"], SPI_PINS["mosi"], SPI_PINS["miso"], select_pin)
            self.channels = [0.0] * 8
            self.rx_buf: list[int] = []
            self.phase = "idle"

        def on_start(self) -> None:
            super().on_start()
            self.phase = "idle"

        def on_bit(self) -> None:
            if self.phase == "idle":
                if self.rx_buf[-1]:
                    self.phase = "mode"
                    self.rx_buf = []
            elif self.phase == "mode":
                self.phase = "single" if self.rx_buf[-1] else "diff"
                self.rx_buf = []
            elif self.phase in ("single", "diff") and len(self.rx_buf) == 3:
                fraction = min(max(self.channels[self.rx_word()], 0.0), 1.0)
                self.tx_word(round(fraction * 1023), 12)  # sample bit, null bit, 10 data bits
                self.phase = "result"

    return MockMCP3008


def attach_mock_mcp3008(chip_select: int, channel: int, fraction: float) -> Any:
    """Attach (once per chip select) a mock MCP3008 and set ``channel`` to ``fraction`` of Vref."""
    use_mock_pins()
    chip = _chips.get(chip_select)
    if chip is None:
        chip = _mock_chip_class()(SELECT_PINS[chip_select])
        _chips[chip_select] = chip
    chip.channels[channel] = fraction
    return chip


def reset() -> None:
    """Forget attached chips (tests that reset the pin factory call this)."""
    for chip in _chips.values():
        chip.close()
    _chips.clear()


def _stand_in(module: str, name: str) -> Any:
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise SensorError(f"backend \"sim\" needs {module}.{name} ({err})") from err


class SimHardware(Hardware):
    """Backend ``sim``: the simulator's stand-ins and mock pins (see the module docstring)."""

    OPTIONS: ClassVar[dict[str, dict[str, Opt]]] = {
        "dht22": _DHT_OPTIONS,
        "dht11": _DHT_OPTIONS,
        "cpu_temperature": {
            "sim_temperature": Opt((int, float), 48.0, doc="sim backend: mean temperature of the stand-in (°C)"),
            "sim_failure_rate": Opt((int, float), 0.0, fraction, "sim backend: share of reads that fail"),
            "sim_seed": Opt((int,), 0, doc="sim backend: random seed of the stand-in"),
        },
        "ds18b20": {
            "sim_temperature": Opt((int, float), 18.0, doc="sim backend: mean temperature of the stand-in probe (°C)"),
            "sim_failure_rate": Opt((int, float), 0.05, fraction, "sim backend: share of reads with a CRC error"),
            "sim_seed": Opt((int,), 0, doc="sim backend: random seed of the stand-in"),
        },
        "mcp3008": {
            "sim_value": Opt((int, float), 0.5, fraction, "sim backend: voltage fraction the mock chip reports"),
        },
    }

    def __init__(self, kind: str = "", options: dict[str, Any] | None = None) -> None:
        defaults = {key: opt.default for key, opt in self.OPTIONS.get(kind, {}).items()}
        super().__init__(kind, {**defaults, **(options or {})})
        self.probes: dict[str, Any] = {}  # probe id -> its W1ThermStandIn

    @classmethod
    def prepare(cls) -> None:
        """gpiozero's MockFactory, unless GPIOZERO_PIN_FACTORY names another factory."""
        if os.environ.get("GPIOZERO_PIN_FACTORY", "mock") == "mock":
            use_mock_pins()

    def _simulated(self, path: str) -> bool:
        return path == DEFAULT_FILE or path.startswith(DEFAULT_DIR + os.sep)

    def describe(self, path: str) -> str:
        return "the sim stand-in" if self._simulated(path) else path

    def dht(self, model: str, pin: int, attempt: int) -> Any:
        cls = _stand_in("simulator.hardware.dht", "AdafruitDHTStandIn")
        return cls(pin, dht11=model == "dht11", failure_rate=float(self.options["sim_failure_rate"]),
                   seed=self.options["sim_seed"] + attempt)

    def cpu_temperature(self, name: str, sensor_file: str) -> Any:
        if not self._simulated(sensor_file):
            return super().cpu_temperature(name, sensor_file)
        cls = _stand_in("simulator.hardware.cpu", "CPUTemperatureStandIn")
        options = self.options
        return cls(float(options["sim_temperature"]), options["sim_seed"], float(options["sim_failure_rate"]))

    def w1_probes(self, devices_dir: str) -> list[str]:
        if devices_dir != DEFAULT_DIR:
            return super().w1_probes(devices_dir)
        return [os.path.join(DEFAULT_DIR, SIM_PROBE, "w1_slave")]

    def w1_read(self, path: str) -> str:
        if not self._simulated(path):
            return super().w1_read(path)
        probe = os.path.basename(os.path.dirname(path))
        stand_in = self.probes.get(probe)
        if stand_in is None:
            cls = _stand_in("simulator.hardware.w1", "W1ThermStandIn")
            options = self.options
            stand_in = self.probes[probe] = cls(probe, float(options["sim_temperature"]), options["sim_seed"],
                                                float(options["sim_failure_rate"]))
        return str(stand_in.w1_slave())

    def mcp3008(self, channel: int, chip_select: int) -> Any:
        attach_mock_mcp3008(chip_select, channel, float(self.options["sim_value"]))
        return super().mcp3008(channel, chip_select)
