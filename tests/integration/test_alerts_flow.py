"""An alert end to end through a real gateway process: raised by a simulated device's readings, seen
on the dashboard stream and by a webhook receiver (signed), acknowledged through the admin API,
kept over a restart (suspended until the device speaks again), then cleared; /metrics counts it."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import urllib.request
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from simulator.device import VirtualDevice
from simulator.sensors.base import SensorModel
from tests.helpers.dashboard import DashboardWatcher
from tests.helpers.gateway import GatewayProcess
from tests.helpers.waiting import until
from tests.helpers.webhook import Receiver

SECRET = "flow-test-secret-0123"


class Dial(SensorModel):
    """A temperature the test turns up and down."""

    def __init__(self, value: float) -> None:
        self.value = value

    def sample(self, t_s: float) -> dict[str, float]:
        return {"temperature": self.value}


async def admin(gw: GatewayProcess, request: dict[str, Any]) -> dict[str, Any]:
    async with connect(gw.url + "/v1/admin", additional_headers={"Authorization": f"Bearer {gw.admin_token}"}) as ws:
        await ws.send(json.dumps(dict(request, id="1")))
        reply: dict[str, Any] = json.loads(await ws.recv())
    return reply


def dash_alert(dash: DashboardWatcher, rule: str) -> dict[str, Any] | None:
    return next((a for a in dash.alerts if a["rule"] == rule), None)


def test_alert_raised_acknowledged_kept_over_a_restart_and_cleared(tmp_path: Path) -> None:
    receiver = Receiver()
    secret_file = tmp_path / "hook.secret"
    secret_file.write_text(SECRET + "\n")
    os.chmod(secret_file, 0o600)
    gw = GatewayProcess(tmp_path, alerts=[{"id": "hot", "metric": "temperature", "above": 30, "hysteresis": 1,
                                           "severity": "critical"}],
                        webhooks=[{"name": "ops", "url": receiver.url, "secret_file": str(secret_file),
                                   "events": ["raised", "acknowledged", "cleared"], "backoff_s": 0.2}])
    gw.start()
    try:
        token = gw.register("GH-1")
        dial = Dial(20.0)

        async def first_run() -> int:
            device = VirtualDevice(gw.url, "GH-1", token, rate=5, sensor=dial, backoff_max_s=1.0)
            task = asyncio.get_running_loop().create_task(device.run())
            async with DashboardWatcher(gw.url) as dash:
                await until(lambda: "GH-1" in dash.devices_seen, what="the device's readings on the dashboard")
                dial.value = 35.0
                await until(lambda: dash_alert(dash, "hot") is not None, what="the alert on the dashboard")
                alert = dash_alert(dash, "hot")
                assert alert is not None and alert["state"] == "active" and alert["severity"] == "critical"
                reply = await admin(gw, {"t": "alert_ack", "alert_id": alert["id"], "note": "fan replaced soon"})
                assert reply["t"] == "ok" and reply["alert"]["state"] == "acknowledged", reply
                await until(lambda: (dash_alert(dash, "hot") or {}).get("state") == "acknowledged",
                            what="the acknowledgement on the dashboard")
                assert any(e["kind"] == "alert_raised" for e in dash.events)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return int(alert["id"])

        alert_id = asyncio.run(first_run())
        hooks = receiver.wait(2)
        assert [r["headers"]["X-Edgewire-Event"] for r in hooks] == ["raised", "acknowledged"]
        for request in hooks:
            stamp = request["headers"]["X-Edgewire-Timestamp"]
            mac = hmac.new(SECRET.encode(), stamp.encode() + b"." + request["body"], hashlib.sha256).hexdigest()
            assert request["headers"]["X-Edgewire-Signature"] == "sha256=" + mac
        assert json.loads(hooks[0]["body"])["alert"]["id"] == alert_id

        gw.restart()

        async def after_restart() -> None:
            opened = (await admin(gw, {"t": "alerts", "state": "open"}))["alerts"]
            assert [(a["id"], a["state"], a["acked_by"]) for a in opened] == [(alert_id, "suspended", "admin")]
            device = VirtualDevice(gw.url, "GH-1", token, rate=5, sensor=dial, backoff_max_s=1.0)
            task = asyncio.get_running_loop().create_task(device.run())
            async with DashboardWatcher(gw.url) as dash:
                # still hot: resumed, still acknowledged
                await until(lambda: (dash_alert(dash, "hot") or {}).get("state") == "acknowledged",
                            what="the resumed alert")
                dial.value = 20.0
                await until(lambda: any(e["kind"] == "alert_cleared" for e in dash.events), what="the clear")
                assert dash.alerts == []
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            detail = (await admin(gw, {"t": "alert", "alert_id": alert_id}))["alert"]
            assert [e["event"] for e in detail["history"]] == ["raised", "acknowledged", "suspended", "resumed",
                                                                "cleared"]
            assert detail["history"][1]["text"] == "fan replaced soon" and detail["cleared_by"] == "auto"
            refused = await admin(gw, {"t": "alert_ack", "alert_id": alert_id})
            assert (refused["t"], refused["code"]) == ("error", "alert_cleared")

        asyncio.run(after_restart())
        assert [r["headers"]["X-Edgewire-Event"] for r in receiver.wait(3)][-1] == "cleared"
        with urllib.request.urlopen(gw.http_url + "/metrics", timeout=5) as resp:
            metrics = resp.read().decode()
        assert 'edgewire_alert_webhook_sent_total{webhook="ops"} 1' in metrics  # this run: the clear
        assert 'edgewire_alert_webhook_dropped_total{webhook="ops",reason="retries"} 0' in metrics
        assert 'edgewire_alerts_open{state="active"} 0' in metrics
        assert SECRET not in gw.log_text() and "T0KEN" not in gw.log_text()
    finally:
        gw.stop()
        receiver.close()
