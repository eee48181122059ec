"""Several real gateway processes joined by a real bus (Redis or NATS) on one PostgreSQL, on loopback.

    cluster = GatewayCluster(tmp_path, bus_url, dsn).start()     # gw-0, gw-1, gw-2, bus ok on each
    creds = cluster.gateways[0].register_many([...])              # tokens work on every instance
    ...
    cluster.stop()
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from tests.helpers.gateway import GatewayProcess

# Short leases so that a killed instance is known dead within seconds (default 10 s).
CLUSTER_SETTINGS: dict[str, Any] = {"lease_ttl_s": 3.0, "takeover_timeout_s": 5.0, "dashboard_interval_ms": 100}


class GatewayCluster:
    def __init__(self, tmp_path: Path, bus: str, storage: str, size: int = 3, **settings: Any) -> None:
        key = secrets.token_hex(32)  # every instance shares the token key (docs/scaling.md section 8)
        merged = dict(CLUSTER_SETTINGS, **settings)
        self.bus = bus
        self.storage = storage
        self.gateways = [
            GatewayProcess(tmp_path, env={"EDGEWIRE_TOKEN_KEY": key}, name=f"gw-{i}", storage=storage, bus=bus,
                           instance_id=f"gw-{i}", **merged)
            for i in range(size)]

    def start(self) -> GatewayCluster:
        with ThreadPoolExecutor(len(self.gateways)) as pool:
            list(pool.map(lambda gw: gw.start(), self.gateways))
        for gw in self.gateways:
            wait_bus_ok(gw)
        return self

    def stop(self) -> None:
        for gw in self.gateways:
            try:
                gw.stop()
            finally:
                gw.kill()

    @property
    def urls(self) -> list[str]:
        return [gw.url for gw in self.gateways]

    def __enter__(self) -> GatewayCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def bus_state(gw: GatewayProcess) -> str:
    _status, body = gw.health()
    return str(body["checks"].get("bus", {}).get("state", "absent"))


def wait_bus_ok(gw: GatewayProcess, timeout: float = 30.0) -> None:
    """Wait until the instance's /healthz reports its bus ok (its subscriptions proven by a probe)."""
    deadline = time.monotonic() + timeout
    while bus_state(gw) != "ok":
        if time.monotonic() > deadline:
            raise AssertionError(f"{gw.data_dir.name}: bus not ok within {timeout:g} s:\n{gw.log_text()[-2000:]}")
        time.sleep(0.05)


async def health(gw: GatewayProcess) -> tuple[int, dict[str, Any]]:
    return await asyncio.get_running_loop().run_in_executor(None, gw.health)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def device(gw: GatewayProcess, token: str) -> tuple[ClientConnection, dict[str, Any]]:
    """A raw device connection to ``gw``: (connection, its welcome)."""
    ws = await connect(gw.device_url, additional_headers=bearer(token))
    welcome = json.loads(await asyncio.wait_for(ws.recv(), 15))
    assert welcome["t"] == "welcome", welcome
    return ws, welcome


def data_frame(seq: int, temperature: float = 21.5) -> str:
    return json.dumps({"t": "data", "seq": seq, "r": [{"m": {"temperature": temperature}}]})


def online_count(latest: dict[str, dict[str, Any]], prefix: str = "") -> int:
    """Devices a dashboard watcher shows online."""
    return sum(1 for device_id, view in latest.items() if device_id.startswith(prefix) and view.get("online"))


async def admin(gw: GatewayProcess, request: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """One /v1/admin request; the raw reply ({"t": "ok", ...} or {"t": "error", "code", "msg"})."""
    async with connect(gw.url + "/v1/admin", additional_headers=bearer(gw.admin_token)) as ws:
        await ws.send(json.dumps(dict(request, id="1")))
        reply: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    return reply
