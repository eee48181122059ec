"""OTA in the gateway process: the frames of device sessions, the admin requests, the rollout engine
(only where the alert engine runs: the gateway, or worker 1 of a gateway host) and the dashboard's
read-only view (``/v1/ota``, docs/dashboard.md)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from websockets.http11 import Response

from gateway.alerts.lifecycle import AlertLifecycle
from gateway.config import GatewayConfig
from gateway.conn import json_response
from gateway.errors import OtaError, StorageError
from gateway.logs import log
from gateway.ota.admin import OtaAdmin, member_dict, report_dict, rollout_dict
from gateway.ota.manifest import KEY_FILE, public_key_hex
from gateway.ota.rollout import Offer, RolloutEngine
from gateway.ota.serve import OtaFrames
from gateway.storage.base import DeviceRecord, Storage
from gateway.storage.ota_backends import ota_store
from gateway.storage.ota_base import LIVE_ROLLOUTS, OtaStore, Rollout

ALERT_RULE = "ota_rollout"
ALERT_SOURCE = "gateway"  # where a device id goes in the stopped rollout's alert
DASHBOARD_ROLLOUTS = 20  # finished rollouts the dashboard lists besides the live ones


class Ota:
    def __init__(self, config: GatewayConfig, storage: Storage, offer: Offer, online: Callable[[str], bool],
                 alerts: AlertLifecycle | None, devices: Callable[[], Awaitable[list[DeviceRecord]]],
                 clock: Callable[[], float] = time.time) -> None:
        """``alerts``: the alert engine when this process drives the rollouts, else None."""
        self.config = config
        store: OtaStore | None
        try:
            store, why = ota_store(storage), ""
        except OtaError as err:
            store, why = None, err.message
        self.store = store
        self.frames = OtaFrames(self.store, clock)
        self._pubkey: str | None = config.ota_pubkey or None
        self.admin = OtaAdmin(self.store, devices, clock, why, self.pubkey)
        self.alerts = alerts
        self.engine = RolloutEngine(store, offer, online, self._alert, self.pubkey, clock=clock,
                                    tick_s=config.ota_tick_s, offer_timeout_s=config.ota_offer_timeout_s) if (
            store is not None and alerts is not None) else None

    def pubkey(self) -> str | None:
        """``ota_pubkey``, else the public half of ``<data_dir>/ota-signing.pem`` once it exists."""
        if self._pubkey is None:
            path = Path(self.config.data_dir) / KEY_FILE
            try:
                key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            except FileNotFoundError:
                return None
            except (OSError, ValueError, TypeError) as err:
                log("ota_key_unreadable", logging.ERROR, path=str(path), error=str(err)[:200])
                return None
            if isinstance(key, ec.EllipticCurvePrivateKey):
                self._pubkey = public_key_hex(key)
        return self._pubkey

    def _alert(self, rollout: Rollout, reason: str) -> None:
        if self.alerts is not None:
            self.alerts.raise_external(ALERT_SOURCE, ALERT_RULE, f"OTA rollout {rollout.rollout_id} of "
                                       f"{rollout.release_id} stopped: {reason}")

    async def status(self) -> dict[str, Any]:
        """The dashboard's view: live and recent rollouts with their members, each device's latest report."""
        store = self.admin.store
        rollouts = []
        rows = await store.rollouts()
        recent = [r for r in rows if r.state not in LIVE_ROLLOUTS][:DASHBOARD_ROLLOUTS]
        for r in [r for r in rows if r.state in LIVE_ROLLOUTS] + recent:
            members = await store.members(r.rollout_id)
            rollouts.append({**rollout_dict(r, members), "devices": [member_dict(m) for m in members]})
        return {"rollouts": rollouts, "devices": [report_dict(p) for p in await store.reports()]}

    async def status_response(self) -> Response:
        try:
            return json_response(200, await self.status())
        except OtaError as err:
            return json_response(404, {"code": err.code, "message": err.message})
        except StorageError:
            return json_response(503, {"code": "storage_unavailable", "message": "storage unavailable"})
