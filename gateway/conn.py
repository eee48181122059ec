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
from gateway.admission import PARTIAL, REFUSED_RESPONSE, REQUESTED, SILENT, Admission
from gateway.auth import Identity
from gateway.dashboard.roles import DashboardIdentity
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

    With ``admission`` set (see ``connection_class``), it waits (is counted) from accept until
    ``authenticated()``: silent, partial at its first bytes, requested once its HTTP request is
    parsed (in the same ``data_received`` call); a newer connection may evict it meanwhile
    (gateway/admission.py)."""

    admission: Admission | None = None
    address: str = ""
    identity: Identity | None = None
    dashboard: DashboardIdentity | None = None  # a dashboard client: its role and token name
    waiting_address: str | None = None  # the peer address while it waits (Admission's fields)
    waiting_stage = SILENT
    waiting_since = 0.0
    _watch = False  # waits and its request is not parsed yet: received bytes advance it

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        admission = self.admission
        if admission is not None:
            peer = transport.get_extra_info("peername")
            admission.admit(self, str(peer[0]) if peer else "")
            self._watch = True
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._watch:
            self._advance()

    def _advance(self) -> None:
        admission = self.admission
        assert admission is not None
        if self.request is not None:  # (set by websockets' parser within data_received)
            self._watch = False
            admission.advance(self, REQUESTED)
        elif self.waiting_stage == SILENT:
            admission.advance(self, PARTIAL)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.admission is not None:
            self.admission.closed(self)
        gctune.connection_closed()
        super().connection_lost(exc)

    def authenticated(self) -> None:
        """The connection is authenticated (or let through): it no longer waits."""
        if self.waiting_address is not None and self.admission is not None:
            self.admission.release(self)

    def auth_time_left(self, default: float) -> float:
        """Seconds left for authenticating (``default`` without admission)."""
        return default if self.admission is None else self.admission.time_left(self)

    def evict(self, stage: int) -> None:
        """Closed to make room (Admission no longer counts it): nothing parsed yet, a 503; else a reset."""
        transport = cast(asyncio.WriteTransport, self.transport)
        if stage < REQUESTED:
            transport.write(REFUSED_RESPONSE)
            transport.close()
        else:
            transport.abort()


def connection_class(admission: Admission) -> type[EdgeConnection]:
    """An EdgeConnection class whose connections are counted by ``admission``."""
    return type("AdmittedConnection", (EdgeConnection,), {"admission": admission})


async def send_close(ws: ServerConnection, event: Event) -> None:
    """Carry out a close Event of the core: send its error frame, then close with its code."""
    with contextlib.suppress(ConnectionClosed):
        if event.reply:
            await ws.send(event.reply)
    await ws.close(event.close_code or wire.CLOSE_POLICY, event.payload.code)
