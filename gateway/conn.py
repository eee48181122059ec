"""One accepted connection: websockets' ServerConnection with the gateway's per-connection fields,
and the one way to end a connection with a protocol error (an Event from the core)."""

from __future__ import annotations

import contextlib
import http
from typing import Any

import orjson
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Response

from gateway.auth import Identity
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
    rules) and, for a device that authenticated at the upgrade, its identity."""

    address: str = ""
    identity: Identity | None = None


async def send_close(ws: ServerConnection, event: Event) -> None:
    """Carry out a close Event of the core: send its error frame, then close with its code."""
    with contextlib.suppress(ConnectionClosed):
        if event.reply:
            await ws.send(event.reply)
    await ws.close(event.close_code or wire.CLOSE_POLICY, event.payload.code)
