"""Three gateway processes joined by a real redis-server on one real PostgreSQL (docs/scaling.md):
takeover across instances (exact last_seq, 4005 for the old session), commands across
instances (a device that moves mid-command, an offline device, one that leaves), a registry
change made on one instance cutting the session on another, and /healthz with a bus.

One cluster serves the whole module (each test uses its own devices); the tests that kill
instances or the bus are in test_cluster_failures.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator

import pytest
from websockets.exceptions import ConnectionClosed

from services.postgres import PostgresServer
from services.redis import RedisServer
from tests.helpers.cluster import GatewayCluster, admin, data_frame, device, health
from tests.helpers.dashboard import DashboardWatcher
from tests.helpers.devices import expect_close
from tests.helpers.gateway import GatewayProcess
from tests.helpers.postgres import fresh_database, stored_seqs
from tests.helpers.waiting import until, until_sync


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer) -> Iterator[GatewayCluster]:
    name, dsn = fresh_database(postgres_server, "cl")
    # registry_recheck_s is long: a registry change must reach the holder by its notice, not the sweep.
    with RedisServer() as redis, GatewayCluster(tmp_path_factory.mktemp("cluster"), redis.url, dsn, rate=1000.0,
                                                burst=1000.0, registry_recheck_s=120.0, alerts=[HOT]) as gateways:
        yield gateways
    postgres_server.drop_database(name)


HOT = {"id": "hot", "metric": "temperature", "above": 30, "hysteresis": 1, "severity": "major"}


def register(cluster: GatewayCluster, *device_ids: str) -> dict[str, str]:
    return cluster.gateways[2].register_many(list(device_ids))


def test_takeover_across_instances_keeps_last_seq_exact(cluster: GatewayCluster) -> None:
    a, b, _c = cluster.gateways
    token = register(cluster, "tk-1")["tk-1"]

    async def run() -> tuple[list[dict[str, object]], int | None, int, list[int], int]:
        ws_a, welcome = await device(a, token)
        assert welcome["last_seq"] == 0
        sent = [0]

        async def stream() -> None:  # the device keeps sending on A while it connects to B
            with contextlib.suppress(ConnectionClosed):
                for seq in range(1, 5001):
                    await ws_a.send(data_frame(seq))
                    sent[0] = seq
                    await asyncio.sleep(0.001)

        sender = asyncio.ensure_future(stream())
        await until(lambda: sent[0] >= 50, 10, "a stream on A")
        frames_task = asyncio.ensure_future(expect_close(ws_a, timeout=20))
        ws_b, welcome_b = await device(b, token)
        frames_a, code_a = await frames_task
        sender.cancel()
        stored = (await stored_seqs(cluster.storage)).get("tk-1", [])
        await ws_b.close()
        return frames_a, code_a, int(welcome_b["last_seq"]), stored, sent[0]

    frames_a, code_a, last_seq, stored, _sent = asyncio.run(run())
    assert code_a == 4005
    assert any(f.get("t") == "error" and f.get("code") == "replaced" for f in frames_a), frames_a
    acked_by_a = max([int(f["seq"]) for f in frames_a if f.get("t") == "ack"], default=0)  # type: ignore[call-overload]
    # A stored what it had accepted before it answered the takeover, and nothing after it closed:
    # B's welcome names exactly what PostgreSQL holds, which covers everything A acknowledged.
    assert stored == list(range(1, last_seq + 1))
    assert last_seq >= acked_by_a
    assert "device_handed_over" in a.log_text()


def test_command_follows_a_device_that_moves_before_answering(cluster: GatewayCluster) -> None:
    a, b, c = cluster.gateways
    token = register(cluster, "cmd-move")["cmd-move"]

    async def run() -> tuple[dict[str, object], dict[str, object], dict[str, object], int | None]:
        ws_a, _ = await device(a, token)
        call = asyncio.ensure_future(admin(c, {"t": "command", "device_id": "cmd-move", "name": "set_interval",
                                               "args": {"seconds": 30}, "timeout": 30}))
        first = json.loads(await asyncio.wait_for(ws_a.recv(), 15))  # C -> A over the bus
        ws_b, _ = await device(b, token)  # the device moves to B before it answers
        _frames, code_a = await expect_close(ws_a)
        again = json.loads(await asyncio.wait_for(ws_b.recv(), 15))  # B sends it again from the queue
        await ws_b.send(json.dumps({"t": "result", "id": again["id"], "ok": True, "msg": "interval 30 s"}))
        reply = await asyncio.wait_for(call, 30)
        await ws_b.close()
        return first, again, reply, code_a

    first, again, reply, code_a = asyncio.run(run())
    assert first["t"] == "cmd" and first["name"] == "set_interval" and first["args"] == {"seconds": 30}
    assert again["t"] == "cmd" and again["id"] == first["id"], "the same command id on the new instance"
    assert code_a == 4005
    assert reply["t"] == "ok" and reply["result"] == {"id": first["id"], "ok": True, "msg": "interval 30 s",
                                                      "data": None}


async def seen_once(gw: GatewayProcess, token: str) -> None:
    """The device connects, sends a reading and leaves: from then on commands for it wait while it is offline
    (one that never connected is refused at once)."""
    ws, _ = await device(gw, token)
    await ws.send(data_frame(1))
    while json.loads(await asyncio.wait_for(ws.recv(), 15)).get("t") != "ack":
        pass
    await ws.close()


def test_command_to_an_offline_device_is_delivered_when_it_connects(cluster: GatewayCluster) -> None:
    a, b, c = cluster.gateways
    token = register(cluster, "cmd-late")["cmd-late"]

    async def run() -> tuple[dict[str, object], dict[str, object]]:
        await seen_once(a, token)
        call = asyncio.ensure_future(admin(c, {"t": "command", "device_id": "cmd-late", "name": "ping",
                                               "timeout": 30}))
        await until(lambda: c.metrics().get("edgewire_commands_pending", 0) >= 1, 15, "the command queued")
        ws, _ = await device(b, token)  # connects later, on another instance than the caller
        cmd = json.loads(await asyncio.wait_for(ws.recv(), 15))
        await ws.send(json.dumps({"t": "result", "id": cmd["id"], "ok": True, "msg": "pong"}))
        reply = await asyncio.wait_for(call, 30)
        await ws.close()
        return cmd, reply

    cmd, reply = asyncio.run(run())
    assert cmd["name"] == "ping"
    assert reply["t"] == "ok" and reply["result"]["msg"] == "pong"


def test_command_to_an_offline_device_expires_with_a_clear_error(cluster: GatewayCluster) -> None:
    _a, b, c = cluster.gateways
    token = register(cluster, "cmd-never")["cmd-never"]

    async def run() -> tuple[dict[str, object], dict[str, object], list[dict[str, object]], dict[str, object]]:
        # never connected: refused at once, however long the caller would wait (issue 20.7)
        never = await admin(c, {"t": "command", "device_id": "cmd-never", "name": "ping", "timeout": 300})
        await seen_once(b, token)
        expired = await admin(c, {"t": "command", "device_id": "cmd-never", "name": "ping", "timeout": 1})
        ws, _ = await device(b, token)  # connects after the expiry: the command is not delivered
        pong = asyncio.ensure_future(admin(c, {"t": "command", "device_id": "cmd-never", "name": "ping",
                                               "timeout": 15}))
        seen = [json.loads(await asyncio.wait_for(ws.recv(), 15))]
        await ws.send(json.dumps({"t": "result", "id": seen[0]["id"], "ok": True, "msg": "pong"}))
        answered = await asyncio.wait_for(pong, 20)
        await ws.close()
        return never, expired, seen, answered

    never, expired, seen, answered = asyncio.run(run())
    assert never["t"] == "error" and never["code"] == "device_offline", never
    assert "never connected" in str(never["msg"])
    assert expired["t"] == "error" and expired["code"] == "command_expired", expired
    assert "offline" in str(expired["msg"])
    assert len(seen) == 1 and answered["t"] == "ok", "only the second command reached the device"
    unknown = asyncio.run(admin(c, {"t": "command", "device_id": "nobody-here", "name": "ping", "timeout": 5}))
    assert unknown["t"] == "error" and unknown["code"] == "not_found"


def test_a_device_that_leaves_before_answering_fails_the_command_on_another_instance(
        cluster: GatewayCluster) -> None:
    a, _b, c = cluster.gateways
    token = register(cluster, "cmd-leave")["cmd-leave"]

    async def run() -> dict[str, object]:
        ws, _ = await device(a, token)
        call = asyncio.ensure_future(admin(c, {"t": "command", "device_id": "cmd-leave", "name": "reboot",
                                               "timeout": 120}))
        await asyncio.wait_for(ws.recv(), 15)
        await ws.close()  # gone without answering: the operator hears it now, not in 120 s
        return await asyncio.wait_for(call, 20)

    reply = asyncio.run(run())
    assert reply["t"] == "error" and reply["code"] == "device_offline"
    assert "went offline before answering" in str(reply["msg"])


def test_registry_disable_on_one_instance_cuts_the_session_on_another(cluster: GatewayCluster) -> None:
    a, _b, c = cluster.gateways
    token = register(cluster, "reg-off")["reg-off"]

    async def run() -> tuple[dict[str, object], list[dict[str, object]], int | None]:
        ws, _ = await device(a, token)
        reply = await admin(c, {"t": "disable", "device_id": "reg-off"})
        # registry_recheck_s is 120 s here: the notice over the bus does it, well before the sweep.
        frames, code = await expect_close(ws, timeout=20)
        return reply, frames, code

    reply, frames, code = asyncio.run(run())
    assert reply["t"] == "ok" and reply["enabled"] is False
    assert code == 4003 and any(f.get("code") == "device_disabled" for f in frames)
    assert asyncio.run(admin(c, {"t": "enable", "device_id": "reg-off"}))["t"] == "ok"


def test_an_alert_raised_on_one_instance_appears_on_the_others(cluster: GatewayCluster) -> None:
    a, b, c = cluster.gateways
    token = register(cluster, "alert-x")["alert-x"]

    def shown(dash: DashboardWatcher) -> bool:
        return any(alert["device"] == "alert-x" for alert in dash.alerts)

    async def run() -> tuple[list[dict[str, object]], list[dict[str, object]]]:
        async with DashboardWatcher(b.url) as dash_b, DashboardWatcher(c.url) as dash_c:
            ws, _ = await device(a, token)  # the alert is evaluated on A, where the readings arrive
            await ws.send(data_frame(1, 35.0))
            await until(lambda: shown(dash_b) and shown(dash_c), 20, "the alert on B's and C's dashboards")
            await ws.send(data_frame(2, 20.0))
            await until(lambda: not shown(dash_b) and not shown(dash_c), 20, "the alert cleared on B and C")
            await ws.close()
            return dash_b.events, dash_c.events

    events_b, events_c = asyncio.run(run())
    for events in (events_b, events_c):
        kinds = [e["kind"] for e in events if e.get("device") == "alert-x"]
        assert "alert_raised" in kinds and "alert_cleared" in kinds, kinds


def test_healthz_and_metrics_report_the_bus(cluster: GatewayCluster) -> None:
    gw = cluster.gateways[0]
    status, body = asyncio.run(health(gw))
    assert status == 200 and body["status"] == "ok"
    bus = body["checks"]["bus"]
    assert bus["state"] == "ok" and bus["bus"] == "redis" and bus["instance"] == "gw-0"
    assert body["checks"]["cluster"]["state"] == "running"
    until_sync(lambda: gw.health()[1]["checks"]["bus"]["peers"] == ["gw-1", "gw-2"], 10, "both peers known")
    metrics = gw.metrics()
    assert metrics["edgewire_bus_up"] == 1 and metrics["edgewire_instances"] == 3
