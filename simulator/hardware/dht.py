"""Fake DHT22 / DHT11 with the real sensors' failure modes and timing, behind two driver surfaces.

One shared physical model (``DHTModel``) produces the sensor's 5-byte frame; two adapters decode
it exactly like the real drivers do:

* ``AdafruitDHTStandIn`` - the surface of ``adafruit_dht.DHT22/DHT11`` (Pi agent): ``.temperature``
  and ``.humidity`` properties that trigger a measurement, ``.measure()``, ``.exit()``. Like the
  library, a read within 2 s of the previous read attempt returns the cached values (``None``
  before the first good read) without touching the sensor; failures raise ``RuntimeError`` with
  the library's messages ("Checksum did not validate. Try again.", "A full buffer was not
  returned. Try again.", "DHT sensor not found, check wiring").
* ``MicroPythonDHTStandIn`` - the surface of MicroPython's ``dht.DHT22(pin)`` (ESP32 firmware):
  ``.measure()`` reads the sensor every time and raises ``OSError(110)`` (ETIMEDOUT) when the
  sensor does not answer, or ``DHTChecksumError("checksum error")``, a plain Exception subclass like
  the ``Exception("checksum error")`` of micropython/drivers/dht/dht.py, so ``except OSError``
  does NOT catch it, exactly as on a board); ``.temperature()``
  and ``.humidity()`` decode the last frame (0 before the first measure).

Physics and timing (``DHTModel``): DHT22 0.1 resolution, -40..80 °C, 0..100 %RH, at most one read
per 2 s; DHT11 integer resolution, 0..50 °C, 20..90 %RH (values saturate), one read per 1 s.
Reading sooner than that, or within ``warmup_s`` of power-on, gets no answer (timeout). A read
attempt fails with ``failure_rate`` (split between checksum errors, i.e. a flipped bit on the
wire, and timeouts by ``checksum_share``); ``connected=False`` never answers. A read blocks for
``read_time_s`` through the injectable ``sleep`` (Linux bit-banging takes about 0.35 s, an ESP32
about 5 ms). Clocks, sleep and the environment model are injectable so tests need no waiting.
"""

from __future__ import annotations

import errno
import time
import types
from collections.abc import Callable
from typing import Any

from simulator.errors import SimConfigError, SimulatorError
from simulator.sensors import SensorModel, make_sensor
from simulator.sensors.base import Seed, make_rng

# kind -> (min interval s, t low, t high, h low, h high, tenths resolution)
DHT_TYPES: dict[str, tuple[float, float, float, float, float, bool]] = {
    "DHT22": (2.0, -40.0, 80.0, 0.0, 100.0, True),
    "DHT11": (1.0, 0.0, 50.0, 20.0, 90.0, False),
}

ADAFRUIT_INTERVAL_S = 2.0  # adafruit_dht.measure(): delay_between_readings, same for both types
MSG_CHECKSUM = "Checksum did not validate. Try again."
MSG_PARTIAL = "A full buffer was not returned. Try again."
MSG_NOT_FOUND = "DHT sensor not found, check wiring"
MSG_IMPLAUSIBLE = "Received unplausible data. Try again."


class DHTNoResponse(SimulatorError, TimeoutError):
    """The simulated sensor did not answer (model level; adapters translate it)."""

    def __init__(self, message: str, partial: bool) -> None:
        super().__init__(message)
        self.partial = partial  # True: some bits arrived; False: nothing at all


class HeatedEnv(SensorModel):
    """An environment model plus ``heat()`` degrees on its temperature (a heat spike near the sensor)."""

    metrics = ("temperature", "humidity")

    def __init__(self, inner: SensorModel, heat: Callable[[], float]) -> None:
        self.inner = inner
        self.heat = heat

    def sample(self, t_s: float) -> dict[str, float]:
        values = dict(self.inner.sample(t_s))
        values["temperature"] = values.get("temperature", 20.0) + self.heat()
        return values


class DHTModel:
    """The physical sensor: environment values, timing limits and wire errors. Not a driver."""

    def __init__(
        self,
        kind: str = "DHT22",
        env: SensorModel | None = None,
        seed: Seed = 0,
        failure_rate: float = 0.05,
        checksum_share: float = 0.5,
        connected: bool = True,
        warmup_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        env_time: Callable[[], float] = time.time,
    ) -> None:
        if kind not in DHT_TYPES:
            raise SimConfigError(f"DHT kind {kind!r} unknown; use one of {', '.join(DHT_TYPES)}")
        if not 0.0 <= failure_rate <= 1.0:
            raise SimConfigError(f"failure_rate {failure_rate} must be within 0..1")
        self.kind = kind
        self.min_interval_s, self.t_low, self.t_high, self.h_low, self.h_high, self.tenths = DHT_TYPES[kind]
        self.rng = make_rng(seed)
        self.env = env if env is not None else make_sensor("climate", self.rng)
        self.failure_rate = failure_rate
        self.checksum_share = checksum_share
        self.connected = connected
        self.clock = clock
        self.env_time = env_time
        self.powered_at = clock()
        self.warmup_s = warmup_s
        self.last_read: float | None = None
        self.reads = 0
        self.checksum_errors = 0
        self.timeouts = 0

    def encode(self, temperature: float, humidity: float) -> bytearray:
        """The 5 bytes the sensor sends for these values (saturated to its range, checksum last)."""
        t = max(self.t_low, min(self.t_high, temperature))
        h = max(self.h_low, min(self.h_high, humidity))
        buf = bytearray(5)
        if self.tenths:
            hv = round(h * 10)
            tv = round(abs(t) * 10)
            buf[0], buf[1] = hv >> 8, hv & 0xFF
            buf[2], buf[3] = ((tv >> 8) & 0x7F) | (0x80 if t < 0 else 0), tv & 0xFF
        else:
            buf[0], buf[2] = round(h), round(t)
        buf[4] = sum(buf[0:4]) & 0xFF
        return buf

    def read(self) -> bytearray:
        """One read of the bus: the 5-byte frame (possibly corrupted) or DHTNoResponse."""
        now = self.clock()
        self.reads += 1
        too_soon = self.last_read is not None and now - self.last_read < self.min_interval_s
        self.last_read = now
        if not self.connected:
            self.timeouts += 1
            raise DHTNoResponse("no response from sensor", partial=False)
        if too_soon or now - self.powered_at < self.warmup_s:
            self.timeouts += 1
            raise DHTNoResponse("sensor busy: read too soon after the previous read or power-on", True)
        values = self.env.sample(self.env_time())
        buf = self.encode(values.get("temperature", 20.0), values.get("humidity", 50.0))
        if self.failure_rate > 0 and self.rng.random() < self.failure_rate:
            if self.rng.random() < self.checksum_share:
                self.checksum_errors += 1
                buf[self.rng.randrange(4)] ^= 1 << self.rng.randrange(8)  # one bit flipped on the wire
            else:
                self.timeouts += 1
                raise DHTNoResponse("bits lost: incomplete frame", partial=True)
        return buf


class DHTChecksumError(SimulatorError):
    """MicroPython's dht driver raises a plain ``Exception("checksum error")``: this is one
    (an Exception, not an OSError), so firmware must catch it the way it would on a board."""


def _checksum_ok(buf: bytearray) -> bool:
    return (buf[0] + buf[1] + buf[2] + buf[3]) & 0xFF == buf[4]


class AdafruitDHTStandIn:
    """Drop-in for ``adafruit_dht.DHT22(pin)`` / ``DHT11(pin)`` (see the module docstring)."""

    def __init__(
        self, pin: object = None, use_pulseio: bool = False, *, dht11: bool = False,
        model: DHTModel | None = None, read_time_s: float = 0.35,
        sleep: Callable[[float], None] = time.sleep, **model_kwargs: Any,
    ) -> None:
        self._pin = pin
        self._dht11 = dht11
        self.model = model if model is not None else DHTModel("DHT11" if dht11 else "DHT22", **model_kwargs)
        self._read_time_s = read_time_s
        self._sleep = sleep
        self._last_called: float | None = None
        self._temperature: float | None = None
        self._humidity: float | None = None
        self._exited = False

    def exit(self) -> None:
        """Release the pin (the library deinits PulseIn). Idempotent."""
        self._exited = True

    def measure(self) -> None:
        """Read the sensor unless it was tried within the last 2 s (then keep the cached values)."""
        now = self.model.clock()
        if self._last_called is not None and now - self._last_called <= ADAFRUIT_INTERVAL_S:
            return
        self._last_called = now
        if self._read_time_s > 0:
            self._sleep(self._read_time_s)
        try:
            buf = self.model.read()
        except DHTNoResponse as err:
            raise RuntimeError(MSG_PARTIAL if err.partial else MSG_NOT_FOUND) from None
        if self._dht11:
            humidity: float = buf[0]
            temperature: float = buf[2] + (buf[3] & 0x0F) / 10
        else:
            humidity = ((buf[0] << 8) | buf[1]) / 10
            temperature = (((buf[2] & 0x7F) << 8) | buf[3]) / 10
            if buf[2] & 0x80:
                temperature = -temperature
        if not _checksum_ok(buf):
            raise RuntimeError(MSG_CHECKSUM)
        if humidity < 0 or humidity > 100:
            raise RuntimeError(MSG_IMPLAUSIBLE)
        self._temperature = temperature
        self._humidity = humidity

    @property
    def temperature(self) -> float | None:
        self.measure()
        return self._temperature

    @property
    def humidity(self) -> float | None:
        self.measure()
        return self._humidity


class MicroPythonDHTStandIn:
    """Drop-in for MicroPython's ``dht.DHT22(pin)`` / ``dht.DHT11(pin)`` (see the module docstring)."""

    def __init__(
        self, pin: object = None, *, dht11: bool = False, model: DHTModel | None = None,
        read_time_s: float = 0.005, sleep: Callable[[float], None] = time.sleep, **model_kwargs: Any,
    ) -> None:
        self.pin = pin
        self._dht11 = dht11
        self.model = model if model is not None else DHTModel("DHT11" if dht11 else "DHT22", **model_kwargs)
        self._read_time_s = read_time_s
        self._sleep = sleep
        self.buf = bytearray(5)

    def measure(self) -> None:
        if self._read_time_s > 0:
            self._sleep(self._read_time_s)
        try:
            buf = self.model.read()
        except DHTNoResponse:
            raise OSError(errno.ETIMEDOUT, "ETIMEDOUT") from None
        self.buf[:] = buf
        if not _checksum_ok(buf):
            raise DHTChecksumError("checksum error")

    def humidity(self) -> float:
        if self._dht11:
            return self.buf[0]
        return (self.buf[0] << 8 | self.buf[1]) * 0.1

    def temperature(self) -> float:
        if self._dht11:
            return self.buf[2]
        t = ((self.buf[2] & 0x7F) << 8 | self.buf[3]) * 0.1
        return -t if self.buf[2] & 0x80 else t


def adafruit_module(**kwargs: Any) -> types.ModuleType:
    """A stand-in ``adafruit_dht`` module: ``DHT22(pin)``/``DHT11(pin)`` build stand-ins with ``kwargs``."""
    mod = types.ModuleType("adafruit_dht")
    mod.DHT22 = lambda pin=None, use_pulseio=False: AdafruitDHTStandIn(pin, use_pulseio, **kwargs)  # type: ignore[attr-defined]
    mod.DHT11 = lambda pin=None, use_pulseio=False: AdafruitDHTStandIn(  # type: ignore[attr-defined]
        pin, use_pulseio, dht11=True, **kwargs)
    return mod


def micropython_module(**kwargs: Any) -> types.ModuleType:
    """A stand-in MicroPython ``dht`` module (for ``sys.modules["dht"]`` in firmware tests)."""
    mod = types.ModuleType("dht")
    mod.DHT22 = lambda pin=None: MicroPythonDHTStandIn(pin, **kwargs)  # type: ignore[attr-defined]
    mod.DHT11 = lambda pin=None: MicroPythonDHTStandIn(pin, dht11=True, **kwargs)  # type: ignore[attr-defined]
    return mod
