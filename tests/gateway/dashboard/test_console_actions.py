"""The console's actions over /v1/dashboard (gateway/dashboard/devices_actions.py, rules_actions.py):
they run the admin API's requests as the dashboard's token, and every refusal has a stable code
and changes nothing (the registry, the rules in force, the stored rules)."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any, cast

import pytest

from gateway.admin import AdminApi
from gateway.alerts.admin import AlertAdmin
from gateway.alerts.engine import AlertEngine
from gateway.dashboard.actions import ActionHandlers, DashboardActions, console_action
from gateway.dashboard.devices_actions import DeviceActions
from gateway.dashboard.roles import ANONYMOUS, OPERATOR, VIEWER, DashboardIdentity
from gateway.dashboard.rules_actions import RuleActions
from gateway.registry import Registry
from gateway.storage.base import ReadingRow
from gateway.storage.sqlite import SQLiteStorage
from tests.helpers.storage import with_sqlite

KEY = b"k" * 32
ALICE = DashboardIdentity(OPERATOR, "alice")
RULES = [{"id": "hot", "type": "above", "metric": "temperature", "above": 30.0, "hysteresis": 0.0,
          "for_s": 0.0, "severity": "major", "devices": []}]


class Console:
    """The dashboard's actions with the console's tables on a real registry and alert engine."""

    def __init__(self, storage: SQLiteStorage) -> None:
        self.storage = storage
        self.registry = Registry(storage, KEY)
        self.changes: list[tuple[str, str]] = []
        none = cast(Any, None)
        self.admin = AdminApi(self.registry, storage, none, none, none, none, online=lambda device_id: False,
                              registry_changed=lambda device_id, change: self.changes.append((device_id, change)))
        self.engine = AlertEngine(storage, RULES, clock=lambda: 1_700_000_000.0)
        self.syncs = 0

        async def changed() -> None:
            self.syncs += 1

        async def never(*args: Any) -> dict[str, Any]:
            raise AssertionError("not an ack, clear or command")

        table = {**DeviceActions(self.admin.requests, storage.get_device, changed).table(),
                 **RuleActions(AlertAdmin(self.engine).requests_as, storage, clock=lambda: 1_700_000_000.0).table()}
        self.actions = DashboardActions(ActionHandlers(never, never, never), None,
                                       more={name: console_action(action) for name, action in table.items()})

    async def send(self, identity: DashboardIdentity = ALICE, **msg: Any) -> dict[str, Any]:
        return await self.actions.handle(identity, json.dumps({"id": "r", **msg}))

    async def state(self) -> Any:
        devices = [(r.device_id, r.enabled, r.label, r.token_digest) for r in await self.storage.list_devices()]
        stored = [(r.rule_id, r.spec) for r in await self.storage.alert_rules()]
        return devices, stored, self.engine.rules()


def with_console(tmp_path: Path, body: Any) -> None:
    async def run(storage: SQLiteStorage) -> None:
        console = Console(storage)
        await console.engine.start()
        await body(console)

    with_sqlite(tmp_path / "c.db", run)


def test_device_actions_run_the_admin_requests_as_the_token(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def body(c: Console) -> None:
        added = await c.send(t="device_add", device="GH-1", label="greenhouse")
        assert added["t"] == "ok" and added["device"] == "GH-1" and added["token"].startswith("ewt_")
        assert (await c.registry.get("GH-1")).label == "greenhouse"
        assert (await c.send(t="device_label", device="GH-1", label="north bed"))["label"] == "north bed"
        assert (await c.registry.get("GH-1")).label == "north bed"
        assert (await c.send(t="device_disable", device="GH-1"))["enabled"] is False
        assert not (await c.registry.get("GH-1")).enabled
        assert (await c.send(t="device_enable", device="GH-1"))["enabled"] is True
        before = (await c.registry.get("GH-1")).token_digest
        rotated = await c.send(t="device_rotate", device="GH-1")
        assert rotated["token"] != added["token"] and (await c.registry.get("GH-1")).token_digest != before
        assert (await c.send(t="device_delete", device="GH-1"))["deleted"] is True
        assert await c.storage.get_device("GH-1") is None
        assert c.changes == [("GH-1", "label"), ("GH-1", "disable"), ("GH-1", "enable"), ("GH-1", "rotate"),
                             ("GH-1", "remove")]
        assert c.syncs == 6  # the dashboards' list refreshed after each change

    caplog.set_level(logging.INFO, logger="edgewire")
    with_console(tmp_path, body)
    logged = [f"{r.getMessage()} {getattr(r, 'fields', {})}" for r in caplog.records
              if r.getMessage() == "dashboard_device_change"]
    assert len(logged) == 6 and all("dashboard:alice" in line and "ewt_" not in line for line in logged), logged


@pytest.mark.parametrize(("msg", "code"), [
    ({"t": "device_add"}, "bad_frame"),
    ({"t": "device_add", "device": "has space"}, "bad_frame"),
    ({"t": "device_add", "device": "N-1", "label": 5}, "bad_frame"),
    ({"t": "device_add", "device": "N-1", "label": "x" * 257}, "bad_value"),
    ({"t": "device_add", "device": "N-1", "label": "two\nlines"}, "bad_value"),
    ({"t": "device_add", "device": "OLD-1"}, "already_registered"),
    ({"t": "device_label", "device": "OLD-1"}, "bad_frame"),
    ({"t": "device_label", "device": "NOPE", "label": "x"}, "not_found"),
    ({"t": "device_disable", "device": "NOPE"}, "not_found"),
    ({"t": "device_enable", "device": "NOPE"}, "not_found"),
    ({"t": "device_rotate", "device": "NOPE"}, "not_found"),
    ({"t": "device_delete", "device": "NOPE"}, "not_found"),
    ({"t": "device_delete", "device": ["OLD-1"]}, "bad_frame"),
    ({"t": "rule_put"}, "bad_frame"),
    ({"t": "rule_put", "rule": {"type": "above", "metric": "temperature"}}, "bad_rule"),
    ({"t": "rule_put", "rule": {"type": "sideways", "metric": "temperature"}}, "bad_rule"),
    ({"t": "rule_put", "rule": {"type": "above", "metric": "temperature", "above": "hot"}}, "bad_rule"),
    ({"t": "rule_put", "rule": {"type": "above", "metric": "temperature", "above": 1, "colour": "red"}}, "bad_rule"),
    ({"t": "rule_delete"}, "bad_frame"),
    ({"t": "rule_delete", "rule_id": "nope"}, "no_such_rule"),
    ({"t": "rule_preview", "device": "OLD-1", "rule": {"type": "above"}}, "bad_rule"),
    ({"t": "rule_preview", "rule": RULES[0]}, "bad_frame"),
    ({"t": "rule_preview", "device": "OLD-1", "rule": RULES[0], "from": "yesterday"}, "bad_frame"),
    ({"t": "rule_preview", "device": "OLD-1", "rule": RULES[0], "from": 1_700_000_000_000}, "bad_value"),
    ({"t": "rule_preview", "device": "OLD-1", "rule": RULES[0], "from": 0}, "bad_request"),
])
def test_refusals_have_stable_codes_and_change_nothing(tmp_path: Path, msg: dict[str, Any], code: str) -> None:
    async def body(c: Console) -> None:
        await c.registry.add("OLD-1", label="kept")
        before = await c.state()
        reply = await c.send(**msg)
        assert reply["t"] == "error" and reply["code"] == code and reply["id"] == "r", reply
        assert reply["msg"]
        assert await c.state() == before
        assert c.changes == [] and c.syncs == 0

    with_console(tmp_path, body)


@pytest.mark.parametrize("kind", ["device_add", "device_label", "device_disable", "device_enable", "device_rotate",
                                  "device_delete", "rule_list", "rule_types", "rule_put", "rule_delete",
                                  "rule_preview"])
def test_viewers_get_none_of_the_console(tmp_path: Path, kind: str) -> None:
    async def body(c: Console) -> None:
        await c.registry.add("OLD-1")
        before = await c.state()
        for identity in (ANONYMOUS, DashboardIdentity(VIEWER, "wall-screen")):
            reply = await c.send(identity, t=kind, device="OLD-1", label="x", rule_id="hot", rule=RULES[0])
            assert reply["code"] == "forbidden", reply
        assert await c.state() == before

    with_console(tmp_path, body)


def test_rules_from_the_console_are_in_force_at_once_and_stored(tmp_path: Path) -> None:
    async def body(c: Console) -> None:
        put = await c.send(t="rule_put", rule={"id": "cold", "metric": "temperature", "below": 5})
        assert put["rule"]["updated_by"] == "dashboard:alice" and put["rule"]["source"] == "admin"
        listed = (await c.send(t="rule_list"))["rules"]
        assert [r["id"] for r in listed] == ["cold", "hot"]
        c.engine.reading("S-1", {"temperature": 2.0}, 1_700_000_000_000, 1_700_000_000_000)
        assert "cold" in c.engine.by_device["S-1"]  # judged by the new rule at once
        edited = await c.send(t="rule_put", rule={**listed[0], "below": 1.0})
        assert edited["rule"]["below"] == 1.0
        assert [r.spec["below"] for r in await c.storage.alert_rules() if r.rule_id == "cold" and r.spec] == [1.0]
        assert (await c.send(t="rule_delete", rule_id="cold"))["rule"] == "cold"
        assert [r["id"] for r in (await c.send(t="rule_list"))["rules"]] == ["hot"]
        types = (await c.send(t="rule_types"))["types"]
        assert set(types) >= {"above", "below", "rate", "no_data", "stuck", "anomaly", "predictive", "health"}
        assert {"name": "above", "kind": "number", "default": None, "doc": "the threshold", "required": True,
                "choices": []} in types["above"]["params"]

    with_console(tmp_path, body)


def test_preview_stores_nothing_and_counts_alerts(tmp_path: Path) -> None:
    async def body(c: Console) -> None:
        t0 = 1_700_000_000_000 - 3_600_000
        rows = [ReadingRow("S-1", i + 1, t0 + i * 60_000, t0 + i * 60_000,
                           {"temperature": 35.0 if 10 <= i < 20 else 20.0}) for i in range(60)]
        await c.storage.store(rows)
        reply = await c.send(t="rule_preview", device="S-1", rule={"metric": "temperature", "above": 30})
        preview = reply["preview"]
        assert (preview["alerts"], preview["readings"]) == (1, 60)
        assert preview["episodes"] == [{"from": t0 + 10 * 60_000, "to": t0 + 20 * 60_000}]
        assert preview["summary"].startswith("1 alert in the last 7 days")
        assert await c.storage.active_alerts() == [] and c.engine.open_alerts() == []

    with_console(tmp_path, body)


def test_the_console_tables_do_not_shadow_the_base_actions() -> None:
    async def never(*args: Any) -> dict[str, Any]:
        return {}

    actions = DashboardActions(ActionHandlers(never, never, never), None)
    reply = asyncio.run(actions.handle(ALICE, json.dumps({"t": "device_add", "id": 1, "device": "X"})))
    assert reply["code"] == "unknown_type"  # without the console's tables, the stream has none of its actions
