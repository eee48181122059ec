"""PostgreSQL storage (asyncpg): group commit with binary COPY into a readings table partitioned by day.

Contract: see base.Storage. Choose it with ``storage = "postgresql://USER@HOST:PORT/DB"``;
the password, if any, comes from the URL, ``PGPASSWORD`` or ``~/.pgpass`` (libpq rules).
Several gateways may share one database.

Writes. One writer task owns one connection and commits group after group, as the SQLite
writer thread does: callers' rows are gathered for ``commit_interval_ms`` (or until
``max_batch_rows``), then, in ONE transaction (gateway/storage/ingest.py):

1. ``INSERT .. ON CONFLICT DO UPDATE .. RETURNING`` on ``device_state`` locks the batch's
   devices in id order and returns their watermarks (highest seq stored). Writers of the
   same device in other transactions, connections or gateways wait here, so the watermark
   is exact until we commit.
2. Rows above their watermark are new; rows at or below it are looked up and dropped if
   stored (exactly once per (device_id, seq); the (device_id, seq) index serves the lookup).
3. ``COPY`` (binary) of the new rows into ``readings``; PostgreSQL routes each row to its
   day's partition (or to ``readings_default`` for a day without one).
4. One statement merges the rollup deltas (5 min, 1 h), latest values and watermarks.

``store`` returns when COMMIT has returned (``synchronous_commit`` on: the WAL is flushed).
If the connection breaks at any point the batch fails with StorageError: nothing is
acknowledged, the connection is dropped and a new one is opened for the next batch
(retries spaced by a backoff of 0.2 s doubling up to 5 s). Reads and registry calls use a
small pool that reconnects by itself; a read retries once on a broken connection.

Forwarding. While some sink cursor exists, step 4 also appends the commit's keys to
``forward_log`` (gateway/storage/postgresql_forward.py: how readers stay correct while
several gateways commit concurrently).

Partitions. ``readings_pYYYYMMDD`` holds the readings whose time_ms falls in that UTC day.
``prepare`` (at open and hourly from the gateway's retention task) creates them from
yesterday to ``partitions_ahead_days`` ahead, moving any rows of that day out of the
default partition in the same transaction. ``expire`` drops the partitions whose whole day
is older than the cut-off and deletes older rows from the default partition; rollups are
deleted by bucket time. DDL takes a short ``lock_timeout`` and an advisory lock, so two
gateways never race on it and a blocked DDL gives up instead of stalling ingestion.

Modules: postgresql_core.py (the writer task and its connection, the pool), postgresql_schema.py
(the migrations), postgresql_registry.py (devices, dashboard tokens), postgresql_alerts.py
(alerts, rules, baselines), postgresql_forward.py (the forward log and sink cursors); this one:
``PostgresStorage``, with readings, history and rollups, partitions and retention, forwarding.
"""

from __future__ import annotations

import calendar
import time

import asyncpg

from gateway.logs import log
from gateway.storage import postgresql_forward as fwd
from gateway.storage.base import (
    DAY_MS,
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
from gateway.storage.postgresql_alerts import PostgresAlerts
from gateway.storage.postgresql_registry import PostgresRegistry
from gateway.storage.postgresql_schema import COPY_COLUMNS, MIGRATIONS, READING_COLUMNS, SCHEMA_VERSION, reading

__all__ = ["EXPIRE_BATCH", "MIGRATIONS", "SCHEMA_VERSION", "PostgresStorage", "day_of", "partition_day",
           "partition_name"]

DDL_LOCK = 7_301_202  # advisory lock key: partition DDL
PARTITION_PREFIX = "readings_p"
EXPIRE_BATCH = 10_000  # rollup buckets deleted per retention statement
UPKEEP_TIMEOUT_S = 600.0  # counting a day's partition before dropping it may take a while


def day_of(time_ms: int) -> int:
    """Days since the Unix epoch (UTC) of ``time_ms``."""
    return time_ms // DAY_MS


def partition_name(day: int) -> str:
    return PARTITION_PREFIX + time.strftime("%Y%m%d", time.gmtime(day * 86400))


def partition_day(name: str) -> int | None:
    """The day a partition named by ``partition_name`` holds, None for other tables."""
    if not name.startswith(PARTITION_PREFIX):
        return None
    try:
        parsed = time.strptime(name[len(PARTITION_PREFIX):], "%Y%m%d")
    except ValueError:
        return None
    return calendar.timegm(parsed) // 86400



class PostgresStorage(PostgresRegistry, PostgresAlerts):
    """Readings, registry and alerts in a PostgreSQL 15 database (asyncpg).

    The engine (writer task, connections, pool) is PostgresCore; the registry and the alerts are
    PostgresRegistry and PostgresAlerts; here: readings, history and rollups, partitions and
    retention, forwarding.
    """

    # ------------------------------------------------------------------ readings
    async def last_seq(self, device_id: str) -> int:
        rows = await self._fetch("SELECT last_seq FROM device_state WHERE device_id = $1", device_id)
        return int(rows[0][0]) if rows else 0

    async def latest(self, device_id: str) -> dict[str, tuple[float, int]]:
        rows = await self._fetch("SELECT metric, value, time_ms FROM latest WHERE device_id = $1", device_id)
        return {r[0]: (float(r[1]), int(r[2])) for r in rows}

    async def device_states(self) -> dict[str, DeviceState]:
        async def run(conn: asyncpg.Connection) -> dict[str, DeviceState]:
            states = {r[0]: DeviceState(r[0], int(r[1]), int(r[2])) for r in await conn.fetch(
                "SELECT device_id, last_seq, last_seen_ms FROM device_state WHERE last_seq > 0")}
            for r in await conn.fetch("SELECT device_id, metric, value, time_ms FROM latest"):
                state = states.get(r[0])
                if state is not None:
                    state.latest[r[1]] = (float(r[2]), int(r[3]))
            return states

        return await self._with_conn(run)

    async def history(self, device_id: str, metric: str, start_ms: int, end_ms: int,
                      limit: int = 10000) -> list[tuple[int, float]]:
        rows = await self._fetch(
            "SELECT time_ms, v FROM (SELECT time_ms, seq, (metrics -> $2)::float8 AS v FROM readings"
            " WHERE device_id = $1 AND time_ms >= $3 AND time_ms < $4) s WHERE v IS NOT NULL"
            " ORDER BY time_ms, seq LIMIT $5", device_id, metric, start_ms, end_ms, limit)
        return [(int(r[0]), float(r[1])) for r in rows]

    async def history_buckets(self, device_id: str, metric: str, start_ms: int, end_ms: int, step_ms: int,
                              source: str = RAW) -> list[Bucket]:
        if step_ms < 1:
            raise ValueError("step_ms must be at least 1")
        if source == RAW:
            rows = await self._fetch(
                "SELECT (time_ms - $3) / $5 AS b, min(v), avg(v), max(v), count(*) FROM ("
                " SELECT time_ms, (metrics -> $2)::float8 AS v FROM readings"
                " WHERE device_id = $1 AND time_ms >= $3 AND time_ms < $4) s"
                " WHERE v IS NOT NULL GROUP BY b ORDER BY b", device_id, metric, start_ms, end_ms, step_ms)
        else:
            check_tier(source, start_ms, end_ms, step_ms)
            rows = await self._fetch(
                f"SELECT (bucket_ms - $3) / $5 AS b, min(vmin), sum(vsum) / sum(n), max(vmax), sum(n)"
                f" FROM rollup_{source} WHERE device_id = $1 AND metric = $2 AND bucket_ms >= $3 AND bucket_ms < $4"
                " GROUP BY b ORDER BY b", device_id, metric, start_ms, end_ms, step_ms)
        return [Bucket(start_ms + int(r[0]) * step_ms, float(r[1]), float(r[2]), float(r[3]), int(r[4]))
                for r in rows]

    async def readings(self, device_id: str, start_ms: int, end_ms: int, after: tuple[int, int] | None = None,
                       limit: int = 10000) -> list[ReadingRow]:
        after_t, after_seq = after if after is not None else (start_ms - 1, 0)
        rows = await self._fetch(
            f"SELECT {READING_COLUMNS} FROM readings WHERE device_id = $1 AND time_ms >= $2 AND time_ms < $3"
            " AND (time_ms, seq) > ($4, $5) ORDER BY time_ms, seq LIMIT $6",
            device_id, start_ms, end_ms, after_t, after_seq, limit)
        return [reading(r) for r in rows]

    async def count_readings(self, device_id: str | None = None) -> int:
        if device_id is None:
            rows = await self._fetch("SELECT count(*) FROM readings")
        else:
            rows = await self._fetch("SELECT count(*) FROM readings WHERE device_id = $1", device_id)
        return int(rows[0][0])

    async def seqs(self, device_id: str) -> list[int]:
        rows = await self._fetch("SELECT seq FROM readings WHERE device_id = $1 ORDER BY seq", device_id)
        return [int(r[0]) for r in rows]

    # ------------------------------------------------------------------ partitions and retention
    async def partitions(self) -> dict[str, int]:
        """Daily partitions of ``readings``: name -> day (days since the epoch)."""
        rows = await self._fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'readings'::regclass")
        found = {r[0]: partition_day(r[0]) for r in rows}
        return {name: day for name, day in found.items() if day is not None}

    async def prepare(self, now_ms: int) -> None:
        """Create the daily partitions from yesterday to ``partitions_ahead_days`` ahead; start writing the
        forward log if another gateway created a sink cursor."""
        if not self._forwarding:
            self._forwarding = bool((await self._fetch(fwd.HAS_SINKS))[0][0])
        have = set((await self.partitions()).values())
        today = day_of(now_ms)
        for day in range(today - 1, today + self.partitions_ahead_days + 1):
            if day not in have:

                async def create(conn: asyncpg.Connection, day: int = day) -> None:
                    await self._create_partition(conn, day)

                await self._with_conn(create)

    async def _create_partition(self, conn: asyncpg.Connection, day: int) -> None:
        name = partition_name(day)
        low, high = day * DAY_MS, (day + 1) * DAY_MS
        async with conn.transaction():
            await conn.execute("SET LOCAL lock_timeout = '10s'")
            await conn.execute("SELECT pg_advisory_xact_lock($1)", DDL_LOCK)
            if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name):
                return  # another gateway made it
            # Rows of that day already in the default partition move into the new one, or
            # ATTACH would refuse; the lock keeps new ones from arriving meanwhile.
            await conn.execute("LOCK TABLE readings_default IN SHARE ROW EXCLUSIVE MODE")
            await conn.execute(f"CREATE TABLE {name} (LIKE readings INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
            await conn.execute(f"ALTER TABLE {name} ADD CONSTRAINT {name}_range"
                               f" CHECK (time_ms >= {low} AND time_ms < {high})")
            await conn.execute(f"WITH moved AS (DELETE FROM readings_default WHERE time_ms >= {low}"
                               f" AND time_ms < {high} RETURNING *) INSERT INTO {name} SELECT * FROM moved")
            await conn.execute(f"ALTER TABLE readings ATTACH PARTITION {name} FOR VALUES FROM ({low}) TO ({high})")
            await conn.execute(f"ALTER TABLE {name} DROP CONSTRAINT {name}_range")
        log("storage_partition_created", partition=name)

    async def expire(self, readings_before_ms: int, rollups_before_ms: int) -> Expired:
        """Drop whole days older than the cut-off, delete older rows of the default partition and old rollups."""
        readings = 0
        dropped = 0
        for name, day in sorted((await self.partitions()).items(), key=lambda item: item[1]):
            if (day + 1) * DAY_MS > readings_before_ms:
                continue
            count = int((await self._fetch(f"SELECT count(*) FROM {name}", timeout=UPKEEP_TIMEOUT_S))[0][0])

            async def drop(conn: asyncpg.Connection, name: str = name) -> None:
                async with conn.transaction():
                    await conn.execute("SET LOCAL lock_timeout = '10s'")
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", DDL_LOCK)
                    await conn.execute(f"DROP TABLE IF EXISTS {name}")

            await self._with_conn(drop)
            log("storage_partition_dropped", partition=name, readings=count)
            readings += count
            dropped += 1
        # The default partition only holds readings of days without a partition: normally few.
        status = await self._execute("DELETE FROM readings_default WHERE time_ms < $1", readings_before_ms,
                                     timeout=UPKEEP_TIMEOUT_S)
        readings += int(status.rsplit(" ", 1)[-1])
        rollups = 0
        for tier in ROLLUP_TIERS:
            while True:  # short transactions: a large backlog never holds row locks for long
                status = await self._execute(
                    f"DELETE FROM rollup_{tier} WHERE ctid = ANY(ARRAY(SELECT ctid FROM rollup_{tier}"
                    " WHERE bucket_ms < $1 LIMIT $2))", rollups_before_ms, EXPIRE_BATCH)
                deleted = int(status.rsplit(" ", 1)[-1])
                rollups += deleted
                if deleted < EXPIRE_BATCH:
                    break
        trimmed = await self.trim_forward_log(readings_before_ms)
        return Expired(readings=readings, rollups=rollups, partitions=dropped, forward_log=trimmed)

    # ------------------------------------------------------------------ forwarding
    async def readings_after(self, position: LogPosition,
                             limit: int = 1000) -> list[tuple[LogPosition, ReadingRow | None]]:
        if limit < 1:
            return []

        async def run(conn: asyncpg.Connection) -> list[tuple[LogPosition, ReadingRow | None]]:
            logs = await conn.fetch(fwd.READ_LOG, position.tx, position.commit, fwd.LOG_ROWS_PER_READ)
            wanted = fwd.wanted_keys(logs, position, limit)
            if not wanted:
                return []
            times = [t for _, _, _, t in wanted]
            rows = await conn.fetch(fwd.READ_READINGS.format(columns=", ".join(f"r.{c}" for c in COPY_COLUMNS)),
                                    [d for _, d, _, _ in wanted], [s for _, _, s, _ in wanted], times,
                                    min(times), max(times))
            found = {(r[0], r[1]): reading(r) for r in rows}
            return [(pos, found.get((device, seq))) for pos, device, seq, _ in wanted]

        return await self._with_conn(run)

    async def register_sink(self, sink: str, now_ms: int) -> None:
        self._forwarding = True  # before the cursor exists: every commit after its start position is logged
        await self._execute(fwd.REGISTER, sink, now_ms)

    async def claim_sink(self, sink: str, owner: str, now_ms: int, lease_ms: int) -> LogPosition | None:
        self._forwarding = True  # before the claim: every commit after its start position is logged

        async def run(conn: asyncpg.Connection) -> LogPosition | None:
            async with conn.transaction():
                await conn.execute(fwd.REGISTER, sink, now_ms)
                row = await conn.fetchrow(fwd.CLAIM_UPDATE, sink, owner, now_ms + lease_ms, now_ms)
            return None if row is None else LogPosition(int(row[0]), int(row[1]), int(row[2]))

        return await self._with_conn(run)

    async def advance_sink(self, sink: str, owner: str, position: LogPosition, now_ms: int, lease_ms: int) -> bool:
        status = await self._execute(fwd.ADVANCE, sink, owner, position.tx, position.commit, position.index,
                                     now_ms + lease_ms, now_ms)
        return status.rsplit(" ", 1)[-1] == "1"

    async def release_sink(self, sink: str, owner: str) -> None:
        await self._execute(fwd.RELEASE, sink, owner)

    async def sink_cursors(self) -> list[SinkCursor]:
        return fwd.cursors(await self._fetch(fwd.CURSORS))

    async def forget_sink(self, sink: str) -> bool:
        status = await self._execute(fwd.FORGET, sink)
        self._forwarding = bool((await self._fetch(fwd.HAS_SINKS))[0][0])
        return status.rsplit(" ", 1)[-1] == "1"

    async def trim_forward_log(self, older_than_ms: int) -> int:
        async def step(conn: asyncpg.Connection) -> int:
            async with conn.transaction():  # the cursors are locked: two gateways never count a row twice
                marks = await conn.fetch(fwd.MARKS)
                gone = await conn.fetch(fwd.TRIM, older_than_ms, fwd.TRIM_BATCH, timeout=UPKEEP_TIMEOUT_S)
                for sink, lost in fwd.expired_counts(marks, gone).items():
                    await conn.execute(fwd.ADD_EXPIRED, sink, lost)
            return len(gone)

        deleted = 0
        while True:  # short transactions
            done = await self._with_conn(step)
            deleted += done
            if done < fwd.TRIM_BATCH:
                return deleted
