"""Operator actions sent by dashboard browsers over /v1/dashboard (docs/protocol.md section 9).

``{"t": "ack"|"clear", "id": ..., "alert": 42}`` and ``{"t": "command", "id": ..., "device": ...,
"name": ..., "args": {...}, "timeout": 10}``, and the console's actions (``extra``: devices,
gateway/dashboard/devices_actions.py; alert rules, gateway/dashboard/rules_actions.py). Every
frame is untrusted input: it is parsed and checked here, then run by the handlers the gateway
injects (the alert engine, the command path).
The answer is ``{"t": "ok", "id", ...}`` or ``{"t": "error", "id", "code", "msg"}`` with a stable
code; a refusal changes nothing, and the stream stays open whatever a browser sends.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.dashboard.roles import DashboardAuth, DashboardIdentity
from gateway.errors import GatewayError, StorageError
from gateway.logs import log
from protocol import wire

MAX_IN_FLIGHT = 8  # actions one dashboard connection may have running at once
MAX_ID_CHARS = 64
MAX_COMMAND_TIMEOUT_S = 60.0
DEFAULT_COMMAND_TIMEOUT_S = 10.0

# Error codes of dashboard replies besides protocol.wire's bad_json, bad_frame, bad_value,
# unknown_type, too_large, auth_failed and storage_unavailable.
E_FORBIDDEN = "forbidden"
E_NOT_FOUND = "not_found"
E_DEVICE_OFFLINE = "device_offline"
E_TIMEOUT = "timeout"
E_BUSY = "busy"
E_INTERNAL = "internal_error"
ACTIONS = ("ack", "clear", "command")
# A console action: (the frame, who) -> the reply's fields. It checks its frame itself (ActionError).
ExtraAction = Callable[[dict[str, Any], str], Awaitable[dict[str, Any]]]


class ActionError(GatewayError, ValueError):
    """A dashboard action refused; ``code`` is the reply's stable code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class ActionHandlers:
    """What the actions run. Each raises an exception with a ``code`` attribute (ActionError, the
    alert engine's AlertError) when it refuses; TimeoutError when a device does not answer."""

    ack: Callable[[int, str], Awaitable[dict[str, Any]]]  # (alert id, actor) -> the alert
    clear: Callable[[int, str], Awaitable[dict[str, Any]]]
    command: Callable[[str, str, dict[str, Any], float], Awaitable[dict[str, Any]]]  # -> the device's result


def error_reply(request_id: Any, code: str, message: str) -> dict[str, Any]:
    return {"t": "error", "id": request_id, "code": code, "msg": message}


def _request_id(msg: dict[str, Any]) -> Any:
    value = msg.get("id")
    if isinstance(value, str) and 0 < len(value) <= MAX_ID_CHARS:
        return value
    if type(value) is int and abs(value) < 2**53:
        return value
    return None


def _alert_id(msg: dict[str, Any]) -> int:
    value = msg.get("alert")
    if type(value) is not int or not 0 < value < 2**63:
        raise ActionError(wire.E_BAD_FRAME, "alert: the alert's id, a positive integer")
    return value


class DashboardActions:
    def __init__(self, handlers: ActionHandlers, auth: DashboardAuth | None,
                 count_error: Callable[[str], None] = lambda code: None,
                 extra: dict[str, ExtraAction] | None = None) -> None:
        self.handlers = handlers
        self.auth = auth
        self.count_error = count_error
        self.extra = dict(extra or {})
        self.known = ACTIONS + tuple(self.extra)

    async def handle(self, identity: DashboardIdentity, frame: str | bytes) -> dict[str, Any]:
        """The reply to one frame from a browser (never raises)."""
        request_id = None
        try:
            if isinstance(frame, bytes):
                raise ActionError(wire.E_BINARY, "binary frames are not accepted; send JSON text")
            try:
                msg = orjson.loads(frame)
            except orjson.JSONDecodeError:
                raise ActionError(wire.E_BAD_JSON, "not JSON") from None
            if not isinstance(msg, dict):
                raise ActionError(wire.E_BAD_FRAME, "a frame is a JSON object with t and id")
            request_id = _request_id(msg)
            if request_id is None:
                raise ActionError(wire.E_BAD_FRAME, f"id: a string of 1-{MAX_ID_CHARS} characters or an integer")
            kind = msg.get("t")
            if kind not in self.known:
                raise ActionError(wire.E_UNKNOWN_TYPE,
                                  f"unknown action {str(kind)[:32]!r}; known: {', '.join(self.known)}")
            return {"t": "ok", "id": request_id, **await self._run(identity, kind, msg)}
        except ActionError as err:
            reply = error_reply(request_id, err.code, err.message)
        except TimeoutError:
            reply = error_reply(request_id, E_TIMEOUT, "the device did not answer in time; it may still carry "
                                "the command out")
        except StorageError:
            reply = error_reply(request_id, wire.E_STORAGE, "storage unavailable; try again later")
        except GatewayError as err:  # the alert engine's refusals carry their code
            reply = error_reply(request_id, str(getattr(err, "code", wire.E_BAD_VALUE)), str(err)[:300])
        except Exception as err:  # a bug: this action fails, the stream and the gateway go on
            log("dashboard_action_failed", logging.ERROR, actor=identity.actor,
                error=f"{type(err).__name__}: {err}"[:300])
            reply = error_reply(request_id, E_INTERNAL, "internal error; see the gateway log")
        self.count_error(reply["code"])
        return reply

    async def _run(self, identity: DashboardIdentity, kind: str, msg: dict[str, Any]) -> dict[str, Any]:
        if not identity.operator:
            raise ActionError(E_FORBIDDEN, f"{kind} needs the operator role and this dashboard is a viewer; ask for "
                              "an operator token (python -m gateway tokens add NAME --role operator)")
        extra = self.extra.get(kind)
        if kind == "command":
            device, name, args, timeout = self._command(msg)  # check the frame before asking storage
        elif extra is None:
            alert_id = _alert_id(msg)
        if self.auth is not None and not await self.auth.still_valid(identity):
            raise ActionError(wire.E_AUTH_FAILED, "this dashboard's token was revoked; reload the page with a "
                              "valid token")
        if extra is not None:
            return await extra(msg, identity.actor)
        if kind == "command":
            log("dashboard_command", actor=identity.actor, device=device, command=name)
            return {"result": await self.handlers.command(device, name, args, timeout)}
        handler = self.handlers.ack if kind == "ack" else self.handlers.clear
        log("dashboard_alert_" + kind, actor=identity.actor, alert=alert_id)
        return {"alert": await handler(alert_id, identity.actor)}

    @staticmethod
    def _command(msg: dict[str, Any]) -> tuple[str, str, dict[str, Any], float]:
        device = msg.get("device")
        if not isinstance(device, str) or not wire.valid_device_id(device):
            raise ActionError(wire.E_BAD_FRAME, "device: a device id (1-64 of A-Z a-z 0-9 _ - . :)")
        name = msg.get("name")
        try:
            args = wire.parse_command(name, msg.get("args"))
        except wire.ProtocolError as err:
            raise ActionError(err.code, err.message) from None
        timeout = msg.get("timeout", DEFAULT_COMMAND_TIMEOUT_S)
        if type(timeout) not in (int, float) or not 0 < timeout <= MAX_COMMAND_TIMEOUT_S:
            raise ActionError(wire.E_BAD_VALUE, f"timeout: seconds, more than 0 and at most {MAX_COMMAND_TIMEOUT_S:g}")
        return device, str(name), args, float(timeout)
