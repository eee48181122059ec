"""PostgreSQL storage: the device registry and the dashboard tokens (see base.Storage)."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson

from gateway.storage.base import DashboardToken, DeviceRecord
from gateway.storage.postgresql_core import PostgresCore

_DEVICE_COLUMNS = "device_id, enabled, token_digest, token_created_ms, allow_cidrs, label, created_ms, labels"


def _device(row: asyncpg.Record) -> DeviceRecord:
    return DeviceRecord(device_id=row[0], enabled=bool(row[1]), token_digest=row[2], token_created_ms=row[3],
                        allow_cidrs=list(row[4] or []), label=row[5] or "", created_ms=row[6],
                        labels=dict(orjson.loads(row[7] or "{}")))



class PostgresRegistry(PostgresCore):
    """Devices (ids, token digests, allowed networks) and named dashboard tokens."""

    async def get_device(self, device_id: str) -> DeviceRecord | None:
        rows = await self._fetch(f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE device_id = $1", device_id)
        return _device(rows[0]) if rows else None

    async def device_by_token_digest(self, digest: bytes) -> DeviceRecord | None:
        rows = await self._fetch(f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE token_digest = $1", digest)
        return _device(rows[0]) if rows else None

    async def list_devices(self) -> list[DeviceRecord]:
        rows = await self._fetch(f"SELECT {_DEVICE_COLUMNS} FROM devices ORDER BY device_id")
        return [_device(r) for r in rows]

    @staticmethod
    def _device_params(record: DeviceRecord) -> tuple[Any, ...]:
        return (record.device_id, record.enabled, record.token_digest, record.token_created_ms,
                list(record.allow_cidrs), record.label, record.created_ms,
                orjson.dumps(dict(record.labels)).decode())

    async def put_device(self, record: DeviceRecord) -> None:
        await self._execute(
            f"INSERT INTO devices ({_DEVICE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb)"
            " ON CONFLICT (device_id) DO UPDATE SET enabled = excluded.enabled,"
            " token_digest = excluded.token_digest, token_created_ms = excluded.token_created_ms,"
            " allow_cidrs = excluded.allow_cidrs, label = excluded.label, created_ms = excluded.created_ms,"
            " labels = excluded.labels",
            *self._device_params(record))

    async def create_device(self, record: DeviceRecord) -> bool:
        """Insert the device unless its id exists (atomic); False if it existed."""
        rows = await self._fetch(
            f"INSERT INTO devices ({_DEVICE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb)"
            " ON CONFLICT (device_id) DO NOTHING RETURNING device_id", *self._device_params(record))
        return bool(rows)

    # ------------------------------------------------------------------ dashboard tokens
    async def add_dashboard_token(self, token: DashboardToken) -> bool:
        rows = await self._fetch(
            "INSERT INTO dashboard_tokens (name, role, digest, created_ms) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (name) DO NOTHING RETURNING name", token.name, token.role, token.digest, token.created_ms)
        return bool(rows)

    async def dashboard_token_by_digest(self, digest: bytes) -> DashboardToken | None:
        rows = await self._fetch("SELECT name, role, digest, created_ms FROM dashboard_tokens WHERE digest = $1",
                                 digest)
        return DashboardToken(*rows[0]) if rows else None

    async def list_dashboard_tokens(self) -> list[DashboardToken]:
        rows = await self._fetch("SELECT name, role, digest, created_ms FROM dashboard_tokens ORDER BY name")
        return [DashboardToken(*r) for r in rows]

    async def delete_dashboard_token(self, name: str) -> bool:
        rows = await self._fetch("DELETE FROM dashboard_tokens WHERE name = $1 RETURNING name", name)
        return bool(rows)

    async def delete_device(self, device_id: str) -> bool:
        status = await self._execute("DELETE FROM devices WHERE device_id = $1", device_id)
        return status.rsplit(" ", 1)[-1] == "1"
