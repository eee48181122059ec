"""anomaly: a value far from the series' usual one (gateway/alerts/baseline.py) in standard deviations.

Raised when the z-score passes ``z`` (in ``direction``), cleared when it is back within
``clear_z``. While the value is past ``z`` the baseline does not learn, so a persistent
fault stays flagged instead of becoming "normal"; clearing the alert by hand accepts the
new level (the baseline learns anew). The first ``warmup`` readings only teach.
"""

from __future__ import annotations

from typing import Any

from gateway.alerts.baseline import DAY_MS, Baseline
from gateway.alerts.rules.base import (
    CALM,
    FIRE,
    FOR,
    HOLD,
    Device,
    Param,
    Rule,
    Track,
    default_min_std,
    fmt_number,
)
from gateway.errors import ConfigError


class AnomalyTrack(Track):
    __slots__ = ("base", "z")

    def __init__(self, device_id: str, seasonal: bool) -> None:
        super().__init__(device_id)
        self.base = Baseline(seasonal)
        self.z = 0.0


class Anomaly(Rule):
    kind = "anomaly"
    DEFAULT_SEVERITY = "minor"
    PARAMS = (
        Param("z", "number", 4.0, "how many standard deviations from the usual value raise the alert",
              positive=True, high=1000),
        Param("clear_z", "number", None, "back within this many, the alert clears (default: z - 1, at least z/2)",
              low=0, high=1000),
        Param("direction", "choice", "either", "above, below or either", choices=("either", "above", "below")),
        Param("tau_s", "number", 3600.0, "the EWMA's time constant: roughly how far back \"usual\" reaches",
              low=1, high=365 * 86400),
        Param("warmup", "int", 30, "readings learned before the rule judges", low=2, high=1_000_000),
        Param("min_std", "number", None, "the smallest standard deviation assumed (default: 1/1000 of the "
              "metric's plausible range)", positive=True),
        Param("seasonal", "bool", True, "also learn an hour-of-day baseline and use it once old enough"),
        Param("season_days", "number", 7.0, "the hour-of-day baseline's memory, in days", low=1, high=365),
        Param("min_days", "number", 3.0, "days of history before the hour-of-day baseline is used", low=1,
              high=365),
        FOR,
    )

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        self.z = float(spec["z"])
        self.clear_z = float(spec["clear_z"])
        self.direction = spec["direction"]
        self.tau_ms = float(spec["tau_s"]) * 1000
        self.warmup = int(spec["warmup"])
        self.min_std = float(spec["min_std"])
        self.seasonal = bool(spec["seasonal"])
        self.season_tau_ms = float(spec["season_days"]) * 3_600_000  # an hour bucket learns 1 h a day
        self.season_ready_ms = int(float(spec["min_days"]) * DAY_MS)

    @classmethod
    def complete(cls, spec: dict[str, Any], where: str) -> None:
        if spec["clear_z"] is None:
            spec["clear_z"] = max(spec["z"] - 1.0, spec["z"] / 2.0)
        elif spec["clear_z"] >= spec["z"]:
            raise ConfigError(f"{where}: clear_z: must be below z ({spec['z']:g}), not {spec['clear_z']:g}")
        if spec["min_std"] is None:
            spec["min_std"] = default_min_std(spec["metric"])

    def new_track(self, device_id: str) -> AnomalyTrack:
        return AnomalyTrack(device_id, self.seasonal)

    def update(self, track: AnomalyTrack, value: float, time_ms: int, device: Device) -> int:
        base = track.base
        dt = base.seen(time_ms)
        hour = self.hour_of(time_ms) if self.seasonal else 0
        if base.n < self.warmup:
            base.learn(value, dt, hour, self.tau_ms, self.season_tau_ms)
            return HOLD
        z = base.judge(value, self.min_std, hour, self.season_ready_ms)
        track.z = z
        signed = -z if self.direction == "below" else z
        distance = abs(z) if self.direction == "either" else signed
        if distance > self.z:
            return FIRE  # not learned: a fault must not become the baseline
        base.learn(value, dt, hour, self.tau_ms, self.season_tau_ms)
        return CALM if distance < self.clear_z else HOLD

    def text(self, track: AnomalyTrack, value: float | None, time_ms: int) -> str:
        base = track.base
        way = "above" if track.z >= 0 else "below"
        when = f" at {base.used_hour:02d}:00" if base.used_hour >= 0 else ""
        usual = f"{fmt_number(base.used_mean)} ± {self.fmt(base.used_std)}"
        return f"{self.metric} {self.fmt(value)} is {abs(track.z):.1f}σ {way} its usual {usual}{when}"

    def forget(self, track: AnomalyTrack) -> None:
        track.base.reset()

    def save(self, track: AnomalyTrack) -> Any:
        return track.base.save() if track.base.n else None

    def load(self, track: AnomalyTrack, data: Any) -> None:
        track.base.load(data)

    def clear_reason(self, track: AnomalyTrack) -> str:
        return f"{self.metric} within {self.clear_z:g}σ of its usual value ({abs(track.z):.1f}σ)"
