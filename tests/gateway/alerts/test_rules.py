"""Every rule type through the engine, on an injected clock (readings at chosen times)."""

from __future__ import annotations

import asyncio
import math
import re
from pathlib import Path

from gateway.alerts.rules.base import fmt_apart
from tests.gateway.alerts.harness import HOUR, MIN, T0, Harness


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_above_with_hysteresis_and_a_for_duration(tmp_path: Path) -> None:
    rule = {"id": "hot", "metric": "temperature", "above": 30, "hysteresis": 2, "for_s": 5}

    async def body() -> None:
        async with Harness(tmp_path / "a.db", [rule]) as h:
            # a 1-second spike: past the threshold for less than for_s, no alert
            h.series("S-1", "temperature", [29.0, 35.0, 29.0], T0, 1000)
            # past it for 6 s: raised at the reading that completes the 5 s
            t = h.series("S-1", "temperature", [31.0] * 7, T0 + 10_000, 1000)
            await h.settle()
            assert h.kinds() == [("raised", "S-1", "hot")]
            raised = h.events[0].alert
            assert raised["value"] == 31.0 and raised["raised"] == T0 + 15_000 and raised["severity"] == "major"
            assert raised["text"] == "temperature 31.0 °C above 30.0 °C for 5 s"
            # within the hysteresis band: stays; below 28: clears
            t = h.series("S-1", "temperature", [29.5, 28.1, 30.0], t, 1000)
            await h.settle()
            assert [a["state"] for a in h.open()] == ["active"]
            h.feed("S-1", {"temperature": 27.9}, t)
            await h.settle()
            assert h.kinds()[-1] == ("cleared", "S-1", "hot")
            cleared = h.events[-1].alert
            assert (cleared["cleared_by"], cleared["clear_value"], cleared["clear_reason"]) == (
                "auto", 27.9, "temperature back below 28.0 °C")
            # a dip below the threshold restarts the `for` clock
            h.series("S-1", "temperature", [31.0, 31.0, 31.0, 29.0, 31.0, 31.0, 31.0, 31.0], t + 1000, 1000)
            await h.settle()
            assert len(h.events) == 2

    run(body())


def test_below_is_the_mirror_of_above(tmp_path: Path) -> None:
    rule = {"metric": "soil_moisture", "below": 20, "hysteresis": 5, "severity": "critical"}

    async def body() -> None:
        async with Harness(tmp_path / "a.db", [rule]) as h:
            t = h.series("P-1", "soil_moisture", [30.0, 19.0, 22.0, 24.9, 25.1], T0, 60_000)
            await h.settle()
            rule_id = "soil_moisture_below_20"
            assert h.kinds() == [("raised", "P-1", rule_id), ("cleared", "P-1", rule_id)]
            assert h.events[0].alert["text"] == "soil_moisture 19.0% below 20.0%"
            assert h.events[0].alert["severity"] == "critical"
            assert h.events[1].alert["clear_value"] == 25.1
            assert t

    run(body())


def test_rate_of_change_per_minute(tmp_path: Path) -> None:
    rule = {"id": "fast", "type": "rate", "metric": "temperature", "per_minute": 1.0, "window_s": 120}

    async def body() -> None:
        async with Harness(tmp_path / "a.db", [rule]) as h:
            # steady with noise (±0.3 every 10 s): no alert
            t = h.series("S-1", "temperature", [20 + 0.3 * (-1) ** i for i in range(60)], T0, 10_000)
            await h.settle()
            assert h.events == []
            # rising 2 °C/min
            t = h.series("S-1", "temperature", [20 + 2 * i / 6 for i in range(30)], t, 10_000)
            await h.settle()
            assert h.kinds() == [("raised", "S-1", "fast")]
            # raised as soon as the line over the window passes the limit; the text follows the rate
            assert re.fullmatch(r"temperature rising \d\.\d °C/min \(limit 1\.0 °C/min\), now \d+\.\d °C",
                                h.events[0].alert["text"]), h.events[0].alert["text"]
            assert h.events[-1].alert["text"].startswith("temperature rising 2.0 °C/min"), h.events[-1].alert["text"]
            # flat again: clears
            h.series("S-1", "temperature", [30.0] * 30, t, 10_000)
            await h.settle()
            assert h.kinds()[-1] == ("cleared", "S-1", "fast")

    run(body())


def test_rate_direction_falling_only(tmp_path: Path) -> None:
    rule = {"type": "rate", "metric": "battery", "per_minute": 0.5, "direction": "falling", "window_s": 300}

    async def body() -> None:
        async with Harness(tmp_path / "a.db", [rule]) as h:
            t = h.series("B-1", "battery", [50 + i for i in range(40)], T0, 30_000)  # rising 2 %/min: ignored
            await h.settle()
            assert h.events == []
            h.series("B-1", "battery", [90 - i for i in range(40)], t, 30_000)
            await h.settle()
            assert h.kinds() == [("raised", "B-1", "battery_rate")]
            assert h.events[0].alert["text"].startswith("battery falling ")
            assert h.events[-1].alert["text"].startswith("battery falling 2.0%/min (limit 0.5%/min), now ")

    run(body())


def test_no_data_learns_the_interval_and_raises_on_the_timer(tmp_path: Path) -> None:
    rule = {"id": "silent", "type": "no_data", "intervals": 5, "min_s": 30}

    async def body() -> None:
        async with Harness(tmp_path / "a.db", [rule]) as h:
            eng = h.engine
            h.feed("S-1", {"temperature": 20.0}, T0)
            h.feed("S-1", {"temperature": 20.0}, T0 + 10_000)
            eng.tick(T0 + 200_000)  # 2 gaps only: the interval is not known yet
            t = h.series("S-1", "temperature", [20.0] * 10, T0 + 20_000, 10_000)
            last = t - 10_000
            eng.tick(last + 49_000)  # silent 49 s < 5 x 10 s
            await h.settle()
            assert h.events == []
            eng.tick(last + 51_000)
            await h.settle()
            assert h.kinds() == [("raised", "S-1", "silent")]
            alert = h.events[0].alert
            assert (alert["metric"], alert["type"], alert["value"]) == ("*", "no_data", None)
            assert alert["text"] == "no data for 51 s (usually every 10 s)"
            eng.device_offline("S-1", last + 52_000)  # an offline device's no_data alert is not suspended
            eng.tick(last + 180_000)  # the text follows the silence, at most once a minute
            await h.settle()
            assert h.kinds(updates=True)[-1][0] == "updated"
            assert h.events[-1].alert["text"].startswith("no data for 3 min")
            assert h.events[-1].alert["state"] == "active"
            h.feed("S-1", {"temperature": 20.0}, last + 200_000)
            await h.settle()
            assert h.kinds()[-1] == ("cleared", "S-1", "silent")
            assert h.events[-1].alert["clear_reason"] == "data again after 3 min"

    run(body())


def test_no_data_of_one_metric_and_the_minimum_silence(tmp_path: Path) -> None:
    rule = {"type": "no_data", "metric": "soil_moisture", "intervals": 2, "min_s": 120}

    async def body() -> None:
        async with Harness(tmp_path / "a.db", [rule]) as h:
            t = h.series("P-1", "soil_moisture", [40.0] * 5, T0, 10_000)
            # other metrics keep coming: they do not count for this rule
            t = h.series("P-1", "temperature", [20.0] * 20, t, 5_000)
            h.engine.tick(t - 5_000)  # ~100 s since the last soil reading: more than 2 x 10 s, under min_s
            await h.settle()
            assert h.events == []
            h.engine.tick(T0 + 40_000 + 121_000)
            await h.settle()
            assert h.kinds() == [("raised", "P-1", "soil_moisture_no_data")]
            assert h.events[0].alert["text"].startswith("no soil_moisture readings for 2 min")

    run(body())


def test_stuck_sensor(tmp_path: Path) -> None:
    rule = {"type": "stuck", "metric": "humidity", "window_s": 600, "tolerance": 0.05}

    async def body() -> None:
        async with Harness(tmp_path / "a.db", [rule]) as h:
            t = h.series("S-1", "humidity", [50 + (i % 7) for i in range(30)], T0, 60_000)  # varies: fine
            t = h.series("S-1", "humidity", [55.0, 55.02, 55.0, 54.98] * 3, t, 60_000)  # 11 min within 0.05
            await h.settle()
            assert h.kinds() == [("raised", "S-1", "humidity_stuck")]
            assert h.events[0].alert["text"] == ("humidity stuck at 55.0% for 10 min (11 readings, within 0.05%): "
                                                 "check the sensor")
            h.feed("S-1", {"humidity": 56.0}, t)
            await h.settle()
            assert h.kinds()[-1] == ("cleared", "S-1", "humidity_stuck")

    run(body())


def test_sensor_health_from_reading_quality(tmp_path: Path) -> None:
    rule = {"type": "health", "max_ratio": 0.2, "window": 20, "min_readings": 10}

    async def body() -> None:
        async with Harness(tmp_path / "a.db", [rule]) as h:
            t = T0
            for i in range(40):  # every 3rd reading retried: 33 %
                h.feed("S-1", {"temperature": 20.0, "humidity": 40.0}, t, "retried" if i % 3 == 0 else "ok")
                t += 10_000
            await h.settle()
            assert h.kinds() == [("raised", "S-1", "device_health")]
            alert = h.events[0].alert
            assert alert["severity"] == "warning" and alert["metric"] == "*"
            assert re.fullmatch(r"sensor health: \d\d% of recent readings were retried or stale \(limit 20%\): "
                                r"check or replace the sensor", alert["text"]), alert["text"]
            for _ in range(40):
                h.feed("S-1", {"temperature": 20.0}, t, "ok")
                t += 10_000
            await h.settle()
            assert h.kinds()[-1] == ("cleared", "S-1", "device_health")

    run(body())


def test_predictive_forecasts_a_crossing(tmp_path: Path) -> None:
    rule = {"type": "predictive", "metric": "temperature", "above": 30, "window_s": 1800, "horizon_s": 3600}

    async def body() -> None:
        async with Harness(tmp_path / "a.db", [rule]) as h:
            t = h.series("S-1", "temperature", [20.0 + 0.05 * math.sin(i) for i in range(60)], T0, 30_000)
            await h.settle()
            assert h.events == []  # flat: no forecast
            # rising 0.2 °C/min (0.1 every 30 s) from 20: raised once the line over the last 30 min
            # forecasts 30 °C within the hour
            t = h.series("S-1", "temperature", [20.0 + 0.1 * i for i in range(60)], t, 30_000)
            await h.settle()
            assert h.kinds() == [("raised", "S-1", "temperature_predictive_above_30")]
            for event in h.events:
                text = event.alert["text"]
                found = re.fullmatch(r"temperature will exceed 30\.0 °C in about (\d+) min \(now (\d+\.\d) °C, "
                                     r"rising (0\.\d+) °C/min\)", text)
                assert found, text
                eta, now, slope = int(found.group(1)), float(found.group(2)), float(found.group(3))
                assert eta <= 60 and abs(eta - (30 - now) / slope) <= 3, text
            assert slope > 0.17  # the last update: the fit has nearly caught up with the ramp
            # it turns and falls: cleared
            h.series("S-1", "temperature", [25.9 - 0.1 * i for i in range(60)], t, 30_000)
            await h.settle()
            assert h.kinds()[-1] == ("cleared", "S-1", "temperature_predictive_above_30")

    run(body())


def test_devices_patterns_limit_a_rule(tmp_path: Path) -> None:
    rule = {"metric": "temperature", "above": 30, "devices": ["GH-*"]}

    async def body() -> None:
        async with Harness(tmp_path / "a.db", [rule]) as h:
            h.feed("GH-1", {"temperature": 31.0}, T0)
            h.feed("S-1", {"temperature": 31.0}, T0)
            await h.settle()
            assert h.kinds() == [("raised", "GH-1", "temperature_above_30")]

    run(body())


def test_updated_events_at_most_once_a_minute(tmp_path: Path) -> None:
    rule = {"type": "no_data", "min_s": 1}

    async def body() -> None:
        async with Harness(tmp_path / "a.db", [rule], update_interval_s=60) as h:
            h.series("S-1", "temperature", [1.0] * 5, T0, 1000)
            for second in range(10, 200):
                h.engine.tick(T0 + second * 1000)
            await h.settle()
            assert [k for k, _, _ in h.kinds(updates=True)] == ["raised", "updated", "updated", "updated"]
            assert HOUR and MIN

    run(body())


def test_a_value_just_past_its_threshold_is_written_with_the_digits_that_tell_them_apart(tmp_path: Path) -> None:
    rules = [{"id": "hot", "metric": "temperature", "above": 30},
             {"id": "dry", "metric": "soil_moisture", "below": 20}]

    async def body() -> None:
        async with Harness(tmp_path / "a.db", rules) as h:
            h.feed("S-1", {"temperature": 30.04, "soil_moisture": 19.9996}, T0)
            await h.settle()
            texts = sorted(e.alert["text"] for e in h.events)
            assert texts == ["soil_moisture 19.9996% below 20.0000%", "temperature 30.04 °C above 30.00 °C"]

    run(body())


def test_fmt_apart_adds_decimals_only_where_two_numbers_would_read_alike() -> None:
    assert fmt_apart(31.0, 30.0) == ("31.0", "30.0")  # already different: as fmt_number writes them
    assert fmt_apart(30.04, 30.0) == ("30.04", "30.00")
    assert fmt_apart(1000.4, 1000.0) == ("1000.4", "1000.0")
    assert fmt_apart(0.5, 0.25) == ("0.5", "0.25")
    assert fmt_apart(30.0, 30.0) == ("30.0", "30.0")  # equal: nothing to tell apart
    for value, other in ((30.000000001, 30.0), (0.0012341, 0.0012345), (-5.004, -5.0)):
        first, second = fmt_apart(value, other)
        assert first != second and (float(first) > float(second)) == (value > other), (value, other)
