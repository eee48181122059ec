"""Conformance: downsampled history from raw readings and from both rollup tiers agrees with the raw data."""

from __future__ import annotations

import random

import pytest

from gateway import history
from gateway.storage.base import RAW, Bucket, ReadingRow, Storage
from tests.gateway.storage.conftest import DAY, T0, Backend, row


def expected(rows: list[ReadingRow], metric: str, start: int, end: int, step: int) -> list[tuple[int, float, float,
                                                                                                  int]]:
    """(t, min, max, count) per non-empty bucket, computed from the raw rows."""
    buckets: dict[int, list[float]] = {}
    for r in rows:
        if metric in r.metrics and start <= r.time_ms < end:
            buckets.setdefault(start + (r.time_ms - start) // step * step, []).append(r.metrics[metric])
    return [(t, min(v), max(v), len(v)) for t, v in sorted(buckets.items())]


def check_buckets(got: list[Bucket], rows: list[ReadingRow], metric: str, start: int, end: int, step: int) -> None:
    assert [(b.t, b.min, b.max, b.count) for b in got] == expected(rows, metric, start, end, step)
    for b in got:
        values = [r.metrics[metric] for r in rows if metric in r.metrics and b.t <= r.time_ms < b.t + step]
        assert b.avg == pytest.approx(sum(values) / len(values), rel=1e-9)


@pytest.mark.parametrize(("spacing_ms", "source"), [(1000, RAW), (10_000, "5m"), (120_000, "1h")])
def test_bucket_maths_10000_readings_100_points(backend: Backend, spacing_ms: int, source: str) -> None:
    """10,000 raw readings, points=100: at most 100 buckets whose min, max and count agree with the raw data,
    served from raw readings, the 5-minute or the 1-hour rollups depending on the range."""
    rng = random.Random(spacing_ms)
    start = T0 - 3 * DAY + 1234  # not on any grid
    rows = []
    for seq in range(1, 10_001):
        t = start + (seq - 1) * spacing_ms + rng.randrange(spacing_ms // 2)
        metrics = {"humidity": round(rng.uniform(30, 60), 2)}
        if seq % 7:
            metrics["temperature"] = round(rng.uniform(-10, 40), 3)
        rows.append(ReadingRow("H", seq, t, t + 10, metrics))
    end = rows[-1].time_ms + 1

    async def body(s: Storage) -> None:
        await s.prepare(start)  # PostgreSQL: partitions for these days
        rng.shuffle(rows)  # arrival order is not time order
        for i in range(0, len(rows), 1000):
            await s.store(rows[i:i + 1000])
        rows.sort(key=lambda r: r.time_ms)
        plan = history.plan(start, end, 100, now_ms=end, readings_retention_ms=30 * DAY)
        assert plan.source == source
        for metric, total in (("humidity", 10_000), ("temperature", 10_000 - 10_000 // 7)):
            got = await history.buckets(s, "H", metric, plan)
            assert 50 <= len(got) <= 100
            assert sum(b.count for b in got) == total
            check_buckets(got, rows, metric, plan.start_ms, plan.end_ms, plan.step_ms)

    backend.run(body)


def test_rollup_tiers_match_raw_readings(backend: Backend) -> None:
    """Both tiers, bucket by bucket, after out-of-order batches, resends and several devices."""
    rng = random.Random(7)
    rows = [row("R", seq, time_ms=T0 + rng.randrange(6 * 3_600_000), temperature=round(rng.gauss(20, 5), 2))
            for seq in range(1, 3001)]
    other = [row("S", seq, time_ms=T0 + seq * 1000, temperature=99.0) for seq in range(1, 500)]

    async def body(s: Storage) -> None:
        for i in range(0, 3000, 250):
            await s.store(rows[i:i + 250] + other[i // 10:i // 10 + 20])
        await s.store(rows[100:400])  # resends change nothing
        lo = T0 - T0 % 3_600_000
        hi = lo + 8 * 3_600_000
        for tier, width in (("5m", 300_000), ("1h", 3_600_000)):
            got = await s.history_buckets("R", "temperature", lo, hi, width, tier)
            check_buckets(got, rows, "temperature", lo, hi, width)
            # wider steps are sums of whole rollup buckets
            got = await s.history_buckets("R", "temperature", lo, hi, 2 * width, tier)
            check_buckets(got, rows, "temperature", lo, hi, 2 * width)
        raw = await s.history_buckets("R", "temperature", T0 + 17, T0 + 17 + 3_600_000, 60_000)
        check_buckets(raw, rows, "temperature", T0 + 17, T0 + 17 + 3_600_000, 60_000)
        with pytest.raises(ValueError):
            await s.history_buckets("R", "temperature", lo + 1, hi, 300_000, "5m")
        with pytest.raises(ValueError):
            await s.history_buckets("R", "temperature", lo, hi, 300_000, "1d")
        assert await s.history_buckets("R", "pressure", lo, hi, 300_000, "5m") == []
        assert await s.history_buckets("nobody", "temperature", lo, hi, 1000) == []

    backend.run(body)
