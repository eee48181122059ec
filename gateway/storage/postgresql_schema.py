"""PostgreSQL schema: the numbered migrations, the tables created at every open, and the row codec.

The version is the one row of ``edgewire_schema``; ``migrate`` runs in one transaction under an
advisory lock, so gateways starting together on one database never migrate it twice
(gateway/storage/postgresql.py describes the tables and the partitions).
"""

from __future__ import annotations

import asyncpg
import orjson

from gateway.errors import StorageError
from gateway.storage import postgresql_forward as fwd
from gateway.storage.base import ReadingRow

SCHEMA_VERSION = 3
SCHEMA_LOCK = 7_301_201  # advisory lock key: migrations

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
    # 2 -> 3: OTA (gateway/storage/ota_base.py, docs/ota.md): releases and their files, rollouts,
    # their members, and each device's latest update report.
    """
    CREATE TABLE ota_releases (
        release_id text   PRIMARY KEY,
        kind       text   NOT NULL,
        version    text   NOT NULL,
        manifest   text   NOT NULL,
        sig        text   NOT NULL,
        created_ms bigint NOT NULL,
        size       bigint NOT NULL
    );
    CREATE TABLE ota_files (
        release_id text  NOT NULL,
        name       text  NOT NULL,
        data       bytea NOT NULL,
        PRIMARY KEY (release_id, name)
    );
    ALTER TABLE ota_files ALTER COLUMN data SET STORAGE EXTERNAL;
    CREATE TABLE ota_rollouts (
        rollout_id   text    PRIMARY KEY,
        release_id   text    NOT NULL,
        state        text    NOT NULL,
        target       text    NOT NULL,
        canary_pct   integer NOT NULL,
        max_failures integer NOT NULL,
        created_ms   bigint  NOT NULL,
        updated_ms   bigint  NOT NULL,
        reason       text    NOT NULL DEFAULT ''
    );
    CREATE INDEX ota_rollouts_release ON ota_rollouts (release_id);
    CREATE TABLE ota_members (
        rollout_id text    NOT NULL,
        device_id  text    NOT NULL,
        canary     boolean NOT NULL,
        state      text    NOT NULL,
        reason     text    NOT NULL DEFAULT '',
        updated_ms bigint  NOT NULL,
        PRIMARY KEY (rollout_id, device_id)
    );
    CREATE INDEX ota_members_device ON ota_members (device_id);
    CREATE TABLE ota_reports (
        device_id  text   PRIMARY KEY,
        release_id text   NOT NULL,
        state      text   NOT NULL,
        reason     text   NOT NULL DEFAULT '',
        done       bigint,
        total      bigint,
        updated_ms bigint NOT NULL
    );
    """,
]

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

# Device labels (gateway/groups.py): a column added at every open when missing, beside the numbered
# migrations (looked up first: ALTER TABLE would take the table's lock at every open).
HAS_DEVICE_LABELS = ("SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()"
                     " AND table_name = 'devices' AND column_name = 'labels')")
DEVICE_LABELS_DDL = "ALTER TABLE devices ADD COLUMN IF NOT EXISTS labels jsonb NOT NULL DEFAULT '{}'::jsonb"

COPY_COLUMNS = ("device_id", "seq", "time_ms", "received_ms", "boot", "device_ts", "uptime_ms", "quality",
                "metrics")
READING_COLUMNS = ", ".join(COPY_COLUMNS)


def reading(row: asyncpg.Record) -> ReadingRow:
    return ReadingRow(device_id=row[0], seq=row[1], time_ms=row[2], received_ms=row[3], boot=row[4],
                      device_ts=row[5], uptime_ms=row[6], quality=row[7], metrics=orjson.loads(row[8]))


async def migrate(conn: asyncpg.Connection, where: str) -> bool:
    """Bring the database to SCHEMA_VERSION, create the tables made at every open (inside the
    caller's transaction); whether some forwarding sink cursor exists."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
    await conn.execute("CREATE TABLE IF NOT EXISTS edgewire_schema (version integer NOT NULL)")
    version = await conn.fetchval("SELECT max(version) FROM edgewire_schema") or 0
    if version > SCHEMA_VERSION:
        raise StorageError(f"database {where} has schema version {version}, newer than this "
                           f"gateway's {SCHEMA_VERSION}; upgrade the gateway")
    while version < SCHEMA_VERSION:
        await conn.execute(MIGRATIONS[version])
        version += 1
    await conn.execute(fwd.FORWARD_DDL)
    forwarding = bool(await conn.fetchval(fwd.HAS_SINKS))
    await conn.execute("DELETE FROM edgewire_schema")
    await conn.execute("INSERT INTO edgewire_schema (version) VALUES ($1)", version)
    await conn.execute(DASHBOARD_TOKENS_DDL)
    if not await conn.fetchval(HAS_DEVICE_LABELS):
        await conn.execute(DEVICE_LABELS_DDL)
    return forwarding
