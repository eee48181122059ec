"""rate: the metric changes faster than ``per_minute`` (the slope of a line fitted over ``window_s``)."""

from __future__ import annotations

from typing import Any

from gateway.alerts.rules.base import CALM, FIRE, FOR, HOLD, SAME, Device, Param, Rule, Track
from gateway.alerts.trend import Trend

SLOTS = 8


class RateTrack(Track):
    __slots__ = ("trend",)

    def __init__(self, device_id: str, window_ms: int) -> None:
        super().__init__(device_id)
        self.trend = Trend(window_ms, SLOTS)


class Rate(Rule):
    kind = "rate"
    DEFAULT_SEVERITY = "minor"
    PARAMS = (
        Param("per_minute", "number", None, "the fastest change allowed, in the metric's unit per minute",
              required=True, positive=True),
        Param("direction", "choice", "either", "rising, falling or either", choices=("either", "rising", "falling")),
        Param("window_s", "number", 120.0, "the time over which the rate is measured (it should span at least "
              "3 readings)", low=10, high=86400),
        FOR,
    )

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        self.limit = float(spec["per_minute"])
        self.direction = spec["direction"]
        self.window_ms = int(spec["window_s"] * 1000)

    def new_track(self, device_id: str) -> RateTrack:
        return RateTrack(device_id, self.window_ms)

    def update(self, track: RateTrack, value: float, time_ms: int, device: Device) -> int:
        trend = track.trend
        if not trend.add(time_ms, value):
            return SAME
        if trend.points < 3:
            return HOLD
        slope = trend.slope
        if self.direction == "rising":
            fast = slope > self.limit
        elif self.direction == "falling":
            fast = -slope > self.limit
        else:
            fast = abs(slope) > self.limit
        return FIRE if fast else CALM

    def text(self, track: RateTrack, value: float | None, time_ms: int) -> str:
        slope = track.trend.slope
        way = "rising" if slope >= 0 else "falling"
        speed, limit = self.fmt_against(abs(slope), self.limit)
        return f"{self.metric} {way} {speed}/min (limit {limit}/min), now {self.fmt(value)}"

    def reset(self, track: RateTrack) -> None:
        track.trend.reset()

    def clear_reason(self, track: RateTrack) -> str:
        return f"{self.metric} changing {self.fmt(abs(track.trend.slope))}/min, within the limit"
