"""The anomaly baseline on synthetic series: a spike is flagged, a slow daily cycle is not, a
persistent fault stays flagged; the hour-of-day baseline and the alert's explanation."""

from __future__ import annotations

import asyncio
import math
import random
import re
from pathlib import Path

from gateway.alerts.baseline import Baseline
from tests.gateway.alerts.harness import DAY, HOUR, MIN, T0, Harness

RULE = {"id": "odd", "type": "anomaly", "metric": "temperature", "z": 4}


def daily(t: int, rng: random.Random, mean: float = 24.0, amplitude: float = 5.0, noise: float = 0.2) -> float:
    """A slow daily cycle: warmest at 15:00 UTC, coolest at 03:00, with sensor noise."""
    return mean + amplitude * math.sin(2 * math.pi * ((t - 9 * HOUR) % DAY) / DAY) + rng.gauss(0, noise)


def test_a_spike_is_flagged_and_explained(tmp_path: Path) -> None:
    rng = random.Random(1)

    async def body() -> None:
        async with Harness(tmp_path / "a.db", [RULE]) as h:
            t = h.series("S-1", "temperature", [24.0 + rng.gauss(0, 0.3) for _ in range(600)], T0, MIN)
            await h.settle()
            assert h.events == []
            h.feed("S-1", {"temperature": 31.2}, t)
            await h.settle()
            assert h.kinds() == [("raised", "S-1", "odd")]
            text = h.events[0].alert["text"]
            found = re.fullmatch(r"temperature 31\.2 °C is (\d+\.\d)σ above its usual (\d+\.\d) ± (0\.\d+) °C", text)
            assert found, text
            z, mean, std = (float(g) for g in found.groups())
            assert abs(mean - 24.0) < 0.2 and 0.2 < std < 0.45 and abs(z - (31.2 - mean) / std) < 0.6
            # back to normal: cleared
            h.series("S-1", "temperature", [24.0 + rng.gauss(0, 0.3) for _ in range(3)], t + MIN, MIN)
            await h.settle()
            assert h.kinds()[-1] == ("cleared", "S-1", "odd")

    asyncio.run(body())


def test_a_slow_daily_cycle_is_not_flagged(tmp_path: Path) -> None:
    """Ten days of a ±5 °C daily cycle read every minute: neither the EWMA (which follows a slow
    drift) nor, from day 3, the hour-of-day baseline flags it; then a 3 °C deviation at an hour
    where it would be unremarkable on the daily scale is flagged by the seasonal baseline."""
    rng = random.Random(2)

    async def body() -> None:
        async with Harness(tmp_path / "a.db", [RULE]) as h:
            t = T0
            for _ in range(10 * 24 * 60):
                h.feed("S-1", {"temperature": daily(t, rng)}, t)
                t += MIN
            await h.settle()
            assert h.events == []
            track = h.engine.book.rules["odd"].tracks["S-1"]
            base = track.base  # type: ignore[union-attr]
            assert base.used_hour >= 0  # the hour-of-day baseline was in use
            # at 03:00 (coolest, ~19 °C), 22.5 °C is well inside the day's range but not that hour's
            t += (27 * HOUR - (t % DAY)) % DAY
            h.feed("S-1", {"temperature": 22.5}, t)
            await h.settle()
            assert h.kinds() == [("raised", "S-1", "odd")]
            text = h.events[0].alert["text"]
            usual = r"its usual 19\.\d ± 0\.\d+ °C at 03:00"
            assert re.fullmatch(r"temperature 22\.5 °C is \d+\.\dσ above " + usual, text), text

    asyncio.run(body())


def test_a_persistent_fault_stays_flagged(tmp_path: Path) -> None:
    rng = random.Random(3)

    async def body() -> None:
        async with Harness(tmp_path / "a.db", [RULE]) as h:
            t = h.series("S-1", "temperature", [24.0 + rng.gauss(0, 0.3) for _ in range(24 * 60)], T0, MIN)
            # the sensor drifts to a wrong level and stays there for 12 hours
            h.series("S-1", "temperature", [29.0 + rng.gauss(0, 0.3) for _ in range(12 * 60)], t, MIN)
            await h.settle()
            assert h.kinds() == [("raised", "S-1", "odd")]  # never cleared: the fault did not become normal
            assert h.open()[0]["state"] == "active"
            base = h.engine.book.rules["odd"].tracks["S-1"].base  # type: ignore[union-attr]
            assert abs(base.mean - 24.0) < 0.3  # learning was frozen

    asyncio.run(body())


def test_clearing_by_hand_accepts_the_new_level(tmp_path: Path) -> None:
    rng = random.Random(4)

    async def body() -> None:
        async with Harness(tmp_path / "a.db", [RULE]) as h:
            t = h.series("S-1", "temperature", [24.0 + rng.gauss(0, 0.3) for _ in range(300)], T0, MIN)
            t = h.series("S-1", "temperature", [29.0 + rng.gauss(0, 0.3) for _ in range(10)], t, MIN)
            await h.settle()
            (alert,) = h.open()
            await h.engine.clear(alert["id"], "admin", "sensor moved to the greenhouse")
            # the rule learns the new level instead of re-raising at once
            h.series("S-1", "temperature", [29.0 + rng.gauss(0, 0.3) for _ in range(300)], t, MIN)
            await h.settle()
            assert h.kinds() == [("raised", "S-1", "odd"), ("cleared", "S-1", "odd")]
            assert h.events[-1].alert["cleared_by"] == "admin"

    asyncio.run(body())


def test_the_issue_example_text(tmp_path: Path) -> None:
    """A learned seasonal baseline of 24.0 ± 1.4 °C at 14:00 and a reading of 31.2 °C."""

    async def body() -> None:
        async with Harness(tmp_path / "a.db", [dict(RULE, warmup=2)]) as h:
            rule = h.engine.book.rules["odd"]
            track = h.engine.track_for(rule, "S-1")
            season = [0.0] * 72
            season[3 * 14: 3 * 14 + 3] = [24.0, 1.96, 100.0]
            at = T0 - T0 % DAY + 14 * HOUR + 20 * MIN  # 14:20 UTC
            rule.load(track, [500, 24.0, 1.96, at - 4 * DAY, at - MIN, season])
            h.feed("S-1", {"temperature": 31.2}, at)
            await h.settle()
            assert h.events[0].alert["text"] == "temperature 31.2 °C is 5.1σ above its usual 24.0 ± 1.4 °C at 14:00"

    asyncio.run(body())


def test_baseline_arithmetic() -> None:
    base = Baseline(seasonal=False)
    values = [10.0, 12.0, 11.0, 13.0, 9.0]
    t = 0
    for v in values:
        dt = base.seen(t)
        base.learn(v, dt, 0, tau_ms=1e12, season_tau_ms=1e12)  # an endless memory: the plain average
        t += 1000
    mean = sum(values) / len(values)
    assert abs(base.mean - mean) < 1e-9
    assert abs(base.var - sum((v - mean) ** 2 for v in values) / len(values)) < 1e-9
    assert abs(base.judge(15.0, 0.01, 0, 10**12) - (15.0 - mean) / math.sqrt(base.var)) < 1e-9
    assert base.judge(mean, 100.0, 0, 10**12) == 0.0 and base.used_std == 100.0  # min_std floor
    saved = base.save()
    again = Baseline(seasonal=False)
    again.load(saved)
    assert again.save() == saved
