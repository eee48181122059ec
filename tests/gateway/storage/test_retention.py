"""Conformance: retention deletes old readings and old rollups; device state and latest values stay."""

from __future__ import annotations

import asyncio

import pytest

from gateway.storage import postgresql as postgresql_mod
from gateway.storage import sqlite as sqlite_mod
from gateway.storage.base import ReadingRow, Storage
from tests.gateway.storage.conftest import DAY, T0, Backend, rollup_count, row

DAY0 = T0 - T0 % DAY  # 2025-11-25T00:00Z


def five_days() -> list[ReadingRow]:
    """40 readings per day over five days (seq order = time order), plus one from 1970 and one far ahead."""
    rows = [row("A", 1 + d * 40 + i, time_ms=DAY0 + d * DAY + i * 2_000_000) for d in range(5) for i in range(40)]
    rows.append(row("A", 1000, time_ms=5_000))  # a device clock far behind
    rows.append(row("B", 1, time_ms=DAY0 + 400 * DAY))  # and one far ahead
    return rows


def test_expire_readings_and_rollups(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_mod, "EXPIRE_BATCH", 7)  # many small deletes, as on a large backlog
    monkeypatch.setattr(postgresql_mod, "EXPIRE_BATCH", 7)

    async def body(s: Storage) -> None:
        for day in range(5):
            await s.prepare(DAY0 + day * DAY)  # PostgreSQL: partitions for the five days
        await s.store(five_days())
        latest = await s.latest("A")
        assert await s.count_readings() == 202
        # Readings before day 3, rollups before day 1.
        result = await s.expire(DAY0 + 3 * DAY, DAY0 + DAY)
        assert result.readings == 3 * 40 + 1
        assert await s.count_readings("A") == 80
        assert await s.count_readings("B") == 1
        assert min(r.time_ms for r in await s.readings("A", 0, 2**62)) == DAY0 + 3 * DAY
        # Rollups: day 0 and 1970 gone (per metric and tier), days 1-4 kept.
        assert result.rollups > 0
        assert await rollup_count(s, "A", "temperature", "1h") == 4 * 40
        assert await rollup_count(s, "A", "humidity", "5m") == 4 * 40
        # The watermark and the latest values stay: the device is not renumbered, the dashboard keeps them.
        assert await s.last_seq("A") == 1000
        assert await s.latest("A") == latest
        await s.store([row("A", 5, time_ms=DAY0 + 4 * DAY)])  # below the watermark and deleted: a new row
        again = await s.expire(DAY0 + 3 * DAY, DAY0 + DAY)
        assert (again.readings, again.rollups) == (0, 0)

    backend.run(body)


def test_expire_runs_alongside_stores(backend: Backend) -> None:
    """Stores issued while retention runs complete, and nothing new is deleted."""

    async def body(s: Storage) -> None:
        for day in range(5):
            await s.prepare(DAY0 + day * DAY)
        old = [row(f"D{d}", i, time_ms=DAY0 + i * 10_000) for d in range(5) for i in range(1, 1501)]
        await s.store(old)
        new = [[row(f"D{d}", 2000 + i, time_ms=DAY0 + 3 * DAY + i) for i in range(20)] for d in range(5)]
        expire = asyncio.ensure_future(s.expire(DAY0 + 2 * DAY, 0))
        await asyncio.gather(*(s.store(batch) for batch in new))
        result = await expire
        assert result.readings == 5 * 1500
        assert await s.count_readings() == 5 * 20

    backend.run(body)
