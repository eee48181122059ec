"""Issue 15, against a real gateway process: what the attack and the first hour found."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from protocol import wire
from tests.helpers.dashboard import DashboardWatcher
from tests.helpers.gateway import GatewayProcess
from tests.helpers.waiting import until


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def health(gw: GatewayProcess) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(gw.http_url + "/healthz", timeout=5) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


DEEP_STATUS = '{"t":"status","x":' + "[" * 300 + "]" * 300 + "}"  # ~620 bytes, 300 levels


def test_deep_status_is_refused_and_the_dashboard_and_shutdown_go_on(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path).start()
    try:
        tokens = gw.register_many(["attacker", "bystander"])

        async def run() -> tuple[dict[str, Any], DashboardWatcher, str]:
            async with DashboardWatcher(gw.url) as dash, \
                    connect(gw.device_url, additional_headers=bearer(tokens["attacker"])) as bad, \
                    connect(gw.device_url, additional_headers=bearer(tokens["bystander"])) as good:
                await bad.recv()
                await good.recv()
                await until(lambda: dash.snapshots >= 1, what="the snapshot")
                await bad.send(DEEP_STATUS)
                refused = json.loads(await asyncio.wait_for(bad.recv(), 10))
                for seq in range(1, 4):
                    await good.send(json.dumps({"t": "data", "seq": seq, "r": [{"m": {"temperature": 20 + seq}}]}))
                    assert json.loads(await good.recv()) == {"t": "ack", "seq": seq}
                # the hub is alive: the bystander's readings reach the dashboard ...
                await until(lambda: dash.latest.get("bystander", {}).get("latest", {}).get("temperature", [0])[0]
                            == 23, 10, "the bystander's last reading on the dashboard")
                # ... and a new dashboard gets a snapshot
                async with connect(gw.url + "/v1/dashboard") as late:
                    snap = json.loads(await asyncio.wait_for(late.recv(), 10))
            return refused, dash, snap["t"]

        refused, _, late_kind = asyncio.run(run())
        assert refused["t"] == "error" and refused["code"] == wire.E_TOO_LARGE
        assert "nested deeper" in refused["msg"]
        assert late_kind == "snapshot"
        status, body = health(gw)
        assert status == 200 and body["status"] == "ok"
        reports = body.get("workers") or {"gateway": body}  # each worker's own checks (gateway/workers.py)
        expected = {"storage": "ok", "hub": "running", "registry_sweep": "running", "dashboard_sync": "running",
                    "gc": "running", "alerts": "running", "webhooks": "running"}
        for report in reports.values():
            states = {name: check["state"] for name, check in report["checks"].items()}
            assert states.items() >= expected.items(), states
            assert all(state in ("ok", "running") for state in states.values()), states
        assert sum("retention" in report["checks"] for report in reports.values()) == 1  # once per gateway
    finally:
        code = gw.stop(timeout=20)  # SIGTERM finishes
        gw.kill()
    assert code == 0
    assert "task_failed" not in gw.log_text()


def test_deep_result_data_reaches_the_operator_refused_and_admin_goes_on(tmp_path: Path) -> None:
    with GatewayProcess(tmp_path) as gw:
        token = gw.register("dev-r")

        async def run() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
            from websockets.asyncio.client import connect as ws_connect

            async with connect(gw.device_url, additional_headers=bearer(token)) as dev, \
                    ws_connect(gw.url + "/v1/admin", additional_headers=bearer(gw.admin_token)) as admin:
                await dev.recv()
                await admin.send(json.dumps({"t": "command", "id": "1", "device_id": "dev-r", "name": "ping",
                                             "timeout": 10}))
                cmd = json.loads(await dev.recv())
                await dev.send('{"t":"result","id":"' + cmd["id"] + '","ok":true,"data":'
                               + "[" * 300 + "]" * 300 + "}")
                told = json.loads(await asyncio.wait_for(dev.recv(), 10))
                reply = json.loads(await asyncio.wait_for(admin.recv(), 10))
                await admin.send(json.dumps({"t": "stats", "id": "2"}))
                stats = json.loads(await admin.recv())
            return told, reply, stats

        told, reply, stats = asyncio.run(run())
    assert told["code"] == wire.E_TOO_LARGE
    assert reply["t"] == "ok" and reply["result"]["ok"] is True and reply["result"]["data"] is None
    assert reply["result"]["refused"]["code"] == wire.E_TOO_LARGE
    assert stats["t"] == "ok" and stats["id"] == "2"


def test_another_device_cannot_answer_a_command(tmp_path: Path) -> None:
    with GatewayProcess(tmp_path) as gw:
        tokens = gw.register_many(["relay-box", "intruder"])

        async def run() -> tuple[list[str], list[dict[str, Any]], dict[str, Any]]:
            async with connect(gw.device_url, additional_headers=bearer(tokens["relay-box"])) as victim, \
                    connect(gw.device_url, additional_headers=bearer(tokens["intruder"])) as intruder, \
                    connect(gw.url + "/v1/admin", additional_headers=bearer(gw.admin_token)) as admin:
                await victim.recv()
                await intruder.recv()
                ids = []

                async def command(request_id: str) -> None:
                    await admin.send(json.dumps({"t": "command", "id": request_id, "device_id": "relay-box",
                                                 "name": "set_output", "args": {"output": "relay", "on": True},
                                                 "timeout": 10}))
                    ids.append(json.loads(await asyncio.wait_for(victim.recv(), 10))["id"])

                await command("1")
                told = []
                # the old ids were c1, c2, ...: guessed; then the real id, as if it had leaked
                for guess in ("c1", "c2", ids[0]):
                    await intruder.send(json.dumps({"t": "result", "id": guess, "ok": True, "msg": "relay on"}))
                    told.append(json.loads(await asyncio.wait_for(intruder.recv(), 10)))
                await victim.send(json.dumps({"t": "result", "id": ids[0], "ok": False, "msg": "relay stuck"}))
                first = json.loads(await asyncio.wait_for(admin.recv(), 10))
                await command("2")
                await victim.send(json.dumps({"t": "result", "id": ids[1], "ok": True}))
                await asyncio.wait_for(admin.recv(), 10)
            return ids, told, first

        ids, told, first = asyncio.run(run())
    assert len(set(ids)) == 2 and all(len(i) >= 16 for i in ids)
    assert ids[0] not in ("c1", "c2") and not ids[1].endswith(ids[0][-4:])
    assert [t["code"] for t in told] == [wire.E_NO_SUCH_COMMAND] * 3
    assert first["t"] == "ok" and first["result"] == {"id": ids[0], "ok": False, "msg": "relay stuck", "data": None}


async def dashboard_attempt(url: str, headers: dict[str, str] | None = None) -> str:
    from websockets.exceptions import InvalidStatus

    try:
        async with connect(url, additional_headers=headers) as ws:
            return str(json.loads(await asyncio.wait_for(ws.recv(), 10))["t"])
    except InvalidStatus as err:
        return f"{err.response.status_code} {json.loads(err.response.body)['code']}"


def test_behind_a_trusted_proxy_the_dashboard_needs_its_token(tmp_path: Path) -> None:
    with GatewayProcess(tmp_path, trusted_proxies=["127.0.0.1/32"]) as gw:  # dashboard_auth = auto
        token = (gw.data_dir / "dashboard.token").read_text().strip()
        url = gw.url + "/v1/dashboard"
        public = {"X-Forwarded-For": "203.0.113.9"}
        assert asyncio.run(dashboard_attempt(url, public)) == "401 auth_failed"
        assert asyncio.run(dashboard_attempt(url)) == "401 auth_failed"  # the proxy itself: still a proxy
        assert asyncio.run(dashboard_attempt(url + "?token=" + token, public)) == "snapshot"


def test_on_loopback_the_dashboard_needs_no_token_but_other_clients_do(tmp_path: Path) -> None:
    with GatewayProcess(tmp_path) as gw:
        url = gw.url + "/v1/dashboard"
        assert asyncio.run(dashboard_attempt(url)) == "snapshot"
        # X-Forwarded-For from an untrusted peer is ignored: the client is the loopback peer
        assert asyncio.run(dashboard_attempt(url, {"X-Forwarded-For": "203.0.113.9"})) == "snapshot"


def test_open_files_soft_limit_is_raised_to_the_hard_limit() -> None:
    import subprocess
    import sys

    code = ("import resource; soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE); "
            "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)); "
            "from gateway.admission import raise_open_files_limit; "
            "before, now, hard = raise_open_files_limit(); "
            "print(before, now, hard, resource.getrlimit(resource.RLIMIT_NOFILE)[0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    before, now, hard, actual = (int(x) for x in out)
    assert before == 256 and now == actual and now > 256
    assert now == hard or hard == -1  # RLIM_INFINITY: raised to fs.nr_open


def test_a_flood_of_unauthenticated_connections_is_capped_and_devices_stay_served(tmp_path: Path) -> None:
    """Over a budget the oldest silent connections are closed with 503, per address then in all
    (issue 20.14 made eviction replace refusal: tests/integration/test_admission_flood.py)."""
    import socket

    from tests.helpers.devices import GoodDevice
    from tests.helpers.waiting import until_sync

    # The budgets are per process (each worker has its own): one process, for exact counts.
    settings = {"max_unauthenticated": 40, "max_unauthenticated_per_address": 20, "auth_timeout_s": 60.0,
                "workers": 1}
    with GatewayProcess(tmp_path, **settings) as gw:
        tokens = gw.register_many(["steady", "newcomer"])
        assert "open_files_limit" in gw.log_text()

        def metrics() -> dict[str, float]:
            """/metrics read from an address of its own (not one of the flood's)."""
            import http.client

            conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5, source_address=("127.0.0.9", 0))
            try:
                conn.request("GET", "/metrics")
                text = conn.getresponse().read().decode()
            finally:
                conn.close()
            return {line.rpartition(" ")[0]: float(line.rpartition(" ")[2])
                    for line in text.splitlines() if line and not line.startswith("#")}

        def evicted(cap: str) -> float:
            return metrics()[f'edgewire_connections_evicted_total{{cap="{cap}",stage="silent"}}']

        def flood(source: str, count: int) -> list[socket.socket]:
            socks = []
            for _ in range(count):
                sock = socket.socket()
                sock.bind((source, 0))
                sock.connect(("127.0.0.1", gw.port))
                socks.append(sock)
            return socks

        seen: dict[socket.socket, bytes] = {}

        def answered(socks: list[socket.socket]) -> list[bytes]:
            """What the gateway sent on each socket so far (b"" for a silent, still open one)."""
            for sock in socks:
                try:
                    seen[sock] = seen.get(sock, b"") + sock.recv(4096, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    seen.setdefault(sock, b"")
            return [seen[sock] for sock in socks]

        def is_503(reply: bytes) -> bool:
            return reply.startswith(b"HTTP/1.1 503") and b"too_many_connections" in reply

        async def run() -> int:
            loop = asyncio.get_running_loop()
            async with GoodDevice(gw.device_url, "steady", tokens["steady"]) as steady:
                # one address: 35 connections, its budget 20: the 15 oldest closed with a 503
                same = await loop.run_in_executor(None, flood, "127.0.0.1", 35)
                await loop.run_in_executor(None, until_sync, lambda: evicted("per_address") >= 15, 15,
                                           "15 evictions")
                await loop.run_in_executor(None, until_sync, lambda: sum(map(is_503, answered(same))) >= 15, 15,
                                           "15 answers")
                replies = answered(same)
                assert all(map(is_503, replies[:15])) and replies[15:] == [b""] * 20
                # other addresses: up to the total budget of 40; beyond it, the oldest silent ones
                # anywhere (the first address's) make room
                others = []
                for source in ("127.0.0.3", "127.0.0.4"):
                    others += await loop.run_in_executor(None, flood, source, 15)
                await loop.run_in_executor(None, until_sync, lambda: sum(map(is_503, answered(same))) >= 25, 15,
                                           "10 more answers")
                replies = answered(same)
                assert all(map(is_503, replies[:25])) and replies[25:] == [b""] * 10
                assert answered(others) == [b""] * 30
                # the authenticated device goes on; a device from another address gets in
                acked = steady.acked
                await steady.wait_acked(acked + 5)
                async with connect(gw.device_url, additional_headers=bearer(tokens["newcomer"]),
                                   local_addr=("127.0.0.2", 0)) as newcomer:
                    welcome = json.loads(await newcomer.recv())
                    await newcomer.send(json.dumps({"t": "data", "seq": 1, "r": [{"m": {"temperature": 20}}]}))
                    ack = json.loads(await newcomer.recv())
                assert welcome["t"] == "welcome" and ack == {"t": "ack", "seq": 1}
                held.extend(same + others)
            return steady.acked

        held: list[socket.socket] = []
        acked = asyncio.run(run())
        values = metrics()
        evictions = {key: value for key, value in values.items() if key.startswith("edgewire_connections_evicted")}
        assert evictions['edgewire_connections_evicted_total{cap="per_address",stage="silent"}'] == 15
        assert evictions['edgewire_connections_evicted_total{cap="total",stage="silent"}'] >= 11  # 10, + the newcomer's
        assert values['edgewire_errors_total{code="too_many_connections"}'] == sum(evictions.values())
        # SIGTERM with the flood's connections still waiting (auth_timeout_s = 60): stops at once
        assert gw.stop(timeout=15) == 0
    for sock in held:
        sock.close()
    assert acked > 5


async def dashboard_as(gw: GatewayProcess, host: str | None = None, origin: str | None = None,
                       query: str = "") -> str:
    """Open /v1/dashboard with this Host and Origin (the TCP connection goes to the gateway)."""
    import socket

    from websockets.exceptions import InvalidStatus
    from websockets.typing import Origin

    sock = socket.create_connection(("127.0.0.1", gw.port))
    uri = f"ws://{host or f'127.0.0.1:{gw.port}'}/v1/dashboard{query}"
    try:
        async with connect(uri, sock=sock, origin=Origin(origin) if origin else None) as ws:
            return str(json.loads(await asyncio.wait_for(ws.recv(), 10))["t"])
    except InvalidStatus as err:
        return f"{err.response.status_code} {json.loads(err.response.body)['code']}"


def test_dashboard_checks_origin_and_refuses_unknown_hosts_without_a_token(tmp_path: Path) -> None:
    with GatewayProcess(tmp_path, dashboard_origins=["https://fleet.example.com"],
                        allowed_hosts=["fleet.example.com"]) as gw:
        own = f"127.0.0.1:{gw.port}"
        cases = {
            "no origin (not a browser)": asyncio.run(dashboard_as(gw)),
            "own origin": asyncio.run(dashboard_as(gw, origin=f"http://{own}")),
            "localhost": asyncio.run(dashboard_as(gw, host=f"localhost:{gw.port}",
                                                  origin=f"http://localhost:{gw.port}")),
            "cross-site page": asyncio.run(dashboard_as(gw, origin="http://evil.example")),
            "sandboxed page": asyncio.run(dashboard_as(gw, origin="null")),
            "dns rebinding": asyncio.run(dashboard_as(gw, host=f"evil.example:{gw.port}",
                                                      origin=f"http://evil.example:{gw.port}")),
            "allowlisted": asyncio.run(dashboard_as(gw, host="fleet.example.com",
                                                    origin="https://fleet.example.com")),
        }
    assert cases == {
        "no origin (not a browser)": "snapshot", "own origin": "snapshot", "localhost": "snapshot",
        "cross-site page": "403 origin_not_allowed", "sandboxed page": "403 origin_not_allowed",
        "dns rebinding": "403 host_not_allowed", "allowlisted": "snapshot"}


def test_with_the_token_any_host_name_works_but_not_a_foreign_origin(tmp_path: Path) -> None:
    with GatewayProcess(tmp_path, dashboard_auth="on") as gw:
        token = (gw.data_dir / "dashboard.token").read_text().strip()
        named = f"gateway.lan:{gw.port}"
        assert asyncio.run(dashboard_as(gw, host=named, origin=f"http://{named}", query="?token=" + token)) \
            == "snapshot"
        assert asyncio.run(dashboard_as(gw, host=named, origin="http://evil.example", query="?token=" + token)) \
            == "403 origin_not_allowed"


def test_jwt_with_exp_beyond_any_date_is_refused_at_the_upgrade(tmp_path: Path) -> None:
    import jwt as pyjwt
    from websockets.exceptions import InvalidStatus

    secret_file = tmp_path / "jwt.secret"
    secret = "k" * 40
    secret_file.write_text(secret)
    with GatewayProcess(tmp_path, jwt_secret_file=str(secret_file)) as gw:
        gw.register("jwt-dev")

        async def attempt(exp: float) -> str:
            token = pyjwt.encode({"sub": "jwt-dev", "exp": exp}, secret, algorithm="HS256")
            try:
                async with connect(gw.device_url, additional_headers=bearer(token)) as ws:
                    return str(json.loads(await asyncio.wait_for(ws.recv(), 10))["t"])
            except InvalidStatus as err:
                return f"{err.response.status_code} {json.loads(err.response.body)['code']}"

        results = [asyncio.run(attempt(exp)) for exp in (2**64 - 1, 1e30, 4_000_000_000)]
        log = gw.log_text()
    assert results == ["401 auth_failed", "401 auth_failed", "welcome"]
    assert "Traceback" not in log


def test_a_reading_from_the_year_3000_does_not_pin_latest(tmp_path: Path) -> None:
    with GatewayProcess(tmp_path) as gw:
        token = gw.register("clockless")

        async def run() -> tuple[dict[str, Any], dict[str, Any]]:
            import time

            async with connect(gw.device_url, additional_headers=bearer(token)) as ws:
                await ws.recv()
                year_3000 = 32503680000000
                await ws.send(json.dumps({"t": "data", "seq": 1, "r": [{"m": {"temperature": 99}, "ts": year_3000}]}))
                refused = json.loads(await asyncio.wait_for(ws.recv(), 10))
                now = int(time.time() * 1000)
                await ws.send(json.dumps({"t": "data", "seq": 1, "r": [{"m": {"temperature": 20}, "ts": now}]}))
                ack = json.loads(await asyncio.wait_for(ws.recv(), 10))
            return refused, ack

        refused, ack = asyncio.run(run())
        latest = asyncio.run(gw.admin({"t": "latest", "device_id": "clockless"}))["latest"]
    assert refused["code"] == wire.E_BAD_VALUE and refused["seq"] == 1
    assert "ahead of the gateway clock" in refused["msg"]
    assert ack == {"t": "ack", "seq": 1}
    assert latest["temperature"][0] == 20


def test_admin_register_accepts_only_string_ids(tmp_path: Path) -> None:
    with GatewayProcess(tmp_path) as gw:

        async def run() -> list[dict[str, Any]]:
            replies = []
            async with connect(gw.url + "/v1/admin", additional_headers=bearer(gw.admin_token)) as admin:
                for i, device_id in enumerate([5, None, True, 5.5, {"a": 1}, "", "a b", "5"]):
                    await admin.send(json.dumps({"t": "register", "id": str(i), "device_id": device_id}))
                    replies.append(json.loads(await asyncio.wait_for(admin.recv(), 10)))
            return replies

        replies = asyncio.run(run())
        registered = [row[0] for row in gw.query("SELECT device_id FROM devices")]
    assert [r["code"] for r in replies[:-1]] == ["bad_request"] * 7
    assert all("invalid device id" in r["msg"] for r in replies[:-1])
    assert replies[-1]["t"] == "ok" and replies[-1]["device_id"] == "5"
    assert registered == ["5"]


def test_state_files_are_private(tmp_path: Path) -> None:
    import stat

    from tests.helpers.gateway import run_cli

    # a data dir that exists with the usual 0755 is tightened; the files are the user's alone
    gw = GatewayProcess(tmp_path)
    gw.data_dir.chmod(0o755)
    with gw:
        gw.register("private-1")
        token = gw.register("private-2")

        async def send() -> None:
            async with connect(gw.device_url, additional_headers=bearer(token)) as ws:
                await ws.recv()
                await ws.send(json.dumps({"t": "data", "seq": 1, "r": [{"m": {"temperature": 20}}]}))
                await ws.recv()

        asyncio.run(send())
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in gw.data_dir.iterdir()
                 if p.name not in ("gateway.log", "gateway.toml")}
        dir_mode = stat.S_IMODE(gw.data_dir.stat().st_mode)
    assert dir_mode == 0o700
    assert {"edgewire.db", "edgewire.db-wal", "token.key", "admin.token"} <= set(modes)
    assert all(mode & 0o077 == 0 for mode in modes.values()), modes
    # a new data dir made by the registry CLI
    fresh = tmp_path / "fresh" / "state"
    run_cli("devices", "add", "private-3", "--data-dir", str(fresh))
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) & 0o077 == 0 for p in fresh.iterdir())


def test_no_compression_before_auth_and_replaced_events_on_the_dashboard(tmp_path: Path) -> None:
    with GatewayProcess(tmp_path) as gw:
        token = gw.register("twin")

        async def run() -> tuple[str | None, str | None, DashboardWatcher]:
            async with DashboardWatcher(gw.url) as dash:
                await until(lambda: dash.snapshots >= 1, what="the snapshot")
                async with connect(gw.device_url, compression="deflate") as first_frame:
                    unauthenticated = first_frame.response.headers.get("Sec-WebSocket-Extensions")
                    await first_frame.send(json.dumps({"t": "auth", "device_id": "twin", "token": token}))
                    assert json.loads(await first_frame.recv())["t"] == "welcome"
                    async with connect(gw.device_url, compression="deflate",
                                       additional_headers=bearer(token)) as second:
                        authenticated = second.response.headers.get("Sec-WebSocket-Extensions")
                        assert json.loads(await second.recv())["t"] == "welcome"
                        await until(lambda: any(e["kind"] == "replaced" for e in dash.events), 10,
                                    "the replaced event")
            return unauthenticated, authenticated, dash

        unauthenticated, authenticated, dash = asyncio.run(run())
    assert unauthenticated is None and authenticated is not None and "permessage-deflate" in authenticated
    replaced = [e for e in dash.events if e["kind"] == "replaced"]
    assert len(replaced) == 1 and replaced[0]["device"] == "twin"
    assert replaced[0]["address"] == replaced[0]["old_address"] == "127.0.0.1"


def test_metrics_and_healthz_of_a_live_gateway(tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    with GatewayProcess(tmp_path) as gw:
        token = gw.register("metered")

        async def run() -> None:
            async with connect(gw.device_url, additional_headers=bearer(token)) as ws:
                await ws.recv()
                for seq in range(1, 6):
                    await ws.send(json.dumps({"t": "data", "seq": seq, "r": [{"m": {"temperature": 20}}]}))
                    assert json.loads(await asyncio.wait_for(ws.recv(), 10))["seq"] == seq

        asyncio.run(run())
        with urllib.request.urlopen(gw.http_url + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
        status, body = health(gw)
    families = {f.name: f for f in text_string_to_metric_families(text)}

    def sample(family: str, name: str) -> float:
        return next(s.value for s in families[family].samples if s.name == name)

    assert sample("edgewire_ack_latency_seconds", "edgewire_ack_latency_seconds_count") == 5
    assert sample("edgewire_commit_latency_seconds", "edgewire_commit_latency_seconds_count") == 5
    assert sample("edgewire_frame_size_bytes", "edgewire_frame_size_bytes_count") == 5
    assert sample("process_resident_memory_bytes", "process_resident_memory_bytes") > 10_000_000
    assert families["edgewire_build_info"].samples[0].labels["event_loop"] in ("uvloop", "asyncio")
    assert all(s.value == 0 for s in families["edgewire_errors"].samples)  # present before any error
    assert "edgewire_dashboard_clients" in families and "edgewire_dashboards" not in families
    assert status == 200 and body["checks"]["storage"] == {
        "backend": "sqlite", "state": "ok", "commits": body["checks"]["storage"]["commits"],
        "failed_commits": 0, "last_error": None}
    assert body["checks"]["hub"]["state"] == "running"


def test_admin_bad_input_is_refused_and_the_connection_goes_on(tmp_path: Path) -> None:
    with GatewayProcess(tmp_path) as gw:
        token = gw.register("adm-dev")

        async def run() -> list[dict[str, Any]]:
            replies = []
            deep: Any = 1
            for _ in range(300):
                deep = [deep]
            requests = [
                {"t": "command", "device_id": "adm-dev", "name": "ping", "args": {"x": deep}},
                {"t": "command", "device_id": "adm-dev", "name": {"not": "a name"}},
                {"t": "command", "device_id": "adm-dev", "name": "ping", "timeout": -1},
                {"t": "history", "device_id": "adm-dev", "metric": "temperature", "limit": -1},
                {"t": "history", "device_id": "adm-dev", "metric": ["temperature"]},
                {"t": "register", "device_id": "x" * 10, "label": {"a": 1}},
                {"t": "stats"},
            ]
            async with connect(gw.device_url, additional_headers=bearer(token)) as dev, \
                    connect(gw.url + "/v1/admin", additional_headers=bearer(gw.admin_token)) as admin:
                await dev.recv()
                for i, request in enumerate(requests):
                    await admin.send(json.dumps(dict(request, id=str(i))))
                    replies.append(json.loads(await asyncio.wait_for(admin.recv(), 10)))
                # a tool that goes away while its command waits: nothing is reported as a failure
                await admin.send(json.dumps({"t": "command", "id": "9", "device_id": "adm-dev", "name": "ping"}))
                await asyncio.wait_for(dev.recv(), 10)
            return replies

        replies = asyncio.run(run())
        async def count_origin_refusal() -> str:
            return await dashboard_as(gw, origin="http://evil.example")

        assert asyncio.run(count_origin_refusal()) == "403 origin_not_allowed"
        errors = {k: v for k, v in gw.metrics().items() if k.startswith("edgewire_errors_total")}
        log = gw.log_text()
    assert [r["code"] for r in replies[:-1]] == ["bad_request"] * 6, replies
    assert "nested deeper" in replies[0]["msg"]
    assert replies[-1]["t"] == "ok"
    assert errors['edgewire_errors_total{code="origin_not_allowed"}'] == 1
    assert "Traceback" not in log and "handler failed" not in log


def test_a_command_to_a_device_that_goes_offline_fails_at_once(tmp_path: Path) -> None:
    with GatewayProcess(tmp_path) as gw:
        token = gw.register("leaver")

        async def run() -> dict[str, Any]:
            async with connect(gw.url + "/v1/admin", additional_headers=bearer(gw.admin_token)) as admin:
                async with connect(gw.device_url, additional_headers=bearer(token)) as dev:
                    await dev.recv()
                    await admin.send(json.dumps({"t": "command", "id": "1", "device_id": "leaver", "name": "reboot",
                                                 "timeout": 120}))
                    await asyncio.wait_for(dev.recv(), 10)
                # the device went away without answering: the operator hears it now, not in 120 s
                return dict(json.loads(await asyncio.wait_for(admin.recv(), 10)))

        reply = asyncio.run(run())
    assert reply["t"] == "error" and "went offline before answering" in reply["msg"]


def test_a_burst_of_connections_of_one_device_never_locks_it_out(tmp_path: Path) -> None:
    """Found by churn testing: with three or more quick connections of one device, a session
    replaced before its welcome never signalled its end, and the device could not connect again
    (nor the gateway stop) until a restart."""
    with GatewayProcess(tmp_path) as gw:
        token = gw.register("twin-burst")

        async def first_frame(ws: ClientConnection) -> str:
            try:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 15))
                return str(msg.get("code") or msg["t"])
            except ConnectionClosed:
                return "closed"

        async def run() -> tuple[list[str], dict[str, Any], dict[str, Any]]:
            burst = await asyncio.gather(*(connect(gw.device_url, additional_headers=bearer(token))
                                           for _ in range(8)))
            firsts = await asyncio.gather(*(first_frame(ws) for ws in burst))
            for ws in burst:
                await ws.close()
            async with connect(gw.device_url, additional_headers=bearer(token)) as ws:
                welcome = json.loads(await asyncio.wait_for(ws.recv(), 15))
                await ws.send(json.dumps({"t": "data", "seq": 1, "r": [{"m": {"temperature": 20}}]}))
                ack = json.loads(await asyncio.wait_for(ws.recv(), 15))
            return firsts, welcome, ack

        firsts, welcome, ack = asyncio.run(run())
        code = gw.stop(timeout=20)
    assert set(firsts) <= {"welcome", wire.E_REPLACED, "closed"} and wire.E_REPLACED in firsts
    assert welcome["t"] == "welcome" and ack == {"t": "ack", "seq": 1}
    assert code == 0
