"""Commands to devices: send one, wait for its result (docs/protocol.md section 8)."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any, Protocol

from protocol.gateway import GatewaySession


class CommandTarget(Protocol):
    """A live device connection, as far as commands are concerned."""

    device_id: str
    session: GatewaySession

    async def send(self, frame: str) -> None: ...


class Commands:
    """Commands in flight, each waiting for the result of the device it was sent to."""

    def __init__(self) -> None:
        self.pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)

    async def send(self, target: CommandTarget, name: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send command ``name`` to ``target`` and return its result (TimeoutError after ``timeout`` s)."""
        command_id = f"c{next(self._ids)}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[command_id] = future
        try:
            await target.send(target.session.command_frame(command_id, name, args))
            return await asyncio.wait_for(future, timeout)
        finally:
            self.pending.pop(command_id, None)

    def result(self, device_id: str, result: dict[str, Any]) -> None:
        """A result arrived on ``device_id``'s connection (an EV_RESULT payload)."""
        future = self.pending.get(result["id"])
        if future is not None and not future.done():
            future.set_result(result)
