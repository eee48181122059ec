"""Retention and storage upkeep, applied hourly: old readings and rollups go, partitions are made ahead.

The clock and the sleep are injected, so tests drive it without waiting an hour.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from gateway.errors import StorageError
from gateway.logs import log
from gateway.storage.base import DAY_MS, Expired, Upkeep

INTERVAL_S = 3600.0


class Retention:
    """Every ``interval_s``: ``storage.prepare(now)``, then ``storage.expire`` with the configured ages."""

    def __init__(self, storage: Upkeep, readings_days: int, rollup_days: int,
                 clock: Callable[[], float] = time.time, interval_s: float = INTERVAL_S,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.storage = storage
        self.readings_ms = readings_days * DAY_MS
        self.rollups_ms = rollup_days * DAY_MS
        self.clock = clock
        self.interval_s = interval_s
        self.sleep = sleep
        self.runs = 0
        self.failures = 0

    async def run_once(self) -> Expired:
        now_ms = int(self.clock() * 1000)
        await self.storage.prepare(now_ms)
        started = time.monotonic()
        result = await self.storage.expire(now_ms - self.readings_ms, now_ms - self.rollups_ms)
        self.runs += 1
        if result.readings or result.rollups or result.partitions:
            log("retention_applied", readings=result.readings, rollups=result.rollups,
                partitions=result.partitions, seconds=round(time.monotonic() - started, 3))
        return result

    async def run_forever(self) -> None:
        """Run now, then every interval. A failure is logged and retried at the next interval."""
        while True:
            try:
                await self.run_once()
            except (StorageError, OSError) as err:
                self.failures += 1
                log("retention_failed", logging.WARNING, error=str(err))
            await self.sleep(self.interval_s)
