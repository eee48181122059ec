"""A dashboard-stream client for tests: records snapshots, updates and events."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed


class DashboardWatcher:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/") + "/v1/dashboard"
        self.snapshots = 0
        self.updates = 0
        self.devices_seen: set[str] = set()
        self.latest: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.alerts: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> DashboardWatcher:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(ConnectionClosed, OSError):
                async with connect(self.url, max_size=None) as ws:
                    async for text in ws:
                        self._apply(json.loads(text))
            await asyncio.sleep(0.2)

    def _apply(self, msg: dict[str, Any]) -> None:
        if msg["t"] == "snapshot":
            self.snapshots += 1
            for device in msg["devices"]:
                self.latest[device["id"]] = device
            self.alerts = msg["alerts"]
        elif msg["t"] == "update":
            self.updates += 1
            for device_id, device in msg["devices"].items():
                self.latest[device_id] = device
                if device["latest"]:
                    self.devices_seen.add(device_id)
            self.events.extend(msg.get("events", []))
            if "alerts" in msg:
                self.alerts = msg["alerts"]
