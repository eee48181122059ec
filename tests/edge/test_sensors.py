"""Sensors: DHT retry/median/quality/re-create against the simulator's stand-in, DS18B20 on a fake
sysfs tree, CPU temperature from a thermal file, MCP3008 through gpiozero on a mock SPI chip."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from edge.errors import SensorError
from edge.sensors.base import SENSOR_TYPES, SensorContext, build_sensor, validate_sensor
from edge.sim import SimHardware
from simulator.hardware.dht import AdafruitDHTStandIn, DHTModel
from tests.edge.conftest import W1_BAD_CRC, write_probe


class Clock:
    """Fake monotonic clock; the sensor's sleep advances it, so no test waits."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class Env:
    def __init__(self, temperature: float = 21.5, humidity: float = 45.0) -> None:
        self.temperature = temperature
        self.humidity = humidity

    def sample(self, _t: float) -> dict[str, float]:
        return {"temperature": self.temperature, "humidity": self.humidity}


def make_dht(monkeypatch: pytest.MonkeyPatch, clock: Clock, env: Env | None = None, kind: str = "dht22",
             **options: Any) -> tuple[Any, list[AdafruitDHTStandIn], DHTModel]:
    model = DHTModel("DHT11" if kind == "dht11" else "DHT22", env=env or Env(), clock=clock, warmup_s=0.0,
                     seed=options.pop("seed", 1), failure_rate=options.pop("failure_rate", 0.0),
                     connected=options.pop("connected", True))
    created: list[AdafruitDHTStandIn] = []

    def factory(_hardware: SimHardware, model_name: str, pin: int, attempt: int) -> AdafruitDHTStandIn:
        device = AdafruitDHTStandIn(pin, dht11=model_name == "dht11", model=model, sleep=clock.sleep)
        created.append(device)
        return device

    monkeypatch.setattr(SimHardware, "dht", factory)
    spec = validate_sensor(0, {"type": kind, "pin": 4, **options})
    return build_sensor(spec, SensorContext("sim", clock.sleep, clock)), created, model


def test_every_row_of_the_table_imports() -> None:
    for kind in SENSOR_TYPES:
        spec = validate_sensor(0, {"type": kind, "pin": 4} if kind.startswith("dht") else
                               {"type": kind, "channel": 0} if kind == "mcp3008" else {"type": kind})
        assert spec.metrics


def test_dht_median_of_good_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    sensor, _, model = make_dht(monkeypatch, clock, samples=3)
    sample = sensor.read()
    assert sample.metrics == {"temperature": 21.5, "humidity": 45.0}
    assert sample.quality == "ok"
    assert model.reads == 3
    assert clock.now - 100.0 >= 2 * 2.0  # reads spaced past the library's 2 s cache


def test_dht_retries_failures_and_marks_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    sensor, _, model = make_dht(monkeypatch, clock, samples=3, attempts=20, failure_rate=0.5, seed=7)
    qualities = set()
    for _ in range(5):
        sample = sensor.read()
        qualities.add(sample.quality)
        assert sample.metrics["temperature"] == pytest.approx(21.5, abs=0.1)
    assert "retried" in qualities
    assert model.checksum_errors + model.timeouts > 0


def test_dht_median_rejects_a_corrupted_outlier(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    env = Env()
    sensor, _, _ = make_dht(monkeypatch, clock, env=env, samples=3)
    values = iter([21.5, 60.0, 21.7])
    original = env.sample

    def sample(t: float) -> dict[str, float]:
        env.temperature = next(values)
        return original(t)

    env.sample = sample  # type: ignore[method-assign]
    assert sensor.read().metrics["temperature"] == 21.7


def test_dht_recreated_after_repeated_failures_then_wiring_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    sensor, created, _ = make_dht(monkeypatch, clock, connected=False, attempts=6, recreate_after=3)
    with pytest.raises(SensorError) as info:
        sensor.read()
    message = str(info.value)
    assert "pull-up" in message and "GPIO4" in message and "check your wiring" in message
    assert isinstance(info.value, RuntimeError)
    assert sensor.recreated == 2
    assert len(created) == 2 and created[0]._exited  # the stuck object was exit()ed and replaced


def test_dht_stale_then_error(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    sensor, _, model = make_dht(monkeypatch, clock, samples=1, attempts=3)
    good = sensor.read()
    model.connected = False
    stale = sensor.read()
    assert stale.quality == "stale" and stale.metrics == good.metrics
    assert model.reads == 4  # every attempt reached the sensor: none was served from the 2 s cache
    sensor.options["stale_after"] = 0.0
    with pytest.raises(SensorError):
        sensor.read()


def test_dht_jump_is_suspect(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    env = Env()
    sensor, _, _ = make_dht(monkeypatch, clock, env=env, samples=1, max_step=5.0)
    assert sensor.read().quality == "ok"
    env.temperature = 40.0
    assert sensor.read().quality == "suspect"


def test_dht11_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    sensor, _, _ = make_dht(monkeypatch, clock, env=Env(21.6, 45.4), kind="dht11", samples=1)
    assert sensor.read().metrics == {"temperature": 22.0, "humidity": 45.0}


def test_dht_hardware_backend_off_pi_says_what_to_do() -> None:
    spec = validate_sensor(0, {"type": "dht22", "pin": 4, "attempts": 1})
    sensor = build_sensor(spec, SensorContext("hardware", lambda s: None))
    with pytest.raises(SensorError, match="sim"):
        sensor.read()


def test_dht_sim_backend_uses_the_simulator_stand_in() -> None:
    spec = validate_sensor(0, {"type": "dht22", "pin": 4, "samples": 1, "sim_failure_rate": 0.0})
    sensor = build_sensor(spec, SensorContext("sim"))
    assert isinstance(sensor._open(), AdafruitDHTStandIn)  # type: ignore[attr-defined]


def test_ds18b20_reads_the_only_probe(w1_dir: Path) -> None:
    write_probe(w1_dir, "28-0316a2794d2f", 23125)
    spec = validate_sensor(0, {"type": "ds18b20", "devices_dir": str(w1_dir), "metric": "soil_temperature"})
    sample = build_sensor(spec, SensorContext("sim", lambda s: None)).read()
    assert sample.metrics == {"soil_temperature": 23.125} and sample.quality == "ok"


def test_ds18b20_negative_and_named_probe(w1_dir: Path) -> None:
    write_probe(w1_dir, "28-aaaa", -10250)
    write_probe(w1_dir, "28-bbbb", 5000)
    spec = validate_sensor(0, {"type": "ds18b20", "devices_dir": str(w1_dir), "device": "28-aaaa"})
    assert build_sensor(spec, SensorContext()).read().metrics == {"temperature": -10.25}
    spec = validate_sensor(0, {"type": "ds18b20", "devices_dir": str(w1_dir)})
    with pytest.raises(SensorError, match="28-aaaa, 28-bbbb"):
        build_sensor(spec, SensorContext()).read()


def test_ds18b20_crc_failure_is_retried(w1_dir: Path) -> None:
    path = write_probe(w1_dir, "28-0001", text=W1_BAD_CRC)

    def fix(_seconds: float) -> None:  # the next conversion comes back clean
        write_probe(w1_dir, "28-0001", 19500)

    spec = validate_sensor(0, {"type": "ds18b20", "devices_dir": str(w1_dir)})
    sample = build_sensor(spec, SensorContext("sim", fix)).read()
    assert sample.metrics == {"temperature": 19.5} and sample.quality == "retried"
    path.write_text(W1_BAD_CRC)
    with pytest.raises(SensorError, match="CRC"):
        build_sensor(spec, SensorContext("sim", lambda s: None)).read()


def test_ds18b20_power_on_value_is_suspect(w1_dir: Path) -> None:
    write_probe(w1_dir, "28-0001", 85000)
    spec = validate_sensor(0, {"type": "ds18b20", "devices_dir": str(w1_dir)})
    sample = build_sensor(spec, SensorContext("sim", lambda s: None)).read()
    assert sample.quality == "suspect"


def test_ds18b20_missing_bus_names_the_overlay(tmp_path: Path) -> None:
    spec = validate_sensor(0, {"type": "ds18b20", "devices_dir": str(tmp_path)})
    with pytest.raises(SensorError, match="dtoverlay=w1-gpio"):
        build_sensor(spec, SensorContext()).read()


def test_cpu_temperature_from_thermal_file(tmp_path: Path, mock_pins: Any) -> None:
    path = tmp_path / "temp"
    path.write_text("48312\n")
    spec = validate_sensor(0, {"type": "cpu_temperature", "sensor_file": str(path)})
    sensor = build_sensor(spec, SensorContext("sim"))
    assert sensor.read().metrics == {"cpu_temperature": 48.31}
    path.unlink()
    with pytest.raises(SensorError, match="sensor_file"):
        build_sensor(spec, SensorContext("sim")).read()


def test_mcp3008_through_gpiozero_on_a_mock_chip(mock_pins: Any) -> None:
    spec = validate_sensor(0, {"type": "mcp3008", "channel": 3, "metric": "soil_moisture",
                               "raw_range": [0.8, 0.3], "out_range": [0, 100], "sim_value": 0.55})
    sensor = build_sensor(spec, SensorContext("sim"))
    value = sensor.read().metrics["soil_moisture"]
    assert value == pytest.approx(50.0, abs=0.5)  # 10-bit quantisation
    other = build_sensor(validate_sensor(1, {"type": "mcp3008", "channel": 4, "sim_value": 0.9}),
                         SensorContext("sim"))
    assert other.read().metrics["analog"] == pytest.approx(0.9, abs=0.002)
    assert sensor.read().metrics["soil_moisture"] == value  # channels are independent
    sensor.close()
    other.close()


def test_sim_backend_swaps_every_sensor_type_with_defaults(mock_pins: Any) -> None:
    """Issue 15 item 12: backend "sim" needs no sysfs file for the CPU temperature and the DS18B20."""
    from edge.sensors.base import SENSOR_TYPES

    required = {"dht22": {"pin": 4}, "dht11": {"pin": 5}, "mcp3008": {"channel": 0}}
    for index, kind in enumerate(SENSOR_TYPES):
        spec = validate_sensor(index, {"type": kind, **required.get(kind, {})})
        sensor = build_sensor(spec, SensorContext("sim", lambda s: None))
        if kind.startswith("dht"):  # its reads take seconds (2 s cache, warm-up): see the stand-in's tests
            assert isinstance(sensor._open(), AdafruitDHTStandIn)  # type: ignore[attr-defined]
            continue
        try:
            sample = sensor.read()
        finally:
            sensor.close()
        assert set(sample.metrics) == set(spec.metrics), kind


def test_cpu_temperature_sim_stand_in_and_its_failures() -> None:
    spec = validate_sensor(0, {"type": "cpu_temperature", "sim_temperature": 60, "sim_seed": 3})
    value = build_sensor(spec, SensorContext("sim")).read().metrics["cpu_temperature"]
    assert 50 < value < 70
    failing = validate_sensor(0, {"type": "cpu_temperature", "sim_failure_rate": 1.0})
    with pytest.raises(SensorError, match="sim stand-in"):
        build_sensor(failing, SensorContext("sim")).read()


def test_ds18b20_sim_stand_in_goes_through_the_crc_and_retry_logic() -> None:
    spec = validate_sensor(0, {"type": "ds18b20", "sim_temperature": -5, "sim_failure_rate": 0.5, "sim_seed": 7,
                               "attempts": 8})
    sensor = build_sensor(spec, SensorContext("sim", lambda s: None))
    qualities = set()
    for _ in range(20):
        sample = sensor.read()
        assert -10 < sample.metrics["temperature"] < 0  # negative values survive the two's complement
        qualities.add(sample.quality)
    assert qualities == {"ok", "retried"}  # CRC failures happened and were retried
    broken = validate_sensor(0, {"type": "ds18b20", "sim_failure_rate": 1.0, "attempts": 2})
    with pytest.raises(SensorError, match="CRC"):
        build_sensor(broken, SensorContext("sim", lambda s: None)).read()


def test_w1_stand_in_text_matches_the_kernel_format() -> None:
    from simulator.hardware.w1 import W1ThermStandIn, crc8

    assert crc8(bytes.fromhex("72014b467fff0e10")) == 0x57  # a real probe's scratchpad and CRC
    first, second = W1ThermStandIn(mean=21.5, crc_failure_rate=0.0).w1_slave().splitlines()
    assert re.fullmatch(r"([0-9a-f]{2} ){9}: crc=[0-9a-f]{2} YES", first)
    assert re.fullmatch(r"([0-9a-f]{2} ){9}t=-?\d+", second)


def test_cpu_temperature_off_a_pi_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 15 item 11: gpiozero's BadPinFactory becomes a SensorError that says what to do."""
    from gpiozero import Device

    monkeypatch.delenv("GPIOZERO_PIN_FACTORY", raising=False)
    monkeypatch.setattr(Device, "pin_factory", None)
    path = tmp_path / "temp"
    path.write_text("48312\n")
    spec = validate_sensor(0, {"type": "cpu_temperature", "sensor_file": str(path)})
    with pytest.raises(SensorError, match='backend = "sim"'):
        build_sensor(spec, SensorContext("hardware")).read()
