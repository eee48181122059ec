"""The dashboards' WebSocket stream (/v1/dashboard): each connection is a viewer of the hub
(gateway/dashboard/view.py, the view model) with its bounded queue of frames, and the frames it sends
are operator actions.

Each client has an identity (role and token name, gateway/dashboard/roles.py), which its snapshots
carry; its frames are answered by ``actions`` (gateway/dashboard/actions.py: the table of actions,
``{"t": name}`` to its handler) with at most MAX_IN_FLIGHT running per client.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import deque
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from gateway.dashboard.actions import E_BUSY, MAX_IN_FLIGHT, DashboardActions, error_reply
from gateway.dashboard.roles import ANONYMOUS, DashboardIdentity
from gateway.dashboard.view import Hub
from gateway.supervisor import spawn
from protocol import wire

DASHBOARD_SNDBUF = 64 * 1024


class DashboardClient:
    """One dashboard connection with its bounded queue of frames."""

    def __init__(self, hub: Hub, ws: ServerConnection, limit: int, identity: DashboardIdentity = ANONYMOUS) -> None:
        self.hub = hub
        self.ws = ws
        self.identity = identity
        self.in_flight = 0  # operator actions running
        self.queue: deque[str] = deque()
        self.limit = limit
        self.needs_snapshot = True
        self.wake = asyncio.Event()
        self.wake.set()

    def resync(self) -> None:
        self.needs_snapshot = True
        self.wake.set()

    def close(self, code: int, reason: str) -> None:
        spawn(self.ws.close(code, reason), "dashboard close")

    def offer(self, frame: str) -> None:
        if self.needs_snapshot:
            return  # the coming snapshot includes this change
        if len(self.queue) >= self.limit:
            self.queue.clear()
            self.needs_snapshot = True
            self.hub.resyncs += 1
        else:
            self.queue.append(frame)
        self.wake.set()

    async def pump(self) -> None:
        """Send queued frames until the connection closes."""
        while True:
            await self.wake.wait()
            self.wake.clear()
            if self.needs_snapshot:
                self.needs_snapshot = False
                self.queue.clear()
                await self.ws.send(self.hub.snapshot_frame(self.identity))
            while self.queue and not self.needs_snapshot:
                await self.ws.send(self.queue.popleft())


class DashboardStream:
    """Serves /v1/dashboard connections: the hub's frames out, operator actions in."""

    def __init__(self, hub: Hub, actions: DashboardActions | None = None) -> None:
        """``actions``: what the clients' frames run; None: this stream takes no frames."""
        self.hub = hub
        self.actions = actions

    async def serve(self, ws: ServerConnection) -> None:
        """Handle one dashboard connection until it closes."""
        sock = ws.transport.get_extra_info("socket")
        if sock is not None:
            # Bound what a stalled dashboard can hold in the kernel (Linux autotunes up to MiBs).
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, DASHBOARD_SNDBUF)
        identity = getattr(ws, "dashboard", None) or ANONYMOUS
        client = DashboardClient(self.hub, ws, self.hub.queue_limit, identity)
        self.hub.clients.add(client)
        pump = asyncio.get_running_loop().create_task(client.pump())
        try:
            async for frame in ws:  # operator actions; anything else is refused with a code
                self._act(client, frame)
        except ConnectionClosed:
            pass
        finally:
            self.hub.clients.discard(client)
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await pump

    def _act(self, client: DashboardClient, frame: str | bytes) -> None:
        """Answer one frame from a browser in its own task (a command may wait for its device)."""
        if self.actions is None or client.in_flight >= MAX_IN_FLIGHT:
            reply = error_reply(None, E_BUSY if self.actions else wire.E_UNKNOWN_TYPE,
                                f"at most {MAX_IN_FLIGHT} actions at once; wait for their answers"
                                if self.actions else "this stream takes no frames")
            spawn(self._reply(client, reply), "dashboard reply")
            return
        client.in_flight += 1
        spawn(self._run_action(client, self.actions, frame), "dashboard action")

    async def _run_action(self, client: DashboardClient, actions: DashboardActions, frame: str | bytes) -> None:
        try:
            reply = await actions.handle(client.identity, frame)
        finally:
            client.in_flight -= 1
        await self._reply(client, reply)

    async def _reply(self, client: DashboardClient, reply: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionClosed):
            await client.ws.send(self.hub.dumps(reply))
