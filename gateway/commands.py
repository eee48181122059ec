"""Commands to devices: send one, wait for its result (docs/protocol.md section 8).

Command ids are random (96 bits), so no device can guess another's. A result is matched on its
id AND the device whose connection it arrived on: the core (GatewaySession) refuses a result
for an id it did not send with ``no_such_command``, and here the device must be the one the
command went to. A forged result changes nothing; the real answer still arrives.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any, Protocol

from gateway.errors import DeviceOffline
from gateway.logs import log
from protocol.gateway import GatewaySession


class CommandTarget(Protocol):
    """A live device connection, as far as commands are concerned."""

    device_id: str
    session: GatewaySession

    async def send(self, frame: str) -> None: ...


def new_command_id() -> str:
    return "c-" + secrets.token_urlsafe(12)


class Commands:
    """Commands in flight, each waiting for the result of the device it was sent to."""

    def __init__(self) -> None:
        self.pending: dict[str, tuple[str, asyncio.Future[dict[str, Any]]]] = {}

    async def send(self, target: CommandTarget, name: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send command ``name`` to ``target`` and return its result (TimeoutError after ``timeout`` s)."""
        command_id = new_command_id()
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[command_id] = (target.device_id, future)
        try:
            await target.send(target.session.command_frame(command_id, name, args))
            return await asyncio.wait_for(future, timeout)
        finally:
            self.pending.pop(command_id, None)

    def result(self, device_id: str, result: dict[str, Any]) -> None:
        """A result arrived on ``device_id``'s connection (an EV_RESULT payload)."""
        entry = self.pending.get(result["id"])
        if entry is None:
            return  # answered after the operator stopped waiting
        sent_to, future = entry
        if sent_to != device_id:  # the core refuses this first; kept as the second check
            log("command_result_wrong_device", device=device_id, command=result["id"])
            return
        if not future.done():
            future.set_result(result)

    def fail(self, reason: str, device_id: str | None = None) -> None:
        """End the waits of every pending command (of ``device_id``, or all) with ``reason``."""
        for sent_to, future in list(self.pending.values()):
            if (device_id is None or sent_to == device_id) and not future.done():
                future.set_exception(DeviceOffline(reason))
