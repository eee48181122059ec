"""The device side of OTA on /v1/device (docs/ota.md): ``ota_get`` answered with ``ota_chunk`` (or an
``ota_unknown`` / ``storage_unavailable`` error; the connection stays open), and ``ota`` state frames
kept per device. The core (protocol.gateway.GatewaySession) has parsed and checked both frames;
gateway/sessions.py hands their events here.

A release is served only to a device it was offered to by a live rollout (OtaStore.offered): an
answer is remembered for ``allow_ttl_s`` per device and release, so a download asks storage once
per file chunk for the bytes and about every few seconds for the permission.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from gateway.errors import StorageError
from gateway.logs import log
from gateway.storage.ota_base import DeviceReport, OtaStore
from protocol import wire
from protocol.gateway import EV_OTA_GET, Event, GatewaySession

ALLOW_TTL_S = 5.0
MAX_ALLOWED = 4096  # remembered (device, release) answers; the oldest are forgotten


class OtaTarget(Protocol):
    device_id: str
    session: GatewaySession

    async def send(self, frame: str) -> None: ...


class OtaFrames:
    def __init__(self, store: OtaStore | None, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic, allow_ttl_s: float = ALLOW_TTL_S) -> None:
        """``store`` None: this gateway keeps no releases (storage = none); every ota_get is ota_unknown."""
        self.store = store
        self.clock = clock
        self.monotonic = monotonic
        self.allow_ttl_s = allow_ttl_s
        self.allowed: dict[tuple[str, str], float] = {}  # (device, release) -> until (monotonic)
        self.chunks = 0  # ota_chunk frames sent
        self.chunk_bytes = 0  # their encoded size
        self.refused = 0
        self.reports = 0

    async def handle(self, conn: OtaTarget, event: Event) -> None:
        """One EV_OTA_GET (answered on ``conn``) or EV_OTA_STATE (recorded) of ``conn``'s device."""
        if event.kind == EV_OTA_GET:
            await conn.send(await self.answer(conn.device_id, conn.session, event.payload))
        else:
            await self.report(conn.device_id, event.payload)

    async def answer(self, device_id: str, session: GatewaySession, get: dict[str, Any]) -> str:
        release, name, off, length = get["release"], get["file"], get["off"], get["len"]
        if self.store is None:
            return self._refuse(session, wire.E_OTA_UNKNOWN, "this gateway keeps no releases (storage = none)")
        try:
            if not await self._allowed(device_id, release):
                return self._refuse(session, wire.E_OTA_UNKNOWN, f"release {release} is not offered to this device")
            chunk = await self.store.chunk(release, name, off, length)
        except StorageError as err:
            log("ota_chunk_failed", logging.WARNING, device=device_id, release=release, error=str(err)[:200])
            return self._refuse(session, wire.E_STORAGE, "storage unavailable; ask again later")
        if chunk is None:
            return self._refuse(session, wire.E_OTA_UNKNOWN, f"release {release} has no file {name}")
        data, size = chunk
        if off > size:
            return self._refuse(session, wire.E_OTA_UNKNOWN, f"{name} has {size} bytes; off {off} is beyond its end")
        frame = session.ota_chunk(release, name, off, data, size)
        self.chunks += 1
        self.chunk_bytes += len(frame)
        return frame

    def _refuse(self, session: GatewaySession, code: str, message: str) -> str:
        self.refused += 1
        return session.error_frame(code, message)

    async def _allowed(self, device_id: str, release: str) -> bool:
        assert self.store is not None
        key = (device_id, release)
        now = self.monotonic()
        until = self.allowed.get(key)
        if until is not None and until > now:
            return True
        if not await self.store.offered(device_id, release):
            self.allowed.pop(key, None)
            return False
        self.allowed[key] = now + self.allow_ttl_s
        if len(self.allowed) > MAX_ALLOWED:
            del self.allowed[next(iter(self.allowed))]
        return True

    async def report(self, device_id: str, state: dict[str, Any]) -> None:
        """Keep the device's update state (its rollouts follow it); a storage failure is logged: the
        device reports again on its next change and after each reconnect."""
        if self.store is None:
            return
        report = DeviceReport(device_id, state["release"], state["state"], state["reason"], state["done"],
                              state["total"], int(self.clock() * 1000))
        try:
            await self.store.record_report(report)
        except StorageError as err:
            log("ota_report_not_stored", logging.WARNING, device=device_id, release=report.release_id,
                error=str(err)[:200])
            return
        self.reports += 1
        if state["state"] != "downloading":
            log("ota_device_state", device=device_id, release=report.release_id, state=report.state,
                reason=report.reason)
