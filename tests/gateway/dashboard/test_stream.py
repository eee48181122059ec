"""The dashboard hub without a network: coalesced updates, bounded queues, resync, its clock."""

from __future__ import annotations

import json
from typing import Any, cast

from websockets.asyncio.server import ServerConnection

from gateway.dashboard.stream import DashboardClient
from gateway.dashboard.view import Hub


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_hub(queue_limit: int = 4) -> tuple[Hub, FakeClock]:
    clock = FakeClock()
    return Hub(250.0, queue_limit, json.dumps, clock), clock


def client(hub: Hub) -> DashboardClient:
    c = DashboardClient(hub, cast(ServerConnection, None), hub.queue_limit)
    c.needs_snapshot = False  # as after its first snapshot
    hub.clients.add(c)
    return c


def frames(c: DashboardClient) -> list[dict[str, Any]]:
    return [json.loads(f) for f in c.queue]


def test_changes_of_one_interval_become_one_update_for_every_client() -> None:
    hub, clock = make_hub()
    a, b = client(hub), client(hub)
    hub.online("S-1")
    clock.now += 1.0
    hub.reading("S-1", {"temperature": 21.5}, 1_700_000_000_500)
    hub.reading("S-2", {"humidity": 40.0}, 1_700_000_000_600)
    hub.status("S-1", {"rssi": -60})
    hub.flush()
    assert len(a.queue) == 1 and list(a.queue) == list(b.queue)
    update = frames(a)[0]
    assert update["t"] == "update" and update["time"] == 1_700_000_001_000
    assert set(update["devices"]) == {"S-1", "S-2"}
    s1 = update["devices"]["S-1"]
    assert s1["online"] is True and s1["last_seen"] == 1_700_000_001_000
    assert s1["latest"] == {"temperature": [21.5, 1_700_000_000_500]} and s1["status"] == {"rssi": -60}
    assert update["events"] == [{"kind": "online", "device": "S-1", "at": 1_700_000_000_000}]
    hub.flush()  # nothing changed: nothing sent
    assert len(a.queue) == 1 and hub.updates_sent == 1


def test_no_client_no_frame_but_changes_are_consumed() -> None:
    hub, _ = make_hub()
    hub.reading("S-1", {"temperature": 20.0}, 1)
    hub.flush()
    assert hub.updates_sent == 0
    c = client(hub)
    hub.flush()
    assert not c.queue


def test_a_full_queue_is_dropped_counted_and_resynced_with_a_snapshot() -> None:
    hub, clock = make_hub(queue_limit=2)
    slow = client(hub)
    for i in range(3):
        hub.reading("S-1", {"temperature": 20.0 + i}, i)
        hub.flush()
    assert slow.needs_snapshot and not slow.queue and hub.resyncs == 1
    hub.reading("S-1", {"temperature": 30.0}, 9)
    hub.flush()
    assert not slow.queue  # the coming snapshot includes it
    clock.now = 1_700_000_123.0
    snap = json.loads(hub.snapshot_frame())
    assert snap["t"] == "snapshot" and snap["time"] == 1_700_000_123_000
    assert snap["devices"][0]["latest"] == {"temperature": [30.0, 9]}


def test_offline_and_alert_events_carry_the_clock() -> None:
    hub, clock = make_hub()
    c = client(hub)
    hub.online("S-1")
    clock.now += 5
    hub.offline("S-1")
    alert = {"id": 7, "device": "S-1", "metric": "temperature", "rule": "temperature > 30", "raised": 123,
             "value": 31.0}
    hub.alert_raised(alert, at_ms=1_700_000_005_500)
    hub.flush()
    update = frames(c)[0]
    assert [(e["kind"], e["at"]) for e in update["events"]] == [
        ("online", 1_700_000_000_000), ("offline", 1_700_000_005_000), ("alert_raised", 1_700_000_005_500)]
    assert update["alerts"] == [alert] and update["devices"]["S-1"]["online"] is False
    hub.alert_cleared(dict(alert, cleared=456))
    hub.flush()
    update = frames(c)[1]
    assert update["alerts"] == [] and update["events"][0]["at"] == 456


def test_a_status_that_cannot_be_encoded_is_dropped_not_the_stream() -> None:
    import orjson

    def dumps(msg: object) -> str:
        return orjson.dumps(msg).decode()  # the gateway's encoder: refuses more than 255 levels

    hub = Hub(250.0, 8, dumps, FakeClock())
    c = client(hub)
    deep: dict[str, object] = {}
    node = deep
    for _ in range(300):
        node["a"] = {}
        node = node["a"]  # type: ignore[assignment]
    hub.status("S-bad", {"deep": deep})  # past the core's bounds (defence in depth)
    hub.reading("S-good", {"temperature": 21.0}, 5)
    hub.flush()
    update = json.loads(c.queue[0])
    assert update["devices"]["S-good"]["latest"] == {"temperature": [21.0, 5]}
    assert update["devices"]["S-bad"]["status"] == {}
    assert json.loads(hub.snapshot_frame())["t"] == "snapshot"


def test_latest_values_per_device_are_bounded() -> None:
    from gateway.dashboard.view import MAX_LATEST_METRICS

    hub, _ = make_hub()
    for i in range(MAX_LATEST_METRICS + 20):
        hub.reading("S-1", {f"m{i}": float(i)}, i)
    latest = hub.devices["S-1"].latest
    assert len(latest) == MAX_LATEST_METRICS and "m0" in latest and f"m{MAX_LATEST_METRICS}" not in latest
    hub.reading("S-1", {"m0": 99.0}, 1000)  # known names keep updating
    assert latest["m0"] == [99.0, 1000]


def test_device_to_dashboard_latency_is_observed_per_reading_at_the_frame_that_carries_it() -> None:
    from gateway.metrics import LATENCY_BOUNDS, Histogram
    from gateway.storage.base import ReadingRow

    latency = Histogram(LATENCY_BOUNDS)
    clock = FakeClock()
    hub = Hub(250.0, 4, json.dumps, clock, latency)
    now_ms = int(clock.now * 1000)

    def row(seq: int, received_ms: int) -> ReadingRow:
        return ReadingRow("S-1", seq, received_ms, received_ms, {"temperature": 20.0 + seq})

    hub.committed([row(1, now_ms - 5000)])  # no dashboard connected: not observed
    hub.flush()
    assert latency.count == 0
    c = client(hub)
    hub.committed([row(2, now_ms - 300), row(3, now_ms - 100)])
    clock.now += 0.2  # the flush comes 200 ms later
    hub.flush()
    assert [f["t"] for f in frames(c)] == ["update"]
    assert latency.count == 2 and round(latency.sum, 3) == 0.8  # 0.5 s and 0.3 s
    lines = dict(line.rsplit(" ", 1) for line in latency.lines("x"))
    assert (lines['x_bucket{le="0.25"}'], lines['x_bucket{le="0.5"}']) == ("0", "2")
    hub.flush()  # nothing new: nothing observed twice
    assert latency.count == 2
    hub.clients.clear()  # no dashboard here, but peers get this instance's changes (workers, a bus)
    published: list[dict[str, Any]] = []
    hub.share(published.append)
    frame_ms = int(clock.now * 1000) - 50
    hub.committed([row(4, frame_ms), row(5, frame_ms)])  # two readings of one frame: one receive time
    hub.flush()
    assert len(published) == 1 and latency.count == 4 and round(latency.sum, 3) == 0.9
