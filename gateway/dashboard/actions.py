"""Operator actions sent by dashboard browsers over /v1/dashboard (docs/protocol.md section 9).

``{"t": "ack"|"clear", "id": ..., "alert": 42}`` and ``{"t": "command", "id": ..., "device": ...,
"name": ..., "args": {...}, "timeout": 10}``. Every frame is untrusted input: it is parsed and
checked here, then run by the handlers the gateway injects (the alert engine, the command path).

The actions are a table, ``{"t": name}`` to its ``Action`` (``standard_actions``: ack, clear, command).
A new operator action is a new row: an ``Action`` (check the frame, then run) in its own module,
passed to ``DashboardActions(..., more={name: action})`` by the dashboard room
(gateway/dashboard/room.py), as the console's are (devices: gateway/dashboard/devices_actions.py;
alert rules: gateway/dashboard/rules_actions.py); the role and token checks stay here, for every row.
The answer is ``{"t": "ok", "id", ...}`` or ``{"t": "error", "id", "code", "msg"}`` with a stable
code; a refusal changes nothing, and the stream stays open whatever a browser sends.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
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


@dataclass(frozen=True, slots=True)
class Action:
    """One row of the table. ``check(msg)`` reads and checks the frame's fields (raises ActionError)
    before anything is asked of storage; ``run(identity, checked)`` does it (and logs it) and returns
    the reply's fields besides ``t`` and ``id``."""

    check: Callable[[dict[str, Any]], Any]
    run: Callable[[DashboardIdentity, Any], Awaitable[dict[str, Any]]]


def standard_actions(handlers: ActionHandlers) -> dict[str, Action]:
    """ack, clear (an alert by id) and command (a device command), run by ``handlers``."""

    def alert_action(kind: str, handler: Callable[[int, str], Awaitable[dict[str, Any]]]) -> Action:
        async def run(identity: DashboardIdentity, alert_id: int) -> dict[str, Any]:
            log("dashboard_alert_" + kind, actor=identity.actor, alert=alert_id)
            return {"alert": await handler(alert_id, identity.actor)}
        return Action(_alert_id, run)

    async def command(identity: DashboardIdentity, checked: tuple[str, str, dict[str, Any], float]) -> dict[str, Any]:
        device, name, args, timeout = checked
        log("dashboard_command", actor=identity.actor, device=device, command=name)
        return {"result": await handlers.command(device, name, args, timeout)}

    return {"ack": alert_action("ack", handlers.ack), "clear": alert_action("clear", handlers.clear),
            "command": Action(_command, command)}


def console_action(action: ExtraAction) -> Action:
    """A row for an action that checks its own frame (the console's), run as the operator who sent it."""

    async def run(identity: DashboardIdentity, msg: dict[str, Any]) -> dict[str, Any]:
        return await action(msg, identity.actor)

    return Action(lambda msg: msg, run)


class DashboardActions:
    """Answers the frames of dashboard browsers with the table's actions (``standard_actions`` and
    ``more``), for operators whose token is still valid."""

    def __init__(self, handlers: ActionHandlers, auth: DashboardAuth | None,
                 count_error: Callable[[str], None] = lambda code: None,
                 more: Mapping[str, Action] | None = None) -> None:
        self.table = {**standard_actions(handlers), **(more or {})}
        self.auth = auth
        self.count_error = count_error

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
            action = self.table.get(kind) if isinstance(kind, str) else None
            if action is None:
                raise ActionError(wire.E_UNKNOWN_TYPE,
                                  f"unknown action {str(kind)[:32]!r}; known: {', '.join(self.table)}")
            return {"t": "ok", "id": request_id, **await self._run(identity, str(kind), action, msg)}
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

    async def _run(self, identity: DashboardIdentity, kind: str, action: Action,
                   msg: dict[str, Any]) -> dict[str, Any]:
        if not identity.operator:
            raise ActionError(E_FORBIDDEN, f"{kind} needs the operator role and this dashboard is a viewer; ask for "
                              "an operator token (python -m gateway tokens add NAME --role operator)")
        checked = action.check(msg)  # check the frame before asking storage
        if self.auth is not None and not await self.auth.still_valid(identity):
            raise ActionError(wire.E_AUTH_FAILED, "this dashboard's token was revoked; reload the page with a "
                              "valid token")
        return await action.run(identity, checked)


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
