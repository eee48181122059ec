"""SQLiteStorage specifics: pragmas, schema migrations, samples, lock behaviour, batched retention.

The behaviour every backend shares (exactly once, group commit, history, rollups, retention,
registry, alerts) is tested by the conformance suite in tests/gateway/storage/."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import ConfigError, StorageError
from gateway.storage import sqlite as sqlite_mod
from gateway.storage import sqlite_core, sqlite_schema
from gateway.storage.base import DeviceRecord, ReadingRow
from gateway.storage.sqlite import SQLiteStorage
from tests.helpers.storage import with_sqlite as with_storage


def row(device: str, seq: int, time_ms: int | None = None, **metrics: float) -> ReadingRow:
    t = 1_764_080_000_000 + seq * 1000 if time_ms is None else time_ms
    return ReadingRow(device, seq, t, t + 5, metrics or {"temperature": 20.0 + seq, "humidity": 40.0},
                      boot="b1", device_ts=t, uptime_ms=seq * 1000, quality="ok")


def sample_count(path: Path, device: str) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT count(*) FROM samples WHERE device_id = ?", (device,)).fetchone()[0])


def test_pragmas_and_schema_version(tmp_path: Path) -> None:
    db = tmp_path / "e.db"

    async def write(s: SQLiteStorage) -> None:
        assert s._wconn is not None
        assert s._wconn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL: an ack means fsynced
        await s.store([row("A", i) for i in range(1, 101)])

    with_storage(db, write)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == sqlite_mod.SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_samples_follow_the_readings(tmp_path: Path) -> None:
    """One sample per metric of each stored reading; none for a duplicate; deleted with their reading."""
    db = tmp_path / "e.db"

    async def body(s: SQLiteStorage) -> None:
        await s.store([row("A", i) for i in range(1, 9)] + [row("A", 9, temperature=1.0)])
        await s.store([row("A", i, temperature=99.0) for i in range(3, 10)])
        assert sample_count(db, "A") == 17  # 8 readings x 2 metrics + seq 9 with 1
        await s.expire(1_764_080_000_000 + 5_000, 0)  # seqs 1..4
        assert sample_count(db, "A") == 9

    with_storage(db, body)


def test_version_1_database_is_migrated_with_its_history(tmp_path: Path) -> None:
    """A database written by the previous gateway gets device state, latest values and rollups backfilled."""
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:
        for statement in sqlite_mod._split_script(sqlite_mod.MIGRATIONS[0]):
            conn.execute(statement)
        conn.executemany(sqlite_core.INSERT_READING, sqlite_schema.reading_tuples(
            [row("A", i, time_ms=1_764_080_000_000 + i * 60_000) for i in range(1, 121)]
            + [row("B", 7, time_ms=5, co2=400.0)]))
        conn.execute("PRAGMA user_version = 1")

    async def body(s: SQLiteStorage) -> None:
        assert await s.last_seq("A") == 120 and await s.last_seq("B") == 7
        assert await s.latest("A") == {"temperature": (140.0, 1_764_080_000_000 + 120 * 60_000),
                                       "humidity": (40.0, 1_764_080_000_000 + 120 * 60_000)}
        states = await s.device_states()
        assert (states["B"].last_seq, states["B"].latest) == (7, {"co2": (400.0, 5)})
        hours = await s.history_buckets("A", "temperature", 0, 3_600_000 * 500_000, 3_600_000, "1h")
        assert sum(b.count for b in hours) == 120
        assert hours[0].min == 21.0
        await s.store([row("A", 120), row("A", 121)])
        assert await s.count_readings("A") == 121

    with_storage(db, body)


def test_expire_deletes_in_small_transactions_between_group_commits(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_mod, "EXPIRE_BATCH", 100)
    db = tmp_path / "e.db"

    async def body(s: SQLiteStorage) -> None:
        await s.store([row("A", i, time_ms=1000 + i) for i in range(1, 3001)])
        writes = 0
        real_write = s._write

        async def counting_write(fn: Callable[[sqlite3.Connection], Any]) -> Any:
            nonlocal writes
            writes += 1
            return await real_write(fn)

        s._write = counting_write  # type: ignore[method-assign]
        expire = asyncio.ensure_future(s.expire(10_000, 0))
        await asyncio.sleep(0)
        await s.store([row("B", 1)])
        assert not expire.done()  # the store went in between two small deletes, not after all of them
        result = await expire
        assert result.readings == 3000 and writes >= 30
        assert await s.count_readings() == 1

    with_storage(db, body)


def test_history_and_latest_use_the_primary_key(tmp_path: Path) -> None:
    db = tmp_path / "e.db"
    with_storage(db, lambda s: s.store([row("A", 1)]))
    with sqlite3.connect(db) as conn:
        plan = " ".join(r[3] for r in conn.execute(
            "EXPLAIN QUERY PLAN SELECT time_ms, value FROM samples WHERE device_id = 'A' AND metric = 'x'"
            " AND time_ms >= 0 AND time_ms < 9 ORDER BY time_ms, seq LIMIT 5"))
        assert "USING PRIMARY KEY" in plan and "TEMP B-TREE" not in plan


def test_locked_database_fails_with_storage_error_and_stores_nothing(tmp_path: Path) -> None:
    db = tmp_path / "e.db"

    async def body(s: SQLiteStorage) -> None:
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another process holding the write lock
        try:
            with pytest.raises(StorageError, match="failed"):
                await s.store([row("A", 1), row("A", 2)])
            # Readers are not blocked by a writer.
            assert await s.get_device("A") is None
            assert await s.last_seq("A") == 0
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        await s.store([row("A", 1), row("A", 2)])
        assert await s.seqs("A") == [1, 2]

    with_storage(db, body, busy_timeout_ms=100)


def test_reads_are_not_queued_behind_a_blocked_writer(tmp_path: Path) -> None:
    db = tmp_path / "e.db"

    async def body(s: SQLiteStorage) -> None:
        await s.put_device(DeviceRecord("A", True, b"d" * 32))
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        pending = asyncio.ensure_future(s.store([row("A", 1)]))  # waits for the lock (busy_timeout)
        try:
            record = await s.device_by_token_digest(b"d" * 32)
            assert record is not None and record.device_id == "A"
            assert not pending.done()
        finally:
            blocker.execute("COMMIT")
            blocker.close()
        await pending
        assert await s.seqs("A") == [1]

    with_storage(db, body, busy_timeout_ms=60_000)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "e.db"
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version = {sqlite_mod.SCHEMA_VERSION + 1}")

    async def main() -> None:
        with pytest.raises(StorageError, match="newer"):
            await SQLiteStorage(db).open()

    asyncio.run(main())


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        SQLiteStorage(tmp_path / "e.db", synchronous="FULL; DROP TABLE x")
    with pytest.raises(ConfigError):
        SQLiteStorage(":memory:")

    async def main() -> None:
        with pytest.raises(StorageError, match="does not exist"):
            await SQLiteStorage(tmp_path / "missing" / "e.db").open()

    asyncio.run(main())
