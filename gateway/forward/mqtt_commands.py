"""Commands from MQTT (``mqtt_commands = true``): ``<prefix>/<device>/command/<name>`` -> the device.

The payload is the command's JSON arguments, an object (``{}`` for none). An empty payload is
refused, never taken for ``{}``: it is what clearing a retained message delivers. It is checked
against the command table (``protocol.wire.COMMANDS``, ``parse_command``) before anything
reaches the device, then handed to ``run_command``: the same path as the admin API's
``command`` (routing to the device's live session, waiting for its result). The answer goes
to ``<prefix>/<device>/command/<name>/result``:

    {"ok": true, "msg": "interval 30 s", "data": {}}                     the device's result
    {"ok": false, "code": "bad_value", "msg": "set_interval needs ..."}  refused before the device

Refusals (the device is untouched): ``bad_json``, ``bad_frame`` (not an object),
``unknown_type`` (no such command), ``bad_value`` (arguments), ``too_large``, ``bad_device``,
``retained_command`` (a retained message would run again at every reconnect: never run),
``busy`` (too many commands in flight); after sending: ``device_offline``, ``timeout``,
``failed``. Every command is logged with its device, name and outcome (never its arguments).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from gateway.errors import GatewayError, RegistryError
from gateway.logs import log
from protocol import wire

RunCommand = Callable[[str, str, dict[str, Any], float], Awaitable[dict[str, Any]]]
MAX_PAYLOAD = 4096
MAX_RUNNING = 16
TIMEOUT_S = 10.0


class CommandGate:
    """Checks MQTT commands and runs them; ``answer(device, name, result)`` publishes a result, and
    ``done(device, name, args)`` hears of each command the device carried out (``ok: true``)."""

    def __init__(self, run_command: RunCommand, answer: Callable[[str, str, dict[str, Any]], None],
                 timeout_s: float = TIMEOUT_S,
                 done: Callable[[str, str, dict[str, Any]], None] = lambda device_id, name, args: None) -> None:
        self.run_command = run_command
        self.answer = answer
        self.done = done
        self.timeout_s = timeout_s
        self.tasks: set[asyncio.Task[None]] = set()
        self.counts: dict[str, int] = {}  # outcome code ("ok", "device_error", or a refusal) -> count

    def received(self, device_id: str, name: str, payload: bytes, retained: bool) -> None:
        """One message on a command topic (on the event loop; never raises)."""
        args = self._check(device_id, name, payload, retained)
        if args is None:
            return
        task = asyncio.get_running_loop().create_task(self._run(device_id, name, args))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _refuse(self, device_id: str, name: str, code: str, message: str) -> None:
        self.counts[code] = self.counts.get(code, 0) + 1
        log("mqtt_command_refused", logging.WARNING, device=device_id[:64], command=name[:32], code=code)
        self.answer(device_id, name, {"ok": False, "code": code, "msg": message})

    def _check(self, device_id: str, name: str, payload: bytes, retained: bool) -> dict[str, Any] | None:
        if not wire.valid_device_id(device_id):
            self._refuse(device_id, name, "bad_device", "the device id in the topic is not a valid device id")
            return None
        if retained:
            self._refuse(device_id, name, "retained_command",
                         "retained command messages are never run (they would run again at every reconnect); "
                         "publish commands without the retain flag, and clear this one with an empty retained "
                         "message")
            return None
        if len(payload) > MAX_PAYLOAD:
            self._refuse(device_id, name, wire.E_TOO_LARGE, f"command arguments larger than {MAX_PAYLOAD} bytes")
            return None
        try:
            args = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self._refuse(device_id, name, wire.E_BAD_JSON, "the payload must be the command's arguments as a "
                         "JSON object, e.g. {\"seconds\": 30}, or {} for none")
            return None
        try:
            checked: dict[str, Any] = wire.parse_command(name, args)
        except wire.ProtocolError as err:
            self._refuse(device_id, name, err.code, err.message)
            return None
        if len(self.tasks) >= MAX_RUNNING:
            self._refuse(device_id, name, "busy", f"{MAX_RUNNING} commands are in flight already; try again")
            return None
        return checked

    async def _run(self, device_id: str, name: str, args: dict[str, Any]) -> None:
        try:
            result = await self.run_command(device_id, name, args, self.timeout_s)
        except TimeoutError:
            outcome = {"ok": False, "code": "timeout", "msg": f"no result within {self.timeout_s:g} s"}
        except RegistryError as err:
            outcome = {"ok": False, "code": "device_offline", "msg": str(err)[:300]}
        except (GatewayError, ValueError) as err:
            outcome = {"ok": False, "code": str(getattr(err, "code", "failed")), "msg": str(err)[:300]}
        else:
            outcome = {"ok": bool(result.get("ok")), "msg": result.get("msg"), "data": result.get("data") or {}}
        code = "ok" if outcome["ok"] else str(outcome.get("code", "device_error"))
        self.counts[code] = self.counts.get(code, 0) + 1
        log("mqtt_command", device=device_id, command=name, outcome=code)
        if outcome["ok"]:
            self.done(device_id, name, args)
        self.answer(device_id, name, outcome)

    async def stop(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
