"""An alert engine on a real SQLite file, an injected clock, and the events it emitted."""

from __future__ import annotations

import asyncio
import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from gateway.alerts.engine import AlertEngine
from gateway.alerts.model import AlertEvent
from gateway.alerts.rules import parse_rules
from gateway.storage.base import Storage
from gateway.storage.sqlite import SQLiteStorage

T0 = 1_764_080_000_000  # 2025-11-25 14:13:20 UTC
MIN = 60_000
HOUR = 3_600_000
DAY = 86_400_000


class Clock:
    def __init__(self, ms: int = T0) -> None:
        self.ms = ms

    def __call__(self) -> float:
        return self.ms / 1000


class Harness:
    """``async with Harness(path, rules) as h``: the engine started, its writer running."""

    def __init__(self, db: Path, rules: list[dict[str, Any]] | None, storage: Storage | None = None,
                 clock: Clock | None = None, **engine_kw: Any) -> None:
        self.storage = storage or SQLiteStorage(db)
        self.clock = clock or Clock()
        specs = None if rules is None else parse_rules(rules)
        engine_kw.setdefault("timezone", datetime.UTC)
        self.engine = AlertEngine(self.storage, specs, clock=self.clock, **engine_kw)
        self.events: list[AlertEvent] = []
        self.engine.listen(self.events.append)
        self._writer: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Harness:
        await self.storage.open()
        await self.engine.start()
        self._writer = asyncio.get_running_loop().create_task(self.engine.writer.run())
        return self

    async def __aexit__(self, kind: type[BaseException] | None, err: BaseException | None,
                        tb: TracebackType | None) -> None:
        if err is None:
            await self.engine.close()
        assert self._writer is not None
        self._writer.cancel()
        await asyncio.gather(self._writer, return_exceptions=True)
        await self.storage.close()

    def feed(self, device: str, metrics: dict[str, float], at_ms: int | None = None,
             quality: str | None = None) -> None:
        """One reading at ``at_ms`` (default: the clock), which also becomes the clock's time."""
        if at_ms is not None:
            self.clock.ms = at_ms
        t = self.clock.ms
        self.engine.reading(device, metrics, t, t, quality)

    def series(self, device: str, metric: str, values: list[float], start_ms: int, step_ms: int,
               quality: str | None = None) -> int:
        """Feed ``values`` one ``step_ms`` apart from ``start_ms``; returns the time after the last."""
        t = start_ms
        for value in values:
            self.feed(device, {metric: value}, t, quality)
            t += step_ms
        return t

    async def settle(self) -> None:
        assert await self.engine.writer.flush(10), "alert changes not stored within 10 s"

    def kinds(self, updates: bool = False) -> list[tuple[str, str, str]]:
        """(event, device, rule) of the events so far; "updated" ones only if ``updates``."""
        return [(e.kind, e.alert["device"], e.alert["rule"]) for e in self.events if updates or e.kind != "updated"]

    def open(self) -> list[dict[str, Any]]:
        return self.engine.open_alerts()
