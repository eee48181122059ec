"""One authenticated device connection (``DeviceConnection``) and the hooks where a session meets
the rest of the fleet (``SessionHooks``): what the rooms of a device session share
(gateway/sessions.py, device_auth.py, device_sweep.py, replacement.py, flusher.py, cluster/)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from gateway.auth import Identity
from gateway.conn import EdgeConnection, send_close
from gateway.metrics import Metrics
from protocol.gateway import GatewaySession

REPLACED_MESSAGE = "a newer connection authenticated as this device"


class DeviceConnection:
    """One authenticated device connection."""

    def __init__(self, ws: EdgeConnection, session: GatewaySession, identity: Identity, connected_ms: int) -> None:
        self.ws = ws
        self.session = session
        self.device_id: str = identity.device_id
        self.identity = identity
        self.tail: asyncio.Future[None] | None = None  # the flush holding its newest frame (gateway/flusher.py)
        self.acking: asyncio.Future[None] | None = None  # its own ack sender or storage close, while one runs
        self.failed = False  # a store of its rows failed: no ack again, closed with 1013
        self.closing = False
        self.welcomed = False  # the welcome went out: frames are being stored
        self.moved = False  # ended by a takeover or a drain: the device goes on elsewhere
        self.connected_ms = connected_ms
        self.done = asyncio.get_running_loop().create_future()

    def writable(self) -> bool:
        """True when a small frame goes out without waiting: the connection is open and nothing
        waits in its write buffer (see Flusher._ack)."""
        transport = self.ws.transport
        return self.ws.state is State.OPEN and not transport.is_closing() and not transport.get_write_buffer_size()

    async def send(self, frame: str) -> None:
        await self.ws.send(frame)

    async def drain(self) -> None:
        """Wait until every accepted frame is stored and acknowledged (or failed)."""
        while True:
            busy = [f for f in (self.tail, self.acking) if f is not None and not f.done()]
            if not busy:
                return
            await asyncio.wait(busy)

    async def close(self, code: str, message: str) -> None:
        """End the session with ``code`` (through the core: error frame, then its close code)."""
        with contextlib.suppress(ConnectionClosed):
            await send_close(self.ws, self.session.close(code, message))


class SessionHooks:
    """Where a session meets the rest of the fleet (presence, queued commands): the cluster room
    (gateway/cluster) implements them; these defaults keep a session to itself."""

    async def claim(self, conn: DeviceConnection) -> tuple[str, str] | None:
        """Before the welcome: make this instance the device's holder. None to go on, or the
        (error code, message) to close the new connection with."""
        return None

    def welcomed(self, conn: DeviceConnection) -> None:
        """The welcome went out (no I/O here: start a task for it)."""

    async def ended(self, conn: DeviceConnection, current: bool) -> None:
        """The session ended; ``current``: no newer session of the device started here meanwhile."""


async def close_with(metrics: Metrics, ws: EdgeConnection, event: Any) -> None:
    """Close a connection with the core's close event, counting its error code."""
    metrics.count_error(event.payload.code)
    await send_close(ws, event)
