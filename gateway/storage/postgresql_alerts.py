"""PostgreSQL storage: alerts, their history, stored rules and learned baselines (see base.Storage)."""

from __future__ import annotations

import asyncpg
import orjson

from gateway.storage.base import (
    ALERT_COLUMNS,
    AlertHistoryRow,
    AlertRow,
    BaselineRow,
    StoredRule,
    alert_from_tuple,
    alert_tuple,
)
from gateway.storage.postgresql_core import PostgresCore, columns

_ALERT_COLUMNS = ", ".join(ALERT_COLUMNS)
_ALERT_INSERT = (f"INSERT INTO alerts ({', '.join(ALERT_COLUMNS[1:])}) VALUES ("
                 f"{', '.join(f'${i}' for i in range(1, len(ALERT_COLUMNS)))}) RETURNING id")
_ALERT_UPDATE = (f"UPDATE alerts SET {', '.join(f'{c} = ${i}' for i, c in enumerate(ALERT_COLUMNS[1:], 1))}"
                 f" WHERE id = ${len(ALERT_COLUMNS)}")


class PostgresAlerts(PostgresCore):
    """What the alert engine (gateway/alerts/) stores."""

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
            *columns([(r.rule_id, r.device_id, r.data, r.updated_ms) for r in rows], 4))

    async def load_baselines(self) -> list[BaselineRow]:
        rows = await self._fetch("SELECT rule_id, device_id, data, updated_ms FROM alert_baselines")
        return [BaselineRow(*r) for r in rows]

    async def delete_baselines(self, rule_id: str | None = None, device_id: str | None = None) -> int:
        if rule_id is None and device_id is None:
            raise ValueError("delete_baselines: give a rule_id, a device_id or both")
        status = await self._execute("DELETE FROM alert_baselines WHERE ($1::text IS NULL OR rule_id = $1)"
                                     " AND ($2::text IS NULL OR device_id = $2)", rule_id, device_id)
        return int(status.split()[-1])
