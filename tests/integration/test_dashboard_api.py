"""The dashboard's server side against a real gateway process: roles from tokens on the GET
endpoints and the stream, the Host check without a token, operator actions over the stream (bad
ones refused with a code, the stream and the gateway unharmed), revoked tokens cut off."""

from __future__ import annotations

import asyncio
import http.client
import json
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from gateway.config import GatewayConfig
from gateway.factory import banner
from simulator.device import VirtualDevice
from tests.helpers.gateway import GatewayProcess
from tests.helpers.waiting import until


def get(gw: GatewayProcess, path: str, token: str | None = None, host: str | None = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    headers = {"Host": host or f"127.0.0.1:{gw.port}"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    conn.request("GET", path, headers=headers)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, json.loads(body)


def add_token(gw: GatewayProcess, name: str, role: str) -> str:
    return gw.cli("tokens", "add", name, "--role", role).stdout.strip().splitlines()[-1]


def test_roles_come_from_tokens_on_every_dashboard_endpoint(tmp_path: Path) -> None:
    with GatewayProcess(tmp_path) as gw:
        file_token = (gw.data_dir / "dashboard.token").read_text().strip()
        viewer = add_token(gw, "wall-screen", "viewer")
        operator = add_token(gw, "alice", "operator")
        assert get(gw, "/v1/session")[1]["role"] == "viewer"  # loopback, no token: a viewer
        assert get(gw, "/v1/session", file_token)[1] | {"time": 0} == {"role": "operator", "token": "dashboard.token",
                                                                       "time": 0}
        assert get(gw, "/v1/session", viewer)[1]["role"] == "viewer"
        assert get(gw, "/v1/session", operator)[1]["token"] == "alice"
        status, body = get(gw, "/v1/session", "ewd_wrong")  # a token shown is checked, never downgraded
        assert status == 401 and body["code"] == "auth_failed" and "tokens add" in body["message"]
        for path in ("/v1/meta", "/v1/alerts", "/v1/devices", "/v1/rules?device=X"):
            assert get(gw, path, "ewd_wrong")[0] == 401
        # without a token, a DNS name that is not ours is refused (DNS rebinding), on the GETs too
        for path in ("/v1/session", "/v1/meta", "/v1/devices", "/v1/history?device=X&metric=temperature"):
            status, body = get(gw, path, host=f"evil.example:{gw.port}")
            assert (status, body["code"]) == (403, "host_not_allowed"), path
        assert get(gw, "/v1/session", viewer, host=f"gateway.lan:{gw.port}")[0] == 200  # a token: any name
        meta = get(gw, "/v1/meta")[1]
        assert meta["metrics"]["temperature"]["unit"] == "°C" and "set_output" in meta["commands"]
        status, body = get(gw, "/v1/alerts?limit=0")
        assert (status, body["param"]) == (400, "limit")
        assert gw.cli("tokens", "revoke", "alice").returncode == 0
        assert get(gw, "/v1/session", operator)[0] == 401
        listed = gw.cli("tokens", "list").stdout
        assert "wall-screen" in listed and viewer not in listed and "alice" not in listed
    log = gw.log_text()
    for secret in (file_token, viewer, operator):
        assert secret not in log  # tokens never logged


def test_rules_lists_the_alert_rules_that_apply_to_a_device(tmp_path: Path) -> None:
    rules = [{"id": "hot", "metric": "temperature", "above": 30.0},
             {"id": "greenhouse-dry", "metric": "soil_moisture", "below": 20.0, "devices": ["GH-*"]}]
    with GatewayProcess(tmp_path, alerts=rules) as gw:
        status, body = get(gw, "/v1/rules?device=GH-1")
        assert status == 200 and body["device"] == "GH-1"
        assert [(r["id"], r["type"], r["metric"]) for r in body["rules"]] == [
            ("greenhouse-dry", "below", "soil_moisture"), ("hot", "above", "temperature")]
        assert body["rules"][1]["above"] == 30.0 and body["rules"][0]["below"] == 20.0
        assert [r["id"] for r in get(gw, "/v1/rules?device=SHED-1")[1]["rules"]] == ["hot"]
        for query in ("", "?device=", "?device=a%20b"):
            status, body = get(gw, "/v1/rules" + query)
            assert (status, body["code"], body["param"]) == (400, "bad_request", "device"), query


def test_a_dashboard_needs_a_token_beyond_loopback_and_says_how_to_get_one(tmp_path: Path) -> None:
    with GatewayProcess(tmp_path, dashboard_auth="on") as gw:
        status, body = get(gw, "/v1/session")
        assert status == 401 and "#token=" in body["message"] and "tokens add" in body["message"]
        viewer = add_token(gw, "wall-screen", "viewer")
        assert get(gw, "/v1/session", viewer)[1]["role"] == "viewer"


async def _recv_until(ws: ClientConnection, request_id: Any, timeout: float = 15.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            msg = json.loads(await ws.recv())
            if msg["t"] in ("ok", "error") and msg.get("id") == request_id:
                return dict(msg)


def test_operator_actions_over_the_stream(tmp_path: Path) -> None:
    with GatewayProcess(tmp_path, registry_recheck_s=0.5) as gw:
        device_token = gw.register("ACT-1")
        gw.register("SLEEPY-1")
        viewer = add_token(gw, "wall-screen", "viewer")
        operator = add_token(gw, "bob", "operator")

        async def run() -> dict[str, Any]:
            device = VirtualDevice(gw.url, "ACT-1", device_token, rate=2.0, backoff_initial_s=0.2)
            task = asyncio.get_running_loop().create_task(device.run())
            out: dict[str, Any] = {}
            try:
                async with connect(f"{gw.url}/v1/dashboard?token={viewer}") as ws:
                    snapshot = json.loads(await ws.recv())
                    out["viewer_role"] = (snapshot["t"], snapshot["role"], snapshot["token"])
                    await ws.send(json.dumps({"t": "command", "id": "v1", "device": "ACT-1", "name": "ping"}))
                    out["viewer"] = (await _recv_until(ws, "v1"))["code"]
                async with connect(f"{gw.url}/v1/dashboard?token={operator}") as ws:
                    for frame, request_id in (("not json", None), (json.dumps([1]), None),
                                              (json.dumps({"t": "rm", "id": "b1"}), "b1"),
                                              (json.dumps({"t": "command", "id": "b2", "device": "ACT-1",
                                                           "name": "set_interval", "args": {"seconds": 0}}), "b2"),
                                              (json.dumps({"t": "command", "id": "b3", "device": "NOPE-1",
                                                           "name": "ping"}), "b3"),
                                              (json.dumps({"t": "command", "id": "b4", "device": "SLEEPY-1",
                                                           "name": "ping"}), "b4")):
                        await ws.send(frame)
                        out.setdefault("refused", []).append((await _recv_until(ws, request_id))["code"])
                    await until(lambda: device.state == "online", 15, "the device online")
                    await ws.send(json.dumps({"t": "command", "id": "c1", "device": "ACT-1", "name": "set_interval",
                                              "args": {"seconds": 0.25}}))
                    out["command"] = (await _recv_until(ws, "c1"))["result"]
                    out["interval"] = device.interval_s
                    assert gw.cli("tokens", "revoke", "bob").returncode == 0
                    await ws.send(json.dumps({"t": "command", "id": "c2", "device": "ACT-1", "name": "ping"}))
                    out["revoked"] = (await _recv_until(ws, "c2"))["code"]
                    try:  # the sweep closes the stream of a revoked token
                        async with asyncio.timeout(15):
                            async for _ in ws:
                                pass
                    except ConnectionClosed:
                        pass
                    out["close"] = ws.close_code
                try:
                    async with connect(f"{gw.url}/v1/dashboard?token={operator}"):
                        out["reconnect"] = "accepted"
                except InvalidStatus as err:
                    out["reconnect"] = err.response.status_code
            finally:
                task.cancel()
            return out

        out = asyncio.run(run())
    log = gw.log_text()
    assert viewer not in log and operator not in log  # ?token= never reaches the log
    assert '"actor": "dashboard:bob"' in log or "dashboard:bob" in log  # who sent the command
    assert out["viewer_role"] == ("snapshot", "viewer", "wall-screen")
    assert out["viewer"] == "forbidden"
    assert out["refused"] == ["bad_json", "bad_frame", "unknown_type", "bad_value", "not_found", "device_offline"]
    assert out["command"]["ok"] is True and out["interval"] == 0.25
    assert out["revoked"] == "auth_failed"
    assert out["close"] == 4001 and out["reconnect"] == 401


def test_banner_prints_the_dashboard_url_with_its_token_only_on_a_terminal() -> None:
    config = GatewayConfig(host="127.0.0.1", data_dir="/srv/gw")
    assert banner(config, 8080, "ewd_secret", True) == (
        "edgewire gateway listening on http://127.0.0.1:8080 (dashboard http://127.0.0.1:8080/#token=ewd_secret)")
    logged = banner(config, 8080, "ewd_secret", False)  # stdout is a log or the journal: no token, no placeholder
    assert logged == (
        "edgewire gateway listening on http://127.0.0.1:8080 (dashboard http://127.0.0.1:8080/; its operator token "
        "is in /srv/gw/dashboard.token: `python -m gateway tokens url --data-dir /srv/gw --base-url "
        "http://127.0.0.1:8080` prints the address with it)")
    assert banner(config, 8080, None, True).endswith("(dashboard http://127.0.0.1:8080/)")
