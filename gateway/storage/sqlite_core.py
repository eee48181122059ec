"""SQLite storage's engine: the file, the writer thread (group commit) and the reader pool.

Threads: one writer thread owns the read-write connection and runs every write (readings in
group commits, registry and alert changes in their own transactions: ``_write``). Reads run on
a small pool of read-only connections (``_query``, ``_read``), so an auth lookup never waits
behind a commit (WAL lets readers run while a writer commits). ``SQLiteCore`` is the base of
``SQLiteStorage`` (gateway/storage/sqlite.py) and of its per-concern parts (sqlite_registry.py,
sqlite_alerts.py); the storage contract is gateway/storage/base.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from gateway.errors import ConfigError, StorageError
from gateway.storage import sqlite_forward as fwd
from gateway.storage.base import ROLLUP_TIERS, ReadingRow, Storage
from gateway.storage.ingest import aggregate, first_per_key, split_by_watermark
from gateway.storage.isolation import group_commit, run_now
from gateway.storage.sqlite_schema import create_forward_tables, immediate, metrics_json, migrate, reading_tuples

T = TypeVar("T")

INSERT_READING = (
    "INSERT INTO readings (device_id, seq, time_ms, received_ms, boot, device_ts, uptime_ms,"
    " quality, metrics) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device_id, seq) DO NOTHING"
)
_UPSERT_ROLLUP = (
    "INSERT INTO {table} (device_id, metric, bucket_ms, n, vsum, vmin, vmax) VALUES (?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (device_id, metric, bucket_ms) DO UPDATE SET n = n + excluded.n, vsum = vsum + excluded.vsum,"
    " vmin = min(vmin, excluded.vmin), vmax = max(vmax, excluded.vmax)"
)
_UPSERT_LATEST = (
    "INSERT INTO latest (device_id, metric, value, time_ms, seq) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (device_id, metric) DO UPDATE SET value = excluded.value, time_ms = excluded.time_ms,"
    " seq = excluded.seq WHERE (excluded.time_ms, excluded.seq) > (latest.time_ms, latest.seq)"
)
_UPSERT_STATE = (
    "INSERT INTO device_state (device_id, last_seq, last_seen_ms) VALUES (?, ?, ?)"
    " ON CONFLICT (device_id) DO UPDATE SET last_seq = max(last_seq, excluded.last_seq),"
    " last_seen_ms = max(last_seen_ms, excluded.last_seen_ms)"
)
_SYNC_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
# Errors caused by one caller's data, not by the database: retry the batch's callers one by one.
_DATA_ERRORS = (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.InterfaceError, sqlite3.ProgrammingError,
                OverflowError, ValueError, TypeError)

_STOP = object()


class _Item:
    """One queued unit of work and the future its caller awaits."""

    __slots__ = ("fn", "future", "loop", "rows")

    def __init__(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any],
                 rows: list[ReadingRow] | None = None,
                 fn: Callable[[sqlite3.Connection], Any] | None = None) -> None:
        self.loop = loop
        self.future = future
        self.rows = rows
        self.fn = fn


_Outcome = tuple["asyncio.Future[Any]", BaseException | None, Any]


def _settle(results: list[_Outcome]) -> None:
    for future, error, value in results:
        if future.done():  # the caller was cancelled; its rows are stored anyway (idempotent)
            continue
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)


class SQLiteCore(Storage):
    """The connections and threads of one SQLite file (plus its -wal and -shm files)."""

    def __init__(self, path: str | Path, commit_interval_ms: float = 5.0, max_batch_rows: int = 5000,
                 synchronous: str = "FULL", busy_timeout_ms: int = 5000, readers: int = 2) -> None:
        if str(path) in ("", ":memory:") or str(path).startswith("file:"):
            raise ConfigError(f"db_path: {str(path)!r} must be a file path (WAL needs a file)")
        sync = synchronous.upper()
        if sync not in _SYNC_MODES:
            raise ConfigError(f"synchronous: {synchronous!r} must be one of {', '.join(_SYNC_MODES)}")
        if commit_interval_ms < 0:
            raise ConfigError("commit_interval_ms: must be >= 0")
        if max_batch_rows < 1 or readers < 1 or busy_timeout_ms < 0:
            raise ConfigError("max_batch_rows and readers must be >= 1, busy_timeout_ms >= 0")
        self.path = Path(path)
        self.commit_interval = commit_interval_ms / 1000.0
        self.max_batch_rows = max_batch_rows
        self.synchronous = sync
        self.busy_timeout_ms = int(busy_timeout_ms)
        self._readers_count = readers
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._wconn: sqlite3.Connection | None = None
        self._readers: ThreadPoolExecutor | None = None
        self._rconns: list[sqlite3.Connection] = []
        self._local = threading.local()
        self._lock = threading.Lock()
        self._opened = False
        self._closing = False
        self._writer_failed: BaseException | None = None
        self._forwarding = False  # write the forward log (some sink cursor exists)
        # counters (read by /metrics; written by the writer thread only)
        self.commits = 0
        self.rows_written = 0  # rows offered to the database, duplicates included
        self.rows_inserted = 0  # new readings actually inserted
        self.largest_batch = 0
        self.failed_commits = 0
        self.last_error: str | None = None  # of the last commit, None once a commit succeeds

    # ------------------------------------------------------------------ lifecycle
    async def open(self) -> None:
        """Open the file, apply pragmas and migrations, start the writer and readers."""
        if self._opened:
            return
        self._wconn = await asyncio.to_thread(self._open_writer)
        self._readers = ThreadPoolExecutor(max_workers=self._readers_count,
                                           thread_name_prefix="ew-sqlite-read")
        self._writer = threading.Thread(target=self._writer_main, name="ew-sqlite-write", daemon=True)
        self._opened = True
        self._closing = False
        self._writer_failed = None
        self._writer.start()

    def _open_writer(self) -> sqlite3.Connection:
        if not self.path.parent.is_dir():
            raise StorageError(f"cannot open database {self.path}: "
                               f"directory {self.path.parent} does not exist")
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=self.busy_timeout_ms / 1000.0)
        except sqlite3.Error as err:
            raise StorageError(f"cannot open database {self.path}: {err}") from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StorageError(f"database {self.path}: cannot switch to WAL mode (got {mode}); "
                                   "is it on a network filesystem?")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            conn.execute("PRAGMA cache_size = -32768")  # 32 MiB
            conn.execute("PRAGMA temp_store = MEMORY")
            conn.execute("PRAGMA journal_size_limit = 67108864")
            migrate(conn, self.path)
            self._forwarding = create_forward_tables(conn)
        except sqlite3.DatabaseError as err:
            conn.close()
            raise StorageError(f"cannot open database {self.path}: {err} (is it an Edgewire database, "
                               "and writable?)") from None
        except BaseException:
            conn.close()
            raise
        return conn

    async def close(self) -> None:
        """Commit everything queued, stop the threads, close the connections. Idempotent."""
        if not self._opened or self._closing:
            return
        self._closing = True
        writer = self._writer
        self._queue.put(_STOP)
        if writer is not None:
            await asyncio.to_thread(writer.join)
        if self._readers is not None:
            await asyncio.to_thread(self._readers.shutdown, True)
        with self._lock:
            conns, self._rconns = self._rconns, []
        for conn in conns:
            conn.close()
        if self._wconn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._wconn.execute("PRAGMA optimize")
            self._wconn.close()
            self._wconn = None
        self._opened = False

    def health(self) -> dict[str, Any]:
        """closed; failed (the writer thread stopped: a bug); failing (the last commit failed, e.g.
        disk full or I/O error; it recovers with the next good commit); or ok."""
        if self._writer_failed is not None:
            state = "failed"
        elif not self._opened or self._closing:
            state = "closed"
        elif self.last_error is not None:
            state = "failing"
        else:
            state = "ok"
        return {"state": state, "commits": self.commits, "failed_commits": self.failed_commits,
                "last_error": self.last_error}

    # ------------------------------------------------------------------ writer
    async def _submit(self, rows: list[ReadingRow] | None = None,
                      fn: Callable[[sqlite3.Connection], Any] | None = None) -> Any:
        if not self._opened or self._closing:
            raise StorageError("storage is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.put(_Item(loop, future, rows, fn))
        if self._writer_failed is not None and not future.done():
            future.set_exception(StorageError(f"storage writer stopped: {self._writer_failed}"))
        return await future

    async def store(self, rows: list[ReadingRow]) -> list[ReadingRow]:
        """Durably store ``rows``; returns, after the group commit that contains them, the rows it
        newly inserted (gateway/storage/base.py)."""
        if not rows:
            return []
        inserted: list[ReadingRow] = await self._submit(rows=rows)
        return inserted

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` on the writer thread in its own transaction; return its result."""
        result: T = await self._submit(fn=fn)
        return result

    def _writer_main(self) -> None:
        conn = self._wconn
        assert conn is not None
        q = self._queue
        try:
            held: Any = None
            while True:
                item = held if held is not None else q.get()
                held = None
                if item is _STOP:
                    break
                if item.fn is not None:
                    self._run_op(conn, item)
                    continue
                batch = [item]
                count = len(item.rows)
                deadline = time.monotonic() + self.commit_interval
                while count < self.max_batch_rows:
                    try:
                        nxt = q.get_nowait()
                    except queue.Empty:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        try:
                            nxt = q.get(timeout=remaining)
                        except queue.Empty:
                            break
                    if nxt is _STOP or nxt.fn is not None:
                        held = nxt
                        break
                    batch.append(nxt)
                    count += len(nxt.rows)
                self._commit_batch(conn, batch)
        except BaseException as err:  # a bug: fail every waiting caller instead of hanging them
            self._writer_failed = err
            error = StorageError(f"storage writer stopped: {err}")
            pending: list[_Item] = []
            with contextlib.suppress(queue.Empty):
                while True:
                    nxt = q.get_nowait()
                    if nxt is not _STOP:
                        pending.append(nxt)
            self._resolve([(i, error, None) for i in pending])
            raise

    def _commit_batch(self, conn: sqlite3.Connection, batch: list[_Item]) -> None:
        async def insert(rows: list[ReadingRow]) -> list[ReadingRow]:
            return self._insert(conn, rows)

        def failed(err: BaseException) -> StorageError:
            self.last_error = f"{type(err).__name__}: {err}"[:200]
            return StorageError(f"commit to {self.path} failed: {err}; nothing of this batch was stored")

        callers = [item.rows for item in batch if item.rows is not None]
        assert len(callers) == len(batch)
        outcomes = run_now(group_commit(callers, insert, isolate=_DATA_ERRORS, failed=failed,
                                        errors=(sqlite3.Error, *_DATA_ERRORS)))
        self._resolve([(item, error, rows if error is None else None)
                       for item, (error, rows) in zip(batch, outcomes, strict=True)])

    def _insert(self, conn: sqlite3.Connection, rows: list[ReadingRow]) -> list[ReadingRow]:
        """Store ``rows`` and their derived data in one transaction (gateway/storage/ingest.py);
        return the rows inserted (the new ones, one per key).

        BEGIN IMMEDIATE takes the database's write lock before the watermarks are read, so
        no other writer (another gateway process, the CLI) can insert between the check and
        the insert. Rolls back and re-raises on any error.
        """
        unique = first_per_key(rows)
        conn.execute("BEGIN IMMEDIATE")
        try:
            devices = json.dumps(sorted({row.device_id for row in unique}))
            marks = dict(conn.execute("SELECT device_id, last_seq FROM device_state"
                                      " WHERE device_id IN (SELECT value FROM json_each(?))", (devices,)))
            new, check = split_by_watermark(unique, marks)
            for row in check:  # resends at or below the watermark: rare, one primary-key probe each
                if conn.execute("SELECT 1 FROM readings WHERE device_id = ? AND seq = ?",
                                (row.device_id, row.seq)).fetchone() is None:
                    new.append(row)
            inserted = 0
            if new:
                # rowcount sums sqlite3_changes(), which excludes the trigger's sample rows.
                inserted = conn.executemany(INSERT_READING, reading_tuples(new)).rowcount
                if inserted != len(new):
                    raise sqlite3.DatabaseError("device_state is behind the readings table (edited by hand?)")
                agg = aggregate(new)
                for tier in ROLLUP_TIERS:
                    conn.executemany(_UPSERT_ROLLUP.format(table=f"rollup_{tier}"), agg.rollup_rows(tier))
                conn.executemany(_UPSERT_LATEST, agg.latest_rows())
                conn.executemany(_UPSERT_STATE, agg.state_rows())
                if self._forwarding:
                    conn.execute(fwd.INSERT_LOG, fwd.log_params(new, metrics_json))
            conn.execute("COMMIT")
        except BaseException:
            self.failed_commits += 1
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        self.commits += 1
        self.last_error = None
        self.rows_written += len(rows)
        self.rows_inserted += inserted
        if len(rows) > self.largest_batch:
            self.largest_batch = len(rows)
        return new

    def _run_op(self, conn: sqlite3.Connection, item: _Item) -> None:
        assert item.fn is not None
        try:
            with immediate(conn):
                value = item.fn(conn)
        except sqlite3.Error as err:
            self._resolve([(item, StorageError(f"database {self.path}: {err}"), None)])
        except Exception as err:
            self._resolve([(item, err, None)])
        else:
            self._resolve([(item, None, value)])

    @staticmethod
    def _resolve(outcome: list[tuple[_Item, BaseException | None, Any]]) -> None:
        """Settle futures on their loops, one wake-up per loop."""
        by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
        for item, error, value in outcome:
            by_loop.setdefault(item.loop, []).append((item.future, error, value))
        for loop, results in by_loop.items():
            with contextlib.suppress(RuntimeError):  # loop already closed: nobody is waiting
                loop.call_soon_threadsafe(_settle, results)

    # ------------------------------------------------------------------ readers
    def _reader_conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            uri = self.path.resolve().as_uri() + "?mode=ro"
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False,
                                   timeout=self.busy_timeout_ms / 1000.0)
            conn.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
            conn.execute("PRAGMA query_only = 1")
            conn.execute("PRAGMA cache_size = -16384")
            self._local.conn = conn
            with self._lock:
                self._rconns.append(conn)
        return conn

    def _fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        # fetchall() ends the statement, so the next read sees the newest commit.
        return self._reader_conn().execute(sql, params).fetchall()

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        if not self._opened or self._readers is None:
            raise StorageError("storage is closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._readers, fn, *args)
        except sqlite3.Error as err:
            raise StorageError(f"reading {self.path} failed: {err}") from None
        except RuntimeError as err:  # executor shut down by close()
            raise StorageError(f"storage is closed ({err})") from None

    async def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return await self._read(self._fetch, sql, params)
