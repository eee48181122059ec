"""Device authentication: the credential at the HTTP upgrade (``Authorization: Bearer``) or, without
one, in the connection's first frame. Either way the result is an ``Identity`` (gateway/auth.py),
or a refusal with its code: 401/403 before the upgrade, the core's close frame after it."""

from __future__ import annotations

import asyncio
import logging

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from gateway.auth import Authenticator, Identity, bearer
from gateway.conn import EdgeConnection, json_response
from gateway.device_conn import close_with
from gateway.errors import AuthError, StorageError
from gateway.logs import log
from gateway.metrics import Metrics
from protocol import wire
from protocol.gateway import EV_AUTH, EV_CLOSE, GatewaySession


class DeviceAuth:
    """Authenticates device connections (/v1/device) for the sessions (gateway/sessions.py)."""

    def __init__(self, authenticator: Authenticator, metrics: Metrics, auth_timeout_s: float) -> None:
        """``auth_timeout_s``: the handshake and the first frame together, from accept."""
        self.auth = authenticator
        self.metrics = metrics
        self.auth_timeout_s = auth_timeout_s

    def client_address(self, ws: EdgeConnection, headers: Headers) -> str:
        peer = ws.remote_address[0] if ws.remote_address else ""
        return self.auth.client_address(str(peer), headers)

    async def check_upgrade(self, ws: EdgeConnection, request: Request) -> Response | None:
        """Check an ``Authorization: Bearer`` credential at the upgrade; without one, the device
        authenticates in its first frame. A refused credential is answered 401/403 before the upgrade."""
        ws.address = address = self.client_address(ws, request.headers)
        try:
            token, jwt = bearer(request.headers)
            if token is None and jwt is None:
                # First-frame authentication: no compression before the device is known
                # (a deflate state per unauthenticated connection was measured to keep ~30 MiB).
                ws.protocol.available_extensions = []
                return None
            ws.identity = await self.auth.authenticate(device_id=None, token=token, jwt=jwt, address=address)
            ws.authenticated()
        except AuthError as err:
            self.failed(err, address)
            return json_response(err.http_status, {"code": err.code, "message": err.message})
        except StorageError:  # the registry is unreadable: the device retries later
            self.metrics.count_error(wire.E_STORAGE)
            return json_response(503, {"code": wire.E_STORAGE, "message": "storage unavailable; reconnect later"},
                                 {"Retry-After": "5"})
        return None

    def failed(self, err: AuthError, address: str) -> None:
        self.metrics.counters.auth_failures += 1
        self.metrics.count_error(err.code)
        log("auth_refused", logging.WARNING, code=err.code, address=address)

    async def first_frame(self, ws: EdgeConnection, session: GatewaySession) -> Identity | None:
        """Authenticate from the connection's first frame; None once the connection was refused."""
        loop = asyncio.get_running_loop()
        timeout = self.auth_timeout_s
        try:
            frame = await asyncio.wait_for(ws.recv(), ws.auth_time_left(timeout))
        except TimeoutError:
            await close_with(self.metrics, ws, session.refuse(wire.E_AUTH_TIMEOUT,
                                                              f"no auth frame within {timeout:g} s of connecting"))
            return None
        event = session.receive(frame, loop.time())
        if event.kind == EV_CLOSE:
            await close_with(self.metrics, ws, event)
            return None
        if event.kind != EV_AUTH:
            await close_with(self.metrics, ws, session.refuse(wire.E_AUTH_REQUIRED, "authenticate first"))
            return None
        creds = event.payload
        try:
            identity = await self.auth.authenticate(device_id=creds["device_id"], token=creds["token"],
                                                    jwt=creds["jwt"], address=ws.address)
            ws.authenticated()
            return identity
        except AuthError as err:
            self.failed(err, ws.address)
            await close_with(self.metrics, ws, session.refuse(err.code, err.message))
            return None
