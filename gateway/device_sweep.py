"""Live sessions against the registry (``RegistrySweep``): every ``registry_recheck_s`` and on a
registry notice, a device disabled, removed, revoked, rotated or moved out of its allowlist is cut
off with its code; a session whose credential expires is closed when it does (docs/protocol.md)."""

from __future__ import annotations

import asyncio
import logging

from gateway.auth import Authenticator
from gateway.device_conn import DeviceConnection
from gateway.errors import StorageError
from gateway.logs import log
from gateway.metrics import Metrics
from gateway.replacement import LiveDevices
from gateway.storage.base import DeviceRecord, Storage
from gateway.supervisor import spawn
from protocol import wire


class RegistrySweep:
    """Applies registry changes and credential expiry to the live sessions (``live``)."""

    def __init__(self, live: LiveDevices, storage: Storage, authenticator: Authenticator, metrics: Metrics,
                 recheck_s: float) -> None:
        self.live = live
        self.storage = storage
        self.auth = authenticator
        self.metrics = metrics
        self.recheck_s = recheck_s

    async def sweep_forever(self) -> None:
        """Apply registry changes to live sessions: disabled, revoked, rotated, allowlist."""
        while True:
            await asyncio.sleep(self.recheck_s)
            await self.sweep()

    async def sweep(self) -> None:
        devices = self.live.devices
        if not devices:
            return
        try:
            records = {r.device_id: r for r in await self.storage.list_devices()}
        except (StorageError, OSError) as err:
            log("registry_sweep_failed", logging.WARNING, error=str(err))
            return
        for conn in list(devices.values()):
            self._apply(conn, records.get(conn.device_id))

    async def recheck(self, device_id: str) -> None:
        """Check one device's session against the registry now (a registry notice from the bus)."""
        conn = self.live.devices.get(device_id)
        if conn is None or conn.closing:
            return
        try:
            record = await self.storage.get_device(device_id)
        except (StorageError, OSError) as err:  # the sweep tries again within registry_recheck_s
            log("registry_recheck_failed", logging.WARNING, device=device_id, error=str(err))
            return
        if self.live.current(conn):
            self._apply(conn, record)

    def _apply(self, conn: DeviceConnection, record: DeviceRecord | None) -> None:
        verdict = self._still_allowed(conn, record)
        if verdict is not None and not conn.closing:
            conn.closing = True
            log("device_cut_off", logging.WARNING, device=conn.device_id, code=verdict[0])
            spawn(self._cut_off(conn, *verdict), "registry cut-off")

    def _still_allowed(self, conn: DeviceConnection, record: DeviceRecord | None) -> tuple[str, str] | None:
        """None if the session may go on, else (error code, message)."""
        if record is None:
            return (wire.E_AUTH_FAILED, "device removed from the registry")
        if not record.enabled:
            return (wire.E_DISABLED, "device disabled by the operator")
        if conn.identity.method == "token" and (
                record.token_digest is None or (record.token_created_ms or 0) > conn.connected_ms):
            return (wire.E_AUTH_FAILED, "token revoked or rotated; install the new token")
        if not self.auth.address_allowed(conn.ws.address, record):
            return (wire.E_ADDRESS, "address no longer in the allowlist")
        return None

    async def _cut_off(self, conn: DeviceConnection, code: str, message: str) -> None:
        await conn.drain()
        self.metrics.count_error(code)
        await conn.close(code, message)

    async def expire(self, conn: DeviceConnection) -> None:
        """The session's credential expired (a timer set at its welcome)."""
        if conn.ws.state.name != "OPEN":
            return
        conn.closing = True
        await conn.drain()
        self.metrics.count_error(wire.E_EXPIRED)
        await conn.close(wire.E_EXPIRED, "credential expired; fetch a new token and reconnect")
