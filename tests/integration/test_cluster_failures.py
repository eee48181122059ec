"""Failures in a cluster of three gateway processes on a real PostgreSQL (docs/scaling.md section 5):

- an instance killed (SIGKILL) mid-stream under 300 devices: its devices reconnect to the
  others, every reading is stored exactly once, and a dashboard on a survivor shows all 300
  online again within 30 s;
- the bus (a real redis-server, then a real nats-server) restarted mid-stream: readings keep
  being stored and acknowledged, /healthz says degraded (HTTP 200) and commands fail fast, then
  the instances resubscribe and rebuild presence, /healthz is ok, commands work again, and
  nothing acknowledged is lost;
- SIGTERM: the drain closes the device connections in batches of drain_rate per second.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from gateway.bus import open_bus
from services.nats import NatsServer
from services.redis import RedisServer
from simulator.fleet import Fleet
from tests.helpers.cluster import GatewayCluster, admin, device, health, online_count
from tests.helpers.dashboard import DashboardWatcher
from tests.helpers.postgres import stored_seqs
from tests.helpers.waiting import until

KILL_DEVICES = 300
BUS_DEVICES = 30


def exactly_once(final: dict[str, list[int]], generated: dict[str, int]) -> None:
    for device_id, n in generated.items():
        assert final.get(device_id) == list(range(1, n + 1)), f"{device_id}: lost or duplicated readings"


def test_instance_killed_mid_stream(tmp_path: Path, postgres_dsn: str) -> None:
    with RedisServer() as redis, GatewayCluster(tmp_path, redis.url, postgres_dsn) as cluster:
        victim, survivor, _other = cluster.gateways
        creds = survivor.register_many([f"kill-{i:03d}" for i in range(KILL_DEVICES)])

        async def run() -> tuple[dict[str, object], dict[str, int], float, int]:
            loop = asyncio.get_running_loop()
            async with DashboardWatcher(survivor.url) as dash, Fleet(
                    cluster.urls, creds, rate=1.0, batch=1, seed=11, connect_rate=150.0,
                    backoff_initial_s=0.2, backoff_max_s=2.0) as fleet:
                fleet.start()
                assert await fleet.wait_until(lambda f: all(d.counters.acked >= 2 for d in f.devices), 90)
                moved = [d for d in fleet.devices if d.url.startswith(victim.url)]
                assert moved, "some devices are on the victim"
                killed_ms = int(time.time() * 1000)
                await loop.run_in_executor(None, victim.kill)
                started = time.monotonic()
                moved_ids = {d.device_id for d in moved}

                def back() -> bool:
                    # each device of the victim was seen coming online again on the survivor's dashboard
                    again = {e["device"] for e in dash.events if e["kind"] == "online" and e["at"] >= killed_ms}
                    return moved_ids <= again and online_count(dash.latest, "kill-") == KILL_DEVICES

                await until(back, 30, "a survivor's dashboard showing all devices online again")
                recovered_s = time.monotonic() - started
                assert all(not d.url.startswith(victim.url) for d in moved if d.online)
                target = {d.device_id: d.counters.generated + 2 for d in fleet.devices}
                assert await fleet.wait_until(
                    lambda f: all(d.counters.acked >= target[d.device_id] for d in f.devices), 60)
                summary = await fleet.stop(drain_s=30.0)
                generated = {d.device_id: d.counters.generated for d in fleet.devices}
            return summary, generated, recovered_s, len(moved)

        summary, generated, recovered_s, moved = asyncio.run(run())
        final = asyncio.run(stored_seqs(postgres_dsn))
    print(f"instance killed: {moved} devices moved, survivor's dashboard whole again after {recovered_s:.1f} s")
    assert summary["crashed"] == 0 and summary["buffered"] == 0
    assert summary["acked"] == summary["generated"]
    exactly_once(final, generated)


def bus_server(kind: str) -> RedisServer | NatsServer:
    return RedisServer() if kind == "redis" else NatsServer()


@pytest.mark.parametrize("kind", ["redis", "nats"])
def test_bus_restarted_mid_stream(kind: str, tmp_path: Path, postgres_dsn: str) -> None:
    with bus_server(kind) as server, GatewayCluster(tmp_path, server.url, postgres_dsn) as cluster:
        gateways = cluster.gateways
        creds = gateways[0].register_many([f"bus-{i:02d}" for i in range(BUS_DEVICES)])

        async def run() -> dict[str, object]:
            loop = asyncio.get_running_loop()
            out: dict[str, object] = {}
            async with DashboardWatcher(gateways[2].url) as dash, Fleet(
                    cluster.urls, creds, rate=4.0, batch=1, seed=5, backoff_initial_s=0.2,
                    backoff_max_s=2.0) as fleet:
                fleet.start()
                assert await fleet.wait_until(lambda f: all(d.counters.acked >= 3 for d in f.devices), 60)
                target = next(d for d in fleet.devices if not d.url.startswith(gateways[1].url))
                await loop.run_in_executor(None, server.stop, "kill")
                # Every instance notices within a heartbeat: degraded, still HTTP 200 (readiness stays).
                for gw in gateways:
                    await until(lambda gw=gw: gw.health()[1]["status"] == "degraded", 15, f"{gw.url} degraded")
                    status, body = await health(gw)
                    assert status == 200 and body["checks"]["bus"]["state"] != "ok", body
                began = time.monotonic()
                refused = await admin(gateways[1], {"t": "command", "device_id": target.device_id,
                                                    "name": "ping", "timeout": 20})
                out["refused"], out["refused_s"] = refused, time.monotonic() - began
                # Readings keep flowing into PostgreSQL: the bus is not on the durability path.
                acked = fleet.summary()["acked"]
                assert await fleet.wait_until(lambda f: f.summary()["acked"] >= acked + 2 * BUS_DEVICES, 30)
                await loop.run_in_executor(None, server.start)
                for gw in gateways:
                    await until(lambda gw=gw: gw.health()[1]["status"] == "ok", 30, f"{gw.url} ok again")
                # Presence rebuilt: on the bus, on every instance, and on a dashboard.
                probe = open_bus(server.url, "test-probe", lease_ttl_s=3.0)
                await probe.start()
                await probe.wait_ok(15)
                await until(lambda: all(gw.metrics()["edgewire_fleet_online"] == BUS_DEVICES for gw in gateways),
                            30, "every instance counting the whole fleet")
                out["presence"] = sorted(await probe.presence.snapshot())
                await probe.close()
                await until(lambda: online_count(dash.latest, "bus-") == BUS_DEVICES, 30, "dashboard whole again")
                # Commands go across instances again (the request and result paths resubscribed).
                out["command"] = await admin(gateways[1], {"t": "command", "device_id": target.device_id,
                                                           "name": "ping", "timeout": 20})
                out["summary"] = await fleet.stop(drain_s=30.0)
                out["generated"] = {d.device_id: d.counters.generated for d in fleet.devices}
            return out

        out = asyncio.run(run())
        final = asyncio.run(stored_seqs(postgres_dsn))
        metrics = gateways[0].metrics()
    refused = out["refused"]
    assert isinstance(refused, dict) and refused["t"] == "error" and refused["code"] == "bus_unavailable", refused
    assert isinstance(out["refused_s"], float) and out["refused_s"] < 5, "commands fail fast while the bus is down"
    assert out["presence"] == sorted(creds)
    command = out["command"]
    assert isinstance(command, dict) and command["t"] == "ok" and command["result"]["msg"] == "pong", command
    assert metrics["edgewire_bus_reconnects_total"] >= 1
    summary = out["summary"]
    assert isinstance(summary, dict) and summary["crashed"] == 0 and summary["buffered"] == 0
    assert summary["acked"] == summary["generated"]
    generated = out["generated"]
    assert isinstance(generated, dict)
    exactly_once(final, generated)


def test_sigterm_drains_devices_in_batches(tmp_path: Path, postgres_dsn: str) -> None:
    with RedisServer() as redis, GatewayCluster(tmp_path, redis.url, postgres_dsn, size=2,
                                                drain_rate=10.0) as cluster:
        leaving, staying = cluster.gateways
        creds = staying.register_many([f"drain-{i:02d}" for i in range(30)])

        async def run() -> list[tuple[float, int | None]]:
            loop = asyncio.get_running_loop()
            conns = [(await device(leaving, token))[0] for token in creds.values()]
            closed: list[tuple[float, int | None]] = []

            async def wait_close(ws: object) -> None:
                from websockets.asyncio.client import ClientConnection

                assert isinstance(ws, ClientConnection)
                await ws.wait_closed()
                closed.append((loop.time(), ws.close_code))

            waits = [asyncio.ensure_future(wait_close(ws)) for ws in conns]
            stop = loop.run_in_executor(None, leaving.stop)
            await asyncio.wait_for(asyncio.gather(*waits), 30)
            assert await stop == 0
            return closed

        closed = asyncio.run(run())
    assert [code for _t, code in closed] == [1012] * 30
    times = sorted(t for t, _code in closed)
    # 30 devices at 10 per second: three batches, the last about two seconds after the first.
    assert times[-1] - times[0] >= 1.5, times
