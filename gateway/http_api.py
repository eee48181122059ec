"""HTTP endpoints and WebSocket upgrades: one routing table, path -> handler.

Plain HTTP routes answer a request (``/healthz``, ``/metrics``, the dashboard page); WebSocket
routes check the upgrade (credential, token) and then serve the connection. Adding an endpoint is
one line: ``http.route("/v1/thing", handler)`` or ``http.websocket("/v1/thing", check, serve)``.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from gateway.auth import bearer_credential
from gateway.config import GatewayConfig
from gateway.conn import EdgeConnection, json_response
from gateway.errors import AuthError
from gateway.registry import verify_admin_token
from protocol import wire

STATIC_DIR = Path(__file__).parent / "static"
STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}

Handler = Callable[[EdgeConnection, Request], Awaitable[Response | None]]
Serve = Callable[[EdgeConnection], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Route:
    """``check`` answers the HTTP request (a Response), or returns None to accept a WebSocket
    upgrade that ``serve`` then handles; plain HTTP routes have no ``serve``."""

    check: Handler
    serve: Serve | None = None


def _query_token(path: str) -> str | None:
    """``token`` from the request's query string (browsers cannot set WebSocket headers)."""
    values = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query).get("token")
    return values[0] if values else None


class HttpApi:
    def __init__(self, config: GatewayConfig, *, admin_token: str, dashboard_token: str | None,
                 client_address: Callable[[EdgeConnection, Headers], str], draining: Callable[[], bool]) -> None:
        self.config = config
        self.client_address = client_address
        self.admin_token = admin_token
        self.dashboard_token = dashboard_token
        self.draining = draining
        self.routes: dict[str, Route] = {}
        self._static: dict[str, tuple[bytes, str]] = {}
        for path, (name, ctype) in STATIC_FILES.items():
            file = STATIC_DIR / name
            if file.exists():
                self._static[path] = (file.read_bytes(), ctype)
                self.route(path, self.static)

    def route(self, path: str, handler: Handler) -> None:
        """Serve plain HTTP requests for ``path`` with ``handler`` (it returns the Response)."""
        self.routes[path] = Route(handler)

    def websocket(self, path: str, check: Handler, serve: Serve) -> None:
        """Accept WebSocket upgrades on ``path`` that ``check`` lets through, served by ``serve``."""
        self.routes[path] = Route(check, serve)

    # ------------------------------------------------------------ websockets hooks
    async def process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        assert isinstance(ws, EdgeConnection)
        path = request.path.split("?", 1)[0]
        route = self.routes.get(path)
        upgrade = "upgrade" in request.headers.get("Connection", "").lower()
        if route is not None and route.serve is None and not (upgrade and path in self._static):
            return await route.check(ws, request)
        if self.draining():
            return json_response(503, {"code": wire.E_SHUTDOWN, "message": "gateway restarting; reconnect later"},
                                 {"Retry-After": "5"})
        if route is None or route.serve is None:
            return json_response(404, {"code": "not_found", "message": f"no such path {path[:64]}"})
        return await route.check(ws, request)

    async def handle(self, ws: ServerConnection) -> None:
        """Serve an accepted WebSocket with its route's handler."""
        assert isinstance(ws, EdgeConnection) and ws.request is not None
        route = self.routes.get(ws.request.path.split("?", 1)[0])
        if route is not None and route.serve is not None:
            await route.serve(ws)

    # ------------------------------------------------------------ handlers
    async def static(self, ws: EdgeConnection, request: Request) -> Response:
        body, ctype = self._static[request.path.split("?", 1)[0]]
        return Response(200, "OK", Headers({
            "Content-Type": ctype, "Content-Length": str(len(body)), "Cache-Control": "no-cache",
            "Content-Security-Policy": "default-src 'self'; connect-src 'self'",
            "X-Content-Type-Options": "nosniff"}), body)

    async def dashboard_upgrade(self, ws: EdgeConnection, request: Request) -> Response | None:
        ws.address = self.client_address(ws, request.headers)
        if self.dashboard_token is not None and self.config.dashboard_token_needed(ws.address):
            try:
                token = bearer_credential(request.headers) or _query_token(request.path)
            except AuthError:
                token = None
            if not verify_admin_token(self.dashboard_token, token):
                return json_response(401, {"code": wire.E_AUTH_FAILED, "message": "dashboard authentication "
                                           "failed: open the page as /#token=<contents of dashboard.token>"})
        ws.authenticated()
        return None

    async def admin_upgrade(self, ws: EdgeConnection, request: Request) -> Response | None:
        try:
            token = bearer_credential(request.headers)
        except AuthError:
            token = None
        if not verify_admin_token(self.admin_token, token):
            return json_response(401, {"code": wire.E_AUTH_FAILED, "message": "admin authentication failed"})
        ws.authenticated()
        return None
