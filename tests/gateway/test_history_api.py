"""GET /v1/history, /v1/history.csv, /v1/devices: parameters, shapes, errors (HistoryApi over real SQLite)."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.dashboard.sync import restore
from gateway.dashboard.view import Hub
from gateway.history_api import HistoryApi, Reply
from gateway.storage.base import DeviceRecord, ReadingRow
from gateway.storage.sqlite import SQLiteStorage

T0 = 1_764_080_000_000
NOW = T0 + 3_600_000


async def _setup(path: Path) -> SQLiteStorage:
    s = SQLiteStorage(path)
    await s.open()
    await s.put_device(DeviceRecord("SENSOR-01", True, b"\x01" * 32, [], "hall", 1, 1))
    await s.put_device(DeviceRecord("NEVER-02", False, None, [], "", 2, 2))
    await s.store([ReadingRow("SENSOR-01", i, T0 + i * 1000, T0 + i * 1000 + 7,
                              {"temperature": 20 + i % 10 / 10, "humidity": 40.0 + i % 3}) for i in range(1, 1801)])
    return s


def call(tmp_path: Path, body: Callable[[HistoryApi, SQLiteStorage], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        storage = await _setup(tmp_path / "e.db")
        api = HistoryApi(storage, 30, lambda device_id: device_id == "SENSOR-01", clock=lambda: NOW / 1000)
        try:
            return await body(api, storage)
        finally:
            await storage.close()

    return asyncio.run(main())


def get(tmp_path: Path, target: str) -> Reply:
    async def body(api: HistoryApi, _: SQLiteStorage) -> Reply:
        return await api.handle(target)

    result: Reply = call(tmp_path, body)
    return result


def test_history_json_shape_and_buckets(tmp_path: Path) -> None:
    reply = get(tmp_path, f"/v1/history?device=SENSOR-01&metric=temperature&from={T0}&to={T0 + 1_800_001}&points=60")
    assert reply.status == 200 and reply.content_type == "application/json"
    body = reply.json()
    assert set(body) == {"device", "metric", "unit", "from", "to", "step_ms", "source", "points"}
    assert (body["device"], body["metric"], body["unit"], body["source"]) == ("SENSOR-01", "temperature", "°C", "raw")
    assert (body["from"], body["to"], body["step_ms"]) == (T0, T0 + 1_800_001, 30_001)
    assert len(body["points"]) == 60
    assert sum(p[4] for p in body["points"]) == 1800
    t, low, avg, high, count = body["points"][0]
    assert (t, low, high, count) == (T0, 20.0, 20.9, 30)  # seqs 1..30
    assert avg == pytest.approx(sum(20 + i % 10 / 10 for i in range(1, 31)) / 30)


def test_history_defaults_and_long_ranges(tmp_path: Path) -> None:
    body = get(tmp_path, "/v1/history?device=SENSOR-01&metric=humidity").json()
    # to = now, from = a day before, 500 points: 172,800 ms steps, raw readings
    assert (body["to"], body["from"], body["step_ms"], body["source"]) == (NOW, NOW - 86_400_000, 172_800, "raw")
    assert sum(p[4] for p in body["points"]) == 1800
    week = get(tmp_path, f"/v1/history?device=SENSOR-01&metric=humidity&from={NOW - 7 * 86_400_000}&to={NOW}").json()
    assert week["source"] == "5m" and week["step_ms"] % 300_000 == 0 and len(week["points"]) <= 500
    assert sum(p[4] for p in week["points"]) == 1800

    async def other_metrics(api: HistoryApi, storage: SQLiteStorage) -> list[Any]:
        await storage.store([ReadingRow("SENSOR-01", 1801, NOW - 1000, NOW - 990, {"co2": 612.0, "wind_speed": 3.5})])
        return [(await api.handle(f"/v1/history?device=SENSOR-01&metric={metric}&from={T0}&to={NOW}")).json()
                for metric in ("co2", "wind_speed")]

    co2, custom = call(tmp_path, other_metrics)
    assert (co2["unit"], co2["points"][0][1]) == ("ppm", 612.0)
    assert custom["unit"] is None  # a metric the table does not know


def test_a_metric_the_device_never_sent_is_404_listing_its_metrics(tmp_path: Path) -> None:
    """Not 200 with no points: a misspelt metric says so (issue 20.7)."""
    for path in ("/v1/history", "/v1/history.csv"):
        reply = get(tmp_path, f"{path}?device=SENSOR-01&metric=temprature")
        assert reply.status == 404 and reply.content_type == "application/json"
        assert reply.json() == {"code": "unknown_metric", "param": "metric", "metrics": ["humidity", "temperature"],
                                "message": "device SENSOR-01 has no metric 'temprature'; its metrics: humidity, "
                                           "temperature"}
    never = get(tmp_path, "/v1/history?device=NEVER-02&metric=temperature").json()
    assert (never["code"], never["metrics"]) == ("unknown_metric", [])
    assert never["message"].endswith("it has stored no readings yet")


def test_history_csv_is_the_same_buckets(tmp_path: Path) -> None:
    query = f"device=SENSOR-01&metric=temperature&from={T0}&to={T0 + 1_800_001}&points=60"
    as_json = get(tmp_path, "/v1/history?" + query).json()
    reply = get(tmp_path, "/v1/history.csv?" + query)
    assert reply.status == 200 and reply.content_type == "text/csv; charset=utf-8"
    assert reply.headers["Content-Disposition"] == 'attachment; filename="SENSOR-01-temperature.csv"'
    rows = list(csv.reader(io.StringIO(reply.body.decode())))
    assert rows[0] == ["t", "time", "min", "avg", "max", "count"]
    assert rows[1][1] == "2025-11-25T14:13:20.000Z"
    assert [[int(r[0]), float(r[2]), float(r[3]), float(r[4]), int(r[5])] for r in rows[1:]] == as_json["points"]


@pytest.mark.parametrize(("query", "param"), [
    ("metric=temperature", "device"),
    ("device=&metric=temperature", "device"),
    ("device=bad%20id&metric=temperature", "device"),
    ("device=SENSOR-01", "metric"),
    ("device=SENSOR-01&metric=Temperature", "metric"),
    ("device=SENSOR-01&metric=temperature&from=yesterday", "from"),
    ("device=SENSOR-01&metric=temperature&from=-5", "from"),
    ("device=SENSOR-01&metric=temperature&from=1e3", "from"),
    ("device=SENSOR-01&metric=temperature&to=0", "to"),
    ("device=SENSOR-01&metric=temperature&to=99999999999999999", "to"),
    ("device=SENSOR-01&metric=temperature&from=2000&to=1000", "from"),
    ("device=SENSOR-01&metric=temperature&from=1000&to=1000", "from"),
    ("device=SENSOR-01&metric=temperature&points=0", "points"),
    ("device=SENSOR-01&metric=temperature&points=5001", "points"),
    ("device=SENSOR-01&metric=temperature&points=1_000", "points"),
    ("device=SENSOR-01&metric=temperature&metric=humidity", "metric"),
    ("device=SENSOR-01&metric=temperature&" + "&".join(f"x{i}=1" for i in range(40)), "query"),
])
def test_bad_parameters_get_400_naming_the_parameter(tmp_path: Path, query: str, param: str) -> None:
    for path in ("/v1/history", "/v1/history.csv"):
        reply = get(tmp_path, f"{path}?{query}")
        assert reply.status == 400 and reply.content_type == "application/json"
        body = reply.json()
        assert (body["code"], body["param"]) == ("bad_request", param)
        assert body["message"]


def test_unknown_device_is_404(tmp_path: Path) -> None:
    reply = get(tmp_path, "/v1/history?device=GHOST&metric=temperature")
    assert reply.status == 404
    assert reply.json() == {"code": "not_found", "param": "device", "message": "no device GHOST is registered"}


def test_devices_lists_every_registered_device_from_storage(tmp_path: Path) -> None:
    body = get(tmp_path, "/v1/devices").json()
    assert body["time"] == NOW
    assert body["devices"] == [
        {"id": "NEVER-02", "label": "", "enabled": False, "online": False, "last_seen": None, "last_seq": 0,
         "latest": {}},
        {"id": "SENSOR-01", "label": "hall", "enabled": True, "online": True, "last_seen": T0 + 1_800_007,
         "last_seq": 1800, "latest": {"humidity": [40.0, T0 + 1_800_000], "temperature": [20.0, T0 + 1_800_000]}},
    ]


def test_storage_failure_is_503(tmp_path: Path) -> None:
    async def body(api: HistoryApi, storage: SQLiteStorage) -> list[Reply]:
        await storage.close()
        return [await api.handle("/v1/devices"), await api.handle("/v1/history?device=SENSOR-01&metric=humidity")]

    for reply in call(tmp_path, body):
        assert reply.status == 503 and reply.headers["Retry-After"] == "5"
        assert reply.json()["code"] == "storage_unavailable"


def test_restore_hub_shows_the_fleet_before_it_reconnects(tmp_path: Path) -> None:
    async def body(api: HistoryApi, storage: SQLiteStorage) -> Hub:
        hub = Hub(250, 8, str)
        await restore(hub, storage)
        return hub

    hub = call(tmp_path, body)
    assert sorted(hub.devices) == ["NEVER-02", "SENSOR-01"]
    sensor = hub.devices["SENSOR-01"].as_dict()
    assert (sensor["online"], sensor["last_seen"]) == (False, T0 + 1_800_007)
    assert sensor["latest"]["temperature"] == [20.0, T0 + 1_800_000]
    assert hub.devices["NEVER-02"].as_dict()["latest"] == {}
