"""The storage conformance suite runs every test against each backend: SQLite and a real PostgreSQL 15."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.storage.base import ReadingRow, Storage
from gateway.storage.postgresql import PostgresStorage
from gateway.storage.sqlite import SQLiteStorage
from tests.helpers.storage import with_storage

T0 = 1_764_080_000_000  # 2025-11-25T14:13:20Z
DAY = 86_400_000
END = 3_600_000 * 1_000_000  # year 2084: on every rollup grid


async def rollup_count(s: Storage, device: str, metric: str, tier: str) -> int:
    """Readings of ``metric`` counted by the ``tier`` rollups of the device, all time."""
    width = {"5m": 300_000, "1h": 3_600_000}[tier]
    return sum(b.count for b in await s.history_buckets(device, metric, 0, END, width, tier))


def row(device: str, seq: int, time_ms: int | None = None, **metrics: float) -> ReadingRow:
    t = T0 + seq * 1000 if time_ms is None else time_ms
    return ReadingRow(device, seq, t, t + 5, metrics or {"temperature": 20.0 + seq, "humidity": 40.0},
                      boot="b1", device_ts=t, uptime_ms=seq * 1000, quality="ok")


class Backend:
    """Makes storage instances of one backend, all on the same database (so a new one is a restart)."""

    def __init__(self, name: str, factory: Callable[..., Storage], target: str) -> None:
        self.name = name
        self._factory = factory
        self.target = target  # the database file or DSN

    def make(self, **kwargs: Any) -> Storage:
        return self._factory(**kwargs)

    def run(self, body: Callable[[Any], Awaitable[Any]], **kwargs: Any) -> Any:
        """Open a storage, run ``body(storage)`` in a fresh event loop, close it."""
        return with_storage(lambda: self.make(**kwargs), body)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        db = tmp_path / "e.db"
        return Backend("sqlite", lambda **kw: SQLiteStorage(db, **kw), str(db))
    dsn: str = request.getfixturevalue("postgres_dsn")

    def make(**kw: Any) -> Storage:
        kw.setdefault("clock", lambda: T0 / 1000)  # partitions around the test data's days
        return PostgresStorage(dsn, **kw)

    return Backend("postgresql", make, dsn)
