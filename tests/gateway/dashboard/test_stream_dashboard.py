"""The hub's dashboard side: every reading merged, the registry listed, alert events, errors,
the role in each client's snapshot, operator actions answered per client, revoked tokens closed."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, cast

from websockets.asyncio.server import ServerConnection

from gateway.dashboard.actions import ActionHandlers, DashboardActions
from gateway.dashboard.roles import OPERATOR, VIEWER, DashboardIdentity
from gateway.dashboard.stream import DashboardClient, DashboardStream
from gateway.dashboard.view import Hub
from gateway.storage.base import DeviceRecord


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_hub() -> tuple[Hub, FakeClock]:
    clock = FakeClock()
    return Hub(250.0, 8, json.dumps, clock), clock


def listen(hub: Hub) -> DashboardClient:
    c = DashboardClient(hub, cast(ServerConnection, None), hub.queue_limit)
    c.needs_snapshot = False
    hub.clients.add(c)
    return c


def updates(c: DashboardClient) -> list[dict[str, Any]]:
    return [json.loads(f) for f in c.queue]


def test_every_reading_of_a_frame_updates_the_latest_values_newest_time_wins() -> None:
    hub, _ = make_hub()
    # a Pi agent's frame: one reading per sensor
    hub.reading("PI-1", {"temperature": 21.0, "humidity": 40.0}, 1000)
    hub.reading("PI-1", {"cpu_temperature": 45.0}, 1000)
    hub.reading("PI-1", {"soil_moisture": 30.0}, 1001)
    hub.reading("PI-1", {"temperature": 19.0}, 500)  # an older reading (a resend) does not win
    assert hub.devices["PI-1"].latest == {"temperature": [21.0, 1000], "humidity": [40.0, 1000],
                                          "cpu_temperature": [45.0, 1000], "soil_moisture": [30.0, 1001]}
    hub.reading("PI-1", {"temperature": 22.5}, 1000)  # same time, later seq: wins
    assert hub.devices["PI-1"].latest["temperature"] == [22.5, 1000]


def test_registry_lists_devices_that_never_connected_and_follows_changes() -> None:
    hub, _ = make_hub()
    c = listen(hub)
    hub.registry([DeviceRecord("A", True, None, label="greenhouse"), DeviceRecord("B", False, None)])
    hub.flush()
    update = updates(c)[-1]
    assert update["devices"]["A"]["label"] == "greenhouse" and update["devices"]["A"]["registered"] is True
    assert update["devices"]["A"]["last_seen"] == 0 and update["devices"]["A"]["online"] is False
    assert update["devices"]["B"]["enabled"] is False
    hub.registry([DeviceRecord("A", True, None, label="greenhouse"), DeviceRecord("B", False, None)])
    hub.flush()
    assert len(c.queue) == 1  # nothing changed: no update
    hub.online("B")
    hub.registry([DeviceRecord("A", True, None, label="shed")])  # B deleted while online: kept until offline
    hub.flush()
    update = updates(c)[-1]
    assert update["devices"]["A"]["label"] == "shed" and "removed" not in update
    hub.offline("B")
    hub.registry([DeviceRecord("A", True, None, label="shed")])
    hub.flush()
    assert updates(c)[-1]["removed"] == ["B"] and "B" not in hub.devices
    snapshot = json.loads(hub.snapshot_frame())
    assert [d["id"] for d in snapshot["devices"]] == ["A"]


def test_boot_and_last_error_are_shown() -> None:
    hub, _ = make_hub()
    c = listen(hub)
    hub.boot("S-1", "7f3a")
    hub.device_error("S-1", "bad_value", "metric 'temperature' = 999 outside plausible range" + "x" * 500)
    hub.flush()
    device = updates(c)[-1]["devices"]["S-1"]
    assert device["boot"] == "7f3a"
    assert device["last_error"]["code"] == "bad_value" and device["last_error"]["at"] == 1_700_000_000_000
    assert len(device["last_error"]["msg"]) == 300
    hub.boot("S-1", "7f3a")
    hub.flush()
    assert len(c.queue) == 1


@dataclass(frozen=True)
class Event:
    kind: str
    alert: dict[str, Any]
    at: int
    by: str | None = None


def test_alert_events_keep_the_open_alerts() -> None:
    hub, _ = make_hub()
    c = listen(hub)
    alert = {"id": 7, "device": "S-1", "state": "active", "severity": "major"}
    hub.alert_event(Event("raised", alert, 10))
    hub.alert_event(Event("acknowledged", dict(alert, state="acknowledged"), 11, "dashboard:alice"))
    hub.flush()
    update = updates(c)[-1]
    assert update["alerts"] == [dict(alert, state="acknowledged")]
    assert [(e["kind"], e["by"]) for e in update["events"]] == [("alert_raised", None),
                                                                 ("alert_acknowledged", "dashboard:alice")]
    hub.alert_event(Event("cleared", dict(alert, state="cleared"), 12, "auto"))
    hub.flush()
    assert updates(c)[-1]["alerts"] == [] and hub.alerts == {}


class FakeWs:
    def __init__(self, incoming: list[str]) -> None:
        self.incoming = incoming
        self.sent: list[dict[str, Any]] = []
        self.closed: tuple[int, str] | None = None
        self.transport = self
        self.done = asyncio.Event()

    def get_extra_info(self, name: str) -> Any:
        return None

    async def send(self, text: str) -> None:
        self.sent.append(json.loads(text))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = (code, reason)

    def __aiter__(self) -> FakeWs:
        return self

    async def __anext__(self) -> str:
        if self.incoming:
            return self.incoming.pop(0)
        await self.done.wait()
        raise StopAsyncIteration


def test_serve_sends_the_role_then_answers_actions_by_role() -> None:
    async def main() -> None:
        hub, _ = make_hub()
        calls: list[tuple[Any, ...]] = []

        async def ack(alert_id: int, actor: str) -> dict[str, Any]:
            calls.append((alert_id, actor))
            return {"id": alert_id, "state": "acknowledged"}

        async def command(device: str, name: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
            return {"ok": True}

        stream = DashboardStream(hub, DashboardActions(ActionHandlers(ack, ack, command), None))
        for identity, expect in ((DashboardIdentity(OPERATOR, "alice"), "ok"),
                                 (DashboardIdentity(VIEWER, "wall"), "forbidden")):
            ws = FakeWs([json.dumps({"t": "ack", "id": "r1", "alert": 3}), "garbage"])
            ws.dashboard = identity  # type: ignore[attr-defined]
            serving = asyncio.get_running_loop().create_task(stream.serve(cast(ServerConnection, ws)))
            while len([m for m in ws.sent if m["t"] in ("ok", "error")]) < 2:
                await asyncio.sleep(0.01)
            ws.done.set()
            await serving
            snapshot = ws.sent[0]
            assert (snapshot["t"], snapshot["role"], snapshot["token"]) == ("snapshot", identity.role, identity.name)
            replies = {m.get("id"): m for m in ws.sent if m["t"] in ("ok", "error")}
            assert (replies["r1"]["t"] if expect == "ok" else replies["r1"]["code"]) == expect
            assert replies[None]["code"] == "bad_json"
        assert calls == [(3, "dashboard:alice")]

    asyncio.run(main())


def test_revoked_tokens_lose_their_stream() -> None:
    async def main() -> None:
        hub, _ = make_hub()
        keep = DashboardClient(hub, cast(ServerConnection, FakeWs([])), 4,
                               DashboardIdentity(VIEWER, "wall", b"\x01" * 32))
        gone = DashboardClient(hub, cast(ServerConnection, FakeWs([])), 4,
                               DashboardIdentity(OPERATOR, "bob", b"\x02" * 32))
        file_token = DashboardClient(hub, cast(ServerConnection, FakeWs([])), 4,
                                     DashboardIdentity(OPERATOR, "dashboard.token"))
        hub.clients.update({keep, gone, file_token})
        assert hub.close_revoked({("wall", VIEWER, b"\x01" * 32)}) == 1
        await asyncio.sleep(0)
        assert cast(FakeWs, gone.ws).closed == (4001, "dashboard token revoked")
        assert hub.clients == {keep, file_token}

    asyncio.run(main())
