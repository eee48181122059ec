"""SQLite side of forwarding: the forward log, sink cursors and leases (see base.Storage).

``FORWARD_DDL`` runs at every open (``IF NOT EXISTS``; not a numbered migration):

- ``forward_log(id, created_ms, keys)``: one row per group commit that inserted readings,
  written in the commit's transaction; ``keys`` is the JSON list ``[[device_id, seq], ...]``
  of the readings it inserted, sorted. ``id`` is AUTOINCREMENT: never reused, so with one
  writer its order is the commit order.
- ``forward_cursors(sink, commit_id, idx, owner, lease_until_ms, updated_ms)``: each sink's
  cursor (a LogPosition with tx 0) and lease.

The functions taking ``conn`` run on the writer thread inside a transaction (SQLiteStorage
``_write``) or on a reader connection (``read_after``).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import Any

from gateway.storage.base import LogPosition, ReadingRow, SinkCursor

FORWARD_DDL = """
CREATE TABLE IF NOT EXISTS forward_log (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    created_ms INTEGER NOT NULL,
    keys       TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS forward_log_created ON forward_log (created_ms);
CREATE TABLE IF NOT EXISTS forward_cursors (
    sink           TEXT    PRIMARY KEY NOT NULL,
    commit_id      INTEGER NOT NULL,
    idx            INTEGER NOT NULL,
    owner          TEXT    NOT NULL DEFAULT '',
    lease_until_ms INTEGER NOT NULL DEFAULT 0,
    updated_ms     INTEGER NOT NULL DEFAULT 0,
    expired        INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
"""

LOG_ROWS_PER_READ = 256  # forward log rows looked at per readings_after call
TRIM_BATCH = 1000  # forward log rows deleted per transaction

INSERT_LOG = "INSERT INTO forward_log (created_ms, keys) VALUES (?, ?)"


def log_params(rows: list[ReadingRow], dumps: Callable[[Any], str]) -> tuple[int, str]:
    """(created_ms, keys JSON) of the forward log row for the readings a commit inserted."""
    keys = sorted((r.device_id, r.seq) for r in rows)
    return max(r.received_ms for r in rows), dumps(keys)


def has_sinks(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM forward_cursors LIMIT 1").fetchone() is not None


def instance_of(owner: str) -> str:
    """The gateway instance of a lease owner ``<instance>/<process>``."""
    return owner.split("/", 1)[0]


def register(conn: sqlite3.Connection, sink: str, now_ms: int) -> None:
    """The sink's cursor, created at the end of the log (no lease) if missing."""
    seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'forward_log'").fetchone()
    conn.execute("INSERT INTO forward_cursors (sink, commit_id, idx, owner, lease_until_ms, updated_ms)"
                 " VALUES (?, ?, 0, '', 0, ?) ON CONFLICT (sink) DO NOTHING",
                 (sink, (int(seq[0]) if seq else 0) + 1, now_ms))


def claim(conn: sqlite3.Connection, sink: str, owner: str, now_ms: int, lease_ms: int) -> LogPosition | None:
    register(conn, sink, now_ms)
    row = conn.execute("SELECT commit_id, idx, owner, lease_until_ms FROM forward_cursors WHERE sink = ?",
                       (sink,)).fetchone()
    if row[2] != owner and row[3] > now_ms and instance_of(row[2]) != instance_of(owner):
        return None
    conn.execute("UPDATE forward_cursors SET owner = ?, lease_until_ms = ?, updated_ms = ? WHERE sink = ?",
                 (owner, now_ms + lease_ms, now_ms, sink))
    return LogPosition(0, int(row[0]), int(row[1]))


def advance(conn: sqlite3.Connection, sink: str, owner: str, position: LogPosition, now_ms: int,
            lease_ms: int) -> bool:
    row = conn.execute("SELECT commit_id, idx FROM forward_cursors WHERE sink = ? AND owner = ?",
                       (sink, owner)).fetchone()
    if row is None:
        return False
    new = max(LogPosition(0, int(row[0]), int(row[1])), position)
    conn.execute("UPDATE forward_cursors SET commit_id = ?, idx = ?, lease_until_ms = ?, updated_ms = ?"
                 " WHERE sink = ?", (new.commit, new.index, now_ms + lease_ms, now_ms, sink))
    return True


def release(conn: sqlite3.Connection, sink: str, owner: str) -> None:
    conn.execute("UPDATE forward_cursors SET lease_until_ms = 0 WHERE sink = ? AND owner = ?", (sink, owner))


def forget(conn: sqlite3.Connection, sink: str) -> bool:
    return conn.execute("DELETE FROM forward_cursors WHERE sink = ?", (sink,)).rowcount == 1


def trim_step(older_than_ms: int) -> Callable[[sqlite3.Connection], int]:
    """One transaction of trimming: at most TRIM_BATCH rows (passed by every cursor, or too old; the
    readings of a too-old row that a cursor had not passed are added to its ``expired`` count)."""

    def op(conn: sqlite3.Connection) -> int:
        marks = conn.execute("SELECT sink, commit_id, idx FROM forward_cursors").fetchall()
        low = min((int(m[1]) for m in marks), default=None)
        passed = "1" if low is None else "id < ?"
        params: tuple[Any, ...] = (older_than_ms,) if low is None else (int(low), older_than_ms)
        rows = conn.execute(f"SELECT id FROM forward_log WHERE {passed} OR created_ms < ? ORDER BY id LIMIT ?",
                            (*params, TRIM_BATCH)).fetchall()
        ids = [int(r[0]) for r in rows]
        if low is not None and ids and ids[-1] >= low:  # too-old rows some cursor has not passed
            sizes = dict(conn.execute("SELECT id, json_array_length(keys) FROM forward_log WHERE id >= ? AND id <= ?",
                                      (low, ids[-1])).fetchall())
            ahead = [(i, int(sizes[i])) for i in ids if i in sizes]
            for sink, commit_id, idx in marks:
                lost = sum(n - (idx if i == commit_id else 0) for i, n in ahead if i >= commit_id)
                if lost:
                    conn.execute("UPDATE forward_cursors SET expired = expired + ? WHERE sink = ?", (lost, sink))
        conn.execute("DELETE FROM forward_log WHERE id IN (SELECT value FROM json_each(?))", (json.dumps(ids),))
        return len(ids)

    return op


def cursors(rows: list[tuple[Any, ...]]) -> list[SinkCursor]:
    return [SinkCursor(r[0], LogPosition(0, int(r[1]), int(r[2])), r[3], int(r[4]), int(r[5]), int(r[6]))
            for r in rows]


CURSORS_SQL = ("SELECT sink, commit_id, idx, owner, lease_until_ms, updated_ms, expired FROM forward_cursors"
               " ORDER BY sink")


def read_after(conn: sqlite3.Connection, position: LogPosition, limit: int, columns: str,
               reading: Callable[[tuple[Any, ...]], ReadingRow]) -> list[tuple[LogPosition, ReadingRow | None]]:
    """Readings after ``position`` (on a reader connection; see base.Storage.readings_after)."""
    logs = conn.execute("SELECT id, keys FROM forward_log WHERE id >= ? ORDER BY id LIMIT ?",
                        (position.commit, LOG_ROWS_PER_READ)).fetchall()
    wanted: list[tuple[LogPosition, str, int]] = []
    for log_id, text in logs:
        keys = json.loads(text)
        start = position.index if log_id == position.commit else 0
        for i in range(start, len(keys)):
            wanted.append((LogPosition(0, int(log_id), i + 1), keys[i][0], keys[i][1]))
            if len(wanted) >= limit:
                break
        if len(wanted) >= limit:
            break
    if not wanted:
        return []
    found: dict[tuple[str, int], ReadingRow] = {}
    keys_json = json.dumps([[device, seq] for _, device, seq in wanted])
    for r in conn.execute(f"SELECT {', '.join('r.' + c.strip() for c in columns.split(','))}"
                          " FROM json_each(?) AS j JOIN readings AS r"
                          " ON r.device_id = j.value ->> 0 AND r.seq = j.value ->> 1", (keys_json,)).fetchall():
        found[(r[0], r[1])] = reading(r)
    return [(pos, found.get((device, seq))) for pos, device, seq in wanted]
