"""The dashboard's view of storage: the registered devices (also those that never connected), their
last known values at start, and the dashboard tokens still valid.

- ``restore(hub, storage)`` at start: every registered device with its label, last seen time and
  latest values as storage has them, so a restarted gateway shows the whole fleet (offline)
  before devices reconnect.
- ``DashboardSync.run`` every ``interval`` seconds (``registry_recheck_s``): devices added,
  relabelled, disabled or deleted through the CLI (which writes storage directly) show up, and the
  streams of dashboard tokens revoked with ``tokens revoke`` are closed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from gateway.dashboard.view import Hub
from gateway.errors import StorageError
from gateway.logs import log
from gateway.storage.base import DashboardTokens, DeviceData, DeviceRegistry


async def restore(hub: Hub, storage: DeviceData) -> None:
    """Give the hub every registered device with its last known values."""
    records = await storage.list_devices()
    states = await storage.device_states()
    hub.registry(records)
    for record in records:
        state = states.get(record.device_id)
        if state is not None:
            view = hub.view(record.device_id)
            view.last_seen = state.last_seen_ms
            view.latest = {m: [v, t] for m, (v, t) in state.latest.items()}


class SyncStorage(DeviceRegistry, DashboardTokens, Protocol):
    """What the sync reads: the registered devices and the dashboard tokens."""


class DashboardSync:
    def __init__(self, hub: Hub, storage: SyncStorage, interval_s: float) -> None:
        self.hub = hub
        self.storage = storage
        self.interval_s = interval_s

    async def run(self) -> None:
        """For the gateway's life (a supervised task)."""
        while True:
            await asyncio.sleep(self.interval_s)
            await self.sync()

    async def sync(self) -> None:
        try:
            records = await self.storage.list_devices()
            tokens = await self.storage.list_dashboard_tokens() if self.hub.clients else []
        except (StorageError, OSError) as err:
            log("dashboard_sync_failed", logging.WARNING, error=str(err))
            return
        self.hub.registry(records)
        if self.hub.clients:
            closed = self.hub.close_revoked({(t.name, t.role, t.digest) for t in tokens})
            if closed:
                log("dashboard_tokens_revoked", streams_closed=closed)
