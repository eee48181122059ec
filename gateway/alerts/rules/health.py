"""health: the share of retried or stale readings (the reading's ``q``) is high: maintenance is due.

The share is a moving average over about ``window`` readings; raised above ``max_ratio``,
cleared below half of it. Without ``metric`` it counts every reading of the device, with one
only the readings that carry that metric (a Pi agent sends one reading per sensor).
"""

from __future__ import annotations

from typing import Any

from gateway.alerts.rules.base import CALM, FIRE, HOLD, Device, Param, Rule, Track
from protocol import wire

BAD_QUALITIES = tuple(q for q in wire.QUALITIES if q != wire.QUALITY_OK)


class HealthTrack(Track):
    __slots__ = ("n", "ratio")

    def __init__(self, device_id: str) -> None:
        super().__init__(device_id)
        self.n = 0
        self.ratio = 0.0


class Health(Rule):
    kind = "health"
    DEFAULT_SEVERITY = "warning"
    METRIC = "optional"
    SUSPENDS = False
    HAS_FOR = False
    PARAMS = (
        Param("max_ratio", "number", 0.2, "the share of bad readings that raises the alert (cleared below half)",
              positive=True, high=1),
        Param("window", "int", 50, "readings the share is averaged over", low=2, high=100_000),
        Param("min_readings", "int", 20, "readings seen before the rule judges", low=1, high=100_000),
        Param("qualities", "names", [wire.QUALITY_RETRIED, wire.QUALITY_STALE], "the reading qualities that count "
              "as bad", choices=BAD_QUALITIES),
    )
    track_class = HealthTrack

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        self.max_ratio = float(spec["max_ratio"])
        self.window = int(spec["window"])
        self.min_readings = int(spec["min_readings"])
        self.bad = frozenset(spec["qualities"])

    def update(self, track: HealthTrack, value: float, time_ms: int, device: Device) -> int:
        n = track.n + 1
        track.n = n
        bad = 1.0 if device.quality in self.bad else 0.0
        track.ratio += (bad - track.ratio) / (n if n < self.window else self.window)
        if n < self.min_readings:
            return HOLD
        if track.ratio > self.max_ratio:
            return FIRE
        return CALM if track.ratio < self.max_ratio / 2 else HOLD

    def text(self, track: HealthTrack, value: float | None, time_ms: int) -> str:
        which = " or ".join(sorted(self.bad))
        scope = "readings" if self.metric == "*" else f"{self.metric} readings"
        return (f"sensor health: {track.ratio:.0%} of recent {scope} were {which} "
                f"(limit {self.max_ratio:.0%}): check or replace the sensor")

    def save(self, track: HealthTrack) -> Any:
        return [track.n, track.ratio]

    def load(self, track: HealthTrack, data: Any) -> None:
        n, ratio = data
        track.n, track.ratio = int(n), float(ratio)

    def clear_reason(self, track: HealthTrack) -> str:
        return f"{track.ratio:.0%} of recent readings bad, below {self.max_ratio / 2:.0%}"
