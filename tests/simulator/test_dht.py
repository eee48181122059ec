"""FakeDHT: the adafruit_dht and MicroPython dht surfaces over one model, failure modes and timing."""

from __future__ import annotations

import errno

import pytest

from simulator.hardware.dht import (
    MSG_CHECKSUM,
    MSG_NOT_FOUND,
    MSG_PARTIAL,
    AdafruitDHTStandIn,
    DHTChecksumError,
    DHTModel,
    MicroPythonDHTStandIn,
    adafruit_module,
    micropython_module,
)
from simulator.sensors import SensorModel


class FakeClock:
    def __init__(self, start: float = 100.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class Constant(SensorModel):
    metrics = ("temperature", "humidity")

    def __init__(self, temperature: float, humidity: float) -> None:
        self.values = {"temperature": temperature, "humidity": humidity}

    def sample(self, t_s: float) -> dict[str, float]:
        return dict(self.values)


def model(clock: FakeClock, kind: str = "DHT22", env: SensorModel | None = None, **kw: object) -> DHTModel:
    kw.setdefault("failure_rate", 0.0)
    m = DHTModel(kind, env=env or Constant(21.37, 45.62), clock=clock, env_time=clock, **kw)  # type: ignore[arg-type]
    clock.sleep(5.0)  # past warm-up
    return m


def test_adafruit_surface_and_resolution() -> None:
    clock = FakeClock()
    dht = AdafruitDHTStandIn("D4", model=model(clock), sleep=clock.sleep)
    assert dht.temperature == pytest.approx(21.4)
    assert dht.humidity == pytest.approx(45.6)
    dht.exit()
    dht11 = AdafruitDHTStandIn("D4", dht11=True, model=model(clock, "DHT11"), sleep=clock.sleep)
    assert dht11.temperature == 21
    assert dht11.humidity == 46


def test_adafruit_caches_within_two_seconds_like_the_library() -> None:
    clock = FakeClock()
    m = model(clock)
    dht = AdafruitDHTStandIn(model=m, read_time_s=0.0, sleep=clock.sleep)
    dht.measure()
    assert m.reads == 1
    clock.sleep(1.9)
    _ = dht.temperature, dht.humidity
    assert m.reads == 1  # cached, sensor untouched
    clock.sleep(0.2)
    _ = dht.temperature
    assert m.reads == 2


def test_adafruit_read_blocks_for_read_time() -> None:
    clock = FakeClock()
    dht = AdafruitDHTStandIn(model=model(clock), sleep=clock.sleep)
    before = clock.now
    dht.measure()
    assert clock.now - before == pytest.approx(0.35)


@pytest.mark.parametrize(("share", "connected", "message"), [
    (1.0, True, MSG_CHECKSUM), (0.0, True, MSG_PARTIAL), (0.0, False, MSG_NOT_FOUND)])
def test_adafruit_failure_messages(share: float, connected: bool, message: str) -> None:
    clock = FakeClock()
    dht = AdafruitDHTStandIn(model=model(clock, failure_rate=1.0, checksum_share=share, connected=connected),
                             read_time_s=0.0, sleep=clock.sleep)
    with pytest.raises(RuntimeError, match=message.replace(".", r"\.")):
        _ = dht.temperature
    # Like adafruit_dht: a retry within 2 s returns the cached value (None before any good read).
    assert dht.temperature is None


def test_adafruit_failure_rate_matches_configuration() -> None:
    clock = FakeClock()
    dht = AdafruitDHTStandIn(model=model(clock, failure_rate=0.3, seed=4), read_time_s=0.0, sleep=clock.sleep)
    failures = 0
    for _ in range(1000):
        clock.sleep(2.1)
        try:
            dht.measure()
        except RuntimeError:
            failures += 1
    assert 250 <= failures <= 350


def test_micropython_surface_and_errors() -> None:
    clock = FakeClock()
    dht = MicroPythonDHTStandIn(4, model=model(clock, env=Constant(-12.34, 80.0)), sleep=clock.sleep)
    assert dht.temperature() == 0  # nothing measured yet, like the driver's zeroed buffer
    dht.measure()
    assert dht.temperature() == pytest.approx(-12.3)
    assert dht.humidity() == pytest.approx(80.0)
    with pytest.raises(OSError) as info:  # read again too soon: the sensor does not answer
        dht.measure()
    assert info.value.errno == errno.ETIMEDOUT and info.value.args[0] == errno.ETIMEDOUT
    bad = MicroPythonDHTStandIn(model=model(clock, failure_rate=1.0, checksum_share=1.0), sleep=clock.sleep)
    with pytest.raises(DHTChecksumError, match="checksum error") as cinfo:
        bad.measure()
    assert not isinstance(cinfo.value, OSError)  # as on a board: except OSError does not catch it


def test_minimum_interval_dht22_two_seconds_dht11_one_second() -> None:
    clock = FakeClock()
    d22 = MicroPythonDHTStandIn(model=model(clock), read_time_s=0.0, sleep=clock.sleep)
    d11 = MicroPythonDHTStandIn(dht11=True, model=model(clock, "DHT11"), read_time_s=0.0, sleep=clock.sleep)
    d22.measure()
    d11.measure()
    clock.sleep(1.05)
    d11.measure()
    with pytest.raises(OSError):
        d22.measure()
    clock.sleep(2.05)
    d22.measure()


def test_warmup_and_dht11_saturation() -> None:
    clock = FakeClock()
    cold = DHTModel("DHT22", env=Constant(20.0, 50.0), failure_rate=0.0, clock=clock, env_time=clock)
    with pytest.raises(OSError):
        MicroPythonDHTStandIn(model=cold, read_time_s=0.0).measure()
    d11 = MicroPythonDHTStandIn(dht11=True, model=model(clock, "DHT11", env=Constant(63.0, 5.0)),
                                read_time_s=0.0)
    d11.measure()
    assert (d11.temperature(), d11.humidity()) == (50, 20)  # DHT11 range 0..50 °C, 20..90 %RH


def test_module_stand_ins_and_default_environment() -> None:
    mp = micropython_module(failure_rate=0.0, warmup_s=0.0, read_time_s=0.0)
    sensor = mp.DHT22(4)
    sensor.measure()
    assert -40.0 <= sensor.temperature() <= 80.0
    assert 0.0 <= sensor.humidity() <= 100.0
    ada = adafruit_module(failure_rate=0.0, warmup_s=0.0, read_time_s=0.0)
    dht = ada.DHT11("D4")
    assert isinstance(dht.temperature, int | float)
    dht.exit()
