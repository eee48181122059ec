"""PostgreSQL side of forwarding: the forward log, sink cursors and leases (see base.Storage).

``FORWARD_DDL`` runs at every open under the schema advisory lock (``IF NOT EXISTS``; not a
numbered migration):

- ``forward_log(tx, id, created_ms, devices, seqs, times)``: one row per group commit that
  inserted readings, written by the commit's own statement. ``tx`` is the writing
  transaction's id (``pg_current_xact_id()``, 64 bits, never wraps); the keys are parallel
  arrays, sorted by (device_id, seq); ``times`` lets the reader prune partitions.
- ``forward_cursors(sink, tx, commit_id, idx, owner, lease_until_ms, updated_ms)``.

Several gateways commit concurrently, and a transaction may commit after one that started
later: ids (and tx) are not in commit order. A reader therefore takes only log rows whose
``tx`` is below ``pg_snapshot_xmin(pg_current_snapshot())``: every transaction below xmin has
ended, so no row can appear later below a position already read. The price: a transaction
that stays open (an idle session in a transaction, a long report, on any database of the
server) delays forwarding until it ends; it never loses or reorders anything.
"""

from __future__ import annotations

from typing import Any

from gateway.storage.base import LogPosition, ReadingRow, SinkCursor

FORWARD_DDL = """
CREATE TABLE IF NOT EXISTS forward_log (
    tx         bigint   NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    id         bigserial NOT NULL,
    created_ms bigint   NOT NULL,
    devices    text[]   NOT NULL,
    seqs       bigint[] NOT NULL,
    times      bigint[] NOT NULL,
    PRIMARY KEY (tx, id)
);
CREATE INDEX IF NOT EXISTS forward_log_created ON forward_log (created_ms);
CREATE TABLE IF NOT EXISTS forward_cursors (
    sink           text    PRIMARY KEY,
    tx             bigint  NOT NULL,
    commit_id      bigint  NOT NULL,
    idx            integer NOT NULL,
    owner          text    NOT NULL DEFAULT '',
    lease_until_ms bigint  NOT NULL DEFAULT 0,
    updated_ms     bigint  NOT NULL DEFAULT 0,
    expired        bigint  NOT NULL DEFAULT 0
);
"""

LOG_ROWS_PER_READ = 256
TRIM_BATCH = 10_000
XMIN = "pg_snapshot_xmin(pg_current_snapshot())::text::bigint"

# A CTE for the group commit's apply statement: $1..$4 are renumbered by the caller.
LOG_CTE = ("fl AS (INSERT INTO forward_log (created_ms, devices, seqs, times)"
           " VALUES (${a}, ${b}::text[], ${c}::bigint[], ${d}::bigint[]))")

HAS_SINKS = "SELECT EXISTS (SELECT 1 FROM forward_cursors)"

READ_LOG = (f"SELECT tx, id, devices, seqs, times FROM forward_log WHERE (tx, id) >= ($1, $2) AND tx < {XMIN}"
            " ORDER BY tx, id LIMIT $3")

REGISTER = (
    "INSERT INTO forward_cursors (sink, tx, commit_id, idx, owner, lease_until_ms, updated_ms)"
    f" VALUES ($1, {XMIN}, 0, 0, '', 0, $2) ON CONFLICT (sink) DO NOTHING"
)
CLAIM_UPDATE = (
    "UPDATE forward_cursors SET owner = $2, lease_until_ms = $3, updated_ms = $4"
    " WHERE sink = $1 AND (owner = $2 OR lease_until_ms <= $4 OR split_part(owner, '/', 1) = split_part($2, '/', 1))"
    " RETURNING tx, commit_id, idx"
)
_AHEAD = "(tx, commit_id, idx) < ($3, $4, $5)"
ADVANCE = (
    f"UPDATE forward_cursors SET tx = CASE WHEN {_AHEAD} THEN $3 ELSE tx END,"
    f" commit_id = CASE WHEN {_AHEAD} THEN $4 ELSE commit_id END,"
    f" idx = CASE WHEN {_AHEAD} THEN $5 ELSE idx END, lease_until_ms = $6, updated_ms = $7"
    " WHERE sink = $1 AND owner = $2"
)
RELEASE = "UPDATE forward_cursors SET lease_until_ms = 0 WHERE sink = $1 AND owner = $2"
FORGET = "DELETE FROM forward_cursors WHERE sink = $1"
CURSORS = ("SELECT sink, tx, commit_id, idx, owner, lease_until_ms, updated_ms, expired FROM forward_cursors"
           " ORDER BY sink")
MARKS = "SELECT sink, tx, commit_id, idx FROM forward_cursors FOR UPDATE"
TRIM = (
    "DELETE FROM forward_log WHERE ctid = ANY(ARRAY(SELECT ctid FROM forward_log WHERE created_ms < $1"
    " OR NOT EXISTS (SELECT 1 FROM forward_cursors)"
    " OR (tx, id) < (SELECT tx, commit_id FROM forward_cursors ORDER BY tx, commit_id LIMIT 1) LIMIT $2))"
    " RETURNING tx, id, cardinality(devices)"
)
ADD_EXPIRED = "UPDATE forward_cursors SET expired = expired + $2 WHERE sink = $1"


def expired_counts(marks: list[Any], deleted: list[Any]) -> dict[str, int]:
    """Per sink: readings in ``deleted`` log rows (tx, id, size) at or after its cursor (not yet passed)."""
    out: dict[str, int] = {}
    for sink, tx, commit_id, idx in marks:
        lost = 0
        for row_tx, row_id, size in deleted:
            if (row_tx, row_id) == (tx, commit_id):
                lost += int(size) - int(idx)
            elif (row_tx, row_id) > (tx, commit_id):
                lost += int(size)
        if lost > 0:
            out[sink] = lost
    return out


def log_args(rows: list[ReadingRow]) -> list[Any]:
    """The LOG_CTE's parameters for the readings a commit inserted."""
    keyed = sorted(rows, key=lambda r: (r.device_id, r.seq))
    return [max(r.received_ms for r in rows), [r.device_id for r in keyed], [r.seq for r in keyed],
            [r.time_ms for r in keyed]]


def wanted_keys(logs: list[Any], position: LogPosition,
                limit: int) -> list[tuple[LogPosition, str, int, int]]:
    """(position after, device_id, seq, time_ms) of the readings after ``position`` in ``logs``."""
    wanted: list[tuple[LogPosition, str, int, int]] = []
    for tx, log_id, devices, seqs, times in logs:
        start = position.index if (tx, log_id) == (position.tx, position.commit) else 0
        for i in range(start, len(devices)):
            wanted.append((LogPosition(int(tx), int(log_id), i + 1), devices[i], int(seqs[i]), int(times[i])))
            if len(wanted) >= limit:
                return wanted
    return wanted


READ_READINGS = (
    "SELECT {columns} FROM readings r JOIN unnest($1::text[], $2::bigint[], $3::bigint[]) AS k(d, s, t)"
    " ON r.device_id = k.d AND r.seq = k.s AND r.time_ms = k.t WHERE r.time_ms >= $4 AND r.time_ms <= $5"
)


def cursors(rows: list[Any]) -> list[SinkCursor]:
    return [SinkCursor(r[0], LogPosition(int(r[1]), int(r[2]), int(r[3])), r[4], int(r[5]), int(r[6]), int(r[7]))
            for r in rows]
