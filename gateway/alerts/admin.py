"""The admin API's alert requests (/v1/admin, docs/protocol.md section 10).

A table of request name -> handler(msg, who), merged into the admin API's own table. ``who``
is the caller's identity from its credential (the admin token: "admin"), never from the
request. Refusals are AlertError with a stable code: bad_request, bad_rule, no_such_alert,
alert_cleared, no_such_rule, storage_unavailable.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from gateway.alerts.engine import AlertEngine
from gateway.alerts.model import ALERT_STATES
from gateway.errors import AlertError
from protocol import wire

Request = dict[str, Any]
Handler = Callable[[Request, str], Awaitable[dict[str, Any]]]
MAX_LIST = 1000
MAX_NOTE = 256
OPEN = "open"
READ_ONLY = ("source", "updated_by", "updated")  # what alert_rules adds to a rule's settings


def _int(msg: Request, key: str, default: int | None, low: int, high: int) -> int | None:
    value = msg.get(key, default)
    if value is None:
        return None
    if type(value) is not int or not low <= value <= high:
        raise AlertError("bad_request", f"{key}: an integer from {low} to {high}")
    return value


def _device(msg: Request) -> str | None:
    device_id = msg.get("device_id")
    if device_id is not None and not wire.valid_device_id(device_id):
        raise AlertError("bad_request", "device_id: a device id (1-64 letters, digits, _ - . :)")
    return device_id


def _note(msg: Request) -> str:
    note = msg.get("note", "")
    if not isinstance(note, str) or len(note) > MAX_NOTE:
        raise AlertError("bad_request", f"note: a text of at most {MAX_NOTE} characters")
    return note


class AlertAdmin:
    def __init__(self, engine: AlertEngine) -> None:
        self.engine = engine
        self.requests: dict[str, Handler] = {
            "alerts": self.alerts,
            "alert": self.alert,
            "alert_ack": self.ack,
            "alert_clear": self.clear,
            "alert_rules": self.rules,
            "alert_rule_put": self.rule_put,
            "alert_rule_delete": self.rule_delete,
        }

    def requests_as(self, who: str) -> dict[str, Callable[[Request], Awaitable[dict[str, Any]]]]:
        """The request table with ``who`` bound: for a caller whose every request has one identity
        (the admin token's holder)."""
        def bind(handler: Handler) -> Callable[[Request], Awaitable[dict[str, Any]]]:
            return lambda msg: handler(msg, who)

        return {name: bind(handler) for name, handler in self.requests.items()}

    async def alerts(self, msg: Request, who: str) -> dict[str, Any]:
        """Alerts newest first: ``state`` "open" (from memory: active, acknowledged, suspended), one of
        the states, or none (every alert, from storage); ``device_id``, ``limit``, ``before`` (an id)."""
        device_id = _device(msg)
        state = msg.get("state")
        if state is not None and state != OPEN and state not in ALERT_STATES:
            raise AlertError("bad_request", f"state: {OPEN} or one of {', '.join(ALERT_STATES)}")
        limit = _int(msg, "limit", 100, 1, MAX_LIST) or 100
        before = _int(msg, "before", None, 1, 2**62)
        if state == OPEN:
            found = [a for a in self.engine.open_alerts(device_id) if before is None or a["id"] < before]
            return {"alerts": found[::-1][:limit]}
        return {"alerts": await self.engine.alerts(device_id, state, limit, before)}

    async def alert(self, msg: Request, who: str) -> dict[str, Any]:
        history = msg.get("history", True)
        if not isinstance(history, bool):
            raise AlertError("bad_request", "history: true or false")
        return {"alert": await self.engine.alert(msg.get("alert_id"), history)}

    async def ack(self, msg: Request, who: str) -> dict[str, Any]:
        return {"alert": await self.engine.ack(msg.get("alert_id"), who, _note(msg))}

    async def clear(self, msg: Request, who: str) -> dict[str, Any]:
        return {"alert": await self.engine.clear(msg.get("alert_id"), who, _note(msg))}

    async def rules(self, msg: Request, who: str) -> dict[str, Any]:
        return {"rules": self.engine.rules()}

    async def rule_put(self, msg: Request, who: str) -> dict[str, Any]:
        rule = msg.get("rule")
        if not isinstance(rule, dict):
            raise AlertError("bad_request", "rule: an object with the rule's settings (id, type, metric, ...)")
        rule = {k: v for k, v in rule.items() if k not in READ_ONLY}  # as alert_rules listed it: fine
        return {"rule": await self.engine.put_rule(rule, who)}

    async def rule_delete(self, msg: Request, who: str) -> dict[str, Any]:
        return await self.engine.delete_rule(msg.get("rule_id"), who)
