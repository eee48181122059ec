"""History and devices over HTTP from a real gateway, on SQLite and PostgreSQL: device state survives a
restart (registered devices that never connected included), and the endpoints want the dashboard token."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from tests.helpers.devices import GoodDevice
from tests.helpers.gateway import GatewayProcess


def http_get(url: str, token: str | None = None) -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read()


@pytest.mark.parametrize("storage", ["sqlite", "postgresql"])
def test_device_state_survives_a_restart(tmp_path: Path, request: pytest.FixtureRequest, storage: str) -> None:
    settings: dict[str, Any] = {"dashboard_auth": "on"}
    if storage == "postgresql":
        settings["storage"] = request.getfixturevalue("postgres_dsn")
    gw = GatewayProcess(tmp_path, **settings).start()
    try:
        tokens = gw.register_many(["LIVE-01", "QUIET-02"])

        async def stream() -> None:
            async with GoodDevice(gw.device_url, "LIVE-01", tokens["LIVE-01"], rate=20.0) as device:
                await device.wait_acked(30)

        asyncio.run(stream())
        gw.restart()
        token = (gw.data_dir / "dashboard.token").read_text().strip()
        base = gw.http_url

        status, ctype, body = http_get(base + "/v1/devices")
        assert status == 401 and json.loads(body)["code"] == "auth_failed"
        status, ctype, body = http_get(base + "/v1/devices", token)
        assert status == 200 and ctype == "application/json"
        devices = {d["id"]: d for d in json.loads(body)["devices"]}
        assert set(devices) == {"LIVE-01", "QUIET-02"}
        live, quiet = devices["LIVE-01"], devices["QUIET-02"]
        assert live["online"] is False and live["last_seq"] >= 30 and live["last_seen"] > 0
        assert live["latest"] and quiet == {"id": "QUIET-02", "label": "", "enabled": True, "online": False,
                                            "last_seen": None, "last_seq": 0, "latest": {}}

        metric = sorted(live["latest"])[0]
        now = json.loads(http_get(base + "/v1/devices", token)[2])["time"]
        query = f"device=LIVE-01&metric={metric}&from={now - 3_600_000}&to={now + 1}&points=100&token={token}"
        status, _, body = http_get(f"{base}/v1/history?{query}")  # the token in the query, as browsers send it
        assert status == 200
        history = json.loads(body)
        assert history["source"] == "raw" and 1 <= len(history["points"]) <= 100
        assert sum(p[4] for p in history["points"]) == live["last_seq"]
        assert history["points"][-1][3] >= live["latest"][metric][0] >= history["points"][-1][1]
        status, ctype, body = http_get(f"{base}/v1/history.csv?{query}")
        assert status == 200 and ctype == "text/csv; charset=utf-8"
        rows = list(csv.reader(io.StringIO(body.decode())))
        assert [int(r[0]) for r in rows[1:]] == [p[0] for p in history["points"]]
        status, ctype, body = http_get(f"{base}/v1/history?device=LIVE-01&points=many&token={token}")
        assert status == 400 and json.loads(body)["param"] == "metric"
        status, _, body = http_get(f"{base}/v1/history.csv?device=LIVE-01&metric={metric}")
        assert status == 401

        async def snapshot() -> dict[str, Any]:
            async with connect(f"{gw.url}/v1/dashboard?token={token}") as ws:
                msg: dict[str, Any] = json.loads(await ws.recv())
                return msg

        first = asyncio.run(snapshot())
        assert first["t"] == "snapshot"
        views = {d["id"]: d for d in first["devices"]}
        assert set(views) == {"LIVE-01", "QUIET-02"}  # the dashboard knows the fleet before it reconnects
        assert views["LIVE-01"]["latest"] == live["latest"] and views["LIVE-01"]["last_seen"] == live["last_seen"]
    finally:
        gw.stop()
        gw.kill()
