"""An online baseline of one series: what its value usually is, and how much it usually varies.

- **EWMA** of the mean and of the variance, weighted by time: a reading ``dt`` after the
  previous one has weight ``1 - exp(-dt / tau)`` (at least ``1/n`` while young, so the first
  readings average plainly). The variance update is the exponentially weighted one
  (West 1979): ``var = (1 - a) * (var + diff * a * diff)``.
- **Seasonal**: the same per local hour of day (24 buckets of mean, variance, count) with a
  memory of ``season_days`` days: each bucket learns only during its hour, its readings
  spaced by at most 10 minutes of "bucket time". It is used once the series is ``min_days``
  old and the current hour's bucket holds enough readings; a slow daily cycle is then
  expected at each hour instead of being averaged over the day.
- ``judge`` answers the z-score of a value against the baseline in use; the caller decides
  whether to ``learn`` it (the anomaly rule does not while the value is anomalous, so a
  persistent fault never becomes "normal").

State: 5 numbers plus 72 in a flat array, allocated once.
"""

from __future__ import annotations

import math
from array import array
from typing import Any

DAY_MS = 86_400_000
HOUR_BUCKET_MIN = 10  # readings an hour bucket needs before it is used
SEASON_STEP_CAP_MS = 600_000


class Baseline:
    __slots__ = ("first", "last", "mean", "n", "season", "used_hour", "used_mean", "used_std", "var")

    def __init__(self, seasonal: bool) -> None:
        self.n = 0
        self.mean = 0.0
        self.var = 0.0
        self.first = -1  # time of the first learned reading
        self.last = -1  # time of the latest reading seen (learned or not)
        self.season: array[float] | None = array("d", bytes(8 * 72)) if seasonal else None
        # what the last judge used (for the alert text)
        self.used_mean = 0.0
        self.used_std = 0.0
        self.used_hour = -1  # the hour bucket, -1 for the EWMA

    def reset(self) -> None:
        """Forget everything learned (the alert was cleared by hand: the new level is normal)."""
        self.n = 0
        self.mean = self.var = 0.0
        self.first = self.last = -1
        if self.season is not None:
            for i in range(72):
                self.season[i] = 0.0

    def judge(self, value: float, min_std: float, hour: int, season_ready_ms: int) -> float:
        """The z-score of ``value``; ``hour`` selects the seasonal bucket when the series is old enough."""
        mean, var, used_hour = self.mean, self.var, -1
        season = self.season
        if season is not None and self.first >= 0 and self.last - self.first >= season_ready_ms:
            i = 3 * hour
            if season[i + 2] >= HOUR_BUCKET_MIN:
                mean, var, used_hour = season[i], season[i + 1], hour
        std = math.sqrt(var) if var > 0 else 0.0
        if std < min_std:
            std = min_std
        self.used_mean, self.used_std, self.used_hour = mean, std, used_hour
        return (value - mean) / std

    def seen(self, time_ms: int) -> int:
        """Note a reading's time; return the time since the previous one (0 for the first)."""
        dt = time_ms - self.last if self.last >= 0 else 0
        if time_ms > self.last:
            self.last = time_ms
        return dt if dt > 0 else 0

    def learn(self, value: float, dt: int, hour: int, tau_ms: float, season_tau_ms: float) -> None:
        n = self.n + 1
        self.n = n
        if self.first < 0:
            self.first = self.last
        a = 1.0 - math.exp(-dt / tau_ms) if dt else 0.0
        if a < 1.0 / n:
            a = 1.0 / n
        diff = value - self.mean
        incr = a * diff
        self.mean += incr
        self.var = (1.0 - a) * (self.var + diff * incr)
        season = self.season
        if season is not None:
            i = 3 * hour
            count = season[i + 2] + 1.0
            season[i + 2] = count
            step = dt if dt < SEASON_STEP_CAP_MS else SEASON_STEP_CAP_MS
            a = 1.0 - math.exp(-step / season_tau_ms) if step else 0.0
            if a < 1.0 / count:
                a = 1.0 / count
            diff = value - season[i]
            incr = a * diff
            season[i] += incr
            season[i + 1] = (1.0 - a) * (season[i + 1] + diff * incr)

    # -- persistence (JSON-able)
    def save(self) -> list[Any]:
        season = None if self.season is None else [round(v, 6) for v in self.season]
        return [self.n, self.mean, self.var, self.first, self.last, season]

    def load(self, data: list[Any]) -> None:
        n, mean, var, first, last, season = data
        self.n, self.mean, self.var, self.first, self.last = int(n), float(mean), float(var), int(first), int(last)
        if self.season is not None and season is not None:
            if len(season) != 72:
                raise ValueError("a seasonal baseline has 72 numbers")
            self.season = array("d", (float(v) for v in season))
