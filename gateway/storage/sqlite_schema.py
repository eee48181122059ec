"""SQLite schema: the numbered migrations, the tables created at every open, and the row codecs.

``PRAGMA user_version`` holds the schema version (gateway/storage/sqlite.py describes the tables).
``migrate`` runs on the writer's connection at open, in one ``BEGIN IMMEDIATE`` transaction, so two
processes opening the same file never migrate it twice.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from gateway.errors import StorageError
from gateway.storage import sqlite_forward as fwd
from gateway.storage.base import ReadingRow

try:
    import orjson

    def metrics_json(metrics: Any) -> str:
        return orjson.dumps(metrics).decode()
except ImportError:  # pragma: no cover - orjson is a gateway dependency
    def metrics_json(metrics: Any) -> str:
        return json.dumps(metrics, allow_nan=False, separators=(",", ":"))


SCHEMA_VERSION = 4


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
    # 3 -> 4: OTA (gateway/storage/ota_base.py, docs/ota.md): releases and their files, rollouts,
    # their members, and each device's latest update report.
    """
    CREATE TABLE ota_releases (
        release_id TEXT    PRIMARY KEY,
        kind       TEXT    NOT NULL,
        version    TEXT    NOT NULL,
        manifest   TEXT    NOT NULL,
        sig        TEXT    NOT NULL,
        created_ms INTEGER NOT NULL,
        size       INTEGER NOT NULL
    );
    CREATE TABLE ota_files (
        release_id TEXT NOT NULL,
        name       TEXT NOT NULL,
        data       BLOB NOT NULL,
        UNIQUE (release_id, name)
    );
    CREATE TABLE ota_rollouts (
        rollout_id   TEXT    PRIMARY KEY,
        release_id   TEXT    NOT NULL,
        state        TEXT    NOT NULL,
        target       TEXT    NOT NULL,
        canary_pct   INTEGER NOT NULL,
        max_failures INTEGER NOT NULL,
        created_ms   INTEGER NOT NULL,
        updated_ms   INTEGER NOT NULL,
        reason       TEXT    NOT NULL DEFAULT ''
    );
    CREATE INDEX ota_rollouts_release ON ota_rollouts (release_id);
    CREATE TABLE ota_members (
        rollout_id TEXT    NOT NULL,
        device_id  TEXT    NOT NULL,
        canary     INTEGER NOT NULL,
        state      TEXT    NOT NULL,
        reason     TEXT    NOT NULL DEFAULT '',
        updated_ms INTEGER NOT NULL,
        PRIMARY KEY (rollout_id, device_id)
    ) WITHOUT ROWID;
    CREATE INDEX ota_members_device ON ota_members (device_id);
    CREATE TABLE ota_reports (
        device_id  TEXT    PRIMARY KEY,
        release_id TEXT    NOT NULL,
        state      TEXT    NOT NULL,
        reason     TEXT    NOT NULL DEFAULT '',
        done       INTEGER,
        total      INTEGER,
        updated_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
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

# Device labels (gateway/groups.py): a column added at every open when missing, beside the numbered
# migrations (an old database gets it with every device unlabelled).
DEVICE_LABELS_COLUMN = "labels TEXT NOT NULL DEFAULT '{}'"


READING_COLUMNS = "device_id, seq, time_ms, received_ms, boot, device_ts, uptime_ms, quality, metrics"


def reading(row: tuple[Any, ...]) -> ReadingRow:
    return ReadingRow(device_id=row[0], seq=row[1], time_ms=row[2], received_ms=row[3], boot=row[4],
                      device_ts=row[5], uptime_ms=row[6], quality=row[7], metrics=json.loads(row[8]))


def reading_tuples(rows: Iterable[ReadingRow]) -> list[tuple[Any, ...]]:
    dumps = metrics_json
    return [(r.device_id, r.seq, r.time_ms, r.received_ms, r.boot, r.device_ts, r.uptime_ms, r.quality,
             dumps(r.metrics)) for r in rows]


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the database to SCHEMA_VERSION, create the dashboard tokens table and the devices' labels
    column (one transaction)."""
    with immediate(conn):
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"database {path} has schema version {version}, newer than this gateway's "
                f"{SCHEMA_VERSION}; upgrade the gateway")
        while version < SCHEMA_VERSION:
            for statement in split_script(MIGRATIONS[version]):
                conn.execute(statement)
            version += 1
            conn.execute(f"PRAGMA user_version = {version}")
        for statement in split_script(DASHBOARD_TOKENS_DDL):
            conn.execute(statement)
        if not any(row[1] == "labels" for row in conn.execute("PRAGMA table_info(devices)")):
            conn.execute(f"ALTER TABLE devices ADD COLUMN {DEVICE_LABELS_COLUMN}")


def create_forward_tables(conn: sqlite3.Connection) -> bool:
    """FORWARD_DDL (idempotent, at every open); whether some sink cursor exists."""
    with immediate(conn):
        for statement in split_script(fwd.FORWARD_DDL):
            conn.execute(statement)
    return fwd.has_sinks(conn)


@contextlib.contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """One ``BEGIN IMMEDIATE`` transaction (the write lock at once): COMMIT at the end of the block;
    on any exception, ROLLBACK (its own error ignored) and re-raise."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise


def split_script(script: str) -> list[str]:
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
