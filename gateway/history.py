"""Downsampled history: which source and bucket width answer "at most N points over [from, to)".

Pure (no I/O, the clock is passed in), used by the HTTP API (gateway/history_api.py) and the
``export`` command. The rule:

- ``step = ceil((to - from) / points)`` is the narrowest bucket that keeps to N points.
- The source is the coarsest one whose bucket fits in a step: raw readings while the step is
  under 5 minutes, the 5-minute rollups up to 1 hour, then the 1-hour rollups. Raw readings
  are also skipped when the range starts before the readings' retention cut-off (they were
  deleted; the rollups are kept longer).
- On a rollup tier the range is widened to the tier's grid (``from`` rounded down, ``to``
  rounded up) and the step rounded up to a whole number of rollup buckets, so every bucket
  is made of whole rollup buckets: its min, max, count and average are exact. The answer's
  ``from``/``to`` say which range the buckets cover.

Bucket k covers [from + k*step, from + (k+1)*step); empty buckets are left out, so there are
at most ``points`` buckets.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.errors import UnknownMetric
from gateway.storage.base import RAW, ROLLUP_TIERS, Bucket, ReadingHistory

DEFAULT_POINTS = 500
MAX_POINTS = 5000


@dataclass(frozen=True, slots=True)
class Plan:
    source: str  # RAW or a ROLLUP_TIERS name
    start_ms: int  # the range the buckets cover (widened to the tier's grid for rollups)
    end_ms: int
    step_ms: int


def plan(start_ms: int, end_ms: int, points: int, now_ms: int, readings_retention_ms: int) -> Plan:
    """The source and buckets for at most ``points`` buckets over [start_ms, end_ms)."""
    if end_ms <= start_ms:
        raise ValueError("end must be after start")
    if not 1 <= points <= MAX_POINTS:
        raise ValueError(f"points must be 1..{MAX_POINTS}")
    step = -(-(end_ms - start_ms) // points)
    raw_kept = start_ms >= now_ms - readings_retention_ms
    tiers = sorted(ROLLUP_TIERS.items(), key=lambda item: item[1])
    chosen: tuple[str, int] | None = None
    for name, width in tiers:
        if width <= step:
            chosen = (name, width)
    if chosen is None:
        if raw_kept:
            return Plan(RAW, start_ms, end_ms, step)
        chosen = tiers[0]
    name, width = chosen
    start = start_ms - start_ms % width
    end = end_ms + (-end_ms) % width
    per_point = -(-(end - start) // points)
    return Plan(name, start, end, -(-per_point // width) * width)  # >= per_point: still at most `points`


async def buckets(storage: ReadingHistory, device_id: str, metric: str, chosen: Plan) -> list[Bucket]:
    return await storage.history_buckets(device_id, metric, chosen.start_ms, chosen.end_ms, chosen.step_ms,
                                         chosen.source)


async def check_metric(storage: ReadingHistory, device_id: str, metric: str, param: str) -> None:
    """UnknownMetric (naming ``param`` and listing the device's metrics) unless the device has stored a
    reading of ``metric`` (its latest values, kept after retention, say which metrics it has)."""
    metrics = sorted(await storage.latest(device_id))
    if metric not in metrics:
        raise UnknownMetric(param, device_id, metric, metrics)
