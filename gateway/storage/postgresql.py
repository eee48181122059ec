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
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import asyncpg
import orjson

from gateway.errors import ConfigError, StorageError
from gateway.logs import log
from gateway.storage import postgresql_forward as fwd
from gateway.storage.base import (
    ALERT_COLUMNS,
    DAY_MS,
    RAW,
    ROLLUP_TIERS,
    AlertHistoryRow,
    AlertRow,
    BaselineRow,
    Bucket,
    DashboardToken,
    DeviceRecord,
    DeviceState,
    Expired,
    LogPosition,
    ReadingRow,
    SinkCursor,
    Storage,
    StoredRule,
    alert_from_tuple,
    alert_tuple,
    check_tier,
)
from gateway.storage.dsn import check_dsn, redact
from gateway.storage.ingest import aggregate, check_rows, first_per_key, split_by_watermark

T = TypeVar("T")

SCHEMA_VERSION = 2
SCHEMA_LOCK = 7_301_201  # advisory lock key: migrations
DDL_LOCK = 7_301_202  # advisory lock key: partition DDL
PARTITION_PREFIX = "readings_p"
EXPIRE_BATCH = 10_000  # rollup buckets deleted per retention statement
UPKEEP_TIMEOUT_S = 600.0  # counting a day's partition before dropping it may take a while
OFFLOAD_ROWS = 256  # from this many new rows, rollups are computed on a thread, overlapping the COPY

# MIGRATIONS[n] brings a database from version n to n + 1.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE readings (
        device_id   text   NOT NULL,
        seq         bigint NOT NULL,
        time_ms     bigint NOT NULL,
        received_ms bigint NOT NULL,
        boot        text,
        device_ts   bigint,
        uptime_ms   bigint,
        quality     text,
        metrics     jsonb  NOT NULL
    ) PARTITION BY RANGE (time_ms);
    CREATE INDEX readings_device_seq ON readings (device_id, seq);
    CREATE INDEX readings_device_time ON readings (device_id, time_ms);
    CREATE TABLE readings_default PARTITION OF readings DEFAULT;

    CREATE TABLE device_state (
        device_id    text   PRIMARY KEY,
        last_seq     bigint NOT NULL DEFAULT 0,
        last_seen_ms bigint NOT NULL DEFAULT 0
    );
    CREATE TABLE latest (
        device_id text             NOT NULL,
        metric    text             NOT NULL,
        value     double precision NOT NULL,
        time_ms   bigint           NOT NULL,
        seq       bigint           NOT NULL,
        PRIMARY KEY (device_id, metric)
    );
    """ + "".join(f"""
    CREATE TABLE rollup_{tier} (
        device_id text             NOT NULL,
        metric    text             NOT NULL,
        bucket_ms bigint           NOT NULL,
        n         bigint           NOT NULL,
        vsum      double precision NOT NULL,
        vmin      double precision NOT NULL,
        vmax      double precision NOT NULL,
        PRIMARY KEY (device_id, metric, bucket_ms)
    );
    CREATE INDEX rollup_{tier}_bucket ON rollup_{tier} (bucket_ms);
""" for tier in ("5m", "1h")) + """
    CREATE TABLE devices (
        device_id        text    PRIMARY KEY,
        enabled          boolean NOT NULL DEFAULT true,
        token_digest     bytea   UNIQUE,
        token_created_ms bigint,
        allow_cidrs      text[]  NOT NULL DEFAULT '{}',
        label            text    NOT NULL DEFAULT '',
        created_ms       bigint  NOT NULL
    );
    CREATE TABLE alerts (
        id          bigserial        PRIMARY KEY,
        device_id   text             NOT NULL,
        metric      text             NOT NULL,
        rule        text             NOT NULL,
        raised_ms   bigint           NOT NULL,
        value       double precision NOT NULL,
        cleared_ms  bigint,
        clear_value double precision
    );
    CREATE INDEX alerts_active ON alerts (id) WHERE cleared_ms IS NULL;
    CREATE INDEX alerts_device ON alerts (device_id, id);
    """,
    # 1 -> 2: the alert engine's model (gateway/alerts/): states, severity, acknowledgement, text, a
    # nullable value (no_data alerts have none), history, rules edited through the admin API and
    # learned baselines. Version 1 alerts become 'above' alerts of severity 'major', their raise
    # and clear copied into the history.
    """
    ALTER TABLE alerts
        ALTER COLUMN value DROP NOT NULL,
        ADD COLUMN kind         text   NOT NULL DEFAULT 'above',
        ADD COLUMN severity     text   NOT NULL DEFAULT 'major',
        ADD COLUMN state        text   NOT NULL DEFAULT 'active',
        ADD COLUMN text         text   NOT NULL DEFAULT '',
        ADD COLUMN last_value   double precision,
        ADD COLUMN updated_ms   bigint NOT NULL DEFAULT 0,
        ADD COLUMN acked_ms     bigint,
        ADD COLUMN acked_by     text,
        ADD COLUMN suspended_ms bigint,
        ADD COLUMN cleared_by   text,
        ADD COLUMN clear_reason text;
    UPDATE alerts SET text = rule, last_value = value, updated_ms = coalesce(cleared_ms, raised_ms),
        state = CASE WHEN cleared_ms IS NULL THEN 'active' ELSE 'cleared' END,
        cleared_by = CASE WHEN cleared_ms IS NULL THEN NULL ELSE 'auto' END;
    DROP INDEX alerts_active;
    CREATE INDEX alerts_open ON alerts (id) WHERE state <> 'cleared';

    CREATE TABLE alert_history (
        seq      bigserial        PRIMARY KEY,
        alert_id bigint           NOT NULL,
        at_ms    bigint           NOT NULL,
        event    text             NOT NULL,
        actor    text,
        value    double precision,
        text     text             NOT NULL DEFAULT ''
    );
    CREATE INDEX alert_history_alert ON alert_history (alert_id, seq);
    INSERT INTO alert_history (alert_id, at_ms, event, value, text)
        SELECT id, raised_ms, 'raised', value, text FROM alerts ORDER BY id;
    INSERT INTO alert_history (alert_id, at_ms, event, actor, value, text)
        SELECT id, cleared_ms, 'cleared', 'auto', clear_value, text FROM alerts WHERE cleared_ms IS NOT NULL
        ORDER BY id;

    CREATE TABLE alert_rules (
        rule_id    text   PRIMARY KEY,
        spec       jsonb,
        updated_ms bigint NOT NULL,
        updated_by text   NOT NULL
    );

    CREATE TABLE alert_baselines (
        rule_id    text   NOT NULL,
        device_id  text   NOT NULL,
        data       text   NOT NULL,
        updated_ms bigint NOT NULL,
        PRIMARY KEY (rule_id, device_id)
    );
    CREATE INDEX alert_baselines_device ON alert_baselines (device_id);
    """,
]

_COPY_COLUMNS = ("device_id", "seq", "time_ms", "received_ms", "boot", "device_ts", "uptime_ms", "quality",
                 "metrics")
_READING_COLUMNS = ", ".join(_COPY_COLUMNS)
_LOCK_DEVICES = (
    "INSERT INTO device_state AS d (device_id) SELECT unnest($1::text[])"
    " ON CONFLICT (device_id) DO UPDATE SET last_seq = d.last_seq RETURNING device_id, last_seq"
)
_STORED_KEYS = (
    "SELECT k.device_id, k.seq FROM unnest($1::text[], $2::bigint[]) AS k(device_id, seq)"
    " WHERE EXISTS (SELECT 1 FROM readings r WHERE r.device_id = k.device_id AND r.seq = k.seq)"
)
_ROLLUP_UPSERT = (
    "{name} AS (INSERT INTO rollup_{tier} AS r (device_id, metric, bucket_ms, n, vsum, vmin, vmax)"
    " SELECT * FROM unnest(${a}::text[], ${b}::text[], ${c}::bigint[], ${d}::bigint[], ${e}::float8[],"
    " ${f}::float8[], ${g}::float8[])"
    " ON CONFLICT (device_id, metric, bucket_ms) DO UPDATE SET n = r.n + excluded.n, vsum = r.vsum + excluded.vsum,"
    " vmin = least(r.vmin, excluded.vmin), vmax = greatest(r.vmax, excluded.vmax))"
)


def _apply_statement(log: bool = False) -> str:
    """One statement merging rollups of every tier, latest values and watermarks (sorted input: lock order),
    and with ``log`` appending the forward log row."""
    parts = []
    n = 1
    for index, tier in enumerate(ROLLUP_TIERS):
        letters = {k: n + i for i, k in enumerate("abcdefg")}
        parts.append(_ROLLUP_UPSERT.format(name=f"r{index}", tier=tier, **letters))
        n += 7
    parts.append(
        f"lat AS (INSERT INTO latest AS l (device_id, metric, value, time_ms, seq)"
        f" SELECT * FROM unnest(${n}::text[], ${n + 1}::text[], ${n + 2}::float8[], ${n + 3}::bigint[],"
        f" ${n + 4}::bigint[])"
        " ON CONFLICT (device_id, metric) DO UPDATE SET value = excluded.value, time_ms = excluded.time_ms,"
        " seq = excluded.seq WHERE (excluded.time_ms, excluded.seq) > (l.time_ms, l.seq))")
    n += 5
    if log:
        parts.append(fwd.LOG_CTE.format(a=n, b=n + 1, c=n + 2, d=n + 3))
        n += 4
    return ("WITH " + ", ".join(parts) +
            " UPDATE device_state d SET last_seq = greatest(d.last_seq, u.last_seq),"
            " last_seen_ms = greatest(d.last_seen_ms, u.seen)"
            f" FROM unnest(${n}::text[], ${n + 1}::bigint[], ${n + 2}::bigint[]) AS u(device_id, last_seq, seen)"
            " WHERE d.device_id = u.device_id")


_APPLY = _apply_statement()
# Dashboard tokens (docs/configuration.md, "Dashboard roles and tokens"): created at every open,
# idempotently, beside the numbered migrations.
DASHBOARD_TOKENS_DDL = """
    CREATE TABLE IF NOT EXISTS dashboard_tokens (
        name text PRIMARY KEY,
        role text NOT NULL CHECK (role IN ('viewer', 'operator')),
        digest bytea NOT NULL UNIQUE,
        created_ms bigint NOT NULL
    );
"""

_APPLY_LOGGED = _apply_statement(log=True)
_DEVICE_COLUMNS = "device_id, enabled, token_digest, token_created_ms, allow_cidrs, label, created_ms"
_ALERT_COLUMNS = ", ".join(ALERT_COLUMNS)
_ALERT_INSERT = (f"INSERT INTO alerts ({', '.join(ALERT_COLUMNS[1:])}) VALUES ("
                 f"{', '.join(f'${i}' for i in range(1, len(ALERT_COLUMNS)))}) RETURNING id")
_ALERT_UPDATE = (f"UPDATE alerts SET {', '.join(f'{c} = ${i}' for i, c in enumerate(ALERT_COLUMNS[1:], 1))}"
                 f" WHERE id = ${len(ALERT_COLUMNS)}")
# Errors caused by one caller's data, not by the server or the connection: retry callers one by one.
_DATA_ERRORS = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError, ValueError, TypeError,
                OverflowError)
# Server errors that mean the session is gone (class 08, shutdown, recovery): reconnect.
_LOST = (asyncpg.PostgresConnectionError, asyncpg.OperatorInterventionError)
_STOP = object()


class _Item:
    __slots__ = ("future", "rows")

    def __init__(self, future: asyncio.Future[None], rows: list[ReadingRow]) -> None:
        self.future = future
        self.rows = rows


def _columns(rows: Sequence[tuple[Any, ...]], count: int) -> list[list[Any]]:
    """Transpose row tuples into ``count`` column lists (for unnest parameters)."""
    if not rows:
        return [[] for _ in range(count)]
    return [list(column) for column in zip(*rows, strict=True)]


def _device(row: asyncpg.Record) -> DeviceRecord:
    return DeviceRecord(device_id=row[0], enabled=bool(row[1]), token_digest=row[2], token_created_ms=row[3],
                        allow_cidrs=list(row[4] or []), label=row[5] or "", created_ms=row[6])


def _reading(row: asyncpg.Record) -> ReadingRow:
    return ReadingRow(device_id=row[0], seq=row[1], time_ms=row[2], received_ms=row[3], boot=row[4],
                      device_ts=row[5], uptime_ms=row[6], quality=row[7], metrics=orjson.loads(row[8]))


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


class PostgresStorage(Storage):
    """Readings, registry and alerts in a PostgreSQL 15 database (asyncpg)."""

    def __init__(self, dsn: str, commit_interval_ms: float = 5.0, max_batch_rows: int = 5000, pool_size: int = 4,
                 connect_timeout_s: float = 5.0, command_timeout_s: float = 30.0, partitions_ahead_days: int = 3,
                 clock: Callable[[], float] = time.time) -> None:
        check_dsn(dsn)
        if commit_interval_ms < 0:
            raise ConfigError("commit_interval_ms: must be >= 0")
        if max_batch_rows < 1 or pool_size < 1 or partitions_ahead_days < 0:
            raise ConfigError("max_batch_rows and pool_size must be >= 1, partitions_ahead_days >= 0")
        self.dsn = dsn
        self.where = redact(dsn)
        self.commit_interval = commit_interval_ms / 1000.0
        self.max_batch_rows = max_batch_rows
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout_s
        self.command_timeout = command_timeout_s
        self.partitions_ahead_days = partitions_ahead_days
        self.clock = clock
        self._pool: asyncpg.Pool | None = None
        self._wconn: asyncpg.Connection | None = None
        self._queue: deque[Any] = deque()
        self._wake: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self._opened = False
        self._closing = False
        self._retry_at = 0.0
        self._backoff = 0.0
        self._last_error = ""
        self._forwarding = False  # write the forward log (some sink cursor exists)
        # counters (read by tests and benchmarks)
        self.commits = 0
        self.rows_written = 0
        self.rows_inserted = 0
        self.largest_batch = 0
        self.failed_commits = 0
        self.reconnects = 0

    # ------------------------------------------------------------------ lifecycle
    async def _connect(self) -> asyncpg.Connection:
        conn: asyncpg.Connection = await asyncpg.connect(self.dsn, timeout=self.connect_timeout,
                                                         command_timeout=self.command_timeout)
        return conn

    def _unreachable(self, err: BaseException) -> StorageError:
        return StorageError(f"cannot connect to PostgreSQL at {self.where}: {err or type(err).__name__} "
                            "(is the server running and the URL right?)")

    async def open(self) -> None:
        """Connect, apply migrations, create partitions ahead, start the writer."""
        if self._opened:
            return
        try:
            self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=self.pool_size,
                                                   timeout=self.connect_timeout, command_timeout=self.command_timeout)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as err:
            raise self._unreachable(err) from None
        try:
            await self._migrate()
            self._wconn = await self._connect()
        except BaseException:
            await self._pool.close()
            self._pool = None
            raise
        self._opened = True
        self._closing = False
        self._queue.clear()
        self._wake = asyncio.Event()
        self._writer = asyncio.get_running_loop().create_task(self._writer_main())
        try:
            await self.prepare(int(self.clock() * 1000))
        except BaseException:
            await self.close()
            raise

    async def _migrate(self) -> None:
        assert self._pool is not None
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
                await conn.execute("CREATE TABLE IF NOT EXISTS edgewire_schema (version integer NOT NULL)")
                version = await conn.fetchval("SELECT max(version) FROM edgewire_schema") or 0
                if version > SCHEMA_VERSION:
                    raise StorageError(f"database {self.where} has schema version {version}, newer than this "
                                       f"gateway's {SCHEMA_VERSION}; upgrade the gateway")
                while version < SCHEMA_VERSION:
                    await conn.execute(MIGRATIONS[version])
                    version += 1
                await conn.execute(fwd.FORWARD_DDL)
                self._forwarding = bool(await conn.fetchval(fwd.HAS_SINKS))
                await conn.execute("DELETE FROM edgewire_schema")
                await conn.execute("INSERT INTO edgewire_schema (version) VALUES ($1)", version)
                await conn.execute(DASHBOARD_TOKENS_DDL)
        except asyncpg.PostgresError as err:
            raise StorageError(f"cannot set up the schema in {self.where}: {err} (does the user own the "
                               "database, and is it an Edgewire database?)") from None
        except (OSError, asyncpg.InterfaceError, TimeoutError) as err:
            raise self._unreachable(err) from None

    async def close(self) -> None:
        """Commit everything queued (if the server is reachable), then disconnect. Idempotent."""
        if not self._opened or self._closing:
            return
        self._closing = True
        self._enqueue(_STOP)
        if self._writer is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
        if self._wconn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._wconn.close(), 5)
            self._wconn = None
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), 5)
            except (Exception, TimeoutError):
                self._pool.terminate()
            self._pool = None
        self._opened = False

    # ------------------------------------------------------------------ writer
    def _enqueue(self, item: Any) -> None:
        self._queue.append(item)
        if self._wake is not None:
            self._wake.set()

    async def store(self, rows: list[ReadingRow]) -> None:
        """Durably store ``rows``; returns after the group commit that contains them."""
        if not rows:
            return
        if not self._opened or self._closing:
            raise StorageError("storage is closed")
        if self._writer is None or self._writer.done():
            raise StorageError("storage writer stopped; restart the gateway (see its log)")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._enqueue(_Item(future, rows))
        await future

    async def _next(self, timeout: float | None) -> Any:
        """The next queued item, waiting up to ``timeout`` s (None: forever); None on timeout."""
        assert self._wake is not None
        while not self._queue:
            self._wake.clear()
            if timeout is None:
                await self._wake.wait()
            else:
                if timeout <= 0:
                    return None
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout)
                except TimeoutError:
                    return None
                timeout = 0
        return self._queue.popleft()

    async def _writer_main(self) -> None:
        loop = asyncio.get_running_loop()
        held: Any = None
        try:
            while True:
                item = held if held is not None else await self._next(None)
                held = None
                if item is _STOP:
                    break
                batch: list[_Item] = [item]
                count = len(item.rows)
                deadline = loop.time() + self.commit_interval
                while count < self.max_batch_rows:
                    nxt = await self._next(deadline - loop.time())
                    if nxt is None:
                        break
                    if nxt is _STOP:
                        held = nxt
                        break
                    batch.append(nxt)
                    count += len(nxt.rows)
                await self._commit_batch(batch)
        except BaseException as err:  # a bug or cancellation: fail every waiting caller instead of hanging them
            error = StorageError(f"storage writer stopped: {err!r}")
            while self._queue:
                pending = self._queue.popleft()
                if isinstance(pending, _Item) and not pending.future.done():
                    pending.future.set_exception(error)
            if not isinstance(err, asyncio.CancelledError):
                raise

    async def _writer_conn(self) -> asyncpg.Connection:
        """The writer's connection, reconnecting (with backoff between failures) if it was lost."""
        if self._wconn is not None and not self._wconn.is_closed():
            return self._wconn
        self._wconn = None
        now = time.monotonic()
        if now < self._retry_at:
            raise StorageError(f"PostgreSQL at {self.where} is unreachable ({self._last_error}); "
                               f"retrying in {self._retry_at - now:.1f} s")
        try:
            self._wconn = await self._connect()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as err:
            self._backoff = min(5.0, max(0.2, self._backoff * 2))
            self._retry_at = time.monotonic() + self._backoff
            self._last_error = str(err) or type(err).__name__
            raise self._unreachable(err) from None
        self._backoff = 0.0
        self.reconnects += 1
        log("storage_reconnected", database=self.where)
        return self._wconn

    async def _drop_writer_conn(self, err: BaseException) -> None:
        conn, self._wconn = self._wconn, None
        self._last_error = str(err) or type(err).__name__
        if conn is not None:
            was_open = not conn.is_closed()
            conn.terminate()
            log("storage_connection_lost", logging.WARNING, database=self.where, error=self._last_error,
                was_open=was_open)

    async def _commit_batch(self, batch: list[_Item]) -> None:
        outcome: list[tuple[_Item, BaseException | None]] = []
        prepared: list[_Item] = []
        for item in batch:
            try:
                check_rows(item.rows)
                prepared.append(item)
            except Exception as err:  # not numbers, not finite: only this caller fails
                outcome.append((item, StorageError(f"readings not stored: invalid row ({err})")))
        if prepared:
            try:
                await self._insert([row for item in prepared for row in item.rows])
                outcome.extend((item, None) for item in prepared)
            except _DATA_ERRORS as err:
                if len(prepared) == 1:
                    outcome.append((prepared[0], StorageError(f"readings not stored: {err}")))
                else:  # isolate the caller whose rows the database refused
                    for item in prepared:
                        try:
                            await self._insert(item.rows)
                            outcome.append((item, None))
                        except Exception as one:
                            outcome.append((item, self._write_error(one)))
            except Exception as err:
                failed = self._write_error(err)
                outcome.extend((item, failed) for item in prepared)
        for item, error in outcome:
            if item.future.done():
                continue  # the caller was cancelled; its rows are stored anyway (idempotent)
            if error is None:
                item.future.set_result(None)
            else:
                item.future.set_exception(error)

    def _write_error(self, err: BaseException) -> StorageError:
        if isinstance(err, StorageError):
            return err
        if isinstance(err, _DATA_ERRORS):
            return StorageError(f"readings not stored: {err}")
        return StorageError(f"commit to PostgreSQL at {self.where} failed: {err or type(err).__name__}; "
                            "nothing of this batch was acknowledged")

    async def _insert(self, rows: list[ReadingRow]) -> None:
        """Store ``rows`` and their derived data in one transaction (module docstring, steps 1-4)."""
        conn = await self._writer_conn()
        unique = first_per_key(rows)
        try:
            async with conn.transaction():
                marks = {r[0]: r[1] for r in await conn.fetch(
                    _LOCK_DEVICES, sorted({row.device_id for row in unique}))}
                new, check = split_by_watermark(unique, marks)
                if check:
                    stored = {(r[0], r[1]) for r in await conn.fetch(
                        _STORED_KEYS, [row.device_id for row in check], [row.seq for row in check])}
                    new.extend(row for row in check if (row.device_id, row.seq) not in stored)
                if new:
                    dumps = orjson.dumps
                    records = [(r.device_id, r.seq, r.time_ms, r.received_ms, r.boot, r.device_ts, r.uptime_ms,
                                r.quality, dumps(r.metrics).decode()) for r in new]
                    if len(new) >= OFFLOAD_ROWS:  # aggregate on a thread while the server takes the COPY
                        pending = asyncio.get_running_loop().run_in_executor(None, aggregate, new)
                        await conn.copy_records_to_table("readings", columns=_COPY_COLUMNS, records=records)
                        agg = await pending
                    else:
                        await conn.copy_records_to_table("readings", columns=_COPY_COLUMNS, records=records)
                        agg = aggregate(new)
                    args: list[list[Any]] = []
                    for tier in ROLLUP_TIERS:
                        args += _columns(agg.rollup_rows(tier), 7)
                    args += _columns(agg.latest_rows(), 5)
                    if self._forwarding:
                        args += fwd.log_args(new)
                    args += _columns(agg.state_rows(), 3)
                    await conn.execute(_APPLY_LOGGED if self._forwarding else _APPLY, *args)
        except _DATA_ERRORS:
            self.failed_commits += 1
            raise
        except BaseException as err:
            self.failed_commits += 1
            if isinstance(err, asyncpg.PostgresError) and not conn.is_closed() and not isinstance(err, _LOST):
                raise  # a server-side error on a healthy connection: it rolled back, the connection stays
            await self._drop_writer_conn(err)
            raise
        self.commits += 1
        self.rows_written += len(rows)
        self.rows_inserted += len(new)
        if len(rows) > self.largest_batch:
            self.largest_batch = len(rows)

    # ------------------------------------------------------------------ reads and small writes
    async def _with_conn(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run ``fn`` on a pool connection; one retry if the connection turned out to be broken."""
        if not self._opened or self._closing or self._pool is None:
            raise StorageError("storage is closed")
        for attempt in (1, 2):
            try:
                async with self._pool.acquire(timeout=self.connect_timeout) as conn:
                    return await fn(conn)
            except (*_LOST, asyncpg.InterfaceError, OSError, TimeoutError) as err:
                if attempt == 2 or isinstance(err, ConnectionRefusedError | TimeoutError):
                    raise StorageError(f"PostgreSQL at {self.where} is unreachable: {err or type(err).__name__}"
                                       " (is the server running?)") from None
            except asyncpg.UniqueViolationError as err:
                raise StorageError(f"refused by PostgreSQL: {err.detail or err}") from None
            except asyncpg.PostgresError as err:
                raise StorageError(f"PostgreSQL at {self.where}: {err}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _fetch(self, sql: str, *args: Any, timeout: float | None = None) -> list[asyncpg.Record]:
        async def run(conn: asyncpg.Connection) -> list[asyncpg.Record]:
            rows: list[asyncpg.Record] = await conn.fetch(sql, *args, timeout=timeout)
            return rows

        return await self._with_conn(run)

    async def _execute(self, sql: str, *args: Any, timeout: float | None = None) -> str:
        async def run(conn: asyncpg.Connection) -> str:
            status: str = await conn.execute(sql, *args, timeout=timeout)
            return status

        return await self._with_conn(run)

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
            f"SELECT {_READING_COLUMNS} FROM readings WHERE device_id = $1 AND time_ms >= $2 AND time_ms < $3"
            " AND (time_ms, seq) > ($4, $5) ORDER BY time_ms, seq LIMIT $6",
            device_id, start_ms, end_ms, after_t, after_seq, limit)
        return [_reading(r) for r in rows]

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
            rows = await conn.fetch(fwd.READ_READINGS.format(columns=", ".join(f"r.{c}" for c in _COPY_COLUMNS)),
                                    [d for _, d, _, _ in wanted], [s for _, _, s, _ in wanted], times,
                                    min(times), max(times))
            found = {(r[0], r[1]): _reading(r) for r in rows}
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

    # ------------------------------------------------------------------ registry
    async def get_device(self, device_id: str) -> DeviceRecord | None:
        rows = await self._fetch(f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE device_id = $1", device_id)
        return _device(rows[0]) if rows else None

    async def device_by_token_digest(self, digest: bytes) -> DeviceRecord | None:
        rows = await self._fetch(f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE token_digest = $1", digest)
        return _device(rows[0]) if rows else None

    async def list_devices(self) -> list[DeviceRecord]:
        rows = await self._fetch(f"SELECT {_DEVICE_COLUMNS} FROM devices ORDER BY device_id")
        return [_device(r) for r in rows]

    @staticmethod
    def _device_params(record: DeviceRecord) -> tuple[Any, ...]:
        return (record.device_id, record.enabled, record.token_digest, record.token_created_ms,
                list(record.allow_cidrs), record.label, record.created_ms)

    async def put_device(self, record: DeviceRecord) -> None:
        await self._execute(
            f"INSERT INTO devices ({_DEVICE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
            " ON CONFLICT (device_id) DO UPDATE SET enabled = excluded.enabled,"
            " token_digest = excluded.token_digest, token_created_ms = excluded.token_created_ms,"
            " allow_cidrs = excluded.allow_cidrs, label = excluded.label, created_ms = excluded.created_ms",
            *self._device_params(record))

    async def create_device(self, record: DeviceRecord) -> bool:
        """Insert the device unless its id exists (atomic); False if it existed."""
        rows = await self._fetch(
            f"INSERT INTO devices ({_DEVICE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
            " ON CONFLICT (device_id) DO NOTHING RETURNING device_id", *self._device_params(record))
        return bool(rows)

    # ------------------------------------------------------------------ dashboard tokens
    async def add_dashboard_token(self, token: DashboardToken) -> bool:
        rows = await self._fetch(
            "INSERT INTO dashboard_tokens (name, role, digest, created_ms) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (name) DO NOTHING RETURNING name", token.name, token.role, token.digest, token.created_ms)
        return bool(rows)

    async def dashboard_token_by_digest(self, digest: bytes) -> DashboardToken | None:
        rows = await self._fetch("SELECT name, role, digest, created_ms FROM dashboard_tokens WHERE digest = $1",
                                 digest)
        return DashboardToken(*rows[0]) if rows else None

    async def list_dashboard_tokens(self) -> list[DashboardToken]:
        rows = await self._fetch("SELECT name, role, digest, created_ms FROM dashboard_tokens ORDER BY name")
        return [DashboardToken(*r) for r in rows]

    async def delete_dashboard_token(self, name: str) -> bool:
        rows = await self._fetch("DELETE FROM dashboard_tokens WHERE name = $1 RETURNING name", name)
        return bool(rows)

    async def delete_device(self, device_id: str) -> bool:
        status = await self._execute("DELETE FROM devices WHERE device_id = $1", device_id)
        return status.rsplit(" ", 1)[-1] == "1"

    # ------------------------------------------------------------------ alerts
    async def save_alerts(self, changes: list[tuple[AlertRow, AlertHistoryRow]]) -> list[int]:
        params = [(row, alert_tuple(row), entry) for row, entry in changes]

        async def run(conn: asyncpg.Connection) -> list[int]:
            ids = []
            async with conn.transaction():
                for row, values, entry in params:
                    if row.alert_id == 0:
                        alert_id = int(await conn.fetchval(_ALERT_INSERT, *values[1:]))
                    else:
                        alert_id = row.alert_id
                        await conn.execute(_ALERT_UPDATE, *values[1:], alert_id)
                    await conn.execute("INSERT INTO alert_history (alert_id, at_ms, event, actor, value, text)"
                                       " VALUES ($1, $2, $3, $4, $5, $6)",
                                       alert_id, entry.at_ms, entry.event, entry.by, entry.value, entry.text)
                    ids.append(alert_id)
            return ids

        ids = await self._with_conn(run)
        for (row, _), alert_id in zip(changes, ids, strict=True):
            row.alert_id = alert_id
        return ids

    async def active_alerts(self, limit: int | None = None) -> list[AlertRow]:
        rows = await self._fetch(f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE state <> 'cleared'"
                                 " ORDER BY id DESC LIMIT $1", limit)
        return [alert_from_tuple(r) for r in rows]

    async def alerts(self, device_id: str | None = None, limit: int = 100, before_id: int | None = None,
                     state: str | None = None) -> list[AlertRow]:
        rows = await self._fetch(
            f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE ($1::text IS NULL OR device_id = $1)"
            " AND ($2::bigint IS NULL OR id < $2) AND ($3::text IS NULL OR state = $3) ORDER BY id DESC LIMIT $4",
            device_id, before_id, state, limit)
        return [alert_from_tuple(r) for r in rows]

    async def alert(self, alert_id: int) -> AlertRow | None:
        rows = await self._fetch(f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE id = $1", alert_id)
        return alert_from_tuple(rows[0]) if rows else None

    async def alert_history(self, alert_id: int, limit: int = 1000) -> list[AlertHistoryRow]:
        rows = await self._fetch("SELECT alert_id, at_ms, event, actor, value, text FROM alert_history"
                                 " WHERE alert_id = $1 ORDER BY seq LIMIT $2", alert_id, limit)
        return [AlertHistoryRow(*r) for r in rows]

    async def alert_rules(self) -> list[StoredRule]:
        rows = await self._fetch("SELECT rule_id, spec, updated_ms, updated_by FROM alert_rules ORDER BY rule_id")
        return [StoredRule(r[0], None if r[1] is None else orjson.loads(r[1]), r[2], r[3]) for r in rows]

    async def put_alert_rule(self, rule: StoredRule) -> None:
        await self._execute(
            "INSERT INTO alert_rules (rule_id, spec, updated_ms, updated_by) VALUES ($1, $2::jsonb, $3, $4)"
            " ON CONFLICT (rule_id) DO UPDATE SET spec = excluded.spec, updated_ms = excluded.updated_ms,"
            " updated_by = excluded.updated_by",
            rule.rule_id, None if rule.spec is None else orjson.dumps(rule.spec).decode(), rule.updated_ms,
            rule.updated_by)

    async def save_baselines(self, rows: list[BaselineRow]) -> None:
        if not rows:
            return
        await self._execute(
            "INSERT INTO alert_baselines (rule_id, device_id, data, updated_ms)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[])"
            " ON CONFLICT (rule_id, device_id) DO UPDATE SET data = excluded.data, updated_ms = excluded.updated_ms",
            *_columns([(r.rule_id, r.device_id, r.data, r.updated_ms) for r in rows], 4))

    async def load_baselines(self) -> list[BaselineRow]:
        rows = await self._fetch("SELECT rule_id, device_id, data, updated_ms FROM alert_baselines")
        return [BaselineRow(*r) for r in rows]

    async def delete_baselines(self, rule_id: str | None = None, device_id: str | None = None) -> int:
        if rule_id is None and device_id is None:
            raise ValueError("delete_baselines: give a rule_id, a device_id or both")
        status = await self._execute("DELETE FROM alert_baselines WHERE ($1::text IS NULL OR rule_id = $1)"
                                     " AND ($2::text IS NULL OR device_id = $2)", rule_id, device_id)
        return int(status.split()[-1])
