"""SQLite storage: the device registry and the dashboard tokens (see base.Storage).

Reads go through the reader pool, writes through the writer thread (gateway/storage/sqlite_core.py).
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from gateway.storage.base import DashboardToken, DeviceRecord
from gateway.storage.sqlite_core import SQLiteCore

_DEVICE_COLUMNS = "device_id, enabled, token_digest, token_created_ms, allow_cidrs, label, created_ms, labels"


def _device(row: tuple[Any, ...]) -> DeviceRecord:
    return DeviceRecord(
        device_id=row[0], enabled=bool(row[1]), token_digest=row[2], token_created_ms=row[3],
        allow_cidrs=list(json.loads(row[4] or "[]")), label=row[5] or "", created_ms=row[6],
        labels=dict(json.loads(row[7] or "{}")))


class SQLiteRegistry(SQLiteCore):
    """Devices (ids, token digests, allowed networks) and named dashboard tokens."""

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
                json.dumps(list(record.allow_cidrs)), record.label, record.created_ms,
                json.dumps(dict(record.labels)))

    async def put_device(self, record: DeviceRecord) -> None:
        params = self._device_params(record)

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"INSERT INTO devices ({_DEVICE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (device_id) DO UPDATE SET enabled = excluded.enabled,"
                " token_digest = excluded.token_digest, token_created_ms = excluded.token_created_ms,"
                " allow_cidrs = excluded.allow_cidrs, label = excluded.label,"
                " created_ms = excluded.created_ms, labels = excluded.labels",
                params)

        await self._write(op)

    async def create_device(self, record: DeviceRecord) -> bool:
        """Insert the device unless its id exists (atomic); False if it existed."""
        params = self._device_params(record)

        def op(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                f"INSERT INTO devices ({_DEVICE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
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
