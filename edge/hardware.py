"""Where sensors get their hardware: the backend ``agent.backend`` names hands each sensor the
pins, devices and files it drives, as gpiozero's pin factories hand devices their pins.

A sensor class (edge/sensors/) asks its ``hardware`` for a DHT object on a pin, the CPU
thermometer behind a thermal-zone file, the w1_slave files of 1-wire probes or an MCP3008
channel, and reads them; it never asks which backend it runs on. The backends are the rows of
``edge.sensors.base.BACKENDS``:

- ``hardware``: ``Hardware`` (this module): adafruit_dht, gpiozero's CPUTemperature and
  MCP3008, the kernel's sysfs files;
- ``sim``: ``edge.sim.SimHardware``: the simulator's stand-ins behind the same surface, and
  gpiozero's MockFactory pins (a mock MCP3008 on them).

A backend may add options to a sensor type (``OPTIONS``: the sim backend's ``sim_*``). They
are the backend's, not the sensor's: validate_sensor accepts every backend's options whatever
the backend (so EDGEWIRE_SENSOR_BACKEND=sim runs a real config unchanged) and keeps them apart
(``SensorSpec.backend_options``); the backend in use gets them, the others ignore them.
Adding a backend = a subclass of Hardware + one row in BACKENDS.
"""

from __future__ import annotations

import contextlib
import glob
import importlib
import io
import logging
import os
import warnings
from typing import Any, ClassVar

from edge.errors import SensorError
from edge.sensors.base import Opt

LOG = logging.getLogger(__name__)


class Hardware:
    """The real hardware (backend ``hardware``); one object per sensor, bound to its backend options."""

    OPTIONS: ClassVar[dict[str, dict[str, Opt]]] = {}  # sensor type -> this backend's own options for it

    def __init__(self, kind: str = "", options: dict[str, Any] | None = None) -> None:
        self.kind = kind
        self.options = options or {}

    @classmethod
    def prepare(cls) -> None:
        """Set up what every device shares (gpiozero's pin factory) before sensors and outputs open."""
        return None

    def describe(self, path: str) -> str:
        """How error messages name ``path`` (a file this backend reads)."""
        return path

    def dht(self, model: str, pin: int, attempt: int) -> Any:
        """An adafruit_dht DHT22/DHT11 object on BCM ``pin`` (``attempt``: times it was re-created)."""
        try:
            printed = io.StringIO()
            # Off a Pi, Blinka prints "WARNING: GENERIC_X86 is not fully supported" twice on import; the
            # agent's own note (edge.agent.apply_pin_factory) says it once.
            with contextlib.redirect_stdout(printed):
                board = importlib.import_module("board")
                adafruit_dht = importlib.import_module("adafruit_dht")
            if printed.getvalue().strip():
                LOG.debug("Blinka: %s", " ".join(printed.getvalue().split()))
            board_pin = getattr(board, f"D{pin}")
        except (ImportError, AttributeError, NotImplementedError) as err:
            raise SensorError(
                f"cannot open {model.upper()} on GPIO{pin}: {err}; install adafruit-circuitpython-dht "
                "(pip install '.[edge]') and run on a Raspberry Pi, or set backend = \"sim\"") from err
        cls = adafruit_dht.DHT22 if model == "dht22" else adafruit_dht.DHT11
        return cls(board_pin)

    def cpu_temperature(self, name: str, sensor_file: str) -> Any:
        """gpiozero's CPUTemperature on ``sensor_file`` (``.temperature`` in °C, ``close()``)."""
        try:
            from gpiozero import CPUTemperature
            from gpiozero.exc import GPIOZeroError, PinFactoryFallback
        except ImportError as err:
            raise SensorError(f"CPU temperature '{name}': gpiozero is missing ({err}); "
                              "pip install '.[edge]'") from err
        try:
            with warnings.catch_warnings():  # one "falling back from ..." line per library; the error below says it
                warnings.simplefilter("ignore", PinFactoryFallback)
                return CPUTemperature(sensor_file=sensor_file)
        except GPIOZeroError as err:  # BadPinFactory off a Pi: gpiozero finds no GPIO library to load
            raise SensorError(
                f"CPU temperature '{name}': gpiozero has no pin factory here ({err}); on a Raspberry Pi "
                "install python3-lgpio (see docs/edge-agent.md), elsewhere set backend = \"sim\" (simulated "
                "sensors) or GPIOZERO_PIN_FACTORY=mock") from err

    def w1_probes(self, devices_dir: str) -> list[str]:
        """The w1_slave files of the DS18B20 probes (family 28) under ``devices_dir``, sorted."""
        return sorted(glob.glob(os.path.join(devices_dir, "28-*", "w1_slave")))

    def w1_read(self, path: str) -> str:
        """The text of a probe's w1_slave file (OSError if it cannot be read)."""
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read()

    def mcp3008(self, channel: int, chip_select: int) -> Any:
        """gpiozero's MCP3008 on SPI0 (``.value``: a fraction of Vref; ``close()``)."""
        from gpiozero import MCP3008

        return MCP3008(channel=channel, device=chip_select)
