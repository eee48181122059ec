"""PostgreSQL storage's engine: the writer task and its connection (group commit), and the pool.

One writer task owns one connection and commits group after group (gateway/storage/postgresql.py,
"Writes", steps 1-4); reads and small writes use a pool that reconnects by itself (``_with_conn``,
``_fetch``, ``_execute``). ``PostgresCore`` is the base of ``PostgresStorage`` and of its
per-concern parts (postgresql_registry.py, postgresql_alerts.py); the contract is
gateway/storage/base.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import asyncpg
import orjson

from gateway.backoff import Backoff
from gateway.errors import ConfigError, StorageError
from gateway.logs import log
from gateway.storage import postgresql_forward as fwd
from gateway.storage.base import ROLLUP_TIERS, ReadingRow, Storage
from gateway.storage.dsn import check_dsn, redact
from gateway.storage.ingest import aggregate, first_per_key, split_by_watermark
from gateway.storage.isolation import group_commit
from gateway.storage.postgresql_schema import COPY_COLUMNS, migrate

T = TypeVar("T")

OFFLOAD_ROWS = 256  # from this many new rows, rollups are computed on a thread, overlapping the COPY

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
_APPLY_LOGGED = _apply_statement(log=True)
# Errors caused by one caller's data, not by the server or the connection: retry callers one by one.
_DATA_ERRORS = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError, ValueError, TypeError,
                OverflowError)
# Server errors that mean the session is gone (class 08, shutdown, recovery): reconnect.
_LOST = (asyncpg.PostgresConnectionError, asyncpg.OperatorInterventionError)
_STOP = object()


class _Item:
    __slots__ = ("future", "rows")

    def __init__(self, future: asyncio.Future[list[ReadingRow]], rows: list[ReadingRow]) -> None:
        self.future = future
        self.rows = rows


def columns(rows: Sequence[tuple[Any, ...]], count: int) -> list[list[Any]]:
    """Transpose row tuples into ``count`` column lists (for unnest parameters)."""
    if not rows:
        return [[] for _ in range(count)]
    return [list(column) for column in zip(*rows, strict=True)]


class PostgresCore(Storage):
    """The connections and the writer task of a PostgreSQL 15 database (asyncpg)."""

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
        self._backoff = Backoff(0.2, 5.0)  # between failed reconnects of the writer
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
                self._forwarding = await migrate(conn, self.where)
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

    async def store(self, rows: list[ReadingRow]) -> list[ReadingRow]:
        """Durably store ``rows``; returns, after the group commit that contains them, the rows it
        newly inserted (gateway/storage/base.py)."""
        if not rows:
            return []
        if not self._opened or self._closing:
            raise StorageError("storage is closed")
        if self._writer is None or self._writer.done():
            raise StorageError("storage writer stopped; restart the gateway (see its log)")
        future: asyncio.Future[list[ReadingRow]] = asyncio.get_running_loop().create_future()
        self._enqueue(_Item(future, rows))
        return await future

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
            self._retry_at = time.monotonic() + self._backoff.next_s()
            self._last_error = str(err) or type(err).__name__
            raise self._unreachable(err) from None
        self._backoff.reset()
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
        outcomes = await group_commit([item.rows for item in batch], self._insert, isolate=_DATA_ERRORS,
                                      failed=self._write_error, errors=(Exception,), refused=self._write_error)
        for item, (error, inserted) in zip(batch, outcomes, strict=True):
            if item.future.done():
                continue  # the caller was cancelled; its rows are stored anyway (idempotent)
            if error is None:
                item.future.set_result(inserted)
            else:
                item.future.set_exception(error)

    def _write_error(self, err: BaseException) -> StorageError:
        if isinstance(err, StorageError):
            return err
        if isinstance(err, _DATA_ERRORS):
            return StorageError(f"readings not stored: {err}")
        return StorageError(f"commit to PostgreSQL at {self.where} failed: {err or type(err).__name__}; "
                            "nothing of this batch was acknowledged")

    async def _insert(self, rows: list[ReadingRow]) -> list[ReadingRow]:
        """Store ``rows`` and their derived data in one transaction (module docstring, steps 1-4);
        return the rows inserted (the new ones, one per key)."""
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
                        await conn.copy_records_to_table("readings", columns=COPY_COLUMNS, records=records)
                        agg = await pending
                    else:
                        await conn.copy_records_to_table("readings", columns=COPY_COLUMNS, records=records)
                        agg = aggregate(new)
                    args: list[list[Any]] = []
                    for tier in ROLLUP_TIERS:
                        args += columns(agg.rollup_rows(tier), 7)
                    args += columns(agg.latest_rows(), 5)
                    if self._forwarding:
                        args += fwd.log_args(new)
                    args += columns(agg.state_rows(), 3)
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
        return new

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
