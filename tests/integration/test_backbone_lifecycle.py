"""Gateway lifecycle and live paths: SIGTERM drain, replacement, alerts, dashboard, HTTP endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import urllib.error
import urllib.request
from pathlib import Path

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from protocol import wire
from tests.helpers.dashboard import DashboardWatcher
from tests.helpers.devices import expect_close
from tests.helpers.gateway import GatewayProcess
from tests.helpers.waiting import until, until_sync


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_sigterm_acks_what_it_received_then_closes_1012(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path).start()
    token = gw.register("dev-t")

    async def run() -> tuple[list[dict[str, object]], int | None]:
        async with connect(gw.device_url, additional_headers=bearer(token)) as ws:
            await ws.recv()
            await ws.send(json.dumps({"t": "data", "seq": 1, "r": [{"m": {"temperature": 20}}]}))
            assert json.loads(await ws.recv()) == {"t": "ack", "seq": 1}
            for seq in range(2, 11):
                await ws.send(json.dumps({"t": "data", "seq": seq, "r": [{"m": {"temperature": 20}}]}))
            await asyncio.get_running_loop().run_in_executor(None, gw.stop)
            return await expect_close(ws)

    frames, code = asyncio.run(run())
    assert gw.proc is not None and gw.proc.returncode == 0
    assert code == wire.CLOSE_SERVICE_RESTART
    assert frames[-1]["code"] == wire.E_SHUTDOWN
    # Frames the gateway read before SIGTERM are stored and acknowledged before the close;
    # frames still in the socket are neither (the device resends them after reconnecting).
    acked = max((int(f["seq"]) for f in frames if f["t"] == "ack"), default=1)  # type: ignore[call-overload]
    assert gw.seqs("dev-t") == list(range(1, acked + 1))
    assert "gateway_stopped" in gw.log_text()


def test_second_connection_replaces_the_first(gateway: GatewayProcess) -> None:
    token = gateway.register("dev-twin")

    async def run() -> tuple[list[dict[str, object]], int | None, dict[str, object]]:
        first = await connect(gateway.device_url, additional_headers=bearer(token))
        await first.recv()
        await first.send(json.dumps({"t": "data", "seq": 1, "r": [{"m": {"temperature": 20}}]}))
        assert json.loads(await first.recv()) == {"t": "ack", "seq": 1}
        async with connect(gateway.device_url, additional_headers=bearer(token)) as second:
            welcome = json.loads(await second.recv())
            frames, code = await expect_close(first)
            await second.send(json.dumps({"t": "data", "seq": 2, "r": [{"m": {"temperature": 21}}]}))
            assert json.loads(await second.recv()) == {"t": "ack", "seq": 2}
        return frames, code, welcome

    frames, code, welcome = asyncio.run(run())
    assert code == wire.CLOSE_REPLACED and frames[-1]["code"] == wire.E_REPLACED
    assert welcome["last_seq"] == 1
    assert gateway.seqs("dev-twin") == [1, 2]


def alert_events(dash: DashboardWatcher) -> list[str]:
    return [e["kind"] for e in dash.events if e["kind"].startswith("alert")]


def test_threshold_alert_raised_cleared_with_hysteresis_stored_and_pushed(tmp_path: Path) -> None:
    with GatewayProcess(tmp_path, alerts=[{"metric": "temperature", "above": 30.0, "hysteresis": 2.0}]) as gw:
        token = gw.register("dev-hot")

        async def run() -> DashboardWatcher:
            async with DashboardWatcher(gw.url) as dash, \
                    connect(gw.device_url, additional_headers=bearer(token)) as ws:
                await ws.recv()
                await until(lambda: dash.snapshots >= 1, what="the dashboard's snapshot")
                # 29 ok, 31 raise, 29.5 still inside hysteresis (no flap), 27.5 clear, 31 raise again
                for seq, value in enumerate([29.0, 31.0, 29.5, 30.5, 29.0, 27.5, 31.0], start=1):
                    await ws.send(json.dumps({"t": "data", "seq": seq, "r": [{"m": {"temperature": value}}]}))
                    assert json.loads(await ws.recv())["seq"] == seq
                await until(lambda: len(alert_events(dash)) >= 3 and bool(dash.alerts), what="three alert events")
            return dash

        dash = asyncio.run(run())
        rows = gw.query("SELECT value, cleared_ms IS NOT NULL, clear_value FROM alerts ORDER BY id")
    assert alert_events(dash) == ["alert_raised", "alert_cleared", "alert_raised"]
    assert rows == [(31.0, 1, 27.5), (31.0, 0, None)]
    assert [a["device"] for a in dash.alerts] == ["dev-hot"]


def test_active_alert_survives_restart(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path).start()
    token = gw.register("dev-warm")

    async def send(seq: int, value: float) -> None:
        async with connect(gw.device_url, additional_headers=bearer(token)) as ws:
            await ws.recv()
            await ws.send(json.dumps({"t": "data", "seq": seq, "r": [{"m": {"temperature": value}}]}))
            await ws.recv()

    try:
        asyncio.run(send(1, 35.0))
        gw.restart()

        async def snapshot() -> dict[str, object]:
            async with connect(gw.url + "/v1/dashboard") as ws:
                return dict(json.loads(await ws.recv()))

        snap = asyncio.run(snapshot())
        assert [a["device"] for a in snap["alerts"]] == ["dev-warm"]  # type: ignore[attr-defined]
        asyncio.run(send(2, 20.0))
        # the engine records the clear after the reading is acked: wait for its row
        until_sync(lambda: gw.query("SELECT count(*) FROM alerts WHERE cleared_ms IS NULL")[0][0] == 0,
                   what="the alert cleared in storage")
    finally:
        gw.stop()


def metrics(seq: int) -> dict[str, float]:
    """Ten metrics per reading so that each dashboard update is several KiB."""
    return {f"channel_{i:02d}_measurement": round(20 + (seq * (i + 1)) % 7 + 0.123456, 6) for i in range(10)}


def test_slow_dashboard_is_resynced_without_stalling_ingestion(tmp_path: Path) -> None:
    with GatewayProcess(tmp_path, dashboard_interval_ms=20.0, dashboard_queue=4, rate=1000.0, burst=1000.0) as gw:
        tokens = gw.register_many([f"fast-{i}" for i in range(20)])

        async def run() -> tuple[int, int]:
            # A dashboard that never reads: its socket buffers fill, then its queue overflows.
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", gw.port))
            stalled = await connect(gw.url + "/v1/dashboard", max_size=None, sock=sock, compression=None)
            stalled.transport.pause_reading()
            devices = [await connect(gw.device_url, additional_headers=bearer(t)) for t in tokens.values()]
            for ws in devices:
                await ws.recv()
            acked = 0
            async with DashboardWatcher(gw.url) as live:
                await until(lambda: live.snapshots >= 1, what="the live dashboard's snapshot")
                for seq in range(1, 61):
                    seen = live.updates
                    for ws in devices:
                        await ws.send(json.dumps({"t": "data", "seq": seq, "r": [{"m": metrics(seq)}]}))
                    for ws in devices:
                        acked += json.loads(await ws.recv())["seq"] == seq
                    # the live dashboard keeps getting updates while the stalled one is stuck
                    await until(lambda seen=seen: live.updates > seen, what=f"a live update after round {seq}")
                live_updates = live.updates
            for ws in devices:
                await ws.close()
            with contextlib.suppress(ConnectionClosed):
                await stalled.close()
            return acked, live_updates

        acked, live_updates = asyncio.run(asyncio.wait_for(run(), 60))
        counters = gw.metrics()
    assert acked == 60 * 20
    assert live_updates > 10
    assert counters["edgewire_dashboard_resyncs_total"] >= 1


def test_http_endpoints(gateway: GatewayProcess) -> None:
    with urllib.request.urlopen(gateway.http_url + "/healthz") as resp:
        health = json.load(resp)
    assert health["status"] == "ok" and health["checks"]["storage"]["backend"] == "sqlite"
    with urllib.request.urlopen(gateway.http_url + "/") as resp:
        page = resp.read().decode()
    assert "Edgewire fleet" in page and "/app.js" in page and "https://" not in page
    with urllib.request.urlopen(gateway.http_url + "/store.js") as resp:  # the module that opens the stream
        assert b"/v1/dashboard" in resp.read()
    assert "edgewire_readings_stored_total" in gateway.metrics()
    try:
        urllib.request.urlopen(gateway.http_url + "/nope")
        raise AssertionError("expected 404")
    except urllib.error.HTTPError as err:
        assert err.code == 404 and json.load(err)["code"] == "not_found"
    try:
        urllib.request.urlopen(urllib.request.Request(gateway.http_url + "/v1/admin",
                                                      headers={"Authorization": "Bearer wrong"}))
        raise AssertionError("expected 401")
    except urllib.error.HTTPError as err:
        assert err.code == 401


def test_admin_command_round_trip(gateway: GatewayProcess) -> None:
    token = gateway.register("dev-cmd")

    async def device() -> dict[str, object]:
        async with connect(gateway.device_url, additional_headers=bearer(token)) as ws:
            await ws.recv()
            loop = asyncio.get_running_loop()
            pending = loop.run_in_executor(None, gateway.send_command, "dev-cmd", "set_interval", {"seconds": 5})
            cmd = json.loads(await ws.recv())
            assert cmd["t"] == "cmd" and cmd["name"] == "set_interval" and cmd["args"] == {"seconds": 5}
            await ws.send(json.dumps({"t": "result", "id": cmd["id"], "ok": True, "msg": "interval 5 s"}))
            return dict(await pending)

    result = asyncio.run(device())
    assert result["ok"] is True and result["msg"] == "interval 5 s"


def test_unresponsive_device_is_dropped_by_ping_timeout_and_goes_offline(tmp_path: Path) -> None:
    with GatewayProcess(tmp_path, ping_interval_s=0.5, ping_timeout_s=0.5) as gw:
        token = gw.register("dev-mute")

        async def run() -> DashboardWatcher:
            async with DashboardWatcher(gw.url) as dash:
                await until(lambda: dash.snapshots >= 1, what="the dashboard's snapshot")
                ws = await connect(gw.device_url, additional_headers=bearer(token), ping_interval=None)
                await ws.recv()
                ws.transport.pause_reading()  # a hung device: pings are never answered
                await until(lambda: any(e["kind"] == "offline" and e["device"] == "dev-mute" for e in dash.events),
                            15, "the offline event")
                ws.transport.abort()
            return dash

        dash = asyncio.run(run())
        assert [e["kind"] for e in dash.events if e["device"] == "dev-mute"] == ["online", "offline"]
        assert dash.latest["dev-mute"]["online"] is False
        assert "device_offline" in gw.log_text()


def test_permessage_deflate_is_negotiated_with_small_windows(gateway: GatewayProcess) -> None:
    token = gateway.register("dev-z")

    async def run() -> str:
        async with connect(gateway.device_url, additional_headers=bearer(token), compression="deflate") as ws:
            assert json.loads(await ws.recv())["t"] == "welcome"
            await ws.send(json.dumps({"t": "data", "seq": 1, "r": [{"m": {"temperature": 20}}] * 50}))
            assert json.loads(await ws.recv()) == {"t": "ack", "seq": 50}
            assert ws.response is not None
            return str(ws.response.headers["Sec-WebSocket-Extensions"])

    extensions = asyncio.run(run())
    assert "permessage-deflate" in extensions and "server_max_window_bits=11" in extensions
    assert gateway.seqs("dev-z") == list(range(1, 51))


def test_dashboard_token_required_when_enabled(tmp_path: Path) -> None:
    with GatewayProcess(tmp_path, dashboard_auth="on") as gw:
        token = (gw.data_dir / "dashboard.token").read_text().strip()
        assert (gw.data_dir / "dashboard.token").stat().st_mode & 0o077 == 0

        async def attempt(url: str, headers: dict[str, str] | None = None) -> str:
            try:
                async with connect(url, additional_headers=headers) as ws:
                    return str(json.loads(await ws.recv())["t"])
            except InvalidStatus as err:
                return f"{err.response.status_code} {json.loads(err.response.body)['code']}"

        base = gw.url + "/v1/dashboard"
        assert asyncio.run(attempt(base)) == "401 auth_failed"
        assert asyncio.run(attempt(base + "?token=ewd_wrong")) == "401 auth_failed"
        assert asyncio.run(attempt(base + "?token=" + token)) == "snapshot"
        assert asyncio.run(attempt(base, bearer(token))) == "snapshot"
        with urllib.request.urlopen(gw.http_url + "/") as resp:  # the page itself holds no data
            assert resp.status == 200
        assert token not in gw.log_text()
