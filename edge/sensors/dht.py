"""DHT22 / DHT11 through adafruit-circuitpython-dht (gpiozero has no DHT driver).

The library raises RuntimeError on a large share of reads (timing misses,
checksum errors) and caches a value for 2 s. One ``read()`` therefore takes
``samples`` good reads spaced ``spacing`` seconds apart, retries failures up to
``attempts`` reads in total, and reports the median. Quality: ``ok`` when no read
failed, ``retried`` when some did, ``suspect`` when the median is outside the
sensor's rated range or jumped more than ``max_step`` since the last good value,
``stale`` when every read failed and the last good value (younger than
``stale_after`` s) is repeated. After ``recreate_after`` failures in a row the
device object is closed (``exit()``) and created again, which frees a stuck
pulse reader.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
from typing import Any, ClassVar

from edge.errors import SensorError
from edge.sensors.base import (
    QUALITY_OK,
    QUALITY_RETRIED,
    QUALITY_STALE,
    QUALITY_SUSPECT,
    Opt,
    Sample,
    SensorBase,
    SensorContext,
    bcm_pin,
    fraction,
    median,
    metric_name,
    non_negative,
    positive,
)

LOG = logging.getLogger("edgewire.edge.dht")


SIM_MODULE = "simulator.hardware.dht"
SIM_CLASS = "AdafruitDHTStandIn"


def hardware_device(model: str, pin: int) -> Any:
    """The real adafruit_dht object on BCM ``pin``."""
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


def sim_device(model: str, pin: int, failure_rate: float, seed: int) -> Any:
    """The simulator's stand-in with the library's surface, failure modes and timing."""
    try:
        cls = getattr(importlib.import_module(SIM_MODULE), SIM_CLASS)
    except (ImportError, AttributeError) as err:
        raise SensorError(f"backend \"sim\" needs {SIM_MODULE}.{SIM_CLASS} ({err})") from err
    return cls(pin, dht11=model == "dht11", failure_rate=failure_rate, seed=seed)


class DHTSensor(SensorBase):
    MODEL: ClassVar[str] = "dht22"
    RATED: ClassVar[dict[str, tuple[float, float]]] = {"temperature": (-40.0, 80.0), "humidity": (0.0, 100.0)}
    MIN_SPACING: ClassVar[float] = 2.0
    OPTIONS: ClassVar[dict[str, Opt]] = {
        "pin": Opt((int,), check=bcm_pin, doc="BCM GPIO number of the data line"),
        "samples": Opt((int,), 3, positive, "good reads per reading (median)"),
        "attempts": Opt((int,), 8, positive, "reads tried per reading, failures included"),
        "spacing": Opt((int, float), 2.1, non_negative, "seconds between reads (library caches 2 s)"),
        "recreate_after": Opt((int,), 3, positive, "failures in a row before the device is re-created"),
        "stale_after": Opt((int, float), 300.0, non_negative, "seconds a last good value may be repeated"),
        "max_step": Opt((int, float), 10.0, positive, "change since last good value that marks suspect"),
        "temperature_metric": Opt((str,), "temperature", metric_name, "metric name for temperature"),
        "humidity_metric": Opt((str,), "humidity", metric_name, "metric name for humidity"),
        "sim_failure_rate": Opt((int, float), 0.3, fraction, "sim backend: share of reads that fail"),
        "sim_seed": Opt((int,), 0, doc="sim backend: random seed of the stand-in"),
    }

    def __init__(self, name: str, options: dict[str, Any], ctx: SensorContext) -> None:
        super().__init__(name, options, ctx)
        self.pin: int = options["pin"]
        self.device: Any = None
        self.failures_in_row = 0
        self.recreated = 0
        self.last_good: dict[str, float] | None = None
        self.last_good_at = 0.0
        self.last_attempt: float | None = None

    @classmethod
    def metric_names(cls, options: dict[str, Any]) -> list[str]:
        return [options["temperature_metric"], options["humidity_metric"]]

    def _open(self) -> Any:
        if self.ctx.backend == "sim":
            return sim_device(self.MODEL, self.pin, float(self.options["sim_failure_rate"]),
                              self.options["sim_seed"] + self.recreated)
        return hardware_device(self.MODEL, self.pin)

    def _close_device(self) -> None:
        if self.device is not None:
            try:
                self.device.exit()
            except Exception as err:  # a stuck device may fail to close; we drop it anyway
                LOG.warning("%s: exit() failed: %s", self.name, err)
            self.device = None

    def _read_once(self) -> tuple[float, float]:
        if self.device is None:
            self.device = self._open()
        temperature = self.device.temperature
        humidity = self.device.humidity
        if temperature is None or humidity is None:
            raise RuntimeError("no value returned")
        return float(temperature), float(humidity)

    def read(self) -> Sample:
        samples: int = self.options["samples"]
        attempts = max(self.options["attempts"], samples)
        spacing = max(float(self.options["spacing"]), 0.0)
        temps: list[float] = []
        hums: list[float] = []
        failed = 0
        last_error = ""
        for _ in range(attempts):
            if self.last_attempt is not None:
                # the library returns its cached values for 2 s: a read sooner is no new read
                wait = spacing - (self.ctx.clock() - self.last_attempt)
                if wait > 0:
                    self.ctx.sleep(wait)
            self.last_attempt = self.ctx.clock()
            try:
                temperature, humidity = self._read_once()
            except RuntimeError as err:
                failed += 1
                last_error = str(err)
                self.failures_in_row += 1
                if self.failures_in_row >= self.options["recreate_after"]:
                    LOG.info("%s: %d failed reads in a row, re-creating the device",
                             self.name, self.failures_in_row)
                    self._close_device()
                    self.recreated += 1
                    self.failures_in_row = 0
                continue
            self.failures_in_row = 0
            temps.append(temperature)
            hums.append(humidity)
            if len(temps) >= samples:
                break
        names = self.metric_names(self.options)
        if not temps:
            now = self.ctx.clock()
            if self.last_good is not None and now - self.last_good_at <= self.options["stale_after"]:
                return Sample(dict(self.last_good), QUALITY_STALE)
            raise SensorError(
                f"{self.MODEL.upper()} '{self.name}' on GPIO{self.pin}: {failed} reads failed "
                f"(last: {last_error}); check your wiring: data on GPIO{self.pin} (BCM numbering), "
                "a 4.7-10 kOhm pull-up resistor from data to 3.3 V, 3.3 V power and ground")
        values = {names[0]: round(median(temps), 2), names[1]: round(median(hums), 2)}
        quality = QUALITY_RETRIED if failed else QUALITY_OK
        if self._suspect(values):
            quality = QUALITY_SUSPECT
        else:
            self.last_good = dict(values)
            self.last_good_at = self.ctx.clock()
        return Sample(values, quality)

    def _suspect(self, values: dict[str, float]) -> bool:
        names = self.metric_names(self.options)
        for name, rated in zip(names, self.RATED.values(), strict=True):
            if not rated[0] <= values[name] <= rated[1]:
                return True
        if self.last_good is not None:
            step = self.options["max_step"]
            return any(abs(values[n] - self.last_good[n]) > step for n in names)
        return False

    def close(self) -> None:
        self._close_device()


class DHT22Sensor(DHTSensor):
    MODEL = "dht22"
    RATED: ClassVar[dict[str, tuple[float, float]]] = {"temperature": (-40.0, 80.0), "humidity": (0.0, 100.0)}


class DHT11Sensor(DHTSensor):
    MODEL = "dht11"
    RATED: ClassVar[dict[str, tuple[float, float]]] = {"temperature": (0.0, 50.0), "humidity": (20.0, 90.0)}
