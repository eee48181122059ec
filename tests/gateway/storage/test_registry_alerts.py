"""Conformance: the device registry (alerts: test_alerts.py)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import asyncpg
import pytest

from gateway.errors import StorageError
from gateway.storage import postgresql_schema as pg_schema
from gateway.storage import sqlite_schema
from gateway.storage.base import DeviceRecord, Storage
from tests.gateway.storage.conftest import Backend


def test_registry_rows(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        rec = DeviceRecord("S-1", True, b"\xaa" * 32, [], "", 10, 10)
        assert await s.create_device(rec) is True
        assert await s.create_device(DeviceRecord("S-1", True, b"\xbb" * 32)) is False
        assert await s.get_device("S-1") == rec
        assert await s.device_by_token_digest(b"\xaa" * 32) == rec
        assert await s.device_by_token_digest(b"\xbb" * 32) is None
        rec.token_digest = None
        rec.enabled = False
        await s.put_device(rec)
        await s.put_device(DeviceRecord("S-0", True, None))  # two revoked devices: NULL is not unique
        assert await s.device_by_token_digest(b"\xaa" * 32) is None
        assert [d.device_id for d in await s.list_devices()] == ["S-0", "S-1"]
        assert (await s.get_device("S-1")) == rec
        await s.put_device(DeviceRecord("S-2", True, b"\xcc" * 32, ["10.0.0.0/8", "192.168.1.7/32"], "hall", 3, 4))
        assert (await s.get_device("S-2")) == DeviceRecord("S-2", True, b"\xcc" * 32,
                                                           ["10.0.0.0/8", "192.168.1.7/32"], "hall", 3, 4)
        with pytest.raises(StorageError):  # a digest names one device only
            await s.put_device(DeviceRecord("S-3", True, b"\xcc" * 32))
        assert await s.get_device("S-3") is None

    backend.run(body)



def test_labels_round_trip(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        rec = DeviceRecord("S-1", True, b"\xaa" * 32, [], "Greenhouse", 10, 10, labels={"site": "gh", "outdoor": ""})
        assert await s.create_device(rec) is True
        assert (await s.get_device("S-1")) == rec
        rec.labels = {"site": "lab"}
        await s.put_device(rec)
        assert [(d.device_id, d.labels) for d in await s.list_devices()] == [("S-1", {"site": "lab"})]
        assert (await s.device_by_token_digest(b"\xaa" * 32)) == rec

    backend.run(body)


def _devices_without_labels_sqlite(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        for script in sqlite_schema.MIGRATIONS:
            for statement in sqlite_schema.split_script(script):
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {sqlite_schema.SCHEMA_VERSION}")
        conn.execute("INSERT INTO devices (device_id, enabled, label, created_ms) VALUES ('OLD-1', 1, 'old', 5)")


async def _devices_without_labels_postgres(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for script in pg_schema.MIGRATIONS:
            await conn.execute(script)
        await conn.execute("CREATE TABLE edgewire_schema (version integer NOT NULL)")
        await conn.execute("INSERT INTO edgewire_schema VALUES ($1)", pg_schema.SCHEMA_VERSION)
        await conn.execute("INSERT INTO devices (device_id, enabled, label, created_ms)"
                           " VALUES ('OLD-1', true, 'old', 5)")
    finally:
        await conn.close()


def test_a_database_from_before_labels_gets_the_column(backend: Backend) -> None:
    """The labels column is added at open (beside the numbered migrations): old devices have none."""
    if backend.name == "sqlite":
        _devices_without_labels_sqlite(Path(backend.target))
    else:
        asyncio.run(_devices_without_labels_postgres(backend.target))

    async def body(s: Storage) -> None:
        old = await s.get_device("OLD-1")
        assert old is not None and old.labels == {} and old.label == "old"
        old.labels = {"site": "gh"}
        await s.put_device(old)
        assert (await s.get_device("OLD-1")) == old

    backend.run(body)
    backend.run(lambda s: s.list_devices())  # a second open finds the column there: nothing to add
