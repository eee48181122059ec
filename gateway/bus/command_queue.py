"""The durable per-device command queue (docs/scaling.md section 4, "Commands").

An entry is the command envelope (a JSON object with at least ``id`` and ``expires_ms``),
queued under its device until the device's result deletes it (``done``: the acknowledgement
of its id) or it expires. Where it is durable: JetStream (file store) on NATS; a Redis stream,
as durable as the Redis server's persistence; in process memory for the embedded bus, which
has only one process that could deliver it anyway (``durable`` and ``why`` say which).
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.bus.link import Link


class CommandQueue:
    def __init__(self, bus: Link, max_pending: int) -> None:
        self._bus = bus
        self.max_pending = max_pending

    @property
    def durable(self) -> bool:
        return self._bus.transport.commands_durable

    @property
    def why(self) -> str:
        """Where the queue keeps its entries and what survives what."""
        return self._bus.transport.commands_why

    async def put(self, device_id: str, envelope: dict[str, Any]) -> None:
        """Queue ``envelope`` (``id``: str, ``expires_ms``: int) for ``device_id``. Fails fast with
        BusUnavailable while the bus is down, TooManyCommands when the device has ``max_pending``."""
        command_id, expires_ms = envelope.get("id"), envelope.get("expires_ms")
        if not isinstance(command_id, str) or not command_id or not isinstance(expires_ms, int):
            raise ValueError("a command envelope needs a string 'id' and an integer 'expires_ms'")
        bus = self._bus
        bus.require_ok()
        await bus.call(bus.transport.command_put(device_id, command_id, orjson.dumps(envelope), self.max_pending,
                                                  expires_ms))

    async def pending(self, device_id: str) -> list[dict[str, Any]]:
        """The device's queued envelopes, oldest first (expired ones included: the caller fails them)."""
        bus = self._bus
        bus.require_ok()
        entries = await bus.call(bus.transport.command_list(device_id))
        envelopes = []
        for _command_id, data in entries:
            try:
                envelope = orjson.loads(data)
            except orjson.JSONDecodeError:
                envelope = None
            if isinstance(envelope, dict):
                envelopes.append(envelope)
            else:
                bus.drop("malformed_command")
        return envelopes

    async def done(self, device_id: str, command_id: str) -> bool:
        """Delete the command (its result arrived, or it expired); True if it was queued."""
        bus = self._bus
        bus.require_ok()
        return await bus.call(bus.transport.command_delete(device_id, command_id))

    async def exists(self, device_id: str, command_id: str) -> bool:
        """Whether the command is still queued (a caller checks this after the bus came back)."""
        bus = self._bus
        bus.require_ok()
        entries = await bus.call(bus.transport.command_list(device_id))
        return any(found == command_id for found, _ in entries)

