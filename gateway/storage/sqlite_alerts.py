"""SQLite storage: alerts, their history, stored rules and learned baselines (see base.Storage).

Reads go through the reader pool, writes through the writer thread (gateway/storage/sqlite_core.py).
"""

from __future__ import annotations

import json
import sqlite3

from gateway.storage.base import (
    ALERT_COLUMNS,
    AlertHistoryRow,
    AlertRow,
    BaselineRow,
    StoredRule,
    alert_from_tuple,
    alert_tuple,
)
from gateway.storage.sqlite_core import SQLiteCore

_ALERT_COLUMNS = ", ".join(ALERT_COLUMNS)
_ALERT_VALUES = ", ".join("?" * len(ALERT_COLUMNS))
_ALERT_UPDATE = ", ".join(f"{c} = ?" for c in ALERT_COLUMNS[1:])


class SQLiteAlerts(SQLiteCore):
    """What the alert engine (gateway/alerts/) stores."""

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
