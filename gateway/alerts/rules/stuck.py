"""stuck: a sensor whose value has not moved (beyond ``tolerance``) for ``window_s``.

One run per series, O(1) per reading: the band [lowest, highest] of the values since the run
started; a value that widens it beyond ``tolerance`` starts a new run.
"""

from __future__ import annotations

from typing import Any

from gateway.alerts.rules.base import CALM, FIRE, HOLD, Device, Param, Rule, Track, fmt_duration


class StuckTrack(Track):
    __slots__ = ("count", "high", "low", "start")

    def __init__(self, device_id: str) -> None:
        super().__init__(device_id)
        self.start = -1
        self.low = self.high = 0.0
        self.count = 0


class Stuck(Rule):
    kind = "stuck"
    DEFAULT_SEVERITY = "minor"
    HAS_FOR = False
    PARAMS = (
        Param("window_s", "number", 1800.0, "how long the value must stay within the tolerance", low=1,
              high=30 * 86400),
        Param("tolerance", "number", 0.0, "the largest spread still counted as no change (0: identical values)",
              low=0),
        Param("min_readings", "int", 5, "readings the run must contain", low=2, high=1_000_000),
    )
    track_class = StuckTrack

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        self.window_ms = int(spec["window_s"] * 1000)
        self.tolerance = float(spec["tolerance"])
        self.min_readings = int(spec["min_readings"])

    def update(self, track: StuckTrack, value: float, time_ms: int, device: Device) -> int:
        if track.count == 0 or time_ms < track.start:
            self._restart(track, value, time_ms)
            return HOLD
        low = value if value < track.low else track.low
        high = value if value > track.high else track.high
        if high - low > self.tolerance:
            self._restart(track, value, time_ms)
            return CALM
        track.low, track.high = low, high
        track.count += 1
        if time_ms - track.start >= self.window_ms and track.count >= self.min_readings:
            return FIRE
        return HOLD

    @staticmethod
    def _restart(track: StuckTrack, value: float, time_ms: int) -> None:
        track.start = time_ms
        track.low = track.high = value
        track.count = 1

    def text(self, track: StuckTrack, value: float | None, time_ms: int) -> str:
        band = "no change at all" if self.tolerance == 0 else f"within {self.fmt(self.tolerance)}"
        return (f"{self.metric} stuck at {self.fmt(value)} for {fmt_duration(time_ms - track.start)} "
                f"({track.count} readings, {band}): check the sensor")

    def reset(self, track: StuckTrack) -> None:
        track.count = 0

    def clear_reason(self, track: StuckTrack) -> str:
        return f"{self.metric} changing again"
