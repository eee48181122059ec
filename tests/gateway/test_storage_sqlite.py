"""SQLiteStorage: exactly-once per (device, seq), group commit, close/flush, reopen, queries, alerts."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import ConfigError, StorageError
from gateway.storage import sqlite as sqlite_mod
from gateway.storage.base import DeviceRecord, ReadingRow
from gateway.storage.sqlite import SQLiteStorage


def row(device: str, seq: int, time_ms: int | None = None, **metrics: float) -> ReadingRow:
    t = 1_764_080_000_000 + seq * 1000 if time_ms is None else time_ms
    return ReadingRow(device, seq, t, t + 5, metrics or {"temperature": 20.0 + seq, "humidity": 40.0},
                      boot="b1", device_ts=t, uptime_ms=seq * 1000, quality="ok")


def with_storage(path: Path, body: Callable[[SQLiteStorage], Awaitable[Any]], **kwargs: Any) -> Any:
    async def main() -> Any:
        storage = SQLiteStorage(path, **kwargs)
        await storage.open()
        try:
            return await body(storage)
        finally:
            await storage.close()

    return asyncio.run(main())


def sample_count(path: Path, device: str) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT count(*) FROM samples WHERE device_id = ?", (device,)).fetchone()[0])


def test_store_and_read_back(tmp_path: Path) -> None:
    db = tmp_path / "e.db"

    async def body(s: SQLiteStorage) -> None:
        await s.store([row("A", i) for i in range(1, 11)])
        assert await s.seqs("A") == list(range(1, 11))
        assert await s.last_seq("A") == 10
        assert await s.last_seq("nobody") == 0
        assert await s.count_readings("A") == 10
        assert await s.count_readings() == 10
        assert await s.latest("A") == {"temperature": (30.0, 1_764_080_010_000),
                                       "humidity": (40.0, 1_764_080_010_000)}

    with_storage(db, body)
    assert sample_count(db, "A") == 20


def test_duplicates_ignored_across_and_within_batches(tmp_path: Path) -> None:
    db = tmp_path / "e.db"

    async def body(s: SQLiteStorage) -> None:
        await s.store([row("A", i) for i in range(1, 6)])
        # Overlapping resend: seqs 3..8, where 3..5 carry different times and values.
        resend = [row("A", i, time_ms=5_000 + i, temperature=99.0) for i in range(3, 6)]
        await s.store(resend + [row("A", i) for i in range(6, 9)])
        # The same seq twice in one batch: the first wins.
        await s.store([row("A", 9, temperature=1.0), row("A", 9, time_ms=7, temperature=2.0), row("B", 1)])
        assert await s.seqs("A") == list(range(1, 10))
        assert await s.seqs("B") == [1]
        temps = await s.history("A", "temperature", 0, 2**62)
        assert len(temps) == 9  # one sample per stored reading, none from duplicates
        assert 99.0 not in [v for _, v in temps]
        assert (1_764_080_009_000, 1.0) in temps
        assert s.rows_inserted == 10

    with_storage(db, body)
    assert sample_count(db, "A") == 17  # 8 readings x 2 metrics + seq 9 with 1


def test_concurrent_stores_are_group_committed(tmp_path: Path) -> None:
    callers, per_call = 40, 25

    async def body(s: SQLiteStorage) -> None:
        await asyncio.gather(*(s.store([row(f"D{c}", i) for i in range(1, per_call + 1)])
                               for c in range(callers)))
        assert await s.count_readings() == callers * per_call
        for c in range(callers):
            assert await s.seqs(f"D{c}") == list(range(1, per_call + 1))
        # The batch closes when it holds max_batch_rows rows (the long interval only bounds the wait).
        assert s.commits == 1

    with_storage(tmp_path / "e.db", body, commit_interval_ms=60_000, max_batch_rows=callers * per_call)


def test_close_commits_what_is_queued(tmp_path: Path) -> None:
    db = tmp_path / "e.db"

    async def main() -> list[Any]:
        s = SQLiteStorage(db, commit_interval_ms=60_000)
        await s.open()
        tasks = [asyncio.ensure_future(s.store([row(f"D{c}", i) for i in range(1, 11)])) for c in range(5)]
        await asyncio.sleep(0)  # the tasks queue their rows
        await s.close()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await s.close()  # idempotent
        with pytest.raises(StorageError):
            await s.store([row("late", 1)])
        return results

    assert asyncio.run(main()) == [None] * 5

    async def check(s: SQLiteStorage) -> None:
        assert await s.count_readings() == 50

    with_storage(db, check)


def test_data_survives_reopen(tmp_path: Path) -> None:
    db = tmp_path / "e.db"

    async def write(s: SQLiteStorage) -> None:
        assert s._wconn is not None
        assert s._wconn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL: an ack means fsynced
        await s.store([row("A", i) for i in range(1, 101)])
        await s.put_device(DeviceRecord("A", True, b"\x01" * 32, ["10.0.0.0/8"], "lab", 5, 6))
        await s.raise_alert("A", "temperature", "temperature > 30", 1000, 31.5)

    async def read(s: SQLiteStorage) -> None:
        assert await s.seqs("A") == list(range(1, 101))
        assert (await s.latest("A"))["temperature"] == (120.0, 1_764_080_100_000)
        assert await s.get_device("A") == DeviceRecord("A", True, b"\x01" * 32, ["10.0.0.0/8"], "lab", 5, 6)
        assert [a.value for a in await s.active_alerts()] == [31.5]

    with_storage(db, write)
    with_storage(db, read)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == sqlite_mod.SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_latest_is_newest_time_per_metric_and_history_is_a_half_open_range(tmp_path: Path) -> None:
    async def body(s: SQLiteStorage) -> None:
        await s.store([
            row("A", 1, time_ms=3000, temperature=3.0),
            row("A", 2, time_ms=1000, temperature=1.0, co2=400.0),  # late arrival of an older reading
            row("A", 3, time_ms=2000, temperature=2.0),
            row("A", 4, time_ms=4000, humidity=44.0),
            row("B", 1, time_ms=9000, temperature=-5.0),
        ])
        assert await s.latest("A") == {"temperature": (3.0, 3000), "co2": (400.0, 1000),
                                       "humidity": (44.0, 4000)}
        assert await s.latest("B") == {"temperature": (-5.0, 9000)}
        assert await s.latest("C") == {}
        assert await s.history("A", "temperature", 0, 10_000) == [(1000, 1.0), (2000, 2.0), (3000, 3.0)]
        assert await s.history("A", "temperature", 1000, 3000) == [(1000, 1.0), (2000, 2.0)]
        assert await s.history("A", "temperature", 0, 10_000, limit=1) == [(1000, 1.0)]
        assert await s.history("A", "pressure", 0, 10_000) == []

    with_storage(tmp_path / "e.db", body)


def test_history_and_latest_use_the_primary_key(tmp_path: Path) -> None:
    db = tmp_path / "e.db"
    with_storage(db, lambda s: s.store([row("A", 1)]))
    with sqlite3.connect(db) as conn:
        plan = " ".join(r[3] for r in conn.execute(
            "EXPLAIN QUERY PLAN SELECT time_ms, value FROM samples WHERE device_id = 'A' AND metric = 'x'"
            " AND time_ms >= 0 AND time_ms < 9 ORDER BY time_ms, seq LIMIT 5"))
        assert "USING PRIMARY KEY" in plan and "TEMP B-TREE" not in plan


def test_bad_rows_fail_only_their_caller(tmp_path: Path) -> None:
    async def body(s: SQLiteStorage) -> None:
        results = await asyncio.gather(
            s.store([row("good", 1)]),
            s.store([row("nan", 1, temperature=float("nan"))]),
            s.store([ReadingRow("obj", 1, 1, 1, {"temperature": object()})]),  # type: ignore[dict-item]
            s.store([row("good", 2)]),
            return_exceptions=True)
        assert results[0] is None and results[3] is None
        assert isinstance(results[1], StorageError) and isinstance(results[2], StorageError)
        assert await s.seqs("good") == [1, 2]
        assert await s.seqs("nan") == [] and await s.seqs("obj") == []

    with_storage(tmp_path / "e.db", body, commit_interval_ms=50)


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


def test_registry_rows(tmp_path: Path) -> None:
    async def body(s: SQLiteStorage) -> None:
        rec = DeviceRecord("S-1", True, b"\xaa" * 32, [], "", 10, 10)
        assert await s.create_device(rec) is True
        assert await s.create_device(DeviceRecord("S-1", True, b"\xbb" * 32)) is False
        assert await s.get_device("S-1") == rec
        assert await s.device_by_token_digest(b"\xaa" * 32) == rec
        assert await s.device_by_token_digest(b"\xbb" * 32) is None
        rec.token_digest = None
        rec.enabled = False
        await s.put_device(rec)
        await s.put_device(DeviceRecord("S-0", True, None))  # two revoked devices: NULL is not unique
        assert await s.device_by_token_digest(b"\xaa" * 32) is None
        assert [d.device_id for d in await s.list_devices()] == ["S-0", "S-1"]
        assert (await s.get_device("S-1")) == rec
        await s.put_device(DeviceRecord("S-2", True, b"\xcc" * 32))
        with pytest.raises(StorageError):  # a digest names one device only
            await s.put_device(DeviceRecord("S-3", True, b"\xcc" * 32))

    with_storage(tmp_path / "e.db", body)


def test_alerts(tmp_path: Path) -> None:
    async def body(s: SQLiteStorage) -> None:
        a1 = await s.raise_alert("A", "temperature", "temperature > 30", 1000, 31.0)
        a2 = await s.raise_alert("B", "temperature", "temperature > 30", 2000, 35.0)
        assert a1 != a2
        assert [a.alert_id for a in await s.active_alerts()] == [a1, a2]
        await s.clear_alert(a1, 3000, 28.5)
        await s.clear_alert(a1, 4000, 10.0)  # already cleared: unchanged
        active = await s.active_alerts()
        assert [(a.alert_id, a.device_id, a.value) for a in active] == [(a2, "B", 35.0)]
        history = await s.alerts()
        assert [a.alert_id for a in history] == [a2, a1]
        assert (history[1].cleared_ms, history[1].clear_value) == (3000, 28.5)
        assert [a.alert_id for a in await s.alerts("A")] == [a1]
        assert [a.alert_id for a in await s.alerts(limit=1)] == [a2]

    with_storage(tmp_path / "e.db", body)


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


def test_one_instance_can_be_reopened(tmp_path: Path) -> None:
    async def main() -> None:
        s = SQLiteStorage(tmp_path / "e.db")
        await s.open()
        await s.store([row("A", 1)])
        await s.store([])
        await s.close()
        with pytest.raises(StorageError, match="closed"):
            await s.last_seq("A")
        await s.open()
        try:
            await s.store([row("A", 2)])
            assert await s.seqs("A") == [1, 2]
        finally:
            await s.close()

    asyncio.run(main())
