"""The alert engine without a network: hysteresis, stored rows, dashboard events on its clock."""

from __future__ import annotations

import asyncio
import json

from gateway.alerts import AlertEngine
from gateway.config import AlertRule
from gateway.hub import Hub
from gateway.storage.base import AlertRow


class AlertStore:
    """The alert part of the Storage contract, in memory (the engine uses nothing else)."""

    def __init__(self, rows: list[AlertRow] | None = None) -> None:
        self.rows: dict[int, AlertRow] = {r.alert_id: r for r in rows or []}

    async def raise_alert(self, device_id: str, metric: str, rule: str, at_ms: int, value: float) -> int:
        await asyncio.sleep(0)  # a real backend answers later
        alert_id = len(self.rows) + 1
        self.rows[alert_id] = AlertRow(alert_id, device_id, metric, rule, at_ms, value)
        return alert_id

    async def clear_alert(self, alert_id: int, at_ms: int, value: float) -> None:
        row = self.rows[alert_id]
        row.cleared_ms, row.clear_value = at_ms, value

    async def active_alerts(self) -> list[AlertRow]:
        return [r for r in self.rows.values() if r.cleared_ms is None]


class FakeClock:
    now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def engine(store: AlertStore, rules: list[AlertRule] | None = None) -> tuple[AlertEngine, Hub, FakeClock]:
    clock = FakeClock()
    hub = Hub(250.0, 8, json.dumps, clock)
    rules = rules or [AlertRule("temperature", above=30.0, hysteresis=2.0)]
    return AlertEngine(rules, store, hub, clock), hub, clock  # type: ignore[arg-type]


def events(hub: Hub) -> list[tuple[str, int]]:
    return [(e["kind"], e["at"]) for e in hub._events]


def test_raise_hold_within_hysteresis_clear_raise_again() -> None:
    async def run() -> tuple[AlertStore, Hub, list[tuple[str, int]]]:
        store = AlertStore()
        alerts, hub, clock = engine(store)
        for i, value in enumerate([29.0, 31.0, 29.5, 30.5, 29.0, 27.5, 31.0]):
            clock.now += 1
            alerts.check("S-1", {"temperature": value, "humidity": 50.0}, 1000 + i)
            await alerts.drain()
        return store, hub, events(hub)

    store, hub, seen = asyncio.run(run())
    rows = sorted(store.rows.values(), key=lambda r: r.alert_id)
    assert [(r.raised_ms, r.value, r.cleared_ms, r.clear_value) for r in rows] == [
        (1001, 31.0, 1005, 27.5), (1006, 31.0, None, None)]
    # dashboard events are stamped with the engine's clock, the rows with the readings' time
    assert seen == [("alert_raised", 1_700_000_002_000), ("alert_cleared", 1_700_000_006_000),
                    ("alert_raised", 1_700_000_007_000)]
    assert [a["rule"] for a in hub.alerts.values()] == ["temperature > 30"]


def test_clear_waits_for_the_raise_it_clears() -> None:
    async def run() -> AlertStore:
        store = AlertStore()
        alerts, _, _ = engine(store)
        alerts.check("S-1", {"temperature": 35.0}, 1)  # raise still being stored ...
        alerts.check("S-1", {"temperature": 20.0}, 2)  # ... when the clear comes
        await alerts.drain()
        return store

    store = asyncio.run(run())
    assert [(r.raised_ms, r.cleared_ms) for r in store.rows.values()] == [(1, 2)]


def test_restore_brings_back_active_alerts_per_device_and_rule() -> None:
    async def run() -> tuple[AlertStore, Hub]:
        store = AlertStore([AlertRow(1, "S-1", "temperature", "temperature > 30", 10, 33.0),
                            AlertRow(2, "S-2", "temperature", "temperature > 30", 11, 31.0, 12, 25.0)])
        alerts, hub, _ = engine(store)
        await alerts.restore()
        alerts.check("S-1", {"temperature": 34.0}, 20)  # still active: not raised twice
        alerts.check("S-1", {"temperature": 10.0}, 21)
        await alerts.drain()
        return store, hub

    store, hub = asyncio.run(run())
    assert len(store.rows) == 2 and store.rows[1].cleared_ms == 21
    assert hub.alerts == {}


def test_one_rule_per_metric_and_device_independent() -> None:
    async def run() -> AlertStore:
        store = AlertStore()
        alerts, _, _ = engine(store, [AlertRule("temperature", 30.0, 1.0), AlertRule("humidity", 90.0, 5.0)])
        alerts.check("S-1", {"temperature": 31.0, "humidity": 95.0}, 1)
        alerts.check("S-2", {"temperature": 25.0, "humidity": 91.0}, 2)
        await alerts.drain()
        return store

    store = asyncio.run(run())
    assert sorted((r.device_id, r.metric) for r in store.rows.values()) == [
        ("S-1", "humidity"), ("S-1", "temperature"), ("S-2", "humidity")]
