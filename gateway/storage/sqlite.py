"""SQLite storage: WAL, ``synchronous=FULL`` by default, group commit on one writer thread.

Contract (see base.Storage): ``store`` returns only after its rows are committed; a
row whose (device_id, seq) is already stored is ignored, and so are its samples.

Threads: one writer thread owns the read-write connection and runs every write
(readings in group commits, registry and alert changes in their own transactions).
Reads run on a small pool of read-only connections, so an auth lookup never waits
behind a commit (WAL lets readers run while a writer commits).

Modules: sqlite_core.py (the file, the writer thread, the readers), sqlite_schema.py (the
migrations), sqlite_registry.py (devices, dashboard tokens), sqlite_alerts.py (alerts, rules,
baselines), sqlite_forward.py (the forward log and sink cursors); this one: ``SQLiteStorage``,
with readings, history and rollups, retention and forwarding.

Schema (``PRAGMA user_version`` = SCHEMA_VERSION):

- ``readings(device_id, seq, ...)`` one row per reading, PRIMARY KEY (device_id, seq),
  WITHOUT ROWID; ``ON CONFLICT DO NOTHING`` makes a duplicate seq a no-op.
- ``samples(device_id, metric, time_ms, seq, value)`` one row per metric value,
  PRIMARY KEY (device_id, metric, time_ms, seq) for history range scans and the
  latest value per metric. Filled by an AFTER INSERT trigger on ``readings`` (from
  the metrics JSON), so only a reading that was really inserted adds samples. (Not
  ``INSERT OR IGNORE``: its conflict mode would also silence the trigger's NOT NULL
  and CHECK constraints, storing a NaN reading without its sample.)
- ``device_state(device_id, last_seq, last_seen_ms)`` the watermark (highest seq stored)
  and last receive time; ``latest(device_id, metric, value, time_ms, seq)`` the newest
  value per metric; ``rollup_5m`` / ``rollup_1h(device_id, metric, bucket_ms, n, vsum,
  vmin, vmax)`` the rollup tiers. All four are merged in the group commit's transaction
  from exactly the readings it inserted (gateway/storage/ingest.py), so they never count
  a duplicate and an ack covers them.
- ``devices`` (the registry) and ``alerts``.
- ``forward_log`` and ``forward_cursors`` (gateway/storage/sqlite_forward.py, created at every
  open): the storage order forwarders read, written in the group commit's transaction while
  some sink cursor exists.

Retention (``expire``) deletes old readings device by device in transactions of at most
``EXPIRE_BATCH`` readings, queued on the writer thread between group commits, so ingestion
never waits for more than one small delete. A trigger deletes each reading's samples.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from gateway.storage import sqlite_forward as fwd
from gateway.storage.base import (
    RAW,
    ROLLUP_TIERS,
    Bucket,
    DeviceState,
    Expired,
    LogPosition,
    ReadingRow,
    SinkCursor,
    check_tier,
)
from gateway.storage.sqlite_alerts import SQLiteAlerts
from gateway.storage.sqlite_registry import SQLiteRegistry
from gateway.storage.sqlite_schema import MIGRATIONS, READING_COLUMNS, SCHEMA_VERSION, reading, split_script

__all__ = ["EXPIRE_BATCH", "MIGRATIONS", "SCHEMA_VERSION", "SQLiteStorage"]

EXPIRE_BATCH = 1000  # readings (or rollup buckets) deleted per retention transaction
_split_script = split_script  # where tests and tools have always found it


class SQLiteStorage(SQLiteRegistry, SQLiteAlerts):
    """Embedded storage in one SQLite file (plus its -wal and -shm files).

    The engine (file, writer thread, readers) is SQLiteCore; the registry and the alerts are
    SQLiteRegistry and SQLiteAlerts; here: readings, history and rollups, retention, forwarding.
    """

    # ------------------------------------------------------------------ readings
    async def last_seq(self, device_id: str) -> int:
        rows = await self._query("SELECT last_seq FROM device_state WHERE device_id = ?", (device_id,))
        return int(rows[0][0]) if rows else 0

    async def latest(self, device_id: str) -> dict[str, tuple[float, int]]:
        rows = await self._query("SELECT metric, value, time_ms FROM latest WHERE device_id = ?", (device_id,))
        return {metric: (float(value), int(t)) for metric, value, t in rows}

    def _device_states(self) -> dict[str, DeviceState]:
        states = {d: DeviceState(d, int(s), int(seen))
                  for d, s, seen in self._fetch("SELECT device_id, last_seq, last_seen_ms FROM device_state")}
        for device_id, metric, value, t in self._fetch("SELECT device_id, metric, value, time_ms FROM latest"):
            state = states.get(device_id)
            if state is not None:
                state.latest[metric] = (float(value), int(t))
        return states

    async def device_states(self) -> dict[str, DeviceState]:
        return await self._read(self._device_states)

    async def history_buckets(self, device_id: str, metric: str, start_ms: int, end_ms: int, step_ms: int,
                              source: str = RAW) -> list[Bucket]:
        if step_ms < 1:
            raise ValueError("step_ms must be at least 1")
        if source == RAW:
            rows = await self._query(
                "SELECT (time_ms - ?3) / ?5 AS b, min(value), avg(value), max(value), count(*) FROM samples"
                " WHERE device_id = ?1 AND metric = ?2 AND time_ms >= ?3 AND time_ms < ?4 GROUP BY b ORDER BY b",
                (device_id, metric, start_ms, end_ms, step_ms))
        else:
            check_tier(source, start_ms, end_ms, step_ms)
            rows = await self._query(
                f"SELECT (bucket_ms - ?3) / ?5 AS b, min(vmin), sum(vsum) / sum(n), max(vmax), sum(n)"
                f" FROM rollup_{source} WHERE device_id = ?1 AND metric = ?2 AND bucket_ms >= ?3 AND bucket_ms < ?4"
                " GROUP BY b ORDER BY b", (device_id, metric, start_ms, end_ms, step_ms))
        return [Bucket(start_ms + int(b) * step_ms, float(lo), float(avg), float(hi), int(n))
                for b, lo, avg, hi, n in rows]

    async def readings(self, device_id: str, start_ms: int, end_ms: int, after: tuple[int, int] | None = None,
                       limit: int = 10000) -> list[ReadingRow]:
        after_t, after_seq = after if after is not None else (start_ms - 1, 0)
        rows = await self._query(
            f"SELECT {READING_COLUMNS} FROM readings WHERE device_id = ? AND time_ms >= ? AND time_ms < ?"
            " AND (time_ms, seq) > (?, ?) ORDER BY time_ms, seq LIMIT ?",
            (device_id, start_ms, end_ms, after_t, after_seq, limit))
        return [reading(r) for r in rows]

    async def history(self, device_id: str, metric: str, start_ms: int, end_ms: int,
                      limit: int = 10000) -> list[tuple[int, float]]:
        rows = await self._query(
            "SELECT time_ms, value FROM samples WHERE device_id = ? AND metric = ? AND time_ms >= ?"
            " AND time_ms < ? ORDER BY time_ms, seq LIMIT ?", (device_id, metric, start_ms, end_ms, limit))
        return [(int(t), float(v)) for t, v in rows]

    async def count_readings(self, device_id: str | None = None) -> int:
        if device_id is None:
            rows = await self._query("SELECT count(*) FROM readings")
        else:
            rows = await self._query("SELECT count(*) FROM readings WHERE device_id = ?", (device_id,))
        return int(rows[0][0])

    async def seqs(self, device_id: str) -> list[int]:
        rows = await self._query("SELECT seq FROM readings WHERE device_id = ? ORDER BY seq", (device_id,))
        return [int(r[0]) for r in rows]

    # ------------------------------------------------------------------ retention
    async def expire(self, readings_before_ms: int, rollups_before_ms: int) -> Expired:
        """Delete old readings and rollups in transactions of at most EXPIRE_BATCH rows each.

        Each batch is one item on the writer's queue, so group commits run between batches.
        """
        readings = 0
        devices = await self._query("SELECT device_id FROM device_state ORDER BY device_id")
        for (device_id,) in devices:
            while True:
                if not await self._query("SELECT 1 FROM readings WHERE device_id = ? AND time_ms < ? LIMIT 1",
                                         (device_id, readings_before_ms)):
                    break
                readings += await self._write(_delete_batch(
                    "DELETE FROM readings WHERE device_id = ?1 AND seq IN (SELECT seq FROM readings"
                    " WHERE device_id = ?1 AND time_ms < ?2 ORDER BY time_ms LIMIT ?3)",
                    (device_id, readings_before_ms, EXPIRE_BATCH)))
        rollups = 0
        for tier in ROLLUP_TIERS:
            while True:
                deleted = await self._write(_delete_batch(
                    f"DELETE FROM rollup_{tier} WHERE (device_id, metric, bucket_ms) IN (SELECT device_id, metric,"
                    f" bucket_ms FROM rollup_{tier} WHERE bucket_ms < ? ORDER BY bucket_ms LIMIT ?)",
                    (rollups_before_ms, EXPIRE_BATCH)))
                rollups += deleted
                if deleted < EXPIRE_BATCH:
                    break
        trimmed = await self.trim_forward_log(readings_before_ms)
        return Expired(readings=readings, rollups=rollups, forward_log=trimmed)

    # ------------------------------------------------------------------ forwarding
    async def readings_after(self, position: LogPosition,
                             limit: int = 1000) -> list[tuple[LogPosition, ReadingRow | None]]:
        if limit < 1:
            return []
        return await self._read(lambda: fwd.read_after(self._reader_conn(), position, limit, READING_COLUMNS,
                                                       reading))

    async def register_sink(self, sink: str, now_ms: int) -> None:
        self._forwarding = True  # before the cursor exists: every commit after its start position is logged
        await self._write(lambda conn: fwd.register(conn, sink, now_ms))

    async def claim_sink(self, sink: str, owner: str, now_ms: int, lease_ms: int) -> LogPosition | None:
        self._forwarding = True  # before the claim: every commit after its start position is logged
        return await self._write(lambda conn: fwd.claim(conn, sink, owner, now_ms, lease_ms))

    async def advance_sink(self, sink: str, owner: str, position: LogPosition, now_ms: int, lease_ms: int) -> bool:
        return await self._write(lambda conn: fwd.advance(conn, sink, owner, position, now_ms, lease_ms))

    async def release_sink(self, sink: str, owner: str) -> None:
        await self._write(lambda conn: fwd.release(conn, sink, owner))

    async def sink_cursors(self) -> list[SinkCursor]:
        return fwd.cursors(await self._query(fwd.CURSORS_SQL))

    async def forget_sink(self, sink: str) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            gone = fwd.forget(conn, sink)
            self._forwarding = fwd.has_sinks(conn)
            return gone

        return await self._write(op)

    async def trim_forward_log(self, older_than_ms: int) -> int:
        deleted = 0
        while True:  # small transactions, queued between group commits
            step = await self._write(fwd.trim_step(older_than_ms))
            deleted += step
            if step < fwd.TRIM_BATCH:
                return deleted


def _delete_batch(sql: str, params: tuple[Any, ...]) -> Callable[[sqlite3.Connection], int]:
    def op(conn: sqlite3.Connection) -> int:
        return int(conn.execute(sql, params).rowcount)

    return op
