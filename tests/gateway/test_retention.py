"""The retention task: hourly, with an injected clock; cut-offs from the configured ages; failures retried."""

from __future__ import annotations

import asyncio

import pytest

from gateway.errors import StorageError
from gateway.retention import Retention
from gateway.storage.base import DAY_MS, Expired


class FakeStorage:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []
        self.fail = 0

    async def prepare(self, now_ms: int) -> None:
        self.calls.append(("prepare", now_ms, 0))

    async def expire(self, readings_before_ms: int, rollups_before_ms: int) -> Expired:
        if self.fail:
            self.fail -= 1
            raise StorageError("database unreachable (injected)")
        self.calls.append(("expire", readings_before_ms, rollups_before_ms))
        return Expired(readings=3, rollups=1)


def test_run_once_uses_the_clock_and_the_configured_ages() -> None:
    storage = FakeStorage()
    now = 1_764_080_000.5
    retention = Retention(storage, readings_days=30, rollup_days=730, clock=lambda: now)
    result = asyncio.run(retention.run_once())
    assert result == Expired(readings=3, rollups=1)
    assert storage.calls == [("prepare", 1_764_080_000_500, 0),
                             ("expire", 1_764_080_000_500 - 30 * DAY_MS, 1_764_080_000_500 - 730 * DAY_MS)]


def test_runs_every_interval_and_survives_failures() -> None:
    storage = FakeStorage()
    storage.fail = 1
    clock = [1000.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds
        if len(slept) == 3:
            raise asyncio.CancelledError

    retention = Retention(storage, 1, 2, clock=lambda: clock[0], sleep=sleep)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(retention.run_forever())
    assert slept == [3600.0] * 3
    assert retention.failures == 1 and retention.runs == 2
    assert [c[1] for c in storage.calls if c[0] == "prepare"] == [1_000_000, 4_600_000, 8_200_000]
    assert [c[1] for c in storage.calls if c[0] == "expire"] == [4_600_000 - DAY_MS, 8_200_000 - DAY_MS]
