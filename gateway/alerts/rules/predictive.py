"""predictive: a line fitted over ``window_s`` forecasts that the metric crosses a threshold within
``horizon_s``: "temperature will exceed 30 °C in about 18 min".

Judged each time a slot of the trend closes (gateway/alerts/trend.py: the window in 12 slots).
Raised when the forecast crossing is within the horizon; kept while it is within 1.5 x the
horizon or the value is past the threshold (the forecast came true: pair the rule with an
above/below rule for the crossing itself); cleared when the trend no longer heads there.
"""

from __future__ import annotations

from typing import Any

from gateway.alerts.rules.base import CALM, FIRE, FOR, HOLD, SAME, Device, Param, Rule, Track, fmt_duration
from gateway.alerts.trend import MINUTE_MS, Trend
from gateway.errors import ConfigError

SLOTS = 12


class PredictiveTrack(Track):
    __slots__ = ("eta_ms", "trend")

    def __init__(self, device_id: str, window_ms: int) -> None:
        super().__init__(device_id)
        self.trend = Trend(window_ms, SLOTS)
        self.eta_ms = 0.0


class Predictive(Rule):
    kind = "predictive"
    DEFAULT_SEVERITY = "warning"
    PARAMS = (
        Param("above", "number", None, "the threshold the metric is forecast to exceed (give above or below)"),
        Param("below", "number", None, "the threshold the metric is forecast to fall under"),
        Param("window_s", "number", 1800.0, "the time the trend line is fitted over", low=60, high=7 * 86400),
        Param("horizon_s", "number", 3600.0, "how far ahead a forecast crossing raises the alert", positive=True,
              high=30 * 86400),
        Param("min_points", "int", 6, "time slots (1/12 of the window each) with readings before judging", low=3,
              high=SLOTS),
        FOR,
    )

    @classmethod
    def complete(cls, spec: dict[str, Any], where: str) -> None:
        if (spec["above"] is None) == (spec["below"] is None):
            raise ConfigError(f"{where}: above, below: give exactly one threshold")
        if spec["above"] is None:
            del spec["above"]
        else:
            del spec["below"]

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        self.rising = "above" in spec
        self.limit = float(spec["above"] if self.rising else spec["below"])
        self.window_ms = int(spec["window_s"] * 1000)
        self.horizon_ms = float(spec["horizon_s"]) * 1000
        self.min_points = int(spec["min_points"])

    def new_track(self, device_id: str) -> PredictiveTrack:
        return PredictiveTrack(device_id, self.window_ms)

    def update(self, track: PredictiveTrack, value: float, time_ms: int, device: Device) -> int:
        trend = track.trend
        if not trend.add(time_ms, value):
            return SAME
        if trend.points < self.min_points:
            return HOLD
        slope = trend.slope if self.rising else -trend.slope  # towards the threshold, per minute
        gap = (self.limit - trend.level) if self.rising else (trend.level - self.limit)
        if gap <= 0:
            return HOLD  # already past: the forecast came true
        if slope <= 0:
            return CALM
        track.eta_ms = gap / slope * MINUTE_MS
        if track.eta_ms <= self.horizon_ms:
            return FIRE
        return HOLD if track.eta_ms <= 1.5 * self.horizon_ms else CALM

    def text(self, track: PredictiveTrack, value: float | None, time_ms: int) -> str:
        verb = "exceed" if self.rising else "fall below"
        way = "rising" if track.trend.slope >= 0 else "falling"
        now, limit = self.fmt_against(track.trend.level, self.limit)
        return (f"{self.metric} will {verb} {limit} in about {fmt_duration(track.eta_ms)} "
                f"(now {now}, {way} {self.fmt(abs(track.trend.slope))}/min)")

    def reset(self, track: PredictiveTrack) -> None:
        track.trend.reset()

    def clear_reason(self, track: PredictiveTrack) -> str:
        return f"{self.metric} no longer heading for {self.fmt(self.limit)}"
