"""A background task that dies makes /healthz fail until it is restarted; one that keeps dying
stops the gateway; shutdown finishes whatever failed (issue 15.1). In process, real sockets."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from gateway.config import GatewayConfig
from gateway.factory import build_gateway
from gateway.server import Gateway
from tests.helpers.waiting import until


def get_health(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


async def health(gateway: Gateway) -> tuple[int, dict[str, Any]]:
    return await asyncio.get_running_loop().run_in_executor(None, get_health, gateway.port)


def test_hub_death_fails_healthz_then_it_is_restarted(tmp_path: Path) -> None:
    async def run() -> None:
        config = GatewayConfig(port=0, data_dir=str(tmp_path), dashboard_interval_ms=20).validate()
        gateway = await build_gateway(config)
        gateway.supervisor.restart_delay_s = 0.5
        real_flush = gateway.hub.flush
        failures = {"left": 1}

        def failing_flush() -> None:
            if failures["left"]:
                failures["left"] -= 1
                raise RuntimeError("injected hub failure")
            real_flush()

        gateway.hub.flush = failing_flush  # type: ignore[method-assign]
        await gateway.start()
        try:
            await until(lambda: gateway.supervisor.tasks["hub"].state == "failed", 5, "the hub to fail")
            status, body = await health(gateway)
            assert status == 503 and body["status"] == "degraded"
            assert body["checks"]["hub"]["state"] == "failed"
            assert "injected hub failure" in body["checks"]["hub"]["last_error"]
            await until(lambda: gateway.supervisor.healthy, 5, "the hub to be restarted")
            status, body = await health(gateway)
            assert status == 200 and body["checks"]["hub"]["restarts"] == 1
        finally:
            await gateway.shutdown()
        assert gateway.exit_code == 0

    asyncio.run(run())


def test_a_task_that_keeps_dying_stops_the_gateway_and_shutdown_completes(tmp_path: Path) -> None:
    async def run() -> None:
        config = GatewayConfig(port=0, data_dir=str(tmp_path), dashboard_interval_ms=10).validate()
        gateway = await build_gateway(config)
        gateway.supervisor.restart_delay_s = 0.0

        def broken_flush() -> None:
            raise RuntimeError("always")

        gateway.hub.flush = broken_flush  # type: ignore[method-assign]
        await gateway.start()
        await asyncio.wait_for(gateway.stopped.wait(), 20)  # gave up, shut down, storage closed
        assert gateway.exit_code == 1 and gateway.draining
        assert gateway.supervisor.tasks["hub"].state == "gave_up"

    asyncio.run(run())


def test_failing_storage_makes_healthz_degraded_until_a_commit_succeeds(tmp_path: Path) -> None:
    import sqlite3

    import pytest

    from gateway.errors import StorageError
    from gateway.storage.base import ReadingRow
    from gateway.storage.sqlite import SQLiteStorage

    async def run() -> None:
        config = GatewayConfig(port=0, data_dir=str(tmp_path)).validate()
        gateway = await build_gateway(config)
        await gateway.start()
        storage = gateway.storage
        assert isinstance(storage, SQLiteStorage)
        real_insert = storage._insert
        fail = {"on": True}

        def broken(conn: sqlite3.Connection, rows: list[ReadingRow]) -> list[ReadingRow]:
            if fail["on"]:
                raise sqlite3.OperationalError("database or disk is full")
            return real_insert(conn, rows)

        storage._insert = broken  # type: ignore[method-assign]
        try:
            row = ReadingRow("S-1", 1, 1, 1, {"temperature": 20.0})
            with pytest.raises(StorageError):
                await storage.store([row])
            status, body = await health(gateway)
            assert status == 503 and body["status"] == "degraded"
            assert body["checks"]["storage"]["state"] == "failing"
            assert "disk is full" in body["checks"]["storage"]["last_error"]
            fail["on"] = False
            await storage.store([row])
            status, body = await health(gateway)
            assert status == 200 and body["checks"]["storage"]["state"] == "ok"
        finally:
            await gateway.shutdown()

    asyncio.run(run())
