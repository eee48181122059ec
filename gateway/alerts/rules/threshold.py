"""above / below: past a threshold (for ``for_s``), cleared once back past threshold -/+ hysteresis."""

from __future__ import annotations

from typing import Any

from gateway.alerts.rules.base import CALM, FIRE, FOR, HOLD, Device, Param, Rule, Track, fmt_duration

HYSTERESIS = Param("hysteresis", "number", 0.0, "how far back past the threshold the value must go to clear",
                   low=0)


class Above(Rule):
    kind = "above"
    PARAMS = (Param("above", "number", None, "the threshold", required=True), HYSTERESIS, FOR)

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        self.limit = float(spec["above"])
        self.clear_at = self.limit - float(spec["hysteresis"])

    def update(self, track: Track, value: float, time_ms: int, device: Device) -> int:
        if value > self.limit:
            return FIRE
        return CALM if value < self.clear_at or self.clear_at == self.limit else HOLD

    def text(self, track: Track, value: float | None, time_ms: int) -> str:
        held = f" for {fmt_duration(self.for_ms)}" if self.for_ms else ""
        shown, limit = self.fmt_against(value, self.limit)
        return f"{self.metric} {shown} above {limit}{held}"

    def clear_reason(self, track: Track) -> str:
        return f"{self.metric} back below {self.fmt(self.clear_at)}"


class Below(Rule):
    kind = "below"
    PARAMS = (Param("below", "number", None, "the threshold", required=True), HYSTERESIS, FOR)

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        self.limit = float(spec["below"])
        self.clear_at = self.limit + float(spec["hysteresis"])

    def update(self, track: Track, value: float, time_ms: int, device: Device) -> int:
        if value < self.limit:
            return FIRE
        return CALM if value > self.clear_at or self.clear_at == self.limit else HOLD

    def text(self, track: Track, value: float | None, time_ms: int) -> str:
        held = f" for {fmt_duration(self.for_ms)}" if self.for_ms else ""
        shown, limit = self.fmt_against(value, self.limit)
        return f"{self.metric} {shown} below {limit}{held}"

    def clear_reason(self, track: Track) -> str:
        return f"{self.metric} back above {self.fmt(self.clear_at)}"
