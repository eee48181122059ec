"""The history planner: source choice, grid alignment, and never more than the requested points."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.history import MAX_POINTS, plan
from gateway.storage.base import RAW

H = 3_600_000
M5 = 300_000
DAY = 86_400_000
NOW = 1_764_080_000_000
KEEP = 30 * DAY


def test_short_ranges_are_raw_long_ranges_use_rollups() -> None:
    assert plan(NOW - H, NOW, 500, NOW, KEEP) == plan(NOW - H, NOW, 500, NOW, KEEP)
    p = plan(NOW - H, NOW, 500, NOW, KEEP)
    assert (p.source, p.start_ms, p.end_ms, p.step_ms) == (RAW, NOW - H, NOW, 7200)
    p = plan(NOW - 7 * DAY, NOW, 500, NOW, KEEP)  # 20 min per point: 5-minute rollups
    assert p.source == "5m" and p.step_ms == 1_500_000 and p.start_ms % M5 == 0 and p.end_ms % M5 == 0
    assert p.start_ms <= NOW - 7 * DAY and p.end_ms >= NOW
    p = plan(NOW - 365 * DAY, NOW, 500, NOW, KEEP)  # ~17.5 h per point: hourly rollups
    assert p.source == "1h" and p.step_ms % H == 0 and p.start_ms % H == 0


def test_expired_raw_readings_are_answered_from_rollups() -> None:
    old = NOW - 40 * DAY
    p = plan(old, old + H, 500, NOW, KEEP)
    assert p.source == "5m" and p.step_ms == M5  # 12 buckets: the finest the rollups have
    assert plan(old, old + H, 500, old + H, KEEP).source == RAW


def test_bad_requests_are_refused() -> None:
    with pytest.raises(ValueError):
        plan(NOW, NOW, 10, NOW, KEEP)
    with pytest.raises(ValueError):
        plan(NOW - 10, NOW, 0, NOW, KEEP)
    with pytest.raises(ValueError):
        plan(NOW - 10, NOW, MAX_POINTS + 1, NOW, KEEP)


@given(start=st.integers(0, 2**45), span=st.integers(1, 3 * 365 * DAY), points=st.integers(1, MAX_POINTS),
       age=st.integers(-DAY, 60 * DAY))
def test_at_most_points_buckets_covering_the_range(start: int, span: int, points: int, age: int) -> None:
    end = start + span
    p = plan(start, end, points, end + age, KEEP)
    assert p.start_ms <= start and p.end_ms >= end
    assert -(-(p.end_ms - p.start_ms) // p.step_ms) <= points
    if p.source != RAW:
        width = {"5m": M5, "1h": H}[p.source]
        assert p.start_ms % width == 0 and p.end_ms % width == 0 and p.step_ms % width == 0
        assert p.start_ms > start - width and p.end_ms < end + width
    else:
        assert (p.start_ms, p.end_ms) == (start, end) and p.step_ms < M5
