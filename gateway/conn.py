"""One accepted connection: websockets' ServerConnection with the gateway's per-connection fields,
and the one way to end a connection with a protocol error (an Event from the core)."""

from __future__ import annotations

import asyncio
import contextlib
import http
from typing import Any, cast

import orjson
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Response

from gateway import gctune
from gateway.admission import REFUSED_RESPONSE, Admission
from gateway.auth import Identity
from gateway.dashboard_auth import DashboardIdentity
from protocol import wire
from protocol.gateway import Event


def dumps(msg: Any) -> str:
    return orjson.dumps(msg).decode()


def json_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    """An HTTP response with a JSON body (refusals carry {"code", "message"})."""
    data = orjson.dumps(body)
    hdrs = Headers({"Content-Type": "application/json", "Content-Length": str(len(data)),
                    "Cache-Control": "no-store", **(headers or {})})
    return Response(status, http.HTTPStatus(status).phrase, hdrs, data)


class EdgeConnection(ServerConnection):
    """A connection with what the HTTP side learned about it: the client address (after the proxy
    rules) and, for a device that authenticated at the upgrade, its identity (for a dashboard
    client, its role).

    With ``admission`` set (see ``connection_class``), it counts as unauthenticated from accept
    until ``authenticated()``; one beyond the caps is answered 503 and closed at once."""

    admission: Admission | None = None
    address: str = ""
    identity: Identity | None = None
    dashboard: DashboardIdentity | None = None  # a dashboard client: its role and token name
    _pending: str | None = None  # the peer address while counted as unauthenticated
    _refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        admission = self.admission
        if admission is not None:
            peer = transport.get_extra_info("peername")
            ip = str(peer[0]) if peer else ""
            if admission.admit(ip) is not None:
                self._refused = True  # never handed to websockets: no parser, no task
                writer = cast(asyncio.WriteTransport, transport)
                writer.write(REFUSED_RESPONSE)
                writer.close()
                return
            self._pending = ip
            admission.waiting.add(self)
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self._refused:
            super().data_received(data)

    def eof_received(self) -> None:
        if not self._refused:
            super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self.authenticated()
        gctune.connection_closed()
        super().connection_lost(exc)

    def authenticated(self) -> None:
        """The connection is authenticated (or closed): it no longer counts against the caps."""
        if self._pending is not None and self.admission is not None:
            self.admission.release(self._pending)
            self.admission.waiting.discard(self)
            self._pending = None


def connection_class(admission: Admission) -> type[EdgeConnection]:
    """An EdgeConnection class whose connections are counted by ``admission``."""
    return type("AdmittedConnection", (EdgeConnection,), {"admission": admission})


async def send_close(ws: ServerConnection, event: Event) -> None:
    """Carry out a close Event of the core: send its error frame, then close with its code."""
    with contextlib.suppress(ConnectionClosed):
        if event.reply:
            await ws.send(event.reply)
    await ws.close(event.close_code or wire.CLOSE_POLICY, event.payload.code)
