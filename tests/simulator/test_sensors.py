"""Sensor models: ranges, seeded reproducibility, spikes, stuck values, dropouts."""

from __future__ import annotations

import statistics

import pytest

from simulator.errors import SensorReadError, SimConfigError
from simulator.sensors import (
    SENSORS,
    DailyTemperature,
    Dropout,
    Humidity,
    SensorModel,
    Spikes,
    Stuck,
    make_sensor,
    parse_sensor_spec,
)

DAY0 = 1_764_028_800.0  # 2025-11-25 00:00 UTC
MINUTES = [DAY0 + 60.0 * i for i in range(24 * 60)]


def collect(model: SensorModel, times: list[float]) -> list[dict[str, float]]:
    return [model.sample(t) for t in times]


def test_same_seed_same_values_and_other_seed_differs() -> None:
    for name in SENSORS:
        a = collect(make_sensor(name, 7), MINUTES[:200])
        b = collect(make_sensor(name, 7), MINUTES[:200])
        c = collect(make_sensor(name, 8), MINUTES[:200])
        assert a == b, name
        assert a != c, name


def test_daily_temperature_curve_shape_and_range() -> None:
    clean = DailyTemperature(0, mean=20.0, amplitude=5.0, noise=0.0, drift_per_sqrt_h=0.0)
    values = [v["temperature"] for v in collect(clean, MINUTES)]
    hottest = MINUTES[values.index(max(values))]
    assert abs((hottest - DAY0) / 3600.0 - 15.0) < 0.5  # phase 9 h: maximum at 15:00 (2-decimal plateau)
    assert max(values) == pytest.approx(25.0, abs=0.01)
    assert min(values) == pytest.approx(15.0, abs=0.01)
    noisy = DailyTemperature(1, mean=20.0, amplitude=5.0, noise=0.2, max_drift=1.0)
    values = [v["temperature"] for v in collect(noisy, MINUTES)]
    assert all(15.0 - 1.0 - 1.5 < v < 25.0 + 1.0 + 1.5 for v in values)
    assert abs(noisy.drift) <= 1.0


def test_drift_moves_slowly() -> None:
    model = DailyTemperature(3, noise=0.0, drift_per_sqrt_h=0.5, max_drift=5.0)
    collect(model, MINUTES)
    assert model.drift != 0.0
    assert abs(model.drift) <= 5.0


def test_humidity_is_anticorrelated_with_temperature() -> None:
    values = collect(make_sensor("climate", 5), MINUTES)
    temps = [v["temperature"] for v in values]
    hums = [v["humidity"] for v in values]
    assert statistics.correlation(temps, hums) < -0.9
    assert all(0.0 <= h <= 100.0 for h in hums)
    standalone = collect(Humidity(2, mean=95.0, coupling=-10.0), MINUTES)
    assert all(0.0 <= v["humidity"] <= 100.0 for v in standalone)


def test_spikes_are_rare_and_large() -> None:
    base = DailyTemperature(0, noise=0.0, drift_per_sqrt_h=0.0)
    reference = DailyTemperature(0, noise=0.0, drift_per_sqrt_h=0.0)
    spiky = Spikes(base, seed=11, probability=0.05, magnitude=30.0)
    jumps = 0
    for t in MINUTES:
        got, want = spiky.sample(t)["temperature"], reference.sample(t)["temperature"]
        if got != want:
            jumps += 1
            assert abs(got - want) == pytest.approx(30.0, abs=1e-6)
    assert jumps == spiky.spikes
    assert 30 <= jumps <= 120  # binomial(1440, 0.05): mean 72


def test_spikes_clamped_to_plausible_range() -> None:
    hot = Spikes(DailyTemperature(0, mean=140.0, amplitude=0.0, noise=0.0), seed=1, probability=1.0,
                 magnitude=100.0)
    for t in MINUTES[:50]:
        assert -60.0 <= hot.sample(t)["temperature"] <= 150.0


def test_stuck_sensor_freezes_then_recovers() -> None:
    model = Stuck(DailyTemperature(0, noise=0.1), start_s=MINUTES[100], duration_s=600.0)
    values = [model.sample(t)["temperature"] for t in MINUTES[:130]]
    assert len(set(values[:100])) > 50
    assert len(set(values[100:110])) == 1  # frozen for 10 minutes
    assert values[100] == values[99]
    assert len(set(values[110:])) > 10


def test_stuck_by_probability_is_seeded() -> None:
    runs = [[Stuck(DailyTemperature(0), seed=4, probability=0.01, duration_s=300.0).sample(t)["temperature"]
             for t in MINUTES[:600]] for _ in range(2)]
    assert runs[0] == runs[1]


def test_dropouts_fail_at_the_configured_rate_and_in_bursts() -> None:
    model = Dropout(DailyTemperature(0), seed=9, probability=0.2)
    failures = 0
    for t in MINUTES:
        try:
            model.sample(t)
        except SensorReadError as err:
            assert isinstance(err, OSError)
            failures += 1
    assert failures == model.failures
    assert 0.15 < failures / len(MINUTES) < 0.25
    bursty = Dropout(DailyTemperature(0), seed=9, probability=0.05, burst=3)
    pattern = []
    for t in MINUTES:
        try:
            bursty.sample(t)
            pattern.append(0)
        except SensorReadError:
            pattern.append(1)
    runs = "".join(map(str, pattern)).split("0")
    assert all(len(r) % 3 == 0 for r in runs if r)


def test_registry_errors_and_spec() -> None:
    with pytest.raises(SimConfigError):
        make_sensor("barometer-9000")
    with pytest.raises(ValueError):
        make_sensor("climate", 0, {"gremlins": 0.1})
    spec = parse_sensor_spec("climate,spikes=0.01,dropout=0.05")
    assert spec == ("climate", {"spikes": 0.01, "dropout": 0.05})
    with pytest.raises(SimConfigError):
        parse_sensor_spec("climate,dropout=lots")
    model = make_sensor("climate", 1, {"dropout": 1.0})
    with pytest.raises(SensorReadError):
        model.sample(DAY0)
