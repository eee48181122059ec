"""SQLite storage: WAL, ``synchronous=FULL`` by default, group commit on one writer thread.

Contract (see base.Storage): ``store`` returns only after its rows are committed; a
row whose (device_id, seq) is already stored is ignored, and so are its samples.

Threads: one writer thread owns the read-write connection and runs every write
(readings in group commits, registry and alert changes in their own transactions).
Reads run on a small pool of read-only connections, so an auth lookup never waits
behind a commit (WAL lets readers run while a writer commits).

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

import asyncio
import contextlib
import json
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from gateway.errors import ConfigError, StorageError
from gateway.storage import sqlite_forward as fwd
from gateway.storage.base import (
    ALERT_COLUMNS,
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
from gateway.storage.ingest import aggregate, check_rows, first_per_key, split_by_watermark

try:
    import orjson

    def _metrics_json(metrics: Any) -> str:
        return orjson.dumps(metrics).decode()
except ImportError:  # pragma: no cover - orjson is a gateway dependency
    def _metrics_json(metrics: Any) -> str:
        return json.dumps(metrics, allow_nan=False, separators=(",", ":"))


T = TypeVar("T")

SCHEMA_VERSION = 3
EXPIRE_BATCH = 1000  # readings (or rollup buckets) deleted per retention transaction

# MIGRATIONS[n] brings a database from user_version n to n + 1.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE readings (
        device_id   TEXT    NOT NULL,
        seq         INTEGER NOT NULL,
        time_ms     INTEGER NOT NULL,
        received_ms INTEGER NOT NULL,
        boot        TEXT,
        device_ts   INTEGER,
        uptime_ms   INTEGER,
        quality     TEXT,
        metrics     TEXT    NOT NULL,
        PRIMARY KEY (device_id, seq)
    ) WITHOUT ROWID;

    CREATE TABLE samples (
        device_id TEXT    NOT NULL,
        metric    TEXT    NOT NULL,
        time_ms   INTEGER NOT NULL,
        seq       INTEGER NOT NULL,
        value     REAL    NOT NULL CHECK (typeof(value) = 'real'),
        PRIMARY KEY (device_id, metric, time_ms, seq)
    ) WITHOUT ROWID;

    -- Runs only for rows really inserted (ON CONFLICT DO NOTHING skips duplicates): exactly-once samples.
    CREATE TRIGGER readings_samples AFTER INSERT ON readings BEGIN
        INSERT INTO samples (device_id, metric, time_ms, seq, value)
        SELECT NEW.device_id, key, NEW.time_ms, NEW.seq, value FROM json_each(NEW.metrics);
    END;

    CREATE TABLE devices (
        device_id        TEXT PRIMARY KEY NOT NULL,
        enabled          INTEGER NOT NULL DEFAULT 1,
        token_digest     BLOB UNIQUE,
        token_created_ms INTEGER,
        allow_cidrs      TEXT NOT NULL DEFAULT '[]',
        label            TEXT NOT NULL DEFAULT '',
        created_ms       INTEGER NOT NULL
    );

    CREATE TABLE alerts (
        id          INTEGER PRIMARY KEY,
        device_id   TEXT    NOT NULL,
        metric      TEXT    NOT NULL,
        rule        TEXT    NOT NULL,
        raised_ms   INTEGER NOT NULL,
        value       REAL    NOT NULL,
        cleared_ms  INTEGER,
        clear_value REAL
    );
    CREATE INDEX alerts_active ON alerts (id) WHERE cleared_ms IS NULL;
    CREATE INDEX alerts_device ON alerts (device_id, id);
    """,
    # 1 -> 2: device state, latest values, rollups, retention (backfilled from version 1 data).
    """
    CREATE TABLE device_state (
        device_id    TEXT    PRIMARY KEY NOT NULL,
        last_seq     INTEGER NOT NULL DEFAULT 0,
        last_seen_ms INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;

    CREATE TABLE latest (
        device_id TEXT    NOT NULL,
        metric    TEXT    NOT NULL,
        value     REAL    NOT NULL,
        time_ms   INTEGER NOT NULL,
        seq       INTEGER NOT NULL,
        PRIMARY KEY (device_id, metric)
    ) WITHOUT ROWID;

    """ + "".join(f"""
    CREATE TABLE rollup_{tier} (
        device_id TEXT    NOT NULL,
        metric    TEXT    NOT NULL,
        bucket_ms INTEGER NOT NULL,
        n         INTEGER NOT NULL,
        vsum      REAL    NOT NULL,
        vmin      REAL    NOT NULL,
        vmax      REAL    NOT NULL,
        PRIMARY KEY (device_id, metric, bucket_ms)
    ) WITHOUT ROWID;
    CREATE INDEX rollup_{tier}_bucket ON rollup_{tier} (bucket_ms);
""" for tier in ("5m", "1h")) + """
    -- Retention and export walk a device's readings by time.
    CREATE INDEX readings_device_time ON readings (device_id, time_ms);

    -- A deleted reading takes its samples with it.
    CREATE TRIGGER readings_expire AFTER DELETE ON readings BEGIN
        DELETE FROM samples WHERE device_id = OLD.device_id AND time_ms = OLD.time_ms AND seq = OLD.seq
            AND metric IN (SELECT key FROM json_each(OLD.metrics));
    END;

    INSERT INTO device_state (device_id, last_seq, last_seen_ms)
        SELECT device_id, max(seq), max(received_ms) FROM readings GROUP BY device_id;
    INSERT INTO latest (device_id, metric, value, time_ms, seq)
        SELECT device_id, metric, value, time_ms, seq FROM (
            SELECT *, row_number() OVER (PARTITION BY device_id, metric ORDER BY time_ms DESC, seq DESC) AS rn
            FROM samples) WHERE rn = 1;
    INSERT INTO rollup_5m (device_id, metric, bucket_ms, n, vsum, vmin, vmax)
        SELECT device_id, metric, time_ms - ((time_ms % 300000) + 300000) % 300000 AS b,
               count(*), sum(value), min(value), max(value) FROM samples GROUP BY device_id, metric, b;
    INSERT INTO rollup_1h (device_id, metric, bucket_ms, n, vsum, vmin, vmax)
        SELECT device_id, metric, time_ms - ((time_ms % 3600000) + 3600000) % 3600000 AS b,
               count(*), sum(value), min(value), max(value) FROM samples GROUP BY device_id, metric, b;
    """,
    # 2 -> 3: the alert engine's model (gateway/alerts/): states, severity, acknowledgement, text, a
    # nullable value (no_data alerts have none), history, rules edited through the admin API and
    # learned baselines. The alerts table is rebuilt (SQLite cannot drop a NOT NULL); version 2
    # alerts become 'above' alerts of severity 'major', their raise and clear copied into the history.
    """
    CREATE TABLE alerts_v3 (
        id           INTEGER PRIMARY KEY,
        device_id    TEXT    NOT NULL,
        metric       TEXT    NOT NULL,
        rule         TEXT    NOT NULL,
        kind         TEXT    NOT NULL,
        severity     TEXT    NOT NULL,
        state        TEXT    NOT NULL,
        text         TEXT    NOT NULL,
        raised_ms    INTEGER NOT NULL,
        value        REAL,
        last_value   REAL,
        updated_ms   INTEGER NOT NULL,
        acked_ms     INTEGER,
        acked_by     TEXT,
        suspended_ms INTEGER,
        cleared_ms   INTEGER,
        cleared_by   TEXT,
        clear_value  REAL,
        clear_reason TEXT
    );
    INSERT INTO alerts_v3 (id, device_id, metric, rule, kind, severity, state, text, raised_ms, value, last_value,
                           updated_ms, cleared_ms, cleared_by, clear_value)
        SELECT id, device_id, metric, rule, 'above', 'major',
               CASE WHEN cleared_ms IS NULL THEN 'active' ELSE 'cleared' END, rule, raised_ms, value, value,
               coalesce(cleared_ms, raised_ms), cleared_ms,
               CASE WHEN cleared_ms IS NULL THEN NULL ELSE 'auto' END, clear_value
        FROM alerts;
    DROP TABLE alerts;
    ALTER TABLE alerts_v3 RENAME TO alerts;
    CREATE INDEX alerts_open ON alerts (id) WHERE state != 'cleared';
    CREATE INDEX alerts_device ON alerts (device_id, id);

    CREATE TABLE alert_history (
        seq      INTEGER PRIMARY KEY,
        alert_id INTEGER NOT NULL,
        at_ms    INTEGER NOT NULL,
        event    TEXT    NOT NULL,
        actor    TEXT,
        value    REAL,
        text     TEXT    NOT NULL DEFAULT ''
    );
    CREATE INDEX alert_history_alert ON alert_history (alert_id, seq);
    INSERT INTO alert_history (alert_id, at_ms, event, value, text)
        SELECT id, raised_ms, 'raised', value, text FROM alerts ORDER BY id;
    INSERT INTO alert_history (alert_id, at_ms, event, actor, value, text)
        SELECT id, cleared_ms, 'cleared', 'auto', clear_value, text FROM alerts WHERE cleared_ms IS NOT NULL
        ORDER BY id;

    CREATE TABLE alert_rules (
        rule_id    TEXT    PRIMARY KEY NOT NULL,
        spec       TEXT,
        updated_ms INTEGER NOT NULL,
        updated_by TEXT    NOT NULL
    );

    CREATE TABLE alert_baselines (
        rule_id    TEXT    NOT NULL,
        device_id  TEXT    NOT NULL,
        data       TEXT    NOT NULL,
        updated_ms INTEGER NOT NULL,
        PRIMARY KEY (rule_id, device_id)
    ) WITHOUT ROWID;
    CREATE INDEX alert_baselines_device ON alert_baselines (device_id);
    """,
]

# Dashboard tokens (docs/configuration.md, "Dashboard roles and tokens"): created at every open,
# idempotently, beside the numbered migrations.
DASHBOARD_TOKENS_DDL = """
    CREATE TABLE IF NOT EXISTS dashboard_tokens (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL CHECK (role IN ('viewer', 'operator')),
        digest BLOB NOT NULL UNIQUE,
        created_ms INTEGER NOT NULL
    );
"""

_INSERT_READING = (
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
_READING_COLUMNS = "device_id, seq, time_ms, received_ms, boot, device_ts, uptime_ms, quality, metrics"
_DEVICE_COLUMNS = "device_id, enabled, token_digest, token_created_ms, allow_cidrs, label, created_ms"
_ALERT_COLUMNS = ", ".join(ALERT_COLUMNS)
_ALERT_VALUES = ", ".join("?" * len(ALERT_COLUMNS))
_ALERT_UPDATE = ", ".join(f"{c} = ?" for c in ALERT_COLUMNS[1:])
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


def _device(row: tuple[Any, ...]) -> DeviceRecord:
    return DeviceRecord(
        device_id=row[0], enabled=bool(row[1]), token_digest=row[2], token_created_ms=row[3],
        allow_cidrs=list(json.loads(row[4] or "[]")), label=row[5] or "", created_ms=row[6])


def _reading(row: tuple[Any, ...]) -> ReadingRow:
    return ReadingRow(device_id=row[0], seq=row[1], time_ms=row[2], received_ms=row[3], boot=row[4],
                      device_ts=row[5], uptime_ms=row[6], quality=row[7], metrics=json.loads(row[8]))


def _reading_tuples(rows: Iterable[ReadingRow]) -> list[tuple[Any, ...]]:
    dumps = _metrics_json
    return [(r.device_id, r.seq, r.time_ms, r.received_ms, r.boot, r.device_ts, r.uptime_ms, r.quality,
             dumps(r.metrics)) for r in rows]


class SQLiteStorage(Storage):
    """Embedded storage in one SQLite file (plus its -wal and -shm files)."""

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
            self._migrate(conn)
            self._forwarding = self._create_forward_tables(conn)
        except sqlite3.DatabaseError as err:
            conn.close()
            raise StorageError(f"cannot open database {self.path}: {err} (is it an Edgewire database, "
                               "and writable?)") from None
        except BaseException:
            conn.close()
            raise
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StorageError(
                    f"database {self.path} has schema version {version}, newer than this gateway's "
                    f"{SCHEMA_VERSION}; upgrade the gateway")
            while version < SCHEMA_VERSION:
                for statement in _split_script(MIGRATIONS[version]):
                    conn.execute(statement)
                version += 1
                conn.execute(f"PRAGMA user_version = {version}")
            for statement in _split_script(DASHBOARD_TOKENS_DDL):
                conn.execute(statement)
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise

    @staticmethod
    def _create_forward_tables(conn: sqlite3.Connection) -> bool:
        """FORWARD_DDL (idempotent, at every open); whether some sink cursor exists."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _split_script(fwd.FORWARD_DDL):
                conn.execute(statement)
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        return fwd.has_sinks(conn)

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

    async def store(self, rows: list[ReadingRow]) -> None:
        """Durably store ``rows``; returns after the group commit that contains them."""
        if not rows:
            return
        await self._submit(rows=rows)

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
        outcome: list[tuple[_Item, BaseException | None, Any]] = []
        prepared: list[tuple[_Item, list[ReadingRow]]] = []
        for item in batch:
            assert item.rows is not None
            try:
                check_rows(item.rows)
                prepared.append((item, item.rows))
            except Exception as err:  # not numbers, not finite: only this caller fails
                outcome.append((item, StorageError(f"readings not stored: invalid row ({err})"), None))
        if prepared:
            try:
                self._insert(conn, [row for _, rows in prepared for row in rows])
                outcome.extend((item, None, None) for item, _ in prepared)
            except _DATA_ERRORS as err:
                if len(prepared) == 1:
                    outcome.append((prepared[0][0], StorageError(f"readings not stored: {err}"), None))
                else:  # isolate the caller whose rows the database refused
                    for item, rows in prepared:
                        try:
                            self._insert(conn, rows)
                            outcome.append((item, None, None))
                        except (sqlite3.Error, *_DATA_ERRORS) as one:
                            outcome.append((item, StorageError(f"readings not stored: {one}"), None))
            except sqlite3.Error as err:
                self.last_error = f"{type(err).__name__}: {err}"[:200]
                error = StorageError(f"commit to {self.path} failed: {err}; nothing of this batch was stored")
                outcome.extend((item, error, None) for item, _ in prepared)
        self._resolve(outcome)

    def _insert(self, conn: sqlite3.Connection, rows: list[ReadingRow]) -> None:
        """Store ``rows`` and their derived data in one transaction (gateway/storage/ingest.py).

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
                inserted = conn.executemany(_INSERT_READING, _reading_tuples(new)).rowcount
                if inserted != len(new):
                    raise sqlite3.DatabaseError("device_state is behind the readings table (edited by hand?)")
                agg = aggregate(new)
                for tier in ROLLUP_TIERS:
                    conn.executemany(_UPSERT_ROLLUP.format(table=f"rollup_{tier}"), agg.rollup_rows(tier))
                conn.executemany(_UPSERT_LATEST, agg.latest_rows())
                conn.executemany(_UPSERT_STATE, agg.state_rows())
                if self._forwarding:
                    conn.execute(fwd.INSERT_LOG, fwd.log_params(new, _metrics_json))
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

    def _run_op(self, conn: sqlite3.Connection, item: _Item) -> None:
        assert item.fn is not None
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                value = item.fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
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
            f"SELECT {_READING_COLUMNS} FROM readings WHERE device_id = ? AND time_ms >= ? AND time_ms < ?"
            " AND (time_ms, seq) > (?, ?) ORDER BY time_ms, seq LIMIT ?",
            (device_id, start_ms, end_ms, after_t, after_seq, limit))
        return [_reading(r) for r in rows]

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
        return await self._read(lambda: fwd.read_after(self._reader_conn(), position, limit, _READING_COLUMNS,
                                                       _reading))

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

    # ------------------------------------------------------------------ registry
    async def get_device(self, device_id: str) -> DeviceRecord | None:
        rows = await self._query(f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE device_id = ?", (device_id,))
        return _device(rows[0]) if rows else None

    async def device_by_token_digest(self, digest: bytes) -> DeviceRecord | None:
        rows = await self._query(f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE token_digest = ?", (digest,))
        return _device(rows[0]) if rows else None

    async def list_devices(self) -> list[DeviceRecord]:
        rows = await self._query(f"SELECT {_DEVICE_COLUMNS} FROM devices ORDER BY device_id")
        return [_device(r) for r in rows]

    @staticmethod
    def _device_params(record: DeviceRecord) -> tuple[Any, ...]:
        return (record.device_id, int(record.enabled), record.token_digest, record.token_created_ms,
                json.dumps(list(record.allow_cidrs)), record.label, record.created_ms)

    async def put_device(self, record: DeviceRecord) -> None:
        params = self._device_params(record)

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"INSERT INTO devices ({_DEVICE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (device_id) DO UPDATE SET enabled = excluded.enabled,"
                " token_digest = excluded.token_digest, token_created_ms = excluded.token_created_ms,"
                " allow_cidrs = excluded.allow_cidrs, label = excluded.label,"
                " created_ms = excluded.created_ms",
                params)

        await self._write(op)

    async def create_device(self, record: DeviceRecord) -> bool:
        """Insert the device unless its id exists (atomic); False if it existed."""
        params = self._device_params(record)

        def op(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                f"INSERT INTO devices ({_DEVICE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (device_id) DO NOTHING", params)
            return cursor.rowcount == 1

        return await self._write(op)

    # ------------------------------------------------------------------ dashboard tokens
    async def add_dashboard_token(self, token: DashboardToken) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "INSERT INTO dashboard_tokens (name, role, digest, created_ms) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (name) DO NOTHING", (token.name, token.role, token.digest, token.created_ms))
            return cursor.rowcount == 1

        return await self._write(op)

    async def dashboard_token_by_digest(self, digest: bytes) -> DashboardToken | None:
        rows = await self._query("SELECT name, role, digest, created_ms FROM dashboard_tokens WHERE digest = ?",
                                 (digest,))
        return DashboardToken(*rows[0]) if rows else None

    async def list_dashboard_tokens(self) -> list[DashboardToken]:
        rows = await self._query("SELECT name, role, digest, created_ms FROM dashboard_tokens ORDER BY name")
        return [DashboardToken(*r) for r in rows]

    async def delete_dashboard_token(self, name: str) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            return conn.execute("DELETE FROM dashboard_tokens WHERE name = ?", (name,)).rowcount == 1

        return await self._write(op)

    async def delete_device(self, device_id: str) -> bool:
        return await self._write(
            lambda conn: conn.execute("DELETE FROM devices WHERE device_id = ?", (device_id,)).rowcount == 1)

    # ------------------------------------------------------------------ alerts
    async def save_alerts(self, changes: list[tuple[AlertRow, AlertHistoryRow]]) -> list[int]:
        params = [(row, alert_tuple(row), entry) for row, entry in changes]

        def op(conn: sqlite3.Connection) -> list[int]:
            ids = []
            for row, values, entry in params:
                if row.alert_id == 0:
                    cursor = conn.execute(f"INSERT INTO alerts ({_ALERT_COLUMNS}) VALUES ({_ALERT_VALUES})",
                                          (None, *values[1:]))
                    alert_id = int(cursor.lastrowid or 0)
                else:
                    alert_id = row.alert_id
                    conn.execute(f"UPDATE alerts SET {_ALERT_UPDATE} WHERE id = ?", (*values[1:], alert_id))
                conn.execute("INSERT INTO alert_history (alert_id, at_ms, event, actor, value, text)"
                             " VALUES (?, ?, ?, ?, ?, ?)",
                             (alert_id, entry.at_ms, entry.event, entry.by, entry.value, entry.text))
                ids.append(alert_id)
            return ids

        ids = await self._write(op)
        for (row, _), alert_id in zip(changes, ids, strict=True):
            row.alert_id = alert_id
        return ids

    async def active_alerts(self, limit: int | None = None) -> list[AlertRow]:
        rows = await self._query(f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE state != 'cleared'"
                                 " ORDER BY id DESC LIMIT ?", (-1 if limit is None else limit,))
        return [alert_from_tuple(r) for r in rows]

    async def alerts(self, device_id: str | None = None, limit: int = 100, before_id: int | None = None,
                     state: str | None = None) -> list[AlertRow]:
        rows = await self._query(
            f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE (?1 IS NULL OR device_id = ?1) AND (?2 IS NULL OR id < ?2)"
            " AND (?3 IS NULL OR state = ?3) ORDER BY id DESC LIMIT ?4", (device_id, before_id, state, limit))
        return [alert_from_tuple(r) for r in rows]

    async def alert(self, alert_id: int) -> AlertRow | None:
        rows = await self._query(f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE id = ?", (alert_id,))
        return alert_from_tuple(rows[0]) if rows else None

    async def alert_history(self, alert_id: int, limit: int = 1000) -> list[AlertHistoryRow]:
        rows = await self._query("SELECT alert_id, at_ms, event, actor, value, text FROM alert_history"
                                 " WHERE alert_id = ? ORDER BY seq LIMIT ?", (alert_id, limit))
        return [AlertHistoryRow(*r) for r in rows]

    async def alert_rules(self) -> list[StoredRule]:
        rows = await self._query("SELECT rule_id, spec, updated_ms, updated_by FROM alert_rules ORDER BY rule_id")
        return [StoredRule(r[0], None if r[1] is None else json.loads(r[1]), r[2], r[3]) for r in rows]

    async def put_alert_rule(self, rule: StoredRule) -> None:
        params = (rule.rule_id, None if rule.spec is None else json.dumps(rule.spec), rule.updated_ms,
                  rule.updated_by)

        def op(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO alert_rules (rule_id, spec, updated_ms, updated_by) VALUES (?, ?, ?, ?)"
                         " ON CONFLICT (rule_id) DO UPDATE SET spec = excluded.spec,"
                         " updated_ms = excluded.updated_ms, updated_by = excluded.updated_by", params)

        await self._write(op)

    async def save_baselines(self, rows: list[BaselineRow]) -> None:
        params = [(r.rule_id, r.device_id, r.data, r.updated_ms) for r in rows]

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany("INSERT INTO alert_baselines (rule_id, device_id, data, updated_ms) VALUES (?, ?, ?, ?)"
                             " ON CONFLICT (rule_id, device_id) DO UPDATE SET data = excluded.data,"
                             " updated_ms = excluded.updated_ms", params)

        if params:
            await self._write(op)

    async def load_baselines(self) -> list[BaselineRow]:
        rows = await self._query("SELECT rule_id, device_id, data, updated_ms FROM alert_baselines")
        return [BaselineRow(*r) for r in rows]

    async def delete_baselines(self, rule_id: str | None = None, device_id: str | None = None) -> int:
        if rule_id is None and device_id is None:
            raise ValueError("delete_baselines: give a rule_id, a device_id or both")

        def op(conn: sqlite3.Connection) -> int:
            return int(conn.execute("DELETE FROM alert_baselines WHERE (?1 IS NULL OR rule_id = ?1)"
                                    " AND (?2 IS NULL OR device_id = ?2)", (rule_id, device_id)).rowcount)

        return await self._write(op)


def _delete_batch(sql: str, params: tuple[Any, ...]) -> Callable[[sqlite3.Connection], int]:
    def op(conn: sqlite3.Connection) -> int:
        return int(conn.execute(sql, params).rowcount)

    return op


def _split_script(script: str) -> list[str]:
    """Split a migration into statements (sqlite3.complete_statement handles trigger bodies)."""
    statements: list[str] = []
    current = ""
    for line in script.splitlines(keepends=True):
        if line.strip().startswith("--"):
            continue
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    if current.strip():
        statements.append(current.strip())
    return statements
