"""The console's alert-rule actions (operators, over /v1/dashboard; docs/protocol.md section 9).

``rule_list``, ``rule_put`` and ``rule_delete`` run the admin API's alert requests
(``alert_rules``, ``alert_rule_put``, ``alert_rule_delete``: gateway/alerts/admin.py) as the
dashboard's token (``dashboard:<name>``): the rule is stored (it survives a restart), put in force
at once, and with several workers the request goes to the alert owner (gateway/alerts/relay.py).
Refusals are the admin API's codes (``bad_rule``, ``no_such_rule``, ``bad_request``,
``storage_unavailable``). ``rule_preview`` replays a draft rule over a device's stored readings
with the engine's own code (gateway/alerts/preview.py); it stores nothing.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.alerts import preview
from gateway.alerts.rules import RULE_TYPES, rule_keys
from gateway.alerts.rules.base import COMMON, FOR, SEVERITIES
from gateway.dashboard.actions import ActionError, ExtraAction
from gateway.logs import log
from gateway.storage.base import Storage
from protocol import wire

AdminRequest = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
DEFAULT_PREVIEW_MS = 7 * preview.DAY_MS


def _device(msg: dict[str, Any]) -> str:
    device = msg.get("device")
    if not isinstance(device, str) or not wire.valid_device_id(device):
        raise ActionError(wire.E_BAD_FRAME, "device: a device id (1-64 of A-Z a-z 0-9 _ - . :)")
    return device


def _time(msg: dict[str, Any], key: str, default: int) -> int:
    value = msg.get(key, default)
    if type(value) is not int or not 0 <= value < 2**62:
        raise ActionError(wire.E_BAD_FRAME, f"{key}: a time in ms since the Unix epoch")
    return value


class RuleActions:
    def __init__(self, alert_requests: Callable[[str], dict[str, AdminRequest]], storage: Storage,
                 hour_of: Callable[[int], int] | None = None, clock: Callable[[], float] = time.time) -> None:
        """``alert_requests(who)``: the admin API's alert request table acting as ``who`` (the
        engine's, or the relay's that asks the alert owner)."""
        self.alert_requests = alert_requests
        self.storage = storage
        self.hour_of = hour_of
        self.clock = clock

    def table(self) -> dict[str, ExtraAction]:
        return {"rule_list": self.list, "rule_types": self.types, "rule_put": self.put, "rule_delete": self.delete,
                "rule_preview": self.preview}

    async def types(self, msg: dict[str, Any], actor: str) -> dict[str, Any]:
        """The rule table (gateway/alerts/rules): each type's parameters, so the page's form holds no copy."""
        common = {p.name for p in COMMON}
        types = {}
        for kind, cls in RULE_TYPES.items():
            params = {p.name: p for p in [*cls.PARAMS, FOR]}
            types[kind] = {"metric": cls.METRIC, "severity": cls.DEFAULT_SEVERITY, "params": [
                {"name": name, "kind": params[name].kind, "default": params[name].default, "doc": params[name].doc,
                 "required": params[name].required, "choices": list(params[name].choices)}
                for name in rule_keys(cls) if name not in common]}
        return {"types": types, "severities": list(SEVERITIES)}

    async def list(self, msg: dict[str, Any], actor: str) -> dict[str, Any]:
        return await self.alert_requests(actor)["alert_rules"]({})

    async def put(self, msg: dict[str, Any], actor: str) -> dict[str, Any]:
        rule = msg.get("rule")
        if not isinstance(rule, dict):
            raise ActionError(wire.E_BAD_FRAME, "rule: an object with the rule's settings (id, type, metric, ...)")
        reply = await self.alert_requests(actor)["alert_rule_put"]({"rule": rule})
        log("dashboard_rule_change", actor=actor, rule=str(reply["rule"]["id"]), change="put")
        return reply

    async def delete(self, msg: dict[str, Any], actor: str) -> dict[str, Any]:
        rule_id = msg.get("rule_id")
        if not isinstance(rule_id, str) or not rule_id:
            raise ActionError(wire.E_BAD_FRAME, "rule_id: the id of a rule in force")
        reply = await self.alert_requests(actor)["alert_rule_delete"]({"rule_id": rule_id})
        log("dashboard_rule_change", actor=actor, rule=rule_id[:64], change="delete")
        return reply

    async def preview(self, msg: dict[str, Any], actor: str) -> dict[str, Any]:
        """``{"rule": {...}, "device": id, "from": ms, "to": ms}`` (default: the last 7 days)."""
        device = _device(msg)
        now = int(self.clock() * 1000)
        end = min(_time(msg, "to", now), now)
        start = _time(msg, "from", end - DEFAULT_PREVIEW_MS)
        if start >= end:
            raise ActionError(wire.E_BAD_VALUE, "from: before to (and before now)")
        return {"preview": await preview.preview(self.storage, msg.get("rule"), device, start, end, self.hour_of)}
