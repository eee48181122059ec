"""firmware/adaptive.py: deadband, thresholds, heartbeat, interval changes."""

from adaptive import Adaptive
from mpytest import run


def _new():
    return Adaptive(10, 2, 60, {"temperature": 0.5, "humidity": 2.0}, {"temperature": {"high": 30.0}})


def test_reports_change_beyond_deadband_only():
    a = _new()
    assert a.decide({"temperature": 20.0, "humidity": 40.0}, 0)  # first sample
    assert not a.decide({"temperature": 20.3, "humidity": 41.0}, 10000)
    assert a.decide({"temperature": 20.6, "humidity": 41.0}, 20000)  # 0.6 beyond 0.5


def test_slows_when_stable_and_heartbeats():
    a = _new()
    a.decide({"temperature": 20.0, "humidity": 40.0}, 0)
    intervals = []
    now = 0
    reports = 0
    for _ in range(6):
        now += a.interval_ms
        if a.decide({"temperature": 20.1, "humidity": 40.5}, now):
            reports += 1
        intervals.append(a.interval_ms)
    assert intervals[0] == 20000 and intervals[1] == 40000 and intervals[-1] == 60000
    assert reports >= 1  # heartbeat at the longest interval


def test_fast_while_beyond_threshold_then_back():
    a = _new()
    a.decide({"temperature": 20.0, "humidity": 40.0}, 0)
    a.decide({"temperature": 20.0, "humidity": 40.0}, 10000)
    assert a.interval_ms > 10000
    assert a.decide({"temperature": 31.0, "humidity": 40.0}, 20000)
    assert a.interval_ms == 2000 and a.alert
    assert a.decide({"temperature": 31.0, "humidity": 40.0}, 22000)  # every sample while hot
    assert a.decide({"temperature": 22.0, "humidity": 40.0}, 24000)  # cooled: a change
    assert a.interval_ms == 10000 and not a.alert


def test_set_interval_and_threshold_commands():
    a = _new()
    assert a.set_interval(1) == 1000 and a.min_ms == 1000
    a.set_threshold("humidity", low=20.0)
    assert a.beyond({"humidity": 15.0}) == ["humidity"]
    a.set_threshold("humidity")
    assert a.beyond({"humidity": 15.0}) == []


def test_state_survives_deep_sleep():
    a = _new()
    a.decide({"temperature": 20.0, "humidity": 40.0}, 0)
    saved = a.state(5000)
    b = _new()
    b.restore(saved, 100, 10000)
    assert b.last == {"temperature": 20.0, "humidity": 40.0}
    assert b.last_report_ms == 100 - 5000 - 10000
    assert not b.decide({"temperature": 20.1, "humidity": 40.0}, 200)


run(globals())
